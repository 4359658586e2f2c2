//! The queue of a pool whose servers have `max_conns`: requests that find every server full wait here
//! (at most `queue` of them, for at most `queue_timeout`) for a request to end; the rest get a fast 503.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// Waiting requests of one pool, shared by the snapshots that keep the pool (so a request ending under
/// an old snapshot wakes one waiting under the new).
#[derive(Debug, Default)]
pub struct WaitQueue {
    freed: Notify,
    waiting: AtomicUsize,
}

/// How a wait in the queue ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    /// A request ended: pick again.
    Freed,
    /// The queue already holds `queue` requests.
    Full,
    /// `queue_timeout` passed.
    TimedOut,
}

impl WaitQueue {
    /// A future that completes when a slot is freed; pin it and `enable` it before looking for a server,
    /// so a slot freed between the look and the wait is not missed.
    pub fn listen(&self) -> Notified<'_> {
        self.freed.notified()
    }

    /// A request on a limited server ended: wake one waiting request (or the next to wait; a spare wake
    /// only makes a request look again).
    pub fn release(&self) {
        self.freed.notify_one();
    }

    /// Waits on `listening` (from [`Self::listen`]) for a freed slot, if the queue has room for one more
    /// of at most `size`, until `deadline`.
    pub async fn wait(
        &self,
        listening: Pin<&mut Notified<'_>>,
        size: usize,
        deadline: tokio::time::Instant,
    ) -> Waited {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= size {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Waited::Full;
        }
        let waited = tokio::time::timeout_at(deadline, listening).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        match waited {
            Ok(()) => Waited::Freed,
            Err(_) => Waited::TimedOut,
        }
    }

    /// Requests waiting now.
    pub fn len(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Whether no request waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
