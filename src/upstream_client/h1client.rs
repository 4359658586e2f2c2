//! The HTTP/1.1 client to upstream servers, cleartext or TLS, in place of hyper-util's legacy client
//! (which stays for HTTP/2 upstreams): it connects, and keeps idle connections ([`Conn`]) per server
//! address and serving thread ("pool" names only a config's `[upstream.NAME]` elsewhere), driven on the
//! request's task (src/upstream_client/h1conn.rs). Upgrades go through it too: a `101` hands its
//! connection to the tunnel. hyper-util's pool hashed its key with SipHash on every
//! checkout and return and went through several boxed futures per request (docs/benchmarks-history.md).

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::uri::Authority;
use http::{header, HeaderMap, Method, Response, StatusCode, Uri};
use http_body::Body as _;
use parking_lot::Mutex;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::debug;

use crate::clock::now_ms;
use crate::message::body::RequestBody;
use crate::message::error::ProxyError;
use crate::message::headers::Forwarding;
use crate::upstream_client::h1conn::{Conn, H1Body, ResponseBody, UpstreamTunnel};
use crate::upstream_client::h1stream::UpstreamStream;
use crate::worker::{serving_threads_started, worker_index};

/// Sends that may go to a fresh connection after a pooled one turned out closed before it answered (the
/// server closed it while it sat idle).
const STALE_RETRIES: usize = 2;

/// Idle connections per server address (its `host:port`), kept per serving thread.
#[derive(Debug)]
pub struct Http1Client {
    /// How `https://` servers are reached: the TLS config and the name to verify and send in SNI
    /// (`None`: each server's own host); `None` for cleartext pools.
    tls: Option<Http1Tls>,
    connect_timeout: Duration,
    keepalive_timeout: Duration,
    keepalive: usize,
    /// One set per serving thread ([`worker_index`]): a connection is reused by the thread that opened
    /// it, whose I/O driver it is registered with (from another thread its readiness would come through
    /// the first one's driver and a cross-thread wake-up). `keepalive` holds per thread, as nginx's
    /// `keepalive` does per worker process.
    idle: Box<[Mutex<IdleSet>]>,
    sweeping: AtomicBool,
}

/// The TLS a pool's connections are made with.
#[derive(Debug, Clone)]
pub struct Http1Tls {
    /// The rustls client config (ALPN `http/1.1`).
    pub config: Arc<rustls::ClientConfig>,
    /// The name every server is verified against (`tls_server_name`, or the name servers were found
    /// under); without one, a server's own host from its address.
    pub name: Option<ServerName<'static>>,
}

/// One serving thread's idle connections, by server address.
type IdleSet = HashMap<String, Vec<Idle>, BuildHasherDefault<KeyHasher>>;

/// The pool's key hash: xxh3 of the server address's text, cheaper than std's SipHash for two lookups
/// per request; the keys come from the config, so there is no flooding to resist.
#[derive(Debug, Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A connection ready for its next request, and since when ([`now_ms`]: the coarse clock is precise
/// enough for an idle time and costs less than a precise reading on every response).
#[derive(Debug)]
struct Idle {
    conn: Box<Conn>,
    since: u64,
}

impl Idle {
    /// Whether the connection may take a request: not idle for `keepalive_timeout`, still open.
    fn is_usable(&mut self, keepalive_timeout: Duration) -> bool {
        Duration::from_millis(now_ms().saturating_sub(self.since)) < keepalive_timeout
            && self.conn.is_usable()
    }
}

impl Http1Client {
    /// A pool that connects within `connect_timeout`, keeps up to `keepalive` idle connections per server
    /// and closes those idle for `keepalive_timeout`; over TLS when `tls` is given.
    pub fn new(
        tls: Option<Http1Tls>,
        connect_timeout: Duration,
        keepalive_timeout: Duration,
        keepalive: usize,
    ) -> Self {
        Self {
            tls,
            connect_timeout,
            keepalive_timeout,
            keepalive,
            idle: (0..serving_threads_started())
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            sweeping: AtomicBool::new(false),
        }
    }

    /// Sends a request with `method`, the target of `uri`, `headers` and `body` on an idle or new
    /// connection to `key`, and waits for the response head; the body is read as the response is. A pooled connection the server closed before
    /// answering is replaced, up to [`STALE_RETRIES`] times, when sending again cannot repeat an effect
    /// ([`crate::upstream_client::h1conn::ConnError::may_resend`]); any other failure is the caller's to classify and retry.
    ///
    /// The response takes `headers`' map (its room, not its fields); on failure they are as they were,
    /// so a retry can send them.
    ///
    /// Not an `async fn`: one would keep `body` twice in its future (an argument and its moved-in
    /// local), and the future is copied into every request's boxed future.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn would keep `body` twice in its future"
    )]
    pub fn request<'a>(
        self: &'a Arc<Self>,
        (method, uri): (&'a Method, &'a Uri),
        headers: &'a mut HeaderMap,
        forwarding: Option<&'a Forwarding>,
        mut body: RequestBody,
        key: &'a Authority,
    ) -> impl Future<Output = Result<Response<ResponseBody>, ProxyError>> + Send + 'a {
        async move {
            let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
            let has_body = !body.is_end_stream();
            let idempotent = crate::message::headers::is_idempotent(method);
            let upgrading = headers.contains_key(header::UPGRADE);
            let mut stale = 0;
            loop {
                let (mut conn, pooled) = match self.checkout(key) {
                    Some(conn) => (conn, true),
                    // Boxed: connecting is rare with pooled connections, and its future is large.
                    None => (
                        Conn::new(Box::pin(self.connect(key)).await?, self, key),
                        false,
                    ),
                };
                match conn
                    .send((method, target), headers, forwarding, &mut body, upgrading)
                    .await
                {
                    Ok((head, _)) if head.response.status() == StatusCode::SWITCHING_PROTOCOLS => {
                        let mut response = head
                            .response
                            .map(|()| http_body_util::Either::Right(H1Body::switched()));
                        response.extensions_mut().insert(UpstreamTunnel::new(conn));
                        return Ok(response);
                    }
                    Ok((head, whole)) => {
                        let body = H1Body::new(conn, &head, whole);
                        return Ok(head.response.map(|()| http_body_util::Either::Right(body)));
                    }
                    Err(error)
                        if pooled
                            && stale < STALE_RETRIES
                            && error.may_resend(idempotent, has_body) =>
                    {
                        debug!(server = %key, %error, "pooled connection closed before it answered; using another");
                        stale += 1;
                    }
                    Err(error) => return Err(ProxyError::Upstream(error.to_string())),
                }
            }
        }
    }

    /// A pooled connection to `key` that can take a request now, if there is one.
    fn checkout(&self, key: &Authority) -> Option<Box<Conn>> {
        let mut idle = self.idle_here().lock();
        let list = idle.get_mut(key.as_str())?;
        while let Some(mut idle) = list.pop() {
            if idle.is_usable(self.keepalive_timeout) {
                return Some(idle.conn);
            }
        }
        None
    }

    /// Keeps `conn` idle unless `keepalive` are kept for its server already (then it is dropped, which
    /// closes it).
    pub fn put(self: &Arc<Self>, conn: Box<Conn>) {
        {
            let since = now_ms();
            let mut idle = self.idle_here().lock();
            // Looked up by `&str` (one hash of the text; `Authority`'s own hash feeds it byte by byte),
            // so a key is only allocated for a server's first idle connection.
            if let Some(list) = idle.get_mut(conn.key().as_str()) {
                if list.len() < self.keepalive {
                    list.push(Idle { conn, since });
                }
            } else if self.keepalive > 0 {
                let key = conn.key().as_str().to_owned();
                idle.insert(key, vec![Idle { conn, since }]);
            }
        }
        // A load first: the swap (a locked read-modify-write) is only needed the once.
        if !self.sweeping.load(Ordering::Acquire) && !self.sweeping.swap(true, Ordering::AcqRel) {
            tokio::spawn(sweep(Arc::downgrade(self)));
        }
    }

    /// This serving thread's idle connections.
    fn idle_here(&self) -> &Mutex<IdleSet> {
        // Never past the last set (there is at least one): a thread index the pool was not sized for
        // shares it.
        &self.idle[worker_index().min(self.idle.len() - 1)]
    }

    /// A new connection to `key`, with its TLS handshake for a TLS pool, both within `connect_timeout`
    /// (as nginx's `proxy_connect_timeout` covers the SSL handshake).
    async fn connect(&self, key: &Authority) -> Result<UpstreamStream, ProxyError> {
        match tokio::time::timeout(self.connect_timeout, self.open(key)).await {
            Ok(opened) => opened,
            Err(_) => Err(ProxyError::Connect(format!(
                "connect timed out after {:?}",
                self.connect_timeout
            ))),
        }
    }

    async fn open(&self, key: &Authority) -> Result<UpstreamStream, ProxyError> {
        let stream = TcpStream::connect(key.as_str())
            .await
            .map_err(|error| ProxyError::Connect(error.to_string()))?;
        let _ = stream.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(UpstreamStream::Plain(stream));
        };
        let name = match &tls.name {
            Some(name) => name.clone(),
            None => server_name(key)?,
        };
        TlsConnector::from(Arc::clone(&tls.config))
            .connect(name, stream)
            .await
            .map(|tls| UpstreamStream::Tls(Box::new(tls)))
            .map_err(|error| ProxyError::Connect(format!("TLS handshake failed: {error}")))
    }
}

/// The name a server at `key` is verified against: its host (a name, or an IP address).
fn server_name(key: &Authority) -> Result<ServerName<'static>, ProxyError> {
    let host = key.host().trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned())
        .map_err(|error| ProxyError::Connect(format!("`{host}` is not a TLS server name: {error}")))
}

/// Closes connections idle past `keepalive_timeout` (checked every half of it), until the pool is gone.
async fn sweep(pool: Weak<Http1Client>) {
    let period = match pool.upgrade() {
        Some(pool) => (pool.keepalive_timeout / 2).max(Duration::from_millis(100)),
        None => return,
    };
    let mut ticks = tokio::time::interval(period);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        for set in &pool.idle {
            set.lock().retain(|_, list| {
                list.retain_mut(|idle| idle.is_usable(pool.keepalive_timeout));
                !list.is_empty()
            });
        }
    }
}
