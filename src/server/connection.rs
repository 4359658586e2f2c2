//! One client connection: served over HTTP/1.1 or HTTP/2 under its watchdog, which judges its clock
//! (client timeouts), follows the listener's drain and closes it when the drain runs out.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::connection_clock::ConnectionClock;
use super::control::ControlWake;
use super::service::ClockedService;
use super::serving::{Protocols, ServeError, Serving};
use super::timed_io::{Lingering, TimedIo};
use super::verdict::Verdict;
use crate::config::{HttpLimits, ListenerConfig};
use crate::live::Live;
use crate::request::ListenerContext;

/// What a listener's connections share, made again only when a reload changes it.
pub struct Shared {
    /// The HTTP limits `protocols` was made from.
    http: HttpLimits,
    /// HTTP/1 and HTTP/2 settings.
    pub protocols: Protocols,
    /// What the proxy service needs of the listener.
    pub proxy: Arc<ListenerContext>,
}

impl Shared {
    pub fn new(live: &Arc<Live>, settings: &ListenerConfig) -> Self {
        Self {
            http: settings.http,
            protocols: Protocols::new(settings.http),
            proxy: Arc::new(ListenerContext::new(
                Arc::clone(live),
                proto(settings),
                settings.client,
                settings.redirect_to_https,
            )),
        }
    }

    /// Whether this was made from `settings` (as they are after any reload).
    pub fn is_for(&self, settings: &ListenerConfig) -> bool {
        self.http == settings.http
            && self.proxy.is_for(
                proto(settings),
                &settings.client,
                settings.redirect_to_https,
            )
    }
}

/// The scheme a listener's clients speak, for `X-Forwarded-Proto`.
fn proto(settings: &ListenerConfig) -> &'static str {
    if settings.tls.is_some() {
        "https"
    } else {
        "http"
    }
}

/// On shutdown, a connection that has not yet sent its first request gets this long to do so before it
/// is closed: a client that connected just before the listener stopped has its request already on the way.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// The timer instant for `at` on the millisecond clock, which reads `now`.
fn instant_at(at: u64, now: u64) -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_millis(at.saturating_sub(now))
}

/// One client connection's serving context.
pub struct Connection {
    pub peer: SocketAddr,
    pub shared: Arc<Shared>,
    pub clock: Arc<ConnectionClock>,
    pub stop: watch::Receiver<bool>,
    pub force_close: CancellationToken,
}

/// How long a connection being finished (idle past keepalive_timeout, or its requests used up) may take
/// to close.
const FINISH_GRACE: Duration = Duration::from_secs(5);

impl Connection {
    /// HTTP/1.1 or HTTP/2 (by preface) on `io`, boxed: the task then holds a pointer, not the
    /// connection's state and the arguments it was built from.
    pub fn serving<I>(&self, io: I, service: ClockedService, alpn_h2: bool) -> Pin<Box<Serving<I>>>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let limits = self.shared.proxy.client_limits();
        let io = TimedIo::new(io, Arc::clone(&self.clock)).lingering(Lingering {
            time: limits.lingering_time,
            timeout: limits.lingering_timeout,
        });
        Box::pin(Serving::new(io, service, Arc::clone(&self.shared), alpn_h2))
    }

    /// Drives `connection` until it closes, a client timeout passes, the drain asks it to finish, or the
    /// drain runs out.
    pub async fn serve<I>(mut self, mut connection: Pin<Box<Serving<I>>>)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let peer = self.peer;
        // The watchdog's first deadline, judged now: a timer set to fire at once cost every new
        // connection a second pass through the loop (its control futures registered twice) and, often,
        // a wake-up of the runtime's driver (an eventfd write) for a deadline earlier than any pending.
        let now = crate::clock::now_ms();
        let mut wake_at = match self.clock.verdict(self.shared.proxy.client_limits(), now) {
            Verdict::WaitUntil(at) => {
                self.clock.watchdog_set(at);
                instant_at(at, now)
            }
            _ => tokio::time::Instant::now(),
        };
        let control = ControlWake::new();
        let control_waker = Waker::from(Arc::clone(&control));
        // The task's waker as last registered with `control`.
        let mut registered: Option<Waker> = None;
        let result = loop {
            let stop = self.stop.wait_for(|stopped| *stopped);
            let force_close = self.force_close.cancelled();
            let timer = tokio::time::sleep_until(wake_at);
            let poked = self.clock.poked();
            tokio::pin!(stop, force_close, timer, poked);
            control.arm();
            // The connection on every wake; the rest only when one of them woke the task.
            let event = std::future::poll_fn(|cx| {
                if let Poll::Ready(result) = connection.as_mut().poll(cx) {
                    return Poll::Ready(Event::Closed(result));
                }
                if !registered
                    .as_ref()
                    .is_some_and(|known| known.will_wake(cx.waker()))
                {
                    control.register(cx.waker());
                    registered = Some(cx.waker().clone());
                }
                if !control.take() {
                    return Poll::Pending;
                }
                let mut cx = Context::from_waker(&control_waker);
                if stop.as_mut().poll(&mut cx).is_ready() {
                    return Poll::Ready(Event::Drain);
                }
                if force_close.as_mut().poll(&mut cx).is_ready() {
                    return Poll::Ready(Event::ForceClose);
                }
                if timer.as_mut().poll(&mut cx).is_ready()
                    || poked.as_mut().poll(&mut cx).is_ready()
                {
                    return Poll::Ready(Event::Look);
                }
                Poll::Pending
            })
            .await;
            match event {
                Event::Closed(result) => break Some(result),
                Event::Drain => break None,
                Event::ForceClose => return,
                Event::Look => {}
            }
            let now = crate::clock::now_ms();
            let limits = self.shared.proxy.client_limits();
            match self.clock.verdict(limits, now) {
                Verdict::WaitUntil(at) => {
                    self.clock.watchdog_set(at);
                    wake_at = instant_at(at, now);
                }
                Verdict::Finish => {
                    connection.as_mut().graceful_shutdown();
                    let finished = tokio::time::timeout(FINISH_GRACE, connection.as_mut()).await;
                    if let Ok(result) = finished {
                        log_end(peer, result);
                    }
                    return;
                }
                Verdict::HeaderTimeout => {
                    debug!(%peer, timeout = ?limits.header_timeout, "client_header_timeout passed; closing");
                    return;
                }
                Verdict::SendTimeout => {
                    info!(%peer, timeout = ?limits.send_timeout, "send_timeout passed: the client stopped reading; closing");
                    return;
                }
            }
        };
        let result = match result {
            Some(result) => result,
            None => {
                // Draining: give a brand-new connection its first request, then ask hyper to finish what
                // is in flight and close.
                tokio::select! {
                    result = connection.as_mut() => return log_end(peer, result),
                    () = self.clock.first_request() => {}
                    () = tokio::time::sleep(FIRST_REQUEST_GRACE) => {}
                    () = self.force_close.cancelled() => return,
                }
                connection.as_mut().graceful_shutdown();
                tokio::select! {
                    result = until_closed(connection.as_mut(), &self.clock) => result,
                    () = self.force_close.cancelled() => return,
                }
            }
        };
        log_end(peer, result);
    }
}

/// Drives `connection` to its end once its watchdog loop has stopped (draining): a request in flight that
/// waits for an upstream still needs the wake-up at its due time the watchdog gave it (its `read_timeout`,
/// see [`crate::forward::deadline`]).
async fn until_closed<I>(
    mut connection: Pin<&mut Serving<I>>,
    clock: &ConnectionClock,
) -> Result<(), ServeError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // No timer is set now: every due time pokes.
    clock.watchdog_set(u64::MAX);
    loop {
        let now = crate::clock::now_ms();
        let wake = clock
            .upstream_due()
            .map(|due| instant_at(due.max(now.saturating_add(1)), now));
        let due = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = connection.as_mut() => return result,
            () = due => {}
            () = clock.poked() => {}
        }
    }
}

/// What woke a connection's [`Connection::serve`] loop.
enum Event {
    /// The connection closed.
    Closed(Result<(), ServeError>),
    /// The listener is draining.
    Drain,
    /// The drain ran out.
    ForceClose,
    /// The watchdog's timer or poke: judge the connection again.
    Look,
}

fn log_end(peer: SocketAddr, result: Result<(), ServeError>) {
    if let Err(error) = result {
        debug!(%peer, %error, "connection ended with an error");
    }
}
