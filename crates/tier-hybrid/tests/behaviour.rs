//! What the hybrid promises beyond the shared contract: the seed's ten tests
//! written anew against the 0.9.1 API, streaming promotion, the policy knobs,
//! moves that a purge cancels, and tiers that fail.

use std::any::Any;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_cache::eviction::CacheEntryKey;
use pingora_cache::storage::{
    HitHandler, MissHandler, PurgeOutcome, PurgeTarget, PurgeType, Storage,
};
use pingora_cache::trace::{Span, SpanHandle};
use pingora_cache::{CacheKey, CacheMeta};
use pingora_error::{Error, ErrorType, Result};
use tier_core::Tier;
use tier_disk::{DiskConfig, DiskStorage};
use tier_hybrid::policy::{Policy, Promotion, WritePolicy};
use tier_hybrid::HybridStorage;
use tier_memory::{MemoryConfig, MemoryStorage};

type MemDisk = HybridStorage<MemoryStorage, DiskStorage>;

struct Fixture {
    hybrid: &'static MemDisk,
    memory: &'static MemoryStorage,
    disk: &'static DiskStorage,
    _dir: tempfile::TempDir,
}

async fn fixture(policy: Policy) -> Fixture {
    fixture_sized(policy, 64 << 20).await
}

async fn fixture_sized(policy: Policy, memory_bytes: usize) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let memory: &'static MemoryStorage = Box::leak(Box::new(MemoryStorage::new(
        MemoryConfig::new(memory_bytes).max_object_bytes(memory_bytes / 2),
    )));
    let disk = DiskStorage::open(DiskConfig::new(dir.path(), 256 << 20).block_size(4096))
        .await
        .expect("open")
        .leak();
    let hybrid = HybridStorage::new(memory, disk, policy).leak();
    Fixture {
        hybrid,
        memory,
        disk,
        _dir: dir,
    }
}

fn span() -> SpanHandle {
    Span::inactive().handle()
}

fn key(name: &str) -> CacheKey {
    CacheKey::new(name, "")
}

fn meta(marker: &str) -> CacheMeta {
    tier_core::testing::meta_with_header("x-marker", marker)
}

async fn put(storage: &'static (dyn Storage + Sync), name: &str, chunks: &[&[u8]]) {
    let mut miss = storage
        .get_miss_handler(&key(name), &meta(name), &span())
        .await
        .expect("miss");
    for chunk in chunks {
        miss.write_body(Bytes::copy_from_slice(chunk), false)
            .await
            .expect("write");
    }
    miss.finish().await.expect("finish");
}

async fn read_all(hit: &mut HitHandler) -> Vec<u8> {
    tier_core::testing::read_body(hit).await.expect("read")
}

async fn get(storage: &'static (dyn Storage + Sync), name: &str) -> Option<Vec<u8>> {
    let (_, mut hit) = storage.lookup(&key(name), &span()).await.expect("lookup")?;
    Some(read_all(&mut hit).await)
}

fn always() -> Policy {
    Policy::default().promotion(Promotion::Always)
}

// ---- the seed's ten promises ------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn miss_then_hit() {
    let f = fixture(always()).await;
    assert!(get(f.hybrid, "a").await.is_none());
    put(f.hybrid, "a", &[b"hello"]).await;
    assert_eq!(get(f.hybrid, "a").await.as_deref(), Some(&b"hello"[..]));
    assert_eq!(f.hybrid.hybrid_stats().hot_hits, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_entry_is_promoted_while_it_streams() {
    let f = fixture(always()).await;
    let body = vec![9u8; 50_000];
    put(f.disk, "cold", &[&body]).await;
    assert!(get(f.memory, "cold").await.is_none());
    assert_eq!(get(f.hybrid, "cold").await, Some(body.clone()));
    f.hybrid.wait_for_moves().await;
    assert_eq!(get(f.memory, "cold").await, Some(body), "not promoted");
    let stats = f.hybrid.hybrid_stats();
    assert_eq!((stats.cold_hits, stats.promotions), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_purge_clears_both_tiers() {
    let f = fixture(always()).await;
    put(f.hybrid, "p", &[b"both"]).await;
    assert!(get(f.memory, "p").await.is_some() && get(f.disk, "p").await.is_some());
    let compact = key("p").to_compact();
    let outcome = f
        .hybrid
        .purge(
            PurgeTarget::Active(&compact),
            PurgeType::Invalidation,
            &span(),
        )
        .await
        .expect("purge");
    assert!(matches!(outcome, PurgeOutcome::Purged(Some(_))));
    assert!(get(f.memory, "p").await.is_none() && get(f.disk, "p").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_meta_reaches_both_tiers_and_an_entry_only_in_cold() {
    let f = fixture(always()).await;
    put(f.hybrid, "u", &[b"body"]).await;
    put(f.disk, "cold-only", &[b"cold body"]).await;
    for name in ["u", "cold-only"] {
        assert!(f
            .hybrid
            .update_meta(&key(name), &meta("updated"), &span())
            .await
            .expect("update"));
    }
    for storage in [f.memory as &'static (dyn Storage + Sync), f.disk] {
        let (m, _) = storage
            .lookup(&key("u"), &span())
            .await
            .expect("lookup")
            .expect("present");
        assert_eq!(
            m.headers().get("x-marker").map(|v| v.as_bytes()),
            Some(&b"updated"[..])
        );
    }
    let (m, _) = f
        .disk
        .lookup(&key("cold-only"), &span())
        .await
        .expect("lookup")
        .expect("present");
    assert_eq!(
        m.headers().get("x-marker").map(|v| v.as_bytes()),
        Some(&b"updated"[..])
    );
    assert!(!f
        .hybrid
        .update_meta(&key("absent"), &meta("x"), &span())
        .await
        .expect("update"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_miss_handler_leaves_nothing_in_either_tier() {
    let f = fixture(always()).await;
    let mut miss = f
        .hybrid
        .get_miss_handler(&key("d"), &meta("d"), &span())
        .await
        .expect("miss");
    miss.write_body(Bytes::from_static(b"half"), false)
        .await
        .expect("write");
    drop(miss);
    assert!(get(f.memory, "d").await.is_none());
    assert!(get(f.disk, "d").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_write_reads_back_whole() {
    let f = fixture(always()).await;
    put(f.hybrid, "c", &[b"one,", b"two,", b"three"]).await;
    assert_eq!(
        get(f.hybrid, "c").await.as_deref(),
        Some(&b"one,two,three"[..])
    );
    assert_eq!(
        get(f.disk, "c").await.as_deref(),
        Some(&b"one,two,three"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seek_works_on_hot_and_cold_hits_and_stops_a_promotion() {
    let f = fixture(always()).await;
    let body: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
    put(f.hybrid, "s-hot", &[&body]).await;
    put(f.disk, "s-cold", &[&body]).await;
    for name in ["s-hot", "s-cold"] {
        let (_, mut hit) = f
            .hybrid
            .lookup(&key(name), &span())
            .await
            .expect("lookup")
            .expect("hit");
        hit.seek(100, Some(200)).expect("seek");
        assert_eq!(read_all(&mut hit).await, body[100..200]);
        hit.seek(19_990, None).expect("seek");
        assert_eq!(read_all(&mut hit).await, body[19_990..]);
        assert!(hit.seek(20_000, None).is_err());
    }
    f.hybrid.wait_for_moves().await;
    assert!(
        get(f.memory, "s-cold").await.is_none(),
        "a range read promoted a partial copy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_purge_leaves_the_cold_copy() {
    let f = fixture(always()).await;
    put(f.hybrid, "e", &[b"keep me cold"]).await;
    let compact = key("e").to_compact();
    let outcome = f
        .hybrid
        .purge(PurgeTarget::Active(&compact), PurgeType::Eviction, &span())
        .await
        .expect("purge");
    assert!(matches!(outcome, PurgeOutcome::Purged(_)));
    assert!(get(f.memory, "e").await.is_none());
    assert_eq!(
        get(f.disk, "e").await.as_deref(),
        Some(&b"keep me cold"[..])
    );
}

/// Found by the model-based test: once the hot copy is evicted, a second
/// eviction finds nothing to evict in the hot tier and says so, and the cold
/// copy stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_eviction_leaves_the_cold_copy_and_reports_not_found() {
    let f = fixture(Policy::default().promotion(Promotion::Never)).await;
    put(f.hybrid, "twice", &[b"still cold"]).await;
    let compact = key("twice").to_compact();
    let first = f
        .hybrid
        .purge(PurgeTarget::Active(&compact), PurgeType::Eviction, &span())
        .await
        .expect("purge");
    let second = f
        .hybrid
        .purge(PurgeTarget::Active(&compact), PurgeType::Eviction, &span())
        .await
        .expect("purge");
    assert!(matches!(first, PurgeOutcome::Purged(_)));
    assert_eq!(second, PurgeOutcome::NotFound);
    assert_eq!(
        get(f.hybrid, "twice").await.as_deref(),
        Some(&b"still cold"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_after_eviction_comes_from_cold_and_is_promoted_again() {
    let f = fixture(always()).await;
    put(f.hybrid, "h", &[b"evict and find"]).await;
    let compact = key("h").to_compact();
    f.hybrid
        .purge(PurgeTarget::Active(&compact), PurgeType::Eviction, &span())
        .await
        .expect("purge");
    assert_eq!(
        get(f.hybrid, "h").await.as_deref(),
        Some(&b"evict and find"[..])
    );
    f.hybrid.wait_for_moves().await;
    assert_eq!(
        get(f.memory, "h").await.as_deref(),
        Some(&b"evict and find"[..])
    );
}

/// The write's id, for an exact purge.
async fn put_id(storage: &'static (dyn Storage + Sync), name: &str, body: &[u8]) -> CacheEntryKey {
    let mut miss = storage
        .get_miss_handler(&key(name), &meta(name), &span())
        .await
        .expect("miss");
    miss.write_body(Bytes::copy_from_slice(body), false)
        .await
        .expect("write");
    let id = miss.entry_id();
    miss.finish().await.expect("finish");
    CacheEntryKey::from_entry_id(key(name).to_compact(), id)
}

async fn invalidate(storage: &'static (dyn Storage + Sync), entry: &CacheEntryKey) -> PurgeOutcome {
    storage
        .purge(PurgeTarget::Exact(entry), PurgeType::Invalidation, &span())
        .await
        .expect("purge")
}

// Shrunk from the write-through model: write, evict the hot copy, promote it
// back (a new hot id), then invalidate with the write's id. The promoted copy
// carries the same generation, so it must go with the cold one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exact_invalidation_reaches_a_promoted_copy() {
    let f = fixture(always()).await;
    let entry = put_id(f.hybrid, "g", b"").await;
    let compact = key("g").to_compact();
    f.hybrid
        .purge(PurgeTarget::Active(&compact), PurgeType::Eviction, &span())
        .await
        .expect("evict");
    assert_eq!(get(f.hybrid, "g").await.as_deref(), Some(&b""[..]));
    f.hybrid.wait_for_moves().await;
    assert!(get(f.memory, "g").await.is_some(), "not promoted back");
    assert!(matches!(
        invalidate(f.hybrid, &entry).await,
        PurgeOutcome::Purged(_)
    ));
    assert!(get(f.hybrid, "g").await.is_none(), "a copy survived");
    assert!(!f
        .hybrid
        .update_meta(&key("g"), &meta("late"), &span())
        .await
        .expect("update_meta"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exact_invalidation_with_an_older_id_keeps_the_newer_write() {
    let f = fixture(always()).await;
    let old = put_id(f.hybrid, "n", b"old").await;
    put(f.hybrid, "n", &[b"new"]).await;
    assert_eq!(invalidate(f.hybrid, &old).await, PurgeOutcome::NotFound);
    assert_eq!(get(f.memory, "n").await.as_deref(), Some(&b"new"[..]));
    assert_eq!(get(f.disk, "n").await.as_deref(), Some(&b"new"[..]));
    let expired = f
        .hybrid
        .expire(PurgeTarget::Exact(&old), &span())
        .await
        .expect("expire");
    assert_eq!(expired, PurgeOutcome::NotFound);
}

// ---- write-back ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_back_writes_hot_only_and_demotes_what_hot_evicts() {
    let f = fixture_sized(always().write(WritePolicy::WriteBack), 1 << 20).await;
    put(f.hybrid, "wb", &[&[1u8; 10_000]]).await;
    assert!(get(f.memory, "wb").await.is_some());
    assert!(
        get(f.disk, "wb").await.is_none(),
        "write-back wrote the cold tier on a miss"
    );
    // An eviction purge (as pingora's eviction manager does) demotes.
    let compact = key("wb").to_compact();
    f.hybrid
        .purge(PurgeTarget::Active(&compact), PurgeType::Eviction, &span())
        .await
        .expect("purge");
    f.hybrid.wait_for_moves().await;
    assert_eq!(get(f.disk, "wb").await, Some(vec![1u8; 10_000]));
    // The hot tier's own evictions demote too.
    for i in 0..40 {
        put(f.hybrid, &format!("fill/{i}"), &[&[2u8; 100_000]]).await;
    }
    f.hybrid.wait_for_moves().await;
    let stats = f.hybrid.hybrid_stats();
    assert!(stats.demotions >= 20, "{stats:?}");
    assert_eq!(get(f.disk, "fill/0").await, Some(vec![2u8; 100_000]));
    assert_eq!(get(f.hybrid, "fill/0").await, Some(vec![2u8; 100_000]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_back_does_not_demote_an_unchanged_promoted_copy() {
    let f = fixture(always().write(WritePolicy::WriteBack)).await;
    put(f.disk, "clean", &[&[4u8; 8_000]]).await;
    assert!(get(f.hybrid, "clean").await.is_some());
    f.hybrid.wait_for_moves().await;
    assert!(get(f.memory, "clean").await.is_some(), "not promoted");
    let compact = key("clean").to_compact();
    f.hybrid
        .purge(PurgeTarget::Active(&compact), PurgeType::Eviction, &span())
        .await
        .expect("purge");
    f.hybrid.wait_for_moves().await;
    assert_eq!(
        f.hybrid.hybrid_stats().demotions,
        0,
        "rewrote a copy the cold tier already had"
    );
    assert_eq!(get(f.disk, "clean").await, Some(vec![4u8; 8_000]));
    // Written anew, the same key is dirty again and is demoted on eviction.
    put(f.hybrid, "clean", &[&[5u8; 8_000]]).await;
    f.hybrid
        .purge(PurgeTarget::Active(&compact), PurgeType::Eviction, &span())
        .await
        .expect("purge");
    f.hybrid.wait_for_moves().await;
    assert_eq!(f.hybrid.hybrid_stats().demotions, 1);
    assert_eq!(get(f.disk, "clean").await, Some(vec![5u8; 8_000]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_announced_too_large_for_hot_is_written_to_cold_alone() {
    // The memory tier refuses bodies over half its 1 MiB.
    let f = fixture_sized(always(), 1 << 20).await;
    let meta = tier_core::testing::meta_fresh_for(
        std::time::Duration::from_secs(60),
        &[("content-length", "800000")],
    );
    let mut miss = f
        .hybrid
        .get_miss_handler(&key("large"), &meta, &span())
        .await
        .expect("miss");
    let tag = miss.streaming_write_tag().map(<[u8]>::to_vec);
    // A reader following the write (as pingora's filling request does)
    // follows the cold tier's write, which can finish.
    let (_, mut follower) = f
        .hybrid
        .lookup_streaming_write(&key("large"), tag.as_deref(), &span())
        .await
        .expect("lookup")
        .expect("the write in progress");
    for _ in 0..8 {
        miss.write_body(Bytes::from(vec![6u8; 100_000]), false)
            .await
            .expect("write");
    }
    miss.finish().await.expect("finish");
    assert_eq!(read_all(&mut follower).await.len(), 800_000);
    assert!(get(f.memory, "large").await.is_none());
    assert_eq!(get(f.disk, "large").await.map(|b| b.len()), Some(800_000));
}

// ---- promotion policy ------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_nth_hit_promotes_on_the_second_cold_hit() {
    let f = fixture(Policy::default().promotion(Promotion::OnNthHit(2))).await;
    put(f.disk, "n", &[b"twice"]).await;
    get(f.hybrid, "n").await;
    f.hybrid.wait_for_moves().await;
    assert!(
        get(f.memory, "n").await.is_none(),
        "promoted on the first hit"
    );
    get(f.hybrid, "n").await;
    f.hybrid.wait_for_moves().await;
    assert!(
        get(f.memory, "n").await.is_some(),
        "not promoted on the second hit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_ceiling_are_not_promoted() {
    let f = fixture(always().max_promote_bytes(1000)).await;
    put(f.disk, "big", &[&[0u8; 5000]]).await;
    assert!(get(f.hybrid, "big").await.is_some());
    f.hybrid.wait_for_moves().await;
    assert!(get(f.memory, "big").await.is_none());
    let stats = f.hybrid.hybrid_stats();
    assert_eq!(stats.promotions_not_admitted, 1, "{stats:?}");
    assert_eq!(stats.promotions_no_permit, 0, "{stats:?}");
}

/// Each reason a cold hit is not promoted has its own counter: no move
/// permit (the limit on moves in flight), the key already moving, and a
/// promotion given up because its reader stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipped_promotions_are_counted_by_reason() {
    let f = fixture(always().max_moves_in_flight(1)).await;
    put(f.disk, "a", &[&[1u8; 3000]]).await;
    put(f.disk, "b", &[&[2u8; 3000]]).await;
    // The first cold hit takes the only move permit and holds it while its
    // body is unread.
    let (_, held) = f
        .hybrid
        .lookup(&key("a"), &span())
        .await
        .expect("lookup")
        .expect("hit");
    // A second key finds no permit; the same key finds it already moving.
    assert_eq!(get(f.hybrid, "b").await.as_deref(), Some(&[2u8; 3000][..]));
    assert_eq!(get(f.hybrid, "a").await.as_deref(), Some(&[1u8; 3000][..]));
    let stats = f.hybrid.hybrid_stats();
    assert_eq!(stats.promotions_no_permit, 1, "{stats:?}");
    assert_eq!(stats.promotions_key_busy, 1, "{stats:?}");
    assert_eq!(stats.promotions_abandoned, 0, "{stats:?}");
    // The held reader stops without reading: that promotion is abandoned.
    drop(held);
    f.hybrid.wait_for_moves().await;
    let stats = f.hybrid.hybrid_stats();
    assert_eq!(stats.promotions_abandoned, 1, "{stats:?}");
    assert_eq!(stats.promotions, 0, "{stats:?}");
    assert_eq!(stats.promotions_not_admitted, 0, "{stats:?}");
    // With the permit back, the next cold hit promotes.
    assert!(get(f.hybrid, "b").await.is_some());
    f.hybrid.wait_for_moves().await;
    assert_eq!(f.hybrid.hybrid_stats().promotions, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_hits_of_one_key_promote_once() {
    let f = fixture(always()).await;
    put(f.disk, "twin", &[&[5u8; 30_000]]).await;
    let (_, mut first) = f
        .hybrid
        .lookup(&key("twin"), &span())
        .await
        .expect("lookup")
        .expect("hit");
    let (_, mut second) = f
        .hybrid
        .lookup(&key("twin"), &span())
        .await
        .expect("lookup")
        .expect("hit");
    assert_eq!(read_all(&mut first).await, vec![5u8; 30_000]);
    assert_eq!(read_all(&mut second).await, vec![5u8; 30_000]);
    f.hybrid.wait_for_moves().await;
    // The second lookup either follows the first one's copy into the hot
    // tier (a hot hit on the write in progress) or is a cold hit that does
    // not start a second copy: one promotion either way.
    let stats = f.hybrid.hybrid_stats();
    assert_eq!(stats.promotions, 1, "{stats:?}");
    assert_eq!(stats.hot_hits + stats.cold_hits, 2, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_early_leaves_no_partial_copy() {
    let f = fixture(always()).await;
    put(f.disk, "early", &[&[3u8; 40_000]]).await;
    let (_, mut hit) = f
        .hybrid
        .lookup(&key("early"), &span())
        .await
        .expect("lookup")
        .expect("hit");
    assert!(hit.read_body().await.expect("read").is_some());
    drop(hit);
    f.hybrid.wait_for_moves().await;
    assert!(get(f.memory, "early").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_beyond_the_budget_are_skipped_and_counted() {
    let f = fixture(always().max_moves_in_flight(1)).await;
    put(f.disk, "x", &[&[1u8; 20_000]]).await;
    put(f.disk, "y", &[&[2u8; 20_000]]).await;
    let (_, mut x) = f
        .hybrid
        .lookup(&key("x"), &span())
        .await
        .expect("lookup")
        .expect("hit");
    assert_eq!(f.hybrid.moves_in_flight(), 1);
    assert_eq!(get(f.hybrid, "y").await, Some(vec![2u8; 20_000]));
    read_all(&mut x).await;
    f.hybrid.wait_for_moves().await;
    assert!(get(f.memory, "x").await.is_some());
    assert!(get(f.memory, "y").await.is_none(), "a move over budget ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_during_a_promotion_is_not_undone_by_it() {
    let f = fixture(always()).await;
    put(f.disk, "race", &[&[7u8; 40_000]]).await;
    let (_, mut hit) = f
        .hybrid
        .lookup(&key("race"), &span())
        .await
        .expect("lookup")
        .expect("hit");
    assert!(hit.read_body().await.expect("read").is_some());
    let compact = key("race").to_compact();
    f.hybrid
        .purge(
            PurgeTarget::Active(&compact),
            PurgeType::Invalidation,
            &span(),
        )
        .await
        .expect("purge");
    // The reader finishes the body it already had open.
    while hit.read_body().await.expect("read").is_some() {}
    f.hybrid.wait_for_moves().await;
    assert!(
        get(f.hybrid, "race").await.is_none(),
        "the promotion brought a purged entry back"
    );
}

// ---- failing tiers ---------------------------------------------------------

/// A tier whose every call fails, as a broken disk or an unreachable remote.
struct Failing;

fn broken<T>() -> Result<T> {
    Err(Error::explain(
        ErrorType::Custom("Broken"),
        "this tier always fails",
    ))
}

#[async_trait]
impl Storage for Failing {
    async fn lookup(
        &'static self,
        _: &CacheKey,
        _: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        broken()
    }
    async fn get_miss_handler(
        &'static self,
        _: &CacheKey,
        _: &CacheMeta,
        _: &SpanHandle,
    ) -> Result<MissHandler> {
        broken()
    }
    async fn purge(
        &'static self,
        _: PurgeTarget<'_>,
        _: PurgeType,
        _: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        broken()
    }
    async fn update_meta(
        &'static self,
        _: &CacheKey,
        _: &CacheMeta,
        _: &SpanHandle,
    ) -> Result<bool> {
        broken()
    }
    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

impl Tier for Failing {}

static FAILING: Failing = Failing;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_hot_tier_is_skipped() {
    let memory: &'static MemoryStorage =
        Box::leak(Box::new(MemoryStorage::new(MemoryConfig::new(8 << 20))));
    let hybrid = HybridStorage::new(&FAILING, memory, always()).leak();
    put(hybrid, "f", &[b"served by cold"]).await;
    assert_eq!(
        get(hybrid, "f").await.as_deref(),
        Some(&b"served by cold"[..])
    );
    let compact = key("f").to_compact();
    let outcome = hybrid
        .purge(
            PurgeTarget::Active(&compact),
            PurgeType::Invalidation,
            &span(),
        )
        .await
        .expect("purge");
    assert!(matches!(outcome, PurgeOutcome::Purged(_)));
    assert!(hybrid.hybrid_stats().errors >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_cold_tier_is_a_miss_not_an_outage() {
    let memory: &'static MemoryStorage =
        Box::leak(Box::new(MemoryStorage::new(MemoryConfig::new(8 << 20))));
    let hybrid = HybridStorage::new(memory, &FAILING, always()).leak();
    assert!(
        get(hybrid, "absent").await.is_none(),
        "a cold error became a failed lookup"
    );
    put(hybrid, "g", &[b"hot still works"]).await;
    assert_eq!(
        get(hybrid, "g").await.as_deref(),
        Some(&b"hot still works"[..])
    );
    let stats = hybrid.hybrid_stats();
    assert!(stats.errors >= 2 && stats.misses == 1, "{stats:?}");
}

/// The disk tier failing its file operations (EIO on every write path, by
/// tier-disk's test-only fault plan): the hybrid still takes writes into
/// memory and serves them, and counts the errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hybrid_keeps_serving_while_its_disk_fails() {
    use tier_disk::{FaultKind, FaultPlan};
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = FaultPlan::new();
    let disk = DiskStorage::open(DiskConfig::new(dir.path(), 64 << 20).fault_plan(plan.clone()))
        .await
        .expect("open")
        .leak();
    let memory: &'static MemoryStorage =
        Box::leak(Box::new(MemoryStorage::new(MemoryConfig::new(8 << 20))));
    let hybrid = HybridStorage::new(memory, disk, always()).leak();
    // The first file operation of a write: creating the segment, or the
    // append of its record.
    for (n, name) in [
        (1, "disk-fails-op-1"),
        (1, "disk-fails-op-1-again"),
        (1, "disk-fails-op-1-once-more"),
    ] {
        plan.fail_at(n, FaultKind::Eio);
        put(hybrid, name, &[b"served from memory"]).await;
        assert_eq!(
            get(hybrid, name).await.as_deref(),
            Some(&b"served from memory"[..]),
            "{name}"
        );
    }
    plan.fail_at(0, FaultKind::Eio);
    assert!(
        hybrid.hybrid_stats().errors >= 3,
        "{:?}",
        hybrid.hybrid_stats()
    );
    assert_eq!(
        tier_core::Tier::stats(disk).entries,
        0,
        "a failed write was indexed"
    );
}
