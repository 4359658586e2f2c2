//! TLS with rustls (ring provider, TLS 1.2 and 1.3 only): listener certificates chosen by SNI, and the
//! client side used for `https://` upstream servers and their probes.

pub mod certs;
pub mod sni;
pub mod tickets;
pub mod upstream;

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

pub use certs::{load_certified_key, LoadedCert};
pub use sni::SniResolver;
pub use upstream::UpstreamTls;

/// ALPN protocol id of HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN protocol id of HTTP/1.1.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// The one crypto provider every TLS config of the process uses.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())))
}

/// TLS 1.3 and 1.2: nothing older is offered or accepted.
pub static PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The session cache shared by every listener config the process builds, so a reload (which builds new
/// configs) does not turn every returning client into a full handshake.
fn shared_session_cache() -> Arc<dyn rustls::server::StoresServerSessions> {
    static CACHE: OnceLock<Arc<dyn rustls::server::StoresServerSessions>> = OnceLock::new();
    Arc::clone(CACHE.get_or_init(|| rustls::server::ServerSessionMemoryCache::new(20_000)))
}

/// A listener's rustls config: SNI picks among `certs`, ALPN offers h2 then http/1.1, session tickets
/// accepted for at most `ticket_lifetime` ([`tickets`]).
pub fn listener_config(
    certs: &[LoadedCert],
    ticket_lifetime: std::time::Duration,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let resolver = SniResolver::new(certs).ok_or("no certificate is configured")?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    config.session_storage = shared_session_cache();
    if let Some(ticketer) = tickets::shared(ticket_lifetime) {
        config.ticketer = ticketer;
    }
    Ok(Arc::new(config))
}
