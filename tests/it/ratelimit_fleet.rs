//! Fleet rate limits through the real binary and real redis-server processes: the circuit breaker
//! around a silent Redis (SIGSTOP), `on_redis_error = "local"`, refusals answered in process, Redis Cluster.

use std::time::{Duration, Instant};

use fulcrum::demo::{RedisCluster, RedisServer};
use http::StatusCode;

use crate::harness::*;

const NO_REDIS: &str = "start redis-server: run the tests with scripts/test, which installs it, or apt-get install -y redis-server";
const NO_CLUSTER: &str = "start a Redis Cluster (redis-server and redis-cli): run the tests with scripts/test, which installs them, or apt-get install -y redis-server redis-tools";

/// The binary with an admin listener and one zone `api` (`zone` keys) on the catch-all route.
fn fleet_proxy(zone: &str, backend: std::net::SocketAddr) -> AdminBinary {
    AdminBinary::with_route(
        &format!("rate_limit = [\"api\"]\n\n[rate_limit.api]\n{zone}\n"),
        "",
        "",
        &format!("{{ addr = \"{backend}\" }}"),
    )
}

fn url(proxy: &AdminBinary) -> String {
    format!("http://{}/", proxy.addr)
}

async fn redis_up(proxy: &AdminBinary) -> f64 {
    sample(
        &proxy.metrics().await,
        "fulcrum_ratelimit_redis_up",
        &["zone=\"api\""],
    )
}

/// `n` requests one after the other with `x-client: key`; the statuses.
async fn sequential(
    client: &TestClient,
    proxy: &AdminBinary,
    key: &str,
    n: usize,
) -> Vec<StatusCode> {
    let mut statuses = Vec::with_capacity(n);
    for _ in 0..n {
        statuses.push(client.get_with(&url(proxy), "x-client", key).await.status);
    }
    statuses
}

fn ok_count(statuses: &[StatusCode]) -> usize {
    statuses.iter().filter(|s| **s == StatusCode::OK).count()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_redis_opens_the_breaker_and_resuming_it_restores_the_shared_limit() {
    let redis = RedisServer::start().expect(NO_REDIS);
    let backend = named("app").await;
    let proxy = fleet_proxy(
        &format!(
            "key = \"header:x-client\"\nrate = \"1r/m\"\nburst = 4\nnodelay = true\nbackend = \"redis\"\nredis_url = \"{}\"\non_redis_error = \"allow\"\nredis_timeout = \"300ms\"",
            redis.url()
        ),
        backend.addr(),
    );
    let client = TestClient::new();
    assert_eq!(redis_up(&proxy).await, 1.0, "the gauge starts at 1");
    // The no-Redis figure: requests through a zone whose Redis answers at once (fresh keys, all allowed).
    let mut before = Vec::new();
    for i in 0..20 {
        let started = Instant::now();
        let reply = client
            .get_with(&url(&proxy), "x-client", &format!("warm-{i}"))
            .await;
        before.push(started.elapsed());
        assert_eq!(reply.status, StatusCode::OK);
    }
    let before = median(before);

    redis.pause().expect("SIGSTOP redis-server");
    // Traffic goes on; the first requests wait out the timeout, then the breaker opens.
    let mut i = 0;
    wait_until_async(Duration::from_secs(10), "the breaker to open", || {
        i += 1;
        let client = client.clone();
        let url = url(&proxy);
        let proxy = &proxy;
        async move {
            let reply = client
                .get_with(&url, "x-client", &format!("during-{i}"))
                .await;
            assert_eq!(
                reply.status,
                StatusCode::OK,
                "allow: let through without Redis"
            );
            redis_up(proxy).await == 0.0
        }
    })
    .await;
    let mut during = Vec::new();
    for i in 0..30 {
        let started = Instant::now();
        let reply = client
            .get_with(&url(&proxy), "x-client", &format!("open-{i}"))
            .await;
        during.push(started.elapsed());
        assert_eq!(reply.status, StatusCode::OK);
    }
    let slowest = *during.iter().max().expect("samples");
    let during = median(during);
    eprintln!("breaker: median {before:?} with Redis, {during:?} with the breaker open (slowest {slowest:?})");
    // Generous: the timeout is 300 ms; an open breaker does not wait on Redis at all.
    assert!(
        during < before + Duration::from_millis(20) && slowest < Duration::from_millis(150),
        "median {during:?} (no-Redis figure {before:?}), slowest {slowest:?} with the breaker open"
    );

    redis.resume().expect("SIGCONT redis-server");
    wait_until_async(Duration::from_secs(5), "the breaker to close", || async {
        redis_up(&proxy).await == 1.0
    })
    .await;
    // The shared limit again: 1 + burst 4 for a new key, the rest refused.
    let statuses = sequential(&client, &proxy, "after", 10).await;
    assert_eq!(ok_count(&statuses), 5, "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_fallback_holds_rate_over_fleet_size_per_proxy() {
    let mut redis = RedisServer::start().expect(NO_REDIS);
    let backend = named("app").await;
    let zone = format!(
        "key = \"header:x-client\"\nrate = \"1r/m\"\nburst = 8\nnodelay = true\nbackend = \"redis\"\nredis_url = \"{}\"\non_redis_error = \"local\"\nfleet_size = 4\nredis_timeout = \"100ms\"",
        redis.url()
    );
    let one = fleet_proxy(&zone, backend.addr());
    let two = fleet_proxy(&zone, backend.addr());
    let client = TestClient::new();
    // With Redis: the fleet's limit, 1 + burst 8 across both proxies.
    let mut allowed = 0;
    for _ in 0..10 {
        allowed += ok_count(&sequential(&client, &one, "shared", 1).await);
        allowed += ok_count(&sequential(&client, &two, "shared", 1).await);
    }
    assert_eq!(allowed, 9);
    redis.stop();
    // Without it: each proxy its share, 1 + burst 8/4 = 3 per key.
    for proxy in [&one, &two] {
        let statuses = sequential(&client, proxy, "alone", 12).await;
        assert_eq!(ok_count(&statuses), 3, "{statuses:?}");
        assert!(statuses
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::TOO_MANY_REQUESTS));
    }
    wait_until_async(Duration::from_secs(5), "the breaker to open", || {
        not_up(&one)
    })
    .await;
}

async fn not_up(proxy: &AdminBinary) -> bool {
    redis_up(proxy).await == 0.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_costs_redis_a_handful_of_commands_per_refill() {
    let redis = RedisServer::start().expect(NO_REDIS);
    let backend = named("app").await;
    let proxy = fleet_proxy(
        &format!(
            "key = \"header:x-client\"\nrate = \"1r/s\"\nbackend = \"redis\"\nredis_url = \"{}\"",
            redis.url()
        ),
        backend.addr(),
    );
    let client = TestClient::new();
    let scripts = || {
        redis
            .command_calls(&["evalsha", "eval"])
            .expect("INFO commandstats")
    };
    let first = scripts();
    let started = Instant::now();
    let statuses = sequential(&client, &proxy, "flood", 400).await;
    let elapsed = started.elapsed();
    let commands = scripts() - first;
    let refills = elapsed.as_secs() + 1;
    eprintln!("flood: 400 requests in {elapsed:?}, {commands} Redis commands");
    assert!(
        ok_count(&statuses) as u64 <= refills + 1,
        "{} allowed in {elapsed:?}",
        ok_count(&statuses)
    );
    // One command to admit and one to learn the refusal per refill period, plus a few for slack.
    assert!(
        commands <= 2 * refills + 4,
        "{commands} Redis commands for 400 requests in {elapsed:?}"
    );
    assert!(!not_up(&proxy).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_redis_cluster_enforces_one_limit_across_two_proxies() {
    let cluster = RedisCluster::start().expect(NO_CLUSTER);
    let backend = named("app").await;
    let urls = cluster
        .urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let zone = format!(
        "key = \"header:x-client\"\nrate = \"1r/m\"\nburst = 9\nnodelay = true\nbackend = \"redis\"\nredis_url = [{urls}]\nredis_cluster = true\non_redis_error = \"deny\"\nredis_timeout = \"500ms\""
    );
    let one = fleet_proxy(&zone, backend.addr());
    let two = fleet_proxy(&zone, backend.addr());
    let client = TestClient::new();
    let mut allowed = 0;
    for _ in 0..20 {
        allowed += ok_count(&sequential(&client, &one, "shared", 1).await);
        allowed += ok_count(&sequential(&client, &two, "shared", 1).await);
    }
    assert_eq!(allowed, 10, "1 + burst 9 across the fleet");
    // Keys spread over the nodes (hashed to slots by the client).
    for i in 0..30 {
        let proxy = if i % 2 == 0 { &one } else { &two };
        let statuses = sequential(&client, proxy, &format!("spread-{i}"), 1).await;
        assert_eq!(statuses, [StatusCode::OK]);
    }
    let busy = cluster
        .nodes
        .iter()
        .filter(|node| node.command_calls(&["evalsha", "eval"]).unwrap_or(0) > 0)
        .count();
    assert!(busy >= 2, "only {busy} node(s) ran the script");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_master_failover_is_followed_without_a_restart() {
    let mut cluster = RedisCluster::start_with_replicas(1).expect(NO_CLUSTER);
    let backend = named("app").await;
    let urls = cluster
        .urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    // deny: a 200 proves Redis answered for that key.
    let proxy = fleet_proxy(
        &format!(
            "key = \"header:x-client\"\nrate = \"1r/m\"\nburst = 1\nnodelay = true\nbackend = \"redis\"\nredis_url = [{urls}]\nredis_cluster = true\non_redis_error = \"deny\"\nredis_timeout = \"300ms\""
        ),
        backend.addr(),
    );
    let client = TestClient::new();
    let statuses = sequential(&client, &proxy, "before", 4).await;
    assert_eq!(ok_count(&statuses), 2, "{statuses:?}");
    let master = cluster.masters()[0];
    cluster.nodes[master].stop();
    // Every key answered by Redis again (30 fresh keys cover the stopped master's slots too).
    let mut round = 0;
    wait_until_async(
        Duration::from_secs(25),
        "every key served after the failover",
        || {
            round += 1;
            let client = client.clone();
            let proxy = &proxy;
            async move {
                for i in 0..30 {
                    let statuses = sequential(&client, proxy, &format!("r{round}-{i}"), 1).await;
                    if statuses != [StatusCode::OK] {
                        return false;
                    }
                }
                true
            }
        },
    )
    .await;
    // And the limit is still one limit.
    let statuses = sequential(&client, &proxy, "after", 4).await;
    assert_eq!(ok_count(&statuses), 2, "{statuses:?}");
}
