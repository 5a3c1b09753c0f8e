//! Shows `HybridStorage` as a library: memory over disk. A miss is written to
//! both tiers; after the memory copy is evicted, a hit is served from disk
//! while it is copied back into memory (promotion); an invalidation purge
//! clears both tiers; the hybrid's counters say what happened.
//!
//! Run with `cargo run --example hybrid` (uses a temporary directory).

use bytes::Bytes;
use pingora_cache::storage::{PurgeTarget, PurgeType, Storage};
use pingora_cache::trace::Span;
use pingora_cache::CacheKey;
use tier_disk::{DiskConfig, DiskStorage};
use tier_hybrid::policy::{Policy, Promotion, WritePolicy};
use tier_hybrid::HybridStorage;
use tier_memory::{MemoryConfig, MemoryStorage};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let memory: &'static MemoryStorage =
        Box::leak(Box::new(MemoryStorage::new(MemoryConfig::new(64 << 20))));
    let disk = DiskStorage::open(DiskConfig::new(dir.path(), 1 << 30))
        .await?
        .leak();
    let cache = HybridStorage::new(
        memory,
        disk,
        Policy::default()
            .write(WritePolicy::WriteThrough)
            .promotion(Promotion::Always),
    )
    .leak();
    let span = Span::inactive().handle();

    let key = CacheKey::new("example.com/index.html", "");
    let meta = tier_core::testing::meta_with_header("content-type", "text/html");
    let mut miss = cache.get_miss_handler(&key, &meta, &span).await?;
    miss.write_body(Bytes::from_static(b"<h1>hello</h1>"), true)
        .await?;
    miss.finish().await?;
    println!(
        "after the miss: memory has it: {}, disk has it: {}",
        memory.lookup(&key, &span).await?.is_some(),
        disk.lookup(&key, &span).await?.is_some()
    );

    // pingora's eviction manager (or memory pressure) evicts the hot copy.
    let compact = key.to_compact();
    cache
        .purge(PurgeTarget::Active(&compact), PurgeType::Eviction, &span)
        .await?;
    println!(
        "after an eviction: memory has it: {}",
        memory.lookup(&key, &span).await?.is_some()
    );

    // A hit now comes from disk and is copied into memory as it streams.
    let (_, mut hit) = cache.lookup(&key, &span).await?.ok_or("cached on disk")?;
    while let Some(chunk) = hit.read_body().await? {
        println!("served: {}", String::from_utf8_lossy(&chunk));
    }
    cache.wait_for_moves().await;
    println!(
        "after a disk hit: memory has it again: {}",
        memory.lookup(&key, &span).await?.is_some()
    );

    cache
        .purge(
            PurgeTarget::Active(&compact),
            PurgeType::Invalidation,
            &span,
        )
        .await?;
    println!(
        "after an invalidation: memory {}, disk {}",
        memory.lookup(&key, &span).await?.is_some(),
        disk.lookup(&key, &span).await?.is_some()
    );
    println!("{:?}", cache.hybrid_stats());
    Ok(())
}
