//! The request's host: its `Host` header checked (RFC 9112 3.2), else the URI's authority.

use http::header::HeaderValue;
use http::Request;

/// The host a request is routed by and forwarded with as `Host` (RFC 9112 3.2.2, RFC 9113 8.3.1): the
/// request target's authority when it has one (absolute form in HTTP/1.1, `:authority` in HTTP/2), else
/// its `Host` header (its first value and how many there are, from [`crate::request::framing::scan`]). `Err` when
/// the request breaks the rules: an HTTP/1.1 request has exactly one `Host`, an HTTP/1.0 one at most one,
/// every value is `host[:port]` with a port below 65536 and no userinfo (RFC 9110 4.2.4), and an empty
/// `Host` is refused as nginx refuses it.
pub(super) fn request_host<B>(
    request: &Request<B>,
    (first, count): (Option<&HeaderValue>, usize),
) -> Result<Option<HeaderValue>, ()> {
    let authority = request.uri().authority();
    if let Some(authority) = authority {
        if !valid_host(authority.as_str().as_bytes()) {
            return Err(());
        }
    }
    if request.version() > http::Version::HTTP_11 {
        // HTTP/2: `:authority` wins over a `host` field; without it, `host` names the host.
        return match (authority, first) {
            (Some(authority), _) => Ok(HeaderValue::from_str(authority.as_str()).ok()),
            (None, Some(host)) if count == 1 && valid_host(host.as_bytes()) => {
                Ok(Some(host.clone()))
            }
            (None, Some(_)) => Err(()),
            (None, None) => Ok(None),
        };
    }
    let host = match (first, count) {
        (Some(value), 1) if valid_host(value.as_bytes()) => Some(value),
        (None, 0) if request.version() < http::Version::HTTP_11 => None,
        _ => return Err(()),
    };
    match authority {
        // Absolute form: the target's authority, whatever `Host` says.
        Some(authority) => Ok(HeaderValue::from_str(authority.as_str()).ok()),
        None => Ok(host.cloned()),
    }
}

/// `uri-host [ ":" port ]`: a valid authority without userinfo, whose port (when given) is below 65536.
fn valid_host(value: &[u8]) -> bool {
    if value.contains(&b'@') || !is_authority(value) {
        return false;
    }
    // The port follows the last colon, unless that colon is inside an IPv6 literal.
    let port = match value.iter().rposition(|&b| b == b':') {
        Some(colon) if !value[colon..].contains(&b']') => &value[colon + 1..],
        _ => return true,
    };
    port.is_empty()
        || (port.len() <= 5
            && port.iter().all(u8::is_ascii_digit)
            && std::str::from_utf8(port)
                .ok()
                .and_then(|p| p.parse::<u16>().ok())
                .is_some())
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

#[cfg(test)]
mod tests {
    use super::{is_authority, valid_host};

    #[test]
    fn hosts_are_host_and_port_without_userinfo() {
        for (value, valid) in [
            (&b"example.com"[..], true),
            (b"example.com:8080", true),
            (b"localhost:65535", true),
            (b"localhost:99999", false),
            (b"localhost:65536", false),
            (b"localhost@secret.test", false),
            (b"user:pw@host:80", false),
            (b"[::1]:80", true),
            (b"[::1]", true),
            (b"[::1]:70000", false),
            (b"host:", true),
            (b"host:8a", false),
            (b"", false),
        ] {
            assert_eq!(
                valid_host(value),
                valid,
                "{}",
                String::from_utf8_lossy(value)
            );
        }
    }

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

#[cfg(test)]
mod properties {
    use super::request_host;
    use http::{HeaderValue, Request, Version};
    use proptest::prelude::*;

    /// Host-like text over the bytes that matter: letters, digits, dots, dashes, colons, brackets, `@`.
    fn hostish() -> impl Strategy<Value = String> {
        proptest::string::string_regex("[a-z0-9.:@\\[\\]-]{0,12}").expect("a regex")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Whatever the target and `Host` say, the host routed by is the target's authority when the
        /// request has one, never carries userinfo, and is refused rather than guessed.
        #[test]
        fn the_target_authority_wins_and_userinfo_never_passes(
            authority in hostish(),
            host in hostish(),
            http2 in any::<bool>(),
        ) {
            let uri = format!("http://{authority}/p");
            let Ok(request) = Request::get(uri.as_str())
                .version(if http2 { Version::HTTP_2 } else { Version::HTTP_11 })
                .body(())
            else {
                return Ok(());
            };
            let Ok(value) = HeaderValue::from_str(&host) else {
                return Ok(());
            };
            match request_host(&request, (Some(&value), 1)) {
                Ok(Some(chosen)) => {
                    let target = request.uri().authority().map(|a| a.as_str());
                    prop_assert_eq!(Some(chosen.to_str().unwrap_or_default()), target);
                    prop_assert!(!chosen.as_bytes().contains(&b'@'));
                }
                Ok(None) => prop_assert!(false, "a request with a target authority has a host"),
                Err(()) => {}
            }
        }
    }
}
