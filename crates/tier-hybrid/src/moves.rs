//! Per-key order between moves (promotions, demotions) and everything else
//! that changes a key (a write's `finish`, a purge, an expiry, a meta
//! update): the hybrid's first invariant lives here.
//!
//! Every change of a key runs under that key's [`Exclusive`] section, which
//! bumps the key's generation when it starts. A move takes a [`MoveTicket`]
//! *before* it reads its source, recording the generation, and publishes
//! only through [`MoveTicket::publish`], which enters the same exclusive
//! section and checks, there, that the generation is unchanged. So a move
//! publishes only if nothing changed the key since it read its source, and
//! no change can run while it publishes:
//!
//! - a change that ended before the ticket was taken is already in the
//!   tiers when the move reads its source;
//! - a change in progress when the ticket is asked for refuses the ticket;
//! - a change that starts after the ticket bumps the generation, so the
//!   publish is refused, or waits for a publish already under way and then
//!   acts on what it published.
//!
//! For a demotion the "read" is the hot tier's eviction, which happens inside
//! the hot tier: tiers call [`tier_core::EvictionListener::on_evict`] before
//! another operation on that key can see the entry gone, and the listener
//! takes its ticket there.
//!
//! State is kept only for keys with a move or a change in flight, so it is
//! bounded by the work in flight, not by the number of keys.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{Notify, OwnedMutexGuard};

use crate::ids::TierBit;

const SHARDS: usize = 64;
const WRITING_BUCKETS: usize = 4096;

/// One key's order: the exclusive section and the generation it bumps.
#[derive(Debug, Default)]
struct Cell {
    exclusive: Arc<tokio::sync::Mutex<()>>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Bumped by every change of the key.
    generation: u64,
    /// A move of this key holds a ticket (one move per key at most).
    moving: bool,
    /// The move is writing into this tier: `(tier, None)` until its write
    /// has an id (or when the tier assigns none).
    writing: Option<(TierBit, Option<u64>)>,
}

/// Cells of keys with work in flight, by slot.
type Shard = Mutex<HashMap<u64, Arc<Cell>>>;

/// The registry of keys with work in flight.
#[derive(Debug)]
pub(crate) struct Moves {
    shards: Box<[Shard]>,
    /// Moves holding a ticket now.
    in_flight: AtomicU32,
    /// Moves writing into a tier now.
    n_writing: AtomicU32,
    idle: Notify,
    /// Counts of moves writing by slot bucket, so a hit only looks further
    /// when one may be writing its key.
    writing: Box<[AtomicU32]>,
}

impl Default for Moves {
    fn default() -> Self {
        Moves {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            in_flight: AtomicU32::new(0),
            n_writing: AtomicU32::new(0),
            idle: Notify::new(),
            writing: (0..WRITING_BUCKETS).map(|_| AtomicU32::new(0)).collect(),
        }
    }
}

impl Moves {
    fn shard(&self, slot: u64) -> &Shard {
        &self.shards[(slot >> 58) as usize % SHARDS]
    }

    fn cell(self: &Arc<Self>, slot: u64) -> CellRef {
        let cell = self.shard(slot).lock().entry(slot).or_default().clone();
        CellRef {
            moves: self.clone(),
            slot,
            cell,
        }
    }

    /// Enter `slot`'s exclusive section for a change of the key: waits for a
    /// move that is publishing, and makes every move that read its source
    /// before now refuse to publish.
    pub(crate) async fn exclusive(self: &Arc<Self>, slot: u64) -> Exclusive {
        let cell = self.cell(slot);
        let lock = cell.cell.exclusive.clone().lock_owned().await;
        cell.cell.state.lock().generation += 1;
        Exclusive { _lock: lock, cell }
    }

    /// A ticket for a move of `slot` that is about to read its source;
    /// `None` when the key is being changed or another move of it holds one.
    pub(crate) fn ticket(self: &Arc<Self>, slot: u64) -> Option<MoveTicket> {
        let cell = self.cell(slot);
        // A change in progress holds the section: its result is not in the
        // tiers yet, so nothing read now may be published. Holding it while
        // the generation is read keeps a change from starting in between.
        let section = cell.cell.exclusive.clone().try_lock_owned().ok()?;
        let ticket = Self::ticket_in(cell);
        drop(section);
        ticket
    }

    fn ticket_in(cell: CellRef) -> Option<MoveTicket> {
        let generation = {
            let mut state = cell.cell.state.lock();
            if state.moving {
                return None;
            }
            state.moving = true;
            state.generation
        };
        cell.moves.in_flight.fetch_add(1, Ordering::SeqCst);
        Some(MoveTicket {
            cell,
            generation,
            writes: false,
        })
    }

    /// Whether any move is writing into a tier: one atomic load, so a hit
    /// pays for its key's slot only when one is.
    pub(crate) fn any_writing(&self) -> bool {
        self.n_writing.load(Ordering::Acquire) > 0
    }

    /// Whether a hit of `slot` in `tier` with `id` is a move's write still in
    /// progress, which readers must not be handed: the move may still give
    /// up, and a reader following it would then fail mid-body.
    pub(crate) fn is_move_write(&self, slot: u64, tier: TierBit, id: Option<u64>) -> bool {
        if self.writing[slot as usize % WRITING_BUCKETS].load(Ordering::Acquire) == 0 {
            return false;
        }
        let shard = self.shard(slot).lock();
        let Some(cell) = shard.get(&slot) else {
            return false;
        };
        let writing = cell.state.lock().writing;
        match writing {
            Some((into, _)) if into != tier => false,
            Some((_, Some(move_id))) => id.is_none_or(|hit| hit == move_id),
            // Without an id the hit cannot be told apart: skip it.
            Some((_, None)) => true,
            None => false,
        }
    }

    /// How many moves are in flight.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst) as usize
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

/// A counted reference to a key's cell; the last one out removes the cell.
#[derive(Debug)]
struct CellRef {
    moves: Arc<Moves>,
    slot: u64,
    cell: Arc<Cell>,
}

impl Drop for CellRef {
    fn drop(&mut self) {
        let mut shard = self.moves.shard(self.slot).lock();
        // The map's reference and ours: no one else uses the cell.
        if Arc::strong_count(&self.cell) == 2 {
            shard.remove(&self.slot);
        }
    }
}

/// A change of one key in progress; dropping it ends the change.
#[derive(Debug)]
pub(crate) struct Exclusive {
    // Field order: the lock is released before the cell reference is
    // counted down, so the cell is never removed while held.
    _lock: OwnedMutexGuard<()>,
    cell: CellRef,
}

impl Exclusive {
    /// A ticket for a move this change starts itself (the demotion of a
    /// `purge(_, Eviction)`): it may publish only if nothing changes the key
    /// after this change ends.
    pub(crate) fn ticket(&self) -> Option<MoveTicket> {
        Moves::ticket_in(CellRef {
            moves: self.cell.moves.clone(),
            slot: self.cell.slot,
            cell: self.cell.cell.clone(),
        })
    }
}

/// A move in flight, holding the generation it read its source at; dropping
/// it ends the move.
#[derive(Debug)]
pub(crate) struct MoveTicket {
    cell: CellRef,
    generation: u64,
    /// Whether this move has marked a write (see [`MoveTicket::writing`]).
    writes: bool,
}

impl MoveTicket {
    /// Mark this move as writing into `tier`, so hits of its write are not
    /// handed to readers until it is published.
    pub(crate) fn writing(&mut self, tier: TierBit, id: Option<u64>) {
        if !self.writes {
            self.writes = true;
            let moves = &self.cell.moves;
            moves.n_writing.fetch_add(1, Ordering::AcqRel);
            moves.writing[self.cell.slot as usize % WRITING_BUCKETS].fetch_add(1, Ordering::AcqRel);
        }
        self.cell.cell.state.lock().writing = Some((tier, id));
    }

    /// Publish with `finish`, in the key's exclusive section, if nothing
    /// changed the key since this ticket was taken. `Ok(false)` when
    /// something did and nothing was published.
    pub(crate) async fn publish<F, T>(&self, finish: F) -> pingora_error::Result<bool>
    where
        F: Future<Output = pingora_error::Result<T>>,
    {
        let _section = self.cell.cell.exclusive.clone().lock_owned().await;
        if self.cell.cell.state.lock().generation != self.generation {
            return Ok(false);
        }
        finish.await?;
        // Published: the copy is an ordinary entry now.
        self.cell.cell.state.lock().writing = None;
        Ok(true)
    }

    /// Whether the key changed since this ticket was taken.
    pub(crate) fn is_stale(&self) -> bool {
        self.cell.cell.state.lock().generation != self.generation
    }
}

impl Drop for MoveTicket {
    fn drop(&mut self) {
        {
            let mut state = self.cell.cell.state.lock();
            state.moving = false;
            state.writing = None;
        }
        let moves = &self.cell.moves;
        if self.writes {
            moves.n_writing.fetch_sub(1, Ordering::AcqRel);
            moves.writing[self.cell.slot as usize % WRITING_BUCKETS].fetch_sub(1, Ordering::AcqRel);
        }
        if moves.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            moves.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_move_per_key_and_a_change_refuses_its_publish() {
        let moves = Arc::new(Moves::default());
        let ticket = moves.ticket(1).expect("first move");
        assert!(moves.ticket(1).is_none(), "a second move of one key");
        assert!(moves.ticket(2).is_some());
        drop(moves.exclusive(1).await);
        let published = ticket.publish(async { Ok(()) }).await.expect("publish");
        assert!(
            !published,
            "a move that read before a change may not publish"
        );
        drop(ticket);
        assert!(moves.ticket(1).is_some());
    }

    #[tokio::test]
    async fn no_ticket_while_a_change_is_in_progress() {
        let moves = Arc::new(Moves::default());
        let change = moves.exclusive(5).await;
        assert!(moves.ticket(5).is_none());
        let own = change.ticket().expect("the change's own move");
        drop(change);
        assert!(own.publish(async { Ok(()) }).await.expect("publish"));
    }

    #[tokio::test]
    async fn a_change_waits_for_a_publish_under_way() {
        let moves = Arc::new(Moves::default());
        let ticket = moves.ticket(9).expect("move");
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let publisher = tokio::spawn(async move {
            ticket
                .publish(async {
                    let _ = wait.await;
                    Ok(())
                })
                .await
        });
        tokio::task::yield_now().await;
        let changer = {
            let moves = moves.clone();
            tokio::spawn(async move { drop(moves.exclusive(9).await) })
        };
        tokio::task::yield_now().await;
        assert!(!changer.is_finished(), "a change ran during a publish");
        let _ = release.send(());
        assert!(publisher.await.expect("task").expect("publish"));
        changer.await.expect("change");
        moves.wait_idle().await;
        assert_eq!(
            moves.shards.iter().map(|s| s.lock().len()).sum::<usize>(),
            0
        );
    }

    #[tokio::test]
    async fn move_writes_are_recognised_until_published() {
        let moves = Arc::new(Moves::default());
        let mut ticket = moves.ticket(3).expect("move");
        assert!(!moves.is_move_write(3, TierBit::Hot, Some(7)));
        ticket.writing(TierBit::Hot, Some(7));
        assert!(moves.is_move_write(3, TierBit::Hot, Some(7)));
        assert!(
            !moves.is_move_write(3, TierBit::Hot, Some(8)),
            "another write of the key"
        );
        assert!(
            !moves.is_move_write(3, TierBit::Cold, Some(7)),
            "the other tier"
        );
        assert!(ticket.publish(async { Ok(()) }).await.expect("publish"));
        assert!(!moves.is_move_write(3, TierBit::Hot, Some(7)));
        drop(ticket);
        assert!(!moves.is_move_write(3, TierBit::Hot, Some(7)));
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
