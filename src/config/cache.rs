//! The response cache's settings: `[cache.NAME]` zones and a route's `cache*` keys.

use std::time::Duration;

use http::header::HeaderName;

/// One `[cache.NAME]` zone (nginx `proxy_cache_path ... keys_zone=NAME max_size=...`), kept in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheZoneConfig {
    /// The zone's name, as routes refer to it.
    pub name: String,
    /// Bytes of bodies, keys and headers the zone holds at most; least recently used go first.
    pub max_size: u64,
    /// Answers with longer bodies are passed through, not stored.
    pub max_entry_size: u64,
}

/// A route's cache settings (nginx `proxy_cache` and its companions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteCacheConfig {
    /// The `[cache.NAME]` zone the route stores in.
    pub zone: String,
    /// `cache_valid`: freshness by status for answers that carry none of their own (`None` = any).
    pub valid: Vec<(Option<u16>, Duration)>,
    /// `cache_key`: what tells two requests' answers apart.
    pub key: Vec<CacheKeyPart>,
    /// `cache_lock`: how long concurrent misses wait for one fill; zero is off.
    pub lock: Duration,
    /// `cache_use_stale`: when an expired entry is served instead of a failure.
    pub use_stale: UseStale,
    /// `cache_background_update`: an expired entry is served while one request refreshes it.
    pub background_update: bool,
}

impl RouteCacheConfig {
    /// The `cache_valid` time for `status`: its own row, else `any`.
    pub fn valid_for(&self, status: u16) -> Option<Duration> {
        self.valid
            .iter()
            .find(|(code, _)| *code == Some(status))
            .or_else(|| self.valid.iter().find(|(code, _)| code.is_none()))
            .map(|(_, valid)| *valid)
    }
}

/// One part of a `cache_key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheKeyPart {
    /// The request's host.
    Host,
    /// The request's path.
    Path,
    /// The request's query string.
    Query,
    /// A request header's value.
    Header(HeaderName),
    /// A cookie's value.
    Cookie(String),
}

/// `cache_use_stale` conditions, as bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UseStale {
    bits: u16,
}

impl UseStale {
    /// No server could be reached or it failed to answer.
    pub const ERROR: u16 = 1;
    /// The server did not answer in time.
    pub const TIMEOUT: u16 = 1 << 1;
    /// A 500 answer.
    pub const HTTP_500: u16 = 1 << 2;
    /// A 502 answer.
    pub const HTTP_502: u16 = 1 << 3;
    /// A 503 answer.
    pub const HTTP_503: u16 = 1 << 4;
    /// A 504 answer.
    pub const HTTP_504: u16 = 1 << 5;
    /// The entry is being refreshed by another request.
    pub const UPDATING: u16 = 1 << 6;

    /// The value names (as written in the config) and their bits.
    pub const NAMES: [(&'static str, u16); 7] = [
        ("error", Self::ERROR),
        ("timeout", Self::TIMEOUT),
        ("http_500", Self::HTTP_500),
        ("http_502", Self::HTTP_502),
        ("http_503", Self::HTTP_503),
        ("http_504", Self::HTTP_504),
        ("updating", Self::UPDATING),
    ];

    /// The conditions in `bits`.
    pub fn from_bits(bits: u16) -> Self {
        Self { bits }
    }

    /// Whether `condition` is listed.
    pub fn has(self, condition: u16) -> bool {
        self.bits & condition != 0
    }

    /// Whether an answer with `status` is one to replace with a stale entry.
    pub fn status(self, status: u16) -> bool {
        match status {
            500 => self.has(Self::HTTP_500),
            502 => self.has(Self::HTTP_502),
            503 => self.has(Self::HTTP_503),
            504 => self.has(Self::HTTP_504),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_for_prefers_the_status_row_over_any() {
        let config = RouteCacheConfig {
            zone: "z".into(),
            valid: vec![
                (None, Duration::from_secs(1)),
                (Some(404), Duration::from_secs(60)),
            ],
            key: Vec::new(),
            lock: Duration::ZERO,
            use_stale: UseStale::default(),
            background_update: false,
        };
        assert_eq!(config.valid_for(404), Some(Duration::from_secs(60)));
        assert_eq!(config.valid_for(200), Some(Duration::from_secs(1)));
    }
}
