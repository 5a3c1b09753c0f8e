//! Crash points for a write-back hybrid over the disk tier: a child process
//! writes through a small memory tier that demotes to disk all the time and
//! is killed with SIGKILL; the parent reopens the disk tier and checks that
//! every entry it finds is complete and correct. Write-back promises no
//! durability for entries still in memory, so absence is fine; a wrong byte
//! is not.

use std::time::Duration;

use bytes::Bytes;
use pingora_cache::storage::Storage;
use pingora_cache::trace::Span;
use pingora_cache::CacheKey;
use tier_disk::{DiskConfig, DiskStorage, Durability};
use tier_hybrid::policy::{Policy, Promotion, WritePolicy};
use tier_hybrid::HybridStorage;
use tier_memory::{MemoryConfig, MemoryStorage};

const CHILD_ENV: &str = "TIER_HYBRID_CRASH_CHILD";
const KEYS: u32 = 24;

fn disk_config(dir: &std::path::Path) -> DiskConfig {
    DiskConfig::new(dir, 64 << 20)
        .block_size(4096)
        .durability(Durability::Full)
}

fn body(key: u32, gen: u32) -> Vec<u8> {
    let len = 2000 + ((key * 7919 + gen * 104_729) % 30_000) as usize;
    (0..len)
        .map(|i| (i as u32 ^ key ^ gen.rotate_left(8)) as u8)
        .collect()
}

/// The child: write generations through a write-back hybrid until killed.
#[test]
fn crash_child_writes_back_until_killed() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        // Run directly by the harness: nothing to do; the parent runs this
        // binary again as the child.
        return;
    };
    let start: u32 = std::env::var("TIER_HYBRID_CRASH_GEN")
        .ok()
        .and_then(|g| g.parse().ok())
        .unwrap_or(0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let memory: &'static MemoryStorage = Box::leak(Box::new(MemoryStorage::new(
            MemoryConfig::new(128 << 10)
                .max_object_bytes(64 << 10)
                .shards(1),
        )));
        let disk = DiskStorage::open(disk_config(std::path::Path::new(&dir)))
            .await
            .expect("open")
            .leak();
        let policy = Policy::default()
            .write(WritePolicy::WriteBack)
            .promotion(Promotion::Always);
        let hybrid = HybridStorage::new(memory, disk, policy).leak();
        let span = Span::inactive().handle();
        for gen in start.. {
            let k = gen % KEYS;
            let key = CacheKey::new(format!("crash/{k}"), "");
            let meta = tier_core::testing::meta_with_header("x-gen", &gen.to_string());
            let data = body(k, gen);
            let mut miss = hybrid
                .get_miss_handler(&key, &meta, &span)
                .await
                .expect("miss");
            for chunk in data.chunks(4000) {
                miss.write_body(Bytes::copy_from_slice(chunk), false)
                    .await
                    .expect("write");
            }
            miss.finish().await.expect("finish");
            println!("finished {k} {gen}");
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_write_back_hybrids_leave_disk_entries_complete_or_absent() {
    let runs: u32 = if std::env::var("TIER_SOAK").is_ok() {
        400
    } else {
        100
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut checked, mut present, mut corrupt) = (0u32, 0u32, 0u32);
    let mut points = tier_conformance::crash::KillPoints::new(
        "crash_child_writes_back_until_killed",
        CHILD_ENV,
        "TIER_HYBRID_CRASH_GEN",
        dir.path(),
        KEYS * 4,
    );
    for run in 0..runs {
        let wait_for = 10 + (run as usize * 11) % 40;
        let then = Duration::from_micros(u64::from(run) * 211 % 2000);
        points.kill(wait_for, then).await;
        let disk = DiskStorage::open(disk_config(dir.path()))
            .await
            .expect("reopen")
            .leak();
        let found = tier_conformance::crash::check_entries(disk, KEYS, body).await;
        checked += KEYS;
        present += found.present;
        corrupt += found.corrupt;
        // Let go of the directory (and its lock) for the next child.
        disk.close().await.expect("close");
    }
    println!("RESULT crash write-back hybrid: {runs} crash points, {checked} entries checked, {present} present on disk, {corrupt} corrupt bodies served");
    assert_eq!(corrupt, 0);
    assert!(
        present > 0,
        "nothing was ever demoted: the test checked nothing"
    );
}
