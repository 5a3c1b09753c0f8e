//! [`DiskMissHandler`]: takes a body in chunks and hands the log writer
//! one record per fragment and one for the entry.
//!
//! A body up to the fragment size (256 KiB by default) stays in memory
//! until `finish` and goes into the entry record whole. A longer one is cut
//! into fragment records as it arrives, each written ahead of the entry
//! record, which lists them and holds the rest: a write holds at most one
//! fragment (plus the chunk being written) in memory, whatever the body size.
//! Readers that follow the write read fragments from their segments and the
//! rest from the write's buffer.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_cache::key::CompactCacheKey;
use pingora_cache::storage::streaming_write::U64WriteId;
use pingora_cache::storage::{HandleMiss, MissFinishType};
use pingora_cache::{CacheEntryId, CacheMeta};
use pingora_error::{Error, ErrorType, Result};
use tier_core::meta::StoredMeta;
use tokio::sync::watch;

use crate::format::{
    check_spec, encode_frags, encode_record, record_len, FragRef, Kind, RecordMeta, RecordSpec,
};
use crate::inflight::{Body, Inflight, Progress};
use crate::log::{Job, LogHandle};
use crate::store::Store;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    Failed,
    Finished,
}

/// Writes one entry through the log. Holds at most one fragment of body in
/// memory (plus the chunk being written), never the whole body.
pub struct DiskMissHandler {
    store: Arc<Store>,
    log: LogHandle,
    inflight: Arc<Inflight>,
    hash: u64,
    listed: bool,
    body_len: u64,
    tag: U64WriteId,
    state: State,
    /// Counted in the store's open writes (until the entry is submitted).
    counted: bool,
}

impl std::fmt::Debug for DiskMissHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskMissHandler")
            .field("id", &self.inflight.id)
            .field("body_len", &self.body_len)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

fn refused(store: &Store, key: &CompactCacheKey, why: &str) -> Box<Error> {
    store.counters.record_rejection();
    tier_core::error::tier_error(
        ErrorType::Custom("TierRefused"),
        &store.name,
        "get_miss_handler",
        Some(key),
        why.to_string(),
    )
}

impl DiskMissHandler {
    /// Start a write; a `listed` one is followed by lookups until it is
    /// published, an unlisted (private) one is seen only once published.
    pub(crate) fn start(
        store: Arc<Store>,
        log: LogHandle,
        key: CompactCacheKey,
        hash: u64,
        meta: &CacheMeta,
        listed: bool,
    ) -> Result<Self> {
        // Refuse now what could never be read back.
        let stored = match StoredMeta::new(meta) {
            Ok(stored) => stored,
            Err(e) => {
                return Err(refused(
                    &store,
                    &key,
                    &format!("the meta cannot be stored ({e})"),
                ))
            }
        };
        if let Err(e) = stored.to_cache_meta() {
            return Err(refused(
                &store,
                &key,
                &format!("the meta would not read back ({e})"),
            ));
        }
        let probe = RecordSpec {
            kind: Kind::Entry,
            seq: 0,
            entry_id: 0,
            body_len: 0,
            key: &key,
            meta: RecordMeta::Stored(stored.as_bytes()),
            extra: &[],
            data: &[],
            first_block: 0,
            block_size: store.layout.block_size,
        };
        if let Err(why) = check_spec(&probe) {
            return Err(refused(&store, &key, why));
        }
        // The entry record holds the key, the meta, the fragment list and at
        // most one fragment's worth of body; it must fit an empty segment
        // with its summary line.
        let layout = store.layout;
        let entry_room = record_len(&probe)
            + crate::format::stored_len(layout.fragment_bytes as u64, layout.block_size)
            + 64;
        if entry_room > crate::segment::record_space(layout.segment_bytes) {
            return Err(refused(
                &store,
                &key,
                "the meta is too large for this tier's segments",
            ));
        }
        let id = store.seq();
        let layout = store.layout;
        let inflight = Arc::new(Inflight {
            key,
            id,
            meta: stored,
            block_size: layout.block_size,
            fragment_bytes: layout.fragment_bytes,
            body: parking_lot::Mutex::new(Body::default()),
            progress: watch::Sender::new(Progress::Writing { total: 0 }),
        });
        if listed {
            store.register_write(hash, inflight.clone());
        }
        store
            .open_writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(DiskMissHandler {
            store,
            log,
            inflight,
            hash,
            listed,
            body_len: 0,
            tag: U64WriteId::from(id),
            state: State::Open,
            counted: true,
        })
    }

    /// Write the buffer's first fragment as a record of its own.
    async fn write_fragment(&mut self) -> Result<()> {
        let f = self.inflight.fragment_bytes;
        let (rec, start) = {
            let body = self.inflight.body.lock();
            let mut rec = Vec::with_capacity(f + f / 64 + 256);
            encode_record(
                &RecordSpec {
                    kind: Kind::Fragment,
                    seq: 0,
                    entry_id: self.inflight.id,
                    body_len: body.tail_start,
                    key: &self.inflight.key,
                    meta: RecordMeta::None,
                    extra: &[],
                    data: &body.tail[..f],
                    first_block: body.tail_start / self.inflight.block_size as u64,
                    block_size: self.inflight.block_size,
                },
                &mut rec,
            );
            (rec, body.tail_start)
        };
        let len = rec.len();
        let placed = self
            .log
            .run(&self.store, len, |reply| Job::Fragment { rec, reply })
            .await?;
        let Some(seg) = self.store.segments.read().by_id(placed.segment).cloned() else {
            return Err(Error::explain(
                ErrorType::Custom("TierFull"),
                format!(
                    "{}: a fragment was evicted as soon as it was written: the object is too large for this cache",
                    self.store.name
                ),
            ));
        };
        let mut body = self.inflight.body.lock();
        debug_assert_eq!(body.tail_start, start);
        body.frags.push((
            FragRef {
                segment: placed.segment,
                offset: placed.offset as u32,
                len: f as u32,
            },
            seg,
        ));
        body.tail.drain(..f);
        body.tail_start += f as u64;
        Ok(())
    }

    /// No longer an open write the log writer should wait for.
    fn uncount(&mut self) {
        if std::mem::take(&mut self.counted) {
            self.store
                .open_writes
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Give up: readers fail; nothing written is ever indexed.
    fn give_up(&mut self) {
        self.uncount();
        self.state = State::Failed;
        self.inflight.set(Progress::Aborted);
        if self.listed {
            self.store.unregister_write(self.hash, &self.inflight);
        }
    }

    fn closed(&self) -> Box<Error> {
        Error::explain(
            ErrorType::InternalError,
            format!("{}: this write already failed or finished", self.store.name),
        )
    }
}

#[async_trait]
impl HandleMiss for DiskMissHandler {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        if self.state != State::Open {
            return Err(self.closed());
        }
        let new_len = self.body_len + data.len() as u64;
        let limit = self.store.layout.max_object_bytes;
        if new_len > limit {
            self.give_up();
            self.store.counters.record_rejection();
            return Err(tier_core::error::object_too_large(
                &self.store.name,
                limit as usize,
                new_len as usize,
            ));
        }
        self.body_len = new_len;
        let buffered = {
            let mut body = self.inflight.body.lock();
            body.tail.extend_from_slice(&data);
            body.tail.len()
        };
        self.inflight.set(Progress::Writing { total: new_len });
        // Keep at most one fragment (and what the last chunk brought) here.
        let f = self.inflight.fragment_bytes;
        if buffered >= 2 * f {
            let mut left = buffered;
            while left >= 2 * f {
                if let Err(e) = self.write_fragment().await {
                    self.give_up();
                    return Err(e);
                }
                left -= f;
            }
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        let started = std::time::Instant::now();
        if self.state != State::Open {
            return Err(self.closed());
        }
        let f = self.inflight.fragment_bytes;
        while self.inflight.body.lock().tail.len() > f {
            if let Err(e) = self.write_fragment().await {
                self.give_up();
                return Err(e);
            }
        }
        let (rec, frags_from, frag_bytes) = {
            let body = self.inflight.body.lock();
            let refs: Vec<FragRef> = body.frags.iter().map(|(f, _)| *f).collect();
            let extra = encode_frags(&refs);
            let spec = RecordSpec {
                kind: Kind::Entry,
                seq: 0,
                entry_id: self.inflight.id,
                body_len: self.body_len,
                key: &self.inflight.key,
                meta: RecordMeta::Stored(self.inflight.meta.as_bytes()),
                extra: &extra,
                data: &body.tail,
                first_block: body.tail_start / self.inflight.block_size as u64,
                block_size: self.inflight.block_size,
            };
            if let Err(why) = check_spec(&spec) {
                drop(body);
                self.give_up();
                return Err(refused(&self.store, &self.inflight.key, why));
            }
            let mut rec = Vec::with_capacity(record_len(&spec) as usize);
            encode_record(&spec, &mut rec);
            let from = refs.iter().map(|f| f.segment).min().unwrap_or(u64::MAX);
            let frag_bytes: u64 = refs.iter().map(|f| f.len as u64).sum();
            (rec, from, frag_bytes)
        };
        let hash = self.hash;
        let len = rec.len();
        self.uncount();
        let placed = self
            .log
            .run(&self.store, len, |reply| Job::Entry {
                hash,
                rec,
                frags_from,
                reply,
            })
            .await;
        match placed {
            Ok(placed) => {
                self.state = State::Finished;
                if self.listed {
                    self.store.unregister_write(self.hash, &self.inflight);
                }
                self.inflight.set(Progress::Done {
                    body_len: self.body_len,
                });
                self.store.disk.latencies.write.record(started.elapsed());
                Ok(MissFinishType::Created((placed.len + frag_bytes) as usize))
            }
            Err(e) => {
                self.give_up();
                Err(e)
            }
        }
    }

    fn streaming_write_tag(&self) -> Option<&[u8]> {
        Some(self.tag.as_bytes())
    }

    fn entry_id(&self) -> Option<CacheEntryId> {
        Some(CacheEntryId::new(self.inflight.id))
    }
}

impl Drop for DiskMissHandler {
    fn drop(&mut self) {
        if self.state == State::Open {
            self.give_up();
        }
    }
}
