//! The tier's entries, in shards, and its one S3-FIFO over all of them.
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
//! The maps are sharded, so lookups on different keys never share a lock;
//! the queues are one, so eviction sees every entry in one order whatever
//! its shard. (Queues per shard, each write evicting from its own shard
//! first, cost up to 20 points of byte hit ratio on mixed sizes: see
//! ARCHITECTURE.md.) Only writes and evictions take the queue lock.
//!
//! Lock order: `Queues`, then one shard's `maps`. Lookups take only `maps`
//! for reading.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use nohash_hasher::{IntMap, IntSet};
use parking_lot::{Mutex, RwLock};
use pingora_http::ResponseHeader;

use crate::entry::Entry;
use crate::inflight::Inflight;

/// The maps a lookup reads.
#[derive(Debug, Default)]
pub(crate) struct Maps {
    /// Published entries by key slot.
    pub(crate) complete: IntMap<u64, Arc<Entry>>,
    /// Writes in progress by key slot, oldest first (usually one).
    pub(crate) writing: IntMap<u64, Vec<Arc<Inflight>>>,
    /// Parsed headers of hot entries, by key slot: a hit on one clones it
    /// instead of building a header from the entry's buffer. Every change to
    /// `complete[slot]` forgets the slot's header here, so a header is only
    /// ever that of the live entry (its id is checked as well).
    hot: IntMap<u64, HotHeader>,
}

/// A hot entry's parsed header and the bytes it is charged.
#[derive(Debug)]
struct HotHeader {
    id: u64,
    header: ResponseHeader,
    charge: usize,
}

impl Maps {
    /// The parsed header kept for the entry `id` under `hash`.
    pub(crate) fn hot_header(&self, hash: u64, id: u64) -> Option<&ResponseHeader> {
        self.hot
            .get(&hash)
            .filter(|hot| hot.id == id)
            .map(|hot| &hot.header)
    }

    /// Keep `header`, built from `entry`'s meta, while `entry` is the one
    /// under `hash`, charged `charge` bytes; `false` (keeping nothing) if it
    /// was replaced meanwhile (a meta update keeps the id, not the `Arc`) or
    /// already has one.
    pub(crate) fn keep_hot_header(
        &mut self,
        hash: u64,
        entry: &Arc<Entry>,
        header: ResponseHeader,
        charge: usize,
    ) -> bool {
        let live = self
            .complete
            .get(&hash)
            .is_some_and(|e| Arc::ptr_eq(e, entry));
        if !live || self.hot.contains_key(&hash) {
            return false;
        }
        let id = entry.id;
        self.hot.insert(hash, HotHeader { id, header, charge });
        true
    }

    /// Forget the parsed header kept under `hash`, returning its charge.
    fn forget_hot(&mut self, hash: u64) -> usize {
        self.hot.remove(&hash).map_or(0, |hot| hot.charge)
    }

    /// Bytes charged for parsed headers, for the ledger's tests.
    #[cfg(test)]
    pub(crate) fn hot_bytes(&self) -> usize {
        self.hot.values().map(|hot| hot.charge).sum()
    }
}

/// What a change to an entry freed: the entry, and the charge of the parsed
/// header that was kept for it (0 if none).
pub(crate) type Freed = (Arc<Entry>, usize);

/// One shard: a slice of the key space and its lock.
#[derive(Debug, Default)]
pub(crate) struct Shard {
    pub(crate) maps: RwLock<Maps>,
}

impl Shard {
    /// Remove the entry under `hash` if `pred` accepts it. Its queue item
    /// stays until eviction or compaction finds it stale.
    pub(crate) fn remove_if(&self, hash: u64, pred: impl FnOnce(&Entry) -> bool) -> Option<Freed> {
        let mut maps = self.maps.write();
        let entry = maps.complete.get(&hash)?;
        if !pred(entry) {
            return None;
        }
        let removed = maps.complete.remove(&hash)?;
        Some((removed, maps.forget_hot(hash)))
    }

    /// Replace the entry under `hash` with `make(old)` if `pred` accepts the old
    /// one and `make` makes one; the new entry keeps the old one's queue
    /// position (same id), but not its parsed header (its meta changed).
    /// Returns the old entry and the charge of that header, and the new entry.
    pub(crate) fn replace_if(
        &self,
        hash: u64,
        pred: impl FnOnce(&Entry) -> bool,
        make: impl FnOnce(&Entry) -> Option<Entry>,
    ) -> Option<(Freed, Arc<Entry>)> {
        let mut maps = self.maps.write();
        let old = maps.complete.get(&hash)?;
        if !pred(old) {
            return None;
        }
        let new = Arc::new(make(old)?);
        let old = maps.complete.insert(hash, new.clone())?;
        Some(((old, maps.forget_hot(hash)), new))
    }
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
struct Fifos {
    small: VecDeque<Item>,
    main: VecDeque<Item>,
    small_bytes: usize,
    ghost: Ghost,
}

/// The S3-FIFO queues of all shards.
#[derive(Debug, Default)]
pub(crate) struct Queues {
    fifos: Mutex<Fifos>,
    /// Queue items whose entry was removed or replaced since they were queued.
    stale: AtomicUsize,
}

impl Queues {
    /// Publish `entry` under `hash` in `shard`, returning the entry it replaced.
    pub(crate) fn publish(&self, shard: &Shard, hash: u64, entry: Arc<Entry>) -> Option<Freed> {
        let item = Item {
            hash,
            id: entry.id,
            charge: entry.charge(),
        };
        let mut fifos = self.fifos.lock();
        if fifos.ghost.take(hash) {
            fifos.main.push_back(item);
        } else {
            fifos.small.push_back(item);
            fifos.small_bytes += item.charge;
        }
        let mut maps = shard.maps.write();
        let replaced = maps.complete.insert(hash, entry)?;
        let hot = maps.forget_hot(hash);
        drop(maps);
        self.mark_stale();
        Some((replaced, hot))
    }

    /// Count a queue item whose entry is gone (purged or replaced).
    pub(crate) fn mark_stale(&self) {
        self.stale.fetch_add(1, Ordering::Relaxed);
    }

    /// Evict one entry by S3-FIFO, returning it; `None` when no shard holds
    /// anything evictable. `small_target` is the probationary queue's share
    /// in bytes. `on_evict` sees the entry before its shard's lock is
    /// released, so no other operation on its key can find it gone before
    /// `on_evict` has run (the eviction listener's contract).
    pub(crate) fn evict_one<'a>(
        &self,
        shard_of: impl Fn(u64) -> &'a Shard,
        small_target: usize,
        ghost_floor: usize,
        on_evict: &mut dyn FnMut(&Arc<Entry>),
    ) -> Option<Freed> {
        let mut fifos = self.fifos.lock();
        loop {
            let from_small = fifos.small_bytes > small_target || fifos.main.is_empty();
            let item = if from_small {
                match fifos.small.pop_front() {
                    Some(item) => {
                        fifos.small_bytes -= item.charge;
                        item
                    }
                    None if fifos.main.is_empty() => return None,
                    None => continue,
                }
            } else {
                match fifos.main.pop_front() {
                    Some(item) => item,
                    None => continue,
                }
            };
            let mut maps = shard_of(item.hash).maps.write();
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
            if freq > 0 {
                // Read since it was queued: to main (from small with its
                // count reset, from main with one pass used up).
                entry
                    .freq
                    .store(if from_small { 0 } else { freq - 1 }, Ordering::Relaxed);
                drop(maps);
                fifos.main.push_back(item);
                continue;
            }
            let Some(evicted) = maps.complete.remove(&item.hash) else {
                continue;
            };
            let hot = maps.forget_hot(item.hash);
            on_evict(&evicted);
            drop(maps);
            if from_small {
                let cap = ghost_floor.max(fifos.small.len() + fifos.main.len());
                fifos.ghost.remember(item.hash, cap);
            }
            return Some((evicted, hot));
        }
    }

    /// Drop queue items of removed entries once they outnumber the live
    /// ones (`live()`, asked only when there are more than 64), so a cache
    /// that never fills (and so never evicts) still has bounded queues under
    /// churn.
    pub(crate) fn compact_if_stale<'a>(
        &self,
        live: impl FnOnce() -> usize,
        shard_of: impl Fn(u64) -> &'a Shard,
    ) {
        let stale = self.stale.load(Ordering::Relaxed);
        if stale <= 64 || stale <= live() + 64 {
            return;
        }
        let mut fifos = self.fifos.lock();
        let is_live = |item: &Item| {
            shard_of(item.hash)
                .maps
                .read()
                .complete
                .get(&item.hash)
                .is_some_and(|entry| entry.id == item.id)
        };
        fifos.small.retain(is_live);
        fifos.main.retain(is_live);
        fifos.small_bytes = fifos.small.iter().map(|item| item.charge).sum();
        self.stale.store(0, Ordering::Relaxed);
    }

    /// Queue lengths, for tests of the bound on bookkeeping.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        let fifos = self.fifos.lock();
        fifos.small.len() + fifos.main.len()
    }
}
