//! MemoryStorage's own promises beyond the shared contract: the byte bound,
//! the per-object limit, scan-resistant eviction, the eviction listener, and
//! pingora's eviction manager.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use pingora_cache::eviction::{simple_lru, CacheEntryKey, EvictionManager};
use pingora_cache::storage::{MissFinishType, PurgeOutcome, PurgeTarget, PurgeType, Storage};
use pingora_cache::trace::Span;
use pingora_cache::CacheKey;
use tier_core::{EvictedEntry, EvictionListener, Tier};
use tier_memory::{MemoryConfig, MemoryStorage};

fn leak(config: MemoryConfig) -> &'static MemoryStorage {
    Box::leak(Box::new(MemoryStorage::new(config)))
}

fn key(name: &str) -> CacheKey {
    CacheKey::new(name, "")
}

async fn put(
    storage: &'static MemoryStorage,
    name: &str,
    len: usize,
) -> pingora_error::Result<MissFinishType> {
    let span = Span::inactive().handle();
    let meta = tier_core::testing::meta_with_header("x", "1");
    let mut miss = storage.get_miss_handler(&key(name), &meta, &span).await?;
    miss.write_body(Bytes::from(vec![b'x'; len]), true).await?;
    miss.finish().await
}

async fn present(storage: &'static MemoryStorage, name: &str) -> bool {
    let span = Span::inactive().handle();
    matches!(storage.lookup(&key(name), &span).await, Ok(Some(_)))
}

#[tokio::test]
async fn oversized_body_is_refused_at_write_body_and_leaves_nothing() {
    let storage = leak(MemoryConfig::new(1 << 20).max_object_bytes(10_000));
    let span = Span::inactive().handle();
    let meta = tier_core::testing::meta_with_header("x", "1");
    let before = storage.used_bytes();
    let mut miss = storage
        .get_miss_handler(&key("big"), &meta, &span)
        .await
        .expect("miss");
    miss.write_body(Bytes::from(vec![0u8; 6000]), false)
        .await
        .expect("under the limit");
    let err = miss
        .write_body(Bytes::from(vec![0u8; 6000]), false)
        .await
        .expect_err("12000 bytes is over the 10000-byte limit");
    assert_eq!(err.etype(), &tier_core::error::OBJECT_TOO_LARGE);
    assert!(err.to_string().contains("10000-byte"), "{err}");
    assert!(
        miss.finish().await.is_err(),
        "a refused write cannot be published"
    );
    assert!(!present(storage, "big").await);
    assert_eq!(
        storage.used_bytes(),
        before,
        "the refused write kept bytes charged"
    );
    assert_eq!(storage.stats().rejections, 1);
}

#[tokio::test]
async fn writes_in_progress_count_against_the_bound() {
    let storage = leak(
        MemoryConfig::new(1 << 20)
            .max_object_bytes(700 << 10)
            .shards(1),
    );
    let span = Span::inactive().handle();
    let meta = tier_core::testing::meta_with_header("x", "1");
    let mut first = storage
        .get_miss_handler(&key("a"), &meta, &span)
        .await
        .expect("miss");
    first
        .write_body(Bytes::from(vec![1u8; 600 << 10]), false)
        .await
        .expect("fits");
    assert!(
        storage.used_bytes() > 600 << 10,
        "an open write is not charged"
    );

    let mut second = storage
        .get_miss_handler(&key("b"), &meta, &span)
        .await
        .expect("miss");
    let err = second
        .write_body(Bytes::from(vec![2u8; 600 << 10]), false)
        .await
        .expect_err("two 600 KiB writes cannot both be in 1 MiB");
    assert!(err.to_string().contains("writes in progress"), "{err}");
    assert!(storage.used_bytes() <= 1 << 20);

    drop(first);
    put(storage, "c", 600 << 10)
        .await
        .expect("room again once the first write is gone");
    assert!(present(storage, "c").await);
}

#[tokio::test]
async fn popular_entries_survive_a_scan_of_one_time_keys() {
    // About 200 entries of 4 KiB fit.
    let storage = leak(MemoryConfig::new(1 << 20).shards(1));
    for round in 0..3 {
        for i in 0..100 {
            let name = format!("hot/{i}");
            if round == 0 {
                put(storage, &name, 4096).await.expect("put");
            } else {
                assert!(present(storage, &name).await);
            }
        }
    }
    for i in 0..2000 {
        put(storage, &format!("scan/{i}"), 4096).await.expect("put");
    }
    let mut survivors = 0;
    for i in 0..100 {
        survivors += usize::from(present(storage, &format!("hot/{i}")).await);
    }
    // An LRU of this size would keep none of them: the scan is 10x its size.
    assert!(
        survivors >= 90,
        "only {survivors} of 100 hot entries survived the scan"
    );
    assert!(storage.used_bytes() <= 1 << 20);
}

/// Keeps what it is handed; a real listener would queue it for demotion.
#[derive(Default)]
struct Collect(Mutex<Vec<EvictedEntry>>);

impl EvictionListener for Collect {
    fn on_evict(&self, entry: EvictedEntry) {
        if let Ok(mut seen) = self.0.lock() {
            seen.push(entry);
        }
    }
}

#[tokio::test]
async fn eviction_listener_receives_each_evicted_entry_with_its_body() {
    let storage = leak(
        MemoryConfig::new(64 << 10)
            .shards(1)
            .max_object_bytes(60_000),
    );
    let listener = Arc::new(Collect::default());
    assert!(storage.set_eviction_listener(listener.clone()));
    for i in 0..40 {
        put(storage, &format!("e/{i}"), 4000).await.expect("put");
    }
    let evictions = storage.stats().evictions;
    assert!(evictions > 0);
    let seen: Vec<EvictedEntry> = std::mem::take(&mut *listener.0.lock().expect("lock"));
    assert_eq!(seen.len() as u64, evictions);
    let span = Span::inactive().handle();
    for mut entry in seen {
        let mut body = Vec::new();
        while let Some(chunk) = entry.body.read_body().await.expect("read") {
            body.extend_from_slice(&chunk);
        }
        assert_eq!(body, vec![b'x'; 4000]);
        assert!(entry.entry_id.is_some());
        assert_eq!(
            entry.meta.headers().get("x").map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        // Evicted keys are gone from the tier.
        let key = tier_core::key::cache_key_from_compact(&entry.key);
        assert!(storage.lookup(&key, &span).await.expect("lookup").is_none());
    }
}

#[tokio::test]
async fn pingora_eviction_manager_purges_exactly_the_generation_it_tracks() {
    let storage = leak(MemoryConfig::new(64 << 20));
    // The manager allows 10 entries' worth of weight; the tier itself has room for all.
    let probe = put(storage, "probe", 10_000).await.expect("put");
    let MissFinishType::Created(weight) = probe else {
        panic!("not created")
    };
    let manager = simple_lru::Manager::new(weight * 10);
    let span = Span::inactive().handle();
    let meta = tier_core::testing::meta_with_header("x", "1");
    let mut ids = Vec::new();
    for i in 0..30 {
        let k = key(&format!("m/{i}"));
        let mut miss = storage
            .get_miss_handler(&k, &meta, &span)
            .await
            .expect("miss");
        let id = miss.entry_id().expect("memory tier assigns ids");
        miss.write_body(Bytes::from(vec![0u8; 10_000]), true)
            .await
            .expect("write");
        let MissFinishType::Created(size) = miss.finish().await.expect("finish") else {
            panic!()
        };
        ids.push(id);
        let evict = manager.admit(
            CacheEntryKey::identified(k.to_compact(), id),
            size,
            meta.fresh_until(),
        );
        for victim in evict {
            let outcome = storage
                .purge(PurgeTarget::Exact(&victim), PurgeType::Eviction, &span)
                .await
                .expect("purge");
            assert!(
                matches!(outcome, PurgeOutcome::Purged(_)),
                "{victim}: {outcome:?}"
            );
        }
    }
    // The manager keeps the last 10; the tier holds them (plus the probe).
    for i in 0..30 {
        assert_eq!(
            present(storage, &format!("m/{i}")).await,
            i >= 20,
            "entry {i}"
        );
    }
    assert_eq!(manager.total_items(), 10);
}

#[tokio::test]
async fn stats_count_every_kind_of_event() {
    let storage = leak(
        MemoryConfig::new(32 << 10)
            .max_object_bytes(8 << 10)
            .shards(1),
    );
    put(storage, "s/1", 1000).await.expect("put");
    assert!(present(storage, "s/1").await);
    assert!(!present(storage, "s/missing").await);
    assert!(put(storage, "s/too-big", 9000).await.is_err());
    for i in 0..20 {
        put(storage, &format!("s/fill/{i}"), 4000)
            .await
            .expect("put");
    }
    let stats = storage.stats();
    assert_eq!(stats.hits, 1);
    assert_eq!(stats.misses, 1);
    assert_eq!(stats.inserts, 21);
    assert_eq!(stats.rejections, 1);
    assert!(stats.evictions >= 10, "{stats:?}");
    assert_eq!(stats.entries, 21 - stats.evictions);
    assert!(stats.bytes <= 32 << 10);
}

/// Two keys whose 64-bit slots collide: primaries that differ only after
/// the first eight bytes.
fn colliding_keys() -> (CacheKey, CacheKey) {
    let mut a = CacheKey::new("", "");
    let mut b = CacheKey::new("", "");
    let mut primary = [7u8; 16];
    a.set_primary_bin_override(primary);
    primary[15] = 8;
    b.set_primary_bin_override(primary);
    (a, b)
}

#[tokio::test]
async fn a_write_in_progress_is_found_by_its_full_key_only() {
    let storage = leak(MemoryConfig::new(1 << 20));
    let span = Span::inactive().handle();
    let (a, b) = colliding_keys();
    let meta = tier_core::testing::meta_with_header("x", "a");
    let mut miss = storage
        .get_miss_handler(&a, &meta, &span)
        .await
        .expect("miss");
    miss.write_body(Bytes::from_static(b"a's body"), false)
        .await
        .expect("write");
    assert!(
        storage.lookup(&b, &span).await.expect("lookup").is_none(),
        "a lookup of another key with the same slot found a's write in progress"
    );
    assert!(storage.lookup(&a, &span).await.expect("lookup").is_some());
    miss.finish().await.expect("finish");
    assert!(storage.lookup(&b, &span).await.expect("lookup").is_none());
}

#[tokio::test]
async fn an_older_write_in_progress_does_not_hide_a_newer_published_one() {
    let storage = leak(MemoryConfig::new(1 << 20));
    let span = Span::inactive().handle();
    let meta = tier_core::testing::meta_with_header("x", "1");
    let mut older = storage
        .get_miss_handler(&key("overtaken"), &meta, &span)
        .await
        .expect("miss");
    older
        .write_body(Bytes::from_static(b"older"), false)
        .await
        .expect("write");
    put(storage, "overtaken", 5).await.expect("newer write");
    let (_, mut hit) = storage
        .lookup(&key("overtaken"), &span)
        .await
        .expect("lookup")
        .expect("hit");
    let body = tier_core::testing::read_body(&mut hit).await.expect("read");
    assert_eq!(body, b"xxxxx", "the older write in progress was served");
    drop(older);
}

#[tokio::test]
async fn a_private_write_is_seen_only_once_published() {
    let storage = leak(MemoryConfig::new(1 << 20));
    let span = Span::inactive().handle();
    let meta = tier_core::testing::meta_with_header("x", "1");
    assert!(storage.capabilities().private_writes);
    let mut miss = storage
        .get_private_miss_handler(&key("private"), &meta, &span)
        .await
        .expect("miss");
    miss.write_body(Bytes::from_static(b"quiet"), false)
        .await
        .expect("write");
    assert!(
        !present(storage, "private").await,
        "a private write was followed"
    );
    miss.finish().await.expect("finish");
    assert!(present(storage, "private").await);
    // An abandoned private write leaves nothing, as any write.
    let mut dropped = storage
        .get_private_miss_handler(&key("private-dropped"), &meta, &span)
        .await
        .expect("miss");
    dropped
        .write_body(Bytes::from_static(b"gone"), false)
        .await
        .expect("write");
    drop(dropped);
    assert!(!present(storage, "private-dropped").await);
}

/// The eviction listener runs before the shard lets anyone see the entry
/// gone: a lookup racing the eviction waits for the listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_runs_before_an_eviction_is_visible() {
    struct Slow {
        heard: Mutex<Vec<String>>,
    }
    impl EvictionListener for Slow {
        fn on_evict(&self, entry: EvictedEntry) {
            std::thread::sleep(std::time::Duration::from_millis(30));
            let id = entry.entry_id.map(|id| id.get().to_string());
            self.heard
                .lock()
                .expect("lock")
                .push(id.unwrap_or_default());
        }
    }
    let storage = leak(
        MemoryConfig::new(64 << 10)
            .shards(1)
            .max_object_bytes(60_000),
    );
    let listener = Arc::new(Slow {
        heard: Mutex::new(Vec::new()),
    });
    assert!(storage.set_eviction_listener(listener.clone()));
    put(storage, "first", 30_000).await.expect("first");
    let filler = tokio::spawn(async move { put(storage, "second", 50_000).await });
    // Watch for "first" to disappear; the moment it does, the listener
    // must already have heard of it.
    loop {
        if !present(storage, "first").await {
            assert_eq!(
                listener.heard.lock().expect("lock").len(),
                1,
                "the eviction was visible before the listener ran"
            );
            break;
        }
        tokio::task::yield_now().await;
    }
    filler.await.expect("task").expect("second");
}
