//! MemoryStorage keeps the whole Storage contract: every check, none skipped.

use std::sync::LazyLock;

use tier_memory::{MemoryConfig, MemoryStorage};

static ROOMY: LazyLock<MemoryStorage> =
    LazyLock::new(|| MemoryStorage::new(MemoryConfig::new(256 << 20).max_object_bytes(16 << 20)));

/// Small enough that the suite's own writes make it evict while it runs.
static TIGHT: LazyLock<MemoryStorage> = LazyLock::new(|| {
    MemoryStorage::new(
        MemoryConfig::new(20 << 20)
            .max_object_bytes(9 << 20)
            .name("memory-tight"),
    )
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_every_check_with_none_skipped() {
    tier_conformance::run_all(&*ROOMY)
        .await
        .assert_all_passed_none_skipped();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_every_check_while_evicting() {
    use bytes::Bytes;
    use pingora_cache::trace::Span;
    use pingora_cache::{CacheKey, Storage};
    use tier_core::Tier;
    // Fill the tier first, so every write of the suite has to evict.
    let span = Span::inactive().handle();
    let meta = tier_core::testing::meta_with_header("x-filler", "1");
    for i in 0..40 {
        let key = CacheKey::new(format!("filler/{i}"), "");
        let mut miss = TIGHT
            .get_miss_handler(&key, &meta, &span)
            .await
            .expect("miss");
        miss.write_body(Bytes::from(vec![7u8; 512 << 10]), true)
            .await
            .expect("write");
        miss.finish().await.expect("finish");
    }
    tier_conformance::run_all(&*TIGHT)
        .await
        .assert_all_passed_none_skipped();
    assert!(TIGHT.stats().evictions > 0, "the tight tier never evicted");
    assert!(TIGHT.used_bytes() <= 20 << 20);
}
