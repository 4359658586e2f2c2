//! The serving threads: each runs a current-thread tokio runtime of its own with an accept loop per
//! listener and the connections it accepts, while the daemon (signals, reloads, the admin API, health
//! checks) runs on the main thread's runtime and never stalls a request. `worker_threads` says how many
//! (`0`: one per core).
//!
//! A current-thread runtime runs its tasks in the order they were woken, as nginx's event loop does;
//! the multi-thread scheduler's "LIFO slot" runs the task woken last first, which makes our writes
//! follow a different order from the sockets' readiness and wakes the load generator and the backends
//! more often (docs/benchmarks-history.md). One such runtime per thread, as nginx runs one
//! event loop per worker process: a connection stays on the thread that accepted it, and so do the
//! upstream connections it checks out (the pool keeps idle connections per serving thread,
//! [`worker_index`]), so their readiness is seen by the I/O driver of the thread that uses them.

use std::io;
use std::thread::JoinHandle;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

pub use crate::worker::{serving_threads_started, worker_index};

/// How many serving threads `worker_threads` asks for: itself, or one per core for 0.
pub fn serving_threads(worker_threads: usize) -> usize {
    match worker_threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    }
}

/// A thread running a current-thread tokio runtime until it is stopped or dropped.
#[derive(Debug)]
pub struct ServingThread {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ServingThread {
    /// Starts serving thread number `index` (`fulcrum-serve-{index}`) and its runtime (I/O and timers
    /// enabled).
    pub fn spawn(index: usize) -> io::Result<ServingThread> {
        let runtime = Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        crate::worker::count_started(index);
        let thread = std::thread::Builder::new()
            .name(format!("fulcrum-serve-{index}"))
            .spawn(move || {
                crate::worker::set_worker_index(index);
                // Runs the spawned tasks until told to stop (or until the sender is dropped); dropping
                // the runtime then drops whatever is left.
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(ServingThread {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where to spawn the tasks that should run on this thread.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for ServingThread {
    /// Stops the runtime (its remaining tasks are dropped) and waits for the thread to end.
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_threads_means_one_per_core() {
        assert_eq!(serving_threads(3), 3);
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(serving_threads(0), cores);
    }

    #[test]
    fn runs_spawned_tasks_on_its_own_thread_and_stops_when_dropped() {
        let serving = ServingThread::spawn(3).expect("runtime");
        let (tx, rx) = std::sync::mpsc::channel();
        serving.handle().spawn(async move {
            let name = std::thread::current().name().map(str::to_owned);
            let _ = tx.send((name, worker_index()));
        });
        let (name, index) = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("the task ran");
        assert_eq!(name.as_deref(), Some("fulcrum-serve-3"));
        assert_eq!(index, 3, "the thread knows its index");
        assert_eq!(worker_index(), 0, "off the serving threads the index is 0");
        assert!(serving_threads_started() >= 4, "counted up to its index");
        // A task that never ends does not keep the thread alive past the drop.
        serving.handle().spawn(std::future::pending::<()>());
        let (dropped, done) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(serving);
            let _ = dropped.send(());
        });
        done.recv_timeout(std::time::Duration::from_secs(5))
            .expect("the drop stopped the thread and returned");
    }
}
