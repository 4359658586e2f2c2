//! The pooled keep-alive client to upstream servers: HTTP/1.1 or HTTP/2, cleartext or TLS.

pub mod h1chunked;
mod h1client;
pub mod h1codec;
pub mod h1conn;
pub mod h1stream;
pub mod tunnel;

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper_rustls::{
    DefaultServerNameResolver, FixedServerNameResolver, HttpsConnector, ResolveServerName,
};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::ServerName;

use tokio_util::either::Either;

use crate::config::UpstreamProtocol;
use crate::message::body::RequestBody;
use crate::message::error::ProxyError;
use crate::message::headers::Forwarding;
use crate::tls::UpstreamTls;
use crate::upstream::Server;
use crate::upstream_client::h1conn::ResponseBody;

/// hyper-util's pooled client; `https://` URIs go over TLS, others in clear.
pub type LegacyClient = Client<HttpsConnector<HttpConnector>, RequestBody>;

/// A pooled client; cheap to clone (clones share the pool).
#[derive(Debug, Clone)]
pub enum UpstreamClient {
    /// hyper-util's client: HTTP/2 upstreams (h2 over TLS, h2c).
    Legacy(Box<LegacyClient>),
    /// Our own pool: HTTP/1.1 upstreams, cleartext or TLS, upgrades included.
    Http1(Arc<crate::upstream_client::h1client::Http1Client>),
}

impl UpstreamClient {
    /// Sends a request with `method`, the target of `uri`, `headers` and `body` to `server`, and waits
    /// for the response head. Our pool writes it from these as they are, and leaves `headers` as they
    /// were when it fails ([`Self::keeps_headers_on_failure`]); hyper-util's client takes them, in a
    /// request with an absolute URI naming `server` (which is how it finds the server).
    ///
    /// Not an `async fn`: one would keep `body` twice in its future (an argument and its moved-in
    /// local), and the future is copied into every request's boxed future.
    pub fn request<'a>(
        &'a self,
        (method, uri): (&'a http::Method, &'a http::Uri),
        headers: &'a mut http::HeaderMap,
        forwarding: Option<&'a Forwarding>,
        body: RequestBody,
        server: &'a Server,
        protocol: UpstreamProtocol,
    ) -> impl Future<Output = Result<http::Response<ResponseBody>, ProxyError>> + Send + 'a {
        match self {
            UpstreamClient::Legacy(client) => {
                let mut headers = std::mem::take(headers);
                if let Some(forwarding) = forwarding {
                    forwarding.insert_into(&mut headers);
                }
                let sent = client.request(absolute_request(
                    (method, uri),
                    headers,
                    body,
                    server,
                    protocol,
                ));
                Either::Left(async move {
                    sent.await
                        .map(|response| response.map(http_body_util::Either::Left))
                        .map_err(|error| ProxyError::from_client(&error))
                })
            }
            UpstreamClient::Http1(pool) => {
                Either::Right(pool.request((method, uri), headers, forwarding, body, &server.addr))
            }
        }
    }

    /// Whether a failed [`Self::request`] leaves its headers as they were (our pool does; hyper-util's
    /// client takes them).
    pub fn keeps_headers_on_failure(&self) -> bool {
        matches!(self, UpstreamClient::Http1(_))
    }
}

/// The request hyper-util's client sends: its URI absolute, naming `server`.
fn absolute_request(
    (method, uri): (&http::Method, &http::Uri),
    headers: http::HeaderMap,
    body: RequestBody,
    server: &Server,
    protocol: UpstreamProtocol,
) -> http::Request<RequestBody> {
    let mut uri_parts = http::uri::Parts::default();
    uri_parts.scheme = Some(server.scheme.clone());
    uri_parts.authority = Some(server.addr.clone());
    uri_parts.path_and_query = Some(
        uri.path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    let mut request = http::Request::new(body);
    *request.method_mut() = method.clone();
    *request.uri_mut() = http::Uri::from_parts(uri_parts).unwrap_or_default();
    *request.version_mut() = match protocol {
        UpstreamProtocol::Http1 => http::Version::HTTP_11,
        UpstreamProtocol::H2 | UpstreamProtocol::H2c => http::Version::HTTP_2,
    };
    *request.headers_mut() = headers;
    request
}

/// Settings that need a client (and pool) of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientSettings {
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Idle time before a pooled connection is closed.
    pub keepalive_timeout: Duration,
    /// Idle connections kept per server.
    pub keepalive: usize,
    /// HTTP/1.1 or HTTP/2.
    pub protocol: UpstreamProtocol,
    /// The [`UpstreamTls::fingerprint`] of the pool's TLS settings, when it has `https://` servers.
    pub tls: Option<u64>,
}

/// Builds a client with its own connection pool: ours for HTTP/1.1 servers (one way to speak HTTP/1.1
/// upstream, cleartext or TLS: docs/architecture.md), hyper-util's for HTTP/2; `tls` must be the settings
/// whose fingerprint is in `settings.tls`. `name`: the host name TLS servers found under a name are
/// verified against and sent in SNI (their URIs carry addresses), unless `tls_server_name` says otherwise.
pub fn build_client(
    settings: ClientSettings,
    tls: Option<&UpstreamTls>,
    name: Option<&str>,
) -> UpstreamClient {
    let fixed_name = |tls: &UpstreamTls| {
        tls.server_name
            .clone()
            .or_else(|| name.and_then(|n| ServerName::try_from(n.to_string()).ok()))
    };
    if !settings.protocol.is_http2() {
        let tls = tls.map(|tls| crate::upstream_client::h1client::Http1Tls {
            config: tls.for_protocol(false),
            name: fixed_name(tls),
        });
        return UpstreamClient::Http1(Arc::new(
            crate::upstream_client::h1client::Http1Client::new(
                tls,
                settings.connect_timeout,
                settings.keepalive_timeout,
                settings.keepalive,
            ),
        ));
    }
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(settings.connect_timeout));
    http.set_nodelay(true);
    http.enforce_http(false);
    let (config, names): (_, Arc<dyn ResolveServerName + Send + Sync>) = match tls {
        Some(tls) => (
            tls.for_protocol(true),
            match fixed_name(tls) {
                Some(name) => Arc::new(FixedServerNameResolver::new(name)),
                None => Arc::new(DefaultServerNameResolver::default()),
            },
        ),
        None => (
            no_tls_config(),
            Arc::new(DefaultServerNameResolver::default()),
        ),
    };
    let connector = HttpsConnector::new(http, config, false, names);
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_idle_timeout(settings.keepalive_timeout)
        .pool_max_idle_per_host(settings.keepalive)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .set_host(false)
        .http2_only(true);
    UpstreamClient::Legacy(Box::new(builder.build(connector)))
}

/// The TLS config of a pool without `https://` servers: never used for a handshake, and it trusts nothing.
fn no_tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    Arc::clone(CONFIG.get_or_init(|| {
        let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(crate::tls::PROTOCOL_VERSIONS)
            .map(|builder| {
                builder
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            });
        match config {
            Ok(config) => Arc::new(config),
            // The ring provider supports both versions; this cannot fail with it.
            Err(_) => unreachable!("the ring provider supports TLS 1.2 and 1.3"),
        }
    }))
}
