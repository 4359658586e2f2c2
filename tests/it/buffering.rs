//! Request and response buffering through the binary (nginx `proxy_request_buffering` and
//! `proxy_buffering`): slow readers free their upstream connections once the answers are read, slow
//! uploads open no upstream connection until complete, bodies past `buffer_size` go to unlinked temp files
//! that are gone on every exit path, and streams (SSE, `X-Accel-Buffering: no`, `buffering = false`)
//! still stream.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::harness::*;

/// What a raw upstream has seen: connections accepted, request bodies received whole, answers written
/// whole.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    requests: AtomicUsize,
    answered: AtomicUsize,
    last_body: parking_lot::Mutex<Vec<u8>>,
}

/// A keep-alive HTTP/1.1 upstream on raw sockets: reads each request (head and `Content-Length` body)
/// and answers 200 with `size` bytes of a repeating pattern (Content-Length), counting in `Seen`.
async fn raw_upstream(size: usize) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Seen::default());
    let counts = Arc::clone(&seen);
    let answer = Bytes::from(pattern(size));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counts.connections.fetch_add(1, Ordering::SeqCst);
            let counts = Arc::clone(&counts);
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut pending = Vec::new();
                loop {
                    let Some(body) = read_request(&mut stream, &mut pending).await else {
                        return;
                    };
                    *counts.last_body.lock() = body;
                    counts.requests.fetch_add(1, Ordering::SeqCst);
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n");
                    if stream.write_all(head.as_bytes()).await.is_err()
                        || stream.write_all(&answer).await.is_err()
                    {
                        return;
                    }
                    counts.answered.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    (addr, seen)
}

/// Reads one request with a `Content-Length` body (or none); `None` when the peer closes.
async fn read_request(stream: &mut TcpStream, pending: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = request.parse(pending) {
            let length: usize = request
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                .unwrap_or(0);
            if pending.len() >= head + length {
                let body = pending[head..head + length].to_vec();
                pending.drain(..head + length);
                return Some(body);
            }
        }
        let mut chunk = vec![0u8; 64 * 1024];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        pending.extend_from_slice(&chunk[..n]);
    }
}

/// `size` bytes of a pattern that shows any reordering or loss.
fn pattern(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i % 251) as u8).collect()
}

/// A client connection with a small receive buffer that sends a GET and reads only `head_bytes` of the
/// answer (a slow reader: the rest waits in the proxy). Returns the connection and what it read.
async fn slow_reader(proxy: SocketAddr, head_bytes: usize) -> (TcpStream, Vec<u8>) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stream = socket.connect(proxy).await.expect("connect");
    stream
        .write_all(b"GET /big HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .expect("write");
    let mut got = vec![0u8; head_bytes];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut got))
        .await
        .expect("the answer's start within 10 s")
        .expect("read");
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    (stream, got)
}

/// Reads the rest of one answer (head plus Content-Length body) after `received`; returns the body.
async fn read_whole(stream: &mut TcpStream, mut received: Vec<u8>) -> Vec<u8> {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        if let Some(head_end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&received[..head_end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .expect("content-length");
            if received.len() >= head_end + 4 + length {
                return received[head_end + 4..head_end + 4 + length].to_vec();
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("data within 10 s")
            .expect("read");
        assert!(n > 0, "closed after {} bytes", received.len());
        received.extend_from_slice(&chunk[..n]);
    }
}

/// Requests in flight on the servers of `app`, from `/status`.
async fn in_flight(binary: &AdminBinary) -> u64 {
    binary.status().await["pools"][0]["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .map(|s| s["in_flight"].as_u64().expect("in_flight"))
        .sum()
}

/// Descriptors of the process that point into `dir` (its temp files, unlinked or not).
fn fds_into(binary: &AdminBinary, dir: &Path) -> usize {
    let pid = binary.process.child.id();
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    entries
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir))
        .count()
}

/// Names in `dir` (must stay none: temp files are unlinked when made).
fn names_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).expect("read temp dir").count()
}

/// A binary with `[global] temp_path = dir`, `upstream_keys` on `app` and the one server `upstream`.
fn buffered_binary(dir: &Path, upstream_keys: &str, upstream: SocketAddr) -> AdminBinary {
    AdminBinary::from_toml(&format!(
        "[global]\ntemp_path = \"{}\"\n\n\
         [[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[route]]\npath = \"/\"\nupstream = \"app\"\n\n\
         [upstream.app]\n{upstream_keys}\nservers = [{{ addr = \"{upstream}\" }}]\n",
        dir.display()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_slow_readers_of_a_megabyte_free_their_upstream_connections() {
    let (upstream, seen) = raw_upstream(1 << 20).await;
    let temp = tempfile::tempdir().expect("temp dir");
    let binary = buffered_binary(temp.path(), "", upstream);
    let before = binary.process.rss_kib();
    let mut readers = Vec::new();
    for _ in 0..50 {
        readers.push(slow_reader(binary.addr, 64).await);
    }
    // Every answer is read from the upstream although no client reads past its first bytes.
    wait_until(
        Duration::from_secs(10),
        "the upstream to write 50 whole answers",
        || seen.answered.load(Ordering::SeqCst) == 50,
    )
    .await;
    wait_until_async(Duration::from_secs(5), "no request in flight", || async {
        in_flight(&binary).await == 0
    })
    .await;
    let connections = seen.connections.load(Ordering::SeqCst);
    let metrics = binary.metrics().await;
    let files = sample(
        &metrics,
        "fulcrum_buffer_temp_files",
        &["direction=\"response\""],
    );
    let memory = sample(
        &metrics,
        "fulcrum_buffer_memory_bytes",
        &["direction=\"response\""],
    );
    let grown_kib = binary.process.rss_kib().saturating_sub(before);
    // What the kernel's socket buffers do not take (they may take all of 1 MB) is in temp files.
    assert!(files <= 50.0, "{files} temp files");
    assert!(
        memory <= 50.0 * (64.0 * 1024.0 + 256.0 * 1024.0),
        "buffer memory {memory} past 50 x (buffer_size + one read of at most 256k)"
    );
    // The stated bound (docs/operations.md): per slow client, buffer_size, the last piece handed to
    // its connection and the pooled upstream connection's read buffer (up to 256 KiB each), and 64 KiB
    // of connection state; the rest of each answer is in the kernel's socket buffers or a temp file.
    assert!(
        grown_kib < 50 * (64 + 2 * 256 + 64),
        "RSS grew by {grown_kib} KiB for 50 slow readers"
    );
    assert_eq!(names_in(temp.path()), 0, "temp files have no name");
    // The first reader reads its answer to the end: every byte, in order.
    let (mut first, prefix) = readers.swap_remove(0);
    assert_eq!(
        read_whole(&mut first, prefix).await,
        pattern(1 << 20),
        "the buffered answer arrives whole and in order"
    );
    drop(readers);
    drop(first);
    wait_until_async(Duration::from_secs(5), "every temp file closed", || async {
        sample(
            &binary.metrics().await,
            "fulcrum_buffer_temp_files",
            &["direction=\"response\""],
        ) == 0.0
    })
    .await;
    assert_eq!(fds_into(&binary, temp.path()), 0);
    assert!(connections <= 50, "{connections} upstream connections");
}

/// An answer larger than the socket buffers between the proxy and a client that reads nothing can
/// hold (the send buffer grows to `tcp_wmem`'s 4 MB here), so streaming has to wait for the client.
const HUGE: usize = 16 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_of_answers_past_the_socket_buffers_free_the_upstream_only_with_buffering() {
    let (upstream, seen) = raw_upstream(HUGE).await;
    let temp = tempfile::tempdir().expect("temp dir");
    // Streaming (`buffering = false` on the route): each answer stays in flight at its client's pace.
    let streaming = AdminBinary::from_toml(&format!(
        "[global]\ntemp_path = \"{}\"\n\n\
         [[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[route]]\npath = \"/\"\nupstream = \"app\"\nbuffering = false\n\n\
         [upstream.app]\nservers = [{{ addr = \"{upstream}\" }}]\n",
        temp.path().display()
    ));
    let mut readers = Vec::new();
    for _ in 0..4 {
        readers.push(slow_reader(streaming.addr, 64).await);
    }
    let held_since = Instant::now();
    while held_since.elapsed() < Duration::from_secs(1) {
        assert_eq!(
            in_flight(&streaming).await,
            4,
            "answers held by their slow readers"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(readers);
    streaming.wait_none_in_flight().await;

    // Buffered (the default): every answer is read whole; the server is free while the clients wait.
    let answered = seen.answered.load(Ordering::SeqCst);
    let buffered = buffered_binary(temp.path(), "", upstream);
    let mut readers = Vec::new();
    for _ in 0..4 {
        readers.push(slow_reader(buffered.addr, 64).await);
    }
    wait_until(Duration::from_secs(10), "4 more whole answers", || {
        seen.answered.load(Ordering::SeqCst) == answered + 4
    })
    .await;
    buffered.wait_none_in_flight().await;
    let metrics = buffered.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "fulcrum_buffer_temp_files",
            &["direction=\"response\""]
        ),
        4.0,
        "what the socket cannot take waits in a temp file"
    );
    assert!(
        sample(
            &metrics,
            "fulcrum_buffer_temp_file_bytes",
            &["direction=\"response\""]
        ) > 4.0 * 8.0 * 1024.0 * 1024.0
    );
    assert_eq!(names_in(temp.path()), 0);
    let (mut reader, prefix) = readers.swap_remove(0);
    assert_eq!(read_whole(&mut reader, prefix).await, pattern(HUGE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_opens_no_upstream_connection_until_it_is_complete() {
    let (upstream, seen) = raw_upstream(2).await;
    // read_timeout far below the upload's length: it must not count while the client sends.
    let binary = AdminBinary::start(
        "",
        "read_timeout = \"1s\"",
        &format!("{{ addr = \"{upstream}\" }}"),
    );
    let body = pattern(300);
    let mut client = TcpStream::connect(binary.addr).await.expect("connect");
    client
        .write_all(b"POST /up HTTP/1.1\r\nHost: test\r\nContent-Length: 300\r\n\r\n")
        .await
        .expect("write");
    let started = Instant::now();
    for piece in body.chunks(20) {
        assert_eq!(
            seen.connections.load(Ordering::SeqCst),
            0,
            "an upstream connection while the body is still arriving"
        );
        assert_eq!(in_flight(&binary).await, 0);
        client.write_all(piece).await.expect("write");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        started.elapsed() > Duration::from_millis(1400),
        "longer than read_timeout"
    );
    let mut pending = Vec::new();
    let answer = read_raw_response(&mut client, &mut pending)
        .await
        .expect("an answer");
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
    assert_eq!(*seen.last_body.lock(), body);
    assert_eq!(binary.passive_failures().await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_upload_over_max_body_size_reaches_no_upstream() {
    let (upstream, seen) = raw_upstream(2).await;
    let binary = AdminBinary::with_route(
        "max_body_size = \"1k\"",
        "",
        "",
        &format!("{{ addr = \"{upstream}\" }}"),
    );
    let client = TestClient::new();
    let reply = client
        .send(
            http::Request::post(format!("http://{}/up", binary.addr))
                .body(chunked(vec![Bytes::from(vec![b'a'; 600]); 3]))
                .expect("request"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Under the limit, chunked: it goes on with its length (nginx does the same).
    let reply = client
        .send(
            http::Request::post(format!("http://{}/up", binary.addr))
                .body(chunked(vec![Bytes::from(vec![b'b'; 300]); 3]))
                .expect("request"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        seen.requests.load(Ordering::SeqCst),
        1,
        "only the second reached the upstream"
    );
    assert_eq!(*seen.last_body.lock(), vec![b'b'; 900]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_upload_goes_through_a_temp_file_and_a_retry_sends_it_again() {
    // The first server reads the whole request and closes without answering; the retry (PUT is
    // idempotent) goes to the second with the same body, read back from the temp file.
    let failing = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let failing_addr = failing.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = failing.accept().await {
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let _ = read_request(&mut stream, &mut pending).await;
            });
        }
    });
    let (good, seen) = raw_upstream(2).await;
    let temp = tempfile::tempdir().expect("temp dir");
    let binary = AdminBinary::from_toml(&format!(
        "[global]\ntemp_path = \"{}\"\n\n\
         [[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[route]]\npath = \"/\"\nupstream = \"app\"\n\n\
         [upstream.app]\nstrategy = \"round_robin\"\nbuffer_size = \"16k\"\n\
         servers = [{{ addr = \"{failing_addr}\" }}, {{ addr = \"{good}\" }}]\n",
        temp.path().display()
    ));
    let body = pattern(300_000);
    let client = TestClient::new();
    for _ in 0..2 {
        let reply = client
            .send(
                http::Request::put(format!("http://{}/up", binary.addr))
                    .body(crate::harness::body(body.clone()))
                    .expect("request"),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(*seen.last_body.lock(), body, "the body the good server got");
    }
    let metrics = binary.metrics().await;
    assert!(
        sample(
            &metrics,
            "fulcrum_buffer_temp_files_total",
            &["direction=\"request\""]
        ) >= 2.0,
        "uploads past buffer_size spill to a temp file"
    );
    assert!(sample(&metrics, "fulcrum_retries_total", &[]) >= 1.0);
    assert_eq!(
        sample(
            &metrics,
            "fulcrum_buffer_temp_files",
            &["direction=\"request\""]
        ),
        0.0
    );
    assert_eq!(names_in(temp.path()), 0);
}

/// A backend that answers with `content_type` (and `accel`, when given as `X-Accel-Buffering`): one
/// event, then the rest only once `gate` opens.
async fn gated_stream(
    content_type: &'static str,
    accel: Option<&'static str>,
) -> (fulcrum::demo::Backend, Arc<tokio::sync::Semaphore>) {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let held = Arc::clone(&gate);
    let backend = backend_with(move |_request| {
        let held = Arc::clone(&held);
        async move {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
            tokio::spawn(async move {
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from("data: first\n\n"))))
                    .await;
                if let Ok(permit) = held.acquire().await {
                    permit.forget();
                }
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from("data: last\n\n"))))
                    .await;
            });
            let stream = tokio_stream_from(rx);
            let mut response = http::Response::builder().header("content-type", content_type);
            if let Some(accel) = accel {
                response = response.header("x-accel-buffering", accel);
            }
            Ok(response
                .body(
                    StreamBody::new(stream)
                        .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
                        .boxed(),
                )
                .expect("response"))
        }
    })
    .await;
    (backend, gate)
}

/// The receiver as a stream of frames.
fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, std::io::Error>> + Send + Unpin {
    Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

/// Sends a GET and checks that the first event arrives while the upstream still holds the rest; then
/// opens `gate` and reads the end. Returns the answer's headers.
async fn first_event_arrives_first(
    addr: SocketAddr,
    gate: &tokio::sync::Semaphore,
) -> http::HeaderMap {
    let client = TestClient::new();
    let response = client
        .response(
            http::Request::get(format!("http://{addr}/events"))
                .body(empty())
                .expect("request"),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    let mut body = response.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the first event before the upstream finishes")
        .expect("a frame")
        .expect("data");
    assert_eq!(
        first.into_data().expect("data"),
        Bytes::from("data: first\n\n")
    );
    gate.add_permits(1);
    let rest = tokio::time::timeout(Duration::from_secs(5), body.collect())
        .await
        .expect("the end")
        .expect("body")
        .to_bytes();
    assert_eq!(rest, Bytes::from("data: last\n\n"));
    headers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_and_x_accel_buffering_no_still_stream_with_buffering_on() {
    let (events, events_gate) = gated_stream("text/event-stream", None).await;
    let binary = AdminBinary::start("", "", &format!("{{ addr = \"{}\" }}", events.addr()));
    first_event_arrives_first(binary.addr, &events_gate).await;

    let (accel, accel_gate) = gated_stream("text/plain", Some("no")).await;
    let binary = AdminBinary::start("", "", &format!("{{ addr = \"{}\" }}", accel.addr()));
    let headers = first_event_arrives_first(binary.addr, &accel_gate).await;
    assert!(
        headers.get("x-accel-buffering").is_none(),
        "X-Accel-Buffering is removed, as nginx does"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temp_files_are_gone_after_client_abort_upstream_failure_reload_and_sigterm() {
    let (upstream, _seen) = raw_upstream(HUGE).await;
    // An upstream that sends half of a 1 MB answer, then closes.
    let cutting = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let cutting_addr = cutting.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = cutting.accept().await {
            tokio::spawn(async move {
                let mut pending = Vec::new();
                if read_request(&mut stream, &mut pending).await.is_some() {
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 16777216\r\n\r\n")
                        .await;
                    let _ = stream.write_all(&pattern(HUGE / 2)).await;
                }
            });
        }
    });
    let temp = tempfile::tempdir().expect("temp dir");
    let mut binary = AdminBinary::from_toml(&format!(
        "[global]\ntemp_path = \"{}\"\nshutdown_timeout = \"1s\"\n\n\
         [[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[route]]\npath = \"/cut\"\nupstream = \"cut\"\n\n\
         [[route]]\npath = \"/\"\nupstream = \"app\"\n\n\
         [upstream.cut]\nbuffer_size = \"16k\"\nservers = [{{ addr = \"{cutting_addr}\" }}]\n\n\
         [upstream.app]\nbuffer_size = \"16k\"\nservers = [{{ addr = \"{upstream}\" }}]\n",
        temp.path().display()
    ));
    let files = |metrics: &str| {
        sample(
            metrics,
            "fulcrum_buffer_temp_files",
            &["direction=\"response\""],
        )
    };
    // A temp file appears for a slow reader, and is gone when the client aborts.
    let (reader, _) = slow_reader(binary.addr, 64).await;
    wait_until_async(Duration::from_secs(5), "a temp file", || async {
        files(&binary.metrics().await) == 1.0
    })
    .await;
    assert_eq!(
        fds_into(&binary, temp.path()),
        1,
        "the open temp file is in temp_path"
    );
    assert_eq!(names_in(temp.path()), 0, "and has no name there");
    drop(reader);
    wait_until_async(
        Duration::from_secs(5),
        "the aborted answer's temp file closed",
        || async { files(&binary.metrics().await) == 0.0 },
    )
    .await;

    // The upstream fails mid-answer: the client's answer is cut, and the temp file goes.
    let mut stream = TcpStream::connect(binary.addr).await.expect("connect");
    stream
        .write_all(b"GET /cut HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .expect("write");
    let mut received = 0;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("the proxy closes a cut answer")
        {
            Ok(0) | Err(_) => break,
            Ok(n) => received += n,
        }
    }
    assert!(received < HUGE, "a cut answer is not completed");
    wait_until_async(
        Duration::from_secs(5),
        "the cut answer's temp file closed",
        || async { files(&binary.metrics().await) == 0.0 },
    )
    .await;

    // A reload while a buffered answer waits for its reader: it finishes whole afterwards.
    let (mut reader, prefix) = slow_reader(binary.addr, 12).await;
    wait_until_async(Duration::from_secs(5), "a temp file", || async {
        files(&binary.metrics().await) == 1.0
    })
    .await;
    binary.reload_replacing(
        "buffer_size = \"16k\"\nservers",
        "buffer_size = \"32k\"\nservers",
    );
    let body = read_whole(&mut reader, prefix).await;
    assert_eq!(body, pattern(HUGE));
    drop(reader);
    wait_until_async(
        Duration::from_secs(5),
        "no temp file after the reload",
        || async { files(&binary.metrics().await) == 0.0 },
    )
    .await;

    // SIGTERM with a temp file open: the process ends and nothing is left in temp_path.
    let _reader = slow_reader(binary.addr, 64).await;
    wait_until_async(Duration::from_secs(5), "a temp file", || async {
        files(&binary.metrics().await) == 1.0
    })
    .await;
    binary.process.signal("TERM");
    binary.process.wait_exit(Duration::from_secs(10));
    assert_eq!(names_in(temp.path()), 0, "nothing left after SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_temp_path_degrades_to_streaming() {
    let temp = tempfile::tempdir().expect("temp dir");
    // A path that is not a directory, and a directory no one (root included) can make a file in.
    let not_a_dir = temp.path().join("file");
    std::fs::write(&not_a_dir, b"x").expect("write");
    for path in [not_a_dir.as_path(), Path::new("/proc")] {
        streams_without_a_temp_file(path).await;
    }
}

/// A binary whose `temp_path` is `path` serves a large answer to a slow reader and a large upload whole,
/// streaming, and counts a fallback for each.
async fn streams_without_a_temp_file(path: &Path) {
    let (upstream, seen) = raw_upstream(HUGE).await;
    let binary = buffered_binary(path, "buffer_size = \"16k\"", upstream);
    // An answer past buffer_size streams at the client's pace, whole.
    let (mut reader, prefix) = slow_reader(binary.addr, 12).await;
    wait_until_async(Duration::from_secs(5), "a response fallback", || async {
        sample(
            &binary.metrics().await,
            "fulcrum_buffer_fallbacks_total",
            &["direction=\"response\"", "reason=\"temp_file_error\""],
        ) >= 1.0
    })
    .await;
    let body = read_whole(&mut reader, prefix).await;
    assert_eq!(body, pattern(HUGE));
    // An upload past buffer_size streams the rest and arrives whole.
    let upload = pattern(200_000);
    let reply = TestClient::new()
        .send(
            http::Request::post(format!("http://{}/up", binary.addr))
                .body(crate::harness::body(upload.clone()))
                .expect("request"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(*seen.last_body.lock(), upload);
    let metrics = binary.metrics().await;
    for direction in ["request", "response"] {
        assert!(
            sample(
                &metrics,
                "fulcrum_buffer_fallbacks_total",
                &[
                    &format!("direction=\"{direction}\""),
                    "reason=\"temp_file_error\""
                ],
            ) >= 1.0,
            "{direction}: {metrics}"
        );
    }
    drop(reader);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_what_buffering_holds() {
    let (upstream, _seen) = raw_upstream(HUGE).await;
    let temp = tempfile::tempdir().expect("temp dir");
    let binary = buffered_binary(temp.path(), "buffer_size = \"16k\"", upstream);
    let _reader = slow_reader(binary.addr, 64).await;
    wait_until_async(Duration::from_secs(5), "a temp file in /status", || async {
        binary.status().await["buffers"]["response"]["temp_files"] == 1
    })
    .await;
    let status = binary.status().await;
    let response = &status["buffers"]["response"];
    assert!(
        response["temp_file_bytes"].as_u64().expect("bytes") > 0,
        "{status}"
    );
    assert!(
        response["memory_bytes"].as_u64().expect("bytes") <= 16 * 1024 + 256 * 1024,
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_clients_upload_is_buffered_and_goes_on_with_its_length() {
    let (upstream, seen) = raw_upstream(2).await;
    let temp = tempfile::tempdir().expect("temp dir");
    let binary = buffered_binary(temp.path(), "buffer_size = \"16k\"", upstream);
    let upload = pattern(100_000);
    let reply = TestClient::h2c()
        .send(
            http::Request::post(format!("http://{}/up", binary.addr))
                .body(chunked(
                    upload.chunks(10_000).map(Bytes::copy_from_slice).collect(),
                ))
                .expect("request"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        *seen.last_body.lock(),
        upload,
        "the body, with a Content-Length the upstream read it by"
    );
    assert!(
        sample(
            &binary.metrics().await,
            "fulcrum_buffer_temp_files_total",
            &["direction=\"request\""],
        ) >= 1.0
    );
}
