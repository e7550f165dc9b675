//! Two replicas serve SCIM side by side (the chart runs two): a create retried against
//! the other replica while the first is still writing must not make a duplicate, and an
//! Entra sync whose requests alternate between the replicas sees one consistent store.
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::Api;
use kube_scim::crd::ScimUser;
use serde_json::json;

use crate::harness::{
    admin_client, hold_scim_view, kubeconfig_path, member_ids, operator, poll_until,
    scim_client_at, spawn_operator, stored_member_ids, unique, Operator, Scim, ScimResponse,
    ENTERPRISE, GROUP_SCHEMA,
};
use crate::proxy::{ScimBalancer, REPLICA_HEADER};
use crate::scim_entra::entra_user;

/// A second SCIM replica of the shared operator: same namespace (tokens, name claims),
/// no controller (the shared operator leads).
pub(crate) async fn second_replica(op: &Operator) -> Operator {
    let (ns, token) = (op.namespace.clone(), op.token.clone());
    tokio::task::spawn_blocking(move || {
        spawn_operator(
            kubeconfig_path(),
            &ns,
            &token,
            &[
                "--enable-controller=false",
                "--member-shard-fill-bytes",
                crate::harness::E2E_SHARD_FILL_BYTES,
            ],
        )
    })
    .await
    .expect("replica")
}

#[tokio::test]
async fn same_create_on_two_replicas_makes_one_resource() {
    let op = operator().await;
    let replica = second_replica(op).await;
    let http = reqwest::Client::new();
    let bases = [op.base_url.clone(), replica.base_url.clone()];

    for round in 0..5 {
        let user_name = format!("{}@example.com", unique(&format!("twin{round}")));
        let display_name = unique(&format!("Twin Group {round}"));
        // The same user and group posted to both replicas at once, several times each.
        let mut requests = Vec::new();
        for i in 0..6 {
            let base = bases[i % 2].clone();
            let (http, token) = (http.clone(), op.token.clone());
            let user = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                              "userName": if i % 3 == 0 { user_name.to_uppercase() } else { user_name.clone() }});
            let group = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": display_name});
            requests.push(tokio::spawn(async move {
                let u = http
                    .post(format!("{base}/Users"))
                    .bearer_auth(&token)
                    .json(&user)
                    .send()
                    .await
                    .expect("POST");
                let g = http
                    .post(format!("{base}/Groups"))
                    .bearer_auth(&token)
                    .json(&group)
                    .send()
                    .await
                    .expect("POST");
                (u.status().as_u16(), g.status().as_u16())
            }));
        }
        let mut statuses = Vec::new();
        for r in requests {
            statuses.push(r.await.expect("request"));
        }
        let users_created = statuses.iter().filter(|(u, _)| *u == 201).count();
        let groups_created = statuses.iter().filter(|(_, g)| *g == 201).count();
        assert_eq!(
            users_created, 1,
            "exactly one userName create wins: {statuses:?}"
        );
        assert_eq!(
            groups_created, 1,
            "exactly one displayName create wins: {statuses:?}"
        );
        assert!(
            statuses
                .iter()
                .all(|(u, g)| [201, 409].contains(u) && [201, 409].contains(g)),
            "{statuses:?}"
        );

        // And both replicas come to see exactly one (the one that didn't write it learns
        // of it through its watch), never two.
        for base in &bases {
            let filter = format!("userName eq \"{user_name}\"");
            crate::harness::poll_until(
                std::time::Duration::from_secs(20),
                "each replica to see the one user",
                || async {
                    let list: serde_json::Value = http
                        .get(format!("{base}/Users"))
                        .query(&[("filter", filter.as_str())])
                        .bearer_auth(&op.token)
                        .send()
                        .await
                        .ok()?
                        .json()
                        .await
                        .ok()?;
                    let total = list["totalResults"].as_u64()?;
                    assert!(total <= 1, "a duplicate appeared: {list}");
                    (total == 1).then_some(())
                },
            )
            .await;
        }
    }
}

/// One Entra request of the sync replay, and what came back.
struct Step {
    step: usize,
    status: u16,
    replica: Option<usize>,
    took: Duration,
    /// Why the answer is wrong (status aside), if it is.
    wrong: Option<String>,
}

/// The attributes the replay leaves user `i` with.
fn patched(i: usize) -> (String, String, String, String) {
    (
        format!("User {i}"),
        format!("Dept {}", i % 7),
        format!("Engineer {i}"),
        format!("E{i:05}"),
    )
}

/// Entra's requests for user `i`, over one connection (so the balancer alternates them
/// between the replicas): lookup, create, GET by id, lookup again, group member add, two
/// attribute PATCHes. Stops at the first unexpected answer. Returns the steps and the id.
async fn entra_flow(s: &Scim, run: &str, group_id: &str, i: usize) -> (Vec<Step>, Option<String>) {
    let user_name = format!("{run}-{i}@contoso.example");
    let by_name = format!("userName eq \"{user_name}\"");
    let mut steps = Vec::new();
    let mut sent = Instant::now();
    let mut record = |step: usize, r: &ScimResponse, expect: u16, wrong: Option<String>| {
        let wrong = if r.status != expect {
            Some(format!("{} {}: {}", r.method, r.url, r.text))
        } else {
            wrong
        };
        let ok = wrong.is_none();
        steps.push(Step {
            step,
            status: r.status,
            replica: r.header(REPLICA_HEADER).and_then(|v| v.parse().ok()),
            took: sent.elapsed(),
            wrong,
        });
        sent = Instant::now();
        ok
    };
    let total = |r: &ScimResponse| r.body["totalResults"].as_u64();

    let r = s.filter("/Users", &by_name, "").await;
    let wrong = (total(&r) != Some(0)).then(|| format!("lookup before create: {}", r.text));
    if !record(0, &r, 200, wrong) {
        return (steps, None);
    }
    let r = s
        .post(
            "/Users",
            &entra_user(&user_name, &uuid::Uuid::new_v4().to_string()),
        )
        .await;
    if !record(1, &r, 201, None) {
        return (steps, None);
    }
    let id = r.id();
    let r = s.get(&format!("/Users/{id}")).await;
    let wrong = (r.body["userName"] != user_name).then(|| format!("GET by id: {}", r.text));
    if !record(2, &r, 200, wrong) {
        return (steps, Some(id));
    }
    let r = s.filter("/Users", &by_name, "").await;
    let wrong = (total(&r) != Some(1) || r.body["Resources"][0]["id"] != id.as_str())
        .then(|| format!("lookup after create: {}", r.text));
    if !record(3, &r, 200, wrong) {
        return (steps, Some(id));
    }
    let r = s
        .patch_ops(
            &format!("/Groups/{group_id}"),
            json!([{"op": "Add", "path": "members", "value": [{"value": id}]}]),
        )
        .await;
    if !record(4, &r, 204, None) {
        return (steps, Some(id));
    }
    let (display, dept, title, number) = patched(i);
    let r = s
        .patch_ops(
            &format!("/Users/{id}"),
            json!([
                {"op": "Replace", "path": "displayName", "value": display},
                {"op": "Replace", "path": "name.givenName", "value": format!("Given{i}")},
                {"op": "Replace", "path": format!("{ENTERPRISE}:department"), "value": dept}
            ]),
        )
        .await;
    if !record(5, &r, 200, None) {
        return (steps, Some(id));
    }
    // Lands on the replica that didn't take the previous PATCH: it must build on it.
    let r = s
        .patch_ops(
            &format!("/Users/{id}"),
            json!([
                {"op": "Add", "path": "title", "value": title},
                {"op": "Add", "path": format!("{ENTERPRISE}:employeeNumber"), "value": number}
            ]),
        )
        .await;
    let wrong = (r.body["displayName"] != display.as_str()
        || r.body["meta"]["version"] != "W/\"3\"")
        .then(|| format!("second PATCH lost the first: {}", r.text));
    record(6, &r, 200, wrong);
    (steps, Some(id))
}

/// Lines of an operator log saying a cache miss was answered from the API server.
fn misses_answered(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches("cache miss answered by the API server")
        .count()
}

/// Issue 10, item 3: any replica answers any request. Two replicas behind a round-robin
/// balancer; Entra's sync of `KUBE_SCIM_E2E_SYNC_USERS` users (default 500), 16 in
/// flight, every request of a user's flow answered by the other replica than the one
/// before (created on one, fetched, looked up, added to a group and patched on the other
/// before its watch has delivered the user). No 404, 409, 412 or 5xx, and the final
/// state is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_sync_through_a_round_robin_balancer_over_two_replicas() {
    const IN_FLIGHT: usize = 16;
    let users: usize = std::env::var("KUBE_SCIM_E2E_SYNC_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let op = operator().await;
    let _view = hold_scim_view().await;
    let replica = second_replica(op).await;
    let balancer = ScimBalancer::start(&[op.base_url.clone(), replica.base_url.clone()]).await;
    let logs = [op.log.clone(), replica.log.clone()];
    let misses_before: usize = logs.iter().map(|l| misses_answered(l)).sum();
    let run = unique("sync");
    let s = scim_client_at(&balancer.base_url, &op.token);
    let group = s
        .post(
            "/Groups",
            &json!({"schemas": [GROUP_SCHEMA], "displayName": format!("{run} all staff")}),
        )
        .await;
    group.created();
    let group_id = group.id();

    // 16 workers, each with its own connection, taking the next user when done.
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (next, run, group_id) = (next.clone(), run.clone(), group_id.clone());
        let s = scim_client_at(&balancer.base_url, &op.token);
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= users {
                    return out;
                }
                out.push((i, entra_flow(&s, &run, &group_id, i).await));
            }
        }));
    }
    let mut flows = Vec::new();
    for w in workers {
        flows.extend(w.await.expect("worker"));
    }
    let elapsed = started.elapsed();

    let steps: Vec<&Step> = flows.iter().flat_map(|(_, (steps, _))| steps).collect();
    let mut by_status = std::collections::BTreeMap::<u16, usize>::new();
    for s in &steps {
        *by_status.entry(s.status).or_default() += 1;
    }
    let wrong: Vec<String> = steps
        .iter()
        .filter_map(|s| s.wrong.as_ref().map(|w| format!("step {}: {w}", s.step)))
        .collect();
    // Consecutive requests of a flow really went to different replicas.
    let same_replica = flows
        .iter()
        .flat_map(|(_, (steps, _))| steps.windows(2))
        .filter(|w| w[0].replica.is_none() || w[0].replica == w[1].replica)
        .count();
    let misses = logs.iter().map(|l| misses_answered(l)).sum::<usize>() - misses_before;
    let latency: Vec<String> = (0..7)
        .map(|step| {
            let mut t: Vec<Duration> = steps
                .iter()
                .filter(|s| s.step == step)
                .map(|s| s.took)
                .collect();
            t.sort();
            let at = |q: f64| t.get(((t.len() as f64 * q) as usize).min(t.len().saturating_sub(1)));
            format!(
                "{step}: p50 {:?} p99 {:?}",
                at(0.5).copied().unwrap_or_default(),
                at(0.99).copied().unwrap_or_default()
            )
        })
        .collect();
    println!("latency per step (0 lookup, 1 create, 2 GET, 3 lookup, 4 member add, 5-6 PATCH): {latency:?}");
    println!(
        "Entra sync through the balancer: {users} users, {} requests in {elapsed:?} ({:.0}/s), \
         {IN_FLIGHT} in flight; per replica {:?}; statuses {by_status:?}; \
         cache misses answered from the API server: {misses}",
        steps.len(),
        steps.len() as f64 / elapsed.as_secs_f64(),
        balancer.served(),
    );
    assert!(
        wrong.is_empty(),
        "{} unexpected answers, first ones:\n{}",
        wrong.len(),
        wrong
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(steps.len(), users * 7, "every flow ran to its end");
    assert_eq!(
        same_replica, 0,
        "each request went to the other replica than the one before"
    );

    // The final state, from the API server: every user once, with its patched
    // attributes; the group holds exactly them.
    let ids: BTreeSet<String> = flows.iter().filter_map(|(_, (_, id))| id.clone()).collect();
    let stored = Api::<ScimUser>::all(admin_client().await)
        .list(&Default::default())
        .await
        .expect("list ScimUsers");
    let mine: Vec<&ScimUser> = stored
        .items
        .iter()
        .filter(|u| u.spec.user_name.starts_with(&format!("{run}-")))
        .collect();
    assert_eq!(mine.len(), users, "every user stored, once");
    for (i, (_, id)) in &flows {
        let id = id.as_deref().expect("created");
        let u = mine
            .iter()
            .find(|u| u.metadata.name.as_deref() == Some(id))
            .expect("stored user");
        let (display, dept, title, number) = patched(*i);
        assert_eq!(u.spec.user_name, format!("{run}-{i}@contoso.example"));
        assert_eq!(u.spec.display_name.as_deref(), Some(display.as_str()));
        let a = &u.spec.attributes;
        assert_eq!(a["title"], title.as_str(), "{id}");
        assert_eq!(a["name"]["givenName"], format!("Given{i}"), "{id}");
        assert_eq!(a[ENTERPRISE]["department"], dept.as_str(), "{id}");
        assert_eq!(a[ENTERPRISE]["employeeNumber"], number.as_str(), "{id}");
    }
    assert_eq!(
        stored_member_ids(&group_id).await,
        ids,
        "the group holds exactly them"
    );
    // And each replica's own view converges on it (straight, not through the balancer).
    for base in [&op.base_url, &replica.base_url] {
        let direct = scim_client_at(base, &op.token);
        poll_until(
            Duration::from_secs(30),
            "each replica to serve the final group",
            || async {
                let r = direct.get(&format!("/Groups/{group_id}")).await;
                (member_ids(&r.body) == ids).then_some(())
            },
        )
        .await;
    }

    // Clean up through the balancer too (deletes on the replica that didn't create).
    s.delete(&format!("/Groups/{group_id}")).await.no_content();
    let deleted: Vec<u16> = futures::stream::iter(ids.iter())
        .map(|id| {
            let s = s.clone();
            async move { s.delete(&format!("/Users/{id}")).await.status }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    assert!(deleted.iter().all(|s| *s == 204), "deletes: {deleted:?}");
}
