//! Upstream servers: static settings from the config plus live state that outlives config reloads.

mod latency;
mod passive;
mod queue;
mod registry;
mod rise_fall;
mod state;

use std::sync::Arc;

pub use latency::Latency;
pub use passive::{PassiveHealth, Transition};
pub use queue::{WaitQueue, Waited};
pub use registry::Registry;
pub use rise_fall::{prepare_state, Flip, ProbeCounter};
pub use state::ServerState;

/// A server as one snapshot sees it: its config and a handle on its live state.
#[derive(Debug, Clone)]
pub struct Server {
    /// `host:port` as configured.
    pub addr: http::uri::Authority,
    /// `http`, or `https` for a server spoken to over TLS.
    pub scheme: http::uri::Scheme,
    /// Relative weight (1..=1000).
    pub weight: u32,
    /// Passive failures that take it out; 0 disables.
    pub max_fails: u32,
    /// Failure window and time out, in ms.
    pub fail_timeout_ms: u64,
    /// Used only when no primary is available.
    pub backup: bool,
    /// Identity for consistent hashing, when configured (else the address).
    pub id: Option<Arc<str>>,
    /// The host name the server was found under (written as a name, resolved at load or by service
    /// discovery); `None` for an address written as an IP.
    pub name: Option<Arc<str>>,
    /// Index in the pool's `named_clients` of the client that verifies this server's TLS name (an
    /// `https://` server found under a name); `None`: the pool's client.
    pub named_client: Option<usize>,
    /// Live state, shared across snapshots.
    pub state: Arc<ServerState>,
    /// Metric handles, resolved when the snapshot was built.
    pub metrics: crate::metrics::ServerMetrics,
}

impl Server {
    /// A server with fresh state; used by benches and tests that need no registry.
    pub fn standalone(addr: &str, weight: u32) -> Option<Server> {
        Some(Server {
            addr: addr.parse().ok()?,
            scheme: http::uri::Scheme::HTTP,
            weight,
            max_fails: 1,
            fail_timeout_ms: 10_000,
            backup: false,
            id: None,
            name: None,
            named_client: None,
            state: Arc::default(),
            metrics: crate::metrics::ServerMetrics::detached(),
        })
    }

    /// Whether a balancer may pick this server now.
    #[inline]
    pub fn selectable(&self, now_ms: u64) -> bool {
        self.state.selectable(now_ms)
    }

    /// Records a failed attempt with this server's `max_fails` and `fail_timeout`.
    pub fn record_failure(&self, now_ms: u64) -> Transition {
        self.state
            .record_failure(now_ms, self.max_fails, self.fail_timeout_ms)
    }

    /// Takes the right to send to this server after it was picked (see [`PassiveHealth::claim`]).
    pub fn claim(&self, now_ms: u64) -> bool {
        self.state.claim(now_ms, self.fail_timeout_ms)
    }

    /// Counts a request as in flight until the guard drops.
    pub fn in_flight_guard(&self) -> InFlightGuard {
        self.state.enter();
        InFlightGuard {
            state: Arc::clone(&self.state),
            queue: None,
        }
    }

    /// Like [`Self::in_flight_guard`], unless the server is at its `max_conns`; the guard wakes a request
    /// waiting in `queue` when it drops.
    pub fn try_in_flight_guard(&self, queue: Option<&Arc<WaitQueue>>) -> Option<InFlightGuard> {
        if !self.state.try_enter() {
            return None;
        }
        Some(InFlightGuard {
            state: Arc::clone(&self.state),
            queue: queue.cloned(),
        })
    }

    /// Stable identity used by hash strategies: the configured `id`, else the address text.
    pub fn identity(&self) -> &str {
        self.id.as_deref().unwrap_or(self.addr.as_str())
    }
}

/// Holds one in-flight request on a server; dropping it releases the count.
#[derive(Debug)]
pub struct InFlightGuard {
    state: Arc<ServerState>,
    queue: Option<Arc<WaitQueue>>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.state.leave();
        if let Some(queue) = &self.queue {
            queue.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_is_held_by_guards() {
        let server = Server::standalone("127.0.0.1:1", 1).expect("valid address");
        let a = server.in_flight_guard();
        let b = server.in_flight_guard();
        assert_eq!(server.state.in_flight(), 2);
        drop(a);
        assert_eq!(server.state.in_flight_if_selectable(1), Some(1));
        drop(b);
        assert_eq!(server.state.in_flight(), 0);
    }
}
