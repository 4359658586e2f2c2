//! A cheap monotonic millisecond clock shared by health accounting, connection timeouts and the upstream
//! pools' idle times.
//!
//! Millisecond timestamps taken several times per request (a connection's idle and head times, the
//! picker's health windows, a pooled connection's idle start) do not need a precise clock: on Linux they
//! read `CLOCK_MONOTONIC_COARSE`, the time of the last timer tick (1-4 ms resolution), which the vDSO
//! returns without reading the CPU's time-stamp counter. Elsewhere they read `Instant`. Latencies that
//! are reported (metrics, access log) keep using `Instant`.

use std::sync::OnceLock;

/// Milliseconds since the process first asked, plus one, so that 0 can mean "never" in atomics.
pub fn now_ms() -> u64 {
    let start = *START.get_or_init(raw_ms);
    raw_ms().saturating_sub(start) + 1
}

static START: OnceLock<u64> = OnceLock::new();

/// Milliseconds on the coarse monotonic clock (its own origin).
#[cfg(target_os = "linux")]
fn raw_ms() -> u64 {
    use nix::time::{clock_gettime, ClockId};
    match clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE) {
        Ok(now) => {
            let secs = u64::try_from(now.tv_sec()).unwrap_or(0);
            let nanos = u64::try_from(now.tv_nsec()).unwrap_or(0);
            secs.saturating_mul(1000).saturating_add(nanos / 1_000_000)
        }
        // The clock exists on every Linux since 2.6.32; should it fail, the precise one serves.
        Err(_) => instant_ms(),
    }
}

#[cfg(not(target_os = "linux"))]
fn raw_ms() -> u64 {
    instant_ms()
}

/// Milliseconds on `Instant`, from the first time this is asked.
fn instant_ms() -> u64 {
    static ORIGIN: OnceLock<std::time::Instant> = OnceLock::new();
    let origin = ORIGIN.get_or_init(std::time::Instant::now);
    u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_starts_above_zero_and_follows_a_sleep() {
        let before = now_ms();
        assert!(before >= 1);
        std::thread::sleep(std::time::Duration::from_millis(30));
        let after = now_ms();
        // The coarse clock may lag the sleep by one tick (at most 10 ms at HZ=100).
        assert!(after >= before + 20, "{before} -> {after}");
        assert!(after < before + 5_000, "{before} -> {after}");
    }
}
