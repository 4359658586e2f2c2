//! Request IDs: an incoming `X-Request-Id` is kept when its value is sane, otherwise one is made; the ID
//! goes to the upstream, back to the client, and into every log line about the request.

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// The header carrying the ID.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest incoming ID kept.
const MAX_LEN: usize = 128;

/// The request's ID: the client's when sane (1 to 128 of `A-Z a-z 0-9 - _ . : /`), else 32 random hex digits.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(value) = headers.get(&X_REQUEST_ID) {
        if is_sane(value.as_bytes()) {
            return value.clone();
        }
    }
    // Hex digits written by hand: `format!` costs more than the rest of making the ID.
    let random = fastrand::u128(..);
    let mut id = [0u8; 32];
    for (i, digit) in id.iter_mut().enumerate() {
        let nibble = (random >> (124 - 4 * i)) & 0xf;
        *digit = b"0123456789abcdef"[nibble as usize];
    }
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

fn is_sane(value: &[u8]) -> bool {
    !value.is_empty()
        && value.len() <= MAX_LEN
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            &X_REQUEST_ID,
            HeaderValue::from_str(value).expect("header value"),
        );
        headers
    }

    #[test]
    fn sane_ids_are_kept() {
        assert_eq!(request_id(&with("abc-123_x.y:z")), "abc-123_x.y:z");
    }

    #[test]
    fn odd_or_missing_ids_are_replaced() {
        for odd in ["", "has space", "semi;colon", &"x".repeat(129)] {
            let id = request_id(&with(odd));
            assert_eq!(id.len(), 32, "{odd:?} -> {id:?}");
        }
        let made = request_id(&HeaderMap::new());
        assert!(made
            .to_str()
            .expect("ascii")
            .bytes()
            .all(|b| b.is_ascii_hexdigit()));
        assert_ne!(made, request_id(&HeaderMap::new()), "made ids differ");
    }
}
