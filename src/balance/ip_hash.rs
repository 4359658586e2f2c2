//! ip_hash: the client address (or its IPv4 prefix) always maps to the same server while the set is unchanged.

use std::net::IpAddr;

use super::{hash_bytes, Balancer, PickContext};
use crate::upstream::Server;

/// How often a key is rehashed past unusable servers before scanning (nginx tries 20 times).
const REHASHES: usize = 20;

/// Weighted hash of the client address over cumulative weights.
#[derive(Debug)]
pub struct IpHash {
    cumulative: Vec<u64>,
    ipv4_mask: u32,
}

impl IpHash {
    /// Builds the weight table; `prefix` masks IPv4 addresses (32 keeps the full address).
    pub fn new(servers: &[Server], prefix: u8) -> Self {
        let cumulative = servers
            .iter()
            .scan(0u64, |sum, s| {
                *sum += u64::from(s.weight);
                Some(*sum)
            })
            .collect();
        let prefix = u32::from(prefix.clamp(1, 32));
        Self {
            cumulative,
            ipv4_mask: u32::MAX << (32 - prefix),
        }
    }

    fn key_hash(&self, ip: IpAddr) -> u64 {
        match ip {
            IpAddr::V4(v4) => hash_bytes(&(u32::from(v4) & self.ipv4_mask).to_be_bytes()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => hash_bytes(&(u32::from(v4) & self.ipv4_mask).to_be_bytes()),
                None => hash_bytes(&v6.octets()),
            },
        }
    }
}

impl Balancer for IpHash {
    fn pick(&self, servers: &[Server], ctx: &PickContext<'_>) -> Option<usize> {
        let total = *self.cumulative.last()?;
        let mut hash = self.key_hash(ctx.client_ip);
        for _ in 0..REHASHES {
            let index = self.cumulative.partition_point(|&c| c <= hash % total);
            if ctx.usable(servers, index) {
                return Some(index);
            }
            hash = hash_bytes(&hash.to_le_bytes());
        }
        ctx.first_usable_from(servers, (hash % servers.len() as u64) as usize)
    }
}
