//! Keep-alive HTTP/1.1 connections under the patched hyper (vendor/README.md), which releases a
//! connection's buffers while it is idle: several requests on one connection (pipelined in one write,
//! split across writes, heads larger than one read) lose no byte, and an idle connection costs a few
//! kilobytes, not hyper's 16 KiB of buffers.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{backend_with, one_pool, servers, text, TestProxy};

/// A proxy in front of a backend answering `METHOD PATH BODY [x-big length]`.
async fn echo_proxy() -> (TestProxy, fulcrum::demo::Backend) {
    let backend = backend_with(|request: Request<Incoming>| async move {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let big = request
            .headers()
            .get("x-big")
            .map_or(0, |value| value.as_bytes().len());
        let body = request
            .into_body()
            .collect()
            .await
            .map(|collected| collected.to_bytes())
            .unwrap_or_default();
        let body = String::from_utf8_lossy(&body).into_owned();
        text(StatusCode::OK, format!("{method} {path} {body} {big}"))
    })
    .await;
    let proxy = TestProxy::start(&one_pool(&servers(&[(backend.addr(), 1)]))).await;
    (proxy, backend)
}

/// Reads one response with a Content-Length body from `stream`, keeping what follows in `pending`.
async fn read_response(stream: &mut TcpStream, pending: &mut Vec<u8>) -> (u16, String) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).into_owned();
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|code| code.parse().ok())
                .expect("a status line");
            let length: usize = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())
                        .flatten()
                })
                .expect("a content-length");
            if pending.len() >= end + 4 + length {
                let body =
                    String::from_utf8_lossy(&pending[end + 4..end + 4 + length]).into_owned();
                pending.drain(..end + 4 + length);
                return (status, body);
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .expect("a response within 5 s")
            .expect("read");
        assert!(
            n > 0,
            "the connection closed; had {:?}",
            String::from_utf8_lossy(pending)
        );
        pending.extend_from_slice(&chunk[..n]);
    }
}

async fn connect(proxy: &TestProxy) -> TcpStream {
    let addr: SocketAddr = proxy
        .url("")
        .trim_start_matches("http://")
        .parse()
        .expect("the proxy's address");
    TcpStream::connect(addr)
        .await
        .expect("connect to the proxy")
}

#[tokio::test]
async fn three_requests_in_one_write_get_three_answers_in_order() {
    let (proxy, _backend) = echo_proxy().await;
    let mut stream = connect(&proxy).await;
    stream
        .write_all(
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
              POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
              GET /c HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await
        .expect("write");
    let mut pending = Vec::new();
    for want in ["GET /a  0", "POST /b hello 0", "GET /c  0"] {
        let (status, body) = read_response(&mut stream, &mut pending).await;
        assert_eq!((status, body.as_str()), (200, want));
    }
}

#[tokio::test]
async fn a_request_split_across_writes_and_idle_gaps_is_read_whole() {
    let (proxy, _backend) = echo_proxy().await;
    let mut stream = connect(&proxy).await;
    let mut pending = Vec::new();
    // The first request and half of the second's head arrive together; the rest only after the first
    // answer, while the connection waits with a partial head buffered.
    stream
        .write_all(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nPOST /two HTTP/1.1\r\nHo")
        .await
        .expect("write");
    let (status, body) = read_response(&mut stream, &mut pending).await;
    assert_eq!((status, body.as_str()), (200, "GET /one  0"));
    stream
        .write_all(b"st: x\r\nContent-Length: 3\r\n\r\nabc")
        .await
        .expect("write");
    let (status, body) = read_response(&mut stream, &mut pending).await;
    assert_eq!((status, body.as_str()), (200, "POST /two abc 0"));
    // Idle with nothing buffered (its buffers released), then a head sent a few bytes at a time.
    for piece in [
        &b"GET /th"[..],
        b"ree HTTP/1.1\r\n",
        b"Host: x\r\n",
        b"\r\n",
    ] {
        stream.write_all(piece).await.expect("write");
        stream.flush().await.expect("flush");
    }
    let (status, body) = read_response(&mut stream, &mut pending).await;
    assert_eq!((status, body.as_str()), (200, "GET /three  0"));
}

#[tokio::test]
async fn a_head_larger_than_one_read_buffer_is_forwarded_whole() {
    let (proxy, _backend) = echo_proxy().await;
    let mut stream = connect(&proxy).await;
    let mut pending = Vec::new();
    // 20,000 bytes of one header: more than the 8 KiB a first read takes, under the 32 KiB head limit.
    let big = "b".repeat(20_000);
    for path in ["/big1", "/big2"] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let (status, body) = read_response(&mut stream, &mut pending).await;
        assert_eq!((status, body), (200, format!("GET {path}  20000")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_costs_a_few_kilobytes_of_the_binary() {
    let backend = crate::harness::named("a").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fulcrum.toml");
    std::fs::write(
        &path,
        format!(
            "[[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n[[route]]\npath = \"/\"\nupstream = \"app\"\n[upstream.app]\nservers = [{{ addr = \"{}\" }}]\n",
            backend.addr()
        ),
    )
    .expect("write the config");
    let mut fulcrum = crate::harness::FulcrumProcess::spawn(&path, &[]);
    let addr = fulcrum.listener_addr("public");
    // Each connection makes one request, reads the answer and stays open, idle. Fifty at a time, so the
    // upstream pool the warm-up filled is enough and what grows is the client connections' cost.
    let open = |count: usize| async move {
        let wave = Arc::new(tokio::sync::Semaphore::new(50));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..count {
            let wave = Arc::clone(&wave);
            tasks.spawn(async move {
                let _turn = wave.acquire().await.expect("semaphore");
                let mut stream = TcpStream::connect(addr).await.expect("connect");
                stream
                    .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await
                    .expect("write");
                let (status, _) = read_response(&mut stream, &mut Vec::new()).await;
                assert_eq!(status, 200);
                stream
            });
        }
        let mut streams = Vec::new();
        while let Some(stream) = tasks.join_next().await {
            streams.push(stream.expect("client task"));
        }
        streams
    };
    // Warm-up, so the allocator and the upstream pool are in their steady state.
    drop(open(200).await);
    let before = fulcrum.rss_kib();
    // 800: the test and the proxy each stay under a 1,024-descriptor limit.
    let held = open(800).await;
    let after = fulcrum.rss_kib();
    // Measured here: about 2 MB for the 800 with the patch, 8.4 MB without it (hyper's buffers, of which
    // the pages written count); the bound sits between, with room both ways.
    assert!(
        after <= before + 800 * 5,
        "800 idle connections grew RSS from {before} KiB to {after} KiB"
    );
    drop(held);
}
