//! The hybrid's miss handler: writes to one tier or both, and survives one of
//! them failing.

use async_trait::async_trait;
use bytes::Bytes;
use pingora_cache::storage::{HandleMiss, MissFinishType, MissHandler};
use pingora_cache::CacheEntryId;
use pingora_error::{Error, ErrorType, Result};
use std::sync::Arc;

use crate::ids::{tag_id, TierBit};
use crate::stats::{incr, Counters};

pub(crate) struct HybridMiss {
    /// The tier whose id and tag this write reports, and its handler.
    pub(crate) primary: Option<(TierBit, MissHandler)>,
    /// The other tier's handler in write-through.
    pub(crate) secondary: Option<(TierBit, MissHandler)>,
    pub(crate) tag: Vec<u8>,
    pub(crate) id: Option<CacheEntryId>,
    pub(crate) counters: Arc<Counters>,
}

impl HybridMiss {
    pub(crate) fn new(
        primary: (TierBit, MissHandler),
        secondary: Option<(TierBit, MissHandler)>,
        counters: Arc<Counters>,
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
            counters,
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
                    incr(&self.counters.errors);
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
        let mut first_ok = None;
        let mut last_error = None;
        for (_, handler) in [this.primary, this.secondary].into_iter().flatten() {
            match handler.finish().await {
                Ok(done) => {
                    first_ok.get_or_insert(done);
                }
                Err(e) => {
                    incr(&this.counters.errors);
                    last_error = Some(e);
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
