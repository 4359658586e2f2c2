//! The request body shared across retry attempts with a size limit, as an attempt (and the upstream
//! client that sends it) reads it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use parking_lot::Mutex;

use crate::message::progress::SendProgress;
use crate::message::spool::{Spool, SpoolCursor};

/// The error type of the bodies the proxy passes along.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
    /// What request buffering read before the upstream request (all of it, unless no temp file could
    /// be written and the rest streams from `body`).
    spool: Option<Spool>,
    /// The spool holds the whole body (nothing follows it from the client).
    whole: bool,
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
            spool: None,
            whole: false,
            hint: body.size_hint(),
            body: Mutex::new(Some(body)),
            touched: AtomicBool::new(false),
            client_fault: AtomicU8::new(FAULT_NONE),
            progress: SendProgress::new(),
        }))
    }

    /// A body request buffering read: `spool`, then `rest` (what the client had still to send when no
    /// temp file could take more), with `hint` as the client announced it. A whole spool is sent again
    /// by a retry.
    pub fn spooled(spool: Spool, rest: Option<Incoming>, hint: SizeHint) -> Arc<BodySlot> {
        let rest = rest.filter(|rest| !rest.is_end_stream());
        let hint = match rest {
            None => SizeHint::with_exact(spool.len()),
            Some(_) => hint,
        };
        Arc::new(BodySlot {
            whole: rest.is_none(),
            spool: Some(spool),
            hint,
            body: Mutex::new(rest),
            touched: AtomicBool::new(false),
            client_fault: AtomicU8::new(FAULT_NONE),
            progress: SendProgress::new(),
        })
    }

    /// Whether the whole body was read before the upstream request (its length is known then).
    pub fn whole_length(&self) -> Option<u64> {
        match &self.spool {
            Some(spool) if self.whole => Some(spool.len()),
            _ => None,
        }
    }

    /// The size the client announced (or the spool's, once it is whole).
    pub fn hint(&self) -> &SizeHint {
        &self.hint
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
    /// Where this attempt is in the slot's spool.
    cursor: SpoolCursor,
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
        let seen = slot
            .as_ref()
            .and_then(|slot| slot.spool.as_ref())
            .map_or(0, Spool::len);
        Self {
            slot,
            cursor: SpoolCursor::default(),
            inner: None,
            seen,
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

    /// What the client has still to send, when this body took it from its slot.
    pub fn into_rest(self) -> Option<Incoming> {
        self.inner
    }

    /// The next piece of the slot's spool, if this attempt has not read all of it.
    fn next_spooled(&mut self) -> Option<Result<Frame<Bytes>, BoxError>> {
        let slot = self.slot.as_ref()?;
        let spool = slot.spool.as_ref()?;
        let piece = spool.next(&mut self.cursor)?;
        if spool.at_end(&self.cursor) && slot.whole {
            slot.progress.ended();
        } else {
            slot.progress.handed();
        }
        Some(piece.map(Frame::data).map_err(BoxError::from))
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
            if let Some(piece) = this.next_spooled() {
                return Poll::Ready(Some(piece));
            }
            let Some(slot) = &this.slot else {
                return Poll::Ready(None);
            };
            this.inner = slot.body.lock().take();
            if this.inner.is_some() {
                slot.touched.store(true, Ordering::Release);
            } else if slot.spool.is_some() {
                slot.progress.ended();
            }
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
            (Some(slot), None) => slot
                .spool
                .as_ref()
                .is_some_and(|spool| slot.whole && spool.at_end(&self.cursor)),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.slot {
            None => SizeHint::with_exact(0),
            Some(slot) => slot.hint,
        }
    }
}
