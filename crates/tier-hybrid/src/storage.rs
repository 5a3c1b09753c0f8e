//! [`HybridStorage`]: two tiers as one `Storage`.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use pingora_cache::eviction::CacheEntryKey;
use pingora_cache::key::CompactCacheKey;
use pingora_cache::storage::{
    HitHandler, MissHandler, PurgeOutcome, PurgeTarget, PurgeType, Storage,
};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheEntryId, CacheKey, CacheMeta};
use pingora_error::Result;
use tier_core::key::{cache_key_from_compact, entry_hash64};
use tier_core::{Capabilities, EvictedEntry, EvictionListener, Tier, TierStats};

use crate::hit::{Promotion, TaggedHit};
use crate::ids::{tag_id, untag_id, TierBit};
use crate::miss::HybridMiss;
use crate::moves::{CleanSet, MoveGuard, Moves};
use crate::policy::{Admission, Policy};
use crate::stats::{incr, Counters, HybridStats};

/// Two storages as one: lookups try `Hot`, then `Cold`; cold hits are copied
/// into `Hot` as they stream (when the policy admits them); misses are written
/// to both tiers or to `Hot` only, per [`Policy`].
///
/// Both tiers are `&'static`, as pingora's storages are. Any `Storage` can be a
/// tier: one that does not implement [`Tier`] itself is wrapped in
/// [`tier_core::PlainTier`]. A `HybridStorage` is itself a `Tier`, so hybrids
/// nest.
pub struct HybridStorage<Hot: Tier, Cold: Tier> {
    hot: &'static Hot,
    cold: &'static Cold,
    shared: Arc<Shared>,
}

impl<Hot: Tier, Cold: Tier> std::fmt::Debug for HybridStorage<Hot, Cold> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HybridStorage")
            .field("hot", &self.hot.tier_name())
            .field("cold", &self.cold.tier_name())
            .field("policy", self.shared.admission.policy())
            .finish_non_exhaustive()
    }
}

/// What the hybrid keeps besides its tiers; shared with demotion tasks.
#[derive(Debug)]
struct Shared {
    name: String,
    admission: Admission,
    moves: Arc<Moves>,
    counters: Arc<Counters>,
    clean: Arc<CleanSet>,
}

impl<Hot: Tier, Cold: Tier> HybridStorage<Hot, Cold> {
    /// Compose `hot` over `cold` under `policy`.
    ///
    /// In write-back, this registers a listener on `hot` so its evictions are
    /// demoted to `cold`; a hot tier that cannot report evictions (see
    /// [`Tier::set_eviction_listener`]) demotes only through
    /// `purge(_, PurgeType::Eviction)`.
    pub fn new(hot: &'static Hot, cold: &'static Cold, policy: Policy) -> Self {
        let shared = Arc::new(Shared {
            name: format!("hybrid({}, {})", hot.tier_name(), cold.tier_name()),
            admission: Admission::new(policy),
            moves: Arc::new(Moves::default()),
            counters: Arc::new(Counters::default()),
            clean: Arc::new(CleanSet::default()),
        });
        if shared.admission.policy().demotes_hot_evictions() {
            let demoter = Arc::new(Demoter {
                cold,
                shared: shared.clone(),
            });
            if !hot.set_eviction_listener(demoter) {
                tracing::warn!(
                    hot = hot.tier_name(),
                    "hot tier cannot report evictions: write-back demotes only on purge(Eviction)"
                );
            }
        }
        HybridStorage { hot, cold, shared }
    }

    /// Leak the hybrid for the `&'static` pingora needs.
    pub fn leak(self) -> &'static Self {
        Box::leak(Box::new(self))
    }

    /// The hot tier.
    pub fn hot(&self) -> &'static Hot {
        self.hot
    }

    /// The cold tier.
    pub fn cold(&self) -> &'static Cold {
        self.cold
    }

    /// What the hybrid did so far.
    pub fn hybrid_stats(&self) -> HybridStats {
        self.shared.counters.snapshot()
    }

    /// Promotions and demotions in flight now.
    pub fn moves_in_flight(&self) -> usize {
        self.shared.moves.in_flight()
    }

    /// Wait until no promotion or demotion is in flight (for tests and
    /// orderly shutdown).
    pub async fn wait_for_moves(&self) {
        self.shared.moves.wait_idle().await
    }

    /// A cold hit: start copying it into the hot tier if the policy admits it.
    async fn cold_hit(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        hit: HitHandler,
        trace: &SpanHandle,
    ) -> HitHandler {
        let counters = &self.shared.counters;
        let weight = hit.get_eviction_weight() as u64;
        let size_hint = (weight > 0)
            .then_some(weight)
            .or_else(|| tier_core::announced_body_len(meta));
        let slot = entry_hash64(&key.to_compact());
        let permit = match self.shared.admission.admit_promotion(slot, size_hint) {
            Ok(permit) => permit,
            Err(_) => {
                incr(&counters.promotion_skips);
                return TaggedHit::boxed(hit, TierBit::Cold);
            }
        };
        let Some(guard) = self.shared.moves.begin(slot) else {
            incr(&counters.promotion_skips);
            return TaggedHit::boxed(hit, TierBit::Cold);
        };
        match self.hot.get_miss_handler(key, meta, trace).await {
            Ok(hot_miss) => Box::new(TaggedHit {
                inner: hit,
                tier: TierBit::Cold,
                promotion: Some(Promotion {
                    hot_miss,
                    guard,
                    _permit: permit,
                    ceiling: self.shared.admission.policy().promote_ceiling(),
                    copied: 0,
                    counters: counters.clone(),
                    clean: (self.shared.clean.clone(), slot),
                }),
            }),
            Err(e) => {
                incr(&counters.errors);
                tracing::debug!(hybrid = %self.shared.name, error = %e, "promotion could not start");
                TaggedHit::boxed(hit, TierBit::Cold)
            }
        }
    }

    /// The purge target a tier gets: the exact generation if the id names this
    /// tier, else the tier's active entry for the key.
    fn target_for<'a>(
        key: &'a CompactCacheKey,
        exact: &'a Option<(CacheEntryKey, TierBit)>,
        tier: TierBit,
    ) -> PurgeTarget<'a> {
        match exact {
            Some((entry, bit)) if *bit == tier => PurgeTarget::Exact(entry),
            _ => PurgeTarget::Active(key),
        }
    }

    /// Whether an invalidation or expiry aimed at `exact` (one of the
    /// hybrid's ids, or none) applies to the key's current entry, so that it
    /// must reach every copy of it.
    ///
    /// The id names one tier's generation. It is stale when that tier now
    /// holds another generation of the key: a newer write. A hot copy
    /// promoted from the cold tier is not a newer write (it carries the cold
    /// copy's generation under a new id), and a tier that no longer holds the
    /// key at all has nothing newer. When in doubt the answer is yes: removing
    /// a copy too many costs a miss, keeping one serves what the caller meant
    /// to remove.
    async fn names_current(
        &self,
        key: &CompactCacheKey,
        exact: &Option<(CacheEntryKey, TierBit)>,
        trace: &SpanHandle,
    ) -> bool {
        let Some((entry, bit)) = exact else {
            return true;
        };
        let named = entry.entry_id().map(CacheEntryId::get);
        let current = match bit {
            TierBit::Hot => self.hot.lookup_entry(key, None, trace).await,
            TierBit::Cold => self.cold.lookup_entry(key, None, trace).await,
        };
        let Ok(Some((_, hit))) = current else {
            return true;
        };
        let id = hit.entry_id().map(CacheEntryId::get);
        id == named
            || (*bit == TierBit::Hot
                && id.is_some_and(|id| self.shared.clean.holds(entry_hash64(key), id)))
    }

    /// Demote an entry the hot tier gave up, if the budget allows.
    fn demote(
        &self,
        key: CompactCacheKey,
        hot_id: Option<CacheEntryId>,
        meta: CacheMeta,
        body: HitHandler,
    ) {
        spawn_demotion(self.cold, self.shared.clone(), key, hot_id, meta, body);
    }
}

/// For an exact target carrying one of the hybrid's ids: the tier it names
/// and that tier's own identity of the entry.
fn exact_target(target: PurgeTarget<'_>) -> Option<(CacheEntryKey, TierBit)> {
    let PurgeTarget::Exact(entry) = target else {
        return None;
    };
    entry.entry_id().map(|id| {
        let (id, bit) = untag_id(id);
        (CacheEntryKey::identified(entry.key().clone(), id), bit)
    })
}

/// Combine two tiers' purge outcomes into the hybrid's.
fn combine(hot: Option<PurgeOutcome>, cold: Option<PurgeOutcome>) -> PurgeOutcome {
    let tagged = |outcome: Option<PurgeOutcome>, tier| match outcome {
        Some(PurgeOutcome::Purged(id)) => Some(PurgeOutcome::Purged(id.map(|id| tag_id(id, tier)))),
        other => other,
    };
    match (tagged(hot, TierBit::Hot), tagged(cold, TierBit::Cold)) {
        (Some(PurgeOutcome::Expired), _) | (_, Some(PurgeOutcome::Expired)) => {
            PurgeOutcome::Expired
        }
        (Some(p @ PurgeOutcome::Purged(_)), _) | (_, Some(p @ PurgeOutcome::Purged(_))) => p,
        _ => PurgeOutcome::NotFound,
    }
}

/// Start copying an evicted hot entry into `cold` in the background, within
/// the move budget; skipped and counted when there is no room.
fn spawn_demotion<Cold: Tier>(
    cold: &'static Cold,
    shared: Arc<Shared>,
    key: CompactCacheKey,
    hot_id: Option<CacheEntryId>,
    meta: CacheMeta,
    mut body: HitHandler,
) {
    let counters = shared.counters.clone();
    let slot = entry_hash64(&key);
    // A copy promoted from the cold tier and not written since is already
    // there: demoting it would only rewrite the same bytes.
    if shared.clean.take(slot, hot_id.map(CacheEntryId::get)) {
        return;
    }
    let (Ok(permit), Some(guard)) = (shared.admission.move_permit(), shared.moves.begin(slot))
    else {
        incr(&counters.demotion_skips);
        return;
    };
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        incr(&counters.demotion_skips);
        return;
    };
    runtime.spawn(async move {
        let _permit = permit;
        let demoted = copy_into(cold, &key, &meta, &mut body, &guard).await;
        match demoted {
            Ok(true) => {
                tracing::debug!(hybrid = %shared.name, "entry demoted to the cold tier");
                incr(&counters.demotions)
            }
            Ok(false) => incr(&counters.demotion_skips),
            Err(e) => {
                incr(&counters.errors);
                tracing::debug!(hybrid = %shared.name, error = %e, "demotion failed");
            }
        }
        drop(guard);
    });
}

/// Stream `body` into `tier` as a new entry; `Ok(false)` if the move was
/// cancelled before it could publish.
async fn copy_into<T: Tier>(
    tier: &'static T,
    key: &CompactCacheKey,
    meta: &CacheMeta,
    body: &mut HitHandler,
    guard: &MoveGuard,
) -> Result<bool> {
    let span = pingora_cache::trace::Span::inactive().handle();
    let cache_key = cache_key_from_compact(key);
    let mut miss: MissHandler = tier.get_miss_handler(&cache_key, meta, &span).await?;
    while let Some(chunk) = body.read_body().await? {
        miss.write_body(chunk, false).await?;
    }
    miss.write_body(bytes::Bytes::new(), true).await?;
    if !guard.try_finish() {
        return Ok(false);
    }
    miss.finish().await?;
    Ok(true)
}

/// The hot tier's eviction listener in write-back.
struct Demoter<Cold: Tier> {
    cold: &'static Cold,
    shared: Arc<Shared>,
}

impl<Cold: Tier> EvictionListener for Demoter<Cold> {
    fn on_evict(&self, entry: EvictedEntry) {
        spawn_demotion(
            self.cold,
            self.shared.clone(),
            entry.key,
            entry.entry_id,
            entry.meta,
            entry.body,
        );
    }
}

#[async_trait]
impl<Hot: Tier, Cold: Tier> Storage for HybridStorage<Hot, Cold> {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let counters = &self.shared.counters;
        match self.hot.lookup(key, trace).await {
            Ok(Some((meta, hit))) => {
                incr(&counters.hot_hits);
                return Ok(Some((meta, TaggedHit::boxed(hit, TierBit::Hot))));
            }
            Ok(None) => {}
            Err(e) => {
                // A failing hot tier is skipped: the cold tier still serves.
                incr(&counters.errors);
                tracing::warn!(hybrid = %self.shared.name, error = %e, "hot tier lookup failed");
            }
        }
        match self.cold.lookup(key, trace).await {
            Ok(Some((meta, hit))) => {
                incr(&counters.cold_hits);
                let hit = self.cold_hit(key, &meta, hit, trace).await;
                Ok(Some((meta, hit)))
            }
            Ok(None) => {
                incr(&counters.misses);
                Ok(None)
            }
            Err(e) => {
                // A failing cold tier is a miss, not an outage.
                incr(&counters.errors);
                incr(&counters.misses);
                tracing::warn!(hybrid = %self.shared.name, error = %e, "cold tier lookup failed");
                Ok(None)
            }
        }
    }

    async fn lookup_streaming_write(
        &'static self,
        key: &CacheKey,
        streaming_write_tag: Option<&[u8]>,
        trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some((&tier, inner_tag)) = streaming_write_tag.and_then(|t| t.split_first()) else {
            return self.lookup(key, trace).await;
        };
        let inner_tag = (!inner_tag.is_empty()).then_some(inner_tag);
        let (found, bit) = if tier == TierBit::Hot as u8 {
            (
                self.hot.lookup_streaming_write(key, inner_tag, trace).await,
                TierBit::Hot,
            )
        } else {
            (
                self.cold
                    .lookup_streaming_write(key, inner_tag, trace)
                    .await,
                TierBit::Cold,
            )
        };
        Ok(found?.map(|(meta, hit)| (meta, TaggedHit::boxed(hit, bit))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let counters = &self.shared.counters;
        // A move of the old generation must not land on top of this write.
        let slot = entry_hash64(&key.to_compact());
        self.shared.moves.cancel(slot).await;
        self.shared.clean.forget(slot);
        // A body the hot tier would refuse half-way goes to the cold tier
        // alone from the start, so readers following the write (pingora's
        // filling request among them) follow a write that can finish.
        let hot_limit = self.hot.capabilities().max_object_bytes;
        let too_big_for_hot = matches!(
            (tier_core::announced_body_len(meta), hot_limit),
            (Some(len), Some(limit)) if len > limit as u64
        );
        let hot = if too_big_for_hot {
            None
        } else {
            match self.hot.get_miss_handler(key, meta, trace).await {
                Ok(miss) => Some(miss),
                Err(e) => {
                    incr(&counters.errors);
                    tracing::warn!(hybrid = %self.shared.name, error = %e, "hot tier refused a write");
                    None
                }
            }
        };
        let wants_cold = self.shared.admission.policy().writes_cold_on_miss() || hot.is_none();
        let cold = if wants_cold {
            match self.cold.get_miss_handler(key, meta, trace).await {
                Ok(miss) => Some(miss),
                Err(e) => {
                    incr(&counters.errors);
                    if hot.is_none() {
                        return Err(e);
                    }
                    None
                }
            }
        } else {
            None
        };
        let miss = match (hot, cold) {
            (Some(hot), cold) => HybridMiss::new(
                (TierBit::Hot, hot),
                cold.map(|c| (TierBit::Cold, c)),
                counters.clone(),
            ),
            (None, Some(cold)) => HybridMiss::new((TierBit::Cold, cold), None, counters.clone()),
            (None, None) => unreachable!("returned above when both tiers refused"),
        };
        Ok(Box::new(miss))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        purge_type: PurgeType,
        trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let key = target.key();
        let exact = exact_target(target);
        // An id from this hybrid that names no tier's generation cannot match.
        if let PurgeTarget::Exact(CacheEntryKey::Identified { .. }) = target {
            if exact.is_none() {
                return Ok(PurgeOutcome::NotFound);
            }
        }
        self.shared.moves.cancel(entry_hash64(key)).await;
        let counters = &self.shared.counters;
        let absorb = |tier: &str, result: Result<PurgeOutcome>| match result {
            Ok(outcome) => Some(outcome),
            Err(e) => {
                incr(&counters.errors);
                tracing::warn!(hybrid = %self.shared.name, tier, error = %e, "purge failed");
                None
            }
        };
        match purge_type {
            PurgeType::Invalidation => {
                if !self.names_current(key, &exact, trace).await {
                    return Ok(PurgeOutcome::NotFound);
                }
                self.shared.clean.forget(entry_hash64(key));
                let hot = self
                    .hot
                    .purge(PurgeTarget::Active(key), purge_type, trace)
                    .await;
                let cold = self
                    .cold
                    .purge(PurgeTarget::Active(key), purge_type, trace)
                    .await;
                let (hot, cold) = (absorb("hot", hot), absorb("cold", cold));
                if hot.is_none() && cold.is_none() {
                    return Err(pingora_error::Error::explain(
                        pingora_error::ErrorType::InternalError,
                        format!("{}: purge failed in both tiers", self.shared.name),
                    ));
                }
                Ok(combine(hot, cold))
            }
            PurgeType::Eviction => {
                // Eviction leaves the cold copy; an id naming the cold tier
                // evicts from there.
                if matches!(&exact, Some((_, TierBit::Cold))) {
                    let cold = self
                        .cold
                        .purge(
                            Self::target_for(key, &exact, TierBit::Cold),
                            purge_type,
                            trace,
                        )
                        .await?;
                    return Ok(combine(None, Some(cold)));
                }
                let demote = self.shared.admission.policy().demotes_hot_evictions();
                let hot_id = exact.as_ref().and_then(|(entry, _)| entry.entry_id());
                let taken = if demote {
                    self.hot
                        .lookup_entry(key, hot_id, trace)
                        .await
                        .ok()
                        .flatten()
                } else {
                    None
                };
                let hot = self
                    .hot
                    .purge(
                        Self::target_for(key, &exact, TierBit::Hot),
                        purge_type,
                        trace,
                    )
                    .await?;
                if let (Some((meta, body)), PurgeOutcome::Purged(_)) = (taken, hot) {
                    let hot_id = body.entry_id();
                    self.demote(key.clone(), hot_id, meta, body);
                }
                Ok(combine(Some(hot), None))
            }
        }
    }

    async fn expire(
        &'static self,
        target: PurgeTarget<'_>,
        trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let key = target.key();
        self.shared.moves.cancel(entry_hash64(key)).await;
        if !self.names_current(key, &exact_target(target), trace).await {
            return Ok(PurgeOutcome::NotFound);
        }
        let counters = &self.shared.counters;
        let hot = self.hot.expire(PurgeTarget::Active(key), trace).await;
        let cold = self.cold.expire(PurgeTarget::Active(key), trace).await;
        let ok = |r: Result<PurgeOutcome>| r.map_err(|_| incr(&counters.errors)).ok();
        Ok(combine(ok(hot), ok(cold)))
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        trace: &SpanHandle,
    ) -> Result<bool> {
        self.shared
            .moves
            .cancel(entry_hash64(&key.to_compact()))
            .await;
        let counters = &self.shared.counters;
        let hot = self.hot.update_meta(key, meta, trace).await;
        let cold = self.cold.update_meta(key, meta, trace).await;
        let ok = |r: Result<bool>| r.map_err(|_| incr(&counters.errors)).unwrap_or(false);
        Ok(ok(hot) | ok(cold))
    }

    fn support_streaming_partial_write(&self) -> bool {
        self.capabilities().streaming_partial_write
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

#[async_trait]
impl<Hot: Tier, Cold: Tier> Tier for HybridStorage<Hot, Cold> {
    fn tier_name(&self) -> &str {
        &self.shared.name
    }

    fn capabilities(&self) -> Capabilities {
        let (hot, cold) = (self.hot.capabilities(), self.cold.capabilities());
        let mut caps = Capabilities::default();
        // Writes stream into the hot tier first (or only), so readers
        // follow it there; both tiers serve hits, so both must seek.
        caps.streaming_partial_write = hot.streaming_partial_write && cold.streaming_partial_write;
        caps.seek = hot.seek && cold.seek;
        caps.entry_ids = hot.entry_ids && cold.entry_ids;
        caps.expire = hot.expire && cold.expire;
        caps.max_object_bytes = match (hot.max_object_bytes, cold.max_object_bytes) {
            (Some(h), Some(c)) => Some(h.min(c)),
            (h, c) => h.or(c),
        };
        caps
    }

    async fn lookup_entry(
        &'static self,
        key: &CompactCacheKey,
        entry_id: Option<CacheEntryId>,
        trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let wanted = entry_id.map(untag_id);
        if wanted.is_none_or(|(_, bit)| bit == TierBit::Hot) {
            if let Ok(Some((meta, hit))) = self
                .hot
                .lookup_entry(key, wanted.map(|(id, _)| id), trace)
                .await
            {
                return Ok(Some((meta, TaggedHit::boxed(hit, TierBit::Hot))));
            }
        }
        if wanted.is_none_or(|(_, bit)| bit == TierBit::Cold) {
            if let Ok(Some((meta, hit))) = self
                .cold
                .lookup_entry(key, wanted.map(|(id, _)| id), trace)
                .await
            {
                return Ok(Some((meta, TaggedHit::boxed(hit, TierBit::Cold))));
            }
        }
        Ok(None)
    }

    /// Entries leave a hybrid when its cold tier evicts them: the listener
    /// goes there (hot evictions are the hybrid's own business).
    fn set_eviction_listener(&self, listener: Arc<dyn EvictionListener>) -> bool {
        self.cold.set_eviction_listener(listener)
    }

    fn stats(&self) -> TierStats {
        let (hot, cold) = (self.hot.stats(), self.cold.stats());
        let own = self.hybrid_stats();
        let mut stats = TierStats::default();
        stats.entries = hot.entries + cold.entries;
        stats.bytes = hot.bytes + cold.bytes;
        stats.hits = own.hot_hits + own.cold_hits;
        stats.misses = own.misses;
        stats.inserts = hot.inserts + cold.inserts;
        stats.evictions = cold.evictions;
        stats.rejections = hot.rejections + cold.rejections;
        stats.errors = own.errors + hot.errors + cold.errors;
        stats
    }
}
