//! An upstream attempt's `send_timeout` and `read_timeout` (nginx `proxy_send_timeout` and
//! `proxy_read_timeout`), enforced without a timer per request where the client connection can do it.
//!
//! While the request is being sent, a write to the server may stay blocked for `send_timeout`; while the
//! request body waits for the client, only the client's `client_body_timeout` runs (in the body), so a
//! slow upload never counts against the server. Once the whole request has been handed to the server's
//! connection, its answer's head must come within `read_timeout` (the body's reads are timed by
//! [`crate::forward::body::UpstreamBody`]). What the request is doing is kept in a [`SendProgress`] that the
//! request body updates as the upstream connection takes its frames, which may happen on another task
//! (hyper's connection tasks): the attempt looks at it whenever it is polled and at its next due time.
//!
//! An HTTP/1 client connection has one request in flight at a time and a watchdog with a timer of its
//! own ([`crate::server::timeouts::ConnectionClock`]): the attempt tells it when to look, and the
//! watchdog wakes the connection then. HTTP/2 connections and requests without a connection keep a
//! tokio timer per attempt.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Sleep;

use crate::clock::now_ms;
use crate::message::progress::{SendProgress, Sending};

/// A watchdog that can enforce a request's upstream deadline: one request's at a time.
pub trait UpstreamWatch: Send + Sync {
    /// An attempt waits for its answer until `due` (a [`now_ms`] time): wake the connection by then.
    fn answer_due(&self, due: u64);
    /// The attempt is over (answered, failed, timed out or dropped).
    fn answer_settled(&self);
}

/// Which of an attempt's timeouts passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimedOut {
    /// The answer's head did not come within `read_timeout` of the request's end.
    Read,
    /// A write of the request stayed blocked for `send_timeout`.
    Send,
}

/// [`now_ms`] reads a clock that moves once per kernel tick (up to 10 ms at HZ=100) and may lag the
/// precise one by that much: a due time this much later never expires before the timeout has passed.
const COARSE_SLACK_MS: u64 = 10;

/// What an attempt's timeouts say at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Expired(TimedOut),
    /// Look again at this [`now_ms`] time.
    LookAt(u64),
}

/// The attempt's timeouts in milliseconds, slack included.
#[derive(Debug, Clone, Copy)]
struct Limits {
    read: u64,
    send: u64,
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX / 4)
        .min(u64::MAX / 4)
        .saturating_add(COARSE_SLACK_MS)
}

fn check(sending: Sending, limits: Limits, now: u64) -> Check {
    match sending {
        Sending::Ended(at) => {
            let due = at.saturating_add(limits.read);
            if now >= due {
                Check::Expired(TimedOut::Read)
            } else {
                Check::LookAt(due)
            }
        }
        // The body may end on another task without waking this one: look again within a read timeout,
        // which is then counted from the end it finds.
        Sending::Client => Check::LookAt(now.saturating_add(limits.read)),
        Sending::Upstream(since) => {
            let due = since.saturating_add(limits.send);
            if now >= due {
                Check::Expired(TimedOut::Send)
            } else {
                Check::LookAt(due.min(now.saturating_add(limits.read)))
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// `attempt`, answered with [`TimedOut`] once one of its timeouts has passed: looked at when the
    /// watchdog wakes the connection if there is a watch, else by a timer of its own.
    pub struct Deadlined<'w, F> {
        #[pin]
        attempt: F,
        progress: Option<&'w SendProgress>,
        // When `progress` is `None`: the request (without a body) was handed over then.
        created: u64,
        limits: Limits,
        watch: Option<&'w dyn UpstreamWatch>,
        // The look currently asked for (of the watch or the timer).
        look_at: u64,
        #[pin]
        timer: Option<Sleep>,
    }

    impl<'w, F> PinnedDrop for Deadlined<'w, F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(watch) = this.project().watch {
                watch.answer_settled();
            }
        }
    }
}

impl<'w, F: Future> Deadlined<'w, F> {
    /// `attempt`, whose request body (if any) reports to `progress`, under `read_timeout` and
    /// `send_timeout`; timed by the watchdog when there is one.
    pub fn new(
        attempt: F,
        watch: Option<&'w dyn UpstreamWatch>,
        progress: Option<&'w SendProgress>,
        read_timeout: Duration,
        send_timeout: Duration,
    ) -> Self {
        let mut this = Self {
            attempt,
            progress,
            created: now_ms(),
            limits: Limits {
                read: millis(read_timeout),
                send: millis(send_timeout),
            },
            watch,
            look_at: 0,
            timer: None,
        };
        // Before the first poll, so the watchdog knows at once (the attempt may finish on that poll).
        if let (Some(watch), Check::LookAt(at)) = (watch, this.check(this.created)) {
            this.look_at = at;
            watch.answer_due(at);
        }
        this
    }

    fn check(&self, now: u64) -> Check {
        let sending = self
            .progress
            .map_or(Sending::Ended(self.created), SendProgress::get);
        check(sending, self.limits, now)
    }
}

impl<F: Future> Future for Deadlined<'_, F> {
    type Output = Result<F::Output, TimedOut>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(answer) = self.as_mut().project().attempt.poll(cx) {
            return Poll::Ready(Ok(answer));
        }
        let at = match self.check(now_ms()) {
            Check::Expired(which) => return Poll::Ready(Err(which)),
            Check::LookAt(at) => at,
        };
        let this = self.project();
        match this.watch {
            Some(watch) => {
                if *this.look_at != at {
                    *this.look_at = at;
                    watch.answer_due(at);
                }
            }
            None => {
                let mut timer = this.timer;
                // At least a millisecond: the coarse clock may lag the timer's, and a look that came
                // early looks again rather than spinning.
                let wait = Duration::from_millis(at.saturating_sub(now_ms()).max(1));
                let deadline = tokio::time::Instant::now() + wait;
                match timer.as_mut().as_pin_mut() {
                    Some(mut sleep) => {
                        if *this.look_at != at || sleep.is_elapsed() {
                            sleep.as_mut().reset(deadline);
                        }
                    }
                    None => timer.set(Some(tokio::time::sleep_until(deadline))),
                }
                if let Some(sleep) = timer.as_pin_mut() {
                    if sleep.poll(cx).is_ready() {
                        cx.waker().wake_by_ref();
                    }
                }
                *this.look_at = at;
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::time::Instant;

    #[derive(Default)]
    struct Recorder {
        due: AtomicU64,
        settled: AtomicUsize,
    }

    impl UpstreamWatch for Recorder {
        fn answer_due(&self, due: u64) {
            self.due.store(due, Ordering::Relaxed);
        }
        fn answer_settled(&self) {
            self.settled.fetch_add(1, Ordering::Relaxed);
        }
    }

    const LIMITS: Limits = Limits {
        read: 2_000,
        send: 5_000,
    };

    #[test]
    fn the_read_timeout_counts_from_the_end_of_the_request_not_its_start() {
        assert_eq!(
            check(Sending::Ended(1_000), LIMITS, 1_500),
            Check::LookAt(3_000)
        );
        assert_eq!(
            check(Sending::Ended(1_000), LIMITS, 3_000),
            Check::Expired(TimedOut::Read)
        );
    }

    #[test]
    fn a_body_waiting_on_its_client_never_expires_an_upstream_timeout() {
        for now in [1_000, 100_000, 10_000_000] {
            assert_eq!(
                check(Sending::Client, LIMITS, now),
                Check::LookAt(now + 2_000)
            );
        }
    }

    #[test]
    fn a_write_blocked_past_the_send_timeout_expires_and_looks_within_a_read_timeout_before() {
        assert_eq!(
            check(Sending::Upstream(1_000), LIMITS, 1_000),
            Check::LookAt(3_000)
        );
        assert_eq!(
            check(Sending::Upstream(1_000), LIMITS, 4_500),
            Check::LookAt(6_000)
        );
        assert_eq!(
            check(Sending::Upstream(1_000), LIMITS, 6_000),
            Check::Expired(TimedOut::Send)
        );
    }

    #[test]
    fn progress_reads_back_what_was_written() {
        let progress = SendProgress::new();
        assert!(matches!(progress.get(), Sending::Upstream(_)));
        progress.waiting_on_client();
        assert_eq!(progress.get(), Sending::Client);
        progress.ended();
        let Sending::Ended(at) = progress.get() else {
            panic!("not ended: {:?}", progress.get());
        };
        assert!(at > 0 && at <= now_ms());
    }

    #[tokio::test]
    async fn a_watched_attempt_reports_its_due_time_and_settles_once_when_answered() {
        let watch = Recorder::default();
        let before = now_ms();
        let answer = Deadlined::new(
            async { 7 },
            Some(&watch),
            None,
            Duration::from_secs(2),
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(answer, Ok(7));
        let due = watch.due.load(Ordering::Relaxed);
        assert!(due >= before + 2_000 && due <= now_ms() + 2_000 + COARSE_SLACK_MS);
        assert_eq!(watch.settled.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_watched_attempt_times_out_when_polled_after_its_due_time() {
        let watch = Recorder::default();
        let started = Instant::now();
        let answer = {
            let attempt = Deadlined::new(
                std::future::pending::<()>(),
                Some(&watch),
                None,
                Duration::from_millis(30),
                Duration::from_secs(60),
            );
            tokio::pin!(attempt);
            // Nothing here wakes the task (the watchdog would): poll it until its time has come.
            loop {
                let mut cx = Context::from_waker(std::task::Waker::noop());
                if let Poll::Ready(answer) = attempt.as_mut().poll(&mut cx) {
                    break answer;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "never timed out"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        assert_eq!(answer, Err(TimedOut::Read));
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert_eq!(watch.settled.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn without_a_watch_the_attempt_has_a_timer_of_its_own() {
        let started = Instant::now();
        let answer = Deadlined::new(
            std::future::pending::<()>(),
            None,
            None,
            Duration::from_millis(30),
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(answer, Err(TimedOut::Read));
        assert!(started.elapsed() >= Duration::from_millis(30));
    }

    #[tokio::test]
    async fn a_send_that_makes_no_progress_times_out_on_the_send_timeout() {
        let progress = SendProgress::new();
        let started = Instant::now();
        let answer = Deadlined::new(
            std::future::pending::<()>(),
            None,
            Some(&progress),
            Duration::from_millis(20),
            Duration::from_millis(60),
        )
        .await;
        assert_eq!(answer, Err(TimedOut::Send));
        assert!(started.elapsed() >= Duration::from_millis(60));
    }
}
