//! The serving thread used when `worker_threads = 1`: its own current-thread tokio runtime, so the
//! listeners' tasks run there while the daemon (signals, reloads, the admin API, health checks) runs
//! on the main thread's runtime and never stalls a request.
//!
//! A current-thread runtime runs its tasks in the order they were woken, as nginx's event loop does;
//! the multi-thread scheduler's "LIFO slot" runs the task woken last first, which makes our writes
//! follow a different order from the sockets' readiness and wakes the load generator and the backends
//! more often (docs/benchmarks.md, "Wake-ups, counted").

use std::io;
use std::thread::JoinHandle;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// A thread running a current-thread tokio runtime until it is stopped or dropped.
#[derive(Debug)]
pub struct ServingThread {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ServingThread {
    /// Starts the thread and its runtime (I/O and timers enabled).
    pub fn spawn() -> io::Result<ServingThread> {
        let runtime = Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("fulcrum-serve".to_string())
            .spawn(move || {
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
    fn runs_spawned_tasks_on_its_own_thread_and_stops_when_dropped() {
        let serving = ServingThread::spawn().expect("runtime");
        let (tx, rx) = std::sync::mpsc::channel();
        serving.handle().spawn(async move {
            let name = std::thread::current().name().map(str::to_owned);
            let _ = tx.send(name);
        });
        let name = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("the task ran");
        assert_eq!(name.as_deref(), Some("fulcrum-serve"));
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
