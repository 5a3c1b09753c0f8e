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
use crate::passthrough::PassWriter;
use crate::stats::incr;
use crate::storage::Shared;

/// The two tiers of a hybrid, by [`TierBit`], as plain storages.
pub(crate) type TierPair = [&'static (dyn Storage + Sync); 2];

pub(crate) struct HybridMiss {
    /// The tier whose id and tag this write reports, and its handler.
    pub(crate) primary: Option<(TierBit, MissHandler)>,
    /// The other tier's handler in write-through.
    pub(crate) secondary: Option<(TierBit, MissHandler)>,
    /// The client's copy, when pingora follows this write (see
    /// [`crate::passthrough`]), and its id in [`Shared::passes`].
    pub(crate) pass: Option<(u64, PassWriter)>,
    pub(crate) tag: Vec<u8>,
    pub(crate) id: Option<CacheEntryId>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) tiers: TierPair,
    pub(crate) key: CompactCacheKey,
    pub(crate) slot: u64,
}

/// The first byte of a tag naming a pass-through, followed by its id.
pub(crate) const PASS_TAG: u8 = 2;

impl HybridMiss {
    /// A write to `primary` (and `secondary`), or to no tier at all, served
    /// to the filling client through `pass`.
    pub(crate) fn new(
        primary: Option<(TierBit, MissHandler)>,
        secondary: Option<(TierBit, MissHandler)>,
        pass: Option<(u64, PassWriter)>,
        shared: Arc<Shared>,
        tiers: TierPair,
        key: CompactCacheKey,
        slot: u64,
    ) -> Self {
        let mut tag = Vec::new();
        if let Some((pass_id, _)) = &pass {
            tag.push(PASS_TAG);
            tag.extend_from_slice(&pass_id.to_le_bytes());
        }
        if let Some((tier, handler)) = &primary {
            tag.push(*tier as u8);
            tag.extend_from_slice(handler.streaming_write_tag().unwrap_or_default());
        }
        let id = primary
            .as_ref()
            .and_then(|(tier, handler)| handler.entry_id().map(|id| tag_id(id, *tier)));
        HybridMiss {
            primary,
            secondary,
            pass,
            tag,
            id,
            shared,
            tiers,
            key,
            slot,
        }
    }

    /// Whether the filling client is served by this write's pass-through:
    /// pingora took its reader and has not dropped it.
    fn serves_a_client(&self) -> bool {
        self.pass.as_ref().is_some_and(|(pass_id, pass)| {
            !self.shared.passes.lock().contains_key(pass_id) && pass.has_reader()
        })
    }
}

impl Drop for HybridMiss {
    fn drop(&mut self) {
        // A pass-through pingora never took must not stay registered.
        if let Some((pass_id, _)) = &self.pass {
            self.shared.passes.lock().remove(pass_id);
        }
    }
}

#[async_trait]
impl HandleMiss for HybridMiss {
    /// Never fails because a tier gave up: the tier stops storing the body
    /// (an object over its limit, a full disk) and the client still gets
    /// every byte, through the pass-through or straight from the origin.
    async fn write_body(&mut self, data: Bytes, eof: bool) -> Result<()> {
        if let Some((_, pass)) = &self.pass {
            pass.push(&data);
        }
        for side in [&mut self.primary, &mut self.secondary] {
            if let Some((tier, handler)) = side {
                if let Err(e) = handler.write_body(data.clone(), eof).await {
                    // This tier gives up on the entry; the other may still keep it.
                    incr(&self.shared.counters.errors);
                    tracing::debug!(hybrid = %self.shared.name, ?tier, error = %e, "a tier stopped storing a body");
                    *side = None;
                }
            }
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        let serves_a_client = self.serves_a_client();
        // The client's copy is complete whatever the tiers do now.
        if let Some((_, pass)) = self.pass.take() {
            pass.finish();
        }
        let (primary, secondary) = (self.primary.take(), self.secondary.take());
        let this = &*self;
        let counters = &this.shared.counters;
        // A change of the key: moves that read it before now must not
        // publish over this write.
        let _change = this.shared.moves.exclusive(this.slot).await;
        this.shared.clean.forget(this.slot);
        let mut published = [false; 2];
        let mut first_ok = None;
        let mut last_error = None;
        for (tier, handler) in [primary, secondary].into_iter().flatten() {
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
            // Stored nowhere, but pingora still serves its client from the
            // pass-through: an error here would make it disable the cache and
            // drop that reader before the client has read the end. Nothing
            // was published, and nothing is counted as stored.
            (None, _) if serves_a_client => {
                incr(&counters.passed_through);
                Ok(MissFinishType::Created(0))
            }
            (None, Some(e)) => Err(e),
            (None, None) => Err(Error::explain(
                ErrorType::Custom("TierObjectTooLarge"),
                format!("{}: no tier stored this body", this.shared.name),
            )),
        }
    }

    fn streaming_write_tag(&self) -> Option<&[u8]> {
        (!self.tag.is_empty()).then_some(&self.tag[..])
    }

    fn entry_id(&self) -> Option<CacheEntryId> {
        self.id
    }
}
