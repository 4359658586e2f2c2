//! Service discovery through the binary: servers found by a DNS name (A/AAAA, SRV) from a real DNS
//! server the test runs on a free UDP port, replicas on 127.0.0.2, .3, .4 sharing one port, real traffic.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fulcrum::demo::dns::{Answer, DnsServer};
use fulcrum::demo::Backend;
use http::StatusCode;

use crate::harness::*;

/// A replica on `ip:port` answering 200 with `name`.
async fn replica(ip: [u8; 4], port: u16, name: &'static str) -> Backend {
    Backend::named_on(name, SocketAddr::from((ip, port)))
        .await
        .expect("bind a replica on 127.0.0.x")
}

/// Three replicas on 127.0.0.2, .3 and .4, one port.
async fn three_replicas() -> [Backend; 3] {
    for _ in 0..20 {
        let first = replica([127, 0, 0, 2], 0, "two").await;
        let port = first.addr().port();
        let three = Backend::named_on("three", SocketAddr::from(([127, 0, 0, 3], port))).await;
        let four = Backend::named_on("four", SocketAddr::from(([127, 0, 0, 4], port))).await;
        // The ephemeral port was free on .2 only; another test may hold it on .3 or .4.
        if let (Ok(three), Ok(four)) = (three, four) {
            return [first, three, four];
        }
    }
    panic!("no port free on 127.0.0.2, .3 and .4 in 20 tries");
}

fn ips(last: &[u8]) -> Answer {
    Answer::Addresses(last.iter().map(|&b| IpAddr::from([127, 0, 0, b])).collect())
}

/// The binary with an admin API, `[resolver]` asking `dns` (plus `resolver_keys`), and upstream `app`
/// with `upstream_keys` and `servers`.
fn start(dns: &DnsServer, resolver_keys: &str, upstream_keys: &str, servers: &str) -> AdminBinary {
    start_with(dns, resolver_keys, upstream_keys, servers, "")
}

/// [`start`] with `tail` at the end of the file (e.g. `[upstream.app.health_check]`).
fn start_with(
    dns: &DnsServer,
    resolver_keys: &str,
    upstream_keys: &str,
    servers: &str,
    tail: &str,
) -> AdminBinary {
    AdminBinary::from_toml(&format!(
        "[resolver]\nservers = [\"{}\"]\ntimeout = \"1s\"\n{resolver_keys}\n\n\
         [[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[route]]\npath = \"/\"\nupstream = \"app\"\n\n\
         [upstream.app]\n{upstream_keys}\nservers = [{servers}]\n{tail}\n",
        dns.addr
    ))
}

/// The servers of `app` in `/status`: (addr, name) in order.
async fn servers(binary: &AdminBinary) -> Vec<(String, String)> {
    let doc = binary.status().await;
    doc["pools"][0]["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .map(|s| {
            (
                s["addr"].as_str().unwrap_or_default().to_string(),
                s["name"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Waits (bounded) until `app` has exactly `want` servers, in any order.
async fn wait_servers(binary: &AdminBinary, want: &[&str]) {
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    loop {
        let mut now: Vec<String> = servers(binary).await.into_iter().map(|(a, _)| a).collect();
        now.sort();
        if now == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "servers of app are {now:?}, waited for {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Clients sending GETs until stopped; counts answers that were not 200.
struct Traffic {
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicUsize>,
    sent: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    fn start(url: String, clients: usize) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicUsize::new(0));
        let sent = Arc::new(AtomicUsize::new(0));
        let tasks = (0..clients)
            .map(|_| {
                let (url, stop, failed, sent) = (
                    url.clone(),
                    Arc::clone(&stop),
                    Arc::clone(&failed),
                    Arc::clone(&sent),
                );
                tokio::spawn(async move {
                    let client = TestClient::new();
                    while !stop.load(Ordering::Relaxed) {
                        let reply = client.get(&url).await;
                        sent.fetch_add(1, Ordering::Relaxed);
                        if reply.status != StatusCode::OK {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        Traffic {
            stop,
            failed,
            sent,
            tasks,
        }
    }

    /// Stops the clients; returns (sent, failed).
    async fn stop(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("a client task");
        }
        (
            self.sent.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_scaled_out_and_in_under_traffic_follow_the_name_with_no_failed_request() {
    let dns = DnsServer::start().await;
    let replicas = three_replicas().await;
    let port = replicas[0].addr().port();
    dns.set("replicas.test", ips(&[2]));
    let mut binary = start(
        &dns,
        "",
        "",
        &format!("{{ addr = \"replicas.test:{port}\", resolve = true }}"),
    );
    // The first answer is in before the listener opens.
    let first = servers(&binary).await;
    assert_eq!(
        first,
        vec![(format!("127.0.0.2:{port}"), "replicas.test".to_string())]
    );
    let traffic = Traffic::start(format!("http://{}/", binary.addr), 4);

    // Scale out to three: the new replicas take traffic (answers' TTL is 1 s).
    dns.set("replicas.test", ips(&[2, 3, 4]));
    wait_until(
        Duration::from_secs(8),
        "the added replicas to take requests",
        || replicas[1].requests() > 5 && replicas[2].requests() > 5,
    )
    .await;
    binary
        .process
        .wait_for_line("service discovery: the set of servers changed");

    // Scale in to one: the others get no new requests once the set has changed.
    dns.set("replicas.test", ips(&[3]));
    wait_servers(&binary, &[&format!("127.0.0.3:{port}")]).await;
    let (two, four) = (replicas[0].requests(), replicas[2].requests());
    let three = replicas[1].requests();
    wait_until(
        Duration::from_secs(5),
        "the remaining replica to take 20 more requests",
        || replicas[1].requests() >= three + 20,
    )
    .await;
    let (sent, failed) = traffic.stop().await;
    assert_eq!(failed, 0, "{failed} of {sent} requests failed");
    // At most the requests already picked when the set changed.
    assert!(
        replicas[0].requests() <= two + 4,
        "127.0.0.2 kept getting requests"
    );
    assert!(
        replicas[2].requests() <= four + 4,
        "127.0.0.4 kept getting requests"
    );
    let metrics = binary.metrics().await;
    assert_eq!(
        sample(&metrics, "fulcrum_upstream_servers", &["upstream=\"app\""]),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_or_failing_resolver_keeps_the_last_set() {
    let dns = DnsServer::start().await;
    let replicas = three_replicas().await;
    let port = replicas[0].addr().port();
    dns.set("replicas.test", ips(&[2, 3]));
    let mut binary = start(
        &dns,
        "valid = \"1s\"",
        "",
        &format!("{{ addr = \"replicas.test:{port}\", resolve = true }}"),
    );
    let two = [format!("127.0.0.2:{port}"), format!("127.0.0.3:{port}")];
    wait_servers(&binary, &[&two[0], &two[1]]).await;

    for (answer, reason) in [(Answer::Silent, "timeout"), (Answer::ServFail, "servfail")] {
        dns.set("replicas.test", answer);
        let label = format!("reason=\"{reason}\"");
        wait_until_async(Duration::from_secs(8), reason, || async {
            sample(
                &binary.metrics().await,
                "fulcrum_resolver_errors_total",
                &["name=\"replicas.test\"", &label],
            ) >= 2.0
        })
        .await;
        wait_servers(&binary, &[&two[0], &two[1]]).await;
        let client = TestClient::new();
        for _ in 0..6 {
            assert_eq!(
                client.get(&format!("http://{}/", binary.addr)).await.status,
                StatusCode::OK
            );
        }
    }
    assert!(replicas[0].requests() >= 3 && replicas[1].requests() >= 3);
    binary
        .process
        .wait_for_line("resolution failed; keeping the last set of servers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_starts_before_the_name_exists_nxdomain_empties_the_set_and_a_returning_name_fills_it() {
    let dns = DnsServer::start().await;
    let replicas = three_replicas().await;
    let port = replicas[0].addr().port();
    // `fulcrum check` passes for a name that does not resolve yet.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("check.toml");
    std::fs::write(
        &path,
        format!(
            "[resolver]\nservers = [\"{}\"]\n[[listener]]\nlisten = \"127.0.0.1:0\"\n\
             [[route]]\nupstream = \"app\"\n[upstream.app]\n\
             servers = [{{ addr = \"replicas.test:{port}\", resolve = true }}]\n",
            dns.addr
        ),
    )
    .expect("write");
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .expect("run fulcrum check");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    let binary = start(
        &dns,
        "valid = \"1s\"",
        "",
        &format!("{{ addr = \"replicas.test:{port}\", resolve = true }}"),
    );
    let url = format!("http://{}/", binary.addr);
    let client = TestClient::new();
    let empty = client.get(&url).await;
    assert_eq!(
        empty.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        empty.body
    );
    assert!(empty.headers.contains_key("retry-after"));

    dns.set("replicas.test", ips(&[4]));
    wait_servers(&binary, &[&format!("127.0.0.4:{port}")]).await;
    assert_eq!(client.get(&url).await.body, "four");

    dns.remove("replicas.test");
    wait_servers(&binary, &[]).await;
    assert_eq!(
        client.get(&url).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let metrics = binary.metrics().await;
    assert!(
        sample(
            &metrics,
            "fulcrum_resolver_errors_total",
            &["name=\"replicas.test\"", "reason=\"nxdomain\""]
        ) >= 1.0
    );

    dns.set("replicas.test", ips(&[2, 3]));
    wait_servers(
        &binary,
        &[&format!("127.0.0.2:{port}"), &format!("127.0.0.3:{port}")],
    )
    .await;
    assert_eq!(client.get(&url).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_give_ports_weights_and_backups() {
    let dns = DnsServer::start().await;
    let a = replica([127, 0, 0, 2], 0, "a").await;
    let b = replica([127, 0, 0, 3], 0, "b").await;
    let backup = replica([127, 0, 0, 4], 0, "backup").await;
    dns.set("a.node.test", ips(&[2]));
    dns.set("b.node.test", ips(&[3]));
    dns.set("c.node.test", ips(&[4]));
    dns.set(
        "_http._tcp.api.service.test",
        Answer::Srv(vec![
            (1, 3, a.addr().port(), "a.node.test".into()),
            (1, 0, b.addr().port(), "b.node.test".into()),
            (5, 1, backup.addr().port(), "c.node.test".into()),
        ]),
    );
    let binary = start(
        &dns,
        "",
        "strategy = \"weighted\"",
        "{ addr = \"api.service.test\", service = \"http\", resolve = true }",
    );
    wait_servers(
        &binary,
        &[
            &a.addr().to_string(),
            &b.addr().to_string(),
            &backup.addr().to_string(),
        ],
    )
    .await;
    let doc = binary.status().await;
    let by_addr = |addr: SocketAddr| {
        doc["pools"][0]["servers"]
            .as_array()
            .expect("servers")
            .iter()
            .find(|s| s["addr"] == addr.to_string())
            .cloned()
            .expect("the server is listed")
    };
    assert_eq!(by_addr(a.addr())["weight"], 3);
    // SRV weight 0 counts as 1.
    assert_eq!(by_addr(b.addr())["weight"], 1);
    assert_eq!(by_addr(backup.addr())["backup"], true);
    assert_eq!(by_addr(a.addr())["backup"], false);

    let client = TestClient::new();
    let url = format!("http://{}/", binary.addr);
    for _ in 0..80 {
        assert_eq!(client.get(&url).await.status, StatusCode::OK);
    }
    assert_eq!(
        backup.requests(),
        0,
        "the backup took traffic while primaries were up"
    );
    assert!(
        a.requests() > b.requests() * 3 / 2,
        "weights 3:1 gave {}:{}",
        a.requests(),
        b.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_that_stays_keeps_its_state_and_a_reload_keeps_the_set() {
    let dns = DnsServer::start().await;
    let replicas = three_replicas().await;
    let port = replicas[0].addr().port();
    // .5 has no replica: connecting to it fails, so it is passively down after one failure.
    dns.set("replicas.test", ips(&[2, 5]));
    let mut binary = start(
        &dns,
        "",
        "max_fails = 1\nfail_timeout = \"60s\"",
        &format!("{{ addr = \"replicas.test:{port}\", resolve = true }}"),
    );
    let dead = format!("127.0.0.5:{port}");
    wait_servers(&binary, &[&format!("127.0.0.2:{port}"), &dead]).await;
    let client = TestClient::new();
    let url = format!("http://{}/", binary.addr);
    for _ in 0..4 {
        assert_eq!(client.get(&url).await.status, StatusCode::OK);
    }
    let passive_down = |doc: &serde_json::Value, addr: &str| {
        doc["pools"][0]["servers"]
            .as_array()
            .expect("servers")
            .iter()
            .find(|s| s["addr"] == addr)
            .map(|s| s["passive_down"] == true)
    };
    assert_eq!(passive_down(&binary.status().await, &dead), Some(true));

    // A replica is added: the set changes, the dead address stays and stays down.
    dns.set("replicas.test", ips(&[2, 3, 5]));
    wait_servers(
        &binary,
        &[
            &format!("127.0.0.2:{port}"),
            &format!("127.0.0.3:{port}"),
            &dead,
        ],
    )
    .await;
    assert_eq!(passive_down(&binary.status().await, &dead), Some(true));

    // A reload that keeps the entry keeps the set without asking again first, and the state.
    let asked = dns.queries();
    dns.set("replicas.test", Answer::Silent);
    binary.reload_replacing("max_fails = 1", "max_fails = 2");
    let after: Vec<String> = servers(&binary).await.into_iter().map(|(a, _)| a).collect();
    assert_eq!(after.len(), 3, "the set after the reload: {after:?}");
    assert_eq!(passive_down(&binary.status().await, &dead), Some(true));
    // No burst of queries: at most the one the name's own schedule makes.
    assert!(
        dns.queries() <= asked + 2,
        "{} queries after the reload",
        dns.queries() - asked
    );
}

#[test]
fn a_name_without_resolve_is_expanded_at_load_and_an_unknown_one_names_file_line_and_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fulcrum.toml");
    let check = |servers: &str| {
        std::fs::write(
            &path,
            format!(
                "[[listener]]\nlisten = \"127.0.0.1:0\"\n[[route]]\nupstream = \"app\"\n\
                 [upstream.app]\nservers = [\n  {servers}\n]\n"
            ),
        )
        .expect("write");
        std::process::Command::new(env!("CARGO_BIN_EXE_fulcrum"))
            .args(["check", "-c"])
            .arg(&path)
            .output()
            .expect("run fulcrum check")
    };
    let unknown = check("{ addr = \"no-such-host.invalid:80\" }");
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(!unknown.status.success());
    assert!(
        stderr.contains("fulcrum.toml:7")
            && stderr.contains("servers[0].addr")
            && stderr.contains("no-such-host.invalid")
            && stderr.contains("host not found"),
        "{stderr}"
    );
    assert!(check("{ addr = \"localhost:80\" }").status.success());
    // service needs resolve; a resolve entry needs a port unless it is SRV.
    assert!(!check("{ addr = \"api.test\", service = \"http\" }")
        .status
        .success());
    assert!(!check("{ addr = \"api.test\", resolve = true }")
        .status
        .success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn localhost_resolved_at_load_is_one_server_per_address_and_keeps_its_name() {
    let backend = named("local").await;
    let port = backend.addr().port();
    let binary = AdminBinary::start("", "", &format!("{{ addr = \"localhost:{port}\" }}"));
    let listed = servers(&binary).await;
    let expected: Vec<(String, String)> =
        std::net::ToSocketAddrs::to_socket_addrs(&("localhost", port))
            .expect("localhost resolves")
            .map(|a| (a.to_string(), "localhost".to_string()))
            .collect();
    assert!(!expected.is_empty());
    assert_eq!(listed.len(), expected.len(), "{listed:?} vs {expected:?}");
    assert!(listed.contains(&(format!("127.0.0.1:{port}"), "localhost".to_string())));
    let reply = TestClient::new()
        .get(&format!("http://{}/", binary.addr))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_servers_found_by_name_are_verified_against_that_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = crate::pki::TestCa::new("discovery CA");
    let ca_file = ca.write(dir.path(), "ca");
    // The certificate names only secure.test: a handshake that sent or checked the address would fail.
    let leaf = ca.issue(&["secure.test"]);
    let handler: fulcrum::demo::Handler =
        Arc::new(|_request| Box::pin(async { text(StatusCode::OK, "secure") }));
    let replica = Backend::start_tls(
        SocketAddr::from(([127, 0, 0, 2], 0)),
        handler,
        leaf.server_config(dir.path(), "secure"),
    )
    .await
    .expect("start a TLS replica");
    let dns = DnsServer::start().await;
    dns.set("secure.test", ips(&[2]));
    let binary = start(
        &dns,
        "",
        &format!("ca_file = \"{}\"", ca_file.display()),
        &format!(
            "{{ addr = \"https://secure.test:{}\", resolve = true }}",
            replica.addr().port()
        ),
    );
    wait_servers(&binary, &[&replica.addr().to_string()]).await;
    let reply = TestClient::new()
        .get(&format!("http://{}/", binary.addr))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body, "secure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_address_is_health_checked_before_it_takes_traffic() {
    let dns = DnsServer::start().await;
    // 127.0.0.3 answers 500 to everything, its probe included.
    let sick_requests = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&sick_requests);
    let handler: fulcrum::demo::Handler = Arc::new(move |request| {
        if request.uri().path() != "/health" {
            counted.fetch_add(1, Ordering::Relaxed);
        }
        Box::pin(async { text(StatusCode::INTERNAL_SERVER_ERROR, "sick") })
    });
    let mut pair = None;
    for _ in 0..20 {
        let healthy = replica([127, 0, 0, 2], 0, "healthy").await;
        let at = SocketAddr::from(([127, 0, 0, 3], healthy.addr().port()));
        // The ephemeral port was free on .2 only; another test may hold it on .3.
        if let Ok(sick) = Backend::start(at, Arc::clone(&handler)).await {
            pair = Some((healthy, sick));
            break;
        }
    }
    let (healthy, _sick) = pair.expect("a port free on 127.0.0.2 and .3 in 20 tries");
    let port = healthy.addr().port();
    dns.set("replicas.test", ips(&[2]));
    let binary = start_with(
        &dns,
        "",
        "",
        &format!("{{ addr = \"replicas.test:{port}\", resolve = true }}"),
        "[upstream.app.health_check]\npath = \"/health\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\n\
         max_fails = 1\npasses = 1\nstart_unhealthy = true\n",
    );
    let url = format!("http://{}/", binary.addr);
    wait_until_async(
        Duration::from_secs(5),
        "the first replica to be up",
        || async { TestClient::new().get(&url).await.status == StatusCode::OK },
    )
    .await;
    dns.set("replicas.test", ips(&[2, 3]));
    let sick = format!("127.0.0.3:{port}");
    wait_servers(&binary, &[&format!("127.0.0.2:{port}"), &sick]).await;
    // Its probe fails; it never takes a request while traffic flows.
    wait_until_async(
        Duration::from_secs(5),
        "a probe of the added replica",
        || async {
            let doc = binary.status().await;
            doc["pools"][0]["servers"]
                .as_array()
                .expect("servers")
                .iter()
                .any(|s| s["addr"] == sick.as_str() && s["last_probe"]["ok"] == false)
        },
    )
    .await;
    let client = TestClient::new();
    for _ in 0..30 {
        assert_eq!(client.get(&url).await.status, StatusCode::OK);
    }
    assert_eq!(sick_requests.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_removes_the_entry_stops_its_resolution() {
    let dns = DnsServer::start().await;
    let replicas = three_replicas().await;
    let port = replicas[0].addr().port();
    dns.set("replicas.test", ips(&[2]));
    let mut binary = start(
        &dns,
        "valid = \"1s\"",
        "",
        &format!("{{ addr = \"replicas.test:{port}\", resolve = true }}"),
    );
    wait_servers(&binary, &[&format!("127.0.0.2:{port}")]).await;
    binary.reload_replacing(
        &format!("{{ addr = \"replicas.test:{port}\", resolve = true }}"),
        &format!("{{ addr = \"127.0.0.4:{port}\" }}"),
    );
    wait_servers(&binary, &[&format!("127.0.0.4:{port}")]).await;
    // At most one query already on its way; then none for three of its 1-second intervals.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = dns.queries();
    wait_until(Duration::from_secs(5), "three seconds without a query", {
        let started = std::time::Instant::now();
        move || started.elapsed() >= Duration::from_secs(3)
    })
    .await;
    assert_eq!(dns.queries(), asked, "the removed name is still asked");
    assert_eq!(
        TestClient::new()
            .get(&format!("http://{}/", binary.addr))
            .await
            .body,
        "four"
    );
}
