//! /Users handlers.
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::Value;

use super::filter::{self, Filter};
use super::patch::{apply_patch, normalize_resource, PatchRequest};
use super::projection::{project, validate_sort_by};
use super::request::{ListParams, Projection, Query, ScimJson};
use super::response;
use super::schema::ResourceKind;
use super::server::{if_match, AppState, Who};
use super::ScimError;
use crate::crd::ScimUser;
use crate::store::resource::user_json;

const KIND: ResourceKind = ResourceKind::User;

/// Users that can match `filter`: narrowed through the cache for the lookups Entra and
/// Okta make on every sync (`userName eq`, `externalId eq`, `id eq`), all otherwise.
fn candidates(users: Vec<Arc<ScimUser>>, filter: Option<&Filter>) -> Vec<Arc<ScimUser>> {
    let Some((attr, value)) = filter.and_then(filter::simple_equality) else {
        return users;
    };
    match attr.as_str() {
        "username" => users
            .into_iter()
            .filter(|u| u.spec.user_name.eq_ignore_ascii_case(value))
            .collect(),
        "externalid" => users
            .into_iter()
            .filter(|u| u.spec.external_id.as_deref() == Some(value))
            .collect(),
        "id" => users
            .into_iter()
            .filter(|u| u.metadata.name.as_deref() == Some(value))
            .collect(),
        _ => users,
    }
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
    let base = state.base_url(headers);
    let docs: Vec<Value> = candidates(state.store.users()?, filter.as_ref())
        .iter()
        .map(|u| user_json(u, &base))
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
    let u = state.store.user(&id)?;
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
