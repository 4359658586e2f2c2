//! One cache zone: its entries (an LRU under one short-held lock), the fills in progress, its metrics.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName};
use http::StatusCode;
use parking_lot::Mutex;
use tokio::sync::watch;

use super::key;
use super::policy::Freshness;
use super::share::{Progress, Watch};
use super::store::{Lru, Weighed};
use super::CacheStatus;
use crate::metrics::CacheZoneMetrics;

/// Bytes an entry costs besides its body, key and header bytes (the map slots, the policy).
const ENTRY_OVERHEAD: u64 = 512;

/// A stored answer.
#[derive(Debug)]
pub struct Entry {
    /// Its status.
    pub status: StatusCode,
    /// Its headers (hop-by-hop removed).
    pub headers: HeaderMap,
    /// Its whole body.
    pub body: Bytes,
    /// How long it is fresh, and the policy that computes its age.
    pub freshness: Freshness,
    /// The primary key it was stored under (purge by key).
    pub primary: String,
    /// The request path it answered (purge by prefix).
    pub path: String,
    bytes: u64,
    /// Stored as one variant of several (its primary key has a `Vary` record).
    varies: bool,
}

impl Entry {
    /// An entry for an answer to the request at `path` under `primary`.
    pub fn new(
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        freshness: Freshness,
        primary: String,
        path: String,
    ) -> Self {
        let header_bytes: usize = headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        let bytes =
            (body.len() + header_bytes + 2 * primary.len() + path.len()) as u64 + ENTRY_OVERHEAD;
        Self {
            status,
            headers,
            body,
            freshness,
            primary,
            path,
            bytes,
            varies: false,
        }
    }

    /// Whether it may be served without asking the server at `now`.
    pub fn is_fresh(&self, now: SystemTime) -> bool {
        now < self.freshness.fresh_until
    }
}

impl Weighed for Entry {
    fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[derive(Debug)]
struct Store {
    entries: Lru<Entry>,
    /// Primary key -> the header names its answers vary by (nginx keeps the same in the main entry) and
    /// how many variants are stored, so the record goes with the last of them.
    vary: HashMap<String, (Arc<[HeaderName]>, usize)>,
    /// Primary keys being filled now, each with the channel its waiters watch (closed when it ends).
    filling: HashMap<String, Watch>,
}

impl Store {
    /// Entries are gone: the `Vary` record of their primary key goes with its last variant.
    fn forget(&mut self, gone: &[Arc<Entry>]) {
        for entry in gone.iter().filter(|entry| entry.varies) {
            if let Some(record) = self.vary.get_mut(&entry.primary) {
                record.1 = record.1.saturating_sub(1);
                if record.1 == 0 {
                    self.vary.remove(&entry.primary);
                }
            }
        }
    }
}

/// A cache zone, kept across reloads while its name stays in the config.
#[derive(Debug)]
pub struct Zone {
    /// The zone's name.
    pub name: String,
    max_entry_size: std::sync::atomic::AtomicU64,
    /// Counts purges: a fill that began before one is not stored (it may hold what was purged).
    purges: std::sync::atomic::AtomicU64,
    store: Mutex<Store>,
    metrics: CacheZoneMetrics,
}

/// The right to fill one primary key, and the channel its waiters watch; they are released when it is
/// dropped.
#[derive(Debug)]
pub struct FillLock {
    zone: Arc<Zone>,
    primary: String,
    progress: watch::Sender<Progress>,
}

impl FillLock {
    /// What the waiters see of this fill.
    pub(super) fn progress(&self) -> &watch::Sender<Progress> {
        &self.progress
    }
}

impl Drop for FillLock {
    fn drop(&mut self) {
        // The sender goes with the lock, which closes the channel: every waiter's `changed()` returns.
        let receiver = self.zone.store.lock().filling.remove(&self.primary);
        drop(receiver);
    }
}

impl Zone {
    /// An empty zone.
    pub fn new(name: &str, max_size: u64, max_entry_size: u64, metrics: CacheZoneMetrics) -> Self {
        Self {
            name: name.to_string(),
            max_entry_size: max_entry_size.into(),
            purges: 0.into(),
            store: Mutex::new(Store {
                entries: Lru::new(max_size),
                vary: HashMap::new(),
                filling: HashMap::new(),
            }),
            metrics,
        }
    }

    /// Applies a reloaded zone's sizes; entries over the new bound are evicted.
    pub fn resize(&self, max_size: u64, max_entry_size: u64) {
        self.max_entry_size
            .store(max_entry_size, std::sync::atomic::Ordering::Relaxed);
        let mut store = self.store.lock();
        let evicted = store.entries.set_max_bytes(max_size);
        store.forget(&evicted);
        self.publish(&store, evicted.len());
    }

    /// The most bytes the zone holds (`max_size`).
    pub fn max_size(&self) -> u64 {
        self.store.lock().entries.max_bytes()
    }

    /// Answers with longer bodies pass through unstored.
    pub fn max_entry_size(&self) -> u64 {
        self.max_entry_size
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The entry the request with `headers` selects under `primary`.
    pub fn lookup(&self, primary: &str, headers: &HeaderMap) -> Option<Arc<Entry>> {
        let mut store = self.store.lock();
        let vary = store.vary.get(primary).map(|(names, _)| Arc::clone(names));
        let key = key::variant(primary, vary.as_deref().unwrap_or(&[]), headers);
        store.entries.get(&key)
    }

    /// How many purges there have been.
    pub fn purges(&self) -> u64 {
        self.purges.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stores `entry`, the answer to a request with `request_headers`, varying by `vary`.
    pub fn insert(&self, entry: Entry, vary: Vec<HeaderName>, request_headers: &HeaderMap) {
        self.insert_unless_purged(entry, vary, request_headers, None);
    }

    /// Stores `entry` as [`Zone::insert`] does, unless a purge came after `purges` were counted.
    pub fn insert_unless_purged(
        &self,
        mut entry: Entry,
        vary: Vec<HeaderName>,
        request_headers: &HeaderMap,
        purges: Option<u64>,
    ) {
        let key = key::variant(&entry.primary, &vary, request_headers).into_owned();
        entry.varies = !vary.is_empty();
        let primary = entry.primary.clone();
        let mut store = self.store.lock();
        // Checked under the lock that purges take: a purge is either seen here or comes after.
        if purges.is_some_and(|before| before != self.purges()) {
            return;
        }
        let (replaced, evicted) = store.entries.insert(&key, Arc::new(entry));
        store.forget(replaced.as_slice());
        store.forget(&evicted);
        if store.entries.contains(&key) {
            if vary.is_empty() {
                store.vary.remove(&primary);
            } else {
                // A new Vary list replaces the old one; variants stored under the old stay until evicted.
                let record = store
                    .vary
                    .entry(primary)
                    .or_insert_with(|| (Arc::from(vary.as_slice()), 0));
                if *record.0 != *vary {
                    record.0 = vary.into();
                }
                record.1 += 1;
            }
        }
        self.publish(&store, evicted.len());
    }

    /// The lock to fill `primary`, or (when another request holds it) a receiver that changes when
    /// that fill ends.
    pub fn try_fill(self: &Arc<Self>, primary: &str) -> Result<FillLock, Watch> {
        let mut store = self.store.lock();
        if let Some(receiver) = store.filling.get(primary) {
            return Err(receiver.clone());
        }
        let (progress, receiver) = watch::channel(Progress::default());
        store.filling.insert(primary.to_string(), receiver);
        Ok(FillLock {
            zone: Arc::clone(self),
            primary: primary.to_string(),
            progress,
        })
    }

    /// Removes every variant stored under primary key `key`; how many. A key may be written as a URL
    /// (`http://host/path?query`), and a key that starts with `/` names that path and query under every
    /// host (the part of a key after the host).
    pub fn purge_key(&self, key: &str) -> usize {
        let key = key
            .strip_prefix("http://")
            .or_else(|| key.strip_prefix("https://"))
            .unwrap_or(key);
        let any_host = key.starts_with('/');
        let mut store = self.store.lock();
        self.purges
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let removed = store.entries.remove_where(|_, entry| {
            entry.primary == key
                || (any_host
                    && entry
                        .primary
                        .find('/')
                        .is_some_and(|at| &entry.primary[at..] == key))
        });
        store.forget(&removed);
        self.publish(&store, 0);
        removed.len()
    }

    /// Removes every entry whose request path starts with `prefix`; how many.
    pub fn purge_prefix(&self, prefix: &str) -> usize {
        let mut store = self.store.lock();
        self.purges
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let removed = store
            .entries
            .remove_where(|_, entry| entry.path.starts_with(prefix));
        store.forget(&removed);
        self.publish(&store, 0);
        removed.len()
    }

    /// Counts an answer by its cache status.
    pub fn count(&self, status: CacheStatus) {
        self.metrics.requests[status as usize].inc();
    }

    /// Bytes and entries held now.
    pub fn usage(&self) -> (u64, usize) {
        let store = self.store.lock();
        (store.entries.bytes(), store.entries.len())
    }

    fn publish(&self, store: &Store, evicted: usize) {
        self.metrics
            .bytes
            .set(i64::try_from(store.entries.bytes()).unwrap_or(i64::MAX));
        self.metrics
            .entries
            .set(i64::try_from(store.entries.len()).unwrap_or(i64::MAX));
        if evicted > 0 {
            self.metrics.evictions.inc_by(evicted as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::policy;
    use http::header::{self, HeaderValue};
    use http::Request;
    use std::time::Duration;

    fn freshness() -> Freshness {
        let route = crate::config::RouteCacheConfig {
            zone: "z".into(),
            valid: vec![(None, Duration::from_secs(60))],
            key: Vec::new(),
            lock: Duration::ZERO,
            use_stale: crate::config::UseStale::default(),
            background_update: false,
        };
        let request = Request::get("/").body(()).expect("a request");
        policy::freshness(
            &route,
            &request,
            StatusCode::OK,
            &HeaderMap::new(),
            SystemTime::now(),
        )
        .expect("storable under cache_valid")
    }

    fn language(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT_LANGUAGE, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn the_vary_record_goes_with_the_last_variant() {
        let zone = Zone::new(
            "z",
            1 << 20,
            1 << 20,
            crate::metrics::Metrics::default().cache_zone("z", &["HIT"]),
        );
        let entry = |body: &'static str| {
            Entry::new(
                StatusCode::OK,
                HeaderMap::new(),
                Bytes::from_static(body.as_bytes()),
                freshness(),
                "k".into(),
                "/".into(),
            )
        };
        for lang in ["en", "de"] {
            zone.insert(entry(lang), vec![header::ACCEPT_LANGUAGE], &language(lang));
        }
        let found = zone.lookup("k", &language("de")).expect("the de variant");
        assert_eq!(found.body, "de");
        assert_eq!(zone.store.lock().vary["k"].1, 2);
        assert_eq!(zone.purge_prefix("/"), 2);
        assert!(zone.store.lock().vary.is_empty());
        assert_eq!(zone.usage(), (0, 0));
    }
}
