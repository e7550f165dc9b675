//! Leader election with a coordination.k8s.io/v1 Lease, the way client-go does it, plus
//! fencing.
//!
//! - A lease is expired when its record hasn't changed for `leaseDurationSeconds` *as
//!   measured on our own clock since we first saw that record* (so clock skew between
//!   replicas doesn't matter), and every write carries the resourceVersion it was based
//!   on (two candidates can't both win).
//! - Each leadership is a [`Term`]: the fencing token every write of the controller
//!   checks just before it is sent, and whose cancellation stops in-flight work. A term
//!   is valid until *the moment its last successful acquire/renew round was started* +
//!   the renew deadline, on this process's monotonic clock. Any other replica waits the
//!   whole lease duration from *after* that round's write before it takes over, so a
//!   leader stops writing at least `duration − renew_deadline` (the safety margin) before
//!   its lease could be taken, however long its renewals hang and even if the process was
//!   paused (SIGSTOP, a frozen VM): the first check after it resumes finds the term over.
//! - Every round on the Lease is bounded by [`LeaseConfig::attempt_timeout`], shorter
//!   than the renew deadline: a renewal stuck on a hung connection is cancelled and
//!   retried while the term is still valid.
//!
//! Why not `kube-lease-manager` (0.13 does support kube 5): it judges expiry by comparing
//! the Lease's `renewTime` with the local wall clock (replicas' clocks must agree), its
//! API calls have no timeout of their own, and its "leader" flag only flips after a
//! renewal call returns — so a holder stuck in a hung renewal keeps believing it leads,
//! the exact gap fencing closes here. It would also raise our minimum Rust version
//! (1.89). The loop below is small and fully under our control.
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::telemetry::{Metrics, ReasonLabels};

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("lease API: {0}")]
    Api(#[from] kube::Error),
    #[error("no answer from the API server within {0:?}")]
    Timeout(Duration),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TimingError {
    #[error("lease timings must satisfy 0 < retry period <= renew deadline < lease duration (got duration {duration:?}, renew deadline {renew_deadline:?}, retry period {retry_period:?})")]
    Order {
        duration: Duration,
        renew_deadline: Duration,
        retry_period: Duration,
    },
}

/// Result of one round on the lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attempt {
    /// We hold it (created, took over or renewed).
    Held,
    /// Another replica holds a valid lease.
    Other,
    /// Someone wrote the lease between our read and write: look again.
    Conflict,
}

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a lease stays valid without renewal (what other replicas wait).
    pub duration: Duration,
    /// How often the leader renews.
    pub renew_period: Duration,
    /// A term ends this long after its last successful round *started*: the leader stops
    /// writing `duration − renew_deadline` before anyone else may take the lease.
    pub renew_deadline: Duration,
    /// How often a candidate retries, and a leader after a failed renewal.
    pub retry_period: Duration,
    /// The longest one round on the Lease (read + write) may take.
    pub attempt_timeout: Duration,
}

impl LeaseConfig {
    /// The defaults: a 15 s lease, a 10 s renew deadline, retries every 2 s.
    pub fn new(namespace: String, name: String, identity: String) -> Self {
        LeaseConfig::with_timing(
            namespace,
            name,
            identity,
            Duration::from_secs(15),
            Duration::from_secs(10),
            Duration::from_secs(2),
        )
        .unwrap_or_else(|_| unreachable!("the default timings are ordered"))
    }

    /// A lease of `duration`, renewed every `renew_deadline / 4`; a round times out after
    /// `renew_deadline / 2`, so a hung renewal still leaves time for another.
    pub fn with_timing(
        namespace: String,
        name: String,
        identity: String,
        duration: Duration,
        renew_deadline: Duration,
        retry_period: Duration,
    ) -> Result<Self, TimingError> {
        if retry_period.is_zero() || retry_period > renew_deadline || renew_deadline >= duration {
            return Err(TimingError::Order {
                duration,
                renew_deadline,
                retry_period,
            });
        }
        Ok(LeaseConfig {
            namespace,
            name,
            identity,
            duration,
            renew_period: renew_deadline / 4,
            renew_deadline,
            retry_period,
            attempt_timeout: renew_deadline / 2,
        })
    }

    /// `leaseDurationSeconds` as written: whole seconds, rounded up (never shorter than
    /// what this replica assumes).
    fn duration_secs(&self) -> i32 {
        let secs = self.duration.as_secs() + u64::from(self.duration.subsec_nanos() > 0);
        i32::try_from(secs.max(1)).unwrap_or(i32::MAX)
    }
}

/// Why a term ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TermEnd {
    /// No renewal succeeded within the renew deadline (renewals failed or hung, or the
    /// process was paused).
    RenewalTimeout,
    /// Another replica holds the lease.
    Lost,
    /// The operator is shutting down.
    Shutdown,
}

impl TermEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            TermEnd::RenewalTimeout => "renewal_timeout",
            TermEnd::Lost => "lost",
            TermEnd::Shutdown => "shutdown",
        }
    }
}

/// A write refused because its term is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not the leader any more ({})", .0.as_str())]
pub struct Deposed(pub TermEnd);

/// One leadership term: the fencing token of every controller write. Cheap to clone.
#[derive(Clone)]
pub struct Term(Arc<TermState>);

impl std::fmt::Debug for Term {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Term")
            .field("identity", &self.0.identity)
            .field("valid_until", &self.valid_until())
            .field("ended", &self.ended())
            .finish()
    }
}

struct TermState {
    /// Cancelled when the term ends: in-flight work stops.
    token: CancellationToken,
    /// Deposed from this instant on (None: only `token` ends it — no leader election).
    valid_until: Option<Mutex<Instant>>,
    ended: OnceLock<TermEnd>,
    identity: String,
    metrics: Option<Arc<Metrics>>,
}

impl Term {
    /// A term valid until `valid_until` unless renewed (see [`Elector::hold`]);
    /// `token` should be a child of the shutdown token.
    pub fn new(
        token: CancellationToken,
        valid_until: Instant,
        identity: String,
        metrics: Option<Arc<Metrics>>,
    ) -> Term {
        Term(Arc::new(TermState {
            token,
            valid_until: Some(Mutex::new(valid_until)),
            ended: OnceLock::new(),
            identity,
            metrics,
        }))
    }

    /// A term that ends only with `token` (leader election off; tests).
    pub fn unbounded(token: CancellationToken) -> Term {
        Term(Arc::new(TermState {
            token,
            valid_until: None,
            ended: OnceLock::new(),
            identity: String::new(),
            metrics: None,
        }))
    }

    /// Ok while this replica still leads: call it just before sending a write. Finding
    /// the deadline passed ends the term (cancelling everything tied to it).
    pub fn check(&self) -> Result<(), Deposed> {
        if let Some(why) = self.0.ended.get() {
            return Err(Deposed(*why));
        }
        if self.0.token.is_cancelled() {
            return Err(Deposed(TermEnd::Shutdown));
        }
        match self.valid_until() {
            Some(until) if Instant::now() >= until => {
                self.end(TermEnd::RenewalTimeout);
                Err(Deposed(TermEnd::RenewalTimeout))
            }
            _ => Ok(()),
        }
    }

    pub fn is_leading(&self) -> bool {
        self.check().is_ok()
    }

    /// The token cancelled when the term ends.
    pub fn token(&self) -> &CancellationToken {
        &self.0.token
    }

    /// Completes when the term ends.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.0.token.cancelled()
    }

    /// When the term ends unless renewed.
    pub fn valid_until(&self) -> Option<Instant> {
        self.0
            .valid_until
            .as_ref()
            .map(|m| *m.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The refusal of a write after the term ended.
    pub fn deposed(&self) -> Deposed {
        Deposed(self.ended().unwrap_or(TermEnd::Shutdown))
    }

    /// Why it ended, once it has.
    pub fn ended(&self) -> Option<TermEnd> {
        self.0.ended.get().copied()
    }

    /// A renewal that started at `started` succeeded: valid until `until`.
    fn extend(&self, until: Instant) {
        if let Some(m) = &self.0.valid_until {
            let mut v = m.lock().unwrap_or_else(PoisonError::into_inner);
            *v = (*v).max(until);
        }
    }

    /// End the term (the first reason sticks): every write stops, in-flight work is
    /// cancelled, the leader gauge drops, and one clear line is logged.
    pub fn end(&self, why: TermEnd) {
        if self.0.ended.set(why).is_err() {
            return;
        }
        self.0.token.cancel();
        let identity = &self.0.identity;
        match why {
            TermEnd::RenewalTimeout => tracing::warn!(
                %identity,
                reason = why.as_str(),
                "leadership term ended: the lease was not renewed within the renew deadline \
                 (renewals timed out or failed, or the process was paused); no more writes"
            ),
            TermEnd::Lost => tracing::warn!(
                %identity,
                reason = why.as_str(),
                "leadership term ended: another replica holds the lease; no more writes"
            ),
            TermEnd::Shutdown => {
                tracing::info!(%identity, reason = why.as_str(), "leadership term ended: shutting down")
            }
        }
        if let Some(m) = &self.0.metrics {
            m.is_leader.set(0);
            m.leader_terms_ended
                .get_or_create(&ReasonLabels {
                    reason: why.as_str(),
                })
                .inc();
        }
    }
}

/// The last lease record seen and when we first saw it (our clock).
#[derive(Debug)]
struct Observed {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    seen_at: Instant,
}

pub struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    observed: Option<Observed>,
    metrics: Option<Arc<Metrics>>,
}

/// This replica's identity: `POD_NAME` if given, else hostname plus a random suffix (two
/// processes on one host must not share an identity).
pub fn default_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "kube-scim".to_owned());
    format!("{host}-{:08x}", rand::random::<u32>())
}

impl Elector {
    pub fn new(client: Client, cfg: LeaseConfig) -> Self {
        Elector {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            observed: None,
            metrics: None,
        }
    }

    /// Terms of this elector drop the leader gauge and count their ends in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn identity(&self) -> &str {
        &self.cfg.identity
    }

    /// Wait until this replica holds the lease and return its term (its token a child of
    /// `stop`). `on_standby` runs each time another replica is seen holding it. None when
    /// `stop` is cancelled first.
    pub async fn acquire(
        &mut self,
        stop: &CancellationToken,
        mut on_standby: impl FnMut(),
    ) -> Option<Term> {
        loop {
            // The term is measured from before the round: whatever it costs, the others
            // only start counting once our write has landed.
            let started = Instant::now();
            let round = tokio::select! {
                _ = stop.cancelled() => return None,
                r = self.round(self.cfg.attempt_timeout) => r,
            };
            match round {
                Ok(Attempt::Held) => {
                    tracing::info!(identity = %self.cfg.identity, lease = %self.cfg.name, "became leader");
                    return Some(Term::new(
                        stop.child_token(),
                        started + self.cfg.renew_deadline,
                        self.cfg.identity.clone(),
                        self.metrics.clone(),
                    ));
                }
                Ok(Attempt::Other) => on_standby(),
                Ok(Attempt::Conflict) => {}
                Err(e) => tracing::warn!(error = %e, "lease acquisition failed; retrying"),
            }
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tokio::time::sleep(self.cfg.retry_period) => {}
            }
        }
    }

    /// Keep renewing the lease of `term` until the term ends: on shutdown (its token
    /// cancelled), when another replica holds the lease, or when no renewal succeeded
    /// within the renew deadline — ended right at that deadline, even while a renewal
    /// is still waiting for an answer.
    pub async fn hold(&mut self, term: &Term) {
        let mut next = Instant::now() + self.cfg.renew_period;
        loop {
            let wake = term.valid_until().map_or(next, |until| next.min(until));
            tokio::select! {
                _ = term.cancelled() => return,
                _ = tokio::time::sleep_until(wake) => {}
            }
            if term.check().is_err() {
                return;
            }
            let started = Instant::now();
            // Never wait for an answer past the end of the term.
            let budget = term
                .valid_until()
                .map_or(self.cfg.attempt_timeout, |until| {
                    self.cfg
                        .attempt_timeout
                        .min(until.saturating_duration_since(started))
                });
            let round = tokio::select! {
                _ = term.cancelled() => return,
                r = self.round(budget) => r,
            };
            next = match round {
                Ok(Attempt::Held) => {
                    term.extend(started + self.cfg.renew_deadline);
                    Instant::now() + self.cfg.renew_period
                }
                Ok(Attempt::Other) => {
                    term.end(TermEnd::Lost);
                    return;
                }
                // Someone wrote the lease since we read it: look again at once.
                Ok(Attempt::Conflict) => Instant::now(),
                Err(LeaseError::Timeout(t)) => {
                    tracing::warn!(identity = %self.cfg.identity, timeout = ?t, "lease renewal timed out; retrying while the term lasts");
                    Instant::now()
                }
                Err(e) => {
                    tracing::warn!(identity = %self.cfg.identity, error = %e, "lease renewal failed; retrying while the term lasts");
                    Instant::now() + self.cfg.retry_period
                }
            };
        }
    }

    /// Give the lease up (on shutdown) so a standby takes over at once.
    pub async fn release(&mut self) {
        let timeout = self.cfg.attempt_timeout;
        match tokio::time::timeout(timeout, self.try_release()).await {
            Ok(Ok(true)) => tracing::info!(identity = %self.cfg.identity, "lease released"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "lease release failed"),
            Err(_) => tracing::warn!(?timeout, "lease release timed out"),
        }
    }

    async fn try_release(&mut self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await? else {
            return Ok(false);
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return Ok(false);
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await?;
        Ok(true)
    }

    /// One round, given up after `timeout`.
    async fn round(&mut self, timeout: Duration) -> Result<Attempt, LeaseError> {
        match tokio::time::timeout(timeout, self.try_acquire_or_renew()).await {
            Ok(r) => r,
            Err(_) => Err(LeaseError::Timeout(timeout)),
        }
    }

    /// One round: create, take over, or renew the lease.
    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, LeaseError> {
        let now = MicroTime(Timestamp::now());
        let duration_secs = self.cfg.duration_secs();
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.cfg.identity.clone()),
                    lease_duration_seconds: Some(duration_secs),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Held),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Conflict),
                Err(e) => Err(e.into()),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let changed = self
            .observed
            .as_ref()
            .is_none_or(|o| o.holder != holder || o.renew_time != spec.renew_time);
        if changed {
            self.observed = Some(Observed {
                holder: holder.clone(),
                renew_time: spec.renew_time.clone(),
                seen_at: Instant::now(),
            });
        }
        let ours = holder.as_deref() == Some(self.cfg.identity.as_str());
        if !ours {
            if let (Some(_), Some(o)) = (&holder, &self.observed) {
                let their_duration = spec
                    .lease_duration_seconds
                    .and_then(|s| u64::try_from(s).ok())
                    .map_or(self.cfg.duration, Duration::from_secs);
                if o.seen_at.elapsed() < their_duration {
                    return Ok(Attempt::Other);
                }
            }
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        spec.holder_identity = Some(self.cfg.identity.clone());
        spec.lease_duration_seconds = Some(duration_secs);
        spec.renew_time = Some(now);
        // `replace` sends the resourceVersion we read: a concurrent write wins, we lose.
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => {
                let spec = written.spec.unwrap_or_default();
                self.observed = Some(Observed {
                    holder: spec.holder_identity,
                    renew_time: spec.renew_time,
                    seen_at: Instant::now(),
                });
                Ok(Attempt::Held)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Conflict),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use kube::client::Body;

    /// A fake API server: `answer(method, body)` gives the JSON answer, None hangs forever.
    fn fake_api(
        answer: impl Fn(&http::Method, &[u8]) -> Option<serde_json::Value>
            + Clone
            + Send
            + Sync
            + 'static,
        requests: Arc<AtomicUsize>,
    ) -> Client {
        let service = tower::service_fn(move |req: http::Request<Body>| {
            let answer = answer.clone();
            let requests = Arc::clone(&requests);
            async move {
                requests.fetch_add(1, Ordering::SeqCst);
                let method = req.method().clone();
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes().to_vec())
                    .unwrap_or_default();
                match answer(&method, &body) {
                    Some(json) => {
                        let mut resp =
                            http::Response::new(Body::from(json.to_string().into_bytes()));
                        resp.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, std::io::Error>(resp)
                    }
                    None => std::future::pending().await,
                }
            }
        });
        Client::new(service, "default")
    }

    fn lease_json(holder: &str) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "l", "namespace": "ns", "resourceVersion": "1"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 3,
                     "renewTime": "2024-01-01T00:00:00.000000Z"}
        })
    }

    fn test_config() -> LeaseConfig {
        LeaseConfig::with_timing(
            "ns".into(),
            "l".into(),
            "me".into(),
            Duration::from_secs(3),
            Duration::from_secs(2),
            Duration::from_millis(200),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_renewal_is_cut_off_and_the_term_ends_at_its_deadline() {
        let requests = Arc::new(AtomicUsize::new(0));
        let client = fake_api(|_, _| None, Arc::clone(&requests));
        let mut elector = Elector::new(client, test_config());
        let started = Instant::now();
        let t = term(Duration::from_secs(2));
        tokio::time::timeout(Duration::from_secs(60), elector.hold(&t))
            .await
            .unwrap_or_else(|_| panic!("hold returned"));
        // Not a moment later than the deadline, although the renewal never answered.
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert_eq!(t.ended(), Some(TermEnd::RenewalTimeout));
        assert!(t.token().is_cancelled());
        // The first renewal (at 0.5 s) timed out after 1 s, and was retried.
        assert!(requests.load(Ordering::SeqCst) >= 2, "{requests:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn renewals_keep_the_term_and_another_holder_ends_it() {
        let requests = Arc::new(AtomicUsize::new(0));
        let client = fake_api(
            |method, body| match *method {
                http::Method::GET => Some(lease_json("me")),
                _ => serde_json::from_slice(body).ok(),
            },
            Arc::clone(&requests),
        );
        let mut elector = Elector::new(client, test_config());
        let t = term(Duration::from_secs(2));
        let held = tokio::time::timeout(Duration::from_secs(10), elector.hold(&t)).await;
        assert!(held.is_err(), "still holding after 10 s");
        assert!(t.is_leading(), "renewals extended the term: {t:?}");
        assert!(requests.load(Ordering::SeqCst) >= 20);

        let client = fake_api(
            |_, _| Some(lease_json("someone-else")),
            Arc::new(AtomicUsize::new(0)),
        );
        let mut elector = Elector::new(client, test_config());
        let t = term(Duration::from_secs(2));
        tokio::time::timeout(Duration::from_secs(10), elector.hold(&t))
            .await
            .unwrap_or_else(|_| panic!("hold returned"));
        assert_eq!(t.ended(), Some(TermEnd::Lost));
    }

    fn term(valid_for: Duration) -> Term {
        Term::new(
            CancellationToken::new(),
            Instant::now() + valid_for,
            "me".into(),
            None,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_term_ends_at_its_deadline_even_if_nothing_runs_meanwhile() {
        let t = term(Duration::from_secs(10));
        assert!(t.check().is_ok());
        // A paused process: nothing ran, the clock moved on.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(t.check(), Err(Deposed(TermEnd::RenewalTimeout)));
        assert!(t.token().is_cancelled(), "in-flight work is cancelled");
        assert_eq!(t.ended(), Some(TermEnd::RenewalTimeout));
    }

    #[tokio::test(start_paused = true)]
    async fn renewal_extends_and_the_first_end_sticks() {
        let t = term(Duration::from_secs(10));
        let started = Instant::now();
        tokio::time::advance(Duration::from_secs(8)).await;
        // A renewal that started 8 s in extends the term to 8 + 10 s.
        t.extend(started + Duration::from_secs(18));
        // An older renewal never shortens it.
        t.extend(started + Duration::from_secs(5));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(t.is_leading());
        t.end(TermEnd::Lost);
        t.end(TermEnd::RenewalTimeout);
        assert_eq!(t.check(), Err(Deposed(TermEnd::Lost)));
        assert_eq!(t.ended(), Some(TermEnd::Lost));
    }

    #[test]
    fn cancelling_the_parent_ends_the_term() {
        let parent = CancellationToken::new();
        let t = Term::unbounded(parent.child_token());
        assert!(t.is_leading());
        assert_eq!(t.valid_until(), None);
        parent.cancel();
        assert_eq!(t.check(), Err(Deposed(TermEnd::Shutdown)));
    }

    #[test]
    fn timings_leave_a_margin_and_time_for_a_second_renewal() {
        let cfg = |d: u64, rd: u64, retry: u64| {
            LeaseConfig::with_timing(
                "ns".into(),
                "l".into(),
                "me".into(),
                Duration::from_millis(d),
                Duration::from_millis(rd),
                Duration::from_millis(retry),
            )
        };
        let c = cfg(15_000, 10_000, 2_000).unwrap();
        assert!(c.attempt_timeout < c.renew_deadline);
        assert!(c.renew_period + c.attempt_timeout < c.renew_deadline);
        assert_eq!(c.duration_secs(), 15);
        assert_eq!(cfg(2_500, 2_000, 500).unwrap().duration_secs(), 3);
        assert!(cfg(10_000, 10_000, 2_000).is_err(), "no margin");
        assert!(cfg(15_000, 10_000, 0).is_err());
        assert!(cfg(15_000, 1_000, 2_000).is_err());
        let d = LeaseConfig::new("ns".into(), "l".into(), "me".into());
        assert_eq!(
            (d.duration, d.renew_deadline, d.retry_period),
            (
                Duration::from_secs(15),
                Duration::from_secs(10),
                Duration::from_secs(2)
            )
        );
    }
}
