//! The Redis backend: one round trip per check, an atomic Lua script running the same limit math as
//! [`super::bucket`] on Redis's clock, so every proxy of a fleet shares one limit per key.
//!
//! Around it, what keeps a fleet serving through Redis trouble:
//! - a circuit breaker: after [`OPEN_AFTER`] consecutive failures or timeouts the backend stops asking
//!   Redis (checks fail at once, the zone applies `on_redis_error`), and a background task probes Redis
//!   with backoff until it answers, then closes the breaker. Its state is atomics only.
//! - refusals answered locally: a key Redis refused is refused in process until its retry time, so a
//!   flooding client costs Redis one command per refill, not one per request.
//! - Redis Cluster through redis-rs's cluster client (slots, redirections and failovers followed by it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use tracing::{info, warn};

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

/// Consecutive failures (errors or timeouts) that open the breaker.
pub const OPEN_AFTER: u32 = 3;
/// First wait between two probes while the breaker is open; doubled up to [`PROBE_MAX_MS`].
const PROBE_FIRST_MS: u64 = 100;
/// Longest wait between two probes.
const PROBE_MAX_MS: u64 = 2_000;
/// Least time between two connection attempts on the request path (breaker closed).
const RECONNECT_EVERY_MS: u64 = 1_000;
/// Least time between two log lines about single Redis errors (opening and closing are always logged).
const LOG_EVERY_MS: u64 = 10_000;
/// Shards of the refusal cache.
const REFUSAL_SHARDS: usize = 64;
/// Refused keys remembered per shard at most; past it, expired ones are dropped, then the shard is cleared.
const REFUSALS_PER_SHARD: usize = 4_096;

/// A connection to one server or to a cluster; both are cheap clones over one multiplexed link.
#[derive(Clone)]
enum Connection {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

/// How to connect.
enum Client {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

impl Client {
    async fn connect(&self) -> redis::RedisResult<Connection> {
        match self {
            Client::Single(client) => Ok(Connection::Single(
                client.get_multiplexed_async_connection().await?,
            )),
            Client::Cluster(client) => {
                Ok(Connection::Cluster(client.get_async_connection().await?))
            }
        }
    }
}

/// Runs the script on either kind of connection.
async fn invoke<T: redis::FromRedisValue>(
    invocation: &redis::ScriptInvocation<'_>,
    connection: &mut Connection,
) -> redis::RedisResult<T> {
    match connection {
        Connection::Single(c) => invocation.invoke_async(c).await,
        Connection::Cluster(c) => invocation.invoke_async(c).await,
    }
}

/// Sends PING on either kind of connection.
async fn ping(connection: &mut Connection) -> redis::RedisResult<()> {
    let command = redis::cmd("PING");
    let _: redis::Value = match connection {
        Connection::Single(c) => c.req_packed_command(&command).await?,
        Connection::Cluster(c) => c.req_packed_command(&command).await?,
    };
    Ok(())
}

/// Why a check got no answer from Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// The breaker is open: Redis was not asked.
    BreakerOpen,
    /// Redis failed or did not answer in time.
    Failed(String),
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unavailable::BreakerOpen => f.write_str("circuit breaker open"),
            Unavailable::Failed(why) => f.write_str(why),
        }
    }
}

/// The breaker's state: atomics, read on every check without a lock.
struct Breaker {
    failures: AtomicU32,
    open: AtomicBool,
}

/// A zone's connection to Redis.
pub struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    url: String,
    zone: String,
    timeout: Duration,
    script: redis::Script,
    connection: Mutex<Option<Connection>>,
    last_attempt_ms: AtomicU64,
    last_log_ms: AtomicU64,
    breaker: Breaker,
    /// Key hash to the time (ms, this process's clock) until which Redis refuses it.
    refusals: Vec<Mutex<HashMap<u64, u64>>>,
    up: prometheus::IntGauge,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("url", &self.inner.url)
            .field("zone", &self.inner.zone)
            .field("open", &self.inner.breaker.open.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// A backend for `zone` at `urls` (checked when the config is validated; several only with
    /// `cluster`); connects on first use. `up` is set to 1 while the breaker is closed, 0 while open.
    pub fn new(
        urls: &[String],
        cluster: bool,
        zone: &str,
        timeout: Duration,
        up: prometheus::IntGauge,
    ) -> redis::RedisResult<RedisBackend> {
        let client = if cluster {
            Client::Cluster(
                redis::cluster::ClusterClientBuilder::new(urls.iter().map(String::as_str))
                    .connection_timeout(timeout.max(Duration::from_millis(200)))
                    .response_timeout(timeout.max(Duration::from_millis(200)))
                    .build()?,
            )
        } else {
            let Some(url) = urls.first() else {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "no Redis URL",
                )));
            };
            Client::Single(redis::Client::open(url.as_str())?)
        };
        up.set(1);
        Ok(RedisBackend {
            inner: Arc::new(Inner {
                client,
                url: urls.join(","),
                zone: zone.to_string(),
                timeout,
                script: redis::Script::new(SCRIPT),
                connection: Mutex::new(None),
                last_attempt_ms: AtomicU64::new(0),
                last_log_ms: AtomicU64::new(0),
                breaker: Breaker {
                    failures: AtomicU32::new(0),
                    open: AtomicBool::new(false),
                },
                refusals: (0..REFUSAL_SHARDS)
                    .map(|_| Mutex::new(HashMap::new()))
                    .collect(),
                up,
            }),
        })
    }

    /// Whether the breaker is open (Redis is not being asked).
    pub fn is_open(&self) -> bool {
        self.inner.breaker.open.load(Ordering::Relaxed)
    }

    /// Checks one request for `key`. A key Redis refused lately is refused at once; with the breaker
    /// open, `Err` at once; else one round trip, `Err` when Redis did not answer within the timeout (the
    /// caller applies `on_redis_error`).
    pub async fn check(&self, key: u64, limit: Limit) -> Result<Decision, Unavailable> {
        let inner = &self.inner;
        let now = now_ms();
        if let Some(retry_after_ms) = inner.refused_until(key, now) {
            return Ok(Decision::Reject { retry_after_ms });
        }
        if inner.breaker.open.load(Ordering::Acquire) {
            return Err(Unavailable::BreakerOpen);
        }
        let result = match tokio::time::timeout(inner.timeout, inner.ask(key, limit)).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {}ms", inner.timeout.as_millis())),
        };
        match result {
            Ok(decision) => {
                if inner.breaker.failures.load(Ordering::Relaxed) != 0 {
                    inner.breaker.failures.store(0, Ordering::Relaxed);
                }
                if let Decision::Reject { retry_after_ms } = decision {
                    inner.remember_refusal(key, now_ms().saturating_add(retry_after_ms));
                }
                Ok(decision)
            }
            Err(error) => {
                inner.log_error(&error);
                let failures = inner.breaker.failures.fetch_add(1, Ordering::AcqRel) + 1;
                if failures >= OPEN_AFTER
                    && inner
                        .breaker
                        .open
                        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                {
                    inner.up.set(0);
                    warn!(zone = %inner.zone, redis = %inner.url, failures, %error,
                        "rate limit: Redis circuit breaker open; deciding by on_redis_error until Redis answers");
                    // Redis is probed from a task of its own, never on a request's path.
                    tokio::spawn(probe(Arc::clone(&self.inner)));
                }
                Err(Unavailable::Failed(error))
            }
        }
    }
}

/// Probes Redis with backoff (a fresh connection and a PING, each within the timeout) until it answers,
/// then installs that connection and closes the breaker.
async fn probe(inner: Arc<Inner>) {
    let mut wait = PROBE_FIRST_MS;
    // A zone dropped by a reload leaves only this task holding it: stop then.
    while Arc::strong_count(&inner) > 1 {
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let limit = inner.timeout.max(Duration::from_millis(200));
        let attempt = async {
            let mut connection = inner.client.connect().await.map_err(|e| e.to_string())?;
            ping(&mut connection).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(connection)
        };
        if let Ok(Ok(connection)) = tokio::time::timeout(limit, attempt).await {
            *inner.connection.lock() = Some(connection);
            inner.breaker.failures.store(0, Ordering::Relaxed);
            inner.breaker.open.store(false, Ordering::Release);
            inner.up.set(1);
            info!(zone = %inner.zone, redis = %inner.url,
                "rate limit: Redis answers again; circuit breaker closed");
            return;
        }
        wait = (wait * 2).min(PROBE_MAX_MS);
    }
}

impl Inner {
    /// One round trip: the script for `key`.
    async fn ask(&self, key: u64, limit: Limit) -> Result<Decision, String> {
        let mut connection = self.connection().await?;
        let free = if limit.delay == u64::MAX {
            -1
        } else {
            limit.delay as i64
        };
        let mut invocation = self
            .script
            .key(format!("fulcrum:rl:{}:{key:016x}", self.zone));
        invocation.arg(limit.rate_milli).arg(limit.burst).arg(free);
        let reply: (i64, i64, i64) = invoke(&invocation, &mut connection).await.map_err(|e| {
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
    }

    /// The time left until `key` fits again, when Redis refused it lately.
    fn refused_until(&self, key: u64, now: u64) -> Option<u64> {
        let shard = self.refusals[(key as usize) % REFUSAL_SHARDS].lock();
        let until = *shard.get(&key)?;
        (until > now).then(|| until - now)
    }

    fn remember_refusal(&self, key: u64, until: u64) {
        let now = now_ms();
        let mut shard = self.refusals[(key as usize) % REFUSAL_SHARDS].lock();
        if shard.len() >= REFUSALS_PER_SHARD {
            shard.retain(|_, until| *until > now);
            if shard.len() >= REFUSALS_PER_SHARD {
                shard.clear();
            }
        }
        shard.insert(key, until);
    }

    async fn connection(&self) -> Result<Connection, String> {
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
            .connect()
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
            warn!(zone = %self.zone, redis = %self.url, %error, "rate limit: Redis error; following on_redis_error (logged at most every 10s)");
        }
    }
}
