//! Microsoft Entra ID's provisioning requests, replayed over HTTP against the operator on
//! the real API server, in both of Entra's modes: the default (most tenants) and the
//! SCIM-compliant `?aadOptscim062020` flag on the Tenant URL. Each test checks the HTTP
//! answer and the ScimUser / ScimGroup / ScimGroupMembers objects that result.
use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{
    member_ids, poll_until, scim, stored_group, stored_member_ids, stored_shards, stored_user,
    unique, Scim, ENTERPRISE, GROUP_SCHEMA, USER_SCHEMA,
};

const ADSCIM_GROUP: &str =
    "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group";
const FLAG: &str = "aadOptscim062020";

/// A user exactly as Entra's default attribute mappings POST it.
pub(crate) fn entra_user(user_name: &str, external_id: &str) -> Value {
    json!({
        "schemas": [USER_SCHEMA, ENTERPRISE],
        "externalId": external_id,
        "userName": user_name,
        "active": true,
        "addresses": null,
        "displayName": "Ryan Leenay",
        "emails": [{"primary": true, "type": "work", "value": user_name}],
        "meta": {"resourceType": "User"},
        "name": {"formatted": "Ryan Leenay", "familyName": "Leenay", "givenName": "Ryan"},
        "nickName": null,
        "phoneNumbers": [{"type": "mobile", "value": null}],
        "roles": [],
        "title": null,
        ENTERPRISE: {"department": "Payments", "employeeNumber": null}
    })
}

/// Test Connection: a filter on a userName that doesn't exist is 200 with an empty list.
#[tokio::test]
async fn entra_test_connection_is_an_empty_list() {
    let s = scim().await;
    for client in [s.clone(), s.with_flag(FLAG)] {
        let guid = uuid::Uuid::new_v4().to_string();
        let r = client
            .filter("/Users", &format!("userName eq \"{guid}\""), "")
            .await;
        assert!(r.list(0).is_empty());
        assert_eq!(r.body["startIndex"], 1);
        let r = client
            .filter(
                "/Groups",
                &format!("displayName eq \"{guid}\""),
                "excludedAttributes=members",
            )
            .await;
        assert!(r.list(0).is_empty());
    }
}

async fn find_one(s: &Scim, endpoint: &str, filter: &str, extra: &str) -> Value {
    let r = s.filter(endpoint, filter, extra).await;
    let found = r.list(1);
    found[0].clone()
}

/// The full default-mode user lifecycle: create, the lookups, every PATCH shape, soft
/// delete, delete.
#[tokio::test]
async fn entra_default_mode_user_lifecycle() {
    let s = scim().await;
    let user_name = format!("{}@contoso.example", unique("ryan"));
    let external_id = uuid::Uuid::new_v4().to_string();

    // Create.
    let r = s
        .post("/Users", &entra_user(&user_name, &external_id))
        .await;
    r.created();
    let id = r.id();
    let u = &r.body;
    assert_eq!(u["userName"], user_name);
    assert_eq!(u["externalId"], external_id);
    assert_eq!(u["active"], true);
    assert_eq!(u["displayName"], "Ryan Leenay");
    assert_eq!(
        u["emails"],
        json!([{"primary": true, "type": "work", "value": user_name}])
    );
    assert_eq!(
        u["name"],
        json!({"formatted": "Ryan Leenay", "familyName": "Leenay", "givenName": "Ryan"})
    );
    assert_eq!(u[ENTERPRISE], json!({"department": "Payments"}));
    assert_eq!(u["meta"]["resourceType"], "User");
    assert_eq!(u["meta"]["version"], "W/\"1\"");
    for gone in ["addresses", "nickName", "title", "password"] {
        assert!(u.get(gone).is_none(), "{gone} should be unassigned: {u}");
    }
    assert!(u["schemas"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x == ENTERPRISE));

    let stored = stored_user(&id).await.expect("ScimUser stored");
    assert_eq!(stored.spec.user_name, user_name);
    assert_eq!(
        stored.spec.external_id.as_deref(),
        Some(external_id.as_str())
    );
    assert_eq!(stored.spec.active, Some(true));
    assert_eq!(stored.spec.display_name.as_deref(), Some("Ryan Leenay"));
    assert_eq!(stored.spec.attributes["name"]["givenName"], "Ryan");
    assert_eq!(stored.spec.attributes["emails"][0]["value"], user_name);
    assert_eq!(stored.spec.attributes[ENTERPRISE]["department"], "Payments");
    for gone in ["id", "meta", "nickName", "title", "addresses"] {
        assert!(
            !stored.spec.attributes.contains_key(gone),
            "{gone} stored: {:?}",
            stored.spec.attributes
        );
    }

    // Lookups Entra makes: userName, externalId (quoted and, as Microsoft's docs show, not).
    let by_name = find_one(&s, "/Users", &format!("userName eq \"{user_name}\""), "").await;
    assert_eq!(by_name["id"], id);
    let by_ext = find_one(
        &s,
        "/Users",
        &format!("externalId eq \"{external_id}\""),
        "",
    )
    .await;
    assert_eq!(by_ext["id"], id);
    let by_ext = find_one(&s, "/Users", &format!("externalId eq {external_id}"), "").await;
    assert_eq!(by_ext["id"], id);
    let got = s.get(&format!("/Users/{id}")).await;
    got.ok();
    assert_eq!(got.body, r.body, "GET returns what POST returned");

    // Soft delete: "False" as a string, capitalised op.
    let r = s
        .patch_ops(
            &format!("/Users/{id}"),
            json!([{"op": "Replace", "path": "active", "value": "False"}]),
        )
        .await;
    r.ok();
    assert_eq!(r.body["active"], false);
    assert_eq!(r.body["meta"]["version"], "W/\"2\"");
    assert_eq!(stored_user(&id).await.unwrap().spec.active, Some(false));
    // Still visible to GET and to the filters.
    let got = s.get(&format!("/Users/{id}")).await;
    got.ok();
    assert_eq!(got.body["active"], false);
    let found = find_one(&s, "/Users", &format!("userName eq \"{user_name}\""), "").await;
    assert_eq!(found["active"], false);
    let found = find_one(
        &s,
        "/Users",
        &format!("externalId eq \"{external_id}\" and active eq false"),
        "",
    )
    .await;
    assert_eq!(found["id"], id);
    let r = s
        .patch_ops(
            &format!("/Users/{id}"),
            json!([{"op": "Replace", "path": "active", "value": "True"}]),
        )
        .await;
    r.ok();
    assert_eq!(r.body["active"], true);
    assert_eq!(stored_user(&id).await.unwrap().spec.active, Some(true));

    // An attribute update cycle, one op per attribute as Entra sends them.
    let new_name = format!("{}@contoso.example", unique("ryan-renamed"));
    let new_ext = uuid::Uuid::new_v4().to_string();
    let r = s
        .patch_ops(
            &format!("/Users/{id}"),
            json!([
                {"op": "Replace", "path": "emails[type eq \"work\"].value", "value": "ryan.work@contoso.example"},
                {"op": "Replace", "path": "userName", "value": new_name},
                {"op": "Replace", "path": "displayName", "value": "Ryan L."},
                {"op": "Replace", "path": "name.givenName", "value": "Ryann"},
                {"op": "Replace", "path": "name.familyName", "value": "Leenay-Smith"},
                {"op": "Replace", "path": "externalId", "value": new_ext},
                {"op": "Add", "path": format!("{ENTERPRISE}:employeeNumber"), "value": "000123"},
                {"op": "Add", "path": "title", "value": "Engineer"}
            ]),
        )
        .await;
    r.ok();
    let u = &r.body;
    assert_eq!(
        u["emails"],
        json!([{"primary": true, "type": "work", "value": "ryan.work@contoso.example"}])
    );
    assert_eq!(u["userName"], new_name);
    assert_eq!(u["displayName"], "Ryan L.");
    assert_eq!(
        u["name"],
        json!({"formatted": "Ryan Leenay", "familyName": "Leenay-Smith", "givenName": "Ryann"})
    );
    assert_eq!(u["externalId"], new_ext);
    assert_eq!(u[ENTERPRISE]["employeeNumber"], "000123");
    assert_eq!(u[ENTERPRISE]["department"], "Payments");
    assert_eq!(u["title"], "Engineer");
    let stored = stored_user(&id).await.unwrap();
    assert_eq!(stored.spec.user_name, new_name);
    assert_eq!(stored.spec.external_id.as_deref(), Some(new_ext.as_str()));
    assert_eq!(stored.spec.display_name.as_deref(), Some("Ryan L."));
    assert_eq!(stored.spec.attributes["name"]["familyName"], "Leenay-Smith");
    assert_eq!(
        stored.spec.attributes["emails"][0]["value"],
        "ryan.work@contoso.example"
    );
    assert_eq!(
        stored.spec.attributes[ENTERPRISE]["employeeNumber"],
        "000123"
    );
    // The old userName no longer finds it; the new one does.
    assert!(s
        .filter("/Users", &format!("userName eq \"{user_name}\""), "")
        .await
        .list(0)
        .is_empty());
    assert_eq!(
        find_one(&s, "/Users", &format!("userName eq \"{new_name}\""), "").await["id"],
        id
    );

    // Manager: a plain string id, then Entra's `[{"$ref": null, "value": id}]`.
    let boss = s.new_user("boss").await;
    let boss2 = s.new_user("boss2").await;
    let r = s
        .patch_ops(
            &format!("/Users/{id}"),
            json!([{"op": "Replace", "path": format!("{ENTERPRISE}:manager"), "value": boss}]),
        )
        .await;
    r.ok();
    assert_eq!(r.body[ENTERPRISE]["manager"]["value"], boss);
    assert_eq!(
        stored_user(&id).await.unwrap().spec.attributes[ENTERPRISE]["manager"]["value"],
        boss
    );
    let r = s
        .patch_ops(
            &format!("/Users/{id}"),
            json!([{"op": "Add", "path": format!("{ENTERPRISE}:manager"),
                    "value": [{"$ref": null, "value": boss2}]}]),
        )
        .await;
    r.ok();
    assert_eq!(r.body[ENTERPRISE]["manager"], json!({"value": boss2}));
    assert_eq!(
        stored_user(&id).await.unwrap().spec.attributes[ENTERPRISE]["manager"],
        json!({"value": boss2})
    );
    // Filtering on the manager works too (Entra doesn't, but reference tools do).
    let found = find_one(
        &s,
        "/Users",
        &format!("{ENTERPRISE}:manager.value eq \"{boss2}\""),
        "",
    )
    .await;
    assert_eq!(found["id"], id);
    let r = s
        .patch_ops(
            &format!("/Users/{id}"),
            json!([{"op": "Remove", "path": format!("{ENTERPRISE}:manager")}]),
        )
        .await;
    r.ok();
    assert!(r.body[ENTERPRISE].get("manager").is_none(), "{}", r.body);

    // Delete: 204, then 404 (SCIM error) and the object is gone.
    for uid in [&id, &boss, &boss2] {
        s.delete(&format!("/Users/{uid}")).await.no_content();
        s.get(&format!("/Users/{uid}")).await.error(404, None);
        assert!(stored_user(uid).await.is_none());
    }
    assert!(s
        .filter("/Users", &format!("externalId eq \"{new_ext}\""), "")
        .await
        .list(0)
        .is_empty());
    // Deleting again is 404.
    s.delete(&format!("/Users/{id}")).await.error(404, None);
}

/// Groups as Entra provisions them: create, lookups without members, member adds and
/// removes in batches, rename, delete.
#[tokio::test]
async fn entra_default_mode_group_lifecycle() {
    let s = scim().await;
    let display = unique("Payments Developers");
    let external_id = uuid::Uuid::new_v4().to_string();
    let r = s
        .post(
            "/Groups",
            &json!({
                "schemas": [GROUP_SCHEMA, ADSCIM_GROUP],
                "externalId": external_id,
                "displayName": display,
                "meta": {"resourceType": "Group"}
            }),
        )
        .await;
    r.created();
    let gid = r.id();
    assert_eq!(
        r.body["members"],
        json!([]),
        "201 lists an empty members array"
    );
    assert_eq!(r.body["displayName"], display);
    assert_eq!(r.body["externalId"], external_id);
    assert_eq!(r.body["meta"]["resourceType"], "Group");
    assert_eq!(r.body["schemas"], json!([GROUP_SCHEMA, ADSCIM_GROUP]));
    let g = stored_group(&gid).await.expect("ScimGroup stored");
    assert_eq!(g.spec.display_name, display);
    assert_eq!(g.spec.external_id.as_deref(), Some(external_id.as_str()));
    assert_eq!(
        g.spec.attributes["schemas"],
        json!([GROUP_SCHEMA, ADSCIM_GROUP])
    );
    assert!(stored_member_ids(&gid).await.is_empty());

    // Lookups without members.
    let found = find_one(
        &s,
        "/Groups",
        &format!("displayName eq \"{display}\""),
        "excludedAttributes=members",
    )
    .await;
    assert_eq!(found["id"], gid);
    assert!(found.get("members").is_none(), "{found}");
    let got = s
        .get(&format!("/Groups/{gid}?excludedAttributes=members"))
        .await;
    got.ok();
    assert!(got.body.get("members").is_none(), "{}", got.body);
    assert_eq!(got.body["displayName"], display);
    let found = find_one(
        &s,
        "/Groups",
        &format!("externalId eq \"{external_id}\""),
        "excludedAttributes=members",
    )
    .await;
    assert_eq!(found["id"], gid);

    // Add several members in one operation.
    let mut users = Vec::new();
    for i in 0..5 {
        users.push(s.new_user(&format!("member{i}")).await);
    }
    let add: Vec<Value> = users[..4]
        .iter()
        .map(|u| json!({"$ref": null, "value": u}))
        .collect();
    let r = s
        .patch_ops(
            &format!("/Groups/{gid}"),
            json!([{"op": "Add", "path": "members", "value": add}]),
        )
        .await;
    r.no_content();
    let want: BTreeSet<String> = users[..4].iter().cloned().collect();
    assert_eq!(stored_member_ids(&gid).await, want);
    let got = s.get(&format!("/Groups/{gid}")).await;
    got.ok();
    assert_eq!(member_ids(&got.body), want);
    assert!(got.body["members"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["$ref"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/Users/{}", m["value"].as_str().unwrap()))));
    // Re-adding an existing member plus a new one is fine (idempotent).
    s.patch_ops(
        &format!("/Groups/{gid}"),
        json!([{"op": "Add", "path": "members",
                "value": [{"$ref": null, "value": users[0]}, {"$ref": null, "value": users[4]}]}]),
    )
    .await
    .no_content();
    assert_eq!(stored_member_ids(&gid).await.len(), 5);

    // Remove with a value list removes exactly the listed members.
    s.patch_ops(
        &format!("/Groups/{gid}"),
        json!([{"op": "Remove", "path": "members",
                "value": [{"value": users[1]}, {"value": users[3]}]}]),
    )
    .await
    .no_content();
    let want: BTreeSet<String> = [&users[0], &users[2], &users[4]]
        .into_iter()
        .cloned()
        .collect();
    assert_eq!(stored_member_ids(&gid).await, want);
    let got = s.get(&format!("/Groups/{gid}")).await;
    assert_eq!(member_ids(&got.body), want);
    // Filtering groups by member (Entra doesn't, scim2-tester and others do).
    let found = find_one(
        &s,
        "/Groups",
        &format!(
            "members[value eq \"{}\"] and displayName eq \"{display}\"",
            users[2]
        ),
        "excludedAttributes=members",
    )
    .await;
    assert_eq!(found["id"], gid);

    // Rename.
    let renamed = unique("Payments Devs");
    s.patch_ops(
        &format!("/Groups/{gid}"),
        json!([{"op": "Replace", "path": "displayName", "value": renamed}]),
    )
    .await
    .no_content();
    assert_eq!(stored_group(&gid).await.unwrap().spec.display_name, renamed);
    let got = s
        .get(&format!("/Groups/{gid}?excludedAttributes=members"))
        .await;
    assert_eq!(got.body["displayName"], renamed);
    assert_eq!(got.body["meta"]["version"], "W/\"5\"", "{}", got.body);

    // Delete: 204, 404, objects and shards gone.
    s.delete(&format!("/Groups/{gid}")).await.no_content();
    s.get(&format!("/Groups/{gid}")).await.error(404, None);
    assert!(stored_group(&gid).await.is_none());
    poll_until(Duration::from_secs(30), "member shards deleted", || async {
        stored_shards(&gid).await.is_empty().then_some(())
    })
    .await;
    assert!(s
        .filter("/Groups", &format!("displayName eq \"{renamed}\""), "")
        .await
        .list(0)
        .is_empty());
    for u in &users {
        s.delete(&format!("/Users/{u}")).await.no_content();
    }
}

/// `?aadOptscim062020`: the flag on every URL (GET, POST, PATCH, DELETE), lower-case ops,
/// real booleans, path-less replace with dotted keys and URNs, `members[value eq ...]`.
#[tokio::test]
async fn entra_aad_opt_scim_mode() {
    let s = scim().await.with_flag(FLAG);
    let user_name = format!("{}@contoso.example", unique("flagged"));
    let external_id = uuid::Uuid::new_v4().to_string();

    let r = s
        .post("/Users", &entra_user(&user_name, &external_id))
        .await;
    r.created();
    let id = r.id();
    assert!(r.url.contains(FLAG));
    let found = find_one(&s, "/Users", &format!("userName eq \"{user_name}\""), "").await;
    assert_eq!(found["id"], id);
    s.get(&format!("/Users/{id}")).await.ok();

    // Real boolean.
    let r = s
        .patch_ops(
            &format!("/Users/{id}"),
            json!([{"op": "replace", "path": "active", "value": false}]),
        )
        .await;
    r.ok();
    assert_eq!(r.body["active"], false);
    assert_eq!(stored_user(&id).await.unwrap().spec.active, Some(false));

    // Path-less replace whose keys are paths and URNs.
    let r = s
        .patch_ops(
            &format!("/Users/{id}"),
            json!([{"op": "replace", "value": {
                "displayName": "Flagged User",
                "name.givenName": "Flag",
                "name.familyName": "Ged",
                format!("{ENTERPRISE}:employeeNumber"): "E-77",
                "active": true
            }}]),
        )
        .await;
    r.ok();
    let u = &r.body;
    assert_eq!(u["displayName"], "Flagged User");
    assert_eq!(
        u["name"],
        json!({"formatted": "Ryan Leenay", "familyName": "Ged", "givenName": "Flag"})
    );
    assert_eq!(
        u[ENTERPRISE],
        json!({"department": "Payments", "employeeNumber": "E-77"})
    );
    assert_eq!(u["active"], true);
    assert!(
        u.get("name.givenName").is_none(),
        "dotted keys are paths: {u}"
    );
    let stored = stored_user(&id).await.unwrap();
    assert_eq!(stored.spec.display_name.as_deref(), Some("Flagged User"));
    assert_eq!(stored.spec.attributes["name"]["givenName"], "Flag");
    assert_eq!(stored.spec.attributes[ENTERPRISE]["employeeNumber"], "E-77");
    assert!(!stored.spec.attributes.contains_key("name.givenName"));
    assert_eq!(stored.spec.active, Some(true));

    // Groups.
    let display = unique("Flagged Group");
    let r = s
        .post(
            "/Groups",
            &json!({"schemas": [GROUP_SCHEMA, ADSCIM_GROUP], "externalId": uuid::Uuid::new_v4().to_string(),
                    "displayName": display}),
        )
        .await;
    r.created();
    assert_eq!(r.body["members"], json!([]));
    let gid = r.id();
    let others = [s.new_user("flag-m1").await, s.new_user("flag-m2").await];
    s.patch_ops(
        &format!("/Groups/{gid}"),
        json!([{"op": "add", "path": "members",
                "value": [{"value": id}, {"value": others[0]}, {"value": others[1]}]}]),
    )
    .await
    .no_content();
    assert_eq!(stored_member_ids(&gid).await.len(), 3);
    s.patch_ops(
        &format!("/Groups/{gid}"),
        json!([{"op": "remove", "path": format!("members[value eq \"{id}\"]")}]),
    )
    .await
    .no_content();
    let want: BTreeSet<String> = others.iter().cloned().collect();
    assert_eq!(stored_member_ids(&gid).await, want);
    let got = s.get(&format!("/Groups/{gid}")).await;
    got.ok();
    assert_eq!(member_ids(&got.body), want);
    let got = s
        .get(&format!("/Groups/{gid}?excludedAttributes=members"))
        .await;
    got.ok();
    assert!(got.body.get("members").is_none());
    let found = find_one(
        &s,
        "/Groups",
        &format!("displayName eq \"{display}\""),
        "excludedAttributes=members",
    )
    .await;
    assert_eq!(found["id"], gid);
    // Path-less replace of a group's displayName.
    let renamed = unique("Flagged Renamed");
    s.patch_ops(
        &format!("/Groups/{gid}"),
        json!([{"op": "replace", "value": {"id": gid, "displayName": renamed}}]),
    )
    .await
    .no_content();
    assert_eq!(stored_group(&gid).await.unwrap().spec.display_name, renamed);
    assert_eq!(
        stored_member_ids(&gid).await,
        want,
        "a rename keeps members"
    );

    s.delete(&format!("/Groups/{gid}")).await.no_content();
    s.get(&format!("/Groups/{gid}")).await.error(404, None);
    for u in [&id, &others[0], &others[1]] {
        s.delete(&format!("/Users/{u}")).await.no_content();
        s.get(&format!("/Users/{u}")).await.error(404, None);
        assert!(stored_user(u).await.is_none());
    }
}
