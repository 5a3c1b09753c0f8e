//! Moves in flight (promotions and demotions), so that a purge, an expiry, a
//! meta update or a new write of a key cancels them instead of being undone
//! by them.
//!
//! A move publishes only through [`MoveGuard::try_finish`], which marks it
//! finishing and then checks for a cancel; [`Moves::cancel`] marks the cancel
//! and then waits for a move that was already finishing. Both use sequentially
//! consistent atomics, so at least one of them sees the other: either the
//! move gives up, or the canceller waits for it and then removes what it
//! published.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

// Phase 0 (the default) is running.
const FINISHING: u8 = 1;
const DONE: u8 = 2;

#[derive(Debug, Default)]
struct MoveState {
    cancelled: AtomicBool,
    phase: AtomicU8,
    done: Notify,
}

/// The registry of moves in flight, one per key slot at most.
#[derive(Debug, Default)]
pub(crate) struct Moves {
    map: Mutex<HashMap<u64, Arc<MoveState>>>,
    idle: Notify,
}

impl Moves {
    /// Register a move of `slot`, unless one is already in flight.
    pub(crate) fn begin(self: &Arc<Self>, slot: u64) -> Option<MoveGuard> {
        let mut map = self.map.lock();
        if map.contains_key(&slot) {
            return None;
        }
        let state = Arc::new(MoveState::default());
        map.insert(slot, state.clone());
        Some(MoveGuard {
            moves: self.clone(),
            slot,
            state,
        })
    }

    /// Cancel the move of `slot`, if any; returns once it can no longer
    /// publish anything the caller does not then see.
    pub(crate) async fn cancel(&self, slot: u64) {
        let state = self.map.lock().get(&slot).cloned();
        let Some(state) = state else { return };
        state.cancelled.store(true, Ordering::SeqCst);
        let done = state.done.notified();
        tokio::pin!(done);
        done.as_mut().enable();
        if state.phase.load(Ordering::SeqCst) == FINISHING {
            done.await;
        }
    }

    /// How many moves are in flight.
    pub(crate) fn in_flight(&self) -> usize {
        self.map.lock().len()
    }

    /// Wait until no move is in flight.
    pub(crate) async fn wait_idle(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.in_flight() == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// A move in flight; dropping it ends the move.
#[derive(Debug)]
pub(crate) struct MoveGuard {
    moves: Arc<Moves>,
    slot: u64,
    state: Arc<MoveState>,
}

impl MoveGuard {
    /// Enter the finishing phase; `false` if the move was cancelled and must
    /// publish nothing.
    pub(crate) fn try_finish(&self) -> bool {
        self.state.phase.store(FINISHING, Ordering::SeqCst);
        !self.state.cancelled.load(Ordering::SeqCst)
    }
}

impl Drop for MoveGuard {
    fn drop(&mut self) {
        self.state.phase.store(DONE, Ordering::SeqCst);
        self.state.done.notify_waiters();
        let mut map = self.moves.map.lock();
        if map
            .get(&self.slot)
            .is_some_and(|s| Arc::ptr_eq(s, &self.state))
        {
            map.remove(&self.slot);
        }
        if map.is_empty() {
            self.moves.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_move_per_key_and_cancel_stops_publishing() {
        let moves = Arc::new(Moves::default());
        let guard = moves.begin(1).expect("first move");
        assert!(moves.begin(1).is_none(), "a second move of one key");
        assert!(moves.begin(2).is_some());
        moves.cancel(1).await;
        assert!(!guard.try_finish(), "a cancelled move may not publish");
        drop(guard);
        assert!(moves.begin(1).is_some());
    }

    #[tokio::test]
    async fn cancel_waits_for_a_finishing_move() {
        let moves = Arc::new(Moves::default());
        let guard = moves.begin(9).expect("move");
        assert!(guard.try_finish());
        let canceller = {
            let moves = moves.clone();
            tokio::spawn(async move { moves.cancel(9).await })
        };
        tokio::task::yield_now().await;
        assert!(
            !canceller.is_finished(),
            "cancel returned while the move was publishing"
        );
        drop(guard);
        canceller.await.expect("cancel");
        moves.wait_idle().await;
    }
}

/// Hot entries known to equal their cold copy (promoted from it, not written
/// since), by key slot and hot entry id: in write-back, evicting one needs no
/// demotion, and an exact invalidation of the cold copy's generation reaches
/// it. Bounded: when full it forgets everything, which only costs demotions
/// that were not needed.
#[derive(Debug, Default)]
pub(crate) struct CleanSet {
    map: Mutex<HashMap<u64, u64>>,
}

const CLEAN_CAP: usize = 1 << 20;

impl CleanSet {
    pub(crate) fn mark(&self, slot: u64, hot_id: u64) {
        let mut map = self.map.lock();
        if map.len() >= CLEAN_CAP {
            map.clear();
        }
        map.insert(slot, hot_id);
    }

    /// Whether `hot_id` is the clean copy recorded for `slot`.
    pub(crate) fn holds(&self, slot: u64, hot_id: u64) -> bool {
        self.map.lock().get(&slot) == Some(&hot_id)
    }

    /// Forget `slot` (a new write, a purge).
    pub(crate) fn forget(&self, slot: u64) {
        self.map.lock().remove(&slot);
    }

    /// Whether the evicted `hot_id` of `slot` was clean; forgets it either way.
    pub(crate) fn take(&self, slot: u64, hot_id: Option<u64>) -> bool {
        let removed = self.map.lock().remove(&slot);
        removed.is_some() && removed == hot_id
    }
}
