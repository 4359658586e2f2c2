//! One listener: bind its socket, accept connections, serve them with hyper (HTTP/1.1 and h2c) and drain
//! them when told to stop.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
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

/// Accepts until `stop` fires, then stops accepting and lets open connections finish (idle keep-alive
/// connections close at once) for up to the current `shutdown_timeout`.
pub async fn accept_loop(
    name: String,
    socket: TcpListener,
    runtime: Arc<Runtime>,
    mut stop: watch::Receiver<bool>,
) {
    let builder = Arc::new(connection_builder());
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = socket.accept() => match accepted {
                Ok((stream, peer)) => serve(stream, peer, &runtime, &builder, &graceful),
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
    let grace = runtime.snapshot().config.global.shutdown_timeout;
    info!(listener = %name, open = graceful.count(), "stopped accepting; draining connections");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(listener = %name, "shutdown_timeout passed with connections still open; closing them");
    }
}

fn connection_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    builder
}

fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    runtime: &Arc<Runtime>,
    builder: &Arc<auto::Builder<TokioExecutor>>,
    graceful: &GracefulShutdown,
) {
    let _ = stream.set_nodelay(true);
    let service = ProxyService::new(Arc::clone(runtime), peer, "http");
    let builder = Arc::clone(builder);
    let watcher = graceful.watcher();
    tokio::spawn(async move {
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        if let Err(error) = watcher.watch(connection).await {
            debug!(%peer, %error, "connection ended with an error");
        }
    });
}
