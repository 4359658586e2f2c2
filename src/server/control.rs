//! A connection task's wake-ups told apart: its control futures (the watchdog's timer, its poke, the
//! drain, the forced close) are polled only when one of them woke the task. The task wakes mostly for its
//! I/O, and polling the four of them on every wake was measurable per request
//! (docs/benchmarks-history.md).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Wake, Waker};

use parking_lot::Mutex;

/// The waker given to a connection's control futures: it notes that one of them fired, then wakes the
/// connection's task.
#[derive(Debug, Default)]
pub struct ControlWake {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl ControlWake {
    /// A control waker that wakes nothing until [`ControlWake::take`] has seen the task's waker.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Asks for the next [`ControlWake::take`] to say yes: new control futures need their first poll.
    pub fn arm(&self) {
        self.woken.store(true, Ordering::Release);
    }

    /// Notes `task` as the waker control futures' wakes go on to. A task's waker rarely changes: the
    /// caller keeps the last one it registered and calls this only when `cx.waker()` differs, so a poll
    /// usually takes no lock here.
    pub fn register(&self, task: &Waker) {
        *self.task.lock() = Some(task.clone());
    }

    /// Whether a control future woke the task since the last call (or [`ControlWake::arm`] was called).
    /// Call it after the task's waker is registered: a wake from then on reaches the task, which looks
    /// again. Usually nothing woke it, and a load says so without taking the flag's cache line.
    pub fn take(&self) -> bool {
        self.woken.load(Ordering::Acquire) && self.woken.swap(false, Ordering::AcqRel)
    }
}

impl Wake for ControlWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if let Some(task) = self.task.lock().as_ref() {
            task.wake_by_ref();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct CountingWake(AtomicUsize);

    impl Wake for CountingWake {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_control_wake_is_noted_and_passed_on_to_the_task() {
        let task = Arc::new(CountingWake(AtomicUsize::new(0)));
        let task_waker = Waker::from(Arc::clone(&task));
        let control = ControlWake::new();
        let control_waker = Waker::from(Arc::clone(&control));
        // Nothing woke yet, and nothing to pass a wake on to.
        assert!(!control.take());
        control_waker.wake_by_ref();
        assert_eq!(task.0.load(Ordering::SeqCst), 0);
        assert!(control.take());
        control.register(&task_waker);
        control.arm();
        assert!(control.take());
        assert!(!control.take());
        control_waker.wake_by_ref();
        assert_eq!(task.0.load(Ordering::SeqCst), 1);
        assert!(control.take());
        assert!(!control.take());
    }
}
