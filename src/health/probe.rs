//! One active probe: an HTTP GET on a fresh connection, or a TCP connect, under a timeout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Request};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::config::{HealthCheckConfig, ProbeKind};

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
    match &transport.tls {
        Some((config, name)) => {
            let stream = tokio_rustls::TlsConnector::from(Arc::clone(config))
                .connect(name.clone(), stream)
                .await
                .map_err(|e| format!("TLS handshake failed: {e}"))?;
            http_probe(stream, "https", &authority, check, transport.http2).await
        }
        None => http_probe(stream, "http", &authority, check, transport.http2).await,
    }
}

/// One GET over `io`, HTTP/1.1 (with `Connection: close`) or HTTP/2.
async fn http_probe<I>(
    io: I,
    scheme: &str,
    authority: &str,
    check: &HealthCheckConfig,
    http2: bool,
) -> Result<(), String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    let builder = Request::get(format!("{scheme}://{authority}{}", check.path))
        .header(header::USER_AGENT, "fulcrum-health-check");
    if http2 {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("HTTP/2 handshake failed: {e}"))?;
        let request = builder
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("cannot build the probe request: {e}"))?;
        drive(connection, async move {
            judge(sender.send_request(request).await, check).await
        })
        .await
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("handshake failed: {e}"))?;
        let mut request = builder
            .header(header::HOST, authority)
            .header(header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("cannot build the probe request: {e}"))?;
        // HTTP/1.1 sends the path only (origin form).
        *request.uri_mut() = check
            .path
            .parse()
            .map_err(|_| format!("`{}` is not a path", check.path))?;
        drive(connection, async move {
            judge(sender.send_request(request).await, check).await
        })
        .await
    }
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

/// Whether the probe request got a good answer: its status, and its body when `expect_body` is set.
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
        let body = Limited::new(response.into_body(), MAX_PROBE_BODY)
            .collect()
            .await
            .map_err(|e| format!("reading the body failed: {e}"))?
            .to_bytes();
        if !String::from_utf8_lossy(&body).contains(expected.as_str()) {
            return Err(format!("body does not contain `{expected}`"));
        }
    }
    Ok(())
}
