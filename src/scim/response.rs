//! SCIM responses: `application/scim+json`, ETag and Location headers, ListResponse.
use std::cmp::Ordering;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::error::SCIM_CONTENT_TYPE;
use super::projection::{compare_sort_keys, project, sort_key};
use super::request::{ListParams, SortOrder};
use super::schema::{ResourceKind, LIST_RESPONSE_SCHEMA};

pub fn scim(status: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = (status, bytes).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(SCIM_CONTENT_TYPE),
    );
    resp
}

/// A single resource `body` — possibly projected by `attributes`/`excludedAttributes` —
/// with the ETag (`meta.version`) and, for 201, the Location of the `full` resource: a
/// projection that leaves out `meta` must not take the headers with it.
pub fn resource(status: StatusCode, body: &Value, full: &Value) -> Response {
    let mut resp = scim(status, body);
    if let Some(v) = full
        .pointer("/meta/version")
        .and_then(Value::as_str)
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        resp.headers_mut().insert(header::ETAG, v);
    }
    if status == StatusCode::CREATED {
        if let Some(l) = full
            .pointer("/meta/location")
            .and_then(Value::as_str)
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            resp.headers_mut().insert(header::LOCATION, l);
        }
    }
    resp
}

/// 204 with the new ETag.
pub fn no_content(etag: Option<&str>) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(SCIM_CONTENT_TYPE),
    );
    if let Some(v) = etag.and_then(|v| HeaderValue::from_str(v).ok()) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

/// Sort, paginate and project matched resources into a ListResponse (RFC 7644 §3.4.2).
/// Without `sortBy` the order is creation time then id, so pages are stable.
pub fn list(
    mut docs: Vec<Value>,
    params: &ListParams,
    kind: ResourceKind,
    max_results: usize,
) -> Value {
    match &params.sort_by {
        Some(by) => {
            let desc = params.sort_order == SortOrder::Descending;
            let mut keyed: Vec<_> = docs
                .into_iter()
                .map(|d| (sort_key(&d, kind, by), d))
                .collect();
            keyed.sort_by(|(a, _), (b, _)| compare_sort_keys(a.as_ref(), b.as_ref(), desc));
            docs = keyed.into_iter().map(|(_, d)| d).collect();
        }
        None => docs.sort_by(default_order),
    }
    let total = docs.len();
    let count = params.count.unwrap_or(max_results).min(max_results);
    let page: Vec<Value> = docs
        .into_iter()
        .skip(params.start_index.saturating_sub(1))
        .take(count)
        .map(|d| {
            project(
                &d,
                kind,
                &params.projection.attributes,
                &params.projection.excluded,
            )
        })
        .collect();
    list_page(total, params, page)
}

/// A ListResponse of `page` (already sorted, sliced and projected) out of `total` matches.
pub fn list_page(total: usize, params: &ListParams, page: Vec<Value>) -> Value {
    json!({
        "schemas": [LIST_RESPONSE_SCHEMA],
        "totalResults": total,
        "startIndex": params.start_index,
        "itemsPerPage": page.len(),
        "Resources": page,
    })
}

fn default_order(a: &Value, b: &Value) -> Ordering {
    let created = |v: &Value| {
        v.pointer("/meta/created")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let id = |v: &Value| {
        v.get("id")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    created(a).cmp(&created(b)).then_with(|| id(a).cmp(&id(b)))
}

/// A plain ListResponse of every item (discovery endpoints).
pub fn list_all(items: Vec<Value>) -> Value {
    json!({
        "schemas": [LIST_RESPONSE_SCHEMA],
        "totalResults": items.len(),
        "startIndex": 1,
        "itemsPerPage": items.len(),
        "Resources": items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scim::request::Projection;

    fn params(start: usize, count: Option<usize>) -> ListParams {
        ListParams {
            filter: None,
            sort_by: None,
            sort_order: SortOrder::Ascending,
            start_index: start,
            count,
            projection: Projection::default(),
        }
    }

    #[test]
    fn resource_headers_come_from_the_full_document() {
        let full = json!({"id": "u1", "userName": "a",
                          "meta": {"version": "W/\"3\"", "location": "http://h/scim/v2/Users/u1"}});
        let projected = json!({"id": "u1", "userName": "a"});
        let r = resource(StatusCode::CREATED, &projected, &full);
        assert_eq!(r.headers()[header::ETAG], "W/\"3\"");
        assert_eq!(r.headers()[header::LOCATION], "http://h/scim/v2/Users/u1");
        let r = resource(StatusCode::OK, &projected, &full);
        assert_eq!(r.headers()[header::ETAG], "W/\"3\"");
        assert!(r.headers().get(header::LOCATION).is_none());
    }

    #[test]
    fn pagination_is_one_based_and_count_zero_gives_only_totals() {
        let docs: Vec<Value> = (0..5).map(|i| json!({"id": format!("u{i}"), "meta": {"created": format!("2024-01-0{}", i + 1)}})).collect();
        let r = list(docs.clone(), &params(2, Some(2)), ResourceKind::User, 100);
        assert_eq!(r["totalResults"], 5);
        assert_eq!(r["itemsPerPage"], 2);
        assert_eq!(r["Resources"][0]["id"], "u1");
        let r = list(docs.clone(), &params(1, Some(0)), ResourceKind::User, 100);
        assert_eq!(r["totalResults"], 5);
        assert_eq!(r["Resources"], json!([]));
        let r = list(docs, &params(1, None), ResourceKind::User, 3);
        assert_eq!(r["itemsPerPage"], 3, "maxResults caps a page");
    }
}
