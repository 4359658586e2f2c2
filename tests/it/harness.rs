//! Test harness: real backends, the real proxy started from a TOML string, a real client; all on loopback.
//! The real binary as a child process is in `binary`, raw HTTP/1.1 reads in `raw` (both re-exported).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
pub use fulcrum::demo::RedisServer;
use fulcrum::demo::{Backend, DemoBody, Handler, HandlerResult};
use fulcrum::{Config, RunningProxy};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

mod binary;
mod raw;

pub use binary::*;
pub use raw::*;

/// Body type the test client sends.
pub type ClientBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A backend that answers 200 with its name.
pub async fn named(name: &str) -> Backend {
    Backend::named(name, 0, Duration::ZERO)
        .await
        .expect("bind a test backend on 127.0.0.1:0")
}

/// A backend answering with `handler`.
pub async fn backend_with<F, Fut>(handler: F) -> Backend
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    let handler: Handler = Arc::new(move |request| Box::pin(handler(request)));
    Backend::start(SocketAddr::from(([127, 0, 0, 1], 0)), handler)
        .await
        .expect("bind a test backend on 127.0.0.1:0")
}

/// A backend answering 200 with `name` that holds each request (or only those to `hold_path`) until the
/// returned semaphore gets a permit per request to release.
pub async fn held_backend(
    name: &'static str,
    hold_path: Option<&'static str>,
) -> (Backend, Arc<tokio::sync::Semaphore>) {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let held = Arc::clone(&gate);
    let backend = backend_with(move |request: Request<Incoming>| {
        let held = Arc::clone(&held);
        async move {
            if hold_path.is_none_or(|path| request.uri().path() == path) {
                let _permit = held.acquire().await;
            }
            text(StatusCode::OK, name)
        }
    })
    .await;
    (backend, gate)
}

/// A backend whose answer to `path` (to every path when `None`) is a body that never ends; other paths get
/// 200 `ok`. The flag turns true when the proxy lets go of an endless body.
pub async fn endless_backend(
    path: Option<&'static str>,
) -> (Backend, Arc<std::sync::atomic::AtomicBool>) {
    let released = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = Arc::clone(&released);
    let backend = backend_with(move |request: Request<Incoming>| {
        let flag = Arc::clone(&flag);
        async move {
            if path.is_some_and(|path| request.uri().path() != path) {
                return text(StatusCode::OK, "ok");
            }
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let stream = futures_util::stream::unfold(ReleaseOnDrop(flag), move |guard| {
                let chunk = chunk.clone();
                async move {
                    Some((
                        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                            hyper::body::Frame::data(chunk),
                        ),
                        guard,
                    ))
                }
            });
            Ok(http::Response::new(
                http_body_util::StreamBody::new(stream).boxed(),
            ))
        }
    })
    .await;
    (backend, released)
}

/// Sets its flag when dropped.
struct ReleaseOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// A proxy in front of `backend` (weight 1), with `listener_keys` added to its listener.
pub async fn proxy_with(listener_keys: &str, backend: SocketAddr) -> TestProxy {
    let toml = one_pool(&servers(&[(backend, 1)])).replacen(
        "listen = \"127.0.0.1:0\"\n",
        &format!("listen = \"127.0.0.1:0\"\n{listener_keys}\n"),
        1,
    );
    TestProxy::start(&toml).await
}

/// Sends a GET to `url` in the background and waits until `backend` has received it (its count of
/// requests reaches `seen`), for tests that hold a request in flight.
pub async fn send_held(
    client: &TestClient,
    url: String,
    backend: &Backend,
    seen: usize,
) -> tokio::task::JoinHandle<Reply> {
    let client = client.clone();
    let request = tokio::spawn(async move { client.get(&url).await });
    wait_until(
        Duration::from_secs(5),
        "the held request to reach its backend",
        || backend.requests() == seen,
    )
    .await;
    request
}

/// Several clients sending GETs to one URL back to back until told to stop.
pub struct SteadyLoad {
    stop: Arc<std::sync::atomic::AtomicBool>,
    clients: tokio::task::JoinSet<Vec<StatusCode>>,
}

impl SteadyLoad {
    /// Starts `clients` clients on `url`.
    pub fn start(url: &str, clients: usize) -> SteadyLoad {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..clients {
            let (client, url, stop) = (TestClient::new(), url.to_string(), Arc::clone(&stop));
            tasks.spawn(async move {
                let mut statuses = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    statuses.push(client.get(&url).await.status);
                }
                statuses
            });
        }
        SteadyLoad {
            stop,
            clients: tasks,
        }
    }

    /// Stops the clients and asserts every request got a 200; returns how many there were.
    pub async fn finish_all_ok(mut self, what: &str) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut total = 0;
        while let Some(statuses) = self.clients.join_next().await {
            let statuses = statuses.expect("client task");
            total += statuses.len();
            assert!(
                statuses.iter().all(|s| *s == StatusCode::OK),
                "a request failed {what}"
            );
        }
        total
    }
}

/// A loopback address where nothing listens (bound then released).
pub fn refusing_addr() -> SocketAddr {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe socket");
    socket.local_addr().expect("probe socket address")
}

/// The real proxy, started in-process from TOML text.
pub struct TestProxy {
    /// The running proxy.
    pub proxy: RunningProxy,
    addr: SocketAddr,
}

impl TestProxy {
    /// Starts a proxy from `toml`; its first listener should listen on `127.0.0.1:0`.
    pub async fn start(toml: &str) -> TestProxy {
        let config = Config::parse(toml, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}"));
        let proxy = fulcrum::start(config).await.expect("bind the proxy");
        let addr = proxy.listeners()[0].addr;
        TestProxy { proxy, addr }
    }

    /// The proxy's first listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A raw TCP connection to the proxy's first listener, for requests written byte by byte.
    pub async fn connect(&self) -> tokio::net::TcpStream {
        tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect to the proxy")
    }

    /// A URL on the proxy's first listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Applies a new config (as a reload will).
    pub fn apply(&self, toml: &str) {
        let config = Config::parse(toml, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}"));
        self.proxy.live().apply(config);
    }
}

/// A config with one listener on an ephemeral port, one catch-all route to `upstream "pool"`, and the given
/// upstream body (`strategy = ..., servers = [...]`).
pub fn one_pool(upstream_body: &str) -> String {
    format!(
        "[[listener]]\nname = \"test\"\nlisten = \"127.0.0.1:0\"\n\n[[route]]\npath = \"/\"\nupstream = \"pool\"\n\n[upstream.pool]\n{upstream_body}\n"
    )
}

/// `servers = [...]` for these addresses with these weights.
pub fn servers(addrs: &[(SocketAddr, u32)]) -> String {
    let list: Vec<String> = addrs
        .iter()
        .map(|(addr, weight)| format!("{{ addr = \"{addr}\", weight = {weight} }}"))
        .collect();
    format!("servers = [{}]", list.join(", "))
}

/// An answer as the test client saw it.
#[derive(Debug)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body as text.
    pub body: String,
}

/// A real HTTP client (pooled, keep-alive).
#[derive(Clone)]
pub struct TestClient {
    client: Client<HttpConnector, ClientBody>,
}

impl TestClient {
    /// A client over HTTP/1.1.
    pub fn new() -> Self {
        Self::bound_to(None)
    }

    /// A client whose connections come from `local` (e.g. 127.0.0.7).
    pub fn bound_to(local: Option<IpAddr>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_local_address(local);
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// A client that speaks HTTP/2 with prior knowledge (h2c).
    pub fn h2c() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(HttpConnector::new()),
        }
    }

    /// GET `url`.
    pub async fn get(&self, url: &str) -> Reply {
        self.send(Request::get(url).body(empty()).expect("a valid GET"))
            .await
    }

    /// GET `url` with one extra header.
    pub async fn get_with(&self, url: &str, name: &str, value: &str) -> Reply {
        let request = Request::get(url)
            .header(name, value)
            .body(empty())
            .expect("a valid GET");
        self.send(request).await
    }

    /// Sends a request and reads the whole answer.
    pub async fn send(&self, request: Request<ClientBody>) -> Reply {
        let response = self.response(request).await;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("read the response body")
            .to_bytes();
        Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    /// Sends a request and returns the response with its body unread.
    pub async fn response(&self, request: Request<ClientBody>) -> http::Response<Incoming> {
        tokio::time::timeout(Duration::from_secs(20), self.client.request(request))
            .await
            .expect("the proxy answers within 20 s")
            .expect("the proxy answers")
    }
}

/// An empty request body.
pub fn empty() -> ClientBody {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

/// A request body from bytes.
pub fn body(bytes: impl Into<Bytes>) -> ClientBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A handler answer from text.
pub fn text(status: StatusCode, text: impl Into<String>) -> HandlerResult {
    let mut response = http::Response::new(fulcrum::demo::full(text.into()));
    *response.status_mut() = status;
    Ok(response)
}

/// A handler body from bytes.
pub fn demo_body(bytes: impl Into<Bytes>) -> DemoBody {
    fulcrum::demo::full(bytes)
}

/// Polls `condition` every 10 ms until it holds or `limit` passes; panics with `what` on time-out.
pub async fn wait_until(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Like [`wait_until`], for a condition that must await (an HTTP request, say); polls every 20 ms.
pub async fn wait_until_async<F, Fut>(limit: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of the sample of `name` whose labels include every `label="value"` in `labels`.
pub fn sample(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| {
            line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} "))
        })
        .find(|line| labels.iter().all(|label| line.contains(label)))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

/// Counts how many replies came from each backend name.
pub fn tally<'a>(
    names: impl IntoIterator<Item = &'a str>,
) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for name in names {
        *counts.entry(name.to_string()).or_insert(0) += 1;
    }
    counts
}

/// A body of these chunks with no declared length, so the client sends it chunked.
pub fn chunked(chunks: Vec<Bytes>) -> ClientBody {
    ChunkedBody {
        chunks: chunks.into(),
    }
    .boxed()
}

struct ChunkedBody {
    chunks: std::collections::VecDeque<Bytes>,
}

impl http_body::Body for ChunkedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(
            self.chunks
                .pop_front()
                .map(|c| Ok(http_body::Frame::data(c))),
        )
    }
}
