//! A bounded, fast, scan-resistant memory storage for Pingora's HTTP cache.
//!
//! This crate provides [`MemoryStorage`], a `pingora_cache::Storage` that
//! holds at most a configured number of bytes, counting bodies, meta, per-entry
//! bookkeeping and writes still in progress, and evicts with S3-FIFO, which
//! keeps popular entries through scans of one-time keys. It implements the
//! whole 0.9 contract (streaming partial writes, seeks, `expire`, entry ids)
//! and the [`tier_core::Tier`] trait, so it can be the hot tier of a hybrid and
//! hand its evicted entries to a listener for demotion.
//!
//! Hits take one shard's read lock, bump a counter in the entry and clone two
//! reference-counted handles: no global lock, no header decompression, no copy
//! of the body.
//!
//! # Example
//!
//! ```
//! use std::sync::LazyLock;
//! use bytes::Bytes;
//! use pingora_cache::{CacheKey, Storage};
//! use pingora_cache::trace::Span;
//! use tier_core::Tier;
//! use tier_memory::{MemoryConfig, MemoryStorage};
//!
//! // 64 MiB in all; bodies over 8 MiB are refused.
//! static CACHE: LazyLock<MemoryStorage> = LazyLock::new(|| {
//!     MemoryStorage::new(MemoryConfig::new(64 << 20).max_object_bytes(8 << 20))
//! });
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let span = Span::inactive().handle();
//! let key = CacheKey::new("example.com/app.js", "");
//! let meta = tier_core::testing::meta_with_header("content-type", "text/javascript");
//!
//! let mut miss = CACHE.get_miss_handler(&key, &meta, &span).await?;
//! miss.write_body(Bytes::from_static(b"console.log(1)"), true).await?;
//! miss.finish().await?;
//!
//! let (_meta, mut hit) = CACHE.lookup(&key, &span).await?.expect("cached");
//! assert_eq!(hit.read_body().await?.as_deref(), Some(&b"console.log(1)"[..]));
//! assert!(CACHE.stats().bytes <= 64 << 20);
//! # Ok::<_, Box<pingora_error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! In a proxy: `session.cache.enable(&*CACHE, eviction, predictor, lock, None)`.
//! An eviction manager is optional: the tier bounds itself. When one is wired,
//! its `purge(PurgeTarget::Exact(..), PurgeType::Eviction)` removes exactly the
//! generation it names.
//!
//! # Feature flags
//!
//! None.

mod config;
mod entry;
mod inflight;
mod shard;
mod storage;
mod striped;

pub use config::MemoryConfig;
pub use inflight::PartialHitHandler;
pub use storage::MemoryStorage;
/// Prometheus metrics for any tier, or a whole hybrid with its levels
/// labelled (feature `prometheus`): `prometheus::register(&registry, "edge", tier)`.
#[cfg(feature = "prometheus")]
pub use tier_core::prometheus;

#[cfg(test)]
mod tests;

/// The README's examples, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
