//! What the Redis tier promises beyond the shared contract: entries that are
//! never torn, Redis bounding the tier, clear errors, and a miss (not an
//! outage) when Redis is slow or gone. Every test starts its own server.

use std::time::Duration;

use bytes::Bytes;
use pingora_cache::storage::{MissHandler, PurgeTarget, PurgeType, Storage};
use pingora_cache::trace::{Span, SpanHandle};
use pingora_cache::{CacheKey, CacheMeta};
use tier_core::error::{OBJECT_TOO_LARGE, UNAVAILABLE};
use tier_core::key::entry_file_name;
use tier_core::testing::read_body;
use tier_redis::server::{RedisCluster, RedisServer};
use tier_redis::{RedisConfig, RedisStorage};

const CHUNK: usize = 16 << 10;

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
    RedisConfig::single(server.url())
        .chunk_bytes(CHUNK)
        .timeout(Duration::from_secs(2))
}

fn body(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The entry's Redis key and the key of its chunk `index` (any generation).
fn entry_key(name: &str) -> String {
    format!("tiers:{{{}}}:e", entry_file_name(&key(name).to_compact()))
}

async fn put(storage: &'static RedisStorage, name: &str, meta: &CacheMeta, data: &[u8]) {
    let mut miss = storage
        .get_miss_handler(&key(name), meta, &span())
        .await
        .expect("miss handler");
    for part in data.chunks(10_000) {
        miss.write_body(Bytes::copy_from_slice(part), false)
            .await
            .expect("write");
    }
    miss.finish().await.expect("finish");
}

async fn get(storage: &'static RedisStorage, name: &str) -> Option<Vec<u8>> {
    let (_, mut hit) = storage.lookup(&key(name), &span()).await.expect("lookup")?;
    Some(read_body(&mut hit).await.expect("read"))
}

fn chunk_keys(server: &RedisServer, name: &str) -> Vec<String> {
    let pattern = format!("tiers:{{{}}}:c:*", entry_file_name(&key(name).to_compact()));
    let mut keys: Vec<String> = server
        .cli(&["--scan", "--pattern", &pattern])
        .expect("scan")
        .lines()
        .map(str::to_string)
        .collect();
    keys.sort_by_key(|k| k.rsplit(':').next().and_then(|i| i.parse::<u32>().ok()));
    keys
}

fn dbsize(server: &RedisServer) -> usize {
    server
        .cli(&["DBSIZE"])
        .expect("dbsize")
        .trim()
        .parse()
        .expect("a number")
}

#[track_caller]
fn refused_write(result: pingora_error::Result<MissHandler>) -> Box<pingora_error::Error> {
    match result {
        Ok(_) => panic!("the write was accepted"),
        Err(e) => e,
    }
}

/// Poll (no fixed sleep) until `done`, for background clean-ups.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: not within 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_bodies_live_inside_the_entry_and_large_ones_in_chunks() {
    let server = RedisServer::start().expect("redis-server");
    let redis = RedisStorage::new(config(&server)).leak();
    put(redis, "small", &meta("s"), &body(CHUNK, 1)).await;
    assert!(
        chunk_keys(&server, "small").is_empty(),
        "one chunk is inline"
    );
    let large = body(5 * CHUNK + 7, 2);
    put(redis, "large", &meta("l"), &large).await;
    assert_eq!(chunk_keys(&server, "large").len(), 6);
    assert_eq!(get(redis, "small").await, Some(body(CHUNK, 1)));
    assert_eq!(get(redis, "large").await, Some(large));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_that_lost_a_chunk_is_a_miss_and_is_removed() {
    let server = RedisServer::start().expect("redis-server");
    let redis = RedisStorage::new(config(&server)).leak();
    put(redis, "lossy", &meta("x"), &body(4 * CHUNK, 3)).await;
    let chunks = chunk_keys(&server, "lossy");
    assert_eq!(chunks.len(), 4);
    server.cli(&["DEL", &chunks[2]]).expect("del");
    assert!(
        get(redis, "lossy").await.is_none(),
        "served a body missing a chunk"
    );
    assert_eq!(
        server
            .cli(&["EXISTS", &entry_key("lossy")])
            .expect("exists")
            .trim(),
        "0"
    );
    assert!(chunk_keys(&server, "lossy").is_empty(), "leftover chunks");
    assert!(redis.redis_stats().tier.errors >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_chunk_fails_the_read_before_any_of_its_bytes() {
    let server = RedisServer::start().expect("redis-server");
    let redis = RedisStorage::new(config(&server)).leak();
    let data = body(3 * CHUNK, 4);
    put(redis, "rot", &meta("x"), &data).await;
    let chunks = chunk_keys(&server, "rot");
    server
        .cli(&["SETRANGE", &chunks[1], "100", "Z"])
        .expect("setrange");
    let (_, mut hit) = redis
        .lookup(&key("rot"), &span())
        .await
        .expect("lookup")
        .expect("hit");
    let first = hit.read_body().await.expect("chunk 0").expect("bytes");
    assert_eq!(&first[..], &data[..CHUNK]);
    let err = hit
        .read_body()
        .await
        .expect_err("a corrupt chunk was served");
    assert!(err.to_string().contains("checksum"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_or_foreign_head_is_a_miss() {
    let server = RedisServer::start().expect("redis-server");
    let redis = RedisStorage::new(config(&server)).leak();
    put(redis, "h", &meta("x"), b"fine").await;
    server
        .cli(&["HSET", &entry_key("h"), "h", "not a head at all"])
        .expect("hset");
    assert!(get(redis, "h").await.is_none());
    // Something else's data under the tier's prefix is a miss too, not a panic.
    server
        .cli(&["HSET", &entry_key("other"), "g", "zz", "n", "-3", "h", ""])
        .expect("hset");
    assert!(get(redis, "other").await.is_none());
    put(redis, "h", &meta("y"), b"rewritten").await;
    assert_eq!(get(redis, "h").await.as_deref(), Some(&b"rewritten"[..]));
    // A head that names another generation than the entry's is not served.
    server
        .cli(&["HSET", &entry_key("h"), "g", "abc"])
        .expect("hset");
    assert!(get(redis, "h").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_expire_with_freshness_plus_stale_windows() {
    let server = RedisServer::start().expect("redis-server");
    let redis = RedisStorage::new(config(&server).min_ttl(Duration::from_secs(90))).leak();
    // Fresh for 300 s, stale-if-error 120 s: about 420 s in Redis.
    let fresh = tier_core::testing::meta_fresh_for(Duration::from_secs(300), &[]);
    put(redis, "ttl", &fresh, &body(2 * CHUNK + 1, 5)).await;
    let pttl = |k: &str| -> i64 {
        server
            .cli(&["PTTL", k])
            .expect("pttl")
            .trim()
            .parse()
            .expect("a number")
    };
    let entry = pttl(&entry_key("ttl"));
    assert!((410_000..=420_000).contains(&entry), "entry PTTL {entry}");
    for chunk in chunk_keys(&server, "ttl") {
        let t = pttl(&chunk);
        assert!((410_000..=420_000).contains(&t), "chunk PTTL {t}");
    }
    // Already stale at write: the floor keeps it for revalidation.
    let stale = tier_core::testing::meta_fresh_for(Duration::ZERO, &[]);
    put(redis, "stale", &stale, b"x").await;
    let t = pttl(&entry_key("stale"));
    assert!((110_000..=120_000).contains(&t), "stale entry PTTL {t}");
    // A revalidation that extends freshness extends the TTL of every key.
    let longer = tier_core::testing::meta_fresh_for(Duration::from_secs(3000), &[]);
    assert!(redis
        .update_meta(&key("ttl"), &longer, &span())
        .await
        .expect("update"));
    let entry = pttl(&entry_key("ttl"));
    assert!(entry > 3_000_000, "entry PTTL after update_meta {entry}");
    for chunk in chunk_keys(&server, "ttl") {
        assert!(pttl(&chunk) > 3_000_000);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_are_refused_with_a_clear_error_and_leave_nothing() {
    let server = RedisServer::start().expect("redis-server");
    let redis = RedisStorage::new(config(&server).max_object_bytes(3 * CHUNK)).leak();
    put(redis, "keep", &meta("k"), b"previous").await;
    let before = dbsize(&server);
    let mut miss = redis
        .get_miss_handler(&key("keep"), &meta("big"), &span())
        .await
        .expect("miss");
    let mut refused = None;
    for _ in 0..5 {
        if let Err(e) = miss.write_body(Bytes::from(body(CHUNK, 6)), false).await {
            refused = Some(e);
            break;
        }
    }
    let err = refused.expect("a body over the limit was accepted");
    assert_eq!(err.etype(), &OBJECT_TOO_LARGE);
    assert!(err.to_string().contains(&(3 * CHUNK).to_string()), "{err}");
    drop(miss);
    eventually("chunks of the refused write removed", || {
        dbsize(&server) == before
    })
    .await;
    assert_eq!(get(redis, "keep").await.as_deref(), Some(&b"previous"[..]));
    // Announced by Content-Length: refused before a byte is sent.
    let announced =
        tier_core::testing::meta_with_header("content-length", &(10 * CHUNK).to_string());
    let err = refused_write(
        redis
            .get_miss_handler(&key("announced"), &announced, &span())
            .await,
    );
    assert_eq!(err.etype(), &OBJECT_TOO_LARGE);
    assert!(redis.redis_stats().tier.rejections >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_of_a_replaced_entry_finishes_the_body_it_started() {
    let server = RedisServer::start().expect("redis-server");
    let redis = RedisStorage::new(config(&server)).leak();
    let old = body(4 * CHUNK, 7);
    put(redis, "r", &meta("old"), &old).await;
    let (_, mut hit) = redis
        .lookup(&key("r"), &span())
        .await
        .expect("lookup")
        .expect("hit");
    let first = hit.read_body().await.expect("read").expect("bytes");
    let new = body(4 * CHUNK, 8);
    put(redis, "r", &meta("new"), &new).await;
    let mut got = first.to_vec();
    got.extend(read_body(&mut hit).await.expect("rest of the old body"));
    assert_eq!(got, old, "a reader mixed two writes");
    assert_eq!(get(redis, "r").await, Some(new));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_and_readers_of_one_key_never_see_a_mixed_body() {
    let server = RedisServer::start().expect("redis-server");
    let redis = RedisStorage::new(config(&server)).leak();
    let bodies: Vec<Vec<u8>> = (0..4)
        .map(|i| body(3 * CHUNK + 100 * i, i as u8 * 50))
        .collect();
    put(redis, "contended", &meta("0"), &bodies[0]).await;
    let mut tasks = Vec::new();
    for round in 0..6 {
        let data = bodies[round % 4].clone();
        tasks.push(tokio::spawn(async move {
            put(redis, "contended", &meta("w"), &data).await;
        }));
        let bodies = bodies.clone();
        tasks.push(tokio::spawn(async move {
            if let Some((_, mut hit)) = redis
                .lookup(&key("contended"), &span())
                .await
                .expect("lookup")
            {
                // A replaced generation may be read to its end (grace TTL):
                // whatever comes back is one whole body, never a mix.
                let got = read_body(&mut hit).await.expect("read");
                assert!(
                    bodies.contains(&got),
                    "mixed or short body of {} bytes",
                    got.len()
                );
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let last = get(redis, "contended").await.expect("an entry");
    assert!(bodies.contains(&last));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_eviction_under_maxmemory_bounds_the_tier_and_never_tears_an_entry() {
    let server =
        RedisServer::start_with(&["--maxmemory", "2mb", "--maxmemory-policy", "allkeys-lru"])
            .expect("redis-server");
    let redis = RedisStorage::new(config(&server)).leak();
    let names: Vec<String> = (0..60).map(|i| format!("bounded/{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        put(redis, name, &meta("b"), &body(5 * CHUNK, i as u8)).await;
    }
    let used: u64 = server
        .cli(&["INFO", "memory"])
        .expect("info")
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory");
    assert!(
        used <= 3 << 20,
        "Redis holds {used} bytes over a 2 MiB maxmemory"
    );
    let (mut whole, mut missing) = (0, 0);
    for (i, name) in names.iter().enumerate() {
        match get(redis, name).await {
            Some(got) => {
                assert_eq!(got, body(5 * CHUNK, i as u8), "{name} torn");
                whole += 1;
            }
            None => missing += 1,
        }
    }
    println!("maxmemory 2mb: {whole} entries whole, {missing} evicted (in whole or part: misses)");
    assert!(missing > 0, "60 × 80 KiB cannot all fit in 2 MiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_times_out_into_a_miss_and_answers_again_when_it_resumes() {
    let server = RedisServer::start().expect("redis-server");
    let redis = RedisStorage::new(config(&server).timeout(Duration::from_millis(200))).leak();
    put(redis, "slow", &meta("s"), b"kept").await;
    server.freeze().expect("SIGSTOP");
    let stalled = redis.lookup(&key("slow"), &span()).await;
    server.thaw().expect("SIGCONT");
    assert!(
        matches!(stalled, Ok(None)),
        "a stalled Redis must be a miss, got {:?}",
        stalled.map(|found| found.is_some())
    );
    assert_eq!(redis.redis_stats().timeouts, 1);
    assert!(
        !redis.redis_stats().breaker_open,
        "one timeout is not enough to open it"
    );
    assert_eq!(get(redis, "slow").await.as_deref(), Some(&b"kept"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_redis_is_a_miss_then_the_breaker_opens_and_a_restart_recovers() {
    let mut server = RedisServer::start().expect("redis-server");
    let config = config(&server)
        .timeout(Duration::from_millis(300))
        .failure_threshold(3)
        .cooldown(Duration::from_millis(300));
    let redis = RedisStorage::new(config).leak();
    put(redis, "up", &meta("u"), b"while up").await;
    server.stop();
    for _ in 0..3 {
        let found = redis
            .lookup(&key("up"), &span())
            .await
            .expect("a lookup is never an error");
        assert!(found.is_none());
    }
    let stats = redis.redis_stats();
    assert!(stats.breaker_open && stats.breaker_trips == 1, "{stats:?}");
    // Open: refused without trying Redis.
    let err = refused_write(
        redis
            .get_miss_handler(&key("down"), &meta("d"), &span())
            .await,
    );
    assert_eq!(err.etype(), &UNAVAILABLE);
    assert!(redis
        .lookup(&key("up"), &span())
        .await
        .expect("lookup")
        .is_none());
    assert!(redis.redis_stats().breaker_refusals >= 1);
    server.restart().expect("restart");
    // After the cooldown a call tries again; the reconnect may take a try or two.
    let mut recovered = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if redis.ping().await.is_ok() {
            recovered = true;
            break;
        }
    }
    assert!(recovered, "never reconnected: {:?}", redis.redis_stats());
    assert!(!redis.redis_stats().breaker_open);
    put(redis, "up", &meta("u2"), b"after restart").await;
    assert_eq!(
        get(redis, "up").await.as_deref(),
        Some(&b"after restart"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_an_entry_lives_on_one_node_and_entries_spread_over_all() {
    let cluster = RedisCluster::start().expect("cluster");
    let config = RedisConfig::cluster(cluster.urls())
        .chunk_bytes(CHUNK)
        .timeout(Duration::from_secs(2));
    let redis = RedisStorage::new(config).leak();
    for i in 0..30 {
        put(
            redis,
            &format!("spread/{i}"),
            &meta("c"),
            &body(3 * CHUNK, i),
        )
        .await;
    }
    let mut tags_per_node = Vec::new();
    for node in 0..3 {
        let keys = cluster
            .cli(node, &["--scan", "--pattern", "tiers:*"])
            .expect("scan");
        let tags: std::collections::HashSet<String> = keys
            .lines()
            .filter_map(|k| Some(k[k.find('{')?..=k.find('}')?].to_string()))
            .collect();
        assert!(!tags.is_empty(), "node {node} holds no entry");
        // Each entry here is whole: its record and its three chunks.
        for tag in &tags {
            let count = keys.lines().filter(|k| k.contains(tag.as_str())).count();
            assert_eq!(count, 4, "entry {tag} split across nodes");
        }
        tags_per_node.push(tags);
    }
    assert_eq!(tags_per_node.iter().map(|t| t.len()).sum::<usize>(), 30);
    for i in 0..30 {
        assert_eq!(
            get(redis, &format!("spread/{i}")).await,
            Some(body(3 * CHUNK, i))
        );
    }
}

async fn within(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<tier_redis::Invalidated>,
) -> tier_redis::Invalidated {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no invalidation within 10 s")
        .expect("follower stopped")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_or_expiry_through_one_instance_reaches_the_others_not_itself() {
    let server = RedisServer::start().expect("redis-server");
    let a = RedisStorage::new(config(&server)).leak();
    let b = RedisStorage::new(config(&server)).leak();
    let (to_a, mut at_a) = tokio::sync::mpsc::unbounded_channel();
    let (to_b, mut at_b) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(a.follow_invalidations(move |inv| {
        let _ = to_a.send(inv);
        async {}
    }));
    tokio::spawn(b.follow_invalidations(move |inv| {
        let _ = to_b.send(inv);
        async {}
    }));
    eventually("both subscribed", || {
        server
            .cli(&["PUBSUB", "NUMSUB", "tiers:invalidations"])
            .is_ok_and(|out| out.lines().nth(1).map(str::trim) == Some("2"))
    })
    .await;
    put(a, "shared", &meta("s"), b"everyone's").await;
    let compact = key("shared").to_compact();
    a.expire(PurgeTarget::Active(&compact), &span())
        .await
        .expect("expire");
    a.purge(
        PurgeTarget::Active(&compact),
        PurgeType::Invalidation,
        &span(),
    )
    .await
    .expect("purge");
    // Evictions stay local: nothing to tell the fleet.
    a.purge(PurgeTarget::Active(&compact), PurgeType::Eviction, &span())
        .await
        .expect("evict");
    let first = within(&mut at_b).await;
    let second = within(&mut at_b).await;
    assert_eq!((first.key.clone(), first.expire), (compact.clone(), true));
    assert_eq!((second.key, second.expire), (compact, false));
    // A sees only B's messages; B sent none.
    assert!(
        at_a.try_recv().is_err(),
        "an instance applied its own invalidation"
    );
    assert!(at_b.try_recv().is_err(), "an eviction was broadcast");
}
