//! The local bucket store: sharded maps (no global lock) from key hash to bucket, bounded by `max_keys`
//! with least-recently-used eviction, swept of buckets that have drained.

use std::collections::HashMap;

use parking_lot::Mutex;

use super::bucket::{self, Bucket, Decision, Limit};

/// Shards: enough that two threads rarely meet on one lock.
const SHARDS: usize = 64;

/// Buckets of one zone.
#[derive(Debug)]
pub struct Store {
    shards: Vec<Mutex<HashMap<u64, Bucket>>>,
    per_shard: usize,
}

impl Store {
    /// A store holding at most about `max_keys` buckets.
    pub fn new(max_keys: usize) -> Store {
        Store {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: max_keys.div_ceil(SHARDS).max(1),
        }
    }

    /// Checks one request for `key` (a hash of the key's value) at `now_ms`.
    pub fn check(&self, key: u64, now_ms: u64, limit: Limit) -> Decision {
        // The low bits pick the shard; the map hashes the whole key again.
        let mut shard = self.shards[(key as usize) % SHARDS].lock();
        let current = shard.get(&key).copied().unwrap_or_default();
        let (decision, next) = bucket::check(current, now_ms, limit);
        if next != current {
            if !shard.contains_key(&key) && shard.len() >= self.per_shard {
                evict_oldest(&mut shard);
            }
            shard.insert(key, next);
        }
        decision
    }

    /// Forgets buckets that have drained completely (they behave exactly like absent ones).
    pub fn sweep(&self, now_ms: u64, limit: Limit) {
        for shard in &self.shards {
            shard
                .lock()
                .retain(|_, bucket| !bucket::is_idle(*bucket, now_ms, limit));
        }
    }

    /// Buckets held.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.lock().len()).sum()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Drops the least recently updated eighth of a full shard, so eviction is paid rarely.
fn evict_oldest(shard: &mut HashMap<u64, Bucket>) {
    let mut ages: Vec<u64> = shard.values().map(|b| b.last_ms).collect();
    let cut = (ages.len() / 8).max(1);
    let (_, &mut threshold, _) = ages.select_nth_unstable(cut - 1);
    let mut dropped = 0;
    shard.retain(|_, bucket| {
        if dropped < cut && bucket.last_ms <= threshold {
            dropped += 1;
            false
        } else {
            true
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Limit = Limit {
        rate_milli: 1_000,
        burst: 0,
        delay: u64::MAX,
    };

    #[test]
    fn keys_are_independent() {
        let store = Store::new(1_000);
        assert!(matches!(store.check(1, 10, LIMIT), Decision::Allow { .. }));
        assert!(matches!(store.check(1, 10, LIMIT), Decision::Reject { .. }));
        assert!(matches!(store.check(2, 10, LIMIT), Decision::Allow { .. }));
    }

    #[test]
    fn memory_stays_bounded_past_max_keys() {
        let store = Store::new(10_000);
        for key in 0..200_000u64 {
            store.check(key.wrapping_mul(0x9E37_79B9_7F4A_7C15), 10 + key, LIMIT);
        }
        assert!(store.len() <= 10_000 + SHARDS, "{} buckets", store.len());
    }

    #[test]
    fn an_idle_key_costs_at_most_128_bytes() {
        let store = Store::new(100_000);
        for key in 0..100_000u64 {
            store.check(key.wrapping_mul(0x9E37_79B9_7F4A_7C15), 10, LIMIT);
        }
        // hashbrown: one entry (key + bucket) and one control byte per slot of capacity.
        let slot = std::mem::size_of::<(u64, Bucket)>() + 1;
        let bytes: usize = store
            .shards
            .iter()
            .map(|s| s.lock().capacity() * slot)
            .sum();
        let per_key = bytes / store.len();
        assert!(per_key <= 128, "{per_key} bytes per key");
    }

    #[test]
    fn sweep_forgets_drained_buckets() {
        let store = Store::new(100);
        store.check(1, 10, LIMIT);
        store.check(1, 10, LIMIT);
        store.check(2, 10, LIMIT);
        store.sweep(10, LIMIT);
        assert_eq!(store.len(), 2, "buckets in use are kept");
        store.sweep(10_000, LIMIT);
        assert!(store.is_empty());
    }
}
