//! Logs (tracing, text or JSON) and Prometheus metrics (prometheus-client).
//! Metric labels are bounded: route templates, methods, status codes, error categories —
//! never object names or user input. The one exception is the token name of
//! `kube_scim_token_expiry_timestamp_seconds`: token names are chosen by an administrator
//! (`kube-scim token create NAME`), and there are a handful of them.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Metric, Registry};

use crate::config::LogConfig;

/// Install the global tracing subscriber.
pub fn init_tracing(cfg: &LogConfig) {
    use tracing_subscriber::{fmt, EnvFilter};
    let filter = EnvFilter::try_new(&cfg.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (tests) is harmless: ignore the error.
    let _ = if cfg.log_json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The matched route template (e.g. `/scim/v2/Users/{id}`), or `unmatched`.
    pub route: String,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CategoryLabels {
    pub category: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    /// The token's name (administrator-chosen, few), never the token.
    pub token: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BindingKindLabels {
    pub kind: &'static str,
}

/// Every metric the operator exports.
pub struct Metrics {
    pub registry: Registry,
    /// What `registry` holds, as PromQL names it (see [`Metrics::exported`]).
    exported: Vec<Exported>,
    pub scim_requests: Family<RequestLabels, Counter>,
    pub scim_request_duration: Family<RouteLabels, Histogram>,
    pub auth_failures: Family<CategoryLabels, Counter>,
    pub reconciles: Counter,
    pub reconcile_failures: Family<CategoryLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub managed_bindings: Family<BindingKindLabels, Gauge>,
    pub managed_subjects: Gauge,
    pub is_leader: Gauge,
    /// Leadership terms that ended, by reason (renewal_timeout, lost, shutdown).
    pub leader_terms_ended: Family<ReasonLabels, Counter>,
    /// Complete lists (initial and re-lists) of each controller watch: a standby that
    /// takes over lists nothing.
    pub watch_lists: Family<WatchLabels, Counter>,
    /// Subjects the fast lane took out of bindings, by outcome (removed, stale, failed).
    pub revocations: Family<OutcomeLabels, Counter>,
    /// Watch event → fast-lane write acknowledged.
    pub revocation_duration: Histogram,
    /// Subjects whose removal the mass-removal guard holds, across mappings.
    pub held_removals: Gauge,
    /// Mappings by the reason of their Ready condition (`Reconciled` when Ready).
    pub mappings: Family<ReasonLabels, Gauge>,
    /// Objects whose status write failed and waits for its own retry time.
    pub status_delayed: Gauge,
    /// Status writes (or Events) waiting in the queue.
    pub status_queued: Gauge,
    /// Bindings whose write failed and waits for its own retry time.
    pub binding_delayed: Gauge,
    /// Failed writes scheduled for a retry, by what was written and why it failed.
    pub write_retries: Family<RetryLabels, Counter>,
    /// Expiry of each SCIM token that has one (Unix seconds); tokens without an expiry
    /// have no series.
    pub token_expiry: Family<TokenLabels, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchLabels {
    pub watch: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    /// `binding` or `status`.
    pub kind: &'static str,
    /// `conflict`, `throttled`, `unavailable`, `invalid`, `forbidden`, `other`.
    pub category: &'static str,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registering::with_prefix("kube_scim");
        let scim_requests = Family::<RequestLabels, Counter>::default();
        registry.add(
            "scim_requests",
            "SCIM requests by route, method and status",
            scim_requests.clone(),
        );
        let scim_request_duration = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.add(
            "scim_request_duration_seconds",
            "SCIM request latency",
            scim_request_duration.clone(),
        );
        let auth_failures = Family::<CategoryLabels, Counter>::default();
        registry.add(
            "auth_failures",
            "Rejected SCIM bearer tokens by reason",
            auth_failures.clone(),
        );
        let reconciles = Counter::default();
        registry.add(
            "reconciles",
            "Controller reconcile passes",
            reconciles.clone(),
        );
        let reconcile_failures = Family::<CategoryLabels, Counter>::default();
        registry.add(
            "reconcile_failures",
            "Failed reconcile steps by error category",
            reconcile_failures.clone(),
        );
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.add(
            "reconcile_duration_seconds",
            "Duration of a reconcile pass",
            reconcile_duration.clone(),
        );
        let managed_bindings = Family::<BindingKindLabels, Gauge>::default();
        registry.add(
            "managed_bindings",
            "Bindings managed by kube-scim",
            managed_bindings.clone(),
        );
        let managed_subjects = Gauge::default();
        registry.add(
            "managed_subjects",
            "Subjects across managed bindings",
            managed_subjects.clone(),
        );
        let is_leader = Gauge::default();
        registry.add(
            "leader",
            "1 while this replica runs the controller",
            is_leader.clone(),
        );
        let leader_terms_ended = Family::<ReasonLabels, Counter>::default();
        registry.add(
            "leader_terms_ended",
            "Leadership terms of this replica that ended, by reason: renewal_timeout (not renewed within the renew deadline), lost (another replica holds the lease), shutdown",
            leader_terms_ended.clone(),
        );
        let watch_lists = Family::<WatchLabels, Counter>::default();
        registry.add(
            "controller_watch_lists",
            "Complete lists (first and re-lists) of each controller watch; every replica keeps them, so taking over lists nothing",
            watch_lists.clone(),
        );
        let revocations = Family::<OutcomeLabels, Counter>::default();
        registry.add(
            "revocations",
            "Subjects removed from bindings by the revocation fast lane, by outcome",
            revocations.clone(),
        );
        let revocation_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.add(
            "revocation_duration_seconds",
            "From the watch event of a deactivation, deletion or member removal to its bindings written",
            revocation_duration.clone(),
        );
        let held_removals = Gauge::default();
        registry.add(
            "held_removals",
            "Subjects whose removal the mass-removal guard holds until a person confirms (mapping edits only)",
            held_removals.clone(),
        );
        let mappings = Family::<ReasonLabels, Gauge>::default();
        registry.add(
            "mappings",
            "Mappings (both kinds) by the reason of their Ready condition: Reconciled when Ready, else the most severe problem (GroupNotFound, ScopeRefused, BindingRefused, RemovalHeld, FanOutExceeded, Expired, ...)",
            mappings.clone(),
        );
        let status_delayed = Gauge::default();
        registry.add(
            "status_writes_delayed",
            "Objects whose status write failed and waits for its retry (per-object backoff, or the API server's Retry-After)",
            status_delayed.clone(),
        );
        let status_queued = Gauge::default();
        registry.add(
            "status_writes_queued",
            "Objects whose status (or Events) waits in the status writer's queue; user statuses trail at --user-status-writes-per-second",
            status_queued.clone(),
        );
        let binding_delayed = Gauge::default();
        registry.add(
            "binding_writes_delayed",
            "Bindings whose write failed and waits for its retry (per-object backoff, or the API server's Retry-After); removals of subjects from them still go out",
            binding_delayed.clone(),
        );
        let write_retries = Family::<RetryLabels, Counter>::default();
        registry.add(
            "write_retries",
            "Failed controller writes scheduled for a retry, by kind (binding, status) and category (conflict, throttled, unavailable, invalid, forbidden, other)",
            write_retries.clone(),
        );
        let token_expiry = Family::<TokenLabels, Gauge>::default();
        registry.add(
            "token_expiry_timestamp_seconds",
            "Expiry of each SCIM bearer token as a Unix time, by token name (tokens that never expire have no series)",
            token_expiry.clone(),
        );
        Arc::new(Metrics {
            exported: registry.exported,
            registry: registry.registry,
            token_expiry,
            revocations,
            revocation_duration,
            held_removals,
            mappings,
            status_delayed,
            status_queued,
            binding_delayed,
            write_retries,
            scim_requests,
            scim_request_duration,
            auth_failures,
            reconciles,
            reconcile_failures,
            reconcile_duration,
            managed_bindings,
            managed_subjects,
            is_leader,
            leader_terms_ended,
            watch_lists,
        })
    }

    /// Count a failed write of `kind` (`binding`, `status`) that will be retried.
    pub fn count_retry(&self, kind: &'static str, category: &'static str) {
        self.write_retries
            .get_or_create(&RetryLabels { kind, category })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Every registered metric, named as PromQL selects it (what docs/observability.md
    /// lists and what the chart's alerts and dashboard may use), whether or not it has a
    /// series yet.
    pub fn exported(&self) -> Vec<Exported> {
        self.exported.clone()
    }
}

/// The type of an exported metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
    /// Info and unknown types (none registered today).
    Other,
}

impl MetricKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
            MetricKind::Other => "other",
        }
    }
}

/// One registered metric.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exported {
    /// As queried: counters with `_total`, histograms without their suffixes.
    pub name: String,
    pub kind: MetricKind,
    pub help: String,
}

impl Exported {
    /// The series names a query can select: `_total` of a counter; `_bucket`, `_sum`,
    /// `_count` of a histogram; a gauge's name.
    pub fn series(&self) -> Vec<String> {
        match self.kind {
            MetricKind::Counter | MetricKind::Gauge | MetricKind::Other => {
                vec![self.name.clone()]
            }
            MetricKind::Histogram => ["_bucket", "_sum", "_count"]
                .iter()
                .map(|s| format!("{}{s}", self.name))
                .collect(),
        }
    }
}

/// A registry that also records what it registers: the encoder writes nothing for a
/// family without series, so the exposition cannot list every metric. Register every
/// metric through [`Registering::add`].
struct Registering {
    registry: Registry,
    prefix: &'static str,
    exported: Vec<Exported>,
}

impl Registering {
    fn with_prefix(prefix: &'static str) -> Self {
        Registering {
            registry: Registry::with_prefix(prefix),
            prefix,
            exported: Vec::new(),
        }
    }

    fn add(&mut self, name: &str, help: &str, metric: impl Metric) {
        let kind = match metric.metric_type() {
            MetricType::Counter => MetricKind::Counter,
            MetricType::Histogram => MetricKind::Histogram,
            MetricType::Gauge => MetricKind::Gauge,
            _ => MetricKind::Other,
        };
        let full = format!("{}_{name}", self.prefix);
        self.exported.push(Exported {
            // A counter's sample (what a query selects) carries `_total`.
            name: match kind {
                MetricKind::Counter => format!("{full}_total"),
                _ => full,
            },
            kind,
            help: help.to_string(),
        });
        self.registry.register(name, help, metric);
    }
}

/// Readiness flags: /readyz answers 200 once every enabled part has synced its caches.
#[derive(Default, Debug)]
pub struct Readiness {
    pub scim_synced: AtomicBool,
    pub controller_synced: AtomicBool,
    pub scim_enabled: AtomicBool,
    pub controller_enabled: AtomicBool,
}

impl Readiness {
    pub fn ready(&self) -> bool {
        let scim =
            !self.scim_enabled.load(Ordering::Relaxed) || self.scim_synced.load(Ordering::Relaxed);
        // A replica that is not the leader still serves SCIM: the controller part is
        // ready once it has either synced as leader or is standing by.
        let ctrl = !self.controller_enabled.load(Ordering::Relaxed)
            || self.controller_synced.load(Ordering::Relaxed);
        scim && ctrl
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    const DOC: &str = include_str!("../docs/observability.md");

    /// The code spans of a Markdown table cell.
    fn code_spans(cell: &str) -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    }

    /// (type, labels) of every `kube_scim_` row of the doc's metrics table, by name.
    fn documented() -> BTreeMap<String, (String, BTreeSet<String>)> {
        let mut rows = BTreeMap::new();
        for line in DOC.lines() {
            let cells: Vec<&str> = line.trim().trim_matches('|').split(" | ").collect();
            let Some(name) = cells.first().and_then(|c| code_spans(c).into_iter().next()) else {
                continue;
            };
            if !name.starts_with("kube_scim_") || cells.len() < 5 {
                continue;
            }
            let labels = code_spans(cells[2]).into_iter().collect();
            let previous = rows.insert(name.clone(), (cells[1].trim().to_string(), labels));
            assert!(previous.is_none(), "{name} is documented twice");
        }
        rows
    }

    /// Label names of each sample's metric, by the name PromQL selects (histogram
    /// suffixes folded into the histogram's name).
    fn sample_labels(text: &str) -> BTreeMap<String, BTreeSet<String>> {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            let sample = &line[..end];
            let name = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| sample.strip_suffix(s))
                .unwrap_or(sample);
            let labels = out.entry(name.to_string()).or_default();
            if let Some(inner) = line[end..].strip_prefix('{') {
                let inner = inner.split('}').next().unwrap_or_default();
                for pair in inner.split(',') {
                    if let Some((k, _)) = pair.split_once('=') {
                        if k != "le" {
                            labels.insert(k.to_string());
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn every_registered_metric_is_documented_with_its_type_and_labels() {
        let m = Metrics::new();
        // One series per family, so its labels show in the exposition.
        m.scim_requests
            .get_or_create(&RequestLabels {
                route: "/scim/v2/Users".into(),
                method: "GET".into(),
                status: 200,
            })
            .inc();
        m.scim_request_duration
            .get_or_create(&RouteLabels {
                route: "/scim/v2/Users".into(),
                method: "GET".into(),
            })
            .observe(0.01);
        for (family, category) in [
            (&m.auth_failures, "missing"),
            (&m.reconcile_failures, "plan"),
        ] {
            family.get_or_create(&CategoryLabels { category }).inc();
        }
        m.token_expiry
            .get_or_create(&TokenLabels {
                token: "entra".into(),
            })
            .set(1);
        m.managed_bindings
            .get_or_create(&BindingKindLabels {
                kind: "RoleBinding",
            })
            .set(1);
        m.leader_terms_ended
            .get_or_create(&ReasonLabels { reason: "lost" })
            .inc();
        m.mappings
            .get_or_create(&ReasonLabels {
                reason: "Reconciled",
            })
            .set(1);
        m.watch_lists
            .get_or_create(&WatchLabels { watch: "roles" })
            .inc();
        m.revocations
            .get_or_create(&OutcomeLabels { outcome: "removed" })
            .inc();
        m.count_retry("binding", "forbidden");

        let exported = m.exported();
        assert!(exported.len() >= 16, "{exported:?}");
        let docs = documented();
        let registered: BTreeSet<&str> = exported.iter().map(|e| e.name.as_str()).collect();
        let in_docs: BTreeSet<&str> = docs.keys().map(String::as_str).collect();
        assert_eq!(
            registered.difference(&in_docs).collect::<Vec<_>>(),
            Vec::<&&str>::new(),
            "registered but not in docs/observability.md"
        );
        assert_eq!(
            in_docs.difference(&registered).collect::<Vec<_>>(),
            Vec::<&&str>::new(),
            "in docs/observability.md but not registered"
        );
        let labels = sample_labels(&m.encode());
        for e in &exported {
            let (kind, doc_labels) = &docs[&e.name];
            assert_eq!(kind, e.kind.as_str(), "type of {}", e.name);
            assert!(!e.help.is_empty(), "{} has help text", e.name);
            let base = e.name.strip_suffix("_total").unwrap_or(&e.name);
            let want = labels
                .get(&e.name)
                .or_else(|| labels.get(base))
                .unwrap_or_else(|| panic!("{} has a series in the test", e.name));
            assert_eq!(doc_labels, want, "labels of {}", e.name);
        }
    }

    #[test]
    fn series_names_follow_the_metric_type() {
        let m = Metrics::new();
        let by_name: BTreeMap<String, Exported> = m
            .exported()
            .into_iter()
            .map(|e| (e.name.clone(), e))
            .collect();
        assert_eq!(
            by_name["kube_scim_scim_requests_total"].series(),
            ["kube_scim_scim_requests_total"]
        );
        assert_eq!(by_name["kube_scim_leader"].series(), ["kube_scim_leader"]);
        assert_eq!(
            by_name["kube_scim_reconcile_duration_seconds"].series(),
            [
                "kube_scim_reconcile_duration_seconds_bucket",
                "kube_scim_reconcile_duration_seconds_sum",
                "kube_scim_reconcile_duration_seconds_count"
            ]
        );
    }
}
