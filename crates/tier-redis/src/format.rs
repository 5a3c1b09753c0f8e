//! How an entry is laid out in Redis: key names, the head record, checksummed
//! chunks, generations and TTLs. See the crate README for the picture.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use pingora_cache::key::CompactCacheKey;
use pingora_cache::CacheMeta;
use tier_core::key::entry_file_name;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

const MAGIC: &[u8; 8] = b"TIERSRDS";
/// The head format this build writes and reads.
pub(crate) const VERSION: u16 = 1;
const FLAG_INLINE: u16 = 1;
const FIXED: usize = 8 + 2 + 2 + 4 + 8 + 8 + 4 + 4 + 4;
const SUM: usize = 8;

/// The Redis keys of one entry. The entry hash in braces is the Redis Cluster
/// hash tag, so an entry's record and all its chunks share one slot.
#[derive(Debug, Clone)]
pub(crate) struct EntryKeys {
    /// The hash holding the entry's fields (`g`, `n`, `h`, and `b` inline).
    pub(crate) entry: String,
    /// Chunk keys are this, then the generation in hex, `:`, the index.
    pub(crate) chunk_prefix: String,
}

impl EntryKeys {
    pub(crate) fn new(prefix: &str, key: &CompactCacheKey) -> Self {
        let hash = entry_file_name(key);
        EntryKeys {
            entry: format!("{prefix}:{{{hash}}}:e"),
            chunk_prefix: format!("{prefix}:{{{hash}}}:c:"),
        }
    }

    pub(crate) fn chunk(&self, gen: u64, index: u32) -> String {
        format!("{}{}:{index}", self.chunk_prefix, gen_field(gen))
    }
}

/// A generation as the entry's `g` field and chunk keys spell it.
pub(crate) fn gen_field(gen: u64) -> String {
    format!("{gen:x}")
}

pub(crate) fn parse_gen(field: &str) -> Option<u64> {
    u64::from_str_radix(field, 16).ok().filter(|g| *g != 0)
}

/// A new generation id: random per process, then counted, below 2^62 (the
/// hybrid keeps the top bits of ids for itself) and never 0.
pub(crate) fn new_generation() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| RandomState::new().hash_one(std::process::id()));
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let gen = xxh3_64_with_seed(&n.to_le_bytes(), seed) & ((1 << 62) - 1);
    gen.max(1)
}

/// The entry's head: everything but the body, checksummed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) gen: u64,
    pub(crate) body_len: u64,
    pub(crate) chunk_bytes: u32,
    /// Chunks stored under their own keys; 0 when the body is inline.
    pub(crate) chunks: u32,
    pub(crate) inline: bool,
    pub(crate) internal: Vec<u8>,
    pub(crate) header: Vec<u8>,
}

impl Head {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED + self.internal.len() + self.header.len() + SUM);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(if self.inline { FLAG_INLINE } else { 0 }).to_le_bytes());
        out.extend_from_slice(&self.chunk_bytes.to_le_bytes());
        out.extend_from_slice(&self.gen.to_le_bytes());
        out.extend_from_slice(&self.body_len.to_le_bytes());
        out.extend_from_slice(&self.chunks.to_le_bytes());
        out.extend_from_slice(&(self.internal.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.header.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.internal);
        out.extend_from_slice(&self.header);
        let sum = xxh3_64(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    /// Decode and check a head; any inconsistency is an error, never a panic.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Head, String> {
        if bytes.len() < FIXED + SUM {
            return Err(format!("head of {} bytes is too short", bytes.len()));
        }
        let (body, sum) = bytes.split_at(bytes.len() - SUM);
        if xxh3_64(body).to_le_bytes() != sum {
            return Err("head checksum mismatch".into());
        }
        if &body[..8] != MAGIC {
            return Err("bad magic".into());
        }
        let u16_at = |at: usize| u16::from_le_bytes([body[at], body[at + 1]]);
        let u32_at = |at: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&body[at..at + 4]);
            u32::from_le_bytes(b)
        };
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&body[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let version = u16_at(8);
        if version != VERSION {
            return Err(format!(
                "head version {version}, this build reads {VERSION}"
            ));
        }
        let inline = u16_at(10) & FLAG_INLINE != 0;
        let chunk_bytes = u32_at(12);
        let gen = u64_at(16);
        let body_len = u64_at(24);
        let chunks = u32_at(32);
        let internal_len = u32_at(36) as usize;
        let header_len = u32_at(40) as usize;
        if FIXED + internal_len + header_len != body.len() {
            return Err("head lengths do not add up".into());
        }
        if chunk_bytes == 0 || gen == 0 {
            return Err("zero chunk size or generation".into());
        }
        let expected_chunks = if inline {
            (body_len <= u64::from(chunk_bytes)).then_some(0)
        } else {
            u32::try_from(body_len.div_ceil(u64::from(chunk_bytes))).ok()
        };
        if expected_chunks != Some(chunks) {
            return Err("chunk count does not match the body length".into());
        }
        Ok(Head {
            gen,
            body_len,
            chunk_bytes,
            chunks,
            inline,
            internal: body[FIXED..FIXED + internal_len].to_vec(),
            header: body[FIXED + internal_len..].to_vec(),
        })
    }

    /// The expected length of chunk `index`.
    pub(crate) fn chunk_len(&self, index: u32) -> usize {
        let start = u64::from(index) * u64::from(self.chunk_bytes);
        (self.body_len - start).min(u64::from(self.chunk_bytes)) as usize
    }
}

fn chunk_seed(gen: u64, index: u32) -> u64 {
    gen ^ u64::from(index).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// A chunk as stored: its bytes, then a checksum seeded by the generation
/// and the index, so a chunk of another write or another place fails it.
pub(crate) fn frame_chunk(data: &[u8], gen: u64, index: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + SUM);
    out.extend_from_slice(data);
    out.extend_from_slice(&xxh3_64_with_seed(data, chunk_seed(gen, index)).to_le_bytes());
    out
}

/// Check a stored chunk and return its bytes without copying them.
pub(crate) fn unframe_chunk(
    stored: Vec<u8>,
    gen: u64,
    index: u32,
    expected_len: usize,
) -> Result<Bytes, String> {
    if stored.len() != expected_len + SUM {
        return Err(format!(
            "chunk {index} has {} bytes, expected {}",
            stored.len().saturating_sub(SUM),
            expected_len
        ));
    }
    let (data, sum) = stored.split_at(expected_len);
    if xxh3_64_with_seed(data, chunk_seed(gen, index)).to_le_bytes() != sum {
        return Err(format!("chunk {index} checksum mismatch"));
    }
    let mut bytes = Bytes::from(stored);
    bytes.truncate(expected_len);
    Ok(bytes)
}

/// How long Redis keeps an entry: its remaining freshness plus the longer of
/// its stale windows, within `[min, max]`.
pub(crate) fn ttl_for(meta: &CacheMeta, min: Duration, max: Duration) -> Duration {
    let fresh = meta
        .fresh_until()
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    let stale = meta
        .stale_while_revalidate_sec()
        .max(meta.stale_if_error_sec());
    (fresh + Duration::from_secs(u64::from(stale))).clamp(min, max.max(min))
}

/// A duration in whole milliseconds for PX/PEXPIRE, at least 1.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn head(inline: bool, body_len: u64) -> Head {
        Head {
            gen: 0xabc,
            body_len,
            chunk_bytes: 1024,
            chunks: if inline {
                0
            } else {
                body_len.div_ceil(1024) as u32
            },
            inline,
            internal: vec![1, 2, 3],
            header: b"HTTP/1.1 200 OK\r\n\r\n".to_vec(),
        }
    }

    #[test]
    fn heads_round_trip_and_every_flipped_byte_is_caught() {
        for (inline, len) in [(true, 0), (true, 1024), (false, 1025), (false, 10_000)] {
            let h = head(inline, len);
            let bytes = h.encode();
            assert_eq!(Head::decode(&bytes), Ok(h.clone()));
            for i in 0..bytes.len() {
                let mut bad = bytes.clone();
                bad[i] ^= 0x40;
                assert!(Head::decode(&bad).is_err(), "flip at {i} accepted");
            }
            for cut in 0..bytes.len() {
                assert!(
                    Head::decode(&bytes[..cut]).is_err(),
                    "cut at {cut} accepted"
                );
            }
        }
    }

    #[test]
    fn chunks_check_their_place_and_their_bytes() {
        let framed = frame_chunk(b"hello", 7, 3);
        assert_eq!(
            unframe_chunk(framed.clone(), 7, 3, 5).as_deref(),
            Ok(&b"hello"[..])
        );
        assert!(
            unframe_chunk(framed.clone(), 8, 3, 5).is_err(),
            "another generation"
        );
        assert!(
            unframe_chunk(framed.clone(), 7, 2, 5).is_err(),
            "another index"
        );
        assert!(
            unframe_chunk(framed.clone(), 7, 3, 4).is_err(),
            "another length"
        );
        let mut flipped = framed;
        flipped[1] ^= 1;
        assert!(unframe_chunk(flipped, 7, 3, 5).is_err());
    }

    #[test]
    fn generations_are_distinct_nonzero_and_below_2_62() {
        let gens: std::collections::HashSet<u64> = (0..10_000).map(|_| new_generation()).collect();
        assert_eq!(gens.len(), 10_000);
        assert!(gens.iter().all(|g| *g != 0 && *g < 1 << 62));
        assert_eq!(parse_gen(&gen_field(0xdead_beef)), Some(0xdead_beef));
        assert_eq!(parse_gen("zz"), None);
    }

    #[test]
    fn ttl_covers_freshness_and_stale_windows_within_bounds() {
        // meta_fresh_for gives stale-while-revalidate 60 s, stale-if-error 120 s.
        let meta = tier_core::testing::meta_fresh_for(Duration::from_secs(300), &[]);
        let (min, max) = (Duration::from_secs(60), Duration::from_secs(3600));
        let ttl = ttl_for(&meta, min, max);
        assert!(
            ttl > Duration::from_secs(410) && ttl <= Duration::from_secs(420),
            "{ttl:?}"
        );
        assert_eq!(
            ttl_for(&meta, min, Duration::from_secs(100)),
            Duration::from_secs(100)
        );
        let stale = tier_core::testing::meta_fresh_for(Duration::ZERO, &[]);
        assert_eq!(ttl_for(&stale, min, max), Duration::from_secs(120));
        assert_eq!(
            ttl_for(&stale, Duration::from_secs(200), max),
            Duration::from_secs(200)
        );
    }

    #[test]
    fn keys_share_a_hash_tag() {
        let key = pingora_cache::CacheKey::new("/a", "").to_compact();
        let keys = EntryKeys::new("p", &key);
        let tag = |s: &str| s[s.find('{').unwrap_or(0)..=s.find('}').unwrap_or(0)].to_string();
        assert_eq!(tag(&keys.entry), tag(&keys.chunk(5, 9)));
        assert!(keys.chunk(5, 9).ends_with(":5:9"));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Head::decode(&bytes);
            let _ = unframe_chunk(bytes, 1, 0, 10);
        }
    }
}
