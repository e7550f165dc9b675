//! The controller end to end: ScimUsers/ScimGroups written as the SCIM layer writes
//! them, mappings written as a person would, and access checked by the API server
//! itself (SubjectAccessReview). Everything is cluster-shared, so every name is unique.
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures::{stream, StreamExt, TryStreamExt};
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Namespace};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use kube_scim::controller::apply::FINALIZER;
use kube_scim::crd::{
    group::{shard_name, shard_of, SHARD_COUNT},
    ClusterGroupRoleMapping, GroupRoleMapping, ScimGroup, ScimGroupMembers, ScimUser,
    CONFIRM_REMOVAL_ANNOTATION,
};
use serde_json::{json, Value};

use crate::harness::{
    delete_ignore, operator, poll_until, scim, unique, TestEnv, GROUP_SCHEMA, USER_SCHEMA,
};

pub(crate) const WAIT: Duration = Duration::from_secs(30);

// ------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------

pub(crate) struct TestUser {
    pub id: String,
    pub user_name: String,
    pub email: String,
    pub external_id: String,
}

pub(crate) fn new_user(prefix: &str) -> TestUser {
    let tag = unique(prefix);
    TestUser {
        id: uuid::Uuid::new_v4().to_string(),
        user_name: format!("{tag}@example.com"),
        email: format!("{tag}@work.example.com"),
        external_id: uuid::Uuid::new_v4().to_string(),
    }
}

pub(crate) async fn create_user(client: &Client, u: &TestUser) {
    let obj: ScimUser = serde_json::from_value(json!({
        "apiVersion": "scim.kubescim.io/v1alpha1", "kind": "ScimUser",
        "metadata": {"name": u.id},
        "spec": {
            "userName": u.user_name, "externalId": u.external_id, "active": true,
            "emails": [
                {"value": format!("home-{}", u.email), "type": "home", "primary": true},
                {"value": u.email, "type": "work"}
            ]
        }
    }))
    .unwrap();
    Api::<ScimUser>::all(client.clone())
        .create(&PostParams::default(), &obj)
        .await
        .unwrap();
}

pub(crate) async fn set_active(client: &Client, id: &str, active: bool) {
    Api::<ScimUser>::all(client.clone())
        .patch(
            id,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"active": active}})),
        )
        .await
        .unwrap();
}

pub(crate) struct TestGroup {
    pub id: String,
    pub display_name: String,
    pub external_id: String,
}

pub(crate) async fn create_group(
    client: &Client,
    prefix: &str,
    members: &[&TestUser],
) -> TestGroup {
    let g = TestGroup {
        id: uuid::Uuid::new_v4().to_string(),
        display_name: unique(prefix),
        external_id: uuid::Uuid::new_v4().to_string(),
    };
    let members: Vec<Value> = members.iter().map(|u| json!({"value": u.id})).collect();
    let obj: ScimGroup = serde_json::from_value(json!({
        "apiVersion": "scim.kubescim.io/v1alpha1", "kind": "ScimGroup",
        "metadata": {"name": g.id},
        "spec": {"displayName": g.display_name, "externalId": g.external_id, "members": members}
    }))
    .unwrap();
    Api::<ScimGroup>::all(client.clone())
        .create(&PostParams::default(), &obj)
        .await
        .unwrap();
    g
}

async fn set_members(client: &Client, group: &TestGroup, members: &[&TestUser]) {
    let members: Vec<Value> = members.iter().map(|u| json!({"value": u.id})).collect();
    Api::<ScimGroup>::all(client.clone())
        .patch(
            &group.id,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"members": members}})),
        )
        .await
        .unwrap();
}

/// A Role in `ns` and a test-unique ClusterRole, both granting `get configmaps`.
pub(crate) async fn create_roles(client: &Client, ns: &str) -> (String, String) {
    let rules = json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]);
    let role = unique("reader");
    Api::<Role>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": role}, "rules": rules})).unwrap(),
        )
        .await
        .unwrap();
    let cluster_role = unique("kube-scim-test-reader");
    Api::<ClusterRole>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": cluster_role}, "rules": rules}))
                .unwrap(),
        )
        .await
        .unwrap();
    (role, cluster_role)
}

pub(crate) async fn create_mapping(client: &Client, ns: &str, name: &str, spec: Value) {
    let obj: GroupRoleMapping = serde_json::from_value(json!({
        "apiVersion": "scim.kubescim.io/v1alpha1", "kind": "GroupRoleMapping",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec
    }))
    .unwrap();
    Api::<GroupRoleMapping>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &obj)
        .await
        .unwrap();
}

pub(crate) async fn create_cluster_mapping(client: &Client, name: &str, spec: Value) {
    let obj: ClusterGroupRoleMapping = serde_json::from_value(json!({
        "apiVersion": "scim.kubescim.io/v1alpha1", "kind": "ClusterGroupRoleMapping",
        "metadata": {"name": name},
        "spec": spec
    }))
    .unwrap();
    Api::<ClusterGroupRoleMapping>::all(client.clone())
        .create(&PostParams::default(), &obj)
        .await
        .unwrap();
}

/// Asks the API server whether `user` (in `groups`) may `verb` `resource` in `ns`
/// (cluster-wide when None).
pub(crate) async fn can(
    client: &Client,
    user: &str,
    groups: &[&str],
    ns: Option<&str>,
    verb: &str,
    resource: &str,
) -> bool {
    let sar: SubjectAccessReview = serde_json::from_value(json!({
        "spec": {
            "user": user,
            "groups": groups,
            "resourceAttributes": {"namespace": ns, "verb": verb, "resource": resource}
        }
    }))
    .unwrap();
    let answer = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &sar)
        .await
        .unwrap();
    answer.status.is_some_and(|s| s.allowed)
}

/// Poll until `user` may (or may not) get configmaps in `ns`.
pub(crate) async fn expect_access(
    client: &Client,
    user: &str,
    groups: &[&str],
    ns: Option<&str>,
    want: bool,
) {
    let what = format!("{user} {groups:?} allowed={want} in {ns:?}");
    poll_until(WAIT, &what, || async {
        (can(client, user, groups, ns, "get", "configmaps").await == want).then_some(())
    })
    .await;
}

/// Poll until the mapping's Ready condition has `status` (and, if given, `reason`).
pub(crate) async fn expect_ready<K>(
    api: &Api<K>,
    name: &str,
    status: &str,
    reason: Option<&str>,
) -> Value
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    poll_until(
        WAIT,
        &format!("{name} Ready={status} {reason:?}"),
        || async {
            let obj = serde_json::to_value(api.get(name).await.ok()?).ok()?;
            let cond = obj["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Ready")?
                .clone();
            (cond["status"] == status && reason.is_none_or(|r| cond["reason"] == r)).then_some(obj)
        },
    )
    .await
}

/// Wait for an Event with `reason` about the object `name` in `ns`.
pub(crate) async fn expect_event(client: &Client, ns: &str, name: &str, reason: &str) {
    let events: Api<CoreEvent> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().fields(&format!("involvedObject.name={name}"));
    poll_until(WAIT, &format!("event {reason} on {name}"), || async {
        let list = events.list(&lp).await.ok()?;
        list.items
            .iter()
            .any(|e| e.reason.as_deref() == Some(reason))
            .then_some(())
    })
    .await;
}

pub(crate) fn subject_names(
    subjects: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>,
) -> BTreeSet<String> {
    subjects
        .iter()
        .flatten()
        .map(|s| format!("{}:{}", s.kind, s.name))
        .collect()
}

/// Names of the bindings a mapping's status lists.
fn status_bindings(obj: &Value) -> Vec<(Option<String>, String, u64)> {
    obj["status"]["bindings"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|b| {
                    (
                        b["namespace"].as_str().map(str::to_owned),
                        b["name"].as_str().unwrap_or_default().to_owned(),
                        b["subjects"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Read a binding's watch until it holds `name` as a User subject (or, with `present`
/// false, doesn't, or the binding is deleted).
async fn wait_subject(
    watch: &mut futures::stream::BoxStream<'static, Result<Event<RoleBinding>, watcher::Error>>,
    name: &str,
    present: bool,
) {
    let target = format!("User:{name}");
    tokio::time::timeout(WAIT, async {
        while let Some(ev) = watch.try_next().await.unwrap() {
            match ev {
                Event::Apply(b) | Event::InitApply(b)
                    if subject_names(&b.subjects).contains(&target) == present =>
                {
                    return;
                }
                Event::Delete(_) if !present => return,
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{target} present={present} not seen within {WAIT:?}"));
}

// ------------------------------------------------------------------------------------
// Tests
// ------------------------------------------------------------------------------------

#[tokio::test]
async fn member_gets_role_and_loses_it_on_deactivation_removal_and_deletion() {
    // Stores ScimUsers/ScimGroups directly: keep them out of the conformance run.
    let _view = crate::harness::hold_scim_view().await;
    operator().await;
    let env = TestEnv::new("ctl-access").await;
    let c = &env.client;
    let ns = env.namespace.as_str();
    let (role, _) = create_roles(c, ns).await;
    let (a, b) = (new_user("alice"), new_user("bob"));
    create_user(c, &a).await;
    create_user(c, &b).await;
    let group = create_group(c, "devs", &[&a, &b]).await;
    let mapping = unique("devs");
    create_mapping(
        c,
        ns,
        &mapping,
        json!({"groups": [{"displayName": group.display_name}], "roleRef": {"kind": "Role", "name": role}}),
    )
    .await;

    expect_access(c, &a.user_name, &[], Some(ns), true).await;
    expect_access(c, &b.user_name, &[], Some(ns), true).await;
    // Default subjects are Users by userName: the group itself grants nothing.
    assert!(
        !can(
            c,
            "nobody",
            &[&group.external_id],
            Some(ns),
            "get",
            "configmaps"
        )
        .await
    );

    // Mapping status: Ready, observedGeneration, one binding with two subjects, finalizer.
    let api: Api<GroupRoleMapping> = Api::namespaced(c.clone(), ns);
    let obj = expect_ready(&api, &mapping, "True", Some("Reconciled")).await;
    assert_eq!(
        obj["status"]["observedGeneration"],
        obj["metadata"]["generation"]
    );
    let bindings = status_bindings(&obj);
    assert_eq!(bindings.len(), 1, "{obj}");
    assert_eq!(bindings[0].2, 2);
    assert!(api
        .get(&mapping)
        .await
        .unwrap()
        .finalizers()
        .contains(&FINALIZER.to_owned()));

    // ScimUser status: the group and the role, where and through what.
    let users: Api<ScimUser> = Api::all(c.clone());
    let st = poll_until(WAIT, "alice's status", || async {
        let st = users.get(&a.id).await.ok()?.status?;
        (!st.access.is_empty()).then_some(st)
    })
    .await;
    assert_eq!(st.groups.len(), 1);
    assert_eq!(st.groups[0].id, group.id);
    assert_eq!(st.access.len(), 1);
    let grant = &st.access[0];
    assert_eq!(
        (
            grant.role_kind.as_str(),
            grant.role_name.as_str(),
            grant.namespace.as_deref()
        ),
        ("Role", role.as_str(), Some(ns))
    );
    assert_eq!(grant.mapping, format!("{ns}/{mapping}"));
    assert_eq!(grant.group, group.display_name);
    // ScimGroup status: member count and the mapping.
    let groups: Api<ScimGroup> = Api::all(c.clone());
    poll_until(WAIT, "group status", || async {
        let st = groups.get(&group.id).await.ok()?.status?;
        (st.member_count == 2 && st.mappings == vec![format!("{ns}/{mapping}")]).then_some(())
    })
    .await;

    // Deactivation.
    set_active(c, &a.id, false).await;
    expect_access(c, &a.user_name, &[], Some(ns), false).await;
    assert!(can(c, &b.user_name, &[], Some(ns), "get", "configmaps").await);
    poll_until(WAIT, "alice's access cleared", || async {
        let st = users.get(&a.id).await.ok()?.status.unwrap_or_default();
        (st.access.is_empty() && st.groups.len() == 1).then_some(())
    })
    .await;
    set_active(c, &a.id, true).await;
    expect_access(c, &a.user_name, &[], Some(ns), true).await;

    // Member removal.
    set_members(c, &group, &[&a]).await;
    expect_access(c, &b.user_name, &[], Some(ns), false).await;
    poll_until(WAIT, "member count 1", || async {
        (groups.get(&group.id).await.ok()?.status?.member_count == 1).then_some(())
    })
    .await;

    // User deletion.
    users.delete(&a.id, &DeleteParams::default()).await.unwrap();
    expect_access(c, &a.user_name, &[], Some(ns), false).await;
    // No subjects left: no binding, and the status says so.
    let obj = poll_until(WAIT, "no bindings", || async {
        let obj = serde_json::to_value(api.get(&mapping).await.ok()?).ok()?;
        status_bindings(&obj).is_empty().then_some(obj)
    })
    .await;
    assert_eq!(obj["status"]["conditions"][0]["status"], "True");

    delete_ignore(&users, &b.id).await;
    delete_ignore(&groups, &group.id).await;
}

#[tokio::test]
async fn subject_kinds_attributes_and_prefixes_follow_the_mapping() {
    // Stores ScimUsers/ScimGroups directly: keep them out of the conformance run.
    let _view = crate::harness::hold_scim_view().await;
    operator().await;
    let env = TestEnv::new("ctl-subjects").await;
    let c = &env.client;
    let ns = env.namespace.as_str();
    let (_, cluster_role) = create_roles(c, ns).await;
    let u = new_user("carol");
    create_user(c, &u).await;
    let group = create_group(c, "ops", &[&u]).await;

    // Group subjects named by displayName with a prefix; a ClusterRole bound in-namespace.
    let by_group = unique("by-group");
    create_mapping(
        c,
        ns,
        &by_group,
        json!({
            "groups": [{"externalId": group.external_id}],
            "roleRef": {"kind": "ClusterRole", "name": cluster_role},
            "subjects": {"kind": "Group", "groupAttribute": "displayName", "groupPrefix": "oidc:"}
        }),
    )
    .await;
    let prefixed_group = format!("oidc:{}", group.display_name);
    expect_access(c, "someone", &[&prefixed_group], Some(ns), true).await;
    assert!(!can(c, &u.user_name, &[], Some(ns), "get", "configmaps").await);
    assert!(
        !can(
            c,
            "someone",
            &[&group.display_name],
            Some(ns),
            "get",
            "configmaps"
        )
        .await
    );

    // UserAndGroup: User by work email with a prefix, Group by externalId (default).
    let both = unique("both");
    create_mapping(
        c,
        ns,
        &both,
        json!({
            "groups": [{"displayName": group.display_name}],
            "roleRef": {"kind": "ClusterRole", "name": cluster_role},
            "subjects": {"kind": "UserAndGroup", "userAttribute": "email", "userPrefix": "aad:"}
        }),
    )
    .await;
    expect_access(c, &format!("aad:{}", u.email), &[], Some(ns), true).await;
    expect_access(c, "someone-else", &[&group.external_id], Some(ns), true).await;
    assert!(!can(c, &u.email, &[], Some(ns), "get", "configmaps").await);

    // Deactivation removes the User subject but (by design) not the Group subject:
    // the group claim is the identity provider's business.
    set_active(c, &u.id, false).await;
    expect_access(c, &format!("aad:{}", u.email), &[], Some(ns), false).await;
    assert!(
        can(
            c,
            "someone-else",
            &[&group.external_id],
            Some(ns),
            "get",
            "configmaps"
        )
        .await
    );

    delete_ignore(&Api::<ScimUser>::all(c.clone()), &u.id).await;
    delete_ignore(&Api::<ScimGroup>::all(c.clone()), &group.id).await;
    delete_ignore(&Api::<ClusterRole>::all(c.clone()), &cluster_role).await;
}

#[tokio::test]
async fn cluster_mapping_binds_cluster_wide_and_follows_namespaces() {
    // Stores ScimUsers/ScimGroups directly: keep them out of the conformance run.
    let _view = crate::harness::hold_scim_view().await;
    operator().await;
    let env = TestEnv::new("ctl-cluster").await;
    let c = &env.client;
    let (_, cluster_role) = create_roles(c, &env.namespace).await;
    let (_, ns_role) = create_roles(c, &env.namespace).await;
    let u = new_user("dave");
    create_user(c, &u).await;
    let group = create_group(c, "platform", &[&u]).await;
    let team = unique("team");
    let listed = unique("t-listed");
    let name = unique("platform");
    let namespaces: Api<Namespace> = Api::all(c.clone());
    let make_ns = |n: String, labels: Value| {
        let namespaces = namespaces.clone();
        async move {
            let obj: Namespace =
                serde_json::from_value(json!({"metadata": {"name": n, "labels": labels}})).unwrap();
            namespaces
                .create(&PostParams::default(), &obj)
                .await
                .unwrap();
        }
    };
    make_ns(listed.clone(), json!({})).await;
    create_cluster_mapping(
        c,
        &name,
        json!({
            "groups": [{"displayName": group.display_name}],
            "clusterRoles": [cluster_role],
            "namespaceRoles": [{
                "clusterRole": ns_role,
                "namespaces": [listed],
                "namespaceSelector": {"matchLabels": {"team": team}}
            }]
        }),
    )
    .await;

    // Cluster-wide grant through the ClusterRoleBinding.
    expect_access(c, &u.user_name, &[], None, true).await;
    let sar_ns = |ns: String| {
        let user = u.user_name.clone();
        async move { can(c, &user, &[], Some(&ns), "get", "configmaps").await }
    };
    // Both roles grant the same, so the namespaced part is checked on the bindings.
    let rbs_in = |ns: String| async move {
        Api::<RoleBinding>::namespaced(c.clone(), &ns)
            .list(&ListParams::default().labels("app.kubernetes.io/managed-by=kube-scim"))
            .await
            .map(|l| l.items.len())
            .unwrap_or(0)
    };
    poll_until(WAIT, "binding in the listed namespace", || async {
        (rbs_in(listed.clone()).await == 1).then_some(())
    })
    .await;
    assert!(sar_ns(listed.clone()).await);

    // A namespace created with the label gets a binding; relabelled, it loses it.
    let selected = unique("t-selected");
    make_ns(selected.clone(), json!({"team": team})).await;
    poll_until(WAIT, "binding in a new labelled namespace", || async {
        (rbs_in(selected.clone()).await == 1).then_some(())
    })
    .await;
    namespaces
        .patch(
            &selected,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"team": "someone-else"}}})),
        )
        .await
        .unwrap();
    poll_until(WAIT, "binding gone after relabel", || async {
        (rbs_in(selected.clone()).await == 0).then_some(())
    })
    .await;
    namespaces
        .patch(
            &selected,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"team": team}}})),
        )
        .await
        .unwrap();
    poll_until(WAIT, "binding back after relabel", || async {
        (rbs_in(selected.clone()).await == 1).then_some(())
    })
    .await;
    // Deleting the namespace: the status stops listing it.
    namespaces
        .delete(&selected, &DeleteParams::default())
        .await
        .unwrap();
    let api: Api<ClusterGroupRoleMapping> = Api::all(c.clone());
    poll_until(WAIT, "status without the deleted namespace", || async {
        let obj = serde_json::to_value(api.get(&name).await.ok()?).ok()?;
        let b = status_bindings(&obj);
        (b.len() == 2
            && b.iter()
                .all(|(ns, _, _)| ns.as_deref() != Some(selected.as_str())))
        .then_some(())
    })
    .await;
    let obj = expect_ready(&api, &name, "True", Some("Reconciled")).await;
    assert_eq!(
        obj["status"]["observedGeneration"],
        obj["metadata"]["generation"]
    );

    // Deleting the mapping removes every binding (finalizer path), then the mapping.
    api.delete(&name, &DeleteParams::default()).await.unwrap();
    poll_until(WAIT, "mapping gone", || async {
        api.get_opt(&name).await.ok()?.is_none().then_some(())
    })
    .await;
    assert_eq!(rbs_in(listed.clone()).await, 0);
    let crbs: Api<ClusterRoleBinding> = Api::all(c.clone());
    let left = crbs
        .list(&ListParams::default().labels(&format!("scim.kubescim.io/mapping-name={name}")))
        .await
        .unwrap();
    assert!(left.items.is_empty(), "{:?}", left.items);
    expect_access(c, &u.user_name, &[], None, false).await;

    delete_ignore(&namespaces, &listed).await;
    delete_ignore(&Api::<ScimUser>::all(c.clone()), &u.id).await;
    delete_ignore(&Api::<ScimGroup>::all(c.clone()), &group.id).await;
    for r in [&cluster_role, &ns_role] {
        delete_ignore(&Api::<ClusterRole>::all(c.clone()), r).await;
    }
}

#[tokio::test]
async fn manual_edits_are_reverted_and_deleted_bindings_recreated_and_mapping_deletion_prunes() {
    // Stores ScimUsers/ScimGroups directly: keep them out of the conformance run.
    let _view = crate::harness::hold_scim_view().await;
    operator().await;
    let env = TestEnv::new("ctl-revert").await;
    let c = &env.client;
    let ns = env.namespace.as_str();
    let (role, _) = create_roles(c, ns).await;
    let u = new_user("erin");
    create_user(c, &u).await;
    let group = create_group(c, "editors", &[&u]).await;
    let mapping = unique("editors");
    create_mapping(
        c,
        ns,
        &mapping,
        json!({"groups": [{"displayName": group.display_name}], "roleRef": {"kind": "Role", "name": role}}),
    )
    .await;
    let api: Api<GroupRoleMapping> = Api::namespaced(c.clone(), ns);
    let binding = poll_until(WAIT, "binding listed", || async {
        let obj = serde_json::to_value(api.get(&mapping).await.ok()?).ok()?;
        status_bindings(&obj).first().map(|b| b.1.clone())
    })
    .await;
    let rbs: Api<RoleBinding> = Api::namespaced(c.clone(), ns);
    let want = BTreeSet::from([format!("User:{}", u.user_name)]);
    poll_until(WAIT, "binding has the user", || async {
        (subject_names(&rbs.get(&binding).await.ok()?.subjects) == want).then_some(())
    })
    .await;

    // A person swaps the subjects (kubectl edit): put back.
    rbs.patch(
        &binding,
        &PatchParams::default(),
        &Patch::Merge(json!({"subjects": [{"kind": "User", "name": "mallory", "apiGroup": "rbac.authorization.k8s.io"}]})),
    )
    .await
    .unwrap();
    poll_until(WAIT, "edit reverted", || async {
        (subject_names(&rbs.get(&binding).await.ok()?.subjects) == want).then_some(())
    })
    .await;
    // The authorizer reads its own informer cache, a moment behind the GET above.
    expect_access(c, "mallory", &[], Some(ns), false).await;

    // A person repoints its mapping label (labels are all the cache keeps of the
    // metadata besides the delete preconditions): written back.
    let mapping_label = "scim.kubescim.io/mapping-name";
    rbs.patch(
        &binding,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {mapping_label: "someone-else"}}})),
    )
    .await
    .unwrap();
    poll_until(WAIT, "label drift repaired", || async {
        let b = rbs.get(&binding).await.ok()?;
        let label = b.metadata.labels?.get(mapping_label).cloned();
        (label.as_deref() == Some(mapping.as_str())).then_some(())
    })
    .await;

    // Another tool labels and annotates it; a revocation (the fast lane) keeps both:
    // a binding whose metadata holds more than kube-scim's is patched, not replaced.
    let other = new_user("frank");
    create_user(c, &other).await;
    set_members(c, &group, &[&u, &other]).await;
    let both = BTreeSet::from([
        format!("User:{}", u.user_name),
        format!("User:{}", other.user_name),
    ]);
    poll_until(WAIT, "binding has both", || async {
        (subject_names(&rbs.get(&binding).await.ok()?.subjects) == both).then_some(())
    })
    .await;
    rbs.patch(
        &binding,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {
            "labels": {"example.com/team": "platform"},
            "annotations": {"example.com/note": "kept"}}})),
    )
    .await
    .unwrap();
    set_members(c, &group, &[&other]).await;
    expect_access(c, &u.user_name, &[], Some(ns), false).await;
    let b = rbs.get(&binding).await.unwrap();
    let only_other = BTreeSet::from([format!("User:{}", other.user_name)]);
    assert_eq!(subject_names(&b.subjects), only_other, "{b:?}");
    let labels = b.metadata.labels.clone().unwrap_or_default();
    let annotations = b.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        labels.get("example.com/team").map(String::as_str),
        Some("platform"),
        "{b:?}"
    );
    assert_eq!(
        annotations.get("example.com/note").map(String::as_str),
        Some("kept"),
        "{b:?}"
    );
    set_members(c, &group, &[&u]).await;
    poll_until(WAIT, "back to the first member", || async {
        (subject_names(&rbs.get(&binding).await.ok()?.subjects) == want).then_some(())
    })
    .await;

    // A person deletes it: recreated.
    rbs.delete(&binding, &DeleteParams::default())
        .await
        .unwrap();
    poll_until(WAIT, "binding recreated", || async {
        let b = rbs.get_opt(&binding).await.ok()??;
        (subject_names(&b.subjects) == want).then_some(())
    })
    .await;

    // Deleting the mapping: the finalizer holds it until the binding is gone.
    api.delete(&mapping, &DeleteParams::default())
        .await
        .unwrap();
    poll_until(WAIT, "mapping gone", || async {
        api.get_opt(&mapping).await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(rbs.get_opt(&binding).await.unwrap().is_none());
    expect_access(c, &u.user_name, &[], Some(ns), false).await;

    delete_ignore(&Api::<ScimUser>::all(c.clone()), &u.id).await;
    delete_ignore(&Api::<ScimUser>::all(c.clone()), &other.id).await;
    delete_ignore(&Api::<ScimGroup>::all(c.clone()), &group.id).await;
}

#[tokio::test]
async fn protected_role_needs_opt_in() {
    // Stores ScimUsers/ScimGroups directly: keep them out of the conformance run.
    let _view = crate::harness::hold_scim_view().await;
    operator().await;
    let env = TestEnv::new("ctl-protected").await;
    let c = &env.client;
    let u = new_user("frank");
    create_user(c, &u).await;
    let group = create_group(c, "admins", &[&u]).await;
    let name = unique("admins");
    create_cluster_mapping(
        c,
        &name,
        json!({"groups": [{"displayName": group.display_name}], "clusterRoles": ["cluster-admin"]}),
    )
    .await;
    let api: Api<ClusterGroupRoleMapping> = Api::all(c.clone());
    let obj = expect_ready(&api, &name, "False", Some("ProtectedRoleRefused")).await;
    assert!(status_bindings(&obj).is_empty(), "{obj}");
    // Events about cluster-scoped objects land in `default`.
    expect_event(c, "default", &name, "ProtectedRoleRefused").await;
    assert!(!can(c, &u.user_name, &[], None, "delete", "nodes").await);

    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"allowProtectedRoles": true}})),
    )
    .await
    .unwrap();
    expect_ready(&api, &name, "True", Some("Reconciled")).await;
    poll_until(WAIT, "cluster-admin granted", || async {
        can(c, &u.user_name, &[], None, "delete", "nodes")
            .await
            .then_some(())
    })
    .await;

    api.delete(&name, &DeleteParams::default()).await.unwrap();
    poll_until(WAIT, "cluster-admin revoked", || async {
        (!can(c, &u.user_name, &[], None, "delete", "nodes").await).then_some(())
    })
    .await;
    delete_ignore(&Api::<ScimUser>::all(c.clone()), &u.id).await;
    delete_ignore(&Api::<ScimGroup>::all(c.clone()), &group.id).await;
}

/// The value of the shared operator's metric line starting with `series`.
async fn metric(series: &str) -> u64 {
    let op = operator().await;
    let text = reqwest::get(format!("{}/metrics", op.probe_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// `kube_scim_revocations_total{outcome="removed"}` of the shared operator.
async fn fast_lane_removals() -> u64 {
    metric("kube_scim_revocations_total{outcome=\"removed\"}").await
}

#[tokio::test]
async fn revocation_is_never_held_but_a_mapping_edit_that_wipes_is() {
    // Stores ScimUsers/ScimGroups directly: keep them out of the conformance run.
    let _view = crate::harness::hold_scim_view().await;
    operator().await;
    let env = TestEnv::new("ctl-guard").await;
    let c = &env.client;
    let ns = env.namespace.as_str();
    let (role, _) = create_roles(c, ns).await;
    let users: Vec<TestUser> = (0..12).map(|i| new_user(&format!("g{i}"))).collect();
    for u in &users {
        create_user(c, u).await;
    }
    let all: Vec<&TestUser> = users.iter().collect();
    let group = create_group(c, "many", &all).await;
    let mapping = unique("many");
    create_mapping(
        c,
        ns,
        &mapping,
        json!({"groups": [{"displayName": group.display_name}], "roleRef": {"kind": "Role", "name": role}}),
    )
    .await;
    let api: Api<GroupRoleMapping> = Api::namespaced(c.clone(), ns);
    poll_until(WAIT, "12 subjects bound", || async {
        let obj = serde_json::to_value(api.get(&mapping).await.ok()?).ok()?;
        (status_bindings(&obj).first()?.2 == 12).then_some(())
    })
    .await;
    expect_ready(&api, &mapping, "True", Some("Reconciled")).await;

    // 8 of 12 leave the group (67% > 50%) and a newcomer joins: identity-side changes,
    // so the removal is not held, and the fast lane writes it.
    let removed_before = fast_lane_removals().await;
    let newcomer = new_user("newcomer");
    create_user(c, &newcomer).await;
    let mut kept: Vec<&TestUser> = users[..4].iter().collect();
    kept.push(&newcomer);
    set_members(c, &group, &kept).await;
    expect_access(c, &users[11].user_name, &[], Some(ns), false).await;
    expect_access(c, &newcomer.user_name, &[], Some(ns), true).await;
    for u in &users[4..] {
        assert!(!can(c, &u.user_name, &[], Some(ns), "get", "configmaps").await);
    }
    let obj = expect_ready(&api, &mapping, "True", Some("Reconciled")).await;
    assert!(obj["status"].get("heldRemovals").is_none(), "{obj}");
    poll_until(WAIT, "fast-lane removals counted", || async {
        (fast_lane_removals().await >= removed_before + 8).then_some(())
    })
    .await;

    // Everyone is back (13 subjects); then a person edits the mapping to another group
    // holding one of them: removing 12 of 13 by configuration is held until confirmed.
    let mut everyone: Vec<&TestUser> = users.iter().collect();
    everyone.push(&newcomer);
    set_members(c, &group, &everyone).await;
    poll_until(WAIT, "13 subjects bound", || async {
        let obj = serde_json::to_value(api.get(&mapping).await.ok()?).ok()?;
        (status_bindings(&obj).first()?.2 == 13).then_some(())
    })
    .await;
    let small = create_group(c, "few", &[&users[0]]).await;
    api.patch(
        &mapping,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"groups": [{"displayName": small.display_name}]}})),
    )
    .await
    .unwrap();
    let obj = expect_ready(&api, &mapping, "False", Some("RemovalHeld")).await;
    let held = &obj["status"]["heldRemovals"];
    assert_eq!(held["subjects"], 12, "{obj}");
    assert_eq!(held["managedSubjects"], 13, "{obj}");
    assert!(
        obj["status"]["observedGeneration"].as_i64() < obj["metadata"]["generation"].as_i64(),
        "the edit is not applied yet: {obj}"
    );
    let token = held["confirmToken"].as_str().unwrap().to_owned();
    expect_event(c, ns, &mapping, "RemovalHeld").await;
    poll_until(WAIT, "kube_scim_held_removals counts the hold", || async {
        (metric("kube_scim_held_removals").await >= 12).then_some(())
    })
    .await;
    assert!(can(c, &users[1].user_name, &[], Some(ns), "get", "configmaps").await);
    assert!(can(c, &newcomer.user_name, &[], Some(ns), "get", "configmaps").await);

    // A person confirms: the removal goes through.
    api.patch(
        &mapping,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {CONFIRM_REMOVAL_ANNOTATION: token}}})),
    )
    .await
    .unwrap();
    expect_access(c, &users[1].user_name, &[], Some(ns), false).await;
    expect_access(c, &newcomer.user_name, &[], Some(ns), false).await;
    let obj = expect_ready(&api, &mapping, "True", Some("Reconciled")).await;
    assert!(obj["status"].get("heldRemovals").is_none(), "{obj}");
    assert_eq!(status_bindings(&obj)[0].2, 1);
    assert_eq!(
        obj["status"]["observedGeneration"],
        obj["metadata"]["generation"]
    );
    expect_event(c, ns, &mapping, "RemovalConfirmed").await;
    assert!(can(c, &users[0].user_name, &[], Some(ns), "get", "configmaps").await);

    let user_api = Api::<ScimUser>::all(c.clone());
    for u in users.iter().chain([&newcomer]) {
        delete_ignore(&user_api, &u.id).await;
    }
    let groups = Api::<ScimGroup>::all(c.clone());
    delete_ignore(&groups, &group.id).await;
    delete_ignore(&groups, &small.id).await;
}

#[tokio::test]
async fn scim_changes_reach_the_binding_fast() {
    let scim = scim().await;
    let env = TestEnv::new("ctl-latency").await;
    let c = &env.client;
    let ns = env.namespace.as_str();
    let (role, _) = create_roles(c, ns).await;
    let mut ids = Vec::new();
    let mut names = Vec::new();
    for i in 0..5 {
        let name = format!("{}@example.com", unique(&format!("lat{i}")));
        let body = scim
            .create_user(&json!({"schemas": [USER_SCHEMA], "userName": name}))
            .await;
        ids.push(body["id"].as_str().unwrap().to_owned());
        names.push(name);
    }
    let display = unique("latency");
    let members: Vec<Value> = ids.iter().map(|id| json!({"value": id})).collect();
    let r = scim
        .post(
            "/Groups",
            &json!({"schemas": [GROUP_SCHEMA], "displayName": display, "members": members}),
        )
        .await;
    r.created();
    let gid = r.id();
    let mapping = unique("latency");
    create_mapping(
        c,
        ns,
        &mapping,
        json!({"groups": [{"displayName": display}], "roleRef": {"kind": "Role", "name": role}}),
    )
    .await;
    let api: Api<GroupRoleMapping> = Api::namespaced(c.clone(), ns);
    let binding = poll_until(WAIT, "5 subjects bound", || async {
        let obj = serde_json::to_value(api.get(&mapping).await.ok()?).ok()?;
        let b = status_bindings(&obj);
        (b.first()?.2 == 5).then(|| b[0].1.clone())
    })
    .await;

    let rbs: Api<RoleBinding> = Api::namespaced(c.clone(), ns);
    let mut watch = watcher::watcher(
        rbs,
        watcher::Config::default().fields(&format!("metadata.name={binding}")),
    )
    .boxed();
    let changes: usize = std::env::var("KUBE_SCIM_LATENCY_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let mut times: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    for i in 0..changes {
        let (what, path, ops, present) = match i % 4 {
            0 => (
                "deactivate",
                format!("/Users/{}", ids[0]),
                json!([{"op": "replace", "path": "active", "value": false}]),
                false,
            ),
            1 => (
                "reactivate",
                format!("/Users/{}", ids[0]),
                json!([{"op": "replace", "path": "active", "value": true}]),
                true,
            ),
            2 => (
                "remove member",
                format!("/Groups/{gid}"),
                json!([{"op": "remove", "path": format!("members[value eq \"{}\"]", ids[1])}]),
                false,
            ),
            _ => (
                "add member",
                format!("/Groups/{gid}"),
                json!([{"op": "add", "path": "members", "value": [{"value": ids[1]}]}]),
                true,
            ),
        };
        let who = if i % 4 < 2 { &names[0] } else { &names[1] };
        let r = scim.patch_ops(&path, ops).await;
        assert!(r.status < 300, "{what}: {} {}", r.status, r.text);
        let t0 = Instant::now();
        wait_subject(&mut watch, who, present).await;
        times.entry(what).or_default().push(t0.elapsed());
    }
    // Deletion of every user (the last one empties the binding, which is then deleted).
    for (id, name) in ids.iter().zip(&names) {
        let r = scim.delete(&format!("/Users/{id}")).await;
        r.no_content();
        let t0 = Instant::now();
        wait_subject(&mut watch, name, false).await;
        times.entry("delete user").or_default().push(t0.elapsed());
    }

    let summary = |name: &str, v: &[Duration]| {
        let mut v = v.to_vec();
        v.sort();
        let p95 = v[(v.len() * 95 / 100).min(v.len() - 1)];
        format!(
            "{name:>16}: n={:3} median={:?} p95={p95:?} worst={:?}",
            v.len(),
            v[v.len() / 2],
            v[v.len() - 1]
        )
    };
    let mut report = String::from("SCIM response -> RoleBinding change (watch)\n");
    let mut losses = Vec::new();
    for (what, v) in &times {
        report.push_str(&summary(what, v));
        report.push('\n');
        if matches!(*what, "deactivate" | "remove member" | "delete user") {
            losses.extend_from_slice(v);
        }
    }
    report.push_str(&summary("access removed", &losses));
    report.push('\n');
    eprintln!("{report}");
    let _ = std::fs::write(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/controller-latency.txt"),
        &report,
    );
    // Speed is reported (target/controller-latency.txt), not enforced: a timed assertion
    // would only measure how loaded the machine is. Every change above had to arrive.
    scim.delete(&format!("/Groups/{gid}")).await;
}

#[tokio::test]
async fn twenty_thousand_member_group_is_split_into_parts() {
    // Stores ScimUsers/ScimGroups directly: keep them out of the conformance run.
    let _view = crate::harness::hold_scim_view().await;
    const N: usize = 20_000;
    operator().await;
    let env = TestEnv::new("ctl-20k").await;
    let c = &env.client;
    let ns = env.namespace.as_str();
    let started = Instant::now();
    let tag = unique("big");
    let ids: Vec<String> = (0..N).map(|i| format!("{tag}-u{i:05}")).collect();
    let user_name = |id: &str| format!("{id}@bigcorp.example.com");

    let users: Api<ScimUser> = Api::all(c.clone());
    let created = stream::iter(ids.iter().map(|id| {
        let users = users.clone();
        let obj: ScimUser = serde_json::from_value(json!({
            "apiVersion": "scim.kubescim.io/v1alpha1", "kind": "ScimUser",
            "metadata": {"name": id},
            "spec": {"userName": user_name(id), "active": true}
        }))
        .unwrap();
        async move { users.create(&PostParams::default(), &obj).await.map(|_| ()) }
    }))
    .buffer_unordered(32)
    .try_collect::<Vec<()>>()
    .await;
    created.unwrap();
    let users_created = started.elapsed();

    let gid = format!("{tag}-group");
    let display = format!("{tag} everyone");
    let groups: Api<ScimGroup> = Api::all(c.clone());
    let shards: Api<ScimGroupMembers> = Api::all(c.clone());
    let mut per_shard: BTreeMap<u32, Vec<Value>> = BTreeMap::new();
    for id in &ids {
        per_shard
            .entry(shard_of(id))
            .or_default()
            .push(json!({"value": id}));
    }
    for s in 0..SHARD_COUNT {
        let obj: ScimGroupMembers = serde_json::from_value(json!({
            "apiVersion": "scim.kubescim.io/v1alpha1", "kind": "ScimGroupMembers",
            "metadata": {"name": shard_name(&gid, s), "labels": {"scim.kubescim.io/group": gid}},
            "spec": {"group": gid, "members": per_shard.remove(&s).unwrap_or_default()}
        }))
        .unwrap();
        shards.create(&PostParams::default(), &obj).await.unwrap();
    }
    let obj: ScimGroup = serde_json::from_value(json!({
        "apiVersion": "scim.kubescim.io/v1alpha1", "kind": "ScimGroup",
        "metadata": {"name": gid},
        "spec": {"displayName": display, "sharded": true}
    }))
    .unwrap();
    groups.create(&PostParams::default(), &obj).await.unwrap();

    let mapping = unique("everyone");
    create_mapping(
        c,
        ns,
        &mapping,
        json!({"groups": [{"displayName": display}], "roleRef": {"kind": "ClusterRole", "name": "view"}}),
    )
    .await;
    let api: Api<GroupRoleMapping> = Api::namespaced(c.clone(), ns);
    let long = Duration::from_secs(180);
    let status = poll_until(long, "20k subjects in the mapping status", || async {
        let obj = serde_json::to_value(api.get(&mapping).await.ok()?).ok()?;
        let total: u64 = status_bindings(&obj).iter().map(|b| b.2).sum();
        (total == N as u64).then_some(obj)
    })
    .await;
    // One status entry for the logical binding, naming its first part and the count.
    let entries = status_bindings(&status);
    assert_eq!(entries.len(), 1, "{status}");
    let count = status["status"]["bindings"][0]["parts"]
        .as_u64()
        .unwrap_or(1);
    assert!(count >= 2, "20k subjects need several parts: {status}");
    let parts: Vec<(Option<String>, String, u64)> = (0..count)
        .map(|i| match i {
            0 => entries[0].clone(),
            i => (None, format!("{}-part-{i}", entries[0].1), 0),
        })
        .collect();

    // Every subject exactly once across the parts, each part within the budget.
    let rbs: Api<RoleBinding> = Api::namespaced(c.clone(), ns);
    let seen = poll_until(long, "bindings carry every subject", || async {
        let mut seen: Vec<String> = Vec::new();
        for (_, name, _) in &parts {
            let b = rbs.get(name).await.ok()?;
            assert_eq!(b.role_ref.name, "view");
            let subjects = b.subjects.unwrap_or_default();
            assert!(
                subjects.len() <= 10_000,
                "{name}: {} subjects",
                subjects.len()
            );
            let bytes = serde_json::to_vec(&subjects).unwrap().len();
            assert!(bytes <= 800_000, "{name}: {bytes} bytes of subjects");
            seen.extend(subjects.into_iter().map(|s| s.name));
        }
        (seen.len() == N).then_some(seen)
    })
    .await;
    let unique_seen: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique_seen.len(), N, "a subject appears in two parts");
    let expected: BTreeSet<String> = ids.iter().map(|id| user_name(id)).collect();
    assert!(unique_seen.into_iter().eq(expected.iter()));
    let bound = started.elapsed();

    // Spot check through the authorizer, and the statuses.
    assert!(can(c, &user_name(&ids[N - 1]), &[], Some(ns), "list", "pods").await);
    poll_until(long, "memberCount 20000", || async {
        let st = groups.get(&gid).await.ok()?.status?;
        (st.member_count == N as u64 && st.mappings == vec![format!("{ns}/{mapping}")])
            .then_some(())
    })
    .await;
    poll_until(long, "a member's status", || async {
        let st = users.get(&ids[0]).await.ok()?.status?;
        (st.groups.first()?.id == gid && st.access.len() == 1).then_some(())
    })
    .await;
    eprintln!(
        "20k: users created in {users_created:?}, bound in {bound:?} ({} parts), statuses by {:?}",
        parts.len(),
        started.elapsed()
    );

    // Clean up: the mapping first (unguarded), then the group and the users.
    api.delete(&mapping, &DeleteParams::default())
        .await
        .unwrap();
    poll_until(long, "mapping gone", || async {
        api.get_opt(&mapping).await.ok()?.is_none().then_some(())
    })
    .await;
    delete_ignore(&groups, &gid).await;
    for s in 0..SHARD_COUNT {
        delete_ignore(&shards, &shard_name(&gid, s)).await;
    }
    stream::iter(ids.iter().map(|id| {
        let users = users.clone();
        async move {
            let _ = users.delete(id, &DeleteParams::default()).await;
        }
    }))
    .buffer_unordered(32)
    .collect::<Vec<()>>()
    .await;
    eprintln!("20k: total {:?}", started.elapsed());
}

/// Two electors on one Lease: one leads, the other waits; on release the other takes over.
#[tokio::test]
async fn one_leader_at_a_time() {
    use kube_scim::controller::leader::{Elector, LeaseConfig, TermEnd};
    use tokio_util::sync::CancellationToken;
    let env = TestEnv::new("ctl-lease").await;
    let lease = unique("lease");
    let cfg = |id: &str| {
        let mut cfg = LeaseConfig::with_timing(
            env.namespace.clone(),
            lease.clone(),
            id.to_owned(),
            Duration::from_secs(3),
            Duration::from_secs(2),
            Duration::from_millis(200),
        )
        .unwrap();
        cfg.renew_period = Duration::from_millis(500);
        cfg
    };
    let mut a = Elector::new(env.client.clone(), cfg("a"));
    let mut b = Elector::new(env.client.clone(), cfg("b"));
    let stop = CancellationToken::new();
    let a_term = a.acquire(&stop, || {}).await.expect("a leads");

    // b stands by while a renews.
    let b_stop = CancellationToken::new();
    let mut standbys = 0;
    let b_wait = async {
        let won = b.acquire(&b_stop, || standbys += 1).await;
        (won, b)
    };
    let a_hold = async {
        tokio::time::timeout(Duration::from_secs(5), a.hold(&a_term))
            .await
            .ok();
        assert!(
            a_term.is_leading(),
            "a kept the lease while renewing (its term outlived the renew deadline)"
        );
        a_term.end(TermEnd::Shutdown);
        a.release().await;
        a
    };
    let ((won, _b), _a) = tokio::join!(
        async {
            tokio::time::timeout(Duration::from_secs(20), b_wait)
                .await
                .expect("b takes over after a releases")
        },
        a_hold
    );
    let b_term = won.expect("b leads");
    assert!(b_term.is_leading());
    assert!(!a_term.is_leading());
    assert!(
        standbys > 3,
        "b stood by while a held the lease ({standbys})"
    );
    let held: k8s_openapi::api::coordination::v1::Lease =
        Api::namespaced(env.client.clone(), &env.namespace)
            .get(&lease)
            .await
            .unwrap();
    let spec = held.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("b"));
    assert_eq!(spec.lease_transitions, Some(1));
}

/// Prunes delete the very object the plan saw: uid and resourceVersion preconditions from
/// the cache entry. A binding changed (or deleted and recreated) since is kept and
/// reported stale (re-plan), not failed; the unchanged one goes. Checked on the apply
/// layer: no managed-by label, so the shared operator leaves these bindings alone.
#[tokio::test]
async fn prune_deletes_only_the_binding_the_plan_saw() {
    use kube_scim::controller::bindings::{BindingInterner, CachedBinding};
    use kube_scim::controller::leader::Term;
    use kube_scim::controller::{apply, plan, world::Snapshot};
    let env = TestEnv::new("ctl-prune-pre").await;
    let ns = env.namespace.clone();
    let rbs: Api<RoleBinding> = Api::namespaced(env.client.clone(), &ns);
    let mut created = Vec::new();
    for name in ["changed", "recreated", "unchanged"] {
        let rb: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "someone"}]
        }))
        .unwrap();
        created.push(rbs.create(&PostParams::default(), &rb).await.unwrap());
    }
    // The snapshot the plan saw: all three as created.
    let lists = BindingInterner::default();
    let mut snap = Snapshot {
        all_synced: true,
        ..Snapshot::default()
    };
    for rb in &created {
        snap.role_bindings.insert(
            (ns.clone(), rb.name_any()),
            std::sync::Arc::new(CachedBinding::from_object(rb.clone(), &lists)),
        );
    }
    // Since then: one changed, one deleted and recreated under the same name.
    rbs.patch(
        "changed",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
    )
    .await
    .unwrap();
    rbs.delete("recreated", &DeleteParams::default())
        .await
        .unwrap();
    let mut again = created[1].clone();
    again.metadata.resource_version = None;
    again.metadata.uid = None;
    again.metadata.creation_timestamp = None;
    again.metadata.managed_fields = None;
    rbs.create(&PostParams::default(), &again).await.unwrap();

    let ids: Vec<plan::BindingId> = ["changed", "recreated", "unchanged"]
        .iter()
        .map(|n| plan::BindingId {
            kind: plan::BindingKind::RoleBinding,
            namespace: Some(ns.clone()),
            name: (*n).to_owned(),
        })
        .collect();
    let term = Term::unbounded(Default::default());
    let report = apply::prune_bindings(&env.client, &term, &ids, &snap).await;
    assert_eq!(report.stale, 2, "{report:?}");
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(report.gone, vec![ids[2].clone()], "{report:?}");
    assert!(rbs.get_opt("changed").await.unwrap().is_some());
    assert!(rbs.get_opt("recreated").await.unwrap().is_some());
    assert!(rbs.get_opt("unchanged").await.unwrap().is_none());

    // A deposed leader deletes nothing at all.
    let ended = Term::unbounded(Default::default());
    ended.end(kube_scim::controller::leader::TermEnd::Lost);
    let live = rbs.get("changed").await.unwrap();
    snap.role_bindings.insert(
        (ns.clone(), "changed".into()),
        std::sync::Arc::new(CachedBinding::from_object(live, &lists)),
    );
    let report = apply::prune_bindings(&env.client, &ended, &ids[..1], &snap).await;
    assert!(report.deposed && report.gone.is_empty(), "{report:?}");
    assert!(rbs.get_opt("changed").await.unwrap().is_some());
}

/// A binding the API server refuses (RBAC escalation: the writer doesn't hold the role)
/// is reported against its mapping and doesn't stop the others. Checked on the apply
/// layer with a restricted client: the shared operator runs as admin and is never refused.
#[tokio::test]
async fn refused_binding_is_reported_and_others_still_apply() {
    // Stores ScimUsers/ScimGroups directly: keep them out of the conformance run.
    let _view = crate::harness::hold_scim_view().await;
    use kube_scim::controller::{apply, plan, world::Snapshot};
    let env = TestEnv::new("ctl-refused").await;
    let c = &env.client;
    let ns = env.namespace.clone();
    let roles: Api<Role> = Api::namespaced(c.clone(), &ns);
    for (name, rules) in [
        (
            "binding-writer",
            json!([{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["rolebindings"],
                    "verbs": ["get", "list", "create", "update", "patch", "delete"]}]),
        ),
        ("nothing", json!([])),
    ] {
        roles
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": name}, "rules": rules}))
                    .unwrap(),
            )
            .await
            .unwrap();
    }
    Api::<RoleBinding>::namespaced(c.clone(), &ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "writer"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "binding-writer"},
                "subjects": [{"kind": "ServiceAccount", "name": "writer", "namespace": ns}]
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let token = env.service_account_token("writer").await;
    let restricted = crate::harness::token_client(&token).await;

    let desired = |role: kube_scim::crd::RoleRef, mapping: &str| plan::DesiredBinding {
        kind: plan::BindingKind::RoleBinding,
        namespace: Some(ns.clone()),
        name: unique("refusal"),
        role_ref: role,
        subjects: std::sync::Arc::from(vec![plan::Subject::user("someone")]),
        mapping: plan::MappingKey::Namespaced {
            namespace: ns.clone(),
            name: mapping.to_owned(),
        },
        // No managed-by label: the shared operator must not prune these as orphans.
        labels: Default::default(),
        annotations: Default::default(),
    };
    let bindings = vec![
        desired(
            kube_scim::crd::RoleRef {
                kind: kube_scim::crd::RoleKind::ClusterRole,
                name: "edit".into(),
            },
            "too-much",
        ),
        desired(
            kube_scim::crd::RoleRef {
                kind: kube_scim::crd::RoleKind::Role,
                name: "nothing".into(),
            },
            "harmless",
        ),
    ];
    let snap = Snapshot {
        all_synced: true,
        ..Snapshot::default()
    };
    let term = kube_scim::controller::leader::Term::unbounded(Default::default());
    let mut retries = apply::BindingRetries::default();
    let report = apply::apply_bindings(&restricted, &term, &bindings, &snap, &mut retries).await;
    assert_eq!(report.applied, 1, "{report:?}");
    assert_eq!(report.failed, 1, "{report:?}");
    assert_eq!(
        report.retries,
        [kube_scim::controller::retry::Category::Forbidden]
    );
    assert_eq!(report.refused.len(), 1, "{report:?}");
    assert_eq!(report.refused[0].0.name(), "too-much");
    assert!(report.refused[0].1.contains("forbidden"), "{report:?}");
    // Tried again at once, the refused one waits for its retry and is still reported.
    let again = apply::apply_bindings(&restricted, &term, &bindings, &snap, &mut retries).await;
    assert_eq!(
        (again.failed, again.waiting, again.refused.len()),
        (0, 1, 1),
        "{again:?}"
    );
    assert!(Api::<RoleBinding>::namespaced(c.clone(), &ns)
        .get_opt(&bindings[1].name)
        .await
        .unwrap()
        .is_some());

    // The plan's hook turns it into the mapping's condition.
    let mut outcome = plan::plan(
        &plan::Settings::default(),
        &plan::PlanInput {
            mappings: vec![plan::MappingInput {
                key: report.refused[0].0.clone(),
                generation: Some(1),
                observed_generation: None,
                spec: plan::MappingSpec::Namespaced(
                    serde_json::from_value(
                        json!({"groups": [{"displayName": "absent"}], "roleRef": {"kind": "ClusterRole", "name": "edit"}}),
                    )
                    .unwrap(),
                ),
                confirm_annotation: None,
                deleting: false,
            }],
            ..Default::default()
        },
    )
    .mapping_status
    .remove(&report.refused[0].0)
    .unwrap();
    outcome.add_problem(plan::Reason::BindingRefused, report.refused[0].1.clone());
    assert!(!outcome.ready);
    assert_eq!(outcome.reason, plan::Reason::BindingRefused);
}

/// A mapping whose `expiresAt` is a few seconds ahead: access until then and none right
/// after, with no other change to wake the controller; Ready=False/Expired and an Event;
/// moving the time renews it.
#[tokio::test]
async fn an_expiring_mapping_ends_access_at_its_expiry_and_renews_when_moved() {
    use k8s_openapi::jiff::{SignedDuration, Timestamp};
    let _view = crate::harness::hold_scim_view().await;
    operator().await;
    let env = TestEnv::new("ctl-expiry").await;
    let c = &env.client;
    let ns = env.namespace.as_str();
    // The CRDs are cluster-wide: another test run may have applied an older version,
    // whose schema would prune spec.expiresAt.
    crate::crds::our_crds_served(c, ns).await;
    let (role, _) = create_roles(c, ns).await;
    let u = new_user("temp");
    create_user(c, &u).await;
    let group = create_group(c, "temp", &[&u]).await;
    let mapping = unique("temp");
    // Whole seconds, as a person writes it; far enough ahead to see the grant first.
    let at = Timestamp::from_second(Timestamp::now().as_second() + 10).expect("timestamp");
    create_mapping(
        c,
        ns,
        &mapping,
        json!({"groups": [{"displayName": group.display_name}],
               "roleRef": {"kind": "Role", "name": role},
               "expiresAt": at.to_string()}),
    )
    .await;
    let api: Api<GroupRoleMapping> = Api::namespaced(c.clone(), ns);
    let stored = api.get(&mapping).await.expect("mapping");
    assert_eq!(
        stored.spec.expires_at.map(|t| t.0),
        Some(at),
        "spec.expiresAt stored (not pruned by an older CRD)"
    );
    expect_access(c, &u.user_name, &[], Some(ns), true).await;
    assert!(
        Timestamp::now() < at,
        "access was granted only after the expiry; the test can't tell anything"
    );

    // Access ends by itself at the expiry: not before, and within a second or two after.
    let ended = poll_until(WAIT, "access to end at the expiry", || async {
        let allowed = can(c, &u.user_name, &[], Some(ns), "get", "configmaps").await;
        (!allowed).then(Timestamp::now)
    })
    .await;
    let late = ended.duration_since(at);
    assert!(
        late >= SignedDuration::from_millis(-200) && late <= SignedDuration::from_secs(2),
        "access ended {late} after expiresAt"
    );
    let obj = expect_ready(&api, &mapping, "False", Some("Expired")).await;
    assert_eq!(obj["status"]["subjectCount"], json!(0), "{obj}");
    assert!(obj["status"]["bindings"].is_null(), "{obj}");
    expect_event(c, ns, &mapping, "Expired").await;
    let bound = Api::<RoleBinding>::namespaced(c.clone(), ns)
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=kube-scim"))
        .await
        .expect("list bindings");
    assert!(bound.items.is_empty(), "bindings left: {:?}", bound.items);

    // Renew: move the time; access comes back.
    let later = Timestamp::from_second(Timestamp::now().as_second() + 3600).expect("timestamp");
    api.patch(
        &mapping,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"expiresAt": later.to_string()}})),
    )
    .await
    .expect("renew");
    expect_access(c, &u.user_name, &[], Some(ns), true).await;
    let obj = expect_ready(&api, &mapping, "True", None).await;
    assert!(
        obj["status"]["conditions"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("expires at {later}"))),
        "{obj}"
    );
}

/// The labelled namespaces' managed RoleBindings: the User subjects of each, by namespace
/// (a namespace without one is absent).
async fn bound_users(c: &Client, namespaces: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for ns in namespaces {
        let list = Api::<RoleBinding>::namespaced(c.clone(), ns)
            .list(&ListParams::default().labels("app.kubernetes.io/managed-by=kube-scim"))
            .await
            .expect("list bindings");
        if list.items.is_empty() {
            continue;
        }
        let users: BTreeSet<String> = list
            .items
            .iter()
            .flat_map(|b| b.subjects.iter().flatten())
            .map(|s| s.name.clone())
            .collect();
        out.insert((*ns).to_owned(), users);
    }
    out
}

/// Poll until `kube_scim_mappings{reason}` of the operator at `probe_url` reads `want`.
async fn expect_mappings_gauge(http: &reqwest::Client, probe_url: &str, reason: &str, want: f64) {
    let series = format!("kube_scim_mappings{{reason=\"{reason}\"}} ");
    poll_until(WAIT, &format!("{series}{want}"), || async {
        let text = crate::harness::metrics_text(http, probe_url).await?;
        let value: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str()))?
            .trim()
            .parse()
            .ok()?;
        (value == want).then_some(())
    })
    .await;
}

/// Issue 8's fan-out budget on an operator of its own (`--max-fanout 6`, on a private
/// control plane: the shared operator runs with the default, and a second controller on
/// the shared cluster would fight it over the bindings). A mapping over budget keeps its
/// subjects and namespaces, adds none, says why (condition, one Event, metric); a
/// deactivation still goes through at once; shrinking the group lets the additions in.
#[tokio::test]
async fn a_mapping_over_the_fan_out_budget_adds_nobody_and_still_removes() {
    let cp = crate::private_plane::PrivateControlPlane::start("e2e-fanout-control-plane");
    let c = &crate::harness::client_for(&cp.kubeconfig, None).await;
    crate::harness::install_crds(c).await;
    let kubeconfig = cp.kubeconfig.clone();
    let op = tokio::task::spawn_blocking(move || {
        crate::harness::start_operator_on(
            &kubeconfig,
            &["--enable-scim=false", "--max-fanout", "6"],
        )
    })
    .await
    .expect("operator");
    let http = reqwest::Client::new();

    let tag = unique("fanout");
    let ns: Vec<String> = (1..=3).map(|i| format!("{tag}-{i}")).collect();
    let nss: Vec<&str> = ns.iter().map(String::as_str).collect();
    let make_ns = |name: &str| {
        serde_json::from_value::<Namespace>(
            json!({"metadata": {"name": name, "labels": {"fanout": tag}}}),
        )
        .expect("namespace")
    };
    let namespaces = Api::<Namespace>::all(c.clone());
    for name in &nss[..2] {
        namespaces
            .create(&PostParams::default(), &make_ns(name))
            .await
            .expect("namespace");
    }
    let (_, reader) = create_roles(c, nss[0]).await;
    let users: Vec<TestUser> = (0..5).map(|i| new_user(&format!("fan{i}"))).collect();
    for u in &users {
        create_user(c, u).await;
    }
    let name_of = |i: usize| users[i].user_name.clone();
    let set = |ids: &[usize]| -> BTreeSet<String> { ids.iter().map(|i| name_of(*i)).collect() };
    let group = create_group(c, "fan-group", &[&users[0], &users[1], &users[2]]).await;
    let mapping = unique("fan-map");
    create_cluster_mapping(
        c,
        &mapping,
        json!({"groups": [{"displayName": group.display_name}],
               "namespaceRoles": [{"clusterRole": reader,
                                   "namespaceSelector": {"matchLabels": {"fanout": tag}}}]}),
    )
    .await;
    let api: Api<ClusterGroupRoleMapping> = Api::all(c.clone());

    // 3 members × 2 namespaces = 6: exactly the budget.
    expect_ready(&api, &mapping, "True", None).await;
    let all_bound = |want: BTreeSet<String>, in_ns: usize| {
        let want: BTreeMap<String, BTreeSet<String>> = nss[..in_ns]
            .iter()
            .map(|n| ((*n).to_owned(), want.clone()))
            .collect();
        let nss = nss.clone();
        async move {
            poll_until(WAIT, &format!("bindings {want:?}"), || async {
                (bound_users(c, &nss).await == want).then_some(())
            })
            .await
        }
    };
    all_bound(set(&[0, 1, 2]), 2).await;

    // A fourth member: 4 × 2 = 8 > 6. Nobody is added; the three keep their access.
    set_members(c, &group, &[&users[0], &users[1], &users[2], &users[3]]).await;
    let obj = expect_ready(&api, &mapping, "False", Some("FanOutExceeded")).await;
    let message = obj["status"]["conditions"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains("4 subject(s) × 2 binding(s) = 8 > 6"),
        "{message}"
    );
    assert!(message.contains("Group subjects"), "{message}");
    assert_eq!(obj["status"]["subjectCount"], json!(3), "{obj}");
    assert_eq!(
        bound_users(c, &nss).await,
        [
            (ns[0].clone(), set(&[0, 1, 2])),
            (ns[1].clone(), set(&[0, 1, 2]))
        ]
        .into()
    );
    assert!(!can(c, &name_of(3), &[], Some(nss[0]), "get", "configmaps").await);
    assert!(can(c, &name_of(0), &[], Some(nss[0]), "get", "configmaps").await);
    expect_event(c, "default", &mapping, "FanOutExceeded").await;
    expect_mappings_gauge(&http, &op.probe_url, "FanOutExceeded", 1.0).await;

    // A new namespace matching the selector gets nothing; a fifth member neither.
    namespaces
        .create(&PostParams::default(), &make_ns(nss[2]))
        .await
        .expect("namespace");
    set_members(
        c,
        &group,
        &[&users[0], &users[1], &users[2], &users[3], &users[4]],
    )
    .await;
    poll_until(
        WAIT,
        "the status to count the new namespace and member",
        || async {
            let m = api.get(&mapping).await.ok()?;
            let msg = serde_json::to_value(m).ok()?["status"]["conditions"][0]["message"]
                .as_str()?
                .to_owned();
            msg.contains("5 subject(s) × 3 binding(s) = 15 > 6")
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        bound_users(c, &nss).await.len(),
        2,
        "nothing in the new namespace"
    );
    assert!(!can(c, &name_of(0), &[], Some(nss[2]), "get", "configmaps").await);

    // A deactivation while over budget: removed at once, everywhere.
    let t = Instant::now();
    set_active(c, &users[0].id, false).await;
    expect_access(c, &name_of(0), &[], Some(nss[0]), false).await;
    let took = t.elapsed();
    assert!(took < Duration::from_secs(10), "deactivation took {took:?}");
    all_bound(set(&[1, 2]), 2).await;
    let obj = expect_ready(&api, &mapping, "False", Some("FanOutExceeded")).await;
    assert_eq!(obj["status"]["subjectCount"], json!(2), "{obj}");

    // One Warning Event for the whole stretch over budget, not one per change.
    let events = Api::<CoreEvent>::namespaced(c.clone(), "default")
        .list(&ListParams::default().fields(&format!("involvedObject.name={mapping}")))
        .await
        .expect("events");
    let fan_events: Vec<&CoreEvent> = events
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("FanOutExceeded"))
        .collect();
    assert_eq!(fan_events.len(), 1, "{fan_events:#?}");
    assert_eq!(fan_events[0].type_.as_deref(), Some("Warning"));

    // The group shrinks to 2 active members: 2 × 3 = 6 fits. The withheld member and the
    // new namespace come in.
    set_members(c, &group, &[&users[0], &users[2], &users[3]]).await;
    expect_ready(&api, &mapping, "True", None).await;
    all_bound(set(&[2, 3]), 3).await;
    expect_access(c, &name_of(3), &[], Some(nss[2]), true).await;
    expect_mappings_gauge(&http, &op.probe_url, "FanOutExceeded", 0.0).await;
}
