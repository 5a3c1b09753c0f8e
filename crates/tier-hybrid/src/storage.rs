//! [`HybridStorage`]: two tiers as one `Storage`.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora_cache::eviction::CacheEntryKey;
use pingora_cache::key::CompactCacheKey;
use pingora_cache::storage::{
    HitHandler, MissHandler, PurgeOutcome, PurgeTarget, PurgeType, Storage,
};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheEntryId, CacheKey, CacheMeta};
use pingora_error::Result;
use tier_core::key::{cache_key_from_compact, cache_key_hash64, entry_hash64};
use tier_core::{Capabilities, EvictedEntry, EvictionListener, Tier, TierReport, TierStats};

use crate::hit::{Promotion, TaggedHit, Unpublished};
use crate::ids::{tag_id, untag_id, TierBit};
use crate::miss::{HybridMiss, TierPair, CLIENT_TAG};
use crate::moves::{CleanSet, MoveTicket, Moves};
use crate::passthrough::{client_feed, ClientSlot, FeedRef, Joined};
use crate::policy::{Admission, Pause, Policy, Skip};
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

const FILL_BUCKETS: usize = 1024;

fn fill_bucket(id: u64) -> usize {
    (id.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 54) as usize % FILL_BUCKETS
}

impl Shared {
    /// Register a fill whose readers follow `tier`'s write `id`, dropping
    /// entries of fills that are over.
    pub(crate) fn register_fill(&self, tier: TierBit, id: u64, fill: FeedRef) {
        let mut fills = self.fills.lock();
        if fills.len() >= 64 {
            fills.retain(|(_, id), fill| {
                let live = fill.is_live();
                if !live {
                    self.fill_buckets[fill_bucket(*id)].fetch_sub(1, Ordering::AcqRel);
                }
                live
            });
        }
        if fills.insert((tier as u8, id), fill).is_none() {
            self.fill_buckets[fill_bucket(id)].fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Stop offering the fill of `tier`'s write `id`.
    pub(crate) fn forget_fill(&self, tier: TierBit, id: u64) {
        if self.fills.lock().remove(&(tier as u8, id)).is_some() {
            self.fill_buckets[fill_bucket(id)].fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A meta as `CacheMeta::serialize` gives it: internal part and header.
pub(crate) type SerializedMeta = (Vec<u8>, Vec<u8>);

/// What the hybrid keeps besides its tiers; shared with its hits, misses
/// and demotion tasks.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) name: String,
    pub(crate) admission: Admission,
    pub(crate) moves: Arc<Moves>,
    pub(crate) counters: Counters,
    pub(crate) clean: CleanSet,
    /// Client readers of misses in progress, until pingora takes them with
    /// `lookup_streaming_write`. The meta is kept serialized (`CacheMeta` is
    /// not `Clone`).
    pub(crate) clients: Mutex<HashMap<u64, (SerializedMeta, ClientSlot)>>,
    pub(crate) next_client: AtomicU64,
    /// Fills in progress by the tier their readers follow and that tier's
    /// write id, so a request that finds such a write joins the fill.
    pub(crate) fills: Mutex<HashMap<(u8, u64), FeedRef>>,
    /// Entries of `fills` by id bucket: a hit locks `fills` only when its
    /// id's bucket holds one (one atomic load otherwise).
    pub(crate) fill_buckets: Box<[AtomicU64]>,
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
            counters: Counters::default(),
            clean: CleanSet::default(),
            clients: Mutex::default(),
            next_client: AtomicU64::new(1),
            fills: Mutex::default(),
            fill_buckets: (0..FILL_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
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

    /// Client readers of misses that pingora has not taken yet (for tests:
    /// none outlives its miss).
    #[doc(hidden)]
    pub fn client_readers_waiting(&self) -> usize {
        self.shared.clients.lock().len()
    }

    /// Wait until no promotion or demotion is in flight (for tests and
    /// orderly shutdown).
    pub async fn wait_for_moves(&self) {
        self.shared.moves.wait_idle().await
    }

    /// The two tiers as plain storages, by [`TierBit`].
    fn tiers(&self) -> TierPair {
        [self.hot, self.cold]
    }

    /// A lookup in `tier`, without the writes of moves still in progress:
    /// readers get a complete entry instead (the cold copy of a promotion),
    /// or a miss.
    fn unless_moving(
        &self,
        tier: TierBit,
        slot: impl FnOnce() -> u64,
        found: Result<Option<(CacheMeta, HitHandler)>>,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let moves = &self.shared.moves;
        match found {
            Ok(Some((_, hit)))
                if moves.any_writing()
                    && moves.is_move_write(slot(), tier, hit.entry_id().map(CacheEntryId::get)) =>
            {
                Ok(None)
            }
            other => other,
        }
    }

    /// A hit of `tier`: if it is the write of a fill in progress, the reader
    /// that joins the fill (so it is served whole even where the tier stops
    /// storing the body); `None` when the fill cannot take a reader from the
    /// start any more, and the request must miss.
    fn join_fill(&self, tier: TierBit, hit: HitHandler) -> Option<HitHandler> {
        let Some(id) = hit.entry_id() else {
            return Some(hit);
        };
        if self.shared.fill_buckets[fill_bucket(id.get())].load(Ordering::Acquire) == 0 {
            return Some(hit);
        }
        let fill = self
            .shared
            .fills
            .lock()
            .get(&(tier as u8, id.get()))
            .cloned();
        let Some(fill) = fill else {
            return Some(hit);
        };
        match fill.join(hit) {
            Joined::Reader(reader) => Some(Box::new(reader)),
            Joined::NotAFill(hit) => Some(hit),
            Joined::Refused => None,
        }
    }

    /// A cold hit: start copying it into the hot tier if the policy admits
    /// it. `ticket` was taken before the cold lookup, so the copy publishes
    /// only if nothing changed the key since it was read.
    async fn cold_hit(
        &'static self,
        key: &CacheKey,
        slot: u64,
        ticket: Option<MoveTicket>,
        meta: &CacheMeta,
        hit: HitHandler,
        trace: &SpanHandle,
    ) -> HitHandler {
        let counters = &self.shared.counters;
        let Some(mut ticket) = ticket else {
            incr(&counters.promotions_key_busy);
            return TaggedHit::boxed(hit, TierBit::Cold);
        };
        let weight = hit.get_eviction_weight() as u64;
        let size_hint = (weight > 0)
            .then_some(weight)
            .or_else(|| tier_core::announced_body_len(meta));
        let permit = match self.shared.admission.admit_promotion(slot, size_hint) {
            Ok(permit) => permit,
            Err(skip) => {
                incr(match skip {
                    Skip::NotAdmitted => &counters.promotions_not_admitted,
                    Skip::Busy => &counters.promotions_no_permit,
                });
                return TaggedHit::boxed(hit, TierBit::Cold);
            }
        };
        // Before the hot write exists, so no reader is handed it.
        ticket.writing(TierBit::Hot, None);
        match self.hot.get_private_miss_handler(key, meta, trace).await {
            Ok(hot_miss) => {
                ticket.writing(TierBit::Hot, hot_miss.entry_id().map(CacheEntryId::get));
                Box::new(TaggedHit {
                    inner: hit,
                    tier: TierBit::Cold,
                    promotion: Some(Promotion {
                        hot_miss,
                        ticket,
                        _permit: permit,
                        copied: 0,
                        shared: self.shared.clone(),
                        slot,
                        outcome: Unpublished(Some(self.shared.clone())),
                    }),
                })
            }
            Err(e) => {
                incr(&counters.errors);
                tracing::debug!(hybrid = %self.shared.name, error = %e, "promotion could not start");
                TaggedHit::boxed(hit, TierBit::Cold)
            }
        }
    }

    /// A write of a miss into one tier or both; a `private` one (the hybrid
    /// is itself a tier of an outer hybrid, which is moving an entry) is
    /// private in each tier.
    async fn start_write(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        private: bool,
        trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let counters = &self.shared.counters;
        let policy = self.shared.admission.policy();
        if policy.demotes_hot_evictions() {
            // Back-pressure: this write will push entries out of the hot
            // tier, and their demotions need room to wait.
            self.shared.admission.wait_for_backlog_room().await;
        }
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
            match Self::write_into(self.hot, private, key, meta, trace).await {
                Ok(miss) => Some(miss),
                Err(e) => {
                    incr(&counters.errors);
                    tracing::warn!(hybrid = %self.shared.name, entry = %tier_core::key::entry_file_name(&key.to_compact()), error = %e, "hot tier refused a write");
                    None
                }
            }
        };
        let wants_cold = policy.writes_cold_on_miss() || hot.is_none();
        let cold = if wants_cold {
            match Self::write_into(self.cold, private, key, meta, trace).await {
                Ok(miss) => Some(miss),
                Err(e) => {
                    incr(&counters.errors);
                    tracing::debug!(hybrid = %self.shared.name, error = %e, "cold tier refused a write");
                    None
                }
            }
        } else {
            None
        };
        let (primary, secondary) = match (hot, cold) {
            (Some(hot), cold) => (Some((TierBit::Hot, hot)), cold.map(|c| (TierBit::Cold, c))),
            (None, cold) => (cold.map(|c| (TierBit::Cold, c)), None),
        };
        // The filling client follows this write, not a tier's: a tier that
        // gives up on the body (or none taking it at all) does not cut it
        // off. A private write (an outer hybrid's move) has no client.
        let client = if !private && self.support_streaming_partial_write() {
            let client_id = self.shared.next_client.fetch_add(1, Ordering::Relaxed);
            let (writer, slot) = client_feed();
            if let Some((tier, Some(id))) = primary.as_ref().map(|(t, m)| (*t, m.entry_id())) {
                self.shared.register_fill(tier, id.get(), writer.feed_ref());
            }
            let serialized = meta.serialize()?;
            self.shared
                .clients
                .lock()
                .insert(client_id, (serialized, slot));
            Some((client_id, writer))
        } else {
            None
        };
        let limit = |caps: Capabilities| caps.max_object_bytes.map(|n| n as u64);
        let limits = [
            limit(self.hot.capabilities()),
            limit(self.cold.capabilities()),
        ];
        let compact = key.to_compact();
        let slot = entry_hash64(&compact);
        Ok(Box::new(HybridMiss::new(
            primary,
            secondary,
            client,
            limits,
            self.shared.clone(),
            self.tiers(),
            compact,
            slot,
        )))
    }

    async fn write_into<T: Tier>(
        tier: &'static T,
        private: bool,
        key: &CacheKey,
        meta: &CacheMeta,
        trace: &SpanHandle,
    ) -> Result<MissHandler> {
        if private {
            tier.get_private_miss_handler(key, meta, trace).await
        } else {
            tier.get_miss_handler(key, meta, trace).await
        }
    }

    /// Follow the write a tier's tag (the hybrid's tier byte, then the
    /// tier's own tag) names.
    async fn follow(
        &'static self,
        key: &CacheKey,
        tag: &[u8],
        trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some((&tier, inner_tag)) = tag.split_first() else {
            return Ok(None);
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
            TierBit::Hot => {
                let found = self.hot.lookup_entry(key, None, trace).await;
                self.unless_moving(TierBit::Hot, || entry_hash64(key), found)
            }
            TierBit::Cold => {
                let found = self.cold.lookup_entry(key, None, trace).await;
                self.unless_moving(TierBit::Cold, || entry_hash64(key), found)
            }
        };
        let Ok(Some((_, hit))) = current else {
            return true;
        };
        let id = hit.entry_id().map(CacheEntryId::get);
        id == named
            || (*bit == TierBit::Hot
                && id.is_some_and(|id| self.shared.clean.holds(entry_hash64(key), id)))
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

/// Start copying an evicted hot entry into `cold` in the background. The
/// demotion waits in the bounded backlog for a move permit; it is shed and
/// counted when the backlog is full. `ticket` is the move's, taken when the
/// entry left the hot tier; without one, one is taken now.
fn spawn_demotion<Cold: Tier>(
    cold: &'static Cold,
    shared: Arc<Shared>,
    entry: EvictedEntry,
    ticket: Option<MoveTicket>,
) {
    let counters = &shared.counters;
    let slot = entry_hash64(&entry.key);
    // A copy promoted from the cold tier and not written since is already
    // there: demoting it would only rewrite the same bytes.
    if shared
        .clean
        .take(slot, entry.entry_id.map(CacheEntryId::get))
    {
        return;
    }
    let Some(ticket) = ticket.or_else(|| shared.moves.ticket(slot)) else {
        incr(&counters.demotion_skips);
        return;
    };
    let Some(place) = shared.admission.enter_backlog() else {
        incr(&counters.demotions_shed);
        tracing::debug!(hybrid = %shared.name, "demotion backlog full: an evicted entry is shed");
        return;
    };
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        incr(&counters.demotions_shed);
        return;
    };
    let mut ticket = ticket;
    runtime.spawn(async move {
        shared.admission.pause(Pause::Listener).await;
        let Some(permit) = shared.admission.wait_move_permit().await else {
            return;
        };
        drop(place);
        shared.admission.pause(Pause::Permit).await;
        let EvictedEntry {
            key,
            meta,
            mut body,
            ..
        } = entry;
        let demoted = if ticket.is_stale() {
            Ok(false)
        } else {
            copy_into(cold, &shared, &key, &meta, &mut body, &mut ticket).await
        };
        drop(permit);
        let counters = &shared.counters;
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
        drop(ticket);
    });
}

/// Stream `body` into `tier` as a new entry; `Ok(false)` if the key changed
/// since the move's ticket was taken, so nothing was published.
async fn copy_into<T: Tier>(
    tier: &'static T,
    shared: &Shared,
    key: &CompactCacheKey,
    meta: &CacheMeta,
    body: &mut HitHandler,
    ticket: &mut MoveTicket,
) -> Result<bool> {
    let span = pingora_cache::trace::Span::inactive().handle();
    let cache_key = cache_key_from_compact(key);
    // Before the cold write exists, so no reader is handed it.
    ticket.writing(TierBit::Cold, None);
    let mut miss: MissHandler = tier
        .get_private_miss_handler(&cache_key, meta, &span)
        .await?;
    ticket.writing(TierBit::Cold, miss.entry_id().map(CacheEntryId::get));
    while let Some(chunk) = body.read_body().await? {
        if ticket.is_stale() {
            return Ok(false);
        }
        miss.write_body(chunk, false).await?;
    }
    miss.write_body(bytes::Bytes::new(), true).await?;
    shared.admission.pause(Pause::Publish).await;
    ticket.publish(miss.finish()).await
}

/// The hot tier's eviction listener in write-back.
struct Demoter<Cold: Tier> {
    cold: &'static Cold,
    shared: Arc<Shared>,
}

impl<Cold: Tier> EvictionListener for Demoter<Cold> {
    /// Runs while the hot tier still orders operations on the key (the
    /// listener's contract), so the ticket taken here is ordered with any
    /// change of the key that would find the entry gone.
    fn on_evict(&self, entry: EvictedEntry) {
        spawn_demotion(self.cold, self.shared.clone(), entry, None);
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
        let found = self.hot.lookup(key, trace).await;
        match self.unless_moving(TierBit::Hot, || cache_key_hash64(key), found) {
            Ok(Some((meta, hit))) => {
                let Some(hit) = self.join_fill(TierBit::Hot, hit) else {
                    incr(&counters.misses);
                    return Ok(None);
                };
                incr(&counters.hot_hits);
                return Ok(Some((meta, TaggedHit::boxed(hit, TierBit::Hot))));
            }
            Ok(None) => {}
            Err(e) => {
                // A failing hot tier is skipped: the cold tier still serves.
                incr(&counters.errors);
                tracing::warn!(hybrid = %self.shared.name, entry = %tier_core::key::entry_file_name(&key.to_compact()), error = %e, "hot tier lookup failed");
            }
        }
        // The key's primary hash is computed once here and handed on, so the
        // cold tier (and a promotion's hot write) does not hash the key again.
        let compact = key.to_compact();
        let slot = entry_hash64(&compact);
        let mut hashed = key.clone();
        hashed.set_primary_bin_override(compact.primary);
        let key = &hashed;
        // Taken before the cold tier is read, so a promotion of what is read
        // publishes only if nothing changed the key since.
        let ticket = if self.shared.admission.policy().may_promote() {
            self.shared.moves.ticket(slot)
        } else {
            None
        };
        let found = self.cold.lookup(key, trace).await;
        match self.unless_moving(TierBit::Cold, || slot, found) {
            Ok(Some((meta, hit))) => {
                let Some(hit) = self.join_fill(TierBit::Cold, hit) else {
                    incr(&counters.misses);
                    return Ok(None);
                };
                incr(&counters.cold_hits);
                let hit = self.cold_hit(key, slot, ticket, &meta, hit, trace).await;
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
                tracing::warn!(hybrid = %self.shared.name, entry = %tier_core::key::entry_file_name(&compact), error = %e, "cold tier lookup failed");
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
        let mut client = None;
        let mut streaming_write_tag = streaming_write_tag;
        if let Some([CLIENT_TAG, rest @ ..]) = streaming_write_tag {
            let (client_id, tier_tag) = rest.split_at(rest.len().min(8));
            let client_id = u64::from_le_bytes(client_id.try_into().unwrap_or_default());
            client = self.shared.clients.lock().remove(&client_id);
            // Taken already, a later follower of the same write follows the
            // tier it is written to, if any.
            streaming_write_tag = Some(tier_tag);
        }
        if let Some(((internal, header), slot)) = client {
            // The filling client: the tier's write it follows, if any,
            // wrapped so the rest comes from the miss where the tier stops.
            let follower = match streaming_write_tag {
                Some(tier_tag) if !tier_tag.is_empty() => self.follow(key, tier_tag, trace).await?,
                _ => None,
            };
            let entry_id = follower.as_ref().and_then(|(_, hit)| hit.entry_id());
            let meta = CacheMeta::deserialize(&internal, &header)?;
            let Some(reader) = slot.reader(follower.map(|(_, hit)| hit), entry_id) else {
                return Ok(None);
            };
            return Ok(Some((meta, Box::new(reader))));
        }
        match streaming_write_tag {
            Some(tier_tag) if !tier_tag.is_empty() => self.follow(key, tier_tag, trace).await,
            Some(_) => Ok(None),
            None => self.lookup(key, trace).await,
        }
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        trace: &SpanHandle,
    ) -> Result<MissHandler> {
        self.start_write(key, meta, false, trace).await
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
        let slot = entry_hash64(key);
        let change = self.shared.moves.exclusive(slot).await;
        let counters = &self.shared.counters;
        let absorb = |tier: &str, result: Result<PurgeOutcome>| match result {
            Ok(outcome) => Some(outcome),
            Err(e) => {
                incr(&counters.errors);
                tracing::warn!(hybrid = %self.shared.name, tier, entry = %tier_core::key::entry_file_name(key), error = %e, "purge failed");
                None
            }
        };
        match purge_type {
            PurgeType::Invalidation => {
                if !self.names_current(key, &exact, trace).await {
                    return Ok(PurgeOutcome::NotFound);
                }
                self.shared.clean.forget(slot);
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
                // The demotion's ticket is taken inside this change, before
                // the entry is read, so any later change refuses its publish.
                let ticket = demote.then(|| change.ticket()).flatten();
                let taken = match &ticket {
                    Some(_) => self
                        .hot
                        .lookup_entry(key, hot_id, trace)
                        .await
                        .ok()
                        .flatten(),
                    None => None,
                };
                let hot = self
                    .hot
                    .purge(
                        Self::target_for(key, &exact, TierBit::Hot),
                        purge_type,
                        trace,
                    )
                    .await?;
                drop(change);
                if let (Some((meta, body)), PurgeOutcome::Purged(_)) = (taken, hot) {
                    let evicted = EvictedEntry {
                        key: key.clone(),
                        entry_id: body.entry_id(),
                        meta,
                        body,
                    };
                    spawn_demotion(self.cold, self.shared.clone(), evicted, ticket);
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
        let _change = self.shared.moves.exclusive(entry_hash64(key)).await;
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
        let _change = self.shared.moves.exclusive(cache_key_hash64(key)).await;
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
        caps.private_writes = hot.private_writes && cold.private_writes;
        // What this hybrid can store whatever the body announces: in
        // write-through, a body too big for one tier goes to the other; in
        // write-back, one that grows past the hot tier's limit while it
        // streams is stored nowhere (announced ones go to the cold tier).
        caps.max_object_bytes = if self.shared.admission.policy().writes_cold_on_miss() {
            match (hot.max_object_bytes, cold.max_object_bytes) {
                (Some(h), Some(c)) => Some(h.max(c)),
                _ => None,
            }
        } else {
            hot.max_object_bytes
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
            let found = self
                .hot
                .lookup_entry(key, wanted.map(|(id, _)| id), trace)
                .await;
            if let Ok(Some((meta, hit))) =
                self.unless_moving(TierBit::Hot, || entry_hash64(key), found)
            {
                return Ok(Some((meta, TaggedHit::boxed(hit, TierBit::Hot))));
            }
        }
        if wanted.is_none_or(|(_, bit)| bit == TierBit::Cold) {
            let found = self
                .cold
                .lookup_entry(key, wanted.map(|(id, _)| id), trace)
                .await;
            if let Ok(Some((meta, hit))) =
                self.unless_moving(TierBit::Cold, || entry_hash64(key), found)
            {
                return Ok(Some((meta, TaggedHit::boxed(hit, TierBit::Cold))));
            }
        }
        Ok(None)
    }

    async fn get_private_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        trace: &SpanHandle,
    ) -> Result<MissHandler> {
        self.start_write(key, meta, true, trace).await
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

    /// The hybrid's own counters, then its hot and cold tiers' reports as
    /// its levels (a hybrid below it adds its own).
    fn report(&self) -> TierReport {
        let own = self.hybrid_stats();
        TierReport::new(self.tier_name(), self.stats())
            .counter("hot_hits", "Lookups served by the hot tier", own.hot_hits)
            .counter(
                "cold_hits",
                "Lookups served by the cold tier",
                own.cold_hits,
            )
            .counter("misses", "Lookups neither tier served", own.misses)
            .counter(
                "promotions",
                "Cold entries copied into the hot tier",
                own.promotions,
            )
            .counter(
                "promotions_not_admitted",
                "Cold hits the promotion policy did not admit",
                own.promotions_not_admitted,
            )
            .counter(
                "promotions_no_permit",
                "Cold hits admitted but not promoted: the limit on moves in flight was reached",
                own.promotions_no_permit,
            )
            .counter(
                "promotions_key_busy",
                "Cold hits not promoted: the key was already moving or changing",
                own.promotions_key_busy,
            )
            .counter(
                "promotions_abandoned",
                "Promotions given up: the reader stopped or the key changed",
                own.promotions_abandoned,
            )
            .counter(
                "demotions",
                "Hot entries copied into the cold tier",
                own.demotions,
            )
            .counter(
                "demotion_skips",
                "Hot evictions not demoted: the key was moving or changed",
                own.demotion_skips,
            )
            .counter(
                "demotions_shed",
                "Hot evictions dropped: the demotion backlog was full",
                own.demotions_shed,
            )
            .counter(
                "passed_through",
                "Misses no tier stored, served from the pass-through",
                own.passed_through,
            )
            .counter(
                "errors_absorbed",
                "Errors of either tier the hybrid absorbed",
                own.errors,
            )
            .level(self.hot.report())
            .level(self.cold.report())
    }
}
