//! Shows hybrids nesting: memory over (memory over disk), three tiers as one
//! `Storage`. The outer hybrid writes back (misses go to the small memory
//! tier, its evictions are demoted); the inner one writes through to disk.
//! The disk stands in for a slower shared tier (tier-redis will plug in the
//! same way).
//!
//! Run with `cargo run --example nested` (uses a temporary directory).

use bytes::Bytes;
use pingora_cache::storage::Storage;
use pingora_cache::trace::Span;
use pingora_cache::CacheKey;
use tier_core::Tier;
use tier_disk::{DiskConfig, DiskStorage};
use tier_hybrid::policy::{Policy, Promotion, WritePolicy};
use tier_hybrid::HybridStorage;
use tier_memory::{MemoryConfig, MemoryStorage};

fn memory(name: &str, bytes: usize) -> &'static MemoryStorage {
    Box::leak(Box::new(MemoryStorage::new(
        MemoryConfig::new(bytes).name(name),
    )))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let disk = DiskStorage::open(DiskConfig::new(dir.path(), 1 << 30))
        .await?
        .leak();
    let warm = HybridStorage::new(memory("warm", 8 << 20), disk, Policy::default()).leak();
    let cache = HybridStorage::new(
        memory("hot", 1 << 20),
        warm,
        Policy::default()
            .write(WritePolicy::WriteBack)
            .promotion(Promotion::OnNthHit(2)),
    )
    .leak();
    let span = Span::inactive().handle();
    let meta = tier_core::testing::meta_with_header("content-type", "application/octet-stream");

    // 4 MiB of objects through a 1 MiB hot tier: most are demoted.
    for i in 0..64 {
        let key = CacheKey::new(format!("example.com/obj/{i}"), "");
        let mut miss = cache.get_miss_handler(&key, &meta, &span).await?;
        miss.write_body(Bytes::from(vec![i as u8; 64 << 10]), true)
            .await?;
        miss.finish().await?;
    }
    cache.wait_for_moves().await;
    warm.wait_for_moves().await;

    let mut found = 0;
    for i in 0..64 {
        let key = CacheKey::new(format!("example.com/obj/{i}"), "");
        if let Some((_, mut hit)) = cache.lookup(&key, &span).await? {
            while hit.read_body().await?.is_some() {}
            found += 1;
        }
    }
    println!("found {found} of 64 objects through three tiers");
    println!("outer: {:?}", cache.hybrid_stats());
    println!("inner: {:?}", warm.hybrid_stats());
    println!("disk: {} entries", disk.stats().entries);
    Ok(())
}
