//! A client connection's clock: what the connection is doing (idle, reading a request head, serving
//! requests, blocked writing) and since when, so one timer per connection enforces `client_header_timeout`,
//! `keepalive_timeout` and `send_timeout` without holding a thread.
//!
//! The I/O wrapper [`TimedIo`] notes the first bytes of a request head and blocked writes; the service
//! wrapper ([`super::service::ClockedService`]) notes requests starting and their responses ending.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::clock::now_ms;
use crate::config::ClientLimits;
use crate::proxy::deadline::UpstreamWatch;

/// "Not running" for the timestamps below ([`now_ms`] is never 0).
const NEVER: u64 = 0;

/// The state of one client connection, shared by its I/O, its service and its watchdog.
#[derive(Debug)]
pub struct ConnectionClock {
    /// Requests (HTTP/2 streams) between their start and the end of their response.
    active: AtomicU32,
    /// Requests started on this connection.
    served: AtomicU32,
    /// When the connection last became idle (accepted, or its last response ended).
    idle_since: AtomicU64,
    /// When the first byte of the next request head arrived, while idle.
    head_since: AtomicU64,
    /// When a write to the client started waiting for the socket.
    write_blocked_since: AtomicU64,
    /// Response chunks handed to the connection and not yet sent (the body has not been asked past them).
    sending: AtomicU32,
    /// When the last of those chunks was handed out.
    last_sent: AtomicU64,
    /// When the answer the request in flight waits for from an upstream is due (HTTP/1: one at a time).
    upstream_due: AtomicU64,
    /// The time the watchdog's timer is set to (it looks then, or when poked).
    watchdog_at: AtomicU64,
    /// The connection speaks HTTP/2 (its streams, not bytes, say when a request starts).
    http2: AtomicBool,
    /// The last request came with a body (which an early answer may have left unread).
    body_sent: AtomicBool,
    /// Wakes the drain when the first request arrives.
    first: tokio::sync::Notify,
    /// Wakes the watchdog (its requests are used up).
    poke: tokio::sync::Notify,
}

/// The watchdog times an HTTP/1 request's upstream attempts: their due time is kept here, and the
/// watchdog is poked only when it is set to look later than that (see [`crate::proxy::deadline`]).
impl UpstreamWatch for ConnectionClock {
    fn answer_due(&self, due: u64) {
        self.upstream_due.store(due, Ordering::Relaxed);
        if due < self.watchdog_at.load(Ordering::Relaxed) {
            self.poke();
        }
    }

    fn answer_settled(&self) {
        self.upstream_due.store(NEVER, Ordering::Relaxed);
    }
}

/// What the watchdog should do with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing yet; look again at this [`now_ms`] time.
    WaitUntil(u64),
    /// Idle past `keepalive_timeout`, or its requests are used up: close it politely.
    Finish,
    /// A request head took longer than `client_header_timeout`.
    HeaderTimeout,
    /// A write stayed blocked longer than `send_timeout`.
    SendTimeout,
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Default for ConnectionClock {
    fn default() -> Self {
        Self::new()
    }
}

impl ConnectionClock {
    /// The clock of a connection accepted now.
    pub fn new() -> Self {
        Self {
            active: AtomicU32::new(0),
            served: AtomicU32::new(0),
            idle_since: AtomicU64::new(now_ms()),
            head_since: AtomicU64::new(NEVER),
            write_blocked_since: AtomicU64::new(NEVER),
            sending: AtomicU32::new(0),
            last_sent: AtomicU64::new(NEVER),
            upstream_due: AtomicU64::new(NEVER),
            // Until the watchdog sets its timer, any due time is earlier.
            watchdog_at: AtomicU64::new(u64::MAX),
            http2: AtomicBool::new(false),
            body_sent: AtomicBool::new(false),
            first: tokio::sync::Notify::new(),
            poke: tokio::sync::Notify::new(),
        }
    }

    /// A request starts; returns how many this connection has served, this one included.
    pub fn request_started(&self, http2: bool) -> u32 {
        if http2 {
            self.http2.store(true, Ordering::Relaxed);
        }
        self.active.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(NEVER, Ordering::Relaxed);
        let served = self.served.fetch_add(1, Ordering::AcqRel).saturating_add(1);
        if served == 1 {
            self.first.notify_waiters();
        }
        served
    }

    /// Whether the request that just started has a body.
    pub fn request_body(&self, has_body: bool) {
        self.body_sent.store(has_body, Ordering::Relaxed);
    }

    /// Whether the client may still be sending after an answer: the last request had a body.
    fn may_have_unread_input(&self) -> bool {
        self.body_sent.load(Ordering::Relaxed)
    }

    /// A request's response ended (or was dropped).
    pub fn request_ended(&self) {
        self.idle_since.store(now_ms(), Ordering::Relaxed);
        self.active.fetch_sub(1, Ordering::AcqRel);
    }

    /// The watchdog's timer is set to `at` (a [`now_ms`] time).
    pub fn watchdog_set(&self, at: u64) {
        self.watchdog_at.store(at, Ordering::Relaxed);
    }

    /// When the answer the request in flight waits for is due, if it waits for one.
    pub fn upstream_due(&self) -> Option<u64> {
        Some(self.upstream_due.load(Ordering::Relaxed)).filter(|&due| due != NEVER)
    }

    /// Requests started on this connection.
    pub fn served(&self) -> u32 {
        self.served.load(Ordering::Acquire)
    }

    /// Wakes the watchdog to look again now (the wake is kept if it is not waiting).
    pub fn poke(&self) {
        self.poke.notify_one();
    }

    /// Waits for [`Self::poke`].
    pub async fn poked(&self) {
        self.poke.notified().await;
    }

    /// Waits until the connection's first request has started.
    pub async fn first_request(&self) {
        let notified = self.first.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.served() > 0 {
            return;
        }
        notified.await;
    }

    /// A response body handed out a chunk, which now waits for the client (its window, its socket).
    pub fn chunk_out(&self) {
        self.last_sent.store(now_ms(), Ordering::Relaxed);
        self.sending.fetch_add(1, Ordering::AcqRel);
    }

    /// That chunk went out (the body is asked for the next), or its body ended.
    pub fn chunk_done(&self) {
        self.sending.fetch_sub(1, Ordering::AcqRel);
    }

    fn bytes_read(&self) {
        if self.active.load(Ordering::Acquire) == 0
            && self.head_since.load(Ordering::Relaxed) == NEVER
        {
            self.head_since.store(now_ms(), Ordering::Relaxed);
        }
    }

    fn write_blocked(&self, blocked: bool) {
        let since = self.write_blocked_since.load(Ordering::Relaxed);
        if blocked && since == NEVER {
            self.write_blocked_since.store(now_ms(), Ordering::Relaxed);
        } else if !blocked && since != NEVER {
            self.write_blocked_since.store(NEVER, Ordering::Relaxed);
        }
    }

    /// Judges the connection at `now` under `limits`.
    pub fn verdict(&self, limits: &ClientLimits, now: u64) -> Verdict {
        let http2 = self.http2.load(Ordering::Relaxed);
        // However the state changes while the watchdog sleeps, no timer can expire sooner than this.
        let shortest = limits.header_timeout.min(limits.send_timeout).min(
            if limits.keepalive_timeout.is_zero() {
                limits.header_timeout
            } else {
                limits.keepalive_timeout
            },
        );
        let mut next = now.saturating_add(millis(shortest).max(1));
        let blocked = self.write_blocked_since.load(Ordering::Relaxed);
        if blocked != NEVER {
            let expires = blocked.saturating_add(millis(limits.send_timeout));
            if now >= expires {
                return Verdict::SendTimeout;
            }
            next = next.min(expires);
        }
        // HTTP/2 finishes with GOAWAY, which lets the streams in flight complete.
        if http2 && self.served() >= limits.keepalive_requests {
            return Verdict::Finish;
        }
        if self.sending.load(Ordering::Acquire) > 0 {
            // A chunk is waiting for the client: an HTTP/2 stream whose window stays shut shows here
            // (its socket is not blocked, the stream just cannot send).
            let expires = self
                .last_sent
                .load(Ordering::Relaxed)
                .saturating_add(millis(limits.send_timeout));
            if now >= expires {
                return Verdict::SendTimeout;
            }
            next = next.min(expires);
        }
        if self.active.load(Ordering::Acquire) > 0 {
            if let Some(due) = self.upstream_due() {
                // The attempt itself answers 504 when polled past this; the look only has to wake it
                // (never in the past: a look that came early looks again a millisecond later).
                next = next.min(due.max(now.saturating_add(1)));
            }
            return Verdict::WaitUntil(next);
        }
        let head = self.head_since.load(Ordering::Relaxed);
        if head != NEVER && !http2 {
            let expires = head.saturating_add(millis(limits.header_timeout));
            if now >= expires {
                return Verdict::HeaderTimeout;
            }
            return Verdict::WaitUntil(next.min(expires));
        }
        // Idle: a new connection gets `client_header_timeout` for its first request (as in nginx), a
        // kept-alive one `keepalive_timeout` for its next.
        let idle = if self.served() == 0 {
            limits.header_timeout
        } else {
            limits.keepalive_timeout
        };
        let expires = self
            .idle_since
            .load(Ordering::Relaxed)
            .saturating_add(millis(idle));
        if now >= expires {
            return if self.served() == 0 {
                Verdict::HeaderTimeout
            } else {
                Verdict::Finish
            };
        }
        Verdict::WaitUntil(next.min(expires))
    }
}

/// The length of the HTTP/2 connection preface, the most a connection reads before choosing its protocol.
pub const PREFACE_LEN: usize = 24;

/// The room of a connection's first read (hyper's first read buffer's size): a first request head that has
/// arrived whole is read by that one read, not by one for the preface and another for the rest.
const FIRST_READ: usize = 8192;

/// What a connection's I/O does with what the client still sends once the proxy has closed its side
/// (nginx's lingering close): read and discard it for up to `time`, with at most `timeout` between two
/// reads, so the client reads the answer instead of a reset.
#[derive(Debug, Clone, Copy)]
pub struct Lingering {
    /// `lingering_time`.
    pub time: Duration,
    /// `lingering_timeout`.
    pub timeout: Duration,
}

/// Hands a closed connection to a task that reads and discards its input (see [`Lingering`]); the flag
/// says the last request had a body, so input may still come even if none is waiting.
type Linger<I> = fn(I, Lingering, bool);

/// A client connection's I/O that tells its [`ConnectionClock`] when request bytes arrive and when
/// writes block. It also keeps the first bytes read to tell HTTP/2 from HTTP/1
/// ([`TimedIo::read_preface`]) and replays them to whichever protocol serves the connection. Dropped
/// after the proxy shut its side while the client may still be sending, it lingers (see [`Lingering`]).
#[derive(Debug)]
pub struct TimedIo<I> {
    // `None` only once dropped into a lingering task.
    inner: Option<I>,
    clock: std::sync::Arc<ConnectionClock>,
    preface: [u8; PREFACE_LEN],
    preface_len: u8,
    replayed: u8,
    // Whether the read that completed the preface filled its room (more may be waiting).
    first_read_full: bool,
    // What that read brought past the preface's length and `poll_read` has not replayed yet.
    first_rest: Bytes,
    // The proxy shut its side of the connection (an answer that closes it).
    shut: bool,
    linger: Option<(Linger<I>, Lingering)>,
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "connection handed to its lingering close",
    )
}

impl<I> TimedIo<I> {
    /// Wraps `inner`, reporting to `clock`.
    pub fn new(inner: I, clock: std::sync::Arc<ConnectionClock>) -> Self {
        Self {
            inner: Some(inner),
            clock,
            preface: [0; PREFACE_LEN],
            preface_len: 0,
            replayed: 0,
            first_read_full: false,
            first_rest: Bytes::new(),
            shut: false,
            linger: None,
        }
    }

    /// The connection's I/O.
    pub fn get_ref(&self) -> Option<&I> {
        self.inner.as_ref()
    }

    /// The first bytes [`TimedIo::read_preface`] has read so far (at most [`PREFACE_LEN`]).
    pub fn preface(&self) -> &[u8] {
        &self.preface[..usize::from(self.preface_len)]
    }
}

impl<I: AsyncRead + Unpin + Send + 'static> TimedIo<I> {
    /// Lingers as `lingering` says when dropped after a shutdown with client input possibly unread.
    pub fn lingering(mut self, lingering: Lingering) -> Self {
        self.linger = Some((linger::<I>, lingering));
        self
    }
}

/// Reads and discards `io`'s input on a task of its own until the client closes, `lingering.timeout`
/// passes without input, or `lingering.time` in all; nothing when the client has closed already, or
/// when no input waits and the last request had no body (the usual `Connection: close`).
fn linger<I: AsyncRead + Unpin + Send + 'static>(mut io: I, lingering: Lingering, had_body: bool) {
    let mut probe = [0u8; 1024];
    let mut buf = ReadBuf::new(&mut probe);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match Pin::new(&mut io).poll_read(&mut cx, &mut buf) {
        Poll::Ready(Ok(())) if !buf.filled().is_empty() => {}
        Poll::Pending if had_body => {}
        _ => return,
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let end = tokio::time::Instant::now() + lingering.time;
        let mut scratch = vec![0u8; 16 * 1024];
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let wait = left.min(lingering.timeout);
            match tokio::time::timeout(wait, tokio::io::AsyncReadExt::read(&mut io, &mut scratch))
                .await
            {
                Ok(Ok(n)) if n > 0 => continue,
                _ => break,
            }
        }
    });
}

impl<I> Drop for TimedIo<I> {
    fn drop(&mut self) {
        let Some((linger, lingering)) = self.linger else {
            return;
        };
        if !self.shut {
            return;
        }
        if let Some(io) = self.inner.take() {
            linger(io, lingering, self.clock.may_have_unread_input());
        }
    }
}

impl<I: AsyncRead + Unpin> TimedIo<I> {
    /// Reads what has arrived (up to 8 KiB) while fewer than [`PREFACE_LEN`] bytes have: the first of
    /// them go to [`TimedIo::preface`], the rest are kept; `poll_read` replays all of it before reading
    /// anything else. `Ok(0)` at end of stream or once the preface's length is read.
    pub fn read_preface(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let start = usize::from(self.preface_len);
        if start == PREFACE_LEN {
            return Poll::Ready(Ok(0));
        }
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(Err(gone()));
        };
        let mut room = [std::mem::MaybeUninit::<u8>::uninit(); FIRST_READ];
        let mut buf = ReadBuf::uninit(&mut room);
        ready!(Pin::new(inner).poll_read(cx, &mut buf))?;
        let read = buf.filled();
        let n = read.len();
        if n > 0 {
            self.clock.bytes_read();
            let inline = n.min(PREFACE_LEN - start);
            self.preface[start..start + inline].copy_from_slice(&read[..inline]);
            // At most PREFACE_LEN (24) in all, so it fits.
            self.preface_len += inline as u8;
            if n > inline {
                // Only the read that completes the preface's length has more: there is one such read.
                self.first_rest = Bytes::copy_from_slice(&read[inline..]);
            }
            self.first_read_full = n == FIRST_READ;
        }
        Poll::Ready(Ok(n))
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for TimedIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Err(gone()));
        };
        let mut inner = Pin::new(inner);
        let before = buf.filled().len();
        if this.replayed < this.preface_len {
            let unread = &this.preface[usize::from(this.replayed)..usize::from(this.preface_len)];
            let n = unread.len().min(buf.remaining());
            buf.put_slice(&unread[..n]);
            // n <= unread.len() <= PREFACE_LEN.
            this.replayed += n as u8;
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
        }
        if !this.first_rest.is_empty() {
            let n = this.first_rest.len().min(buf.remaining());
            buf.put_slice(&this.first_rest[..n]);
            if n < this.first_rest.len() {
                this.first_rest.advance(n);
                return Poll::Ready(Ok(()));
            }
            // All replayed: the allocation goes too (an empty `Bytes` would keep it for the connection's life).
            this.first_rest = Bytes::new();
        }
        if buf.filled().len() > before {
            // Room left means everything kept has been replayed.
            if buf.remaining() > 0 && std::mem::take(&mut this.first_read_full) {
                // The first read filled its room: take what else has arrived, so the first request
                // head is parsed in one go; an error or nothing more waits for the next read.
                let _ = inner.as_mut().poll_read(cx, buf);
            }
            return Poll::Ready(Ok(()));
        }
        let polled = inner.poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.clock.bytes_read();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for TimedIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Err(gone()));
        };
        let polled = Pin::new(inner).poll_write(cx, buf);
        this.clock.write_blocked(polled.is_pending());
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Err(gone()));
        };
        let polled = Pin::new(inner).poll_write_vectored(cx, bufs);
        this.clock.write_blocked(polled.is_pending());
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner
            .as_ref()
            .is_some_and(|inner| inner.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Err(gone()));
        };
        let polled = Pin::new(inner).poll_flush(cx);
        this.clock.write_blocked(polled.is_pending());
        polled
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Err(gone()));
        };
        let polled = Pin::new(inner).poll_shutdown(cx);
        this.clock.write_blocked(polled.is_pending());
        this.shut = true;
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;

    fn limits() -> ClientLimits {
        ClientLimits {
            header_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(20),
            send_timeout: Duration::from_secs(30),
            ..ClientLimits::default()
        }
    }

    #[test]
    fn an_upstream_due_time_wakes_the_watchdog_only_when_it_is_earlier_than_its_timer() {
        let clock = ConnectionClock::new();
        clock.request_started(false);
        let now = now_ms();
        clock.watchdog_set(now + 10_000);
        // Later than the watchdog's timer: no poke, and the watchdog's next look is unchanged.
        clock.answer_due(now + 20_000);
        let poked = clock.poked();
        tokio::pin!(poked);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(poked.as_mut().poll(&mut cx).is_pending(), "poked");
        assert_eq!(
            clock.verdict(&limits(), now),
            Verdict::WaitUntil(now + 10_000)
        );
        // Earlier: poked, and the look is set to the due time (never to the past).
        clock.answer_due(now + 500);
        assert!(poked.as_mut().poll(&mut cx).is_ready(), "not poked");
        assert_eq!(clock.verdict(&limits(), now), Verdict::WaitUntil(now + 500));
        assert_eq!(
            clock.verdict(&limits(), now + 600),
            Verdict::WaitUntil(now + 601)
        );
        // Settled: the due time no longer counts.
        clock.answer_settled();
        assert_eq!(
            clock.verdict(&limits(), now),
            Verdict::WaitUntil(now + 10_000)
        );
    }

    #[test]
    fn a_head_is_timed_from_its_first_byte_not_its_last() {
        let clock = ConnectionClock::new();
        clock.request_started(false);
        clock.request_ended();
        let idle = clock.idle_since.load(Ordering::Relaxed);
        clock.head_since.store(idle + 1_000, Ordering::Relaxed);
        clock.bytes_read(); // a later byte does not move the start
        assert_eq!(clock.head_since.load(Ordering::Relaxed), idle + 1_000);
        assert_eq!(
            clock.verdict(&limits(), idle + 10_999),
            Verdict::WaitUntil(idle + 11_000)
        );
        assert_eq!(
            clock.verdict(&limits(), idle + 11_000),
            Verdict::HeaderTimeout
        );
    }

    #[test]
    fn idle_time_is_keepalive_after_a_request_and_header_time_before_one() {
        let limits = limits();
        let fresh = ConnectionClock::new();
        let start = fresh.idle_since.load(Ordering::Relaxed);
        assert_eq!(
            fresh.verdict(&limits, start + 10_000),
            Verdict::HeaderTimeout
        );
        let used = ConnectionClock::new();
        used.request_started(false);
        used.request_ended();
        let idle = used.idle_since.load(Ordering::Relaxed);
        assert!(matches!(
            used.verdict(&limits, idle + 19_999),
            Verdict::WaitUntil(_)
        ));
        assert_eq!(used.verdict(&limits, idle + 20_000), Verdict::Finish);
    }

    #[test]
    fn a_busy_connection_is_only_judged_on_blocked_writes() {
        let limits = limits();
        let clock = ConnectionClock::new();
        clock.request_started(false);
        let start = clock.idle_since.load(Ordering::Relaxed);
        assert!(matches!(
            clock.verdict(&limits, start + 1_000_000),
            Verdict::WaitUntil(_)
        ));
        clock
            .write_blocked_since
            .store(start + 5, Ordering::Relaxed);
        assert_eq!(clock.verdict(&limits, start + 30_005), Verdict::SendTimeout);
        clock.write_blocked(false);
        assert!(matches!(
            clock.verdict(&limits, start + 30_005),
            Verdict::WaitUntil(_)
        ));
    }
}
