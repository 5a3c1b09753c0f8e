//! Concurrent histories through the hybrid, judged per key
//! (`tier_conformance::history`): writes, overwrites, purges of both kinds,
//! revalidations, expiries and reads (whole, ranged, slow, dropped) on three
//! keys at once, over a memory tier small enough that evictions, promotions
//! and demotions run all the time, with every tier call and every move
//! delayed by random amounts.
//!
//! `TIERS_HISTORY_ROUNDS=N` sets the rounds per write policy (default 10);
//! the soak mode is `TIERS_HISTORY_ROUNDS=500 cargo test -p tier-hybrid
//! --release --test histories`.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tier_conformance::delayed::{Delayed, Delays};
use tier_conformance::history::{run_histories, HistoryConfig, HistoryReport};
use tier_disk::{DiskConfig, DiskStorage};
use tier_hybrid::policy::{Pause, Policy, Promotion, WritePolicy};
use tier_hybrid::HybridStorage;
use tier_memory::{MemoryConfig, MemoryStorage};

type Hybrid = HybridStorage<Delayed<MemoryStorage>, Delayed<DiskStorage>>;

fn rounds() -> u64 {
    std::env::var("TIERS_HISTORY_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10)
}

/// A memory tier of 100 KiB (two 40 KB bodies do not fit) refusing bodies over 64 KiB (the checker writes
/// some of 200 KB), over a 4 MiB disk tier, both delayed.
async fn hybrid(write: WritePolicy, dir: &std::path::Path) -> &'static Hybrid {
    let delays = Delays::all(Duration::from_millis(2));
    let memory: &'static MemoryStorage = Box::leak(Box::new(MemoryStorage::new(
        MemoryConfig::new(100 << 10).max_object_bytes(64 << 10),
    )));
    let disk = DiskStorage::open(DiskConfig::new(dir, 4 << 20).block_size(4096))
        .await
        .expect("open disk")
        .leak();
    let pauses = Arc::new(|_: Pause| {
        if fastrand::bool() {
            Duration::ZERO
        } else {
            Duration::from_micros(fastrand::u64(0..3_000))
        }
    });
    let policy = Policy::default()
        .write(write)
        .promotion(Promotion::Always)
        .max_moves_in_flight(2)
        .max_pending_demotions(4)
        .test_pauses(pauses);
    HybridStorage::new(
        Delayed::new(memory, delays).leak(),
        Delayed::new(disk, delays).leak(),
        policy,
    )
    .leak()
}

async fn run(write: WritePolicy) -> HistoryReport {
    let mut report = HistoryReport::default();
    let mut moves = 0;
    for round in 0..rounds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hybrid = hybrid(write, dir.path()).await;
        let config = HistoryConfig {
            seed: round + 1,
            keys: 6,
            ..HistoryConfig::default()
        };
        report.absorb(run_histories(hybrid, config, move || hybrid.wait_for_moves().boxed()).await);
        let stats = hybrid.hybrid_stats();
        moves += stats.promotions + stats.demotions;
        if std::env::var_os("TIERS_HISTORY_DUMP").is_some() {
            eprintln!("{stats:?}");
        }
    }
    println!("{write:?}: {report}{moves} moves published");
    assert!(moves > 0, "no move ran: the histories raced nothing");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_through_histories_keep_the_rule() {
    run(WritePolicy::WriteThrough).await.assert_consistent();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_back_histories_keep_the_rule() {
    run(WritePolicy::WriteBack).await.assert_consistent();
}
