//! Random operation sequences against RedisStorage and a reference model, on
//! one real server, each sequence under its own key prefix. Chunks of 1 KiB,
//! so most bodies span several chunks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tier_conformance::model::{run_model, ModelSetup};
use tier_conformance::DynStorage;
use tier_redis::server::RedisServer;
use tier_redis::{RedisConfig, RedisStorage};

#[test]
fn redis_tier_matches_the_model() {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    // Owned by the test, not a static: a static is never dropped, and the
    // server would outlive the test process.
    let server = RedisServer::start().expect("redis-server");
    let url = server.url();
    let setup = ModelSetup::new(move || {
        let config = RedisConfig::single(url.clone())
            .prefix(format!("model{}", SEQUENCE.fetch_add(1, Ordering::Relaxed)))
            .chunk_bytes(1024)
            .timeout(Duration::from_secs(5));
        Box::pin(async move { RedisStorage::new(config).leak() as DynStorage })
    });
    let result = run_model("redis", setup, 500);
    assert_eq!(result.sequences, 500);
    drop(server);
}
