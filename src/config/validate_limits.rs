//! Validation of `[rate_limit.NAME]` zones, `[global] trusted_proxies` and `[admin]`.

use std::net::SocketAddr;
use std::time::Duration;

use super::error::ConfigError;
use super::file::{AdminFile, RateLimitFile};
use super::validate::{listen_addr, Validator};
use super::values::HashKey;
use super::{AdminConfig, OnRedisError, Rate, RateLimitBackend, RateLimitConfig};

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

impl Validator<'_> {
    pub(super) fn admin(&self, file: &AdminFile) -> Result<AdminConfig, ConfigError> {
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

    pub(super) fn trusted_proxies(
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

    pub(super) fn rate_limit(
        &self,
        name: &str,
        file: RateLimitFile,
    ) -> Result<RateLimitConfig, ConfigError> {
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
                let urls = url.get_ref().to_vec();
                if urls.is_empty() {
                    return Err(self.err(
                        Some(url.span()),
                        key("redis_url"),
                        "needs at least one URL",
                    ));
                }
                let cluster = file.redis_cluster.unwrap_or(false);
                if urls.len() > 1 && !cluster {
                    return Err(self.err(
                        Some(url.span()),
                        key("redis_url"),
                        "a list of URLs is for a Redis Cluster: set redis_cluster = true, or give one URL",
                    ));
                }
                for one in &urls {
                    if let Err(e) = redis::Client::open(one.as_str()) {
                        return Err(self.err(
                            Some(url.span()),
                            key("redis_url"),
                            format!("`{one}` is not a Redis URL: {e}"),
                        ));
                    }
                }
                let on_error = match file.on_redis_error.as_ref() {
                    None => OnRedisError::Allow,
                    Some(v) if v.get_ref() == "allow" => OnRedisError::Allow,
                    Some(v) if v.get_ref() == "deny" => OnRedisError::Deny,
                    Some(v) if v.get_ref() == "local" => OnRedisError::Local,
                    Some(v) => {
                        return Err(self.err(
                            Some(v.span()),
                            key("on_redis_error"),
                            format!(
                                "unknown value `{}`; expected allow, deny or local",
                                v.get_ref()
                            ),
                        ))
                    }
                };
                let fleet_size = match &file.fleet_size {
                    Some(n) if *n.get_ref() == 0 => {
                        return Err(self.err(
                            Some(n.span()),
                            key("fleet_size"),
                            "must be at least 1",
                        ))
                    }
                    Some(n) => *n.get_ref(),
                    None => 1,
                };
                RateLimitBackend::Redis {
                    urls,
                    cluster,
                    on_error,
                    fleet_size,
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
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, OnRedisError, RateLimitBackend};

    fn zone(keys: &str) -> Result<Config, String> {
        Config::parse(
            &format!(
                "[[listener]]\nlisten = \"127.0.0.1:0\"\n[[route]]\npath = \"/\"\nupstream = \"app\"\nrate_limit = [\"api\"]\n[rate_limit.api]\nrate = \"10r/s\"\nbackend = \"redis\"\n{keys}\n[upstream.app]\nservers = [{{ addr = \"127.0.0.1:1\" }}]\n"
            ),
            Path::new("t.toml"),
        )
        .map_err(|e| e.to_string())
    }

    fn backend(keys: &str) -> RateLimitBackend {
        let config = zone(keys).unwrap_or_else(|e| panic!("{e}"));
        config.rate_limits["api"].backend.clone()
    }

    #[test]
    fn fleet_keys_parse_with_their_defaults() {
        let RateLimitBackend::Redis {
            urls,
            cluster,
            on_error,
            fleet_size,
            ..
        } = backend("redis_url = \"redis://127.0.0.1:6379/0\"")
        else {
            panic!("a Redis zone");
        };
        assert_eq!(urls, ["redis://127.0.0.1:6379/0"]);
        assert!(!cluster);
        assert_eq!((on_error, fleet_size), (OnRedisError::Allow, 1));
        let RateLimitBackend::Redis {
            urls,
            cluster,
            on_error,
            fleet_size,
            ..
        } = backend(
            "redis_url = [\"redis://a:6379\", \"redis://b:6379\"]\nredis_cluster = true\non_redis_error = \"local\"\nfleet_size = 3",
        )
        else {
            panic!("a Redis zone");
        };
        assert_eq!(urls.len(), 2);
        assert!(cluster);
        assert_eq!((on_error, fleet_size), (OnRedisError::Local, 3));
    }

    #[test]
    fn bad_fleet_keys_are_refused_by_name() {
        for (keys, key) in [
            (
                "redis_url = [\"redis://a:6379\", \"redis://b:6379\"]",
                "redis_url",
            ),
            ("redis_url = []\nredis_cluster = true", "redis_url"),
            (
                "redis_url = \"redis://a:6379\"\non_redis_error = \"maybe\"",
                "on_redis_error",
            ),
            (
                "redis_url = \"redis://a:6379\"\nfleet_size = 0",
                "fleet_size",
            ),
        ] {
            let error = zone(keys).expect_err(keys);
            assert!(error.contains(key), "{keys}: {error}");
        }
    }
}
