//! The scale benchmark of issue 8 (`scripts/bench` runs it; not part of the test suite).
//!
//! It builds a tenant through the real SCIM path on a private local control plane, binds
//! one big group by a ClusterGroupRoleMapping with a namespace selector, and measures what
//! a platform team feels: revocation latency at the API server's authorizer (idle and
//! under an Entra-like sync), bytes written to etcd per membership change, operator and
//! kube-apiserver memory, operator start-up, SCIM write and lookup throughput, each next
//! to the raw API server where a comparison makes sense. Results are printed as a table
//! and written as JSON to `<out-dir>/<timestamp>.json`.
//!
//! The program owns the operator: it installs the CRDs, creates the operator namespace
//! and a token (`kube-scim token create`), spawns `kube-scim run` (exiting with us through
//! `--exit-on-stdin-eof`) and restarts it once at the end to time start-up.
//!
//! Every wait is a poll with a deadline; every loop is bounded in count and time; only
//! loopback addresses are contacted (the API server of `KUBECONFIG`, which `scripts/bench`
//! points at its private control plane).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::Client;
use serde_json::{json, Value};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// `Ok`, typed for the async blocks that use `?`.
fn ok<T>(t: T) -> Res<T> {
    Ok(t)
}

const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
const BOUND_LABEL: &str = "bench.kubescim.io/bound";
const FIELD_MANAGER: &str = "kube-scim-bench";

#[derive(Parser, Debug, Clone)]
#[command(about = "kube-scim scale benchmark (run through scripts/bench)")]
struct Args {
    /// SCIM users to create.
    #[arg(long, default_value_t = 2000)]
    users: usize,
    /// Ordinary groups (besides the big one).
    #[arg(long, default_value_t = 50)]
    groups: usize,
    /// Members of each ordinary group.
    #[arg(long, default_value_t = 20)]
    group_size: usize,
    /// Members of the big group (the first N users), bound by the mapping.
    #[arg(long, default_value_t = 2000)]
    big_group: usize,
    /// Namespaces to create.
    #[arg(long, default_value_t = 20)]
    namespaces: usize,
    /// Of those, namespaces labelled for the mapping's selector.
    #[arg(long, default_value_t = 5)]
    bound_namespaces: usize,
    /// Revocation samples per kind.
    #[arg(long, default_value_t = 10)]
    samples: usize,
    /// Samples of bytes written to etcd per membership change (0: skip them and the wait
    /// for the user status backlog before them).
    #[arg(long, default_value_t = 3)]
    bytes_samples: usize,
    /// ScimUser creates for the API-server comparison, as many through SCIM and raw, in
    /// alternating blocks (0: min(users, 2000)).
    #[arg(long, default_value_t = 0)]
    raw_creates: usize,
    /// Requests in flight while building the tenant and in the lookup runs.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Members per membership PATCH.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Seconds of each lookup throughput run.
    #[arg(long, default_value_t = 10)]
    lookup_secs: u64,
    /// Requests per second of the background Entra-like sync.
    #[arg(long, default_value_t = 100)]
    sync_rps: u64,
    /// Deadline of every single wait (access granted, revocation, readiness), seconds.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
    /// The release kube-scim binary.
    #[arg(long, default_value = "target/release/kube-scim")]
    kube_scim_bin: PathBuf,
    /// Directory of the CRD YAML to install.
    #[arg(long, default_value = "crds")]
    crds: PathBuf,
    /// Operator namespace (tokens, leader Lease, name claims).
    #[arg(long, default_value = "kube-scim-bench")]
    operator_namespace: String,
    /// etcd client URL, for /metrics (put bytes, db size). Skipped when absent.
    #[arg(long)]
    etcd_url: Option<String>,
    /// kube-apiserver pid, for its RSS.
    #[arg(long)]
    apiserver_pid: Option<u32>,
    /// etcd pid, for its RSS.
    #[arg(long)]
    etcd_pid: Option<u32>,
    /// Run SCIM and the controller as two processes (as the chart does), each measured.
    #[arg(long)]
    split: bool,
    /// Where the JSON results and the operator log go.
    #[arg(long, default_value = "target/bench")]
    out_dir: PathBuf,
}

// ------------------------------------------------------------------------------ results

/// One row of the table: a figure, kube-scim's value and, where it makes sense, the raw
/// API server's.
#[derive(Clone)]
struct Row {
    figure: String,
    kube_scim: String,
    raw: String,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    json: serde_json::Map<String, Value>,
    phases: Vec<Value>,
}

impl Report {
    fn row(&mut self, figure: &str, kube_scim: impl Into<String>, raw: impl Into<String>) {
        let row = Row {
            figure: figure.into(),
            kube_scim: kube_scim.into(),
            raw: raw.into(),
        };
        println!(
            "  | {} | {} | {}",
            row.figure,
            dash(&row.kube_scim),
            dash(&row.raw)
        );
        self.rows.push(row);
    }
    fn set(&mut self, key: &str, v: Value) {
        self.json.insert(key.into(), v);
    }
}

/// An empty cell as `-`.
fn dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn fmt_ms(d: Duration) -> String {
    let m = ms(d);
    if m >= 10_000.0 {
        format!("{:.1} s", m / 1000.0)
    } else if m >= 100.0 {
        format!("{m:.0} ms")
    } else {
        format!("{m:.1} ms")
    }
}

fn fmt_bytes(b: f64) -> String {
    if b.abs() >= 1024.0 * 1024.0 {
        format!("{:.2} MB", b / 1024.0 / 1024.0)
    } else if b.abs() >= 1024.0 {
        format!("{:.1} kB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

struct Stats {
    n: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn stats(v: &[Duration]) -> Stats {
    let mut s = v.to_vec();
    s.sort();
    Stats {
        n: s.len(),
        p50: pct(&s, 0.5),
        p99: pct(&s, 0.99),
        max: s.last().copied().unwrap_or_default(),
    }
}

fn stats_json(v: &[Duration]) -> Value {
    let s = stats(v);
    json!({"n": s.n, "p50_ms": ms(s.p50), "p99_ms": ms(s.p99), "max_ms": ms(s.max),
           "all_ms": v.iter().map(|d| ms(*d)).collect::<Vec<_>>()})
}

/// `VmRSS` and `VmHWM` of a process, in bytes.
fn proc_mem(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

// ------------------------------------------------------------------------------ SCIM client

#[derive(Clone)]
struct Scim {
    http: reqwest::Client,
    base: String,
    token: String,
}

struct Answer {
    status: u16,
    body: Value,
}

impl Scim {
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Res<Answer> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/scim+json")
                .body(serde_json::to_vec(b)?);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        Ok(Answer { status, body })
    }
    async fn get(&self, path: &str) -> Res<Answer> {
        self.send(reqwest::Method::GET, path, None).await
    }
    async fn post(&self, path: &str, body: &Value) -> Res<Answer> {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }
    async fn patch_ops(&self, path: &str, ops: Value) -> Res<Answer> {
        let body = json!({"schemas": [PATCH_OP], "Operations": ops});
        self.send(reqwest::Method::PATCH, path, Some(&body)).await
    }
    async fn delete(&self, path: &str) -> Res<Answer> {
        self.send(reqwest::Method::DELETE, path, None).await
    }
}

fn expect(what: &str, a: &Answer, ok: &[u16]) -> Res<()> {
    if ok.contains(&a.status) {
        Ok(())
    } else {
        Err(format!("{what}: HTTP {} {}", a.status, a.body).into())
    }
}

/// Percent-encode a query value.
fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn entra_user(user_name: &str, i: usize) -> Value {
    json!({
        "schemas": [USER_SCHEMA, ENTERPRISE],
        "externalId": uuid::Uuid::new_v4().to_string(),
        "userName": user_name,
        "active": true,
        "displayName": format!("Bench User {i}"),
        "emails": [{"primary": true, "type": "work", "value": user_name}],
        "name": {"formatted": format!("Bench User {i}"), "familyName": "User", "givenName": format!("Bench{i}")},
        "title": "Engineer",
        ENTERPRISE: {"department": format!("Dept {}", i % 50)}
    })
}

// ------------------------------------------------------------------------------ kube helpers

fn scim_resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("scim.kubescim.io", "v1alpha1", kind),
        plural,
    )
}

/// May `user` list pods in `ns`? (SubjectAccessReview, no groups.)
async fn can_list_pods(client: &Client, user: &str, ns: &str) -> Res<bool> {
    let sar: SubjectAccessReview = serde_json::from_value(json!({
        "spec": {"user": user, "resourceAttributes": {"namespace": ns, "verb": "list", "resource": "pods"}}
    }))?;
    let answer = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &sar)
        .await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// Poll the authorizer until `user`'s access to `ns` is `want`; the time it took, or None
/// at the deadline.
async fn poll_access(
    client: &Client,
    user: &str,
    ns: &str,
    want: bool,
    deadline: Instant,
) -> Res<Option<Instant>> {
    Ok(poll_access_counted(client, user, ns, want, deadline)
        .await?
        .0)
}

/// How a poll went: reviews sent and the time they took together (the poll's own
/// resolution is about one review's round trip plus [`POLL_PAUSE`]).
#[derive(Default, Debug, Clone, Copy)]
struct Polls {
    reviews: u32,
    review_time: Duration,
}

/// Between two reviews of one poll.
const POLL_PAUSE: Duration = Duration::from_millis(2);

async fn poll_access_counted(
    client: &Client,
    user: &str,
    ns: &str,
    want: bool,
    deadline: Instant,
) -> Res<(Option<Instant>, Polls)> {
    let mut errors = 0u32;
    let mut polls = Polls::default();
    loop {
        let sent = Instant::now();
        let answer = can_list_pods(client, user, ns).await;
        polls.reviews += 1;
        polls.review_time += sent.elapsed();
        match answer {
            Ok(allowed) if allowed == want => return Ok((Some(Instant::now()), polls)),
            Ok(_) => {}
            // A busy API server may refuse a review now and then: retry, up to a point.
            Err(e) if errors >= 100 => return Err(e),
            Err(_) => errors += 1,
        }
        if Instant::now() >= deadline {
            return Ok((None, polls));
        }
        tokio::time::sleep(POLL_PAUSE).await;
    }
}

async fn install_crds(client: &Client, dir: &Path, timeout: Duration) -> Res<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("no CRD YAML in {}", dir.display()).into());
    }
    for f in files {
        let crd: CustomResourceDefinition = serde_yaml::from_str(&std::fs::read_to_string(&f)?)?;
        let name = crd.metadata.name.clone().ok_or("CRD without a name")?;
        crds.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await?;
        let deadline = Instant::now() + timeout;
        loop {
            let c = crds.get(&name).await?;
            let established = c.status.and_then(|s| s.conditions).is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
            if established {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!("CRD {name} not Established").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

async fn ensure_namespace(client: &Client, name: &str, labels: Value) -> Res<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))?;
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// etcd's /metrics as name → value (unlabelled series only).
async fn etcd_metrics(http: &reqwest::Client, url: &str) -> Res<BTreeMap<String, f64>> {
    let text = http
        .get(format!("{url}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let mut m = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let mut it = line.split_whitespace();
        if let (Some(k), Some(v)) = (it.next(), it.next()) {
            if !k.contains('{') {
                if let Ok(v) = v.parse::<f64>() {
                    m.insert(k.to_string(), v);
                }
            }
        }
    }
    Ok(m)
}

/// The controller's queue of status writes (user statuses trail at a pace).
async fn status_backlog(b: &Bench) -> Res<f64> {
    let m = etcd_metrics(&reqwest::Client::new(), &b.controller_probe).await?;
    m.get("kube_scim_status_writes_queued")
        .copied()
        .ok_or_else(|| "the controller serves no kube_scim_status_writes_queued".into())
}

/// Wait (up to --timeout) until the controller has written every queued status; reports
/// how many were queued and how long they took.
async fn status_backlog_drained(b: &mut Bench) -> Res<()> {
    let t = Instant::now();
    let first = status_backlog(b).await?;
    let deadline = b.deadline();
    let mut left = first;
    while left > 0.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        left = status_backlog(b).await?;
    }
    let took = t.elapsed();
    b.report.row(
        "status writes still queued after the revocations → drained",
        format!("{first:.0} → {left:.0} in {:.1} s", took.as_secs_f64()),
        "",
    );
    b.report.set(
        "status_backlog",
        json!({"queued": first, "left": left, "seconds": took.as_secs_f64()}),
    );
    b.phase("status backlog");
    Ok(())
}

const PUT_METRICS: [&str; 3] = [
    "etcd_debugging_mvcc_total_put_size_in_bytes",
    "etcd_mvcc_db_total_size_in_bytes",
    "etcd_debugging_mvcc_db_total_size_in_bytes",
];

/// The write-volume counter this etcd has: the first of [`PUT_METRICS`] it serves.
async fn put_counter(http: &reqwest::Client, url: &str) -> Res<(String, f64)> {
    let m = etcd_metrics(http, url).await?;
    for k in PUT_METRICS {
        if let Some(v) = m.get(k) {
            return Ok((k.to_string(), *v));
        }
    }
    Err("etcd serves none of the put-size / db-size metrics".into())
}

/// Poll the counter until it has not changed for `quiet` (at most `bound`); its value.
async fn settle(http: &reqwest::Client, url: &str, quiet: Duration, bound: Duration) -> Res<f64> {
    let end = Instant::now() + bound;
    let (_, mut last) = put_counter(http, url).await?;
    let mut since = Instant::now();
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (_, v) = put_counter(http, url).await?;
        if v != last {
            last = v;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            break;
        }
    }
    Ok(last)
}

// ------------------------------------------------------------------------------ operator

struct Operator {
    child: tokio::process::Child,
    pid: u32,
    probe_url: String,
    base_url: String,
    /// With `--split`: the controller process (`child` then serves SCIM only).
    controller: Option<Component>,
}

struct Component {
    child: tokio::process::Child,
    pid: u32,
    probe_url: String,
}

impl Operator {
    /// (label, pid) of every process, for memory figures.
    fn processes(&self) -> Vec<(&'static str, u32)> {
        match &self.controller {
            None => vec![("operator", self.pid)],
            Some(c) => vec![("scim", self.pid), ("controller", c.pid)],
        }
    }
}

fn free_port() -> Res<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Start the operator: with `split`, SCIM and the controller as two processes (as the
/// chart's two Deployments run them; each one's memory is measured), else as one.
fn spawn_operator(args: &Args, log: &Path, split: bool) -> Res<Operator> {
    let component = |flags: &[&str]| -> Res<(Component, u16)> {
        let (port, probe_port) = (free_port()?, free_port()?);
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let child = tokio::process::Command::new(&args.kube_scim_bin)
            // KUBE_SCIM_BENCH_LOG, e.g. `info,kube_scim::controller::fast_lane=debug` for
            // the time of each revocation patch.
            .env(
                "KUBE_SCIM_LOG",
                std::env::var("KUBE_SCIM_BENCH_LOG").unwrap_or_else(|_| "info".into()),
            )
            .args([
                "run",
                "--exit-on-stdin-eof",
                "--namespace",
                &args.operator_namespace,
            ])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--probe-listen", &format!("127.0.0.1:{probe_port}")])
            .args(flags)
            .stdin(Stdio::piped())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().ok_or("operator exited at once")?;
        let probe_url = format!("http://127.0.0.1:{probe_port}");
        Ok((
            Component {
                child,
                pid,
                probe_url,
            },
            port,
        ))
    };
    let (scim, port, controller) = if split {
        let (scim, port) = component(&["--enable-controller=false"])?;
        let (controller, _) = component(&["--enable-scim=false"])?;
        (scim, port, Some(controller))
    } else {
        let (both, port) = component(&[])?;
        (both, port, None)
    };
    Ok(Operator {
        child: scim.child,
        pid: scim.pid,
        probe_url: scim.probe_url,
        base_url: format!("http://127.0.0.1:{port}/scim/v2"),
        controller,
    })
}

/// Wait until /readyz is 200 and then a SCIM `GET /Users?count=1` is 200: the two
/// moments since `start`.
async fn wait_ready(
    op: &mut Operator,
    scim: &Scim,
    start: Instant,
    timeout: Duration,
) -> Res<(Duration, Duration)> {
    let deadline = start + timeout;
    let probe = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    loop {
        if let Some(status) = op.child.try_wait()? {
            return Err(format!("operator exited while starting: {status}").into());
        }
        if let Some(c) = op.controller.as_mut() {
            if let Some(status) = c.child.try_wait()? {
                return Err(format!("controller exited while starting: {status}").into());
            }
        }
        let mut ok = true;
        let urls =
            std::iter::once(&op.probe_url).chain(op.controller.as_ref().map(|c| &c.probe_url));
        for url in urls {
            ok &= probe
                .get(format!("{url}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().as_u16() == 200);
        }
        if ok {
            break;
        }
        if Instant::now() >= deadline {
            return Err("operator not ready before the deadline".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready = start.elapsed();
    loop {
        if scim
            .get("/Users?count=1")
            .await
            .is_ok_and(|a| a.status == 200)
        {
            break;
        }
        if Instant::now() >= deadline {
            return Err("SCIM not answering before the deadline".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((ready, start.elapsed()))
}

/// Close its stdin (graceful: it releases the leader Lease) and wait for it to exit.
async fn stop_operator(op: Operator) -> Res<()> {
    let mut children = vec![op.child];
    children.extend(op.controller.map(|c| c.child));
    for mut child in children {
        drop(child.stdin.take());
        match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
            Ok(r) => {
                r?;
            }
            Err(_) => {
                child.kill().await?;
            }
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------ main

struct User {
    id: String,
    user_name: String,
}

struct Bench {
    args: Args,
    client: Client,
    scim: Scim,
    report: Report,
    started: Instant,
    phase_start: Instant,
    /// (label, pid) of the operator's processes (one, or SCIM + controller with --split).
    processes: Vec<(&'static str, u32)>,
    bound: Vec<String>,
    /// The controller's probe listener (/metrics): the controller process with --split.
    controller_probe: String,
}

impl Bench {
    /// Close the current phase: its duration and the memory of the processes.
    fn phase(&mut self, name: &str) {
        let took = self.phase_start.elapsed();
        let ops: Vec<(&str, Option<(u64, u64)>)> = self
            .processes
            .iter()
            .map(|(label, pid)| (*label, proc_mem(*pid)))
            .collect();
        let api = self.args.apiserver_pid.and_then(proc_mem);
        let etcd = self.args.etcd_pid.and_then(proc_mem);
        let mb = |m: Option<(u64, u64)>| {
            m.map_or("-".to_string(), |(rss, _)| {
                format!("{:.0} MB", rss as f64 / 1e6)
            })
        };
        let op_text: Vec<String> = ops
            .iter()
            .map(|(label, m)| format!("{label} RSS {}", mb(*m)))
            .collect();
        println!(
            "== phase {name}: {:.1} s ({}, kube-apiserver RSS {}, etcd RSS {})",
            took.as_secs_f64(),
            op_text.join(", "),
            mb(api),
            mb(etcd)
        );
        let op = ops.first().and_then(|(_, m)| *m);
        let controller = ops.get(1).and_then(|(_, m)| *m);
        self.report.phases.push(json!({
            "phase": name, "seconds": took.as_secs_f64(),
            "operator_rss_bytes": op.map(|m| m.0), "operator_hwm_bytes": op.map(|m| m.1),
            "controller_rss_bytes": controller.map(|m| m.0),
            "controller_hwm_bytes": controller.map(|m| m.1),
            "apiserver_rss_bytes": api.map(|m| m.0), "etcd_rss_bytes": etcd.map(|m| m.0),
        }));
        self.phase_start = Instant::now();
    }

    fn deadline(&self) -> Instant {
        Instant::now() + Duration::from_secs(self.args.timeout)
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("bench: ERROR: {e}");
        std::process::exit(1);
    }
}

async fn run(mut args: Args) -> Res<()> {
    if args.big_group > args.users {
        return Err("--big-group must not exceed --users".into());
    }
    if args.bound_namespaces == 0 || args.bound_namespaces > args.namespaces {
        return Err("--bound-namespaces must be 1..=--namespaces".into());
    }
    if args.raw_creates == 0 {
        args.raw_creates = args.users.min(2000);
    }
    let needed = 1 + 4 * args.samples + args.bytes_samples + 1;
    if args.big_group < needed + 1 {
        return Err(format!(
            "--big-group must be at least {} for these samples",
            needed + 1
        )
        .into());
    }
    std::fs::create_dir_all(&args.out_dir)?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let op_log = args.out_dir.join(format!("operator-{stamp}.log"));
    let started = Instant::now();
    let client = Client::try_default().await?;
    let timeout = Duration::from_secs(args.timeout);

    // ---- setup: CRDs, operator namespace, token, operator
    println!(
        "== setup: CRDs, namespace {}, token, operator",
        args.operator_namespace
    );
    install_crds(&client, &args.crds, Duration::from_secs(60)).await?;
    ensure_namespace(&client, &args.operator_namespace, json!({})).await?;
    let out = tokio::process::Command::new(&args.kube_scim_bin)
        .args([
            "token",
            "create",
            &format!("bench-{}", stamp.to_lowercase()),
        ])
        .args(["--namespace", &args.operator_namespace])
        .output()
        .await?;
    if !out.status.success() {
        return Err(format!("token create: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let t = Instant::now();
    let mut op = spawn_operator(&args, &op_log, args.split)?;
    let scim = Scim {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(300))
            .pool_max_idle_per_host(256)
            .build()?,
        base: op.base_url.clone(),
        token,
    };
    let (ready0, scim0) = wait_ready(&mut op, &scim, t, timeout).await?;
    println!(
        "   operator pid {} ready in {} (log {})",
        op.pid,
        fmt_ms(scim0),
        op_log.display()
    );

    let mut b = Bench {
        processes: op.processes(),
        args: args.clone(),
        client: client.clone(),
        scim: scim.clone(),
        report: Report::default(),
        started,
        phase_start: Instant::now(),
        bound: Vec::new(),
        controller_probe: op
            .controller
            .as_ref()
            .map_or(op.probe_url.clone(), |c| c.probe_url.clone()),
    };
    b.report.set(
        "config",
        json!({"users": args.users, "groups": args.groups, "group_size": args.group_size,
               "big_group": args.big_group, "namespaces": args.namespaces,
               "bound_namespaces": args.bound_namespaces, "samples": args.samples,
               "raw_creates": args.raw_creates, "concurrency": args.concurrency,
               "batch": args.batch, "sync_rps": args.sync_rps, "lookup_secs": args.lookup_secs,
               "split": args.split}),
    );
    b.report.set(
        "empty_start",
        json!({"readyz_ms": ms(ready0), "scim_ms": ms(scim0)}),
    );
    println!("\n  | figure | kube-scim | raw API server");

    // ---- users
    let users = create_users(&mut b).await?;
    raw_creates(&mut b).await?;

    // ---- groups
    let big_gid = create_groups(&mut b, &users).await?;

    // ---- namespaces and mapping
    create_namespaces(&mut b).await?;
    apply_mapping(&mut b, &users).await?;

    // ---- revocation
    // Distinct members of the big group for every sample (member 0 proved access).
    let mut pool: Vec<usize> = (1..args.big_group).collect();
    {
        use rand::seq::SliceRandom;
        pool.shuffle(&mut rand::rng());
    }
    let mut take = |n: usize| -> Vec<usize> { pool.drain(..n).collect() };
    let deact = take(args.samples);
    let del = take(args.samples);
    let removal = take(args.samples);
    let deact_sync = take(args.samples);
    let bytes_users = take(args.bytes_samples);
    let after_restart = take(1);
    // Users the sync and lookups may touch: never a sampled one.
    let reserved: std::collections::HashSet<usize> = deact
        .iter()
        .chain(&del)
        .chain(&removal)
        .chain(&deact_sync)
        .chain(&bytes_users)
        .chain(&after_restart)
        .copied()
        .collect();
    let live: Arc<Vec<(String, String)>> = Arc::new(
        users
            .iter()
            .enumerate()
            .filter(|(i, _)| !reserved.contains(i))
            .map(|(_, u)| (u.id.clone(), u.user_name.clone()))
            .collect(),
    );

    revocation(&mut b, "deactivate", &users, &deact, &big_gid, None).await?;
    revocation(&mut b, "delete", &users, &del, &big_gid, None).await?;
    revocation(&mut b, "member removal", &users, &removal, &big_gid, None).await?;
    b.phase("revocation (idle)");
    revocation(
        &mut b,
        "deactivate under sync",
        &users,
        &deact_sync,
        &big_gid,
        Some(live.clone()),
    )
    .await?;
    b.phase("revocation (under sync)");

    // ---- the user statuses still trailing (paced), then bytes per change: the etcd
    // figure would count their writes otherwise. `--bytes-samples 0` skips both (at the
    // target size the backlog takes the better part of half an hour at the default pace).
    if bytes_users.is_empty() {
        let queued = status_backlog(&b).await?;
        b.report.row(
            "status writes still queued after the revocations (not awaited)",
            format!("{queued:.0}"),
            "",
        );
        b.report.set("status_backlog", json!({"queued": queued}));
    } else {
        status_backlog_drained(&mut b).await?;
        bytes_per_change(&mut b, &users, &bytes_users).await?;
    }

    // ---- lookups
    lookups(&mut b, live.clone()).await?;

    // ---- memory
    let mut memory = serde_json::Map::new();
    for (label, pid) in op.processes() {
        if let Some((rss, hwm)) = proc_mem(pid) {
            b.report.row(
                &format!("{label} RSS at the end / peak (VmHWM)"),
                format!("{:.0} MB / {:.0} MB", rss as f64 / 1e6, hwm as f64 / 1e6),
                "",
            );
            memory.insert(label.into(), json!({"rss_bytes": rss, "hwm_bytes": hwm}));
        }
    }
    b.report.set("operator_memory", Value::Object(memory));
    if let Some((rss, hwm)) = args.apiserver_pid.and_then(proc_mem) {
        b.report.row(
            "kube-apiserver RSS at the end / peak",
            "",
            format!("{:.0} MB / {:.0} MB", rss as f64 / 1e6, hwm as f64 / 1e6),
        );
        b.report.set(
            "apiserver_memory",
            json!({"rss_bytes": rss, "hwm_bytes": hwm}),
        );
    }
    if let Some((rss, hwm)) = args.etcd_pid.and_then(proc_mem) {
        b.report.row(
            "etcd RSS at the end / peak",
            "",
            format!("{:.0} MB / {:.0} MB", rss as f64 / 1e6, hwm as f64 / 1e6),
        );
        b.report
            .set("etcd_memory", json!({"rss_bytes": rss, "hwm_bytes": hwm}));
    }
    if let Some(url) = &args.etcd_url {
        if let Ok(m) = etcd_metrics(&reqwest::Client::new(), url).await {
            let db = m
                .get("etcd_mvcc_db_total_size_in_bytes")
                .or(m.get("etcd_debugging_mvcc_db_total_size_in_bytes"));
            if let Some(db) = db {
                b.report.row("etcd db size at the end", "", fmt_bytes(*db));
                b.report.set("etcd_db_bytes", json!(db));
            }
        }
    }
    b.phase("lookups and memory");

    // ---- restart, as the operator ran (with --split: SCIM and the controller as two
    // processes, as the chart's two Deployments), both at once as after `helm upgrade`.
    stop_operator(op).await?;
    let t = Instant::now();
    let mut op = spawn_operator(&args, &op_log, args.split)?;
    b.processes = op.processes();
    // New ports: the SCIM client follows the new process.
    b.scim.base = op.base_url.clone();
    let (ready, scim_ready) = wait_ready(&mut op, &b.scim, t, timeout).await?;
    b.report.row(
        "operator restart → /readyz 200 / → SCIM GET 200",
        format!("{} / {}", fmt_ms(ready), fmt_ms(scim_ready)),
        "",
    );
    let (after_ok, after_lat) = {
        let u = &users[after_restart[0]];
        let ns = b.bound[0].clone();
        let r = b
            .scim
            .patch_ops(
                &format!("/Users/{}", u.id),
                json!([{"op": "Replace", "path": "active", "value": "False"}]),
            )
            .await?;
        expect("deactivate after restart", &r, &[200, 204])?;
        let t0 = Instant::now();
        let d = poll_access(&b.client, &u.user_name, &ns, false, b.deadline()).await?;
        (d.is_some(), d.map(|d| d - t0))
    };
    b.report.row(
        "after restart: deactivate → denied (first change)",
        after_lat.map_or("timeout".into(), fmt_ms),
        "",
    );
    let mut restart = json!({"readyz_ms": ms(ready), "scim_ms": ms(scim_ready),
           "deactivate_after_restart_ms": after_lat.map(ms), "ok": after_ok});
    for (label, pid) in op.processes() {
        if let Some((rss, hwm)) = proc_mem(pid) {
            b.report.row(
                &format!("{label} RSS after restart / peak"),
                format!("{:.0} MB / {:.0} MB", rss as f64 / 1e6, hwm as f64 / 1e6),
                "",
            );
            restart[format!("{label}_rss_bytes")] = json!(rss);
            restart[format!("{label}_hwm_bytes")] = json!(hwm);
        }
    }
    b.phase("restart");
    stop_operator(op).await?;
    b.report.set("restart", restart);

    // ---- output
    print_table(&b);
    let total = b.started.elapsed();
    b.report.set("total_seconds", json!(total.as_secs_f64()));
    let mut doc = b.report.json.clone();
    doc.insert(
        "rows".into(),
        Value::Array(
            b.report
                .rows
                .iter()
                .map(|r| json!({"figure": r.figure, "kube_scim": r.kube_scim, "raw": r.raw}))
                .collect(),
        ),
    );
    doc.insert("phases".into(), Value::Array(b.report.phases.clone()));
    let path = args.out_dir.join(format!("{stamp}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(&Value::Object(doc))?)?;
    println!(
        "\nresults: {}  (operator log {})",
        path.display(),
        op_log.display()
    );
    println!("total {:.1} s", total.as_secs_f64());
    Ok(())
}

fn print_table(b: &Bench) {
    let rows = &b.report.rows;
    let head = Row {
        figure: "figure".into(),
        kube_scim: "kube-scim".into(),
        raw: "raw API server".into(),
    };
    let w0 = rows
        .iter()
        .chain([&head])
        .map(|r| r.figure.len())
        .max()
        .unwrap_or(0);
    let w1 = rows
        .iter()
        .chain([&head])
        .map(|r| r.kube_scim.len())
        .max()
        .unwrap_or(0);
    let w2 = rows
        .iter()
        .chain([&head])
        .map(|r| r.raw.len())
        .max()
        .unwrap_or(0);
    let a = &b.args;
    println!(
        "\nkube-scim scale benchmark: {} users, {} groups x {}, big group {} bound in {} of {} namespaces, {} samples",
        a.users, a.groups, a.group_size, a.big_group, a.bound_namespaces, a.namespaces, a.samples
    );
    let line = |r: &Row| {
        println!(
            "| {:w0$} | {:w1$} | {:w2$} |",
            r.figure,
            dash(&r.kube_scim),
            dash(&r.raw)
        )
    };
    line(&head);
    println!(
        "|{}|{}|{}|",
        "-".repeat(w0 + 2),
        "-".repeat(w1 + 2),
        "-".repeat(w2 + 2)
    );
    for r in rows {
        line(r);
    }
    println!("\nphases:");
    for p in &b.report.phases {
        let mb = |k: &str| {
            p[k].as_f64()
                .map_or("-".into(), |v| format!("{:.0} MB", v / 1e6))
        };
        let controller = if p["controller_rss_bytes"].is_null() {
            String::new()
        } else {
            format!("  controller RSS {:>8}", mb("controller_rss_bytes"))
        };
        println!(
            "  {:<28} {:>8.1} s   operator RSS {:>8}{controller}  kube-apiserver RSS {:>8}  etcd RSS {:>8}",
            p["phase"].as_str().unwrap_or(""),
            p["seconds"].as_f64().unwrap_or(0.0),
            mb("operator_rss_bytes"),
            mb("apiserver_rss_bytes"),
            mb("etcd_rss_bytes"),
        );
    }
}

// ------------------------------------------------------------------------------ phases

async fn create_users(b: &mut Bench) -> Res<Vec<User>> {
    let n = b.args.users;
    let t = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let results: Vec<Res<(usize, User, Duration)>> = futures::stream::iter(0..n)
        .map(|i| {
            let scim = b.scim.clone();
            let done = done.clone();
            async move {
                let user_name = format!("bench-user-{i:06}@bench.example");
                let (id, took) = scim_create_user(&scim, &user_name, i).await?;
                let k = done.fetch_add(1, Ordering::Relaxed) + 1;
                if k % 5000 == 0 {
                    println!("   {k} users");
                }
                ok((i, User { id, user_name }, took))
            }
        })
        .buffer_unordered(b.args.concurrency)
        .collect()
        .await;
    let elapsed = t.elapsed();
    let mut users: Vec<Option<User>> = (0..n).map(|_| None).collect();
    let mut lat = Vec::with_capacity(n);
    for r in results {
        let (i, u, d) = r?;
        users[i] = Some(u);
        lat.push(d);
    }
    let users: Vec<User> = users.into_iter().map(|u| u.expect("every user")).collect();
    let rate = n as f64 / elapsed.as_secs_f64();
    let s = stats(&lat);
    b.report.set(
        "scim_create_users",
        json!({"n": n, "seconds": elapsed.as_secs_f64(), "per_second": rate, "latency": stats_json(&lat)}),
    );
    b.report.row(
        &format!("SCIM POST /Users ({n}, {} in flight)", b.args.concurrency),
        format!("{rate:.0}/s (p50 {}, p99 {})", fmt_ms(s.p50), fmt_ms(s.p99)),
        "",
    );
    b.phase("users (SCIM)");
    Ok(users)
}

/// One SCIM POST /Users of an Entra-shaped user: its id and how long the answer took.
async fn scim_create_user(scim: &Scim, user_name: &str, i: usize) -> Res<(String, Duration)> {
    let t = Instant::now();
    let r = scim.post("/Users", &entra_user(user_name, i)).await?;
    let took = t.elapsed();
    expect("POST /Users", &r, &[201])?;
    let id = r.body["id"].as_str().ok_or("no id")?.to_string();
    ok((id, took))
}

/// Run `make(i)` for each of `items`, `concurrency` at a time: how long the whole block
/// took and each result (the first error ends it).
async fn timed_block<I, F, Fut, T>(items: I, concurrency: usize, make: F) -> Res<(Duration, Vec<T>)>
where
    I: IntoIterator<Item = usize>,
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Res<T>>,
{
    let t = Instant::now();
    let results: Vec<Res<T>> = futures::stream::iter(items)
        .map(make)
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let took = t.elapsed();
    Ok((took, results.into_iter().collect::<Res<_>>()?))
}

/// Raw ScimUser creates against SCIM creates at the same moment: the SCIM import above
/// runs from an empty server to a full one, and a raw run after it meets a server in
/// another state (the ratio swung 0.42–0.89× between runs). So, after the import, 2,000
/// more of each are made in alternating blocks of 250 (SCIM, raw, SCIM, raw…), same
/// concurrency, and the ratio is taken over the blocks; the import's own rate against the
/// raw blocks is reported as well. All of them are deleted again afterwards.
async fn raw_creates(b: &mut Bench) -> Res<()> {
    const BLOCKS: usize = 8;
    let n = b.args.raw_creates;
    let per_block = n.div_ceil(BLOCKS).max(1);
    let ar = scim_resource("ScimUser", "scimusers");
    let api: Api<DynamicObject> = Api::all_with(b.client.clone(), &ar);
    let mut raw_names = Vec::with_capacity(n);
    let mut scim_ids = Vec::with_capacity(n);
    let (mut raw_time, mut scim_time) = (Duration::ZERO, Duration::ZERO);
    let (mut raw_lat, mut scim_lat) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut next = 0;
    while next < n {
        let range = next..(next + per_block).min(n);
        next = range.end;
        // SCIM block.
        let (took, created) =
            timed_block(range.clone(), b.args.concurrency, |i| {
                let scim = b.scim.clone();
                async move {
                    scim_create_user(&scim, &format!("bench-ab-{i:06}@bench.example"), i).await
                }
            })
            .await?;
        scim_time += took;
        for (id, lat) in created {
            scim_ids.push(id);
            scim_lat.push(lat);
        }
        // Raw block, the same users' shape.
        let (took, created) = timed_block(range, b.args.concurrency, |i| {
            let api = api.clone();
            let ar = ar.clone();
            async move {
                let name = format!("bench-raw-{i:06}");
                let user_name = format!("bench-raw-{i:06}@bench.example");
                let mut spec = entra_user(&user_name, i);
                if let Some(o) = spec.as_object_mut() {
                    o.remove("schemas");
                }
                let obj = DynamicObject::new(&name, &ar).data(json!({"spec": spec}));
                let t = Instant::now();
                api.create(&PostParams::default(), &obj).await?;
                ok((name, t.elapsed()))
            }
        })
        .await?;
        raw_time += took;
        for (name, lat) in created {
            raw_names.push(name);
            raw_lat.push(lat);
        }
    }
    let rate = |k: usize, d: Duration| k as f64 / d.as_secs_f64().max(1e-9);
    let (raw_rate, ab_rate) = (rate(n, raw_time), rate(n, scim_time));
    let import_rate = b.report.json["scim_create_users"]["per_second"]
        .as_f64()
        .unwrap_or(0.0);
    let (s, r) = (stats(&scim_lat), stats(&raw_lat));
    b.report.row(
        &format!("ScimUser creates, {n} SCIM vs {n} raw in alternating blocks of {per_block}, ratio SCIM/raw"),
        format!(
            "{:.2}x ({ab_rate:.0}/s, p50 {}, p99 {})",
            ab_rate / raw_rate,
            fmt_ms(s.p50),
            fmt_ms(s.p99)
        ),
        format!("{raw_rate:.0}/s (p50 {}, p99 {})", fmt_ms(r.p50), fmt_ms(r.p99)),
    );
    b.report.row(
        "  … the import above against those raw blocks (another server state)",
        format!("{:.2}x", import_rate / raw_rate),
        "",
    );
    b.report.set(
        "raw_create_users",
        json!({"n": n, "blocks": n.div_ceil(per_block), "seconds": raw_time.as_secs_f64(),
               "per_second": raw_rate, "latency": stats_json(&raw_lat),
               "scim_blocks": {"seconds": scim_time.as_secs_f64(), "per_second": ab_rate,
                               "latency": stats_json(&scim_lat)},
               "scim_over_raw": ab_rate / raw_rate,
               "import_over_raw": import_rate / raw_rate}),
    );
    // Delete them again (not timed as a figure).
    let _: Vec<()> = futures::stream::iter(raw_names.iter())
        .map(|name| {
            let api = api.clone();
            async move {
                let _ = api.delete(name, &DeleteParams::default()).await;
            }
        })
        .buffer_unordered(b.args.concurrency)
        .collect()
        .await;
    let _: Vec<()> = futures::stream::iter(scim_ids.iter())
        .map(|id| {
            let scim = b.scim.clone();
            async move {
                let _ = scim.delete(&format!("/Users/{id}")).await;
            }
        })
        .buffer_unordered(b.args.concurrency)
        .collect()
        .await;
    b.phase("raw creates");
    Ok(())
}

fn member_values(users: &[User], idx: &[usize]) -> Vec<Value> {
    idx.iter().map(|&i| json!({"value": users[i].id})).collect()
}

/// Ordinary groups (concurrently), then the big group (its PATCHes one after another, as
/// Entra sends one group's batches); the big group's id.
async fn create_groups(b: &mut Bench, users: &[User]) -> Res<String> {
    let a = b.args.clone();
    let n_users = users.len();
    let t = Instant::now();
    let results: Vec<Res<()>> = futures::stream::iter(0..a.groups)
        .map(|j| {
            let scim = b.scim.clone();
            let start = (j * 7919) % n_users;
            let members: Vec<usize> = (0..a.group_size.min(n_users))
                .map(|k| (start + k) % n_users)
                .collect();
            let values = member_values(users, &members);
            let batch = a.batch;
            async move {
                let r = scim
                    .post(
                        "/Groups",
                        &json!({"schemas": [GROUP_SCHEMA], "displayName": format!("bench-group-{j:05}"),
                                "externalId": uuid::Uuid::new_v4().to_string()}),
                    )
                    .await?;
                expect("POST /Groups", &r, &[201])?;
                let gid = r.body["id"].as_str().ok_or("no group id")?.to_string();
                for chunk in values.chunks(batch) {
                    let r = scim
                        .patch_ops(
                            &format!("/Groups/{gid}"),
                            json!([{"op": "add", "path": "members", "value": chunk}]),
                        )
                        .await?;
                    expect("PATCH /Groups add members", &r, &[200, 204])?;
                }
                ok(())
            }
        })
        .buffer_unordered(a.concurrency)
        .collect()
        .await;
    for r in results {
        r?;
    }
    let groups_time = t.elapsed();
    b.report.row(
        &format!("{} groups of {} (POST + PATCH add)", a.groups, a.group_size),
        format!(
            "{:.1} s ({:.0} groups/s)",
            groups_time.as_secs_f64(),
            a.groups as f64 / groups_time.as_secs_f64().max(1e-9)
        ),
        "",
    );
    b.report.set(
        "groups",
        json!({"n": a.groups, "size": a.group_size, "seconds": groups_time.as_secs_f64()}),
    );
    b.phase("groups");

    let r = b
        .scim
        .post(
            "/Groups",
            &json!({"schemas": [GROUP_SCHEMA], "displayName": "bench-big-group",
                    "externalId": uuid::Uuid::new_v4().to_string()}),
        )
        .await?;
    expect("POST big group", &r, &[201])?;
    let gid = r.body["id"].as_str().ok_or("no group id")?.to_string();
    let idx: Vec<usize> = (0..a.big_group).collect();
    let values = member_values(users, &idx);
    let t = Instant::now();
    let mut lat = Vec::new();
    for (k, chunk) in values.chunks(a.batch).enumerate() {
        let t1 = Instant::now();
        let r = b
            .scim
            .patch_ops(
                &format!("/Groups/{gid}"),
                json!([{"op": "add", "path": "members", "value": chunk}]),
            )
            .await?;
        expect("PATCH big group add members", &r, &[200, 204])?;
        lat.push(t1.elapsed());
        if (k + 1) % 100 == 0 {
            println!("   big group: {} members", (k + 1) * a.batch);
        }
    }
    let took = t.elapsed();
    let s = stats(&lat);
    b.report.row(
        &format!(
            "big group: {} members as {} PATCHes of {}",
            a.big_group,
            lat.len(),
            a.batch
        ),
        format!(
            "{:.1} s (PATCH p50 {}, max {})",
            took.as_secs_f64(),
            fmt_ms(s.p50),
            fmt_ms(s.max)
        ),
        "",
    );
    b.report.set(
        "big_group_add",
        json!({"members": a.big_group, "patches": lat.len(), "seconds": took.as_secs_f64(),
               "latency": stats_json(&lat)}),
    );
    b.phase("big group");
    Ok(gid)
}

async fn create_namespaces(b: &mut Bench) -> Res<()> {
    let a = b.args.clone();
    let names: Vec<String> = (0..a.namespaces)
        .map(|i| format!("bench-ns-{i:05}"))
        .collect();
    // Spread the bound namespaces over the list.
    let step = a.namespaces / a.bound_namespaces;
    let bound: Vec<String> = (0..a.bound_namespaces)
        .map(|k| names[k * step].clone())
        .collect();
    let t = Instant::now();
    let results: Vec<Res<()>> = futures::stream::iter(names.iter())
        .map(|name| {
            let client = b.client.clone();
            let labels = if bound.contains(name) {
                json!({BOUND_LABEL: "true"})
            } else {
                json!({})
            };
            async move { ensure_namespace(&client, name, labels).await }
        })
        .buffer_unordered(a.concurrency)
        .collect()
        .await;
    for r in results {
        r?;
    }
    println!(
        "   {} namespaces ({} bound) in {:.1} s",
        a.namespaces,
        a.bound_namespaces,
        t.elapsed().as_secs_f64()
    );
    b.bound = bound;
    b.phase("namespaces");
    Ok(())
}

async fn apply_mapping(b: &mut Bench, users: &[User]) -> Res<()> {
    let ar = scim_resource("ClusterGroupRoleMapping", "clustergrouprolemappings");
    let api: Api<DynamicObject> = Api::all_with(b.client.clone(), &ar);
    let obj = DynamicObject::new("bench-big-group", &ar).data(json!({
        "spec": {
            "groups": [{"displayName": "bench-big-group"}],
            "namespaceRoles": [{"clusterRole": "view",
                                "namespaceSelector": {"matchLabels": {BOUND_LABEL: "true"}}}]
        }
    }));
    api.create(&PostParams::default(), &obj).await?;
    let t0 = Instant::now();
    let member = &users[0].user_name;
    let first = poll_access(&b.client, member, &b.bound[0], true, b.deadline())
        .await?
        .ok_or("mapping never granted access in the first bound namespace")?;
    let last_ns = b.bound.last().expect("bound").clone();
    let last = poll_access(&b.client, member, &last_ns, true, b.deadline())
        .await?
        .ok_or("mapping never granted access in the last bound namespace")?;
    // Also the last member, in the last namespace: the whole mapping is in place.
    let last_member = &users[b.args.big_group - 1].user_name;
    let all = poll_access(&b.client, last_member, &last_ns, true, b.deadline())
        .await?
        .ok_or("mapping never granted the last member access")?;
    b.report.row(
        "mapping applied → first access / last bound ns / last member",
        format!(
            "{} / {} / {}",
            fmt_ms(first - t0),
            fmt_ms(last - t0),
            fmt_ms(all - t0)
        ),
        "",
    );
    b.report.set(
        "mapping_first_access",
        json!({"first_ms": ms(first - t0), "last_namespace_ms": ms(last - t0), "last_member_ms": ms(all - t0)}),
    );
    b.phase("mapping");
    Ok(())
}

/// Background Entra-like sync: `rps` requests per second, alternating a userName lookup
/// and an attribute PATCH on random users of `live`, until `stop`. Returns (sent, errors,
/// skipped because too many were in flight).
async fn entra_sync(
    scim: Scim,
    live: Arc<Vec<(String, String)>>,
    rps: u64,
    stop: Arc<AtomicBool>,
    bound: Duration,
) -> (u64, u64, u64, Vec<Duration>) {
    let sent = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Mutex::new(Vec::new()));
    let mut skipped = 0;
    let inflight = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rps.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let end = Instant::now() + bound;
    let mut k: u64 = 0;
    let mut tasks = tokio::task::JoinSet::new();
    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
        tick.tick().await;
        k += 1;
        let Ok(permit) = inflight.clone().try_acquire_owned() else {
            skipped += 1;
            continue;
        };
        let (id, user_name) = live[rand::random_range(0..live.len())].clone();
        let (scim, sent, errors, lat) = (scim.clone(), sent.clone(), errors.clone(), lat.clone());
        tasks.spawn(async move {
            let t = Instant::now();
            let r = if k % 2 == 0 {
                scim.get(&format!(
                    "/Users?filter={}",
                    enc(&format!("userName eq \"{user_name}\""))
                ))
                .await
            } else {
                let (path, value) = if k % 4 == 1 {
                    ("displayName", format!("Bench User {k}"))
                } else {
                    ("title", format!("Title {k}"))
                };
                scim.patch_ops(
                    &format!("/Users/{id}"),
                    json!([{"op": "Replace", "path": path, "value": value}]),
                )
                .await
            };
            sent.fetch_add(1, Ordering::Relaxed);
            if !r.is_ok_and(|a| a.status < 300) {
                errors.fetch_add(1, Ordering::Relaxed);
            }
            lat.lock().expect("lat").push(t.elapsed());
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let lat = std::mem::take(&mut *lat.lock().expect("lat"));
    (
        sent.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        skipped,
        lat,
    )
}

/// One kind of revocation over `samples` members of the big group, one at a time.
async fn revocation(
    b: &mut Bench,
    kind: &str,
    users: &[User],
    samples: &[usize],
    big_gid: &str,
    sync: Option<Arc<Vec<(String, String)>>>,
) -> Res<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let t_sync = Instant::now();
    let sync_task = sync.map(|live| {
        tokio::spawn(entra_sync(
            b.scim.clone(),
            live,
            b.args.sync_rps,
            stop.clone(),
            Duration::from_secs(b.args.timeout),
        ))
    });
    let last_ns = b.bound.last().expect("bound").clone();
    let mut first_lat = Vec::new();
    let mut last_lat = Vec::new();
    let mut timeouts = 0;
    let mut not_granted = 0;
    let mut detail = Vec::new();
    let mut review_rtt = Vec::new();
    for &i in samples {
        let u = &users[i];
        let ns = b.bound[rand::random_range(0..b.bound.len())].clone();
        // Each sample starts from access (else it would measure nothing).
        if poll_access(
            &b.client,
            &u.user_name,
            &ns,
            true,
            Instant::now() + Duration::from_secs(30),
        )
        .await?
        .is_none()
        {
            not_granted += 1;
            continue;
        }
        let r = match kind {
            "delete" => b.scim.delete(&format!("/Users/{}", u.id)).await?,
            "member removal" => b
                .scim
                .patch_ops(
                    &format!("/Groups/{big_gid}"),
                    json!([{"op": "remove", "path": format!("members[value eq \"{}\"]", u.id)}]),
                )
                .await?,
            _ => {
                b.scim
                    .patch_ops(
                        &format!("/Users/{}", u.id),
                        json!([{"op": "Replace", "path": "active", "value": "False"}]),
                    )
                    .await?
            }
        };
        expect(kind, &r, &[200, 204])?;
        let t0 = Instant::now();
        // Wall clock, to line the sample up with the operator's log.
        let wall = chrono::Utc::now();
        let (denied, polls) =
            poll_access_counted(&b.client, &u.user_name, &ns, false, b.deadline()).await?;
        if polls.reviews > 0 {
            review_rtt.push(polls.review_time / polls.reviews);
        }
        detail.push(json!({
            "scim_answered": wall.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "namespace": ns, "user": u.user_name,
            "denied_ms": denied.map(|t| ms(t - t0)),
            "reviews": polls.reviews,
            "review_ms": ms(polls.review_time) / f64::from(polls.reviews.max(1)),
        }));
        match denied {
            Some(t) => first_lat.push(t - t0),
            None => {
                timeouts += 1;
                continue;
            }
        }
        match poll_access(&b.client, &u.user_name, &last_ns, false, b.deadline()).await? {
            Some(t) => last_lat.push(t - t0),
            None => timeouts += 1,
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut sync_json = Value::Null;
    let mut sync_note = String::new();
    if let Some(task) = sync_task {
        let (sent, errors, skipped, lat) = task.await?;
        let secs = t_sync.elapsed().as_secs_f64();
        let s = stats(&lat);
        sync_note = format!(
            "; sync {:.0} req/s, p99 {}, {errors} errors",
            sent as f64 / secs,
            fmt_ms(s.p99)
        );
        sync_json = json!({"sent": sent, "errors": errors, "skipped": skipped,
                           "per_second": sent as f64 / secs, "latency": stats_json(&lat)});
    }
    let s1 = stats(&first_lat);
    let s2 = stats(&last_lat);
    let extra = if timeouts + not_granted > 0 {
        format!(" ({timeouts} timeouts, {not_granted} never granted)")
    } else {
        String::new()
    };
    b.report.row(
        &format!("revocation: {kind} → denied, p50 / p99 / max (n={})", s1.n),
        format!(
            "{} / {} / {}{extra}{sync_note}",
            fmt_ms(s1.p50),
            fmt_ms(s1.p99),
            fmt_ms(s1.max)
        ),
        "",
    );
    b.report.row(
        &format!("  … and denied in the last bound namespace (n={})", s2.n),
        format!(
            "{} / {} / {}",
            fmt_ms(s2.p50),
            fmt_ms(s2.p99),
            fmt_ms(s2.max)
        ),
        "",
    );
    let rtt = stats(&review_rtt);
    b.report.row(
        "  … one review's round trip while polling (poll resolution), p50 / max",
        format!("{} / {}", fmt_ms(rtt.p50), fmt_ms(rtt.max)),
        "",
    );
    let key = format!("revocation_{}", kind.replace(' ', "_"));
    b.report.set(
        &key,
        json!({"random_bound_ns": stats_json(&first_lat), "last_bound_ns": stats_json(&last_lat),
               "timeouts": timeouts, "never_granted": not_granted, "sync": sync_json,
               "review_round_trip": stats_json(&review_rtt), "samples": detail}),
    );
    Ok(())
}

async fn bytes_per_change(b: &mut Bench, users: &[User], samples: &[usize]) -> Res<()> {
    let Some(url) = b.args.etcd_url.clone() else {
        b.report.row(
            "bytes written per membership change",
            "skipped (no --etcd-url)",
            "",
        );
        return Ok(());
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let (metric, _) = put_counter(&http, &url).await?;
    let quiet = Duration::from_secs(2);
    let bound = Duration::from_secs(60);
    let ns = b.bound[0].clone();
    let mut deltas = Vec::new();
    for &i in samples {
        let u = &users[i];
        let before = settle(&http, &url, quiet, bound).await?;
        let r = b
            .scim
            .patch_ops(
                &format!("/Users/{}", u.id),
                json!([{"op": "Replace", "path": "active", "value": "False"}]),
            )
            .await?;
        expect("deactivate", &r, &[200, 204])?;
        if poll_access(&b.client, &u.user_name, &ns, false, b.deadline())
            .await?
            .is_none()
        {
            return Err("bytes sample: never denied".into());
        }
        let after = settle(&http, &url, quiet, bound).await?;
        deltas.push(after - before);
    }
    let mut sorted = deltas.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let median = sorted[sorted.len() / 2];
    let label = if metric.contains("put_size") {
        "etcd put bytes"
    } else {
        "etcd db growth"
    };
    b.report.row(
        &format!(
            "bytes written per deactivation ({label}, median of {})",
            deltas.len()
        ),
        format!(
            "{} (samples {})",
            fmt_bytes(median),
            deltas
                .iter()
                .map(|d| fmt_bytes(*d))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        "",
    );
    b.report.set(
        "bytes_per_change",
        json!({"metric": metric, "median_bytes": median, "samples_bytes": deltas}),
    );
    b.phase("bytes per change");
    Ok(())
}

/// `workers` concurrent loops for `secs`, each GETting `path(random live user)`.
async fn throughput<F>(
    b: &Bench,
    live: &Arc<Vec<(String, String)>>,
    path: F,
) -> (f64, Vec<Duration>, u64)
where
    F: Fn(&(String, String)) -> String + Send + Sync + 'static,
{
    let path = Arc::new(path);
    let secs = Duration::from_secs(b.args.lookup_secs);
    let t = Instant::now();
    let end = t + secs;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..b.args.concurrency {
        let (scim, live, path) = (b.scim.clone(), live.clone(), path.clone());
        tasks.spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            // Bounded by time and by count.
            for _ in 0..10_000_000u64 {
                if Instant::now() >= end {
                    break;
                }
                let u = &live[rand::random_range(0..live.len())];
                let t = Instant::now();
                let ok = scim.get(&path(u)).await.is_ok_and(|a| a.status == 200);
                lat.push(t.elapsed());
                if !ok {
                    errors += 1;
                }
            }
            (lat, errors)
        });
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    while let Some(r) = tasks.join_next().await {
        if let Ok((l, e)) = r {
            lat.extend(l);
            errors += e;
        }
    }
    let rate = lat.len() as f64 / t.elapsed().as_secs_f64();
    (rate, lat, errors)
}

async fn lookups(b: &mut Bench, live: Arc<Vec<(String, String)>>) -> Res<()> {
    let middle = b.args.users / 2;
    type PathFn = Box<dyn Fn(&(String, String)) -> String + Send + Sync>;
    let runs: Vec<(&str, &str, PathFn)> = vec![
        (
            "lookup_username",
            "GET /Users?filter=userName eq \"…\"",
            Box::new(|u: &(String, String)| {
                format!("/Users?filter={}", enc(&format!("userName eq \"{}\"", u.1)))
            }),
        ),
        (
            "lookup_work_email",
            "GET /Users?filter=emails[type eq \"work\"].value eq \"…\"",
            Box::new(|u: &(String, String)| {
                format!(
                    "/Users?filter={}",
                    enc(&format!("emails[type eq \"work\"].value eq \"{}\"", u.1))
                )
            }),
        ),
        (
            "page_middle",
            "GET /Users?startIndex=<middle>&count=100",
            Box::new(move |_: &(String, String)| format!("/Users?startIndex={middle}&count=100")),
        ),
    ];
    for (key, label, f) in runs {
        let (rate, lat, errors) = throughput(b, &live, f).await;
        let s = stats(&lat);
        let err = if errors > 0 {
            format!(", {errors} errors")
        } else {
            String::new()
        };
        b.report.row(
            &format!(
                "{label} ({} workers, {} s)",
                b.args.concurrency, b.args.lookup_secs
            ),
            format!(
                "{rate:.0}/s, p50 {}, p99 {}{err}",
                fmt_ms(s.p50),
                fmt_ms(s.p99)
            ),
            "",
        );
        b.report.set(
            key,
            json!({"per_second": rate, "errors": errors, "p50_ms": ms(s.p50), "p99_ms": ms(s.p99), "n": s.n}),
        );
    }
    // Single requests, one at a time: count=0 and a middle page.
    for (key, label, path) in [
        (
            "single_count0",
            "one GET /Users?count=0 (median of 10)",
            "/Users?count=0".to_string(),
        ),
        (
            "single_page",
            "one GET /Users?startIndex=<middle>&count=100 (median of 10)",
            format!("/Users?startIndex={middle}&count=100"),
        ),
    ] {
        let mut lat = Vec::new();
        for _ in 0..10 {
            let t = Instant::now();
            let r = b.scim.get(&path).await?;
            expect(label, &r, &[200])?;
            lat.push(t.elapsed());
        }
        let s = stats(&lat);
        b.report.row(label, fmt_ms(s.p50), "");
        b.report.set(key, stats_json(&lat));
    }
    Ok(())
}
