//! The Redis backend: one round trip per check, an atomic Lua script running the same limit math as
//! [`super::bucket`] on Redis's clock, so every proxy of a fleet shares one limit per key.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use tracing::warn;

use super::bucket::{Decision, Limit};
use crate::clock::now_ms;

/// The nginx excess math of `bucket::check`, in Lua, atomically per key. Returns {allowed, ms, remaining}:
/// for an allowed request ms is its delay, for a refused one the time until it would fit.
const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2]) * 1000
local free = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'e', 'l')
local excess = tonumber(state[1]) or 0
local last = tonumber(state[2])
local after = 0
if last then
  local elapsed = now - last
  if elapsed < 0 then elapsed = 0 end
  after = excess + 1000 - math.floor(rate * elapsed / 1000)
  if after < 0 then after = 0 end
end
if after > burst then
  return {0, math.ceil((after - burst) * 1000 / math.max(rate, 1)), 0}
end
redis.call('HSET', KEYS[1], 'e', after, 'l', now)
redis.call('PEXPIRE', KEYS[1], math.ceil((after + 1000) * 1000 / math.max(rate, 1)) + 1000)
local delay = 0
if free >= 0 then
  local over = after - free * 1000
  if over > 0 then delay = math.floor(over * 1000 / math.max(rate, 1)) end
end
return {1, delay, math.floor((burst - after) / 1000)}
"#;

/// Least time between two connection attempts while Redis is unreachable.
const RECONNECT_EVERY_MS: u64 = 1_000;
/// Least time between two log lines about Redis errors.
const LOG_EVERY_MS: u64 = 10_000;

/// A zone's connection to Redis.
pub struct RedisBackend {
    client: redis::Client,
    url: String,
    zone: String,
    timeout: Duration,
    script: redis::Script,
    connection: Mutex<Option<MultiplexedConnection>>,
    last_attempt_ms: AtomicU64,
    last_log_ms: AtomicU64,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("url", &self.url)
            .field("zone", &self.zone)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// A backend for `zone` at `url` (checked when the config is validated); connects on first use.
    pub fn new(url: &str, zone: &str, timeout: Duration) -> redis::RedisResult<RedisBackend> {
        Ok(RedisBackend {
            client: redis::Client::open(url)?,
            url: url.to_string(),
            zone: zone.to_string(),
            timeout,
            script: redis::Script::new(SCRIPT),
            connection: Mutex::new(None),
            last_attempt_ms: AtomicU64::new(0),
            last_log_ms: AtomicU64::new(0),
        })
    }

    /// Checks one request for `key`; `Err` when Redis did not answer within the timeout (the caller
    /// applies `on_redis_error`).
    pub async fn check(&self, key: u64, limit: Limit) -> Result<Decision, String> {
        let attempt = async {
            let mut connection = self.connection().await?;
            let free = if limit.delay == u64::MAX {
                -1
            } else {
                limit.delay as i64
            };
            let reply: (i64, i64, i64) = self
                .script
                .key(format!("fulcrum:rl:{}:{key:016x}", self.zone))
                .arg(limit.rate_milli)
                .arg(limit.burst)
                .arg(free)
                .invoke_async(&mut connection)
                .await
                .map_err(|e| {
                    // A broken connection is dropped so the next request reconnects.
                    if e.is_io_error() || e.is_connection_dropped() {
                        *self.connection.lock() = None;
                    }
                    e.to_string()
                })?;
            Ok(match reply {
                (1, delay, remaining) => Decision::Allow {
                    delay_ms: delay.max(0) as u64,
                    remaining: remaining.max(0) as u64,
                },
                (_, retry, _) => Decision::Reject {
                    retry_after_ms: retry.max(0) as u64,
                },
            })
        };
        let result = match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {}ms", self.timeout.as_millis())),
        };
        if let Err(error) = &result {
            self.log_error(error);
        }
        result
    }

    async fn connection(&self) -> Result<MultiplexedConnection, String> {
        if let Some(connection) = self.connection.lock().clone() {
            return Ok(connection);
        }
        let now = now_ms();
        let last = self.last_attempt_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < RECONNECT_EVERY_MS {
            return Err("not connected (retrying)".to_string());
        }
        self.last_attempt_ms.store(now, Ordering::Relaxed);
        let connection = self
            .client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        *self.connection.lock() = Some(connection.clone());
        Ok(connection)
    }

    fn log_error(&self, error: &str) {
        let now = now_ms();
        let last = self.last_log_ms.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= LOG_EVERY_MS)
            && self
                .last_log_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            warn!(zone = %self.zone, redis = %self.url, %error, "rate limit: Redis unavailable; following on_redis_error (logged at most every 10s)");
        }
    }
}
