//! Weighted random: each pick draws a server with probability proportional to its weight.

use super::{Balancer, PickContext};
use crate::upstream::Server;

/// Redraws before falling back to a scan over the usable servers.
const REDRAWS: usize = 4;

/// Weighted random over cumulative weights (binary search per draw).
#[derive(Debug)]
pub struct WeightedRandom {
    cumulative: Vec<u64>,
}

impl WeightedRandom {
    /// Builds the cumulative weight table.
    pub fn new(servers: &[Server]) -> Self {
        let cumulative = servers
            .iter()
            .scan(0u64, |sum, s| {
                *sum += u64::from(s.weight);
                Some(*sum)
            })
            .collect();
        Self { cumulative }
    }

    fn draw(&self) -> Option<usize> {
        let total = *self.cumulative.last()?;
        let ticket = fastrand::u64(..total);
        Some(self.cumulative.partition_point(|&c| c <= ticket))
    }
}

impl Balancer for WeightedRandom {
    fn pick(&self, servers: &[Server], ctx: &PickContext<'_>) -> Option<usize> {
        for _ in 0..REDRAWS {
            let index = self.draw()?;
            if ctx.usable(servers, index) {
                return Some(index);
            }
        }
        // Many servers out: draw among the usable ones only.
        let total: u64 = (0..servers.len())
            .filter(|&i| ctx.usable(servers, i))
            .map(|i| u64::from(servers[i].weight))
            .sum();
        if total == 0 {
            return None;
        }
        let mut ticket = fastrand::u64(..total);
        for i in (0..servers.len()).filter(|&i| ctx.usable(servers, i)) {
            let weight = u64::from(servers[i].weight);
            if ticket < weight {
                return Some(i);
            }
            ticket -= weight;
        }
        None
    }
}
