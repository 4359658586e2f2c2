//! Request framing checks made before anything is forwarded: the transfer coding the proxy can re-frame,
//! and header names that only look like the framing headers.

use http::{header, HeaderMap, HeaderName};

/// Whether `Transfer-Encoding` is absent or exactly one `chunked`.
pub fn transfer_encoding_is_plain(headers: &HeaderMap) -> bool {
    let mut codings = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(str::trim);
    match (codings.next(), codings.next()) {
        (None, _) => true,
        (Some(only), None) => only.eq_ignore_ascii_case("chunked"),
        (Some(_), Some(_)) => false,
    }
}

/// A header whose name reads as `Content-Length` or `Transfer-Encoding` once `_` and repeated `-` are
/// ignored (`Transfer_Encoding`, `content--length`): a server that maps `_` to `-` (CGI, WSGI, some
/// frameworks) would frame the body by it while we frame it without, so such a request is refused.
pub fn lookalike_framing_header(headers: &HeaderMap) -> Option<&HeaderName> {
    headers.keys().find(|name| {
        let name = name.as_str();
        name != "content-length"
            && name != "transfer-encoding"
            && (letters_are(name, "contentlength") || letters_are(name, "transferencoding"))
    })
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

    fn headers(names: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for name in names {
            map.insert(
                HeaderName::from_bytes(name.as_bytes()).expect("a header name"),
                http::HeaderValue::from_static("1"),
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
            let found = lookalike_framing_header(&headers(&[name])).is_some();
            assert_eq!(found, lookalike, "{name}");
        }
    }
}
