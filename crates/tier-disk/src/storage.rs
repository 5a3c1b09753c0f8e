//! [`DiskStorage`]: opening a cache directory, and the `Storage` and `Tier`
//! implementations.

use std::any::Any;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use pingora_cache::key::CompactCacheKey;
use pingora_cache::storage::streaming_write::U64WriteId;
use pingora_cache::storage::{
    HitHandler, MissHandler, PurgeOutcome, PurgeTarget, PurgeType, Storage,
};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheEntryId, CacheKey, CacheMeta};
use pingora_error::{Error, ErrorType, Result};
use tier_core::key::{entry_hash64, entry_relative_path};
use tier_core::{Capabilities, EvictedEntry, EvictionListener, StatsCounters, Tier, TierStats};

use crate::config::{DiskConfig, Durability};
use crate::entry_file::{header_meta, read_header, ReadError};
use crate::format::{encode_header, stored_body_len, FormatError};
use crate::fsio::{self, Blocking};
use crate::index::{Index, IndexEntry};
use crate::read::{read_run, DiskHitHandler, Layout};
use crate::scan;
use crate::write::{DiskMissHandler, Inflight};

/// A persistent, crash-safe, byte-bounded disk storage.
///
/// Open it once with [`DiskStorage::open`] (or [`DiskStorage::open_blocking`]
/// before the runtime starts), then keep it for the life of the process:
/// pingora's `Storage` methods take `&'static self`, so leak it
/// ([`DiskStorage::leak`]) or keep it in a `static`.
pub struct DiskStorage {
    config: DiskConfig,
    name: Arc<str>,
    tmp_dir: PathBuf,
    max_object_bytes: u64,
    index: Index,
    writing: Mutex<HashMap<u64, Vec<Arc<Inflight>>>>,
    next_id: AtomicU64,
    io: Blocking,
    faults: fsio::Faults,
    counters: StatsCounters,
    corrupt: AtomicU64,
    skipped_at_open: u64,
    listener: RwLock<Option<Arc<dyn EvictionListener>>>,
}

impl std::fmt::Debug for DiskStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStorage")
            .field("config", &self.config)
            .field("used", &self.index.used())
            .finish_non_exhaustive()
    }
}

/// What an eviction hands its evicted entry and open file to.
type OnEvict<'a> = dyn FnMut(&IndexEntry, File) + 'a;

impl DiskStorage {
    /// Open (or create) the cache in `config.dir()`, rebuilding the index from
    /// the entry files on the blocking pool.
    ///
    /// Leftover temp files are removed; corrupt entries are removed and
    /// counted; files of another format version are skipped and counted. The
    /// tier then evicts down to its capacity if it is over it.
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
        let dir = config.dir.clone();
        let open_error = |what: &str, e: io::Error| {
            Error::because(
                ErrorType::FileOpenError,
                format!(
                    "{}: cannot {what} cache directory {}",
                    config.name,
                    dir.display()
                ),
                e,
            )
        };
        fsio::create_dir_all(&dir).map_err(|e| open_error("create", e))?;
        std::fs::read_dir(&dir).map_err(|e| open_error("read", e))?;
        let tmp_dir = dir.join("tmp");
        // Temp files are writes a crash interrupted: never entries.
        if tmp_dir.exists() {
            std::fs::remove_dir_all(&tmp_dir)
                .map_err(|e| open_error("clean the temp dir of", e))?;
        }
        fsio::create_dir_all(&tmp_dir).map_err(|e| open_error("create the temp dir in", e))?;

        let found = scan::scan(&dir);
        let storage = DiskStorage {
            name: Arc::from(config.name.as_str()),
            max_object_bytes: config.effective_max_object_bytes(),
            tmp_dir,
            index: Index::default(),
            writing: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(found.max_id + 1),
            io: Blocking::new(config.io_concurrency),
            faults: fsio::Faults::new(config.fault_plan.clone()),
            counters: StatsCounters::new(),
            corrupt: AtomicU64::new(found.corrupt),
            skipped_at_open: found.skipped,
            listener: RwLock::new(None),
            config,
        };
        let mut max_seq = 0;
        for (slot, entry) in found.entries {
            max_seq = max_seq.max(entry.seq);
            storage.index.charge(entry.file_len);
            storage.counters.add_entry(entry.file_len);
            storage.index.shard(slot).insert(slot, entry);
        }
        storage.index.set_clock_after(max_seq);
        // A smaller capacity than last time: evict the coldest down to it.
        while storage.index.used() > storage.config.capacity_bytes {
            if !storage.evict_entry(None) {
                break;
            }
        }
        tracing::info!(
            tier = %storage.name,
            entries = storage.index.len(),
            bytes = storage.index.used(),
            corrupt_removed = found.corrupt,
            skipped = found.skipped,
            "disk tier opened"
        );
        Ok(storage)
    }

    /// Leak the storage for the `&'static` pingora needs.
    pub fn leak(self) -> &'static Self {
        Box::leak(Box::new(self))
    }

    /// The configuration this tier runs with.
    pub fn config(&self) -> &DiskConfig {
        &self.config
    }

    /// Bytes of entry files charged now, including writes in progress.
    pub fn used_bytes(&self) -> u64 {
        self.index.used()
    }

    /// Entries found corrupt (at open or on read) and removed.
    pub fn corrupt_entries(&self) -> u64 {
        self.corrupt.load(Ordering::Relaxed)
    }

    /// Files skipped at open because they were of another format version or
    /// not ours.
    pub fn skipped_at_open(&self) -> u64 {
        self.skipped_at_open
    }

    /// Save the eviction order, so a reopened cache evicts its coldest entries
    /// first rather than by file age. Call it at shutdown (and, if you like,
    /// periodically); it is an ordering hint, checked against the files on open.
    pub async fn save_order(&'static self) -> Result<()> {
        self.io
            .run(move || {
                let order = self.index.order_snapshot();
                scan::save_order(
                    self.config.dir(),
                    &self.tmp_dir,
                    &order,
                    self.config.durability,
                )
                .map_err(|e| self.io_error("save_order", None, "writing the order file", e))
            })
            .await
    }

    // ---- helpers for the write and read paths ----------------------------

    pub(crate) fn tier_label(&self) -> &str {
        &self.name
    }

    pub(crate) fn io(&self) -> &Blocking {
        &self.io
    }

    pub(crate) fn faults(&self) -> &fsio::Faults {
        &self.faults
    }

    pub(crate) fn index(&self) -> &Index {
        &self.index
    }

    pub(crate) fn counters(&self) -> &StatsCounters {
        &self.counters
    }

    pub(crate) fn max_object_bytes(&self) -> u64 {
        self.max_object_bytes
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn tmp_path(&self, id: u64) -> PathBuf {
        self.tmp_dir.join(format!("{id}.tmp"))
    }

    pub(crate) fn entry_path(&self, key: &CompactCacheKey) -> PathBuf {
        self.config.dir.join(entry_relative_path(key))
    }

    pub(crate) fn io_error(
        &self,
        op: &str,
        key: Option<&CompactCacheKey>,
        what: &str,
        e: io::Error,
    ) -> Box<Error> {
        self.counters.record_error();
        let etype = if op == "write_body" || op == "finish" {
            ErrorType::FileWriteError
        } else {
            ErrorType::FileReadError
        };
        tier_core::error::tier_error_because(etype, &self.name, op, key, what, e)
    }

    pub(crate) fn sync_file(&self, file: &File) -> io::Result<()> {
        match self.config.durability {
            Durability::None => Ok(()),
            Durability::Data | Durability::Full => {
                self.faults.check(fsio::FsOp::Sync)?;
                file.sync_data()
            }
        }
    }

    fn sync_dir_if_full(&self, dir: &Path) {
        if self.config.durability == Durability::Full {
            if let Err(e) = fsio::sync_dir(dir) {
                self.counters.record_error();
                tracing::warn!(tier = %self.name, dir = %dir.display(), error = %e, "directory fsync failed");
            }
        }
    }

    /// Charge `bytes`, evicting least recently used entries until they fit.
    /// Blocking: eviction removes files.
    pub(crate) fn reserve(&'static self, bytes: u64) -> Result<()> {
        loop {
            if self.index.try_charge(bytes, self.config.capacity_bytes) {
                return Ok(());
            }
            if !self.evict_one() {
                self.counters.record_rejection();
                return Err(Error::explain(
                    ErrorType::Custom("TierFull"),
                    format!(
                        "{}: cannot fit {bytes} more bytes in {}: the rest is held by writes in progress",
                        self.name, self.config.capacity_bytes
                    ),
                ));
            }
        }
    }

    /// Remove the least recently used entry, handing it to the listener if
    /// there is one; `false` when there is none. Blocking.
    fn evict_one(&'static self) -> bool {
        match self.listener.read().clone() {
            Some(listener) => self.evict_entry(Some(&mut |entry, file| {
                self.notify_evicted(listener.as_ref(), entry, file)
            })),
            None => self.evict_entry(None),
        }
    }

    /// Remove the least recently used entry; `false` when there is none.
    /// Blocking. `on_evict` gets the entry and its open file while the key's
    /// index shard is still locked, so no other operation on the key can
    /// find it gone first (the eviction listener's contract).
    fn evict_entry(&self, on_evict: Option<&mut OnEvict<'_>>) -> bool {
        let Some((mut shard, slot)) = self.index.lock_oldest() else {
            return false;
        };
        let Some(entry) = shard.remove(slot) else {
            return false;
        };
        let path = self.entry_path(&entry.key);
        let file = on_evict
            .is_some()
            .then(|| fsio::open_read(&path).ok())
            .flatten();
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(tier = %self.name, path = %path.display(), error = %e, "evicted file not removed");
            }
        }
        if let (Some(on_evict), Some(file)) = (on_evict, file) {
            on_evict(&entry, file);
        }
        drop(shard);
        self.index.release(entry.file_len);
        self.counters.remove_entry(entry.file_len);
        self.counters.record_eviction();
        true
    }

    fn notify_evicted(
        &'static self,
        listener: &dyn EvictionListener,
        entry: &IndexEntry,
        file: File,
    ) {
        let Ok(header) = read_header(&file) else {
            return;
        };
        let Ok(meta) = header_meta(&header) else {
            return;
        };
        listener.on_evict(EvictedEntry {
            key: entry.key.clone(),
            entry_id: Some(CacheEntryId::new(entry.id)),
            meta,
            body: Box::new(DiskHitHandler::complete(
                self,
                file,
                entry.key.clone(),
                &header,
                None,
            )),
        });
    }

    /// Start a write of `key`; a `listed` one is followed by lookups until it
    /// is published, an unlisted (private) one is seen only once published.
    async fn start_write(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        listed: bool,
    ) -> Result<MissHandler> {
        let compact = key.to_compact();
        let slot = entry_hash64(&compact);
        let (internal, header) = meta.serialize()?;
        let miss = DiskMissHandler::start(self, compact, slot, internal, header, listed).await?;
        Ok(Box::new(miss))
    }

    pub(crate) fn register_write(&self, slot: u64, inflight: Arc<Inflight>) {
        self.writing.lock().entry(slot).or_default().push(inflight);
    }

    pub(crate) fn unregister_write(&self, slot: u64, inflight: &Arc<Inflight>) {
        let mut writing = self.writing.lock();
        if let Some(writes) = writing.get_mut(&slot) {
            writes.retain(|w| !Arc::ptr_eq(w, inflight));
            if writes.is_empty() {
                writing.remove(&slot);
            }
        }
    }

    /// Rename a sealed temp file into place and index it. Blocking. The
    /// rename happens under the key's index lock, so the index and the file
    /// system always agree on which generation is stored.
    pub(crate) fn publish(&self, slot: u64, inflight: &Inflight, file_len: u64) -> Result<()> {
        let path = self.entry_path(&inflight.key);
        let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut shard = self.index.shard(slot);
        fsio::create_dir_all(&parent)
            .and_then(|_| self.faults.check(fsio::FsOp::Rename))
            .and_then(|_| std::fs::rename(&inflight.tmp_path, &path))
            .map_err(|e| self.io_error("finish", Some(&inflight.key), "publishing the entry", e))?;
        let seq = self.index.next_seq();
        let replaced = shard.insert(
            slot,
            IndexEntry {
                key: inflight.key.clone(),
                id: inflight.id,
                file_len,
                seq,
            },
        );
        drop(shard);
        self.counters.add_entry(file_len);
        if let Some(old) = replaced {
            self.index.release(old.file_len);
            self.counters.remove_entry(old.file_len);
        }
        self.sync_dir_if_full(&parent);
        Ok(())
    }

    /// Remove an entry whose bytes failed a check, if it is still the
    /// generation that failed; done when this returns.
    pub(crate) async fn discard_corrupt(&'static self, key: CompactCacheKey, id: u64) {
        self.corrupt.fetch_add(1, Ordering::Relaxed);
        self.counters.record_error();
        tracing::warn!(tier = %self.name, entry = %tier_core::key::entry_file_name(&key), id, "corrupt entry removed");
        let _ = self.io.run(move || self.remove_entry(&key, Some(id))).await;
    }

    /// Remove the entry for `key` (and `id`, if given) from the index and the
    /// disk. Blocking. `Ok(None)` when there is no such entry.
    fn remove_entry(&self, key: &CompactCacheKey, id: Option<u64>) -> Result<Option<IndexEntry>> {
        let slot = entry_hash64(key);
        let path = self.entry_path(key);
        let mut shard = self.index.shard(slot);
        match shard.map.get(&slot) {
            Some(e) if &e.key == key && id.is_none_or(|id| id == e.id) => {}
            _ => return Ok(None),
        }
        if let Err(e) = self
            .faults
            .check(fsio::FsOp::Remove)
            .and_then(|_| std::fs::remove_file(&path))
        {
            if e.kind() != io::ErrorKind::NotFound {
                return Err(self.io_error("purge", Some(key), "removing the entry file", e));
            }
        }
        let removed = shard.remove(slot);
        drop(shard);
        if let Some(removed) = &removed {
            self.index.release(removed.file_len);
            self.counters.remove_entry(removed.file_len);
        }
        if let Some(parent) = path.parent() {
            self.sync_dir_if_full(parent);
        }
        Ok(removed)
    }

    async fn find(
        &'static self,
        key: CompactCacheKey,
        id: Option<u64>,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let slot = entry_hash64(&key);
        // A write in progress wins, so a refreshed response streams at once.
        let following = self.writing.lock().get(&slot).and_then(|writes| {
            writes
                .iter()
                .rev()
                .find(|w| w.key == key && id.is_none_or(|id| id == w.id))
                .cloned()
        });
        if let Some(inflight) = following {
            let path = inflight.tmp_path.clone();
            // If the writer finished meanwhile, its temp file is gone: fall
            // through to the published entry.
            if let Ok(file) = self
                .io
                .run(move || {
                    fsio::open_read(&path)
                        .map_err(|e| Error::because(ErrorType::FileOpenError, "temp file", e))
                })
                .await
            {
                if let Ok(meta) = CacheMeta::deserialize(&inflight.internal, &inflight.header) {
                    self.counters.record_hit();
                    return Ok(Some((
                        meta,
                        Box::new(DiskHitHandler::following(self, file, &inflight)),
                    )));
                }
            }
        }
        let indexed = {
            let mut shard = self.index.shard(slot);
            let found = shard
                .map
                .get(&slot)
                .filter(|e| e.key == key && id.is_none_or(|id| id == e.id))
                .map(|e| e.id);
            if found.is_some() {
                let seq = self.index.next_seq();
                shard.touch(slot, seq);
            }
            found
        };
        let Some(indexed_id) = indexed else {
            self.counters.record_miss();
            return Ok(None);
        };
        let path = self.entry_path(&key);
        // One trip to the blocking pool opens the file, checks its header and
        // reads the first blocks: a small body is then served from memory.
        let opened = self
            .io
            .run(move || {
                Ok(fsio::open_read(&path)
                    .map_err(ReadError::from)
                    .and_then(|file| read_header(&file).map(|header| (file, header)))
                    .map(|(file, header)| {
                        let layout = Layout {
                            id: header.fixed.entry_id,
                            block_size: header.fixed.block_size as u64,
                            data_start: header.fixed.data_start(),
                        };
                        let verify = !self.faults.controls().skip_checksums;
                        let first = (header.fixed.body_len > 0)
                            .then(|| read_run(&file, layout, 0, header.fixed.body_len, verify).ok())
                            .flatten();
                        (file, header, first)
                    }))
            })
            .await?;
        let failed = match opened {
            Ok((file, header, first_blocks)) => {
                let right_entry =
                    header.key == key && id.is_none_or(|id| id == header.fixed.entry_id);
                match header_meta(&header) {
                    Ok(meta) if right_entry => {
                        self.counters.record_hit();
                        // A failed first read is not trusted here: the handler
                        // reads those blocks again and reports what it finds.
                        let hit = DiskHitHandler::complete(self, file, key, &header, first_blocks);
                        return Ok(Some((meta, Box::new(hit))));
                    }
                    Ok(_) => None,
                    Err(e) => Some(e),
                }
            }
            Err(e) => Some(e),
        };
        match failed {
            Some(ReadError::Format(FormatError::Corrupt(_)))
            | Some(ReadError::Format(FormatError::NotOurs))
            | Some(ReadError::Format(FormatError::OtherVersion(_))) => {
                self.discard_corrupt(key, indexed_id).await;
            }
            Some(ReadError::Io(e)) => {
                self.counters.record_error();
                tracing::warn!(tier = %self.name, error = %e, "entry unreadable; treated as a miss");
            }
            Some(ReadError::Missing) | None => {}
        }
        self.counters.record_miss();
        Ok(None)
    }

    /// Rewrite an entry's meta: a new file with the new header and the same
    /// body blocks (same id, so the block checksums still hold), renamed over
    /// the old one. Readers and a crash see the old file or the new one.
    fn rewrite_meta(
        &'static self,
        key: &CompactCacheKey,
        id: Option<u64>,
        change: MetaChange,
    ) -> Result<bool> {
        let slot = entry_hash64(key);
        let expected = {
            let shard = self.index.shard(slot);
            match shard.map.get(&slot) {
                Some(e) if &e.key == key && id.is_none_or(|id| id == e.id) => e.id,
                _ => return Ok(false),
            }
        };
        let path = self.entry_path(key);
        let old = match fsio::open_read(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(self.io_error("update_meta", Some(key), "opening the entry", e)),
        };
        let header = match read_header(&old) {
            Ok(h) if h.fixed.entry_id == expected && &h.key == key => h,
            Ok(_) => return Ok(false),
            Err(_) => return Ok(false),
        };
        let (internal, resp_header) = match change {
            MetaChange::Replace(internal, header) => (internal, header),
            MetaChange::Expire => {
                let mut meta = header_meta(&header).map_err(|e| {
                    Error::explain(
                        ErrorType::InternalError,
                        format!("{}: expire: {e}", self.name),
                    )
                })?;
                meta.expire_at(SystemTime::now());
                meta.serialize()?
            }
        };
        let head = encode_header(
            key,
            expected,
            header.fixed.block_size,
            header.fixed.body_len,
            &internal,
            &resp_header,
        );
        let body_bytes = stored_body_len(header.fixed.body_len, header.fixed.block_size);
        let new_len = head.len() as u64 + body_bytes;
        self.reserve(new_len)?;
        let tmp = self.tmp_path(self.next_id());
        let copied = (|| -> io::Result<()> {
            self.faults.check(fsio::FsOp::Create)?;
            let mut out = fsio::create_new(&tmp)?;
            self.faults
                .write(&head, |b| io::Write::write_all(&mut out, b))?;
            let mut src = io::Read::take(&old, 0);
            std::io::Seek::seek(&mut &old, io::SeekFrom::Start(header.fixed.data_start()))?;
            src.set_limit(body_bytes);
            self.faults.check(fsio::FsOp::Write)?;
            let n = io::copy(&mut src, &mut out)?;
            if n != body_bytes {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "entry body cut short",
                ));
            }
            self.sync_file(&out)
        })();
        let skip_cleanup = self.faults.controls().skip_temp_cleanup;
        let cleanup = |e: Box<Error>| {
            if !skip_cleanup {
                let _ = std::fs::remove_file(&tmp);
            }
            self.index.release(new_len);
            Err(e)
        };
        if let Err(e) = copied {
            return cleanup(self.io_error("update_meta", Some(key), "copying the entry", e));
        }
        let mut shard = self.index.shard(slot);
        let still_there = shard.map.get(&slot).is_some_and(|e| e.id == expected);
        if !still_there {
            drop(shard);
            let _ = std::fs::remove_file(&tmp);
            self.index.release(new_len);
            return Ok(false);
        }
        if let Err(e) = self
            .faults
            .check(fsio::FsOp::Rename)
            .and_then(|_| std::fs::rename(&tmp, &path))
        {
            drop(shard);
            return cleanup(self.io_error("update_meta", Some(key), "publishing the new meta", e));
        }
        let seq = self.index.next_seq();
        let old_entry = shard.insert(
            slot,
            IndexEntry {
                key: key.clone(),
                id: expected,
                file_len: new_len,
                seq,
            },
        );
        drop(shard);
        self.counters.add_entry(new_len);
        if let Some(old_entry) = old_entry {
            self.index.release(old_entry.file_len);
            self.counters.remove_entry(old_entry.file_len);
        }
        if let Some(parent) = path.parent() {
            self.sync_dir_if_full(parent);
        }
        Ok(true)
    }
}

/// What `rewrite_meta` writes.
enum MetaChange {
    /// The serialized internal meta and header to store.
    Replace(Vec<u8>, Vec<u8>),
    /// The stored meta, marked stale now.
    Expire,
}

#[async_trait]
impl Storage for DiskStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        self.find(key.to_compact(), None).await
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
        self.find(key.to_compact(), id).await
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
        let removed = self.io.run(move || self.remove_entry(&key, id)).await?;
        Ok(match removed {
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
        let key = key.clone();
        let changed = self
            .io
            .run(move || self.rewrite_meta(&key, id, MetaChange::Expire))
            .await?;
        Ok(if changed {
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
        let (internal, header) = meta.serialize()?;
        self.io
            .run(move || self.rewrite_meta(&key, None, MetaChange::Replace(internal, header)))
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
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::all();
        caps.max_object_bytes = Some(self.max_object_bytes as usize);
        caps
    }

    async fn lookup_entry(
        &'static self,
        key: &CompactCacheKey,
        entry_id: Option<CacheEntryId>,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        self.find(key.clone(), entry_id.map(CacheEntryId::get))
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
        *self.listener.write() = Some(listener);
        true
    }

    fn stats(&self) -> TierStats {
        let mut stats = self.counters.snapshot();
        stats.bytes = self.index.used();
        stats
    }
}
