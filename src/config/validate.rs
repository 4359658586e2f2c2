//! Turns the file structs into a [`Config`], checking everything the types alone cannot.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::error::ConfigError;
use super::file::{
    AdminFile, FileConfig, HealthCheckFile, ListenerFile, RateLimitFile, RouteFile, Strategy,
    UpstreamFile,
};
use super::values::HashKey;
use super::{
    AccessLogConfig, AdminConfig, Config, ConfigSource, Global, HealthCheckConfig, ListenerConfig,
    Rate, RateLimitBackend, RateLimitConfig, RetryOn, RouteConfig, ServerConfig, UpstreamConfig,
};

/// nginx `client_max_body_size` default.
const DEFAULT_MAX_BODY_SIZE: u64 = 1 << 20;
/// Largest weight a server may have; keeps the round-robin table small.
pub const MAX_WEIGHT: u32 = 1000;

/// Parses TOML text into a validated config.
pub fn parse(source: &str, path: &Path) -> Result<Config, ConfigError> {
    let file: FileConfig = serde_path_to_error::deserialize(toml::Deserializer::new(source))
        .map_err(|e| {
            let key = full_key(&e.path().to_string());
            // toml's messages may span lines; a log line and `check` output keep one line per error.
            let message = e.inner().message().trim().replace('\n', "; ");
            ConfigError::at(path, source, e.inner().span(), key, message)
        })?;
    Validator {
        path,
        source,
        warnings: RefCell::new(Vec::new()),
    }
    .config(file)
}

/// The dotted key of a deserialization error, without the markers `toml::Spanned` leaves in the path.
fn full_key(path: &str) -> String {
    if path == "." {
        return String::new();
    }
    path.replace(".$__serde_spanned_private_value", "")
}

/// `ip:port`, or `host:port` resolved now (as nginx resolves `listen localhost:8080` at start).
fn listen_addr(text: &str) -> Option<SocketAddr> {
    if let Ok(addr) = text.parse() {
        return Some(addr);
    }
    std::net::ToSocketAddrs::to_socket_addrs(text).ok()?.next()
}

/// Parses `"10r/s"` or `"600r/m"`.
fn parse_rate(text: &str) -> Result<Rate, String> {
    let bad = || format!("`{text}` is not a rate; write it like \"10r/s\" or \"600r/m\"");
    let (count, unit) = text.trim().split_once("r/").ok_or_else(bad)?;
    let count: u64 = count.trim().parse().map_err(|_| bad())?;
    let window_secs = match unit.trim() {
        "s" => 1,
        "m" => 60,
        _ => return Err(bad()),
    };
    if count == 0 || count > 1_000_000_000 {
        return Err(format!(
            "`{text}`: the rate must be from 1 to 1000000000 requests"
        ));
    }
    Ok(Rate { count, window_secs })
}

/// Parses `"200-399"`, `"200"` or `"200, 204, 300-302"` into inclusive ranges of valid HTTP statuses.
fn parse_status_ranges(text: &str) -> Result<Vec<(u16, u16)>, String> {
    let bad =
        || format!("`{text}` is not a status range; write \"200-399\", \"200\" or \"200, 204\"");
    let mut ranges = Vec::new();
    for part in text.split(',') {
        let (low, high) = match part.trim().split_once('-') {
            Some((low, high)) => (low.trim(), high.trim()),
            None => (part.trim(), part.trim()),
        };
        let low: u16 = low.parse().map_err(|_| bad())?;
        let high: u16 = high.parse().map_err(|_| bad())?;
        if !(100..=599).contains(&low) || !(100..=599).contains(&high) || low > high {
            return Err(bad());
        }
        ranges.push((low, high));
    }
    Ok(ranges)
}

struct Validator<'a> {
    path: &'a Path,
    source: &'a str,
    warnings: RefCell<Vec<ConfigError>>,
}

impl Validator<'_> {
    fn warn(&self, warning: ConfigError) {
        self.warnings.borrow_mut().push(warning);
    }

    fn err(
        &self,
        span: Option<std::ops::Range<usize>>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::at(self.path, self.source, span, key, message)
    }

    fn config(&self, file: FileConfig) -> Result<Config, ConfigError> {
        let global = Global {
            worker_threads: file.global.worker_threads.unwrap_or(0),
            max_body_size: file
                .global
                .max_body_size
                .map_or(DEFAULT_MAX_BODY_SIZE, |s| s.0),
            shutdown_timeout: file
                .global
                .shutdown_timeout
                .map_or(Duration::from_secs(30), |d| d.0),
            watch_config: file.global.watch_config.unwrap_or(true),
            pid_file: file.global.pid_file.clone(),
            trusted_proxies: match &file.global.trusted_proxies {
                Some(list) => self.trusted_proxies(list)?,
                None => Vec::new(),
            },
        };
        if file.listeners.is_empty() {
            return Err(self.err(
                None,
                "listener",
                "no [[listener]] is configured; add one with listen = \"127.0.0.1:8080\"",
            ));
        }
        let listeners = self.listeners(&file.listeners)?;
        let mut upstreams = BTreeMap::new();
        for (name, upstream) in file.upstreams {
            let checked = self.upstream(&name, upstream)?;
            upstreams.insert(name, checked);
        }
        let mut rate_limits = BTreeMap::new();
        for (name, zone) in file.rate_limits {
            let checked = self.rate_limit(&name, zone)?;
            rate_limits.insert(name, checked);
        }
        let routes = self.routes(&file.routes, &upstreams, &rate_limits)?;
        let admin = match &file.admin {
            Some(admin) => Some(self.admin(admin)?),
            None => None,
        };
        let access_log = file.access_log.as_ref().map(|log| AccessLogConfig {
            path: log.path.clone().unwrap_or_else(|| "stdout".into()),
            format: log.format.unwrap_or_default(),
        });
        Ok(Config {
            global,
            listeners,
            routes,
            upstreams,
            rate_limits,
            admin,
            access_log,
            source: ConfigSource {
                path: self.path.to_path_buf(),
                text: self.source.to_string(),
            },
            warnings: self.warnings.take(),
        })
    }

    fn listeners(&self, files: &[ListenerFile]) -> Result<Vec<ListenerConfig>, ConfigError> {
        let mut names = HashSet::new();
        let mut addrs = HashSet::new();
        let mut out = Vec::with_capacity(files.len());
        for (i, file) in files.iter().enumerate() {
            let key = format!("listener[{i}].listen");
            let listen = listen_addr(file.listen.get_ref()).ok_or_else(|| {
                self.err(
                    Some(file.listen.span()),
                    &key,
                    format!(
                        "`{}` is not an address to listen on; write ip:port, e.g. \"0.0.0.0:8080\"",
                        file.listen.get_ref()
                    ),
                )
            })?;
            if listen.port() != 0 && !addrs.insert(listen) {
                return Err(self.err(
                    Some(file.listen.span()),
                    &key,
                    format!("{listen} is already used by another listener"),
                ));
            }
            let name = file.name.clone().unwrap_or_else(|| format!("listener{i}"));
            if !names.insert(name.clone()) {
                return Err(self.err(
                    Some(file.listen.span()),
                    format!("listener[{i}].name"),
                    format!("listener name `{name}` is used twice"),
                ));
            }
            let max_connections_per_client = match &file.max_connections_per_client {
                Some(n) if *n.get_ref() == 0 => {
                    return Err(self.err(
                        Some(n.span()),
                        format!("listener[{i}].max_connections_per_client"),
                        "must be at least 1",
                    ))
                }
                Some(n) => Some(*n.get_ref()),
                None => None,
            };
            out.push(ListenerConfig {
                name,
                listen,
                reuseport: file.reuseport,
                max_connections_per_client,
            });
        }
        Ok(out)
    }

    fn routes(
        &self,
        files: &[RouteFile],
        upstreams: &BTreeMap<String, UpstreamConfig>,
        zones: &BTreeMap<String, RateLimitConfig>,
    ) -> Result<Vec<RouteConfig>, ConfigError> {
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(files.len());
        for (i, file) in files.iter().enumerate() {
            let upstream = file.upstream.get_ref();
            if !upstreams.contains_key(upstream) {
                let known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
                return Err(self.err(
                    Some(file.upstream.span()),
                    format!("route[{i}].upstream"),
                    format!(
                        "no upstream named `{upstream}` (defined: {})",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            }
            let host =
                match &file.host {
                    Some(host) => Some(self.host_pattern(host.get_ref()).map_err(|why| {
                        self.err(Some(host.span()), format!("route[{i}].host"), why)
                    })?),
                    None => None,
                };
            let path = match &file.path {
                Some(path) if !path.get_ref().starts_with('/') => {
                    return Err(self.err(
                        Some(path.span()),
                        format!("route[{i}].path"),
                        format!("`{}` must start with /", path.get_ref()),
                    ))
                }
                Some(path) => path.get_ref().clone(),
                None => "/".to_string(),
            };
            if !seen.insert((host.clone(), path.clone())) {
                return Err(self.err(
                    Some(file.upstream.span()),
                    format!("route[{i}]"),
                    format!(
                        "another route already matches host {} and path {path}",
                        host.as_deref().unwrap_or("(any)")
                    ),
                ));
            }
            out.push(RouteConfig {
                host,
                path,
                upstream: upstream.clone(),
                max_body_size: file.max_body_size.map(|s| s.0),
                rate_limit: match &file.rate_limit {
                    Some(names) => {
                        for name in names.get_ref() {
                            if !zones.contains_key(name) {
                                return Err(self.err(
                                    Some(names.span()),
                                    format!("route[{i}].rate_limit"),
                                    format!("no [rate_limit.{name}] zone is defined"),
                                ));
                            }
                        }
                        names.get_ref().clone()
                    }
                    None => Vec::new(),
                },
            });
        }
        Ok(out)
    }

    fn host_pattern(&self, host: &str) -> Result<String, String> {
        let lower = host.to_ascii_lowercase();
        let name = lower.strip_prefix("*.").unwrap_or(&lower);
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            && !name.starts_with('.')
            && !name.ends_with('.');
        if valid {
            Ok(lower)
        } else {
            Err(format!(
                "`{host}` is not a host name; write example.com or *.example.com"
            ))
        }
    }

    fn upstream(&self, name: &str, file: UpstreamFile) -> Result<UpstreamConfig, ConfigError> {
        let key = |k: &str| format!("upstream.{name}.{k}");
        let strategy = file.strategy.unwrap_or(Strategy::RoundRobin);
        // A key that another strategy would use is kept (switching strategy back needs no edit) but said.
        if let Some(hash_key) = &file.hash_key {
            if strategy != Strategy::ConsistentHash {
                self.warn(self.err(
                    Some(hash_key.span()),
                    key("hash_key"),
                    "is used only by strategy = \"consistent_hash\"; ignored",
                ));
            }
        }
        if let Some(prefix) = &file.ip_hash_prefix {
            if strategy != Strategy::IpHash {
                self.warn(self.err(
                    Some(prefix.span()),
                    key("ip_hash_prefix"),
                    "is used only by strategy = \"ip_hash\"; ignored",
                ));
            }
        }
        let ip_hash_prefix = match &file.ip_hash_prefix {
            Some(prefix) if !(1..=32).contains(prefix.get_ref()) => {
                return Err(self.err(
                    Some(prefix.span()),
                    key("ip_hash_prefix"),
                    "must be an IPv4 prefix length from 1 to 32",
                ))
            }
            Some(prefix) => *prefix.get_ref(),
            None => 32,
        };
        let retry_on = match &file.retry_on {
            Some(words) => self.retry_on(words, &key("retry_on"))?,
            None => RetryOn::nginx_default(),
        };
        let max_fails = file.max_fails.unwrap_or(1);
        let fail_timeout = file.fail_timeout.map_or(Duration::from_secs(10), |d| d.0);
        let servers_span = file.servers.span();
        let mut servers = Vec::with_capacity(file.servers.get_ref().len());
        let mut addrs = HashSet::new();
        for (i, server) in file.servers.into_inner().into_iter().enumerate() {
            let addr = server.addr.get_ref().0.clone();
            if !addrs.insert(addr.as_str().to_ascii_lowercase()) {
                return Err(self.err(
                    Some(server.addr.span()),
                    key(&format!("servers[{i}].addr")),
                    format!("server {addr} is listed twice"),
                ));
            }
            let weight = match server.weight {
                Some(w) if !(1..=MAX_WEIGHT).contains(w.get_ref()) => {
                    return Err(self.err(
                        Some(w.span()),
                        key(&format!("servers[{i}].weight")),
                        format!("must be from 1 to {MAX_WEIGHT}"),
                    ))
                }
                Some(w) => w.into_inner(),
                None => 1,
            };
            servers.push(ServerConfig {
                addr,
                weight,
                max_fails: server.max_fails.unwrap_or(max_fails),
                fail_timeout: server.fail_timeout.map_or(fail_timeout, |d| d.0),
                backup: server.backup,
                drain: server.drain,
                id: server.id,
            });
        }
        if !servers.iter().any(|s| !s.backup) {
            return Err(self.err(
                Some(servers_span),
                key("servers"),
                "the pool has no server (a pool needs at least one server that is not a backup)",
            ));
        }
        let positive = |d: Option<super::values::ConfigDuration>, default: u64, k: &str| {
            let value = d.map_or(Duration::from_secs(default), |d| d.0);
            if value.is_zero() {
                Err(self.err(None, key(k), "must be greater than zero"))
            } else {
                Ok(value)
            }
        };
        Ok(UpstreamConfig {
            name: name.to_string(),
            strategy,
            hash_key: file.hash_key.map_or(HashKey::ClientIp, |k| k.into_inner()),
            ip_hash_prefix,
            connect_timeout: positive(file.connect_timeout, 3, "connect_timeout")?,
            read_timeout: positive(file.read_timeout, 60, "read_timeout")?,
            retries: file.retries,
            retry_on,
            keepalive_timeout: positive(file.keepalive_timeout, 60, "keepalive_timeout")?,
            keepalive: file.keepalive.unwrap_or(256),
            slow_start: file.slow_start.map_or(Duration::ZERO, |d| d.0),
            all_unhealthy: file.all_unhealthy,
            health_check: match file.health_check {
                Some(check) => Some(self.health_check(name, check, file.start_unhealthy)?),
                None => None,
            },
            servers,
        })
    }

    fn health_check(
        &self,
        name: &str,
        file: HealthCheckFile,
        upstream_start_unhealthy: Option<bool>,
    ) -> Result<HealthCheckConfig, ConfigError> {
        let key = |k: &str| format!("upstream.{name}.health_check.{k}");
        let interval = file
            .interval
            .as_ref()
            .map_or(Duration::from_secs(5), |d| d.get_ref().0);
        if interval.is_zero() {
            return Err(self.err(
                file.interval.as_ref().map(|d| d.span()),
                key("interval"),
                "must be greater than zero",
            ));
        }
        let timeout = file
            .timeout
            .as_ref()
            .map_or(Duration::from_secs(1), |d| d.get_ref().0);
        if timeout.is_zero() || timeout >= interval {
            return Err(self.err(
                file.timeout
                    .as_ref()
                    .or(file.interval.as_ref())
                    .map(|d| d.span()),
                key("timeout"),
                format!(
                    "must be greater than zero and less than interval ({}ms)",
                    interval.as_millis()
                ),
            ));
        }
        let at_least_one = |value: &Option<toml::Spanned<u32>>, k: &str, default: u32| match value {
            Some(v) if *v.get_ref() == 0 => {
                Err(self.err(Some(v.span()), key(k), "must be at least 1"))
            }
            Some(v) => Ok(*v.get_ref()),
            None => Ok(default),
        };
        let max_fails = at_least_one(&file.max_fails, "max_fails", 3)?;
        let passes = at_least_one(&file.passes, "passes", 2)?;
        let expected_status = match &file.expected_status {
            Some(text) => parse_status_ranges(text.get_ref())
                .map_err(|why| self.err(Some(text.span()), key("expected_status"), why))?,
            None => vec![(200, 399)],
        };
        let path = match &file.path {
            Some(path) if !path.get_ref().starts_with('/') => {
                return Err(self.err(
                    Some(path.span()),
                    key("path"),
                    format!("`{}` must start with /", path.get_ref()),
                ))
            }
            Some(path) => path.get_ref().clone(),
            None => "/".to_string(),
        };
        let concurrency = match &file.concurrency {
            Some(c) if *c.get_ref() == 0 => {
                return Err(self.err(Some(c.span()), key("concurrency"), "must be at least 1"))
            }
            Some(c) => *c.get_ref(),
            None => 64,
        };
        Ok(HealthCheckConfig {
            kind: file.kind.unwrap_or_default(),
            path,
            interval,
            timeout,
            max_fails,
            passes,
            expected_status,
            expect_body: file.expect_body,
            host: file.host,
            port: file.port,
            start_unhealthy: file
                .start_unhealthy
                .or(upstream_start_unhealthy)
                .unwrap_or(false),
            concurrency,
        })
    }

    fn admin(&self, file: &AdminFile) -> Result<AdminConfig, ConfigError> {
        let listen = match &file.listen {
            Some(text) => listen_addr(text.get_ref()).ok_or_else(|| {
                self.err(
                    Some(text.span()),
                    "admin.listen",
                    format!(
                        "`{}` is not an address to listen on; write ip:port",
                        text.get_ref()
                    ),
                )
            })?,
            None => SocketAddr::from(([127, 0, 0, 1], 9901)),
        };
        if file.token.as_deref() == Some("") {
            return Err(self.err(
                None,
                "admin.token",
                "must not be empty (leave it out for no token)",
            ));
        }
        Ok(AdminConfig {
            listen,
            token: file.token.clone(),
        })
    }

    fn trusted_proxies(
        &self,
        list: &toml::Spanned<Vec<String>>,
    ) -> Result<Vec<ipnet::IpNet>, ConfigError> {
        list.get_ref()
            .iter()
            .map(|text| {
                text.parse::<ipnet::IpNet>()
                    .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        self.err(
                            Some(list.span()),
                            "global.trusted_proxies",
                            format!("`{text}` is not an address or CIDR range like \"10.0.0.0/8\""),
                        )
                    })
            })
            .collect()
    }

    fn rate_limit(&self, name: &str, file: RateLimitFile) -> Result<RateLimitConfig, ConfigError> {
        let key = |k: &str| format!("rate_limit.{name}.{k}");
        let rate = parse_rate(file.rate.get_ref())
            .map_err(|why| self.err(Some(file.rate.span()), key("rate"), why))?;
        let status = match &file.status {
            Some(status) if !(400..=599).contains(status.get_ref()) => {
                return Err(self.err(
                    Some(status.span()),
                    key("status"),
                    "must be a 4xx or 5xx status",
                ))
            }
            Some(status) => *status.get_ref(),
            None => 429,
        };
        let backend = match file
            .backend
            .as_ref()
            .map(|b| (b.get_ref().as_str(), b.span()))
        {
            None | Some(("local", _)) => RateLimitBackend::Local,
            Some(("redis", span)) => {
                let Some(url) = &file.redis_url else {
                    return Err(self.err(
                        Some(span),
                        key("redis_url"),
                        "backend = \"redis\" needs redis_url, e.g. \"redis://127.0.0.1:6379/0\"",
                    ));
                };
                if let Err(e) = redis::Client::open(url.get_ref().as_str()) {
                    return Err(self.err(
                        Some(url.span()),
                        key("redis_url"),
                        format!("`{}` is not a Redis URL: {e}", url.get_ref()),
                    ));
                }
                let deny_on_error = match file.on_redis_error.as_ref() {
                    None => false,
                    Some(v) if v.get_ref() == "allow" => false,
                    Some(v) if v.get_ref() == "deny" => true,
                    Some(v) => {
                        return Err(self.err(
                            Some(v.span()),
                            key("on_redis_error"),
                            format!("unknown value `{}`; expected allow or deny", v.get_ref()),
                        ))
                    }
                };
                RateLimitBackend::Redis {
                    url: url.get_ref().clone(),
                    deny_on_error,
                    timeout: file
                        .redis_timeout
                        .map_or(Duration::from_millis(50), |d| d.0),
                }
            }
            Some((other, span)) => {
                return Err(self.err(
                    Some(span),
                    key("backend"),
                    format!("unknown backend `{other}`; expected local or redis"),
                ))
            }
        };
        let max_keys = match &file.max_keys {
            Some(n) if *n.get_ref() == 0 => {
                return Err(self.err(Some(n.span()), key("max_keys"), "must be at least 1"))
            }
            Some(n) => *n.get_ref(),
            None => 100_000,
        };
        Ok(RateLimitConfig {
            name: name.to_string(),
            key: file.key.map_or(HashKey::ClientIp, |k| k.into_inner()),
            rate,
            burst: file.burst.unwrap_or(0),
            nodelay: file.nodelay.unwrap_or(false),
            delay: file.delay.unwrap_or(0),
            status,
            dry_run: file.dry_run.unwrap_or(false),
            max_keys,
            backend,
        })
    }

    fn retry_on(
        &self,
        words: &toml::Spanned<Vec<String>>,
        key: &str,
    ) -> Result<RetryOn, ConfigError> {
        let mut bits = 0;
        for word in words.get_ref() {
            let Some((_, flag)) = RetryOn::WORDS.iter().find(|(w, _)| w == word) else {
                let known: Vec<&str> = RetryOn::WORDS.iter().map(|(w, _)| *w).collect();
                return Err(self.err(
                    Some(words.span()),
                    key,
                    format!("unknown value `{word}`; expected {}", known.join(", ")),
                ));
            };
            bits |= flag;
        }
        if words.get_ref().iter().any(|w| w == "off") && words.get_ref().len() > 1 {
            return Err(self.err(
                Some(words.span()),
                key,
                "`off` cannot be combined with other values",
            ));
        }
        Ok(RetryOn::from_bits(bits))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_ranges_parse() {
        assert_eq!(parse_status_ranges("200-399"), Ok(vec![(200, 399)]));
        assert_eq!(parse_status_ranges("200"), Ok(vec![(200, 200)]));
        assert_eq!(
            parse_status_ranges("200, 204,300-302"),
            Ok(vec![(200, 200), (204, 204), (300, 302)])
        );
        for bad in ["", "2xx", "399-200", "99", "200-600", "200-"] {
            assert!(parse_status_ranges(bad).is_err(), "{bad}");
        }
    }
}
