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
use crate::passthrough::ClientWriter;
use crate::stats::incr;
use crate::storage::Shared;

/// The two tiers of a hybrid, by [`TierBit`], as plain storages.
pub(crate) type TierPair = [&'static (dyn Storage + Sync); 2];

pub(crate) struct HybridMiss {
    /// The tier whose id and tag this write reports, and its handler.
    pub(crate) primary: Option<(TierBit, MissHandler)>,
    /// The other tier's handler in write-through.
    pub(crate) secondary: Option<(TierBit, MissHandler)>,
    /// The filling client's feed, when pingora follows this write (see
    /// [`crate::passthrough`]), and its id in `Shared::clients`.
    pub(crate) client: Option<(u64, ClientWriter)>,
    /// Each tier's object limit, by [`TierBit`]: a tier is not fed past it.
    pub(crate) limits: [Option<u64>; 2],
    /// Body bytes written so far.
    pub(crate) written: u64,
    pub(crate) tag: Vec<u8>,
    pub(crate) id: Option<CacheEntryId>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) tiers: TierPair,
    pub(crate) key: CompactCacheKey,
    pub(crate) slot: u64,
    /// The tier the tag names, whose write the client follows.
    pub(crate) primary_tier: Option<TierBit>,
}

/// The first byte of a tag naming a client feed, followed by its id.
pub(crate) const CLIENT_TAG: u8 = 2;

impl HybridMiss {
    /// A write to `primary` (and `secondary`), or to no tier at all, whose
    /// filling client reads through `client`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        primary: Option<(TierBit, MissHandler)>,
        secondary: Option<(TierBit, MissHandler)>,
        client: Option<(u64, ClientWriter)>,
        limits: [Option<u64>; 2],
        shared: Arc<Shared>,
        tiers: TierPair,
        key: CompactCacheKey,
        slot: u64,
    ) -> Self {
        let mut tag = Vec::new();
        if let Some((client_id, writer)) = &client {
            tag.push(CLIENT_TAG);
            tag.extend_from_slice(&client_id.to_le_bytes());
            if primary.is_none() {
                // No tier to follow: the client reads everything from here.
                writer.switch(0, None);
            }
        }
        if let Some((tier, handler)) = &primary {
            tag.push(*tier as u8);
            tag.extend_from_slice(handler.streaming_write_tag().unwrap_or_default());
        }
        let id = primary
            .as_ref()
            .and_then(|(tier, handler)| handler.entry_id().map(|id| tag_id(id, *tier)));
        let primary_tier = primary.as_ref().map(|(tier, _)| *tier);
        HybridMiss {
            primary,
            secondary,
            client,
            limits,
            written: 0,
            tag,
            id,
            shared,
            tiers,
            key,
            slot,
            primary_tier,
        }
    }

    /// Whether pingora took this write's client reader and still holds it.
    fn serves_a_client(&self) -> bool {
        self.client.as_ref().is_some_and(|(client_id, writer)| {
            !self.shared.clients.lock().contains_key(client_id) && writer.has_reader()
        })
    }

    /// The miss ends: a fill whose tier write is an ordinary one (to be
    /// published, or dropped) leaves the registry; one that stopped its tier
    /// stays there, closed to new readers (they miss instead of following
    /// the parked write), until it is gone.
    fn forget_fill(&self, writer: &ClientWriter) {
        let Some(id) = self.id else {
            return;
        };
        if writer.feed_ref().is_unswitched() {
            let (raw, tier) = crate::ids::untag_id(id);
            self.shared.forget_fill(tier, raw.get());
        }
    }
}

impl Drop for HybridMiss {
    fn drop(&mut self) {
        // A client reader pingora never took must not stay registered.
        if let Some((client_id, writer)) = &self.client {
            self.shared.clients.lock().remove(client_id);
            self.forget_fill(writer);
        }
    }
}

#[async_trait]
impl HandleMiss for HybridMiss {
    /// Never fails because a tier gave up: the tier stops storing the body
    /// (an object over its limit, a full disk) and the client still gets
    /// every byte, from the tier's copy up to where it stopped and from here
    /// after that (or straight from the origin, without streaming).
    async fn write_body(&mut self, data: Bytes, eof: bool) -> Result<()> {
        let end = self.written + data.len() as u64;
        let client_tier = self.primary_tier;
        for side in [&mut self.primary, &mut self.secondary] {
            let Some((tier, handler)) = side else {
                continue;
            };
            let tier = *tier;
            let over = self.limits[tier as usize].is_some_and(|limit| end > limit);
            let failed = if over {
                None
            } else {
                handler.write_body(data.clone(), eof).await.err()
            };
            if !over && failed.is_none() {
                continue;
            }
            // This tier stops storing the entry; the other may still keep it.
            let (_, handler) = side.take().expect("checked above");
            if let Some(e) = &failed {
                incr(&self.shared.counters.errors);
                tracing::debug!(hybrid = %self.shared.name, ?tier, error = %e, "a tier stopped storing a body");
            }
            match &self.client {
                Some((_, writer)) if Some(tier) == client_tier => {
                    // The client reads this tier's copy up to here, then
                    // from the miss; a write that failed cannot be kept.
                    writer.switch(self.written, failed.is_none().then_some(handler));
                }
                _ => drop(handler),
            }
        }
        if let Some((_, writer)) = &self.client {
            writer.push(&data);
        }
        self.written = end;
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        let serves_a_client = self.serves_a_client();
        // The client's feed is complete whatever the tiers do now; a reader
        // pingora never took goes with the write.
        if let Some((client_id, writer)) = self.client.take() {
            self.shared.clients.lock().remove(&client_id);
            self.forget_fill(&writer);
            writer.finish();
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
                        entry = %tier_core::key::entry_file_name(&this.key),
                        error = %e,
                        "an older generation could not be removed after a write"
                    );
                }
            }
        }
        match (first_ok, last_error) {
            (Some(done), _) => Ok(done),
            // Stored nowhere, but pingora still serves its client from the
            // feed: an error here would make it disable the cache and drop
            // that reader before the client has read the end. Nothing was
            // published, and nothing is counted as stored.
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
