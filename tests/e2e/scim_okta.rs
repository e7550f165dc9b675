//! Okta's SCIM 2.0 provisioning requests (user import/create/update/deactivate, Group
//! Push), replayed over HTTP against the operator on the real API server.
use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::harness::{
    member_ids, scim, stored_group, stored_member_ids, stored_user, unique, GROUP_SCHEMA,
    USER_SCHEMA,
};

/// Okta's create-user body (it sends a password, which must not be stored).
fn okta_user(user_name: &str, external_id: &str, password: &str) -> Value {
    json!({
        "schemas": [USER_SCHEMA],
        "userName": user_name,
        "name": {"givenName": "Isabelle", "familyName": "Henry"},
        "emails": [{"primary": true, "value": user_name, "type": "work"}],
        "displayName": "Isabelle Henry",
        "locale": "en-US",
        "externalId": external_id,
        "groups": [],
        "password": password,
        "active": true
    })
}

#[tokio::test]
async fn okta_user_lifecycle() {
    let s = scim().await;
    let user_name = format!("{}@okta.example", unique("isabelle"));
    let external_id = format!("00u{}", &uuid::Uuid::new_v4().simple().to_string()[..17]);
    let password = format!("pw-{}", uuid::Uuid::new_v4().simple());

    // Okta first checks that the user doesn't exist, with its paging parameters.
    let lookup = format!("userName eq \"{user_name}\"");
    let r = s.filter("/Users", &lookup, "startIndex=1&count=100").await;
    assert!(r.list(0).is_empty());

    let r = s
        .post("/Users", &okta_user(&user_name, &external_id, &password))
        .await;
    r.created();
    let id = r.id();
    assert!(!r.text.contains(&password), "password echoed: {}", r.text);
    assert!(r.body.get("password").is_none());
    assert!(
        r.body.get("groups").is_none(),
        "groups is read-only and empty"
    );
    assert_eq!(r.body["locale"], "en-US");
    assert_eq!(
        r.body["name"],
        json!({"givenName": "Isabelle", "familyName": "Henry"})
    );
    let stored = stored_user(&id).await.expect("stored");
    let stored_json = serde_json::to_string(&stored).unwrap();
    assert!(
        !stored_json.contains(&password),
        "password stored: {stored_json}"
    );
    assert_eq!(stored.spec.user_name, user_name);
    assert_eq!(stored.spec.attributes["locale"], "en-US");

    let r = s.filter("/Users", &lookup, "startIndex=1&count=100").await;
    let found = r.list(1);
    assert_eq!(r.body["startIndex"], 1);
    assert_eq!(found[0]["id"], id);
    assert!(found[0].get("password").is_none());

    // Update: PUT with the full user (Okta includes id and the groups it knows).
    let mut put = okta_user(&user_name, &external_id, &password);
    put["id"] = json!(id);
    put["name"] = json!({"givenName": "Isa", "familyName": "Henry-Martin"});
    put["emails"] = json!([{"primary": true, "value": "isa@okta.example", "type": "work"}]);
    put.as_object_mut().unwrap().remove("locale");
    put["title"] = json!("Director");
    let r = s.put(&format!("/Users/{id}"), &put).await;
    r.ok();
    assert_eq!(r.body["id"], id);
    assert_eq!(
        r.body["name"],
        json!({"givenName": "Isa", "familyName": "Henry-Martin"})
    );
    assert_eq!(r.body["emails"][0]["value"], "isa@okta.example");
    assert_eq!(r.body["title"], "Director");
    assert!(r.body.get("locale").is_none(), "PUT replaces: {}", r.body);
    assert!(r.body.get("password").is_none());
    assert_eq!(r.body["meta"]["version"], "W/\"2\"");
    let stored = stored_user(&id).await.unwrap();
    assert_eq!(stored.spec.attributes["name"]["givenName"], "Isa");
    assert!(!stored.spec.attributes.contains_key("locale"));
    assert!(!serde_json::to_string(&stored).unwrap().contains(&password));

    // Deactivate: path-less replace.
    let r = s
        .patch_ops(
            &format!("/Users/{id}"),
            json!([{"op": "replace", "value": {"active": false}}]),
        )
        .await;
    r.ok();
    assert_eq!(r.body["active"], false);
    assert_eq!(r.body["title"], "Director", "other attributes stay");
    assert_eq!(stored_user(&id).await.unwrap().spec.active, Some(false));
    let r = s.filter("/Users", &lookup, "startIndex=1&count=100").await;
    assert_eq!(r.list(1)[0]["active"], false);
    // Reactivate.
    let r = s
        .patch_ops(
            &format!("/Users/{id}"),
            json!([{"op": "replace", "value": {"active": true}}]),
        )
        .await;
    r.ok();
    assert_eq!(stored_user(&id).await.unwrap().spec.active, Some(true));

    // Okta's password change: accepted, never stored.
    let new_password = format!("pw2-{}", uuid::Uuid::new_v4().simple());
    s.patch_ops(
        &format!("/Users/{id}"),
        json!([{"op": "replace", "value": {"password": new_password}}]),
    )
    .await
    .ok();
    assert!(!serde_json::to_string(&stored_user(&id).await.unwrap())
        .unwrap()
        .contains(&new_password));

    s.delete(&format!("/Users/{id}")).await.no_content();
    assert!(stored_user(&id).await.is_none());
}

/// Okta Group Push: create, rename, replace the whole membership, remove by filter.
#[tokio::test]
async fn okta_group_push() {
    let s = scim().await;
    let mut users = Vec::new();
    for i in 0..4 {
        users.push(s.new_user(&format!("okta-m{i}")).await);
    }
    let display = unique("Okta Group");
    let r = s
        .filter(
            "/Groups",
            &format!("displayName eq \"{display}\""),
            "startIndex=1&count=100",
        )
        .await;
    assert!(r.list(0).is_empty());
    let r = s
        .post(
            "/Groups",
            &json!({"schemas": [GROUP_SCHEMA], "displayName": display,
                    "members": [{"value": users[0], "display": "m0@okta.example"},
                                {"value": users[1], "display": "m1@okta.example"}]}),
        )
        .await;
    r.created();
    let gid = r.id();
    let want: BTreeSet<String> = users[..2].iter().cloned().collect();
    assert_eq!(member_ids(&r.body), want);
    assert_eq!(stored_member_ids(&gid).await, want);

    let r = s
        .filter(
            "/Groups",
            &format!("displayName eq \"{display}\""),
            "startIndex=1&count=100",
        )
        .await;
    let found = r.list(1);
    assert_eq!(found[0]["id"], gid);
    assert_eq!(member_ids(&found[0]), want);

    // Replace the membership: {0,1} -> {1,2,3}.
    s.patch_ops(
        &format!("/Groups/{gid}"),
        json!([{"op": "replace", "path": "members",
                "value": [{"value": users[1], "display": "m1"}, {"value": users[2], "display": "m2"},
                          {"value": users[3], "display": "m3"}]}]),
    )
    .await
    .no_content();
    let want: BTreeSet<String> = users[1..].iter().cloned().collect();
    assert_eq!(stored_member_ids(&gid).await, want);
    let got = s.get(&format!("/Groups/{gid}")).await;
    got.ok();
    assert_eq!(member_ids(&got.body), want);

    // Rename with a path-less replace (Okta sends id and displayName).
    let renamed = unique("Okta Renamed");
    s.patch_ops(
        &format!("/Groups/{gid}"),
        json!([{"op": "replace", "value": {"id": gid, "displayName": renamed}}]),
    )
    .await
    .no_content();
    assert_eq!(stored_group(&gid).await.unwrap().spec.display_name, renamed);
    assert_eq!(stored_member_ids(&gid).await, want);

    // Remove one member with a value filter, add one back.
    s.patch_ops(
        &format!("/Groups/{gid}"),
        json!([
            {"op": "remove", "path": format!("members[value eq \"{}\"]", users[2])},
            {"op": "add", "path": "members", "value": [{"value": users[0], "display": "m0"}]}
        ]),
    )
    .await
    .no_content();
    let want: BTreeSet<String> = [&users[0], &users[1], &users[3]]
        .into_iter()
        .cloned()
        .collect();
    assert_eq!(stored_member_ids(&gid).await, want);

    // Okta's PUT of a group (full body, members included) replaces members too.
    let r = s
        .put(
            &format!("/Groups/{gid}"),
            &json!({"schemas": [GROUP_SCHEMA], "id": gid, "displayName": renamed,
                    "members": [{"value": users[3]}]}),
        )
        .await;
    r.ok();
    assert_eq!(member_ids(&r.body), [users[3].clone()].into());
    assert_eq!(stored_member_ids(&gid).await, [users[3].clone()].into());

    // Replace with an empty list empties the group.
    s.patch_ops(
        &format!("/Groups/{gid}"),
        json!([{"op": "replace", "path": "members", "value": []}]),
    )
    .await
    .no_content();
    assert!(stored_member_ids(&gid).await.is_empty());
    let got = s.get(&format!("/Groups/{gid}")).await;
    assert_eq!(got.body["members"], json!([]));

    // Listing groups page by page as Okta imports them.
    let r = s.get("/Groups?startIndex=1&count=2").await;
    r.expect(200);
    assert!(r.body["Resources"].as_array().unwrap().len() <= 2);
    assert!(r.body["totalResults"].as_u64().unwrap() >= 1);

    s.delete(&format!("/Groups/{gid}")).await.no_content();
    assert!(stored_group(&gid).await.is_none());
    for u in &users {
        s.delete(&format!("/Users/{u}")).await.no_content();
    }
}
