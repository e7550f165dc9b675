//! The controller: projects ScimGroups into RoleBindings and ClusterRoleBindings.
//! `plan` decides (pure); `world` watches, `apply` and `status` write, `leader` makes
//! sure only one replica does, `reconcile` ties a pass together.
pub mod apply;
pub mod bindings;
pub mod fast_lane;
pub mod leader;
pub mod naming;
pub mod pace;
pub mod plan;
pub mod reconcile;
pub mod retry;
pub mod revoke;
pub mod split;
pub mod status;
pub mod users;
pub mod world;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use kube::runtime::events::{Recorder, Reporter};
use tokio_util::sync::CancellationToken;

use crate::config::{ControllerConfig, Listing};
use crate::telemetry::{Metrics, Readiness};

/// Reporter of Events (`reportingController`).
pub const REPORTER: &str = "kube-scim-controller";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "mass-removal threshold must be a number greater than 0 (>= 1 disables the guard), got {0}"
    )]
    Threshold(f64),
}

/// The plan's settings from the operator's flags; `namespace` is the operator's own
/// (protected like kube-system).
pub fn settings(config: &ControllerConfig, namespace: &str) -> Result<plan::Settings, ConfigError> {
    let list = |items: &[String]| -> Vec<String> {
        items
            .iter()
            .map(|r| r.trim().to_owned())
            .filter(|r| !r.is_empty())
            .collect()
    };
    let bindable = list(&config.bindable_protected_namespaces);
    let protected_namespaces = plan::DEFAULT_PROTECTED_NAMESPACES
        .iter()
        .copied()
        .chain([namespace])
        .filter(|n| !bindable.iter().any(|b| b == n))
        .map(str::to_owned)
        .collect();
    let threshold = config.mass_removal_threshold;
    if !threshold.is_finite() || threshold <= 0.0 {
        return Err(ConfigError::Threshold(threshold));
    }
    Ok(plan::Settings {
        subjects: plan::ResolvedSubjects {
            kind: config.subject_kind.into(),
            user_attribute: config.user_attribute.into(),
            user_prefix: config.user_prefix.clone(),
            group_attribute: config.group_attribute.into(),
            group_prefix: config.group_prefix.clone(),
        },
        protected_roles: config
            .protected_roles
            .iter()
            .map(|r| r.trim().to_owned())
            .filter(|r| !r.is_empty())
            .collect(),
        protected_namespaces,
        cluster_wide_roles: list(&config.cluster_wide_roles),
        mass_removal_threshold: threshold,
        mass_removal_min_subjects: config.mass_removal_min_subjects,
        max_change_bytes: config.max_change_bytes,
        max_fanout: config.max_fanout,
        ..plan::Settings::default()
    })
}

/// Run the controller until `shutdown`: campaign for the Lease (unless leader election is
/// off), reconcile while leading, stand by otherwise. Errors inside are logged and
/// retried; only an invalid configuration is returned.
pub async fn run(
    client: kube::Client,
    namespace: String,
    config: ControllerConfig,
    listing: Listing,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let settings = settings(&config, &namespace)?;
    let identity = config
        .identity
        .clone()
        .filter(|i| !i.is_empty())
        .unwrap_or_else(leader::default_identity);
    let lease = leader::LeaseConfig::with_timing(
        namespace.clone(),
        config.lease_name.clone(),
        identity.clone(),
        config.lease_duration.0,
        config.lease_renew_deadline.0,
        config.lease_retry_period.0,
    )?;
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: REPORTER.into(),
            instance: Some(identity.clone()),
        },
    );
    let ctx = Arc::new(reconcile::Context {
        client: client.clone(),
        settings,
        metrics: Arc::clone(&metrics),
        readiness: Arc::clone(&readiness),
        recorder,
        identity: identity.clone(),
        user_status_rate: config.user_status_writes_per_second,
    });

    // Every replica watches from the start and keeps watching: a standby takes over
    // with warm caches and lists nothing (`kube_scim_controller_watch_lists_total`).
    let watches = reconcile::Watches::start_with(&client, listing, &metrics);
    if !config.leader_election {
        metrics.is_leader.set(1);
        let term = leader::Term::unbounded(shutdown.child_token());
        reconcile::run(ctx, &watches, term).await;
        metrics.is_leader.set(0);
        return Ok(());
    }

    let mut elector = leader::Elector::new(client, lease).with_metrics(Arc::clone(&metrics));
    loop {
        // A standby serves SCIM, so it counts as ready.
        let standby = || readiness.controller_synced.store(true, Ordering::Relaxed);
        let Some(term) = elector.acquire(&shutdown, standby).await else {
            break;
        };
        metrics.is_leader.set(1);
        tokio::join!(
            elector.hold(&term),
            reconcile::run(Arc::clone(&ctx), &watches, term.clone())
        );
        // Ends it if shutdown did (hold already ended it otherwise).
        term.end(leader::TermEnd::Shutdown);
        metrics.is_leader.set(0);
        if shutdown.is_cancelled() {
            elector.release().await;
            break;
        }
        tracing::warn!(identity = %elector.identity(), "lost leadership; standing by");
    }
    Ok(())
}
