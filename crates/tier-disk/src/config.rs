//! [`DiskConfig`]: where the tier lives and how it behaves.

use std::path::{Path, PathBuf};

/// How hard a write works to survive a crash before `finish` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Publish by rename only. After a crash an entry is complete or absent,
    /// but recent entries may be absent.
    None,
    /// Also fsync the file before the rename: an entry whose `finish`
    /// returned survives a crash unless its directory entry was lost.
    #[default]
    Data,
    /// Also fsync the directory after the rename (and after removals): an
    /// entry whose `finish` returned survives a crash, and a purge stays purged.
    Full,
}

/// Configuration of a [`DiskStorage`](crate::DiskStorage).
///
/// ```
/// use tier_disk::{DiskConfig, Durability};
///
/// let config = DiskConfig::new("/var/cache/edge", 100 << 30) // 100 GiB
///     .max_object_bytes(1 << 30)
///     .durability(Durability::Full);
/// assert_eq!(config.capacity_bytes(), 100 << 30);
/// ```
#[derive(Debug, Clone)]
pub struct DiskConfig {
    pub(crate) dir: PathBuf,
    pub(crate) capacity_bytes: u64,
    pub(crate) max_object_bytes: Option<u64>,
    pub(crate) block_size: usize,
    pub(crate) durability: Durability,
    pub(crate) io_concurrency: usize,
    pub(crate) name: String,
    pub(crate) fault_plan: Option<std::sync::Arc<crate::fsio::FaultPlan>>,
}

impl DiskConfig {
    /// A tier in `dir` (created, mode 0700, if missing) holding at most
    /// `capacity_bytes` of entry files.
    pub fn new(dir: impl Into<PathBuf>, capacity_bytes: u64) -> Self {
        DiskConfig {
            dir: dir.into(),
            capacity_bytes,
            max_object_bytes: None,
            block_size: 64 << 10,
            durability: Durability::default(),
            io_concurrency: 64,
            name: "disk".to_string(),
            fault_plan: None,
        }
    }

    /// Refuse bodies longer than this (default: a quarter of the capacity).
    pub fn max_object_bytes(mut self, bytes: u64) -> Self {
        self.max_object_bytes = Some(bytes);
        self
    }

    /// The checksum block size (default 64 KiB, clamped to 4 KiB–16 MiB):
    /// the unit a reader checks and hands out, and what a reader or writer
    /// holds in memory.
    pub fn block_size(mut self, bytes: usize) -> Self {
        self.block_size = bytes.clamp(crate::format::MIN_BLOCK, crate::format::MAX_BLOCK);
        self
    }

    /// The crash-safety level (default [`Durability::Data`]).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// At most this many file operations at once on the blocking pool
    /// (default 64).
    pub fn io_concurrency(mut self, n: usize) -> Self {
        self.io_concurrency = n.max(1);
        self
    }

    /// The name in errors, logs and metrics (default `"disk"`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Test-only: fail file operations and switch off safety mechanisms as
    /// `plan` says.
    #[cfg(feature = "fault-injection")]
    pub fn fault_plan(mut self, plan: std::sync::Arc<crate::fsio::FaultPlan>) -> Self {
        self.fault_plan = Some(plan);
        self
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The byte bound on entry files.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    /// The per-object body limit in force.
    pub fn effective_max_object_bytes(&self) -> u64 {
        self.max_object_bytes
            .unwrap_or(self.capacity_bytes / 4)
            .min(self.capacity_bytes)
    }
}
