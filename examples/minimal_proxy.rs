// A complete caching reverse proxy: pingora in front of one origin, caching
// in a bounded tiers memory cache. `cargo run --example minimal_proxy --
// ORIGIN_HOST:PORT` listens on 127.0.0.1:6188. This file is the root
// README's first example, word for word (`cargo xtask ci` checks that).
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use pingora_cache::cache_control::CacheControl;
use pingora_cache::filters::{request_cacheable, resp_cacheable};
use pingora_cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora_cache::{CacheKey, CacheMetaDefaults, RespCacheable};
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::{ProxyHttp, Session};
use tier_memory::{MemoryConfig, MemoryStorage};

// Storage methods take &'static self: the cache and its lock live in statics.
static CACHE: LazyLock<MemoryStorage> =
    LazyLock::new(|| MemoryStorage::new(MemoryConfig::new(512 << 20).max_object_bytes(16 << 20)));
// One request fills a missing object; the others wait for it (up to 5 s).
static LOCK: LazyLock<Box<CacheKeyLockImpl>> =
    LazyLock::new(|| CacheLock::new_boxed(Duration::from_secs(5)));
// Responses without their own Cache-Control: 200s are fresh for 60 s.
static DEFAULTS: CacheMetaDefaults = CacheMetaDefaults::new(
    |status| (status == 200).then_some(Duration::from_secs(60)),
    0,
    0,
);

struct Proxy {
    origin: String,
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(&*self.origin, false, String::new())))
    }

    // Which requests may use the cache (GET and HEAD), and which cache.
    fn request_cache_filter(&self, session: &mut Session, _: &mut ()) -> Result<()> {
        if request_cacheable(session.req_header()) {
            session
                .cache
                .enable(&*CACHE, None, None, Some(&**LOCK), None);
        }
        Ok(())
    }

    // What an object is cached under: host and path with query.
    fn cache_key_callback(&self, session: &Session, _: &mut ()) -> Result<CacheKey> {
        let req = session.req_header();
        let host = req
            .headers
            .get("host")
            .map(|h| h.as_bytes())
            .unwrap_or_default();
        let mut primary = host.to_vec();
        primary.push(b' ');
        primary.extend_from_slice(req.uri.to_string().as_bytes());
        Ok(CacheKey::new(primary, ""))
    }

    // Which responses are stored, and for how long (Cache-Control first).
    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        _: &mut (),
    ) -> Result<RespCacheable> {
        let cc = CacheControl::from_resp_headers(resp);
        let private = session.req_header().headers.contains_key("authorization");
        Ok(resp_cacheable(
            cc.as_ref(),
            resp.clone(),
            private,
            &DEFAULTS,
        ))
    }
}

fn main() {
    let origin = std::env::args().nth(1).unwrap_or("127.0.0.1:8000".into());
    let mut server = Server::new(None).expect("pingora's default configuration");
    server.bootstrap();
    let mut proxy = pingora_proxy::http_proxy_service(&server.configuration, Proxy { origin });
    proxy.add_tcp("127.0.0.1:6188");
    server.add_service(proxy);
    server.run_forever();
}
