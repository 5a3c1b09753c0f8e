//! [`Delayed`]: a tier whose calls are held back by random amounts, so that
//! tests provoke the interleavings a quiet machine never produces.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_cache::eviction::CacheEntryId;
use pingora_cache::key::CompactCacheKey;
use pingora_cache::storage::{
    HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget, PurgeType,
    Storage,
};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheKey, CacheMeta};
use pingora_error::Result;
use tier_core::{Capabilities, EvictedEntry, EvictionListener, Tier, TierStats};

/// How long, at most, each kind of call is held back; each call waits a
/// random time up to it (half of the calls not at all).
#[derive(Debug, Clone, Copy, Default)]
pub struct Delays {
    /// Before a lookup.
    pub lookup: Duration,
    /// Before a write's `finish` (its publish).
    pub finish: Duration,
    /// Before a purge, an expiry or a meta update.
    pub change: Duration,
    /// Inside the eviction listener, on the evicting thread (a blocking
    /// sleep, as a slow listener would block it).
    pub listener: Duration,
}

impl Delays {
    /// The same bound for every kind of call.
    pub fn all(max: Duration) -> Self {
        Delays {
            lookup: max,
            finish: max,
            change: max,
            listener: max,
        }
    }
}

fn draw(max: Duration) -> Duration {
    if max.is_zero() || fastrand::bool() {
        return Duration::ZERO;
    }
    let micros = max.as_micros().min(u64::MAX as u128) as u64;
    Duration::from_micros(fastrand::u64(0..=micros))
}

async fn hold(max: Duration) {
    let delay = draw(max);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

/// `inner` with every call held back by up to [`Delays`]; otherwise the same
/// tier: same capabilities, ids, listener and stats.
pub struct Delayed<T: Tier> {
    inner: &'static T,
    delays: Delays,
}

impl<T: Tier> std::fmt::Debug for Delayed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delayed")
            .field("inner", &self.inner.tier_name())
            .field("delays", &self.delays)
            .finish()
    }
}

impl<T: Tier> Delayed<T> {
    /// Wrap `inner`.
    pub fn new(inner: &'static T, delays: Delays) -> Self {
        Delayed { inner, delays }
    }

    /// Leak it for the `&'static` a storage must be.
    pub fn leak(self) -> &'static Self {
        Box::leak(Box::new(self))
    }

    /// The wrapped tier.
    pub fn inner(&self) -> &'static T {
        self.inner
    }
}

#[async_trait]
impl<T: Tier> Storage for Delayed<T> {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        hold(self.delays.lookup).await;
        self.inner.lookup(key, trace).await
    }

    async fn lookup_streaming_write(
        &'static self,
        key: &CacheKey,
        streaming_write_tag: Option<&[u8]>,
        trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        self.inner
            .lookup_streaming_write(key, streaming_write_tag, trace)
            .await
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let inner = self.inner.get_miss_handler(key, meta, trace).await?;
        Ok(Box::new(DelayedMiss {
            inner,
            finish: self.delays.finish,
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        purge_type: PurgeType,
        trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        hold(self.delays.change).await;
        self.inner.purge(target, purge_type, trace).await
    }

    async fn expire(
        &'static self,
        target: PurgeTarget<'_>,
        trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        hold(self.delays.change).await;
        self.inner.expire(target, trace).await
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        trace: &SpanHandle,
    ) -> Result<bool> {
        hold(self.delays.change).await;
        self.inner.update_meta(key, meta, trace).await
    }

    fn support_streaming_partial_write(&self) -> bool {
        self.inner.support_streaming_partial_write()
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

#[async_trait]
impl<T: Tier> Tier for Delayed<T> {
    fn tier_name(&self) -> &str {
        self.inner.tier_name()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn lookup_entry(
        &'static self,
        key: &CompactCacheKey,
        entry_id: Option<CacheEntryId>,
        trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        self.inner.lookup_entry(key, entry_id, trace).await
    }

    async fn get_private_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let inner = self
            .inner
            .get_private_miss_handler(key, meta, trace)
            .await?;
        Ok(Box::new(DelayedMiss {
            inner,
            finish: self.delays.finish,
        }))
    }

    fn set_eviction_listener(&self, listener: Arc<dyn EvictionListener>) -> bool {
        self.inner.set_eviction_listener(Arc::new(SlowListener {
            inner: listener,
            max: self.delays.listener,
        }))
    }

    fn stats(&self) -> TierStats {
        self.inner.stats()
    }
}

struct DelayedMiss {
    inner: MissHandler,
    finish: Duration,
}

#[async_trait]
impl HandleMiss for DelayedMiss {
    async fn write_body(&mut self, data: Bytes, eof: bool) -> Result<()> {
        self.inner.write_body(data, eof).await
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        hold(self.finish).await;
        self.inner.finish().await
    }

    fn streaming_write_tag(&self) -> Option<&[u8]> {
        self.inner.streaming_write_tag()
    }

    fn entry_id(&self) -> Option<CacheEntryId> {
        self.inner.entry_id()
    }
}

struct SlowListener {
    inner: Arc<dyn EvictionListener>,
    max: Duration,
}

impl EvictionListener for SlowListener {
    fn on_evict(&self, entry: EvictedEntry) {
        let delay = draw(self.max);
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        self.inner.on_evict(entry);
    }
}
