//! Serves one client connection with hyper: HTTP/2 when it opens with the HTTP/2 connection preface,
//! HTTP/1.1 (with upgrades) otherwise.
//!
//! This is what hyper-util's `auto` builder does, kept small: its connection future holds the HTTP/2
//! state inline, so every HTTP/1 connection carried an HTTP/2 connection's size (and `auto` borrows its
//! builder, which kept the serving task's arguments alive twice). Here HTTP/1 is served inline and
//! HTTP/2 from a box, so an idle HTTP/1 connection's task holds only what HTTP/1 needs.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::connection::Shared;
use super::service::ClockedService;
use super::timed_io::{TimedIo, PREFACE_LEN};
use crate::config::HttpLimits;

/// The HTTP/2 client connection preface (RFC 9113 section 3.4).
const H2_PREFACE: &[u8; PREFACE_LEN] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The error a connection ends with.
pub type ServeError = Box<dyn StdError + Send + Sync>;

/// HTTP/1 and HTTP/2 settings for a listener's connections.
#[derive(Clone, Debug)]
pub struct Protocols {
    http1: http1::Builder,
    /// `http1` with idle buffers kept ([`KEEP_IDLE_BUFFERS_UP_TO`]).
    http1_keeping: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

/// Streams a client may reset before they are accepted, at once (hyper's default).
const MAX_PENDING_RESETS: usize = 20;
/// Streams the proxy may have to reset for a client's protocol errors before it sends GOAWAY.
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// Client connections open in the process, over every listener and runtime.
static OPEN_IN_PROCESS: AtomicUsize = AtomicUsize::new(0);

/// While at most this many client connections are open, a new HTTP/1 connection keeps hyper's read and
/// write buffers and header map while idle once it has carried more than one request, instead of
/// allocating them again per request. Connections that made one request, and connections made while more
/// are open, hold none while idle (the patched hyper's default: `vendor/README.md`). Measured: 2,000 idle
/// connections that made two requests each hold 5.5 KiB of RSS apiece, 1.9 more than after one request;
/// so at most about 8 MB more for 4,096 keep-alive clients in steady use.
const KEEP_IDLE_BUFFERS_UP_TO: usize = 4096;

/// A client connection was accepted (counted for [`KEEP_IDLE_BUFFERS_UP_TO`]).
pub(super) fn connection_opened() {
    OPEN_IN_PROCESS.fetch_add(1, Ordering::AcqRel);
}

/// A client connection ended.
pub(super) fn connection_closed() {
    OPEN_IN_PROCESS.fetch_sub(1, Ordering::AcqRel);
}

impl Protocols {
    /// The settings for `limits`.
    pub fn new(limits: HttpLimits) -> Self {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            // The connection's watchdog times request heads from their first byte (hyper's own timer
            // would also count the idle time before it, which is keepalive_timeout's).
            .header_read_timeout(None)
            .keep_alive(true)
            .max_buf_size(limits.http1_max_header_size)
            .header_room(crate::request::ADDED_HEADERS);
        let mut http1_keeping = http1.clone();
        http1_keeping.keep_idle_buffers(true);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.http2_max_concurrent_streams)
            .max_header_list_size(limits.http2_max_header_size)
            // Rapid reset (CVE-2023-44487): a client that resets streams faster than they are served
            // gets a GOAWAY once this many resets are pending.
            .max_pending_accept_reset_streams(Some(MAX_PENDING_RESETS))
            .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS));
        Self {
            http1,
            http1_keeping,
            http2,
        }
    }
}

type Io<I> = TokioIo<TimedIo<I>>;

pin_project_lite::pin_project! {
    /// One connection being served: first reading far enough to tell HTTP/2 from HTTP/1, then either.
    #[project = StateProj]
    enum State<I> {
        Detecting {
            io: Option<TimedIo<I>>,
            service: Option<ClockedService>,
            shared: Arc<Shared>,
            // TLS chose "h2" by ALPN: only HTTP/2 may be spoken.
            alpn_h2: bool,
        },
        Refusing {
            io: TimedIo<I>,
            written: usize,
        },
        Http1 {
            #[pin]
            connection: http1::UpgradeableConnection<Io<I>, ClockedService>,
        },
        Http2 {
            connection: Pin<Box<http2::Connection<Io<I>, ClockedService, TokioExecutor>>>,
        },
        Closed,
    }
}

pin_project_lite::pin_project! {
    /// The future serving one client connection until it closes; see the module documentation.
    pub struct Serving<I> {
        #[pin]
        state: State<I>,
    }
}

impl<I> Serving<I>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Serves `io` with `service` under the listener's protocol settings; `alpn_h2`: TLS chose `h2` by
    /// ALPN, so anything but the HTTP/2 preface is a connection error (RFC 9113 3.4, RFC 7301 3.2).
    pub fn new(
        io: TimedIo<I>,
        service: ClockedService,
        shared: Arc<Shared>,
        alpn_h2: bool,
    ) -> Self {
        Self {
            state: State::Detecting {
                io: Some(io),
                service: Some(service),
                shared,
                alpn_h2,
            },
        }
    }

    /// Finishes the requests in flight and closes (hyper's graceful shutdown); a connection that has not
    /// sent enough to tell its protocol closes at once.
    pub fn graceful_shutdown(self: Pin<&mut Self>) {
        let mut state = self.project().state;
        match state.as_mut().project() {
            StateProj::Detecting { .. } | StateProj::Refusing { .. } => state.set(State::Closed),
            StateProj::Http1 { connection } => connection.graceful_shutdown(),
            StateProj::Http2 { connection } => connection.as_mut().graceful_shutdown(),
            StateProj::Closed => {}
        }
    }
}

impl<I> Future for Serving<I>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Output = Result<(), ServeError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Detecting {
                    io,
                    service,
                    shared,
                    alpn_h2,
                } => {
                    let Some(timed) = io.as_mut() else {
                        return Poll::Ready(Ok(()));
                    };
                    let http2 = ready!(read_preface(timed, cx))?;
                    let (Some(io), Some(service)) = (io.take(), service.take()) else {
                        return Poll::Ready(Ok(()));
                    };
                    if *alpn_h2 && !http2 {
                        // nginx answers the same: its SETTINGS, then GOAWAY with PROTOCOL_ERROR.
                        state.set(State::Refusing { io, written: 0 });
                        continue;
                    }
                    let io = TokioIo::new(io);
                    if http2 {
                        let connection = shared.protocols.http2.serve_connection(io, service);
                        state.set(State::Http2 {
                            connection: Box::pin(connection),
                        });
                    } else {
                        let builder =
                            if OPEN_IN_PROCESS.load(Ordering::Relaxed) <= KEEP_IDLE_BUFFERS_UP_TO {
                                &shared.protocols.http1_keeping
                            } else {
                                &shared.protocols.http1
                            };
                        let connection = builder.serve_connection(io, service);
                        state.set(State::Http1 {
                            connection: connection.with_upgrades(),
                        });
                    }
                }
                StateProj::Http1 { connection } => {
                    return connection.poll(cx).map_err(Into::into);
                }
                StateProj::Http2 { connection } => {
                    return connection.as_mut().poll(cx).map_err(Into::into);
                }
                StateProj::Refusing { io, written } => {
                    while *written < REFUSAL.len() {
                        let n = ready!(Pin::new(&mut *io).poll_write(cx, &REFUSAL[*written..]))?;
                        if n == 0 {
                            return Poll::Ready(Ok(()));
                        }
                        *written += n;
                    }
                    ready!(Pin::new(&mut *io).poll_flush(cx))?;
                    let _ = ready!(Pin::new(&mut *io).poll_shutdown(cx));
                    return Poll::Ready(Err(
                        "ALPN chose h2 but the client did not send the HTTP/2 preface".into(),
                    ));
                }
                StateProj::Closed => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// What a connection that chose `h2` by ALPN and then spoke something else gets: an empty SETTINGS frame
/// (the server preface) and GOAWAY with last stream 0 and PROTOCOL_ERROR (RFC 9113 6.5, 6.8).
const REFUSAL: [u8; 26] = [
    0, 0, 0, 0x4, 0, 0, 0, 0, 0, // SETTINGS, no parameters
    0, 0, 8, 0x7, 0, 0, 0, 0, 0, // GOAWAY, 8 bytes
    0, 0, 0, 0, // last stream id 0
    0, 0, 0, 1, // PROTOCOL_ERROR
];

/// Reads until the bytes so far either are the whole HTTP/2 preface (true) or stop matching it (false);
/// what was read is replayed to the protocol chosen.
fn read_preface<I: AsyncRead + Unpin>(
    io: &mut TimedIo<I>,
    cx: &mut Context<'_>,
) -> Poll<io::Result<bool>> {
    loop {
        let seen = io.preface();
        if seen != &H2_PREFACE[..seen.len()] {
            return Poll::Ready(Ok(false));
        }
        if seen.len() == PREFACE_LEN {
            return Poll::Ready(Ok(true));
        }
        if ready!(io.read_preface(cx))? == 0 {
            // The client closed before saying anything that could be HTTP/2: let HTTP/1 see the end.
            return Poll::Ready(Ok(false));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::connection_clock::ConnectionClock;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A real socket that counts the reads made on it.
    struct CountedReads {
        inner: TcpStream,
        reads: usize,
    }

    impl AsyncRead for CountedReads {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.reads += 1;
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    /// A loopback connection that has received `sent` (and, with `close`, its end); returns the
    /// server's side, wrapped as a serving connection wraps it.
    async fn received(sent: &[u8], close: bool) -> (TimedIo<CountedReads>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let mut client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        client.write_all(sent).await.expect("write");
        if close {
            client.shutdown().await.expect("shutdown");
        }
        let inner = CountedReads {
            inner: server,
            reads: 0,
        };
        (
            TimedIo::new(inner, Arc::new(ConnectionClock::new())),
            client,
        )
    }

    /// Sends `sent` over a real loopback connection (then closes it); returns what the other end decided
    /// and everything it then read, `chunk` bytes at a time.
    async fn detect_in_chunks(sent: &[u8], chunk: usize) -> (bool, Vec<u8>) {
        let (mut io, _client) = received(sent, true).await;
        let http2 = std::future::poll_fn(|cx| read_preface(&mut io, cx))
            .await
            .expect("read");
        let mut read = Vec::new();
        let mut room = vec![0; chunk];
        loop {
            let n = io.read(&mut room).await.expect("read again");
            if n == 0 {
                break;
            }
            read.extend_from_slice(&room[..n]);
        }
        (http2, read)
    }

    #[tokio::test]
    async fn a_first_request_head_that_arrived_whole_is_read_from_the_socket_once() {
        let head = b"GET /a/longer/path HTTP/1.1\r\nHost: example.test\r\nAccept: */*\r\n\r\n";
        let (mut io, _client) = received(head, false).await;
        let http2 = std::future::poll_fn(|cx| read_preface(&mut io, cx))
            .await
            .expect("read");
        assert!(!http2);
        let mut room = [0; 8192];
        let n = io.read(&mut room).await.expect("read again");
        assert_eq!(&room[..n], head);
        // The preface check's read took the whole head; hyper's first read is answered from it (one
        // read for the preface and another for the rest cost a system call per new connection).
        assert_eq!(io.get_ref().map(|io| io.reads), Some(1));
    }

    #[tokio::test]
    async fn what_the_first_read_kept_is_replayed_into_small_buffers_and_past_its_room() {
        let mut long = b"GET / HTTP/1.1\r\nX-Long: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', 20_000));
        long.extend_from_slice(b"\r\n\r\n");
        let mut h2 = H2_PREFACE.to_vec();
        h2.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        for chunk in [1, 7, 24, 25, 100, 8192, 30_000] {
            for (sent, want) in [(&long, false), (&h2, true)] {
                let (http2, read) = detect_in_chunks(sent, chunk).await;
                assert_eq!(http2, want, "chunks of {chunk}");
                assert_eq!(read.len(), sent.len(), "chunks of {chunk}");
                assert!(read == *sent, "chunks of {chunk}: bytes differ");
            }
        }
    }

    #[tokio::test]
    async fn the_preface_picks_http2_and_anything_else_http1_with_every_byte_read_again() {
        let mut h2 = H2_PREFACE.to_vec();
        h2.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        let cases: [(&[u8], bool); 5] = [
            (&h2, true),
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false),
            // Starts like the preface, then is not it.
            (b"PRI * HTTP/1.1\r\nHost: x\r\n\r\n", false),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r", false),
            (b"", false),
        ];
        for (sent, want) in cases {
            let (http2, read) = detect_in_chunks(sent, 8192).await;
            assert_eq!(http2, want, "{:?}", String::from_utf8_lossy(sent));
            assert_eq!(read, sent, "{:?}", String::from_utf8_lossy(sent));
        }
    }
}
