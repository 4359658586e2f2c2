//! What a request's headers say before anything is forwarded, found in one pass: the transfer coding
//! the proxy can re-frame, header names that only look like the framing headers, the body's length, an
//! upgrade, and the `Host` values.

use http::{header, HeaderMap, HeaderName, HeaderValue};

/// What one pass over a request's headers finds for the checks made before forwarding (one pass costs
/// less than a lookup per header asked for): its `Host`, its framing, an upgrade.
#[derive(Debug)]
pub struct Scan<'a> {
    /// `Transfer-Encoding` is absent or exactly one `chunked`.
    pub transfer_encoding_is_plain: bool,
    /// The first header whose name reads as `Content-Length` or `Transfer-Encoding` once `_` and repeated
    /// `-` are ignored (`Transfer_Encoding`, `content--length`): a server that maps `_` to `-` (CGI, WSGI,
    /// some frameworks) would frame the body by it while we frame it without, so such a request is refused.
    pub lookalike: Option<&'a HeaderName>,
    /// The first `Content-Length` value, as a number.
    pub content_length: Option<u64>,
    /// An `Upgrade` header is present and `Connection` names `upgrade`.
    pub asks_upgrade: bool,
    /// The first `Host` value, and how many there are.
    pub host: (Option<&'a HeaderValue>, usize),
}

/// Scans `headers` once; see [`Scan`].
pub fn scan(headers: &HeaderMap) -> Scan<'_> {
    let mut codings = 0usize;
    let mut first_coding_is_chunked = false;
    let mut lookalike = None;
    let mut content_length = None;
    let mut seen_content_length = false;
    let mut upgrade = false;
    let mut connection_upgrade = false;
    let mut host = (None, 0);
    for (name, value) in headers {
        if name == header::HOST {
            host.0 = host.0.or(Some(value));
            host.1 += 1;
        } else if name == header::TRANSFER_ENCODING {
            for coding in value.to_str().unwrap_or("?").split(',').map(str::trim) {
                codings += 1;
                if codings == 1 {
                    first_coding_is_chunked = coding.eq_ignore_ascii_case("chunked");
                }
            }
        } else if name == header::CONTENT_LENGTH {
            if !seen_content_length {
                seen_content_length = true;
                content_length = value.to_str().ok().and_then(|v| v.parse().ok());
            }
        } else if name == header::UPGRADE {
            upgrade = true;
        } else if name == header::CONNECTION {
            connection_upgrade |= crate::forward::upgrade::names_upgrade(value);
        } else if lookalike.is_none() && is_lookalike(name) {
            lookalike = Some(name);
        }
    }
    Scan {
        transfer_encoding_is_plain: codings == 0 || (codings == 1 && first_coding_is_chunked),
        lookalike,
        content_length,
        asks_upgrade: upgrade && connection_upgrade,
        host,
    }
}

fn is_lookalike(name: &HeaderName) -> bool {
    let name = name.as_str();
    name != "content-length"
        && name != "transfer-encoding"
        && (letters_are(name, "contentlength") || letters_are(name, "transferencoding"))
}

/// Whether `name` (lowercase, as `http` stores it) spells `letters` once `-` and `_` are skipped.
fn letters_are(name: &str, letters: &str) -> bool {
    name.bytes()
        .filter(|&b| b != b'-' && b != b'_')
        .eq(letters.bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("a header name"),
                http::HeaderValue::from_str(value).expect("a header value"),
            );
        }
        map
    }

    #[test]
    fn lookalikes_of_the_framing_headers_are_found() {
        let cases = [
            ("transfer_encoding", true),
            ("Content_Length", true),
            ("transfer---encoding", true),
            ("content-length_", true),
            ("content-length", false),
            ("transfer-encoding", false),
            ("content-type", false),
            ("x-content-length", false),
        ];
        for (name, lookalike) in cases {
            let found = scan(&with(&[(name, "1")])).lookalike.is_some();
            assert_eq!(found, lookalike, "{name}");
        }
    }

    #[test]
    fn one_pass_finds_transfer_coding_length_upgrade_and_host() {
        let plain = [
            (vec![], true),
            (vec![("transfer-encoding", "chunked")], true),
            (vec![("transfer-encoding", " Chunked ")], true),
            (vec![("transfer-encoding", "gzip, chunked")], false),
            (
                vec![
                    ("transfer-encoding", "chunked"),
                    ("transfer-encoding", "chunked"),
                ],
                false,
            ),
            (vec![("transfer-encoding", "")], false),
        ];
        for (pairs, expected) in plain {
            assert_eq!(
                scan(&with(&pairs)).transfer_encoding_is_plain,
                expected,
                "{pairs:?}"
            );
        }
        let lengths = with(&[("content-length", "12"), ("content-length", "99")]);
        assert_eq!(scan(&lengths).content_length, Some(12));
        assert_eq!(scan(&with(&[("content-length", "x")])).content_length, None);
        let upgrade = [
            (
                vec![
                    ("upgrade", "websocket"),
                    ("connection", "keep-alive, Upgrade"),
                ],
                true,
            ),
            (
                vec![("upgrade", "websocket"), ("connection", "keep-alive")],
                false,
            ),
            (vec![("connection", "upgrade")], false),
        ];
        for (pairs, expected) in upgrade {
            assert_eq!(scan(&with(&pairs)).asks_upgrade, expected, "{pairs:?}");
        }
        let hosts = with(&[("host", "a.example"), ("host", "b.example")]);
        let (first, count) = scan(&hosts).host;
        assert_eq!(
            (first.map(|v| v.as_bytes()), count),
            (Some(&b"a.example"[..]), 2)
        );
        assert_eq!(scan(&HeaderMap::new()).host.1, 0);
    }
}
