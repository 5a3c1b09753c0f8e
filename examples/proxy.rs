//! A real Pingora reverse proxy caching through `HybridStorage<MemoryStorage,
//! DiskStorage>`: memory over disk, with an eviction manager, a cache lock,
//! `x-cache-status` and `x-cache-tier` headers and `/metrics`.
//!
//! `cargo run --release --example proxy` starts it on 127.0.0.1:6188 with a
//! demo origin on a loopback port; `--upstream HOST:PORT` proxies a real
//! one. `--redis redis://HOST:PORT` (or `--redis-cluster URL,URL,…`) adds a
//! Redis tier below disk that a fleet of proxies shares, purges included.
//! `--help` lists every flag.

use clap::Parser;
use examples::proxy::{build, ProxyOptions};

fn main() {
    let opts = ProxyOptions::parse();
    let built = match build(&opts, 0) {
        Ok(built) => built,
        Err(e) => {
            eprintln!("proxy: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "tiers proxy on http://{} -> {}",
        built.listen, built.upstream
    );
    println!(
        "cache: {} MiB memory over {} MiB disk in {}{}",
        opts.memory_mib,
        opts.disk_mib,
        opts.cache_dir.display(),
        match (&opts.redis, opts.redis_cluster.is_empty()) {
            (Some(url), _) => format!(" over Redis at {url}"),
            (None, false) => format!(" over the Redis Cluster {}", opts.redis_cluster.join(",")),
            (None, true) => String::new(),
        }
    );
    if built.origin.is_some() {
        println!("demo origin started; try:");
        println!(
            "  curl -si http://{}/bytes/1048576 -o /dev/null -D -   # miss, then run again: hit",
            built.listen
        );
        println!(
            "  curl -si -H 'Range: bytes=0-99' http://{}/bytes/1048576 -o /dev/null -D -",
            built.listen
        );
        println!("  curl -s http://{}/metrics", built.listen);
        println!(
            "  curl -si -X PURGE http://{}/bytes/1048576   # remove it (from Redis and the fleet too)",
            built.listen
        );
    }
    built.server.run_forever();
}
