//! Zero-downtime restarts and upgrades: a listening socket that outlives the process that accepts on it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};

use crate::harness::*;

/// One request on a new connection: `Ok(status line)`, or why the connection or request failed.
fn one_request(addr: SocketAddr) -> Result<String, String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: upgrade.test\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    match answer.lines().next() {
        Some(line) if line.starts_with("HTTP/1.1 200") => Ok(line.to_string()),
        other => Err(format!("answer: {other:?}")),
    }
}

/// New connections in a loop until `stop`; returns (successes, failures).
fn load(addr: SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(usize, Vec<String>)> {
    std::thread::spawn(move || {
        let (mut ok, mut failed) = (0, Vec::new());
        while !stop.load(Ordering::SeqCst) {
            match one_request(addr) {
                Ok(_) => ok += 1,
                Err(why) => failed.push(why),
            }
        }
        (ok, failed)
    })
}

/// Sends SIGTERM to a process id when dropped (for processes the test did not spawn itself).
struct TermOnDrop(u32);

impl Drop for TermOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.0.to_string()])
            .status();
    }
}

/// The config for one listener on `listen` in front of `backend`, with `global` as its `[global]` lines.
fn write_config(
    dir: &tempfile::TempDir,
    listen: SocketAddr,
    backend: SocketAddr,
    global: &str,
) -> std::path::PathBuf {
    let path = dir.path().join("fulcrum.toml");
    std::fs::write(
        &path,
        format!(
            "[global]\n{global}[[listener]]\nname = \"public\"\nlisten = \"{listen}\"\n[[route]]\npath = \"/\"\nupstream = \"app\"\n[upstream.app]\nservers = [{{ addr = \"{backend}\" }}]\n"
        ),
    )
    .expect("write config");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_upgrade_hands_the_sockets_over_with_no_refused_connection() {
    let backend = named("app").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let listen = refusing_addr();
    let path = write_config(&dir, listen, backend.addr(), "");
    let mut old = FulcrumProcess::spawn(&path, &[]);
    old.wait_for_line("fulcrum is serving");
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(listen, Arc::clone(&stop));

    old.signal("USR2");
    let started = old.wait_for_line("upgrade: started");
    let new_pid: u32 = started
        .split("new_pid=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no new_pid in `{started}`"));
    let _new = TermOnDrop(new_pid);
    // The new process logs to the same stderr.
    old.wait_for_line(&format!("pid={new_pid}"));
    old.signal("TERM");
    assert!(old.wait_exit(Duration::from_secs(10)).success());
    // Keep the load on the new process alone for a while.
    let before = std::time::Instant::now();
    while before.elapsed() < Duration::from_millis(300) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = tokio::task::spawn_blocking(move || traffic.join().expect("load thread"))
        .await
        .expect("join");
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the upgrade: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 20, "too little load to mean anything: {ok}");
    assert!(one_request(listen).is_ok(), "the new process serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_activation_keeps_connections_waiting_across_a_restart() {
    // Both runtime shapes: the inherited socket is registered where it is accepted from (with
    // `worker_threads = 1`, the serving thread's I/O driver).
    for shape in RUNTIME_SHAPES {
        let backend = named("app").await;
        let dir = tempfile::tempdir().expect("temp dir");
        // The test plays systemd: it owns the listening socket and hands it to each fulcrum as fd 3.
        let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let listen = socket.local_addr().expect("addr");
        let path = write_config(&dir, listen, backend.addr(), shape);
        let start = || {
            let mut command = FulcrumProcess::command(&path);
            command.env("LISTEN_FDS", "1");
            command
                .fd_mappings(vec![FdMapping {
                    parent_fd: std::os::fd::OwnedFd::from(
                        socket.try_clone().expect("dup the socket"),
                    ),
                    child_fd: 3,
                }])
                .expect("map fd 3");
            let mut process = FulcrumProcess::from_command(command);
            process.wait_for_line("using an inherited socket");
            process
        };
        let mut first = start();
        first.wait_for_line("fulcrum is serving");
        let stop = Arc::new(AtomicBool::new(false));
        let traffic = load(listen, Arc::clone(&stop));
        std::thread::sleep(Duration::from_millis(200));
        first.signal("TERM");
        assert!(first.wait_exit(Duration::from_secs(10)).success());
        // Between the two processes nobody accepts: connections wait in the socket's queue.
        let mut second = start();
        second.wait_for_line("fulcrum is serving");
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::SeqCst);
        let (ok, failed) = traffic.join().expect("load thread");
        assert!(
            failed.is_empty(),
            "{} requests failed across the restart: {:?}",
            failed.len(),
            &failed[..failed.len().min(5)]
        );
        assert!(ok > 20, "too little load to mean anything: {ok}");
    }
}
