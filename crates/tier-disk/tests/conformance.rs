//! DiskStorage keeps the whole Storage contract, and keeps it across a reopen.

use bytes::Bytes;
use pingora_cache::storage::Storage;
use pingora_cache::trace::Span;
use pingora_cache::CacheKey;
use tier_disk::{DiskConfig, DiskStorage, Durability};

async fn open(dir: &std::path::Path, durability: Durability) -> &'static DiskStorage {
    let config = DiskConfig::new(dir, 512 << 20)
        .max_object_bytes(64 << 20)
        .block_size(16 << 10)
        .durability(durability);
    DiskStorage::open(config).await.expect("open").leak()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_every_check_with_none_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = open(dir.path(), Durability::Data).await;
    tier_conformance::run_all(disk)
        .await
        .assert_all_passed_none_skipped();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_every_check_with_full_durability_and_tiny_blocks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = DiskConfig::new(dir.path(), 512 << 20)
        .max_object_bytes(64 << 20)
        .block_size(4 << 10)
        .durability(Durability::Full)
        .name("disk-full");
    let disk = DiskStorage::open(config).await.expect("open").leak();
    tier_conformance::run_all(disk)
        .await
        .assert_all_passed_none_skipped();
}

/// The reopen variant: every entry whose finish returned before the reopen is
/// found byte for byte after it, with its meta.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_finished_entry_survives_a_reopen_byte_for_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = open(dir.path(), Durability::Data).await;
    // The suite leaves its surviving entries behind: record them all.
    tier_conformance::run_all(first)
        .await
        .assert_all_passed_none_skipped();
    let span = Span::inactive().handle();
    let mut written = Vec::new();
    for i in 0..50u32 {
        let key = CacheKey::new(format!("reopen/{i}"), "");
        let body: Vec<u8> = (0..(i as usize * 7919) % 300_000)
            .map(|b| (b as u32 * 31 + i) as u8)
            .collect();
        let meta = tier_core::testing::meta_with_header("x-reopen", &i.to_string());
        let mut miss = first
            .get_miss_handler(&key, &meta, &span)
            .await
            .expect("miss");
        for chunk in body.chunks(10_000) {
            miss.write_body(Bytes::copy_from_slice(chunk), false)
                .await
                .expect("write");
        }
        miss.finish().await.expect("finish");
        written.push((key, body, i));
    }
    let entries_before = tier_core::Tier::stats(first).entries;
    let used_before = first.used_bytes();
    // A graceful restart: close seals the segment being written.
    first.close().await.expect("close");
    let second = open(dir.path(), Durability::Data).await;
    assert_eq!(tier_core::Tier::stats(second).entries, entries_before);
    assert_eq!(second.used_bytes(), used_before);
    for (key, body, i) in written {
        let (meta, mut hit) = second
            .lookup(&key, &span)
            .await
            .expect("lookup")
            .unwrap_or_else(|| panic!("entry {i} lost in the reopen"));
        assert_eq!(
            meta.headers()
                .get("x-reopen")
                .map(|v| v.as_bytes().to_vec()),
            Some(i.to_string().into_bytes())
        );
        let mut got = Vec::new();
        while let Some(chunk) = hit.read_body().await.expect("read") {
            got.extend_from_slice(&chunk);
        }
        assert!(got == body, "entry {i} changed across the reopen");
    }
    drop(dir);
}
