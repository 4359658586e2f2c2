//! A server's latency estimate: a peak-sensitive moving average (Finagle's and Linkerd's "peak EWMA"),
//! kept in two atomic words so every request can update it and every pick read it without a lock.
//!
//! A sample above the estimate replaces it at once (a server that turns slow is seen on its first slow
//! answer); one below is blended in with a weight that grows with the time since the last sample. With
//! no samples the estimate decays toward zero, so a server that has been avoided for a while is tried
//! again and its estimate renewed. Time constant: [`DECAY_MS`].

use std::sync::atomic::{AtomicU64, Ordering};

/// The time constant of the decay: an old estimate keeps 37% of its weight after this long, 14% after
/// twice as long (Linkerd decays over 10 s; a slow server that recovered is back within seconds).
pub const DECAY_MS: f64 = 5_000.0;

/// The estimate of one server, in microseconds, and when it was last changed.
#[derive(Debug, Default)]
pub struct Latency {
    /// `f64` bits of the estimate in microseconds; 0 bits (0.0) until the first sample.
    cost_us: AtomicU64,
    /// [`crate::clock::now_ms`] of the last sample; 0 until the first.
    stamp_ms: AtomicU64,
}

/// The decay factor after `elapsed_ms`.
#[inline]
fn decay(elapsed_ms: u64) -> f64 {
    (-(elapsed_ms as f64) / DECAY_MS).exp()
}

impl Latency {
    /// Adds a sample of `us` microseconds taken at `now_ms`. Concurrent samples may overwrite each other;
    /// an estimate needs no more.
    pub fn observe(&self, us: f64, now_ms: u64) {
        let stamp = self.stamp_ms.swap(now_ms, Ordering::Relaxed);
        let cost = f64::from_bits(self.cost_us.load(Ordering::Relaxed));
        let next = if stamp == 0 || us > cost {
            us
        } else {
            let w = decay(now_ms.saturating_sub(stamp));
            cost * w + us * (1.0 - w)
        };
        self.cost_us.store(next.to_bits(), Ordering::Relaxed);
    }

    /// The estimate at `now_ms` in microseconds, decayed since its last sample; `None` before any sample.
    #[inline]
    pub fn estimate_us(&self, now_ms: u64) -> Option<f64> {
        let stamp = self.stamp_ms.load(Ordering::Relaxed);
        if stamp == 0 {
            return None;
        }
        let cost = f64::from_bits(self.cost_us.load(Ordering::Relaxed));
        // A server sampled this millisecond (a busy one) needs no decay, and no `exp`.
        match now_ms.saturating_sub(stamp) {
            0 => Some(cost),
            elapsed => Some(cost * decay(elapsed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_sample_raises_the_estimate_at_once() {
        let latency = Latency::default();
        assert_eq!(latency.estimate_us(1), None);
        latency.observe(10_000.0, 1_000);
        latency.observe(10_000.0, 1_100);
        latency.observe(500_000.0, 1_200);
        let now = latency.estimate_us(1_200).expect("sampled");
        assert!((now - 500_000.0).abs() < 1.0, "{now}");
    }

    #[test]
    fn fast_samples_bring_it_down_by_how_long_they_took_to_come() {
        let latency = Latency::default();
        latency.observe(500_000.0, 1_000);
        // One fast sample a second later: blended with weight 1 - e^(-1/5).
        latency.observe(10_000.0, 2_000);
        let blended = latency.estimate_us(2_000).expect("sampled");
        let w = (-0.2f64).exp();
        assert!((blended - (500_000.0 * w + 10_000.0 * (1.0 - w))).abs() < 1.0);
        // Fast samples every 100 ms for a minute: the weight goes by time, not by count.
        for tenth in 21..620 {
            latency.observe(10_000.0, tenth * 100);
        }
        let settled = latency.estimate_us(61_900).expect("sampled");
        assert!(settled < 11_000.0, "{settled}");
    }

    #[test]
    fn an_estimate_not_renewed_decays_over_the_time_constant() {
        let latency = Latency::default();
        latency.observe(100_000.0, 1_000);
        let later = latency.estimate_us(6_000).expect("sampled");
        assert!((later - 100_000.0 * (-1.0f64).exp()).abs() < 1.0, "{later}");
        assert!(latency.estimate_us(101_000).expect("sampled") < 10.0);
    }
}
