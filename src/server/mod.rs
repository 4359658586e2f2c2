//! The running proxy: its listeners, its live state, the background tasks; start, reload and shutdown.

mod acceptor;
mod admission;
mod bind;
mod connection;
mod connection_clock;
mod control;
mod handshake;
mod listener;
mod service;
mod serving;
mod thread;
mod timed_io;
mod verdict;

pub use connection_clock::ConnectionClock;
pub use service::{ClockedBody, ClockedService};
pub use thread::{serving_threads, serving_threads_started, worker_index, ServingThread};
pub use timed_io::TimedIo;
pub use verdict::Verdict;

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::config::{Config, ListenerConfig};
use crate::health;
use crate::live::Live;

/// A bound listener.
#[derive(Debug, Clone)]
pub struct BoundListener {
    /// The listener's configured name.
    pub name: String,
    /// The address it actually listens on (port 0 resolved).
    pub addr: SocketAddr,
}

/// A listener and the switch that stops it.
#[derive(Debug)]
struct ListenerHandle {
    bound: BoundListener,
    /// The address as configured (port 0 stays 0), which reloads compare.
    listen: SocketAddr,
    stop: watch::Sender<bool>,
    /// A duplicate of the listening socket, handed to a new binary on upgrade; dropped on shutdown so the
    /// port refuses connections once this process stops accepting.
    socket: Option<std::os::fd::OwnedFd>,
}

/// A running proxy: its listeners and the handle to reload or stop it.
#[derive(Debug)]
pub struct RunningProxy {
    listeners: Vec<ListenerHandle>,
    admin: Option<SocketAddr>,
    reloads: Option<tokio::sync::mpsc::Receiver<crate::admin::ReloadRequest>>,
    live: Arc<Live>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    /// Where the listeners' accept loops (and so their connections) run: one loop per listener on each.
    serving: Vec<Handle>,
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

/// A socket bound for a listener, not yet accepting.
struct Bound {
    config: ListenerConfig,
    addr: SocketAddr,
    /// The socket once per serving runtime (duplicates of one socket, so they share its queue of
    /// pending connections), each registered with that runtime's I/O driver: its readiness is seen on
    /// the thread that accepts from it.
    sockets: Vec<(acceptor::Acceptor, Handle)>,
}

/// Binds the listeners' sockets (or takes inherited ones), one duplicate per runtime of `serving`.
fn bind_all<'a>(
    configs: impl Iterator<Item = &'a ListenerConfig>,
    inherited: &mut Vec<std::net::TcpListener>,
    serving: &[Handle],
) -> Result<Vec<Bound>, BindError> {
    configs
        .map(|config| {
            let error = |source| BindError {
                name: config.name.clone(),
                addr: config.listen,
                source,
            };
            let socket = match take_inherited(inherited, config.listen) {
                Some(socket) => {
                    info!(listener = %config.name, addr = %config.listen, "using an inherited socket");
                    socket
                }
                None => bind::bind(config.listen, config.reuseport).map_err(error)?,
            };
            socket.set_nonblocking(true).map_err(error)?;
            let addr = socket.local_addr().map_err(error)?;
            let sockets = serving
                .iter()
                .map(|handle| {
                    let _entered = handle.enter();
                    let socket = socket.try_clone()?;
                    Ok((acceptor::Acceptor::from_std(socket)?, handle.clone()))
                })
                .collect::<io::Result<Vec<_>>>()
                .map_err(error)?;
            Ok(Bound {
                config: config.clone(),
                addr,
                sockets,
            })
        })
        .collect()
}

/// The inherited socket listening on `addr`, if any.
fn take_inherited(
    inherited: &mut Vec<std::net::TcpListener>,
    addr: SocketAddr,
) -> Option<std::net::TcpListener> {
    let index = inherited
        .iter()
        .position(|socket| socket.local_addr().is_ok_and(|local| local == addr))?;
    Some(inherited.swap_remove(index))
}

/// Listening sockets handed to this process (systemd socket activation, or an upgrade from an older
/// fulcrum): `LISTEN_FDS` sockets from fd 3. Call before any thread starts: it clears those variables.
pub fn inherited_sockets() -> Vec<std::net::TcpListener> {
    let mut fds = listenfd::ListenFd::from_env();
    (0..fds.len())
        .filter_map(|index| fds.take_tcp_listener(index).ok().flatten())
        .collect()
}

/// Binds every listener of `config` (all or nothing) and starts serving. Must run inside a tokio runtime.
pub async fn start(config: Config) -> Result<RunningProxy, BindError> {
    start_with(config, Vec::new()).await
}

/// Like [`start`], using inherited sockets (see [`inherited_sockets`]) for the addresses they listen on.
pub async fn start_with(
    config: Config,
    inherited: Vec<std::net::TcpListener>,
) -> Result<RunningProxy, BindError> {
    start_on(config, inherited, vec![Handle::current()]).await
}

/// Like [`start_with`], with the listeners served on `serving`'s runtimes (the [`ServingThread`]s: each
/// accepts on every listener) while the admin API, health checks and the rest run on the caller's.
pub async fn start_on(
    config: Config,
    mut inherited: Vec<std::net::TcpListener>,
    serving: Vec<Handle>,
) -> Result<RunningProxy, BindError> {
    let bound = bind_all(config.listeners.iter(), &mut inherited, &serving)?;
    let admin = match &config.admin {
        Some(admin) => {
            let socket = tokio::net::TcpListener::bind(admin.listen)
                .await
                .map_err(|source| BindError {
                    name: "admin".to_string(),
                    addr: admin.listen,
                    source,
                })?;
            let addr = socket.local_addr().map_err(|source| BindError {
                name: "admin".to_string(),
                addr: admin.listen,
                source,
            })?;
            Some((socket, addr))
        }
        None => None,
    };
    for unused in inherited {
        warn!(addr = ?unused.local_addr().ok(), "an inherited socket matches no listener; closing it");
    }
    let live = Live::new(config);
    let (stop, _) = watch::channel(false);
    let (reload_sender, reloads) = tokio::sync::mpsc::channel(4);
    let mut proxy = RunningProxy {
        listeners: Vec::new(),
        admin: admin.as_ref().map(|(_, addr)| *addr),
        reloads: Some(reloads),
        live,
        stop,
        tasks: JoinSet::new(),
        serving,
    };
    proxy.tasks.spawn(crate::discovery::run(
        Arc::clone(&proxy.live),
        proxy.stop.subscribe(),
    ));
    settle_discovery(&proxy.live).await;
    for socket in bound {
        let handle = proxy.serve(socket);
        proxy.listeners.push(handle);
    }
    proxy.tasks.spawn(health::run_checker(
        Arc::clone(&proxy.live),
        proxy.stop.subscribe(),
    ));
    if let Some((socket, addr)) = admin {
        info!(%addr, "admin API listening");
        proxy.tasks.spawn(crate::admin::serve(
            socket,
            Arc::clone(&proxy.live),
            reload_sender,
            proxy.stop.subscribe(),
        ));
    }
    proxy.tasks.spawn(crate::live::sweep_rate_limit_buckets(
        Arc::clone(&proxy.live),
        proxy.stop.subscribe(),
    ));
    Ok(proxy)
}

/// Waits (at most the resolver's timeout and a little more) for every `resolve = true` name's first
/// answer, so the listeners open with the servers found; a name that does not answer yet is followed
/// in the background and its pool answers 503 until it does.
async fn settle_discovery(live: &Live) {
    let config = Arc::clone(&live.snapshot().config);
    if crate::discovery::names(&config).is_empty() {
        return;
    }
    let deadline = tokio::time::Instant::now()
        + config.resolver.timeout
        + std::time::Duration::from_millis(500);
    while !live.discovered().settled_for(&config) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

impl RunningProxy {
    /// The bound listeners, in config order.
    pub fn listeners(&self) -> Vec<BoundListener> {
        self.listeners.iter().map(|l| l.bound.clone()).collect()
    }

    /// The admin API's address, when `[admin]` is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// Reloads asked for through the admin API; whoever owns the config file (the daemon) answers them.
    pub fn take_reload_requests(
        &mut self,
    ) -> Option<tokio::sync::mpsc::Receiver<crate::admin::ReloadRequest>> {
        self.reloads.take()
    }

    /// The live state (the published snapshot, and what outlives snapshots).
    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// Applies a validated config: binds the listeners it adds first (any failure changes nothing), then
    /// publishes the new snapshot with one swap, then stops the listeners it removes (their open
    /// connections finish). A listener whose address is unchanged keeps its socket.
    pub fn reload(&mut self, config: Config) -> Result<(), BindError> {
        let mut kept: Vec<Option<ListenerHandle>> = Vec::new();
        let mut old: Vec<Option<ListenerHandle>> = self.listeners.drain(..).map(Some).collect();
        let mut to_bind = Vec::new();
        for (i, wanted) in config.listeners.iter().enumerate() {
            let same = old
                .iter_mut()
                .find(|h| h.as_ref().is_some_and(|h| h.listen == wanted.listen))
                .and_then(Option::take);
            if same.is_none() {
                to_bind.push((i, wanted.clone()));
            }
            kept.push(same);
        }
        let bound = match bind_all(
            to_bind.iter().map(|(_, c)| c),
            &mut Vec::new(),
            &self.serving,
        ) {
            Ok(bound) => bound,
            Err(error) => {
                // Put everything back as it was.
                self.listeners = kept.into_iter().chain(old).flatten().collect();
                return Err(error);
            }
        };
        self.live.apply(config);
        for removed in old.into_iter().flatten() {
            info!(listener = %removed.bound.name, addr = %removed.bound.addr, "listener removed by reload");
            let _ = removed.stop.send(true);
        }
        for ((i, _), socket) in to_bind.into_iter().zip(bound) {
            kept[i] = Some(self.serve(socket));
        }
        self.listeners = kept.into_iter().flatten().collect();
        Ok(())
    }

    /// Starts `program run -c config` with this process's listening sockets (fd 3 onwards, `LISTEN_FDS`),
    /// so the new process accepts on the same sockets; stop this one afterwards and no connection is
    /// refused. Returns the new process id.
    pub fn spawn_upgrade(&self, program: &Path, config: &Path) -> io::Result<u32> {
        use command_fds::{CommandFdExt, FdMapping};
        let mut mappings = Vec::new();
        for (offset, handle) in self.listeners.iter().enumerate() {
            let Some(socket) = &handle.socket else {
                continue;
            };
            mappings.push(FdMapping {
                parent_fd: socket.try_clone()?,
                child_fd: 3 + offset as i32,
            });
        }
        let count = mappings.len();
        let mut command = std::process::Command::new(program);
        command
            .arg("run")
            .arg("-c")
            .arg(config)
            .env("LISTEN_FDS", count.to_string())
            .env_remove("LISTEN_PID")
            .env_remove("NOTIFY_SOCKET");
        command
            .fd_mappings(mappings)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let child = command.spawn()?;
        Ok(child.id())
    }

    /// Stops accepting, lets in-flight requests finish up to `shutdown_timeout`, then returns.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for handle in &mut self.listeners {
            handle.socket = None;
            let _ = handle.stop.send(true);
        }
        let grace = self.live.snapshot().config.global.shutdown_timeout;
        let tunnels = self.live.tunnels();
        let open = tunnels.open();
        if open > 0 {
            info!(tunnels = open, "draining upgraded tunnels");
        }
        let drained = tokio::time::timeout(grace + Duration::from_secs(1), async {
            tokio::join!(
                async { while self.tasks.join_next().await.is_some() {} },
                tunnels.drain(grace)
            )
        })
        .await;
        if drained.is_err() {
            self.tasks.abort_all();
        }
    }

    fn serve(&mut self, bound: Bound) -> ListenerHandle {
        info!(listener = %bound.config.name, addr = %bound.addr, "listening");
        let (stop, stopped) = watch::channel(false);
        let socket = bound.sockets.first().and_then(|(socket, _)| {
            use std::os::fd::AsFd;
            socket.as_fd().try_clone_to_owned().ok()
        });
        // What the listener's accept loops count together (its connection limits).
        let counts = Arc::new(admission::ListenerCounts::default());
        for (socket, handle) in bound.sockets {
            self.tasks.spawn_on(
                listener::accept_loop(
                    listener::Accepting {
                        name: bound.config.name.clone(),
                        listen: bound.config.listen,
                        socket,
                        counts: Arc::clone(&counts),
                    },
                    Arc::clone(&self.live),
                    stopped.clone(),
                ),
                &handle,
            );
        }
        ListenerHandle {
            bound: BoundListener {
                name: bound.config.name,
                addr: bound.addr,
            },
            listen: bound.config.listen,
            stop,
            socket,
        }
    }
}
