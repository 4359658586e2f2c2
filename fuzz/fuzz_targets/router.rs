//! The router on any routes and any request host and path: the route found matches the path by prefix,
//! its host rule admits the host, no other route in the same host group has a longer matching prefix,
//! and nothing panics.
#![no_main]

use arbitrary::Arbitrary;
use fulcrum::config::RouteConfig;
use fulcrum::router::Router;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    routes: Vec<(Option<String>, String)>,
    lookups: Vec<(Option<String>, String)>,
}

fuzz_target!(|input: Input| {
    let routes: Vec<RouteConfig> = input
        .routes
        .iter()
        .take(64)
        .map(|(host, path)| RouteConfig {
            host: host.clone(),
            path: path.clone(),
            exact: false,
            upstream: None,
            max_body_size: None,
            rate_limit: Vec::new(),
            upgrades: Vec::new(),
            path_rewrite: None,
            request_headers: Default::default(),
            response_headers: Default::default(),
            access_log: true,
            compress: true,
            answer: None,
            cache: None,
            buffering: None,
            request_buffering: None,
        })
        .collect();
    let router = Router::new(&routes, |_| 0, |_| 0, 1 << 20, true);
    for (host, path) in input.lookups.iter().take(64) {
        let Some(found) = router.find(host.as_deref(), path) else {
            // Nothing found: then no host-less route matches the path either.
            assert!(
                !routes
                    .iter()
                    .any(|r| r.host.is_none() && path.starts_with(&r.path)),
                "a host-less route matches {path:?} but none was found"
            );
            continue;
        };
        let config = &routes[found.index];
        assert_eq!(found.prefix, config.path);
        assert!(
            path.starts_with(&found.prefix),
            "{:?} does not start with {:?}",
            path,
            found.prefix
        );
        // Among the routes with exactly this host rule, none matches with a longer prefix.
        let longer = routes.iter().any(|r| {
            r.host == config.host && path.starts_with(&r.path) && r.path.len() > found.prefix.len()
        });
        assert!(
            !longer,
            "a longer prefix of {path:?} exists in the same host group"
        );
    }
});
