//! The upgraded tunnels of a running proxy: a client connection spliced to its server's connection after
//! a 101, tracked so shutdown gives them the same grace as requests.

use std::time::Duration;

use http::Response;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::upstream::InFlightGuard;
use crate::upstream_client::h1conn::{ResponseBody, UpstreamTunnel};

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

    /// Splices the client's and the server's upgraded connections once the client's is ready; `guard`
    /// keeps the tunnel counted as in flight on its server until either side closes. `false` when the
    /// answer carries no upgraded connection (then nothing is spliced).
    pub fn splice(
        &self,
        client: OnUpgrade,
        server: &mut Response<ResponseBody>,
        guard: InFlightGuard,
    ) -> bool {
        let Some((mut server, early)) = server
            .extensions_mut()
            .remove::<UpstreamTunnel>()
            .and_then(|tunnel| tunnel.take())
        else {
            return false;
        };
        let closing = self.closing.clone();
        self.tracker.spawn(async move {
            let _guard = guard;
            let mut client = match client.await {
                Ok(client) => TokioIo::new(client),
                Err(error) => {
                    debug!(%error, "upgrade did not complete");
                    return;
                }
            };
            tokio::select! {
                copied = async {
                    // What the server sent right after its 101 head goes first.
                    client.write_all(&early).await?;
                    tokio::io::copy_bidirectional(&mut client, &mut server).await
                } => {
                    if let Err(error) = copied {
                        debug!(%error, "tunnel ended with an error");
                    }
                }
                () = closing.cancelled() => debug!("tunnel closed by shutdown"),
            }
        });
        true
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
