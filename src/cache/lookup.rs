//! Before forwarding: what the cache makes of a request (serve an entry, wait for a fill, or forward).

use std::sync::Arc;
use std::time::SystemTime;

use http::header::{self, HeaderMap};
use http::Method;

use super::share::{SharedHead, Watch};
use super::zone::{Entry, FillLock};
use super::{CacheStatus, RouteCache};
use crate::config::UseStale;

/// What to do with a request of a cached route.
#[derive(Debug)]
pub enum Plan {
    /// Answer with this entry (a HIT, or UPDATING while another request refreshes it).
    Serve(Arc<Entry>, CacheStatus),
    /// Answer with this expired entry (UPDATING) and refresh it in the background under the lock.
    ServeAndRefresh(Arc<Entry>, FillLock),
    /// Answer with the head of the answer another request is filling (a HIT), and follow its body as it
    /// arrives.
    Follow(Arc<SharedHead>, Watch),
    /// Send the request upstream.
    Forward(Pending),
}

/// A request sent upstream by the cache: how its answer is marked and what may replace it.
#[derive(Debug)]
pub struct Pending {
    /// MISS, EXPIRED or BYPASS (the answer's `X-Cache-Status` unless it is replaced).
    pub status: CacheStatus,
    /// The expired entry, served instead of a failure (`cache_use_stale`) or refreshed by a 304.
    pub stale: Option<Arc<Entry>>,
    /// The fill lock, when this request holds it.
    pub lock: Option<FillLock>,
    /// Whether the answer may be stored.
    pub store: bool,
}

impl Pending {
    fn bypass() -> Self {
        Self {
            status: CacheStatus::Bypass,
            stale: None,
            lock: None,
            store: false,
        }
    }
}

/// Decides what the cache does with a request (`method`, `headers`) whose primary key is `primary`:
/// waits (up to `cache_lock`) while another request fills the same key.
pub async fn plan(route: &RouteCache, primary: &str, method: &Method, headers: &HeaderMap) -> Plan {
    if method != Method::GET && method != Method::HEAD {
        return Plan::Forward(Pending::bypass());
    }
    let authorized = headers.contains_key(header::AUTHORIZATION);
    let zone = &route.zone;
    let use_stale = route.config.use_stale;
    let mut waited = false;
    loop {
        let now = SystemTime::now();
        let entry = zone.lookup(primary, headers);
        if let Some(entry) = entry {
            if authorized && !entry.freshness.allows_authorized {
                return Plan::Forward(Pending {
                    store: true,
                    ..Pending::bypass()
                });
            }
            if entry.is_fresh(now) {
                return Plan::Serve(entry, CacheStatus::Hit);
            }
            let may_stale = !entry.freshness.must_revalidate;
            return match zone.try_fill(primary) {
                Ok(lock)
                    if may_stale
                        && use_stale.has(UseStale::UPDATING)
                        && route.config.background_update =>
                {
                    Plan::ServeAndRefresh(entry, lock)
                }
                Ok(lock) => Plan::Forward(Pending {
                    status: CacheStatus::Expired,
                    stale: Some(entry),
                    lock: Some(lock),
                    store: true,
                }),
                Err(_) if may_stale && use_stale.has(UseStale::UPDATING) => {
                    Plan::Serve(entry, CacheStatus::Updating)
                }
                Err(_) => Plan::Forward(Pending {
                    status: CacheStatus::Expired,
                    stale: Some(entry),
                    lock: None,
                    store: true,
                }),
            };
        }
        match zone.try_fill(primary) {
            Ok(lock) => {
                return Plan::Forward(Pending {
                    status: CacheStatus::Miss,
                    stale: None,
                    lock: Some(lock),
                    store: true,
                })
            }
            Err(mut filled) if !waited && !route.config.lock.is_zero() => {
                waited = true;
                // Until the fill's head can be followed, the fill ends (the channel closes) or
                // cache_lock passes; then look again.
                let deadline = tokio::time::Instant::now() + route.config.lock;
                loop {
                    let head = filled.borrow_and_update().head.clone();
                    if let Some(head) = head.filter(|head| {
                        (!authorized || head.allows_authorized)
                            && super::key::variant(primary, &head.vary, headers) == head.variant
                    }) {
                        return Plan::Follow(head, filled);
                    }
                    match tokio::time::timeout_at(deadline, filled.changed()).await {
                        Ok(Ok(())) => continue,
                        _ => break,
                    }
                }
            }
            Err(_) => {
                return Plan::Forward(Pending {
                    status: CacheStatus::Miss,
                    stale: None,
                    lock: None,
                    store: true,
                })
            }
        }
    }
}
