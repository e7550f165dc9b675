//! Fault injection on a real control plane: the API server stops answering while the
//! operator serves SCIM. Writes must get 503 + Retry-After (never a success that wasn't
//! stored, never a 500), reads keep being served from the cache, and once the API server
//! is back the same request succeeds and is stored exactly once.
//!
//! Runs on a private control plane (`scripts/control-plane` with its own run dir), so that
//! freezing its API server disturbs no other test.
use std::time::{Duration, Instant};

use kube::api::Api;
use kube_scim::crd::ScimUser;
use serde_json::{json, Value};

use crate::fault_support::{leader_gauge, managed_role_bindings, signal, ContOnDrop, SHORT_LEASE};
use crate::harness::{
    client_for, install_crds, metric_sum, spawn_operator, start_operator_on, unique, Operator,
};
use crate::private_plane::PrivateControlPlane;

async fn send(
    http: &reqwest::Client,
    op: &Operator,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = http
        .request(method, format!("{}{path}", op.base_url))
        .bearer_auth(&op.token);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/scim+json")
            .body(b.to_string());
    }
    let resp = req.send().await.expect("HTTP request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn frozen_api_server_gives_503_with_retry_after_and_loses_nothing() {
    let cp = PrivateControlPlane::start("e2e-fault-control-plane");
    let client = client_for(&cp.kubeconfig, None).await;
    install_crds(&client).await;
    let kubeconfig = cp.kubeconfig.clone();
    let op = tokio::task::spawn_blocking(move || {
        start_operator_on(&kubeconfig, &["--enable-controller=false"])
    })
    .await
    .expect("operator");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http");

    let user_name = format!("{}@example.com", unique("fault"));
    let (status, _, created) = send(
        &http,
        &op,
        reqwest::Method::POST,
        "/Users",
        Some(json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": user_name, "active": true})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id").to_string();

    // Freeze the API server: connections are accepted but nothing answers (overload).
    cp.apiserver_signal("-STOP");
    let deactivate = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "replace", "path": "active", "value": false}]});
    let started = Instant::now();
    let (status, headers, body) = send(
        &http,
        &op,
        reqwest::Method::PATCH,
        &format!("/Users/{id}"),
        Some(deactivate.clone()),
    )
    .await;
    assert_eq!(
        status, 503,
        "a write the API server can't take is a 503: {body}"
    );
    assert!(
        headers.get("retry-after").is_some(),
        "503 carries Retry-After"
    );
    assert_eq!(body["status"], "503");
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/scim+json")
    );
    println!("503 after {:?}", started.elapsed());

    let (status, _, body) = send(
        &http,
        &op,
        reqwest::Method::POST,
        "/Users",
        Some(json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": format!("2-{user_name}")})),
    )
    .await;
    assert_eq!(status, 503, "{body}");

    // Reads are served from the cache while the API server is away.
    let (status, _, body) = send(
        &http,
        &op,
        reqwest::Method::GET,
        &format!("/Users/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = send(
        &http,
        &op,
        reqwest::Method::GET,
        &format!("/Users?filter=userName%20eq%20%22{user_name}%22"),
        None,
    )
    .await;
    assert_eq!(
        (status, body["totalResults"].as_u64()),
        (200, Some(1)),
        "{body}"
    );

    // Back: the client's retry succeeds, and the change is stored.
    cp.apiserver_signal("-CONT");
    let deadline = Instant::now() + Duration::from_secs(60);
    let body = loop {
        let (status, _, body) = send(
            &http,
            &op,
            reqwest::Method::PATCH,
            &format!("/Users/{id}"),
            Some(deactivate.clone()),
        )
        .await;
        if status == 200 {
            break body;
        }
        assert!(
            status == 503 && Instant::now() < deadline,
            "retry after recovery: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(body["active"], false);
    let stored = Api::<ScimUser>::all(client.clone())
        .get(&id)
        .await
        .expect("stored user");
    assert_eq!(stored.spec.active, Some(false));
    // The second create never happened, or happened once: never twice.
    let users = Api::<ScimUser>::all(client)
        .list(&Default::default())
        .await
        .expect("list");
    let seconds = users
        .items
        .iter()
        .filter(|u| u.spec.user_name == format!("2-{user_name}"))
        .count();
    assert!(seconds <= 1, "a create must not be duplicated");
    drop(op);
}

#[tokio::test]
async fn killed_leader_is_replaced_and_the_standby_reconciles() {
    use k8s_openapi::api::core::v1::Namespace;
    use k8s_openapi::api::rbac::v1::RoleBinding;
    use kube::api::{ListParams, PostParams};

    let cp = PrivateControlPlane::start("e2e-failover-control-plane");
    let client = client_for(&cp.kubeconfig, None).await;
    install_crds(&client).await;
    // Two replicas: the second shares the first one's namespace, so the same Lease.
    let kubeconfig = cp.kubeconfig.clone();
    let first = tokio::task::spawn_blocking(move || start_operator_on(&kubeconfig, &[]))
        .await
        .expect("first");
    let kubeconfig = cp.kubeconfig.clone();
    let (ns, token) = (first.namespace.clone(), first.token.clone());
    let second = tokio::task::spawn_blocking(move || spawn_operator(&kubeconfig, &ns, &token, &[]))
        .await
        .expect("second");
    let http = reqwest::Client::new();
    let ops = [&first, &second];

    // Exactly one leads.
    let deadline = Instant::now() + Duration::from_secs(60);
    let leader = loop {
        let a = leader_gauge(&http, &first.probe_url).await;
        let b = leader_gauge(&http, &second.probe_url).await;
        match (a, b) {
            (Some(1), Some(0)) => break 0,
            (Some(0), Some(1)) => break 1,
            (Some(1), Some(1)) => panic!("two leaders at once"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "no single leader: {a:?} {b:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let standby = ops[1 - leader];
    let lists_before = metric_sum(
        &http,
        &standby.probe_url,
        "kube_scim_controller_watch_lists_total",
    )
    .await
    .expect("standby metrics");

    // The leader dies without releasing its Lease.
    signal(ops[leader].pid(), "-KILL");
    let killed = Instant::now();

    // A mapping created after the crash is reconciled by the standby once the Lease expires.
    let team = unique("failover-team");
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": team}})).expect("ns");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("namespace");
    let user_name = format!("{}@example.com", unique("failover"));
    let user: ScimUser = serde_json::from_value(json!({
        "metadata": {"name": unique("failover-user")},
        "spec": {"userName": user_name, "active": true}
    }))
    .expect("user");
    let user = Api::<ScimUser>::all(client.clone())
        .create(&PostParams::default(), &user)
        .await
        .expect("user");
    let group_name = unique("Failover Group");
    let group: kube_scim::crd::ScimGroup = serde_json::from_value(json!({
        "metadata": {"name": unique("failover-group")},
        "spec": {"displayName": group_name, "members": [{"value": user.metadata.name}]}
    }))
    .expect("group");
    Api::<kube_scim::crd::ScimGroup>::all(client.clone())
        .create(&PostParams::default(), &group)
        .await
        .expect("group");
    let mapping: kube_scim::crd::GroupRoleMapping = serde_json::from_value(json!({
        "metadata": {"name": "team-view", "namespace": team},
        "spec": {"groups": [{"displayName": group_name}], "roleRef": {"kind": "ClusterRole", "name": "view"}}
    }))
    .expect("mapping");
    Api::<kube_scim::crd::GroupRoleMapping>::namespaced(client.clone(), &team)
        .create(&PostParams::default(), &mapping)
        .await
        .expect("mapping");
    let started = Instant::now();
    let rbs: Api<RoleBinding> = Api::namespaced(client.clone(), &team);
    crate::harness::poll_until(
        Duration::from_secs(90),
        "the standby to bind the new mapping",
        || async {
            let list = rbs.list(&ListParams::default()).await.ok()?;
            list.items
                .iter()
                .any(|rb| rb.subjects.iter().flatten().any(|s| s.name == user_name))
                .then_some(())
        },
    )
    .await;
    // Failover time (issue 10.2): SIGKILL of the leader to the first correct write of
    // the new leader, with the default lease (15 s, renew deadline 10 s, retry 2 s).
    println!(
        "failover: the new leader's first correct write {:?} after SIGKILL of the leader ({:?} after the mapping was created)",
        killed.elapsed(),
        started.elapsed()
    );
    assert_eq!(
        metric_sum(
            &http,
            &standby.probe_url,
            "kube_scim_controller_watch_lists_total"
        )
        .await,
        Some(lists_before),
        "taking over re-listed nothing (warm standby)"
    );
    assert_eq!(
        leader_gauge(&http, &standby.probe_url).await,
        Some(1),
        "the standby now leads"
    );
}

/// Fenced leadership (issue 10, item 1). The leader is frozen (SIGSTOP) past its lease;
/// the standby takes over and the plan changes (a member leaves, a mapping is deleted:
/// the new leader rewrites one binding and prunes another); then the old leader resumes
/// (SIGCONT) with everything it had in flight and stale caches. It must write nothing.
///
/// The two replicas are deliberately configured with different user prefixes, so each
/// one's plan rewrites every binding the other wrote: an old leader that wrote anything
/// at all after resuming would show up as a changed resourceVersion.
#[tokio::test]
async fn paused_leader_writes_nothing_after_the_standby_took_over() {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Namespace;
    use k8s_openapi::api::rbac::v1::RoleBinding;
    use kube::api::{DeleteParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
    use kube_scim::crd::{GroupRoleMapping, ScimGroup, MANAGED_BY_LABEL, MANAGED_BY_VALUE};

    let cp = PrivateControlPlane::start("e2e-fence-control-plane");
    let client = client_for(&cp.kubeconfig, None).await;
    install_crds(&client).await;
    const PREFIXES: [&str; 2] = ["fence-a:", "fence-b:"];
    let prefixes = PREFIXES;
    let args = |i: usize| -> Vec<String> {
        let mut a: Vec<String> = SHORT_LEASE.iter().map(|s| s.to_string()).collect();
        a.extend(
            [
                "--enable-scim=false",
                "--identity",
                ["replica-a", "replica-b"][i],
                "--user-prefix",
                PREFIXES[i],
            ]
            .map(String::from),
        );
        a
    };
    let kubeconfig = cp.kubeconfig.clone();
    let first = tokio::task::spawn_blocking(move || {
        let a = args(0);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        start_operator_on(&kubeconfig, &a)
    })
    .await
    .expect("first replica");
    let http = reqwest::Client::new();
    crate::harness::poll_until(
        Duration::from_secs(30),
        "the first replica to lead",
        || async { (leader_gauge(&http, &first.probe_url).await == Some(1)).then_some(()) },
    )
    .await;

    // A team namespace, two users in a group, two mappings of the group there.
    let team = unique("fence-team");
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": team}})).expect("ns");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("namespace");
    let mut user_names = Vec::new();
    let mut user_ids = Vec::new();
    for i in 0..2 {
        let user_name = format!("{}@example.com", unique(&format!("fence{i}")));
        let user: ScimUser = serde_json::from_value(json!({
            "metadata": {"name": unique("fence-user")},
            "spec": {"userName": user_name, "active": true}
        }))
        .expect("user");
        let user = Api::<ScimUser>::all(client.clone())
            .create(&PostParams::default(), &user)
            .await
            .expect("user");
        user_ids.push(user.metadata.name.clone().expect("name"));
        user_names.push(user_name);
    }
    let group_name = unique("Fence Group");
    let group_id = unique("fence-group");
    let groups = Api::<ScimGroup>::all(client.clone());
    let group: ScimGroup = serde_json::from_value(json!({
        "metadata": {"name": group_id},
        "spec": {"displayName": group_name,
                 "members": [{"value": user_ids[0]}, {"value": user_ids[1]}]}
    }))
    .expect("group");
    groups
        .create(&PostParams::default(), &group)
        .await
        .expect("group");
    let mappings = Api::<GroupRoleMapping>::namespaced(client.clone(), &team);
    for role in ["view", "edit"] {
        let mapping: GroupRoleMapping = serde_json::from_value(json!({
            "metadata": {"name": format!("team-{role}"), "namespace": team},
            "spec": {"groups": [{"displayName": group_name}],
                     "roleRef": {"kind": "ClusterRole", "name": role}}
        }))
        .expect("mapping");
        mappings
            .create(&PostParams::default(), &mapping)
            .await
            .expect("mapping");
    }
    let rbs: Api<RoleBinding> = Api::namespaced(client.clone(), &team);
    let subjects_with = |prefix: &str, users: &[String]| -> Vec<String> {
        let mut s: Vec<String> = users.iter().map(|u| format!("{prefix}{u}")).collect();
        s.sort();
        s
    };
    let roles_hold = |bindings: &std::collections::BTreeMap<String, (Vec<String>, String)>,
                      want: &[(&str, Vec<String>)]| {
        bindings.len() == want.len()
            && want.iter().all(|(role, subjects)| {
                bindings
                    .iter()
                    .any(|(k, (s, _))| k.starts_with(&format!("{role}:")) && s == subjects)
            })
    };
    let all_a = subjects_with(prefixes[0], &user_names);
    crate::harness::poll_until(
        Duration::from_secs(60),
        "the first replica to bind both mappings",
        || async {
            let (bindings, _) = managed_role_bindings(&rbs).await;
            roles_hold(
                &bindings,
                &[("view", all_a.clone()), ("edit", all_a.clone())],
            )
            .then_some(())
        },
    )
    .await;

    // The second replica stands by with warm caches.
    let kubeconfig = cp.kubeconfig.clone();
    let (ns_name, token) = (first.namespace.clone(), first.token.clone());
    let second = tokio::task::spawn_blocking(move || {
        let a = args(1);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        spawn_operator(&kubeconfig, &ns_name, &token, &a)
    })
    .await
    .expect("second replica");
    assert_eq!(leader_gauge(&http, &second.probe_url).await, Some(0));
    let lists_before = metric_sum(
        &http,
        &second.probe_url,
        "kube_scim_controller_watch_lists_total",
    )
    .await
    .expect("standby metrics");
    assert!(
        lists_before >= 10.0,
        "the standby lists every watch: {lists_before}"
    );

    // Freeze the leader. It keeps its connections, its caches and whatever it had in
    // flight; it just doesn't run.
    let old_pid = first.pid();
    signal(old_pid, "-STOP");
    let _resume = ContOnDrop(old_pid);
    let stopped = Instant::now();

    // The plan changes while it is frozen: a member leaves, a mapping is deleted.
    groups
        .patch(
            &group_id,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"members": [{"value": user_ids[0]}]}})),
        )
        .await
        .expect("remove a member");
    mappings
        .delete("team-edit", &DeleteParams::default())
        .await
        .expect("delete a mapping");

    // The standby takes over: the remaining binding rewritten with its prefix and the
    // one member, the deleted mapping's binding pruned and its finalizer released.
    let only_b = subjects_with(prefixes[1], &user_names[..1]);
    crate::harness::poll_until(
        Duration::from_secs(60),
        "the standby to take over and apply the new plan",
        || async {
            let (bindings, _) = managed_role_bindings(&rbs).await;
            let mapping_gone = mappings.get_opt("team-edit").await.ok()?.is_none();
            (mapping_gone && roles_hold(&bindings, &[("view", only_b.clone())])).then_some(())
        },
    )
    .await;
    println!(
        "failover (leader frozen, {} lease): standby's correct writes done {:?} after SIGSTOP",
        SHORT_LEASE[1],
        stopped.elapsed()
    );
    assert_eq!(leader_gauge(&http, &second.probe_url).await, Some(1));
    let lists_after = metric_sum(
        &http,
        &second.probe_url,
        "kube_scim_controller_watch_lists_total",
    )
    .await
    .expect("new leader metrics");
    assert_eq!(
        lists_before, lists_after,
        "taking over re-listed nothing (warm standby)"
    );

    // What the new leader wrote, and a watch from exactly there.
    let (settled, list_rv) = managed_role_bindings(&rbs).await;
    let managed = format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}");
    let mut watch = rbs
        .watch(&WatchParams::default().labels(&managed), &list_rv)
        .await
        .expect("watch RoleBindings")
        .boxed();

    // Resume the old leader. It must find its term over before it sends anything.
    signal(old_pid, "-CONT");
    let resumed = Instant::now();
    crate::harness::poll_until(
        Duration::from_secs(30),
        "the old leader to step down",
        || async {
            let log = std::fs::read_to_string(&first.log).ok()?;
            let said = log.contains("leadership term ended")
                && log.contains("not renewed within the renew deadline");
            (said && leader_gauge(&http, &first.probe_url).await == Some(0)).then_some(())
        },
    )
    .await;
    assert_eq!(
        metric_sum(
            &http,
            &first.probe_url,
            "kube_scim_leader_terms_ended_total{reason=\"renewal_timeout\"}"
        )
        .await,
        Some(1.0)
    );

    // Observation window, bounded on purpose: an old leader that still wrote would do
    // so within milliseconds of resuming (its watches deliver the new state at once and
    // a pass follows 5 ms later); 3 lease durations also cover a resync retry and a
    // renewal round of its own. Any event on a managed binding in this window is a write
    // (the new leader has nothing left to change).
    let window_end = resumed + Duration::from_secs(12);
    let mut seen = Vec::new();
    while let Ok(event) =
        tokio::time::timeout_at(tokio::time::Instant::from_std(window_end), watch.next()).await
    {
        match event {
            Some(Ok(WatchEvent::Bookmark(_))) => {}
            Some(Ok(
                WatchEvent::Added(rb) | WatchEvent::Modified(rb) | WatchEvent::Deleted(rb),
            )) => {
                seen.push(format!(
                    "{} rv {:?} subjects {:?}",
                    rb.metadata.name.unwrap_or_default(),
                    rb.metadata.resource_version,
                    rb.subjects
                ));
            }
            Some(Ok(WatchEvent::Error(e))) => panic!("watch error: {e:?}"),
            Some(Err(e)) => panic!("watch failed: {e}"),
            None => panic!("watch ended early"),
        }
    }
    assert!(
        seen.is_empty(),
        "managed bindings were written after the old leader resumed: {seen:#?}"
    );
    let (after, _) = managed_role_bindings(&rbs).await;
    assert_eq!(
        settled, after,
        "bindings (subjects, resourceVersions) unchanged"
    );
    assert_eq!(leader_gauge(&http, &second.probe_url).await, Some(1));
    assert_eq!(leader_gauge(&http, &first.probe_url).await, Some(0));
    let lease = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(
        client.clone(),
        &first.namespace,
    )
    .get("kube-scim-controller")
    .await
    .expect("lease");
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("replica-b")
    );
}

/// Issue 10, item 4: a member PATCH that touches many shards, with the API server
/// stopping part-way (a proxy between the operator and the API server lets N shard writes
/// through, then drops every request; in some rounds the next write still reaches the API
/// server and only its answer is lost). The client is told 503 with Retry-After; its
/// retry of the same request, once the API server is back, ends in exactly the state a
/// clean run of that request makes on a twin group: the same members, the same version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_patch_failing_part_way_is_finished_exactly_by_its_retry() {
    use crate::harness::stored_shards;
    use crate::harness::{
        admin_client, ensure_crds, hold_scim_view, kubeconfig_path, member_ids, operator_namespace,
        scim_client_at, stored_group, stored_member_ids, GROUP_SCHEMA, USER_SCHEMA,
    };
    use crate::proxy::{ApiCounts, ApiProxy};
    use kube_scim::store::ResourceMeta;
    use std::collections::BTreeMap;

    let client = admin_client().await;
    ensure_crds(&client).await;
    let _view = hold_scim_view().await;
    let proxy = ApiProxy::start(client.clone()).await;
    let kubeconfig = proxy.kubeconfig.clone();
    let op = tokio::task::spawn_blocking(move || {
        let (ns, token) = operator_namespace(kubeconfig_path());
        // Shards of 512 bytes (about eight members): the change spreads over several.
        let args = [
            "--enable-controller=false",
            "--member-shard-fill-bytes",
            "512",
        ];
        spawn_operator(&kubeconfig, &ns, &token, &args)
    })
    .await
    .expect("operator behind the proxy");
    let s = scim_client_at(&op.base_url, &op.token);

    // 48 users: the group starts with the first 24; the change adds the other 24 and
    // removes 8 of the first (Entra's shapes: one Add with a value list, one Remove).
    let run = unique("halfway");
    let mut users = Vec::new();
    for i in 0..48 {
        let r = s
            .post(
                "/Users",
                &json!({"schemas": [USER_SCHEMA], "userName": format!("{run}-{i}@example.com")}),
            )
            .await;
        r.created();
        users.push(r.id());
    }
    let values =
        |ids: &[String]| -> Vec<Value> { ids.iter().map(|i| json!({"value": i})).collect() };
    let start = json!([{"op": "Add", "path": "members", "value": values(&users[..24])}]);
    let change = json!([
        {"op": "Add", "path": "members", "value": values(&users[24..])},
        {"op": "Remove", "path": "members", "value": values(&users[..8])}
    ]);
    // How many shard writes the change makes, from a probe group (placement is the same
    // for groups in the same state).
    let shard_versions = |gid: String| async move {
        stored_shards(&gid)
            .await
            .into_iter()
            .map(|s| (s.metadata.name, s.metadata.resource_version))
            .collect::<BTreeMap<_, _>>()
    };
    let r = s
        .post(
            "/Groups",
            &json!({"schemas": [GROUP_SCHEMA], "displayName": format!("{run} probe")}),
        )
        .await;
    r.created();
    let probe = r.id();
    s.patch_ops(&format!("/Groups/{probe}"), start.clone())
        .await
        .expect(204);
    let started = shard_versions(probe.clone()).await;
    s.patch_ops(&format!("/Groups/{probe}"), change.clone())
        .await
        .expect(204);
    let changed = shard_versions(probe.clone()).await;
    let all = changed
        .iter()
        .filter(|(name, version)| started.get(*name) != Some(*version))
        .count();
    assert!(all >= 4, "the change writes several shards: {all}");
    let mut groups = vec![probe];

    let version = |g: &kube_scim::crd::ScimGroup| ResourceMeta::of(&g.metadata).version;
    let (mut requests, mut faults) = (4usize, 0usize);
    for (round, (pass, unanswered)) in [(1, false), (all / 2, true), (all, false), (all, true)]
        .into_iter()
        .enumerate()
    {
        // Twin groups in the same starting state.
        let mut twins = Vec::new();
        for twin in ["clean", "faulted"] {
            let r = s
                .post(
                    "/Groups",
                    &json!({"schemas": [GROUP_SCHEMA], "displayName": format!("{run} {round} {twin}")}),
                )
                .await;
            r.created();
            let gid = r.id();
            s.patch_ops(&format!("/Groups/{gid}"), start.clone())
                .await
                .expect(204);
            twins.push(gid.clone());
            groups.push(gid);
            requests += 2;
        }
        let (clean, faulted) = (&twins[0], &twins[1]);
        let before = stored_member_ids(faulted).await;
        let before_version = version(&stored_group(faulted).await.expect("group"));

        s.patch_ops(&format!("/Groups/{clean}"), change.clone())
            .await
            .expect(204);
        let want = stored_member_ids(clean).await;
        let want_version = version(&stored_group(clean).await.expect("group"));
        assert_eq!(want_version, before_version + 1);

        let refused = proxy.count(|c: &ApiCounts| &c.refused);
        let unanswered_before = proxy.count(|c: &ApiCounts| &c.unanswered);
        proxy.arm(pass, unanswered);
        let r = s
            .patch_ops(&format!("/Groups/{faulted}"), change.clone())
            .await;
        requests += 2;
        r.error(503, None);
        assert!(r.header("retry-after").is_some(), "503 carries Retry-After");
        assert!(
            proxy.is_down(),
            "round {round}: the fault struck during the request"
        );

        // What the failed request left (read straight from the API server).
        let half = stored_member_ids(faulted).await;
        let half_version = version(&stored_group(faulted).await.expect("group"));
        if pass < all {
            assert!(
                half != before && half != want,
                "round {round}: part of the change is stored, not all of it"
            );
            assert_eq!(half_version, before_version);
        } else {
            assert_eq!(half, want, "round {round}: every shard was written");
        }
        proxy.heal();
        let round_faults = proxy.count(|c: &ApiCounts| &c.refused) - refused
            + proxy.count(|c: &ApiCounts| &c.unanswered)
            - unanswered_before;
        faults += round_faults;

        // The client's retry, once the API server answers again.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = s
                .patch_ops(&format!("/Groups/{faulted}"), change.clone())
                .await;
            requests += 1;
            if r.status == 204 {
                break;
            }
            assert!(
                r.status == 503 && Instant::now() < deadline,
                "retry: {} {}",
                r.status,
                r.text
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(
            stored_member_ids(faulted).await,
            want,
            "round {round}: members"
        );
        let got = stored_group(faulted).await.expect("group");
        assert_eq!(
            version(&got),
            want_version,
            "round {round}: one version bump"
        );
        // And as SCIM serves them.
        let a = s.get(&format!("/Groups/{clean}")).await;
        let b = s.get(&format!("/Groups/{faulted}")).await;
        assert_eq!(member_ids(&a.body), member_ids(&b.body));
        assert_eq!(a.body["meta"]["version"], b.body["meta"]["version"]);
        println!(
            "round {round}: {pass} of {all} shard writes passed, then the API server stopped \
             ({}); {round_faults} requests failed; the half-way state differed from the \
             clean one in {} of {} member ids; the retry finished it at version {want_version}",
            if unanswered {
                "the next write stored but unanswered"
            } else {
                "nothing more stored"
            },
            half.symmetric_difference(&want).count(),
            want.union(&before).count()
        );
    }
    println!(
        "member PATCH fault rounds: 4, SCIM requests {requests}, API requests failed by the proxy {faults} \
         (refused {}, stored but unanswered {}), shard writes forwarded {}",
        proxy.count(|c: &ApiCounts| &c.refused),
        proxy.count(|c: &ApiCounts| &c.unanswered),
        proxy.count(|c: &ApiCounts| &c.shard_writes),
    );
    for id in &groups {
        s.delete(&format!("/Groups/{id}")).await.no_content();
    }
    for id in &users {
        s.delete(&format!("/Users/{id}")).await.no_content();
    }
}
