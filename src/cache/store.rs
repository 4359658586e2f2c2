//! The least-recently-used map of one zone: entries by key, their bytes counted against `max_size`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Something with a size in bytes.
pub trait Weighed {
    /// Bytes it counts against the zone's `max_size`.
    fn bytes(&self) -> u64;
}

/// Entries by key, oldest use first in `order`.
#[derive(Debug)]
pub struct Lru<E> {
    entries: HashMap<Arc<str>, Slot<E>>,
    /// Use tick -> key: the first is the least recently used.
    order: BTreeMap<u64, Arc<str>>,
    tick: u64,
    bytes: u64,
    max_bytes: u64,
}

#[derive(Debug)]
struct Slot<E> {
    entry: Arc<E>,
    tick: u64,
}

impl<E: Weighed> Lru<E> {
    /// An empty map holding at most `max_bytes`.
    pub fn new(max_bytes: u64) -> Self {
        Self {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            bytes: 0,
            max_bytes,
        }
    }

    /// Changes the bound (a reload); returns the entries evicted to meet it.
    pub fn set_max_bytes(&mut self, max_bytes: u64) -> Vec<Arc<E>> {
        self.max_bytes = max_bytes;
        self.evict_to(max_bytes)
    }

    /// The entry under `key`, marked as used now.
    pub fn get(&mut self, key: &str) -> Option<Arc<E>> {
        self.tick += 1;
        let tick = self.tick;
        let slot = self.entries.get_mut(key)?;
        if let Some(name) = self.order.remove(&slot.tick) {
            self.order.insert(tick, name);
        }
        slot.tick = tick;
        Some(Arc::clone(&slot.entry))
    }

    /// Stores `entry` under `key`, evicting the least recently used until it fits; returns the entry it
    /// replaced and those it evicted. An entry larger than the whole bound is not stored.
    pub fn insert(&mut self, key: &str, entry: Arc<E>) -> (Option<Arc<E>>, Vec<Arc<E>>) {
        let replaced = self.remove(key);
        let size = entry.bytes();
        if size > self.max_bytes {
            return (replaced, Vec::new());
        }
        let evicted = self.evict_to(self.max_bytes - size);
        self.tick += 1;
        let key: Arc<str> = Arc::from(key);
        self.order.insert(self.tick, Arc::clone(&key));
        self.entries.insert(
            key,
            Slot {
                entry,
                tick: self.tick,
            },
        );
        self.bytes += size;
        (replaced, evicted)
    }

    /// Whether an entry is stored under `key` (without marking it used).
    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// Removes the entry under `key`, returning it.
    pub fn remove(&mut self, key: &str) -> Option<Arc<E>> {
        let slot = self.entries.remove(key)?;
        self.order.remove(&slot.tick);
        self.bytes -= slot.entry.bytes();
        Some(slot.entry)
    }

    /// Removes every entry `purge` picks, returning them.
    pub fn remove_where(&mut self, mut purge: impl FnMut(&str, &E) -> bool) -> Vec<Arc<E>> {
        let keys: Vec<Arc<str>> = self
            .entries
            .iter()
            .filter(|(key, slot)| purge(key, &slot.entry))
            .map(|(key, _)| Arc::clone(key))
            .collect();
        keys.iter().filter_map(|key| self.remove(key)).collect()
    }

    /// The most bytes it holds.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    fn evict_to(&mut self, bytes: u64) -> Vec<Arc<E>> {
        let mut evicted = Vec::new();
        while self.bytes > bytes {
            let Some((_, key)) = self.order.pop_first() else {
                break;
            };
            if let Some(slot) = self.entries.remove(&key) {
                self.bytes -= slot.entry.bytes();
                evicted.push(slot.entry);
            }
        }
        evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Thing(u64);
    impl Weighed for Thing {
        fn bytes(&self) -> u64 {
            self.0
        }
    }

    #[test]
    fn least_recently_used_goes_first() {
        let mut lru = Lru::new(30);
        lru.insert("a", Arc::new(Thing(10)));
        lru.insert("b", Arc::new(Thing(10)));
        lru.insert("c", Arc::new(Thing(10)));
        assert!(lru.get("a").is_some());
        assert_eq!(lru.insert("d", Arc::new(Thing(10))).1.len(), 1);
        assert!(lru.get("b").is_none(), "b was used least recently");
        assert!(lru.get("a").is_some());
        assert_eq!(lru.bytes(), 30);
        assert_eq!(lru.len(), 3);
    }

    #[test]
    fn replacing_counts_bytes_once() {
        let mut lru = Lru::new(100);
        lru.insert("a", Arc::new(Thing(10)));
        lru.insert("a", Arc::new(Thing(20)));
        assert_eq!(lru.bytes(), 20);
        assert!(lru.remove("a").is_some());
        assert_eq!(lru.bytes(), 0);
        assert_eq!(lru.len(), 0);
    }

    #[test]
    fn an_entry_larger_than_the_zone_is_not_stored() {
        let mut lru = Lru::new(10);
        lru.insert("a", Arc::new(Thing(5)));
        assert!(lru.insert("b", Arc::new(Thing(11))).1.is_empty());
        assert!(!lru.contains("b"));
        assert!(lru.get("a").is_some());
        assert!(lru.get("b").is_none());
    }

    #[test]
    fn remove_where_and_a_smaller_bound() {
        let mut lru = Lru::new(100);
        for key in ["x1", "x2", "y1"] {
            lru.insert(key, Arc::new(Thing(10)));
        }
        assert_eq!(lru.remove_where(|key, _| key.starts_with('x')).len(), 2);
        lru.insert("y2", Arc::new(Thing(10)));
        assert_eq!(lru.set_max_bytes(10).len(), 1);
        assert!(lru.get("y2").is_some());
    }
}
