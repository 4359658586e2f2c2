//! The cache on the request path: an entry answers before forwarding, or the upstream's answer is stored
//! (teed into a fill), replaced by a stale entry (`cache_use_stale`) or confirmed by a 304.

use std::sync::Arc;
use std::time::SystemTime;

use http::header::{self, HeaderMap};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};

use super::{LocalAnswer, ProxyService, Routed, Trace};
use crate::cache::policy::{self, Conditional};
use crate::cache::{self, CacheStatus, Entry, Fill, FillHead, Pending, Plan, RouteCache};
use crate::config::UseStale;
use crate::forward::body::{ProxyBody, UpstreamBody};
use crate::forward::{forward, Forward, UpstreamResponse};
use crate::message::body::BodyLimits;
use crate::message::error::ProxyError;
use crate::snapshot::Snapshot;

/// A request of a cached route: its route cache and key, made before the request is rewritten.
#[derive(Debug)]
pub(super) struct CacheRequest {
    route: Arc<RouteCache>,
    primary: String,
    path: String,
}

impl CacheRequest {
    /// The cache part of a request to `route` (its key from the client's host, target and headers).
    pub(super) fn new(
        route: &Arc<RouteCache>,
        host: Option<&http::HeaderValue>,
        uri: &http::Uri,
        headers: &HeaderMap,
    ) -> Self {
        Self {
            route: Arc::clone(route),
            primary: cache::key::primary(&route.config.key, host, uri, headers),
            path: uri.path().to_string(),
        }
    }
}

/// A request the cache sent upstream.
#[derive(Debug)]
pub(super) struct CacheStep {
    route: Arc<RouteCache>,
    primary: String,
    path: String,
    conditional: Conditional,
    /// The request as the policy sees it (method, target, headers), kept before forwarding takes them.
    request: Request<()>,
    pending: Pending,
    /// Conditional headers from the stale entry were sent: a 304 confirms it.
    revalidating: bool,
    /// The client asked with HEAD (its request may have gone upstream as a GET, to fill the entry).
    head: bool,
    /// A background refresh: no client sees its answer, so it is not counted.
    background: bool,
}

impl ProxyService {
    /// Looks the request up: the step to forward with, or the answer from an entry. An expired entry
    /// under `cache_background_update` is answered with and refreshed by a task of its own.
    pub(super) async fn cache_before(
        &self,
        snapshot: &Arc<Snapshot>,
        routed: &mut Routed,
        trace: &Trace,
        request: CacheRequest,
    ) -> Result<Box<CacheStep>, Response<ProxyBody>> {
        let conditional = Conditional::take(&mut routed.parts.headers);
        let head = routed.parts.method == Method::HEAD;
        let plan = cache::plan(
            &request.route,
            &request.primary,
            &routed.parts.method,
            &routed.parts.headers,
        )
        .await;
        let pending = match plan {
            Plan::Serve(entry, status) => {
                return Err(serve(&request.route, &entry, status, head, &conditional))
            }
            Plan::ServeAndRefresh(entry, lock) => {
                let answer = serve(
                    &request.route,
                    &entry,
                    CacheStatus::Updating,
                    head,
                    &conditional,
                );
                let pending = Pending {
                    status: CacheStatus::Expired,
                    stale: Some(entry),
                    lock: Some(lock),
                    store: true,
                };
                let mut parts = routed.parts.clone();
                // A refresh fetches the whole answer, whatever the client's method.
                parts.method = Method::GET;
                let step = Box::new(CacheStep::new(
                    request,
                    &mut parts,
                    pending,
                    Conditional::default(),
                    false,
                    true,
                ));
                self.spawn_refresh(snapshot, routed, parts, trace, step);
                return Err(answer);
            }
            Plan::Follow(shared, watch) => {
                request.route.zone.count(CacheStatus::Hit);
                let (response, body_follows) =
                    cache::follow_answer(&shared, CacheStatus::Hit, head, &conditional);
                return Err(response.map(|()| {
                    if body_follows {
                        Either::Left(UpstreamBody::shared(watch))
                    } else {
                        Either::Right(Full::new(bytes::Bytes::new()))
                    }
                }));
            }
            Plan::Forward(pending) => pending,
        };
        // nginx's proxy_cache_convert_head: a HEAD that may fill the entry fetches the whole answer.
        if head && pending.store {
            routed.parts.method = Method::GET;
        }
        Ok(Box::new(CacheStep::new(
            request,
            &mut routed.parts,
            pending,
            conditional,
            head,
            false,
        )))
    }

    /// Refreshes an expired entry in a task of its own: forwarded as the client's request was, the
    /// answer stored (or the entry confirmed by a 304) as a client's would be.
    fn spawn_refresh(
        &self,
        snapshot: &Arc<Snapshot>,
        routed: &Routed,
        mut parts: http::request::Parts,
        trace: &Trace,
        step: Box<CacheStep>,
    ) {
        let service = self.clone();
        let snapshot = Arc::clone(snapshot);
        let forwarding = routed.forwarding.clone();
        let (client_ip, key_hash, pool_index) =
            (routed.client_ip, routed.key_hash, routed.route.pool);
        let id = trace.id.clone();
        let timeout = self.listener.client_limits.body_timeout;
        let tracker = step.route.background.clone();
        if tracker.is_closed() {
            // Shutting down: the entry stays expired; the next process fetches it.
            return;
        }
        tracker.spawn(async move {
            let Some(pool) = snapshot.pools.get(pool_index) else {
                return;
            };
            let mut trace = Trace::new(id);
            let slot = None;
            let result = forward(Forward {
                pool,
                parts: &mut parts,
                forwarding: forwarding.as_ref(),
                slot: &slot,
                client_ip,
                key_hash,
                body_limits: BodyLimits {
                    max_size: 0,
                    timeout,
                },
                trace: &mut trace,
                started: std::time::Instant::now(),
                watch: None,
            })
            .await;
            let step = match step.settle(&result) {
                Ok(_) => return,
                Err(step) => step,
            };
            let mut response = service.answer(
                result,
                (None, Some(false)),
                client_ip,
                (&snapshot, pool_index),
                trace.id(),
            );
            step.store(&mut response);
            // Read to the end so the fill completes; nobody else reads this answer.
            let mut body = response.into_body();
            while let Some(frame) = body.frame().await {
                if frame.is_err() {
                    break;
                }
            }
        });
    }
}

impl CacheStep {
    fn new(
        request: CacheRequest,
        parts: &mut http::request::Parts,
        pending: Pending,
        conditional: Conditional,
        head: bool,
        background: bool,
    ) -> Self {
        let mut revalidating = false;
        if let Some(stale) = &pending.stale {
            for (name, value) in policy::revalidation(&stale.headers) {
                parts.headers.insert(name, value);
                revalidating = true;
            }
        }
        let mut copy = Request::new(());
        *copy.method_mut() = parts.method.clone();
        *copy.uri_mut() = parts.uri.clone();
        *copy.headers_mut() = parts.headers.clone();
        Self {
            route: request.route,
            primary: request.primary,
            path: request.path,
            conditional,
            request: copy,
            pending,
            revalidating,
            head,
            background,
        }
    }

    /// Before the upstream's answer is made into the client's: the answer that replaces it, if any (a
    /// stale entry instead of a failure, or the entry a 304 confirmed), else the step back.
    pub(super) fn settle(
        self: Box<Self>,
        result: &Result<UpstreamResponse, ProxyError>,
    ) -> Result<Response<ProxyBody>, Box<CacheStep>> {
        let Some(stale) = self.pending.stale.as_ref() else {
            return Err(self);
        };
        if let Ok((response, ..)) = result {
            if response.status() == StatusCode::NOT_MODIFIED && self.revalidating {
                return Ok(self.revalidated(stale, response.headers()));
            }
        }
        let use_stale = self.route.config.use_stale;
        let failed = match result {
            Ok((response, ..)) => use_stale.status(response.status().as_u16()),
            Err(ProxyError::Timeout) => use_stale.has(UseStale::TIMEOUT),
            Err(
                ProxyError::Connect(_)
                | ProxyError::Upstream(_)
                | ProxyError::NoServer
                | ProxyError::NoHealthyServer { .. }
                | ProxyError::Overloaded { .. },
            ) => use_stale.has(UseStale::ERROR),
            Err(_) => false,
        };
        if failed && !stale.freshness.must_revalidate {
            return Ok(self.answer_with(stale, CacheStatus::Stale));
        }
        Err(self)
    }

    /// The server confirmed the stale entry: stored again with the 304's fields, and served.
    fn revalidated(&self, stale: &Arc<Entry>, fresh: &HeaderMap) -> Response<ProxyBody> {
        let now = SystemTime::now();
        let headers = policy::refreshed(&stale.headers, fresh);
        let vary = cache::key::vary_names(&headers);
        let Some((freshness, vary)) = policy::freshness(
            &self.route.config,
            &self.request,
            stale.status,
            &headers,
            now,
        )
        .zip(vary) else {
            return self.answer_with(stale, CacheStatus::Revalidated);
        };
        let entry = Entry::new(
            stale.status,
            headers,
            stale.body.clone(),
            freshness,
            self.primary.clone(),
            self.path.clone(),
        );
        let answer = self.answer_with(&entry, CacheStatus::Revalidated);
        self.route.zone.insert(entry, vary, self.request.headers());
        answer
    }

    fn answer_with(&self, entry: &Entry, status: CacheStatus) -> Response<ProxyBody> {
        if self.background {
            return Response::new(Either::Right(Full::new(bytes::Bytes::new())));
        }
        serve(&self.route, entry, status, self.head, &self.conditional)
    }

    /// After the upstream's answer is made into the client's: marked with its cache status and, when it
    /// may be stored, teed into a fill that stores it once it ends whole.
    pub(super) fn store(self, response: &mut Response<ProxyBody>) {
        let status = self.pending.status;
        if !self.background {
            self.route.zone.count(status);
        }
        let head_as_get = self.head && self.request.method() == Method::GET;
        if self.pending.store && response.extensions().get::<LocalAnswer>().is_none() {
            self.fill(response);
        }
        if head_as_get {
            // The client asked for the head only. Dropping the body leaves a fill, if one started, to
            // read the rest in a task of its own (see UpstreamBody's drop).
            drop(std::mem::replace(
                response.body_mut(),
                Either::Right(Full::new(bytes::Bytes::new())),
            ));
        }
        response
            .headers_mut()
            .insert(cache::X_CACHE_STATUS.clone(), status.header_value());
    }

    fn fill(self, response: &mut Response<ProxyBody>) {
        let now = SystemTime::now();
        let status = response.status();
        let Some(freshness) = policy::freshness(
            &self.route.config,
            &self.request,
            status,
            response.headers(),
            now,
        ) else {
            return;
        };
        let Some(vary) = cache::key::vary_names(response.headers()) else {
            return;
        };
        let length = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let headers = response.headers().clone();
        let Either::Left(body) = response.body_mut() else {
            return;
        };
        let head = FillHead {
            zone: Arc::clone(&self.route.zone),
            status,
            headers,
            freshness,
            primary: self.primary,
            path: self.path,
            vary,
            request_headers: self.request.into_parts().0.headers,
            lock: self.pending.lock,
            length,
            share: !self.route.config.lock.is_zero(),
        };
        if let Some(fill) = Fill::start(head) {
            body.attach_fill(Box::new(fill));
        }
    }
}

/// The answer from `entry`, counted under `status`.
fn serve(
    route: &RouteCache,
    entry: &Entry,
    status: CacheStatus,
    head: bool,
    conditional: &Conditional,
) -> Response<ProxyBody> {
    route.zone.count(status);
    cache::entry_answer(entry, status, head, conditional, SystemTime::now())
        .map(|body| Either::Right(Full::new(body)))
}
