//! Smooth weighted round robin, the nginx sequence, precomputed so a pick is one atomic increment.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Balancer, PickContext};
use crate::upstream::Server;

/// Past this many steps of simulation (period x servers) the sequence is built by stride ordering instead,
/// which keeps the same proportions and spreading but not nginx's exact tie order.
const SIMULATION_BUDGET: u64 = 4_000_000;

/// Round robin over a precomputed smooth weighted sequence.
#[derive(Debug)]
pub struct RoundRobin {
    sequence: Vec<u32>,
    next: AtomicUsize,
}

impl RoundRobin {
    /// Builds the sequence for the servers' weights.
    pub fn new(servers: &[Server]) -> Self {
        let weights: Vec<u32> = servers.iter().map(|s| s.weight).collect();
        Self {
            sequence: smooth_weighted_sequence(&weights),
            next: AtomicUsize::new(0),
        }
    }
}

impl Balancer for RoundRobin {
    fn pick(&self, servers: &[Server], ctx: &PickContext<'_>) -> Option<usize> {
        let len = self.sequence.len();
        if len == 0 {
            return None;
        }
        // An unusable server's turn is skipped by taking the next turn from the shared counter, so the
        // remaining servers keep their proportions (as nginx leaves a down server out of the sum).
        let turns = len.min(servers.len().saturating_mul(4));
        let mut turn = 0;
        for _ in 0..turns {
            turn = self.next.fetch_add(1, Ordering::Relaxed);
            let index = self.sequence[turn % len] as usize;
            if ctx.usable(servers, index) {
                return Some(index);
            }
        }
        ctx.first_usable_from(servers, turn % servers.len())
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// One period of nginx's smooth weighted round robin: each step every server gains its weight, the largest
/// current weight wins (first on ties) and loses the total. Weights are reduced by their gcd first.
pub fn smooth_weighted_sequence(weights: &[u32]) -> Vec<u32> {
    let divisor = weights.iter().copied().fold(0, gcd).max(1);
    let reduced: Vec<i64> = weights.iter().map(|&w| i64::from(w / divisor)).collect();
    let total: i64 = reduced.iter().sum();
    let period = u64::try_from(total).unwrap_or(0);
    if period.saturating_mul(weights.len() as u64) > SIMULATION_BUDGET {
        return stride_sequence(&reduced);
    }
    let mut current = vec![0i64; reduced.len()];
    let mut sequence = Vec::with_capacity(period as usize);
    for _ in 0..period {
        let mut best = 0;
        for i in 0..reduced.len() {
            current[i] += reduced[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        sequence.push(best as u32);
    }
    sequence
}

/// Each server's k-th turn placed at (k + 0.5) / weight, then all turns sorted: even spreading in O(P log P).
fn stride_sequence(weights: &[i64]) -> Vec<u32> {
    let mut turns: Vec<(f64, u32)> = Vec::new();
    for (index, &weight) in weights.iter().enumerate() {
        for k in 0..weight {
            turns.push(((k as f64 + 0.5) / weight as f64, index as u32));
        }
    }
    turns.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    turns.into_iter().map(|(_, index)| index).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_nginx_sequence_for_5_1_1() {
        // The example from nginx's commit introducing smooth weighted round robin: { a, a, b, a, c, a, a }.
        assert_eq!(
            smooth_weighted_sequence(&[5, 1, 1]),
            vec![0, 0, 1, 0, 2, 0, 0]
        );
    }

    #[test]
    fn equal_weights_alternate() {
        assert_eq!(smooth_weighted_sequence(&[2, 2, 2]), vec![0, 1, 2]);
    }

    #[test]
    fn proportions_hold_in_one_period() {
        let seq = smooth_weighted_sequence(&[3, 2, 1]);
        assert_eq!(seq.len(), 6);
        for (server, weight) in [(0u32, 3usize), (1, 2), (2, 1)] {
            assert_eq!(seq.iter().filter(|&&s| s == server).count(), weight);
        }
    }

    #[test]
    fn large_tables_use_stride_with_right_proportions() {
        let weights: Vec<u32> = (0..1000).map(|i| 997 - (i % 7)).collect();
        let seq = smooth_weighted_sequence(&weights);
        assert_eq!(
            seq.len() as u64,
            weights.iter().map(|&w| u64::from(w)).sum::<u64>()
        );
        assert_eq!(seq.iter().filter(|&&s| s == 0).count(), 997);
    }
}
