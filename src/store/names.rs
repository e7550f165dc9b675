//! Uniqueness of `userName` (case-insensitive) and group `displayName` across replicas.
//!
//! The cache check plus the in-process claim make a create atomic on one replica, but two
//! replicas (the chart runs two) can both see a name as free — e.g. Entra retrying a
//! timed-out create against the other replica while the first is still writing. So each
//! name is also claimed cluster-wide by creating a coordination.k8s.io Lease named after
//! a hash of the lower-cased name in the operator's namespace: creation is atomic in the
//! API server, the holder is the resource id. A claim whose holder no longer has the name
//! (deleted, renamed, or a create that failed) is stale and taken over, guarded by its
//! resourceVersion; a young claim whose holder doesn't exist yet is a create in flight.
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use sha2::{Digest, Sha256};

use super::{api_error, is_conflict, is_not_found, with_timeout, Store, FIELD_MANAGER};
use crate::crd::{ScimGroup, ScimUser, MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use crate::scim::error::ScimError;

/// How long a claim whose holder doesn't exist yet counts as a create in flight.
const IN_FLIGHT_GRACE: Duration = Duration::from_secs(30);

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
        for _ in 0..5 {
            let mut lease = Lease::default();
            lease.metadata.name = Some(lease_name.clone());
            lease.metadata.labels =
                Some([(MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string())].into());
            lease.spec = Some(LeaseSpec {
                holder_identity: Some(id.to_string()),
                acquire_time: Some(MicroTime(Timestamp::now())),
                ..LeaseSpec::default()
            });
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
                    let age = spec
                        .acquire_time
                        .map(|t| Timestamp::now().duration_since(t.0))
                        .and_then(|d| Duration::try_from(d).ok())
                        .unwrap_or(Duration::MAX);
                    if age < IN_FLIGHT_GRACE {
                        return Err(taken());
                    }
                }
                Holder::Gone { exists: true } => {}
            }
            let mut takeover = existing;
            takeover.spec = Some(LeaseSpec {
                holder_identity: Some(id.to_string()),
                acquire_time: Some(MicroTime(Timestamp::now())),
                ..LeaseSpec::default()
            });
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

#[cfg(test)]
mod tests {
    use super::*;

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
