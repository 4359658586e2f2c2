//! Listeners: bind every address, accept connections, serve them with hyper (HTTP/1.1 and h2c), drain on shutdown.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::health;
use crate::proxy::ProxyService;
use crate::runtime::Runtime;

/// A bound listener.
#[derive(Debug, Clone)]
pub struct BoundListener {
    /// The listener's configured name.
    pub name: String,
    /// The address it actually listens on (port 0 resolved).
    pub addr: SocketAddr,
}

/// A running proxy: its listeners and the handle to stop it.
#[derive(Debug)]
pub struct RunningProxy {
    listeners: Vec<BoundListener>,
    runtime: Arc<Runtime>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    shutdown_timeout: Duration,
}

/// Error binding a listener.
#[derive(Debug, thiserror::Error)]
#[error("listener {name}: cannot listen on {addr}: {source}")]
pub struct BindError {
    /// Listener name.
    pub name: String,
    /// Address asked for.
    pub addr: SocketAddr,
    /// Why.
    #[source]
    pub source: io::Error,
}

/// Binds every listener of `config` (all or nothing) and starts serving. Must run inside a tokio runtime.
pub async fn start(config: Config) -> Result<RunningProxy, BindError> {
    let mut sockets = Vec::with_capacity(config.listeners.len());
    for listener in &config.listeners {
        let socket = TcpListener::bind(listener.listen)
            .await
            .map_err(|source| BindError {
                name: listener.name.clone(),
                addr: listener.listen,
                source,
            })?;
        let addr = socket.local_addr().map_err(|source| BindError {
            name: listener.name.clone(),
            addr: listener.listen,
            source,
        })?;
        sockets.push((listener.name.clone(), addr, socket));
    }
    let shutdown_timeout = config.global.shutdown_timeout;
    let runtime = Runtime::new(config);
    let (stop, _) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut listeners = Vec::new();
    for (name, addr, socket) in sockets {
        info!(listener = %name, %addr, "listening");
        listeners.push(BoundListener {
            name: name.clone(),
            addr,
        });
        tasks.spawn(accept_loop(
            name,
            socket,
            Arc::clone(&runtime),
            stop.subscribe(),
            shutdown_timeout,
        ));
    }
    tasks.spawn(health::run_checker(Arc::clone(&runtime), stop.subscribe()));
    Ok(RunningProxy {
        listeners,
        runtime,
        stop,
        tasks,
        shutdown_timeout,
    })
}

impl RunningProxy {
    /// The bound listeners, in config order.
    pub fn listeners(&self) -> &[BoundListener] {
        &self.listeners
    }

    /// The address of the listener called `name`.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.addr)
    }

    /// The runtime (snapshot and live state).
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Stops accepting, lets in-flight requests finish up to `shutdown_timeout`, then returns.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let grace = self.shutdown_timeout + Duration::from_secs(1);
        let drained = tokio::time::timeout(grace, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            self.tasks.abort_all();
        }
    }
}

async fn accept_loop(
    name: String,
    socket: TcpListener,
    runtime: Arc<Runtime>,
    mut stop: watch::Receiver<bool>,
    shutdown_timeout: Duration,
) {
    let builder = Arc::new(connection_builder());
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = socket.accept() => match accepted {
                Ok((stream, peer)) => {
                    serve(stream, peer, &runtime, &builder, &graceful);
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
    info!(listener = %name, open = graceful.count(), "stopped accepting; draining connections");
    if tokio::time::timeout(shutdown_timeout, graceful.shutdown())
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
