//! Bounded retries (issue 10, item 6): a write that keeps failing — a status, a binding —
//! backs off on its own (doubling from 1 s to 5 min, or the API server's Retry-After)
//! and never drives whole-world passes; everything else goes on as usual.
//!
//! The controller runs on a private control plane as a ServiceAccount that may do
//! everything it needs except one thing, so that the API server itself refuses exactly
//! one kind of write.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube_scim::crd::{GroupRoleMapping, ScimGroup};
use serde_json::{json, Value};

use crate::controller::{
    create_group, create_mapping, create_roles, create_user, expect_ready, new_user, subject_names,
};
use crate::fault_support::create_cluster_scoped;
use crate::harness::{
    client_for, install_crds, metric_sum, poll_until, spawn_operator, unique, Operator,
};
use crate::private_plane::PrivateControlPlane;

/// Everything the controller reads, and the status subresources of the mappings and
/// groups; the caller adds what it may write of users and bindings.
fn controller_rules(more: Value) -> Value {
    let mut rules = json!([
        {"apiGroups": ["scim.kubescim.io"],
         "resources": ["scimusers", "scimgroups", "scimgroupmembers", "grouprolemappings",
                       "clustergrouprolemappings"],
         "verbs": ["get", "list", "watch", "patch", "update"]},
        {"apiGroups": ["scim.kubescim.io"],
         "resources": ["scimgroups/status", "grouprolemappings/status",
                       "clustergrouprolemappings/status"],
         "verbs": ["get", "patch", "update"]},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["*"]}
    ]);
    if let (Some(rules), Some(more)) = (rules.as_array_mut(), more.as_array()) {
        rules.extend(more.iter().cloned());
    }
    rules
}

/// A controller-only operator on `cp` that runs as a ServiceAccount granted `rules`.
async fn restricted_operator(
    cp: &PrivateControlPlane,
    admin: &kube::Client,
    rules: Value,
) -> Operator {
    let ops = unique("backoff-ops");
    create_cluster_scoped::<Namespace>(admin, json!({"metadata": {"name": ops}})).await;
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), &ops);
    sas.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "controller"}})).expect("sa"),
    )
    .await
    .expect("service account");
    let role = unique("backoff-controller");
    create_cluster_scoped::<ClusterRole>(
        admin,
        json!({"metadata": {"name": role}, "rules": rules}),
    )
    .await;
    create_cluster_scoped::<ClusterRoleBinding>(
        admin,
        json!({"metadata": {"name": role},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": "controller", "namespace": ops}]}),
    )
    .await;
    let req = serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}}))
        .expect("token request");
    let token = sas
        .create_token_request("controller", &PostParams::default(), &req)
        .await
        .expect("TokenRequest")
        .status
        .expect("token status")
        .token;
    let kubeconfig: PathBuf = cp.run_dir.join(format!("{ops}.kubeconfig"));
    crate::harness::write_token_kubeconfig(&cp.kubeconfig, &token, &kubeconfig);
    tokio::task::spawn_blocking(move || {
        spawn_operator(&kubeconfig, &ops, "", &["--enable-scim=false"])
    })
    .await
    .expect("operator")
}

/// A metric of the operator, 0 when it has no series yet.
async fn metric(http: &reqwest::Client, op: &Operator, name: &str) -> f64 {
    metric_sum(http, &op.probe_url, name).await.unwrap_or(0.0)
}

/// The controller runs as a ServiceAccount that may do everything it needs except write
/// ScimUser statuses, so every user status write fails. Bindings must still be written
/// (statuses never hold up access), the failing statuses are retried per object with a
/// growing delay, and those retries never drive whole-world passes (before, each failure
/// planned the world again 2 s later).
#[tokio::test]
async fn a_status_write_that_keeps_failing_backs_off_alone() {
    let cp = PrivateControlPlane::start("e2e-status-backoff-control-plane");
    let admin = client_for(&cp.kubeconfig, None).await;
    install_crds(&admin).await;

    // A user in a group mapped in a team namespace.
    let team = unique("backoff-team");
    create_cluster_scoped::<Namespace>(&admin, json!({"metadata": {"name": team}})).await;
    let user = new_user("backoff");
    create_user(&admin, &user).await;
    let group = create_group(&admin, "Backoff", &[&user]).await;
    let (_, cluster_role) = create_roles(&admin, &team).await;
    create_mapping(
        &admin,
        &team,
        "backoff",
        json!({"groups": [{"displayName": group.display_name}],
               "roleRef": {"kind": "ClusterRole", "name": cluster_role}}),
    )
    .await;

    // No `scimusers/status`.
    let op = restricted_operator(
        &cp,
        &admin,
        controller_rules(json!([
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["*"], "verbs": ["*"]}
        ])),
    )
    .await;

    // Access is granted although the user's status can't be written.
    let bindings: Api<RoleBinding> = Api::namespaced(admin.clone(), &team);
    poll_until(Duration::from_secs(60), "the binding", || async {
        bindings
            .list(&Default::default())
            .await
            .ok()?
            .items
            .iter()
            .any(|b| subject_names(&b.subjects).contains(&format!("User:{}", user.user_name)))
            .then_some(())
    })
    .await;

    let http = reqwest::Client::new();
    let failures = || {
        metric(
            &http,
            &op,
            "kube_scim_reconcile_failures_total{category=\"status\"}",
        )
    };
    let passes = || metric(&http, &op, "kube_scim_reconciles_total");
    poll_until(Duration::from_secs(30), "a failed status write", || async {
        (failures().await >= 1.0).then_some(())
    })
    .await;
    let passes_at_first_failure = passes().await;
    // Retried after 1 s and 2 s more (then 4 s, 8 s, ...).
    poll_until(Duration::from_secs(60), "two retries of it", || async {
        (failures().await >= 3.0).then_some(())
    })
    .await;
    let passes_after_retries = passes().await;
    assert!(
        passes_after_retries - passes_at_first_failure <= 1.0,
        "retrying one status drove whole passes: {passes_at_first_failure} -> {passes_after_retries}"
    );
    let delayed = metric(&http, &op, "kube_scim_status_writes_delayed").await;
    assert!(
        delayed >= 1.0,
        "the failing status waits for its retry: {delayed}"
    );
    let retries = metric(
        &http,
        &op,
        "kube_scim_write_retries_total{kind=\"status\",category=\"forbidden\"}",
    )
    .await;
    assert!(retries >= 3.0, "status retries by category: {retries}");
    let log = std::fs::read_to_string(&op.log).unwrap_or_default();
    assert!(
        log.contains("status write failed") && log.contains("retry_in"),
        "the failure and its retry time are logged"
    );
}

/// The controller may bind one ClusterRole and not another (no `bind` on it, and it
/// doesn't hold its rights: the API server refuses such a RoleBinding with 403). The
/// refused binding is retried on its own backoff (1 s, 2 s, 4 s, ...) and keeps its
/// mapping's BindingRefused condition, while a second mapping's group keeps changing:
/// every change lands promptly, each pass is caused by a change or a due retry (none
/// loops), and the refused binding is tried far less often than passes run (before,
/// every pass re-sent it).
#[tokio::test]
async fn a_binding_write_that_keeps_failing_backs_off_alone() {
    const CHANGES: usize = 16;
    let started = Instant::now();
    let cp = PrivateControlPlane::start("e2e-binding-backoff-control-plane");
    let admin = client_for(&cp.kubeconfig, None).await;
    install_crds(&admin).await;

    let team = unique("backoff-team");
    create_cluster_scoped::<Namespace>(&admin, json!({"metadata": {"name": team}})).await;
    let allowed = unique("backoff-allowed");
    let refused = unique("backoff-refused");
    for (name, resource) in [(&allowed, "configmaps"), (&refused, "secrets")] {
        create_cluster_scoped::<ClusterRole>(
            &admin,
            json!({"metadata": {"name": name}, "rules": [
                {"apiGroups": [""], "resources": [resource], "verbs": ["get"]}]}),
        )
        .await;
    }
    let ann = new_user("ann");
    let bob = new_user("bob");
    let joiners: Vec<_> = (0..CHANGES).map(|_| new_user("joiner")).collect();
    for u in [&ann, &bob].into_iter().chain(&joiners) {
        create_user(&admin, u).await;
    }
    let good = create_group(&admin, "Good", &[&ann]).await;
    let bad = create_group(&admin, "Bad", &[&bob]).await;
    create_mapping(
        &admin,
        &team,
        "good",
        json!({"groups": [{"displayName": good.display_name}],
               "roleRef": {"kind": "ClusterRole", "name": allowed}}),
    )
    .await;
    create_mapping(
        &admin,
        &team,
        "bad",
        json!({"groups": [{"displayName": bad.display_name}],
               "roleRef": {"kind": "ClusterRole", "name": refused}}),
    )
    .await;

    // Bindings, but `bind` only on the allowed role; user statuses too.
    let op = restricted_operator(
        &cp,
        &admin,
        controller_rules(json!([
            {"apiGroups": ["scim.kubescim.io"], "resources": ["scimusers/status"],
             "verbs": ["get", "patch", "update"]},
            {"apiGroups": ["rbac.authorization.k8s.io"],
             "resources": ["rolebindings", "clusterrolebindings"], "verbs": ["*"]},
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "clusterroles"],
             "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"],
             "verbs": ["bind"], "resourceNames": [allowed]}
        ])),
    )
    .await;

    let bindings: Api<RoleBinding> = Api::namespaced(admin.clone(), &team);
    let holds = |user: String| {
        let bindings = bindings.clone();
        let allowed = allowed.clone();
        async move {
            bindings
                .list(&Default::default())
                .await
                .ok()?
                .items
                .iter()
                .any(|b| {
                    b.role_ref.name == allowed
                        && subject_names(&b.subjects).contains(&format!("User:{user}"))
                })
                .then_some(())
        }
    };
    poll_until(Duration::from_secs(60), "the good binding", || {
        holds(ann.user_name.clone())
    })
    .await;
    let mappings: Api<GroupRoleMapping> = Api::namespaced(admin.clone(), &team);
    expect_ready(&mappings, "bad", "False", Some("BindingRefused")).await;

    let http = reqwest::Client::new();
    let refusals = || {
        metric(
            &http,
            &op,
            "kube_scim_write_retries_total{kind=\"binding\",category=\"forbidden\"}",
        )
    };
    let passes = || metric(&http, &op, "kube_scim_reconciles_total");
    poll_until(
        Duration::from_secs(30),
        "a refused binding write",
        || async { (refusals().await >= 1.0).then_some(()) },
    )
    .await;

    // The window: the good group gains a member every ~second.
    let (passes_before, refusals_before) = (passes().await, refusals().await);
    let window = Instant::now();
    let groups: Api<ScimGroup> = Api::all(admin.clone());
    let mut members = vec![json!({"value": ann.id})];
    let mut slowest = Duration::ZERO;
    for joiner in &joiners {
        let changed = Instant::now();
        members.push(json!({"value": joiner.id}));
        groups
            .patch(
                &good.id,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"members": members}})),
            )
            .await
            .expect("add a member");
        poll_until(Duration::from_secs(10), "the joiner's access", || {
            holds(joiner.user_name.clone())
        })
        .await;
        slowest = slowest.max(changed.elapsed());
        // Paced so that the window spans several of the refused binding's retries.
        tokio::time::sleep(Duration::from_millis(900).saturating_sub(changed.elapsed())).await;
    }
    let window = window.elapsed();
    let (passes_after, refusals_after) = (passes().await, refusals().await);
    let passes_in = passes_after - passes_before;
    let refusals_in = refusals_after - refusals_before;
    let delayed = metric(&http, &op, "kube_scim_binding_writes_delayed").await;
    let failures_apply = metric(
        &http,
        &op,
        "kube_scim_reconcile_failures_total{category=\"apply\"}",
    )
    .await;
    println!(
        "binding backoff: {CHANGES} member changes in {window:?} (slowest to land {slowest:?}), \
         {passes_in} passes, the refused binding tried {refusals_in} times in the window \
         ({refusals_after} in all, apply failures {failures_apply}), {delayed} binding \
         waiting; {:?} in all",
        started.elapsed()
    );

    // Every change landed promptly (asserted above, within 10 s each).
    assert!(
        slowest < Duration::from_secs(5),
        "slowest change took {slowest:?}"
    );
    // Retried on its own schedule: a few times over the window, and at least twice.
    let most = (window.as_secs_f64()).log2().ceil() + 2.0;
    assert!(
        refusals_in >= 2.0 && refusals_in <= most,
        "the refused binding was tried {refusals_in} times in {window:?} (backoff allows {most})"
    );
    assert!(
        refusals_in * 2.0 < passes_in,
        "the refused binding was re-sent with the passes: {refusals_in} tries, {passes_in} passes"
    );
    // No loop: every pass is a change, the echo of the binding write it made, or a due
    // retry.
    assert!(
        passes_in <= 2.0 * (CHANGES as f64) + refusals_in + 5.0,
        "{passes_in} passes for {CHANGES} changes and {refusals_in} retries"
    );
    assert_eq!(delayed, 1.0, "the refused binding waits for its retry");
    // While it waits, its mapping still says why.
    expect_ready(&mappings, "bad", "False", Some("BindingRefused")).await;
}
