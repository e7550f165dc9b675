//! The one test harness: starts (or reuses) the control plane once per test run,
//! installs the CRDs, and gives each test its own namespace and unique names.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

pub const FIELD_MANAGER: &str = "kube-scim-tests";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The kubeconfig every test uses: `KUBECONFIG` when set (an existing cluster),
/// else the local control plane, started once per test run.
pub fn kubeconfig_path() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Ok(p) = std::env::var("KUBECONFIG") {
            if !p.is_empty() {
                return PathBuf::from(p);
            }
        }
        let out = Command::new(repo_root().join("scripts/control-plane"))
            .arg("up")
            .output()
            .expect("run scripts/control-plane up");
        assert!(
            out.status.success(),
            "scripts/control-plane up failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        PathBuf::from(path)
    })
}

/// A kube client for the admin identity. A new client per test: a client is tied
/// to the tokio runtime it was made on, and every `#[tokio::test]` has its own.
pub async fn admin_client() -> Client {
    let kc = Kubeconfig::read_from(kubeconfig_path()).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    Client::try_from(config).expect("client")
}

/// A client authenticated with a bearer token (e.g. a ServiceAccount's) against the same server.
pub async fn token_client(token: &str) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig_path()).expect("read kubeconfig");
    let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.to_string().into()),
        ..Default::default()
    };
    Client::try_from(config).expect("client")
}

/// Install (server-side apply) the CRDs from the Rust types, once per run, and wait
/// until they are Established.
pub async fn ensure_crds(client: &Client) {
    static DONE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    DONE.get_or_init(|| async {
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        for crd in kube_scim::crd::all() {
            let name = crd.metadata.name.clone().expect("crd name");
            crds.patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&crd),
            )
            .await
            .unwrap_or_else(|e| panic!("apply CRD {name}: {e}"));
            poll_until(
                Duration::from_secs(30),
                &format!("CRD {name} Established"),
                || async {
                    let c = crds.get(&name).await.ok()?;
                    let established = c
                        .status?
                        .conditions?
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True");
                    established.then_some(())
                },
            )
            .await;
        }
    })
    .await;
}

/// Everything a test needs: an admin client, CRDs installed, its own namespace.
pub struct TestEnv {
    pub client: Client,
    pub namespace: String,
    pub kubeconfig: PathBuf,
}

impl TestEnv {
    pub async fn new(test: &str) -> TestEnv {
        let client = admin_client().await;
        ensure_crds(&client).await;
        let namespace = unique(&format!("t-{test}"));
        let ns: Api<Namespace> = Api::all(client.clone());
        let obj: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": namespace, "labels": {"kube-scim-test": "true"}}
        }))
        .expect("namespace object");
        ns.create(&PostParams::default(), &obj)
            .await
            .expect("create test namespace");
        TestEnv {
            client,
            namespace,
            kubeconfig: kubeconfig_path().to_path_buf(),
        }
    }

    /// Create a ServiceAccount in the test namespace and mint a token for it.
    pub async fn service_account_token(&self, name: &str) -> String {
        let sas: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &self.namespace);
        let sa: ServiceAccount =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).expect("sa");
        sas.create(&PostParams::default(), &sa)
            .await
            .expect("create serviceaccount");
        let req = serde_json::from_value(serde_json::json!({
            "spec": {"audiences": [], "expirationSeconds": 3600}
        }))
        .expect("token request");
        let tr = sas
            .create_token_request(name, &PostParams::default(), &req)
            .await
            .expect("TokenRequest");
        tr.status.expect("token status").token
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        // Namespace deletion is asynchronous on the server; don't wait for it.
        let _ = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args([
                "delete",
                "namespace",
                &self.namespace,
                "--wait=false",
                "--ignore-not-found",
            ])
            .output();
    }
}

/// `prefix-<8 random hex>`: unique object names per test and run.
pub fn unique(prefix: &str) -> String {
    let prefix: String = prefix
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Poll `check` until it returns Some, or panic after `timeout` naming `what`.
pub async fn poll_until<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Delete a cluster-scoped object, ignoring not-found.
pub async fn delete_ignore<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let _ = api.delete(name, &DeleteParams::default()).await;
}

/// The operator under test: the real `kube-scim` binary, started once per test run
/// against the same API server, with its own namespace and a SCIM token.
pub struct Operator {
    /// `http://127.0.0.1:<port>/scim/v2`
    pub base_url: String,
    /// `http://127.0.0.1:<port>` of /healthz, /readyz, /metrics.
    pub probe_url: String,
    pub token: String,
    pub namespace: String,
    pub log: PathBuf,
    _child: std::sync::Mutex<std::process::Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn kubectl(args: &[&str]) -> std::process::Output {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig_path())
        .args(args)
        .output()
        .expect("run kubectl")
}

/// Blocking GET returning the status code (no async runtime needed).
pub fn http_status(url: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut s = std::net::TcpStream::connect(host).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split_whitespace().nth(1)?.parse().ok()
}

/// Run the kube-scim binary with the test kubeconfig (e.g. `token create`).
pub fn kube_scim_cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kube-scim"))
        .env("KUBECONFIG", kubeconfig_path())
        .args(args)
        .output()
        .expect("run kube-scim")
}

/// Start (once per test run) the operator with SCIM and controller enabled.
pub async fn operator() -> &'static Operator {
    static OP: OnceLock<Operator> = OnceLock::new();
    // CRDs first (async), then the blocking start on a blocking thread.
    let client = admin_client().await;
    ensure_crds(&client).await;
    if let Some(op) = OP.get() {
        return op;
    }
    tokio::task::spawn_blocking(|| OP.get_or_init(start_operator))
        .await
        .expect("start operator")
}

fn start_operator() -> Operator {
    let namespace = unique("kube-scim-e2e");
    let out = kubectl(&["create", "namespace", &namespace]);
    assert!(
        out.status.success(),
        "create namespace: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kube_scim_cli(&["token", "create", "e2e", "--namespace", &namespace]);
    assert!(
        out.status.success(),
        "token create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!token.is_empty(), "token create printed no token");

    let port = free_port();
    let probe_port = free_port();
    let log = repo_root()
        .join("target")
        .join(format!("e2e-operator-{namespace}.log"));
    let log_file = std::fs::File::create(&log).expect("operator log file");
    let child = Command::new(env!("CARGO_BIN_EXE_kube-scim"))
        .env("KUBECONFIG", kubeconfig_path())
        .env("KUBE_SCIM_LOG", "info,kube_scim=debug")
        .args(["run", "--exit-on-stdin-eof", "--namespace", &namespace])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--probe-listen", &format!("127.0.0.1:{probe_port}")])
        .stdin(std::process::Stdio::piped())
        .stdout(log_file.try_clone().expect("log"))
        .stderr(log_file)
        .spawn()
        .expect("spawn kube-scim run");
    let probe_url = format!("http://127.0.0.1:{probe_port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_status(&format!("{probe_url}/readyz")) != Some(200) {
        assert!(
            Instant::now() < deadline,
            "operator not ready after 60s; log {}:\n{}",
            log.display(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Operator {
        base_url: format!("http://127.0.0.1:{port}/scim/v2"),
        probe_url,
        token,
        namespace,
        log,
        _child: std::sync::Mutex::new(child),
    }
}
