//! RedisStorage keeps the whole Storage contract on one server and on a
//! Cluster of three; the only checks skipped are those it declares it does
//! not support (readers following a write in progress).

use tier_redis::server::{RedisCluster, RedisServer};
use tier_redis::{RedisConfig, RedisStorage};

fn assert_only_streaming_skipped(report: &tier_conformance::Report) {
    report.assert_all_passed();
    let skipped: Vec<&str> = report.skipped.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        skipped,
        [
            "streaming_reader_sees_growing_body",
            "streaming_write_tag_finds_own_write",
            "aborted_writer_fails_reader"
        ],
        "{report}"
    );
    assert!(report.passed.len() >= 32, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_every_check_on_one_server() {
    let server = RedisServer::start().expect("redis-server");
    let config = RedisConfig::single(server.url())
        .chunk_bytes(64 << 10)
        .timeout(std::time::Duration::from_secs(5));
    let redis = RedisStorage::new(config).leak();
    redis.ping().await.expect("ping");
    let report = tier_conformance::run_all(redis).await;
    println!("{report}");
    assert_only_streaming_skipped(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_every_check_on_a_cluster_of_three() {
    let cluster = RedisCluster::start().expect("redis cluster");
    let config = RedisConfig::cluster(cluster.urls())
        .name("redis-cluster")
        .chunk_bytes(64 << 10)
        .timeout(std::time::Duration::from_secs(5));
    let redis = RedisStorage::new(config).leak();
    redis.ping().await.expect("ping");
    let report = tier_conformance::run_all(redis).await;
    println!("{report}");
    assert_only_streaming_skipped(&report);
}
