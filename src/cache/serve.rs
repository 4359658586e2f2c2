//! Answers made from entries: the stored answer with `Age` and `X-Cache-Status`, or a `304`.

use std::time::SystemTime;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use super::policy::{age, Conditional};
use super::zone::Entry;
use super::{CacheStatus, X_CACHE_STATUS};

/// Fields a `304` carries from the entry (RFC 9110 15.4.5).
const NOT_MODIFIED_FIELDS: [header::HeaderName; 7] = [
    header::CACHE_CONTROL,
    header::CONTENT_LOCATION,
    header::DATE,
    header::ETAG,
    header::EXPIRES,
    header::LAST_MODIFIED,
    header::VARY,
];

/// The answer for a request (`head`: a HEAD request) from `entry`: a `304` when the client's validators
/// match, else the stored answer; both with `X-Cache-Status` and `Age`.
pub fn entry_answer(
    entry: &Entry,
    status: CacheStatus,
    head: bool,
    conditional: &Conditional,
    now: SystemTime,
) -> Response<bytes::Bytes> {
    if entry.status == StatusCode::OK && conditional.not_modified(&entry.headers) {
        return not_modified_answer(entry, status, now);
    }
    let body = if head {
        bytes::Bytes::new()
    } else {
        entry.body.clone()
    };
    let mut response = Response::new(body);
    *response.status_mut() = entry.status;
    *response.headers_mut() = entry.headers.clone();
    let headers = response.headers_mut();
    headers.remove(header::TRANSFER_ENCODING);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(entry.body.len()));
    mark(&mut response, entry, status, now);
    response
}

/// A `304 Not Modified` for `entry`.
pub fn not_modified_answer(
    entry: &Entry,
    status: CacheStatus,
    now: SystemTime,
) -> Response<bytes::Bytes> {
    let mut response = Response::new(bytes::Bytes::new());
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    for name in &NOT_MODIFIED_FIELDS {
        for value in entry.headers.get_all(name) {
            response.headers_mut().append(name.clone(), value.clone());
        }
    }
    mark(&mut response, entry, status, now);
    response
}

fn mark(
    response: &mut Response<bytes::Bytes>,
    entry: &Entry,
    status: CacheStatus,
    now: SystemTime,
) {
    let headers = response.headers_mut();
    headers.insert(X_CACHE_STATUS.clone(), status.header_value());
    headers.insert(header::AGE, HeaderValue::from(age(&entry.freshness, now)));
}
