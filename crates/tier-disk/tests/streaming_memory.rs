//! A 256 MiB body written and read back through a counting allocator: the
//! peak heap use stays at a few blocks, not the body.
//!
//! This file holds a single test so the allocator's peak belongs to it alone.

use std::alloc::System;

use bytes::Bytes;
use cap::Cap;
use pingora_cache::storage::Storage;
use pingora_cache::trace::Span;
use pingora_cache::CacheKey;
use tier_disk::{DiskConfig, DiskStorage, Durability};

#[global_allocator]
static ALLOC: Cap<System> = Cap::new(System, usize::MAX);

const BODY: usize = 256 << 20;
const CHUNK: usize = 64 << 10;
/// What a writer and a reader may hold at once: a few 64 KiB blocks and
/// chunks, plus the runtime's own small allocations.
const BOUND: usize = 8 << 20;

/// The byte value of every byte of the chunk holding `offset`.
fn fill(offset: usize) -> u8 {
    (offset / CHUNK % 251) as u8
}

#[test]
fn a_256_mib_body_streams_both_ways_in_bounded_memory() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    rt.block_on(async {
        let config = DiskConfig::new(dir.path(), 1 << 30)
            .max_object_bytes(512 << 20)
            .durability(Durability::None);
        let disk = DiskStorage::open(config).await.expect("open").leak();
        let span = Span::inactive().handle();
        let key = CacheKey::new("big", "");
        let meta = tier_core::testing::meta_with_header("x", "1");
        let baseline = ALLOC.allocated();

        let mut miss = disk
            .get_miss_handler(&key, &meta, &span)
            .await
            .expect("miss");
        let mut written = 0;
        while written < BODY {
            // A fresh chunk each time, as from the network; each chunk's bytes
            // say which chunk it is.
            let chunk = vec![fill(written); CHUNK];
            miss.write_body(Bytes::from(chunk), false)
                .await
                .expect("write");
            written += CHUNK;
        }
        miss.finish().await.expect("finish");

        let (_, mut hit) = disk
            .lookup(&key, &span)
            .await
            .expect("lookup")
            .expect("hit");
        let mut read = 0usize;
        let mut correct = true;
        let mut expected = vec![0u8; CHUNK];
        while let Some(chunk) = hit.read_body().await.expect("read") {
            // Compare segment by segment at chunk boundaries (memcmp, not a
            // byte loop: this runs unoptimized).
            let mut at = 0;
            while at < chunk.len() {
                let offset = read + at;
                let len = (CHUNK - offset % CHUNK).min(chunk.len() - at);
                expected[..len].fill(fill(offset));
                correct &= chunk[at..at + len] == expected[..len];
                at += len;
            }
            read += chunk.len();
        }
        assert_eq!(read, BODY);
        assert!(correct, "the body read back differs");

        let peak = ALLOC.max_allocated().saturating_sub(baseline);
        println!("peak heap above baseline while streaming 256 MiB: {peak} bytes");
        assert!(
            peak < BOUND,
            "peak heap {peak} bytes for a {BODY}-byte body"
        );
    });
}
