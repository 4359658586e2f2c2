//! TLS and HTTP/2 to upstream servers: https:// servers verified against a CA file (or not, when asked),
//! SNI override, probes over TLS, and gRPC-style HTTP/2 calls whose trailers arrive intact.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fulcrum::demo::{Backend, Handler};
use fulcrum::tls::ALPN_H2;
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};

use crate::harness::*;
use crate::pki::*;

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn named_handler(name: &'static str) -> Handler {
    Arc::new(move |_request| Box::pin(async move { text(StatusCode::OK, name) }))
}

async fn tls_backend(name: &'static str, leaf: &Leaf, dir: &Path) -> Backend {
    Backend::start_tls(
        loopback(),
        named_handler(name),
        leaf.server_config(dir, name),
    )
    .await
    .expect("start a TLS backend")
}

fn route(path: &str, upstream: &str) -> String {
    format!("[[route]]\npath = \"{path}\"\nupstream = \"{upstream}\"\n\n")
}

#[tokio::test]
async fn https_upstreams_are_verified_against_ca_file_and_an_untrusted_one_gets_502() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new("upstream CA");
    let stranger = TestCa::new("some other CA");
    let trusted = tls_backend("trusted", &ca.issue(&["localhost"]), dir.path()).await;
    let untrusted = tls_backend("untrusted", &stranger.issue(&["localhost"]), dir.path()).await;
    let internal = tls_backend("internal", &ca.issue(&["backend.internal"]), dir.path()).await;
    // Its own server: state is shared by address across pools, and `bad` probes its server down.
    let unverified = tls_backend("unverified", &stranger.issue(&["localhost"]), dir.path()).await;
    let ca_file = ca.write(dir.path(), "upstream-ca.pem");
    let ca_file = ca_file.display();
    let probe = "[upstream.POOL.health_check]\ninterval = \"200ms\"\ntimeout = \"150ms\"\nmax_fails = 1\npasses = 1\n";
    let toml = format!(
        "[[listener]]\nlisten = \"127.0.0.1:0\"\n\n{}{}{}{}\
         [upstream.good]\nca_file = \"{ca_file}\"\nservers = [{{ addr = \"https://localhost:{}\" }}]\n{}\n\
         [upstream.bad]\nca_file = \"{ca_file}\"\nservers = [{{ addr = \"https://localhost:{}\" }}]\n{}\n\
         [upstream.named]\nca_file = \"{ca_file}\"\ntls_server_name = \"backend.internal\"\n\
         servers = [{{ addr = \"https://127.0.0.1:{}\" }}]\n\n\
         [upstream.blind]\ntls_verify = false\nservers = [{{ addr = \"https://localhost:{}\" }}]\n",
        route("/good", "good"),
        route("/bad", "bad"),
        route("/named", "named"),
        route("/blind", "blind"),
        trusted.addr().port(),
        probe.replace("POOL", "good"),
        untrusted.addr().port(),
        probe.replace("POOL", "bad"),
        internal.addr().port(),
        unverified.addr().port(),
    );
    let config = fulcrum::Config::parse(&toml, Path::new("test.toml")).expect("a valid config");
    assert!(
        config
            .warnings
            .iter()
            .any(|w| w.to_string().contains("upstream.blind.tls_verify")
                && w.to_string().contains("NOT verified")),
        "tls_verify = false warns: {:?}",
        config.warnings
    );
    let proxy = TestProxy::start(&toml).await;
    let client = TestClient::new();

    // Probes run over TLS too: the trusted server passes, the untrusted one fails its handshake.
    let live = Arc::clone(proxy.proxy.live());
    let probed = |pool: &str| {
        let snapshot = live.snapshot();
        snapshot
            .pools
            .iter()
            .find(|p| p.name == pool)
            .and_then(|p| p.servers().next())
            .and_then(|server| server.state.last_probe())
            .map(|(ok, _)| ok)
    };
    wait_until(Duration::from_secs(5), "both probes to run", || {
        probed("good").is_some() && probed("bad").is_some()
    })
    .await;
    assert_eq!(
        probed("good"),
        Some(true),
        "a probe over TLS to the trusted server passes"
    );
    assert_eq!(
        probed("bad"),
        Some(false),
        "a probe to the untrusted server fails"
    );

    let good = client.get(&proxy.url("/good")).await;
    assert_eq!(
        (good.status, good.body.as_str()),
        (StatusCode::OK, "trusted")
    );
    let bad = client.get(&proxy.url("/bad")).await;
    assert!(
        bad.status == StatusCode::BAD_GATEWAY || bad.status == StatusCode::SERVICE_UNAVAILABLE,
        "an untrusted certificate is refused: {} {:?}",
        bad.status,
        bad.body
    );
    assert_eq!(
        untrusted.requests(),
        0,
        "nothing reaches the untrusted server"
    );
    let named = client.get(&proxy.url("/named")).await;
    assert_eq!(
        (named.status, named.body.as_str()),
        (StatusCode::OK, "internal"),
        "tls_server_name is sent in SNI and verified"
    );
    let blind = client.get(&proxy.url("/blind")).await;
    assert_eq!(
        (blind.status, blind.body.as_str()),
        (StatusCode::OK, "unverified")
    );
}

#[tokio::test]
async fn an_untrusted_https_upstream_without_probes_answers_502() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new("trusted CA");
    let untrusted = tls_backend(
        "untrusted",
        &TestCa::new("other").issue(&["localhost"]),
        dir.path(),
    )
    .await;
    let toml = one_pool(&format!(
        "ca_file = \"{}\"\nservers = [{{ addr = \"https://localhost:{}\" }}]",
        ca.write(dir.path(), "ca.pem").display(),
        untrusted.addr().port()
    ));
    let proxy = TestProxy::start(&toml).await;
    let answer = TestClient::new().get(&proxy.url("/")).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(untrusted.requests(), 0);
}

/// A gRPC-style server: checks the request came over HTTP/2 with `te: trailers`, reads the whole streamed
/// request body, answers two data frames and `grpc-status` trailers.
fn grpc_handler() -> Handler {
    Arc::new(|request: Request<Incoming>| {
        Box::pin(async move {
            let version = request.version();
            let field = |name: &str| {
                let values: Vec<&str> = request
                    .headers()
                    .get_all(name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                if values.is_empty() {
                    "none".to_string()
                } else {
                    values.join("+")
                }
            };
            let te = field("te");
            // The forwarding fields reach HTTP/2 upstreams too (they go through hyper's client).
            let forwarded = ["x-forwarded-for", "x-real-ip", "x-forwarded-proto"].map(field);
            let forwarded = forwarded.join("|");
            let body = request.into_body().collect().await?.to_bytes();
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            trailers.insert("grpc-message", HeaderValue::from_static("all good"));
            let frames: Vec<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>> = vec![
                Ok(Frame::data(Bytes::from(format!(
                    "{version:?} te={te} fwd={forwarded} got={};",
                    body.len()
                )))),
                Ok(Frame::data(Bytes::from_static(b"second message"))),
                Ok(Frame::trailers(trailers)),
            ];
            let mut response =
                http::Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed());
            response
                .headers_mut()
                .insert("content-type", HeaderValue::from_static("application/grpc"));
            Ok(response)
        })
    })
}

/// Calls the proxy over TLS + h2 like a gRPC client: a streamed request body, `te: trailers`; returns the
/// body text and the trailers.
async fn grpc_call(proxy: &TestProxy, ca: &TestCa, dir: &Path) -> (String, HeaderMap) {
    let addr = proxy.proxy.listeners()[0].addr;
    let stream = connect(addr, "grpc.test", ca.client(dir, &[ALPN_H2]))
        .await
        .expect("handshake");
    let mut sender = http2::<ClientBody>(stream).await;
    let request = Request::post("https://grpc.test/echo.Echo/Say")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(chunked(vec![
            Bytes::from_static(b"first "),
            Bytes::from_static(b"second "),
            Bytes::from_static(b"third"),
        ]))
        .expect("a call");
    let response = sender.send_request(request).await.expect("an answer");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let collected = response.into_body().collect().await.expect("the body");
    let trailers = collected.trailers().cloned().expect("trailers arrive");
    (
        String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
        trailers,
    )
}

async fn grpc_through(upstream: &str, backend: &Backend, dir: &Path, ca: &TestCa, scheme: &str) {
    let files = ca.issue(&["grpc.test"]).write(dir, "listener");
    let ca_file = ca.write(dir, "ca.pem");
    let toml = tls_config(
        &[files],
        "",
        &format!(
            "{upstream}\nca_file = \"{}\"\nservers = [{{ addr = \"{scheme}://localhost:{}\" }}]",
            ca_file.display(),
            backend.addr().port()
        ),
    );
    let proxy = TestProxy::start(&toml).await;
    let (body, trailers) = grpc_call(&proxy, ca, dir).await;
    assert_eq!(
        body,
        "HTTP/2.0 te=trailers fwd=127.0.0.1|127.0.0.1|https got=18;second message"
    );
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
    assert_eq!(
        trailers.get("grpc-message").map(|v| v.as_bytes()),
        Some(&b"all good"[..])
    );
}

#[tokio::test]
async fn a_grpc_call_through_an_h2c_upstream_keeps_te_and_trailers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new("grpc CA");
    let backend = Backend::start(loopback(), grpc_handler())
        .await
        .expect("backend");
    grpc_through("protocol = \"h2c\"", &backend, dir.path(), &ca, "http").await;
}

#[tokio::test]
async fn a_grpc_call_through_an_h2_upstream_over_tls_keeps_te_and_trailers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new("grpc CA");
    let leaf = ca.issue(&["localhost"]);
    let backend = Backend::start_tls(
        loopback(),
        grpc_handler(),
        leaf.server_config(dir.path(), "backend"),
    )
    .await
    .expect("backend");
    grpc_through("protocol = \"h2\"", &backend, dir.path(), &ca, "https").await;
}

#[test]
fn h2c_with_https_servers_is_a_config_error() {
    let toml = one_pool("protocol = \"h2c\"\nservers = [{ addr = \"https://localhost:8443\" }]");
    let message = match fulcrum::Config::parse(&toml, Path::new("test.toml")) {
        Ok(_) => panic!("h2c with https:// servers should be refused"),
        Err(e) => e.to_string(),
    };
    assert!(message.contains("upstream.pool.protocol"), "{message}");
}

#[tokio::test]
async fn an_http1_client_reaches_an_https_upstream_with_alpn_http11() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new("alpn upstream CA");
    let leaf = ca.issue(&["localhost"]);
    let version_echo: Handler = Arc::new(|request: Request<Incoming>| {
        Box::pin(async move { text(StatusCode::OK, format!("{:?}", request.version())) })
    });
    let backend = Backend::start_tls(
        loopback(),
        version_echo,
        leaf.server_config(dir.path(), "b"),
    )
    .await
    .expect("backend");
    let toml = one_pool(&format!(
        "ca_file = \"{}\"\nservers = [{{ addr = \"https://localhost:{}\" }}]",
        ca.write(dir.path(), "ca.pem").display(),
        backend.addr().port()
    ));
    let proxy = TestProxy::start(&toml).await;
    let answer = TestClient::new().get(&proxy.url("/")).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::OK, "HTTP/1.1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_over_tls_checks_the_answer_body() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new("probe CA");
    let healthy = tls_backend("ok", &ca.issue(&["localhost"]), dir.path()).await;
    let degraded = tls_backend("degraded", &ca.issue(&["localhost"]), dir.path()).await;
    let toml = one_pool(&format!(
        "ca_file = \"{}\"\nservers = [{{ addr = \"https://localhost:{}\" }}, {{ addr = \"https://localhost:{}\" }}]\n\n\
         [upstream.pool.health_check]\npath = \"/health\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\n\
         max_fails = 1\npasses = 1\nexpect_body = \"ok\"\n",
        ca.write(dir.path(), "ca.pem").display(),
        healthy.addr().port(),
        degraded.addr().port()
    ));
    let proxy = TestProxy::start(&toml).await;
    let live = Arc::clone(proxy.proxy.live());
    let probed = |index: usize| {
        live.snapshot().pools[0]
            .servers()
            .nth(index)
            .and_then(|server| server.state.last_probe())
            .map(|(ok, _)| ok)
    };
    wait_until(Duration::from_secs(5), "both probes to run", || {
        probed(0).is_some() && probed(1).is_some()
    })
    .await;
    assert_eq!(probed(0), Some(true), "a body with the text passes");
    assert_eq!(probed(1), Some(false), "a body without it fails");
    let client = TestClient::new();
    for _ in 0..6 {
        let reply = client.get(&proxy.url("/")).await;
        assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "ok"));
    }
}
