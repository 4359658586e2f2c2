//! Upstream servers: static settings from the config plus live state that outlives config reloads.

mod passive;
mod registry;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use passive::{PassiveHealth, Transition};
pub use registry::Registry;

/// Bit of [`ServerState`]'s word: something other than passive health keeps the server out.
const MARKED_DOWN: u64 = 1 << 62;
/// Bit of [`ServerState`]'s word: passive health took the server out (until `PassiveHealth` says otherwise).
const PASSIVE_DOWN: u64 = 1 << 63;
/// The in-flight count's bits of [`ServerState`]'s word.
const IN_FLIGHT: u64 = (1 << 32) - 1;

/// Live state of one server, shared by every snapshot that lists it (keyed by address).
///
/// The in-flight count and the "maybe down" flags share one atomic word, so a balancer scan reads one
/// word per server; the flags are hints that send the check to the authoritative slow path.
#[derive(Debug, Default)]
pub struct ServerState {
    word: AtomicU64,
    /// Passive health (failed requests); change it through [`ServerState`]'s methods so the hint follows.
    passive: PassiveHealth,
}

impl ServerState {
    /// Whether neither passive health nor anything else keeps the server out right now.
    #[inline]
    pub fn selectable(&self, now_ms: u64) -> bool {
        self.in_flight_if_selectable(now_ms).is_some()
    }

    /// The in-flight count if the server may be picked now, in one atomic load when it is up.
    #[inline]
    pub fn in_flight_if_selectable(&self, now_ms: u64) -> Option<u64> {
        let word = self.word.load(Ordering::Relaxed);
        if word & (MARKED_DOWN | PASSIVE_DOWN) == 0 {
            // No flag set: the word is the in-flight count.
            Some(word)
        } else {
            self.in_flight_if_flagged_selectable(word, now_ms)
        }
    }

    /// The slow path of [`Self::in_flight_if_selectable`]: a flag is set, so ask the authoritative state.
    #[cold]
    #[inline(never)]
    fn in_flight_if_flagged_selectable(&self, word: u64, now_ms: u64) -> Option<u64> {
        (word & MARKED_DOWN == 0 && self.passive.selectable(now_ms)).then_some(word & IN_FLIGHT)
    }

    /// Requests currently being served by this server (held until the response body ends).
    #[inline]
    pub fn in_flight(&self) -> usize {
        (self.word.load(Ordering::Relaxed) & IN_FLIGHT) as usize
    }

    /// Keeps the server out (or lets it back) for a reason other than passive health: active probes, drain.
    pub fn set_marked_down(&self, down: bool) {
        if down {
            self.word.fetch_or(MARKED_DOWN, Ordering::SeqCst);
        } else {
            self.word.fetch_and(!MARKED_DOWN, Ordering::SeqCst);
        }
    }

    /// Whether something other than passive health keeps the server out.
    pub fn is_marked_down(&self) -> bool {
        self.word.load(Ordering::Relaxed) & MARKED_DOWN != 0
    }

    /// Passive health, read-only.
    pub fn passive(&self) -> &PassiveHealth {
        &self.passive
    }

    /// Records a failed attempt (see [`PassiveHealth::record_failure`]).
    pub fn record_failure(&self, now_ms: u64, max_fails: u32, fail_timeout_ms: u64) -> Transition {
        let transition = self
            .passive
            .record_failure(now_ms, max_fails, fail_timeout_ms);
        if self.passive.is_down(now_ms) {
            self.word.fetch_or(PASSIVE_DOWN, Ordering::SeqCst);
        }
        transition
    }

    /// Records a good answer (see [`PassiveHealth::record_success`]).
    pub fn record_success(&self) -> Transition {
        let transition = self.passive.record_success();
        if transition == Transition::Up {
            self.word.fetch_and(!PASSIVE_DOWN, Ordering::SeqCst);
            // A failure that raced in after the reset has stored its time before setting the bit; if the
            // clear above undid its bit, put it back.
            if self.passive.marked_until() != 0 {
                self.word.fetch_or(PASSIVE_DOWN, Ordering::SeqCst);
            }
        }
        transition
    }

    /// Takes the right to send after a pick (see [`PassiveHealth::claim`]).
    pub fn claim(&self, now_ms: u64, fail_timeout_ms: u64) -> bool {
        self.passive.claim(now_ms, fail_timeout_ms)
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
        self.state.word.fetch_add(1, Ordering::Relaxed);
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
        self.state.word.fetch_sub(1, Ordering::Relaxed);
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

    #[test]
    fn marked_down_overrides_and_keeps_the_count() {
        let server = Server::standalone("127.0.0.1:1", 1).expect("valid address");
        let _guard = server.in_flight_guard();
        server.state.set_marked_down(true);
        assert!(!server.selectable(1));
        assert!(server.state.is_marked_down());
        assert_eq!(server.state.in_flight(), 1);
        server.state.set_marked_down(false);
        assert_eq!(server.state.in_flight_if_selectable(1), Some(1));
    }

    #[test]
    fn passive_down_flag_follows_failures_probe_and_recovery() {
        let state = ServerState::default();
        assert_eq!(state.record_failure(1_000, 1, 500), Transition::Down);
        assert!(!state.selectable(1_200));
        assert!(state.selectable(1_500), "probe due after fail_timeout");
        assert!(state.claim(1_500, 500));
        assert!(!state.selectable(1_600), "the probe holds the slot");
        assert_eq!(state.record_success(), Transition::Up);
        assert_eq!(state.in_flight_if_selectable(1_600), Some(0));
        assert_eq!(state.word.load(Ordering::Relaxed) & PASSIVE_DOWN, 0);
    }
}
