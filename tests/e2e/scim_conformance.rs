//! RFC 7643/7644 conformance: `scim2 test` (PyPI scim2-cli, which runs scim2-tester)
//! against the operator on the real API server reports no failure.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use crate::harness::scim_exclusive;

/// The venv bin dir of `scripts/python-tools` (installs scim2-cli on first use).
fn python_tools() -> PathBuf {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/python-tools");
    let out = Command::new(&script)
        .output()
        .expect("run scripts/python-tools");
    assert!(
        out.status.success(),
        "scripts/python-tools failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

#[tokio::test]
async fn scim2_tester_reports_no_failure() {
    // Alone: other SCIM tests make what scim2-tester chokes on (a 50,000-member group).
    let (s, _alone) = scim_exclusive().await;
    let bin = tokio::task::spawn_blocking(python_tools)
        .await
        .expect("python-tools thread");
    let scim2 = bin.join("scim2");
    let (base, token) = (s.base.clone(), s.token.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(scim2)
            .args(["--url", &base])
            .args(["-h", &format!("Authorization: Bearer {token}")])
            .args(["test", "--verbose"])
            .env("NO_COLOR", "1")
            .output()
            .expect("run scim2 test")
    })
    .await
    .expect("scim2 thread");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);

    // Summary: how many checks ended in each status.
    let mut summary: BTreeMap<&str, usize> = BTreeMap::new();
    for line in stdout.lines() {
        if let Some(status) = line.split_whitespace().next() {
            if status.chars().all(|c| c.is_ascii_uppercase()) && !line.starts_with(' ') {
                *summary.entry(status).or_default() += 1;
            }
        }
    }
    println!("scim2 test summary: {summary:?}");
    let failures: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("ERROR") || l.starts_with("CRITICAL"))
        .collect();
    assert!(
        failures.is_empty() && out.status.success(),
        "scim2 test failed (exit {:?}), {summary:?}:\n{stdout}\n{stderr}",
        out.status.code()
    );
    assert!(
        summary.get("SUCCESS").copied().unwrap_or(0) >= 100,
        "scim2 test ran too few checks: {summary:?}\n{stdout}\n{stderr}"
    );
}
