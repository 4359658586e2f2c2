//! One listener: bind its socket, accept connections, serve them with hyper (HTTP/1.1 and h2c) and drain
//! them when told to stop.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::proxy::ProxyService;
use crate::runtime::Runtime;

/// Pending connections the kernel queues per listener (nginx's default backlog on Linux is 511).
const BACKLOG: u32 = 1024;

/// Binds `addr`; with `reuseport`, another process may bind the same address (a new binary during an
/// upgrade) and the kernel spreads new connections over both.
pub fn bind(addr: SocketAddr, reuseport: bool) -> io::Result<TcpListener> {
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
    socket.listen(BACKLOG)
}

/// On shutdown, a connection that has not yet sent its first request gets this long to do so before it
/// is closed: a client that connected just before the listener stopped has its request already on the way.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// Accepts until `stop` fires, then stops accepting and drains: every connection finishes the request it is
/// serving and closes (idle keep-alive connections at once, new ones after their first request), for up to
/// the current `shutdown_timeout`; then the rest are closed.
pub async fn accept_loop(
    name: String,
    listen: SocketAddr,
    socket: TcpListener,
    runtime: Arc<Runtime>,
    mut stop: watch::Receiver<bool>,
) {
    let builder = Arc::new(connection_builder());
    let connections = TaskTracker::new();
    let force_close = CancellationToken::new();
    let per_client = Arc::new(PerClient::default());
    let open_connections = runtime.metrics().connections(&name);
    loop {
        tokio::select! {
            accepted = socket.accept() => match accepted {
                Ok((stream, peer)) => {
                    // The limit is read from the current config, so a reload changes it for kept sockets.
                    let limit = runtime
                        .snapshot()
                        .config
                        .listeners
                        .iter()
                        .find(|l| l.listen == listen)
                        .and_then(|l| l.max_connections_per_client);
                    let slot = match limit {
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
                    let served = Arc::new(FirstRequest::default());
                    let service = ProxyService::new(Arc::clone(&runtime), peer, "http")
                        .with_first_request(Arc::clone(&served));
                    let connection = serve(
                        stream,
                        peer,
                        service,
                        Arc::clone(&builder),
                        served,
                        stop.clone(),
                        force_close.clone(),
                    );
                    let gauge = open_connections.clone();
                    gauge.inc();
                    connections.spawn(async move {
                        let _slot = slot;
                        connection.await;
                        gauge.dec();
                    });
                }
                Err(error) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    warn!(listener = %name, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => break,
        }
    }
    drop(socket);
    connections.close();
    let grace = runtime.snapshot().config.global.shutdown_timeout;
    info!(listener = %name, open = connections.len(), "stopped accepting; draining connections");
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        warn!(listener = %name, "shutdown_timeout passed with connections still open; closing them");
        force_close.cancel();
        connections.wait().await;
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

/// Set when a connection's first request reaches the service.
#[derive(Debug, Default)]
pub struct FirstRequest {
    seen: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl FirstRequest {
    /// Marks the first request (later calls are cheap no-ops).
    pub fn mark(&self) {
        if self.seen.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        if !self.seen.swap(true, std::sync::atomic::Ordering::AcqRel) {
            self.notify.notify_waiters();
        }
    }

    async fn wait(&self) {
        let notified = self.notify.notified();
        if self.seen.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        notified.await;
    }
}

fn connection_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    builder
}

async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    service: ProxyService,
    builder: Arc<auto::Builder<TokioExecutor>>,
    served: Arc<FirstRequest>,
    mut stop: watch::Receiver<bool>,
    force_close: CancellationToken,
) {
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => Some(result),
        _ = stop.wait_for(|stopped| *stopped) => None,
        () = force_close.cancelled() => return,
    };
    let result = match result {
        Some(result) => result,
        None => {
            // Draining: give a brand-new connection its first request, then ask hyper to finish what is in
            // flight and close.
            tokio::select! {
                result = connection.as_mut() => return log_end(peer, result),
                () = served.wait() => {}
                () = tokio::time::sleep(FIRST_REQUEST_GRACE) => {}
                () = force_close.cancelled() => return,
            }
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                result = connection.as_mut() => result,
                () = force_close.cancelled() => return,
            }
        }
    };
    log_end(peer, result);
}

fn log_end(peer: SocketAddr, result: Result<(), Box<dyn std::error::Error + Send + Sync>>) {
    if let Err(error) = result {
        debug!(%peer, %error, "connection ended with an error");
    }
}
