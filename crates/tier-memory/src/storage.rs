//! [`MemoryStorage`]: the `Storage` and `Tier` implementations.

use std::any::Any;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::RwLock;
use pingora_cache::eviction::CacheEntryId;
use pingora_cache::key::CompactCacheKey;
use pingora_cache::storage::streaming_write::U64WriteId;
use pingora_cache::storage::{
    HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget, PurgeType,
    Storage,
};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheKey, CacheMeta};
use pingora_error::{Error, ErrorType, Result};
use tier_core::{Capabilities, EvictedEntry, EvictionListener, StatsCounters, Tier, TierStats};

use crate::config::MemoryConfig;
use crate::entry::{
    Body, Entry, KeyRef, OwnedKeyHashes, StoredKey, StoredMeta, CHUNK_OVERHEAD, ENTRY_OVERHEAD,
    MAX_CHARGE,
};
use crate::inflight::Inflight;
use crate::shard::{Queues, Shard};
use crate::striped::StripedCounter;

/// Bodies of at most this many bytes written in several chunks are joined
/// into one buffer when published, so their hits are a single read.
const JOIN_CHUNKS_UP_TO: usize = 1 << 20;

/// A byte-bounded memory storage with S3-FIFO eviction: entries in sharded
/// maps, one eviction order over all of them.
///
/// See the [crate docs](crate) for an example. Like every pingora storage it
/// is used through `&'static` references: keep it in a `static` (with
/// `LazyLock`) or leak it with `Box::leak`.
pub struct MemoryStorage {
    config: MemoryConfig,
    name: Arc<str>,
    max_object_bytes: usize,
    pub(crate) shards: Box<[Shard]>,
    shard_shift: u32,
    pub(crate) queues: Queues,
    /// Bytes charged now: published entries, writes in progress, and the
    /// parsed headers kept for hot entries.
    pub(crate) used: AtomicUsize,
    /// Of `used`, the parsed headers of hot entries.
    pub(crate) hot_used: AtomicUsize,
    /// How many bytes of parsed headers may be kept.
    hot_budget: usize,
    next_id: AtomicU64,
    listener: RwLock<Option<Arc<dyn EvictionListener>>>,
    counters: StatsCounters,
    hits: StripedCounter,
    misses: StripedCounter,
}

impl std::fmt::Debug for MemoryStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStorage")
            .field("config", &self.config)
            .field("used", &self.used.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl MemoryStorage {
    /// A new, empty tier.
    pub fn new(config: MemoryConfig) -> Self {
        let n_shards = config.effective_shards();
        MemoryStorage {
            name: Arc::from(config.name.as_str()),
            max_object_bytes: config.effective_max_object_bytes(),
            shards: (0..n_shards).map(|_| Shard::default()).collect(),
            shard_shift: 64 - n_shards.trailing_zeros(),
            queues: Queues::default(),
            used: AtomicUsize::new(0),
            hot_used: AtomicUsize::new(0),
            hot_budget: config.capacity_bytes / 100 * config.hot_header_percent,
            next_id: AtomicU64::new(1),
            listener: RwLock::new(None),
            counters: StatsCounters::new(),
            hits: StripedCounter::default(),
            misses: StripedCounter::default(),
            config,
        }
    }

    /// The configuration this tier runs with.
    pub fn config(&self) -> &MemoryConfig {
        &self.config
    }

    /// Bytes charged against the capacity now, including writes in progress.
    pub fn used_bytes(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn shard_of(&self, hash: u64) -> usize {
        if self.shard_shift >= 64 {
            0
        } else {
            (hash >> self.shard_shift) as usize
        }
    }

    fn shard(&self, hash: u64) -> &Shard {
        &self.shards[self.shard_of(hash)]
    }

    fn small_target(&self) -> usize {
        self.config.capacity_bytes / 100 * self.config.small_queue_percent
    }

    /// Charge `bytes` against the capacity, evicting until they fit. Fails
    /// only when nothing is left to evict (the rest is in writes in progress).
    fn reserve(&self, bytes: usize) -> Result<()> {
        let capacity = self.config.capacity_bytes;
        loop {
            let used = self.used.load(Ordering::Relaxed);
            if used + bytes <= capacity {
                if self
                    .used
                    .compare_exchange_weak(used, used + bytes, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    return Ok(());
                }
                continue;
            }
            if !self.evict_one() {
                return Err(Error::explain(
                    ErrorType::Custom("TierFull"),
                    format!(
                        "{}: cannot fit {bytes} more bytes in {capacity}: the rest is held by writes in progress",
                        self.name
                    ),
                ));
            }
        }
    }

    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Give back what a removed or replaced entry was charged, and the
    /// parsed header kept for it (`hot`, 0 if none).
    fn release_entry(&self, entry: &Entry, hot: usize) {
        self.release(entry.charge() + hot);
        self.hot_used.fetch_sub(hot, Ordering::Relaxed);
        self.counters.remove_entry(entry.charge() as u64);
    }

    /// Whether the share for parsed headers has room for `entry`'s: checked
    /// on the hit path before anything else is done for it, so a full share
    /// costs a hot entry's hits two loads.
    fn hot_header_fits(&self, entry: &Entry) -> bool {
        self.hot_used
            .load(Ordering::Relaxed)
            .saturating_add(entry.meta.parsed_header_charge())
            <= self.hot_budget
    }

    /// Keep a parsed copy of a hot entry's header, if the share of the
    /// capacity for them has room: its later hits clone it instead of
    /// building a header from the entry's buffer. Called after a hit, with
    /// no lock held.
    fn keep_hot_header(&self, hash: u64, entry: &Arc<Entry>, meta: &CacheMeta) {
        let header = meta.response_header();
        let charge = entry.meta.parsed_header_charge();
        if !self.hot_header_fits(entry) || self.reserve(charge).is_err() {
            return;
        }
        let header = header.clone();
        #[cfg(test)]
        crate::tests::pause_before_keeping_a_header();
        let mut maps = self.shard(hash).maps.write();
        if maps.keep_hot_header(hash, entry, header, charge) {
            // Counted under the lock: whoever forgets this header (under the
            // same lock, later) subtracts it after this add, never before.
            self.hot_used.fetch_add(charge, Ordering::Relaxed);
        } else {
            drop(maps);
            self.release(charge);
        }
    }

    /// Evict one entry by the tier's one S3-FIFO order; `false` when there
    /// is none to evict.
    fn evict_one(&self) -> bool {
        let listener = self.listener.read().clone();
        let mut notify = |entry: &Arc<Entry>| {
            if let Some(listener) = &listener {
                self.notify_evicted(listener.as_ref(), entry);
            }
        };
        let evicted = self.queues.evict_one(
            |hash| self.shard(hash),
            self.small_target(),
            256,
            &mut notify,
        );
        let Some((entry, hot)) = evicted else {
            return false;
        };
        self.release_entry(&entry, hot);
        self.counters.record_eviction();
        true
    }

    /// Hand an evicted entry to the listener. This runs under the shard's
    /// locks (see [`EvictionListener`]'s contract), so it only builds the
    /// entry's meta and hit handler, which take no lock.
    fn notify_evicted(&self, listener: &dyn EvictionListener, entry: &Arc<Entry>) {
        match entry.meta.to_cache_meta() {
            Ok(meta) => listener.on_evict(EvictedEntry {
                key: entry.key.to_compact(),
                entry_id: Some(CacheEntryId::new(entry.id)),
                meta,
                body: Box::new(entry.hit_handler()),
            }),
            Err(_) => self.counters.record_error(),
        }
    }

    /// Start a write; a `listed` one is followed by lookups until it is
    /// published, an unlisted (private) one is seen only once published.
    fn start_write(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        listed: bool,
    ) -> Result<MissHandler> {
        let compact = key.to_compact();
        let hash = KeyRef::from_compact(&compact).hash64();
        let home = self.shard_of(hash);
        let stored_meta = StoredMeta::new(meta)?;
        let stored_key = StoredKey::new(&compact);
        // Every entry has at least one chunk slot, even with an empty body.
        let fixed = ENTRY_OVERHEAD + stored_key.charge() + stored_meta.charge() + CHUNK_OVERHEAD;
        if let Err(e) = self.reserve(fixed) {
            self.counters.record_rejection();
            return Err(e);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let inflight = Arc::new(Inflight::new(
            id,
            stored_key,
            stored_meta,
            self.name.clone(),
        ));
        if listed {
            self.shards[home]
                .maps
                .write()
                .writing
                .entry(hash)
                .or_default()
                .push(inflight.clone());
        }
        Ok(Box::new(MemoryMissHandler {
            storage: self,
            hash,
            home,
            id,
            tag: U64WriteId::from(id),
            inflight,
            reserved: fixed,
            body_len: 0,
            n_chunks: 0,
            state: WriteState::Open,
        }))
    }

    fn find(&self, key: KeyRef<'_>, id: Option<u64>) -> Result<Option<(CacheMeta, HitHandler)>> {
        let hash = key.hash64();
        let shard = &self.shards[self.shard_of(hash)];
        let maps = shard.maps.read();
        let complete = maps
            .complete
            .get(&hash)
            .filter(|entry| entry.matches(&key) && id.is_none_or(|id| id == entry.id));
        // A write in progress of this key that is newer than the published
        // entry wins, so a refreshed response becomes visible as soon as it
        // starts streaming; an older one (a write overtaken by a newer one
        // that finished first) never hides what was published after it.
        if let Some(writes) = maps.writing.get(&hash) {
            let newest = writes
                .iter()
                .rev()
                .find(|w| {
                    w.matches(&key)
                        && id.is_none_or(|id| id == w.id)
                        && complete.is_none_or(|entry| w.id > entry.id)
                })
                .cloned();
            if let Some(write) = newest {
                drop(maps);
                let meta = write.meta.to_cache_meta()?;
                self.hits.incr();
                return Ok(Some((meta, Box::new(write.reader()))));
            }
        }
        // Build the hit under the read lock instead of cloning the entry's
        // Arc: for a popular entry, every clone and drop is a write to a
        // cache line that all cores share.
        // An entry read three times since it was queued is hot: its
        // header is kept parsed (see `keep_hot_header`).
        let found = complete.map(|entry| {
            let hot = entry.freq.load(Ordering::Relaxed) >= 3;
            entry.touch();
            let (meta, keep) = match maps.hot_header(hash, entry.id) {
                Some(header) => (entry.meta.to_cache_meta_with(header.clone()), false),
                None => (
                    entry.meta.to_cache_meta(),
                    hot && self.hot_header_fits(entry),
                ),
            };
            // Only an entry about to keep a header is cloned (rarely: once
            // as it turns hot), so the header can be checked to be its own.
            (meta, keep.then(|| entry.clone()), entry.hit_handler())
        });
        drop(maps);
        match found {
            Some((meta, keep, hit)) => {
                let meta = meta?;
                if let Some(entry) = keep {
                    self.keep_hot_header(hash, &entry, &meta);
                }
                self.hits.incr();
                Ok(Some((meta, Box::new(hit))))
            }
            None => {
                self.misses.incr();
                Ok(None)
            }
        }
    }

    /// Remove the complete entry the target names.
    fn remove_target(&self, target: PurgeTarget<'_>) -> Option<Arc<Entry>> {
        let (key, id) = tier_core::key::target_parts(target);
        let key_ref = KeyRef::from_compact(key);
        let hash = key_ref.hash64();
        let (removed, hot) = self.shard(hash).remove_if(hash, |entry| {
            entry.matches(&key_ref) && id.is_none_or(|id| id == entry.id)
        })?;
        self.queues.mark_stale();
        self.release_entry(&removed, hot);
        Some(removed)
    }

    /// Replace the meta of the entry under `key` (and `id`, if given).
    /// Returns whether an entry was found and changed.
    fn replace_meta(&self, key: KeyRef<'_>, id: Option<u64>, meta: StoredMeta) -> bool {
        let hash = key.hash64();
        let home = self.shard_of(hash);
        let shard = &self.shards[home];
        let (old_charge, old_meta_charge) = {
            let maps = shard.maps.read();
            match maps.complete.get(&hash) {
                Some(entry) if entry.matches(&key) && id.is_none_or(|id| id == entry.id) => {
                    (entry.charge(), entry.meta.charge())
                }
                _ => return false,
            }
        };
        let new_charge = old_charge - old_meta_charge + meta.charge();
        // Charge a growth before making it, so the bound holds throughout.
        let grow = new_charge.saturating_sub(old_charge);
        if grow > 0 && self.reserve(grow).is_err() {
            return false;
        }
        let replaced = shard.replace_if(
            hash,
            |entry| entry.matches(&key) && id.is_none_or(|id| id == entry.id),
            |entry| entry.with_meta(meta),
        );
        match replaced {
            Some(((old, hot), new)) => {
                self.release(hot);
                self.hot_used.fetch_sub(hot, Ordering::Relaxed);
                // Settle the difference between what was reserved and what changed.
                let reserved_total = old.charge() + grow;
                if reserved_total > new.charge() {
                    self.release(reserved_total - new.charge());
                } else if new.charge() > reserved_total {
                    self.used
                        .fetch_add(new.charge() - reserved_total, Ordering::AcqRel);
                }
                self.counters.remove_entry(old.charge() as u64);
                self.counters.add_entry(new.charge() as u64);
                true
            }
            None => {
                self.release(grow);
                false
            }
        }
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let hashes = OwnedKeyHashes::of(key);
        self.find(hashes.as_ref(), None)
    }

    async fn lookup_streaming_write(
        &'static self,
        key: &CacheKey,
        streaming_write_tag: Option<&[u8]>,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let hashes = OwnedKeyHashes::of(key);
        let id = match streaming_write_tag {
            None => None,
            Some(tag) => match U64WriteId::try_from(tag) {
                Ok(id) => Some(u64::from(id)),
                // A tag this tier did not make names no write of ours.
                Err(_) => return Ok(None),
            },
        };
        self.find(hashes.as_ref(), id)
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        self.start_write(key, meta, true)
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        Ok(match self.remove_target(target) {
            Some(entry) => PurgeOutcome::Purged(Some(CacheEntryId::new(entry.id))),
            None => PurgeOutcome::NotFound,
        })
    }

    async fn expire(
        &'static self,
        target: PurgeTarget<'_>,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let (key, id) = tier_core::key::target_parts(target);
        let key_ref = KeyRef::from_compact(key);
        let hash = key_ref.hash64();
        let current = {
            let maps = self.shards[self.shard_of(hash)].maps.read();
            maps.complete
                .get(&hash)
                .filter(|entry| entry.matches(&key_ref) && id.is_none_or(|id| id == entry.id))
                .cloned()
        };
        let Some(entry) = current else {
            return Ok(PurgeOutcome::NotFound);
        };
        let mut meta = entry.meta.to_cache_meta()?;
        meta.expire_at(SystemTime::now());
        let stored = StoredMeta::new(&meta)?;
        // Only this generation: a write that replaced it meanwhile is fresh.
        Ok(if self.replace_meta(key_ref, Some(entry.id), stored) {
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
        let hashes = OwnedKeyHashes::of(key);
        let stored = StoredMeta::new(meta)?;
        Ok(self.replace_meta(hashes.as_ref(), None, stored))
    }

    fn support_streaming_partial_write(&self) -> bool {
        true
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

#[async_trait]
impl Tier for MemoryStorage {
    fn tier_name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::all();
        caps.max_object_bytes = Some(self.max_object_bytes);
        caps
    }

    async fn lookup_entry(
        &'static self,
        key: &CompactCacheKey,
        entry_id: Option<CacheEntryId>,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        self.find(KeyRef::from_compact(key), entry_id.map(CacheEntryId::get))
    }

    async fn get_private_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        self.start_write(key, meta, false)
    }

    fn set_eviction_listener(&self, listener: Arc<dyn EvictionListener>) -> bool {
        *self.listener.write() = Some(listener);
        true
    }

    fn stats(&self) -> TierStats {
        let mut stats = self.counters.snapshot();
        stats.hits = self.hits.sum();
        stats.misses = self.misses.sum();
        stats.bytes = self.used_bytes() as u64;
        stats
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteState {
    Open,
    Failed,
    Finished,
}

/// Writes one entry: reserves its bytes as they arrive, lets readers follow,
/// and publishes it on `finish`.
struct MemoryMissHandler {
    storage: &'static MemoryStorage,
    hash: u64,
    home: usize,
    id: u64,
    tag: U64WriteId,
    inflight: Arc<Inflight>,
    /// Bytes charged to the tier for this write so far.
    reserved: usize,
    body_len: usize,
    n_chunks: usize,
    state: WriteState,
}

impl MemoryMissHandler {
    /// Stop the write: readers fail, the write leaves the shard, its bytes go back.
    fn abandon(&mut self) {
        self.inflight.abort();
        self.detach();
        self.storage.release(std::mem::take(&mut self.reserved));
        self.state = WriteState::Failed;
    }

    /// Remove this write from the shard's writes in progress.
    fn detach(&self) {
        let shard = &self.storage.shards[self.home];
        let mut maps = shard.maps.write();
        if let Some(writes) = maps.writing.get_mut(&self.hash) {
            writes.retain(|w| !Arc::ptr_eq(w, &self.inflight));
            if writes.is_empty() {
                maps.writing.remove(&self.hash);
            }
        }
    }

    fn closed_error(&self) -> Box<Error> {
        Error::explain(
            ErrorType::InternalError,
            format!(
                "{}: this write already failed or finished",
                self.storage.name
            ),
        )
    }
}

#[async_trait]
impl HandleMiss for MemoryMissHandler {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        if self.state != WriteState::Open {
            return Err(self.closed_error());
        }
        if data.is_empty() {
            return Ok(());
        }
        let new_len = self.body_len + data.len();
        if new_len > self.storage.max_object_bytes {
            self.abandon();
            self.storage.counters.record_rejection();
            return Err(tier_core::error::object_too_large(
                &self.storage.name,
                self.storage.max_object_bytes,
                new_len,
            ));
        }
        let charge = data.len() + if self.n_chunks > 0 { CHUNK_OVERHEAD } else { 0 };
        if let Err(e) = self.storage.reserve(charge) {
            self.abandon();
            self.storage.counters.record_rejection();
            return Err(e);
        }
        self.reserved += charge;
        self.body_len = new_len;
        self.n_chunks += 1;
        // Copy: the caller's buffer may be a slice of a much larger one, which
        // would otherwise stay alive uncounted.
        self.inflight.push(Bytes::copy_from_slice(&data));
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        if self.state != WriteState::Open {
            return Err(self.closed_error());
        }
        let chunks = self.inflight.complete();
        let body = if chunks.len() == 1 {
            Body::One(chunks[0].clone())
        } else if chunks.is_empty() {
            Body::One(Bytes::new())
        } else if self.body_len <= JOIN_CHUNKS_UP_TO {
            let mut joined = Vec::with_capacity(self.body_len);
            for chunk in &chunks {
                joined.extend_from_slice(chunk);
            }
            Body::One(Bytes::from(joined))
        } else {
            Body::Chunks(chunks.into())
        };
        let meta_charge = self.inflight.meta.charge();
        let charge = ENTRY_OVERHEAD
            + self.inflight.key.charge()
            + meta_charge
            + self.body_len
            + body.n_chunks() * CHUNK_OVERHEAD;
        let Some(entry) = Entry::new(
            self.inflight.key.clone(),
            self.id,
            self.inflight.meta.clone(),
            body,
            charge,
        ) else {
            self.abandon();
            self.storage.counters.record_rejection();
            return Err(tier_core::error::object_too_large(
                &self.storage.name,
                MAX_CHARGE,
                charge,
            ));
        };
        // Joining chunks only shrinks the charge: give the difference back.
        if charge > self.reserved {
            let more = charge - self.reserved;
            if let Err(e) = self.storage.reserve(more) {
                self.abandon();
                return Err(e);
            }
            self.reserved += more;
        }
        self.storage.release(self.reserved - charge);
        self.reserved = 0;
        let entry = Arc::new(entry);
        self.detach();
        self.state = WriteState::Finished;
        let storage = self.storage;
        let shard = &storage.shards[self.home];
        let replaced = storage.queues.publish(shard, self.hash, entry);
        storage.counters.add_entry(charge as u64);
        storage.counters.record_insert();
        if let Some((old, hot)) = replaced {
            storage.release_entry(&old, hot);
        }
        storage.queues.compact_if_stale(
            || storage.counters.snapshot().entries as usize,
            |hash| storage.shard(hash),
        );
        Ok(MissFinishType::Created(charge))
    }

    fn streaming_write_tag(&self) -> Option<&[u8]> {
        Some(self.tag.as_bytes())
    }

    fn entry_id(&self) -> Option<CacheEntryId> {
        Some(CacheEntryId::new(self.id))
    }
}

impl Drop for MemoryMissHandler {
    fn drop(&mut self) {
        if self.state == WriteState::Open {
            self.abandon();
        }
    }
}
