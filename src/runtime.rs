//! The runtime: the published snapshot, the live server registry and the upstream clients.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::config::Config;
use crate::proxy::client::{build_client, ClientSettings, UpstreamClient};
use crate::snapshot::Snapshot;
use crate::upstream::Registry;

/// Holds what outlives one config: the registry of server state and the pooled clients.
#[derive(Debug)]
pub struct Runtime {
    snapshot: ArcSwap<Snapshot>,
    registry: Registry,
    clients: Mutex<HashMap<ClientSettings, UpstreamClient>>,
}

impl Runtime {
    /// A runtime serving `config`.
    pub fn new(config: Config) -> Arc<Runtime> {
        let registry = Registry::default();
        let clients = Mutex::new(HashMap::new());
        let snapshot = Self::build(Arc::new(config), &registry, &clients);
        Arc::new(Runtime {
            snapshot: ArcSwap::from_pointee(snapshot),
            registry,
            clients,
        })
    }

    /// Builds a snapshot for `config` and publishes it with one atomic swap; requests already running keep
    /// the snapshot they started with.
    pub fn apply(&self, config: Config) {
        let snapshot = Self::build(Arc::new(config), &self.registry, &self.clients);
        self.snapshot.store(Arc::new(snapshot));
    }

    /// The current snapshot (load once per request).
    #[inline]
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    fn build(
        config: Arc<Config>,
        registry: &Registry,
        clients: &Mutex<HashMap<ClientSettings, UpstreamClient>>,
    ) -> Snapshot {
        Snapshot::build(config, registry, |settings| {
            clients
                .lock()
                .entry(settings)
                .or_insert_with(|| build_client(settings))
                .clone()
        })
    }
}
