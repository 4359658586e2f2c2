//! Slow, idle and greedy clients on raw sockets: `client_header_timeout` (slowloris), `keepalive_timeout`,
//! `client_body_timeout`, `send_timeout`, `keepalive_requests`, `max_connections` and `max_uri_size`; and a
//! client that connects, waits, then sends its request.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{
    backend_with, binary_with_global, endless_backend, named, one_pool, proxy_with,
    read_raw_response, text, wait_until,
};

/// Reads one response from `stream`: its status and head; `None` when the proxy closed first.
async fn read_response(stream: &mut TcpStream) -> Option<(u16, String)> {
    read_raw_response(stream, &mut Vec::new())
        .await
        .map(|answer| (answer.status, answer.head))
}

/// `count` new connections to `addr`, each with one GET answered 200, held open.
async fn served_connections(addr: std::net::SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..count {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(GET).await.expect("write");
        assert_eq!(read_response(&mut stream).await.map(|r| r.0), Some(200));
        held.push(stream);
    }
    held
}

/// A new connection to `addr` whose GET gets no answer: the proxy closes it.
async fn assert_refused(addr: std::net::SocketAddr, what: &str) {
    let mut excess = TcpStream::connect(addr).await.expect("connect");
    let _ = excess.write_all(GET).await;
    assert_eq!(read_response(&mut excess).await, None, "{what}");
}

/// Waits (up to `limit`) for the proxy to close `stream`; returns how long it took.
async fn closed_within(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    let mut sink = [0u8; 1024];
    loop {
        match tokio::time::timeout(
            limit.saturating_sub(started.elapsed()),
            stream.read(&mut sink),
        )
        .await
        {
            Ok(Ok(0) | Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the proxy kept the connection open for {limit:?}"),
        }
    }
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

#[tokio::test]
async fn a_connection_whose_request_comes_after_the_binary_accepted_it_is_served() {
    let backend = named("ok").await;
    let (fulcrum, addr, _config) = binary_with_global("", backend.addr(), "", "");
    // A first connection, served and kept open, so the upstream connection is pooled and the descriptor
    // count below moves only with the accept.
    let mut prompt = TcpStream::connect(addr).await.expect("connect");
    prompt.write_all(GET).await.expect("write");
    assert_eq!(read_response(&mut prompt).await.map(|r| r.0), Some(200));
    let before = fulcrum.open_fds();
    let mut late = TcpStream::connect(addr).await.expect("connect");
    // Accepted with nothing to read yet: its first read waits for the socket's first readable event
    // (src/server/acceptor.rs), which only the request written next brings.
    wait_until(
        Duration::from_secs(5),
        "the binary to accept the connection",
        || fulcrum.open_fds() > before,
    )
    .await;
    late.write_all(GET).await.expect("write");
    assert_eq!(read_response(&mut late).await.map(|r| r.0), Some(200));
    assert_eq!(backend.requests(), 2);
}

#[tokio::test]
async fn a_client_trickling_its_header_is_cut_off_at_client_header_timeout() {
    let backend = named("ok").await;
    let proxy = proxy_with("client_header_timeout = \"1s\"", backend.addr()).await;
    let stream = proxy.connect().await;
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    // Slowloris: a header line every 100 ms, for up to 10 s, never finishing the head.
    let trickle = tokio::spawn(async move {
        for i in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let line = format!("X-Slow-{i}: b\r\n");
            if writer.write_all(line.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    let took = closed_within(&mut reader, Duration::from_secs(5)).await;
    assert!(
        took >= Duration::from_millis(800),
        "closed after {took:?}, before client_header_timeout (1s)"
    );
    trickle.abort();
    assert_eq!(backend.requests(), 0, "a partial head reached the upstream");

    // A connection that sends nothing at all is closed too, at client_header_timeout, not before.
    let mut silent = proxy.connect().await;
    let took = closed_within(&mut silent, Duration::from_secs(5)).await;
    assert!(
        took >= Duration::from_millis(800),
        "a silent connection closed after {took:?}, before client_header_timeout (1s)"
    );

    // A prompt client on the same listener is served.
    let mut prompt = proxy.connect().await;
    prompt.write_all(GET).await.expect("write");
    assert_eq!(read_response(&mut prompt).await.map(|r| r.0), Some(200));
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_keepalive_timeout_and_a_busy_one_is_not() {
    let backend = named("ok").await;
    let proxy = proxy_with("keepalive_timeout = \"1s\"", backend.addr()).await;

    // Busy: a request every 300 ms for 2.4 s on one connection, all answered on it.
    let mut busy = proxy.connect().await;
    for _ in 0..8 {
        busy.write_all(GET).await.expect("write");
        assert_eq!(read_response(&mut busy).await.map(|r| r.0), Some(200));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Then idle: closed about a second later.
    let took = closed_within(&mut busy, Duration::from_secs(5)).await;
    assert!(
        took >= Duration::from_millis(600),
        "closed after {took:?} idle, before keepalive_timeout (1s)"
    );

    // keepalive_timeout = 0 turns keep-alive off: every answer says close and the connection ends.
    let off = proxy_with("keepalive_timeout = 0", backend.addr()).await;
    let mut stream = off.connect().await;
    stream.write_all(GET).await.expect("write");
    let (status, head) = read_response(&mut stream).await.expect("an answer");
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    closed_within(&mut stream, Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_body_that_stops_arriving_gets_408_at_client_body_timeout() {
    let backend = backend_with(|request: Request<Incoming>| async move {
        // Read the whole body, as an upload handler would.
        match request.into_body().collect().await {
            Ok(body) => text(StatusCode::OK, format!("{} bytes", body.to_bytes().len())),
            Err(e) => Err(e.into()),
        }
    })
    .await;
    let proxy = proxy_with("client_body_timeout = \"1s\"", backend.addr()).await;
    let mut stream = proxy.connect().await;
    stream
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .expect("write");
    let started = Instant::now();
    let (status, _) = read_response(&mut stream).await.expect("an answer");
    assert_eq!(status, 408);
    assert!(started.elapsed() >= Duration::from_millis(800));

    // The stalled client was not the server's fault: it still serves, and was not marked down.
    let mut next = proxy.connect().await;
    next.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        .await
        .expect("write");
    assert_eq!(read_response(&mut next).await.map(|r| r.0), Some(200));
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_at_send_timeout() {
    // An endless response body; the flag says when the proxy let go of it.
    let (backend, released) = endless_backend(None).await;
    let proxy = proxy_with("send_timeout = \"1s\"", backend.addr()).await;
    let mut stream = proxy.connect().await;
    stream.write_all(GET).await.expect("write");
    // Never read: the socket buffers fill, the proxy's writes block, and after send_timeout it gives up.
    wait_until(
        Duration::from_secs(10),
        "the proxy to drop the response of a client that does not read",
        || released.load(Ordering::Acquire),
    )
    .await;
    drop(stream);
}

#[tokio::test]
async fn keepalive_requests_closes_a_connection_after_that_many_requests() {
    let backend = named("ok").await;
    let proxy = proxy_with("keepalive_requests = 3", backend.addr()).await;
    let mut stream = proxy.connect().await;
    for i in 1..=3 {
        stream.write_all(GET).await.expect("write");
        let (status, head) = read_response(&mut stream).await.expect("an answer");
        assert_eq!(status, 200);
        let closes = head.to_ascii_lowercase().contains("connection: close");
        assert_eq!(closes, i == 3, "request {i}: {head}");
    }
    closed_within(&mut stream, Duration::from_secs(2)).await;
}

#[tokio::test]
async fn max_connections_refuses_the_excess_and_frees_slots_as_connections_close() {
    let backend = named("ok").await;
    let proxy = proxy_with("max_connections = 2", backend.addr()).await;
    let addr = proxy.addr();
    let mut held = served_connections(addr, 2).await;
    assert_refused(addr, "a third connection was served").await;

    // The held ones still work; closing one lets a new one in.
    held[0].write_all(GET).await.expect("write");
    assert_eq!(read_response(&mut held[0]).await.map(|r| r.0), Some(200));
    drop(held.pop());
    let served = Arc::new(AtomicUsize::new(0));
    crate::harness::wait_until_async(Duration::from_secs(5), "a slot to free up", || {
        let served = Arc::clone(&served);
        async move {
            let Ok(mut stream) = TcpStream::connect(addr).await else {
                return false;
            };
            if stream.write_all(GET).await.is_err() {
                return false;
            }
            let ok = read_response(&mut stream).await.map(|r| r.0) == Some(200);
            served.fetch_add(usize::from(ok), Ordering::Relaxed);
            ok
        }
    })
    .await;
    assert_eq!(served.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_for_the_listener_across_serving_threads() {
    // Three serving threads, each with its own accept loop on the listener: the limit is the
    // listener's, not each loop's, whichever threads the connections land on.
    let backend = named("ok").await;
    let (_fulcrum, addr, _dir) = binary_with_global(
        "worker_threads = 3",
        backend.addr(),
        "max_connections = 2",
        "",
    );
    let mut held = served_connections(addr, 2).await;
    for attempt in 0..6 {
        assert_refused(
            addr,
            &format!("attempt {attempt}: a third connection was served"),
        )
        .await;
    }
    for stream in &mut held {
        stream.write_all(GET).await.expect("write");
        assert_eq!(read_response(stream).await.map(|r| r.0), Some(200));
    }
}

#[tokio::test]
async fn a_request_target_over_max_uri_size_gets_414_and_never_reaches_the_upstream() {
    let backend = named("ok").await;
    let default = proxy_with("", backend.addr()).await;
    let request = |length: usize| {
        format!(
            "GET /{} HTTP/1.1\r\nHost: x\r\n\r\n",
            "a".repeat(length - 1)
        )
        .into_bytes()
    };
    let mut stream = default.connect().await;
    stream.write_all(&request(8 * 1024)).await.expect("write");
    assert_eq!(read_response(&mut stream).await.map(|r| r.0), Some(200));
    stream
        .write_all(&request(8 * 1024 + 1))
        .await
        .expect("write");
    assert_eq!(read_response(&mut stream).await.map(|r| r.0), Some(414));
    assert_eq!(backend.requests(), 1);

    let small = proxy_with("max_uri_size = \"1k\"", backend.addr()).await;
    let mut stream = small.connect().await;
    stream.write_all(&request(1025)).await.expect("write");
    assert_eq!(read_response(&mut stream).await.map(|r| r.0), Some(414));
    assert_eq!(backend.requests(), 1);
}

#[test]
fn bad_client_limits_are_config_errors_naming_the_key() {
    let cases = [
        (
            "client_header_timeout = \"0s\"",
            "listener[0].client_header_timeout",
        ),
        ("send_timeout = \"2d\"", "listener[0].send_timeout"),
        ("keepalive_requests = 0", "listener[0].keepalive_requests"),
        ("max_connections = 0", "listener[0].max_connections"),
        ("max_uri_size = \"10\"", "listener[0].max_uri_size"),
        ("client_body_timeout = \"soon\"", "client_body_timeout"),
    ];
    for (line, key) in cases {
        let toml = one_pool("servers = [{ addr = \"127.0.0.1:1\" }]").replacen(
            "listen = \"127.0.0.1:0\"\n",
            &format!("listen = \"127.0.0.1:0\"\n{line}\n"),
            1,
        );
        let error = fulcrum::Config::parse(&toml, std::path::Path::new("test.toml"))
            .expect_err(line)
            .to_string();
        assert!(
            error.contains(key) && error.contains("test.toml:4"),
            "{line}: {error}"
        );
    }
}
