//! The connection to Redis and the one way every call goes through it: under
//! the breaker, within the timeout, with failures counted.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use pingora_cache::key::CompactCacheKey;
use pingora_error::Result;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use tier_core::error::{tier_error, tier_error_because, UNAVAILABLE};
use tier_core::StatsCounters;
use tokio::sync::OnceCell;

use crate::breaker::Breaker;
use crate::config::{Endpoint, RedisConfig};

/// A multiplexed connection to one server (reconnecting on its own) or to a
/// cluster (routing each command to the node of its key's slot).
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// What every handler of the tier shares.
pub(crate) struct Remote {
    pub(crate) config: RedisConfig,
    conn: OnceCell<Conn>,
    pub(crate) breaker: Breaker,
    pub(crate) counters: StatsCounters,
    pub(crate) timeouts: AtomicU64,
    /// Hits (until the head was read), misses (failures included), and
    /// `finish`.
    pub(crate) latencies: tier_core::OpLatencies,
    /// This instance's id in invalidation messages, to skip its own.
    pub(crate) instance: u64,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("name", &self.config.name)
            .field("endpoint", &self.config.endpoint)
            .field("connected", &self.conn.initialized())
            .finish_non_exhaustive()
    }
}

impl Remote {
    pub(crate) fn new(config: RedisConfig) -> Self {
        let breaker = Breaker::new(config.failure_threshold, config.cooldown);
        Remote {
            config,
            conn: OnceCell::new(),
            breaker,
            counters: StatsCounters::new(),
            timeouts: AtomicU64::new(0),
            latencies: Default::default(),
            instance: crate::format::new_generation(),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.config.name
    }

    /// The connection, made on first use: a proxy starts even while Redis is
    /// down, and the tier is a miss until it comes up.
    async fn conn(&self) -> RedisResult<Conn> {
        let conn = self
            .conn
            .get_or_try_init(|| async {
                match &self.config.endpoint {
                    Endpoint::Single(url) => {
                        let client = redis::Client::open(url.as_str())?;
                        // `call` times every request out itself: a second
                        // timer per request in the client would only cost.
                        let config = ConnectionManagerConfig::new()
                            .set_connection_timeout(Some(self.config.timeout))
                            .set_response_timeout(None)
                            .set_number_of_retries(1);
                        ConnectionManager::new_lazy_with_config(client, config).map(Conn::Single)
                    }
                    Endpoint::Cluster(nodes) => {
                        let client = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                            .connection_timeout(self.config.timeout)
                            .response_timeout(self.config.timeout)
                            .retries(1)
                            .build()?;
                        client.get_async_connection().await.map(Conn::Cluster)
                    }
                }
            })
            .await?;
        Ok(conn.clone())
    }

    /// Check a configuration by connecting and sending PING.
    pub(crate) async fn ping(&self) -> Result<()> {
        self.call("ping", None, |mut c| async move {
            redis::cmd("PING").query_async::<String>(&mut c).await
        })
        .await
        .map(drop)
    }

    /// Run `op` on the connection under the breaker and the timeout.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        op: &str,
        key: Option<&CompactCacheKey>,
        f: F,
    ) -> Result<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let name = self.name();
        if !self.breaker.allow() {
            return Err(tier_error(
                UNAVAILABLE,
                name,
                op,
                key,
                "circuit breaker open after repeated Redis failures",
            ));
        }
        let timeout = self.config.timeout;
        let outcome = tokio::time::timeout(timeout, async {
            let conn = self.conn().await?;
            f(conn).await
        })
        .await;
        match outcome {
            Ok(Ok(value)) => {
                self.breaker.success();
                Ok(value)
            }
            Ok(Err(e)) => {
                self.failed(op);
                Err(tier_error_because(
                    UNAVAILABLE,
                    name,
                    op,
                    key,
                    "Redis error",
                    e,
                ))
            }
            Err(_) => {
                self.timeouts.fetch_add(1, Ordering::Relaxed);
                self.failed(op);
                Err(tier_error(
                    UNAVAILABLE,
                    name,
                    op,
                    key,
                    format!("no answer from Redis within {timeout:?}"),
                ))
            }
        }
    }

    fn failed(&self, op: &str) {
        self.counters.record_error();
        if self.breaker.failure() {
            tracing::warn!(
                tier = %self.name(),
                op,
                cooldown = ?self.config.cooldown,
                "Redis keeps failing: circuit breaker open"
            );
        }
    }
}
