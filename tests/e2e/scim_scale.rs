//! A 50,000-member group round-trips over HTTP: created, its 50,000 users (made through
//! the API server: members must be users) added in batches of 1,000 (as Entra sends them,
//! several requests in flight), some removed, read with and without members; every
//! ScimGroupMembers shard stays well under etcd's 1.5 MiB.
//!
//! It talks to a SCIM replica of its own (next to the shared operator, same namespace)
//! with `--request-deadline-seconds 55`: a group's member PATCHes queue behind each other
//! on a replica, and with 4 of 1,000 in flight on a 50,000-member group the last one
//! waited up to 23 s on the 2-core test machine, against the default 25 s deadline. A
//! real client retries the 503 it would get; this test measures the PATCHes themselves.
use std::collections::BTreeSet;
use std::time::Instant;

use futures::StreamExt;
use serde_json::{json, Value};

use crate::harness::{
    bulk_users, hold_scim_view, kubeconfig_path, member_ids, operator, scim_client_at,
    spawn_operator, stored_member_ids, stored_shards, unique, GROUP_SCHEMA,
};

const MEMBERS: usize = 50_000;
const BATCH: usize = 1_000;
/// Requests in flight at once (Entra sends in parallel).
const PARALLEL: usize = 4;
const ETCD_OBJECT_LIMIT: usize = 1_572_864;

#[tokio::test]
async fn fifty_thousand_member_group_round_trips() {
    let op = operator().await;
    let _view = hold_scim_view().await;
    let (ns, token) = (op.namespace.clone(), op.token.clone());
    let replica = tokio::task::spawn_blocking(move || {
        spawn_operator(
            kubeconfig_path(),
            &ns,
            &token,
            &[
                "--enable-controller=false",
                "--request-deadline-seconds",
                "55",
            ],
        )
    })
    .await
    .expect("SCIM replica");
    let s = scim_client_at(&replica.base_url, &op.token);
    let total = Instant::now();

    let t = Instant::now();
    let display = unique("All Employees");
    let r = s
        .post(
            "/Groups",
            &json!({"schemas": [GROUP_SCHEMA], "displayName": display,
                    "externalId": uuid::Uuid::new_v4().to_string()}),
        )
        .await;
    r.created();
    let gid = r.id();
    let path = format!("/Groups/{gid}");
    let create_time = t.elapsed();

    // Members must be users: 50,000 of them, made straight through the API server.
    let t = Instant::now();
    let batch = unique("scale");
    let users = bulk_users(&s, &batch, MEMBERS).await;
    let ids = users.ids.clone();
    let users_time = t.elapsed();
    let t = Instant::now();
    let mut latencies: Vec<std::time::Duration> = futures::stream::iter(ids.chunks(BATCH))
        .map(|chunk| {
            let s = s.clone();
            let path = path.clone();
            let value: Vec<Value> = chunk
                .iter()
                .map(|id| json!({"$ref": null, "value": id}))
                .collect();
            async move {
                let t = Instant::now();
                let r = s
                    .patch_ops(
                        &path,
                        json!([{"op": "Add", "path": "members", "value": value}]),
                    )
                    .await;
                r.no_content();
                t.elapsed()
            }
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    assert_eq!(latencies.len(), MEMBERS / BATCH);
    let add_time = t.elapsed();
    latencies.sort();
    let (p50, max) = (
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
    );

    // Remove 1,500 (every 33rd id and a few more) in two requests, both Entra shapes.
    let removed: Vec<String> = ids.iter().step_by(33).take(1_500).cloned().collect();
    let t = Instant::now();
    let (first, second) = removed.split_at(1_000);
    s.patch_ops(
        &path,
        json!([{"op": "Remove", "path": "members",
                "value": first.iter().map(|id| json!({"value": id})).collect::<Vec<_>>()}]),
    )
    .await
    .no_content();
    let filter = second
        .iter()
        .map(|id| format!("value eq \"{id}\""))
        .collect::<Vec<_>>()
        .join(" or ");
    s.patch_ops(
        &path,
        json!([{"op": "remove", "path": format!("members[{filter}]")}]),
    )
    .await
    .no_content();
    let remove_time = t.elapsed();

    let removed_set: BTreeSet<String> = removed.iter().cloned().collect();
    let want: BTreeSet<String> = ids
        .iter()
        .filter(|id| !removed_set.contains(*id))
        .cloned()
        .collect();
    assert_eq!(want.len(), MEMBERS - 1_500);

    // Read with members: exact count and content.
    let t = Instant::now();
    let got = s.get(&path).await;
    let get_time = t.elapsed();
    got.ok();
    let members = member_ids(&got.body);
    assert_eq!(members.len(), want.len());
    assert!(members == want, "GET returns exactly the remaining members");
    assert_eq!(got.body["displayName"], display);

    // Without members: no members key, and fast.
    let t = Instant::now();
    let lean = s.get(&format!("{path}?excludedAttributes=members")).await;
    let lean_time = t.elapsed();
    lean.ok();
    assert!(lean.body.get("members").is_none());
    assert!(lean.text.len() < 2_000, "{}", lean.text.len());
    let t = Instant::now();
    let found = s
        .filter(
            "/Groups",
            &format!("displayName eq \"{display}\""),
            "excludedAttributes=members",
        )
        .await;
    let lookup_time = t.elapsed();
    assert_eq!(found.list(1)[0]["id"], gid.as_str());
    assert!(found.text.len() < 2_000);
    // Membership lookup of a single member (Entra doesn't; others do).
    let found = s
        .filter(
            "/Groups",
            &format!("members[value eq \"{}\"]", ids[1]),
            "excludedAttributes=members",
        )
        .await;
    assert_eq!(found.list(1)[0]["id"], gid.as_str());

    // The shards: the same members, each object well under etcd's limit.
    let shards = stored_shards(&gid).await;
    assert!(shards.len() > 1, "membership is sharded");
    let mut biggest = 0;
    for sh in &shards {
        let size = serde_json::to_vec(sh).unwrap().len();
        biggest = biggest.max(size);
        assert!(
            size < ETCD_OBJECT_LIMIT,
            "shard {:?} is {size} bytes",
            sh.metadata.name
        );
    }
    assert!(
        stored_member_ids(&gid).await == want,
        "shards hold exactly the members"
    );

    let t = Instant::now();
    s.delete(&path).await.no_content();
    let delete_time = t.elapsed();
    s.get(&path).await.error(404, None);
    let t = Instant::now();
    users.delete().await;
    let users_delete_time = t.elapsed();

    println!(
        "50k group: {MEMBERS} users made in {users_time:?} (deleted in {users_delete_time:?}); create {create_time:?}, add {MEMBERS} in {} PATCHes of {BATCH} ({PARALLEL} in flight) {add_time:?} (per PATCH p50 {p50:?}, max {max:?}), \
         remove 1500 in 2 PATCHes {remove_time:?}, GET with members {get_time:?} ({} bytes), \
         GET excludedAttributes=members {lean_time:?}, filter lookup {lookup_time:?}, delete {delete_time:?}; \
         {} shards, biggest {biggest} bytes; total {:?}",
        MEMBERS / BATCH,
        got.text.len(),
        shards.len(),
        total.elapsed()
    );
}
