//! [`DiskStorage`]: the `Storage` and `Tier` façade over the log, the
//! index and the readers.

use std::any::Any;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_cache::key::CompactCacheKey;
use pingora_cache::storage::streaming_write::U64WriteId;
use pingora_cache::storage::{
    HitHandler, MissHandler, PurgeOutcome, PurgeTarget, PurgeType, Storage,
};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheEntryId, CacheKey, CacheMeta};
use pingora_error::{Error, ErrorType, Result};
use tier_core::meta::StoredMeta;
use tier_core::{Capabilities, EvictionListener, Tier, TierReport, TierStats};

use crate::config::DiskConfig;
use crate::format::{encode_meta_ref, encode_record, loc, Kind, MetaRef, RecordMeta, RecordSpec};
use crate::index::Slot;
use crate::log::{Applied, Job, LogHandle};
use crate::read::{find, read_record};
use crate::recover::{self, Report};
use crate::store::Store;
use crate::write::DiskMissHandler;

/// A persistent, crash-safe, byte-bounded disk storage.
///
/// Open it once with [`DiskStorage::open`] (or [`DiskStorage::open_blocking`]
/// before the runtime starts), then keep it for the life of the process:
/// pingora's `Storage` methods take `&'static self`, so leak it
/// ([`DiskStorage::leak`]) or keep it in a `static`.
pub struct DiskStorage {
    store: Arc<Store>,
    log: LogHandle,
    /// What hit handlers keep of the log (to remove an entry found corrupt).
    weak: crate::log::WeakLog,
    report: Report,
}

impl std::fmt::Debug for DiskStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStorage")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// Counters of the disk tier beyond [`TierStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiskStats {
    /// Segment files live now.
    pub segments: u64,
    /// Heap bytes of the in-memory index.
    pub index_bytes: u64,
    /// `fdatasync` calls made (each commits a whole group of writes).
    pub syncs: u64,
    /// Writes that found the log writer behind and waited.
    pub writer_waits: u64,
    /// Writes refused because the log writer stayed behind past the timeout.
    pub writer_timeouts: u64,
    /// Entries copied forward from an evicted segment because they were hit.
    pub reinserted: u64,
    /// Reads the page cache answered on the calling thread.
    pub reads_nowait: u64,
    /// Reads that went to the blocking pool.
    pub reads_pool: u64,
    /// Entries found corrupt (at open or on read) and removed.
    pub corrupt: u64,
}

/// What the index points at for a key, as `purge` and meta updates find it.
enum Current {
    /// No entry of this key (and id).
    Absent,
    /// The index points into a segment already evicted.
    Gone(Slot),
    /// The record there does not read back.
    Unreadable(Slot),
    /// This key's record, at log location `at`.
    Found {
        slot: Slot,
        at: u64,
        rec: Bytes,
        head: crate::format::Head,
    },
}

/// What `rewrite_meta` writes.
enum MetaChange {
    /// The meta to store.
    Replace(StoredMeta),
    /// The stored meta, marked stale now.
    Expire,
}

/// Changes that find the index moved under them try again this many times.
const RETRIES: usize = 8;

impl DiskStorage {
    /// Open (or create) the cache in `config.dir()`, on the blocking pool:
    /// reads the summary of every sealed segment and scans the one that was
    /// being written, then starts the log writer.
    ///
    /// A version 1 directory (one file per entry) is cleared, with a log
    /// line naming it; files that are not segments are left alone and
    /// counted; a segment that is not usable is removed and counted. The
    /// tier then evicts the oldest segments if it is over its capacity.
    pub async fn open(config: DiskConfig) -> Result<Self> {
        match tokio::task::spawn_blocking(move || Self::open_blocking(config)).await {
            Ok(result) => result,
            Err(e) => Err(Error::because(
                ErrorType::InternalError,
                "disk open task failed",
                e,
            )),
        }
    }

    /// [`DiskStorage::open`] on the calling thread. Call it before the async
    /// runtime starts (for example in `main` or a `LazyLock`), never on an
    /// async worker thread.
    pub fn open_blocking(config: DiskConfig) -> Result<Self> {
        let (store, next_segment, report) = recover::open(config)?;
        let log = LogHandle::start(store.clone(), next_segment, crate::read::evicted_entry)
            .map_err(|e| {
                Error::because(
                    ErrorType::InternalError,
                    "cannot start the disk log writer",
                    e,
                )
            })?;
        let weak = log.downgrade();
        Ok(DiskStorage {
            store,
            log,
            weak,
            report,
        })
    }

    /// Leak the storage for the `&'static` pingora needs.
    pub fn leak(self) -> &'static Self {
        Box::leak(Box::new(self))
    }

    /// The configuration this tier runs with.
    pub fn config(&self) -> &DiskConfig {
        &self.store.config
    }

    /// Bytes of segment files on disk now (they are preallocated whole).
    pub fn used_bytes(&self) -> u64 {
        self.store.segments.read().bytes()
    }

    /// Entries found corrupt (at open or on read) and removed.
    pub fn corrupt_entries(&self) -> u64 {
        self.store.disk.corrupt.load(Ordering::Relaxed)
    }

    /// Files in the directory at open that were not segments (left alone).
    pub fn skipped_at_open(&self) -> u64 {
        self.report.skipped
    }

    /// Segments open found unsealed and scanned record by record: the one
    /// being written when the last process stopped without `close` (killed,
    /// or still running when this one opened). 0 after a clean close.
    pub fn scanned_at_open(&self) -> u64 {
        self.report.scanned as u64
    }

    /// Whether open found and cleared a version 1 (file per entry) cache.
    pub fn cleared_v1_at_open(&self) -> bool {
        self.report.v1_cleared
    }

    /// The disk tier's own counters.
    pub fn disk_stats(&self) -> DiskStats {
        let d = &self.store.disk;
        DiskStats {
            segments: self.store.segments.read().len() as u64,
            index_bytes: self.store.index.heap_bytes() as u64,
            syncs: d.syncs.load(Ordering::Relaxed),
            writer_waits: d.writer_waits.load(Ordering::Relaxed),
            writer_timeouts: d.writer_timeouts.load(Ordering::Relaxed),
            reinserted: d.reinserted.load(Ordering::Relaxed),
            reads_nowait: d.reads_nowait.load(Ordering::Relaxed),
            reads_pool: d.reads_pool.load(Ordering::Relaxed),
            corrupt: d.corrupt.load(Ordering::Relaxed),
        }
    }

    /// Kept for callers of format version 1, where it saved the eviction
    /// order: in version 2 the order is the log itself, so there is nothing
    /// to save. Returns at once.
    pub async fn save_order(&'static self) -> Result<()> {
        Ok(())
    }

    /// Close the tier at shutdown: the segment being written is sealed with
    /// its summary (so the next open reads summaries only), then the tier
    /// lets go of its files and index. Later lookups miss and later writes
    /// fail. Writes that finished before stay on disk.
    pub async fn close(&self) -> Result<()> {
        self.log
            .run(&self.store, 0, |reply| Job::Close { reply })
            .await
    }

    async fn start_write(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        listed: bool,
    ) -> Result<MissHandler> {
        let compact = key.to_compact();
        let hash = crate::format::key_hash(&compact);
        let miss = DiskMissHandler::start(
            self.store.clone(),
            self.log.clone(),
            compact,
            hash,
            meta,
            listed,
        )?;
        Ok(Box::new(miss))
    }

    async fn lookup_hit(
        &'static self,
        key: CompactCacheKey,
        id: Option<u64>,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let started = std::time::Instant::now();
        let found = find(&self.store, &self.weak, key, id).await?;
        let latencies = &self.store.disk.latencies;
        latencies.lookup(found.is_some(), started.elapsed());
        Ok(found.map(|(meta, hit)| (meta, Box::new(hit) as HitHandler)))
    }

    /// What the index points at for `key` now: its record if it is this
    /// key's (and this id's, if given).
    async fn current(&self, key: &CompactCacheKey, hash: u64, id: Option<u64>) -> Result<Current> {
        let store = &self.store;
        let Some(slot) = store.index.get(hash) else {
            return Ok(Current::Absent);
        };
        let Some(seg) = store.segment(slot) else {
            return Ok(Current::Gone(slot));
        };
        let (rec, head) = match read_record(store, &seg, slot).await? {
            Ok(found) => found,
            Err(_) => return Ok(Current::Unreadable(slot)),
        };
        if &head.key != key || id.is_some_and(|id| id != head.fixed.entry_id) {
            return Ok(Current::Absent);
        }
        Ok(Current::Found {
            slot,
            at: loc(seg.id, slot.offset()),
            rec,
            head,
        })
    }

    /// Remove the entry of `key` (if its id is `id`, when given); the id of
    /// the entry removed.
    async fn purge_entry(
        &'static self,
        key: &CompactCacheKey,
        id: Option<u64>,
    ) -> Result<Option<u64>> {
        let store = &self.store;
        let hash = crate::format::key_hash(key);
        for _ in 0..RETRIES {
            let (slot, removed_id) = match self.current(key, hash, id).await? {
                Current::Absent => return Ok(None),
                Current::Gone(slot) => {
                    store.index.remove_if(hash, slot, |_| {});
                    return Ok(None);
                }
                // Unreadable: remove it all the same.
                Current::Unreadable(slot) => (slot, id.unwrap_or(0)),
                Current::Found { slot, head, .. } => (slot, head.fixed.entry_id),
            };
            match crate::log::purge_slot(&self.log, store, key, hash, slot).await? {
                Applied::Done(removed) => return Ok(removed.map(|_| removed_id)),
                Applied::Moved => continue,
            }
        }
        Ok(None)
    }

    /// Write a meta update record for the entry of `key` (and `id`, if
    /// given): O(meta) bytes, the body stays where it is.
    async fn rewrite_meta(
        &'static self,
        key: &CompactCacheKey,
        id: Option<u64>,
        change: MetaChange,
    ) -> Result<bool> {
        let store = &self.store;
        let hash = crate::format::key_hash(key);
        for _ in 0..RETRIES {
            let Current::Found {
                slot,
                at: here,
                rec,
                head,
            } = self.current(key, hash, id).await?
            else {
                return Ok(false);
            };
            let body = match head.fixed.kind {
                Kind::Entry => MetaRef {
                    body_at: here,
                    body_record_len: rec.len() as u32,
                    replaces: here,
                },
                Kind::Meta => match crate::format::decode_meta_ref(head.extra()) {
                    Ok(r) => MetaRef {
                        replaces: here,
                        ..r
                    },
                    Err(_) => return Ok(false),
                },
                _ => return Ok(false),
            };
            let expired;
            let stored = match &change {
                MetaChange::Replace(stored) => stored,
                MetaChange::Expire => {
                    let mut meta = head.meta().map_err(|e| {
                        Error::explain(
                            ErrorType::InternalError,
                            format!("{}: expire: the stored meta: {e}", store.name),
                        )
                    })?;
                    meta.expire_at(SystemTime::now());
                    expired = StoredMeta::new(&meta)?;
                    &expired
                }
            };
            let extra = encode_meta_ref(body);
            let spec = RecordSpec {
                kind: Kind::Meta,
                seq: 0,
                entry_id: head.fixed.entry_id,
                body_len: head.fixed.body_len,
                key,
                meta: RecordMeta::Stored(stored.as_bytes()),
                extra: &extra,
                data: &[],
                first_block: 0,
                block_size: store.layout.block_size,
            };
            if let Err(why) = crate::format::check_spec(&spec) {
                return Err(Error::explain(
                    ErrorType::Custom("TierRefused"),
                    format!("{}: update_meta: {why}", store.name),
                ));
            }
            let mut out = Vec::with_capacity(crate::format::record_len(&spec) as usize);
            encode_record(&spec, &mut out);
            let answer = self
                .log
                .run(store, out.len(), |reply| Job::Meta {
                    hash,
                    rec: out,
                    replaces: slot,
                    replaces_loc: here,
                    reply,
                })
                .await?;
            match answer {
                Applied::Done(_) => return Ok(true),
                Applied::Moved => continue,
            }
        }
        Ok(false)
    }
}

#[async_trait]
impl Storage for DiskStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        self.lookup_hit(key.to_compact(), None).await
    }

    async fn lookup_streaming_write(
        &'static self,
        key: &CacheKey,
        streaming_write_tag: Option<&[u8]>,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let id = match streaming_write_tag {
            None => None,
            Some(tag) => match U64WriteId::try_from(tag) {
                Ok(id) => Some(u64::from(id)),
                Err(_) => return Ok(None),
            },
        };
        self.lookup_hit(key.to_compact(), id).await
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        self.start_write(key, meta, true).await
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let (key, id) = tier_core::key::target_parts(target);
        let key = key.clone();
        Ok(match self.purge_entry(&key, id).await? {
            Some(id) => PurgeOutcome::Purged(Some(CacheEntryId::new(id))),
            None => PurgeOutcome::NotFound,
        })
    }

    async fn expire(
        &'static self,
        target: PurgeTarget<'_>,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let (key, id) = tier_core::key::target_parts(target);
        let key = key.clone();
        Ok(if self.rewrite_meta(&key, id, MetaChange::Expire).await? {
            PurgeOutcome::Expired
        } else {
            PurgeOutcome::NotFound
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let key = key.to_compact();
        let stored = StoredMeta::new(meta)?;
        self.rewrite_meta(&key, None, MetaChange::Replace(stored))
            .await
    }

    fn support_streaming_partial_write(&self) -> bool {
        true
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

#[async_trait]
impl Tier for DiskStorage {
    fn tier_name(&self) -> &str {
        &self.store.name
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::all();
        caps.max_object_bytes = Some(self.store.layout.max_object_bytes as usize);
        caps
    }

    async fn lookup_entry(
        &'static self,
        key: &CompactCacheKey,
        entry_id: Option<CacheEntryId>,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        self.lookup_hit(key.clone(), entry_id.map(CacheEntryId::get))
            .await
    }

    async fn get_private_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        self.start_write(key, meta, false).await
    }

    fn set_eviction_listener(&self, listener: Arc<dyn EvictionListener>) -> bool {
        *self.store.listener.write() = Some(listener);
        true
    }

    fn stats(&self) -> TierStats {
        let mut stats = self.store.counters.snapshot();
        stats.entries = self.store.index.len() as u64;
        stats.bytes = self.used_bytes();
        stats
    }

    /// The common counters, [`DiskStats`], and hit, miss and write
    /// latencies.
    fn report(&self) -> TierReport {
        let s = self.disk_stats();
        let d = &self.store.disk;
        TierReport::new(self.tier_name(), self.stats())
            .counter(
                "syncs",
                "fdatasyncs of segment data (one per commit group)",
                s.syncs,
            )
            .counter(
                "writer_waits",
                "Writes that waited for room in the writer's queue",
                s.writer_waits,
            )
            .counter(
                "writer_timeouts",
                "Writes that failed with TierBusy after write_timeout",
                s.writer_timeouts,
            )
            .counter(
                "reinserted",
                "Entries copied forward at eviction (hit since written)",
                s.reinserted,
            )
            .counter(
                "reads_nowait",
                "Hits read on the calling thread (page cache)",
                s.reads_nowait,
            )
            .counter("reads_pool", "Hits read on the blocking pool", s.reads_pool)
            .counter("corrupt", "Entries found corrupt and removed", s.corrupt)
            .gauge("segments", "Segment files", s.segments)
            .gauge(
                "index_bytes",
                "Heap bytes of the in-memory index",
                s.index_bytes,
            )
            .op_latencies(&d.latencies)
    }
}
