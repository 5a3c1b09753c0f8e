//! Helpers the checks share: unique keys, writing and reading whole entries.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use pingora_cache::eviction::CacheEntryId;
use pingora_cache::storage::{HitHandler, Storage};
use pingora_cache::trace::{Span, SpanHandle};
use pingora_cache::{CacheKey, CacheMeta};

/// What a check returns: `Err` holds a sentence saying what went wrong.
pub type CheckResult = Result<(), String>;

/// A storage under test, as pingora hands it to the cache.
pub type DynStorage = &'static (dyn Storage + Sync);

/// How long one read may wait for bytes before the check calls it hung.
pub(crate) const READ_WAIT: Duration = Duration::from_secs(5);

/// Fail the check with a formatted message unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}
pub(crate) use ensure;

/// Turn a storage error into a check failure that says which call failed.
pub(crate) trait Context<T> {
    fn ctx(self, what: &str) -> Result<T, String>;
}

impl<T> Context<T> for pingora_error::Result<T> {
    fn ctx(self, what: &str) -> Result<T, String> {
        self.map_err(|e| format!("{what} failed: {e}"))
    }
}

pub(crate) fn span() -> SpanHandle {
    Span::inactive().handle()
}

/// A key no other check (or earlier run in this process) has used.
pub(crate) fn unique_key(check: &str) -> CacheKey {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    CacheKey::new(format!("tier-conformance/{check}/{n}"), "")
}

/// A fresh meta carrying `marker` in an `x-conformance` header.
pub(crate) fn meta(marker: &str) -> CacheMeta {
    tier_core::testing::meta_fresh_for(
        Duration::from_secs(3600),
        &[
            ("x-conformance", marker),
            ("content-type", "application/octet-stream"),
        ],
    )
}

/// The `x-conformance` header of a meta, or "" when absent.
pub(crate) fn marker(meta: &CacheMeta) -> String {
    meta.headers()
        .get("x-conformance")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// A body of `len` bytes that differs for each `seed`, so mixed bodies show.
pub(crate) fn body(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Write `chunks` as one entry and finish it; returns the miss handler's id.
pub(crate) async fn write_entry(
    storage: DynStorage,
    key: &CacheKey,
    meta: &CacheMeta,
    chunks: &[&[u8]],
) -> Result<Option<CacheEntryId>, String> {
    let mut miss = storage
        .get_miss_handler(key, meta, &span())
        .await
        .ctx("get_miss_handler")?;
    let last = chunks.len().saturating_sub(1);
    for (i, chunk) in chunks.iter().enumerate() {
        miss.write_body(Bytes::copy_from_slice(chunk), i == last)
            .await
            .ctx("write_body")?;
    }
    if chunks.is_empty() {
        miss.write_body(Bytes::new(), true)
            .await
            .ctx("write_body")?;
    }
    let id = miss.entry_id();
    miss.finish().await.ctx("finish")?;
    Ok(id)
}

/// Read a hit to its end, failing if a read waits longer than [`READ_WAIT`].
pub(crate) async fn read_all(hit: &mut HitHandler) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = read_next(hit).await? {
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// One read, failing if it waits longer than [`READ_WAIT`].
pub(crate) async fn read_next(hit: &mut HitHandler) -> Result<Option<Bytes>, String> {
    match tokio::time::timeout(READ_WAIT, hit.read_body()).await {
        Ok(read) => read.ctx("read_body"),
        Err(_) => Err(format!("read_body waited more than {READ_WAIT:?}")),
    }
}

/// Read at least `want` bytes (or to the end) from a hit that may be partial.
pub(crate) async fn read_at_least(hit: &mut HitHandler, want: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while out.len() < want {
        match read_next(hit).await? {
            Some(chunk) => out.extend_from_slice(&chunk),
            None => break,
        }
    }
    Ok(out)
}

/// Look `key` up and read its whole body.
pub(crate) async fn lookup_body(
    storage: DynStorage,
    key: &CacheKey,
) -> Result<Option<(CacheMeta, Vec<u8>)>, String> {
    match storage.lookup(key, &span()).await.ctx("lookup")? {
        Some((meta, mut hit)) => Ok(Some((meta, read_all(&mut hit).await?))),
        None => Ok(None),
    }
}

/// Look `key` up, failing unless its body is exactly `expected`.
pub(crate) async fn expect_body(
    storage: DynStorage,
    key: &CacheKey,
    expected: &[u8],
) -> Result<CacheMeta, String> {
    match lookup_body(storage, key).await? {
        Some((meta, got)) => {
            ensure!(
                got == expected,
                "body differs: got {} bytes, expected {} ({})",
                got.len(),
                expected.len(),
                first_difference(&got, expected)
            );
            Ok(meta)
        }
        None => Err("lookup missed an entry that should be stored".into()),
    }
}

pub(crate) fn first_difference(got: &[u8], expected: &[u8]) -> String {
    match got.iter().zip(expected).position(|(a, b)| a != b) {
        Some(i) => format!("first difference at byte {i}"),
        None => "one is a prefix of the other".into(),
    }
}
