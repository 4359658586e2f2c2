//! A client connection's I/O, timed: the first bytes of a request head and blocked writes are noted on its
//! [`ConnectionClock`], the first read is sized for a whole request head (and kept for the protocol check),
//! and a connection closed while its client may still be sending lingers (nginx's lingering close).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::connection_clock::ConnectionClock;

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
