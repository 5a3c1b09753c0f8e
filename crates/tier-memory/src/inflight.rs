//! A body still being written, which readers can follow.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use pingora_cache::storage::{HandleHit, Storage};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheEntryId, CacheKey};
use pingora_error::Result;
use tokio::sync::watch;

use crate::entry::{KeyRef, StoredKey, StoredMeta};

/// Where a write stands, as readers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    /// This many chunks are readable; more may come.
    Writing(usize),
    /// All chunks are written; the body has this many.
    Done(usize),
    /// The writer stopped before the end: readers must fail.
    Aborted,
}

/// The shared state of one write in progress.
#[derive(Debug)]
pub(crate) struct Inflight {
    pub(crate) id: u64,
    /// The full key: a slot match alone never names a write.
    pub(crate) key: StoredKey,
    pub(crate) meta: StoredMeta,
    chunks: Mutex<Vec<Bytes>>,
    progress: watch::Sender<Progress>,
    tier: Arc<str>,
}

impl Inflight {
    pub(crate) fn new(id: u64, key: StoredKey, meta: StoredMeta, tier: Arc<str>) -> Self {
        Inflight {
            id,
            key,
            meta,
            chunks: Mutex::new(Vec::new()),
            progress: watch::Sender::new(Progress::Writing(0)),
            tier,
        }
    }

    /// Whether this write is of `key` (all of its hashes, not only the slot).
    pub(crate) fn matches(&self, key: &KeyRef<'_>) -> bool {
        self.key.as_ref() == *key
    }

    /// Append a chunk and wake readers.
    pub(crate) fn push(&self, chunk: Bytes) {
        let mut chunks = self.chunks.lock();
        chunks.push(chunk);
        let n = chunks.len();
        drop(chunks);
        self.progress.send_replace(Progress::Writing(n));
    }

    /// Mark the body complete and hand back its chunks.
    pub(crate) fn complete(&self) -> Vec<Bytes> {
        let chunks = self.chunks.lock().clone();
        self.progress.send_replace(Progress::Done(chunks.len()));
        chunks
    }

    /// Make every reader fail from its next read on.
    pub(crate) fn abort(&self) {
        self.progress.send_if_modified(|p| {
            let modify = !matches!(p, Progress::Done(_));
            if modify {
                *p = Progress::Aborted;
            }
            modify
        });
    }

    pub(crate) fn reader(self: &Arc<Self>) -> PartialHitHandler {
        PartialHitHandler {
            inflight: self.clone(),
            progress: self.progress.subscribe(),
            next_chunk: 0,
        }
    }
}

/// Follows a body while it is written: returns chunks as they arrive, the end
/// of body once the writer finishes, and an error if the writer is dropped.
#[derive(Debug)]
pub struct PartialHitHandler {
    inflight: Arc<Inflight>,
    progress: watch::Receiver<Progress>,
    next_chunk: usize,
}

#[async_trait]
impl HandleHit for PartialHitHandler {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        loop {
            let progress = *self.progress.borrow_and_update();
            let available = match progress {
                Progress::Aborted => {
                    return Err(tier_core::error::write_aborted(&self.inflight.tier))
                }
                Progress::Writing(n) | Progress::Done(n) => n,
            };
            if self.next_chunk < available {
                let chunk = self.inflight.chunks.lock().get(self.next_chunk).cloned();
                self.next_chunk += 1;
                if let Some(chunk) = chunk {
                    return Ok(Some(chunk));
                }
                continue;
            }
            if matches!(progress, Progress::Done(_)) {
                return Ok(None);
            }
            if self.progress.changed().await.is_err() {
                // The sender lives in the Inflight we hold, so this cannot
                // happen; treat it as the abort it would be.
                return Err(tier_core::error::write_aborted(&self.inflight.tier));
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

    fn should_count_access(&self) -> bool {
        // The write itself was the access; following it is not another one.
        false
    }

    fn entry_id(&self) -> Option<CacheEntryId> {
        Some(CacheEntryId::new(self.inflight.id))
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}
