//! Filling an entry from an answer as it streams to the client: the body is collected beside the client's
//! copy and stored when it ends whole; past `max_entry_size` collecting stops and the answer passes through.
//! Under `cache_lock`, the body is collected where the requests waiting on its key follow it; an answer
//! that outgrows `max_entry_size` is then still relayed to them (not stored), up to the zone's `max_size`.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName};
use http::StatusCode;

use super::policy::Freshness;
use super::share::SharedHead;
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
    /// Body bytes collected so far.
    received: usize,
    limit: u64,
    /// The answer's `Content-Length`: the body is whole once that much has arrived (the client's
    /// connection may stop reading there, before the body reports its end).
    length: Option<u64>,
    /// Held until the entry is stored (or the fill is given up), so that waiters find it.
    lock: Option<FillLock>,
    /// The body is collected in the lock's progress, which waiters follow, rather than in `body`.
    shared: bool,
    /// The answer is to be stored (false once it outgrew `max_entry_size`).
    storing: bool,
    /// How far a shared answer that is no longer stored is still relayed to its followers.
    relay_limit: u64,
    /// The zone's purge count when the fill began.
    purges: u64,
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
    /// Requests waiting on this key may follow the answer as it arrives (`cache_lock` is on).
    pub share: bool,
}

impl Fill {
    /// A fill for `head`, or `None` when the answer's length is already over `max_entry_size`.
    pub fn start(head: FillHead) -> Option<Self> {
        let limit = head.zone.max_entry_size();
        let relay_limit = head.zone.max_size();
        let purges = head.zone.purges();
        if head.length.is_some_and(|length| length > limit) {
            return None;
        }
        let shared = match (&head.lock, head.share) {
            (Some(lock), true) => {
                let shared = SharedHead {
                    status: head.status,
                    headers: head.headers.clone(),
                    length: head.length,
                    allows_authorized: head.freshness.allows_authorized,
                    variant: super::key::variant(&head.primary, &head.vary, &head.request_headers)
                        .into_owned(),
                    vary: head.vary.clone(),
                };
                lock.progress()
                    .send_modify(|progress| progress.head = Some(Arc::new(shared)));
                true
            }
            _ => false,
        };
        let capacity = if shared {
            0
        } else {
            head.length.unwrap_or(0).min(limit)
        };
        Some(Self {
            body: BytesMut::with_capacity(usize::try_from(capacity).unwrap_or(0)),
            received: 0,
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
            relay_limit,
            purges,
            lock: head.lock,
            shared,
            storing: true,
        })
    }

    /// Adds a piece of the body; `false` once there is nothing more to do with the rest (drop the fill):
    /// the body is over `max_entry_size` and no request follows it (or it is over the relay's limit).
    pub fn push(&mut self, data: &Bytes) -> bool {
        let total = (self.received + data.len()) as u64;
        if self.storing && total > self.limit {
            self.storing = false;
            self.body = BytesMut::new();
        }
        let relaying = self.shared && self.has_followers() && total <= self.relay_limit;
        if !self.storing && !relaying {
            return false;
        }
        self.received += data.len();
        match (&self.lock, self.shared) {
            (Some(lock), true) => lock
                .progress()
                .send_modify(|progress| progress.pieces.push(data.clone())),
            _ => self.body.extend_from_slice(data),
        }
        true
    }

    /// Whether a request follows this fill (the zone's map holds one receiver while the lock is held).
    fn has_followers(&self) -> bool {
        self.lock
            .as_ref()
            .is_some_and(|lock| lock.progress().receiver_count() > 1)
    }

    /// Whether the whole body announced by `Content-Length` has arrived.
    pub fn is_whole(&self) -> bool {
        self.length == Some(self.received as u64)
    }

    /// The body ended whole: the entry is stored unless it outgrew `max_entry_size`, its followers get
    /// their end, and the lock is released (with the drop).
    pub fn complete(mut self) {
        if !self.storing {
            if let Some(lock) = &self.lock {
                lock.progress()
                    .send_modify(|progress| progress.whole = true);
            }
            return;
        }
        let body = match (&self.lock, self.shared) {
            (Some(lock), true) => {
                let mut body = BytesMut::with_capacity(self.received);
                for piece in &lock.progress().borrow().pieces {
                    body.extend_from_slice(piece);
                }
                body.freeze()
            }
            _ => std::mem::take(&mut self.body).freeze(),
        };
        let entry = Entry::new(
            self.status,
            self.headers,
            body,
            self.freshness,
            self.primary,
            self.path,
        );
        self.zone
            .insert_unless_purged(entry, self.vary, &self.request_headers, Some(self.purges));
        if let Some(lock) = &self.lock {
            lock.progress()
                .send_modify(|progress| progress.whole = true);
        }
    }
}
