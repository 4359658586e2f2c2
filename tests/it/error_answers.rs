//! The proxy's own answers: 404, 413, 502, 504, each with a short plain-text body.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_answers_404() {
    let backend = named("a").await;
    let proxy = TestProxy::start(&format!(
        "[[listener]]\nlisten = \"127.0.0.1:0\"\n[[route]]\nhost = \"example.com\"\npath = \"/api/\"\nupstream = \"a\"\n[upstream.a]\nservers = [{{ addr = \"{}\" }}]\n",
        backend.addr()
    ))
    .await;
    let client = TestClient::new();
    let miss = client.get(&proxy.url("/api/x")).await;
    assert_eq!(miss.status, StatusCode::NOT_FOUND);
    assert_eq!(miss.headers["content-type"], "text/plain; charset=utf-8");
    assert!(miss.body.starts_with("404 Not Found"), "{}", miss.body);
    let hit = client
        .get_with(&proxy.url("/api/x"), "host", "EXAMPLE.com:80")
        .await;
    assert_eq!(hit.status, StatusCode::OK);
    assert_eq!(backend.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_max_body_size_answers_413_before_reaching_upstream() {
    let backend = named("a").await;
    let proxy = TestProxy::start(&format!(
        "[global]\nmax_body_size = \"1k\"\n{}",
        one_pool(&format!("servers = [{{ addr = \"{}\" }}]", backend.addr()))
    ))
    .await;
    let client = TestClient::new();
    let big = client
        .send(
            Request::post(proxy.url("/"))
                .body(body(vec![b'x'; 2048]))
                .expect("POST"),
        )
        .await;
    assert_eq!(big.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(big.body.contains("max_body_size"), "{}", big.body);
    assert_eq!(backend.requests(), 0);
    let small = client
        .send(
            Request::post(proxy.url("/"))
                .body(body(vec![b'x'; 1024]))
                .expect("POST"),
        )
        .await;
    assert_eq!(small.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_over_max_body_size_answers_413() {
    // The backend reads the whole body before answering, as a real application would.
    let backend = backend_with(|request: http::Request<hyper::body::Incoming>| async move {
        let read = request
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().len());
        text(StatusCode::OK, format!("{read:?}"))
    })
    .await;
    let proxy = TestProxy::start(&format!(
        "[global]\nmax_body_size = \"1k\"\n{}",
        one_pool(&format!("servers = [{{ addr = \"{}\" }}]", backend.addr()))
    ))
    .await;
    // A streamed body of unknown length is sent chunked.
    let stream = chunked(vec![Bytes::from(vec![b'y'; 512]); 8]);
    let reply = TestClient::new()
        .send(Request::post(proxy.url("/")).body(stream).expect("POST"))
        .await;
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        reply.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upstream_answers_502() {
    let proxy = TestProxy::start(&one_pool(&format!(
        "servers = [{{ addr = \"{}\" }}]",
        refusing_addr()
    )))
    .await;
    let reply = TestClient::new().get(&proxy.url("/")).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert!(reply.body.starts_with("502 Bad Gateway"), "{}", reply.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_before_headers_answers_502() {
    let backend =
        backend_with(|_| std::future::ready(Err::<http::Response<_>, _>("close".into()))).await;
    let proxy = TestProxy::start(&one_pool(&format!(
        "servers = [{{ addr = \"{}\" }}]",
        backend.addr()
    )))
    .await;
    let reply = TestClient::new().get(&proxy.url("/")).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_upstream_response_answers_502() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let _ = stream.write_all(b"HTTP/1.1 ABC Nonsense\r\n\r\n").await;
        }
    });
    let proxy = TestProxy::start(&one_pool(&format!("servers = [{{ addr = \"{addr}\" }}]"))).await;
    let reply = TestClient::new().get(&proxy.url("/")).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_past_read_timeout_answers_504() {
    let (backend, _gate) = held_backend("never", None).await;
    let proxy = TestProxy::start(&one_pool(&format!(
        "read_timeout = \"200ms\"\nservers = [{{ addr = \"{}\" }}]",
        backend.addr()
    )))
    .await;
    let started = std::time::Instant::now();
    let reply = TestClient::new().get(&proxy.url("/")).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        reply.body.starts_with("504 Gateway Timeout"),
        "{}",
        reply.body
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the 504 came only after {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_timeout_holds_for_every_request_of_a_keep_alive_connection_over_http1_and_http2() {
    // HTTP/1 connections time their upstream attempts with the connection's watchdog, which sleeps
    // for up to the client timeouts (60 s here) unless an attempt's due time is earlier; HTTP/2
    // streams have a timer each. Either way each request the backend holds gets its 504 after
    // read_timeout, not before, and the connection keeps serving.
    let (backend, _gate) = held_backend("answered", Some("/slow")).await;
    let proxy = TestProxy::start(&one_pool(&format!(
        "read_timeout = \"300ms\"\nmax_fails = 0\nservers = [{{ addr = \"{}\" }}]",
        backend.addr()
    )))
    .await;
    for (protocol, client) in [
        ("HTTP/1.1", TestClient::new()),
        ("HTTP/2", TestClient::h2c()),
    ] {
        let fast = client.get(&proxy.url("/fast")).await;
        assert_eq!(fast.status, StatusCode::OK, "{protocol}: {}", fast.body);
        for round in 1..=2 {
            let started = std::time::Instant::now();
            let slow = client.get(&proxy.url("/slow")).await;
            let took = started.elapsed();
            assert_eq!(
                slow.status,
                StatusCode::GATEWAY_TIMEOUT,
                "{protocol}, slow request {round}: {}",
                slow.body
            );
            assert!(
                took >= Duration::from_millis(300) && took < Duration::from_secs(5),
                "{protocol}, slow request {round}: the 504 came after {took:?}"
            );
        }
        let fast = client.get(&proxy.url("/fast")).await;
        assert_eq!(fast.status, StatusCode::OK, "{protocol}: {}", fast.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_past_read_timeout_is_retried_on_another_server() {
    let (slow, _gate) = held_backend("never", None).await;
    let fast = named("fast").await;
    let proxy = TestProxy::start(&one_pool(&format!(
        "strategy = \"round_robin\"\nread_timeout = \"300ms\"\nmax_fails = 0\nretry_on = [\"timeout\"]\nservers = [{{ addr = \"{}\" }}, {{ addr = \"{}\" }}]",
        slow.addr(),
        fast.addr()
    )))
    .await;
    let client = TestClient::new();
    // Round robin sends at least one of the two requests to the slow server first.
    let mut timed = Vec::new();
    for _ in 0..2 {
        let started = std::time::Instant::now();
        let reply = client.get(&proxy.url("/")).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        timed.push(started.elapsed());
    }
    assert!(slow.requests() >= 1, "the slow server was never tried");
    assert_eq!(fast.requests(), 2);
    let slowest = timed.iter().max().copied().unwrap_or_default();
    assert!(
        slowest >= Duration::from_millis(300) && slowest < Duration::from_secs(5),
        "the retried request took {slowest:?}"
    );
}

/// Sends raw bytes to the proxy and returns the status line it answered.
async fn raw_status(proxy: &TestProxy, bytes: &[u8]) -> String {
    let addr = proxy.url("").trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_codings_other_than_chunked_get_501_and_never_reach_the_upstream() {
    let backend = named("a").await;
    let proxy = TestProxy::start(&one_pool(&format!(
        "servers = [{{ addr = \"{}\" }}]",
        backend.addr()
    )))
    .await;
    for coding in ["gzip, chunked", "chunked, chunked", "gzip"] {
        let request = format!(
            "POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: {coding}\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        );
        let status = raw_status(&proxy, request.as_bytes()).await;
        assert!(
            status.starts_with("HTTP/1.1 501") || status.starts_with("HTTP/1.1 400"),
            "{coding}: {status}"
        );
    }
    // Both Content-Length and chunked: hyper drops the length and frames by chunks; the upstream gets
    // one well-formed chunked request.
    let both = b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    assert!(raw_status(&proxy, both).await.starts_with("HTTP/1.1 200"));
    assert_eq!(
        backend.requests(),
        1,
        "only the unambiguous request reached the upstream"
    );
}
