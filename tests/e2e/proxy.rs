//! Two proxies written for the replica and fault tests (issue 10, items 3 and 4), both
//! plain HTTP/1 servers on a loopback port, run by the test's own runtime:
//!
//! - [`ScimBalancer`]: the Service in front of two SCIM replicas, round-robin per request.
//!   Each client connection alternates between the replicas request by request, so a
//!   client that sends one flow's requests over one connection (as Entra's steps follow
//!   each other) has every request answered by the other replica than the one before.
//! - [`ApiProxy`]: the API server as an operator sees it, through a kubeconfig whose
//!   server is the proxy. It forwards everything with the test's admin credentials, and
//!   when armed lets a number of member-shard writes through, then fails as a stopped API
//!   server does: connections dropped without an answer (optionally after the request
//!   reached the API server, so the write is stored but never acknowledged). It can also
//!   hold back the events of the member-shard watches, leaving the operator's cache of
//!   shards behind the API server while everything else flows.
#![allow(dead_code)]

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, BodyStream, Full, StreamBody};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Answer header naming the replica (index into the backends) that served a request.
pub const REPLICA_HEADER: &str = "x-test-replica";

/// Headers that describe one hop, not the message.
fn hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "host" | "connection" | "keep-alive" | "transfer-encoding" | "content-length" | "te"
    )
}

/// Round-robin HTTP proxy over SCIM replicas (see the module doc).
pub struct ScimBalancer {
    /// `http://127.0.0.1:<port>/scim/v2`
    pub base_url: String,
    /// Requests answered by each backend.
    served: Arc<Vec<AtomicUsize>>,
    task: tokio::task::JoinHandle<()>,
}

impl ScimBalancer {
    /// Balance over `backends`, SCIM base URLs that differ only in their origin.
    pub async fn start(backends: &[String]) -> ScimBalancer {
        let origins: Arc<Vec<String>> = Arc::new(
            backends
                .iter()
                .map(|b| b.trim_end_matches("/scim/v2").to_string())
                .collect(),
        );
        let served: Arc<Vec<AtomicUsize>> =
            Arc::new(backends.iter().map(|_| AtomicUsize::new(0)).collect());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(120))
            // Under the operator's idle keep-alive limit (`--header-read-timeout-seconds`,
            // 15 s), so a request never races the replica closing its connection.
            .pool_idle_timeout(std::time::Duration::from_secs(5))
            .build()
            .expect("client");
        let counts = served.clone();
        let task = tokio::spawn(async move {
            let connections = AtomicUsize::new(0);
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                // Connections start on alternate replicas, then alternate per request.
                let next = Arc::new(AtomicUsize::new(
                    connections.fetch_add(1, Ordering::Relaxed),
                ));
                let (origins, counts, http) = (origins.clone(), counts.clone(), http.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let i = next.fetch_add(1, Ordering::Relaxed) % origins.len();
                        counts[i].fetch_add(1, Ordering::Relaxed);
                        let (origin, http) = (origins[i].clone(), http.clone());
                        async move { Ok::<_, Infallible>(balance(&http, &origin, i, req).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        ScimBalancer {
            base_url: format!("http://{addr}/scim/v2"),
            served,
            task,
        }
    }

    /// Requests answered by each backend so far.
    pub fn served(&self) -> Vec<usize> {
        self.served
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}

impl Drop for ScimBalancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn balance(
    http: &reqwest::Client,
    origin: &str,
    replica: usize,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut out = http
        .request(parts.method, format!("{origin}{path}"))
        .body(body);
    for (k, v) in parts
        .headers
        .iter()
        .filter(|(k, _)| !hop_by_hop(k.as_str()))
    {
        out = out.header(k, v);
    }
    let mut answer = Response::builder().header(REPLICA_HEADER, replica.to_string());
    let resp = match out.send().await {
        Ok(resp) => resp,
        Err(e) => {
            return answer
                .status(502)
                .body(Full::new(Bytes::from(format!("balancer: {e}"))))
                .expect("response")
        }
    };
    answer = answer.status(resp.status());
    for (k, v) in resp
        .headers()
        .iter()
        .filter(|(k, _)| !hop_by_hop(k.as_str()))
    {
        answer = answer.header(k, v);
    }
    let body = resp.bytes().await.unwrap_or_default();
    answer.body(Full::new(body)).expect("response")
}

/// What the API proxy does with the next requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pass,
    /// Let `pass` (> 0) more member-shard writes through (other requests too), then stop.
    Armed {
        pass: usize,
        unanswered: bool,
    },
    /// Stopped, but the next write of a group or shard still reaches the API server; its
    /// answer is lost.
    Stopping,
    /// Every request is dropped unanswered.
    Down,
}

/// Counts of what the API proxy did.
#[derive(Default)]
pub struct ApiCounts {
    pub forwarded: AtomicUsize,
    /// Member-shard writes forwarded (and answered).
    pub shard_writes: AtomicUsize,
    /// Requests dropped without reaching the API server.
    pub refused: AtomicUsize,
    /// Requests that reached the API server and whose answer was dropped.
    pub unanswered: AtomicUsize,
}

/// Fault-injecting proxy in front of the API server (see the module doc).
pub struct ApiProxy {
    /// A kubeconfig whose server is the proxy (no credentials: the proxy adds them).
    pub kubeconfig: PathBuf,
    mode: Arc<Mutex<Mode>>,
    pub counts: Arc<ApiCounts>,
    /// True while the member-shard watches' events are held back.
    frozen: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// The proxy's answers: the API server's, streamed (watches included).
type ProxyBody = UnsyncBoxBody<Bytes, std::io::Error>;

enum Action {
    Forward,
    ForwardUnanswered,
    Refuse,
}

impl ApiProxy {
    /// Serve the API server `upstream` talks to, with `upstream`'s credentials.
    pub async fn start(upstream: kube::Client) -> ApiProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let kubeconfig =
            std::env::temp_dir().join(format!("kube-scim-e2e-api-proxy-{}.yaml", addr.port()));
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: proxy\n\
                 clusters:\n- name: proxy\n  cluster:\n    server: http://{addr}\n\
                 users:\n- name: proxy\n  user: {{}}\n\
                 contexts:\n- name: proxy\n  context:\n    cluster: proxy\n    user: proxy\n"
            ),
        )
        .expect("write proxy kubeconfig");
        let mode = Arc::new(Mutex::new(Mode::Pass));
        let counts = Arc::new(ApiCounts::default());
        let (frozen, _) = tokio::sync::watch::channel(false);
        let (m, c, f) = (mode.clone(), counts.clone(), frozen.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (mode, counts, upstream, frozen) =
                    (m.clone(), c.clone(), upstream.clone(), f.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (mode, counts, upstream, frozen) = (
                            mode.clone(),
                            counts.clone(),
                            upstream.clone(),
                            frozen.subscribe(),
                        );
                        async move { relay(&upstream, &mode, &counts, frozen, req).await }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        ApiProxy {
            kubeconfig,
            mode,
            counts,
            frozen,
            task,
        }
    }

    /// Hold back (true) or release (false) the events of the member-shard watches.
    pub fn freeze_shard_watches(&self, frozen: bool) {
        self.frozen.send_replace(frozen);
    }

    /// Let `pass` more member-shard writes through, then stop: every request after is
    /// dropped unanswered; with `unanswered`, the first write of a group or shard after
    /// still reaches the API server (stored, but its answer is lost).
    pub fn arm(&self, pass: usize, unanswered: bool) {
        *self.mode.lock().expect("mode") = match (pass, unanswered) {
            (0, true) => Mode::Stopping,
            (0, false) => Mode::Down,
            _ => Mode::Armed { pass, unanswered },
        };
    }

    /// The API server is reachable again.
    pub fn heal(&self) {
        *self.mode.lock().expect("mode") = Mode::Pass;
    }

    /// Whether the armed fault has struck (the API server is "stopped").
    pub fn is_down(&self) -> bool {
        matches!(
            *self.mode.lock().expect("mode"),
            Mode::Down | Mode::Stopping
        )
    }

    pub fn count(&self, c: fn(&ApiCounts) -> &AtomicUsize) -> usize {
        c(&self.counts).load(Ordering::Relaxed)
    }
}

impl Drop for ApiProxy {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

async fn relay(
    upstream: &kube::Client,
    mode: &Mutex<Mode>,
    counts: &ApiCounts,
    frozen: tokio::sync::watch::Receiver<bool>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, std::io::Error> {
    let write = ![hyper::Method::GET, hyper::Method::DELETE].contains(req.method());
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or_default();
    let shard_watch = req.method() == hyper::Method::GET
        && path.contains("/scimgroupmembers")
        && query
            .split('&')
            .any(|p| p == "watch=true" || p == "watch=1");
    let shard_write = write && path.contains("/scimgroupmembers");
    let member_write = shard_write || (write && path.contains("/scimgroups"));
    let action = {
        let mut mode = mode.lock().expect("mode");
        match *mode {
            Mode::Pass => Action::Forward,
            Mode::Down => Action::Refuse,
            Mode::Armed { .. } if !shard_write => Action::Forward,
            Mode::Armed { pass, unanswered } => {
                *mode = match (pass, unanswered) {
                    (1, true) => Mode::Stopping,
                    (1, false) => Mode::Down,
                    _ => Mode::Armed {
                        pass: pass - 1,
                        unanswered,
                    },
                };
                Action::Forward
            }
            Mode::Stopping if member_write => {
                *mode = Mode::Down;
                Action::ForwardUnanswered
            }
            Mode::Stopping => Action::Refuse,
        }
    };
    let stopped = || std::io::Error::other("API server stopped (test proxy)");
    if let Action::Refuse = action {
        counts.refused.fetch_add(1, Ordering::Relaxed);
        return Err(stopped());
    }
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    let mut out = Request::builder()
        .method(parts.method)
        .uri(parts.uri.path_and_query().map_or("/", |p| p.as_str()));
    for (k, v) in parts
        .headers
        .iter()
        .filter(|(k, _)| !hop_by_hop(k.as_str()) && k.as_str() != "authorization")
    {
        out = out.header(k, v);
    }
    let out = out
        .body(kube::client::Body::from(body.to_vec()))
        .map_err(std::io::Error::other)?;
    let resp = upstream.send(out).await.map_err(std::io::Error::other)?;
    if let Action::ForwardUnanswered = action {
        counts.unanswered.fetch_add(1, Ordering::Relaxed);
        return Err(stopped());
    }
    counts.forwarded.fetch_add(1, Ordering::Relaxed);
    if shard_write {
        counts.shard_writes.fetch_add(1, Ordering::Relaxed);
    }
    let (mut parts, body) = resp.into_parts();
    let framing: Vec<_> = parts
        .headers
        .keys()
        .filter(|k| hop_by_hop(k.as_str()) && k.as_str() != "content-length")
        .cloned()
        .collect();
    for k in framing {
        parts.headers.remove(k);
    }
    let body: ProxyBody = if shard_watch {
        // Each chunk of events waits while the shard watches are frozen.
        let gated = BodyStream::new(body).then(move |frame| {
            let mut frozen = frozen.clone();
            async move {
                let _ = frozen.wait_for(|f| !*f).await;
                frame.map_err(std::io::Error::other)
            }
        });
        BodyExt::boxed_unsync(StreamBody::new(gated))
    } else {
        BodyExt::boxed_unsync(body.map_err(std::io::Error::other))
    };
    Ok(Response::from_parts(parts, body))
}
