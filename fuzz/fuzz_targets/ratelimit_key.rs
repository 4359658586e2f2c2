//! The rate-limit (and hash) key of any request: the client address behind any `X-Forwarded-For` chain
//! and any trusted-proxy list, then the key for any key spec. Never panics; the same request gives the
//! same key; the client address is the peer or an address the chain names.
#![no_main]

use std::net::IpAddr;

use arbitrary::Arbitrary;
use fulcrum::config::values::parse_hash_key;
use fulcrum::request::client_ip::real_client_ip;
use fulcrum::request::keys::key_hash;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::Uri;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    key: String,
    uri: String,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    forwarded_for: Vec<String>,
    peer: IpAddr,
    trusted: Vec<(IpAddr, u8)>,
}

fuzz_target!(|input: Input| {
    let Ok(key) = parse_hash_key(&input.key) else {
        return;
    };
    let uri: Uri = input.uri.parse().unwrap_or_else(|_| Uri::from_static("/"));
    let mut headers = HeaderMap::new();
    for (name, value) in &input.headers {
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            headers.append(name, value);
        }
    }
    for entry in &input.forwarded_for {
        if let Ok(value) = HeaderValue::from_str(entry) {
            headers.append("x-forwarded-for", value);
        }
    }
    let trusted: Vec<ipnet::IpNet> = input
        .trusted
        .iter()
        .filter_map(|(ip, prefix)| ipnet::IpNet::new(*ip, *prefix).ok())
        .collect();
    let client = real_client_ip(input.peer, &headers, &trusted);
    assert_eq!(client, real_client_ip(input.peer, &headers, &trusted));
    if trusted.is_empty() {
        assert_eq!(client, input.peer.to_canonical());
    }
    let first = key_hash(&key, &uri, &headers, client);
    assert_eq!(first, key_hash(&key, &uri, &headers, client));
});
