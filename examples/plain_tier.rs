//! Shows how any `Storage` becomes a tier: pingora's `MemCache`, wrapped in
//! `tier_core::PlainTier`, stores a response, serves it whole and by range,
//! finds it again by the compact key an eviction manager knows, and reports
//! its counters.
//!
//! Run with `cargo run --example plain_tier`.

use std::sync::LazyLock;

use bytes::Bytes;
use pingora_cache::storage::{PurgeTarget, PurgeType, Storage};
use pingora_cache::trace::Span;
use pingora_cache::{CacheKey, MemCache};
use tier_core::{PlainTier, Tier};

// Storage methods take `&'static self`, so storages live in statics.
static TIER: LazyLock<PlainTier<MemCache>> =
    LazyLock::new(|| PlainTier::new("memcache", MemCache::new()));

#[tokio::main]
async fn main() -> pingora_error::Result<()> {
    let span = Span::inactive().handle();
    let key = CacheKey::new("example.com/hello.txt", "");
    let meta = tier_core::testing::meta_with_header("content-type", "text/plain");

    // A miss: write the body in two chunks, then publish it with finish().
    let mut miss = TIER.get_miss_handler(&key, &meta, &span).await?;
    miss.write_body(Bytes::from_static(b"hello, "), false)
        .await?;
    miss.write_body(Bytes::from_static(b"tiers"), true).await?;
    miss.finish().await?;

    // A hit, read whole.
    if let Some((meta, mut hit)) = TIER.lookup(&key, &span).await? {
        let body = hit.read_body().await?.unwrap_or_default();
        println!(
            "hit: {} {:?} -> {:?}",
            meta.response_header().status,
            meta.headers().get("content-type"),
            String::from_utf8_lossy(&body)
        );
    }

    // A hit by the compact key (what pingora's eviction manager holds),
    // serving bytes 7..12 as a Range request would.
    if let Some((_, mut hit)) = TIER.lookup_entry(&key.to_compact(), None, &span).await? {
        hit.seek(7, Some(12))?;
        let range = hit.read_body().await?.unwrap_or_default();
        println!("range 7..12: {:?}", String::from_utf8_lossy(&range));
    }

    let compact = key.to_compact();
    let outcome = TIER
        .purge(
            PurgeTarget::Active(&compact),
            PurgeType::Invalidation,
            &span,
        )
        .await?;
    println!("purge: {outcome:?}");
    println!("stats: {:?}", TIER.stats());
    Ok(())
}
