//! A circuit breaker: after `threshold` failures in a row, calls are refused
//! without trying Redis until `cooldown` has passed; then calls try again, and
//! the first success closes it (one more failure opens it again at once).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    cooldown: Duration,
    epoch: Instant,
    failures: AtomicU32,
    /// Milliseconds since `epoch` until which the breaker is open; 0 when closed.
    open_until: AtomicU64,
    pub(crate) trips: AtomicU64,
    pub(crate) refused: AtomicU64,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            threshold,
            cooldown,
            epoch: Instant::now(),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            trips: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether a call may go to Redis now; counts the refusal when not.
    pub(crate) fn allow(&self) -> bool {
        let until = self.open_until.load(Ordering::Relaxed);
        if until != 0 && self.now_ms() < until {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Whether the breaker is open now.
    pub(crate) fn is_open(&self) -> bool {
        let until = self.open_until.load(Ordering::Relaxed);
        until != 0 && self.now_ms() < until
    }

    pub(crate) fn success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.open_until.load(Ordering::Relaxed) != 0 {
            self.open_until.store(0, Ordering::Relaxed);
        }
    }

    /// Count a failure; returns `true` when it opened the breaker.
    pub(crate) fn failure(&self) -> bool {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= self.threshold {
            let cooldown = u64::try_from(self.cooldown.as_millis()).unwrap_or(u64::MAX);
            self.open_until.store(
                self.now_ms().saturating_add(cooldown).max(1),
                Ordering::Relaxed,
            );
            self.trips.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_and_closes_on_success_after_cooldown() {
        let breaker = Breaker::new(3, Duration::from_millis(50));
        assert!(!breaker.failure() && !breaker.failure());
        assert!(breaker.allow(), "two failures of three");
        assert!(breaker.failure(), "the third opens it");
        assert!(!breaker.allow() && breaker.is_open());
        std::thread::sleep(Duration::from_millis(60));
        assert!(breaker.allow(), "a trial call after the cooldown");
        assert!(breaker.failure(), "a failed trial opens it again at once");
        assert!(!breaker.allow());
        std::thread::sleep(Duration::from_millis(60));
        assert!(breaker.allow());
        breaker.success();
        assert!(!breaker.failure(), "success reset the count");
        assert_eq!(breaker.trips.load(Ordering::Relaxed), 2);
        assert_eq!(breaker.refused.load(Ordering::Relaxed), 2);
    }
}
