//! /Groups handlers. Members can be 50,000+ entries: they are loaded only when the
//! response or the filter needs them (Entra asks with `excludedAttributes=members`).
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::Value;

use super::listing::Listed;
use super::patch::{apply_patch, normalize_resource, split_members, MemberOp, PatchRequest};
use super::projection::project;
use super::request::{Projection, Query, ScimJson};
use super::response;
use super::schema::ResourceKind;
use super::server::{if_match, AppState, Who};
use super::ScimError;
use crate::crd::ScimGroup;
use crate::store::index;
use crate::store::resource::{group_json, group_json_fields, Members};
use crate::store::{GroupWrite, Probe, Store};

const KIND: ResourceKind = ResourceKind::Group;

impl Listed for ScimGroup {
    const KIND: ResourceKind = KIND;

    fn probe_for(attr: &str, value: &str) -> Option<Probe> {
        Some(match attr {
            "id" => Probe::Id(value.to_string()),
            // caseExact=false: the index holds lower-cased keys.
            "displayname" => Probe::Field(index::GROUP_DISPLAY_NAME, value.to_lowercase()),
            // caseExact=true.
            "externalid" => Probe::Field(index::GROUP_EXTERNAL_ID, value.to_string()),
            _ => return None,
        })
    }

    async fn probed(store: &Store, probes: &[Probe]) -> Result<Vec<Arc<Self>>, ScimError> {
        store.groups_probed(probes).await
    }

    fn ordered(store: &Store) -> Result<Vec<Arc<Self>>, ScimError> {
        store.groups_ordered()
    }

    fn count(store: &Store) -> Result<usize, ScimError> {
        store.group_count()
    }

    fn page(store: &Store, skip: usize, take: usize) -> Result<Vec<Arc<Self>>, ScimError> {
        store.groups_page(skip, take)
    }

    /// Members (up to 50,000 per group) are loaded only when wanted.
    fn fields(&self, state: &AppState, base: &str, wants: &dyn Fn(&str) -> bool) -> Value {
        let members = wants("members").then(|| state.store.group_members(self));
        group_json_fields(self, members.as_ref(), base, wants)
    }

    /// Members are loaded only when the projection keeps them (Entra lists groups with
    /// `excludedAttributes=members`).
    fn listed(&self, state: &AppState, base: &str, projection: &Projection) -> Value {
        let members = projection
            .wants("members")
            .then(|| state.store.group_members(self));
        group_json(self, members.as_ref(), base)
    }
}

/// The response for one group: projected per the query (members loaded only when
/// wanted), headers from the full resource.
fn render(
    state: &AppState,
    headers: &HeaderMap,
    q: &Query,
    g: &ScimGroup,
    status: StatusCode,
) -> Response {
    let members = Projection::from_query(q)
        .wants("members")
        .then(|| state.store.group_members(g));
    render_with(state, headers, q, g, members.as_ref(), status)
}

/// [`render`] with the members given (or None when not wanted).
fn render_with(
    state: &AppState,
    headers: &HeaderMap,
    q: &Query,
    g: &ScimGroup,
    members: Option<&Members>,
    status: StatusCode,
) -> Response {
    let p = Projection::from_query(q);
    let full = group_json(g, members, &state.base_url(headers));
    let body = project(&full, KIND, &p.attributes, &p.excluded);
    response::resource(status, &body, &full)
}

pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Query,
) -> Result<Response, ScimError> {
    let with_members = Projection::from_query(&q).wants("members");
    let (g, members) = state.store.group_read(&id, with_members).await?;
    Ok(render_with(
        &state,
        &headers,
        &q,
        &g,
        members.as_ref(),
        StatusCode::OK,
    ))
}

pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    who: Who,
    q: Query,
    ScimJson(body): ScimJson,
) -> Result<Response, ScimError> {
    let (attrs, members) = split_members(normalize_resource(&body, KIND)?)?;
    let g = state.store.create_group(attrs, members).await?;
    who.audit("create", "Group", g.metadata.name.as_deref());
    Ok(render(&state, &headers, &q, &g, StatusCode::CREATED))
}

/// PUT replaces the attributes; `members` when given replaces the membership. A PUT
/// without `members` keeps them: a rename must never silently revoke everyone's access.
pub async fn replace(
    State(state): State<AppState>,
    headers: HeaderMap,
    who: Who,
    Path(id): Path<String>,
    q: Query,
    ScimJson(body): ScimJson,
) -> Result<Response, ScimError> {
    let (attrs, members) = split_members(normalize_resource(&body, KIND)?)?;
    let member_ops: Vec<MemberOp> = members
        .map(|m| vec![MemberOp::ReplaceAll(m)])
        .unwrap_or_default();
    let g = state
        .store
        .update_group(&id, if_match(&headers), |_| {
            Ok(GroupWrite {
                attrs: Some(attrs.clone()),
                members: member_ops.clone(),
            })
        })
        .await?;
    who.audit("replace", "Group", Some(&id));
    Ok(render(&state, &headers, &q, &g, StatusCode::OK))
}

/// PATCH answers 204 (what Entra expects), or 200 with the resource when the client asks
/// for attributes.
pub async fn patch(
    State(state): State<AppState>,
    headers: HeaderMap,
    who: Who,
    Path(id): Path<String>,
    q: Query,
    ScimJson(body): ScimJson,
) -> Result<Response, ScimError> {
    let ops = PatchRequest::from_json(&body)?;
    let g = state
        .store
        .update_group(&id, if_match(&headers), |current| {
            let mut attrs = current.clone();
            let outcome = apply_patch(&mut attrs, KIND, &ops)?;
            Ok(GroupWrite {
                attrs: outcome.changed.then_some(attrs),
                members: outcome.members,
            })
        })
        .await?;
    who.audit("patch", "Group", Some(&id));
    if Projection::from_query(&q).is_empty() {
        let etag = crate::store::ResourceMeta::of(&g.metadata).etag();
        Ok(response::no_content(Some(&etag)))
    } else {
        Ok(render(&state, &headers, &q, &g, StatusCode::OK))
    }
}

pub async fn delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    who: Who,
    Path(id): Path<String>,
) -> Result<Response, ScimError> {
    state.store.delete_group(&id, if_match(&headers)).await?;
    who.audit("delete", "Group", Some(&id));
    Ok(response::no_content(None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scim::filter;
    use crate::scim::request::ListParams;
    use axum::http::HeaderMap;

    async fn search(
        state: &AppState,
        headers: &HeaderMap,
        params: ListParams,
    ) -> Result<Value, ScimError> {
        crate::scim::listing::search::<ScimGroup>(state, headers, params).await
    }
    use crate::crd::Member;
    use crate::scim::users::tests::state;
    use crate::store::resource::group_spec;
    use crate::store::{TestFeed, CREATED_ANNOTATION};
    use kube::runtime::watcher::Event;
    use serde_json::json;

    fn group(id: &str, created: &str, attrs: Value, members: &[&str]) -> ScimGroup {
        let Value::Object(m) = attrs else { panic!() };
        let members = members
            .iter()
            .map(|v| Member {
                value: v.to_string(),
                kind: None,
            })
            .collect();
        let mut g = ScimGroup::new(id, group_spec(m, members, false).unwrap());
        g.metadata.annotations =
            Some([(CREATED_ANNOTATION.to_string(), created.to_string())].into());
        g
    }

    fn params(q: &[(&str, &str)]) -> ListParams {
        let q = Query(
            q.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        ListParams::from_query(&q).unwrap()
    }

    /// The previous algorithm: render every group (with members), filter, sort, page.
    fn reference(state: &AppState, p: &ListParams) -> Value {
        let f = p
            .filter
            .as_deref()
            .map(|f| filter::parse_filter_for(f, KIND).unwrap());
        let docs: Vec<Value> = state
            .store
            .groups()
            .unwrap()
            .iter()
            .map(|g| group_json(g, Some(&state.store.group_members(g)), "http://h/scim/v2"))
            .filter(|d| f.as_ref().is_none_or(|f| filter::matches(f, d, KIND)))
            .collect();
        response::list(docs, p, KIND, state.max_results)
    }

    #[tokio::test]
    async fn answers_are_those_of_rendering_every_group() {
        let mut groups = vec![
            group(
                "g-a",
                "2024-01-02",
                json!({"displayName": "Admins", "externalId": "EA"}),
                &["u1", "u2"],
            ),
            group(
                "g-b",
                "2024-01-01",
                json!({"displayName": "Devs", "externalId": "ea"}),
                &["u2"],
            ),
        ];
        for i in 0..12 {
            groups.push(group(
                &format!("g-{i:02}"),
                &format!("2024-02-{:02}", 20 - i),
                json!({"displayName": format!("Team {i}"), "externalId": format!("x{i}")}),
                &[],
            ));
        }
        let mut feed = TestFeed::new(vec![], groups);
        let st = state(&feed, 5);
        let filters = [
            r#"displayName eq "ADMINS""#,
            r#"externalId eq "ea""#,
            r#"id eq "g-a" and members[value eq "u2"]"#,
            r#"id eq "g-b" and members[value eq "u1"]"#,
            r#"displayName sw "team 1""#,
            r#"members eq "u2""#,
            r#"displayName eq "Devs" or externalId eq "x3""#,
        ];
        let pages: [&[(&str, &str)]; 4] = [
            &[],
            &[
                ("excludedAttributes", "members"),
                ("startIndex", "3"),
                ("count", "4"),
            ],
            &[("count", "0")],
            &[("sortBy", "displayName"), ("count", "20")],
        ];
        for page in pages {
            let q: Vec<(&str, &str)> = page.to_vec();
            let got = search(&st, &HeaderMap::new(), params(&q)).await.unwrap();
            assert_eq!(got, reference(&st, &params(&q)), "{q:?}");
            for f in filters {
                let mut q = q.clone();
                q.push(("filter", f));
                let got = search(&st, &HeaderMap::new(), params(&q)).await.unwrap();
                assert_eq!(got, reference(&st, &params(&q)), "{q:?}");
            }
        }
        // Renames move the displayName key; the uniqueness check sees it.
        feed.group(Event::Apply(group(
            "g-a",
            "2024-01-02",
            json!({"displayName": "Ops"}),
            &[],
        )));
        let q = [("filter", r#"displayName eq "admins""#)];
        let got = search(&st, &HeaderMap::new(), params(&q)).await.unwrap();
        assert_eq!(got["totalResults"], 0);
        let Value::Object(attrs) = json!({"displayName": "OPS"}) else {
            panic!()
        };
        let err = st.store.create_group(attrs, None).await.unwrap_err();
        assert!(format!("{err:?}").contains("already in use"), "{err:?}");
    }
}
