//! Shows the memory tier as a library: a bounded `MemoryStorage` stores a
//! response, streams it to a reader while it is still being written, serves a
//! range, evicts under pressure (handing evicted entries to a listener), and
//! refuses a body over its per-object limit.
//!
//! Run with `cargo run --example memory`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use pingora_cache::storage::{PurgeTarget, PurgeType, Storage};
use pingora_cache::trace::Span;
use pingora_cache::CacheKey;
use tier_core::{EvictedEntry, EvictionListener, Tier};
use tier_memory::{MemoryConfig, MemoryStorage};

// 1 MiB in all, bodies up to 256 KiB. Storages live in statics because
// pingora's Storage methods take &'static self.
static CACHE: LazyLock<MemoryStorage> =
    LazyLock::new(|| MemoryStorage::new(MemoryConfig::new(1 << 20).max_object_bytes(256 << 10)));

/// Counts evictions; a hybrid's listener would queue them for demotion.
struct CountEvictions(AtomicUsize);

impl EvictionListener for CountEvictions {
    fn on_evict(&self, _entry: EvictedEntry) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::main]
async fn main() -> pingora_error::Result<()> {
    let span = Span::inactive().handle();
    let evictions = Arc::new(CountEvictions(AtomicUsize::new(0)));
    CACHE.set_eviction_listener(evictions.clone());

    // Write in chunks; a reader that looks up meanwhile follows the body.
    let key = CacheKey::new("example.com/video/seg1.ts", "");
    let meta = tier_core::testing::meta_with_header("content-type", "video/mp2t");
    let mut miss = CACHE.get_miss_handler(&key, &meta, &span).await?;
    miss.write_body(Bytes::from_static(b"first part, "), false)
        .await?;
    let (_, mut follower) = CACHE
        .lookup(&key, &span)
        .await?
        .expect("write in progress is visible");
    println!("follower read: {:?}", follower.read_body().await?);
    miss.write_body(Bytes::from_static(b"second part"), true)
        .await?;
    miss.finish().await?;
    println!("follower read: {:?}", follower.read_body().await?);
    println!(
        "follower read: {:?} (end of body)",
        follower.read_body().await?
    );

    // A range of the published entry.
    let (_, mut hit) = CACHE.lookup(&key, &span).await?.expect("published");
    hit.seek(6, Some(10))?;
    println!("bytes 6..10: {:?}", hit.read_body().await?);

    // Fill well past the capacity: the tier evicts, and never exceeds its bound.
    for i in 0..64 {
        let key = CacheKey::new(format!("example.com/asset/{i}"), "");
        let mut miss = CACHE.get_miss_handler(&key, &meta, &span).await?;
        miss.write_body(Bytes::from(vec![b'a'; 64 << 10]), true)
            .await?;
        miss.finish().await?;
    }
    println!(
        "after 4 MiB of writes into 1 MiB: {} bytes used, {} evictions seen by the listener",
        CACHE.used_bytes(),
        evictions.0.load(Ordering::Relaxed)
    );

    // A body over the per-object limit is refused while it is written.
    let big = CacheKey::new("example.com/too-big.iso", "");
    let mut miss = CACHE.get_miss_handler(&big, &meta, &span).await?;
    let refused = miss
        .write_body(Bytes::from(vec![0u8; 300 << 10]), true)
        .await;
    println!(
        "300 KiB body: {}",
        refused.err().map_or("stored".into(), |e| e.to_string())
    );

    let compact = key.to_compact();
    let outcome = CACHE
        .purge(
            PurgeTarget::Active(&compact),
            PurgeType::Invalidation,
            &span,
        )
        .await?;
    println!("purge: {outcome:?}");
    println!("stats: {:?}", CACHE.stats());
    Ok(())
}
