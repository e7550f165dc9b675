//! /Users handlers (list and search: `listing`).
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::Value;

use super::listing::Listed;
use super::patch::{apply_patch, normalize_resource, PatchRequest};
use super::projection::project;
use super::request::{Projection, Query, ScimJson};
use super::response;
use super::schema::ResourceKind;
use super::server::{if_match, AppState, Who};
use super::ScimError;
use crate::crd::ScimUser;
use crate::store::index;
use crate::store::resource::{user_json, user_json_fields};
use crate::store::{Probe, Store};

const KIND: ResourceKind = ResourceKind::User;

impl Listed for ScimUser {
    const KIND: ResourceKind = KIND;

    fn probe_for(attr: &str, value: &str) -> Option<Probe> {
        Some(match attr {
            "id" => Probe::Id(value.to_string()),
            // caseExact=false: the index holds lower-cased keys.
            "username" => Probe::Field(index::USER_NAME, value.to_lowercase()),
            "emails" | "emails.value" => Probe::Field(index::USER_EMAIL, value.to_lowercase()),
            // caseExact=true.
            "externalid" => Probe::Field(index::USER_EXTERNAL_ID, value.to_string()),
            _ => return None,
        })
    }

    async fn probed(store: &Store, probes: &[Probe]) -> Result<Vec<Arc<Self>>, ScimError> {
        store.users_probed(probes).await
    }

    fn ordered(store: &Store) -> Result<Vec<Arc<Self>>, ScimError> {
        store.users_ordered()
    }

    fn count(store: &Store) -> Result<usize, ScimError> {
        store.user_count()
    }

    fn page(store: &Store, skip: usize, take: usize) -> Result<Vec<Arc<Self>>, ScimError> {
        store.users_page(skip, take)
    }

    fn fields(&self, _: &AppState, base: &str, wants: &dyn Fn(&str) -> bool) -> Value {
        user_json_fields(self, base, wants)
    }

    fn listed(&self, _: &AppState, base: &str, _: &Projection) -> Value {
        user_json(self, base)
    }
}

/// The response for one user: projected per the query, headers from the full resource.
fn render(
    state: &AppState,
    headers: &HeaderMap,
    q: &Query,
    u: &ScimUser,
    status: StatusCode,
) -> Response {
    let p = Projection::from_query(q);
    let full = user_json(u, &state.base_url(headers));
    let body = project(&full, KIND, &p.attributes, &p.excluded);
    response::resource(status, &body, &full)
}

pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Query,
) -> Result<Response, ScimError> {
    let u = state.store.user(&id).await?;
    Ok(render(&state, &headers, &q, &u, StatusCode::OK))
}

pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    who: Who,
    q: Query,
    ScimJson(body): ScimJson,
) -> Result<Response, ScimError> {
    let attrs = normalize_resource(&body, KIND)?;
    let u = state.store.create_user(attrs).await?;
    who.audit("create", "User", u.metadata.name.as_deref());
    Ok(render(&state, &headers, &q, &u, StatusCode::CREATED))
}

pub async fn replace(
    State(state): State<AppState>,
    headers: HeaderMap,
    who: Who,
    Path(id): Path<String>,
    q: Query,
    ScimJson(body): ScimJson,
) -> Result<Response, ScimError> {
    let attrs = normalize_resource(&body, KIND)?;
    let u = state
        .store
        .update_user(&id, if_match(&headers), |_| Ok(Some(attrs.clone())))
        .await?;
    who.audit("replace", "User", Some(&id));
    Ok(render(&state, &headers, &q, &u, StatusCode::OK))
}

pub async fn patch(
    State(state): State<AppState>,
    headers: HeaderMap,
    who: Who,
    Path(id): Path<String>,
    q: Query,
    ScimJson(body): ScimJson,
) -> Result<Response, ScimError> {
    let ops = PatchRequest::from_json(&body)?;
    let u = state
        .store
        .update_user(&id, if_match(&headers), |current| {
            let mut attrs = current.clone();
            let outcome = apply_patch(&mut attrs, KIND, &ops)?;
            if !outcome.members.is_empty() {
                return Err(ScimError::invalid_path("Users have no members"));
            }
            Ok(outcome.changed.then_some(attrs))
        })
        .await?;
    who.audit("patch", "User", Some(&id));
    Ok(render(&state, &headers, &q, &u, StatusCode::OK))
}

pub async fn delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    who: Who,
    Path(id): Path<String>,
) -> Result<Response, ScimError> {
    state.store.delete_user(&id, if_match(&headers)).await?;
    who.audit("delete", "User", Some(&id));
    let store = state.store.clone();
    tokio::spawn(async move { store.remove_member_everywhere(&id).await });
    Ok(response::no_content(None))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::scim::filter;
    use crate::scim::request::ListParams;
    use axum::http::HeaderMap;
    use serde_json::json;

    async fn search(
        state: &AppState,
        headers: &HeaderMap,
        params: ListParams,
    ) -> Result<Value, ScimError> {
        crate::scim::listing::search::<ScimUser>(state, headers, params).await
    }
    use crate::crd::ScimUser;
    use crate::store::resource::user_spec;
    use crate::store::TestFeed;
    use crate::store::CREATED_ANNOTATION;
    use kube::runtime::watcher::Event;

    pub(crate) fn user(id: &str, created: &str, attrs: Value) -> ScimUser {
        let Value::Object(m) = attrs else { panic!() };
        let mut u = ScimUser::new(id, user_spec(m).unwrap());
        u.metadata.annotations =
            Some([(CREATED_ANNOTATION.to_string(), created.to_string())].into());
        u
    }

    pub(crate) fn state(feed: &TestFeed, max_results: usize) -> AppState {
        AppState {
            store: feed.store.clone(),
            configured_base_url: Some(Arc::from("http://h/scim/v2")),
            max_results,
            max_body_bytes: 1 << 20,
            request_deadline: crate::scim::server::DEFAULT_REQUEST_DEADLINE,
        }
    }

    fn params(q: &[(&str, &str)]) -> ListParams {
        ListParams::from_query(&Query(
            q.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ))
        .unwrap()
    }

    /// What the list answered before the indexes: render every user, filter, sort, page.
    fn reference(state: &AppState, p: &ListParams) -> Value {
        let f = p
            .filter
            .as_deref()
            .map(|f| filter::parse_filter_for(f, KIND).unwrap());
        let docs: Vec<Value> = state
            .store
            .users()
            .unwrap()
            .iter()
            .map(|u| user_json(u, "http://h/scim/v2"))
            .filter(|d| f.as_ref().is_none_or(|f| filter::matches(f, d, KIND)))
            .collect();
        response::list(docs, p, KIND, state.max_results)
    }

    async fn search_q(state: &AppState, q: &[(&str, &str)]) -> Value {
        search(state, &HeaderMap::new(), params(q)).await.unwrap()
    }

    fn mixed_users() -> Vec<ScimUser> {
        let mut v = vec![
            user(
                "u-ann",
                "2024-01-03T00:00:00.000Z",
                json!({"userName": "Ann@Example.com", "externalId": "E-Ann", "active": true,
                       "emails": [{"value": "Ann@Example.com", "type": "work", "primary": true},
                                  {"value": "ann@home.org", "type": "home"}],
                       "name": {"givenName": "Ann", "familyName": "Zed"}}),
            ),
            user(
                "u-bob",
                "2024-01-01T00:00:00.000Z",
                json!({"userName": "bob", "externalId": "e-ann", "active": false,
                       "emails": [{"value": "ann@home.org", "type": "work"}],
                       "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "R&D"}}),
            ),
            user(
                "u-ÄÖ",
                "2024-01-02T00:00:00.000Z",
                json!({"userName": "ÄÖ@x.de", "emails": {"value": "Solo@x.de"}, "displayName": "Umlaut"}),
            ),
            user(
                "u-odd",
                "2024-01-02T00:00:00.000Z",
                json!({"userName": "odd", "emails": [{"value": 5, "type": "work"}, "plain@x.de"]}),
            ),
        ];
        for i in 0..20 {
            v.push(user(
                &format!("u-{i:02}"),
                &format!("2024-02-{:02}T00:00:00.000Z", 20 - i),
                json!({"userName": format!("user{i}"), "externalId": format!("x{i}"),
                       "emails": [{"value": format!("user{i}@example.com"), "type": "work"}]}),
            ));
        }
        v
    }

    #[tokio::test]
    async fn answers_are_those_of_rendering_every_user() {
        let feed = TestFeed::new(mixed_users(), vec![]);
        let st = state(&feed, 7);
        let filters = [
            r#"userName eq "ann@example.COM""#,
            r#"userName eq "äö@X.DE""#,
            r#"externalId eq "e-ann""#,
            r#"externalId eq "E-ANN""#,
            r#"id eq "u-bob""#,
            r#"id eq "U-BOB""#,
            r#"emails[type eq "work"].value eq "ANN@home.org""#,
            r#"emails[type eq "home"].value eq "ann@home.org""#,
            r#"emails.value eq "solo@X.de""#,
            r#"emails eq "plain@x.de""#,
            r#"emails eq 5"#,
            r#"emails[value eq "user3@example.com"]"#,
            r#"userName eq "bob" and active eq false"#,
            r#"userName eq "bob" and active eq true"#,
            r#"userName eq "bob" or externalId eq "x3""#,
            r#"userName eq "bob" or active eq true"#,
            r#"not (userName eq "bob")"#,
            r#"userName sw "user1""#,
            r#"active eq false"#,
            r#"name.familyName eq "zed""#,
            r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department eq "r&d""#,
            r#"meta.created lt "2024-02-10T00:00:00Z""#,
            r#"schemas eq "urn:ietf:params:scim:schemas:core:2.0:User""#,
            r#"displayName pr"#,
        ];
        let pages: [&[(&str, &str)]; 5] = [
            &[],
            &[("startIndex", "3"), ("count", "4")],
            &[("count", "0")],
            &[("startIndex", "100")],
            &[
                ("attributes", "userName"),
                ("startIndex", "2"),
                ("count", "3"),
            ],
        ];
        for page in pages {
            let q: Vec<(&str, &str)> = page.to_vec();
            assert_eq!(
                search_q(&st, &q).await,
                reference(&st, &params(&q)),
                "{q:?}"
            );
            for f in filters {
                let mut q = q.clone();
                q.push(("filter", f));
                let got = search_q(&st, &q).await;
                assert_eq!(got, reference(&st, &params(&q)), "{q:?}");
            }
        }
        // sortBy on unique keys (ties were in cache order before; now in the default order).
        for by in ["userName", "externalId", "meta.created", "emails"] {
            for order in ["ascending", "descending"] {
                let q = [("sortBy", by), ("sortOrder", order), ("count", "50")];
                let got = search_q(&st, &q).await;
                if by == "userName" || by == "emails" {
                    assert_eq!(got, reference(&st, &params(&q)), "{q:?}");
                }
                assert_eq!(got["totalResults"], 24);
            }
        }
        let got = search_q(&st, &[("filter", r#"userName eq "ann@example.com""#)]).await;
        assert_eq!(got["totalResults"], 1);
        assert_eq!(got["Resources"][0]["id"], "u-ann");
    }

    #[tokio::test]
    async fn lookups_follow_updates_deletes_and_relists() {
        let mut feed = TestFeed::new(mixed_users(), vec![]);
        let st = state(&feed, 100);
        let find = |f: &'static str| {
            let st = st.clone();
            async move {
                let r = search_q(&st, &[("filter", f)]).await;
                r["Resources"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d["id"].as_str().unwrap().to_string())
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(find(r#"userName eq "bob""#).await, vec!["u-bob"]);
        // Rename bob, change his email.
        feed.user(Event::Apply(user(
            "u-bob",
            "2024-01-01T00:00:00.000Z",
            json!({"userName": "Robert", "emails": [{"value": "rob@x", "type": "work"}]}),
        )));
        assert!(find(r#"userName eq "bob""#).await.is_empty());
        assert_eq!(find(r#"userName eq "robert""#).await, vec!["u-bob"]);
        assert_eq!(
            find(r#"emails[type eq "work"].value eq "ann@home.org""#).await,
            Vec::<String>::new()
        );
        assert_eq!(
            find(r#"emails[type eq "home"].value eq "ann@home.org""#).await,
            vec!["u-ann"]
        );
        assert!(find(r#"externalId eq "e-ann""#).await.is_empty());
        assert_eq!(find(r#"emails eq "rob@x""#).await, vec!["u-bob"]);
        // The uniqueness check uses the index too (it fails before any API call).
        let taken = |name: &str| {
            let Value::Object(m) = json!({"userName": name}) else {
                panic!()
            };
            m
        };
        let err = st.store.create_user(taken("ROBERT")).await.unwrap_err();
        assert!(format!("{err:?}").contains("already in use"), "{err:?}");
        let err = st.store.create_user(taken("bob")).await.unwrap_err();
        assert!(!format!("{err:?}").contains("already in use"), "{err:?}");
        feed.user(Event::Delete(user(
            "u-ann",
            "x",
            json!({"userName": "whatever"}),
        )));
        assert!(find(r#"userName eq "ann@example.com""#).await.is_empty());
        assert!(find(r#"emails eq "ann@home.org""#).await.is_empty());
        assert_eq!(search_q(&st, &[("count", "0")]).await["totalResults"], 23);
        // A relist replaces everything.
        feed.relist_users(vec![user("n1", "t", json!({"userName": "new"}))]);
        assert!(find(r#"userName eq "robert""#).await.is_empty());
        assert_eq!(find(r#"userName eq "NEW""#).await, vec!["n1"]);
        assert_eq!(search_q(&st, &[]).await["totalResults"], 1);
    }

    /// `cargo test --release --lib -- --ignored --nocapture bench_users`: request cost at
    /// 100,000 users, before (the previous algorithm, reproduced here) and after.
    #[tokio::test]
    #[ignore]
    async fn bench_users_100k() {
        use std::time::Instant;
        let n = 100_000;
        let users: Vec<ScimUser> = (0..n)
            .map(|i| {
                user(
                    &format!("{:08x}-0000-4000-8000-{:012x}", i * 7919 % n, i),
                    &format!("2024-01-01T00:{:02}:{:02}.{:03}Z", i / 60_000 % 60, i / 1000 % 60, i % 1000),
                    json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                           "userName": format!("user{i}@contoso.example"),
                           "externalId": format!("{i:08x}-aaaa-bbbb-cccc-dddddddddddd"),
                           "active": true, "displayName": format!("User {i}"),
                           "name": {"givenName": "User", "familyName": format!("N{i}")},
                           "emails": [{"value": format!("user{i}@contoso.example"), "type": "work", "primary": true}],
                           "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "D", "employeeNumber": format!("{i}")}}),
                )
            })
            .collect();
        let feed = TestFeed::new(users, vec![]);
        let st = state(&feed, 100);
        let old = |q: &[(&str, &str)]| {
            let p = params(q);
            let f = p
                .filter
                .as_deref()
                .map(|f| filter::parse_filter_for(f, KIND).unwrap());
            let all = st.store.users().unwrap();
            // The previous `candidates`: a scan of typed fields for `attr eq`.
            let cands: Vec<Arc<ScimUser>> = match f.as_ref().and_then(filter::simple_equality) {
                Some((a, v)) if a == "username" => all
                    .into_iter()
                    .filter(|u| u.spec.user_name.eq_ignore_ascii_case(v))
                    .collect(),
                Some((a, v)) if a == "externalid" => all
                    .into_iter()
                    .filter(|u| u.spec.external_id.as_deref() == Some(v))
                    .collect(),
                _ => all,
            };
            let docs: Vec<Value> = cands
                .iter()
                .map(|u| user_json(u, "http://h/scim/v2"))
                .filter(|d| f.as_ref().is_none_or(|f| filter::matches(f, d, KIND)))
                .collect();
            response::list(docs, &p, KIND, 100)
        };
        let cases: [(&str, &[(&str, &str)]); 7] = [
            (
                "userName eq",
                &[("filter", r#"userName eq "user77777@contoso.example""#)],
            ),
            (
                "externalId eq",
                &[(
                    "filter",
                    r#"externalId eq "00012345-aaaa-bbbb-cccc-dddddddddddd""#,
                )],
            ),
            (
                "emails[type eq work].value eq",
                &[(
                    "filter",
                    r#"emails[type eq "work"].value eq "user4242@contoso.example""#,
                )],
            ),
            (
                "page startIndex=10001 count=100",
                &[("startIndex", "10001"), ("count", "100")],
            ),
            ("count=0", &[("count", "0")]),
            (
                "scan: userName sw, page 1",
                &[("filter", r#"userName sw "user9999""#)],
            ),
            (
                "scan: active eq true, count=100",
                &[("filter", "active eq true"), ("count", "100")],
            ),
        ];
        for (name, q) in cases {
            let reps_old = if q.iter().any(|(k, _)| *k == "filter") && name.contains(" eq") {
                20
            } else {
                3
            };
            let t = Instant::now();
            let mut a = Value::Null;
            for _ in 0..reps_old {
                a = old(q);
            }
            let before = t.elapsed() / reps_old;
            let reps = 200;
            let t = Instant::now();
            let mut b = Value::Null;
            for _ in 0..reps {
                b = search_q(&st, q).await;
            }
            let after = t.elapsed() / reps;
            assert_eq!(a["totalResults"], b["totalResults"], "{name}");
            assert_eq!(a["Resources"], b["Resources"], "{name}");
            println!(
                "{name:40} before {before:>12.3?}  after {after:>12.3?}  (totalResults {})",
                b["totalResults"]
            );
        }
    }
}
