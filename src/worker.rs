//! Which serving thread the code runs on: set by `server/thread.rs` when it starts a serving thread,
//! read by per-thread state below the server (the upstream pool keeps idle connections per thread), so
//! that nothing in the request path imports `server/`.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

thread_local! {
    /// This thread's serving-thread index; 0 on any other thread.
    static WORKER_INDEX: Cell<usize> = const { Cell::new(0) };
}

/// Serving threads started so far in this process (the highest index plus one).
static STARTED: AtomicUsize = AtomicUsize::new(0);

/// How many serving threads this process has started: what per-thread state is sized for (at least 1,
/// for a proxy run on its caller's runtime).
pub fn serving_threads_started() -> usize {
    STARTED.load(Ordering::Acquire).max(1)
}

/// The index of the serving thread this runs on (0 to `worker_threads - 1`), or 0 off the serving
/// threads: what per-thread state (the upstream pool's idle connections) is kept under.
pub fn worker_index() -> usize {
    WORKER_INDEX.with(Cell::get)
}

/// Counts serving thread `index` as started (before its thread runs anything).
pub fn count_started(index: usize) {
    STARTED.fetch_max(index + 1, Ordering::AcqRel);
}

/// Marks the calling thread as serving thread `index`.
pub fn set_worker_index(index: usize) {
    WORKER_INDEX.with(|cell| cell.set(index));
}
