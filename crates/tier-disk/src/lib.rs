//! A persistent, crash-safe, bounded disk storage for Pingora's HTTP cache.
//!
//! This crate provides [`DiskStorage`], a `pingora_cache::Storage` that keeps
//! one file per entry under hashed fan-out directories, written to a temp
//! file and published by rename, with checksummed headers and body blocks, a
//! byte bound with least-recently-used eviction, and an index rebuilt from the
//! files on open. Bodies stream in and out one block at a time; every file
//! operation runs on tokio's blocking pool, never on an async worker.
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

mod config;
mod entry_file;
mod format;
mod fsio;
mod index;
mod read;
mod scan;
mod storage;
mod write;

pub use config::{DiskConfig, Durability};
#[cfg(feature = "fault-injection")]
pub use fsio::{Controls, FaultKind, FaultPlan};
pub use read::DiskHitHandler;
pub use storage::DiskStorage;
pub use write::DiskMissHandler;
