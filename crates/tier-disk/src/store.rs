//! What the log writer, the readers and the `Storage` façade share: the
//! directory, the live segments, the index, the writes in progress and the
//! counters.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use pingora_cache::key::CompactCacheKey;
use pingora_error::{Error, ErrorType};
use tier_core::{EvictionListener, StatsCounters};

use crate::config::{DiskConfig, Layout};
use crate::fsio::{Blocking, Faults};
use crate::index::{Index, Slot, SEG_MASK};
use crate::inflight::Inflight;
use crate::segment::{CacheDir, Segment};

/// The live segments, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Segments {
    list: VecDeque<Arc<Segment>>,
}

impl Segments {
    pub(crate) fn from_sorted(list: Vec<Arc<Segment>>) -> Self {
        Segments { list: list.into() }
    }

    pub(crate) fn by_id(&self, id: u64) -> Option<&Arc<Segment>> {
        let i = self.list.binary_search_by_key(&id, |seg| seg.id).ok()?;
        self.list.get(i)
    }

    /// The segment a slot's low id bits name: the live ids span fewer than
    /// 2^24 values, so the low bits name one at most.
    pub(crate) fn by_slot(&self, slot: Slot) -> Option<&Arc<Segment>> {
        let front = self.list.front()?.id;
        let id = front + (slot.segment_low().wrapping_sub(front & SEG_MASK) & SEG_MASK);
        self.by_id(id)
    }

    pub(crate) fn oldest(&self) -> Option<&Arc<Segment>> {
        self.list.front()
    }

    pub(crate) fn nth(&self, i: usize) -> Option<&Arc<Segment>> {
        self.list.get(i)
    }

    pub(crate) fn push(&mut self, seg: Arc<Segment>) {
        self.list.push_back(seg);
    }

    pub(crate) fn pop_oldest(&mut self) -> Option<Arc<Segment>> {
        self.list.pop_front()
    }

    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }

    /// Bytes the live segments take on disk (they are preallocated).
    pub(crate) fn bytes(&self) -> u64 {
        self.list.iter().map(|s| s.size).sum()
    }

    /// Whether every segment from `first` to `last` is live.
    pub(crate) fn all_live(&self, first: u64, last: u64) -> bool {
        (first..=last).all(|id| self.by_id(id).is_some())
    }
}

/// Listed writes in progress, by key hash, in shards: a lookup checks its
/// key's shard only, and skips even that while no write is listed there.
#[derive(Debug)]
pub(crate) struct Writing {
    shards: Box<[WritingShard]>,
}

#[derive(Debug, Default)]
struct WritingShard {
    listed: std::sync::atomic::AtomicUsize,
    map: Mutex<HashMap<u64, Vec<Arc<Inflight>>>>,
}

impl Default for Writing {
    fn default() -> Self {
        Writing {
            shards: (0..16).map(|_| WritingShard::default()).collect(),
        }
    }
}

impl Writing {
    fn shard(&self, hash: u64) -> &WritingShard {
        &self.shards[(hash >> 60) as usize]
    }
}

/// Counters of the disk tier beyond the common ones.
#[derive(Debug, Default)]
pub(crate) struct DiskCounters {
    pub(crate) corrupt: AtomicU64,
    pub(crate) syncs: AtomicU64,
    pub(crate) writer_waits: AtomicU64,
    pub(crate) writer_timeouts: AtomicU64,
    pub(crate) reinserted: AtomicU64,
    pub(crate) reads_nowait: AtomicU64,
    pub(crate) reads_pool: AtomicU64,
    /// Hits (until the record is read and checked, or the write in
    /// progress joined), misses, and `finish` (synced, for
    /// `Durability::Data`).
    pub(crate) latencies: tier_core::OpLatencies,
}

/// The shared state of one open tier.
pub(crate) struct Store {
    pub(crate) name: Arc<str>,
    pub(crate) config: DiskConfig,
    pub(crate) layout: Layout,
    pub(crate) dir: CacheDir,
    pub(crate) index: Index,
    pub(crate) segments: RwLock<Segments>,
    pub(crate) writing: Writing,
    pub(crate) next_seq: AtomicU64,
    pub(crate) io: Blocking,
    pub(crate) faults: Faults,
    pub(crate) counters: StatsCounters,
    pub(crate) disk: DiskCounters,
    pub(crate) listener: RwLock<Option<Arc<dyn EvictionListener>>>,
    /// Writes started whose entry record is not yet with the log writer.
    pub(crate) open_writes: std::sync::atomic::AtomicUsize,
    /// The directory's lock, held until the tier is closed or dropped.
    pub(crate) lock: parking_lot::Mutex<Option<std::os::fd::OwnedFd>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("name", &self.name)
            .field("layout", &self.layout)
            .field("entries", &self.index.len())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// A new sequence number (also a new write's entry id).
    pub(crate) fn seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn segment(&self, slot: Slot) -> Option<Arc<Segment>> {
        self.segments.read().by_slot(slot).cloned()
    }

    pub(crate) fn verify(&self) -> bool {
        !self.faults.controls().skip_checksums
    }

    /// An I/O error of operation `op`, counted.
    pub(crate) fn io_error(
        &self,
        op: &str,
        key: Option<&CompactCacheKey>,
        what: &str,
        e: io::Error,
    ) -> Box<Error> {
        self.counters.record_error();
        let etype = if matches!(
            op,
            "write_body" | "finish" | "update_meta" | "purge" | "expire"
        ) {
            ErrorType::FileWriteError
        } else {
            ErrorType::FileReadError
        };
        tier_core::error::tier_error_because(etype, &self.name, op, key, what, e)
    }

    pub(crate) fn register_write(&self, hash: u64, inflight: Arc<Inflight>) {
        let shard = self.writing.shard(hash);
        let mut map = shard.map.lock();
        map.entry(hash).or_default().push(inflight);
        shard.listed.fetch_add(1, Ordering::Release);
    }

    pub(crate) fn unregister_write(&self, hash: u64, inflight: &Arc<Inflight>) {
        let shard = self.writing.shard(hash);
        let mut writing = shard.map.lock();
        if let Some(writes) = writing.get_mut(&hash) {
            let before = writes.len();
            writes.retain(|w| !Arc::ptr_eq(w, inflight));
            shard
                .listed
                .fetch_sub(before - writes.len(), Ordering::Release);
            if writes.is_empty() {
                writing.remove(&hash);
            }
        }
    }

    /// The newest listed write of `key` (with id `id`, if given).
    pub(crate) fn following(
        &self,
        hash: u64,
        key: &CompactCacheKey,
        id: Option<u64>,
    ) -> Option<Arc<Inflight>> {
        let shard = self.writing.shard(hash);
        // A write is listed before its miss handler is returned, so a lookup
        // that follows it sees the count.
        if shard.listed.load(Ordering::Acquire) == 0 {
            return None;
        }
        shard.map.lock().get(&hash).and_then(|writes| {
            writes
                .iter()
                .rev()
                .find(|w| &w.key == key && id.is_none_or(|id| id == w.id))
                .cloned()
        })
    }
}
