//! `strategy = "least_time"` through the binary: a slow replica gets little traffic, a fail-fast one
//! few picks, a recovered one its share back, and the estimates survive a reload; every strategy shows
//! them in `/status` and `/metrics`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fulcrum::demo::Backend;
use http::StatusCode;

use crate::harness::*;

/// A backend answering 200 with `name` after `delay_ms` (changeable while it runs).
async fn delayed(name: &'static str, delay_ms: Arc<AtomicU64>) -> Backend {
    backend_with(move |_request| {
        let delay_ms = Arc::clone(&delay_ms);
        async move {
            let delay = delay_ms.load(Ordering::Relaxed);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            text(StatusCode::OK, name)
        }
    })
    .await
}

fn servers_of(backends: &[&Backend]) -> String {
    backends
        .iter()
        .map(|b| format!("{{ addr = \"{}\" }}", b.addr()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Sends `total` GETs from `clients` concurrent clients; returns how many got 200.
async fn load(url: String, total: usize, clients: usize) -> usize {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (url, next) = (url.clone(), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            let client = TestClient::new();
            let mut ok = 0;
            while next.fetch_add(1, Ordering::Relaxed) < total as u64 {
                if client.get(&url).await.status == StatusCode::OK {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for task in tasks {
        ok += task.await.expect("a client task");
    }
    ok
}

/// Three replicas, the first 20 times slower than the others; 300 requests from 8 clients.
async fn slow_share(strategy: &str) -> (usize, usize) {
    let slow = delayed("slow", Arc::new(AtomicU64::new(100))).await;
    let a = delayed("a", Arc::new(AtomicU64::new(5))).await;
    let b = delayed("b", Arc::new(AtomicU64::new(5))).await;
    let binary = AdminBinary::start(
        "",
        &format!("strategy = \"{strategy}\"\nmax_fails = 0"),
        &servers_of(&[&slow, &a, &b]),
    );
    let ok = load(format!("http://{}/", binary.addr), 300, 8).await;
    (slow.requests(), ok)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_time_sends_a_slow_replica_little_where_round_robin_sends_it_a_third() {
    let (least_time, ok) = slow_share("least_time").await;
    assert_eq!(ok, 300);
    assert!(
        least_time < 30,
        "least_time sent {least_time} of 300 to the slow replica"
    );
    let (round_robin, ok) = slow_share("round_robin").await;
    assert_eq!(ok, 300);
    assert!(
        (90..=110).contains(&round_robin),
        "round_robin sent {round_robin} of 300 to the slow replica"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_fails_fast_gets_few_picks_and_every_client_gets_200() {
    let failing =
        backend_with(|_request| async move { text(StatusCode::SERVICE_UNAVAILABLE, "failing") })
            .await;
    let a = delayed("a", Arc::new(AtomicU64::new(5))).await;
    let b = delayed("b", Arc::new(AtomicU64::new(5))).await;
    // Passive health off: least_time alone keeps the fast failures from winning.
    let binary = AdminBinary::start(
        "",
        "strategy = \"least_time\"\nmax_fails = 0\nretry_on = [\"error\", \"timeout\", \"http_503\"]",
        &servers_of(&[&failing, &a, &b]),
    );
    let ok = load(format!("http://{}/", binary.addr), 300, 8).await;
    assert_eq!(ok, 300, "every request answered by a working replica");
    assert!(
        failing.requests() < 15,
        "the fail-fast replica got {} of 300 picks",
        failing.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_replica_gets_traffic_back() {
    let slow_delay = Arc::new(AtomicU64::new(60));
    let slow = delayed("slow", Arc::clone(&slow_delay)).await;
    let a = delayed("a", Arc::new(AtomicU64::new(5))).await;
    let b = delayed("b", Arc::new(AtomicU64::new(5))).await;
    let binary = AdminBinary::start(
        "",
        "strategy = \"least_time\"\nmax_fails = 0",
        &servers_of(&[&slow, &a, &b]),
    );
    let url = format!("http://{}/", binary.addr);
    assert_eq!(load(url.clone(), 200, 6).await, 200);
    let while_slow = slow.requests();
    assert!(while_slow < 30, "{while_slow} of 200 while slow");
    // It recovers; six clients keep sending until its share is back (bounded).
    slow_delay.store(5, Ordering::Relaxed);
    let recovered_at = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let background: Vec<_> = (0..6)
        .map(|_| {
            let (url, stop) = (url.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                let client = TestClient::new();
                while !stop.load(Ordering::Relaxed) {
                    assert_eq!(client.get(&url).await.status, StatusCode::OK);
                }
            })
        })
        .collect();
    let before = slow.requests();
    wait_until(
        Duration::from_secs(20),
        "the recovered replica to take 20 more requests",
        || slow.requests() >= before + 20,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for client in background {
        client.await.expect("background client");
    }
    let took = recovered_at.elapsed();
    assert!(took < Duration::from_secs(15), "back after {took:?}");
}

/// `latency_ms` of each server of `app` in `/status`, in config order.
fn latencies(doc: &serde_json::Value) -> Vec<Option<f64>> {
    doc["pools"][0]["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .map(|s| s["latency_ms"].as_f64())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn estimates_show_for_every_strategy_and_survive_a_reload() {
    let slow = delayed("slow", Arc::new(AtomicU64::new(80))).await;
    let fast = delayed("fast", Arc::new(AtomicU64::new(2))).await;
    let mut binary = AdminBinary::start(
        "",
        "strategy = \"round_robin\"",
        &servers_of(&[&slow, &fast]),
    );
    let url = format!("http://{}/", binary.addr);
    assert_eq!(load(url.clone(), 20, 2).await, 20);
    let before = latencies(&binary.status().await);
    let (Some(slow_ms), Some(fast_ms)) = (before[0], before[1]) else {
        panic!("no estimate after 20 requests: {before:?}");
    };
    assert!(slow_ms > 40.0 && fast_ms < 40.0, "{before:?}");
    let metrics = binary.metrics().await;
    let slow_seconds = sample(
        &metrics,
        "fulcrum_upstream_server_latency_seconds",
        &[&format!("server=\"{}\"", slow.addr())],
    );
    assert!(slow_seconds > 0.04, "metric {slow_seconds}");

    // A reload to least_time keeps each server's estimate: the slow one is avoided from the start.
    binary.reload_replacing("strategy = \"round_robin\"", "strategy = \"least_time\"");
    let after = latencies(&binary.status().await);
    assert!(
        after[0].is_some_and(|ms| ms > 20.0),
        "the slow server's estimate was kept: {after:?}"
    );
    let slow_before = slow.requests();
    assert_eq!(load(url, 20, 1).await, 20);
    assert!(
        slow.requests() - slow_before <= 1,
        "after the reload the slow server took {} of 20",
        slow.requests() - slow_before
    );
}

#[test]
fn least_time_is_a_valid_key_and_a_bad_mode_names_its_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fulcrum.toml");
    let config = |mode: &str| {
        format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n[[route]]\nupstream = \"app\"\n\
             [upstream.app]\nstrategy = \"least_time\"\nleast_time = \"{mode}\"\n\
             servers = [{{ addr = \"127.0.0.1:1\" }}]\n"
        )
    };
    for (mode, ok) in [("header", true), ("last_byte", true), ("first_byte", false)] {
        std::fs::write(&path, config(mode)).expect("write");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_fulcrum"))
            .args(["check", "-c"])
            .arg(&path)
            .output()
            .expect("run fulcrum check");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), ok, "{mode}: {stderr}");
        if !ok {
            assert!(
                stderr.contains("fulcrum.toml")
                    && stderr.contains(":7")
                    && stderr.contains("least_time"),
                "names file, line and key: {stderr}"
            );
        }
    }
}
