//! [`DiskConfig`]: where the tier lives and how it behaves.

use std::path::{Path, PathBuf};

use pingora_error::ErrorType;

/// `open` found the directory held by another open disk tier (in this
/// process or another): one tier per directory. A process taking over from
/// another (a graceful upgrade) retries until the old one has closed.
pub const DIR_IN_USE: ErrorType = ErrorType::Custom("TierDirInUse");

/// How hard a write works to survive a power cut before `finish` returns.
///
/// Every level survives a killed process: records are in the page cache
/// once appended, and an entry is complete or absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Append only. After a power cut, recent entries, purges and meta
    /// updates may be lost (never half-present); the kernel writes them back
    /// within its dirty-page interval (30 s by default on Linux).
    None,
    /// `finish`, `purge`, `expire` and `update_meta` return once their record
    /// is on stable storage: concurrent ones share one `fdatasync` of the
    /// segment being written (group commit), and a segment is synced when it
    /// is sealed. Nothing acknowledged is lost to a power cut.
    #[default]
    Data,
    /// As `Data`, and the directory is also synced when a segment file is
    /// created or removed.
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
    pub(crate) segment_bytes: u64,
    pub(crate) write_timeout: std::time::Duration,
    pub(crate) name: String,
    pub(crate) fault_plan: Option<std::sync::Arc<crate::fsio::FaultPlan>>,
}

impl DiskConfig {
    /// A tier in `dir` (created, mode 0700, if missing) whose segment files
    /// take at most `capacity_bytes` of disk (at least two segments).
    pub fn new(dir: impl Into<PathBuf>, capacity_bytes: u64) -> Self {
        DiskConfig {
            dir: dir.into(),
            capacity_bytes,
            max_object_bytes: None,
            block_size: 64 << 10,
            durability: Durability::default(),
            io_concurrency: 64,
            segment_bytes: 64 << 20,
            write_timeout: std::time::Duration::from_secs(10),
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

    /// The size of a segment file (default 64 MiB; at most an eighth of the
    /// capacity, at least 64 KiB, at most 256 MiB). Eviction removes the
    /// oldest segment whole, so this is also its step.
    pub fn segment_bytes(mut self, bytes: u64) -> Self {
        self.segment_bytes = bytes;
        self
    }

    /// How long `finish` (or a purge or meta update) waits for the log
    /// writer when it is behind before it fails with a clear error (default
    /// 10 s). Waits and failures are counted.
    pub fn write_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// At most this many reads at once on the blocking pool (default 64).
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

    /// The byte bound on the segment files.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    /// The per-object body limit in force: as set (default a quarter of the
    /// capacity), and never more than all segments but two hold.
    pub fn effective_max_object_bytes(&self) -> u64 {
        self.layout().max_object_bytes
    }

    pub(crate) fn layout(&self) -> Layout {
        let segment_bytes = self
            .segment_bytes
            .min(self.capacity_bytes / 8)
            .clamp(MIN_SEGMENT, crate::index::MAX_SEGMENT_BYTES)
            / 4096
            * 4096;
        let block_size = self
            .block_size
            .min((segment_bytes / 4) as usize)
            .max(crate::format::MIN_BLOCK);
        let fragment_bytes =
            ((256 << 10).min(segment_bytes as usize / 8) / block_size).max(1) * block_size;
        let max_segments = (self.capacity_bytes / segment_bytes).max(2);
        let room = segment_bytes * max_segments.saturating_sub(2).max(1);
        Layout {
            segment_bytes,
            block_size,
            fragment_bytes,
            max_segments,
            max_object_bytes: self
                .max_object_bytes
                .unwrap_or(self.capacity_bytes / 4)
                .min(room),
        }
    }
}

const MIN_SEGMENT: u64 = 64 << 10;

/// Sizes derived from a configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    /// The size of a new segment file.
    pub(crate) segment_bytes: u64,
    /// The checksum block size of new records.
    pub(crate) block_size: usize,
    /// A body longer than this is written in fragments of this size ahead
    /// of its entry record.
    pub(crate) fragment_bytes: usize,
    /// Segments the capacity holds (at least two).
    pub(crate) max_segments: u64,
    /// The per-object body limit in force.
    pub(crate) max_object_bytes: u64,
}
