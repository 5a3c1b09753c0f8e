//! DiskStorage's own promises: bad bytes on disk, file modes, symlinks, other
//! format versions, crash leftovers, the bound and eviction order across a
//! reopen, purges that stay purged, and a full disk.

use std::os::unix::fs::PermissionsExt;
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

fn entry_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(tier_core::key::entry_relative_path(
        &CacheKey::new(name, "").to_compact(),
    ))
}

fn entry_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let t = e.file_type().expect("type");
            if t.is_dir() {
                if e.file_name() != "tmp" {
                    stack.push(e.path());
                }
            } else if e.file_name().len() == 32 {
                out.push(e.path());
            }
        }
    }
    out
}

/// Flip bytes or truncate at many offsets of an entry file, covering every
/// region: the entry is a miss or fails mid-body, never serves a wrong byte,
/// and its file is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_anywhere_is_a_miss_or_an_error_never_wrong_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = open(config(dir.path())).await;
    let body = body_of(1, 3 * BLOCK + 100);
    put(disk, "victim", &body).await;
    let path = entry_path(dir.path(), "victim");
    let pristine = std::fs::read(&path).expect("read");
    let len = pristine.len();
    // Magic, version, lengths, CRC, key, meta, each body block, each block
    // checksum, and the last byte.
    let mut offsets: Vec<usize> = vec![0, 7, 8, 12, 16, 24, 32, 36, 40, 44, 48, 64, 70, 100, 200];
    offsets.extend((len - (3 * BLOCK + 100 + 16))..len);
    offsets.retain(|&o| o < len);
    offsets.sort_unstable();
    offsets.dedup();
    let mut corrupted = 0;
    for &offset in offsets.iter().step_by(97).chain([len - 1].iter()) {
        put(disk, "victim", &body).await;
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[offset] ^= 0x5a;
        std::fs::write(&path, &bytes).expect("corrupt");
        match get(disk, "victim").await {
            Ok(Some(got)) => panic!(
                "served {} bytes from a file corrupted at {offset}",
                got.len()
            ),
            Ok(None) | Err(_) => corrupted += 1,
        }
    }
    // Truncations and trailing garbage are corrupt too.
    for cut in [10, 64, len / 2, len - 1] {
        put(disk, "victim", &body).await;
        let bytes = std::fs::read(&path).expect("read");
        std::fs::write(&path, &bytes[..cut]).expect("truncate");
        assert!(
            get(disk, "victim").await.map_or(true, |r| r.is_none()),
            "served a file cut at {cut}"
        );
    }
    put(disk, "victim", &body).await;
    let mut bytes = std::fs::read(&path).expect("read");
    bytes.extend_from_slice(b"trailing");
    std::fs::write(&path, &bytes).expect("append");
    assert!(get(disk, "victim").await.map_or(true, |r| r.is_none()));
    assert!(corrupted > 0);
    assert!(disk.corrupt_entries() > 0);
    // The corrupt file is gone by the time the failed read returns, and a
    // rewrite works again.
    assert!(!path.exists(), "a corrupt file was left in place");
    put(disk, "victim", &body).await;
    assert_eq!(get(disk, "victim").await, Ok(Some(body)));
}

#[tokio::test]
async fn files_are_0600_and_directories_0700() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("cache");
    let disk = open(config(&root)).await;
    put(disk, "modes", b"x").await;
    let file = entry_path(&root, "modes");
    let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&root), 0o700);
    assert_eq!(mode(file.parent().expect("parent")), 0o700);
    assert_eq!(mode(&root.join("tmp")), 0o700);
}

#[tokio::test]
async fn open_skips_symlinks_and_other_versions_and_removes_crash_leftovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = open(config(dir.path())).await;
    put(disk, "real", b"real body").await;
    put(disk, "future", b"future body").await;
    // A file from a future format version is skipped, not trusted.
    let future = entry_path(dir.path(), "future");
    let mut bytes = std::fs::read(&future).expect("read");
    bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
    std::fs::write(&future, &bytes).expect("write");
    // A symlink in the fan-out is never followed.
    let real = entry_path(dir.path(), "real");
    let outside = dir.path().join("outside");
    std::fs::write(&outside, std::fs::read(&real).expect("read")).expect("write");
    let link = real.parent().expect("parent").join("0".repeat(32));
    std::os::unix::fs::symlink(&outside, &link).expect("symlink");
    // A temp file left by a crash is removed.
    let leftover = dir.path().join("tmp").join("999.tmp");
    std::fs::write(&leftover, b"half a write").expect("write");

    let reopened = open(config(dir.path())).await;
    assert_eq!(get(reopened, "real").await, Ok(Some(b"real body".to_vec())));
    assert_eq!(get(reopened, "future").await, Ok(None));
    assert_eq!(reopened.stats().entries, 1);
    assert!(
        reopened.skipped_at_open() >= 2,
        "skipped {}",
        reopened.skipped_at_open()
    );
    assert!(!leftover.exists(), "a crash leftover survived open");
    assert!(outside.exists(), "open touched a symlink's target");
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_the_bound_and_evicts_the_coldest_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = open(config(dir.path())).await;
    for i in 0..20 {
        put(disk, &format!("e/{i}"), &body_of(i, 10_000)).await;
    }
    // e/0 .. e/4 are read after everything was written: they are the hottest.
    for i in 0..5 {
        assert!(get(disk, &format!("e/{i}")).await.expect("read").is_some());
    }
    disk.save_order().await.expect("save order");
    let per_entry = disk.used_bytes() / 20;
    // Reopen with room for 8 entries: the 5 hot ones must stay.
    let reopened =
        open(DiskConfig::new(dir.path(), per_entry * 8 + per_entry / 2).block_size(BLOCK)).await;
    assert!(reopened.used_bytes() <= per_entry * 8 + per_entry / 2);
    assert_eq!(reopened.stats().entries, 8);
    for i in 0..5 {
        assert!(
            get(reopened, &format!("e/{i}"))
                .await
                .expect("read")
                .is_some(),
            "hot e/{i} evicted"
        );
    }
    assert_eq!(
        entry_files(dir.path()).len(),
        8,
        "evicted files left on disk"
    );
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
    let reopened = open(config(dir.path())).await;
    assert_eq!(get(reopened, "gone").await, Ok(None));
    assert_eq!(get(reopened, "kept").await, Ok(Some(b"hi".to_vec())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bound_holds_under_many_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = open(DiskConfig::new(dir.path(), 200_000).block_size(BLOCK)).await;
    for i in 0..100u8 {
        put(disk, &format!("b/{i}"), &body_of(i, 9_000)).await;
        assert!(disk.used_bytes() <= 200_000);
    }
    let stats = disk.stats();
    assert!(stats.evictions > 50, "{stats:?}");
    let on_disk: u64 = entry_files(dir.path())
        .iter()
        .map(|p| std::fs::metadata(p).expect("meta").len())
        .sum();
    assert_eq!(
        on_disk,
        disk.used_bytes(),
        "the ledger and the files disagree"
    );
}

/// A full disk fails the write with a clear error and leaves no temp file,
/// and every stored entry stays readable. Runs on a tiny tmpfs when this
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
    let disk = open(DiskConfig::new(&mount, 64 << 20).block_size(BLOCK)).await;
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
        let leftovers = std::fs::read_dir(mount.join("tmp")).expect("tmp").count();
        assert_eq!(leftovers, 0, "a failed write left its temp file");
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
