//! The caching reverse proxy of `cargo run --release --example proxy`: pingora
//! in front of an origin, caching through `HybridStorage<MemoryStorage,
//! DiskStorage>` (or, with `--redis`, memory over disk over a Redis tier the
//! fleet shares) with an eviction manager and a cache lock, `x-cache-status`
//! and `x-cache-tier` response headers, `PURGE` requests, and `/metrics` in
//! Prometheus format.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_cache::cache_control::CacheControl;
use pingora_cache::eviction::lru::Manager as LruManager;
use pingora_cache::filters::{request_cacheable, resp_cacheable};
use pingora_cache::key::HashBinary;
use pingora_cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora_cache::{
    CacheKey, CacheMeta, CacheMetaDefaults, HitHandler, NoCacheReason, RespCacheable,
    VarianceBuilder,
};
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{ProxyHttp, Session};
use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use tier_core::Tier;
use tier_disk::{DiskConfig, DiskStorage, Durability};
use tier_hybrid::policy::{Policy, Promotion, WritePolicy};
use tier_hybrid::{served_by, served_by_inner, HybridStorage, Served};
use tier_memory::{MemoryConfig, MemoryStorage};
use tier_redis::{RedisConfig, RedisStorage};

/// The cache the proxy uses on its own: memory over disk.
pub type Cache = HybridStorage<MemoryStorage, DiskStorage>;
/// The lower level of the shared layout: this proxy's disk over Redis.
pub type DiskOverRedis = HybridStorage<DiskStorage, RedisStorage>;
/// The cache with a shared tier: memory over (disk over Redis).
pub type SharedCache = HybridStorage<MemoryStorage, DiskOverRedis>;

/// Durability, as a command-line value.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DurabilityArg {
    /// Append only: survives a killed process, not a power cut.
    None,
    /// A write is acknowledged once synced (concurrent ones share a sync).
    Data,
    /// Also sync the directory when segment files come and go.
    Full,
}

/// Write policy, as a command-line value.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum WriteArg {
    /// Misses go to memory and disk.
    Through,
    /// Misses go to memory; evictions are demoted to disk.
    Back,
}

/// The proxy's options; `--help` lists them.
#[derive(Debug, Clone, clap::Parser)]
#[command(about = "A Pingora reverse proxy caching in memory over disk (tiers)")]
pub struct ProxyOptions {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:6188")]
    pub listen: String,
    /// Upstream origin (host:port, plain HTTP). Without it, a demo origin
    /// starts on a loopback port.
    #[arg(long)]
    pub upstream: Option<SocketAddr>,
    /// Cache directory (created if missing).
    #[arg(long, default_value = "target/proxy-cache")]
    pub cache_dir: PathBuf,
    /// Memory tier budget in MiB.
    #[arg(long, default_value_t = 256)]
    pub memory_mib: usize,
    /// Disk tier budget in MiB.
    #[arg(long, default_value_t = 4096)]
    pub disk_mib: u64,
    /// Crash safety of disk writes.
    #[arg(long, value_enum, default_value = "data")]
    pub durability: DurabilityArg,
    /// Where misses are written.
    #[arg(long, value_enum, default_value = "through")]
    pub write: WriteArg,
    /// Promote a disk entry to memory on its Nth hit (0: never).
    #[arg(long, default_value_t = 2)]
    pub promote_on_hit: u8,
    /// The storage behind the cache: the tiers, or pingora's test-only
    /// MemCache (for comparisons only: unbounded, no disk).
    #[arg(long, value_enum, default_value = "tiers")]
    pub storage: StorageArg,
    /// A Redis shared by the fleet, below memory and disk
    /// (`redis://host:port`, `redis+unix:///path`). Purges and expiries are
    /// shared through it too.
    #[arg(long, conflicts_with = "redis_cluster")]
    pub redis: Option<String>,
    /// A Redis Cluster shared by the fleet: seed nodes, comma-separated
    /// (`redis://10.0.0.1:7000,redis://10.0.0.2:7000`).
    #[arg(long, value_delimiter = ',')]
    pub redis_cluster: Vec<String>,
}

/// Which storage the proxy caches in, as a command-line value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StorageArg {
    /// Memory over disk (`HybridStorage<MemoryStorage, DiskStorage>`).
    Tiers,
    /// pingora's `MemCache`, to compare against.
    Memcache,
}

/// How the tiers are composed.
#[derive(Debug, Clone, Copy)]
pub enum Layout {
    /// Memory over disk.
    Local(&'static Cache),
    /// Memory over (disk over Redis).
    Shared {
        /// The whole cache.
        cache: &'static SharedCache,
        /// Its lower level, disk over Redis.
        lower: &'static DiskOverRedis,
        /// The shared tier.
        redis: &'static RedisStorage,
    },
}

/// The tiers, opened.
#[derive(Debug, Clone, Copy)]
pub struct Tiers {
    /// The memory tier.
    pub memory: &'static MemoryStorage,
    /// The disk tier.
    pub disk: &'static DiskStorage,
    /// How they (and Redis) are composed.
    pub layout: Layout,
}

impl Tiers {
    /// Open the tiers the options describe. Blocking: call before the server
    /// runs. Redis is connected on first use, so the proxy starts while it is
    /// down.
    pub fn open(opts: &ProxyOptions) -> Result<Self> {
        let memory: &'static MemoryStorage = Box::leak(Box::new(MemoryStorage::new(
            MemoryConfig::new(opts.memory_mib << 20).max_object_bytes((opts.memory_mib << 20) / 8),
        )));
        let durability = match opts.durability {
            DurabilityArg::None => Durability::None,
            DurabilityArg::Data => Durability::Data,
            DurabilityArg::Full => Durability::Full,
        };
        let disk = DiskStorage::open_blocking(
            DiskConfig::new(&opts.cache_dir, opts.disk_mib << 20).durability(durability),
        )?
        .leak();
        let promotion = match opts.promote_on_hit {
            0 => Promotion::Never,
            1 => Promotion::Always,
            n => Promotion::OnNthHit(n),
        };
        let write = match opts.write {
            WriteArg::Through => WritePolicy::WriteThrough,
            WriteArg::Back => WritePolicy::WriteBack,
        };
        let policy = Policy::default().write(write).promotion(promotion);
        let redis_config = match (&opts.redis, opts.redis_cluster.is_empty()) {
            (Some(url), _) => Some(RedisConfig::single(url.clone())),
            (None, false) => Some(RedisConfig::cluster(opts.redis_cluster.clone())),
            (None, true) => None,
        };
        let layout = match redis_config {
            None => Layout::Local(HybridStorage::new(memory, disk, policy).leak()),
            Some(config) => {
                let redis = RedisStorage::new(config).leak();
                // Below memory, every miss is written to disk and Redis, so
                // the other proxies find it.
                let lower = HybridStorage::new(
                    disk,
                    redis,
                    policy.clone().write(WritePolicy::WriteThrough),
                )
                .leak();
                let cache = HybridStorage::new(memory, lower, policy).leak();
                Layout::Shared {
                    cache,
                    lower,
                    redis,
                }
            }
        };
        Ok(Tiers {
            memory,
            disk,
            layout,
        })
    }

    /// The storage to cache in.
    pub fn storage(&self) -> &'static (dyn pingora_cache::Storage + Sync) {
        match self.layout {
            Layout::Local(cache) => cache,
            Layout::Shared { cache, .. } => cache,
        }
    }

    /// The shared tier, if there is one.
    pub fn redis(&self) -> Option<&'static RedisStorage> {
        match self.layout {
            Layout::Local(_) => None,
            Layout::Shared { redis, .. } => Some(redis),
        }
    }

    /// Which tier served `hit`, for the `x-cache-tier` header.
    fn served(&self, hit: &HitHandler) -> Option<&'static str> {
        Some(match (served_by(hit)?, self.layout) {
            (Served::Hot, _) => "memory",
            (Served::Cold, Layout::Local(_)) => "disk",
            (Served::Cold, Layout::Shared { .. }) => match served_by_inner(hit)? {
                Served::Hot => "disk",
                Served::Cold => "redis",
            },
        })
    }

    /// Wait until no promotion or demotion is in flight.
    pub async fn wait_for_moves(&self) {
        match self.layout {
            Layout::Local(cache) => cache.wait_for_moves().await,
            Layout::Shared { cache, lower, .. } => {
                cache.wait_for_moves().await;
                lower.wait_for_moves().await;
            }
        }
    }

    /// Apply another proxy's invalidation to this proxy's own tiers.
    async fn apply(&self, invalidated: tier_redis::Invalidated) {
        let span = pingora_cache::trace::Span::inactive().handle();
        let target = pingora_cache::storage::PurgeTarget::Active(&invalidated.key);
        let kind = pingora_cache::storage::PurgeType::Invalidation;
        use pingora_cache::Storage as _;
        let (memory, disk) = if invalidated.expire {
            (
                self.memory.expire(target, &span).await.map(drop),
                self.disk.expire(target, &span).await.map(drop),
            )
        } else {
            (
                self.memory.purge(target, kind, &span).await.map(drop),
                self.disk.purge(target, kind, &span).await.map(drop),
            )
        };
        if let Err(e) = memory.and(disk) {
            tracing::warn!(error = %e, "could not apply a shared invalidation locally");
        }
    }
}

/// Follows the fleet's invalidations through Redis (a pingora background
/// service).
struct Invalidations(Tiers);

#[async_trait]
impl pingora_core::services::background::BackgroundService for Invalidations {
    async fn start(&self, mut shutdown: pingora_core::server::ShutdownWatch) {
        let tiers = self.0;
        let Some(redis) = tiers.redis() else { return };
        tokio::select! {
            _ = redis.follow_invalidations(move |inv| async move { tiers.apply(inv).await }) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Responses cached without a `Cache-Control` of their own: 200s for 60 s.
fn default_ttl(status: http::StatusCode) -> Option<Duration> {
    (status == http::StatusCode::OK).then_some(Duration::from_secs(60))
}

static DEFAULTS: CacheMetaDefaults = CacheMetaDefaults::new(default_ttl, 60, 300);

/// The proxy.
pub struct CachingProxy {
    upstream: SocketAddr,
    storage: &'static (dyn pingora_cache::Storage + Sync),
    /// The tiers, when the storage is them (for metrics and the tier header).
    tiers: Option<Tiers>,
    eviction: &'static LruManager<16>,
    lock: &'static CacheKeyLockImpl,
    metrics: Metrics,
}

impl std::fmt::Debug for CachingProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachingProxy")
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

impl CachingProxy {
    /// A proxy to `upstream` caching in `tiers` (or, without them, in
    /// pingora's `MemCache`).
    pub fn new(upstream: SocketAddr, tiers: Option<Tiers>, total_bytes: usize) -> Self {
        let storage: &'static (dyn pingora_cache::Storage + Sync) = match tiers {
            Some(tiers) => tiers.storage(),
            None => Box::leak(Box::new(pingora_cache::MemCache::new())),
        };
        CachingProxy {
            upstream,
            storage,
            tiers,
            // Tracks every cached entry across both tiers; its purges of
            // hot-tier ids evict from memory (demoting in write-back).
            eviction: Box::leak(Box::new(LruManager::<16>::with_capacity(
                total_bytes,
                1 << 16,
            ))),
            lock: Box::leak(CacheLock::new_boxed(Duration::from_secs(5))),
            metrics: Metrics::new(),
        }
    }
}

/// Per-request state.
#[derive(Debug, Default)]
pub struct RequestCtx {
    tier: Option<&'static str>,
}

#[async_trait]
impl ProxyHttp for CachingProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx::default()
    }

    /// `PURGE` removes the object (from Redis and the fleet too, with
    /// `--redis`). An example on loopback accepts it from anyone; a
    /// deployment restricts it (client address, a token) before this.
    fn is_purge(&self, session: &Session, _ctx: &Self::CTX) -> bool {
        session.req_header().method.as_str() == "PURGE"
    }

    async fn request_filter(&self, session: &mut Session, _ctx: &mut Self::CTX) -> Result<bool> {
        if session.req_header().uri.path() != "/metrics" {
            return Ok(false);
        }
        let text = self
            .tiers
            .map(|tiers| self.metrics.render(&tiers))
            .unwrap_or_default();
        let body = Bytes::from(text);
        let mut resp = ResponseHeader::build(200, Some(2))?;
        resp.insert_header("content-type", "text/plain; version=0.0.4")?;
        resp.insert_header("content-length", body.len().to_string())?;
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(body), true).await?;
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<()> {
        // A PURGE needs the cache (and its key) too, to remove the entry.
        if request_cacheable(session.req_header()) || self.is_purge(session, ctx) {
            session.cache.enable(
                self.storage,
                Some(self.eviction),
                None,
                Some(self.lock),
                None,
            );
        }
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, _ctx: &mut Self::CTX) -> Result<CacheKey> {
        let req = session.req_header();
        // Length-prefixed parts, so "a" + "bc" and "ab" + "c" differ.
        let host = req
            .headers
            .get("host")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        let target = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let mut primary = Vec::with_capacity(16 + host.len() + target.len());
        for part in [host, target.as_bytes()] {
            primary.extend_from_slice(&(part.len() as u64).to_be_bytes());
            primary.extend_from_slice(part);
        }
        Ok(CacheKey::new(primary, ""))
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        _ctx: &mut Self::CTX,
    ) -> Result<RespCacheable> {
        let cc = CacheControl::from_resp_headers(resp);
        let authorized = session.req_header().headers.contains_key("authorization");
        Ok(resp_cacheable(
            cc.as_ref(),
            resp.clone(),
            authorized,
            &DEFAULTS,
        ))
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        _ctx: &mut Self::CTX,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        let mut variance = VarianceBuilder::new();
        let names: Vec<String> = meta
            .headers()
            .get_all("vary")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|name| name.trim().to_ascii_lowercase())
            .filter(|name| !name.is_empty())
            .collect();
        for name in &names {
            let value = req
                .headers
                .get(name.as_str())
                .map(|v| v.as_bytes())
                .unwrap_or_default();
            variance.add_value(name, value);
        }
        variance.finalize()
    }

    async fn cache_hit_filter(
        &self,
        _session: &mut Session,
        _meta: &CacheMeta,
        hit_handler: &mut HitHandler,
        _is_fresh: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<pingora_cache::ForcedFreshness>> {
        ctx.tier = self.tiers.and_then(|tiers| tiers.served(hit_handler));
        Ok(None)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if session.cache.enabled()
            || session.cache.phase()
                != pingora_cache::CachePhase::Disabled(NoCacheReason::NeverEnabled)
        {
            upstream_response.insert_header("x-cache-status", session.cache.phase().as_str())?;
        }
        if let Some(tier) = ctx.tier {
            upstream_response.insert_header("x-cache-tier", tier)?;
        }
        Ok(())
    }
}

/// Prometheus metrics, refreshed from the tiers' counters on each scrape.
struct Metrics {
    registry: Registry,
    events: IntCounterVec,
    tier_bytes: IntGaugeVec,
    tier_entries: IntGaugeVec,
    seen: Mutex<Vec<(String, u64)>>,
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        let events = IntCounterVec::new(
            Opts::new("tiers_events_total", "Cache events by kind: hits per tier, misses, promotions, demotions, skips, errors, evictions"),
            &["event"],
        )
        .expect("static metric definition is valid");
        let tier_bytes = IntGaugeVec::new(
            Opts::new("tiers_bytes", "Bytes charged per tier"),
            &["tier"],
        )
        .expect("static metric definition is valid");
        let tier_entries =
            IntGaugeVec::new(Opts::new("tiers_entries", "Entries per tier"), &["tier"])
                .expect("static metric definition is valid");
        for collector in [
            Box::new(events.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(tier_bytes.clone()),
            Box::new(tier_entries.clone()),
        ] {
            let _ = registry.register(collector);
        }
        Metrics {
            registry,
            events,
            tier_bytes,
            tier_entries,
            seen: Mutex::new(Vec::new()),
        }
    }

    fn render(&self, tiers: &Tiers) -> String {
        let (memory, disk) = (tiers.memory.stats(), tiers.disk.stats());
        let mut totals: Vec<(&str, u64)> = Vec::with_capacity(16);
        let local_errors = memory.errors + disk.errors;
        match tiers.layout {
            Layout::Local(cache) => {
                let hybrid = cache.hybrid_stats();
                totals.extend([
                    ("hit_memory", hybrid.hot_hits),
                    ("hit_disk", hybrid.cold_hits),
                    ("miss", hybrid.misses),
                    ("promotion", hybrid.promotions),
                    ("promotion_skipped", hybrid.promotion_skips),
                    ("demotion", hybrid.demotions),
                    ("demotion_skipped", hybrid.demotion_skips),
                    ("error", hybrid.errors + local_errors),
                ]);
            }
            Layout::Shared {
                cache,
                lower,
                redis,
            } => {
                let (outer, inner, shared) = (
                    cache.hybrid_stats(),
                    lower.hybrid_stats(),
                    redis.redis_stats(),
                );
                totals.extend([
                    ("hit_memory", outer.hot_hits),
                    ("hit_disk", inner.hot_hits),
                    ("hit_redis", inner.cold_hits),
                    ("miss", outer.misses),
                    ("promotion", outer.promotions + inner.promotions),
                    (
                        "promotion_skipped",
                        outer.promotion_skips + inner.promotion_skips,
                    ),
                    ("demotion", outer.demotions + inner.demotions),
                    (
                        "demotion_skipped",
                        outer.demotion_skips + inner.demotion_skips,
                    ),
                    (
                        "error",
                        outer.errors + inner.errors + local_errors + shared.tier.errors,
                    ),
                    ("redis_timeout", shared.timeouts),
                    ("redis_breaker_trip", shared.breaker_trips),
                    ("redis_breaker_refusal", shared.breaker_refusals),
                ]);
            }
        }
        totals.extend([
            ("eviction_memory", memory.evictions),
            ("eviction_disk", disk.evictions),
            ("corrupt_disk", tiers.disk.corrupt_entries()),
        ]);
        if let Ok(mut seen) = self.seen.lock() {
            for (event, total) in totals {
                let before = seen.iter().find(|(e, _)| e == event).map_or(0, |(_, v)| *v);
                self.events
                    .with_label_values(&[event])
                    .inc_by(total.saturating_sub(before));
                seen.retain(|(e, _)| e != event);
                seen.push((event.to_string(), total));
            }
        }
        for (tier, stats) in [("memory", memory), ("disk", disk)] {
            self.tier_bytes
                .with_label_values(&[tier])
                .set(stats.bytes as i64);
            self.tier_entries
                .with_label_values(&[tier])
                .set(stats.entries as i64);
        }
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// A pingora server with the proxy (and, without an upstream, the demo
/// origin) added, and what it will listen on.
pub struct Built {
    /// The server, ready for `run` or `run_forever`.
    pub server: Server,
    /// The proxy's address.
    pub listen: String,
    /// The origin it forwards to.
    pub upstream: SocketAddr,
    /// The demo origin's counters, if it started one.
    pub origin: Option<Arc<crate::origin::OriginCounters>>,
    /// The cache's tiers (none when caching in MemCache).
    pub tiers: Option<Tiers>,
}

impl std::fmt::Debug for Built {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Built")
            .field("listen", &self.listen)
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

/// Build the server the options describe. `demo_origin_port` is where the
/// demo origin listens when there is no upstream (0 picks a free port).
pub fn build(opts: &ProxyOptions, demo_origin_port: u16) -> Result<Built> {
    // Stop promptly: no long drain on SIGTERM for an example.
    let conf = ServerConf {
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        threads: 2,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let tiers = match opts.storage {
        StorageArg::Tiers => Some(Tiers::open(opts)?),
        StorageArg::Memcache => None,
    };
    let (upstream, origin) = match opts.upstream {
        Some(upstream) => (upstream, None),
        None => {
            let port = if demo_origin_port == 0 {
                free_port()?
            } else {
                demo_origin_port
            };
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let app = crate::origin::DemoOrigin::default();
            let counters = app.counters.clone();
            let mut service =
                pingora_core::services::listening::Service::new("demo origin".into(), app);
            service.add_tcp(&addr.to_string());
            server.add_service(service);
            (addr, Some(counters))
        }
    };
    if let Some(tiers) = tiers.filter(|t| t.redis().is_some()) {
        server.add_service(pingora_core::services::background::background_service(
            "shared invalidations",
            Invalidations(tiers),
        ));
    }
    let total = (opts.memory_mib << 20) + (opts.disk_mib << 20) as usize;
    let proxy = CachingProxy::new(upstream, tiers, total);
    let mut service = pingora_proxy::http_proxy_service(&server.configuration, proxy);
    service.add_tcp(&opts.listen);
    server.add_service(service);
    Ok(Built {
        server,
        listen: opts.listen.clone(),
        upstream,
        origin,
        tiers,
    })
}

/// A loopback port free right now.
pub fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| {
            pingora_error::Error::because(
                pingora_error::ErrorType::BindError,
                "no free loopback port",
                e,
            )
        })
}
