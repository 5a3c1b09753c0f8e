//! The log writer: one thread appends every record, in order, to the
//! active segment, applies it to the index, and commits in groups.
//!
//! Callers encode their records (checksums and all) and send them here; the
//! writer numbers each one, appends it with one `pwrite`, and points the
//! index at it, so the index changes in exactly the order of the log. It
//! takes whatever jobs are queued as one batch; with durability on, the
//! batch ends with one `fdatasync` of the active segment, and only then are
//! its finishes, purges and meta updates answered (group commit). When the
//! active segment is full it is sealed (summary, footer, sync), the oldest
//! segments are evicted until a new one fits the capacity, and the entries
//! of an evicted segment that were hit since they were written are copied
//! into the new one, within a budget.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use pingora_error::{Error, ErrorType, Result};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::config::Durability;
use crate::format::{
    self, encode_record, loc, Kind, RecordMeta, RecordSpec, SummaryLine, FOOTER_LEN, SUMMARY_AUX,
    SUMMARY_LINE,
};
use crate::index::Slot;
use crate::recover;
use crate::segment::Segment;
use crate::store::Store;
use pingora_cache::key::CompactCacheKey;
use tier_core::EvictedEntry;

/// Where an appended record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Placed {
    pub(crate) segment: u64,
    pub(crate) offset: u64,
    pub(crate) len: u64,
    pub(crate) slot: Slot,
}

/// The answer to a conditional change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied<T> {
    Done(T),
    /// The index no longer points where the caller looked: look again.
    Moved,
}

type Reply<T> = oneshot::Sender<Result<T>>;

/// Work for the writer.
pub(crate) enum Job {
    /// Part of a large body, ahead of its entry.
    Fragment { rec: Vec<u8>, reply: Reply<Placed> },
    /// A finished write; `frags_from` is the oldest segment holding one of
    /// its fragments (`u64::MAX` if none).
    Entry {
        hash: u64,
        rec: Vec<u8>,
        frags_from: u64,
        reply: Reply<Placed>,
    },
    /// New meta for the entry whose index slot is `replaces` (at log
    /// location `replaces_loc`).
    Meta {
        hash: u64,
        rec: Vec<u8>,
        replaces: Slot,
        replaces_loc: u64,
        reply: Reply<Applied<Placed>>,
    },
    /// Remove the entry (if it is still at `expect`, when given).
    Purge {
        hash: u64,
        rec: Vec<u8>,
        expect: Option<(Slot, u64)>,
        reply: Reply<Applied<Option<Slot>>>,
    },
    /// Seal the active segment and stop: every later job fails.
    Close { reply: Reply<()> },
}

struct Queued {
    job: Job,
    _permit: Option<OwnedSemaphorePermit>,
}

/// Bytes of records queued for the writer at most; a write past it waits.
const QUEUE_BYTES: u32 = 64 << 20;

/// The handle callers send jobs through.
#[derive(Debug, Clone)]
pub(crate) struct LogHandle {
    tx: mpsc::UnboundedSender<Queued>,
    queued: Arc<Semaphore>,
    timeout: Duration,
    bell: Arc<Doorbell>,
}

/// Rung on every send, so the writer can wait a moment for more jobs with a
/// timeout (the channel's receiver cannot).
#[derive(Debug, Default)]
struct Doorbell {
    rings: parking_lot::Mutex<u64>,
    ringing: parking_lot::Condvar,
}

impl Doorbell {
    fn ring(&self) {
        *self.rings.lock() += 1;
        self.ringing.notify_one();
    }

    fn rings(&self) -> u64 {
        *self.rings.lock()
    }

    /// Wait until rung after `seen` rings, or until `deadline`.
    fn wait(&self, seen: u64, deadline: std::time::Instant) {
        let mut rings = self.rings.lock();
        while *rings == seen {
            if self.ringing.wait_until(&mut rings, deadline).timed_out() {
                return;
            }
        }
    }
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Queued")
    }
}

impl LogHandle {
    /// Start the writer thread over `store`, creating segments from
    /// `next_segment` on.
    pub(crate) fn start(
        store: Arc<Store>,
        next_segment: u64,
        evicted: EvictedFn,
    ) -> io::Result<LogHandle> {
        let (tx, rx) = mpsc::unbounded_channel();
        let timeout = store.config.write_timeout;
        let bell = Arc::new(Doorbell::default());
        let handle = LogHandle {
            tx,
            queued: Arc::new(Semaphore::new(QUEUE_BYTES as usize)),
            timeout,
            bell: bell.clone(),
        };
        let writer = Writer {
            store,
            active: None,
            next_segment,
            closed: false,
            bell,
            last_sync: Duration::ZERO,
            last_group: 0,
            evicted,
            log: handle.downgrade(),
        };
        std::thread::Builder::new()
            .name("tier-disk-log".into())
            .spawn(move || writer.run(rx))?;
        Ok(handle)
    }

    /// Queue a job of `bytes` record bytes and wait for its answer. Waits
    /// while the writer is `QUEUE_BYTES` behind, at most the write timeout.
    pub(crate) async fn run<T>(
        &self,
        store: &Store,
        bytes: usize,
        make: impl FnOnce(Reply<T>) -> Job,
    ) -> Result<T> {
        let want = (bytes.min(QUEUE_BYTES as usize) as u32).max(1);
        let permit = match self.queued.clone().try_acquire_many_owned(want) {
            Ok(p) => p,
            Err(_) => {
                store.disk.writer_waits.fetch_add(1, Ordering::Relaxed);
                match tokio::time::timeout(
                    self.timeout,
                    self.queued.clone().acquire_many_owned(want),
                )
                .await
                {
                    Ok(Ok(p)) => p,
                    Ok(Err(_)) => return Err(stopped(store)),
                    Err(_) => {
                        store.disk.writer_timeouts.fetch_add(1, Ordering::Relaxed);
                        store.counters.record_rejection();
                        return Err(Error::explain(
                            ErrorType::Custom("TierBusy"),
                            format!(
                                "{}: the log writer is more than {} MiB behind for over {:?}: the write is refused, nothing stored was lost",
                                store.name,
                                QUEUE_BYTES >> 20,
                                self.timeout
                            ),
                        ));
                    }
                }
            }
        };
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Queued {
                job: make(reply),
                _permit: Some(permit),
            })
            .map_err(|_| stopped(store))?;
        self.bell.ring();
        answer.await.map_err(|_| stopped(store))?
    }
}

/// A handle that does not keep the writer running (hit handlers and the
/// writer itself keep one): the writer stops, and seals its segment, once
/// the tier and its writes are gone.
#[derive(Debug, Clone)]
pub(crate) struct WeakLog {
    tx: mpsc::WeakUnboundedSender<Queued>,
    queued: Arc<Semaphore>,
    timeout: Duration,
    bell: Arc<Doorbell>,
}

impl WeakLog {
    pub(crate) fn upgrade(&self) -> Option<LogHandle> {
        Some(LogHandle {
            tx: self.tx.upgrade()?,
            queued: self.queued.clone(),
            timeout: self.timeout,
            bell: self.bell.clone(),
        })
    }
}

impl LogHandle {
    pub(crate) fn downgrade(&self) -> WeakLog {
        WeakLog {
            tx: self.tx.downgrade(),
            queued: self.queued.clone(),
            timeout: self.timeout,
            bell: self.bell.clone(),
        }
    }
}

fn closed(store: &Store) -> Box<Error> {
    Error::explain(
        ErrorType::InternalError,
        format!("{}: the tier was closed", store.name),
    )
}

pub(crate) fn stopped(store: &Store) -> Box<Error> {
    Error::explain(
        ErrorType::InternalError,
        format!("{}: the log writer has stopped", store.name),
    )
}

/// Remove the entry of `key` if the index still points at `slot`.
pub(crate) async fn purge_slot(
    log: &LogHandle,
    store: &Arc<Store>,
    key: &CompactCacheKey,
    hash: u64,
    slot: Slot,
) -> Result<Applied<Option<Slot>>> {
    let Some(seg) = store.segment(slot) else {
        // Its segment is gone: nothing on disk to purge, the index only.
        store.index.remove_if(hash, slot, |_| {});
        return Ok(Applied::Done(Some(slot)));
    };
    let at = loc(seg.id, slot.offset());
    let rec = purge_record(store, key, at);
    log.run(store, rec.len(), |reply| Job::Purge {
        hash,
        rec,
        expect: Some((slot, at)),
        reply,
    })
    .await
}

pub(crate) fn purge_record(store: &Store, key: &CompactCacheKey, target: u64) -> Vec<u8> {
    let mut rec = Vec::with_capacity(128);
    encode_record(
        &RecordSpec {
            kind: Kind::Purge,
            seq: 0,
            entry_id: 0,
            body_len: 0,
            key,
            meta: RecordMeta::None,
            extra: &target.to_le_bytes(),
            data: &[],
            first_block: 0,
            block_size: store.layout.block_size,
        },
        &mut rec,
    );
    rec
}

/// The segment being appended to.
struct Active {
    seg: Arc<Segment>,
    end: u64,
    lines: Vec<SummaryLine>,
    /// Bytes the summary of `lines` takes.
    summary_bytes: u64,
    max_seq: u64,
}

impl Active {
    fn fits(&self, len: u64) -> bool {
        // Room for the record and its summary line, with an aux (the longest
        // a line can be).
        self.end + len + self.summary_bytes + (SUMMARY_LINE + SUMMARY_AUX) as u64
            <= self.seg.size - FOOTER_LEN
    }
}

/// An answer held back until the batch is synced.
enum Pending {
    Entry(Reply<Placed>, Placed, u64, Option<Slot>),
    Meta(Reply<Applied<Placed>>, Placed, u64, Slot),
    Purge(Reply<Applied<Option<Slot>>>, Placed, u64, Option<Slot>),
}

impl Pending {
    fn placed(&self) -> Placed {
        match self {
            Pending::Entry(_, p, ..) | Pending::Meta(_, p, ..) | Pending::Purge(_, p, ..) => *p,
        }
    }
}

/// An entry of an evicted segment to copy forward.
struct Reinsert {
    hash: u64,
    old: Slot,
    rec: Vec<u8>,
}

struct Writer {
    store: Arc<Store>,
    active: Option<Active>,
    next_segment: u64,
    closed: bool,
    bell: Arc<Doorbell>,
    /// How long the last group commit's sync took.
    last_sync: Duration,
    /// How many answers the last group commit held.
    last_group: usize,
    /// Builds what the eviction listener gets (the read side's hit handler).
    evicted: EvictedFn,
    log: WeakLog,
}

/// Builds the eviction listener's entry from the record at `offset` (`len`
/// bytes) of an evicted segment; the read side provides it, so the writer
/// does not depend on the readers.
pub(crate) type EvictedFn =
    fn(&Arc<Store>, &WeakLog, &Arc<Segment>, u64, u64) -> Option<EvictedEntry>;

/// The longest a group commit waits for writes still on their way.
const MAX_COMMIT_DELAY: Duration = Duration::from_micros(500);

impl Writer {
    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Queued>) {
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < 1024 {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let mut pending = Vec::new();
            for queued in batch {
                self.handle(queued.job, &mut pending);
            }
            if !pending.is_empty() && self.durable() {
                // Writers answered by the last group come back within a
                // fraction of a sync: wait for them (a commit delay), so
                // they share this group's sync rather than split into two
                // half groups; probe for one more than last time, so the
                // group grows to the number of writers. Never longer than
                // half the last sync.
                let deadline =
                    std::time::Instant::now() + (self.last_sync / 2).min(MAX_COMMIT_DELAY);
                let target = self.last_group + 1;
                while pending.len() < target
                    && (self.store.open_writes.load(Ordering::Relaxed) > 0
                        || pending.len() < self.last_group)
                    && std::time::Instant::now() < deadline
                {
                    let seen = self.bell.rings();
                    match rx.try_recv() {
                        Ok(queued) => self.handle(queued.job, &mut pending),
                        Err(mpsc::error::TryRecvError::Empty) => self.bell.wait(seen, deadline),
                        Err(mpsc::error::TryRecvError::Disconnected) => break,
                    }
                }
                self.last_group = pending.len();
            }
            if !pending.is_empty() {
                let started = std::time::Instant::now();
                let synced = self.sync_active();
                if self.durable() {
                    self.last_sync = started.elapsed();
                }
                self.answer(pending, synced);
            }
        }
        // Every handle is gone: seal, so the next open reads a summary.
        if let Some(active) = self.active.take() {
            self.seal(active);
        }
    }

    fn durable(&self) -> bool {
        self.store.config.durability != Durability::None && !self.store.faults.controls().skip_sync
    }

    fn handle(&mut self, job: Job, pending: &mut Vec<Pending>) {
        if self.closed {
            let store = &self.store;
            match job {
                Job::Fragment { reply, .. } | Job::Entry { reply, .. } => {
                    drop(reply.send(Err(closed(store))))
                }
                Job::Meta { reply, .. } => drop(reply.send(Err(closed(store)))),
                Job::Purge { reply, .. } => drop(reply.send(Err(closed(store)))),
                Job::Close { reply } => drop(reply.send(Ok(()))),
            }
            return;
        }
        match job {
            Job::Close { reply } => {
                if let Some(active) = self.active.take() {
                    self.seal(active);
                }
                self.closed = true;
                // Let go of the files and the index.
                *self.store.segments.write() = Default::default();
                self.store.index.clear();
                // Another process may open the directory now.
                *self.store.lock.lock() = None;
                let _ = reply.send(Ok(()));
            }
            Job::Fragment { mut rec, reply } => {
                let _ = reply.send(self.append(&mut rec, Kind::Fragment, 0, 0));
            }
            Job::Entry {
                hash,
                mut rec,
                frags_from,
                reply,
            } => {
                let placed = self.append(&mut rec, Kind::Entry, hash, frags_from);
                let placed = placed.and_then(|placed| {
                    if frags_from != u64::MAX
                        && !self.store.segments.read().all_live(frags_from, placed.segment)
                    {
                        return Err(Error::explain(
                            ErrorType::Custom("TierFull"),
                            format!(
                                "{}: the start of the body was evicted while the rest was written: the object is too large for this cache",
                                self.store.name
                            ),
                        ));
                    }
                    Ok(placed)
                });
                match placed {
                    Ok(placed) => {
                        let replaced = self.store.index.insert(hash, placed.slot);
                        pending.push(Pending::Entry(reply, placed, hash, replaced));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Job::Meta {
                hash,
                mut rec,
                replaces,
                replaces_loc,
                reply,
            } => {
                let here = self.store.index.get(hash);
                if !here.is_some_and(|s| s.same_record(replaces)) {
                    let _ = reply.send(Ok(Applied::Moved));
                    return;
                }
                match self.append(&mut rec, Kind::Meta, hash, replaces_loc) {
                    Ok(placed) => {
                        self.store.index.insert(hash, placed.slot);
                        pending.push(Pending::Meta(reply, placed, hash, replaces));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Job::Purge {
                hash,
                mut rec,
                expect,
                reply,
            } => {
                let Some(here) = self.store.index.get(hash) else {
                    let _ = reply.send(Ok(Applied::Done(None)));
                    return;
                };
                if expect.is_some_and(|(slot, _)| !here.same_record(slot)) {
                    let _ = reply.send(Ok(Applied::Moved));
                    return;
                }
                let target = expect.map_or(0, |(_, loc)| loc);
                match self.append(&mut rec, Kind::Purge, hash, target) {
                    Ok(placed) => {
                        let removed = self.store.index.remove(hash);
                        pending.push(Pending::Purge(reply, placed, hash, removed));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
        }
    }

    /// Answer a batch once its sync is done. If the sync failed, nothing of
    /// it is acknowledged: its records are made void in place (a reopen
    /// skips them), the index changes are taken back, and the segment is
    /// sealed without them.
    fn answer(&mut self, pending: Vec<Pending>, synced: io::Result<()>) {
        if synced.is_err() {
            self.void_batch(&pending);
        }
        let failed = |store: &Store, e: &io::Error| {
            store.io_error(
                "finish",
                None,
                "syncing the segment",
                io::Error::new(e.kind(), e.to_string()),
            )
        };
        for p in pending {
            match (p, &synced) {
                (Pending::Entry(reply, placed, _, _), Ok(())) => {
                    self.store.counters.record_insert();
                    let _ = reply.send(Ok(placed));
                }
                (Pending::Entry(reply, placed, hash, replaced), Err(e)) => {
                    let index = &self.store.index;
                    if index.get(hash).is_some_and(|s| s.same_record(placed.slot)) {
                        match replaced {
                            Some(old) => {
                                index.insert(hash, old);
                            }
                            None => {
                                index.remove(hash);
                            }
                        }
                    }
                    let _ = reply.send(Err(failed(&self.store, e)));
                }
                (Pending::Meta(reply, placed, _, _), Ok(())) => {
                    let _ = reply.send(Ok(Applied::Done(placed)));
                }
                (Pending::Meta(reply, placed, hash, old), Err(e)) => {
                    let index = &self.store.index;
                    if index.get(hash).is_some_and(|s| s.same_record(placed.slot)) {
                        index.insert(hash, old);
                    }
                    let _ = reply.send(Err(failed(&self.store, e)));
                }
                (Pending::Purge(reply, _, _, removed), Ok(())) => {
                    let _ = reply.send(Ok(Applied::Done(removed)));
                }
                (Pending::Purge(reply, _, hash, removed), Err(e)) => {
                    if let Some(old) = removed {
                        if self.store.index.get(hash).is_none() {
                            self.store.index.insert(hash, old);
                        }
                    }
                    let _ = reply.send(Err(failed(&self.store, e)));
                }
            }
        }
        if synced.is_err() {
            // After a failed fsync the file's state is unknown: append no
            // more to it.
            if let Some(active) = self.active.take() {
                self.seal(active);
            }
        }
    }

    /// Make the records of a failed group commit void, and leave them out
    /// of the active segment's summary.
    fn void_batch(&mut self, pending: &[Pending]) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        for p in pending {
            let placed = p.placed();
            if placed.segment != active.seg.id {
                continue;
            }
            let voided = active
                .seg
                .read(placed.offset, placed.len as usize)
                .and_then(|mut rec| {
                    format::void(&mut rec).map_err(|e| io::Error::other(e.to_string()))?;
                    active.seg.write_quietly(
                        &self.store.faults,
                        placed.offset,
                        &rec[..format::FIXED_LEN],
                    )
                });
            if let Err(e) = voided {
                tracing::warn!(tier = %self.store.name, error = %e, "a record of a failed commit could not be made void");
            }
            active.lines.retain(|l| l.offset as u64 != placed.offset);
            active.summary_bytes = active.lines.iter().map(|l| l.encoded_len() as u64).sum();
        }
    }

    fn sync_active(&mut self) -> io::Result<()> {
        if !self.durable() {
            return Ok(());
        }
        let Some(active) = &self.active else {
            return Ok(());
        };
        active.seg.sync(&self.store.faults)?;
        self.store.disk.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Append `rec` (numbered here) to the active segment.
    fn append(&mut self, rec: &mut [u8], kind: Kind, hash: u64, aux: u64) -> Result<Placed> {
        let len = rec.len() as u64;
        self.place(len)?;
        let Some(active) = self.active.as_mut() else {
            return Err(stopped(&self.store));
        };
        let seq = self.store.seq();
        format::stamp(rec, seq).map_err(|e| {
            Error::explain(
                ErrorType::InternalError,
                format!("{}: {e}", self.store.name),
            )
        })?;
        let offset = active.end;
        active
            .seg
            .write_at(&self.store.faults, offset, rec)
            .map_err(|e| self.store.io_error("finish", None, "appending a record", e))?;
        active.end += len;
        active.max_seq = active.max_seq.max(seq);
        let line = SummaryLine {
            hash,
            aux,
            offset: offset as u32,
            len: len as u32,
            kind,
        };
        active.summary_bytes += line.encoded_len() as u64;
        active.lines.push(line);
        Ok(Placed {
            segment: active.seg.id,
            offset,
            len,
            slot: Slot::new(active.seg.id, offset, len),
        })
    }

    /// Make sure the active segment has room for `len` more bytes.
    fn place(&mut self, len: u64) -> Result<()> {
        for _ in 0..2 {
            if let Some(active) = &self.active {
                if active.fits(len) {
                    return Ok(());
                }
            }
            self.rotate()?;
        }
        Err(Error::explain(
            ErrorType::InternalError,
            format!(
                "{}: a {len}-byte record does not fit a {}-byte segment",
                self.store.name, self.store.layout.segment_bytes
            ),
        ))
    }

    /// Make room, start a new segment, and seal the one it replaces. If the
    /// new one cannot be created (a full disk), the old one stays active, so
    /// smaller records may still fit.
    fn rotate(&mut self) -> Result<()> {
        let (evicted, reinserts) = self.make_room();
        let store = self.store.clone();
        let layout = store.layout;
        let id = self.next_segment;
        let created =
            store
                .dir
                .create_segment(&store.faults, id, layout.segment_bytes, layout.block_size);
        let created = match created {
            Ok(seg) => Arc::new(seg),
            Err(e) => {
                self.finish_eviction(evicted, reinserts);
                return Err(store.io_error("finish", None, "creating a segment file", e));
            }
        };
        self.next_segment += 1;
        if let Some(old) = self.active.take() {
            self.seal(old);
        }
        store.segments.write().push(created.clone());
        self.active = Some(Active {
            seg: created,
            end: format::SEG_HEADER_LEN,
            lines: Vec::new(),
            summary_bytes: 0,
            max_seq: 0,
        });
        self.finish_eviction(evicted, reinserts);
        if store.config.durability == Durability::Full {
            if let Err(e) = store.dir.sync(&store.faults) {
                store.counters.record_error();
                tracing::warn!(tier = %store.name, error = %e, "directory fsync failed");
            }
        }
        Ok(())
    }

    /// Write the summary and footer of `active`, and sync it. With
    /// durability on, its records are synced first: a footer that reaches
    /// the disk then never lists a record that did not.
    fn seal(&self, active: Active) {
        let store = &self.store;
        let records_synced = if self.durable() {
            active.seg.sync(&store.faults).map(|_| {
                store.disk.syncs.fetch_add(1, Ordering::Relaxed);
            })
        } else {
            Ok(())
        };
        let sealed = records_synced
            .and_then(|_| {
                recover::seal(
                    &store.faults,
                    &active.seg,
                    active.end,
                    &active.lines,
                    active.max_seq,
                )
            })
            .and_then(|_| {
                if self.durable() {
                    active.seg.sync(&store.faults)?;
                    store.disk.syncs.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            });
        if let Err(e) = sealed {
            store.counters.record_error();
            tracing::warn!(tier = %store.name, segment = active.seg.id, error = %e, "segment not sealed; it will be scanned on open");
        }
    }

    /// Evict the oldest segments until a new one fits the capacity. Entries
    /// hit since they were written are kept to copy forward; the rest leave
    /// the index now (through the eviction listener).
    fn make_room(&mut self) -> (Vec<Arc<Segment>>, Vec<Reinsert>) {
        let store = self.store.clone();
        let layout = store.layout;
        let bound = store.config.capacity_bytes.max(2 * layout.segment_bytes);
        let mut evicted: Vec<Arc<Segment>> = Vec::new();
        let mut reinserts = Vec::new();
        let mut budget = layout.segment_bytes / 8;
        loop {
            let (oldest, bytes) = {
                let segments = store.segments.read();
                let gone: u64 = evicted.iter().map(|s| s.size).sum();
                let next = evicted.len();
                let oldest = (next < segments.len())
                    .then(|| segments.nth(next).cloned())
                    .flatten();
                (oldest, segments.bytes() - gone)
            };
            if bytes + layout.segment_bytes <= bound {
                break;
            }
            let Some(oldest) = oldest else { break };
            self.evict(&oldest, &mut budget, &mut reinserts);
            evicted.push(oldest);
        }
        (evicted, reinserts)
    }

    fn evict(&self, seg: &Arc<Segment>, budget: &mut u64, reinserts: &mut Vec<Reinsert>) {
        let store = &self.store;
        let lines = recover::lines_of(store, seg);
        let listener = store.listener.read().clone();
        for line in lines {
            if !matches!(line.kind, Kind::Entry | Kind::Meta) {
                continue;
            }
            let here = Slot::new(seg.id, line.offset as u64, line.len as u64);
            let Some(now) = store.index.get(line.hash) else {
                continue;
            };
            if !now.same_record(here) {
                continue;
            }
            let whole = line.kind == Kind::Entry && line.aux == u64::MAX;
            let same_blocks = seg.block_size == store.layout.block_size;
            if whole && same_blocks && now.was_hit() && line.len as u64 <= *budget {
                if let Ok(rec) = seg.read(line.offset as u64, line.len as usize) {
                    *budget -= line.len as u64;
                    reinserts.push(Reinsert {
                        hash: line.hash,
                        old: here,
                        rec,
                    });
                    continue;
                }
            }
            let evicted = match (&listener, whole) {
                (Some(_), true) => {
                    (self.evicted)(store, &self.log, seg, line.offset as u64, line.len as u64)
                }
                _ => None,
            };
            store.index.remove_if(line.hash, here, |_| {
                if let (Some(listener), Some(entry)) = (&listener, evicted) {
                    listener.on_evict(entry);
                }
            });
            store.counters.record_eviction();
        }
    }

    /// Copy the kept entries forward, then drop the evicted segments from
    /// the table and the directory.
    fn finish_eviction(&mut self, evicted: Vec<Arc<Segment>>, reinserts: Vec<Reinsert>) {
        let store = self.store.clone();
        for mut r in reinserts {
            let fits = self
                .active
                .as_ref()
                .is_some_and(|a| a.fits(r.rec.len() as u64));
            let moved = fits
                && self
                    .append(&mut r.rec, Kind::Entry, r.hash, u64::MAX)
                    .map(|placed| {
                        if store
                            .index
                            .get(r.hash)
                            .is_some_and(|s| s.same_record(r.old))
                        {
                            store.index.insert(r.hash, placed.slot);
                        }
                    })
                    .is_ok();
            if moved {
                store.disk.reinserted.fetch_add(1, Ordering::Relaxed);
            } else {
                store.index.remove_if(r.hash, r.old, |_| {});
                store.counters.record_eviction();
            }
        }
        if evicted.is_empty() {
            return;
        }
        {
            let mut segments = store.segments.write();
            for seg in &evicted {
                if segments.oldest().is_some_and(|s| s.id == seg.id) {
                    segments.pop_oldest();
                }
            }
        }
        for seg in &evicted {
            let removed = store.dir.remove_segment(&store.faults, seg.id);
            if let Err(e) = removed {
                store.counters.record_error();
                tracing::warn!(tier = %store.name, segment = seg.id, error = %e, "evicted segment not removed");
            }
        }
    }
}
