//! PLACEHOLDER — replaced by the SCIM server work.
pub async fn run(
    _client: kube::Client,
    _config: crate::config::RunConfig,
    _metrics: std::sync::Arc<crate::telemetry::Metrics>,
    _readiness: std::sync::Arc<crate::telemetry::Readiness>,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    shutdown.cancelled().await;
    Ok(())
}
