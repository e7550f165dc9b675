//! The leader's loop: watch everything, and on every change (debounced, and resting as
//! long as the last pass took) or resync run one global pass — snapshot, plan, apply,
//! prune, finalizers, statuses.
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use futures::{stream, StreamExt};
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::events::Recorder;
use kube::{Client, ResourceExt};
use tokio::task::JoinSet;

use super::apply::{self, has_finalizer, BindingRetries, Family};
use super::fast_lane::{FastLane, Layouts, Priority, RevokedLog, SharedLayouts};
use super::leader::Term;
use super::plan::{
    self, BindingId, BindingKind, ExistingBinding, MappingKey, Plan, Reason, Settings,
};
use super::status::{self, Memory, StatusWriter};
use super::world::{RevocationSink, Snapshot, Trigger, World};
use crate::crd::{ClusterGroupRoleMapping, GroupRoleMapping};
use crate::telemetry::{BindingKindLabels, CategoryLabels, Metrics, Readiness, ReasonLabels};

/// Lets a burst of changes (a SCIM client patching many users) land in one pass.
const DEBOUNCE: Duration = Duration::from_millis(5);
/// Longest rest between two passes (see the loop in [`run`]).
const MAX_REST: Duration = Duration::from_secs(2);
/// Pass even without changes: repairs anything a missed event or failed write left.
const RESYNC: Duration = Duration::from_secs(300);
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// What the reconciler needs, shared by every pass.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    pub recorder: Recorder,
    /// This replica's identity (Lease holder, Events' reportingInstance).
    pub identity: String,
    /// User status writes per second after a one-second burst (0: unpaced).
    pub user_status_rate: u32,
}

/// The watches, started once per process: a standby keeps them warm, so taking over
/// re-lists nothing.
pub struct Watches {
    pub world: World,
    pub trigger: Arc<Trigger>,
    pub sink: RevocationSink,
    /// The watch tasks; dropping them stops the watches.
    pub tasks: JoinSet<()>,
}

impl Watches {
    /// Start every watch; `metrics` counts their lists.
    pub fn start(client: &kube::Client, metrics: &Metrics) -> Watches {
        Watches::start_with(client, crate::config::Listing::default(), metrics)
    }

    pub fn start_with(
        client: &kube::Client,
        list: crate::config::Listing,
        metrics: &Metrics,
    ) -> Watches {
        let trigger = Arc::new(Trigger::default());
        let sink = RevocationSink::default();
        let mut tasks = JoinSet::new();
        let world = World::start(
            client,
            list,
            Arc::clone(&trigger),
            sink.clone(),
            metrics.watch_lists.clone(),
            &mut tasks,
        );
        Watches {
            world,
            trigger,
            sink,
            tasks,
        }
    }
}

/// Reconcile until `term` ends (shutdown or lost leadership). Every write of the term —
/// the pass's applies, prunes and finalizer edits, statuses and Events, the fast lane —
/// is fenced by it: checked just before it is sent, abandoned when the term ends.
pub async fn run(ctx: Arc<Context>, watches: &Watches, term: Term) {
    let stop = term.token().clone();
    let Watches {
        world,
        trigger,
        sink,
        ..
    } = watches;
    let mut tasks = JoinSet::new();
    // Revocations flow to this term's fast lane only; a standby drops them.
    let revocation_rx = sink.open();
    let _close = CloseOnDrop(sink);
    let lane = Lane::default();
    let fast = FastLane {
        client: ctx.client.clone(),
        world: world.clone(),
        layouts: Arc::clone(&lane.layouts),
        log: Arc::clone(&lane.log),
        metrics: Arc::clone(&ctx.metrics),
        trigger: Arc::clone(trigger),
        priority: Arc::clone(&lane.priority),
        term: term.clone(),
    };
    tasks.spawn(fast.run(revocation_rx));
    let writer = StatusWriter::new(
        ctx.client.clone(),
        ctx.recorder.clone(),
        ctx.identity.clone(),
        Arc::clone(&ctx.metrics),
        Arc::clone(&lane.priority),
        term.clone(),
        super::pace::Pace::per_second(ctx.user_status_rate),
    );
    tasks.spawn(Arc::clone(&writer).run());

    // Nothing is written from a half-filled cache: a missing user would look removed.
    let started = Instant::now();
    while !world.sync.all_synced() {
        tokio::select! {
            _ = stop.cancelled() => {
                tasks.shutdown().await;
                return;
            }
            _ = trigger.wait() => {}
            _ = tokio::time::sleep(Duration::from_secs(10)) => {
                tracing::info!(waiting_for = ?world.sync.unsynced(), "waiting for caches to sync");
            }
        }
    }
    tracing::info!(elapsed = ?started.elapsed(), "caches synced; reconciling");
    // Until the first plan (seconds at 100,000 users), the fast lane finds a revoked
    // user's subjects by looking through the cached parts of every mapping.
    let provisional = world.provisional_layouts(&ctx.settings);
    tracing::debug!(
        mappings = provisional.len(),
        "provisional layouts for the fast lane"
    );
    *lane.layouts.write().unwrap_or_else(PoisonError::into_inner) =
        Arc::new(Layouts::new(provisional));
    ctx.readiness
        .controller_synced
        .store(true, Ordering::Relaxed);

    let mut memory = Memory::default();
    let mut retries = BindingRetries::default();
    let mut failures: u32 = 0;
    let mut next_expiry = None;
    loop {
        let pass_started = Instant::now();
        // Cancelled mid-pass (lost leadership): in-flight writes are dropped at once.
        let ok = tokio::select! {
            _ = stop.cancelled() => break,
            ok = pass(&ctx, &term, world, trigger, &lane, &writer, &mut memory, &mut retries, &mut next_expiry) => ok,
        };
        let now = Instant::now();
        let pass_took = now.duration_since(pass_started);
        ctx.metrics
            .binding_delayed
            .set(i64::try_from(retries.waiting(now)).unwrap_or(i64::MAX));
        failures = if ok { 0 } else { failures.saturating_add(1) };
        let wait = if ok {
            RESYNC
        } else {
            RETRY_MIN
                .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(8)))
                .min(RETRY_MAX)
        };
        // A mapping expires before then: plan again at that moment.
        let wait = next_expiry.map_or(wait, |at| wait.min(until(at, Timestamp::now())));
        // A binding whose write failed is due for its retry: pass again then.
        let wait = retries
            .next_due()
            .map_or(wait, |at| wait.min(at.saturating_duration_since(now)));
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = trigger.wait() => {}
            _ = tokio::time::sleep(wait) => {}
        }
        // A pass costs CPU in proportion to the tenant (~0.35 s at 50,000 users), and
        // under a stream of changes (a bulk import: one pass per PATCH) back-to-back
        // passes held a core that the API server needs for the SCIM writes and the fast
        // lane's patches on a small control plane. Resting as long as the last pass took
        // (at most MAX_REST, counting the time already idle) keeps passes to about half a
        // core; a change after a quiet spell still waits DEBOUNCE only, and the rest
        // only ever delays additions, since removals go through the fast lane.
        let rest = pass_took
            .min(MAX_REST)
            .saturating_sub(now.elapsed())
            .max(DEBOUNCE);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(rest) => {}
        }
        // Changes that arrived during the rest are in this pass's snapshot.
        trigger.take();
    }
    ctx.metrics.binding_delayed.set(0);
    tasks.shutdown().await;
}

struct CloseOnDrop<'a>(&'a RevocationSink);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// What the passes share with the revocation fast lane.
#[derive(Default)]
struct Lane {
    layouts: SharedLayouts,
    log: Arc<RevokedLog>,
    priority: Arc<Priority>,
}

/// How long from `now` until `at` (zero when past), rounded up to the millisecond so
/// that the pass after the wait sees `at` as past.
fn until(at: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(at.duration_since(now))
        .unwrap_or(Duration::ZERO)
        .saturating_add(Duration::from_millis(1))
}

/// One pass. Returns false when something failed and a retry is due (a binding write
/// that failed is not such a failure: it waits in `retries` for its own time); sets
/// `next_expiry` to the plan's nearest future mapping expiry.
#[allow(clippy::too_many_arguments)]
async fn pass(
    ctx: &Context,
    term: &Term,
    world: &World,
    trigger: &Trigger,
    lane: &Lane,
    writer: &Arc<StatusWriter>,
    memory: &mut Memory,
    retries: &mut BindingRetries,
    next_expiry: &mut Option<Timestamp>,
) -> bool {
    // The event that starts a revocation also triggers this pass (DEBOUNCE later). Its
    // snapshot, plan and status diff are CPU work, and the fast lane's patches need the
    // API server's CPU (on a small control plane, the same cores): plan after them. The
    // removal is written either way; this only keeps the pass from slowing it down.
    lane.priority.yield_to_revocations().await;
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let fail = |category: &'static str| {
        ctx.metrics
            .reconcile_failures
            .get_or_create(&CategoryLabels { category })
            .inc();
    };

    // Snapshot and plan are CPU-bound at scale (~0.25 s for 50k users in release).
    let w = world.clone();
    let settings = ctx.settings.clone();
    // Fast-lane removals after this epoch are not in the snapshot.
    let epoch = lane.log.epoch();
    let planned = tokio::task::spawn_blocking(move || {
        let snap = w.snapshot();
        let mut plan = plan::plan(&settings, &snap.input);
        let layouts = Arc::new(Layouts::new(std::mem::take(&mut plan.layouts)));
        (snap, plan, layouts)
    })
    .await;
    let (snap, mut plan) = match planned {
        Ok((snap, plan, layouts)) => {
            *lane.layouts.write().unwrap_or_else(PoisonError::into_inner) = layouts;
            (snap, plan)
        }
        Err(e) => {
            tracing::error!(error = %e, "plan task failed");
            fail("plan");
            return false;
        }
    };
    let planned_at = started.elapsed();
    *next_expiry = plan.next_expiry;
    let mut ok = true;

    if !add_finalizers(&ctx.client, term, &snap).await {
        fail("finalizer");
        ok = false;
    }

    let withheld = lane.log.withhold(epoch, &mut plan.bindings);
    if withheld > 0 {
        tracing::debug!(
            withheld,
            "subjects revoked since the snapshot are not re-applied"
        );
    }
    // Apply everything before pruning: a subject moving between parts of a split
    // binding is then never in neither. Revocations in flight go first.
    lane.priority.yield_to_revocations().await;
    let report = apply::apply_bindings(&ctx.client, term, &plan.bindings, &snap, retries).await;
    if report.deposed {
        return false;
    }
    for category in &report.retries {
        ctx.metrics.count_retry("binding", category.as_str());
    }
    // Each failed binding waits for its own retry (a timer wakes the pass then): no
    // pass-level retry for it.
    if report.failed > 0 {
        fail("apply");
    }
    for (key, message) in &report.refused {
        if let Some(outcome) = plan.mapping_status.get_mut(key) {
            outcome.add_problem(Reason::BindingRefused, message.clone());
        }
    }

    // Never prune from an incomplete view; and not a part whose subjects all moved to
    // other parts of its binding whose writes failed or wait (they would be in neither
    // meanwhile). A part that also holds subjects nobody wants any more goes now: a
    // revocation never waits behind a failing write.
    let mut gone: HashSet<BindingId> = HashSet::new();
    let prune_now = snap.all_synced;
    let existing: HashMap<(BindingKind, Option<&str>, &str), &ExistingBinding> = snap
        .input
        .existing
        .iter()
        .map(|b| ((b.kind, b.namespace.as_deref(), b.name.as_str()), b))
        .collect();
    let wanted = apply::wanted_by_family(&plan.bindings, &report.blocked);
    let (prune, deferred): (Vec<BindingId>, Vec<BindingId>) =
        plan.prune.iter().cloned().partition(|id| {
            let Some(b) = existing.get(&(id.kind, id.namespace.as_deref(), id.name.as_str()))
            else {
                return true;
            };
            let Some(mapping) = b.mapping.clone() else {
                return true;
            };
            let family = Family {
                mapping,
                kind: b.kind,
                namespace: b.namespace.clone(),
                role_ref: b.role_ref.clone(),
            };
            !report.blocked.contains(&family)
                || !wanted
                    .get(&family)
                    .is_some_and(|w| b.subjects.iter().all(|s| w.contains(s)))
        });
    if !deferred.is_empty() {
        // Pruned once the parts they moved to are written (their retry wakes a pass).
        tracing::debug!(
            deferred = deferred.len(),
            "prune of moved subjects' old parts waits for their new parts"
        );
    }
    if !prune.is_empty() {
        if prune_now {
            let pruned = apply::prune_bindings(&ctx.client, term, &prune, &snap).await;
            if pruned.deposed {
                return false;
            }
            gone.extend(pruned.gone);
            if pruned.failed > 0 {
                fail("prune");
                ok = false;
            }
            // Changed since the snapshot: plan again from the new state (its watch
            // event may not count as a relevant change).
            if pruned.stale > 0 {
                trigger.fire();
            }
        } else {
            tracing::info!(
                held = prune.len(),
                unsynced = ?world.sync.unsynced(),
                "prune deferred until every cache is in sync"
            );
            ok = false;
        }
    }
    if prune_now && !release_deleted(&ctx.client, term, &snap, &gone).await {
        fail("finalizer");
        ok = false;
    }

    // Diffing 50k user statuses is CPU work too.
    let writer2 = Arc::clone(writer);
    let mut mem = std::mem::take(memory);
    let published = tokio::task::spawn_blocking(move || {
        status::publish(&plan, &snap, &mut mem, &writer2);
        (mem, plan)
    })
    .await;
    let plan = match published {
        Ok((mem, plan)) => {
            *memory = mem;
            plan
        }
        Err(e) => {
            tracing::error!(error = %e, "status task failed");
            fail("status");
            return false;
        }
    };
    lane.log.forget_through(epoch);
    record_metrics(&ctx.metrics, &plan);
    let elapsed = started.elapsed();
    ctx.metrics
        .reconcile_duration
        .observe(elapsed.as_secs_f64());
    tracing::debug!(
        ?elapsed,
        ?planned_at,
        bindings = plan.bindings.len(),
        applied = report.applied,
        waiting = report.waiting,
        shrunk = report.shrunk,
        refused = report.refused.len(),
        pruned = gone.len(),
        status_queue = writer.pending(),
        "pass done"
    );
    ok
}

/// Put the finalizer on every mapping that lacks it (and is not being deleted).
async fn add_finalizers(client: &Client, term: &Term, snap: &Snapshot) -> bool {
    let ns_api = |ns: &str| Api::<GroupRoleMapping>::namespaced(client.clone(), ns);
    let cl_api = Api::<ClusterGroupRoleMapping>::all(client.clone());
    let mut futs = Vec::new();
    for m in &snap.mappings {
        if m.metadata.deletion_timestamp.is_none() && !has_finalizer(&m.metadata) {
            let api = ns_api(&m.namespace().unwrap_or_default());
            let (m, term) = (Arc::clone(m), term.clone());
            futs.push(Box::pin(async move {
                apply::fenced(&term, apply::add_finalizer(&api, &*m)).await
            }) as futures::future::BoxFuture<'static, _>);
        }
    }
    for m in &snap.cluster_mappings {
        if m.metadata.deletion_timestamp.is_none() && !has_finalizer(&m.metadata) {
            let api = cl_api.clone();
            let (m, term) = (Arc::clone(m), term.clone());
            futs.push(Box::pin(async move {
                apply::fenced(&term, apply::add_finalizer(&api, &*m)).await
            }));
        }
    }
    all_ok(futs, "add finalizer").await
}

/// Remove the finalizer of deleted mappings whose bindings are all gone. Bindings in
/// terminating namespaces don't count: they go with the namespace.
async fn release_deleted(
    client: &Client,
    term: &Term,
    snap: &Snapshot,
    gone: &HashSet<BindingId>,
) -> bool {
    let terminating: HashSet<&str> = snap
        .input
        .namespaces
        .iter()
        .filter(|n| n.terminating)
        .map(|n| n.name.as_str())
        .collect();
    let live: HashSet<&str> = snap
        .input
        .namespaces
        .iter()
        .map(|n| n.name.as_str())
        .collect();
    let mut remaining: HashMap<&MappingKey, usize> = HashMap::new();
    for b in &snap.input.existing {
        let Some(key) = &b.mapping else { continue };
        if let Some(ns) = b.namespace.as_deref() {
            if terminating.contains(ns) || !live.contains(ns) {
                continue;
            }
        }
        let id = BindingId {
            kind: b.kind,
            namespace: b.namespace.clone(),
            name: b.name.clone(),
        };
        if !gone.contains(&id) {
            *remaining.entry(key).or_default() += 1;
        }
    }
    let held = |key: &MappingKey| remaining.get(key).copied().unwrap_or(0);

    let mut futs = Vec::new();
    for m in &snap.mappings {
        let (Some(ns), Some(name)) = (m.namespace(), m.metadata.name.clone()) else {
            continue;
        };
        let key = MappingKey::Namespaced {
            namespace: ns.clone(),
            name,
        };
        if m.metadata.deletion_timestamp.is_some() && has_finalizer(&m.metadata) {
            if held(&key) > 0 {
                tracing::info!(mapping = %key, bindings = held(&key), "deleted mapping still has bindings");
                continue;
            }
            let api = Api::<GroupRoleMapping>::namespaced(client.clone(), &ns);
            let (m, term) = (Arc::clone(m), term.clone());
            futs.push(Box::pin(async move {
                apply::fenced(&term, apply::remove_finalizer(&api, &*m)).await
            }) as futures::future::BoxFuture<'static, _>);
        }
    }
    for m in &snap.cluster_mappings {
        let Some(name) = m.metadata.name.clone() else {
            continue;
        };
        let key = MappingKey::Cluster { name };
        if m.metadata.deletion_timestamp.is_some() && has_finalizer(&m.metadata) {
            if held(&key) > 0 {
                tracing::info!(mapping = %key, bindings = held(&key), "deleted mapping still has bindings");
                continue;
            }
            let api = Api::<ClusterGroupRoleMapping>::all(client.clone());
            let (m, term) = (Arc::clone(m), term.clone());
            futs.push(Box::pin(async move {
                apply::fenced(&term, apply::remove_finalizer(&api, &*m)).await
            }));
        }
    }
    all_ok(futs, "remove finalizer").await
}

async fn all_ok(
    futs: Vec<futures::future::BoxFuture<'static, Result<(), apply::WriteError>>>,
    what: &'static str,
) -> bool {
    let results: Vec<Result<(), apply::WriteError>> =
        stream::iter(futs).buffer_unordered(8).collect().await;
    let mut ok = true;
    for r in results {
        match r {
            Ok(()) => {}
            // Changed since the snapshot (often our own status write): its watch event
            // brings the next pass, which retries with the new version.
            Err(e) if e.code() == Some(409) => {
                tracing::debug!(error = %e, "{what}: conflict; retrying on the next pass");
            }
            Err(apply::WriteError::Deposed(d)) => {
                tracing::debug!(reason = %d, "{what}: not sent, no longer the leader");
                ok = false;
            }
            Err(e) => {
                tracing::warn!(error = %e, "{what} failed");
                ok = false;
            }
        }
    }
    ok
}

fn record_metrics(metrics: &Metrics, plan: &Plan) {
    let held: i64 = plan
        .mapping_status
        .values()
        .filter_map(|o| o.held_removals.as_ref())
        .map(|h| i64::from(h.subjects))
        .sum();
    metrics.held_removals.set(held);
    // Every reason gets a series, so one that no mapping has any more reads 0.
    let mut by_reason: HashMap<Reason, i64> = Reason::ALL.iter().map(|r| (*r, 0)).collect();
    for outcome in plan.mapping_status.values() {
        *by_reason.entry(outcome.reason).or_default() += 1;
    }
    for (reason, n) in by_reason {
        metrics
            .mappings
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .set(n);
    }
    let mut role_bindings = 0i64;
    let mut cluster_role_bindings = 0i64;
    let mut subjects = 0i64;
    for b in &plan.bindings {
        match b.kind {
            BindingKind::RoleBinding => role_bindings += 1,
            BindingKind::ClusterRoleBinding => cluster_role_bindings += 1,
        }
        subjects += i64::try_from(b.subjects.len()).unwrap_or(i64::MAX);
    }
    metrics
        .managed_bindings
        .get_or_create(&BindingKindLabels {
            kind: "RoleBinding",
        })
        .set(role_bindings);
    metrics
        .managed_bindings
        .get_or_create(&BindingKindLabels {
            kind: "ClusterRoleBinding",
        })
        .set(cluster_role_bindings);
    metrics.managed_subjects.set(subjects);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_wait_ends_just_after_the_expiry_and_never_before_now() {
        let now: Timestamp = "2026-06-01T12:00:00Z".parse().unwrap();
        let at: Timestamp = "2026-06-01T12:00:03Z".parse().unwrap();
        assert_eq!(until(at, now), Duration::from_millis(3001));
        assert_eq!(until(now, at), Duration::from_millis(1));
    }
}
