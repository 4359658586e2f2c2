//! Passive health with nginx semantics: `max_fails` failures within `fail_timeout` take a server out for
//! `fail_timeout`; then one request is let through as a probe, and its success brings the server back.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// What a recorded outcome did to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing changed.
    None,
    /// The server went down.
    Down,
    /// The server came back.
    Up,
}

/// Failure window and down state of one server, shared by every request (atomics only).
#[derive(Debug, Default)]
pub struct PassiveHealth {
    fails: AtomicU32,
    window_start_ms: AtomicU64,
    /// 0 while up; otherwise the time after which one probe request may go through.
    down_until_ms: AtomicU64,
}

impl PassiveHealth {
    /// Whether a balancer may consider this server: up, or down with its `fail_timeout` over (probe due).
    #[inline]
    pub fn selectable(&self, now_ms: u64) -> bool {
        // `until` is 0 while up and `now_ms` is never 0, so one comparison covers both cases.
        self.down_until_ms.load(Ordering::Relaxed) <= now_ms
    }

    /// Whether the server is currently out (down and no probe due yet).
    pub fn is_down(&self, now_ms: u64) -> bool {
        !self.selectable(now_ms)
    }

    /// 0 while up; otherwise when the next probe is due.
    pub fn marked_until(&self) -> u64 {
        self.down_until_ms.load(Ordering::SeqCst)
    }

    /// Failures counted in the current window.
    pub fn fails(&self) -> u32 {
        self.fails.load(Ordering::Relaxed)
    }

    /// Takes the right to send a request to a picked server. An up server always grants it; a down server whose
    /// timeout has passed grants it to exactly one request (the probe) and stays out for the others.
    pub fn claim(&self, now_ms: u64, fail_timeout_ms: u64) -> bool {
        let until = self.down_until_ms.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        if now_ms < until {
            return false;
        }
        self.down_until_ms
            .compare_exchange(
                until,
                now_ms.saturating_add(fail_timeout_ms),
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// Records a failed attempt; `max_fails == 0` disables accounting.
    pub fn record_failure(&self, now_ms: u64, max_fails: u32, fail_timeout_ms: u64) -> Transition {
        if max_fails == 0 {
            return Transition::None;
        }
        let window_start = self.window_start_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(window_start) > fail_timeout_ms {
            self.window_start_ms.store(now_ms, Ordering::Relaxed);
            self.fails.store(0, Ordering::Relaxed);
        }
        let fails = self.fails.fetch_add(1, Ordering::AcqRel) + 1;
        if fails < max_fails {
            return Transition::None;
        }
        let previous = self
            .down_until_ms
            .swap(now_ms.saturating_add(fail_timeout_ms), Ordering::SeqCst);
        if previous == 0 {
            Transition::Down
        } else {
            Transition::None
        }
    }

    /// Records a good answer: a down server (whose probe this was) comes back with its count reset.
    pub fn record_success(&self) -> Transition {
        if self.down_until_ms.load(Ordering::Relaxed) == 0 {
            return Transition::None;
        }
        self.fails.store(0, Ordering::Relaxed);
        if self.down_until_ms.swap(0, Ordering::SeqCst) != 0 {
            Transition::Up
        } else {
            Transition::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_fails_within_window_takes_server_out() {
        let h = PassiveHealth::default();
        assert_eq!(h.record_failure(1_000, 3, 10_000), Transition::None);
        assert_eq!(h.record_failure(2_000, 3, 10_000), Transition::None);
        assert!(h.selectable(2_000));
        assert_eq!(h.record_failure(3_000, 3, 10_000), Transition::Down);
        assert!(!h.selectable(3_001));
        assert!(!h.selectable(12_999));
        assert!(h.selectable(13_000));
    }

    #[test]
    fn failures_spread_beyond_the_window_do_not_add_up() {
        let h = PassiveHealth::default();
        h.record_failure(1_000, 2, 1_000);
        assert_eq!(h.record_failure(5_000, 2, 1_000), Transition::None);
        assert!(h.selectable(5_001));
    }

    #[test]
    fn one_probe_after_timeout_and_success_restores() {
        let h = PassiveHealth::default();
        assert_eq!(h.record_failure(1_000, 1, 1_000), Transition::Down);
        assert!(!h.claim(1_500, 1_000));
        assert!(
            h.claim(2_000, 1_000),
            "the first request after the timeout is the probe"
        );
        assert!(!h.claim(2_001, 1_000), "only one probe at a time");
        assert_eq!(h.record_success(), Transition::Up);
        assert!(h.claim(2_002, 1_000));
        assert_eq!(h.fails(), 0);
    }

    #[test]
    fn failed_probe_keeps_server_out() {
        let h = PassiveHealth::default();
        h.record_failure(1_000, 1, 1_000);
        assert!(h.claim(2_000, 1_000));
        assert_eq!(h.record_failure(2_100, 1, 1_000), Transition::None);
        assert!(!h.selectable(2_500));
    }

    #[test]
    fn zero_max_fails_disables() {
        let h = PassiveHealth::default();
        for t in 0..10 {
            assert_eq!(h.record_failure(t, 0, 1_000), Transition::None);
        }
        assert!(h.selectable(10));
    }
}
