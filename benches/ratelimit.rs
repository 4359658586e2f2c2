//! Rate-limit checks: the local store uncontended and with 2 threads on distinct keys (targets: under
//! 100 ns and under 300 ns), and the Redis path's added latency on loopback (median and p99), when a
//! `redis-server` binary is on PATH.
//!
//! ```text
//! cargo bench --bench ratelimit
//! ```

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use fulcrum::ratelimit::redis::RedisBackend;
use fulcrum::ratelimit::{Limit, Store};

const LIMIT: Limit = Limit {
    rate_milli: 100_000_000,
    burst: 1_000,
    delay: u64::MAX,
};

fn local(c: &mut Criterion) {
    let store = Store::new(100_000);
    let mut now = 1u64;
    c.bench_function("ratelimit/local/uncontended", |b| {
        b.iter(|| {
            now += 1;
            black_box(store.check(black_box(42), now, LIMIT))
        })
    });
    let store = Arc::new(Store::new(100_000));
    c.bench_function("ratelimit/local/2_threads_distinct_keys", |b| {
        b.iter_custom(|iters| {
            let threads: Vec<_> = (0..2u64)
                .map(|thread| {
                    let store = Arc::clone(&store);
                    std::thread::spawn(move || {
                        let started = Instant::now();
                        for i in 0..iters {
                            black_box(store.check(thread * 1_000_003 + (i % 4096), i + 1, LIMIT));
                        }
                        started.elapsed()
                    })
                })
                .collect();
            // Per check, as seen by one thread while the other runs.
            threads
                .into_iter()
                .map(|t| t.join().unwrap_or_default())
                .max()
                .unwrap_or_default()
        })
    });
}

fn redis(c: &mut Criterion) {
    let server = match fulcrum::demo::RedisServer::start() {
        Ok(server) => server,
        Err(error) => {
            eprintln!("no redis-server ({error}): skipping the Redis bench");
            return;
        }
    };
    let live = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio live for the bench");
    let up = prometheus::IntGauge::new("redis_up", "bench").expect("a gauge");
    let backend = RedisBackend::new(&[server.url()], false, "bench", Duration::from_secs(1), up)
        .expect("a Redis URL");
    // Latency distribution of one check (a round trip running the Lua script).
    let mut samples: Vec<Duration> = live.block_on(async {
        let mut samples = Vec::with_capacity(10_000);
        for i in 0..10_000u64 {
            let started = Instant::now();
            let _ = backend.check(i % 512, LIMIT).await;
            samples.push(started.elapsed());
        }
        samples
    });
    samples.sort();
    eprintln!(
        "ratelimit/redis/check: median {:?}, p99 {:?} over {} checks",
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
        samples.len()
    );
    c.bench_function("ratelimit/redis/check", |b| {
        b.iter(|| live.block_on(backend.check(black_box(7), LIMIT)))
    });
    drop(server);
}

criterion_group!(benches, local, redis);
criterion_main!(benches);
