//! Per-client rate limits: zones defined once and shared by every route that names them, nginx
//! `limit_req` semantics (burst, nodelay, delay), local sharded buckets that survive reloads.

pub mod bucket;
pub mod redis;
pub mod store;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::StatusCode;

pub use bucket::{Decision, Limit};
pub use store::Store;

use crate::config::{HashKey, OnRedisError, RateLimitConfig};

/// Requests a zone may hold back (without nodelay) at once; past it, requests are refused.
pub const MAX_DELAYED: usize = 10_000;

/// One zone as a snapshot sees it: its settings and its (shared, reload-surviving) buckets.
#[derive(Debug)]
pub struct Zone {
    /// The zone's name.
    pub name: String,
    /// What identifies a client.
    pub key: HashKey,
    /// The limit.
    pub limit: Limit,
    /// Status of a refusal.
    pub status: StatusCode,
    /// Count and log, never refuse or delay.
    pub dry_run: bool,
    /// `RateLimit-Policy` header value, made once.
    pub policy_header: http::HeaderValue,
    /// The quota window in seconds, for the `RateLimit` header.
    pub window_secs: u64,
    /// The buckets (local backend).
    pub store: Arc<Store>,
    /// The shared buckets (Redis backend), and what to do when Redis does not answer.
    pub redis: Option<(Arc<redis::RedisBackend>, OnRedisError)>,
    /// With `on_redis_error = "local"`: this proxy's share of the limit (`rate / fleet_size`,
    /// `burst / fleet_size` but at least 1 when burst is set), checked against `store`.
    pub local_limit: Limit,
    /// Requests held back right now.
    pub delayed: Arc<AtomicUsize>,
    /// Decision counters.
    pub metrics: crate::metrics::ZoneMetrics,
}

impl Zone {
    /// Builds a zone over `store`.
    pub fn new(
        config: &RateLimitConfig,
        store: Arc<Store>,
        delayed: Arc<AtomicUsize>,
        redis: Option<Arc<redis::RedisBackend>>,
        metrics: crate::metrics::ZoneMetrics,
    ) -> Zone {
        let (on_error, fleet_size) = match &config.backend {
            crate::config::RateLimitBackend::Redis {
                on_error,
                fleet_size,
                ..
            } => (*on_error, (*fleet_size).max(1)),
            crate::config::RateLimitBackend::Local => (OnRedisError::Allow, 1),
        };
        let limit = Limit::of(config);
        let local_limit = share(limit, fleet_size);
        let policy = format!(
            "\"{}\";q={};w={}",
            config.name, config.rate.count, config.rate.window_secs
        );
        Zone {
            name: config.name.clone(),
            key: config.key.clone(),
            limit,
            local_limit,
            status: StatusCode::from_u16(config.status).unwrap_or(StatusCode::TOO_MANY_REQUESTS),
            dry_run: config.dry_run,
            policy_header: http::HeaderValue::from_str(&policy)
                .unwrap_or_else(|_| http::HeaderValue::from_static("\"zone\"")),
            window_secs: config.rate.window_secs,
            store,
            redis: redis.map(|backend| (backend, on_error)),
            delayed,
            metrics,
        }
    }

    /// Checks one request for `key` against this zone's backend; a Redis that does not answer gives
    /// `None` (let through) or a refusal, as `on_redis_error` says.
    pub async fn check(&self, key: u64) -> Option<Decision> {
        match &self.redis {
            None => Some(self.store.check(key, crate::clock::now_ms(), self.limit)),
            Some((backend, on_error)) => match backend.check(key, self.limit).await {
                Ok(decision) => Some(decision),
                Err(_) => match on_error {
                    OnRedisError::Allow => None,
                    OnRedisError::Deny => Some(Decision::Reject {
                        retry_after_ms: 1_000,
                    }),
                    OnRedisError::Local => Some(self.store.check(
                        key,
                        crate::clock::now_ms(),
                        self.local_limit,
                    )),
                },
            },
        }
    }

    /// The `RateLimit` header value for `remaining` requests and a reset in `reset_ms`.
    pub fn quota_header(&self, remaining: u64, reset_ms: u64) -> Option<http::HeaderValue> {
        let value = format!(
            "\"{}\";r={remaining};t={}",
            self.name,
            reset_ms.div_ceil(1000)
        );
        http::HeaderValue::from_str(&value).ok()
    }

    /// Takes a place among the delayed requests, if one is free.
    pub fn enter_delay(&self) -> Option<DelayedGuard> {
        let before = self.delayed.fetch_add(1, Ordering::AcqRel);
        let guard = DelayedGuard(Arc::clone(&self.delayed));
        (before < MAX_DELAYED).then_some(guard)
    }
}

/// One proxy's share of `limit` when `fleet_size` proxies share it: the rate divided (at least one
/// thousandth of a request per second), the burst divided but at least 1 when there is one, and the
/// requests let through at once capped by that burst.
pub fn share(limit: Limit, fleet_size: u64) -> Limit {
    let fleet_size = fleet_size.max(1);
    let burst = if limit.burst == 0 {
        0
    } else {
        (limit.burst / fleet_size).max(1)
    };
    Limit {
        rate_milli: (limit.rate_milli / fleet_size).max(1),
        burst,
        delay: if limit.delay == u64::MAX {
            u64::MAX
        } else {
            limit.delay.min(burst)
        },
    }
}

/// Holds one place among a zone's delayed requests.
#[derive(Debug)]
pub struct DelayedGuard(Arc<AtomicUsize>);

impl Drop for DelayedGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fleet_share_divides_rate_and_burst() {
        let limit = Limit {
            rate_milli: 30_000,
            burst: 9,
            delay: u64::MAX,
        };
        let one = share(limit, 3);
        assert_eq!(one.rate_milli, 10_000);
        assert_eq!(one.burst, 3);
        assert_eq!(share(limit, 1), limit);
        let small = share(
            Limit {
                rate_milli: 2_000,
                burst: 2,
                delay: 2,
            },
            5,
        );
        assert_eq!((small.rate_milli, small.burst, small.delay), (400, 1, 1));
        let no_burst = share(
            Limit {
                rate_milli: 1_000,
                burst: 0,
                delay: u64::MAX,
            },
            4,
        );
        assert_eq!((no_burst.rate_milli, no_burst.burst), (250, 0));
    }
}
