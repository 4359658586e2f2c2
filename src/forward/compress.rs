//! The answer body compressed as it streams: the encoder reads the upstream's data frames (after the
//! response buffer) and yields compressed frames; which answers are compressed is
//! [`crate::request::compression`]'s choice.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use async_compression::brotli::EncoderParams as BrotliParams;
use async_compression::tokio::bufread::{BrotliEncoder, GzipEncoder, ZstdEncoder};
use async_compression::zstd::CParameter;
use async_compression::Level;
use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncBufRead, AsyncRead, ReadBuf};

use crate::config::Algorithm;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// brotli's and zstd's window, as a power of two: 512 KiB, ngx_brotli's default `brotli_window`. The
/// window is memory each answer in flight holds; zstd level 3 would take 2 MiB, brotli 4 MiB.
const WINDOW_LOG: u32 = 19;

/// Room made for each compressed frame; an encoder fills it before yielding unless its input waits.
const FRAME_SIZE: usize = 16 * 1024;

/// A body compressed as it is read: the encoder pulls the inner body's data frames as input and each
/// poll yields what it produced (whole frames of up to [`FRAME_SIZE`], or less when the input waits:
/// the encoder flushes then, so a slow stream is not held back). Trailers follow the compressed data.
#[derive(Debug)]
pub struct Compressed<B> {
    encoder: Encoder<B>,
    out: BytesMut,
    /// The encoder has ended (or failed): only the trailers are left.
    finished: bool,
    trailers: Option<HeaderMap>,
}

#[derive(Debug)]
enum Encoder<B> {
    Gzip(GzipEncoder<FrameReader<B>>),
    // Boxed: brotli's state is some 5 KB inline, the others' a few hundred bytes.
    Brotli(Box<BrotliEncoder<FrameReader<B>>>),
    Zstd(ZstdEncoder<FrameReader<B>>),
}

impl<B> Compressed<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    /// Compresses `body` with `algorithm` at `level` (checked against [`Algorithm::levels`] by the
    /// config; the encoders clamp anything else).
    pub fn new(body: B, algorithm: Algorithm, level: i32) -> Self {
        let reader = FrameReader {
            body,
            chunk: Bytes::new(),
            trailers: None,
            ended: false,
        };
        let encoder = match algorithm {
            Algorithm::Gzip => {
                Encoder::Gzip(GzipEncoder::with_quality(reader, Level::Precise(level)))
            }
            Algorithm::Brotli => Encoder::Brotli(Box::new(BrotliEncoder::with_params(
                reader,
                BrotliParams::default()
                    .quality(Level::Precise(level))
                    .window_size(WINDOW_LOG as i32),
            ))),
            Algorithm::Zstd => Encoder::Zstd(ZstdEncoder::with_quality_and_params(
                reader,
                Level::Precise(level),
                &[CParameter::window_log(WINDOW_LOG)],
            )),
        };
        Self {
            encoder,
            out: BytesMut::new(),
            finished: false,
            trailers: None,
        }
    }

    fn reader(&mut self) -> &mut FrameReader<B> {
        match &mut self.encoder {
            Encoder::Gzip(e) => e.get_mut(),
            Encoder::Brotli(e) => e.get_mut(),
            Encoder::Zstd(e) => e.get_mut(),
        }
    }

    fn poll_encoded(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        // After a frame is split off the buffer keeps no room: each frame gets its own.
        self.out.reserve(FRAME_SIZE);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.encoder), cx, &mut self.out)
    }
}

impl<B> Body for Compressed<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
        }
        match ready!(this.poll_encoded(cx)) {
            Ok(0) => {
                this.finished = true;
                let trailers = this.reader().trailers.take();
                Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))))
            }
            Ok(_) => Poll::Ready(Some(Ok(Frame::data(this.out.split().freeze())))),
            Err(error) => {
                this.finished = true;
                Poll::Ready(Some(Err(inner_error(error))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// The inner body's own error (an upstream read timeout, a reset) as it was, out of its `io::Error`.
fn inner_error(error: io::Error) -> BoxError {
    let kind = error.kind();
    error
        .into_inner()
        .unwrap_or_else(|| Box::new(io::Error::from(kind)))
}

impl<B> AsyncRead for Encoder<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Encoder::Gzip(e) => Pin::new(e).poll_read(cx, buf),
            Encoder::Brotli(e) => Pin::new(e.as_mut()).poll_read(cx, buf),
            Encoder::Zstd(e) => Pin::new(e).poll_read(cx, buf),
        }
    }
}

/// A body's data frames read as bytes, the input of an encoder; trailers are kept aside for the end.
#[derive(Debug)]
struct FrameReader<B> {
    body: B,
    /// What is left of the last data frame.
    chunk: Bytes,
    trailers: Option<HeaderMap>,
    ended: bool,
}

impl<B> AsyncBufRead for FrameReader<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        while this.chunk.is_empty() && !this.ended {
            match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.chunk = data,
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            this.trailers = Some(trailers);
                        }
                    }
                },
                Some(Err(error)) => return Poll::Ready(Err(io::Error::other(error))),
                None => this.ended = true,
            }
        }
        Poll::Ready(Ok(&this.chunk))
    }

    fn consume(self: Pin<&mut Self>, amount: usize) {
        self.get_mut().chunk.advance(amount);
    }
}

impl<B> AsyncRead for FrameReader<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let data = ready!(self.as_mut().poll_fill_buf(cx))?;
        let n = data.len().min(buf.remaining());
        buf.put_slice(&data[..n]);
        self.consume(n);
        Poll::Ready(Ok(()))
    }
}
