//! `kube-scim access|who|plan` (and the same binary as the kubectl plugin
//! `kubectl-scim`) against the real API server, with the shared operator reconciling:
//! the CLI's answers must match what the controller did and would do.
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube_scim::crd::{ClusterGroupRoleMapping, GroupRoleMapping, ScimGroup, ScimUser};
use serde_json::{json, Value};

use crate::controller::{
    create_cluster_mapping, create_group, create_mapping, create_roles, create_user, expect_access,
    expect_ready, new_user, set_active, WAIT,
};
use crate::harness::{delete_ignore, kubeconfig_path, operator, poll_until, unique, TestEnv};

/// What one run of the CLI did.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}), exit {}:\n{}\nstderr:\n{}",
                self.code, self.stdout, self.stderr
            )
        })
    }
}

/// Run `program` (the kube-scim binary, or a link to it) with `args` and the test
/// kubeconfig; `path` goes first on PATH (for `kubectl scim`).
fn run_with(program: &Path, args: &[&str], path: Option<&Path>) -> Run {
    let mut cmd = Command::new(program);
    cmd.env("KUBECONFIG", kubeconfig_path())
        .env_remove("KUBE_SCIM_NAMESPACE")
        .args(args);
    if let Some(dir) = path {
        let old = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![dir.to_path_buf()];
        dirs.extend(std::env::split_paths(&old));
        cmd.env("PATH", std::env::join_paths(dirs).expect("PATH"));
    }
    let out = cmd.output().expect("run the CLI");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn cli(args: &[&str]) -> Run {
    run_with(Path::new(env!("CARGO_BIN_EXE_kube-scim")), args, None)
}

/// A fresh temporary directory (removed by the caller).
fn temp_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(prefix));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The grants of an `access -o json` report as (mapping name, scope, namespace, live).
fn grants(report: &Value) -> Vec<(String, String, Option<String>, String)> {
    report["grants"]
        .as_array()
        .expect("grants")
        .iter()
        .map(|g| {
            (
                g["mapping"]["name"].as_str().unwrap_or_default().to_owned(),
                g["scope"].as_str().unwrap_or_default().to_owned(),
                g["namespace"].as_str().map(str::to_owned),
                g["live"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// The `missing` reasons of an `access -o json` report for mapping `name`.
fn missing(report: &Value, name: &str) -> Vec<(String, String)> {
    report["missing"]
        .as_array()
        .expect("missing")
        .iter()
        .filter(|m| m["mapping"]["name"] == name)
        .map(|m| {
            (
                m["reason"].as_str().unwrap_or_default().to_owned(),
                m["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// The chart's controller Deployment, as the CLI finds it (labels) and reads it (the
/// container's environment): the shared operator's settings, so the CLI plans with them.
async fn controller_deployment(client: &kube::Client, namespace: &str) -> String {
    let name = unique("kube-scim-controller");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {
            "app.kubernetes.io/part-of": "kube-scim",
            "app.kubernetes.io/component": "controller"}},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{
                    "name": "kube-scim", "image": "kube-scim:e2e", "args": ["run"],
                    "env": [
                        {"name": "KUBE_SCIM_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                        {"name": "KUBE_SCIM_ENABLE_CONTROLLER", "value": "true"},
                        {"name": "KUBE_SCIM_CLUSTER_WIDE_ROLES", "value": "view,cluster-admin,kube-scim-test-*"}
                    ]
                }]}
            }
        }
    }))
    .expect("deployment");
    Api::<Deployment>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &d)
        .await
        .expect("create the controller Deployment");
    name
}

fn mapping_yaml(kind: &str, ns: Option<&str>, name: &str, spec: Value) -> String {
    let mut metadata = json!({"name": name});
    if let Some(ns) = ns {
        metadata["namespace"] = json!(ns);
    }
    serde_yaml::to_string(&json!({
        "apiVersion": "scim.kubescim.io/v1alpha1", "kind": kind,
        "metadata": metadata, "spec": spec
    }))
    .expect("yaml")
}

#[tokio::test]
async fn access_who_and_plan_explain_what_the_controller_does() {
    // Stores ScimUsers/ScimGroups directly: keep them out of the conformance run.
    let _view = crate::harness::hold_scim_view().await;
    let op = operator().await;
    let env = TestEnv::new("cli").await;
    let c = &env.client;
    let ns = env.namespace.as_str();
    crate::crds::our_crds_served(c, ns).await;
    controller_deployment(c, &op.namespace).await;

    let (role, cluster_role) = create_roles(c, ns).await;
    let alice = new_user("cli-alice");
    let bob = new_user("cli-bob");
    create_user(c, &alice).await;
    create_user(c, &bob).await;
    set_active(c, &bob.id, false).await;
    let devs = create_group(c, "cli-devs", &[&alice, &bob]).await;
    let group = json!([{"displayName": devs.display_name}]);

    // Granted: a Role in the namespace, a test ClusterRole cluster-wide.
    let edit = unique("edit");
    create_mapping(
        c,
        ns,
        &edit,
        json!({"groups": group, "roleRef": {"kind": "Role", "name": role}}),
    )
    .await;
    let wide = unique("cli-wide");
    create_cluster_mapping(
        c,
        &wide,
        json!({"groups": group, "clusterRoles": [cluster_role]}),
    )
    .await;
    // Refused: cluster-admin without the opt-in; expired.
    let admin = unique("cli-admin");
    create_cluster_mapping(
        c,
        &admin,
        json!({"groups": group, "clusterRoles": ["cluster-admin"]}),
    )
    .await;
    let old = unique("old");
    create_mapping(
        c,
        ns,
        &old,
        json!({"groups": group, "roleRef": {"kind": "ClusterRole", "name": cluster_role},
               "expiresAt": "2020-01-01T00:00:00Z"}),
    )
    .await;
    let grms: Api<GroupRoleMapping> = Api::namespaced(c.clone(), ns);
    let cgrms: Api<ClusterGroupRoleMapping> = Api::all(c.clone());
    expect_ready(&grms, &edit, "True", None).await;
    expect_ready(&grms, &old, "False", Some("Expired")).await;
    expect_ready(&cgrms, &wide, "True", None).await;
    expect_ready(&cgrms, &admin, "False", Some("ProtectedRoleRefused")).await;
    expect_access(c, &alice.user_name, &[], Some(ns), true).await;

    let opns = op.namespace.as_str();
    // --- access ---------------------------------------------------------------------
    // Until the controller's pass has written both bindings, a grant may read Pending.
    let report = poll_until(WAIT, "alice's grants applied", || async {
        let run = cli(&["access", &alice.user_name, "-n", opns, "-o", "json"]);
        assert_eq!(run.code, 0, "access: {}", run.stderr);
        assert!(!run.stderr.contains("warning"), "{}", run.stderr);
        let r = run.json();
        let g = grants(&r);
        (g.len() == 2 && g.iter().all(|x| x.3 == "Applied")).then_some(r)
    })
    .await;
    assert_eq!(report["user"]["id"], json!(alice.id));
    let g = grants(&report);
    assert!(
        g.contains(&(wide.clone(), "Cluster".into(), None, "Applied".into())),
        "{g:?}"
    );
    assert!(
        g.contains(&(
            edit.clone(),
            "Namespace".into(),
            Some(ns.to_owned()),
            "Applied".into()
        )),
        "{g:?}"
    );
    let ns_grant = report["grants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["mapping"]["name"] == json!(edit))
        .unwrap();
    assert_eq!(ns_grant["groups"], json!([devs.display_name]));
    assert_eq!(ns_grant["role"], json!({"kind": "Role", "name": role}));
    assert_eq!(
        ns_grant["subject"],
        json!({"kind": "User", "name": alice.user_name})
    );
    // The binding it names is the object the controller wrote.
    let live: Vec<String> = Api::<RoleBinding>::namespaced(c.clone(), ns)
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=kube-scim"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|b| b.metadata.name)
        .collect();
    assert_eq!(
        live,
        [ns_grant["binding"]["name"].as_str().unwrap().to_owned()],
        "{ns_grant}"
    );
    let refused = missing(&report, &admin);
    assert_eq!(refused.len(), 1, "{report}");
    assert_eq!(refused[0].0, "ProtectedRoleRefused");
    let expired = missing(&report, &old);
    assert_eq!(expired.len(), 1, "{report}");
    assert_eq!(expired[0].0, "Expired");
    assert!(expired[0].1.contains("2020-01-01T00:00:00Z"), "{expired:?}");

    // bob (by email) is inactive: no grant, and that is the reason.
    let run = cli(&["access", &bob.email, "-n", opns, "-o", "yaml"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let bob_report: Value = serde_yaml::from_str(&run.stdout).expect("yaml");
    assert_eq!(bob_report["user"]["id"], json!(bob.id));
    assert!(grants(&bob_report).is_empty(), "{bob_report}");
    assert_eq!(missing(&bob_report, &edit)[0].0, "Inactive", "{bob_report}");
    // Without the Deployment (another namespace), the defaults: a warning, and
    // cluster-admin is then refused cluster-wide outright (only `view` may be).
    let run = cli(&["access", &alice.id, "-n", ns, "-o", "json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("no kube-scim controller Deployment"),
        "{}",
        run.stderr
    );
    assert_eq!(missing(&run.json(), &admin)[0].0, "ScopeRefused");

    // --- who ------------------------------------------------------------------------
    let run = cli(&["who", ns, "-n", opns, "-o", "json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let who = run.json();
    let ours: Vec<(String, String, String)> = who["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["subject"]["name"] == json!(alice.user_name))
        .map(|e| {
            (
                e["mapping"]["name"].as_str().unwrap_or_default().to_owned(),
                e["scope"].as_str().unwrap_or_default().to_owned(),
                e["users"][0]["id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        ours,
        [
            (edit.clone(), "Namespace".into(), alice.id.clone()),
            (wide.clone(), "Cluster".into(), alice.id.clone()),
        ],
        "{who}"
    );
    assert!(
        !who.to_string().contains(&bob.user_name),
        "inactive bob has no access: {who}"
    );
    assert!(
        who["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["mapping"]["name"] == json!(old) && p["reason"] == "Expired"),
        "{who}"
    );
    let run = cli(&[
        "who",
        ns,
        "--role",
        &format!("Role/{role}"),
        "-n",
        opns,
        "-o",
        "json",
    ]);
    let only: Vec<Value> = run.json()["entries"].as_array().unwrap().clone();
    assert_eq!(only.len(), 1, "{only:?}");
    assert_eq!(only[0]["mapping"]["name"], json!(edit));

    // --- plan -----------------------------------------------------------------------
    let dir = temp_dir("kube-scim-cli-plan");
    let write = |file: &str, docs: &[String]| {
        let path = dir.join(file);
        std::fs::write(&path, docs.join("---\n")).expect("write");
        path.display().to_string()
    };
    let role_ref = json!({"kind": "Role", "name": role});
    let same = write(
        "same.yaml",
        &[mapping_yaml(
            "GroupRoleMapping",
            Some(ns),
            &edit,
            json!({"groups": group, "roleRef": role_ref}),
        )],
    );
    let run = cli(&["plan", "-f", &same, "-n", opns, "-o", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let r = run.json();
    assert_eq!(r["changed"], json!(false));
    assert_eq!(r["mappings"][0]["action"], "Unchanged");
    // The controller is in sync here (other tests' objects may be mid-pass).
    assert!(
        r["drift"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["namespace"] != json!(ns)),
        "{r}"
    );

    // Edit one (another role: a new binding, the old one deleted), add one, renew the
    // expired one.
    let new = unique("new");
    let edits = write(
        "edits.yaml",
        &[
            mapping_yaml(
                "GroupRoleMapping",
                Some(ns),
                &edit,
                json!({"groups": group, "roleRef": {"kind": "ClusterRole", "name": cluster_role}}),
            ),
            mapping_yaml(
                "GroupRoleMapping",
                Some(ns),
                &new,
                json!({"groups": group, "roleRef": {"kind": "ClusterRole", "name": "view"}}),
            ),
            mapping_yaml(
                "GroupRoleMapping",
                Some(ns),
                &old,
                json!({"groups": group, "roleRef": {"kind": "ClusterRole", "name": cluster_role},
                       "expiresAt": "2999-01-01T00:00:00Z"}),
            ),
        ],
    );
    let run = cli(&["plan", "-f", &edits, "-n", opns, "-o", "json"]);
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    let r = run.json();
    let actions: Vec<(String, String)> = r["bindings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["action"].as_str().unwrap().to_owned(),
                b["mapping"]["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for want in [
        ("Create", &edit),
        ("Delete", &edit),
        ("Create", &new),
        ("Create", &old),
    ] {
        assert!(
            actions.contains(&(want.0.to_owned(), want.1.clone())),
            "{want:?} in {actions:?}"
        );
    }
    let gained_new = r["subjects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["mapping"]["name"] == json!(new))
        .expect("new mapping's subjects");
    assert_eq!(
        gained_new["gained"],
        json!([{"kind": "User", "name": alice.user_name}])
    );
    let renewed = r["mappings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mapping"]["name"] == json!(old))
        .unwrap();
    assert_eq!(renewed["before"]["reason"], "Expired");
    assert_eq!(renewed["after"]["reason"], "Reconciled");
    assert_eq!(renewed["after"]["expiresAt"], "2999-01-01T00:00:00Z");

    // An expiry in the past and a protected role: the refusals show, exit 2 for the
    // deletion; stdin works as a file.
    let refusals = [
        mapping_yaml(
            "GroupRoleMapping",
            Some(ns),
            &edit,
            json!({"groups": group, "roleRef": role_ref, "expiresAt": "2021-01-01T00:00:00Z"}),
        ),
        mapping_yaml(
            "ClusterGroupRoleMapping",
            None,
            &wide,
            json!({"groups": group, "clusterRoles": ["cluster-admin"]}),
        ),
    ]
    .join("---\n");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kube-scim"))
        .env("KUBECONFIG", kubeconfig_path())
        .args(["plan", "-f", "-", "-n", opns, "-o", "json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("plan from stdin");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(refusals.as_bytes()).expect("stdin");
    }
    let out = child.wait_with_output().expect("plan");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_str(&text).expect("json");
    let reasons: Vec<(String, String)> = r["mappings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["mapping"]["name"].as_str().unwrap().to_owned(),
                m["after"]["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        reasons.contains(&(edit.clone(), "Expired".into())),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&(wide.clone(), "ProtectedRoleRefused".into())),
        "{reasons:?}"
    );
    let lost: Vec<&Value> = r["subjects"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["lost"] == json!([{"kind": "User", "name": alice.user_name}]))
        .collect();
    assert_eq!(lost.len(), 2, "both grants end: {r}");

    // Invalid: what the API server refuses is an error (exit 1) naming it.
    let bad = write(
        "bad.yaml",
        &[mapping_yaml(
            "GroupRoleMapping",
            Some(ns),
            &edit,
            json!({"groups": group, "roleRef": role_ref, "roleRefs": [], "namespaceSelector": {"a": "b"}}),
        )],
    );
    let run = cli(&["plan", "-f", &bad, "-n", opns]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stderr.contains("spec.namespaceSelector"),
        "{}",
        run.stderr
    );

    // plan wrote nothing.
    let stored = grms.get(&edit).await.unwrap();
    assert_eq!(stored.metadata.generation, Some(1));
    assert!(grms.get_opt(&new).await.unwrap().is_none());
    expect_access(c, &alice.user_name, &[], Some(ns), true).await;

    // --- the kubectl plugin ---------------------------------------------------------
    let bin = temp_dir("kube-scim-plugin");
    let plugin = bin.join("kubectl-scim");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kube-scim"), &plugin).expect("symlink");
    let help = run_with(&plugin, &["access", "--help"], None);
    assert!(
        help.stdout.contains("Usage: kubectl scim access"),
        "{}",
        help.stdout
    );
    let run = run_with(&plugin, &["who", ns, "-n", opns, "-o", "json"], None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json()["entries"], who["entries"]);
    // Through kubectl itself, which finds kubectl-scim on PATH.
    let kubectl = Command::new("kubectl")
        .args(["version", "--client"])
        .output();
    if kubectl.is_ok_and(|o| o.status.success()) {
        let run = run_with(
            Path::new("kubectl"),
            &["scim", "access", &alice.user_name, "-n", opns, "-o", "json"],
            Some(&bin),
        );
        assert_eq!(run.code, 0, "kubectl scim: {}", run.stderr);
        assert_eq!(grants(&run.json()), grants(&report));
    } else {
        eprintln!("no kubectl on PATH: `kubectl scim` not exercised");
    }

    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&bin);
    for name in [&wide, &admin] {
        let _ = cgrms.delete(name, &DeleteParams::default()).await;
    }
    for u in [&alice, &bob] {
        delete_ignore(&Api::<ScimUser>::all(c.clone()), &u.id).await;
    }
    delete_ignore(&Api::<ScimGroup>::all(c.clone()), &devs.id).await;
}
