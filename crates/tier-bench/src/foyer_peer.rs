//! foyer's hybrid cache as a peer (feature `peers`): the same workloads the
//! disk tier and the hybrid run, on `HybridCache<u64, Vec<u8>>` with a block
//! engine on a file-system device under the same directory.

use std::path::Path;
use std::time::Instant;

use foyer::{
    BlockEngineConfig, DeviceBuilder, FsDeviceBuilder, HybridCache, HybridCacheBuilder,
    HybridCachePolicy,
};

use crate::workload::{Expected, Workload};

/// A foyer hybrid cache of `memory` bytes over `disk` bytes in `dir`.
pub async fn open(
    dir: &Path,
    memory: usize,
    disk: usize,
    policy: HybridCachePolicy,
) -> Result<HybridCache<u64, Vec<u8>>, String> {
    let device = FsDeviceBuilder::new(dir)
        .with_capacity(disk)
        .build()
        .map_err(|e| e.to_string())?;
    HybridCacheBuilder::new()
        .with_policy(policy)
        .memory(memory)
        .with_weighter(|_key: &u64, value: &Vec<u8>| value.len())
        .storage()
        .with_engine_config(
            BlockEngineConfig::new(device)
                .with_block_size(16 << 20)
                // Large enough that foyer does not drop writes under the
                // bench's burst of inserts; drops are counted anyway.
                .with_buffer_pool_size(256 << 20),
        )
        .build()
        .await
        .map_err(|e| e.to_string())
}

/// Inserts/s and hits/s of 4 KiB-class bodies with a minimal memory tier,
/// and how many inserts foyer dropped (not found on disk afterwards).
pub struct DiskFigures {
    pub inserts_per_sec: f64,
    pub hits_per_sec: f64,
    pub dropped: u64,
}

pub async fn disk_figures(dir: &Path, workload: &Workload) -> Result<DiskFigures, String> {
    let cache = open(dir, 1 << 20, 2 << 30, HybridCachePolicy::WriteOnInsertion).await?;
    let started = Instant::now();
    for k in 0..workload.n_keys {
        cache.insert(k, workload.body(k).to_vec());
    }
    // Count the time until the writes are on the device, as the disk tier's
    // inserts are when `finish` returns.
    cache.storage().wait().await;
    let inserts_per_sec = workload.n_keys as f64 / started.elapsed().as_secs_f64().max(1e-9);
    // Reads from 4 tasks, as the disk tier's are.
    let started = Instant::now();
    let tasks: Vec<_> = (0..4u64)
        .map(|t| {
            let (cache, n) = (cache.clone(), workload.n_keys);
            tokio::spawn(async move {
                let (mut hits, mut dropped, mut wrong) = (0u64, 0u64, 0u64);
                for k in (t..n).step_by(4) {
                    match cache.get(&k).await {
                        Ok(Some(entry)) => {
                            let value = entry.value();
                            wrong += u64::from(!Expected::new(k, value.len()).check(0, value));
                            hits += 1;
                        }
                        _ => dropped += 1,
                    }
                }
                (hits, dropped, wrong)
            })
        })
        .collect();
    let (mut hits, mut dropped, mut wrong) = (0u64, 0u64, 0u64);
    for task in tasks {
        let (h, d, w) = task.await.map_err(|e| e.to_string())?;
        hits += h;
        dropped += d;
        wrong += w;
    }
    if wrong > 0 {
        return Err(format!("foyer returned {wrong} wrong bodies"));
    }
    let hits_per_sec = hits as f64 / started.elapsed().as_secs_f64().max(1e-9);
    let _ = cache.close().await;
    Ok(DiskFigures {
        inserts_per_sec,
        hits_per_sec,
        dropped,
    })
}

/// Hit ratio of foyer on `keys`: a miss inserts the key's body.
pub async fn hit_ratio(
    dir: &Path,
    keys: &[u64],
    workload: &Workload,
    memory: usize,
    disk: usize,
    policy: HybridCachePolicy,
) -> Result<f64, String> {
    let cache = open(dir, memory, disk, policy).await?;
    let mut hits = 0u64;
    for &k in keys {
        match cache.get(&k).await {
            Ok(Some(_)) => hits += 1,
            _ => {
                cache.insert(k, workload.body(k).to_vec());
            }
        }
    }
    let _ = cache.close().await;
    Ok(hits as f64 / keys.len().max(1) as f64)
}
