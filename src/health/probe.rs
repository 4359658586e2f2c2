//! One active probe: an HTTP GET on a fresh connection, or a TCP connect, under a timeout.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Request};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
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

/// Probes `host:port` as `check` says.
pub async fn probe(host: &str, port: u16, check: &HealthCheckConfig) -> ProbeResult {
    let started = Instant::now();
    let failure = match tokio::time::timeout(check.timeout, run(host, port, check)).await {
        Ok(Ok(())) => None,
        Ok(Err(why)) => Some(why),
        Err(_) => Some(format!("timed out after {}ms", check.timeout.as_millis())),
    };
    ProbeResult {
        failure,
        latency: started.elapsed(),
    }
}

async fn run(host: &str, port: u16, check: &HealthCheckConfig) -> Result<(), String> {
    let host_for_connect = host.trim_start_matches('[').trim_end_matches(']');
    let stream = TcpStream::connect((host_for_connect, port))
        .await
        .map_err(|e| format!("connect failed: {e}"))?;
    if check.kind == ProbeKind::Tcp {
        return Ok(());
    }
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake failed: {e}"))?;
    // The connection task ends with the probe: it is dropped with this future on timeout.
    let driver = async move {
        let _ = connection.await;
    };
    let request = async move {
        let host_header = match &check.host {
            Some(name) => name.clone(),
            None => format!("{host}:{port}"),
        };
        let request = Request::get(check.path.as_str())
            .header(header::HOST, host_header)
            .header(header::USER_AGENT, "fulcrum-health-check")
            .header(header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("cannot build the probe request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
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
    };
    // Drive the connection until the request is answered; the connection ending first is not itself an
    // error (the answer may already be buffered), the request then says what it got.
    tokio::pin!(request, driver);
    let mut driving = true;
    loop {
        tokio::select! {
            result = &mut request => return result,
            () = &mut driver, if driving => driving = false,
        }
    }
}
