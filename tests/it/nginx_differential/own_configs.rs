//! Comparisons with configs of their own: gzip, and proxy_cache with its companions, each imported and
//! run beside nginx on its own backend.

use super::*;

/// A backend for the gzip comparison: `/…/html` and `/…/json` 4000 bytes of text of that type with a
/// strong ETag, `/small` 500 bytes of HTML, `/png` 4000 bytes typed `image/png`.
async fn typed_backend() -> fulcrum::demo::Backend {
    backend_with(|request: Request<hyper::body::Incoming>| async move {
        let path = request.uri().path();
        let (content_type, len) = if path.ends_with("/json") {
            ("application/json", 4000)
        } else if path.ends_with("/small") {
            ("text/html", 500)
        } else if path.ends_with("/png") {
            ("image/png", 4000)
        } else {
            ("text/html", 4000)
        };
        let text: String = (0..)
            .map(|i| format!("<p>line {i} of the page</p>\n"))
            .flat_map(|line| line.chars().collect::<Vec<_>>())
            .take(len)
            .collect();
        let mut response = http::Response::new(demo_body(text));
        let headers = response.headers_mut();
        headers.insert("content-type", http::HeaderValue::from_static(content_type));
        headers.insert("etag", http::HeaderValue::from_static("\"v1\""));
        Ok(response)
    })
    .await
}

/// What a gzip-accepting client sees of one answer: encoding, Vary, ETag, length, and the body decoded.
async fn gzip_view(client: &TestClient, addr: SocketAddr, path: &str) -> Vec<String> {
    use std::io::Read;
    let request = Request::get(format!("http://{addr}{path}"))
        .header("accept-encoding", "gzip")
        .body(empty())
        .expect("request");
    let response = client.response(request).await;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_ascii_lowercase)
    };
    let encoding = header("content-encoding");
    let mut view = vec![
        format!("{path} content-encoding={encoding:?}"),
        format!("{path} vary={:?}", header("vary")),
        format!("{path} etag={:?}", header("etag")),
        format!(
            "{path} has content-length={}",
            header("content-length").is_some()
        ),
    ];
    let raw = http_body_util::BodyExt::collect(response.into_body())
        .await
        .expect("read the body")
        .to_bytes();
    let mut body = Vec::new();
    match encoding.as_deref() {
        Some("gzip") => {
            flate2::read::GzDecoder::new(&raw[..])
                .read_to_end(&mut body)
                .expect("valid gzip");
        }
        _ => body = raw.to_vec(),
    }
    view.push(format!("{path} body bytes={}", body.len()));
    view
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_compresses_the_same_answers_as_nginx() {
    let backend = typed_backend().await;
    let config = |listen: SocketAddr| {
        format!(
            "worker_processes 1;\nevents {{ worker_connections 64; }}\nhttp {{\n    access_log off;\n    \
             gzip on;\n    gzip_types application/json;\n    gzip_min_length 1000;\n    gzip_vary on;\n    \
             gzip_proxied any;\n    upstream app {{ server {}; }}\n    server {{\n        listen {listen};\n        \
             location / {{ proxy_pass http://app; }}\n        location /raw/ {{ proxy_pass http://app; gzip off; }}\n    \
             }}\n}}\n",
            backend.addr()
        )
    };
    let nginx_addr = refusing_addr();
    let _nginx = start_nginx(&config(nginx_addr), nginx_addr);
    let fulcrum_addr = refusing_addr();
    let (_dir, _fulcrum, report) = import_and_run(&config(fulcrum_addr));
    assert!(
        !report.contains(": gzip"),
        "every gzip directive translates exactly: {report}"
    );
    wait_accepting(fulcrum_addr, "fulcrum");
    let client = TestClient::new();
    let mut seen = Vec::new();
    for addr in [nginx_addr, fulcrum_addr] {
        let mut views = Vec::new();
        for path in ["/html", "/json", "/small", "/png", "/raw/html"] {
            views.extend(gzip_view(&client, addr, path).await);
        }
        seen.push(views);
    }
    assert_eq!(seen[0], seen[1], "nginx, then fulcrum");
    assert!(
        seen[1].contains(&"/html content-encoding=Some(\"gzip\")".to_string())
            && seen[1].contains(&"/html etag=Some(\"w/\\\"v1\\\"\")".to_string())
            && seen[1].contains(&"/raw/html content-encoding=None".to_string()),
        "{:#?}",
        seen[1]
    );
}

/// A backend for the cache comparison, counting the requests for each path: `/page` 200 and
/// `/missing` 404 without freshness headers, `/cookie` 200 with `Set-Cookie`, `/private` 200 with
/// `Cache-Control: private`, `/error` 500, `/max-age` 200 with `Cache-Control: max-age=60`; each body
/// is the path and how many requests for it the backend has seen.
async fn counting_backend() -> fulcrum::demo::Backend {
    let counts = Arc::new(parking_lot::Mutex::new(std::collections::HashMap::<
        String,
        u32,
    >::new()));
    backend_with(move |request: Request<hyper::body::Incoming>| {
        let counts = Arc::clone(&counts);
        async move {
            let path = request.uri().path().to_string();
            let n = {
                let mut counts = counts.lock();
                let n = counts.entry(path.clone()).or_default();
                *n += 1;
                *n
            };
            let mut response = http::Response::new(demo_body(format!("{path} {n}\n")));
            let headers = response.headers_mut();
            match path.as_str() {
                "/missing" => *response.status_mut() = StatusCode::NOT_FOUND,
                "/error" => *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR,
                "/cookie" => {
                    headers.insert("set-cookie", http::HeaderValue::from_static("s=1"));
                }
                "/private" => {
                    headers.insert("cache-control", http::HeaderValue::from_static("private"));
                }
                "/max-age" => {
                    headers.insert(
                        "cache-control",
                        http::HeaderValue::from_static("max-age=60"),
                    );
                }
                _ => {}
            }
            Ok(response)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_cache_stores_and_skips_the_same_answers_as_nginx() {
    let config = |listen: SocketAddr, backend: SocketAddr| {
        format!(
            "worker_processes 1;\nevents {{ worker_connections 64; }}\nhttp {{\n    access_log off;\n    \
             proxy_cache_path cache levels=1:2 keys_zone=pages:1m max_size=16m;\n    \
             upstream app {{ server {backend}; }}\n    server {{\n        listen {listen};\n        \
             proxy_cache pages;\n        proxy_cache_valid 200 302 10m;\n        proxy_cache_valid 404 1m;\n        \
             proxy_cache_lock on;\n        proxy_cache_use_stale error timeout updating http_500;\n        \
             add_header X-Cache-Status $upstream_cache_status always;\n        \
             location / {{ proxy_pass http://app; }}\n        \
             location /live/ {{ proxy_cache off; proxy_pass http://app; }}\n    }}\n}}\n"
        )
    };
    // One backend each, so that each body counts only its own server's requests.
    let nginx_backend = counting_backend().await;
    let fulcrum_backend = counting_backend().await;
    let nginx_addr = refusing_addr();
    let _nginx = start_nginx(&config(nginx_addr, nginx_backend.addr()), nginx_addr);
    let fulcrum_addr = refusing_addr();
    let (_dir, _fulcrum, report) = import_and_run(&config(fulcrum_addr, fulcrum_backend.addr()));
    for exact in [
        ": proxy_cache:",
        ": proxy_cache_valid:",
        ": proxy_cache_lock:",
        ": proxy_cache_use_stale:",
        ": add_header:",
    ] {
        assert!(
            !report.contains(exact),
            "{exact} translates exactly: {report}"
        );
    }
    assert!(
        report
            .contains("proxy_cache_path: translated with a difference: entries are kept in memory"),
        "{report}"
    );
    wait_accepting(fulcrum_addr, "fulcrum");
    let client = TestClient::new();
    let mut seen = Vec::new();
    for addr in [nginx_addr, fulcrum_addr] {
        let mut views = Vec::new();
        for path in [
            "/page",
            "/page",
            "/missing",
            "/missing",
            "/cookie",
            "/cookie",
            "/private",
            "/private",
            "/error",
            "/error",
            "/max-age",
            "/max-age",
            "/live/page",
            "/live/page",
            "/page?x=1",
        ] {
            let response = client
                .response(
                    Request::get(format!("http://{addr}{path}"))
                        .body(empty())
                        .expect("request"),
                )
                .await;
            let status = response.status().as_u16();
            let cache = response
                .headers()
                .get("x-cache-status")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = http_body_util::BodyExt::collect(response.into_body())
                .await
                .expect("read the body")
                .to_bytes();
            views.push(format!(
                "{path} {status} {cache:?} {}",
                String::from_utf8_lossy(&body).trim()
            ));
        }
        seen.push(views);
    }
    assert_eq!(seen[0], seen[1], "nginx, then fulcrum");
    for expected in [
        "/page 200 Some(\"HIT\") /page 1",
        "/missing 404 Some(\"HIT\") /missing 1",
        "/cookie 200 Some(\"MISS\") /cookie 2",
        "/error 500 Some(\"MISS\") /error 2",
        "/max-age 200 Some(\"HIT\") /max-age 1",
        "/live/page 200 None /live/page 2",
        "/page?x=1 200 Some(\"MISS\") /page 2",
    ] {
        assert!(
            seen[1].contains(&expected.to_string()),
            "want {expected}: {:#?}",
            seen[1]
        );
    }
}
