//! The proxy service as a connection sees it: each request and its response reported to the connection's
//! [`ConnectionClock`], and the last request of a connection (`keepalive_requests`, or keep-alive off)
//! answered with `Connection: close`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tracing::debug;

use super::connection_clock::ConnectionClock;
use crate::forward::body::ProxyBody;
use crate::forward::deadline::UpstreamWatch;
use crate::request::{Deliver, ProxyService};

/// [`ProxyService`] reporting to a connection's clock.
#[derive(Debug, Clone)]
pub struct ClockedService {
    inner: ProxyService,
    clock: Arc<ConnectionClock>,
}

impl ClockedService {
    /// Wraps `inner` for a connection timed by `clock` (under the listener's client limits).
    pub fn new(inner: ProxyService, clock: Arc<ConnectionClock>) -> Self {
        Self { inner, clock }
    }
}

/// Holds a request active on its connection's clock until dropped.
#[derive(Debug)]
struct Active(Arc<ConnectionClock>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

type ClockedFuture = Pin<Box<dyn Future<Output = Result<Response<ClockedBody>, h2::Error>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for ClockedService {
    type Response = Response<ClockedBody>;
    /// Only HTTP/2 streams fail (hyper resets them with the error's reason); HTTP/1 always answers.
    type Error = h2::Error;
    type Future = ClockedFuture;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let http2 = request.version() == http::Version::HTTP_2;
        if http2 && padded_value(request.headers()) {
            // RFC 9113 8.2.1: a field value with leading or trailing whitespace makes the request
            // malformed; the stream is reset and nothing is forwarded.
            debug!("HTTP/2 request with a field value padded with whitespace: stream reset");
            return Box::pin(std::future::ready(Err(h2::Error::from(
                h2::Reason::PROTOCOL_ERROR,
            ))));
        }
        let served = self.clock.request_started(http2);
        if !http2 {
            self.clock.request_body(!request.body().is_end_stream());
        }
        let limits = self.inner.client_limits();
        let last = served >= limits.keepalive_requests || limits.keepalive_timeout.is_zero();
        if last && http2 {
            // The watchdog sends GOAWAY; the streams in flight finish.
            self.clock.poke();
        }
        let delivery = Delivery {
            active: Active(Arc::clone(&self.clock)),
            close: last && !http2,
            http2,
        };
        // One box per request, the wrapping inside it: faster than keeping the large future in hyper's
        // per-connection slot, which is cold memory at many connections. Allocated first and then
        // written, so the future is built in the box rather than on the stack and copied in.
        let boxed = Box::write(Box::new_uninit(), self.inner.respond(request, delivery));
        Box::into_pin(boxed)
    }
}

/// A request's way back to its connection.
#[derive(Debug)]
struct Delivery {
    active: Active,
    close: bool,
    http2: bool,
}

/// Whether a field value starts or ends with a space or a tab (malformed in HTTP/2; HTTP/1's parser trims
/// that whitespace as optional).
fn padded_value(headers: &http::HeaderMap) -> bool {
    headers.values().any(|value| {
        let bytes = value.as_bytes();
        matches!(bytes.first(), Some(b' ' | b'\t')) || matches!(bytes.last(), Some(b' ' | b'\t'))
    })
}

impl Deliver for Delivery {
    type Output = Result<Response<ClockedBody>, h2::Error>;

    fn deliver(self, response: Response<ProxyBody>) -> Self::Output {
        Ok(clocked(response, self.active, self.close))
    }

    /// HTTP/1: one request in flight, so the connection's watchdog times its upstream attempts.
    fn upstream_watch(&self) -> Option<&dyn UpstreamWatch> {
        if self.http2 {
            None
        } else {
            Some(&*self.active.0)
        }
    }
}

/// `response` with its body holding the request active until it ends, and `Connection: close` on the
/// connection's last response.
fn clocked(response: Response<ProxyBody>, active: Active, close: bool) -> Response<ClockedBody> {
    let (mut parts, body) = response.into_parts();
    if close {
        parts
            .headers
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    let body = ClockedBody {
        inner: body,
        active: Some(active),
        holding: false,
    };
    Response::from_parts(parts, body)
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request active on the connection's clock until it ends or is
    /// dropped.
    #[derive(Debug)]
    pub struct ClockedBody {
        #[pin]
        inner: ProxyBody,
        active: Option<Active>,
        // A chunk was handed out and the connection has not asked for the next one yet.
        holding: bool,
    }

    impl PinnedDrop for ClockedBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if *this.holding {
                if let Some(active) = this.active.as_ref() {
                    active.0.chunk_done();
                }
            }
        }
    }
}

impl Body for ClockedBody {
    type Data = Bytes;
    type Error = <ProxyBody as Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        if std::mem::take(this.holding) {
            if let Some(active) = this.active.as_ref() {
                active.0.chunk_done();
            }
        }
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(None | Some(Err(_))) => {
                this.active.take();
            }
            Poll::Ready(Some(Ok(_))) => {
                if let Some(active) = this.active.as_ref() {
                    active.0.chunk_out();
                    *this.holding = true;
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
