//! The hybrid's miss handler: writes to one tier or both, survives one of
//! them failing, and on `finish` leaves no older generation of the key in a
//! tier this write did not reach.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_cache::key::CompactCacheKey;
use pingora_cache::storage::{
    HandleMiss, MissFinishType, MissHandler, PurgeTarget, PurgeType, Storage,
};
use pingora_cache::CacheEntryId;
use pingora_error::{Error, ErrorType, Result};

use crate::ids::{tag_id, TierBit};
use crate::stats::incr;
use crate::storage::Shared;

/// The two tiers of a hybrid, by [`TierBit`], as plain storages.
pub(crate) type TierPair = [&'static (dyn Storage + Sync); 2];

pub(crate) struct HybridMiss {
    /// The tier whose id and tag this write reports, and its handler.
    pub(crate) primary: Option<(TierBit, MissHandler)>,
    /// The other tier's handler in write-through.
    pub(crate) secondary: Option<(TierBit, MissHandler)>,
    pub(crate) tag: Vec<u8>,
    pub(crate) id: Option<CacheEntryId>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) tiers: TierPair,
    pub(crate) key: CompactCacheKey,
    pub(crate) slot: u64,
}

impl HybridMiss {
    pub(crate) fn new(
        primary: (TierBit, MissHandler),
        secondary: Option<(TierBit, MissHandler)>,
        shared: Arc<Shared>,
        tiers: TierPair,
        key: CompactCacheKey,
        slot: u64,
    ) -> Self {
        let (tier, handler) = &primary;
        let mut tag = vec![*tier as u8];
        tag.extend_from_slice(handler.streaming_write_tag().unwrap_or_default());
        let id = handler.entry_id().map(|id| tag_id(id, *tier));
        HybridMiss {
            primary: Some(primary),
            secondary,
            tag,
            id,
            shared,
            tiers,
            key,
            slot,
        }
    }
}

#[async_trait]
impl HandleMiss for HybridMiss {
    async fn write_body(&mut self, data: Bytes, eof: bool) -> Result<()> {
        let mut last_error = None;
        for side in [&mut self.primary, &mut self.secondary] {
            if let Some((_, handler)) = side {
                if let Err(e) = handler.write_body(data.clone(), eof).await {
                    // This tier gives up on the entry; the other may still keep it.
                    incr(&self.shared.counters.errors);
                    *side = None;
                    last_error = Some(e);
                }
            }
        }
        match (
            self.primary.is_some() || self.secondary.is_some(),
            last_error,
        ) {
            (true, _) => Ok(()),
            (false, Some(e)) => Err(e),
            (false, None) => Err(Error::explain(
                ErrorType::InternalError,
                "hybrid: no tier is taking this write",
            )),
        }
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let this = *self;
        let counters = &this.shared.counters;
        // A change of the key: moves that read it before now must not
        // publish over this write.
        let _change = this.shared.moves.exclusive(this.slot).await;
        this.shared.clean.forget(this.slot);
        let mut published = [false; 2];
        let mut first_ok = None;
        let mut last_error = None;
        for (tier, handler) in [this.primary, this.secondary].into_iter().flatten() {
            match handler.finish().await {
                Ok(done) => {
                    published[tier as usize] = true;
                    first_ok.get_or_insert(done);
                }
                Err(e) => {
                    incr(&counters.errors);
                    last_error = Some(e);
                }
            }
        }
        if first_ok.is_some() {
            // A tier this write did not reach (write-back's cold tier, a hot
            // tier that refused the body) may hold an older generation: once
            // the new one is published it must not be found there.
            let span = pingora_cache::trace::Span::inactive().handle();
            for tier in [TierBit::Hot, TierBit::Cold] {
                if published[tier as usize] {
                    continue;
                }
                let purged = this.tiers[tier as usize]
                    .purge(
                        PurgeTarget::Active(&this.key),
                        PurgeType::Invalidation,
                        &span,
                    )
                    .await;
                if let Err(e) = purged {
                    incr(&counters.errors);
                    tracing::warn!(
                        hybrid = %this.shared.name,
                        ?tier,
                        error = %e,
                        "an older generation could not be removed after a write"
                    );
                }
            }
        }
        match (first_ok, last_error) {
            (Some(done), _) => Ok(done),
            (None, Some(e)) => Err(e),
            (None, None) => Err(Error::explain(
                ErrorType::InternalError,
                "hybrid: no tier finished this write",
            )),
        }
    }

    fn streaming_write_tag(&self) -> Option<&[u8]> {
        Some(&self.tag)
    }

    fn entry_id(&self) -> Option<CacheEntryId> {
        self.id
    }
}
