//! Every decision about moving entries between the tiers: what a miss writes
//! where, which cold hits are promoted, whether hot evictions are demoted, and
//! how much of that work may run at once.
//!
//! The rest of the crate asks this module and does what it says.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Where a miss is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WritePolicy {
    /// Both tiers, as the response streams in: the cold tier has it at once.
    #[default]
    WriteThrough,
    /// The hot tier only; an entry reaches the cold tier when the hot tier
    /// evicts it (its own eviction, or pingora's eviction manager calling
    /// `purge(_, PurgeType::Eviction)`).
    WriteBack,
}

/// Which cold hits are copied into the hot tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Promotion {
    /// Every cold hit.
    Always,
    /// A cold hit of a key seen at least this many times recently, counted in
    /// a small frequency sketch (fixed size, whatever the key space).
    OnNthHit(u8),
    /// Never: the hot tier only holds what was written to it.
    Never,
}

impl Default for Promotion {
    fn default() -> Self {
        Promotion::OnNthHit(2)
    }
}

/// The hybrid's policy, with defaults that run.
///
/// ```
/// use tier_hybrid::policy::{Policy, Promotion, WritePolicy};
///
/// let policy = Policy::default()
///     .write(WritePolicy::WriteBack)
///     .promotion(Promotion::OnNthHit(3))
///     .max_promote_bytes(8 << 20)
///     .max_moves_in_flight(32);
/// assert_eq!(policy.write_policy(), WritePolicy::WriteBack);
/// ```
#[derive(Debug, Clone)]
pub struct Policy {
    write: WritePolicy,
    promotion: Promotion,
    max_promote_bytes: u64,
    max_moves_in_flight: usize,
}

impl Default for Policy {
    /// Write-through, promote on the second cold hit, bodies up to 16 MiB,
    /// at most 64 moves at once.
    fn default() -> Self {
        Policy {
            write: WritePolicy::default(),
            promotion: Promotion::default(),
            max_promote_bytes: 16 << 20,
            max_moves_in_flight: 64,
        }
    }
}

impl Policy {
    /// Where misses are written.
    pub fn write(mut self, write: WritePolicy) -> Self {
        self.write = write;
        self
    }

    /// Which cold hits are promoted.
    pub fn promotion(mut self, promotion: Promotion) -> Self {
        self.promotion = promotion;
        self
    }

    /// Bodies larger than this are served from the cold tier and not copied.
    pub fn max_promote_bytes(mut self, bytes: u64) -> Self {
        self.max_promote_bytes = bytes;
        self
    }

    /// At most this many promotions and demotions at once; beyond that a move
    /// is skipped and counted, never queued.
    pub fn max_moves_in_flight(mut self, n: usize) -> Self {
        self.max_moves_in_flight = n;
        self
    }

    /// The write policy in force.
    pub fn write_policy(&self) -> WritePolicy {
        self.write
    }

    /// The promotion rule in force.
    pub fn promotion_rule(&self) -> Promotion {
        self.promotion
    }

    /// The largest body promoted.
    pub fn promote_ceiling(&self) -> u64 {
        self.max_promote_bytes
    }

    pub(crate) fn writes_cold_on_miss(&self) -> bool {
        self.write == WritePolicy::WriteThrough
    }

    pub(crate) fn demotes_hot_evictions(&self) -> bool {
        self.write == WritePolicy::WriteBack
    }
}

/// Why a move did not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Skip {
    /// The policy does not want it (never, not yet frequent, too large).
    NotAdmitted,
    /// The limit on moves in flight is reached.
    Busy,
}

/// The live side of the policy: the frequency sketch and the move budget.
#[derive(Debug)]
pub(crate) struct Admission {
    policy: Policy,
    sketch: Sketch,
    budget: Arc<Semaphore>,
}

impl Admission {
    pub(crate) fn new(policy: Policy) -> Self {
        Admission {
            budget: Arc::new(Semaphore::new(policy.max_moves_in_flight.max(1))),
            sketch: Sketch::new(),
            policy,
        }
    }

    pub(crate) fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Record a cold hit of `slot` and decide whether to promote it.
    /// `size_hint` is the body size if known.
    pub(crate) fn admit_promotion(
        &self,
        slot: u64,
        size_hint: Option<u64>,
    ) -> Result<OwnedSemaphorePermit, Skip> {
        let seen = self.sketch.record(slot);
        let wanted = match self.policy.promotion {
            Promotion::Always => true,
            Promotion::Never => false,
            Promotion::OnNthHit(n) => seen >= n.max(1),
        };
        if !wanted || size_hint.is_some_and(|size| size > self.policy.max_promote_bytes) {
            return Err(Skip::NotAdmitted);
        }
        self.move_permit()
    }

    /// A slot for a demotion (or any move), if the budget has one.
    pub(crate) fn move_permit(&self) -> Result<OwnedSemaphorePermit, Skip> {
        self.budget
            .clone()
            .try_acquire_owned()
            .map_err(|_| Skip::Busy)
    }
}

/// A count-min sketch of 4 rows × 4096 saturating 4-bit-ish counters (u8
/// capped at 15), halved every 64k records so old popularity fades. 16 KiB,
/// whatever the number of keys.
#[derive(Debug)]
struct Sketch {
    rows: Box<[AtomicU8]>,
    records: AtomicU64,
}

const ROWS: usize = 4;
const WIDTH: usize = 4096;
const RESET_EVERY: u64 = 64 * 1024;

impl Sketch {
    fn new() -> Self {
        Sketch {
            rows: (0..ROWS * WIDTH).map(|_| AtomicU8::new(0)).collect(),
            records: AtomicU64::new(0),
        }
    }

    fn index(slot: u64, row: usize) -> usize {
        let mixed = slot
            .wrapping_add((row as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .wrapping_mul(0xbf58_476d_1ce4_e5b9);
        row * WIDTH + (mixed >> 52) as usize % WIDTH
    }

    /// Count one sighting of `slot` and return its estimated count.
    fn record(&self, slot: u64) -> u8 {
        let mut estimate = u8::MAX;
        for row in 0..ROWS {
            let counter = &self.rows[Self::index(slot, row)];
            let now = counter.load(Ordering::Relaxed);
            let next = now.saturating_add(1).min(15);
            counter.store(next, Ordering::Relaxed);
            estimate = estimate.min(next);
        }
        if self.records.fetch_add(1, Ordering::Relaxed) % RESET_EVERY == RESET_EVERY - 1 {
            for counter in self.rows.iter() {
                let v = counter.load(Ordering::Relaxed);
                counter.store(v / 2, Ordering::Relaxed);
            }
        }
        estimate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nth_hit_admits_on_the_nth_sighting() {
        let admission = Admission::new(Policy::default().promotion(Promotion::OnNthHit(3)));
        assert_eq!(
            admission.admit_promotion(42, None).err(),
            Some(Skip::NotAdmitted)
        );
        assert_eq!(
            admission.admit_promotion(42, None).err(),
            Some(Skip::NotAdmitted)
        );
        assert!(admission.admit_promotion(42, None).is_ok());
    }

    #[test]
    fn never_and_size_ceiling_refuse() {
        let never = Admission::new(Policy::default().promotion(Promotion::Never));
        assert_eq!(
            never.admit_promotion(1, None).err(),
            Some(Skip::NotAdmitted)
        );
        let small = Admission::new(
            Policy::default()
                .promotion(Promotion::Always)
                .max_promote_bytes(100),
        );
        assert_eq!(
            small.admit_promotion(1, Some(101)).err(),
            Some(Skip::NotAdmitted)
        );
        assert!(small.admit_promotion(1, Some(100)).is_ok());
    }

    #[test]
    fn moves_beyond_the_budget_are_skipped_not_queued() {
        let admission = Admission::new(
            Policy::default()
                .promotion(Promotion::Always)
                .max_moves_in_flight(2),
        );
        let a = admission.admit_promotion(1, None).expect("first");
        let _b = admission.admit_promotion(2, None).expect("second");
        assert_eq!(admission.admit_promotion(3, None).err(), Some(Skip::Busy));
        drop(a);
        assert!(admission.move_permit().is_ok());
    }

    #[test]
    fn sketch_memory_is_fixed_and_counts_fade() {
        let sketch = Sketch::new();
        for _ in 0..10 {
            sketch.record(7);
        }
        assert!(sketch.record(7) >= 10);
        // Many other keys: the sketch does not grow, and 7's count halves.
        for k in 0..RESET_EVERY {
            sketch.record(1000 + k);
        }
        assert_eq!(sketch.rows.len(), ROWS * WIDTH);
        assert!(sketch.record(7) < 10);
    }
}
