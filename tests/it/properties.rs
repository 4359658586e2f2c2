//! Property tests: the balancers never pick a server they may not use and respect weights in the long
//! run; the token bucket never lets more through than rate and burst allow, and its Retry-After is true.

use std::net::IpAddr;

use fulcrum::balance::{build, BalancerOptions, PickContext};
use fulcrum::config::Strategy as Balancing;
use fulcrum::ratelimit::bucket::{check, Bucket, Decision, Limit};
use fulcrum::upstream::Server;
use proptest::prelude::*;

const STRATEGIES: [Balancing; 6] = [
    Balancing::RoundRobin,
    Balancing::Weighted,
    Balancing::LeastConn,
    Balancing::IpHash,
    Balancing::ConsistentHash,
    Balancing::LeastTime,
];

/// What a server is like in a case: weight, down, drained.
fn server_specs() -> impl Strategy<Value = Vec<(u32, bool, bool)>> {
    proptest::collection::vec((1u32..=20, any::<bool>(), any::<bool>()), 1..8)
}

fn servers(specs: &[(u32, bool, bool)]) -> Vec<Server> {
    specs
        .iter()
        .enumerate()
        .map(|(i, &(weight, down, drained))| {
            let server = Server::standalone(&format!("127.0.0.{}:80", i + 1), weight)
                .expect("a valid address");
            server.state.set_active_down(down);
            server.state.set_drained(drained);
            server
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn no_strategy_picks_a_down_drained_or_tried_server(
        specs in server_specs(),
        strategy in 0..STRATEGIES.len(),
        tried_mask in any::<u8>(),
        client in any::<u32>(),
        key in any::<u64>(),
    ) {
        let servers = servers(&specs);
        let balancer = build(STRATEGIES[strategy], &servers, BalancerOptions { ip_hash_prefix: 32 });
        let tried: Vec<usize> = (0..servers.len()).filter(|i| tried_mask & (1 << i) != 0).collect();
        let ctx = PickContext {
            client_ip: IpAddr::from(client.to_be_bytes()),
            key_hash: Some(key),
            tried: &tried,
            now_ms: 1,
        };
        let usable: Vec<usize> = (0..servers.len())
            .filter(|&i| !specs[i].1 && !specs[i].2 && !tried.contains(&i))
            .collect();
        for _ in 0..4 {
            match balancer.pick(&servers, &ctx) {
                Some(index) => prop_assert!(usable.contains(&index), "picked {index}; usable {usable:?}"),
                None => prop_assert!(usable.is_empty(), "no pick, yet {usable:?} are usable"),
            }
        }
    }

    #[test]
    fn round_robin_gives_each_up_server_exactly_its_weight_per_cycle(
        weights in proptest::collection::vec(1u32..=10, 1..6),
        cycles in 1usize..4,
    ) {
        let specs: Vec<(u32, bool, bool)> = weights.iter().map(|&w| (w, false, false)).collect();
        let servers = servers(&specs);
        let balancer = build(Balancing::RoundRobin, &servers, BalancerOptions { ip_hash_prefix: 32 });
        let ctx = PickContext { client_ip: IpAddr::from([127, 0, 0, 1]), key_hash: None, tried: &[], now_ms: 1 };
        let total: u32 = weights.iter().sum();
        let mut counts = vec![0u32; servers.len()];
        for _ in 0..(total as usize * cycles) {
            let index = balancer.pick(&servers, &ctx).expect("a pick");
            counts[index] += 1;
        }
        let expected: Vec<u32> = weights.iter().map(|w| w * cycles as u32).collect();
        prop_assert_eq!(counts, expected);
    }

    #[test]
    fn weighted_random_shares_follow_weights(weights in proptest::collection::vec(1u32..=10, 2..5)) {
        let specs: Vec<(u32, bool, bool)> = weights.iter().map(|&w| (w, false, false)).collect();
        let servers = servers(&specs);
        let balancer = build(Balancing::Weighted, &servers, BalancerOptions { ip_hash_prefix: 32 });
        let ctx = PickContext { client_ip: IpAddr::from([127, 0, 0, 1]), key_hash: None, tried: &[], now_ms: 1 };
        let picks = 40_000;
        let mut counts = vec![0u32; servers.len()];
        for _ in 0..picks {
            counts[balancer.pick(&servers, &ctx).expect("a pick")] += 1;
        }
        let total: u32 = weights.iter().sum();
        for (count, weight) in counts.iter().zip(&weights) {
            // Binomial: p = w/total; 6 standard deviations (at most 0.0075 of the picks) is a false alarm
            // about once in 10^9 checks.
            let p = f64::from(*weight) / f64::from(total);
            let sd = (p * (1.0 - p) / f64::from(picks)).sqrt();
            let share = f64::from(*count) / f64::from(picks);
            prop_assert!((share - p).abs() <= 6.0 * sd, "share {share} for weight {weight} of {total}");
        }
    }

    #[test]
    fn the_bucket_allows_at_most_rate_times_time_plus_burst(
        rate in 1u64..=100,
        burst in 0u64..=20,
        gaps in proptest::collection::vec(0u64..200, 1..300),
    ) {
        let limit = Limit { rate_milli: rate * 1000, burst, delay: u64::MAX };
        let mut bucket = Bucket::default();
        let mut now = 1_000;
        let start = now;
        let mut allowed = 0u64;
        for gap in gaps {
            now += gap;
            let (decision, next) = check(bucket, now, limit);
            match decision {
                Decision::Allow { .. } => allowed += 1,
                Decision::Reject { .. } => prop_assert_eq!(next, bucket, "a refusal changed the bucket"),
            }
            bucket = next;
            // nginx's bound: the first request, the burst, and the rate over the time passed.
            let bound = 1 + burst + rate * (now - start) / 1000;
            prop_assert!(allowed <= bound, "{allowed} allowed by {now} ms, bound {bound}");
        }
    }

    #[test]
    fn retry_after_is_long_enough_and_not_longer(
        rate in 1u64..=100,
        burst in 0u64..=5,
        burst_size in 1usize..40,
    ) {
        let limit = Limit { rate_milli: rate * 1000, burst, delay: u64::MAX };
        let mut bucket = Bucket::default();
        let now = 5_000;
        for _ in 0..burst_size {
            let (decision, next) = check(bucket, now, limit);
            bucket = next;
            if let Decision::Reject { retry_after_ms } = decision {
                let (later, _) = check(bucket, now + retry_after_ms, limit);
                prop_assert!(matches!(later, Decision::Allow { .. }), "still refused after {retry_after_ms} ms");
                if retry_after_ms > 0 {
                    let (sooner, _) = check(bucket, now + retry_after_ms - 1, limit);
                    prop_assert!(matches!(sooner, Decision::Reject { .. }), "allowed before {retry_after_ms} ms");
                }
                break;
            }
        }
    }

    #[test]
    fn the_bucket_never_panics_on_any_numbers(
        excess in any::<u64>(), last in any::<u64>(), now in any::<u64>(),
        rate in any::<u64>(), burst in any::<u64>(), delay in any::<u64>(),
    ) {
        let _ = check(Bucket { excess_milli: excess, last_ms: last }, now, Limit { rate_milli: rate, burst, delay });
    }
}
