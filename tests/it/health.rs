//! Active health checks through real sockets: probes, rise/fall, timeouts, TCP checks, slow start,
//! fail-open / fail-closed, drain.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use fulcrum::demo::Backend;
use fulcrum::upstream::ServerState;
use http::StatusCode;

use crate::harness::*;

/// What a health endpoint answered, and whether the proxy held the server out when the probe arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProbeSeen {
    answered_ok: bool,
    was_down: bool,
}

/// A backend named `name` whose `/health` answers 200 or 503 as `healthy` says, logging every probe.
struct FlappyBackend {
    backend: Backend,
    healthy: Arc<AtomicBool>,
    probes: Arc<Mutex<Vec<ProbeSeen>>>,
    state: Arc<OnceLock<Arc<ServerState>>>,
}

impl FlappyBackend {
    async fn start(name: &'static str) -> FlappyBackend {
        let healthy = Arc::new(AtomicBool::new(true));
        let probes = Arc::new(Mutex::new(Vec::new()));
        let state: Arc<OnceLock<Arc<ServerState>>> = Arc::new(OnceLock::new());
        let (h, p, s) = (
            Arc::clone(&healthy),
            Arc::clone(&probes),
            Arc::clone(&state),
        );
        let backend = backend_with(move |request: http::Request<hyper::body::Incoming>| {
            let (h, p, s) = (Arc::clone(&h), Arc::clone(&p), Arc::clone(&s));
            async move {
                if request.uri().path() != "/health" {
                    return text(StatusCode::OK, name);
                }
                let ok = h.load(Ordering::SeqCst);
                let was_down = s.get().is_some_and(|state| state.is_active_down());
                p.lock().expect("probe log").push(ProbeSeen {
                    answered_ok: ok,
                    was_down,
                });
                if ok {
                    text(StatusCode::OK, "ok")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "sick")
                }
            }
        })
        .await;
        FlappyBackend {
            backend,
            healthy,
            probes,
            state,
        }
    }

    fn probes(&self) -> Vec<ProbeSeen> {
        self.probes.lock().expect("probe log").clone()
    }
}

/// The live state of the `index`-th primary server of the first pool.
fn state_of(proxy: &TestProxy, index: usize) -> Arc<ServerState> {
    Arc::clone(&proxy.proxy.live().snapshot().pools[0].primary.servers[index].state)
}

fn check(extra: &str) -> String {
    format!("[upstream.pool.health_check]\ntype = \"http\"\npath = \"/health\"\n{extra}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_check_takes_server_out_after_max_fails_and_back_after_passes() {
    let flappy = FlappyBackend::start("flappy").await;
    let steady = named("steady").await;
    let proxy = TestProxy::start(&format!(
        "{}{}",
        one_pool(&format!(
            "servers = [{{ addr = \"{}\" }}, {{ addr = \"{}\" }}]",
            flappy.backend.addr(),
            steady.addr()
        )),
        check("interval = \"100ms\"\ntimeout = \"80ms\"\nmax_fails = 3\npasses = 2")
    ))
    .await;
    let state = state_of(&proxy, 0);
    let _ = flappy.state.set(Arc::clone(&state));
    wait_until(Duration::from_secs(5), "two good probes", || {
        flappy.probes().len() >= 2
    })
    .await;

    flappy.healthy.store(false, Ordering::SeqCst);
    wait_until(Duration::from_secs(5), "the server to be taken out", || {
        state.is_active_down()
    })
    .await;
    let failed_while_up = flappy
        .probes()
        .iter()
        .filter(|p| !p.answered_ok && !p.was_down)
        .count();
    assert_eq!(
        failed_while_up,
        3,
        "down after exactly max_fails failed probes: {:?}",
        flappy.probes()
    );
    let client = TestClient::new();
    for _ in 0..10 {
        assert_eq!(client.get(&proxy.url("/")).await.body, "steady");
    }

    flappy.healthy.store(true, Ordering::SeqCst);
    wait_until(Duration::from_secs(5), "the server to come back", || {
        !state.is_active_down()
    })
    .await;
    let good_while_down = flappy
        .probes()
        .iter()
        .filter(|p| p.answered_ok && p.was_down)
        .count();
    assert_eq!(
        good_while_down,
        2,
        "back after exactly passes good probes: {:?}",
        flappy.probes()
    );
    let mut names = Vec::new();
    for _ in 0..10 {
        names.push(client.get(&proxy.url("/")).await.body);
    }
    assert!(names.iter().any(|n| n == "flappy"), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_health_endpoint_fails_by_timeout() {
    let hanging = backend_with(|request: http::Request<hyper::body::Incoming>| async move {
        if request.uri().path() == "/health" {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        text(StatusCode::OK, "hanging")
    })
    .await;
    let steady = named("steady").await;
    let proxy = TestProxy::start(&format!(
        "{}{}",
        one_pool(&format!(
            "servers = [{{ addr = \"{}\" }}, {{ addr = \"{}\" }}]",
            hanging.addr(),
            steady.addr()
        )),
        check("interval = \"100ms\"\ntimeout = \"50ms\"\nmax_fails = 1")
    ))
    .await;
    let state = state_of(&proxy, 0);
    wait_until(
        Duration::from_secs(5),
        "the hanging server to be taken out",
        || state.is_active_down(),
    )
    .await;
    assert!(!state_of(&proxy, 1).is_active_down());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_check_detects_a_closed_port() {
    let live = named("live").await;
    let closed = refusing_addr();
    let proxy = TestProxy::start(&format!(
        "{}[upstream.pool.health_check]\ntype = \"tcp\"\ninterval = \"50ms\"\ntimeout = \"40ms\"\nmax_fails = 1\n",
        one_pool(&format!(
            "servers = [{{ addr = \"{}\" }}, {{ addr = \"{closed}\" }}]",
            live.addr()
        ))
    ))
    .await;
    let closed_state = state_of(&proxy, 1);
    wait_until(
        Duration::from_secs(5),
        "the closed port to be detected",
        || closed_state.is_active_down(),
    )
    .await;
    // Let several more probe rounds pass: the open port stays healthy.
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        assert!(!state_of(&proxy, 0).is_active_down());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_port_can_differ_from_the_traffic_port() {
    let live = named("live").await;
    let closed = refusing_addr();
    let proxy = TestProxy::start(&format!(
        "{}[upstream.pool.health_check]\ntype = \"tcp\"\nport = {}\ninterval = \"50ms\"\ntimeout = \"40ms\"\nmax_fails = 1\n",
        one_pool(&format!("servers = [{{ addr = \"{}\" }}]", live.addr())),
        closed.port()
    ))
    .await
    ;
    let state = state_of(&proxy, 0);
    wait_until(Duration::from_secs(5), "the probe port to fail", || {
        state.is_active_down()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_answers_503_with_retry_after() {
    let flappy = FlappyBackend::start("flappy").await;
    flappy.healthy.store(false, Ordering::SeqCst);
    let proxy = TestProxy::start(&format!(
        "{}{}",
        one_pool(&format!(
            "all_unhealthy = \"fail_closed\"\nservers = [{{ addr = \"{}\" }}]",
            flappy.backend.addr()
        )),
        check("interval = \"2s\"\ntimeout = \"1s\"\nmax_fails = 1\nstart_unhealthy = true")
    ))
    .await;
    let reply = TestClient::new().get(&proxy.url("/")).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.headers["retry-after"], "2");
    assert!(
        reply.body.contains("no healthy upstream server"),
        "{}",
        reply.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_sends_to_unhealthy_servers() {
    let flappy = FlappyBackend::start("flappy").await;
    flappy.healthy.store(false, Ordering::SeqCst);
    let proxy = TestProxy::start(&format!(
        "{}{}",
        one_pool(&format!(
            "all_unhealthy = \"fail_open\"\nservers = [{{ addr = \"{}\" }}]",
            flappy.backend.addr()
        )),
        check("interval = \"2s\"\ntimeout = \"1s\"\nmax_fails = 1\nstart_unhealthy = true")
    ))
    .await;
    assert!(state_of(&proxy, 0).is_active_down());
    let reply = TestClient::new().get(&proxy.url("/")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "flappy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_unhealthy_server_waits_for_passes() {
    let flappy = FlappyBackend::start("flappy").await;
    let proxy = TestProxy::start(&format!(
        "{}{}",
        one_pool(&format!(
            "servers = [{{ addr = \"{}\" }}]",
            flappy.backend.addr()
        )),
        check("interval = \"300ms\"\ntimeout = \"200ms\"\npasses = 2\nstart_unhealthy = true")
    ))
    .await;
    let state = state_of(&proxy, 0);
    let client = TestClient::new();
    // Two good probes take at least one interval: until then the pool fails closed (the default with checks).
    if flappy.probes().len() < 2 {
        assert_eq!(
            client.get(&proxy.url("/")).await.status,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    wait_until(Duration::from_secs(5), "passes good probes", || {
        !state.is_active_down()
    })
    .await;
    assert_eq!(
        flappy.probes().len(),
        2,
        "healthy after exactly two good probes"
    );
    assert_eq!(client.get(&proxy.url("/")).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_gives_a_recovered_server_a_rising_share() {
    let flappy = FlappyBackend::start("flappy").await;
    let steady = named("steady").await;
    let proxy = TestProxy::start(&format!(
        "{}{}",
        one_pool(&format!(
            "strategy = \"round_robin\"\nslow_start = \"2s\"\nservers = [{{ addr = \"{}\" }}, {{ addr = \"{}\" }}]",
            flappy.backend.addr(),
            steady.addr()
        )),
        check("interval = \"50ms\"\ntimeout = \"40ms\"\nmax_fails = 1\npasses = 1")
    ))
    .await;
    let state = state_of(&proxy, 0);
    flappy.healthy.store(false, Ordering::SeqCst);
    wait_until(Duration::from_secs(5), "the server to go down", || {
        state.is_active_down()
    })
    .await;
    flappy.healthy.store(true, Ordering::SeqCst);
    wait_until(Duration::from_secs(5), "the server to recover", || {
        !state.is_active_down()
    })
    .await;
    let client = TestClient::new();
    // Five windows of 500 ms from the recovery; the share of the recovered server per window.
    let mut shares = Vec::new();
    let started = Instant::now();
    for window in 1..=5u32 {
        let (mut total, mut flappy_hits) = (0u32, 0u32);
        while started.elapsed() < Duration::from_millis(500) * window {
            total += 1;
            if client.get(&proxy.url("/")).await.body == "flappy" {
                flappy_hits += 1;
            }
        }
        shares.push(f64::from(flappy_hits) / f64::from(total.max(1)));
    }
    // Full share is 0.5. The ramp starts at 10% of the weight (share ~0.09) and reaches 100% at 2 s.
    assert!(
        shares[0] < 0.3,
        "first window share {:.2}: {shares:?}",
        shares[0]
    );
    assert!(
        shares[4] > 0.4,
        "last window share {:.2}: {shares:?}",
        shares[4]
    );
    assert!(
        shares[0] < shares[2] && shares[2] < shares[4] + 0.05,
        "not rising: {shares:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_server_takes_no_new_requests_and_finishes_in_flight() {
    let (a, gate) = held_backend("a", Some("/slow")).await;
    let b = named("b").await;
    let c = named("c").await;
    let proxy = TestProxy::start(&one_pool(&format!(
        "servers = [{{ addr = \"{}\" }}, {{ addr = \"{}\" }}, {{ addr = \"{}\", drain = true }}]",
        a.addr(),
        b.addr(),
        c.addr()
    )))
    .await;
    let client = TestClient::new();
    // Round robin starts with a: the slow request holds it.
    let slow = send_held(&client, proxy.url("/slow"), &a, 1).await;
    state_of(&proxy, 0).set_drained(true);
    for _ in 0..10 {
        assert_eq!(client.get(&proxy.url("/")).await.body, "b");
    }
    assert_eq!(c.requests(), 0, "drain = true in config takes no requests");
    gate.add_permits(1);
    let finished = slow.await.expect("slow request task");
    assert_eq!(
        (finished.status, finished.body.as_str()),
        (StatusCode::OK, "a")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_three_under_load_with_probes_gives_zero_failed_gets() {
    let a = named("a").await;
    let b = named("b").await;
    let c = named("c").await;
    let proxy = TestProxy::start(&format!(
        "{}[upstream.pool.health_check]\ntype = \"tcp\"\ninterval = \"50ms\"\ntimeout = \"40ms\"\nmax_fails = 1\n",
        one_pool(&format!(
            "servers = [{{ addr = \"{}\" }}, {{ addr = \"{}\" }}, {{ addr = \"{}\" }}]",
            a.addr(),
            b.addr(),
            c.addr()
        ))
    ))
    .await;
    let load = SteadyLoad::start(&proxy.url("/"), 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.stop().await;
    // Keep the load on for a while with one backend gone.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let total = load.finish_all_ok("while a backend was killed").await;
    assert!(total > 100, "too little load to mean anything: {total}");
    assert!(
        state_of(&proxy, 2).is_active_down(),
        "the probes noticed the stopped server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_state_survives_a_new_snapshot() {
    let flappy = FlappyBackend::start("flappy").await;
    let steady = named("steady").await;
    let config = |weight: u32| {
        format!(
            "{}{}",
            one_pool(&format!(
                "servers = [{{ addr = \"{}\", weight = {weight} }}, {{ addr = \"{}\" }}]",
                flappy.backend.addr(),
                steady.addr()
            )),
            check("interval = \"1s\"\ntimeout = \"500ms\"\nmax_fails = 1")
        )
    };
    let proxy = TestProxy::start(&config(1)).await;
    flappy.healthy.store(false, Ordering::SeqCst);
    let state = state_of(&proxy, 0);
    wait_until(Duration::from_secs(5), "the server to go down", || {
        state.is_active_down()
    })
    .await;
    proxy.apply(&config(5));
    let after = state_of(&proxy, 0);
    assert!(Arc::ptr_eq(&state, &after), "same address, same live state");
    assert!(
        after.is_active_down(),
        "still down right after the new snapshot"
    );
    let client = TestClient::new();
    for _ in 0..10 {
        assert_eq!(client.get(&proxy.url("/")).await.body, "steady");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_body_fails_a_probe_whose_body_lacks_the_text() {
    // Both answer 200 on /health; only one says "ok".
    let healthy = named("ok").await;
    let wrong = backend_with(|_request| async { text(StatusCode::OK, "degraded") }).await;
    let proxy = TestProxy::start(&format!(
        "{}{}",
        one_pool(&format!(
            "servers = [{{ addr = \"{}\" }}, {{ addr = \"{}\" }}]",
            healthy.addr(),
            wrong.addr()
        )),
        check("interval = \"100ms\"\ntimeout = \"80ms\"\nmax_fails = 1\nexpect_body = \"ok\"")
    ))
    .await;
    let wrong_state = state_of(&proxy, 1);
    wait_until(
        Duration::from_secs(5),
        "the probe to fail on the body",
        || wrong_state.is_active_down(),
    )
    .await;
    assert!(
        !state_of(&proxy, 0).is_active_down(),
        "a body with the text passes"
    );
}
