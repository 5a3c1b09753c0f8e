//! The proxy example end to end: pingora in-process on loopback ports, the
//! demo origin counting its requests, and reqwest as the client.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use examples::origin::{demo_body, OriginCounters};
use examples::proxy::{build, free_port, DurabilityArg, ProxyOptions, StorageArg, WriteArg};
use pingora_core::server::{RunArgs, ShutdownSignal, ShutdownSignalWatch};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

/// Stops the server when the test says so.
struct StopSignal(Mutex<Option<oneshot::Receiver<()>>>);

#[async_trait]
impl ShutdownSignalWatch for StopSignal {
    async fn recv(&self) -> ShutdownSignal {
        let rx = self.0.lock().ok().and_then(|mut rx| rx.take());
        if let Some(rx) = rx {
            let _ = rx.await;
        }
        ShutdownSignal::FastShutdown
    }
}

struct Running {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    base: String,
    origin: Arc<OriginCounters>,
}

impl Running {
    fn start(opts: &ProxyOptions) -> Running {
        let built = build(opts, 0).expect("build the proxy");
        let origin = built.origin.clone().expect("demo origin");
        let base = format!("http://{}", built.listen);
        let (tx, rx) = oneshot::channel();
        let server = built.server;
        let thread = std::thread::spawn(move || {
            server.run(RunArgs {
                shutdown_signal: Box::new(StopSignal(Mutex::new(Some(rx)))),
            })
        });
        // Wait (bounded) until the proxy accepts connections.
        let addr = opts.listen.clone();
        for _ in 0..200 {
            if std::net::TcpStream::connect(&addr).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Running {
            stop: Some(tx),
            thread: Some(thread),
            base,
            origin,
        }
    }

    fn origin_requests(&self) -> u64 {
        self.origin.requests.load(Ordering::Relaxed)
    }

    fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Got {
    status: u16,
    cache: String,
    tier: String,
    body: Vec<u8>,
}

async fn get(client: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Got {
    let mut req = client.get(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = req.send().await.expect("request");
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (status, cache, tier) = (
        resp.status().as_u16(),
        header("x-cache-status"),
        header("x-cache-tier"),
    );
    let body = resp.bytes().await.expect("body").to_vec();
    Got {
        status,
        cache,
        tier,
        body,
    }
}

fn sha(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

#[test]
fn the_proxy_caches_in_memory_and_on_disk_end_to_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = ProxyOptions {
        listen: format!("127.0.0.1:{}", free_port().expect("port")),
        upstream: None,
        cache_dir: dir.path().join("cache"),
        memory_mib: 64,
        disk_mib: 512,
        durability: DurabilityArg::Data,
        write: WriteArg::Through,
        promote_on_hit: 2,
        storage: StorageArg::Tiers,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let proxy = Running::start(&opts);
    let url = |path: &str| format!("{}{path}", proxy.base);

    rt.block_on(async {
        // Miss, then a memory hit, one origin request.
        let first = get(&client, &url("/bytes/1024"), &[]).await;
        assert_eq!((first.status, first.cache.as_str()), (200, "miss"));
        let second = get(&client, &url("/bytes/1024"), &[]).await;
        assert_eq!(
            (second.cache.as_str(), second.tier.as_str()),
            ("hit", "memory")
        );
        assert_eq!(proxy.origin_requests(), 1);

        // Bodies identical to the origin's, by sha256, on the miss and the hit.
        for len in [1 << 10, 1 << 20, 20 << 20] {
            let want = sha(&demo_body(len));
            for _ in 0..2 {
                let got = get(&client, &url(&format!("/bytes/{len}")), &[]).await;
                assert_eq!(got.status, 200);
                assert_eq!(
                    sha(&got.body),
                    want,
                    "{len}-byte body differs ({})",
                    got.cache
                );
            }
        }

        // A range from a memory hit, and from a disk hit (20 MiB is over the
        // memory tier's 8 MiB object limit, so it lives on disk only).
        let range = get(&client, &url("/bytes/1024"), &[("range", "bytes=10-19")]).await;
        assert_eq!((range.status, range.tier.as_str()), (206, "memory"));
        assert_eq!(range.body, demo_body(1024)[10..20]);
        let range = get(
            &client,
            &url(&format!("/bytes/{}", 20 << 20)),
            &[("range", "bytes=1000-1999")],
        )
        .await;
        assert_eq!((range.status, range.tier.as_str()), (206, "disk"));
        assert_eq!(range.body, demo_body(20 << 20)[1000..2000]);

        // 50 concurrent requests for one uncached object: one origin request.
        let before = proxy.origin_requests();
        let target = url("/bytes/300000");
        let requests = (0..50).map(|_| get(&client, &target, &[]));
        let results = futures::future::join_all(requests).await;
        assert!(results
            .iter()
            .all(|r| r.status == 200 && r.body.len() == 300_000));
        assert_eq!(
            proxy.origin_requests() - before,
            1,
            "the cache lock let several requests through"
        );

        // no-store is not cached.
        let before = proxy.origin_requests();
        for _ in 0..2 {
            let got = get(&client, &url("/nostore"), &[]).await;
            assert_ne!(got.cache, "hit");
        }
        assert_eq!(proxy.origin_requests() - before, 2);

        // Vary keeps variants apart.
        let before = proxy.origin_requests();
        let en = get(&client, &url("/vary"), &[("accept-language", "en")]).await;
        let fr = get(&client, &url("/vary"), &[("accept-language", "fr")]).await;
        let en_again = get(&client, &url("/vary"), &[("accept-language", "en")]).await;
        assert_eq!(en.body, b"language: en");
        assert_eq!(fr.body, b"language: fr");
        assert_eq!(
            (en_again.cache.as_str(), en_again.body.as_slice()),
            ("hit", &b"language: en"[..])
        );
        assert_eq!(proxy.origin_requests() - before, 2);

        // An expired object is revalidated, and the 304 reuses the stored body.
        let fresh = get(&client, &url("/revalidate"), &[]).await;
        assert_eq!(fresh.body, b"revalidated body");
        // max-age=1: let it expire (time passing, not background work).
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let revalidated = get(&client, &url("/revalidate"), &[]).await;
        assert_eq!(revalidated.body, b"revalidated body");
        assert_eq!(revalidated.cache, "revalidated");
        assert_eq!(proxy.origin.not_modified.load(Ordering::Relaxed), 1);
    });
    proxy.stop();

    // A restart on the same directory serves from disk without the origin.
    let proxy = Running::start(&opts);
    rt.block_on(async {
        let got = get(&client, &format!("{}/bytes/1024", proxy.base), &[]).await;
        assert_eq!((got.cache.as_str(), got.tier.as_str()), ("hit", "disk"));
        assert_eq!(got.body, demo_body(1024));
        assert_eq!(proxy.origin_requests(), 0, "a restart lost the cache");
    });
    proxy.stop();
}
