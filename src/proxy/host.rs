//! The request's host: its `Host` header checked (RFC 9112 3.2), else the URI's authority.

use http::header::HeaderValue;
use http::Request;

/// The request's `Host` header (its first value and how many there are, from [`super::framing::scan`]), `Err`
/// when it breaks RFC 9112 3.2: an HTTP/1.1 request has exactly one `Host`, an HTTP/1.0 one at most one,
/// and its value is a valid authority (HTTP/2 carries `:authority` instead and is checked by hyper).
pub(super) fn host_header<'a, B>(
    request: &Request<B>,
    (first, count): (Option<&'a HeaderValue>, usize),
) -> Result<Option<&'a HeaderValue>, ()> {
    if request.version() > http::Version::HTTP_11 {
        return Ok(first);
    }
    match (first, count) {
        (Some(value), 1) if value.as_bytes().is_empty() || is_authority(value.as_bytes()) => {
            Ok(Some(value))
        }
        (None, 0) if request.version() < http::Version::HTTP_11 => Ok(None),
        _ => Err(()),
    }
}

/// Whether `value` is a valid authority, as `http::uri::Authority` parses one. The usual host (letters,
/// digits, dots, dashes, at most one `:` before a port) is checked here: for those bytes http's rules come
/// down to "not empty, at most one colon", and `Authority::try_from` copies the value into a new
/// allocation to check it. Anything else goes to http.
fn is_authority(value: &[u8]) -> bool {
    let plain = value
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
    if plain {
        return !value.is_empty() && value.iter().filter(|&&b| b == b':').count() <= 1;
    }
    http::uri::Authority::try_from(value).is_ok()
}

/// The request's host: its `Host` header, else the URI authority (HTTP/2 `:authority`, absolute-form).
pub(super) fn request_host<B>(
    request: &Request<B>,
    host_header: Option<&HeaderValue>,
) -> Option<HeaderValue> {
    if let Some(host) = host_header {
        return Some(host.clone());
    }
    request
        .uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
}

#[cfg(test)]
mod tests {
    use super::is_authority;

    #[test]
    fn the_host_check_agrees_with_http_on_every_value() {
        for (value, valid) in [
            (&b"example.com"[..], true),
            (b"example.com:8080", true),
            (b"127.0.0.1:80", true),
            (b":80", true),
            (b"a:b:c", false),
            (b"", false),
            (b"[::1]:80", true),
            (b"user@host", true),
            (b"host/path", false),
            (b"ho st", false),
        ] {
            let text = String::from_utf8_lossy(value);
            assert_eq!(is_authority(value), valid, "{text}");
        }
        // Random values over the bytes that matter to either path: every answer is http's.
        let mut rng = fastrand::Rng::with_seed(9);
        let alphabet = b"aZ09.-:[]@%/?#_ ~\t\x7f";
        for _ in 0..200_000 {
            let len = rng.usize(0..10);
            let value: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect();
            assert_eq!(
                is_authority(&value),
                http::uri::Authority::try_from(&value[..]).is_ok(),
                "{:?}",
                String::from_utf8_lossy(&value)
            );
        }
    }
}
