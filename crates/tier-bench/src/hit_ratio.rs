//! Hit ratio on a trace: the memory tier against reference policies given the
//! same byte budget, each entry weighed with the same charge.
//!
//! The tier runs for real (lookup, read, insert on a miss) on one task, so
//! its eviction sees the trace in order; the references are single-threaded
//! simulations that only track keys and weights.

use std::sync::Arc;

use bytes::Bytes;
use pingora_cache::storage::Storage;
use pingora_cache::trace::Span;
use pingora_cache::CacheKey;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tier_memory::{MemoryConfig, MemoryStorage};
use tokio::runtime::Runtime;

use crate::runner::{bench_meta, leak};
use crate::workload::Workload;

/// A trace: key indices, where indices at or past `n_keys` are one-time keys.
#[derive(Debug, Clone)]
pub struct Trace {
    /// What the trace is.
    pub label: String,
    /// The keys, in request order.
    pub keys: Arc<Vec<u64>>,
}

/// A Zipf trace of `n_ops` over `n_keys`.
pub fn zipf_trace(n_keys: u64, alpha: f64, n_ops: usize, seed: u64) -> Trace {
    let w = Workload {
        n_keys,
        alpha,
        size: crate::workload::SizeClass::Fixed(4096),
        seed,
    };
    Trace {
        label: format!("Zipf {alpha}"),
        keys: Arc::new(w.trace(n_ops)),
    }
}

/// Zipf 1.0 whose popular keys change halfway: the second half ranks the
/// keys in another order, so what was hot goes cold and the cache must adapt.
pub fn shift_trace(n_keys: u64, n_ops: usize, seed: u64) -> Trace {
    let base = zipf_trace(n_keys, 1.0, n_ops, seed);
    let half = n_ops / 2;
    // A fixed permutation of ranks: multiplying by a constant coprime to
    // n_keys (odd and not a multiple of 5, so coprime to the bench's powers
    // of ten) is a bijection modulo n_keys, and so is the added offset.
    let keys = base
        .keys
        .iter()
        .enumerate()
        .map(|(i, &k)| {
            if i < half {
                k
            } else {
                (k * 0x9e37_79b9 + n_keys / 2) % n_keys
            }
        })
        .collect();
    Trace {
        label: "Zipf 1.0, popularity shift halfway".into(),
        keys: Arc::new(keys),
    }
}

/// Zipf 1.0, except `one_time_share` of requests go to keys never seen again.
pub fn scan_mix_trace(n_keys: u64, one_time_share: f64, n_ops: usize, seed: u64) -> Trace {
    let base = zipf_trace(n_keys, 1.0, n_ops, seed);
    let mut rng = SmallRng::seed_from_u64(seed ^ 0xabcd);
    let mut next_one_time = n_keys;
    let keys = base
        .keys
        .iter()
        .map(|&k| {
            if rng.random_bool(one_time_share) {
                next_one_time += 1;
                next_one_time
            } else {
                k
            }
        })
        .collect();
    Trace {
        label: format!("Zipf 1.0 + {:.0}% one-time keys", one_time_share * 100.0),
        keys: Arc::new(keys),
    }
}

/// What share of requests, and of requested bytes, hits served.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ratios {
    /// Hits divided by requests.
    pub hit: f64,
    /// Bytes served by hits divided by bytes requested.
    pub byte_hit: f64,
}

/// Counts requests and hits, by number and by bytes.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    requests: u64,
    hits: u64,
    bytes: u64,
    hit_bytes: u64,
}

impl Tally {
    pub(crate) fn record(&mut self, hit: bool, len: usize) {
        self.requests += 1;
        self.bytes += len as u64;
        if hit {
            self.hits += 1;
            self.hit_bytes += len as u64;
        }
    }

    pub(crate) fn ratios(&self) -> Ratios {
        Ratios {
            hit: self.hits as f64 / self.requests.max(1) as f64,
            byte_hit: self.hit_bytes as f64 / self.bytes.max(1) as f64,
        }
    }
}

/// A key's body length, for traces of mixed sizes.
pub type LenOf<'a> = &'a (dyn Fn(u64) -> usize + Sync);

/// The memory tier on `trace` with `capacity` bytes and bodies of `len(key)`
/// bytes: its ratios, and the charge of the last entry it stored.
pub fn memory_tier(
    rt: &Runtime,
    trace: &Trace,
    capacity: usize,
    len: LenOf<'_>,
) -> (Ratios, usize) {
    let largest = trace.keys.iter().map(|&k| len(k)).max().unwrap_or(0);
    let storage: &'static MemoryStorage = leak(MemoryStorage::new(
        MemoryConfig::new(capacity).max_object_bytes((largest * 2).max(1)),
    ));
    // One zeroed buffer, sliced for every body: no allocation per insert.
    let zeros = Bytes::from(vec![0u8; largest]);
    rt.block_on(async move {
        let span = Span::inactive().handle();
        let meta = bench_meta();
        let mut tally = Tally::default();
        let mut charge = 0;
        for &k in trace.keys.iter() {
            let key = CacheKey::new(format!("bench/{k}"), "");
            let body_len = len(k);
            if let Ok(Some((_, mut hit))) = storage.lookup(&key, &span).await {
                while let Ok(Some(_)) = hit.read_body().await {}
                tally.record(true, body_len);
                continue;
            }
            tally.record(false, body_len);
            if let Ok(mut miss) = storage.get_miss_handler(&key, &meta, &span).await {
                if miss.write_body(zeros.slice(..body_len), true).await.is_ok() {
                    if let Ok(pingora_cache::storage::MissFinishType::Created(c)) =
                        miss.finish().await
                    {
                        charge = c;
                    }
                }
            }
        }
        (tally.ratios(), charge)
    })
}

/// Reference policies: an LRU by bytes and TinyUFO (S3-FIFO + TinyLFU).
#[cfg(feature = "peers")]
pub mod reference {
    use super::{LenOf, Ratios, Tally, Trace};

    /// LRU over `capacity` bytes, entry `k` weighing `weight(k)`; requests
    /// count `len(k)` bytes.
    pub fn lru(trace: &Trace, capacity: usize, weight: LenOf<'_>, len: LenOf<'_>) -> Ratios {
        let mut cache = lru::LruCache::<u64, usize>::unbounded();
        let mut used = 0usize;
        let mut tally = Tally::default();
        for &k in trace.keys.iter() {
            let hit = cache.get(&k).is_some();
            tally.record(hit, len(k));
            let w = weight(k);
            if !hit && w <= capacity {
                cache.put(k, w);
                used += w;
                while used > capacity {
                    match cache.pop_lru() {
                        Some((_, w)) => used -= w,
                        None => break,
                    }
                }
            }
        }
        tally.ratios()
    }

    /// TinyUFO over `capacity` bytes, entry `k` weighing `weight(k)`.
    pub fn tinyufo(trace: &Trace, capacity: usize, weight: LenOf<'_>, len: LenOf<'_>) -> Ratios {
        // TinyUFO weighs entries in u16: scale every weight alike.
        let heaviest = trace.keys.iter().map(|&k| weight(k)).max().unwrap_or(1);
        let scale = heaviest.div_ceil(u16::MAX as usize).max(1);
        let limit = capacity / scale;
        let mean = (trace.keys.iter().map(|&k| weight(k)).sum::<usize>()
            / trace.keys.len().max(1)
            / scale)
            .max(1);
        let cache = tinyufo::TinyUfo::<u64, ()>::new(limit, (limit / mean).max(1));
        let mut tally = Tally::default();
        for &k in trace.keys.iter() {
            let hit = cache.get(&k).is_some();
            tally.record(hit, len(k));
            if !hit {
                let w = (weight(k) / scale).clamp(1, u16::MAX as usize) as u16;
                cache.put(k, (), w);
            }
        }
        tally.ratios()
    }
}
