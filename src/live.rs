//! The live state of a running proxy (`Live`): the published snapshot, and what outlives snapshots
//! (the server registry, the upstream clients, tunnels, rate-limit zones, metrics, discovered sets).
//! Named apart from tokio's runtimes, which run it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::access_log::AccessLog;
use crate::config::{AccessLogConfig, Config, RateLimitBackend, RateLimitConfig};
use crate::discovery::Discovered;
use crate::metrics::Metrics;
use crate::ratelimit::redis::RedisBackend;
use crate::ratelimit::{Limit, Store};
use crate::snapshot::{Snapshot, ZoneShared};
use crate::upstream::Registry;
use crate::upstream_client::tunnel::Tunnels;
use crate::upstream_client::{build_client, ClientSettings, UpstreamClient};

/// Pooled clients by connect settings and, for `https://` servers found under a name, that name.
type Clients = HashMap<(ClientSettings, Option<Arc<str>>), UpstreamClient>;

/// Holds what outlives one config: the registry of server state and the pooled clients.
#[derive(Debug)]
pub struct Live {
    snapshot: ArcSwap<Snapshot>,
    registry: Registry,
    clients: Mutex<Clients>,
    zones: Mutex<HashMap<String, ZoneState>>,
    /// Bumped on every publish, so background tasks (the health checker) follow new snapshots.
    published: watch::Sender<u64>,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    tunnels: Tunnels,
    metrics: Arc<Metrics>,
    access_log: Mutex<Option<(AccessLogConfig, Arc<AccessLog>)>>,
    /// The servers found so far for every `resolve = true` name.
    discovered: Discovered,
    /// Held while a snapshot is built and published, so a reload and a discovery rebuild never publish
    /// out of order (a rebuild from the old config after a reload).
    publishing: Mutex<()>,
}

/// Fresh state for a zone: empty buckets and, for the Redis backend, a (lazily connecting) client.
fn new_zone_shared(zone: &RateLimitConfig, metrics: &Metrics) -> ZoneShared {
    let redis = match &zone.backend {
        RateLimitBackend::Redis {
            urls,
            cluster,
            timeout,
            ..
        } => {
            match RedisBackend::new(
                urls,
                *cluster,
                &zone.name,
                *timeout,
                metrics.redis_up(&zone.name),
            ) {
                Ok(backend) => Some(Arc::new(backend)),
                Err(e) => {
                    // Validation opened the same URL, so this is not expected; the zone then acts local.
                    tracing::error!(zone = %zone.name, error = %e, "cannot use the Redis URL");
                    None
                }
            }
        }
        RateLimitBackend::Local => None,
    };
    ZoneShared {
        store: Arc::new(Store::new(zone.max_keys)),
        delayed: Arc::default(),
        redis,
    }
}

/// A zone's buckets, kept across snapshots while the zone's key and limit stay the same.
#[derive(Debug)]
struct ZoneState {
    config: RateLimitConfig,
    shared: ZoneShared,
}

impl Live {
    /// The live state serving `config`.
    pub fn new(config: Config) -> Arc<Live> {
        let registry = Registry::default();
        let clients = Mutex::new(HashMap::new());
        let zones = Mutex::new(HashMap::new());
        let metrics = Arc::new(Metrics::default());
        let access_log = Mutex::new(None);
        let discovered = Discovered::default();
        let mut snapshot = Self::build(
            Arc::new(config),
            &registry,
            &clients,
            &zones,
            &metrics,
            &discovered,
            true,
        );
        snapshot.access_log = Self::access_log_for(&access_log, &snapshot.config, &metrics);
        Arc::new(Live {
            snapshot: ArcSwap::from_pointee(snapshot),
            registry,
            clients,
            zones,
            published: watch::Sender::new(0),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            tunnels: Tunnels::default(),
            metrics,
            access_log,
            discovered,
            publishing: Mutex::new(()),
        })
    }

    /// Builds a snapshot for `config` and publishes it with one atomic swap; requests already running keep
    /// the snapshot they started with.
    pub fn apply(&self, config: Config) {
        let _publishing = self.publishing.lock();
        self.publish(Arc::new(config));
    }

    /// Builds the config in force again with the servers discovery has found now, and publishes it.
    pub fn rebuild(&self) {
        let _publishing = self.publishing.lock();
        let config = Arc::clone(&self.snapshot().config);
        self.publish(config);
    }

    fn publish(&self, config: Arc<Config>) {
        let mut snapshot = Self::build(
            config,
            &self.registry,
            &self.clients,
            &self.zones,
            &self.metrics,
            &self.discovered,
            false,
        );
        snapshot.access_log =
            Self::access_log_for(&self.access_log, &snapshot.config, &self.metrics);
        self.snapshot.store(Arc::new(snapshot));
        self.published.send_modify(|generation| *generation += 1);
    }

    /// The servers service discovery has found.
    pub fn discovered(&self) -> &Discovered {
        &self.discovered
    }

    /// The current snapshot (load once per request).
    #[inline]
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Reopens the access log file (SIGUSR1, after logrotate).
    pub fn reopen_access_log(&self) {
        if let Some(log) = &self.snapshot().access_log {
            log.reopen();
        }
    }

    /// The access log for `config`: the running one when its settings are unchanged, else a new one.
    fn access_log_for(
        current: &Mutex<Option<(AccessLogConfig, Arc<AccessLog>)>>,
        config: &Config,
        metrics: &Metrics,
    ) -> Option<Arc<AccessLog>> {
        let wanted = config.access_log.as_ref()?;
        let mut current = current.lock();
        if let Some((settings, log)) = current.as_ref() {
            if settings == wanted {
                return Some(Arc::clone(log));
            }
        }
        match AccessLog::open(wanted, metrics.access_log_dropped()) {
            Ok(log) => {
                let log = Arc::new(log);
                *current = Some((wanted.clone(), Arc::clone(&log)));
                Some(log)
            }
            Err(e) => {
                tracing::error!(path = %wanted.path.display(), error = %e, "cannot open the access log; requests are not logged");
                None
            }
        }
    }

    /// The Prometheus metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The upgraded (WebSocket) tunnels open through this proxy.
    pub fn tunnels(&self) -> &Tunnels {
        &self.tunnels
    }

    /// Counts a reload that was applied.
    pub fn reload_succeeded(&self) {
        self.metrics.mark_reload_success();
        self.reloads_ok.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a reload that was refused (bad file, or a listener that could not be bound).
    pub fn reload_failed(&self) {
        self.metrics.mark_reload_failure();
        self.reloads_failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Reloads applied and refused so far.
    pub fn reload_counts(&self) -> (u64, u64) {
        (
            self.reloads_ok.load(Ordering::Relaxed),
            self.reloads_failed.load(Ordering::Relaxed),
        )
    }

    /// A receiver that changes whenever a new snapshot is published.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.published.subscribe()
    }

    fn build(
        config: Arc<Config>,
        registry: &Registry,
        clients: &Mutex<Clients>,
        zones: &Mutex<HashMap<String, ZoneState>>,
        metrics: &Arc<Metrics>,
        discovered: &Discovered,
        first: bool,
    ) -> Snapshot {
        Snapshot::build(
            config,
            registry,
            |settings, tls, name| {
                clients
                    .lock()
                    .entry((settings, name.map(Arc::from)))
                    .or_insert_with(|| build_client(settings, tls, name))
                    .clone()
            },
            |name| discovered.get(name),
            |zone| {
                let mut zones = zones.lock();
                let same = zones.get(&zone.name).is_some_and(|kept| {
                    kept.config.key == zone.key
                        && Limit::of(&kept.config) == Limit::of(zone)
                        && kept.config.max_keys == zone.max_keys
                        && kept.config.backend == zone.backend
                });
                if !same {
                    zones.insert(
                        zone.name.clone(),
                        ZoneState {
                            config: zone.clone(),
                            shared: new_zone_shared(zone, metrics),
                        },
                    );
                }
                zones.get(&zone.name).map_or_else(
                    || new_zone_shared(zone, metrics),
                    |kept| kept.shared.clone(),
                )
            },
            metrics,
            first,
        )
    }
}

impl crate::discovery::Publisher for Live {
    fn config(&self) -> Arc<Config> {
        Arc::clone(&self.snapshot().config)
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        Live::subscribe(self)
    }

    fn discovered(&self) -> &Discovered {
        Live::discovered(self)
    }

    fn rebuild(&self) {
        Live::rebuild(self);
    }

    fn resolver_error(&self, name: &str, reason: &str) {
        self.metrics.resolver_error(name, reason);
    }
}

/// How often drained buckets are forgotten.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Forgets drained buckets of every zone in the current snapshot every few seconds, until `stop` fires.
pub async fn sweep_rate_limit_buckets(
    live: Arc<Live>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(SWEEP_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                let now = crate::clock::now_ms();
                for zone in &live.snapshot().zones {
                    zone.store.sweep(now, zone.limit);
                }
            }
            _ = stop.changed() => return,
        }
    }
}
