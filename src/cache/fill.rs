//! Filling an entry from an answer as it streams to the client: the body is collected beside the client's
//! copy and stored when it ends whole; past `max_entry_size` collecting stops and the answer passes through.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName};
use http::StatusCode;

use super::policy::Freshness;
use super::zone::{Entry, FillLock, Zone};

/// An entry being filled.
#[derive(Debug)]
pub struct Fill {
    zone: Arc<Zone>,
    status: StatusCode,
    headers: HeaderMap,
    freshness: Freshness,
    primary: String,
    path: String,
    vary: Vec<HeaderName>,
    request_headers: HeaderMap,
    body: BytesMut,
    limit: u64,
    /// The answer's `Content-Length`: the body is whole once that much has arrived (the client's
    /// connection may stop reading there, before the body reports its end).
    length: Option<u64>,
    /// Held until the entry is stored (or the fill is given up), so that waiters find it.
    _lock: Option<FillLock>,
}

/// What a fill is made from: where it goes and the answer's head.
#[derive(Debug)]
pub struct FillHead {
    /// The zone to store in.
    pub zone: Arc<Zone>,
    /// The answer's status.
    pub status: StatusCode,
    /// The answer's headers as the client gets them from the upstream.
    pub headers: HeaderMap,
    /// How long it stays fresh.
    pub freshness: Freshness,
    /// Its primary key and request path.
    pub primary: String,
    /// The request path.
    pub path: String,
    /// The header names its `Vary` lists.
    pub vary: Vec<HeaderName>,
    /// The request's headers (to pick the variant).
    pub request_headers: HeaderMap,
    /// The fill lock, when this request holds it.
    pub lock: Option<FillLock>,
    /// The answer's `Content-Length`, when known.
    pub length: Option<u64>,
}

impl Fill {
    /// A fill for `head`, or `None` when the answer's length is already over `max_entry_size`.
    pub fn start(head: FillHead) -> Option<Self> {
        let limit = head.zone.max_entry_size();
        if head.length.is_some_and(|length| length > limit) {
            return None;
        }
        let capacity = head.length.unwrap_or(0).min(limit);
        Some(Self {
            body: BytesMut::with_capacity(usize::try_from(capacity).unwrap_or(0)),
            zone: head.zone,
            status: head.status,
            headers: head.headers,
            freshness: head.freshness,
            primary: head.primary,
            path: head.path,
            vary: head.vary,
            request_headers: head.request_headers,
            limit,
            length: head.length,
            _lock: head.lock,
        })
    }

    /// Adds a piece of the body; `false` once the body is over `max_entry_size` (drop the fill).
    pub fn push(&mut self, data: &Bytes) -> bool {
        if (self.body.len() + data.len()) as u64 > self.limit {
            return false;
        }
        self.body.extend_from_slice(data);
        true
    }

    /// Whether the whole body announced by `Content-Length` has arrived.
    pub fn is_whole(&self) -> bool {
        self.length == Some(self.body.len() as u64)
    }

    /// The body ended whole: the entry is stored (then the lock is released, with the drop).
    pub fn complete(self) {
        let entry = Entry::new(
            self.status,
            self.headers,
            self.body.freeze(),
            self.freshness,
            self.primary,
            self.path,
        );
        self.zone.insert(entry, self.vary, &self.request_headers);
    }
}
