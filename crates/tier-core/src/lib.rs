//! Shared vocabulary for the `tiers` storage crates.
//!
//! This crate provides what every tier of a Pingora HTTP cache shares, and what
//! [`HybridStorage`](https://docs.rs/tier-hybrid) needs from a tier beyond
//! pingora-cache's [`Storage`](pingora_cache::Storage) trait:
//!
//! - [`Tier`]: read an entry by its compact key (for demotion), hear about
//!   evictions through an [`EvictionListener`], report [`TierStats`], and declare
//!   [`Capabilities`]. Every method has a plain default, so any `Storage` can be a
//!   tier.
//! - [`PlainTier`]: wraps any `Storage`, pingora's own `MemCache` included, and
//!   gives it the default `Tier` behaviour plus hit, miss and insert counters.
//! - [`BodyHitHandler`]: a hit handler over a body held in memory, with correct
//!   `seek` and `seek_multipart`.
//! - [`key`]: the key-to-file-name hash (the raw key never becomes a path) and
//!   the conversion from a compact key back to a [`CacheKey`](pingora_cache::CacheKey).
//! - [`meta::StoredMeta`]: a response's meta as one compact buffer, the form
//!   the memory and disk tiers keep (no zstd to undo on a hit).
//! - [`error`]: helpers that build `pingora_error::Error`s naming the operation
//!   and the key hash.
//!
//! This crate does no I/O.
//!
//! # Example
//!
//! Give pingora's `MemCache` the `Tier` capabilities so a hybrid can compose it,
//! then read an entry back by its compact key:
//!
//! ```
//! use std::sync::LazyLock;
//! use pingora_cache::{CacheKey, CacheMeta, MemCache, Storage};
//! use pingora_cache::trace::Span;
//! use tier_core::{PlainTier, Tier};
//!
//! static TIER: LazyLock<PlainTier<MemCache>> =
//!     LazyLock::new(|| PlainTier::new("memcache", MemCache::new()));
//!
//! # tokio_test_block_on(async {
//! let span = Span::inactive().handle();
//! let key = CacheKey::new("example.com/logo.png", "");
//! let meta = tier_core::testing::meta_with_header("content-type", "image/png");
//!
//! let mut miss = TIER.get_miss_handler(&key, &meta, &span).await?;
//! miss.write_body(bytes::Bytes::from_static(b"\x89PNG"), true).await?;
//! miss.finish().await?;
//!
//! let (_meta, mut hit) = TIER.lookup_entry(&key.to_compact(), None, &span).await?.expect("stored");
//! assert_eq!(hit.read_body().await?.as_deref(), Some(&b"\x89PNG"[..]));
//! assert_eq!(TIER.stats().inserts, 1);
//! # Ok::<_, Box<pingora_error::Error>>(())
//! # }).unwrap();
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
//! # }
//! ```
//!
//! # Feature flags
//!
//! This crate has no feature flags.

mod body;
pub mod error;
pub mod key;
pub mod meta;
mod plain;
#[cfg(feature = "prometheus")]
pub mod prometheus;
pub mod report;
mod stats;
pub mod testing;
mod tier;

pub use body::{announced_body_len, seek_range, BodyHitHandler};
pub use plain::PlainTier;
pub use report::{Count, LatencyHistogram, LatencySnapshot, OpLatencies, TierReport};
pub use stats::{StatsCounters, TierStats};
pub use tier::{Capabilities, EvictedEntry, EvictionListener, Tier};

/// The README's examples, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
