//! The revocation fast lane, I/O part: a task beside the reconcile loop that turns
//! revocations from the watches into JSON patches on the few binding parts that hold
//! the subject, without waiting for a pass (see [`super::revoke`]).
//!
//! A pass that planned from a snapshot taken before a fast-lane removal must not put
//! the subject back: [`RevokedLog`] remembers recent removals by epoch, and the pass
//! drops them from what it applies.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use futures::{stream, StreamExt};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding, RoleRef, Subject as K8sSubject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::Client;
use serde_json::json;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::Notify;

use super::apply::{fenced, k8s_subject, WriteError, FIELD_MANAGER};
use super::bindings::CachedBinding;
use super::leader::Term;
use super::plan::{BindingKind, DesiredBinding, MappingKey, MappingLayout, Subject};
use super::revoke::{self, Removal};
use super::world::{Noticed, Trigger, World};
use crate::telemetry::{Metrics, OutcomeLabels};

/// Patches in flight at once: a deactivation touches one part per namespace.
const CONCURRENCY: usize = 32;
/// The longest other writers wait for the fast lane before going ahead anyway.
const YIELD_AT_MOST: Duration = Duration::from_secs(2);
/// The longest the lane counts as busy after its last patch was answered, while it waits
/// to see its patches come back through its own binding watch.
const SETTLE_AT_MOST: Duration = Duration::from_secs(1);
/// How often it looks.
const SETTLE_POLL: Duration = Duration::from_millis(5);

/// Revocations first: while the fast lane works, the status writer and the pass's
/// binding writes hold back (bounded), so a removal never queues behind them at the
/// API server.
#[derive(Default, Debug)]
pub struct Priority {
    busy: AtomicUsize,
    idle: Notify,
}

impl Priority {
    fn enter(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy(Arc::clone(self))
    }

    /// Wait until the fast lane is idle, or [`YIELD_AT_MOST`].
    pub async fn yield_to_revocations(&self) {
        let wait = async {
            loop {
                let idle = self.idle.notified();
                tokio::pin!(idle);
                idle.as_mut().enable();
                if self.busy.load(Ordering::Acquire) == 0 {
                    return;
                }
                idle.await;
            }
        };
        let _ = tokio::time::timeout(YIELD_AT_MOST, wait).await;
    }
}

/// Held while a revocation is in flight; owned, so it can outlive the batch that took it.
struct Busy(Arc<Priority>);

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The last plan's layouts, indexed for the fast lane.
#[derive(Default)]
pub struct Layouts {
    pub layouts: BTreeMap<MappingKey, MappingLayout>,
    pub by_group: HashMap<String, Vec<MappingKey>>,
}

impl Layouts {
    pub fn new(layouts: BTreeMap<MappingKey, MappingLayout>) -> Layouts {
        let by_group = revoke::mappings_by_group(&layouts);
        Layouts { layouts, by_group }
    }
}

/// Shared between the pass (writer) and the fast lane (reader).
pub type SharedLayouts = Arc<RwLock<Arc<Layouts>>>;

type BindingKey = (BindingKind, Option<String>, String);

/// Removals made by the fast lane, numbered by epoch.
#[derive(Default, Debug)]
pub struct RevokedLog {
    inner: Mutex<(u64, Vec<(u64, Removal)>)>,
}

impl RevokedLog {
    /// The current epoch: removals recorded later are not in a snapshot taken now.
    pub fn epoch(&self) -> u64 {
        self.lock().0
    }

    pub fn record(&self, removals: &[Removal]) {
        let mut g = self.lock();
        g.0 += 1;
        let epoch = g.0;
        g.1.extend(removals.iter().map(|r| (epoch, r.clone())));
    }

    /// Removals recorded after `epoch`, by binding.
    pub fn since(&self, epoch: u64) -> HashMap<BindingKey, HashSet<Subject>> {
        let mut out: HashMap<BindingKey, HashSet<Subject>> = HashMap::new();
        for (e, r) in &self.lock().1 {
            if *e > epoch {
                out.entry((r.kind, r.namespace.clone(), r.name.clone()))
                    .or_default()
                    .insert(r.subject.clone());
            }
        }
        out
    }

    /// Forget removals a snapshot taken at `epoch` already reflects.
    pub fn forget_through(&self, epoch: u64) {
        self.lock().1.retain(|(e, _)| *e > epoch);
    }

    /// Drop from `bindings` the subjects removed after `epoch` (the plan predates them).
    pub fn withhold(&self, epoch: u64, bindings: &mut [DesiredBinding]) -> usize {
        let late = self.since(epoch);
        if late.is_empty() {
            return 0;
        }
        let mut dropped = 0;
        for b in bindings {
            let key = (b.kind, b.namespace.clone(), b.name.clone());
            if let Some(gone) = late.get(&key) {
                let before = b.subjects.len();
                b.subjects = b
                    .subjects
                    .iter()
                    .filter(|s| !gone.contains(s))
                    .cloned()
                    .collect();
                dropped += before - b.subjects.len();
            }
        }
        dropped
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, Vec<(u64, Removal)>)> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What the fast lane works with.
pub struct FastLane {
    pub client: Client,
    pub world: World,
    pub layouts: SharedLayouts,
    pub log: Arc<RevokedLog>,
    pub metrics: Arc<Metrics>,
    /// Fired when a write was stale or failed: the pass repairs from fresh caches.
    pub trigger: Arc<Trigger>,
    pub priority: Arc<Priority>,
    /// Every write is fenced by the leadership term; its end stops the lane.
    pub term: Term,
}

impl FastLane {
    /// Run until the term ends: batch what the watches sent, compute removals, write them.
    pub async fn run(self, mut rx: UnboundedReceiver<Noticed>) {
        loop {
            let first = tokio::select! {
                _ = self.term.cancelled() => return,
                r = rx.recv() => match r { Some(r) => r, None => return },
            };
            tokio::select! {
                _ = self.term.cancelled() => return,
                _ = self.handle(first, &mut rx) => {}
            }
        }
    }

    async fn handle(&self, first: Noticed, rx: &mut UnboundedReceiver<Noticed>) {
        let FastLane {
            client,
            world,
            layouts,
            log,
            metrics,
            trigger,
            priority,
            term,
        } = self;
        let busy = priority.enter();
        let started = Instant::now();
        let mut noticed = first.0;
        let mut batch = vec![first.1];
        while let Ok((at, r)) = rx.try_recv() {
            noticed = noticed.min(at);
            batch.push(r);
        }
        let current = Arc::clone(&layouts.read().unwrap_or_else(PoisonError::into_inner));
        let removals = revoke::removals(&current.layouts, &current.by_group, &batch, world);
        if removals.is_empty() {
            return;
        }
        log.record(&removals);
        let planned = started.elapsed();
        let (counts, timing, written) = write(client, term, world, &removals).await;
        let (removed, stale, failed) = counts;
        let count = |outcome: &'static str, n: usize| {
            metrics
                .revocations
                .get_or_create(&OutcomeLabels { outcome })
                .inc_by(n as u64);
        };
        count("removed", removed);
        count("stale", stale);
        count("failed", failed);
        metrics
            .revocation_duration
            .observe(started.elapsed().as_secs_f64());
        // Where the time goes, from the watch event to the last patch the API server
        // acknowledged (the authorizer's own informer comes after that).
        tracing::info!(
            changes = batch.len(),
            removed,
            stale,
            failed,
            patches = timing.patches,
            elapsed = ?started.elapsed(),
            since_event = ?noticed.elapsed(),
            queued = ?started.saturating_duration_since(noticed),
            planned = ?planned,
            first_ack = ?timing.first_ack,
            slowest_patch = ?timing.slowest,
            "revocations written"
        );
        if stale + failed > 0 {
            trigger.fire();
        }
        // An answered patch is not yet a denial: the API server's authorizer learns of it
        // through its own watch (an informer fed by the same watch cache as ours), which
        // under load runs hundreds of milliseconds behind. Other writers (a pass
        // triggered by the same event, which would also re-write these parts from a
        // binding cache that does not show the patches yet; status writes) hold back until
        // our watch shows the removals, so they don't compete with that catch-up. The lane
        // itself goes on with the next revocation at once.
        tokio::spawn(settle(world.clone(), written, busy));
    }
}

/// Hold `busy` until the binding cache no longer shows any of `written` (the removals the
/// API server acknowledged), or [`SETTLE_AT_MOST`].
async fn settle(world: World, written: Vec<Removal>, busy: Busy) {
    use revoke::View;
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + SETTLE_AT_MOST;
    let mut seen = true;
    while written
        .iter()
        .any(|r| world.holds(r.kind, r.namespace.as_deref(), &r.name, &r.subject))
    {
        if tokio::time::Instant::now() >= deadline {
            seen = false;
            break;
        }
        tokio::time::sleep(SETTLE_POLL).await;
    }
    tracing::debug!(seen, elapsed = ?started.elapsed(), patches = written.len(), "revocations visible in the binding watch");
    drop(busy);
}

/// How the patches of one batch went, measured from the first one sent.
#[derive(Debug, Default)]
struct Timing {
    patches: usize,
    first_ack: Option<Duration>,
    slowest: Duration,
}

/// One write per binding (a replace, else a JSON patch; see [`RemovalWrite`]). Returns
/// (subjects removed, stale, failed), how long the writes took and the removals the API
/// server acknowledged; writes a deposed leader no longer sends count as none (the next
/// leader re-plans them).
async fn write(
    client: &Client,
    term: &Term,
    world: &World,
    removals: &[Removal],
) -> ((usize, usize, usize), Timing, Vec<Removal>) {
    let mut by_binding: BTreeMap<BindingKey, Vec<&Subject>> = BTreeMap::new();
    for r in removals {
        by_binding
            .entry((r.kind, r.namespace.clone(), r.name.clone()))
            .or_default()
            .push(&r.subject);
    }
    let started = Instant::now();
    let writes: Vec<_> = by_binding
        .into_iter()
        .map(|(key, subjects)| async move {
            let n = subjects.len();
            let Some(removal) = removal_write(world, &key, &subjects) else {
                return ((0, n, 0), None, Vec::new());
            };
            let sent = Instant::now();
            let outcome = match fenced(term, send(client, &key, removal)).await {
                Ok(()) => (n, 0, 0),
                Err(WriteError::Deposed(d)) => {
                    tracing::debug!(binding = %key.2, reason = %d, "revocation not written: no longer the leader");
                    (0, 0, 0)
                }
                // A test op failed (the binding changed since the cache saw it) or it is gone.
                Err(e) if matches!(e.code(), Some(404 | 409 | 422)) => (0, n, 0),
                Err(e) => {
                    tracing::warn!(binding = %key.2, error = %e, "revocation write failed");
                    (0, 0, n)
                }
            };
            tracing::debug!(
                namespace = key.1.as_deref().unwrap_or(""),
                binding = %key.2,
                took = ?sent.elapsed(),
                at = ?started.elapsed(),
                "revocation patch answered"
            );
            let written: Vec<Removal> = if outcome.0 > 0 {
                let (kind, namespace, name) = key;
                subjects
                    .into_iter()
                    .map(|s| Removal {
                        kind,
                        namespace: namespace.clone(),
                        name: name.clone(),
                        subject: s.clone(),
                    })
                    .collect()
            } else {
                Vec::new()
            };
            (outcome, Some(sent.elapsed()), written)
        })
        .collect();
    stream::iter(writes)
        .buffer_unordered(CONCURRENCY)
        .fold(
            ((0, 0, 0), Timing::default(), Vec::new()),
            |(acc, mut timing, mut all), (r, took, written)| async move {
                if let Some(took) = took {
                    timing.patches += 1;
                    timing.first_ack.get_or_insert_with(|| started.elapsed());
                    timing.slowest = timing.slowest.max(took);
                }
                all.extend(written);
                ((acc.0 + r.0, acc.1 + r.1, acc.2 + r.2), timing, all)
            },
        )
        .await
}

/// How one binding loses its revoked subjects.
#[derive(Debug)]
struct RemovalWrite {
    /// The whole object without them, guarded by the cached resourceVersion, when the
    /// cache entry can stand for the whole object (`exact` and `whole`): the API server's
    /// cheapest write. A JSON patch makes it render the stored object as JSON, apply the
    /// patch and decode the result again, a quarter of its CPU per write (measured on
    /// 80-subject parts: 100 patches acknowledged after 150 ms median, 100 replaces after
    /// 112 ms; docs/scale.md, "Revocation writes").
    replacement: Option<Replacement>,
    /// `test` + `remove` for each subject at its cached index: used when there is no
    /// replacement, or when the replace met a newer version than the cache's (the tests
    /// still pass when only other subjects were appended since).
    ops: Vec<serde_json::Value>,
}

#[derive(Debug)]
enum Replacement {
    Role { namespace: String, obj: RoleBinding },
    Cluster(ClusterRoleBinding),
}

/// The write that takes `subjects` out of binding `key`, from its cache entry. None when
/// the cache no longer holds them there, or its entry isn't exact (an index in the entry
/// is then not the object's index).
fn removal_write(world: &World, key: &BindingKey, subjects: &[&Subject]) -> Option<RemovalWrite> {
    let (kind, ns, name) = key;
    match (kind, ns) {
        (BindingKind::RoleBinding, Some(ns)) => {
            let entry = world.role_bindings.get(&ObjectRef::new(name).within(ns))?;
            removal_from(&entry, subjects, |metadata, role_ref, subjects| {
                Replacement::Role {
                    namespace: ns.clone(),
                    obj: RoleBinding {
                        metadata,
                        role_ref,
                        subjects,
                    },
                }
            })
        }
        _ => {
            let entry = world.cluster_role_bindings.get(&ObjectRef::new(name))?;
            removal_from(&entry, subjects, |metadata, role_ref, subjects| {
                Replacement::Cluster(ClusterRoleBinding {
                    metadata,
                    role_ref,
                    subjects,
                })
            })
        }
    }
}

/// [`removal_write`] for one cache entry; `object` assembles the replacement of its kind.
fn removal_from<K>(
    entry: &CachedBinding<K>,
    subjects: &[&Subject],
    object: impl FnOnce(ObjectMeta, RoleRef, Option<Vec<K8sSubject>>) -> Replacement,
) -> Option<RemovalWrite> {
    if !entry.exact {
        return None;
    }
    let live = &entry.subjects;
    let mut indices: Vec<usize> = live
        .iter()
        .enumerate()
        .filter(|(_, s)| subjects.contains(s))
        .map(|(i, _)| i)
        .collect();
    if indices.is_empty() {
        return None;
    }
    indices.sort_unstable_by(|a, b| b.cmp(a));
    let mut ops = Vec::with_capacity(indices.len() * 3);
    for &i in &indices {
        ops.push(
            json!({"op": "test", "path": format!("/subjects/{i}/name"), "value": live[i].name}),
        );
        ops.push(
            json!({"op": "test", "path": format!("/subjects/{i}/kind"), "value": live[i].kind.as_str()}),
        );
        ops.push(json!({"op": "remove", "path": format!("/subjects/{i}")}));
    }
    let resource_version = entry.version.resource_version.clone();
    let replacement = (entry.whole && resource_version.is_some()).then(|| {
        let common = &entry.common;
        let metadata = ObjectMeta {
            name: Some(entry.name.to_string()),
            namespace: entry.namespace.as_deref().map(str::to_owned),
            resource_version,
            labels: Some(common.labels.clone()).filter(|m| !m.is_empty()),
            annotations: Some(common.annotations.clone()).filter(|m| !m.is_empty()),
            ..ObjectMeta::default()
        };
        let role_ref = RoleRef {
            api_group: common.role_api_group.clone(),
            kind: common.role_kind.clone(),
            name: common.role_name.clone(),
        };
        let kept = live
            .iter()
            .enumerate()
            .filter(|(i, _)| !indices.contains(i))
            .map(|(_, s)| k8s_subject(s))
            .collect();
        object(metadata, role_ref, Some(kept))
    });
    Some(RemovalWrite { replacement, ops })
}

async fn send(client: &Client, key: &BindingKey, write: RemovalWrite) -> Result<(), kube::Error> {
    let (kind, ns, name) = key;
    let namespaced = |ns: &str| Api::<RoleBinding>::namespaced(client.clone(), ns);
    let cluster = || Api::<ClusterRoleBinding>::all(client.clone());
    if let Some(replacement) = write.replacement {
        let pp = PostParams {
            dry_run: false,
            field_manager: Some(FIELD_MANAGER.to_owned()),
        };
        let replaced = match &replacement {
            Replacement::Role { namespace, obj } => namespaced(namespace)
                .replace(name, &pp, obj)
                .await
                .map(drop),
            Replacement::Cluster(obj) => cluster().replace(name, &pp, obj).await.map(drop),
        };
        match replaced {
            // Changed since the cache saw it: the patch's tests decide.
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            other => return other,
        }
    }
    let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(write.ops))
        .map_err(kube::Error::SerdeError)?;
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    match (kind, ns) {
        (BindingKind::RoleBinding, Some(ns)) => {
            namespaced(ns)
                .patch(name, &params, &Patch::<()>::Json(patch))
                .await?;
        }
        _ => {
            cluster()
                .patch(name, &params, &Patch::<()>::Json(patch))
                .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn removal(name: &str, subject: &str) -> Removal {
        Removal {
            kind: BindingKind::RoleBinding,
            namespace: Some("ns".into()),
            name: name.into(),
            subject: Subject::user(subject),
        }
    }

    #[tokio::test]
    async fn other_writers_wait_for_the_fast_lane_but_not_forever() {
        let priority = Arc::new(Priority::default());
        // Idle: no wait.
        tokio::time::timeout(Duration::from_millis(100), priority.yield_to_revocations())
            .await
            .unwrap();
        let busy = priority.enter();
        let waiter = {
            let priority = Arc::clone(&priority);
            tokio::spawn(async move { priority.yield_to_revocations().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(busy);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        // A lane that never finishes delays others by YIELD_AT_MOST only.
        let _stuck = priority.enter();
        tokio::time::pause();
        let started = tokio::time::Instant::now();
        priority.yield_to_revocations().await;
        assert!(started.elapsed() >= YIELD_AT_MOST);
    }

    /// A RoleBinding "rb" in "ns" holding `users`, as the binding watch caches it.
    fn cached(users: &[&str]) -> crate::controller::bindings::CachedRoleBinding {
        let rb: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": "rb", "namespace": "ns"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": users.iter().map(|u| json!({"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": u})).collect::<Vec<_>>(),
        }))
        .unwrap();
        crate::controller::bindings::CachedBinding::from_object(rb, &Default::default())
    }

    #[tokio::test]
    async fn the_lane_stays_busy_until_its_watch_shows_the_removal() {
        use kube::runtime::reflector::store::Writer;
        use kube::runtime::watcher::Event;
        let mut writer: Writer<crate::controller::bindings::CachedRoleBinding> = Writer::default();
        writer.apply_watcher_event(&Event::Init);
        writer.apply_watcher_event(&Event::InitApply(cached(&["alice", "bob"])));
        writer.apply_watcher_event(&Event::InitDone);
        let mut world = World::holding(Vec::new(), Vec::new(), Vec::new());
        world.role_bindings = writer.as_reader();
        let priority = Arc::new(Priority::default());

        let settling = tokio::spawn(settle(
            world.clone(),
            vec![removal("rb", "alice")],
            priority.enter(),
        ));
        tokio::time::sleep(SETTLE_POLL * 4).await;
        assert!(
            !settling.is_finished(),
            "released before the watch showed the patch"
        );
        assert_eq!(priority.busy.load(Ordering::Acquire), 1);
        // The patched object comes back through the watch.
        writer.apply_watcher_event(&Event::Apply(cached(&["bob"])));
        tokio::time::timeout(Duration::from_secs(1), settling)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(priority.busy.load(Ordering::Acquire), 0);

        // A patch the watch never shows holds others back for SETTLE_AT_MOST only.
        tokio::time::pause();
        let started = tokio::time::Instant::now();
        settle(world, vec![removal("rb", "bob")], priority.enter()).await;
        assert!(started.elapsed() >= SETTLE_AT_MOST);
        assert_eq!(priority.busy.load(Ordering::Acquire), 0);
    }

    /// A world whose binding cache holds `rb` only.
    fn world_holding(rb: RoleBinding) -> World {
        use kube::runtime::reflector::store::Writer;
        use kube::runtime::watcher::Event;
        let mut writer: Writer<crate::controller::bindings::CachedRoleBinding> = Writer::default();
        writer.apply_watcher_event(&Event::Init);
        writer.apply_watcher_event(&Event::InitApply(CachedBinding::from_object(
            rb,
            &Default::default(),
        )));
        writer.apply_watcher_event(&Event::InitDone);
        let mut world = World::holding(Vec::new(), Vec::new(), Vec::new());
        world.role_bindings = writer.as_reader();
        world
    }

    /// A removal rewrites the whole object (guarded by the cached resourceVersion, with
    /// the cached labels, annotations and roleRef) when the cache holds all of it, and
    /// falls back to the patch alone when the object has metadata the cache left out.
    #[test]
    fn a_removal_replaces_the_object_only_when_the_cache_holds_all_of_it() {
        let users: Vec<_> = ["alice", "bob", "carol"]
            .iter()
            .map(|u| json!({"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": u}))
            .collect();
        let rb = |extra: serde_json::Value| -> RoleBinding {
            let mut obj = json!({
                "metadata": {"name": "rb", "namespace": "ns", "resourceVersion": "42",
                             "labels": {"app.kubernetes.io/managed-by": "kube-scim"},
                             "annotations": {"scim.kubescim.io/mapping": "m"}},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
                "subjects": users,
            });
            json_patch::merge(&mut obj, &extra);
            serde_json::from_value(obj).unwrap()
        };
        let key: BindingKey = (BindingKind::RoleBinding, Some("ns".into()), "rb".into());
        let bob = Subject::user("bob");

        let world = world_holding(rb(json!({})));
        let write = removal_write(&world, &key, &[&bob]).expect("a write");
        let Some(Replacement::Role { namespace, obj }) = write.replacement else {
            panic!("no replacement: {write:?}");
        };
        assert_eq!(namespace, "ns");
        let mut want = rb(json!({}));
        want.subjects.as_mut().unwrap().remove(1);
        assert_eq!(obj, want);
        assert_eq!(write.ops.len(), 3);
        assert_eq!(write.ops[0]["path"], "/subjects/1/name");

        // Another tool's label: the patch only, which leaves it be.
        let world = world_holding(rb(json!({"metadata": {"labels": {"team": "a"}}})));
        let write = removal_write(&world, &key, &[&bob]).expect("a write");
        assert!(write.replacement.is_none());
        assert_eq!(write.ops.len(), 3);

        // Not holding the subject: nothing to write.
        assert!(removal_write(&world, &key, &[&Subject::user("dave")]).is_none());
    }

    #[test]
    fn a_pass_planned_before_a_removal_does_not_restore_it() {
        let log = RevokedLog::default();
        let before = log.epoch();
        log.record(&[removal("b1", "alice")]);
        let after = log.epoch();
        log.record(&[removal("b2", "bob")]);

        let mut planned = vec![
            DesiredBinding::for_test("b1", &["alice", "carol"]),
            DesiredBinding::for_test("b2", &["bob"]),
        ];
        assert_eq!(log.withhold(before, &mut planned), 2);
        assert_eq!(&planned[0].subjects[..], [Subject::user("carol")]);
        assert!(planned[1].subjects.is_empty());

        // A snapshot taken after the first removal already reflects it.
        let mut planned = vec![
            DesiredBinding::for_test("b1", &["alice"]),
            DesiredBinding::for_test("b2", &["bob"]),
        ];
        assert_eq!(log.withhold(after, &mut planned), 1);
        assert_eq!(&planned[0].subjects[..], [Subject::user("alice")]);

        log.forget_through(after);
        assert!(log.since(before).keys().all(|k| k.2 == "b2"));
        log.forget_through(log.epoch());
        assert!(log.since(0).is_empty());
    }
}
