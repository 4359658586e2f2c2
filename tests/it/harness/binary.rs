//! The real `fulcrum` binary as a child process, on a config file the test writes.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{refusing_addr, TestClient};

/// The `[global]` lines of two runtime shapes: one serving thread, and three (each with its own
/// runtime and accept loops, beside the main thread's daemon; the default is one per core). Lifecycle
/// tests run under both.
pub const RUNTIME_SHAPES: [&str; 2] = ["worker_threads = 1\n", "worker_threads = 3\n"];

/// The number of serving threads a [`RUNTIME_SHAPES`] entry asks for.
pub fn serving_threads_of(shape: &str) -> usize {
    shape
        .trim()
        .strip_prefix("worker_threads = ")
        .and_then(|n| n.parse().ok())
        .expect("a worker_threads line")
}

/// The release-or-debug `fulcrum` binary running as a child process, stopped (SIGKILL) when dropped.
pub struct FulcrumProcess {
    /// The child process.
    pub child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// Every stderr line read so far.
    pub log: Vec<String>,
}

impl FulcrumProcess {
    /// Runs `fulcrum run -c path` with extra environment variables.
    pub fn spawn(path: &Path, envs: &[(&str, &str)]) -> FulcrumProcess {
        let mut command = Self::command(path);
        for (key, value) in envs {
            command.env(key, value);
        }
        Self::from_command(command)
    }

    /// The `fulcrum run -c path` command, to adjust before [`Self::from_command`].
    pub fn command(path: &Path) -> std::process::Command {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_fulcrum"));
        command
            .args(["run", "-c"])
            .arg(path)
            .env("RUST_LOG", "info")
            .stderr(std::process::Stdio::piped());
        command
    }

    /// Starts `command` and follows its stderr.
    pub fn from_command(mut command: std::process::Command) -> FulcrumProcess {
        let mut child = command.spawn().expect("start fulcrum run");
        let stderr = child.stderr.take().expect("child stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        FulcrumProcess {
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// Waits (bounded) for a log line containing `text` and returns it.
    pub fn wait_for_line(&mut self, text: &str) -> String {
        if let Some(line) = self.log.iter().find(|l| l.contains(text)) {
            return line.clone();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!("no log line with `{text}`; log so far: {:#?}", self.log)
            });
            self.log.push(line.clone());
            if line.contains(text) {
                return line;
            }
        }
    }

    /// Waits (bounded) until `count` log lines contain `text` (one per serving thread, say).
    pub fn wait_for_lines(&mut self, text: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.log.iter().filter(|l| l.contains(text)).count() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "not {count} log lines with `{text}`; log so far: {:#?}",
                    self.log
                )
            });
            self.log.push(line);
        }
    }

    /// Moves the lines logged so far into [`Self::log`] without waiting; returns how many there are.
    pub fn read_log(&mut self) -> usize {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
        self.log.len()
    }

    /// The process's open file descriptors now.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|dir| dir.count())
            .expect("read /proc/PID/fd")
    }

    /// Whether the process has a thread called `name` (`/proc/PID/task/*/comm`).
    pub fn has_thread(&self, name: &str) -> bool {
        std::fs::read_dir(format!("/proc/{}/task", self.child.id()))
            .expect("read /proc/PID/task")
            .filter_map(Result::ok)
            .any(|task| {
                std::fs::read_to_string(task.path().join("comm"))
                    .is_ok_and(|comm| comm.trim() == name)
            })
    }

    /// The process's resident memory now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// The address the listener called `name` logged.
    pub fn listener_addr(&mut self, name: &str) -> SocketAddr {
        let line = self.wait_for_line(&format!("listening listener={name} "));
        line.split("addr=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("no address in `{line}`"))
    }

    /// Sends a signal (`"TERM"`, `"HUP"`, ...).
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits (bounded) for the process to exit and returns its status.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the child") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "fulcrum did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for FulcrumProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `fulcrum run` (the real binary) on a config file with one listener `public` on an ephemeral port
/// (plus `listener_keys`) and one catch-all route to upstream `app` (`upstream_keys` and the one server
/// `backend`). Returns the process, the listener's address and the directory holding the file, which must
/// outlive the process.
pub fn binary_in_front(
    backend: SocketAddr,
    listener_keys: &str,
    upstream_keys: &str,
) -> (FulcrumProcess, SocketAddr, tempfile::TempDir) {
    binary_with_global("", backend, listener_keys, upstream_keys)
}

/// [`binary_in_front`] with `[global]` keys `global`.
pub fn binary_with_global(
    global: &str,
    backend: SocketAddr,
    listener_keys: &str,
    upstream_keys: &str,
) -> (FulcrumProcess, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fulcrum.toml");
    let toml = format!(
        "[global]\n{global}\n\n\
         [[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n{listener_keys}\n\n\
         [[route]]\npath = \"/\"\nupstream = \"app\"\n\n\
         [upstream.app]\n{upstream_keys}\nservers = [{{ addr = \"{backend}\" }}]\n"
    );
    std::fs::write(&path, toml).expect("write the config");
    let mut fulcrum = FulcrumProcess::spawn(&path, &[]);
    let addr = fulcrum.listener_addr("public");
    (fulcrum, addr, dir)
}

/// The binary with an admin listener, one listener `public`, a catch-all route to `app`
/// (`upstream_keys`, `servers`), and `listener_keys` on the listener.
pub struct AdminBinary {
    /// The process (killed when dropped).
    pub process: FulcrumProcess,
    /// The `public` listener.
    pub addr: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
    /// The directory holding `fulcrum.toml`.
    pub dir: tempfile::TempDir,
}

impl AdminBinary {
    /// Starts it; see the type's doc.
    pub fn start(listener_keys: &str, upstream_keys: &str, servers: &str) -> AdminBinary {
        AdminBinary::with_route("", listener_keys, upstream_keys, servers)
    }

    /// [`AdminBinary::start`] with `route_keys` on the route.
    pub fn with_route(
        route_keys: &str,
        listener_keys: &str,
        upstream_keys: &str,
        servers: &str,
    ) -> AdminBinary {
        AdminBinary::from_toml(&format!(
            "[[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n{listener_keys}\n\n\
             [[route]]\npath = \"/\"\nupstream = \"app\"\n{route_keys}\n\n\
             [upstream.app]\n{upstream_keys}\nservers = [{servers}]\n"
        ))
    }

    /// The binary on `toml` (which must have a listener named `public`) plus an admin listener.
    pub fn from_toml(toml: &str) -> AdminBinary {
        let dir = tempfile::tempdir().expect("temp dir");
        let admin = refusing_addr();
        let path = dir.path().join("fulcrum.toml");
        std::fs::write(&path, format!("[admin]\nlisten = \"{admin}\"\n\n{toml}"))
            .expect("write the config");
        let mut process = FulcrumProcess::spawn(&path, &[]);
        let addr = process.listener_addr("public");
        AdminBinary {
            process,
            addr,
            admin,
            dir,
        }
    }

    /// `/status` of the admin API, parsed.
    pub async fn status(&self) -> serde_json::Value {
        let reply = TestClient::new()
            .get(&format!("http://{}/status", self.admin))
            .await;
        serde_json::from_str(&reply.body).expect("/status is JSON")
    }

    /// The config file it runs.
    pub fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join("fulcrum.toml")
    }

    /// Replaces `from` with `to` in the config file, sends SIGHUP and waits for "config reloaded".
    pub fn reload_replacing(&mut self, from: &str, to: &str) {
        let path = self.config_path();
        let config = std::fs::read_to_string(&path).expect("read the config");
        assert!(config.contains(from), "`{from}` is not in the config");
        std::fs::write(&path, config.replace(from, to)).expect("write the config");
        self.process.signal("HUP");
        self.process.wait_for_line("config reloaded");
    }

    /// `/metrics` of the admin API.
    pub async fn metrics(&self) -> String {
        TestClient::new()
            .get(&format!("http://{}/metrics", self.admin))
            .await
            .body
    }

    /// `fulcrum_passive_failures_total` summed over the servers of `app`.
    pub async fn passive_failures(&self) -> f64 {
        self.metrics()
            .await
            .lines()
            .filter(|line| line.starts_with("fulcrum_passive_failures_total{"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits (bounded) until no request is in flight on any server of `app`.
    pub async fn wait_none_in_flight(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let doc = self.status().await;
            let in_flight: u64 = doc["pools"][0]["servers"]
                .as_array()
                .expect("servers")
                .iter()
                .map(|s| s["in_flight"].as_u64().expect("in_flight"))
                .sum();
            if in_flight == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "still {in_flight} in flight: {doc}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
