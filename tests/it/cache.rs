//! The response cache through the binary: HIT/MISS/EXPIRED, freshness rules, Vary, cache_valid,
//! max_entry_size, cache_lock, stale answers, background update, conditional requests, purge, reload,
//! metrics and eviction.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fulcrum::demo::Backend;
use http::{Request, StatusCode};
use hyper::body::Incoming;

use crate::harness::*;

/// What the origin answers: status, headers, body.
type Answer = (StatusCode, Vec<(&'static str, String)>, String);

/// A backend answering with `answer(request, n)`, `n` counting its requests from 1.
async fn origin<F>(answer: F) -> Backend
where
    F: Fn(&http::request::Parts, usize) -> Answer + Send + Sync + 'static,
{
    let answer = Arc::new(answer);
    let count = Arc::new(AtomicUsize::new(0));
    backend_with(move |request: Request<Incoming>| {
        let (answer, count) = (Arc::clone(&answer), Arc::clone(&count));
        async move {
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            let (parts, _) = request.into_parts();
            let (status, headers, body) = answer(&parts, n);
            let mut response = http::Response::new(demo_body(body));
            *response.status_mut() = status;
            for (name, value) in headers {
                response
                    .headers_mut()
                    .append(name, value.parse().expect("a valid header value"));
            }
            Ok(response)
        }
    })
    .await
}

/// 200 with `cache_control` and body `v{n}`.
fn versioned(cache_control: &'static str) -> impl Fn(&http::request::Parts, usize) -> Answer {
    move |_, n| {
        (
            StatusCode::OK,
            vec![("cache-control", cache_control.to_string())],
            format!("v{n}"),
        )
    }
}

/// The binary with zone `pages` (`zone_keys`) and one catch-all route to `backend` cached in it
/// (`route_keys`).
fn cached(zone_keys: &str, route_keys: &str, backend: SocketAddr) -> AdminBinary {
    AdminBinary::from_toml(&format!(
        "[cache.pages]\n{zone_keys}\n\n\
         [[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[route]]\npath = \"/\"\nupstream = \"app\"\ncache = \"pages\"\n{route_keys}\n\n\
         [upstream.app]\nmax_fails = 0\nservers = [{{ addr = \"{backend}\" }}]\n"
    ))
}

fn url(binary: &AdminBinary, path: &str) -> String {
    format!("http://{}{path}", binary.addr)
}

fn cache_status(reply: &Reply) -> &str {
    reply
        .headers
        .get("x-cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(none)")
}

/// GETs `path` until `done` holds for the reply (bounded by 5 s); returns that reply.
async fn poll_until(
    client: &TestClient,
    address: &str,
    what: &str,
    done: impl Fn(&Reply) -> bool,
) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = client.get(address).await;
        if done(&reply) {
            return reply;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {} {:?} after 5 s",
            cache_status(&reply),
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn miss_then_hit_with_age_reaches_the_backend_once() {
    let backend = origin(versioned("max-age=60")).await;
    let binary = cached("", "", backend.addr());
    let client = TestClient::new();
    let first = client.get(&url(&binary, "/a")).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(cache_status(&first), "MISS");
    assert_eq!(first.body, "v1");
    let second = client.get(&url(&binary, "/a")).await;
    assert_eq!(cache_status(&second), "HIT");
    assert_eq!(second.body, "v1");
    let age: u64 = second.headers["age"]
        .to_str()
        .expect("Age is text")
        .parse()
        .expect("Age is a number");
    assert!(age < 60, "age {age}");
    assert_eq!(backend.requests(), 1);
    let other = client.get(&url(&binary, "/a?x=1")).await;
    assert_eq!(cache_status(&other), "MISS", "the query is part of the key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_are_served_from_the_same_entries() {
    let backend = origin(versioned("max-age=60")).await;
    let binary = cached("", "", backend.addr());
    let first = TestClient::new().get(&url(&binary, "/a")).await;
    assert_eq!(cache_status(&first), "MISS");
    let h2 = TestClient::h2c().get(&url(&binary, "/a")).await;
    assert_eq!(
        (h2.status, cache_status(&h2), h2.body.as_str()),
        (StatusCode::OK, "HIT", "v1")
    );
    assert_eq!(backend.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_past_max_age_is_expired_and_fetched_again() {
    let backend = origin(versioned("max-age=1")).await;
    let binary = cached("", "", backend.addr());
    let client = TestClient::new();
    assert_eq!(cache_status(&client.get(&url(&binary, "/a")).await), "MISS");
    let expired = poll_until(&client, &url(&binary, "/a"), "EXPIRED", |r| {
        cache_status(r) == "EXPIRED"
    })
    .await;
    assert_eq!(expired.body, "v2");
    assert_eq!(backend.requests(), 2);
    assert_eq!(cache_status(&client.get(&url(&binary, "/a")).await), "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_vary_variant_is_an_entry_of_its_own() {
    let backend = origin(|parts, n| {
        let language = parts
            .headers
            .get("accept-language")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_string();
        (
            StatusCode::OK,
            vec![
                ("cache-control", "max-age=60".to_string()),
                ("vary", "Accept-Language".to_string()),
            ],
            format!("{language}{n}"),
        )
    })
    .await;
    let binary = cached("", "", backend.addr());
    let client = TestClient::new();
    let get = |language: &'static str| {
        let client = client.clone();
        let address = url(&binary, "/v");
        async move { client.get_with(&address, "accept-language", language).await }
    };
    let en = get("en").await;
    assert_eq!((cache_status(&en), en.body.as_str()), ("MISS", "en1"));
    let de = get("de").await;
    assert_eq!((cache_status(&de), de.body.as_str()), ("MISS", "de2"));
    let en = get("en").await;
    assert_eq!((cache_status(&en), en.body.as_str()), ("HIT", "en1"));
    let de = get("de").await;
    assert_eq!((cache_status(&de), de.body.as_str()), ("HIT", "de2"));
    assert_eq!(backend.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_for_one_client_are_never_stored() {
    let backend = origin(|parts, n| {
        let headers = match parts.uri.path() {
            "/no-store" => vec![("cache-control", "no-store".to_string())],
            "/private" => vec![("cache-control", "private, max-age=60".to_string())],
            _ => vec![
                ("cache-control", "max-age=60".to_string()),
                ("set-cookie", "session=1".to_string()),
            ],
        };
        (StatusCode::OK, headers, format!("v{n}"))
    })
    .await;
    let binary = cached("", "cache_valid = { \"200\" = \"10m\" }", backend.addr());
    let client = TestClient::new();
    for path in ["/no-store", "/private", "/cookie"] {
        for _ in 0..2 {
            let reply = client.get(&url(&binary, path)).await;
            assert_eq!(cache_status(&reply), "MISS", "{path}");
        }
    }
    assert_eq!(backend.requests(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_with_authorization_use_the_cache_only_when_the_answer_is_public() {
    let backend = origin(|parts, n| {
        let control = if parts.uri.path() == "/public" {
            "public, max-age=60"
        } else {
            "max-age=60"
        };
        (
            StatusCode::OK,
            vec![("cache-control", control.to_string())],
            format!("v{n}"),
        )
    })
    .await;
    let binary = cached("", "", backend.addr());
    let client = TestClient::new();
    let auth = |path: &'static str| {
        let client = client.clone();
        let address = url(&binary, path);
        async move { client.get_with(&address, "authorization", "Bearer t").await }
    };
    assert_eq!(cache_status(&auth("/plain").await), "MISS");
    assert_eq!(cache_status(&auth("/plain").await), "MISS");
    assert_eq!(cache_status(&auth("/public").await), "MISS");
    assert_eq!(cache_status(&auth("/public").await), "HIT");
    // Stored without Authorization, not served to a request that has it.
    assert_eq!(
        cache_status(&client.get(&url(&binary, "/shared")).await),
        "MISS"
    );
    assert_eq!(cache_status(&auth("/shared").await), "BYPASS");
    assert_eq!(backend.requests(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_valid_applies_by_status_to_answers_without_freshness() {
    let backend = origin(|parts, n| {
        let status = match parts.uri.path() {
            "/missing" => StatusCode::NOT_FOUND,
            "/gone" => StatusCode::GONE,
            _ => StatusCode::OK,
        };
        (status, Vec::new(), format!("v{n}"))
    })
    .await;
    let binary = cached(
        "",
        "cache_valid = { \"200\" = \"10m\", \"404\" = \"1m\" }",
        backend.addr(),
    );
    let client = TestClient::new();
    for path in ["/ok", "/missing"] {
        assert_eq!(cache_status(&client.get(&url(&binary, path)).await), "MISS");
        assert_eq!(
            cache_status(&client.get(&url(&binary, path)).await),
            "HIT",
            "{path}"
        );
    }
    // No row for 410: not stored.
    assert_eq!(
        cache_status(&client.get(&url(&binary, "/gone")).await),
        "MISS"
    );
    assert_eq!(
        cache_status(&client.get(&url(&binary, "/gone")).await),
        "MISS"
    );
    assert_eq!(backend.requests(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_of_the_answer_wins_over_cache_valid() {
    let backend = origin(versioned("max-age=1")).await;
    let binary = cached("", "cache_valid = { \"200\" = \"10m\" }", backend.addr());
    let client = TestClient::new();
    assert_eq!(cache_status(&client.get(&url(&binary, "/a")).await), "MISS");
    poll_until(&client, &url(&binary, "/a"), "EXPIRED", |r| {
        cache_status(r) == "EXPIRED"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_over_max_entry_size_pass_through_unstored() {
    let backend = origin(|parts, n| {
        let size = if parts.uri.path() == "/big" {
            4000
        } else {
            100
        };
        (
            StatusCode::OK,
            vec![("cache-control", "max-age=60".to_string())],
            format!("{n}").repeat(size),
        )
    })
    .await;
    let binary = cached("max_entry_size = \"1k\"", "", backend.addr());
    let client = TestClient::new();
    for n in 1..=2 {
        let big = client.get(&url(&binary, "/big")).await;
        assert_eq!(cache_status(&big), "MISS");
        assert_eq!(big.body.len(), 4000);
        assert!(big.body.starts_with(&n.to_string()));
    }
    assert_eq!(
        cache_status(&client.get(&url(&binary, "/small")).await),
        "MISS"
    );
    assert_eq!(
        cache_status(&client.get(&url(&binary, "/small")).await),
        "HIT"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_answer_is_stored_whole_or_passed_through_past_max_entry_size() {
    let backend = backend_with(|request: Request<Incoming>| async move {
        let pieces = if request.uri().path() == "/big" { 3 } else { 1 };
        let body = chunked(vec![bytes::Bytes::from("x".repeat(1000)); pieces]);
        let mut response = http::Response::new(body);
        response
            .headers_mut()
            .insert("cache-control", "max-age=60".parse().expect("value"));
        Ok(response)
    })
    .await;
    let binary = cached("max_entry_size = \"2k\"", "", backend.addr());
    let client = TestClient::new();
    for _ in 0..2 {
        let big = client.get(&url(&binary, "/big")).await;
        assert_eq!((cache_status(&big), big.body.len()), ("MISS", 3000));
    }
    assert_eq!(
        cache_status(&client.get(&url(&binary, "/small")).await),
        "MISS"
    );
    let hit = client.get(&url(&binary, "/small")).await;
    assert_eq!((cache_status(&hit), hit.body.len()), ("HIT", 1000));
    assert_eq!(hit.headers["content-length"], "1000");
    assert_eq!(backend.requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_reach_the_upstream_once_with_cache_lock() {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    let backend = backend_with(move |_request: Request<Incoming>| {
        let seen = Arc::clone(&seen);
        async move {
            let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
            // Long enough for all 50 requests to arrive while the first is being answered.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let mut response = http::Response::new(demo_body(format!("v{n}")));
            response
                .headers_mut()
                .insert("cache-control", "max-age=60".parse().expect("value"));
            Ok(response)
        }
    })
    .await;
    let binary = cached("", "cache_lock = \"5s\"", backend.addr());
    let client = TestClient::new();
    let address = url(&binary, "/busy");
    let replies = futures_util::future::join_all((0..50).map(|_| {
        let (client, address) = (client.clone(), address.clone());
        async move { client.get(&address).await }
    }))
    .await;
    assert_eq!(count.load(Ordering::SeqCst), 1, "one request went upstream");
    assert!(replies
        .iter()
        .all(|r| r.status == StatusCode::OK && r.body == "v1"));
    let misses = replies.iter().filter(|r| cache_status(r) == "MISS").count();
    let hits = replies.iter().filter(|r| cache_status(r) == "HIT").count();
    assert_eq!((misses, hits), (1, 49));
}

/// A backend whose first answer (`max-age=60`; `Content-Length: 20` when `length`, else chunked) sends
/// `first-half` at once and `second-hal` once `gate` gets a permit, or fails there when `fail` is set;
/// later answers are whole at once. Counts its requests.
async fn gated_origin(
    gate: Arc<tokio::sync::Semaphore>,
    fail: bool,
    length: bool,
) -> (Backend, Arc<AtomicUsize>) {
    use http_body_util::BodyExt;
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    let backend = backend_with(move |_request: Request<Incoming>| {
        let (seen, gate) = (Arc::clone(&seen), Arc::clone(&gate));
        async move {
            let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
            let body = if n == 1 {
                let pieces = futures_util::stream::unfold(0, move |sent| {
                    let gate = Arc::clone(&gate);
                    async move {
                        match sent {
                            0 => Some((
                                Ok(hyper::body::Frame::data(bytes::Bytes::from("first-half"))),
                                1,
                            )),
                            1 => {
                                let _permit = gate.acquire().await;
                                if fail {
                                    let cut: Box<dyn std::error::Error + Send + Sync> =
                                        "cut".into();
                                    return Some((Err(cut), 2));
                                }
                                Some((
                                    Ok(hyper::body::Frame::data(bytes::Bytes::from("second-hal"))),
                                    2,
                                ))
                            }
                            _ => None,
                        }
                    }
                });
                http_body_util::StreamBody::new(pieces).boxed()
            } else {
                demo_body("first-halfsecond-hal")
            };
            let mut response = http::Response::new(body);
            let headers = response.headers_mut();
            headers.insert("cache-control", "max-age=60".parse().expect("value"));
            if length {
                headers.insert("content-length", "20".parse().expect("value"));
            }
            Ok(response)
        }
    })
    .await;
    (backend, count)
}

/// Sends a GET for `address`: its status, `X-Cache-Status` and first piece of body, and the rest.
async fn first_piece(
    client: &TestClient,
    address: &str,
) -> (StatusCode, String, bytes::Bytes, Incoming) {
    use http_body_util::BodyExt;
    let response = client
        .response(Request::get(address).body(empty()).expect("GET"))
        .await;
    let status = response.status();
    let cache = response
        .headers()
        .get("x-cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(none)")
        .to_string();
    let mut body = response.into_body();
    let mut first = bytes::BytesMut::new();
    while first.len() < "first-half".len() {
        match body.frame().await {
            Some(Ok(frame)) => {
                first.extend_from_slice(frame.data_ref().map_or(&[][..], |d| &d[..]))
            }
            other => panic!("the body ended before its first piece: {other:?}"),
        }
    }
    (status, cache, first.freeze(), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_lock_waiters_get_the_answer_while_it_arrives() {
    use http_body_util::BodyExt;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (backend, count) = gated_origin(Arc::clone(&gate), false, true).await;
    let binary = cached("", "cache_lock = \"5s\"", backend.addr());
    let client = TestClient::new();
    let address = url(&binary, "/live");
    let (status, cache, first, filler) = first_piece(&client, &address).await;
    assert_eq!(
        (status, cache.as_str(), &first[..]),
        (StatusCode::OK, "MISS", &b"first-half"[..])
    );
    // 20 more arrive while the server holds the rest: each gets the head and the first piece now.
    let followers =
        futures_util::future::join_all((0..20).map(|_| first_piece(&client, &address))).await;
    for (status, cache, first, _) in &followers {
        assert_eq!(
            (*status, cache.as_str(), &first[..]),
            (StatusCode::OK, "HIT", &b"first-half"[..])
        );
    }
    assert_eq!(count.load(Ordering::SeqCst), 1, "one request went upstream");
    gate.add_permits(1);
    let rest = filler
        .collect()
        .await
        .expect("the filler's body")
        .to_bytes();
    assert_eq!(&rest[..], b"second-hal");
    for (_, _, _, body) in followers {
        let rest = body.collect().await.expect("a follower's body").to_bytes();
        assert_eq!(&rest[..], b"second-hal");
    }
    let after = client.get(&address).await;
    assert_eq!(
        (cache_status(&after), after.body.as_str()),
        ("HIT", "first-halfsecond-hal")
    );
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_answer_is_shared_while_it_arrives_and_relayed_past_max_entry_size() {
    use http_body_util::BodyExt;
    for (zone, stored) in [
        ("", true),
        ("max_size = \"1m\"\nmax_entry_size = \"12\"", false),
    ] {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let (backend, count) = gated_origin(Arc::clone(&gate), false, false).await;
        let binary = cached(zone, "cache_lock = \"5s\"", backend.addr());
        let client = TestClient::new();
        let address = url(&binary, "/live");
        let (_, cache, _, filler) = first_piece(&client, &address).await;
        assert_eq!(cache, "MISS");
        let followers =
            futures_util::future::join_all((0..5).map(|_| first_piece(&client, &address))).await;
        for (status, cache, first, _) in &followers {
            assert_eq!(
                (*status, cache.as_str(), &first[..]),
                (StatusCode::OK, "HIT", &b"first-half"[..]),
                "{zone}"
            );
        }
        gate.add_permits(1);
        let rest = filler
            .collect()
            .await
            .expect("the filler's body")
            .to_bytes();
        assert_eq!(&rest[..], b"second-hal");
        // Past max_entry_size (12 bytes) the answer is not stored, but its followers get all of it.
        for (_, _, _, body) in followers {
            let rest = body.collect().await.expect("a follower's body").to_bytes();
            assert_eq!(&rest[..], b"second-hal", "{zone}");
        }
        let after = client.get(&address).await;
        let expected = if stored { "HIT" } else { "MISS" };
        assert_eq!(
            (cache_status(&after), after.body.as_str()),
            (expected, "first-halfsecond-hal"),
            "{zone}"
        );
        assert_eq!(
            count.load(Ordering::SeqCst),
            if stored { 1 } else { 2 },
            "{zone}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_goes_on_for_its_followers_when_its_client_leaves() {
    use http_body_util::BodyExt;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (backend, count) = gated_origin(Arc::clone(&gate), false, true).await;
    let binary = cached("", "cache_lock = \"5s\"", backend.addr());
    let address = url(&binary, "/live");
    // The filling client on a connection of its own, closed after the first piece.
    let leaving = TestClient::new();
    let (_, cache, _, filler) = first_piece(&leaving, &address).await;
    assert_eq!(cache, "MISS");
    let client = TestClient::new();
    let (_, cache, _, follower) = first_piece(&client, &address).await;
    assert_eq!(cache, "HIT");
    drop(filler);
    drop(leaving);
    gate.add_permits(1);
    let rest = follower
        .collect()
        .await
        .expect("the follower's body")
        .to_bytes();
    assert_eq!(&rest[..], b"second-hal");
    let after = client.get(&address).await;
    assert_eq!(
        (cache_status(&after), after.body.as_str()),
        ("HIT", "first-halfsecond-hal")
    );
    assert_eq!(count.load(Ordering::SeqCst), 1, "one request went upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_of_a_fill_cut_short_are_cut_and_nothing_is_stored() {
    use http_body_util::BodyExt;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (backend, count) = gated_origin(Arc::clone(&gate), true, true).await;
    let binary = cached("", "cache_lock = \"5s\"", backend.addr());
    let client = TestClient::new();
    let address = url(&binary, "/live");
    let (_, _, _, filler) = first_piece(&client, &address).await;
    let (_, cache, _, follower) = first_piece(&client, &address).await;
    assert_eq!(cache, "HIT");
    gate.add_permits(1);
    assert!(
        filler.collect().await.is_err(),
        "the filler's answer is cut"
    );
    assert!(
        follower.collect().await.is_err(),
        "the follower's answer is cut"
    );
    let after = client.get(&address).await;
    assert_eq!(
        (cache_status(&after), after.body.as_str()),
        ("MISS", "first-halfsecond-hal")
    );
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_answer_cut_short_cuts_its_followers_and_is_not_stored() {
    use http_body_util::BodyExt;
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    let backend = backend_with(move |_request: Request<Incoming>| {
        let seen = Arc::clone(&seen);
        async move {
            let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
            let body = if n == 1 {
                // A first piece, then the server fails mid-body.
                let pieces = futures_util::stream::unfold(0, |sent| async move {
                    match sent {
                        0 => Some((Ok(hyper::body::Frame::data(bytes::Bytes::from("part"))), 1)),
                        1 => {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            let cut: Box<dyn std::error::Error + Send + Sync> = "cut".into();
                            Some((Err(cut), 2))
                        }
                        _ => None,
                    }
                });
                http_body_util::StreamBody::new(pieces).boxed()
            } else {
                demo_body("whole")
            };
            let mut response = http::Response::new(body);
            response
                .headers_mut()
                .insert("cache-control", "max-age=60".parse().expect("value"));
            Ok(response)
        }
    })
    .await;
    let binary = cached("", "cache_lock = \"5s\"", backend.addr());
    let client = TestClient::new();
    let first = {
        let (client, address) = (client.clone(), url(&binary, "/a"));
        tokio::spawn(async move {
            let response = client
                .response(Request::get(address).body(empty()).expect("GET"))
                .await;
            response.into_body().collect().await.is_err()
        })
    };
    wait_until(
        Duration::from_secs(5),
        "the first request reached the backend",
        || count.load(Ordering::SeqCst) == 1,
    )
    .await;
    // This one follows the first one's chunked fill, which fails: its answer is cut as the first's is,
    // long before cache_lock's 5 s.
    let started = Instant::now();
    let second = client
        .response(Request::get(url(&binary, "/a")).body(empty()).expect("GET"))
        .await;
    assert_eq!(
        second
            .headers()
            .get("x-cache-status")
            .and_then(|v| v.to_str().ok()),
        Some("HIT")
    );
    assert!(
        second.into_body().collect().await.is_err(),
        "the follower's answer was cut"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(
        first.await.expect("the first request"),
        "the first answer was cut"
    );
    // Nothing was stored: the next request goes upstream, and its answer is stored.
    let third = client.get(&url(&binary, "/a")).await;
    assert_eq!(
        (cache_status(&third), third.body.as_str()),
        ("MISS", "whole")
    );
    let fourth = client.get(&url(&binary, "/a")).await;
    assert_eq!(
        (cache_status(&fourth), fourth.body.as_str()),
        ("HIT", "whole")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_entry_is_served_stale_when_the_upstream_is_down() {
    let backend = origin(versioned("max-age=1")).await;
    let binary = cached(
        "",
        "cache_use_stale = [\"error\", \"timeout\", \"http_503\"]",
        backend.addr(),
    );
    let client = TestClient::new();
    assert_eq!(client.get(&url(&binary, "/a")).await.body, "v1");
    backend.stop().await;
    let stale = poll_until(&client, &url(&binary, "/a"), "STALE", |r| {
        cache_status(r) == "STALE"
    })
    .await;
    assert_eq!(stale.status, StatusCode::OK);
    assert_eq!(stale.body, "v1");
    // Without an entry the failure shows.
    let missing = client.get(&url(&binary, "/other")).await;
    assert_eq!(missing.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_answer_is_replaced_by_the_stale_entry() {
    let backend = origin(|_, n| {
        if n == 1 {
            (
                StatusCode::OK,
                vec![("cache-control", "max-age=1".to_string())],
                "v1".to_string(),
            )
        } else {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Vec::new(),
                "down".to_string(),
            )
        }
    })
    .await;
    let binary = cached("", "cache_use_stale = [\"http_503\"]", backend.addr());
    let client = TestClient::new();
    assert_eq!(client.get(&url(&binary, "/a")).await.body, "v1");
    let stale = poll_until(&client, &url(&binary, "/a"), "STALE", |r| {
        cache_status(r) == "STALE"
    })
    .await;
    assert_eq!((stale.status, stale.body.as_str()), (StatusCode::OK, "v1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_update_serves_updating_then_the_new_body() {
    let backend = origin(versioned("max-age=1")).await;
    let binary = cached(
        "",
        "cache_use_stale = [\"updating\"]\ncache_background_update = true",
        backend.addr(),
    );
    let client = TestClient::new();
    assert_eq!(client.get(&url(&binary, "/a")).await.body, "v1");
    let updating = poll_until(&client, &url(&binary, "/a"), "UPDATING", |r| {
        cache_status(r) == "UPDATING"
    })
    .await;
    assert_eq!(updating.body, "v1", "the stale entry is served at once");
    let fresh = poll_until(&client, &url(&binary, "/a"), "the new body", |r| {
        r.body == "v2"
    })
    .await;
    assert_eq!(cache_status(&fresh), "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updating_serves_the_entry_while_another_request_refreshes_it() {
    let count = Arc::new(AtomicUsize::new(0));
    let (gate, seen) = (Arc::new(tokio::sync::Semaphore::new(0)), Arc::clone(&count));
    let held = Arc::clone(&gate);
    let backend = backend_with(move |_request: Request<Incoming>| {
        let (seen, held) = (Arc::clone(&seen), Arc::clone(&held));
        async move {
            let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
            if n > 1 {
                // The refresh is held until the test has seen UPDATING.
                held.acquire().await.expect("the gate stays open").forget();
            }
            let mut response = http::Response::new(demo_body(format!("v{n}")));
            response
                .headers_mut()
                .insert("cache-control", "max-age=1".parse().expect("value"));
            Ok(response)
        }
    })
    .await;
    let binary = cached("", "cache_use_stale = [\"updating\"]", backend.addr());
    let client = TestClient::new();
    assert_eq!(client.get(&url(&binary, "/a")).await.body, "v1");
    // Past max-age the next request goes upstream (EXPIRED) and is held there.
    let refresh = {
        let (client, address) = (client.clone(), url(&binary, "/a"));
        tokio::spawn(async move {
            poll_until(&client, &address, "EXPIRED", |r| cache_status(r) != "HIT").await
        })
    };
    wait_until(
        Duration::from_secs(5),
        "the refresh reached the backend",
        || count.load(Ordering::SeqCst) == 2,
    )
    .await;
    let updating = client.get(&url(&binary, "/a")).await;
    assert_eq!(
        (cache_status(&updating), updating.body.as_str()),
        ("UPDATING", "v1")
    );
    gate.add_permits(1);
    let refreshed = refresh.await.expect("the refresh task");
    assert_eq!(
        (cache_status(&refreshed), refreshed.body.as_str()),
        ("EXPIRED", "v2")
    );
    assert_eq!(cache_status(&client.get(&url(&binary, "/a")).await), "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_none_match_on_a_fresh_entry_gets_304() {
    let backend = origin(|_, n| {
        (
            StatusCode::OK,
            vec![
                ("cache-control", "max-age=60".to_string()),
                ("etag", "\"e1\"".to_string()),
            ],
            format!("v{n}"),
        )
    })
    .await;
    let binary = cached("", "", backend.addr());
    let client = TestClient::new();
    assert_eq!(cache_status(&client.get(&url(&binary, "/a")).await), "MISS");
    let not_modified = client
        .get_with(&url(&binary, "/a"), "if-none-match", "\"e1\"")
        .await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    assert_eq!(cache_status(&not_modified), "HIT");
    assert_eq!(not_modified.headers["etag"], "\"e1\"");
    let other = client
        .get_with(&url(&binary, "/a"), "if-none-match", "\"e0\"")
        .await;
    assert_eq!((other.status, other.body.as_str()), (StatusCode::OK, "v1"));
    assert_eq!(backend.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_modified_since_equal_to_last_modified_gets_304() {
    let modified = "Tue, 01 Dec 2026 10:00:00 GMT";
    let backend = origin(move |_, n| {
        (
            StatusCode::OK,
            vec![
                ("cache-control", "max-age=60".to_string()),
                ("last-modified", modified.to_string()),
            ],
            format!("v{n}"),
        )
    })
    .await;
    let binary = cached("", "", backend.addr());
    let client = TestClient::new();
    assert_eq!(cache_status(&client.get(&url(&binary, "/a")).await), "MISS");
    let not_modified = client
        .get_with(&url(&binary, "/a"), "if-modified-since", modified)
        .await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    assert_eq!(not_modified.headers["last-modified"], modified);
    let older = client
        .get_with(
            &url(&binary, "/a"),
            "if-modified-since",
            "Mon, 30 Nov 2026 10:00:00 GMT",
        )
        .await;
    assert_eq!(older.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_entry_with_a_validator_is_revalidated() {
    let conditional = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&conditional);
    let backend = origin(move |parts, n| {
        let headers = vec![
            ("cache-control", "max-age=1".to_string()),
            ("etag", "\"e1\"".to_string()),
        ];
        if parts
            .headers
            .get("if-none-match")
            .is_some_and(|v| v == "\"e1\"")
        {
            seen.fetch_add(1, Ordering::SeqCst);
            return (StatusCode::NOT_MODIFIED, headers, String::new());
        }
        (StatusCode::OK, headers, format!("v{n}"))
    })
    .await;
    let binary = cached("", "", backend.addr());
    let client = TestClient::new();
    assert_eq!(client.get(&url(&binary, "/a")).await.body, "v1");
    let revalidated = poll_until(&client, &url(&binary, "/a"), "REVALIDATED", |r| {
        cache_status(r) == "REVALIDATED"
    })
    .await;
    assert_eq!(
        (revalidated.status, revalidated.body.as_str()),
        (StatusCode::OK, "v1")
    );
    assert_eq!(conditional.load(Ordering::SeqCst), 1);
    assert_eq!(cache_status(&client.get(&url(&binary, "/a")).await), "HIT");
}

async fn purge(binary: &AdminBinary, body: &str) -> Reply {
    let request = Request::post(format!("http://{}/cache/pages/purge", binary.admin))
        .header("content-type", "application/json")
        .body(crate::harness::body(body.to_string()))
        .expect("POST");
    TestClient::new().send(request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_by_key_and_by_prefix() {
    let backend = origin(versioned("max-age=60")).await;
    let binary = cached("", "", backend.addr());
    let client = TestClient::new();
    for path in ["/a/1", "/a/2", "/b/1"] {
        assert_eq!(cache_status(&client.get(&url(&binary, path)).await), "MISS");
    }
    let key = format!("{{\"key\": \"{}/a/1\"}}", binary.addr);
    let purged = purge(&binary, &key).await;
    assert_eq!(purged.status, StatusCode::OK, "{}", purged.body);
    assert!(purged.body.contains("\"purged\":1"), "{}", purged.body);
    assert_eq!(
        cache_status(&client.get(&url(&binary, "/a/1")).await),
        "MISS"
    );
    assert_eq!(
        cache_status(&client.get(&url(&binary, "/a/2")).await),
        "HIT"
    );
    // A key written as a URL, and one without its host (that path under every host).
    assert_eq!(
        cache_status(&client.get(&url(&binary, "/a/1")).await),
        "HIT"
    );
    let as_url = format!("{{\"key\": \"http://{}/a/1\"}}", binary.addr);
    assert!(purge(&binary, &as_url).await.body.contains("\"purged\":1"));
    assert_eq!(
        cache_status(&client.get(&url(&binary, "/a/1")).await),
        "MISS"
    );
    let purged = purge(&binary, "{\"key\": \"/a/1\"}").await;
    assert!(purged.body.contains("\"purged\":1"), "{}", purged.body);
    assert_eq!(
        cache_status(&client.get(&url(&binary, "/a/1")).await),
        "MISS"
    );
    let purged = purge(&binary, "{\"prefix\": \"/a/\"}").await;
    assert!(purged.body.contains("\"purged\":2"), "{}", purged.body);
    assert_eq!(
        cache_status(&client.get(&url(&binary, "/a/2")).await),
        "MISS"
    );
    assert_eq!(
        cache_status(&client.get(&url(&binary, "/b/1")).await),
        "HIT"
    );
    let unknown = TestClient::new()
        .send(
            Request::post(format!("http://{}/cache/nope/purge", binary.admin))
                .body(crate::harness::body("{\"prefix\": \"/\"}"))
                .expect("POST"),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(purge(&binary, "{}").await.status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_during_a_fill_keeps_that_fill_from_being_stored() {
    use http_body_util::BodyExt;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (backend, count) = gated_origin(Arc::clone(&gate), false, true).await;
    let binary = cached("", "", backend.addr());
    let client = TestClient::new();
    let address = url(&binary, "/live");
    let (_, cache, _, filler) = first_piece(&client, &address).await;
    assert_eq!(cache, "MISS");
    // The page changed at the origin and is purged while the old answer is still arriving.
    let purged = purge(&binary, "{\"prefix\": \"/live\"}").await;
    assert_eq!(purged.status, StatusCode::OK, "{}", purged.body);
    gate.add_permits(1);
    let rest = filler
        .collect()
        .await
        .expect("the filler's body")
        .to_bytes();
    assert_eq!(&rest[..], b"second-hal");
    let after = client.get(&address).await;
    assert_eq!(
        cache_status(&after),
        "MISS",
        "the old answer was not stored"
    );
    assert_eq!(count.load(Ordering::SeqCst), 2);
    assert_eq!(cache_status(&client.get(&address).await), "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_needs_the_admin_token() {
    let backend = origin(versioned("max-age=60")).await;
    // The first lines of the TOML land in the [admin] table the harness opens.
    let binary = AdminBinary::from_toml(&format!(
        "token = \"secret\"\n\n[cache.pages]\n\n\
         [[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[route]]\npath = \"/\"\nupstream = \"app\"\ncache = \"pages\"\n\n\
         [upstream.app]\nservers = [{{ addr = \"{}\" }}]\n",
        backend.addr()
    ));
    let client = TestClient::new();
    assert_eq!(cache_status(&client.get(&url(&binary, "/a")).await), "MISS");
    let address = format!("http://{}/cache/pages/purge", binary.admin);
    let refused = client
        .send(
            Request::post(&address)
                .body(crate::harness::body("{\"prefix\": \"/\"}"))
                .expect("POST"),
        )
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(cache_status(&client.get(&url(&binary, "/a")).await), "HIT");
    let purged = client
        .send(
            Request::post(&address)
                .header("authorization", "Bearer secret")
                .body(crate::harness::body("{\"prefix\": \"/\"}"))
                .expect("POST"),
        )
        .await;
    assert_eq!(purged.status, StatusCode::OK, "{}", purged.body);
    assert_eq!(cache_status(&client.get(&url(&binary, "/a")).await), "MISS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_is_answered_from_the_entry_without_a_body() {
    let backend = origin(versioned("max-age=60")).await;
    let binary = cached("", "", backend.addr());
    let client = TestClient::new();
    assert_eq!(client.get(&url(&binary, "/a")).await.body, "v1");
    let head = client
        .send(
            Request::head(url(&binary, "/a"))
                .body(empty())
                .expect("HEAD"),
        )
        .await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(cache_status(&head), "HIT");
    assert_eq!(head.body, "");
    assert_eq!(head.headers["content-length"], "2");
    assert_eq!(backend.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_miss_fetches_the_whole_answer_and_stores_it() {
    // nginx's proxy_cache_convert_head (on by default): the HEAD is sent as a GET.
    let methods = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let seen = Arc::clone(&methods);
    let backend = origin(move |parts, n| {
        seen.lock().push(parts.method.to_string());
        (
            StatusCode::OK,
            vec![("cache-control", "max-age=60".to_string())],
            format!("body {n} of a page").repeat(1000),
        )
    })
    .await;
    let binary = cached("", "", backend.addr());
    let client = TestClient::new();
    let head = client
        .send(
            Request::head(url(&binary, "/a"))
                .body(empty())
                .expect("HEAD"),
        )
        .await;
    assert_eq!((head.status, cache_status(&head)), (StatusCode::OK, "MISS"));
    assert_eq!(head.body, "");
    let whole = "body 1 of a page".repeat(1000);
    assert_eq!(
        head.headers["content-length"],
        whole.len().to_string().as_str()
    );
    wait_until_async(
        Duration::from_secs(5),
        "the HEAD's answer stored",
        || async {
            sample(
                &binary.metrics().await,
                "fulcrum_cache_entries",
                &["zone=\"pages\""],
            ) == 1.0
        },
    )
    .await;
    let get = client.get(&url(&binary, "/a")).await;
    assert_eq!(
        (cache_status(&get), get.body.as_str()),
        ("HIT", whole.as_str())
    );
    assert_eq!(*methods.lock(), ["GET"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_the_entries_of_a_zone_that_stays() {
    let backend = origin(versioned("max-age=60")).await;
    let mut binary = cached("max_entry_size = \"1m\"", "", backend.addr());
    let client = TestClient::new();
    assert_eq!(cache_status(&client.get(&url(&binary, "/a")).await), "MISS");
    binary.reload_replacing("max_entry_size = \"1m\"", "max_entry_size = \"2m\"");
    let after = client.get(&url(&binary, "/a")).await;
    assert_eq!((cache_status(&after), after.body.as_str()), ("HIT", "v1"));
    assert_eq!(backend.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_answers_by_cache_status_and_the_zone_size() {
    let backend = origin(versioned("max-age=60")).await;
    let binary = cached("", "", backend.addr());
    let client = TestClient::new();
    client.get(&url(&binary, "/a")).await;
    client.get(&url(&binary, "/a")).await;
    client.get(&url(&binary, "/a")).await;
    let metrics = binary.metrics().await;
    let zone = "zone=\"pages\"";
    assert_eq!(
        sample(
            &metrics,
            "fulcrum_cache_requests_total",
            &[zone, "status=\"MISS\""]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &metrics,
            "fulcrum_cache_requests_total",
            &[zone, "status=\"HIT\""]
        ),
        2.0
    );
    assert_eq!(sample(&metrics, "fulcrum_cache_entries", &[zone]), 1.0);
    let bytes = sample(&metrics, "fulcrum_cache_bytes", &[zone]);
    assert!(bytes > 2.0 && bytes < 4096.0, "bytes {bytes}");
    assert_eq!(
        sample(&metrics, "fulcrum_cache_evictions_total", &[zone]),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_least_recently_used_entry_is_evicted_under_max_size() {
    // Each entry is about 1.7 KB (1 KB body, key, headers, overhead): 4 KB holds two.
    let backend = origin(|_, n| {
        (
            StatusCode::OK,
            vec![("cache-control", "max-age=60".to_string())],
            format!("{}", n % 10).repeat(1000),
        )
    })
    .await;
    let binary = cached(
        "max_size = \"4k\"\nmax_entry_size = \"2k\"",
        "",
        backend.addr(),
    );
    let client = TestClient::new();
    for path in ["/1", "/2"] {
        assert_eq!(cache_status(&client.get(&url(&binary, path)).await), "MISS");
    }
    assert_eq!(cache_status(&client.get(&url(&binary, "/1")).await), "HIT");
    assert_eq!(cache_status(&client.get(&url(&binary, "/3")).await), "MISS");
    let metrics = binary.metrics().await;
    let zone = "zone=\"pages\"";
    assert_eq!(
        sample(&metrics, "fulcrum_cache_evictions_total", &[zone]),
        1.0
    );
    assert_eq!(sample(&metrics, "fulcrum_cache_entries", &[zone]), 2.0);
    assert!(sample(&metrics, "fulcrum_cache_bytes", &[zone]) <= 4096.0);
    assert_eq!(cache_status(&client.get(&url(&binary, "/1")).await), "HIT");
    assert_eq!(cache_status(&client.get(&url(&binary, "/3")).await), "HIT");
    assert_eq!(
        cache_status(&client.get(&url(&binary, "/2")).await),
        "MISS",
        "/2 was used least recently"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_filled_far_past_max_size_stays_under_it() {
    let backend = origin(|_, n| {
        (
            StatusCode::OK,
            vec![("cache-control", "max-age=60".to_string())],
            format!("{}", n % 10).repeat(4000),
        )
    })
    .await;
    let binary = cached(
        "max_size = \"64k\"\nmax_entry_size = \"8k\"",
        "",
        backend.addr(),
    );
    let client = TestClient::new();
    for n in 0..100 {
        let reply = client.get(&url(&binary, &format!("/p/{n}"))).await;
        assert_eq!(reply.body.len(), 4000);
    }
    let metrics = binary.metrics().await;
    let zone = "zone=\"pages\"";
    let bytes = sample(&metrics, "fulcrum_cache_bytes", &[zone]);
    let entries = sample(&metrics, "fulcrum_cache_entries", &[zone]);
    let evictions = sample(&metrics, "fulcrum_cache_evictions_total", &[zone]);
    assert!(bytes <= 65536.0, "bytes {bytes}");
    // About 4.6 KB an entry: 13 fit in 64 KiB; none of 4 KB bodies is counted at less than its body.
    assert!((10.0..=16.0).contains(&entries), "entries {entries}");
    assert!(
        bytes >= entries * 4000.0,
        "bytes {bytes} for {entries} entries"
    );
    assert_eq!(entries + evictions, 100.0);
    // The newest are kept, the oldest gone.
    assert_eq!(
        cache_status(&client.get(&url(&binary, "/p/99")).await),
        "HIT"
    );
    assert_eq!(
        cache_status(&client.get(&url(&binary, "/p/0")).await),
        "MISS"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_memory_stays_inside_max_size_when_nine_times_as_much_is_cached() {
    // 576 answers of 256 KiB (144 MiB) through a 16 MiB zone, in three rounds of 48 MiB.
    const BODY: usize = 256 << 10;
    let backend = origin(|_, n| {
        (
            StatusCode::OK,
            vec![("cache-control", "max-age=600".to_string())],
            format!("{:x}", n % 16).repeat(BODY),
        )
    })
    .await;
    let binary = cached(
        "max_size = \"16m\"\nmax_entry_size = \"1m\"",
        "",
        backend.addr(),
    );
    let client = TestClient::new();
    // Warm the process (connections, buffers, allocator arenas) with 8 entries before measuring.
    for n in 0..8 {
        let reply = client.get(&url(&binary, &format!("/warm/{n}"))).await;
        assert_eq!(reply.body.len(), BODY);
    }
    let before = binary.process.rss_kib();
    let mut rss = Vec::new();
    for round in 0..3 {
        for n in 0..192 {
            let reply = client.get(&url(&binary, &format!("/p/{round}/{n}"))).await;
            assert_eq!((reply.status, reply.body.len()), (StatusCode::OK, BODY));
            assert_eq!(cache_status(&reply), "MISS");
        }
        rss.push(binary.process.rss_kib());
    }
    let metrics = binary.metrics().await;
    let zone = "zone=\"pages\"";
    let bytes = sample(&metrics, "fulcrum_cache_bytes", &[zone]);
    let entries = sample(&metrics, "fulcrum_cache_entries", &[zone]);
    assert!(bytes <= 16.0 * 1024.0 * 1024.0, "zone bytes {bytes}");
    assert!(
        bytes >= entries * BODY as f64 && entries >= 50.0,
        "{entries} entries in {bytes} bytes"
    );
    // Once the zone is full, evicted entries' memory is reused: the last two rounds (96 MiB) barely
    // grow the process. The whole run stays within the zone's size plus the allocator's slack and
    // the answers in flight (without the bound it would grow by the 144 MiB it was sent).
    let (total, last_two) = (rss[2].saturating_sub(before), rss[2].saturating_sub(rss[0]));
    assert!(
        last_two < 16 * 1024,
        "RSS grew by {last_two} KiB while 96 MiB more replaced the zone's entries ({rss:?} KiB)"
    );
    assert!(
        total < (16 + 48) * 1024,
        "RSS grew by {total} KiB while 144 MiB went through a 16 MiB zone ({before} then {rss:?} KiB)"
    );
    // The newest entries are still served from the zone.
    assert_eq!(
        cache_status(&client.get(&url(&binary, "/p/2/191")).await),
        "HIT"
    );
}

/// `fulcrum check` on a config with zone `pages` and one route with `route`; its exit status and stderr.
fn check(route: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fulcrum.toml");
    std::fs::write(
        &path,
        format!(
            "[cache.pages]\nmax_size = \"1m\"\n\n[[listener]]\nlisten = \"127.0.0.1:0\"\n\n\
             [upstream.app]\nservers = [{{ addr = \"127.0.0.1:1\" }}]\n\n[[route]]\npath = \"/\"\n{route}\n"
        ),
    )
    .expect("write the config");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .expect("run fulcrum check");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn check_names_the_line_and_key_of_each_bad_cache_setting() {
    let cases = [
        (
            "upstream = \"app\"\ncache = \"nope\"",
            ":13: route[0].cache:",
            "no [cache.nope] zone",
        ),
        (
            "upstream = \"app\"\ncache = \"pages\"\ncache_use_stale = [\"error\", \"http_418\"]",
            ":14: route[0].cache_use_stale:",
            "unknown value `http_418`",
        ),
        (
            "upstream = \"app\"\ncache = \"pages\"\ncache_valid = { \"2xx\" = \"1m\" }",
            ":14: route[0].cache_valid.2xx:",
            "a status code",
        ),
        (
            "upstream = \"app\"\ncache = \"pages\"\ncache_key = [\"path\", \"body\"]",
            ":14: route[0].cache_key:",
            "unknown part `body`",
        ),
        (
            "upstream = \"app\"\ncache_lock = \"5s\"",
            ":13: route[0].cache_lock:",
            "without `cache",
        ),
        (
            "upstream = \"app\"\ncache = \"pages\"\ncache_lock = \"soon\"",
            ":14: route[0].cache_lock:",
            "not a duration",
        ),
    ];
    for (route, place, why) in cases {
        let (ok, stderr) = check(route);
        assert!(!ok, "check accepted {route}");
        assert!(stderr.contains(place), "expected `{place}` in: {stderr}");
        assert!(stderr.contains(why), "expected `{why}` in: {stderr}");
    }
    let (ok, stderr) = check("upstream = \"app\"\ncache = \"pages\"\ncache_valid = { \"200\" = \"10m\", \"any\" = \"1m\" }");
    assert!(ok, "{stderr}");
}

#[test]
fn a_zone_whose_max_entry_size_exceeds_max_size_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fulcrum.toml");
    std::fs::write(
        &path,
        "[cache.pages]\nmax_size = \"1m\"\nmax_entry_size = \"2m\"\n\n[[listener]]\nlisten = \"127.0.0.1:0\"\n",
    )
    .expect("write the config");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .expect("run fulcrum check");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(":3: cache.pages.max_entry_size:"),
        "{stderr}"
    );
}
