//! Whether an answer is stored and for how long (RFC 9111 for a shared cache, through
//! `http-cache-semantics`, with nginx's `proxy_cache_valid` for answers without freshness of their own),
//! and the conditional-request checks.

use std::time::SystemTime;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, StatusCode};
use http_cache_semantics::{CacheOptions, CachePolicy, ResponseLike};

use crate::config::RouteCacheConfig;

/// How a stored answer may be used.
#[derive(Debug, Clone)]
pub struct Freshness {
    /// The RFC 9111 policy (it computes the `Age` sent with a hit).
    pub policy: CachePolicy,
    /// Until when the entry is served without asking the server.
    pub fresh_until: SystemTime,
    /// `public`, `s-maxage` or `must-revalidate`: may answer requests with `Authorization`.
    pub allows_authorized: bool,
    /// `must-revalidate` / `proxy-revalidate`: never served stale.
    pub must_revalidate: bool,
}

/// An answer's status and headers, as the policy reads them.
struct Head<'a> {
    status: StatusCode,
    headers: &'a HeaderMap,
}

impl ResponseLike for Head<'_> {
    fn status(&self) -> StatusCode {
        self.status
    }
    fn headers(&self) -> &HeaderMap {
        self.headers
    }
}

/// The `Cache-Control` directive names of `headers`, lowercase.
fn directives(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| {
            d.split('=')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|d| !d.is_empty())
        .collect()
}

/// Whether and how long the answer (`status`, `headers`) to `request` may be stored, at `now`; `None`
/// when it must not be (or would be stale at once).
pub fn freshness(
    route: &RouteCacheConfig,
    request: &Request<()>,
    status: StatusCode,
    headers: &HeaderMap,
    now: SystemTime,
) -> Option<Freshness> {
    // HEAD answers have no body to serve a GET with.
    if request.method() != Method::GET {
        return None;
    }
    // Answers that set cookies are someone's session: never shared (as nginx).
    if headers.contains_key(header::SET_COOKIE) {
        return None;
    }
    let names = directives(headers);
    let has = |name: &str| names.iter().any(|d| d == name);
    let explicit = has("max-age") || has("s-maxage") || headers.contains_key(header::EXPIRES);
    let mut with_valid;
    let policy_headers = if explicit {
        headers
    } else {
        // cache_valid applies only to answers with no freshness of their own: it stands in for max-age.
        let valid = route.valid_for(status.as_u16())?;
        with_valid = headers.clone();
        let value = HeaderValue::from_str(&format!("max-age={}", valid.as_secs())).ok()?;
        with_valid.append(header::CACHE_CONTROL, value);
        &with_valid
    };
    let options = CacheOptions {
        shared: true,
        // No guessing from Last-Modified: without freshness of its own an answer needs cache_valid.
        cache_heuristic: 0.0,
        ..CacheOptions::default()
    };
    let head = Head {
        status,
        headers: policy_headers,
    };
    let policy = CachePolicy::new_options(request, &head, now, options);
    if !policy.is_storable() {
        return None;
    }
    let ttl = policy.time_to_live(now);
    if ttl.is_zero() {
        return None;
    }
    Some(Freshness {
        policy,
        fresh_until: now.checked_add(ttl)?,
        allows_authorized: has("public") || has("s-maxage") || has("must-revalidate"),
        must_revalidate: has("must-revalidate") || has("proxy-revalidate"),
    })
}

/// Whole seconds since the entry's answer was made (the `Age` header of a hit).
pub fn age(freshness: &Freshness, now: SystemTime) -> u64 {
    freshness.policy.age(now).as_secs()
}

/// The client's validators, taken from its request before the request goes upstream (the cache wants a
/// whole answer to store, as nginx asks for one).
#[derive(Debug, Default, Clone)]
pub struct Conditional {
    if_none_match: Option<HeaderValue>,
    if_modified_since: Option<HeaderValue>,
}

impl Conditional {
    /// Takes `If-None-Match` and `If-Modified-Since` out of `headers`.
    pub fn take(headers: &mut HeaderMap) -> Self {
        Self {
            if_none_match: headers.remove(header::IF_NONE_MATCH),
            if_modified_since: headers.remove(header::IF_MODIFIED_SINCE),
        }
    }

    /// Whether an answer with `headers` is one the client has (`304 Not Modified`): `If-None-Match`
    /// by weak comparison, else `If-Modified-Since` equal to `Last-Modified` (nginx's
    /// `if_modified_since exact`).
    pub fn not_modified(&self, headers: &HeaderMap) -> bool {
        if let Some(tags) = self.if_none_match.as_ref().and_then(|v| v.to_str().ok()) {
            let Some(etag) = headers.get(header::ETAG).and_then(|v| v.to_str().ok()) else {
                return false;
            };
            let weak = |t: &str| t.trim().trim_start_matches("W/").to_string();
            return tags
                .split(',')
                .any(|tag| tag.trim() == "*" || weak(tag) == weak(etag));
        }
        match (&self.if_modified_since, headers.get(header::LAST_MODIFIED)) {
            (Some(since), Some(modified)) => since == modified,
            _ => false,
        }
    }
}

/// The conditional headers that ask the server whether the entry with `headers` is still current.
pub fn revalidation(headers: &HeaderMap) -> Vec<(header::HeaderName, HeaderValue)> {
    let mut ask = Vec::new();
    if let Some(etag) = headers.get(header::ETAG) {
        ask.push((header::IF_NONE_MATCH, etag.clone()));
    }
    if let Some(modified) = headers.get(header::LAST_MODIFIED) {
        ask.push((header::IF_MODIFIED_SINCE, modified.clone()));
    }
    ask
}

/// The stored headers updated by a `304` answer's (RFC 9111 4.3.4), framing fields kept as stored.
pub fn refreshed(stored: &HeaderMap, fresh: &HeaderMap) -> HeaderMap {
    let mut headers = stored.clone();
    for name in fresh.keys() {
        if *name == header::CONTENT_LENGTH
            || *name == header::TRANSFER_ENCODING
            || *name == header::CONTENT_ENCODING
        {
            continue;
        }
        headers.remove(name);
        for value in fresh.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UseStale;
    use std::time::Duration;

    fn route(valid: Vec<(Option<u16>, Duration)>) -> RouteCacheConfig {
        RouteCacheConfig {
            zone: "z".into(),
            valid,
            key: Vec::new(),
            lock: Duration::ZERO,
            use_stale: UseStale::default(),
            background_update: false,
        }
    }

    fn get(auth: bool) -> Request<()> {
        let mut builder = Request::get("http://example.com/a");
        if auth {
            builder = builder.header(header::AUTHORIZATION, "Bearer x");
        }
        builder.body(()).unwrap()
    }

    fn answer(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn max_age_sets_freshness_and_cache_valid_does_not_override_it() {
        let now = SystemTime::now();
        let route = route(vec![(Some(200), Duration::from_secs(600))]);
        let headers = answer(&[("cache-control", "max-age=5")]);
        let fresh = freshness(&route, &get(false), StatusCode::OK, &headers, now).unwrap();
        assert_eq!(fresh.fresh_until, now + Duration::from_secs(5));
    }

    #[test]
    fn cache_valid_applies_by_status_without_freshness_headers() {
        let now = SystemTime::now();
        let route = route(vec![
            (Some(200), Duration::from_secs(600)),
            (Some(302), Duration::from_secs(60)),
        ]);
        let plain = HeaderMap::new();
        let ok = freshness(&route, &get(false), StatusCode::OK, &plain, now).unwrap();
        assert_eq!(ok.fresh_until, now + Duration::from_secs(600));
        let found = freshness(&route, &get(false), StatusCode::FOUND, &plain, now).unwrap();
        assert_eq!(found.fresh_until, now + Duration::from_secs(60));
        assert!(freshness(&route, &get(false), StatusCode::NOT_FOUND, &plain, now).is_none());
    }

    #[test]
    fn no_store_private_set_cookie_and_authorization_are_not_stored() {
        let now = SystemTime::now();
        let route = route(vec![(None, Duration::from_secs(60))]);
        for pairs in [
            &[("cache-control", "no-store")][..],
            &[("cache-control", "private, max-age=60")][..],
            &[("set-cookie", "a=1"), ("cache-control", "max-age=60")][..],
        ] {
            let headers = answer(pairs);
            assert!(
                freshness(&route, &get(false), StatusCode::OK, &headers, now).is_none(),
                "{pairs:?}"
            );
        }
        let headers = answer(&[("cache-control", "max-age=60")]);
        assert!(freshness(&route, &get(true), StatusCode::OK, &headers, now).is_none());
        let public = answer(&[("cache-control", "public, max-age=60")]);
        let stored = freshness(&route, &get(true), StatusCode::OK, &public, now).unwrap();
        assert!(stored.allows_authorized);
    }

    #[test]
    fn if_none_match_compares_weakly() {
        let mut request = answer(&[("if-none-match", "\"a\", W/\"b\"")]);
        let conditional = Conditional::take(&mut request);
        assert!(request.is_empty());
        assert!(conditional.not_modified(&answer(&[("etag", "\"b\"")])));
        assert!(!conditional.not_modified(&answer(&[("etag", "\"c\"")])));
    }

    #[test]
    fn a_304_replaces_fields_but_not_framing() {
        let stored = answer(&[
            ("etag", "\"1\""),
            ("content-length", "5"),
            ("cache-control", "max-age=1"),
        ]);
        let fresh = answer(&[("cache-control", "max-age=9"), ("content-length", "0")]);
        let merged = refreshed(&stored, &fresh);
        assert_eq!(merged["cache-control"], "max-age=9");
        assert_eq!(merged["content-length"], "5");
        assert_eq!(merged["etag"], "\"1\"");
    }
}
