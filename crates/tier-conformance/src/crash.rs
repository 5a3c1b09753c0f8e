//! Crash points: run a test of the calling test binary as a child process
//! that writes and reports what it finished, kill it with SIGKILL at a
//! chosen moment, and hand back what it had reported.
//!
//! The child is an ordinary `#[test]` that does nothing unless the
//! environment variable the parent sets is present; it prints one line
//! `finished KEY GEN` for every write whose `finish` returned.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A body that names its key and generation (both in its first 8 bytes and
/// in the pattern of the rest), so a mixed or stale body is detectable: at
/// least `base` bytes, up to `spread` more depending on both.
pub fn generation_body(key: u32, gen: u32, base: usize, spread: u32) -> Vec<u8> {
    let len = base
        + ((key
            .wrapping_mul(7919)
            .wrapping_add(gen.wrapping_mul(104_729)))
            % spread) as usize;
    let mut out = Vec::with_capacity(len.max(8));
    out.extend_from_slice(&key.to_le_bytes());
    out.extend_from_slice(&gen.to_le_bytes());
    while out.len() < len {
        out.push((out.len() as u32 ^ key ^ gen.rotate_left(8)) as u8);
    }
    out
}

/// Run `child_test` of this test binary with `env`, wait until it reported
/// `after_lines` finished writes (or ended), wait `then` more, kill it with
/// SIGKILL, and return the `(key, generation)` pairs it reported.
pub fn kill_child(
    child_test: &str,
    env: &[(&str, String)],
    after_lines: usize,
    then: Duration,
) -> Vec<(u32, u32)> {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut command = Command::new(exe);
    command
        .args(["--exact", child_test, "--nocapture", "--test-threads=1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("spawn the child");
    let stdout = child.stdout.take().expect("the child's stdout");
    let mut finished = Vec::new();
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        let mut words = line.split_whitespace();
        if words.next() != Some("finished") {
            continue;
        }
        let parts: Vec<u32> = words.filter_map(|p| p.parse().ok()).collect();
        if let [key, gen] = parts[..] {
            finished.push((key, gen));
            if finished.len() >= after_lines {
                break;
            }
        }
    }
    std::thread::sleep(then);
    let _ = child.kill();
    let _ = child.wait();
    finished
}

/// A sequence of crash points against one child test and one cache
/// directory. Each child starts at a generation no earlier child used, so
/// every body a test finds names the write that produced it.
#[derive(Debug)]
pub struct KillPoints {
    child_test: &'static str,
    dir_env: &'static str,
    gen_env: &'static str,
    dir: String,
    next_gen: u32,
    gen_gap: u32,
}

impl KillPoints {
    /// Kill points for `child_test`, which finds its cache directory in
    /// `dir_env` and its first generation in `gen_env`. `gen_gap` is added
    /// after each child's last reported generation, to cover writes it made
    /// but did not get to report.
    pub fn new(
        child_test: &'static str,
        dir_env: &'static str,
        gen_env: &'static str,
        dir: &std::path::Path,
        gen_gap: u32,
    ) -> Self {
        KillPoints {
            child_test,
            dir_env,
            gen_env,
            dir: dir.display().to_string(),
            next_gen: 0,
            gen_gap,
        }
    }

    /// Run the next child and kill it `then` after it reported
    /// `after_lines` finished writes; returns what it reported.
    pub async fn kill(&mut self, after_lines: usize, then: Duration) -> Vec<(u32, u32)> {
        let env = [
            (self.dir_env, self.dir.clone()),
            (self.gen_env, self.next_gen.to_string()),
        ];
        let child_test = self.child_test;
        let lines =
            tokio::task::spawn_blocking(move || kill_child(child_test, &env, after_lines, then))
                .await
                .expect("kill the child");
        self.next_gen = lines
            .iter()
            .map(|(_, g)| g + 1)
            .max()
            .unwrap_or(self.next_gen)
            + self.gen_gap;
        lines
    }
}

/// What a storage held after a crash, for keys `crash/0..n`.
#[derive(Debug, Default)]
pub struct Found {
    /// Entries found.
    pub present: u32,
    /// Entries whose body was not the one their `x-gen` header names.
    pub corrupt: u32,
    /// The generation each found key holds.
    pub generations: std::collections::HashMap<u32, u32>,
}

/// Look up `crash/{k}` for every `k < keys` in `storage`, read each found
/// entry whole, and compare it with `body(k, gen)` for the generation its
/// `x-gen` header names. A read that fails mid-body is a test failure: after
/// a crash an entry is complete or absent.
pub async fn check_entries(
    storage: crate::DynStorage,
    keys: u32,
    body: fn(u32, u32) -> Vec<u8>,
) -> Found {
    let span = crate::support::span();
    let mut found = Found::default();
    for k in 0..keys {
        let key = pingora_cache::CacheKey::new(format!("crash/{k}"), "");
        let Some((meta, mut hit)) = storage
            .lookup(&key, &span)
            .await
            .expect("lookup after a crash")
        else {
            continue;
        };
        let gen: u32 = meta
            .headers()
            .get("x-gen")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .expect("every crash-test entry has an x-gen header");
        let mut got = Vec::new();
        while let Some(chunk) = hit
            .read_body()
            .await
            .expect("an entry found after a crash reads cleanly")
        {
            got.extend_from_slice(&chunk);
        }
        found.present += 1;
        if got != body(k, gen) {
            found.corrupt += 1;
        }
        found.generations.insert(k, gen);
    }
    found
}

/// What a process killed now would leave of the cache directory `dir`: a
/// copy of its regular files (not following symlinks; subdirectories
/// skipped) in a new temporary directory, to open beside the live tier,
/// which keeps its own directory (and its lock). Written bytes still in the
/// page cache are copied, as a killed process leaves them.
pub fn image_of(dir: &std::path::Path) -> std::io::Result<tempfile::TempDir> {
    let image = tempfile::tempdir()?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), image.path().join(entry.file_name()))?;
        }
    }
    Ok(image)
}
