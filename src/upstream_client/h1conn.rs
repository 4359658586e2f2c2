//! One HTTP/1.1 upstream connection (cleartext or TLS), driven on the request's own task: the request is written
//! from its rewritten parts, the response head parsed into a `Response`, and the body read by the
//! response body itself ([`H1Body`]), which gives the connection back to its pool at the end.
//!
//! hyper's client runs a task per connection reached through a channel and a oneshot, and re-encodes a
//! header map per message; doing the same work inline is cheaper per proxied request
//! (docs/benchmarks-history.md). hyper's client stays for HTTP/2 only.

use std::future::{poll_fn, Future};
use std::io::{IoSlice, Write as _};
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::uri::Authority;
use http::{HeaderMap, Method};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::io::poll_read_buf;

use crate::message::body::RequestBody;
use crate::message::headers::Forwarding;
use crate::upstream_client::h1chunked::{decode_chunked, ChunkState, Decoded};
use crate::upstream_client::h1client::Http1Client;
use crate::upstream_client::h1codec::{
    self, encode_head, request_framing, CodecError, Head, RequestFraming, ResponseFraming,
};
use crate::upstream_client::h1stream::UpstreamStream;

/// An error a body of ours, or hyper's, raises.
pub use crate::message::body::BoxError;

/// Room reserved before each read of a response head or body.
const READ_HEAD: usize = 8 * 1024;
const READ_BODY: usize = 16 * 1024;

/// The most a body read asks for: reads that fill their room double it up to this (as hyper's adaptive
/// reads do), so a large body moves in few, large frames.
const READ_BODY_MAX: usize = 256 * 1024;

/// An open connection, its buffers (kept while it is pooled, so a request allocates none) and where it
/// goes back to. Always boxed, so a response body moves a pointer rather than the connection.
#[derive(Debug)]
pub struct Conn {
    io: UpstreamStream,
    /// Bytes read and not used yet.
    buf: BytesMut,
    /// The request head, or a chunk's framing, on its way out.
    out: Vec<u8>,
    /// The pool it returns to (weak: the pool holds its idle connections), under its server's address.
    pool: Weak<Http1Client>,
    key: Authority,
}

/// What failed on a connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// Writing the request failed.
    #[error("{0}")]
    Write(std::io::Error),
    /// The server closed or reset the connection before a whole response head.
    #[error("{cause}")]
    Closed {
        /// Whether any byte of a response had arrived.
        received: bool,
        /// The OS error, or that it was a clean close.
        cause: String,
    },
    /// The response is malformed.
    #[error("{0}")]
    Codec(#[from] CodecError),
    /// The client's request body failed (too large, malformed, timed out).
    #[error("{0}")]
    Body(BoxError),
    /// The client's body did not match its `Content-Length`.
    #[error("request body length differs from its Content-Length")]
    BodyLength,
}

impl ConnError {
    /// Whether the request can go again on a fresh connection: the server closed this (pooled)
    /// connection before answering a byte, and sending again cannot repeat an effect (no body; and an
    /// idempotent method unless the write itself failed).
    pub fn may_resend(&self, idempotent: bool, has_body: bool) -> bool {
        !has_body
            && match self {
                ConnError::Write(_) => true,
                ConnError::Closed { received, .. } => !received && idempotent,
                _ => false,
            }
    }
}

impl Conn {
    /// A connection over `io` to `key`, which has sent and read nothing yet, that returns to `pool`.
    pub fn new(io: UpstreamStream, pool: &Arc<Http1Client>, key: &Authority) -> Box<Self> {
        Box::new(Self {
            io,
            buf: BytesMut::new(),
            out: Vec::new(),
            pool: Arc::downgrade(pool),
            key: key.clone(),
        })
    }

    /// A connection that belongs to no pool (a health probe's): closed when its response ends.
    pub fn unpooled(io: UpstreamStream, key: Authority) -> Box<Self> {
        Box::new(Self {
            io,
            buf: BytesMut::new(),
            out: Vec::new(),
            pool: Weak::new(),
            key,
        })
    }

    /// The address of the server it is connected to (its pool's key).
    pub fn key(&self) -> &Authority {
        &self.key
    }

    /// The stream and the bytes the server sent after its `101` head: the upstream side of a tunnel.
    pub fn into_tunnel(self) -> (UpstreamStream, BytesMut) {
        (self.io, self.buf)
    }

    /// Whether an idle connection can take a request: a close, a reset or stray bytes from the server
    /// make it unusable. No system call unless the reactor has seen the socket readable.
    pub fn is_usable(&mut self) -> bool {
        self.io.is_usable(&mut self.buf)
    }

    /// Sends a request (origin-form `target`) and reads its response head. The head comes back with
    /// whether the whole request was sent: a server may answer before reading all of a body, and then
    /// the connection cannot be reused. The response's fields go into `headers` (the request's, left
    /// as they were until a whole head has arrived, so a failed send can be repeated). `upgrading`: the
    /// request asks to switch protocols, so a `101` is its answer (else an error).
    pub async fn send(
        &mut self,
        (method, target): (&Method, &str),
        headers: &mut HeaderMap,
        forwarding: Option<&Forwarding>,
        body: &mut RequestBody,
        upgrading: bool,
    ) -> Result<(Head, bool), ConnError> {
        let framing = request_framing(!body.is_end_stream(), headers);
        self.out.clear();
        encode_head(&mut self.out, method, target, headers, forwarding, framing);
        let whole = if framing == RequestFraming::Empty {
            self.io
                .write_all(&self.out)
                .await
                .map_err(ConnError::Write)?;
            // TLS keeps what it could not write yet; a socket has nothing to flush.
            self.io.flush().await.map_err(ConnError::Write)?;
            true
        } else {
            // Boxed: only requests with a body need this future.
            Box::pin(self.send_with_body(framing, body)).await?
        };
        loop {
            if !self.buf.is_empty() {
                if let Some(head) = h1codec::parse_head(&mut self.buf, method, headers, upgrading)?
                {
                    return Ok((head, whole));
                }
            }
            self.buf.reserve(READ_HEAD);
            let read = poll_fn(|cx| poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)).await;
            let received = !self.buf.is_empty();
            match read {
                Ok(0) => {
                    return Err(ConnError::Closed {
                        received,
                        cause: "connection closed before message completed".into(),
                    })
                }
                Ok(_) => {}
                Err(error) => {
                    return Err(ConnError::Closed {
                        received,
                        cause: error.to_string(),
                    })
                }
            }
        }
    }

    /// Writes the head and the body, watching for an answer meanwhile; `Ok(false)` when the server
    /// answered (or closed) before the body was all sent.
    async fn send_with_body(
        &mut self,
        framing: RequestFraming,
        body: &mut RequestBody,
    ) -> Result<bool, ConnError> {
        match &mut self.io {
            UpstreamStream::Plain(tcp) => {
                let (reader, writer) = tcp.split();
                send_watching(reader, writer, &mut self.out, &mut self.buf, framing, body).await
            }
            UpstreamStream::Tls(tls) => {
                let (reader, writer) = tokio::io::split(&mut **tls);
                send_watching(reader, writer, &mut self.out, &mut self.buf, framing, body).await
            }
        }
    }
}

/// Writes the head in `out` and the body through `writer`, reading any answer from `reader` into
/// `buf` meanwhile (see [`Conn::send_with_body`]).
async fn send_watching<R, W>(
    mut reader: R,
    writer: W,
    out: &mut Vec<u8>,
    buf: &mut BytesMut,
    framing: RequestFraming,
    body: &mut RequestBody,
) -> Result<bool, ConnError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let sending = write_body(writer, out, framing, body);
    let mut sending = std::pin::pin!(sending);
    poll_fn(|cx| {
        if let Poll::Ready(sent) = sending.as_mut().poll(cx) {
            return Poll::Ready(sent.map(|()| true));
        }
        loop {
            buf.reserve(READ_HEAD);
            match poll_read_buf(Pin::new(&mut reader), cx, buf) {
                Poll::Pending => return Poll::Pending,
                // A close before the body was all sent: the head read reports it.
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(false)),
                // `100 Continue` and other interim answers: the body goes on.
                Poll::Ready(Ok(_)) => match h1codec::skip_interim(buf) {
                    Ok(false) => {}
                    // A final answer before the body was all sent.
                    Ok(true) => return Poll::Ready(Ok(false)),
                    Err(error) => return Poll::Ready(Err(error.into())),
                },
                Poll::Ready(Err(error)) => {
                    return Poll::Ready(Err(ConnError::Closed {
                        received: !buf.is_empty(),
                        cause: error.to_string(),
                    }))
                }
            }
        }
    })
    .await
}

/// What the body's next poll gave, or that the head must go out first (the body is not ready yet).
enum Next {
    Flush,
    Frame(Option<Result<Frame<Bytes>, BoxError>>),
}

/// Writes `out` (the head) and then the body with `framing`.
async fn write_body<W: AsyncWrite + Unpin>(
    mut writer: W,
    out: &mut Vec<u8>,
    framing: RequestFraming,
    body: &mut RequestBody,
) -> Result<(), ConnError> {
    let mut sent: u64 = 0;
    loop {
        let next = poll_fn(|cx| match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Pending if !out.is_empty() => Poll::Ready(Next::Flush),
            Poll::Pending => Poll::Pending,
            Poll::Ready(frame) => Poll::Ready(Next::Frame(frame)),
        })
        .await;
        match next {
            Next::Flush => {
                writer.write_all(out).await.map_err(ConnError::Write)?;
                writer.flush().await.map_err(ConnError::Write)?;
                out.clear();
            }
            Next::Frame(Some(Ok(frame))) => {
                // Trailers are not forwarded (nginx drops a request's trailers too).
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if data.is_empty() {
                    continue;
                }
                sent += data.len() as u64;
                match framing {
                    RequestFraming::Length(length) if sent > length => {
                        return Err(ConnError::BodyLength)
                    }
                    RequestFraming::Chunked => {
                        // Writing to a Vec cannot fail.
                        let _ = write!(out, "{:x}\r\n", data.len());
                        write_all_vectored(&mut writer, [out, &data, b"\r\n"]).await?;
                    }
                    _ => write_all_vectored(&mut writer, [out, &data]).await?,
                }
                // TLS may keep records back, and the body's next piece may be a while coming.
                writer.flush().await.map_err(ConnError::Write)?;
                out.clear();
            }
            Next::Frame(Some(Err(error))) => return Err(ConnError::Body(error)),
            Next::Frame(None) => {
                match framing {
                    RequestFraming::Length(length) if sent != length => {
                        return Err(ConnError::BodyLength)
                    }
                    RequestFraming::Chunked => out.extend_from_slice(b"0\r\n\r\n"),
                    _ => {}
                }
                if !out.is_empty() {
                    writer.write_all(out).await.map_err(ConnError::Write)?;
                    out.clear();
                }
                writer.flush().await.map_err(ConnError::Write)?;
                return Ok(());
            }
        }
    }
}

/// Writes every byte of `parts` with as few system calls as the socket allows.
async fn write_all_vectored<W: AsyncWrite + Unpin, const N: usize>(
    writer: &mut W,
    parts: [&[u8]; N],
) -> Result<(), ConnError> {
    let mut slices = parts.map(IoSlice::new);
    let mut slices = &mut slices[..];
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        let written = poll_fn(|cx| Pin::new(&mut *writer).poll_write_vectored(cx, slices))
            .await
            .map_err(ConnError::Write)?;
        if written == 0 {
            return Err(ConnError::Write(std::io::ErrorKind::WriteZero.into()));
        }
        IoSlice::advance_slices(&mut slices, written);
    }
    Ok(())
}

/// Where a response body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Remaining {
    Length(u64),
    Chunked(ChunkState),
    UntilClose,
    Done,
}

/// A response body read from its connection by whoever polls it (the client connection's task); the
/// connection goes back to its pool when the body has been read to its end.
#[derive(Debug)]
pub struct H1Body {
    conn: Option<Box<Conn>>,
    remaining: Remaining,
    keep_alive: bool,
    hop_by_hop_removed: bool,
    /// Room for the next read ([`READ_BODY`], doubled by reads that fill it).
    read_size: usize,
    /// The body was cut (the error's text): raised on the poll after the one that saw it, so what was
    /// read before goes out to the client first (hyper drops what it has buffered when a body fails).
    cut: Option<String>,
}

/// A response body that failed before its end.
#[derive(Debug, thiserror::Error)]
pub enum H1BodyError {
    /// The server closed or reset the connection early.
    #[error("upstream closed the connection before the body was complete: {0}")]
    Cut(String),
    /// A malformed chunked body.
    #[error("{0}")]
    Codec(#[from] CodecError),
}

impl H1Body {
    /// The body of a `101` answer: none (the connection became the tunnel's).
    pub fn switched() -> Self {
        Self {
            conn: None,
            remaining: Remaining::Done,
            keep_alive: false,
            hop_by_hop_removed: true,
            read_size: READ_BODY,
            cut: None,
        }
    }

    /// The body of a response with `head`'s framing on `conn`; `whole` whether the whole request was
    /// sent (else the connection is not pooled again).
    pub fn new(conn: Box<Conn>, head: &Head, whole: bool) -> Self {
        let (framing, keep_alive) = (head.framing, head.keep_alive && whole);
        let remaining = match framing {
            ResponseFraming::Empty => Remaining::Done,
            ResponseFraming::Length(length) => Remaining::Length(length),
            ResponseFraming::Chunked => Remaining::Chunked(ChunkState::Size),
            ResponseFraming::UntilClose => Remaining::UntilClose,
        };
        let mut body = Self {
            conn: Some(conn),
            remaining,
            keep_alive,
            hop_by_hop_removed: head.hop_by_hop_removed,
            read_size: READ_BODY,
            cut: None,
        };
        if remaining == Remaining::Done {
            body.finish();
        }
        body
    }

    /// The body has ended: its connection goes back to the pool if it can carry another request.
    fn finish(&mut self) {
        self.remaining = Remaining::Done;
        let Some(conn) = self.conn.take() else {
            return;
        };
        // Bytes past the body's end: the server is confused; the connection is closed.
        if self.keep_alive && conn.buf.is_empty() {
            if let Some(pool) = conn.pool.upgrade() {
                pool.put(conn);
            }
        }
    }

    /// The connection failed before the body's end: it is closed now, and the error raised on the next
    /// poll (see [`H1Body::cut`]).
    fn cut(
        &mut self,
        cause: String,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1BodyError>>> {
        self.conn = None;
        self.cut = Some(cause);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = H1BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1BodyError>>> {
        let this = self.get_mut();
        if let Some(cause) = this.cut.take() {
            this.remaining = Remaining::Done;
            return Poll::Ready(Some(Err(H1BodyError::Cut(cause))));
        }
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.remaining {
                Remaining::Done => return Poll::Ready(None),
                Remaining::Length(0) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Remaining::Length(left) if !conn.buf.is_empty() => {
                    let take = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(conn.buf.len());
                    let data = conn.buf.split_to(take).freeze();
                    this.remaining = Remaining::Length(left - take as u64);
                    if left == take as u64 {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Remaining::Chunked(mut state) if !conn.buf.is_empty() => {
                    let decoded = decode_chunked(&mut state, &mut conn.buf);
                    this.remaining = Remaining::Chunked(state);
                    match decoded {
                        Ok(Some(Decoded::Data(data))) => {
                            return Poll::Ready(Some(Ok(Frame::data(data))))
                        }
                        Ok(Some(Decoded::End(trailers))) => {
                            this.finish();
                            return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                        }
                        Ok(None) => {}
                        Err(error) => {
                            this.conn = None;
                            this.remaining = Remaining::Done;
                            return Poll::Ready(Some(Err(error.into())));
                        }
                    }
                }
                Remaining::UntilClose if !conn.buf.is_empty() => {
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                _ => {}
            }
            let room = match this.remaining {
                // One byte more than the body has left: a read that takes the rest is then short of the
                // room, which tokio takes as the socket drained (it clears the readiness). A read that
                // filled the room exactly left it set, and the connection's next checkout
                // (`Conn::is_usable`, which reads when the socket looks readable) made a `recvfrom` that
                // only returned EAGAIN.
                Remaining::Length(left) => usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(this.read_size)
                    .saturating_add(1),
                _ => this.read_size,
            };
            conn.buf.reserve(room);
            let before = conn.buf.len();
            match poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(read)) if read > 0 && conn.buf.len() - before >= this.read_size => {
                    this.read_size = (this.read_size * 2).min(READ_BODY_MAX);
                }
                Poll::Ready(Ok(0)) if this.remaining == Remaining::UntilClose => {
                    this.remaining = Remaining::Done;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => return this.cut("connection closed".into(), cx),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(error)) => return this.cut(error.to_string(), cx),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == Remaining::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Remaining::Done => SizeHint::with_exact(0),
            Remaining::Length(left) => SizeHint::with_exact(left),
            _ => SizeHint::default(),
        }
    }
}

/// The upstream side of a switched (`101`) connection, in the answer's extensions until the tunnel
/// takes it (extensions must be `Clone`, hence the shared slot).
#[derive(Debug, Clone)]
pub struct UpstreamTunnel(Arc<parking_lot::Mutex<Option<Box<Conn>>>>);

impl UpstreamTunnel {
    /// Holds `conn`, whose answer was `101`.
    pub fn new(conn: Box<Conn>) -> Self {
        Self(Arc::new(parking_lot::Mutex::new(Some(conn))))
    }

    /// The stream, and the bytes the server sent past its `101` head (the tunnel's first bytes to the
    /// client); `None` once taken.
    pub fn take(&self) -> Option<(UpstreamStream, BytesMut)> {
        self.0.lock().take().map(|conn| conn.into_tunnel())
    }
}

/// An upstream response body: hyper's (HTTP/2) on the left, ours (HTTP/1.1) on the right.
pub type ResponseBody = http_body_util::Either<hyper::body::Incoming, H1Body>;

/// Whether a response's hop-by-hop fields were left out as its head was parsed (ours, unless a
/// `Connection` named other fields).
pub fn hop_by_hop_removed(body: &ResponseBody) -> bool {
    matches!(body, http_body_util::Either::Right(body) if body.hop_by_hop_removed)
}
