//! An upstream's `servers` and `[resolver]`: a host name is resolved at load and each of its addresses
//! becomes a server (nginx's `server name:port`); `resolve = true` entries are kept for service
//! discovery to re-resolve while running (nginx's `resolve`, `service=`).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use toml::Spanned;

use super::error::ConfigError;
use super::file::{ResolverFile, ServerFile};
use super::validate::{Validator, MAX_WEIGHT};
use super::{Discover, ResolverConfig, ServerConfig};

/// What every server of a pool inherits from the pool's own keys.
pub(super) struct ServerDefaults {
    pub max_conns: Option<u32>,
    pub max_fails: u32,
    pub fail_timeout: Duration,
    /// `[resolver] ipv6`: addresses found at load are filtered by it too.
    pub ipv6: bool,
}

impl Validator<'_> {
    /// `[resolver]`.
    pub(super) fn resolver(
        &self,
        file: Option<&ResolverFile>,
    ) -> Result<ResolverConfig, ConfigError> {
        let mut resolver = ResolverConfig::default();
        let Some(file) = file else {
            return Ok(resolver);
        };
        if let Some(servers) = &file.servers {
            for (i, text) in servers.get_ref().iter().enumerate() {
                let addr = text
                    .parse::<SocketAddr>()
                    .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                    .map_err(|_| {
                        self.err(
                            Some(servers.span()),
                            format!("resolver.servers[{i}]"),
                            format!("`{text}` is not a name server address; write \"10.0.0.2\" or \"127.0.0.11:53\""),
                        )
                    })?;
                resolver.servers.push(addr);
            }
        }
        if let Some(valid) = file.valid {
            if valid.0 < Duration::from_secs(1) {
                return Err(self.err(None, "resolver.valid", "must be at least 1s"));
            }
            resolver.valid = Some(valid.0);
        }
        if let Some(timeout) = file.timeout {
            if timeout.0.is_zero() {
                return Err(self.err(None, "resolver.timeout", "must be greater than zero"));
            }
            resolver.timeout = timeout.0;
        }
        resolver.ipv6 = file.ipv6.unwrap_or(true);
        Ok(resolver)
    }

    /// The servers of upstream `name`, host names resolved now unless they have `resolve = true`.
    pub(super) fn servers(
        &self,
        name: &str,
        entries: Vec<ServerFile>,
        defaults: &ServerDefaults,
    ) -> Result<Vec<ServerConfig>, ConfigError> {
        let key = |i: usize, k: &str| format!("upstream.{name}.servers[{i}].{k}");
        let mut servers = Vec::with_capacity(entries.len());
        let mut written = HashSet::new();
        let mut seen = HashSet::new();
        for (i, server) in entries.into_iter().enumerate() {
            let span = server.addr.span();
            let addr = server.addr.get_ref().authority.clone();
            let tls = server.addr.get_ref().tls;
            if !written.insert((addr.as_str().to_ascii_lowercase(), tls)) {
                return Err(self.err(
                    Some(span.clone()),
                    key(i, "addr"),
                    format!("server {addr} is listed twice"),
                ));
            }
            let weight = match &server.weight {
                Some(w) if !(1..=MAX_WEIGHT).contains(w.get_ref()) => {
                    return Err(self.err(
                        Some(w.span()),
                        key(i, "weight"),
                        format!("must be from 1 to {MAX_WEIGHT}"),
                    ))
                }
                Some(w) => *w.get_ref(),
                None => 1,
            };
            let host = addr.host().trim_start_matches('[').trim_end_matches(']');
            let is_ip = host.parse::<IpAddr>().is_ok();
            let discover = self.discover(&server, &addr, is_ip, &key(i, "service"))?;
            if !discover.as_ref().is_some_and(|d| d.srv) && addr.port_u16().is_none() {
                return Err(self.err(
                    Some(span.clone()),
                    key(i, "addr"),
                    format!("`{addr}` has no port; write host:port (only an SRV entry, with service = \"...\", takes its ports from DNS)"),
                ));
            }
            let config = ServerConfig {
                addr: addr.clone(),
                name: (!is_ip).then(|| host.to_ascii_lowercase()),
                discover,
                tls,
                weight,
                max_conns: server.max_conns.or(defaults.max_conns).unwrap_or(0),
                max_fails: server.max_fails.unwrap_or(defaults.max_fails),
                fail_timeout: server.fail_timeout.map_or(defaults.fail_timeout, |d| d.0),
                backup: server.backup,
                drain: server.drain,
                id: server.id,
            };
            if is_ip || config.discover.is_some() {
                seen.insert((addr.as_str().to_string(), tls));
                servers.push(config);
                continue;
            }
            // A name without `resolve`: every address it has now is a server (nginx: "host not found
            // in upstream" when it has none). getaddrinfo, so /etc/hosts and nsswitch apply as for nginx.
            let port = addr.port_u16().unwrap_or(0);
            let found = std::net::ToSocketAddrs::to_socket_addrs(&(host, port)).map_err(|e| {
                self.err(
                    Some(span.clone()),
                    key(i, "addr"),
                    format!("host not found: `{host}` does not resolve ({e}); fix the name, or add resolve = true to follow it while running"),
                )
            })?;
            let mut any = false;
            for found in found.filter(|a| defaults.ipv6 || a.is_ipv4()) {
                let authority: http::uri::Authority = match found.to_string().parse() {
                    Ok(authority) => authority,
                    Err(_) => continue,
                };
                any = true;
                if seen.insert((authority.as_str().to_string(), tls)) {
                    servers.push(ServerConfig {
                        addr: authority,
                        ..config.clone()
                    });
                }
            }
            if !any {
                return Err(self.err(
                    Some(span),
                    key(i, "addr"),
                    format!("host not found: `{host}` has no address; fix the name, or add resolve = true to follow it while running"),
                ));
            }
        }
        Ok(servers)
    }

    /// The [`Discover`] of an entry with `resolve = true`, and the checks of `service`.
    fn discover(
        &self,
        server: &ServerFile,
        addr: &http::uri::Authority,
        is_ip: bool,
        service_key: &str,
    ) -> Result<Option<Discover>, ConfigError> {
        let host = addr.host().to_ascii_lowercase();
        match (&server.service, server.resolve) {
            (Some(service), false) => Err(self.err(
                Some(service.span()),
                service_key,
                "needs resolve = true (SRV records are looked up while running, as nginx's service= needs resolve)",
            )),
            (Some(service), true) => {
                let service = service_name(service, self, service_key)?;
                if is_ip {
                    return Err(self.err(
                        Some(server.addr.span()),
                        service_key.replace(".service", ".addr"),
                        "an SRV entry names a host, not an IP address",
                    ));
                }
                // A name written as `_x._tcp.host` is asked as it is; otherwise `_service._tcp.host`.
                let query = if host.starts_with('_') {
                    host
                } else {
                    format!("_{service}._tcp.{host}")
                };
                Ok(Some(Discover {
                    query,
                    srv: true,
                    port: 0,
                }))
            }
            (None, true) if is_ip => Ok(None),
            (None, true) => Ok(Some(Discover {
                query: host,
                srv: false,
                port: addr.port_u16().unwrap_or(0),
            })),
            (None, false) => Ok(None),
        }
    }
}

fn service_name(
    service: &Spanned<String>,
    validator: &Validator<'_>,
    key: &str,
) -> Result<String, ConfigError> {
    let name = service
        .get_ref()
        .trim_start_matches('_')
        .to_ascii_lowercase();
    let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if valid {
        Ok(name)
    } else {
        Err(validator.err(
            Some(service.span()),
            key,
            format!(
                "`{}` is not a service name; write e.g. \"http\"",
                service.get_ref()
            ),
        ))
    }
}
