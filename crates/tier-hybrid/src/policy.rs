//! Every decision about moving entries between the tiers: what a miss writes
//! where, which cold hits are promoted, whether hot evictions are demoted, and
//! how much of that work may run at once.
//!
//! The rest of the crate asks this module and does what it says.

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// Where a miss is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WritePolicy {
    /// Both tiers, as the response streams in: the cold tier has it at once.
    #[default]
    WriteThrough,
    /// The hot tier only; an entry reaches the cold tier when the hot tier
    /// evicts it (its own eviction, or pingora's eviction manager calling
    /// `purge(_, PurgeType::Eviction)`).
    ///
    /// Demotions wait for a move permit (see [`Policy::max_moves_in_flight`])
    /// in a backlog of at most [`Policy::max_pending_demotions`] entries, each
    /// holding its evicted body until it is copied. New writes wait while the
    /// backlog is more than half full, so the hot tier's evictions slow
    /// writers down instead of dropping entries. An eviction that still
    /// finds the backlog full is shed (the entry is gone from both tiers) and
    /// counted in `HybridStats::demotions_shed`; so is one whose key changed
    /// (a purge, a newer write, a meta update) before it could publish, which
    /// is counted in `demotion_skips` and is what the change asked for.
    ///
    /// A write's `finish` also removes the cold tier's copy of the key, which
    /// holds an older generation once the new one is written.
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
#[derive(Clone)]
pub struct Policy {
    write: WritePolicy,
    promotion: Promotion,
    max_promote_bytes: u64,
    max_moves_in_flight: usize,
    max_pending_demotions: usize,
    pauses: Option<PauseHook>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("write", &self.write)
            .field("promotion", &self.promotion)
            .field("max_promote_bytes", &self.max_promote_bytes)
            .field("max_moves_in_flight", &self.max_moves_in_flight)
            .field("max_pending_demotions", &self.max_pending_demotions)
            .field("pauses", &self.pauses.is_some())
            .finish()
    }
}

/// Where the hybrid's background work can be made to wait, for tests that
/// provoke races (see [`Policy::test_pauses`]).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    /// A demotion just after the hot tier handed over its evicted entry.
    Listener,
    /// A demotion just after it got its move permit.
    Permit,
    /// A move just before it publishes.
    Publish,
}

/// A test's delay for each [`Pause`] point.
#[doc(hidden)]
pub type PauseHook = Arc<dyn Fn(Pause) -> Duration + Send + Sync>;

impl Default for Policy {
    /// Write-through, promote on the second cold hit, bodies up to 16 MiB,
    /// at most 64 moves at once and 256 demotions waiting for one.
    fn default() -> Self {
        Policy {
            write: WritePolicy::default(),
            promotion: Promotion::default(),
            max_promote_bytes: 16 << 20,
            max_moves_in_flight: 64,
            max_pending_demotions: 256,
            pauses: None,
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

    /// At most this many promotions and demotions copy at once. Beyond that
    /// a promotion is skipped and counted (the next cold hit may promote);
    /// a demotion waits in the backlog (see [`WritePolicy::WriteBack`]).
    pub fn max_moves_in_flight(mut self, n: usize) -> Self {
        self.max_moves_in_flight = n;
        self
    }

    /// At most this many demotions wait for a move permit, each holding its
    /// evicted body (write-back). Writers wait while more than half of them
    /// are waiting; an eviction past the bound is shed and counted.
    pub fn max_pending_demotions(mut self, n: usize) -> Self {
        self.max_pending_demotions = n;
        self
    }

    /// Delay the hybrid's background work at each [`Pause`] point by what
    /// `hook` says, to provoke races in tests. Not for production.
    #[doc(hidden)]
    pub fn test_pauses(mut self, hook: PauseHook) -> Self {
        self.pauses = Some(hook);
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

    pub(crate) fn may_promote(&self) -> bool {
        self.promotion != Promotion::Never
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

/// The live side of the policy: the frequency sketch, the move budget and
/// the demotion backlog.
#[derive(Debug)]
pub(crate) struct Admission {
    policy: Policy,
    sketch: Sketch,
    budget: Arc<Semaphore>,
    backlog: Arc<Backlog>,
}

impl Admission {
    pub(crate) fn new(policy: Policy) -> Self {
        Admission {
            budget: Arc::new(Semaphore::new(policy.max_moves_in_flight.max(1))),
            sketch: Sketch::new(),
            backlog: Arc::new(Backlog {
                waiting: AtomicUsize::new(0),
                bound: policy.max_pending_demotions.max(1),
                room: Notify::new(),
            }),
            policy,
        }
    }

    /// Wait for `point`'s test delay, if any.
    pub(crate) async fn pause(&self, point: Pause) {
        if let Some(hook) = &self.policy.pauses {
            let delay = hook(point);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
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

    /// A slot for a move now, if the budget has one.
    pub(crate) fn move_permit(&self) -> Result<OwnedSemaphorePermit, Skip> {
        self.budget
            .clone()
            .try_acquire_owned()
            .map_err(|_| Skip::Busy)
    }

    /// A slot for a move, waiting for one.
    pub(crate) async fn wait_move_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.budget.clone().acquire_owned().await.ok()
    }

    /// A place in the demotion backlog, if it is not full.
    pub(crate) fn enter_backlog(&self) -> Option<BacklogPlace> {
        let backlog = &self.backlog;
        backlog
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < backlog.bound).then_some(n + 1)
            })
            .ok()?;
        Some(BacklogPlace(backlog.clone()))
    }

    /// Wait until the demotion backlog is at most half full: a writer's
    /// back-pressure in write-back.
    pub(crate) async fn wait_for_backlog_room(&self) {
        let backlog = &self.backlog;
        loop {
            let room = backlog.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if backlog.waiting.load(Ordering::Acquire) <= backlog.bound / 2 {
                return;
            }
            room.await;
        }
    }
}

/// Demotions waiting to be copied.
#[derive(Debug)]
struct Backlog {
    waiting: AtomicUsize,
    bound: usize,
    room: Notify,
}

/// One demotion's place in the backlog, given back when dropped.
#[derive(Debug)]
pub(crate) struct BacklogPlace(Arc<Backlog>);

impl Drop for BacklogPlace {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
        self.0.room.notify_waiters();
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

    #[tokio::test]
    async fn the_demotion_backlog_is_bounded_and_writers_wait_for_half_of_it() {
        let admission = Admission::new(Policy::default().max_pending_demotions(4));
        let places: Vec<_> = (0..4).map(|_| admission.enter_backlog()).collect();
        assert!(places.iter().all(Option::is_some));
        assert!(admission.enter_backlog().is_none(), "a fifth place");
        let admission = Arc::new(admission);
        let writer = {
            let admission = admission.clone();
            tokio::spawn(async move { admission.wait_for_backlog_room().await })
        };
        tokio::task::yield_now().await;
        let mut places = places;
        places.pop();
        tokio::task::yield_now().await;
        assert!(!writer.is_finished(), "3 of 4 waiting is more than half");
        places.pop();
        writer.await.expect("the writer goes on at half");
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
