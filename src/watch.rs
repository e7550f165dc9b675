//! A watcher whose initial list is decoded while it arrives.
//!
//! Start-up is the initial list of every ScimUser, and two things about kube's watcher
//! made it slow or heavy at tenant size (measured at 20,000 Entra-shaped users, 42 MB of
//! list JSON, on the loaded 2-core machine):
//! - kube leaves `resourceVersion=0` out of a list that has a limit, so its default pages
//!   of 500 were a consistent read from etcd: 40 sequential pages, 16–31 s to ready,
//!   where the API server's watch cache answers the whole list in 1.6–5 s.
//! - Unpaged, kube reads the response whole (the body, a contiguous copy and a `String`
//!   of it) and decodes every object before the first event: 350 MB peak for a SCIM
//!   process that settles at ~80 MB, ~1.7 GB extrapolated to 100,000 users.
//!
//! So this watcher asks the watch cache for the whole list in one response and hands on
//! each item as soon as it is parsed: the process holds a few objects beyond what its
//! caches keep. The events are kube's (`Init`, `InitApply`…, `InitDone`, then `Apply` /
//! `Delete`), so the caches' relist semantics (buffer, then swap in whole) are unchanged.
//! The watch that follows is a plain watch from the list's resourceVersion, with
//! bookmarks, re-listing on 410 Gone.
//!
//! The watch cache encodes one list response on one core, into one buffer: at 100,000
//! ScimUsers (174 MB of JSON) 7–10 s on an idle 2-core control plane, 23–27 s at a
//! restart beside the controller's own lists. A [`Partitions`] label can split the list
//! into concurrent requests by label selector (opt-in, `--user-list-requests`): on that
//! idle control plane 8 lists of two sixteenths each took 3.1–4.8 s where the single
//! list took 7–10 s (the same 8 in a row: 7.7–8.3 s, so the gain is the second core, not
//! less work; with both processes listing at once there was none, docs/scale.md). The
//! lists each answer at their own resourceVersion, so the watch starts at the oldest and
//! the events up to the newest are checked against the versions the lists handed on
//! ([`Versions`]): an object moving between selectors meanwhile (a user gaining the
//! label) is handed on once per version, newest last, and a replayed event older than
//! what a list showed is skipped.
//!
//! Only for full objects: metadata-only watches (`PartialObjectMeta`) and paged
//! (`--initial-list paged`) lists stay with kube's watcher.
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use http_body_util::BodyExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta;
use kube::api::{Api, ListParams, VersionMatch, WatchEvent, WatchParams};
use kube::core::Status;
use kube::runtime::watcher::{self, Event, ListSemantic};
use kube::Resource;
use serde::de::{self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess};
use tokio::sync::mpsc;

/// Events parsed ahead of the consumer: bounds what the list holds in flight.
const IN_FLIGHT: usize = 256;
/// Retry delays after a failed list or watch (doubling, reset by the next success).
const BACKOFF_MIN: Duration = Duration::from_millis(800);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// The server ends a watch after this long; it is then resumed from the last version.
const WATCH_TIMEOUT_SECS: u32 = 290;

type Item<K> = Result<Event<K>, watcher::Error>;

/// `event` with each object it carries converted by `f` (for caches that keep a compact
/// form of the watched objects).
pub fn map_event<K, T>(event: Event<K>, mut f: impl FnMut(K) -> T) -> Event<T> {
    match event {
        Event::Apply(o) => Event::Apply(f(o)),
        Event::Delete(o) => Event::Delete(f(o)),
        Event::Init => Event::Init,
        Event::InitApply(o) => Event::InitApply(f(o)),
        Event::InitDone => Event::InitDone,
    }
}

/// A watch as a stream of events.
pub type Feed<K> = BoxStream<'static, Item<K>>;

/// kube's `watcher(api, config)`, with the initial list streamed (see the module doc)
/// when `config` lists from the watch cache without pages (`InitialList::Cache`).
pub fn watcher<K>(api: Api<K>, config: watcher::Config) -> BoxStream<'static, Item<K>>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    partitioned_watcher(api, config, None)
}

/// [`watcher`], with the initial list split by `partitions` into concurrent requests.
pub fn partitioned_watcher<K>(
    api: Api<K>,
    config: watcher::Config,
    partitions: Option<Partitions>,
) -> BoxStream<'static, Item<K>>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    if config.list_semantic != ListSemantic::Any || config.page_size.is_some() {
        return watcher::watcher(api, config).boxed();
    }
    let (tx, rx) = mpsc::channel(IN_FLIGHT);
    // Ends when the stream is dropped (its next send fails).
    tokio::spawn(run(api, config, partitions, tx));
    futures::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|ev| (ev, rx)) },
    )
    .boxed()
}

/// A label that buckets the watched objects (`0..buckets`), to split the initial list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partitions {
    pub label: &'static str,
    pub buckets: u32,
    /// Concurrent list requests for the buckets; one more lists every object without a
    /// bucket value (unlabelled, or a value out of range).
    pub lists: u32,
}

impl Partitions {
    /// One label selector per list request, each ANDed with `base`: together they
    /// select every object `base` selects, each exactly once at a given moment.
    fn selectors(&self, base: Option<&str>) -> Vec<String> {
        let buckets: Vec<u32> = (0..self.buckets).collect();
        let lists = self.lists.clamp(1, self.buckets.max(1));
        let values = |keep: &dyn Fn(u32) -> bool| {
            buckets
                .iter()
                .filter(|b| keep(**b))
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut out: Vec<String> = (0..lists)
            .map(|i| format!("{} in ({})", self.label, values(&|b| b % lists == i)))
            .collect();
        // `notin` also matches objects without the label.
        out.push(format!("{} notin ({})", self.label, values(&|_| true)));
        match base.filter(|b| !b.is_empty()) {
            Some(b) => out.into_iter().map(|s| format!("{b},{s}")).collect(),
            None => out,
        }
    }
}

type Key = (Option<String>, String);

fn key_of<K: Resource>(obj: &K) -> Key {
    let meta = obj.meta();
    (
        meta.namespace.clone(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// resourceVersions are etcd revisions: opaque to clients by contract, numbers in every
/// API server there is. Ordering them is what lets lists taken at different versions be
/// joined; where one is not a number the watcher lists without partitions.
fn version_number(v: Option<&str>) -> Option<u64> {
    v?.parse().ok()
}

/// The newest version of each object the partitioned lists handed on.
#[derive(Default, Debug)]
struct Versions(HashMap<Key, u64>);

impl Versions {
    /// Whether an object at `version` is newer than what was handed on for `key`; if so
    /// it is recorded (to be handed on).
    fn newer(&mut self, key: Key, version: Option<u64>) -> bool {
        let Some(v) = version else { return true };
        match self.0.get(&key) {
            Some(seen) if *seen >= v => false,
            _ => {
                self.0.insert(key, v);
                true
            }
        }
    }

    /// Whether a watch event at `version` is already in what the lists handed on.
    fn covers(&self, key: &Key, version: u64) -> bool {
        self.0.get(key).is_some_and(|seen| *seen >= version)
    }
}

/// The watch after partitioned lists starts at the oldest list's version; events up to
/// `until` (the newest) may be in a later list already.
struct Replay {
    versions: Versions,
    until: u64,
}

impl Replay {
    /// Whether a watch event for `key` at `version` is already in what the lists handed on.
    fn skip(&self, key: &Key, version: Option<u64>) -> bool {
        version.is_some_and(|v| self.versions.covers(key, v))
    }

    /// Whether the watch, at `version`, is past every list: nothing after it can be
    /// skipped, and the versions are no longer needed.
    fn passed(&self, version: Option<u64>) -> bool {
        version.is_some_and(|v| v >= self.until)
    }
}

#[derive(Default)]
struct Backoff {
    next: Option<Duration>,
}

impl Backoff {
    async fn wait(&mut self) {
        let delay = self.next.unwrap_or(BACKOFF_MIN);
        self.next = Some((delay * 2).min(BACKOFF_MAX));
        tokio::time::sleep(delay).await;
    }

    fn reset(&mut self) {
        self.next = None;
    }
}

/// List, then watch from the list's version; list again when the watch can't resume.
/// Returns when the receiver is gone.
async fn run<K>(
    api: Api<K>,
    config: watcher::Config,
    mut partitions: Option<Partitions>,
    tx: mpsc::Sender<Item<K>>,
) where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let mut backoff = Backoff::default();
    'list: loop {
        if tx.send(Ok(Event::Init)).await.is_err() {
            return;
        }
        let listed = match partitions {
            Some(p) => list_partitioned(&api, &config, p, &tx).await,
            None => list(&api, &config, &tx, None).await,
        };
        let (mut version, mut replay) = match listed {
            Ok(Listed::Version { version, replay }) => (version, replay),
            Ok(Listed::Unordered) => {
                tracing::warn!("resourceVersions are not numbers; listing in one request");
                partitions = None;
                continue 'list;
            }
            Ok(Listed::Stopped) => return,
            Err(e) => {
                if !report(&tx, &mut backoff, e).await {
                    return;
                }
                continue 'list;
            }
        };
        if tx.send(Ok(Event::InitDone)).await.is_err() {
            return;
        }
        backoff.reset();
        loop {
            let mut params = WatchParams::default().timeout(WATCH_TIMEOUT_SECS);
            params.bookmarks = config.bookmarks;
            params.label_selector.clone_from(&config.label_selector);
            params.field_selector.clone_from(&config.field_selector);
            let stream = match api.watch(&params, &version).await {
                Ok(stream) => stream,
                Err(e) => {
                    if !report(&tx, &mut backoff, watcher::Error::WatchStartFailed(e)).await {
                        return;
                    }
                    continue;
                }
            };
            let mut stream = std::pin::pin!(stream);
            while let Some(item) = stream.next().await {
                // The key only while replayed events may need skipping.
                let key = |obj: &K| replay.is_some().then(|| key_of(obj));
                let (event, obj_version, obj_key) = match item {
                    Ok(WatchEvent::Added(obj) | WatchEvent::Modified(obj)) => {
                        let v = obj.meta().resource_version.clone();
                        let k = key(&obj);
                        (Event::Apply(obj), v, k)
                    }
                    Ok(WatchEvent::Deleted(obj)) => {
                        let v = obj.meta().resource_version.clone();
                        let k = key(&obj);
                        (Event::Delete(obj), v, k)
                    }
                    Ok(WatchEvent::Bookmark(b)) => {
                        version = b.metadata.resource_version;
                        if replay
                            .as_ref()
                            .is_some_and(|r| r.passed(version_number(Some(&version))))
                        {
                            replay = None;
                        }
                        continue;
                    }
                    Ok(WatchEvent::Error(status)) => {
                        // 410 Gone: the version is out of the server's window; only a
                        // new list can resync.
                        let gone = status.code == 410;
                        if !report(&tx, &mut backoff, watcher::Error::WatchError(status)).await {
                            return;
                        }
                        if gone {
                            continue 'list;
                        }
                        break;
                    }
                    Err(e) => {
                        if !report(&tx, &mut backoff, watcher::Error::WatchFailed(e)).await {
                            return;
                        }
                        break;
                    }
                };
                let Some(v) = obj_version.filter(|v| !v.is_empty()) else {
                    if !report(&tx, &mut backoff, watcher::Error::NoResourceVersion).await {
                        return;
                    }
                    continue 'list;
                };
                if let (Some(r), Some(k)) = (&replay, &obj_key) {
                    let n = version_number(Some(&v));
                    let skip = r.skip(k, n);
                    if r.passed(n) {
                        replay = None;
                    }
                    if skip {
                        version = v;
                        continue;
                    }
                }
                version = v;
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
                backoff.reset();
            }
            // The server closed the watch (its timeout): resume from `version`.
        }
    }
}

/// Hand `e` on, then wait out the backoff; false when the receiver is gone.
async fn report<K>(tx: &mpsc::Sender<Item<K>>, backoff: &mut Backoff, e: watcher::Error) -> bool {
    if tx.send(Err(e)).await.is_err() {
        return false;
    }
    backoff.wait().await;
    true
}

enum Listed {
    /// The resourceVersion to watch from, and what to skip of the events that follow.
    Version {
        version: String,
        replay: Option<Replay>,
    },
    /// Partitioned lists whose versions can't be ordered.
    Unordered,
    /// The receiver went away mid-list.
    Stopped,
}

/// The lists of `partitions`, at once; their items handed on as they are parsed, each
/// object once per version, newest last.
async fn list_partitioned<K>(
    api: &Api<K>,
    config: &watcher::Config,
    partitions: Partitions,
    tx: &mpsc::Sender<Item<K>>,
) -> Result<Listed, watcher::Error>
where
    K: Resource + Clone + DeserializeOwned + Send + 'static,
{
    let seen = Arc::new(Mutex::new(Versions::default()));
    let lists = partitions
        .selectors(config.label_selector.as_deref())
        .into_iter()
        .map(|selector| {
            let mut config = config.clone();
            config.label_selector = Some(selector);
            let seen = Arc::clone(&seen);
            async move { list(api, &config, tx, Some(seen)).await }
        });
    let mut versions = Vec::new();
    for listed in futures::future::join_all(lists).await {
        match listed? {
            Listed::Version { version, .. } => versions.push(version),
            other => return Ok(other),
        }
    }
    let numbers: Option<Vec<u64>> = versions.iter().map(|v| version_number(Some(v))).collect();
    let Some(numbers) = numbers else {
        return Ok(Listed::Unordered);
    };
    let (Some(oldest), Some(newest)) = (numbers.iter().min(), numbers.iter().max()) else {
        return Err(watcher::Error::NoResourceVersion);
    };
    let replay = (oldest < newest).then(|| Replay {
        versions: std::mem::take(&mut *seen.lock().unwrap_or_else(PoisonError::into_inner)),
        until: *newest,
    });
    Ok(Listed::Version {
        version: oldest.to_string(),
        replay,
    })
}

/// One unpaged list from the watch cache, each item sent as `InitApply` as it is parsed
/// (with `seen`: only when newer than what another list handed on).
async fn list<K>(
    api: &Api<K>,
    config: &watcher::Config,
    tx: &mpsc::Sender<Item<K>>,
    seen: Option<Arc<Mutex<Versions>>>,
) -> Result<Listed, watcher::Error>
where
    K: Resource + Clone + DeserializeOwned + Send + 'static,
{
    let failed = watcher::Error::InitialListFailed;
    let mut params = ListParams::default();
    params.label_selector.clone_from(&config.label_selector);
    params.field_selector.clone_from(&config.field_selector);
    params.resource_version = Some("0".into());
    params.version_match = Some(VersionMatch::NotOlderThan);
    let request = kube::core::Request::new(api.resource_url())
        .list(&params)
        .map_err(|e| failed(kube::Error::BuildRequest(e)))?;
    let client = api.clone().into_client();
    let response = client
        .send(request.map(kube::client::Body::from))
        .await
        .map_err(failed)?;
    let code = response.status();
    if !code.is_success() {
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(failed)?
            .to_bytes();
        let status = serde_json::from_slice::<Status>(&body).unwrap_or_else(|_| {
            Status::failure(&String::from_utf8_lossy(&body), "").with_code(code.as_u16())
        });
        return Err(failed(kube::Error::Api(Box::new(status))));
    }
    let body = response
        .into_body()
        .into_data_stream()
        .map_err(std::io::Error::other);
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(body));
    let tx = tx.clone();
    // serde_json reads synchronously: parse on a blocking thread, one item at a time.
    let parsed = tokio::task::spawn_blocking(move || {
        decode_list(
            std::io::BufReader::with_capacity(64 * 1024, reader),
            |obj: K| match &seen {
                None => tx.blocking_send(Ok(Event::InitApply(obj))).is_ok(),
                Some(seen) => {
                    // Held while sending, so that a newer version checked after this one
                    // is also sent after it.
                    let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
                    let v = version_number(obj.meta().resource_version.as_deref());
                    !seen.newer(key_of(&obj), v)
                        || tx.blocking_send(Ok(Event::InitApply(obj))).is_ok()
                }
            },
        )
    })
    .await
    .map_err(|e| failed(kube::Error::ReadEvents(std::io::Error::other(e))))?;
    match parsed {
        Ok(Decoded::Done(Some(v))) if !v.is_empty() => Ok(Listed::Version {
            version: v,
            replay: None,
        }),
        Ok(Decoded::Done(_)) => Err(watcher::Error::NoResourceVersion),
        Ok(Decoded::Stopped) => Ok(Listed::Stopped),
        Err(e) => Err(failed(kube::Error::SerdeError(e))),
    }
}

#[derive(Debug, PartialEq)]
enum Decoded {
    /// The whole list was read; its `metadata.resourceVersion`.
    Done(Option<String>),
    /// `each` asked to stop.
    Stopped,
}

/// Read a list object (`{"items": [...], "metadata": {...}, ...}`, keys in any order),
/// calling `each` on every item as soon as it is parsed; `each` returns false to stop.
fn decode_list<K, R>(reader: R, mut each: impl FnMut(K) -> bool) -> serde_json::Result<Decoded>
where
    K: DeserializeOwned,
    R: std::io::Read,
{
    let mut stopped = false;
    let mut de = serde_json::Deserializer::from_reader(reader);
    let seed = ListSeed {
        each: &mut each,
        stopped: &mut stopped,
        kind: PhantomData,
    };
    match seed.deserialize(&mut de) {
        Ok(version) => {
            de.end()?;
            Ok(Decoded::Done(version))
        }
        Err(_) if stopped => Ok(Decoded::Stopped),
        Err(e) => Err(e),
    }
}

struct ListSeed<'a, K, F> {
    each: &'a mut F,
    stopped: &'a mut bool,
    kind: PhantomData<fn() -> K>,
}

impl<'de, K: DeserializeOwned, F: FnMut(K) -> bool> DeserializeSeed<'de> for ListSeed<'_, K, F> {
    type Value = Option<String>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, K: DeserializeOwned, F: FnMut(K) -> bool> de::Visitor<'de> for ListSeed<'_, K, F> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a Kubernetes list object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut version = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match &*key {
                "items" => map.next_value_seed(ItemsSeed {
                    each: &mut *self.each,
                    stopped: &mut *self.stopped,
                    kind: PhantomData,
                })?,
                "metadata" => version = map.next_value::<ListMeta>()?.resource_version,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(version)
    }
}

struct ItemsSeed<'a, K, F> {
    each: &'a mut F,
    stopped: &'a mut bool,
    kind: PhantomData<fn() -> K>,
}

impl<'de, K: DeserializeOwned, F: FnMut(K) -> bool> DeserializeSeed<'de> for ItemsSeed<'_, K, F> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        // `null` for an empty list is read as unit.
        d.deserialize_any(self)
    }
}

impl<'de, K: DeserializeOwned, F: FnMut(K) -> bool> de::Visitor<'de> for ItemsSeed<'_, K, F> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of objects")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(obj) = seq.next_element::<K>()? {
            if !(self.each)(obj) {
                *self.stopped = true;
                return Err(de::Error::custom("the watch was dropped"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ScimUser;
    use serde_json::json;

    fn user(name: &str) -> serde_json::Value {
        json!({"apiVersion": "scim.kubescim.io/v1alpha1", "kind": "ScimUser",
               "metadata": {"name": name, "resourceVersion": "5",
                            "managedFields": [{"manager": "x", "operation": "Update"}]},
               "spec": {"userName": format!("{name}@x.org"), "active": true},
               "status": {"groupCount": 1}})
    }

    fn names(list: &serde_json::Value) -> (Vec<String>, serde_json::Result<Decoded>) {
        let bytes = serde_json::to_vec(list).unwrap();
        let mut got = Vec::new();
        let r = decode_list(&bytes[..], |u: ScimUser| {
            got.push(u.metadata.name.unwrap_or_default());
            true
        });
        (got, r)
    }

    /// The API server writes a custom resource list's keys sorted: items come before
    /// the metadata that carries the version.
    #[test]
    fn items_are_handed_on_in_order_and_the_version_is_read_wherever_it_is() {
        for list in [
            json!({"apiVersion": "v1", "items": [user("a"), user("b")], "kind": "ScimUserList",
                   "metadata": {"continue": "", "resourceVersion": "42"}}),
            json!({"kind": "ScimUserList", "metadata": {"resourceVersion": "42"},
                   "items": [user("a"), user("b")], "apiVersion": "v1"}),
        ] {
            let (got, r) = names(&list);
            assert_eq!(got, ["a", "b"]);
            assert_eq!(r.unwrap(), Decoded::Done(Some("42".into())));
        }
    }

    #[test]
    fn an_empty_list_may_have_null_items() {
        for items in [json!(null), json!([])] {
            let (got, r) = names(&json!({"items": items, "metadata": {"resourceVersion": "7"}}));
            assert!(got.is_empty());
            assert_eq!(r.unwrap(), Decoded::Done(Some("7".into())));
        }
        let (_, r) = names(&json!({"items": []}));
        assert_eq!(r.unwrap(), Decoded::Done(None));
    }

    #[test]
    fn a_bad_item_or_a_truncated_body_fails_the_list() {
        let (_, r) = names(&json!({"items": [user("a"), {"metadata": 3}],
                                   "metadata": {"resourceVersion": "1"}}));
        assert!(r.is_err());
        let bytes = serde_json::to_vec(&json!({"items": [user("a"), user("b")],
                                               "metadata": {"resourceVersion": "1"}}))
        .unwrap();
        let cut = &bytes[..bytes.len() / 2];
        let mut seen = 0;
        let r = decode_list(cut, |_: ScimUser| {
            seen += 1;
            true
        });
        assert!(r.is_err());
        assert_eq!(seen, 1, "what was parsed before the cut was handed on");
    }

    #[test]
    fn partition_selectors_cover_every_bucket_once_and_everything_else() {
        let p = Partitions {
            label: "p",
            buckets: 6,
            lists: 4,
        };
        assert_eq!(
            p.selectors(None),
            [
                "p in (0,4)",
                "p in (1,5)",
                "p in (2)",
                "p in (3)",
                "p notin (0,1,2,3,4,5)"
            ]
        );
        assert_eq!(p.selectors(Some("a=b"))[0], "a=b,p in (0,4)");
        assert_eq!(p.selectors(Some(""))[0], "p in (0,4)");
        // More lists than buckets: one per bucket.
        let p = Partitions { lists: 9, ..p };
        assert_eq!(p.selectors(None).len(), 7);
    }

    fn key(name: &str) -> Key {
        (None, name.to_string())
    }

    /// An object seen by two lists (it moved between selectors in between) is handed on
    /// once per version, newest last; an older copy after a newer one is dropped.
    #[test]
    fn lists_hand_on_each_version_once_newest_last() {
        let mut v = Versions::default();
        assert!(v.newer(key("a"), Some(5)));
        assert!(!v.newer(key("a"), Some(5)), "the same version again");
        assert!(!v.newer(key("a"), Some(3)), "an older copy");
        assert!(v.newer(key("a"), Some(8)), "a newer copy");
        assert!(v.newer(key("b"), Some(1)));
        assert!(v.newer(key("c"), None), "no version: handed on");
        assert!(v.newer(key("c"), None));
    }

    /// The watch starts at the oldest list: events the lists already showed are skipped,
    /// later ones (and deletions after a list) are not, and past the newest list nothing is.
    #[test]
    fn replayed_events_already_listed_are_skipped() {
        let mut versions = Versions::default();
        versions.newer(key("a"), Some(10));
        versions.newer(key("b"), Some(4));
        let r = Replay {
            versions,
            until: 12,
        };
        assert!(r.skip(&key("a"), Some(9)), "a's list showed 10");
        assert!(r.skip(&key("a"), Some(10)));
        assert!(!r.skip(&key("b"), Some(6)), "b changed after its list");
        assert!(!r.skip(&key("z"), Some(7)), "not listed: deleted or new");
        assert!(!r.passed(Some(10)));
        assert!(!r.skip(&key("a"), Some(13)));
        assert!(r.passed(Some(13)), "past the newest list");
        assert!(r.passed(Some(12)), "at the newest list (a bookmark)");
        assert!(!r.skip(&key("a"), None));
        assert!(!r.passed(None));
    }

    #[test]
    fn a_dropped_consumer_stops_the_parse() {
        let list = json!({"items": [user("a"), user("b"), user("c")],
                          "metadata": {"resourceVersion": "1"}});
        let bytes = serde_json::to_vec(&list).unwrap();
        let mut seen = 0;
        let r = decode_list(&bytes[..], |_: ScimUser| {
            seen += 1;
            seen < 2
        });
        assert_eq!(r.unwrap(), Decoded::Stopped);
        assert_eq!(seen, 2);
    }
}
