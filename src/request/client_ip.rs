//! The real client address: the peer, or, when the peer is a trusted proxy, the right-most address in
//! `X-Forwarded-For` that is not a trusted proxy (nginx `set_real_ip_from` with `real_ip_recursive on`).

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

/// The client's address for balancing, limits, logs and `X-Real-IP`.
pub fn real_client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    if trusted.is_empty() || !is_trusted(peer, trusted) {
        return peer;
    }
    let mut client = peer;
    let entries = headers
        .get_all("x-forwarded-for")
        .iter()
        .rev()
        .flat_map(|value| value.to_str().unwrap_or("").rsplit(','));
    for entry in entries {
        let Some(ip) = parse_entry(entry) else {
            // A malformed entry ends the trust chain: the last good address stands.
            return client;
        };
        client = ip;
        if !is_trusted(ip, trusted) {
            return ip;
        }
    }
    client
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// `1.2.3.4`, `2001:db8::1`, `[2001:db8::1]:443` or `1.2.3.4:5678`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    entry
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|addr| canonical(addr.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append("x-forwarded-for", v.parse().expect("header value"));
        }
        map
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().expect("cidr")).collect()
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let ip = real_client_ip(
            "203.0.113.7".parse().expect("ip"),
            &headers(&["1.1.1.1"]),
            &nets(&["10.0.0.0/8"]),
        );
        assert_eq!(ip, "203.0.113.7".parse::<IpAddr>().expect("ip"));
    }

    #[test]
    fn trusted_peer_yields_the_right_most_untrusted_entry() {
        let trusted = nets(&["10.0.0.0/8", "192.168.0.0/16"]);
        let h = headers(&["198.51.100.1, 203.0.113.9", "192.168.1.1"]);
        let ip = real_client_ip("10.1.2.3".parse().expect("ip"), &h, &trusted);
        assert_eq!(ip, "203.0.113.9".parse::<IpAddr>().expect("ip"));
    }

    #[test]
    fn all_trusted_hops_give_the_left_most() {
        let trusted = nets(&["10.0.0.0/8"]);
        let ip = real_client_ip(
            "10.0.0.1".parse().expect("ip"),
            &headers(&["10.0.0.9, 10.0.0.8"]),
            &trusted,
        );
        assert_eq!(ip, "10.0.0.9".parse::<IpAddr>().expect("ip"));
    }

    #[test]
    fn ipv6_and_mapped_addresses() {
        let trusted = nets(&["2001:db8::/32", "10.0.0.0/8"]);
        let h = headers(&["[2001:db9::5]:443"]);
        let ip = real_client_ip("2001:db8::1".parse().expect("ip"), &h, &trusted);
        assert_eq!(ip, "2001:db9::5".parse::<IpAddr>().expect("ip"));
        let mapped = real_client_ip(
            "::ffff:10.0.0.1".parse().expect("ip"),
            &headers(&["198.51.100.2"]),
            &trusted,
        );
        assert_eq!(mapped, "198.51.100.2".parse::<IpAddr>().expect("ip"));
    }

    #[test]
    fn garbage_stops_the_chain() {
        let trusted = nets(&["10.0.0.0/8"]);
        let ip = real_client_ip(
            "10.0.0.1".parse().expect("ip"),
            &headers(&["203.0.113.1, nonsense"]),
            &trusted,
        );
        assert_eq!(ip, "10.0.0.1".parse::<IpAddr>().expect("ip"));
    }
}
