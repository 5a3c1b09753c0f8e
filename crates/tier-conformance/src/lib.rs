//! The pingora-cache `Storage` contract as reusable async test functions.
//!
//! This crate provides one public async function per behaviour of the contract
//! in the project's design (lookups, atomic publish, aborted writes, streaming
//! partial writes, seeks, purges, expiry, `update_meta`, entry ids,
//! concurrency), each taking the storage under test as a `&'static` reference,
//! and [`run_all`], which runs every check and skips, by name and with a printed
//! reason, only those a tier declares it does not support through
//! [`Capabilities`].
//!
//! Every tier's tests call it the same way:
//!
//! ```no_run
//! use std::sync::LazyLock;
//! use pingora_cache::MemCache;
//! use tier_core::{Capabilities, PlainTier};
//!
//! static TIER: LazyLock<PlainTier<MemCache>> =
//!     LazyLock::new(|| PlainTier::new("memcache", MemCache::new()));
//!
//! # async fn demo() {
//! let report = tier_conformance::run_all(&*TIER).await;
//! report.assert_all_passed();
//! # }
//! ```
//!
//! Each check runs in its own task with a time limit, so a check that panics or
//! hangs is reported as a failure of that check, and the others still run.

mod checks;
pub mod crash;
pub mod delayed;
pub mod history;
pub mod model;
mod support;

use std::fmt;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use tier_core::{Capabilities, Tier};

pub use checks::*;
pub use support::{CheckResult, DynStorage};

/// What a check needs from the storage, beyond the required `Storage` contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Every storage must pass it.
    Nothing,
    /// [`Capabilities::streaming_partial_write`].
    StreamingPartialWrite,
    /// [`Capabilities::seek`].
    Seek,
    /// [`Capabilities::entry_ids`].
    EntryIds,
    /// [`Capabilities::expire`].
    Expire,
    /// A per-object limit of at least this many bytes.
    ObjectBytes(usize),
}

impl Needs {
    /// `None` when `capabilities` covers the need, else why the check is skipped.
    pub fn unmet_reason(self, capabilities: &Capabilities) -> Option<String> {
        let declared_without = |what: &str| Some(format!("the storage declares no {what} support"));
        match self {
            Needs::Nothing => None,
            Needs::StreamingPartialWrite if !capabilities.streaming_partial_write => {
                declared_without("streaming partial write")
            }
            Needs::Seek if !capabilities.seek => declared_without("seek"),
            Needs::EntryIds if !capabilities.entry_ids => declared_without("entry id"),
            Needs::Expire if !capabilities.expire => declared_without("expire-keeps-body"),
            Needs::ObjectBytes(bytes) => match capabilities.max_object_bytes {
                Some(limit) if limit < bytes => Some(format!(
                    "the storage declares a {limit}-byte object limit, under the {bytes} bytes this check writes"
                )),
                _ => None,
            },
            _ => None,
        }
    }
}

/// One check of the contract.
#[derive(Clone, Copy)]
pub struct Check {
    /// The check's name, the same as its function's.
    pub name: &'static str,
    /// What it needs the storage to support.
    pub needs: Needs,
    run: fn(DynStorage) -> BoxFuture<'static, CheckResult>,
}

impl fmt::Debug for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Check")
            .field("name", &self.name)
            .field("needs", &self.needs)
            .finish()
    }
}

impl Check {
    /// Run this check against `storage`.
    pub fn run(&self, storage: DynStorage) -> BoxFuture<'static, CheckResult> {
        (self.run)(storage)
    }
}

macro_rules! checks {
    ($($name:ident: $needs:expr,)*) => {
        /// Every check, in the order [`run_all`] runs them.
        pub fn all_checks() -> Vec<Check> {
            vec![$(Check {
                name: stringify!($name),
                needs: $needs,
                run: |storage| $name(storage).boxed(),
            }),*]
        }
    };
}

checks! {
    miss_returns_none: Needs::Nothing,
    round_trip_headers_and_body: Needs::Nothing,
    chunked_body_is_concatenated: Needs::Nothing,
    large_body_8mib: Needs::ObjectBytes(8 << 20),
    empty_body_round_trips: Needs::Nothing,
    read_after_end_stays_none: Needs::Nothing,
    hit_finish_keeps_entry: Needs::Nothing,
    variance_keys_are_distinct: Needs::Nothing,
    dropped_miss_handler_leaves_nothing: Needs::Nothing,
    dropped_rewrite_keeps_previous_entry: Needs::Nothing,
    rewrite_replaces_entry: Needs::Nothing,
    concurrent_writers_never_mix: Needs::Nothing,
    many_concurrent_readers: Needs::Nothing,
    purge_racing_write_never_publishes_partial: Needs::Nothing,
    streaming_reader_sees_growing_body: Needs::StreamingPartialWrite,
    streaming_write_tag_finds_own_write: Needs::StreamingPartialWrite,
    aborted_writer_fails_reader: Needs::StreamingPartialWrite,
    seek_selects_range: Needs::Seek,
    seek_none_end_after_bounded_seek: Needs::Seek,
    seek_start_past_end_is_error: Needs::Seek,
    seek_end_past_body_is_clamped: Needs::Seek,
    seek_multipart_ranges_in_sequence: Needs::Seek,
    seek_multipart_none_end_after_bounded: Needs::Seek,
    purge_active_removes_entry: Needs::Nothing,
    purge_exact_removes_entry: Needs::Nothing,
    purge_absent_is_not_found: Needs::Nothing,
    purge_exact_mismatched_id_keeps_entry: Needs::Nothing,
    purge_eviction_removes_entry: Needs::Nothing,
    purge_active_reports_entry_id: Needs::EntryIds,
    expire_keeps_body_and_makes_stale: Needs::Expire,
    expire_absent_is_not_found: Needs::Nothing,
    update_meta_replaces_headers: Needs::Nothing,
    update_meta_absent_returns_false: Needs::Nothing,
    entry_id_same_from_miss_and_hit: Needs::EntryIds,
    entry_id_new_for_each_write: Needs::EntryIds,
}

/// How long one check may run before it counts as hung.
pub const CHECK_TIME_LIMIT: Duration = Duration::from_secs(60);

/// The outcome of a run: which checks passed, failed (and why), were skipped
/// (and why).
#[derive(Debug, Default)]
pub struct Report {
    /// The storage's name, as its tier reports it.
    pub storage: String,
    /// Checks that passed.
    pub passed: Vec<&'static str>,
    /// Checks that failed, with what went wrong.
    pub failed: Vec<(&'static str, String)>,
    /// Checks not run, with the reason the storage's declaration gives.
    pub skipped: Vec<(&'static str, String)>,
}

impl Report {
    /// The names of the failed checks, in run order.
    pub fn failed_names(&self) -> Vec<&'static str> {
        self.failed.iter().map(|(name, _)| *name).collect()
    }

    /// Panic with every failure listed, unless all run checks passed.
    #[track_caller]
    pub fn assert_all_passed(&self) {
        if !self.failed.is_empty() {
            panic!("{self}");
        }
    }

    /// Panic unless all checks ran (none skipped) and passed.
    #[track_caller]
    pub fn assert_all_passed_none_skipped(&self) {
        self.assert_all_passed();
        if !self.skipped.is_empty() {
            panic!("{self}");
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "conformance of {}: {} passed, {} failed, {} skipped",
            self.storage,
            self.passed.len(),
            self.failed.len(),
            self.skipped.len()
        )?;
        for (name, why) in &self.failed {
            writeln!(f, "  FAIL {name}: {why}")?;
        }
        for (name, why) in &self.skipped {
            writeln!(f, "  SKIP {name}: {why}")?;
        }
        Ok(())
    }
}

/// Run every check against `tier`, skipping those its
/// [`Tier::capabilities`] rule out, and print the report.
pub async fn run_all<T: Tier>(tier: &'static T) -> Report {
    let name = tier.tier_name().to_string();
    run_declared(tier, &name, tier.capabilities()).await
}

/// Run every check against `storage` as if it declared `capabilities`.
///
/// Checks run one after another, each in its own task under
/// [`CHECK_TIME_LIMIT`], so a panic or a hang fails that check alone.
pub async fn run_declared(storage: DynStorage, name: &str, capabilities: Capabilities) -> Report {
    let mut report = Report {
        storage: name.to_string(),
        ..Report::default()
    };
    for check in all_checks() {
        if let Some(reason) = check.needs.unmet_reason(&capabilities) {
            println!("conformance {name}: SKIP {}: {reason}", check.name);
            report.skipped.push((check.name, reason));
            continue;
        }
        let task = tokio::spawn(tokio::time::timeout(CHECK_TIME_LIMIT, check.run(storage)));
        let outcome = match task.await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(format!("did not finish within {CHECK_TIME_LIMIT:?}")),
            Err(join) if join.is_panic() => Err(format!("panicked: {}", panic_text(join))),
            Err(join) => Err(format!("task failed: {join}")),
        };
        match outcome {
            Ok(()) => {
                println!("conformance {name}: PASS {}", check.name);
                report.passed.push(check.name);
            }
            Err(why) => {
                println!("conformance {name}: FAIL {}: {why}", check.name);
                report.failed.push((check.name, why));
            }
        }
    }
    println!("{report}");
    report
}

fn panic_text(join: tokio::task::JoinError) -> String {
    let payload = join.into_panic();
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "non-text panic payload".to_string()
    }
}

/// The README's examples, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
