//! The Helm chart (`charts/kube-scim`) with the real Helm v4 engine (helm-sdkpy, driven
//! by `tests/helm/helm_driver.py` with the venv of `scripts/python-tools`): lint, install,
//! upgrade, uninstall. Between install and uninstall the operator binary runs twice, as the
//! chart's two Deployments run it: the SCIM component and the controller component, each
//! with exactly the environment its Deployment gives the container and authenticated only
//! as its own ServiceAccount (a TokenRequest token), because the control plane has no
//! nodes and so no pod ever runs. That proves each component's RBAC is enough: SCIM
//! writes users and groups, the controller (in the other process) binds them to `edit`
//! and to a Role listed in `rbac.bindableRoles`, reports a mapping to an unlisted
//! ClusterRole (condition + Event) without crashing, and serves the webhook. And no more
//! than needed: each ServiceAccount is refused what the other holds (SubjectAccessReviews
//! and real calls), the controller pods have no Service behind the Ingress, the SCIM
//! Service carries no metrics or probes, and the NetworkPolicies (on by default) let each
//! component talk to the API server only.
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
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    Container, Endpoints, Event, Namespace, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::rbac::v1::{ClusterRole, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::config::Kubeconfig;
use kube::core::GroupVersionKind;
use kube::discovery::{pinned_kind, Scope};
use kube::Client;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::harness::{
    client_for, free_port, http_status, poll_until, unique, write_token_kubeconfig, TestEnv,
};

const TIMEOUT: Duration = Duration::from_secs(60);
const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const CUSTOM_EXTENSION: &str =
    "urn:ietf:params:scim:schemas:extension:CustomExtensionName:2.0:User";

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

/// Start the binary with the container's args and env from the Deployment (downward API
/// fields resolved as the kubelet would), nothing inherited, authenticated by `kubeconfig`.
/// Only the listen addresses are overridden (flags win over env), to free loopback ports.
/// `mounts` stand in for the container's volume mounts: (mount path, local directory);
/// env values under a mount path point into the local directory instead.
fn start_operator(
    component: &str,
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
                    "metadata.name" => format!("kube-scim-{component}-helm-e2e-0"),
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
        .join(format!("e2e-helm-{component}-{namespace}.log"));
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
            "{component} (chart RBAC only) not ready after 90s; log {}:\n{}",
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

/// A minimal CRD for a kind the chart can render but this cluster may not serve (the
/// Prometheus Operator's, the Gateway API's): any content, namespaced. Created only when
/// the cluster lacks it; true when created here (so the test removes it again).
async fn ensure_stub_crd(
    admin: &Client,
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
) -> bool {
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    let name = format!("{plural}.{group}");
    if crds.get_opt(&name).await.expect("get CRD").is_some() {
        return false;
    }
    crds.create(
        &PostParams::default(),
        &obj(json!({
            // The Gateway API's group is under k8s.io, which the API server protects: its
            // real CRDs carry this annotation too.
            "metadata": {"name": name, "annotations": {
                "api-approved.kubernetes.io": "https://github.com/kubernetes-sigs/gateway-api/pull/1538"}},
            "spec": {
                "group": group,
                "scope": "Namespaced",
                "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase(),
                          "listKind": format!("{kind}List")},
                "versions": [{"name": version, "served": true, "storage": true,
                              "schema": {"openAPIV3Schema": {"type": "object",
                                  "x-kubernetes-preserve-unknown-fields": true}}}],
            }
        })),
    )
    .await
    .unwrap_or_else(|e| panic!("create stub CRD {name}: {e}"));
    wait_established(&crds, &name).await;
    true
}

async fn wait_established(crds: &Api<CustomResourceDefinition>, name: &str) {
    poll_until(TIMEOUT, &format!("CRD {name} Established"), || async {
        let c = crds.get(name).await.ok()?;
        c.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
            .then_some(())
    })
    .await;
}

/// The `sh` blocks of a section (`## Title`) of the chart README, in order, with the
/// names the README uses (`kube-scim` as release and namespace) replaced by the test's.
fn readme_blocks(section: &str, release: &str, namespace: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(chart_dir().join("README.md")).expect("chart README");
    let text = readme
        .split(&format!("\n## {section}\n"))
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .unwrap_or_else(|| panic!("README section {section}"));
    text.split("```sh\n")
        .skip(1)
        .filter_map(|b| b.split("\n```").next())
        .map(|b| {
            b.replace(
                "helm uninstall kube-scim ",
                &format!("helm uninstall {release} "),
            )
            .replace("namespace kube-scim", &format!("namespace {namespace}"))
        })
        .collect()
}

/// The optional parts the upgrade turned on: the PrometheusRule (every expression parses,
/// is scoped to the release namespace and names registered metrics), the dashboard
/// ConfigMap (the chart's JSON, valid, labelled for Grafana's sidecar) and the HTTPRoute
/// (to the SCIM Service's SCIM port, from the given Gateway).
async fn check_monitoring_and_route(
    admin: &Client,
    release_ns: &str,
    objects: &[(String, String, Option<String>, String)],
) {
    let named = |kind: &str| -> String {
        let found: Vec<&String> = objects
            .iter()
            .filter(|o| o.1 == kind)
            .map(|o| &o.3)
            .collect();
        assert_eq!(found.len(), 1, "one {kind} in {objects:?}");
        found[0].clone()
    };
    async fn get(
        admin: &Client,
        ns: &str,
        (group, version, kind, plural): (&str, &str, &str, &str),
        name: String,
    ) -> DynamicObject {
        let ar = kube::api::ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(group, version, kind),
            plural,
        );
        let api: Api<DynamicObject> = Api::namespaced_with(admin.clone(), ns, &ar);
        api.get(&name)
            .await
            .unwrap_or_else(|e| panic!("{kind} {name}: {e}"))
    }
    let rule = get(
        admin,
        release_ns,
        (
            "monitoring.coreos.com",
            "v1",
            "PrometheusRule",
            "prometheusrules",
        ),
        named("PrometheusRule"),
    )
    .await;
    assert_eq!(
        rule.metadata.labels.as_ref().expect("labels")["release"],
        "prometheus"
    );
    let problems = crate::observability::prometheus_rule_problems(
        &rule.data,
        release_ns,
        &[
            "KubeScimScimErrors",
            "KubeScimNoProvisioning",
            "KubeScimReconcileFailures",
            "KubeScimNoLeader",
            "KubeScimTokenExpiring",
            "KubeScimRemovalsHeld",
            "KubeScimMappingsRefused",
        ],
    );
    assert_eq!(problems, Vec::<String>::new(), "{:#}", rule.data);

    let dashboards = named("ConfigMap");
    let cm: k8s_openapi::api::core::v1::ConfigMap = Api::namespaced(admin.clone(), release_ns)
        .get(&dashboards)
        .await
        .expect("dashboard ConfigMap");
    assert_eq!(
        cm.metadata.labels.as_ref().expect("labels")["grafana_dashboard"],
        "1"
    );
    let shipped = &cm.data.as_ref().expect("data")["kube-scim.json"];
    let file = std::fs::read_to_string(crate::observability::dashboard_path()).expect("dashboard");
    assert_eq!(
        serde_json::from_str::<Value>(shipped).expect("shipped JSON"),
        serde_json::from_str::<Value>(&file).expect("file JSON"),
        "the ConfigMap carries the chart's dashboard"
    );
    assert_eq!(
        crate::observability::dashboard_problems(shipped),
        Vec::<String>::new()
    );

    let route = get(
        admin,
        release_ns,
        ("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes"),
        named("HTTPRoute"),
    )
    .await;
    let spec = &route.data["spec"];
    assert_eq!(
        spec["parentRefs"],
        json!([{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public",
                "namespace": "gateway-system", "sectionName": "https"}])
    );
    assert_eq!(spec["hostnames"], json!(["scim.example.com"]));
    let scim_service = objects
        .iter()
        .find(|o| o.1 == "Service" && o.3.ends_with("-scim"))
        .expect("SCIM Service");
    assert_eq!(
        spec["rules"],
        json!([{"matches": [{"path": {"type": "PathPrefix", "value": "/scim/v2"}}],
                "backendRefs": [{"name": scim_service.3, "port": 80}]}])
    );
}

/// Run shell commands as a person would, with `kubeconfig`; their output.
fn run_sh(kubeconfig: &Path, script: &str) -> String {
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .env("KUBECONFIG", kubeconfig)
        .output()
        .expect("run bash");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{script}\nfailed:\n{text}");
    text
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
        "networkPolicy": {"scimFrom": [{"ipBlock": {"cidr": "203.0.113.0/24"}}],
                          "webhookFrom": [{"ipBlock": {"cidr": "10.0.0.0/8"}}],
                          "apiServer": {"cidrs": ["10.0.0.1/32", "fd00::1/128"], "ports": [443]},
                          "dns": {"enabled": false}},
        "serviceMonitor": {"enabled": true, "labels": {"release": "prometheus"}},
        "prometheusRule": {"enabled": true, "labels": {"release": "prometheus"},
                           "alertLabels": {"team": "platform"},
                           "disabled": ["KubeScimNoProvisioning"], "noRequestsFor": "6h"},
        "grafanaDashboard": {"enabled": true, "namespace": "monitoring",
                             "annotations": {"grafana_folder": "Kubernetes"}},
        "httpRoute": {"enabled": true, "hostnames": ["scim.example.com"]},
        "gateway": {"name": "public", "namespace": "gateway-system", "sectionName": "https"},
        "scim": {"replicas": 3, "resources": {"limits": {"memory": "512Mi"}},
                 "serviceAccount": {"annotations": {"azure.workload.identity/client-id": "x"}},
                 "headerReadTimeoutSeconds": 10, "requestDeadlineSeconds": 20,
                 "extensionAttributes": [format!("{CUSTOM_EXTENSION}:costCode"),
                                         format!("{CUSTOM_EXTENSION}:tags=string[]")]},
        "controller": {"replicas": 1,
                       "serviceAccount": {"create": false, "name": "platform-kube-scim"},
                       "subjects": {"kind": "UserAndGroup", "userPrefix": "oidc:",
                                    "groupAttribute": "displayName"},
                       "protectedRoles": ["cluster-admin", "admin"]},
        "rbac": {"bindableRoles": [{"namespace": "payments", "roles": ["deployer"]}],
                 "bindableClusterRoles": []},
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
    // The AKS example is for app routing: its ingress class, and a NetworkPolicy that
    // admits the namespace its controllers run in.
    assert_eq!(
        example["ingress"]["className"],
        "webapprouting.kubernetes.azure.com"
    );
    assert_eq!(
        example["networkPolicy"]["ingressController"]["namespaceSelector"]["matchLabels"]
            ["kubernetes.io/metadata.name"],
        "app-routing-system"
    );

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
        // The single replicaCount of the one-Deployment chart is gone: a values file that
        // still sets it is refused, not silently ignored.
        (json!({"replicaCount": 3}), "values.yaml"),
        (json!({"serviceAccount": {"create": true}}), "values.yaml"),
        (json!({"scim": {"replicas": 0}}), "values.yaml"),
        (
            json!({"scim": {"headerReadTimeoutSeconds": 0}}),
            "values.yaml",
        ),
        (
            json!({"scim": {"requestDeadlineSeconds": 60}}),
            "values.yaml",
        ),
        (
            json!({"scim": {"extensionAttributes": ["costCode"]}}),
            "values.yaml",
        ),
        (
            json!({"scim": {"extensionAttributes": [format!("{CUSTOM_EXTENSION}:a,b")]}}),
            "values.yaml",
        ),
        (
            json!({"controller": {"serviceAccount": {"create": false}}}),
            "values.yaml",
        ),
        (
            json!({"networkPolicy": {"apiServer": {"cidrs": ["kubernetes.default"]}}}),
            "values.yaml",
        ),
        (
            json!({"scim": {"enabled": false}, "ingress": {"enabled": true, "host": "scim.example.com"}}),
            "values.yaml",
        ),
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
        // An HTTPRoute needs a Gateway and a host name; alerts are known by name.
        (
            json!({"httpRoute": {"enabled": true, "hostnames": ["scim.example.com"]}}),
            "values.yaml",
        ),
        (
            json!({"httpRoute": {"enabled": true}, "gateway": {"name": "public"}}),
            "values.yaml",
        ),
        (
            json!({"prometheusRule": {"disabled": ["KubeScimNoSuchAlert"]}}),
            "values.yaml",
        ),
        (
            json!({"prometheusRule": {"noRequestsFor": "two hours"}}),
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

/// The ServiceAccount user and groups the API server gives a pod's token.
fn sa_identity(namespace: &str, name: &str) -> (String, Vec<String>) {
    (
        format!("system:serviceaccount:{namespace}:{name}"),
        vec![
            "system:serviceaccounts".to_string(),
            format!("system:serviceaccounts:{namespace}"),
            "system:authenticated".to_string(),
        ],
    )
}

/// One question to the API server's authorizer: may `who` do `verb` on
/// `group/resource[/subresource]` (named `name`) in `ns` (cluster-wide when None)?
struct Ask<'a> {
    verb: &'a str,
    group: &'a str,
    resource: &'a str,
    subresource: &'a str,
    ns: Option<&'a str>,
    name: &'a str,
}

fn ask<'a>(verb: &'a str, group: &'a str, resource: &'a str, ns: Option<&'a str>) -> Ask<'a> {
    Ask {
        verb,
        group,
        resource,
        subresource: "",
        ns,
        name: "",
    }
}

impl<'a> Ask<'a> {
    fn named(mut self, name: &'a str) -> Self {
        self.name = name;
        self
    }
    fn sub(mut self, subresource: &'a str) -> Self {
        self.subresource = subresource;
        self
    }
    fn describe(&self) -> String {
        let sub = if self.subresource.is_empty() {
            String::new()
        } else {
            format!("/{}", self.subresource)
        };
        format!(
            "{} {}.{}{sub} {:?} in {}",
            self.verb,
            self.resource,
            self.group,
            self.name,
            self.ns.unwrap_or("(cluster)")
        )
    }
}

async fn allowed(admin: &Client, who: &(String, Vec<String>), q: &Ask<'_>) -> bool {
    let sar: SubjectAccessReview = obj(json!({
        "spec": {
            "user": who.0,
            "groups": who.1,
            "resourceAttributes": {
                "namespace": q.ns, "verb": q.verb, "group": q.group, "resource": q.resource,
                "subresource": q.subresource, "name": q.name,
            }
        }
    }));
    Api::<SubjectAccessReview>::all(admin.clone())
        .create(&PostParams::default(), &sar)
        .await
        .expect("SubjectAccessReview")
        .status
        .is_some_and(|s| s.allowed)
}

/// Every answer as expected, or a list of the wrong ones.
async fn assert_access(admin: &Client, who: &(String, Vec<String>), may: bool, asks: &[Ask<'_>]) {
    let mut wrong = Vec::new();
    for q in asks {
        if allowed(admin, who, q).await != may {
            wrong.push(q.describe());
        }
    }
    assert!(
        wrong.is_empty(),
        "{} should be {} these, and is not:\n  {}",
        who.0,
        if may { "allowed" } else { "refused" },
        wrong.join("\n  ")
    );
}

fn pod_labels(d: &Deployment) -> BTreeMap<String, String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

/// Whether a Service's selector picks pods with `labels`.
fn selects(svc: &Service, labels: &BTreeMap<String, String>) -> bool {
    let selector = svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn target_ports(svc: &Service) -> Vec<String> {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default()
        .iter()
        .map(|p| match &p.target_port {
            Some(IntOrString::String(s)) => s.clone(),
            Some(IntOrString::Int(i)) => i.to_string(),
            None => p.port.to_string(),
        })
        .collect()
}

/// (named port, sources) of each ingress rule of a NetworkPolicy; sources `None` = any.
fn np_ingress(np: &NetworkPolicy) -> Vec<(Vec<String>, Option<Value>)> {
    let spec = np.spec.as_ref().expect("spec");
    spec.ingress
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|r| {
            let ports = r
                .ports
                .unwrap_or_default()
                .into_iter()
                .map(|p| match p.port {
                    Some(IntOrString::String(s)) => s,
                    Some(IntOrString::Int(i)) => i.to_string(),
                    None => "*".to_string(),
                })
                .collect();
            let from = r.from.map(|f| serde_json::to_value(f).expect("json"));
            (ports, from)
        })
        .collect()
}

/// (CIDRs, ports) of each egress rule of a NetworkPolicy; a peer that is not an ipBlock
/// appears as its JSON.
fn np_egress(np: &NetworkPolicy) -> Vec<(Vec<String>, Vec<String>)> {
    let spec = np.spec.as_ref().expect("spec");
    spec.egress
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|r| {
            let to =
                r.to.unwrap_or_default()
                    .into_iter()
                    .map(|p| match p.ip_block {
                        Some(b) if b.except.is_none() => b.cidr,
                        _ => serde_json::to_string(&p).expect("json"),
                    })
                    .collect();
            let ports = r
                .ports
                .unwrap_or_default()
                .into_iter()
                .map(|p| {
                    let port = match p.port {
                        Some(IntOrString::String(s)) => s,
                        Some(IntOrString::Int(i)) => i.to_string(),
                        None => "*".to_string(),
                    };
                    format!("{port}/{}", p.protocol.unwrap_or_else(|| "TCP".into()))
                })
                .collect();
            (to, ports)
        })
        .collect()
}

/// The API server as the cluster publishes it (what the chart looks up by default):
/// the `kubernetes` Service's IP and its Endpoints' addresses as /32 (/128), and 443
/// plus the Endpoints' ports; any address on 443 and 6443 when it publishes no Endpoints
/// (the local control plane advertises 127.0.0.1, which the API server never publishes).
async fn published_api_server(admin: &Client) -> (Vec<String>, Vec<String>) {
    let svc = Api::<Service>::namespaced(admin.clone(), "default")
        .get("kubernetes")
        .await
        .expect("Service default/kubernetes");
    let ep = Api::<Endpoints>::namespaced(admin.clone(), "default")
        .get_opt("kubernetes")
        .await
        .expect("Endpoints default/kubernetes");
    let mut ips = Vec::new();
    let mut ports = vec!["443/TCP".to_string()];
    for subset in ep.and_then(|e| e.subsets).unwrap_or_default() {
        for a in subset.addresses.unwrap_or_default() {
            ips.push(a.ip);
        }
        for p in subset.ports.unwrap_or_default() {
            ports.push(format!("{}/TCP", p.port));
        }
    }
    if ips.is_empty() {
        return (
            vec!["0.0.0.0/0".into(), "::/0".into()],
            vec!["443/TCP".into(), "6443/TCP".into()],
        );
    }
    ips.insert(0, svc.spec.and_then(|s| s.cluster_ip).expect("clusterIP"));
    let mut cidrs: Vec<String> = Vec::new();
    for ip in ips {
        let cidr = format!("{ip}/{}", if ip.contains(':') { 128 } else { 32 });
        if !cidrs.contains(&cidr) {
            cidrs.push(cidr);
        }
    }
    let mut unique_ports = Vec::new();
    for p in ports {
        if !unique_ports.contains(&p) {
            unique_ports.push(p);
        }
    }
    (cidrs, unique_ports)
}

fn deployment_named<'a>(
    objects: &'a [(String, String, Option<String>, String)],
    suffix: &str,
) -> &'a str {
    objects
        .iter()
        .find(|o| o.1 == "Deployment" && o.3.ends_with(suffix))
        .map(|o| o.3.as_str())
        .unwrap_or_else(|| panic!("a Deployment named *{suffix}: {objects:?}"))
}

fn service_account_of(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.service_account_name.clone())
        .expect("serviceAccountName")
}

async fn sa_token(admin: &Client, ns: &str, name: &str) -> String {
    let tr = Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .create_token_request(
            name,
            &PostParams::default(),
            &obj(json!({"spec": {"audiences": [], "expirationSeconds": 3600}})),
        )
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {name}: {e}"));
    tr.status.expect("token status").token
}

fn assert_hardened(c: &Container) {
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
}

fn port_names(c: &Container) -> Vec<String> {
    c.ports
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| p.name)
        .collect()
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

    // The local control plane advertises 127.0.0.1, which the API server never publishes
    // as the `kubernetes` Endpoints; on this test's own cluster, publish an address (an
    // unroutable TEST-NET one) the way real clusters do, so the chart's lookup of the API
    // server for the NetworkPolicies has something to find.
    if cluster.run_dir.is_some() {
        let eps: Api<Endpoints> = Api::namespaced(admin.clone(), "default");
        if eps
            .get_opt("kubernetes")
            .await
            .expect("endpoints")
            .is_none()
        {
            eps.create(
                &PostParams::default(),
                &obj(json!({
                    "metadata": {"name": "kubernetes"},
                    "subsets": [{"addresses": [{"ip": "192.0.2.10"}],
                                 "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]}]
                })),
            )
            .await
            .expect("publish the API server's address");
        }
    }

    // ---- install (NetworkPolicy left at its default: on)
    let scratch = repo_root().join("target").join(unique("e2e-helm"));
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    let mut values = json!({
        "ingress": {"enabled": true, "host": "scim.example.com", "className": "nginx",
                    "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"}},
        "scim": {"extensionAttributes": [format!("{CUSTOM_EXTENSION}:costCode")]},
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
    // The install notes: commands that work when copied.
    let notes = installed["notes"].as_str().unwrap_or_default();
    for want in [
        "://scim.example.com/scim/v2?aadOptscim062020",
        &format!("kube-scim token list -n {release_ns}"),
        &format!(
            "logs -l app.kubernetes.io/instance={release},app.kubernetes.io/component=scim --prefix"
        ),
    ] {
        assert!(notes.contains(want), "notes lack {want:?}:\n{notes}");
    }
    let objects = manifest_objects(installed["manifest"].as_str().expect("manifest"));
    let count = |kind: &str| objects.iter().filter(|o| o.1 == kind).count();
    for (kind, n) in [
        ("ServiceAccount", 2),
        ("ClusterRole", 2),
        ("ClusterRoleBinding", 2),
        // Per component in the release namespace, plus the bindable Role in team_ns.
        ("Role", 3),
        ("RoleBinding", 3),
        // SCIM, metrics, webhook.
        ("Service", 3),
        ("Deployment", 2),
        ("Ingress", 1),
        ("PodDisruptionBudget", 2),
        ("NetworkPolicy", 2),
        ("Secret", 1),
        ("ValidatingWebhookConfiguration", 1),
    ] {
        assert_eq!(count(kind), n, "{kind}s in the release: {objects:?}");
    }
    for o in &objects {
        assert!(exists(&admin, &release_ns, o).await, "{o:?} exists");
    }
    // The CRDs came with the chart (or were there already) and are served.
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    for crd in kube_scim::crd::all() {
        wait_established(&crds, &crd.metadata.name.expect("name")).await;
    }

    // Upgrading the CRDs as the chart README says (Helm never does): server-side apply over
    // what Helm's install created, idempotent.
    let crd_upgrade = readme_blocks("Upgrade", &release, &release_ns)
        .into_iter()
        .find(|b| b.contains("kubectl apply --server-side"))
        .expect("the README's CRD upgrade commands");
    let crd_apply = crd_upgrade
        .lines()
        .find(|l| l.starts_with("kubectl apply"))
        .expect("kubectl apply line");
    let applied = run_sh(
        &cluster.kubeconfig,
        &format!("cd {} && {crd_apply}", repo_root().display()),
    );
    for crd in kube_scim::crd::all() {
        let name = crd.metadata.name.expect("name");
        assert!(applied.contains(&name), "{name} applied: {applied}");
    }

    // ---- two Deployments from one image, each its own component, ServiceAccount, env.
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &release_ns);
    let scim_name = deployment_named(&objects, "-scim").to_string();
    let controller_name = deployment_named(&objects, "-controller").to_string();
    let scim_d = deployments.get(&scim_name).await.expect("scim deployment");
    let ctl_d = deployments
        .get(&controller_name)
        .await
        .expect("controller deployment");
    for d in [&scim_d, &ctl_d] {
        assert_eq!(d.spec.as_ref().expect("spec").replicas, Some(2));
        assert_hardened(&container(d));
    }
    assert_eq!(
        container(&scim_d).image,
        container(&ctl_d).image,
        "one image"
    );
    let scim_sa = service_account_of(&scim_d);
    let ctl_sa = service_account_of(&ctl_d);
    assert_ne!(scim_sa, ctl_sa, "two ServiceAccounts");
    let scim_c = container(&scim_d);
    let ctl_c = container(&ctl_d);
    let scim_env = env_of(&scim_c);
    let ctl_env = env_of(&ctl_c);
    assert_eq!(scim_env["KUBE_SCIM_ENABLE_SCIM"], "true");
    assert_eq!(scim_env["KUBE_SCIM_ENABLE_CONTROLLER"], "false");
    assert_eq!(ctl_env["KUBE_SCIM_ENABLE_SCIM"], "false");
    assert_eq!(ctl_env["KUBE_SCIM_ENABLE_CONTROLLER"], "true");
    assert_eq!(
        scim_env["KUBE_SCIM_BASE_URL"],
        "https://scim.example.com/scim/v2"
    );
    assert_eq!(ctl_env["KUBE_SCIM_USER_PREFIX"], "");
    assert_eq!(ctl_env["KUBE_SCIM_MAX_FANOUT"], "5000000");
    assert_eq!(ctl_env["KUBE_SCIM_USER_STATUS_WRITES_PER_SECOND"], "100");
    // Every SCIM answer within 25 s by default (Entra gives up after 60).
    assert_eq!(scim_env["KUBE_SCIM_REQUEST_DEADLINE_SECONDS"], "25");
    // The webhook (its key in a mounted Secret) moves with the controller.
    assert!(ctl_env.contains_key("KUBE_SCIM_WEBHOOK_CERT_FILE"));
    for key in ["KUBE_SCIM_WEBHOOK_CERT_FILE", "KUBE_SCIM_LEASE_NAME"] {
        assert!(!scim_env.contains_key(key), "SCIM pods get no {key}");
    }
    assert!(!ctl_env.contains_key("KUBE_SCIM_LISTEN"));
    assert_eq!(port_names(&scim_c), vec!["scim", "probes"]);
    assert_eq!(port_names(&ctl_c), vec!["probes", "webhook"]);
    assert!(
        scim_c.volume_mounts.clone().unwrap_or_default().is_empty(),
        "the webhook's key is not mounted in SCIM pods"
    );

    // ---- what the internet reaches: the Ingress → the SCIM Service → SCIM pods' SCIM port.
    let scim_pods = pod_labels(&scim_d);
    let ctl_pods = pod_labels(&ctl_d);
    let services: Api<Service> = Api::namespaced(admin.clone(), &release_ns);
    let ingress_name = objects
        .iter()
        .find(|o| o.1 == "Ingress")
        .expect("ingress")
        .3
        .clone();
    let ingress = Api::<Ingress>::namespaced(admin.clone(), &release_ns)
        .get(&ingress_name)
        .await
        .expect("ingress");
    let backends: Vec<String> = ingress
        .spec
        .and_then(|s| s.rules)
        .unwrap_or_default()
        .into_iter()
        .flat_map(|r| r.http.map(|h| h.paths).unwrap_or_default())
        .filter_map(|p| p.backend.service.map(|s| s.name))
        .collect();
    assert_eq!(backends.len(), 1, "{backends:?}");
    let backend = services.get(&backends[0]).await.expect("ingress backend");
    assert!(
        selects(&backend, &scim_pods),
        "the Ingress leads to SCIM pods"
    );
    assert!(
        !selects(&backend, &ctl_pods),
        "no controller pod is behind the Ingress"
    );
    assert_eq!(
        target_ports(&backend),
        vec!["scim"],
        "the SCIM Service carries the SCIM port only (no probes, no metrics)"
    );
    for o in objects.iter().filter(|o| o.1 == "Service") {
        let svc = services.get(&o.3).await.expect("service");
        if selects(&svc, &ctl_pods) {
            assert!(
                !backends.contains(&o.3),
                "Service {} selects controller pods and is behind the Ingress",
                o.3
            );
            assert!(!target_ports(&svc).contains(&"scim".to_string()), "{}", o.3);
        }
        if target_ports(&svc).contains(&"probes".to_string()) {
            // The metrics Service: in-cluster only, nothing else on it.
            assert_eq!(target_ports(&svc), vec!["probes"], "{}", o.3);
            assert_eq!(
                svc.spec.as_ref().and_then(|s| s.type_.as_deref()),
                Some("ClusterIP"),
                "{}",
                o.3
            );
        }
    }

    // ---- NetworkPolicies, on by default: in, the SCIM port from the ingress controller
    // and probes from monitoring; out, the API server (as the cluster publishes it) + DNS.
    let nps: Api<NetworkPolicy> = Api::namespaced(admin.clone(), &release_ns);
    let np_for = |labels: &BTreeMap<String, String>| {
        let labels = labels.clone();
        let nps = nps.clone();
        async move {
            nps.list(&ListParams::default())
                .await
                .expect("network policies")
                .items
                .into_iter()
                .filter(|np| {
                    let sel = np
                        .spec
                        .as_ref()
                        .and_then(|s| s.pod_selector.as_ref())
                        .and_then(|s| s.match_labels.clone())
                        .unwrap_or_default();
                    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
                })
                .collect::<Vec<_>>()
        }
    };
    let (api_cidrs, api_ports) = published_api_server(&admin).await;
    assert!(!api_cidrs.is_empty());
    let dns_rule = (
        vec![serde_json::to_string(&json!({
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }))
        .expect("json")],
        vec!["53/UDP".to_string(), "53/TCP".to_string()],
    );
    let want_egress = vec![(api_cidrs.clone(), api_ports.clone()), dns_rule.clone()];
    let monitoring = json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]);
    for (what, labels) in [("scim", &scim_pods), ("controller", &ctl_pods)] {
        let found = np_for(labels).await;
        assert_eq!(found.len(), 1, "one NetworkPolicy selects the {what} pods");
        let np = &found[0];
        let types = np
            .spec
            .as_ref()
            .and_then(|s| s.policy_types.clone())
            .unwrap_or_default();
        assert_eq!(types, vec!["Ingress", "Egress"], "{what}");
        let mut egress = np_egress(np);
        // DNS peers come back from the API server in its own field order.
        for rule in &mut egress {
            for peer in &mut rule.0 {
                if let Ok(v) = serde_json::from_str::<Value>(peer) {
                    *peer = serde_json::to_string(&v).expect("json");
                }
            }
        }
        assert_eq!(egress, want_egress, "{what}: egress to the API server only");
        let ingress = np_ingress(np);
        let want: Vec<(Vec<String>, Option<Value>)> = if what == "scim" {
            vec![
                (
                    vec!["scim".into()],
                    Some(
                        json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]),
                    ),
                ),
                (vec!["probes".into()], Some(monitoring.clone())),
            ]
        } else {
            vec![
                (vec!["probes".into()], Some(monitoring.clone())),
                // From the API server: its address is not a pod's, so any source.
                (vec!["webhook".into()], None),
            ]
        };
        assert_eq!(ingress, want, "{what}: ingress");
    }

    // ---- RBAC: each ServiceAccount holds its side's rights and is refused the other's.
    let scim_who = sa_identity(&release_ns, &scim_sa);
    let ctl_who = sa_identity(&release_ns, &ctl_sa);
    let lease_name = ctl_env["KUBE_SCIM_LEASE_NAME"].clone();
    // A userName claim of the SCIM store (`scim-username-<hash>`).
    let claim = format!("scim-username-{}", "0a".repeat(20));
    let use_lease = kube_scim::auth::usage::lease_name("helm-e2e");
    let rns = Some(release_ns.as_str());
    let tns = Some(team_ns.as_str());
    const SCIM: &str = "scim.kubescim.io";
    const RBAC: &str = "rbac.authorization.k8s.io";
    const COORD: &str = "coordination.k8s.io";
    // What the SCIM side does.
    let scim_side = || {
        vec![
            ask("create", SCIM, "scimusers", None),
            ask("update", SCIM, "scimgroups", None),
            ask("watch", SCIM, "scimgroupmembers", None),
            ask("deletecollection", SCIM, "scimgroupmembers", None),
            ask("list", "", "secrets", rns),
            ask("watch", "", "secrets", rns),
            ask("create", COORD, "leases", rns),
            ask("update", COORD, "leases", rns).named(&claim),
            ask("update", COORD, "leases", rns).named(&use_lease),
        ]
    };
    // What the controller side does.
    let controller_side = || {
        vec![
            ask("bind", RBAC, "clusterroles", None).named("edit"),
            ask("bind", RBAC, "roles", tns).named("deployer"),
            ask("create", RBAC, "rolebindings", tns),
            ask("patch", RBAC, "clusterrolebindings", None),
            ask("delete", RBAC, "rolebindings", tns),
            ask("list", "", "namespaces", None),
            ask(
                "create",
                "authorization.k8s.io",
                "subjectaccessreviews",
                None,
            ),
            ask("patch", SCIM, "grouprolemappings", tns),
            ask("patch", SCIM, "clustergrouprolemappings", None).sub("status"),
            ask("patch", SCIM, "scimusers", None).sub("status"),
            ask("patch", SCIM, "scimgroups", None).sub("status"),
            ask("create", "events.k8s.io", "events", tns),
            ask("update", COORD, "leases", rns).named(&lease_name),
        ]
    };
    assert_access(&admin, &scim_who, true, &scim_side()).await;
    assert_access(&admin, &ctl_who, true, &controller_side()).await;
    // A stolen SCIM pod: no binding, no bind, no namespaces, no mappings, no status, no
    // SubjectAccessReviews, and no way to mint a token (no Secret writes).
    let mut scim_refused = controller_side();
    // Except the leader Lease: RBAC cannot scope the SCIM side's Lease writes (name claims
    // are hashes) by name, so it could disturb the election; docs/security.md says so.
    scim_refused.retain(|q| q.resource != "leases");
    scim_refused.extend([
        ask("get", "", "namespaces", None).named(&team_ns),
        ask("update", RBAC, "clusterrolebindings", None),
        ask("create", "", "secrets", rns),
        ask("update", "", "secrets", rns).named("kube-scim-token-helm-e2e"),
        ask("patch", "", "secrets", rns).named("kube-scim-token-helm-e2e"),
        ask("delete", "", "secrets", rns).named("kube-scim-token-helm-e2e"),
        ask("list", "", "secrets", tns),
        ask("get", "", "secrets", Some("kube-system")),
        ask("update", SCIM, "grouprolemappings", tns),
        ask("create", SCIM, "clustergrouprolemappings", None),
        ask("create", "", "events", tns),
        ask("create", COORD, "leases", Some("kube-system")),
        ask("impersonate", "", "users", None).named("admin"),
        ask("impersonate", "", "serviceaccounts", rns).named(&ctl_sa),
        ask("create", "", "serviceaccounts", rns)
            .sub("token")
            .named(&ctl_sa),
        ask("create", "", "pods", rns),
        ask("create", "", "pods", rns).sub("exec"),
    ]);
    assert_access(&admin, &scim_who, false, &scim_refused).await;
    // The controller: no Secrets at all (no tokens, no webhook key), no SCIM writes, no
    // Lease but its own.
    let webhook_tls = format!("{release}-kube-scim-webhook-tls");
    let mut ctl_refused = scim_side();
    // (It reads the SCIM resources, and may create a Lease: RBAC cannot scope `create` by
    // name, and a Lease it creates is read by nobody.)
    ctl_refused.retain(|q| {
        let reads_scim = q.group == SCIM && ["get", "list", "watch"].contains(&q.verb);
        let creates_lease = q.resource == "leases" && q.verb == "create";
        !(reads_scim || creates_lease)
    });
    ctl_refused.extend([
        ask("get", "", "secrets", rns).named("kube-scim-token-helm-e2e"),
        ask("get", "", "secrets", rns).named(&webhook_tls),
        ask("list", "", "secrets", None),
        ask("update", SCIM, "scimusers", None),
        ask("patch", SCIM, "scimusers", None),
        ask("delete", SCIM, "scimgroups", None),
        ask("create", SCIM, "scimgroupmembers", None),
        ask("update", SCIM, "scimgroupmembers", None),
        ask("delete", COORD, "leases", rns).named(&lease_name),
        ask("update", COORD, "leases", rns).named("kube-scim-token-use-entra"),
        ask("bind", RBAC, "clusterroles", None).named("cluster-admin"),
        ask("bind", RBAC, "clusterroles", None).named(&unlisted),
        ask("escalate", RBAC, "clusterroles", None),
        ask("create", RBAC, "clusterroles", None),
        ask("update", SCIM, "grouprolemappings", tns),
        ask("impersonate", "", "users", None).named("admin"),
        ask("create", "", "pods", rns),
    ]);
    assert_access(&admin, &ctl_who, false, &ctl_refused).await;
    // The bind ceiling is exactly the default list, on the controller's ClusterRole only.
    for o in objects.iter().filter(|o| o.1 == "ClusterRole") {
        let rules = cluster_roles
            .get(&o.3)
            .await
            .expect("chart ClusterRole")
            .rules
            .unwrap_or_default();
        let bind: Vec<_> = rules
            .iter()
            .filter(|r| r.verbs.iter().any(|v| v == "bind" || v == "*"))
            .collect();
        if o.3.ends_with("-controller") {
            assert_eq!(bind.len(), 1, "one bind rule: {bind:?}");
            assert_eq!(
                bind[0].resource_names.clone().unwrap_or_default(),
                vec!["view", "edit", "admin"]
            );
        } else {
            assert!(bind.is_empty(), "{}: {bind:?}", o.3);
        }
        assert!(
            !rules.iter().any(|r| r
                .resources
                .as_deref()
                .unwrap_or_default()
                .iter()
                .any(|res| res == "secrets" || res == "*")),
            "no cluster-wide Secrets: {rules:?}"
        );
    }

    // The admission webhook: registered for both mapping kinds, failing closed, with the
    // CA of the certificate Helm generated for its Service, which selects controller pods.
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
    let webhook_svc = services.get(&service.name).await.expect("webhook Service");
    assert!(
        selects(&webhook_svc, &ctl_pods),
        "the webhook is the controller's"
    );
    assert!(
        !selects(&webhook_svc, &scim_pods),
        "SCIM pods serve no webhook"
    );
    assert_eq!(target_ports(&webhook_svc), vec!["webhook"]);
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

    // ---- upgrade: values change per component, and the new revision takes. The API
    // server's address can be given (NetworkPolicy can't name it), DNS turned off.
    // The optional parts need their kinds served: stand-ins where the cluster has none.
    let mut stub_crds = Vec::new();
    for (group, version, kind, plural) in [
        (
            "monitoring.coreos.com",
            "v1",
            "PrometheusRule",
            "prometheusrules",
        ),
        ("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes"),
    ] {
        if ensure_stub_crd(&admin, group, version, kind, plural).await {
            stub_crds.push(format!("{plural}.{group}"));
        }
    }
    merge(
        &mut values,
        &json!({"prometheusRule": {"enabled": true, "labels": {"release": "prometheus"}},
                "grafanaDashboard": {"enabled": true},
                "httpRoute": {"enabled": true, "hostnames": ["scim.example.com"]},
                "gateway": {"name": "public", "namespace": "gateway-system", "sectionName": "https"}}),
    );
    merge(
        &mut values,
        &json!({"scim": {"replicas": 3}, "logging": {"level": "debug"},
                "controller": {"subjects": {"userPrefix": "oidc:"}, "maxFanout": 0,
                               "userStatusWritesPerSecond": 0},
                "networkPolicy": {"apiServer": {"cidrs": ["192.0.2.0/24"], "ports": [6443]},
                                  "dns": {"enabled": false}}}),
    );
    std::fs::write(&values_file, values.to_string()).expect("values");
    let upgraded = helm(
        &python,
        &["upgrade", &kubeconfig, &release_ns, &release, &chart, &vf],
    );
    assert_eq!(upgraded["status"], "deployed", "{upgraded}");
    assert_eq!(upgraded["revision"], 2);
    let upgraded_objects = manifest_objects(upgraded["manifest"].as_str().expect("manifest"));
    check_monitoring_and_route(&admin, &release_ns, &upgraded_objects).await;
    let scim_d = deployments.get(&scim_name).await.expect("scim deployment");
    let ctl_d = deployments
        .get(&controller_name)
        .await
        .expect("controller deployment");
    assert_eq!(scim_d.spec.as_ref().expect("spec").replicas, Some(3));
    assert_eq!(ctl_d.spec.as_ref().expect("spec").replicas, Some(2));
    let scim_c = container(&scim_d);
    let ctl_c = container(&ctl_d);
    let ctl_env = env_of(&ctl_c);
    assert_eq!(ctl_env["KUBE_SCIM_USER_PREFIX"], "oidc:");
    // 0 (unlimited) is a value, not "unset": the template must not replace it.
    assert_eq!(ctl_env["KUBE_SCIM_MAX_FANOUT"], "0");
    assert_eq!(ctl_env["KUBE_SCIM_USER_STATUS_WRITES_PER_SECOND"], "0");
    assert_eq!(ctl_env["KUBE_SCIM_LOG"], "debug");
    assert_eq!(env_of(&scim_c)["KUBE_SCIM_LOG"], "debug");
    for np in nps.list(&ListParams::default()).await.expect("nps").items {
        assert_eq!(
            np_egress(&np),
            vec![(
                vec!["192.0.2.0/24".to_string()],
                vec!["6443/TCP".to_string()]
            )],
            "explicit API server, no DNS"
        );
    }
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
    // at the controller below through `clientConfig.url`, with a certificate for 127.0.0.1
    // (the chart's is for the Service's name) in the directory that stands in for the
    // Secret's mount.
    let local_certs = scratch.join("local-webhook-cert");
    let (ca, crt, key) = crate::admission::make_certs(&local_certs);
    let ca_pem = std::fs::read(&ca).expect("ca");
    for (name, path) in [("ca.crt", &ca), ("tls.crt", &crt), ("tls.key", &key)] {
        std::fs::copy(path, cert_dir.join(name)).expect("copy cert");
    }

    // ---- both components, each as its own ServiceAccount, with its own environment
    let scim_token = sa_token(&admin, &release_ns, &scim_sa).await;
    let ctl_token = sa_token(&admin, &release_ns, &ctl_sa).await;
    let scim_kubeconfig = scratch.join("scim-kubeconfig");
    let ctl_kubeconfig = scratch.join("controller-kubeconfig");
    write_token_kubeconfig(&cluster.kubeconfig, &scim_token, &scim_kubeconfig);
    write_token_kubeconfig(&cluster.kubeconfig, &ctl_token, &ctl_kubeconfig);
    let mut scim_op = start_operator("scim", &scim_c, &release_ns, &scim_kubeconfig, &[]);
    let mut ctl_op = start_operator(
        "controller",
        &ctl_c,
        &release_ns,
        &ctl_kubeconfig,
        &[("/etc/kube-scim/webhook".to_string(), cert_dir.clone())],
    );
    // Each serves only its part: no SCIM listener in the controller process.
    assert_eq!(
        http_status(&format!("{}/ServiceProviderConfig", ctl_op.scim_url)),
        None,
        "the controller process serves no SCIM"
    );
    vwcs.patch(
        &vwc_name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Json::<()>(
            serde_json::from_value(json!([
                {"op": "remove", "path": "/webhooks/0/clientConfig/service"},
                {"op": "add", "path": "/webhooks/0/clientConfig/url",
                 "value": format!("{}/validate-mappings", ctl_op.webhook_url)},
                {"op": "replace", "path": "/webhooks/0/clientConfig/caBundle",
                 "value": crate::admission::base64(&ca_pem)},
            ]))
            .expect("json patch"),
        ),
    )
    .await
    .expect("point the webhook at the local controller");
    // The webhook, running with the controller's RBAC only, refuses a mapping author
    // without `bind` (SubjectAccessReviews and role reads are enough) and admits the admin.
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
        .args([
            "token",
            "create",
            "helm-e2e",
            "--namespace",
            &release_ns,
            "--expires-in",
            "30d",
        ])
        .output()
        .expect("token create");
    assert!(
        out.status.success(),
        "token create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let http = reqwest::Client::new();
    let users_url = format!("{}/Users", scim_op.scim_url);
    let r = http.get(&users_url).send().await.expect("GET /Users");
    assert_eq!(r.status(), 401, "no token, no SCIM");
    // The token Secret reaches the SCIM side's cache through its watch.
    poll_until(TIMEOUT, "GET /Users with the token is 200", || async {
        let r = http.get(&users_url).bearer_auth(&token).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;

    // Probes and metrics are not on the SCIM port: whoever reaches it through the
    // Ingress gets a SCIM 404 there, token or not.
    let scim_root = scim_op
        .scim_url
        .strip_suffix("/scim/v2")
        .expect("base")
        .to_string();
    for path in ["/metrics", "/healthz", "/readyz"] {
        for with_token in [false, true] {
            let mut req = http.get(format!("{scim_root}{path}"));
            if with_token {
                req = req.bearer_auth(&token);
            }
            let r = req.send().await.expect("GET on the SCIM port");
            assert_eq!(r.status(), 404, "{path} on the SCIM port");
            let body: Value = r.json().await.expect("a SCIM error body");
            assert_eq!(body["status"], "404", "{path}: {body}");
            assert_eq!(
                body["schemas"][0], "urn:ietf:params:scim:api:messages:2.0:Error",
                "{path}"
            );
        }
    }

    // `scim.extensionAttributes` reaches the SCIM component: the extension is served.
    let r = http
        .get(format!("{}/Schemas/{CUSTOM_EXTENSION}", scim_op.scim_url))
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET /Schemas/<extension>");
    assert_eq!(r.status(), 200, "the configured extension is served");
    let ext: Value = r.json().await.expect("schema");
    assert_eq!(ext["attributes"][0]["name"], "costCode", "{ext}");

    // A user and a group through SCIM (written with the SCIM ServiceAccount's rights).
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
        .post(format!("{}/Groups", scim_op.scim_url))
        .bearer_auth(&token)
        .json(
            &json!({"schemas": [GROUP_SCHEMA], "displayName": group_name,
                      "members": [{"value": user["id"]}]}),
        )
        .send()
        .await
        .expect("POST /Groups");
    assert_eq!(r.status(), 201);

    // Token last use: the SCIM side recorded it in a Lease (no Secret write), and
    // `token list` shows it.
    let leases: Api<Lease> = Api::namespaced(admin.clone(), &release_ns);
    let lease = poll_until(TIMEOUT, "the token's use Lease", || async {
        leases.get_opt(&use_lease).await.ok().flatten()
    })
    .await;
    let used = kube_scim::auth::usage::last_use(&lease).expect("renewTime");
    let age = chrono::Utc::now() - used;
    assert!(
        age < chrono::TimeDelta::minutes(2) && age > chrono::TimeDelta::seconds(-30),
        "last use {used} is recent"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_kube-scim"))
        .env("KUBECONFIG", &cluster.kubeconfig)
        .args(["token", "list", "--namespace", &release_ns])
        .output()
        .expect("token list");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        listed
            .lines()
            .next()
            .is_some_and(|h| h.contains("LAST USED")),
        "{listed}"
    );
    let row = listed
        .lines()
        .find(|l| l.starts_with("helm-e2e "))
        .unwrap_or_else(|| panic!("helm-e2e in {listed}"));
    assert!(
        row.contains(&used.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            && row.contains(" ago)"),
        "{row}"
    );
    // The token's expiry, as a metric of the SCIM side.
    let expires_at = secrets
        .get("kube-scim-token-helm-e2e")
        .await
        .expect("token Secret")
        .metadata
        .annotations
        .and_then(|a| a.get("scim.kubescim.io/expires-at").cloned())
        .expect("expiry annotation");
    let expires_at = chrono::DateTime::parse_from_rfc3339(&expires_at)
        .expect("RFC 3339")
        .timestamp();
    let metrics = http
        .get(format!("{}/metrics", scim_op.probe_url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics.contains(&format!(
            "kube_scim_token_expiry_timestamp_seconds{{token=\"helm-e2e\"}} {expires_at}"
        )),
        "{metrics}"
    );

    // A mapping to `edit` (bindable): the controller, in its own process, binds the user
    // the SCIM side stored, with the upgraded prefix.
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
    // the binding; the controller says so on the mapping and in an Event, and keeps running.
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
    // The leader's metrics count it: what KubeScimMappingsRefused alerts on.
    poll_until(
        TIMEOUT,
        "kube_scim_mappings{reason=BindingRefused} 1",
        || async {
            let text = crate::harness::metrics_text(&http, &ctl_op.probe_url).await?;
            (text.contains("kube_scim_leader 1")
                && text.contains("kube_scim_mappings{reason=\"BindingRefused\"} 1"))
            .then_some(())
        },
    )
    .await;
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
    for op in [&mut scim_op, &mut ctl_op] {
        op.assert_alive();
        assert_eq!(
            http_status(&format!("{}/readyz", op.probe_url)),
            Some(200),
            "still ready"
        );
    }
    let r = http
        .get(&users_url)
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET /Users");
    assert_eq!(r.status(), 200, "still serving SCIM");
    let ctl_metrics = http
        .get(format!("{}/metrics", ctl_op.probe_url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(ctl_metrics.contains("kube_scim_leader 1"), "{ctl_metrics}");

    // Across processes, revocation is immediate: SCIM deactivates, the controller's own
    // watch takes the subject out of the binding.
    let r = http
        .patch(format!("{users_url}/{}", user["id"].as_str().expect("id")))
        .bearer_auth(&token)
        .json(
            &json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                      "Operations": [{"op": "replace", "path": "active", "value": false}]}),
        )
        .send()
        .await
        .expect("PATCH active=false");
    assert_eq!(r.status(), 200);
    poll_until(TIMEOUT, "the deactivated user is unbound", || async {
        let list = rbs
            .list(&ListParams::default().labels("app.kubernetes.io/managed-by=kube-scim"))
            .await
            .ok()?;
        (!list.items.iter().any(|rb| {
            rb.subjects
                .as_deref()
                .unwrap_or_default()
                .iter()
                .any(|s| s.name == subject)
        }))
        .then_some(())
    })
    .await;

    // And for real, as each ServiceAccount: the SCIM one reads Secrets in its namespace
    // only and cannot bind; the controller one reads no Secrets and writes no users.
    let scim_client = client_for(&cluster.kubeconfig, Some(&scim_token)).await;
    let ctl_client = client_for(&cluster.kubeconfig, Some(&ctl_token)).await;
    Api::<Secret>::namespaced(scim_client.clone(), &release_ns)
        .list(&ListParams::default())
        .await
        .expect("the SCIM SA lists token Secrets in its namespace");
    let forbidden = |what: &str, result: Result<(), kube::Error>| match result {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("{what}: want 403, got {other:?}"),
    };
    fn ok<T>(r: Result<T, kube::Error>) -> Result<(), kube::Error> {
        r.map(|_| ())
    }
    forbidden(
        &format!("SCIM SA: Secrets in {team_ns}"),
        ok(Api::<Secret>::namespaced(scim_client.clone(), &team_ns)
            .list(&ListParams::default())
            .await),
    );
    forbidden(
        "SCIM SA: Secrets cluster-wide",
        ok(Api::<Secret>::all(scim_client.clone())
            .list(&ListParams::default())
            .await),
    );
    forbidden(
        "SCIM SA: a Secret in default",
        ok(Api::<Secret>::namespaced(scim_client.clone(), "default")
            .get("anything")
            .await),
    );
    let sneaky: RoleBinding = obj(json!({
        "metadata": {"name": "stolen-scim-pod"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "mallory"}],
    }));
    forbidden(
        "SCIM SA: create a RoleBinding to edit",
        ok(
            Api::<RoleBinding>::namespaced(scim_client.clone(), &team_ns)
                .create(&PostParams::default(), &sneaky)
                .await,
        ),
    );
    forbidden(
        "SCIM SA: mint a token (create a token Secret)",
        ok(Api::<Secret>::namespaced(scim_client.clone(), &release_ns)
            .create(
                &PostParams::default(),
                &kube_scim::auth::store::new_secret(
                    "mallory",
                    &kube_scim::auth::TokenHash::of("kscim_mallory"),
                    None,
                ),
            )
            .await),
    );
    forbidden(
        "controller SA: list token Secrets",
        ok(Api::<Secret>::namespaced(ctl_client.clone(), &release_ns)
            .list(&ListParams::default())
            .await),
    );
    forbidden(
        "controller SA: create a ScimUser",
        ok(Api::<kube_scim::crd::ScimUser>::all(ctl_client.clone())
            .create(
                &PostParams::default(),
                &obj(json!({
                    "apiVersion": "scim.kubescim.io/v1alpha1", "kind": "ScimUser",
                    "metadata": {"name": uuid::Uuid::new_v4().to_string()},
                    "spec": {"userName": "mallory@example.com", "active": true},
                })),
            )
            .await),
    );

    // ---- uninstall, as the chart README says. Step 1 (while the controller runs):
    // deleting the mappings prunes their bindings (finalizers, with the controller's RBAC).
    // Its commands delete every mapping in the cluster: on this test's own cluster they run
    // verbatim; on a shared one the test deletes only its own.
    let own_cluster = cluster.run_dir.is_some();
    let uninstall = readme_blocks("Uninstall", &release, &release_ns);
    assert_eq!(uninstall.len(), 3, "README uninstall blocks: {uninstall:?}");
    let (step1, helm_line) = uninstall[0]
        .split_once("\nhelm uninstall")
        .map(|(a, b)| (a.to_string(), format!("helm uninstall{b}")))
        .expect("step 1, then helm uninstall");
    assert_eq!(
        helm_line.trim(),
        format!("helm uninstall {release} --namespace {release_ns}")
    );
    if own_cluster {
        let out = run_sh(&cluster.kubeconfig, &step1);
        assert!(
            out.contains("No resources found"),
            "no managed binding left: {out}"
        );
    } else {
        for name in ["team-edit", "team-deployer", "team-unlisted"] {
            mappings
                .delete(name, &DeleteParams::default())
                .await
                .expect("delete mapping");
        }
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
    scim_op.assert_alive();
    ctl_op.assert_alive();
    scim_op.stop();
    ctl_op.stop();

    // Step 2: every object of the release is gone (the optional ones of the upgrade too).
    let uninstalled = helm(&python, &["uninstall", &kubeconfig, &release_ns, &release]);
    assert_eq!(uninstalled["status"], "uninstalled", "{uninstalled}");
    for o in objects.iter().chain(&upgraded_objects) {
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
    // What stays, as the README's table says: the CRDs (Helm policy), the SCIM data, the
    // token Secret, the Leases the operator wrote.
    for crd in kube_scim::crd::all() {
        let name = crd.metadata.name.expect("name");
        assert!(crds.get_opt(&name).await.expect("get CRD").is_some());
    }
    let users: Api<kube_scim::crd::ScimUser> = Api::all(admin.clone());
    assert!(
        !users
            .list(&ListParams::default())
            .await
            .expect("users")
            .items
            .is_empty(),
        "ScimUsers stay"
    );
    assert!(
        secrets
            .get_opt("kube-scim-token-helm-e2e")
            .await
            .expect("get")
            .is_some(),
        "the token Secret stays"
    );
    let leases: Api<Lease> = Api::namespaced(admin.clone(), &release_ns);
    let lease_names: Vec<String> = leases
        .list(&ListParams::default())
        .await
        .expect("leases")
        .items
        .into_iter()
        .filter_map(|l| l.metadata.name)
        .collect();
    for want in ["kube-scim-controller", "kube-scim-token-use-helm-e2e"] {
        assert!(
            lease_names.iter().any(|n| n == want),
            "{want} in {lease_names:?}"
        );
    }

    if own_cluster {
        // "If the controller is already gone": a mapping held by its finalizer and a managed
        // binding left behind; the README's commands release both.
        let leftover: DynamicObject = obj(json!({
            "apiVersion": "scim.kubescim.io/v1alpha1",
            "kind": "GroupRoleMapping",
            "metadata": {"name": "leftover", "namespace": team_ns,
                         "finalizers": ["scim.kubescim.io/bindings"]},
            "spec": {"groups": [{"displayName": "Leftovers"}],
                     "roleRef": {"kind": "ClusterRole", "name": "view"}},
        }));
        mappings
            .create(&PostParams::default(), &leftover)
            .await
            .expect("create leftover mapping");
        mappings
            .delete("leftover", &DeleteParams::default())
            .await
            .expect("delete leftover mapping");
        rbs.create(
            &PostParams::default(),
            &obj(json!({
                "metadata": {"name": "kube-scim-leftover",
                             "labels": {"app.kubernetes.io/managed-by": "kube-scim"}},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}],
            })),
        )
        .await
        .expect("create leftover binding");
        let held = mappings
            .get("leftover")
            .await
            .expect("held by its finalizer");
        assert!(held.metadata.deletion_timestamp.is_some());
        run_sh(&cluster.kubeconfig, &uninstall[2]);
        poll_until(TIMEOUT, "leftover mapping and binding gone", || async {
            let m = mappings.get_opt("leftover").await.ok()?;
            let b = rbs.get_opt("kube-scim-leftover").await.ok()?;
            (m.is_none() && b.is_none()).then_some(())
        })
        .await;

        // "To remove kube-scim entirely": the CRDs (with their objects) and the namespace.
        run_sh(&cluster.kubeconfig, &uninstall[1]);
        for crd in kube_scim::crd::all() {
            let name = crd.metadata.name.expect("name");
            poll_until(TIMEOUT, &format!("CRD {name} gone"), || async {
                crds.get_opt(&name).await.ok()?.is_none().then_some(())
            })
            .await;
        }
        let ns = namespaces
            .get_opt(&release_ns)
            .await
            .expect("get namespace");
        assert!(
            ns.is_none_or(|n| n.metadata.deletion_timestamp.is_some()),
            "the release namespace goes"
        );
    }
    for name in &stub_crds {
        let _ = crds.delete(name, &DeleteParams::default()).await;
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
