//! Upstreams that fail in every way a TCP peer can: reset mid-body, close before the headers, a
//! malformed status line, an oversized header, a body shorter than its `Content-Length`. The client gets
//! a clean 502 (or a cut stream once bytes were sent), the failure counts against the server, and no
//! connection or file descriptor leaks.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::{closing_get, one_pool, sample, wait_until, FulcrumProcess, TestProxy};

/// How a raw upstream misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Headers and part of the body, then a TCP reset.
    ResetMidBody,
    /// Reads the request and closes without a byte.
    CloseBeforeHeaders,
    /// `HTTP/1.1 abc` as its status line.
    MalformedStatus,
    /// A header line of 1 MiB.
    OversizedHeader,
    /// `Content-Length: 100` and 10 bytes, then a clean close.
    ShortBody,
}

impl Failure {
    /// Every mode.
    pub const ALL: [Failure; 5] = [
        Failure::ResetMidBody,
        Failure::CloseBeforeHeaders,
        Failure::MalformedStatus,
        Failure::OversizedHeader,
        Failure::ShortBody,
    ];

    /// Whether the proxy has sent the status (200) before the failure shows.
    pub fn after_headers(self) -> bool {
        matches!(self, Failure::ResetMidBody | Failure::ShortBody)
    }
}

/// A raw TCP upstream failing with `failure` on every request.
pub async fn failing_upstream(failure: Failure) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(fail(stream, failure));
        }
    });
    addr
}

async fn fail(mut stream: TcpStream, failure: Failure) {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let _ = match failure {
        Failure::ResetMidBody => {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n0123456789")
                .await;
            let _ = stream.flush().await;
            // Let the bytes leave before the reset.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = stream.set_zero_linger();
            Ok(())
        }
        Failure::CloseBeforeHeaders => Ok(()),
        Failure::MalformedStatus => stream.write_all(b"HTTP/1.1 abc\r\n\r\n").await,
        Failure::OversizedHeader => {
            let header = format!("X-Big: {}\r\n", "a".repeat(1 << 20));
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\n").await;
            stream.write_all(header.as_bytes()).await
        }
        Failure::ShortBody => {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
                .await
        }
    };
    drop(stream);
}

#[tokio::test]
async fn each_failing_upstream_gives_a_clean_502_or_a_cut_stream_and_counts_as_a_failure() {
    for failure in Failure::ALL {
        let bad = failing_upstream(failure).await;
        // Two servers so passive health applies (nginx ignores max_fails for a lone server); max_fails
        // high so the server stays in and every request meets the failure.
        let proxy = TestProxy::start(&one_pool(&format!(
            "retries = 0\nmax_fails = 1000\nservers = [{{ addr = \"{bad}\" }}, {{ addr = \"{bad2}\", backup = true }}]",
            bad2 = crate::harness::refusing_addr(),
        )))
        .await;
        let addr = proxy.addr();
        for _ in 0..3 {
            let (status, complete) = closing_get(addr).await;
            if failure.after_headers() {
                assert_eq!(status, 200, "{failure:?}");
                assert!(!complete, "{failure:?}: the cut body looked complete");
            } else {
                assert_eq!(status, 502, "{failure:?}");
            }
        }
        let metrics = fulcrum::admin::metrics_text(proxy.proxy.live());
        let failures = sample(
            &metrics,
            "fulcrum_passive_failures_total",
            &[&bad.to_string()],
        );
        assert_eq!(failures, 3.0, "{failure:?}: passive failures");
        let in_flight: usize = proxy.proxy.live().snapshot().pools[0].primary.servers[0]
            .state
            .in_flight();
        assert_eq!(in_flight, 0, "{failure:?}: a request stayed in flight");
    }
}

/// Runs `requests` GETs to `addr` + each of `paths` in turn, `workers` at a time; returns the answers
/// (status, whole body) in no order.
async fn hammer(
    addr: SocketAddr,
    paths: &[&'static str],
    requests: usize,
) -> Vec<(&'static str, u16, bool)> {
    let workers = 32;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..workers {
        let paths = paths.to_vec();
        tasks.spawn(async move {
            let mut answers = Vec::new();
            for i in (worker..requests).step_by(workers) {
                let path = paths[i % paths.len()];
                let (status, complete) = get_path(addr, path).await;
                answers.push((path, status, complete));
            }
            answers
        });
    }
    let mut all = Vec::new();
    while let Some(answers) = tasks.join_next().await {
        all.extend(answers.expect("worker task"));
    }
    all
}

/// [`get`] for a path.
async fn get_path(addr: SocketAddr, path: &str) -> (u16, bool) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(head)) = response.parse(&answer) else {
        return (0, false);
    };
    let length: Option<usize> = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok());
    (
        response.code.unwrap_or(0),
        length.is_some_and(|length| answer.len() - head == length),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_failed_requests_leak_no_descriptor_and_log_one_line_each() {
    let paths = ["/reset", "/close", "/status", "/header", "/short"];
    let mut toml = String::from("[[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n");
    for (path, failure) in paths.iter().zip(Failure::ALL) {
        let name = &path[1..];
        let addr = failing_upstream(failure).await;
        toml.push_str(&format!(
            "[[route]]\npath = \"{path}\"\nupstream = \"{name}\"\n[upstream.{name}]\nservers = [{{ addr = \"{addr}\" }}]\n"
        ));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fulcrum.toml");
    std::fs::write(&path, toml).expect("write the config");
    let mut fulcrum = FulcrumProcess::spawn(&path, &[]);
    let addr = fulcrum.listener_addr("public");
    fulcrum.wait_for_line("fulcrum is serving");

    let check = |answers: &[(&str, u16, bool)]| {
        for (path, status, complete) in answers {
            let cut = matches!(*path, "/reset" | "/short");
            if cut {
                assert!(
                    *status == 200 && !complete,
                    "{path}: {status} complete={complete}"
                );
            } else {
                assert_eq!(*status, 502, "{path}");
            }
        }
    };
    let warmup = hammer(addr, &paths, 250).await;
    check(&warmup);
    let before = fulcrum.open_fds();
    let answers = hammer(addr, &paths, 10_000).await;
    assert_eq!(answers.len(), 10_000);
    check(&answers);
    let mut after = usize::MAX;
    wait_until(
        Duration::from_secs(10),
        "the open descriptors to come back down",
        || {
            after = fulcrum.open_fds();
            after <= before + 2
        },
    )
    .await;

    // One line per failed request (each made one attempt), and none of them a panic.
    let failure_lines = |log: &[String]| {
        log.iter()
            .filter(|line| {
                line.contains("upstream attempt failed")
                    || line.contains("upstream response body failed")
            })
            .count()
    };
    wait_until(
        Duration::from_secs(10),
        "a log line for every failed request",
        || {
            fulcrum.read_log();
            failure_lines(&fulcrum.log) >= 10_250
        },
    )
    .await;
    assert_eq!(failure_lines(&fulcrum.log), 10_250);
    assert!(!fulcrum.log.iter().any(|line| line.contains("panicked")));
    assert!(
        fulcrum.child.try_wait().expect("poll").is_none(),
        "fulcrum exited"
    );
}
