//! The route keys nginx configs lean on, through the real binary: `match`, `strip_prefix`,
//! `rewrite_prefix`, `request_headers`, `response_headers`, `access_log`, `return`, and the refusals.

use std::process::Command;

use http::{Request, StatusCode};

use crate::harness::*;

/// A backend answering with what it received: the request target, then `name: value` lines; its
/// answer carries `Server: echo` and `X-Powered-By: test`.
async fn echo_backend() -> fulcrum::demo::Backend {
    backend_with(|request: http::Request<hyper::body::Incoming>| async move {
        let mut seen = format!("{}\n", request.uri());
        for (name, value) in request.headers() {
            seen.push_str(&format!("{}: {}\n", name, value.to_str().unwrap_or("?")));
        }
        let mut response = http::Response::new(demo_body(seen));
        let headers = response.headers_mut();
        headers.insert("server", http::HeaderValue::from_static("echo"));
        headers.insert("x-powered-by", http::HeaderValue::from_static("test"));
        Ok(response)
    })
    .await
}

fn lines<'a>(body: &'a str, name: &str) -> Vec<&'a str> {
    let prefix = format!("{name}: ");
    body.lines()
        .filter_map(|line| line.strip_prefix(prefix.as_str()))
        .collect()
}

/// The binary on `routes` (plus a listener `public`, an access log to `dir/access.log` and upstream
/// `app` on `backend`).
fn start(routes: &str, backend: std::net::SocketAddr) -> AdminBinary {
    AdminBinary::from_toml(&format!(
        "[[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\n{routes}\n\
         [upstream.app]\nservers = [{{ addr = \"{backend}\" }}]\n"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_and_rewrite_prefix_change_the_upstream_path_and_keep_the_query() {
    let backend = echo_backend().await;
    let binary = start(
        "[[route]]\npath = \"/api/\"\nupstream = \"app\"\nstrip_prefix = true\n\n\
         [[route]]\npath = \"/old/\"\nupstream = \"app\"\nrewrite_prefix = \"/v2/\"\n\n\
         [[route]]\npath = \"/\"\nupstream = \"app\"\n",
        backend.addr(),
    );
    let client = TestClient::new();
    let base = format!("http://{}", binary.addr);
    let cases = [
        ("/api/users?id=7", "/users?id=7"),
        ("/api/", "/"),
        ("/old/users/1", "/v2/users/1"),
        ("/old/", "/v2/"),
        ("/apix", "/apix"),
    ];
    for (sent, expected) in cases {
        let reply = client.get(&format!("{base}{sent}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{sent}");
        assert_eq!(reply.body.lines().next(), Some(expected), "{sent}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_match_takes_only_its_path_and_wins_over_a_prefix() {
    let backend = echo_backend().await;
    let binary = start(
        "[[route]]\npath = \"/status\"\nmatch = \"exact\"\nreturn = { status = 200, body = \"exact\\n\" }\n\n\
         [[route]]\npath = \"/status\"\nupstream = \"app\"\n",
        backend.addr(),
    );
    let client = TestClient::new();
    let exact = client.get(&format!("http://{}/status", binary.addr)).await;
    assert_eq!(
        (exact.status, exact.body.as_str()),
        (StatusCode::OK, "exact\n")
    );
    let prefix = client
        .get(&format!("http://{}/status/x", binary.addr))
        .await;
    assert_eq!(prefix.body.lines().next(), Some("/status/x"));
    let none = client.get(&format!("http://{}/", binary.addr)).await;
    assert_eq!(none.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_response_header_rules_apply_and_forwarding_headers_stay() {
    let backend = echo_backend().await;
    let binary = start(
        "[[route]]\npath = \"/\"\nupstream = \"app\"\n\
         request_headers = { set = { \"X-Env\" = \"prod\", \"User-Agent\" = \"fulcrum-test\" }, remove = [\"X-Debug\"] }\n\
         response_headers = { set = { \"Strict-Transport-Security\" = \"max-age=63072000\" }, remove = [\"Server\", \"X-Powered-By\"] }\n",
        backend.addr(),
    );
    let request = Request::get(format!("http://{}/h", binary.addr))
        .header("host", "shop.example")
        .header("x-debug", "1")
        .header("user-agent", "curl")
        .header("x-env", "dev")
        .body(empty())
        .expect("request");
    let reply = TestClient::new().send(request).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(lines(&reply.body, "x-env"), ["prod"]);
    assert_eq!(lines(&reply.body, "user-agent"), ["fulcrum-test"]);
    assert!(lines(&reply.body, "x-debug").is_empty(), "{}", reply.body);
    assert_eq!(lines(&reply.body, "host"), ["shop.example"]);
    assert_eq!(lines(&reply.body, "x-real-ip"), ["127.0.0.1"]);
    assert_eq!(lines(&reply.body, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(
        reply.headers["strict-transport-security"],
        "max-age=63072000"
    );
    assert!(!reply.headers.contains_key("server"));
    assert!(!reply.headers.contains_key("x-powered-by"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn return_answers_redirects_and_bodies_without_an_upstream() {
    let backend = echo_backend().await;
    let binary = start(
        "[[route]]\npath = \"/old/\"\nreturn = { status = 301, location = \"https://example.com/new/\" }\n\
         response_headers = { set = { \"X-Moved\" = \"yes\" } }\n\n\
         [[route]]\npath = \"/healthz\"\nreturn = { status = 200, body = \"ok\\n\" }\n\n\
         [[route]]\npath = \"/gone\"\nreturn = { status = 410 }\n",
        backend.addr(),
    );
    let client = TestClient::new();
    let moved = client
        .get(&format!("http://{}/old/page", binary.addr))
        .await;
    assert_eq!(moved.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(moved.headers["location"], "https://example.com/new/");
    assert_eq!(moved.headers["x-moved"], "yes");
    let health = client.get(&format!("http://{}/healthz", binary.addr)).await;
    assert_eq!(
        (health.status, health.body.as_str()),
        (StatusCode::OK, "ok\n")
    );
    assert_eq!(health.headers["content-type"], "text/plain; charset=utf-8");
    let gone = client.get(&format!("http://{}/gone", binary.addr)).await;
    assert_eq!((gone.status, gone.body.as_str()), (StatusCode::GONE, ""));
    assert_eq!(backend.requests(), 0, "no request reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_false_keeps_a_routes_requests_out_of_the_log() {
    let backend = echo_backend().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("access.log");
    let binary = AdminBinary::from_toml(&format!(
        "[access_log]\npath = \"{}\"\n\n\
         [[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[route]]\npath = \"/health\"\nupstream = \"app\"\naccess_log = false\n\n\
         [[route]]\npath = \"/\"\nupstream = \"app\"\n\n\
         [upstream.app]\nservers = [{{ addr = \"{}\" }}]\n",
        log.display(),
        backend.addr()
    ));
    let client = TestClient::new();
    for path in ["/health", "/page", "/health/deep", "/last"] {
        let reply = client.get(&format!("http://{}{path}", binary.addr)).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    // Lines are written in order: once `/last` is there, every earlier line is too.
    wait_until(
        std::time::Duration::from_secs(5),
        "the /last log line",
        || std::fs::read_to_string(&log).is_ok_and(|text| text.contains("GET /last ")),
    )
    .await;
    let text = std::fs::read_to_string(&log).expect("read the access log");
    assert!(text.contains("GET /page "), "{text}");
    assert!(!text.contains("/health"), "{text}");
    assert_eq!(text.lines().count(), 2, "{text}");
}

/// `fulcrum check` on a config with `route`; its exit status and stderr.
fn check(route: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fulcrum.toml");
    std::fs::write(
        &path,
        format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n\n[upstream.app]\nservers = [{{ addr = \"127.0.0.1:1\" }}]\n\n[[route]]\n{route}\n"
        ),
    )
    .expect("write the config");
    let output = Command::new(env!("CARGO_BIN_EXE_fulcrum"))
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
fn check_refuses_route_keys_that_cannot_work_naming_line_and_key() {
    // The route table starts on line 7; its keys follow one per line.
    let cases: [(&str, &str, &str); 10] = [
        (
            "path = \"/\"\nupstream = \"app\"\nrequest_headers = { set = { \"X-Forwarded-For\" = \"1.2.3.4\" } }",
            ":10: route[0].request_headers.set:",
            "forwarding header",
        ),
        (
            "path = \"/\"\nupstream = \"app\"\nrequest_headers = { set = { \"Host\" = \"other\" } }",
            ":10: route[0].request_headers.set:",
            "forwarding header",
        ),
        (
            "path = \"/\"\nupstream = \"app\"\nrequest_headers = { remove = [\"X-Real-IP\"] }",
            ":10: route[0].request_headers.remove:",
            "forwarding header",
        ),
        (
            "path = \"/\"\nupstream = \"app\"\nresponse_headers = { set = { \"Transfer-Encoding\" = \"gzip\" } }",
            ":10: route[0].response_headers.set:",
            "hop-by-hop or framing",
        ),
        (
            "path = \"/\"\nupstream = \"app\"\nrequest_headers = { set = { \"Connection\" = \"close\" } }",
            ":10: route[0].request_headers.set:",
            "hop-by-hop or framing",
        ),
        (
            "path = \"/x\"\nmatch = \"exact\"\nupstream = \"app\"\nstrip_prefix = true",
            ":11: route[0].strip_prefix:",
            "meaningless with match = \"exact\"",
        ),
        (
            "path = \"/x\"\nupstream = \"app\"\nreturn = { status = 200, body = \"ok\" }",
            ":9: route[0].upstream:",
            "either `upstream` or `return`, not both",
        ),
        (
            "path = \"/x\"\nupstream = \"app\"\nstrip_prefix = true\nrewrite_prefix = \"/v2/\"",
            ":10: route[0].strip_prefix:",
            "cannot be combined with rewrite_prefix",
        ),
        (
            "path = \"/x\"\nreturn = { status = 301 }",
            ":9: route[0].return.location:",
            "needs location",
        ),
        (
            "path = \"/x\"",
            ":8: route[0].upstream:",
            "a route needs `upstream",
        ),
    ];
    for (route, place, why) in cases {
        let (ok, stderr) = check(route);
        assert!(!ok, "accepted: {route}");
        assert!(stderr.contains(place), "{route}: want {place} in {stderr}");
        assert!(stderr.contains(why), "{route}: want {why} in {stderr}");
    }
}

#[test]
fn check_accepts_every_route_key_together() {
    let (ok, stderr) = check(
        "path = \"/api/\"\nmatch = \"prefix\"\nupstream = \"app\"\nstrip_prefix = true\n\
         request_headers = { set = { \"X-Env\" = \"prod\" }, remove = [\"X-Debug\"] }\n\
         response_headers = { set = { \"Strict-Transport-Security\" = \"max-age=63072000\" }, remove = [\"Server\"] }\n\
         access_log = false\n\n[[route]]\npath = \"/old/\"\nreturn = { status = 301, location = \"https://example.com/new/\" }",
    );
    assert!(ok, "{stderr}");
}
