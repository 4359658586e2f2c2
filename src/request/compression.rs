//! Response compression's policy: the algorithm a request accepts (from `Accept-Encoding`, read at
//! routing), whether its answer is compressed, and the headers that change when it is (nginx's gzip
//! filter). The compressing body is [`crate::forward::compress`].

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Either;

use crate::config::{Algorithm, CompressionConfig};
use crate::forward::body::{ProxyBody, UpstreamBody};

/// What a request's `Accept-Encoding` (and method) allows for its answer, decided before the request's
/// headers are rewritten for the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Negotiated {
    /// The route does not compress (or `[compression]` is off): the answer is left alone.
    Off,
    /// The route compresses, but not this answer (the client accepts none of ours, or `HEAD`): only
    /// `Vary: Accept-Encoding` is added to an answer that another client would get compressed.
    Identity,
    /// Compress with this algorithm if the answer qualifies.
    Use(Algorithm),
}

/// What `request` allows, for a route that compresses (`route_compresses`).
pub fn negotiate_request<B>(
    request: &Request<B>,
    route_compresses: bool,
    config: &CompressionConfig,
) -> Negotiated {
    if !route_compresses {
        return Negotiated::Off;
    }
    if request.method() == Method::HEAD {
        return Negotiated::Identity;
    }
    match negotiate(
        request.headers().get_all(header::ACCEPT_ENCODING).iter(),
        &config.algorithms,
    ) {
        Some(algorithm) => Negotiated::Use(algorithm),
        None => Negotiated::Identity,
    }
}

/// The algorithm to answer with, from the `Accept-Encoding` field values and our `algorithms` in order
/// of preference: the client's highest q-value wins, a tie goes to our order. A coding is acceptable
/// when named with q > 0, or when not named and `*` has q > 0. `identity` named with a higher q than
/// every algorithm keeps the answer as it is. An unparsable element is skipped.
pub fn negotiate<'a>(
    values: impl Iterator<Item = &'a HeaderValue>,
    algorithms: &[Algorithm],
) -> Option<Algorithm> {
    // q-values in thousandths: q has at most three decimals (RFC 9110 12.4.2).
    let mut named = [None::<u16>; 3];
    let mut star = None::<u16>;
    let mut identity = None::<u16>;
    for value in values {
        let Ok(text) = value.to_str() else { continue };
        for element in text.split(',') {
            let mut parts = element.split(';');
            let coding = parts.next().unwrap_or("").trim();
            if coding.is_empty() {
                continue;
            }
            let mut q = Some(1000);
            for param in parts {
                if let Some((name, value)) = param.split_once('=') {
                    if name.trim().eq_ignore_ascii_case("q") {
                        q = qvalue(value.trim());
                    }
                }
            }
            let Some(q) = q else { continue };
            if coding == "*" {
                star = Some(q);
            } else if coding.eq_ignore_ascii_case("identity") {
                identity = Some(q);
            } else if let Some(algorithm) = Algorithm::from_token(coding) {
                let slot = &mut named[algorithm.index()];
                // `gzip` and `x-gzip` both named: the better of the two.
                *slot = Some(slot.map_or(q, |old: u16| old.max(q)));
            }
        }
    }
    let mut best: Option<(Algorithm, u16)> = None;
    for &algorithm in algorithms {
        let q = named[algorithm.index()].or(star).unwrap_or(0);
        if q > 0 && best.is_none_or(|(_, top)| q > top) {
            best = Some((algorithm, q));
        }
    }
    let (algorithm, q) = best?;
    if identity.is_some_and(|identity| identity > q) {
        return None;
    }
    Some(algorithm)
}

/// `0`, `0.5`, `1`, `1.000` as thousandths; `None` for anything else.
fn qvalue(text: &str) -> Option<u16> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 3 {
        return None;
    }
    let mut thousandths = 0;
    for (digit, scale) in fraction.bytes().zip([100, 10, 1]) {
        if !digit.is_ascii_digit() {
            return None;
        }
        thousandths += u16::from(digit - b'0') * scale;
    }
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// The upstream's answer as the client gets it: compressed when `negotiated` allows, the answer
/// qualifies (the algorithm is returned then); with `Vary` when
/// only the client's choice kept it plain.
pub fn compress_answer(
    mut response: Response<ProxyBody>,
    negotiated: Negotiated,
    config: &CompressionConfig,
) -> (Response<ProxyBody>, Option<Algorithm>) {
    if negotiated == Negotiated::Off || !eligible(response.status(), response.headers(), config) {
        return (response, None);
    }
    let Negotiated::Use(algorithm) = negotiated else {
        add_vary(response.headers_mut());
        return (response, None);
    };
    mark_compressed(response.headers_mut(), algorithm);
    // A whole body here is a cache hit's (the proxy's own answers never come this way).
    let response = response.map(|body| {
        let body = match body {
            Either::Left(upstream) => upstream,
            Either::Right(whole) => UpstreamBody::whole(whole),
        };
        Either::Left(body.compressed(algorithm, config.level(algorithm)))
    });
    (response, Some(algorithm))
}

/// Whether an answer with this status and these headers would be compressed for a client that accepts
/// one of our algorithms.
pub fn eligible(status: StatusCode, headers: &HeaderMap, config: &CompressionConfig) -> bool {
    // 1xx, 204 and 304 have no body; a 206's byte ranges are of the uncompressed representation.
    if status.is_informational()
        || matches!(
            status,
            StatusCode::NO_CONTENT | StatusCode::PARTIAL_CONTENT | StatusCode::NOT_MODIFIED
        )
    {
        return false;
    }
    if headers.contains_key(header::CONTENT_ENCODING) {
        return false;
    }
    if list_has(headers, &header::CACHE_CONTROL, "no-transform") {
        return false;
    }
    let below_min = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|length| length < config.min_size);
    if below_min {
        return false;
    }
    let Some(content_type) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    type_listed(content_type, &config.types)
}

/// Whether `content_type` (parameters ignored) matches a pattern (lowercase): exact, `type/*`, or `*`.
fn type_listed(content_type: &str, types: &[String]) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    types.iter().any(|pattern| {
        if pattern == "*" {
            return true;
        }
        match pattern.strip_suffix('*') {
            // `text/` against `text/html`: the type and its slash, and a subtype after them.
            Some(kind) => {
                essence.len() > kind.len()
                    && essence
                        .get(..kind.len())
                        .is_some_and(|head| head.eq_ignore_ascii_case(kind))
            }
            None => essence.eq_ignore_ascii_case(pattern),
        }
    })
}

/// Whether a comma-separated field has `token` as one of its elements (case-insensitive, parameters
/// ignored).
fn list_has(headers: &HeaderMap, name: &header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|element| {
            let name = element.split(['=', ';']).next().unwrap_or("").trim();
            name.eq_ignore_ascii_case(token) || name == "*" && token == "accept-encoding"
        })
}

/// Adds `Accept-Encoding` to `Vary` unless it is listed already (or `Vary: *`): one field, the old
/// elements first.
pub fn add_vary(headers: &mut HeaderMap) {
    if list_has(headers, &header::VARY, "accept-encoding") {
        return;
    }
    let old: Vec<&str> = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    let value = if old.is_empty() {
        HeaderValue::from_static("Accept-Encoding")
    } else {
        match HeaderValue::from_str(&format!("{}, Accept-Encoding", old.join(", "))) {
            Ok(value) => value,
            Err(_) => {
                headers.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
                return;
            }
        }
    };
    headers.insert(header::VARY, value);
}

/// The headers of an answer that is sent compressed: `Content-Encoding`, `Vary`, a strong `ETag` made
/// weak (the bytes differ from the upstream's), no `Content-Length` (the body is chunked or framed by
/// HTTP/2) and no `Accept-Ranges` (ranges would be of the compressed bytes, which we do not serve).
pub fn mark_compressed(headers: &mut HeaderMap, algorithm: Algorithm) {
    headers.insert(
        header::CONTENT_ENCODING,
        HeaderValue::from_static(algorithm.token()),
    );
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::ACCEPT_RANGES);
    add_vary(headers);
    if let Some(etag) = headers.get(header::ETAG) {
        if etag.as_bytes().starts_with(b"\"") {
            let mut weak = Vec::with_capacity(etag.len() + 2);
            weak.extend_from_slice(b"W/");
            weak.extend_from_slice(etag.as_bytes());
            if let Ok(weak) = HeaderValue::from_bytes(&weak) {
                headers.insert(header::ETAG, weak);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDER: [Algorithm; 3] = [Algorithm::Zstd, Algorithm::Brotli, Algorithm::Gzip];

    fn pick(accept: &str) -> Option<Algorithm> {
        let value = HeaderValue::from_str(accept).ok();
        negotiate(value.iter(), &ORDER)
    }

    #[test]
    fn ties_go_to_our_order() {
        assert_eq!(pick("gzip, br, zstd"), Some(Algorithm::Zstd));
        assert_eq!(pick("gzip, br"), Some(Algorithm::Brotli));
        assert_eq!(pick("gzip"), Some(Algorithm::Gzip));
        assert_eq!(pick("x-gzip"), Some(Algorithm::Gzip));
    }

    #[test]
    fn the_client_highest_q_wins() {
        assert_eq!(pick("gzip;q=1, br;q=0.5"), Some(Algorithm::Gzip));
        assert_eq!(pick("gzip;q=0.5, br;q=1"), Some(Algorithm::Brotli));
        assert_eq!(pick("zstd;q=0.1, GZIP ; Q=0.9"), Some(Algorithm::Gzip));
    }

    #[test]
    fn q_zero_refuses() {
        assert_eq!(pick("br;q=0, gzip"), Some(Algorithm::Gzip));
        assert_eq!(pick("br;q=0"), None);
        assert_eq!(pick("*;q=0"), None);
        assert_eq!(pick("gzip;q=0.000"), None);
    }

    #[test]
    fn star_covers_the_codings_not_named() {
        assert_eq!(pick("*"), Some(Algorithm::Zstd));
        assert_eq!(pick("zstd;q=0, *"), Some(Algorithm::Brotli));
        assert_eq!(pick("gzip, *;q=0.5"), Some(Algorithm::Gzip));
    }

    #[test]
    fn identity_preferred_keeps_the_answer_plain() {
        assert_eq!(pick("gzip;q=0.5, identity"), None);
        assert_eq!(pick("gzip, identity;q=0.5"), Some(Algorithm::Gzip));
        assert_eq!(pick("identity"), None);
        assert_eq!(pick(""), None);
    }

    #[test]
    fn bad_q_values_are_skipped() {
        assert_eq!(pick("br;q=2, gzip"), Some(Algorithm::Gzip));
        assert_eq!(pick("br;q=0.5555, gzip;q=abc"), None);
        assert_eq!(qvalue("0.5"), Some(500));
        assert_eq!(qvalue("1.000"), Some(1000));
        assert_eq!(qvalue("1.001"), None);
        assert_eq!(qvalue("0."), Some(0));
    }

    #[test]
    fn only_listed_codings_of_ours_are_picked() {
        let value = HeaderValue::from_static("zstd, br");
        assert_eq!(negotiate(std::iter::once(&value), &[Algorithm::Gzip]), None);
    }

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                name.clone(),
                HeaderValue::from_str(value).unwrap_or_else(|_| HeaderValue::from_static("")),
            );
        }
        map
    }

    #[test]
    fn types_match_exactly_or_by_top_level_wildcard() {
        let types = CompressionConfig::default().types;
        assert!(type_listed("text/html; charset=utf-8", &types));
        assert!(type_listed("Application/JSON", &types));
        assert!(!type_listed("application/octet-stream", &types));
        assert!(!type_listed("text", &types));
        assert!(!type_listed("textual/html", &types));
        assert!(type_listed("anything/else", &["*".to_string()]));
    }

    #[test]
    fn eligibility_follows_the_skip_rules() {
        let config = CompressionConfig::default();
        let json = (header::CONTENT_TYPE, "application/json");
        assert!(eligible(
            StatusCode::OK,
            &headers(std::slice::from_ref(&json)),
            &config
        ));
        assert!(eligible(
            StatusCode::NOT_FOUND,
            &headers(std::slice::from_ref(&json)),
            &config
        ));
        for status in [
            StatusCode::NO_CONTENT,
            StatusCode::PARTIAL_CONTENT,
            StatusCode::NOT_MODIFIED,
            StatusCode::CONTINUE,
        ] {
            assert!(
                !eligible(status, &headers(std::slice::from_ref(&json)), &config),
                "{status}"
            );
        }
        let skipped = [
            (header::CONTENT_ENCODING, "gzip"),
            (header::CACHE_CONTROL, "public, No-Transform"),
            (header::CONTENT_LENGTH, "1023"),
        ];
        for extra in skipped {
            assert!(
                !eligible(
                    StatusCode::OK,
                    &headers(&[json.clone(), extra.clone()]),
                    &config
                ),
                "{extra:?}"
            );
        }
        assert!(eligible(
            StatusCode::OK,
            &headers(&[json, (header::CONTENT_LENGTH, "1024")]),
            &config
        ));
        assert!(!eligible(StatusCode::OK, &headers(&[]), &config));
    }

    #[test]
    fn vary_is_appended_once() {
        let mut map = headers(&[(header::VARY, "Origin")]);
        add_vary(&mut map);
        add_vary(&mut map);
        assert_eq!(
            map.get_all(header::VARY).iter().collect::<Vec<_>>(),
            ["Origin, Accept-Encoding"]
        );
        let mut star = headers(&[(header::VARY, "*")]);
        add_vary(&mut star);
        assert_eq!(star.get_all(header::VARY).iter().collect::<Vec<_>>(), ["*"]);
        let mut listed = headers(&[(header::VARY, "accept-encoding")]);
        add_vary(&mut listed);
        assert_eq!(
            listed.get_all(header::VARY).iter().collect::<Vec<_>>(),
            ["accept-encoding"]
        );
    }

    #[test]
    fn a_compressed_answer_has_a_weak_etag_and_no_length() {
        let mut map = headers(&[
            (header::ETAG, "\"v1\""),
            (header::CONTENT_LENGTH, "5000"),
            (header::ACCEPT_RANGES, "bytes"),
        ]);
        mark_compressed(&mut map, Algorithm::Brotli);
        assert_eq!(
            map.get(header::ETAG).map(|v| v.as_bytes()),
            Some(&b"W/\"v1\""[..])
        );
        assert_eq!(
            map.get(header::CONTENT_ENCODING).map(|v| v.as_bytes()),
            Some(&b"br"[..])
        );
        assert!(!map.contains_key(header::CONTENT_LENGTH));
        assert!(!map.contains_key(header::ACCEPT_RANGES));
        let mut weak = headers(&[(header::ETAG, "W/\"v1\"")]);
        mark_compressed(&mut weak, Algorithm::Gzip);
        assert_eq!(
            weak.get(header::ETAG).map(|v| v.as_bytes()),
            Some(&b"W/\"v1\""[..])
        );
    }
}
