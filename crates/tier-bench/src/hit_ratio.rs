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

/// Hits divided by requests for the memory tier on `trace`, with `capacity`
/// bytes and bodies of `body_len`. Also returns the charge of one entry.
pub fn memory_tier(rt: &Runtime, trace: &Trace, capacity: usize, body_len: usize) -> (f64, usize) {
    let storage: &'static MemoryStorage = leak(MemoryStorage::new(
        MemoryConfig::new(capacity).max_object_bytes(body_len * 2),
    ));
    let keys = trace.keys.clone();
    rt.block_on(async move {
        let span = Span::inactive().handle();
        let meta = bench_meta();
        let body = Bytes::from(vec![0u8; body_len]);
        let mut hits = 0u64;
        let mut charge = 0;
        for &k in keys.iter() {
            let key = CacheKey::new(format!("bench/{k}"), "");
            if let Ok(Some((_, mut hit))) = storage.lookup(&key, &span).await {
                while let Ok(Some(_)) = hit.read_body().await {}
                hits += 1;
                continue;
            }
            if let Ok(mut miss) = storage.get_miss_handler(&key, &meta, &span).await {
                if miss.write_body(body.clone(), true).await.is_ok() {
                    if let Ok(pingora_cache::storage::MissFinishType::Created(c)) =
                        miss.finish().await
                    {
                        charge = c;
                    }
                }
            }
        }
        (hits as f64 / keys.len().max(1) as f64, charge)
    })
}

/// Reference policies: an LRU by bytes and TinyUFO (S3-FIFO + TinyLFU).
#[cfg(feature = "peers")]
pub mod reference {
    use super::Trace;

    /// LRU over `capacity` bytes with every entry weighing `weight`.
    pub fn lru(trace: &Trace, capacity: usize, weight: usize) -> f64 {
        let mut cache = lru::LruCache::<u64, ()>::unbounded();
        let max_entries = (capacity / weight.max(1)).max(1);
        let mut hits = 0u64;
        for &k in trace.keys.iter() {
            if cache.get(&k).is_some() {
                hits += 1;
            } else {
                cache.put(k, ());
                while cache.len() > max_entries {
                    cache.pop_lru();
                }
            }
        }
        hits as f64 / trace.keys.len().max(1) as f64
    }

    /// TinyUFO over `capacity` bytes with every entry weighing `weight`.
    pub fn tinyufo(trace: &Trace, capacity: usize, weight: usize) -> f64 {
        // TinyUFO weighs entries in u16; scale both sides alike.
        let scale = weight.div_ceil(u16::MAX as usize).max(1);
        let w = (weight / scale) as u16;
        let limit = capacity / scale;
        let cache = tinyufo::TinyUfo::<u64, ()>::new(limit, limit / w.max(1) as usize);
        let mut hits = 0u64;
        for &k in trace.keys.iter() {
            if cache.get(&k).is_some() {
                hits += 1;
            } else {
                cache.put(k, (), w);
            }
        }
        hits as f64 / trace.keys.len().max(1) as f64
    }
}
