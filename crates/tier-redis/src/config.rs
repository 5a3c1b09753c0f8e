//! [`RedisConfig`]: where Redis is and how the tier treats it.

use std::time::Duration;

/// Where the tier's Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// One server: a `redis://host:port`, `rediss://…` or
    /// `redis+unix:///path/to/socket` URL.
    Single(String),
    /// A Redis Cluster, found through any of these seed nodes.
    Cluster(Vec<String>),
}

/// How a [`RedisStorage`](crate::RedisStorage) reaches Redis and uses it.
///
/// Start from [`RedisConfig::single`] or [`RedisConfig::cluster`]; every other
/// setting has a default a proxy can run with.
///
/// ```
/// use std::time::Duration;
/// use tier_redis::RedisConfig;
///
/// let config = RedisConfig::single("redis://127.0.0.1:6379")
///     .prefix("edge-cache")
///     .timeout(Duration::from_millis(100))
///     .max_object_bytes(16 << 20);
/// assert_eq!(config.get_max_object_bytes(), 16 << 20);
/// // Out-of-range chunk sizes are brought into range, not trusted.
/// assert_eq!(RedisConfig::single("redis://h").chunk_bytes(usize::MAX).get_chunk_bytes(), 64 << 20);
/// ```
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub(crate) endpoint: Endpoint,
    pub(crate) name: String,
    pub(crate) prefix: String,
    pub(crate) chunk_bytes: usize,
    pub(crate) max_object_bytes: usize,
    pub(crate) timeout: Duration,
    pub(crate) failure_threshold: u32,
    pub(crate) cooldown: Duration,
    pub(crate) min_ttl: Duration,
    pub(crate) max_ttl: Duration,
    pub(crate) superseded_grace: Duration,
    pub(crate) broadcast_invalidations: bool,
}

impl RedisConfig {
    /// The channel invalidations are published on.
    pub(crate) fn invalidation_channel(&self) -> String {
        format!("{}:invalidations", self.prefix)
    }

    /// Where to subscribe to invalidations: the server, or the cluster's
    /// seed nodes in order (a cluster forwards published messages to every
    /// node).
    pub(crate) fn subscribe_urls(&self) -> Vec<String> {
        match &self.endpoint {
            Endpoint::Single(url) => vec![url.clone()],
            Endpoint::Cluster(nodes) => nodes.clone(),
        }
    }

    fn with(endpoint: Endpoint) -> Self {
        RedisConfig {
            endpoint,
            name: "redis".to_string(),
            prefix: "tiers".to_string(),
            chunk_bytes: 256 << 10,
            max_object_bytes: 64 << 20,
            timeout: Duration::from_millis(250),
            failure_threshold: 5,
            cooldown: Duration::from_secs(5),
            min_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(7 * 24 * 3600),
            superseded_grace: Duration::from_secs(30),
            broadcast_invalidations: true,
        }
    }

    /// One Redis server at `url` (`redis://host:port/db`, `rediss://…`, or
    /// `redis+unix:///path/to/redis.sock`).
    pub fn single(url: impl Into<String>) -> Self {
        Self::with(Endpoint::Single(url.into()))
    }

    /// A Redis Cluster, discovered from any of `nodes` (`redis://host:port`).
    /// One entry's keys share a hash slot, so every operation on an entry
    /// goes to one node.
    pub fn cluster<S: Into<String>>(nodes: impl IntoIterator<Item = S>) -> Self {
        Self::with(Endpoint::Cluster(
            nodes.into_iter().map(Into::into).collect(),
        ))
    }

    /// The tier's name in logs, errors and metrics. Default `"redis"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The prefix of every key the tier writes, so several caches (or other
    /// users) share one Redis without meeting. Default `"tiers"`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Bodies are stored in chunks of this many bytes (1 KiB to 64 MiB), and
    /// a body no longer than one chunk is stored inside the entry's own key.
    /// It is also what one reader or writer holds in memory. Default 256 KiB.
    pub fn chunk_bytes(mut self, bytes: usize) -> Self {
        self.chunk_bytes = bytes.clamp(1024, 64 << 20);
        self
    }

    /// The largest body the tier stores; a longer one fails its write with
    /// [`tier_core::error::OBJECT_TOO_LARGE`]. Default 64 MiB.
    pub fn max_object_bytes(mut self, bytes: usize) -> Self {
        self.max_object_bytes = bytes;
        self
    }

    /// The limit on every call to Redis, connecting included; a call that
    /// takes longer counts as a failure. Default 250 ms.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// After this many failures in a row the breaker opens: for
    /// [`cooldown`](Self::cooldown) every lookup is a miss and every write is
    /// refused at once, without calling Redis. Default 5.
    pub fn failure_threshold(mut self, failures: u32) -> Self {
        self.failure_threshold = failures.max(1);
        self
    }

    /// How long the breaker stays open before one call may try Redis again.
    /// Default 5 s.
    pub fn cooldown(mut self, cooldown: Duration) -> Self {
        self.cooldown = cooldown;
        self
    }

    /// Entries live in Redis for their freshness plus their stale windows
    /// (stale-while-revalidate, stale-if-error), but at least this long, so
    /// a stale entry can still be revalidated. Default 60 s.
    pub fn min_ttl(mut self, ttl: Duration) -> Self {
        self.min_ttl = ttl;
        self
    }

    /// The longest an entry lives in Redis, whatever its freshness.
    /// Default 7 days.
    pub fn max_ttl(mut self, ttl: Duration) -> Self {
        self.max_ttl = ttl;
        self
    }

    /// When a write replaces an entry, the old body's chunks live this much
    /// longer, so readers streaming it can finish. Default 30 s.
    pub fn superseded_grace(mut self, grace: Duration) -> Self {
        self.superseded_grace = grace;
        self
    }

    /// Publish every invalidation (a purge other than an eviction, an
    /// expiry) on the channel `PREFIX:invalidations`, so that proxies
    /// following it with [`RedisStorage::follow_invalidations`](crate::RedisStorage::follow_invalidations)
    /// drop their local copies too. Default on.
    pub fn broadcast_invalidations(mut self, on: bool) -> Self {
        self.broadcast_invalidations = on;
        self
    }

    /// The chunk size in bytes.
    pub fn get_chunk_bytes(&self) -> usize {
        self.chunk_bytes
    }

    /// The per-object limit in bytes.
    pub fn get_max_object_bytes(&self) -> usize {
        self.max_object_bytes
    }
}
