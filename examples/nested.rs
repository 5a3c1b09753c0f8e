//! Shows hybrids nesting: memory over disk over another tier, three tiers as
//! one `Storage`: `HybridStorage<MemoryStorage, HybridStorage<DiskStorage,
//! PlainTier<MemCache>>>`. pingora's `MemCache`, wrapped in `PlainTier`,
//! stands in for a shared remote tier (tier-redis plugs in the same way: the
//! proxy example's `--redis` layout is memory over disk over Redis).
//! A write reaches all three tiers; after memory and disk lose the entry, it
//! is served from the third tier and copied back up as it streams.
//!
//! Run with `cargo run --example nested` (uses a temporary directory).

use std::sync::LazyLock;

use bytes::Bytes;
use pingora_cache::storage::{PurgeTarget, PurgeType, Storage};
use pingora_cache::trace::Span;
use pingora_cache::{CacheKey, MemCache};
use tier_core::{Capabilities, PlainTier};
use tier_disk::{DiskConfig, DiskStorage};
use tier_hybrid::policy::{Policy, Promotion};
use tier_hybrid::HybridStorage;
use tier_memory::{MemoryConfig, MemoryStorage};

/// The stand-in remote tier. MemCache assigns no entry ids, and its seek and
/// aborted-write behaviour is not trustworthy, so it declares only `expire`.
static REMOTE: LazyLock<PlainTier<MemCache>> = LazyLock::new(|| {
    let mut caps = Capabilities::default();
    caps.expire = true;
    PlainTier::new("remote (stand-in)", MemCache::new()).with_capabilities(caps)
});

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let memory: &'static MemoryStorage = Box::leak(Box::new(MemoryStorage::new(
        MemoryConfig::new(16 << 20).name("memory"),
    )));
    let disk = DiskStorage::open(DiskConfig::new(dir.path(), 1 << 30))
        .await?
        .leak();
    let always = || Policy::default().promotion(Promotion::Always);
    let lower = HybridStorage::new(disk, &*REMOTE, always()).leak();
    let cache = HybridStorage::new(memory, lower, always()).leak();
    let span = Span::inactive().handle();

    let key = CacheKey::new("example.com/shared/report.pdf", "");
    let meta = tier_core::testing::meta_with_header("content-type", "application/pdf");
    let mut miss = cache.get_miss_handler(&key, &meta, &span).await?;
    miss.write_body(Bytes::from(vec![b'%'; 256 << 10]), true)
        .await?;
    miss.finish().await?;
    let held = |found: bool| if found { "yes" } else { "no" };
    println!(
        "after the write: memory {}, disk {}, remote {}",
        held(memory.lookup(&key, &span).await?.is_some()),
        held(disk.lookup(&key, &span).await?.is_some()),
        held(REMOTE.lookup(&key, &span).await?.is_some()),
    );

    // Memory and disk lose it (evictions); the remote tier still has it.
    let compact = key.to_compact();
    memory
        .purge(PurgeTarget::Active(&compact), PurgeType::Eviction, &span)
        .await?;
    disk.purge(PurgeTarget::Active(&compact), PurgeType::Eviction, &span)
        .await?;

    let (_, mut hit) = cache
        .lookup(&key, &span)
        .await?
        .ok_or("the remote tier has it")?;
    let mut read = 0;
    while let Some(chunk) = hit.read_body().await? {
        read += chunk.len();
    }
    cache.wait_for_moves().await;
    lower.wait_for_moves().await;
    println!("served {read} bytes from the third tier");
    println!(
        "after the hit: memory {}, disk {} (copied back up as it streamed)",
        held(memory.lookup(&key, &span).await?.is_some()),
        held(disk.lookup(&key, &span).await?.is_some()),
    );
    println!("outer: {:?}", cache.hybrid_stats());
    println!("inner: {:?}", lower.hybrid_stats());
    Ok(())
}
