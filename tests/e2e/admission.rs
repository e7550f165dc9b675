//! The admission webhook (issue 9, item 2), written as the attack it stops: whoever may
//! create a mapping could otherwise bind any role the operator may bind (the confused
//! deputy). On the real API server, through `clientConfig.url`: an operator with the
//! webhook on (a test CA and a certificate for 127.0.0.1, made with openssl) and a
//! ValidatingWebhookConfiguration with `failurePolicy: Fail` that matches only mappings
//! carrying this run's label (objectSelector), so no other test ever meets it; it is
//! deleted at the end, panics included.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use kube::{Client, Config};
use serde_json::{json, Value};

use crate::harness::{free_port, kubeconfig_path, poll_until, start_operator_on, unique, TestEnv};

const LABEL: &str = "kube-scim-admission-test";

/// A client that impersonates `user` (the admin may impersonate anyone).
async fn as_user(user: &str) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig_path()).expect("read kubeconfig");
    let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    config.auth_info.impersonate = Some(user.to_string());
    Client::try_from(config).expect("client")
}

fn kubectl_delete(kind: &str, names: &[String], namespace: Option<&str>) {
    if names.is_empty() {
        return;
    }
    let mut cmd = Command::new("kubectl");
    cmd.arg("--kubeconfig").arg(kubeconfig_path()).args([
        "delete",
        kind,
        "--ignore-not-found",
        "--wait=false",
    ]);
    if let Some(ns) = namespace {
        cmd.args(["-n", ns]);
    }
    let _ = cmd.args(names).output();
}

/// Cluster-scoped objects of the test, deleted on drop (panics included). The webhook
/// configuration first: a leftover one with `failurePolicy: Fail` would refuse this
/// run's labelled mappings forever.
#[derive(Default)]
struct Cleanup {
    webhooks: Vec<String>,
    cluster_roles: Vec<String>,
    cluster_role_bindings: Vec<String>,
    cluster_mappings: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        kubectl_delete("validatingwebhookconfigurations", &self.webhooks, None);
        kubectl_delete("clustergrouprolemappings", &self.cluster_mappings, None);
        kubectl_delete("clusterrolebindings", &self.cluster_role_bindings, None);
        kubectl_delete("clusterroles", &self.cluster_roles, None);
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a serving certificate for IP 127.0.0.1 signed by it: (ca.crt, tls.crt, tls.key).
pub fn make_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).expect("cert dir");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=kube-scim-e2e-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "tls.key",
            "-out",
            "tls.csr",
        ],
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .expect("san.ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "tls.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "san.ext",
            "-out",
            "tls.crt",
        ],
    );
    (dir.join("ca.crt"), dir.join("tls.crt"), dir.join("tls.key"))
}

fn api(client: &Client, kind: &str, ns: Option<&str>) -> Api<DynamicObject> {
    let ar = kube::api::ApiResource::from_gvk(&GroupVersionKind::gvk(
        "scim.kubescim.io",
        "v1alpha1",
        kind,
    ));
    match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    }
}

fn mapping(kind: &str, name: &str, ns: Option<&str>, run: &str, spec: Value) -> DynamicObject {
    let mut metadata = json!({"name": name, "labels": {LABEL: run}});
    if let Some(ns) = ns {
        metadata["namespace"] = json!(ns);
    }
    serde_json::from_value(json!({
        "apiVersion": "scim.kubescim.io/v1alpha1",
        "kind": kind,
        "metadata": metadata,
        "spec": spec,
    }))
    .expect("mapping")
}

/// Create (or dry-run) a mapping as `client`: Ok, or the refusal's message.
async fn submit(client: &Client, obj: &DynamicObject, dry_run: bool) -> Result<(), String> {
    let ns = obj.metadata.namespace.as_deref();
    let kind = obj.types.as_ref().map(|t| t.kind.as_str()).unwrap_or("");
    let pp = PostParams {
        dry_run,
        ..Default::default()
    };
    match api(client, kind, ns).create(&pp, obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) => Err(s.message),
        Err(e) => panic!("create {kind}: {e}"),
    }
}

fn refused(result: Result<(), String>, what: &str, wants: &[&str]) {
    let message = match result {
        Ok(()) => panic!("{what}: admitted, want refused"),
        Err(m) => m,
    };
    assert!(
        message.contains("denied the request"),
        "{what}: refused by the webhook: {message}"
    );
    for want in wants {
        assert!(message.contains(want), "{what}: {want:?} in {message}");
    }
}

fn admitted(result: Result<(), String>, what: &str) {
    if let Err(m) = result {
        panic!("{what}: refused, want admitted: {m}");
    }
}

async fn role(client: &Client, ns: &str, name: &str, rules: Value) {
    let api: Api<Role> = Api::namespaced(client.clone(), ns);
    let obj =
        serde_json::from_value(json!({"metadata": {"name": name}, "rules": rules})).expect("role");
    api.create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("create Role {name}: {e}"));
}

async fn role_binding(client: &Client, ns: &str, name: &str, kind: &str, role: &str, user: &str) {
    let api: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
    let obj = serde_json::from_value(json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }))
    .expect("rolebinding");
    api.create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("create RoleBinding {name}: {e}"));
}

async fn cluster_role(client: &Client, cleanup: &mut Cleanup, name: &str, rules: Value) {
    cleanup.cluster_roles.push(name.to_string());
    let api: Api<ClusterRole> = Api::all(client.clone());
    let obj = serde_json::from_value(json!({"metadata": {"name": name}, "rules": rules}))
        .expect("clusterrole");
    api.create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("create ClusterRole {name}: {e}"));
}

async fn cluster_role_binding(
    client: &Client,
    cleanup: &mut Cleanup,
    name: &str,
    role: &str,
    user: &str,
) {
    cleanup.cluster_role_bindings.push(name.to_string());
    let api: Api<ClusterRoleBinding> = Api::all(client.clone());
    let obj = serde_json::from_value(json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }))
    .expect("clusterrolebinding");
    api.create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("create ClusterRoleBinding {name}: {e}"));
}

fn grm_spec(kind: &str, role: &str) -> Value {
    json!({"groups": [{"displayName": "admission-test-nobody"}], "roleRef": {"kind": kind, "name": role}})
}

#[tokio::test]
async fn mapping_authors_may_only_map_what_they_could_bind() {
    let env = TestEnv::new("admission").await;
    let admin = env.client.clone();
    let ns = env.namespace.clone();
    let run = unique("adm");
    let mut cleanup = Cleanup::default();

    // ---- the webhook: an operator serving it (no controller: the shared one reconciles)
    let certs = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("admission-certs"));
    let (ca, crt, key) = tokio::task::spawn_blocking({
        let certs = certs.clone();
        move || make_certs(&certs)
    })
    .await
    .expect("certs");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let args: Vec<String> = vec![
        "--enable-controller".into(),
        "false".into(),
        "--webhook-listen".into(),
        listen.clone(),
        "--webhook-cert-file".into(),
        crt.display().to_string(),
        "--webhook-key-file".into(),
        key.display().to_string(),
    ];
    let op = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        start_operator_on(kubeconfig_path(), &args)
    })
    .await
    .expect("start operator");
    let ca_pem = std::fs::read(&ca).expect("ca.crt");
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca_pem).expect("CA"))
        .build()
        .expect("https client");
    poll_until(
        Duration::from_secs(30),
        "webhook /healthz over HTTPS",
        || async {
            let r = https
                .get(format!("https://{listen}/healthz"))
                .send()
                .await
                .ok()?;
            (r.status() == 200).then_some(())
        },
    )
    .await;

    let webhook_name = format!("{run}.kubescim.io");
    cleanup.webhooks.push(webhook_name.clone());
    let vwc: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": webhook_name},
        "webhooks": [{
            "name": "mappings.kubescim.io",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "timeoutSeconds": 10,
            "clientConfig": {
                "url": format!("https://{listen}/validate-mappings"),
                "caBundle": base64(&ca_pem),
            },
            "objectSelector": {"matchLabels": {LABEL: run}},
            "rules": [{
                "apiGroups": ["scim.kubescim.io"],
                "apiVersions": ["v1alpha1"],
                "operations": ["CREATE", "UPDATE"],
                "resources": ["grouprolemappings", "clustergrouprolemappings"],
            }],
        }],
    }))
    .expect("webhook configuration");
    Api::<ValidatingWebhookConfiguration>::all(admin.clone())
        .create(&PostParams::default(), &vwc)
        .await
        .expect("create ValidatingWebhookConfiguration");

    // ---- the people
    let author = unique("author"); // may create GroupRoleMappings, nothing else
    let binder = unique("binder"); // ... and holds `bind` on `admin` in the namespace
    let holder = unique("holder"); // ... and reads ConfigMaps in the namespace
    let crafty = unique("crafty"); // cluster mappings; `bind` on cluster-admin in ns only
    for user in [&author, &binder, &holder, &crafty] {
        let rb = unique("grm-author");
        role_binding(&admin, &ns, &rb, "Role", "grm-author", user).await;
    }
    role(
        &admin,
        &ns,
        "grm-author",
        json!([{"apiGroups": ["scim.kubescim.io"], "resources": ["grouprolemappings"],
                "verbs": ["get", "list", "create", "update", "patch"]}]),
    )
    .await;
    role(
        &admin,
        &ns,
        "bind-admin",
        json!([{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"],
                "verbs": ["bind"], "resourceNames": ["admin"]}]),
    )
    .await;
    role_binding(
        &admin,
        &ns,
        "binder-bind-admin",
        "Role",
        "bind-admin",
        &binder,
    )
    .await;
    role(
        &admin,
        &ns,
        "configmap-reader",
        json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]),
    )
    .await;
    role_binding(
        &admin,
        &ns,
        "holder-reads",
        "Role",
        "configmap-reader",
        &holder,
    )
    .await;
    let reader = unique("adm-configmap-reader");
    cluster_role(
        &admin,
        &mut cleanup,
        &reader,
        json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]),
    )
    .await;
    let cgrm_author = unique("adm-cgrm-author");
    cluster_role(
        &admin,
        &mut cleanup,
        &cgrm_author,
        json!([{"apiGroups": ["scim.kubescim.io"], "resources": ["clustergrouprolemappings"],
                "verbs": ["get", "create"]}]),
    )
    .await;
    cluster_role_binding(&admin, &mut cleanup, &cgrm_author, &cgrm_author, &crafty).await;
    role(
        &admin,
        &ns,
        "bind-cluster-admin",
        json!([{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"],
                "verbs": ["bind"], "resourceNames": ["cluster-admin", "admin"]}]),
    )
    .await;
    role_binding(
        &admin,
        &ns,
        "crafty-binds",
        "Role",
        "bind-cluster-admin",
        &crafty,
    )
    .await;

    let (author_c, binder_c, holder_c, crafty_c) = (
        as_user(&author).await,
        as_user(&binder).await,
        as_user(&holder).await,
        as_user(&crafty).await,
    );
    let grm = |name: &str, spec: Value| mapping("GroupRoleMapping", name, Some(&ns), &run, spec);
    let cgrm = |name: &str, spec: Value| mapping("ClusterGroupRoleMapping", name, None, &run, spec);

    // The API server picks the configuration up within a moment: wait for the first refusal.
    let to_admin = grm("to-admin", grm_spec("ClusterRole", "admin"));
    let first = poll_until(
        Duration::from_secs(30),
        "the webhook configuration in effect",
        || async {
            match submit(&author_c, &to_admin, true).await {
                Err(m) if m.contains("denied the request") => Some(m),
                _ => None,
            }
        },
    )
    .await;

    // ---- 1. the attack: a GroupRoleMapping author maps `admin` (to themselves, say)
    refused(
        Err(first),
        "author maps admin",
        &[&format!(
            "{author} may not bind ClusterRole admin in namespace {ns}"
        )],
    );
    refused(
        submit(&author_c, &to_admin, false).await,
        "author maps admin (not dry-run)",
        &["no `bind` on it there"],
    );
    // ... the same mapping by someone holding `bind` on admin there is admitted and stored.
    admitted(
        submit(&binder_c, &to_admin, false).await,
        "binder maps admin",
    );
    let stored = api(&admin, "GroupRoleMapping", Some(&ns))
        .get_opt("to-admin")
        .await
        .expect("get mapping");
    assert!(stored.is_some(), "the admitted mapping is stored");

    // ---- 2. "holds its permissions": a role whose every permission the author holds
    admitted(
        submit(
            &holder_c,
            &grm("reader", grm_spec("ClusterRole", &reader)),
            true,
        )
        .await,
        "holder maps a role within their own permissions",
    );
    refused(
        submit(
            &author_c,
            &grm("reader", grm_spec("ClusterRole", &reader)),
            true,
        )
        .await,
        "author maps a role beyond their permissions",
        &[&format!("ClusterRole {reader}"), "missing: "],
    );
    refused(
        submit(
            &author_c,
            &grm("nope", grm_spec("Role", "no-such-role")),
            true,
        )
        .await,
        "author maps a missing Role",
        &["Role no-such-role", "does not exist"],
    );

    // ---- 3. updates: a spec change is checked; anything else (the controller's finalizer,
    // labels) is not.
    let mappings = api(&author_c, "GroupRoleMapping", Some(&ns));
    let label_only = mappings
        .patch(
            "to-admin",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"note": "relabelled"}}})),
        )
        .await;
    assert!(label_only.is_ok(), "a label change passes: {label_only:?}");
    match mappings
        .patch(
            "to-admin",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"groups": [{"displayName": "author-team"}]}})),
        )
        .await
    {
        Err(kube::Error::Api(s)) => assert!(
            s.message
                .contains(&format!("{author} may not bind ClusterRole admin")),
            "{}",
            s.message
        ),
        other => panic!("author changes the admin mapping's groups: want refused, got {other:?}"),
    }

    // ---- 4. a namespaceSelector can reach any namespace: cluster-wide rights needed
    let selected = cgrm(
        &unique("adm-selector"),
        json!({"groups": [{"displayName": "x"}], "namespaceRoles": [
            {"clusterRole": "admin", "namespaceSelector": {"matchLabels": {"team": "x"}}}]}),
    );
    refused(
        submit(&crafty_c, &selected, true).await,
        "selector with bind on admin in one namespace",
        &["ClusterRole admin cluster-wide"],
    );
    let listed = cgrm(
        &unique("adm-listed"),
        json!({"groups": [{"displayName": "x"}], "namespaceRoles": [
            {"clusterRole": "admin", "namespaces": [ns]}]}),
    );
    admitted(
        submit(&crafty_c, &listed, true).await,
        "the same role in the one listed namespace",
    );

    // ---- 5. allowProtectedRoles needs the author's own `bind` on the role cluster-wide
    let mut protected_spec = grm_spec("ClusterRole", "cluster-admin");
    protected_spec["allowProtectedRoles"] = json!(true);
    let protected = grm("protected", protected_spec);
    refused(
        submit(&crafty_c, &protected, true).await,
        "allowProtectedRoles with bind on cluster-admin in the namespace only",
        &["allowProtectedRoles", "cluster-admin", "cluster-wide"],
    );
    let bind_ca = unique("adm-bind-cluster-admin");
    cluster_role(
        &admin,
        &mut cleanup,
        &bind_ca,
        json!([{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"],
                "verbs": ["bind"], "resourceNames": ["cluster-admin"]}]),
    )
    .await;
    cluster_role_binding(&admin, &mut cleanup, &bind_ca, &bind_ca, &crafty).await;
    poll_until(
        Duration::from_secs(10),
        "cluster-wide bind on cluster-admin admits allowProtectedRoles",
        || async { submit(&crafty_c, &protected, true).await.ok() },
    )
    .await;

    // The audit log names the refused author.
    let log = std::fs::read_to_string(&op.log).unwrap_or_default();
    assert!(
        log.contains("mapping admission") && log.contains(&author),
        "audit lines in {}",
        op.log.display()
    );
    drop(cleanup);
    let _ = std::fs::remove_dir_all(&certs);
}

pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
