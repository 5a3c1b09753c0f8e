//! Crash safety: a child process writes, expires and rewrites entries with
//! `Durability::Full` and is killed with SIGKILL at a random moment; the parent
//! reopens the cache and checks every entry: complete and byte-for-byte
//! correct, or absent, and every write the child saw finish is present.
//!
//! The child is this same test binary, run with `TIER_DISK_CRASH_CHILD` set.

use std::time::Duration;

use bytes::Bytes;
use pingora_cache::storage::{PurgeTarget, Storage};
use pingora_cache::trace::Span;
use pingora_cache::CacheKey;
use tier_disk::{DiskConfig, DiskStorage, Durability};

const CHILD_ENV: &str = "TIER_DISK_CRASH_CHILD";
const KEYS: u32 = 12;

fn config(dir: &std::path::Path, durability: Durability) -> DiskConfig {
    // Small segments: kills land in rotations, seals and evictions too.
    DiskConfig::new(dir, 4 << 20)
        .block_size(4096)
        .segment_bytes(256 << 10)
        .durability(durability)
}

/// Entry `key`'s body for generation `gen`: its bytes name both, so a mixed
/// or stale body is detectable.
fn body(key: u32, gen: u32) -> Vec<u8> {
    tier_conformance::crash::generation_body(key, gen, 1000, 40_000)
}

/// The child: write generations of each key forever, printing each one whose
/// finish returned.
#[test]
fn crash_child_writes_until_killed() {
    child(Durability::Full);
}

/// The same child without syncs: a killed process keeps the page cache, so
/// every finished write must survive it all the same.
#[test]
fn crash_child_writes_without_syncs_until_killed() {
    child(Durability::None);
}

fn child(durability: Durability) {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        // Run directly by the test harness: nothing to do; the parent test
        // below runs this binary again as the child.
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let disk = DiskStorage::open(config(std::path::Path::new(&dir), durability))
            .await
            .expect("open")
            .leak();
        let span = Span::inactive().handle();
        let start: u32 = std::env::var("TIER_DISK_CRASH_GEN")
            .ok()
            .and_then(|g| g.parse().ok())
            .unwrap_or(0);
        for gen in start.. {
            let key_n = gen % KEYS;
            let key = CacheKey::new(format!("crash/{key_n}"), "");
            if gen % 5 == 4 {
                // Now and then, expire an entry: a meta rewrite.
                let _ = disk
                    .expire(PurgeTarget::Active(&key.to_compact()), &span)
                    .await;
                continue;
            }
            let meta = tier_core::testing::meta_with_header("x-gen", &gen.to_string());
            let data = body(key_n, gen);
            let mut miss = disk
                .get_miss_handler(&key, &meta, &span)
                .await
                .expect("miss");
            for chunk in data.chunks(3000) {
                miss.write_body(Bytes::copy_from_slice(chunk), false)
                    .await
                    .expect("write");
            }
            miss.finish().await.expect("finish");
            println!("finished {key_n} {gen}");
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_writers_leave_every_entry_complete_or_absent() {
    let runs = if std::env::var("TIER_SOAK").is_ok() {
        400
    } else {
        200
    };
    kill_points("crash_child_writes_until_killed", Durability::Full, runs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_writers_without_syncs_lose_nothing_they_finished() {
    let runs = if std::env::var("TIER_SOAK").is_ok() {
        400
    } else {
        60
    };
    kill_points(
        "crash_child_writes_without_syncs_until_killed",
        Durability::None,
        runs,
    )
    .await;
}

async fn kill_points(child_test: &'static str, durability: Durability, runs: u32) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut checked, mut present, mut corrupt_served) = (0u32, 0u32, 0u32);
    let mut points = tier_conformance::crash::KillPoints::new(
        child_test,
        CHILD_ENV,
        "TIER_DISK_CRASH_GEN",
        dir.path(),
        KEYS * 5,
    );
    for run in 0..runs {
        // Let the child finish a varying number of writes, then kill it
        // wherever it is.
        let wait_for = 3 + (run as usize * 7) % 23;
        let then = Duration::from_micros(u64::from(run) * 397 % 3000);
        let lines = points.kill(wait_for, then).await;

        let disk = DiskStorage::open(config(dir.path(), durability))
            .await
            .expect("reopen")
            .leak();
        let found = tier_conformance::crash::check_entries(disk, KEYS, body).await;
        checked += KEYS;
        present += found.present;
        corrupt_served += found.corrupt;
        disk.close().await.expect("close");
        // Every write whose finish returned is there, at that generation or
        // a later one (a kill keeps the page cache, whatever the durability).
        for (key, gen) in &lines {
            let held = found.generations.get(key);
            assert!(
                held.is_some_and(|held| held >= gen),
                "run {run}: crash/{key} finished gen {gen} under {durability:?}, found {held:?}"
            );
        }
    }
    println!("RESULT crash disk ({durability:?}): {runs} crash points, {checked} entries checked, {present} present, {corrupt_served} corrupt bodies served");
    assert_eq!(corrupt_served, 0);
    assert!(
        present > 0,
        "no entry ever survived: the test checked nothing"
    );
}
