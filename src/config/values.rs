//! Parsers for the value types the config file uses: durations, sizes, hash keys, server addresses.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

/// A duration written as `"500ms"`, `"30s"`, `"5m"`, `"1h"`, or a bare integer of seconds (as nginx reads `30`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

/// Parses `"500ms"`, `"30s"`, `"5m"`, `"1h"`, `"1d"` or `"30"` (seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(format!(
            "`{text}` is not a duration; write it like \"500ms\", \"30s\", \"5m\" or \"1h\""
        ));
    }
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is too large a duration"))?;
    let millis_per_unit: u64 = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => {
            return Err(format!(
                "`{text}` has unknown unit `{other}`; use ms, s, m, h or d"
            ))
        }
    };
    value
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("`{text}` is too large a duration"))
}

impl<'de> serde::Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = ConfigDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as \"500ms\", \"30s\" or \"5m\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                parse_duration(v).map(ConfigDuration).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(|s| ConfigDuration(Duration::from_secs(s)))
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
        }
        deserializer.deserialize_any(DurationVisitor)
    }
}

/// A byte size written as `"1m"`, `"512k"`, `"2g"` (nginx's suffixes, case-insensitive, optional `b`) or an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigSize(pub u64);

/// Parses `"1m"`, `"512k"`, `"10mb"`, `"2g"` or `"1024"` into bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let lower = text.trim().to_ascii_lowercase();
    let body = lower.strip_suffix('b').unwrap_or(&lower);
    let (digits, multiplier) = match body.chars().last() {
        Some('k') => (&body[..body.len() - 1], 1u64 << 10),
        Some('m') => (&body[..body.len() - 1], 1 << 20),
        Some('g') => (&body[..body.len() - 1], 1 << 30),
        _ => (body, 1),
    };
    let value: u64 = digits.trim().parse().map_err(|_| {
        format!("`{text}` is not a size; write it like \"1m\", \"512k\" or \"1048576\"")
    })?;
    value
        .checked_mul(multiplier)
        .ok_or_else(|| format!("`{text}` is too large a size"))
}

impl<'de> serde::Deserialize<'de> for ConfigSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = ConfigSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"1m\" or \"512k\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                parse_size(v).map(ConfigSize).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(ConfigSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

/// What a `consistent_hash` pool hashes to place a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The client's IP address.
    ClientIp,
    /// A request header's value (`header:NAME`).
    Header(http::HeaderName),
    /// A cookie's value (`cookie:NAME`).
    Cookie(String),
    /// A query parameter's value (`query:NAME`).
    Query(String),
    /// The request path without the query.
    Path,
}

/// Parses `client_ip`, `header:NAME`, `cookie:NAME`, `query:NAME` or `path`.
pub fn parse_hash_key(text: &str) -> Result<HashKey, String> {
    let expected = "expected client_ip, path, header:NAME, cookie:NAME or query:NAME";
    match text {
        "client_ip" => return Ok(HashKey::ClientIp),
        "path" => return Ok(HashKey::Path),
        _ => {}
    }
    let Some((kind, name)) = text.split_once(':') else {
        return Err(format!("`{text}` is not a hash key; {expected}"));
    };
    if name.is_empty() {
        return Err(format!("`{text}` names no {kind}; {expected}"));
    }
    match kind {
        "header" => http::HeaderName::from_bytes(name.as_bytes())
            .map(HashKey::Header)
            .map_err(|_| format!("`{name}` is not a valid header name")),
        "cookie" => Ok(HashKey::Cookie(name.to_string())),
        "query" => Ok(HashKey::Query(name.to_string())),
        _ => Err(format!("`{text}` is not a hash key; {expected}")),
    }
}

impl<'de> serde::Deserialize<'de> for HashKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_hash_key(&text).map_err(de::Error::custom)
    }
}

/// An upstream server address: `host:port`, optionally written with an `http://` or `https://` prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddr {
    /// `host:port`.
    pub authority: http::uri::Authority,
    /// Written `https://`: spoken to over TLS.
    pub tls: bool,
}

/// Parses `127.0.0.1:9001`, `[::1]:9001`, `backend.internal:80`, `http://backend:80` or
/// `https://backend:443` (an `https://` address without a port means 443).
pub fn parse_server_addr(text: &str) -> Result<ServerAddr, String> {
    let addr = parse_server_target(text)?;
    if addr.authority.port_u16().is_none() {
        return Err(format!(
            "`{text}` is not a server address; write host:port, e.g. \"127.0.0.1:9001\""
        ));
    }
    Ok(addr)
}

/// As [`parse_server_addr`], but a host without a port is accepted: an SRV entry (`service = ...`)
/// takes its ports from the answers. Validation asks for the port everywhere else.
pub fn parse_server_target(text: &str) -> Result<ServerAddr, String> {
    let (tls, bare) = match text.split_once("://") {
        Some(("http", rest)) => (false, rest),
        Some(("https", rest)) => (true, rest),
        Some((scheme, _)) => {
            return Err(format!(
                "`{text}`: scheme `{scheme}` is not supported; write host:port, http://host:port or https://host:port"
            ))
        }
        None => (false, text),
    };
    let bare = bare.strip_suffix('/').unwrap_or(bare);
    let mut authority: http::uri::Authority = bare
        .parse()
        .map_err(|_| format!("`{text}` is not a server address; write host:port"))?;
    if tls && authority.port_u16().is_none() && !authority.host().is_empty() {
        authority = format!("{bare}:443")
            .parse()
            .map_err(|_| format!("`{text}` is not a server address; write host:port"))?;
    }
    if authority.host().is_empty() || bare.contains('@') {
        return Err(format!(
            "`{text}` is not a server address; write host:port, e.g. \"127.0.0.1:9001\""
        ));
    }
    Ok(ServerAddr { authority, tls })
}

impl<'de> serde::Deserialize<'de> for ServerAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_server_target(&text).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("99999999999999999999s").is_err());
    }

    #[test]
    fn sizes_parse_with_nginx_suffixes() {
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("10mb"), Ok(10 << 20));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn hash_keys_parse() {
        assert_eq!(parse_hash_key("client_ip"), Ok(HashKey::ClientIp));
        assert_eq!(parse_hash_key("path"), Ok(HashKey::Path));
        assert_eq!(
            parse_hash_key("header:X-User-Id"),
            Ok(HashKey::Header(http::HeaderName::from_static("x-user-id")))
        );
        assert_eq!(
            parse_hash_key("cookie:sid"),
            Ok(HashKey::Cookie("sid".into()))
        );
        assert!(parse_hash_key("header:").is_err());
        assert!(parse_hash_key("body:x").is_err());
    }

    #[test]
    fn server_addresses_need_a_port() {
        assert!(parse_server_addr("127.0.0.1:9001").is_ok());
        assert!(parse_server_addr("http://backend:80").is_ok());
        assert!(parse_server_addr("[::1]:80").is_ok());
        assert!(parse_server_addr("127.0.0.1").is_err());
        let https = parse_server_addr("https://x:8443").expect("an https address");
        assert!(https.tls);
        assert_eq!(https.authority.as_str(), "x:8443");
        assert_eq!(
            parse_server_addr("https://x").map(|a| a.authority.to_string()),
            Ok("x:443".to_string())
        );
        assert!(parse_server_addr("ftp://x:21").is_err());
        assert!(parse_server_addr("not an address").is_err());
    }
}
