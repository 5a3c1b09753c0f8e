//! A real Pingora reverse proxy caching through `HybridStorage<MemoryStorage,
//! DiskStorage>`: memory over disk, with an eviction manager, a cache lock,
//! `x-cache-status` and `x-cache-tier` headers and `/metrics`.
//!
//! `cargo run --release --example proxy` starts it on 127.0.0.1:6188 with a
//! demo origin on a loopback port; `--upstream HOST:PORT` proxies a real
//! one. `--redis redis://HOST:PORT` (or `--redis-cluster URL,URL,…`) adds a
//! Redis tier below disk that a fleet of proxies shares, purges included.
//! pingora's own flags work too: `-c conf.yaml` (threads, pid file, error
//! log, grace periods), `-d`, `-u` and `-t`. `RUST_LOG=debug` for more
//! lines. `--help` lists every flag.

use clap::Parser;
use examples::proxy::{build, explain, init_logging, ProxyOptions};

fn main() {
    init_logging();
    let opts = ProxyOptions::parse();
    let built = match build(&opts, 0) {
        Ok(built) => built,
        Err(e) => {
            eprintln!("proxy: {}", explain(&e));
            std::process::exit(1);
        }
    };
    // Prints the banner once listening; stops on SIGTERM (gracefully),
    // SIGINT (at once) or SIGQUIT (handing its sockets to a new process
    // started with -u); then closes the disk tier.
    let tiers = built.tiers;
    built.server.run(pingora_core::server::RunArgs::default());
    if let Some(tiers) = tiers {
        tiers.close();
    }
    std::process::exit(0)
}
