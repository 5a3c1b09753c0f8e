//! [`PlainTier`]: any `Storage` as a tier, with counters.

use std::any::Any;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_cache::eviction::CacheEntryId;
use pingora_cache::key::CompactCacheKey;
use pingora_cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType, Storage,
};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheKey, CacheMeta};
use pingora_error::Result;

use crate::stats::{StatsCounters, TierStats};
use crate::tier::{Capabilities, Tier};

/// Wraps any [`Storage`] so it can be a tier: the [`Tier`] defaults, plus hit,
/// miss, insert and error counters kept by the wrapper itself.
///
/// Use it for storages that do not implement [`Tier`] themselves, such as
/// pingora's `MemCache` or a storage from another crate. It declares the
/// capabilities of [`Tier::capabilities`]'s default unless told otherwise with
/// [`PlainTier::with_capabilities`]. It cannot report evictions or entry
/// counts, because a plain `Storage` does not expose them.
pub struct PlainTier<S> {
    name: String,
    inner: S,
    capabilities: Option<Capabilities>,
    counters: StatsCounters,
    /// Purge epochs by key stripe, and a lock that keeps a purge and a
    /// `finish` of the same storage apart (see `CountingMiss::finish`).
    purges: Arc<PurgeEpochs>,
}

/// Bumped on every purge of a key in the stripe; a write that saw another
/// epoch when it started is dropped instead of finished.
#[derive(Debug)]
struct PurgeEpochs {
    stripes: [AtomicU64; 64],
    gate: tokio::sync::RwLock<()>,
}

impl Default for PurgeEpochs {
    fn default() -> Self {
        PurgeEpochs {
            stripes: std::array::from_fn(|_| AtomicU64::new(0)),
            gate: tokio::sync::RwLock::new(()),
        }
    }
}

impl PurgeEpochs {
    fn stripe(&self, key: &CompactCacheKey) -> &AtomicU64 {
        &self.stripes[(key.primary[0] % 64) as usize]
    }
}

impl<S> fmt::Debug for PlainTier<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlainTier")
            .field("name", &self.name)
            .field("capabilities", &self.capabilities)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl<S: Storage + Send + Sync + 'static> PlainTier<S> {
    /// Wrap `inner`, naming it `name` in logs and metrics.
    pub fn new(name: impl Into<String>, inner: S) -> Self {
        PlainTier {
            name: name.into(),
            inner,
            capabilities: None,
            counters: StatsCounters::new(),
            purges: Arc::default(),
        }
    }

    /// Declare what `inner` supports, for storages whose behaviour is known.
    pub fn with_capabilities(mut self, capabilities: Capabilities) -> Self {
        self.capabilities = Some(capabilities);
        self
    }

    /// The wrapped storage.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn count_lookup(&self, found: &Result<Option<(CacheMeta, HitHandler)>>) {
        match found {
            Ok(Some(_)) => self.counters.record_hit(),
            Ok(None) => self.counters.record_miss(),
            Err(_) => self.counters.record_error(),
        }
    }

    /// Hits of a storage not declared to seek say they cannot, whatever the
    /// storage's own handler says: pingora then serves ranges by slicing the
    /// whole body, instead of trusting a seek that may be wrong (`MemCache`'s
    /// `seek(start, None)` keeps an earlier end).
    fn gate_seek(
        &self,
        found: Result<Option<(CacheMeta, HitHandler)>>,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        if self.capabilities().seek {
            return found;
        }
        Ok(found?.map(|(meta, hit)| (meta, Box::new(NoSeekHit(hit)) as HitHandler)))
    }

    fn count_error<T>(&self, result: Result<T>) -> Result<T> {
        if result.is_err() {
            self.counters.record_error();
        }
        result
    }
}

#[async_trait]
impl<S: Storage + Send + Sync + 'static> Storage for PlainTier<S> {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let found = self.inner.lookup(key, trace).await;
        self.count_lookup(&found);
        self.gate_seek(found)
    }

    async fn lookup_streaming_write(
        &'static self,
        key: &CacheKey,
        streaming_write_tag: Option<&[u8]>,
        trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let found = self
            .inner
            .lookup_streaming_write(key, streaming_write_tag, trace)
            .await;
        self.count_lookup(&found);
        self.gate_seek(found)
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let compact = key.to_compact();
        let epoch = self.purges.stripe(&compact).load(Ordering::Acquire);
        let inner = self.count_error(self.inner.get_miss_handler(key, meta, trace).await)?;
        Ok(Box::new(CountingMiss {
            inner,
            counters: &self.counters,
            purges: self.purges.clone(),
            key: compact,
            epoch,
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        purge_type: PurgeType,
        trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        // Some storages (pingora's MemCache) panic in a write's `finish` when
        // a purge removed the write's state: bump the epoch so such a write
        // is dropped instead, with the gate keeping the two apart.
        let _gate = self.purges.gate.write().await;
        self.purges
            .stripe(target.key())
            .fetch_add(1, Ordering::AcqRel);
        let outcome = self.inner.purge(target, purge_type, trace).await;
        self.count_error(outcome)
    }

    async fn expire(
        &'static self,
        target: PurgeTarget<'_>,
        trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let outcome = self.inner.expire(target, trace).await;
        self.count_error(outcome)
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        trace: &SpanHandle,
    ) -> Result<bool> {
        // Some storages (pingora's MemCache among them) panic when asked to
        // update an absent entry; look first, so an absent key is `false`.
        if self
            .count_error(self.inner.lookup(key, trace).await)?
            .is_none()
        {
            return Ok(false);
        }
        let updated = self.inner.update_meta(key, meta, trace).await;
        self.count_error(updated)
    }

    fn support_streaming_partial_write(&self) -> bool {
        self.inner.support_streaming_partial_write()
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

#[async_trait]
impl<S: Storage + Send + Sync + 'static> Tier for PlainTier<S> {
    fn tier_name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = self.capabilities.unwrap_or(Capabilities {
            streaming_partial_write: self.inner.support_streaming_partial_write(),
            ..Capabilities::default()
        });
        // A plain `Storage` has only one kind of write, which its readers
        // may follow, whatever was declared.
        caps.private_writes = false;
        caps
    }

    fn stats(&self) -> TierStats {
        self.counters.snapshot()
    }
}

/// A hit of a storage that is not declared to seek: it says so, and refuses
/// seeks.
struct NoSeekHit(HitHandler);

#[async_trait]
impl HandleHit for NoSeekHit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        self.0.read_body().await
    }

    async fn finish(
        self: Box<Self>,
        storage: &'static (dyn Storage + Sync),
        key: &CacheKey,
        trace: &SpanHandle,
    ) -> Result<()> {
        self.0.finish(storage, key, trace).await
    }

    fn can_seek(&self) -> bool {
        false
    }

    fn can_seek_multipart(&self) -> bool {
        false
    }

    fn seek(&mut self, _start: usize, _end: Option<usize>) -> Result<()> {
        Err(no_seek())
    }

    fn seek_multipart(&mut self, _start: usize, _end: Option<usize>) -> Result<()> {
        Err(no_seek())
    }

    fn should_count_access(&self) -> bool {
        self.0.should_count_access()
    }

    fn get_eviction_weight(&self) -> usize {
        self.0.get_eviction_weight()
    }

    fn entry_id(&self) -> Option<CacheEntryId> {
        self.0.entry_id()
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

fn no_seek() -> pingora_error::BError {
    pingora_error::Error::explain(
        pingora_error::ErrorType::InternalError,
        "this tier is not declared to seek (PlainTier capabilities)",
    )
}

/// Counts an insert when the wrapped miss handler finishes, and drops a write
/// that a purge of its key overtook.
struct CountingMiss {
    inner: MissHandler,
    counters: &'static StatsCounters,
    purges: Arc<PurgeEpochs>,
    key: CompactCacheKey,
    epoch: u64,
}

#[async_trait]
impl HandleMiss for CountingMiss {
    async fn write_body(&mut self, data: Bytes, eof: bool) -> Result<()> {
        self.inner.write_body(data, eof).await
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let counters = self.counters;
        let purges = self.purges.clone();
        let _gate = purges.gate.read().await;
        if purges.stripe(&self.key).load(Ordering::Acquire) != self.epoch {
            counters.record_rejection();
            return Err(pingora_error::Error::explain(
                pingora_error::ErrorType::InternalError,
                "the key was purged while this write was in progress",
            ));
        }
        let finished = self.inner.finish().await;
        match finished {
            Ok(_) => counters.record_insert(),
            Err(_) => counters.record_error(),
        }
        finished
    }

    fn streaming_write_tag(&self) -> Option<&[u8]> {
        self.inner.streaming_write_tag()
    }

    fn entry_id(&self) -> Option<CacheEntryId> {
        self.inner.entry_id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::meta_with_header;
    use pingora_cache::trace::Span;
    use pingora_cache::MemCache;
    use std::sync::LazyLock;

    static TIER: LazyLock<PlainTier<MemCache>> =
        LazyLock::new(|| PlainTier::new("memcache", MemCache::new()));

    #[tokio::test]
    async fn counts_hits_misses_and_inserts() {
        let span = Span::inactive().handle();
        let key = CacheKey::new("plain-counts", "");
        assert!(TIER.lookup(&key, &span).await.expect("lookup").is_none());
        let meta = meta_with_header("x-test", "1");
        let mut miss = TIER
            .get_miss_handler(&key, &meta, &span)
            .await
            .expect("miss");
        miss.write_body(Bytes::from_static(b"body"), true)
            .await
            .expect("write");
        miss.finish().await.expect("finish");
        assert!(TIER.lookup(&key, &span).await.expect("lookup").is_some());
        let stats = TIER.stats();
        assert_eq!((stats.hits, stats.misses, stats.inserts), (1, 1, 1));
    }

    #[tokio::test]
    async fn lookup_entry_finds_by_compact_key() {
        let span = Span::inactive().handle();
        let mut key = CacheKey::new("plain-compact", "tag");
        key.set_variance_key(pingora_cache::key::hash_key("gzip"));
        let meta = meta_with_header("x-test", "2");
        let mut miss = TIER
            .get_miss_handler(&key, &meta, &span)
            .await
            .expect("miss");
        miss.write_body(Bytes::from_static(b"varied"), true)
            .await
            .expect("write");
        miss.finish().await.expect("finish");

        let (_, mut hit) = TIER
            .lookup_entry(&key.to_compact(), None, &span)
            .await
            .expect("lookup")
            .expect("found by compact key");
        assert_eq!(
            hit.read_body().await.expect("read").as_deref(),
            Some(&b"varied"[..])
        );
        // MemCache assigns no entry ids, so asking for a specific one finds nothing.
        let by_id = TIER
            .lookup_entry(&key.to_compact(), Some(CacheEntryId::new(7)), &span)
            .await
            .expect("lookup");
        assert!(by_id.is_none());
    }

    #[test]
    fn capabilities_default_to_what_storage_says() {
        let caps = TIER.capabilities();
        assert!(caps.streaming_partial_write);
        assert!(!caps.entry_ids);
        let declared = PlainTier::new("m", MemCache::new()).with_capabilities(Capabilities::all());
        let mut all_but_private = Capabilities::all();
        all_but_private.private_writes = false;
        assert_eq!(declared.capabilities(), all_but_private);
        assert!(!declared.set_eviction_listener(std::sync::Arc::new(NoopListener)));
    }

    #[tokio::test]
    async fn hits_of_a_tier_not_declared_to_seek_refuse_seeks() {
        static UNDECLARED: LazyLock<PlainTier<MemCache>> =
            LazyLock::new(|| PlainTier::new("memcache", MemCache::new()));
        let span = Span::inactive().handle();
        let key = CacheKey::new("plain-seek", "");
        let meta = meta_with_header("x-test", "3");
        let mut miss = UNDECLARED
            .get_miss_handler(&key, &meta, &span)
            .await
            .expect("miss");
        miss.write_body(Bytes::from_static(b"0123456789"), true)
            .await
            .expect("write");
        miss.finish().await.expect("finish");
        let (_, mut hit) = UNDECLARED
            .lookup(&key, &span)
            .await
            .expect("lookup")
            .expect("hit");
        assert!(!hit.can_seek() && !hit.can_seek_multipart());
        assert!(hit.seek(2, Some(4)).is_err());
        assert_eq!(
            crate::testing::read_body(&mut hit).await.expect("read"),
            b"0123456789"
        );
    }

    struct NoopListener;
    impl crate::EvictionListener for NoopListener {
        fn on_evict(&self, _entry: crate::EvictedEntry) {}
    }
}
