//! HTTP/1.1 upgrades through the proxy: spliced both ways, counted as in flight, given the shutdown grace.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fulcrum::demo::Backend;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

/// A backend that accepts `Upgrade: echo` and echoes every byte on the upgraded connection.
async fn echo_upgrade_backend() -> Backend {
    backend_with(|mut request: Request<Incoming>| async move {
        if request.headers().get("upgrade").is_none_or(|v| v != "echo") {
            return text(StatusCode::BAD_REQUEST, "upgrade to echo only");
        }
        // An upgrade is a request like any other: it carries the forwarding fields.
        let forwarded = ["x-forwarded-for", "x-real-ip", "x-forwarded-host"]
            .map(|name| request.headers().get(name).cloned());
        if forwarded
            != [Some("127.0.0.1"), Some("127.0.0.1"), Some("tunnel.test")]
                .map(|v| v.map(HeaderValue::from_static))
        {
            return text(StatusCode::BAD_REQUEST, "forwarding fields missing");
        }
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 1024];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
        let mut response = Response::new(demo_body(""));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        response
            .headers_mut()
            .insert("connection", "upgrade".parse().expect("value"));
        response
            .headers_mut()
            .insert("upgrade", "echo".parse().expect("value"));
        Ok(response)
    })
    .await
}

/// `config` with `upgrades = ["echo"]` on its route (only WebSocket passes by default).
fn echo_allowed(config: String) -> String {
    config.replacen(
        "upstream = \"pool\"\n",
        "upstream = \"pool\"\nupgrades = [\"echo\", \"websocket\"]\n",
        1,
    )
}

/// Opens an `Upgrade: echo` tunnel through the proxy and returns the connection after the 101.
async fn open_tunnel(proxy: &TestProxy) -> TcpStream {
    let addr = proxy.url("").trim_start_matches("http://").to_string();
    let mut stream = TcpStream::connect(&addr)
        .await
        .expect("connect to the proxy");
    stream
        .write_all(b"GET /chat HTTP/1.1\r\nHost: tunnel.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .expect("send the upgrade request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.expect("read the answer");
        assert_eq!(
            n,
            1,
            "connection closed in the answer head: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    stream
}

async fn echo(stream: &mut TcpStream, message: &[u8]) {
    stream
        .write_all(message)
        .await
        .expect("write into the tunnel");
    let mut back = vec![0u8; message.len()];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut back))
        .await
        .expect("the echo comes back in time")
        .expect("read from the tunnel");
    assert_eq!(back, message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_is_tunneled_both_ways_and_counts_as_in_flight() {
    let backend = echo_upgrade_backend().await;
    let proxy = TestProxy::start(&echo_allowed(one_pool(&format!(
        "servers = [{{ addr = \"{}\" }}]",
        backend.addr()
    ))))
    .await;
    let state = Arc::clone(&proxy.proxy.live().snapshot().pools[0].primary.servers[0].state);
    let mut tunnel = open_tunnel(&proxy).await;
    echo(&mut tunnel, b"ping").await;
    echo(&mut tunnel, &[0u8, 159, 146, 150, 255]).await;
    assert_eq!(state.in_flight(), 1, "an open tunnel counts as in flight");
    assert_eq!(proxy.proxy.live().tunnels().open(), 1);
    drop(tunnel);
    wait_until(Duration::from_secs(5), "the tunnel to be released", || {
        state.in_flight() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_open_tunnels_the_grace_then_closes_them() {
    let backend = echo_upgrade_backend().await;
    let proxy = TestProxy::start(&format!(
        "[global]\nshutdown_timeout = \"700ms\"\n{}",
        echo_allowed(one_pool(&format!(
            "servers = [{{ addr = \"{}\" }}]",
            backend.addr()
        )))
    ))
    .await;
    let mut tunnel = open_tunnel(&proxy).await;
    let started = Instant::now();
    let shutdown = tokio::spawn(proxy.proxy.shutdown());
    // Within the grace the tunnel still works.
    echo(&mut tunnel, b"still here").await;
    // After it, the proxy closes the tunnel and shutdown completes.
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), tunnel.read(&mut buf))
        .await
        .expect("the tunnel is closed after the grace");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "tunnel still open: {read:?}"
    );
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .expect("shutdown completes")
        .expect("shutdown task");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(600),
        "the tunnel was not given the grace: {took:?}"
    );
}

/// A WebSocket server behind hyper's upgrade: echoes text and binary messages, answers close with close.
async fn websocket_echo_backend() -> Backend {
    Backend::start(
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        websocket_echo_handler(),
    )
    .await
    .expect("bind a WebSocket backend")
}

/// The handler of [`websocket_echo_backend`], for a TLS backend too.
fn websocket_echo_handler() -> fulcrum::demo::Handler {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;
    Arc::new(|mut request: Request<Incoming>| {
        Box::pin(async move {
            let Some(key) = request.headers().get("sec-websocket-key").cloned() else {
                return text(StatusCode::BAD_REQUEST, "not a websocket handshake");
            };
            let upgrade = hyper::upgrade::on(&mut request);
            tokio::spawn(async move {
                let Ok(upgraded) = upgrade.await else { return };
                let mut socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    None,
                )
                .await;
                // A close frame is answered by the library on the next read, which then ends the stream.
                while let Some(Ok(message)) = socket.next().await {
                    if (message.is_text() || message.is_binary())
                        && socket.send(message).await.is_err()
                    {
                        return;
                    }
                }
            });
            let mut response = Response::new(demo_body(""));
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let headers = response.headers_mut();
            headers.insert("connection", "upgrade".parse().expect("value"));
            headers.insert("upgrade", "websocket".parse().expect("value"));
            headers.insert(
                "sec-websocket-accept",
                derive_accept_key(key.as_bytes()).parse().expect("value"),
            );
            Ok(response)
        })
    })
}

/// A WebSocket session over `stream` to `url`: text and binary frames echo back, and the close frame
/// comes back through the proxy.
async fn websocket_round_trip<S>(stream: S, url: String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (mut socket, response) = tokio_tungstenite::client_async(url, stream)
        .await
        .expect("websocket handshake through the proxy");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    socket
        .send(Message::text("hello"))
        .await
        .expect("send text");
    assert_eq!(
        socket.next().await.expect("a reply").expect("ok"),
        Message::text("hello")
    );
    let bytes = vec![0u8, 1, 2, 254, 255];
    socket
        .send(Message::binary(bytes.clone()))
        .await
        .expect("send binary");
    assert_eq!(
        socket.next().await.expect("a reply").expect("ok"),
        Message::binary(bytes)
    );
    socket.close(None).await.expect("send close");
    let mut closed = false;
    while let Some(message) = socket.next().await {
        match message {
            Ok(Message::Close(_)) => closed = true,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(closed, "the close frame came back through the proxy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_text_binary_and_close_frames_pass_through() {
    let backend = websocket_echo_backend().await;
    let proxy = TestProxy::start(&one_pool(&format!(
        "servers = [{{ addr = \"{}\" }}]",
        backend.addr()
    )))
    .await;
    let addr = proxy.url("").trim_start_matches("http://").to_string();
    let stream = TcpStream::connect(&addr)
        .await
        .expect("connect to the proxy");
    websocket_round_trip(stream, format!("ws://{addr}/socket")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_a_tls_listener_round_trips_frames() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = crate::pki::TestCa::new("wss CA");
    let files = ca.issue(&["ws.test"]).write(dir.path(), "ws");
    let backend = websocket_echo_backend().await;
    let toml = crate::pki::tls_config(
        &[files],
        "",
        &format!("servers = [{{ addr = \"{}\" }}]", backend.addr()),
    );
    let proxy = TestProxy::start(&toml).await;
    let addr = proxy.proxy.listeners()[0].addr;
    let stream = crate::pki::connect(
        addr,
        "ws.test",
        ca.client(dir.path(), &[fulcrum::tls::ALPN_HTTP11]),
    )
    .await
    .expect("TLS handshake");
    websocket_round_trip(stream, "wss://ws.test/socket".to_string()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_to_a_tls_upstream_round_trips_frames() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = crate::pki::TestCa::new("wss upstream CA");
    let backend = Backend::start_tls(
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        websocket_echo_handler(),
        ca.issue(&["localhost"])
            .server_config(dir.path(), "upstream"),
    )
    .await
    .expect("start a TLS WebSocket backend");
    let proxy = TestProxy::start(&one_pool(&format!(
        "ca_file = \"{}\"\nservers = [{{ addr = \"https://localhost:{}\" }}]",
        ca.write(dir.path(), "ca.pem").display(),
        backend.addr().port()
    )))
    .await;
    let addr = proxy.url("").trim_start_matches("http://").to_string();
    let stream = TcpStream::connect(&addr)
        .await
        .expect("connect to the proxy");
    websocket_round_trip(stream, format!("ws://{addr}/socket")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_the_upstream_sends_with_its_101_reach_the_client_first() {
    // A raw upstream that writes its 101 and the first tunnel bytes in one segment, then echoes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let upstream = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let mut head = Vec::new();
        let mut chunk = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
            }
        }
        let answer = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\nearly!";
        if stream.write_all(answer).await.is_err() {
            return;
        }
        while let Ok(n) = stream.read(&mut chunk).await {
            if n == 0 || stream.write_all(&chunk[..n]).await.is_err() {
                return;
            }
        }
    });
    let proxy = TestProxy::start(&echo_allowed(one_pool(&format!(
        "servers = [{{ addr = \"{upstream}\" }}]"
    ))))
    .await;
    let mut stream = open_tunnel(&proxy).await;
    let mut early = [0u8; 6];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut early))
        .await
        .expect("the early bytes come in time")
        .expect("read the early bytes");
    assert_eq!(&early, b"early!");
    echo(&mut stream, b"and then both ways").await;
}
