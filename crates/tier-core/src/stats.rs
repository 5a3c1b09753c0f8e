//! Counters every tier keeps, and the snapshot type they report.

use std::sync::atomic::{AtomicU64, Ordering};

/// A point-in-time snapshot of a tier's counters.
///
/// Gauges (`entries`, `bytes`) describe the tier now; the other fields count
/// events since the tier was created (or opened, for a persistent tier).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TierStats {
    /// Complete entries stored now.
    pub entries: u64,
    /// Bytes charged against the tier's capacity now (body, meta and overhead).
    pub bytes: u64,
    /// Lookups that found an entry.
    pub hits: u64,
    /// Lookups that found nothing.
    pub misses: u64,
    /// Writes that completed and published an entry.
    pub inserts: u64,
    /// Entries removed by the tier to stay within its bounds.
    pub evictions: u64,
    /// Writes refused, for example because the object is over the size limit.
    pub rejections: u64,
    /// Operations that failed with an error (I/O, corruption, timeouts).
    pub errors: u64,
}

impl TierStats {
    /// Hits divided by lookups, or 0 when there were no lookups.
    pub fn hit_ratio(&self) -> f64 {
        let lookups = self.hits + self.misses;
        if lookups == 0 {
            0.0
        } else {
            self.hits as f64 / lookups as f64
        }
    }
}

/// Lock-free counters behind a [`TierStats`] snapshot.
///
/// Each counter is a relaxed atomic: the snapshot is not a consistent cut across
/// fields, which is fine for metrics and cheap on the hit path.
#[derive(Debug, Default)]
pub struct StatsCounters {
    entries: AtomicU64,
    bytes: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    inserts: AtomicU64,
    evictions: AtomicU64,
    rejections: AtomicU64,
    errors: AtomicU64,
}

macro_rules! counter {
    ($($(#[$doc:meta])* $name:ident => $field:ident;)*) => {
        $(
            $(#[$doc])*
            #[inline]
            pub fn $name(&self) {
                self.$field.fetch_add(1, Ordering::Relaxed);
            }
        )*
    };
}

impl StatsCounters {
    /// New counters, all zero.
    pub const fn new() -> Self {
        StatsCounters {
            entries: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            inserts: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            rejections: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }

    counter! {
        /// Count a lookup that found an entry.
        record_hit => hits;
        /// Count a lookup that found nothing.
        record_miss => misses;
        /// Count a published write.
        record_insert => inserts;
        /// Count an entry removed to stay within bounds.
        record_eviction => evictions;
        /// Count a refused write.
        record_rejection => rejections;
        /// Count a failed operation.
        record_error => errors;
    }

    /// Add a stored entry of `bytes` charged bytes to the gauges.
    #[inline]
    pub fn add_entry(&self, bytes: u64) {
        self.entries.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Remove a stored entry of `bytes` charged bytes from the gauges.
    #[inline]
    pub fn remove_entry(&self, bytes: u64) {
        self.entries.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Take a snapshot of every counter.
    pub fn snapshot(&self) -> TierStats {
        TierStats {
            entries: self.entries.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            inserts: self.inserts.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            rejections: self.rejections.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_reflects_recorded_events() {
        let counters = StatsCounters::new();
        counters.record_hit();
        counters.record_hit();
        counters.record_miss();
        counters.record_insert();
        counters.record_eviction();
        counters.record_rejection();
        counters.record_error();
        counters.add_entry(100);
        counters.add_entry(50);
        counters.remove_entry(100);
        let stats = counters.snapshot();
        assert_eq!(
            stats,
            TierStats {
                entries: 1,
                bytes: 50,
                hits: 2,
                misses: 1,
                inserts: 1,
                evictions: 1,
                rejections: 1,
                errors: 1,
            }
        );
        assert!((stats.hit_ratio() - 2.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn hit_ratio_without_lookups_is_zero() {
        assert_eq!(TierStats::default().hit_ratio(), 0.0);
    }
}
