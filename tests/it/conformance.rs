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
