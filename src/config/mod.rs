//! Loading the config: TOML -> file structs -> validation -> the immutable [`Config`].

mod cache;
mod error;
mod file;
mod route;
mod validate;
mod validate_cache;
mod validate_client;
mod validate_compression;
mod validate_health;
mod validate_http;
mod validate_limits;
mod validate_routes;
mod validate_servers;
mod validate_tls;
pub mod values;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use cache::{CacheKeyPart, CacheZoneConfig, RouteCacheConfig, UseStale};
pub use error::ConfigError;
pub use file::{AllUnhealthy, LeastTimeMode, ProbeKind, Strategy, UpstreamProtocol};
pub use route::{HeaderRules, PathRewrite, ReturnConfig};
pub(crate) use validate_routes::HOP_AND_FRAMING;
pub use values::HashKey;

/// A validated config, ready to build a snapshot from.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[global]`.
    pub global: Global,
    /// `[[listener]]`, in file order.
    pub listeners: Vec<ListenerConfig>,
    /// `[[route]]`, in file order.
    pub routes: Vec<RouteConfig>,
    /// `[upstream.NAME]`, by name.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// `[rate_limit.NAME]` zones, by name.
    pub rate_limits: BTreeMap<String, RateLimitConfig>,
    /// `[cache.NAME]` zones, by name.
    pub caches: BTreeMap<String, CacheZoneConfig>,
    /// `[admin]`, when present.
    pub admin: Option<AdminConfig>,
    /// `[access_log]`, when present.
    pub access_log: Option<AccessLogConfig>,
    /// `[resolver]`: how `resolve = true` servers are re-resolved.
    pub resolver: ResolverConfig,
    /// `[compression]`: off unless the section is present.
    pub compression: CompressionConfig,
    /// The file this came from and its text, for `GET /config` (secrets redacted there).
    pub source: ConfigSource,
    /// Things that are valid but probably not what was meant (e.g. a key the chosen strategy ignores).
    pub warnings: Vec<ConfigError>,
}

/// The admin listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Address to bind (loopback by default).
    pub listen: SocketAddr,
    /// Bearer token required for anything that changes state, when set.
    pub token: Option<String>,
}

/// `[access_log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    /// A file to append to, or `stdout`.
    pub path: std::path::PathBuf,
    /// Line format.
    pub format: AccessLogFormat,
}

/// Access log line formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    /// nginx's `combined`, with key=value extras.
    #[default]
    Combined,
    /// One JSON object per line.
    Json,
}

/// Where a config came from.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// The file.
    pub path: std::path::PathBuf,
    /// Its text as loaded.
    pub text: String,
}

impl ConfigSource {
    /// The text with secrets (`token`, `redis_url`) replaced by `"<redacted>"`.
    pub fn redacted(&self) -> String {
        self.text
            .lines()
            .map(|line| match line.split_once('=') {
                Some((key, _)) if matches!(key.trim(), "token" | "redis_url") => {
                    format!("{} = \"<redacted>\"", key.trim_end())
                }
                _ => line.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Process-wide settings.
#[derive(Debug, Clone)]
pub struct Global {
    /// Tokio worker threads; 0 means one per core.
    pub worker_threads: usize,
    /// Largest request body accepted (nginx `client_max_body_size`), unless a route says otherwise.
    pub max_body_size: u64,
    /// How long in-flight requests may run after SIGTERM.
    pub shutdown_timeout: Duration,
    /// Reload when the config file changes on disk (SIGHUP always reloads).
    pub watch_config: bool,
    /// Where `run` writes its process id, for `fulcrum reload`.
    pub pid_file: Option<std::path::PathBuf>,
    /// Peers whose `X-Forwarded-For` is believed (nginx `set_real_ip_from`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Where bodies past `buffer_size` spill (nginx `proxy_temp_path`); `None` is the system temp dir.
    pub temp_path: Option<std::path::PathBuf>,
}

/// A content coding the proxy can compress answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `zstd` (RFC 8878).
    Zstd,
    /// `br`, Brotli (RFC 7932).
    Brotli,
    /// `gzip` (RFC 1952).
    Gzip,
}

impl Algorithm {
    /// Every algorithm, in the default order of preference.
    pub const ALL: [Algorithm; 3] = [Algorithm::Zstd, Algorithm::Brotli, Algorithm::Gzip];

    /// The levels each algorithm takes, and its default: gzip 1 (nginx's `gzip_comp_level`), brotli 4
    /// and zstd 3 (its own default): fast settings that keep most of the size gain of the higher levels,
    /// as a proxy compressing every answer on the fly needs.
    pub const fn levels(self) -> (std::ops::RangeInclusive<i32>, i32) {
        match self {
            Algorithm::Zstd => (1..=19, 3),
            Algorithm::Brotli => (0..=11, 4),
            Algorithm::Gzip => (1..=9, 1),
        }
    }

    /// Its position in [`Self::ALL`], for tables indexed by algorithm.
    pub const fn index(self) -> usize {
        match self {
            Algorithm::Zstd => 0,
            Algorithm::Brotli => 1,
            Algorithm::Gzip => 2,
        }
    }

    /// Its name in `Accept-Encoding`, `Content-Encoding` and the config.
    pub const fn token(self) -> &'static str {
        match self {
            Algorithm::Zstd => "zstd",
            Algorithm::Brotli => "br",
            Algorithm::Gzip => "gzip",
        }
    }

    /// The algorithm a config or `Accept-Encoding` token names (`x-gzip` is gzip, RFC 9110 8.4.1.3).
    pub fn from_token(token: &str) -> Option<Algorithm> {
        Self::ALL
            .into_iter()
            .find(|a| token.eq_ignore_ascii_case(a.token()))
            .or_else(|| {
                token
                    .eq_ignore_ascii_case("x-gzip")
                    .then_some(Algorithm::Gzip)
            })
    }
}

/// `[compression]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompressionConfig {
    /// Compress at all (nginx `gzip on`); a route may still opt out with `compress = false`.
    pub enabled: bool,
    /// The algorithms offered, in our order of preference (ties in the client's q-values go by it).
    pub algorithms: Vec<Algorithm>,
    /// Media types compressed, lowercase: `text/html`, `text/*` (a whole top-level type) or `*` (any).
    pub types: Vec<String>,
    /// Answers whose `Content-Length` is below this are sent as they are (nginx `gzip_min_length`).
    pub min_size: u64,
    /// Compression level of each algorithm, by [`Algorithm::index`] (nginx `gzip_comp_level`).
    pub levels: [i32; 3],
}

impl CompressionConfig {
    /// The level `algorithm` compresses at.
    pub fn level(&self, algorithm: Algorithm) -> i32 {
        self.levels
            .get(algorithm.index())
            .copied()
            .unwrap_or(algorithm.levels().1)
    }
}

impl Default for CompressionConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            algorithms: Algorithm::ALL.to_vec(),
            types: [
                "text/*",
                "application/json",
                "application/javascript",
                "application/xml",
                "image/svg+xml",
            ]
            .map(String::from)
            .to_vec(),
            min_size: 1024,
            levels: Algorithm::ALL.map(|a| a.levels().1),
        }
    }
}

/// A rate written `10r/s` or `600r/m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    /// Requests per window.
    pub count: u64,
    /// The window: 1 (per second) or 60 (per minute).
    pub window_secs: u64,
}

/// One validated `[rate_limit.NAME]` zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// The zone's name.
    pub name: String,
    /// What identifies a client; requests without it are not limited.
    pub key: HashKey,
    /// The steady rate.
    pub rate: Rate,
    /// Requests allowed above the rate.
    pub burst: u64,
    /// Requests within the burst go at once (true) or are spaced to the rate (false).
    pub nodelay: bool,
    /// With `nodelay = false`: the first `delay` burst requests go at once.
    pub delay: u64,
    /// Status of a refusal.
    pub status: u16,
    /// Count and log, never refuse.
    pub dry_run: bool,
    /// Buckets kept at most (local backend).
    pub max_keys: usize,
    /// Where the buckets live.
    pub backend: RateLimitBackend,
}

/// Where a zone keeps its buckets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitBackend {
    /// In this process.
    Local,
    /// In Redis, shared by every proxy that uses the same URL and zone name.
    Redis {
        /// `redis://host:port/db` (or `rediss://`, `redis+unix://`); with `cluster`, the seed nodes.
        urls: Vec<String>,
        /// Redis Cluster (keys hashed to slots by the client) rather than one server.
        cluster: bool,
        /// What to do while Redis does not answer (or the circuit breaker is open).
        on_error: OnRedisError,
        /// How many proxies share the zone (`on_redis_error = "local"` enforces `rate / fleet_size`).
        fleet_size: u64,
        /// Longest wait for Redis per check.
        timeout: Duration,
    },
}

/// `on_redis_error`: a zone's answer while Redis is unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRedisError {
    /// Let the request through.
    Allow,
    /// Refuse the request.
    Deny,
    /// Check it against an in-process bucket at `rate / fleet_size` and `burst / fleet_size`.
    Local,
}

/// One address to accept client connections on.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Name used in logs.
    pub name: String,
    /// Address to bind.
    pub listen: SocketAddr,
    /// SO_REUSEPORT: let a new binary bind the same address during an upgrade.
    pub reuseport: bool,
    /// Open connections one client address may hold (nginx `limit_conn`); more are closed at once.
    pub max_connections_per_client: Option<usize>,
    /// TLS termination, when `[listener.tls]` is set.
    pub tls: Option<Arc<ListenerTls>>,
    /// Answer every request with a 308 to `https://` on this port (plain listeners only).
    pub redirect_to_https: Option<u16>,
    /// HTTP/1.1 and HTTP/2 limits for this listener's connections.
    pub http: HttpLimits,
    /// Timeouts and limits on this listener's clients: slow, idle and too many.
    pub client: ClientLimits,
}

/// Timeouts and limits a listener puts on its clients (nginx's names and defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// Longest a client may take to send a request head, counted from its first byte (from the accept
    /// for a new connection), however often it sends; then the connection is closed (slowloris).
    pub header_timeout: Duration,
    /// Longest the proxy waits for the next piece of a request body it is reading; then 408.
    pub body_timeout: Duration,
    /// Longest a connection may sit idle between requests; zero turns keep-alive off.
    pub keepalive_timeout: Duration,
    /// Longest a write to the client may stay blocked (a client that does not read); then it is closed.
    pub send_timeout: Duration,
    /// Longest the proxy keeps reading and discarding what a client still sends after an answer that
    /// closes the connection before its request was read whole (nginx `lingering_time`).
    pub lingering_time: Duration,
    /// Longest wait for more of that input between two reads (nginx `lingering_timeout`).
    pub lingering_timeout: Duration,
    /// Requests served on one connection before it is closed (HTTP/1.1 `Connection: close`, HTTP/2 GOAWAY).
    pub keepalive_requests: u32,
    /// Open connections the listener accepts at once; more are closed as they arrive.
    pub max_connections: Option<usize>,
    /// Longest request target (path and query); longer gets 414.
    pub max_uri_size: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(75),
            send_timeout: Duration::from_secs(60),
            lingering_time: Duration::from_secs(30),
            lingering_timeout: Duration::from_secs(5),
            keepalive_requests: 1000,
            max_connections: None,
            max_uri_size: 8 * 1024,
        }
    }
}

/// HTTP limits of a listener (bounded streams, headers and resets: rapid reset and header floods cost
/// bounded memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Largest HTTP/1.1 request head (request line and headers), in bytes; larger gets 431.
    pub http1_max_header_size: usize,
    /// Concurrent HTTP/2 streams a client may open (nginx `http2_max_concurrent_streams`, 128).
    pub http2_max_concurrent_streams: u32,
    /// Largest decoded HTTP/2 header list of a request, in bytes; larger gets 431.
    pub http2_max_header_size: u32,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            http1_max_header_size: 32 * 1024,
            http2_max_concurrent_streams: 128,
            http2_max_header_size: 32 * 1024,
        }
    }
}

/// A TLS listener's certificates, loaded and checked, and its rustls config.
#[derive(Debug)]
pub struct ListenerTls {
    /// rustls config: SNI resolver over the certificates, ALPN h2 and http/1.1, TLS 1.2 and 1.3.
    pub server_config: Arc<rustls::ServerConfig>,
    /// The certificates in config order (the first is the default).
    pub certificates: Vec<crate::tls::LoadedCert>,
    /// Longest a client may take to finish its handshake.
    pub handshake_timeout: Duration,
    /// How long a session ticket is accepted (the ticket key changes every half of it).
    pub session_ticket_lifetime: Duration,
}

/// Which requests go to which upstream.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Host to match: exact (`example.com`) or wildcard (`*.example.com`); `None` matches any host.
    pub host: Option<String>,
    /// Path prefix to match (the whole path with `exact`).
    pub path: String,
    /// `match = "exact"`: the path must equal `path` (nginx `location = /x`); an exact route is tried
    /// before every prefix route of its host group.
    pub exact: bool,
    /// Name of the upstream to send to; `None` for a route with `return`.
    pub upstream: Option<String>,
    /// Per-route override of `global.max_body_size`.
    pub max_body_size: Option<u64>,
    /// Rate-limit zones checked for this route, in order.
    pub rate_limit: Vec<String>,
    /// `Upgrade` protocols passed to the upstream (lowercase names; default `websocket`); others are
    /// stripped from the request.
    pub upgrades: Vec<String>,
    /// Overrides the upstream's `buffering` for this route.
    pub buffering: Option<bool>,
    /// Overrides the upstream's `request_buffering` for this route.
    pub request_buffering: Option<bool>,
    /// `strip_prefix` / `rewrite_prefix`: how the upstream path is made.
    pub path_rewrite: Option<PathRewrite>,
    /// Headers set on and removed from the request sent upstream.
    pub request_headers: HeaderRules,
    /// Headers set on and removed from the answer to the client.
    pub response_headers: HeaderRules,
    /// Whether requests of this route are written to the access log (`access_log = false`: not).
    pub access_log: bool,
    /// Whether answers of this route may be compressed (`compress = false`: never); `[compression]`
    /// decides the rest.
    pub compress: bool,
    /// `return`: the route answers itself.
    pub answer: Option<ReturnConfig>,
    /// `cache = "ZONE"` and its companions: the route's answers are cached.
    pub cache: Option<RouteCacheConfig>,
}

/// Which failures count against a server and may be retried (nginx `proxy_next_upstream`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryOn {
    bits: u16,
}

impl RetryOn {
    /// Connect errors, resets, malformed responses.
    pub const ERROR: u16 = 1;
    /// `connect_timeout` or `read_timeout` passed.
    pub const TIMEOUT: u16 = 1 << 1;
    /// A 500 answer.
    pub const HTTP_500: u16 = 1 << 2;
    /// A 502 answer.
    pub const HTTP_502: u16 = 1 << 3;
    /// A 503 answer.
    pub const HTTP_503: u16 = 1 << 4;
    /// A 504 answer.
    pub const HTTP_504: u16 = 1 << 5;
    /// A 429 answer.
    pub const HTTP_429: u16 = 1 << 6;
    /// Retry non-idempotent methods too (nginx `non_idempotent`).
    pub const NON_IDEMPOTENT: u16 = 1 << 7;

    /// The words accepted in `retry_on` and their flags.
    pub const WORDS: [(&'static str, u16); 10] = [
        ("error", Self::ERROR),
        ("timeout", Self::TIMEOUT),
        ("invalid_header", Self::ERROR),
        ("http_500", Self::HTTP_500),
        ("http_502", Self::HTTP_502),
        ("http_503", Self::HTTP_503),
        ("http_504", Self::HTTP_504),
        ("http_429", Self::HTTP_429),
        ("non_idempotent", Self::NON_IDEMPOTENT),
        ("off", 0),
    ];

    /// nginx's default: `error timeout`.
    pub const fn nginx_default() -> Self {
        Self {
            bits: Self::ERROR | Self::TIMEOUT,
        }
    }

    /// Builds from flag bits.
    pub const fn from_bits(bits: u16) -> Self {
        Self { bits }
    }

    /// Whether a flag is set.
    pub const fn has(self, flag: u16) -> bool {
        self.bits & flag != 0
    }

    /// Whether some answers (by status) count as failures, and may be retried.
    pub const fn retries_on_status(self) -> bool {
        self.bits
            & (Self::HTTP_500 | Self::HTTP_502 | Self::HTTP_503 | Self::HTTP_504 | Self::HTTP_429)
            != 0
    }

    /// Whether an upstream answer with this status counts as a failure.
    pub fn status_counts(self, status: u16) -> bool {
        let flag = match status {
            500 => Self::HTTP_500,
            502 => Self::HTTP_502,
            503 => Self::HTTP_503,
            504 => Self::HTTP_504,
            429 => Self::HTTP_429,
            _ => return false,
        };
        self.has(flag)
    }
}

/// One pool of servers and how to balance over it.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The pool's name (the key after `upstream.`).
    pub name: String,
    /// Balancing strategy.
    pub strategy: Strategy,
    /// What the latency estimate times (every strategy keeps one; `least_time` picks by it).
    pub least_time: LeastTimeMode,
    /// What `consistent_hash` hashes (default `client_ip`).
    pub hash_key: HashKey,
    /// `ip_hash` groups IPv4 clients by this prefix length (default 32: the full address).
    pub ip_hash_prefix: u8,
    /// Time to establish a TCP connection to a server.
    pub connect_timeout: Duration,
    /// Longest wait between two reads of a server's answer (head and body), counted from the end of
    /// the request (nginx `proxy_read_timeout`).
    pub read_timeout: Duration,
    /// Longest a write of the request (head or body) to a server may stay blocked (nginx
    /// `proxy_send_timeout`).
    pub send_timeout: Duration,
    /// Extra attempts on other servers; `None` means each remaining server once.
    pub retries: Option<u32>,
    /// Failures that count and may be retried.
    pub retry_on: RetryOn,
    /// How long an idle pooled connection to a server is kept.
    pub keepalive_timeout: Duration,
    /// Idle pooled connections kept per server.
    pub keepalive: usize,
    /// Ramp a recovered or newly added server from a small share to its full weight over this (0 = off).
    pub slow_start: Duration,
    /// What to do when no server is healthy; unset means `fail_closed` with health checks, else a 502.
    pub all_unhealthy: Option<AllUnhealthy>,
    /// Active probes, when configured.
    pub health_check: Option<HealthCheckConfig>,
    /// HTTP/1.1 or HTTP/2 to the servers.
    pub protocol: UpstreamProtocol,
    /// TLS settings for the pool's `https://` servers; `None` when it has none.
    pub tls: Option<Arc<crate::tls::UpstreamTls>>,
    /// Requests that may wait for a server below its `max_conns` (nginx `queue`); more get 503 at once.
    pub queue: usize,
    /// Longest a request waits in the queue before its 503.
    pub queue_timeout: Duration,
    /// Read the whole request body before choosing a server (nginx `proxy_request_buffering`).
    pub request_buffering: bool,
    /// Read the answer ahead of the client (nginx `proxy_buffering`).
    pub buffering: bool,
    /// Bytes of a body held in memory, per direction, before the rest spills to a temp file.
    pub buffer_size: usize,
    /// Most bytes of an answer written to its temp file (0: none); past it the answer streams.
    pub max_temp_file_size: u64,
    /// The servers, primaries and backups, in file order.
    pub servers: Vec<ServerConfig>,
}

/// `[upstream.NAME.health_check]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    /// HTTP GET or TCP connect.
    pub kind: ProbeKind,
    /// Path of the HTTP probe.
    pub path: String,
    /// Time between two probes of one server.
    pub interval: Duration,
    /// Time a probe may take.
    pub timeout: Duration,
    /// Consecutive failed probes that make a server unhealthy (HAProxy `fall`).
    pub max_fails: u32,
    /// Consecutive good probes that make it healthy again (HAProxy `rise`).
    pub passes: u32,
    /// Status ranges that count as good, inclusive.
    pub expected_status: Vec<(u16, u16)>,
    /// Text the body must contain, if set.
    pub expect_body: Option<String>,
    /// Host header of the probe; default the server's address.
    pub host: Option<String>,
    /// Port to probe instead of the traffic port.
    pub port: Option<u16>,
    /// New servers wait for `passes` good probes before taking traffic.
    pub start_unhealthy: bool,
    /// Probes of this pool in flight at once, at most.
    pub concurrency: usize,
}

impl HealthCheckConfig {
    /// Whether a probe answer with this status is good.
    pub fn status_ok(&self, status: u16) -> bool {
        self.expected_status
            .iter()
            .any(|&(low, high)| (low..=high).contains(&status))
    }
}

/// `[resolver]`, validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResolverConfig {
    /// Name servers to ask; empty: those of /etc/resolv.conf (with /etc/hosts first).
    pub servers: Vec<SocketAddr>,
    /// Re-resolve at this interval instead of the answers' TTL (nginx `valid=`).
    pub valid: Option<Duration>,
    /// One query's timeout.
    pub timeout: Duration,
    /// Ask for AAAA records as well as A (nginx `ipv6=on`).
    pub ipv6: bool,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        ResolverConfig {
            servers: Vec::new(),
            valid: None,
            timeout: Duration::from_secs(2),
            ipv6: true,
        }
    }
}

/// A server entry re-resolved while running (`resolve = true`): every address of the name is a server.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Discover {
    /// The name asked: a host name for A/AAAA, `_service._tcp.host` for SRV.
    pub query: String,
    /// Asked as SRV (`service = ...`): targets, ports, weights and priorities come from the answer.
    pub srv: bool,
    /// The servers' port for A/AAAA answers (SRV answers carry their own).
    pub port: u16,
}

/// One upstream server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `host:port`: an IP address once resolved at load; as written for a `resolve = true` entry.
    pub addr: http::uri::Authority,
    /// The host name this server was found under, when it was written as a name (kept for SNI, the
    /// health probe's Host and the status page).
    pub name: Option<String>,
    /// Re-resolved while running: this entry stands for every address the name has.
    pub discover: Option<Discover>,
    /// Spoken to over TLS (`https://` address).
    pub tls: bool,
    /// Relative weight, 1..=1000.
    pub weight: u32,
    /// Requests in flight to the server at once, at most (nginx `max_conns`); 0 is no limit.
    pub max_conns: u32,
    /// Failures within `fail_timeout` that take the server out; 0 disables passive health.
    pub max_fails: u32,
    /// The failure window and the time the server stays out.
    pub fail_timeout: Duration,
    /// Used only when every primary server is down.
    pub backup: bool,
    /// Gets no new requests (rolling deploys); its in-flight requests finish.
    pub drain: bool,
    /// Identity for consistent hashing (HAProxy `hash-key id`); default the address.
    pub id: Option<String>,
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let source = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::file(path, format!("cannot read: {e}")))?;
        Self::parse(&source, path)
    }

    /// The certificate, key and CA files this config read: a change to one of them is a reason to reload.
    pub fn tls_files(&self) -> Vec<std::path::PathBuf> {
        let listeners = self
            .listeners
            .iter()
            .filter_map(|l| l.tls.as_ref())
            .flat_map(|tls| tls.certificates.iter())
            .flat_map(|cert| [cert.cert_path.clone(), cert.key_path.clone()]);
        let upstreams = self
            .upstreams
            .values()
            .filter_map(|u| u.tls.as_ref()?.ca_file.clone());
        let mut files: Vec<_> = listeners.chain(upstreams).collect();
        files.sort();
        files.dedup();
        files
    }

    /// Parses and validates config text; `path` is used in error messages only.
    pub fn parse(source: &str, path: &Path) -> Result<Config, ConfigError> {
        validate::parse(source, path)
    }
}
