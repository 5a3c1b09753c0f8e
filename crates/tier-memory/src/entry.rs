//! What the tier stores per entry, and what each entry is charged.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::SystemTime;

use bytes::Bytes;
use pingora_cache::key::{CacheHashKey, CompactCacheKey, HashBinary};
use pingora_cache::{CacheKey, CacheMeta};
use pingora_error::Result;
use pingora_http::ResponseHeader;
use tier_core::BodyHitHandler;

/// A body as stored: one buffer, or the chunks it was written in.
#[derive(Debug, Clone)]
pub(crate) enum Body {
    One(Bytes),
    Chunks(Arc<[Bytes]>),
}

impl Body {
    pub(crate) fn hit_handler(&self) -> BodyHitHandler {
        match self {
            Body::One(bytes) => BodyHitHandler::new(bytes.clone()),
            Body::Chunks(chunks) => BodyHitHandler::from_chunks(chunks.clone()),
        }
    }

    pub(crate) fn n_chunks(&self) -> usize {
        match self {
            Body::One(_) => 1,
            Body::Chunks(chunks) => chunks.len(),
        }
    }
}

/// The serialized header of an empty 200 response: the stand-in header that
/// lets [`StoredMeta::to_cache_meta`] rebuild a `CacheMeta` from its internal
/// fields without decoding the real, compressed header on every hit.
static STAND_IN_HEADER: LazyLock<Option<Vec<u8>>> = LazyLock::new(|| {
    let now = SystemTime::now();
    let header = ResponseHeader::build(200, Some(0)).ok()?;
    CacheMeta::new(now, now, 0, 0, header)
        .serialize()
        .ok()
        .map(|(_, header)| header)
});

/// A meta kept ready for hits: the response header already parsed, and the
/// internal fields either as plain values (the usual case) or serialized.
#[derive(Debug, Clone)]
pub(crate) struct StoredMeta {
    internal: Internal,
    header: ResponseHeader,
    /// Bytes this meta is charged: the serialized internal fields plus an
    /// over-estimate of the parsed header's heap use.
    charge: usize,
}

/// How the internal (non-header) fields are kept.
#[derive(Debug, Clone)]
enum Internal {
    /// Fields that `CacheMeta::new` plus public setters rebuild exactly: an
    /// entry never revalidated (`updated == created`). Rebuilding from these
    /// costs a fifth of decoding the serialized form.
    Plain {
        fresh_until: SystemTime,
        created: SystemTime,
        stale_while_revalidate_sec: u32,
        stale_if_error_sec: u32,
        variance: Option<HashBinary>,
        epoch_override: Option<SystemTime>,
    },
    /// Anything else, decoded on each hit.
    Serialized(Box<[u8]>),
}

impl StoredMeta {
    pub(crate) fn new(meta: &CacheMeta) -> Result<Self> {
        let (internal, _) = meta.serialize()?;
        let header = meta.response_header_copy();
        let charge = internal.len() + header_charge(&header);
        let plain = Internal::Plain {
            fresh_until: meta.fresh_until(),
            created: meta.created(),
            stale_while_revalidate_sec: meta.stale_while_revalidate_sec(),
            stale_if_error_sec: meta.stale_if_error_sec(),
            variance: meta.variance(),
            epoch_override: meta.epoch_override(),
        };
        // Keep the plain form only when it rebuilds the very same bytes, so no
        // field pingora adds later can be lost silently.
        let rebuilt = rebuild_plain(&plain, ResponseHeader::build(200, Some(0))?)
            .and_then(|m| m.serialize().ok());
        let internal = match rebuilt {
            Some((bytes, _)) if bytes == internal => plain,
            _ => Internal::Serialized(internal.into_boxed_slice()),
        };
        Ok(StoredMeta {
            internal,
            header,
            charge,
        })
    }

    /// A `CacheMeta` equal to the stored one, with the parsed header cloned in:
    /// no header decompression or parsing on a hit.
    pub(crate) fn to_cache_meta(&self) -> Result<CacheMeta> {
        if let Some(meta) = rebuild_plain(&self.internal, self.header.clone()) {
            return Ok(meta);
        }
        let Internal::Serialized(internal) = &self.internal else {
            unreachable!("rebuild_plain handles the plain form")
        };
        let stand_in = STAND_IN_HEADER.as_deref().unwrap_or_default();
        let mut meta = CacheMeta::deserialize(internal, stand_in)?;
        *meta.response_header_mut() = self.header.clone();
        Ok(meta)
    }

    pub(crate) fn charge(&self) -> usize {
        self.charge
    }
}

fn rebuild_plain(internal: &Internal, header: ResponseHeader) -> Option<CacheMeta> {
    let Internal::Plain {
        fresh_until,
        created,
        stale_while_revalidate_sec,
        stale_if_error_sec,
        variance,
        epoch_override,
    } = internal
    else {
        return None;
    };
    let mut meta = CacheMeta::new(
        *fresh_until,
        *created,
        *stale_while_revalidate_sec,
        *stale_if_error_sec,
        header,
    );
    if let Some(variance) = variance {
        meta.set_variance(*variance);
    }
    if let Some(epoch) = epoch_override {
        meta.set_epoch_override(*epoch);
    }
    Some(meta)
}

/// An upper bound on a parsed header's heap and inline size.
fn header_charge(header: &ResponseHeader) -> usize {
    // The ResponseHeader struct itself and its map's table, then each header:
    // name and value bytes plus the map's per-entry bookkeeping, twice over
    // for the case-preserving name map pingora keeps beside it.
    let per_header: usize = header
        .headers
        .iter()
        .map(|(name, value)| 2 * name.as_str().len() + value.len() + 128)
        .sum();
    std::mem::size_of::<ResponseHeader>() + 128 + per_header
}

/// Fixed bytes charged per entry for what is not body or meta: the entry
/// struct behind its `Arc`, its slot in the shard's map, its queue slot, its
/// ghost slot once evicted, and allocator rounding.
pub(crate) const ENTRY_OVERHEAD: usize = std::mem::size_of::<Entry>() + 16 // Arc counts
    + 2 * std::mem::size_of::<(u64, usize)>() // map slot at load factor 1/2
    + 32 // queue item
    + 24 // ghost slot
    + 32; // allocator rounding of the entry, key and meta allocations

/// Bytes charged per body chunk: the `Bytes` handle and its allocation's
/// rounding.
pub(crate) const CHUNK_OVERHEAD: usize = std::mem::size_of::<Bytes>() + 16;

/// Bytes a compact key costs beyond the fixed entry.
pub(crate) fn key_charge(key: &CompactCacheKey) -> usize {
    key.user_tag.len() + if key.variance.is_some() { 16 } else { 0 }
}

/// A complete, published entry. Immutable but for its access frequency:
/// `expire` and `update_meta` replace the whole entry under the shard lock.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) key: CompactCacheKey,
    pub(crate) id: u64,
    pub(crate) meta: StoredMeta,
    pub(crate) body: Body,
    pub(crate) body_len: usize,
    pub(crate) charge: usize,
    /// S3-FIFO's access counter, 0 to 3.
    pub(crate) freq: AtomicU8,
}

impl Entry {
    /// Count an access: a plain load, and a store only when the counter moves,
    /// so hot entries do not bounce their cache line between cores.
    #[inline]
    pub(crate) fn touch(&self) {
        let freq = self.freq.load(Ordering::Relaxed);
        if freq < 3 {
            self.freq.store(freq + 1, Ordering::Relaxed);
        }
    }

    /// The same entry with another meta; the charge follows the new meta.
    pub(crate) fn with_meta(&self, meta: StoredMeta) -> Entry {
        let charge = self.charge - self.meta.charge() + meta.charge();
        Entry {
            key: self.key.clone(),
            id: self.id,
            meta,
            body: self.body.clone(),
            body_len: self.body_len,
            charge,
            freq: AtomicU8::new(self.freq.load(Ordering::Relaxed)),
        }
    }

    pub(crate) fn hit_handler(&self) -> BodyHitHandler {
        self.body
            .hit_handler()
            .with_entry_id(Some(pingora_cache::CacheEntryId::new(self.id)))
            .with_eviction_weight(self.charge)
    }

    pub(crate) fn matches(&self, key: &KeyRef<'_>) -> bool {
        KeyRef::from_compact(&self.key) == *key
    }
}

/// The parts of a key the tier compares, borrowed from either key form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyRef<'a> {
    pub(crate) primary: &'a HashBinary,
    pub(crate) variance: Option<&'a HashBinary>,
    pub(crate) user_tag: &'a str,
}

impl<'a> KeyRef<'a> {
    pub(crate) fn from_compact(key: &'a CompactCacheKey) -> Self {
        KeyRef {
            primary: &key.primary,
            variance: key.variance.as_deref(),
            user_tag: &key.user_tag,
        }
    }

    /// The 64-bit slot of this key. The primary and variance are already
    /// blake2 hashes, so mixing their first words is enough; the user tag,
    /// usually empty, is folded in with FNV-1a.
    pub(crate) fn hash64(&self) -> u64 {
        let word = |bytes: &HashBinary| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[..8]);
            u64::from_le_bytes(w)
        };
        let mut h = word(self.primary);
        if let Some(variance) = self.variance {
            h ^= word(variance).rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15;
        }
        if !self.user_tag.is_empty() {
            let mut fnv: u64 = 0xcbf2_9ce4_8422_2325;
            for byte in self.user_tag.bytes() {
                fnv = (fnv ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
            }
            h ^= fnv.rotate_left(17);
        }
        h
    }
}

/// A full key's hashes, computed once per call.
#[derive(Debug)]
pub(crate) struct OwnedKeyHashes<'a> {
    pub(crate) primary: HashBinary,
    pub(crate) variance: Option<HashBinary>,
    pub(crate) user_tag: &'a str,
}

impl<'a> OwnedKeyHashes<'a> {
    pub(crate) fn of(key: &'a CacheKey) -> Self {
        OwnedKeyHashes {
            primary: key.primary_bin(),
            variance: key.variance_bin(),
            user_tag: key.user_tag(),
        }
    }

    pub(crate) fn as_ref(&self) -> KeyRef<'_> {
        KeyRef {
            primary: &self.primary,
            variance: self.variance.as_ref(),
            user_tag: self.user_tag,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_cache::key::hash_key;

    #[test]
    fn to_cache_meta_keeps_every_field() {
        let mut meta = tier_core::testing::meta_with_header("x-a", "1");
        meta.set_variance(hash_key("v"));
        let stored = StoredMeta::new(&meta).expect("stored");
        let back = stored.to_cache_meta().expect("meta");
        assert_eq!(back.fresh_until(), meta.fresh_until());
        assert_eq!(back.created(), meta.created());
        assert_eq!(back.updated(), meta.updated());
        assert_eq!(back.variance(), meta.variance());
        assert_eq!(back.stale_if_error_sec(), meta.stale_if_error_sec());
        assert_eq!(
            back.headers().get("x-a").map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        assert_eq!(
            back.serialize().expect("ser"),
            meta.serialize().expect("ser")
        );
    }

    #[test]
    fn revalidated_meta_keeps_its_updated_time() {
        let mut meta = tier_core::testing::meta_with_header("x-b", "2");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        meta.update_freshness(SystemTime::now() + std::time::Duration::from_secs(60), 1, 2);
        assert_ne!(meta.updated(), meta.created());
        let stored = StoredMeta::new(&meta).expect("stored");
        assert!(matches!(stored.internal, Internal::Serialized(_)));
        let back = stored.to_cache_meta().expect("meta");
        assert_eq!(back.updated(), meta.updated());
        assert_eq!(
            back.serialize().expect("ser"),
            meta.serialize().expect("ser")
        );
    }

    #[test]
    fn fresh_meta_is_kept_in_plain_form() {
        let meta = tier_core::testing::meta_with_header("x-c", "3");
        let stored = StoredMeta::new(&meta).expect("stored");
        assert!(matches!(stored.internal, Internal::Plain { .. }));
    }

    #[test]
    fn key_forms_hash_and_compare_alike() {
        let mut key = CacheKey::new("k", "tag");
        key.set_variance_key(hash_key("gzip"));
        let compact = key.to_compact();
        let owned = OwnedKeyHashes::of(&key);
        assert_eq!(
            owned.as_ref().hash64(),
            KeyRef::from_compact(&compact).hash64()
        );
        let other = CacheKey::new("k", "other-tag");
        assert_ne!(
            OwnedKeyHashes::of(&other).as_ref().hash64(),
            owned.as_ref().hash64()
        );
    }
}
