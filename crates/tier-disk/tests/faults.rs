//! I/O errors at every step, and negative controls (feature
//! `fault-injection`, enabled for this crate's tests only).
//!
//! Every segment creation, record append, sync and segment removal on the
//! write, overwrite, expire, update and purge paths is failed in turn (EIO,
//! ENOSPC, a short write): no corrupted or resurrected entry, the bound
//! kept, and the state after a reopen agrees with what the calls returned.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use pingora_cache::storage::{PurgeOutcome, PurgeTarget, PurgeType, Storage};
use pingora_cache::trace::Span;
use pingora_cache::CacheKey;
use tier_disk::{Controls, DiskConfig, DiskStorage, Durability, FaultKind, FaultPlan};

fn config(dir: &Path, plan: Option<Arc<FaultPlan>>) -> DiskConfig {
    // Small segments, so writes cross segment boundaries (creations) and
    // bodies go in fragments.
    let config = DiskConfig::new(dir, 64 << 20)
        .block_size(4096)
        .segment_bytes(64 << 10)
        .durability(Durability::Full);
    match plan {
        Some(plan) => config.fault_plan(plan),
        None => config,
    }
}

fn body(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

async fn put(
    disk: &'static DiskStorage,
    name: &str,
    data: &[u8],
    marker: &str,
) -> pingora_error::Result<()> {
    let span = Span::inactive().handle();
    let meta = tier_core::testing::meta_with_header("x-marker", marker);
    let mut miss = disk
        .get_miss_handler(&CacheKey::new(name, ""), &meta, &span)
        .await?;
    for chunk in data.chunks(5000) {
        miss.write_body(Bytes::copy_from_slice(chunk), false)
            .await?;
    }
    miss.finish().await.map(|_| ())
}

/// The body and marker stored for `name`, `None` if absent; a read that
/// fails mid-body is a test failure (nothing here corrupts files).
async fn get(disk: &'static DiskStorage, name: &str) -> Option<(Vec<u8>, String)> {
    let span = Span::inactive().handle();
    let (meta, mut hit) = disk
        .lookup(&CacheKey::new(name, ""), &span)
        .await
        .expect("lookup")?;
    let mut out = Vec::new();
    while let Some(chunk) = hit.read_body().await.expect("a stored entry reads cleanly") {
        out.extend_from_slice(&chunk);
    }
    let marker = meta
        .headers()
        .get("x-marker")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Some((out, marker))
}

/// Bytes of segment files in `dir`.
fn segment_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy)]
enum Path_ {
    Write,
    Overwrite,
    Expire,
    Update,
    Purge,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failed_operation_leaves_a_consistent_cache() {
    let root = tempfile::tempdir().expect("tempdir");
    let old = body(1, 12_000);
    let new = body(2, 9_000);
    let mut cases = 0;
    let span = Span::inactive().handle();
    for path in [
        Path_::Write,
        Path_::Overwrite,
        Path_::Expire,
        Path_::Update,
        Path_::Purge,
    ] {
        for kind in [FaultKind::Eio, FaultKind::NoSpace, FaultKind::ShortWrite] {
            for n in 1.. {
                let dir = root.path().join(format!("{path:?}-{kind:?}-{n}"));
                let plan = FaultPlan::new();
                let disk = DiskStorage::open(config(&dir, Some(plan.clone())))
                    .await
                    .expect("open")
                    .leak();
                put(disk, "a", &old, "old").await.expect("setup write");
                plan.fail_at(n, kind);
                let key = CacheKey::new("a", "");
                let compact = key.to_compact();
                let result: Result<bool, String> = match path {
                    Path_::Write => put(disk, "b", &new, "new")
                        .await
                        .map(|_| true)
                        .map_err(|e| e.to_string()),
                    Path_::Overwrite => put(disk, "a", &new, "new")
                        .await
                        .map(|_| true)
                        .map_err(|e| e.to_string()),
                    Path_::Expire => disk
                        .expire(PurgeTarget::Active(&compact), &span)
                        .await
                        .map(|o| o == PurgeOutcome::Expired)
                        .map_err(|e| e.to_string()),
                    Path_::Update => disk
                        .update_meta(
                            &key,
                            &tier_core::testing::meta_with_header("x-marker", "updated"),
                            &span,
                        )
                        .await
                        .map_err(|e| e.to_string()),
                    Path_::Purge => disk
                        .purge(
                            PurgeTarget::Active(&compact),
                            PurgeType::Invalidation,
                            &span,
                        )
                        .await
                        .map(|o| matches!(o, PurgeOutcome::Purged(_)))
                        .map_err(|e| e.to_string()),
                };
                let fired = plan.operations() >= n;
                plan.fail_at(0, kind);
                assert!(
                    segment_bytes(&dir) <= 64 << 20,
                    "{path:?} {kind:?} at op {n}: over the bound"
                );
                // Check the live storage, then what a kill now would leave
                // reopened (the live tier keeps its directory's lock).
                let image = tier_conformance::crash::image_of(&dir).expect("image");
                let reopened = DiskStorage::open(config(image.path(), None))
                    .await
                    .expect("reopen")
                    .leak();
                for storage in [disk, reopened] {
                    let a = get(storage, "a").await;
                    let b = get(storage, "b").await;
                    let ok = result.is_ok();
                    match path {
                        Path_::Write => {
                            assert_eq!(a, Some((old.clone(), "old".into())));
                            assert_eq!(
                                b.is_some(),
                                ok,
                                "{kind:?} at op {n}: the write returned {result:?}"
                            );
                            if let Some(b) = b {
                                assert_eq!(b, (new.clone(), "new".into()));
                            }
                        }
                        Path_::Overwrite => {
                            let want = if ok {
                                (new.clone(), "new".to_string())
                            } else {
                                (old.clone(), "old".to_string())
                            };
                            assert_eq!(
                                a,
                                Some(want),
                                "{kind:?} at op {n}: the overwrite returned {result:?}"
                            );
                        }
                        Path_::Expire | Path_::Update => {
                            let (data, marker) =
                                a.expect("the entry survives a failed meta change");
                            assert_eq!(data, old, "{path:?} {kind:?} at op {n}: body changed");
                            let changed = marker == "updated";
                            if matches!(path, Path_::Update) {
                                assert_eq!(changed, result == Ok(true), "{kind:?} at op {n}: update returned {result:?}, marker {marker}");
                            }
                        }
                        Path_::Purge => {
                            if result == Ok(true) {
                                assert_eq!(a, None, "{kind:?} at op {n}: a purged entry came back");
                            } else {
                                assert_eq!(a, Some((old.clone(), "old".into())));
                            }
                        }
                    }
                }
                cases += 1;
                if !fired {
                    break;
                }
            }
        }
    }
    println!("RESULT faults: {cases} failure points across write, overwrite, expire, update and purge, 0 corrupted or resurrected entries");
    assert!(cases > 30, "only {cases} cases ran");
}

/// A fresh disk tier in its own directory, with a fault plan whose controls
/// are `controls`.
async fn with_controls(
    controls: Controls,
) -> (tempfile::TempDir, Arc<FaultPlan>, &'static DiskStorage) {
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = FaultPlan::new();
    plan.set_controls(controls);
    let disk = DiskStorage::open(config(dir.path(), Some(plan.clone())))
        .await
        .expect("open")
        .leak();
    (dir, plan, disk)
}

/// Flip one byte of `needle`'s first occurrence in the segment files of
/// `dir` (a body byte, for the corruption controls).
fn flip_in_segments(dir: &Path, needle: &[u8]) -> bool {
    for entry in std::fs::read_dir(dir).expect("dir").flatten() {
        let path = entry.path();
        let mut bytes = std::fs::read(&path).expect("read segment");
        if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
            bytes[at + needle.len() / 2] ^= 0xff;
            std::fs::write(&path, &bytes).expect("corrupt");
            return true;
        }
    }
    false
}

/// Negative controls: with a safety mechanism switched off, the check that
/// guards it catches the difference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_controls_show_the_checks_have_teeth() {
    // Without block checksums, a flipped body byte is served: the
    // corruption test would fail.
    let (dir, _plan, disk) = with_controls(Controls {
        skip_checksums: true,
        ..Controls::default()
    })
    .await;
    let data = body(3, 3_000);
    put(disk, "c", &data, "m").await.expect("write");
    assert!(flip_in_segments(dir.path(), &data[1000..1100]));
    let served = get(disk, "c").await.map(|(b, _)| b);
    assert!(
        served.is_some_and(|b| b != data),
        "control: with checksums off, the corrupted byte was not served"
    );
    println!(
        "RESULT control skip_checksums: corrupted bytes served (the corruption test would fail)"
    );

    // With checksums on, the same flip is a miss (the entry is removed).
    let (dir, _plan, disk) = with_controls(Controls::default()).await;
    put(disk, "c", &data, "m").await.expect("write");
    assert!(flip_in_segments(dir.path(), &data[1000..1100]));
    let span = Span::inactive().handle();
    let found = disk
        .lookup(&CacheKey::new("c", ""), &span)
        .await
        .expect("lookup");
    assert!(found.is_none(), "a corrupted small entry is a miss");
    assert_eq!(disk.corrupt_entries(), 1);
}
