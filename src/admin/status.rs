//! The JSON documents of the admin API: `/status` from the live snapshot, errors.

use serde_json::{json, Value};

use crate::clock::now_ms;
use crate::live::Live;
use crate::snapshot::{Pool, Snapshot};
use crate::upstream::Server;

/// `GET /status`: every pool and server with weight, health, in-flight and probe results.
pub fn status(live: &Live) -> Value {
    let snapshot = live.snapshot();
    let (reloads_ok, reloads_failed) = live.reload_counts();
    json!({
        "pools": snapshot.pools.iter().map(pool).collect::<Vec<_>>(),
        "zones": zones(&snapshot),
        "reloads": { "ok": reloads_ok, "failed": reloads_failed },
        "tunnels": live.tunnels().open(),
        "buffers": {
            "request": buffers(&live.metrics().buffers().request),
            "response": buffers(&live.metrics().buffers().response),
        },
    })
}

/// What request or response buffering holds now.
fn buffers(gauges: &crate::metrics::BufferGauges) -> Value {
    json!({
        "memory_bytes": gauges.memory_bytes.get(),
        "temp_file_bytes": gauges.temp_file_bytes.get(),
        "temp_files": gauges.temp_files.get(),
    })
}

fn pool(pool: &Pool) -> Value {
    let now = now_ms();
    let servers: Vec<Value> = pool
        .servers()
        .map(|s| server(s, now, false))
        .chain(pool.drained.iter().map(|s| server(s, now, true)))
        .collect();
    json!({
        "name": pool.name,
        "health_check": pool.health_check.is_some(),
        "servers": servers,
    })
}

fn server(server: &Server, now: u64, drained_by_config: bool) -> Value {
    let state = &server.state;
    let probe = state
        .last_probe()
        .map(|(ok, latency)| json!({ "ok": ok, "latency_ms": latency.as_secs_f64() * 1000.0 }));
    json!({
        "addr": server.addr.as_str(),
        "name": server.name.as_deref(),
        "weight": server.weight,
        "backup": server.backup,
        "healthy": state.healthy(now) && !drained_by_config,
        "active_down": state.is_active_down(),
        "passive_down": state.is_passive_down(now),
        "drained": drained_by_config || state.is_drained(),
        "in_flight": state.in_flight(),
        "passive_fails": state.passive().fails(),
        "last_probe": probe,
        "latency_ms": state.latency().estimate_us(now).map(|us| us / 1000.0),
        "requests": server.metrics.requests_total(),
        "errors": server.metrics.errors_total(),
    })
}

fn zones(snapshot: &Snapshot) -> Vec<Value> {
    snapshot
        .zones
        .iter()
        .map(|zone| {
            json!({
                "name": zone.name,
                "backend": if zone.redis.is_some() { "redis" } else { "local" },
                "keys": zone.store.len(),
            })
        })
        .collect()
}

/// `{"error": message}`.
pub fn error(message: &str) -> Value {
    json!({ "error": message })
}
