//! Hit handlers the hybrid hands out: a tier's own handler with the hybrid's
//! entry id, and a cold hit that copies itself into the hot tier as it is read.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_cache::storage::{HandleHit, HitHandler, MissHandler, Storage};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheEntryId, CacheKey};
use pingora_error::Result;
use tokio::sync::OwnedSemaphorePermit;

use crate::ids::{tag_id, TierBit};
use crate::moves::{CleanSet, MoveGuard};
use crate::stats::{incr, Counters};

/// A tier's hit, reporting the hybrid's entry id (the tier's id with the
/// tier in its lowest bit).
pub(crate) struct TaggedHit {
    pub(crate) inner: HitHandler,
    pub(crate) tier: TierBit,
    /// The copy into the hot tier, while it lasts.
    pub(crate) promotion: Option<Promotion>,
}

/// A promotion riding on a cold hit.
pub(crate) struct Promotion {
    pub(crate) hot_miss: MissHandler,
    pub(crate) guard: MoveGuard,
    pub(crate) _permit: OwnedSemaphorePermit,
    pub(crate) ceiling: u64,
    pub(crate) copied: u64,
    pub(crate) counters: Arc<Counters>,
    /// Where to record that the promoted copy is clean (equals its cold
    /// copy), and the key's slot.
    pub(crate) clean: (Arc<CleanSet>, u64),
}

impl TaggedHit {
    pub(crate) fn boxed(inner: HitHandler, tier: TierBit) -> HitHandler {
        Box::new(TaggedHit {
            inner,
            tier,
            promotion: None,
        })
    }

    /// Stop copying: the partial copy is dropped, so the hot tier discards it.
    fn abandon(&mut self) {
        if let Some(promotion) = self.promotion.take() {
            incr(&promotion.counters.promotion_skips);
        }
    }
}

#[async_trait]
impl HandleHit for TaggedHit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        let chunk = match self.inner.read_body().await {
            Ok(chunk) => chunk,
            Err(e) => {
                self.abandon();
                return Err(e);
            }
        };
        let Some(promotion) = &mut self.promotion else {
            return Ok(chunk);
        };
        match &chunk {
            Some(bytes) => {
                promotion.copied += bytes.len() as u64;
                let over = promotion.copied > promotion.ceiling;
                if over
                    || promotion
                        .hot_miss
                        .write_body(bytes.clone(), false)
                        .await
                        .is_err()
                {
                    self.abandon();
                }
            }
            None => {
                if let Some(promotion) = self.promotion.take() {
                    let Promotion {
                        mut hot_miss,
                        guard,
                        counters,
                        clean,
                        ..
                    } = promotion;
                    let hot_id = hot_miss.entry_id();
                    let published = hot_miss.write_body(Bytes::new(), true).await.is_ok()
                        && guard.try_finish()
                        && hot_miss.finish().await.is_ok();
                    if let (true, (set, slot), Some(id)) = (published, clean, hot_id) {
                        set.mark(slot, id.get());
                    }
                    tracing::debug!(published, "promotion into the hot tier ended");
                    incr(if published {
                        &counters.promotions
                    } else {
                        &counters.promotion_skips
                    });
                    drop(guard);
                }
            }
        }
        Ok(chunk)
    }

    async fn finish(
        self: Box<Self>,
        storage: &'static (dyn Storage + Sync),
        key: &CacheKey,
        trace: &SpanHandle,
    ) -> Result<()> {
        let this = *self;
        if let Some(promotion) = this.promotion {
            incr(&promotion.counters.promotion_skips);
        }
        this.inner.finish(storage, key, trace).await
    }

    fn can_seek(&self) -> bool {
        self.inner.can_seek()
    }

    fn can_seek_multipart(&self) -> bool {
        self.inner.can_seek_multipart()
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        // A range is not the whole body: nothing to promote.
        self.abandon();
        self.inner.seek(start, end)
    }

    fn seek_multipart(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        self.abandon();
        self.inner.seek_multipart(start, end)
    }

    fn should_count_access(&self) -> bool {
        self.inner.should_count_access()
    }

    fn get_eviction_weight(&self) -> usize {
        self.inner.get_eviction_weight()
    }

    fn entry_id(&self) -> Option<CacheEntryId> {
        self.inner.entry_id().map(|id| tag_id(id, self.tier))
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}
