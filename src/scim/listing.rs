//! List and search (RFC 7644 §3.4.2), one implementation for /Users and /Groups: a
//! resource type says how it is looked up and rendered ([`Listed`]), the paging,
//! filtering and sorting are the same for both.
//!
//! Without filter and sortBy a page costs O(page): the store keeps resources in the
//! default order (created, then id) and counts them. A filter is first narrowed through
//! the store's indexes (the lookups Entra and Okta make on every sync: `userName eq`,
//! `externalId eq`, `displayName eq`, `emails[type eq "work"].value eq`, `id eq`, also
//! inside `and`/`or`), then evaluated on each candidate reduced to the attributes it
//! reads; only the page is rendered in full. sortBy sorts the matches stably from the
//! default order.
use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::Value;

use super::filter::{self, Filter};
use super::projection::{compare_sort_keys, project, sort_key, validate_sort_by};
use super::request::{ListParams, Projection, Query, ScimJson, SortOrder};
use super::response;
use super::schema::ResourceKind;
use super::server::AppState;
use super::ScimError;
use crate::store::{Probe, Store};

/// A resource type as the list endpoints see it.
pub trait Listed: Sized + Send + Sync + 'static {
    const KIND: ResourceKind;

    /// The store index a filter attribute (lower-cased) can be looked up in.
    fn probe_for(attr: &str, value: &str) -> Option<Probe>;
    /// The resources any of `probes` finds, in the default order.
    fn probed(
        store: &Store,
        probes: &[Probe],
    ) -> impl Future<Output = Result<Vec<Arc<Self>>, ScimError>> + Send;
    /// Every resource, in the default order.
    fn ordered(store: &Store) -> Result<Vec<Arc<Self>>, ScimError>;
    fn count(store: &Store) -> Result<usize, ScimError>;
    /// `take` resources of the default order after the first `skip`.
    fn page(store: &Store, skip: usize, take: usize) -> Result<Vec<Arc<Self>>, ScimError>;
    /// The resource reduced to the top-level attributes `wants` accepts (lower-cased
    /// names), for evaluating a filter or a sort key without rendering everything.
    fn fields(&self, state: &AppState, base: &str, wants: &dyn Fn(&str) -> bool) -> Value;
    /// The full resource as a list shows it before projection: attributes that are
    /// costly and not asked for by `projection` (a group's members) may be left out.
    fn listed(&self, state: &AppState, base: &str, projection: &Projection) -> Value;
}

/// Resources that can match `filter`, in the default order: through the indexes when
/// the filter pins an indexed attribute, all otherwise.
async fn candidates<R: Listed>(
    store: &Store,
    filter: Option<&Filter>,
) -> Result<Vec<Arc<R>>, ScimError> {
    let indexed = |attr: &str| R::probe_for(attr, "").is_some();
    match filter.and_then(|f| filter::index_equalities(f, &indexed)) {
        Some(eqs) => {
            let probes: Vec<Probe> = eqs
                .iter()
                .filter_map(|e| R::probe_for(&e.attr, &e.value))
                .collect();
            R::probed(store, &probes).await
        }
        None => R::ordered(store),
    }
}

/// Whether `wanted` (lower-cased top-level attribute names) holds `key`.
fn wants(wanted: &[String], key: &str) -> bool {
    wanted.iter().any(|w| w.eq_ignore_ascii_case(key))
}

/// The top-level attribute (lower-cased) `sortBy` reads.
fn sort_attribute(sort_by: &str) -> Option<String> {
    let p = filter::parse_attr_path_token(sort_by.trim()).ok()?;
    Some(p.schema_urn.unwrap_or(p.attr).to_ascii_lowercase())
}

/// One ListResponse for `params`.
pub async fn search<R: Listed>(
    state: &AppState,
    headers: &HeaderMap,
    params: ListParams,
) -> Result<Value, ScimError> {
    let kind = R::KIND;
    let filter = params
        .filter
        .as_deref()
        .map(|f| filter::parse_filter_for(f, kind))
        .transpose()?;
    if let Some(by) = &params.sort_by {
        validate_sort_by(kind, by)?;
    }
    let base = state.base_url(headers);
    let skip = params.start_index.saturating_sub(1);
    let count = params
        .count
        .unwrap_or(state.max_results)
        .min(state.max_results);
    let p = &params.projection;
    let render = |r: &Arc<R>| project(&r.listed(state, &base, p), kind, &p.attributes, &p.excluded);
    if filter.is_none() && params.sort_by.is_none() {
        let total = R::count(&state.store)?;
        let page = if count == 0 {
            Vec::new()
        } else {
            R::page(&state.store, skip, count)?
        };
        return Ok(response::list_page(
            total,
            &params,
            page.iter().map(render).collect(),
        ));
    }
    let mut matched = candidates::<R>(&state.store, filter.as_ref()).await?;
    if let Some(f) = &filter {
        let wanted = filter::top_level_attributes(f);
        matched
            .retain(|r| filter::matches(f, &r.fields(state, &base, &|k| wants(&wanted, k)), kind));
    }
    if let Some(by) = &params.sort_by {
        let wanted: Vec<String> = sort_attribute(by).into_iter().collect();
        let mut keyed: Vec<_> = matched
            .into_iter()
            .map(|r| {
                let view = r.fields(state, &base, &|k| wants(&wanted, k));
                (sort_key(&view, kind, by), r)
            })
            .collect();
        let desc = params.sort_order == SortOrder::Descending;
        keyed.sort_by(|(a, _), (b, _)| compare_sort_keys(a.as_ref(), b.as_ref(), desc));
        matched = keyed.into_iter().map(|(_, r)| r).collect();
    }
    let page = matched.iter().skip(skip).take(count).map(render).collect();
    Ok(response::list_page(matched.len(), &params, page))
}

/// `GET /Users`, `GET /Groups`.
pub async fn list<R: Listed>(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: Query,
) -> Result<Response, ScimError> {
    let params = ListParams::from_query(&q)?;
    Ok(response::scim(
        StatusCode::OK,
        &search::<R>(&state, &headers, params).await?,
    ))
}

/// `POST /Users/.search`, `POST /Groups/.search`.
pub async fn post_search<R: Listed>(
    State(state): State<AppState>,
    headers: HeaderMap,
    ScimJson(body): ScimJson,
) -> Result<Response, ScimError> {
    let params = ListParams::from_search_body(&body)?;
    Ok(response::scim(
        StatusCode::OK,
        &search::<R>(&state, &headers, params).await?,
    ))
}
