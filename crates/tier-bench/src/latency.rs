//! Latency of hits and misses in each tier on its own, with one client task
//! so the figures are an operation's own time, not queueing: p50, p99 and
//! p999 for memory hits, disk hits, Redis hits and misses.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pingora_cache::MemCache;
use tier_disk::{DiskConfig, DiskStorage, Durability};
use tier_memory::{MemoryConfig, MemoryStorage};
use tier_redis::server::RedisServer;
use tier_redis::{RedisConfig, RedisStorage};
use tokio::runtime::Runtime;

use crate::report::{Row, Table};
use crate::runner::{leak, populate, run_trace, DynStorage, Op};
use crate::workload::{SizeClass, Workload};

/// One storage of each kind, side by side: pingora's MemCache, the memory
/// tier, the disk tier (buffered, no fsync) and the Redis tier on a local
/// server (when redis-server starts). Keep it alive while measuring: it owns
/// the disk tier's directory and the server.
pub struct Lineup {
    /// Each storage with its label, in that order.
    pub storages: Vec<(&'static str, DynStorage)>,
    _disk_dir: Option<tempfile::TempDir>,
    _server: Option<RedisServer>,
}

impl Lineup {
    /// The lineup, every tier accepting bodies up to `max_object_bytes`; the
    /// disk tier lives under `dir`.
    pub fn new(rt: &Runtime, dir: &Path, max_object_bytes: usize) -> Self {
        let mut storages: Vec<(&'static str, DynStorage)> = vec![
            ("pingora MemCache", leak(MemCache::new())),
            (
                "tier-memory",
                leak(MemoryStorage::new(
                    MemoryConfig::new(256 << 20).max_object_bytes(max_object_bytes),
                )),
            ),
        ];
        let disk_dir = tempfile::tempdir_in(dir).ok();
        if let Some(disk_dir) = &disk_dir {
            let config = DiskConfig::new(disk_dir.path(), 1 << 30)
                .max_object_bytes(max_object_bytes as u64)
                .durability(Durability::None);
            if let Ok(disk) = rt.block_on(DiskStorage::open(config)) {
                storages.push(("tier-disk (page cache warm)", disk.leak()));
            }
        }
        let server = RedisServer::start().ok();
        if let Some(server) = &server {
            let config = RedisConfig::single(server.url())
                .max_object_bytes(max_object_bytes)
                .timeout(Duration::from_secs(5));
            storages.push((
                "tier-redis (local server, unix socket)",
                RedisStorage::new(config).leak(),
            ));
        }
        Lineup {
            storages,
            _disk_dir: disk_dir,
            _server: server,
        }
    }
}

/// The latency section; the disk tier lives under `dir`.
pub fn section(rt: &Runtime, dir: &Path, quick: bool) -> String {
    let n_keys: u64 = if quick { 2_000 } else { 10_000 };
    let n_ops = if quick { 20_000 } else { 100_000 };
    let workload = Workload {
        n_keys,
        alpha: 1.0,
        size: SizeClass::Fixed(4 << 10),
        seed: 61,
    };
    let hits = Arc::new(workload.trace(n_ops));
    // Keys past the populated ones: every lookup misses.
    let misses = Arc::new((n_keys..n_keys + n_ops as u64).collect::<Vec<u64>>());
    let lineup = Lineup::new(rt, dir, 64 << 10);
    let (mut hit_rows, mut miss_rows) = (Vec::new(), Vec::new());
    for &(name, storage) in &lineup.storages {
        populate(rt, storage, &workload, 4);
        let hit = run_trace(rt, storage, &workload, hits.clone(), 1, Op::Read);
        let miss = run_trace(rt, storage, &workload, misses.clone(), 1, Op::Read);
        hit_rows.push(Row {
            storage: name.into(),
            m: hit,
        });
        miss_rows.push(Row {
            storage: name.into(),
            m: miss,
        });
    }
    let mut out = String::new();
    for (what, rows) in [("Hits", hit_rows), ("Misses", miss_rows)] {
        let table = Table {
            title: format!(
                "{what} by tier, 4 KiB bodies, {n_keys} keys, one client task (latency, not queueing)"
            ),
            rows,
        };
        out.push_str(&table.markdown());
        out.push('\n');
    }
    out
}
