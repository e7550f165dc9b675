//! Writes the plan's bindings: server-side apply of what differs from the cache, then
//! deletion of what the plan prunes, and the mapping finalizer.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use k8s_openapi::api::rbac::v1::{
    ClusterRoleBinding, RoleBinding, RoleRef as K8sRoleRef, Subject as K8sSubject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use super::bindings::ObjectVersion;
use super::leader::{Deposed, Term};
use super::naming::role_kind_str;
use super::plan::{BindingId, BindingKind, DesiredBinding, MappingKey, Subject, RBAC_API_GROUP};
use super::retry::{retry_after, Category, Retries};
use super::world::Snapshot;
use crate::crd::RoleRef;

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

/// The parts of one logical binding: the bindings of one mapping with the same kind,
/// namespace and role. A subject moving between parts stays within its family.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Family {
    pub mapping: MappingKey,
    pub kind: BindingKind,
    pub namespace: Option<String>,
    pub role_ref: RoleRef,
}

impl Family {
    pub fn of(d: &DesiredBinding) -> Family {
        Family {
            mapping: d.mapping.clone(),
            kind: d.kind,
            namespace: d.namespace.clone(),
            role_ref: d.role_ref.clone(),
        }
    }
}

/// Every subject each of `families` wants, in any of its parts. Only the families with
/// a waiting part need it, and usually there is none: for all families at once this is
/// a set entry per subject and namespace copy (5M at 50,000 users × 100 namespaces).
pub fn wanted_by_family<'d>(
    desired: &'d [DesiredBinding],
    families: &HashSet<Family>,
) -> HashMap<Family, HashSet<&'d Subject>> {
    let mut wanted: HashMap<Family, HashSet<&Subject>> = HashMap::new();
    if families.is_empty() {
        return wanted;
    }
    for d in desired {
        let family = Family::of(d);
        if families.contains(&family) {
            wanted.entry(family).or_default().extend(d.subjects.iter());
        }
    }
    wanted
}

fn binding_id(d: &DesiredBinding) -> BindingId {
    BindingId {
        kind: d.kind,
        namespace: d.namespace.clone(),
        name: d.name.clone(),
    }
}

/// Binding writes that failed and wait for their retry time, kept across the passes of a
/// leadership term (see [`super::retry`]): a binding the API server keeps refusing is
/// retried on its own backoff, and never makes the controller plan the world again.
#[derive(Default, Debug)]
pub struct BindingRetries {
    retries: Retries<BindingId>,
    /// Why a waiting binding was refused (403): its mapping keeps reporting it while the
    /// binding isn't tried.
    refused: HashMap<BindingId, (MappingKey, String)>,
}

impl BindingRetries {
    fn forget(&mut self, id: &BindingId) {
        self.retries.forget(id);
        self.refused.remove(id);
    }

    /// Bindings waiting at `now`.
    pub fn waiting(&self, now: Instant) -> usize {
        self.retries.waiting_count(now)
    }

    /// When the earliest waiting binding may be written again (possibly already).
    pub fn next_due(&self) -> Option<Instant> {
        self.retries.next_due()
    }
}

/// What a pass does with one desired binding.
#[derive(Debug, PartialEq)]
enum Step {
    /// The cache already shows it: nothing to write.
    InSync,
    /// Write it whole.
    Write,
    /// Its last write failed and its retry is not due: leave it.
    Wait,
    /// Waiting, but it holds subjects no part of its family wants any more: take those
    /// out now (write the live subjects minus them), so that a revocation never waits
    /// behind an addition that keeps failing. The subjects to keep.
    Shrink(Arc<[Subject]>),
}

/// Decide the [`Step`] of `d`: `waiting` when its retry is not due, `wanted` = what its
/// family wants.
fn step(d: &DesiredBinding, snap: &Snapshot, waiting: bool, wanted: &HashSet<&Subject>) -> Step {
    if matches_live(d, snap) {
        return Step::InSync;
    }
    if !waiting {
        return Step::Write;
    }
    let Some(live) = cached_subjects(snap, d.kind, d.namespace.as_deref(), &d.name) else {
        return Step::Wait;
    };
    let keep: Vec<Subject> = live
        .iter()
        .filter(|s| wanted.contains(s))
        .cloned()
        .collect();
    if keep.len() == live.len() {
        Step::Wait
    } else {
        Step::Shrink(keep.into())
    }
}

/// What happened to the writes of one pass.
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// Bindings written whole (they differed from the cache).
    pub applied: usize,
    /// Waiting bindings whose removed subjects were taken out.
    pub shrunk: usize,
    /// Bindings the API server refused (403: the operator may not grant that role), by
    /// mapping; also those still waiting after such a refusal.
    pub refused: Vec<(MappingKey, String)>,
    /// Writes that failed this pass (each now waits for its own retry).
    pub failed: usize,
    /// Why each failed write failed.
    pub retries: Vec<Category>,
    /// Bindings not written because their retry is not due.
    pub waiting: usize,
    /// Families with a part that failed or waits: a part of theirs whose subjects all
    /// moved to other parts is not pruned until those are written.
    pub blocked: HashSet<Family>,
    /// Some writes were not sent: this replica no longer leads.
    pub deposed: bool,
}

/// Run `make(item)` for every item, `limit` at a time, in any order. Each future is
/// made only when a slot frees up: a write's future is ~25 kB (the kube client's request
/// stack), and 500 made up front were 12.8 MB, a quarter of the 5,000-user benchmark's
/// peak heap.
async fn bounded<T, F, Fut>(items: Vec<T>, limit: usize, mut make: F) -> Vec<Fut::Output>
where
    F: FnMut(T) -> Fut,
    Fut: std::future::Future,
{
    let mut items = items.into_iter();
    let mut running = FuturesUnordered::new();
    let mut out = Vec::new();
    loop {
        while running.len() < limit {
            let Some(item) = items.next() else {
                break;
            };
            running.push(make(item));
        }
        match running.next().await {
            Some(r) => out.push(r),
            None => return out,
        }
    }
}

/// Write `d` (or, when its write waits, `shrink`: `d`'s live subjects minus removals).
async fn write_binding<'a>(
    client: &Client,
    term: &Term,
    snap: &Snapshot,
    d: &'a DesiredBinding,
    shrink: Option<DesiredBinding>,
) -> (&'a DesiredBinding, bool, Result<(), WriteError>) {
    let cached = cached_version(snap, d.kind, d.namespace.as_deref(), &d.name);
    let result = apply_one(client, term, shrink.as_ref().unwrap_or(d), cached).await;
    (d, shrink.is_some(), result)
}

/// Delete `id`, preconditioned on `version` (the object the plan saw).
async fn delete_binding<'a>(
    client: &Client,
    term: &Term,
    id: &'a BindingId,
    version: &ObjectVersion,
) -> (&'a BindingId, Result<(), WriteError>) {
    (
        id,
        fenced(term, delete_one(client, id, Some(version))).await,
    )
}

/// Apply every desired binding that differs from its cached live object, each write
/// fenced by `term`. A binding whose earlier write failed waits for its retry time in
/// `retries` (only its removals go out meanwhile); a write that fails now starts or
/// extends its wait.
pub async fn apply_bindings(
    client: &Client,
    term: &Term,
    desired: &[DesiredBinding],
    snap: &Snapshot,
    retries: &mut BindingRetries,
) -> ApplyReport {
    let now = Instant::now();
    let waiting_families: HashSet<Family> = if retries.retries.is_empty() {
        HashSet::new()
    } else {
        desired
            .iter()
            .filter(|d| retries.retries.waiting(&binding_id(d), now).is_some())
            .map(Family::of)
            .collect()
    };
    let wanted = wanted_by_family(desired, &waiting_families);
    let no_subjects = HashSet::new();
    let mut report = ApplyReport::default();
    let mut todo: Vec<(&DesiredBinding, Option<DesiredBinding>)> = Vec::new();
    for d in desired {
        let id = binding_id(d);
        let family = Family::of(d);
        let waiting = retries.retries.waiting(&id, now).is_some();
        match step(
            d,
            snap,
            waiting,
            wanted.get(&family).unwrap_or(&no_subjects),
        ) {
            // Nothing to write any more: whatever failed before is moot.
            Step::InSync => {
                retries.forget(&id);
                continue;
            }
            Step::Write => todo.push((d, None)),
            Step::Wait => report.waiting += 1,
            Step::Shrink(keep) => {
                report.waiting += 1;
                todo.push((
                    d,
                    Some(DesiredBinding {
                        subjects: keep,
                        ..d.clone()
                    }),
                ));
            }
        }
        if waiting {
            report.blocked.insert(family);
            report.refused.extend(retries.refused.get(&id).cloned());
        }
    }
    // Bindings the plan no longer wants (or that are in sync) have nothing to retry.
    let ids: HashSet<BindingId> = desired.iter().map(binding_id).collect();
    retries.retries.retain(|id| ids.contains(id));
    retries.refused.retain(|id, _| ids.contains(id));

    let results: Vec<(&DesiredBinding, bool, Result<(), WriteError>)> =
        bounded(todo, WRITE_CONCURRENCY, |(d, shrink)| {
            write_binding(client, term, snap, d, shrink)
        })
        .await;
    for (d, shrink, result) in results {
        let what = describe(d.kind, d.namespace.as_deref(), &d.name);
        let id = binding_id(d);
        match result {
            Ok(()) if shrink => {
                report.shrunk += 1;
                tracing::info!(binding = %what, "removals written to a binding whose write waits for a retry");
            }
            Ok(()) => {
                retries.forget(&id);
                report.applied += 1;
                tracing::debug!(binding = %what, subjects = d.subjects.len(), "applied");
            }
            // The namespace went away between plan and write: the next pass drops it.
            Err(e) if e.code() == Some(404) => {
                retries.forget(&id);
                tracing::debug!(binding = %what, "namespace gone; skipped");
            }
            Err(WriteError::Deposed(d)) => {
                tracing::debug!(binding = %what, reason = %d, "not applied: no longer the leader");
                report.deposed = true;
            }
            Err(e) => {
                let category = Category::of(&e);
                let retry_in = retries.retries.fail(&id, retry_after(&e), Instant::now());
                let failures = retries.retries.failures(&id);
                report.failed += 1;
                report.retries.push(category);
                report.blocked.insert(Family::of(d));
                match &e {
                    WriteError::Kube(kube::Error::Api(s)) if s.code == 403 => {
                        tracing::warn!(binding = %what, error = %s.message, ?retry_in, failures, "binding refused");
                        let refusal = (d.mapping.clone(), format!("{what}: {}", s.message));
                        // A waiting binding's refusal was reported above already.
                        if retries.refused.insert(id, refusal.clone()).is_none() || !shrink {
                            report.refused.push(refusal);
                        }
                    }
                    _ => {
                        tracing::warn!(binding = %what, error = %e, category = category.as_str(), ?retry_in, failures, "apply failed");
                    }
                }
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
        match cached_version(snap, id.kind, id.namespace.as_deref(), &id.name) {
            Some(version) => deletes.push((id, version)),
            // Not in the snapshot: it is already gone.
            None => report.gone.push(id.clone()),
        }
    }
    let results: Vec<(&BindingId, Result<(), WriteError>)> =
        bounded(deletes, WRITE_CONCURRENCY, |(id, version)| {
            delete_binding(client, term, id, version)
        })
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

/// The uid and resourceVersion of a binding's cache entry in `snap`.
fn cached_version<'a>(
    snap: &'a Snapshot,
    kind: BindingKind,
    namespace: Option<&str>,
    name: &str,
) -> Option<&'a ObjectVersion> {
    match (kind, namespace) {
        (BindingKind::RoleBinding, Some(ns)) => snap
            .role_bindings
            .get(&(ns.to_owned(), name.to_owned()))
            .map(|b| &b.version),
        _ => snap.cluster_role_bindings.get(name).map(|b| &b.version),
    }
}

/// The subjects of a binding's cache entry in `snap`.
fn cached_subjects<'a>(
    snap: &'a Snapshot,
    kind: BindingKind,
    namespace: Option<&str>,
    name: &str,
) -> Option<&'a Arc<[Subject]>> {
    match (kind, namespace) {
        (BindingKind::RoleBinding, Some(ns)) => snap
            .role_bindings
            .get(&(ns.to_owned(), name.to_owned()))
            .map(|b| &b.subjects),
        _ => snap.cluster_role_bindings.get(name).map(|b| &b.subjects),
    }
}

/// Delete preconditions from a cache entry: the very object the plan saw, unchanged.
pub fn preconditions(version: &ObjectVersion) -> DeleteParams {
    DeleteParams {
        preconditions: Some(Preconditions {
            uid: version.uid.clone(),
            resource_version: version.resource_version.clone(),
        }),
        ..DeleteParams::default()
    }
}

async fn apply_one(
    client: &Client,
    term: &Term,
    d: &DesiredBinding,
    cached: Option<&ObjectVersion>,
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
                Some(version) => Some(version.clone()),
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

/// A subject as kube-scim writes it into a binding.
pub(super) fn k8s_subject(s: &Subject) -> K8sSubject {
    K8sSubject {
        api_group: Some(RBAC_API_GROUP.to_owned()),
        kind: s.kind.as_str().to_owned(),
        name: s.name.clone(),
        namespace: None,
    }
}

async fn apply_patch(client: &Client, d: &DesiredBinding) -> Result<(), kube::Error> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let metadata = ObjectMeta {
        name: Some(d.name.clone()),
        namespace: d.namespace.clone(),
        labels: Some((*d.labels).clone()),
        annotations: Some((*d.annotations).clone()),
        ..ObjectMeta::default()
    };
    let role_ref = K8sRoleRef {
        api_group: RBAC_API_GROUP.to_owned(),
        kind: role_kind_str(d.role_ref.kind).to_owned(),
        name: d.role_ref.name.clone(),
    };
    let subjects: Vec<K8sSubject> = d.subjects.iter().map(k8s_subject).collect();
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

/// The live uid and resourceVersion of a binding, None when absent.
async fn get_meta(client: &Client, id: &BindingId) -> Result<Option<ObjectVersion>, kube::Error> {
    Ok(match (id.kind, &id.namespace) {
        (BindingKind::RoleBinding, Some(ns)) => Api::<RoleBinding>::namespaced(client.clone(), ns)
            .get_opt(&id.name)
            .await?
            .map(|b| ObjectVersion::of(b.metadata)),
        _ => Api::<ClusterRoleBinding>::all(client.clone())
            .get_opt(&id.name)
            .await?
            .map(|b| ObjectVersion::of(b.metadata)),
    })
}

/// Delete a binding; with `cached`, only if it still is that object (uid and
/// resourceVersion preconditions: 409 otherwise).
async fn delete_one(
    client: &Client,
    id: &BindingId,
    cached: Option<&ObjectVersion>,
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
    let (common, subjects, exact) = match (d.kind, &d.namespace) {
        (BindingKind::RoleBinding, Some(ns)) => {
            match snap.role_bindings.get(&(ns.clone(), d.name.clone())) {
                Some(b) => (&b.common, &b.subjects, b.exact),
                None => return false,
            }
        }
        _ => match snap.cluster_role_bindings.get(&d.name) {
            Some(b) => (&b.common, &b.subjects, b.exact),
            None => return false,
        },
    };
    // The cache keeps only kube-scim's own keys, and all of them: each wanted label and
    // annotation must be there with its value (a drifted one is written back).
    let contains = |have: &BTreeMap<String, String>, want: &BTreeMap<String, String>| {
        want.iter().all(|(k, v)| have.get(k) == Some(v))
    };
    common.role_api_group == RBAC_API_GROUP
        && common.role_kind == role_kind_str(d.role_ref.kind)
        && common.role_name == d.role_ref.name
        && contains(&common.labels, &d.labels)
        && contains(&common.annotations, &d.annotations)
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

    /// A snapshot whose cache holds `live` RoleBindings (name, subjects) in `ns`.
    fn snapshot(live: &[(&str, &[&str])]) -> Snapshot {
        use super::super::bindings::{BindingInterner, CachedBinding};
        let lists = BindingInterner::default();
        let mut snap = Snapshot::default();
        for (name, subjects) in live {
            let rb = RoleBinding {
                metadata: ObjectMeta {
                    name: Some((*name).into()),
                    namespace: Some("ns".into()),
                    ..ObjectMeta::default()
                },
                role_ref: K8sRoleRef {
                    api_group: RBAC_API_GROUP.into(),
                    kind: "ClusterRole".into(),
                    name: "view".into(),
                },
                subjects: Some(
                    subjects
                        .iter()
                        .map(|s| K8sSubject {
                            api_group: Some(RBAC_API_GROUP.into()),
                            kind: "User".into(),
                            name: (*s).into(),
                            namespace: None,
                        })
                        .collect(),
                ),
            };
            snap.role_bindings.insert(
                ("ns".into(), (*name).into()),
                Arc::new(CachedBinding::from_object(rb, &lists)),
            );
        }
        snap
    }

    fn users(names: &[&str]) -> Arc<[Subject]> {
        names.iter().map(|s| Subject::user(*s)).collect()
    }

    #[test]
    fn a_waiting_binding_is_left_alone_except_for_its_removals() {
        let snap = snapshot(&[("b1", &["ann", "bob", "cat"]), ("b2", &["dan"])]);
        let step_of = |want: &[DesiredBinding], i: usize, waiting: bool| {
            let families = want.iter().map(Family::of).collect();
            let wanted = wanted_by_family(want, &families);
            step(&want[i], &snap, waiting, &wanted[&Family::of(&want[i])])
        };

        // In sync: nothing to write, waiting or not (its failed write is moot).
        let same = [DesiredBinding::for_test("b1", &["ann", "bob", "cat"])];
        assert_eq!(step_of(&same, 0, true), Step::InSync);
        assert_eq!(step_of(&same, 0, false), Step::InSync);

        // An addition: written when due, left alone while waiting.
        let more = [DesiredBinding::for_test(
            "b1",
            &["ann", "bob", "cat", "eve"],
        )];
        assert_eq!(step_of(&more, 0, false), Step::Write);
        assert_eq!(step_of(&more, 0, true), Step::Wait);

        // bob revoked while eve's addition keeps failing: bob goes out at once, nothing
        // is added, the live order stays.
        let revoked = [DesiredBinding::for_test("b1", &["ann", "cat", "eve"])];
        assert_eq!(
            step_of(&revoked, 0, true),
            Step::Shrink(users(&["ann", "cat"]))
        );

        // bob moved to another part of the same binding (b2): not a revocation, so a
        // waiting b1 keeps him until b1 can be written whole.
        let moved = [
            DesiredBinding::for_test("b1", &["ann", "cat", "eve"]),
            DesiredBinding::for_test("b2", &["bob", "dan"]),
        ];
        assert_eq!(step_of(&moved, 0, true), Step::Wait);
        // ... but only within the family: another mapping's part doesn't count.
        let mut elsewhere = moved.clone();
        elsewhere[1].mapping = MappingKey::Cluster {
            name: "other".into(),
        };
        assert_eq!(
            step_of(&elsewhere, 0, true),
            Step::Shrink(users(&["ann", "cat"]))
        );

        // Not created yet (its creation keeps failing): nothing to take out.
        let new = [DesiredBinding::for_test("b3", &["ann"])];
        assert_eq!(step_of(&new, 0, true), Step::Wait);
    }

    /// Drift in kube-scim's own labels is seen through the compact cache (which keeps
    /// only those) and the binding is written back; another tool's label is not drift.
    #[test]
    fn a_drifted_own_label_is_written_back_and_a_foreign_one_is_not() {
        use super::super::bindings::{BindingInterner, CachedBinding};
        use crate::controller::naming::{mapping_metadata, MAPPING_NAME_LABEL};
        let (labels, annotations) = mapping_metadata(&MappingKey::Cluster { name: "m".into() });
        let mut want = DesiredBinding::for_test("b1", &["ann"]);
        want.labels = Arc::new(labels.clone());
        want.annotations = Arc::new(annotations.clone());
        let shared = BindingInterner::default();
        let live = |labels: &BTreeMap<String, String>| {
            let rb: RoleBinding = serde_json::from_value(json!({
                "metadata": {"name": "b1", "namespace": "ns", "labels": labels,
                             "annotations": &annotations},
                "roleRef": {"apiGroup": RBAC_API_GROUP, "kind": "ClusterRole", "name": "view"},
                "subjects": [{"apiGroup": RBAC_API_GROUP, "kind": "User", "name": "ann"}],
            }))
            .expect("a RoleBinding");
            let mut snap = Snapshot::default();
            snap.role_bindings.insert(
                ("ns".into(), "b1".into()),
                Arc::new(CachedBinding::from_object(rb, &shared)),
            );
            snap
        };
        assert!(matches_live(&want, &live(&labels)));

        let mut foreign = labels.clone();
        foreign.insert("team".into(), "payments".into());
        assert!(matches_live(&want, &live(&foreign)));

        let mut edited = labels.clone();
        edited.insert(MAPPING_NAME_LABEL.into(), "someone-else".into());
        assert!(!matches_live(&want, &live(&edited)));
        let mut stripped = labels.clone();
        stripped.remove(MAPPING_NAME_LABEL);
        assert!(!matches_live(&want, &live(&stripped)));
    }

    #[test]
    fn deletes_carry_the_cached_uid_and_resource_version() {
        let version = ObjectVersion {
            uid: Some("u-1".into()),
            resource_version: Some("42".into()),
        };
        let dp = preconditions(&version);
        let p = dp.preconditions.expect("preconditions");
        assert_eq!(p.uid.as_deref(), Some("u-1"));
        assert_eq!(p.resource_version.as_deref(), Some("42"));
    }
}
