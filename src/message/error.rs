//! What went wrong with a request, who is to blame, and what status to answer.

use http::StatusCode;

/// A request the proxy answers itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A `Transfer-Encoding` other than a lone `chunked` (nginx answers 501 too).
    #[error("unsupported transfer-encoding")]
    UnsupportedTransferEncoding,
    /// A header named like `Content-Length` or `Transfer-Encoding` with `_` or extra `-` (a desync vector).
    #[error("a header name that reads as Content-Length or Transfer-Encoding")]
    LookalikeFramingHeader,
    /// No route matches host and path.
    #[error("no route for this host and path")]
    NoRoute,
    /// The request body is larger than `max_body_size`.
    #[error("request body larger than max_body_size")]
    BodyTooLarge,
    /// The request body was malformed (a bad chunk size, ...) or the client stopped sending it.
    #[error("malformed or incomplete request body")]
    BadRequestBody,
    /// The client sent nothing of its request body for `client_body_timeout` (nginx answers 408 too).
    #[error("client_body_timeout passed while reading the request body")]
    BodyTimeout,
    /// The request target is longer than the listener's `max_uri_size`.
    #[error("request target longer than max_uri_size")]
    UriTooLong,
    /// An HTTP/1.1 request without exactly one valid `Host` (RFC 9112 3.2), or a request with no host
    /// at all where one is needed (an HTTP/1.0 request to redirect).
    #[error("the request needs exactly one valid Host header")]
    BadHost,
    /// Every server of the pool (and its backups) is down or already tried.
    #[error("no upstream server available")]
    NoServer,
    /// Every server is unhealthy and the pool fails closed.
    #[error("no healthy upstream server")]
    NoHealthyServer {
        /// Seconds the client should wait before trying again.
        retry_after: u64,
    },
    /// Every server left is at its `max_conns`, and the pool's queue is full (`queued: false`) or the
    /// request waited in it for `queue_timeout` (`queued: true`).
    #[error("every upstream server is at max_conns ({})", if *queued { "queue_timeout passed" } else { "the queue is full" })]
    Overloaded {
        /// Whether the request waited in the queue first.
        queued: bool,
    },
    /// The TCP connection to the server failed.
    #[error("cannot connect to upstream: {0}")]
    Connect(String),
    /// The server reset, closed early or sent a malformed response.
    #[error("upstream error: {0}")]
    Upstream(String),
    /// The server did not answer within the timeout.
    #[error("upstream timed out")]
    Timeout,
}

impl ProxyError {
    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::BadRequestBody
            | ProxyError::BadHost
            | ProxyError::LookalikeFramingHeader => StatusCode::BAD_REQUEST,
            ProxyError::UnsupportedTransferEncoding => StatusCode::NOT_IMPLEMENTED,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::UriTooLong => StatusCode::URI_TOO_LONG,
            ProxyError::NoServer | ProxyError::Connect(_) | ProxyError::Upstream(_) => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::NoHealthyServer { .. } | ProxyError::Overloaded { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// Describes a client error from hyper-util's pooled client by its root cause.
    pub fn from_client(error: &hyper_util::client::legacy::Error) -> ProxyError {
        let cause = root_cause(error);
        if error.is_connect() {
            ProxyError::Connect(cause)
        } else {
            ProxyError::Upstream(cause)
        }
    }
}

/// The innermost cause of `error` (an OS error rather than hyper's wrappers around it), as text.
pub fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut innermost = error;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    innermost.to_string()
}
