//! What the tier stores per entry, and what each entry is charged.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use pingora_cache::key::{CacheHashKey, CompactCacheKey, HashBinary};
use pingora_cache::CacheKey;
use tier_core::BodyHitHandler;

pub(crate) use tier_core::meta::StoredMeta;

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

/// A key as an entry keeps it: the primary hash inline, and the variance
/// and user tag, which most keys lack, behind one pointer when present.
#[derive(Debug, Clone)]
pub(crate) struct StoredKey {
    primary: HashBinary,
    extras: Option<Box<KeyExtras>>,
}

#[derive(Debug, Clone)]
struct KeyExtras {
    variance: Option<HashBinary>,
    user_tag: Box<str>,
}

impl StoredKey {
    pub(crate) fn new(key: &CompactCacheKey) -> Self {
        let extras = (key.variance.is_some() || !key.user_tag.is_empty()).then(|| {
            Box::new(KeyExtras {
                variance: key.variance.as_deref().copied(),
                user_tag: key.user_tag.clone(),
            })
        });
        StoredKey {
            primary: key.primary,
            extras,
        }
    }

    pub(crate) fn as_ref(&self) -> KeyRef<'_> {
        KeyRef {
            primary: &self.primary,
            variance: self.extras.as_ref().and_then(|e| e.variance.as_ref()),
            user_tag: self.extras.as_ref().map_or("", |e| &e.user_tag),
        }
    }

    pub(crate) fn to_compact(&self) -> CompactCacheKey {
        CompactCacheKey {
            primary: self.primary,
            variance: self.extras.as_ref().and_then(|e| e.variance.map(Box::new)),
            user_tag: self
                .extras
                .as_ref()
                .map_or_else(Default::default, |e| e.user_tag.clone()),
        }
    }

    /// Heap bytes beyond the entry: the extras' allocation, when present.
    pub(crate) fn charge(&self) -> usize {
        self.extras.as_ref().map_or(0, |e| {
            std::mem::size_of::<KeyExtras>() + e.user_tag.len() + 16
        })
    }
}

/// Fixed bytes charged per entry for what is not body or meta: the entry
/// struct behind its `Arc`, its slot in the shard's map (load factor 1/2 to
/// 7/8, so up to two slots), its queue item (a `VecDeque` grows by doubling),
/// its ghost slot once evicted, and the allocator's headers and rounding of
/// the entry's, body's and meta's allocations.
pub(crate) const ENTRY_OVERHEAD: usize = std::mem::size_of::<Entry>() + 16 // Arc counts
    + 2 * std::mem::size_of::<(u64, usize)>() + 2 // map slots and control bytes
    + 2 * 24 // queue item
    + 24 // ghost slot
    + 3 * 16; // allocator headers and rounding

/// How many passes through the main queue reads can earn an entry: 7 (the
/// paper's 3 kept fewer popular large objects on a mix of sizes; see the
/// policy study in ARCHITECTURE.md).
pub(crate) const MAX_FREQ: u8 = 7;

/// The most one entry may be charged: its charge is kept in 32 bits.
pub(crate) const MAX_CHARGE: usize = u32::MAX as usize;

/// Bytes charged per body chunk: the `Bytes` handle and its allocation's
/// rounding.
pub(crate) const CHUNK_OVERHEAD: usize = std::mem::size_of::<Bytes>() + 16;

/// A complete, published entry. Immutable but for its access frequency:
/// `expire` and `update_meta` replace the whole entry under the shard lock.
/// Kept small (104 bytes): it is the per-entry cost of a cache of small
/// objects.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) key: StoredKey,
    pub(crate) id: u64,
    pub(crate) meta: StoredMeta,
    pub(crate) body: Body,
    /// Bytes charged against the capacity: at most [`MAX_CHARGE`].
    charge: u32,
    /// S3-FIFO's access counter, 0 to [`MAX_FREQ`].
    pub(crate) freq: AtomicU8,
}

impl Entry {
    /// An entry charged `charge` bytes, or `None` if that is over [`MAX_CHARGE`].
    pub(crate) fn new(
        key: StoredKey,
        id: u64,
        meta: StoredMeta,
        body: Body,
        charge: usize,
    ) -> Option<Self> {
        Some(Entry {
            key,
            id,
            meta,
            body,
            charge: u32::try_from(charge).ok()?,
            freq: AtomicU8::new(0),
        })
    }

    pub(crate) fn charge(&self) -> usize {
        self.charge as usize
    }

    /// Count an access: a plain load, and a store only when the counter moves,
    /// so hot entries do not bounce their cache line between cores.
    #[inline]
    pub(crate) fn touch(&self) {
        let freq = self.freq.load(Ordering::Relaxed);
        if freq < MAX_FREQ {
            self.freq.store(freq + 1, Ordering::Relaxed);
        }
    }

    /// The same entry with another meta; the charge follows the new meta.
    /// `None` if the new charge is over [`MAX_CHARGE`].
    pub(crate) fn with_meta(&self, meta: StoredMeta) -> Option<Entry> {
        let charge = self.charge() - self.meta.charge() + meta.charge();
        let entry = Entry::new(self.key.clone(), self.id, meta, self.body.clone(), charge)?;
        entry
            .freq
            .store(self.freq.load(Ordering::Relaxed), Ordering::Relaxed);
        Some(entry)
    }

    pub(crate) fn hit_handler(&self) -> BodyHitHandler {
        self.body
            .hit_handler()
            .with_entry_id(Some(pingora_cache::CacheEntryId::new(self.id)))
            .with_eviction_weight(self.charge())
    }

    pub(crate) fn matches(&self, key: &KeyRef<'_>) -> bool {
        self.key.as_ref() == *key
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
    fn an_entry_stays_small() {
        // The figure the per-entry overhead goal is built on.
        assert!(
            std::mem::size_of::<Entry>() <= 104,
            "{}",
            std::mem::size_of::<Entry>()
        );
    }

    #[test]
    fn a_stored_key_gives_back_the_compact_key_it_was_made_from() {
        let mut key = CacheKey::new("k", "tag");
        key.set_variance_key(hash_key("br"));
        for compact in [key.to_compact(), CacheKey::new("k", "").to_compact()] {
            let stored = StoredKey::new(&compact);
            assert_eq!(stored.to_compact(), compact);
            assert_eq!(stored.as_ref(), KeyRef::from_compact(&compact));
        }
        assert_eq!(
            StoredKey::new(&CacheKey::new("k", "").to_compact()).charge(),
            0
        );
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
