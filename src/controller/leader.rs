//! Leader election with a coordination.k8s.io/v1 Lease, the way client-go does it:
//! a lease is expired when its record hasn't changed for `leaseDurationSeconds` *as
//! measured on our own clock since we first saw that record* (so clock skew between
//! replicas doesn't matter), every write carries the resourceVersion it was based on
//! (two candidates can't both win), the leader renews every `ttl/3` and steps down when
//! it couldn't renew within the renew deadline, and releases the lease on shutdown.
//!
//! (kube-lease-manager 0.13 supports kube 5, but pulls a second `rand` major and needs
//! a dependency change; this loop is small and fully under our control.)
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("lease API: {0}")]
    Api(#[from] kube::Error),
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
    /// How long a lease stays valid without renewal.
    pub duration: Duration,
    /// How often the leader renews.
    pub renew_period: Duration,
    /// The leader steps down when it couldn't renew for this long.
    pub renew_deadline: Duration,
    /// How often a candidate retries.
    pub retry_period: Duration,
}

impl LeaseConfig {
    pub fn new(namespace: String, name: String, identity: String) -> Self {
        LeaseConfig {
            namespace,
            name,
            identity,
            duration: Duration::from_secs(15),
            renew_period: Duration::from_secs(5),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
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
        }
    }

    pub fn identity(&self) -> &str {
        &self.cfg.identity
    }

    /// Wait until this replica holds the lease. `on_standby` runs each time another
    /// replica is seen holding it. Returns false when `stop` is cancelled first.
    pub async fn acquire(
        &mut self,
        stop: &CancellationToken,
        mut on_standby: impl FnMut(),
    ) -> bool {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Held) => {
                    tracing::info!(identity = %self.cfg.identity, lease = %self.cfg.name, "became leader");
                    return true;
                }
                Ok(Attempt::Other) => on_standby(),
                Ok(Attempt::Conflict) => {}
                Err(e) => tracing::warn!(error = %e, "lease acquisition failed; retrying"),
            }
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = tokio::time::sleep(self.cfg.retry_period) => {}
            }
        }
    }

    /// Keep renewing the lease until `stop` is cancelled or leadership is lost; in the
    /// latter case `stop` is cancelled too, so everything leading stops at once.
    pub async fn hold(&mut self, stop: &CancellationToken) {
        let mut last_renew = Instant::now();
        let mut wait = self.cfg.renew_period;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Held) => {
                    last_renew = Instant::now();
                    wait = self.cfg.renew_period;
                    continue;
                }
                Ok(Attempt::Conflict) => {}
                Ok(Attempt::Other) => {
                    tracing::warn!(identity = %self.cfg.identity, "lease taken by another replica; stepping down");
                    stop.cancel();
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "lease renewal failed"),
            }
            if last_renew.elapsed() >= self.cfg.renew_deadline {
                tracing::warn!(identity = %self.cfg.identity, "could not renew the lease in time; stepping down");
                stop.cancel();
                return;
            }
            wait = self.cfg.retry_period;
        }
    }

    /// Give the lease up (on shutdown) so a standby takes over at once.
    pub async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.cfg.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(identity = %self.cfg.identity, "lease released"),
            Err(e) => tracing::warn!(error = %e, "lease release failed"),
        }
    }

    /// One round: create, take over, or renew the lease.
    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, LeaseError> {
        let now = MicroTime(Timestamp::now());
        let duration_secs = i32::try_from(self.cfg.duration.as_secs()).unwrap_or(15);
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
