//! The hybrid on a trace larger than its memory tier: hit ratio, bytes written
//! to disk per byte admitted, and ops/s, for each write and promotion policy
//! and for the seed's behaviour (write-through, promote on every cold hit).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use pingora_cache::storage::Storage;
use pingora_cache::trace::Span;
use tier_disk::{DiskConfig, DiskStorage, Durability};
use tier_hybrid::policy::{Policy, Promotion, WritePolicy};
use tier_hybrid::HybridStorage;
use tier_memory::{MemoryConfig, MemoryStorage};
use tokio::runtime::Runtime;

use crate::disk_bench::written_bytes;
use crate::hit_ratio::scan_mix_trace;
use crate::runner::{bench_meta, insert, leak};
use crate::workload::{Expected, SizeClass, Workload};

/// The hybrid section of the report, with caches under `dir`.
pub fn section(rt: &Runtime, dir: &Path, quick: bool) -> String {
    let n_keys: u64 = if quick { 4_000 } else { 20_000 };
    let n_ops = if quick { 40_000 } else { 200_000 };
    let body = 16 << 10;
    let data = n_keys as usize * body;
    let trace = scan_mix_trace(n_keys, 0.1, n_ops, 31);
    let workload = Workload {
        n_keys: n_keys * 20,
        alpha: 1.0,
        size: SizeClass::Fixed(body),
        seed: 31,
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Hybrid: memory (10% of the data) over disk, Zipf 1.0 with 10% one-time keys\n\n\
         {n_keys} keys of 16 KiB ({} MiB), {n_ops} requests on one task; a miss inserts. \
         Disk bytes from /proc/self/io. foyer's hybrid cache runs the same trace with the same byte budgets.\n\n\
         | policy | hit ratio | hot hits | cold hits | promotions | demotions | disk bytes written / byte admitted | ops/s |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|",
        data >> 20
    );
    let policies = [
        (
            "seed behaviour: write-through, promote every cold hit",
            Policy::default().promotion(Promotion::Always),
        ),
        ("write-through, promote on 2nd hit", Policy::default()),
        (
            "write-back, promote on 2nd hit",
            Policy::default().write(WritePolicy::WriteBack),
        ),
    ];
    for (label, policy) in policies {
        let Ok(cache_dir) = tempfile::tempdir_in(dir) else {
            return format!("Hybrid not measured: no temp dir under {}\n", dir.display());
        };
        let memory: &'static MemoryStorage = leak(MemoryStorage::new(MemoryConfig::new(data / 10)));
        let disk = match rt.block_on(DiskStorage::open(
            DiskConfig::new(cache_dir.path(), (data * 2) as u64).durability(Durability::None),
        )) {
            Ok(disk) => disk.leak(),
            Err(e) => return format!("Hybrid not measured: {e}\n"),
        };
        let hybrid = HybridStorage::new(memory, disk, policy).leak();
        let keys = trace.keys.clone();
        let workload = workload.clone();
        let before = written_bytes();
        let started = Instant::now();
        let (hits, admitted, corrupt) = rt.block_on(async move {
            let span = Span::inactive().handle();
            let meta = bench_meta();
            let (mut hits, mut admitted, mut corrupt) = (0u64, 0u64, 0u64);
            for &k in keys.iter() {
                let key = workload.key(k);
                if let Ok(Some((_, mut hit))) = hybrid.lookup(&key, &span).await {
                    let expected = Expected::new(k, body);
                    let mut offset = 0;
                    let mut ok = true;
                    while let Ok(Some(chunk)) = hit.read_body().await {
                        ok &= expected.check(offset, &chunk);
                        offset += chunk.len();
                    }
                    hits += 1;
                    corrupt += u64::from(!ok || offset != body);
                } else if let Ok(n) = insert(hybrid, &workload, &meta, k).await {
                    admitted += n;
                }
            }
            hybrid.wait_for_moves().await;
            (hits, admitted, corrupt)
        });
        let elapsed = started.elapsed();
        let written = match (before, written_bytes()) {
            (Some(b), Some(a)) => format!("{:.3}", (a - b) as f64 / admitted.max(1) as f64),
            _ => "-".into(),
        };
        let stats = hybrid.hybrid_stats();
        let _ = writeln!(
            out,
            "| {label} | {:.2}% | {} | {} | {} | {} | {written} | {:.0} |",
            hits as f64 * 100.0 / n_ops as f64,
            stats.hot_hits,
            stats.cold_hits,
            stats.promotions,
            stats.demotions,
            n_ops as f64 / elapsed.as_secs_f64().max(1e-9)
        );
        if corrupt > 0 {
            let _ = writeln!(
                out,
                "\n**{corrupt} hits served a wrong body under {label}.**\n"
            );
        }
    }
    #[cfg(feature = "peers")]
    for (label, policy) in [
        (
            "foyer, write on insertion",
            foyer::HybridCachePolicy::WriteOnInsertion,
        ),
        (
            "foyer, write on eviction",
            foyer::HybridCachePolicy::WriteOnEviction,
        ),
    ] {
        let Ok(foyer_dir) = tempfile::tempdir_in(dir) else {
            continue;
        };
        let started = Instant::now();
        let ratio = rt.block_on(crate::foyer_peer::hit_ratio(
            foyer_dir.path(),
            &trace.keys,
            &workload,
            data / 10,
            data * 2,
            policy,
        ));
        match ratio {
            Ok(ratio) => {
                let _ = writeln!(
                    out,
                    "| {label} | {:.2}% | - | - | - | - | - | {:.0} |",
                    ratio * 100.0,
                    n_ops as f64 / started.elapsed().as_secs_f64().max(1e-9)
                );
            }
            Err(e) => {
                let _ = writeln!(out, "| {label} | not measured: {e} | | | | | | |");
            }
        }
    }
    out.push('\n');
    out
}
