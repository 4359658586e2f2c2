//! Hostile and unusual requests, round two (issue 31): the authority we route by, the upgrades we allow,
//! the protocol ALPN chose, bounded chunk sizes, HTTP/2 field values and TLS session tickets. Raw
//! HTTP/1.1 over sockets and a raw HTTP/2 client (the h2 crate); upstreams that record what they get.

use std::time::Duration;

use fulcrum::tls::{ALPN_H2, ALPN_HTTP11};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;
use crate::pki::*;

/// SETTINGS (empty) then GOAWAY(last stream 0, PROTOCOL_ERROR): what nginx also answers there.
const REFUSAL: [u8; 26] = [
    0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
];

#[tokio::test]
async fn after_alpn_chose_h2_an_http1_request_is_a_connection_error_and_reaches_no_upstream() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new("alpn CA");
    let files = [ca.issue(&["alpn.test"]).write(dir.path(), "alpn")];
    let backend = named("app").await;
    let toml = tls_config(&files, "", &servers(&[(backend.addr(), 1)]));
    let proxy = TestProxy::start(&toml).await;
    let addr = proxy.proxy.listeners()[0].addr;

    let mut stream = connect(addr, "alpn.test", any_cert_client(&[ALPN_H2]))
        .await
        .expect("handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(ALPN_H2));
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: alpn.test\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("the proxy closes the connection")
        .ok();
    assert_eq!(answer, REFUSAL, "SETTINGS then GOAWAY(PROTOCOL_ERROR)");
    assert_eq!(backend.requests(), 0);

    // ALPN http/1.1 on the same listener: HTTP/1.1 is served.
    let stream = connect(addr, "alpn.test", any_cert_client(&[ALPN_HTTP11]))
        .await
        .expect("handshake");
    let mut sender = http1(stream).await;
    assert_eq!(get1(&mut sender, "alpn.test", "/").await.body, "app");
    // ALPN h2 and the HTTP/2 preface: served.
    let stream = connect(addr, "alpn.test", any_cert_client(&[ALPN_H2]))
        .await
        .expect("handshake");
    let mut sender = http2(stream).await;
    assert_eq!(get2(&mut sender, "alpn.test", "/").await.body, "app");
    assert_eq!(backend.requests(), 2);
}

/// Whether a new connection to `addr` with `client` resumed a session (after one full request on a first
/// connection, which brings the client its ticket).
async fn resumes(
    addr: std::net::SocketAddr,
    client: &std::sync::Arc<rustls::ClientConfig>,
) -> bool {
    let stream = connect(addr, "tickets.test", client.clone())
        .await
        .expect("handshake");
    stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
}

#[tokio::test]
async fn session_tickets_resume_within_session_ticket_lifetime_and_not_after() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new("tickets CA");
    let files = [ca.issue(&["tickets.test"]).write(dir.path(), "tickets")];
    let backend = named("app").await;
    let toml = tls_config(&files, "", &servers(&[(backend.addr(), 1)])).replace(
        "[[listener.tls.certificates]]",
        "[listener.tls]\nsession_ticket_lifetime = \"2s\"\n[[listener.tls.certificates]]",
    );
    let proxy = TestProxy::start(&toml).await;
    let addr = proxy.proxy.listeners()[0].addr;
    let client = any_cert_client(&[ALPN_HTTP11]);
    let first = connect(addr, "tickets.test", client.clone())
        .await
        .expect("handshake");
    let mut sender = http1(first).await;
    assert_eq!(get1(&mut sender, "tickets.test", "/").await.body, "app");
    assert!(resumes(addr, &client).await, "a fresh ticket resumes");
    // Past the lifetime the ticket's key is gone: a full handshake.
    let past = std::time::Instant::now() + Duration::from_millis(2_100);
    wait_until(
        Duration::from_secs(5),
        "the ticket lifetime to pass",
        || std::time::Instant::now() >= past,
    )
    .await;
    assert!(
        !resumes(addr, &client).await,
        "a ticket older than its lifetime"
    );
}

#[test]
fn session_ticket_lifetime_defaults_to_an_hour_and_is_read_where_written() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new("tickets CA");
    let files = [ca.issue(&["tickets.test"]).write(dir.path(), "tickets")];
    let toml = tls_config(&files, "", "servers = [{ addr = \"127.0.0.1:9\" }]");
    let lifetime = |text: &str| {
        let config = fulcrum::Config::parse(text, std::path::Path::new("t.toml")).expect("valid");
        config.listeners[0]
            .tls
            .as_ref()
            .expect("a TLS listener")
            .session_ticket_lifetime
    };
    assert_eq!(lifetime(&toml), Duration::from_secs(3600));
    let in_tls = toml.replace(
        "[[listener.tls.certificates]]",
        "[listener.tls]\nsession_ticket_lifetime = \"5m\"\n[[listener.tls.certificates]]",
    );
    assert_eq!(lifetime(&in_tls), Duration::from_secs(300));
    let on_listener = toml.replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\nsession_ticket_lifetime = \"10m\"",
    );
    assert_eq!(lifetime(&on_listener), Duration::from_secs(600));
}

/// Two routes by host: `secret.test` to `secret`, anything else to `public`; both raw recording upstreams.
async fn two_hosts() -> (
    crate::smuggling::RawBackend,
    crate::smuggling::RawBackend,
    TestProxy,
) {
    let secret = crate::smuggling::RawBackend::start().await;
    let public = crate::smuggling::RawBackend::start().await;
    let toml = format!(
        "[[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[route]]\nhost = \"secret.test\"\nupstream = \"secret\"\n\n\
         [[route]]\nupstream = \"public\"\n\n\
         [upstream.secret]\nservers = [{{ addr = \"{}\" }}]\n\n\
         [upstream.public]\nservers = [{{ addr = \"{}\" }}]\n",
        secret.addr, public.addr
    );
    let proxy = TestProxy::start(&toml).await;
    (secret, public, proxy)
}

/// The `Host` line of a head the upstream received.
fn host_line(head: &str) -> String {
    head.lines()
        .find(|line| line.to_ascii_lowercase().starts_with("host:"))
        .map(|line| line[5..].trim().to_string())
        .unwrap_or_default()
}

/// Sends raw bytes on a new connection; the status of the answer (0: closed without one).
async fn raw_status(addr: std::net::SocketAddr, bytes: &[u8]) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    crate::smuggling::status_code(&answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_target_routes_by_its_authority_and_is_forwarded_as_host() {
    let (secret, public, proxy) = two_hosts().await;
    let addr = proxy.addr();
    let close = "Connection: close\r\n\r\n";
    let status = raw_status(
        addr,
        format!("GET http://secret.test/x HTTP/1.1\r\nHost: localhost\r\n{close}").as_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    let got = secret.requests();
    assert_eq!(got.len(), 1, "routed by the target's authority");
    assert!(
        got[0].head.starts_with("GET /x HTTP/1.1"),
        "{}",
        got[0].head
    );
    assert_eq!(host_line(&got[0].head), "secret.test");
    assert!(public.requests().is_empty());

    // And the other way round.
    secret.clear();
    let status = raw_status(
        addr,
        format!("GET http://localhost/y HTTP/1.1\r\nHost: secret.test\r\n{close}").as_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        secret.requests().is_empty(),
        "Host does not win over the target"
    );
    assert_eq!(host_line(&public.requests()[0].head), "localhost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn userinfo_bad_ports_and_empty_hosts_get_400_and_reach_no_upstream() {
    let (secret, public, proxy) = two_hosts().await;
    let addr = proxy.addr();
    let cases: [&[u8]; 6] = [
        b"GET http://user@secret.test/x HTTP/1.1\r\nHost: secret.test\r\nConnection: close\r\n\r\n",
        b"GET http://secret.test:99999/x HTTP/1.1\r\nHost: secret.test\r\nConnection: close\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: localhost@secret.test\r\nConnection: close\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: localhost:99999\r\nConnection: close\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: secret.test:8a\r\nConnection: close\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost:\r\nConnection: close\r\n\r\n",
    ];
    for case in cases {
        let status = raw_status(addr, case).await;
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(case));
    }
    assert!(secret.requests().is_empty() && public.requests().is_empty());
    // A valid port is fine.
    let status = raw_status(
        addr,
        b"GET /x HTTP/1.1\r\nHost: secret.test:65535\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(secret.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_authority_wins_over_a_differing_host_field() {
    let (secret, public, proxy) = two_hosts().await;
    let mut client = h2c_client(proxy.addr()).await;
    let request = http::Request::get("http://secret.test/z")
        .header("host", "localhost")
        .body(())
        .expect("a GET");
    let (response, _) = client.send_request(request, true).expect("send");
    assert_eq!(
        response.await.expect("an answer").status(),
        http::StatusCode::OK
    );
    let got = secret.requests();
    assert_eq!(got.len(), 1, "routed by :authority");
    assert_eq!(host_line(&got[0].head), "secret.test");
    assert!(public.requests().is_empty());

    // :authority with userinfo: refused, nothing forwarded.
    let mut client = client.ready().await.expect("still ready");
    let request = http::Request::get("http://user@secret.test/z")
        .body(())
        .expect("a GET");
    let (response, _) = client.send_request(request, true).expect("send");
    let status = response.await.map(|r| r.status());
    assert!(
        matches!(status, Ok(http::StatusCode::BAD_REQUEST)) || status.is_err(),
        "{status:?}"
    );
    assert_eq!(secret.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_the_route_does_not_allow_is_stripped_before_the_upstream() {
    let backend = crate::smuggling::RawBackend::start().await;
    let proxy = TestProxy::start(&one_pool(&format!(
        "servers = [{{ addr = \"{}\" }}]",
        backend.addr
    )))
    .await;
    // The h2c upgrade (RFC 9113 3.1 deprecates it; "h2c smuggling" goes around a proxy's rules with it).
    let status = raw_status(
        proxy.addr(),
        b"GET /plain HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "served as a plain request");
    let got = backend.requests();
    assert_eq!(got.len(), 1);
    let head = got[0].head.to_ascii_lowercase();
    assert!(
        !head.contains("upgrade") && !head.contains("http2-settings") && !head.contains("h2c"),
        "the upstream saw the upgrade: {head}"
    );
}

/// A raw upstream that answers every request with `101` switching to `protocol`.
async fn switching_backend(protocol: &'static str) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {protocol}\r\n\r\n"
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.read(&mut buf).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_to_a_protocol_that_was_not_forwarded_is_answered_502() {
    for (protocol, request) in [
        // No upgrade asked for at all.
        ("h2c", &b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"[..]),
        // WebSocket asked for, something else granted.
        (
            "h2c",
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        ),
    ] {
        let upstream = switching_backend(protocol).await;
        let proxy =
            TestProxy::start(&one_pool(&format!("servers = [{{ addr = \"{upstream}\" }}]"))).await;
        let status = raw_status(proxy.addr(), request).await;
        assert_eq!(status, 502, "{}", String::from_utf8_lossy(request));
    }
    // The switch asked for and allowed is spliced as before.
    let upstream = switching_backend("websocket").await;
    let proxy = TestProxy::start(&one_pool(&format!(
        "servers = [{{ addr = \"{upstream}\" }}]"
    )))
    .await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("connect");
    stream
        .write_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .await
        .expect("write");
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("an answer")
        .expect("read");
    assert_eq!(crate::smuggling::status_code(&buf[..n]), 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_field_values_with_leading_or_trailing_whitespace_reset_the_stream() {
    let backend = named("app").await;
    let proxy = TestProxy::start(&one_pool(&servers(&[(backend.addr(), 1)]))).await;
    let mut client = h2c_client(proxy.addr()).await;
    for value in ["trailing ", " leading", "\ttab", "tab\t"] {
        let request = http::Request::get("http://app.test/")
            .header(
                "x-padded",
                http::HeaderValue::from_str(value).expect("a value"),
            )
            .body(())
            .expect("a GET");
        let (response, _) = client.send_request(request, true).expect("send");
        let reason = response.await.expect_err("the stream is reset").reason();
        assert_eq!(reason, Some(h2::Reason::PROTOCOL_ERROR), "{value:?}");
        client = client.ready().await.expect("the connection stays usable");
    }
    assert_eq!(backend.requests(), 0, "nothing was forwarded");
    let request = http::Request::get("http://app.test/")
        .header("x-inner", "in ner")
        .body(())
        .expect("a GET");
    let (response, _) = client.send_request(request, true).expect("send");
    assert_eq!(
        response.await.expect("an answer").status(),
        http::StatusCode::OK
    );
}

/// An HTTP/2 (prior knowledge) client connection to `addr`, ready to send.
async fn h2c_client(addr: std::net::SocketAddr) -> h2::client::SendRequest<bytes::Bytes> {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (client, connection) = h2::client::handshake(stream).await.expect("h2 handshake");
    tokio::spawn(connection);
    client.ready().await.expect("h2 ready")
}

/// A raw upstream that keeps every byte it receives and never answers; returns its address and the bytes.
async fn recording_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<parking_lot::Mutex<Vec<u8>>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let kept = std::sync::Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let kept = std::sync::Arc::clone(&kept);
            tokio::spawn(async move {
                let mut buf = [0u8; 16 * 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    kept.lock().extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_larger_than_max_body_size_allows_gets_413_before_any_of_it_is_forwarded() {
    let (upstream, seen) = recording_upstream().await;
    let proxy = TestProxy::start(&format!(
        "[global]\nmax_body_size = \"1m\"\n{}",
        one_pool(&format!("servers = [{{ addr = \"{upstream}\" }}]"))
    ))
    .await;
    for (first, size) in [
        // One chunk announcing 4 MiB.
        ("", "400000"),
        // A small chunk, then one whose size would pass the limit with it.
        ("10\r\nAAAAAAAAAAAAAAAA\r\n", "fffff"),
    ] {
        seen.lock().clear();
        let mut stream = tokio::net::TcpStream::connect(proxy.addr())
            .await
            .expect("connect");
        let head = "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
        stream
            .write_all(format!("{head}{first}{size}\r\n").as_bytes())
            .await
            .expect("write");
        // The chunk's first bytes: a marker the upstream must never see.
        stream.write_all(&[b'Z'; 32 * 1024]).await.expect("write");
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let mut buf = [0u8; 4096];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        answer.extend_from_slice(&buf[..n]);
                        if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                }
            }
        })
        .await;
        assert_eq!(
            crate::smuggling::status_code(&answer),
            413,
            "{}",
            String::from_utf8_lossy(&answer)
        );
        let forwarded = seen.lock().clone();
        assert!(
            !forwarded.contains(&b'Z'),
            "bytes of the oversized chunk reached the upstream: {} bytes",
            forwarded.iter().filter(|&&b| b == b'Z').count()
        );
    }
}
