//! Least connections: the fewest in-flight requests per unit of weight wins; ties go round robin.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::{smooth_weighted_sequence, Balancer, PickContext};
use crate::upstream::{Server, ServerState};

/// Fixed-point scale for 1 / weight (weights are at most 1000, so every inverse is at least 1048).
const SCALE: u64 = 1 << 20;
/// Bits of a scan key that hold the server's position in the rotated scan order.
const POSITION_BITS: u32 = 20;
/// A key is `in_flight * (inverse_weight << POSITION_BITS) | position`; it stays below 2^64 while a server
/// holds fewer than 2^24 requests at once, far beyond what file descriptors allow.
const _: () = assert!((SCALE << POSITION_BITS) <= 1 << 40);

/// Scans every server's in-flight counter, starting where the pool's smooth weighted round-robin sequence
/// says, so ties go weighted round robin as in nginx (weights 3:1 with idle servers give 3:1).
///
/// Each server becomes one `u64` key: `load * (SCALE / weight)` in the high bits and its position in the
/// rotated order in the low bits, so the minimum key is the least loaded server per unit of weight, the
/// earliest in rotated order on ties, found with a branch-free `min`. States and inverse weights sit side by
/// side in one flat array built with the snapshot, so a scan reads one slot and one atomic word per server.
#[derive(Debug)]
pub struct LeastConn {
    /// Each server's live state and `(SCALE / weight) << POSITION_BITS`, side by side.
    slots: Vec<(Arc<ServerState>, u64)>,
    /// Where each turn's scan starts: the smooth weighted round-robin sequence of the servers.
    starts: Vec<u32>,
    next: AtomicUsize,
    /// Lemire's fastmod constant for `starts.len()`: a turn's start without a division per pick.
    fastmod: u64,
}

impl LeastConn {
    /// A least-connections balancer over `servers` (at most 2^20 of them; config allows far fewer).
    pub fn new(servers: &[Server]) -> Self {
        let weights: Vec<u32> = servers.iter().map(|s| s.weight).collect();
        let starts = smooth_weighted_sequence(&weights);
        Self {
            slots: servers
                .iter()
                .map(|s| {
                    let inverse_weight = (SCALE / u64::from(s.weight.max(1))) << POSITION_BITS;
                    (Arc::clone(&s.state), inverse_weight)
                })
                .collect(),
            next: AtomicUsize::new(0),
            fastmod: (u64::MAX / starts.len().max(1) as u64).wrapping_add(1),
            starts,
        }
    }

    /// `turn % n` for a 32-bit turn with two multiplications instead of a division (Lemire, "Faster
    /// remainder by direct computation", 2019).
    #[inline]
    fn rotate(&self, turn: u32, len: usize) -> usize {
        let low = self.fastmod.wrapping_mul(u64::from(turn));
        ((u128::from(low) * len as u128) >> 64) as usize
    }

    /// The minimum key over `range`, whose first element has rotated position `first_position`.
    #[inline]
    fn scan<const CHECK_TRIED: bool>(
        &self,
        range: std::ops::Range<usize>,
        first_position: u64,
        ctx: &PickContext<'_>,
        mut best: u64,
    ) -> u64 {
        let offset = range.start;
        let slots = &self.slots[range];
        let key = |position: u64, state: &ServerState, inverse_weight: u64, tried_index: usize| {
            match state.in_flight_if_selectable(ctx.now_ms) {
                Some(_) if CHECK_TRIED && ctx.tried.contains(&tried_index) => u64::MAX,
                Some(load) => load.wrapping_mul(inverse_weight) | position,
                None => u64::MAX,
            }
        };
        // Two running minimums over alternate servers halve the compare-and-select chain that bounds the
        // scan; keys carry their position, so `min` of the two keeps the earliest server on ties.
        let mut odd = u64::MAX;
        for (pair, two) in slots.chunks_exact(2).enumerate() {
            let k = pair * 2;
            let position = first_position + k as u64;
            best = best.min(key(position, &two[0].0, two[0].1, offset + k));
            odd = odd.min(key(position + 1, &two[1].0, two[1].1, offset + k + 1));
        }
        if let [.., (state, inverse_weight)] = slots {
            if slots.len() % 2 == 1 {
                let k = slots.len() - 1;
                best = best.min(key(
                    first_position + k as u64,
                    state,
                    *inverse_weight,
                    offset + k,
                ));
            }
        }
        best = best.min(odd);
        best
    }

    fn scan_all<const CHECK_TRIED: bool>(
        &self,
        start: usize,
        ctx: &PickContext<'_>,
    ) -> Option<usize> {
        let n = self.slots.len();
        let first = self.scan::<CHECK_TRIED>(start..n, 0, ctx, u64::MAX);
        let best = self.scan::<CHECK_TRIED>(0..start, (n - start) as u64, ctx, first);
        if best == u64::MAX {
            return None;
        }
        // start < n and position < n: one conditional subtraction instead of a division.
        let index = start + (best & ((1 << POSITION_BITS) - 1)) as usize;
        Some(if index >= n { index - n } else { index })
    }
}

impl Balancer for LeastConn {
    fn pick(&self, servers: &[Server], ctx: &PickContext<'_>) -> Option<usize> {
        let n = self.slots.len();
        if n == 0 || n != servers.len() {
            return None;
        }
        // The turn wraps at 2^32, where the rotation skips a beat once every four billion picks.
        let turn = self.rotate(
            self.next.fetch_add(1, Ordering::Relaxed) as u32,
            self.starts.len(),
        );
        let start = self.starts[turn] as usize;
        if ctx.tried.is_empty() {
            self.scan_all::<false>(start, ctx)
        } else {
            self.scan_all::<true>(start, ctx)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_matches_remainder() {
        for n in [1usize, 2, 3, 7, 100, 1000, 60_000] {
            let servers: Vec<Server> = (0..n)
                .map(|i| {
                    Server::standalone(&format!("127.0.0.1:{}", 1 + i), 1).expect("a valid address")
                })
                .collect();
            let balancer = LeastConn::new(&servers);
            for turn in [0u32, 1, 2, 99, 1000, 123_456_789, u32::MAX] {
                assert_eq!(
                    balancer.rotate(turn, n),
                    turn as usize % n,
                    "turn {turn}, {n} servers"
                );
            }
        }
    }

    #[test]
    fn idle_servers_share_by_weight_and_load_wins_over_weight() {
        let servers: Vec<Server> = [("127.0.0.1:1", 3), ("127.0.0.1:2", 1)]
            .iter()
            .map(|(addr, weight)| Server::standalone(addr, *weight).expect("a valid address"))
            .collect();
        let balancer = LeastConn::new(&servers);
        let ctx = PickContext {
            client_ip: [127, 0, 0, 1].into(),
            key_hash: None,
            tried: &[],
            now_ms: 1,
        };
        let picks: Vec<usize> = (0..8)
            .filter_map(|_| balancer.pick(&servers, &ctx))
            .collect();
        assert_eq!(
            picks,
            [0, 0, 1, 0, 0, 0, 1, 0],
            "idle ties follow the smooth 3:1 sequence"
        );
        // Four in flight on the weight-3 server (4/3) against one on the weight-1 server (1/1): the latter wins.
        let _held: Vec<_> = (0..4).map(|_| servers[0].in_flight_guard()).collect();
        let _one = servers[1].in_flight_guard();
        assert_eq!(balancer.pick(&servers, &ctx), Some(1));
    }
}
