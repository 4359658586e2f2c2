//! Routing: host (exact, then wildcard, then any), then an exact path or the longest path prefix, compiled
//! when a snapshot is built.

use std::borrow::Cow;
use std::collections::HashMap;

use crate::config::{HeaderRules, PathRewrite, ReturnConfig, RouteConfig};

/// A compiled route: where matching requests go.
#[derive(Debug, Clone)]
pub struct Route {
    /// Path prefix (the whole path when `exact`).
    pub prefix: String,
    /// `match = "exact"`: the path must equal `prefix`.
    pub exact: bool,
    /// Index of the pool in the snapshot (0 and unused for a route with `answer`).
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
    /// Rules the request and its answer go through; `None` when the route has none of them (most routes:
    /// nothing is cloned per request).
    pub rules: Option<std::sync::Arc<RouteRules>>,
    /// Whether the route's requests are written to the access log.
    pub access_log: bool,
    /// The route's cache, when it has one.
    pub cache: Option<std::sync::Arc<crate::cache::RouteCache>>,
    /// Whether the route's answers may be compressed: `[compression]` is on and the route did not opt out.
    pub compress: bool,
}

/// What a route changes in the request it forwards and in the answer, or the answer it gives itself.
#[derive(Debug)]
pub struct RouteRules {
    /// `strip_prefix` / `rewrite_prefix`, with the route's prefix.
    pub path_rewrite: Option<(PathRewrite, String)>,
    /// Applied to the request sent upstream, after the forwarding fields are made.
    pub request_headers: HeaderRules,
    /// Applied to the answer from the upstream (and to `answer`).
    pub response_headers: HeaderRules,
    /// `return`: the route answers itself.
    pub answer: Option<ReturnConfig>,
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
        compression_enabled: bool,
    ) -> Self {
        let mut router = Router::default();
        for (index, config) in routes.iter().enumerate() {
            let has_rules = config.path_rewrite.is_some()
                || !config.request_headers.is_empty()
                || !config.response_headers.is_empty()
                || config.answer.is_some();
            let route = Route {
                index,
                prefix: config.path.clone(),
                exact: config.exact,
                pool: config.upstream.as_deref().map_or(0, &pool_index),
                max_body_size: config.max_body_size.unwrap_or(default_max_body),
                zones: config.rate_limit.iter().map(|z| zone_index(z)).collect(),
                upgrades: config.upgrades.iter().cloned().collect(),
                buffering: config.buffering,
                request_buffering: config.request_buffering,
                rules: has_rules.then(|| {
                    std::sync::Arc::new(RouteRules {
                        path_rewrite: config
                            .path_rewrite
                            .clone()
                            .map(|rewrite| (rewrite, config.path.clone())),
                        request_headers: config.request_headers.clone(),
                        response_headers: config.response_headers.clone(),
                        answer: config.answer.clone(),
                    })
                }),
                access_log: config.access_log,
                cache: None,
                compress: compression_enabled && config.compress && config.answer.is_none(),
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
        // Exact routes first (nginx tries `location =` before any prefix), then longest prefix first.
        let longest_first = |r: &Route| (!r.exact, std::cmp::Reverse(r.prefix.len()));
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

    /// Gives each route its cache: `cache_for` maps a route's position in the config to it.
    pub fn attach_caches(
        &mut self,
        cache_for: impl Fn(usize) -> Option<std::sync::Arc<crate::cache::RouteCache>>,
    ) {
        let groups = self
            .exact
            .values_mut()
            .chain(self.wildcard.iter_mut().map(|(_, group)| group))
            .chain(std::iter::once(&mut self.any_host));
        for group in groups {
            for route in group {
                route.cache = cache_for(route.index);
            }
        }
    }

    /// The route for a request: the most specific host group that has a matching route; in a group, an
    /// exact path first, then the longest prefix.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        fn longest<'r>(group: &'r [Route], path: &str) -> Option<&'r Route> {
            group.iter().find(|r| {
                if r.exact {
                    path == r.prefix
                } else {
                    path.starts_with(&r.prefix)
                }
            })
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

/// Replaces the path of `uri` as `rewrite` says (the route matched `prefix`), keeping its query.
pub fn rewrite_path(
    uri: &mut http::Uri,
    rewrite: &crate::config::PathRewrite,
    prefix: &str,
) -> Result<(), http::Error> {
    let mut target = rewrite.apply(prefix, uri.path());
    if let Some(query) = uri.query() {
        target.push('?');
        target.push_str(query);
    }
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = Some(http::uri::PathAndQuery::try_from(target)?);
    *uri = http::Uri::from_parts(parts)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: Option<&str>, path: &str, upstream: &str) -> RouteConfig {
        RouteConfig {
            host: host.map(str::to_string),
            path: path.into(),
            exact: false,
            upstream: Some(upstream.into()),
            max_body_size: None,
            rate_limit: Vec::new(),
            upgrades: vec!["websocket".to_string()],
            buffering: None,
            request_buffering: None,
            path_rewrite: None,
            request_headers: HeaderRules::default(),
            response_headers: HeaderRules::default(),
            access_log: true,
            compress: true,
            answer: None,
            cache: None,
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
        Router::new(&routes, |name| name.parse().unwrap_or(99), |_| 0, 1, true)
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
    fn an_exact_path_wins_over_any_prefix_and_matches_nothing_else() {
        let mut exact = route(None, "/api/", "5");
        exact.exact = true;
        let routes = [route(None, "/", "0"), route(None, "/api/", "1"), exact];
        let r = Router::new(&routes, |name| name.parse().unwrap_or(99), |_| 0, 1, true);
        assert_eq!(r.find(None, "/api/").map(|r| r.pool), Some(5));
        assert_eq!(r.find(None, "/api/x").map(|r| r.pool), Some(1));
        assert_eq!(r.find(None, "/api").map(|r| r.pool), Some(0));
    }

    #[test]
    fn no_match_without_catch_all() {
        let r = Router::new(&[route(None, "/api/", "0")], |_| 0, |_| 0, 1, true);
        assert!(r.find(None, "/").is_none());
    }
}
