//! One active probe: an HTTP GET on a fresh connection (HTTP/1.1 with the request path's own client,
//! HTTP/2 with hyper's), or a TCP connect, under a timeout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery};
use http::{header, HeaderMap, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::config::{HealthCheckConfig, ProbeKind};
use crate::message::body::{BodyLimits, RequestBody};
use crate::upstream_client::h1conn::{Conn, H1Body};
use crate::upstream_client::h1stream::UpstreamStream;

/// Largest probe body read when `expect_body` is set.
const MAX_PROBE_BODY: usize = 64 * 1024;

/// The result of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    /// `None` when good; otherwise why it failed.
    pub failure: Option<String>,
    /// How long the probe took.
    pub latency: Duration,
}

/// How a probe reaches its server: in clear or over TLS, HTTP/1.1 or HTTP/2 (as the pool's traffic does).
#[derive(Debug, Clone, Default)]
pub struct Transport {
    /// TLS config (ALPN set for the protocol) and the name to send and verify, for `https://` servers.
    pub tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    /// Speak HTTP/2 (prior knowledge in clear, ALPN h2 over TLS).
    pub http2: bool,
}

/// Probes `host:port` as `check` says, over `transport`.
pub async fn probe(
    host: &str,
    port: u16,
    check: &HealthCheckConfig,
    transport: &Transport,
) -> ProbeResult {
    let started = Instant::now();
    let failure = match tokio::time::timeout(check.timeout, run(host, port, check, transport)).await
    {
        Ok(Ok(())) => None,
        Ok(Err(why)) => Some(why),
        Err(_) => Some(format!("timed out after {}ms", check.timeout.as_millis())),
    };
    ProbeResult {
        failure,
        latency: started.elapsed(),
    }
}

async fn run(
    host: &str,
    port: u16,
    check: &HealthCheckConfig,
    transport: &Transport,
) -> Result<(), String> {
    let host_for_connect = host.trim_start_matches('[').trim_end_matches(']');
    let stream = TcpStream::connect((host_for_connect, port))
        .await
        .map_err(|e| format!("connect failed: {e}"))?;
    if check.kind == ProbeKind::Tcp {
        return Ok(());
    }
    let _ = stream.set_nodelay(true);
    let authority = match &check.host {
        Some(name) => name.clone(),
        None => format!("{host}:{port}"),
    };
    let stream = match &transport.tls {
        Some((config, name)) => UpstreamStream::Tls(Box::new(
            tokio_rustls::TlsConnector::from(Arc::clone(config))
                .connect(name.clone(), stream)
                .await
                .map_err(|e| format!("TLS handshake failed: {e}"))?,
        )),
        None => UpstreamStream::Plain(stream),
    };
    if transport.http2 {
        let scheme = if transport.tls.is_some() {
            "https"
        } else {
            "http"
        };
        http2_probe(stream, scheme, &authority, check).await
    } else {
        http1_probe(stream, &authority, check).await
    }
}

/// One GET with `Connection: close` over our HTTP/1.1 client's connection (the one requests use).
async fn http1_probe(
    stream: UpstreamStream,
    authority: &str,
    check: &HealthCheckConfig,
) -> Result<(), String> {
    let target: PathAndQuery = check
        .path
        .parse()
        .map_err(|_| format!("`{}` is not a path", check.path))?;
    let mut headers = HeaderMap::with_capacity(3);
    headers.insert(
        header::HOST,
        HeaderValue::from_str(authority)
            .map_err(|_| format!("`{authority}` is not a Host value"))?,
    );
    headers.insert(
        header::USER_AGENT,
        HeaderValue::from_static("fulcrum-health-check"),
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    // The key names the connection for a pool; a probe's belongs to none.
    let key = Authority::from_static("health-probe");
    let mut conn = Conn::unpooled(stream, key);
    let mut body = RequestBody::new(
        None,
        BodyLimits {
            max_size: 0,
            timeout: check.timeout,
        },
    );
    let (head, whole) = conn
        .send(
            (&Method::GET, target.as_str()),
            &mut headers,
            None,
            &mut body,
            false,
        )
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = head.response.status().as_u16();
    if !check.status_ok(status) {
        return Err(format!("unexpected status {status}"));
    }
    if let Some(expected) = &check.expect_body {
        expect_in(H1Body::new(conn, &head, whole), expected).await?;
    }
    Ok(())
}

/// One GET over HTTP/2 (prior knowledge in clear, ALPN h2 over TLS) with hyper's client.
async fn http2_probe(
    stream: UpstreamStream,
    scheme: &str,
    authority: &str,
    check: &HealthCheckConfig,
) -> Result<(), String> {
    let request = Request::get(format!("{scheme}://{authority}{}", check.path))
        .header(header::USER_AGENT, "fulcrum-health-check")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("cannot build the probe request: {e}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP/2 handshake failed: {e}"))?;
    drive(connection, async move {
        judge(sender.send_request(request).await, check).await
    })
    .await
}

/// Drives `connection` until `request` is answered. The connection ending first is not itself an error
/// (the answer may already be buffered); the request then says what it got. The connection is dropped with
/// the probe on timeout.
async fn drive<C, E>(
    connection: C,
    request: impl std::future::Future<Output = Result<(), String>>,
) -> Result<(), String>
where
    C: std::future::Future<Output = Result<(), E>>,
{
    let driver = async move {
        let _ = connection.await;
    };
    tokio::pin!(request, driver);
    let mut driving = true;
    loop {
        tokio::select! {
            result = &mut request => return result,
            () = &mut driver, if driving => driving = false,
        }
    }
}

/// Whether the HTTP/2 probe request got a good answer: its status, and its body when `expect_body` is set.
async fn judge(
    sent: hyper::Result<http::Response<hyper::body::Incoming>>,
    check: &HealthCheckConfig,
) -> Result<(), String> {
    let response = sent.map_err(|e| format!("request failed: {e}"))?;
    let status = response.status().as_u16();
    if !check.status_ok(status) {
        return Err(format!("unexpected status {status}"));
    }
    if let Some(expected) = &check.expect_body {
        expect_in(response.into_body(), expected).await?;
    }
    Ok(())
}

/// Whether `body` (its first [`MAX_PROBE_BODY`] bytes) contains `expected`.
async fn expect_in<B>(body: B, expected: &str) -> Result<(), String>
where
    B: http_body::Body,
    B::Error: std::fmt::Display + std::error::Error + Send + Sync + 'static,
{
    let body = Limited::new(body, MAX_PROBE_BODY)
        .collect()
        .await
        .map_err(|e| format!("reading the body failed: {e}"))?
        .to_bytes();
    if !String::from_utf8_lossy(&body).contains(expected) {
        return Err(format!("body does not contain `{expected}`"));
    }
    Ok(())
}
