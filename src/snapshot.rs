//! The immutable snapshot a request reads once: routes, pools with their balancers, and limits.

use std::sync::Arc;
use std::time::Duration;

use crate::balance::{self, Balancer, BalancerOptions, PickContext};
use crate::clock::now_ms;
use crate::config::{
    AllUnhealthy, Config, Discover, HashKey, HealthCheckConfig, RateLimitConfig, RetryOn,
    ServerConfig, Strategy, UpstreamConfig,
};
use crate::discovery::Found;
use crate::metrics::{Metrics, PoolMetrics};
use crate::ratelimit::{Store, Zone};
use crate::router::Router;
use crate::tls::UpstreamTls;
use crate::upstream::{Registry, Server};
use crate::upstream_client::{ClientSettings, UpstreamClient};
use std::sync::atomic::AtomicUsize;

/// Everything a request needs to decide, built off the hot path and published with one swap.
#[derive(Debug)]
pub struct Snapshot {
    /// The config this snapshot was built from.
    pub config: Arc<Config>,
    /// Compiled routes.
    pub router: Router,
    /// Pools, indexed by [`crate::router::Route::pool`].
    pub pools: Vec<Pool>,
    /// Rate-limit zones, indexed by [`crate::router::Route::zones`].
    pub zones: Vec<Zone>,
    /// The access log, when configured.
    pub access_log: Option<Arc<crate::access_log::AccessLog>>,
    /// Answers by route and status class, indexed by [`crate::router::Route::index`].
    pub route_metrics: Vec<[prometheus::IntCounter; 5]>,
}

/// One upstream pool.
#[derive(Debug)]
pub struct Pool {
    /// The pool's name.
    pub name: String,
    /// Servers used while any is available.
    pub primary: Tier,
    /// Servers used only when no primary is available.
    pub backup: Option<Tier>,
    /// What consistent_hash hashes; `None` for other strategies.
    pub hash_key: Option<HashKey>,
    /// Longest wait between two reads of an answer, from the end of the request.
    pub read_timeout: Duration,
    /// Longest a write of the request to a server may stay blocked.
    pub send_timeout: Duration,
    /// What a server's latency sample times (to the head, or to the body's last byte).
    pub least_time: crate::config::LeastTimeMode,
    /// Most attempts one request makes (1 + retries).
    pub max_attempts: usize,
    /// Failures that count and may be retried.
    pub retry_on: RetryOn,
    /// The pooled client for this pool's connect settings.
    pub client: UpstreamClient,
    /// Clients for `https://` servers found under a name, which verify that name ([`Server::named_client`]).
    pub named_clients: Vec<UpstreamClient>,
    /// HTTP/1.1 or HTTP/2 to the servers.
    pub protocol: crate::config::UpstreamProtocol,
    /// TLS settings for `https://` servers (probes use them too).
    pub tls: Option<Arc<UpstreamTls>>,
    /// Active probes, when configured.
    pub health_check: Option<Arc<HealthCheckConfig>>,
    /// What to do when no server can be picked; `None` answers 502 (nginx).
    pub all_unhealthy: Option<AllUnhealthy>,
    /// Where requests wait when every server is at its `max_conns`; `None` when no server has one.
    pub queue: Option<Arc<crate::upstream::WaitQueue>>,
    /// Requests that may wait in the queue (0: none, a full pool answers 503 at once).
    pub queue_size: usize,
    /// Longest wait in the queue.
    pub queue_timeout: Duration,
    /// Slow-start ramp for recovered and added servers, in ms (0 = off; hash strategies never ramp).
    pub slow_start_ms: u64,
    /// Servers with `drain = true`: no new requests, listed for status.
    pub drained: Vec<Server>,
    /// Request and response buffering.
    pub buffers: Arc<crate::message::spool::BufferSettings>,
    /// Metric handles for the pool.
    pub metrics: PoolMetrics,
    /// All metrics, for rare events (transitions).
    pub all_metrics: Arc<Metrics>,
}

/// Servers of one kind (primary or backup) and their balancer.
#[derive(Debug)]
pub struct Tier {
    /// The servers.
    pub servers: Vec<Server>,
    /// The strategy over them.
    pub balancer: Box<dyn Balancer>,
}

/// What a zone keeps across snapshots: its buckets, its delayed-request count, its Redis connection.
#[derive(Debug, Clone)]
pub struct ZoneShared {
    /// Local buckets.
    pub store: Arc<Store>,
    /// Requests held back now.
    pub delayed: Arc<AtomicUsize>,
    /// The Redis backend, when the zone uses one.
    pub redis: Option<Arc<crate::ratelimit::redis::RedisBackend>>,
}

/// Which tier a pick came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierKind {
    /// Primary servers.
    Primary,
    /// Backup servers.
    Backup,
}

impl Pool {
    /// The client that speaks to `server`.
    #[inline]
    pub fn client_for(&self, server: &Server) -> &UpstreamClient {
        server
            .named_client
            .and_then(|i| self.named_clients.get(i))
            .unwrap_or(&self.client)
    }

    /// Every server that takes traffic: primaries, then backups (not those drained by config).
    pub fn servers(&self) -> impl Iterator<Item = &Server> {
        self.primary
            .servers
            .iter()
            .chain(self.backup.iter().flat_map(|tier| tier.servers.iter()))
    }

    /// The tier of `kind`.
    pub fn tier(&self, kind: TierKind) -> Option<&Tier> {
        match kind {
            TierKind::Primary => Some(&self.primary),
            TierKind::Backup => self.backup.as_ref(),
        }
    }
}

/// The servers of a tier one request has tried, by index: inline for the first four (a request
/// rarely tries more), so a request's first pick allocates nothing.
pub type Tried = smallvec::SmallVec<[usize; 4]>;

impl Tier {
    /// Picks and claims a server, skipping `tried` and servers whose probe another request holds.
    /// Claimed-away servers are added to `tried` so a retry does not loop on them.
    pub fn pick(&self, ctx: PickContext<'_>, tried: &mut Tried) -> Option<usize> {
        for _ in 0..=self.servers.len() {
            let ctx = PickContext {
                tried: tried.as_slice(),
                ..ctx
            };
            let index = self.balancer.pick(&self.servers, &ctx)?;
            if self.servers[index].claim(ctx.now_ms) {
                return Some(index);
            }
            tried.push(index);
        }
        None
    }

    /// Fail-open pick: any server not drained and not yet tried, health ignored, in rotation.
    pub fn pick_any(&self, turn: usize, tried: &[usize]) -> Option<usize> {
        let n = self.servers.len();
        (0..n)
            .map(|step| (turn + step) % n.max(1))
            .find(|&i| !tried.contains(&i) && !self.servers[i].state.is_drained())
    }
}

impl Snapshot {
    /// Builds a snapshot; `client_for` hands out pooled clients so pools stay warm across snapshots.
    /// `first` is the proxy's first snapshot: servers it adds are not slow-started.
    pub fn build(
        config: Arc<Config>,
        registry: &Registry,
        client_for: impl Fn(ClientSettings, Option<&UpstreamTls>, Option<&str>) -> UpstreamClient,
        found: impl Fn(&Discover) -> Arc<[Found]>,
        zone_state_for: impl Fn(&RateLimitConfig) -> ZoneShared,
        metrics: &Arc<Metrics>,
        first: bool,
    ) -> Snapshot {
        let names: Vec<&String> = config.upstreams.keys().collect();
        let zone_names: Vec<&String> = config.rate_limits.keys().collect();
        let zones = config
            .rate_limits
            .values()
            .map(|zone| {
                let shared = zone_state_for(zone);
                Zone::new(
                    zone,
                    shared.store,
                    shared.delayed,
                    shared.redis,
                    metrics.zone(&zone.name),
                )
            })
            .collect();
        let pools = config
            .upstreams
            .values()
            .map(|upstream| {
                build_pool(
                    upstream,
                    registry,
                    &client_for,
                    &found,
                    metrics,
                    first,
                    &config.global.temp_path,
                )
            })
            .collect();
        let router = Router::new(
            &config.routes,
            |name| names.iter().position(|n| *n == name).unwrap_or(0),
            |name| zone_names.iter().position(|n| *n == name).unwrap_or(0),
            config.global.max_body_size,
            config.compression.enabled,
        );
        Snapshot {
            config: Arc::clone(&config),
            router,
            pools,
            zones,
            access_log: None,
            route_metrics: config
                .routes
                .iter()
                .map(|route| {
                    let host = route.host.as_deref().unwrap_or("*");
                    let exact = if route.exact { "=" } else { "" };
                    metrics.route(&format!("{host}{exact}{}", route.path))
                })
                .collect(),
        }
    }
}

impl Snapshot {
    /// Gives the cached routes their zones. Zones live in `caches`, not in the snapshot: a reload that
    /// keeps a zone keeps its entries.
    pub fn attach_caches(&mut self, caches: &crate::cache::Caches, metrics: &Metrics) {
        let config = Arc::clone(&self.config);
        let zones: std::collections::HashMap<&str, _> = config
            .caches
            .values()
            .map(|zone| (zone.name.as_str(), caches.zone_for(zone, metrics)))
            .collect();
        caches.keep_only(&config.caches.keys().collect::<Vec<_>>());
        self.router.attach_caches(|index| {
            let settings = config.routes.get(index)?.cache.as_ref()?;
            let zone = zones.get(settings.zone.as_str())?;
            Some(caches.route(Arc::clone(zone), settings))
        });
    }
}

/// The servers of `upstream` now: its entries, each `resolve = true` entry replaced by what its name has.
fn expand(
    upstream: &UpstreamConfig,
    found: &impl Fn(&Discover) -> Arc<[Found]>,
) -> Vec<ServerConfig> {
    let mut servers = Vec::with_capacity(upstream.servers.len());
    for config in &upstream.servers {
        let Some(discover) = &config.discover else {
            servers.push(config.clone());
            continue;
        };
        for found in found(discover).iter() {
            let Ok(addr) = found.addr.to_string().parse() else {
                continue;
            };
            // The same address under two entries is one server (the first entry's settings).
            if servers
                .iter()
                .any(|s: &ServerConfig| s.addr == addr && s.tls == config.tls)
            {
                continue;
            }
            servers.push(ServerConfig {
                addr,
                discover: None,
                weight: found.weight.unwrap_or(config.weight),
                backup: config.backup || found.backup,
                ..config.clone()
            });
        }
    }
    servers
}

fn build_pool(
    upstream: &UpstreamConfig,
    registry: &Registry,
    client_for: &impl Fn(ClientSettings, Option<&UpstreamTls>, Option<&str>) -> UpstreamClient,
    found: &impl Fn(&Discover) -> Arc<[Found]>,
    metrics: &Arc<Metrics>,
    first: bool,
    temp_dir: &Option<std::path::PathBuf>,
) -> Pool {
    let configured = expand(upstream, found);
    // nginx: with a single server, max_fails and fail_timeout are ignored; it is never marked down.
    let single = configured.len() == 1;
    let settings = ClientSettings {
        connect_timeout: upstream.connect_timeout,
        keepalive_timeout: upstream.keepalive_timeout,
        keepalive: upstream.keepalive,
        protocol: upstream.protocol,
        tls: upstream.tls.as_ref().map(|tls| tls.fingerprint),
    };
    // An `https://` server found under a name is connected to by address and verified by that name.
    let mut named_clients: Vec<(Arc<str>, UpstreamClient)> = Vec::new();
    let named_tls = upstream
        .tls
        .as_ref()
        .is_some_and(|tls| tls.server_name.is_none());
    let slow_start_ms = match upstream.strategy {
        Strategy::RoundRobin | Strategy::Weighted | Strategy::LeastConn | Strategy::LeastTime => {
            millis(upstream.slow_start)
        }
        Strategy::IpHash | Strategy::ConsistentHash => 0,
    };
    let now = now_ms();
    let server = |config: &crate::config::ServerConfig| {
        // Identity is address and scheme: the same host:port in clear and over TLS are two servers.
        let identity = if config.tls {
            format!("https://{}", config.addr)
        } else {
            config.addr.to_string()
        };
        let (state, is_new) = registry.state_for(&identity);
        crate::upstream::prepare_state(&state, upstream.health_check.as_ref(), is_new);
        state.set_max_conns(config.max_conns);
        if is_new && !first {
            state.begin_slow_start(now, slow_start_ms);
        }
        let name: Option<Arc<str>> = config.name.as_deref().map(Arc::from);
        let named_client = match &name {
            Some(name) if config.tls && named_tls => {
                Some(match named_clients.iter().position(|(n, _)| n == name) {
                    Some(i) => i,
                    None => {
                        let client = client_for(settings, upstream.tls.as_deref(), Some(name));
                        named_clients.push((Arc::clone(name), client));
                        named_clients.len() - 1
                    }
                })
            }
            _ => None,
        };
        Server {
            addr: config.addr.clone(),
            name,
            named_client,
            scheme: if config.tls {
                http::uri::Scheme::HTTPS
            } else {
                http::uri::Scheme::HTTP
            },
            weight: config.weight,
            max_fails: if single { 0 } else { config.max_fails },
            fail_timeout_ms: millis(config.fail_timeout),
            backup: config.backup,
            id: config.id.as_deref().map(Arc::from),
            state,
            metrics: metrics.server(&upstream.name, config.addr.as_str()),
        }
    };
    let options = BalancerOptions {
        ip_hash_prefix: upstream.ip_hash_prefix,
    };
    let tier = |servers: Vec<Server>| Tier {
        balancer: balance::build(upstream.strategy, &servers, options),
        servers,
    };
    let mut server = server;
    let mut serving = |backup: bool| -> Vec<Server> {
        configured
            .iter()
            .filter(|s| s.backup == backup && !s.drain)
            .map(&mut server)
            .collect()
    };
    let primaries = serving(false);
    let backups = serving(true);
    let drained: Vec<Server> = configured
        .iter()
        .filter(|s| s.drain)
        .map(&mut server)
        .collect();
    let total = primaries.len() + backups.len();
    let retries = upstream
        .retries
        .map_or(total.saturating_sub(1), |r| r as usize);
    Pool {
        name: upstream.name.clone(),
        primary: tier(primaries),
        backup: (!backups.is_empty()).then(|| tier(backups)),
        hash_key: (upstream.strategy == Strategy::ConsistentHash)
            .then(|| upstream.hash_key.clone()),
        read_timeout: upstream.read_timeout,
        send_timeout: upstream.send_timeout,
        least_time: upstream.least_time,
        max_attempts: 1 + retries,
        retry_on: upstream.retry_on,
        client: client_for(settings, upstream.tls.as_deref(), None),
        named_clients: named_clients
            .into_iter()
            .map(|(_, client)| client)
            .collect(),
        protocol: upstream.protocol,
        tls: upstream.tls.clone(),
        health_check: upstream.health_check.clone().map(Arc::new),
        all_unhealthy: upstream.all_unhealthy.or(upstream
            .health_check
            .as_ref()
            .map(|_| AllUnhealthy::FailClosed)),
        slow_start_ms,
        drained,
        queue: upstream
            .servers
            .iter()
            .any(|s| s.max_conns > 0)
            .then(|| registry.queue_for(&upstream.name)),
        queue_size: upstream.queue,
        queue_timeout: upstream.queue_timeout,
        buffers: Arc::new(crate::message::spool::BufferSettings {
            request: upstream.request_buffering,
            response: upstream.buffering,
            buffer_size: upstream.buffer_size,
            max_temp_file_size: upstream.max_temp_file_size,
            temp_dir: temp_dir.clone(),
            request_gauges: metrics.buffers().request.clone(),
            response_gauges: metrics.buffers().response.clone(),
        }),
        metrics: metrics.pool(&upstream.name),
        all_metrics: Arc::clone(metrics),
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
