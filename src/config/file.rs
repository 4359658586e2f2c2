//! The config file as written: serde structs that mirror the TOML, with unknown keys refused.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::values::{ConfigDuration, ConfigSize, HashKey, ServerAddr};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub global: GlobalFile,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerFile>,
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteFile>,
    #[serde(default, rename = "upstream")]
    pub upstreams: BTreeMap<String, UpstreamFile>,
    #[serde(default, rename = "rate_limit")]
    pub rate_limits: BTreeMap<String, RateLimitFile>,
    #[serde(default, rename = "cache")]
    pub caches: BTreeMap<String, CacheZoneFile>,
    pub admin: Option<AdminFile>,
    pub access_log: Option<AccessLogFile>,
    pub resolver: Option<ResolverFile>,
    pub compression: Option<CompressionFile>,
}

/// `[compression]`: which answers are compressed on their way to the client, and how.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressionFile {
    pub enabled: Option<bool>,
    pub algorithms: Option<Spanned<Vec<String>>>,
    pub types: Option<Spanned<Vec<String>>>,
    pub min_size: Option<Spanned<ConfigSize>>,
    pub gzip_level: Option<Spanned<i32>>,
    pub br_level: Option<Spanned<i32>>,
    pub zstd_level: Option<Spanned<i32>>,
}

/// `[resolver]`: the name servers that re-resolve `resolve = true` servers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolverFile {
    pub servers: Option<Spanned<Vec<String>>>,
    pub valid: Option<ConfigDuration>,
    pub timeout: Option<ConfigDuration>,
    pub ipv6: Option<bool>,
}

/// `[access_log]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogFile {
    pub path: Option<std::path::PathBuf>,
    pub format: Option<super::AccessLogFormat>,
}

/// `[admin]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    pub listen: Option<Spanned<String>>,
    pub token: Option<String>,
}

/// One `[rate_limit.NAME]` zone.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFile {
    pub key: Option<Spanned<HashKey>>,
    pub rate: Spanned<String>,
    pub burst: Option<u64>,
    pub nodelay: Option<bool>,
    pub delay: Option<u64>,
    pub status: Option<Spanned<u16>>,
    pub dry_run: Option<bool>,
    pub max_keys: Option<Spanned<usize>>,
    pub backend: Option<Spanned<String>>,
    pub redis_url: Option<Spanned<RedisUrls>>,
    pub redis_cluster: Option<bool>,
    pub fleet_size: Option<Spanned<u64>>,
    pub on_redis_error: Option<Spanned<String>>,
    pub redis_timeout: Option<ConfigDuration>,
}

/// `redis_url`: one URL, or a list (the nodes of a Redis Cluster).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RedisUrls {
    /// One server.
    One(String),
    /// Several (cluster seed nodes).
    Many(Vec<String>),
}

impl RedisUrls {
    /// The URLs, in order.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            RedisUrls::One(url) => vec![url.clone()],
            RedisUrls::Many(urls) => urls.clone(),
        }
    }
}

/// `[global]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalFile {
    pub worker_threads: Option<usize>,
    pub max_body_size: Option<ConfigSize>,
    pub shutdown_timeout: Option<ConfigDuration>,
    pub watch_config: Option<bool>,
    pub pid_file: Option<std::path::PathBuf>,
    pub trusted_proxies: Option<Spanned<Vec<String>>>,
    pub temp_path: Option<Spanned<std::path::PathBuf>>,
}

/// One `[[listener]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerFile {
    pub name: Option<String>,
    pub listen: Spanned<String>,
    #[serde(default)]
    pub reuseport: bool,
    pub max_connections_per_client: Option<Spanned<usize>>,
    pub tls: Option<ListenerTlsFile>,
    /// Accepted here too; `[listener.tls] session_ticket_lifetime` is where the docs put it.
    pub session_ticket_lifetime: Option<Spanned<ConfigDuration>>,
    pub redirect_to_https: Option<Spanned<RedirectToHttps>>,
    pub http2_max_concurrent_streams: Option<Spanned<u32>>,
    pub http2_max_header_size: Option<Spanned<ConfigSize>>,
    pub http1_max_header_size: Option<Spanned<ConfigSize>>,
    pub client_header_timeout: Option<Spanned<ConfigDuration>>,
    pub client_body_timeout: Option<Spanned<ConfigDuration>>,
    pub keepalive_timeout: Option<Spanned<ConfigDuration>>,
    pub send_timeout: Option<Spanned<ConfigDuration>>,
    pub lingering_time: Option<Spanned<ConfigDuration>>,
    pub lingering_timeout: Option<Spanned<ConfigDuration>>,
    pub keepalive_requests: Option<Spanned<u32>>,
    pub max_connections: Option<Spanned<usize>>,
    pub max_uri_size: Option<Spanned<ConfigSize>>,
}

/// `redirect_to_https = true` (to port 443) or `= 8443` (to that port).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub enum RedirectToHttps {
    /// On (to the default port) or off.
    Enabled(bool),
    /// On, to this port.
    Port(u16),
}

/// `[listener.tls]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsFile {
    pub certificates: Spanned<Vec<CertificateFile>>,
    pub handshake_timeout: Option<Spanned<ConfigDuration>>,
    pub session_ticket_lifetime: Option<Spanned<ConfigDuration>>,
}

/// One `[[listener.tls.certificates]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFile {
    pub cert: Spanned<std::path::PathBuf>,
    pub key: Spanned<std::path::PathBuf>,
    pub server_names: Option<Spanned<Vec<String>>>,
}

/// One `[[route]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub host: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    /// `"prefix"` (default) or `"exact"`.
    #[serde(rename = "match")]
    pub match_kind: Option<Spanned<String>>,
    /// Required unless the route has `return`.
    pub upstream: Option<Spanned<String>>,
    pub max_body_size: Option<ConfigSize>,
    pub rate_limit: Option<Spanned<Vec<String>>>,
    pub upgrades: Option<Spanned<Vec<String>>>,
    pub buffering: Option<bool>,
    pub request_buffering: Option<bool>,
    pub strip_prefix: Option<Spanned<bool>>,
    pub rewrite_prefix: Option<Spanned<String>>,
    pub request_headers: Option<Spanned<HeaderRulesFile>>,
    pub response_headers: Option<Spanned<HeaderRulesFile>>,
    pub access_log: Option<bool>,
    pub compress: Option<Spanned<bool>>,
    #[serde(rename = "return")]
    pub answer: Option<Spanned<ReturnFile>>,
    pub cache: Option<Spanned<String>>,
    pub cache_valid: Option<Spanned<BTreeMap<String, Spanned<ConfigDuration>>>>,
    pub cache_key: Option<Spanned<Vec<String>>>,
    pub cache_lock: Option<Spanned<ConfigDuration>>,
    pub cache_use_stale: Option<Spanned<Vec<String>>>,
    pub cache_background_update: Option<Spanned<bool>>,
}

/// One `[cache.NAME]` zone.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheZoneFile {
    pub max_size: Option<Spanned<ConfigSize>>,
    pub max_entry_size: Option<Spanned<ConfigSize>>,
}

/// `request_headers` / `response_headers` of a route: `{ set = { NAME = VALUE }, remove = [NAME] }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRulesFile {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A route's `return = { status = 301, location = "..." }` or `{ status = 200, body = "..." }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReturnFile {
    pub status: u16,
    pub location: Option<String>,
    pub body: Option<String>,
}

/// The strategies a pool can balance with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Smooth weighted round robin, the nginx sequence.
    RoundRobin,
    /// Weighted random.
    Weighted,
    /// Fewest in-flight requests per unit of weight.
    LeastConn,
    /// Hash of the client address.
    IpHash,
    /// Ketama-style ring over a configured key.
    ConsistentHash,
    /// Lowest latency estimate times requests in flight, per unit of weight (peak EWMA, power of two
    /// choices).
    LeastTime,
}

/// What `least_time` times (nginx `least_time header | last_byte`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LeastTimeMode {
    /// To the response head.
    #[default]
    Header,
    /// To the end of the response body.
    LastByte,
}

/// One `[upstream.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    pub strategy: Option<Strategy>,
    pub least_time: Option<Spanned<LeastTimeMode>>,
    pub hash_key: Option<Spanned<HashKey>>,
    pub ip_hash_prefix: Option<Spanned<u8>>,
    pub max_fails: Option<u32>,
    pub fail_timeout: Option<ConfigDuration>,
    pub connect_timeout: Option<ConfigDuration>,
    pub read_timeout: Option<ConfigDuration>,
    pub send_timeout: Option<ConfigDuration>,
    pub retries: Option<u32>,
    pub retry_on: Option<Spanned<Vec<String>>>,
    pub keepalive_timeout: Option<ConfigDuration>,
    pub keepalive: Option<usize>,
    pub slow_start: Option<ConfigDuration>,
    pub all_unhealthy: Option<AllUnhealthy>,
    pub start_unhealthy: Option<bool>,
    pub health_check: Option<HealthCheckFile>,
    pub protocol: Option<Spanned<UpstreamProtocol>>,
    pub ca_file: Option<Spanned<std::path::PathBuf>>,
    pub tls_verify: Option<Spanned<bool>>,
    pub tls_server_name: Option<Spanned<String>>,
    pub max_conns: Option<u32>,
    pub queue: Option<usize>,
    pub queue_timeout: Option<Spanned<ConfigDuration>>,
    pub request_buffering: Option<bool>,
    pub buffering: Option<bool>,
    pub buffer_size: Option<Spanned<ConfigSize>>,
    pub max_temp_file_size: Option<ConfigSize>,
    pub servers: Spanned<Vec<ServerFile>>,
}

/// The HTTP version spoken to a pool's servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (over TLS with ALPN http/1.1 for `https://` servers).
    #[default]
    #[serde(alias = "http1.1", alias = "http/1.1")]
    Http1,
    /// HTTP/2: over TLS with ALPN h2 for `https://` servers, else cleartext with prior knowledge.
    H2,
    /// HTTP/2 in cleartext with prior knowledge (gRPC servers without TLS).
    H2c,
}

impl UpstreamProtocol {
    /// HTTP/2 (`h2` or `h2c`).
    pub fn is_http2(self) -> bool {
        self != UpstreamProtocol::Http1
    }
}

/// What a pool does when no server is healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllUnhealthy {
    /// Answer 503 with `Retry-After`.
    FailClosed,
    /// Send to every server anyway (Envoy's panic mode).
    FailOpen,
}

/// The kinds of active probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    /// An HTTP GET whose status (and optionally body) is checked.
    #[default]
    Http,
    /// A TCP connect.
    Tcp,
}

/// `[upstream.NAME.health_check]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckFile {
    #[serde(rename = "type")]
    pub kind: Option<ProbeKind>,
    pub path: Option<Spanned<String>>,
    pub interval: Option<Spanned<ConfigDuration>>,
    pub timeout: Option<Spanned<ConfigDuration>>,
    pub max_fails: Option<Spanned<u32>>,
    pub passes: Option<Spanned<u32>>,
    pub expected_status: Option<Spanned<String>>,
    pub expect_body: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub start_unhealthy: Option<bool>,
    pub concurrency: Option<Spanned<usize>>,
}

/// One entry of an upstream's `servers`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub addr: Spanned<ServerAddr>,
    pub weight: Option<Spanned<u32>>,
    pub max_conns: Option<u32>,
    pub max_fails: Option<u32>,
    pub fail_timeout: Option<ConfigDuration>,
    #[serde(default)]
    pub backup: bool,
    #[serde(default)]
    pub drain: bool,
    pub id: Option<String>,
    #[serde(default)]
    pub resolve: bool,
    pub service: Option<Spanned<String>>,
}
