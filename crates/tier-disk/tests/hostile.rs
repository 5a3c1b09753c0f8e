//! Hostile keys and sizes: keys with `/`, `..`, NUL and 64 KiB of bytes, and
//! variance keys one byte apart, are distinct entries, and the tier's files
//! are its segments, inside the cache directory; a 0-byte body and one
//! exactly at the size limit work, one byte over is refused; what could not
//! be read back (a user tag too long, more headers than pingora reads) is
//! refused when written, with a clear error.

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
    // Segments, and the directory's lock file: nothing else, nowhere else.
    let files = files_under(outer.path());
    assert_eq!(
        files.len() as u64,
        disk.disk_stats().segments + 1,
        "{files:?}"
    );
    assert!(files.contains(&dir.join("lock")), "{files:?}");
    let files = files.into_iter().filter(|f| !f.ends_with("lock"));
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
        assert!(name.starts_with("seg-") && name.ends_with(".v2"), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_could_not_be_read_back_is_refused_when_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = DiskStorage::open(DiskConfig::new(dir.path(), 64 << 20))
        .await
        .expect("open")
        .leak();
    let span = Span::inactive().handle();
    // A user tag longer than a record holds.
    let long_tag = CacheKey::new("k", "t".repeat(5000));
    let meta = tier_core::testing::meta_with_header("x", "1");
    let Err(err) = disk.get_miss_handler(&long_tag, &meta, &span).await else {
        panic!("a 5,000-byte user tag was accepted");
    };
    assert!(err.to_string().contains("user tag"), "{err}");
    // A tag at the limit works.
    write(disk, &CacheKey::new("k", "t".repeat(4096)), b"ok")
        .await
        .expect("a 4,096-byte user tag");
    let now = std::time::SystemTime::now();
    let meta_of = |header| {
        pingora_cache::CacheMeta::new(now + std::time::Duration::from_secs(60), now, 0, 0, header)
    };
    // More headers than pingora's own serialized form decodes (256): the
    // tier's meta form keeps them all, and they come back.
    let mut header = pingora_http::ResponseHeader::build(200, None).expect("header");
    for i in 0..300 {
        header
            .append_header(format!("x-h{i}"), format!("v{i}"))
            .expect("append");
    }
    let many_key = CacheKey::new("many", "");
    let mut miss = disk
        .get_miss_handler(&many_key, &meta_of(header), &span)
        .await
        .expect("300 headers are stored");
    miss.write_body(Bytes::from_static(b"many"), true)
        .await
        .expect("body");
    miss.finish().await.expect("finish");
    let (meta, _) = disk
        .lookup(&many_key, &span)
        .await
        .expect("lookup")
        .expect("a hit");
    assert_eq!(meta.headers().len(), 300);
    assert_eq!(meta.headers().get("x-h299").expect("x-h299"), "v299");
    // A header larger than a record holds (1 MiB).
    let mut header = pingora_http::ResponseHeader::build(200, None).expect("header");
    header
        .append_header("x-huge", "v".repeat(1_100_000))
        .expect("append");
    let Err(err) = disk
        .get_miss_handler(&CacheKey::new("huge", ""), &meta_of(header), &span)
        .await
    else {
        panic!("a 1.1 MB header was accepted");
    };
    assert!(
        err.to_string().contains("larger than a record holds"),
        "{err}"
    );
    // Times the meta cannot hold.
    let header = pingora_http::ResponseHeader::build(200, None).expect("header");
    let before_1970 = std::time::UNIX_EPOCH - std::time::Duration::from_secs(10);
    let old = pingora_cache::CacheMeta::new(before_1970, before_1970, 0, 0, header);
    let Err(err) = disk
        .get_miss_handler(&CacheKey::new("old", ""), &old, &span)
        .await
    else {
        panic!("a meta from before 1970 was accepted");
    };
    assert!(err.to_string().contains("cannot be stored"), "{err}");
    assert_eq!(disk.corrupt_entries(), 0);
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
}
