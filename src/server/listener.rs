//! One listener's accept loop: admit each connection (admission.rs), hand it to its own task (TLS
//! handshake, then connection.rs), and drain them all when told to stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::acceptor::Acceptor;
use super::admission::{ListenerCounts, OpenGauge};
use super::connection::{Connection, Shared};
use super::connection_clock::ConnectionClock;
use super::handshake::handshake;
use super::service::ClockedService;
use crate::config::ListenerConfig;
use crate::live::Live;
use crate::request::ProxyService;

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

/// Accepts until `stop` fires, then stops accepting and drains: every connection finishes the request it is
/// serving and closes (idle keep-alive connections at once, new ones after their first request), for up to
/// the current `shutdown_timeout`; then the rest are closed.
pub async fn accept_loop(accepting: Accepting, live: Arc<Live>, mut stop: watch::Receiver<bool>) {
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
    let open_connections = live.metrics().connections(&name);
    let tls_failures = live.metrics().tls_handshake_failures(&name);
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
                    let snapshot = live.snapshot();
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
                        _ => Arc::clone(shared.insert(Arc::new(Shared::new(&live, settings)))),
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
                                if let Some(stream) = handshake(stream, &tls, connection.peer, &connection.force_close, &failures, &listener).await {
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
    let grace = live.snapshot().config.global.shutdown_timeout;
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
