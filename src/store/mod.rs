//! The CR-backed SCIM repository: the only code that knows how SCIM resources map to
//! ScimUser / ScimGroup / ScimGroupMembers objects.
//!
//! Reads come from watch-fed reflector caches (so Test Connection and Entra's matching
//! lookups don't load the API server). Writes go to the API server with optimistic
//! concurrency (resourceVersion preconditions, re-read and retry on conflict) and
//! return only once this replica's cache has seen them, so a client reads its own
//! writes on its next request. A 2xx is only ever returned after the API server stored
//! the change; when it can't be reached the caller gets `Unavailable` (503).
//!
//! Any replica answers any request: the chart runs several behind one Service, and
//! Entra's next request (GET, lookup, member add, PATCH) may reach a replica whose watch
//! hasn't delivered what another replica just wrote. So a cache miss is never an answer
//! by itself: an id the cache doesn't have is read from the API server before a 404, a
//! `userName` / `displayName` lookup that finds nothing asks the name's cluster-wide
//! claim (`names`) for its holder, and a name the cache says is taken is confirmed before
//! a 409. A stale cached version fails its write's precondition and is re-read. Hits
//! cost nothing more; the API server is asked only on a miss or a conflict.
mod cache;
mod groups;
pub mod index;
mod names;
mod placement;
pub mod resource;
mod users;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::Duration;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Listing;
use crate::crd::{ScimGroup, ScimGroupMembers, ScimUser};
use crate::scim::error::ScimError;
use cache::{Cache, Json, Packing, Shared, Trim};
use index::{Index, IndexKeys};

pub use groups::GroupWrite;
pub use resource::ResourceMeta;

/// Field manager of every write the SCIM side makes.
pub const FIELD_MANAGER: &str = "kube-scim-scim";
/// Annotations holding SCIM `meta` that Kubernetes metadata can't express exactly.
pub const CREATED_ANNOTATION: &str = "scim.kubescim.io/created";
pub const LAST_MODIFIED_ANNOTATION: &str = "scim.kubescim.io/last-modified";
pub const VERSION_ANNOTATION: &str = "scim.kubescim.io/version";

/// Bound on one API server call; past it the client gets 503 and may retry. A call made
/// for a SCIM request also ends at that request's deadline (see [`within_deadline`]).
const API_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a write waits for the cache to catch up before answering anyway.
const READ_YOUR_WRITES_WAIT: Duration = Duration::from_secs(5);
/// Conflict retries before giving up with 503.
const MAX_CONFLICT_RETRIES: usize = 25;
/// Stripes of the per-group write lock.
const GROUP_WRITE_STRIPES: usize = 64;

tokio::task_local! {
    /// When the work for the SCIM request being served must stop (see [`within_deadline`]).
    static DEADLINE: tokio::time::Instant;
}

/// Run `fut`, the work for one SCIM request, with every API server call, cache wait and
/// lock wait in it ending by `deadline`: a request makes several calls (conflict
/// retries, confirmations of cache misses, one write per member shard) and waits behind
/// other writes of the same group, and each bounded on its own they could add up past
/// the client's patience (Entra gives up after 60 s). What is cut short answers 503
/// with Retry-After; a write cut half-way is finished by the client's retry (see
/// `groups`). Work outside a request (the controller, tests) has no deadline.
pub async fn within_deadline<F: std::future::Future>(
    deadline: tokio::time::Instant,
    fut: F,
) -> F::Output {
    DEADLINE.scope(deadline, fut).await
}

/// `bound` from now, or the current request's deadline if that comes first.
fn deadline_within(bound: Duration) -> tokio::time::Instant {
    let own = tokio::time::Instant::now() + bound;
    DEADLINE.try_with(|d| own.min(*d)).unwrap_or(own)
}

/// What is left of the current request's time (None outside a request).
pub(crate) fn request_time_left() -> Option<Duration> {
    DEADLINE
        .try_with(|d| d.saturating_duration_since(tokio::time::Instant::now()))
        .ok()
}

/// The 503 of work cut off by the request's deadline or a call's timeout.
fn out_of_time() -> ScimError {
    ScimError::Unavailable {
        retry_after_secs: 5,
        detail: "storage did not answer in time".into(),
    }
}

/// Wait for `fut` until the current request's deadline (no bound outside a request).
async fn until_deadline<T>(fut: impl std::future::Future<Output = T>) -> Result<T, ScimError> {
    match DEADLINE.try_with(|d| *d) {
        Ok(deadline) => tokio::time::timeout_at(deadline, fut)
            .await
            .map_err(|_| out_of_time()),
        Err(_) => Ok(fut.await),
    }
}

/// Bytes of members a shard fills to before its group opens another (see
/// `placement`): ~1,000 members of 36-character ids, so small groups stay in one object.
pub const DEFAULT_SHARD_FILL_BYTES: u64 = 64 * 1024;

/// How a [`Store`] runs.
#[derive(Clone, Copy, Debug)]
pub struct StoreOptions {
    /// How the caches make their first list.
    pub listing: Listing,
    /// See [`DEFAULT_SHARD_FILL_BYTES`].
    pub shard_fill_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            listing: Listing::default(),
            shard_fill_bytes: DEFAULT_SHARD_FILL_BYTES as usize,
        }
    }
}

#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// See [`DEFAULT_SHARD_FILL_BYTES`].
    shard_fill_bytes: usize,
    /// The operator's namespace: cluster-wide name claims live here (see `names`).
    namespace: String,
    users: Cache<ScimUser, Json>,
    groups: Cache<ScimGroup, Json>,
    shards: Cache<ScimGroupMembers, Shared>,
    /// Secondary indexes of the user and group caches (see `index`), updated by the
    /// reflector tasks just before the cache itself, from the same events.
    user_index: RwLock<Index>,
    group_index: RwLock<Index>,
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
        Store::start_with(client, namespace, StoreOptions::default(), shutdown)
    }

    /// Start the three reflectors, with `options`.
    pub fn start_with(
        client: Client,
        namespace: &str,
        options: StoreOptions,
        shutdown: CancellationToken,
    ) -> Store {
        let list = options.listing;
        let inner = Arc::new(Inner {
            shard_fill_bytes: options.shard_fill_bytes,
            client: client.clone(),
            namespace: namespace.to_string(),
            users: Cache::default(),
            groups: Cache::default(),
            shards: Cache::default(),
            user_index: RwLock::new(Index::new(index::USER_FIELDS)),
            group_index: RwLock::new(Index::new(index::GROUP_FIELDS)),
            changed: Notify::new(),
            synced: AtomicBool::new(false),
            claims: Mutex::new(HashSet::new()),
            group_writes: (0..GROUP_WRITE_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        });
        let users = crate::watch::partitioned_watcher(
            Api::<ScimUser>::all(client.clone()),
            list.watcher_config(),
            list.user_partitions(),
        );
        spawn_reflector(users, USER_INDEXER, inner.clone(), shutdown.clone());
        spawn_reflector(
            crate::watch::watcher(Api::<ScimGroup>::all(client.clone()), list.watcher_config()),
            GROUP_INDEXER,
            inner.clone(),
            shutdown.clone(),
        );
        spawn_reflector(
            crate::watch::watcher(Api::<ScimGroupMembers>::all(client), list.watcher_config()),
            SHARD_INDEXER,
            inner.clone(),
            shutdown,
        );
        let store = Store { inner };
        let s = store.clone();
        tokio::spawn(async move {
            let ready = async {
                s.inner.users.wait_until_ready().await;
                s.inner.groups.wait_until_ready().await;
                s.inner.shards.wait_until_ready().await;
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
    /// Whether it caught up (false after the wait's deadline).
    async fn wait_for_cache(&self, mut check: impl FnMut(&Inner) -> bool) -> bool {
        // Within the request's deadline: the write is stored, so it is acknowledged
        // rather than cut off (a 503 for a stored create would make its retry a 409).
        let deadline = deadline_within(READ_YOUR_WRITES_WAIT);
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if check(&self.inner) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                tracing::warn!(
                    "cache did not catch up with a write within {READ_YOUR_WRITES_WAIT:?}"
                );
                return false;
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

/// How the events of one kind reach its cache and index.
struct Indexer<K: Resource<DynamicType = ()> + 'static, P: Packing<K>> {
    cache: fn(&Inner) -> &Cache<K, P>,
    /// None for kinds without an index.
    index: Option<fn(&Inner) -> &RwLock<Index>>,
    fields: usize,
    keys: fn(&K) -> IndexKeys,
}

// Plain function pointers: the struct is Copy whatever K is.
impl<K: Resource<DynamicType = ()>, P: Packing<K>> Clone for Indexer<K, P> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K: Resource<DynamicType = ()>, P: Packing<K>> Copy for Indexer<K, P> {}

const USER_INDEXER: Indexer<ScimUser, Json> = Indexer {
    cache: |i| &i.users,
    index: Some(|i| &i.user_index),
    fields: index::USER_FIELDS,
    keys: index::user_keys,
};
const GROUP_INDEXER: Indexer<ScimGroup, Json> = Indexer {
    cache: |i| &i.groups,
    index: Some(|i| &i.group_index),
    fields: index::GROUP_FIELDS,
    keys: index::group_keys,
};
const SHARD_INDEXER: Indexer<ScimGroupMembers, Shared> = Indexer {
    cache: |i| &i.shards,
    index: None,
    fields: 0,
    keys: index::no_keys,
};

fn write_index(lock: &RwLock<Index>) -> std::sync::RwLockWriteGuard<'_, Index> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

/// Apply one watch event to the index of its kind, then to its cache. The index goes
/// first: a reader that sees the new object in the cache (as a write waiting for its own
/// result does) then also finds it through the index. The old keys of an object come
/// from the cache, which still holds the version the index was last fed with. A relist
/// (Init, InitApply…, InitDone) builds a fresh index that replaces the old one when the
/// cache swaps its buffer in too.
fn apply_event<K, P>(
    inner: &Inner,
    ix: Indexer<K, P>,
    building: &mut Option<Index>,
    ev: &watcher::Event<K>,
) where
    K: Resource<DynamicType = ()> + Trim + Clone + 'static,
    P: Packing<K>,
{
    if let Some(index) = ix.index.map(|f| f(inner)) {
        let old_keys = |obj: &K| {
            let name = obj.meta().name.as_deref()?;
            (ix.cache)(inner).get(name).map(|old| (ix.keys)(&old))
        };
        match ev {
            watcher::Event::Init => *building = Some(Index::new(ix.fields)),
            watcher::Event::InitApply(obj) => {
                let building = building.get_or_insert_with(|| Index::new(ix.fields));
                // A relist split in several requests hands on an object that moved
                // between them once per version (see `crate::watch`).
                let earlier = obj
                    .meta()
                    .name
                    .as_deref()
                    .and_then(|n| (ix.cache)(inner).relisted(n));
                if let Some(earlier) = earlier {
                    building.remove(&(ix.keys)(&earlier));
                }
                building.insert(&(ix.keys)(obj));
            }
            watcher::Event::InitDone => {
                *write_index(index) = building.take().unwrap_or_else(|| Index::new(ix.fields));
            }
            watcher::Event::Apply(obj) => {
                let old = old_keys(obj);
                let new = (ix.keys)(obj);
                if old.as_ref() != Some(&new) {
                    let mut w = write_index(index);
                    if let Some(old) = &old {
                        w.remove(old);
                    }
                    w.insert(&new);
                }
            }
            watcher::Event::Delete(obj) => {
                let old = old_keys(obj).unwrap_or_else(|| (ix.keys)(obj));
                write_index(index).remove(&old);
            }
        }
    }
    (ix.cache)(inner).apply(ev);
}

fn spawn_reflector<K, P>(
    stream: crate::watch::Feed<K>,
    ix: Indexer<K, P>,
    inner: Arc<Inner>,
    shutdown: CancellationToken,
) where
    P: Packing<K>,
    K: Resource<DynamicType = ()>
        + Trim
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    tokio::spawn(async move {
        // The caches trim what SCIM never reads (see `cache`).
        let stream = stream.default_backoff();
        futures::pin_mut!(stream);
        let mut building = None;
        let mut listing = ListTimer::default();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = stream.next() => match ev {
                    Some(Ok(ev)) => {
                        listing.see(&ev, &K::kind(&()));
                        apply_event(&inner, ix, &mut building, &ev);
                        inner.changed.notify_waiters();
                    }
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

/// Times each (re)list of one watch, for the log: start-up is mostly the initial list.
#[derive(Default)]
struct ListTimer {
    started: Option<std::time::Instant>,
    objects: usize,
}

impl ListTimer {
    fn see<K>(&mut self, ev: &watcher::Event<K>, kind: &str) {
        match ev {
            watcher::Event::Init => {
                self.started = Some(std::time::Instant::now());
                self.objects = 0;
            }
            watcher::Event::InitApply(_) => self.objects += 1,
            watcher::Event::InitDone => {
                if let Some(started) = self.started.take() {
                    tracing::info!(kind, objects = self.objects, elapsed = ?started.elapsed(), "listed");
                }
            }
            _ => {}
        }
    }
}

fn read_index(lock: &RwLock<Index>) -> RwLockReadGuard<'_, Index> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

/// What an indexed lookup asks for: an id, or a key of one index field (as the index
/// stores it: lower-cased for caseExact=false attributes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Id(String),
    Field(usize, String),
}

/// The objects that may satisfy one of `probes` (a superset: callers check the real
/// attribute), at most once each, in the default list order. O(hits), not O(tenant).
fn probe<K, P>(cache: &Cache<K, P>, index: &RwLock<Index>, probes: &[Probe]) -> Vec<Arc<K>>
where
    K: Resource<DynamicType = ()> + Trim + Clone + 'static,
    P: Packing<K>,
{
    let mut ids: Vec<Arc<str>> = Vec::new();
    {
        let ix = read_index(index);
        for p in probes {
            match p {
                Probe::Id(id) => ids.push(Arc::from(id.as_str())),
                Probe::Field(field, key) => ix.lookup(*field, key, &mut ids),
            }
        }
    }
    ids.sort();
    ids.dedup();
    let mut objs: Vec<Arc<K>> = ids.iter().filter_map(|id| cache.get(id)).collect();
    sort_default(&mut objs);
    objs
}

/// Sort into the default list order: SCIM `meta.created`, then id.
fn sort_default<K: Resource>(objs: &mut [Arc<K>]) {
    objs.sort_by(|a, b| {
        let (a, b) = (a.meta(), b.meta());
        index::created_key(a)
            .cmp(&index::created_key(b))
            .then_with(|| a.name.cmp(&b.name))
    });
}

/// The objects of `ids` that are (still) in the cache.
fn objects<K, P>(cache: &Cache<K, P>, ids: &[Arc<str>]) -> Vec<Arc<K>>
where
    K: Resource<DynamicType = ()> + Trim + Clone + 'static,
    P: Packing<K>,
{
    ids.iter().filter_map(|id| cache.get(id)).collect()
}

/// Could `s` be the name of a Kubernetes object (a DNS subdomain)? Only such values are
/// looked up on the API server (a `/` would address a subresource).
pub(crate) fn is_object_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// Object `id` as the API server has it now, trimmed as the caches keep objects; None when
/// it doesn't exist (or can't be an object name). What a replica answers on a cache miss:
/// a write made through another replica reaches this one's cache only when its watch
/// delivers it (measured: 12 of 300 GETs right after a create landed before it), and a
/// 404 for an object that exists would tell the client it was deleted.
async fn fetch_opt<K>(api: &Api<K>, id: &str, what: &str) -> Result<Option<Arc<K>>, ScimError>
where
    K: Resource + Trim + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    if !is_object_name(id) {
        return Ok(None);
    }
    let found = with_timeout(api.get_opt(id))
        .await?
        .map_err(|e| api_error(e, &format!("{what} {id}")))?;
    Ok(found.map(|mut obj| {
        // Counted by the replica tests (tests/e2e/replicas.rs): keep the wording.
        tracing::debug!(kind = what, id, "cache miss answered by the API server");
        obj.trim();
        Arc::new(obj)
    }))
}

/// One SCIM kind (users, groups) as the confirmations of cache misses see it.
struct ScimKind<K: ScimObject> {
    what: &'static str,
    cache: fn(&Inner) -> &Cache<K, Json>,
    index: fn(&Inner) -> &RwLock<Index>,
    /// Its unique name: the index field, the claim (see `names`), the value.
    name_field: usize,
    claim: names::NameKind,
    name: fn(&K) -> &str,
}

const USERS: ScimKind<ScimUser> = ScimKind {
    what: "User",
    cache: |i| &i.users,
    index: |i| &i.user_index,
    name_field: index::USER_NAME,
    claim: names::NameKind::UserName,
    name: |u| &u.spec.user_name,
};

const GROUPS: ScimKind<ScimGroup> = ScimKind {
    what: "Group",
    cache: |i| &i.groups,
    index: |i| &i.group_index,
    name_field: index::GROUP_DISPLAY_NAME,
    claim: names::NameKind::GroupDisplayName,
    name: |g| &g.spec.display_name,
};

impl Store {
    /// Object `id` of `kind` from the cache; on a miss, from the API server (404 only
    /// when it has none either: see [`fetch_opt`]).
    async fn confirmed<K>(&self, kind: &ScimKind<K>, id: &str) -> Result<Arc<K>, ScimError>
    where
        K: Resource<DynamicType = ()> + Trim + Clone + std::fmt::Debug + ScimObject,
    {
        self.ensure_synced()?;
        if let Some(obj) = (kind.cache)(&self.inner).get(id) {
            return Ok(obj);
        }
        fetch_opt(&Api::all(self.client().clone()), id, kind.what)
            .await?
            .ok_or_else(|| ScimError::not_found(format!("{} {id} not found", kind.what)))
    }

    /// The objects of `kind` that may satisfy one of `probes` (a superset: callers check
    /// the attributes), in the default list order: O(hits) from the cache, plus, for each
    /// `id` or unique-name probe the cache has no answer for, what the API server has: an
    /// object created a moment ago through another replica (Entra looks it up next, and an
    /// empty answer makes it create the object again, which then fails as a duplicate). A
    /// name leads to its id through the name's cluster-wide claim (see `names`). Entra's
    /// lookup before each create is such a miss: one Lease GET, usually a 404.
    async fn probed<K>(
        &self,
        kind: &ScimKind<K>,
        probes: &[Probe],
    ) -> Result<Vec<Arc<K>>, ScimError>
    where
        K: Resource<DynamicType = ()> + Trim + Clone + std::fmt::Debug + ScimObject,
    {
        let cache = (kind.cache)(&self.inner);
        let mut found = probe(cache, (kind.index)(&self.inner), probes);
        let api = Api::<K>::all(self.client().clone());
        let named = |obj: &K, key: &str| (kind.name)(obj).to_lowercase() == key;
        let known = |id: &str, out: &[Arc<K>]| {
            cache.contains(id) || out.iter().any(|o| o.meta().name.as_deref() == Some(id))
        };
        let mut missed: Vec<Arc<K>> = Vec::new();
        for p in probes {
            let fetched = match p {
                Probe::Id(id) if !known(id, &missed) => fetch_opt(&api, id, kind.what).await?,
                Probe::Field(field, key)
                    if *field == kind.name_field && !found.iter().any(|o| named(o, key)) =>
                {
                    match self.name_holder(kind.claim, key).await? {
                        Some(holder) if !known(&holder, &missed) => {
                            fetch_opt(&api, &holder, kind.what)
                                .await?
                                .filter(|o| named(o, key))
                        }
                        _ => None,
                    }
                }
                _ => None,
            };
            missed.extend(fetched);
        }
        if !missed.is_empty() {
            found.extend(missed);
            sort_default(&mut found);
        }
        Ok(found)
    }

    /// Whether an object of `kind` other than `except_id` holds the unique `name`
    /// (case-insensitively). The cache answers "free" (the cluster-wide name claim then
    /// settles races with other replicas); "taken" is confirmed against the API server
    /// first, because the holder may have been deleted or renamed through another replica
    /// a moment ago.
    async fn name_taken<K>(
        &self,
        kind: &ScimKind<K>,
        name: &str,
        except_id: Option<&str>,
    ) -> Result<bool, ScimError>
    where
        K: Resource<DynamicType = ()> + Trim + Clone + std::fmt::Debug + ScimObject,
    {
        // Equal ignoring ASCII case implies equal lower-cased, so the index finds them all.
        let key = Probe::Field(kind.name_field, name.to_lowercase());
        let holders: Vec<String> =
            probe((kind.cache)(&self.inner), (kind.index)(&self.inner), &[key])
                .iter()
                .filter(|o| {
                    (kind.name)(o).eq_ignore_ascii_case(name)
                        && o.meta().name.as_deref() != except_id
                })
                .filter_map(|o| o.meta().name.clone())
                .collect();
        let api = Api::<K>::all(self.client().clone());
        for holder in holders {
            let now = fetch_opt(&api, &holder, kind.what).await?;
            if now.is_some_and(|o| (kind.name)(&o).eq_ignore_ascii_case(name)) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// What the caches and the API client need of a SCIM kind's objects.
trait ScimObject: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static {}
impl ScimObject for ScimUser {}
impl ScimObject for ScimGroup {}

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

/// Run one API call under its timeout, and within the request's deadline; running out
/// of time is a 503.
async fn with_timeout<T>(
    fut: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<Result<T, kube::Error>, ScimError> {
    tokio::time::timeout_at(deadline_within(API_TIMEOUT), fut)
        .await
        .map_err(|_| out_of_time())
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

/// A store fed by hand through the same event path as the watches (unit tests and
/// in-process benchmarks). Its API server agrees with the caches (it answers reads of
/// ScimUsers, ScimGroups and shards from them, 404 for anything else) except where told
/// otherwise with [`TestFeed::api_has`] / [`TestFeed::api_lacks`], as on a replica whose
/// watch lags behind writes made through another one. It fails every write (503).
#[cfg(test)]
pub(crate) struct TestFeed {
    pub store: Store,
    api: Arc<FakeApi>,
    building_users: Option<Index>,
    building_groups: Option<Index>,
}

#[cfg(test)]
#[derive(Default)]
struct FakeApi {
    /// The store it serves (made after the API client it holds).
    served: std::sync::OnceLock<std::sync::Weak<Inner>>,
    reachable: bool,
    /// Nothing is ever answered (a SIGSTOPped API server).
    frozen: AtomicBool,
    /// (collection, name) -> the object's JSON as the API server has it (None: deleted),
    /// where that differs from the caches.
    ahead: Mutex<std::collections::HashMap<ApiKey, Option<Vec<u8>>>>,
}

/// (plural collection, object name) of an object of the [`FakeApi`].
#[cfg(test)]
type ApiKey = (String, String);

#[cfg(test)]
impl TestFeed {
    /// A synced store holding `users` and `groups` (one relist each). Needs a Tokio runtime.
    pub fn new(users: Vec<ScimUser>, groups: Vec<ScimGroup>) -> TestFeed {
        TestFeed::build(users, groups, true)
    }

    /// The same, with an API server that can't be reached at all.
    pub fn unreachable(users: Vec<ScimUser>, groups: Vec<ScimGroup>) -> TestFeed {
        TestFeed::build(users, groups, false)
    }

    /// The same, with a frozen API server: connections are taken, nothing is answered.
    pub fn frozen(users: Vec<ScimUser>, groups: Vec<ScimGroup>) -> TestFeed {
        let feed = TestFeed::build(users, groups, true);
        feed.api.frozen.store(true, Ordering::Release);
        feed
    }

    fn build(users: Vec<ScimUser>, groups: Vec<ScimGroup>, reachable: bool) -> TestFeed {
        let api = Arc::new(FakeApi {
            reachable,
            ..FakeApi::default()
        });
        let serving = api.clone();
        let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let answer = serving.answer(&req);
            let frozen = serving.frozen.load(Ordering::Acquire);
            async move {
                if frozen {
                    std::future::pending::<()>().await;
                }
                answer
            }
        });
        let client = Client::new(service, "default");
        let inner = Arc::new(Inner {
            client,
            shard_fill_bytes: DEFAULT_SHARD_FILL_BYTES as usize,
            namespace: "kube-scim".into(),
            users: Cache::default(),
            groups: Cache::default(),
            shards: Cache::default(),
            user_index: RwLock::new(Index::new(index::USER_FIELDS)),
            group_index: RwLock::new(Index::new(index::GROUP_FIELDS)),
            changed: Notify::new(),
            synced: AtomicBool::new(true),
            claims: Mutex::new(HashSet::new()),
            group_writes: (0..GROUP_WRITE_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        });
        let _ = api.served.set(Arc::downgrade(&inner));
        let mut feed = TestFeed {
            store: Store { inner },
            api,
            building_users: None,
            building_groups: None,
        };
        feed.relist_users(users);
        feed.relist_groups(groups);
        feed.shard(watcher::Event::Init);
        feed.shard(watcher::Event::InitDone);
        feed
    }

    /// The API server has `obj` (a ScimUser, ScimGroup, ScimGroupMembers or Lease, of
    /// the plural `collection`) as given, whatever the caches hold.
    pub fn api_has(&self, collection: &str, obj: &impl serde::Serialize) {
        let json = serde_json::to_value(obj).expect("serializable");
        let name = json["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        self.api_ahead(collection, &name, Some(json.to_string().into_bytes()));
    }

    /// The API server has no `name` in `collection`, whatever the caches hold.
    pub fn api_lacks(&self, collection: &str, name: &str) {
        self.api_ahead(collection, name, None);
    }

    fn api_ahead(&self, collection: &str, name: &str, json: Option<Vec<u8>>) {
        self.api
            .ahead
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((collection.to_string(), name.to_string()), json);
    }

    pub fn user(&mut self, ev: watcher::Event<ScimUser>) {
        let inner = self.store.inner.clone();
        apply_event(&inner, USER_INDEXER, &mut self.building_users, &ev);
    }

    pub fn group(&mut self, ev: watcher::Event<ScimGroup>) {
        let inner = self.store.inner.clone();
        apply_event(&inner, GROUP_INDEXER, &mut self.building_groups, &ev);
    }

    pub fn shard(&mut self, ev: watcher::Event<ScimGroupMembers>) {
        let inner = self.store.inner.clone();
        apply_event(&inner, SHARD_INDEXER, &mut None, &ev);
    }

    pub fn relist_users(&mut self, users: Vec<ScimUser>) {
        self.user(watcher::Event::Init);
        for u in users {
            self.user(watcher::Event::InitApply(u));
        }
        self.user(watcher::Event::InitDone);
    }

    pub fn relist_groups(&mut self, groups: Vec<ScimGroup>) {
        self.group(watcher::Event::Init);
        for g in groups {
            self.group(watcher::Event::InitApply(g));
        }
        self.group(watcher::Event::InitDone);
    }
}

#[cfg(test)]
impl FakeApi {
    /// GETs of one object answered as `ahead` says, else from the served caches, else 404;
    /// writes (and everything when unreachable) fail as an unreachable server does.
    fn answer(
        &self,
        req: &http::Request<kube::client::Body>,
    ) -> Result<http::Response<kube::client::Body>, std::io::Error> {
        let unreachable = || std::io::Error::other("no API server in unit tests");
        let inner = self
            .served
            .get()
            .and_then(std::sync::Weak::upgrade)
            .filter(|_| self.reachable)
            .ok_or_else(unreachable)?;
        if req.method() != http::Method::GET {
            return Err(unreachable());
        }
        let (path, name) = req.uri().path().rsplit_once('/').unwrap_or_default();
        let collection = path.rsplit('/').next().unwrap_or_default();
        let ahead = self
            .ahead
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(collection.to_string(), name.to_string()))
            .cloned();
        let found = match ahead {
            Some(json) => json,
            None => match collection {
                "scimusers" => inner.users.get(name).map(|o| serde_json::to_vec(&*o)),
                "scimgroups" => inner.groups.get(name).map(|o| serde_json::to_vec(&*o)),
                "scimgroupmembers" => inner.shards.get(name).map(|o| serde_json::to_vec(&*o)),
                _ => None,
            }
            .and_then(Result::ok),
        };
        fake_response(found)
    }
}

/// 200 with `body`, or the API server's 404.
#[cfg(test)]
fn fake_response(
    body: Option<Vec<u8>>,
) -> Result<http::Response<kube::client::Body>, std::io::Error> {
    let (status, body) = match body {
        Some(body) => (200, body),
        None => (
            404,
            serde_json::to_vec(&serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "reason": "NotFound", "code": 404, "message": "not found"
            }))
            .map_err(std::io::Error::other)?,
        ),
    };
    http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(kube::client::Body::from(body))
        .map_err(std::io::Error::other)
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

    /// An API call made for a SCIM request ends at the request's deadline when that comes
    /// before the call's own bound; outside a request the call's own bound holds.
    #[tokio::test(start_paused = true)]
    async fn calls_end_at_the_request_deadline() {
        let hung = || std::future::pending::<Result<(), kube::Error>>();
        let start = tokio::time::Instant::now();
        let cut = within_deadline(start + Duration::from_secs(3), with_timeout(hung())).await;
        assert!(matches!(cut, Err(ScimError::Unavailable { .. })));
        assert_eq!(start.elapsed(), Duration::from_secs(3));

        let start = tokio::time::Instant::now();
        let own = within_deadline(start + Duration::from_secs(60), with_timeout(hung())).await;
        assert!(matches!(own, Err(ScimError::Unavailable { .. })));
        assert_eq!(start.elapsed(), API_TIMEOUT);

        let start = tokio::time::Instant::now();
        assert!(with_timeout(hung()).await.is_err());
        assert_eq!(start.elapsed(), API_TIMEOUT);

        // Waits too; outside a request there is nothing to cut them.
        let start = tokio::time::Instant::now();
        let wait = within_deadline(
            start + Duration::from_secs(2),
            until_deadline(std::future::pending::<()>()),
        )
        .await;
        assert!(matches!(wait, Err(ScimError::Unavailable { .. })));
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert_eq!(until_deadline(async { 7 }).await, Ok(7));
        assert_eq!(request_time_left(), None);
        within_deadline(start + Duration::from_secs(10), async {
            assert_eq!(request_time_left(), Some(Duration::from_secs(8)));
        })
        .await;
    }

    /// What kube-apiserver 1.20 answers while etcd is gone (measured with etcd SIGKILLed,
    /// see tests/e2e/chaos.rs): it holds a request while it waits for etcd, then answers a
    /// write 500 `rpc error: code = Unavailable desc = transport is closing`, a namespaced
    /// create (a name claim) 500 `resource quota evaluation timed out` after 10 s, and a
    /// read 504 `Timeout` after 34-60 s (the store's own bound comes first). Each of these,
    /// and etcd's own timeout, throttling and an API server not ready, is a 503 with
    /// Retry-After: the client retries, never a 500.
    #[test]
    fn storage_outage_answers_are_503_with_retry_after() {
        for (code, reason, message) in [
            (
                500,
                "InternalError",
                "rpc error: code = Unavailable desc = transport is closing",
            ),
            (
                500,
                "InternalError",
                "Internal error occurred: resource quota evaluation timed out",
            ),
            (500, "InternalError", "etcdserver: request timed out"),
            (
                504,
                "Timeout",
                "Timeout: request did not complete within requested timeout 34s",
            ),
            (
                503,
                "ServiceUnavailable",
                "the server is currently unable to handle the request",
            ),
            (
                429,
                "TooManyRequests",
                "the server has received too many requests",
            ),
        ] {
            let status: kube::core::Status = serde_json::from_value(serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code
            }))
            .expect("a Status");
            let e = api_error(kube::Error::Api(Box::new(status)), "User");
            assert!(
                matches!(e, ScimError::Unavailable { retry_after_secs, .. } if retry_after_secs > 0),
                "{code} {message}: {e:?}"
            );
        }
    }

    #[test]
    fn resource_versions_compare_numerically() {
        assert!(rv_at_least(Some("10"), "9"));
        assert!(!rv_at_least(Some("9"), "10"));
        assert!(rv_at_least(Some("abc"), "abc"));
        assert!(!rv_at_least(None, "1"));
    }
}
