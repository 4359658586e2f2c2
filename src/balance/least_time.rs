//! Least time: the server with the lowest latency estimate times its requests in flight plus one, per
//! unit of weight; the better of two random servers on pools larger than [`COMPARE_ALL_UP_TO`] (the
//! "power of two choices" of Mitzenmacher, as Linkerd and Finagle balance), every server on smaller ones.
//!
//! The estimate is each server's peak-sensitive moving average ([`crate::upstream::Latency`]), read with
//! atomics only. A server without an estimate yet (new, or never answered) is scored with the other
//! candidate's estimate, so it competes on its load alone and is sampled soon.

use std::sync::Arc;

use super::{Balancer, PickContext};
use crate::upstream::{Server, ServerState};

/// Pools up to this size are scanned whole, so the best server is never missed. Two random draws would
/// send a slow server every request that draws it with a slower one: the second slowest of ten replicas
/// got 2 of every 90 picks, enough to set the p99 (`benches/load/spread.py`, tower76). A scan of sixteen
/// costs about what the rest of a pick does; larger pools draw two.
const COMPARE_ALL_UP_TO: usize = 16;

/// Random draws tried to find two distinct usable servers before falling back to a scan.
const DRAWS: usize = 4;

/// Peak EWMA with power of two choices.
#[derive(Debug)]
pub struct LeastTime {
    /// Each server's live state and 1 / weight.
    slots: Vec<(Arc<ServerState>, f64)>,
}

/// What a candidate brings to the comparison: its estimate (if any), load and inverse weight.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    index: usize,
    estimate_us: Option<f64>,
    load: u64,
    inverse_weight: f64,
}

impl Candidate {
    /// The score with `latency_us` as its latency (lower is better).
    #[inline]
    fn score(&self, latency_us: f64) -> f64 {
        // One microsecond at least: with idle servers' estimates decayed to zero, load still decides.
        latency_us.max(1.0) * (self.load + 1) as f64 * self.inverse_weight
    }
}

/// The better of `a` and `b`; a missing estimate takes the other's, so that server competes on load.
#[inline]
fn better(a: Candidate, b: Candidate) -> Candidate {
    let (a_us, b_us) = match (a.estimate_us, b.estimate_us) {
        (Some(a_us), Some(b_us)) => (a_us, b_us),
        (Some(us), None) | (None, Some(us)) => (us, us),
        (None, None) => (1.0, 1.0),
    };
    if b.score(b_us) < a.score(a_us) {
        b
    } else {
        a
    }
}

impl LeastTime {
    /// A least-time balancer over `servers`.
    pub fn new(servers: &[Server]) -> Self {
        Self {
            slots: servers
                .iter()
                .map(|s| (Arc::clone(&s.state), 1.0 / f64::from(s.weight.max(1))))
                .collect(),
        }
    }

    /// `servers[index]` as a candidate, if it may be picked for this request.
    #[inline]
    fn candidate(&self, index: usize, ctx: &PickContext<'_>) -> Option<Candidate> {
        let (state, inverse_weight) = &self.slots[index];
        let load = state.in_flight_if_selectable(ctx.now_ms)?;
        if ctx.tried.contains(&index) {
            return None;
        }
        Some(Candidate {
            index,
            estimate_us: state.latency().estimate_us(ctx.now_ms),
            load,
            inverse_weight: *inverse_weight,
        })
    }

    fn scan(&self, ctx: &PickContext<'_>) -> Option<usize> {
        // Start at a random server, so equal scores do not always favour the first.
        let n = self.slots.len();
        let start = fastrand::usize(..n);
        (0..n)
            .filter_map(|step| self.candidate((start + step) % n, ctx))
            .reduce(better)
            .map(|c| c.index)
    }
}

impl Balancer for LeastTime {
    fn pick(&self, servers: &[Server], ctx: &PickContext<'_>) -> Option<usize> {
        let n = self.slots.len().min(servers.len());
        if n == 0 {
            return None;
        }
        if n <= COMPARE_ALL_UP_TO {
            return self.scan(ctx);
        }
        let mut first = None;
        for _ in 0..DRAWS {
            let i = fastrand::usize(..n);
            let Some(candidate) = self.candidate(i, ctx) else {
                continue;
            };
            match first {
                None => first = Some(candidate),
                Some(a) if a.index != candidate.index => return Some(better(a, candidate).index),
                Some(_) => {}
            }
        }
        // Most servers are out (down, drained, full or tried): the scan finds what is left.
        self.scan(ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(weights: &[u32]) -> Vec<Server> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Server::standalone(&format!("10.0.0.{}:80", i + 1), w).expect("addr"))
            .collect()
    }

    fn ctx(now_ms: u64) -> PickContext<'static> {
        PickContext {
            client_ip: std::net::IpAddr::from([127, 0, 0, 1]),
            key_hash: None,
            tried: &[],
            now_ms,
        }
    }

    fn shares(balancer: &LeastTime, servers: &[Server], now: u64, picks: usize) -> Vec<usize> {
        let mut counts = vec![0; servers.len()];
        for _ in 0..picks {
            let i = balancer.pick(servers, &ctx(now)).expect("a pick");
            counts[i] += 1;
        }
        counts
    }

    #[test]
    fn a_slow_server_loses_to_fast_ones_in_small_and_large_pools() {
        for size in [3usize, 10] {
            let servers = pool(&vec![1; size]);
            let now = 5_000;
            for (i, server) in servers.iter().enumerate() {
                let us = if i == 0 { 200_000.0 } else { 10_000.0 };
                server.state.latency().observe(us, now);
            }
            let balancer = LeastTime::new(&servers);
            let counts = shares(&balancer, &servers, now, 1_000);
            // Small pools compare all; large pools compare two distinct servers, so the slow one always
            // meets a faster one.
            assert_eq!(counts[0], 0, "size {size}: {counts:?}");
        }
    }

    #[test]
    fn a_pool_of_ten_uneven_servers_sends_nothing_to_the_slow_ones_when_idle() {
        // tower#76's profile: 1 ms to 1 s. Two random draws would give the second slowest every pick
        // that drew it with the slowest (2 in 90); a pool this size is scanned whole.
        let servers = pool(&[1; 10]);
        let now = 5_000;
        for (i, server) in servers.iter().enumerate() {
            server
                .state
                .latency()
                .observe(1_000.0 * 1000f64.powf(i as f64 / 9.0), now);
        }
        let balancer = LeastTime::new(&servers);
        let counts = shares(&balancer, &servers, now, 2_000);
        assert_eq!(counts[0], 2_000, "{counts:?}");
        // Far larger pools still draw two (the pick stays cheap at 100 servers).
        let large = pool(&[1; 40]);
        for (i, server) in large.iter().enumerate() {
            server.state.latency().observe(1_000.0 + i as f64, now);
        }
        let balancer = LeastTime::new(&large);
        let counts = shares(&balancer, &large, now, 2_000);
        assert!(counts[0] < 2_000 && counts[39] == 0, "{counts:?}");
    }

    #[test]
    fn load_counts_a_busy_fast_server_can_lose_to_an_idle_slower_one() {
        let servers = pool(&[1, 1]);
        let now = 5_000;
        servers[0].state.latency().observe(10_000.0, now);
        servers[1].state.latency().observe(30_000.0, now);
        let guards: Vec<_> = (0..5).map(|_| servers[0].in_flight_guard()).collect();
        let balancer = LeastTime::new(&servers);
        // 10 ms x 6 against 30 ms x 1.
        assert_eq!(balancer.pick(&servers, &ctx(now)), Some(1));
        drop(guards);
        assert_eq!(balancer.pick(&servers, &ctx(now)), Some(0));
    }

    #[test]
    fn weight_divides_the_score() {
        let servers = pool(&[1, 4]);
        let now = 5_000;
        servers[0].state.latency().observe(10_000.0, now);
        servers[1].state.latency().observe(30_000.0, now);
        let balancer = LeastTime::new(&servers);
        // 10 ms against 30 ms / 4.
        assert_eq!(balancer.pick(&servers, &ctx(now)), Some(1));
    }

    #[test]
    fn a_server_without_samples_competes_on_its_load_and_gets_tried() {
        let servers = pool(&[1, 1, 1]);
        let now = 5_000;
        servers[0].state.latency().observe(10_000.0, now);
        servers[1].state.latency().observe(10_000.0, now);
        let _busy = [servers[0].in_flight_guard(), servers[1].in_flight_guard()];
        let balancer = LeastTime::new(&servers);
        assert_eq!(balancer.pick(&servers, &ctx(now)), Some(2));
    }

    #[test]
    fn tried_and_unusable_servers_are_never_picked() {
        let servers = pool(&[1, 1, 1, 1, 1, 1]);
        let balancer = LeastTime::new(&servers);
        for s in &servers[1..5] {
            s.state.set_drained(true);
        }
        let tried = [5usize];
        let context = PickContext {
            tried: &tried,
            ..ctx(5_000)
        };
        for _ in 0..100 {
            assert_eq!(balancer.pick(&servers, &context), Some(0));
        }
        servers[0].state.set_drained(true);
        assert_eq!(balancer.pick(&servers, &context), None);
    }

    #[test]
    fn a_slow_server_comes_back_as_its_estimate_decays() {
        let servers = pool(&[1, 1]);
        servers[0].state.latency().observe(200_000.0, 1_000);
        servers[1].state.latency().observe(10_000.0, 1_000);
        let balancer = LeastTime::new(&servers);
        assert_eq!(balancer.pick(&servers, &ctx(1_000)), Some(1));
        // 20 s later, with the fast one renewed just now: 200 ms x e^-4 = 3.7 ms.
        servers[1].state.latency().observe(10_000.0, 21_000);
        assert_eq!(balancer.pick(&servers, &ctx(21_000)), Some(0));
    }
}
