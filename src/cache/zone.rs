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
    /// Primary key -> the header names its answers vary by (nginx keeps the same in the main entry).
    vary: HashMap<String, Arc<[HeaderName]>>,
    /// Primary keys being filled now, each with the channel its waiters watch (closed when it ends).
    filling: HashMap<String, watch::Sender<()>>,
}

/// A cache zone, kept across reloads while its name stays in the config.
#[derive(Debug)]
pub struct Zone {
    /// The zone's name.
    pub name: String,
    max_entry_size: std::sync::atomic::AtomicU64,
    store: Mutex<Store>,
    metrics: CacheZoneMetrics,
}

/// The right to fill one primary key; waiters are released when it is dropped.
#[derive(Debug)]
pub struct FillLock {
    zone: Arc<Zone>,
    primary: String,
}

impl Drop for FillLock {
    fn drop(&mut self) {
        // Dropping the sender closes the channel: every waiter's `changed()` returns.
        let sender = self.zone.store.lock().filling.remove(&self.primary);
        drop(sender);
    }
}

impl Zone {
    /// An empty zone.
    pub fn new(name: &str, max_size: u64, max_entry_size: u64, metrics: CacheZoneMetrics) -> Self {
        Self {
            name: name.to_string(),
            max_entry_size: max_entry_size.into(),
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
        self.publish(&store, evicted);
    }

    /// Answers with longer bodies pass through unstored.
    pub fn max_entry_size(&self) -> u64 {
        self.max_entry_size
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The entry the request with `headers` selects under `primary`.
    pub fn lookup(&self, primary: &str, headers: &HeaderMap) -> Option<Arc<Entry>> {
        let mut store = self.store.lock();
        let vary = store.vary.get(primary).cloned();
        let key = key::variant(primary, vary.as_deref().unwrap_or(&[]), headers);
        store.entries.get(&key)
    }

    /// Stores `entry`, the answer to a request with `request_headers`, varying by `vary`.
    pub fn insert(&self, entry: Entry, vary: Vec<HeaderName>, request_headers: &HeaderMap) {
        let key = key::variant(&entry.primary, &vary, request_headers);
        let mut store = self.store.lock();
        if vary.is_empty() {
            store.vary.remove(&entry.primary);
        } else {
            store.vary.insert(entry.primary.clone(), vary.into());
        }
        let evicted = store.entries.insert(&key, Arc::new(entry));
        self.publish(&store, evicted);
    }

    /// The lock to fill `primary`, or (when another request holds it) a receiver that changes when
    /// that fill ends.
    pub fn try_fill(self: &Arc<Self>, primary: &str) -> Result<FillLock, watch::Receiver<()>> {
        let mut store = self.store.lock();
        if let Some(sender) = store.filling.get(primary) {
            return Err(sender.subscribe());
        }
        store
            .filling
            .insert(primary.to_string(), watch::Sender::new(()));
        Ok(FillLock {
            zone: Arc::clone(self),
            primary: primary.to_string(),
        })
    }

    /// Removes every variant stored under primary key `key`; how many.
    pub fn purge_key(&self, key: &str) -> usize {
        let mut store = self.store.lock();
        store.vary.remove(key);
        let removed = store.entries.remove_where(|_, entry| entry.primary == key);
        self.publish(&store, 0);
        removed
    }

    /// Removes every entry whose request path starts with `prefix`; how many.
    pub fn purge_prefix(&self, prefix: &str) -> usize {
        let mut store = self.store.lock();
        let removed = store
            .entries
            .remove_where(|_, entry| entry.path.starts_with(prefix));
        self.publish(&store, 0);
        removed
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
