//! The response body as the proxy hands it to the client: it holds its server's in-flight count until it
//! ends, times the upstream's reads (`read_timeout`), may be read ahead of a slow client, and writes the
//! access log line when it is dropped.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::clock::now_ms;
use crate::message::body::BoxError;
use crate::upstream::InFlightGuard;
use crate::upstream_client::h1conn::ResponseBody;

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

/// The answer's body as it comes from its server: keeps the server's in-flight count until it ends or is
/// dropped, and fails once the server sends nothing for `read_timeout` while it is being read.
#[derive(Debug)]
pub struct Upstream {
    inner: ResponseBody,
    guard: Option<InFlightGuard>,
    origin: Option<crate::forward::BodyOrigin>,
    read: ReadClock,
    /// The last poll was pending: the read clock runs from that wait's start. A body nobody polls
    /// (a slow client, a full buffer) is not waiting on its server.
    waiting: bool,
}

impl Upstream {
    /// Wraps `inner`, releasing `guard` at its end; a failure before the end counts against `origin`.
    pub fn new(
        inner: ResponseBody,
        guard: InFlightGuard,
        origin: crate::forward::BodyOrigin,
    ) -> Self {
        let open = !inner.is_end_stream();
        let read = ReadClock::new(origin.read_timeout());
        Self {
            inner,
            guard: open.then_some(guard),
            origin: open.then_some(origin),
            read,
            waiting: false,
        }
    }
}

impl Body for Upstream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if !this.waiting {
            this.read.last_read = now_ms();
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        this.waiting = polled.is_pending();
        if polled.is_pending() && this.origin.is_some() && this.read.expired(cx) {
            let error = UpstreamReadTimedOut;
            if let Some(origin) = this.origin.take() {
                origin.body_timed_out(&error);
            }
            this.guard.take();
            return Poll::Ready(Some(Err(Box::new(error))));
        }
        match &polled {
            Poll::Ready(None) => {
                if let Some(origin) = this.origin.take() {
                    origin.body_ended();
                }
                this.guard.take();
            }
            Poll::Ready(Some(Err(error))) => {
                if let Some(origin) = this.origin.take() {
                    origin.body_failed(&**error);
                }
                this.guard.take();
            }
            Poll::Ready(Some(Ok(_))) | Poll::Pending => {}
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

/// Where the client's copy of an answer comes from.
#[derive(Debug)]
enum Source {
    /// Straight from the server, at the client's pace.
    Direct(Upstream),
    /// Read ahead of the client by [`crate::forward::response_buffer`].
    Buffered(crate::forward::response_buffer::Buffered),
    /// A whole body the proxy holds (a cache hit), so it can be compressed like a server's.
    Whole(http_body_util::Full<Bytes>),
    /// One of the others, compressed on its way out ([`crate::forward::compress`]); the inner body
    /// keeps the cache fill, which stores the answer as the server sent it.
    Compressed(Box<crate::forward::compress::Compressed<UpstreamBody>>),
    /// Another request's answer as it fills the cache (`cache_lock`), piece by piece.
    Shared(crate::cache::share::Follow),
}

impl Body for Source {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Source::Direct(upstream) => Pin::new(upstream).poll_frame(cx),
            Source::Buffered(buffered) => Pin::new(buffered).poll_frame(cx),
            Source::Whole(whole) => Pin::new(whole)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            Source::Compressed(compressed) => Pin::new(compressed.as_mut()).poll_frame(cx),
            Source::Shared(pieces) => pieces
                .poll_piece(cx)
                .map(|piece| piece.map(|piece| piece.map(Frame::data).map_err(BoxError::from))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Source::Direct(upstream) => upstream.is_end_stream(),
            Source::Buffered(buffered) => buffered.is_end_stream(),
            Source::Whole(whole) => whole.is_end_stream(),
            Source::Compressed(compressed) => compressed.is_end_stream(),
            Source::Shared(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Source::Direct(upstream) => upstream.size_hint(),
            Source::Buffered(buffered) => buffered.size_hint(),
            Source::Whole(whole) => whole.size_hint(),
            Source::Compressed(compressed) => compressed.size_hint(),
            Source::Shared(_) => SizeHint::default(),
        }
    }
}

/// The answer's body as the client gets it: from its server directly or through the response buffer;
/// writes the request's access log line when it ends (or the client goes away).
#[derive(Debug)]
pub struct UpstreamBody {
    source: Source,
    // Boxed: most proxies run without an access log, and this body is moved and kept per connection.
    log: Option<Box<PendingLog>>,
    /// The cache entry this answer fills, collected as the client's copy goes by.
    fill: Option<Box<crate::cache::Fill>>,
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // The client went away before the answer it was filling ended: the rest is read for the cache
        // (and the requests following the fill), as nginx keeps reading an answer it is caching. The
        // read is bounded by the upstream's read_timeout and by max_entry_size.
        let Some(fill) = self.fill.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let source = self.take_source();
        let mut rest = UpstreamBody {
            source,
            log: None,
            fill: Some(fill),
        };
        runtime.spawn(async move {
            use http_body_util::BodyExt;
            while rest.fill.is_some() {
                match rest.frame().await {
                    Some(Ok(_)) => {}
                    // Cut short or ended: the fill is stored or dropped by poll_frame; taking it here
                    // keeps a task dropped at shutdown from starting another.
                    _ => break,
                }
            }
            rest.fill.take();
        });
    }
}

impl UpstreamBody {
    /// Wraps `inner`, releasing `guard` at its end; a failure before the end counts against `origin`.
    /// With `buffer`, the answer is read ahead of the client ([`crate::forward::response_buffer`]).
    pub fn new(
        inner: ResponseBody,
        guard: InFlightGuard,
        origin: crate::forward::BodyOrigin,
        buffer: Option<&Arc<crate::message::spool::BufferSettings>>,
    ) -> Self {
        let upstream = Upstream::new(inner, guard, origin);
        let source = match buffer {
            Some(settings) if !upstream.is_end_stream() => Source::Buffered(
                crate::forward::response_buffer::Buffered::start(upstream, settings),
            ),
            _ => Source::Direct(upstream),
        };
        Self {
            source,
            log: None,
            fill: None,
        }
    }

    /// Collects the body into `fill` as it is read, storing the entry when the body ends whole.
    pub fn attach_fill(&mut self, fill: Box<crate::cache::Fill>) {
        if self.is_end_stream() {
            fill.complete();
        } else {
            self.fill = Some(fill);
        }
    }

    /// The same body compressed with `algorithm` at `level` on its way to the client (after the response
    /// buffer, which keeps reading the upstream's bytes ahead).
    pub fn compressed(mut self, algorithm: crate::config::Algorithm, level: i32) -> Self {
        // The log counts the bytes the client gets, the fill those the server sent.
        let inner = Self {
            source: self.take_source(),
            log: None,
            fill: self.fill.take(),
        };
        Self {
            source: Source::Compressed(Box::new(crate::forward::compress::Compressed::new(
                inner, algorithm, level,
            ))),
            log: self.log.take(),
            fill: None,
        }
    }

    /// Its source, leaving an empty one (for a body moved on while this one is dropped).
    fn take_source(&mut self) -> Source {
        std::mem::replace(
            &mut self.source,
            Source::Whole(http_body_util::Full::new(Bytes::new())),
        )
    }

    /// The body of an answer another request is filling, followed as it arrives.
    pub fn shared(watch: crate::cache::share::Watch) -> Self {
        Self {
            source: Source::Shared(crate::cache::share::Follow::new(watch)),
            log: None,
            fill: None,
        }
    }

    /// A whole body the proxy holds (a cache hit's), as an answer body that can be compressed.
    pub fn whole(body: http_body_util::Full<Bytes>) -> Self {
        Self {
            source: Source::Whole(body),
            log: None,
            fill: None,
        }
    }

    /// Writes `log` when the body ends (or the client goes away).
    pub fn attach_log(&mut self, log: Box<PendingLog>) {
        if self.is_end_stream() {
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
        let this = self.get_mut();
        let polled = Pin::new(&mut this.source).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                this.log.take();
                if let Some(fill) = this.fill.take() {
                    fill.complete();
                }
            }
            Poll::Ready(Some(Err(_))) => {
                this.log.take();
                // A cut answer is never stored; dropping the fill releases its waiters.
                this.fill.take();
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(log), Some(data)) = (this.log.as_mut(), frame.data_ref()) {
                    log.entry.bytes += data.len() as u64;
                }
                if let (Some(fill), Some(data)) = (this.fill.as_mut(), frame.data_ref()) {
                    if !fill.push(data) {
                        // Over max_entry_size: the rest passes through unstored.
                        this.fill = None;
                    }
                }
                // The connection stops polling once it has written a known length whole (before the
                // body reports its end), so the entry is stored with the last piece.
                if this.fill.as_ref().is_some_and(|fill| fill.is_whole()) || this.is_end_stream() {
                    if let Some(fill) = this.fill.take() {
                        fill.complete();
                    }
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.source.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.source.size_hint()
    }
}

/// What the proxy answers with: an upstream body or a short local one.
pub type ProxyBody = http_body_util::Either<UpstreamBody, http_body_util::Full<Bytes>>;
