//! The CRDs as people meet them: the API server refuses broken mappings at apply time
//! (the OpenAPI schema), `kubectl get scim` lists every kind (the category), and
//! `kubectl get` shows the mapping and user columns filled in by the controller.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;
use serde_json::{json, Value};

use crate::controller::{create_group, create_mapping, create_user, new_user, WAIT};
use crate::harness::{install_crds, operator, poll_until, unique, TestEnv};

const GROUP: &str = "scim.kubescim.io";
const VERSION: &str = "v1alpha1";

fn api(client: &Client, kind: &str, ns: Option<&str>) -> Api<DynamicObject> {
    let plural = format!("{}s", kind.to_lowercase());
    let ar =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, kind), &plural);
    match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    }
}

/// Create `spec` as a `kind` with server-side dry run: schema validation runs, nothing is stored.
async fn dry_run(
    client: &Client,
    kind: &str,
    ns: Option<&str>,
    spec: Value,
) -> Result<(), kube::Error> {
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": format!("{GROUP}/{VERSION}"), "kind": kind,
        "metadata": {"name": unique("schema"), "namespace": ns},
        "spec": spec,
    }))
    .expect("object");
    let pp = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    api(client, kind, ns).create(&pp, &obj).await.map(|_| ())
}

/// The CRDs as this build generates them: other test runs sharing the cluster may have
/// applied another version, so apply ours and wait until the schema refuses an empty list
/// of groups (i.e. it is being served).
pub(crate) async fn our_crds_served(client: &Client, ns: &str) {
    install_crds(client).await;
    poll_until(WAIT, "the new CRD schema to be served", || async {
        let empty = dry_run(
            client,
            "GroupRoleMapping",
            Some(ns),
            json!({"groups": [], "roleRef": {"kind": "ClusterRole", "name": "view"}}),
        )
        .await;
        matches!(empty, Err(kube::Error::Api(ref s)) if s.code == 422).then_some(())
    })
    .await;
}

#[tokio::test]
async fn broken_mappings_are_refused_at_apply_time_and_the_scim_category_covers_every_kind() {
    let env = TestEnv::new("crd-schema").await;
    let c = &env.client;
    let ns = env.namespace.as_str();
    our_crds_served(c, ns).await;

    let view = json!({"kind": "ClusterRole", "name": "view"});
    // Valid specs pass (so the refusals below are about their content).
    for (kind, spec) in [
        (
            "GroupRoleMapping",
            json!({"groups": [{"displayName": "a"}], "roleRef": view}),
        ),
        (
            "ClusterGroupRoleMapping",
            json!({"groups": [{"externalId": "0c1d"}], "clusterRoles": ["view"]}),
        ),
        (
            "ClusterGroupRoleMapping",
            json!({"groups": [{"displayName": "a"}],
                   "namespaceRoles": [{"clusterRole": "view", "namespaceSelector": {"matchLabels": {"a": "b"}}}]}),
        ),
    ] {
        let at = (kind == "GroupRoleMapping").then_some(ns);
        if let Err(e) = dry_run(c, kind, at, spec.clone()).await {
            panic!("valid {kind} {spec} refused: {e}");
        }
    }

    let refused: Vec<(&str, Value, &str)> = vec![
        ("GroupRoleMapping", json!({"roleRef": view}), "spec.groups"),
        (
            "GroupRoleMapping",
            json!({"groups": [], "roleRef": view}),
            "spec.groups",
        ),
        (
            "GroupRoleMapping",
            json!({"groups": [{"displayName": "a"}]}),
            "spec.roleRef",
        ),
        (
            "GroupRoleMapping",
            json!({"groups": [{}], "roleRef": view}),
            "spec.groups",
        ),
        (
            "GroupRoleMapping",
            json!({"groups": [{"displayName": "a", "externalId": "b"}], "roleRef": view}),
            "spec.groups",
        ),
        (
            "GroupRoleMapping",
            json!({"groups": [{"displayName": ""}], "roleRef": view}),
            "displayName",
        ),
        (
            "GroupRoleMapping",
            json!({"groups": [{"displayName": "a"}], "roleRef": {"kind": "Clusterrole", "name": "view"}}),
            "spec.roleRef.kind",
        ),
        (
            "GroupRoleMapping",
            json!({"groups": [{"displayName": "a"}], "roleRef": view, "subjects": {"kind": "Users"}}),
            "spec.subjects.kind",
        ),
        (
            "ClusterGroupRoleMapping",
            json!({"groups": [{"displayName": "a"}]}),
            "spec",
        ),
        (
            "ClusterGroupRoleMapping",
            json!({"groups": [{"displayName": "a"}], "clusterRoles": []}),
            "spec.clusterRoles",
        ),
        (
            "ClusterGroupRoleMapping",
            json!({"groups": [{"displayName": "a"}], "namespaceRoles": [{"clusterRole": "view"}]}),
            "spec.namespaceRoles",
        ),
    ];
    for (kind, spec, field) in refused {
        let at = (kind == "GroupRoleMapping").then_some(ns);
        match dry_run(c, kind, at, spec.clone()).await {
            Err(kube::Error::Api(s)) if s.code == 422 => assert!(
                s.message.contains(field),
                "{kind} {spec}: refused, but the message doesn't name {field}: {}",
                s.message
            ),
            other => panic!("{kind} {spec}: want 422 naming {field}, got {other:?}"),
        }
    }

    // Discovery: every kind of the group is in the `scim` category (`kubectl get scim`).
    let list: APIResourceList = poll_until(WAIT, "discovery to show the category", || async {
        let list = c
            .list_api_group_resources(&format!("{GROUP}/{VERSION}"))
            .await
            .ok()?;
        let top: Vec<_> = list
            .resources
            .iter()
            .filter(|r| !r.name.contains('/'))
            .collect();
        (top.len() == 5
            && top.iter().all(|r| {
                r.categories
                    .as_ref()
                    .is_some_and(|c| c.iter().any(|c| c == "scim"))
            }))
        .then_some(list.clone())
    })
    .await;
    let mut kinds: Vec<&str> = list
        .resources
        .iter()
        .filter(|r| !r.name.contains('/'))
        .map(|r| r.kind.as_str())
        .collect();
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        [
            "ClusterGroupRoleMapping",
            "GroupRoleMapping",
            "ScimGroup",
            "ScimGroupMembers",
            "ScimUser"
        ]
    );
}

/// `kubectl get` as a Table: column names and the cells of the object named `name`.
async fn table_row(client: &Client, path: &str, name: &str) -> Option<Vec<(String, Value)>> {
    let req = http::Request::get(path)
        .header(
            "Accept",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )
        .body(Vec::new())
        .ok()?;
    let table: Value = client.request(req).await.ok()?;
    let columns: Vec<String> = table["columnDefinitions"]
        .as_array()?
        .iter()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect();
    let row = table["rows"]
        .as_array()?
        .iter()
        .find(|r| r["object"]["metadata"]["name"] == name)?;
    let cells = row["cells"].as_array()?.clone();
    Some(columns.into_iter().zip(cells).collect())
}

fn cell<'a>(row: &'a [(String, Value)], column: &str) -> &'a Value {
    row.iter()
        .find(|(c, _)| c == column)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no column {column} in {row:?}"))
}

#[tokio::test]
async fn kubectl_get_shows_groups_bindings_subjects_and_message_of_mappings_and_group_counts_of_users(
) {
    let _view = crate::harness::hold_scim_view().await;
    operator().await;
    let env = TestEnv::new("crd-columns").await;
    let c = &env.client;
    let ns = env.namespace.as_str();
    our_crds_served(c, ns).await;
    let (a, b) = (new_user("col-a"), new_user("col-b"));
    create_user(c, &a).await;
    create_user(c, &b).await;
    let group = create_group(c, "col-devs", &[&a, &b]).await;
    let missing = unique("col-missing");
    let mapping = unique("col");
    create_mapping(
        c,
        ns,
        &mapping,
        json!({"groups": [{"displayName": group.display_name}, {"displayName": missing}],
               "roleRef": {"kind": "ClusterRole", "name": "view"}}),
    )
    .await;

    let path = format!("/apis/{GROUP}/{VERSION}/namespaces/{ns}/grouprolemappings");
    let row = poll_until(WAIT, "the mapping's columns", || async {
        let row = table_row(c, &path, &mapping).await?;
        (cell(&row, "Subjects") == &json!(2)).then_some(row)
    })
    .await;
    assert_eq!(
        cell(&row, "Groups"),
        &json!(format!("{}, {missing}", group.display_name))
    );
    assert_eq!(cell(&row, "Role"), &json!("view"));
    assert_eq!(cell(&row, "Bindings"), &json!(1));
    assert_eq!(cell(&row, "Ready"), &json!("False"));
    assert_eq!(cell(&row, "Reason"), &json!("GroupNotFound"));
    let message = cell(&row, "Message").as_str().unwrap_or_default();
    assert!(
        message.contains(&missing) && message.len() <= 80,
        "short message naming the missing group: {message:?}"
    );

    let users = format!("/apis/{GROUP}/{VERSION}/scimusers");
    let row = poll_until(WAIT, "the user's group count", || async {
        let row = table_row(c, &users, &a.id).await?;
        (cell(&row, "Groups") == &json!(1)).then_some(row)
    })
    .await;
    assert_eq!(cell(&row, "UserName"), &json!(a.user_name));
    assert_eq!(cell(&row, "Active"), &json!(true));

    // The cluster-scoped kind shows its roles.
    let cluster = unique("col-cluster");
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": format!("{GROUP}/{VERSION}"), "kind": "ClusterGroupRoleMapping",
        "metadata": {"name": cluster},
        "spec": {"groups": [{"externalId": group.external_id}], "clusterRoles": ["view"],
                 "namespaceRoles": [{"clusterRole": "view", "namespaces": [ns]}]},
    }))
    .expect("object");
    let cgrm = api(c, "ClusterGroupRoleMapping", None);
    cgrm.create(&PostParams::default(), &obj)
        .await
        .expect("create the cluster mapping");
    let path = format!("/apis/{GROUP}/{VERSION}/clustergrouprolemappings");
    let row = poll_until(WAIT, "the cluster mapping's columns", || async {
        let row = table_row(c, &path, &cluster).await?;
        (cell(&row, "Ready") == &json!("True")).then_some(row)
    })
    .await;
    let _ = cgrm.delete(&cluster, &Default::default()).await;
    assert_eq!(cell(&row, "Roles"), &json!("view, view (ns)"));
    assert_eq!(cell(&row, "Groups"), &json!(group.external_id));
    assert_eq!(cell(&row, "Bindings"), &json!(2));
    assert_eq!(cell(&row, "Subjects"), &json!(2));
    assert!(
        cell(&row, "Message")
            .as_str()
            .is_some_and(|m| m.contains("2 binding(s) for 2 subject(s)")),
        "{row:?}"
    );
}
