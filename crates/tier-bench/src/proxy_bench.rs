//! The proxy under load over loopback: requests/s and p99 for memory hits and
//! disk hits, against the same proxy caching in pingora's `MemCache`, in the
//! same run. Bounded in requests and time; only 127.0.0.1 is contacted.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use examples::proxy::{build, free_port, DurabilityArg, ProxyOptions, StorageArg, WriteArg};
use hdrhistogram::Histogram;
use pingora_core::server::{RunArgs, ShutdownSignal, ShutdownSignalWatch};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

struct Stop(Mutex<Option<oneshot::Receiver<()>>>);

#[async_trait]
impl ShutdownSignalWatch for Stop {
    async fn recv(&self) -> ShutdownSignal {
        let rx = self.0.lock().ok().and_then(|mut rx| rx.take());
        if let Some(rx) = rx {
            let _ = rx.await;
        }
        ShutdownSignal::FastShutdown
    }
}

struct Load {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    hits: u64,
    tier: String,
}

/// Run one proxy configuration: warm `paths` up, then `requests` GETs from
/// `clients` concurrent clients.
fn measure(
    rt: &Runtime,
    opts: ProxyOptions,
    paths: &[String],
    requests: usize,
    clients: usize,
) -> Result<Load, String> {
    let built = build(&opts, 0).map_err(|e| e.to_string())?;
    let base = format!("http://{}", built.listen);
    let (tx, rx) = oneshot::channel();
    let server = built.server;
    let thread = std::thread::spawn(move || {
        server.run(RunArgs {
            shutdown_signal: Box::new(Stop(Mutex::new(Some(rx)))),
        })
    });
    for _ in 0..200 {
        if std::net::TcpStream::connect(&opts.listen).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let paths: Arc<Vec<String>> = Arc::new(paths.to_vec());
    let result = rt.block_on(async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?;
        // Warm up: two passes, so every object is cached (and, with the
        // tiers, settled in the tier the configuration puts it in).
        for _ in 0..2 {
            for path in paths.iter() {
                let resp = client
                    .get(format!("{base}{path}"))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                resp.bytes().await.map_err(|e| e.to_string())?;
            }
        }
        let started = Instant::now();
        let per_client = requests / clients;
        let tasks: Vec<_> = (0..clients)
            .map(|c| {
                let (client, base, paths) = (client.clone(), base.clone(), paths.clone());
                tokio::spawn(async move {
                    let mut hist =
                        Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("bounds");
                    let (mut hits, mut tier) = (0u64, String::new());
                    for i in 0..per_client {
                        let path = &paths[(c * 7919 + i) % paths.len()];
                        let t = Instant::now();
                        let Ok(resp) = client.get(format!("{base}{path}")).send().await else {
                            continue;
                        };
                        let status = resp
                            .headers()
                            .get("x-cache-status")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string();
                        tier = resp
                            .headers()
                            .get("x-cache-tier")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                            .to_string();
                        if resp.bytes().await.is_ok() && status == "hit" {
                            hits += 1;
                        }
                        hist.saturating_record(t.elapsed().as_nanos() as u64);
                    }
                    (hist, hits, tier)
                })
            })
            .collect();
        let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("bounds");
        let (mut hits, mut tier) = (0, String::new());
        for task in tasks {
            let (hist, h, t) = task.await.map_err(|e| e.to_string())?;
            total.add(&hist).map_err(|e| e.to_string())?;
            hits += h;
            tier = t;
        }
        let elapsed = started.elapsed().as_secs_f64();
        Ok(Load {
            rps: total.len() as f64 / elapsed.max(1e-9),
            p50_us: total.value_at_quantile(0.5) as f64 / 1000.0,
            p99_us: total.value_at_quantile(0.99) as f64 / 1000.0,
            hits,
            tier,
        })
    });
    let _ = tx.send(());
    let _ = thread.join();
    result
}

/// The proxy section of the report.
pub fn section(rt: &Runtime, dir: &std::path::Path, quick: bool) -> String {
    let requests = if quick { 4_000 } else { 40_000 };
    let clients = 16;
    let paths: Vec<String> = (0..64).map(|i| format!("/bytes/{}", 16_384 + i)).collect();
    let options = |storage, memory_mib, promote| -> Result<ProxyOptions, String> {
        Ok(ProxyOptions {
            listen: format!("127.0.0.1:{}", free_port().map_err(|e| e.to_string())?),
            upstream: None,
            cache_dir: tempfile::tempdir_in(dir).map_err(|e| e.to_string())?.keep(),
            memory_mib,
            disk_mib: 256,
            durability: DurabilityArg::Data,
            write: WriteArg::Through,
            promote_on_hit: promote,
            storage,
            redis: None,
            redis_cluster: Vec::new(),
        })
    };
    let runs = [
        ("pingora MemCache", StorageArg::Memcache, 64, 2),
        ("tiers, memory hits", StorageArg::Tiers, 64, 2),
        // A memory tier of 0 bytes takes nothing and promotes nothing: every
        // hit is a disk hit.
        ("tiers, disk hits", StorageArg::Tiers, 0, 0),
    ];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### The proxy under load over loopback\n\n{requests} GETs of 64 objects of ~16 KiB from {clients} \
         concurrent reqwest clients after a warm-up, proxy and clients on the same 2 cores.\n\n\
         | configuration | requests/s | p50 µs | p99 µs | hits | tier of last hit | ratio vs MemCache |\n|---|---:|---:|---:|---:|---|---:|"
    );
    let mut base = None;
    for (label, storage, memory_mib, promote) in runs {
        let load = options(storage, memory_mib, promote)
            .and_then(|opts| measure(rt, opts, &paths, requests, clients));
        match load {
            Ok(load) => {
                let ratio = load.rps / *base.get_or_insert(load.rps);
                let _ = writeln!(
                    out,
                    "| {label} | {:.0} | {:.0} | {:.0} | {} | {} | {ratio:.2}× |",
                    load.rps, load.p50_us, load.p99_us, load.hits, load.tier
                );
            }
            Err(e) => {
                let _ = writeln!(out, "| {label} | not measured: {e} | | | | | |");
            }
        }
    }
    out.push('\n');
    out
}
