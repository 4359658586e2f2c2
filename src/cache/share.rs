//! An answer being filled, shared with the requests waiting on its key (`cache_lock`) while it arrives:
//! the fill publishes its head and each piece of its body; a waiter answers with the head and follows
//! the pieces to the end.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName};
use http::StatusCode;
use tokio::sync::watch;

/// What the waiters of one fill see of it.
#[derive(Debug, Default)]
pub struct Progress {
    /// The answer's head, once a fill has started that waiters may follow.
    pub head: Option<Arc<SharedHead>>,
    /// The body's pieces so far.
    pub pieces: Vec<Bytes>,
    /// The body has arrived whole (and is stored, unless it outgrew `max_entry_size`).
    pub whole: bool,
}

/// The head of an answer being filled.
#[derive(Debug)]
pub struct SharedHead {
    /// Its status.
    pub status: StatusCode,
    /// Its headers, as an entry keeps them.
    pub headers: HeaderMap,
    /// Its `Content-Length`, when it has one.
    pub length: Option<u64>,
    /// Whether it may answer requests with `Authorization`.
    pub allows_authorized: bool,
    /// The variant key it is stored under (a waiter whose headers pick another variant does not follow).
    pub variant: String,
    /// The header names its `Vary` lists.
    pub vary: Vec<HeaderName>,
}

/// The receiving side, as a request waiting on a fill holds it.
pub type Watch = watch::Receiver<Progress>;

/// Why a follower's body stopped short.
#[derive(Debug, thiserror::Error)]
#[error("the answer this request shared was cut short (its server failed or it was not stored)")]
pub struct Abandoned;

/// The body of the answer a [`Watch`] fills, piece by piece as they arrive; an error if the fill ends
/// before the body is whole.
pub struct Follow {
    step: Pin<Box<dyn Future<Output = Step> + Send>>,
    done: bool,
}

/// One piece (or the end), and where to go on from.
type Step = (Option<Result<Bytes, Abandoned>>, Watch, usize);

impl std::fmt::Debug for Follow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follow").field("done", &self.done).finish()
    }
}

impl Follow {
    /// Follows the fill `watch` watches from its first piece.
    pub fn new(watch: Watch) -> Self {
        Self {
            step: Box::pin(piece(watch, 0)),
            done: false,
        }
    }

    /// The next piece, `None` at the end of a whole body.
    pub fn poll_piece(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Abandoned>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let Poll::Ready((item, watch, next)) = self.step.as_mut().poll(cx) else {
            return Poll::Pending;
        };
        match item {
            Some(Ok(_)) => self.step = Box::pin(piece(watch, next + 1)),
            _ => self.done = true,
        }
        Poll::Ready(item)
    }
}

/// Piece `next` of the fill, once it has arrived.
async fn piece(mut watch: Watch, next: usize) -> Step {
    loop {
        let (piece, whole) = {
            let progress = watch.borrow_and_update();
            (progress.pieces.get(next).cloned(), progress.whole)
        };
        if let Some(piece) = piece {
            return (Some(Ok(piece)), watch, next);
        }
        if whole {
            return (None, watch, next);
        }
        if watch.changed().await.is_err() {
            // The fill is over: whatever it published last is still readable.
            let (piece, whole) = {
                let progress = watch.borrow();
                (progress.pieces.get(next).cloned(), progress.whole)
            };
            let item = match (piece, whole) {
                (Some(piece), _) => Some(Ok(piece)),
                (None, true) => None,
                (None, false) => Some(Err(Abandoned)),
            };
            return (item, watch, next);
        }
    }
}
