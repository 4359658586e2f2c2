//! Upstream servers: static settings from the config plus live state that outlives config reloads.

mod passive;
mod registry;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

pub use passive::{PassiveHealth, Transition};
pub use registry::Registry;

/// Live state of one server, shared by every snapshot that lists it (keyed by address).
#[derive(Debug, Default)]
pub struct ServerState {
    in_flight: AtomicUsize,
    /// Passive health (failed requests).
    pub passive: PassiveHealth,
    /// Set by something other than passive health (active probes, an operator drain) to keep the server out.
    pub marked_down: AtomicBool,
}

impl ServerState {
    /// Requests currently being served by this server (held until the response body ends).
    #[inline]
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// A server as one snapshot sees it: its config and a handle on its live state.
#[derive(Debug, Clone)]
pub struct Server {
    /// `host:port` as configured.
    pub addr: http::uri::Authority,
    /// Relative weight (1..=1000).
    pub weight: u32,
    /// Passive failures that take it out; 0 disables.
    pub max_fails: u32,
    /// Failure window and time out, in ms.
    pub fail_timeout_ms: u64,
    /// Used only when no primary is available.
    pub backup: bool,
    /// Live state, shared across snapshots.
    pub state: Arc<ServerState>,
}

impl Server {
    /// A server with fresh state; used by benches and tests that need no registry.
    pub fn standalone(addr: &str, weight: u32) -> Option<Server> {
        Some(Server {
            addr: addr.parse().ok()?,
            weight,
            max_fails: 1,
            fail_timeout_ms: 10_000,
            backup: false,
            state: Arc::default(),
        })
    }

    /// Whether a balancer may pick this server now.
    #[inline]
    pub fn selectable(&self, now_ms: u64) -> bool {
        !self.state.marked_down.load(Ordering::Relaxed) && self.state.passive.selectable(now_ms)
    }

    /// Takes the right to send to this server after it was picked (see [`PassiveHealth::claim`]).
    pub fn claim(&self, now_ms: u64) -> bool {
        self.state.passive.claim(now_ms, self.fail_timeout_ms)
    }

    /// Counts a request as in flight until the guard drops.
    pub fn in_flight_guard(&self) -> InFlightGuard {
        self.state.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard {
            state: Arc::clone(&self.state),
        }
    }

    /// Stable identity used by hash strategies: the address text.
    pub fn identity(&self) -> &str {
        self.addr.as_str()
    }
}

/// Holds one in-flight request on a server; dropping it releases the count.
#[derive(Debug)]
pub struct InFlightGuard {
    state: Arc<ServerState>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
