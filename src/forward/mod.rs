//! Forwarding with retries: pick a server, send, classify the outcome, account passive health, maybe retry.

pub mod body;
pub mod compress;
pub mod deadline;
mod pick;
pub mod request_buffer;
pub mod response_buffer;
pub mod trace;
pub mod upgrade;

use std::net::IpAddr;
use std::sync::Arc;

use http::request::Parts;
use http::Response;
use tracing::{error, info, warn};

use crate::clock::now_ms;
use crate::config::{AllUnhealthy, LeastTimeMode, RetryOn};
use crate::forward::deadline::{Deadlined, TimedOut, UpstreamWatch};
use crate::forward::pick::{Picked, Picker};
use crate::message::body::{BodyLimits, BodySlot, ClientFault, RequestBody};
use crate::message::error::ProxyError;
use crate::message::headers::Forwarding;
use crate::snapshot::{Pool, Snapshot, TierKind};
use crate::upstream::{InFlightGuard, Server, Transition};
use crate::upstream_client::h1conn::ResponseBody;

/// What one request needs to know to be forwarded.
pub struct Forward<'a> {
    /// The pool to send to.
    pub pool: &'a Pool,
    /// Method, URI, headers (already rewritten); the headers are taken by the last attempt there can be.
    pub parts: &'a mut Parts,
    /// The forwarding fields each attempt sends after the headers.
    pub forwarding: Option<&'a Forwarding>,
    /// The client's body ([`BodySlot::new`]).
    pub slot: &'a Option<Arc<BodySlot>>,
    /// Client address for balancing.
    pub client_ip: IpAddr,
    /// Hash of the pool's key, if it hashes.
    pub key_hash: Option<u64>,
    /// Largest body accepted.
    pub body_limits: BodyLimits,
    /// Where the answering server and its time are noted, for the access log.
    pub trace: &'a mut trace::Trace,
    /// When the request was handed to [`forward`]: the first attempt's send time unless picking waited.
    pub started: std::time::Instant,
    /// The client connection's watchdog, when it enforces the attempts' `read_timeout` (HTTP/1).
    pub watch: Option<&'a dyn UpstreamWatch>,
}

/// An answer from a server and the in-flight guard that must live as long as its body (or tunnel).
pub type UpstreamResponse = (Response<ResponseBody>, InFlightGuard, ServerAt);

/// Where a server sits in its snapshot (its tier and index), and when the attempt that it answered
/// started (for `least_time = "last_byte"`).
#[derive(Debug, Clone, Copy)]
pub struct ServerAt {
    tier: TierKind,
    index: usize,
    sent_at: std::time::Instant,
}

/// The server an upstream response body comes from, so a failure mid-body counts against it.
#[derive(Debug)]
pub struct BodyOrigin {
    /// The snapshot the request was served under.
    pub snapshot: Arc<Snapshot>,
    /// The pool's index in it.
    pub pool: usize,
    /// The server in the pool.
    pub server: ServerAt,
}

impl BodyOrigin {
    /// The pool's `read_timeout`, which also bounds the wait between two reads of the body.
    pub fn read_timeout(&self) -> std::time::Duration {
        self.snapshot
            .pools
            .get(self.pool)
            .map_or(std::time::Duration::from_secs(60), |pool| pool.read_timeout)
    }

    /// The response body failed after its headers were sent (a reset, a short body): one log line, and a
    /// passive failure against the server (the client's stream is cut; nothing can be retried).
    pub fn body_failed(&self, error: &dyn std::fmt::Display) {
        self.count_failure(error, RetryOn::ERROR);
    }

    /// The server sent nothing of the body for `read_timeout`: as [`BodyOrigin::body_failed`], counted
    /// as a timeout.
    pub fn body_timed_out(&self, error: &dyn std::fmt::Display) {
        self.count_failure(error, RetryOn::TIMEOUT);
    }

    fn server(&self) -> Option<&Server> {
        self.snapshot
            .pools
            .get(self.pool)?
            .tier(self.server.tier)?
            .servers
            .get(self.server.index)
    }

    /// The body ended whole: under `least_time = "last_byte"`, the server's latency sample.
    pub fn body_ended(&self) {
        let Some(pool) = self.snapshot.pools.get(self.pool) else {
            return;
        };
        if pool.least_time != LeastTimeMode::LastByte {
            return;
        }
        if let Some(server) = self.server() {
            observe(server, self.server.sent_at.elapsed());
        }
    }

    fn count_failure(&self, error: &dyn std::fmt::Display, kind: u16) {
        let Some(pool) = self.snapshot.pools.get(self.pool) else {
            return;
        };
        let Some(server) = self.server() else {
            return;
        };
        penalise(pool, server, self.server.sent_at.elapsed());
        warn!(pool = %pool.name, server = %server.addr, %error, "upstream response body failed after its headers; the client's response is cut");
        if pool.retry_on.has(kind) {
            server.metrics.passive_failures.inc();
            note_transition(pool, server, server.record_failure(now_ms()));
        }
    }
}

enum Outcome {
    Answered(UpstreamResponse),
    Failed(ProxyError),
}

/// Sends the request to the pool, retrying on another server when that is safe, and returns one answer.
pub async fn forward(request: Forward<'_>) -> Result<UpstreamResponse, ProxyError> {
    let Forward {
        pool,
        parts,
        forwarding,
        slot,
        client_ip,
        key_hash,
        body_limits,
        trace,
        started,
        watch,
    } = request;
    let replayable_method = crate::message::headers::is_idempotent(&parts.method)
        || pool.retry_on.has(RetryOn::NON_IDEMPOTENT);
    let mut picker = Picker::new(pool, client_ip, key_hash);
    let mut last: Option<Outcome> = None;

    for attempt in 1..=pool.max_attempts {
        let Some(Picked { kind, index, guard }) = picker.next(last.is_none(), attempt).await?
        else {
            break;
        };
        let Some(server) = pool.tier(kind).map(|tier| &tier.servers[index]) else {
            break;
        };
        if attempt > 1 {
            pool.metrics.retries.inc();
        }
        // An attempt sends the request's own headers when a retry cannot need them again: the last
        // attempt there can be, or one on our pool (which leaves them as they were when it fails) unless
        // an answer's status may cause a retry (the answer takes the map). Otherwise it sends a copy
        // (a header map cloned and dropped per attempt).
        let own = attempt == pool.max_attempts
            || (pool.client_for(server).keeps_headers_on_failure()
                && !pool.retry_on.retries_on_status());
        let mut copy = None;
        let headers = if own {
            &mut parts.headers
        } else {
            copy.insert(parts.headers.clone())
        };
        let body = RequestBody::new(slot.clone(), body_limits);
        // The clock read when the request was handed over serves the first attempt, unless picking
        // waited (a queue at `max_conns`).
        let sent_at = if attempt == 1 && !picker.waited() {
            started
        } else {
            std::time::Instant::now()
        };
        let sent = Deadlined::new(
            pool.client_for(server).request(
                (&parts.method, &parts.uri),
                headers,
                forwarding,
                body,
                server,
                pool.protocol,
            ),
            watch,
            slot.as_deref().map(BodySlot::progress),
            pool.read_timeout,
            pool.send_timeout,
        )
        .await;
        let outcome = match sent {
            Ok(Ok(response)) => {
                let status = response.status().as_u16();
                let answered_at = std::time::Instant::now();
                let took = answered_at.saturating_duration_since(sent_at);
                trace.upstream = Some(server.addr.clone());
                trace.upstream_time = Some(took);
                trace.answered_at = Some(answered_at);
                server.metrics.count_status(status);
                server.metrics.upstream_response.observe(took.as_secs_f64());
                let at = ServerAt {
                    tier: kind,
                    index,
                    sent_at,
                };
                if !pool.retry_on.status_counts(status) {
                    // A body that is already over has its last byte now.
                    if pool.least_time == LeastTimeMode::Header
                        || http_body::Body::is_end_stream(response.body())
                    {
                        observe(server, took);
                    }
                    note_transition(pool, server, server.state.record_success());
                    return Ok((response, guard, at));
                }
                warn!(id = trace.id(), pool = %pool.name, server = %server.addr, status, attempt, "upstream answered with a failure status");
                Outcome::Answered((response, guard, at))
            }
            Ok(Err(error)) => {
                // The client's own body failed (too large, malformed chunks, cut short): its fault, so a
                // 4xx, no passive failure against the server and no retry.
                match slot.as_ref().and_then(|s| s.client_fault()) {
                    Some(ClientFault::TooLarge) => return Err(ProxyError::BodyTooLarge),
                    Some(ClientFault::Malformed) => {
                        warn!(id = trace.id(), pool = %pool.name, server = %server.addr, "the client's request body was malformed or cut short");
                        return Err(ProxyError::BadRequestBody);
                    }
                    Some(ClientFault::TimedOut) => {
                        warn!(id = trace.id(), pool = %pool.name, server = %server.addr, timeout = ?body_limits.timeout, "client_body_timeout passed while reading the request body");
                        return Err(ProxyError::BodyTimeout);
                    }
                    None => {}
                }
                warn!(id = trace.id(), pool = %pool.name, server = %server.addr, %error, attempt, "upstream attempt failed");
                Outcome::Failed(error)
            }
            Err(TimedOut::Read) => {
                warn!(id = trace.id(), pool = %pool.name, server = %server.addr, timeout = ?pool.read_timeout, attempt, "upstream timed out (read_timeout) waiting for the answer");
                Outcome::Failed(ProxyError::Timeout)
            }
            Err(TimedOut::Send) => {
                warn!(id = trace.id(), pool = %pool.name, server = %server.addr, timeout = ?pool.send_timeout, attempt, "upstream timed out (send_timeout): it did not read the request");
                Outcome::Failed(ProxyError::Timeout)
            }
        };
        let counts = match &outcome {
            Outcome::Answered(_) => true,
            Outcome::Failed(ProxyError::Timeout) => pool.retry_on.has(RetryOn::TIMEOUT),
            Outcome::Failed(_) => pool.retry_on.has(RetryOn::ERROR),
        };
        if !matches!(
            outcome,
            Outcome::Failed(
                ProxyError::BodyTooLarge | ProxyError::BadRequestBody | ProxyError::BodyTimeout
            )
        ) {
            penalise(pool, server, sent_at.elapsed());
        }
        if counts {
            server.metrics.passive_failures.inc();
            let transition = server.record_failure(now_ms());
            note_transition(pool, server, transition);
        }
        let body_untouched = slot.as_ref().is_none_or(|s| !s.touched());
        let never_sent = matches!(outcome, Outcome::Failed(ProxyError::Connect(_)));
        let retry = counts && body_untouched && (replayable_method || never_sent);
        last = Some(outcome);
        if !retry {
            break;
        }
    }

    match last {
        Some(Outcome::Answered(response)) => Ok(response),
        Some(Outcome::Failed(error)) => Err(error),
        None if pool.servers().next().is_none() => {
            // Every name of the pool resolved to no address (service discovery): nothing to try yet.
            error!(id = trace.id(), pool = %pool.name, "the pool has no server now (its names have no address): answering 503");
            Err(ProxyError::NoHealthyServer { retry_after: 1 })
        }
        None if pool.all_unhealthy == Some(AllUnhealthy::FailClosed) => {
            error!(id = trace.id(), pool = %pool.name, "no healthy upstream server: answering 503 (all_unhealthy = fail_closed)");
            let retry_after = pool.health_check.as_ref().map_or(1, |check| {
                check.interval.as_secs_f64().ceil().max(1.0) as u64
            });
            Err(ProxyError::NoHealthyServer { retry_after })
        }
        None => {
            error!(id = trace.id(), pool = %pool.name, "no upstream server available: every server and backup is down or was tried");
            Err(ProxyError::NoServer)
        }
    }
}

/// Adds `took` to the server's latency estimate.
fn observe(server: &Server, took: std::time::Duration) {
    server
        .state
        .latency()
        .observe(took.as_secs_f64() * 1e6, now_ms());
}

/// A failure must not look fast to `least_time`: it counts as a sample of at least the pool's
/// `read_timeout`, capped at [`PENALTY_CAP`], or of how long it took if that was longer.
fn penalise(pool: &Pool, server: &Server, took: std::time::Duration) {
    observe(server, took.max(pool.read_timeout.min(PENALTY_CAP)));
}

/// The most a fast failure counts as: long enough to lose every pick against a working server, short
/// enough that the estimate decays back within half a minute.
const PENALTY_CAP: std::time::Duration = std::time::Duration::from_secs(1);

fn note_transition(pool: &Pool, server: &Server, transition: Transition) {
    match transition {
        Transition::Down => {
            pool.all_metrics
                .transition(&pool.name, server.addr.as_str(), "down", "passive")
        }
        Transition::Up => {
            pool.all_metrics
                .transition(&pool.name, server.addr.as_str(), "up", "passive")
        }
        Transition::None => {}
    }
    match transition {
        Transition::Down => warn!(
            pool = %pool.name,
            server = %server.addr,
            fails = server.state.passive().fails(),
            fail_timeout_ms = server.fail_timeout_ms,
            "server marked down after max_fails failures"
        ),
        Transition::Up => {
            server.state.begin_slow_start(now_ms(), pool.slow_start_ms);
            info!(pool = %pool.name, server = %server.addr, "server back up");
        }
        Transition::None => {}
    }
}
