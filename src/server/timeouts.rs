//! A client connection's clock: what the connection is doing (idle, reading a request head, serving
//! requests, blocked writing) and since when, so one timer per connection enforces `client_header_timeout`,
//! `keepalive_timeout` and `send_timeout` without holding a thread.
//!
//! The I/O wrapper ([`super::timed_io::TimedIo`]) notes the first bytes of a request head and blocked
//! writes; the service wrapper ([`super::service::ClockedService`]) notes requests starting and their
//! responses ending.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::now_ms;
use crate::config::ClientLimits;
use crate::forward::deadline::UpstreamWatch;

/// "Not running" for the timestamps below ([`now_ms`] is never 0).
const NEVER: u64 = 0;

/// The state of one client connection, shared by its I/O, its service and its watchdog.
#[derive(Debug)]
pub struct ConnectionClock {
    /// Requests (HTTP/2 streams) between their start and the end of their response.
    active: AtomicU32,
    /// Requests started on this connection.
    served: AtomicU32,
    /// When the connection last became idle (accepted, or its last response ended).
    idle_since: AtomicU64,
    /// When the first byte of the next request head arrived, while idle.
    head_since: AtomicU64,
    /// When a write to the client started waiting for the socket.
    write_blocked_since: AtomicU64,
    /// Response chunks handed to the connection and not yet sent (the body has not been asked past them).
    sending: AtomicU32,
    /// When the last of those chunks was handed out.
    last_sent: AtomicU64,
    /// When the answer the request in flight waits for from an upstream is due (HTTP/1: one at a time).
    upstream_due: AtomicU64,
    /// The time the watchdog's timer is set to (it looks then, or when poked).
    watchdog_at: AtomicU64,
    /// The connection speaks HTTP/2 (its streams, not bytes, say when a request starts).
    http2: AtomicBool,
    /// The last request came with a body (which an early answer may have left unread).
    body_sent: AtomicBool,
    /// Wakes the drain when the first request arrives.
    first: tokio::sync::Notify,
    /// Wakes the watchdog (its requests are used up).
    poke: tokio::sync::Notify,
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

/// What the watchdog should do with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing yet; look again at this [`now_ms`] time.
    WaitUntil(u64),
    /// Idle past `keepalive_timeout`, or its requests are used up: close it politely.
    Finish,
    /// A request head took longer than `client_header_timeout`.
    HeaderTimeout,
    /// A write stayed blocked longer than `send_timeout`.
    SendTimeout,
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
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

    /// Judges the connection at `now` under `limits`.
    pub fn verdict(&self, limits: &ClientLimits, now: u64) -> Verdict {
        let http2 = self.http2.load(Ordering::Relaxed);
        // However the state changes while the watchdog sleeps, no timer can expire sooner than this.
        let shortest = limits.header_timeout.min(limits.send_timeout).min(
            if limits.keepalive_timeout.is_zero() {
                limits.header_timeout
            } else {
                limits.keepalive_timeout
            },
        );
        let mut next = now.saturating_add(millis(shortest).max(1));
        let blocked = self.write_blocked_since.load(Ordering::Relaxed);
        if blocked != NEVER {
            let expires = blocked.saturating_add(millis(limits.send_timeout));
            if now >= expires {
                return Verdict::SendTimeout;
            }
            next = next.min(expires);
        }
        // HTTP/2 finishes with GOAWAY, which lets the streams in flight complete.
        if http2 && self.served() >= limits.keepalive_requests {
            return Verdict::Finish;
        }
        if self.sending.load(Ordering::Acquire) > 0 {
            // A chunk is waiting for the client: an HTTP/2 stream whose window stays shut shows here
            // (its socket is not blocked, the stream just cannot send).
            let expires = self
                .last_sent
                .load(Ordering::Relaxed)
                .saturating_add(millis(limits.send_timeout));
            if now >= expires {
                return Verdict::SendTimeout;
            }
            next = next.min(expires);
        }
        if self.active.load(Ordering::Acquire) > 0 {
            if let Some(due) = self.upstream_due() {
                // The attempt itself answers 504 when polled past this; the look only has to wake it
                // (never in the past: a look that came early looks again a millisecond later).
                next = next.min(due.max(now.saturating_add(1)));
            }
            return Verdict::WaitUntil(next);
        }
        let head = self.head_since.load(Ordering::Relaxed);
        if head != NEVER && !http2 {
            let expires = head.saturating_add(millis(limits.header_timeout));
            if now >= expires {
                return Verdict::HeaderTimeout;
            }
            return Verdict::WaitUntil(next.min(expires));
        }
        // Idle: a new connection gets `client_header_timeout` for its first request (as in nginx), a
        // kept-alive one `keepalive_timeout` for its next.
        let idle = if self.served() == 0 {
            limits.header_timeout
        } else {
            limits.keepalive_timeout
        };
        let expires = self
            .idle_since
            .load(Ordering::Relaxed)
            .saturating_add(millis(idle));
        if now >= expires {
            return if self.served() == 0 {
                Verdict::HeaderTimeout
            } else {
                Verdict::Finish
            };
        }
        Verdict::WaitUntil(next.min(expires))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::task::Context;

    fn limits() -> ClientLimits {
        ClientLimits {
            header_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(20),
            send_timeout: Duration::from_secs(30),
            ..ClientLimits::default()
        }
    }

    #[test]
    fn an_upstream_due_time_wakes_the_watchdog_only_when_it_is_earlier_than_its_timer() {
        let clock = ConnectionClock::new();
        clock.request_started(false);
        let now = now_ms();
        clock.watchdog_set(now + 10_000);
        // Later than the watchdog's timer: no poke, and the watchdog's next look is unchanged.
        clock.answer_due(now + 20_000);
        let poked = clock.poked();
        tokio::pin!(poked);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(poked.as_mut().poll(&mut cx).is_pending(), "poked");
        assert_eq!(
            clock.verdict(&limits(), now),
            Verdict::WaitUntil(now + 10_000)
        );
        // Earlier: poked, and the look is set to the due time (never to the past).
        clock.answer_due(now + 500);
        assert!(poked.as_mut().poll(&mut cx).is_ready(), "not poked");
        assert_eq!(clock.verdict(&limits(), now), Verdict::WaitUntil(now + 500));
        assert_eq!(
            clock.verdict(&limits(), now + 600),
            Verdict::WaitUntil(now + 601)
        );
        // Settled: the due time no longer counts.
        clock.answer_settled();
        assert_eq!(
            clock.verdict(&limits(), now),
            Verdict::WaitUntil(now + 10_000)
        );
    }

    #[test]
    fn a_head_is_timed_from_its_first_byte_not_its_last() {
        let clock = ConnectionClock::new();
        clock.request_started(false);
        clock.request_ended();
        let idle = clock.idle_since.load(Ordering::Relaxed);
        clock.head_since.store(idle + 1_000, Ordering::Relaxed);
        clock.bytes_read(); // a later byte does not move the start
        assert_eq!(clock.head_since.load(Ordering::Relaxed), idle + 1_000);
        assert_eq!(
            clock.verdict(&limits(), idle + 10_999),
            Verdict::WaitUntil(idle + 11_000)
        );
        assert_eq!(
            clock.verdict(&limits(), idle + 11_000),
            Verdict::HeaderTimeout
        );
    }

    #[test]
    fn idle_time_is_keepalive_after_a_request_and_header_time_before_one() {
        let limits = limits();
        let fresh = ConnectionClock::new();
        let start = fresh.idle_since.load(Ordering::Relaxed);
        assert_eq!(
            fresh.verdict(&limits, start + 10_000),
            Verdict::HeaderTimeout
        );
        let used = ConnectionClock::new();
        used.request_started(false);
        used.request_ended();
        let idle = used.idle_since.load(Ordering::Relaxed);
        assert!(matches!(
            used.verdict(&limits, idle + 19_999),
            Verdict::WaitUntil(_)
        ));
        assert_eq!(used.verdict(&limits, idle + 20_000), Verdict::Finish);
    }

    #[test]
    fn a_busy_connection_is_only_judged_on_blocked_writes() {
        let limits = limits();
        let clock = ConnectionClock::new();
        clock.request_started(false);
        let start = clock.idle_since.load(Ordering::Relaxed);
        assert!(matches!(
            clock.verdict(&limits, start + 1_000_000),
            Verdict::WaitUntil(_)
        ));
        clock
            .write_blocked_since
            .store(start + 5, Ordering::Relaxed);
        assert_eq!(clock.verdict(&limits, start + 30_005), Verdict::SendTimeout);
        clock.write_blocked(false);
        assert!(matches!(
            clock.verdict(&limits, start + 30_005),
            Verdict::WaitUntil(_)
        ));
    }
}
