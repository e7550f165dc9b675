//! Per-object retries of the controller's writes (statuses, bindings): an object whose
//! write failed waits for its own retry time — doubling from [`RETRY_FIRST`] to
//! [`RETRY_LAST`], or the API server's `Retry-After` — and nothing else waits with it.
//! One object that can't be written (RBAC, admission, quota, a size limit) never makes
//! the controller plan the whole world again in a loop.
use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use super::apply::WriteError;

/// Backoff of an object whose write failed: doubling from the first to the last.
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
pub const RETRY_LAST: Duration = Duration::from_secs(300);

/// How long to wait before writing an object again after `failures` failed attempts in
/// a row: the API server's Retry-After when it sent one, else doubling backoff.
pub fn retry_delay(failures: u32, retry_after: Option<Duration>) -> Duration {
    let doubled = RETRY_FIRST
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(16)))
        .min(RETRY_LAST);
    retry_after.map_or(doubled, |r| r.clamp(RETRY_FIRST, RETRY_LAST))
}

/// `Retry-After` of an API error (429, 503 and the like carry it in the Status details).
pub fn retry_after(e: &WriteError) -> Option<Duration> {
    match e {
        WriteError::Kube(kube::Error::Api(s)) => s
            .details
            .as_ref()
            .map(|d| d.retry_after_seconds)
            .filter(|s| *s > 0)
            .map(|s| Duration::from_secs(u64::from(s))),
        _ => None,
    }
}

/// Why a write failed, as the bounded `category` label of
/// `kube_scim_write_retries_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Category {
    /// 409: changed since it was read.
    Conflict,
    /// 429: the API server (or its priority and fairness) asks us to slow down.
    Throttled,
    /// 5xx, a timeout, no connection: the API server or etcd is away or overloaded.
    Unavailable,
    /// 400, 422: the object (or an admission webhook) refuses the content.
    Invalid,
    /// 403: RBAC (e.g. the operator may not bind that role), quota, a terminating namespace.
    Forbidden,
    Other,
}

impl Category {
    pub const ALL: [Category; 6] = [
        Category::Conflict,
        Category::Throttled,
        Category::Unavailable,
        Category::Invalid,
        Category::Forbidden,
        Category::Other,
    ];

    pub fn of(e: &WriteError) -> Category {
        match e {
            WriteError::Timeout(_) => Category::Unavailable,
            WriteError::Kube(kube::Error::Api(s)) => match s.code {
                409 => Category::Conflict,
                429 => Category::Throttled,
                400 | 422 => Category::Invalid,
                403 => Category::Forbidden,
                c if c >= 500 => Category::Unavailable,
                _ => Category::Other,
            },
            // Connection refused or reset, TLS, a broken stream: the API server is away.
            WriteError::Kube(
                kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::HttpError(_),
            ) => Category::Unavailable,
            WriteError::Kube(_) | WriteError::Deposed(_) => Category::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Conflict => "conflict",
            Category::Throttled => "throttled",
            Category::Unavailable => "unavailable",
            Category::Invalid => "invalid",
            Category::Forbidden => "forbidden",
            Category::Other => "other",
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    failures: u32,
    due: Instant,
}

/// Failed writes by object: how many in a row, and when the next may go.
#[derive(Debug)]
pub struct Retries<K> {
    entries: HashMap<K, Entry>,
}

impl<K> Default for Retries<K> {
    fn default() -> Self {
        Retries {
            entries: HashMap::new(),
        }
    }
}

impl<K: Eq + Hash + Clone> Retries<K> {
    /// A write of `key` failed at `now`: it may go again after the returned delay.
    pub fn fail(&mut self, key: &K, retry_after: Option<Duration>, now: Instant) -> Duration {
        let entry = self.entries.entry(key.clone()).or_insert(Entry {
            failures: 0,
            due: now,
        });
        entry.failures = entry.failures.saturating_add(1);
        let delay = retry_delay(entry.failures, retry_after);
        entry.due = now + delay;
        delay
    }

    /// `key` was written, or needs no write any more: forget its failures.
    pub fn forget(&mut self, key: &K) {
        self.entries.remove(key);
    }

    /// When `key` may be written again (None: it never failed, or was forgotten).
    pub fn due_at(&self, key: &K) -> Option<Instant> {
        self.entries.get(key).map(|e| e.due)
    }

    /// Until when `key` must wait; None when it may be written now.
    pub fn waiting(&self, key: &K, now: Instant) -> Option<Instant> {
        self.entries
            .get(key)
            .map(|e| e.due)
            .filter(|due| *due > now)
    }

    /// Failed attempts of `key` in a row.
    pub fn failures(&self, key: &K) -> u32 {
        self.entries.get(key).map_or(0, |e| e.failures)
    }

    /// Keys whose wait is over at `now`; they stay known (their failures keep counting)
    /// until [`Retries::forget`].
    pub fn due(&self, now: Instant) -> Vec<K> {
        self.entries
            .iter()
            .filter(|(_, e)| e.due <= now)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The earliest retry time of any key, past or future: one that passed while the
    /// pass that failed it was still running is due at once.
    pub fn next_due(&self) -> Option<Instant> {
        self.entries.values().map(|e| e.due).min()
    }

    /// Objects still waiting at `now`.
    pub fn waiting_count(&self, now: Instant) -> usize {
        self.entries.values().filter(|e| e.due > now).count()
    }

    /// Keep only the keys `keep` says are still wanted.
    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        self.entries.retain(|k, _| keep(k));
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    /// An API error as the API server sends it.
    fn api_error(code: u16, retry_after_seconds: u32) -> WriteError {
        let s: Status = serde_json::from_value(serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "m", "reason": "r", "code": code,
            "details": {"retryAfterSeconds": retry_after_seconds}
        }))
        .unwrap();
        WriteError::Kube(kube::Error::Api(Box::new(s)))
    }

    #[test]
    fn retry_delay_doubles_to_a_ceiling_and_follows_retry_after() {
        assert_eq!(retry_delay(1, None), Duration::from_secs(1));
        assert_eq!(retry_delay(2, None), Duration::from_secs(2));
        assert_eq!(retry_delay(5, None), Duration::from_secs(16));
        assert_eq!(retry_delay(40, None), RETRY_LAST);
        assert_eq!(
            retry_delay(1, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(retry_delay(1, Some(Duration::from_secs(9999))), RETRY_LAST);
    }

    #[test]
    fn categories_are_bounded_and_retry_after_is_read_from_the_status() {
        let cases = [
            (409, Category::Conflict),
            (429, Category::Throttled),
            (503, Category::Unavailable),
            (500, Category::Unavailable),
            (422, Category::Invalid),
            (400, Category::Invalid),
            (403, Category::Forbidden),
            (404, Category::Other),
        ];
        for (code, want) in cases {
            assert_eq!(Category::of(&api_error(code, 0)), want, "{code}");
        }
        assert_eq!(
            Category::of(&WriteError::Timeout(Duration::from_secs(1))),
            Category::Unavailable
        );
        assert_eq!(
            retry_after(&api_error(429, 3)),
            Some(Duration::from_secs(3))
        );
        assert_eq!(retry_after(&api_error(503, 0)), None);
        let labels: std::collections::HashSet<&str> =
            Category::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(labels.len(), Category::ALL.len());
    }

    #[test]
    fn each_key_waits_on_its_own_schedule() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut r: Retries<&str> = Retries::default();
        assert_eq!(r.fail(&"a", None, t0), s(1));
        assert_eq!(r.fail(&"b", Some(s(30)), t0), s(30));
        assert_eq!(r.waiting(&"a", t0), Some(t0 + s(1)));
        assert_eq!(r.waiting(&"c", t0), None, "never failed: not waiting");
        assert_eq!(r.next_due(), Some(t0 + s(1)));
        assert_eq!(r.due_at(&"b"), Some(t0 + s(30)));
        assert_eq!(r.waiting_count(t0), 2);
        // a is due after 1 s; it fails again and waits twice as long; b keeps its time.
        assert_eq!(r.waiting(&"a", t0 + s(1)), None);
        assert_eq!(r.due(t0 + s(1)), vec!["a"]);
        assert_eq!(r.fail(&"a", None, t0 + s(1)), s(2));
        assert_eq!(r.failures(&"a"), 2);
        assert_eq!(r.next_due(), Some(t0 + s(3)));
        r.forget(&"a");
        assert_eq!(r.failures(&"a"), 0);
        assert_eq!(r.fail(&"a", None, t0), s(1), "a success resets the backoff");
        r.retain(|k| *k != "b");
        assert_eq!(r.waiting(&"b", t0), None);
        assert_eq!(r.next_due(), Some(t0 + s(1)));
        assert!(!r.is_empty());
    }
}
