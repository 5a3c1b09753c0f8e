//! Runs a trace against a storage on a 2-worker tokio runtime and measures it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use pingora_cache::storage::Storage;
use pingora_cache::trace::Span;
use pingora_cache::CacheMeta;
use tokio::runtime::Runtime;

use crate::workload::{Expected, Workload};

/// A storage as pingora holds it.
pub type DynStorage = &'static (dyn Storage + Sync);

/// What one measured run did and how fast.
#[derive(Debug)]
pub struct Measurement {
    /// Operations completed.
    pub ops: u64,
    /// Body bytes moved (read on hits, written on inserts).
    pub bytes: u64,
    /// Lookups that missed.
    pub misses: u64,
    /// Hits whose body did not match the key's (must be 0).
    pub corrupt: u64,
    /// Operations that returned an error.
    pub errors: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Per-operation latency in nanoseconds.
    pub latency_ns: Histogram<u64>,
}

impl Measurement {
    /// Nothing measured yet.
    pub fn empty() -> Self {
        Measurement {
            ops: 0,
            bytes: 0,
            misses: 0,
            corrupt: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            latency_ns: new_histogram(),
        }
    }

    /// Add another task's counts and latencies to these (not its elapsed
    /// time: tasks run side by side, so the caller times the whole run).
    pub fn absorb(&mut self, other: &Measurement) {
        self.ops += other.ops;
        self.bytes += other.bytes;
        self.misses += other.misses;
        self.corrupt += other.corrupt;
        self.errors += other.errors;
        self.latency_ns
            .add(&other.latency_ns)
            .expect("every histogram has the same bounds");
    }

    /// Operations per second.
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Body MiB per second.
    pub fn mib_per_sec(&self) -> f64 {
        self.bytes as f64 / (1 << 20) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency at quantile `q`, in microseconds.
    pub fn latency_us(&self, q: f64) -> f64 {
        self.latency_ns.value_at_quantile(q) as f64 / 1000.0
    }
}

/// The runtime every measurement uses: two worker threads, as on the target machine.
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime starts")
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// A fresh meta for benchmark entries.
pub fn bench_meta() -> CacheMeta {
    tier_core::testing::meta_fresh_for(
        Duration::from_secs(86_400),
        &[("content-type", "application/octet-stream")],
    )
}

/// Write key `idx`'s body as one entry, in chunks of at most 64 KiB.
pub async fn insert(
    storage: DynStorage,
    workload: &Workload,
    meta: &CacheMeta,
    idx: u64,
) -> pingora_error::Result<u64> {
    let span = Span::inactive().handle();
    let key = workload.key(idx);
    let body = workload.body(idx);
    let mut miss = storage.get_miss_handler(&key, meta, &span).await?;
    let len = body.len();
    let mut at = 0;
    loop {
        let end = (at + (64 << 10)).min(len);
        miss.write_body(body.slice(at..end), end == len).await?;
        at = end;
        if at == len {
            break;
        }
    }
    miss.finish().await?;
    Ok(len as u64)
}

/// Write every key of `workload` once, with `tasks` concurrent writers.
pub fn populate(
    rt: &Runtime,
    storage: DynStorage,
    workload: &Workload,
    tasks: usize,
) -> Measurement {
    let keys: Vec<u64> = (0..workload.n_keys).collect();
    run_trace(rt, storage, workload, Arc::new(keys), tasks, Op::Insert)
}

/// What each trace entry does.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    /// Write the key.
    Insert,
    /// Look the key up and read the whole body, checking every byte.
    Read,
    /// Read, except every `n`th operation rewrites the key.
    ReadWithWrites { every: u64 },
}

/// Run `trace` split across `tasks` tasks and measure it.
pub fn run_trace(
    rt: &Runtime,
    storage: DynStorage,
    workload: &Workload,
    trace: Arc<Vec<u64>>,
    tasks: usize,
    op: Op,
) -> Measurement {
    let started = Instant::now();
    let per_task = trace.len().div_ceil(tasks.max(1));
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let trace = trace.clone();
            let workload = workload.clone();
            rt.spawn(async move {
                let meta = bench_meta();
                let span = Span::inactive().handle();
                let mut m = Measurement::empty();
                let lo = (t * per_task).min(trace.len());
                let hi = ((t + 1) * per_task).min(trace.len());
                for (i, &idx) in trace[lo..hi].iter().enumerate() {
                    let op_started = Instant::now();
                    let write = match op {
                        Op::Insert => true,
                        Op::Read => false,
                        Op::ReadWithWrites { every } => (lo + i) as u64 % every == 0,
                    };
                    if write {
                        match insert(storage, &workload, &meta, idx).await {
                            Ok(n) => m.bytes += n,
                            Err(_) => m.errors += 1,
                        }
                    } else {
                        match read_checked(storage, &workload, idx, &span).await {
                            Ok(Some((n, ok))) => {
                                m.bytes += n;
                                if !ok {
                                    m.corrupt += 1;
                                }
                            }
                            Ok(None) => m.misses += 1,
                            Err(_) => m.errors += 1,
                        }
                    }
                    m.ops += 1;
                    let ns = op_started.elapsed().as_nanos() as u64;
                    m.latency_ns.saturating_record(ns.max(1));
                }
                m
            })
        })
        .collect();
    let mut total = Measurement::empty();
    for handle in handles {
        let m = rt.block_on(handle).expect("benchmark task does not panic");
        total.absorb(&m);
    }
    total.elapsed = started.elapsed();
    total
}

/// Look key `idx` up and read its body; `Some((bytes, all_bytes_correct))` on a hit.
async fn read_checked(
    storage: DynStorage,
    workload: &Workload,
    idx: u64,
    span: &pingora_cache::trace::SpanHandle,
) -> pingora_error::Result<Option<(u64, bool)>> {
    let key = workload.key(idx);
    let Some((_meta, mut hit)) = storage.lookup(&key, span).await? else {
        return Ok(None);
    };
    let expected = Expected::new(idx, workload.body_len(idx).min(64 << 10));
    let mut offset = 0;
    let mut ok = true;
    while let Some(chunk) = hit.read_body().await? {
        ok &= expected.check(offset, &chunk);
        offset += chunk.len();
    }
    ok &= offset == workload.body_len(idx);
    Ok(Some((offset as u64, ok)))
}

/// Keep a value alive past the measurement (for leaked storages).
/// Median of `v` (which is not empty): the upper middle of an even count.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The lowest and highest of `v`.
pub fn range(v: impl IntoIterator<Item = f64>) -> (f64, f64) {
    v.into_iter()
        .fold((f64::INFINITY, 0.0), |(lo, hi), x| (lo.min(x), hi.max(x)))
}

pub fn leak<T: Send + Sync + 'static>(value: T) -> &'static T {
    Box::leak(Box::new(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::SizeClass;
    use pingora_cache::MemCache;

    #[test]
    fn populate_then_read_finds_every_key_intact() {
        let rt = runtime();
        let storage: DynStorage = leak(MemCache::new());
        let w = Workload {
            n_keys: 50,
            alpha: 1.0,
            size: SizeClass::Small,
            seed: 3,
        };
        let wrote = populate(&rt, storage, &w, 2);
        assert_eq!((wrote.ops, wrote.errors), (50, 0));
        let read = run_trace(&rt, storage, &w, Arc::new(w.trace(500)), 4, Op::Read);
        assert_eq!(
            (read.ops, read.misses, read.corrupt, read.errors),
            (500, 0, 0, 0)
        );
        assert!(read.bytes >= 500 * 1024);
    }

    #[test]
    fn a_wrong_body_is_counted_as_corrupt() {
        let rt = runtime();
        let storage: DynStorage = leak(MemCache::new());
        let w = Workload {
            n_keys: 2,
            alpha: 1.0,
            size: SizeClass::Fixed(300),
            seed: 3,
        };
        // Store key 1's body under key 0.
        let other = Workload { ..w.clone() };
        rt.block_on(async {
            let span = Span::inactive().handle();
            let mut miss = storage
                .get_miss_handler(&w.key(0), &bench_meta(), &span)
                .await
                .expect("miss");
            miss.write_body(other.body(1), true).await.expect("write");
            miss.finish().await.expect("finish");
        });
        let read = run_trace(&rt, storage, &w, Arc::new(vec![0, 1]), 1, Op::Read);
        assert_eq!((read.corrupt, read.misses), (1, 1));
    }
}
