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
//! Only for full objects: metadata-only watches (`PartialObjectMeta`) and paged
//! (`--initial-list paged`) lists stay with kube's watcher.
use std::marker::PhantomData;
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

/// kube's `watcher(api, config)`, with the initial list streamed (see the module doc)
/// when `config` lists from the watch cache without pages (`InitialList::Cache`).
pub fn watcher<K>(api: Api<K>, config: watcher::Config) -> BoxStream<'static, Item<K>>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    if config.list_semantic != ListSemantic::Any || config.page_size.is_some() {
        return watcher::watcher(api, config).boxed();
    }
    let (tx, rx) = mpsc::channel(IN_FLIGHT);
    // Ends when the stream is dropped (its next send fails).
    tokio::spawn(run(api, config, tx));
    futures::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|ev| (ev, rx)) },
    )
    .boxed()
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
async fn run<K>(api: Api<K>, config: watcher::Config, tx: mpsc::Sender<Item<K>>)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let mut backoff = Backoff::default();
    'list: loop {
        if tx.send(Ok(Event::Init)).await.is_err() {
            return;
        }
        let mut version = match list(&api, &config, &tx).await {
            Ok(Listed::Version(v)) => v,
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
                let (event, obj_version) = match item {
                    Ok(WatchEvent::Added(obj) | WatchEvent::Modified(obj)) => {
                        let v = obj.meta().resource_version.clone();
                        (Event::Apply(obj), v)
                    }
                    Ok(WatchEvent::Deleted(obj)) => {
                        let v = obj.meta().resource_version.clone();
                        (Event::Delete(obj), v)
                    }
                    Ok(WatchEvent::Bookmark(b)) => {
                        version = b.metadata.resource_version;
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
    /// The list's resourceVersion, to watch from.
    Version(String),
    /// The receiver went away mid-list.
    Stopped,
}

/// One unpaged list from the watch cache, each item sent as `InitApply` as it is parsed.
async fn list<K>(
    api: &Api<K>,
    config: &watcher::Config,
    tx: &mpsc::Sender<Item<K>>,
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
            |obj| tx.blocking_send(Ok(Event::InitApply(obj))).is_ok(),
        )
    })
    .await
    .map_err(|e| failed(kube::Error::ReadEvents(std::io::Error::other(e))))?;
    match parsed {
        Ok(Decoded::Done(Some(v))) if !v.is_empty() => Ok(Listed::Version(v)),
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
