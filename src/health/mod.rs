//! Active health checks: one background checker owned by the running proxy probes every server of every
//! pool that has a `health_check`, spread over the interval and bounded per pool, and flips a server's
//! health only when its rise/fall counter says so.

mod probe;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{info, warn};

pub use crate::upstream::{Flip, ProbeCounter};
pub use probe::{probe, ProbeResult, Transport};

use crate::clock::now_ms;
use crate::config::HealthCheckConfig;
use crate::live::Live;
use crate::snapshot::Snapshot;
use crate::upstream::ServerState;

/// One server to probe, as the current snapshot describes it.
struct Target {
    pool: String,
    server: String,
    host: String,
    port: u16,
    state: Arc<ServerState>,
    check: Arc<HealthCheckConfig>,
    slow_start_ms: u64,
    limit: Arc<Semaphore>,
    metrics: Arc<crate::metrics::Metrics>,
    transport: Transport,
}

/// Runs until `stop` fires; restarts its probe loops whenever a new snapshot is published (the counters
/// live in the servers' state, so nothing is lost).
pub async fn run_checker(live: Arc<Live>, mut stop: watch::Receiver<bool>) {
    let mut published = live.subscribe();
    loop {
        let mut probes = JoinSet::new();
        for target in targets(&live.snapshot()) {
            probes.spawn(probe_loop(target));
        }
        tokio::select! {
            _ = stop.changed() => {
                probes.shutdown().await;
                return;
            }
            changed = published.changed() => {
                probes.shutdown().await;
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

fn targets(snapshot: &Snapshot) -> Vec<Target> {
    let mut targets = Vec::new();
    for pool in &snapshot.pools {
        let Some(check) = &pool.health_check else {
            continue;
        };
        let limit = Arc::new(Semaphore::new(check.concurrency));
        let http2 = pool.protocol.is_http2();
        let tls_config = pool.tls.as_ref().map(|tls| tls.for_protocol(http2));
        for server in pool.servers() {
            let tls = match (&tls_config, server.scheme == http::uri::Scheme::HTTPS) {
                (Some(config), true) => {
                    probe_server_name(pool, server).map(|name| (Arc::clone(config), name))
                }
                _ => None,
            };
            let port = check.port.or(server.addr.port_u16()).unwrap_or(80);
            // A server found under a name is probed with that name in Host, as its requests carry it.
            let check = match (&server.name, &check.host) {
                (Some(name), None) => Arc::new(HealthCheckConfig {
                    host: Some(format!("{name}:{port}")),
                    ..HealthCheckConfig::clone(check)
                }),
                _ => Arc::clone(check),
            };
            targets.push(Target {
                pool: pool.name.clone(),
                server: server.addr.to_string(),
                host: server.addr.host().to_string(),
                port,
                state: Arc::clone(&server.state),
                check,
                slow_start_ms: pool.slow_start_ms,
                limit: Arc::clone(&limit),
                metrics: Arc::clone(&pool.all_metrics),
                transport: Transport { tls, http2 },
            });
        }
    }
    targets
}

/// The name a probe of an `https://` server sends in SNI and verifies: `tls_server_name`, else the host.
fn probe_server_name(
    pool: &crate::snapshot::Pool,
    server: &crate::upstream::Server,
) -> Option<rustls::pki_types::ServerName<'static>> {
    if let Some(name) = pool.tls.as_ref().and_then(|tls| tls.server_name.clone()) {
        return Some(name);
    }
    let host = match &server.name {
        Some(name) => name,
        None => server
            .addr
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']'),
    };
    rustls::pki_types::ServerName::try_from(host.to_string()).ok()
}

/// Spreads first probes over the interval so a thousand servers are not probed in one burst, then probes
/// every interval with a little jitter.
async fn probe_loop(target: Target) {
    let interval = target.check.interval;
    tokio::time::sleep(jittered(interval, 1.0)).await;
    loop {
        let result = {
            let Ok(_permit) = target.limit.acquire().await else {
                return;
            };
            probe(&target.host, target.port, &target.check, &target.transport).await
        };
        record(&target, &result);
        // Within 5% of the interval either way, so probes started together drift apart.
        tokio::time::sleep(interval.mul_f64(0.95) + jittered(interval, 0.1)).await;
    }
}

/// A random duration in `[0, interval * share)`.
fn jittered(interval: Duration, share: f64) -> Duration {
    interval.mul_f64(share * fastrand::f64())
}

fn record(target: &Target, result: &ProbeResult) {
    let check = &target.check;
    let before = ProbeCounter::unpack(target.state.probe_counter());
    target
        .state
        .set_last_probe(result.failure.is_none(), result.latency);
    let (after, flip) = before.observe(result.failure.is_none(), check.max_fails, check.passes);
    target.state.set_probe_counter(after.pack());
    match flip {
        Flip::Down => {
            target.state.set_active_down(true);
            target
                .metrics
                .transition(&target.pool, &target.server, "down", "active");
            warn!(
                pool = %target.pool,
                server = %target.server,
                reason = result.failure.as_deref().unwrap_or("probe failed"),
                consecutive_fails = after.fails,
                "health check: server unhealthy"
            );
        }
        Flip::Up => {
            target.state.set_active_down(false);
            target
                .metrics
                .transition(&target.pool, &target.server, "up", "active");
            target
                .state
                .begin_slow_start(now_ms(), target.slow_start_ms);
            info!(
                pool = %target.pool,
                server = %target.server,
                consecutive_passes = check.passes,
                latency_ms = result.latency.as_millis() as u64,
                "health check: server healthy again"
            );
        }
        Flip::None => {}
    }
}
