//! HTTP/1.1 upgrades (WebSocket and others): the `Upgrade` request goes upstream, and on `101` the two
//! connections are spliced into a tunnel that counts as in flight on its server until it closes.

use std::time::Duration;

use super::h1conn::ResponseBody;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::upstream::InFlightGuard;

/// Whether a `Connection` value names `upgrade` (a request asks to switch protocols when it also has an
/// `Upgrade` header, over HTTP/1.1: see `framing::scan`).
pub fn names_upgrade(connection: &HeaderValue) -> bool {
    connection.to_str().is_ok_and(|v| {
        v.split(',')
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
    })
}

/// Puts back the two headers that hop-by-hop stripping removed but an upgrade must carry to the next hop.
pub fn restore_upgrade_headers(headers: &mut HeaderMap, upgrade: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, upgrade);
}

/// The upgraded tunnels of a running proxy: tracked so shutdown gives them the same grace as requests,
/// then closes them.
#[derive(Debug, Default)]
pub struct Tunnels {
    tracker: TaskTracker,
    closing: CancellationToken,
}

impl Tunnels {
    /// Tunnels currently open.
    pub fn open(&self) -> usize {
        self.tracker.len()
    }

    /// Splices the client's and the server's upgraded connections once both are ready; `guard` keeps the
    /// tunnel counted as in flight on its server until either side closes.
    pub fn splice(
        &self,
        client: OnUpgrade,
        server: &mut Response<ResponseBody>,
        guard: InFlightGuard,
    ) {
        let server = hyper::upgrade::on(server);
        let closing = self.closing.clone();
        self.tracker.spawn(async move {
            let _guard = guard;
            let (client, server) = match tokio::try_join!(client, server) {
                Ok(both) => both,
                Err(error) => {
                    debug!(%error, "upgrade did not complete");
                    return;
                }
            };
            let (mut client, mut server) = (TokioIo::new(client), TokioIo::new(server));
            tokio::select! {
                copied = tokio::io::copy_bidirectional(&mut client, &mut server) => {
                    if let Err(error) = copied {
                        debug!(%error, "tunnel ended with an error");
                    }
                }
                () = closing.cancelled() => debug!("tunnel closed by shutdown"),
            }
        });
    }

    /// Waits up to `grace` for open tunnels to end by themselves, then closes the rest.
    pub async fn drain(&self, grace: Duration) {
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            self.closing.cancel();
            self.tracker.wait().await;
        }
    }
}

/// Whether a response switches protocols.
pub fn is_switching<B>(response: &Response<B>) -> bool {
    response.status() == StatusCode::SWITCHING_PROTOCOLS
}
