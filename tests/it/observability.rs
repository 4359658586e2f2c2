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
    let path = dir.path().join("fulcrum.toml");
    std::fs::write(
        &path,
        format!(
            "[[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n[[route]]\nupstream = \"a\"\n[upstream.a]\nservers = [{{ addr = \"{}\" }}]\n",
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
    fulcrum.signal("TERM");
    assert!(fulcrum.wait_exit(Duration::from_secs(10)).success());
    for line in &fulcrum.log {
        assert!(line.starts_with('{'), "not JSON: {line}");
    }
}
