//! Prometheus metrics: one registry per running proxy; handles for per-request counters are resolved when a
//! snapshot is built (no label lookup or string formatting per request); gauges of live state are read
//! from the snapshot at scrape time.

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Buckets for request and upstream times, in seconds (1 ms to 30 s).
const TIME_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Every metric the proxy exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    route_requests: IntCounterVec,
    local_answers: IntCounterVec,
    request_duration: HistogramVec,
    upstream_response: HistogramVec,
    in_flight: IntGaugeVec,
    healthy: IntGaugeVec,
    latency: GaugeVec,
    servers: IntGaugeVec,
    resolver_errors: IntCounterVec,
    transitions: IntCounterVec,
    passive_failures: IntCounterVec,
    retries: IntCounterVec,
    ratelimit: IntCounterVec,
    cache_requests: IntCounterVec,
    cache_bytes: IntGaugeVec,
    cache_entries: IntGaugeVec,
    cache_evictions: IntCounterVec,
    redis_up: IntGaugeVec,
    connections: IntGaugeVec,
    tls_handshake_failures: IntCounterVec,
    reloads: IntCounterVec,
    last_reload: IntGauge,
    access_log_dropped: IntCounter,
    /// Gauges of the bodies held by request and response buffering.
    buffers: BufferMetrics,
    /// `local_answers` handles for the statuses the proxy answers itself, resolved once.
    local_by_status: Vec<(u16, IntCounter)>,
    /// `fulcrum_compressed_responses_total` by algorithm, in [`crate::config::Algorithm::ALL`] order.
    compressed: [IntCounter; 3],
}

/// Statuses the proxy answers itself (a rate-limit zone may configure another 4xx/5xx).
const LOCAL_STATUSES: [u16; 9] = [404, 413, 429, 501, 502, 503, 504, 400, 308];

/// What request or response buffering holds now, for one direction: handles cloned into every pool.
#[derive(Debug, Clone)]
pub struct BufferGauges {
    /// Body bytes held in memory (`fulcrum_buffer_memory_bytes`).
    pub memory_bytes: IntGauge,
    /// Bytes in open temp files (`fulcrum_buffer_temp_file_bytes`).
    pub temp_file_bytes: IntGauge,
    /// Temp files open now (`fulcrum_buffer_temp_files`).
    pub temp_files: IntGauge,
    /// Temp files made since start (`fulcrum_buffer_temp_files_total`).
    pub temp_files_made: IntCounter,
    /// Bodies that streamed because no temp file could be written (`fulcrum_buffer_fallbacks_total`).
    pub fallback_temp_error: IntCounter,
    /// Answers that streamed the rest once `max_temp_file_size` was reached.
    pub fallback_max_temp_file_size: IntCounter,
}

/// [`BufferGauges`] for requests and for responses.
#[derive(Debug, Clone)]
pub struct BufferMetrics {
    /// Request bodies (`request_buffering`).
    pub request: BufferGauges,
    /// Answers (`buffering`).
    pub response: BufferGauges,
}

impl BufferMetrics {
    fn new(registry: &Registry) -> Self {
        let memory = gauge_vec(
            registry,
            "fulcrum_buffer_memory_bytes",
            "Body bytes held in memory by request and response buffering.",
            &["direction"],
        );
        let file_bytes = gauge_vec(
            registry,
            "fulcrum_buffer_temp_file_bytes",
            "Bytes in the temp files of buffered bodies now.",
            &["direction"],
        );
        let files = gauge_vec(
            registry,
            "fulcrum_buffer_temp_files",
            "Temp files of buffered bodies open now (unlinked at creation).",
            &["direction"],
        );
        let made = counter_vec(
            registry,
            "fulcrum_buffer_temp_files_total",
            "Temp files made for bodies past buffer_size.",
            &["direction"],
        );
        let fallbacks = counter_vec(
            registry,
            "fulcrum_buffer_fallbacks_total",
            "Buffered bodies that streamed instead: no temp file could be written (temp_file_error), or \
             an answer reached max_temp_file_size.",
            &["direction", "reason"],
        );
        let direction = |d: &str| BufferGauges {
            memory_bytes: memory.with_label_values(&[d]),
            temp_file_bytes: file_bytes.with_label_values(&[d]),
            temp_files: files.with_label_values(&[d]),
            temp_files_made: made.with_label_values(&[d]),
            fallback_temp_error: fallbacks.with_label_values(&[d, "temp_file_error"]),
            fallback_max_temp_file_size: fallbacks.with_label_values(&[d, "max_temp_file_size"]),
        };
        BufferMetrics {
            request: direction("request"),
            response: direction("response"),
        }
    }
}

/// `fulcrum_tls_handshake_failures_total` handles of one listener.
#[derive(Debug, Clone)]
pub struct TlsFailureMetrics {
    /// The client's hello was refused (e.g. TLS 1.1 only, no shared cipher) or the handshake broke.
    pub error: IntCounter,
    /// The handshake did not finish within `handshake_timeout`.
    pub timeout: IntCounter,
}

/// Handles for one server, resolved when the snapshot is built.
#[derive(Debug, Clone)]
pub struct ServerMetrics {
    /// `fulcrum_requests_total` by status class 1xx..5xx (index 0..4).
    pub requests_by_class: [IntCounter; 5],
    /// `fulcrum_upstream_response_seconds`.
    pub upstream_response: Histogram,
    /// `fulcrum_passive_failures_total`.
    pub passive_failures: IntCounter,
}

impl ServerMetrics {
    /// Handles counted nowhere, for servers built outside a running proxy (benches, unit tests).
    pub fn detached() -> ServerMetrics {
        let counter =
            || IntCounter::new("detached", "not exported").expect("a valid constant name");
        let histogram = Histogram::with_opts(HistogramOpts::new("detached", "not exported"))
            .expect("a valid constant name");
        ServerMetrics {
            requests_by_class: [counter(), counter(), counter(), counter(), counter()],
            upstream_response: histogram,
            passive_failures: counter(),
        }
    }

    /// Answers counted for this server (every status class).
    pub fn requests_total(&self) -> u64 {
        self.requests_by_class.iter().map(IntCounter::get).sum()
    }

    /// 5xx answers plus failed attempts, for the status page's error rate.
    pub fn errors_total(&self) -> u64 {
        self.requests_by_class[4].get() + self.passive_failures.get()
    }

    /// Counts an answer with `status`.
    #[inline]
    pub fn count_status(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.requests_by_class[class].inc();
    }
}

/// Handles for one pool.
#[derive(Debug, Clone)]
pub struct PoolMetrics {
    /// `fulcrum_request_duration_seconds`.
    pub request_duration: Histogram,
    /// `fulcrum_retries_total`.
    pub retries: IntCounter,
}

/// Handles for one rate-limit zone: allowed, delayed, rejected, dry_run.
#[derive(Debug, Clone)]
pub struct ZoneMetrics {
    /// Let through at once.
    pub allowed: IntCounter,
    /// Let through after a delay.
    pub delayed: IntCounter,
    /// Refused.
    pub rejected: IntCounter,
    /// Over the limit in a dry-run zone (let through).
    pub dry_run: IntCounter,
}

/// Handles for one cache zone.
#[derive(Debug, Clone)]
pub struct CacheZoneMetrics {
    /// Answers by cache status, in the order of the names the zone was made with.
    pub requests: Vec<IntCounter>,
    /// Bytes held (`fulcrum_cache_bytes`).
    pub bytes: IntGauge,
    /// Entries held (`fulcrum_cache_entries`).
    pub entries: IntGauge,
    /// Entries evicted to make room (`fulcrum_cache_evictions_total`).
    pub evictions: IntCounter,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels)
        .expect("metric names are valid constants");
    registry
        .register(Box::new(vec.clone()))
        .expect("each metric is registered once");
    vec
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let vec =
        IntGaugeVec::new(Opts::new(name, help), labels).expect("metric names are valid constants");
    registry
        .register(Box::new(vec.clone()))
        .expect("each metric is registered once");
    vec
}

fn float_gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let vec =
        GaugeVec::new(Opts::new(name, help), labels).expect("metric names are valid constants");
    registry
        .register(Box::new(vec.clone()))
        .expect("each metric is registered once");
    vec
}

fn histogram_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(TIME_BUCKETS.to_vec());
    let vec = HistogramVec::new(opts, labels).expect("metric names are valid constants");
    registry
        .register(Box::new(vec.clone()))
        .expect("each metric is registered once");
    vec
}

impl Default for Metrics {
    fn default() -> Self {
        let r = Registry::new();
        let build = gauge_vec(
            &r,
            "fulcrum_build_info",
            "Build information; always 1.",
            &["version"],
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let last_reload = IntGauge::new(
            "fulcrum_config_last_reload_success_timestamp_seconds",
            "Unix time of the last config load or reload that was applied.",
        )
        .expect("metric names are valid constants");
        r.register(Box::new(last_reload.clone()))
            .expect("each metric is registered once");
        let access_log_dropped = IntCounter::new(
            "fulcrum_access_log_dropped_total",
            "Access log lines dropped because the writer fell behind.",
        )
        .expect("metric names are valid constants");
        r.register(Box::new(access_log_dropped.clone()))
            .expect("each metric is registered once");
        let compressed = counter_vec(
            &r,
            "fulcrum_compressed_responses_total",
            "Answers sent compressed, by content coding.",
            &["algorithm"],
        );
        let compressed =
            crate::config::Algorithm::ALL.map(|a| compressed.with_label_values(&[a.token()]));
        let mut metrics = Metrics {
            requests: counter_vec(
                &r,
                "fulcrum_requests_total",
                "Requests answered by an upstream server, by status class.",
                &["upstream", "server", "code"],
            ),
            route_requests: counter_vec(
                &r,
                "fulcrum_route_requests_total",
                "Answers by route (host and path prefix) and status class.",
                &["route", "code"],
            ),
            local_answers: counter_vec(
                &r,
                "fulcrum_local_responses_total",
                "Answers the proxy made itself, by status.",
                &["code"],
            ),
            request_duration: histogram_vec(
                &r,
                "fulcrum_request_duration_seconds",
                "Time from a request's arrival to its response headers.",
                &["upstream"],
            ),
            upstream_response: histogram_vec(
                &r,
                "fulcrum_upstream_response_seconds",
                "Time from sending to an upstream server to its response headers.",
                &["upstream", "server"],
            ),
            in_flight: gauge_vec(
                &r,
                "fulcrum_server_in_flight",
                "Requests (and tunnels) in flight per server.",
                &["upstream", "server"],
            ),
            latency: float_gauge_vec(
                &r,
                "fulcrum_upstream_server_latency_seconds",
                "Each server's latency estimate (peak EWMA, what least_time picks by); absent before a first answer.",
                &["upstream", "server"],
            ),
            servers: gauge_vec(
                &r,
                "fulcrum_upstream_servers",
                "Servers of each upstream now, found by DNS included (drained ones not counted).",
                &["upstream"],
            ),
            resolver_errors: counter_vec(
                &r,
                "fulcrum_resolver_errors_total",
                "Failed resolutions of resolve = true names (timeout, servfail, nxdomain, ...).",
                &["name", "reason"],
            ),
            healthy: gauge_vec(
                &r,
                "fulcrum_server_healthy",
                "1 when the server takes traffic (not down or drained).",
                &["upstream", "server"],
            ),
            transitions: counter_vec(
                &r,
                "fulcrum_server_transitions_total",
                "Servers going down or up, by cause.",
                &["upstream", "server", "to", "cause"],
            ),
            passive_failures: counter_vec(
                &r,
                "fulcrum_passive_failures_total",
                "Failed attempts counted against a server.",
                &["upstream", "server"],
            ),
            retries: counter_vec(
                &r,
                "fulcrum_retries_total",
                "Attempts made on another server after a failure.",
                &["upstream"],
            ),
            ratelimit: counter_vec(
                &r,
                "fulcrum_ratelimit_decisions_total",
                "Rate-limit decisions by zone and outcome.",
                &["zone", "outcome"],
            ),
            cache_requests: counter_vec(
                &r,
                "fulcrum_cache_requests_total",
                "Answers of cached routes by zone and cache status (HIT, MISS, EXPIRED, ...).",
                &["zone", "status"],
            ),
            cache_bytes: gauge_vec(
                &r,
                "fulcrum_cache_bytes",
                "Bytes (bodies, keys and headers) a cache zone holds.",
                &["zone"],
            ),
            cache_entries: gauge_vec(
                &r,
                "fulcrum_cache_entries",
                "Entries a cache zone holds.",
                &["zone"],
            ),
            cache_evictions: counter_vec(
                &r,
                "fulcrum_cache_evictions_total",
                "Entries evicted (least recently used) to keep a cache zone under max_size.",
                &["zone"],
            ),
            redis_up: gauge_vec(
                &r,
                "fulcrum_ratelimit_redis_up",
                "1 while a Redis zone's circuit breaker is closed (Redis asked), 0 while open.",
                &["zone"],
            ),
            connections: gauge_vec(
                &r,
                "fulcrum_client_connections",
                "Open client connections by listener.",
                &["listener"],
            ),
            tls_handshake_failures: counter_vec(
                &r,
                "fulcrum_tls_handshake_failures_total",
                "TLS handshakes that failed, by listener and reason (error: refused or broken; timeout: \
                 not finished within handshake_timeout).",
                &["listener", "reason"],
            ),
            reloads: counter_vec(
                &r,
                "fulcrum_config_reloads_total",
                "Config reloads by result.",
                &["result"],
            ),
            last_reload,
            access_log_dropped,
            buffers: BufferMetrics::new(&r),
            local_by_status: Vec::new(),
            compressed,
            registry: r,
        };
        metrics.local_by_status = LOCAL_STATUSES
            .iter()
            .map(|&code| {
                let label = code.to_string();
                (
                    code,
                    metrics.local_answers.with_label_values(&[label.as_str()]),
                )
            })
            .collect();
        metrics.mark_reload_success();
        metrics
    }
}

impl Metrics {
    /// Handles for a server of `upstream`.
    pub fn server(&self, upstream: &str, server: &str) -> ServerMetrics {
        let class = |c: &str| self.requests.with_label_values(&[upstream, server, c]);
        ServerMetrics {
            requests_by_class: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            upstream_response: self
                .upstream_response
                .with_label_values(&[upstream, server]),
            passive_failures: self.passive_failures.with_label_values(&[upstream, server]),
        }
    }

    /// Handles for a route, by status class 1xx..5xx.
    pub fn route(&self, route: &str) -> [IntCounter; 5] {
        let class = |c: &str| self.route_requests.with_label_values(&[route, c]);
        [
            class("1xx"),
            class("2xx"),
            class("3xx"),
            class("4xx"),
            class("5xx"),
        ]
    }

    /// Handles for a pool.
    pub fn pool(&self, upstream: &str) -> PoolMetrics {
        PoolMetrics {
            request_duration: self.request_duration.with_label_values(&[upstream]),
            retries: self.retries.with_label_values(&[upstream]),
        }
    }

    /// Handles for a rate-limit zone.
    pub fn zone(&self, zone: &str) -> ZoneMetrics {
        let outcome = |o: &str| self.ratelimit.with_label_values(&[zone, o]);
        ZoneMetrics {
            allowed: outcome("allowed"),
            delayed: outcome("delayed"),
            rejected: outcome("rejected"),
            dry_run: outcome("dry_run"),
        }
    }

    /// The handles of cache zone `zone`, its request counters one per name in `statuses`.
    pub fn cache_zone(&self, zone: &str, statuses: &[&str]) -> CacheZoneMetrics {
        let bytes = self.cache_bytes.with_label_values(&[zone]);
        let entries = self.cache_entries.with_label_values(&[zone]);
        bytes.set(0);
        entries.set(0);
        CacheZoneMetrics {
            requests: statuses
                .iter()
                .map(|status| self.cache_requests.with_label_values(&[zone, status]))
                .collect(),
            bytes,
            entries,
            evictions: self.cache_evictions.with_label_values(&[zone]),
        }
    }

    /// The `fulcrum_ratelimit_redis_up` gauge of a Redis zone.
    pub fn redis_up(&self, zone: &str) -> IntGauge {
        self.redis_up.with_label_values(&[zone])
    }

    /// The open-connections gauge of a listener.
    pub fn connections(&self, listener: &str) -> IntGauge {
        self.connections.with_label_values(&[listener])
    }

    /// The TLS handshake failure counters of a listener.
    pub fn tls_handshake_failures(&self, listener: &str) -> TlsFailureMetrics {
        TlsFailureMetrics {
            error: self
                .tls_handshake_failures
                .with_label_values(&[listener, "error"]),
            timeout: self
                .tls_handshake_failures
                .with_label_values(&[listener, "timeout"]),
        }
    }

    /// The buffering gauges (shared handles).
    pub fn buffers(&self) -> &BufferMetrics {
        &self.buffers
    }

    /// The counter of dropped access log lines.
    pub fn access_log_dropped(&self) -> IntCounter {
        self.access_log_dropped.clone()
    }

    /// Counts an answer sent compressed with `algorithm`.
    pub fn compressed(&self, algorithm: crate::config::Algorithm) {
        if let Some(counter) = self.compressed.get(algorithm.index()) {
            counter.inc();
        }
    }

    /// Counts an answer the proxy made itself.
    pub fn local_answer(&self, status: u16) {
        match self
            .local_by_status
            .iter()
            .find(|(code, _)| *code == status)
        {
            Some((_, counter)) => counter.inc(),
            None => {
                let code = status.to_string();
                self.local_answers.with_label_values(&[code.as_str()]).inc();
            }
        }
    }

    /// Counts a server going `to` "down" or "up" because of `cause` ("passive" or "active").
    pub fn transition(&self, upstream: &str, server: &str, to: &str, cause: &str) {
        self.transitions
            .with_label_values(&[upstream, server, to, cause])
            .inc();
    }

    /// Counts a reload that was refused.
    pub fn mark_reload_failure(&self) {
        self.reloads.with_label_values(&["failure"]).inc();
    }

    /// Counts a reload that was applied and stamps its time.
    pub fn mark_reload_success(&self) {
        self.reloads.with_label_values(&["success"]).inc();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.last_reload.set(now);
    }

    /// Counts a failed resolution of `name` (service discovery; rare, so labels are looked up here).
    pub fn resolver_error(&self, name: &str, reason: &str) {
        self.resolver_errors
            .with_label_values(&[name, reason])
            .inc();
    }

    /// The exposition text, with the live gauges set from `pools` (read from the current snapshot by
    /// the caller at scrape time).
    pub fn render(&self, pools: &[LivePool<'_>]) -> String {
        self.in_flight.reset();
        self.healthy.reset();
        self.latency.reset();
        self.servers.reset();
        for pool in pools {
            self.servers
                .with_label_values(&[pool.name])
                .set(pool.servers.len() as i64);
            for server in &pool.servers {
                let labels = [pool.name, server.addr];
                self.in_flight
                    .with_label_values(&labels)
                    .set(server.in_flight as i64);
                self.healthy
                    .with_label_values(&labels)
                    .set(i64::from(server.healthy));
                if let Some(us) = server.latency_us {
                    self.latency.with_label_values(&labels).set(us / 1e6);
                }
            }
        }
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// One pool's live state, for the gauges set at scrape time.
#[derive(Debug)]
pub struct LivePool<'a> {
    /// The pool's name.
    pub name: &'a str,
    /// Its servers, primaries and backups.
    pub servers: Vec<LiveServer<'a>>,
}

/// One server's live state, for the gauges set at scrape time.
#[derive(Debug)]
pub struct LiveServer<'a> {
    /// Its address as configured.
    pub addr: &'a str,
    /// Requests in flight.
    pub in_flight: u64,
    /// Whether it takes traffic now.
    pub healthy: bool,
    /// Its latency estimate, in microseconds.
    pub latency_us: Option<f64>,
}
