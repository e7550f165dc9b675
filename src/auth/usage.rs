//! When each token was last used, for `kube-scim token list`.
//!
//! The SCIM side records a token's use in a coordination.k8s.io Lease of its own in the
//! operator's namespace (`kube-scim-token-use-<token name>`): `spec.renewTime` is the
//! last recorded use, `spec.acquireTime` the first, `spec.holderIdentity` the replica that
//! wrote it, and an annotation names the token.
//!
//! Why a Lease, not an annotation on the token's Secret: writing the Secret would need
//! `update` on Secrets, and a SCIM pod that can write Secrets can put its own hash into one
//! and mint tokens. The SCIM ServiceAccount already writes Leases in this namespace (the
//! name claims of `store::names`), so recording use costs no new right. A compromised
//! SCIM pod can forge a last-use time, which is informational only.
//!
//! Each replica writes at most once per [`RECORD_INTERVAL`] per token, off the request
//! path: a request never waits for, or fails because of, the record.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;
use sha2::{Digest, Sha256};

use super::store::{MANAGED_BY, MANAGED_BY_LABEL};

/// Lease name prefix: `kube-scim-token-use-<token name>`.
pub const USE_LEASE_PREFIX: &str = "kube-scim-token-use-";
/// Label selecting the use Leases.
pub const TOKEN_USE_LABEL: &str = "scim.kubescim.io/token-use";
/// Annotation naming the token a use Lease belongs to.
pub const TOKEN_NAME_ANNOTATION: &str = "scim.kubescim.io/token-name";
/// A replica records a token's use at most this often.
pub const RECORD_INTERVAL: Duration = Duration::from_secs(60);
/// Field manager of the records.
const FIELD_MANAGER: &str = "kube-scim-scim";
/// Longest object name (a DNS subdomain).
const MAX_NAME_LEN: usize = 253;

/// The Lease recording the use of `token_name`: the prefix and the name when that is a
/// valid object name (token names made by the CLI always are), else the prefix and a
/// hash of the name (hand-made Secrets may carry any label value).
pub fn lease_name(token_name: &str) -> String {
    let plain = format!("{USE_LEASE_PREFIX}{token_name}");
    if is_dns_subdomain(&plain) {
        plain
    } else {
        let digest = Sha256::digest(token_name.as_bytes());
        format!("{USE_LEASE_PREFIX}{}", &hex::encode(digest)[..40])
    }
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= MAX_NAME_LEN
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b.first().is_some_and(u8::is_ascii_alphanumeric)
                && b.last().is_some_and(u8::is_ascii_alphanumeric)
        })
}

/// Whether a use at `now` should be recorded, given this replica's last record.
pub fn due(last: Option<Instant>, now: Instant) -> bool {
    last.is_none_or(|t| now.saturating_duration_since(t) >= RECORD_INTERVAL)
}

/// The last recorded use in a use Lease.
pub fn last_use(lease: &Lease) -> Option<DateTime<Utc>> {
    let spec = lease.spec.as_ref()?;
    let t = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?;
    DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond().max(0) as u32)
}

/// The token a use Lease belongs to (its annotation).
pub fn token_of(lease: &Lease) -> Option<&str> {
    lease
        .metadata
        .annotations
        .as_ref()?
        .get(TOKEN_NAME_ANNOTATION)
        .map(String::as_str)
}

/// Records token use (see the module docs). Cheap to clone; clones share the schedule.
#[derive(Clone)]
pub struct UsageRecorder {
    inner: Arc<Inner>,
}

struct Inner {
    api: Api<Lease>,
    identity: String,
    last: Mutex<HashMap<String, Instant>>,
}

impl UsageRecorder {
    /// Record into Leases of `namespace`, as replica `identity`.
    pub fn new(client: Client, namespace: &str, identity: String) -> UsageRecorder {
        UsageRecorder {
            inner: Arc::new(Inner {
                api: Api::namespaced(client, namespace),
                identity,
                last: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// `token` (a token name) authenticated a request now: record it in the background
    /// when due. Never blocks on the API server. Must be called inside a Tokio runtime.
    pub fn touch(&self, token: &str) {
        let now = Instant::now();
        {
            // The map holds one entry per token that ever authenticated: bounded by the
            // (few, administrator-made) tokens.
            let mut last = self
                .inner
                .last
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !due(last.get(token).copied(), now) {
                return;
            }
            last.insert(token.to_owned(), now);
        }
        let inner = Arc::clone(&self.inner);
        let token = token.to_owned();
        tokio::spawn(async move {
            let at = Timestamp::now();
            let result = tokio::time::timeout(
                Duration::from_secs(15),
                record(&inner.api, &token, &inner.identity, at),
            )
            .await;
            match result {
                Ok(Ok(())) => tracing::debug!(token = %token, "recorded token use"),
                Ok(Err(e)) => {
                    tracing::warn!(token = %token, error = %e, "could not record token use")
                }
                Err(_) => tracing::warn!(token = %token, "recording token use timed out"),
            }
        });
    }
}

/// Write `at` as the last use of `token` (create the Lease, or move its renewTime
/// forward). A concurrent write by another replica is as good as ours.
async fn record(
    api: &Api<Lease>,
    token: &str,
    identity: &str,
    at: Timestamp,
) -> Result<(), kube::Error> {
    let name = lease_name(token);
    let pp = PostParams {
        dry_run: false,
        field_manager: Some(FIELD_MANAGER.to_string()),
    };
    match api.get_opt(&name).await? {
        None => {
            let mut lease = Lease::default();
            lease.metadata.name = Some(name.clone());
            lease.metadata.labels = Some(
                [
                    (TOKEN_USE_LABEL.to_string(), "true".to_string()),
                    (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
                ]
                .into(),
            );
            lease.metadata.annotations =
                Some([(TOKEN_NAME_ANNOTATION.to_string(), token.to_string())].into());
            lease.spec = Some(LeaseSpec {
                holder_identity: Some(identity.to_string()),
                acquire_time: Some(MicroTime(at)),
                renew_time: Some(MicroTime(at)),
                ..LeaseSpec::default()
            });
            match api.create(&pp, &lease).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if spec.renew_time.as_ref().is_some_and(|t| t.0 >= at) {
                return Ok(());
            }
            spec.renew_time = Some(MicroTime(at));
            spec.holder_identity = Some(identity.to_string());
            // The read resourceVersion goes along: a conflict means another replica
            // recorded a use just now.
            match api.replace(&name, &pp, &lease).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(()),
                Err(e) => Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_names_are_valid_and_stable() {
        assert_eq!(lease_name("entra"), "kube-scim-token-use-entra");
        assert_eq!(
            lease_name("okta-scim.v2"),
            "kube-scim-token-use-okta-scim.v2"
        );
        // Label values that are not object names get a hash, distinct per name.
        for odd in ["Entra_Prod", "a..b", "-x", &"x".repeat(240), ""] {
            let n = lease_name(odd);
            assert!(is_dns_subdomain(&n), "{odd:?} -> {n}");
            assert!(n.starts_with(USE_LEASE_PREFIX));
            assert_eq!(n, lease_name(odd));
        }
        assert_ne!(lease_name("Entra_Prod"), lease_name("Entra_Dev"));
    }

    #[test]
    fn a_use_is_recorded_at_most_once_per_interval() {
        let t0 = Instant::now();
        assert!(due(None, t0));
        assert!(!due(Some(t0), t0));
        assert!(!due(
            Some(t0),
            t0 + RECORD_INTERVAL - Duration::from_millis(1)
        ));
        assert!(due(Some(t0), t0 + RECORD_INTERVAL));
        // A clock that appears to go backwards never makes a record due early.
        assert!(!due(Some(t0 + Duration::from_secs(5)), t0));
    }

    #[test]
    fn last_use_reads_renew_time_then_acquire_time() {
        let mut lease = Lease::default();
        assert_eq!(last_use(&lease), None);
        let first = Timestamp::from_second(1_700_000_000).unwrap();
        let later = Timestamp::from_second(1_700_000_600).unwrap();
        lease.spec = Some(LeaseSpec {
            acquire_time: Some(MicroTime(first)),
            ..LeaseSpec::default()
        });
        assert_eq!(last_use(&lease).map(|t| t.timestamp()), Some(1_700_000_000));
        lease.spec.as_mut().unwrap().renew_time = Some(MicroTime(later));
        assert_eq!(last_use(&lease).map(|t| t.timestamp()), Some(1_700_000_600));
    }
}
