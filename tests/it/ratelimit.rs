//! Rate limits through the proxy: nginx limit_req semantics, shared zones, real client addresses.

use std::time::{Duration, Instant};

use http::StatusCode;

use crate::harness::*;

fn limited(zone: &str, backend: std::net::SocketAddr, extra_global: &str) -> String {
    format!(
        "[global]\n{extra_global}\n[[listener]]\nlisten = \"127.0.0.1:0\"\n\n[[route]]\npath = \"/\"\nupstream = \"app\"\nrate_limit = [\"api\"]\n\n[rate_limit.api]\n{zone}\n\n[upstream.app]\nservers = [{{ addr = \"{backend}\" }}]\n"
    )
}

/// Sends `n` GETs at once with an optional header; returns the replies.
async fn burst(proxy: &TestProxy, n: usize, header: Option<(&'static str, String)>) -> Vec<Reply> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let client = TestClient::new();
        let url = proxy.url("/");
        let header = header.clone();
        tasks.spawn(async move {
            match header {
                Some((name, value)) => client.get_with(&url, name, &value).await,
                None => client.get(&url).await,
            }
        });
    }
    let mut replies = Vec::new();
    while let Some(reply) = tasks.join_next().await {
        replies.push(reply.expect("request task"));
    }
    replies
}

fn count(replies: &[Reply], status: StatusCode) -> usize {
    replies.iter().filter(|r| r.status == status).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_30_at_10rs_burst_5_nodelay_lets_6_through_with_headers() {
    let backend = named("app").await;
    let proxy = TestProxy::start(&limited(
        "key = \"client_ip\"\nrate = \"10r/s\"\nburst = 5\nnodelay = true",
        backend.addr(),
        "",
    ))
    .await;
    let started = Instant::now();
    let replies = burst(&proxy, 30, None).await;
    let elapsed_ms = started.elapsed().as_millis() as usize;
    let allowed = count(&replies, StatusCode::OK);
    // 1 + burst at once, plus one per 100 ms the burst took to send (none, normally).
    assert!(
        (6..=6 + elapsed_ms / 100).contains(&allowed),
        "{allowed} allowed in {elapsed_ms} ms"
    );
    assert_eq!(count(&replies, StatusCode::TOO_MANY_REQUESTS), 30 - allowed);
    let refused = replies
        .iter()
        .find(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .expect("a refusal");
    assert_eq!(refused.headers["retry-after"], "1");
    assert_eq!(refused.headers["ratelimit-policy"], "\"api\";q=10;w=1");
    assert_eq!(refused.headers["ratelimit"], "\"api\";r=0;t=1");
    assert!(
        refused.body.contains("rate limit exceeded"),
        "{}",
        refused.body
    );
    let ok = replies
        .iter()
        .find(|r| r.status == StatusCode::OK)
        .expect("an allowed reply");
    assert_eq!(ok.headers["ratelimit-policy"], "\"api\";q=10;w=1");
    assert!(ok.headers["ratelimit"]
        .to_str()
        .expect("ascii")
        .starts_with("\"api\";r="));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_nodelay_the_burst_is_spaced_at_the_rate() {
    let backend = named("app").await;
    let proxy = TestProxy::start(&limited("rate = \"20r/s\"\nburst = 5", backend.addr(), "")).await;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let (client, url) = (TestClient::new(), proxy.url("/"));
        tasks.spawn(async move {
            let reply = client.get(&url).await;
            (reply.status, started.elapsed())
        });
    }
    let mut finished = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (status, at) = done.expect("request task");
        assert_eq!(status, StatusCode::OK);
        finished.push(at);
    }
    finished.sort();
    // 20 r/s: one request every 50 ms, so the sixth waits 250 ms (generous upper bound for a busy machine).
    assert!(finished[0] < Duration::from_millis(150), "{finished:?}");
    assert!(finished[5] >= Duration::from_millis(240), "{finished:?}");
    assert!(finished[5] < Duration::from_millis(2_000), "{finished:?}");
    for pair in finished.windows(2).skip(1) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(30),
            "not spaced: {finished:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_keys_have_their_own_buckets_and_keyless_requests_pass() {
    let backend = named("app").await;
    let proxy = TestProxy::start(&limited(
        "key = \"header:x-api-key\"\nrate = \"1r/m\"\nburst = 1\nnodelay = true",
        backend.addr(),
        "",
    ))
    .await;
    for key in ["alice", "bob"] {
        let replies = burst(&proxy, 4, Some(("x-api-key", key.to_string()))).await;
        assert_eq!(count(&replies, StatusCode::OK), 2, "{key}");
    }
    let keyless = burst(&proxy, 5, None).await;
    assert_eq!(
        count(&keyless, StatusCode::OK),
        5,
        "a request without the key is not limited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_routes_sharing_a_zone_share_one_limit() {
    let backend = named("app").await;
    let proxy = TestProxy::start(&format!(
        "[[listener]]\nlisten = \"127.0.0.1:0\"\n[[route]]\npath = \"/a\"\nupstream = \"app\"\nrate_limit = [\"shared\"]\n[[route]]\npath = \"/b\"\nupstream = \"app\"\nrate_limit = [\"shared\"]\n[rate_limit.shared]\nrate = \"1r/m\"\nburst = 2\nnodelay = true\n[upstream.app]\nservers = [{{ addr = \"{}\" }}]\n",
        backend.addr()
    ))
    .await;
    let client = TestClient::new();
    let mut statuses = Vec::new();
    for path in ["/a", "/b", "/a", "/b", "/a", "/b"] {
        statuses.push(client.get(&proxy.url(path)).await.status.as_u16());
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 429, 429, 429],
        "one limit for both routes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_counts_but_never_refuses() {
    let backend = named("app").await;
    let proxy = TestProxy::start(&limited(
        "rate = \"1r/m\"\nnodelay = true\ndry_run = true",
        backend.addr(),
        "",
    ))
    .await;
    let replies = burst(&proxy, 10, None).await;
    assert_eq!(count(&replies, StatusCode::OK), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_status_and_buckets_kept_across_a_reload() {
    let backend = named("app").await;
    let zone = "rate = \"1r/m\"\nburst = 1\nnodelay = true\nstatus = 503";
    let mut proxy = TestProxy::start(&limited(zone, backend.addr(), "")).await;
    let replies = burst(&proxy, 3, None).await;
    assert_eq!(count(&replies, StatusCode::SERVICE_UNAVAILABLE), 1);
    let same = fulcrum::Config::parse(
        &limited(zone, backend.addr(), "max_body_size = \"2m\""),
        std::path::Path::new("r.toml"),
    )
    .expect("a valid config");
    proxy.proxy.reload(same).expect("reload");
    assert_eq!(
        TestClient::new().get(&proxy.url("/")).await.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "an unchanged zone keeps its buckets"
    );
    let faster = fulcrum::Config::parse(
        &limited(
            "rate = \"100r/s\"\nburst = 1\nnodelay = true",
            backend.addr(),
            "",
        ),
        std::path::Path::new("r.toml"),
    )
    .expect("a valid config");
    proxy.proxy.reload(faster).expect("reload");
    assert_eq!(
        TestClient::new().get(&proxy.url("/")).await.status,
        StatusCode::OK,
        "a new rate starts fresh"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxies_give_the_real_client_to_limits_and_x_real_ip() {
    let backend = backend_with(|request: http::Request<hyper::body::Incoming>| async move {
        let real = request
            .headers()
            .get("x-real-ip")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        text(StatusCode::OK, real)
    })
    .await;
    let zone = "rate = \"1r/m\"\nnodelay = true";
    let trusted = TestProxy::start(&limited(
        zone,
        backend.addr(),
        "trusted_proxies = [\"127.0.0.0/8\"]",
    ))
    .await;
    let client = TestClient::new();
    for (xff, expect_ok) in [
        ("203.0.113.5", true),
        ("203.0.113.6", true),
        ("203.0.113.5", false),
    ] {
        let reply = client
            .get_with(&trusted.url("/"), "x-forwarded-for", xff)
            .await;
        assert_eq!(
            reply.status == StatusCode::OK,
            expect_ok,
            "{xff}: {}",
            reply.status
        );
        if expect_ok {
            assert_eq!(
                reply.body, xff,
                "X-Real-IP is the client from X-Forwarded-For"
            );
        }
    }
    // Without trusted_proxies the header is a claim: every request is the peer's, one bucket.
    let untrusted = TestProxy::start(&limited(zone, backend.addr(), "")).await;
    let first = client
        .get_with(&untrusted.url("/"), "x-forwarded-for", "198.51.100.1")
        .await;
    assert_eq!(first.body, "127.0.0.1");
    let spoofed = client
        .get_with(&untrusted.url("/"), "x-forwarded-for", "198.51.100.2")
        .await;
    assert_eq!(
        spoofed.status,
        StatusCode::TOO_MANY_REQUESTS,
        "a spoofed header changes nothing"
    );
}

fn redis_zone(redis: &RedisServer, on_error: &str) -> String {
    format!(
        "key = \"header:x-client\"\nrate = \"1r/m\"\nburst = 9\nnodelay = true\nbackend = \"redis\"\nredis_url = \"{}\"\non_redis_error = \"{on_error}\"\nredis_timeout = \"200ms\"",
        redis.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_sharing_a_redis_zone_enforce_one_limit() {
    let redis = RedisServer::start().expect("start redis-server: run the tests with scripts/test, which installs it, or apt-get install -y redis-server");
    let backend = named("app").await;
    let one = TestProxy::start(&limited(&redis_zone(&redis, "allow"), backend.addr(), "")).await;
    let two = TestProxy::start(&limited(&redis_zone(&redis, "allow"), backend.addr(), "")).await;
    let client = TestClient::new();
    let mut allowed = 0;
    for round in 0..20 {
        for proxy in [&one, &two] {
            let reply = client
                .get_with(&proxy.url("/"), "x-client", "shared-client")
                .await;
            match reply.status {
                StatusCode::OK => allowed += 1,
                StatusCode::TOO_MANY_REQUESTS => {
                    assert_eq!(reply.headers["ratelimit-policy"], "\"api\";q=1;w=60");
                }
                other => panic!("round {round}: unexpected {other}"),
            }
        }
    }
    // 1 + burst 9 in all, whichever proxy the requests went through.
    assert_eq!(allowed, 10);
    // Another client has its own bucket.
    let other = client
        .get_with(&one.url("/"), "x-client", "other-client")
        .await;
    assert_eq!(other.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_redis_follows_on_redis_error() {
    let mut redis =
        RedisServer::start().expect("start redis-server: run the tests with scripts/test, which installs it, or apt-get install -y redis-server");
    let backend = named("app").await;
    let allow = TestProxy::start(&limited(&redis_zone(&redis, "allow"), backend.addr(), "")).await;
    let deny = TestProxy::start(&limited(&redis_zone(&redis, "deny"), backend.addr(), "")).await;
    let client = TestClient::new();
    for proxy in [&allow, &deny] {
        assert_eq!(
            client
                .get_with(&proxy.url("/"), "x-client", "c")
                .await
                .status,
            StatusCode::OK
        );
    }
    redis.stop();
    for _ in 0..20 {
        let reply = client.get_with(&allow.url("/"), "x-client", "c").await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "allow: requests go on without Redis"
        );
        let reply = client.get_with(&deny.url("/"), "x-client", "c").await;
        assert_eq!(
            reply.status,
            StatusCode::TOO_MANY_REQUESTS,
            "deny: requests are refused without Redis"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_per_client_closes_the_extra_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = named("app").await;
    let proxy = TestProxy::start(&format!(
        "[[listener]]\nlisten = \"127.0.0.1:0\"\nmax_connections_per_client = 2\n[[route]]\npath = \"/\"\nupstream = \"app\"\n[upstream.app]\nservers = [{{ addr = \"{}\" }}]\n",
        backend.addr()
    ))
    .await;
    let addr = proxy.url("").trim_start_matches("http://").to_string();
    let request = b"GET / HTTP/1.1\r\nHost: limit.test\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        stream.write_all(request).await.expect("write");
        let mut buf = [0u8; 12];
        stream.read_exact(&mut buf).await.expect("an answer");
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(stream);
    }
    // The third keep-alive connection from the same address is closed without an answer.
    let mut third = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let _ = third.write_all(request).await;
    let mut buf = [0u8; 12];
    let read = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
        .await
        .expect("closed promptly");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the third connection was served: {read:?}"
    );
    // Closing one frees a slot.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut stream = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        let _ = stream.write_all(request).await;
        let mut buf = [0u8; 12];
        if stream.read_exact(&mut buf).await.is_ok() && &buf == b"HTTP/1.1 200" {
            break;
        }
        assert!(Instant::now() < deadline, "the freed slot was never reused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
