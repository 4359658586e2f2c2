//! The pooled keep-alive HTTP/1.1 client to upstream servers.

use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::body::RequestBody;

/// A pooled client; cheap to clone (clones share the pool).
pub type UpstreamClient = Client<HttpConnector, RequestBody>;

/// Settings that need a client (and pool) of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientSettings {
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Idle time before a pooled connection is closed.
    pub keepalive_timeout: Duration,
    /// Idle connections kept per server.
    pub keepalive: usize,
}

/// Builds a client with its own connection pool.
pub fn build_client(settings: ClientSettings) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(settings.connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(settings.keepalive_timeout)
        .pool_max_idle_per_host(settings.keepalive)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .set_host(false)
        .build(connector)
}
