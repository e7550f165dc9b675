//! /Groups handlers. Members can be 50,000+ entries: they are loaded only when the
//! response or the filter needs them (Entra asks with `excludedAttributes=members`).
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::Value;

use super::filter::{self, Filter};
use super::patch::{apply_patch, normalize_resource, split_members, MemberOp, PatchRequest};
use super::projection::{project, validate_sort_by};
use super::request::{ListParams, Projection, Query, ScimJson};
use super::response;
use super::schema::ResourceKind;
use super::server::{if_match, AppState, Who};
use super::ScimError;
use crate::crd::ScimGroup;
use crate::store::resource::group_json;
use crate::store::GroupWrite;

const KIND: ResourceKind = ResourceKind::Group;

fn candidates(groups: Vec<Arc<ScimGroup>>, filter: Option<&Filter>) -> Vec<Arc<ScimGroup>> {
    let Some((attr, value)) = filter.and_then(filter::simple_equality) else {
        return groups;
    };
    match attr.as_str() {
        "displayname" => groups
            .into_iter()
            .filter(|g| g.spec.display_name.eq_ignore_ascii_case(value))
            .collect(),
        "externalid" => groups
            .into_iter()
            .filter(|g| g.spec.external_id.as_deref() == Some(value))
            .collect(),
        "id" => groups
            .into_iter()
            .filter(|g| g.metadata.name.as_deref() == Some(value))
            .collect(),
        _ => groups,
    }
}

fn doc(state: &AppState, base: &str, g: &ScimGroup, with_members: bool) -> Value {
    let members = with_members.then(|| state.store.group_members(g));
    group_json(g, members.as_ref(), base)
}

pub async fn search(
    state: &AppState,
    headers: &HeaderMap,
    params: ListParams,
) -> Result<Value, ScimError> {
    let filter = params
        .filter
        .as_deref()
        .map(|f| filter::parse_filter_for(f, KIND))
        .transpose()?;
    if let Some(by) = &params.sort_by {
        validate_sort_by(KIND, by)?;
    }
    let needs_members = params.projection.wants("members")
        || filter
            .as_ref()
            .is_some_and(|f| filter::mentions_attribute(f, "members"))
        || params
            .sort_by
            .as_deref()
            .is_some_and(|s| s.to_ascii_lowercase().contains("members"));
    let base = state.base_url(headers);
    let docs: Vec<Value> = candidates(state.store.groups()?, filter.as_ref())
        .iter()
        .map(|g| doc(state, &base, g, needs_members))
        .filter(|d| filter.as_ref().is_none_or(|f| filter::matches(f, d, KIND)))
        .collect();
    Ok(response::list(docs, &params, KIND, state.max_results))
}

pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: Query,
) -> Result<Response, ScimError> {
    let params = ListParams::from_query(&q)?;
    Ok(response::scim(
        StatusCode::OK,
        &search(&state, &headers, params).await?,
    ))
}

pub async fn post_search(
    State(state): State<AppState>,
    headers: HeaderMap,
    ScimJson(body): ScimJson,
) -> Result<Response, ScimError> {
    let params = ListParams::from_search_body(&body)?;
    Ok(response::scim(
        StatusCode::OK,
        &search(&state, &headers, params).await?,
    ))
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
    let p = Projection::from_query(q);
    let full = doc(state, &state.base_url(headers), g, p.wants("members"));
    let body = project(&full, KIND, &p.attributes, &p.excluded);
    response::resource(status, &body, &full)
}

pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Query,
) -> Result<Response, ScimError> {
    let g = state.store.group(&id)?;
    Ok(render(&state, &headers, &q, &g, StatusCode::OK))
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
