//! The response cache (nginx `proxy_cache`): memory zones kept across reloads, looked up before a request
//! is forwarded and filled from the answer while it streams to the client.

mod fill;
pub mod key;
mod lookup;
pub mod policy;
mod serve;
pub mod share;
mod store;
mod zone;

use std::collections::HashMap;
use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use parking_lot::Mutex;
use tokio_util::task::TaskTracker;

pub use fill::{Fill, FillHead};
pub use lookup::{plan, Pending, Plan};
pub use serve::{entry_answer, follow_answer};
pub use zone::{Entry, FillLock, Zone};

use crate::config::{CacheZoneConfig, RouteCacheConfig};
use crate::metrics::Metrics;

/// The header every answer of a cached route carries (nginx's `$upstream_cache_status`).
pub static X_CACHE_STATUS: HeaderName = HeaderName::from_static("x-cache-status");

/// How an answer of a cached route came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from a fresh entry.
    Hit = 0,
    /// No entry: the server answered.
    Miss = 1,
    /// The entry had expired: the server answered.
    Expired = 2,
    /// The server failed: an expired entry was served instead.
    Stale = 3,
    /// An expired entry was served while another request refreshes it.
    Updating = 4,
    /// The expired entry was confirmed by the server (304) and served.
    Revalidated = 5,
    /// The cache was not used for this request.
    Bypass = 6,
}

impl CacheStatus {
    /// Every status, in the order of their numbers.
    pub const ALL: [CacheStatus; 7] = [
        CacheStatus::Hit,
        CacheStatus::Miss,
        CacheStatus::Expired,
        CacheStatus::Stale,
        CacheStatus::Updating,
        CacheStatus::Revalidated,
        CacheStatus::Bypass,
    ];

    /// The name nginx gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Expired => "EXPIRED",
            CacheStatus::Stale => "STALE",
            CacheStatus::Updating => "UPDATING",
            CacheStatus::Revalidated => "REVALIDATED",
            CacheStatus::Bypass => "BYPASS",
        }
    }

    /// The `X-Cache-Status` value.
    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(self.as_str())
    }
}

/// A route's cache: its zone and settings, built with the snapshot.
#[derive(Debug)]
pub struct RouteCache {
    /// The zone (shared with other routes and kept across reloads).
    pub zone: Arc<Zone>,
    /// The route's settings.
    pub config: RouteCacheConfig,
    /// Where background refreshes run.
    pub background: TaskTracker,
}

/// Every zone by name: state that outlives snapshots, as rate-limit buckets do.
#[derive(Debug, Default)]
pub struct Caches {
    zones: Mutex<HashMap<String, Arc<Zone>>>,
    background: TaskTracker,
}

impl Caches {
    /// The zone for `config`: the running one under that name (resized to it), else a new one.
    pub fn zone_for(&self, config: &CacheZoneConfig, metrics: &Metrics) -> Arc<Zone> {
        let mut zones = self.zones.lock();
        if let Some(zone) = zones.get(&config.name) {
            zone.resize(config.max_size, config.max_entry_size);
            return Arc::clone(zone);
        }
        let zone = Arc::new(Zone::new(
            &config.name,
            config.max_size,
            config.max_entry_size,
            metrics.cache_zone(&config.name, &CacheStatus::ALL.map(CacheStatus::as_str)),
        ));
        zones.insert(config.name.clone(), Arc::clone(&zone));
        zone
    }

    /// Drops the zones no longer configured (their entries go with the last request using them).
    pub fn keep_only(&self, names: &[&String]) {
        self.zones.lock().retain(|name, _| names.contains(&name));
    }

    /// The zone named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Zone>> {
        self.zones.lock().get(name).cloned()
    }

    /// Each zone's name, bytes and entries now, by name.
    pub fn usage(&self) -> Vec<(String, u64, usize)> {
        let zones: Vec<Arc<Zone>> = self.zones.lock().values().cloned().collect();
        let mut usage: Vec<_> = zones
            .iter()
            .map(|zone| {
                let (bytes, entries) = zone.usage();
                (zone.name.clone(), bytes, entries)
            })
            .collect();
        usage.sort();
        usage
    }

    /// Waits for the background refreshes under way (each is bounded by its pool's timeouts); no new
    /// one starts after this is called.
    pub async fn drain(&self) {
        self.background.close();
        self.background.wait().await;
    }

    /// The route cache for a route with `config` in `zone`.
    pub fn route(&self, zone: Arc<Zone>, config: &RouteCacheConfig) -> Arc<RouteCache> {
        Arc::new(RouteCache {
            zone,
            config: config.clone(),
            background: self.background.clone(),
        })
    }
}
