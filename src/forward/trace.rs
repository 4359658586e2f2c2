//! What one request's handling learns on its way (for its access log line and its log lines), and the
//! access log line it starts with.

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::Request;
use hyper::body::Incoming;

use super::body;

/// What one request's handling learned, for its access log line.
#[derive(Debug)]
pub struct Trace {
    /// The client after trusted-proxy resolution.
    pub client: Option<IpAddr>,
    /// The server that answered.
    pub upstream: Option<http::uri::Authority>,
    /// Its time to response headers.
    pub upstream_time: Option<std::time::Duration>,
    /// When the last attempt's response headers arrived (the clock read `upstream_time` came from).
    pub answered_at: Option<std::time::Instant>,
    /// The rate-limit outcome.
    pub rate_limit: &'static str,
    /// The matched route's index.
    pub route: Option<usize>,
    /// The request ID, for log lines about the request.
    pub id: HeaderValue,
    /// Whether the access log gets a line (the route's `access_log`).
    pub log: bool,
}

impl Trace {
    /// A trace for the request with this ID.
    pub fn new(id: HeaderValue) -> Self {
        Trace {
            client: None,
            upstream: None,
            upstream_time: None,
            answered_at: None,
            rate_limit: "none",
            route: None,
            id,
            log: true,
        }
    }

    /// The request ID as text.
    pub fn id(&self) -> &str {
        self.id.to_str().unwrap_or("-")
    }
}

/// Starts the access log line of a request (only when the access log is on).
pub fn access_entry(
    request: &Request<Incoming>,
    id: &HeaderValue,
    log: Arc<crate::access_log::AccessLog>,
) -> body::PendingLog {
    let header = |name: header::HeaderName| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let target = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    body::PendingLog {
        entry: crate::access_log::Entry {
            time: Some(std::time::SystemTime::now()),
            request_line: format!("{} {} {:?}", request.method(), target, request.version()),
            referer: header(header::REFERER),
            user_agent: header(header::USER_AGENT),
            request_id: id.to_str().unwrap_or("").to_string(),
            ..crate::access_log::Entry::default()
        },
        log,
        started: std::time::Instant::now(),
        enabled: true,
    }
}
