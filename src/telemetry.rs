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
use prometheus_client::registry::Registry;

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

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("kube_scim");
        let scim_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "scim_requests",
            "SCIM requests by route, method and status",
            scim_requests.clone(),
        );
        let scim_request_duration = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "scim_request_duration_seconds",
            "SCIM request latency",
            scim_request_duration.clone(),
        );
        let auth_failures = Family::<CategoryLabels, Counter>::default();
        registry.register(
            "auth_failures",
            "Rejected SCIM bearer tokens by reason",
            auth_failures.clone(),
        );
        let reconciles = Counter::default();
        registry.register(
            "reconciles",
            "Controller reconcile passes",
            reconciles.clone(),
        );
        let reconcile_failures = Family::<CategoryLabels, Counter>::default();
        registry.register(
            "reconcile_failures",
            "Failed reconcile steps by error category",
            reconcile_failures.clone(),
        );
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "reconcile_duration_seconds",
            "Duration of a reconcile pass",
            reconcile_duration.clone(),
        );
        let managed_bindings = Family::<BindingKindLabels, Gauge>::default();
        registry.register(
            "managed_bindings",
            "Bindings managed by kube-scim",
            managed_bindings.clone(),
        );
        let managed_subjects = Gauge::default();
        registry.register(
            "managed_subjects",
            "Subjects across managed bindings",
            managed_subjects.clone(),
        );
        let is_leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica runs the controller",
            is_leader.clone(),
        );
        let leader_terms_ended = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "leader_terms_ended",
            "Leadership terms of this replica that ended, by reason: renewal_timeout (not renewed within the renew deadline), lost (another replica holds the lease), shutdown",
            leader_terms_ended.clone(),
        );
        let watch_lists = Family::<WatchLabels, Counter>::default();
        registry.register(
            "controller_watch_lists",
            "Complete lists (first and re-lists) of each controller watch; every replica keeps them, so taking over lists nothing",
            watch_lists.clone(),
        );
        let revocations = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "revocations",
            "Subjects removed from bindings by the revocation fast lane, by outcome",
            revocations.clone(),
        );
        let revocation_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "revocation_duration_seconds",
            "From the watch event of a deactivation, deletion or member removal to its bindings written",
            revocation_duration.clone(),
        );
        let held_removals = Gauge::default();
        registry.register(
            "held_removals",
            "Subjects whose removal the mass-removal guard holds until a person confirms (mapping edits only)",
            held_removals.clone(),
        );
        let token_expiry = Family::<TokenLabels, Gauge>::default();
        registry.register(
            "token_expiry_timestamp_seconds",
            "Expiry of each SCIM bearer token as a Unix time, by token name (tokens that never expire have no series)",
            token_expiry.clone(),
        );
        Arc::new(Metrics {
            registry,
            token_expiry,
            revocations,
            revocation_duration,
            held_removals,
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

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
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
