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
