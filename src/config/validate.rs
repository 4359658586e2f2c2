//! Turns the file structs into a [`Config`], checking everything the types alone cannot.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::error::ConfigError;
use super::file::{FileConfig, LeastTimeMode, ListenerFile, Strategy, UpstreamFile};
use super::values::HashKey;
use super::{
    AccessLogConfig, Config, ConfigSource, Global, ListenerConfig, RetryOn, UpstreamConfig,
};

/// Memory per body and direction before a temp file (nginx's `proxy_buffers 8 8k` and
/// `client_body_buffer_size` are smaller; one figure covers both here).
const DEFAULT_BUFFER_SIZE: usize = 64 * 1024;
/// The largest `buffer_size` accepted.
const MAX_BUFFER_SIZE: u64 = 1 << 30;
/// nginx `proxy_max_temp_file_size` default.
const DEFAULT_MAX_TEMP_FILE: u64 = 1 << 30;
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
        ipv6: file.resolver.as_ref().and_then(|r| r.ipv6).unwrap_or(true),
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
pub(super) fn listen_addr(text: &str) -> Option<SocketAddr> {
    if let Ok(addr) = text.parse() {
        return Some(addr);
    }
    std::net::ToSocketAddrs::to_socket_addrs(text).ok()?.next()
}

pub(super) struct Validator<'a> {
    pub(super) path: &'a Path,
    pub(super) source: &'a str,
    pub(super) warnings: RefCell<Vec<ConfigError>>,
    /// `[resolver] ipv6`, read before the upstreams: addresses found at load follow it too.
    pub(super) ipv6: bool,
}

impl Validator<'_> {
    pub(super) fn warn(&self, warning: ConfigError) {
        self.warnings.borrow_mut().push(warning);
    }

    pub(super) fn err(
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
            temp_path: file.global.temp_path.as_ref().map(|path| {
                // Not an error: a missing or read-only directory degrades buffering to streaming.
                if !path.get_ref().is_dir() {
                    self.warn(self.err(
                        Some(path.span()),
                        "global.temp_path",
                        format!(
                            "{} is not a directory now; bodies past buffer_size will stream until it is",
                            path.get_ref().display()
                        ),
                    ));
                }
                path.get_ref().clone()
            }),
        };
        if file.listeners.is_empty() {
            return Err(self.err(
                None,
                "listener",
                "no [[listener]] is configured; add one with listen = \"127.0.0.1:8080\"",
            ));
        }
        let listeners = self.listeners(&file.listeners)?;
        let resolver = self.resolver(file.resolver.as_ref())?;
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
        let mut caches = BTreeMap::new();
        for (name, zone) in &file.caches {
            caches.insert(name.clone(), self.cache_zone(name, zone)?);
        }
        let compression = self.compression(file.compression.as_ref())?;
        let routes = self.routes(
            &file.routes,
            &upstreams,
            &rate_limits,
            &caches,
            &compression,
        )?;
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
            caches,
            admin,
            access_log,
            resolver,
            compression,
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
            if let (Some(lifetime), None) = (&file.session_ticket_lifetime, &file.tls) {
                self.warn(self.err(
                    Some(lifetime.span()),
                    format!("listener[{i}].session_ticket_lifetime"),
                    "applies to TLS listeners only; ignored",
                ));
            }
            let tls = match &file.tls {
                Some(tls) => {
                    Some(self.listener_tls(i, tls, file.session_ticket_lifetime.as_ref())?)
                }
                None => None,
            };
            let redirect_to_https = self.redirect_to_https(i, file, tls.is_some())?;
            let http = self.http_limits(i, file)?;
            let client = self.client_limits(i, file)?;
            out.push(ListenerConfig {
                name,
                listen,
                reuseport: file.reuseport,
                max_connections_per_client,
                tls,
                redirect_to_https,
                http,
                client,
            });
        }
        Ok(out)
    }

    pub(super) fn host_pattern(&self, host: &str) -> Result<String, String> {
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
        if let Some(mode) = &file.least_time {
            if strategy != Strategy::LeastTime {
                self.warn(self.err(
                    Some(mode.span()),
                    key("least_time"),
                    "is used only by strategy = \"least_time\" (the latency others show is timed to the response head); ignored",
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
        let any_tls = file.servers.get_ref().iter().any(|s| s.addr.get_ref().tls);
        let (protocol, tls) = self.upstream_tls(name, &file, any_tls)?;
        let servers_span = file.servers.span();
        let servers = self.servers(
            name,
            file.servers.into_inner(),
            &super::validate_servers::ServerDefaults {
                max_conns: file.max_conns,
                max_fails,
                fail_timeout,
                ipv6: self.ipv6,
            },
        )?;
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
            least_time: match (strategy, &file.least_time) {
                (Strategy::LeastTime, Some(mode)) => *mode.get_ref(),
                _ => LeastTimeMode::Header,
            },
            hash_key: file.hash_key.map_or(HashKey::ClientIp, |k| k.into_inner()),
            ip_hash_prefix,
            connect_timeout: positive(file.connect_timeout, 3, "connect_timeout")?,
            read_timeout: positive(file.read_timeout, 60, "read_timeout")?,
            send_timeout: positive(file.send_timeout, 60, "send_timeout")?,
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
            protocol,
            tls,
            queue: file.queue.unwrap_or(0),
            queue_timeout: match &file.queue_timeout {
                Some(timeout) if timeout.get_ref().0.is_zero() => {
                    return Err(self.err(
                        Some(timeout.span()),
                        key("queue_timeout"),
                        "must be greater than zero",
                    ))
                }
                Some(timeout) => timeout.get_ref().0,
                None => Duration::from_secs(60),
            },
            request_buffering: file.request_buffering.unwrap_or(true),
            buffering: file.buffering.unwrap_or(true),
            buffer_size: match &file.buffer_size {
                Some(size) if size.get_ref().0 == 0 || size.get_ref().0 > MAX_BUFFER_SIZE => {
                    return Err(self.err(
                        Some(size.span()),
                        key("buffer_size"),
                        "must be between 1 byte and 1g",
                    ))
                }
                Some(size) => usize::try_from(size.get_ref().0).unwrap_or(DEFAULT_BUFFER_SIZE),
                None => DEFAULT_BUFFER_SIZE,
            },
            max_temp_file_size: file
                .max_temp_file_size
                .map_or(DEFAULT_MAX_TEMP_FILE, |s| s.0),
            servers,
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
