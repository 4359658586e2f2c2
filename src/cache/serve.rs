//! Answers made from entries: the stored answer with `Age` and `X-Cache-Status`, or a `304`.

use std::time::SystemTime;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};

use super::policy::{age, Conditional};
use super::share::SharedHead;
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
    mark(&mut response, status, age(&entry.freshness, now));
    response
}

/// The head of the answer for a request following a fill (`head`: a HEAD request): a `304` when the
/// client's validators match, else the fill's status and headers; and whether the body follows.
pub fn follow_answer(
    shared: &SharedHead,
    status: CacheStatus,
    head: bool,
    conditional: &Conditional,
) -> (Response<()>, bool) {
    if shared.status == StatusCode::OK && conditional.not_modified(&shared.headers) {
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        copy_not_modified_fields(&shared.headers, response.headers_mut());
        mark(&mut response, status, 0);
        return (response, false);
    }
    let mut response = Response::new(());
    *response.status_mut() = shared.status;
    *response.headers_mut() = shared.headers.clone();
    let headers = response.headers_mut();
    headers.remove(header::TRANSFER_ENCODING);
    if let Some(length) = shared.length {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    // Fetched from the server just now.
    mark(&mut response, status, 0);
    (response, !head)
}

/// A `304 Not Modified` for `entry`.
pub fn not_modified_answer(
    entry: &Entry,
    status: CacheStatus,
    now: SystemTime,
) -> Response<bytes::Bytes> {
    let mut response = Response::new(bytes::Bytes::new());
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    copy_not_modified_fields(&entry.headers, response.headers_mut());
    mark(&mut response, status, age(&entry.freshness, now));
    response
}

fn copy_not_modified_fields(from: &HeaderMap, to: &mut HeaderMap) {
    for name in &NOT_MODIFIED_FIELDS {
        for value in from.get_all(name) {
            to.append(name.clone(), value.clone());
        }
    }
}

fn mark<B>(response: &mut Response<B>, status: CacheStatus, age: u64) {
    let headers = response.headers_mut();
    headers.insert(X_CACHE_STATUS.clone(), status.header_value());
    headers.insert(header::AGE, HeaderValue::from(age));
}
