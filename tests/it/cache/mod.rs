//! The response cache through the binary: HIT/MISS/EXPIRED, freshness rules, Vary, cache_valid,
//! max_entry_size, conditional requests, purge, HEAD, reload and config errors here; cache_lock in
//! `lock`, stale answers and background update in `stale`, metrics, eviction and memory in `size`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fulcrum::demo::Backend;
use http::{Request, StatusCode};
use hyper::body::Incoming;

use crate::harness::*;

mod lock;
mod size;
mod stale;

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
