//! Issue 10, item 7: one definition of membership. Two SCIM replicas take concurrent member
//! PATCHes and PUTs (adds, removals by value and by filter, replacements) to the same
//! groups, from many tasks at once, each task alternating between the replicas. Some of
//! the groups span many member shards (the shared operator fills shards to 1 kB). Afterwards every view of each group is the same:
//! - GET /Groups/{id} on replica A and on replica B;
//! - the controller's, through its `status.memberCount` and the User subjects of the
//!   bindings of a mapping selecting the group;
//! - the library's, from `Objects::plan_input` run here on what the API server holds;
//! - and, where a sequential replay of the requests determines it, the replay: a member
//!   only ever added is present, a member only ever removed is absent, and one nothing
//!   touched is as it started.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, ListParams};
use kube_scim::controller::naming::MAPPING_NAME_LABEL;
use kube_scim::controller::world::Objects;
use kube_scim::crd::{ScimGroup, ScimGroupMembers, ScimUser};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::controller::{create_mapping, create_roles};
use crate::harness::{
    admin_client, bulk_users, hold_scim_view, operator, scim_client_at, stored_member_ids,
    stored_shards, unique, Scim, TestEnv, GROUP_SCHEMA,
};
use crate::replicas::second_replica;

/// How long the views may take to settle after the last write.
const SETTLE: Duration = Duration::from_secs(60);

/// One group of the run and the roles its members play.
struct Plan {
    id: String,
    display_name: String,
    mapping: String,
    /// Members throughout: in the initial members and in every replacement, never removed.
    keep: Vec<String>,
    /// Added (and listed in every replacement), never removed.
    add_only: Vec<String>,
    /// Initial members, removed (and left out of every replacement), never added.
    remove_only: Vec<String>,
    /// Added and removed by different tasks at once; half start as members.
    flap: Vec<String>,
    /// A nested group among the members (counted, shown, never bound).
    nested: Option<String>,
}

impl Plan {
    fn initial(&self) -> BTreeSet<String> {
        let half = &self.flap[..self.flap.len() / 2];
        self.keep
            .iter()
            .chain(&self.remove_only)
            .chain(half)
            .chain(&self.nested)
            .cloned()
            .collect()
    }

    fn universe(&self) -> BTreeSet<String> {
        self.keep
            .iter()
            .chain(&self.add_only)
            .chain(&self.remove_only)
            .chain(&self.flap)
            .chain(&self.nested)
            .cloned()
            .collect()
    }
}

fn values(ids: &[String], nested: Option<&String>) -> Vec<Value> {
    ids.iter()
        .map(|i| json!({"value": i}))
        .chain(nested.map(|g| json!({"value": g, "type": "Group"})))
        .collect()
}

/// One request of the storm: what it sends and which members it adds and removes, as a
/// sequential replay would apply it.
struct Request {
    group: usize,
    method: &'static str,
    body: Value,
    adds: BTreeSet<String>,
    removes: BTreeSet<String>,
}

fn pick<'a>(
    rng: &mut impl Rng,
    from: impl IntoIterator<Item = &'a String>,
    n: usize,
) -> Vec<String> {
    let mut all: Vec<String> = from.into_iter().cloned().collect();
    all.shuffle(rng);
    all.truncate(n);
    all
}

/// A random request to group `gi`, of the shapes Entra (and PUT-happy clients) send.
fn request(rng: &mut impl Rng, gi: usize, g: &Plan) -> Request {
    let path = |ops: Value| json!({"schemas": [crate::harness::PATCH_OP], "Operations": ops});
    let addable = || g.add_only.iter().chain(&g.flap);
    let removable = || g.remove_only.iter().chain(&g.flap);
    let roll = rng.random_range(0..100);
    let (method, body, adds, removes): (_, _, Vec<String>, Vec<String>) = match roll {
        0..35 => {
            let n = rng.random_range(1..=12);
            let adds = pick(rng, addable(), n);
            let body =
                path(json!([{"op": "Add", "path": "members", "value": values(&adds, None)}]));
            ("PATCH", body, adds, Vec::new())
        }
        35..65 => {
            let n = rng.random_range(1..=12);
            let removes = pick(rng, removable(), n);
            let body =
                path(json!([{"op": "Remove", "path": "members", "value": values(&removes, None)}]));
            ("PATCH", body, Vec::new(), removes)
        }
        65..78 => {
            let removes = pick(rng, removable(), 1);
            let filter = format!("members[value eq \"{}\"]", removes[0]);
            (
                "PATCH",
                path(json!([{"op": "remove", "path": filter}])),
                Vec::new(),
                removes,
            )
        }
        78..92 => {
            // Entra batches adds and removals of different members in one PATCH.
            let mut both = pick(rng, g.flap.iter(), 8);
            let removes = both.split_off(4);
            let adds = [pick(rng, g.add_only.iter(), 3), both].concat();
            let removes = [pick(rng, g.remove_only.iter(), 3), removes].concat();
            let body = path(json!([
                {"op": "Add", "path": "members", "value": values(&adds, None)},
                {"op": "Remove", "path": "members", "value": values(&removes, None)}
            ]));
            ("PATCH", body, adds, removes)
        }
        _ => {
            // A replacement: the members to keep, everything added so far, a random part
            // of the flapping ones.
            let n = rng.random_range(0..=g.flap.len());
            let listed: Vec<String> = g
                .keep
                .iter()
                .chain(&g.add_only)
                .cloned()
                .chain(pick(rng, g.flap.iter(), n))
                .collect();
            let members = values(&listed, g.nested.as_ref());
            let (method, body) = if rng.random_bool(0.5) {
                (
                    "PATCH",
                    path(json!([{"op": "replace", "path": "members", "value": members}])),
                )
            } else {
                (
                    "PUT",
                    json!({"schemas": [GROUP_SCHEMA], "displayName": g.display_name, "members": members}),
                )
            };
            let listed_set: BTreeSet<&String> = listed.iter().chain(&g.nested).collect();
            let removes = g
                .universe()
                .into_iter()
                .filter(|v| !listed_set.contains(v))
                .collect();
            (method, body, listed, removes)
        }
    };
    Request {
        group: gi,
        method,
        body,
        adds: adds.into_iter().collect(),
        removes: removes.into_iter().collect(),
    }
}

/// Send `r` until it is answered 2xx (a 503 is retried, as Entra does); returns the
/// number of 503s, or the unexpected answer.
async fn send(s: &Scim, path: &str, r: &Request) -> Result<usize, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut unavailable = 0;
    loop {
        let answer = s.send(r.method, path, Some(&r.body), &[]).await;
        match answer.status {
            200 | 204 => return Ok(unavailable),
            503 if Instant::now() < deadline => {
                unavailable += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            status => return Err(format!("{} {path}: {status} {}", r.method, answer.text)),
        }
    }
}

/// A group's members as one replica serves them: value → type.
async fn served(s: &Scim, id: &str) -> Option<BTreeMap<String, String>> {
    let r = s.get(&format!("/Groups/{id}")).await;
    if r.status != 200 {
        return None;
    }
    let list = r.body["members"].as_array().cloned().unwrap_or_default();
    Some(
        list.iter()
            .filter_map(|m| {
                Some((
                    m["value"].as_str()?.to_owned(),
                    m["type"].as_str()?.to_owned(),
                ))
            })
            .collect(),
    )
}

/// Every view of the groups, or why they don't agree yet.
struct Views {
    /// Per group: the members both replicas serve (value → type).
    members: Vec<BTreeMap<String, String>>,
}

async fn views(
    plans: &[Plan],
    a: &Scim,
    b: &Scim,
    users: &BTreeMap<String, String>,
    ns: &str,
) -> Result<Views, String> {
    let client = admin_client().await;
    let groups: Api<ScimGroup> = Api::all(client.clone());
    let shards: Api<ScimGroupMembers> = Api::all(client.clone());
    let rbs: Api<RoleBinding> = Api::namespaced(client.clone(), ns);

    // The library's view, from what the API server holds now: the groups and every shard
    // of the cluster (the definition picks the groups' own).
    let mut objects = Objects::default();
    for p in plans {
        let g = groups.get(&p.id).await.map_err(|e| e.to_string())?;
        objects.groups.push(Arc::new(g));
    }
    let listed = shards
        .list(&ListParams::default())
        .await
        .map_err(|e| e.to_string())?;
    objects.shards = listed.items.into_iter().map(Arc::new).collect();
    let (input, counts) = objects.plan_input(k8s_openapi::jiff::Timestamp::now());

    let mut out = Vec::new();
    for (p, g) in plans.iter().zip(&objects.groups) {
        let on_a = served(a, &p.id).await.ok_or("replica A: no group")?;
        let on_b = served(b, &p.id).await.ok_or("replica B: no group")?;
        if on_a != on_b {
            return Err(format!(
                "{}: the replicas differ: A {:?}, B {:?}",
                p.display_name,
                diff(&on_a, &on_b),
                diff(&on_b, &on_a)
            ));
        }
        let served_users: BTreeSet<&String> = on_a
            .iter()
            .filter(|(_, t)| *t == "User")
            .map(|(v, _)| v)
            .collect();
        let planned = input
            .groups
            .iter()
            .find(|i| i.id == p.id)
            .ok_or("the group is not in the plan's input")?;
        let planned: BTreeSet<&String> = planned.members.iter().collect();
        if planned != served_users {
            return Err(format!(
                "{}: the library's users differ from what SCIM serves: {} vs {}",
                p.display_name,
                planned.len(),
                served_users.len()
            ));
        }
        if counts.get(&p.id) != Some(&(on_a.len() as u64)) {
            return Err(format!(
                "{}: the library counts {:?} members, SCIM serves {}",
                p.display_name,
                counts.get(&p.id),
                on_a.len()
            ));
        }
        // The controller's view: memberCount and the subjects it bound.
        let count = g.status.as_ref().map(|s| s.member_count);
        if count != Some(on_a.len() as u64) {
            return Err(format!(
                "{}: memberCount {count:?}, SCIM serves {}",
                p.display_name,
                on_a.len()
            ));
        }
        let lp = ListParams::default().labels(&format!("{MAPPING_NAME_LABEL}={}", p.mapping));
        let bound: BTreeSet<String> = rbs
            .list(&lp)
            .await
            .map_err(|e| e.to_string())?
            .items
            .into_iter()
            .flat_map(|b| b.subjects.unwrap_or_default())
            .filter(|s| s.kind == "User")
            .map(|s| s.name)
            .collect();
        let want: BTreeSet<String> = served_users
            .iter()
            .map(|id| {
                users
                    .get(*id)
                    .cloned()
                    .unwrap_or_else(|| format!("unknown {id}"))
            })
            .collect();
        if bound != want {
            return Err(format!(
                "{}: the bindings hold {} users, SCIM serves {} ({} missing, {} extra)",
                p.display_name,
                bound.len(),
                want.len(),
                want.difference(&bound).count(),
                bound.difference(&want).count()
            ));
        }
        out.push(on_a);
    }
    Ok(Views { members: out })
}

/// Poll [`views`] until they agree; past [`SETTLE`], fail saying how they differ.
async fn settle(
    what: &str,
    plans: &[Plan],
    a: &Scim,
    b: &Scim,
    users: &BTreeMap<String, String>,
    ns: &str,
) -> Views {
    let deadline = Instant::now() + SETTLE;
    loop {
        match views(plans, a, b, users, ns).await {
            Ok(v) => return v,
            Err(e) => assert!(
                Instant::now() < deadline,
                "timed out after {SETTLE:?} waiting for {what}: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn diff(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Vec<String> {
    a.iter()
        .filter(|(v, t)| b.get(*v) != Some(t))
        .map(|(v, t)| format!("{v}:{t}"))
        .take(5)
        .collect()
}

/// Id → userName of the users `bulk_users` created for `run`.
async fn bulk_user_names(client: &kube::Client, run: &str) -> BTreeMap<String, String> {
    let api: Api<ScimUser> = Api::all(client.clone());
    let lp = ListParams::default().labels(&format!("{}={run}", crate::harness::BULK_LABEL));
    api.list(&lp)
        .await
        .expect("list users")
        .items
        .into_iter()
        .filter_map(|u| Some((u.metadata.name?, u.spec.user_name)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_and_the_controller_agree_on_members_after_concurrent_writes() {
    const TASKS: usize = 24;
    const PER_TASK: usize = 8;
    let started = Instant::now();
    let op = operator().await;
    let _view = hold_scim_view().await;
    let env = TestEnv::new("membership").await;
    let ns = env.namespace.clone();
    let replica = second_replica(op).await;
    let a = scim_client_at(&op.base_url, &op.token);
    let b = scim_client_at(&replica.base_url, &op.token);
    let replicas = [a.clone(), b.clone()];
    let seed: u64 = std::env::var("KUBE_SCIM_E2E_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    println!("membership storm seed {seed} (KUBE_SCIM_E2E_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let run = unique("members");
    let pool = bulk_users(&a, &run, 300).await;
    let user_names = bulk_user_names(&env.client, &run).await;
    assert_eq!(user_names.len(), 300);

    // Two big groups (spread over many shards to the end) and a small one with a nested
    // group among its members.
    let mut plans: Vec<Plan> = Vec::new();
    for (gi, (size, keep, add, remove)) in [(160, 30, 40, 40), (160, 30, 40, 40), (20, 4, 5, 5)]
        .into_iter()
        .enumerate()
    {
        let mut ids = pool.ids.clone();
        ids.shuffle(&mut rng);
        let mut chosen: Vec<String> = ids.into_iter().take(size).collect();
        let flap = chosen.split_off(keep + add + remove);
        let remove_only = chosen.split_off(keep + add);
        let add_only = chosen.split_off(keep);
        let display_name = format!("{run} group {gi}");
        plans.push(Plan {
            id: String::new(),
            display_name,
            mapping: format!("{run}-{gi}"),
            keep: chosen,
            add_only,
            remove_only,
            flap,
            nested: None,
        });
    }
    // Create the groups (the small one last: it nests the first big one), with their
    // initial members, through replica A.
    for gi in 0..plans.len() {
        if gi == 2 {
            plans[2].nested = Some(plans[0].id.clone());
        }
        let p = &plans[gi];
        let initial: Vec<String> = p
            .initial()
            .into_iter()
            .filter(|v| Some(v) != p.nested.as_ref())
            .collect();
        let r = a
            .post(
                "/Groups",
                &json!({"schemas": [GROUP_SCHEMA], "displayName": p.display_name,
                        "members": values(&initial, p.nested.as_ref())}),
            )
            .await;
        r.created();
        plans[gi].id = r.id();
    }

    // A mapping per group; wait until the controller has bound the initial members.
    let (role, _) = create_roles(&env.client, &ns).await;
    for p in &plans {
        create_mapping(
            &env.client,
            &ns,
            &p.mapping,
            json!({"groups": [{"displayName": p.display_name}],
                   "roleRef": {"kind": "Role", "name": role},
                   "subjects": {"kind": "User", "userAttribute": "userName"}}),
        )
        .await;
    }
    let plans = Arc::new(plans);
    let agree = |what: &'static str| settle(what, &plans, &a, &b, &user_names, &ns);
    let first = agree("the views agree on the initial members").await;
    for (p, got) in plans.iter().zip(&first.members) {
        assert_eq!(
            got.keys().cloned().collect::<BTreeSet<_>>(),
            p.initial(),
            "{}: initial members",
            p.display_name
        );
    }
    let setup = started.elapsed();

    // The storm: every task sends its requests one after another, alternating between
    // the replicas; all tasks at once.
    let mut requests: Vec<Vec<Request>> = (0..TASKS)
        .map(|_| {
            (0..PER_TASK)
                .map(|_| {
                    // The big groups take most requests.
                    let gi = [0, 0, 1, 1, 2][rng.random_range(0..5)];
                    request(&mut rng, gi, &plans[gi])
                })
                .collect()
        })
        .collect();
    let storm = Instant::now();
    let mut tasks = Vec::new();
    for (t, reqs) in requests.drain(..).enumerate() {
        let (replicas, plans) = (replicas.clone(), plans.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for (j, r) in reqs.into_iter().enumerate() {
                let s = &replicas[(t + j) % 2];
                let path = format!("/Groups/{}", plans[r.group].id);
                let result = send(s, &path, &r).await;
                out.push((r, result));
            }
            out
        }));
    }
    let mut done = Vec::new();
    for t in tasks {
        done.extend(t.await.expect("task"));
    }
    let storm = storm.elapsed();
    let failed: Vec<&String> = done.iter().filter_map(|(_, r)| r.as_ref().err()).collect();
    assert!(failed.is_empty(), "unexpected answers: {failed:?}");
    let retried: usize = done.iter().filter_map(|(_, r)| r.as_ref().ok()).sum();

    // Every view agrees.
    let settling = Instant::now();
    let last = agree("the views agree after the storm").await;
    let settled = settling.elapsed();

    // And the replay where it is determinate.
    let mut determinate = 0;
    for (gi, (p, got)) in plans.iter().zip(&last.members).enumerate() {
        let mut added = BTreeSet::new();
        let mut removed = BTreeSet::new();
        for (r, _) in done.iter().filter(|(r, _)| r.group == gi) {
            added.extend(r.adds.iter().cloned());
            removed.extend(r.removes.iter().cloned());
        }
        let initial = p.initial();
        for v in p.universe() {
            let want = match (added.contains(&v), removed.contains(&v)) {
                (false, false) => Some(initial.contains(&v)),
                (true, false) => Some(true),
                (false, true) => Some(false),
                (true, true) => None,
            };
            if let Some(want) = want {
                determinate += 1;
                assert_eq!(
                    got.contains_key(&v),
                    want,
                    "{}: member {v} (added {}, removed {}, initially {})",
                    p.display_name,
                    added.contains(&v),
                    removed.contains(&v),
                    initial.contains(&v)
                );
            }
        }
        let extra: Vec<&String> = got.keys().filter(|v| !p.universe().contains(*v)).collect();
        assert!(
            extra.is_empty(),
            "{}: members nobody added: {extra:?}",
            p.display_name
        );
        // No request removes a kept or add-only value, and none adds a remove-only one:
        // each is there (gone) once a request added (removed) it. A value the storm's
        // random picks never touched stays as it was (the replay above).
        for v in p
            .keep
            .iter()
            .chain(p.add_only.iter().filter(|v| added.contains(*v)))
        {
            assert!(
                got.contains_key(v),
                "{}: {v} is gone though no request removed it",
                p.display_name
            );
        }
        for v in p.remove_only.iter().filter(|v| removed.contains(*v)) {
            assert!(
                !got.contains_key(v),
                "{}: {v} is back though no request added it",
                p.display_name
            );
        }
        if let Some(nested) = &p.nested {
            assert_eq!(got.get(nested).map(String::as_str), Some("Group"));
        }
        // As stored: the big groups spread over several shards.
        let stored = stored_member_ids(&p.id).await;
        assert_eq!(
            stored,
            got.keys().cloned().collect(),
            "{}: as stored",
            p.display_name
        );
        if p.keep.len() >= 16 {
            let used = stored_shards(&p.id).await.len();
            assert!(used >= 4, "{}: {used} shards", p.display_name);
        }
    }

    let by_method = done
        .iter()
        .fold(BTreeMap::<&str, usize>::new(), |mut m, (r, _)| {
            *m.entry(r.method).or_default() += 1;
            m
        });
    println!(
        "membership storm: {} requests ({by_method:?}) from {TASKS} tasks over 2 replicas in {storm:?}, \
         {retried} answered 503 first and retried; views agreed {settled:?} after the last answer; \
         sizes {:?}; {determinate} member states determinate and as replayed; setup {setup:?}, total {:?}",
        done.len(),
        last.members.iter().map(BTreeMap::len).collect::<Vec<_>>(),
        started.elapsed()
    );

    // Clean up: the mappings go with the namespace; groups, then users.
    for p in plans.iter().rev() {
        a.delete(&format!("/Groups/{}", p.id)).await.no_content();
    }
    pool.delete().await;
}

/// The objects a person (or an old tool) may write by hand, read alike by both replicas,
/// the controller and the library: a shard named for the group but owned by an earlier
/// group with the same id, one naming another group, one outside the shard names, a
/// hand-written shard of the group's own, inline members and a nested group. Then SCIM
/// changes the members: it writes the group's own shard first, then free names, and
/// leaves the objects that are not the group's as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_written_shards_are_read_alike_everywhere_and_left_alone_by_scim() {
    use kube::api::{DeleteParams, PostParams};
    use kube_scim::crd::group::shard_name;

    let op = operator().await;
    let _view = hold_scim_view().await;
    let env = TestEnv::new("membership-hand").await;
    let ns = env.namespace.clone();
    let replica = second_replica(op).await;
    let a = scim_client_at(&op.base_url, &op.token);
    let b = scim_client_at(&replica.base_url, &op.token);
    let run = unique("handmade");
    let pool = bulk_users(&a, &run, 64).await;
    let user_names = bulk_user_names(&env.client, &run).await;
    let mut users = pool.ids.iter().cloned();
    let mut next = || users.next().expect("64 users");
    let (right, stale, other, decoy, inline) = (next(), next(), next(), next(), next());
    let (added, removed) = ([next(), next()], next());
    let many: Vec<String> = (0..40).map(|_| next()).collect();
    // The indices of the hand-written shards.
    let (right_at, stale_at, other_at) = (3, 5, 7);

    // The group, written by hand; a nested group; the hand-made shards.
    let client = env.client.clone();
    let groups: Api<ScimGroup> = Api::all(client.clone());
    let shard_api: Api<ScimGroupMembers> = Api::all(client.clone());
    let gid = uuid::Uuid::new_v4().to_string();
    let display_name = format!("{run} group");
    let nested = a
        .post(
            "/Groups",
            &json!({"schemas": [GROUP_SCHEMA], "displayName": format!("{run} nested")}),
        )
        .await;
    nested.created();
    let nested = nested.id();
    let g: ScimGroup = serde_json::from_value(json!({
        "apiVersion": "scim.kubescim.io/v1alpha1", "kind": "ScimGroup",
        "metadata": {"name": gid},
        "spec": {"displayName": display_name,
                 "members": [{"value": inline}, {"value": nested, "type": "GROUP"}]}
    }))
    .expect("group");
    let g = groups
        .create(&PostParams::default(), &g)
        .await
        .expect("create group");
    let uid = g.metadata.uid.clone().expect("uid");
    let handmade = [
        // Its own shard (no owner reference: written by hand): both count.
        (
            shard_name(&gid, right_at),
            gid.clone(),
            None,
            vec![right.clone(), removed.clone()],
        ),
        // Left by an earlier group with the same id (another uid): nothing counts.
        (
            shard_name(&gid, stale_at),
            gid.clone(),
            Some("5d8a7c1e-0000-4000-8000-000000000000"),
            vec![stale.clone()],
        ),
        // Named for the group, saying another: nothing counts.
        (
            shard_name(&gid, other_at),
            format!("{gid}-elsewhere"),
            None,
            vec![other.clone()],
        ),
        // Saying the group, outside the shard names: nothing counts.
        (format!("{gid}-99"), gid.clone(), None, vec![decoy.clone()]),
    ];
    for (name, spec_group, owner_uid, members) in &handmade {
        let members: Vec<Value> = members.iter().map(|v| json!({"value": v})).collect();
        let mut obj = json!({
            "apiVersion": "scim.kubescim.io/v1alpha1", "kind": "ScimGroupMembers",
            "metadata": {"name": name},
            "spec": {"group": spec_group, "members": members}
        });
        if let Some(owner) = owner_uid {
            obj["metadata"]["ownerReferences"] = json!([{
                "apiVersion": "scim.kubescim.io/v1alpha1", "kind": "ScimGroup",
                "name": gid, "uid": owner
            }]);
        }
        let obj: ScimGroupMembers = serde_json::from_value(obj).expect("shard");
        shard_api
            .create(&PostParams::default(), &obj)
            .await
            .expect("create shard");
    }
    let (role, _) = create_roles(&client, &ns).await;
    let plan = Plan {
        id: gid.clone(),
        display_name: display_name.clone(),
        mapping: format!("{run}-m"),
        keep: Vec::new(),
        add_only: Vec::new(),
        remove_only: Vec::new(),
        flap: Vec::new(),
        nested: None,
    };
    create_mapping(
        &client,
        &ns,
        &plan.mapping,
        json!({"groups": [{"displayName": display_name}],
               "roleRef": {"kind": "Role", "name": role},
               "subjects": {"kind": "User", "userAttribute": "userName"}}),
    )
    .await;
    let plans = [plan];
    let agree = |what: &'static str| settle(what, &plans, &a, &b, &user_names, &ns);
    let expected = |users: &[&String]| -> BTreeMap<String, String> {
        users
            .iter()
            .map(|u| ((*u).clone(), "User".to_string()))
            .chain([(nested.clone(), "Group".to_string())])
            .collect()
    };
    let seen = agree("the views agree on the hand-written objects").await;
    assert_eq!(seen.members[0], expected(&[&inline, &right, &removed]));

    // SCIM (through replica B) adds two members and removes one of the hand-written shard.
    b.patch_ops(
        &format!("/Groups/{gid}"),
        json!([
            {"op": "Add", "path": "members",
             "value": [{"value": added[0]}, {"value": added[1]}]},
            {"op": "Remove", "path": "members", "value": [{"value": removed}]}
        ]),
    )
    .await
    .no_content();
    let seen = agree("the views agree after a small change").await;
    assert_eq!(
        seen.members[0],
        expected(&[&inline, &right, &added[0], &added[1]])
    );
    // The change went to the group's own shard, the one that had room.
    let own = shard_api
        .get(&shard_name(&gid, right_at))
        .await
        .expect("own shard");
    let held: BTreeSet<&str> = own.spec.members.iter().map(|m| m.value.as_str()).collect();
    assert_eq!(
        held,
        BTreeSet::from([right.as_str(), added[0].as_str(), added[1].as_str()])
    );

    // Forty more, through replica A: more than one 1 kB shard holds, so they spread over
    // free names and leave the objects that are not the group's alone.
    let values: Vec<Value> = many.iter().map(|v| json!({"value": v})).collect();
    a.patch_ops(
        &format!("/Groups/{gid}"),
        json!([{"op": "Add", "path": "members", "value": values}]),
    )
    .await
    .no_content();
    let seen = agree("the views agree after a large change").await;
    let mut all: Vec<&String> = vec![&inline, &right, &added[0], &added[1]];
    all.extend(&many);
    assert_eq!(seen.members[0], expected(&all));
    let group_shards = stored_shards(&gid).await;
    assert!(group_shards.len() >= 3, "{} shards", group_shards.len());
    let other_obj = shard_api
        .get(&shard_name(&gid, other_at))
        .await
        .expect("other group's object");
    assert_eq!(other_obj.spec.group, format!("{gid}-elsewhere"));
    assert_eq!(other_obj.spec.members.len(), 1);
    // The stale object is as it was, unless garbage collection deleted it (its owner is
    // gone): then its name was free to use.
    if let Some(s) = shard_api
        .get_opt(&shard_name(&gid, stale_at))
        .await
        .expect("get")
    {
        let owners = s.metadata.owner_references.unwrap_or_default();
        if !owners.iter().any(|o| o.uid == uid) {
            let held: Vec<&str> = s.spec.members.iter().map(|m| m.value.as_str()).collect();
            assert_eq!(held, [stale.as_str()]);
        }
    }

    // Clean up.
    a.delete(&format!("/Groups/{gid}")).await.no_content();
    a.delete(&format!("/Groups/{nested}")).await.no_content();
    for (name, ..) in &handmade {
        let _ = shard_api.delete(name, &DeleteParams::default()).await;
    }
    pool.delete().await;
}

/// A replica whose cache of member shards is behind (its shard watches held back by a
/// proxy in front of the API server) is asked to remove members another replica has just
/// placed in shards it has not seen. It must not answer 204 while leaving them in place:
/// the group records the versions the last change left its shards at, so the replica
/// waits for its cache, then answers 503 while it stays behind, and once its cache
/// catches up the client's retry removes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_on_a_replica_behind_finds_members_placed_by_another() {
    use crate::harness::{member_ids, poll_until, spawn_operator, E2E_SHARD_FILL_BYTES};
    use crate::proxy::ApiProxy;

    let op = operator().await;
    let _view = hold_scim_view().await;
    let proxy = ApiProxy::start(admin_client().await).await;
    let (kubeconfig, ns, token) = (
        proxy.kubeconfig.clone(),
        op.namespace.clone(),
        op.token.clone(),
    );
    let behind = tokio::task::spawn_blocking(move || {
        let args = [
            "--enable-controller=false",
            "--member-shard-fill-bytes",
            E2E_SHARD_FILL_BYTES,
        ];
        spawn_operator(&kubeconfig, &ns, &token, &args)
    })
    .await
    .expect("replica behind the proxy");
    let a = scim_client_at(&op.base_url, &op.token);
    let b = scim_client_at(&behind.base_url, &op.token);
    let run = unique("behind");
    let pool = bulk_users(&a, &run, 40).await;
    let (start, late) = pool.ids.split_at(30);
    let values =
        |ids: &[String]| -> Vec<Value> { ids.iter().map(|v| json!({"value": v})).collect() };
    let r = a
        .post(
            "/Groups",
            &json!({"schemas": [GROUP_SCHEMA], "displayName": format!("{run} group"),
                    "members": values(start)}),
        )
        .await;
    r.created();
    let gid = r.id();
    let path = format!("/Groups/{gid}");
    let start_set: BTreeSet<String> = start.iter().cloned().collect();
    poll_until(SETTLE, "replica B sees the group's members", || async {
        let got = b.get(&path).await;
        (got.status == 200 && member_ids(&got.body) == start_set).then_some(())
    })
    .await;

    // B stops seeing shard changes; A adds ten members (one shard write or two).
    proxy.freeze_shard_watches(true);
    a.patch_ops(
        &path,
        json!([{"op": "Add", "path": "members", "value": values(late)}]),
    )
    .await
    .no_content();
    let remove = json!([{"op": "Remove", "path": "members", "value": values(late)}]);
    let r = b.patch_ops(&path, remove.clone()).await;
    r.error(503, None);
    let all: BTreeSet<String> = pool.ids.iter().cloned().collect();
    assert_eq!(
        stored_member_ids(&gid).await,
        all,
        "nothing was removed by a replica that could not see the members"
    );

    // B catches up: the client's retry removes them.
    proxy.freeze_shard_watches(false);
    poll_until(SETTLE, "the retried removal is accepted", || async {
        let r = b.patch_ops(&path, remove.clone()).await;
        assert!(
            r.status == 204 || r.status == 503,
            "{} {}",
            r.status,
            r.text
        );
        (r.status == 204).then_some(())
    })
    .await;
    assert_eq!(stored_member_ids(&gid).await, start_set);
    assert_eq!(member_ids(&a.get(&path).await.body), start_set);

    a.delete(&path).await.no_content();
    pool.delete().await;
}
