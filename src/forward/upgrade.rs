//! HTTP/1.1 upgrades (WebSocket and others): the `Upgrade` request goes upstream, and on `101` the two
//! connections are spliced into a tunnel that counts as in flight on its server until it closes.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};

/// Whether a `Connection` value names `upgrade` (a request asks to switch protocols when it also has an
/// `Upgrade` header, over HTTP/1.1: see `framing::scan`).
pub fn names_upgrade(connection: &HeaderValue) -> bool {
    connection.to_str().is_ok_and(|v| {
        v.split(',')
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
    })
}

/// The part of an `Upgrade` value the route allows (`allowed`: lowercase protocol names, matched with or
/// without a `/version`), or `None` when nothing is left: other protocols (`h2c` above all, the known way
/// around a proxy's rules) never reach the upstream.
pub fn allowed_protocols(upgrade: &HeaderValue, allowed: &[String]) -> Option<HeaderValue> {
    let text = upgrade.to_str().ok()?;
    let kept: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|token| {
            let name = token.split('/').next().unwrap_or(token);
            allowed
                .iter()
                .any(|a| a.eq_ignore_ascii_case(token) || a.eq_ignore_ascii_case(name))
        })
        .collect();
    if kept.is_empty() {
        return None;
    }
    if kept.len() == 1 && kept[0].len() == text.len() {
        return Some(upgrade.clone());
    }
    HeaderValue::from_str(&kept.join(", ")).ok()
}

/// Whether the protocol a `101` switches to is one of those the request asked for (and we forwarded).
pub fn switches_to_asked(response_upgrade: Option<&HeaderValue>, asked: &HeaderValue) -> bool {
    let (Some(answer), Ok(asked)) = (
        response_upgrade.and_then(|v| v.to_str().ok()),
        asked.to_str(),
    ) else {
        return false;
    };
    let answer = answer.trim();
    let name = answer.split('/').next().unwrap_or(answer);
    asked.split(',').map(str::trim).any(|token| {
        token.eq_ignore_ascii_case(answer)
            || token
                .split('/')
                .next()
                .unwrap_or(token)
                .eq_ignore_ascii_case(name)
    })
}

/// Puts back the two headers that hop-by-hop stripping removed but an upgrade must carry to the next hop.
pub fn restore_upgrade_headers(headers: &mut HeaderMap, upgrade: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, upgrade);
}

/// Whether a response switches protocols.
pub fn is_switching<B>(response: &Response<B>) -> bool {
    response.status() == StatusCode::SWITCHING_PROTOCOLS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allowed_protocols_pass() {
        let allowed = ["websocket".to_string()];
        let value = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(
            allowed_protocols(&value("websocket"), &allowed),
            Some(value("websocket"))
        );
        assert_eq!(
            allowed_protocols(&value("WebSocket"), &allowed),
            Some(value("WebSocket"))
        );
        assert_eq!(allowed_protocols(&value("h2c"), &allowed), None);
        assert_eq!(
            allowed_protocols(&value("h2c, websocket"), &allowed),
            Some(value("websocket"))
        );
        assert_eq!(
            allowed_protocols(&value("foo/2, bar"), &["foo".to_string()]),
            Some(value("foo/2"))
        );
        assert!(switches_to_asked(
            Some(&value("websocket")),
            &value("websocket")
        ));
        assert!(!switches_to_asked(Some(&value("h2c")), &value("websocket")));
        assert!(!switches_to_asked(None, &value("websocket")));
    }
}

#[cfg(test)]
mod properties {
    use super::allowed_protocols;
    use http::HeaderValue;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Only protocols the route allows ever pass, in any case and any list; h2c never does unless
        /// allowed.
        #[test]
        fn only_allowed_protocols_ever_pass(
            tokens in proptest::collection::vec("(websocket|WebSocket|h2c|H2C|echo|foo/1|tls/1.3| |,)", 0..6),
        ) {
            let asked = tokens.join(",");
            let Ok(value) = HeaderValue::from_str(&asked) else {
                return Ok(());
            };
            let allowed = ["websocket".to_string()];
            if let Some(kept) = allowed_protocols(&value, &allowed) {
                let kept = kept.to_str().unwrap_or_default().to_ascii_lowercase();
                for token in kept.split(',').map(str::trim) {
                    prop_assert_eq!(token, "websocket");
                }
            }
        }
    }
}
