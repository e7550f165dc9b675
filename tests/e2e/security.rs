//! Attacks on kube-scim, each written as the attack it stops, on the real API server.
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube_scim::crd::{ClusterGroupRoleMapping, GroupRoleMapping, ScimGroup, ScimUser};
use serde_json::json;

use crate::controller::{
    can, create_cluster_mapping, create_group, create_mapping, create_roles, create_user,
    expect_access, expect_event, expect_ready, new_user, subject_names, TestUser,
};
use crate::harness::{
    delete_ignore, kubeconfig_path, poll_until, scim, start_operator_on, unique, TestEnv,
    GROUP_SCHEMA, USER_SCHEMA,
};

/// The live hole of issue 9: a SCIM client names a group `system:authenticated` and a
/// user `system:anonymous`, and a UserAndGroup mapping binds the group. Without the
/// check every authenticated identity got the role.
#[tokio::test]
async fn system_names_never_become_subjects() {
    let scim = scim().await;
    let env = TestEnv::new("sec-system-names").await;
    let c = &env.client;
    let ns = env.namespace.as_str();

    // 1. Through SCIM: refused with 400 invalidValue and a detail naming the attribute.
    let refused = [
        (
            "/Users",
            json!({"schemas": [USER_SCHEMA], "userName": "system:anonymous"}),
            "userName",
        ),
        (
            "/Users",
            json!({"schemas": [USER_SCHEMA], "userName": "SYSTEM:masters"}),
            "userName",
        ),
        (
            "/Users",
            json!({"schemas": [USER_SCHEMA], "userName": format!("{}@example.com", unique("ok")),
                   "emails": [{"value": "system:serviceaccounts", "type": "work"}]}),
            "emails.value",
        ),
        (
            "/Groups",
            json!({"schemas": [GROUP_SCHEMA], "displayName": unique("evil"), "externalId": "system:authenticated"}),
            "externalId",
        ),
        (
            "/Groups",
            json!({"schemas": [GROUP_SCHEMA], "displayName": "system:masters"}),
            "displayName",
        ),
        (
            "/Users",
            json!({"schemas": [USER_SCHEMA], "userName": "x".repeat(400)}),
            "userName",
        ),
    ];
    for (path, body, attr) in refused {
        let r = scim.post(path, &body).await;
        r.error(400, Some("invalidValue"));
        let detail = r.body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(&format!("'{attr}'")), "{attr}: {detail}");
    }
    // ... and by PATCH (Entra's attribute-mapping edit), on both kinds.
    let uid = scim.new_user("sec-patch").await;
    scim.patch_ops(
        &format!("/Users/{uid}"),
        json!([{"op": "replace", "path": "userName", "value": "system:anonymous"}]),
    )
    .await
    .error(400, Some("invalidValue"));
    let group = scim.new_group("sec-patch").await;
    let gid = group["id"].as_str().unwrap();
    scim.patch_ops(
        &format!("/Groups/{gid}"),
        json!([{"op": "add", "value": {"externalId": "system:authenticated"}}]),
    )
    .await
    .error(400, Some("invalidValue"));
    let stored = scim.get(&format!("/Groups/{gid}")).await;
    assert!(stored.body.get("externalId").is_none(), "{}", stored.text);
    let stored = scim.get(&format!("/Users/{uid}")).await;
    assert!(
        stored.body["userName"]
            .as_str()
            .unwrap_or_default()
            .ends_with("@example.com"),
        "{}",
        stored.text
    );

    // 2. Around SCIM (objects written before this check, or with kubectl): the
    //    controller still never binds them, and says so.
    let (_, cluster_role) = create_roles(c, ns).await;
    let alice = new_user("sec-alice");
    create_user(c, &alice).await;
    let mallory = TestUser {
        user_name: "system:anonymous".into(),
        ..new_user("sec-mallory")
    };
    create_user(c, &mallory).await;
    let evil = create_group(c, "sec-evil", &[&alice, &mallory]).await;
    let users: Api<ScimUser> = Api::all(c.clone());
    let groups: Api<ScimGroup> = Api::all(c.clone());
    groups
        .patch(
            &evil.id,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"externalId": "system:authenticated"}})),
        )
        .await
        .unwrap();
    let mapping = unique("sec-evil");
    create_mapping(
        c,
        ns,
        &mapping,
        json!({
            "groups": [{"displayName": evil.display_name}],
            "roleRef": {"kind": "ClusterRole", "name": cluster_role},
            "subjects": {"kind": "UserAndGroup"}
        }),
    )
    .await;

    // The legitimate member is bound: the mapping was reconciled with the bad names in it.
    expect_access(c, &alice.user_name, &[], Some(ns), true).await;
    let api: Api<GroupRoleMapping> = Api::namespaced(c.clone(), ns);
    let obj = expect_ready(&api, &mapping, "False", Some("SubjectRefused")).await;
    let message = obj["status"]["conditions"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains(&format!("user {}", mallory.id)) && message.contains("\"system:"),
        "{message}"
    );
    assert!(
        message.contains(&format!("group {:?}", evil.display_name)),
        "{message}"
    );
    expect_event(c, ns, &mapping, "SubjectRefused").await;

    // The API server's own answer: nobody got anything through the system names.
    for (user, groups) in [
        ("random-user", vec!["system:authenticated"]),
        ("system:anonymous", vec!["system:unauthenticated"]),
        (
            "system:serviceaccount:default:default",
            vec!["system:serviceaccounts", "system:authenticated"],
        ),
    ] {
        assert!(
            !can(c, user, &groups, Some(ns), "get", "configmaps").await,
            "{user} {groups:?} was granted access"
        );
    }
    let bindings: Api<RoleBinding> = Api::namespaced(c.clone(), ns);
    let list = bindings.list(&ListParams::default()).await.unwrap();
    let subjects: Vec<String> = list
        .items
        .iter()
        .flat_map(|b| subject_names(&b.subjects))
        .collect();
    assert_eq!(subjects, vec![format!("User:{}", alice.user_name)]);

    delete_ignore(&users, &alice.id).await;
    delete_ignore(&users, &mallory.id).await;
    delete_ignore(&users, &uid).await;
    delete_ignore(&groups, &evil.id).await;
    delete_ignore(&groups, gid).await;
}

/// Issue 9, item 3: a mapping author cannot reach kube-system (or the operator's own
/// namespace) through kube-scim, and cluster-wide bindings are limited to the roles the
/// operator allows there (`view` by default; the test operator adds test roles).
#[tokio::test]
async fn protected_namespaces_and_cluster_wide_roles_are_refused() {
    let _view = crate::harness::hold_scim_view().await;
    let op = crate::harness::operator().await;
    let env = TestEnv::new("sec-scope").await;
    let c = &env.client;
    let ns = env.namespace.as_str();
    let u = new_user("sec-scope");
    create_user(c, &u).await;
    let group = create_group(c, "sec-scope", &[&u]).await;

    // A GroupRoleMapping in kube-system and one in the operator's namespace: refused.
    let grms = [
        ("kube-system", unique("sec-sys")),
        (op.namespace.as_str(), unique("sec-op")),
    ];
    for (target, name) in &grms {
        create_mapping(
            c,
            target,
            name,
            json!({"groups": [{"displayName": group.display_name}], "roleRef": {"kind": "ClusterRole", "name": "view"}}),
        )
        .await;
        let api: Api<GroupRoleMapping> = Api::namespaced(c.clone(), target);
        let obj = expect_ready(&api, name, "False", Some("ScopeRefused")).await;
        let message = obj["status"]["conditions"][0]["message"]
            .as_str()
            .unwrap_or_default();
        assert!(
            message.contains(&format!("namespace {target} is protected")),
            "{message}"
        );
        expect_event(c, target, name, "ScopeRefused").await;
    }

    // A selector that matches kube-system as well as the test namespace binds only the
    // latter; cluster-wide `edit` is refused while cluster-wide `view` is bound.
    let label = unique("sec-scope");
    let namespaces: Api<Namespace> = Api::all(c.clone());
    let labelled = json!({"metadata": {"labels": {"kube-scim-test/scope": label}}});
    for n in [ns, "kube-system"] {
        namespaces
            .patch(n, &PatchParams::default(), &Patch::Merge(&labelled))
            .await
            .unwrap();
    }
    let name = unique("sec-broad");
    create_cluster_mapping(
        c,
        &name,
        json!({
            "groups": [{"displayName": group.display_name}],
            "clusterRoles": ["edit", "view"],
            "namespaceRoles": [{"clusterRole": "edit", "namespaceSelector": {"matchLabels": {"kube-scim-test/scope": label}}}]
        }),
    )
    .await;
    let api: Api<ClusterGroupRoleMapping> = Api::all(c.clone());
    expect_ready(&api, &name, "False", Some("ScopeRefused")).await;
    // A pass may run before the controller's namespace watch has delivered kube-system's
    // new label: wait for the status that reflects both refusals.
    let wanted = [
        "ClusterRole edit may not be bound cluster-wide",
        "skips protected namespaces: kube-system",
    ];
    let message = poll_until(
        crate::controller::WAIT,
        "both refusals in the mapping's Ready message",
        || async {
            let obj = serde_json::to_value(api.get(&name).await.ok()?).ok()?;
            let message = obj["status"]["conditions"][0]["message"]
                .as_str()?
                .to_string();
            wanted
                .iter()
                .all(|w| message.contains(w))
                .then_some(message)
        },
    )
    .await;
    assert_eq!(
        api.get(&name).await.unwrap().status.unwrap().conditions[0].reason,
        "ScopeRefused",
        "{message}"
    );
    poll_until(
        crate::controller::WAIT,
        "edit in the test namespace",
        || async {
            can(c, &u.user_name, &[], Some(ns), "create", "configmaps")
                .await
                .then_some(())
        },
    )
    .await;
    assert!(
        can(c, &u.user_name, &[], None, "list", "pods").await,
        "cluster-wide view"
    );
    for where_ in [None, Some("kube-system")] {
        assert!(
            !can(c, &u.user_name, &[], where_, "create", "configmaps").await,
            "edit reached {where_:?}"
        );
    }
    let in_system: Api<RoleBinding> = Api::namespaced(c.clone(), "kube-system");
    let managed = ListParams::default().labels("app.kubernetes.io/managed-by=kube-scim");
    assert!(in_system.list(&managed).await.unwrap().items.is_empty());

    let unlabel = json!({"metadata": {"labels": {"kube-scim-test/scope": null}}});
    let _ = namespaces
        .patch(
            "kube-system",
            &PatchParams::default(),
            &Patch::Merge(&unlabel),
        )
        .await;
    delete_ignore(&api, &name).await;
    for (target, name) in &grms {
        delete_ignore(
            &Api::<GroupRoleMapping>::namespaced(c.clone(), target),
            name,
        )
        .await;
    }
    delete_ignore(&Api::<ScimUser>::all(c.clone()), &u.id).await;
    delete_ignore(&Api::<ScimGroup>::all(c.clone()), &group.id).await;
}

/// Issue 9, item 6 (part): hostile input gets a bounded, SCIM-shaped 4xx — never a 500
/// or a retry-inviting 503, never a plain-text body.
#[tokio::test]
async fn hostile_input_is_bounded_and_answered_as_scim() {
    let scim = scim().await;
    // A non-ASCII attribute name used to panic (500) in the projection.
    scim.get("/Groups?attributes=memberé").await.expect(200);
    // A malformed percent-encoded id is rejected by the path extractor: SCIM body too.
    scim.get("/Users/%ZZ%ZZ").await.assert_scim_error();
    // A resource too big to store is a clear 400, not 503.
    let huge = json!({"schemas": [USER_SCHEMA], "userName": format!("{}@example.com", unique("huge")),
                      "title": "x".repeat(2 * 1024 * 1024)});
    let r = scim.post("/Users", &huge).await;
    r.error(400, Some("invalidValue"));
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("at most"),
        "{}",
        r.text
    );
    // Too many PATCH operations.
    let uid = scim.new_user("sec-ops").await;
    let ops: Vec<serde_json::Value> = (0..1_001)
        .map(|i| json!({"op": "replace", "path": "title", "value": format!("t{i}")}))
        .collect();
    scim.patch_ops(&format!("/Users/{uid}"), json!(ops))
        .await
        .error(400, Some("invalidValue"));
    // An overlong filter.
    let filter = format!("userName eq \"{}\"", "a".repeat(10_000));
    scim.filter("/Users", &filter, "")
        .await
        .error(400, Some("invalidFilter"));
    scim.delete(&format!("/Users/{uid}")).await.no_content();
}

/// Issue 9, item 6: a slowloris client opens a connection and dribbles its request head
/// one byte at a time. The server cuts it off after the header-read timeout (2 s here,
/// through the flag) instead of holding the connection for as long as the client likes;
/// an ordinary request on the same server is still answered.
#[tokio::test]
async fn slowloris_connections_are_cut_off() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    crate::harness::ensure_crds(&crate::harness::admin_client().await).await;
    let op = tokio::task::spawn_blocking(|| {
        start_operator_on(
            kubeconfig_path(),
            &[
                "--enable-controller=false",
                "--header-read-timeout-seconds",
                "2",
            ],
        )
    })
    .await
    .expect("operator with a short header-read timeout");
    let addr = op
        .base_url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .expect("host:port")
        .to_string();

    let (elapsed, sent) = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(&addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("read timeout");
        let head = format!(
            "GET /scim/v2/Users HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer x\r\nX-Slow: {}",
            "a".repeat(200)
        );
        let start = Instant::now();
        let deadline = start + Duration::from_secs(20);
        let mut sent = 0;
        // One byte every 200 ms (the read timeout paces it); never the final CRLFCRLF.
        for b in head.bytes() {
            assert!(Instant::now() < deadline, "still connected after 20 s");
            if s.write_all(&[b]).is_err() {
                return (start.elapsed(), sent);
            }
            sent += 1;
            let mut buf = [0u8; 1024];
            match s.read(&mut buf) {
                Ok(0) => return (start.elapsed(), sent),
                // The server may answer before closing; the close is what counts.
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return (start.elapsed(), sent),
            }
        }
        panic!("the whole slow request head ({sent} bytes) was accepted without a cut-off");
    })
    .await
    .expect("slow client");
    assert!(
        elapsed >= Duration::from_millis(1500) && elapsed < Duration::from_secs(10),
        "cut off after {elapsed:?} ({sent} bytes sent); the timeout is 2 s"
    );

    // An ordinary client is still served.
    let r = reqwest::Client::new()
        .get(format!("{}/ServiceProviderConfig", op.base_url))
        .bearer_auth(&op.token)
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), 200);
}

/// The `detail` of a refusal names `what`.
fn detail_names(r: &crate::harness::ScimResponse, what: &str) {
    let detail = r.body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(what),
        "detail should name {what:?}: {}",
        r.text
    );
}

/// Issue 9, item 6: a client stores attributes no served schema declares (a 1 MB
/// undeclared extension, `emails` on a Group, sub-attributes nobody defined), which a
/// strict client then fails to parse in every later list. Refused with 400
/// invalidSyntax naming the attribute, never stored; junk that got in around SCIM
/// (kubectl) is never shown; Entra's harmless extras (`id`, `meta`, unknown `schemas`
/// entries, "False" strings) still work.
#[tokio::test]
async fn undeclared_attributes_are_refused_and_never_shown() {
    let scim = scim().await;
    let user_name = format!("{}@example.com", unique("undeclared"));
    let refused = [
        (
            "/Users",
            json!({"schemas": [USER_SCHEMA], "userName": user_name,
                   "urn:acme:scim:2.0:User": {"blob": "x".repeat(1024 * 1024)}}),
            "urn:acme:scim:2.0:User",
        ),
        (
            "/Users",
            json!({"schemas": [USER_SCHEMA], "userName": user_name, "favouriteColour": "blue"}),
            "favouriteColour",
        ),
        (
            "/Users",
            json!({"schemas": [USER_SCHEMA], "userName": user_name,
                   "emails": [{"value": "a@example.com", "label": "x"}]}),
            "emails.label",
        ),
        (
            "/Users",
            json!({"schemas": [USER_SCHEMA], "userName": user_name,
                   crate::harness::ENTERPRISE: {"department": "D", "shoeSize": 44}}),
            "shoeSize",
        ),
        (
            "/Groups",
            json!({"schemas": [GROUP_SCHEMA], "displayName": unique("junk"),
                   "emails": [{"value": "g@example.com"}]}),
            "emails",
        ),
    ];
    for (path, body, attr) in refused {
        let r = scim.post(path, &body).await;
        r.error(400, Some("invalidSyntax"));
        detail_names(&r, attr);
    }
    scim.filter("/Users", &format!("userName eq \"{user_name}\""), "")
        .await
        .list(0);

    // Entra's shape, with harmless extras, is still accepted.
    let r = scim
        .post(
            "/Users",
            &json!({"schemas": [USER_SCHEMA, "urn:acme:unserved:2.0:User"], "id": "client-chosen",
                    "meta": {"resourceType": "User"}, "userName": user_name, "active": "False"}),
        )
        .await;
    r.created();
    let id = r.id();
    assert_eq!(r.body["schemas"], json!([USER_SCHEMA]));
    assert_eq!(r.body["active"], false);
    let path = format!("/Users/{id}");

    // PATCH can't smuggle it in either: paths, path-less values, sub-attributes.
    let version = scim.get(&path).await.etag();
    for (ops, attr) in [
        (
            json!([{"op": "add", "path": "urn:acme:scim:2.0:User:badge", "value": "7"}]),
            "urn:acme:scim:2.0:User",
        ),
        (
            json!([{"op": "Replace", "value": {"favouriteColour": "blue", "title": "t"}}]),
            "favouriteColour",
        ),
        (
            json!([{"op": "add", "path": "name.nickname", "value": "x"}]),
            "name.nickname",
        ),
        (
            json!([{"op": "add", "path": "emails[type eq \"work\"].label", "value": "x"}]),
            "emails.label",
        ),
        (
            json!([{"op": "add", "path": "phoneNumbers", "value": [{"value": "1", "kind": "x"}]}]),
            "phoneNumbers.kind",
        ),
    ] {
        let r = scim.patch_ops(&path, ops).await;
        r.error(400, Some("invalidSyntax"));
        detail_names(&r, attr);
    }
    assert_eq!(scim.get(&path).await.etag(), version, "nothing was written");

    // Junk written around SCIM (kubectl) is never shown, in a GET or a list.
    let users: Api<ScimUser> = Api::all(env_client().await);
    users
        .patch(
            &id,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {
                "favouriteColour": "blue",
                "urn:acme:scim:2.0:User": {"badge": "7"},
                "name": {"givenName": "G", "nickname": "junk"},
                "schemas": [USER_SCHEMA, "urn:acme:scim:2.0:User"]}})),
        )
        .await
        .expect("kubectl-style write");
    let clean = |doc: &serde_json::Value| {
        assert!(doc.get("favouriteColour").is_none(), "{doc}");
        assert!(doc.get("urn:acme:scim:2.0:User").is_none(), "{doc}");
        assert_eq!(doc["name"], json!({"givenName": "G"}), "{doc}");
        assert_eq!(doc["schemas"], json!([USER_SCHEMA]), "{doc}");
    };
    let shown = poll_until(
        std::time::Duration::from_secs(10),
        "the kubectl write in the cache",
        || async {
            let r = scim.get(&path).await;
            (r.body["name"]["givenName"] == "G").then_some(r.body)
        },
    )
    .await;
    clean(&shown);
    let listed = scim
        .filter("/Users", &format!("userName eq \"{user_name}\""), "")
        .await;
    clean(&listed.list(1)[0]);
    // It doesn't block a deactivation, and a remove cleans it up.
    scim.patch_ops(
        &path,
        json!([{"op": "replace", "path": "active", "value": false},
               {"op": "remove", "path": "favouriteColour"}]),
    )
    .await
    .ok();
    let stored = crate::harness::stored_user(&id).await.expect("stored");
    assert!(!stored.spec.attributes.contains_key("favouriteColour"));
    scim.delete(&path).await.no_content();
}

/// A client for the test's cluster (the shared operator's).
async fn env_client() -> kube::Client {
    crate::harness::admin_client().await
}

/// Issue 9, item 6: member values must name existing users. A client that adds made-up
/// ids (to fill a group, or to have access appear the day someone gets that id) gets 400
/// invalidValue naming the value, on POST, PUT and PATCH add/replace; nothing is stored.
/// Removing a member that doesn't exist stays harmless.
#[tokio::test]
async fn group_members_must_be_existing_users() {
    let scim = scim().await;
    let alice = scim.new_user("member-alice").await;
    let made_up = uuid::Uuid::new_v4().to_string();
    let display = unique("members-exist");
    let r = scim
        .post(
            "/Groups",
            &json!({"schemas": [GROUP_SCHEMA], "displayName": display,
                    "members": [{"value": alice}, {"value": made_up}]}),
        )
        .await;
    r.error(400, Some("invalidValue"));
    detail_names(&r, &made_up);
    scim.filter("/Groups", &format!("displayName eq \"{display}\""), "")
        .await
        .list(0);

    let g = scim.new_group("members-exist").await;
    let gid = g["id"].as_str().unwrap().to_string();
    let path = format!("/Groups/{gid}");
    scim.patch_ops(
        &path,
        json!([{"op": "add", "path": "members", "value": [{"value": alice}]}]),
    )
    .await
    .no_content();
    for ops in [
        json!([{"op": "Add", "path": "members", "value": [{"$ref": null, "value": made_up}]}]),
        json!([{"op": "replace", "path": "members", "value": [{"value": alice}, {"value": made_up}]}]),
        json!([{"op": "add", "value": {"members": [{"value": made_up}]}}]),
        // Weird ids are not looked up anywhere, just refused.
        json!([{"op": "add", "path": "members", "value": [{"value": "../../status"}]}]),
        json!([{"op": "add", "path": "members", "value": [{"value": alice, "type": "Group"}]}]),
    ] {
        let r = scim.patch_ops(&path, ops.clone()).await;
        r.error(400, Some("invalidValue"));
        assert!(
            r.body["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("member"),
            "{ops}: {}",
            r.text
        );
    }
    let r = scim
        .put(
            &path,
            &json!({"schemas": [GROUP_SCHEMA], "displayName": g["displayName"],
                    "members": [{"value": made_up}]}),
        )
        .await;
    r.error(400, Some("invalidValue"));
    detail_names(&r, &made_up);
    assert_eq!(
        crate::harness::stored_member_ids(&gid).await,
        [alice.clone()].into(),
        "nothing was stored"
    );
    // Removing a member that doesn't exist is harmless (Entra retries removals).
    scim.patch_ops(
        &path,
        json!([{"op": "Remove", "path": "members", "value": [{"value": made_up}]},
               {"op": "remove", "path": format!("members[value eq \"{made_up}\"]")}]),
    )
    .await
    .no_content();

    // A user written straight to the API server a moment ago, which this replica's
    // cache may not hold yet, is confirmed there; a nested group is a group.
    let users: Api<ScimUser> = Api::all(env_client().await);
    let fresh = uuid::Uuid::new_v4().to_string();
    let user: ScimUser = serde_json::from_value(json!({
        "apiVersion": "scim.kubescim.io/v1alpha1", "kind": "ScimUser",
        "metadata": {"name": fresh},
        "spec": {"userName": format!("{}@example.com", unique("fresh"))}
    }))
    .unwrap();
    users
        .create(&Default::default(), &user)
        .await
        .expect("create");
    let nested = scim.new_group("members-nested").await;
    let nested_id = nested["id"].as_str().unwrap().to_string();
    scim.patch_ops(
        &path,
        json!([{"op": "add", "path": "members",
                "value": [{"value": fresh}, {"value": nested_id, "type": "Group"}]}]),
    )
    .await
    .no_content();
    assert_eq!(
        crate::harness::stored_member_ids(&gid).await,
        [alice.clone(), fresh.clone(), nested_id.clone()].into()
    );
    scim.delete(&path).await.no_content();
    scim.delete(&format!("/Groups/{nested_id}"))
        .await
        .no_content();
    for u in [&alice, &fresh] {
        scim.delete(&format!("/Users/{u}")).await.no_content();
    }
}
