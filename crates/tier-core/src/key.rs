//! Keys: the hash that names an entry's file, and compact keys turned back into
//! cache keys.
//!
//! A cache key's raw bytes come from the request (host, path, query) and must
//! never become a path: they can hold `..`, `/`, NUL or be kilobytes long. Every
//! name built here comes from a fixed-size hash, so it is always 32 lowercase hex
//! characters whatever the key.

use std::path::PathBuf;

use pingora_cache::key::{hash_key, CompactCacheKey, HashBinary};
use pingora_cache::CacheKey;

/// The 16-byte hash that identifies an entry across tiers and on disk.
///
/// It covers the primary hash, the variance hash (if any) and the user tag, so
/// two keys that differ in any of them never share a name. The encoding is
/// length-unambiguous: two fixed 16-byte fields, a presence byte, then the tag.
pub fn entry_hash(key: &CompactCacheKey) -> HashBinary {
    let mut buf = Vec::with_capacity(16 + 1 + 16 + key.user_tag.len());
    buf.extend_from_slice(&key.primary);
    match &key.variance {
        Some(variance) => {
            buf.push(1);
            buf.extend_from_slice(variance.as_ref());
        }
        None => buf.push(0),
    }
    buf.extend_from_slice(key.user_tag.as_bytes());
    hash_key(buf)
}

/// [`entry_hash`] as 32 lowercase hex characters: the entry's file name.
pub fn entry_file_name(key: &CompactCacheKey) -> String {
    hex(&entry_hash(key))
}

/// The entry's path relative to a cache directory: two levels of fan-out taken
/// from the hash, then the file name, as in `3f/a2/3fa2…`.
///
/// Two levels of 256 directories keep each directory small (about 150 files
/// at ten million entries) without a deep tree to walk on open.
pub fn entry_relative_path(key: &CompactCacheKey) -> PathBuf {
    let name = entry_file_name(key);
    let mut path = PathBuf::with_capacity(name.len() + 6);
    path.push(&name[0..2]);
    path.push(&name[2..4]);
    path.push(name);
    path
}

/// A well-mixed 64-bit hash of the entry, for choosing a shard, a slot or an
/// index bucket, computed without hashing the key again.
///
/// pingora's primary hash is already a cryptographic hash (blake2b of the
/// key), so its two halves are folded: bytes 0..8 XOR bytes 8..16 rotated
/// left 29; XOR the variance hash folded the same way (rotations 17 and 43,
/// XOR 1) if there is one; XOR the XXH3-64 of the user tag rotated left 7 if
/// the tag is not empty.
///
/// **Stable:** tier-disk keeps this value in its segment summaries, so it
/// must never change (a test pins it).
pub fn entry_hash64(key: &CompactCacheKey) -> u64 {
    let mut h = u64_at(&key.primary, 0) ^ u64_at(&key.primary, 8).rotate_left(29);
    if let Some(v) = &key.variance {
        h ^= u64_at(v.as_ref(), 0).rotate_left(17) ^ u64_at(v.as_ref(), 8).rotate_left(43) ^ 1;
    }
    if !key.user_tag.is_empty() {
        h ^= xxhash_rust::xxh3::xxh3_64(key.user_tag.as_bytes()).rotate_left(7);
    }
    h
}

fn u64_at(b: &[u8; 16], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(word)
}

/// A 64-bit hash of a full cache key, equal to `entry_hash64(&key.to_compact())`.
pub fn cache_key_hash64(key: &CacheKey) -> u64 {
    entry_hash64(&key.to_compact())
}

/// Rebuild a [`CacheKey`] from a compact key, for calling `Storage` methods with
/// a key the eviction manager or a demotion only knows in compact form.
///
/// The result has the same primary hash, variance hash and user tag, so every
/// hash the storage computes (`primary_bin`, `variance_bin`, `combined_bin`)
/// matches the original key. Its raw primary bytes (`primary_key()`) are empty,
/// because the compact key keeps only their hash.
pub fn cache_key_from_compact(key: &CompactCacheKey) -> CacheKey {
    let mut cache_key = CacheKey::new(Vec::new(), key.user_tag.to_string());
    cache_key.set_primary_bin_override(key.primary);
    if let Some(variance) = &key.variance {
        cache_key.set_variance_key(**variance);
    }
    cache_key
}

/// The key a purge or expiry targets, and the entry id it requires (for an
/// exact target that names one).
pub fn target_parts(
    target: pingora_cache::storage::PurgeTarget<'_>,
) -> (&CompactCacheKey, Option<u64>) {
    use pingora_cache::storage::PurgeTarget;
    match target {
        PurgeTarget::Active(key) => (key, None),
        PurgeTarget::Exact(entry) => (entry.key(), entry.entry_id().map(|id| id.get())),
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_cache::key::CacheHashKey;
    use proptest::prelude::*;

    fn key_with(primary: &[u8], variance: Option<&str>, tag: &str) -> CacheKey {
        let mut key = CacheKey::new(primary.to_vec(), tag);
        if let Some(variance) = variance {
            key.set_variance_key(hash_key(variance));
        }
        key
    }

    #[test]
    fn compact_round_trip_keeps_every_hash() {
        let key = key_with(b"example.com/a?b=c", Some("gzip"), "tenant-1");
        let rebuilt = cache_key_from_compact(&key.to_compact());
        assert_eq!(rebuilt.primary_bin(), key.primary_bin());
        assert_eq!(rebuilt.variance_bin(), key.variance_bin());
        assert_eq!(rebuilt.combined_bin(), key.combined_bin());
        assert_eq!(rebuilt.user_tag(), key.user_tag());
        assert_eq!(rebuilt.to_compact(), key.to_compact());
    }

    /// tier-disk keeps `entry_hash64` on disk: these values must never
    /// change.
    #[test]
    fn entry_hash64_is_stable() {
        let cases = [
            (
                key_with(b"example.com/a", None, ""),
                0xa3d0_a55c_b05e_882e_u64,
            ),
            (
                key_with(b"example.com/a", Some("gzip"), ""),
                0xa6fe_59e8_b0e4_ae57,
            ),
            (
                key_with(b"example.com/a", None, "tenant-1"),
                0xa35e_4aea_c64e_e99f,
            ),
        ];
        // The first two were computed apart from this code (Python's blake2b);
        // the third is what tier-disk wrote before this function served it.
        for (key, want) in cases {
            assert_eq!(entry_hash64(&key.to_compact()), want);
        }
    }

    #[test]
    fn entry_hash64_tells_variance_and_tag_apart() {
        let plain = entry_hash64(&key_with(b"/a", None, "").to_compact());
        let varied = entry_hash64(&key_with(b"/a", Some("br"), "").to_compact());
        let tagged = entry_hash64(&key_with(b"/a", None, "t").to_compact());
        let other = entry_hash64(&key_with(b"/b", None, "").to_compact());
        assert_ne!(plain, varied);
        assert_ne!(plain, tagged);
        assert_ne!(varied, tagged);
        assert_ne!(plain, other);
    }

    #[test]
    fn variance_and_user_tag_change_the_name() {
        let plain = key_with(b"/a", None, "").to_compact();
        let varied = key_with(b"/a", Some("br"), "").to_compact();
        let tagged = key_with(b"/a", None, "t").to_compact();
        let names = [
            entry_file_name(&plain),
            entry_file_name(&varied),
            entry_file_name(&tagged),
        ];
        assert_ne!(names[0], names[1]);
        assert_ne!(names[0], names[2]);
        assert_ne!(names[1], names[2]);
    }

    #[test]
    fn relative_path_fans_out_by_hash_prefix() {
        let key = key_with(b"/x", None, "").to_compact();
        let name = entry_file_name(&key);
        let path = entry_relative_path(&key);
        let parts: Vec<_> = path
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            parts,
            vec![name[0..2].to_string(), name[2..4].to_string(), name]
        );
    }

    proptest! {
        #[test]
        fn any_key_gives_a_safe_fixed_length_name(
            primary in proptest::collection::vec(any::<u8>(), 0..512),
            tag in ".{0,64}",
        ) {
            let key = CacheKey::new(primary, tag).to_compact();
            let name = entry_file_name(&key);
            prop_assert_eq!(name.len(), 32);
            prop_assert!(name.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            prop_assert_eq!(entry_relative_path(&key).components().count(), 3);
        }
    }
}
