//! Expired entries through the binary: served STALE when the upstream fails, UPDATING while another
//! request (or a background update) refreshes them.

use super::*;

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
