//! Helpers for tests, examples and benchmarks: building a [`CacheMeta`]
//! without a real HTTP response, writing a whole entry, and reading a hit's
//! whole body.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use pingora_cache::storage::{HitHandler, MissFinishType, Storage};
use pingora_cache::trace::Span;
use pingora_cache::{CacheKey, CacheMeta};
use pingora_http::ResponseHeader;

/// The header lines of a typical origin response, as sent (names in their
/// case): what a cached meta carries in production, for measuring what
/// headers cost.
pub const ORIGIN_HEADERS: [(&str, &str); 9] = [
    ("Content-Type", "application/octet-stream"),
    ("Content-Length", "4096"),
    ("Date", "Wed, 02 Dec 2026 05:00:00 GMT"),
    ("Last-Modified", "Tue, 01 Dec 2026 12:00:00 GMT"),
    ("ETag", "\"5f3a-63c1b2a4e7d00\""),
    ("Cache-Control", "public, max-age=86400"),
    ("Accept-Ranges", "bytes"),
    ("Server", "nginx/1.26.2"),
    ("X-Request-Id", "7c1d0b6e-4a5f-4e0b-9a43-2f6f1c0d9e21"),
];

/// Write `body` under `key` with `meta` in one chunk and finish the write.
pub async fn write_entry<S: Storage + Sync + ?Sized>(
    storage: &'static S,
    key: &CacheKey,
    meta: &CacheMeta,
    body: &[u8],
) -> pingora_error::Result<MissFinishType> {
    let span = Span::inactive().handle();
    let mut miss = storage.get_miss_handler(key, meta, &span).await?;
    miss.write_body(Bytes::copy_from_slice(body), true).await?;
    miss.finish().await
}

/// A 200 response's meta, fresh for an hour, with one extra header.
pub fn meta_with_header(name: &'static str, value: &str) -> CacheMeta {
    meta_fresh_for(Duration::from_secs(3600), &[(name, value)])
}

/// A 200 response's meta, fresh for `ttl` from now, with `headers`, a
/// 60-second stale-while-revalidate and a 120-second stale-if-error window.
pub fn meta_fresh_for(ttl: Duration, headers: &[(&'static str, &str)]) -> CacheMeta {
    let now = SystemTime::now();
    let mut header =
        ResponseHeader::build(200, Some(headers.len())).expect("a 200 status always builds");
    for (name, value) in headers {
        // Invalid header values are a bug in the calling test, not input.
        header
            .append_header(*name, value.to_string())
            .expect("test header value is valid");
    }
    CacheMeta::new(now + ttl, now, 60, 120, header)
}

/// Read what is left of `hit`'s body into one buffer; the first read error
/// ends it.
pub async fn read_body(hit: &mut HitHandler) -> pingora_error::Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(chunk) = hit.read_body().await? {
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}
