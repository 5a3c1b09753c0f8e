//! The proxy example end to end: pingora in-process on loopback ports, the
//! demo origin counting its requests, and reqwest as the client.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use examples::origin::{demo_body, OriginCounters};
use examples::proxy::{build, free_port, DurabilityArg, ProxyOptions, StorageArg, Tiers, WriteArg};
use pingora_core::server::{RunArgs, ShutdownSignal, ShutdownSignalWatch};
use sha2::{Digest, Sha256};
use tier_core::Tier;
use tokio::sync::oneshot;

/// Stops the server when the test says so, as the signal it names would.
struct StopSignal(Mutex<Option<oneshot::Receiver<()>>>, ShutdownSignal);

#[async_trait]
impl ShutdownSignalWatch for StopSignal {
    async fn recv(&self) -> ShutdownSignal {
        let rx = self.0.lock().ok().and_then(|mut rx| rx.take());
        if let Some(rx) = rx {
            let _ = rx.await;
        }
        match self.1 {
            ShutdownSignal::GracefulUpgrade => ShutdownSignal::GracefulUpgrade,
            ShutdownSignal::FastShutdown => ShutdownSignal::FastShutdown,
            _ => ShutdownSignal::GracefulTerminate,
        }
    }
}

struct Running {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    base: String,
    /// The demo origin's counters (a proxy given an upstream has none).
    origin: Arc<OriginCounters>,
    upstream: std::net::SocketAddr,
    tiers: Option<Tiers>,
}

impl Running {
    /// Start a proxy that stops as on SIGTERM: it closes its disk tier (and
    /// lets go of the directory) on the way out.
    fn start(opts: &ProxyOptions) -> Running {
        Running::start_stopping_as(opts, ShutdownSignal::GracefulTerminate)
    }

    fn start_stopping_as(opts: &ProxyOptions, signal: ShutdownSignal) -> Running {
        let built = build(opts, 0).expect("build the proxy");
        let origin = built.origin.clone().unwrap_or_default();
        let (upstream, slot) = (built.upstream.addr, built.tiers);
        let base = format!("http://{}", built.listen);
        let (tx, rx) = oneshot::channel();
        let server = built.server;
        let thread = std::thread::spawn(move || {
            server.run(RunArgs {
                shutdown_signal: Box::new(StopSignal(Mutex::new(Some(rx)), signal)),
            });
            // As the proxy example's main does.
            if let Some(slot) = slot {
                slot.close();
            }
        });
        // Wait (bounded) until the proxy accepts connections.
        let addr = opts.listen.clone();
        for _ in 0..200 {
            if std::net::TcpStream::connect(&addr).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        // And until the tiers are open (before that, requests pass uncached).
        let tiers = slot.map(|slot| slot.wait(Duration::from_secs(30)).expect("the tiers open"));
        Running {
            stop: Some(tx),
            thread: Some(thread),
            base,
            origin,
            upstream,
            tiers,
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

/// A two-worker runtime and a client that ignores proxy settings.
fn runtime_and_client() -> (tokio::runtime::Runtime, reqwest::Client) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    (rt, client)
}

/// A tiers proxy on a free port over the demo origin, caching in `dir`.
fn tiers_options(
    dir: &std::path::Path,
    memory_mib: usize,
    disk_mib: u64,
    write: WriteArg,
) -> ProxyOptions {
    ProxyOptions {
        listen: format!("127.0.0.1:{}", free_port().expect("port")),
        upstream: None,
        cache_dir: dir.join("cache"),
        memory_mib,
        disk_mib,
        durability: DurabilityArg::None,
        write,
        promote_on_hit: 1,
        storage: StorageArg::Tiers,
        ..ProxyOptions::default()
    }
}

/// The value of the series `name` with (at least) `labels` in Prometheus
/// text.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .find(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
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
        ..ProxyOptions::default()
    };
    let (rt, client) = runtime_and_client();
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

        // /metrics: each level labelled, with this proxy's address as the
        // cache, and the disk tier's latencies.
        let text = String::from_utf8(get(&client, &url("/metrics"), &[]).await.body).expect("utf8");
        let cache = proxy.base.trim_start_matches("http://").to_string();
        let value = |name: &str, labels: &[(&str, &str)]| {
            metric(
                &text,
                name,
                &[&[("cache", cache.as_str())], labels].concat(),
            )
            .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"))
        };
        let memory = [("tier", "memory"), ("level", "L1")];
        let disk = [("tier", "disk"), ("level", "L2")];
        assert!(
            value(
                "tiers_lookups_total",
                &[&memory[..], &[("result", "hit")]].concat()
            ) >= 4.0
        );
        assert!(
            value(
                "tiers_lookups_total",
                &[&disk[..], &[("result", "hit")]].concat()
            ) >= 1.0
        );
        assert!(value("tiers_bytes", &disk) > 20.0 * 1048576.0);
        assert!(
            value(
                "tiers_latency_seconds_count",
                &[&disk[..], &[("op", "write")]].concat()
            ) >= 4.0
        );
        assert!(
            value(
                "tiers_latency_seconds_count",
                &[&disk[..], &[("op", "hit")]].concat()
            ) >= 1.0
        );
        assert!(
            value(
                "tiers_events_total",
                &[
                    ("tier", "hybrid(memory, disk)"),
                    ("level", "L1-L2"),
                    ("event", "promotions_not_admitted")
                ]
            ) >= 1.0
        );
        assert!(
            value(
                "tiers_state",
                &[&disk[..], &[("what", "segments")]].concat()
            ) >= 1.0
        );
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

/// The site both proxies serve, as a load balancer in front of them would
/// pass it (the cache key includes the host).
const SITE: &[(&str, &str)] = &[("host", "shared.example")];

/// Two proxies over one Redis: what one fetched, the other serves as a Redis
/// hit without the origin; a purge through one is not served by the other.
#[test]
fn two_proxies_share_one_redis_tier() {
    let redis = tier_redis::server::RedisServer::start().expect("redis-server");
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let opts = |dir: &std::path::Path, upstream| ProxyOptions {
        listen: format!("127.0.0.1:{}", free_port().expect("port")),
        upstream,
        cache_dir: dir.join("cache"),
        memory_mib: 64,
        disk_mib: 256,
        durability: DurabilityArg::Data,
        write: WriteArg::Through,
        promote_on_hit: 1,
        storage: StorageArg::Tiers,
        redis: Some(redis.url()),
        ..ProxyOptions::default()
    };
    let (rt, client) = runtime_and_client();
    // A starts the demo origin; B proxies the same one.
    let a = Running::start(&opts(dir_a.path(), None));
    let b = Running::start(&opts(dir_b.path(), Some(a.upstream.to_string())));
    let b_tiers = b.tiers.expect("tiers");
    let path = "/bytes/300000";
    let want = sha(&demo_body(300_000));
    let entries_in_redis = || {
        redis
            .cli(&["--scan", "--pattern", "tiers:*:e"])
            .map(|out| out.lines().count())
            .unwrap_or(0)
    };

    rt.block_on(async {
        let first = get(&client, &format!("{}{path}", a.base), SITE).await;
        assert_eq!(
            (first.cache.as_str(), sha(&first.body)),
            ("miss", want.clone())
        );
        assert_eq!(a.origin_requests(), 1);
        // The response can reach the client just before the write to Redis
        // is switched in: wait for the entry, not for time.
        for _ in 0..500 {
            if entries_in_redis() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(entries_in_redis(), 1, "A never wrote the object to Redis");

        let remote = get(&client, &format!("{}{path}", b.base), SITE).await;
        assert_eq!(
            (remote.cache.as_str(), remote.tier.as_str()),
            ("hit", "redis"),
            "B did not find A's object in Redis"
        );
        assert_eq!(sha(&remote.body), want);
        assert_eq!(a.origin_requests(), 1, "B went to the origin");
        // B copied it into its own tiers as it streamed.
        b_tiers.wait_for_moves().await;
        let local = get(&client, &format!("{}{path}", b.base), SITE).await;
        assert_eq!(
            (local.cache.as_str(), local.tier.as_str()),
            ("hit", "memory")
        );

        // A purge through A removes it from Redis, and B drops its own copies.
        let purged = client
            .request(
                reqwest::Method::from_bytes(b"PURGE").expect("method"),
                format!("{}{path}", a.base),
            )
            .header("host", SITE[0].1)
            .send()
            .await
            .expect("purge");
        assert_eq!(purged.status().as_u16(), 200);
        assert_eq!(entries_in_redis(), 0);
        // The invalidation reaches B over pub/sub: wait for it, bounded.
        for _ in 0..500 {
            if b_tiers.memory.stats().entries == 0 && b_tiers.disk.stats().entries == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let after = get(&client, &format!("{}{path}", b.base), SITE).await;
        assert_eq!(
            after.cache, "miss",
            "B served a purged object from {}",
            after.tier
        );
        assert_eq!(sha(&after.body), want);
        assert_eq!(a.origin_requests(), 2);
    });
    b.stop();
    a.stop();
}

/// Objects larger than every tier can store are served whole on every
/// request, announced or chunked, in both write policies, and not cached.
#[test]
fn objects_over_the_tiers_limits_are_served_whole() {
    let (rt, client) = runtime_and_client();
    // (memory MiB, disk MiB, write policy, path): the two cases.
    let cases = [
        (64, 100, WriteArg::Through, "/bytes/40000000"),
        (64, 100, WriteArg::Through, "/chunked/40000000"),
        (8, 64, WriteArg::Back, "/bytes/20000000"),
        (8, 64, WriteArg::Back, "/chunked/20000000"),
    ];
    for (memory_mib, disk_mib, write, path) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let proxy = Running::start(&tiers_options(dir.path(), memory_mib, disk_mib, write));
        let len: usize = path
            .rsplit('/')
            .next()
            .and_then(|n| n.parse().ok())
            .expect("len");
        let want = sha(&examples::origin::demo_body(len));
        rt.block_on(async {
            for request in 1..=2 {
                let got = get(&client, &format!("{}{path}", proxy.base), &[]).await;
                assert_eq!(got.status, 200);
                assert_eq!(
                    got.body.len(),
                    len,
                    "{path} ({write:?}), request {request}: cut off"
                );
                assert_eq!(sha(&got.body), want, "{path}, request {request}");
            }
        });
        assert_eq!(
            proxy.origin_requests(),
            2,
            "{path}: an oversize object was cached"
        );
        proxy.stop();
    }
}

/// Requests that arrive while an oversize fill streams (pingora's cache-lock
/// waiters follow it) are served whole too.
#[test]
fn concurrent_requests_of_an_oversize_object_are_all_whole() {
    let (rt, client) = runtime_and_client();
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy = Running::start(&tiers_options(dir.path(), 8, 64, WriteArg::Back));
    let len = 20_000_001;
    let want = sha(&examples::origin::demo_body(len));
    let url = format!("{}/chunked/{len}", proxy.base);
    rt.block_on(async {
        let requests = (0..4).map(|_| get(&client, &url, &[]));
        for (i, got) in futures::future::join_all(requests)
            .await
            .into_iter()
            .enumerate()
        {
            assert_eq!(got.status, 200);
            assert_eq!(got.body.len(), len, "request {i}: cut off");
            assert_eq!(sha(&got.body), want, "request {i}");
        }
    });
    proxy.stop();
}

/// What a newcomer gets wrong first is refused at start with a message that
/// names it: a taken port, an address that is not one, an upstream that does
/// not resolve, a cache directory under a file. A host name upstream works.
#[test]
fn bad_flags_are_clear_errors_and_a_host_name_upstream_resolves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr").to_string();
    let base = || tiers_options(dir.path(), 8, 64, WriteArg::Through);
    let message = |opts: ProxyOptions| match build(&opts, 0) {
        Ok(_) => panic!("built with {opts:?}"),
        Err(e) => examples::proxy::explain(&e),
    };
    let got = message(ProxyOptions {
        listen: taken_addr.clone(),
        ..base()
    });
    assert!(
        got.contains(&taken_addr) && got.contains("cannot listen"),
        "{got}"
    );
    let got = message(ProxyOptions {
        listen: "127.0.0.1:notaport".into(),
        ..base()
    });
    assert!(got.contains("--listen 127.0.0.1:notaport"), "{got}");
    let got = message(ProxyOptions {
        upstream: Some("no-such-host.invalid:80".into()),
        ..base()
    });
    assert!(got.contains("--upstream no-such-host.invalid:80"), "{got}");
    let got = message(ProxyOptions {
        upstream: Some("ftp://origin:21".into()),
        ..base()
    });
    assert!(got.contains("not http or https"), "{got}");
    #[cfg(not(feature = "tls"))]
    {
        let got = message(ProxyOptions {
            upstream: Some("https://localhost:443".into()),
            ..base()
        });
        assert!(got.contains("--features tls"), "{got}");
    }
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").expect("write");
    let got = message(ProxyOptions {
        cache_dir: file.join("cache"),
        ..base()
    });
    assert!(got.contains("is a file"), "{got}");

    // An origin named by host name, reached through the proxy.
    let (rt, client) = runtime_and_client();
    let origin = Running::start(&base());
    let by_name = format!("localhost:{}", origin.upstream.port());
    let proxy = Running::start(&ProxyOptions {
        upstream: Some(by_name),
        cache_dir: dir.path().join("second"),
        ..base()
    });
    rt.block_on(async {
        let got = get(&client, &format!("{}/bytes/1000", proxy.base), &[]).await;
        assert_eq!(got.status, 200);
        assert_eq!(sha(&got.body), sha(&demo_body(1000)));
        assert_eq!(origin.origin_requests(), 1, "the named upstream served it");
    });
    proxy.stop();
    origin.stop();
}

/// An `https://` origin (pingora serving the demo origin over TLS with a
/// self-signed certificate for `localhost`): fetched over TLS, cached, its
/// certificate checked against `--upstream-ca` (without it, the proxy
/// refuses the origin and nothing is served or cached).
#[cfg(feature = "tls")]
#[test]
fn an_https_origin_is_fetched_over_tls_and_its_certificate_checked() {
    use pingora_core::server::Server;
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(made.status.success(), "openssl: {made:?}");

    // The origin, over TLS only.
    let port = free_port().expect("port");
    // No grace period when it stops (pingora's default waits 300 s).
    let conf = pingora_core::server::configuration::ServerConf {
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let app = examples::origin::DemoOrigin::default();
    let counters = app.counters.clone();
    let mut service = pingora_core::services::listening::Service::new("tls origin".into(), app);
    service
        .add_tls(
            &format!("127.0.0.1:{port}"),
            cert.to_str().expect("path"),
            key.to_str().expect("path"),
        )
        .expect("tls listener");
    server.add_service(service);
    let (stop, rx) = oneshot::channel();
    let origin = std::thread::spawn(move || {
        server.run(RunArgs {
            shutdown_signal: Box::new(StopSignal(
                Mutex::new(Some(rx)),
                ShutdownSignal::GracefulTerminate,
            )),
        })
    });
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }

    let (rt, client) = runtime_and_client();
    let upstream = format!("https://localhost:{port}");
    // Trusting the origin's certificate: a miss over TLS, then a hit.
    let proxy = Running::start(&ProxyOptions {
        upstream: Some(upstream.clone()),
        upstream_ca: Some(cert.clone()),
        ..tiers_options(dir.path(), 8, 64, WriteArg::Through)
    });
    rt.block_on(async {
        let url = format!("{}/bytes/5000", proxy.base);
        let first = get(&client, &url, &[]).await;
        assert_eq!((first.status, first.cache.as_str()), (200, "miss"));
        assert_eq!(sha(&first.body), sha(&demo_body(5000)));
        let second = get(&client, &url, &[]).await;
        assert_eq!((second.cache.as_str(), second.body.len()), ("hit", 5000));
    });
    assert_eq!(counters.requests.load(Ordering::Relaxed), 1);
    proxy.stop();

    // Not trusting it (the system's roots do not know it): refused.
    let proxy = Running::start(&ProxyOptions {
        upstream: Some(upstream),
        cache_dir: dir.path().join("untrusting"),
        ..tiers_options(dir.path(), 8, 64, WriteArg::Through)
    });
    rt.block_on(async {
        let got = get(&client, &format!("{}/bytes/6000", proxy.base), &[]).await;
        assert!(
            got.status >= 500,
            "an untrusted origin served: {}",
            got.status
        );
    });
    assert_eq!(
        counters.requests.load(Ordering::Relaxed),
        1,
        "no request reached it"
    );
    proxy.stop();
    let _ = stop.send(());
    let _ = origin.join();
}

/// pingora's graceful upgrade (`-u`, then SIGQUIT to the old process): the
/// new proxy takes the listening socket at once, waits while the old one
/// still has the cache directory (tier-disk's lock), opens it once the old
/// one has closed its tiers, and serves what the old one cached from disk.
#[test]
fn a_graceful_upgrade_hands_over_the_socket_then_the_cache_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("conf.yaml");
    std::fs::write(
        &conf,
        format!(
            "---\nversion: 1\nthreads: 2\nupgrade_sock: {}\ngrace_period_seconds: 0\ngraceful_shutdown_timeout_seconds: 2\n",
            dir.path().join("upgrade.sock").display()
        ),
    )
    .expect("conf");
    let listen = format!("127.0.0.1:{}", free_port().expect("port"));
    let opts = |upgrade: bool| ProxyOptions {
        server: pingora_core::server::configuration::Opt {
            upgrade,
            conf: Some(conf.display().to_string()),
            ..Default::default()
        },
        listen: listen.clone(),
        durability: DurabilityArg::Data,
        ..tiers_options(dir.path(), 8, 64, WriteArg::Through)
    };
    let (rt, client) = runtime_and_client();
    let old = Running::start_stopping_as(&opts(false), ShutdownSignal::GracefulUpgrade);
    let url = format!("{}/bytes/3000", old.base);
    rt.block_on(async {
        assert_eq!(get(&client, &url, &[]).await.cache, "miss");
        assert_eq!(get(&client, &url, &[]).await.tier, "memory");
    });
    // The new process's bootstrap waits (up to 5 s) for the old one's socket.
    let new_opts = opts(true);
    let new = std::thread::spawn(move || Running::start(&new_opts));
    std::thread::sleep(Duration::from_millis(1500));
    // SIGQUIT: the old proxy sends its socket, waits 5 s, stops, closes.
    old.stop();
    let new = new.join().expect("the new proxy started");
    // It opened the directory only once the old one had closed (sealed) it:
    // without the lock it would have opened during the old one's last five
    // seconds and scanned (and sealed) a segment the old one was writing.
    let disk = new.tiers.expect("tiers").disk;
    assert_eq!(
        disk.scanned_at_open(),
        0,
        "opened while the old proxy had it"
    );
    rt.block_on(async {
        let got = get(&client, &url, &[]).await;
        assert_eq!((got.cache.as_str(), got.tier.as_str()), ("hit", "disk"));
        assert_eq!(sha(&got.body), sha(&demo_body(3000)));
    });
    assert_eq!(new.origin_requests(), 0, "the new proxy needed its origin");
    new.stop();
}
