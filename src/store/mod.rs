//! The CR-backed SCIM repository: the only code that knows how SCIM resources map to
//! ScimUser / ScimGroup / ScimGroupMembers objects.
//!
//! Reads come from watch-fed reflector caches (so Test Connection and Entra's matching
//! lookups never load the API server). Writes go to the API server with optimistic
//! concurrency (resourceVersion preconditions, re-read and retry on conflict) and
//! return only once this replica's cache has seen them, so a client reads its own
//! writes on its next request. A 2xx is only ever returned after the API server stored
//! the change; when it can't be reached the caller gets `Unavailable` (503).
mod groups;
mod names;
pub mod resource;
mod users;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::reflector::{self, Store as Cache};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::crd::{ScimGroup, ScimGroupMembers, ScimUser};
use crate::scim::error::ScimError;

pub use groups::GroupWrite;
pub use resource::ResourceMeta;

/// Field manager of every write the SCIM side makes.
pub const FIELD_MANAGER: &str = "kube-scim-scim";
/// Annotations holding SCIM `meta` that Kubernetes metadata can't express exactly.
pub const CREATED_ANNOTATION: &str = "scim.kubescim.io/created";
pub const LAST_MODIFIED_ANNOTATION: &str = "scim.kubescim.io/last-modified";
pub const VERSION_ANNOTATION: &str = "scim.kubescim.io/version";

/// Bound on one API server call; past it the client gets 503 and may retry.
const API_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a write waits for the cache to catch up before answering anyway.
const READ_YOUR_WRITES_WAIT: Duration = Duration::from_secs(5);
/// Conflict retries before giving up with 503.
const MAX_CONFLICT_RETRIES: usize = 25;
/// Stripes of the per-group write lock.
const GROUP_WRITE_STRIPES: usize = 64;

#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// The operator's namespace: cluster-wide name claims live here (see `names`).
    namespace: String,
    users: Cache<ScimUser>,
    groups: Cache<ScimGroup>,
    shards: Cache<ScimGroupMembers>,
    /// Notified on every watch event of any of the three caches.
    changed: Notify,
    synced: AtomicBool,
    /// Names (lower-cased userName / displayName) being created on this replica: makes
    /// the uniqueness check + create atomic within the replica.
    claims: Mutex<HashSet<String>>,
    /// Writes to one group are serialised on this replica (striped by group id): Entra
    /// sends a group's member PATCHes in parallel, and a batch touches every shard, so
    /// unserialised they would mostly fail their resourceVersion preconditions and retry
    /// (measured: 50 parallel 1,000-member adds took twice as long as sequential ones).
    /// Writers on other replicas are still handled by the preconditions.
    group_writes: Vec<tokio::sync::Mutex<()>>,
}

impl Store {
    /// Start the three reflectors; they run until `shutdown`.
    pub fn start(client: Client, namespace: &str, shutdown: CancellationToken) -> Store {
        let (users, users_w) = reflector::store();
        let (groups, groups_w) = reflector::store();
        let (shards, shards_w) = reflector::store();
        let inner = Arc::new(Inner {
            client: client.clone(),
            namespace: namespace.to_string(),
            users,
            groups,
            shards,
            changed: Notify::new(),
            synced: AtomicBool::new(false),
            claims: Mutex::new(HashSet::new()),
            group_writes: (0..GROUP_WRITE_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        });
        spawn_reflector(
            Api::<ScimUser>::all(client.clone()),
            users_w,
            inner.clone(),
            shutdown.clone(),
        );
        spawn_reflector(
            Api::<ScimGroup>::all(client.clone()),
            groups_w,
            inner.clone(),
            shutdown.clone(),
        );
        spawn_reflector(
            Api::<ScimGroupMembers>::all(client),
            shards_w,
            inner.clone(),
            shutdown,
        );
        let store = Store { inner };
        let s = store.clone();
        tokio::spawn(async move {
            let ready = async {
                let _ = s.inner.users.wait_until_ready().await;
                let _ = s.inner.groups.wait_until_ready().await;
                let _ = s.inner.shards.wait_until_ready().await;
            };
            ready.await;
            s.inner.synced.store(true, Ordering::Release);
            s.inner.changed.notify_waiters();
            tracing::info!("SCIM caches synced");
        });
        store
    }

    pub fn is_synced(&self) -> bool {
        self.inner.synced.load(Ordering::Acquire)
    }

    /// Wait until the three caches have synced (the sync task notifies `changed`).
    pub async fn wait_synced(&self) {
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_synced() {
                return;
            }
            notified.await;
        }
    }

    fn ensure_synced(&self) -> Result<(), ScimError> {
        if self.is_synced() {
            Ok(())
        } else {
            Err(ScimError::Unavailable {
                retry_after_secs: 5,
                detail: "the server is starting; its caches have not synced yet".into(),
            })
        }
    }

    fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Wait until `check` holds on the caches, or the deadline passes (then answer anyway:
    /// the write is stored, only this replica's view lags).
    async fn wait_for_cache(&self, mut check: impl FnMut(&Inner) -> bool) {
        let deadline = tokio::time::Instant::now() + READ_YOUR_WRITES_WAIT;
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if check(&self.inner) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                tracing::warn!(
                    "cache did not catch up with a write within {READ_YOUR_WRITES_WAIT:?}"
                );
                return;
            }
        }
    }

    /// The write lock of group `id` on this replica (see `Inner::group_writes`).
    fn group_write_lock(&self, id: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut h);
        &self.inner.group_writes[(h.finish() % GROUP_WRITE_STRIPES as u64) as usize]
    }

    fn claim(&self, key: String) -> Result<Claim<'_>, ScimError> {
        let mut claims = self.inner.claims.lock().unwrap_or_else(|p| p.into_inner());
        if !claims.insert(key.clone()) {
            return Err(ScimError::uniqueness(
                "a resource with this name is being created right now",
            ));
        }
        Ok(Claim { store: self, key })
    }
}

/// Releases a uniqueness claim when the create finishes, whatever the outcome.
struct Claim<'a> {
    store: &'a Store,
    key: String,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut claims = self
            .store
            .inner
            .claims
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        claims.remove(&self.key);
    }
}

fn spawn_reflector<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    inner: Arc<Inner>,
    shutdown: CancellationToken,
) where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .reflect(writer)
            .touched_objects();
        futures::pin_mut!(stream);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = stream.next() => match ev {
                    Some(Ok(_)) => inner.changed.notify_waiters(),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, kind = %K::kind(&()), "watch error; retrying");
                        inner.changed.notify_waiters();
                    }
                    None => return,
                }
            }
        }
    });
}

/// Resource versions of etcd-backed objects are integers; comparing them tells whether a
/// cache has caught up with a write. Unparseable versions compare by equality only.
fn rv_at_least(have: Option<&str>, want: &str) -> bool {
    match (
        have.and_then(|h| h.parse::<u64>().ok()),
        want.parse::<u64>().ok(),
    ) {
        (Some(h), Some(w)) => h >= w,
        _ => have == Some(want),
    }
}

/// Map an API server error to what the SCIM client should see.
pub(crate) fn api_error(e: kube::Error, what: &str) -> ScimError {
    match &e {
        kube::Error::Api(s) => match s.code {
            404 => ScimError::not_found(format!("{what} not found")),
            409 => ScimError::Unavailable {
                retry_after_secs: 1,
                detail: format!("{what}: concurrent modification, retry"),
            },
            413 => ScimError::invalid_value(format!("{what} is too large to store")),
            400 | 422 => {
                if s.message.contains("too large") || s.message.contains("exceeds") {
                    ScimError::invalid_value(format!("{what} is too large to store"))
                } else {
                    tracing::warn!(error = %e, "API server rejected a write");
                    ScimError::invalid_value(format!(
                        "{what} was rejected by the storage layer: {}",
                        s.message
                    ))
                }
            }
            403 | 401 => {
                tracing::error!(error = %e, "the operator is not allowed to do this; check its RBAC");
                ScimError::Unavailable {
                    retry_after_secs: 30,
                    detail: "storage is not available (permission denied)".into(),
                }
            }
            _ => {
                tracing::warn!(error = %e, "API server error");
                ScimError::Unavailable {
                    retry_after_secs: 5,
                    detail: "storage is temporarily unavailable".into(),
                }
            }
        },
        _ => {
            tracing::warn!(error = %e, "API server unreachable");
            ScimError::Unavailable {
                retry_after_secs: 5,
                detail: "storage is temporarily unavailable".into(),
            }
        }
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Run one API call under the timeout; a timeout is a 503.
async fn with_timeout<T>(
    fut: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<Result<T, kube::Error>, ScimError> {
    tokio::time::timeout(API_TIMEOUT, fut)
        .await
        .map_err(|_| ScimError::Unavailable {
            retry_after_secs: 5,
            detail: "storage did not answer in time".into(),
        })
}

/// Delete `id`. With If-Match the delete carries a resourceVersion precondition; the
/// controller's status writes change the resourceVersion but not the SCIM version, so on
/// a conflict the object is re-read and If-Match checked again.
async fn delete_checked<K>(
    api: &Api<K>,
    mut current: Arc<K>,
    id: &str,
    if_match: Option<&str>,
    what: &str,
) -> Result<(), ScimError>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    for _ in 0..MAX_CONFLICT_RETRIES {
        confirm_if_match(api, &mut current, id, if_match, what).await?;
        let dp = kube::api::DeleteParams {
            preconditions: if_match.map(|_| kube::api::Preconditions {
                resource_version: current.meta().resource_version.clone(),
                uid: None,
            }),
            ..Default::default()
        };
        match with_timeout(api.delete(id, &dp)).await? {
            Ok(_) => return Ok(()),
            Err(e) if is_not_found(&e) => {
                return Err(ScimError::not_found(format!("{what} {id} not found")))
            }
            Err(e) if is_conflict(&e) => {
                current = Arc::new(
                    with_timeout(api.get(id))
                        .await?
                        .map_err(|e| api_error(e, &format!("{what} {id}")))?,
                );
            }
            Err(e) => return Err(api_error(e, what)),
        }
    }
    Err(ScimError::Unavailable {
        retry_after_secs: 1,
        detail: format!("too many concurrent changes to this {what}; retry"),
    })
}

/// If-Match on a cached object. A mismatch is confirmed against the API server before it
/// becomes a 412: another replica may have written a version this cache hasn't seen yet,
/// and the client may be holding that newer ETag. `current` is refreshed then.
async fn confirm_if_match<K>(
    api: &Api<K>,
    current: &mut Arc<K>,
    id: &str,
    if_match: Option<&str>,
    what: &str,
) -> Result<(), ScimError>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    if check_if_match(if_match, &ResourceMeta::of(current.meta()).etag()).is_ok() {
        return Ok(());
    }
    let fresh = with_timeout(api.get(id))
        .await?
        .map_err(|e| api_error(e, &format!("{what} {id}")))?;
    *current = Arc::new(fresh);
    check_if_match(if_match, &ResourceMeta::of(current.meta()).etag())
}

/// If-Match handling (RFC 7644 §3.14): `*` or any listed ETag equal (weakly) to the current version.
pub fn check_if_match(if_match: Option<&str>, current_etag: &str) -> Result<(), ScimError> {
    let Some(header) = if_match else {
        return Ok(());
    };
    let strip = |s: &str| {
        s.trim()
            .trim_start_matches("W/")
            .trim_matches('"')
            .to_string()
    };
    let current = strip(current_etag);
    let ok = header.split(',').any(|tag| {
        let tag = tag.trim();
        tag == "*" || strip(tag) == current
    });
    if ok {
        Ok(())
    } else {
        Err(ScimError::PreconditionFailed(format!(
            "resource version is {current_etag}, not {header}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_accepts_star_weak_and_lists() {
        assert!(check_if_match(None, "W/\"3\"").is_ok());
        assert!(check_if_match(Some("*"), "W/\"3\"").is_ok());
        assert!(check_if_match(Some("W/\"3\""), "W/\"3\"").is_ok());
        assert!(check_if_match(Some("\"3\""), "W/\"3\"").is_ok());
        assert!(check_if_match(Some("W/\"1\", W/\"3\""), "W/\"3\"").is_ok());
        assert!(matches!(
            check_if_match(Some("W/\"2\""), "W/\"3\""),
            Err(ScimError::PreconditionFailed(_))
        ));
    }

    #[test]
    fn resource_versions_compare_numerically() {
        assert!(rv_at_least(Some("10"), "9"));
        assert!(!rv_at_least(Some("9"), "10"));
        assert!(rv_at_least(Some("abc"), "abc"));
        assert!(!rv_at_least(None, "1"));
    }
}
