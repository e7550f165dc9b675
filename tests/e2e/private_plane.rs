//! A control plane of a test's own: for tests that stop, freeze or restart the API
//! server or etcd, or that run a controller with other settings than the shared operator.
use std::path::PathBuf;
use std::process::Command;

/// A control plane of the test's own (`scripts/control-plane` with its own run dir),
/// stopped on drop: for tests that stop the API server, or that run a controller with
/// other settings than the shared operator's (two controllers would fight over bindings).
pub(crate) struct PrivateControlPlane {
    pub(crate) run_dir: PathBuf,
    pub(crate) kubeconfig: PathBuf,
}

impl PrivateControlPlane {
    pub(crate) fn start(name: &str) -> PrivateControlPlane {
        let run_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join(name);
        let kubeconfig = PathBuf::from(control_plane(&run_dir, "up"));
        PrivateControlPlane {
            run_dir,
            kubeconfig,
        }
    }

    /// Send `signal` (`-STOP`, `-CONT`, `-KILL`…) to the private API server.
    pub(crate) fn apiserver_signal(&self, signal: &str) {
        self.signal("kube-apiserver", signal);
    }

    /// Crash (SIGKILL) one of the private control plane's processes and start it again
    /// with the same command line (`scripts/control-plane restart PROCESS OPTIONS…`, e.g.
    /// `--expire-watches`); returns once the API server answers /readyz again.
    pub(crate) fn restart(&self, process: &str, options: &[&str]) {
        let out =
            Command::new(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/control-plane"))
                .args(["restart", process])
                .args(options)
                .env("KUBE_SCIM_RUN_DIR", &self.run_dir)
                .output()
                .expect("run scripts/control-plane restart");
        assert!(
            out.status.success(),
            "restart {process}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Send `signal` to one of the private control plane's processes (`etcd`,
    /// `kube-apiserver`, `kube-controller-manager`).
    pub(crate) fn signal(&self, process: &str, signal: &str) {
        let pid =
            std::fs::read_to_string(self.run_dir.join(format!("{process}.pid"))).expect("pid file");
        let status = Command::new("kill")
            .args([signal, pid.trim()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} {process} {pid}");
    }

    /// Start again what a test killed (`scripts/control-plane resume`: same data, ports
    /// and certificates) and wait until the API server is ready.
    pub(crate) fn resume(&self) {
        control_plane(&self.run_dir, "resume");
    }
}

/// Run `scripts/control-plane <command>` for `run_dir`, asserting it succeeds; its output.
fn control_plane(run_dir: &std::path::Path, command: &str) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/control-plane");
    let out = Command::new(script)
        .arg(command)
        .env("KUBE_SCIM_RUN_DIR", run_dir)
        .output()
        .unwrap_or_else(|e| panic!("run scripts/control-plane {command}: {e}"));
    assert!(
        out.status.success(),
        "private control plane {command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Drop for PrivateControlPlane {
    fn drop(&mut self) {
        // Never leave a frozen API server behind.
        let _ = std::fs::read_to_string(self.run_dir.join("kube-apiserver.pid"))
            .map(|pid| Command::new("kill").args(["-CONT", pid.trim()]).status());
        let _ =
            Command::new(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/control-plane"))
                .arg("down")
                .env("KUBE_SCIM_RUN_DIR", &self.run_dir)
                .output();
    }
}
