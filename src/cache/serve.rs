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
    let length = Some(entry.body.len() as u64);
    let age = age(&entry.freshness, now);
    let (response, whole) = answer_head(entry.status, &entry.headers, length, conditional);
    let mut response = response.map(|()| {
        if whole && !head {
            entry.body.clone()
        } else {
            bytes::Bytes::new()
        }
    });
    mark(&mut response, status, age);
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
    let (mut response, whole) =
        answer_head(shared.status, &shared.headers, shared.length, conditional);
    // Fetched from the server just now.
    mark(&mut response, status, 0);
    (response, whole && !head)
}

/// The head for a stored (or arriving) answer with `status`, `headers` and body `length`: a `304` when
/// the client's validators match, else the answer's own; and whether its body goes with it.
fn answer_head(
    status: StatusCode,
    headers: &HeaderMap,
    length: Option<u64>,
    conditional: &Conditional,
) -> (Response<()>, bool) {
    let mut response = Response::new(());
    if status == StatusCode::OK && conditional.not_modified(headers) {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        copy_not_modified_fields(headers, response.headers_mut());
        return (response, false);
    }
    *response.status_mut() = status;
    *response.headers_mut() = headers.clone();
    let headers = response.headers_mut();
    headers.remove(header::TRANSFER_ENCODING);
    if let Some(length) = length {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    (response, true)
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
