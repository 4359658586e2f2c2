//! What the upstream receives and what the client gets back: headers, paths, streaming bodies, h2c.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::{mpsc, Notify};

use crate::harness::*;

/// A backend that answers with the request line and headers it received, one `name: value` per line.
async fn echo_backend() -> fulcrum::demo::Backend {
    backend_with(|request: http::Request<hyper::body::Incoming>| async move {
        let mut seen = format!("{} {}\n", request.method(), request.uri());
        for (name, value) in request.headers() {
            seen.push_str(&format!("{}: {}\n", name, value.to_str().unwrap_or("?")));
        }
        let mut response = http::Response::new(demo_body(seen));
        response
            .headers_mut()
            .insert("connection", "x-upstream-private".parse().expect("value"));
        response
            .headers_mut()
            .insert("x-upstream-private", "secret".parse().expect("value"));
        response
            .headers_mut()
            .insert("keep-alive", "timeout=5".parse().expect("value"));
        response
            .headers_mut()
            .insert("x-visible", "yes".parse().expect("value"));
        Ok(response)
    })
    .await
}

fn header_lines(body: &str, name: &str) -> Vec<String> {
    body.lines()
        .filter_map(|line| line.strip_prefix(&format!("{name}: ")).map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_headers_are_rewritten_for_the_upstream() {
    let backend = echo_backend().await;
    let proxy = TestProxy::start(&one_pool(&format!(
        "servers = [{{ addr = \"{}\" }}]",
        backend.addr()
    )))
    .await;
    let request = Request::get(proxy.url("/a%20b/c?x=1&y=%2F"))
        .header("host", "shop.example.com")
        .header("x-forwarded-for", "203.0.113.9")
        .header("connection", "x-hop-only")
        .header("x-hop-only", "drop me")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("te", "gzip")
        .header("x-custom", "kept")
        .body(empty())
        .expect("request");
    let reply = TestClient::new().send(request).await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen = reply.body;
    assert!(
        seen.starts_with("GET /a%20b/c?x=1&y=%2F\n"),
        "path and query must pass unchanged: {seen}"
    );
    assert_eq!(header_lines(&seen, "host"), ["shop.example.com"]);
    assert_eq!(
        header_lines(&seen, "x-forwarded-for"),
        ["203.0.113.9, 127.0.0.1"]
    );
    assert_eq!(header_lines(&seen, "x-real-ip"), ["127.0.0.1"]);
    assert_eq!(header_lines(&seen, "x-forwarded-proto"), ["http"]);
    assert_eq!(
        header_lines(&seen, "x-forwarded-host"),
        ["shop.example.com"]
    );
    assert_eq!(header_lines(&seen, "x-custom"), ["kept"]);
    for hop in ["x-hop-only", "keep-alive", "proxy-connection", "te"] {
        assert!(
            header_lines(&seen, hop).is_empty(),
            "{hop} reached the upstream: {seen}"
        );
    }
    // The proxy speaks keep-alive to the upstream on its own terms; the client's Connection never reaches it.
    assert!(!header_lines(&seen, "connection")
        .iter()
        .any(|v| v.contains("x-hop-only")));
    // Response side: hop-by-hop headers from the upstream are dropped, others kept.
    assert_eq!(reply.headers["x-visible"], "yes");
    assert!(!reply.headers.contains_key("x-upstream-private"));
    assert!(!reply.headers.contains_key("keep-alive"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_upload_streams_to_the_upstream() {
    let backend = backend_with(|request: http::Request<hyper::body::Incoming>| async move {
        let mut total = 0usize;
        let mut body = request.into_body();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.map(|f| f.into_data()) {
                total += data.map(|d| d.len()).unwrap_or(0);
            }
        }
        text(StatusCode::OK, total.to_string())
    })
    .await;
    let proxy = TestProxy::start(&format!(
        "[global]\nmax_body_size = \"64m\"\n{}",
        one_pool(&format!("servers = [{{ addr = \"{}\" }}]", backend.addr()))
    ))
    .await;
    let chunks = vec![Bytes::from(vec![7u8; 1 << 20]); 20];
    let reply = TestClient::new()
        .send(
            Request::put(proxy.url("/upload"))
                .body(chunked(chunks))
                .expect("PUT"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, (20usize << 20).to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_download_streams_without_buffering() {
    // The backend sends a first chunk, then waits until the client has seen it before sending 32 MiB more:
    // a proxy that buffered the whole body would never deliver the first chunk.
    let first_seen = Arc::new(Notify::new());
    let gate = Arc::clone(&first_seen);
    let backend = backend_with(move |_request| {
        let gate = Arc::clone(&gate);
        async move {
            let (tx, rx) = mpsc::channel::<Bytes>(4);
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"first")).await;
                gate.notified().await;
                for _ in 0..32 {
                    if tx.send(Bytes::from(vec![1u8; 1 << 20])).await.is_err() {
                        return;
                    }
                }
            });
            Ok(http::Response::new(ChannelBody(rx).boxed()))
        }
    })
    .await;
    let proxy = TestProxy::start(&one_pool(&format!(
        "servers = [{{ addr = \"{}\" }}]",
        backend.addr()
    )))
    .await;
    let response = TestClient::new()
        .response(Request::get(proxy.url("/big")).body(empty()).expect("GET"))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the first chunk arrives before the rest is sent")
        .expect("a frame")
        .expect("no error");
    assert_eq!(
        first.into_data().expect("data"),
        Bytes::from_static(b"first")
    );
    first_seen.notify_one();
    let rest = body
        .collect()
        .await
        .expect("the rest of the body")
        .to_bytes();
    assert_eq!(rest.len(), 32 << 20);
}

/// A response body fed by a channel, one frame per message.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|data| Ok(http_body::Frame::data(data))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_cleartext_clients_are_served() {
    let backend = echo_backend().await;
    let proxy = TestProxy::start(&one_pool(&format!(
        "servers = [{{ addr = \"{}\" }}]",
        backend.addr()
    )))
    .await;
    let reply = TestClient::h2c().get(&proxy.url("/over-h2?q=1")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply.body.starts_with("GET /over-h2?q=1\n"),
        "{}",
        reply.body
    );
    // HTTP/2 has no Host header; the upstream still gets one, from :authority.
    assert_eq!(
        header_lines(&reply.body, "host"),
        [proxy.url("").trim_start_matches("http://")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_carries_the_same_headers_as_the_first_attempt() {
    // Every other request goes first to a failing server, then is retried on the echo backend: the
    // retry must send the rewritten headers again, whether the first attempt could not connect, was
    // cut after the request was written, or was answered with a status listed in retry_on (that answer
    // takes the request's header map unless the attempt sent a copy).
    let backend = echo_backend().await;
    let answers_502 = backend_with(|_request: http::Request<hyper::body::Incoming>| async {
        text(StatusCode::BAD_GATEWAY, "no")
    })
    .await;
    let first_attempts = [
        ("refused", refusing_addr(), ""),
        (
            "cut after the request",
            crate::failing_upstreams::failing_upstream(
                crate::failing_upstreams::Failure::CloseBeforeHeaders,
            )
            .await,
            "",
        ),
        (
            "answered 502",
            answers_502.addr(),
            "retry_on = [\"error\", \"timeout\", \"http_502\"]\n",
        ),
    ];
    let client = TestClient::new();
    let mut served = 0;
    for (what, failing, retry_on) in first_attempts {
        let proxy = TestProxy::start(&one_pool(&format!(
            "strategy = \"round_robin\"\nmax_fails = 0\n{retry_on}servers = [{{ addr = \"{failing}\" }}, {{ addr = \"{}\" }}]",
            backend.addr()
        )))
        .await;
        for _ in 0..6 {
            let request = Request::get(proxy.url("/retried"))
                .header("host", "shop.example.com")
                .header("x-custom", "kept")
                .body(empty())
                .expect("request");
            let reply = client.send(request).await;
            assert_eq!(reply.status, StatusCode::OK, "{what}: {}", reply.body);
            let seen = reply.body;
            assert_eq!(
                header_lines(&seen, "host"),
                ["shop.example.com"],
                "{what}: {seen}"
            );
            assert_eq!(header_lines(&seen, "x-custom"), ["kept"], "{what}: {seen}");
            assert_eq!(
                header_lines(&seen, "x-forwarded-for"),
                ["127.0.0.1"],
                "{what}: {seen}"
            );
            assert_eq!(
                header_lines(&seen, "x-request-id").len(),
                1,
                "{what}: {seen}"
            );
        }
        served += 6;
        assert_eq!(backend.requests(), served, "{what}");
    }
}
