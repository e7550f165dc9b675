//! The foundation: the generated CRDs on a real API server, and RBAC really enforced.
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube_scim::crd::{ScimGroup, ScimUser};
use serde_json::json;

use crate::harness::{poll_until, unique, TestEnv};

fn is_forbidden(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 403)
}

#[tokio::test]
async fn scim_users_create_list_watch_patch_delete() {
    // Stores ScimUsers/ScimGroups directly: keep them out of the conformance run.
    let _view = crate::harness::hold_scim_view().await;
    let env = TestEnv::new("crud-users").await;
    let users: Api<ScimUser> = Api::all(env.client.clone());
    let id = uuid::Uuid::new_v4().to_string();
    let user_name = format!("{}@example.com", unique("alice"));

    // Watch from before the create so every transition is seen.
    let mut events = watcher::watcher(
        users.clone(),
        watcher::Config::default().fields(&format!("metadata.name={id}")),
    )
    .boxed();

    let user: ScimUser = serde_json::from_value(json!({
        "apiVersion": "scim.kubescim.io/v1alpha1", "kind": "ScimUser",
        "metadata": {"name": id},
        "spec": {
            "userName": user_name, "externalId": "ext-1", "active": true,
            "name": {"givenName": "Alice", "familyName": "Liddell"},
            "emails": [{"value": "alice@example.com", "type": "work", "primary": true}],
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"employeeNumber": "42"},
            "x-unknown-attribute": {"kept": [1, 2, 3]}
        }
    }))
    .unwrap();
    users.create(&PostParams::default(), &user).await.unwrap();

    // Everything the spec carries survives the round trip, modelled or not.
    let got = users.get(&id).await.unwrap();
    assert_eq!(got.spec.user_name, user_name);
    assert_eq!(got.spec.attributes["name"]["givenName"], "Alice");
    assert_eq!(
        got.spec.attributes["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"]
            ["employeeNumber"],
        "42"
    );
    assert_eq!(
        got.spec.attributes["x-unknown-attribute"]["kept"],
        json!([1, 2, 3])
    );

    let listed = users.list(&ListParams::default()).await.unwrap();
    assert!(listed
        .items
        .iter()
        .any(|u| u.metadata.name.as_deref() == Some(id.as_str())));

    users
        .patch(
            &id,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"active": false}})),
        )
        .await
        .unwrap();
    assert!(!users.get(&id).await.unwrap().spec.is_active());

    // The watch saw the object become inactive.
    let saw_inactive = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(ev) = events.try_next().await.unwrap() {
            if let Event::Apply(u) | Event::InitApply(u) = ev {
                if !u.spec.is_active() {
                    return true;
                }
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(saw_inactive, "watch delivered the patch");

    users.delete(&id, &DeleteParams::default()).await.unwrap();
    poll_until(Duration::from_secs(20), "user deleted", || async {
        matches!(users.get_opt(&id).await, Ok(None)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn scim_groups_create_patch_delete() {
    // Stores ScimUsers/ScimGroups directly: keep them out of the conformance run.
    let _view = crate::harness::hold_scim_view().await;
    let env = TestEnv::new("crud-groups").await;
    let groups: Api<ScimGroup> = Api::all(env.client.clone());
    let id = uuid::Uuid::new_v4().to_string();
    let group: ScimGroup = serde_json::from_value(json!({
        "apiVersion": "scim.kubescim.io/v1alpha1", "kind": "ScimGroup",
        "metadata": {"name": id},
        "spec": {"displayName": unique("Payments Developers"), "externalId": "7f4bc1a3",
                 "members": [{"value": "u1"}, {"value": "u2", "type": "User"}]}
    }))
    .unwrap();
    groups.create(&PostParams::default(), &group).await.unwrap();
    groups
        .patch(
            &id,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"members": [{"value": "u1"}]}})),
        )
        .await
        .unwrap();
    let got = groups.get(&id).await.unwrap();
    assert_eq!(got.spec.members.len(), 1);
    // The status subresource is separate from the spec. Checked on the write's answer:
    // the shared operator's controller writes this group's status too, and a read after
    // the patch could see its write instead.
    let patched = groups
        .patch_status(
            &id,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"memberCount": 1}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.status.unwrap().member_count, 1);
    assert_eq!(
        patched.spec.members.len(),
        1,
        "a status write leaves the spec alone"
    );
    groups.delete(&id, &DeleteParams::default()).await.unwrap();
}

#[tokio::test]
async fn service_account_token_is_refused_what_its_rbac_does_not_grant() {
    let env = TestEnv::new("sa-refused").await;
    let token = env.service_account_token("limited").await;
    let sa_client = crate::harness::token_client(&token).await;

    // No role at all: even listing ConfigMaps in its own namespace is forbidden.
    let cms: Api<ConfigMap> = Api::namespaced(sa_client.clone(), &env.namespace);
    let err = cms.list(&ListParams::default()).await.unwrap_err();
    assert!(is_forbidden(&err), "expected 403, got {err:?}");

    // Grant read on ConfigMaps only.
    let roles: Api<Role> = Api::namespaced(env.client.clone(), &env.namespace);
    roles
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "cm-reader"},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let rbs: Api<RoleBinding> = Api::namespaced(env.client.clone(), &env.namespace);
    rbs.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "cm-reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "limited", "namespace": env.namespace}]
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    poll_until(Duration::from_secs(20), "role to take effect", || async {
        cms.list(&ListParams::default()).await.ok().map(|_| ())
    })
    .await;

    // ...and still nothing else.
    let secrets: Api<Secret> = Api::namespaced(sa_client.clone(), &env.namespace);
    assert!(is_forbidden(
        &secrets.list(&ListParams::default()).await.unwrap_err()
    ));
    let other: Api<ConfigMap> = Api::namespaced(sa_client, "default");
    assert!(is_forbidden(
        &other.list(&ListParams::default()).await.unwrap_err()
    ));
}

#[tokio::test]
async fn builtin_edit_cluster_role_grants_what_it_grants() {
    let env = TestEnv::new("edit-role").await;
    let token = env.service_account_token("editor").await;
    let rbs: Api<RoleBinding> = Api::namespaced(env.client.clone(), &env.namespace);
    rbs.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "editor"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
            "subjects": [{"kind": "ServiceAccount", "name": "editor", "namespace": env.namespace}]
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    let sa_client = crate::harness::token_client(&token).await;

    // edit (aggregated by the controller-manager) lets it write ConfigMaps and read Secrets here...
    let cms: Api<ConfigMap> = Api::namespaced(sa_client.clone(), &env.namespace);
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "made-by-editor"}, "data": {"a": "b"}}))
            .unwrap();
    poll_until(
        Duration::from_secs(20),
        "edit to allow creating a ConfigMap",
        || async {
            match cms.create(&PostParams::default(), &cm).await {
                Ok(_) => Some(()),
                Err(kube::Error::Api(s)) if s.code == 409 => Some(()),
                Err(_) => None,
            }
        },
    )
    .await;
    let secrets: Api<Secret> = Api::namespaced(sa_client.clone(), &env.namespace);
    secrets
        .list(&ListParams::default())
        .await
        .expect("edit reads secrets");

    // ...but not RBAC (edit has no roles/rolebindings), and nothing in other namespaces.
    let roles: Api<Role> = Api::namespaced(sa_client.clone(), &env.namespace);
    let err = roles
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "x"}, "rules": []})).unwrap(),
        )
        .await
        .unwrap_err();
    assert!(is_forbidden(&err), "edit must not grant roles: {err:?}");
    let other: Api<ConfigMap> = Api::namespaced(sa_client, "default");
    assert!(is_forbidden(
        &other.list(&ListParams::default()).await.unwrap_err()
    ));
}
