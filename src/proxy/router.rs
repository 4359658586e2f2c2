//! Routing: host (exact, then wildcard, then any) and longest path prefix, compiled when a snapshot is built.

use std::borrow::Cow;
use std::collections::HashMap;

use crate::config::RouteConfig;

/// A compiled route: where matching requests go.
#[derive(Debug, Clone)]
pub struct Route {
    /// Path prefix.
    pub prefix: String,
    /// Index of the pool in the snapshot.
    pub pool: usize,
    /// Largest request body accepted.
    pub max_body_size: u64,
    /// Indices of the rate-limit zones in the snapshot, checked in order (shared: a request that has to
    /// wait for its zones keeps them without a copy).
    pub zones: std::sync::Arc<[usize]>,
    /// Position of the route in the config (indexes the snapshot's per-route metrics).
    pub index: usize,
    /// `Upgrade` protocols passed upstream (lowercase); others are stripped.
    pub upgrades: std::sync::Arc<[String]>,
    /// The route's `buffering`, when it overrides its upstream's.
    pub buffering: Option<bool>,
    /// The route's `request_buffering`, when it overrides its upstream's.
    pub request_buffering: Option<bool>,
}

/// All routes, grouped by host kind, each group sorted longest prefix first.
#[derive(Debug, Default)]
pub struct Router {
    exact: HashMap<String, Vec<Route>>,
    /// `(".example.com", routes)`, longest suffix first.
    wildcard: Vec<(String, Vec<Route>)>,
    any_host: Vec<Route>,
}

impl Router {
    /// Compiles `routes`; `pool_index` maps an upstream name to its pool index.
    pub fn new(
        routes: &[RouteConfig],
        pool_index: impl Fn(&str) -> usize,
        zone_index: impl Fn(&str) -> usize,
        default_max_body: u64,
    ) -> Self {
        let mut router = Router::default();
        for (index, config) in routes.iter().enumerate() {
            let route = Route {
                index,
                prefix: config.path.clone(),
                pool: pool_index(&config.upstream),
                max_body_size: config.max_body_size.unwrap_or(default_max_body),
                zones: config.rate_limit.iter().map(|z| zone_index(z)).collect(),
                upgrades: config.upgrades.iter().cloned().collect(),
                buffering: config.buffering,
                request_buffering: config.request_buffering,
            };
            match config.host.as_deref() {
                None => router.any_host.push(route),
                Some(host) => match host.strip_prefix('*') {
                    Some(suffix) => match router.wildcard.iter_mut().find(|(s, _)| s == suffix) {
                        Some((_, group)) => group.push(route),
                        None => router.wildcard.push((suffix.to_string(), vec![route])),
                    },
                    None => router
                        .exact
                        .entry(host.to_string())
                        .or_default()
                        .push(route),
                },
            }
        }
        let longest_first = |r: &Route| std::cmp::Reverse(r.prefix.len());
        router.any_host.sort_by_key(longest_first);
        for group in router.exact.values_mut() {
            group.sort_by_key(longest_first);
        }
        for (_, group) in &mut router.wildcard {
            group.sort_by_key(longest_first);
        }
        router
            .wildcard
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        router
    }

    /// The route for a request: the most specific host group that has a matching prefix, longest prefix first.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        fn longest<'r>(group: &'r [Route], path: &str) -> Option<&'r Route> {
            group.iter().find(|r| path.starts_with(&r.prefix))
        }
        if let Some(host) = host.map(normalize_host) {
            if let Some(route) = self.exact.get(host.as_ref()).and_then(|g| longest(g, path)) {
                return Some(route);
            }
            for (suffix, group) in &self.wildcard {
                if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                    if let Some(route) = longest(group, path) {
                        return Some(route);
                    }
                }
            }
        }
        longest(&self.any_host, path)
    }
}

/// Lower-cases a host and drops its port (and a trailing dot).
fn normalize_host(host: &str) -> Cow<'_, str> {
    let without_port = if host.starts_with('[') {
        host.split_inclusive(']').next().unwrap_or(host)
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    let trimmed = without_port.strip_suffix('.').unwrap_or(without_port);
    if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(trimmed.to_ascii_lowercase())
    } else {
        Cow::Borrowed(trimmed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: Option<&str>, path: &str, upstream: &str) -> RouteConfig {
        RouteConfig {
            host: host.map(str::to_string),
            path: path.into(),
            upstream: upstream.into(),
            max_body_size: None,
            rate_limit: Vec::new(),
            upgrades: vec!["websocket".to_string()],
            buffering: None,
            request_buffering: None,
        }
    }

    fn router() -> Router {
        let routes = [
            route(None, "/", "0"),
            route(None, "/api/", "1"),
            route(Some("example.com"), "/api/", "2"),
            route(Some("*.example.com"), "/", "3"),
            route(Some("*.b.example.com"), "/", "4"),
        ];
        Router::new(&routes, |name| name.parse().unwrap_or(99), |_| 0, 1)
    }

    #[test]
    fn longest_prefix_wins() {
        let r = router();
        assert_eq!(r.find(None, "/api/x").map(|r| r.pool), Some(1));
        assert_eq!(r.find(None, "/apix").map(|r| r.pool), Some(0));
    }

    #[test]
    fn exact_host_then_wildcard_then_any() {
        let r = router();
        assert_eq!(
            r.find(Some("Example.COM:8080"), "/api/v1").map(|r| r.pool),
            Some(2)
        );
        assert_eq!(
            r.find(Some("example.com"), "/other").map(|r| r.pool),
            Some(0)
        );
        assert_eq!(
            r.find(Some("a.example.com"), "/api/").map(|r| r.pool),
            Some(3)
        );
        assert_eq!(
            r.find(Some("x.b.example.com"), "/").map(|r| r.pool),
            Some(4)
        );
        assert_eq!(r.find(Some("other.org"), "/api/").map(|r| r.pool), Some(1));
    }

    #[test]
    fn no_match_without_catch_all() {
        let r = Router::new(&[route(None, "/api/", "0")], |_| 0, |_| 0, 1);
        assert!(r.find(None, "/").is_none());
    }
}
