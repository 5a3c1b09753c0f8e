//! `cargo xtask`: the project's one entry point for checks and benchmarks.
//!
//! - `cargo xtask ci`: every check CI runs, in order, stopping at the first
//!   failure: build prerequisites, fmt, clippy, tests, docs, the crate layering
//!   rules, the README's first example against its file, and cargo-deny.
//! - `cargo xtask bench [--quick] [ARGS]`: the benchmark report (`tier-bench`),
//!   built in release mode with the peers enabled.
//!
//! This crate uses only the standard library, so it builds in seconds.

mod layering;
mod readme;

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let root = workspace_root();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(&root),
        Some("bench") => bench(&root, &args[1..]),
        Some("layering") => layering::check(&root),
        Some("readme") => readme::check(&root),
        _ => {
            eprintln!("usage: cargo xtask <ci | bench [--quick] [ARGS] | layering | readme>");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("xtask: {why}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    // CARGO_MANIFEST_DIR is xtask/; the workspace is its parent.
    let manifest_dir = env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or(manifest_dir)
}

fn cargo() -> String {
    env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

/// Run one named step, printing its duration; `Err` stops the caller.
fn step(name: &str, run: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    println!("==> {name}");
    let started = Instant::now();
    let result = run();
    let took = started.elapsed().as_secs_f64();
    match &result {
        Ok(()) => println!("<== {name}: ok in {took:.1}s"),
        Err(why) => println!("<== {name}: FAILED in {took:.1}s: {why}"),
    }
    result.map_err(|why| format!("step `{name}` failed: {why}"))
}

fn run(root: &Path, program: &str, args: &[&str], envs: &[(&str, &str)]) -> Result<(), String> {
    println!("    $ {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(root)
        .status()
        .map_err(|e| format!("could not start {program}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` exited with {status}",
            args.join(" ")
        ))
    }
}

/// Whether `program` runs at all (is on PATH). Its exit status does not
/// count: `wrk --version` prints its version and exits 1.
fn have(program: &str) -> bool {
    Command::new(program).arg("--version").output().is_ok()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// Whether `needed` is there: a program on PATH, or (starting with `/`) a
/// file, such as a library's header.
fn present(needed: &str) -> bool {
    if needed.starts_with('/') {
        Path::new(needed).exists()
    } else {
        have(needed)
    }
}

/// Install a Debian package when running as root on Debian; otherwise fail
/// with the exact command the user must run. `program` is a program the
/// package provides, or the absolute path of a file it installs.
fn ensure_debian_package(root: &Path, program: &str, package: &str) -> Result<(), String> {
    if present(program) {
        println!("    {program}: found");
        return Ok(());
    }
    let debian = Path::new("/etc/debian_version").exists();
    if !(debian && is_root()) {
        return Err(format!(
            "`{program}` is missing and is needed to build or test; install it with: \
             sudo apt-get update && sudo apt-get install -y {package}"
        ));
    }
    println!("    {program}: missing, installing Debian package {package}");
    run(root, "apt-get", &["update", "-qq"], &[])?;
    run(
        root,
        "apt-get",
        &["install", "-y", "-qq", package],
        &[("DEBIAN_FRONTEND", "noninteractive")],
    )?;
    if present(program) {
        Ok(())
    } else {
        Err(format!(
            "installed {package} but `{program}` is still not on PATH"
        ))
    }
}

/// cmake for pingora's zlib-ng; redis-server (and redis-cli) for the Redis
/// tier's tests, benchmarks and examples, which start their own servers;
/// OpenSSL's headers and pkg-config for the proxy example's `tls` feature.
fn prerequisites(root: &Path) -> Result<(), String> {
    step(
        "prerequisites (cmake for pingora's zlib-ng, redis-server for tier-redis, libssl-dev for the proxy's TLS)",
        || {
            ensure_debian_package(root, "cmake", "cmake")?;
            ensure_debian_package(root, "redis-server", "redis-server")?;
            ensure_debian_package(root, "redis-cli", "redis-tools")?;
            ensure_debian_package(root, "pkg-config", "pkg-config")?;
            ensure_debian_package(root, "/usr/include/openssl/ssl.h", "libssl-dev")?;
            ensure_debian_package(root, "openssl", "openssl")
        },
    )
}

fn ci(root: &Path) -> Result<(), String> {
    let cargo = cargo();
    let started = Instant::now();
    prerequisites(root)?;
    step("fmt", || {
        run(root, &cargo, &["fmt", "--all", "--check"], &[])
    })?;
    step("clippy", || {
        run(
            root,
            &cargo,
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
            &[],
        )
    })?;
    step("test", || {
        let before = processes_named("redis-server");
        run(root, &cargo, &["test", "--workspace"], &[])?;
        left_behind(&before, "redis-server")
    })?;
    step(
        "tls (the proxy example with pingora's OpenSSL: HTTPS origins)",
        || {
            run(
                root,
                &cargo,
                &[
                    "clippy",
                    "-p",
                    "examples",
                    "--features",
                    "tls",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ],
                &[],
            )?;
            run(
                root,
                &cargo,
                &[
                    "test",
                    "-p",
                    "examples",
                    "--features",
                    "tls",
                    "--test",
                    "proxy_e2e",
                    "https",
                ],
                &[],
            )
        },
    )?;
    step("doc", || {
        run(
            root,
            &cargo,
            &["doc", "--workspace", "--no-deps"],
            &[("RUSTDOCFLAGS", "-D warnings")],
        )
    })?;
    step("layering", || layering::check(root))?;
    step("readme", || readme::check(root))?;
    step("deny", || deny(root, &cargo))?;
    println!(
        "xtask ci: all steps passed in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// PIDs of running processes whose command name is `name` (Linux `/proc`).
fn processes_named(name: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == name)
        })
        .collect()
}

/// Fail if the tests left `name` processes running that were not running
/// before them, and stop those, so a test that leaks a server is found.
fn left_behind(before: &[u32], name: &str) -> Result<(), String> {
    let leaked: Vec<u32> = processes_named(name)
        .into_iter()
        .filter(|pid| !before.contains(pid))
        .collect();
    if leaked.is_empty() {
        println!("    no {name} left running by the tests");
        return Ok(());
    }
    for pid in &leaked {
        let _ = Command::new("kill").arg(pid.to_string()).status();
    }
    Err(format!(
        "the tests left {} {name} process(es) running (pids {leaked:?}, now stopped): \
         a test keeps a server it never drops, such as one in a static",
        leaked.len()
    ))
}

fn deny(root: &Path, cargo: &str) -> Result<(), String> {
    let installed = Command::new(cargo)
        .args(["deny", "--version"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !installed {
        println!("    cargo-deny: missing, installing it from crates.io");
        run(root, cargo, &["install", "--locked", "cargo-deny"], &[])?;
    }
    println!(
        "    advisories: SKIPPED, the RustSec advisory database cannot be fetched \
         on this machine (no network beyond the package registries)"
    );
    run(
        root,
        cargo,
        &["deny", "check", "bans", "licenses", "sources"],
        &[],
    )
}

fn bench(root: &Path, args: &[String]) -> Result<(), String> {
    let cargo = cargo();
    prerequisites(root)?;
    // The proxy section runs the release proxy example against wrk.
    step(
        "bench prerequisites (wrk; the release proxy example)",
        || {
            ensure_debian_package(root, "wrk", "wrk")?;
            run(
                root,
                &cargo,
                &[
                    "build",
                    "--release",
                    "--package",
                    "examples",
                    "--example",
                    "proxy",
                ],
                &[],
            )
        },
    )?;
    // The throughput report first, then the per-entry memory figures, which
    // need a counting allocator and so run in a binary of their own.
    for bin in ["tier-bench", "overhead"] {
        let mut cmd = vec![
            "run",
            "--release",
            "--package",
            "tier-bench",
            "--features",
            "peers",
            "--bin",
            bin,
            "--",
        ];
        cmd.extend(args.iter().map(String::as_str));
        run(root, &cargo, &cmd, &[])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_left_running_is_found_and_stopped() {
        let before = processes_named("sleep");
        let mut child = Command::new("sleep").arg("30").spawn().expect("sleep");
        assert!(processes_named("sleep").contains(&child.id()));
        let found = left_behind(&before, "sleep");
        assert!(found.is_err_and(|e| e.contains(&child.id().to_string())));
        let status = child.wait().expect("wait");
        assert!(!status.success(), "the leaked process was not stopped");
        assert!(left_behind(&before, "sleep").is_ok());
    }
}
