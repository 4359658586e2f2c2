//! Validation of `[cache.NAME]` zones and a route's `cache*` keys.

use std::collections::BTreeMap;
use std::time::Duration;

use http::header::HeaderName;
use toml::Spanned;

use super::error::ConfigError;
use super::file::{CacheZoneFile, RouteFile};
use super::validate::Validator;
use super::{CacheKeyPart, CacheZoneConfig, RouteCacheConfig, UseStale};

/// `max_size` when a zone does not say.
const DEFAULT_MAX_SIZE: u64 = 256 << 20;
/// `max_entry_size` when a zone does not say.
const DEFAULT_MAX_ENTRY_SIZE: u64 = 8 << 20;

impl Validator<'_> {
    pub(super) fn cache_zone(
        &self,
        name: &str,
        file: &CacheZoneFile,
    ) -> Result<CacheZoneConfig, ConfigError> {
        let key = |k: &str| format!("cache.{name}.{k}");
        let max_size = file
            .max_size
            .as_ref()
            .map_or(DEFAULT_MAX_SIZE, |s| s.get_ref().0);
        if max_size == 0 {
            return Err(self.err(
                file.max_size.as_ref().map(Spanned::span),
                key("max_size"),
                "must be more than 0",
            ));
        }
        let max_entry_size = file
            .max_entry_size
            .as_ref()
            .map_or(DEFAULT_MAX_ENTRY_SIZE.min(max_size), |s| s.get_ref().0);
        if max_entry_size > max_size {
            return Err(self.err(
                file.max_entry_size.as_ref().map(Spanned::span),
                key("max_entry_size"),
                format!("{max_entry_size} bytes is more than the zone's max_size ({max_size})"),
            ));
        }
        Ok(CacheZoneConfig {
            name: name.to_string(),
            max_size,
            max_entry_size,
        })
    }

    /// A route's `cache` and its companions; the companions without `cache` are an error (they would do
    /// nothing).
    pub(super) fn route_cache(
        &self,
        file: &RouteFile,
        zones: &BTreeMap<String, CacheZoneConfig>,
        key: &dyn Fn(&str) -> String,
    ) -> Result<Option<RouteCacheConfig>, ConfigError> {
        let Some(zone) = &file.cache else {
            let companions = [
                ("cache_valid", file.cache_valid.as_ref().map(Spanned::span)),
                ("cache_key", file.cache_key.as_ref().map(Spanned::span)),
                ("cache_lock", file.cache_lock.as_ref().map(Spanned::span)),
                (
                    "cache_use_stale",
                    file.cache_use_stale.as_ref().map(Spanned::span),
                ),
                (
                    "cache_background_update",
                    file.cache_background_update.as_ref().map(Spanned::span),
                ),
            ];
            if let Some((name, span)) = companions.into_iter().find(|(_, span)| span.is_some()) {
                return Err(self.err(
                    span,
                    key(name),
                    "has no effect without `cache = \"ZONE\"` on the route",
                ));
            }
            return Ok(None);
        };
        if !zones.contains_key(zone.get_ref()) {
            let known: Vec<&str> = zones.keys().map(String::as_str).collect();
            return Err(self.err(
                Some(zone.span()),
                key("cache"),
                format!(
                    "no [cache.{}] zone is defined (zones: {})",
                    zone.get_ref(),
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
        let mut valid = Vec::new();
        if let Some(rows) = &file.cache_valid {
            for (status, time) in rows.get_ref() {
                let code = if status == "any" {
                    None
                } else {
                    match status.parse::<u16>() {
                        Ok(code) if (100..=599).contains(&code) => Some(code),
                        _ => {
                            return Err(self.err(
                                Some(time.span()),
                                key(&format!("cache_valid.{status}")),
                                "a status code (e.g. \"200\") or \"any\" is expected",
                            ))
                        }
                    }
                };
                valid.push((code, time.get_ref().0));
            }
        }
        let key_parts = match &file.cache_key {
            Some(parts) => {
                let parsed: Result<Vec<_>, String> =
                    parts.get_ref().iter().map(|p| key_part(p)).collect();
                let parsed =
                    parsed.map_err(|why| self.err(Some(parts.span()), key("cache_key"), why))?;
                if parsed.is_empty() {
                    return Err(self.err(
                        Some(parts.span()),
                        key("cache_key"),
                        "an empty key would give every request the same answer",
                    ));
                }
                parsed
            }
            None => vec![CacheKeyPart::Host, CacheKeyPart::Path, CacheKeyPart::Query],
        };
        let mut use_stale = 0;
        if let Some(names) = &file.cache_use_stale {
            for name in names.get_ref() {
                let Some((_, bit)) = UseStale::NAMES.iter().find(|(n, _)| n == name) else {
                    let known: Vec<&str> = UseStale::NAMES.iter().map(|(n, _)| *n).collect();
                    return Err(self.err(
                        Some(names.span()),
                        key("cache_use_stale"),
                        format!(
                            "unknown value `{name}`; expected some of {}",
                            known.join(", ")
                        ),
                    ));
                };
                use_stale |= bit;
            }
        }
        Ok(Some(RouteCacheConfig {
            zone: zone.get_ref().clone(),
            valid,
            key: key_parts,
            lock: file
                .cache_lock
                .as_ref()
                .map_or(Duration::ZERO, |d| d.get_ref().0),
            use_stale: UseStale::from_bits(use_stale),
            background_update: file
                .cache_background_update
                .as_ref()
                .is_some_and(|b| *b.get_ref()),
        }))
    }
}

/// One `cache_key` entry: `host`, `path`, `query`, `header:NAME` or `cookie:NAME`.
fn key_part(text: &str) -> Result<CacheKeyPart, String> {
    match text {
        "host" => return Ok(CacheKeyPart::Host),
        "path" => return Ok(CacheKeyPart::Path),
        "query" => return Ok(CacheKeyPart::Query),
        _ => {}
    }
    if let Some(name) = text.strip_prefix("header:") {
        return HeaderName::from_bytes(name.as_bytes())
            .map(CacheKeyPart::Header)
            .map_err(|_| format!("`{name}` is not a header name"));
    }
    if let Some(name) = text.strip_prefix("cookie:").filter(|n| !n.is_empty()) {
        return Ok(CacheKeyPart::Cookie(name.to_string()));
    }
    Err(format!(
        "unknown part `{text}`; expected \"host\", \"path\", \"query\", \"header:NAME\" or \"cookie:NAME\""
    ))
}
