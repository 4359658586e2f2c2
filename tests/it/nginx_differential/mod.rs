//! Differential tests against nginx itself: tests/fixtures/nginx/differential/nginx.conf runs under
//! /usr/sbin/nginx and, through `fulcrum import-nginx`, under fulcrum, in front of the same backends; the
//! same requests go to both and what the client and the backends see is compared. Where the two differ
//! on purpose, the test names the difference and checks that the import report states it. The gzip and
//! proxy_cache comparisons (`own_configs`) have small configs of their own (their settings would change
//! the other answers).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, StatusCode};

use crate::harness::*;

mod own_configs;

const NGINX: &str = "/usr/sbin/nginx";

/// A backend answering with its name, the request target and the headers it received (one
/// `name: value` a line); its answers carry `X-Powered-By: test`.
async fn echo(name: &'static str) -> fulcrum::demo::Backend {
    backend_with(move |request: Request<hyper::body::Incoming>| async move {
        let mut seen = format!("{name}\n{}\n", request.uri());
        for (header, value) in request.headers() {
            seen.push_str(&format!("{}: {}\n", header, value.to_str().unwrap_or("?")));
        }
        let mut response = http::Response::new(demo_body(seen));
        response
            .headers_mut()
            .insert("x-powered-by", http::HeaderValue::from_static("test"));
        Ok(response)
    })
    .await
}

/// The backends the fixture names: b1..b3 echo, h1 and h2 hold `/lc/hold` until released, dead refuses.
struct Backends {
    b: [fulcrum::demo::Backend; 3],
    h: [(fulcrum::demo::Backend, Arc<tokio::sync::Semaphore>); 2],
    dead: SocketAddr,
}

impl Backends {
    async fn start() -> Backends {
        Backends {
            b: [echo("b1").await, echo("b2").await, echo("b3").await],
            h: [
                held_backend("h1", Some("/lc/hold")).await,
                held_backend("h2", Some("/lc/hold")).await,
            ],
            dead: refusing_addr(),
        }
    }

    /// The fixture with these backends and the given listen addresses.
    fn config(&self, listen: SocketAddr, redirect: SocketAddr) -> String {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/nginx/differential/nginx.conf"),
        )
        .expect("read the differential fixture");
        text.replace("@LISTEN@", &listen.to_string())
            .replace("@REDIRECT@", &redirect.to_string())
            .replace("@B1@", &self.b[0].addr().to_string())
            .replace("@B2@", &self.b[1].addr().to_string())
            .replace("@B3@", &self.b[2].addr().to_string())
            .replace("@H1@", &self.h[0].0.addr().to_string())
            .replace("@H2@", &self.h[1].0.addr().to_string())
            .replace("@DEAD@", &self.dead.to_string())
    }
}

/// nginx in the foreground, in one process (`master_process off`), with a temp prefix; killed on drop.
struct Nginx {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (bounded) until something accepts on `addr`.
fn wait_accepting(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} does not accept on {addr}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn start_nginx(config: &str, listen: SocketAddr) -> Nginx {
    assert!(
        Path::new(NGINX).exists(),
        "{NGINX} is missing: the differential tests need nginx; install it with `apt-get install -y nginx` (scripts/test does on a fresh machine)"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("logs")).expect("logs dir");
    let conf = dir.path().join("nginx.conf");
    std::fs::write(&conf, config).expect("write nginx.conf");
    let globals = format!(
        "daemon off; master_process off; pid {0}/nginx.pid; error_log {0}/error.log;",
        dir.path().display()
    );
    let child = std::process::Command::new(NGINX)
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf)
        .args(["-g", &globals])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start nginx");
    let nginx = Nginx { child, _dir: dir };
    wait_accepting(listen, "nginx");
    nginx
}

/// `config` (nginx's syntax) through `fulcrum import-nginx`, which must exit 0, and fulcrum started on the
/// result: the directory holding both files, the process and the import's report.
fn import_and_run(config: &str) -> (tempfile::TempDir, FulcrumProcess, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = dir.path().join("nginx.conf");
    std::fs::write(&conf, config).expect("write the nginx config");
    let toml = dir.path().join("fulcrum.toml");
    let import = std::process::Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .arg("import-nginx")
        .arg(&conf)
        .arg("-o")
        .arg(&toml)
        .output()
        .expect("run import-nginx");
    let report = String::from_utf8_lossy(&import.stderr).into_owned();
    assert_eq!(import.status.code(), Some(0), "{report}");
    let fulcrum = FulcrumProcess::spawn(&toml, &[]);
    (dir, fulcrum, report)
}

/// nginx and fulcrum on the same fixture.
struct Pair {
    _nginx: Nginx,
    _fulcrum: FulcrumProcess,
    _dir: tempfile::TempDir,
    /// (nginx, fulcrum) main listeners.
    main: [SocketAddr; 2],
    /// (nginx, fulcrum) redirect listeners.
    redirect: [SocketAddr; 2],
    /// import-nginx's stderr.
    report: String,
}

fn start_pair(backends: &Backends) -> Pair {
    let (nginx_main, nginx_redirect) = (refusing_addr(), refusing_addr());
    let nginx = start_nginx(&backends.config(nginx_main, nginx_redirect), nginx_main);
    let (main, redirect) = (refusing_addr(), refusing_addr());
    let (dir, fulcrum, report) = import_and_run(&backends.config(main, redirect));
    wait_accepting(main, "fulcrum");
    wait_accepting(redirect, "fulcrum");
    Pair {
        _nginx: nginx,
        _fulcrum: fulcrum,
        _dir: dir,
        main: [nginx_main, main],
        redirect: [nginx_redirect, redirect],
        report,
    }
}

/// GET `path` on `addr` with `Host: example.test`.
async fn get(client: &TestClient, addr: SocketAddr, path: &str) -> Reply {
    client
        .get_with(&format!("http://{addr}{path}"), "host", "example.test")
        .await
}

fn first_line(reply: &Reply) -> String {
    reply.body.lines().next().unwrap_or("").to_string()
}

fn header<'a>(reply: &'a Reply, name: &str) -> Option<&'a str> {
    let prefix = format!("{name}: ");
    reply
        .body
        .lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_with_weights_sends_the_same_sequence_as_nginx() {
    let backends = Backends::start().await;
    let pair = start_pair(&backends);
    let client = TestClient::new();
    let mut sequences = Vec::new();
    for addr in pair.main {
        let mut names = Vec::new();
        for _ in 0..12 {
            names.push(first_line(&get(&client, addr, "/rr/x").await));
        }
        sequences.push(names);
    }
    assert_eq!(sequences[0], sequences[1], "nginx, then fulcrum");
    let counts = tally(sequences[1].iter().map(String::as_str));
    assert_eq!((counts["b1"], counts["b2"], counts["b3"]), (6, 2, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_serves_only_while_the_primaries_are_down_as_in_nginx() {
    let backends = Backends::start().await;
    let pair = start_pair(&backends);
    let client = TestClient::new();
    for addr in pair.main {
        for _ in 0..4 {
            assert_eq!(
                first_line(&get(&client, addr, "/bk-up/x").await),
                "b1",
                "{addr}"
            );
        }
        for _ in 0..4 {
            let reply = get(&client, addr, "/bk-down/x").await;
            assert_eq!(
                (reply.status, first_line(&reply)),
                (StatusCode::OK, "b2".to_string()),
                "{addr}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_hash_keeps_each_client_network_on_one_server_as_nginx_does() {
    let backends = Backends::start().await;
    let pair = start_pair(&backends);
    for addr in pair.main {
        for local in ["127.0.0.1", "127.0.1.1", "127.0.2.7"] {
            let client = TestClient::bound_to(Some(local.parse().expect("ip")));
            let mut names = Vec::new();
            for _ in 0..4 {
                names.push(first_line(&get(&client, addr, "/ih/x").await));
            }
            names.dedup();
            assert_eq!(names.len(), 1, "{addr} from {local}: {names:?}");
        }
    }
    // Difference on purpose, not asserted: which server a given /24 lands on (the hash functions differ).
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_sends_every_request_to_the_idle_server_while_the_other_is_busy_as_nginx_does() {
    let backends = Backends::start().await;
    let pair = start_pair(&backends);
    let client = TestClient::new();
    for addr in pair.main {
        let before = [backends.h[0].0.requests(), backends.h[1].0.requests()];
        let held_client = client.clone();
        let held = tokio::spawn(async move { get(&held_client, addr, "/lc/hold").await });
        wait_until(Duration::from_secs(5), "the held request to arrive", || {
            backends.h[0].0.requests() + backends.h[1].0.requests() == before[0] + before[1] + 1
        })
        .await;
        let busy = usize::from(backends.h[1].0.requests() > before[1]);
        let idle = if busy == 0 { "h2" } else { "h1" };
        // Every request while the other server is busy goes to the idle one; round robin would send
        // every other one to the busy server.
        for round in 0..6 {
            let reply = get(&client, addr, "/lc/quick").await;
            assert_eq!(
                reply.body, idle,
                "{addr}, request {round}: the idle server gets it"
            );
        }
        backends.h[busy].1.add_permits(1);
        let reply = held.await.expect("the held request");
        assert_eq!(reply.status, StatusCode::OK);
        // The held backend gives its permit back when its answer is made: take it again, so the next
        // proxy's request is held too.
        tokio::time::timeout(Duration::from_secs(5), backends.h[busy].1.acquire())
            .await
            .expect("the permit back within 5 s")
            .expect("the semaphore is open")
            .forget();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_and_answers_match_nginx() {
    let backends = Backends::start().await;
    let pair = start_pair(&backends);
    let client = TestClient::new();
    let mut seen = Vec::new();
    for (addr, redirect) in pair.main.into_iter().zip(pair.redirect) {
        let mut answers = Vec::new();
        answers.push(
            get(&client, addr, "/nothing/here")
                .await
                .status
                .as_u16()
                .to_string(),
        );
        let too_large = Request::post(format!("http://{addr}/rr/upload"))
            .header("host", "example.test")
            .body(body(vec![b'x'; 2048]))
            .expect("request");
        answers.push(client.send(too_large).await.status.as_u16().to_string());
        let limited: Vec<String> = {
            let mut statuses = Vec::new();
            for _ in 0..5 {
                statuses.push(
                    get(&client, addr, "/limited/x")
                        .await
                        .status
                        .as_u16()
                        .to_string(),
                );
            }
            statuses
        };
        answers.push(limited.join(","));
        let moved = get(&client, addr, "/old/page").await;
        answers.push(format!(
            "{} {}",
            moved.status.as_u16(),
            moved
                .headers
                .get("location")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        ));
        let health = get(&client, addr, "/healthz").await;
        answers.push(format!("{} {:?}", health.status.as_u16(), health.body));
        let to_https = client
            .get_with(
                &format!("http://{redirect}/a/b?c=1"),
                "host",
                "example.test",
            )
            .await;
        answers.push(
            to_https
                .headers
                .get("location")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string(),
        );
        seen.push((answers, to_https.status));
    }
    assert_eq!(seen[0].0, seen[1].0, "nginx, then fulcrum");
    assert_eq!(
        seen[1].0,
        [
            "404",
            "413",
            "200,200,200,429,429",
            "301 https://example.com/new/",
            "200 \"ok\\n\"",
            "https://example.test/a/b?c=1",
        ]
    );
    // Difference on purpose: the HTTPS redirect is 308 (the method is kept), nginx's `return 301`.
    assert_eq!(
        (seen[0].1, seen[1].1),
        (
            StatusCode::MOVED_PERMANENTLY,
            StatusCode::PERMANENT_REDIRECT
        )
    );
    assert!(
        pair.report
            .contains("return: translated with a difference: fulcrum answers 308"),
        "{}",
        pair.report
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_sees_the_same_path_and_headers_as_behind_nginx() {
    let backends = Backends::start().await;
    let pair = start_pair(&backends);
    let client = TestClient::new();
    let mut seen = Vec::new();
    for addr in pair.main {
        let request = Request::get(format!("http://{addr}/api/users?id=7"))
            .header("host", "example.test")
            .header("x-debug", "1")
            .header("x-forwarded-for", "203.0.113.9")
            .body(empty())
            .expect("request");
        let reply = client.send(request).await;
        let rewritten = get(&client, addr, "/v1/items/3").await;
        let lines: Vec<String> = vec![
            reply.body.lines().nth(1).unwrap_or("").to_string(),
            rewritten.body.lines().nth(1).unwrap_or("").to_string(),
            format!("host={:?}", header(&reply, "host")),
            format!("x-env={:?}", header(&reply, "x-env")),
            format!("x-debug={:?}", header(&reply, "x-debug")),
            format!("x-real-ip={:?}", header(&reply, "x-real-ip")),
            format!("x-forwarded-for={:?}", header(&reply, "x-forwarded-for")),
            format!(
                "x-forwarded-proto={:?}",
                header(&reply, "x-forwarded-proto")
            ),
            format!("x-frame-options={:?}", reply.headers.get("x-frame-options")),
            format!("x-powered-by={:?}", reply.headers.get("x-powered-by")),
        ];
        seen.push((
            lines,
            header(&reply, "x-forwarded-host").map(str::to_string),
        ));
    }
    assert_eq!(seen[0].0, seen[1].0, "nginx, then fulcrum");
    assert_eq!(
        seen[1].0,
        [
            "/users?id=7",
            "/v2/items/3",
            "host=Some(\"example.test\")",
            "x-env=Some(\"prod\")",
            "x-debug=None",
            "x-real-ip=Some(\"127.0.0.1\")",
            "x-forwarded-for=Some(\"203.0.113.9, 127.0.0.1\")",
            "x-forwarded-proto=Some(\"http\")",
            "x-frame-options=Some(\"DENY\")",
            "x-powered-by=None",
        ]
    );
    // Difference on purpose: fulcrum always sends X-Forwarded-Host; this nginx location does not.
    assert_eq!(seen[0].1, None);
    assert_eq!(seen[1].1.as_deref(), Some("example.test"));
    assert!(
        pair.report
            .contains("fulcrum also sends X-Forwarded-Host, which nginx does not here"),
        "{}",
        pair.report
    );
}
