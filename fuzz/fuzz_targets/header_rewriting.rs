//! Header rewriting on any header list: hop-by-hop headers (and those `Connection` names) are gone,
//! `X-Forwarded-For` ends with the peer, `X-Real-IP` is the client, and nothing panics.
#![no_main]

use std::net::IpAddr;

use arbitrary::Arbitrary;
use fulcrum::message::headers::{forwarding, strip_hop_by_hop, Peer};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    peer: IpAddr,
    client: IpAddr,
    tls: bool,
    host: Option<Vec<u8>>,
}

const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fuzz_target!(|input: Input| {
    let mut headers = HeaderMap::new();
    for (name, value) in &input.headers {
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            headers.append(name, value);
        }
    }
    let named_by_connection: Vec<HeaderName> = headers
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    strip_hop_by_hop(&mut headers);
    for name in HOP_BY_HOP {
        assert!(!headers.contains_key(name), "{name} survived");
    }
    for name in &named_by_connection {
        assert!(
            !headers.contains_key(name),
            "{name} (named by Connection) survived"
        );
    }
    if let Some(te) = headers.get("te") {
        assert!(te.as_bytes().eq_ignore_ascii_case(b"trailers"));
    }

    let host = input
        .host
        .as_deref()
        .and_then(|h| HeaderValue::from_bytes(h).ok());
    let proto = if input.tls { "https" } else { "http" };
    let fields = forwarding(
        &mut headers,
        &Peer::new(input.peer),
        input.client,
        &HeaderValue::from_static(proto),
        host.as_ref(),
    );
    // The client's own forwarding fields are out of the map; the made ones are written after it (our
    // HTTP/1.1 connections) or put into it (hyper's HTTP/2 client), which is what is checked below.
    for name in [
        "x-forwarded-for",
        "x-real-ip",
        "x-forwarded-proto",
        "x-forwarded-host",
    ] {
        assert!(!headers.contains_key(name), "the client's {name} stayed");
    }
    fields.insert_into(&mut headers);
    for (name, value) in fields.fields() {
        assert_eq!(headers.get_all(name).iter().collect::<Vec<_>>(), [value]);
    }
    let client = input.client.to_string();
    assert_eq!(
        headers.get("x-real-ip").map(HeaderValue::as_bytes),
        Some(client.as_bytes())
    );
    assert_eq!(headers.get_all("x-forwarded-for").iter().count(), 1);
    if let Some(forwarded_for) = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        assert!(
            forwarded_for.ends_with(&input.peer.to_string()),
            "{forwarded_for}"
        );
    }
    assert_eq!(
        headers.get("x-forwarded-proto").map(HeaderValue::as_bytes),
        Some(proto.as_bytes())
    );
    assert_eq!(headers.get("x-forwarded-host"), host.as_ref());
});
