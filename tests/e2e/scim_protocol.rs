//! RFC 7644 protocol behaviour over HTTP against the operator on the real API server:
//! errors, uniqueness, ETags, filters, pagination, sorting, projection, search, values
//! kept verbatim, and concurrency.
use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{
    bulk_users, enc, member_ids, patch_body, poll_until, scim, stored_group, stored_member_ids,
    stored_user, unique, Scim, CUSTOM_EXTENSION, ENTERPRISE, GROUP_SCHEMA, LIST_RESPONSE,
    USER_SCHEMA,
};

fn user(user_name: &str) -> Value {
    json!({"schemas": [USER_SCHEMA], "userName": user_name})
}

#[tokio::test]
async fn user_name_and_display_name_are_unique() {
    let s = scim().await;
    let name = format!("{}@Example.com", unique("Dup"));
    let id = s.create_user(&user(&name)).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Same userName in another case: 409 uniqueness.
    s.post("/Users", &user(&name.to_uppercase()))
        .await
        .error(409, Some("uniqueness"));
    s.post("/Users", &user(&name.to_lowercase()))
        .await
        .error(409, Some("uniqueness"));
    // Renaming another user onto it, by PATCH and PUT, too.
    let other = s.new_user("dup-other").await;
    s.patch_ops(
        &format!("/Users/{other}"),
        json!([{"op": "replace", "path": "userName", "value": name.to_lowercase()}]),
    )
    .await
    .error(409, Some("uniqueness"));
    s.put(&format!("/Users/{other}"), &user(&name))
        .await
        .error(409, Some("uniqueness"));
    assert_ne!(
        stored_user(&other).await.unwrap().spec.user_name,
        name,
        "a refused rename is not stored"
    );
    // A user may change the case of its own userName.
    let r = s
        .patch_ops(
            &format!("/Users/{id}"),
            json!([{"op": "replace", "path": "userName", "value": name.to_lowercase()}]),
        )
        .await;
    r.ok();
    assert_eq!(r.body["userName"], name.to_lowercase());

    // Groups: displayName.
    let g = s.new_group("Dup Group").await;
    let display = g["displayName"].as_str().unwrap().to_string();
    s.post(
        "/Groups",
        &json!({"schemas": [GROUP_SCHEMA], "displayName": display}),
    )
    .await
    .error(409, Some("uniqueness"));
    s.post(
        "/Groups",
        &json!({"schemas": [GROUP_SCHEMA], "displayName": display.to_uppercase()}),
    )
    .await
    .error(409, Some("uniqueness"));
    let g2 = s.new_group("Dup Group 2").await;
    s.patch_ops(
        &format!("/Groups/{}", g2["id"].as_str().unwrap()),
        json!([{"op": "replace", "path": "displayName", "value": display}]),
    )
    .await
    .error(409, Some("uniqueness"));

    // Parallel creates of one userName: exactly one wins.
    let racy = format!("{}@example.com", unique("race"));
    let results = futures::future::join_all((0..6).map(|_| {
        let s = s.clone();
        let body = user(&racy);
        async move { s.post("/Users", &body).await }
    }))
    .await;
    let created: Vec<_> = results.iter().filter(|r| r.status == 201).collect();
    assert_eq!(created.len(), 1, "exactly one create wins: {results:?}");
    for r in results.iter().filter(|r| r.status != 201) {
        r.error(409, Some("uniqueness"));
    }
    let found = s
        .filter("/Users", &format!("userName eq \"{racy}\""), "")
        .await;
    assert_eq!(found.list(1)[0]["id"], created[0].body["id"]);
}

#[tokio::test]
async fn etags_and_if_match() {
    let s = scim().await;
    let r = s
        .post(
            "/Users",
            &json!({"schemas": [USER_SCHEMA], "userName": format!("{}@example.com", unique("etag")),
                    "displayName": "Before"}),
        )
        .await;
    r.created();
    let id = r.id();
    let path = format!("/Users/{id}");
    let v1 = r.etag();
    assert_eq!(s.get(&path).await.ok().etag(), v1);

    // A stale If-Match is 412 and changes nothing.
    let stale = "W/\"999\"";
    let ops = patch_body(json!([{"op": "replace", "path": "displayName", "value": "After"}]));
    s.send("PATCH", &path, Some(&ops), &[("if-match", stale)])
        .await
        .error(412, None);
    s.send(
        "PUT",
        &path,
        Some(&user("whatever@example.com")),
        &[("if-match", stale)],
    )
    .await
    .error(412, None);
    s.send("DELETE", &path, None, &[("if-match", stale)])
        .await
        .error(412, None);
    let stored = stored_user(&id).await.unwrap();
    assert_eq!(stored.spec.display_name.as_deref(), Some("Before"));

    // The current ETag, and `*`, pass.
    let r = s
        .send("PATCH", &path, Some(&ops), &[("if-match", &v1)])
        .await;
    r.ok();
    let v2 = r.etag();
    assert_ne!(v1, v2, "a change makes a new ETag");
    assert_eq!(r.body["displayName"], "After");
    // The old one is stale now.
    s.send("PATCH", &path, Some(&ops), &[("if-match", &v1)])
        .await
        .error(412, None);
    // A no-op PATCH keeps the ETag (and stores nothing).
    let rv = stored_user(&id).await.unwrap().metadata.resource_version;
    let r = s
        .send("PATCH", &path, Some(&ops), &[("if-match", "*")])
        .await;
    r.ok();
    assert_eq!(r.etag(), v2, "no-op PATCH keeps the version");
    assert_eq!(
        stored_user(&id).await.unwrap().metadata.resource_version,
        rv
    );
    let got = s.get(&path).await;
    assert_eq!(got.etag(), v2);
    assert_eq!(got.body["meta"]["version"], v2);
    // meta.lastModified moves with a change, created doesn't.
    let r = s
        .patch_ops(
            &path,
            json!([{"op": "replace", "path": "displayName", "value": "Again"}]),
        )
        .await;
    r.ok();
    assert_eq!(r.body["meta"]["created"], got.body["meta"]["created"]);
    assert!(r.body["meta"]["lastModified"].as_str() >= got.body["meta"]["lastModified"].as_str());
    let v3 = r.etag();
    // PUT with the current ETag.
    let r = s
        .send(
            "PUT",
            &path,
            Some(&json!({"schemas": [USER_SCHEMA], "userName": got.body["userName"], "displayName": "Put"})),
            &[("if-match", &v3)],
        )
        .await;
    r.ok();
    let v4 = r.etag();

    // Groups: the 204 of a PATCH carries the new ETag; If-Match applies too.
    let g = s.new_group("ETag Group").await;
    let gpath = format!("/Groups/{}", g["id"].as_str().unwrap());
    let gv1 = g["meta"]["version"].as_str().unwrap().to_string();
    let add = patch_body(json!([{"op": "add", "path": "members", "value": [{"value": id}]}]));
    s.send("PATCH", &gpath, Some(&add), &[("if-match", stale)])
        .await
        .error(412, None);
    assert!(stored_member_ids(g["id"].as_str().unwrap())
        .await
        .is_empty());
    let r = s
        .send("PATCH", &gpath, Some(&add), &[("if-match", &gv1)])
        .await;
    r.no_content();
    let gv2 = r.etag();
    assert_ne!(gv1, gv2);
    let got = s.get(&gpath).await;
    assert_eq!(got.ok().etag(), gv2);
    // No-op add keeps the version.
    let r = s.patch(&gpath, &add).await;
    r.no_content();
    assert_eq!(r.etag(), gv2);
    s.send("DELETE", &gpath, None, &[("if-match", &gv2)])
        .await
        .no_content();
    s.send("DELETE", &path, None, &[("if-match", &v4)])
        .await
        .no_content();
    assert!(stored_user(&id).await.is_none());
}

#[tokio::test]
async fn bad_input_is_a_scim_400() {
    let s = scim().await;
    let id = s.new_user("bad-input").await;
    let path = format!("/Users/{id}");
    let raw = |b: &str| Some(b.as_bytes().to_vec());

    // Malformed JSON.
    for body in ["{", "{\"userName\": }", "not json", "[1,", "\u{0}"] {
        s.raw("POST", "/Users", raw(body), &[])
            .await
            .error(400, Some("invalidSyntax"));
        s.raw("PATCH", &path, raw(body), &[])
            .await
            .error(400, Some("invalidSyntax"));
        s.raw("PUT", &path, raw(body), &[])
            .await
            .error(400, Some("invalidSyntax"));
    }
    // Empty body.
    s.raw("POST", "/Users", raw(""), &[]).await.error(400, None);
    // Not an object.
    s.post("/Users", &json!(["userName"]))
        .await
        .error(400, None);

    // Wrong types.
    let un = || format!("{}@example.com", unique("wrong-type"));
    for body in [
        json!({"schemas": [USER_SCHEMA], "userName": un(), "active": "maybe"}),
        json!({"schemas": [USER_SCHEMA], "userName": 42}),
        json!({"schemas": [USER_SCHEMA], "userName": un(), "emails": "a@b.c"}),
        json!({"schemas": [USER_SCHEMA], "userName": un(), "emails": [{"value": 5}]}),
        json!({"schemas": [USER_SCHEMA], "userName": un(), "name": "Ryan"}),
        json!({"schemas": [USER_SCHEMA], "userName": un(), "emails": [{"value": "a@b.c", "primary": "perhaps"}]}),
        json!({"schemas": [USER_SCHEMA], "userName": un(), ENTERPRISE: "x"}),
    ] {
        s.post("/Users", &body)
            .await
            .error(400, Some("invalidValue"));
    }
    // Missing / empty required attribute.
    s.post("/Users", &json!({"schemas": [USER_SCHEMA]}))
        .await
        .error(400, Some("invalidValue"));
    s.post("/Users", &json!({"schemas": [USER_SCHEMA], "userName": ""}))
        .await
        .error(400, Some("invalidValue"));
    s.post("/Groups", &json!({"schemas": [GROUP_SCHEMA]}))
        .await
        .error(400, Some("invalidValue"));

    // PATCH: wrong types, bad ops, bad paths.
    for (ops, scim_type) in [
        (
            json!([{"op": "replace", "path": "active", "value": "maybe"}]),
            "invalidValue",
        ),
        (
            json!([{"op": "replace", "path": "userName", "value": 7}]),
            "invalidValue",
        ),
        (
            json!([{"op": "replace", "path": "userName", "value": null}]),
            "invalidValue",
        ),
        (
            json!([{"op": "frobnicate", "path": "active", "value": true}]),
            "invalidSyntax",
        ),
        (json!([{"path": "active", "value": true}]), "invalidSyntax"),
        (
            json!([{"op": "replace", "path": "emails[type eq", "value": "x"}]),
            "invalidPath",
        ),
        (
            json!([{"op": "replace", "path": "id", "value": "x"}]),
            "mutability",
        ),
        (json!([{"op": "remove"}]), "noTarget"),
        (json!([]), "invalidSyntax"),
    ] {
        s.patch_ops(&path, ops.clone())
            .await
            .error(400, Some(scim_type));
    }
    s.patch(
        &path,
        &json!({"Operations": [{"op": "replace", "path": "active", "value": false}]}),
    )
    .await
    .error(400, Some("invalidSyntax"));
    // None of it changed the user.
    let stored = stored_user(&id).await.unwrap();
    assert_eq!(stored.spec.active, None);
    let r = s.get(&path).await;
    assert_eq!(r.ok().body["meta"]["version"], "W/\"1\"");

    // Invalid filters.
    for f in [
        "userName eq",
        "userName xx \"a\"",
        "(userName eq \"a\"",
        "userName eq \"a",
        "emails[type eq \"work\"",
        "and",
        "userName eq \"a\" or",
        "active gt true",
    ] {
        s.get(&format!("/Users?filter={}", enc(f)))
            .await
            .error(400, Some("invalidFilter"));
        s.post(
            "/Users/.search",
            &json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"], "filter": f}),
        )
        .await
        .error(400, Some("invalidFilter"));
    }
    // Bad paging / sorting parameters.
    s.get("/Users?count=ten")
        .await
        .error(400, Some("invalidValue"));
    s.get("/Users?sortOrder=sideways")
        .await
        .error(400, Some("invalidValue"));
}

#[tokio::test]
async fn unknown_routes_methods_auth_and_size() {
    let s = scim().await;
    // Unknown path: 404 with a SCIM body, inside and outside the base path.
    for p in ["/Nope", "/Users/x/y", "/users2"] {
        s.get(p).await.error(404, None);
    }
    let root = s.base.trim_end_matches("/scim/v2").to_string();
    let r = s
        .http
        .get(format!("{root}/elsewhere"))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/scim+json"
    );
    // Unknown id.
    s.get(&format!("/Users/{}", uuid::Uuid::new_v4()))
        .await
        .error(404, None);
    s.get(&format!("/Groups/{}", uuid::Uuid::new_v4()))
        .await
        .error(404, None);
    s.patch_ops(
        &format!("/Users/{}", uuid::Uuid::new_v4()),
        json!([{"op": "replace", "path": "active", "value": false}]),
    )
    .await
    .error(404, None);
    s.delete(&format!("/Groups/{}", uuid::Uuid::new_v4()))
        .await
        .error(404, None);

    // Unsupported methods: 405 with a SCIM body.
    for (m, p) in [
        ("DELETE", "/Users"),
        ("PUT", "/Groups"),
        ("PATCH", "/ServiceProviderConfig"),
        ("POST", "/Schemas"),
        ("GET", "/Users/.search"),
    ] {
        s.send(m, p, None, &[]).await.error(405, None);
    }

    // No token / a bad token / another scheme: 401, WWW-Authenticate, SCIM body.
    for client in [
        s.with_token(""),
        s.with_token("kscim_not-a-real-token"),
        s.with_token(&format!("{}x", s.token)),
    ] {
        let r = client.get("/Users").await;
        r.error(401, None);
        assert!(
            r.header("www-authenticate")
                .is_some_and(|v| v.starts_with("Bearer")),
            "{r:?}"
        );
    }
    let r = s
        .with_token("")
        .raw(
            "GET",
            "/Users",
            None,
            &[("authorization", "Basic dXNlcjpwYXNz")],
        )
        .await;
    r.error(401, None);
    assert!(r.header("www-authenticate").is_some());
    // A write without a valid token writes nothing.
    let name = format!("{}@example.com", unique("unauth"));
    s.with_token("bad")
        .post("/Users", &user(&name))
        .await
        .error(401, None);
    assert!(s
        .filter("/Users", &format!("userName eq \"{name}\""), "")
        .await
        .list(0)
        .is_empty());

    // Oversize body (default limit 8 MiB): 413 with a SCIM body.
    let big = json!({"schemas": [USER_SCHEMA], "userName": name,
                     "blob": "x".repeat(9 * 1024 * 1024)});
    let r = s.post("/Users", &big).await;
    r.error(413, None);
    let id = s.new_user("oversize").await;
    let r = s
        .patch_ops(
            &format!("/Users/{id}"),
            json!([{"op": "add", "path": "blob", "value": "y".repeat(9 * 1024 * 1024)}]),
        )
        .await;
    r.error(413, None);
    assert!(!stored_user(&id)
        .await
        .unwrap()
        .spec
        .attributes
        .contains_key("blob"));
    // Under the body limit but over what one etcd object holds: a 4xx, not a 500.
    let r = s
        .patch_ops(
            &format!("/Users/{id}"),
            json!([{"op": "add", "path": "blob", "value": "z".repeat(3 * 1024 * 1024)}]),
        )
        .await;
    assert!((400..500).contains(&r.status), "{r:?}");
    r.assert_scim_error();
}

/// Creates `n` users whose userNames share a unique prefix; returns (prefix, ids in order).
async fn users_with_prefix(s: &Scim, n: usize) -> (String, Vec<String>) {
    let prefix = unique("page");
    let family = ["Delta", "alpha", "Charlie", "bravo", "Echo"];
    let mut ids = Vec::new();
    for i in 0..n {
        let body = json!({
            "schemas": [USER_SCHEMA],
            "userName": format!("{prefix}-{i}@example.com"),
            "name": {"familyName": family[i % family.len()], "givenName": format!("G{i}")},
            "emails": [{"value": format!("{prefix}-{i}@work.example"), "type": "work", "primary": true},
                       {"value": format!("{prefix}-{i}@home.example"), "type": "home"}],
            "title": if i % 2 == 0 { json!("Even") } else { Value::Null },
            "active": i != 3,
        });
        ids.push(
            s.create_user(&body).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    (prefix, ids)
}

fn ids_of(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|u| u["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn filters_pagination_sorting_projection_search() {
    let s = scim().await;
    let (prefix, ids) = users_with_prefix(&s, 5).await;
    let sw = format!("userName sw \"{prefix}\"");

    // Default order is creation order; pages are 1-based.
    let all = s.filter("/Users", &sw, "").await.list(5);
    assert_eq!(ids_of(&all), ids);
    let r = s.filter("/Users", &sw, "startIndex=2&count=2").await;
    assert_eq!(ids_of(&r.list(5)), ids[1..3]);
    assert_eq!(r.body["startIndex"], 2);
    let r = s.filter("/Users", &sw, "startIndex=5&count=10").await;
    assert_eq!(ids_of(&r.list(5)), ids[4..]);
    let r = s.filter("/Users", &sw, "startIndex=9").await;
    assert!(r.list(5).is_empty());
    // count=0: only totalResults.
    let r = s.filter("/Users", &sw, "count=0").await;
    assert!(r.list(5).is_empty());
    // startIndex < 1 is 1.
    let r = s.filter("/Users", &sw, "startIndex=0&count=1").await;
    assert_eq!(ids_of(&r.list(5)), ids[..1]);
    assert_eq!(r.body["startIndex"], 1);

    // Sorting: userName descending; name.familyName ascending is case-insensitive.
    let r = s
        .filter("/Users", &sw, "sortBy=userName&sortOrder=descending")
        .await;
    let mut want = ids.clone();
    want.reverse();
    assert_eq!(ids_of(&r.list(5)), want);
    let r = s.filter("/Users", &sw, "sortBy=name.familyName").await;
    let families: Vec<String> = r
        .list(5)
        .iter()
        .map(|u| u["name"]["familyName"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(families, ["alpha", "bravo", "Charlie", "Delta", "Echo"]);
    // Sorting on a missing value puts it last (ascending).
    let r = s.filter("/Users", &sw, "sortBy=title").await;
    let titles: Vec<Value> = r.list(5).iter().map(|u| u["title"].clone()).collect();
    assert_eq!(titles[..3], [json!("Even"), json!("Even"), json!("Even")]);

    // Filters.
    let count = |f: String| {
        let s = s.clone();
        async move {
            let r = s.filter("/Users", &f, "").await;
            r.expect(200);
            r.body["totalResults"].as_u64().unwrap()
        }
    };
    assert_eq!(count(format!("{sw} and active eq false")).await, 1);
    assert_eq!(count(format!("{sw} and not (active eq false)")).await, 4);
    assert_eq!(count(format!("{sw} and title pr")).await, 3);
    assert_eq!(
        count(format!("{sw} and name.familyName co \"HARL\"")).await,
        1
    );
    assert_eq!(
        count(format!(
            "{sw} and (name.givenName eq \"G1\" or name.givenName eq \"G2\")"
        ))
        .await,
        2
    );
    assert_eq!(
        count(format!(
            "emails[type eq \"work\" and value eq \"{prefix}-2@work.example\"]"
        ))
        .await,
        1
    );
    assert_eq!(
        count(format!("emails.value ew \"@home.example\" and {sw}")).await,
        5
    );
    assert_eq!(
        count(format!("USERNAME SW \"{}\"", prefix.to_uppercase())).await,
        5
    );
    assert_eq!(
        count(format!("{sw} and meta.created gt \"2000-01-01T00:00:00Z\"")).await,
        5
    );
    assert_eq!(
        count(format!(
            "{sw} and meta.lastModified lt \"2000-01-01T00:00:00Z\""
        ))
        .await,
        0
    );
    assert_eq!(count(format!("id eq \"{}\"", ids[2])).await, 1);

    // Projection on list and get.
    let r = s
        .filter("/Users", &sw, "attributes=userName,name.givenName&count=1")
        .await;
    let u = &r.list(5)[0];
    assert_eq!(u["id"], ids[0], "id is always returned");
    assert!(u["userName"].is_string());
    assert_eq!(u["name"], json!({"givenName": "G0"}));
    assert!(u.get("emails").is_none() && u.get("title").is_none(), "{u}");
    let r = s
        .filter("/Users", &sw, "excludedAttributes=emails,name&count=1")
        .await;
    let u = &r.list(5)[0];
    assert!(u.get("emails").is_none() && u.get("name").is_none(), "{u}");
    assert!(u["userName"].is_string() && u["id"].is_string());
    let r = s
        .get(&format!("/Users/{}?attributes=emails.value", ids[1]))
        .await;
    r.ok();
    assert_eq!(
        r.body["emails"],
        json!([{"value": format!("{prefix}-1@work.example")}, {"value": format!("{prefix}-1@home.example")}])
    );
    assert!(r.body.get("userName").is_none());
    let r = s
        .get(&format!("/Users/{}?excludedAttributes=userName,id", ids[1]))
        .await;
    // userName is "returned: default" (RFC 7643 §8.7.1) so it can be excluded; id can't.
    r.ok();
    assert!(r.body.get("userName").is_none(), "{}", r.body);
    assert_eq!(r.body["id"], ids[1]);
    assert!(r.body["emails"].is_array());

    // POST .search.
    let r = s
        .post(
            "/Users/.search",
            &json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
                    "filter": sw, "startIndex": 2, "count": 2, "sortBy": "userName",
                    "attributes": ["userName"]}),
        )
        .await;
    let found = r.list(5);
    assert_eq!(ids_of(&found), ids[1..3]);
    assert!(found[0].get("name").is_none());
    assert_eq!(r.body["schemas"][0], LIST_RESPONSE);

    let g = s.new_group("Search Group").await;
    let gid = g["id"].as_str().unwrap();
    s.patch_ops(
        &format!("/Groups/{gid}"),
        json!([{"op": "add", "path": "members", "value": [{"value": ids[0]}, {"value": ids[1]}]}]),
    )
    .await
    .no_content();
    let r = s
        .post(
            "/Groups/.search",
            &json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
                    "filter": format!("displayName eq \"{}\"", g["displayName"].as_str().unwrap()),
                    "excludedAttributes": ["members"]}),
        )
        .await;
    let found = r.list(1);
    assert_eq!(found[0]["id"], gid);
    assert!(found[0].get("members").is_none());
    let r = s
        .filter(
            "/Groups",
            &format!("members[value eq \"{}\"]", ids[1]),
            "attributes=displayName",
        )
        .await;
    let found = r.list(1);
    assert_eq!(found[0]["id"], gid);
    assert!(found[0].get("members").is_none(), "{}", found[0]);
    let r = s
        .get(&format!("/Groups/{gid}?attributes=members.value"))
        .await;
    r.ok();
    assert_eq!(
        member_ids(&r.body),
        ids[..2].iter().cloned().collect::<BTreeSet<_>>()
    );
    assert!(r.body.get("displayName").is_none());
    // Root .search spans both types.
    let r = s
        .post(
            "/.search",
            &json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
                    "filter": format!("id eq \"{gid}\" or id eq \"{}\"", ids[4])}),
        )
        .await;
    let found = r.list(2);
    let types: BTreeSet<&str> = found
        .iter()
        .map(|r| r["meta"]["resourceType"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["Group", "User"].into());

    // An unquoted numeric externalId longer than any integer type matches as sent.
    let numeric = format!("9{}", uuid::Uuid::new_v4().as_u128());
    let nid = s
        .create_user(&json!({"schemas": [USER_SCHEMA], "externalId": numeric,
                             "userName": format!("{prefix}-numeric@example.com")}))
        .await["id"]
        .clone();
    let r = s
        .filter("/Users", &format!("externalId eq {numeric}"), "")
        .await;
    assert_eq!(r.list(1)[0]["id"], nid);
    let mut other = numeric.clone();
    other.pop();
    other.push(if numeric.ends_with('1') { '2' } else { '1' });
    assert!(s
        .filter("/Users", &format!("externalId eq {other}"), "")
        .await
        .list(0)
        .is_empty());
    s.delete(&format!("/Users/{}", nid.as_str().unwrap()))
        .await
        .no_content();

    s.delete(&format!("/Groups/{gid}")).await.no_content();
    for id in &ids {
        s.delete(&format!("/Users/{id}")).await.no_content();
    }
}

/// Declared values read back exactly as sent, and so do the extension attributes the
/// operator serves by configuration (`--extension-attributes`, here Entra's
/// `CustomExtensionName` shape): in POST bodies, filters, PATCH paths and path-less values.
#[tokio::test]
async fn values_and_served_extension_attributes_are_kept_verbatim() {
    let s = scim().await;
    let user_name = format!("{}@Example.COM", unique("Verbatim"));
    let body = json!({
        "schemas": [USER_SCHEMA, ENTERPRISE, CUSTOM_EXTENSION],
        "userName": user_name,
        "displayName": "  Zoë  Ünïcödé 🚀 ",
        "name": {"givenName": "Zoë", "familyName": "O'Brien", "honorificSuffix": "III"},
        "emails": [{"value": "Zoe.OBrien@Example.COM", "type": "Work", "primary": true},
                   {"value": "zoe@home.example", "type": "custom-type"}],
        "phoneNumbers": [{"value": "+1 (555) 010-0000", "type": "work"}],
        "timezone": "Europe/Paris",
        "x509Certificates": [{"value": "TUlJQ0lqQU5CZ2txaGtpRzl3MEJBUUVGQUFPQ0FnOEFNSUlDQ2dLQ0FnRUE="}],
        CUSTOM_EXTENSION: {"costCode": "CC-Ünï", "badge": 7},
        ENTERPRISE: {"employeeNumber": "0042", "costCenter": "CC-1", "organization": "Org",
                     "division": "Div", "department": "Dept", "manager": {"value": "m-1", "displayName": "ignored"}},
    });
    let r = s.post("/Users", &body).await;
    r.created();
    let id = r.id();
    let u = &r.body;
    for k in [
        "userName",
        "displayName",
        "name",
        "emails",
        "phoneNumbers",
        "timezone",
        "x509Certificates",
        CUSTOM_EXTENSION,
    ] {
        assert_eq!(u[k], body[k], "{k} read back exactly");
    }
    assert_eq!(u[ENTERPRISE]["employeeNumber"], "0042");
    assert_eq!(
        u[ENTERPRISE]["manager"]["value"], "m-1",
        "manager.displayName is read-only: {}",
        u[ENTERPRISE]
    );
    assert_eq!(
        u["schemas"],
        json!([USER_SCHEMA, ENTERPRISE, CUSTOM_EXTENSION])
    );
    let got = s.get(&format!("/Users/{id}")).await;
    got.ok();
    assert_eq!(&got.body, u, "GET equals the 201 body");
    let stored = stored_user(&id).await.unwrap();
    assert_eq!(
        stored.spec.display_name.as_deref(),
        Some("  Zoë  Ünïcödé 🚀 ")
    );
    assert_eq!(
        stored.spec.attributes[CUSTOM_EXTENSION],
        body[CUSTOM_EXTENSION]
    );

    // Filters: exact userName any case, a served extension attribute.
    let r = s
        .filter(
            "/Users",
            &format!("userName eq \"{}\"", user_name.to_lowercase()),
            "",
        )
        .await;
    assert_eq!(r.list(1)[0]["userName"], user_name, "stored as sent");
    let r = s
        .filter(
            "/Users",
            &format!("{CUSTOM_EXTENSION}:badge eq 7 and userName eq \"{user_name}\""),
            "",
        )
        .await;
    assert_eq!(r.list(1)[0]["id"], id);

    // PATCH: Entra's fully-qualified paths and path-less keys, case-insensitive names.
    let r = s
        .patch_ops(
            &format!("/Users/{id}"),
            json!([
                {"op": "Replace", "path": format!("{CUSTOM_EXTENSION}:BADGE"), "value": 8},
                {"op": "Replace", "value": {format!("{CUSTOM_EXTENSION}:costCode"): "CC-2"}},
                {"op": "add", "path": "emails", "value": [{"value": "third@Example.COM", "type": "other"}]}
            ]),
        )
        .await;
    r.ok();
    let u = &r.body;
    assert_eq!(u[CUSTOM_EXTENSION], json!({"costCode": "CC-2", "badge": 8}));
    assert_eq!(u["emails"].as_array().unwrap().len(), 3);
    assert_eq!(u["emails"][0]["value"], "Zoe.OBrien@Example.COM");
    // Served attributes are typed.
    s.patch_ops(
        &format!("/Users/{id}"),
        json!([{"op": "replace", "path": format!("{CUSTOM_EXTENSION}:badge"), "value": "eight"}]),
    )
    .await
    .error(400, Some("invalidValue"));
    // Removing the whole extension takes it out of `schemas` too.
    let r = s
        .patch_ops(
            &format!("/Users/{id}"),
            json!([{"op": "remove", "path": CUSTOM_EXTENSION}]),
        )
        .await;
    r.ok();
    assert!(r.body.get(CUSTOM_EXTENSION).is_none());
    assert_eq!(r.body["schemas"], json!([USER_SCHEMA, ENTERPRISE]));
    s.delete(&format!("/Users/{id}")).await.no_content();
}

#[tokio::test]
async fn discovery_endpoints() {
    let s = scim().await;
    let r = s.get("/ServiceProviderConfig").await;
    r.expect(200);
    assert_eq!(r.body["patch"]["supported"], true);
    assert_eq!(r.body["filter"]["supported"], true);
    assert_eq!(r.body["etag"]["supported"], true);
    assert_eq!(r.body["bulk"]["supported"], false);
    assert_eq!(r.body["sort"]["supported"], true);
    let r = s.get("/ResourceTypes").await;
    let names: BTreeSet<String> = r
        .list(2)
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["Group".to_string(), "User".to_string()].into());
    let r = s.get("/ResourceTypes/User").await;
    r.expect(200);
    // The configured extension is advertised next to the enterprise one.
    assert_eq!(
        r.body["schemaExtensions"],
        json!([{"schema": ENTERPRISE, "required": false},
               {"schema": CUSTOM_EXTENSION, "required": false}])
    );
    s.get("/ResourceTypes/Nope").await.error(404, None);
    let r = s.get("/Schemas").await;
    let ids: BTreeSet<String> = r
        .list(4)
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    assert!(ids.contains(USER_SCHEMA) && ids.contains(GROUP_SCHEMA) && ids.contains(ENTERPRISE));
    assert!(ids.contains(CUSTOM_EXTENSION));
    s.get(&format!("/Schemas/{ENTERPRISE}")).await.expect(200);
    let r = s.get(&format!("/Schemas/{CUSTOM_EXTENSION}")).await;
    r.expect(200);
    let attrs: Vec<(String, String, bool)> = r.body["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap().to_string(),
                a["type"].as_str().unwrap().to_string(),
                a["multiValued"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        attrs,
        [
            ("costCode".into(), "string".into(), false),
            ("badge".into(), "integer".into(), false)
        ]
    );
    s.get("/Schemas/urn:nope").await.error(404, None);
    s.get("/Bulk").await.error(501, None);
    // And with Entra's flag.
    s.with_flag("aadOptscim062020")
        .get("/ServiceProviderConfig")
        .await
        .expect(200);
}

/// Odd requests of every kind: never a 5xx, always a SCIM error body.
#[tokio::test]
async fn garbage_never_gets_a_500() {
    let s = scim().await;
    let uid = s.new_user("garbage").await;
    let g = s.new_group("Garbage Group").await;
    let gid = g["id"].as_str().unwrap().to_string();
    let u = format!("/Users/{uid}");
    let gp = format!("/Groups/{gid}");
    let long = "a".repeat(10_000);
    let deep = format!("{}1{}", "[".repeat(5000), "]".repeat(5000));
    let deep_obj = format!(
        "{{\"schemas\":[\"{USER_SCHEMA}\"],\"userName\":\"deep\",\"x\":{}}}",
        deep
    );
    let mut cases: Vec<(&str, String, Option<String>)> = vec![
        ("GET", "/Users?filter=".into(), None),
        ("GET", "/Users?filter=%".into(), None),
        ("GET", "/Users?filter=%ZZ".into(), None),
        (
            "GET",
            format!("/Users?filter={}", enc("userName eq \"\\u0000\"")),
            None,
        ),
        (
            "GET",
            format!("/Users?filter={}", enc(&"(".repeat(2000))),
            None,
        ),
        (
            "GET",
            format!(
                "/Users?filter={}",
                enc(&format!(
                    "{}userName pr{}",
                    "not (".repeat(500),
                    ")".repeat(500)
                ))
            ),
            None,
        ),
        (
            "GET",
            format!(
                "/Users?filter={}",
                enc("emails[type eq \"work\"][value eq \"x\"]")
            ),
            None,
        ),
        (
            "GET",
            format!("/Users?filter={}", enc("emails[emails[type eq \"x\"]]")),
            None,
        ),
        (
            "GET",
            format!("/Users?filter={}", enc("userName eq \"a\" and")),
            None,
        ),
        (
            "GET",
            format!("/Users?filter={}", enc("meta.created gt \"not a date\"")),
            None,
        ),
        (
            "GET",
            format!(
                "/Users?filter={}",
                enc("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User eq \"x\"")
            ),
            None,
        ),
        (
            "GET",
            format!("/Users?filter={}", enc("name gt \"a\"")),
            None,
        ),
        (
            "GET",
            format!("/Users?filter={}", enc(&format!("userName eq \"{long}\""))),
            None,
        ),
        (
            "GET",
            "/Users?startIndex=99999999999999999999999".into(),
            None,
        ),
        ("GET", "/Users?count=-5&startIndex=-9".into(), None),
        ("GET", "/Users?count=1e3".into(), None),
        (
            "GET",
            "/Users?sortBy=emails[type%20eq%20%22work%22]".into(),
            None,
        ),
        ("GET", "/Users?sortBy=nope.nope.nope".into(), None),
        ("GET", "/Users?attributes=,,,".into(), None),
        ("GET", "/Users?attributes=urn:x:y:z".into(), None),
        (
            "GET",
            "/Users?excludedAttributes=meta,id,schemas".into(),
            None,
        ),
        (
            "GET",
            "/Users?a=1&a=2&filter=userName%20pr&filter=x".into(),
            None,
        ),
        (
            "GET",
            format!("{u}?attributes=emails[type eq \"work\"].value"),
            None,
        ),
        ("GET", format!("{gp}?attributes=members.nope"), None),
        ("GET", "/Users/%00".into(), None),
        ("GET", "/Users/..%2F..%2Fetc".into(), None),
        ("GET", format!("/Users/{long}"), None),
        ("GET", "/Users/UPPER_case.invalid-name".into(), None),
        ("GET", "/Groups/.search".into(), None),
        ("GET", "//Users".into(), None),
        ("DELETE", "/Users/%20".into(), None),
        ("POST", "/Users".into(), Some("null".into())),
        ("POST", "/Users".into(), Some("\"string\"".into())),
        ("POST", "/Users".into(), Some("1e999999".into())),
        ("POST", "/Users".into(), Some(deep.clone())),
        ("POST", "/Users".into(), Some(deep_obj.clone())),
        (
            "POST",
            "/Users".into(),
            Some(format!("{{\"userName\": \"{}\"}}", "b".repeat(100_000))),
        ),
        (
            "POST",
            "/Users".into(),
            Some("{\"userName\": \"dup\", \"userName\": 5}".into()),
        ),
        (
            "POST",
            "/Users".into(),
            Some("{\"schemas\": \"x\", \"userName\": \"s\"}".into()),
        ),
        (
            "POST",
            "/Users".into(),
            Some("{\"schemas\": [1], \"userName\": \"s\"}".into()),
        ),
        (
            "POST",
            "/Users".into(),
            Some(format!(
                "{{\"userName\": \"bad-ext\", \"{ENTERPRISE}\": [1]}}"
            )),
        ),
        (
            "POST",
            "/Users".into(),
            Some(format!(
                "{{\"userName\": \"bad-ext2\", \"{ENTERPRISE}:manager\": 5}}"
            )),
        ),
        (
            "POST",
            "/Users".into(),
            Some("{\"userName\": \"x\", \"emails\": [[]]}".into()),
        ),
        (
            "POST",
            "/Users".into(),
            Some(
                "{\"userName\": \"x\", \"x509Certificates\": [{\"value\": \"not base64!\"}]}"
                    .into(),
            ),
        ),
        (
            "POST",
            "/Users".into(),
            Some("{\"userName\": \"   \"}".into()),
        ),
        (
            "POST",
            "/Groups".into(),
            Some("{\"displayName\": \"g\", \"members\": \"x\"}".into()),
        ),
        (
            "POST",
            "/Groups".into(),
            Some("{\"displayName\": \"g\", \"members\": [{\"value\": 1}]}".into()),
        ),
        (
            "POST",
            "/Groups".into(),
            Some("{\"displayName\": \"g\", \"members\": [{}]}".into()),
        ),
        (
            "POST",
            "/Groups".into(),
            Some("{\"displayName\": [\"g\"]}".into()),
        ),
        (
            "POST",
            "/Users/.search".into(),
            Some("{\"count\": \"x\"}".into()),
        ),
        (
            "POST",
            "/Users/.search".into(),
            Some("{\"filter\": 5}".into()),
        ),
        (
            "POST",
            "/Users/.search".into(),
            Some("{\"attributes\": 5}".into()),
        ),
        (
            "POST",
            "/Users/.search".into(),
            Some("{\"startIndex\": 1e300}".into()),
        ),
        (
            "POST",
            "/.search".into(),
            Some("{\"filter\": \"members[value eq \\\"x\\\"]\"}".into()),
        ),
        (
            "POST",
            "/.search".into(),
            Some("{\"filter\": \"nope eq\"}".into()),
        ),
        ("POST", "/.search".into(), Some("[]".into())),
        ("PUT", u.clone(), Some("{}".into())),
        ("PUT", u.clone(), Some("{\"userName\": null}".into())),
        ("PUT", gp.clone(), Some("{\"displayName\": \"\"}".into())),
        ("PATCH", u.clone(), Some("{}".into())),
        (
            "PATCH",
            u.clone(),
            Some(format!(
                "{{\"schemas\":[\"{}\"],\"Operations\":{{}}}}",
                crate::harness::PATCH_OP
            )),
        ),
        (
            "PATCH",
            u.clone(),
            Some(format!(
                "{{\"schemas\":[\"{}\"],\"Operations\":[1,2]}}",
                crate::harness::PATCH_OP
            )),
        ),
    ];
    let ops: Vec<Value> = vec![
        json!([{"op": "add", "path": "emails[type eq \"work\"].value.extra", "value": "x"}]),
        json!([{"op": "add", "path": "emails[type eq \"work\" or type eq \"home\"].value", "value": "x"}]),
        json!([{"op": "replace", "path": "emails[value co \"x\"]", "value": "notobject"}]),
        json!([{"op": "replace", "path": "name.givenName.extra", "value": "x"}]),
        json!([{"op": "replace", "path": "userName[value eq \"x\"]", "value": "x"}]),
        json!([{"op": "replace", "path": "members", "value": [{"value": "x"}]}]),
        json!([{"op": "add", "path": "", "value": "string"}]),
        json!([{"op": "add", "value": {"": 1}}]),
        json!([{"op": "add", "value": {"name.": 1}}]),
        json!([{"op": "add", "value": {"urn:ietf:params:scim:schemas:core:2.0:User": 5}}]),
        json!([{"op": "add", "value": {ENTERPRISE: "x"}}]),
        json!([{"op": "add", "path": ENTERPRISE, "value": [1]}]),
        json!([{"op": "add", "path": format!("{ENTERPRISE}:manager"), "value": [1, 2]}]),
        json!([{"op": "add", "path": format!("{ENTERPRISE}:manager"), "value": 5}]),
        json!([{"op": "add", "path": "meta.version", "value": "x"}]),
        json!([{"op": "add", "path": "groups", "value": [{"value": "g"}]}]),
        json!([{"op": "remove", "path": "emails[type eq]"}]),
        json!([{"op": "remove", "path": "emails[nope pr].value"}]),
        json!([{"op": "replace", "path": "active", "value": [true]}]),
        json!([{"op": "replace", "path": "x509Certificates", "value": [{"value": "!!"}]}]),
        json!([{"op": "replace", "path": "emails", "value": [{"value": "a", "primary": true}, {"value": "b", "primary": true}]}]),
        json!([{"op": "add", "path": "urn:x:y", "value": {"a": 1}}]),
        json!([{"op": "add", "path": "urn:", "value": 1}]),
        json!([{"op": "add", "path": ":", "value": 1}]),
        json!([{"op": "add", "path": "a..b", "value": 1}]),
        json!([{"op": "add", "path": "emails[]", "value": 1}]),
        json!([{"op": "add", "path": "emails[type eq \"work\"]]", "value": 1}]),
        json!([{"op": "add", "path": 5, "value": 1}]),
        json!([{"op": 5, "path": "title", "value": 1}]),
        json!([{"op": "remove", "path": "userName"}]),
    ];
    for o in &ops {
        let body = serde_json::to_string(&patch_body(o.clone())).unwrap();
        cases.push(("PATCH", u.clone(), Some(body.clone())));
        cases.push(("PATCH", gp.clone(), Some(body)));
    }
    let group_ops: Vec<Value> = vec![
        json!([{"op": "add", "path": "members", "value": "not-a-list"}]),
        json!([{"op": "add", "path": "members", "value": [1, 2]}]),
        json!([{"op": "add", "path": "members", "value": [{"value": ""}]}]),
        json!([{"op": "remove", "path": "members[value eq]"}]),
        json!([{"op": "remove", "path": "members[display co \"x\"]"}]),
        json!([{"op": "remove", "path": "members[type eq \"User\" and value sw \"zz\"]"}]),
        json!([{"op": "remove", "path": "members.value"}]),
        json!([{"op": "replace", "path": "members[value eq \"x\"].value", "value": "y"}]),
        json!([{"op": "add", "path": "members[value eq \"x\"]", "value": {"value": "y"}}]),
        json!([{"op": "replace", "value": {"members": 5}}]),
        json!([{"op": "replace", "value": {"displayName": ""}}]),
        json!([{"op": "replace", "value": {"displayName": 5}}]),
    ];
    for o in &group_ops {
        let body = serde_json::to_string(&patch_body(o.clone())).unwrap();
        cases.push(("PATCH", gp.clone(), Some(body)));
    }
    let mut statuses = Vec::new();
    for (m, p, body) in cases {
        let r = s
            .raw(m, &p, body.clone().map(String::into_bytes), &[])
            .await;
        assert!(
            r.status < 500,
            "{m} {p} {} -> {}: {}",
            body.as_deref()
                .unwrap_or("")
                .chars()
                .take(200)
                .collect::<String>(),
            r.status,
            r.text
        );
        if r.status >= 400 {
            r.assert_scim_error();
        } else {
            r.assert_scim_content_type();
        }
        statuses.push(r.status);
    }
    // The user and group are still there and readable.
    s.get(&u).await.ok();
    s.get(&gp).await.ok();
    assert!(stored_user(&uid).await.is_some());
    assert!(stored_group(&gid).await.is_some());
    // A sanity check that the table exercised errors at all.
    assert!(statuses.iter().filter(|s| **s >= 400).count() > statuses.len() / 2);
    s.delete(&u).await.no_content();
    s.delete(&gp).await.no_content();
}

/// 20 parallel single-member adds and parallel removes of other members on one group:
/// every add is present, every remove gone.
#[tokio::test]
async fn concurrent_member_patches_lose_nothing() {
    let s = scim().await;
    let g = s.new_group("Concurrent Group").await;
    let gid = g["id"].as_str().unwrap().to_string();
    let path = format!("/Groups/{gid}");
    // Members must be users; 35 random ids hit every shard.
    let batch = unique("concurrent");
    let users = bulk_users(&s, &batch, 35).await;
    let to_remove: Vec<String> = users.ids[..10].to_vec();
    let to_add: Vec<String> = users.ids[10..30].to_vec();
    let keep: Vec<String> = users.ids[30..].to_vec();
    let initial: Vec<Value> = to_remove
        .iter()
        .chain(&keep)
        .map(|v| json!({"value": v}))
        .collect();
    s.patch_ops(
        &path,
        json!([{"op": "add", "path": "members", "value": initial}]),
    )
    .await
    .no_content();
    assert_eq!(stored_member_ids(&gid).await.len(), 15);

    let adds = to_add.iter().map(|id| {
        let s = s.clone();
        let path = path.clone();
        let ops = json!([{"op": "Add", "path": "members", "value": [{"$ref": null, "value": id}]}]);
        async move { s.patch_ops(&path, ops).await }
    });
    let removes = to_remove.iter().enumerate().map(|(i, id)| {
        let s = s.clone();
        let path = path.clone();
        // Both Entra remove shapes.
        let ops = if i % 2 == 0 {
            json!([{"op": "Remove", "path": "members", "value": [{"value": id}]}])
        } else {
            json!([{"op": "remove", "path": format!("members[value eq \"{id}\"]")}])
        };
        async move { s.patch_ops(&path, ops).await }
    });
    let (a, r) = futures::future::join(
        futures::future::join_all(adds),
        futures::future::join_all(removes),
    )
    .await;
    for resp in a.iter().chain(&r) {
        resp.no_content();
    }
    let want: BTreeSet<String> = to_add.iter().chain(&keep).cloned().collect();
    assert_eq!(stored_member_ids(&gid).await, want, "shards");
    let got = s.get(&path).await;
    got.ok();
    assert_eq!(member_ids(&got.body), want, "GET");
    // Every write bumped the version exactly once: 1 + initial add + 30.
    assert_eq!(
        got.body["meta"]["version"], "W/\"32\"",
        "{}",
        got.body["meta"]
    );
    // The controller's member count catches up.
    poll_until(
        Duration::from_secs(30),
        "status.memberCount = 25",
        || async {
            let g = stored_group(&gid).await?;
            (g.status?.member_count == 25).then_some(())
        },
    )
    .await;
    s.delete(&path).await.no_content();
    users.delete().await;
}

/// Parallel PATCHes to different attributes of one user lose none.
#[tokio::test]
async fn concurrent_user_patches_lose_nothing() {
    let s = scim().await;
    let id = s.new_user("concurrent-user").await;
    let path = format!("/Users/{id}");
    let attrs: Vec<(String, Value)> = vec![
        ("displayName".into(), json!("Display")),
        ("title".into(), json!("Title")),
        ("nickName".into(), json!("Nick")),
        ("name.givenName".into(), json!("Given")),
        ("name.familyName".into(), json!("Family")),
        ("locale".into(), json!("fr-FR")),
        ("timezone".into(), json!("Europe/Paris")),
        ("preferredLanguage".into(), json!("fr")),
        ("profileUrl".into(), json!("https://example.com/p")),
        ("userType".into(), json!("Employee")),
        (format!("{ENTERPRISE}:employeeNumber"), json!("12")),
        (format!("{ENTERPRISE}:department"), json!("Dept")),
        (format!("{ENTERPRISE}:costCenter"), json!("CC")),
        (
            "emails[type eq \"work\"].value".into(),
            json!("w@example.com"),
        ),
        (
            "phoneNumbers[type eq \"mobile\"].value".into(),
            json!("+1 555"),
        ),
        ("active".into(), json!("False")),
    ];
    let results = futures::future::join_all(attrs.iter().map(|(p, v)| {
        let s = s.clone();
        let path = path.clone();
        let ops = json!([{"op": "Add", "path": p, "value": v}]);
        async move { s.patch_ops(&path, ops).await }
    }))
    .await;
    for r in &results {
        r.ok();
    }
    let got = s.get(&path).await;
    got.ok();
    let u = &got.body;
    assert_eq!(u["displayName"], "Display");
    assert_eq!(u["title"], "Title");
    assert_eq!(u["nickName"], "Nick");
    assert_eq!(
        u["name"],
        json!({"givenName": "Given", "familyName": "Family"})
    );
    assert_eq!(u["locale"], "fr-FR");
    assert_eq!(u["timezone"], "Europe/Paris");
    assert_eq!(u["preferredLanguage"], "fr");
    assert_eq!(u["profileUrl"], "https://example.com/p");
    assert_eq!(u["userType"], "Employee");
    assert_eq!(
        u[ENTERPRISE],
        json!({"employeeNumber": "12", "department": "Dept", "costCenter": "CC"})
    );
    assert_eq!(
        u["emails"],
        json!([{"type": "work", "value": "w@example.com"}])
    );
    assert_eq!(
        u["phoneNumbers"],
        json!([{"type": "mobile", "value": "+1 555"}])
    );
    assert_eq!(u["active"], false);
    assert_eq!(
        u["meta"]["version"],
        format!("W/\"{}\"", attrs.len() + 1),
        "one version per change"
    );
    let stored = stored_user(&id).await.unwrap();
    assert_eq!(stored.spec.active, Some(false));
    assert_eq!(stored.spec.attributes["name"]["familyName"], "Family");
    assert_eq!(stored.spec.attributes[ENTERPRISE]["costCenter"], "CC");
    s.delete(&path).await.no_content();
}
