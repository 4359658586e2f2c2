//! Body wrappers: the request body shared across retry attempts with a size limit, and the response body
//! that holds its server's in-flight count until it ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use parking_lot::Mutex;

use super::deadline::SendProgress;
use super::h1conn::{BoxError, ResponseBody};
use crate::clock::now_ms;
use crate::upstream::InFlightGuard;

/// Error a request body raises once it passes `max_body_size`.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than max_body_size")]
pub struct BodyTooLarge;

/// Error a request body raises once the client sends nothing for `client_body_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("client_body_timeout passed while reading the request body")]
pub struct BodyTimedOut;

/// Limits on a request body the proxy reads.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Bytes it may have (`max_body_size`).
    pub max_size: u64,
    /// Longest wait for its next piece (`client_body_timeout`).
    pub timeout: std::time::Duration,
}

/// The client's request body, held until an attempt first reads it, so an attempt that failed before reading
/// (connect error) leaves it for the next one.
#[derive(Debug)]
pub struct BodySlot {
    body: Mutex<Option<Incoming>>,
    hint: SizeHint,
    touched: AtomicBool,
    client_fault: AtomicU8,
    progress: SendProgress,
}

/// Why the client's body failed, as [`BodySlot::client_fault`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    /// It passed `max_body_size`.
    TooLarge,
    /// It was malformed (a bad chunk size, ...) or the client stopped sending it.
    Malformed,
    /// The client sent nothing for `client_body_timeout`.
    TimedOut,
}

const FAULT_NONE: u8 = 0;
const FAULT_TOO_LARGE: u8 = 1;
const FAULT_MALFORMED: u8 = 2;
const FAULT_TIMED_OUT: u8 = 3;

impl BodySlot {
    /// Wraps the client's body; `None` when it is known to be empty.
    pub fn new(body: Incoming) -> Option<Arc<BodySlot>> {
        if body.is_end_stream() {
            return None;
        }
        Some(Arc::new(BodySlot {
            hint: body.size_hint(),
            body: Mutex::new(Some(body)),
            touched: AtomicBool::new(false),
            client_fault: AtomicU8::new(FAULT_NONE),
            progress: SendProgress::new(),
        }))
    }

    /// Whether some attempt started reading the body (so it cannot be sent again).
    pub fn touched(&self) -> bool {
        self.touched.load(Ordering::Acquire)
    }

    /// How far the body has gone toward the server, for the attempt's `send_timeout`/`read_timeout`.
    pub fn progress(&self) -> &SendProgress {
        &self.progress
    }

    fn blame(&self, fault: u8) {
        self.client_fault.store(fault, Ordering::Release);
    }

    /// Whether reading the client's body failed through the client's fault: an attempt that failed for
    /// this reason is the client's error (4xx), not the server's.
    pub fn client_fault(&self) -> Option<ClientFault> {
        match self.client_fault.load(Ordering::Acquire) {
            FAULT_TOO_LARGE => Some(ClientFault::TooLarge),
            FAULT_MALFORMED => Some(ClientFault::Malformed),
            FAULT_TIMED_OUT => Some(ClientFault::TimedOut),
            _ => None,
        }
    }
}

/// The body one attempt sends upstream.
#[derive(Debug)]
pub struct RequestBody {
    slot: Option<Arc<BodySlot>>,
    inner: Option<Incoming>,
    seen: u64,
    limits: BodyLimits,
    /// The `client_body_timeout` timer, armed while the client keeps the body waiting.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    timer_armed: bool,
}

impl RequestBody {
    /// A body reading from `slot` (empty when `None`), failing past `limits`.
    pub fn new(slot: Option<Arc<BodySlot>>, limits: BodyLimits) -> Self {
        if let Some(slot) = &slot {
            // The attempt starts by sending the head.
            slot.progress.handed();
        }
        Self {
            slot,
            inner: None,
            seen: 0,
            limits,
            timer: None,
            timer_armed: false,
        }
    }

    /// The client has kept the body waiting: starts the timer if it is not running, and tells whether
    /// it has run out.
    fn waited_too_long(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = tokio::time::Instant::now() + self.limits.timeout;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.timer_armed {
            timer.as_mut().reset(deadline);
            self.timer_armed = true;
        }
        timer.as_mut().poll(cx).is_ready()
    }

    fn fail(&self, fault: u8) {
        if let Some(slot) = &self.slot {
            slot.blame(fault);
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.inner.is_none() {
            let Some(slot) = &this.slot else {
                return Poll::Ready(None);
            };
            slot.touched.store(true, Ordering::Release);
            this.inner = slot.body.lock().take();
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let mut inner = Pin::new(inner);
        let polled = inner.as_mut().poll_frame(cx);
        if !polled.is_pending() {
            this.timer_armed = false;
        }
        if let Some(slot) = &this.slot {
            match &polled {
                Poll::Pending => slot.progress.waiting_on_client(),
                Poll::Ready(None) => slot.progress.ended(),
                // hyper's clients stop asking once the body says it has ended.
                Poll::Ready(Some(Ok(_))) if inner.is_end_stream() => slot.progress.ended(),
                Poll::Ready(Some(Ok(_))) => slot.progress.handed(),
                Poll::Ready(Some(Err(_))) => {}
            }
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    // A chunked body's hint is the rest of the chunk this data began (our hyper patch):
                    // a chunk that cannot fit is refused before any of it is forwarded, as nginx does.
                    let announced = inner.size_hint().lower();
                    if this.seen.saturating_add(announced) > this.limits.max_size {
                        this.fail(FAULT_TOO_LARGE);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.fail(FAULT_MALFORMED);
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if this.waited_too_long(cx) {
                    this.fail(FAULT_TIMED_OUT);
                    return Poll::Ready(Some(Err(Box::new(BodyTimedOut))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match (&self.slot, &self.inner) {
            (None, _) => true,
            (Some(_), Some(inner)) => inner.is_end_stream(),
            (Some(_), None) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.slot {
            None => SizeHint::with_exact(0),
            Some(slot) => slot.hint,
        }
    }
}

/// An access log line waiting for its body to end (it is written when dropped, with the bytes sent).
#[derive(Debug)]
pub struct PendingLog {
    /// The line so far.
    pub entry: crate::access_log::Entry,
    /// Where it goes.
    pub log: std::sync::Arc<crate::access_log::AccessLog>,
    /// When the request arrived.
    pub started: std::time::Instant,
    /// Written at all: false for a route with `access_log = false`.
    pub enabled: bool,
}

impl Drop for PendingLog {
    fn drop(&mut self) {
        if !self.enabled {
            return;
        }
        self.entry.duration = self.started.elapsed();
        self.log.log(&self.entry);
    }
}

/// The server sent nothing of its answer's body for `read_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("upstream read_timeout passed while reading the answer's body")]
pub struct UpstreamReadTimedOut;

/// `read_timeout` between two reads of an answer's body: a timer made only once a read waits, and moved
/// only when it fires before the time since the last read has passed.
#[derive(Debug)]
struct ReadClock {
    timeout_ms: u64,
    last_read: u64,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl ReadClock {
    fn new(timeout: std::time::Duration) -> Self {
        Self {
            // The coarse clock may lag by a tick: never cut an answer early.
            timeout_ms: u64::try_from(timeout.as_millis())
                .unwrap_or(u64::MAX / 2)
                .saturating_add(10),
            last_read: now_ms(),
            timer: None,
        }
    }

    /// A read waits: whether the timeout has passed since the last one (else the task is woken by then).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            let due = self.last_read.saturating_add(self.timeout_ms);
            let now = now_ms();
            if now >= due {
                return true;
            }
            let at = tokio::time::Instant::now() + std::time::Duration::from_millis(due - now);
            let timer = match self.timer.as_mut() {
                Some(timer) => {
                    if timer.is_elapsed() {
                        timer.as_mut().reset(at);
                    }
                    timer
                }
                None => self.timer.insert(Box::pin(tokio::time::sleep_until(at))),
            };
            if timer.as_mut().poll(cx).is_pending() {
                return false;
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// An upstream response body that keeps its server's in-flight count until the body ends or is dropped,
    /// writes the request's access log line then, and fails once the server sends nothing for
    /// `read_timeout`.
    #[derive(Debug)]
    pub struct UpstreamBody {
        #[pin]
        inner: ResponseBody,
        guard: Option<InFlightGuard>,
        // Boxed: most proxies run without an access log, and this body is moved and kept per connection.
        log: Option<Box<PendingLog>>,
        origin: Option<super::forward::BodyOrigin>,
        read: ReadClock,
    }
}

impl UpstreamBody {
    /// Wraps `inner`, releasing `guard` at its end; a failure before the end counts against `origin`.
    pub fn new(
        inner: ResponseBody,
        guard: InFlightGuard,
        origin: super::forward::BodyOrigin,
    ) -> Self {
        let open = !inner.is_end_stream();
        let read = ReadClock::new(origin.read_timeout());
        Self {
            inner,
            guard: open.then_some(guard),
            log: None,
            origin: open.then_some(origin),
            read,
        }
    }

    /// Writes `log` when the body ends (or the client goes away).
    pub fn attach_log(&mut self, log: Box<PendingLog>) {
        if self.inner.is_end_stream() {
            drop(log);
        } else {
            self.log = Some(log);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if polled.is_pending() && this.origin.is_some() && this.read.expired(cx) {
            let error = UpstreamReadTimedOut;
            if let Some(origin) = this.origin.take() {
                origin.body_timed_out(&error);
            }
            this.guard.take();
            this.log.take();
            return Poll::Ready(Some(Err(Box::new(error))));
        }
        match &polled {
            Poll::Ready(None) => {
                if let Some(origin) = this.origin.take() {
                    origin.body_ended();
                }
                this.guard.take();
                this.log.take();
            }
            Poll::Ready(Some(Err(error))) => {
                if let Some(origin) = this.origin.take() {
                    origin.body_failed(&**error);
                }
                this.guard.take();
                this.log.take();
            }
            Poll::Ready(Some(Ok(frame))) => {
                this.read.last_read = now_ms();
                if let (Some(log), Some(data)) = (this.log.as_mut(), frame.data_ref()) {
                    log.entry.bytes += data.len() as u64;
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What the proxy answers with: an upstream body or a short local one.
pub type ProxyBody = http_body_util::Either<UpstreamBody, http_body_util::Full<Bytes>>;
