//! One shard of the tier: its entries, its writes in progress, and its
//! S3-FIFO queues.
//!
//! S3-FIFO (Yang et al., SOSP 2023) keeps a small probationary FIFO, a main
//! FIFO and a ghost list of recently evicted keys. New keys enter the small
//! queue; at its tail, an entry that was read since it entered moves to main,
//! and one that was not is evicted and remembered in the ghost list. A key
//! found in the ghost list goes straight to main when written again. At
//! main's tail, an entry read since its last pass is reinserted with its count
//! decremented; otherwise it is evicted. A hit only bumps a counter in the
//! entry: it takes no queue lock, which keeps the hit path cheap.
//!
//! Lock order: `queues`, then `maps`. Lookups take only `maps` for reading.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use nohash_hasher::{IntMap, IntSet};
use parking_lot::{Mutex, RwLock};

use crate::entry::Entry;
use crate::inflight::Inflight;

/// The maps a lookup reads.
#[derive(Debug, Default)]
pub(crate) struct Maps {
    /// Published entries by key slot.
    pub(crate) complete: IntMap<u64, Arc<Entry>>,
    /// Writes in progress by key slot, oldest first (usually one).
    pub(crate) writing: IntMap<u64, Vec<Arc<Inflight>>>,
}

#[derive(Debug, Clone, Copy)]
struct Item {
    hash: u64,
    id: u64,
    charge: usize,
}

#[derive(Debug, Default)]
struct Ghost {
    order: VecDeque<u64>,
    set: IntSet<u64>,
}

impl Ghost {
    fn remember(&mut self, hash: u64, cap: usize) {
        if self.set.insert(hash) {
            self.order.push_back(hash);
        }
        while self.order.len() > cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }

    /// Forget `hash`, saying whether it was remembered. Its slot in `order`
    /// stays until it ages out; `set` is the source of truth.
    fn take(&mut self, hash: u64) -> bool {
        self.set.remove(&hash)
    }
}

#[derive(Debug, Default)]
struct Queues {
    small: VecDeque<Item>,
    main: VecDeque<Item>,
    small_bytes: usize,
    ghost: Ghost,
}

/// One shard.
#[derive(Debug, Default)]
pub(crate) struct Shard {
    pub(crate) maps: RwLock<Maps>,
    queues: Mutex<Queues>,
    /// Queue items whose entry was removed or replaced since they were queued.
    stale: AtomicUsize,
}

impl Shard {
    /// Publish `entry` under `hash`, returning the entry it replaced.
    pub(crate) fn publish(&self, hash: u64, entry: Arc<Entry>) -> Option<Arc<Entry>> {
        let item = Item {
            hash,
            id: entry.id,
            charge: entry.charge,
        };
        let mut queues = self.queues.lock();
        if queues.ghost.take(hash) {
            queues.main.push_back(item);
        } else {
            queues.small.push_back(item);
            queues.small_bytes += item.charge;
        }
        let mut maps = self.maps.write();
        let replaced = maps.complete.insert(hash, entry);
        if replaced.is_some() {
            self.stale.fetch_add(1, Ordering::Relaxed);
        }
        self.compact_if_stale(&mut queues, &maps);
        replaced
    }

    /// Remove the entry under `hash` if `pred` accepts it.
    pub(crate) fn remove_if(
        &self,
        hash: u64,
        pred: impl FnOnce(&Entry) -> bool,
    ) -> Option<Arc<Entry>> {
        let mut maps = self.maps.write();
        let entry = maps.complete.get(&hash)?;
        if !pred(entry) {
            return None;
        }
        let removed = maps.complete.remove(&hash);
        self.stale.fetch_add(1, Ordering::Relaxed);
        removed
    }

    /// Replace the entry under `hash` with `make(old)` if `pred` accepts the old
    /// one; the new entry keeps the old one's queue position (same id).
    pub(crate) fn replace_if(
        &self,
        hash: u64,
        pred: impl FnOnce(&Entry) -> bool,
        make: impl FnOnce(&Entry) -> Entry,
    ) -> Option<(Arc<Entry>, Arc<Entry>)> {
        let mut maps = self.maps.write();
        let old = maps.complete.get(&hash)?;
        if !pred(old) {
            return None;
        }
        let new = Arc::new(make(old));
        let old = maps.complete.insert(hash, new.clone())?;
        Some((old, new))
    }

    /// Evict one entry by S3-FIFO, returning it; `None` when the shard holds
    /// nothing evictable. `small_target` is the probationary queue's share of
    /// this shard in bytes. `on_evict` sees the entry before the shard's locks
    /// are released, so no other operation on its key can find it gone
    /// before `on_evict` has run (the eviction listener's contract).
    pub(crate) fn evict_one(
        &self,
        small_target: usize,
        ghost_floor: usize,
        on_evict: &mut dyn FnMut(&Arc<Entry>),
    ) -> Option<Arc<Entry>> {
        let mut queues = self.queues.lock();
        let mut maps = self.maps.write();
        loop {
            let from_small = queues.small_bytes > small_target || queues.main.is_empty();
            let item = if from_small {
                match queues.small.pop_front() {
                    Some(item) => {
                        queues.small_bytes -= item.charge;
                        item
                    }
                    None if queues.main.is_empty() => return None,
                    None => continue,
                }
            } else {
                match queues.main.pop_front() {
                    Some(item) => item,
                    None => continue,
                }
            };
            let live = maps
                .complete
                .get(&item.hash)
                .filter(|entry| entry.id == item.id);
            let Some(entry) = live else {
                // The entry was purged or replaced after it was queued.
                let _ = self
                    .stale
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| s.checked_sub(1));
                continue;
            };
            let freq = entry.freq.load(Ordering::Relaxed);
            if from_small && freq > 0 {
                entry.freq.store(0, Ordering::Relaxed);
                queues.main.push_back(item);
                continue;
            }
            if !from_small && freq > 0 {
                entry.freq.store(freq - 1, Ordering::Relaxed);
                queues.main.push_back(item);
                continue;
            }
            let evicted = maps.complete.remove(&item.hash);
            if from_small {
                let cap = ghost_floor.max(queues.small.len() + queues.main.len());
                queues.ghost.remember(item.hash, cap);
            }
            if let Some(entry) = &evicted {
                on_evict(entry);
            }
            return evicted;
        }
    }

    /// Drop queue items of removed entries once they outnumber the live ones,
    /// so a cache that never fills (and so never evicts) still has bounded
    /// queues under churn.
    fn compact_if_stale(&self, queues: &mut Queues, maps: &Maps) {
        let stale = self.stale.load(Ordering::Relaxed);
        if stale <= maps.complete.len() + 64 {
            return;
        }
        let is_live = |item: &Item| {
            maps.complete
                .get(&item.hash)
                .is_some_and(|entry| entry.id == item.id)
        };
        queues.small.retain(is_live);
        queues.main.retain(is_live);
        queues.small_bytes = queues.small.iter().map(|item| item.charge).sum();
        self.stale.store(0, Ordering::Relaxed);
    }

    /// Queue lengths, for tests of the bound on bookkeeping.
    #[cfg(test)]
    pub(crate) fn queue_len(&self) -> usize {
        let queues = self.queues.lock();
        queues.small.len() + queues.main.len()
    }
}
