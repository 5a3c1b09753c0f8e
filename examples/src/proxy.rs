//! The caching reverse proxy of `cargo run --release --example proxy`: pingora
//! in front of an origin, caching through `HybridStorage<MemoryStorage,
//! DiskStorage>` (or, with `--redis`, memory over disk over a Redis tier the
//! fleet shares) with an eviction manager and a cache lock, `x-cache-status`
//! and `x-cache-tier` response headers, `PURGE` requests, and `/metrics` in
//! Prometheus format.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

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
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{ProxyHttp, Session};
use prometheus::{Encoder, TextEncoder};
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

/// The proxy's options; `--help` lists them. Beside its own flags it takes
/// pingora's standard ones: `-c FILE` (a pingora YAML configuration: threads,
/// pid file, error log, grace periods), `-d` (run in the background), `-u`
/// (take over the listening sockets of a running proxy) and `-t` (check the
/// configuration and exit).
#[derive(Debug, clap::Parser)]
#[command(about = "A Pingora reverse proxy caching in memory over disk (tiers)")]
#[command(mut_arg("upgrade", |a| a.help("Take over the listening sockets of a running proxy (pingora's graceful upgrade; send the old one SIGQUIT)")))]
#[command(mut_arg("daemon", |a| a.help("Run in the background (pingora's daemon mode; see pid_file and error_log in -c)")))]
#[command(mut_arg("test", |a| a.help("Check the configuration and exit")))]
#[command(mut_arg("conf", |a| a.help("A pingora YAML configuration file (threads, pid_file, error_log, grace periods)")))]
pub struct ProxyOptions {
    /// pingora's own options.
    #[command(flatten)]
    pub server: Opt,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:6188")]
    pub listen: String,
    /// Upstream origin: `host:port` or `http://host:port` for plain HTTP,
    /// `https://host[:port]` for TLS (with the `tls` feature); a name is
    /// resolved at start. Without it, a demo origin starts on a loopback
    /// port.
    #[arg(long)]
    pub upstream: Option<String>,
    /// PEM certificates to trust for an `https://` upstream instead of the
    /// system's (a private CA, or a self-signed origin).
    #[arg(long)]
    pub upstream_ca: Option<PathBuf>,
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

impl Default for ProxyOptions {
    /// The defaults `--help` lists.
    fn default() -> Self {
        <ProxyOptions as clap::Parser>::parse_from(["proxy"])
    }
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

/// What to open: the tiers' configurations, taken from the options.
#[derive(Debug, Clone)]
pub struct TierPlan {
    memory: MemoryConfig,
    disk: DiskConfig,
    policy: Policy,
    redis: Option<RedisConfig>,
}

impl TierPlan {
    /// The tiers `opts` describe.
    pub fn new(opts: &ProxyOptions) -> Self {
        let memory =
            MemoryConfig::new(opts.memory_mib << 20).max_object_bytes((opts.memory_mib << 20) / 8);
        let durability = match opts.durability {
            DurabilityArg::None => Durability::None,
            DurabilityArg::Data => Durability::Data,
            DurabilityArg::Full => Durability::Full,
        };
        let disk = DiskConfig::new(&opts.cache_dir, opts.disk_mib << 20).durability(durability);
        let promotion = match opts.promote_on_hit {
            0 => Promotion::Never,
            1 => Promotion::Always,
            n => Promotion::OnNthHit(n),
        };
        let write = match opts.write {
            WriteArg::Through => WritePolicy::WriteThrough,
            WriteArg::Back => WritePolicy::WriteBack,
        };
        let redis = match (&opts.redis, opts.redis_cluster.is_empty()) {
            (Some(url), _) => Some(RedisConfig::single(url.clone())),
            (None, false) => Some(RedisConfig::cluster(opts.redis_cluster.clone())),
            (None, true) => None,
        };
        TierPlan {
            memory,
            disk,
            policy: Policy::default().write(write).promotion(promotion),
            redis,
        }
    }

    /// What can be checked before the server starts: a cache directory
    /// that is a file, or under one.
    pub fn check(&self) -> Result<()> {
        let dir = self.disk.dir();
        let blocked = dir.ancestors().find(|p| p.exists()).filter(|p| !p.is_dir());
        match blocked {
            Some(file) => Err(pingora_error::Error::explain(
                ErrorType::FileOpenError,
                format!(
                    "cache directory {}: {} is a file, not a directory",
                    dir.display(),
                    file.display()
                ),
            )),
            None => Ok(()),
        }
    }

    /// Open the tiers. Blocking: call it on a thread that may block. While
    /// another process has the cache directory (the old process of a
    /// graceful upgrade, until it closes its tiers) this waits, saying so
    /// once. Redis is connected on first use, so the proxy starts while it
    /// is down.
    pub fn open(self) -> Result<Tiers> {
        let memory: &'static MemoryStorage = Box::leak(Box::new(MemoryStorage::new(self.memory)));
        let mut said = false;
        let disk = loop {
            match DiskStorage::open_blocking(self.disk.clone()) {
                Err(e) if e.etype() == &tier_disk::DIR_IN_USE => {
                    if !said {
                        tracing::info!(error = %e, "waiting for the cache directory");
                        said = true;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                opened => break opened?.leak(),
            }
        };
        let policy = self.policy;
        let layout = match self.redis {
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
}

/// The tiers, once a background service has opened them (after pingora
/// has daemonized, so the disk tier's threads live in the serving
/// process). Until then requests go to the origin uncached.
#[derive(Debug, Default)]
pub struct TierSlot(OnceLock<Tiers>);

impl TierSlot {
    /// The tiers, if open.
    pub fn get(&self) -> Option<Tiers> {
        self.0.get().copied()
    }

    /// Close the disk tier, if open: seal the segment being written (so the
    /// next open reads summaries only) and let go of the directory (so a
    /// process taking over can open it). Blocking; call it once
    /// `Server::run` has returned, when no request runs any more.
    pub fn close(&self) {
        let Some(tiers) = self.get() else { return };
        let closed = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
            .and_then(|rt| rt.block_on(tiers.disk.close()).map_err(|e| explain(&e)));
        match closed {
            Ok(()) => tracing::info!("disk tier closed"),
            Err(e) => {
                tracing::warn!(error = %e, "disk tier not closed; the next open scans its last segment")
            }
        }
    }

    /// Wait (blocking, up to `timeout`) for the tiers to open.
    pub fn wait(&self, timeout: Duration) -> Option<Tiers> {
        let started = Instant::now();
        loop {
            if let Some(tiers) = self.get() {
                return Some(tiers);
            }
            if started.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Opens the tiers when the server starts (see [`TierSlot::close`] for the
/// other end).
struct TierService {
    plan: TierPlan,
    slot: &'static TierSlot,
    /// The `cache` label of its metrics: the proxy's listen address.
    label: String,
}

#[async_trait]
impl pingora_core::services::background::BackgroundService for TierService {
    async fn start(&self, _shutdown: pingora_core::server::ShutdownWatch) {
        let plan = self.plan.clone();
        let opened = tokio::task::spawn_blocking(move || plan.open()).await;
        let tiers = match opened {
            Ok(Ok(tiers)) => tiers,
            Ok(Err(e)) => fail(&format!("cannot open the cache: {}", explain(&e))),
            Err(e) => fail(&format!("cannot open the cache: {e}")),
        };
        // Every tier and level, as tiers_* metrics labelled with the
        // listen address (cache="127.0.0.1:6188"), in the registry pingora
        // serves metrics from.
        if let Err(e) = tier_hybrid::prometheus::register(
            prometheus::default_registry(),
            &self.label,
            tiers.storage_tier(),
        ) {
            tracing::warn!(error = %e, "tier metrics not registered");
        }
        let _ = self.slot.0.set(tiers);
        // Closing is not done here: pingora drops its runtimes' tasks as it
        // stops, so a close begun here could be cut short. `TierSlot::close`
        // runs after `Server::run` returns.
    }
}

/// Say what went wrong and exit non-zero: the proxy cannot do its job.
fn fail(what: &str) -> ! {
    tracing::error!("{what}");
    eprintln!("proxy: {what}");
    std::process::exit(1)
}

/// Prints the banner once the proxy listens (and its cache is open), or
/// exits non-zero if it does not within a while.
struct ReadyService {
    listen: SocketAddr,
    slot: Option<&'static TierSlot>,
    banner: String,
}

#[async_trait]
impl pingora_core::services::background::BackgroundService for ReadyService {
    async fn start(&self, _shutdown: pingora_core::server::ShutdownWatch) {
        let started = Instant::now();
        while tokio::net::TcpStream::connect(self.listen).await.is_err() {
            if started.elapsed() > READY_WITHIN {
                fail(&format!(
                    "not listening on {} after {READY_WITHIN:?}",
                    self.listen
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(slot) = self.slot {
            while slot.get().is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        tracing::info!(listen = %self.listen, "ready");
        println!("{}", self.banner);
    }
}

/// How long the proxy may take to listen before it gives up.
const READY_WITHIN: Duration = Duration::from_secs(10);

impl Tiers {
    /// The whole cache as a tier, for its metrics.
    pub fn storage_tier(&self) -> &'static dyn Tier {
        match self.layout {
            Layout::Local(cache) => cache,
            Layout::Shared { cache, .. } => cache,
        }
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
/// service), once the tiers are open.
struct Invalidations(&'static TierSlot);

#[async_trait]
impl pingora_core::services::background::BackgroundService for Invalidations {
    async fn start(&self, mut shutdown: pingora_core::server::ShutdownWatch) {
        let tiers = loop {
            if let Some(tiers) = self.0.get() {
                break tiers;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = shutdown.changed() => return,
            }
        };
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
    upstream: Upstream,
    cache: CacheIn,
    eviction: &'static LruManager<16>,
    lock: &'static CacheKeyLockImpl,
}

impl std::fmt::Debug for CachingProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachingProxy")
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

/// Where the proxy caches.
#[derive(Clone, Copy)]
pub enum CacheIn {
    /// The tiers, once open.
    Tiers(&'static TierSlot),
    /// pingora's `MemCache`.
    MemCache(&'static pingora_cache::MemCache),
}

impl std::fmt::Debug for CacheIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CacheIn::Tiers(_) => "CacheIn::Tiers",
            CacheIn::MemCache(_) => "CacheIn::MemCache",
        })
    }
}

impl CacheIn {
    fn storage(&self) -> Option<&'static (dyn pingora_cache::Storage + Sync)> {
        match self {
            CacheIn::Tiers(slot) => slot.get().map(|tiers| tiers.storage()),
            CacheIn::MemCache(cache) => Some(*cache),
        }
    }

    fn tiers(&self) -> Option<Tiers> {
        match self {
            CacheIn::Tiers(slot) => slot.get(),
            CacheIn::MemCache(_) => None,
        }
    }
}

/// The origin: its address, its name as given, and whether it speaks TLS.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The `host:port` it was given as (or the address).
    pub name: String,
    /// An `https://` origin: TLS to it, with its host name as SNI and the
    /// name its certificate is checked against.
    pub tls: bool,
    /// Certificates to trust for it instead of the system's.
    pub ca: Option<Arc<TlsCa>>,
}

/// What pingora's TLS takes as the certificates to trust.
#[cfg(feature = "tls")]
pub type TlsCa = pingora_core::protocols::tls::CaType;
/// Without TLS there is nothing to trust.
#[cfg(not(feature = "tls"))]
pub type TlsCa = ();

impl Upstream {
    /// A plain HTTP origin at `addr`.
    pub fn plain(addr: SocketAddr) -> Upstream {
        Upstream {
            addr,
            name: addr.to_string(),
            tls: false,
            ca: None,
        }
    }

    /// Resolve `host:port`, `http://host:port` or `https://host[:port]` (a
    /// name or an address) to its first address.
    pub fn resolve(given: &str) -> Result<Upstream> {
        let bad = |why: String| flag_error(ErrorType::InvalidHTTPHeader, "--upstream", given, why);
        let (tls, rest) = match given.split_once("://") {
            Some(("https", rest)) => (true, rest),
            Some(("http", rest)) => (false, rest),
            Some((scheme, _)) => return Err(bad(format!("{scheme}:// is not http or https"))),
            None => (false, given),
        };
        let rest = rest.trim_end_matches('/');
        if tls && !cfg!(feature = "tls") {
            return Err(bad(
                "this proxy was built without TLS: build it with `--features tls`".to_string(),
            ));
        }
        let name = match (tls, rest.rsplit_once(':')) {
            (_, Some((_, port))) if port.parse::<u16>().is_ok() => rest.to_string(),
            (true, _) => format!("{rest}:443"),
            (false, _) => format!("{rest}:80"),
        };
        let addr = first_address(&name).map_err(bad)?;
        Ok(Upstream {
            addr,
            name,
            tls,
            ca: None,
        })
    }

    /// Trust the PEM certificates in `path` (instead of the system's).
    pub fn trusting(mut self, path: &Path) -> Result<Upstream> {
        let given = path.display().to_string();
        let bad = |why: String| flag_error(ErrorType::FileReadError, "--upstream-ca", &given, why);
        if !self.tls {
            return Err(bad("only an https:// upstream uses it".to_string()));
        }
        let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        self.ca = Some(Arc::new(parse_ca(&pem).map_err(bad)?));
        Ok(self)
    }

    /// The host part of the name: SNI and the certificate's name for TLS.
    pub fn host(&self) -> &str {
        let host = self
            .name
            .rsplit_once(':')
            .map_or(self.name.as_str(), |(h, _)| h);
        host.trim_start_matches('[').trim_end_matches(']')
    }
}

impl CachingProxy {
    /// A proxy to `upstream` caching in `cache`.
    pub fn new(upstream: Upstream, cache: CacheIn, total_bytes: usize) -> Self {
        CachingProxy {
            upstream,
            cache,
            // Tracks every cached entry across both tiers; its purges of
            // hot-tier ids evict from memory (demoting in write-back).
            eviction: Box::leak(Box::new(LruManager::<16>::with_capacity(
                total_bytes,
                1 << 16,
            ))),
            lock: Box::leak(CacheLock::new_boxed(Duration::from_secs(5))),
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
        let body = Bytes::from(render_metrics());
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
        let sni = if self.upstream.tls {
            self.upstream.host().to_string()
        } else {
            String::new()
        };
        #[allow(unused_mut)] // set only with TLS
        let mut peer = HttpPeer::new(self.upstream.addr, self.upstream.tls, sni);
        #[cfg(feature = "tls")]
        if let Some(ca) = &self.upstream.ca {
            peer.options.ca = Some(ca.clone());
        }
        Ok(Box::new(peer))
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<()> {
        // A PURGE needs the cache (and its key) too, to remove the entry.
        // Until the tiers are open, requests go to the origin uncached.
        let Some(storage) = self.cache.storage() else {
            return Ok(());
        };
        if request_cacheable(session.req_header()) || self.is_purge(session, ctx) {
            session
                .cache
                .enable(storage, Some(self.eviction), None, Some(self.lock), None);
        }
        Ok(())
    }

    /// What pingora's log lines (a failed cache lookup among them) say of
    /// the request: its method and, once it has a cache key, the entry's
    /// hash rather than the URL the key is made of.
    fn request_summary(&self, session: &Session, _ctx: &Self::CTX) -> String {
        let method = session.req_header().method.as_str();
        // Enabled and past the key callback: the key is set.
        if session.cache.enabled() && session.cache.phase() != pingora_cache::CachePhase::CacheKey {
            let entry = tier_core::key::entry_file_name(&session.cache.cache_key().to_compact());
            format!("{method} entry {entry}")
        } else {
            session.as_ref().request_summary()
        }
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
        ctx.tier = self
            .cache
            .tiers()
            .and_then(|tiers| tiers.served(hit_handler));
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

/// The metrics pingora's registry holds (the tiers' among them, registered
/// when they open), in Prometheus text format.
fn render_metrics() -> String {
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&prometheus::default_registry().gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// A pingora server with the proxy (and, without an upstream, the demo
/// origin) added, and what it will listen on.
pub struct Built {
    /// The server, ready for `run` or `run_forever`.
    pub server: Server,
    /// The proxy's address.
    pub listen: SocketAddr,
    /// The origin it forwards to.
    pub upstream: Upstream,
    /// The demo origin's counters, if it started one.
    pub origin: Option<Arc<crate::origin::OriginCounters>>,
    /// The cache's tiers, open once the server runs (none when caching in
    /// MemCache).
    pub tiers: Option<&'static TierSlot>,
}

impl std::fmt::Debug for Built {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Built")
            .field("listen", &self.listen)
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

/// pingora's configuration: the `-c` file as given, or, without one, this
/// example's (two threads, no grace period: it stops at once), with the
/// command line's `-d`/`-u`/`-t` applied either way.
fn server_conf(opt: &Opt) -> Result<ServerConf> {
    let mut conf = match &opt.conf {
        Some(_) => ServerConf::load_yaml_with_opt_override(opt)?,
        None => ServerConf {
            grace_period_seconds: Some(0),
            graceful_shutdown_timeout_seconds: Some(5),
            threads: 2,
            ..ServerConf::default()
        },
    };
    conf.merge_with_opt(opt);
    Ok(conf)
}

/// Build the server the options describe. `demo_origin_port` is where the
/// demo origin listens when there is no upstream (0 picks a free port).
///
/// Fails, with a message that says what to change, when the listen address
/// or the upstream does not resolve, when the listen address is taken
/// (unless `-u` takes it over from a running proxy), or when the cache
/// directory is a file. The tiers open when the server runs.
pub fn build(opts: &ProxyOptions, demo_origin_port: u16) -> Result<Built> {
    let conf = server_conf(&opts.server)?;
    let opt = Opt {
        conf: None, // loaded above
        ..opt_copy(&opts.server)
    };
    let listen = resolve_listen(&opts.listen, opts.server.upgrade)?;
    let plan = match opts.storage {
        StorageArg::Tiers => {
            let plan = TierPlan::new(opts);
            plan.check()?;
            Some(plan)
        }
        StorageArg::Memcache => None,
    };
    let upstream = opts
        .upstream
        .as_deref()
        .map(Upstream::resolve)
        .transpose()?;
    let upstream = match (upstream, &opts.upstream_ca) {
        (Some(upstream), Some(ca)) => Some(upstream.trusting(ca)?),
        (upstream, _) => upstream,
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    // With -t this checks the configuration and exits; with -u it takes
    // the listening sockets over from the running proxy.
    server.bootstrap();
    let (upstream, origin) = match upstream {
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
            (Upstream::plain(addr), Some(counters))
        }
    };
    let slot: Option<&'static TierSlot> = plan.as_ref().map(|_| &*Box::leak(Box::default()));
    let cache = match (slot, plan) {
        (Some(slot), Some(plan)) => {
            if plan.redis.is_some() {
                server.add_service(pingora_core::services::background::background_service(
                    "shared invalidations",
                    Invalidations(slot),
                ));
            }
            server.add_service(pingora_core::services::background::background_service(
                "tiers",
                TierService {
                    plan,
                    slot,
                    label: listen.to_string(),
                },
            ));
            CacheIn::Tiers(slot)
        }
        _ => CacheIn::MemCache(Box::leak(Box::new(pingora_cache::MemCache::new()))),
    };
    let banner = banner(opts, listen, &upstream, origin.is_some());
    let total = (opts.memory_mib << 20) + (opts.disk_mib << 20) as usize;
    let proxy = CachingProxy::new(upstream.clone(), cache, total);
    let mut service = pingora_proxy::http_proxy_service(&server.configuration, proxy);
    service.add_tcp(&listen.to_string());
    server.add_service(service);
    server.add_service(pingora_core::services::background::background_service(
        "ready",
        ReadyService {
            listen,
            slot,
            banner,
        },
    ));
    Ok(Built {
        server,
        listen,
        upstream,
        origin,
        tiers: slot,
    })
}

/// PEM certificates, as pingora's TLS takes them.
#[cfg(feature = "tls")]
fn parse_ca(pem: &[u8]) -> std::result::Result<TlsCa, String> {
    let certs = pingora_core::tls::x509::X509::stack_from_pem(pem).map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no certificate in it".to_string());
    }
    Ok(certs.into_boxed_slice())
}

#[cfg(not(feature = "tls"))]
fn parse_ca(_pem: &[u8]) -> std::result::Result<TlsCa, String> {
    Err("this proxy was built without TLS: build it with `--features tls`".to_string())
}

/// pingora's `Opt` has no `Clone`.
fn opt_copy(opt: &Opt) -> Opt {
    Opt {
        upgrade: opt.upgrade,
        daemon: opt.daemon,
        nocapture: opt.nocapture,
        test: opt.test,
        conf: opt.conf.clone(),
    }
}

/// The address `--listen` names, checked free now (unless `-u` takes it
/// over from the running proxy), so a taken port is a clear error at start,
/// not a panic in a pingora thread later.
fn resolve_listen(listen: &str, upgrade: bool) -> Result<SocketAddr> {
    let bind_error = |why: String| flag_error(ErrorType::BindError, "--listen", listen, why);
    let addr = first_address(listen).map_err(bind_error)?;
    if !upgrade {
        std::net::TcpListener::bind(addr)
            .map_err(|e| bind_error(format!("cannot listen there: {e}")))?;
    }
    Ok(addr)
}

/// The first address `name` (`host:port`, a name or an address) resolves
/// to, or why there is none.
fn first_address(name: &str) -> std::result::Result<SocketAddr, String> {
    std::net::ToSocketAddrs::to_socket_addrs(name)
        .map_err(|e| format!("cannot resolve it ({e}); give host:port"))?
        .next()
        .ok_or_else(|| "the name has no address".to_string())
}

/// An error in the value `given` of the command-line flag `flag`, saying
/// `why` in one line.
fn flag_error(etype: ErrorType, flag: &str, given: &str, why: String) -> Box<pingora_error::Error> {
    pingora_error::Error::explain(etype, format!("{flag} {given}: {why}"))
}

/// What the proxy prints once it listens.
fn banner(opts: &ProxyOptions, listen: SocketAddr, upstream: &Upstream, demo: bool) -> String {
    use std::fmt::Write as _;
    let scheme = if upstream.tls { "https" } else { "http" };
    let mut out = format!(
        "tiers proxy on http://{listen} -> {scheme}://{}\n",
        upstream.name
    );
    let _ = match opts.storage {
        StorageArg::Memcache => writeln!(
            out,
            "cache: pingora's MemCache (unbounded, for comparisons)"
        ),
        StorageArg::Tiers => writeln!(
            out,
            "cache: {} MiB memory over {} MiB disk in {}{}",
            opts.memory_mib,
            opts.disk_mib,
            opts.cache_dir.display(),
            match (&opts.redis, opts.redis_cluster.is_empty()) {
                (Some(url), _) => format!(" over Redis at {url}"),
                (None, false) =>
                    format!(" over the Redis Cluster {}", opts.redis_cluster.join(",")),
                (None, true) => String::new(),
            }
        ),
    };
    if demo {
        let _ = write!(
            out,
            "demo origin started (bodies up to 64 MiB, cached for 60 s); try:\n\
             \x20 curl -si http://{listen}/bytes/1048576 -o /dev/null -D -   # miss, then run again: hit\n\
             \x20 curl -si -H 'Range: bytes=0-99' http://{listen}/bytes/1048576 -o /dev/null -D -\n\
             \x20 curl -s http://{listen}/metrics\n\
             \x20 curl -si -X PURGE http://{listen}/bytes/1048576   # remove it (from Redis and the fleet too)"
        );
    }
    out.trim_end().to_string()
}

/// Log to stderr through `tracing`, filtered by `RUST_LOG` (without it:
/// the tiers' and this proxy's lines from `info`, pingora's from `warn`),
/// pingora's own `log` records included.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "warn,examples=info,tier_core=info,tier_memory=info,tier_disk=info,tier_hybrid=info,tier_redis=info",
        )
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// An error as one readable line: what failed and why, without pingora's
/// error-type prefix.
pub fn explain(e: &pingora_error::Error) -> String {
    let mut out = match &e.context {
        Some(context) => context.as_str().to_string(),
        None => e.etype.as_str().to_string(),
    };
    if let Some(cause) = &e.cause {
        out.push_str(&format!(" ({cause})"));
    }
    out
}

/// A loopback port free right now.
pub fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| {
            pingora_error::Error::because(ErrorType::BindError, "no free loopback port", e)
        })
}
