//! Writes the plan's bindings: server-side apply of what differs from the cache, then
//! deletion of what the plan prunes, and the mapping finalizer.
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{stream, StreamExt};
use k8s_openapi::api::rbac::v1::{
    ClusterRoleBinding, RoleBinding, RoleRef as K8sRoleRef, Subject as K8sSubject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use super::leader::{Deposed, Term};
use super::naming::role_kind_str;
use super::plan::{BindingId, BindingKind, DesiredBinding, MappingKey, RBAC_API_GROUP};
use super::world::Snapshot;

/// Field manager of everything the controller writes.
pub const FIELD_MANAGER: &str = "kube-scim-controller";
/// Finalizer on both mapping kinds: their bindings are pruned before they go.
pub const FINALIZER: &str = "scim.kubescim.io/bindings";
/// Writes in flight at once: enough to hide API latency, few enough not to swamp it.
const WRITE_CONCURRENCY: usize = 8;
/// A write the API server doesn't answer in this time counts as failed (and is retried),
/// rather than stalling the pass for the client's much longer read timeout.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("no answer from the API server within {0:?}")]
    Timeout(Duration),
    /// Not sent (or abandoned): this replica no longer leads.
    #[error(transparent)]
    Deposed(#[from] Deposed),
}

impl WriteError {
    /// HTTP status of an API error.
    pub fn code(&self) -> Option<u16> {
        match self {
            WriteError::Kube(kube::Error::Api(s)) => Some(s.code),
            _ => None,
        }
    }
}

/// `fut`, failing with [`WriteError::Timeout`] after [`WRITE_TIMEOUT`].
pub async fn timed<T>(
    fut: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, WriteError> {
    match tokio::time::timeout(WRITE_TIMEOUT, fut).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(WriteError::Timeout(WRITE_TIMEOUT)),
    }
}

/// `fut` as a write of `term`: sent only if the term still holds just before (the
/// future is lazy: checking first, then polling, is checking just before sending),
/// abandoned the moment the term ends, and bounded by [`WRITE_TIMEOUT`].
pub async fn fenced<T>(
    term: &Term,
    fut: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, WriteError> {
    term.check()?;
    tokio::select! {
        biased;
        _ = term.cancelled() => Err(term.deposed().into()),
        r = timed(fut) => r,
    }
}

/// What happened to the writes of one pass.
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// Bindings written (they differed from the cache).
    pub applied: usize,
    /// Bindings the API server refused (403: the operator may not grant that role), by mapping.
    pub refused: Vec<(MappingKey, String)>,
    /// Writes that failed for another reason (retried on the next pass).
    pub failed: usize,
    /// Mappings with a failed write: their prunes wait (a subject moving between parts
    /// must be in its new part before the old one goes).
    pub failed_mappings: HashSet<MappingKey>,
    /// Some writes were not sent: this replica no longer leads.
    pub deposed: bool,
}

/// Apply every desired binding that differs from its cached live object, each write
/// fenced by `term`.
pub async fn apply_bindings(
    client: &Client,
    term: &Term,
    desired: &[DesiredBinding],
    snap: &Snapshot,
) -> ApplyReport {
    let todo: Vec<&DesiredBinding> = desired.iter().filter(|d| !matches_live(d, snap)).collect();
    // Futures built up front: a stream mapping over borrowed items would not be `Send`.
    let writes: Vec<_> = todo
        .into_iter()
        .map(|d| async move {
            let cached = cached_meta(snap, d.kind, d.namespace.as_deref(), &d.name);
            (d, apply_one(client, term, d, cached).await)
        })
        .collect();
    let results: Vec<(&DesiredBinding, Result<(), WriteError>)> = stream::iter(writes)
        .buffer_unordered(WRITE_CONCURRENCY)
        .collect()
        .await;
    let mut report = ApplyReport::default();
    for (d, result) in results {
        let what = describe(d.kind, d.namespace.as_deref(), &d.name);
        match result {
            Ok(()) => {
                report.applied += 1;
                tracing::debug!(binding = %what, subjects = d.subjects.len(), "applied");
            }
            Err(WriteError::Kube(kube::Error::Api(s))) if s.code == 403 => {
                tracing::warn!(binding = %what, error = %s.message, "binding refused");
                report
                    .refused
                    .push((d.mapping.clone(), format!("{what}: {}", s.message)));
            }
            // The namespace went away between plan and write: the next pass drops it.
            Err(e) if e.code() == Some(404) => {
                tracing::debug!(binding = %what, "namespace gone; skipped");
            }
            Err(WriteError::Deposed(d)) => {
                tracing::debug!(binding = %what, reason = %d, "not applied: no longer the leader");
                report.deposed = true;
            }
            Err(e) => {
                tracing::warn!(binding = %what, error = %e, "apply failed");
                report.failed += 1;
                report.failed_mappings.insert(d.mapping.clone());
            }
        }
    }
    report
}

/// What happened to the deletions of one pass.
#[derive(Debug, Default)]
pub struct PruneReport {
    /// Gone: deleted, or already absent.
    pub gone: Vec<BindingId>,
    /// Changed (or replaced) since the cache saw it: the uid/resourceVersion preconditions
    /// failed (409). Not an error: the next pass re-plans from the new state.
    pub stale: usize,
    pub failed: usize,
    /// Some deletions were not sent: this replica no longer leads.
    pub deposed: bool,
}

/// Delete the bindings in `prune`, each on the uid and resourceVersion of the cache entry
/// the plan saw, so a binding that changed since is never deleted from a stale view.
pub async fn prune_bindings(
    client: &Client,
    term: &Term,
    prune: &[BindingId],
    snap: &Snapshot,
) -> PruneReport {
    let mut report = PruneReport::default();
    let mut deletes = Vec::new();
    for id in prune {
        match cached_meta(snap, id.kind, id.namespace.as_deref(), &id.name) {
            Some(meta) => deletes
                .push(async move { (id, fenced(term, delete_one(client, id, Some(meta))).await) }),
            // Not in the snapshot: it is already gone.
            None => report.gone.push(id.clone()),
        }
    }
    let results: Vec<(&BindingId, Result<(), WriteError>)> = stream::iter(deletes)
        .buffer_unordered(WRITE_CONCURRENCY)
        .collect()
        .await;
    for (id, result) in results {
        let what = describe(id.kind, id.namespace.as_deref(), &id.name);
        match result {
            Ok(()) => {
                tracing::info!(binding = %what, "pruned");
                report.gone.push(id.clone());
            }
            Err(e) if e.code() == Some(404) => report.gone.push(id.clone()),
            Err(e) if e.code() == Some(409) => {
                tracing::info!(binding = %what, "changed since it was planned; not pruned, re-planning");
                report.stale += 1;
            }
            Err(WriteError::Deposed(d)) => {
                tracing::debug!(binding = %what, reason = %d, "not pruned: no longer the leader");
                report.deposed = true;
            }
            Err(e) => {
                tracing::warn!(binding = %what, error = %e, "prune failed");
                report.failed += 1;
            }
        }
    }
    report
}

/// The metadata (uid, resourceVersion) of a binding's cache entry in `snap`.
fn cached_meta<'a>(
    snap: &'a Snapshot,
    kind: BindingKind,
    namespace: Option<&str>,
    name: &str,
) -> Option<&'a ObjectMeta> {
    match (kind, namespace) {
        (BindingKind::RoleBinding, Some(ns)) => snap
            .role_bindings
            .get(&(ns.to_owned(), name.to_owned()))
            .map(|b| &b.metadata),
        _ => snap.cluster_role_bindings.get(name).map(|b| &b.metadata),
    }
}

/// Delete preconditions from a cache entry: the very object the plan saw, unchanged.
pub fn preconditions(meta: &ObjectMeta) -> DeleteParams {
    DeleteParams {
        preconditions: Some(Preconditions {
            uid: meta.uid.clone(),
            resource_version: meta.resource_version.clone(),
        }),
        ..DeleteParams::default()
    }
}

async fn apply_one(
    client: &Client,
    term: &Term,
    d: &DesiredBinding,
    cached: Option<&ObjectMeta>,
) -> Result<(), WriteError> {
    match fenced(term, apply_patch(client, d)).await {
        // roleRef is immutable. Names hash the role, so this means someone repointed our
        // binding by hand (delete + create under the same name): replace it — the object
        // the cache saw, and only if it is still that one.
        Err(WriteError::Kube(kube::Error::Api(s)))
            if s.code == 422 && s.message.contains("roleRef") =>
        {
            tracing::info!(
                binding = %describe(d.kind, d.namespace.as_deref(), &d.name),
                "roleRef differs; recreating"
            );
            let id = BindingId {
                kind: d.kind,
                namespace: d.namespace.clone(),
                name: d.name.clone(),
            };
            // Not in the cache (not labelled as ours): the object as it is now.
            let live = match cached {
                Some(meta) => Some(meta.clone()),
                None => fenced(term, get_meta(client, &id)).await?,
            };
            let Some(live) = live else {
                return fenced(term, apply_patch(client, d)).await;
            };
            match fenced(term, delete_one(client, &id, Some(&live))).await {
                Ok(()) => {}
                Err(e) if e.code() == Some(404) => {}
                Err(e) => return Err(e),
            }
            fenced(term, apply_patch(client, d)).await
        }
        other => other,
    }
}

async fn apply_patch(client: &Client, d: &DesiredBinding) -> Result<(), kube::Error> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let metadata = ObjectMeta {
        name: Some(d.name.clone()),
        namespace: d.namespace.clone(),
        labels: Some(d.labels.clone()),
        annotations: Some(d.annotations.clone()),
        ..ObjectMeta::default()
    };
    let role_ref = K8sRoleRef {
        api_group: RBAC_API_GROUP.to_owned(),
        kind: role_kind_str(d.role_ref.kind).to_owned(),
        name: d.role_ref.name.clone(),
    };
    let subjects: Vec<K8sSubject> = d
        .subjects
        .iter()
        .map(|s| K8sSubject {
            api_group: Some(RBAC_API_GROUP.to_owned()),
            kind: s.kind.as_str().to_owned(),
            name: s.name.clone(),
            namespace: None,
        })
        .collect();
    match (d.kind, &d.namespace) {
        (BindingKind::RoleBinding, Some(ns)) => {
            let obj = RoleBinding {
                metadata,
                role_ref,
                subjects: Some(subjects),
            };
            Api::<RoleBinding>::namespaced(client.clone(), ns)
                .patch(&d.name, &params, &Patch::Apply(&obj))
                .await?;
        }
        _ => {
            let obj = ClusterRoleBinding {
                metadata,
                role_ref,
                subjects: Some(subjects),
            };
            Api::<ClusterRoleBinding>::all(client.clone())
                .patch(&d.name, &params, &Patch::Apply(&obj))
                .await?;
        }
    }
    Ok(())
}

/// The live metadata of a binding, None when absent.
async fn get_meta(client: &Client, id: &BindingId) -> Result<Option<ObjectMeta>, kube::Error> {
    Ok(match (id.kind, &id.namespace) {
        (BindingKind::RoleBinding, Some(ns)) => Api::<RoleBinding>::namespaced(client.clone(), ns)
            .get_opt(&id.name)
            .await?
            .map(|b| b.metadata),
        _ => Api::<ClusterRoleBinding>::all(client.clone())
            .get_opt(&id.name)
            .await?
            .map(|b| b.metadata),
    })
}

/// Delete a binding; with `cached`, only if it still is that object (uid and
/// resourceVersion preconditions: 409 otherwise).
async fn delete_one(
    client: &Client,
    id: &BindingId,
    cached: Option<&ObjectMeta>,
) -> Result<(), kube::Error> {
    let dp = cached.map(preconditions).unwrap_or_default();
    match (id.kind, &id.namespace) {
        (BindingKind::RoleBinding, Some(ns)) => {
            Api::<RoleBinding>::namespaced(client.clone(), ns)
                .delete(&id.name, &dp)
                .await?;
        }
        _ => {
            Api::<ClusterRoleBinding>::all(client.clone())
                .delete(&id.name, &dp)
                .await?;
        }
    }
    Ok(())
}

/// Whether the cached live binding already is exactly what the plan wants (so no write).
fn matches_live(d: &DesiredBinding, snap: &Snapshot) -> bool {
    let (meta, role_ref, subjects, exact) = match (d.kind, &d.namespace) {
        (BindingKind::RoleBinding, Some(ns)) => {
            match snap.role_bindings.get(&(ns.clone(), d.name.clone())) {
                Some(b) => (&b.metadata, &b.role_ref, &b.subjects, b.exact),
                None => return false,
            }
        }
        _ => match snap.cluster_role_bindings.get(&d.name) {
            Some(b) => (&b.metadata, &b.role_ref, &b.subjects, b.exact),
            None => return false,
        },
    };
    let contains = |have: &Option<BTreeMap<String, String>>, want: &BTreeMap<String, String>| {
        want.iter()
            .all(|(k, v)| have.as_ref().and_then(|h| h.get(k)) == Some(v))
    };
    role_ref.api_group == RBAC_API_GROUP
        && role_ref.kind == role_kind_str(d.role_ref.kind)
        && role_ref.name == d.role_ref.name
        && contains(&meta.labels, &d.labels)
        && contains(&meta.annotations, &d.annotations)
        // `exact`: nothing but the User/Group subjects kube-scim writes.
        && exact
        && (Arc::ptr_eq(subjects, &d.subjects) || subjects[..] == d.subjects[..])
}

/// `RoleBinding ns/name` or `ClusterRoleBinding name`.
pub fn describe(kind: BindingKind, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{} {ns}/{name}", kind.as_str()),
        None => format!("{} {name}", kind.as_str()),
    }
}

/// Add the finalizer to a mapping that lacks it.
pub async fn add_finalizer<K>(api: &Api<K>, obj: &K) -> Result<(), kube::Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut finalizers = obj.meta().finalizers.clone().unwrap_or_default();
    if finalizers.iter().any(|f| f == FINALIZER) {
        return Ok(());
    }
    finalizers.push(FINALIZER.to_owned());
    set_finalizers(api, obj, finalizers).await
}

/// Remove the finalizer, keeping everyone else's.
pub async fn remove_finalizer<K>(api: &Api<K>, obj: &K) -> Result<(), kube::Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let finalizers: Vec<String> = obj
        .meta()
        .finalizers
        .iter()
        .flatten()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    set_finalizers(api, obj, finalizers).await
}

/// A merge patch of the whole finalizer list, made conditional by carrying the cached
/// resourceVersion: if anyone changed the object since, the API server answers 409 and
/// the next pass retries with fresh data, so another controller's finalizer is never
/// clobbered.
async fn set_finalizers<K>(
    api: &Api<K>,
    obj: &K,
    finalizers: Vec<String>,
) -> Result<(), kube::Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = json!({
        "metadata": {
            "resourceVersion": obj.resource_version(),
            "finalizers": finalizers,
        }
    });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    match api
        .patch(&obj.name_any(), &params, &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        // Already gone: nothing left to hold.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

pub fn has_finalizer(meta: &ObjectMeta) -> bool {
    meta.finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|x| x == FINALIZER))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::controller::leader::TermEnd;

    #[tokio::test]
    async fn fenced_writes_stop_with_their_term() {
        let term = Term::unbounded(CancellationToken::new());
        let sent = AtomicBool::new(false);
        let write = || async {
            sent.store(true, Ordering::SeqCst);
            Ok::<_, kube::Error>(())
        };
        assert!(fenced(&term, write()).await.is_ok());
        assert!(sent.swap(false, Ordering::SeqCst));

        // In flight when the term ends: abandoned at once.
        let ender = term.clone();
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            ender.end(TermEnd::Lost);
        });
        let hung = fenced(&term, std::future::pending::<Result<(), kube::Error>>()).await;
        assert!(
            matches!(hung, Err(WriteError::Deposed(Deposed(TermEnd::Lost)))),
            "{hung:?}"
        );

        // After it: never sent.
        let late = fenced(&term, write()).await;
        assert!(matches!(late, Err(WriteError::Deposed(_))), "{late:?}");
        assert!(
            !sent.load(Ordering::SeqCst),
            "a deposed leader sent a write"
        );
    }

    #[test]
    fn deletes_carry_the_cached_uid_and_resource_version() {
        let meta = ObjectMeta {
            uid: Some("u-1".into()),
            resource_version: Some("42".into()),
            ..ObjectMeta::default()
        };
        let dp = preconditions(&meta);
        let p = dp.preconditions.expect("preconditions");
        assert_eq!(p.uid.as_deref(), Some("u-1"));
        assert_eq!(p.resource_version.as_deref(), Some("42"));
    }
}
