//! Request IDs and log formats.

use std::time::Duration;

use http::{Request, StatusCode};

use crate::harness::*;

async fn echo_request_id() -> fulcrum::demo::Backend {
    backend_with(|request: http::Request<hyper::body::Incoming>| async move {
        let id = request
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_string();
        text(StatusCode::OK, id)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sane_request_id_round_trips() {
    let backend = echo_request_id().await;
    let proxy = TestProxy::start(&one_pool(&format!(
        "servers = [{{ addr = \"{}\" }}]",
        backend.addr()
    )))
    .await;
    let reply = TestClient::new()
        .get_with(&proxy.url("/"), "x-request-id", "trace-42.a:b")
        .await;
    assert_eq!(
        reply.body, "trace-42.a:b",
        "the upstream got the client's id"
    );
    assert_eq!(
        reply.headers["x-request-id"], "trace-42.a:b",
        "the client got it back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_odd_request_id_is_generated_and_returned() {
    let backend = echo_request_id().await;
    let proxy = TestProxy::start(&one_pool(&format!(
        "servers = [{{ addr = \"{}\" }}]",
        backend.addr()
    )))
    .await;
    let client = TestClient::new();
    for request in [
        Request::get(proxy.url("/")).body(empty()).expect("GET"),
        Request::get(proxy.url("/"))
            .header("x-request-id", "no spaces allowed")
            .body(empty())
            .expect("GET"),
    ] {
        let reply = client.send(request).await;
        let returned = reply.headers["x-request-id"]
            .to_str()
            .expect("ascii")
            .to_string();
        assert_eq!(returned.len(), 32);
        assert!(
            returned.bytes().all(|b| b.is_ascii_hexdigit()),
            "{returned}"
        );
        assert_eq!(reply.body, returned, "the upstream saw the same id");
    }
    // The proxy's own answers carry one too.
    let missing = TestProxy::start(&format!(
        "[[listener]]\nlisten = \"127.0.0.1:0\"\n[[route]]\npath = \"/only\"\nupstream = \"a\"\n[upstream.a]\nservers = [{{ addr = \"{}\" }}]\n",
        backend.addr()
    ))
    .await;
    let not_found = client
        .get_with(&missing.url("/"), "x-request-id", "lost-1")
        .await;
    assert_eq!(not_found.status, StatusCode::NOT_FOUND);
    assert_eq!(not_found.headers["x-request-id"], "lost-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_writes_one_json_object_per_line() {
    let backend = named("a").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let listen = refusing_addr();
    let path = dir.path().join("fulcrum.toml");
    std::fs::write(
        &path,
        format!(
            "[[listener]]\nname = \"public\"\nlisten = \"{listen}\"\n[[route]]\npath = \"/only\"\nupstream = \"a\"\n[upstream.a]\nservers = [{{ addr = \"{}\" }}]\n",
            backend.addr()
        ),
    )
    .expect("write config");
    let mut command = FulcrumProcess::command(&path);
    command.args(["--log-format", "json"]);
    let mut fulcrum = FulcrumProcess::from_command(command);
    let line = fulcrum.wait_for_line("fulcrum is serving");
    assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
    assert!(line.contains("\"level\":\"INFO\""), "{line}");
    // A request that goes wrong is logged with its ID.
    let reply = TestClient::new()
        .get_with(
            &format!("http://{listen}/elsewhere"),
            "x-request-id",
            "find-me-42",
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let warning = fulcrum.wait_for_line("find-me-42");
    assert!(warning.contains("no route"), "{warning}");
    fulcrum.signal("TERM");
    assert!(fulcrum.wait_exit(Duration::from_secs(10)).success());
    for line in &fulcrum.log {
        assert!(line.starts_with('{'), "not JSON: {line}");
    }
}

async fn read_lines(path: &std::path::Path, count: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= count {
            return lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {} access log lines: {text}",
            lines.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_parse_in_json_and_combined() {
    let backend = named("hello").await;
    let dir = tempfile::tempdir().expect("temp dir");
    for format in ["json", "combined"] {
        let path = dir.path().join(format!("access-{format}.log"));
        let proxy = TestProxy::start(&format!(
            "[access_log]\npath = \"{}\"\nformat = \"{format}\"\n{}",
            path.display(),
            one_pool(&format!("servers = [{{ addr = \"{}\" }}]", backend.addr()))
        ))
        .await;
        let client = TestClient::new();
        let request = Request::get(proxy.url("/greet?who=you"))
            .header("x-request-id", "log-1")
            .header("user-agent", "fulcrum-test")
            .body(empty())
            .expect("GET");
        assert_eq!(client.send(request).await.status, StatusCode::OK);
        let lines = read_lines(&path, 1).await;
        let line = &lines[0];
        if format == "json" {
            let doc: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            assert_eq!(doc["status"], 200);
            assert_eq!(doc["request"], "GET /greet?who=you HTTP/1.1");
            assert_eq!(doc["bytes"], 5);
            assert_eq!(doc["request_id"], "log-1");
            assert_eq!(doc["client"], "127.0.0.1");
            assert_eq!(doc["upstream"], backend.addr().to_string());
            assert_eq!(doc["user_agent"], "fulcrum-test");
            assert_eq!(doc["rate_limit"], "none");
            assert!(doc["upstream_time_s"].as_f64().is_some_and(|t| t >= 0.0));
        } else {
            assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
            assert!(
                line.contains("] \"GET /greet?who=you HTTP/1.1\" 200 5 \"-\" \"fulcrum-test\" rt="),
                "{line}"
            );
            assert!(
                line.contains(&format!("uaddr={}", backend.addr())),
                "{line}"
            );
            assert!(line.ends_with("rid=log-1 rl=none"), "{line}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_access_log_after_a_rotation() {
    let backend = named("hello").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("access.log");
    let path = dir.path().join("fulcrum.toml");
    let listen = refusing_addr();
    std::fs::write(
        &path,
        format!(
            "[access_log]\npath = \"{}\"\n[[listener]]\nname = \"public\"\nlisten = \"{listen}\"\n[[route]]\nupstream = \"a\"\n[upstream.a]\nservers = [{{ addr = \"{}\" }}]\n",
            log.display(),
            backend.addr()
        ),
    )
    .expect("write config");
    let mut fulcrum = FulcrumProcess::spawn(&path, &[]);
    fulcrum.wait_for_line("fulcrum is serving");
    let client = TestClient::new();
    client.get(&format!("http://{listen}/before")).await;
    read_lines(&log, 1).await;
    // logrotate: move the file away, then signal.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    fulcrum.signal("USR1");
    fulcrum.wait_for_line("reopening the access log");
    client.get(&format!("http://{listen}/after")).await;
    let fresh = read_lines(&log, 1).await;
    assert!(fresh[0].contains("GET /after"), "{fresh:?}");
    let old = std::fs::read_to_string(&rotated).expect("rotated file");
    assert!(
        old.contains("GET /before") && !old.contains("/after"),
        "{old}"
    );
}
