//! Overload: `max_conns` per server with a bounded queue (`queue`, `queue_timeout`); beyond it, a fast
//! 503 instead of requests piling up.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use hyper::body::Incoming;

use crate::harness::{backend_with, one_pool, text, wait_until, TestClient, TestProxy};

/// A backend that holds every request until the semaphore gives it a permit, and records the most
/// requests it ever had at once.
async fn gated_backend() -> (
    fulcrum::demo::Backend,
    Arc<tokio::sync::Semaphore>,
    Arc<AtomicUsize>,
) {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let now = Arc::new(AtomicUsize::new(0));
    let (held, most) = (Arc::clone(&gate), Arc::clone(&peak));
    let backend = backend_with(move |_request: Request<Incoming>| {
        let (held, most, now) = (Arc::clone(&held), Arc::clone(&most), Arc::clone(&now));
        async move {
            let at_once = now.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(at_once, Ordering::SeqCst);
            if let Ok(permit) = held.acquire().await {
                permit.forget();
            }
            now.fetch_sub(1, Ordering::SeqCst);
            text(StatusCode::OK, "ok")
        }
    })
    .await;
    (backend, gate, peak)
}

fn queued(proxy: &TestProxy) -> usize {
    let snapshot = proxy.proxy.live().snapshot();
    snapshot.pools[0]
        .queue
        .as_ref()
        .map_or(0, |queue| queue.len())
}

#[tokio::test]
async fn max_conns_queues_up_to_queue_and_answers_503_beyond_it_at_once() {
    let (backend, gate, peak) = gated_backend().await;
    let proxy = TestProxy::start(&one_pool(&format!(
        "queue = 3\nqueue_timeout = \"10s\"\nservers = [{{ addr = \"{}\", max_conns = 2 }}]",
        backend.addr()
    )))
    .await;
    let client = TestClient::new();
    let url = proxy.url("/");
    let mut sent = Vec::new();
    for _ in 0..2 {
        let (client, url) = (client.clone(), url.clone());
        sent.push(tokio::spawn(async move { client.get(&url).await.status }));
    }
    wait_until(
        Duration::from_secs(5),
        "two requests at the backend",
        || backend.requests() == 2,
    )
    .await;
    for _ in 0..3 {
        let (client, url) = (client.clone(), url.clone());
        sent.push(tokio::spawn(async move { client.get(&url).await.status }));
    }
    wait_until(
        Duration::from_secs(5),
        "three requests in the queue",
        || queued(&proxy) == 3,
    )
    .await;

    // The queue is full: the next request is refused at once, while the others are still held.
    let refused = client.get(&url).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        refused.headers.get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    assert_eq!(backend.requests(), 2);

    // Released, the queued requests are served, never more than max_conns at once.
    gate.add_permits(5);
    for request in sent {
        assert_eq!(request.await.expect("request task"), StatusCode::OK);
    }
    assert_eq!(backend.requests(), 5);
    assert_eq!(
        peak.load(Ordering::SeqCst),
        2,
        "the server had more than max_conns at once"
    );
    assert_eq!(queued(&proxy), 0);
}

#[tokio::test]
async fn a_queued_request_gets_503_when_queue_timeout_passes() {
    let (backend, gate, _) = gated_backend().await;
    // max_conns on the upstream applies to each of its servers.
    let proxy = TestProxy::start(&one_pool(&format!(
        "max_conns = 1\nqueue = 100\nqueue_timeout = \"500ms\"\nservers = [{{ addr = \"{}\" }}]",
        backend.addr()
    )))
    .await;
    let client = TestClient::new();
    let url = proxy.url("/");
    let first = {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move { client.get(&url).await.status })
    };
    wait_until(
        Duration::from_secs(5),
        "the first request at the backend",
        || backend.requests() == 1,
    )
    .await;
    let started = Instant::now();
    let waited = client.get(&url).await;
    assert_eq!(waited.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "answered after {:?}, before queue_timeout",
        started.elapsed()
    );
    assert_eq!(backend.requests(), 1);
    gate.add_permits(1);
    assert_eq!(first.await.expect("request task"), StatusCode::OK);
}

#[tokio::test]
async fn a_server_at_max_conns_is_skipped_while_another_has_room() {
    let (busy, gate, _) = gated_backend().await;
    let free = crate::harness::named("free").await;
    let proxy = TestProxy::start(&one_pool(&format!(
        "strategy = \"round_robin\"\nservers = [{{ addr = \"{}\", max_conns = 1 }}, {{ addr = \"{}\", max_conns = 1000 }}]",
        busy.addr(),
        free.addr()
    )))
    .await;
    let client = TestClient::new();
    let url = proxy.url("/");
    let held = {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move { client.get(&url).await.status })
    };
    wait_until(
        Duration::from_secs(5),
        "one request at the busy server",
        || busy.requests() == 1,
    )
    .await;
    // The busy server is full: every other request goes to the free one, none fails.
    for _ in 0..20 {
        let reply = client.get(&url).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (StatusCode::OK, "free")
        );
    }
    assert_eq!(busy.requests(), 1);
    gate.add_permits(1);
    assert_eq!(held.await.expect("request task"), StatusCode::OK);
}

#[tokio::test]
async fn without_a_queue_a_full_pool_answers_503_at_once() {
    let (backend, gate, _) = gated_backend().await;
    let proxy = TestProxy::start(&one_pool(&format!(
        "servers = [{{ addr = \"{}\", max_conns = 1 }}]",
        backend.addr()
    )))
    .await;
    let client = TestClient::new();
    let url = proxy.url("/");
    let held = {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move { client.get(&url).await.status })
    };
    wait_until(Duration::from_secs(5), "one request at the server", || {
        backend.requests() == 1
    })
    .await;
    for _ in 0..10 {
        assert_eq!(
            client.get(&url).await.status,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    assert_eq!(backend.requests(), 1);
    gate.add_permits(1);
    assert_eq!(held.await.expect("request task"), StatusCode::OK);
    // Freed, the server takes requests again.
    gate.add_permits(1);
    assert_eq!(client.get(&url).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_flat_under_a_load_the_upstream_cannot_serve() {
    // An upstream that reads requests and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let stuck = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fulcrum.toml");
    std::fs::write(
        &path,
        format!(
            "[[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n[[route]]\npath = \"/\"\nupstream = \"app\"\n[upstream.app]\nread_timeout = \"2s\"\nqueue = 100\nqueue_timeout = \"1s\"\nservers = [{{ addr = \"{stuck}\", max_conns = 4 }}]\n"
        ),
    )
    .expect("write the config");
    let mut fulcrum = crate::harness::FulcrumProcess::spawn(&path, &[]);
    let addr = fulcrum.listener_addr("public");
    let url = format!("http://{addr}/");

    // Clients take requests from one shared count, so the fast 503s do most of the work and the run
    // ends about one queue_timeout after the last request starts.
    let load = |requests: usize| {
        let url = url.clone();
        async move {
            let left = Arc::new(AtomicUsize::new(requests));
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..200 {
                let (client, url, left) = (TestClient::new(), url.clone(), Arc::clone(&left));
                tasks.spawn(async move {
                    let mut statuses = Vec::new();
                    while left
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                        .is_ok()
                    {
                        statuses.push(client.get(&url).await.status);
                    }
                    statuses
                });
            }
            let mut statuses = Vec::new();
            while let Some(done) = tasks.join_next().await {
                statuses.extend(done.expect("client task"));
            }
            statuses
        }
    };
    let warmup = load(1_000).await;
    assert!(warmup
        .iter()
        .all(|s| *s == StatusCode::SERVICE_UNAVAILABLE || *s == StatusCode::GATEWAY_TIMEOUT));
    let before = fulcrum.rss_kib();
    let statuses = load(10_000).await;
    let after = fulcrum.rss_kib();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    assert!(refused >= 9_000, "only {refused} of 10000 got the fast 503");
    // Bounded queue, bounded memory: 10,000 requests the upstream never serves add no more than a few MB
    // (allocator noise), not one buffer per request.
    assert!(
        after <= before + 8 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    fulcrum.read_log();
    assert!(!fulcrum.log.iter().any(|line| line.contains("panicked")));
}
