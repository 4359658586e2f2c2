//! TLS listeners: SNI certificate choice, ALPN, protocol versions, handshake timeout, certificate reload,
//! config errors for bad files, and redirect_to_https on plain listeners.

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use fulcrum::tls::{ALPN_H2, ALPN_HTTP11};
use fulcrum::Config;
use http::StatusCode;

use crate::harness::*;
use crate::pki::*;

/// A backend that answers with the X-Forwarded-Proto it got and the HTTP version of the request.
async fn proto_echo() -> fulcrum::demo::Backend {
    backend_with(|request: http::Request<hyper::body::Incoming>| async move {
        let proto = request
            .headers()
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_string();
        text(StatusCode::OK, proto)
    })
    .await
}

fn pool_of(backend: &fulcrum::demo::Backend) -> String {
    servers(&[(backend.addr(), 1)])
}

#[tokio::test]
async fn sni_picks_exact_then_wildcard_then_the_first_certificate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new("sni test CA");
    let first = ca.issue(&["a.example.com"]);
    let wildcard = ca.issue(&["*.b.example.com"]);
    let exact = ca.issue(&["x.b.example.com"]);
    let renamed = ca.issue(&["other.test"]);
    let backend = named("app").await;
    let files = [
        first.write(dir.path(), "first"),
        wildcard.write(dir.path(), "wildcard"),
        exact.write(dir.path(), "exact"),
        renamed.write(dir.path(), "renamed"),
    ];
    let mut toml = tls_config(&files, "", &pool_of(&backend));
    toml = toml.replacen(
        &format!("key = \"{}\"\n", files[3].1.display()),
        &format!(
            "key = \"{}\"\nserver_names = [\"override.test\"]\n",
            files[3].1.display()
        ),
        1,
    );
    let proxy = TestProxy::start(&toml).await;
    let addr = proxy.proxy.listeners()[0].addr;
    let client = any_cert_client(&[ALPN_HTTP11]);
    for (sni, expected, why) in [
        ("a.example.com", &first, "exact name"),
        ("y.b.example.com", &wildcard, "wildcard one label up"),
        (
            "x.b.example.com",
            &exact,
            "an exact name beats a wildcard listed before it",
        ),
        (
            "deep.y.b.example.com",
            &first,
            "a wildcard covers one label only",
        ),
        (
            "unknown.test",
            &first,
            "unknown name: the first certificate",
        ),
        (
            "127.0.0.1",
            &first,
            "no SNI (IP address): the first certificate",
        ),
        (
            "override.test",
            &renamed,
            "server_names replaces the certificate's names",
        ),
        ("A.EXAMPLE.COM", &first, "names match in any case"),
    ] {
        let stream = connect(addr, sni, client.clone()).await.expect("handshake");
        assert!(presented(&stream) == expected.der, "{sni}: {why}");
    }
    // A client that verifies gets a chain it accepts for its name, and a real answer.
    let stream = connect(
        addr,
        "y.b.example.com",
        ca.client(dir.path(), &[ALPN_HTTP11]),
    )
    .await
    .expect("a verifying client accepts the wildcard certificate");
    let mut sender = http1(stream).await;
    let answer = get1(&mut sender, "y.b.example.com", "/").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::OK, "app")
    );
}

#[tokio::test]
async fn alpn_negotiates_h2_or_http11_and_requests_carry_forwarded_proto_https() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new("alpn test CA");
    let files = ca.issue(&["app.test"]).write(dir.path(), "app");
    let backend = proto_echo().await;
    let proxy = TestProxy::start(&tls_config(&[files], "", &pool_of(&backend))).await;
    let addr = proxy.proxy.listeners()[0].addr;

    let h2 = connect(
        addr,
        "app.test",
        ca.client(dir.path(), &[ALPN_H2, ALPN_HTTP11]),
    )
    .await
    .expect("handshake");
    assert_eq!(
        alpn(&h2).as_deref(),
        Some(ALPN_H2),
        "h2 is preferred when offered"
    );
    let sender = http2(h2).await;
    // Many concurrent streams on the one connection.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let mut sender = sender.clone();
        calls.spawn(async move { get2(&mut sender, "app.test", "/").await });
    }
    while let Some(answer) = calls.join_next().await {
        let answer = answer.expect("stream task");
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (StatusCode::OK, "https")
        );
    }

    let h1 = connect(addr, "app.test", ca.client(dir.path(), &[ALPN_HTTP11]))
        .await
        .expect("handshake");
    assert_eq!(alpn(&h1).as_deref(), Some(ALPN_HTTP11));
    let mut sender = http1(h1).await;
    let answer = get1(&mut sender, "app.test", "/").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::OK, "https")
    );
}

#[tokio::test]
async fn http2_listener_advertises_its_stream_limit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new("h2 limits CA");
    let files = ca.issue(&["app.test"]).write(dir.path(), "app");
    let backend = named("app").await;
    let proxy = TestProxy::start(&tls_config(
        &[files],
        "http2_max_concurrent_streams = 7",
        &pool_of(&backend),
    ))
    .await;
    let addr = proxy.proxy.listeners()[0].addr;
    let stream = connect(addr, "app.test", ca.client(dir.path(), &[ALPN_H2]))
        .await
        .expect("handshake");
    let (client, connection) = h2::client::handshake(stream).await.expect("h2 handshake");
    tokio::spawn(connection);
    let mut client = client.ready().await.expect("h2 ready");
    let request = http::Request::get("https://app.test/")
        .body(())
        .expect("a GET");
    let (response, _) = client.send_request(request, true).expect("send");
    let response = response.await.expect("an answer");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(client.current_max_send_streams(), 7);
}

/// A ClientHello with `client_version` (no supported_versions extension, so that is its highest version),
/// offering ECDHE-ECDSA suites, x25519/P-256 and ECDSA/RSA-PSS signatures, with SNI `app.test`.
fn client_hello(version: [u8; 2]) -> Vec<u8> {
    fn extension(kind: u16, data: &[u8]) -> Vec<u8> {
        let mut out = kind.to_be_bytes().to_vec();
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(data);
        out
    }
    let name = b"app.test";
    let mut sni = ((name.len() + 3) as u16).to_be_bytes().to_vec();
    sni.push(0); // host_name
    sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni.extend_from_slice(name);
    let mut extensions = extension(0x0000, &sni);
    extensions.extend(extension(0x000a, &[0x00, 0x04, 0x00, 0x1d, 0x00, 0x17])); // groups
    extensions.extend(extension(0x000b, &[0x01, 0x00])); // point formats
    extensions.extend(extension(0x000d, &[0x00, 0x04, 0x04, 0x03, 0x08, 0x04])); // signatures
    let mut body = version.to_vec();
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x06, 0xc0, 0x2b, 0xc0, 0x2f, 0xc0, 0x09]); // suites
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    body.extend_from_slice(&extensions);
    let mut handshake = vec![0x01, 0x00];
    handshake.extend_from_slice(&(body.len() as u16).to_be_bytes());
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

/// Sends `hello` on a raw socket and returns the first bytes the server answers (until it closes or 5 s).
async fn raw_hello(addr: std::net::SocketAddr, hello: Vec<u8>) -> Vec<u8> {
    tokio::task::spawn_blocking(move || {
        let mut socket = std::net::TcpStream::connect(addr).expect("connect");
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        socket.write_all(&hello).expect("send the hello");
        let mut answer = vec![0u8; 5];
        match socket.read_exact(&mut answer) {
            Ok(()) => answer,
            Err(_) => Vec::new(),
        }
    })
    .await
    .expect("raw client")
}

fn with_admin(toml: &str) -> String {
    format!("[admin]\nlisten = \"127.0.0.1:0\"\n\n{toml}")
}

#[tokio::test]
async fn a_client_offering_only_tls_1_1_is_refused_and_counted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new("version test CA");
    let files = ca.issue(&["app.test"]).write(dir.path(), "app");
    let backend = named("app").await;
    let proxy = TestProxy::start(&with_admin(&tls_config(&[files], "", &pool_of(&backend)))).await;
    let addr = proxy.proxy.listeners()[0].addr;
    let metrics_url = format!(
        "http://{}/metrics",
        proxy.proxy.admin_addr().expect("admin")
    );

    // Control: the same hello at TLS 1.2 gets a ServerHello (a handshake record).
    let control = raw_hello(addr, client_hello([0x03, 0x03])).await;
    assert_eq!(
        control.first(),
        Some(&0x16),
        "TLS 1.2 hello answered with a handshake: {control:02x?}"
    );
    // At TLS 1.1: a fatal alert (content type 21) or a close, never a ServerHello.
    let answer = raw_hello(addr, client_hello([0x03, 0x02])).await;
    assert!(
        answer.is_empty() || answer[0] == 0x15,
        "expected an alert or a close, got {answer:02x?}"
    );
    let failed = ["listener=\"https\"", "reason=\"error\""];
    let client = TestClient::new();
    // The control hello was dropped unfinished (counted too) and the TLS 1.1 one refused: two failures.
    wait_until_async(
        Duration::from_secs(5),
        "the handshake failures to be counted",
        || {
            let client = client.clone();
            let url = metrics_url.clone();
            async move {
                let text = client.get(&url).await.body;
                sample(&text, "fulcrum_tls_handshake_failures_total", &failed) == 2.0
            }
        },
    )
    .await;
    // TLS 1.2 still works.
    let tls12 = rustls::ClientConfig::builder_with_provider(fulcrum::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("TLS 1.2")
        .with_root_certificates({
            let mut roots = rustls::RootCertStore::empty();
            let ca_pem = std::fs::read(ca.write(dir.path(), "ca.pem")).expect("read the CA");
            for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&ca_pem) {
                roots.add(cert.expect("CA cert")).expect("add the CA");
            }
            roots
        })
        .with_no_client_auth();
    let stream = connect(addr, "app.test", std::sync::Arc::new(tls12))
        .await
        .expect("a TLS 1.2 handshake");
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
}

#[tokio::test]
async fn a_silent_client_is_cut_at_handshake_timeout_without_holding_up_others() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new("timeout test CA");
    let files = ca.issue(&["app.test"]).write(dir.path(), "app");
    let backend = named("app").await;
    let toml = with_admin(&tls_config(
        &[files],
        "[listener.tls]\nhandshake_timeout = \"400ms\"",
        &pool_of(&backend),
    ));
    let proxy = TestProxy::start(&toml).await;
    let addr = proxy.proxy.listeners()[0].addr;
    let silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let opened = Instant::now();
    // While the silent connection sits in its handshake, another client is served at once.
    let stream = connect(addr, "app.test", ca.client(dir.path(), &[ALPN_HTTP11]))
        .await
        .expect("handshake");
    let mut sender = http1(stream).await;
    assert_eq!(
        get1(&mut sender, "app.test", "/").await.status,
        StatusCode::OK
    );
    // The silent one is closed once the timeout passes.
    let mut silent = silent;
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut silent, &mut buf),
    )
    .await
    .expect("the proxy closes the silent connection");
    assert!(matches!(read, Ok(0) | Err(_)), "closed without data");
    assert!(
        opened.elapsed() >= Duration::from_millis(350),
        "not before the timeout"
    );
    let metrics_url = format!(
        "http://{}/metrics",
        proxy.proxy.admin_addr().expect("admin")
    );
    let text = TestClient::new().get(&metrics_url).await.body;
    assert_eq!(
        sample(
            &text,
            "fulcrum_tls_handshake_failures_total",
            &["listener=\"https\"", "reason=\"timeout\""]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_reload_serves_a_swapped_certificate_to_new_connections_and_old_ones_keep_working() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new("reload test CA");
    let old = ca.issue(&["app.test"]);
    let new = ca.issue(&["app.test"]);
    let files = old.write(dir.path(), "app");
    let backend = named("app").await;
    let toml = tls_config(&[files], "", &pool_of(&backend));
    let proxy = TestProxy::start(&toml).await;
    let addr = proxy.proxy.listeners()[0].addr;
    let client = ca.client(dir.path(), &[ALPN_HTTP11]);

    let before = connect(addr, "app.test", client.clone())
        .await
        .expect("handshake");
    assert!(presented(&before) == old.der);
    let mut kept = http1(before).await;
    assert_eq!(
        get1(&mut kept, "app.test", "/").await.status,
        StatusCode::OK
    );

    new.write(dir.path(), "app");
    proxy.apply(&toml);

    // A fresh client: one that resumes its TLS 1.3 session keeps the identity of that session.
    let fresh = ca.client(dir.path(), &[ALPN_HTTP11]);
    let after = connect(addr, "app.test", fresh).await.expect("handshake");
    assert!(
        presented(&after) == new.der,
        "a new connection gets the new certificate"
    );
    for _ in 0..3 {
        let answer = get1(&mut kept, "app.test", "/").await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "the old connection keeps working"
        );
    }
}

#[tokio::test]
async fn the_binary_picks_up_renewed_certificate_files_without_a_signal() {
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = tempfile::tempdir().expect("cert dir");
    let ca = TestCa::new("watch test CA");
    let old = ca.issue(&["app.test"]);
    let new = ca.issue(&["app.test"]);
    let files = old.write(certs.path(), "app");
    let backend = named("app").await;
    let config = dir.path().join("fulcrum.toml");
    std::fs::write(&config, tls_config(&[files], "", &pool_of(&backend))).expect("write config");
    let mut fulcrum = FulcrumProcess::spawn(&config, &[]);
    let addr = fulcrum.listener_addr("https");
    // The file watcher takes its baseline after the listeners start and before this line: a renewal
    // written earlier would be the baseline (seen under a loaded parallel test run).
    fulcrum.wait_for_line("fulcrum is serving");
    let client = ca.client(dir.path(), &[ALPN_HTTP11]);
    let before = connect(addr, "app.test", client.clone())
        .await
        .expect("handshake");
    assert!(presented(&before) == old.der);

    // certbot-style renewal: new files moved into place, nothing else touched.
    new.write(certs.path(), "app");
    fulcrum.wait_for_line("config reloaded");
    drop(client);
    let fresh = ca.client(dir.path(), &[ALPN_HTTP11]);
    let after = connect(addr, "app.test", fresh).await.expect("handshake");
    assert!(
        presented(&after) == new.der,
        "the renewed certificate is served"
    );
}

fn check_error(toml: &str) -> String {
    match Config::parse(toml, Path::new("/etc/fulcrum/test.toml")) {
        Ok(_) => panic!("the config should be refused"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_unreadable_or_mismatched_certificate_files_are_config_errors_naming_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new("errors test CA");
    let one = ca.issue(&["one.test"]);
    let two = ca.issue(&["two.test"]);
    let (cert_one, key_one) = one.write(dir.path(), "one");
    let (_, key_two) = two.write(dir.path(), "two");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("write garbage");
    let missing = dir.path().join("missing.pem");
    let upstream = "servers = [{ addr = \"127.0.0.1:9\" }]";
    for (cert, key, names) in [
        (&missing, &key_one, vec!["missing.pem", "cannot read"]),
        (
            &garbage,
            &key_one,
            vec!["garbage.pem", "no PEM certificate"],
        ),
        (&cert_one, &garbage, vec!["garbage.pem", "private key"]),
        (
            &cert_one,
            &key_two,
            vec!["two.key", "does not match", "one.pem"],
        ),
    ] {
        let message = check_error(&tls_config(&[(cert.clone(), key.clone())], "", upstream));
        assert!(
            message.starts_with("config file /etc/fulcrum/test.toml:"),
            "names the config file and line: {message}"
        );
        assert!(
            message.contains("listener[0].tls.certificates[0]"),
            "names the key: {message}"
        );
        for part in names {
            assert!(message.contains(part), "`{part}` in: {message}");
        }
    }
}

#[tokio::test]
async fn redirect_to_https_answers_308_to_the_same_host_and_path_except_acme_challenges() {
    let backend = named("app").await;
    let plain = |redirect: &str| {
        one_pool(&pool_of(&backend)).replacen(
            "listen = \"127.0.0.1:0\"\n",
            &format!("listen = \"127.0.0.1:0\"\nredirect_to_https = {redirect}\n"),
            1,
        )
    };
    let client = TestClient::new();
    let proxy = TestProxy::start(&plain("true")).await;
    let answer = client
        .get_with(&proxy.url("/a/b?c=1&d=2"), "host", "shop.example.com:8080")
        .await;
    assert_eq!(answer.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        answer.headers.get("location").and_then(|v| v.to_str().ok()),
        Some("https://shop.example.com/a/b?c=1&d=2")
    );
    assert_eq!(
        backend.requests(),
        0,
        "a redirect never reaches an upstream"
    );
    let acme = client
        .get(&proxy.url("/.well-known/acme-challenge/token123"))
        .await;
    assert_eq!((acme.status, acme.body.as_str()), (StatusCode::OK, "app"));

    let proxy = TestProxy::start(&plain("8443")).await;
    let answer = client
        .get_with(&proxy.url("/x"), "host", "shop.example.com")
        .await;
    assert_eq!(
        answer.headers.get("location").and_then(|v| v.to_str().ok()),
        Some("https://shop.example.com:8443/x")
    );
}

#[test]
fn redirect_to_https_on_a_tls_listener_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let files = TestCa::new("ca").issue(&["a.test"]).write(dir.path(), "a");
    let message = check_error(&tls_config(
        &[files],
        "redirect_to_https = true",
        "servers = [{ addr = \"127.0.0.1:9\" }]",
    ));
    assert!(
        message.contains("listener[0].redirect_to_https"),
        "{message}"
    );
}

#[tokio::test]
async fn an_http2_request_over_the_header_size_limit_gets_431_and_never_reaches_the_upstream() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new("h2 header CA");
    let files = ca.issue(&["app.test"]).write(dir.path(), "app");
    let backend = named("app").await;
    let toml = tls_config(
        &[files],
        "http2_max_header_size = \"4k\"",
        &pool_of(&backend),
    );
    let proxy = TestProxy::start(&toml).await;
    let addr = proxy.proxy.listeners()[0].addr;
    let stream = connect(addr, "app.test", ca.client(dir.path(), &[ALPN_H2]))
        .await
        .expect("handshake");
    let (client, connection) = h2::client::handshake(stream).await.expect("h2 handshake");
    tokio::spawn(connection);
    let mut client = client.ready().await.expect("h2 ready");
    let big = http::Request::get("https://app.test/")
        .header("x-big", "a".repeat(8 * 1024))
        .body(())
        .expect("a GET");
    let (response, _) = client.send_request(big, true).expect("send");
    let status = response.await.map(|r| r.status());
    assert!(
        matches!(status, Ok(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)) || status.is_err(),
        "refused (431 or a stream reset): {status:?}"
    );
    assert_eq!(
        backend.requests(),
        0,
        "the oversized request never reaches the upstream"
    );
    // The connection stays usable for a request within the limit.
    let mut client = client.ready().await.expect("still ready");
    let small = http::Request::get("https://app.test/")
        .body(())
        .expect("a GET");
    let (response, _) = client.send_request(small, true).expect("send");
    assert_eq!(response.await.expect("an answer").status(), StatusCode::OK);
}
