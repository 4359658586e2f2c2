//! cache_lock through the binary: concurrent misses reach the upstream once, and the requests waiting on a
//! fill share its answer while it arrives, go on when its client leaves, and are cut when it fails.

use std::time::Instant;

use http_body_util::BodyExt;

use super::*;

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

/// An origin whose first answer (`max-age=60`; `Content-Length: 20` when `length`, else chunked) sends
/// `first-half` at once and `second-hal` once released, or fails there when `fail` is set; later answers
/// are whole at once. With the binary caching it in zone `pages` (`zone_keys`, `route_keys`).
struct Gated {
    _backend: Backend,
    /// Requests the origin has seen.
    count: Arc<AtomicUsize>,
    gate: Arc<tokio::sync::Semaphore>,
    binary: AdminBinary,
    /// The URL of the gated page.
    address: String,
}

impl Gated {
    async fn start(zone_keys: &str, route_keys: &str, fail: bool, length: bool) -> Self {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let (backend, count) = gated_origin(Arc::clone(&gate), fail, length).await;
        let binary = cached(zone_keys, route_keys, backend.addr());
        let address = url(&binary, "/live");
        Self {
            _backend: backend,
            count,
            gate,
            binary,
            address,
        }
    }

    /// Lets the origin send the rest of its first answer (or fail).
    fn release(&self) {
        self.gate.add_permits(1);
    }

    /// Requests the origin has seen.
    fn requests(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

async fn gated_origin(
    gate: Arc<tokio::sync::Semaphore>,
    fail: bool,
    length: bool,
) -> (Backend, Arc<AtomicUsize>) {
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

/// The rest of a body, which must arrive whole.
async fn rest(body: Incoming, whose: &str) -> bytes::Bytes {
    body.collect()
        .await
        .unwrap_or_else(|e| panic!("{whose} body: {e}"))
        .to_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_lock_waiters_get_the_answer_while_it_arrives() {
    let page = Gated::start("", "cache_lock = \"5s\"", false, true).await;
    let client = TestClient::new();
    let (status, cache, first, filler) = first_piece(&client, &page.address).await;
    assert_eq!(
        (status, cache.as_str(), &first[..]),
        (StatusCode::OK, "MISS", &b"first-half"[..])
    );
    // 20 more arrive while the server holds the rest: each gets the head and the first piece now.
    let followers =
        futures_util::future::join_all((0..20).map(|_| first_piece(&client, &page.address))).await;
    for (status, cache, first, _) in &followers {
        assert_eq!(
            (*status, cache.as_str(), &first[..]),
            (StatusCode::OK, "HIT", &b"first-half"[..])
        );
    }
    assert_eq!(page.requests(), 1, "one request went upstream");
    page.release();
    assert_eq!(&rest(filler, "the filler's").await[..], b"second-hal");
    for (_, _, _, body) in followers {
        assert_eq!(&rest(body, "a follower's").await[..], b"second-hal");
    }
    let after = client.get(&page.address).await;
    assert_eq!(
        (cache_status(&after), after.body.as_str()),
        ("HIT", "first-halfsecond-hal")
    );
    assert_eq!(page.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_answer_is_shared_while_it_arrives_and_relayed_past_max_entry_size() {
    for (zone, stored) in [
        ("", true),
        ("max_size = \"1m\"\nmax_entry_size = \"12\"", false),
    ] {
        let page = Gated::start(zone, "cache_lock = \"5s\"", false, false).await;
        let client = TestClient::new();
        let (_, cache, _, filler) = first_piece(&client, &page.address).await;
        assert_eq!(cache, "MISS");
        let followers =
            futures_util::future::join_all((0..5).map(|_| first_piece(&client, &page.address)))
                .await;
        for (status, cache, first, _) in &followers {
            assert_eq!(
                (*status, cache.as_str(), &first[..]),
                (StatusCode::OK, "HIT", &b"first-half"[..]),
                "{zone}"
            );
        }
        page.release();
        assert_eq!(&rest(filler, "the filler's").await[..], b"second-hal");
        // Past max_entry_size (12 bytes) the answer is not stored, but its followers get all of it.
        for (_, _, _, body) in followers {
            assert_eq!(
                &rest(body, "a follower's").await[..],
                b"second-hal",
                "{zone}"
            );
        }
        let after = client.get(&page.address).await;
        let expected = if stored { "HIT" } else { "MISS" };
        assert_eq!(
            (cache_status(&after), after.body.as_str()),
            (expected, "first-halfsecond-hal"),
            "{zone}"
        );
        assert_eq!(page.requests(), if stored { 1 } else { 2 }, "{zone}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_goes_on_for_its_followers_when_its_client_leaves() {
    let page = Gated::start("", "cache_lock = \"5s\"", false, true).await;
    // The filling client on a connection of its own, closed after the first piece.
    let leaving = TestClient::new();
    let (_, cache, _, filler) = first_piece(&leaving, &page.address).await;
    assert_eq!(cache, "MISS");
    let client = TestClient::new();
    let (_, cache, _, follower) = first_piece(&client, &page.address).await;
    assert_eq!(cache, "HIT");
    drop(filler);
    drop(leaving);
    page.release();
    assert_eq!(&rest(follower, "the follower's").await[..], b"second-hal");
    let after = client.get(&page.address).await;
    assert_eq!(
        (cache_status(&after), after.body.as_str()),
        ("HIT", "first-halfsecond-hal")
    );
    assert_eq!(page.requests(), 1, "one request went upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_of_a_fill_cut_short_are_cut_and_nothing_is_stored() {
    // With a Content-Length, then chunked.
    for length in [true, false] {
        let page = Gated::start("", "cache_lock = \"5s\"", true, length).await;
        let client = TestClient::new();
        let started = Instant::now();
        let (_, _, _, filler) = first_piece(&client, &page.address).await;
        let (_, cache, _, follower) = first_piece(&client, &page.address).await;
        assert_eq!(cache, "HIT", "length {length}");
        page.release();
        assert!(
            filler.collect().await.is_err(),
            "the filler's answer is cut (length {length})"
        );
        assert!(
            follower.collect().await.is_err(),
            "the follower's answer is cut (length {length})"
        );
        // Released by the failure, long before cache_lock's 5 s.
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        // Nothing was stored: the next request goes upstream, and its answer is stored.
        let after = client.get(&page.address).await;
        assert_eq!(
            (cache_status(&after), after.body.as_str()),
            ("MISS", "first-halfsecond-hal"),
            "length {length}"
        );
        assert_eq!(page.requests(), 2);
        assert_eq!(cache_status(&client.get(&page.address).await), "HIT");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_during_a_fill_keeps_that_fill_from_being_stored() {
    let page = Gated::start("", "", false, true).await;
    let client = TestClient::new();
    let (_, cache, _, filler) = first_piece(&client, &page.address).await;
    assert_eq!(cache, "MISS");
    // The page changed at the origin and is purged while the old answer is still arriving.
    let purged = purge(&page.binary, "{\"prefix\": \"/live\"}").await;
    assert_eq!(purged.status, StatusCode::OK, "{}", purged.body);
    page.release();
    assert_eq!(&rest(filler, "the filler's").await[..], b"second-hal");
    let after = client.get(&page.address).await;
    assert_eq!(
        cache_status(&after),
        "MISS",
        "the old answer was not stored"
    );
    assert_eq!(page.requests(), 2);
    assert_eq!(cache_status(&client.get(&page.address).await), "HIT");
}
