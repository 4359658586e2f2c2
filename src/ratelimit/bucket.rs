//! The limit math as a pure function, nginx `limit_req` semantics: a bucket holds the "excess" (requests
//! beyond the rate, in thousandths), which drains at `rate` and may hold at most `burst` requests.

/// One key's bucket: its excess and when it was last updated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Bucket {
    /// Requests above the rate, in thousandths of a request.
    pub excess_milli: u64,
    /// When the excess was last computed, in ms.
    pub last_ms: u64,
}

/// A zone's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Requests per second, in thousandths (10 r/s = 10,000; 30 r/m = 500).
    pub rate_milli: u64,
    /// Requests allowed above the rate.
    pub burst: u64,
    /// Of those, how many go through at once; the rest are delayed to the rate (`u64::MAX` = nodelay).
    pub delay: u64,
}

impl Limit {
    /// The limit a `[ratelimit.NAME]` zone's config sets.
    pub fn of(config: &crate::config::RateLimitConfig) -> Limit {
        Limit {
            rate_milli: config.rate.count * 1000 / config.rate.window_secs.max(1),
            burst: config.burst,
            delay: if config.nodelay {
                u64::MAX
            } else {
                config.delay
            },
        }
    }
}

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Let it through after `delay_ms` (0: at once); `remaining` more requests fit in the burst now.
    Allow {
        /// How long to hold the request.
        delay_ms: u64,
        /// Whole requests left before the bucket is full.
        remaining: u64,
    },
    /// Refuse it; a request fits again after `retry_after_ms`.
    Reject {
        /// Time until the next request would be allowed.
        retry_after_ms: u64,
    },
}

/// Checks one request against `bucket` at `now_ms` and returns the decision and the bucket to store.
/// A clock that went backwards counts as no time passed; a rejected request leaves the bucket unchanged.
pub fn check(bucket: Bucket, now_ms: u64, limit: Limit) -> (Decision, Bucket) {
    // A bucket never used (last_ms 0) has drained completely.
    let drained = if bucket.last_ms == 0 {
        u64::MAX
    } else {
        let elapsed = now_ms.saturating_sub(bucket.last_ms);
        limit.rate_milli.saturating_mul(elapsed) / 1000
    };
    // nginx: excess = max(excess - drained + 1, 0), in thousandths; the request itself adds one.
    let after = bucket
        .excess_milli
        .saturating_add(1000)
        .saturating_sub(drained);
    let burst_milli = limit.burst.saturating_mul(1000);
    if after > burst_milli {
        let wait_milli = after - burst_milli;
        return (
            Decision::Reject {
                retry_after_ms: wait_milli
                    .saturating_mul(1000)
                    .div_ceil(limit.rate_milli.max(1)),
            },
            bucket,
        );
    }
    let delay_ms = match limit.delay {
        u64::MAX => 0,
        free => {
            let over = after.saturating_sub(free.saturating_mul(1000));
            over.saturating_mul(1000) / limit.rate_milli.max(1)
        }
    };
    let remaining = (burst_milli - after) / 1000;
    (
        Decision::Allow {
            delay_ms,
            remaining,
        },
        Bucket {
            excess_milli: after,
            last_ms: now_ms.max(bucket.last_ms).max(1),
        },
    )
}

/// Whether forgetting the bucket changes nothing: the next request would find it as empty as a new one
/// (drained by one request more than its excess).
pub fn is_idle(bucket: Bucket, now_ms: u64, limit: Limit) -> bool {
    let elapsed = now_ms.saturating_sub(bucket.last_ms);
    limit.rate_milli.saturating_mul(elapsed) / 1000 >= bucket.excess_milli.saturating_add(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEN_PER_SECOND_BURST_5: Limit = Limit {
        rate_milli: 10_000,
        burst: 5,
        delay: u64::MAX,
    };

    fn run(limit: Limit, times: &[u64]) -> Vec<Decision> {
        let mut bucket = Bucket::default();
        times
            .iter()
            .map(|&t| {
                let (decision, next) = check(bucket, t, limit);
                bucket = next;
                decision
            })
            .collect()
    }

    fn allowed(decisions: &[Decision]) -> usize {
        decisions
            .iter()
            .filter(|d| matches!(d, Decision::Allow { .. }))
            .count()
    }

    #[test]
    fn a_burst_gets_one_plus_burst_through() {
        let decisions = run(TEN_PER_SECOND_BURST_5, &[1_000; 30]);
        assert_eq!(allowed(&decisions), 6);
        assert_eq!(
            decisions[6],
            Decision::Reject {
                retry_after_ms: 100
            }
        );
    }

    #[test]
    fn the_bucket_drains_at_the_rate() {
        let mut times = vec![1_000; 6];
        times.push(1_100); // one request's worth drained after 100 ms at 10 r/s
        times.push(1_100);
        let decisions = run(TEN_PER_SECOND_BURST_5, &times);
        assert_eq!(allowed(&decisions), 7);
    }

    #[test]
    fn a_long_idle_empties_the_bucket() {
        let mut times = vec![1_000; 10];
        times.extend([1_000_000; 6]);
        assert_eq!(allowed(&run(TEN_PER_SECOND_BURST_5, &times)), 12);
    }

    #[test]
    fn a_clock_going_backwards_drains_nothing() {
        let decisions = run(
            TEN_PER_SECOND_BURST_5,
            &[5_000, 5_000, 5_000, 5_000, 5_000, 5_000, 1_000],
        );
        assert!(matches!(decisions[6], Decision::Reject { .. }));
    }

    #[test]
    fn rates_below_one_per_second_work() {
        let thirty_per_minute = Limit {
            rate_milli: 500,
            burst: 0,
            delay: u64::MAX,
        };
        let decisions = run(thirty_per_minute, &[1_000, 1_500, 2_999, 3_000]);
        assert_eq!(
            decisions
                .iter()
                .map(|d| matches!(d, Decision::Allow { .. }))
                .collect::<Vec<_>>(),
            [true, false, false, true],
            "one request per 2 s: {decisions:?}"
        );
        assert_eq!(
            decisions[1],
            Decision::Reject {
                retry_after_ms: 1_500
            }
        );
    }

    #[test]
    fn burst_zero_allows_exactly_the_rate() {
        let limit = Limit {
            rate_milli: 10_000,
            burst: 0,
            delay: u64::MAX,
        };
        assert_eq!(
            allowed(&run(limit, &[1_000, 1_000, 1_100, 1_150, 1_200])),
            3
        );
    }

    /// The delay of each of six simultaneous requests at 10 r/s, burst 5, with `delay` let through at once.
    fn burst_delays(delay: u64) -> Vec<u64> {
        let limit = Limit {
            rate_milli: 10_000,
            burst: 5,
            delay,
        };
        run(limit, &[1_000; 6])
            .into_iter()
            .map(|d| match d {
                Decision::Allow { delay_ms, .. } => delay_ms,
                Decision::Reject { .. } => u64::MAX,
            })
            .collect()
    }

    #[test]
    fn without_nodelay_requests_in_the_burst_are_spaced_at_the_rate() {
        assert_eq!(burst_delays(0), [0, 100, 200, 300, 400, 500]);
    }

    #[test]
    fn delay_n_lets_the_first_n_through_at_once() {
        assert_eq!(burst_delays(2), [0, 0, 0, 100, 200, 300]);
    }

    #[test]
    fn idle_only_when_forgetting_changes_nothing() {
        let limit = TEN_PER_SECOND_BURST_5;
        let (_, first) = check(Bucket::default(), 1_000, limit);
        assert_eq!(first.excess_milli, 0);
        assert!(
            !is_idle(first, 1_000, limit),
            "a just-used bucket is not idle even at zero excess"
        );
        let (_, second) = check(first, 1_000, limit);
        assert!(!is_idle(second, 1_100, limit));
        assert!(is_idle(second, 1_200, limit));
        // Forgetting an idle bucket gives the same next decision as keeping it.
        assert_eq!(
            check(second, 1_200, limit).0,
            check(Bucket::default(), 1_200, limit).0
        );
    }
}
