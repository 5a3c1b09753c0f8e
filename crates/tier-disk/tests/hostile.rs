//! Hostile keys and sizes: keys with `/`, `..`, NUL and 64 KiB of bytes, and
//! variance keys one byte apart, are distinct entries whose files stay inside
//! the cache directory; a 0-byte body and one exactly at the size limit work,
//! one byte over is refused.

use std::path::Path;

use bytes::Bytes;
use pingora_cache::key::hash_key;
use pingora_cache::storage::Storage;
use pingora_cache::trace::Span;
use pingora_cache::CacheKey;
use tier_disk::{DiskConfig, DiskStorage};

const LIMIT: u64 = 100_000;

async fn write(
    disk: &'static DiskStorage,
    key: &CacheKey,
    body: &[u8],
) -> pingora_error::Result<()> {
    let span = Span::inactive().handle();
    let meta = tier_core::testing::meta_with_header("x", "1");
    let mut miss = disk.get_miss_handler(key, &meta, &span).await?;
    miss.write_body(Bytes::copy_from_slice(body), true).await?;
    miss.finish().await.map(|_| ())
}

async fn read(disk: &'static DiskStorage, key: &CacheKey) -> Option<Vec<u8>> {
    let span = Span::inactive().handle();
    let (_, mut hit) = disk.lookup(key, &span).await.ok()??;
    let mut out = Vec::new();
    while let Some(chunk) = hit.read_body().await.ok()? {
        out.extend_from_slice(&chunk);
    }
    Some(out)
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_keys_are_distinct_and_stay_inside_the_directory() {
    let outer = tempfile::tempdir().expect("tempdir");
    let dir = outer.path().join("cache");
    let disk = DiskStorage::open(DiskConfig::new(&dir, 64 << 20).max_object_bytes(LIMIT))
        .await
        .expect("open")
        .leak();
    let mut keys: Vec<CacheKey> = [
        b"../../etc/passwd".to_vec(),
        b"/absolute/path".to_vec(),
        b"a/../../b".to_vec(),
        b"nul\0byte".to_vec(),
        b"nul\0bytf".to_vec(),
        b"..".to_vec(),
        b"".to_vec(),
        vec![b'x'; 64 << 10],
        vec![0xff; 300],
    ]
    .into_iter()
    .map(|primary| CacheKey::new(primary, ""))
    .collect();
    // Variance keys one byte apart.
    for variant in [b"gzip".as_slice(), b"gzjp".as_slice()] {
        let mut key = CacheKey::new("same/primary", "");
        key.set_variance_key(hash_key(variant));
        keys.push(key);
    }
    // A user tag with path characters.
    keys.push(CacheKey::new("tagged", "../tenant/\0"));
    for (i, key) in keys.iter().enumerate() {
        write(disk, key, format!("body {i}").as_bytes())
            .await
            .expect("write");
    }
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(
            read(disk, key).await,
            Some(format!("body {i}").into_bytes()),
            "key {i} collided or was lost"
        );
    }
    let files = files_under(outer.path());
    assert_eq!(files.len(), keys.len(), "{files:?}");
    for file in files {
        assert!(
            file.starts_with(&dir),
            "{} escaped the cache directory",
            file.display()
        );
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        assert!(
            name.len() == 32 && name.bytes().all(|b| b.is_ascii_hexdigit()),
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sizes_at_the_edges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = DiskStorage::open(DiskConfig::new(dir.path(), 64 << 20).max_object_bytes(LIMIT))
        .await
        .expect("open")
        .leak();
    let empty = CacheKey::new("empty", "");
    write(disk, &empty, b"").await.expect("a 0-byte body");
    assert_eq!(read(disk, &empty).await, Some(Vec::new()));
    let exact = CacheKey::new("exact", "");
    let body = vec![3u8; LIMIT as usize];
    write(disk, &exact, &body)
        .await
        .expect("a body at the limit");
    assert_eq!(read(disk, &exact).await, Some(body));
    let over = CacheKey::new("over", "");
    let err = write(disk, &over, &vec![3u8; LIMIT as usize + 1])
        .await
        .expect_err("one byte over");
    assert_eq!(err.etype(), &tier_core::error::OBJECT_TOO_LARGE);
    assert_eq!(read(disk, &over).await, None);
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp"))
            .expect("tmp")
            .count(),
        0,
        "a refused write left its temp file"
    );
}
