//! Rate limits on the request path: every zone of the route is checked; a refusal answers the zone's
//! status with `Retry-After` and the IETF `RateLimit-Policy` / `RateLimit` headers; requests within a
//! burst without `nodelay` wait (a timer, no thread) before they go on.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Response;
use http_body_util::{Either, Full};
use tracing::{info, warn};

use crate::forward::body::ProxyBody;
use crate::ratelimit::{Decision, DelayedGuard, Zone};
use crate::request::keys::key_hash;
use crate::snapshot::Snapshot;

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The quota an allowed request reports: the most restrictive zone's headers.
#[derive(Debug)]
pub struct Quota {
    policy: HeaderValue,
    remaining: HeaderValue,
}

impl Quota {
    /// Adds `RateLimit-Policy` and `RateLimit` to a response.
    pub fn add_to(self, headers: &mut HeaderMap) {
        headers.insert(RATELIMIT_POLICY.clone(), self.policy);
        headers.insert(RATELIMIT.clone(), self.remaining);
    }
}

/// Checks a route's `zones`; `Err` is the refusal to send, `Ok` the quota to report (if any zone applied).
pub async fn admit(
    snapshot: &Snapshot,
    zones: &[usize],
    request: &http::request::Parts,
    client_ip: IpAddr,
    trace: &mut super::Trace,
) -> Result<Option<Quota>, Response<ProxyBody>> {
    let mut quota: Option<(u64, Quota)> = None;
    let mut delay_ms = 0;
    let mut _held: Vec<DelayedGuard> = Vec::new();
    for zone in zones.iter().filter_map(|&z| snapshot.zones.get(z)) {
        let Some(key) = key_hash(&zone.key, &request.uri, &request.headers, client_ip) else {
            continue;
        };
        let Some(decision) = zone.check(key).await else {
            continue;
        };
        match decision {
            Decision::Reject { retry_after_ms } => {
                if zone.dry_run {
                    zone.metrics.dry_run.inc();
                    trace.rate_limit = "dry_run";
                    info!(zone = %zone.name, client = %client_ip, "rate limit exceeded (dry run, not refused)");
                    continue;
                }
                zone.metrics.rejected.inc();
                trace.rate_limit = "rejected";
                warn!(id = trace.id(), zone = %zone.name, client = %client_ip, path = request.uri.path(), "rate limit exceeded");
                return Err(refusal(zone, retry_after_ms));
            }
            Decision::Allow {
                delay_ms: wait,
                remaining,
            } => {
                if wait > 0 && !zone.dry_run {
                    zone.metrics.delayed.inc();
                    trace.rate_limit = "delayed";
                } else {
                    zone.metrics.allowed.inc();
                    if trace.rate_limit == "none" {
                        trace.rate_limit = "allowed";
                    }
                }
                if wait > 0 && !zone.dry_run {
                    match zone.enter_delay() {
                        Some(guard) => _held.push(guard),
                        None => {
                            warn!(id = trace.id(), zone = %zone.name, "too many delayed requests; refusing");
                            return Err(refusal(zone, wait));
                        }
                    }
                    delay_ms = delay_ms.max(wait);
                }
                let reset_ms = zone
                    .limit
                    .burst
                    .saturating_sub(remaining)
                    .saturating_mul(1_000_000)
                    / zone.limit.rate_milli.max(1);
                if quota.as_ref().is_none_or(|(least, _)| remaining < *least) {
                    if let Some(value) = zone.quota_header(remaining, reset_ms) {
                        quota = Some((
                            remaining,
                            Quota {
                                policy: zone.policy_header.clone(),
                                remaining: value,
                            },
                        ));
                    }
                }
            }
        }
    }
    if delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    }
    Ok(quota.map(|(_, quota)| quota))
}

fn refusal(zone: &Zone, retry_after_ms: u64) -> Response<ProxyBody> {
    let status = zone.status;
    let text = format!(
        "{} {}: rate limit exceeded\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(text))));
    *response.status_mut() = status;
    response.extensions_mut().insert(super::LocalAnswer);
    let retry_after = retry_after_ms.div_ceil(1000).max(1);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    headers.insert(RATELIMIT_POLICY.clone(), zone.policy_header.clone());
    if let Some(value) = zone.quota_header(0, retry_after * 1000) {
        headers.insert(RATELIMIT.clone(), value);
    }
    response
}
