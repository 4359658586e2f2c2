//! `pick` of every strategy at 3, 100 and 1,000 servers (target: under 100 ns at 100 servers).
//!
//! ```text
//! cargo bench --bench pick
//! ```

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use fulcrum::balance::{self, hash_bytes, BalancerOptions, PickContext};
use fulcrum::clock::now_ms;
use fulcrum::config::Strategy;
use fulcrum::upstream::Server;

fn servers(count: usize) -> Vec<Server> {
    (0..count)
        .map(|i| {
            let addr = format!("10.{}.{}.{}:8080", i / 65536, (i / 256) % 256, i % 256);
            Server::standalone(&addr, 1 + (i % 3) as u32).expect("a valid bench address")
        })
        .collect()
}

fn bench_pick(c: &mut Criterion) {
    let strategies = [
        ("round_robin", Strategy::RoundRobin),
        ("weighted", Strategy::Weighted),
        ("least_conn", Strategy::LeastConn),
        ("ip_hash", Strategy::IpHash),
        ("consistent_hash", Strategy::ConsistentHash),
        ("least_time", Strategy::LeastTime),
    ];
    for (name, strategy) in strategies {
        let mut group = c.benchmark_group(format!("pick/{name}"));
        for count in [3usize, 100, 1000] {
            let servers = servers(count);
            // Latency estimates as a running pool has them (least_time reads them; others ignore them).
            for (i, server) in servers.iter().enumerate() {
                server
                    .state
                    .latency()
                    .observe(1_000.0 + (i % 7) as f64 * 500.0, now_ms());
            }
            let balancer =
                balance::build(strategy, &servers, BalancerOptions { ip_hash_prefix: 32 });
            let now = now_ms();
            // Client addresses and key hashes are made outside the timed loop: the bench measures `pick`.
            let contexts: Vec<PickContext<'_>> = (0..1024u32)
                .map(|client| PickContext {
                    client_ip: IpAddr::from(client.wrapping_mul(2_654_435_761).to_be_bytes()),
                    key_hash: Some(hash_bytes(&client.to_le_bytes())),
                    tried: &[],
                    now_ms: now,
                })
                .collect();
            let mut next = 0usize;
            group.bench_with_input(BenchmarkId::from_parameter(count), &count, |b, _| {
                b.iter(|| {
                    next = (next + 1) & 1023;
                    black_box(balancer.pick(black_box(&servers), &contexts[next]))
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench_pick);
criterion_main!(benches);
