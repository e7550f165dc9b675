//! The SCIM router and server: routes under `/scim/v2`, bearer auth, body limits,
//! metrics, panics turned into SCIM 500s, graceful shutdown.
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, FromRequestParts, MatchedPath, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::error::SCIM_CONTENT_TYPE;
use super::request::{base_url, BodyLimit, ListParams, ScimJson};
use super::schema;
use super::{groups, listing, response, users, ScimError};
use crate::auth::middleware::{require_bearer, AuthState};
use crate::auth::{TokenIdentity, TokenStore, UsageRecorder};
use crate::config::RunConfig;
use crate::crd::{ScimGroup, ScimUser};
use crate::store::{Store, StoreOptions, DEFAULT_SHARD_FILL_BYTES};
use crate::telemetry::{Metrics, Readiness, RequestLabels, RouteLabels};

pub const BASE_PATH: &str = "/scim/v2";
/// The default of `--request-deadline-seconds`.
pub const DEFAULT_REQUEST_DEADLINE: Duration = Duration::from_secs(25);
/// Requests served at once; more wait for a slot (within the request deadline).
const MAX_CONCURRENT_REQUESTS: usize = 512;
/// How long before the request's deadline its store work stops, so that the handler
/// itself answers (and cleans up) rather than being cut off.
const ANSWER_MARGIN: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub configured_base_url: Option<Arc<str>>,
    pub max_results: usize,
    pub max_body_bytes: usize,
    /// Every request is answered within this (see [`deadline`]).
    pub request_deadline: Duration,
}

impl AppState {
    pub fn base_url(&self, headers: &HeaderMap) -> String {
        base_url(self.configured_base_url.as_deref(), headers)
    }
}

/// Who made the request (the token's name), for the audit log.
pub struct Who(pub String);

impl Who {
    /// One audit line per SCIM write: who, what, which object — never the token.
    pub fn audit(&self, action: &str, resource_type: &str, id: Option<&str>) {
        tracing::info!(target: "kube_scim::audit", token = %self.0, action, resource_type, id = id.unwrap_or(""), "SCIM write");
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Who {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Who(parts
            .extensions
            .get::<TokenIdentity>()
            .map(|t| t.name.clone())
            .unwrap_or_else(|| "anonymous".into())))
    }
}

pub fn if_match(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
}

async fn service_provider_config(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let body =
        schema::service_provider_config(&s.base_url(&headers), s.max_results, s.max_body_bytes);
    response::scim(StatusCode::OK, &body)
}

async fn resource_types(State(s): State<AppState>, headers: HeaderMap) -> Response {
    response::scim(
        StatusCode::OK,
        &response::list_all(schema::resource_types(&s.base_url(&headers))),
    )
}

async fn resource_type(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ScimError> {
    schema::resource_type(&s.base_url(&headers), &name)
        .map(|b| response::scim(StatusCode::OK, &b))
        .ok_or_else(|| ScimError::not_found(format!("ResourceType {name} not found")))
}

async fn schemas(State(s): State<AppState>, headers: HeaderMap) -> Response {
    response::scim(
        StatusCode::OK,
        &response::list_all(schema::schemas_list(&s.base_url(&headers))),
    )
}

async fn schema_by_id(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ScimError> {
    schema::schema_document(&s.base_url(&headers), &id)
        .map(|b| response::scim(StatusCode::OK, &b))
        .ok_or_else(|| ScimError::not_found(format!("Schema {id} not found")))
}

/// `POST /.search` across Users and Groups (RFC 7644 §3.4.3).
async fn root_search(
    State(s): State<AppState>,
    headers: HeaderMap,
    ScimJson(body): ScimJson,
) -> Result<Response, ScimError> {
    let params = ListParams::from_search_body(&body)?;
    let mut all = Vec::new();
    let unpaged = ListParams {
        start_index: 1,
        count: Some(usize::MAX),
        ..params.clone()
    };
    for result in [
        listing::search::<ScimUser>(&s, &headers, unpaged.clone()).await,
        listing::search::<ScimGroup>(&s, &headers, unpaged).await,
    ] {
        match result {
            Ok(list) => all.extend(list["Resources"].as_array().cloned().unwrap_or_default()),
            // A filter naming an attribute of one type only matches nothing of the other.
            Err(ScimError::BadRequest { .. }) if params.filter.is_some() => {}
            Err(e) => return Err(e),
        }
    }
    let mut list = response::list_all(Vec::new());
    let total = all.len();
    let count = params.count.unwrap_or(s.max_results).min(s.max_results);
    let page: Vec<Value> = all
        .into_iter()
        .skip(params.start_index - 1)
        .take(count)
        .collect();
    list["totalResults"] = total.into();
    list["startIndex"] = params.start_index.into();
    list["itemsPerPage"] = page.len().into();
    list["Resources"] = Value::Array(page);
    Ok(response::scim(StatusCode::OK, &list))
}

async fn not_found() -> ScimError {
    ScimError::not_found("no such SCIM endpoint")
}

async fn method_not_allowed() -> ScimError {
    ScimError::MethodNotAllowed
}

async fn not_implemented() -> ScimError {
    ScimError::NotImplemented(
        "this server does not support this operation (see /ServiceProviderConfig)".into(),
    )
}

/// Count and time every request by route template, method and status (bounded labels).
async fn track(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    // Extension methods are arbitrary client input: keep the label bounded.
    let method = match req.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => m.to_string(),
        _ => "OTHER".to_string(),
    };
    let start = Instant::now();
    let resp = next.run(req).await;
    metrics
        .scim_request_duration
        .get_or_create(&RouteLabels {
            route: route.clone(),
            method: method.clone(),
        })
        .observe(start.elapsed().as_secs_f64());
    metrics
        .scim_requests
        .get_or_create(&RequestLabels {
            route,
            method,
            status: resp.status().as_u16(),
        })
        .inc();
    resp
}

/// Put the body limit where the body extractor can name it in its 413.
async fn body_limit(State(limit): State<usize>, mut req: Request, next: Next) -> Response {
    req.extensions_mut().insert(BodyLimit(limit));
    next.run(req).await
}

/// Every error answer is a SCIM error: answers made outside the handlers (an extractor
/// rejecting a malformed percent-encoded id, a timeout) get the SCIM error body too.
async fn scim_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_scim = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with(SCIM_CONTENT_TYPE));
    if !(status.is_client_error() || status.is_server_error()) || is_scim {
        return resp;
    }
    let bytes = axum::body::to_bytes(resp.into_body(), 4096)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).trim().to_owned();
    let detail = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    ScimError::from_status(status, detail).into_response()
}

/// Answer every request within `limit` (body read, a wait for a concurrency slot and
/// every API call included), whatever the API server does. The store's calls end
/// `ANSWER_MARGIN` before it, so the handler normally answers the 503 itself; past the
/// limit the request is cut off and answered 503 here. Either way a client gets
/// Retry-After and a SCIM error body, never Entra's own 60 s timeout.
async fn deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    let hard = tokio::time::Instant::now() + limit;
    let soft = hard - ANSWER_MARGIN.min(limit / 10);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    match tokio::time::timeout_at(hard, crate::store::within_deadline(soft, next.run(req))).await {
        Ok(resp) => resp,
        Err(_) => {
            tracing::warn!(%method, path, ?limit, "SCIM request cut off at its deadline");
            ScimError::Unavailable {
                retry_after_secs: 5,
                detail: format!(
                    "the request did not finish within {} s; retry",
                    limit.as_secs()
                ),
            }
            .into_response()
        }
    }
}

fn panic_to_scim(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a SCIM handler panicked");
    ScimError::Internal("internal error".into()).into_response()
}

/// The SCIM router (auth, limits, metrics included) — also what in-process tests drive.
/// It serves `/scim/v2` only: probes and metrics are on their own listener
/// ([`crate::probes`]), which the SCIM Service and Ingress never reach, so anything else
/// here, `/metrics` and `/healthz` included, is a SCIM 404.
pub fn router(
    state: AppState,
    tokens: TokenStore,
    metrics: Arc<Metrics>,
    usage: Option<UsageRecorder>,
) -> Router {
    let limit = state.max_body_bytes;
    let request_deadline = state.request_deadline;
    let api = Router::new()
        .route(
            "/Users",
            get(listing::list::<ScimUser>)
                .post(users::create)
                .fallback(method_not_allowed),
        )
        .route(
            "/Users/.search",
            post(listing::post_search::<ScimUser>).fallback(method_not_allowed),
        )
        .route(
            "/Users/{id}",
            get(users::get)
                .put(users::replace)
                .patch(users::patch)
                .delete(users::delete)
                .fallback(method_not_allowed),
        )
        .route(
            "/Groups",
            get(listing::list::<ScimGroup>)
                .post(groups::create)
                .fallback(method_not_allowed),
        )
        .route(
            "/Groups/.search",
            post(listing::post_search::<ScimGroup>).fallback(method_not_allowed),
        )
        .route(
            "/Groups/{id}",
            get(groups::get)
                .put(groups::replace)
                .patch(groups::patch)
                .delete(groups::delete)
                .fallback(method_not_allowed),
        )
        .route("/.search", post(root_search).fallback(method_not_allowed))
        .route(
            "/ServiceProviderConfig",
            get(service_provider_config).fallback(method_not_allowed),
        )
        .route(
            "/ResourceTypes",
            get(resource_types).fallback(method_not_allowed),
        )
        .route(
            "/ResourceTypes/{name}",
            get(resource_type).fallback(method_not_allowed),
        )
        .route("/Schemas", get(schemas).fallback(method_not_allowed))
        .route(
            "/Schemas/{id}",
            get(schema_by_id).fallback(method_not_allowed),
        )
        .route("/Bulk", axum::routing::any(not_implemented))
        .route("/Me", axum::routing::any(not_implemented))
        .fallback(not_found)
        .with_state(state)
        .layer(middleware::from_fn_with_state(limit, body_limit))
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(
            AuthState {
                tokens,
                metrics: metrics.clone(),
                usage,
            },
            require_bearer,
        ));
    Router::new()
        .nest(BASE_PATH, api)
        .fallback(not_found)
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_to_scim,
        ))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            MAX_CONCURRENT_REQUESTS,
        ))
        // Outside the concurrency limit: the wait for a slot counts too.
        .layer(middleware::from_fn_with_state(request_deadline, deadline))
        .layer(middleware::from_fn(scim_errors))
        .layer(middleware::from_fn_with_state(metrics, track))
}

/// Serve SCIM until `shutdown`.
pub async fn run(
    client: kube::Client,
    config: RunConfig,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let store = Store::start_with(
        client.clone(),
        &config.namespace,
        StoreOptions {
            listing: config.listing(),
            shard_fill_bytes: usize::try_from(config.member_shard_fill_bytes)
                .unwrap_or(DEFAULT_SHARD_FILL_BYTES as usize),
        },
        shutdown.clone(),
    );
    let tokens = TokenStore::start(client.clone(), &config.namespace, shutdown.clone());
    {
        let (tokens, metrics, shutdown) = (tokens.clone(), metrics.clone(), shutdown.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokens.export_expiry(metrics) => {}
            }
        });
    }
    let identity = config
        .controller
        .identity
        .clone()
        .filter(|i| !i.is_empty())
        .unwrap_or_else(crate::controller::leader::default_identity);
    let usage = UsageRecorder::new(client, &config.namespace, identity);
    {
        let (store, tokens, readiness) = (store.clone(), tokens.clone(), readiness.clone());
        tokio::spawn(async move {
            tokens.wait_synced().await;
            store.wait_synced().await;
            // wait_synced also returns when the token store stops without syncing.
            if tokens.is_synced() {
                readiness.scim_synced.store(true, Ordering::Release);
            }
        });
    }
    let state = AppState {
        store,
        configured_base_url: config.base_url.as_deref().map(Arc::from),
        max_results: config.max_results,
        max_body_bytes: config.max_body_bytes,
        request_deadline: Duration::from_secs(config.request_deadline_seconds),
    };
    let app = router(state, tokens, metrics, Some(usage));
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    tracing::info!(addr = %config.listen, "SCIM endpoint listening on {}", BASE_PATH);
    let header_read_timeout = Duration::from_secs(config.header_read_timeout_seconds);
    let request_deadline = Duration::from_secs(config.request_deadline_seconds);
    serve(
        listener,
        app,
        header_read_timeout,
        request_deadline,
        shutdown,
    )
    .await;
    Ok(())
}

/// Accept HTTP/1.1 connections until `shutdown`, then let the requests in flight finish
/// (at most the request deadline). A connection that has not sent a whole request head
/// within `header_read_timeout` — a slowloris, or a keep-alive connection left idle — is
/// closed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    header_read_timeout: Duration,
    request_deadline: Duration,
    shutdown: CancellationToken,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "SCIM accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "SCIM connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(request_deadline, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("SCIM requests still running at shutdown were cut off");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{TokenEntry, TokenHash};
    use crate::store::TestFeed;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    /// A request still running at its deadline is answered 503 with Retry-After and a
    /// SCIM error body right then (Entra gives up after 60 s); its store work ends a
    /// moment before, so that a handler answers for itself when it can.
    #[tokio::test(start_paused = true)]
    async fn a_request_is_answered_by_its_deadline() {
        use axum::routing::get;
        let limit = Duration::from_secs(25);
        let app = Router::new()
            .route(
                "/hang",
                get(|| async {
                    std::future::pending::<()>().await;
                    StatusCode::OK
                }),
            )
            .route(
                "/store",
                get(|| async {
                    // What the store's calls see: the request's time, less the margin.
                    let left = crate::store::request_time_left();
                    (
                        StatusCode::OK,
                        format!("{}", left.map_or(0, |d| d.as_secs())),
                    )
                }),
            )
            .layer(middleware::from_fn_with_state(limit, deadline));
        let get = |path: &'static str| {
            let app = app.clone();
            async move {
                let req = axum::http::Request::get(path).body(Body::empty());
                let resp = app
                    .oneshot(req.expect("request"))
                    .await
                    .expect("infallible");
                let header = |h| {
                    let v = resp.headers().get(h).and_then(|v| v.to_str().ok());
                    v.map(str::to_owned)
                };
                let headers = (
                    header(axum::http::header::RETRY_AFTER),
                    header(axum::http::header::CONTENT_TYPE),
                );
                let status = resp.status();
                let body = resp.into_body().collect().await.expect("body").to_bytes();
                (status, headers, body)
            }
        };
        let start = tokio::time::Instant::now();
        let (status, (retry_after, content_type), body) = get("/hang").await;
        assert_eq!(start.elapsed(), limit);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry_after.as_deref(), Some("5"));
        assert_eq!(content_type.as_deref(), Some(SCIM_CONTENT_TYPE));
        let v: Value = serde_json::from_slice(&body).expect("a SCIM error body");
        assert_eq!(v["status"], "503");

        let (_, _, body) = get("/store").await;
        assert_eq!(&body[..], b"24");
    }

    /// Someone who reaches the SCIM port (the Service behind the Ingress) finds no
    /// metrics and no probes there, with or without a token: only SCIM 404s.
    #[tokio::test]
    async fn the_scim_port_serves_no_metrics_and_no_probes() {
        let feed = TestFeed::new(vec![], vec![]);
        let tokens = TokenStore::from_entries(vec![TokenEntry {
            name: "entra".into(),
            hash: TokenHash::of("kscim_good"),
            expires_at: None,
        }]);
        let metrics = Metrics::new();
        let app = router(
            crate::scim::users::tests::state(&feed, 100),
            tokens,
            metrics.clone(),
            None,
        );
        for path in [
            "/metrics",
            "/healthz",
            "/readyz",
            "/scim/v2/metrics",
            "/scim/v2/../metrics",
        ] {
            for auth in [None, Some("Bearer kscim_good")] {
                let mut req = axum::http::Request::get(path);
                if let Some(a) = auth {
                    req = req.header(axum::http::header::AUTHORIZATION, a);
                }
                let resp = app
                    .clone()
                    .oneshot(req.body(Body::empty()).expect("request"))
                    .await
                    .expect("infallible");
                let status = resp.status();
                let content_type = resp
                    .headers()
                    .get(axum::http::header::CONTENT_TYPE)
                    .cloned();
                let body = resp.into_body().collect().await.expect("body").to_bytes();
                let text = String::from_utf8_lossy(&body);
                // Under /scim/v2 without a token the answer is 401; never metrics text.
                let want = if path.starts_with("/scim/v2") && auth.is_none() {
                    StatusCode::UNAUTHORIZED
                } else {
                    StatusCode::NOT_FOUND
                };
                assert_eq!(status, want, "{path} {auth:?}: {text}");
                assert_eq!(
                    content_type.as_ref().and_then(|v| v.to_str().ok()),
                    Some(SCIM_CONTENT_TYPE),
                    "{path}"
                );
                let v: Value = serde_json::from_slice(&body).expect("a SCIM error body");
                assert_eq!(v["status"], want.as_u16().to_string(), "{path}");
                assert!(!text.contains("kube_scim_"), "{path}: {text}");
            }
        }
    }
}
