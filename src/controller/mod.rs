//! The controller: projects ScimGroups into RoleBindings and ClusterRoleBindings.
//! `plan` decides (pure), the rest does the kube I/O around it.
pub mod naming;
pub mod plan;

/// PLACEHOLDER — replaced by the controller I/O work.
pub async fn run(
    _client: kube::Client,
    _namespace: String,
    _config: crate::config::ControllerConfig,
    _metrics: std::sync::Arc<crate::telemetry::Metrics>,
    _readiness: std::sync::Arc<crate::telemetry::Readiness>,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    shutdown.cancelled().await;
    Ok(())
}
