//! The watchdog's judgement of a connection's clock under the client limits: wait until when, finish it,
//! or close it for a client timeout. Pure over the clock's state and `now`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::connection_clock::{ConnectionClock, NEVER};
use crate::config::ClientLimits;

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

impl ConnectionClock {
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
    use crate::clock::now_ms;
    use crate::forward::deadline::UpstreamWatch;
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
