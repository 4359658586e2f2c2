//! Test harness: real backends, the real proxy started from a TOML string, a real client; all on loopback.

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
        self.proxy.runtime().apply(config);
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

/// The `[global]` lines of two runtime shapes: one serving thread, and three (each with its own
/// runtime and accept loops, beside the main thread's daemon; the default is one per core). Lifecycle
/// tests run under both.
pub const RUNTIME_SHAPES: [&str; 2] = ["worker_threads = 1\n", "worker_threads = 3\n"];

/// The number of serving threads a [`RUNTIME_SHAPES`] entry asks for.
pub fn serving_threads_of(shape: &str) -> usize {
    shape
        .trim()
        .strip_prefix("worker_threads = ")
        .and_then(|n| n.parse().ok())
        .expect("a worker_threads line")
}

/// The release-or-debug `fulcrum` binary running as a child process, stopped (SIGKILL) when dropped.
pub struct FulcrumProcess {
    /// The child process.
    pub child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// Every stderr line read so far.
    pub log: Vec<String>,
}

impl FulcrumProcess {
    /// Runs `fulcrum run -c path` with extra environment variables.
    pub fn spawn(path: &Path, envs: &[(&str, &str)]) -> FulcrumProcess {
        let mut command = Self::command(path);
        for (key, value) in envs {
            command.env(key, value);
        }
        Self::from_command(command)
    }

    /// The `fulcrum run -c path` command, to adjust before [`Self::from_command`].
    pub fn command(path: &Path) -> std::process::Command {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_fulcrum"));
        command
            .args(["run", "-c"])
            .arg(path)
            .env("RUST_LOG", "info")
            .stderr(std::process::Stdio::piped());
        command
    }

    /// Starts `command` and follows its stderr.
    pub fn from_command(mut command: std::process::Command) -> FulcrumProcess {
        let mut child = command.spawn().expect("start fulcrum run");
        let stderr = child.stderr.take().expect("child stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        FulcrumProcess {
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// Waits (bounded) for a log line containing `text` and returns it.
    pub fn wait_for_line(&mut self, text: &str) -> String {
        if let Some(line) = self.log.iter().find(|l| l.contains(text)) {
            return line.clone();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!("no log line with `{text}`; log so far: {:#?}", self.log)
            });
            self.log.push(line.clone());
            if line.contains(text) {
                return line;
            }
        }
    }

    /// Waits (bounded) until `count` log lines contain `text` (one per serving thread, say).
    pub fn wait_for_lines(&mut self, text: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.log.iter().filter(|l| l.contains(text)).count() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "not {count} log lines with `{text}`; log so far: {:#?}",
                    self.log
                )
            });
            self.log.push(line);
        }
    }

    /// Moves the lines logged so far into [`Self::log`] without waiting; returns how many there are.
    pub fn read_log(&mut self) -> usize {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
        self.log.len()
    }

    /// The process's open file descriptors now.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|dir| dir.count())
            .expect("read /proc/PID/fd")
    }

    /// Whether the process has a thread called `name` (`/proc/PID/task/*/comm`).
    pub fn has_thread(&self, name: &str) -> bool {
        std::fs::read_dir(format!("/proc/{}/task", self.child.id()))
            .expect("read /proc/PID/task")
            .filter_map(Result::ok)
            .any(|task| {
                std::fs::read_to_string(task.path().join("comm"))
                    .is_ok_and(|comm| comm.trim() == name)
            })
    }

    /// The process's resident memory now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// The address the listener called `name` logged.
    pub fn listener_addr(&mut self, name: &str) -> SocketAddr {
        let line = self.wait_for_line(&format!("listening listener={name} "));
        line.split("addr=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("no address in `{line}`"))
    }

    /// Sends a signal (`"TERM"`, `"HUP"`, ...).
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits (bounded) for the process to exit and returns its status.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the child") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "fulcrum did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for FulcrumProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `fulcrum run` (the real binary) on a config file with one listener `public` on an ephemeral port
/// (plus `listener_keys`) and one catch-all route to upstream `app` (`upstream_keys` and the one server
/// `backend`). Returns the process, the listener's address and the directory holding the file, which must
/// outlive the process.
pub fn binary_in_front(
    backend: SocketAddr,
    listener_keys: &str,
    upstream_keys: &str,
) -> (FulcrumProcess, SocketAddr, tempfile::TempDir) {
    binary_with_global("", backend, listener_keys, upstream_keys)
}

/// [`binary_in_front`] with `[global]` keys `global`.
pub fn binary_with_global(
    global: &str,
    backend: SocketAddr,
    listener_keys: &str,
    upstream_keys: &str,
) -> (FulcrumProcess, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fulcrum.toml");
    let toml = format!(
        "[global]\n{global}\n\n\
         [[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n{listener_keys}\n\n\
         [[route]]\npath = \"/\"\nupstream = \"app\"\n\n\
         [upstream.app]\n{upstream_keys}\nservers = [{{ addr = \"{backend}\" }}]\n"
    );
    std::fs::write(&path, toml).expect("write the config");
    let mut fulcrum = FulcrumProcess::spawn(&path, &[]);
    let addr = fulcrum.listener_addr("public");
    (fulcrum, addr, dir)
}

/// One HTTP/1.1 response read from a raw connection.
pub struct RawResponse {
    /// The status code.
    pub status: u16,
    /// The head, as text.
    pub head: String,
    /// The `Content-Length` body, as text.
    pub body: String,
}

/// Reads one response (head and `Content-Length` body) from `stream`, starting with the bytes already in
/// `pending`; what follows it stays in `pending` for the next one. `None` when the peer closed first;
/// panics when nothing arrives for 10 s.
pub async fn read_raw_response(
    stream: &mut tokio::net::TcpStream,
    pending: &mut Vec<u8>,
) -> Option<RawResponse> {
    use tokio::io::AsyncReadExt;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = response.parse(pending) {
            let length: usize = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                .unwrap_or(0);
            if pending.len() >= head + length {
                let answer = RawResponse {
                    status: response.code.unwrap_or(0),
                    head: String::from_utf8_lossy(&pending[..head]).into_owned(),
                    body: String::from_utf8_lossy(&pending[head..head + length]).into_owned(),
                };
                pending.drain(..head + length);
                return Some(answer);
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("no answer within 10s")
            .ok()?;
        if n == 0 {
            return None;
        }
        pending.extend_from_slice(&chunk[..n]);
    }
}

/// Sends one GET (`Connection: close`) on a new connection and reads until the close; the status (0 if
/// none) and whether the whole body arrived.
pub async fn closing_get(addr: SocketAddr) -> (u16, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the proxy neither finished nor closed within 10s"
    );
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(head)) = response.parse(&answer) else {
        return (0, false);
    };
    let length: Option<usize> = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok());
    let complete = length.is_some_and(|length| answer.len() - head == length);
    (response.code.unwrap_or(0), complete)
}
