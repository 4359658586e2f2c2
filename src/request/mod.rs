//! The per-request service: route, check limits, rewrite headers, forward, answer.

mod answer;
mod cached;
pub mod client_ip;
mod compression;
mod framing;
mod host;
pub mod keys;
mod limits;
mod listener_context;
mod redirect;
pub mod request_id;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response};
use http_body::Body as _;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tracing::{debug, warn};

use crate::forward::body::{PendingLog, ProxyBody, UpstreamBody};
use crate::forward::trace::access_entry;
pub use crate::forward::trace::Trace;
use crate::forward::{deadline, forward, request_buffer, upgrade, Forward};
use crate::message::body::{BodyLimits, BodySlot};
use crate::message::error::ProxyError;
use crate::message::headers;
use crate::router;
use crate::snapshot::Snapshot;
pub(crate) use answer::{local_answer, route_answer, LocalAnswer};
pub use listener_context::ListenerContext;

/// Headers the proxy may add to a request's map: X-Request-Id, and the four of [`headers::Forwarding`]
/// when the upstream's client is not our HTTP/1.1 pool. The HTTP/1 server makes a request's map with
/// room for them (`http1::Builder::header_room`, our hyper patch).
pub const ADDED_HEADERS: usize = 5;

/// Serves the requests of one client connection.
#[derive(Debug, Clone)]
pub struct ProxyService {
    listener: Arc<ListenerContext>,
    /// The connection's peer, its address formatted once for the forwarding headers.
    peer: headers::Peer,
}

impl ProxyService {
    /// A service for a connection from `peer` on the listener `listener` describes.
    pub fn new(listener: Arc<ListenerContext>, peer: SocketAddr) -> Self {
        Self {
            listener,
            peer: headers::Peer::new(peer.ip()),
        }
    }

    /// The listener's client limits.
    pub fn client_limits(&self) -> &crate::config::ClientLimits {
        &self.listener.client_limits
    }

    /// The checks that need no upstream (target length, `Host`, redirect, framing) and the route; the
    /// request comes back taken apart, or the answer to send instead. A route without rate-limit zones is
    /// also [`Self::prepare`]d here; one with zones is after they let it through.
    #[expect(
        clippy::result_large_err,
        reason = "the answer is sent as it is; boxing it would add an allocation to every local answer"
    )]
    fn route(
        &self,
        snapshot: &Snapshot,
        mut request: Request<Incoming>,
        trace: &mut Trace,
    ) -> Result<Routed, Response<ProxyBody>> {
        let client_ip = client_ip::real_client_ip(
            self.peer.ip,
            request.headers(),
            &snapshot.config.global.trusted_proxies,
        );
        trace.client = Some(client_ip);
        let target = request
            .uri()
            .path_and_query()
            .map_or(0, |pq| pq.as_str().len());
        if target > self.listener.client_limits.max_uri_size {
            warn!(id = trace.id(), client = %client_ip, length = target, limit = self.listener.client_limits.max_uri_size, "request target longer than max_uri_size");
            return Err(local_answer(&ProxyError::UriTooLong));
        }
        let scan = framing::scan(request.headers());
        let host = match host::request_host(&request, scan.host) {
            Ok(host) => host,
            Err(()) => {
                warn!(id = trace.id(), client = %client_ip, "request without exactly one valid Host");
                return Err(local_answer(&ProxyError::BadHost));
            }
        };
        if let Some(port) = self.listener.https_redirect {
            if let Some(answer) = redirect::to_https(&request, host.as_ref(), port) {
                return Err(answer);
            }
        }
        // The body is re-framed for the upstream, so a transfer coding other than chunked (gzip, ...) would
        // be silently dropped: refuse it, as nginx does.
        if !scan.transfer_encoding_is_plain {
            warn!(id = trace.id(), client = %client_ip, "unsupported transfer-encoding");
            return Err(local_answer(&ProxyError::UnsupportedTransferEncoding));
        }
        if let Some(name) = scan.lookalike {
            warn!(id = trace.id(), client = %client_ip, header = %name, "header name that reads as a framing header");
            return Err(local_answer(&ProxyError::LookalikeFramingHeader));
        }
        let (content_length, asks_upgrade) = (scan.content_length, scan.asks_upgrade);
        let path = request.uri().path();
        let Some(route) = snapshot
            .router
            .find(host.as_ref().and_then(|h| h.to_str().ok()), path)
        else {
            warn!(id = trace.id(), client = %client_ip, host = ?host, path, "no route");
            return Err(local_answer(&ProxyError::NoRoute));
        };
        trace.route = Some(route.index);
        trace.log = route.access_log;
        if let Some(answer) = route.rules.as_ref().and_then(|rules| rules.answer.as_ref()) {
            let mut response = route_answer(answer);
            if let Some(rules) = &route.rules {
                rules.response_headers.apply(response.headers_mut());
            }
            return Err(response);
        }
        // Only the protocols the route allows go upstream; without one the request goes as a plain one
        // (hop-by-hop stripping drops `Upgrade` and its mention in `Connection`).
        let allowed_upgrade = (asks_upgrade && request.version() == http::Version::HTTP_11)
            .then(|| request.headers().get(header::UPGRADE))
            .flatten()
            .and_then(|asked| {
                let allowed = upgrade::allowed_protocols(asked, &route.upgrades);
                if allowed.is_none() {
                    debug!(id = trace.id(), client = %client_ip, upgrade = ?asked, "upgrade to a protocol the route does not allow: removed");
                }
                allowed
            });
        // An upgrade is a tunnel, not an answer to keep: it never goes through the cache.
        let cache = route.cache.as_ref().filter(|_| !asks_upgrade).map(|cache| {
            Box::new(cached::CacheRequest::new(
                cache,
                host.as_ref(),
                request.uri(),
                request.headers(),
            ))
        });
        // Read from the client's request before a route's rules rewrite it for the upstream (removing
        // Accept-Encoding there is how the upstream is asked for a plain answer we compress).
        let compress =
            compression::negotiate_request(&request, route.compress, &snapshot.config.compression);
        let route = RouteAt {
            pool: route.pool,
            max_body_size: route.max_body_size,
            zones: (!route.zones.is_empty()).then(|| Arc::clone(&route.zones)),
            buffering: route.buffering,
            request_buffering: route.request_buffering,
            rules: route.rules.clone(),
            compress,
        };
        let client_upgrade =
            allowed_upgrade.map(|protocol| (protocol, hyper::upgrade::on(&mut request)));
        let (parts, body) = request.into_parts();
        let mut routed = Routed {
            parts,
            body: Some(body),
            client_ip,
            content_length,
            host,
            route,
            client_upgrade,
            key_hash: None,
            forwarding: None,
            cache,
        };
        if routed.route.zones.is_none() {
            self.prepare(snapshot, &mut routed, trace)?;
        }
        Ok(routed)
    }

    /// After the rate limits: the body-size check, the pool's hash key ([`Routed::key_hash`]), and the
    /// headers rewritten for the upstream (hop-by-hop out, the forwarding fields made).
    #[expect(
        clippy::result_large_err,
        reason = "the answer is sent as it is; boxing it would add an allocation to every local answer"
    )]
    fn prepare(
        &self,
        snapshot: &Snapshot,
        routed: &mut Routed,
        trace: &Trace,
    ) -> Result<(), Response<ProxyBody>> {
        let Some(pool) = snapshot.pools.get(routed.route.pool) else {
            return Err(local_answer(&ProxyError::NoRoute));
        };
        if routed
            .content_length
            .is_some_and(|len| len > routed.route.max_body_size)
        {
            warn!(id = trace.id(), client = %routed.client_ip, path = routed.parts.uri.path(), limit = routed.route.max_body_size, "request body larger than max_body_size");
            return Err(local_answer(&ProxyError::BodyTooLarge));
        }
        let parts = &mut routed.parts;
        routed.key_hash = pool
            .hash_key
            .as_ref()
            .and_then(|key| keys::key_hash(key, &parts.uri, &parts.headers, routed.client_ip));
        headers::strip_hop_by_hop(&mut parts.headers);
        routed.forwarding = Some(headers::forwarding(
            &mut parts.headers,
            &self.peer,
            routed.client_ip,
            &self.listener.proto_value,
            routed.host.as_ref(),
        ));
        if let Some((protocol, _)) = &routed.client_upgrade {
            upgrade::restore_upgrade_headers(&mut parts.headers, protocol.clone());
        }
        if let Some(rules) = &routed.route.rules {
            rules.request_headers.apply(&mut parts.headers);
            if let Some((rewrite, prefix)) = &rules.path_rewrite {
                if let Err(why) = router::rewrite_path(&mut parts.uri, rewrite, prefix) {
                    warn!(id = trace.id(), client = %routed.client_ip, path = parts.uri.path(), %why, "the rewritten path is not a valid request target");
                    return Err(local_answer(&ProxyError::NoRoute));
                }
            }
        }
        if let Some(host) = routed.host.take() {
            // Usually it is there already (HTTP/1.1); an insert would still make a full map grow.
            if parts.headers.get(header::HOST) != Some(&host) {
                parts.headers.insert(header::HOST, host);
            }
        }
        Ok(())
    }

    /// The rate limits and the rewrite when the route has zones (else [`Self::prepare`] ran before the
    /// request's future was made), then the upstream's answer.
    async fn proxy(
        &self,
        snapshot: &Arc<Snapshot>,
        routed: &mut Routed,
        trace: &mut Trace,
        watch: Option<&dyn deadline::UpstreamWatch>,
    ) -> Response<ProxyBody> {
        let mut quota = None;
        if let Some(zones) = routed.route.zones.clone() {
            // Boxed: the check's future is large (a Redis round trip fits in it) and only these requests
            // need it.
            let admitted = Box::pin(limits::admit(
                snapshot,
                &zones,
                &routed.parts,
                routed.client_ip,
                trace,
            ))
            .await;
            match admitted {
                Ok(admitted) => quota = admitted,
                Err(refusal) => return refusal,
            }
            if let Err(answer) = self.prepare(snapshot, routed, trace) {
                return answer;
            }
        }
        let mut cache_step = None;
        if let Some(request) = routed.cache.take() {
            match self.cache_before(snapshot, routed, trace, *request).await {
                Err(answer) => {
                    return dress(&self.listener.live, snapshot, &routed.route, quota, answer);
                }
                Ok(step) => cache_step = Some(step),
            }
        }
        let pool_index = routed.route.pool;
        let Some(pool) = snapshot.pools.get(pool_index) else {
            return local_answer(&ProxyError::NoRoute);
        };
        let mut slot = routed.body.take().and_then(BodySlot::new);
        let body_limits = BodyLimits {
            max_size: routed.route.max_body_size,
            timeout: self.listener.client_limits.body_timeout,
        };
        if let Some(client_body) = slot.take_if(|_| {
            routed
                .route
                .request_buffering
                .unwrap_or(pool.buffers.request)
                && routed.client_upgrade.is_none()
                && pool.protocol == crate::config::UpstreamProtocol::Http1
        }) {
            match request_buffer::collect(client_body, body_limits, &pool.buffers, trace.id()).await
            {
                Ok(spooled) => {
                    if let Some(length) = spooled.whole_length() {
                        // A chunked upload goes on with its length, as nginx sends it.
                        routed
                            .parts
                            .headers
                            .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
                    }
                    slot = Some(spooled);
                }
                Err(error) => return local_answer(&error),
            }
        }
        let started = std::time::Instant::now();
        let result = forward(Forward {
            pool,
            parts: &mut routed.parts,
            forwarding: routed.forwarding.as_ref(),
            slot: &slot,
            client_ip: routed.client_ip,
            key_hash: routed.key_hash,
            body_limits,
            trace,
            started,
            watch,
        })
        .await;
        // An answer's time was read when its headers arrived; only a failure needs the clock again.
        let ended = match (&result, trace.answered_at) {
            (Ok(_), Some(at)) => at,
            _ => std::time::Instant::now(),
        };
        let buffering = routed.route.buffering;
        // The cache may answer instead (a stale entry, or the entry a 304 confirmed).
        let (mut response, cache_step) = match cache_step.map(|step| step.settle(&result)) {
            Some(Ok(answer)) => (answer, None),
            settled => (
                self.answer(
                    result,
                    (routed.client_upgrade.take(), buffering),
                    routed.client_ip,
                    (snapshot, pool_index),
                    trace.id(),
                ),
                settled.and_then(Result::err),
            ),
        };
        if let Some(step) = cache_step {
            step.store(&mut response);
        }
        pool.metrics
            .request_duration
            .observe(ended.saturating_duration_since(started).as_secs_f64());
        dress(
            &self.listener.live,
            snapshot,
            &routed.route,
            quota,
            response,
        )
    }

    /// What every answer gets on its way out: the route's status counters, the request ID, and the access
    /// log line (written when the body ends).
    fn finish(
        &self,
        snapshot: &Snapshot,
        trace: Trace,
        pending: Option<Box<PendingLog>>,
        mut response: Response<ProxyBody>,
    ) -> Response<ProxyBody> {
        if let Some(counters) = trace.route.and_then(|r| snapshot.route_metrics.get(r)) {
            let class = usize::from(response.status().as_u16() / 100).clamp(1, 5) - 1;
            counters[class].inc();
        }
        if response.extensions().get::<LocalAnswer>().is_some() {
            self.listener
                .live
                .metrics()
                .local_answer(response.status().as_u16());
        }
        if let Some(mut pending) = pending {
            // Known only once the route is: the line was begun before (from the request's head).
            pending.enabled = trace.log;
            pending.entry.status = response.status().as_u16();
            pending.entry.client = trace.client;
            pending.entry.upstream = trace.upstream.map(|a| a.to_string());
            pending.entry.upstream_time = trace.upstream_time;
            pending.entry.rate_limit = trace.rate_limit;
            match response.body_mut() {
                Either::Left(body) => body.attach_log(pending),
                Either::Right(full) => {
                    pending.entry.bytes = full.size_hint().exact().unwrap_or(0);
                }
            }
        }
        response
            .headers_mut()
            .insert(request_id::X_REQUEST_ID.clone(), trace.id);
        response
    }

    fn answer(
        &self,
        result: Result<crate::forward::UpstreamResponse, ProxyError>,
        (client_upgrade, buffering): (
            Option<(HeaderValue, hyper::upgrade::OnUpgrade)>,
            Option<bool>,
        ),
        client_ip: IpAddr,
        (snapshot, pool_index): (&Arc<Snapshot>, usize),
        id: &str,
    ) -> Response<ProxyBody> {
        let Some(pool) = snapshot.pools.get(pool_index) else {
            return local_answer(&ProxyError::NoRoute);
        };
        match result {
            Ok((mut response, guard, server)) => {
                if upgrade::is_switching(&response)
                    && !client_upgrade.as_ref().is_some_and(|(asked, _)| {
                        upgrade::switches_to_asked(response.headers().get(header::UPGRADE), asked)
                    })
                {
                    // A switch nobody asked for (or to another protocol): never spliced.
                    warn!(id, client = %client_ip, pool = %pool.name, upgrade = ?response.headers().get(header::UPGRADE), "the upstream answered 101 to a protocol that was not asked for: 502");
                    return local_answer(&ProxyError::Upstream(
                        "101 Switching Protocols to a protocol that was not forwarded".to_string(),
                    ));
                }
                let tunnel = match client_upgrade {
                    Some((_, client)) if upgrade::is_switching(&response) => {
                        let protocol = response.headers().get(header::UPGRADE).cloned();
                        if !self
                            .listener
                            .live
                            .tunnels()
                            .splice(client, &mut response, guard)
                        {
                            // Only HTTP/1.1 upstreams switch, and they always hand their connection.
                            warn!(id, client = %client_ip, pool = %pool.name, "a 101 came without its connection: 502");
                            return local_answer(&ProxyError::Upstream(
                                "101 Switching Protocols without an upgraded connection"
                                    .to_string(),
                            ));
                        }
                        protocol
                    }
                    _ => {
                        let (mut parts, body) = response.into_parts();
                        if !crate::upstream_client::h1conn::hop_by_hop_removed(&body) {
                            headers::strip_hop_by_hop(&mut parts.headers);
                        }
                        let buffer = crate::forward::response_buffer::buffers_answer(
                            &mut parts.headers,
                            buffering.unwrap_or(pool.buffers.response),
                            pool.protocol,
                        )
                        .then_some(&pool.buffers);
                        let origin = crate::forward::BodyOrigin {
                            snapshot: Arc::clone(snapshot),
                            pool: pool_index,
                            server,
                        };
                        return Response::from_parts(
                            parts,
                            Either::Left(UpstreamBody::new(body, guard, origin, buffer)),
                        );
                    }
                };
                let (mut parts, _) = response.into_parts();
                headers::strip_hop_by_hop(&mut parts.headers);
                if let Some(protocol) = tunnel {
                    upgrade::restore_upgrade_headers(&mut parts.headers, protocol);
                }
                Response::from_parts(parts, Either::Right(Full::new(Bytes::new())))
            }
            Err(error) => {
                // Upstream failures were logged once per attempt where they happened; one line each.
                let logged = matches!(
                    error,
                    ProxyError::Connect(_)
                        | ProxyError::Upstream(_)
                        | ProxyError::Timeout
                        | ProxyError::NoServer
                        | ProxyError::NoHealthyServer { .. }
                        | ProxyError::BadRequestBody
                        | ProxyError::BodyTimeout
                );
                if !logged {
                    warn!(id, client = %client_ip, pool = %pool.name, status = error.status().as_u16(), %error, "answering with an error");
                }
                local_answer(&error)
            }
        }
    }
}

impl ProxyService {
    /// Answers `request`, handing the response to `deliver` (the connection's wrapping) inside the same
    /// future: it is built once, not built and then moved into a wrapper (every move copies all of its
    /// ~2.4 KB). The caller boxes it.
    pub fn respond<D: Deliver>(
        &self,
        mut request: Request<Incoming>,
        deliver: D,
    ) -> impl Future<Output = D::Output> + Send + 'static {
        // Room for what the proxy adds (request id, forwarding headers) in one step. The HTTP/1 server
        // makes a request's new map that size already (`header_room`); an HTTP/2 request's map, or a
        // reused one, may be sized for the client's headers only.
        request.headers_mut().reserve(ADDED_HEADERS);
        let id = request_id::assign(request.headers_mut());
        let snapshot = self.listener.live.snapshot();
        let pending = snapshot
            .access_log
            .as_ref()
            .map(|log| Box::new(access_entry(&request, &id, Arc::clone(log))));
        let mut trace = Trace::new(id);
        // Everything that needs no waiting is done here, so the boxed future holds only what lives across
        // the wait for the upstream (every byte of it is copied into the box).
        let mut routed = match self.route(&snapshot, request, &mut trace) {
            Ok(routed) => routed,
            Err(answer) => {
                let answer = self.finish(&snapshot, trace, pending, answer);
                return tokio_util::either::Either::Left(std::future::ready(
                    deliver.deliver(answer),
                ));
            }
        };
        let service = self.clone();
        tokio_util::either::Either::Right(async move {
            let watch = deliver.upstream_watch();
            let response = service
                .proxy(&snapshot, &mut routed, &mut trace, watch)
                .await;
            deliver.deliver(service.finish(&snapshot, trace, pending, response))
        })
    }
}

/// What the route does to an answer on its way out: its response header rules and compression (not on
/// the proxy's own answers), then the rate-limit quota fields. A cache entry is stored before this, so it
/// keeps the upstream's answer as it was and each hit is dressed for its own client.
fn dress(
    live: &crate::live::Live,
    snapshot: &Snapshot,
    route: &RouteAt,
    quota: Option<limits::Quota>,
    mut response: Response<ProxyBody>,
) -> Response<ProxyBody> {
    if response.extensions().get::<LocalAnswer>().is_none() {
        if let Some(rules) = &route.rules {
            rules.response_headers.apply(response.headers_mut());
        }
        // After the route's header rules, as nginx's gzip filter runs after add_header: a
        // `Cache-Control: no-transform` set there is honoured.
        let compressed;
        (response, compressed) =
            compression::compress_answer(response, route.compress, &snapshot.config.compression);
        if let Some(algorithm) = compressed {
            live.metrics().compressed(algorithm);
        }
    }
    if let Some(quota) = quota {
        quota.add_to(response.headers_mut());
    }
    response
}

/// What a client connection does with the answer to a request, and what it offers the request meanwhile.
pub trait Deliver: Send + 'static {
    /// What the connection's service returns.
    type Output: Send + 'static;
    /// Hands the answer over (wrapped for the connection).
    fn deliver(self, response: Response<ProxyBody>) -> Self::Output;
    /// The connection's watchdog, when it enforces this request's upstream `read_timeout` (see
    /// [`deadline`]); `None` gives each attempt a timer of its own.
    fn upstream_watch(&self) -> Option<&dyn deadline::UpstreamWatch>;
}

/// A request that passed the checks and found its route, taken apart to be forwarded.
struct Routed {
    parts: http::request::Parts,
    /// Taken when the request is forwarded.
    body: Option<Incoming>,
    client_ip: IpAddr,
    /// The first `Content-Length`, as a number.
    content_length: Option<u64>,
    /// The request's host (`Host` or `:authority`); taken when the headers are rewritten.
    host: Option<HeaderValue>,
    route: RouteAt,
    /// The `Upgrade` protocol asked for and the client's side of the upgrade.
    client_upgrade: Option<(HeaderValue, hyper::upgrade::OnUpgrade)>,
    /// The pool's hash of the request's key, when the pool hashes (set by [`ProxyService::prepare`]).
    key_hash: Option<u64>,
    /// The forwarding fields sent with the request (set by [`ProxyService::prepare`]).
    forwarding: Option<headers::Forwarding>,
    /// The route's cache and the request's key, when the route caches; taken when it is looked up.
    /// Boxed: routes without a cache carry one pointer in the request's future, not the whole key.
    cache: Option<Box<cached::CacheRequest>>,
}

/// What the request path needs of its route, taken out of the snapshot.
#[derive(Debug)]
struct RouteAt {
    pool: usize,
    max_body_size: u64,
    /// The route's rate-limit zones, when it has any.
    zones: Option<Arc<[usize]>>,
    /// The route's `buffering`, when it overrides the pool's.
    buffering: Option<bool>,
    /// The route's `request_buffering`, when it overrides the pool's.
    request_buffering: Option<bool>,
    /// The route's path and header rules, when it has any.
    rules: Option<Arc<router::RouteRules>>,
    /// What the client's `Accept-Encoding` allows for the answer.
    compress: compression::Negotiated,
}
