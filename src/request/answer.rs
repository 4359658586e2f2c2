//! The answers the proxy gives itself (404, 413, 502, 503, ...): a short plain-text body naming the
//! reason, never an internal detail, with `Retry-After` where waiting helps.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::Response;
use http_body_util::{Either, Full};

use crate::forward::body::ProxyBody;
use crate::message::error::ProxyError;

/// Marks a response the proxy made itself, for the metrics.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LocalAnswer;

/// A short plain-text answer from the proxy itself.
pub(crate) fn local_answer(error: &ProxyError) -> Response<ProxyBody> {
    let status = error.status();
    let text = format!(
        "{} {}: {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        public_reason(error)
    );
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(text))));
    *response.status_mut() = status;
    response.extensions_mut().insert(LocalAnswer);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    let retry_after = match error {
        ProxyError::NoHealthyServer { retry_after } => Some(*retry_after),
        ProxyError::Overloaded { .. } => Some(1),
        _ => None,
    };
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    if matches!(
        error,
        ProxyError::BodyTooLarge | ProxyError::BadRequestBody | ProxyError::BodyTimeout
    ) {
        // The rest of the body is unread: the connection closes (after lingering), and says so, so
        // that no client sends its next request on it (nginx does the same). HTTP/2 drops the field.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// What the client is told; internal details (addresses, OS errors) stay in the log.
fn public_reason(error: &ProxyError) -> &'static str {
    match error {
        ProxyError::NoRoute => "no route for this host and path",
        ProxyError::UnsupportedTransferEncoding => "only Transfer-Encoding: chunked is supported",
        ProxyError::BodyTooLarge => "request body larger than max_body_size",
        ProxyError::BadRequestBody => "malformed or incomplete request body",
        ProxyError::BodyTimeout => "the request body did not arrive in time",
        ProxyError::UriTooLong => "request target too long",
        ProxyError::BadHost => "the request needs exactly one valid Host header",
        ProxyError::LookalikeFramingHeader => {
            "a header name reads as Content-Length or Transfer-Encoding"
        }
        ProxyError::NoServer => "no upstream server available",
        ProxyError::Connect(_) => "cannot connect to the upstream server",
        ProxyError::Upstream(_) => "the upstream server failed to answer",
        ProxyError::Timeout => "the upstream server did not answer in time",
        ProxyError::NoHealthyServer { .. } => "no healthy upstream server",
        ProxyError::Overloaded { queued: false } => {
            "every upstream server is busy and the queue is full"
        }
        ProxyError::Overloaded { queued: true } => {
            "every upstream server stayed busy for queue_timeout"
        }
    }
}

/// A route's `return`: its status, `Location` for a redirect, its body (as `text/plain` when there is one).
pub(crate) fn route_answer(answer: &crate::config::ReturnConfig) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::new(answer.body.clone())));
    *response.status_mut() = answer.status;
    response.extensions_mut().insert(LocalAnswer);
    if let Some(location) = &answer.location {
        response
            .headers_mut()
            .insert(header::LOCATION, location.clone());
    }
    if !answer.body.is_empty() {
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    response
}
