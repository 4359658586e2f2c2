//! Our upstream HTTP/1.1 client's response-head parser (`proxy::h1codec::parse_head`) on any bytes, as a
//! server's answer to GET or HEAD: no panic; a head it accepts is consumed from the front of the buffer
//! (the body's first bytes stay); an answer to HEAD, a 204 or a 304 has no body; a head with both
//! `Content-Length` and `Transfer-Encoding` is refused; a `101` is final (with no body) only when the
//! request asked to upgrade.
#![no_main]

use bytes::BytesMut;
use fulcrum::upstream_client::h1codec::{parse_head, ResponseFraming};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, wire)) = data.split_first() else {
        return;
    };
    let method = if which & 1 == 0 {
        http::Method::GET
    } else {
        http::Method::HEAD
    };
    let upgrading = which & 2 != 0;
    let mut buf = BytesMut::from(wire);
    let mut room = http::HeaderMap::new();
    let Ok(Some(head)) = parse_head(&mut buf, &method, &mut room, upgrading) else {
        return;
    };
    assert!(
        buf.len() < wire.len(),
        "a head was accepted but nothing consumed"
    );
    assert!(wire.ends_with(&buf), "what stays is the end of the input");
    let status = head.response.status();
    if status == 101 {
        assert!(upgrading, "a 101 to a request that did not ask to upgrade");
        assert_eq!(head.framing, ResponseFraming::Empty, "a 101 has no body");
        assert!(!head.keep_alive, "a switched connection is not pooled");
    } else {
        assert!(!status.is_informational(), "interim answers are skipped");
    }
    if method == http::Method::HEAD || status == 204 || status == 304 {
        assert_eq!(head.framing, ResponseFraming::Empty, "{status} to {method}");
    }
    let headers = head.response.headers();
    assert!(
        !(headers.contains_key(http::header::CONTENT_LENGTH)
            && headers.contains_key(http::header::TRANSFER_ENCODING)
            && head.framing != ResponseFraming::Empty),
        "both framings accepted"
    );
});
