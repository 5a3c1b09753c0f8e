//! The hybrid over the shared Redis tier: the three-level composition keeps
//! the contract, and a hybrid keeps serving its local tier while Redis is
//! down. Each test starts its own redis-server.

use std::time::Duration;

use bytes::Bytes;
use pingora_cache::storage::{PurgeTarget, PurgeType, Storage};
use pingora_cache::trace::{Span, SpanHandle};
use pingora_cache::{CacheKey, CacheMeta};
use tier_core::testing::read_body;
use tier_disk::{DiskConfig, DiskStorage};
use tier_hybrid::policy::{Policy, Promotion, WritePolicy};
use tier_hybrid::HybridStorage;
use tier_memory::{MemoryConfig, MemoryStorage};
use tier_redis::server::RedisServer;
use tier_redis::{RedisConfig, RedisStorage};

fn span() -> SpanHandle {
    Span::inactive().handle()
}

fn key(name: &str) -> CacheKey {
    CacheKey::new(name, "")
}

fn meta(marker: &str) -> CacheMeta {
    tier_core::testing::meta_with_header("x-marker", marker)
}

fn config(server: &RedisServer) -> RedisConfig {
    RedisConfig::single(server.url()).chunk_bytes(16 << 10)
}

/// Memory over (disk over Redis), in both write policies: every check passes
/// but the three on readers following a write, which Redis declares it does
/// not support and so the composition does not either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_over_disk_over_redis_keeps_the_contract() {
    let server = RedisServer::start().expect("redis-server");
    for write in [WritePolicy::WriteThrough, WritePolicy::WriteBack] {
        let dir = tempfile::tempdir().expect("tempdir");
        let memory: &'static MemoryStorage = Box::leak(Box::new(MemoryStorage::new(
            MemoryConfig::new(256 << 20).max_object_bytes(16 << 20),
        )));
        let disk = DiskStorage::open(
            DiskConfig::new(dir.path(), 512 << 20)
                .max_object_bytes(16 << 20)
                .block_size(16 << 10),
        )
        .await
        .expect("open")
        .leak();
        let redis = RedisStorage::new(config(&server).timeout(Duration::from_secs(5))).leak();
        let policy = Policy::default().write(write).promotion(Promotion::Always);
        let lower = HybridStorage::new(disk, redis, policy.clone()).leak();
        let storage = HybridStorage::new(memory, lower, policy).leak();
        let report = tier_conformance::run_all(storage).await;
        println!("{write:?}: {report}");
        report.assert_all_passed();
        let skipped: Vec<&str> = report.skipped.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            skipped,
            [
                "streaming_reader_sees_growing_body",
                "streaming_write_tag_finds_own_write",
                "aborted_writer_fails_reader"
            ]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hybrid_keeps_serving_its_memory_tier_while_redis_is_down() {
    let mut server = RedisServer::start().expect("redis-server");
    let config = config(&server)
        .timeout(Duration::from_millis(300))
        .failure_threshold(2)
        .cooldown(Duration::from_secs(60));
    let redis = RedisStorage::new(config).leak();
    let memory: &'static MemoryStorage =
        Box::leak(Box::new(MemoryStorage::new(MemoryConfig::new(16 << 20))));
    let hybrid = HybridStorage::new(memory, redis, Policy::default()).leak();
    let put_hybrid = |name: &'static str, data: &'static [u8]| async move {
        let mut miss = hybrid
            .get_miss_handler(&key(name), &meta(name), &span())
            .await
            .expect("miss");
        miss.write_body(Bytes::from_static(data), false)
            .await
            .expect("write");
        miss.finish().await.expect("finish");
    };
    put_hybrid("before", b"cached before the outage").await;
    server.stop();
    let (_, mut hit) = hybrid
        .lookup(&key("before"), &span())
        .await
        .expect("lookup")
        .expect("hit");
    assert_eq!(
        read_body(&mut hit).await.expect("read"),
        b"cached before the outage"
    );
    assert!(hybrid
        .lookup(&key("never"), &span())
        .await
        .expect("lookup")
        .is_none());
    put_hybrid("during", b"cached during the outage").await;
    let (_, mut hit) = hybrid
        .lookup(&key("during"), &span())
        .await
        .expect("lookup")
        .expect("hit");
    assert_eq!(
        read_body(&mut hit).await.expect("read"),
        b"cached during the outage"
    );
    let purge = hybrid
        .purge(
            PurgeTarget::Active(&key("before").to_compact()),
            PurgeType::Invalidation,
            &span(),
        )
        .await;
    assert!(
        purge.is_ok(),
        "a purge fails only when both tiers fail: {purge:?}"
    );
    assert!(redis.redis_stats().breaker_open);
}
