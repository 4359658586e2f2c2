//! An upstream attempt's `read_timeout`, enforced without a timer per request where the client
//! connection can do it.
//!
//! A tokio timer per request costs a registration and a removal in the runtime's timer wheel (its lock,
//! the entry's state, a handle clone: about ten atomic instructions and 350 others per keep-alive GET).
//! An HTTP/1 client connection has one request in flight at a time and already has a watchdog with a
//! timer of its own ([`crate::server::timeouts::ConnectionClock`]): the attempt tells it when its answer
//! is due, the watchdog wakes the connection by then (its timer is moved only when the due time is
//! earlier than the one it is set to, so on a busy connection about once per `read_timeout`), and the
//! attempt checks the clock whenever it is polled, as nginx checks its timers against its cached time.
//! HTTP/2 connections (many streams) and requests without a connection keep a tokio timer.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::time::Sleep;

use crate::clock::now_ms;

/// A watchdog that can enforce a request's upstream deadline: one request's at a time.
pub trait UpstreamWatch: Send + Sync {
    /// An attempt waits for its answer until `due` (a [`now_ms`] time): wake the connection by then.
    fn answer_due(&self, due: u64);
    /// The attempt is over (answered, failed, timed out or dropped).
    fn answer_settled(&self);
}

/// The attempt's answer did not come within its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut;

/// [`now_ms`] reads a clock that moves once per kernel tick (up to 10 ms at HZ=100) and may lag the
/// precise one by that much: a due time this much later never expires before the timeout has passed.
const COARSE_SLACK_MS: u64 = 10;

pin_project_lite::pin_project! {
    /// `attempt`, answered with [`TimedOut`] once `timeout` has passed: checked against the watchdog's
    /// due time when there is a watch, else by a timer of its own.
    pub struct Deadlined<'w, F> {
        #[pin]
        attempt: F,
        watched: Option<(&'w dyn UpstreamWatch, u64)>,
        #[pin]
        timer: Option<Sleep>,
    }

    impl<'w, F> PinnedDrop for Deadlined<'w, F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some((watch, _)) = this.project().watched {
                watch.answer_settled();
            }
        }
    }
}

impl<'w, F: Future> Deadlined<'w, F> {
    /// `attempt`, sent at `sent_at`, to be answered within `timeout`; the watchdog's when there is one.
    pub fn new(
        attempt: F,
        watch: Option<&'w dyn UpstreamWatch>,
        sent_at: Instant,
        timeout: Duration,
    ) -> Self {
        match watch {
            Some(watch) => {
                let millis = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
                let due = now_ms()
                    .saturating_add(millis)
                    .saturating_add(COARSE_SLACK_MS);
                watch.answer_due(due);
                Self {
                    attempt,
                    watched: Some((watch, due)),
                    timer: None,
                }
            }
            None => Self {
                attempt,
                watched: None,
                timer: Some(tokio::time::sleep_until(
                    tokio::time::Instant::from_std(sent_at) + timeout,
                )),
            },
        }
    }
}

impl<F: Future> Future for Deadlined<'_, F> {
    type Output = Result<F::Output, TimedOut>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(answer) = this.attempt.poll(cx) {
            return Poll::Ready(Ok(answer));
        }
        let expired = match this.timer.as_pin_mut() {
            Some(timer) => timer.poll(cx).is_ready(),
            None => this.watched.is_some_and(|(_, due)| now_ms() >= due),
        };
        if expired {
            Poll::Ready(Err(TimedOut))
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

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

    #[tokio::test]
    async fn a_watched_attempt_reports_its_due_time_and_settles_once_when_answered() {
        let watch = Recorder::default();
        let before = now_ms();
        let answer = Deadlined::new(
            async { 7 },
            Some(&watch),
            Instant::now(),
            Duration::from_secs(2),
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
                started,
                Duration::from_millis(30),
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
        assert_eq!(answer, Err(TimedOut));
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert_eq!(watch.settled.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn without_a_watch_the_attempt_has_a_timer_of_its_own() {
        let started = Instant::now();
        let answer = Deadlined::new(
            std::future::pending::<()>(),
            None,
            started,
            Duration::from_millis(30),
        )
        .await;
        assert_eq!(answer, Err(TimedOut));
        assert!(started.elapsed() >= Duration::from_millis(30));
    }
}
