//! Cache keys: the primary key from a route's `cache_key`, and the variant of it an answer's `Vary` names.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Uri;

use crate::config::CacheKeyPart;

/// The primary key of a request: with the default parts, `host` + `path` + `?query` (as nginx's
/// `$host$request_uri`); `header:NAME` and `cookie:NAME` parts follow, each after a `|`.
pub fn primary(
    parts: &[CacheKeyPart],
    host: Option<&HeaderValue>,
    uri: &Uri,
    headers: &HeaderMap,
) -> String {
    let mut key = String::with_capacity(64);
    for part in parts {
        match part {
            CacheKeyPart::Host => {
                let host = host.and_then(|h| h.to_str().ok()).unwrap_or("");
                key.extend(host.chars().map(|c| c.to_ascii_lowercase()));
            }
            CacheKeyPart::Path => key.push_str(uri.path()),
            CacheKeyPart::Query => {
                if let Some(query) = uri.query() {
                    key.push('?');
                    key.push_str(query);
                }
            }
            CacheKeyPart::Header(name) => {
                key.push('|');
                key.push_str(name.as_str());
                key.push('=');
                let values: Vec<&str> = headers
                    .get_all(name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                key.push_str(&values.join(","));
            }
            CacheKeyPart::Cookie(name) => {
                key.push_str("|cookie:");
                key.push_str(name);
                key.push('=');
                if let Some(value) = cookie(headers, name) {
                    key.push_str(value);
                }
            }
        }
    }
    key
}

/// The value of cookie `name` in the request's `Cookie` fields.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

/// The header names an answer's `Vary` lists (lowercase); `None` for `Vary: *` (never stored).
pub fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for value in headers.get_all(header::VARY) {
        let Ok(text) = value.to_str() else {
            return None;
        };
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return None;
            }
            let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
                return None;
            };
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    Some(names)
}

/// The key of the variant a request selects: the primary key, then each `Vary` header's value.
pub fn variant<'k>(
    primary: &'k str,
    vary: &[HeaderName],
    headers: &HeaderMap,
) -> std::borrow::Cow<'k, str> {
    if vary.is_empty() {
        return std::borrow::Cow::Borrowed(primary);
    }
    let mut key = String::with_capacity(primary.len() + 32);
    key.push_str(primary);
    for name in vary {
        key.push('\n');
        key.push_str(name.as_str());
        key.push(':');
        let values: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .collect();
        key.push_str(&values.join(","));
    }
    std::borrow::Cow::Owned(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_parts() -> Vec<CacheKeyPart> {
        vec![CacheKeyPart::Host, CacheKeyPart::Path, CacheKeyPart::Query]
    }

    #[test]
    fn default_key_is_host_path_and_query() {
        let uri: Uri = "/a/b?x=1".parse().unwrap();
        let host = HeaderValue::from_static("Example.com");
        let key = primary(&default_parts(), Some(&host), &uri, &HeaderMap::new());
        assert_eq!(key, "example.com/a/b?x=1");
    }

    #[test]
    fn cookie_and_header_parts_tell_requests_apart() {
        let uri: Uri = "/".parse().unwrap();
        let mut parts = default_parts();
        parts.push(CacheKeyPart::Cookie("lang".into()));
        parts.push(CacheKeyPart::Header(HeaderName::from_static("x-tenant")));
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; lang=de"));
        headers.insert("x-tenant", HeaderValue::from_static("t1"));
        assert_eq!(
            primary(&parts, None, &uri, &headers),
            "/|cookie:lang=de|x-tenant=t1"
        );
    }

    #[test]
    fn vary_star_is_never_a_variant() {
        let mut headers = HeaderMap::new();
        headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding, *"));
        assert_eq!(vary_names(&headers), None);
        headers.insert(
            header::VARY,
            HeaderValue::from_static("X-B, accept-encoding"),
        );
        let names = vary_names(&headers).unwrap();
        assert_eq!(
            names,
            vec![header::ACCEPT_ENCODING, HeaderName::from_static("x-b")]
        );
    }

    #[test]
    fn variants_differ_by_the_varied_header() {
        let names = vec![header::ACCEPT_LANGUAGE];
        let mut en = HeaderMap::new();
        en.insert(header::ACCEPT_LANGUAGE, HeaderValue::from_static("en"));
        let mut de = HeaderMap::new();
        de.insert(header::ACCEPT_LANGUAGE, HeaderValue::from_static("de"));
        assert_ne!(variant("k", &names, &en), variant("k", &names, &de));
        assert_eq!(variant("k", &[], &en), "k");
    }
}
