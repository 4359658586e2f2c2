//! Balancing: the [`Balancer`] trait and one small type per strategy, built when a snapshot is built.

mod consistent_hash;
mod ip_hash;
mod least_conn;
mod least_time;
mod round_robin;
mod weighted;

use std::net::IpAddr;

pub use consistent_hash::ConsistentHash;
pub use ip_hash::IpHash;
pub use least_conn::LeastConn;
pub use least_time::LeastTime;
pub use round_robin::{smooth_weighted_sequence, RoundRobin};
pub use weighted::WeightedRandom;

use crate::config::Strategy;
use crate::upstream::Server;

/// What a balancer knows about the request it places.
#[derive(Debug, Clone, Copy)]
pub struct PickContext<'a> {
    /// The client's address (after trusted-proxy resolution).
    pub client_ip: IpAddr,
    /// Hash of the pool's configured key, when the request carries it.
    pub key_hash: Option<u64>,
    /// Indices already tried for this request; never picked again.
    pub tried: &'a [usize],
    /// Current time from [`crate::clock::now_ms`].
    pub now_ms: u64,
}

impl PickContext<'_> {
    /// Whether `servers[index]` may be picked for this request.
    #[inline]
    pub fn usable(&self, servers: &[Server], index: usize) -> bool {
        servers[index].selectable(self.now_ms) && !self.tried.contains(&index)
    }

    /// The first usable server scanning from `start`, wrapping around; the fallback every strategy shares.
    pub fn first_usable_from(&self, servers: &[Server], start: usize) -> Option<usize> {
        let n = servers.len();
        (0..n)
            .map(|step| (start + step) % n)
            .find(|&i| self.usable(servers, i))
    }
}

/// A balancing strategy over one fixed list of servers.
pub trait Balancer: Send + Sync + std::fmt::Debug {
    /// Index of the chosen server in `servers`, skipping unavailable ones and those in `ctx.tried`.
    fn pick(&self, servers: &[Server], ctx: &PickContext<'_>) -> Option<usize>;
}

/// Settings a strategy may need beyond the server list.
#[derive(Debug, Clone, Copy)]
pub struct BalancerOptions {
    /// `ip_hash` IPv4 prefix length.
    pub ip_hash_prefix: u8,
}

/// Builds the balancer for `strategy` over `servers` (weights read from the servers).
pub fn build(
    strategy: Strategy,
    servers: &[Server],
    options: BalancerOptions,
) -> Box<dyn Balancer> {
    match strategy {
        Strategy::RoundRobin => Box::new(RoundRobin::new(servers)),
        Strategy::Weighted => Box::new(WeightedRandom::new(servers)),
        Strategy::LeastConn => Box::new(LeastConn::new(servers)),
        Strategy::IpHash => Box::new(IpHash::new(servers, options.ip_hash_prefix)),
        Strategy::ConsistentHash => Box::new(ConsistentHash::new(servers)),
        Strategy::LeastTime => Box::new(LeastTime::new(servers)),
    }
}

/// 64-bit hash used for keys and ring points; stable across runs and builds.
#[inline]
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool whose names resolve to nothing has no server: every strategy picks none, none panics.
    #[test]
    fn every_strategy_picks_none_from_no_server() {
        let strategies = [
            Strategy::RoundRobin,
            Strategy::Weighted,
            Strategy::LeastConn,
            Strategy::IpHash,
            Strategy::ConsistentHash,
            Strategy::LeastTime,
        ];
        for strategy in strategies {
            let balancer = build(strategy, &[], BalancerOptions { ip_hash_prefix: 32 });
            let ctx = PickContext {
                client_ip: IpAddr::from([127, 0, 0, 1]),
                key_hash: Some(7),
                tried: &[],
                now_ms: 1_000,
            };
            assert_eq!(balancer.pick(&[], &ctx), None, "{strategy:?}");
        }
    }
}
