//! Upstream timeouts through the binary: `read_timeout` between any two reads of an answer (head and
//! body, every upstream protocol), `send_timeout` on a server that does not read the request, a slow
//! upload that is the client's time and never the server's, and lingering close for early answers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fulcrum::demo::{Backend, Handler};
use http::StatusCode;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::*;
use crate::pki::*;

/// A raw upstream: reads each request head, then runs `script` on the connection (which holds it as long
/// as the test runs unless the script returns). Counts connections.
async fn raw_upstream<F, Fut>(script: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let script = Arc::new(script);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let script = Arc::clone(&script);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                script(stream).await;
            });
        }
    });
    addr
}

/// Writes `bytes` and then holds the connection open, reading nothing, for a minute.
async fn send_then_stall(mut stream: TcpStream, bytes: &'static [u8]) {
    let _ = stream.write_all(bytes).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    drop(stream);
}

/// Sends a GET through `proxy` on a raw connection and returns the status, what arrived of the body
/// after the head, and how long until the proxy closed the connection (bounded by 15 s).
async fn get_until_closed(proxy: SocketAddr) -> (u16, Vec<u8>, Duration) {
    let mut stream = TcpStream::connect(proxy).await.expect("connect");
    let started = Instant::now();
    stream
        .write_all(b"GET /stall HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .expect("write");
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(15), stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => received.extend_from_slice(&chunk[..n]),
            Err(_) => panic!(
                "the proxy kept the connection open for 15 s; received {:?}",
                String::from_utf8_lossy(&received)
            ),
        }
    }
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&received).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = match text.find("\r\n\r\n") {
        Some(end) => received[end + 4..].to_vec(),
        None => Vec::new(),
    };
    (status, body, took)
}

/// The checks every stalled answer shares: a 200 head, the client's connection closed within
/// `read_timeout` (1 s) and a bound, nothing left in flight, and one passive failure counted against
/// the server (a single server is never marked down, as in nginx, so the counter shows it).
async fn assert_cut_after_read_timeout(binary: &AdminBinary, what: &str) -> Vec<u8> {
    let (status, body, took) = get_until_closed(binary.addr).await;
    assert_eq!(status, 200, "{what}: the head came through");
    assert!(
        took >= Duration::from_millis(900),
        "{what}: closed after {took:?}, before read_timeout"
    );
    assert!(
        took < Duration::from_secs(4),
        "{what}: closed after {took:?}, long past read_timeout"
    );
    binary.wait_none_in_flight().await;
    assert_eq!(
        binary.passive_failures().await,
        1.0,
        "{what}: the stall counts as a passive failure"
    );
    body
}

const TIMEOUTS: &str = "read_timeout = \"1s\"";

#[tokio::test]
async fn an_answer_that_stalls_after_its_head_is_cut_at_read_timeout() {
    let upstream = raw_upstream(|stream| {
        send_then_stall(stream, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
    })
    .await;
    let binary = AdminBinary::start("", TIMEOUTS, &format!("{{ addr = \"{upstream}\" }}"));
    let body = assert_cut_after_read_timeout(&binary, "after the head").await;
    assert!(body.is_empty(), "no body byte was sent: {body:?}");
}

#[tokio::test]
async fn an_answer_that_stalls_inside_a_content_length_body_is_cut_at_read_timeout() {
    let upstream = raw_upstream(|stream| {
        send_then_stall(
            stream,
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
        )
    })
    .await;
    let binary = AdminBinary::start("", TIMEOUTS, &format!("{{ addr = \"{upstream}\" }}"));
    let body = assert_cut_after_read_timeout(&binary, "inside a Content-Length body").await;
    assert_eq!(
        body, b"0123456789",
        "what came before the stall reached the client"
    );
}

#[tokio::test]
async fn a_chunked_answer_that_stalls_between_chunks_is_cut_at_read_timeout() {
    let upstream = raw_upstream(|stream| {
        send_then_stall(
            stream,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n",
        )
    })
    .await;
    let binary = AdminBinary::start("", TIMEOUTS, &format!("{{ addr = \"{upstream}\" }}"));
    let body = assert_cut_after_read_timeout(&binary, "between chunks").await;
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("hello") && text.contains(" world"),
        "the chunks before the stall reached the client: {text:?}"
    );
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "a cut answer must not look complete: {text:?}"
    );
}

/// A handler whose answer sends one chunk and then nothing (a hyper backend, for HTTP/2 and TLS).
fn stalling_handler() -> Handler {
    Arc::new(|_request| {
        Box::pin(async move {
            let first = futures_util::stream::once(async {
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from_static(
                    b"first part",
                )))
            });
            let body = StreamBody::new(futures_util::StreamExt::chain(
                first,
                futures_util::stream::pending(),
            ));
            Ok(http::Response::new(body.boxed()))
        })
    })
}

#[tokio::test]
async fn an_http2_upstream_answer_that_stalls_mid_body_is_cut_at_read_timeout() {
    let backend = Backend::start(SocketAddr::from(([127, 0, 0, 1], 0)), stalling_handler())
        .await
        .expect("backend");
    let binary = AdminBinary::start(
        "",
        &format!("{TIMEOUTS}\nprotocol = \"h2c\""),
        &format!("{{ addr = \"{}\" }}", backend.addr()),
    );
    let body = assert_cut_after_read_timeout(&binary, "HTTP/2 upstream").await;
    assert_eq!(body_text(&body), "first part");
}

#[tokio::test]
async fn a_tls_upstream_answer_that_stalls_mid_body_is_cut_at_read_timeout() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new("upstream CA");
    let leaf = ca.issue(&["localhost"]);
    let backend = Backend::start_tls(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        stalling_handler(),
        leaf.server_config(dir.path(), "stalling"),
    )
    .await
    .expect("TLS backend");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let binary = AdminBinary::start(
        "",
        &format!("{TIMEOUTS}\nca_file = \"{}\"", ca_file.display()),
        &format!(
            "{{ addr = \"https://localhost:{}\" }}",
            backend.addr().port()
        ),
    );
    let body = assert_cut_after_read_timeout(&binary, "TLS upstream").await;
    assert_eq!(body_text(&body), "first part");
}

/// The data of a chunked body as received raw (`a\r\nfirst part\r\n`): the chunk's data.
fn body_text(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    text.split("\r\n")
        .skip(1)
        .step_by(2)
        .collect::<Vec<_>>()
        .concat()
}

#[tokio::test]
async fn an_upstream_that_never_reads_a_large_body_gets_504_at_send_timeout() {
    let upstream = raw_upstream(|stream| async move {
        // Holds the connection and reads nothing more.
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(stream);
    })
    .await;
    let binary = AdminBinary::with_route(
        "max_body_size = \"64m\"",
        "",
        "read_timeout = \"30s\"\nsend_timeout = \"1s\"",
        &format!("{{ addr = \"{upstream}\" }}"),
    );
    let mut stream = TcpStream::connect(binary.addr).await.expect("connect");
    let size = 32 * 1024 * 1024;
    let head = format!("POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: {size}\r\n\r\n");
    let started = Instant::now();
    stream.write_all(head.as_bytes()).await.expect("head");
    let (mut reader, mut writer) = stream.into_split();
    // The body goes out while the answer is awaited: the writes block once the buffers are full.
    let writing = tokio::spawn(async move {
        let block = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        while sent < size {
            if writer.write_all(&block).await.is_err() {
                break;
            }
            sent += block.len();
        }
        writer
    });
    let mut pending = Vec::new();
    let mut chunk = [0u8; 4096];
    let answer = loop {
        let n = tokio::time::timeout(Duration::from_secs(15), reader.read(&mut chunk))
            .await
            .expect("an answer within 15 s")
            .expect("read");
        assert!(n > 0, "closed without an answer");
        pending.extend_from_slice(&chunk[..n]);
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break String::from_utf8_lossy(&pending[..end]).into_owned();
        }
    };
    let took = started.elapsed();
    writing.abort();
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "answered after {took:?}, not at send_timeout (1 s)"
    );
    binary.wait_none_in_flight().await;
    assert_eq!(
        binary.passive_failures().await,
        1.0,
        "a server that does not read counts as failed"
    );
}

#[tokio::test]
async fn slow_uploads_longer_than_read_timeout_get_200_and_never_mark_a_server_down() {
    let echo = |request: http::Request<Incoming>| async move {
        let body = request
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().len())
            .unwrap_or(0);
        text(StatusCode::OK, format!("got {body}"))
    };
    let a = backend_with(echo).await;
    let b = backend_with(echo).await;
    let binary = AdminBinary::start(
        "client_body_timeout = \"5s\"",
        "read_timeout = \"1s\"\nmax_fails = 1\nfail_timeout = \"30s\"",
        &format!(
            "{{ addr = \"{}\" }}, {{ addr = \"{}\" }}",
            a.addr(),
            b.addr()
        ),
    );
    // Two clients each trickle 14 bytes every 400 ms for about 2.4 s: longer than read_timeout.
    let upload = |addr: SocketAddr| async move {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let pieces = 6;
        let head = format!(
            "POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n",
            14 * pieces
        );
        stream.write_all(head.as_bytes()).await.expect("head");
        for _ in 0..pieces {
            tokio::time::sleep(Duration::from_millis(400)).await;
            stream.write_all(b"fourteen bytes").await.expect("piece");
        }
        let mut pending = Vec::new();
        read_raw_response(&mut stream, &mut pending)
            .await
            .expect("an answer")
    };
    let (first, second) = tokio::join!(upload(binary.addr), upload(binary.addr));
    for answer in [first, second] {
        assert_eq!(answer.status, 200, "{}", answer.head);
        assert_eq!(answer.body, "got 84");
    }
    let doc = binary.status().await;
    for server in doc["pools"][0]["servers"].as_array().expect("servers") {
        assert_eq!(
            server["healthy"], true,
            "a slow client marked a server down: {doc}"
        );
    }
    // And the pool still answers everyone.
    let reply = TestClient::new()
        .get(&format!("http://{}/", binary.addr))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
}

/// Writes a 4 MB body to a route that takes 1 MB, without `Expect`, then reads: the 413 must arrive
/// (lingering close), not a reset.
async fn oversized_upload(addr: SocketAddr) -> Result<u16, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut reader, mut writer) = stream.into_split();
    let size = 4 * 1024 * 1024;
    let writing = tokio::spawn(async move {
        let head = format!("POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: {size}\r\n\r\n");
        writer.write_all(head.as_bytes()).await?;
        let block = vec![b'x'; 64 * 1024];
        for _ in 0..size / block.len() {
            writer.write_all(&block).await?;
        }
        Ok::<_, std::io::Error>(writer)
    });
    // As Python's http.client does: the whole body first, then the answer.
    let written = tokio::time::timeout(Duration::from_secs(10), writing)
        .await
        .map_err(|_| "the body could not be written within 10 s".to_string())?
        .map_err(|e| e.to_string())?;
    let _writer = written.map_err(|e| format!("writing the body failed: {e}"))?;
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), reader.read(&mut chunk)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => {
                received.extend_from_slice(&chunk[..n]);
                if received.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Ok(Err(e)) => return Err(format!("reading the answer failed: {e}")),
            Err(_) => return Err("no answer within 10 s".into()),
        }
    }
    let text = String::from_utf8_lossy(&received);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {text:?}"))
}

#[tokio::test]
async fn an_oversized_upload_without_expect_reads_its_413_every_time() {
    let backend = named("app").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fulcrum.toml");
    std::fs::write(
        &path,
        format!(
            "[[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\n\
             [[route]]\npath = \"/\"\nupstream = \"app\"\nmax_body_size = \"1m\"\n\n\
             [upstream.app]\nservers = [{{ addr = \"{}\" }}]\n",
            backend.addr()
        ),
    )
    .expect("write the config");
    let mut process = FulcrumProcess::spawn(&path, &[]);
    let addr = process.listener_addr("public");
    for run in 1..=20 {
        assert_eq!(oversized_upload(addr).await, Ok(413), "run {run} of 20");
    }
    assert_eq!(backend.requests(), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn lingering_time_bounds_how_long_a_client_may_keep_sending_after_its_answer() {
    let backend = named("app").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fulcrum.toml");
    std::fs::write(
        &path,
        format!(
            "[[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\
             lingering_time = \"1s\"\nlingering_timeout = \"5s\"\n\n\
             [[route]]\npath = \"/\"\nupstream = \"app\"\nmax_body_size = \"1k\"\n\n\
             [upstream.app]\nservers = [{{ addr = \"{}\" }}]\n",
            backend.addr()
        ),
    )
    .expect("write the config");
    let mut process = FulcrumProcess::spawn(&path, &[]);
    let addr = process.listener_addr("public");
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 100000000\r\n\r\n")
        .await
        .expect("head");
    let mut pending = Vec::new();
    let answer = read_raw_response(&mut stream, &mut pending)
        .await
        .expect("the 413");
    assert_eq!(answer.status, 413, "{}", answer.head);
    // The client goes on sending a little every 50 ms: it is read and discarded for lingering_time
    // (1 s), then the connection is closed and its writes fail.
    let answered = Instant::now();
    let failed_after = loop {
        if stream.write_all(&[b'x'; 512]).await.is_err() {
            break answered.elapsed();
        }
        assert!(
            answered.elapsed() < Duration::from_secs(6),
            "still accepting input 6 s after the answer (lingering_time = 1s)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        failed_after >= Duration::from_millis(900),
        "input refused after {failed_after:?}, before lingering_time"
    );
    assert_eq!(backend.requests(), 0);
}
