//! `--micro`: single-threaded per-step costs of the hit path, for finding
//! where the time goes (what `perf` cannot attribute on machines without
//! hardware counters).

use std::time::Instant;

use pingora_cache::trace::Span;
use pingora_cache::CacheKey;

use crate::runner::{bench_meta, DynStorage};
use crate::workload::{pattern, verify_chunk};

/// Print ns per operation for each step of a hit, on `storage`; with
/// `origin_headers`, each entry's meta carries the nine headers of a typical
/// origin response instead of the bench's one.
pub fn run(name: &str, storage: DynStorage, n_keys: u64, rounds: u64, origin_headers: bool) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let span = Span::inactive().handle();
        let meta = if origin_headers {
            tier_core::testing::meta_fresh_for(
                std::time::Duration::from_secs(86_400),
                &tier_core::testing::ORIGIN_HEADERS,
            )
        } else {
            bench_meta()
        };
        let keys: Vec<CacheKey> = (0..n_keys)
            .map(|i| CacheKey::new(format!("bench/{i}"), ""))
            .collect();
        for key in &keys {
            let Ok(mut miss) = storage.get_miss_handler(key, &meta, &span).await else {
                return;
            };
            let _ = miss
                .write_body(bytes::Bytes::from(vec![0u8; 4096]), true)
                .await;
            let _ = miss.finish().await;
        }
        let n = n_keys * rounds;
        let time = |label: &str, started: Instant| {
            println!(
                "{name}: {label}: {:.0} ns/op",
                started.elapsed().as_nanos() as f64 / n as f64
            );
        };
        let started = Instant::now();
        for r in 0..rounds {
            for i in 0..n_keys {
                std::hint::black_box(CacheKey::new(format!("bench/{}", (i + r) % n_keys), ""));
            }
        }
        time("build key", started);
        let started = Instant::now();
        for _ in 0..rounds {
            for key in &keys {
                std::hint::black_box(storage.lookup(key, &span).await.ok().flatten().is_some());
            }
        }
        time("lookup (meta + handler, no read)", started);
        let started = Instant::now();
        let expected = pattern(0);
        for _ in 0..rounds {
            for key in &keys {
                if let Ok(Some((_, mut hit))) = storage.lookup(key, &span).await {
                    while let Ok(Some(chunk)) = hit.read_body().await {
                        std::hint::black_box(verify_chunk(&expected, 0, &chunk));
                    }
                }
            }
        }
        time("lookup + read + verify", started);
    });
}
