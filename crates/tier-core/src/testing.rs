//! Helpers for tests, examples and benchmarks: building a [`CacheMeta`]
//! without a real HTTP response, and reading a hit's whole body.

use std::time::{Duration, SystemTime};

use pingora_cache::storage::HitHandler;
use pingora_cache::CacheMeta;
use pingora_http::ResponseHeader;

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
