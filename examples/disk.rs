//! Shows the disk tier as a library: open a cache directory, store a 1 MiB
//! response, stream it back in checked blocks, serve a range, purge, and find
//! a stored entry again after reopening the directory.
//!
//! Run with `cargo run --example disk` (uses a temporary directory).

use bytes::Bytes;
use pingora_cache::storage::{PurgeTarget, PurgeType, Storage};
use pingora_cache::trace::Span;
use pingora_cache::CacheKey;
use tier_core::Tier;
use tier_disk::{DiskConfig, DiskStorage, Durability};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let config = || {
        DiskConfig::new(dir.path(), 256 << 20)
            .max_object_bytes(64 << 20)
            .durability(Durability::Full)
    };
    let disk = DiskStorage::open(config()).await?.leak();
    let span = Span::inactive().handle();

    let key = CacheKey::new("example.com/photo.jpg", "");
    let meta = tier_core::testing::meta_with_header("content-type", "image/jpeg");
    let mut miss = disk.get_miss_handler(&key, &meta, &span).await?;
    for i in 0..16u8 {
        // 64 KiB at a time, as from an origin.
        miss.write_body(Bytes::from(vec![i; 64 << 10]), false)
            .await?;
    }
    miss.finish().await?;

    let (_, mut hit) = disk.lookup(&key, &span).await?.ok_or("just stored")?;
    let (mut chunks, mut bytes) = (0, 0);
    while let Some(chunk) = hit.read_body().await? {
        chunks += 1;
        bytes += chunk.len();
    }
    println!("streamed {bytes} bytes in {chunks} chunks, every block checked");

    let (_, mut hit) = disk.lookup(&key, &span).await?.ok_or("stored")?;
    hit.seek(100_000, Some(100_010))?;
    let range = hit.read_body().await?.unwrap_or_default();
    println!(
        "bytes 100000..100010: {} bytes, each {}",
        range.len(),
        range[0]
    );

    let other = CacheKey::new("example.com/style.css", "");
    let mut miss = disk.get_miss_handler(&other, &meta, &span).await?;
    miss.write_body(Bytes::from_static(b"body { color: teal }"), true)
        .await?;
    miss.finish().await?;

    let compact = key.to_compact();
    println!(
        "purge photo: {:?}",
        disk.purge(
            PurgeTarget::Active(&compact),
            PurgeType::Invalidation,
            &span
        )
        .await?
    );
    let stats = disk.stats();
    println!(
        "before reopen: {} entries, {} bytes of segment files, {} hits, {} misses",
        stats.entries,
        disk.used_bytes(),
        stats.hits,
        stats.misses
    );
    // At shutdown: seal the segment being written, so the next open reads
    // segment summaries only.
    disk.close().await?;

    // A restart: the index is rebuilt from the segments' summaries.
    let reopened = DiskStorage::open(config()).await?.leak();
    let found = reopened.lookup(&other, &span).await?.is_some();
    let purged = reopened.lookup(&key, &span).await?.is_none();
    println!("after reopen: style.css found: {found}, photo.jpg still purged: {purged}");
    println!(
        "after reopen: {} entries, {} bytes of segment files",
        reopened.stats().entries,
        reopened.used_bytes()
    );
    Ok(())
}
