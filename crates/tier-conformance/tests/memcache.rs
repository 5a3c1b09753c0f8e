//! The suite can fail: run against pingora's test-only `MemCache`, it finds
//! exactly the contract violations `MemCache` is known to have. If a check
//! becomes vacuous (passes on anything), this list changes and the test fails.

use std::sync::LazyLock;

use pingora_cache::MemCache;
use tier_conformance::{all_checks, run_all, run_declared, Needs};
use tier_core::{Capabilities, PlainTier};

/// What `MemCache` actually supports: streaming partial writes, seek and a
/// stale-marking `expire`; it assigns no entry ids.
fn memcache_capabilities() -> Capabilities {
    let mut caps = Capabilities::all();
    caps.entry_ids = false;
    caps
}

static MEMCACHE: LazyLock<MemCache> = LazyLock::new(MemCache::new);

/// What a user should declare for `MemCache` in a `PlainTier`: no seek
/// either, since its `seek(start, None)` keeps an earlier end.
fn memcache_declared_honestly() -> Capabilities {
    let mut caps = memcache_capabilities();
    caps.seek = false;
    caps
}

static WRAPPED: LazyLock<PlainTier<MemCache>> = LazyLock::new(|| {
    PlainTier::new("MemCache in PlainTier", MemCache::new())
        .with_capabilities(memcache_declared_honestly())
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memcache_fails_exactly_its_known_defects() {
    let report = run_declared(&*MEMCACHE, "pingora MemCache", memcache_capabilities()).await;
    assert_eq!(
        report.failed_names(),
        vec![
            // finish() unwraps its temp object, which the purge removed: a panic.
            "purge_racing_write_never_publishes_partial",
            // A dropped writer closes the watch channel, which readers take as EOF.
            "aborted_writer_fails_reader",
            // seek(start, None) keeps the end of an earlier bounded seek.
            "seek_none_end_after_bounded_seek",
            "seek_multipart_none_end_after_bounded",
            // update_meta panics with "no meta found".
            "update_meta_absent_returns_false",
        ],
        "{report}"
    );
    let skipped: Vec<_> = report.skipped.iter().map(|(name, _)| *name).collect();
    let expected_skips: Vec<_> = all_checks()
        .into_iter()
        .filter(|c| c.needs == Needs::EntryIds)
        .map(|c| c.name)
        .collect();
    assert_eq!(skipped, expected_skips);
    assert!(report
        .skipped
        .iter()
        .all(|(_, why)| why.contains("entry id")));
    assert_eq!(
        report.passed.len() + report.failed.len() + report.skipped.len(),
        all_checks().len()
    );
}

/// PlainTier guards the two panics (update_meta of an absent key, a purge
/// racing a write) and, declared without seek, hands out hits that say they
/// cannot seek, so the seek checks are skipped by declaration; the aborted
/// writer defect remains and the suite still sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_tier_removes_memcache_panics_but_not_its_semantics() {
    let report = run_all(&*WRAPPED).await;
    assert_eq!(
        report.failed_names(),
        vec!["aborted_writer_fails_reader"],
        "{report}"
    );
    let skipped: Vec<_> = report.skipped.iter().map(|(name, _)| *name).collect();
    let expected_skips: Vec<_> = all_checks()
        .into_iter()
        .filter(|c| matches!(c.needs, Needs::EntryIds | Needs::Seek))
        .map(|c| c.name)
        .collect();
    assert_eq!(skipped, expected_skips);
}

#[test]
fn suite_has_at_least_25_distinct_checks() {
    let checks = all_checks();
    let mut names: Vec<_> = checks.iter().map(|c| c.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), checks.len(), "duplicate check names");
    assert!(checks.len() >= 25, "only {} checks", checks.len());
}

#[test]
fn declared_limits_skip_only_what_they_rule_out() {
    let mut caps = Capabilities::default();
    caps.max_object_bytes = Some(1 << 20);
    assert!(Needs::ObjectBytes(8 << 20).unmet_reason(&caps).is_some());
    assert!(Needs::Nothing.unmet_reason(&caps).is_none());
    assert!(Needs::Seek.unmet_reason(&caps).is_some());
    assert!(Needs::Seek.unmet_reason(&Capabilities::all()).is_none());
    caps.max_object_bytes = Some(16 << 20);
    assert!(Needs::ObjectBytes(8 << 20).unmet_reason(&caps).is_none());
}
