//! `HybridStorage<Hot, Cold>`: any two Pingora cache storages as one.
//!
//! This crate provides [`HybridStorage`], which looks entries up in a hot tier
//! then a cold one, streams cold hits to the caller while copying them into
//! the hot tier (no whole-body buffer), and writes misses to both tiers
//! (write-through) or to the hot tier with demotion on eviction (write-back).
//! Every decision about moving entries lives in [`policy`]. It names no
//! concrete tier: any `Storage` composes, through `tier_core::Tier` (or the
//! `tier_core::PlainTier` wrapper), and hybrids nest.
//!
//! # Example
//!
//! ```no_run
//! use tier_disk::{DiskConfig, DiskStorage};
//! use tier_hybrid::{policy::Policy, HybridStorage};
//! use tier_memory::{MemoryConfig, MemoryStorage};
//!
//! # async fn demo() -> pingora_error::Result<()> {
//! let memory: &'static MemoryStorage =
//!     Box::leak(Box::new(MemoryStorage::new(MemoryConfig::new(1 << 30))));
//! let disk = DiskStorage::open(DiskConfig::new("/var/cache/edge", 100 << 30)).await?.leak();
//! let cache = HybridStorage::new(memory, disk, Policy::default()).leak();
//! // In ProxyHttp::request_cache_filter: session.cache.enable(cache, None, None, None, None);
//! # let _ = cache; Ok(()) }
//! ```
//!
//! # Feature flags
//!
//! None.

mod hit;
mod ids;
mod miss;
mod moves;
mod passthrough;
pub mod policy;
mod stats;
mod storage;

pub use ids::{served_by, served_by_inner, Served};
pub use stats::HybridStats;
pub use storage::HybridStorage;
/// Prometheus metrics for any tier, or a whole hybrid with its levels
/// labelled (feature `prometheus`): `prometheus::register(&registry, "edge", tier)`.
#[cfg(feature = "prometheus")]
pub use tier_core::prometheus;

/// The README's examples, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
