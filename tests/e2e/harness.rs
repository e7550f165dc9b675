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
