//! Demo and test backends: small hyper servers on loopback that answer with a handler, count requests, and
//! can be stopped (closing every open connection) to show failover; a DNS server ([`dns`]) and a Redis
//! server for the tests and examples that need one.

pub mod dns;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A response body a handler may return.
pub type DemoBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;
/// What a handler returns: a response, or an error that makes the backend drop the connection unanswered.
pub type HandlerResult = Result<Response<DemoBody>, Box<dyn std::error::Error + Send + Sync>>;
/// A request handler.
pub type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = HandlerResult> + Send>> + Send + Sync,
>;

/// A running backend.
#[derive(Debug)]
pub struct Backend {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// A body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> DemoBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A `200 OK` whose body is `name` and whose `x-backend` header is `name`.
pub fn named_response(name: &str) -> Response<DemoBody> {
    let mut response = Response::new(full(name.to_string()));
    if let Ok(value) = http::HeaderValue::from_str(name) {
        response.headers_mut().insert("x-backend", value);
    }
    response
}

impl Backend {
    /// A backend on `127.0.0.1:port` (0 for any) that answers `200` with its name, after `delay`.
    pub async fn named(name: &str, port: u16, delay: Duration) -> io::Result<Backend> {
        let name: Arc<str> = Arc::from(name);
        let handler: Handler = Arc::new(move |request: Request<Incoming>| {
            let name = Arc::clone(&name);
            Box::pin(async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                if request.uri().path() == "/health" {
                    return Ok(Response::new(full("ok")));
                }
                Ok(named_response(&name))
            })
        });
        Self::start(SocketAddr::from(([127, 0, 0, 1], port)), handler).await
    }

    /// A backend on `addr` (e.g. 127.0.0.3:PORT, a replica behind a DNS name) answering `200` with `name`.
    pub async fn named_on(name: &str, addr: SocketAddr) -> io::Result<Backend> {
        let name: Arc<str> = Arc::from(name);
        let handler: Handler = Arc::new(move |_request: Request<Incoming>| {
            let name = Arc::clone(&name);
            Box::pin(async move { Ok(named_response(&name)) })
        });
        Self::start(addr, handler).await
    }

    /// A backend on `addr` answering with `handler`.
    pub async fn start(addr: SocketAddr, handler: Handler) -> io::Result<Backend> {
        Self::serve(addr, handler, None).await
    }

    /// Like [`Backend::start`], over TLS with `tls` (an `https://` upstream).
    pub async fn start_tls(
        addr: SocketAddr,
        handler: Handler,
        tls: Arc<rustls::ServerConfig>,
    ) -> io::Result<Backend> {
        Self::serve(addr, handler, Some(tokio_rustls::TlsAcceptor::from(tls))).await
    }

    async fn serve(
        addr: SocketAddr,
        handler: Handler,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> io::Result<Backend> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(AtomicUsize::new(0));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(accept(
            listener,
            handler,
            tls,
            Arc::clone(&requests),
            stop_rx,
        ));
        Ok(Backend {
            addr,
            requests,
            stop,
            task,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Stops accepting and closes every open connection at once (like a crashed replica).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn accept(
    listener: TcpListener,
    handler: Handler,
    tls: Option<tokio_rustls::TlsAcceptor>,
    requests: Arc<AtomicUsize>,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let handler = Arc::clone(&handler);
                let requests = Arc::clone(&requests);
                let service = DemoService { handler, requests };
                match tls.clone() {
                    Some(tls) => connections.spawn(async move {
                        if let Ok(stream) = tls.accept(stream).await {
                            serve_connection(stream, service).await;
                        }
                    }),
                    None => connections.spawn(serve_connection(stream, service)),
                };
            }
            _ = stop.changed() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

async fn serve_connection<I>(stream: I, service: DemoService)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .await;
}

/// Counts each request and hands it to the handler.
#[derive(Clone)]
struct DemoService {
    handler: Handler,
    requests: Arc<AtomicUsize>,
}

impl hyper::service::Service<Request<Incoming>> for DemoService {
    type Response = Response<DemoBody>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = HandlerResult> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        self.requests.fetch_add(1, Ordering::SeqCst);
        (self.handler)(request)
    }
}

/// A plain status answer, for handlers.
pub fn status_response(status: StatusCode, text: &str) -> Response<DemoBody> {
    let mut response = Response::new(full(text.to_string()));
    *response.status_mut() = status;
    response
}

/// Convenience for handlers that never fail.
pub fn ok(response: Response<DemoBody>) -> HandlerResult {
    Ok::<_, Infallible>(response).map_err(|never| match never {})
}

/// A real redis-server on a free loopback port for tests and benches, stopped when dropped.
#[derive(Debug)]
pub struct RedisServer {
    /// The port it listens on.
    pub port: u16,
    child: Option<std::process::Child>,
}

impl RedisServer {
    /// Starts `redis-server` (installed by `.ci/run`) without persistence, and waits up to 10 s until it
    /// answers `PING`.
    pub fn start() -> io::Result<RedisServer> {
        RedisServer::start_with(&[])
    }

    /// [`Self::start`] with more `redis-server` arguments.
    pub fn start_with(extra: &[&str]) -> io::Result<RedisServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .spawn()?;
        let server = RedisServer {
            port,
            child: Some(child),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !server.answers() {
            if std::time::Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("redis-server did not answer on port {port}"),
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(server)
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn answers(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// Sends `SIGSTOP`: the server stays connected but answers nothing (a silent peer).
    pub fn pause(&self) -> io::Result<()> {
        self.signal("-STOP")
    }

    /// Sends `SIGCONT` after [`Self::pause`].
    pub fn resume(&self) -> io::Result<()> {
        self.signal("-CONT")
    }

    fn signal(&self, which: &str) -> io::Result<()> {
        let Some(pid) = self.pid() else {
            return Err(io::Error::other("redis-server is not running"));
        };
        let status = std::process::Command::new("kill")
            .args([which, &pid.to_string()])
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!("kill {which} {pid} failed")))
        }
    }

    /// Calls of the commands named in `names` so far, from `INFO commandstats` (`evalsha`, `eval`...).
    pub fn command_calls(&self, names: &[&str]) -> io::Result<u64> {
        let info = info(self.port, "commandstats")?;
        Ok(info
            .lines()
            .filter_map(|line| {
                let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
                if !names.contains(&name) {
                    return None;
                }
                stats
                    .split(',')
                    .find_map(|field| field.strip_prefix("calls="))?
                    .parse::<u64>()
                    .ok()
            })
            .sum())
    }

    /// Kills the server now.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `INFO section` of the Redis server on `port`, as text.
pub fn info(port: u16, section: &str) -> io::Result<String> {
    command(port, &["INFO", section])
}

/// Sends one command to the Redis server on `port` and returns its bulk-string or status reply.
pub fn command(port: u16, args: &[&str]) -> io::Result<String> {
    use std::io::{BufRead, Read, Write};
    let stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    (&stream).write_all(request.as_bytes())?;
    let mut reader = std::io::BufReader::new(stream);
    let mut head = String::new();
    reader.read_line(&mut head)?;
    let head = head.trim_end();
    match head.as_bytes().first() {
        Some(b'$') => {
            let len: usize = head[1..]
                .parse()
                .map_err(|_| io::Error::other(format!("bad reply `{head}`")))?;
            let mut body = vec![0u8; len];
            reader.read_exact(&mut body)?;
            Ok(String::from_utf8_lossy(&body).into_owned())
        }
        Some(b'+') | Some(b':') => Ok(head[1..].to_string()),
        _ => Err(io::Error::other(format!("Redis answered `{head}`"))),
    }
}

/// A Redis Cluster of three masters (no replicas) on free loopback ports, each node in a temp dir of
/// its own, made with `redis-cli --cluster create`; every node is killed when dropped.
#[derive(Debug)]
pub struct RedisCluster {
    /// The nodes.
    pub nodes: Vec<RedisServer>,
    dir: std::path::PathBuf,
}

impl RedisCluster {
    /// Starts the nodes, joins them and waits up to 15 s until every node reports `cluster_state:ok`.
    pub fn start() -> io::Result<RedisCluster> {
        RedisCluster::start_with_replicas(0)
    }

    /// Three masters with `replicas` replicas each (a node timeout of 1 s, so a replica takes over a
    /// stopped master within seconds).
    pub fn start_with_replicas(replicas: usize) -> io::Result<RedisCluster> {
        let dir = std::env::temp_dir().join(format!(
            "fulcrum-redis-cluster-{}-{}",
            std::process::id(),
            crate::clock::now_ms()
        ));
        std::fs::create_dir_all(&dir)?;
        let mut nodes = Vec::new();
        for i in 0..3 * (1 + replicas) {
            let node_dir = dir.join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir)?;
            nodes.push(RedisServer::start_with(&[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &node_dir.join("nodes.conf").to_string_lossy(),
                "--dir",
                &node_dir.to_string_lossy(),
                "--cluster-node-timeout",
                "1000",
                // A replica takes over however long ago it last heard its master.
                "--cluster-replica-validity-factor",
                "0",
            ])?);
        }
        let cluster = RedisCluster { nodes, dir };
        let mut create = std::process::Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let output = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .map_err(|e| io::Error::other(format!("redis-cli (package redis-tools): {e}")))?;
        if !output.status.success() {
            return Err(io::Error::other(format!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&output.stdout)
            )));
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while !cluster.nodes.iter().all(|node| {
            command(node.port, &["CLUSTER", "INFO"]).is_ok_and(|i| i.contains("cluster_state:ok"))
        }) || cluster.masters().len() != 3
            || cluster.synced_replicas() != 3 * replicas
        {
            if std::time::Instant::now() >= deadline {
                return Err(io::Error::other(
                    "the cluster never reported cluster_state:ok",
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(cluster)
    }

    /// Indexes in `nodes` of the running nodes whose role is master.
    pub fn masters(&self) -> Vec<usize> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, node)| {
                node.pid().is_some()
                    && info(node.port, "replication").is_ok_and(|i| i.contains("role:master"))
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// Replicas whose link to their master is up.
    fn synced_replicas(&self) -> usize {
        self.nodes
            .iter()
            .filter(|node| {
                info(node.port, "replication").is_ok_and(|i| i.contains("master_link_status:up"))
            })
            .count()
    }

    /// The nodes' URLs, for `redis_url = [...]`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|node| format!("redis://127.0.0.1:{}", node.port))
            .collect()
    }

    /// Calls of `names` summed over the nodes.
    pub fn command_calls(&self, names: &[&str]) -> io::Result<u64> {
        let mut sum = 0;
        for node in &self.nodes {
            sum += node.command_calls(names)?;
        }
        Ok(sum)
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
