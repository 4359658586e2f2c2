//! Keep-alive connections to HTTP/1.1 upstreams, cleartext and TLS (src/upstream_client/h1client.rs): connections are
//! reused, closed after `keepalive_timeout` idle, capped at `keepalive` per server, and one the server
//! closed while it sat idle costs the client nothing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::harness::{
    binary_with_global, closing_get, one_pool, wait_until, TestClient, TestProxy,
};

/// A raw HTTP/1.1 backend answering `200 ok` to bodiless requests, counting connections.
struct CountingBackend {
    addr: SocketAddr,
    /// Connections accepted.
    accepted: Arc<AtomicUsize>,
    /// Connections the proxy closed (end of stream seen while waiting for a request).
    closed_by_proxy: Arc<AtomicUsize>,
}

/// How the backend treats a connection after answering.
#[derive(Clone, Copy)]
enum AfterAnswer {
    /// Waits for the next request.
    KeepOpen,
    /// Closes it, without having said `Connection: close` (as a server's own idle timeout would).
    Close,
}

impl CountingBackend {
    /// Waits (5 s at most) until the proxy has closed `count` of its connections.
    async fn wait_closed_by_proxy(&self, count: usize, what: &str) {
        wait_until(Duration::from_secs(5), what, || {
            self.closed_by_proxy.load(Ordering::Acquire) == count
        })
        .await;
    }

    /// Starts it; every answer waits until `hold_until` connections have been accepted (5 s at most).
    async fn start(after: AfterAnswer, hold_until: usize) -> Self {
        Self::start_with(after, hold_until, None).await
    }

    /// Like [`CountingBackend::start`], over TLS (an `https://` server).
    async fn start_tls(after: AfterAnswer, tls: Arc<rustls::ServerConfig>) -> Self {
        Self::start_with(after, 0, Some(tokio_rustls::TlsAcceptor::from(tls))).await
    }

    async fn start_with(
        after: AfterAnswer,
        hold_until: usize,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed_by_proxy = Arc::new(AtomicUsize::new(0));
        let (count, closed) = (Arc::clone(&accepted), Arc::clone(&closed_by_proxy));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::AcqRel);
                let (count, closed) = (Arc::clone(&count), Arc::clone(&closed));
                match tls.clone() {
                    None => tokio::spawn(serve(stream, after, hold_until, count, closed)),
                    Some(tls) => tokio::spawn(async move {
                        if let Ok(stream) = tls.accept(stream).await {
                            serve(stream, after, hold_until, count, closed).await;
                        }
                    }),
                };
            }
        });
        Self {
            addr,
            accepted,
            closed_by_proxy,
        }
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    after: AfterAnswer,
    hold_until: usize,
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
) {
    let mut seen = Vec::new();
    loop {
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    closed.fetch_add(1, Ordering::AcqRel);
                    return;
                }
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
            }
        }
        seen.clear();
        // Bounded: past 5 s it answers anyway, and the test's count of connections fails instead.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while accepted.load(Ordering::Acquire) < hold_until
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await
            .is_err()
        {
            return;
        }
        if let AfterAnswer::Close = after {
            return;
        }
    }
}

fn pool_config(backend: SocketAddr, keys: &str) -> String {
    one_pool(&format!("{keys}\nservers = [{{ addr = \"{backend}\" }}]"))
}

#[tokio::test]
async fn sequential_requests_reuse_one_upstream_connection() {
    let backend = CountingBackend::start(AfterAnswer::KeepOpen, 0).await;
    let proxy = TestProxy::start(&pool_config(backend.addr, "")).await;
    let client = TestClient::new();
    for _ in 0..20 {
        assert_eq!(client.get(&proxy.url("/")).await.status, StatusCode::OK);
    }
    assert_eq!(backend.accepted.load(Ordering::Acquire), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_closes_an_idle_upstream_connection_after_keepalive_timeout() {
    let backend = CountingBackend::start(AfterAnswer::KeepOpen, 0).await;
    // One serving thread: the client may open a second connection, which another thread (with idle
    // connections of its own) could accept.
    let (_fulcrum, addr, _config) = binary_with_global(
        "worker_threads = 1",
        backend.addr,
        "",
        "keepalive_timeout = \"1s\"",
    );
    let client = TestClient::new();
    for _ in 0..3 {
        assert_eq!(
            client.get(&format!("http://{addr}/")).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(backend.accepted.load(Ordering::Acquire), 1);
    backend
        .wait_closed_by_proxy(1, "the proxy closes its idle upstream connection")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_three_serving_threads_sequential_requests_reuse_at_most_one_upstream_connection_each()
{
    // Each serving thread keeps its own idle upstream connections; one request at a time, each on a
    // new client connection (which any thread may accept), needs at most one per thread.
    let backend = CountingBackend::start(AfterAnswer::KeepOpen, 0).await;
    let (_fulcrum, addr, _config) = binary_with_global("worker_threads = 3", backend.addr, "", "");
    for round in 0..30 {
        assert_eq!(closing_get(addr).await, (200, true), "round {round}");
    }
    let accepted = backend.accepted.load(Ordering::Acquire);
    assert!(
        (1..=3).contains(&accepted),
        "{accepted} upstream connections for 30 requests one at a time"
    );
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_replaced_without_an_error() {
    let backend = CountingBackend::start(AfterAnswer::Close, 0).await;
    let proxy = TestProxy::start(&pool_config(backend.addr, "")).await;
    let client = TestClient::new();
    for round in 1..=5 {
        let reply = client.get(&proxy.url("/")).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "request {round}: {}",
            reply.body
        );
    }
    assert_eq!(backend.accepted.load(Ordering::Acquire), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_caps_the_idle_connections_kept_per_server() {
    // Four requests at once need four connections (the backend answers none before it has four).
    let backend = CountingBackend::start(AfterAnswer::KeepOpen, 4).await;
    let proxy = TestProxy::start(&pool_config(backend.addr, "keepalive = 1")).await;
    let url = proxy.url("/");
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let url = url.clone();
        requests.spawn(async move { TestClient::new().get(&url).await.status });
    }
    while let Some(status) = requests.join_next().await {
        assert_eq!(status.expect("request task"), StatusCode::OK);
    }
    assert_eq!(backend.accepted.load(Ordering::Acquire), 4);
    backend
        .wait_closed_by_proxy(
            3,
            "the proxy closes the three connections past keepalive = 1",
        )
        .await;
}

/// A TLS backend on `localhost` and the upstream config that trusts it.
async fn tls_backend(after: AfterAnswer, dir: &std::path::Path) -> (CountingBackend, String) {
    let ca = crate::pki::TestCa::new("pool CA");
    let backend =
        CountingBackend::start_tls(after, ca.issue(&["localhost"]).server_config(dir, "pool"))
            .await;
    let config = one_pool(&format!(
        "ca_file = \"{}\"\nservers = [{{ addr = \"https://localhost:{}\" }}]",
        ca.write(dir, "ca.pem").display(),
        backend.addr.port()
    ));
    (backend, config)
}

#[tokio::test]
async fn sequential_requests_reuse_one_tls_upstream_connection() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (backend, config) = tls_backend(AfterAnswer::KeepOpen, dir.path()).await;
    let proxy = TestProxy::start(&config).await;
    let client = TestClient::new();
    for _ in 0..20 {
        let reply = client.get(&proxy.url("/")).await;
        assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "ok"));
    }
    assert_eq!(backend.accepted.load(Ordering::Acquire), 1);
}

#[tokio::test]
async fn a_tls_connection_the_upstream_closed_while_idle_is_replaced_without_an_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (backend, config) = tls_backend(AfterAnswer::Close, dir.path()).await;
    let proxy = TestProxy::start(&config).await;
    let client = TestClient::new();
    for round in 1..=5 {
        let reply = client.get(&proxy.url("/")).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "request {round}: {}",
            reply.body
        );
    }
    assert_eq!(backend.accepted.load(Ordering::Acquire), 5);
}
