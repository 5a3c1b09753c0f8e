//! A small HTTP origin for the proxy example and its tests, on pingora's own
//! HTTP server. It counts the requests it serves.
//!
//! Paths:
//! - `/bytes/N`: N bytes derived from N (at most 64 MiB), with its
//!   `Content-Length`, `Cache-Control: max-age=60`;
//! - `/chunked/N`: the same body, chunked, so its length is not announced;
//! - `/nostore`: `Cache-Control: no-store`;
//! - `/vary`: `Vary: Accept-Language`, the body names the language asked for;
//! - `/revalidate`: `max-age=1` and an `ETag`; a request with a matching
//!   `If-None-Match` gets `304 Not Modified`;
//! - anything else: a short text page, `max-age=60`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

/// The origin's state: how many requests it served, in all and 304s.
#[derive(Debug, Default)]
pub struct OriginCounters {
    /// Requests served.
    pub requests: AtomicU64,
    /// Of those, answered 304.
    pub not_modified: AtomicU64,
}

/// The origin app.
#[derive(Debug, Clone, Default)]
pub struct DemoOrigin {
    /// Shared with whoever wants to read the counts.
    pub counters: Arc<OriginCounters>,
}

/// The body `/bytes/N` serves: byte `i` is `(i * 31 + N) % 251`.
pub fn demo_body(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + len) % 251) as u8).collect()
}

const ETAG: &str = "\"v1\"";

#[async_trait]
impl ServeHttp for DemoOrigin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let req = session.req_header();
        let path = req.uri.path().to_string();
        let header = |name: &str| {
            req.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let build = |status: StatusCode, cache_control: &str, body: Vec<u8>| {
            Response::builder()
                .status(status)
                .header("cache-control", cache_control)
                .header("content-type", "application/octet-stream")
                .header("content-length", body.len())
                .body(body)
        };
        let response = if let Some(len) = path
            .strip_prefix("/bytes/")
            .and_then(|n| n.parse::<usize>().ok())
        {
            build(StatusCode::OK, "max-age=60", demo_body(len.min(64 << 20)))
        } else if let Some(len) = path
            .strip_prefix("/chunked/")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Response::builder()
                .status(StatusCode::OK)
                .header("cache-control", "max-age=60")
                .header("content-type", "application/octet-stream")
                .header("transfer-encoding", "chunked")
                .body(demo_body(len.min(64 << 20)))
        } else if path == "/nostore" {
            build(StatusCode::OK, "no-store", b"never cache me".to_vec())
        } else if path == "/vary" {
            let lang = header("accept-language");
            build(
                StatusCode::OK,
                "max-age=60",
                format!("language: {lang}").into_bytes(),
            )
            .map(|mut r| {
                r.headers_mut()
                    .insert("vary", http::HeaderValue::from_static("accept-language"));
                r
            })
        } else if path == "/revalidate" {
            if header("if-none-match") == ETAG {
                self.counters.not_modified.fetch_add(1, Ordering::Relaxed);
                Response::builder()
                    .status(StatusCode::NOT_MODIFIED)
                    .header("cache-control", "max-age=1")
                    .header("etag", ETAG)
                    .body(Vec::new())
            } else {
                build(StatusCode::OK, "max-age=1", b"revalidated body".to_vec()).map(|mut r| {
                    r.headers_mut()
                        .insert("etag", http::HeaderValue::from_static(ETAG));
                    r
                })
            }
        } else {
            build(
                StatusCode::OK,
                "max-age=60",
                b"hello from the demo origin\n".to_vec(),
            )
        };
        response.unwrap_or_else(|_| Response::new(b"bad response".to_vec()))
    }
}
