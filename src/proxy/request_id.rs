//! Request IDs: an incoming `X-Request-Id` is kept when its value is sane, otherwise one is made; the ID
//! goes to the upstream, back to the client, and into every log line about the request.

use http::header::{Entry, HeaderMap, HeaderName, HeaderValue};

/// The header carrying the ID.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest incoming ID kept.
const MAX_LEN: usize = 128;

/// Gives the request its ID and returns it: the client's `X-Request-Id` when sane (1 to 128 of
/// `A-Z a-z 0-9 - _ . : /`; the first, when there are several), else 32 random hex digits. The request
/// leaves with that one value.
pub fn assign(headers: &mut HeaderMap) -> HeaderValue {
    // One lookup for the read and the write.
    match headers.entry(&X_REQUEST_ID) {
        Entry::Occupied(mut entry) => {
            let id = if is_sane(entry.get().as_bytes()) {
                entry.get().clone()
            } else {
                made()
            };
            entry.insert(id.clone());
            id
        }
        Entry::Vacant(entry) => entry.insert(made()).clone(),
    }
}

/// A new ID: 32 random hex digits.
fn made() -> HeaderValue {
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

    fn with(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                &X_REQUEST_ID,
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        headers
    }

    #[test]
    fn sane_ids_are_kept() {
        let mut headers = with(&["abc-123_x.y:z"]);
        assert_eq!(assign(&mut headers), "abc-123_x.y:z");
        assert_eq!(headers.get_all(&X_REQUEST_ID).iter().count(), 1);
        // Of several, the first, and only it goes on.
        let mut headers = with(&["first", "second"]);
        assert_eq!(assign(&mut headers), "first");
        let sent: Vec<_> = headers.get_all(&X_REQUEST_ID).iter().collect();
        assert_eq!(sent, ["first"]);
    }

    #[test]
    fn odd_or_missing_ids_are_replaced() {
        for odd in ["", "has space", "semi;colon", &"x".repeat(129)] {
            let mut headers = with(&[odd]);
            let id = assign(&mut headers);
            assert_eq!(id.len(), 32, "{odd:?} -> {id:?}");
            assert_eq!(headers.get(&X_REQUEST_ID), Some(&id), "{odd:?} replaced");
        }
        let mut headers = HeaderMap::new();
        let made = assign(&mut headers);
        assert_eq!(headers.get(&X_REQUEST_ID), Some(&made));
        assert!(made
            .to_str()
            .expect("ascii")
            .bytes()
            .all(|b| b.is_ascii_hexdigit()));
        assert_ne!(made, assign(&mut HeaderMap::new()), "made ids differ");
    }
}
