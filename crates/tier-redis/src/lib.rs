//! A Redis tier for Pingora's HTTP cache, shared by a fleet of proxies.
//!
//! [`RedisStorage`] implements pingora-cache's `Storage` and
//! [`tier_core::Tier`] over one Redis server or a Redis Cluster, so that
//! `HybridStorage<MemoryStorage, HybridStorage<DiskStorage, RedisStorage>>`
//! gives each proxy a memory tier, a disk tier and a tier every proxy shares:
//! what one proxy fetched from the origin, the others find in Redis.
//!
//! ```no_run
//! use tier_redis::{RedisConfig, RedisStorage};
//!
//! # async fn run() -> pingora_error::Result<()> {
//! let config = RedisConfig::cluster(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"])
//!     .prefix("edge")
//!     .max_object_bytes(32 << 20);
//! let redis: &'static RedisStorage = RedisStorage::new(config).leak();
//! // Then `session.cache.enable(redis, …)`, or compose it under a hybrid.
//! # let _ = redis; Ok(()) }
//! ```
//!
//! What it promises (the crate README has the layout in Redis):
//! - **Never torn**: bodies are checksummed chunks under a fresh generation;
//!   one script switches the entry to it; an entry missing any chunk is a miss.
//! - **Bounded by Redis**: keys expire with the entry's freshness plus its
//!   stale windows; `maxmemory` does the rest. Bodies over
//!   [`RedisConfig::max_object_bytes`] are refused with
//!   [`tier_core::error::OBJECT_TOO_LARGE`].
//! - **Invalidations reach the fleet**: a purge or expiry is published on a
//!   channel; [`RedisStorage::follow_invalidations`] applies other proxies'
//!   purges to this proxy's local tiers.
//! - **A miss, not an outage**: a timeout on every call and a circuit breaker;
//!   lookups that cannot reach Redis are misses.

mod breaker;
mod config;
mod format;
mod hit;
mod invalidate;
mod miss;
mod remote;
mod scripts;
mod storage;

#[cfg(feature = "test-server")]
pub mod server;

pub use config::RedisConfig;
pub use invalidate::Invalidated;
pub use storage::{RedisStats, RedisStorage};
/// Prometheus metrics for any tier, or a whole hybrid with its levels
/// labelled (feature `prometheus`): `prometheus::register(&registry, "edge", tier)`.
#[cfg(feature = "prometheus")]
pub use tier_core::prometheus;

// The README's example composes this tier with memory and disk, which this
// crate may not depend on: the `examples` package compiles it.
