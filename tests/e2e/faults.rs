//! Fault injection on a real control plane: the API server stops answering while the
//! operator serves SCIM. Writes must get 503 + Retry-After (never a success that wasn't
//! stored, never a 500), reads keep being served from the cache, and once the API server
//! is back the same request succeeds and is stored exactly once.
//!
//! Runs on a private control plane (`scripts/control-plane` with its own run dir), so that
//! freezing its API server disturbs no other test.
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use kube::api::Api;
use kube_scim::crd::ScimUser;
use serde_json::{json, Value};

use crate::harness::{
    client_for, install_crds, spawn_operator, start_operator_on, unique, Operator,
};

struct PrivateControlPlane {
    run_dir: PathBuf,
    kubeconfig: PathBuf,
}

impl PrivateControlPlane {
    fn start(name: &str) -> PrivateControlPlane {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let run_dir = root.join("target").join(name);
        let out = Command::new(root.join("scripts/control-plane"))
            .arg("up")
            .env("KUBE_SCIM_RUN_DIR", &run_dir)
            .output()
            .expect("run scripts/control-plane up");
        assert!(
            out.status.success(),
            "private control plane: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let kubeconfig = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        PrivateControlPlane {
            run_dir,
            kubeconfig,
        }
    }

    fn apiserver_signal(&self, signal: &str) {
        let pid = std::fs::read_to_string(self.run_dir.join("kube-apiserver.pid"))
            .expect("apiserver pid");
        let status = Command::new("kill")
            .args([signal, pid.trim()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} {pid}");
    }
}

impl Drop for PrivateControlPlane {
    fn drop(&mut self) {
        // Never leave a frozen API server behind.
        let _ = std::fs::read_to_string(self.run_dir.join("kube-apiserver.pid"))
            .map(|pid| Command::new("kill").args(["-CONT", pid.trim()]).status());
        let _ =
            Command::new(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/control-plane"))
                .arg("down")
                .env("KUBE_SCIM_RUN_DIR", &self.run_dir)
                .output();
    }
}

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

/// `kube_scim_leader` of an operator's /metrics (1 leads, 0 stands by), None if unreachable.
async fn leader_gauge(http: &reqwest::Client, probe_url: &str) -> Option<u8> {
    let text = http
        .get(format!("{probe_url}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("kube_scim_leader "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u8)
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

    // The leader dies without releasing its Lease.
    let status = Command::new("kill")
        .args(["-KILL", &ops[leader].pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());

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
    println!(
        "standby took over and reconciled {:?} after the leader was killed",
        started.elapsed()
    );
    assert_eq!(
        leader_gauge(&http, &standby.probe_url).await,
        Some(1),
        "the standby now leads"
    );
}
