//! Live state of one server: the in-flight count and health flags in one atomic word, passive and active
//! health, drain and slow start. Shared by every snapshot that lists the server, so it survives reloads.

use std::sync::atomic::{AtomicU64, Ordering};

use super::passive::{PassiveHealth, Transition};

/// Passive health took the server out (until [`PassiveHealth`] says otherwise).
const PASSIVE_DOWN: u64 = 1 << 63;
/// Active probes say the server is unhealthy.
const ACTIVE_DOWN: u64 = 1 << 62;
/// Drained at runtime: no new requests; in-flight ones finish.
const DRAINED: u64 = 1 << 61;
/// Ramping up after recovery: admitted with a rising probability until `slow_start` has passed.
const SLOW_START: u64 = 1 << 60;
/// The server has `max_conns`: it is full while its in-flight count is at that limit.
const LIMITED: u64 = 1 << 59;
/// Any flag: the word is not just the in-flight count.
const FLAGS: u64 = PASSIVE_DOWN | ACTIVE_DOWN | DRAINED | SLOW_START | LIMITED;
/// The in-flight count's bits.
const IN_FLIGHT: u64 = (1 << 32) - 1;
/// Share of its weight a slow-starting server gets at the start of the ramp.
const SLOW_START_FLOOR: f64 = 0.1;

/// Live state of one server, keyed by address in the [`super::Registry`].
///
/// The in-flight count and the flags share one atomic word, so a balancer scan reads one word per server
/// and only a flagged server takes the slow path, where the authoritative state decides.
#[derive(Debug, Default)]
pub struct ServerState {
    word: AtomicU64,
    passive: PassiveHealth,
    /// Consecutive probe results, a packed [`super::ProbeCounter`]; written by the health checker.
    probes: AtomicU64,
    slow_start_since_ms: AtomicU64,
    slow_start_ms: AtomicU64,
    /// The last probe: bit 63 set when good, bit 62 set once probed, low bits its latency in microseconds.
    last_probe: AtomicU64,
    /// `max_conns` (0: no limit); the `LIMITED` flag says it is set.
    max_conns: AtomicU64,
    /// Its latency estimate (every strategy records it; `least_time` picks by it).
    latency: super::Latency,
}

impl ServerState {
    /// Whether a balancer may pick the server now (for a slow-starting server, a weighted coin toss).
    #[inline]
    pub fn selectable(&self, now_ms: u64) -> bool {
        self.in_flight_if_selectable(now_ms).is_some()
    }

    /// The in-flight count if the server may be picked now, in one atomic load when no flag is set.
    #[inline]
    pub fn in_flight_if_selectable(&self, now_ms: u64) -> Option<u64> {
        let word = self.word.load(Ordering::Relaxed);
        if word & FLAGS == 0 {
            // No flag set: the word is the in-flight count.
            Some(word)
        } else {
            self.in_flight_if_flagged_selectable(word, now_ms)
        }
    }

    /// The slow path of [`Self::in_flight_if_selectable`]: a flag is set, so ask the authoritative state.
    #[cold]
    #[inline(never)]
    fn in_flight_if_flagged_selectable(&self, word: u64, now_ms: u64) -> Option<u64> {
        if word & (ACTIVE_DOWN | DRAINED) != 0 || self.full(word) {
            return None;
        }
        if word & PASSIVE_DOWN != 0 && !self.passive.selectable(now_ms) {
            return None;
        }
        if word & SLOW_START != 0 && !self.slow_start_admits(now_ms) {
            return None;
        }
        Some(word & IN_FLIGHT)
    }

    /// The server's latency estimate.
    #[inline]
    pub fn latency(&self) -> &super::Latency {
        &self.latency
    }

    /// Whether the server is up for health purposes (not active- or passive-down, not drained), ignoring
    /// slow start.
    pub fn healthy(&self, now_ms: u64) -> bool {
        let word = self.word.load(Ordering::Relaxed);
        word & (ACTIVE_DOWN | DRAINED) == 0
            && (word & PASSIVE_DOWN == 0 || self.passive.selectable(now_ms))
    }

    /// Requests currently being served by this server (held until the response body ends).
    #[inline]
    pub fn in_flight(&self) -> usize {
        (self.word.load(Ordering::Relaxed) & IN_FLIGHT) as usize
    }

    /// Counts one more request in flight.
    pub(super) fn enter(&self) {
        self.word.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one more request in flight unless the server is at its `max_conns`.
    pub(super) fn try_enter(&self) -> bool {
        self.word
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |word| {
                (!self.full(word)).then_some(word + 1)
            })
            .is_ok()
    }

    /// Whether `word` says the server is at its `max_conns`.
    #[inline]
    fn full(&self, word: u64) -> bool {
        word & LIMITED != 0 && word & IN_FLIGHT >= self.max_conns.load(Ordering::Relaxed)
    }

    /// Whether the server is at its `max_conns` now.
    pub fn is_full(&self) -> bool {
        self.full(self.word.load(Ordering::Relaxed))
    }

    /// Sets `max_conns` (0: no limit), from the config of the newest snapshot.
    pub fn set_max_conns(&self, max_conns: u32) {
        self.max_conns
            .store(u64::from(max_conns), Ordering::Relaxed);
        self.set_flag(LIMITED, max_conns > 0);
    }

    /// Counts one request less in flight.
    pub(super) fn leave(&self) {
        self.word.fetch_sub(1, Ordering::Relaxed);
    }

    fn set_flag(&self, flag: u64, on: bool) {
        if on {
            self.word.fetch_or(flag, Ordering::SeqCst);
        } else {
            self.word.fetch_and(!flag, Ordering::SeqCst);
        }
    }

    fn flag(&self, flag: u64) -> bool {
        self.word.load(Ordering::Relaxed) & flag != 0
    }

    /// Marks the server unhealthy (or healthy) by active probes.
    pub fn set_active_down(&self, down: bool) {
        self.set_flag(ACTIVE_DOWN, down);
    }

    /// Whether active probes hold the server out.
    pub fn is_active_down(&self) -> bool {
        self.flag(ACTIVE_DOWN)
    }

    /// Drains the server (no new requests; in-flight ones finish), or ends the drain.
    pub fn set_drained(&self, drained: bool) {
        self.set_flag(DRAINED, drained);
    }

    /// Whether the server is drained at runtime.
    pub fn is_drained(&self) -> bool {
        self.flag(DRAINED)
    }

    /// The packed consecutive-probe counter (see [`super::ProbeCounter`]).
    pub fn probe_counter(&self) -> u64 {
        self.probes.load(Ordering::Relaxed)
    }

    /// Stores the packed consecutive-probe counter.
    pub fn set_probe_counter(&self, packed: u64) {
        self.probes.store(packed, Ordering::Relaxed);
    }

    /// Records the last probe's result and latency (for status).
    pub fn set_last_probe(&self, ok: bool, latency: std::time::Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX) & ((1 << 62) - 1);
        self.last_probe.store(
            (u64::from(ok) << 63) | (1 << 62) | micros,
            Ordering::Relaxed,
        );
    }

    /// The last probe's result and latency, if any probe ran.
    pub fn last_probe(&self) -> Option<(bool, std::time::Duration)> {
        let word = self.last_probe.load(Ordering::Relaxed);
        (word & (1 << 62) != 0).then(|| {
            (
                word >> 63 == 1,
                std::time::Duration::from_micros(word & ((1 << 62) - 1)),
            )
        })
    }

    /// Whether passive health holds the server out now.
    pub fn is_passive_down(&self, now_ms: u64) -> bool {
        self.passive.is_down(now_ms)
    }

    /// Starts ramping the server's share from a small part of its weight to all of it over `duration_ms`.
    pub fn begin_slow_start(&self, now_ms: u64, duration_ms: u64) {
        if duration_ms == 0 {
            return;
        }
        self.slow_start_since_ms.store(now_ms, Ordering::Relaxed);
        self.slow_start_ms.store(duration_ms, Ordering::Relaxed);
        self.set_flag(SLOW_START, true);
    }

    /// The share of its weight the server gets now: 1.0 unless slow-starting.
    pub fn slow_start_share(&self, now_ms: u64) -> f64 {
        if !self.flag(SLOW_START) {
            return 1.0;
        }
        let since = self.slow_start_since_ms.load(Ordering::Relaxed);
        let duration = self.slow_start_ms.load(Ordering::Relaxed).max(1);
        let elapsed = now_ms.saturating_sub(since);
        if elapsed >= duration {
            self.set_flag(SLOW_START, false);
            return 1.0;
        }
        slow_start_share(elapsed, duration)
    }

    fn slow_start_admits(&self, now_ms: u64) -> bool {
        let share = self.slow_start_share(now_ms);
        share >= 1.0 || fastrand::f64() < share
    }

    /// Passive health, read-only.
    pub fn passive(&self) -> &PassiveHealth {
        &self.passive
    }

    /// Records a failed attempt (see [`PassiveHealth::record_failure`]).
    pub fn record_failure(&self, now_ms: u64, max_fails: u32, fail_timeout_ms: u64) -> Transition {
        let transition = self
            .passive
            .record_failure(now_ms, max_fails, fail_timeout_ms);
        if self.passive.is_down(now_ms) {
            self.set_flag(PASSIVE_DOWN, true);
        }
        transition
    }

    /// Records a good answer (see [`PassiveHealth::record_success`]).
    pub fn record_success(&self) -> Transition {
        let transition = self.passive.record_success();
        if transition == Transition::Up {
            self.set_flag(PASSIVE_DOWN, false);
            // A failure that raced in after the reset has stored its time before setting the bit; if the
            // clear above undid its bit, put it back.
            if self.passive.marked_until() != 0 {
                self.set_flag(PASSIVE_DOWN, true);
            }
        }
        transition
    }

    /// Takes the right to send after a pick (see [`PassiveHealth::claim`]).
    pub fn claim(&self, now_ms: u64, fail_timeout_ms: u64) -> bool {
        self.passive.claim(now_ms, fail_timeout_ms)
    }
}

/// The linear ramp from [`SLOW_START_FLOOR`] to 1 over `duration` (nginx Plus and HAProxy ramp linearly).
pub fn slow_start_share(elapsed: u64, duration: u64) -> f64 {
    let progress = elapsed as f64 / duration.max(1) as f64;
    (SLOW_START_FLOOR + (1.0 - SLOW_START_FLOOR) * progress).clamp(SLOW_START_FLOOR, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_down_and_drain_override_and_keep_the_count() {
        let state = ServerState::default();
        state.enter();
        state.set_active_down(true);
        assert!(!state.selectable(1));
        assert_eq!(state.in_flight(), 1);
        state.set_active_down(false);
        state.set_drained(true);
        assert!(!state.selectable(1));
        state.set_drained(false);
        assert_eq!(state.in_flight_if_selectable(1), Some(1));
    }

    #[test]
    fn passive_down_flag_follows_failures_probe_and_recovery() {
        let state = ServerState::default();
        assert_eq!(state.record_failure(1_000, 1, 500), Transition::Down);
        assert!(!state.selectable(1_200));
        assert!(state.selectable(1_500), "probe due after fail_timeout");
        assert!(state.claim(1_500, 500));
        assert!(!state.selectable(1_600), "the probe holds the slot");
        assert_eq!(state.record_success(), Transition::Up);
        assert_eq!(state.in_flight_if_selectable(1_600), Some(0));
        assert_eq!(state.word.load(Ordering::Relaxed) & FLAGS, 0);
    }

    #[test]
    fn slow_start_ramps_linearly_and_ends() {
        assert!((slow_start_share(0, 1_000) - 0.1).abs() < 1e-9);
        assert!((slow_start_share(500, 1_000) - 0.55).abs() < 1e-9);
        assert!((slow_start_share(5_000, 1_000) - 1.0).abs() < 1e-9);
        let state = ServerState::default();
        state.begin_slow_start(1_000, 1_000);
        let admitted = (0..10_000).filter(|_| state.selectable(1_000)).count();
        // 10% share at the start: 1,000 expected, 4 standard deviations is 120.
        assert!((880..=1_120).contains(&admitted), "{admitted}");
        assert!((state.slow_start_share(1_500) - 0.55).abs() < 1e-9);
        assert_eq!(state.slow_start_share(2_000), 1.0);
        assert_eq!(
            state.word.load(Ordering::Relaxed) & FLAGS,
            0,
            "the ramp clears its flag"
        );
    }
}
