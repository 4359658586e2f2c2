//! Consistent hash: a ketama-style ring of points per server, so removing one of N servers moves about 1/N keys.

use super::{hash_bytes, Balancer, PickContext, RoundRobin};
use crate::upstream::Server;

/// Ring points per unit of weight (ketama uses 160).
pub const POINTS_PER_WEIGHT: u32 = 160;

/// A sorted ring of (point, server index); requests without a key fall back to round robin.
#[derive(Debug)]
pub struct ConsistentHash {
    ring: Vec<(u64, u32)>,
    fallback: RoundRobin,
}

impl ConsistentHash {
    /// Places each server's points by hashing its address, so placement survives reorderings and reloads.
    pub fn new(servers: &[Server]) -> Self {
        let mut ring = Vec::new();
        for (index, server) in servers.iter().enumerate() {
            for point in 0..server.weight * POINTS_PER_WEIGHT {
                let label = format!("{}-{point}", server.identity());
                ring.push((hash_bytes(label.as_bytes()), index as u32));
            }
        }
        ring.sort_unstable();
        Self {
            ring,
            fallback: RoundRobin::new(servers),
        }
    }
}

impl Balancer for ConsistentHash {
    fn pick(&self, servers: &[Server], ctx: &PickContext<'_>) -> Option<usize> {
        let Some(key) = ctx.key_hash else {
            return self.fallback.pick(servers, ctx);
        };
        if self.ring.is_empty() {
            return None;
        }
        let start = self.ring.partition_point(|&(point, _)| point < key);
        // Walk clockwise to the first usable server; after a full turn of distinct misses, give up.
        let len = self.ring.len();
        for step in 0..len {
            let index = self.ring[(start + step) % len].1 as usize;
            if ctx.usable(servers, index) {
                return Some(index);
            }
            if step > servers.len() * 8 {
                break;
            }
        }
        ctx.first_usable_from(servers, (key % servers.len() as u64) as usize)
    }
}
