//! The in-memory index of stored entries, their eviction order and the byte
//! ledger.
//!
//! Each entry file is named by its key's hash, so a file operation on a key
//! (publish by rename, purge, eviction) happens while the key's index shard is
//! locked: otherwise an eviction could unlink a file that a concurrent writer
//! has just renamed into place. Those sections run on the blocking pool.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, MutexGuard};
use pingora_cache::key::CompactCacheKey;

const SHARDS: usize = 16;

/// What the index knows of one stored entry.
#[derive(Debug, Clone)]
pub(crate) struct IndexEntry {
    pub(crate) key: CompactCacheKey,
    pub(crate) id: u64,
    pub(crate) file_len: u64,
    /// Position in the eviction order: the smallest is evicted first.
    pub(crate) seq: u64,
}

#[derive(Debug, Default)]
pub(crate) struct IndexShard {
    pub(crate) map: HashMap<u64, IndexEntry>,
    /// seq -> slot, oldest access first.
    order: BTreeMap<u64, u64>,
}

impl IndexShard {
    pub(crate) fn insert(&mut self, slot: u64, entry: IndexEntry) -> Option<IndexEntry> {
        self.order.insert(entry.seq, slot);
        let old = self.map.insert(slot, entry);
        if let Some(old) = &old {
            self.order.remove(&old.seq);
        }
        old
    }

    pub(crate) fn remove(&mut self, slot: u64) -> Option<IndexEntry> {
        let old = self.map.remove(&slot)?;
        self.order.remove(&old.seq);
        Some(old)
    }

    /// Move `slot` to the most recently used end.
    pub(crate) fn touch(&mut self, slot: u64, seq: u64) {
        if let Some(entry) = self.map.get_mut(&slot) {
            self.order.remove(&entry.seq);
            entry.seq = seq;
            self.order.insert(seq, slot);
        }
    }

    fn oldest(&self) -> Option<(u64, u64)> {
        self.order
            .first_key_value()
            .map(|(seq, slot)| (*seq, *slot))
    }
}

/// The sharded index and the ledger of bytes charged against the capacity.
#[derive(Debug)]
pub(crate) struct Index {
    shards: Box<[Mutex<IndexShard>]>,
    /// Bytes of indexed files plus reservations of writes in progress.
    used: AtomicU64,
    clock: AtomicU64,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            used: AtomicU64::new(0),
            clock: AtomicU64::new(1),
        }
    }
}

impl Index {
    pub(crate) fn shard(&self, slot: u64) -> MutexGuard<'_, IndexShard> {
        self.shards[(slot >> 60) as usize % SHARDS].lock()
    }

    pub(crate) fn next_seq(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    /// Start the clock after the highest sequence loaded from disk.
    pub(crate) fn set_clock_after(&self, seq: u64) {
        self.clock.fetch_max(seq + 1, Ordering::Relaxed);
    }

    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub(crate) fn charge(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::AcqRel);
    }

    pub(crate) fn release(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(bytes))
            });
    }

    /// Charge `bytes` if they fit under `capacity`; `false` if they do not.
    pub(crate) fn try_charge(&self, bytes: u64, capacity: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |u| {
                (u + bytes <= capacity).then_some(u + bytes)
            })
            .is_ok()
    }

    /// The shard holding the least recently used entry of all, locked.
    pub(crate) fn lock_oldest(&self) -> Option<(MutexGuard<'_, IndexShard>, u64)> {
        let mut best: Option<(u64, usize)> = None;
        for (idx, shard) in self.shards.iter().enumerate() {
            if let Some((seq, _)) = shard.lock().oldest() {
                if best.is_none_or(|(best_seq, _)| seq < best_seq) {
                    best = Some((seq, idx));
                }
            }
        }
        let (_, idx) = best?;
        let guard = self.shards[idx].lock();
        // Another thread may have changed the shard since: take its oldest now.
        let (_, slot) = guard.oldest()?;
        Some((guard, slot))
    }

    /// Every entry's (seq, slot, id), for saving the eviction order.
    pub(crate) fn order_snapshot(&self) -> Vec<(u64, u64, u64)> {
        let mut all = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            all.extend(shard.map.iter().map(|(slot, e)| (e.seq, *slot, e.id)));
        }
        all.sort_unstable();
        all
    }

    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64, seq: u64) -> IndexEntry {
        IndexEntry {
            key: CompactCacheKey::default(),
            id,
            file_len: 10,
            seq,
        }
    }

    #[test]
    fn oldest_is_the_least_recently_touched_across_shards() {
        let index = Index::default();
        for (slot, seq) in [(1u64 << 60, 5), (2u64 << 60, 3), (3u64 << 60, 9)] {
            index.shard(slot).insert(slot, entry(slot, seq));
        }
        let (_, slot) = index.lock_oldest().expect("entries");
        assert_eq!(slot, 2 << 60);
        index.shard(2 << 60).touch(2 << 60, 100);
        let (_, slot) = index.lock_oldest().expect("entries");
        assert_eq!(slot, 1 << 60);
    }

    #[test]
    fn charge_never_passes_capacity() {
        let index = Index::default();
        assert!(index.try_charge(60, 100));
        assert!(!index.try_charge(41, 100));
        assert!(index.try_charge(40, 100));
        index.release(200);
        assert_eq!(index.used(), 0);
    }
}
