//! Uniqueness of `userName` (case-insensitive) and group `displayName` across replicas.
//!
//! The cache check plus the in-process claim make a create atomic on one replica, but two
//! replicas (the chart runs two) can both see a name as free — e.g. Entra retrying a
//! timed-out create against the other replica while the first is still writing. So each
//! name is also claimed cluster-wide by creating a coordination.k8s.io Lease named after
//! a hash of the lower-cased name in the operator's namespace: creation is atomic in the
//! API server, the holder is the resource id. A claim whose holder no longer has the name
//! (deleted, renamed, or a create that failed) is stale and taken over, guarded by its
//! resourceVersion.
//!
//! A claim whose holder doesn't exist yet is a create in flight, or one that was cut off
//! and will never finish: its replica was killed, or its request ran out of time (the
//! claim's release is best effort). The claim says how long its create can take: its
//! `leaseDurationSeconds` ends just after the deadline of the request that made it. Until
//! then a create of the same name waits a moment for the holder (a create in flight
//! lands within milliseconds) and is then told 409 if it appeared, else 503 with
//! Retry-After: the name may be free once the claim expires, so the client's retry can
//! succeed (a 409 would tell it the name is taken for good).
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use sha2::{Digest, Sha256};

use super::{api_error, is_conflict, is_not_found, with_timeout, Store, FIELD_MANAGER};
use crate::crd::{ScimGroup, ScimUser, MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use crate::scim::error::ScimError;

/// How long a claim whose holder doesn't exist yet counts as a create in flight, when the
/// claim doesn't say (made outside a SCIM request, or by an older version).
const IN_FLIGHT_GRACE: Duration = Duration::from_secs(30);
/// How long a create whose name is claimed by a holder that doesn't exist yet waits for
/// it to appear before answering 503, and how often it looks.
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(2);
const IN_FLIGHT_POLL: Duration = Duration::from_millis(200);
/// Added to the claiming request's remaining time: its create may reach the API server
/// just before its deadline and be stored a moment later.
const IN_FLIGHT_MARGIN: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    UserName,
    GroupDisplayName,
}

impl NameKind {
    fn prefix(self) -> &'static str {
        match self {
            NameKind::UserName => "scim-username",
            NameKind::GroupDisplayName => "scim-groupname",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            NameKind::UserName => "userName",
            NameKind::GroupDisplayName => "displayName",
        }
    }
}

/// Lease name of a claim: `<prefix>-<first 40 hex of sha256(lower-cased name)>`.
pub fn claim_name(kind: NameKind, name: &str) -> String {
    let digest = Sha256::digest(name.to_lowercase().as_bytes());
    format!("{}-{}", kind.prefix(), &hex::encode(digest)[..40])
}

/// How long a claim made now stays "in flight" for a holder that doesn't exist yet: the
/// rest of the claiming request (`time_left`, None outside a request) and a margin.
fn in_flight_window(time_left: Option<Duration>) -> Duration {
    time_left.map_or(IN_FLIGHT_GRACE, |left| left + IN_FLIGHT_MARGIN)
}

/// How much longer the create that made the claim `spec` may still store its holder, at
/// `now`; None once it can't (the claim is stale if the holder doesn't exist then).
fn in_flight_left(spec: &LeaseSpec, now: Timestamp) -> Option<Duration> {
    let window = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(IN_FLIGHT_GRACE, Duration::from_secs);
    // A claim without an acquire time is stale; one from a replica whose clock is ahead
    // is as young as can be.
    let age = Duration::try_from(now.duration_since(spec.acquire_time.as_ref()?.0))
        .unwrap_or(Duration::ZERO);
    window.checked_sub(age).filter(|left| !left.is_zero())
}

enum Holder {
    /// The holder still has this name.
    Owns,
    /// The holder exists under another name, or doesn't exist.
    Gone { exists: bool },
}

impl Store {
    fn leases_api(&self) -> Api<Lease> {
        Api::namespaced(self.client().clone(), &self.inner.namespace)
    }

    async fn holder_state(
        &self,
        kind: NameKind,
        holder: &str,
        name: &str,
    ) -> Result<Holder, ScimError> {
        let found = match kind {
            NameKind::UserName => {
                with_timeout(Api::<ScimUser>::all(self.client().clone()).get_opt(holder))
                    .await?
                    .map(|u| u.map(|u| u.spec.user_name))
            }
            NameKind::GroupDisplayName => {
                with_timeout(Api::<ScimGroup>::all(self.client().clone()).get_opt(holder))
                    .await?
                    .map(|g| g.map(|g| g.spec.display_name))
            }
        }
        .map_err(|e| api_error(e, "name claim holder"))?;
        Ok(match found {
            Some(n) if n.eq_ignore_ascii_case(name) => Holder::Owns,
            Some(_) => Holder::Gone { exists: true },
            None => Holder::Gone { exists: false },
        })
    }

    /// The id holding the cluster-wide claim on `name`, if any: one Lease GET. Lets a
    /// replica whose cache has no resource by that name find one created a moment ago
    /// through another replica.
    pub(super) async fn name_holder(
        &self,
        kind: NameKind,
        name: &str,
    ) -> Result<Option<String>, ScimError> {
        let lease = with_timeout(self.leases_api().get_opt(&claim_name(kind, name)))
            .await?
            .map_err(|e| api_error(e, "name claim"))?;
        Ok(lease.and_then(|l| l.spec?.holder_identity))
    }

    /// Claim `name` for resource `id` cluster-wide; `uniqueness` (409) when another live
    /// resource holds it or is being created with it.
    pub(super) async fn claim_name(
        &self,
        kind: NameKind,
        name: &str,
        id: &str,
    ) -> Result<(), ScimError> {
        let lease_name = claim_name(kind, name);
        let api = self.leases_api();
        let pp = PostParams {
            dry_run: false,
            field_manager: Some(FIELD_MANAGER.to_string()),
        };
        let taken =
            || ScimError::uniqueness(format!("{} {name:?} is already in use", kind.describe()));
        let claim_spec = || {
            let window = in_flight_window(super::request_time_left());
            LeaseSpec {
                holder_identity: Some(id.to_string()),
                acquire_time: Some(MicroTime(Timestamp::now())),
                lease_duration_seconds: i32::try_from(window.as_secs_f64().ceil() as u64).ok(),
                ..LeaseSpec::default()
            }
        };
        for _ in 0..5 {
            let mut lease = Lease::default();
            lease.metadata.name = Some(lease_name.clone());
            lease.metadata.labels =
                Some([(MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string())].into());
            lease.spec = Some(claim_spec());
            match with_timeout(api.create(&pp, &lease)).await? {
                Ok(_) => return Ok(()),
                Err(e) if is_conflict(&e) => {}
                Err(e) => return Err(api_error(e, "name claim")),
            }
            // Claimed already: by us, by a live holder, by a create in flight, or stale.
            let existing = match with_timeout(api.get(&lease_name)).await? {
                Ok(l) => l,
                Err(e) if is_not_found(&e) => continue,
                Err(e) => return Err(api_error(e, "name claim")),
            };
            let spec = existing.spec.clone().unwrap_or_default();
            let holder = spec.holder_identity.clone().unwrap_or_default();
            if holder == id {
                return Ok(());
            }
            match self.holder_state(kind, &holder, name).await? {
                Holder::Owns => return Err(taken()),
                Holder::Gone { exists: false } => {
                    if let Some(left) = in_flight_left(&spec, Timestamp::now()) {
                        match self.await_holder(kind, &existing, name, left).await? {
                            InFlight::Landed => return Err(taken()),
                            InFlight::Changed => continue,
                            InFlight::Stale => {}
                            InFlight::Pending(left) => {
                                return Err(ScimError::Unavailable {
                                    retry_after_secs: left.as_secs().max(1),
                                    detail: format!(
                                        "{} {name:?} is claimed by a create that has not \
                                         finished (it may have been cut off); retry",
                                        kind.describe()
                                    ),
                                })
                            }
                        }
                    }
                }
                Holder::Gone { exists: true } => {}
            }
            let mut takeover = existing;
            takeover.spec = Some(claim_spec());
            match with_timeout(api.replace(&lease_name, &pp, &takeover)).await? {
                Ok(_) => return Ok(()),
                Err(e) if is_conflict(&e) || is_not_found(&e) => continue,
                Err(e) => return Err(api_error(e, "name claim")),
            }
        }
        Err(ScimError::Unavailable {
            retry_after_secs: 1,
            detail: format!("{} {name:?} is contended; retry", kind.describe()),
        })
    }

    /// Wait a moment (`IN_FLIGHT_WAIT`, within the claim's window `left` and the request's
    /// deadline) for the holder of `claim`, which doesn't exist yet, to be stored by its
    /// create in flight.
    async fn await_holder(
        &self,
        kind: NameKind,
        claim: &Lease,
        name: &str,
        left: Duration,
    ) -> Result<InFlight, ScimError> {
        let lease_name = claim.metadata.name.clone().unwrap_or_default();
        let holder = claim
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.clone())
            .unwrap_or_default();
        let started = tokio::time::Instant::now();
        let stop = super::deadline_within(IN_FLIGHT_WAIT.min(left));
        loop {
            if tokio::time::Instant::now() + IN_FLIGHT_POLL > stop {
                return Ok(InFlight::Pending(left.saturating_sub(started.elapsed())));
            }
            tokio::time::sleep(IN_FLIGHT_POLL).await;
            // Released (its create failed) or taken over meanwhile: claim afresh.
            let now = with_timeout(self.leases_api().get_opt(&lease_name))
                .await?
                .map_err(|e| api_error(e, "name claim"))?;
            if now.and_then(|l| l.spec?.holder_identity) != Some(holder.clone()) {
                return Ok(InFlight::Changed);
            }
            match self.holder_state(kind, &holder, name).await? {
                Holder::Owns => return Ok(InFlight::Landed),
                Holder::Gone { exists: true } => return Ok(InFlight::Stale),
                Holder::Gone { exists: false } => {}
            }
        }
    }

    /// Drop `id`'s claim on `name` (best effort: a leftover claim is stale and taken over).
    pub(super) async fn release_name(&self, kind: NameKind, name: &str, id: &str) {
        let lease_name = claim_name(kind, name);
        let api = self.leases_api();
        let Ok(Ok(existing)) = with_timeout(api.get(&lease_name)).await else {
            return;
        };
        if existing
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            != Some(id)
        {
            return;
        }
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: existing.metadata.resource_version.clone(),
                uid: None,
            }),
            ..DeleteParams::default()
        };
        if let Ok(Err(e)) = with_timeout(api.delete(&lease_name, &dp)).await {
            tracing::debug!(error = %e, "releasing a name claim; it will be taken over when stale");
        }
    }
}

/// What became of a claim's create in flight after a moment's wait.
enum InFlight {
    /// Its holder was stored: the name is taken.
    Landed,
    /// Its holder exists under another name: the claim is stale.
    Stale,
    /// The claim was released or taken over meanwhile.
    Changed,
    /// Still no holder; the create may land for this much longer.
    Pending(Duration),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(acquired_secs_ago: Option<i64>, duration: Option<i32>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some("u1".into()),
            acquire_time: acquired_secs_ago
                .map(|ago| MicroTime(Timestamp::from_second(1_000_000 - ago).expect("timestamp"))),
            lease_duration_seconds: duration,
            ..LeaseSpec::default()
        }
    }

    /// A claim whose holder doesn't exist yet is in flight for as long as the claim says
    /// (the claiming request's deadline and a margin), 30 s when it doesn't say; never
    /// when it has no acquire time; a clock ahead counts as brand new.
    #[test]
    fn a_claim_is_in_flight_for_its_window() {
        let now = Timestamp::from_second(1_000_000).expect("timestamp");
        let secs = |s: u64| Some(Duration::from_secs(s));
        assert_eq!(in_flight_left(&spec(Some(3), Some(10)), now), secs(7));
        assert_eq!(in_flight_left(&spec(Some(10), Some(10)), now), None);
        assert_eq!(in_flight_left(&spec(Some(11), Some(10)), now), None);
        assert_eq!(in_flight_left(&spec(Some(5), None), now), secs(25));
        assert_eq!(in_flight_left(&spec(Some(31), None), now), None);
        assert_eq!(in_flight_left(&spec(None, Some(10)), now), None);
        assert_eq!(in_flight_left(&spec(Some(-20), Some(10)), now), secs(10));
        assert_eq!(in_flight_left(&spec(Some(1), Some(-5)), now), secs(29));
    }

    #[test]
    fn a_claim_made_in_a_request_lasts_its_remaining_time_and_a_margin() {
        assert_eq!(
            in_flight_window(Some(Duration::from_secs(20))),
            Duration::from_secs(22)
        );
        assert_eq!(in_flight_window(None), IN_FLIGHT_GRACE);
    }

    #[test]
    fn claim_names_are_case_insensitive_valid_and_distinct_per_kind() {
        let a = claim_name(NameKind::UserName, "Alice@Example.com");
        assert_eq!(a, claim_name(NameKind::UserName, "alice@example.com"));
        assert_ne!(
            a,
            claim_name(NameKind::GroupDisplayName, "alice@example.com")
        );
        assert!(
            a.len() <= 63
                && a.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
    }
}
