//! What a SCIM request carries, parsed once: the JSON body, list/search parameters,
//! the base URL for `meta.location`. Every parse failure is a SCIM 4xx.
use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use futures::StreamExt;
use serde_json::Value;

use super::error::ScimError;
use super::projection::parse_attr_list;

/// A JSON request body. Malformed JSON is `invalidSyntax`; an oversize body is 413.
pub struct ScimJson(pub Value);

/// How much of an oversize body is read and discarded before answering 413, so the
/// client (still sending) reads the answer instead of a connection reset.
const OVERSIZE_DRAIN_BYTES: usize = 64 * 1024 * 1024;
const OVERSIZE_DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// Read a body of at most `limit` bytes. `Ok(None)` when it is larger; the rest of it is
/// then drained (bounded in bytes and time) before the caller answers.
async fn read_limited(body: Body, limit: usize) -> Result<Option<Vec<u8>>, ScimError> {
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ScimError::invalid_syntax(format!("could not read the request body: {e}"))
        })?;
        if buf.len() + chunk.len() > limit {
            drop(buf);
            let drain = async {
                let mut drained = chunk.len();
                while let Some(Ok(c)) = stream.next().await {
                    drained += c.len();
                    if drained > OVERSIZE_DRAIN_BYTES {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(OVERSIZE_DRAIN_TIME, drain).await;
            return Ok(None);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Some(buf))
}

impl<S: Send + Sync> FromRequest<S> for ScimJson {
    type Rejection = ScimError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map(|l| l.0)
            .unwrap_or(usize::MAX);
        let bytes = read_limited(req.into_body(), limit)
            .await?
            .ok_or(ScimError::PayloadTooLarge { limit })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ScimError::invalid_syntax("the request body is empty"));
        }
        serde_json::from_slice(&bytes).map(ScimJson).map_err(|e| {
            ScimError::invalid_syntax(format!("the request body is not valid JSON: {e}"))
        })
    }
}

/// The configured body limit, put into request extensions so errors can name it.
#[derive(Clone, Copy)]
pub struct BodyLimit(pub usize);

/// Query parameters, keys matched case-insensitively (Entra's `aadOptscim062020` and
/// anything else unknown are ignored).
#[derive(Debug, Default, Clone)]
pub struct Query(pub Vec<(String, String)>);

impl Query {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Query {
    type Rejection = ScimError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let raw = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str::<Vec<(String, String)>>(raw)
            .map(Query)
            .map_err(|e| ScimError::invalid_syntax(format!("malformed query string: {e}")))
    }
}

/// `attributes` / `excludedAttributes`.
#[derive(Debug, Default, Clone)]
pub struct Projection {
    pub attributes: Vec<String>,
    pub excluded: Vec<String>,
}

impl Projection {
    pub fn from_query(q: &Query) -> Projection {
        Projection {
            attributes: q.get("attributes").map(parse_attr_list).unwrap_or_default(),
            excluded: q
                .get("excludedAttributes")
                .map(parse_attr_list)
                .unwrap_or_default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.attributes.is_empty() && self.excluded.is_empty()
    }

    /// Whether the response includes attribute `name` (e.g. `members`, which is costly).
    pub fn wants(&self, name: &str) -> bool {
        let mentions = |list: &[String]| {
            list.iter().any(|a| {
                let a = a.rsplit(':').next().unwrap_or(a);
                // `get`: a client's attribute name may split a UTF-8 character there.
                a.eq_ignore_ascii_case(name)
                    || a.get(..name.len())
                        .is_some_and(|p| p.eq_ignore_ascii_case(name))
                        && a.as_bytes().get(name.len()) == Some(&b'.')
            })
        };
        if mentions(&self.excluded) && !self.excluded.iter().any(|a| a.contains('.')) {
            return false;
        }
        self.attributes.is_empty() || mentions(&self.attributes)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortOrder {
    Ascending,
    Descending,
}

/// List / search parameters (RFC 7644 §3.4.2), from a query string or a SearchRequest.
#[derive(Debug, Clone)]
pub struct ListParams {
    pub filter: Option<String>,
    pub sort_by: Option<String>,
    pub sort_order: SortOrder,
    /// 1-based.
    pub start_index: usize,
    pub count: Option<usize>,
    pub projection: Projection,
}

fn parse_int(name: &str, v: &str) -> Result<i64, ScimError> {
    v.trim()
        .parse::<i64>()
        .map_err(|_| ScimError::invalid_value(format!("{name} must be an integer, not {v:?}")))
}

fn sort_order(v: Option<&str>) -> Result<SortOrder, ScimError> {
    match v.map(str::trim) {
        None | Some("") => Ok(SortOrder::Ascending),
        Some(s) if s.eq_ignore_ascii_case("ascending") => Ok(SortOrder::Ascending),
        Some(s) if s.eq_ignore_ascii_case("descending") => Ok(SortOrder::Descending),
        Some(s) => Err(ScimError::invalid_value(format!(
            "sortOrder must be ascending or descending, not {s:?}"
        ))),
    }
}

impl ListParams {
    pub fn from_query(q: &Query) -> Result<ListParams, ScimError> {
        let start = q
            .get("startIndex")
            .map(|v| parse_int("startIndex", v))
            .transpose()?;
        let count = q.get("count").map(|v| parse_int("count", v)).transpose()?;
        Ok(ListParams {
            filter: q
                .get("filter")
                .map(str::to_string)
                .filter(|f| !f.trim().is_empty()),
            sort_by: q
                .get("sortBy")
                .map(str::to_string)
                .filter(|s| !s.trim().is_empty()),
            sort_order: sort_order(q.get("sortOrder"))?,
            // RFC 7644 §3.4.2.4: startIndex < 1 is interpreted as 1; count < 0 as 0.
            start_index: start.unwrap_or(1).max(1) as usize,
            count: count.map(|c| c.max(0) as usize),
            projection: Projection::from_query(q),
        })
    }

    /// A `POST .search` body (SearchRequest).
    pub fn from_search_body(body: &Value) -> Result<ListParams, ScimError> {
        let obj = body
            .as_object()
            .ok_or_else(|| ScimError::invalid_syntax("a SearchRequest must be a JSON object"))?;
        let get = |k: &str| {
            obj.iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(k))
                .map(|(_, v)| v)
        };
        let string = |k: &str| -> Result<Option<String>, ScimError> {
            match get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(ScimError::invalid_value(format!("{k} must be a string"))),
            }
        };
        let int = |k: &str| -> Result<Option<i64>, ScimError> {
            match get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Number(n)) => n
                    .as_i64()
                    .map(Some)
                    .ok_or_else(|| ScimError::invalid_value(format!("{k} must be an integer"))),
                Some(Value::String(s)) => parse_int(k, s).map(Some),
                Some(_) => Err(ScimError::invalid_value(format!("{k} must be an integer"))),
            }
        };
        let list = |k: &str| -> Result<Vec<String>, ScimError> {
            match get(k) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::String(s)) => Ok(parse_attr_list(s)),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|v| {
                        v.as_str().map(str::to_string).ok_or_else(|| {
                            ScimError::invalid_value(format!("{k} must list strings"))
                        })
                    })
                    .collect(),
                Some(_) => Err(ScimError::invalid_value(format!(
                    "{k} must be an array of strings"
                ))),
            }
        };
        let order = string("sortOrder")?;
        Ok(ListParams {
            filter: string("filter")?.filter(|f| !f.trim().is_empty()),
            sort_by: string("sortBy")?.filter(|s| !s.trim().is_empty()),
            sort_order: sort_order(order.as_deref())?,
            start_index: int("startIndex")?.unwrap_or(1).max(1) as usize,
            count: int("count")?.map(|c| c.max(0) as usize),
            projection: Projection {
                attributes: list("attributes")?,
                excluded: list("excludedAttributes")?,
            },
        })
    }
}

/// The base URL of the SCIM API (`.../scim/v2`) for `meta.location` and `Location`.
pub fn base_url(configured: Option<&str>, headers: &HeaderMap) -> String {
    if let Some(b) = configured {
        return b.trim_end_matches('/').to_string();
    }
    let first = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let proto = first("x-forwarded-proto")
        .filter(|p| p == "http" || p == "https")
        .unwrap_or_else(|| "http".into());
    let host = first("x-forwarded-host")
        .or_else(|| first(header::HOST.as_str()))
        .filter(|h| {
            h.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c))
        })
        .unwrap_or_else(|| "localhost".into());
    format!("{proto}://{host}/scim/v2")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn q(pairs: &[(&str, &str)]) -> Query {
        Query(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_drained_and_refused() {
        let ok = read_limited(Body::from("{\"a\":1}"), 7).await.unwrap();
        assert_eq!(ok.as_deref(), Some(&b"{\"a\":1}"[..]));
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            (0..10).map(|_| Ok(vec![b'x'; 1000])).collect();
        let body = Body::from_stream(futures::stream::iter(chunks));
        assert_eq!(read_limited(body, 2500).await.unwrap(), None);
        assert!(read_limited(Body::from(vec![b' '; 10]), 10)
            .await
            .unwrap()
            .is_some());
    }

    #[test]
    fn list_params_follow_rfc_defaults() {
        let p = ListParams::from_query(&q(&[
            ("StartIndex", "0"),
            ("count", "-3"),
            ("aadOptscim062020", ""),
        ]))
        .unwrap();
        assert_eq!(p.start_index, 1);
        assert_eq!(p.count, Some(0));
        assert!(ListParams::from_query(&q(&[("count", "ten")])).is_err());
        assert!(ListParams::from_query(&q(&[("sortOrder", "sideways")])).is_err());
    }

    #[test]
    fn search_body_parses() {
        let p = ListParams::from_search_body(&json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
            "filter": "userName eq \"a\"", "startIndex": 2, "count": 5,
            "attributes": ["userName"], "sortOrder": "descending"
        }))
        .unwrap();
        assert_eq!(p.start_index, 2);
        assert_eq!(p.count, Some(5));
        assert_eq!(p.sort_order, SortOrder::Descending);
        assert_eq!(p.projection.attributes, vec!["userName"]);
        assert!(ListParams::from_search_body(&json!({"count": "x"})).is_err());
        assert!(ListParams::from_search_body(&json!([])).is_err());
    }

    #[test]
    fn projection_knows_when_members_are_wanted() {
        let p = |a: &str, e: &str| Projection {
            attributes: parse_attr_list(a),
            excluded: parse_attr_list(e),
        };
        assert!(p("", "").wants("members"));
        assert!(!p("", "members").wants("members"));
        assert!(!p("displayName", "").wants("members"));
        assert!(p("displayName,members.value", "").wants("members"));
        assert!(p("urn:ietf:params:scim:schemas:core:2.0:Group:members", "").wants("members"));
    }

    #[test]
    fn base_url_prefers_configuration_then_forwarded_headers() {
        let mut h = HeaderMap::new();
        h.insert("host", "scim.example.com".parse().unwrap());
        assert_eq!(base_url(None, &h), "http://scim.example.com/scim/v2");
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        assert_eq!(base_url(None, &h), "https://scim.example.com/scim/v2");
        assert_eq!(
            base_url(Some("https://x/scim/v2/"), &h),
            "https://x/scim/v2"
        );
        h.insert("host", "evil\"host".parse().unwrap());
        h.remove("x-forwarded-proto");
        assert_eq!(base_url(None, &h), "http://localhost/scim/v2");
    }
}
