//! The hybrid's own counters.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of what the hybrid did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HybridStats {
    /// Lookups served by the hot tier.
    pub hot_hits: u64,
    /// Lookups served by the cold tier.
    pub cold_hits: u64,
    /// Lookups neither tier could serve.
    pub misses: u64,
    /// Cold entries copied into the hot tier.
    pub promotions: u64,
    /// Cold hits the promotion policy did not admit (`Promotion::Never`,
    /// not yet the Nth hit, or over `max_promote_bytes`).
    pub promotions_not_admitted: u64,
    /// Cold hits admitted but not promoted because the limit on moves in
    /// flight was reached (no move permit).
    pub promotions_no_permit: u64,
    /// Cold hits not promoted because the key was already moving or being
    /// changed.
    pub promotions_key_busy: u64,
    /// Promotions started and given up: the reader stopped, seeked or
    /// failed, or the key changed (a purge, a newer write) before the copy
    /// could publish.
    pub promotions_abandoned: u64,
    /// Hot entries copied into the cold tier (write-back).
    pub demotions: u64,
    /// Hot evictions not demoted: the key was already moving or being
    /// changed, or it changed (a purge, a newer write, a meta update) before
    /// the demotion could publish.
    pub demotion_skips: u64,
    /// Hot evictions dropped because the demotion backlog was full (see
    /// `WritePolicy::WriteBack`): entries that left both tiers.
    pub demotions_shed: u64,
    /// Misses no tier stored (over every tier's limit, or refused by all),
    /// served whole to their client from the pass-through.
    pub passed_through: u64,
    /// Errors from either tier that the hybrid absorbed.
    pub errors: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) hot_hits: AtomicU64,
    pub(crate) cold_hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) promotions: AtomicU64,
    pub(crate) promotions_not_admitted: AtomicU64,
    pub(crate) promotions_no_permit: AtomicU64,
    pub(crate) promotions_key_busy: AtomicU64,
    pub(crate) promotions_abandoned: AtomicU64,
    pub(crate) demotions: AtomicU64,
    pub(crate) demotion_skips: AtomicU64,
    pub(crate) demotions_shed: AtomicU64,
    pub(crate) passed_through: AtomicU64,
    pub(crate) errors: AtomicU64,
}

pub(crate) fn incr(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn snapshot(&self) -> HybridStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        HybridStats {
            hot_hits: get(&self.hot_hits),
            cold_hits: get(&self.cold_hits),
            misses: get(&self.misses),
            promotions: get(&self.promotions),
            promotions_not_admitted: get(&self.promotions_not_admitted),
            promotions_no_permit: get(&self.promotions_no_permit),
            promotions_key_busy: get(&self.promotions_key_busy),
            promotions_abandoned: get(&self.promotions_abandoned),
            demotions: get(&self.demotions),
            demotion_skips: get(&self.demotion_skips),
            demotions_shed: get(&self.demotions_shed),
            passed_through: get(&self.passed_through),
            errors: get(&self.errors),
        }
    }
}
