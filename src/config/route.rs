//! What a route does besides choosing an upstream: path rewriting, header rules, its own answer.

use http::header::{HeaderName, HeaderValue};

/// How the path sent upstream is made from the request's path (the query is kept either way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathRewrite {
    /// The route's prefix is taken off (`/api/users` -> `/users`); what is left always starts with `/`.
    Strip,
    /// The route's prefix is replaced with this (`/api/users` -> `/v2/users`), as nginx's
    /// `proxy_pass http://backend/v2/;` does.
    Replace(String),
}

impl PathRewrite {
    /// The upstream path for `path`, which starts with `prefix` (the route matched it).
    pub fn apply(&self, prefix: &str, path: &str) -> String {
        let rest = path.get(prefix.len()..).unwrap_or("");
        match self {
            PathRewrite::Strip if rest.starts_with('/') => rest.to_string(),
            PathRewrite::Strip => format!("/{rest}"),
            PathRewrite::Replace(with) => format!("{with}{rest}"),
        }
    }
}

/// Headers a route sets and removes, checked and parsed when the config loads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderRules {
    /// Set (replacing any the message carries), in name order.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Removed.
    pub remove: Vec<HeaderName>,
}

impl HeaderRules {
    /// Whether the rules change nothing.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }

    /// Removes, then sets, in `headers`.
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// A route's own answer (`return`), sent without asking an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReturnConfig {
    /// The status.
    pub status: http::StatusCode,
    /// `Location`, for redirects.
    pub location: Option<HeaderValue>,
    /// The body (empty for redirects).
    pub body: bytes::Bytes,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_keeps_a_leading_slash() {
        assert_eq!(PathRewrite::Strip.apply("/api/", "/api/users"), "/users");
        assert_eq!(PathRewrite::Strip.apply("/api/", "/api/"), "/");
        assert_eq!(PathRewrite::Strip.apply("/api", "/api/users"), "/users");
        assert_eq!(PathRewrite::Strip.apply("/api", "/api"), "/");
        assert_eq!(PathRewrite::Strip.apply("/api", "/apix"), "/x");
    }

    #[test]
    fn replace_is_nginx_proxy_pass_with_a_uri() {
        let v2 = PathRewrite::Replace("/v2/".into());
        assert_eq!(v2.apply("/api/", "/api/users"), "/v2/users");
        assert_eq!(v2.apply("/api/", "/api/"), "/v2/");
        // `location /api { proxy_pass http://b/; }` sends `//users` in nginx, and here.
        let root = PathRewrite::Replace("/".into());
        assert_eq!(root.apply("/api", "/api/users"), "//users");
    }
}
