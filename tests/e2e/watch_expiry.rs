//! Watch expiry (issue 10, item 5): the controller's watches expire (410 Gone) and
//! re-list while it reconciles a changing world. A re-list must never look like
//! removals: no managed binding that should stay is deleted (and recreated), and no
//! subject that should stay flaps out of a binding and back in.
//!
//! The API server of a private control plane is crashed and started again (twice) in
//! the middle of a stream of changes: users deactivated and re-activated, members
//! removed and added, a namespace unlabelled and labelled. While it is down, a key
//! outside /registry is written to etcd (`scripts/control-plane restart kube-apiserver
//! --expire-watches`), so the new API server's watch caches start past every revision
//! a client has seen: every watch resumed from before the crash is answered 410 Gone
//! and must re-list. What happened to the bindings is
//! read from a watch of the test's own, started before the first fault, that also goes
//! through the 410s: it diffs each re-list against what it had, so a binding deleted
//! and recreated while it was re-listing still shows up (as a new uid).
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource, ResourceExt};
use kube_scim::crd::{ScimGroup, ScimUser, MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::controller::{create_cluster_mapping, create_group, create_user, new_user, TestUser};
use crate::harness::{
    client_for, install_crds, metric_series, poll_until, start_operator_on, unique,
};
use crate::private_plane::PrivateControlPlane;

/// What the test's watch last saw of one binding.
#[derive(Clone, Debug)]
struct Seen {
    uid: String,
    subjects: BTreeSet<String>,
}

/// Everything the test's binding watches saw, keyed `Kind namespace/name`.
#[derive(Default, Debug)]
struct Journal {
    live: BTreeMap<String, Seen>,
    /// Per kind, the re-list in progress (Init .. InitDone).
    relist: BTreeMap<&'static str, BTreeMap<String, Seen>>,
    /// Per kind, lists made (the first one and every re-list).
    lists: BTreeMap<&'static str, u32>,
    /// Errors the watches got, e.g. `too old resource version` (410).
    errors: Vec<String>,
    /// Bindings gone: a DELETED event, or missing from a re-list.
    deleted: Vec<String>,
    /// Bindings seen again with another uid: deleted and created again.
    recreated: Vec<String>,
    /// (binding, subject) taken out of a binding that stayed.
    removed: Vec<(String, String)>,
    /// (binding, subject) put into a binding that already existed.
    added: Vec<(String, String)>,
    events: usize,
}

impl Journal {
    fn apply(&mut self, key: String, seen: Seen) {
        if let Some(old) = self.live.get(&key) {
            if old.uid != seen.uid {
                self.recreated.push(key.clone());
            }
            for s in old.subjects.difference(&seen.subjects) {
                self.removed.push((key.clone(), s.clone()));
            }
            for s in seen.subjects.difference(&old.subjects) {
                self.added.push((key.clone(), s.clone()));
            }
        }
        self.live.insert(key, seen);
    }

    fn delete(&mut self, key: &str) {
        self.live.remove(key);
        self.deleted.push(key.to_owned());
    }

    /// One watch event of `kind`.
    fn record(&mut self, kind: &'static str, event: Event<(String, Seen)>) {
        self.events += 1;
        match event {
            Event::Apply((key, seen)) => self.apply(key, seen),
            Event::Delete((key, _)) => self.delete(&key),
            Event::Init => {
                *self.lists.entry(kind).or_default() += 1;
                self.relist.insert(kind, BTreeMap::new());
            }
            Event::InitApply((key, seen)) => {
                self.relist.entry(kind).or_default().insert(key, seen);
            }
            Event::InitDone => {
                // A re-list is the whole truth for its kind: what it lacks is gone.
                let listed = self.relist.remove(kind).unwrap_or_default();
                let prefix = format!("{kind} ");
                let gone: Vec<String> = self
                    .live
                    .keys()
                    .filter(|k| k.starts_with(&prefix) && !listed.contains_key(*k))
                    .cloned()
                    .collect();
                for key in gone {
                    self.delete(&key);
                }
                for (key, seen) in listed {
                    self.apply(key, seen);
                }
            }
        }
    }
}

/// Watch the managed bindings of kind `K` into `journal` until `stop`.
fn watch_bindings<K>(
    client: &Client,
    journal: Arc<Mutex<Journal>>,
    subjects: fn(&K) -> BTreeSet<String>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + 'static,
    K: serde::de::DeserializeOwned,
{
    let kind: &'static str = match K::kind(&()).as_ref() {
        "RoleBinding" => "RoleBinding",
        _ => "ClusterRoleBinding",
    };
    let config =
        watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"));
    let stream = watcher::watcher(Api::<K>::all(client.clone()), config).default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            let item = tokio::select! {
                _ = stop.cancelled() => return,
                item = stream.next() => match item { Some(i) => i, None => return },
            };
            let entry = |o: K| {
                let key = match o.meta().namespace.as_deref() {
                    Some(ns) => format!("{kind} {ns}/{}", o.name_any()),
                    None => format!("{kind} {}", o.name_any()),
                };
                let seen = Seen {
                    uid: o.uid().unwrap_or_default(),
                    subjects: subjects(&o),
                };
                (key, seen)
            };
            let mut j = journal.lock().expect("journal");
            match item {
                Ok(event) => j.record(
                    kind,
                    match event {
                        Event::Apply(o) => Event::Apply(entry(o)),
                        Event::Delete(o) => Event::Delete(entry(o)),
                        Event::Init => Event::Init,
                        Event::InitApply(o) => Event::InitApply(entry(o)),
                        Event::InitDone => Event::InitDone,
                    },
                ),
                Err(e) => j.errors.push(e.to_string()),
            }
        }
    })
}

fn rb_subjects(b: &RoleBinding) -> BTreeSet<String> {
    crate::controller::subject_names(&b.subjects)
}

fn crb_subjects(b: &ClusterRoleBinding) -> BTreeSet<String> {
    crate::controller::subject_names(&b.subjects)
}

/// The world the churn leaves behind.
#[derive(Clone, Debug)]
struct Churned {
    /// Churned users' ids → active.
    active: BTreeMap<String, bool>,
    /// Member-churn users' ids → in the group.
    member: BTreeMap<String, bool>,
    /// The churned namespace carries the mapping's label.
    labelled: bool,
}

/// Write `write` until it succeeds (the API server may be down), or panic after a minute.
/// Every write sets an absolute value, so repeating one whose answer was lost is harmless.
async fn insist<F, Fut>(what: &str, mut write: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), kube::Error>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match write().await {
            Ok(()) => return,
            Err(e) => assert!(Instant::now() < deadline, "{what}: still failing: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

struct ChurnSetup {
    client: Client,
    group: String,
    /// Always members (the stable users and the deactivation-churn users).
    fixed_members: Vec<String>,
    churn_users: Vec<String>,
    member_users: Vec<String>,
    namespace: String,
    team: String,
}

/// Change one thing every `PACE` until `stop`: deactivate or re-activate a user, remove
/// or add a member, unlabel or label a namespace, in turn. Counts changes in `steps`.
async fn churn(s: ChurnSetup, steps: Arc<AtomicUsize>, stop: CancellationToken) -> Churned {
    const PACE: Duration = Duration::from_millis(100);
    let users: Api<ScimUser> = Api::all(s.client.clone());
    let groups: Api<ScimGroup> = Api::all(s.client.clone());
    let namespaces: Api<Namespace> = Api::all(s.client.clone());
    let mut state = Churned {
        active: s.churn_users.iter().map(|u| (u.clone(), true)).collect(),
        member: s.member_users.iter().map(|u| (u.clone(), true)).collect(),
        labelled: true,
    };
    let mut step = 0usize;
    while !stop.is_cancelled() {
        let round = step / 3;
        match step % 3 {
            0 => {
                let id = &s.churn_users[round % s.churn_users.len()];
                let now = !state.active[id];
                state.active.insert(id.clone(), now);
                insist("toggle active", || async {
                    users
                        .patch(
                            id,
                            &PatchParams::default(),
                            &Patch::Merge(json!({"spec": {"active": now}})),
                        )
                        .await
                        .map(drop)
                })
                .await;
            }
            1 => {
                let id = &s.member_users[round % s.member_users.len()];
                let now = !state.member[id];
                state.member.insert(id.clone(), now);
                let members: Vec<serde_json::Value> = s
                    .fixed_members
                    .iter()
                    .chain(state.member.iter().filter(|(_, m)| **m).map(|(u, _)| u))
                    .map(|u| json!({"value": u}))
                    .collect();
                insist("set members", || async {
                    groups
                        .patch(
                            &s.group,
                            &PatchParams::default(),
                            &Patch::Merge(json!({"spec": {"members": members}})),
                        )
                        .await
                        .map(drop)
                })
                .await;
            }
            _ => {
                state.labelled = !state.labelled;
                let team = if state.labelled {
                    s.team.as_str()
                } else {
                    "nobody"
                };
                insist("relabel namespace", || async {
                    namespaces
                        .patch(
                            &s.namespace,
                            &PatchParams::default(),
                            &Patch::Merge(json!({"metadata": {"labels": {"team": team}}})),
                        )
                        .await
                        .map(drop)
                })
                .await;
            }
        }
        step += 1;
        steps.store(step, Ordering::Release);
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(PACE) => {}
        }
    }
    state
}

/// Subjects of every managed binding, keyed like the journal.
async fn managed_bindings(client: &Client) -> Option<BTreeMap<String, BTreeSet<String>>> {
    let lp = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"));
    let mut out = BTreeMap::new();
    for b in Api::<RoleBinding>::all(client.clone())
        .list(&lp)
        .await
        .ok()?
        .items
    {
        let key = format!(
            "RoleBinding {}/{}",
            b.namespace().unwrap_or_default(),
            b.name_any()
        );
        out.insert(key, rb_subjects(&b));
    }
    for b in Api::<ClusterRoleBinding>::all(client.clone())
        .list(&lp)
        .await
        .ok()?
        .items
    {
        out.insert(
            format!("ClusterRoleBinding {}", b.name_any()),
            crb_subjects(&b),
        );
    }
    Some(out)
}

/// Lists per watch of the operator (`kube_scim_controller_watch_lists_total`).
async fn operator_lists(http: &reqwest::Client, probe_url: &str) -> BTreeMap<String, f64> {
    let text = crate::harness::metrics_text(http, probe_url)
        .await
        .unwrap_or_default();
    metric_series(&text, "kube_scim_controller_watch_lists_total")
        .into_iter()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_expiry_and_relist_never_look_like_removals() {
    const RESTARTS: usize = 2;
    const WATCHES: usize = 10;
    let started = Instant::now();
    let cp = PrivateControlPlane::start("e2e-watch-expiry-control-plane");
    let admin = client_for(&cp.kubeconfig, None).await;
    install_crds(&admin).await;

    // The world: stable users who must never lose access, users who are deactivated
    // and re-activated, users who leave the group and come back; two stable namespaces
    // and one that loses and regains the mapping's label.
    let team = unique("expiry-team");
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    let mut stay_namespaces = Vec::new();
    for _ in 0..2 {
        let n = unique("expiry-stay");
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": n, "labels": {"team": team}}}))
                    .expect("namespace"),
            )
            .await
            .expect("create namespace");
        stay_namespaces.push(n);
    }
    let churn_ns = unique("expiry-churn");
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": churn_ns, "labels": {"team": team}}}),
            )
            .expect("namespace"),
        )
        .await
        .expect("create namespace");
    let new_users = |prefix: &str, n: usize| (0..n).map(|_| new_user(prefix)).collect::<Vec<_>>();
    let (stable, churned, members) = (
        new_users("stable", 4),
        new_users("churn", 3),
        new_users("member", 3),
    );
    for u in stable.iter().chain(&churned).chain(&members) {
        create_user(&admin, u).await;
    }
    let everyone: Vec<&TestUser> = stable.iter().chain(&churned).chain(&members).collect();
    let group = create_group(&admin, "expiry", &everyone).await;
    let role = unique("kube-scim-test-expiry");
    Api::<ClusterRole>::all(admin.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": role}, "rules": [
                {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]}))
            .expect("cluster role"),
        )
        .await
        .expect("create cluster role");
    create_cluster_mapping(
        &admin,
        &unique("expiry"),
        json!({
            "groups": [{"displayName": group.display_name}],
            "clusterRoles": [role],
            "namespaceRoles": [{"clusterRole": role,
                                "namespaceSelector": {"matchLabels": {"team": team}}}]
        }),
    )
    .await;

    // The mass-removal guard would hold some churn removals for confirmation: not what
    // this test is about.
    let op = {
        let kc = cp.kubeconfig.clone();
        tokio::task::spawn_blocking(move || {
            start_operator_on(
                &kc,
                &[
                    "--enable-scim=false",
                    "--cluster-wide-roles",
                    "kube-scim-test-*",
                    "--mass-removal-threshold",
                    "1",
                ],
            )
        })
        .await
        .expect("operator")
    };

    // Converged: one ClusterRoleBinding and a RoleBinding per labelled namespace, every
    // user in each.
    let all_subjects: BTreeSet<String> = everyone
        .iter()
        .map(|u| format!("User:{}", u.user_name))
        .collect();
    let stable_subjects: BTreeSet<String> = stable
        .iter()
        .map(|u| format!("User:{}", u.user_name))
        .collect();
    let initial = poll_until(Duration::from_secs(60), "initial bindings", || async {
        let b = managed_bindings(&admin).await?;
        (b.len() == 4 && b.values().all(|s| *s == all_subjects)).then_some(b)
    })
    .await;
    let is_churn_ns = |key: &str| key.starts_with(&format!("RoleBinding {churn_ns}/"));
    let stay: BTreeSet<String> = initial
        .keys()
        .filter(|k| !is_churn_ns(k))
        .cloned()
        .collect();
    assert_eq!(stay.len(), 3, "{initial:?}");

    // The test's own watches, before any fault.
    let journal = Arc::new(Mutex::new(Journal::default()));
    let stop_watch = CancellationToken::new();
    let watches = [
        watch_bindings::<RoleBinding>(
            &admin,
            Arc::clone(&journal),
            rb_subjects,
            stop_watch.clone(),
        ),
        watch_bindings::<ClusterRoleBinding>(
            &admin,
            Arc::clone(&journal),
            crb_subjects,
            stop_watch.clone(),
        ),
    ];
    poll_until(
        Duration::from_secs(30),
        "the test's watches listed",
        || async {
            let j = journal.lock().expect("journal");
            (j.lists.len() == 2 && j.relist.is_empty() && j.live.len() == 4).then_some(())
        },
    )
    .await;

    let http = reqwest::Client::new();
    let lists_before = operator_lists(&http, &op.probe_url).await;
    assert_eq!(lists_before.len(), WATCHES, "{lists_before:?}");

    // Churn, and crash the API server in the middle of it, twice.
    let steps = Arc::new(AtomicUsize::new(0));
    let stop_churn = CancellationToken::new();
    let setup = ChurnSetup {
        client: admin.clone(),
        group: group.id.clone(),
        fixed_members: stable
            .iter()
            .chain(&churned)
            .map(|u| u.id.clone())
            .collect(),
        churn_users: churned.iter().map(|u| u.id.clone()).collect(),
        member_users: members.iter().map(|u| u.id.clone()).collect(),
        namespace: churn_ns.clone(),
        team: team.clone(),
    };
    let churner = tokio::spawn(churn(setup, Arc::clone(&steps), stop_churn.clone()));
    let steps_reached = |n: usize| {
        let steps = Arc::clone(&steps);
        move || {
            let done = steps.load(Ordering::Acquire) >= n;
            async move { done.then_some(()) }
        }
    };
    let mut relisted_after = Vec::new();
    for restart in 1..=RESTARTS {
        let at = steps.load(Ordering::Acquire) + 15;
        poll_until(
            Duration::from_secs(30),
            "churn before the fault",
            steps_reached(at),
        )
        .await;
        let down = Instant::now();
        tokio::task::block_in_place(|| cp.restart("kube-apiserver", &["--expire-watches"]));
        // Every operator watch re-lists (the 410 is in its log, checked below).
        let want = restart as f64 + 1.0;
        poll_until(
            Duration::from_secs(60),
            "every operator watch re-listed",
            || async {
                let lists = operator_lists(&http, &op.probe_url).await;
                (lists.len() == WATCHES && lists.values().all(|n| *n >= want)).then_some(())
            },
        )
        .await;
        relisted_after.push(down.elapsed());
    }
    // Some churn on the fresh watches, then stop.
    let at = steps.load(Ordering::Acquire) + 15;
    poll_until(
        Duration::from_secs(30),
        "churn after the faults",
        steps_reached(at),
    )
    .await;
    stop_churn.cancel();
    let last = churner.await.expect("churn");
    let changes = steps.load(Ordering::Acquire);

    // Converged on the final state.
    let want_subjects: BTreeSet<String> = stable
        .iter()
        .map(|u| (u, true))
        .chain(churned.iter().map(|u| (u, last.active[&u.id])))
        .chain(members.iter().map(|u| (u, last.member[&u.id])))
        .filter(|(_, on)| *on)
        .map(|(u, _)| format!("User:{}", u.user_name))
        .collect();
    poll_until(Duration::from_secs(60), "the final state", || async {
        let b = managed_bindings(&admin).await?;
        let want_keys: BTreeSet<&String> = initial
            .keys()
            .filter(|k| last.labelled || !is_churn_ns(k))
            .collect();
        (b.keys().collect::<BTreeSet<_>>() == want_keys && b.values().all(|s| *s == want_subjects))
            .then_some(())
    })
    .await;
    stop_watch.cancel();
    for w in watches {
        let _ = w.await;
    }

    let lists_after = operator_lists(&http, &op.probe_url).await;
    let j = journal.lock().expect("journal");
    let log = std::fs::read_to_string(&op.log).unwrap_or_default();
    let gone_410 = log.matches("too old resource version").count();
    let relists: f64 = lists_after.values().sum::<f64>() - lists_before.values().sum::<f64>();
    let test_410 = j
        .errors
        .iter()
        .filter(|e| e.contains("too old resource version"))
        .count();
    let churn_removals = j
        .removed
        .iter()
        .filter(|(_, s)| !stable_subjects.contains(s))
        .count();
    let stay_deleted: Vec<&String> = j.deleted.iter().filter(|k| stay.contains(*k)).collect();
    let stay_recreated: Vec<&String> = j.recreated.iter().filter(|k| stay.contains(*k)).collect();
    let flaps: Vec<&(String, String)> = j
        .removed
        .iter()
        .filter(|(b, s)| stay.contains(b) && stable_subjects.contains(s))
        .collect();
    println!(
        "watch expiry: {changes} changes, {RESTARTS} API server crashes (every watch re-listed \
         {relisted_after:?} after each), operator re-lists {relists} (410 in its log {gone_410}x), \
         test watch lists {:?} (410 {test_410}x), {} binding events, subjects removed {} / \
         added {}, churn-namespace binding deletes {}; stay bindings deleted {} recreated {}, \
         stable subjects removed {}; {:?} in all",
        j.lists,
        j.events,
        j.removed.len(),
        j.added.len(),
        j.deleted.iter().filter(|k| is_churn_ns(k)).count(),
        stay_deleted.len(),
        stay_recreated.len(),
        flaps.len(),
        started.elapsed(),
    );

    // The faults really were watch expiries, for the operator and for the test's watch.
    assert!(
        gone_410 >= WATCHES,
        "the operator's watches got no 410 (log {})",
        op.log.display()
    );
    assert!(
        relists >= (WATCHES * RESTARTS) as f64,
        "{lists_before:?} -> {lists_after:?}"
    );
    assert!(
        j.lists.values().all(|n| *n > RESTARTS as u32) && test_410 >= 2,
        "the test's watches re-listed after a 410 each time: {:?}, {:?}",
        j.lists,
        j.errors
    );
    // The world changed while it happened, and the journal saw it.
    assert!(changes >= 45, "{changes} changes");
    assert!(
        churn_removals > 0 && !j.added.is_empty(),
        "the journal saw no churn: {j:?}"
    );
    // What must hold.
    assert!(
        stay_deleted.is_empty() && stay_recreated.is_empty(),
        "bindings that should stay were deleted {stay_deleted:?} / recreated {stay_recreated:?}"
    );
    assert!(
        flaps.is_empty(),
        "stable subjects flapped out of their bindings {} times, first: {:?}",
        flaps.len(),
        &flaps[..flaps.len().min(3)]
    );
}
