//! DiskStorage's own promises: bad bytes anywhere in a segment, file modes,
//! symlinks, other format versions, a version 1 directory, the bound on
//! allocated bytes (also across a smaller reopen), reinsertion of hit
//! entries, purges that stay purged, and a full disk.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use pingora_cache::storage::{PurgeOutcome, PurgeTarget, PurgeType, Storage};
use pingora_cache::trace::Span;
use pingora_cache::CacheKey;
use tier_core::Tier;
use tier_disk::{DiskConfig, DiskStorage, Durability};

const BLOCK: usize = 4096;

fn config(dir: &Path) -> DiskConfig {
    DiskConfig::new(dir, 64 << 20)
        .block_size(BLOCK)
        .durability(Durability::Data)
}

async fn open(config: DiskConfig) -> &'static DiskStorage {
    DiskStorage::open(config).await.expect("open").leak()
}

fn body_of(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

async fn put(disk: &'static DiskStorage, name: &str, body: &[u8]) {
    let span = Span::inactive().handle();
    let meta = tier_core::testing::meta_with_header("x-name", name);
    let mut miss = disk
        .get_miss_handler(&CacheKey::new(name, ""), &meta, &span)
        .await
        .expect("miss");
    for chunk in body.chunks(3000) {
        miss.write_body(Bytes::copy_from_slice(chunk), false)
            .await
            .expect("write");
    }
    miss.finish().await.expect("finish");
}

/// The whole body, `Ok(None)` for a miss, `Err` for a failure mid-body.
async fn get(disk: &'static DiskStorage, name: &str) -> Result<Option<Vec<u8>>, String> {
    let span = Span::inactive().handle();
    let Some((_, mut hit)) = disk
        .lookup(&CacheKey::new(name, ""), &span)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    tier_core::testing::read_body(&mut hit)
        .await
        .map(Some)
        .map_err(|e| e.to_string())
}

/// The segment files in `dir`.
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("seg-") && n.ends_with(".v2"))
        })
        .collect();
    out.sort();
    out
}

/// Bytes allocated on disk under `dir` (what `du` counts).
fn allocated(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let meta = e.metadata().expect("meta");
            if meta.is_dir() {
                stack.push(e.path());
            }
            total += meta.blocks() * 512;
        }
    }
    total
}

/// Flip a byte at many offsets of a segment holding one entry, covering
/// every region (segment header, record header, key, meta, each body block,
/// each block checksum, the summary and the footer), and read the entry in
/// place and after a reopen: a miss or a failure mid-body, never a wrong
/// byte. Also a segment cut short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_anywhere_is_a_miss_or_an_error_never_wrong_bytes() {
    let body = body_of(1, 3 * BLOCK + 100);
    let root = tempfile::tempdir().expect("tempdir");
    // Where the record ends, from a clean copy.
    let clean = root.path().join("clean");
    let disk = open(config(&clean)).await;
    put(disk, "victim", &body).await;
    disk.close().await.expect("close");
    let seg = segment_files(&clean).pop().expect("a segment");
    let pristine = std::fs::read(&seg).expect("read");
    let size = pristine.len();
    let mut offsets: Vec<usize> = (0..64).step_by(7).collect();
    offsets.extend((64..64 + 56).step_by(3));
    offsets.extend((120..400).step_by(11));
    offsets.extend((400..64 + 3 * (BLOCK + 4) + 200).step_by(509));
    // Each block's checksum.
    for b in 1..=4usize {
        offsets.push(64 + 56 + 200 + b * (BLOCK + 4) - 2);
    }
    // The summary right after the record, and the footer.
    let footer = size - 64;
    let summary_at =
        u64::from_le_bytes(pristine[footer + 8..footer + 16].try_into().expect("8")) as usize;
    offsets.extend(summary_at..summary_at + 32);
    offsets.extend((footer..size).step_by(5));
    let mut wrong = 0;
    let mut checked = 0;
    let mut missed = 0;
    for (n, &offset) in offsets.iter().enumerate() {
        let dir = root.path().join(format!("c{n}"));
        std::fs::create_dir(&dir).expect("mkdir");
        let mut bytes = pristine.clone();
        bytes[offset] ^= 0x5a;
        std::fs::write(dir.join(seg.file_name().expect("name")), &bytes).expect("corrupt copy");
        let disk = open(config(&dir)).await;
        match get(disk, "victim").await {
            Ok(Some(got)) if got != body => wrong += 1,
            // A flip in the summary or footer falls back to a scan.
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => missed += 1,
        }
        checked += 1;
        disk.close().await.expect("close");
    }
    assert_eq!(wrong, 0, "wrong bytes served from a corrupted segment");
    assert!(
        missed * 2 > checked,
        "only {missed} of {checked} corruptions were seen"
    );
    // A segment cut short anywhere: a miss, never wrong bytes.
    for cut in [100, 64 + 56 + 10, 64 + 1000, 64 + 3 * BLOCK] {
        let dir = root.path().join(format!("cut{cut}"));
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::write(dir.join(seg.file_name().expect("name")), &pristine[..cut]).expect("cut");
        let disk = open(config(&dir)).await;
        assert!(
            get(disk, "victim").await.map_or(true, |r| r.is_none()),
            "served a segment cut at {cut}"
        );
    }
    // Corrupted in place, while open: the entry is removed at once.
    let dir = root.path().join("live");
    let disk = open(config(&dir)).await;
    put(disk, "victim", &body).await;
    let seg = segment_files(&dir).pop().expect("a segment");
    let mut bytes = std::fs::read(&seg).expect("read");
    let at = bytes
        .windows(64)
        .position(|w| w == &body[2000..2064])
        .expect("body on disk");
    bytes[at] ^= 1;
    std::fs::write(&seg, &bytes).expect("corrupt");
    assert!(get(disk, "victim").await.map_or(true, |r| r.is_none()));
    assert_eq!(disk.corrupt_entries(), 1);
    assert_eq!(
        get(disk, "victim").await,
        Ok(None),
        "the corrupt entry is gone"
    );
    put(disk, "victim", &body).await;
    assert_eq!(get(disk, "victim").await, Ok(Some(body)));
    println!("RESULT corruption: {checked} single-byte corruptions ({missed} a miss or an error, the rest in the summary or footer and recovered by a scan) and 4 cuts, 0 wrong bytes served");
}

/// A summary whose lines disagree with its records (a line pointing at
/// another record, checksums made to match): a miss, never another entry's
/// bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_summary_that_disagrees_with_its_records_is_a_miss() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = open(config(dir.path())).await;
    put(disk, "one", &body_of(1, 500)).await;
    put(disk, "two", &body_of(2, 500)).await;
    disk.close().await.expect("close");
    let seg = segment_files(dir.path()).pop().expect("segment");
    let mut bytes = std::fs::read(&seg).expect("read");
    let footer = bytes.len() - 64;
    let summary =
        u64::from_le_bytes(bytes[footer + 8..footer + 16].try_into().expect("8")) as usize;
    let count = u32::from_le_bytes(bytes[footer + 16..footer + 20].try_into().expect("4")) as usize;
    assert_eq!(count, 2);
    // Swap the two lines' offsets and lengths (16-byte lines: hash, offset,
    // length and kind).
    let (a, b) = (summary + 8, summary + 16 + 8);
    let first: [u8; 8] = bytes[a..a + 8].try_into().expect("8");
    let second: [u8; 8] = bytes[b..b + 8].try_into().expect("8");
    bytes[a..a + 8].copy_from_slice(&second);
    bytes[b..b + 8].copy_from_slice(&first);
    let crc = xxhash_rust::xxh3::xxh3_64(&bytes[summary..summary + 32]) as u32;
    bytes[footer + 20..footer + 24].copy_from_slice(&crc.to_le_bytes());
    let fcrc = xxhash_rust::xxh3::xxh3_64(&bytes[footer..footer + 60]) as u32;
    bytes[footer + 60..footer + 64].copy_from_slice(&fcrc.to_le_bytes());
    std::fs::write(&seg, &bytes).expect("write");
    let reopened = open(config(dir.path())).await;
    assert_eq!(get(reopened, "one").await, Ok(None));
    assert_eq!(get(reopened, "two").await, Ok(None));
}

#[tokio::test]
async fn files_are_0600_and_the_directory_0700() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("cache");
    // An existing directory that is too open is tightened.
    std::fs::create_dir(&root).expect("mkdir");
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let disk = open(config(&root)).await;
    put(disk, "modes", b"x").await;
    let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
    let segs = segment_files(&root);
    assert!(!segs.is_empty());
    for seg in segs {
        assert_eq!(mode(&seg), 0o600);
    }
    assert_eq!(mode(&root), 0o700);
}

/// Open never follows a symlink, skips what is not a segment, removes a
/// segment of another version, clears a version 1 directory with its fan-out
/// directories and temp files, and does not hang on a FIFO.
#[tokio::test]
async fn open_skips_symlinks_and_other_versions_and_clears_version_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let disk = open(config(&cache)).await;
    put(disk, "real", b"real body").await;
    disk.close().await.expect("close");
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).expect("mkdir");
    std::fs::write(outside.join("keep"), b"keep").expect("write");
    // A symlink named like a segment, one named like a v1 fan-out directory.
    std::os::unix::fs::symlink(outside.join("keep"), cache.join("seg-00000000000000aa.v2"))
        .expect("symlink");
    std::os::unix::fs::symlink(&outside, cache.join("ab")).expect("symlink");
    // A segment from a future format version.
    let mut future = std::fs::read(segment_files(&cache)[0].clone()).expect("read");
    future[8..12].copy_from_slice(&3u32.to_le_bytes());
    std::fs::write(cache.join("seg-00000000000000bb.v2"), &future).expect("write");
    // A FIFO named like a segment.
    let _ = std::process::Command::new("mkfifo")
        .arg(cache.join("seg-00000000000000cc.v2"))
        .status();
    // A version 1 layout: fan-out directories, temp files, the order file.
    std::fs::create_dir_all(cache.join("0f").join("3c")).expect("mkdir");
    std::fs::write(
        cache.join("0f").join("3c").join("0".repeat(32)),
        b"v1 entry",
    )
    .expect("write");
    std::fs::create_dir(cache.join("tmp")).expect("mkdir");
    std::fs::write(cache.join("tmp").join("9.tmp"), b"half").expect("write");
    std::fs::write(cache.join("order.v1"), b"order").expect("write");
    // Something of the user's.
    std::fs::write(cache.join("README"), b"mine").expect("write");

    let reopened = open(config(&cache)).await;
    assert_eq!(get(reopened, "real").await, Ok(Some(b"real body".to_vec())));
    assert_eq!(reopened.stats().entries, 1);
    assert!(reopened.cleared_v1_at_open());
    assert!(
        !cache.join("0f").exists()
            && !cache.join("tmp").exists()
            && !cache.join("order.v1").exists()
    );
    assert!(
        !cache.join("seg-00000000000000bb.v2").exists(),
        "a future-version segment was kept"
    );
    assert!(
        cache.join("README").exists(),
        "open removed a file that is not its own"
    );
    assert_eq!(
        std::fs::read(outside.join("keep")).expect("read"),
        b"keep",
        "open touched a symlink's target"
    );
    assert!(
        reopened.skipped_at_open() >= 3,
        "skipped {}",
        reopened.skipped_at_open()
    );
}

#[tokio::test]
async fn open_of_an_unusable_directory_names_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, b"x").expect("write");
    let err = DiskStorage::open(config(&not_a_dir.join("cache")))
        .await
        .expect_err("a path under a file cannot be a cache");
    assert!(
        err.to_string().contains(&not_a_dir.display().to_string()),
        "{err}"
    );
    let err = DiskStorage::open(config(&not_a_dir))
        .await
        .expect_err("a file is not a cache directory");
    assert!(err.to_string().contains("is a file"), "{err}");
}

/// One open tier per directory: a second open fails at once with
/// `DIR_IN_USE` naming the path, and touches nothing; once the first is
/// closed (or dropped) the directory opens again with its entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_in_use_is_refused_until_the_tier_closes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = open(config(dir.path())).await;
    put(first, "kept", b"kept body").await;
    let err = DiskStorage::open(config(dir.path()))
        .await
        .expect_err("a second tier on one directory");
    assert_eq!(err.etype(), &tier_disk::DIR_IN_USE, "{err}");
    assert!(
        err.to_string().contains(&dir.path().display().to_string()),
        "{err}"
    );
    // The refused open changed nothing: the first still serves.
    assert_eq!(get(first, "kept").await, Ok(Some(b"kept body".to_vec())));
    first.close().await.expect("close");
    let second = DiskStorage::open(config(dir.path())).await.expect("reopen");
    assert_eq!(second.skipped_at_open(), 0, "the lock file is not a stray");
    assert_eq!(second.scanned_at_open(), 0, "close sealed the last segment");
    let second = second.leak();
    assert_eq!(get(second, "kept").await, Ok(Some(b"kept body".to_vec())));
    // Dropping a tier lets go of the lock too.
    let dir2 = tempfile::tempdir().expect("tempdir");
    drop(DiskStorage::open(config(dir2.path())).await.expect("open"));
    drop(
        DiskStorage::open(config(dir2.path()))
            .await
            .expect("open after a drop"),
    );
}

/// Written to three times its capacity, the tier never allocates more than
/// its capacity on disk (as `du` counts), also after reopening smaller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bound_holds_on_allocated_bytes_also_after_reopening_smaller() {
    let dir = tempfile::tempdir().expect("tempdir");
    let capacity = 2 << 20;
    let disk = open(
        DiskConfig::new(dir.path(), capacity)
            .block_size(BLOCK)
            .segment_bytes(128 << 10),
    )
    .await;
    let mut written = 0;
    let mut i = 0u32;
    while written < 3 * capacity {
        let len = 100 + (i as usize * 7919) % 9_000;
        put(disk, &format!("b/{i}"), &body_of(i as u8, len)).await;
        written += len as u64;
        i += 1;
        assert!(disk.used_bytes() <= capacity);
    }
    let stats = disk.stats();
    assert!(stats.evictions > 100, "{stats:?}");
    assert!(
        allocated(dir.path()) <= capacity,
        "{} allocated",
        allocated(dir.path())
    );
    // The newest entries are there, the oldest went.
    assert!(get(disk, &format!("b/{}", i - 1))
        .await
        .expect("read")
        .is_some());
    assert_eq!(get(disk, "b/0").await, Ok(None));
    disk.close().await.expect("close");
    let smaller = capacity / 2;
    let reopened = open(
        DiskConfig::new(dir.path(), smaller)
            .block_size(BLOCK)
            .segment_bytes(128 << 10),
    )
    .await;
    assert!(
        allocated(dir.path()) <= smaller,
        "{} allocated after reopening smaller",
        allocated(dir.path())
    );
    assert!(reopened.stats().entries > 0);
    assert!(get(reopened, &format!("b/{}", i - 1))
        .await
        .expect("read")
        .is_some());
    println!(
        "RESULT bound: {written} bytes written into {capacity}, {} allocated; reopened at {smaller}: {} allocated",
        capacity,
        allocated(dir.path())
    );
}

/// A cache smaller than 512 KiB (64 KiB segments, the smallest) still takes
/// small and large writes, and keeps its bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_cache_takes_writes_and_keeps_its_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = open(DiskConfig::new(dir.path(), 200_000)).await;
    for i in 0..40u8 {
        let len = if i % 4 == 0 { 40_000 } else { 900 };
        put(disk, &format!("t/{i}"), &body_of(i, len)).await;
        assert!(allocated(dir.path()) <= 200_000);
    }
    assert_eq!(get(disk, "t/39").await, Ok(Some(body_of(39, 900))));
    assert_eq!(get(disk, "t/36").await, Ok(Some(body_of(36, 40_000))));
}

/// Entries hit since they were written survive the eviction of their
/// segment (copied forward); entries never hit do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_hit_since_written_are_copied_forward_on_eviction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = open(
        DiskConfig::new(dir.path(), 1 << 20)
            .block_size(BLOCK)
            .segment_bytes(128 << 10),
    )
    .await;
    put(disk, "hot", &body_of(9, 2_000)).await;
    put(disk, "cold", &body_of(8, 2_000)).await;
    for i in 0..400u32 {
        // Keep "hot" hot.
        if i % 20 == 0 {
            assert!(
                get(disk, "hot").await.expect("read").is_some(),
                "hot evicted at {i}"
            );
        }
        put(disk, &format!("fill/{i}"), &body_of(i as u8, 8_000)).await;
    }
    assert_eq!(get(disk, "hot").await, Ok(Some(body_of(9, 2_000))));
    assert_eq!(get(disk, "cold").await, Ok(None));
    assert!(disk.disk_stats().reinserted > 0);
}

#[tokio::test]
async fn a_purge_stays_purged_after_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = open(config(dir.path()).durability(Durability::Full)).await;
    put(disk, "gone", b"bye").await;
    put(disk, "kept", b"hi").await;
    let span = Span::inactive().handle();
    let key = CacheKey::new("gone", "").to_compact();
    let outcome = disk
        .purge(PurgeTarget::Active(&key), PurgeType::Invalidation, &span)
        .await
        .expect("purge");
    assert!(matches!(outcome, PurgeOutcome::Purged(Some(_))));
    // What a kill now would leave, reopened (no close, so no seal).
    let image = tier_conformance::crash::image_of(dir.path()).expect("image");
    let reopened = open(config(image.path())).await;
    assert_eq!(
        reopened.scanned_at_open(),
        1,
        "no close: the last segment is scanned"
    );
    assert_eq!(get(reopened, "gone").await, Ok(None));
    assert_eq!(get(reopened, "kept").await, Ok(Some(b"hi".to_vec())));
}

/// A full disk fails the write with a clear error, and every stored entry
/// stays readable. Runs on a tiny tmpfs when this
/// process may mount one (root); says so and checks the rest otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_the_write_and_keeps_every_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mount = dir.path().join("small");
    std::fs::create_dir(&mount).expect("mkdir");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mount)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        println!("full-disk test: no tmpfs mount possible here (not root?); ran on the plain file system, where the disk does not fill");
    } else {
        println!("full-disk test: ran on a 1 MiB tmpfs");
    }
    let disk = open(
        DiskConfig::new(&mount, 64 << 20)
            .block_size(BLOCK)
            .segment_bytes(128 << 10),
    )
    .await;
    put(disk, "before", &body_of(3, 100_000)).await;
    let span = Span::inactive().handle();
    let meta = tier_core::testing::meta_with_header("x", "1");
    let mut miss = disk
        .get_miss_handler(&CacheKey::new("huge", ""), &meta, &span)
        .await
        .expect("miss");
    let mut failed = None;
    for _ in 0..400 {
        if let Err(e) = miss.write_body(Bytes::from(vec![1u8; 8192]), false).await {
            failed = Some(e);
            break;
        }
    }
    if mounted {
        let err = failed.expect("a 3 MiB body cannot fit a 1 MiB tmpfs");
        assert!(
            err.to_string().to_lowercase().contains("space") || err.to_string().contains("write"),
            "{err}"
        );
        drop(miss);
        assert_eq!(get(disk, "before").await, Ok(Some(body_of(3, 100_000))));
        put(disk, "after", b"room again").await;
        assert_eq!(get(disk, "after").await, Ok(Some(b"room again".to_vec())));
        let _ = std::process::Command::new("umount").arg(&mount).status();
    } else {
        drop(miss);
        assert_eq!(get(disk, "before").await, Ok(Some(body_of(3, 100_000))));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_write_is_seen_only_once_published() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = open(config(dir.path())).await;
    assert!(disk.capabilities().private_writes);
    let span = Span::inactive().handle();
    let meta = tier_core::testing::meta_with_header("x-name", "private");
    let body = body_of(3, 10_000);
    let mut miss = disk
        .get_private_miss_handler(&CacheKey::new("private", ""), &meta, &span)
        .await
        .expect("miss");
    miss.write_body(Bytes::copy_from_slice(&body[..6000]), false)
        .await
        .expect("write");
    assert_eq!(
        get(disk, "private").await,
        Ok(None),
        "a private write was followed"
    );
    miss.write_body(Bytes::copy_from_slice(&body[6000..]), true)
        .await
        .expect("write");
    miss.finish().await.expect("finish");
    assert_eq!(get(disk, "private").await, Ok(Some(body)));
}
