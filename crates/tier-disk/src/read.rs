//! [`DiskHitHandler`]: serves a body from its records, every block checked
//! before its bytes are handed out.
//!
//! A lookup reads the whole entry record in one `pread` (its length is in
//! the index), tried first with `RWF_NOWAIT` on the calling thread: a hit
//! the page cache can answer pays no thread hop; one that would block goes
//! to the blocking pool. A body longer than a fragment reads its fragments
//! a few blocks at a time, the same way.

use std::any::Any;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_cache::key::CompactCacheKey;
use pingora_cache::storage::{HandleHit, Storage};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheEntryId, CacheKey, CacheMeta};
use pingora_error::{Error, ErrorType, Result};
use tier_core::EvictedEntry;
use tokio::sync::watch;

use crate::format::{
    check_blocks, check_record_data, decode_frags, decode_head_in, decode_meta_ref, key_len,
    loc_parts, stored_len, FormatError, FragRef, Head, Kind, CRC_LEN, FIXED_LEN,
};
use crate::index::Slot;
use crate::inflight::{At, Inflight, Progress};
use crate::log::WeakLog;
use crate::segment::Segment;
use crate::store::Store;

/// Blocks of a fragment read at once, at most, per reader.
const READ_AHEAD_BLOCKS: u64 = 4;

/// Read `len` bytes at `offset` of `seg`: on this thread if the page cache
/// has them, else on the blocking pool.
pub(crate) async fn read_bytes(
    store: &Store,
    seg: &Arc<Segment>,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>> {
    if let Some(bytes) = seg.read_cached(offset, len) {
        store.disk.reads_nowait.fetch_add(1, Ordering::Relaxed);
        return Ok(bytes);
    }
    store.disk.reads_pool.fetch_add(1, Ordering::Relaxed);
    let seg = seg.clone();
    store
        .io
        .run(move || {
            seg.read(offset, len)
                .map_err(|e| Error::because(ErrorType::FileReadError, "reading a segment", e))
        })
        .await
}

/// Checked blocks held in memory, checksums in place: an entry record's own
/// data, or a run of blocks read from a fragment. Each block is handed out
/// as a slice.
#[derive(Debug, Clone)]
struct Tail {
    /// Body offset of the first byte.
    start: u64,
    /// Body bytes held.
    len: u64,
    raw: Bytes,
    blocks: Vec<Range<usize>>,
}

impl Tail {
    fn new(
        raw: Bytes,
        head: &Head,
        block: usize,
        verify: bool,
    ) -> std::result::Result<Tail, String> {
        let start = head.fixed.data_start() as usize;
        let end = head.fixed.record_len(block) as usize;
        let data = raw
            .get(start..end)
            .ok_or_else(|| "the record is cut short".to_string())?;
        let first = (head.fixed.body_len - head.fixed.data_len) / block as u64;
        let blocks = check_record_data(data, &head.fixed, block, first, verify)?
            .into_iter()
            .map(|r| r.start + start..r.end + start)
            .collect();
        Ok(Tail {
            start: head.fixed.body_len - head.fixed.data_len,
            len: head.fixed.data_len,
            raw,
            blocks,
        })
    }

    /// Whether body offset `pos` is in these blocks.
    fn covers(&self, pos: u64) -> bool {
        pos >= self.start && pos < self.start + self.len
    }

    /// Bytes from `pos` (in this tail) to the end of its block or `end`.
    fn slice(&self, pos: u64, end: u64, block: u64) -> Bytes {
        let rel = pos - self.start;
        let r = &self.blocks[(rel / block) as usize];
        let from = r.start + (rel % block) as usize;
        let to = r.end.min(from + (end - pos) as usize);
        self.raw.slice(from..to)
    }
}

/// Where a hit's body comes from.
#[derive(Debug)]
enum Source {
    /// A published entry: its fragments, then its record's own blocks.
    Complete {
        body_len: u64,
        frags: Vec<(FragRef, Arc<Segment>)>,
        tail: Tail,
        slot: Option<Slot>,
    },
    /// A write in progress.
    Following {
        inflight: Arc<Inflight>,
        progress: watch::Receiver<Progress>,
    },
}

/// Serves one body. Memory held: the entry record's own blocks (at most a
/// fragment) and a few blocks of a fragment, whatever the body size.
#[derive(Debug)]
pub struct DiskHitHandler {
    store: Arc<Store>,
    /// To remove the entry if its bytes fail a check.
    log: WeakLog,
    key: CompactCacheKey,
    hash: u64,
    id: u64,
    block: u64,
    fragment_bytes: u64,
    source: Source,
    pos: u64,
    end: Option<u64>,
    run: Option<Tail>,
    weight: usize,
}

/// Why a lookup found no usable entry.
pub(crate) enum Unusable {
    /// Not the key asked for (or not the id): a plain miss.
    Other,
    /// The record's bytes are bad, or its body is gone: remove the entry.
    Bad(String),
}

impl From<FormatError> for Unusable {
    fn from(e: FormatError) -> Self {
        Unusable::Bad(e.to_string())
    }
}

/// Decode a record read for a lookup, reading the rest if the first read
/// was short. The head's meta is a slice of the record's bytes.
pub(crate) async fn read_record(
    store: &Store,
    seg: &Arc<Segment>,
    slot: Slot,
) -> Result<std::result::Result<(Bytes, Head), Unusable>> {
    let first_len = slot.read_len().unwrap_or(64 << 10) as usize;
    let mut rec = read_bytes(store, seg, slot.offset(), first_len).await?;
    let fixed = match crate::format::decode_fixed(&rec) {
        Ok(f) => f,
        Err(e) => return Ok(Err(e.into())),
    };
    let len = fixed.record_len(seg.block_size) as usize;
    if rec.len() < len {
        rec = read_bytes(store, seg, slot.offset(), len).await?;
    }
    if rec.len() < len {
        return Ok(Err(Unusable::Bad("the record is cut short".into())));
    }
    rec.truncate(len);
    let rec = Bytes::from(rec);
    Ok(decode_head_in(&rec)
        .map(|head| (rec, head))
        .map_err(Unusable::from))
}

/// Find `key` (with entry id `id`, if given): a write in progress first,
/// then the index.
pub(crate) async fn find(
    store: &Arc<Store>,
    log: &WeakLog,
    key: CompactCacheKey,
    id: Option<u64>,
) -> Result<Option<(CacheMeta, DiskHitHandler)>> {
    let hash = crate::format::key_hash(&key);
    if let Some(inflight) = store.following(hash, &key, id) {
        if let Ok(meta) = inflight.meta.to_cache_meta() {
            store.counters.record_hit();
            return Ok(Some((
                meta,
                DiskHitHandler::following(store.clone(), log, hash, inflight),
            )));
        }
    }
    let Some(slot) = store.index.touch(hash) else {
        store.counters.record_miss();
        return Ok(None);
    };
    let found = lookup_slot(store, log, &key, hash, id, slot).await;
    match found {
        Ok(Ok(hit)) => {
            store.counters.record_hit();
            Ok(Some(hit))
        }
        Ok(Err(Unusable::Other)) => {
            store.counters.record_miss();
            Ok(None)
        }
        Ok(Err(Unusable::Bad(why))) => {
            discard(store, log, &key, hash, slot, &why).await;
            store.counters.record_miss();
            Ok(None)
        }
        Err(e) => {
            store.counters.record_error();
            store.counters.record_miss();
            tracing::warn!(tier = %store.name, entry = %tier_core::key::entry_file_name(&key), error = %e, "entry unreadable; treated as a miss");
            Ok(None)
        }
    }
}

async fn lookup_slot(
    store: &Arc<Store>,
    log: &WeakLog,
    key: &CompactCacheKey,
    hash: u64,
    id: Option<u64>,
    slot: Slot,
) -> Result<std::result::Result<(CacheMeta, DiskHitHandler), Unusable>> {
    let Some(seg) = store.segment(slot) else {
        return Ok(Err(Unusable::Bad("its segment was evicted".into())));
    };
    let (rec, head) = match read_record(store, &seg, slot).await? {
        Ok(r) => r,
        Err(u) => return Ok(Err(u)),
    };
    if &head.key != key {
        return Ok(Err(Unusable::Other));
    }
    if id.is_some_and(|id| id != head.fixed.entry_id) {
        return Ok(Err(Unusable::Other));
    }
    let meta = match head.meta() {
        Ok(m) => m,
        Err(e) => return Ok(Err(e.into())),
    };
    let weight = rec.len();
    let (body_seg, rec, body_head) = match head.fixed.kind {
        Kind::Entry => (seg, rec, head),
        Kind::Meta => {
            let r = match decode_meta_ref(head.extra()) {
                Ok(r) => r,
                Err(e) => return Ok(Err(e.into())),
            };
            let (s, o) = loc_parts(r.body_at);
            let Some(body_seg) = store.segments.read().by_id(s).cloned() else {
                return Ok(Err(Unusable::Bad(
                    "the segment of its body was evicted".into(),
                )));
            };
            let body_slot = Slot::new(s, o, r.body_record_len as u64);
            let (body_rec, body_head) = match read_record(store, &body_seg, body_slot).await? {
                Ok(r) => r,
                Err(u) => return Ok(Err(u)),
            };
            if body_head.fixed.kind != Kind::Entry
                || body_head.fixed.entry_id != head.fixed.entry_id
                || &body_head.key != key
            {
                return Ok(Err(Unusable::Bad(
                    "its body record is another entry's".into(),
                )));
            }
            (body_seg, body_rec, body_head)
        }
        _ => {
            return Ok(Err(Unusable::Bad(
                "the index points at a record of another kind".into(),
            )))
        }
    };
    match DiskHitHandler::complete(
        store.clone(),
        log,
        hash,
        &body_seg,
        rec,
        &body_head,
        Some(slot),
        weight,
    ) {
        Ok(hit) => Ok(Ok((meta, hit))),
        Err(why) => Ok(Err(Unusable::Bad(why))),
    }
}

/// Remove an entry whose bytes failed a check (if it is still the record
/// that failed); done when this returns.
pub(crate) async fn discard(
    store: &Arc<Store>,
    log: &WeakLog,
    key: &CompactCacheKey,
    hash: u64,
    slot: Slot,
    why: &str,
) {
    store.disk.corrupt.fetch_add(1, Ordering::Relaxed);
    store.counters.record_error();
    tracing::warn!(tier = %store.name, entry = %tier_core::key::entry_file_name(key), why, "corrupt entry removed");
    // If the tier is closing, the next open finds the record bad again.
    if let Some(log) = log.upgrade() {
        let _ = crate::log::purge_slot(&log, store, key, hash, slot).await;
    }
}

/// The entry of the record at `offset` of an evicted segment, for the
/// eviction listener. Blocking (the log writer calls it).
pub(crate) fn evicted_entry(
    store: &Arc<Store>,
    log: &WeakLog,
    seg: &Arc<Segment>,
    offset: u64,
    len: u64,
) -> Option<EvictedEntry> {
    let rec = Bytes::from(seg.read(offset, len as usize).ok()?);
    let head = decode_head_in(&rec).ok()?;
    let meta = head.meta().ok()?;
    let hash = crate::format::key_hash(&head.key);
    let key = head.key.clone();
    let id = head.fixed.entry_id;
    let weight = rec.len();
    let hit =
        DiskHitHandler::complete(store.clone(), log, hash, seg, rec, &head, None, weight).ok()?;
    Some(EvictedEntry {
        key,
        entry_id: Some(CacheEntryId::new(id)),
        meta,
        body: Box::new(hit),
    })
}

impl DiskHitHandler {
    #[allow(clippy::too_many_arguments)]
    fn complete(
        store: Arc<Store>,
        log: &WeakLog,
        hash: u64,
        seg: &Arc<Segment>,
        rec: Bytes,
        head: &Head,
        slot: Option<Slot>,
        weight: usize,
    ) -> std::result::Result<Self, String> {
        let block = seg.block_size;
        let refs = decode_frags(head.extra()).map_err(|e| e.to_string())?;
        let mut frags = Vec::with_capacity(refs.len());
        {
            let segments = store.segments.read();
            for f in refs {
                let Some(s) = segments.by_id(f.segment) else {
                    return Err("a segment of its body was evicted".into());
                };
                frags.push((f, s.clone()));
            }
        }
        let frag_total: u64 = frags.iter().map(|(f, _)| f.len as u64).sum();
        if frag_total + head.fixed.data_len != head.fixed.body_len {
            return Err("its fragments and data do not add up to its body".into());
        }
        let tail = Tail::new(rec, head, block, store.verify())?;
        let fragment_bytes = frags
            .first()
            .map_or(store.layout.fragment_bytes as u64, |(f, _)| f.len as u64);
        Ok(DiskHitHandler {
            key: head.key.clone(),
            hash,
            id: head.fixed.entry_id,
            block: block as u64,
            fragment_bytes,
            source: Source::Complete {
                body_len: head.fixed.body_len,
                frags,
                tail,
                slot,
            },
            pos: 0,
            end: None,
            run: None,
            weight: weight + frag_total as usize,
            log: log.clone(),
            store,
        })
    }

    fn following(store: Arc<Store>, log: &WeakLog, hash: u64, inflight: Arc<Inflight>) -> Self {
        DiskHitHandler {
            key: inflight.key.clone(),
            hash,
            id: inflight.id,
            block: inflight.block_size as u64,
            fragment_bytes: inflight.fragment_bytes as u64,
            source: Source::Following {
                progress: inflight.subscribe(),
                inflight,
            },
            pos: 0,
            end: None,
            run: None,
            weight: 0,
            log: log.clone(),
            store,
        }
    }

    /// Read and check the blocks of fragment `index` from the one holding
    /// `self.pos`, a few at most.
    async fn read_fragment(&self, index: usize, frag: FragRef, seg: &Arc<Segment>) -> Result<Tail> {
        let block = self.block;
        let frag_start = index as u64 * self.fragment_bytes;
        let first = (self.pos - frag_start) / block;
        let count = ((frag.len as u64).div_ceil(block) - first).min(READ_AHEAD_BLOCKS);
        let data_start = (FIXED_LEN + key_len(&self.key)) as u64;
        let at = frag.offset as u64 + data_start + first * (block + CRC_LEN as u64);
        let data_len = (frag.len as u64 - first * block).min(count * block);
        let raw = read_bytes(
            &self.store,
            seg,
            at,
            stored_len(data_len, block as usize) as usize,
        )
        .await?;
        let global_first = frag_start / block + first;
        // Each block is handed out as a slice of this buffer, checksums
        // left in place: no copy.
        match check_blocks(
            &raw,
            data_len,
            block as usize,
            self.id,
            global_first,
            self.store.verify(),
        ) {
            Ok(blocks) => Ok(Tail {
                start: frag_start + first * block,
                len: data_len,
                raw: Bytes::from(raw),
                blocks,
            }),
            Err(why) => Err(self.corrupt(why).await),
        }
    }

    /// A bad checksum: never serve these bytes. A published entry is removed
    /// so the next request is a clean miss.
    async fn corrupt(&self, why: String) -> Box<Error> {
        if let Source::Complete {
            slot: Some(slot), ..
        } = &self.source
        {
            discard(&self.store, &self.log, &self.key, self.hash, *slot, &why).await;
        }
        tier_core::error::tier_error(
            tier_core::error::CORRUPT_ENTRY,
            &self.store.name,
            "read_body",
            Some(&self.key),
            why,
        )
    }

    fn select(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let Source::Complete { body_len, .. } = self.source else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "seek is not supported while following a write",
            ));
        };
        let (start, end) = tier_core::seek_range(start, end, body_len as usize)?;
        self.pos = start as u64;
        self.end = Some(end as u64);
        Ok(())
    }
}

/// What `read_body` does next.
enum Next {
    Bytes(Bytes),
    Fragment(usize, FragRef, Arc<Segment>),
    /// A write in progress has this many bytes (and is done, or not).
    Upto(u64, bool),
    Wait,
    End,
    Aborted,
}

/// The checked bytes of `run` from `pos` (up to `end`), if it holds `pos`.
fn take_run(run: &Option<Tail>, pos: u64, end: u64, block: u64) -> Option<Bytes> {
    let run = run.as_ref().filter(|run| run.covers(pos))?;
    Some(run.slice(pos, end, block))
}

#[async_trait]
impl HandleHit for DiskHitHandler {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        loop {
            let next = match &mut self.source {
                Source::Complete {
                    body_len,
                    frags,
                    tail,
                    ..
                } => {
                    let end = self.end.unwrap_or(u64::MAX).min(*body_len);
                    if self.pos >= end {
                        Next::End
                    } else if self.pos >= tail.start {
                        Next::Bytes(tail.slice(self.pos, end, self.block))
                    } else if let Some(bytes) = take_run(&self.run, self.pos, end, self.block) {
                        Next::Bytes(bytes)
                    } else {
                        let index = (self.pos / self.fragment_bytes) as usize;
                        let (frag, seg) = frags[index].clone();
                        Next::Fragment(index, frag, seg)
                    }
                }
                Source::Following { inflight, progress } => {
                    let now = *progress.borrow_and_update();
                    let end = match now {
                        Progress::Aborted => Next::Aborted,
                        Progress::Done { body_len } => Next::Upto(body_len, true),
                        Progress::Writing { total } => Next::Upto(total, false),
                    };
                    match end {
                        Next::Upto(end, done) if self.pos >= end => {
                            if done {
                                Next::End
                            } else {
                                Next::Wait
                            }
                        }
                        Next::Upto(end, _) => {
                            match take_run(&self.run, self.pos, end, self.block) {
                                Some(bytes) => Next::Bytes(bytes),
                                None => match inflight.at(self.pos, end) {
                                    At::Buffered(bytes) => Next::Bytes(bytes),
                                    At::Fragment(index, frag, seg) => {
                                        Next::Fragment(index, frag, seg)
                                    }
                                    At::NotYet => Next::Wait,
                                },
                            }
                        }
                        other => other,
                    }
                }
            };
            match next {
                Next::Bytes(bytes) => {
                    self.pos += bytes.len() as u64;
                    return Ok(Some(bytes));
                }
                Next::End => return Ok(None),
                Next::Aborted => return Err(tier_core::error::write_aborted(&self.store.name)),
                Next::Fragment(index, frag, seg) => {
                    let run = self.read_fragment(index, frag, &seg).await?;
                    self.run = Some(run);
                }
                Next::Wait | Next::Upto(..) => {
                    let Source::Following { progress, .. } = &mut self.source else {
                        return Ok(None);
                    };
                    if progress.changed().await.is_err() {
                        return Err(tier_core::error::write_aborted(&self.store.name));
                    }
                }
            }
        }
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        matches!(self.source, Source::Complete { .. })
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        self.select(start, end)
    }

    fn seek_multipart(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        self.select(start, end)
    }

    fn should_count_access(&self) -> bool {
        matches!(self.source, Source::Complete { .. })
    }

    fn get_eviction_weight(&self) -> usize {
        self.weight
    }

    fn entry_id(&self) -> Option<CacheEntryId> {
        Some(CacheEntryId::new(self.id))
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}
