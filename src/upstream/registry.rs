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
}

impl Registry {
    /// The live state for `addr`, creating it if no snapshot holds one.
    pub fn state_for(&self, addr: &str) -> Arc<ServerState> {
        let key = addr.to_ascii_lowercase();
        let mut states = self.states.lock();
        if let Some(state) = states.get(&key).and_then(Weak::upgrade) {
            return state;
        }
        states.retain(|_, weak| weak.strong_count() > 0);
        let state = Arc::new(ServerState::default());
        states.insert(key, Arc::downgrade(&state));
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_address_shares_state_while_held() {
        let registry = Registry::default();
        let a = registry.state_for("127.0.0.1:1");
        let b = registry.state_for("127.0.0.1:1");
        assert!(Arc::ptr_eq(&a, &b));
        drop((a, b));
        let c = registry.state_for("127.0.0.1:1");
        assert_eq!(Arc::strong_count(&c), 1);
    }
}
