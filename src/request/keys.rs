//! The request's key for hashing strategies and rate-limit zones: client IP, a header, a cookie, a query
//! parameter or the path, hashed once.

use std::net::IpAddr;

use http::header::{self, HeaderMap};
use http::Uri;

use crate::balance::hash_bytes;
use crate::config::HashKey;

/// Hashes `key` for this request; `None` when the request lacks it.
pub fn key_hash(key: &HashKey, uri: &Uri, headers: &HeaderMap, client_ip: IpAddr) -> Option<u64> {
    match key {
        HashKey::ClientIp => Some(match client_ip {
            IpAddr::V4(v4) => hash_bytes(&v4.octets()),
            IpAddr::V6(v6) => hash_bytes(&v6.octets()),
        }),
        HashKey::Path => Some(hash_bytes(uri.path().as_bytes())),
        HashKey::Header(name) => headers.get(name).map(|v| hash_bytes(v.as_bytes())),
        HashKey::Cookie(name) => headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| k == name)
            .map(|(_, v)| hash_bytes(v.as_bytes())),
        HashKey::Query(name) => uri
            .query()?
            .split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .find(|(k, _)| k == name)
            .map(|(_, v)| hash_bytes(v.as_bytes())),
    }
}
