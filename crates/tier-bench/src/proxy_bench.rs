//! The proxy as users run it: the release proxy example pinned to one core,
//! `wrk` pinned to the other, GETs spread over 1,000 cached objects; the
//! proxy's own CPU time per request from `/proc/PID/stat`, for pingora's
//! `MemCache`, tiers memory hits and tiers disk hits, in the same run. Only
//! 127.0.0.1 is contacted.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;

const OBJECTS: usize = 1_000;

/// One configuration's load figures.
#[derive(Debug, Clone, Copy, Default)]
struct Load {
    rps: f64,
    p99_ms: f64,
    cpu_us_per_request: f64,
    /// Of which in user space (the rest is the kernel's: sockets, copies).
    user_us_per_request: f64,
    disk_hits: u64,
    memory_hits: u64,
}

/// The proxy example binary, beside this benchmark's own binary.
fn proxy_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.join("examples").join("proxy");
    path.exists().then_some(path)
}

/// The proxy's user and user + system CPU time so far, in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is the first, utime the 12th, stime the 13th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let user = fields.get(11)?.parse::<u64>().ok()?;
    Some((user, user + fields.get(12)?.parse::<u64>().ok()?))
}

pub(crate) fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Stops the proxy when dropped.
struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A value of a `tiers_events_total{event="NAME"}` line of `/metrics`.
fn metric(text: &str, event: &str) -> u64 {
    let label = format!("event=\"{event}\"");
    text.lines()
        .filter(|l| l.starts_with("tiers_events_total{") && l.contains(&label))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// wrk's figures: requests, requests/s, p99 in ms.
fn parse_wrk(out: &str) -> Option<(u64, f64, f64)> {
    let requests = out
        .lines()
        .find(|l| l.contains("requests in"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let rps = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))?
        .trim()
        .parse()
        .ok()?;
    let p99 = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))?
        .trim();
    let p99_ms = if let Some(us) = p99.strip_suffix("us") {
        us.parse::<f64>().ok()? / 1000.0
    } else if let Some(ms) = p99.strip_suffix("ms") {
        ms.parse().ok()?
    } else {
        p99.strip_suffix('s')?.parse::<f64>().ok()? * 1000.0
    };
    Some((requests, rps, p99_ms))
}

fn measure(
    rt: &Runtime,
    binary: &Path,
    dir: &Path,
    size: usize,
    flags: &[&str],
    seconds: u32,
) -> Result<Load, String> {
    let port = examples::proxy::free_port().map_err(|e| e.to_string())?;
    let cache = tempfile::tempdir_in(dir).map_err(|e| e.to_string())?;
    let listen = format!("127.0.0.1:{port}");
    let child = Command::new("taskset")
        .args(["-c", "0"])
        .arg(binary)
        .args(["--listen", &listen, "--cache-dir"])
        .arg(cache.path())
        .args(flags)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting the proxy: {e}"))?;
    let proxy = Proxy(child);
    let base = format!("http://{listen}");
    let metrics = rt.block_on(async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?;
        let started = Instant::now();
        while client.get(format!("{base}/bytes/1")).send().await.is_err() {
            if started.elapsed() > Duration::from_secs(30) {
                return Err("the proxy did not start listening".to_string());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The tiers open in a service once the server runs; until then
        // requests pass uncached. They are open when their metrics appear.
        if !flags.contains(&"memcache") {
            loop {
                let text = match client.get(format!("{base}/metrics")).send().await {
                    Ok(resp) => resp.text().await.unwrap_or_default(),
                    Err(_) => String::new(),
                };
                if text.contains("tiers_entries") {
                    break;
                }
                if started.elapsed() > Duration::from_secs(30) {
                    return Err("the proxy's tiers did not open".to_string());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // Every object twice: a miss, then a hit (settled in its tier).
        for _ in 0..2 {
            for k in 0..OBJECTS {
                let resp = client
                    .get(format!("{base}/bytes/{size}?k={k}"))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                resp.bytes().await.map_err(|e| e.to_string())?;
            }
        }
        let text = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(text)
    })?;
    let script = cache.path().join("spread.lua");
    std::fs::write(
        &script,
        format!(
            "counter = 0\nrequest = function()\n  counter = counter + 1\n  return wrk.format(\"GET\", \"/bytes/{size}?k=\" .. (counter % {OBJECTS}))\nend\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let pid = proxy.0.id();
    let before = cpu_ticks(pid).ok_or("no /proc stat for the proxy")?;
    let out = Command::new("taskset")
        .args([
            "-c",
            "1",
            "wrk",
            "-t1",
            "-c16",
            &format!("-d{seconds}s"),
            "--latency",
            "-s",
        ])
        .arg(&script)
        .arg(format!("{base}/"))
        .output()
        .map_err(|e| format!("running wrk: {e}"))?;
    let after = cpu_ticks(pid).ok_or("no /proc stat for the proxy")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (requests, rps, p99_ms) =
        parse_wrk(&text).ok_or_else(|| format!("wrk printed no figures: {text}"))?;
    let after_metrics = rt
        .block_on(async {
            reqwest::Client::builder()
                .no_proxy()
                .build()
                .ok()?
                .get(format!("{base}/metrics"))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()
        })
        .unwrap_or_default();
    let per_request =
        |ticks: u64| ticks as f64 / clock_ticks_per_second() * 1e6 / requests.max(1) as f64;
    Ok(Load {
        rps,
        p99_ms,
        cpu_us_per_request: per_request(after.1 - before.1),
        user_us_per_request: per_request(after.0 - before.0),
        disk_hits: metric(&after_metrics, "cold_hits") - metric(&metrics, "cold_hits"),
        memory_hits: metric(&after_metrics, "hot_hits") - metric(&metrics, "hot_hits"),
    })
}

/// Each figure's median over `loads` (per field), or `None` if empty.
fn median(loads: &[Load]) -> Option<Load> {
    if loads.is_empty() {
        return None;
    }
    let field = |f: fn(&Load) -> f64| crate::runner::median(loads.iter().map(f).collect());
    Some(Load {
        rps: field(|l| l.rps),
        p99_ms: field(|l| l.p99_ms),
        cpu_us_per_request: field(|l| l.cpu_us_per_request),
        user_us_per_request: field(|l| l.user_us_per_request),
        disk_hits: field(|l| l.disk_hits as f64) as u64,
        memory_hits: field(|l| l.memory_hits as f64) as u64,
    })
}

/// The range of CPU per request over `loads`, as "low–high".
fn spread(loads: &[Load]) -> String {
    let (low, high) = crate::runner::range(loads.iter().map(|l| l.cpu_us_per_request));
    format!("{low:.1}–{high:.1}")
}

/// The proxy section of the report.
pub fn section(rt: &Runtime, dir: &Path, quick: bool) -> String {
    let mut out = String::new();
    let Some(binary) = proxy_binary() else {
        return "### The proxy pinned, with wrk\n\nNot measured: the proxy example is not built \
                (`cargo xtask bench` builds it; by hand: `cargo build --release --example proxy`).\n\n"
            .to_string();
    };
    let seconds = if quick { 3 } else { 8 };
    let rounds = if quick { 1 } else { 3 };
    let _ = writeln!(
        out,
        "### The proxy pinned, with wrk: CPU per request\n\n\
         The release proxy example pinned to core 0 (`taskset -c 0`), `wrk -t1 -c16 -d{seconds}s` \
         pinned to core 1, GETs spread over {OBJECTS} objects fetched twice before (a miss, then a \
         hit); the proxy's CPU time (user + system, `/proc/PID/stat`) divided by the requests \
         wrk counted. Disk hits: a 1 MiB memory tier with promotion off (the tier counters say how \
         many hits came from disk). The configurations run interleaved, {rounds} round(s); each \
         figure is the median of the rounds, the CPU's range in brackets. Ratios divide by \
         MemCache's median CPU per request; the last column divides the user-space part alone (the \
         kernel's share, sockets and copies, is the same work in every configuration).\n\n\
         | body | configuration | requests/s | p99 ms | proxy CPU µs per request (range) | of which user µs | disk hits / hits | CPU ratio vs MemCache | user CPU ratio |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    let sizes: &[usize] = if quick {
        &[16 << 10]
    } else {
        &[1 << 10, 16 << 10, 256 << 10]
    };
    let runs: [(&str, &[&str]); 3] = [
        ("pingora MemCache", &["--storage", "memcache"]),
        (
            "tiers, memory hits",
            &["--memory-mib", "512", "--durability", "none"],
        ),
        (
            "tiers, disk hits",
            &[
                "--memory-mib",
                "1",
                "--promote-on-hit",
                "0",
                "--durability",
                "none",
            ],
        ),
    ];
    // Configurations interleaved, several rounds: the machine's noise drifts
    // over seconds, so each configuration sees the same spread of it, and
    // the table gives each figure's median.
    let rounds = if quick { 1 } else { 3 };
    let mut per_size = Vec::new();
    for &size in sizes {
        let mut loads: Vec<Vec<Load>> = vec![Vec::new(); runs.len()];
        let mut failed: Vec<Option<String>> = vec![None; runs.len()];
        for _ in 0..rounds {
            for (i, (_, flags)) in runs.iter().enumerate() {
                match measure(rt, &binary, dir, size, flags, seconds) {
                    Ok(load) => loads[i].push(load),
                    Err(e) => failed[i] = Some(e),
                }
            }
        }
        let (mut base, mut user_base) = (None, None);
        let mut cpu = Vec::new();
        for (i, (label, _)) in runs.iter().enumerate() {
            let Some(load) = median(&loads[i]) else {
                let why = failed[i].as_deref().unwrap_or("no figures");
                let _ = writeln!(
                    out,
                    "| {} KiB | {label} | not measured: {why} | | | | | | |",
                    size >> 10
                );
                continue;
            };
            cpu.push(load.cpu_us_per_request);
            let ratio = load.cpu_us_per_request / *base.get_or_insert(load.cpu_us_per_request);
            let user_ratio =
                load.user_us_per_request / *user_base.get_or_insert(load.user_us_per_request);
            let hits = load.disk_hits + load.memory_hits;
            let share = if hits == 0 {
                "-".to_string()
            } else {
                format!("{:.0}%", 100.0 * load.disk_hits as f64 / hits as f64)
            };
            let spread = spread(&loads[i]);
            let _ = writeln!(
                out,
                "| {} KiB | {label} | {:.0} | {:.2} | {:.1} ({spread}) | {:.1} | {share} | {ratio:.2}× | {user_ratio:.2}× |",
                size >> 10,
                load.rps,
                load.p99_ms,
                load.cpu_us_per_request,
                load.user_us_per_request,
            );
        }
        if let [_, memory, disk] = cpu[..] {
            per_size.push(format!(
                "{} KiB {:.2}×",
                size >> 10,
                disk / memory.max(1e-9)
            ));
        }
    }
    let _ = writeln!(
        out,
        "\nProxy CPU per disk hit against per memory hit: {}.\n",
        per_size.join(", ")
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_figures() {
        let out = "Running 8s test @ http://127.0.0.1:1/\n  1 threads and 16 connections\n  Latency Distribution\n     50%  400.00us\n     99%    4.13ms\n  260684 requests in 8.00s, 4.0GB read\nRequests/sec:  32577.28\n";
        assert_eq!(parse_wrk(out), Some((260_684, 32_577.28, 4.13)));
        assert_eq!(parse_wrk("nothing"), None);
    }

    #[test]
    fn reads_a_metric_line() {
        let text = "tiers_events_total{cache=\"127.0.0.1:1\",event=\"cold_hits\",level=\"L1-L2\",tier=\"hybrid(memory, disk)\"} 12\n\
                    tiers_events_total{cache=\"127.0.0.1:1\",event=\"hot_hits\",level=\"L1-L2\",tier=\"hybrid(memory, disk)\"} 3\n";
        assert_eq!(metric(text, "cold_hits"), 12);
        assert_eq!(metric(text, "hot_hits"), 3);
        assert_eq!(metric(text, "misses"), 0);
    }

    #[test]
    fn reads_this_process_cpu_time() {
        let (user, total) = cpu_ticks(std::process::id()).expect("stat");
        assert!(user <= total);
    }
}
