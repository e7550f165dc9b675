//! The Helm chart (`charts/kube-scim`) with the real Helm v4 engine (helm-sdkpy, driven
//! by `tests/helm/helm_driver.py` with the venv of `scripts/python-tools`): lint, install,
//! upgrade, uninstall. Between install and uninstall the operator binary runs with exactly
//! the environment the chart's Deployment gives its container, authenticated only as the
//! chart's ServiceAccount (a TokenRequest token), because the control plane has no nodes
//! and so no pod ever runs. That proves the chart's RBAC is enough, and no more than
//! needed: it serves SCIM, reconciles a mapping to `edit` and to a Role listed in
//! `rbac.bindableRoles`, reports a mapping to an unlisted ClusterRole (condition + Event)
//! without crashing, and is refused Secrets outside its namespace.
//!
//! Which cluster. The controller reconciles every mapping in the cluster, and the shared
//! test operator (`harness::operator()`, running as cluster-admin) does too. Sharing a
//! cluster would make both operators write status on each other's mappings: ours would
//! flag other tests' mappings (to roles it may not bind) as refused, and theirs would
//! create our `edit` binding as admin, so "the chart's RBAC suffices" would prove
//! nothing. So this test brings up its own control plane with the same script
//! (`KUBE_SCIM_RUN_DIR` set to a separate directory, ~10 s with cached binaries), where
//! the only operator is the one under test, and takes it down at the end (unless
//! `KEEP_CONTROL_PLANE` is set). With `KUBECONFIG` pointing at another cluster (kind, AKS;
//! not the local control plane `scripts/test` exports) it uses that cluster instead:
//! everything still runs, but another operator there may mask results.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Event, Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::config::Kubeconfig;
use kube::core::GroupVersionKind;
use kube::discovery::{pinned_kind, Scope};
use kube::Client;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::harness::{client_for, http_status, poll_until, unique, TestEnv};

const TIMEOUT: Duration = Duration::from_secs(60);
const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart_dir() -> PathBuf {
    repo_root().join("charts/kube-scim")
}

// ------------------------------------------------------------------------------------
// The cluster
// ------------------------------------------------------------------------------------

/// The cluster of this test: its own control plane (stopped on drop), or `KUBECONFIG`'s.
struct Cluster {
    kubeconfig: PathBuf,
    run_dir: Option<PathBuf>,
}

impl Cluster {
    fn start() -> Cluster {
        // `scripts/test` exports KUBECONFIG pointing at the local control plane: that one
        // still counts as local (we can start a sibling); any other is an existing cluster.
        if let Ok(p) = std::env::var("KUBECONFIG") {
            if !p.is_empty() && !is_local_control_plane(Path::new(&p)) {
                return Cluster {
                    kubeconfig: PathBuf::from(p),
                    run_dir: None,
                };
            }
        }
        let run_dir = repo_root().join("target/e2e-helm-control-plane");
        let out = Command::new(repo_root().join("scripts/control-plane"))
            .arg("up")
            .env("KUBE_SCIM_RUN_DIR", &run_dir)
            .output()
            .expect("run scripts/control-plane up");
        assert!(
            out.status.success(),
            "scripts/control-plane up (KUBE_SCIM_RUN_DIR={}) failed:\n{}",
            run_dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let kubeconfig = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Cluster {
            kubeconfig,
            run_dir: Some(run_dir),
        }
    }

    async fn admin(&self) -> Client {
        client_for(&self.kubeconfig, None).await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(dir) = &self.run_dir {
            if std::env::var_os("KEEP_CONTROL_PLANE").is_none() {
                let _ = Command::new(repo_root().join("scripts/control-plane"))
                    .arg("down")
                    .env("KUBE_SCIM_RUN_DIR", dir)
                    .output();
            }
        }
    }
}

/// Whether `kubeconfig` is the one `scripts/control-plane` writes for the shared local
/// control plane.
fn is_local_control_plane(kubeconfig: &Path) -> bool {
    let Ok(out) = Command::new(repo_root().join("scripts/control-plane"))
        .arg("kubeconfig")
        .output()
    else {
        return false;
    };
    let local = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    match (kubeconfig.canonicalize(), local.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// A kubeconfig file for the same API server that authenticates with `token` only.
fn write_token_kubeconfig(admin_kubeconfig: &Path, token: &str, out: &Path) {
    let kc = Kubeconfig::read_from(admin_kubeconfig).expect("read kubeconfig");
    let context = kc
        .current_context
        .clone()
        .or_else(|| kc.contexts.first().map(|c| c.name.clone()))
        .expect("a context");
    let cluster_name = kc
        .contexts
        .iter()
        .find(|c| c.name == context)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .expect("context names a cluster");
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)
        .and_then(|c| c.cluster.clone())
        .expect("cluster entry");
    let mut c = json!({"server": cluster.server.expect("server")});
    if let Some(ca) = cluster.certificate_authority {
        c["certificate-authority"] = json!(ca);
    }
    if let Some(ca) = cluster.certificate_authority_data {
        c["certificate-authority-data"] = json!(ca);
    }
    if let Some(skip) = cluster.insecure_skip_tls_verify {
        c["insecure-skip-tls-verify"] = json!(skip);
    }
    // JSON is YAML.
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": c}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa"}}],
        "current-context": "sa",
    });
    std::fs::write(out, serde_json::to_vec_pretty(&doc).expect("json")).expect("write kubeconfig");
}

// ------------------------------------------------------------------------------------
// Helm through helm-sdkpy
// ------------------------------------------------------------------------------------

/// The venv python with helm-sdkpy (installed by `scripts/python-tools` when missing).
fn python() -> PathBuf {
    let out = Command::new(repo_root().join("scripts/python-tools"))
        .output()
        .expect("run scripts/python-tools");
    assert!(
        out.status.success(),
        "scripts/python-tools failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("python")
}

/// Run the driver; its JSON answer, or None (and the answer) when it failed.
fn helm_raw(python: &Path, args: &[&str]) -> Result<Value, String> {
    let out = Command::new(python)
        .arg(repo_root().join("tests/helm/helm_driver.py"))
        .args(args)
        .output()
        .expect("run helm driver");
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_str(stdout.trim())
        .map_err(|e| format!("driver printed no JSON ({e}): {stdout}"))
}

fn helm(python: &Path, args: &[&str]) -> Value {
    helm_raw(python, args).unwrap_or_else(|e| panic!("helm {}: {e}", args.join(" ")))
}

/// Lint messages of at least warning severity, and the lint errors.
fn lint_problems(lint: &Value) -> Vec<String> {
    let mut problems: Vec<String> = lint["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["severity"] != "info")
        .map(|m| {
            format!(
                "{} {}: {}",
                m["severity"].as_str().unwrap_or("?"),
                m["path"].as_str().unwrap_or("?"),
                m["message"]
            )
        })
        .collect();
    for e in lint["errors"].as_array().expect("errors") {
        problems.push(format!("error: {e}"));
    }
    problems
}

fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read chart dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

/// Lint a copy of the chart whose values.yaml has `overrides` merged in (Helm's lint
/// action takes no values of its own).
fn lint_with(python: &Path, scratch: &Path, overrides: &Value) -> Result<Value, String> {
    let dir = scratch.join(unique("lint")).join("kube-scim");
    copy_dir(&chart_dir(), &dir);
    let defaults = std::fs::read_to_string(dir.join("values.yaml")).expect("values.yaml");
    let mut values: Value = serde_yaml::from_str(&defaults).expect("values.yaml parses");
    merge(&mut values, overrides);
    std::fs::write(
        dir.join("values.yaml"),
        serde_yaml::to_string(&values).expect("yaml"),
    )
    .expect("write values.yaml");
    helm_raw(python, &["lint", dir.to_str().expect("utf-8 path")])
}

/// (apiVersion, kind, namespace, name) of every object in a release manifest.
fn manifest_objects(manifest: &str) -> Vec<(String, String, Option<String>, String)> {
    let mut objects = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(manifest) {
        let v = Value::deserialize(doc).unwrap_or(Value::Null);
        let Some(kind) = v["kind"].as_str() else {
            continue;
        };
        objects.push((
            v["apiVersion"].as_str().expect("apiVersion").to_string(),
            kind.to_string(),
            v["metadata"]["namespace"].as_str().map(str::to_string),
            v["metadata"]["name"].as_str().expect("name").to_string(),
        ));
    }
    objects
}

/// Whether an object of the manifest exists, found through discovery.
async fn exists(
    client: &Client,
    release_ns: &str,
    (api_version, kind, ns, name): &(String, String, Option<String>, String),
) -> bool {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (ar, caps) = pinned_kind(client, &gvk)
        .await
        .unwrap_or_else(|e| panic!("discover {api_version} {kind}: {e}"));
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Cluster => Api::all_with(client.clone(), &ar),
        Scope::Namespaced => {
            Api::namespaced_with(client.clone(), ns.as_deref().unwrap_or(release_ns), &ar)
        }
    };
    api.get_opt(name)
        .await
        .unwrap_or_else(|e| panic!("get {kind} {name}: {e}"))
        .is_some()
}

// ------------------------------------------------------------------------------------
// The operator, as the chart would run it
// ------------------------------------------------------------------------------------

struct RunningOperator {
    child: Child,
    scim_url: String,
    /// `https://127.0.0.1:<port>` of the admission webhook.
    webhook_url: String,
    probe_url: String,
    log: PathBuf,
}

impl RunningOperator {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_alive(&mut self) {
        let status = self.child.try_wait().expect("try_wait");
        assert!(
            status.is_none(),
            "the operator exited ({status:?}); log {}:\n{}",
            self.log.display(),
            self.log_text()
        );
    }

    /// Close stdin (`--exit-on-stdin-eof`) and wait for a clean exit.
    fn stop(mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                assert!(status.success(), "operator exit {status}");
                return;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("operator did not exit within 20s of stdin closing");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RunningOperator {
    fn drop(&mut self) {
        // Only when a panic skipped `stop`.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Start the binary with the container's args and env from the Deployment (downward API
/// fields resolved as the kubelet would), nothing inherited, authenticated by `kubeconfig`.
/// Only the listen addresses are overridden (flags win over env), to free loopback ports.
/// `mounts` stand in for the container's volume mounts: (mount path, local directory);
/// env values under a mount path point into the local directory instead.
fn start_operator(
    container: &Container,
    namespace: &str,
    kubeconfig: &Path,
    mounts: &[(String, PathBuf)],
) -> RunningOperator {
    let port = free_port();
    let probe_port = free_port();
    let webhook_port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kube-scim"));
    cmd.env_clear().env("KUBECONFIG", kubeconfig);
    for var in container.env.as_deref().unwrap_or_default() {
        let value = match (&var.value, &var.value_from) {
            (Some(v), _) => v.clone(),
            (None, Some(from)) => {
                let path = &from.field_ref.as_ref().expect("only fieldRefs").field_path;
                match path.as_str() {
                    "metadata.namespace" => namespace.to_string(),
                    "metadata.name" => "kube-scim-helm-e2e-0".to_string(),
                    other => panic!("unexpected downward API field {other}"),
                }
            }
            (None, None) => String::new(),
        };
        let value = mounts
            .iter()
            .find_map(|(mount, local)| {
                value
                    .strip_prefix(mount.as_str())
                    .map(|rest| format!("{}{rest}", local.display()))
            })
            .unwrap_or(value);
        cmd.env(&var.name, value);
    }
    cmd.args(container.args.as_deref().unwrap_or_default())
        .args(["--exit-on-stdin-eof"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--probe-listen", &format!("127.0.0.1:{probe_port}")])
        .args(["--webhook-listen", &format!("127.0.0.1:{webhook_port}")]);
    let log = repo_root()
        .join("target")
        .join(format!("e2e-helm-operator-{namespace}.log"));
    let log_file = std::fs::File::create(&log).expect("log file");
    let child = cmd
        .stdin(Stdio::piped())
        .stdout(log_file.try_clone().expect("log"))
        .stderr(log_file)
        .spawn()
        .expect("spawn kube-scim run");
    let mut op = RunningOperator {
        child,
        scim_url: format!("http://127.0.0.1:{port}/scim/v2"),
        webhook_url: format!("https://127.0.0.1:{webhook_port}"),
        probe_url: format!("http://127.0.0.1:{probe_port}"),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    while http_status(&format!("{}/readyz", op.probe_url)) != Some(200) {
        op.assert_alive();
        assert!(
            Instant::now() < deadline,
            "operator (chart RBAC only) not ready after 90s; log {}:\n{}",
            op.log.display(),
            op.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    op
}

// ------------------------------------------------------------------------------------
// Small helpers
// ------------------------------------------------------------------------------------

fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("object")
}

fn container(d: &Deployment) -> Container {
    d.spec
        .as_ref()
        .expect("spec")
        .template
        .spec
        .as_ref()
        .expect("pod spec")
        .containers[0]
        .clone()
}

fn env_of(c: &Container) -> BTreeMap<String, String> {
    c.env
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter(|e| e.value_from.is_none())
        // The API server drops empty values.
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect()
}

fn mappings_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    let ar = kube::api::ApiResource::from_gvk(&GroupVersionKind::gvk(
        "scim.kubescim.io",
        "v1alpha1",
        "GroupRoleMapping",
    ));
    Api::namespaced_with(client.clone(), ns, &ar)
}

fn ready_condition(m: &DynamicObject) -> Option<Value> {
    m.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
        .cloned()
}

async fn create_mapping(client: &Client, ns: &str, name: &str, group: &str, role: Value) {
    let m: DynamicObject = obj(json!({
        "apiVersion": "scim.kubescim.io/v1alpha1",
        "kind": "GroupRoleMapping",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"groups": [{"displayName": group}], "roleRef": role},
    }));
    mappings_api(client, ns)
        .create(&PostParams::default(), &m)
        .await
        .unwrap_or_else(|e| panic!("create mapping {name}: {e}"));
}

/// The managed RoleBinding of `ns` binding `role` (kind, name), once it has `subject`.
async fn wait_for_binding(client: &Client, ns: &str, kind: &str, role: &str, subject: &str) {
    let rbs: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
    poll_until(
        TIMEOUT,
        &format!("a RoleBinding in {ns} to {kind} {role} with User {subject}"),
        || async {
            let list = rbs
                .list(&ListParams::default().labels("app.kubernetes.io/managed-by=kube-scim"))
                .await
                .ok()?;
            list.items
                .into_iter()
                .find(|rb| {
                    rb.role_ref.kind == kind
                        && rb.role_ref.name == role
                        && rb
                            .subjects
                            .as_deref()
                            .unwrap_or_default()
                            .iter()
                            .any(|s| s.kind == "User" && s.name == subject)
                })
                .map(|_| ())
        },
    )
    .await;
}

// ------------------------------------------------------------------------------------
// The test
// ------------------------------------------------------------------------------------

/// Lint: no warnings with the defaults or with every optional part on; the schema
/// rejects a wrong enum and an unknown key.
#[tokio::test]
async fn chart_lints_clean_and_its_schema_rejects_bad_values() {
    let python = tokio::task::spawn_blocking(python).await.expect("python");
    let scratch = repo_root().join("target/e2e-helm-lint");
    let chart = chart_dir();
    let lint = helm(&python, &["lint", chart.to_str().expect("path")]);
    assert_eq!(lint_problems(&lint), Vec::<String>::new(), "lint: {lint}");

    let everything = json!({
        "image": {"digest": format!("sha256:{}", "a".repeat(64))},
        "ingress": {"enabled": true, "host": "scim.example.com", "className": "nginx",
                    "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"},
                    "tls": {"secretName": "scim-tls"}},
        "networkPolicy": {"enabled": true},
        "serviceMonitor": {"enabled": true, "labels": {"release": "prometheus"}},
        "rbac": {"bindableRoles": [{"namespace": "payments", "roles": ["deployer"]}],
                 "bindableClusterRoles": []},
        "controller": {"subjects": {"kind": "UserAndGroup", "userPrefix": "oidc:",
                                    "groupAttribute": "displayName"},
                       "protectedRoles": ["cluster-admin", "admin"]},
        "logging": {"filter": "info,kube_scim=debug", "json": false},
        "extraEnv": [{"name": "RUST_BACKTRACE", "value": "1"}],
        "podDisruptionBudget": {"minAvailable": "50%"},
        "webhook": {"certManager": {"enabled": true}, "timeoutSeconds": 5,
                    "namespaceSelector": {"matchLabels": {"kube-scim/review": "true"}}},
    });
    let lint = lint_with(&python, &scratch, &everything).expect("lint everything on");
    assert_eq!(lint_problems(&lint), Vec::<String>::new(), "lint: {lint}");

    // The example values file.
    let example = std::fs::read_to_string(repo_root().join("examples/values-entra-aks.yaml"))
        .expect("examples/values-entra-aks.yaml");
    let example: Value = serde_yaml::from_str(&example).expect("example values parse");
    let lint = lint_with(&python, &scratch, &example).expect("lint example values");
    assert_eq!(lint_problems(&lint), Vec::<String>::new(), "lint: {lint}");

    // Lint gives no text for these (helm-sdkpy serializes Go errors as `{}`), and in lint
    // mode Helm only logs a template's `fail`/`required`: so every rule is in the schema
    // (the templates' `fail`s guard installs with schema validation skipped), and the
    // error must be on values.yaml.
    for (bad, path) in [
        (
            json!({"controller": {"subjects": {"kind": "Robot"}}}),
            "values.yaml",
        ),
        (json!({"replicas": 3}), "values.yaml"),
        (
            json!({"rbac": {"bindableClusterRoles": "view"}}),
            "values.yaml",
        ),
        (
            json!({"controller": {"massRemoval": {"threshold": 0}}}),
            "values.yaml",
        ),
        (json!({"logging": {"level": "verbose"}}), "values.yaml"),
        (json!({"webhook": {"timeoutSeconds": 60}}), "values.yaml"),
        (json!({"ingress": {"enabled": true}}), "values.yaml"),
        (
            json!({"scim": {"enabled": false}, "controller": {"enabled": false}}),
            "values.yaml",
        ),
        (
            json!({"controller": {"leaderElection": {"enabled": false}}}),
            "values.yaml",
        ),
    ] {
        let problems = match lint_with(&python, &scratch, &bad) {
            Ok(lint) => lint_problems(&lint),
            Err(e) => vec![e],
        };
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("error") && p.contains(path)),
            "values {bad} should fail lint on {path}: {problems:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&scratch);
}

#[tokio::test]
async fn chart_installs_upgrades_and_its_rbac_is_enough_and_no_more() {
    let python = tokio::task::spawn_blocking(python).await.expect("python");
    let cluster = tokio::task::spawn_blocking(Cluster::start)
        .await
        .expect("cluster");
    let admin = cluster.admin().await;
    let kubeconfig = cluster.kubeconfig.to_str().expect("utf-8 path").to_string();

    // Namespaces: the release's and a team's (which `rbac.bindableRoles` names, so it
    // exists before the install), a Role there, and a ClusterRole not in the bindable list.
    let release = unique("ks");
    let release_ns = unique("kube-scim-helm");
    let team_ns = unique("team-helm");
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    for ns in [&release_ns, &team_ns] {
        namespaces
            .create(
                &PostParams::default(),
                &obj(json!({"metadata": {"name": ns}})),
            )
            .await
            .expect("create namespace");
    }
    let roles: Api<Role> = Api::namespaced(admin.clone(), &team_ns);
    roles
        .create(
            &PostParams::default(),
            &obj(json!({
                "metadata": {"name": "deployer"},
                "rules": [{"apiGroups": ["apps"], "resources": ["deployments"],
                           "verbs": ["get", "list", "update", "patch"]}]
            })),
        )
        .await
        .expect("create Role deployer");
    let unlisted = unique("helm-e2e-unlisted");
    let cluster_roles: Api<ClusterRole> = Api::all(admin.clone());
    cluster_roles
        .create(
            &PostParams::default(),
            &obj(json!({
                "metadata": {"name": unlisted},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]
            })),
        )
        .await
        .expect("create unlisted ClusterRole");

    // ---- install
    let scratch = repo_root().join("target").join(unique("e2e-helm"));
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    let mut values = json!({
        "ingress": {"enabled": true, "host": "scim.example.com", "className": "nginx",
                    "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"}},
        "networkPolicy": {"enabled": true},
        "rbac": {"bindableRoles": [{"namespace": team_ns, "roles": ["deployer"]}]},
    });
    let values_file = scratch.join("values.json");
    std::fs::write(&values_file, values.to_string()).expect("values");
    let chart = chart_dir().to_str().expect("path").to_string();
    let vf = values_file.to_str().expect("path").to_string();
    let installed = helm(
        &python,
        &["install", &kubeconfig, &release_ns, &release, &chart, &vf],
    );
    assert_eq!(installed["status"], "deployed", "{installed}");
    assert_eq!(installed["revision"], 1);
    let objects = manifest_objects(installed["manifest"].as_str().expect("manifest"));
    let kinds: Vec<&str> = objects.iter().map(|o| o.1.as_str()).collect();
    for kind in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "Deployment",
        "Ingress",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "Secret",
        "ValidatingWebhookConfiguration",
    ] {
        assert!(kinds.contains(&kind), "release has a {kind}: {kinds:?}");
    }
    for o in &objects {
        assert!(exists(&admin, &release_ns, o).await, "{o:?} exists");
    }
    // The CRDs came with the chart (or were there already) and are served.
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    for crd in kube_scim::crd::all() {
        let name = crd.metadata.name.expect("name");
        poll_until(TIMEOUT, &format!("CRD {name} Established"), || async {
            let c = crds.get(&name).await.ok()?;
            c.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        })
        .await;
    }

    // The Deployment as rendered: hardened, probes on 8081, the downward API.
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &release_ns);
    let deployment_name = objects
        .iter()
        .find(|o| o.1 == "Deployment")
        .expect("deployment")
        .3
        .clone();
    let d = deployments.get(&deployment_name).await.expect("deployment");
    assert_eq!(d.spec.as_ref().expect("spec").replicas, Some(2));
    let c = container(&d);
    let sc = c.security_context.clone().expect("securityContext");
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.run_as_user, Some(65532));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.and_then(|c| c.drop),
        Some(vec!["ALL".to_string()])
    );
    assert_eq!(
        sc.seccomp_profile.map(|p| p.type_),
        Some("RuntimeDefault".to_string())
    );
    assert_eq!(
        c.liveness_probe
            .clone()
            .and_then(|p| p.http_get)
            .and_then(|h| h.path),
        Some("/healthz".to_string())
    );
    assert_eq!(
        c.readiness_probe
            .clone()
            .and_then(|p| p.http_get)
            .and_then(|h| h.path),
        Some("/readyz".to_string())
    );
    let env = env_of(&c);
    assert_eq!(
        env["KUBE_SCIM_BASE_URL"],
        "https://scim.example.com/scim/v2"
    );
    assert_eq!(env["KUBE_SCIM_USER_PREFIX"], "");
    // The bind ceiling is exactly the default list.
    let cr_name = objects
        .iter()
        .find(|o| o.1 == "ClusterRole")
        .expect("cluster role")
        .3
        .clone();
    let cr = cluster_roles
        .get(&cr_name)
        .await
        .expect("chart ClusterRole");
    let rules = cr.rules.unwrap_or_default();
    let bind: Vec<_> = rules
        .iter()
        .filter(|r| r.verbs.iter().any(|v| v == "bind" || v == "*"))
        .collect();
    assert_eq!(bind.len(), 1, "one bind rule: {bind:?}");
    assert_eq!(
        bind[0].resource_names.clone().unwrap_or_default(),
        vec!["view", "edit", "admin"]
    );
    assert!(
        !rules.iter().any(|r| r
            .resources
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|res| res == "secrets" || res == "*")),
        "no cluster-wide Secrets: {rules:?}"
    );

    // The admission webhook: registered for both mapping kinds, failing closed, with the
    // CA of the certificate Helm generated for its Service.
    let vwc_name = objects
        .iter()
        .find(|o| o.1 == "ValidatingWebhookConfiguration")
        .expect("webhook configuration")
        .3
        .clone();
    let vwcs: Api<ValidatingWebhookConfiguration> = Api::all(admin.clone());
    let vwc = vwcs.get(&vwc_name).await.expect("webhook configuration");
    let hook = vwc.webhooks.clone().unwrap_or_default().remove(0);
    assert_eq!(hook.failure_policy.as_deref(), Some("Fail"));
    assert_eq!(hook.side_effects, "None");
    let rule = hook.rules.clone().unwrap_or_default().remove(0);
    assert_eq!(
        rule.resources.clone().unwrap_or_default(),
        vec!["grouprolemappings", "clustergrouprolemappings"]
    );
    assert_eq!(
        rule.operations.clone().unwrap_or_default(),
        vec!["CREATE", "UPDATE"]
    );
    let service = hook.client_config.service.clone().expect("a Service");
    let webhook_secret_name = format!("{}-tls", service.name);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &release_ns);
    let webhook_secret = secrets
        .get(&webhook_secret_name)
        .await
        .expect("webhook Secret");
    let secret_data = webhook_secret.data.clone().unwrap_or_default();
    let ca_bundle = hook.client_config.ca_bundle.clone().expect("caBundle");
    assert_eq!(
        Some(&ca_bundle),
        secret_data.get("ca.crt"),
        "caBundle is the Secret's CA"
    );
    let cert_dir = scratch.join("chart-webhook-cert");
    std::fs::create_dir_all(&cert_dir).expect("cert dir");
    for (k, v) in &secret_data {
        std::fs::write(cert_dir.join(k), &v.0).expect("write cert file");
    }
    let verify = Command::new("openssl")
        .current_dir(&cert_dir)
        .args(["verify", "-CAfile", "ca.crt", "-verify_hostname"])
        .arg(format!("{}.{release_ns}.svc", service.name))
        .arg("tls.crt")
        .output()
        .expect("openssl verify");
    assert!(
        verify.status.success(),
        "the serving certificate is valid for the Service: {}",
        String::from_utf8_lossy(&verify.stdout)
    );

    // ---- upgrade: values change, and the new revision takes
    merge(
        &mut values,
        &json!({"replicaCount": 3, "logging": {"level": "debug"},
                "controller": {"subjects": {"userPrefix": "oidc:"}}}),
    );
    std::fs::write(&values_file, values.to_string()).expect("values");
    let upgraded = helm(
        &python,
        &["upgrade", &kubeconfig, &release_ns, &release, &chart, &vf],
    );
    assert_eq!(upgraded["status"], "deployed", "{upgraded}");
    assert_eq!(upgraded["revision"], 2);
    let d = deployments.get(&deployment_name).await.expect("deployment");
    assert_eq!(d.spec.as_ref().expect("spec").replicas, Some(3));
    let c = container(&d);
    let env = env_of(&c);
    assert_eq!(env["KUBE_SCIM_USER_PREFIX"], "oidc:");
    assert_eq!(env["KUBE_SCIM_LOG"], "debug");
    // The webhook certificate survives the upgrade (lookup), so the caBundle stays valid.
    let after = secrets
        .get(&webhook_secret_name)
        .await
        .expect("webhook Secret");
    assert_eq!(
        after.data, webhook_secret.data,
        "an upgrade keeps the generated certificate"
    );

    // No pod runs here, so the API server can't reach the Service: point the registration
    // at the operator below through `clientConfig.url`, with a certificate for 127.0.0.1
    // (the chart's is for the Service's name) in the directory that stands in for the
    // Secret's mount.
    let local_certs = scratch.join("local-webhook-cert");
    let (ca, crt, key) = crate::admission::make_certs(&local_certs);
    let ca_pem = std::fs::read(&ca).expect("ca");
    for (name, path) in [("ca.crt", &ca), ("tls.crt", &crt), ("tls.key", &key)] {
        std::fs::copy(path, cert_dir.join(name)).expect("copy cert");
    }

    // ---- the operator as the chart's ServiceAccount, with the chart's environment
    let sa_name = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.service_account_name.clone())
        .expect("serviceAccountName");
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), &release_ns);
    let tr = sas
        .create_token_request(
            &sa_name,
            &PostParams::default(),
            &obj(json!({"spec": {"audiences": [], "expirationSeconds": 3600}})),
        )
        .await
        .expect("TokenRequest for the chart's ServiceAccount");
    let sa_token = tr.status.expect("token status").token;
    let sa_kubeconfig = scratch.join("sa-kubeconfig");
    write_token_kubeconfig(&cluster.kubeconfig, &sa_token, &sa_kubeconfig);
    let mut op = start_operator(
        &c,
        &release_ns,
        &sa_kubeconfig,
        &[("/etc/kube-scim/webhook".to_string(), cert_dir.clone())],
    );
    vwcs.patch(
        &vwc_name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Json::<()>(
            serde_json::from_value(json!([
                {"op": "remove", "path": "/webhooks/0/clientConfig/service"},
                {"op": "add", "path": "/webhooks/0/clientConfig/url",
                 "value": format!("{}/validate-mappings", op.webhook_url)},
                {"op": "replace", "path": "/webhooks/0/clientConfig/caBundle",
                 "value": crate::admission::base64(&ca_pem)},
            ]))
            .expect("json patch"),
        ),
    )
    .await
    .expect("point the webhook at the local operator");
    // The webhook, running with the chart's RBAC only, refuses a mapping author without
    // `bind` (SubjectAccessReviews and role reads are enough) and admits the admin below.
    let author = unique("helm-author");
    let author_role: Role = obj(json!({
        "metadata": {"name": "mapping-author"},
        "rules": [{"apiGroups": ["scim.kubescim.io"], "resources": ["grouprolemappings"],
                   "verbs": ["create"]}]
    }));
    roles
        .create(&PostParams::default(), &author_role)
        .await
        .expect("author Role");
    let author_binding: RoleBinding = obj(json!({
        "metadata": {"name": "mapping-author"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "mapping-author"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": author}],
    }));
    Api::<RoleBinding>::namespaced(admin.clone(), &team_ns)
        .create(&PostParams::default(), &author_binding)
        .await
        .expect("author RoleBinding");
    let author_client = {
        let kc = Kubeconfig::read_from(&cluster.kubeconfig).expect("kubeconfig");
        let mut config =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .expect("config");
        config.auth_info.impersonate = Some(author.clone());
        Client::try_from(config).expect("client")
    };
    let refusal = poll_until(TIMEOUT, "the chart's webhook refuses the author", || async {
        let m: DynamicObject = obj(json!({
            "apiVersion": "scim.kubescim.io/v1alpha1",
            "kind": "GroupRoleMapping",
            "metadata": {"name": "author-edit", "namespace": team_ns},
            "spec": {"groups": [{"displayName": "x"}], "roleRef": {"kind": "ClusterRole", "name": "edit"}},
        }));
        match mappings_api(&author_client, &team_ns)
            .create(&PostParams { dry_run: true, ..Default::default() }, &m)
            .await
        {
            Err(kube::Error::Api(s)) if s.message.contains("denied the request") => Some(s.message),
            _ => None,
        }
    })
    .await;
    assert!(
        refusal.contains(&format!(
            "{author} may not bind ClusterRole edit in namespace {team_ns}"
        )),
        "{refusal}"
    );

    // SCIM with a token made by `kube-scim token create` (as the administrator).
    let out = Command::new(env!("CARGO_BIN_EXE_kube-scim"))
        .env("KUBECONFIG", &cluster.kubeconfig)
        .args(["token", "create", "helm-e2e", "--namespace", &release_ns])
        .output()
        .expect("token create");
    assert!(
        out.status.success(),
        "token create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let http = reqwest::Client::new();
    let users_url = format!("{}/Users", op.scim_url);
    let r = http.get(&users_url).send().await.expect("GET /Users");
    assert_eq!(r.status(), 401, "no token, no SCIM");
    // The token Secret reaches the operator's cache through its watch.
    poll_until(TIMEOUT, "GET /Users with the token is 200", || async {
        let r = http.get(&users_url).bearer_auth(&token).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;

    // A user and a group through SCIM (the endpoint writes CRs with the chart's RBAC).
    let user_name = format!("{}@example.com", unique("alice"));
    let r = http
        .post(&users_url)
        .bearer_auth(&token)
        .json(
            &json!({"schemas": [USER_SCHEMA], "userName": user_name, "active": true,
                      "externalId": uuid::Uuid::new_v4().to_string()}),
        )
        .send()
        .await
        .expect("POST /Users");
    assert_eq!(r.status(), 201);
    let user: Value = r.json().await.expect("user");
    let group_name = unique("Helm Team");
    let r = http
        .post(format!("{}/Groups", op.scim_url))
        .bearer_auth(&token)
        .json(
            &json!({"schemas": [GROUP_SCHEMA], "displayName": group_name,
                      "members": [{"value": user["id"]}]}),
        )
        .send()
        .await
        .expect("POST /Groups");
    assert_eq!(r.status(), 201);

    // A mapping to `edit` (bindable): the RoleBinding appears, with the upgraded prefix.
    let subject = format!("oidc:{user_name}");
    create_mapping(
        &admin,
        &team_ns,
        "team-edit",
        &group_name,
        json!({"kind": "ClusterRole", "name": "edit"}),
    )
    .await;
    wait_for_binding(&admin, &team_ns, "ClusterRole", "edit", &subject).await;
    // A mapping to a Role listed in rbac.bindableRoles.
    create_mapping(
        &admin,
        &team_ns,
        "team-deployer",
        &group_name,
        json!({"kind": "Role", "name": "deployer"}),
    )
    .await;
    wait_for_binding(&admin, &team_ns, "Role", "deployer", &subject).await;
    let mappings = mappings_api(&admin, &team_ns);
    for name in ["team-edit", "team-deployer"] {
        poll_until(TIMEOUT, &format!("mapping {name} Ready=True"), || async {
            let m = mappings.get(name).await.ok()?;
            (ready_condition(&m)?["status"] == "True").then_some(())
        })
        .await;
    }

    // A mapping to a ClusterRole outside rbac.bindableClusterRoles: the API server refuses
    // the binding; the operator says so on the mapping and in an Event, and keeps running.
    create_mapping(
        &admin,
        &team_ns,
        "team-unlisted",
        &group_name,
        json!({"kind": "ClusterRole", "name": unlisted}),
    )
    .await;
    let cond = poll_until(TIMEOUT, "mapping team-unlisted Ready=False", || async {
        let m = mappings.get("team-unlisted").await.ok()?;
        let c = ready_condition(&m)?;
        (c["status"] == "False").then_some(c)
    })
    .await;
    assert_eq!(cond["reason"], "BindingRefused", "{cond}");
    let events: Api<Event> = Api::namespaced(admin.clone(), &team_ns);
    let event = poll_until(TIMEOUT, "a Warning Event on team-unlisted", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.involved_object.name.as_deref() == Some("team-unlisted")
                && e.type_.as_deref() == Some("Warning")
        })
    })
    .await;
    assert_eq!(event.reason.as_deref(), Some("BindingRefused"), "{event:?}");
    let rbs: Api<RoleBinding> = Api::namespaced(admin.clone(), &team_ns);
    let bound_unlisted = rbs
        .list(&ListParams::default())
        .await
        .expect("rolebindings")
        .items
        .into_iter()
        .any(|rb| rb.role_ref.name == unlisted);
    assert!(!bound_unlisted, "nothing binds the unlisted role");
    // The controller keeps going past the refusal: a spec change made afterwards (a second,
    // unknown group) is still reconciled, i.e. observedGeneration catches up.
    let m = mappings.get("team-unlisted").await.expect("mapping");
    let mut groups = m.data["spec"]["groups"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    groups.push(json!({"displayName": unique("poke-unknown-group")}));
    let patched = mappings
        .patch(
            "team-unlisted",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"groups": groups}})),
        )
        .await
        .expect("change the mapping");
    let generation = patched.metadata.generation.expect("generation");
    poll_until(
        TIMEOUT,
        "the change after the refusal reconciled",
        || async {
            let m = mappings.get("team-unlisted").await.ok()?;
            (m.data["status"]["observedGeneration"].as_i64()? >= generation).then_some(())
        },
    )
    .await;
    op.assert_alive();
    assert_eq!(
        http_status(&format!("{}/readyz", op.probe_url)),
        Some(200),
        "still ready"
    );
    let r = http
        .get(&users_url)
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET /Users");
    assert_eq!(r.status(), 200, "still serving SCIM");
    let metrics = http
        .get(format!("{}/metrics", op.probe_url))
        .send()
        .await
        .expect("metrics");
    assert_eq!(metrics.status(), 200);

    // The ServiceAccount reads Secrets in its namespace only.
    let sa = client_for(&cluster.kubeconfig, Some(&sa_token)).await;
    Api::<Secret>::namespaced(sa.clone(), &release_ns)
        .list(&ListParams::default())
        .await
        .expect("the SA lists token Secrets in its namespace");
    for (what, result) in [
        (
            format!("Secrets in {team_ns}"),
            Api::<Secret>::namespaced(sa.clone(), &team_ns)
                .list(&ListParams::default())
                .await,
        ),
        (
            "Secrets in kube-system".to_string(),
            Api::<Secret>::namespaced(sa.clone(), "kube-system")
                .list(&ListParams::default())
                .await,
        ),
        (
            "Secrets cluster-wide".to_string(),
            Api::<Secret>::all(sa.clone())
                .list(&ListParams::default())
                .await,
        ),
    ] {
        match result {
            Err(kube::Error::Api(s)) if s.code == 403 => {}
            other => panic!("{what}: want 403, got {:?}", other.map(|l| l.items.len())),
        }
    }
    match Api::<Secret>::namespaced(sa.clone(), "default")
        .get("anything")
        .await
    {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("get a Secret in default: want 403, got {other:?}"),
    }

    // Deleting the mappings prunes their bindings (finalizers, with the chart's RBAC).
    for name in ["team-edit", "team-deployer", "team-unlisted"] {
        mappings
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete mapping");
    }
    poll_until(TIMEOUT, "mappings gone, bindings pruned", || async {
        let left = mappings
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .len();
        let bound = rbs
            .list(&ListParams::default().labels("app.kubernetes.io/managed-by=kube-scim"))
            .await
            .ok()?
            .items
            .len();
        (left == 0 && bound == 0).then_some(())
    })
    .await;
    op.assert_alive();
    op.stop();

    // ---- uninstall: every object of the release is gone; the CRDs stay (Helm policy).
    let uninstalled = helm(&python, &["uninstall", &kubeconfig, &release_ns, &release]);
    assert_eq!(uninstalled["status"], "uninstalled", "{uninstalled}");
    for o in &objects {
        let gone = {
            let deadline = Instant::now() + TIMEOUT;
            loop {
                if !exists(&admin, &release_ns, o).await {
                    break true;
                }
                if Instant::now() > deadline {
                    break false;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        assert!(gone, "{o:?} is gone after uninstall");
    }
    for crd in kube_scim::crd::all() {
        let name = crd.metadata.name.expect("name");
        assert!(crds.get_opt(&name).await.expect("get CRD").is_some());
    }

    // Clean up (matters on a shared cluster; a dedicated one is stopped anyway).
    let _ = cluster_roles
        .delete(&unlisted, &DeleteParams::default())
        .await;
    for ns in [&release_ns, &team_ns] {
        let _ = namespaces.delete(ns, &DeleteParams::default()).await;
    }
    let _ = std::fs::remove_dir_all(&scratch);
}

/// Every object in `examples/*.yaml` (but Helm values files) is accepted by the API server
/// (server-side dry run, into the test's namespace) and comes back unchanged: a field
/// the CRD schema doesn't know would be pruned silently, and show up here as a difference.
#[tokio::test]
async fn examples_are_valid_against_the_crds() {
    let env = TestEnv::new("examples").await;
    let dir = repo_root().join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| {
            !p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("values"))
        })
        .collect();
    files.sort();
    assert!(files.len() >= 5, "examples: {files:?}");
    let mut kinds = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read example");
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let mut v = Value::deserialize(doc).expect("example parses");
            if v.is_null() {
                continue;
            }
            let (api_version, kind) = (
                v["apiVersion"].as_str().expect("apiVersion").to_string(),
                v["kind"].as_str().expect("kind").to_string(),
            );
            let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
            let (ar, caps) =
                pinned_kind(&env.client, &GroupVersionKind::gvk(group, version, &kind))
                    .await
                    .unwrap_or_else(|e| panic!("{}: {kind}: {e}", file.display()));
            let api: Api<DynamicObject> = match caps.scope {
                Scope::Cluster => Api::all_with(env.client.clone(), &ar),
                Scope::Namespaced => {
                    v["metadata"]["namespace"] = json!(env.namespace);
                    Api::namespaced_with(env.client.clone(), &env.namespace, &ar)
                }
            };
            let sent: DynamicObject = obj(v.clone());
            let back = api
                .create(
                    &PostParams {
                        dry_run: true,
                        ..Default::default()
                    },
                    &sent,
                )
                .await
                .unwrap_or_else(|e| panic!("{}: {kind} rejected: {e}", file.display()));
            for field in ["spec", "rules"] {
                if let Some(want) = v.get(field) {
                    assert_eq!(
                        back.data.get(field),
                        Some(want),
                        "{}: {kind} {field} changed by the API server (an unknown field pruned?)",
                        file.display()
                    );
                }
            }
            if group == kube_scim::crd::GROUP {
                // The Rust types read it too.
                match kind.as_str() {
                    "GroupRoleMapping" => {
                        obj::<kube_scim::crd::GroupRoleMapping>(v.clone());
                    }
                    "ClusterGroupRoleMapping" => {
                        obj::<kube_scim::crd::ClusterGroupRoleMapping>(v.clone());
                    }
                    other => panic!("unexpected example kind {other}"),
                }
            }
            kinds.push(kind);
        }
    }
    for kind in ["GroupRoleMapping", "ClusterGroupRoleMapping"] {
        assert!(kinds.iter().any(|k| k == kind), "an example of {kind}");
    }
}
