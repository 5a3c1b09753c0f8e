//! The hybrid's entry ids: a tier's id with the tier in the top bit, so an
//! exact purge from pingora's eviction manager reaches the tier and the
//! generation it names, and neighbouring ids stay in one tier. Streaming
//! write tags carry the tier in a first byte.

use pingora_cache::CacheEntryId;

/// Which tier an id or tag belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TierBit {
    Hot = 0,
    Cold = 1,
}

/// Which tier of a hybrid served a hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// The hot tier.
    Hot,
    /// The cold tier.
    Cold,
}

/// Which tier served `hit`, read from the hybrid's entry id; `None` when the
/// tier assigns no ids (a `PlainTier` over a storage without them).
pub fn served_by(hit: &pingora_cache::storage::HitHandler) -> Option<Served> {
    hit.entry_id().map(|id| match untag_id(id).1 {
        TierBit::Hot => Served::Hot,
        TierBit::Cold => Served::Cold,
    })
}

/// For a hybrid whose cold tier is itself a hybrid (memory over disk over
/// Redis, say): which tier of the inner hybrid served a cold hit. `None` for
/// a hit from the outer hot tier, or one without an id.
pub fn served_by_inner(hit: &pingora_cache::storage::HitHandler) -> Option<Served> {
    let (inner, outer) = untag_id(hit.entry_id()?);
    (outer == TierBit::Cold).then(|| match untag_id(inner).1 {
        TierBit::Hot => Served::Hot,
        TierBit::Cold => Served::Cold,
    })
}

const TOP: u64 = 1 << 63;
const NESTED: u64 = 1 << 62;

/// The hybrid's id for a tier's id. A nested hybrid's own tier bit (the top
/// bit) moves down to bit 62, so two levels of nesting keep every id distinct
/// while the tiers' own ids stay below 2^62, as counters do.
pub(crate) fn tag_id(id: CacheEntryId, tier: TierBit) -> CacheEntryId {
    let raw = if id.get() & TOP != 0 {
        (id.get() & !TOP) | NESTED
    } else {
        id.get()
    };
    CacheEntryId::new(raw | (tier as u64) << 63)
}

/// The tier and the tier's own id for one of the hybrid's ids.
pub(crate) fn untag_id(id: CacheEntryId) -> (CacheEntryId, TierBit) {
    let tier = if id.get() & TOP == 0 {
        TierBit::Hot
    } else {
        TierBit::Cold
    };
    let raw = id.get() & !TOP;
    let raw = if raw & NESTED != 0 {
        (raw & !NESTED) | TOP
    } else {
        raw
    };
    (CacheEntryId::new(raw), tier)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_ids_name_both_levels() {
        let hit = |id: CacheEntryId| -> pingora_cache::storage::HitHandler {
            Box::new(tier_core::BodyHitHandler::new(bytes::Bytes::new()).with_entry_id(Some(id)))
        };
        let raw = CacheEntryId::new(77);
        for (inner_tier, want) in [(TierBit::Hot, Served::Hot), (TierBit::Cold, Served::Cold)] {
            let outer = tag_id(tag_id(raw, inner_tier), TierBit::Cold);
            assert_eq!(served_by(&hit(outer)), Some(Served::Cold));
            assert_eq!(served_by_inner(&hit(outer)), Some(want));
        }
        let hot = tag_id(raw, TierBit::Hot);
        assert_eq!(served_by_inner(&hit(hot)), None);
    }

    #[test]
    fn ids_round_trip_with_their_tier() {
        for raw in [0u64, 1, 42, (1 << 61) - 1, 1 << 63, (1 << 63) | 12345] {
            for tier in [TierBit::Hot, TierBit::Cold] {
                let tagged = tag_id(CacheEntryId::new(raw), tier);
                assert_eq!(untag_id(tagged), (CacheEntryId::new(raw), tier));
            }
        }
    }
}
