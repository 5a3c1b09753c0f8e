//! Stress: 64 tasks on a 2-worker runtime doing mixed operations on 16
//! overlapping keys through memory over disk, with a memory tier small enough
//! to evict and demote all the time. Every body read must be one whole
//! generation of its key, the memory bound must hold after every operation,
//! and a watchdog fails the test if it does not finish.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pingora_cache::storage::{PurgeTarget, PurgeType, Storage};
use pingora_cache::trace::Span;
use pingora_cache::CacheKey;
use tier_disk::{DiskConfig, DiskStorage, Durability};
use tier_hybrid::policy::{Policy, Promotion, WritePolicy};
use tier_hybrid::HybridStorage;
use tier_memory::{MemoryConfig, MemoryStorage};

const TASKS: u64 = 64;
const OPS_PER_TASK: u64 = 150;
const KEYS: u64 = 16;
const MEMORY: usize = 512 << 10;

/// Generation `gen` of key `k`: its length and every byte follow from both,
/// so a torn or mixed body cannot pass `is_whole`.
fn body(k: u64, gen: u64) -> Vec<u8> {
    let len = 16 + ((k * 7919 + gen * 104_729) % 60_000) as usize;
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&k.to_le_bytes());
    out.extend_from_slice(&gen.to_le_bytes());
    while out.len() < len {
        out.push((out.len() as u64 ^ gen.rotate_left(13) ^ k) as u8);
    }
    out
}

fn is_whole(k: u64, got: &[u8]) -> bool {
    if got.len() < 16 {
        return false;
    }
    let key = u64::from_le_bytes(got[..8].try_into().unwrap_or_default());
    let gen = u64::from_le_bytes(got[8..16].try_into().unwrap_or_default());
    key == k && got == body(k, gen).as_slice()
}

async fn run(write: WritePolicy) {
    let dir = tempfile::tempdir().expect("tempdir");
    let memory: &'static MemoryStorage = Box::leak(Box::new(MemoryStorage::new(
        MemoryConfig::new(MEMORY)
            .max_object_bytes(MEMORY / 4)
            .shards(2),
    )));
    let disk = DiskStorage::open(
        DiskConfig::new(dir.path(), 64 << 20)
            .block_size(4096)
            .durability(Durability::None),
    )
    .await
    .expect("open")
    .leak();
    let hybrid = HybridStorage::new(
        memory,
        disk,
        Policy::default()
            .write(write)
            .promotion(Promotion::OnNthHit(2)),
    )
    .leak();
    let reads = Arc::new(AtomicU64::new(0));
    let gens = Arc::new(AtomicU64::new(1));
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (reads, gens) = (reads.clone(), gens.clone());
            tokio::spawn(async move {
                let span = Span::inactive().handle();
                let meta = tier_core::testing::meta_with_header("x", "1");
                for i in 0..OPS_PER_TASK {
                    let k = (t * 31 + i * 17) % KEYS;
                    let key = CacheKey::new(format!("stress/{k}"), "");
                    match (t + i) % 10 {
                        0..=3 => {
                            let gen = gens.fetch_add(1, Ordering::Relaxed);
                            let data = body(k, gen);
                            if let Ok(mut miss) = hybrid.get_miss_handler(&key, &meta, &span).await
                            {
                                let mut ok = true;
                                for chunk in data.chunks(7000) {
                                    ok &= miss
                                        .write_body(Bytes::copy_from_slice(chunk), false)
                                        .await
                                        .is_ok();
                                }
                                if ok && i % 13 != 0 {
                                    let _ = miss.finish().await;
                                } // else: dropped mid-write
                            }
                        }
                        4..=7 => {
                            if let Ok(Some((_, mut hit))) = hybrid.lookup(&key, &span).await {
                                let mut got = Vec::new();
                                let mut failed = false;
                                loop {
                                    match hit.read_body().await {
                                        Ok(Some(chunk)) => got.extend_from_slice(&chunk),
                                        Ok(None) => break,
                                        // A reader following a write that was dropped fails:
                                        // that is the contract, not a torn body.
                                        Err(_) => {
                                            failed = true;
                                            break;
                                        }
                                    }
                                }
                                assert!(
                                    failed || is_whole(k, &got),
                                    "a read of stress/{k} served a torn or mixed body of {} bytes",
                                    got.len()
                                );
                                reads.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        8 => {
                            let compact = key.to_compact();
                            let _ = hybrid
                                .purge(PurgeTarget::Active(&compact), PurgeType::Eviction, &span)
                                .await;
                        }
                        _ => {
                            let compact = key.to_compact();
                            let _ = hybrid
                                .purge(
                                    PurgeTarget::Active(&compact),
                                    PurgeType::Invalidation,
                                    &span,
                                )
                                .await;
                        }
                    }
                    assert!(
                        memory.used_bytes() <= MEMORY,
                        "memory bound broken: {}",
                        memory.used_bytes()
                    );
                }
            })
        })
        .collect();
    let all = futures::future::join_all(tasks);
    let joined = tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .expect("watchdog: the stress run deadlocked or stalled");
    for task in joined {
        task.expect("a stress task panicked");
    }
    hybrid.wait_for_moves().await;
    // Every entry left is whole.
    let span = Span::inactive().handle();
    let mut present = 0;
    for k in 0..KEYS {
        let key = CacheKey::new(format!("stress/{k}"), "");
        if let Ok(Some((_, mut hit))) = hybrid.lookup(&key, &span).await {
            let mut got = Vec::new();
            while let Some(chunk) = hit.read_body().await.expect("settled entries read cleanly") {
                got.extend_from_slice(&chunk);
            }
            assert!(is_whole(k, &got));
            present += 1;
        }
    }
    let stats = hybrid.hybrid_stats();
    println!(
        "RESULT stress {write:?}: {} ops by {TASKS} tasks, {} reads checked, {present} entries left whole, {} memory evictions, {} demotions, {} promotions, 0 torn bodies",
        TASKS * OPS_PER_TASK,
        reads.load(Ordering::Relaxed),
        tier_core::Tier::stats(memory).evictions,
        stats.demotions,
        stats.promotions,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_tasks_write_through() {
    run(WritePolicy::WriteThrough).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_tasks_write_back() {
    run(WritePolicy::WriteBack).await;
}
