//! A pace for writes that may trail the change that caused them: user statuses.
//!
//! A user's status (its groups, its access) follows every membership change and every
//! mapping that reaches it, so a bulk import (Entra's first cycle, 100 members per PATCH)
//! or a big group being mapped queues one status write per user. Written as fast as the
//! API server takes them (16 in flight), those writes took two thirds of the API server's
//! time while SCIM PATCHes waited behind them: 20,000 members as 200 PATCHes took 30 s
//! with user statuses, 11 s without (docs/scale.md). A status is a report, so it waits;
//! the SCIM client, the bindings and the revocations do not.
//!
//! The pace is a generic cell rate: after a burst of one second's worth (so a handful of
//! changes are written at once, as before), at most `rate` writes per second. Written
//! here, not taken from a rate-limiting crate, because it must run on tokio's clock (the
//! tests pause it) and is a dozen lines.
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

pub struct Pace {
    /// Time between two writes at the steady rate.
    interval: Duration,
    /// How far ahead of the steady rate a burst may run.
    tolerance: Duration,
    /// When the next write would be due at the steady rate (the "theoretical arrival
    /// time"); a slot is handed out by moving it one interval on.
    next: Mutex<Instant>,
}

impl Pace {
    /// `rate` writes per second after a burst of `rate`; None (no pace) for 0.
    pub fn per_second(rate: u32) -> Option<Pace> {
        if rate == 0 {
            return None;
        }
        let interval = Duration::from_secs(1) / rate;
        Some(Pace {
            interval,
            tolerance: Duration::from_secs(1).saturating_sub(interval),
            next: Mutex::new(Instant::now()),
        })
    }

    /// Writes per second at the steady rate.
    pub fn rate(&self) -> u32 {
        (Duration::from_secs(1).as_nanos() / self.interval.as_nanos().max(1)) as u32
    }

    /// When the caller may write: takes the next slot.
    fn reserve(&self, now: Instant) -> Instant {
        let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
        let due = (*next).max(now);
        *next = due + self.interval;
        due.checked_sub(self.tolerance).unwrap_or(now).max(now)
    }

    /// Wait for the next slot.
    pub async fn wait(&self) {
        let at = self.reserve(Instant::now());
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_no_pace() {
        assert!(Pace::per_second(0).is_none());
        assert_eq!(Pace::per_second(100).map(|p| p.rate()), Some(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_one_second_then_the_rate() {
        let pace = Pace::per_second(10).unwrap();
        let start = Instant::now();
        // Ten at once: the burst.
        let burst: Vec<Instant> = (0..10).map(|_| pace.reserve(start)).collect();
        assert!(burst.iter().all(|&at| at == start), "{burst:?}");
        // Then one every 100 ms.
        let after: Vec<Duration> = (0..5).map(|_| pace.reserve(start) - start).collect();
        let ms: Vec<u128> = after.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [100, 200, 300, 400, 500]);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_refills_the_burst_but_no_more() {
        let pace = Pace::per_second(10).unwrap();
        let start = Instant::now();
        for _ in 0..15 {
            pace.reserve(start);
        }
        // Ten seconds later the queue of slots is long gone: a full burst again, not
        // ten seconds' worth.
        let later = start + Duration::from_secs(10);
        let n_now = (0..30).filter(|_| pace.reserve(later) == later).count();
        assert_eq!(n_now, 10);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_sleeps_until_the_slot() {
        let pace = Pace::per_second(4).unwrap();
        let start = Instant::now();
        for _ in 0..6 {
            pace.wait().await;
        }
        // 4 at once, then 250 ms each for two more.
        assert_eq!(start.elapsed(), Duration::from_millis(500));
    }
}
