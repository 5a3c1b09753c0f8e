//! A persistent, crash-safe, bounded disk storage for Pingora's HTTP cache.
//!
//! This crate provides [`DiskStorage`], a `pingora_cache::Storage` that
//! appends entries as checksummed records to preallocated segment files (a
//! log), packed without padding, with one writer thread that commits
//! concurrent finishes in one `fdatasync`. A 16-byte-a-slot index in memory
//! points at each entry's record; sealed segments end with a summary of
//! their records, so a reopen reads summaries, not records. Eviction takes
//! the oldest segment whole, copying forward entries that were hit. Purges
//! and meta updates are records too. Large bodies stream in and out in
//! fragments, in bounded memory. Reads the page cache can answer run on the
//! calling thread (`RWF_NOWAIT`); every other file operation runs off the
//! async workers.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use pingora_cache::{CacheKey, Storage};
//! use pingora_cache::trace::Span;
//! use tier_disk::{DiskConfig, DiskStorage, Durability};
//!
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! let config = DiskConfig::new(dir.path(), 1 << 30).durability(Durability::Data);
//! let disk: &'static DiskStorage = DiskStorage::open(config).await?.leak();
//!
//! let span = Span::inactive().handle();
//! let key = CacheKey::new("example.com/big.bin", "");
//! let meta = tier_core::testing::meta_with_header("content-type", "application/octet-stream");
//! let mut miss = disk.get_miss_handler(&key, &meta, &span).await?;
//! miss.write_body(Bytes::from(vec![7u8; 200_000]), true).await?;
//! miss.finish().await?;
//!
//! let (_meta, mut hit) = disk.lookup(&key, &span).await?.expect("stored");
//! let mut read = 0;
//! while let Some(chunk) = hit.read_body().await? {
//!     read += chunk.len(); // one checked 64 KiB block at a time
//! }
//! assert_eq!(read, 200_000);
//! # Ok::<_, Box<pingora_error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! The on-disk format is described in the crate README and in the `format`
//! module's source.
//!
//! # Feature flags
//!
//! - `fault-injection` (test-only): `DiskConfig::fault_plan` fails the N-th
//!   file operation and switches off safety mechanisms for negative controls.

// The layers, each using only those before it: format, fsio, index; config;
// segment; inflight; store; recover; log; write; read; storage.
mod config;
mod format;
mod fsio;
mod index;
mod inflight;
mod log;
mod read;
mod recover;
mod segment;
mod storage;
mod store;
mod write;

pub use config::{DiskConfig, Durability, DIR_IN_USE};
#[cfg(feature = "fault-injection")]
pub use fsio::{Controls, Event, FaultKind, FaultPlan};
pub use read::DiskHitHandler;
pub use storage::{DiskStats, DiskStorage};
/// Prometheus metrics for any tier, or a whole hybrid with its levels
/// labelled (feature `prometheus`): `prometheus::register(&registry, "edge", tier)`.
#[cfg(feature = "prometheus")]
pub use tier_core::prometheus;
pub use write::DiskMissHandler;

/// The README's examples, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
