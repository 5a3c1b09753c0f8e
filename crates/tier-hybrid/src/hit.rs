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
use crate::moves::MoveTicket;
use crate::policy::Pause;
use crate::stats::incr;
use crate::storage::Shared;

/// A tier's hit, reporting the hybrid's entry id (the tier's id with the
/// tier in its lowest bit).
pub(crate) struct TaggedHit {
    pub(crate) inner: HitHandler,
    pub(crate) tier: TierBit,
    /// The copy into the hot tier, while it lasts.
    pub(crate) promotion: Option<Promotion>,
}

/// A promotion riding on a cold hit.
///
/// Field order matters: the hot write is dropped (discarded by the hot tier)
/// before the ticket, which until then keeps hot hits of the write from
/// being handed to readers.
pub(crate) struct Promotion {
    pub(crate) hot_miss: MissHandler,
    pub(crate) ticket: MoveTicket,
    pub(crate) _permit: OwnedSemaphorePermit,
    pub(crate) copied: u64,
    pub(crate) shared: Arc<Shared>,
    /// The key's slot.
    pub(crate) slot: u64,
    /// Counts the promotion abandoned unless it publishes.
    pub(crate) outcome: Unpublished,
}

/// Counts a promotion as abandoned when it is dropped before it published
/// (its reader stopped, seeked, failed, or the key changed), whichever way
/// it goes.
pub(crate) struct Unpublished(pub(crate) Option<Arc<Shared>>);

impl Drop for Unpublished {
    fn drop(&mut self) {
        if let Some(shared) = self.0.take() {
            incr(&shared.counters.promotions_abandoned);
        }
    }
}

impl TaggedHit {
    pub(crate) fn boxed(inner: HitHandler, tier: TierBit) -> HitHandler {
        Box::new(TaggedHit {
            inner,
            tier,
            promotion: None,
        })
    }

    /// Stop copying: the partial copy is dropped, so the hot tier discards
    /// it (and the promotion is counted abandoned).
    fn abandon(&mut self) {
        self.promotion = None;
    }
}

impl Promotion {
    /// The whole body was copied: publish it in the hot tier, unless the key
    /// changed since the cold hit was read.
    async fn publish(self) {
        let Promotion {
            mut hot_miss,
            ticket,
            shared,
            slot,
            mut outcome,
            ..
        } = self;
        let hot_id = hot_miss.entry_id();
        let published = match hot_miss.write_body(Bytes::new(), true).await {
            Ok(()) => {
                shared.admission.pause(Pause::Publish).await;
                let finish = async {
                    let done = hot_miss.finish().await?;
                    // Recorded in the key's exclusive section, so a change
                    // that forgets it cannot come in between.
                    if let Some(id) = hot_id {
                        shared.clean.mark(slot, id.get());
                    }
                    Ok(done)
                };
                ticket.publish(finish).await.unwrap_or(false)
            }
            Err(_) => false,
        };
        tracing::debug!(published, "promotion into the hot tier ended");
        if published {
            outcome.0 = None;
            incr(&shared.counters.promotions);
        }
        // Not published: `outcome` counts it abandoned as it drops.
        drop(ticket);
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
                let over = promotion.copied > promotion.shared.admission.policy().promote_ceiling();
                if over
                    || promotion.ticket.is_stale()
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
                    promotion.publish().await;
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
        // A promotion still pending is abandoned (counted as it drops).
        drop(this.promotion);
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
