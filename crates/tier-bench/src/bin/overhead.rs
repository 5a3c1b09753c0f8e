//! Heap bytes per cached entry beyond its body and serialized meta, for each
//! memory storage, measured with a counting allocator. Run by
//! `cargo xtask bench` after the main report, whose `report.md` it appends to.
//!
//! A separate binary, because the counting allocator adds an atomic add to
//! every allocation and must not slow the throughput runs.

use std::alloc::System;
use std::fmt::Write as _;
use std::path::PathBuf;

use bytes::Bytes;
use pingora_cache::storage::Storage;
use pingora_cache::trace::Span;
use pingora_cache::{CacheKey, MemCache};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tier_memory::{MemoryConfig, MemoryStorage};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const BODY: usize = 4096;

/// Net heap growth in a region. `stats_alloc` already adds a realloc's
/// growth to `bytes_allocated` (and its shrinking to `bytes_deallocated`);
/// `bytes_reallocated` is the same change again, so it is not added.
fn net_bytes(change: &stats_alloc::Stats) -> i64 {
    change.bytes_allocated as i64 - change.bytes_deallocated as i64
}

fn measure(
    name: &str,
    storage: &'static (dyn Storage + Sync),
    n: usize,
    meta_bytes: usize,
) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let span = Span::inactive().handle();
    let meta = tier_core::testing::meta_fresh_for(
        std::time::Duration::from_secs(86_400),
        &[("content-type", "application/octet-stream")],
    );
    let keys: Vec<CacheKey> = (0..n)
        .map(|i| CacheKey::new(format!("bench/{i}"), ""))
        .collect();
    let body = Bytes::from(vec![7u8; BODY]);
    let region = Region::new(GLOBAL);
    rt.block_on(async {
        for key in &keys {
            if let Ok(mut miss) = storage.get_miss_handler(key, &meta, &span).await {
                if miss.write_body(body.clone(), true).await.is_ok() {
                    let _ = miss.finish().await;
                }
            }
        }
    });
    let change = region.change();
    let net = net_bytes(&change);
    let per_entry = net as f64 / n as f64;
    let overhead = per_entry - (BODY + meta_bytes) as f64;
    // Then four hits on every entry, read to the end and dropped: what hits
    // leave behind (shared body handles, the memory tier's parsed headers
    // of hot entries).
    rt.block_on(async {
        for _ in 0..4 {
            for key in &keys {
                if let Ok(Some((_, mut hit))) = storage.lookup(key, &span).await {
                    while let Ok(Some(_)) = hit.read_body().await {}
                }
            }
        }
    });
    let after_hits = net_bytes(&region.change()) as f64 / n as f64 - (BODY + meta_bytes) as f64;
    format!("| {name} | {n} | {per_entry:.0} | {overhead:.0} | {after_hits:.0} |\n")
}

/// Heap bytes per entry of the disk tier: its bodies and metas are on disk,
/// so what the counting allocator sees is its index (and anything else it
/// keeps per entry).
fn disk_index(n: usize) -> String {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let config =
        tier_disk::DiskConfig::new(dir.path(), 64 << 30).durability(tier_disk::Durability::None);
    let meta = std::sync::Arc::new(tier_core::testing::meta_fresh_for(
        std::time::Duration::from_secs(86_400),
        &[("content-type", "application/octet-stream")],
    ));
    let region = Region::new(GLOBAL);
    let disk: &'static tier_disk::DiskStorage = rt
        .block_on(tier_disk::DiskStorage::open(config))
        .expect("open")
        .leak();
    let body = Bytes::from(vec![7u8; 64]);
    rt.block_on(async {
        let tasks: Vec<_> = (0..16)
            .map(|t| {
                let (meta, body) = (meta.clone(), body.clone());
                tokio::spawn(async move {
                    let span = Span::inactive().handle();
                    for i in (t..n).step_by(16) {
                        let key = CacheKey::new(format!("bench/{i}"), "");
                        if let Ok(mut miss) = disk.get_miss_handler(&key, &meta, &span).await {
                            if miss.write_body(body.clone(), true).await.is_ok() {
                                let _ = miss.finish().await;
                            }
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    });
    let change = region.change();
    let net = net_bytes(&change);
    let entries = tier_core::Tier::stats(disk).entries;

    format!(
        "\n| disk tier (bodies and metas on disk) | entries | heap bytes per entry, all of the tier | of which the index table |\n|---|---:|---:|---:|\n| tier-disk | {entries} | {:.1} | {:.1} |\n",
        net as f64 / entries.max(1) as f64,
        disk.disk_stats().index_bytes as f64 / entries.max(1) as f64
    )
}

/// Heap bytes of a parsed response header with `lines` (the cost the memory
/// tier's compact meta avoids, and what a hot entry's parsed copy costs).
fn parsed_header_heap(lines: &[(&'static str, &str)]) -> i64 {
    let meta = tier_core::testing::meta_fresh_for(std::time::Duration::from_secs(60), lines);
    let region = Region::new(GLOBAL);
    let copy = meta.response_header().clone();
    let heap = net_bytes(&region.change());
    drop(copy);
    heap
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let out = std::env::args()
        .skip_while(|a| a != "--out")
        .nth(1)
        .map_or_else(|| PathBuf::from("target/bench"), PathBuf::from);
    let n = if quick { 20_000 } else { 100_000 };
    let meta = tier_core::testing::meta_fresh_for(
        std::time::Duration::from_secs(86_400),
        &[("content-type", "application/octet-stream")],
    );
    let meta_bytes = meta
        .serialize()
        .map(|(internal, header)| internal.len() + header.len())
        .unwrap_or(0);
    let mut section = String::new();
    let _ = writeln!(
        section,
        "### Memory per cached entry ({n} entries of {BODY} B, serialized meta {meta_bytes} B)\n\n\
         Net heap bytes after inserting every entry, counted by a counting allocator; \
         overhead is what remains after the body and the serialized meta. The last column \
         counts again after four hits on every entry: a body handed out is shared from then \
         on (its `Bytes` gains a shared header), and the memory tier keeps parsed headers of \
         hot entries in its `hot_header_percent` share (1% of its capacity by default; the \
         capacity here is one the entries nearly fill, 4.5 KiB per entry, so no entry is \
         evicted).\n\n\
         | storage | entries | heap bytes per entry | overhead per entry | overhead after 4 hits on each |\n|---|---:|---:|---:|---:|"
    );
    let memcache: &'static MemCache = Box::leak(Box::new(MemCache::new()));
    section.push_str(&measure("pingora MemCache", memcache, n, meta_bytes));
    // A capacity the entries nearly fill (each is charged about 4.5 KiB), so
    // the hot-header share is what it is in a full cache.
    let tier: &'static MemoryStorage =
        Box::leak(Box::new(MemoryStorage::new(MemoryConfig::new(n * 4608))));
    section.push_str(&measure("tier-memory", tier, n, meta_bytes));
    let origin = tier_core::testing::ORIGIN_HEADERS;
    let _ = writeln!(
        section,
        "\nA parsed `ResponseHeader` (pingora's, as `MemCache` and a hot entry of the memory \
         tier hold one) costs {} heap bytes with the bench's one line and {} with a typical \
         origin's nine, beyond its inline {} bytes.",
        parsed_header_heap(&origin[..1]),
        parsed_header_heap(&origin),
        std::mem::size_of::<pingora_http::ResponseHeader>()
    );
    section.push_str(&disk_index(if quick { 100_000 } else { 1_000_000 }));
    println!("{section}");
    let report = out.join("report.md");
    let previous = std::fs::read_to_string(&report).unwrap_or_default();
    if let Err(e) = std::fs::create_dir_all(&out)
        .and_then(|_| std::fs::write(&report, format!("{previous}\n{section}")))
    {
        eprintln!("overhead: could not write {}: {e}", report.display());
    }
}
