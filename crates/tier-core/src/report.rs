//! What a tier reports to a metrics system: its [`TierStats`], the counters
//! only it has, latency histograms where it can time its operations cheaply,
//! and, for a composition such as the hybrid, the reports of its levels.
//!
//! [`Tier::report`](crate::Tier::report) builds one on demand (at a scrape);
//! the `prometheus` feature turns the tree into Prometheus metrics (see
//! [`crate::prometheus`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::TierStats;

/// A tier's report: a point-in-time snapshot, built when asked for.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct TierReport {
    /// The tier's name ([`Tier::tier_name`](crate::Tier::tier_name)).
    pub name: String,
    /// The counters every tier keeps. For a composition (one with
    /// `levels`), what its levels hold is reported by the levels.
    pub stats: TierStats,
    /// Counters of this tier alone, such as a hybrid's promotions or a disk
    /// tier's syncs: monotonic, since the tier was created or opened.
    pub counters: Vec<Count>,
    /// Gauges of this tier alone, such as a disk tier's segment count.
    pub gauges: Vec<Count>,
    /// Latencies the tier measured, by operation (`"hit"`, `"miss"`,
    /// `"write"`).
    pub latencies: Vec<(&'static str, LatencySnapshot)>,
    /// For a composition, the reports of its levels, fastest first (a
    /// hybrid: hot, then cold). Empty for a tier that stores entries itself.
    pub levels: Vec<TierReport>,
}

impl TierReport {
    /// A report of `stats` alone, as every tier can give.
    pub fn new(name: impl Into<String>, stats: TierStats) -> Self {
        TierReport {
            name: name.into(),
            stats,
            ..TierReport::default()
        }
    }

    /// Add a counter of this tier's own.
    pub fn counter(mut self, name: &'static str, help: &'static str, value: u64) -> Self {
        self.counters.push(Count { name, help, value });
        self
    }

    /// Add a gauge of this tier's own.
    pub fn gauge(mut self, name: &'static str, help: &'static str, value: u64) -> Self {
        self.gauges.push(Count { name, help, value });
        self
    }

    /// Add a latency histogram for `op`.
    pub fn latency(mut self, op: &'static str, histogram: &LatencyHistogram) -> Self {
        self.latencies.push((op, histogram.snapshot()));
        self
    }

    /// Add the `hit`, `miss` and `write` histograms of `ops`.
    pub fn op_latencies(self, ops: &OpLatencies) -> Self {
        self.latency("hit", &ops.hit)
            .latency("miss", &ops.miss)
            .latency("write", &ops.write)
    }

    /// Add a level (for a composition).
    pub fn level(mut self, level: TierReport) -> Self {
        self.levels.push(level);
        self
    }
}

/// One named value of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    /// A short snake_case name, such as `"promotions"`.
    pub name: &'static str,
    /// One line saying what it counts.
    pub help: &'static str,
    /// The value now.
    pub value: u64,
}

/// Buckets of a [`LatencyHistogram`]: upper bounds 1 µs, 2 µs, 4 µs, … up to
/// 2^23 µs (8.4 s), then everything slower.
pub const LATENCY_BUCKETS: usize = 24;

/// A lock-free histogram of durations in power-of-two buckets of
/// microseconds: recording is two relaxed atomic adds, so a tier can time
/// every lookup and write that waits on I/O or a network.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BUCKETS + 1],
    sum_ns: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl LatencyHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self::default()
    }

    /// Count one operation that took `took`.
    #[inline]
    pub fn record(&self, took: Duration) {
        let micros = took.as_micros().min(u128::from(u64::MAX)) as u64;
        // The smallest i with micros <= 2^i.
        let bucket = if micros <= 1 {
            0
        } else {
            (64 - (micros - 1).leading_zeros()) as usize
        };
        self.buckets[bucket.min(LATENCY_BUCKETS)].fetch_add(1, Ordering::Relaxed);
        let nanos = took.as_nanos().min(u128::from(u64::MAX)) as u64;
        self.sum_ns.fetch_add(nanos, Ordering::Relaxed);
    }

    /// What it has counted so far.
    pub fn snapshot(&self) -> LatencySnapshot {
        let mut counts = [0u64; LATENCY_BUCKETS + 1];
        for (count, bucket) in counts.iter_mut().zip(&self.buckets) {
            *count = bucket.load(Ordering::Relaxed);
        }
        LatencySnapshot {
            counts,
            sum: Duration::from_nanos(self.sum_ns.load(Ordering::Relaxed)),
        }
    }
}

/// The latencies a tier that waits on I/O or a network keeps: lookups that
/// found an entry, lookups that did not, and writes' `finish`.
#[derive(Debug, Default)]
pub struct OpLatencies {
    /// Lookups that found an entry, until its hit handler was ready.
    pub hit: LatencyHistogram,
    /// Lookups that found nothing.
    pub miss: LatencyHistogram,
    /// `finish` calls that published, until they returned.
    pub write: LatencyHistogram,
}

impl OpLatencies {
    /// Count a lookup that took `took` and found an entry or not.
    #[inline]
    pub fn lookup(&self, found: bool, took: Duration) {
        if found {
            self.hit.record(took)
        } else {
            self.miss.record(took)
        }
    }
}

/// A [`LatencyHistogram`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencySnapshot {
    /// Operations per bucket (not cumulative): `counts[i]` took at most
    /// 2^i µs and more than 2^(i-1); the last counts everything slower than
    /// 2^23 µs.
    pub counts: [u64; LATENCY_BUCKETS + 1],
    /// The sum of every recorded duration.
    pub sum: Duration,
}

impl LatencySnapshot {
    /// Operations recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The upper bound of bucket `i` (`None` for the last, unbounded one).
    pub fn upper_bound(i: usize) -> Option<Duration> {
        (i < LATENCY_BUCKETS).then(|| Duration::from_micros(1 << i))
    }

    /// The bound under which a fraction `q` (0..=1) of operations fell, to
    /// the bucket: `None` when nothing was recorded or the quantile is in
    /// the unbounded bucket.
    pub fn quantile_bound(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let want = ((total as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= want {
                return Self::upper_bound(i);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_land_in_their_power_of_two_bucket() {
        let h = LatencyHistogram::new();
        for micros in [0, 1, 2, 3, 4, 5, 1000, 1024, 1025] {
            h.record(Duration::from_micros(micros));
        }
        h.record(Duration::from_secs(100));
        let s = h.snapshot();
        // <=1: 0 and 1; <=2: 2; <=4: 3 and 4; <=8: 5; <=1024: 1000, 1024;
        // <=2048: 1025; the unbounded bucket: 100 s.
        assert_eq!(s.counts[0], 2);
        assert_eq!(s.counts[1], 1);
        assert_eq!(s.counts[2], 2);
        assert_eq!(s.counts[3], 1);
        assert_eq!(s.counts[10], 2);
        assert_eq!(s.counts[11], 1);
        assert_eq!(s.counts[LATENCY_BUCKETS], 1);
        assert_eq!(s.count(), 10);
        assert_eq!(
            s.sum,
            Duration::from_micros(1 + 2 + 3 + 4 + 5 + 1000 + 1024 + 1025)
                + Duration::from_secs(100)
        );
        assert_eq!(s.quantile_bound(0.5), Some(Duration::from_micros(4)));
        assert_eq!(s.quantile_bound(0.9), Some(Duration::from_micros(2048)));
        assert_eq!(s.quantile_bound(1.0), None);
        assert_eq!(LatencyHistogram::new().snapshot().quantile_bound(0.5), None);
    }

    #[test]
    fn a_report_keeps_what_it_is_given_in_order() {
        let h = LatencyHistogram::new();
        h.record(Duration::from_micros(3));
        let leaf = TierReport::new("disk", TierStats::default()).counter("syncs", "fsyncs", 7);
        let report = TierReport::new("hybrid", TierStats::default())
            .counter("promotions", "copied up", 2)
            .gauge("moving", "moves in flight", 1)
            .latency("hit", &h)
            .level(TierReport::new("memory", TierStats::default()))
            .level(leaf);
        assert_eq!(report.counters[0].value, 2);
        assert_eq!(report.gauges[0].name, "moving");
        assert_eq!(report.latencies[0].1.count(), 1);
        let names: Vec<&str> = report.levels.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["memory", "disk"]);
        assert_eq!(report.levels[1].counters[0].value, 7);
    }
}
