//! The immutable snapshot a request reads once: routes, pools with their balancers, and limits.

use std::sync::Arc;
use std::time::Duration;

use crate::balance::{self, Balancer, BalancerOptions, PickContext};
use crate::config::{Config, HashKey, RetryOn, Strategy, UpstreamConfig};
use crate::proxy::client::{ClientSettings, UpstreamClient};
use crate::proxy::router::Router;
use crate::upstream::{Registry, Server};

/// Everything a request needs to decide, built off the hot path and published with one swap.
#[derive(Debug)]
pub struct Snapshot {
    /// The config this snapshot was built from.
    pub config: Arc<Config>,
    /// Compiled routes.
    pub router: Router,
    /// Pools, indexed by [`crate::proxy::router::Route::pool`].
    pub pools: Vec<Pool>,
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
    /// Time to first response byte.
    pub read_timeout: Duration,
    /// Most attempts one request makes (1 + retries).
    pub max_attempts: usize,
    /// Failures that count and may be retried.
    pub retry_on: RetryOn,
    /// The pooled client for this pool's connect settings.
    pub client: UpstreamClient,
}

/// Servers of one kind (primary or backup) and their balancer.
#[derive(Debug)]
pub struct Tier {
    /// The servers.
    pub servers: Vec<Server>,
    /// The strategy over them.
    pub balancer: Box<dyn Balancer>,
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
    /// The tier of `kind`.
    pub fn tier(&self, kind: TierKind) -> Option<&Tier> {
        match kind {
            TierKind::Primary => Some(&self.primary),
            TierKind::Backup => self.backup.as_ref(),
        }
    }
}

impl Tier {
    /// Picks and claims a server, skipping `tried` and servers whose probe another request holds.
    /// Claimed-away servers are added to `tried` so a retry does not loop on them.
    pub fn pick(&self, ctx: PickContext<'_>, tried: &mut Vec<usize>) -> Option<usize> {
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
}

impl Snapshot {
    /// Builds a snapshot; `client_for` hands out pooled clients so pools stay warm across snapshots.
    pub fn build(
        config: Arc<Config>,
        registry: &Registry,
        client_for: impl Fn(ClientSettings) -> UpstreamClient,
    ) -> Snapshot {
        let names: Vec<&String> = config.upstreams.keys().collect();
        let pools = config
            .upstreams
            .values()
            .map(|upstream| build_pool(upstream, registry, &client_for))
            .collect();
        let router = Router::new(
            &config.routes,
            |name| names.iter().position(|n| *n == name).unwrap_or(0),
            config.global.max_body_size,
        );
        Snapshot {
            config: Arc::clone(&config),
            router,
            pools,
        }
    }
}

fn build_pool(
    upstream: &UpstreamConfig,
    registry: &Registry,
    client_for: &impl Fn(ClientSettings) -> UpstreamClient,
) -> Pool {
    // nginx: with a single server, max_fails and fail_timeout are ignored; it is never marked down.
    let single = upstream.servers.len() == 1;
    let server = |config: &crate::config::ServerConfig| Server {
        addr: config.addr.clone(),
        weight: config.weight,
        max_fails: if single { 0 } else { config.max_fails },
        fail_timeout_ms: u64::try_from(config.fail_timeout.as_millis()).unwrap_or(u64::MAX),
        backup: config.backup,
        state: registry.state_for(config.addr.as_str()),
    };
    let options = BalancerOptions {
        ip_hash_prefix: upstream.ip_hash_prefix,
    };
    let tier = |servers: Vec<Server>| Tier {
        balancer: balance::build(upstream.strategy, &servers, options),
        servers,
    };
    let primaries: Vec<Server> = upstream
        .servers
        .iter()
        .filter(|s| !s.backup)
        .map(server)
        .collect();
    let backups: Vec<Server> = upstream
        .servers
        .iter()
        .filter(|s| s.backup)
        .map(server)
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
        max_attempts: 1 + retries,
        retry_on: upstream.retry_on,
        client: client_for(ClientSettings {
            connect_timeout: upstream.connect_timeout,
            keepalive_timeout: upstream.keepalive_timeout,
            keepalive: upstream.keepalive,
        }),
    }
}
