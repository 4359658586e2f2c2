//! The admin API: status, drain and undrain, token, reload, config.

use http::{Request, StatusCode};

use crate::harness::*;

fn with_admin(upstream: &str, token: Option<&str>) -> String {
    let token = token
        .map(|t| format!("token = \"{t}\"\n"))
        .unwrap_or_default();
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{token}\n{}",
        one_pool(upstream)
    )
}

fn admin_url(proxy: &TestProxy, path: &str) -> String {
    format!(
        "http://{}{path}",
        proxy.proxy.admin_addr().expect("admin is configured")
    )
}

async fn post(client: &TestClient, url: &str, token: Option<&str>) -> Reply {
    let mut request = Request::post(url);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    client.send(request.body(empty()).expect("POST")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_servers_and_drain_stops_new_requests_while_in_flight_finishes() {
    let (a, gate) = held_backend("a", Some("/slow")).await;
    let b = named("b").await;
    let proxy = TestProxy::start(&with_admin(
        &format!(
            "servers = [{{ addr = \"{}\" }}, {{ addr = \"{}\" }}]",
            a.addr(),
            b.addr()
        ),
        None,
    ))
    .await;
    let client = TestClient::new();
    let status = client.get(&admin_url(&proxy, "/status")).await;
    assert_eq!(status.status, StatusCode::OK);
    assert_eq!(status.headers["content-type"], "application/json");
    let doc: serde_json::Value = serde_json::from_str(&status.body).expect("JSON");
    let servers = doc["pools"][0]["servers"].as_array().expect("servers");
    assert_eq!(servers.len(), 2);
    assert_eq!(servers[0]["addr"], a.addr().to_string());
    assert_eq!(servers[0]["healthy"], true);

    // A slow request holds a; then a is drained through the API.
    let held = send_held(&client, proxy.url("/slow"), &a, 1).await;
    let drained = post(
        &client,
        &admin_url(
            &proxy,
            &format!("/upstreams/pool/servers/{}/drain", a.addr()),
        ),
        None,
    )
    .await;
    assert_eq!(drained.status, StatusCode::OK, "{}", drained.body);
    let doc: serde_json::Value = serde_json::from_str(&drained.body).expect("JSON");
    assert_eq!(doc["drained"], true);
    assert_eq!(doc["in_flight"], 1);
    for _ in 0..10 {
        assert_eq!(
            client.get(&proxy.url("/")).await.body,
            "b",
            "no new request to a drained server"
        );
    }
    gate.add_permits(1);
    assert_eq!(
        held.await.expect("held request").body,
        "a",
        "its in-flight request finished"
    );
    let undrained = post(
        &client,
        &admin_url(
            &proxy,
            &format!("/upstreams/pool/servers/{}/undrain", a.addr()),
        ),
        None,
    )
    .await;
    assert_eq!(undrained.status, StatusCode::OK);
    let mut names = Vec::new();
    for _ in 0..10 {
        names.push(client.get(&proxy.url("/")).await.body);
    }
    assert!(names.iter().any(|n| n == "a"), "{names:?}");
    let missing = post(
        &client,
        &admin_url(&proxy, "/upstreams/pool/servers/10.9.9.9:1/drain"),
        None,
    )
    .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.body.contains("\"error\""), "{}", missing.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changes_need_the_token_and_config_is_redacted() {
    let a = named("a").await;
    let proxy = TestProxy::start(&with_admin(
        &format!("servers = [{{ addr = \"{}\" }}]", a.addr()),
        Some("s3cret"),
    ))
    .await;
    let client = TestClient::new();
    let drain = admin_url(
        &proxy,
        &format!("/upstreams/pool/servers/{}/drain", a.addr()),
    );
    assert_eq!(
        post(&client, &drain, None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post(&client, &drain, Some("wrong")).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post(&client, &drain, Some("s3cret")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        client.get(&admin_url(&proxy, "/status")).await.status,
        StatusCode::OK,
        "reading needs no token"
    );
    let config = client.get(&admin_url(&proxy, "/config")).await;
    assert!(!config.body.contains("s3cret"), "{}", config.body);
    assert!(config.body.contains("<redacted>"), "{}", config.body);
    assert_eq!(
        client.get(&admin_url(&proxy, "/nope")).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_reload_applies_the_file_or_reports_why_not() {
    let a = named("a").await;
    let b = named("b").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fulcrum.toml");
    let listen = refusing_addr();
    let admin = refusing_addr();
    let config = |backend: &fulcrum::demo::Backend| {
        format!(
            "[global]\nwatch_config = false\n[admin]\nlisten = \"{admin}\"\n[[listener]]\nname = \"public\"\nlisten = \"{listen}\"\n[[route]]\nupstream = \"pool\"\n[upstream.pool]\nservers = [{{ addr = \"{}\" }}]\n",
            backend.addr()
        )
    };
    std::fs::write(&path, config(&a)).expect("write config");
    let mut fulcrum = FulcrumProcess::spawn(&path, &[]);
    fulcrum.wait_for_line("fulcrum is serving");
    let client = TestClient::new();
    std::fs::write(&path, config(&b)).expect("write config");
    let reloaded = post(&client, &format!("http://{admin}/reload"), None).await;
    assert_eq!(reloaded.status, StatusCode::OK, "{}", reloaded.body);
    assert_eq!(client.get(&format!("http://{listen}/")).await.body, "b");
    std::fs::write(&path, format!("{}\nbroken = \n", config(&b))).expect("write config");
    let refused = post(&client, &format!("http://{admin}/reload"), None).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(
        refused.body.contains(&format!("{}:", path.display())),
        "{}",
        refused.body
    );
    assert_eq!(client.get(&format!("http://{listen}/")).await.body, "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_requests_failures_retries_and_rate_limits() {
    let good = named("good").await;
    let dead = refusing_addr();
    let proxy = TestProxy::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n[[route]]\npath = \"/\"\nupstream = \"pool\"\nrate_limit = [\"api\"]\n[rate_limit.api]\nrate = \"1r/m\"\nburst = 2\nnodelay = true\n[upstream.pool]\nservers = [{{ addr = \"{dead}\" }}, {{ addr = \"{}\" }}]\n",
        good.addr()
    ))
    .await;
    let client = TestClient::new();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(client.get(&proxy.url("/")).await.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    let metrics = client.get(&admin_url(&proxy, "/metrics")).await;
    assert_eq!(metrics.status, StatusCode::OK);
    let text = metrics.body;
    let good_addr = format!("server=\"{}\"", good.addr());
    let dead_addr = format!("server=\"{dead}\"");
    assert_eq!(
        sample(
            &text,
            "fulcrum_requests_total",
            &[&good_addr, "code=\"2xx\""]
        ),
        3.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "fulcrum_passive_failures_total", &[&dead_addr]),
        1.0
    );
    assert_eq!(
        sample(&text, "fulcrum_retries_total", &["upstream=\"pool\""]),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "fulcrum_server_transitions_total",
            &[&dead_addr, "to=\"down\"", "cause=\"passive\""]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "fulcrum_ratelimit_decisions_total",
            &["zone=\"api\"", "outcome=\"rejected\""]
        ),
        2.0
    );
    assert_eq!(
        sample(
            &text,
            "fulcrum_ratelimit_decisions_total",
            &["zone=\"api\"", "outcome=\"allowed\""]
        ),
        3.0
    );
    assert_eq!(
        sample(&text, "fulcrum_local_responses_total", &["code=\"429\""]),
        2.0
    );
    assert_eq!(sample(&text, "fulcrum_server_healthy", &[&dead_addr]), 0.0);
    assert_eq!(sample(&text, "fulcrum_server_healthy", &[&good_addr]), 1.0);
    assert_eq!(
        sample(
            &text,
            "fulcrum_request_duration_seconds_count",
            &["upstream=\"pool\""]
        ),
        3.0
    );
    assert!(
        sample(&text, "fulcrum_client_connections", &["listener=\"web\""]) >= 1.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "fulcrum_route_requests_total",
            &["route=\"*/\"", "code=\"2xx\""]
        ),
        3.0
    );
    assert_eq!(
        sample(
            &text,
            "fulcrum_route_requests_total",
            &["route=\"*/\"", "code=\"4xx\""]
        ),
        2.0
    );
    assert_eq!(sample(&text, "fulcrum_build_info", &[]), 1.0);
    assert_eq!(
        sample(
            &text,
            "fulcrum_config_reloads_total",
            &["result=\"success\""]
        ),
        1.0
    );
}
