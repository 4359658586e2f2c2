//! Checks `[[route]]` tables: what they match, where they send, and the header and path rules they apply.

use std::collections::{BTreeMap, HashSet};

use http::header::{HeaderName, HeaderValue};
use toml::Spanned;

use super::error::ConfigError;
use super::file::{HeaderRulesFile, ReturnFile, RouteFile};
use super::validate::Validator;
use super::{
    CacheZoneConfig, CompressionConfig, HeaderRules, PathRewrite, RateLimitConfig, ReturnConfig,
    RouteConfig, UpstreamConfig,
};

/// Fields the proxy writes itself on every request: a rule for one would be lost or fight them.
const FORWARDING: [&str; 5] = [
    "host",
    "x-real-ip",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
];

/// Fields that describe one connection or the message's framing; the proxy sets them per hop.
pub(crate) const HOP_AND_FRAMING: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
];

/// Which side a header rule applies to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Request,
    Response,
}

impl Validator<'_> {
    pub(super) fn routes(
        &self,
        files: &[RouteFile],
        upstreams: &BTreeMap<String, UpstreamConfig>,
        zones: &BTreeMap<String, RateLimitConfig>,
        caches: &BTreeMap<String, CacheZoneConfig>,
        compression: &CompressionConfig,
    ) -> Result<Vec<RouteConfig>, ConfigError> {
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(files.len());
        for (i, file) in files.iter().enumerate() {
            let mut route = self.route(i, file, upstreams, zones, &mut seen)?;
            route.cache = self.route_cache(file, caches, &|k: &str| format!("route[{i}].{k}"))?;
            out.push(route);
            self.route_compress(i, file, compression);
        }
        Ok(out)
    }

    fn route(
        &self,
        i: usize,
        file: &RouteFile,
        upstreams: &BTreeMap<String, UpstreamConfig>,
        zones: &BTreeMap<String, RateLimitConfig>,
        seen: &mut HashSet<(Option<String>, String, bool)>,
    ) -> Result<RouteConfig, ConfigError> {
        let key = |k: &str| format!("route[{i}].{k}");
        let answer = match &file.answer {
            Some(answer) => Some(self.answer(answer, &key("return"))?),
            None => None,
        };
        let upstream =
            match (&file.upstream, &file.answer) {
                (Some(upstream), Some(_)) => {
                    return Err(self.err(
                        Some(upstream.span()),
                        key("upstream"),
                        "a route has either `upstream` or `return`, not both",
                    ))
                }
                (Some(upstream), None) => Some(self.route_upstream(upstream, upstreams, &key)?),
                (None, Some(_)) => None,
                (None, None) => return Err(self.err(
                    file.path.as_ref().map(Spanned::span),
                    key("upstream"),
                    "missing: a route needs `upstream = \"NAME\"` (or `return = { status = ... }`)",
                )),
            };
        let host = match &file.host {
            Some(host) => Some(
                self.host_pattern(host.get_ref())
                    .map_err(|why| self.err(Some(host.span()), key("host"), why))?,
            ),
            None => None,
        };
        let path = match &file.path {
            Some(path) if !path.get_ref().starts_with('/') => {
                return Err(self.err(
                    Some(path.span()),
                    key("path"),
                    format!("`{}` must start with /", path.get_ref()),
                ))
            }
            Some(path) => path.get_ref().clone(),
            None => "/".to_string(),
        };
        let exact = match &file.match_kind {
            None => false,
            Some(kind) => match kind.get_ref().as_str() {
                "prefix" => false,
                "exact" => true,
                other => {
                    return Err(self.err(
                        Some(kind.span()),
                        key("match"),
                        format!("unknown value `{other}`; expected \"prefix\" or \"exact\""),
                    ))
                }
            },
        };
        let span = file
            .path
            .as_ref()
            .or(file.upstream.as_ref())
            .map(Spanned::span);
        if !seen.insert((host.clone(), path.clone(), exact)) {
            return Err(self.err(
                span,
                format!("route[{i}]"),
                format!(
                    "another route already matches host {} and {} path {path}",
                    host.as_deref().unwrap_or("(any)"),
                    if exact { "exact" } else { "prefix" }
                ),
            ));
        }
        let path_rewrite = self.path_rewrite(file, exact, &key)?;
        let request_headers = match &file.request_headers {
            Some(rules) => self.header_rules(rules, Side::Request, &key("request_headers"))?,
            None => HeaderRules::default(),
        };
        let response_headers = match &file.response_headers {
            Some(rules) => self.header_rules(rules, Side::Response, &key("response_headers"))?,
            None => HeaderRules::default(),
        };
        if let Some(answer) = &file.answer {
            // These act on the request sent upstream; a route that answers itself sends none.
            let pointless = [
                ("strip_prefix", file.strip_prefix.is_some()),
                ("rewrite_prefix", file.rewrite_prefix.is_some()),
                ("request_headers", file.request_headers.is_some()),
                ("rate_limit", file.rate_limit.is_some()),
                ("upgrades", file.upgrades.is_some()),
                ("max_body_size", file.max_body_size.is_some()),
                ("cache", file.cache.is_some()),
                ("compress", file.compress.is_some()),
            ];
            if let Some((name, _)) = pointless.iter().find(|(_, set)| *set) {
                return Err(self.err(
                    Some(answer.span()),
                    key(name),
                    "has no effect on a route with `return` (nothing is sent upstream); remove it",
                ));
            }
        }
        let rate_limit = match &file.rate_limit {
            Some(names) => {
                for name in names.get_ref() {
                    if !zones.contains_key(name) {
                        return Err(self.err(
                            Some(names.span()),
                            key("rate_limit"),
                            format!("no [rate_limit.{name}] zone is defined"),
                        ));
                    }
                }
                names.get_ref().clone()
            }
            None => Vec::new(),
        };
        Ok(RouteConfig {
            host,
            path,
            exact,
            upstream,
            max_body_size: file.max_body_size.map(|s| s.0),
            rate_limit,
            upgrades: match &file.upgrades {
                Some(tokens) => self.upgrade_tokens(tokens, i)?,
                None => vec!["websocket".to_string()],
            },
            path_rewrite,
            request_headers,
            response_headers,
            access_log: file.access_log.unwrap_or(true),
            compress: file.compress.as_ref().is_none_or(|c| *c.get_ref()),
            answer,
            buffering: file.buffering,
            request_buffering: file.request_buffering,
            cache: None,
        })
    }

    /// `upgrades`: protocol names (RFC 9110 7.8: a token, optionally `/version`), lowercased.
    fn upgrade_tokens(
        &self,
        tokens: &Spanned<Vec<String>>,
        route: usize,
    ) -> Result<Vec<String>, ConfigError> {
        tokens
            .get_ref()
            .iter()
            .map(|token| {
                let name = token.to_ascii_lowercase();
                let valid = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&b));
                if valid {
                    Ok(name)
                } else {
                    Err(self.err(
                        Some(tokens.span()),
                        format!("route[{route}].upgrades"),
                        format!("`{token}` is not a protocol name; write e.g. \"websocket\""),
                    ))
                }
            })
            .collect()
    }

    fn route_upstream(
        &self,
        upstream: &Spanned<String>,
        upstreams: &BTreeMap<String, UpstreamConfig>,
        key: &dyn Fn(&str) -> String,
    ) -> Result<String, ConfigError> {
        let name = upstream.get_ref();
        if upstreams.contains_key(name) {
            return Ok(name.clone());
        }
        let known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
        Err(self.err(
            Some(upstream.span()),
            key("upstream"),
            format!(
                "no upstream named `{name}` (defined: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
        ))
    }

    fn path_rewrite(
        &self,
        file: &RouteFile,
        exact: bool,
        key: &dyn Fn(&str) -> String,
    ) -> Result<Option<PathRewrite>, ConfigError> {
        let strip = file.strip_prefix.as_ref().filter(|s| *s.get_ref());
        match (strip, &file.rewrite_prefix) {
            (Some(strip), Some(_)) => Err(self.err(
                Some(strip.span()),
                key("strip_prefix"),
                "cannot be combined with rewrite_prefix (strip_prefix = true is rewrite_prefix = \"/\"); keep one",
            )),
            (Some(strip), None) if exact => Err(self.err(
                Some(strip.span()),
                key("strip_prefix"),
                "is meaningless with match = \"exact\" (the whole path would go); use rewrite_prefix = \"/new/path\" to send another path",
            )),
            (Some(_), None) => Ok(Some(PathRewrite::Strip)),
            (None, Some(with)) if !with.get_ref().starts_with('/') => Err(self.err(
                Some(with.span()),
                key("rewrite_prefix"),
                format!("`{}` must start with /", with.get_ref()),
            )),
            (None, Some(with)) => {
                // The result must stay a valid request target: checked once here, not per request.
                if http::uri::PathAndQuery::try_from(with.get_ref().as_str()).is_err()
                    || with.get_ref().contains('?')
                {
                    return Err(self.err(
                        Some(with.span()),
                        key("rewrite_prefix"),
                        format!("`{}` is not a URL path", with.get_ref()),
                    ));
                }
                Ok(Some(PathRewrite::Replace(with.get_ref().clone())))
            }
            (None, None) => Ok(None),
        }
    }

    fn header_rules(
        &self,
        rules: &Spanned<HeaderRulesFile>,
        side: Side,
        key: &str,
    ) -> Result<HeaderRules, ConfigError> {
        let span = Some(rules.span());
        let name_of = |text: &str, what: &str| -> Result<HeaderName, ConfigError> {
            let name = HeaderName::from_bytes(text.as_bytes()).map_err(|_| {
                self.err(
                    span.clone(),
                    format!("{key}.{what}"),
                    format!("`{text}` is not a header name"),
                )
            })?;
            let lower = name.as_str();
            if side == Side::Request && FORWARDING.contains(&lower) {
                return Err(self.err(
                    span.clone(),
                    format!("{key}.{what}"),
                    format!(
                        "`{text}` is a forwarding header the proxy writes itself (Host passed on, X-Real-IP, X-Forwarded-For/-Proto/-Host; docs/configuration.md#headers); it cannot be set or removed here"
                    ),
                ));
            }
            if HOP_AND_FRAMING.contains(&lower) {
                return Err(self.err(
                    span.clone(),
                    format!("{key}.{what}"),
                    format!(
                        "`{text}` is a hop-by-hop or framing header the proxy manages per connection; it cannot be set or removed"
                    ),
                ));
            }
            Ok(name)
        };
        let mut out = HeaderRules::default();
        for (name, value) in &rules.get_ref().set {
            let header = name_of(name, "set")?;
            let value = HeaderValue::from_str(value).map_err(|_| {
                self.err(
                    span.clone(),
                    format!("{key}.set"),
                    format!("the value of `{name}` is not a valid header value (visible ASCII, spaces, tabs)"),
                )
            })?;
            out.set.push((header, value));
        }
        for name in &rules.get_ref().remove {
            let header = name_of(name, "remove")?;
            if out.set.iter().any(|(set, _)| *set == header) {
                return Err(self.err(
                    span.clone(),
                    format!("{key}.remove"),
                    format!("`{name}` is both set and removed"),
                ));
            }
            out.remove.push(header);
        }
        Ok(out)
    }

    fn answer(&self, answer: &Spanned<ReturnFile>, key: &str) -> Result<ReturnConfig, ConfigError> {
        let span = Some(answer.span());
        let file = answer.get_ref();
        let status = http::StatusCode::from_u16(file.status)
            .ok()
            .filter(|s| (200..=599).contains(&s.as_u16()))
            .ok_or_else(|| {
                self.err(
                    span.clone(),
                    format!("{key}.status"),
                    format!("{} is not a status from 200 to 599", file.status),
                )
            })?;
        let redirect = matches!(file.status, 301 | 302 | 303 | 307 | 308);
        let location = match (&file.location, redirect) {
            (Some(location), true) => Some(HeaderValue::from_str(location).map_err(|_| {
                self.err(
                    span.clone(),
                    format!("{key}.location"),
                    format!("`{location}` is not a valid Location value"),
                )
            })?),
            (None, true) => {
                return Err(self.err(
                    span,
                    format!("{key}.location"),
                    format!(
                        "missing: a {} redirect needs location = \"URL\"",
                        file.status
                    ),
                ))
            }
            (Some(_), false) => {
                return Err(self.err(
                    span,
                    format!("{key}.location"),
                    "is only for redirect statuses (301, 302, 303, 307, 308)",
                ))
            }
            (None, false) => None,
        };
        if redirect && file.body.is_some() {
            return Err(self.err(
                span,
                format!("{key}.body"),
                "a redirect has location, not body",
            ));
        }
        Ok(ReturnConfig {
            status,
            location,
            body: bytes::Bytes::from(file.body.clone().unwrap_or_default()),
        })
    }
}
