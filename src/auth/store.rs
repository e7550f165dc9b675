//! Token storage: one Kubernetes Secret per token in the operator's namespace, holding
//! only the SHA-256 of the token, and a [`TokenStore`] that keeps a parsed, in-memory
//! copy of them current through a kube-runtime reflector.
//!
//! Secret layout (what `kube-scim token create` writes; hand-made or GitOps Secrets work
//! as long as they carry the selector label and a `sha256` data key):
//! ```yaml
//! apiVersion: v1
//! kind: Secret
//! type: scim.kubescim.io/token          # any type is accepted when reading, e.g. Opaque
//! metadata:
//!   name: kube-scim-token-<name>
//!   labels:
//!     scim.kubescim.io/token: "true"    # the selector: only this label is required
//!     scim.kubescim.io/token-name: <name>
//!     app.kubernetes.io/managed-by: kube-scim
//!   annotations:
//!     scim.kubescim.io/expires-at: "2026-01-01T00:00:00Z"   # optional, RFC 3339
//! data:
//!   sha256: <base64 of 64 hex digits>
//! ```
//! The selector deliberately does not require `app.kubernetes.io/managed-by: kube-scim`:
//! a Secret rendered by Helm or a GitOps tool gets that label overwritten (e.g. `Helm`),
//! and such a Secret should still work.
use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::token::{self, TokenEntry, TokenHash, VerifyFailure};
use crate::telemetry::{Metrics, TokenLabels};

/// Label selecting token Secrets.
pub const TOKEN_LABEL: &str = "scim.kubescim.io/token";
/// Label carrying the token's name (the Secret name may differ for hand-made Secrets).
pub const TOKEN_NAME_LABEL: &str = "scim.kubescim.io/token-name";
/// Optional RFC 3339 expiry.
pub const EXPIRES_AT_ANNOTATION: &str = "scim.kubescim.io/expires-at";
/// Data key of the hex SHA-256 of the token.
pub const HASH_KEY: &str = "sha256";
/// Secret type of Secrets written by the CLI.
pub const SECRET_TYPE: &str = "scim.kubescim.io/token";
/// Secret name prefix: `kube-scim-token-<name>`.
pub const SECRET_NAME_PREFIX: &str = "kube-scim-token-";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "kube-scim";

/// The label selector for token Secrets.
pub fn selector() -> String {
    format!("{TOKEN_LABEL}=true")
}

/// Secret name of a token.
pub fn secret_name(token_name: &str) -> String {
    format!("{SECRET_NAME_PREFIX}{token_name}")
}

/// The token name of a Secret: its name label, else the Secret name without the prefix.
pub fn token_name_of(secret: &Secret) -> String {
    if let Some(n) = secret.labels().get(TOKEN_NAME_LABEL) {
        if !n.is_empty() {
            return n.clone();
        }
    }
    let name = secret.name_any();
    match name.strip_prefix(SECRET_NAME_PREFIX) {
        Some(rest) if !rest.is_empty() => rest.to_string(),
        _ => name,
    }
}

/// Why a token Secret can't be used. Such a Secret authenticates nothing (fail closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("no `{HASH_KEY}` data key")]
    MissingHash,
    #[error("`{HASH_KEY}` is not 64 hex digits")]
    InvalidHash,
    #[error("annotation `{EXPIRES_AT_ANNOTATION}` is not an RFC 3339 time")]
    InvalidExpiry,
}

/// The expiry annotation of a Secret, if any.
pub fn expires_at_of(secret: &Secret) -> Result<Option<DateTime<Utc>>, SecretError> {
    match secret.annotations().get(EXPIRES_AT_ANNOTATION) {
        None => Ok(None),
        Some(s) => DateTime::parse_from_rfc3339(s.trim())
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|_| SecretError::InvalidExpiry),
    }
}

/// Parse a token Secret into what the verifier needs.
pub fn entry_from_secret(secret: &Secret) -> Result<TokenEntry, SecretError> {
    let raw = secret
        .data
        .as_ref()
        .and_then(|d| d.get(HASH_KEY))
        .ok_or(SecretError::MissingHash)?;
    let hex = std::str::from_utf8(&raw.0).map_err(|_| SecretError::InvalidHash)?;
    let hash = TokenHash::from_hex(hex).map_err(|_| SecretError::InvalidHash)?;
    Ok(TokenEntry {
        name: token_name_of(secret),
        hash,
        expires_at: expires_at_of(secret)?,
    })
}

/// The Secret the CLI creates for a new token. Only the hash goes in.
pub fn new_secret(token_name: &str, hash: &TokenHash, expires_at: Option<DateTime<Utc>>) -> Secret {
    let labels = BTreeMap::from([
        (TOKEN_LABEL.to_string(), "true".to_string()),
        (TOKEN_NAME_LABEL.to_string(), token_name.to_string()),
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
    ]);
    let annotations = expires_at.map(|t| {
        BTreeMap::from([(
            EXPIRES_AT_ANNOTATION.to_string(),
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        )])
    });
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(token_name)),
            labels: Some(labels),
            annotations,
            ..Default::default()
        },
        type_: Some(SECRET_TYPE.to_string()),
        data: Some(BTreeMap::from([(
            HASH_KEY.to_string(),
            ByteString(hash.to_hex().into_bytes()),
        )])),
        // Immutable: a token is rotated by creating another, never by editing its hash.
        immutable: Some(true),
        ..Default::default()
    }
}

/// Who a request authenticated as. Inserted into request extensions by the middleware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIdentity {
    /// The token's name (never the token).
    pub name: String,
}

/// Why a request was not authenticated. The categories are bounded (metric label values).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("no Authorization header")]
    Missing,
    #[error("Authorization header is not `Bearer <token>`")]
    Malformed,
    #[error("unknown token")]
    Unknown,
    #[error("token {name:?} has expired")]
    Expired { name: String },
    #[error("token store has not synchronised yet")]
    NotReady,
}

impl AuthFailure {
    /// The bounded metric label / log field.
    pub fn category(&self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed => "malformed",
            AuthFailure::Unknown => "unknown",
            AuthFailure::Expired { .. } => "expired",
            AuthFailure::NotReady => "not_ready",
        }
    }
}

/// Extract the token from an `Authorization` header value: `Bearer <token>`, scheme
/// case-insensitive (RFC 7235), exactly one space-separated token of visible ASCII.
pub fn bearer_token(header: &str) -> Result<&str, AuthFailure> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').ok_or(AuthFailure::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthFailure::Malformed);
    }
    let token = rest.trim_start_matches(' ');
    if token.is_empty()
        || token.len() > token::MAX_PRESENTED_TOKEN_LEN
        || !token.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(AuthFailure::Malformed);
    }
    Ok(token)
}

#[derive(Debug, Default)]
struct Snapshot {
    synced: bool,
    entries: Arc<[TokenEntry]>,
}

/// The set of valid tokens, kept current by a reflector on token Secrets.
/// Cheap to clone; all clones see the same state.
#[derive(Clone, Debug)]
pub struct TokenStore {
    // A watch channel rather than a lock: readers never block the writer, there is no
    // poisoning, and `wait_for` gives `wait_synced` for free.
    state: watch::Receiver<Snapshot>,
}

impl TokenStore {
    /// Start the reflector on token Secrets in `namespace`. Must be called inside a tokio
    /// runtime. The task stops when `shutdown` is cancelled. Watch errors (API server away,
    /// RBAC missing) are logged and retried with backoff; they never end the task, and the
    /// store keeps serving the last known set of tokens meanwhile.
    pub fn start(client: Client, namespace: &str, shutdown: CancellationToken) -> TokenStore {
        let (tx, rx) = watch::channel(Snapshot::default());
        let api: Api<Secret> = Api::namespaced(client, namespace);
        let namespace = namespace.to_string();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = reflect(api, namespace, tx) => {}
            }
        });
        TokenStore { state: rx }
    }

    /// A store holding a fixed set of tokens, already synced: for tests and for embedding
    /// without a cluster.
    pub fn from_entries(entries: Vec<TokenEntry>) -> TokenStore {
        let (_tx, rx) = watch::channel(Snapshot {
            synced: true,
            entries: entries.into(),
        });
        TokenStore { state: rx }
    }

    /// A store that never syncs (for tests of the fail-closed path).
    #[cfg(test)]
    pub(crate) fn never_synced() -> TokenStore {
        let (_tx, rx) = watch::channel(Snapshot::default());
        TokenStore { state: rx }
    }

    /// True once the first full list of token Secrets has been loaded.
    pub fn is_synced(&self) -> bool {
        self.state.borrow().synced
    }

    /// Resolves once the store has synced, or when it has stopped (shutdown) without
    /// syncing — check [`TokenStore::is_synced`] if that distinction matters.
    pub async fn wait_synced(&self) {
        let mut rx = self.state.clone();
        let _ = rx.wait_for(|s| s.synced).await;
    }

    /// Keep `metrics`' `token_expiry` gauge equal to the current tokens' expiries until
    /// the store stops (run it as a task beside the server).
    pub async fn export_expiry(&self, metrics: Arc<Metrics>) {
        let mut rx = self.state.clone();
        let mut exported = BTreeMap::new();
        loop {
            let entries = rx.borrow_and_update().entries.clone();
            exported = export_expiries(&metrics, &exported, expiries(&entries));
            if rx.changed().await.is_err() {
                break;
            }
        }
    }

    /// Authenticate an `Authorization` header value against the current tokens.
    pub fn authenticate(
        &self,
        authorization_header: Option<&str>,
    ) -> Result<TokenIdentity, AuthFailure> {
        self.authenticate_at(authorization_header, Utc::now())
    }

    /// [`TokenStore::authenticate`] at a given time.
    pub fn authenticate_at(
        &self,
        authorization_header: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<TokenIdentity, AuthFailure> {
        // A missing or malformed header is wrong whatever the store holds, so it gets a 401
        // even before sync; only a well-formed token waits for the store.
        let header = authorization_header.ok_or(AuthFailure::Missing)?;
        let presented = bearer_token(header)?;
        let (synced, entries) = {
            let s = self.state.borrow();
            (s.synced, s.entries.clone())
        };
        if !synced {
            return Err(AuthFailure::NotReady);
        }
        match token::verify(presented, &entries, now) {
            Ok(e) => Ok(TokenIdentity {
                name: e.name.clone(),
            }),
            Err(VerifyFailure::Unknown) => Err(AuthFailure::Unknown),
            Err(VerifyFailure::Expired { name }) => Err(AuthFailure::Expired { name }),
        }
    }
}

/// Expiry (Unix seconds) per token name; of two Secrets with one name, the later expiry.
pub fn expiries(entries: &[TokenEntry]) -> BTreeMap<String, i64> {
    let mut out: BTreeMap<String, i64> = BTreeMap::new();
    for e in entries {
        if let Some(t) = e.expires_at {
            let v = out.entry(e.name.clone()).or_insert(i64::MIN);
            *v = (*v).max(t.timestamp());
        }
    }
    out
}

/// Set the gauge to `now`, removing the series of tokens that went away (revoked, or
/// no longer expiring) rather than clearing everything, so a scrape never sees a gap.
fn export_expiries(
    metrics: &Metrics,
    before: &BTreeMap<String, i64>,
    now: BTreeMap<String, i64>,
) -> BTreeMap<String, i64> {
    for name in before.keys().filter(|n| !now.contains_key(*n)) {
        metrics.token_expiry.remove(&TokenLabels {
            token: name.clone(),
        });
    }
    for (name, at) in &now {
        metrics
            .token_expiry
            .get_or_create(&TokenLabels {
                token: name.clone(),
            })
            .set(*at);
    }
    now
}

/// Build the verifier's view of the reflector cache. Unusable Secrets are skipped (fail
/// closed); `log_invalid` says whether to warn about them (on a full resync only, so a
/// broken Secret is reported once per resync rather than on every unrelated event).
fn snapshot(reader: &Store<Secret>, log_invalid: bool) -> Arc<[TokenEntry]> {
    let mut entries: Vec<TokenEntry> = reader
        .state()
        .iter()
        .filter_map(|s| match entry_from_secret(s) {
            Ok(e) => Some(e),
            Err(err) => {
                if log_invalid {
                    tracing::warn!(secret = %s.name_any(), error = %err, "ignoring unusable token Secret");
                }
                None
            }
        })
        .collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    entries.into()
}

async fn reflect(api: Api<Secret>, namespace: String, tx: watch::Sender<Snapshot>) {
    let (reader, writer) = reflector::store::<Secret>();
    let config = watcher::Config::default().labels(&selector());
    let stream = reflector::reflector(
        writer,
        watcher::watcher(api, config)
            .default_backoff()
            // Managed fields are large and never read here.
            .modify(|s: &mut Secret| s.managed_fields_mut().clear()),
    );
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        match item {
            Ok(Event::InitDone) => {
                let entries = snapshot(&reader, true);
                tracing::info!(%namespace, tokens = entries.len(), "token store synced");
                tx.send_replace(Snapshot {
                    synced: true,
                    entries,
                });
            }
            Ok(Event::Apply(s)) => {
                // Audit trail of token changes: the name only, never data.
                match entry_from_secret(&s) {
                    Ok(e) => {
                        tracing::info!(token = %e.name, expires_at = ?e.expires_at, "token added or updated")
                    }
                    Err(err) => {
                        tracing::warn!(secret = %s.name_any(), error = %err, "ignoring unusable token Secret")
                    }
                }
                publish(&tx, &reader);
            }
            Ok(Event::Delete(s)) => {
                tracing::info!(token = %token_name_of(&s), "token revoked");
                publish(&tx, &reader);
            }
            // During a (re)list the reflector buffers objects and swaps them in at InitDone;
            // until then the previous set stays in force.
            Ok(Event::Init) | Ok(Event::InitApply(_)) => {}
            Err(e) => {
                // The backoff has already been applied; the watcher retries by itself.
                tracing::warn!(%namespace, error = %e, "token Secret watch failed; retrying");
            }
        }
    }
}

fn publish(tx: &watch::Sender<Snapshot>, reader: &Store<Secret>) {
    let entries = snapshot(reader, false);
    tx.send_modify(|s| s.entries = entries);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(name: &str, labels: &[(&str, &str)], hash: Option<&str>) -> Secret {
        let mut s = Secret::default();
        s.metadata.name = Some(name.into());
        s.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        if let Some(h) = hash {
            s.data = Some(BTreeMap::from([(
                HASH_KEY.to_string(),
                ByteString(h.as_bytes().to_vec()),
            )]));
        }
        s
    }

    #[test]
    fn new_secret_round_trips_and_holds_no_token() {
        let tok = token::generate().unwrap();
        let exp = DateTime::parse_from_rfc3339("2030-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let s = new_secret("entra", &tok.hash(), Some(exp));
        assert_eq!(s.metadata.name.as_deref(), Some("kube-scim-token-entra"));
        let e = entry_from_secret(&s).unwrap();
        assert_eq!(e.name, "entra");
        assert_eq!(e.hash, tok.hash());
        assert_eq!(e.expires_at, Some(exp));
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains(tok.expose()));
        assert!(!json.contains(&tok.expose()[token::TOKEN_PREFIX.len()..]));
    }

    #[test]
    fn hand_made_secrets_are_read_and_broken_ones_rejected() {
        let h = TokenHash::of("x").to_hex();
        let s = secret("kube-scim-token-okta", &[(TOKEN_LABEL, "true")], Some(&h));
        assert_eq!(entry_from_secret(&s).unwrap().name, "okta");
        let s = secret("custom", &[(TOKEN_LABEL, "true")], Some(&format!("{h}\n")));
        assert_eq!(entry_from_secret(&s).unwrap().name, "custom");
        let s = secret("custom", &[], None);
        assert_eq!(entry_from_secret(&s), Err(SecretError::MissingHash));
        let s = secret("custom", &[], Some("nothex"));
        assert_eq!(entry_from_secret(&s), Err(SecretError::InvalidHash));
        let mut s = secret("custom", &[], Some(&h));
        s.metadata.annotations = Some(BTreeMap::from([(
            EXPIRES_AT_ANNOTATION.to_string(),
            "tomorrow".to_string(),
        )]));
        assert_eq!(entry_from_secret(&s), Err(SecretError::InvalidExpiry));
    }

    #[tokio::test]
    async fn the_expiry_gauge_follows_the_tokens() {
        let at = |s: i64| DateTime::from_timestamp(s, 0);
        let entry = |name: &str, exp: Option<DateTime<Utc>>| TokenEntry {
            name: name.into(),
            hash: TokenHash::of(name),
            expires_at: exp,
        };
        let (tx, rx) = watch::channel(Snapshot {
            synced: true,
            entries: vec![
                entry("entra", at(2_000_000_000)),
                entry("forever", None),
                entry("okta", at(1_900_000_000)),
            ]
            .into(),
        });
        let store = TokenStore { state: rx };
        let metrics = Metrics::new();
        let task = tokio::spawn({
            let (store, metrics) = (store.clone(), metrics.clone());
            async move { store.export_expiry(metrics).await }
        });
        let series = |metrics: &Metrics| -> Vec<String> {
            let mut v: Vec<String> = metrics
                .encode()
                .lines()
                .filter(|l| l.starts_with("kube_scim_token_expiry_timestamp_seconds{"))
                .map(str::to_owned)
                .collect();
            v.sort();
            v
        };
        let wait_for = |want: Vec<&'static str>| {
            let metrics = metrics.clone();
            async move {
                for _ in 0..200 {
                    if series(&metrics) == want {
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                panic!("series {:?}, want {want:?}", series(&metrics));
            }
        };
        wait_for(vec![
            "kube_scim_token_expiry_timestamp_seconds{token=\"entra\"} 2000000000",
            "kube_scim_token_expiry_timestamp_seconds{token=\"okta\"} 1900000000",
        ])
        .await;
        // okta revoked, entra rotated to a later expiry under a second Secret.
        tx.send_replace(Snapshot {
            synced: true,
            entries: vec![
                entry("entra", at(2_000_000_000)),
                entry("entra", at(2_100_000_000)),
            ]
            .into(),
        });
        wait_for(vec![
            "kube_scim_token_expiry_timestamp_seconds{token=\"entra\"} 2100000000",
        ])
        .await;
        drop(tx);
        task.await.expect("the exporter ends with the store");
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token("Bearer abc"), Ok("abc"));
        assert_eq!(bearer_token("bearer abc"), Ok("abc"));
        assert_eq!(bearer_token("BEARER   abc "), Ok("abc"));
        for bad in [
            "",
            "Bearer",
            "Bearer ",
            "Basic dXNlcjpwYXNz",
            "Bearerabc",
            "Bearer a b",
            "Token abc",
            "Bearer \tabc",
        ] {
            assert_eq!(
                bearer_token(bad),
                Err(AuthFailure::Malformed),
                "{bad:?} accepted"
            );
        }
        let long = format!("Bearer {}", "a".repeat(token::MAX_PRESENTED_TOKEN_LEN + 1));
        assert_eq!(bearer_token(&long), Err(AuthFailure::Malformed));
    }

    #[test]
    fn authenticate_categories() {
        let now = Utc::now();
        let store = TokenStore::from_entries(vec![
            TokenEntry {
                name: "live".into(),
                hash: TokenHash::of("good"),
                expires_at: None,
            },
            TokenEntry {
                name: "old".into(),
                hash: TokenHash::of("stale"),
                expires_at: Some(now - chrono::TimeDelta::seconds(1)),
            },
        ]);
        assert!(store.is_synced());
        assert_eq!(
            store.authenticate_at(Some("Bearer good"), now),
            Ok(TokenIdentity {
                name: "live".into()
            })
        );
        assert_eq!(store.authenticate_at(None, now), Err(AuthFailure::Missing));
        assert_eq!(
            store.authenticate_at(Some("Basic Z29vZA=="), now),
            Err(AuthFailure::Malformed)
        );
        assert_eq!(
            store.authenticate_at(Some("Bearer bad"), now),
            Err(AuthFailure::Unknown)
        );
        assert_eq!(
            store.authenticate_at(Some("Bearer stale"), now),
            Err(AuthFailure::Expired { name: "old".into() })
        );
        let pending = TokenStore::never_synced();
        assert!(!pending.is_synced());
        assert_eq!(
            pending.authenticate_at(Some("Bearer good"), now),
            Err(AuthFailure::NotReady)
        );
        assert_eq!(
            pending.authenticate_at(None, now),
            Err(AuthFailure::Missing)
        );
    }
}
