//! Header rewriting: hop-by-hop headers out both ways (RFC 9110 7.6.1), forwarding headers in.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection, never forwarded.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// The fields [`Forwarding`] makes, in the order they are sent.
static FORWARDING_NAMES: [&HeaderName; 4] = [
    &X_FORWARDED_FOR,
    &X_REAL_IP,
    &X_FORWARDED_PROTO,
    &X_FORWARDED_HOST,
];

/// Removes hop-by-hop headers, including every header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names, which hashes nothing, finds what is there; only those are removed (most
    // messages carry none, or only `Connection`).
    let mut present = 0u8;
    let mut te = false;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            present |= 1 << i;
        } else if name == header::TE {
            te = true;
        }
    }
    if present & 1 != 0 && !names_no_header(headers) {
        // HOP_BY_HOP[0] is `Connection`: the headers it names go first, while it can still be read.
        // `close` names no header and `keep-alive` or `upgrade` go below anyway: the usual values cost no
        // allocation.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|token| !is_usual_connection_token(token.as_bytes()))
            .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    // TE is hop-by-hop; only "trailers" has a meaning for the next hop.
    if te
        && !headers
            .get(header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        headers.remove(header::TE);
    }
}

/// `close`, `keep-alive`, `upgrade` or nothing: a `Connection` token that names no other header to remove.
pub(crate) fn is_usual_connection_token(token: &[u8]) -> bool {
    [b"close".as_slice(), b"keep-alive", b"upgrade", b""]
        .iter()
        .any(|usual| token.eq_ignore_ascii_case(usual))
}

/// Whether `name` is one of the hop-by-hop fields removed from every message (`Connection` among them;
/// `TE` is not: it is kept when it says `trailers`).
pub(crate) fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}

/// Whether the message's one `Connection` header is one usual token (`keep-alive` from most upstreams),
/// checked without splitting it into a list.
fn names_no_header(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::CONNECTION).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => {
            let bytes = value.as_bytes();
            !bytes.contains(&b',') && is_usual_connection_token(bytes.trim_ascii())
        }
        _ => false,
    }
}

/// A connection's peer address, with its text made once per connection for the forwarding headers.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The address.
    pub ip: IpAddr,
    /// The address as a header value.
    value: HeaderValue,
}

impl Peer {
    /// The peer `ip`, formatted once.
    pub fn new(ip: IpAddr) -> Self {
        Peer {
            ip,
            value: ip_value(ip),
        }
    }

    fn text(&self) -> &str {
        // Made from an address's `Display`: always ASCII.
        self.value.to_str().unwrap_or("unknown")
    }
}

/// A request's forwarding fields: `X-Forwarded-For` (the peer appended), `X-Real-IP` (the client, after
/// trusted-proxy resolution), `X-Forwarded-Proto` and `X-Forwarded-Host`. They are kept apart from the
/// request's header map: our HTTP/1.1 upstream connections write them after the map's fields, and the
/// other upstream clients get them put into the map ([`Forwarding::insert_into`]). Inserting the four
/// into the map for every request cost about 1,000 instructions (a hash of each name, a probe, a bucket).
#[derive(Debug, Clone)]
pub struct Forwarding {
    forwarded_for: HeaderValue,
    real_ip: Option<HeaderValue>,
    proto: HeaderValue,
    host: Option<HeaderValue>,
}

impl Forwarding {
    /// The fields, in the order they are sent.
    pub fn fields(&self) -> impl Iterator<Item = (&'static HeaderName, &HeaderValue)> {
        let values = [
            Some(&self.forwarded_for),
            self.real_ip.as_ref(),
            Some(&self.proto),
            self.host.as_ref(),
        ];
        FORWARDING_NAMES
            .into_iter()
            .zip(values)
            .filter_map(|(name, value)| Some((name, value?)))
    }

    /// Puts the fields into `headers` (which holds none of them: [`forwarding`] took the client's out).
    pub fn insert_into(&self, headers: &mut HeaderMap) {
        for (name, value) in self.fields() {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// The forwarding fields for a request with `headers` from `peer`: a client's own `X-Forwarded-For` is
/// taken out of the map and continued (the peer appended); its `X-Real-IP`, `X-Forwarded-Proto` and
/// `X-Forwarded-Host` are taken out and replaced.
pub fn forwarding(
    headers: &mut HeaderMap,
    peer: &Peer,
    client_ip: IpAddr,
    proto: &HeaderValue,
    host: Option<&HeaderValue>,
) -> Forwarding {
    // One pass over the names, which hashes nothing: most requests carry none of these.
    let carried = headers.keys().any(|name| FORWARDING_NAMES.contains(&name));
    let mut forwarded_for = peer.value.clone();
    if carried {
        if let Some(prior) = join_values(headers.get_all(&X_FORWARDED_FOR).iter()) {
            // `prior` and the peer are visible ASCII, so the joined value is a valid header value.
            forwarded_for = HeaderValue::from_str(&format!("{prior}, {}", peer.text()))
                .unwrap_or_else(|_| peer.value.clone());
        }
        for name in FORWARDING_NAMES {
            headers.remove(name);
        }
    }
    let real_ip = if client_ip == peer.ip {
        Some(peer.value.clone())
    } else {
        Some(ip_value(client_ip))
    };
    Forwarding {
        forwarded_for,
        real_ip,
        proto: proto.clone(),
        host: host.cloned(),
    }
}

/// `ip` as a header value, formatted on the stack: one allocation (the value's) per connection instead of
/// three (a `String` grown twice, then copied), and IPv4 without the formatting machinery.
fn ip_value(ip: IpAddr) -> HeaderValue {
    // The longest text form: "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255", 45 bytes.
    let mut text = [0u8; 45];
    let len = match ip {
        IpAddr::V4(v4) => write_ipv4(&mut text, v4),
        IpAddr::V6(_) => {
            let mut cursor = std::io::Cursor::new(&mut text[..]);
            let _ = write!(cursor, "{ip}");
            usize::try_from(cursor.position()).unwrap_or(0)
        }
    };
    HeaderValue::from_bytes(&text[..len]).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Writes `ip` in dotted decimal at the start of `text`; returns its length (at most 15).
fn write_ipv4(text: &mut [u8; 45], ip: Ipv4Addr) -> usize {
    let mut len = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            text[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            text[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        text[len] = b'0' + octet % 10;
        len += 1;
    }
    len
}

/// Values joined with ", " (those that are not text left out), or `None` when there are none.
fn join_values<'a>(values: impl Iterator<Item = &'a HeaderValue>) -> Option<String> {
    let mut values = values.filter_map(|v| v.to_str().ok());
    let first = values.next()?;
    Some(values.fold(first.to_string(), |mut acc, v| {
        acc.push_str(", ");
        acc.push_str(v);
        acc
    }))
}

/// RFC 9110 9.2.2 idempotent methods.
pub fn is_idempotent(method: &http::Method) -> bool {
    matches!(
        *method,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::PUT
            | http::Method::DELETE
            | http::Method::OPTIONS
            | http::Method::TRACE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_formatted_as_display_formats_them() {
        let mut addresses: Vec<IpAddr> = [
            "0.0.0.0",
            "127.0.0.1",
            "255.255.255.255",
            "10.0.99.100",
            "192.168.1.9",
            "::",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.0.2.128",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ]
        .iter()
        .map(|text| text.parse().expect("address"))
        .collect();
        // Every octet value in every position.
        addresses
            .extend((0..=255u8).map(|o| IpAddr::V4(Ipv4Addr::new(o, 255 - o, o / 3, o ^ 0x5a))));
        for ip in addresses {
            assert_eq!(
                ip_value(ip).to_str().ok(),
                Some(ip.to_string().as_str()),
                "{ip:?}"
            );
        }
    }

    #[test]
    fn strips_fixed_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn a_usual_connection_token_alone_or_beside_others_is_handled_alike() {
        // One usual token: Connection goes, nothing else does.
        for usual in ["keep-alive", " Keep-Alive ", "close", "UPGRADE"] {
            let mut h = HeaderMap::new();
            h.insert(header::CONNECTION, HeaderValue::from_static(usual));
            h.insert("x-kept", HeaderValue::from_static("1"));
            strip_hop_by_hop(&mut h);
            assert_eq!(h.len(), 1, "{usual:?}");
            assert!(h.contains_key("x-kept"));
        }
        // Two Connection lines, the second naming a header: that header goes too.
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.append(header::CONNECTION, HeaderValue::from_static("x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    /// The forwarding fields of a request with `h`, put into `h` (as the clients other than ours do).
    fn forwarded(
        h: &mut HeaderMap,
        client: &str,
        proto: &'static str,
        host: Option<&'static str>,
    ) -> Vec<(String, String)> {
        let local = "127.0.0.1".parse().expect("ip");
        let client = client.parse().expect("ip");
        let host = host.map(HeaderValue::from_static);
        let proto = HeaderValue::from_static(proto);
        let fields = forwarding(h, &Peer::new(local), client, &proto, host.as_ref());
        let listed = fields
            .fields()
            .map(|(name, value)| (name.to_string(), value.to_str().expect("ascii").to_string()))
            .collect();
        fields.insert_into(h);
        listed
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("2.2.2.2"));
        forwarded(&mut h, "127.0.0.1", "http", None);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 127.0.0.1");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-real-ip"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(!h.contains_key("x-forwarded-host"));
    }

    #[test]
    fn a_clients_own_forwarding_fields_are_replaced_and_others_kept() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("example.com"));
        h.append("x-real-ip", HeaderValue::from_static("6.6.6.6"));
        h.append("x-real-ip", HeaderValue::from_static("7.7.7.7"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("gopher"));
        h.insert(
            "x-forwarded-host",
            HeaderValue::from_static("spoofed.example"),
        );
        h.insert("x-other", HeaderValue::from_static("kept"));
        let listed = forwarded(&mut h, "10.0.0.9", "https", None);
        let expected = [
            ("x-forwarded-for", "127.0.0.1"),
            ("x-real-ip", "10.0.0.9"),
            ("x-forwarded-proto", "https"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        assert_eq!(listed, expected);
        assert_eq!(h.get_all("x-real-ip").iter().count(), 1);
        assert_eq!(h["x-real-ip"], "10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert!(
            !h.contains_key("x-forwarded-host"),
            "no host: the client's is dropped"
        );
        assert_eq!(h["x-other"], "kept");
        assert_eq!(h[header::HOST], "example.com");

        // Without any of them in the request, the fields are the same and the map only gains them.
        let mut plain = HeaderMap::new();
        plain.insert("x-other", HeaderValue::from_static("kept"));
        let listed = forwarded(&mut plain, "127.0.0.1", "http", Some("example.com"));
        let names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "x-forwarded-for",
                "x-real-ip",
                "x-forwarded-proto",
                "x-forwarded-host"
            ]
        );
        assert_eq!(plain.len(), 5);
        assert_eq!(plain["x-forwarded-host"], "example.com");
    }
}
