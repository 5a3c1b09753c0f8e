//! The [`Tier`] trait: what a tier offers beyond pingora-cache's `Storage`.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use pingora_cache::eviction::CacheEntryId;
use pingora_cache::key::CompactCacheKey;
use pingora_cache::storage::{HitHandler, Storage};
use pingora_cache::trace::SpanHandle;
use pingora_cache::CacheMeta;
use pingora_error::Result;

use crate::key::cache_key_from_compact;
use crate::report::TierReport;
use crate::stats::TierStats;

/// What a storage declares it supports.
///
/// The conformance suite skips, with a printed reason, exactly the checks whose
/// capability a storage declares as absent, and the hybrid uses it to decide,
/// for example, whether it may follow a body that is still being written.
///
/// Construct one with [`Capabilities::default`] (nothing beyond the required
/// `Storage` behaviour) or [`Capabilities::all`], then adjust fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Capabilities {
    /// Readers can follow a body while it is written, and a writer dropped
    /// mid-body makes them fail (`Storage::support_streaming_partial_write`).
    pub streaming_partial_write: bool,
    /// Hit handlers implement `seek` and `seek_multipart`.
    pub seek: bool,
    /// Miss and hit handlers return a `CacheEntryId`, new for every write.
    pub entry_ids: bool,
    /// `Storage::expire` keeps the body and marks the entry stale, instead of
    /// the trait's default of deleting it.
    pub expire: bool,
    /// The largest body the tier accepts, if it has a limit.
    pub max_object_bytes: Option<usize>,
    /// [`Tier::get_private_miss_handler`] really is private: no lookup sees
    /// its write before `finish`.
    pub private_writes: bool,
}

impl Capabilities {
    /// Everything supported and no object size limit.
    pub const fn all() -> Self {
        Capabilities {
            streaming_partial_write: true,
            seek: true,
            entry_ids: true,
            expire: true,
            max_object_bytes: None,
            private_writes: true,
        }
    }
}

/// An entry a tier has evicted, handed to its [`EvictionListener`].
///
/// The body is a hit handler over the evicted bytes, so a listener that demotes
/// the entry to a slower tier can stream it without the tier buffering it again.
pub struct EvictedEntry {
    /// The evicted entry's key.
    pub key: CompactCacheKey,
    /// The evicted generation's id, when the tier assigns ids.
    pub entry_id: Option<CacheEntryId>,
    /// The entry's meta as it was stored.
    pub meta: CacheMeta,
    /// The entry's body, from the start.
    pub body: HitHandler,
}

impl fmt::Debug for EvictedEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EvictedEntry")
            .field("key", &self.key)
            .field("entry_id", &self.entry_id)
            .finish_non_exhaustive()
    }
}

/// Receives entries a tier evicts on its own (for example the hybrid's demotion).
///
/// `on_evict` runs on the evicting thread, often while a request is waiting for
/// room: it must not block or await, nor call back into the tier. Hand the
/// entry to a bounded queue or a bounded task pool, and drop it when there is
/// no room.
///
/// A tier calls `on_evict` before any other operation on the evicted key in
/// that tier (a lookup, purge, expiry, meta update or write's `finish`) can
/// find the entry gone: in practice, while the lock that orders operations on
/// the key is still held. The hybrid relies on this to order a demotion with
/// a purge that arrives just after the eviction: without it, the purge could
/// find nothing in either tier and the demotion then publish what was purged.
pub trait EvictionListener: Send + Sync + 'static {
    /// Called once for each entry the tier evicts to stay within its bounds.
    fn on_evict(&self, entry: EvictedEntry);
}

/// What the hybrid and the tooling need from a tier beyond [`Storage`].
///
/// Every method has a default that works for any `Storage`, so a third-party
/// storage becomes a tier with an empty `impl Tier for MyStorage {}`, or by
/// wrapping it in [`PlainTier`](crate::PlainTier), which also counts hits,
/// misses and inserts.
#[async_trait]
pub trait Tier: Storage + Send + Sync + 'static {
    /// A short name for logs and metrics, such as `"memory"` or `"disk"`.
    fn tier_name(&self) -> &str {
        "tier"
    }

    /// What this tier supports; see [`Capabilities`].
    ///
    /// The default declares streaming partial writes exactly when
    /// `support_streaming_partial_write` says so, and nothing else.
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            streaming_partial_write: self.support_streaming_partial_write(),
            ..Capabilities::default()
        }
    }

    /// Look an entry up by its compact key, as the eviction manager and the
    /// hybrid's demotion know it; with `entry_id`, only that generation.
    ///
    /// The default rebuilds a [`CacheKey`](pingora_cache::CacheKey) from the
    /// compact key's hashes (see [`cache_key_from_compact`]) and calls
    /// `lookup`; it then drops a hit whose handler reports another entry id.
    /// This works for every storage that finds entries by the key's hashes,
    /// which is what pingora's keys are for.
    async fn lookup_entry(
        &'static self,
        key: &CompactCacheKey,
        entry_id: Option<CacheEntryId>,
        trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let cache_key = cache_key_from_compact(key);
        let found = self.lookup(&cache_key, trace).await?;
        Ok(found.filter(|(_, hit)| entry_id.is_none() || hit.entry_id() == entry_id))
    }

    /// A miss handler whose write no lookup sees until `finish` publishes it:
    /// for copies between tiers (the hybrid's promotions and demotions),
    /// which may give up half-way, so that no reader follows them and then
    /// fails.
    ///
    /// The default is `get_miss_handler`, whose write readers may follow;
    /// a tier that overrides it declares [`Capabilities::private_writes`].
    async fn get_private_miss_handler(
        &'static self,
        key: &pingora_cache::CacheKey,
        meta: &CacheMeta,
        trace: &SpanHandle,
    ) -> Result<pingora_cache::storage::MissHandler> {
        self.get_miss_handler(key, meta, trace).await
    }

    /// Register the listener that receives entries this tier evicts on its own,
    /// keeping the ordering contract of [`EvictionListener`].
    ///
    /// Returns `false` when the tier cannot report evictions (the default), in
    /// which case the listener is dropped. A later call replaces the listener.
    fn set_eviction_listener(&self, listener: Arc<dyn EvictionListener>) -> bool {
        drop(listener);
        false
    }

    /// A snapshot of this tier's counters. The default is all zeros.
    fn stats(&self) -> TierStats {
        TierStats::default()
    }

    /// What this tier reports to a metrics system (see [`TierReport`]):
    /// by default its name and [`stats`](Tier::stats). Tiers add their own
    /// counters and latencies; a composition adds its levels' reports.
    fn report(&self) -> TierReport {
        TierReport::new(self.tier_name(), self.stats())
    }
}
