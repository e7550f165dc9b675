//! Statuses and Events. Each pass diffs the plan's statuses against the cache and hands
//! the differences to the [`StatusWriter`], a separate task: tens of thousands of user
//! statuses (first start, a big group mapped) then never delay the next binding change.
//! Events are decided here, against a per-leadership memory of what was last reported,
//! so they appear on changes only.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::{stream, StreamExt};
use k8s_openapi::api::core::v1::{Event as CoreEvent, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType as KubeEventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::sync::Notify;

use super::apply::{fenced, WriteError, FIELD_MANAGER};
use super::fast_lane::Priority;
use super::leader::Term;
use super::pace::Pace;
use super::plan::{EventType, MappingKey, MappingOutcome, Plan, UserAccess};
use super::retry::{retry_after, Category, Retries};
use super::users::status_digest;
use super::world::Snapshot;
use crate::crd::user::{AccessGrant, UserGroupRef};
use crate::crd::{ClusterGroupRoleMapping, GroupRoleMapping, MappingStatus, ScimGroup, ScimUser};
use crate::telemetry::{CategoryLabels, Metrics};

pub const READY: &str = "Ready";
/// Status writes in flight at once.
const STATUS_CONCURRENCY: usize = 16;
/// Writes taken from the queue at once; between batches, newer and higher-priority
/// (mapping before group before user) writes get ahead.
const BATCH: usize = 256;
/// How long a written status is trusted over a cache that hasn't caught up yet.
const RECENT_TTL: Duration = Duration::from_secs(30);
/// Longest condition message (the API's limit for metav1.Condition).
const MAX_MESSAGE: usize = 32 * 1024;
/// Longest `status.message` (the Message column of `kubectl get`).
const MAX_SHORT_MESSAGE: usize = 80;
/// Longest Event note (the API's limit).
const MAX_NOTE: usize = 1024;

/// Which status. The order is the write priority.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StatusKey {
    Mapping(MappingKey),
    Group(String),
    User(String),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventSpec {
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

/// A status patch waiting to be written. Tens of thousands of user statuses can wait in
/// the queue at once (a big group mapped: 77,730 at issue 8's 100k-user target) and stay
/// in `recent` for [`RECENT_TTL`] after. As `Value`s each cost ~2 kB of map nodes; as
/// JSON text ~700 bytes, ~1.2 kB with its queue entry (heap profile at 20,000 users:
/// 15.6 MB of the controller's 103 MB peak). So a user's is kept as the plan made it —
/// pointers to its groups' shared refs and grant blocks, ~100 bytes — with its digest,
/// and rendered when written. Mappings' and groups' are few: JSON text.
#[derive(Debug)]
enum StatusPatch {
    Json(Box<RawValue>),
    User { digest: u64, access: UserAccess },
}

impl StatusPatch {
    fn json(v: &Value) -> Option<StatusPatch> {
        // Serialising a `Value` cannot fail (its map keys are strings).
        serde_json::value::to_raw_value(v)
            .ok()
            .map(StatusPatch::Json)
    }

    /// The merge patch to send.
    fn body(&self) -> PatchBody<'_> {
        match self {
            StatusPatch::Json(text) => PatchBody::Text(text),
            StatusPatch::User { access, .. } => PatchBody::Value(WantedStatus::of(access).patch()),
        }
    }
}

impl PartialEq for StatusPatch {
    fn eq(&self, other: &StatusPatch) -> bool {
        match (self, other) {
            (StatusPatch::Json(a), StatusPatch::Json(b)) => a.get() == b.get(),
            (StatusPatch::User { digest: a, .. }, StatusPatch::User { digest: b, .. }) => a == b,
            _ => false,
        }
    }
}

#[derive(serde::Serialize, Debug)]
#[serde(untagged)]
enum PatchBody<'a> {
    Text(&'a RawValue),
    Value(Value),
}

struct Pending {
    patch: Option<StatusPatch>,
    events: Vec<EventSpec>,
    /// Only mappings have Events (boxed: most entries are users without one).
    reference: Option<Box<ObjectReference>>,
}

#[derive(Default)]
struct Queue {
    pending: BTreeMap<StatusKey, Pending>,
    recent: HashMap<StatusKey, (StatusPatch, Instant)>,
    /// Objects whose last write failed: their newest wanted status waits here until
    /// `retries` says it may go (see [`super::retry`]).
    delayed: BTreeMap<StatusKey, Pending>,
    /// Failed attempts in a row and the next retry time, per object (cleared by a
    /// success or a settled status).
    retries: Retries<StatusKey>,
}

impl Queue {
    /// Queue a status patch (None: events only) unless exactly this patch was written
    /// moments ago and the cache just hasn't seen it yet. The newest value wins; an object
    /// whose write failed keeps waiting for its retry time. True when there is new work.
    fn add(
        &mut self,
        key: StatusKey,
        patch: Option<StatusPatch>,
        events: Vec<EventSpec>,
        reference: Option<ObjectReference>,
    ) -> bool {
        let patch = patch.filter(|p| {
            self.recent
                .get(&key)
                .is_none_or(|(v, at)| v != p || at.elapsed() > RECENT_TTL)
        });
        if patch.is_none() && events.is_empty() {
            return false;
        }
        let (slot, ready) = match self.delayed.get_mut(&key) {
            Some(d) => (d, false),
            None => (
                self.pending.entry(key).or_insert(Pending {
                    patch: None,
                    events: Vec::new(),
                    reference: None,
                }),
                true,
            ),
        };
        if patch.is_some() {
            slot.patch = patch;
        }
        slot.events.extend(events);
        if let Some(reference) = reference {
            slot.reference = Some(Box::new(reference));
        }
        ready
    }

    /// The status already matches the cache: forget a pending (or delayed) write of an
    /// older value, and the object's failures.
    fn settle(&mut self, key: &StatusKey) {
        self.retries.forget(key);
        if let Some(p) = self.pending.get_mut(key) {
            p.patch = None;
            if p.events.is_empty() {
                self.pending.remove(key);
            }
        }
        if let Some(d) = self.delayed.get_mut(key) {
            d.patch = None;
            if d.events.is_empty() {
                self.delayed.remove(key);
            }
        }
    }

    /// A write of `key` failed: wait `retry_delay` before the next one (a newer value a
    /// pass queued meanwhile waits too). Returns the delay.
    fn fail(
        &mut self,
        key: &StatusKey,
        patch: StatusPatch,
        retry_after: Option<Duration>,
        now: Instant,
    ) -> Duration {
        let delay = self.retries.fail(key, retry_after, now);
        let pending = self.pending.remove(key).unwrap_or(Pending {
            patch: None,
            events: Vec::new(),
            reference: None,
        });
        let pending = Pending {
            patch: pending.patch.or(Some(patch)),
            ..pending
        };
        self.delayed.insert(key.clone(), pending);
        delay
    }

    /// Move the delayed writes that are due back into the queue; when the next one is due.
    fn release_due(&mut self, now: Instant) -> Option<Instant> {
        let due: Vec<StatusKey> = self
            .delayed
            .keys()
            .filter(|k| self.retries.waiting(k, now).is_none())
            .cloned()
            .collect();
        for key in due {
            if let Some(d) = self.delayed.remove(&key) {
                self.pending.insert(key, d);
            }
        }
        self.delayed
            .keys()
            .filter_map(|k| self.retries.due_at(k))
            .min()
    }
}

/// The status-writing task's queue: latest desired status per object wins.
pub struct StatusWriter {
    client: Client,
    recorder: Recorder,
    /// Our identity, as `reportingInstance`.
    instance: String,
    metrics: Arc<Metrics>,
    /// Status writes wait while the revocation fast lane works.
    priority: Arc<Priority>,
    /// Every write (status, Event) is fenced by the leadership term.
    term: Term,
    /// User statuses trail at this pace (see [`super::pace`]); None: unpaced.
    user_pace: Option<Pace>,
    queue: Mutex<Queue>,
    notify: Notify,
}

impl StatusWriter {
    pub fn new(
        client: Client,
        recorder: Recorder,
        instance: String,
        metrics: Arc<Metrics>,
        priority: Arc<Priority>,
        term: Term,
        user_pace: Option<Pace>,
    ) -> Arc<Self> {
        Arc::new(StatusWriter {
            client,
            recorder,
            instance,
            metrics,
            priority,
            term,
            user_pace,
            queue: Mutex::new(Queue::default()),
            notify: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // The queue holds plain data: a panic elsewhere can't leave it inconsistent.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queue a status patch (None: events only); see [`Queue::add`].
    fn enqueue(
        &self,
        key: StatusKey,
        patch: Option<StatusPatch>,
        events: Vec<EventSpec>,
        reference: Option<ObjectReference>,
    ) {
        let mut q = self.lock();
        let added = q.add(key, patch, events, reference);
        self.metrics.status_queued.set(q.pending.len() as i64);
        drop(q);
        if added {
            self.notify.notify_one();
        }
    }

    /// The status already matches the cache: see [`Queue::settle`].
    fn settled(&self, key: &StatusKey) {
        self.lock().settle(key);
    }

    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    /// Write queued statuses until the term ends.
    pub async fn run(self: Arc<Self>) {
        let stop = self.term.token().clone();
        loop {
            if stop.is_cancelled() {
                return;
            }
            let (next_due, ready) = {
                let mut q = self.lock();
                let next_due = q.release_due(Instant::now());
                self.metrics.status_delayed.set(q.delayed.len() as i64);
                (next_due, !q.pending.is_empty())
            };
            if !ready {
                let retry_wait = async {
                    match next_due {
                        Some(at) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = self.notify.notified() => {}
                    _ = retry_wait => {}
                }
                // Release what fell due while waiting, and look again.
                continue;
            }
            // Paced user statuses come in smaller batches, so that a mapping's or a
            // group's status queued meanwhile waits about half a second, not the time
            // BATCH users take at the pace.
            let users_per_batch = self.user_pace.as_ref().map_or(BATCH, |p| {
                (p.rate() as usize / 2).clamp(STATUS_CONCURRENCY, BATCH)
            });
            loop {
                let batch: Vec<(StatusKey, Pending)> = {
                    let mut q = self.lock();
                    let mut users = 0;
                    let batch = std::iter::from_fn(|| {
                        let (key, _) = q.pending.first_key_value()?;
                        if matches!(key, StatusKey::User(_)) {
                            if users == users_per_batch {
                                return None;
                            }
                            users += 1;
                        }
                        q.pending.pop_first()
                    })
                    .take(BATCH)
                    .collect();
                    self.metrics.status_queued.set(q.pending.len() as i64);
                    batch
                };
                if batch.is_empty() || stop.is_cancelled() {
                    break;
                }
                self.priority.yield_to_revocations().await;
                let writes = stream::iter(batch)
                    .map(|(key, p)| self.write(key, p))
                    .buffer_unordered(STATUS_CONCURRENCY)
                    .collect::<Vec<()>>();
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = writes => {}
                }
            }
            self.lock()
                .recent
                .retain(|_, (_, at)| at.elapsed() <= RECENT_TTL);
        }
    }

    async fn write(&self, key: StatusKey, p: Pending) {
        if let Some(patch) = p.patch {
            if let (StatusKey::User(_), Some(pace)) = (&key, &self.user_pace) {
                pace.wait().await;
            }
            match fenced(&self.term, self.patch(&key, &patch)).await {
                Ok(()) => {
                    let mut q = self.lock();
                    q.retries.forget(&key);
                    q.recent.insert(key.clone(), (patch, Instant::now()));
                }
                Err(e) if e.code() == Some(404) => {
                    self.lock().retries.forget(&key);
                }
                // The next leader writes what it plans.
                Err(WriteError::Deposed(_)) => return,
                Err(e) => {
                    self.metrics
                        .reconcile_failures
                        .get_or_create(&CategoryLabels { category: "status" })
                        .inc();
                    self.metrics
                        .count_retry("status", Category::of(&e).as_str());
                    let delay = self.delay(&key, patch, &e);
                    tracing::warn!(object = ?key, error = %e, retry_in = ?delay, "status write failed");
                }
            }
        }
        if let Some(reference) = &p.reference {
            for ev in &p.events {
                let event = Event {
                    type_: if ev.warning {
                        KubeEventType::Warning
                    } else {
                        KubeEventType::Normal
                    },
                    reason: ev.reason.clone(),
                    note: Some(truncate(&ev.note, MAX_NOTE)),
                    action: "Reconcile".into(),
                    secondary: None,
                };
                if let Err(e) = fenced(&self.term, self.publish_event(&event, reference)).await {
                    if matches!(e, WriteError::Deposed(_)) {
                        return;
                    }
                    tracing::warn!(object = ?key, reason = %ev.reason, error = %e, "event not published");
                    self.metrics
                        .reconcile_failures
                        .get_or_create(&CategoryLabels { category: "event" })
                        .inc();
                }
            }
        }
    }

    /// Schedule `key`'s failed `patch` again after its backoff. Returns the delay.
    fn delay(&self, key: &StatusKey, patch: StatusPatch, e: &WriteError) -> Duration {
        let delay = self.lock().fail(key, patch, retry_after(e), Instant::now());
        // Wake the run loop so that it sleeps until the earliest due time.
        self.notify.notify_one();
        delay
    }

    /// Publish through events.k8s.io/v1. Kubernetes before 1.22 (validation fixed
    /// there) rejects such an Event about a cluster-scoped object (it demands the
    /// Event's namespace equal the object's, which is empty), so those fall back to a
    /// core/v1 Event in `default`, which every version accepts and `kubectl describe` finds.
    async fn publish_event(
        &self,
        ev: &Event,
        reference: &ObjectReference,
    ) -> Result<(), kube::Error> {
        match self.recorder.publish(ev, reference).await {
            Err(kube::Error::Api(s)) if s.code == 422 && reference.namespace.is_none() => {
                self.publish_core_event(ev, reference).await
            }
            other => other,
        }
    }

    async fn publish_core_event(
        &self,
        ev: &Event,
        reference: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let name = format!(
            "{}.{:x}",
            reference.name.as_deref().unwrap_or("kube-scim"),
            now.as_nanosecond()
        );
        let event = CoreEvent {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some("default".into()),
                ..ObjectMeta::default()
            },
            involved_object: reference.clone(),
            reason: Some(ev.reason.clone()),
            message: ev.note.clone(),
            type_: Some(match ev.type_ {
                KubeEventType::Normal => "Normal".into(),
                KubeEventType::Warning => "Warning".into(),
            }),
            action: Some(ev.action.clone()),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            count: Some(1),
            source: Some(EventSource {
                component: Some(super::REPORTER.into()),
                host: None,
            }),
            reporting_component: Some(super::REPORTER.into()),
            reporting_instance: Some(self.instance.clone()),
            ..CoreEvent::default()
        };
        Api::<CoreEvent>::namespaced(self.client.clone(), "default")
            .create(&PostParams::default(), &event)
            .await?;
        Ok(())
    }

    async fn patch(&self, key: &StatusKey, patch: &StatusPatch) -> Result<(), kube::Error> {
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        let c = self.client.clone();
        let patch = Patch::Merge(patch.body());
        match key {
            StatusKey::Mapping(MappingKey::Namespaced { namespace, name }) => {
                Api::<GroupRoleMapping>::namespaced(c, namespace)
                    .patch_status(name, &params, &patch)
                    .await?;
            }
            StatusKey::Mapping(MappingKey::Cluster { name }) => {
                Api::<ClusterGroupRoleMapping>::all(c)
                    .patch_status(name, &params, &patch)
                    .await?;
            }
            StatusKey::Group(name) => {
                Api::<ScimGroup>::all(c)
                    .patch_status(name, &params, &patch)
                    .await?;
            }
            StatusKey::User(name) => {
                Api::<ScimUser>::all(c)
                    .patch_status(name, &params, &patch)
                    .await?;
            }
        }
        Ok(())
    }
}

/// What this leader last reported per mapping (reset with leadership).
#[derive(Default)]
pub struct Memory {
    mappings: HashMap<MappingKey, Remembered>,
}

struct Remembered {
    uid: String,
    condition: Option<Condition>,
    /// Problems and plan events currently reported: (reason, note).
    reported: BTreeSet<(String, String)>,
}

/// Diff every status against the cache and queue what changed.
pub fn publish(plan: &Plan, snap: &Snapshot, memory: &mut Memory, writer: &StatusWriter) {
    let now = Time(Timestamp::now());
    let mut live: BTreeSet<MappingKey> = BTreeSet::new();
    for m in &snap.mappings {
        if let (Some(namespace), Some(name)) = (m.namespace(), m.metadata.name.clone()) {
            let key = MappingKey::Namespaced { namespace, name };
            mapping(plan, &key, &**m, m.status.as_ref(), memory, writer, &now);
            live.insert(key);
        }
    }
    for m in &snap.cluster_mappings {
        if let Some(name) = m.metadata.name.clone() {
            let key = MappingKey::Cluster { name };
            mapping(plan, &key, &**m, m.status.as_ref(), memory, writer, &now);
            live.insert(key);
        }
    }
    memory.mappings.retain(|k, _| live.contains(k));

    for g in &snap.groups {
        let Some(id) = g.metadata.name.clone() else {
            continue;
        };
        let count = snap.member_counts.get(&id).copied().unwrap_or(0);
        let mappings = plan.group_status.get(&id).cloned().unwrap_or_default();
        let key = StatusKey::Group(id);
        // Written even for an empty group with no mappings: the Members column reads it.
        if g.status
            .as_ref()
            .is_some_and(|s| s.member_count == count && s.mappings == mappings)
        {
            writer.settled(&key);
            continue;
        }
        let patch = json!({"status": {
            "memberCount": count,
            "mappings": non_empty(&mappings),
        }});
        writer.enqueue(key, StatusPatch::json(&patch), Vec::new(), None);
    }

    let no_access = UserAccess::default();
    for u in &snap.users {
        let id = &u.input.id;
        let want = plan.user_status.get(id).unwrap_or(&no_access);
        let key = StatusKey::User(id.clone());
        let digest = WantedStatus::of(want).digest();
        // Most users are settled: the queue entry is only made for those that are not.
        if digest == u.status {
            writer.settled(&key);
            continue;
        }
        let patch = StatusPatch::User {
            digest,
            access: want.clone(),
        };
        writer.enqueue(key, Some(patch), Vec::new(), None);
    }
}

/// A user's wanted status fields: their [`status_digest`], and the merge patch that
/// writes them.
struct WantedStatus<'a> {
    groups: &'a [Arc<UserGroupRef>],
    count: Option<u32>,
    access: Vec<&'a AccessGrant>,
}

impl<'a> WantedStatus<'a> {
    fn of(want: &'a UserAccess) -> Self {
        // `status.access` as `UserAccess::access` makes it, without cloning the grants.
        let mut access: Vec<&AccessGrant> = want.grants.iter().flat_map(|b| b.iter()).collect();
        access.sort();
        access.dedup();
        WantedStatus {
            groups: &want.groups,
            // The Groups column; absent when there are none, so that the many users
            // without groups need no status at all.
            count: u32::try_from(want.groups.len()).ok().filter(|n| *n > 0),
            access,
        }
    }

    fn digest(&self) -> u64 {
        status_digest(self.groups, self.count, &self.access)
    }

    fn patch(&self) -> Value {
        let groups: Vec<&UserGroupRef> = self.groups.iter().map(|g| &**g).collect();
        json!({"status": {
            "groups": non_empty(&groups),
            "groupCount": self.count,
            "access": non_empty(&self.access),
        }})
    }
}

#[allow(clippy::too_many_arguments)]
fn mapping<K: Resource<DynamicType = ()>>(
    plan: &Plan,
    key: &MappingKey,
    obj: &K,
    cached: Option<&MappingStatus>,
    memory: &mut Memory,
    writer: &StatusWriter,
    now: &Time,
) {
    // Being deleted: no status any more, the finalizer logic takes over.
    let Some(outcome) = plan.mapping_status.get(key) else {
        return;
    };
    let empty = MappingStatus::default();
    let cached = cached.unwrap_or(&empty);
    let cached_ready = cached.conditions.iter().find(|c| c.type_ == READY);
    let uid = obj.uid().unwrap_or_default();
    let reported = candidates(outcome);

    let fresh = memory.mappings.get(key).is_none_or(|r| r.uid != uid);
    if fresh {
        // First look in this leadership: whatever the last status already says was
        // reported (by us or a previous leader).
        let said = cached_ready.map_or("", |c| c.message.as_str());
        memory.mappings.insert(
            key.clone(),
            Remembered {
                uid,
                condition: cached_ready.cloned(),
                reported: reported
                    .iter()
                    .filter(|(_, note)| !said.is_empty() && said.contains(note.as_str()))
                    .cloned()
                    .collect(),
            },
        );
    }
    let Some(rem) = memory.mappings.get_mut(key) else {
        return;
    };

    let status = if outcome.ready { "True" } else { "False" };
    let condition = Condition {
        type_: READY.to_owned(),
        status: status.to_owned(),
        reason: outcome.reason.as_str().to_owned(),
        message: truncate(&outcome.message, MAX_MESSAGE),
        observed_generation: outcome.observed_generation,
        last_transition_time: match &rem.condition {
            Some(c) if c.status == status => c.last_transition_time.clone(),
            _ => now.clone(),
        },
    };

    let mut events = Vec::new();
    let was_ready = rem.condition.as_ref().map(|c| c.status == "True");
    if outcome.ready && was_ready != Some(true) {
        events.push(EventSpec {
            warning: false,
            reason: outcome.reason.as_str().to_owned(),
            note: format!("Ready: {}", outcome.message),
        });
    }
    for (reason, note) in reported.difference(&rem.reported) {
        let warning = outcome
            .events
            .iter()
            .find(|e| &e.reason == reason && &e.note == note)
            .is_none_or(|e| e.type_ == EventType::Warning);
        events.push(EventSpec {
            warning,
            reason: reason.clone(),
            note: note.clone(),
        });
    }
    rem.reported = reported;
    rem.condition = Some(condition.clone());

    let mut conditions: Vec<Condition> = cached
        .conditions
        .iter()
        .filter(|c| c.type_ != READY)
        .cloned()
        .collect();
    conditions.push(condition);
    let desired = MappingStatus {
        observed_generation: outcome.observed_generation,
        conditions,
        groups: Some(outcome.groups.clone()).filter(|g| !g.is_empty()),
        roles: Some(outcome.roles.clone()).filter(|r| !r.is_empty()),
        binding_count: Some(u32::try_from(outcome.bindings.len()).unwrap_or(u32::MAX)),
        subject_count: outcome.subject_count,
        message: Some(truncate(&outcome.message, MAX_SHORT_MESSAGE)).filter(|m| !m.is_empty()),
        bindings: outcome.bindings.clone(),
        held_removals: outcome.held_removals.clone(),
    };
    let skey = StatusKey::Mapping(key.clone());
    let patch = if desired == *cached {
        writer.settled(&skey);
        None
    } else {
        Some(json!({"status": {
            "observedGeneration": desired.observed_generation,
            "conditions": desired.conditions,
            "groups": desired.groups,
            "roles": desired.roles,
            "bindingCount": desired.binding_count,
            "subjectCount": desired.subject_count,
            "message": desired.message,
            "bindings": non_empty(&desired.bindings),
            "heldRemovals": desired.held_removals,
        }}))
    };
    if patch.is_some() || !events.is_empty() {
        let patch = patch.as_ref().and_then(StatusPatch::json);
        writer.enqueue(skey, patch, events, Some(obj.object_ref(&())));
    }
}

/// Problems and the plan's events, as (reason, note): what a person should hear about once.
fn candidates(outcome: &MappingOutcome) -> BTreeSet<(String, String)> {
    outcome
        .problems
        .iter()
        .map(|p| (p.reason.as_str().to_owned(), p.message.clone()))
        .chain(
            outcome
                .events
                .iter()
                .map(|e| (e.reason.clone(), e.note.clone())),
        )
        .collect()
}

/// Whether the cached `status.access` already equals `want.access()`, checked without
/// materializing it (that allocates every grant of every user on every pass): `have` is
/// sorted and unique when we wrote it, so every grant must be found in it and every
/// entry of it must be hit.
/// A list, or null so that a merge patch removes the field.
fn non_empty<T: serde::Serialize>(items: &[T]) -> Value {
    if items.is_empty() {
        Value::Null
    } else {
        json!(items)
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::users::CachedUser;

    fn grant(ns: Option<&str>, role: &str) -> AccessGrant {
        AccessGrant {
            role_kind: "ClusterRole".into(),
            role_name: role.into(),
            namespace: ns.map(str::to_owned),
            scope: None,
            mapping: "m".into(),
            group: "g".into(),
        }
    }

    /// The digest of a written status, read back from the cache, is the one the status
    /// was written for: else every pass would write it again.
    #[test]
    fn a_written_user_status_reads_back_as_settled() {
        let (a, b) = (grant(None, "view"), grant(Some("x"), "edit"));
        let groups = vec![Arc::new(UserGroupRef {
            id: "g1".into(),
            display_name: Some("devs".into()),
        })];
        for want in [
            UserAccess::default(),
            UserAccess {
                groups: groups.clone(),
                grants: Vec::new(),
            },
            UserAccess {
                groups,
                // Unsorted and overlapping blocks, as the plan shares them.
                grants: vec![Arc::from(vec![b.clone(), a.clone()]), Arc::from(vec![a])],
            },
        ] {
            let wanted = WantedStatus::of(&want);
            let (digest, patch) = (wanted.digest(), wanted.patch());
            // What the queue keeps for a user renders as this patch.
            let queued = StatusPatch::User {
                digest,
                access: want.clone(),
            };
            assert_eq!(serde_json::to_value(queued.body()).unwrap(), patch);
            let mut user: ScimUser = serde_json::from_value(
                json!({"metadata": {"name": "u1"}, "spec": {"userName": "u"}}),
            )
            .unwrap();
            // A merge patch's nulls remove the field.
            let mut written = patch["status"].as_object().cloned().unwrap();
            written.retain(|_, v| !v.is_null());
            user.status = Some(serde_json::from_value(Value::Object(written)).unwrap());
            assert_eq!(CachedUser::from_user(&user).status, digest, "{want:?}");
            assert_eq!(
                user.status
                    .as_ref()
                    .map(|s| s.access.clone())
                    .unwrap_or_default(),
                want.access()
            );
        }
        let one = UserAccess {
            groups: Vec::new(),
            grants: vec![Arc::from(vec![b])],
        };
        assert_ne!(
            WantedStatus::of(&one).digest(),
            WantedStatus::of(&UserAccess::default()).digest()
        );
    }

    fn text(p: &StatusPatch) -> &str {
        match p {
            StatusPatch::Json(t) => t.get(),
            StatusPatch::User { .. } => "user",
        }
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("abc", 10), "abc");
        let t = truncate(&"é".repeat(10), 8);
        assert!(t.len() <= 8 && t.ends_with("..."), "{t}");
    }

    #[test]
    fn a_failing_object_waits_alone_and_keeps_the_newest_value() {
        let user = |id: &str| StatusKey::User(id.into());
        let mut q = Queue::default();
        let t0 = Instant::now();
        assert!(q.add(user("a"), StatusPatch::json(&json!(1)), Vec::new(), None));
        assert!(q.add(user("b"), StatusPatch::json(&json!(1)), Vec::new(), None));
        let a = q.pending.remove(&user("a")).unwrap();
        assert_eq!(
            q.fail(&user("a"), a.patch.unwrap(), None, t0),
            Duration::from_secs(1)
        );
        // A pass wants a newer value for the failing object: it waits for a's time, and
        // is no new work now; b is unaffected.
        assert!(!q.add(user("a"), StatusPatch::json(&json!(2)), Vec::new(), None));
        assert!(q.pending.contains_key(&user("b")));
        assert!(!q.pending.contains_key(&user("a")));
        assert_eq!(q.release_due(t0), Some(t0 + Duration::from_secs(1)));
        assert!(!q.pending.contains_key(&user("a")));
        assert_eq!(q.release_due(t0 + Duration::from_secs(1)), None);
        assert_eq!(q.pending[&user("a")].patch.as_ref().map(text), Some("2"));
        // Failing again doubles the wait.
        let a = q.pending.remove(&user("a")).unwrap();
        assert_eq!(
            q.fail(&user("a"), a.patch.unwrap(), None, t0),
            Duration::from_secs(2)
        );
        // Once the cache shows the wanted status, the object is forgotten entirely.
        q.settle(&user("a"));
        assert!(q.delayed.is_empty() && q.retries.is_empty());
        assert!(q.add(user("a"), StatusPatch::json(&json!(3)), Vec::new(), None));
    }
}
