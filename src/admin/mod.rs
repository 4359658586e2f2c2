//! The admin listener, separate from traffic: `GET /` (the status page), `GET /status`, `GET /metrics`,
//! `GET /config`, `POST /reload`,
//! `POST /upstreams/{pool}/servers/{addr}/drain` and `/undrain`. With `[admin] token`, anything that
//! changes state needs `Authorization: Bearer TOKEN`. Answers are JSON.

mod status;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::live::Live;

/// The status page: one self-contained HTML file that polls `/status`.
const STATUS_PAGE: &str = include_str!("page.html");

/// A reload asked for through the admin API, answered when done.
pub type ReloadRequest = oneshot::Sender<Result<(), String>>;

/// Serves the admin API on `socket` until `stop` fires.
pub async fn serve(
    socket: TcpListener,
    live: Arc<Live>,
    reloads: mpsc::Sender<ReloadRequest>,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = socket.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let (live, reloads) = (Arc::clone(&live), reloads.clone());
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let (live, reloads) = (Arc::clone(&live), reloads.clone());
                        async move { Ok::<_, Infallible>(handle(request, &live, &reloads).await) }
                    });
                    let connection = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    if let Err(error) = connection {
                        debug!(%peer, %error, "admin connection ended with an error");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = stop.changed() => break,
        }
    }
    connections.shutdown().await;
}

async fn handle(
    request: Request<Incoming>,
    live: &Live,
    reloads: &mpsc::Sender<ReloadRequest>,
) -> Response<Full<Bytes>> {
    let path = request.uri().path().replace("%3A", ":").replace("%3a", ":");
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = request.method().clone();
    if method == Method::POST && !authorized(&request, live) {
        warn!("admin: refused a state change without the right token");
        let mut refusal = reply(
            StatusCode::UNAUTHORIZED,
            status::error("a bearer token is required"),
        );
        refusal.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return refusal;
    }
    match (&method, segments.as_slice()) {
        (&Method::GET, [""]) => {
            let mut response = Response::new(Full::new(Bytes::from_static(STATUS_PAGE.as_bytes())));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/html; charset=utf-8"),
            );
            response
        }
        (&Method::GET, ["status"]) => reply(StatusCode::OK, status::status(live)),
        (&Method::GET, ["metrics"]) => {
            let text = metrics_text(live);
            let mut response = Response::new(Full::new(Bytes::from(text)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        (&Method::GET, ["config"]) => {
            let snapshot = live.snapshot();
            reply(
                StatusCode::OK,
                json!({
                    "path": snapshot.config.source.path.display().to_string(),
                    "source": snapshot.config.source.redacted(),
                }),
            )
        }
        (&Method::POST, ["reload"]) => reload(reloads).await,
        (&Method::POST, ["upstreams", pool, "servers", addr, action @ ("drain" | "undrain")]) => {
            drain(live, pool, addr, *action == "drain")
        }
        (_, ["status"] | ["config"] | ["reload"]) => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            status::error("method not allowed"),
        ),
        _ => reply(StatusCode::NOT_FOUND, status::error("no such endpoint")),
    }
}

/// Whether the request carries the configured token (always, when none is configured).
fn authorized(request: &Request<Incoming>, live: &Live) -> bool {
    let snapshot = live.snapshot();
    let Some(token) = snapshot
        .config
        .admin
        .as_ref()
        .and_then(|a| a.token.as_deref())
    else {
        return true;
    };
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        == Some(token)
}

async fn reload(reloads: &mpsc::Sender<ReloadRequest>) -> Response<Full<Bytes>> {
    let (answer, done) = oneshot::channel();
    if reloads.send(answer).await.is_err() {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            status::error("reload is handled by `fulcrum run`; this process does not watch a file"),
        );
    }
    match tokio::time::timeout(Duration::from_secs(60), done).await {
        Ok(Ok(Ok(()))) => reply(StatusCode::OK, json!({ "reloaded": true })),
        Ok(Ok(Err(error))) => reply(StatusCode::BAD_REQUEST, status::error(&error)),
        _ => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            status::error("the reload did not finish"),
        ),
    }
}

fn drain(live: &Live, pool_name: &str, addr: &str, drained: bool) -> Response<Full<Bytes>> {
    let snapshot = live.snapshot();
    let Some(pool) = snapshot.pools.iter().find(|p| p.name == pool_name) else {
        return reply(
            StatusCode::NOT_FOUND,
            status::error(&format!("no upstream named `{pool_name}`")),
        );
    };
    let Some(server) = pool
        .servers()
        .find(|s| s.addr.as_str().eq_ignore_ascii_case(addr))
    else {
        return reply(
            StatusCode::NOT_FOUND,
            status::error(&format!("upstream `{pool_name}` has no server `{addr}`")),
        );
    };
    server.state.set_drained(drained);
    info!(
        pool = pool_name,
        server = addr,
        drained,
        "admin: server drain changed"
    );
    reply(
        StatusCode::OK,
        json!({ "pool": pool_name, "server": addr, "drained": drained, "in_flight": server.state.in_flight() }),
    )
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// The Prometheus exposition text: the registry, with the live gauges (in flight, healthy, latency,
/// servers per pool) read from the current snapshot now.
pub fn metrics_text(live: &Live) -> String {
    let snapshot = live.snapshot();
    let now = crate::clock::now_ms();
    let pools: Vec<crate::metrics::LivePool<'_>> = snapshot
        .pools
        .iter()
        .map(|pool| crate::metrics::LivePool {
            name: pool.name.as_str(),
            servers: pool
                .servers()
                .map(|server| crate::metrics::LiveServer {
                    addr: server.addr.as_str(),
                    in_flight: server.state.in_flight() as u64,
                    healthy: server.state.healthy(now),
                    latency_us: server.state.latency().estimate_us(now),
                })
                .collect(),
        })
        .collect();
    live.metrics().render(&pools)
}
