//! The SCIM store's watch-fed caches.
//!
//! kube's reflector keeps every object as a deserialized `Arc<K>`. For ScimUsers that
//! cost ~7 kB per user (measured: 6,986 bytes of heap per Entra-shaped user, whose JSON is
//! 1,364 bytes): serde_json's maps are B-trees, every string its own allocation, and the
//! controller's status (groups, grants) rides along although SCIM never reads it. At the
//! 100,000 users of a large tenant that alone is ~700 MB. So users and groups are kept as
//! their JSON bytes, trimmed of what SCIM never reads (managedFields, status), and decoded
//! when a request reads them: a few microseconds per object, paid only for the objects a
//! request returns or filters. Member shards stay decoded ([`Shared`]): every member
//! PATCH reads them, and they are few.
//!
//! Semantics follow kube's reflector store: a relist (Init, InitApply…, InitDone) is
//! buffered and swapped in whole, and the cache is ready after its first InitDone.
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use kube::runtime::watcher::Event;
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Notify;

use crate::crd::{ScimGroup, ScimGroupMembers, ScimUser};

/// What a cached object keeps: everything SCIM reads, nothing else.
pub trait Trim {
    fn trim(&mut self);
}

impl Trim for ScimUser {
    fn trim(&mut self) {
        self.metadata.managed_fields = None;
        // Written by the controller for people and kubectl; SCIM computes groups itself.
        self.status = None;
    }
}

impl Trim for ScimGroup {
    fn trim(&mut self) {
        self.metadata.managed_fields = None;
        self.status = None;
    }
}

impl Trim for ScimGroupMembers {
    fn trim(&mut self) {
        self.metadata.managed_fields = None;
    }
}

/// How a cache holds its objects.
pub trait Packing<K>: Send + Sync + 'static {
    type Packed: Send + Sync;
    fn pack(obj: K) -> Option<Self::Packed>;
    fn unpack(packed: &Self::Packed) -> Option<Arc<K>>;
}

/// As compact JSON bytes, decoded on every read.
pub struct Json;

impl<K: Serialize + DeserializeOwned + Send + Sync + 'static> Packing<K> for Json {
    type Packed = Box<[u8]>;

    fn pack(obj: K) -> Option<Box<[u8]>> {
        match serde_json::to_vec(&obj) {
            Ok(bytes) => Some(bytes.into_boxed_slice()),
            Err(e) => {
                // Serializing a value we just deserialized does not fail in practice; if
                // it ever did, a missing object is a 404 the client retries, not a panic.
                tracing::error!(error = %e, "could not pack an object for the cache");
                None
            }
        }
    }

    fn unpack(packed: &Box<[u8]>) -> Option<Arc<K>> {
        match serde_json::from_slice(packed) {
            Ok(obj) => Some(Arc::new(obj)),
            Err(e) => {
                tracing::error!(error = %e, "could not decode a cached object");
                None
            }
        }
    }
}

/// As shared decoded objects (kube's reflector does the same).
pub struct Shared;

impl<K: Send + Sync + 'static> Packing<K> for Shared {
    type Packed = Arc<K>;

    fn pack(obj: K) -> Option<Arc<K>> {
        Some(Arc::new(obj))
    }

    fn unpack(packed: &Arc<K>) -> Option<Arc<K>> {
        Some(Arc::clone(packed))
    }
}

/// One kind's cache, keyed by `metadata.name` (every SCIM kind is cluster-scoped).
pub struct Cache<K, P: Packing<K>> {
    objects: RwLock<HashMap<Arc<str>, P::Packed>>,
    /// The relist being received (between Init and InitDone).
    building: Mutex<Option<HashMap<Arc<str>, P::Packed>>>,
    ready: AtomicBool,
    ready_notify: Notify,
    kind: PhantomData<fn() -> K>,
}

impl<K, P> Default for Cache<K, P>
where
    P: Packing<K>,
{
    fn default() -> Self {
        Cache {
            objects: RwLock::new(HashMap::new()),
            building: Mutex::new(None),
            ready: AtomicBool::new(false),
            ready_notify: Notify::new(),
            kind: PhantomData,
        }
    }
}

impl<K, P> Cache<K, P>
where
    K: Resource + Trim + Clone,
    P: Packing<K>,
{
    /// Apply one watch event.
    pub fn apply(&self, ev: &Event<K>) {
        match ev {
            Event::Init => *lock(&self.building) = Some(HashMap::new()),
            Event::InitApply(obj) => {
                if let Some((name, packed)) = packed::<K, P>(obj) {
                    lock(&self.building)
                        .get_or_insert_with(HashMap::new)
                        .insert(name, packed);
                }
            }
            Event::InitDone => {
                let fresh = lock(&self.building).take().unwrap_or_default();
                *write(&self.objects) = fresh;
                if !self.ready.swap(true, Ordering::AcqRel) {
                    self.ready_notify.notify_waiters();
                }
            }
            Event::Apply(obj) => {
                if let Some((name, packed)) = packed::<K, P>(obj) {
                    write(&self.objects).insert(name, packed);
                }
            }
            Event::Delete(obj) => {
                if let Some(name) = obj.meta().name.as_deref() {
                    write(&self.objects).remove(name);
                }
            }
        }
    }

    /// Wait until the first full list has been applied.
    pub async fn wait_until_ready(&self) {
        loop {
            let notified = self.ready_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.ready.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<K>> {
        read(&self.objects).get(name).and_then(P::unpack)
    }

    /// The object named `name` in the relist being received, if it is there already.
    pub fn relisted(&self, name: &str) -> Option<Arc<K>> {
        lock(&self.building).as_ref()?.get(name).and_then(P::unpack)
    }

    pub fn contains(&self, name: &str) -> bool {
        read(&self.objects).contains_key(name)
    }

    /// Every object, in no particular order.
    pub fn state(&self) -> Vec<Arc<K>> {
        // Decode outside the lock: a long scan must not hold up the watch.
        let packed: Vec<Arc<str>> = read(&self.objects).keys().cloned().collect();
        packed.iter().filter_map(|name| self.get(name)).collect()
    }
}

fn packed<K: Resource + Trim + Clone, P: Packing<K>>(obj: &K) -> Option<(Arc<str>, P::Packed)> {
    let name: Arc<str> = Arc::from(obj.meta().name.as_deref()?);
    let mut obj = obj.clone();
    obj.trim();
    Some((name, P::pack(obj)?))
}

// The maps hold plain data: a panic elsewhere can't leave them inconsistent.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}
fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::user::ScimUserStatus;
    use crate::crd::ScimUserSpec;
    use serde_json::json;

    fn user(id: &str, user_name: &str) -> ScimUser {
        let spec: ScimUserSpec = serde_json::from_value(json!({
            "userName": user_name, "active": true,
            "emails": [{"value": user_name, "type": "work", "primary": true}],
            "name": {"givenName": "A", "familyName": "B"},
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "R&D"}
        }))
        .unwrap();
        let mut u = ScimUser::new(id, spec);
        u.metadata.resource_version = Some("7".into());
        u.status = Some(ScimUserStatus {
            group_count: Some(1),
            ..Default::default()
        });
        u
    }

    #[test]
    fn json_round_trips_what_scim_reads_and_drops_status() {
        let cache: Cache<ScimUser, Json> = Cache::default();
        cache.apply(&Event::Init);
        cache.apply(&Event::InitApply(user("u1", "ann@x.org")));
        cache.apply(&Event::InitDone);
        let got = cache.get("u1").unwrap();
        let want = user("u1", "ann@x.org");
        assert_eq!(got.spec, want.spec);
        assert_eq!(got.metadata, want.metadata);
        assert!(got.status.is_none());
        assert!(cache.contains("u1"));
        assert!(cache.get("u2").is_none());
    }

    #[test]
    fn a_relist_replaces_everything_at_once() {
        let cache: Cache<ScimUser, Json> = Cache::default();
        cache.apply(&Event::Init);
        cache.apply(&Event::InitApply(user("u1", "a")));
        cache.apply(&Event::InitDone);
        cache.apply(&Event::Init);
        cache.apply(&Event::InitApply(user("u2", "b")));
        // Mid-relist the old contents still answer.
        assert!(cache.contains("u1") && !cache.contains("u2"));
        cache.apply(&Event::InitDone);
        assert!(!cache.contains("u1") && cache.contains("u2"));
        cache.apply(&Event::Apply(user("u3", "c")));
        cache.apply(&Event::Delete(user("u2", "b")));
        let mut names: Vec<String> = cache
            .state()
            .iter()
            .filter_map(|u| u.metadata.name.clone())
            .collect();
        names.sort();
        assert_eq!(names, ["u3"]);
    }

    #[tokio::test]
    async fn ready_after_the_first_list() {
        let cache: Arc<Cache<ScimUser, Shared>> = Arc::default();
        let waiter = tokio::spawn({
            let cache = cache.clone();
            async move { cache.wait_until_ready().await }
        });
        cache.apply(&Event::Init);
        assert!(!waiter.is_finished());
        cache.apply(&Event::InitDone);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("ready")
            .expect("joined");
    }
}
