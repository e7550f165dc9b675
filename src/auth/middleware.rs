//! The axum middleware guarding the SCIM routes.
//!
//! ```ignore
//! let auth = AuthState { tokens, metrics, usage: None };
//! let scim = Router::new()
//!     .route("/Users", get(list_users))
//!     // ...
//!     .layer(axum::middleware::from_fn_with_state(auth, require_bearer));
//! // in a handler: Extension(who): Extension<TokenIdentity>
//! ```
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use super::store::{AuthFailure, TokenStore};
use super::usage::UsageRecorder;
use crate::scim::error::ScimError;
use crate::telemetry::{CategoryLabels, Metrics};

/// Seconds a client is told to wait while the token store syncs.
pub const NOT_READY_RETRY_AFTER_SECS: u64 = 5;

/// State of [`require_bearer`].
#[derive(Clone)]
pub struct AuthState {
    pub tokens: TokenStore,
    pub metrics: Arc<Metrics>,
    /// Records each token's last use (at most once a minute per token), when set.
    pub usage: Option<UsageRecorder>,
}

/// Authenticate the request's bearer token. On success the request continues with a
/// [`super::TokenIdentity`] in its extensions, inside a span carrying `token = <name>` so
/// every log line of the request names the token. On failure: 401 with the SCIM error
/// body and `WWW-Authenticate: Bearer`, or 503 + `Retry-After` while the token store has
/// not synced (a 401 then would tell Entra its token is wrong, and it is not).
///
/// The header value is never logged, not even on failure: a "malformed" header may be a
/// real token pasted with the wrong scheme.
pub async fn require_bearer(
    State(state): State<AuthState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ScimError> {
    let result = {
        let mut values = req.headers().get_all(AUTHORIZATION).iter();
        match (values.next(), values.next()) {
            (None, _) => Err(AuthFailure::Missing),
            // Two Authorization headers: ambiguous, refuse rather than pick one.
            (Some(_), Some(_)) => Err(AuthFailure::Malformed),
            (Some(v), None) => match v.to_str() {
                Ok(v) => state.tokens.authenticate(Some(v)),
                Err(_) => Err(AuthFailure::Malformed),
            },
        }
    };
    match result {
        Ok(identity) => {
            if let Some(usage) = &state.usage {
                usage.touch(&identity.name);
            }
            let span = tracing::info_span!("scim_auth", token = %identity.name);
            tracing::debug!(parent: &span, method = %req.method(), path = %req.uri().path(), "authenticated");
            req.extensions_mut().insert(identity);
            Ok(next.run(req).instrument(span).await)
        }
        Err(failure) => {
            let category = failure.category();
            state
                .metrics
                .auth_failures
                .get_or_create(&CategoryLabels { category })
                .inc();
            match &failure {
                AuthFailure::Expired { name } => tracing::warn!(
                    reason = category, token = %name, method = %req.method(), path = %req.uri().path(),
                    "rejected SCIM request: token expired"
                ),
                AuthFailure::NotReady => tracing::info!(
                    reason = category, method = %req.method(), path = %req.uri().path(),
                    "deferred SCIM request: token store not synced yet"
                ),
                _ => tracing::warn!(
                    reason = category, method = %req.method(), path = %req.uri().path(),
                    "rejected SCIM request"
                ),
            }
            Err(match failure {
                AuthFailure::NotReady => ScimError::Unavailable {
                    retry_after_secs: NOT_READY_RETRY_AFTER_SECS,
                    detail: "authentication is not ready yet; retry shortly".into(),
                },
                // One answer for every other reason: the client learns nothing about which
                // tokens exist or have expired.
                _ => ScimError::Unauthorized,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::token::{TokenEntry, TokenHash};
    use crate::auth::TokenIdentity;
    use axum::body::Body;
    use axum::http::{header, HeaderValue, StatusCode};
    use axum::routing::get;
    use axum::{Extension, Router};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn app(tokens: TokenStore, metrics: Arc<Metrics>) -> Router {
        Router::new()
            .route(
                "/Users",
                get(|Extension(who): Extension<TokenIdentity>| async move { who.name }),
            )
            .layer(axum::middleware::from_fn_with_state(
                AuthState {
                    tokens,
                    metrics,
                    usage: None,
                },
                require_bearer,
            ))
    }

    fn store() -> TokenStore {
        TokenStore::from_entries(vec![
            TokenEntry {
                name: "entra".into(),
                hash: TokenHash::of("kscim_good"),
                expires_at: None,
            },
            TokenEntry {
                name: "old".into(),
                hash: TokenHash::of("kscim_old"),
                expires_at: Some(chrono::Utc::now() - chrono::TimeDelta::hours(1)),
            },
        ])
    }

    async fn call(app: Router, auth: &[&[u8]]) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        let mut req = axum::http::Request::get("/Users");
        for a in auth {
            req = req.header(
                header::AUTHORIZATION,
                HeaderValue::from_bytes(a).expect("header"),
            );
        }
        let resp = app
            .oneshot(req.body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, headers, body.to_vec())
    }

    fn failures(metrics: &Metrics, category: &'static str) -> u64 {
        metrics
            .auth_failures
            .get_or_create(&CategoryLabels { category })
            .get()
    }

    #[tokio::test]
    async fn a_valid_token_reaches_the_handler_with_its_identity() {
        let metrics = Metrics::new();
        let (status, _, body) = call(app(store(), metrics.clone()), &[b"Bearer kscim_good"]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, b"entra");
        let (status, _, _) = call(app(store(), metrics.clone()), &[b"bearer kscim_good"]).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn failures_get_401_with_scim_body_and_are_counted_by_reason() {
        let metrics = Metrics::new();
        let cases: &[(&[&[u8]], &str)] = &[
            (&[], "missing"),
            (&[b"Basic a2V5OnNlY3JldA=="], "malformed"),
            (&[b"Bearer "], "malformed"),
            (&[b"Bearer \xff\xfe"], "malformed"),
            (&[b"Bearer kscim_good", b"Bearer kscim_good"], "malformed"),
            (&[b"Bearer kscim_wrong"], "unknown"),
            (&[b"Bearer kscim_old"], "expired"),
        ];
        for (auth, category) in cases {
            let before = failures(&metrics, category);
            let (status, headers, body) = call(app(store(), metrics.clone()), auth).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{category}");
            assert_eq!(
                headers[header::WWW_AUTHENTICATE]
                    .to_str()
                    .unwrap()
                    .split(' ')
                    .next(),
                Some("Bearer")
            );
            assert_eq!(
                headers[header::CONTENT_TYPE],
                crate::scim::error::SCIM_CONTENT_TYPE
            );
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body["status"], "401");
            assert_eq!(body["schemas"][0], crate::scim::error::ERROR_SCHEMA);
            // The same answer whatever the reason: nothing about the token leaks back.
            assert!(!body.to_string().contains("kscim_"));
            assert!(!body.to_string().contains("old"));
            assert_eq!(failures(&metrics, category), before + 1, "{category}");
        }
    }

    #[tokio::test]
    async fn an_unsynced_store_answers_503_with_retry_after() {
        let metrics = Metrics::new();
        let (status, headers, body) = call(
            app(TokenStore::never_synced(), metrics.clone()),
            &[b"Bearer kscim_good"],
        )
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers[header::RETRY_AFTER], "5");
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["status"], "503");
        assert_eq!(failures(&metrics, "not_ready"), 1);
        // The metric exposition carries only the bounded category.
        let text = metrics.encode();
        assert!(text.contains("kube_scim_auth_failures_total{category=\"not_ready\"} 1"));
    }
}
