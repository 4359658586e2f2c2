//! Least connections: the fewest in-flight requests per unit of weight wins; ties go round robin.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Balancer, PickContext};
use crate::upstream::Server;

/// Scans every server's in-flight counter, starting at a rotating offset so ties rotate.
#[derive(Debug, Default)]
pub struct LeastConn {
    next: AtomicUsize,
}

impl LeastConn {
    /// A least-connections balancer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Balancer for LeastConn {
    fn pick(&self, servers: &[Server], ctx: &PickContext<'_>) -> Option<usize> {
        let n = servers.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut best: Option<(usize, u64, u64)> = None;
        for step in 0..n {
            let i = if start + step >= n {
                start + step - n
            } else {
                start + step
            };
            if !ctx.usable(servers, i) {
                continue;
            }
            let load = servers[i].state.in_flight() as u64;
            let weight = u64::from(servers[i].weight);
            // load / weight < best_load / best_weight, without division.
            match best {
                Some((_, best_load, best_weight)) if load * best_weight >= best_load * weight => {}
                _ => best = Some((i, load, weight)),
            }
        }
        best.map(|(i, _, _)| i)
    }
}
