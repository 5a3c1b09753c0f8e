//! The hybrid's first invariant, one finding at a time: after a write's
//! `finish`, a purge or a meta update returns, no later lookup returns an
//! older generation, a purged entry, or a body under a meta it was not
//! written with. Each test here failed before its fix (see CHANGELOG.md);
//! `tests/histories.rs` searches for the same class of bug at random.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pingora_cache::storage::{HitHandler, PurgeTarget, PurgeType, Storage};
use pingora_cache::trace::{Span, SpanHandle};
use pingora_cache::{CacheKey, CacheMeta, MemCache};
use tier_conformance::delayed::{Delayed, Delays};
use tier_core::{Capabilities, PlainTier};
use tier_disk::{DiskConfig, DiskStorage};
use tier_hybrid::policy::{Pause, Policy, Promotion, WritePolicy};
use tier_hybrid::{served_by, HybridStorage, Served};
use tier_memory::{MemoryConfig, MemoryStorage};

fn span() -> SpanHandle {
    Span::inactive().handle()
}

fn key(name: &str) -> CacheKey {
    CacheKey::new(name, "")
}

fn meta(marker: &str) -> CacheMeta {
    tier_core::testing::meta_with_header("x-marker", marker)
}

fn announced(marker: &str, len: usize) -> CacheMeta {
    let len = len.to_string();
    tier_core::testing::meta_fresh_for(
        Duration::from_secs(3600),
        &[("x-marker", marker), ("content-length", &len)],
    )
}

fn body(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn memory(capacity: usize, max_object: usize) -> &'static MemoryStorage {
    Box::leak(Box::new(MemoryStorage::new(
        MemoryConfig::new(capacity).max_object_bytes(max_object),
    )))
}

async fn disk(dir: &std::path::Path) -> &'static DiskStorage {
    DiskStorage::open(DiskConfig::new(dir, 256 << 20).block_size(4096))
        .await
        .expect("open")
        .leak()
}

async fn put_meta(
    storage: &'static (dyn Storage + Sync),
    name: &str,
    meta: &CacheMeta,
    data: &[u8],
) {
    let mut miss = storage
        .get_miss_handler(&key(name), meta, &span())
        .await
        .expect("miss");
    for chunk in data.chunks(16 << 10) {
        miss.write_body(Bytes::copy_from_slice(chunk), false)
            .await
            .expect("write");
    }
    miss.write_body(Bytes::new(), true).await.expect("eof");
    miss.finish().await.expect("finish");
}

async fn put(storage: &'static (dyn Storage + Sync), name: &str, data: &[u8]) {
    put_meta(storage, name, &meta(name), data).await
}

async fn get(storage: &'static (dyn Storage + Sync), name: &str) -> Option<Vec<u8>> {
    let (_, mut hit) = storage.lookup(&key(name), &span()).await.expect("lookup")?;
    Some(tier_core::testing::read_body(&mut hit).await.expect("read"))
}

async fn purge(storage: &'static (dyn Storage + Sync), name: &str, kind: PurgeType) {
    let compact = key(name).to_compact();
    storage
        .purge(PurgeTarget::Active(&compact), kind, &span())
        .await
        .expect("purge");
}

fn policy(write: WritePolicy) -> Policy {
    Policy::default().write(write).promotion(Promotion::Always)
}

/// Write-through over a memory tier refusing bodies over 64 KiB.
async fn small_memory_over_disk(
    dir: &std::path::Path,
) -> &'static HybridStorage<MemoryStorage, DiskStorage> {
    HybridStorage::new(
        memory(1 << 20, 64 << 10),
        disk(dir).await,
        policy(WritePolicy::WriteThrough),
    )
    .leak()
}

// ---- an overwrite too big for the hot tier ----------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overwrite_too_big_for_the_hot_tier_replaces_the_hot_copy() {
    for announce in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let hybrid = small_memory_over_disk(dir.path()).await;
        put(hybrid, "k", b"small").await;
        let big = body(1, 200 << 10);
        let big_meta = if announce {
            announced("big", big.len())
        } else {
            meta("big")
        };
        put_meta(hybrid, "k", &big_meta, &big).await;
        assert_eq!(
            get(hybrid, "k").await,
            Some(big),
            "the old small body was served after the overwrite finished (announced: {announce})"
        );
    }
}

// ---- write-back and the older generation left on the cold tier -------------

/// Write-back: generation 1 demoted to disk, generation 2 written to memory.
async fn two_generations(
    dir: &std::path::Path,
) -> (
    &'static HybridStorage<MemoryStorage, DiskStorage>,
    &'static MemoryStorage,
    &'static DiskStorage,
) {
    let memory = memory(1 << 20, 256 << 10);
    let disk = disk(dir).await;
    let hybrid = HybridStorage::new(memory, disk, policy(WritePolicy::WriteBack)).leak();
    put(hybrid, "k", &body(1, 10)).await;
    purge(hybrid, "k", PurgeType::Eviction).await;
    hybrid.wait_for_moves().await;
    assert_eq!(get(disk, "k").await, Some(body(1, 10)), "not demoted");
    put(hybrid, "k", &body(2, 20)).await;
    (hybrid, memory, disk)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_back_never_falls_back_to_an_older_generation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (hybrid, memory, _) = two_generations(dir.path()).await;
    // The hot copy leaves without a demotion (a shed one, say).
    purge(memory, "k", PurgeType::Invalidation).await;
    assert_ne!(
        get(hybrid, "k").await,
        Some(body(1, 10)),
        "the older generation came back from the cold tier"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revalidation_never_puts_new_headers_on_an_old_body() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (hybrid, memory, disk) = two_generations(dir.path()).await;
    let revalidated = tier_core::testing::meta_fresh_for(
        Duration::from_secs(7200),
        &[("x-marker", "k"), ("content-length", "20")],
    );
    assert!(hybrid
        .update_meta(&key("k"), &revalidated, &span())
        .await
        .expect("update_meta"));
    purge(memory, "k", PurgeType::Invalidation).await;
    for storage in [hybrid as &'static (dyn Storage + Sync), disk] {
        if let Some((meta, mut hit)) = storage.lookup(&key("k"), &span()).await.expect("lookup") {
            let got = tier_core::testing::read_body(&mut hit).await.expect("read");
            assert_eq!(
                meta.headers()
                    .get("content-length")
                    .map(|v| v.as_bytes().to_vec()),
                Some(got.len().to_string().into_bytes()),
                "generation 1's body under generation 2's Content-Length"
            );
        }
    }
}

// ---- a finished purge is undone by a demotion -------------------------------

/// A purge that arrives just after the hot tier evicted the entry, while
/// the eviction listener is still running, must not be undone by the
/// demotion. The listener is slowed inside the hot tier (a blocking sleep);
/// the purge is sent the moment the entry is seen gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_just_after_an_eviction_is_not_undone_by_its_demotion() {
    let dir = tempfile::tempdir().expect("tempdir");
    let memory = memory(64 << 10, 60_000);
    let delays = Delays {
        listener: Duration::from_millis(40),
        ..Delays::default()
    };
    let slow: &'static Delayed<MemoryStorage> = Delayed::new(memory, delays).leak();
    let disk = disk(dir.path()).await;
    let hybrid = HybridStorage::new(slow, disk, policy(WritePolicy::WriteBack)).leak();
    for round in 0..20 {
        let name = format!("purged-{round}");
        put(hybrid, &name, &body(3, 30_000)).await;
        let filler = format!("filler-{round}");
        let evicting = tokio::spawn(async move { put(hybrid, &filler, &body(4, 50_000)).await });
        while get(memory, &name).await.is_some() {
            tokio::task::yield_now().await;
        }
        purge(hybrid, &name, PurgeType::Invalidation).await;
        evicting.await.expect("filler");
        hybrid.wait_for_moves().await;
        assert_eq!(
            get(hybrid, &name).await,
            None,
            "round {round}: the purge was undone"
        );
        assert_eq!(
            get(disk, &name).await,
            None,
            "round {round}: demoted after its purge"
        );
    }
}

/// `purge(_, Eviction)` demotes; an invalidation right behind it wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_behind_an_eviction_purge_wins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pauses = Arc::new(|point: Pause| match point {
        Pause::Listener => Duration::from_millis(30),
        _ => Duration::ZERO,
    });
    let hybrid = HybridStorage::new(
        memory(1 << 20, 256 << 10),
        disk(dir.path()).await,
        policy(WritePolicy::WriteBack).test_pauses(pauses),
    )
    .leak();
    put(hybrid, "k", &body(5, 1000)).await;
    purge(hybrid, "k", PurgeType::Eviction).await;
    purge(hybrid, "k", PurgeType::Invalidation).await;
    hybrid.wait_for_moves().await;
    assert_eq!(get(hybrid, "k").await, None);
    assert!(hybrid.hybrid_stats().demotion_skips >= 1);
}

// ---- readers and a promotion in progress ------------------------------------

/// The cold hit that promotes, read one chunk and then held.
async fn promoting_reader(hybrid: &'static (dyn Storage + Sync)) -> HitHandler {
    let (_, mut first) = hybrid
        .lookup(&key("cold"), &span())
        .await
        .expect("lookup")
        .expect("cold hit");
    assert!(first.read_body().await.expect("read").is_some());
    first
}

async fn a_second_reader_gets_a_complete_seekable_body(hybrid: &'static (dyn Storage + Sync)) {
    let data = body(6, 300_000);
    let first = promoting_reader(hybrid).await;
    let (_, mut second) = hybrid
        .lookup(&key("cold"), &span())
        .await
        .expect("lookup")
        .expect("hit");
    assert!(second.can_seek(), "a reader during a promotion cannot seek");
    second.seek(1000, Some(2000)).expect("seek");
    let ranged = tier_core::testing::read_body(&mut second)
        .await
        .expect("read");
    assert_eq!(ranged, &data[1000..2000]);
    let (_, mut third) = hybrid
        .lookup(&key("cold"), &span())
        .await
        .expect("lookup")
        .expect("hit");
    // The promoting reader goes away mid-body: the third is unaffected.
    drop(first);
    let whole = tier_core::testing::read_body(&mut third)
        .await
        .expect("read");
    assert_eq!(
        whole.len(),
        data.len(),
        "a reader during a promotion got a short body"
    );
    assert_eq!(whole, data);
}

/// A disk tier holding the 300 KB "cold" object.
async fn cold_object(dir: &std::path::Path) -> &'static DiskStorage {
    let disk = disk(dir).await;
    put(disk, "cold", &body(6, 300_000)).await;
    disk
}

/// Memory (room for the object) over `cold_object`, write-through.
async fn memory_over_cold_object(
    dir: &std::path::Path,
) -> &'static HybridStorage<MemoryStorage, DiskStorage> {
    HybridStorage::new(
        memory(8 << 20, 1 << 20),
        cold_object(dir).await,
        policy(WritePolicy::WriteThrough),
    )
    .leak()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_during_a_promotion_get_a_complete_seekable_body() {
    let dir = tempfile::tempdir().expect("tempdir");
    a_second_reader_gets_a_complete_seekable_body(memory_over_cold_object(dir.path()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_during_a_promotion_into_memcache_get_the_whole_body() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = cold_object(dir.path()).await;
    let mut caps = Capabilities::default();
    caps.expire = true;
    let memcache: &'static PlainTier<MemCache> = Box::leak(Box::new(
        PlainTier::new("memcache", MemCache::new()).with_capabilities(caps),
    ));
    let hybrid = HybridStorage::new(memcache, disk, policy(WritePolicy::WriteThrough)).leak();
    a_second_reader_gets_a_complete_seekable_body(hybrid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_given_up_promotion_is_not_served_after_a_newer_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hybrid = memory_over_cold_object(dir.path()).await;
    let first = promoting_reader(hybrid).await;
    put(hybrid, "cold", b"newer").await;
    let (_, mut hit) = hybrid
        .lookup(&key("cold"), &span())
        .await
        .expect("lookup")
        .expect("hit");
    assert_eq!(served_by(&hit), Some(Served::Hot));
    let got = tier_core::testing::read_body(&mut hit).await.expect("read");
    assert_eq!(got, b"newer", "the promotion of the older body was served");
    drop(first);
}

// ---- write-back keeps what it was given -------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_back_keeps_every_entry_it_was_given() {
    let dir = tempfile::tempdir().expect("tempdir");
    // About a hundred 1 KB entries fit in memory.
    let memory = memory(160 << 10, 64 << 10);
    let disk = disk(dir.path()).await;
    let hybrid = HybridStorage::new(
        memory,
        disk,
        policy(WritePolicy::WriteBack).max_moves_in_flight(2),
    )
    .leak();
    let n = 2000;
    for i in 0..n {
        put(hybrid, &format!("entry-{i}"), &body(i as u8, 1000)).await;
    }
    hybrid.wait_for_moves().await;
    let mut lost = Vec::new();
    for i in 0..n {
        let name = format!("entry-{i}");
        let found = match get(memory, &name).await {
            Some(found) => Some(found),
            None => get(disk, &name).await,
        };
        if found != Some(body(i as u8, 1000)) {
            lost.push(i);
        }
    }
    let stats = hybrid.hybrid_stats();
    assert!(
        lost.is_empty(),
        "{} of {n} entries exist nowhere (first {:?}); {stats:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    assert_eq!(stats.demotions_shed, 0);
    assert!(stats.demotions as usize >= n - 200, "{stats:?}");
}

// ---- objects over the limits are served whole, not stored -------------------

/// What pingora-proxy 0.9.1 does on a miss with streaming partial writes:
/// the miss handler, the client's reader from `lookup_streaming_write` with
/// its tag, chunks written and read in turn in one task, then `finish`,
/// whose error would disable the cache and drop the reader. Returns what
/// the client got and whether `finish` succeeded.
async fn fill_like_pingora(
    hybrid: &'static (dyn Storage + Sync),
    name: &str,
    meta: &CacheMeta,
    data: &[u8],
) -> (Vec<u8>, bool) {
    let mut miss = hybrid
        .get_miss_handler(&key(name), meta, &span())
        .await
        .expect("a miss handler, even for a body no tier stores");
    let tag = miss.streaming_write_tag().map(<[u8]>::to_vec);
    let (_, mut reader) = hybrid
        .lookup_streaming_write(&key(name), tag.as_deref(), &span())
        .await
        .expect("lookup_streaming_write")
        .expect("pingora panics without a reader");
    let mut got = Vec::new();
    let chunks: Vec<_> = data.chunks(64 << 10).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        miss.write_body(Bytes::copy_from_slice(chunk), last)
            .await
            .expect("write_body: an error fails the client's response");
        // The client lags one chunk behind, as it does when the last chunk
        // and `finish` come in one upstream event.
        if i > 0 {
            let chunk = reader.read_body().await.expect("read").expect("a chunk");
            got.extend_from_slice(&chunk);
        }
    }
    let finished = miss.finish().await.is_ok();
    if finished {
        while let Some(chunk) = reader.read_body().await.expect("read") {
            got.extend_from_slice(&chunk);
        }
    }
    (got, finished)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_over_every_limit_is_served_whole_and_not_stored() {
    for (write, announce) in [
        (WritePolicy::WriteThrough, true),
        (WritePolicy::WriteThrough, false),
        (WritePolicy::WriteBack, true),
        (WritePolicy::WriteBack, false),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = DiskStorage::open(
            DiskConfig::new(dir.path(), 64 << 20)
                .block_size(4096)
                .max_object_bytes(256 << 10),
        )
        .await
        .expect("open")
        .leak();
        let hybrid = HybridStorage::new(memory(1 << 20, 64 << 10), disk, policy(write)).leak();
        let data = body(9, 1 << 20);
        let meta = if announce {
            announced("huge", data.len())
        } else {
            meta("huge")
        };
        let (got, finished) = fill_like_pingora(hybrid, "huge", &meta, &data).await;
        assert!(finished, "{write:?}, announced {announce}: finish failed");
        assert_eq!(
            got.len(),
            data.len(),
            "{write:?}, announced {announce}: cut off"
        );
        assert_eq!(got, data);
        assert_eq!(get(hybrid, "huge").await, None, "stored over every limit");
        assert_eq!(hybrid.hybrid_stats().passed_through, 1);
        // A miss nobody follows leaves no reader behind either.
        put(hybrid, "unfollowed", b"small").await;
        assert_eq!(hybrid.client_readers_waiting(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_one_tier_refuses_is_stored_in_the_other_and_served_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hybrid = small_memory_over_disk(dir.path()).await;
    let data = body(10, 500 << 10);
    let (got, finished) = fill_like_pingora(hybrid, "grows", &meta("grows"), &data).await;
    assert!(finished);
    assert_eq!(got, data);
    assert_eq!(get(hybrid, "grows").await, Some(data), "the disk copy");
    assert_eq!(hybrid.hybrid_stats().passed_through, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_of_an_aborted_fill_gets_an_error_not_a_clean_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hybrid = small_memory_over_disk(dir.path()).await;
    let mut miss = hybrid
        .get_miss_handler(&key("aborted"), &meta("aborted"), &span())
        .await
        .expect("miss");
    let tag = miss.streaming_write_tag().map(<[u8]>::to_vec);
    let (_, mut reader) = hybrid
        .lookup_streaming_write(&key("aborted"), tag.as_deref(), &span())
        .await
        .expect("lookup")
        .expect("reader");
    miss.write_body(Bytes::from_static(b"part"), false)
        .await
        .expect("write");
    drop(miss);
    loop {
        match reader.read_body().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("an aborted fill ended cleanly"),
            Err(_) => break,
        }
    }
}
