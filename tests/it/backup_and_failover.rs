//! Backups, passive health (nginx max_fails / fail_timeout) and retries.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fulcrum::demo::Backend;
use http::{Request, StatusCode};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_serves_only_when_every_primary_is_down() {
    let a = named("a").await;
    let b = named("b").await;
    let spare = named("spare").await;
    let proxy = TestProxy::start(&one_pool(&format!(
        "servers = [{{ addr = \"{}\" }}, {{ addr = \"{}\" }}, {{ addr = \"{}\", backup = true }}]",
        a.addr(),
        b.addr(),
        spare.addr()
    )))
    .await;
    let client = TestClient::new();
    for _ in 0..20 {
        let reply = client.get(&proxy.url("/")).await;
        assert_ne!(reply.body, "spare");
    }
    assert_eq!(spare.requests(), 0);
    a.stop().await;
    b.stop().await;
    for _ in 0..20 {
        let reply = client.get(&proxy.url("/")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, "spare");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gets_fail_over_with_no_client_error_when_one_of_three_is_down() {
    let a = named("a").await;
    let b = named("b").await;
    let dead = refusing_addr();
    let proxy = TestProxy::start(&one_pool(&format!(
        "strategy = \"round_robin\"\nservers = [{{ addr = \"{}\" }}, {{ addr = \"{dead}\" }}, {{ addr = \"{}\" }}]",
        a.addr(),
        b.addr()
    )))
    .await;
    let client = TestClient::new();
    for _ in 0..300 {
        let reply = client.get(&proxy.url("/")).await;
        assert_eq!(reply.status, StatusCode::OK, "client saw {}", reply.body);
    }
    assert_eq!(a.requests() + b.requests(), 300);
    // max_fails = 1 by default: after the first failure the dead server is out for fail_timeout (10s),
    // so the survivors share the load evenly.
    assert!(
        a.requests().abs_diff(b.requests()) <= 2,
        "a {} b {}",
        a.requests(),
        b.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_returns_after_fail_timeout_through_one_probe() {
    let a = named("a").await;
    let comeback = refusing_addr();
    let proxy = TestProxy::start(&one_pool(&format!(
        "max_fails = 1\nfail_timeout = \"300ms\"\nservers = [{{ addr = \"{}\" }}, {{ addr = \"{comeback}\" }}]",
        a.addr()
    )))
    .await;
    let client = TestClient::new();
    for _ in 0..4 {
        assert_eq!(client.get(&proxy.url("/")).await.status, StatusCode::OK);
    }
    let revived = Backend::named("revived", comeback.port(), Duration::ZERO)
        .await
        .expect("rebind the revived server's port");
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while revived.requests() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the revived server got no probe"
        );
        let reply = client.get(&proxy.url("/")).await;
        assert_eq!(reply.status, StatusCode::OK);
        seen.push(reply.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Back in rotation: round robin alternates again.
    let mut next = Vec::new();
    for _ in 0..10 {
        next.push(client.get(&proxy.url("/")).await.body);
    }
    let revived_share = next.iter().filter(|n| *n == "revived").count();
    assert_eq!(
        revived_share, 5,
        "after the probe the server is fully back: {next:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_server_pool_is_never_marked_down() {
    let addr = refusing_addr();
    let proxy = TestProxy::start(&one_pool(&format!(
        "max_fails = 1\nfail_timeout = \"1h\"\nservers = [{{ addr = \"{addr}\" }}]"
    )))
    .await;
    let client = TestClient::new();
    for _ in 0..3 {
        assert_eq!(
            client.get(&proxy.url("/")).await.status,
            StatusCode::BAD_GATEWAY
        );
    }
    let _up = Backend::named("up", addr.port(), Duration::ZERO)
        .await
        .expect("rebind the server's port");
    // With fail_timeout = 1h a down server would stay out; a lone server must not.
    let reply = client.get(&proxy.url("/")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "up");
}

fn failing_then(
    status: StatusCode,
    name: &'static str,
) -> impl Fn(http::Request<hyper::body::Incoming>) -> std::future::Ready<fulcrum::demo::HandlerResult>
       + Clone {
    move |_| std::future::ready(text(status, name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_listed_in_retry_on_is_retried_on_another_server() {
    let broken = backend_with(failing_then(StatusCode::SERVICE_UNAVAILABLE, "broken")).await;
    let good = named("good").await;
    let proxy = TestProxy::start(&one_pool(&format!(
        "retry_on = [\"error\", \"timeout\", \"http_503\"]\nservers = [{{ addr = \"{}\" }}, {{ addr = \"{}\" }}]",
        broken.addr(),
        good.addr()
    )))
    .await;
    let client = TestClient::new();
    for _ in 0..10 {
        let reply = client.get(&proxy.url("/")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, "good");
    }
    assert!(broken.requests() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_not_in_retry_on_passes_through() {
    let broken = backend_with(failing_then(StatusCode::SERVICE_UNAVAILABLE, "broken")).await;
    let good = named("good").await;
    let proxy = TestProxy::start(&one_pool(&format!(
        "servers = [{{ addr = \"{}\" }}, {{ addr = \"{}\" }}]",
        broken.addr(),
        good.addr()
    )))
    .await;
    let client = TestClient::new();
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(client.get(&proxy.url("/")).await.status.as_u16());
    }
    // Default retry_on is error + timeout: a 503 is an answer, passed through, and does not take the server out.
    assert_eq!(
        statuses.iter().filter(|&&s| s == 503).count(),
        5,
        "{statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_is_not_retried_once_sent_but_get_is() {
    let calls = Arc::new(AtomicUsize::new(0));
    let closer_calls = Arc::clone(&calls);
    // Reads the request, then drops the connection without an answer.
    let closer = backend_with(move |_request| {
        closer_calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Err::<http::Response<_>, _>("drop the connection".into()))
    })
    .await;
    let good = named("good").await;
    let proxy = TestProxy::start(&one_pool(&format!(
        "max_fails = 0\nservers = [{{ addr = \"{}\" }}, {{ addr = \"{}\" }}]",
        closer.addr(),
        good.addr()
    )))
    .await;
    let client = TestClient::new();
    // Round robin starts with the first server: the closer.
    let post = client
        .send(
            Request::post(proxy.url("/"))
                .body(body("order=1"))
                .expect("POST"),
        )
        .await;
    assert_eq!(post.status, StatusCode::BAD_GATEWAY);
    assert_eq!(good.requests(), 0, "a sent POST must not be replayed");
    let get = client.get(&proxy.url("/")).await;
    let get2 = client.get(&proxy.url("/")).await;
    assert_eq!((get.status, get2.status), (StatusCode::OK, StatusCode::OK));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the closer saw the POST and one GET"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_is_retried_when_it_was_never_sent() {
    let good = named("good").await;
    let dead = refusing_addr();
    let proxy = TestProxy::start(&one_pool(&format!(
        "servers = [{{ addr = \"{dead}\" }}, {{ addr = \"{}\" }}]",
        good.addr()
    )))
    .await;
    let client = TestClient::new();
    let reply = client
        .send(
            Request::post(proxy.url("/"))
                .body(body("x=1"))
                .expect("POST"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "good");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_server_down_answers_502_with_a_clear_body() {
    let proxy = TestProxy::start(&one_pool(&format!(
        "servers = [{{ addr = \"{}\" }}, {{ addr = \"{}\" }}]",
        refusing_addr(),
        refusing_addr()
    )))
    .await;
    let client = TestClient::new();
    let first = client.get(&proxy.url("/")).await;
    assert_eq!(first.status, StatusCode::BAD_GATEWAY);
    // Both are now out for fail_timeout: the proxy says so without trying.
    let second = client.get(&proxy.url("/")).await;
    assert_eq!(second.status, StatusCode::BAD_GATEWAY);
    assert!(
        second.body.contains("no upstream server available"),
        "{}",
        second.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_bounded_by_the_retries_key() {
    let counters: Vec<Backend> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(backend_with(failing_then(StatusCode::BAD_GATEWAY, "bad")).await);
        }
        v
    };
    let list: Vec<String> = counters
        .iter()
        .map(|b| format!("{{ addr = \"{}\" }}", b.addr()))
        .collect();
    let proxy = TestProxy::start(&one_pool(&format!(
        "retries = 1\nmax_fails = 0\nretry_on = [\"http_502\"]\nservers = [{}]",
        list.join(", ")
    )))
    .await;
    let reply = TestClient::new().get(&proxy.url("/")).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    let attempts: usize = counters.iter().map(Backend::requests).sum();
    assert_eq!(attempts, 2, "retries = 1 means two attempts in all");
}
