//! A TLS listener's handshake, in the connection's own task.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::config::ListenerTls;
use crate::metrics::TlsFailureMetrics;

/// The TLS handshake, in the connection's own task, bounded by `handshake_timeout` (and cut short when the
/// listener's drain runs out). Failures are counted and logged at debug: scanners make many.
pub async fn handshake(
    stream: TcpStream,
    tls: &ListenerTls,
    peer: SocketAddr,
    force_close: &CancellationToken,
    failures: &TlsFailureMetrics,
    listener: &str,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&tls.server_config));
    tokio::select! {
        result = tokio::time::timeout(tls.handshake_timeout, acceptor.accept(stream)) => match result {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(error)) => {
                failures.error.inc();
                debug!(%listener, %peer, %error, "TLS handshake failed");
                None
            }
            Err(_) => {
                failures.timeout.inc();
                debug!(%listener, %peer, timeout = ?tls.handshake_timeout, "TLS handshake timed out");
                None
            }
        },
        () = force_close.cancelled() => None,
    }
}
