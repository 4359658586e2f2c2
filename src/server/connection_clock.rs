//! A client connection's clock: what the connection is doing (idle, reading a request head, serving
//! requests, blocked writing) and since when, so one timer per connection enforces `client_header_timeout`,
//! `keepalive_timeout` and `send_timeout` without holding a thread; `verdict.rs` judges it.
//!
//! The I/O wrapper ([`super::timed_io::TimedIo`]) notes the first bytes of a request head and blocked
//! writes; the service wrapper ([`super::service::ClockedService`]) notes requests starting and their
//! responses ending.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use crate::clock::now_ms;
use crate::forward::deadline::UpstreamWatch;

/// "Not running" for the timestamps below ([`now_ms`] is never 0).
pub(super) const NEVER: u64 = 0;

/// The state of one client connection, shared by its I/O, its service and its watchdog.
#[derive(Debug)]
pub struct ConnectionClock {
    /// Requests (HTTP/2 streams) between their start and the end of their response.
    pub(super) active: AtomicU32,
    /// Requests started on this connection.
    pub(super) served: AtomicU32,
    /// When the connection last became idle (accepted, or its last response ended).
    pub(super) idle_since: AtomicU64,
    /// When the first byte of the next request head arrived, while idle.
    pub(super) head_since: AtomicU64,
    /// When a write to the client started waiting for the socket.
    pub(super) write_blocked_since: AtomicU64,
    /// Response chunks handed to the connection and not yet sent (the body has not been asked past them).
    pub(super) sending: AtomicU32,
    /// When the last of those chunks was handed out.
    pub(super) last_sent: AtomicU64,
    /// When the answer the request in flight waits for from an upstream is due (HTTP/1: one at a time).
    pub(super) upstream_due: AtomicU64,
    /// The time the watchdog's timer is set to (it looks then, or when poked).
    pub(super) watchdog_at: AtomicU64,
    /// The connection speaks HTTP/2 (its streams, not bytes, say when a request starts).
    pub(super) http2: AtomicBool,
    /// The last request came with a body (which an early answer may have left unread).
    pub(super) body_sent: AtomicBool,
    /// Wakes the drain when the first request arrives.
    pub(super) first: tokio::sync::Notify,
    /// Wakes the watchdog (its requests are used up).
    pub(super) poke: tokio::sync::Notify,
}

/// The watchdog times an HTTP/1 request's upstream attempts: their due time is kept here, and the
/// watchdog is poked only when it is set to look later than that (see [`crate::forward::deadline`]).
impl UpstreamWatch for ConnectionClock {
    fn answer_due(&self, due: u64) {
        self.upstream_due.store(due, Ordering::Relaxed);
        if due < self.watchdog_at.load(Ordering::Relaxed) {
            self.poke();
        }
    }

    fn answer_settled(&self) {
        self.upstream_due.store(NEVER, Ordering::Relaxed);
    }
}

impl Default for ConnectionClock {
    fn default() -> Self {
        Self::new()
    }
}

impl ConnectionClock {
    /// The clock of a connection accepted now.
    pub fn new() -> Self {
        Self {
            active: AtomicU32::new(0),
            served: AtomicU32::new(0),
            idle_since: AtomicU64::new(now_ms()),
            head_since: AtomicU64::new(NEVER),
            write_blocked_since: AtomicU64::new(NEVER),
            sending: AtomicU32::new(0),
            last_sent: AtomicU64::new(NEVER),
            upstream_due: AtomicU64::new(NEVER),
            // Until the watchdog sets its timer, any due time is earlier.
            watchdog_at: AtomicU64::new(u64::MAX),
            http2: AtomicBool::new(false),
            body_sent: AtomicBool::new(false),
            first: tokio::sync::Notify::new(),
            poke: tokio::sync::Notify::new(),
        }
    }

    /// A request starts; returns how many this connection has served, this one included.
    pub fn request_started(&self, http2: bool) -> u32 {
        if http2 {
            self.http2.store(true, Ordering::Relaxed);
        }
        self.active.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(NEVER, Ordering::Relaxed);
        let served = self.served.fetch_add(1, Ordering::AcqRel).saturating_add(1);
        if served == 1 {
            self.first.notify_waiters();
        }
        served
    }

    /// Whether the request that just started has a body.
    pub fn request_body(&self, has_body: bool) {
        self.body_sent.store(has_body, Ordering::Relaxed);
    }

    /// Whether the client may still be sending after an answer: the last request had a body.
    pub(super) fn may_have_unread_input(&self) -> bool {
        self.body_sent.load(Ordering::Relaxed)
    }

    /// A request's response ended (or was dropped).
    pub fn request_ended(&self) {
        self.idle_since.store(now_ms(), Ordering::Relaxed);
        self.active.fetch_sub(1, Ordering::AcqRel);
    }

    /// The watchdog's timer is set to `at` (a [`now_ms`] time).
    pub fn watchdog_set(&self, at: u64) {
        self.watchdog_at.store(at, Ordering::Relaxed);
    }

    /// When the answer the request in flight waits for is due, if it waits for one.
    pub fn upstream_due(&self) -> Option<u64> {
        Some(self.upstream_due.load(Ordering::Relaxed)).filter(|&due| due != NEVER)
    }

    /// Requests started on this connection.
    pub fn served(&self) -> u32 {
        self.served.load(Ordering::Acquire)
    }

    /// Wakes the watchdog to look again now (the wake is kept if it is not waiting).
    pub fn poke(&self) {
        self.poke.notify_one();
    }

    /// Waits for [`Self::poke`].
    pub async fn poked(&self) {
        self.poke.notified().await;
    }

    /// Waits until the connection's first request has started.
    pub async fn first_request(&self) {
        let notified = self.first.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.served() > 0 {
            return;
        }
        notified.await;
    }

    /// A response body handed out a chunk, which now waits for the client (its window, its socket).
    pub fn chunk_out(&self) {
        self.last_sent.store(now_ms(), Ordering::Relaxed);
        self.sending.fetch_add(1, Ordering::AcqRel);
    }

    /// That chunk went out (the body is asked for the next), or its body ended.
    pub fn chunk_done(&self) {
        self.sending.fetch_sub(1, Ordering::AcqRel);
    }

    pub(super) fn bytes_read(&self) {
        if self.active.load(Ordering::Acquire) == 0
            && self.head_since.load(Ordering::Relaxed) == NEVER
        {
            self.head_since.store(now_ms(), Ordering::Relaxed);
        }
    }

    pub(super) fn write_blocked(&self, blocked: bool) {
        let since = self.write_blocked_since.load(Ordering::Relaxed);
        if blocked && since == NEVER {
            self.write_blocked_since.store(now_ms(), Ordering::Relaxed);
        } else if !blocked && since != NEVER {
            self.write_blocked_since.store(NEVER, Ordering::Relaxed);
        }
    }
}
