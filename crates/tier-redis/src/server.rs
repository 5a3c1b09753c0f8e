//! Real `redis-server` processes for tests, examples and benchmarks (feature
//! `test-server`): one node on a unix socket, or a Cluster of three primaries
//! on loopback, each in its own temp directory, stopped when dropped.
//!
//! Needs Debian's `redis-server` and `redis-cli` on `PATH`
//! (`apt-get install redis-server`; `cargo xtask ci` installs them).

use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

fn missing(e: io::Error, program: &str) -> io::Error {
    if e.kind() == io::ErrorKind::NotFound {
        io::Error::new(
            e.kind(),
            format!(
                "{program} not found: install Debian's redis-server package (cargo xtask ci does)"
            ),
        )
    } else {
        e
    }
}

fn spawn(dir: &Path, args: &[String]) -> io::Result<Child> {
    Command::new("redis-server")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| missing(e, "redis-server"))
}

fn cli(target: &[String], args: &[&str]) -> io::Result<String> {
    let out = Command::new("redis-cli")
        .args(target)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| missing(e, "redis-cli"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if ready() {
            return Ok(());
        }
        sleep(Duration::from_millis(20));
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{what} not ready after 20 s"),
    ))
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// One `redis-server` on a unix socket in a temp directory, without
/// persistence.
#[derive(Debug)]
pub struct RedisServer {
    dir: tempfile::TempDir,
    args: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Start a server with default settings.
    pub fn start() -> io::Result<Self> {
        Self::start_with(&[])
    }

    /// Start a server with extra `redis-server` arguments, such as
    /// `["--maxmemory", "8mb", "--maxmemory-policy", "allkeys-lru"]`.
    pub fn start_with(extra: &[&str]) -> io::Result<Self> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("redis.sock");
        let mut args: Vec<String> = [
            "--port",
            "0",
            "--unixsocket",
            &socket.to_string_lossy(),
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut server = RedisServer {
            dir,
            args,
            child: None,
        };
        server.restart()?;
        Ok(server)
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// The URL a client connects with.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    /// Run `redis-cli` against this server and return what it printed.
    pub fn cli(&self, args: &[&str]) -> io::Result<String> {
        cli(
            &["-s".into(), self.socket().to_string_lossy().into_owned()],
            args,
        )
    }

    /// Kill the server (SIGKILL), as a crash or a network cut looks to a client.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop(&mut child);
        }
        let _ = std::fs::remove_file(self.socket());
    }

    /// Stop the server answering without closing its connections (SIGSTOP),
    /// as a stalled or overloaded server looks to a client.
    pub fn freeze(&self) -> io::Result<()> {
        self.signal("-STOP")
    }

    /// Let a frozen server answer again (SIGCONT).
    pub fn thaw(&self) -> io::Result<()> {
        self.signal("-CONT")
    }

    fn signal(&self, signal: &str) -> io::Result<()> {
        let Some(child) = &self.child else {
            return Err(io::Error::other("the server is stopped"));
        };
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!("kill {signal} failed")))
        }
    }

    /// Start the server again on the same socket (empty: nothing persisted).
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        self.child = Some(spawn(self.dir.path(), &self.args)?);
        wait_for("redis-server", || {
            self.cli(&["PING"]).is_ok_and(|out| out.trim() == "PONG")
        })
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Redis Cluster of three primaries (no replicas) on loopback ports.
#[derive(Debug)]
pub struct RedisCluster {
    _dir: tempfile::TempDir,
    ports: Vec<u16>,
    children: Vec<Child>,
}

/// A port that is free, and whose cluster bus port (+10000) is free too.
fn cluster_port() -> io::Result<u16> {
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return Ok(port);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "no free port pair for a cluster node",
    ))
}

impl RedisCluster {
    /// Start three nodes, join them and wait until every slot is served.
    pub fn start() -> io::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut cluster = RedisCluster {
            _dir: dir,
            ports: Vec::new(),
            children: Vec::new(),
        };
        for i in 0..3 {
            let port = cluster_port()?;
            let node_dir = cluster._dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir)?;
            let args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--save",
                "",
                "--appendonly",
                "no",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            cluster.children.push(spawn(&node_dir, &args)?);
            cluster.ports.push(port);
        }
        for port in cluster.ports.clone() {
            wait_for("cluster node", || {
                Self::node_cli(port, &["PING"]).is_ok_and(|out| out.trim() == "PONG")
            })?;
        }
        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(nodes.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        cli(&[], &args)?;
        for port in cluster.ports.clone() {
            wait_for("cluster state ok", || {
                Self::node_cli(port, &["CLUSTER", "INFO"])
                    .is_ok_and(|out| out.contains("cluster_state:ok"))
            })?;
        }
        Ok(cluster)
    }

    fn node_cli(port: u16, args: &[&str]) -> io::Result<String> {
        cli(
            &[
                "-h".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
            ],
            args,
        )
    }

    /// The nodes' URLs, for [`RedisConfig::cluster`](crate::RedisConfig::cluster).
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// Run `redis-cli` against node `index` and return what it printed.
    pub fn cli(&self, index: usize, args: &[&str]) -> io::Result<String> {
        Self::node_cli(self.ports[index], args)
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            stop(child);
        }
    }
}
