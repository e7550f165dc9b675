//! A pass's CPU work (snapshot and plan, the status diff) on a thread of low scheduling
//! priority.
//!
//! At 100,000 users with 5,000,000 bound subjects a pass is 1.4–2.5 s of CPU. Nothing in
//! it is urgent: additions wait for it, but removals go through the fast lane, whose
//! patches need the operator's async workers (and, on a small control plane where the
//! operator shares cores with kube-apiserver — kind, k3s, the benchmark — the API server's
//! CPU) right away. A niced thread lets both go first; when the machine is otherwise
//! idle it runs at full speed.
use tokio::sync::oneshot;

/// The nice value of pass threads (0 is normal, 19 the lowest priority).
const NICE: i32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum BackgroundError {
    #[error("could not start a thread: {0}")]
    Spawn(#[from] std::io::Error),
    #[error("the background work panicked")]
    Panicked,
}

/// Run `work` on a new low-priority thread and wait for its result. A thread per call:
/// a pass is seconds of work, a thread start microseconds, and a niced thread can't be
/// un-niced without privileges, so no pool thread is borrowed for it.
pub async fn run<T, F>(work: F) -> Result<T, BackgroundError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("kube-scim-pass".into())
        .spawn(move || {
            lower_priority();
            // The receiver is gone only when the pass was cancelled: nothing to report.
            let _ = tx.send(work());
        })?;
    // A panic drops the sender.
    rx.await.map_err(|_| BackgroundError::Panicked)
}

#[cfg(target_os = "linux")]
fn lower_priority() {
    // On Linux the nice value belongs to the thread: PRIO_PROCESS with who = 0 sets the
    // calling thread's (setpriority(2), NOTES). Failure leaves normal priority, which
    // is only slower for others, so it is ignored.
    // SAFETY: setpriority takes plain integers and touches no memory of ours.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, NICE);
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_result_and_reports_a_panic() {
        assert_eq!(run(|| 6 * 7).await.unwrap(), 42);
        let panicked = run(|| -> u8 { panic!("boom") }).await;
        assert!(matches!(panicked, Err(BackgroundError::Panicked)));
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_work_runs_niced_and_the_caller_does_not() {
        // SAFETY: getpriority takes plain integers.
        let nice = || unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        let before = nice();
        let inside = run(nice).await.unwrap();
        // (Unprivileged, a thread can't lower its nice value: if the test already runs
        // nicer than NICE it stays there.)
        assert!(
            inside == NICE || (before > NICE && inside == before),
            "{before} → {inside}"
        );
        assert_eq!(nice(), before);
    }
}
