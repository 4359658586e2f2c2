//! The registry of live server state, keyed by address, so state survives snapshots that keep a server.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use super::ServerState;

/// Hands out one [`ServerState`] per address while any snapshot still holds it. Used only when building
/// snapshots, never per request.
#[derive(Debug, Default)]
pub struct Registry {
    states: Mutex<HashMap<String, Weak<ServerState>>>,
    queues: Mutex<HashMap<String, Weak<super::WaitQueue>>>,
}

impl Registry {
    /// The live state for `addr`, and whether it was just created (no snapshot held one).
    pub fn state_for(&self, addr: &str) -> (Arc<ServerState>, bool) {
        let key = addr.to_ascii_lowercase();
        let mut states = self.states.lock();
        if let Some(state) = states.get(&key).and_then(Weak::upgrade) {
            return (state, false);
        }
        states.retain(|_, weak| weak.strong_count() > 0);
        let state = Arc::new(ServerState::default());
        states.insert(key, Arc::downgrade(&state));
        (state, true)
    }

    /// The queue of the pool named `upstream`, the same while any snapshot holds it.
    pub fn queue_for(&self, upstream: &str) -> Arc<super::WaitQueue> {
        let mut queues = self.queues.lock();
        if let Some(queue) = queues.get(upstream).and_then(Weak::upgrade) {
            return queue;
        }
        queues.retain(|_, weak| weak.strong_count() > 0);
        let queue = Arc::new(super::WaitQueue::default());
        queues.insert(upstream.to_string(), Arc::downgrade(&queue));
        queue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_address_shares_state_while_held() {
        let registry = Registry::default();
        let (a, a_new) = registry.state_for("127.0.0.1:1");
        let (b, b_new) = registry.state_for("127.0.0.1:1");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(a_new && !b_new);
        drop((a, b));
        let (c, c_new) = registry.state_for("127.0.0.1:1");
        assert!(c_new);
        assert_eq!(Arc::strong_count(&c), 1);
    }
}
