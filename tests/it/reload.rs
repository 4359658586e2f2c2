//! Hot reload, listeners across reloads, graceful shutdown and the systemd notify protocol.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use fulcrum::demo::Backend;
use http::StatusCode;

use crate::harness::*;

/// A config with one listener on `listen`, a catch-all route and one upstream built from `upstream_body`.
fn config_on(listen: &str, upstream_body: &str) -> String {
    format!(
        "[[listener]]\nname = \"public\"\nlisten = \"{listen}\"\n[[route]]\npath = \"/\"\nupstream = \"pool\"\n[upstream.pool]\n{upstream_body}\n"
    )
}

/// A pool of the one server at `addr`.
fn one_server(addr: std::net::SocketAddr) -> String {
    format!("servers = [{{ addr = \"{addr}\" }}]")
}

fn list(backends: &[&Backend], weights: &[u32]) -> String {
    let entries: Vec<String> = backends
        .iter()
        .zip(weights)
        .map(|(b, w)| format!("{{ addr = \"{}\", weight = {w} }}", b.addr()))
        .collect();
    format!("servers = [{}]", entries.join(", "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reloads_under_load_fail_no_request_and_end_on_the_last_config() {
    let backends = [
        named("a").await,
        named("b").await,
        named("c").await,
        named("d").await,
    ];
    let [a, b, c, d] = &backends;
    let variants = [
        format!("strategy = \"round_robin\"\n{}", list(&[a, b], &[1, 1])),
        format!(
            "strategy = \"least_conn\"\n{}",
            list(&[a, b, c], &[3, 2, 1])
        ),
        format!("strategy = \"weighted\"\n{}", list(&[b, c, d], &[1, 5, 1])),
        format!("strategy = \"ip_hash\"\n{}", list(&[c, d], &[1, 1])),
        format!(
            "strategy = \"consistent_hash\"\nhash_key = \"path\"\n{}",
            list(&[a, d], &[2, 1])
        ),
    ];
    let mut proxy = TestProxy::start(&config_on("127.0.0.1:0", &variants[0])).await;
    let url = proxy.url("/");
    let load = SteadyLoad::start(&url, 4);
    for round in 0..50 {
        let config = fulcrum::Config::parse(
            &config_on("127.0.0.1:0", &variants[round % variants.len()]),
            Path::new("reload.toml"),
        )
        .expect("a valid config");
        proxy.proxy.reload(config).expect("reload");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let last = fulcrum::Config::parse(
        &config_on(
            "127.0.0.1:0",
            &format!("strategy = \"round_robin\"\n{}", list(&[d], &[1])),
        ),
        Path::new("reload.toml"),
    )
    .expect("a valid config");
    proxy.proxy.reload(last).expect("reload");
    let total = load.finish_all_ok("during reloads").await;
    assert!(total >= 100, "too little load to mean anything: {total}");
    let client = TestClient::new();
    for _ in 0..10 {
        assert_eq!(
            client.get(&url).await.body,
            "d",
            "traffic follows the last config"
        );
    }
    assert_eq!(proxy.url("/"), url, "the listener kept its socket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_file_keeps_the_old_config_serving_and_counts_the_failure() {
    let a = named("a").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fulcrum.toml");
    let good = config_on("127.0.0.1:0", &one_server(a.addr()));
    std::fs::write(&path, &good).expect("write config");
    let mut proxy = TestProxy::start(&good).await;
    std::fs::write(&path, format!("{good}\nbroken = [\n")).expect("write broken config");
    assert!(fulcrum::daemon::reload(&mut proxy.proxy, &path, "test").is_err());
    assert_eq!(proxy.proxy.live().reload_counts(), (0, 1));
    let reply = TestClient::new().get(&proxy.url("/")).await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_down_and_in_flight_survive_a_reload() {
    let (slow, gate) = held_backend("slow", None).await;
    let b = named("b").await;
    let dead = refusing_addr();
    let servers = |weight: u32| {
        format!(
            "strategy = \"least_conn\"\nservers = [{{ addr = \"{}\", weight = {weight} }}, {{ addr = \"{}\" }}, {{ addr = \"{dead}\" }}]",
            slow.addr(),
            b.addr()
        )
    };
    let mut proxy = TestProxy::start(&config_on("127.0.0.1:0", &servers(1))).await;
    let client = TestClient::new();
    // The first requests find the dead server and take it out (max_fails = 1).
    let held_request = send_held(&client, proxy.url("/"), &slow, 1).await;
    for _ in 0..4 {
        assert_eq!(client.get(&proxy.url("/")).await.body, "b");
    }
    let config =
        fulcrum::Config::parse(&config_on("127.0.0.1:0", &servers(2)), Path::new("r.toml"))
            .expect("a valid config");
    proxy.proxy.reload(config).expect("reload");
    let pool = &proxy.proxy.live().snapshot().pools[0];
    assert_eq!(
        pool.primary.servers[0].state.in_flight(),
        1,
        "in-flight count kept"
    );
    assert!(
        !pool.primary.servers[2]
            .state
            .healthy(fulcrum::clock::now_ms()),
        "down server stays down"
    );
    for _ in 0..4 {
        assert_eq!(
            client.get(&proxy.url("/")).await.body,
            "b",
            "least_conn still sees the held request"
        );
    }
    gate.add_permits(1);
    assert_eq!(held_request.await.expect("held request").body, "slow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_listeners() {
    let a = named("a").await;
    let servers = one_server(a.addr());
    let first = refusing_addr();
    let second = refusing_addr();
    let mut proxy = TestProxy::start(&config_on(&first.to_string(), &servers)).await;
    let both = format!(
        "{}[[listener]]\nname = \"second\"\nlisten = \"{second}\"\n",
        config_on(&first.to_string(), &servers)
    );
    let config = fulcrum::Config::parse(&both, Path::new("r.toml")).expect("a valid config");
    proxy.proxy.reload(config).expect("reload");
    let client = TestClient::new();
    assert_eq!(
        client.get(&format!("http://{second}/")).await.body,
        "a",
        "the added listener accepts"
    );
    let only_second = format!(
        "[[listener]]\nname = \"second\"\nlisten = \"{second}\"\n[[route]]\npath = \"/\"\nupstream = \"pool\"\n[upstream.pool]\n{servers}\n"
    );
    let config = fulcrum::Config::parse(&only_second, Path::new("r.toml")).expect("a valid config");
    proxy.proxy.reload(config).expect("reload");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(first).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the removed listener still accepts"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(client.get(&format!("http://{second}/")).await.body, "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_that_cannot_bind_changes_nothing() {
    let a = named("a").await;
    let b = named("b").await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut proxy = TestProxy::start(&config_on("127.0.0.1:0", &one_server(a.addr()))).await;
    let text = format!(
        "{}[[listener]]\nname = \"clash\"\nlisten = \"{}\"\n",
        config_on("127.0.0.1:0", &one_server(b.addr())),
        taken.local_addr().expect("addr")
    );
    let config = fulcrum::Config::parse(&text, Path::new("r.toml")).expect("a valid config");
    assert!(proxy.proxy.reload(config).is_err());
    assert_eq!(
        TestClient::new().get(&proxy.url("/")).await.body,
        "a",
        "old config still serves"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_changes_reload_the_binary_for_rename_and_symlink_swaps() {
    let a = named("a").await;
    let b = named("b").await;
    let c = named("c").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let listen = refusing_addr();
    let pool = |backend: &Backend| config_on(&listen.to_string(), &one_server(backend.addr()));
    // A Kubernetes ConfigMap volume: fulcrum.toml -> ..data/fulcrum.toml, ..data -> a versioned directory.
    let v1 = dir.path().join("..v1");
    std::fs::create_dir(&v1).expect("mkdir");
    std::fs::write(v1.join("fulcrum.toml"), pool(&a)).expect("write");
    std::os::unix::fs::symlink("..v1", dir.path().join("..data")).expect("symlink");
    let path = dir.path().join("fulcrum.toml");
    std::os::unix::fs::symlink("..data/fulcrum.toml", &path).expect("symlink");
    let mut fulcrum = FulcrumProcess::spawn(&path, &[]);
    fulcrum.listener_addr("public");
    let client = TestClient::new();
    let url = format!("http://{listen}/");
    assert_eq!(client.get(&url).await.body, "a");

    // The symlink swap: a new version directory, a temporary link renamed over `..data`.
    let v2 = dir.path().join("..v2");
    std::fs::create_dir(&v2).expect("mkdir");
    std::fs::write(v2.join("fulcrum.toml"), pool(&b)).expect("write");
    std::os::unix::fs::symlink("..v2", dir.path().join("..data_tmp")).expect("symlink");
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).expect("rename");
    wait_for_body(&client, &url, "b").await;

    // An editor's save: write a temporary file, rename it over the target (here, over the symlink).
    let temp = dir.path().join(".fulcrum.toml.swp");
    std::fs::write(&temp, pool(&c)).expect("write");
    std::fs::rename(&temp, &path).expect("rename");
    wait_for_body(&client, &url, "c").await;
}

async fn wait_for_body(client: &TestClient, url: &str, body: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = client.get(url).await;
        assert_eq!(reply.status, StatusCode::OK);
        if reply.body == body {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the file change was not picked up (still `{}`)",
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The binary with `[global]` keys `shape` and `global` and [`config_on`] a free port with
/// `upstream_body`; the directory holds its config.
fn spawn_with_global(
    shape: &str,
    global: &str,
    upstream_body: &str,
) -> (FulcrumProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fulcrum.toml");
    std::fs::write(
        &path,
        format!(
            "[global]\n{shape}{global}{}",
            config_on("127.0.0.1:0", upstream_body)
        ),
    )
    .expect("write config");
    (FulcrumProcess::spawn(&path, &[]), dir)
}

/// A fulcrum process sent SIGTERM while a request waits on its backend.
struct Draining {
    fulcrum: FulcrumProcess,
    addr: std::net::SocketAddr,
    /// The client's request, sent at `sent`.
    in_flight: tokio::task::JoinHandle<Reply>,
    sent: Instant,
    _dir: tempfile::TempDir,
}

/// Starts fulcrum under `shape` and the `global` keys, in front of one pool (`upstream_body`), sends one
/// request that `backend` holds, and sends SIGTERM; returns once the listener has stopped accepting on
/// every serving thread, with the request still waiting (checked: otherwise the drain would not be what a test sees).
async fn draining_with_request_in_flight(
    shape: &str,
    global: &str,
    upstream_body: &str,
    backend: &Backend,
) -> Draining {
    let (mut fulcrum, dir) = spawn_with_global(shape, global, upstream_body);
    let addr = fulcrum.listener_addr("public");
    let threads = serving_threads_of(shape);
    // A thread takes its name once it runs, which on a busy machine may be after the listener is up.
    wait_until(Duration::from_secs(5), "the last serving thread", || {
        fulcrum.has_thread(&format!("fulcrum-serve-{}", threads - 1))
    })
    .await;
    assert!(
        !fulcrum.has_thread(&format!("fulcrum-serve-{threads}")),
        "`{shape}`: no more serving threads than asked for"
    );
    let client = TestClient::new();
    let sent = Instant::now();
    let in_flight = tokio::spawn(async move { client.get(&format!("http://{addr}/")).await });
    wait_until(
        Duration::from_secs(5),
        "the request to reach the backend",
        || backend.requests() == 1,
    )
    .await;
    fulcrum.signal("TERM");
    // Every serving thread stops its own accept loop (and closes its duplicate of the socket).
    fulcrum.wait_for_lines("stopped accepting", threads);
    assert!(
        !in_flight.is_finished(),
        "`{shape}`: the request was answered before the drain began"
    );
    Draining {
        fulcrum,
        addr,
        in_flight,
        sent,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_request_in_flight_finish_refuses_new_connections_and_exits_0() {
    for shape in RUNTIME_SHAPES {
        let (slow, gate) = held_backend("finished", None).await;
        let Draining {
            mut fulcrum,
            addr,
            in_flight,
            ..
        } = draining_with_request_in_flight(shape, "", &one_server(slow.addr()), &slow).await;
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "`{shape}`: a new connection after SIGTERM is refused"
        );
        gate.add_permits(1);
        let reply = in_flight.await.expect("request task");
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (StatusCode::OK, "finished"),
            "`{shape}`"
        );
        let status = fulcrum.wait_exit(Duration::from_secs(10));
        assert!(status.success(), "`{shape}`: exit status {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_while_draining_still_gets_its_504_at_read_timeout() {
    // The upstream never answers; SIGTERM comes while the request waits. The drain (shutdown_timeout
    // 20 s) must not stretch the request's read_timeout: its 504 comes at 1 s, then fulcrum exits.
    for shape in RUNTIME_SHAPES {
        let (stuck, _gate) = held_backend("never", None).await;
        let Draining {
            mut fulcrum,
            in_flight,
            sent,
            ..
        } = draining_with_request_in_flight(
            shape,
            "shutdown_timeout = \"20s\"\n",
            &format!("read_timeout = \"1s\"\n{}", one_server(stuck.addr())),
            &stuck,
        )
        .await;
        let reply = in_flight.await.expect("request task");
        let took = sent.elapsed();
        assert_eq!(
            reply.status,
            StatusCode::GATEWAY_TIMEOUT,
            "`{shape}`: {}",
            reply.body
        );
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_secs(8),
            "`{shape}`: the 504 came after {took:?}"
        );
        let status = fulcrum.wait_exit(Duration::from_secs(10));
        assert!(status.success(), "`{shape}`: exit status {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_reloading_watchdog_and_stopping() {
    let a = named("a").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let path = dir.path().join("fulcrum.toml");
    std::fs::write(&path, config_on("127.0.0.1:0", &one_server(a.addr()))).expect("write config");
    let notify_socket = socket_path.to_string_lossy().into_owned();
    let mut fulcrum = FulcrumProcess::spawn(
        &path,
        &[
            ("NOTIFY_SOCKET", notify_socket.as_str()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    let mut heard = Vec::new();
    let next_until = |want: &str, heard: &mut Vec<String>| {
        let mut buf = [0u8; 1024];
        loop {
            let n = socket
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("no `{want}` from fulcrum ({e}); heard {heard:?}"));
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            heard.push(message.clone());
            if message.lines().any(|line| line == want) {
                return;
            }
        }
    };
    next_until("READY=1", &mut heard);
    fulcrum.listener_addr("public");
    next_until("WATCHDOG=1", &mut heard);
    fulcrum.signal("HUP");
    next_until("RELOADING=1", &mut heard);
    next_until("READY=1", &mut heard);
    fulcrum.signal("TERM");
    next_until("STOPPING=1", &mut heard);
    assert!(fulcrum.wait_exit(Duration::from_secs(10)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_command_and_sighup_only_mode() {
    for shape in RUNTIME_SHAPES {
        let a = named("a").await;
        let b = named("b").await;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("fulcrum.toml");
        let pid_file = dir.path().join("fulcrum.pid");
        let listen = refusing_addr();
        let config = |backend: &Backend| {
            format!(
                "[global]\nwatch_config = false\n{shape}pid_file = \"{}\"\n{}",
                pid_file.display(),
                config_on(&listen.to_string(), &one_server(backend.addr()))
            )
        };
        let reload_command = || {
            std::process::Command::new(env!("CARGO_BIN_EXE_fulcrum"))
                .args(["reload", "-c"])
                .arg(&path)
                .output()
                .expect("run fulcrum reload")
        };
        std::fs::write(&path, config(&a)).expect("write config");
        let mut fulcrum = FulcrumProcess::spawn(&path, &[]);
        fulcrum.wait_for_line("fulcrum is serving");
        let client = TestClient::new();
        let url = format!("http://{listen}/");
        std::fs::write(&path, config(&b)).expect("write config");
        // With watch_config = false an edit alone changes nothing, however long we wait for the watcher's
        // debounce (200 ms) several times over.
        let until = Instant::now() + Duration::from_millis(800);
        while Instant::now() < until {
            assert_eq!(client.get(&url).await.body, "a");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // `fulcrum reload` validates the file and signals the pid in pid_file.
        let output = reload_command();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        fulcrum.wait_for_line("config reloaded trigger=\"SIGHUP\"");
        assert_eq!(client.get(&url).await.body, "b");
        // A broken file: `fulcrum reload` refuses it without signalling; a SIGHUP logs file, line and key.
        std::fs::write(
            &path,
            format!(
                "{}\n[upstream.pool.health_check]\ninterval = \"0s\"\n",
                config(&b)
            ),
        )
        .expect("write config");
        let output = reload_command();
        assert!(!output.status.success());
        fulcrum.signal("HUP");
        let refused = fulcrum.wait_for_line("reload refused");
        assert!(
            refused.contains(&format!("{}:", path.display()))
                && refused.contains("upstream.pool.health_check.interval"),
            "{refused}"
        );
        assert_eq!(
            client.get(&url).await.body,
            "b",
            "the old config keeps serving"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_sigterm_and_sigquit_exit_at_once() {
    let signals = [("TERM", Some("TERM")), ("QUIT", None)];
    for (shape, (first, second)) in RUNTIME_SHAPES
        .into_iter()
        .flat_map(|shape| signals.map(|s| (shape, s)))
    {
        let (slow, gate) = held_backend("slow", None).await;
        let (mut fulcrum, _dir) = spawn_with_global(
            shape,
            "shutdown_timeout = \"60s\"\n",
            &one_server(slow.addr()),
        );
        let addr = fulcrum.listener_addr("public");
        let client = TestClient::new();
        let held = tokio::spawn(async move {
            let _ = tokio::time::timeout(
                Duration::from_secs(30),
                client.get(&format!("http://{addr}/")),
            )
            .await;
        });
        wait_until(Duration::from_secs(5), "the request to be held", || {
            slow.requests() == 1
        })
        .await;
        fulcrum.signal(first);
        if let Some(second) = second {
            fulcrum.wait_for_line("shutting down");
            fulcrum.signal(second);
        }
        // shutdown_timeout is 60 s and the request is still held: only an immediate exit ends this soon.
        let status = fulcrum.wait_exit(Duration::from_secs(5));
        assert!(status.success(), "`{shape}` {first}: exit status {status}");
        held.abort();
        gate.add_permits(1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuseport_lets_two_processes_share_an_address() {
    let a = named("a").await;
    let listen = refusing_addr();
    let config = |reuseport: bool| {
        format!(
            "[[listener]]\nname = \"public\"\nlisten = \"{listen}\"\nreuseport = {reuseport}\n[[route]]\nupstream = \"pool\"\n[upstream.pool]\nservers = [{{ addr = \"{}\" }}]\n",
            a.addr()
        )
    };
    let parse =
        |text: &str| fulcrum::Config::parse(text, Path::new("r.toml")).expect("a valid config");
    let first = fulcrum::start(parse(&config(true)))
        .await
        .expect("bind the first");
    let second = fulcrum::start(parse(&config(true)))
        .await
        .expect("a second listener on the same address with reuseport");
    assert!(
        fulcrum::start(parse(&config(false))).await.is_err(),
        "without reuseport the address is taken"
    );
    let reply = TestClient::new().get(&format!("http://{listen}/")).await;
    assert_eq!(reply.body, "a");
    second.shutdown().await;
    first.shutdown().await;
}
