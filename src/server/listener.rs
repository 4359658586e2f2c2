//! One listener: bind its socket, accept connections, serve them with hyper (HTTP/1.1 and h2c) and drain
//! them when told to stop.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::acceptor::Acceptor;
use super::control::ControlWake;
use super::service::ClockedService;
use super::serving::{Protocols, ServeError, Serving};
use super::timed_io::{Lingering, TimedIo};
use super::timeouts::{ConnectionClock, Verdict};
use crate::config::{HttpLimits, ListenerConfig, ListenerTls};
use crate::metrics::TlsFailureMetrics;
use crate::request::{ListenerContext, ProxyService};
use crate::runtime::Runtime;

/// Pending connections the kernel queues per listener (nginx's default backlog on Linux is 511).
const BACKLOG: u32 = 1024;

/// Binds `addr`; with `reuseport`, another process may bind the same address (a new binary during an
/// upgrade) and the kernel spreads new connections over both. The socket is returned unregistered, for
/// each serving runtime to register a duplicate of; call within a tokio runtime (any).
pub fn bind(addr: SocketAddr, reuseport: bool) -> io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    if reuseport {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(BACKLOG)?.into_std()
}

/// One of a listener's accept loops (one per serving thread).
pub struct Accepting {
    /// The listener's configured name.
    pub name: String,
    /// Its address as configured.
    pub listen: SocketAddr,
    /// This loop's duplicate of the listening socket.
    pub socket: Acceptor,
    /// What the listener's loops count together.
    pub counts: Arc<ListenerCounts>,
}

/// What all of a listener's accept loops count together: `max_connections`, `max_connections_per_client`
/// and the warning about refusals hold for the listener, not per serving thread.
#[derive(Debug, Default)]
pub struct ListenerCounts {
    per_client: Arc<PerClient>,
    open: Arc<OpenConnections>,
    refused: RefusalLog,
}

/// On shutdown, a connection that has not yet sent its first request gets this long to do so before it
/// is closed: a client that connected just before the listener stopped has its request already on the way.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// Accepts until `stop` fires, then stops accepting and drains: every connection finishes the request it is
/// serving and closes (idle keep-alive connections at once, new ones after their first request), for up to
/// the current `shutdown_timeout`; then the rest are closed.
pub async fn accept_loop(
    accepting: Accepting,
    runtime: Arc<Runtime>,
    mut stop: watch::Receiver<bool>,
) {
    let Accepting {
        name,
        listen,
        socket,
        counts,
    } = accepting;
    let ListenerCounts {
        per_client,
        open,
        refused,
    } = &*counts;
    let mut shared: Option<Arc<Shared>> = None;
    let connections = TaskTracker::new();
    let force_close = CancellationToken::new();
    let open_connections = runtime.metrics().connections(&name);
    let tls_failures = runtime.metrics().tls_handshake_failures(&name);
    // Connections get their own receiver; the loop waits on one `changed` future for its whole life
    // (made per accept, it registered with the channel and left it again for every connection).
    let connection_stop = stop.clone();
    let mut stopping = std::pin::pin!(stop.changed());
    loop {
        tokio::select! {
            accepted = socket.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Settings are read from the current config, so a reload changes them (certificates
                    // included) for new connections on kept sockets.
                    let snapshot = runtime.snapshot();
                    let Some(settings) = listener_settings(&snapshot.config.listeners, &name, listen) else {
                        // The listener is being removed by a reload; its stop signal follows.
                        continue;
                    };
                    let Some(counted) = open.enter(settings.client.max_connections) else {
                        refused.warn(&name, settings.client.max_connections);
                        drop(stream);
                        continue;
                    };
                    let slot = match settings.max_connections_per_client {
                        Some(max) => match per_client.enter(peer.ip(), max) {
                            Some(slot) => Some(slot),
                            None => {
                                debug!(listener = %name, client = %peer.ip(), max, "max_connections_per_client reached; closing");
                                drop(stream);
                                continue;
                            }
                        },
                        None => None,
                    };
                    let _ = stream.set_nodelay(true);
                    let shared = match &shared {
                        Some(built) if built.is_for(settings) => Arc::clone(built),
                        _ => Arc::clone(shared.insert(Arc::new(Shared::new(&runtime, settings)))),
                    };
                    let clock = Arc::new(ConnectionClock::new());
                    let service = ProxyService::new(Arc::clone(&shared.proxy), peer);
                    let service = ClockedService::new(service, Arc::clone(&clock));
                    let connection = Connection {
                        peer,
                        shared,
                        clock,
                        stop: connection_stop.clone(),
                        force_close: force_close.clone(),
                    };
                    // Dropped when the task ends, by return or by a panic unwinding it.
                    let held = (slot, counted, OpenGauge::new(open_connections.clone()));
                    // Two tasks, not one with a `match`: a task's future is as large as its largest
                    // branch, and the TLS one (handshake, then serving a TLS stream) would make every
                    // plain connection hold 7.4 KB instead of 3.1 KB. Each is boxed before it is spawned:
                    // tokio's spawn path moves the future it is given about ten times (into the task
                    // tracker's wrapper, through the runtime context, into the task cell, and its stage on
                    // completion), each a copy of the whole future; a box is copied as a pointer.
                    match settings.tls.clone() {
                        Some(tls) => {
                            let failures = tls_failures.clone();
                            let listener = name.clone();
                            connections.spawn(Box::pin(async move {
                                let _held = held;
                                if let Some(stream) = handshake(stream, &tls, &connection, &failures, &listener).await {
                                    let alpn_h2 = stream.get_ref().1.alpn_protocol() == Some(crate::tls::ALPN_H2);
                                    let serving = connection.serving(stream, service, alpn_h2);
                                    connection.serve(serving).await;
                                }
                            }));
                        }
                        None => {
                            // Built before the task: arguments an async block moves are kept twice in it.
                            let serving = connection.serving(stream, service, false);
                            connections.spawn(Box::pin(async move {
                                let _held = held;
                                connection.serve(serving).await;
                            }));
                        }
                    }
                }
                Err(error) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    warn!(listener = %name, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = &mut stopping => break,
        }
    }
    drop(socket);
    connections.close();
    let grace = runtime.snapshot().config.global.shutdown_timeout;
    // One line per serving thread: each drains the connections it accepted.
    let thread = super::worker_index();
    info!(listener = %name, thread, open = connections.len(), "stopped accepting; draining connections");
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        warn!(listener = %name, thread, "shutdown_timeout passed with connections still open; closing them");
        force_close.cancel();
        connections.wait().await;
    }
}

/// This listener's settings in `listeners`: by name and address (two listeners may both ask for port 0),
/// else by address (a reload renamed it).
fn listener_settings<'a>(
    listeners: &'a [ListenerConfig],
    name: &str,
    listen: SocketAddr,
) -> Option<&'a ListenerConfig> {
    listeners
        .iter()
        .find(|l| l.listen == listen && l.name == name)
        .or_else(|| listeners.iter().find(|l| l.listen == listen))
}

/// The timer instant for `at` on the millisecond clock, which reads `now`.
fn instant_at(at: u64, now: u64) -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_millis(at.saturating_sub(now))
}

/// The TLS handshake, in the connection's own task, bounded by `handshake_timeout` (and cut short when the
/// listener's drain runs out). Failures are counted and logged at debug: scanners make many.
async fn handshake(
    stream: TcpStream,
    tls: &ListenerTls,
    connection: &Connection,
    failures: &TlsFailureMetrics,
    listener: &str,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&tls.server_config));
    let peer = connection.peer;
    tokio::select! {
        result = tokio::time::timeout(tls.handshake_timeout, acceptor.accept(stream)) => match result {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(error)) => {
                failures.error.inc();
                debug!(%listener, %peer, %error, "TLS handshake failed");
                None
            }
            Err(_) => {
                failures.timeout.inc();
                debug!(%listener, %peer, timeout = ?tls.handshake_timeout, "TLS handshake timed out");
                None
            }
        },
        () = connection.force_close.cancelled() => None,
    }
}

/// Open connections per client address (nginx `limit_conn`), sharded so accepts rarely share a lock.
#[derive(Debug, Default)]
struct PerClient {
    shards: [parking_lot::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>; 16],
}

impl PerClient {
    /// Takes a connection slot for `ip` if it holds fewer than `max`.
    fn enter(self: &Arc<Self>, ip: std::net::IpAddr, max: usize) -> Option<ClientSlot> {
        let mut shard = self.shard(ip).lock();
        let open = shard.entry(ip).or_insert(0);
        if *open >= max {
            return None;
        }
        *open += 1;
        Some(ClientSlot {
            clients: Arc::clone(self),
            ip,
        })
    }

    fn shard(
        &self,
        ip: std::net::IpAddr,
    ) -> &parking_lot::Mutex<std::collections::HashMap<std::net::IpAddr, usize>> {
        let hash = match ip {
            std::net::IpAddr::V4(v4) => u32::from(v4) as usize,
            std::net::IpAddr::V6(v6) => u128::from(v6) as usize,
        };
        &self.shards[hash % self.shards.len()]
    }
}

/// One open connection of a client; frees its slot when dropped.
struct ClientSlot {
    clients: Arc<PerClient>,
    ip: std::net::IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut shard = self.clients.shard(self.ip).lock();
        if let Some(open) = shard.get_mut(&self.ip) {
            *open -= 1;
            if *open == 0 {
                shard.remove(&self.ip);
            }
        }
    }
}

/// What a listener's connections share, made again only when a reload changes it.
pub struct Shared {
    /// The HTTP limits `protocols` was made from.
    http: HttpLimits,
    /// HTTP/1 and HTTP/2 settings.
    pub protocols: Protocols,
    /// What the proxy service needs of the listener.
    pub proxy: Arc<ListenerContext>,
}

impl Shared {
    fn new(runtime: &Arc<Runtime>, settings: &ListenerConfig) -> Self {
        Self {
            http: settings.http,
            protocols: Protocols::new(settings.http),
            proxy: Arc::new(ListenerContext::new(
                Arc::clone(runtime),
                proto(settings),
                settings.client,
                settings.redirect_to_https,
            )),
        }
    }

    /// Whether this was made from `settings` (as they are after any reload).
    fn is_for(&self, settings: &ListenerConfig) -> bool {
        self.http == settings.http
            && self.proxy.is_for(
                proto(settings),
                &settings.client,
                settings.redirect_to_https,
            )
    }
}

/// The scheme a listener's clients speak, for `X-Forwarded-Proto`.
fn proto(settings: &ListenerConfig) -> &'static str {
    if settings.tls.is_some() {
        "https"
    } else {
        "http"
    }
}

/// One client connection's serving context.
struct Connection {
    peer: SocketAddr,
    shared: Arc<Shared>,
    clock: Arc<ConnectionClock>,
    stop: watch::Receiver<bool>,
    force_close: CancellationToken,
}

/// How long a connection being finished (idle past keepalive_timeout, or its requests used up) may take
/// to close.
const FINISH_GRACE: Duration = Duration::from_secs(5);

impl Connection {
    /// HTTP/1.1 or HTTP/2 (by preface) on `io`, boxed: the task then holds a pointer, not the
    /// connection's state and the arguments it was built from.
    fn serving<I>(&self, io: I, service: ClockedService, alpn_h2: bool) -> Pin<Box<Serving<I>>>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let limits = self.shared.proxy.client_limits();
        let io = TimedIo::new(io, Arc::clone(&self.clock)).lingering(Lingering {
            time: limits.lingering_time,
            timeout: limits.lingering_timeout,
        });
        Box::pin(Serving::new(io, service, Arc::clone(&self.shared), alpn_h2))
    }

    /// Drives `connection` until it closes, a client timeout passes, the drain asks it to finish, or the
    /// drain runs out.
    async fn serve<I>(mut self, mut connection: Pin<Box<Serving<I>>>)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let peer = self.peer;
        // The watchdog's first deadline, judged now: a timer set to fire at once cost every new
        // connection a second pass through the loop (its control futures registered twice) and, often,
        // a wake-up of the runtime's driver (an eventfd write) for a deadline earlier than any pending.
        let now = crate::clock::now_ms();
        let mut wake_at = match self.clock.verdict(self.shared.proxy.client_limits(), now) {
            Verdict::WaitUntil(at) => {
                self.clock.watchdog_set(at);
                instant_at(at, now)
            }
            _ => tokio::time::Instant::now(),
        };
        let control = ControlWake::new();
        let control_waker = Waker::from(Arc::clone(&control));
        // The task's waker as last registered with `control`.
        let mut registered: Option<Waker> = None;
        let result = loop {
            let stop = self.stop.wait_for(|stopped| *stopped);
            let force_close = self.force_close.cancelled();
            let timer = tokio::time::sleep_until(wake_at);
            let poked = self.clock.poked();
            tokio::pin!(stop, force_close, timer, poked);
            control.arm();
            // The connection on every wake; the rest only when one of them woke the task.
            let event = std::future::poll_fn(|cx| {
                if let Poll::Ready(result) = connection.as_mut().poll(cx) {
                    return Poll::Ready(Event::Closed(result));
                }
                if !registered
                    .as_ref()
                    .is_some_and(|known| known.will_wake(cx.waker()))
                {
                    control.register(cx.waker());
                    registered = Some(cx.waker().clone());
                }
                if !control.take() {
                    return Poll::Pending;
                }
                let mut cx = Context::from_waker(&control_waker);
                if stop.as_mut().poll(&mut cx).is_ready() {
                    return Poll::Ready(Event::Drain);
                }
                if force_close.as_mut().poll(&mut cx).is_ready() {
                    return Poll::Ready(Event::ForceClose);
                }
                if timer.as_mut().poll(&mut cx).is_ready()
                    || poked.as_mut().poll(&mut cx).is_ready()
                {
                    return Poll::Ready(Event::Look);
                }
                Poll::Pending
            })
            .await;
            match event {
                Event::Closed(result) => break Some(result),
                Event::Drain => break None,
                Event::ForceClose => return,
                Event::Look => {}
            }
            let now = crate::clock::now_ms();
            let limits = self.shared.proxy.client_limits();
            match self.clock.verdict(limits, now) {
                Verdict::WaitUntil(at) => {
                    self.clock.watchdog_set(at);
                    wake_at = instant_at(at, now);
                }
                Verdict::Finish => {
                    connection.as_mut().graceful_shutdown();
                    let finished = tokio::time::timeout(FINISH_GRACE, connection.as_mut()).await;
                    if let Ok(result) = finished {
                        log_end(peer, result);
                    }
                    return;
                }
                Verdict::HeaderTimeout => {
                    debug!(%peer, timeout = ?limits.header_timeout, "client_header_timeout passed; closing");
                    return;
                }
                Verdict::SendTimeout => {
                    info!(%peer, timeout = ?limits.send_timeout, "send_timeout passed: the client stopped reading; closing");
                    return;
                }
            }
        };
        let result = match result {
            Some(result) => result,
            None => {
                // Draining: give a brand-new connection its first request, then ask hyper to finish what
                // is in flight and close.
                tokio::select! {
                    result = connection.as_mut() => return log_end(peer, result),
                    () = self.clock.first_request() => {}
                    () = tokio::time::sleep(FIRST_REQUEST_GRACE) => {}
                    () = self.force_close.cancelled() => return,
                }
                connection.as_mut().graceful_shutdown();
                tokio::select! {
                    result = until_closed(connection.as_mut(), &self.clock) => result,
                    () = self.force_close.cancelled() => return,
                }
            }
        };
        log_end(peer, result);
    }
}

/// Drives `connection` to its end once its watchdog loop has stopped (draining): a request in flight that
/// waits for an upstream still needs the wake-up at its due time the watchdog gave it (its `read_timeout`,
/// see [`crate::forward::deadline`]).
async fn until_closed<I>(
    mut connection: Pin<&mut Serving<I>>,
    clock: &ConnectionClock,
) -> Result<(), ServeError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // No timer is set now: every due time pokes.
    clock.watchdog_set(u64::MAX);
    loop {
        let now = crate::clock::now_ms();
        let wake = clock
            .upstream_due()
            .map(|due| instant_at(due.max(now.saturating_add(1)), now));
        let due = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = connection.as_mut() => return result,
            () = due => {}
            () = clock.poked() => {}
        }
    }
}

/// What woke a connection's [`Connection::serve`] loop.
enum Event {
    /// The connection closed.
    Closed(Result<(), ServeError>),
    /// The listener is draining.
    Drain,
    /// The drain ran out.
    ForceClose,
    /// The watchdog's timer or poke: judge the connection again.
    Look,
}

fn log_end(peer: SocketAddr, result: Result<(), ServeError>) {
    if let Err(error) = result {
        debug!(%peer, %error, "connection ended with an error");
    }
}

/// The open-connections gauge, counted up for one connection until dropped (with the process's count).
struct OpenGauge(prometheus::IntGauge);

impl OpenGauge {
    fn new(gauge: prometheus::IntGauge) -> Self {
        gauge.inc();
        super::serving::connection_opened();
        Self(gauge)
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        self.0.dec();
        super::serving::connection_closed();
    }
}

/// A listener's open connections, against `max_connections`.
#[derive(Debug, Default)]
struct OpenConnections {
    open: std::sync::atomic::AtomicUsize,
}

impl OpenConnections {
    /// Counts a new connection, unless `max` are open already.
    fn enter(self: &Arc<Self>, max: Option<usize>) -> Option<OpenConnection> {
        use std::sync::atomic::Ordering;
        let open = self.open.fetch_add(1, Ordering::AcqRel);
        if max.is_some_and(|max| open >= max) {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(OpenConnection(Arc::clone(self)))
    }
}

/// One counted connection; uncounted when dropped.
struct OpenConnection(Arc<OpenConnections>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Logs refused connections at most once a second per listener (a flood must not flood the log too).
#[derive(Debug, Default)]
struct RefusalLog {
    last: std::sync::atomic::AtomicU64,
    since: std::sync::atomic::AtomicU64,
}

impl RefusalLog {
    fn warn(&self, listener: &str, max: Option<usize>) {
        use std::sync::atomic::Ordering;
        let now = crate::clock::now_ms();
        let refused = self.since.fetch_add(1, Ordering::Relaxed) + 1;
        if now.saturating_sub(self.last.load(Ordering::Relaxed)) >= 1_000 {
            self.last.store(now, Ordering::Relaxed);
            self.since.store(0, Ordering::Relaxed);
            warn!(%listener, max_connections = max.unwrap_or(0), refused, "max_connections reached; closing new connections");
        }
    }
}
