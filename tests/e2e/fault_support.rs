//! Small helpers shared by the fault and chaos tests (`faults.rs`, `chaos.rs`): signals,
//! leader and metric probes, the managed RoleBindings of a namespace.
use std::process::Command;

use kube::api::Api;
use serde_json::Value;

/// `kube_scim_leader` of an operator's /metrics (1 leads, 0 stands by), None if unreachable.
pub(crate) async fn leader_gauge(http: &reqwest::Client, probe_url: &str) -> Option<u8> {
    let text = crate::harness::metrics_text(http, probe_url).await?;
    text.lines()
        .find_map(|l| l.strip_prefix("kube_scim_leader "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u8)
}

/// Short lease timings for the failover tests: a standby takes over 4 s after the
/// leader's last renewal; a leader stops writing 3 s after its last renewal was sent.
pub(crate) const SHORT_LEASE: [&str; 6] = [
    "--lease-duration",
    "4s",
    "--lease-renew-deadline",
    "3s",
    "--lease-retry-period",
    "250ms",
];

/// Send `sig` (`-KILL`, `-STOP`, `-CONT`…) to process `pid`.
pub(crate) fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {sig} {pid}");
}

/// Resumes a SIGSTOPped process if the test fails before it does.
pub(crate) struct ContOnDrop(pub(crate) u32);

impl Drop for ContOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

/// Subjects of the managed RoleBindings in `ns`, by roleRef name, with their resourceVersions.
pub(crate) async fn managed_role_bindings(
    rbs: &Api<k8s_openapi::api::rbac::v1::RoleBinding>,
) -> (
    std::collections::BTreeMap<String, (Vec<String>, String)>,
    String,
) {
    use kube_scim::crd::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};
    let list = rbs
        .list(
            &kube::api::ListParams::default()
                .labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}")),
        )
        .await
        .expect("list RoleBindings");
    let mut out = std::collections::BTreeMap::new();
    for rb in list.items {
        let mut subjects: Vec<String> = rb
            .subjects
            .iter()
            .flatten()
            .map(|s| s.name.clone())
            .collect();
        subjects.sort();
        let rv = rb.metadata.resource_version.clone().unwrap_or_default();
        let name = rb.metadata.name.clone().unwrap_or_default();
        out.insert(format!("{}:{name}", rb.role_ref.name), (subjects, rv));
    }
    (out, list.metadata.resource_version.unwrap_or_default())
}

/// Create a cluster-scoped object from its JSON as the admin.
pub(crate) async fn create_cluster_scoped<K>(admin: &kube::Client, obj: Value)
where
    K: kube::Resource<Scope = kube::core::ClusterResourceScope, DynamicType = ()>
        + serde::de::DeserializeOwned
        + serde::Serialize
        + Clone
        + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(obj).expect("object");
    Api::<K>::all(admin.clone())
        .create(&kube::api::PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("create {}: {e}", K::kind(&())));
}
