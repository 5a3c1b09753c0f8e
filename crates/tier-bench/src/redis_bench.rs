//! The Redis tier against the limit of its store: hits of 4 KiB and 1 MiB
//! bodies through `RedisStorage`, and plain `GET`s of the same bytes with the
//! same client (the `redis` crate's multiplexed connection) on the same
//! server; then the latency the two hybrid levels above it add to a remote
//! hit.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tier_disk::{DiskConfig, DiskStorage};
use tier_hybrid::policy::{Policy, Promotion};
use tier_hybrid::HybridStorage;
use tier_memory::{MemoryConfig, MemoryStorage};
use tier_redis::server::RedisServer;
use tier_redis::{RedisConfig, RedisStorage};
use tokio::runtime::Runtime;

use crate::plots::Plots;
use crate::report::{Row, Table};
use crate::runner::{leak, populate, run_trace, DynStorage, Measurement, Op};
use crate::workload::{Expected, SizeClass, Workload};

/// The Redis section of the report; the hybrid's disk lives under `dir`.
pub fn section(rt: &Runtime, dir: &Path, quick: bool, tasks: usize, plots: &Plots) -> String {
    let server = match RedisServer::start() {
        Ok(server) => server,
        Err(e) => return format!("Redis tier not measured: {e}\n\n"),
    };
    let mut out = String::from(
        "### Redis tier: hits against plain GETs of the same bytes\n\n\
         One local redis-server (7.x, unix socket, no persistence) on this machine; \
         the plain rows send `GET` for a key holding the same body, with the same client \
         (the redis crate's multiplexed `ConnectionManager`), so they are the store's limit. \
         tier-redis reads a body of up to one chunk (256 KiB) with one `HMGET`; a larger one adds an \
         `EXISTS` of its chunks, then one `GET` per chunk, checking each chunk's XXH3.\n\n",
    );
    let config = RedisConfig::single(server.url()).timeout(Duration::from_secs(5));
    let redis = RedisStorage::new(config.clone().name("tier-redis")).leak();
    let (n_ops_small, n_ops_large) = if quick {
        (20_000, 400)
    } else {
        (100_000, 2_000)
    };
    let cases = [
        ("4 KiB", 2_000, 4 << 10, n_ops_small),
        ("1 MiB", 64, 1 << 20, n_ops_large),
    ];
    for (label, n_keys, body, n_ops) in cases {
        let workload = Workload {
            n_keys,
            alpha: 1.0,
            size: SizeClass::Fixed(body),
            seed: 41,
        };
        let trace = Arc::new(workload.trace(n_ops));
        let plain = plain_gets(rt, &server, &workload, trace.clone(), tasks);
        populate(rt, redis, &workload, tasks);
        let tier = run_trace(rt, redis, &workload, trace, tasks, Op::Read);
        let title = format!(
            "Redis hits, {label} bodies, Zipf 1.0 over {n_keys} keys, {tasks} client tasks"
        );
        let table = Table {
            title,
            rows: vec![
                Row {
                    storage: "plain GET (redis crate)".into(),
                    m: plain,
                },
                Row {
                    storage: "tier-redis".into(),
                    m: tier,
                },
            ],
        };
        out.push_str(&table.markdown());
        out.push('\n');
        let name = format!("redis-hits-{}.svg", label.replace(' ', "-"));
        out.push_str(&plots.bars(&name, &table.title, "ops/s", &table.ops_bars()));
    }
    out.push_str(&remote_hit_latency(rt, dir, &config, quick));
    out
}

/// SET every key's body under a plain key, then GET them along `trace`,
/// checking every byte as the tier's rows do.
fn plain_gets(
    rt: &Runtime,
    server: &RedisServer,
    workload: &Workload,
    trace: Arc<Vec<u64>>,
    tasks: usize,
) -> Measurement {
    let url = server.url();
    let conn = rt.block_on(async {
        let client = redis::Client::open(url.as_str())?;
        redis::aio::ConnectionManager::new(client).await
    });
    let Ok(conn) = conn else {
        return Measurement::empty();
    };
    rt.block_on(async {
        for idx in 0..workload.n_keys {
            let mut c = conn.clone();
            let _: redis::RedisResult<()> = redis::cmd("SET")
                .arg(format!("plain:{idx}"))
                .arg(workload.body(idx).as_ref())
                .query_async(&mut c)
                .await;
        }
    });
    let started = Instant::now();
    let per_task = trace.len().div_ceil(tasks.max(1));
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (trace, mut c, workload) = (trace.clone(), conn.clone(), workload.clone());
            rt.spawn(async move {
                let mut m = Measurement::empty();
                let lo = (t * per_task).min(trace.len());
                let hi = ((t + 1) * per_task).min(trace.len());
                for &idx in &trace[lo..hi] {
                    let op = Instant::now();
                    let got: redis::RedisResult<Option<Vec<u8>>> = redis::cmd("GET")
                        .arg(format!("plain:{idx}"))
                        .query_async(&mut c)
                        .await;
                    match got {
                        Ok(Some(body)) => {
                            // The same byte check the tier's rows make.
                            let expected = Expected::new(idx, workload.body_len(idx).min(64 << 10));
                            if !expected.check(0, &body) || body.len() != workload.body_len(idx) {
                                m.corrupt += 1;
                            }
                            m.bytes += body.len() as u64;
                        }
                        Ok(None) => m.misses += 1,
                        Err(_) => m.errors += 1,
                    }
                    m.ops += 1;
                    m.latency_ns
                        .saturating_record((op.elapsed().as_nanos() as u64).max(1));
                }
                m
            })
        })
        .collect();
    let mut total = Measurement::empty();
    for handle in handles {
        if let Ok(m) = rt.block_on(handle) {
            total.absorb(&m);
        }
    }
    total.elapsed = started.elapsed();
    total
}

/// p50/p99 of a remote hit read straight from the Redis tier and through
/// memory over (disk over Redis) that never promotes, so every hit is a
/// Redis hit passing both hybrids: what the levels above add.
fn remote_hit_latency(rt: &Runtime, dir: &Path, config: &RedisConfig, quick: bool) -> String {
    let Ok(disk_dir) = tempfile::tempdir_in(dir) else {
        return "Remote-hit latency not measured: no temp dir\n\n".into();
    };
    let redis = RedisStorage::new(config.clone().prefix("three-level")).leak();
    let memory: &'static MemoryStorage = leak(MemoryStorage::new(MemoryConfig::new(64 << 20)));
    let disk = rt.block_on(DiskStorage::open(DiskConfig::new(
        disk_dir.path(),
        256 << 20,
    )));
    let Ok(disk) = disk else {
        return "Remote-hit latency not measured: disk tier did not open\n\n".into();
    };
    let disk = disk.leak();
    let never = Policy::default().promotion(Promotion::Never);
    let lower = HybridStorage::new(disk, redis, never.clone()).leak();
    let three = HybridStorage::new(memory, lower, never).leak();
    let workload = Workload {
        n_keys: 2_000,
        alpha: 1.0,
        size: SizeClass::Fixed(4 << 10),
        seed: 43,
    };
    let trace = Arc::new(workload.trace(if quick { 10_000 } else { 50_000 }));
    // Written to Redis alone: the local tiers stay empty.
    populate(rt, redis, &workload, 1);
    // One task, so the figures are a remote hit's own latency, not queueing;
    // the two alternate request by request, so drift in the machine's speed
    // reaches both alike.
    let (direct, nested) = rt.block_on(async {
        let span = pingora_cache::trace::Span::inactive().handle();
        let (mut direct, mut nested) = (Measurement::empty(), Measurement::empty());
        let started = Instant::now();
        for &idx in trace.iter() {
            for (storage, m) in [
                (redis as DynStorage, &mut direct),
                (three as DynStorage, &mut nested),
            ] {
                let op = Instant::now();
                match storage.lookup(&workload.key(idx), &span).await {
                    Ok(Some((_, mut hit))) => {
                        while let Ok(Some(chunk)) = hit.read_body().await {
                            m.bytes += chunk.len() as u64;
                        }
                    }
                    Ok(None) => m.misses += 1,
                    Err(_) => m.errors += 1,
                }
                m.ops += 1;
                m.latency_ns
                    .saturating_record((op.elapsed().as_nanos() as u64).max(1));
            }
        }
        // Each had about half the wall time.
        let half = started.elapsed() / 2;
        direct.elapsed = half;
        nested.elapsed = half;
        (direct, nested)
    });
    let (added_p50, added_p99) = (
        nested.latency_us(0.50) - direct.latency_us(0.50),
        nested.latency_us(0.99) - direct.latency_us(0.99),
    );
    let mut out = Table {
        title: "Remote hits, 4 KiB: Redis tier alone and under memory over (disk over Redis), one client task, \
                alternating request by request (compare latencies; ops/s are shared)"
            .into(),
        rows: vec![
            Row {
                storage: "tier-redis alone".into(),
                m: direct,
            },
            Row {
                storage: "memory over (disk over redis), never promoting".into(),
                m: nested,
            },
        ],
    }
    .markdown();
    let _ = writeln!(
        out,
        "\nThe two hybrid levels add {added_p50:.1} µs at p50 and {added_p99:.1} µs at p99 to a \
         remote hit (a memory miss and a disk miss before Redis answers){}.\n",
        if added_p50 < 0.0 || added_p99 < 0.0 {
            "; a negative figure means the difference is below this machine's run-to-run noise"
        } else {
            ""
        }
    );
    out
}
