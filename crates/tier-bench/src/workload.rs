//! Seeded workloads: which key each operation touches, and each key's body.
//!
//! A body is its key's 256-byte pattern repeated, so any chunk of any hit can be
//! checked byte for byte against the key it was asked for, without keeping
//! every body in memory.

use bytes::Bytes;
use pingora_cache::CacheKey;
use rand::rngs::SmallRng;
use rand::{Rng, RngExt, SeedableRng};
use rand_distr::Zipf;

const PATTERN: usize = 256;

/// The sizes of the bodies in a workload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SizeClass {
    /// Every body has exactly this many bytes.
    Fixed(usize),
    /// 1–16 KiB.
    Small,
    /// 64 KiB–1 MiB.
    Medium,
    /// 1–10 MiB.
    Large,
    /// A CDN's mix: 80% of keys small, 15% medium, 5% large.
    Mix,
}

impl SizeClass {
    /// The inclusive range of body sizes.
    pub fn bounds(self) -> (usize, usize) {
        match self {
            SizeClass::Fixed(n) => (n, n),
            SizeClass::Small => (1 << 10, 16 << 10),
            SizeClass::Medium => (64 << 10, 1 << 20),
            SizeClass::Large => (1 << 20, 10 << 20),
            SizeClass::Mix => (1 << 10, 10 << 20),
        }
    }

    /// The class key `idx` of a mix falls in (itself for the others).
    fn class_of(self, idx: u64) -> SizeClass {
        if self != SizeClass::Mix {
            return self;
        }
        match SmallRng::seed_from_u64(idx ^ 0x8015_0005).random_range(0..100) {
            0..80 => SizeClass::Small,
            80..95 => SizeClass::Medium,
            _ => SizeClass::Large,
        }
    }

    /// A short label for reports.
    pub fn label(self) -> String {
        match self {
            SizeClass::Fixed(n) if n % 1024 == 0 => format!("{} KiB", n / 1024),
            SizeClass::Fixed(n) => format!("{n} B"),
            SizeClass::Small => "small 1-16 KiB".into(),
            SizeClass::Medium => "medium 64 KiB-1 MiB".into(),
            SizeClass::Large => "large 1-10 MiB".into(),
            SizeClass::Mix => "80/15/5 mix of small, medium and large".into(),
        }
    }
}

/// Keys drawn from a Zipf distribution over `n_keys`, with bodies of a size class.
#[derive(Debug, Clone)]
pub struct Workload {
    /// How many distinct keys.
    pub n_keys: u64,
    /// Zipf exponent: 0 is uniform, 1.2 is very skewed.
    pub alpha: f64,
    /// Body sizes.
    pub size: SizeClass,
    /// Seed for the trace; the same seed gives the same trace.
    pub seed: u64,
}

impl Workload {
    /// `n_ops` key indices, most popular first in rank (index 0 is the hottest).
    pub fn trace(&self, n_ops: usize) -> Vec<u64> {
        let mut rng = SmallRng::seed_from_u64(self.seed);
        let zipf = Zipf::new(self.n_keys as f64, self.alpha).ok();
        (0..n_ops)
            .map(|_| match &zipf {
                // Zipf samples ranks 1..=n as floats.
                Some(zipf) => (rng.sample(zipf) as u64)
                    .saturating_sub(1)
                    .min(self.n_keys - 1),
                None => rng.random_range(0..self.n_keys),
            })
            .collect()
    }

    /// The cache key of key index `idx`.
    pub fn key(&self, idx: u64) -> CacheKey {
        CacheKey::new(format!("bench/{idx}"), "")
    }

    /// The body length of key index `idx`, fixed for the key.
    pub fn body_len(&self, idx: u64) -> usize {
        let (lo, hi) = self.size.class_of(idx).bounds();
        if lo == hi {
            return lo;
        }
        let mut rng = SmallRng::seed_from_u64(idx ^ 0x5151_5151);
        rng.random_range(lo..=hi)
    }

    /// The whole body of key index `idx`.
    pub fn body(&self, idx: u64) -> Bytes {
        let pattern = pattern(idx);
        let len = self.body_len(idx);
        let mut body = Vec::with_capacity(len);
        while body.len() < len {
            let take = (len - body.len()).min(PATTERN);
            body.extend_from_slice(&pattern[..take]);
        }
        Bytes::from(body)
    }
}

/// The 256 bytes key index `idx`'s body repeats.
pub fn pattern(idx: u64) -> [u8; PATTERN] {
    let mut out = [0u8; PATTERN];
    SmallRng::seed_from_u64(idx).fill_bytes(&mut out);
    out
}

/// A key's pattern repeated to cover `len` bytes plus one pattern, so any
/// chunk up to `len` bytes is checked with a single comparison.
#[derive(Debug)]
pub struct Expected {
    repeated: Vec<u8>,
}

impl Expected {
    /// The expected bytes of key `idx`, for chunks of up to `len` bytes.
    pub fn new(idx: u64, len: usize) -> Self {
        let pattern = pattern(idx);
        let total = len + PATTERN;
        let mut repeated = Vec::with_capacity(total);
        while repeated.len() < total {
            let take = (total - repeated.len()).min(PATTERN);
            repeated.extend_from_slice(&pattern[..take]);
        }
        Expected { repeated }
    }

    /// Whether `chunk`, found at byte `offset` of the body, is right.
    pub fn check(&self, offset: usize, chunk: &[u8]) -> bool {
        let phase = offset % PATTERN;
        let mut at = 0;
        // Chunks longer than the expansion are compared in pieces.
        let span = self.repeated.len() - PATTERN;
        while at < chunk.len() {
            let take = (chunk.len() - at).min(span.max(1));
            let phase_here = (phase + at) % PATTERN;
            if chunk[at..at + take] != self.repeated[phase_here..phase_here + take] {
                return false;
            }
            at += take;
        }
        true
    }
}

/// Check that `chunk`, found at byte `offset` of key `idx`'s body, is right.
pub fn verify_chunk(pattern: &[u8; PATTERN], offset: usize, chunk: &[u8]) -> bool {
    let mut at = 0;
    while at < chunk.len() {
        let phase = (offset + at) % PATTERN;
        let take = (PATTERN - phase).min(chunk.len() - at);
        if chunk[at..at + take] != pattern[phase..phase + take] {
            return false;
        }
        at += take;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_verify_in_any_chunking_and_differ_by_key() {
        let w = Workload {
            n_keys: 10,
            alpha: 1.0,
            size: SizeClass::Fixed(1000),
            seed: 1,
        };
        let body = w.body(3);
        assert_eq!(body.len(), 1000);
        let p = pattern(3);
        for split in [1, 7, 256, 300] {
            let mut offset = 0;
            for chunk in body.chunks(split) {
                assert!(verify_chunk(&p, offset, chunk));
                offset += chunk.len();
            }
        }
        assert!(!verify_chunk(&pattern(4), 0, &body));
        let mut corrupt = body.to_vec();
        corrupt[999] ^= 1;
        assert!(!verify_chunk(&p, 0, &corrupt));
    }

    #[test]
    fn expected_checks_like_the_pattern_at_any_offset() {
        let w = Workload {
            n_keys: 10,
            alpha: 1.0,
            size: SizeClass::Fixed(5000),
            seed: 1,
        };
        let body = w.body(5);
        let expected = Expected::new(5, 1024);
        for split in [1, 100, 1024, 3000] {
            let mut offset = 0;
            for chunk in body.chunks(split) {
                assert!(expected.check(offset, chunk));
                offset += chunk.len();
            }
        }
        let mut bad = body.to_vec();
        bad[4000] ^= 1;
        assert!(!expected.check(0, &bad));
        assert!(!Expected::new(6, 1024).check(0, &body));
    }

    #[test]
    fn trace_is_seeded_and_skewed() {
        let w = Workload {
            n_keys: 1000,
            alpha: 1.0,
            size: SizeClass::Small,
            seed: 7,
        };
        let a = w.trace(10_000);
        assert_eq!(a, w.trace(10_000));
        assert!(a.iter().all(|&k| k < 1000));
        let hottest = a.iter().filter(|&&k| k == 0).count();
        let coldest_half = a.iter().filter(|&&k| k >= 500).count();
        assert!(hottest > coldest_half / 10, "{hottest} vs {coldest_half}");
    }

    #[test]
    fn size_classes_stay_in_bounds() {
        for size in [SizeClass::Small, SizeClass::Medium, SizeClass::Large] {
            let w = Workload {
                n_keys: 100,
                alpha: 1.0,
                size,
                seed: 0,
            };
            let (lo, hi) = size.bounds();
            assert!((0..100).all(|k| (lo..=hi).contains(&w.body_len(k))));
        }
    }
}
