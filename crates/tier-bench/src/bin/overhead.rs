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
    let net = change.bytes_allocated as i64 - change.bytes_deallocated as i64
        + change.bytes_reallocated as i64;
    let per_entry = net as f64 / n as f64;
    let overhead = per_entry - (BODY + meta_bytes) as f64;
    format!("| {name} | {n} | {per_entry:.0} | {overhead:.0} |\n")
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
         overhead is what remains after the body and the serialized meta.\n\n\
         | storage | entries | heap bytes per entry | overhead per entry |\n|---|---:|---:|---:|"
    );
    let memcache: &'static MemCache = Box::leak(Box::new(MemCache::new()));
    section.push_str(&measure("pingora MemCache", memcache, n, meta_bytes));
    let tier: &'static MemoryStorage =
        Box::leak(Box::new(MemoryStorage::new(MemoryConfig::new(4 << 30))));
    section.push_str(&measure("tier-memory", tier, n, meta_bytes));
    println!("{section}");
    let report = out.join("report.md");
    let previous = std::fs::read_to_string(&report).unwrap_or_default();
    if let Err(e) = std::fs::create_dir_all(&out)
        .and_then(|_| std::fs::write(&report, format!("{previous}\n{section}")))
    {
        eprintln!("overhead: could not write {}: {e}", report.display());
    }
}
