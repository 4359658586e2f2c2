//! The HTTP/1.1 wire format of our upstream connections, without I/O: a request head written from the
//! rewritten parts, and a response head parsed from the read buffer with how its body is delimited (the
//! chunked decoder is in [`crate::upstream_client::h1chunked`]). [`crate::upstream_client::h1conn`] drives it on the request's own task.

use std::mem::MaybeUninit;

use bytes::{Buf, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Response, StatusCode, Version};

use crate::message::headers::Forwarding;

/// Most header fields a response head may have (hyper's limit too).
pub(super) const MAX_HEADERS: usize = 100;

/// Header fields whose places are kept on the stack while a head is parsed (more take a Vec).
const FEW_HEADERS: usize = 24;

/// Largest response head accepted: a larger one is a 502, as in nginx ("upstream sent too big header").
pub const MAX_HEAD: usize = 64 * 1024;

/// A response the upstream sent that we cannot forward.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// httparse refused the head (bad status line, bad header, too many headers).
    #[error("malformed response head: {0}")]
    Head(httparse::Error),
    /// The head is larger than [`MAX_HEAD`].
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// A header name or value `http` refuses.
    #[error("invalid response header")]
    Header,
    /// `101 Switching Protocols` to a request that did not ask to upgrade.
    #[error("unexpected 101 Switching Protocols")]
    UnexpectedSwitch,
    /// Several `Content-Length` values that disagree, or one that is not a number.
    #[error("invalid Content-Length")]
    ContentLength,
    /// Both `Transfer-Encoding: chunked` and `Content-Length` (RFC 9112 6.3: a smuggling attempt or a
    /// broken server; nginx answers 502 too).
    #[error("both Transfer-Encoding and Content-Length")]
    LengthAndChunked,
    /// A malformed chunk-size line, chunk end or trailer section.
    #[error("malformed chunked body")]
    Chunk,
}

/// How a request body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body.
    Empty,
    /// Exactly this many bytes (the client's `Content-Length`).
    Length(u64),
    /// Chunked (we add `Transfer-Encoding: chunked`).
    Chunked,
}

/// Writes a request head to `out`: origin-form `target`, HTTP/1.1, the headers as they are and
/// `Transfer-Encoding: chunked` when `framing` says so.
pub fn encode_head(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    forwarding: Option<&Forwarding>,
    framing: RequestFraming,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut field = |name: &HeaderName, value: &HeaderValue| {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    };
    for (name, value) in headers {
        field(name, value);
    }
    for (name, value) in forwarding.into_iter().flat_map(Forwarding::fields) {
        field(name, value);
    }
    if framing == RequestFraming::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// How a request goes out: no body, the client's `Content-Length`, or re-chunked (hop-by-hop stripping removed
/// the client's `Transfer-Encoding`).
pub fn request_framing(has_body: bool, headers: &HeaderMap) -> RequestFraming {
    if !has_body {
        return RequestFraming::Empty;
    }
    // The server side validated the client's framing: one Content-Length that parses, or chunked (which
    // hop-by-hop stripping removed, so the body is re-chunked here).
    match headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
    {
        Some(length) => RequestFraming::Length(length),
        None => RequestFraming::Chunked,
    }
}

/// How a response body is delimited (RFC 9112 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body: a `HEAD` answer, 204, 304, or `Content-Length: 0`.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked.
    Chunked,
    /// Until the server closes the connection.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    /// Status, version and headers (hop-by-hop ones still in).
    pub response: Response<()>,
    /// How its body is delimited.
    pub framing: ResponseFraming,
    /// Whether the connection may carry another request after this response's body.
    pub keep_alive: bool,
    /// Whether the hop-by-hop fields are out of the head already: false when its `Connection` names
    /// other fields, or it has a `TE`; then [`crate::message::headers::strip_hop_by_hop`] must run.
    pub hop_by_hop_removed: bool,
}

/// Parses a response head from the start of `buf`, skipping interim (1xx) responses. `Ok(None)` when
/// more bytes are needed; on success the head's bytes are consumed from `buf` (the body's first bytes
/// stay), and the head's fields are in `room`'s map (cleared first: it lends its allocation).
/// `upgrading`: the request asked to switch protocols, so a `101` is a final answer (with its `Upgrade`
/// field kept, and no body); otherwise a `101` is an error.
pub fn parse_head(
    buf: &mut BytesMut,
    method: &Method,
    room: &mut HeaderMap,
    upgrading: bool,
) -> Result<Option<Head>, CodecError> {
    loop {
        // Uninitialised: zeroing every field slot per response cost more than the parse.
        let mut raw = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let Some(length) = parse_response(&mut parsed, buf, &mut raw)? else {
            return Ok(None);
        };
        let code = parsed.code.unwrap_or(0);
        let switching = code == 101;
        if switching && !upgrading {
            return Err(CodecError::UnexpectedSwitch);
        }
        if is_interim(code) {
            buf.advance(length);
            continue;
        }
        let status =
            StatusCode::from_u16(code).map_err(|_| CodecError::Head(httparse::Error::Status))?;
        let version = if parsed.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        let reason = parsed.reason.unwrap_or("");
        let custom_reason = status.canonical_reason() != Some(reason) && !reason.is_empty();
        // Where each name and value sits in `buf`, so the values can share the head's bytes (offsets
        // fit in u32: the head is at most MAX_HEAD). On the stack for the usual head's fields.
        let base = buf.as_ptr() as usize;
        let count = parsed.headers.len();
        let mut few = [[0u32; 4]; FEW_HEADERS];
        let mut many = Vec::new();
        let spans = if count <= FEW_HEADERS {
            &mut few[..count]
        } else {
            many.resize(count, [0u32; 4]);
            &mut many[..]
        };
        for (span, field) in spans.iter_mut().zip(parsed.headers.iter()) {
            let name = field.name.as_ptr() as usize - base;
            let value = field.value.as_ptr() as usize - base;
            *span = [name, field.name.len(), value, field.value.len()].map(|n| n as u32);
        }
        let reason_span = custom_reason.then(|| (reason.as_ptr() as usize - base, reason.len()));
        let bytes = buf.split_to(length).freeze();
        room.clear();
        room.reserve(count);
        let mut headers = std::mem::take(room);
        let mut seen = Seen::default();
        for span in spans.iter() {
            let [name, name_len, value, value_len] = span.map(|n| n as usize);
            let name = header_name(&bytes[name..name + name_len])?;
            let value = HeaderValue::from_maybe_shared(bytes.slice(value..value + value_len))
                .map_err(|_| CodecError::Header)?;
            if seen.keep(&name, &value) || (switching && name == header::UPGRADE) {
                headers.append(name, value);
            }
        }
        let framing = if switching {
            ResponseFraming::Empty
        } else {
            seen.framing(method, status)?
        };
        let keep_alive = version == Version::HTTP_11
            && framing != ResponseFraming::UntilClose
            && !seen.close
            && !switching;
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        if let Some((at, len)) = reason_span {
            if let Ok(reason) = hyper::ext::ReasonPhrase::try_from(bytes.slice(at..at + len)) {
                response.extensions_mut().insert(reason);
            }
        }
        return Ok(Some(Head {
            response,
            framing,
            keep_alive,
            hop_by_hop_removed: !seen.other_hop_by_hop,
        }));
    }
}

/// Drops the complete interim (1xx, not 101) answers at the start of `buf` and tells whether a final
/// answer's head follows whole: what a server sends while the request body is still on its way
/// (`100 Continue` must not stop the body).
pub fn skip_interim(buf: &mut BytesMut) -> Result<bool, CodecError> {
    loop {
        let mut raw = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let Some(length) = parse_response(&mut parsed, buf, &mut raw)? else {
            return Ok(false);
        };
        if !is_interim(parsed.code.unwrap_or(0)) {
            return Ok(true);
        }
        buf.advance(length);
    }
}

/// One httparse pass over the response head at the start of `buf`: its length when it is whole, `None`
/// when more bytes are needed; a head over [`MAX_HEAD`] is an error either way.
fn parse_response<'h, 'b>(
    parsed: &mut httparse::Response<'h, 'b>,
    buf: &'b [u8],
    raw: &'h mut [MaybeUninit<httparse::Header<'b>>],
) -> Result<Option<usize>, CodecError> {
    match httparse::ParserConfig::default().parse_response_with_uninit_headers(parsed, buf, raw) {
        Ok(httparse::Status::Complete(length)) if length <= MAX_HEAD => Ok(Some(length)),
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => Ok(None),
        Ok(_) => Err(CodecError::HeadTooLarge),
        Err(error) => Err(CodecError::Head(error)),
    }
}

/// An interim answer, which a final one follows: 1xx except `101 Switching Protocols`.
fn is_interim(code: u16) -> bool {
    (100..200).contains(&code) && code != 101
}

/// The field name for `raw`: the names servers usually send, spelled as they usually spell them, are
/// matched as they are (a length switch and one comparison); others go through [`HeaderName::from_bytes`],
/// which lowercases into a scratch buffer and then looks the name up (about six times the work, and a
/// response carries several of these names).
fn header_name(raw: &[u8]) -> Result<HeaderName, CodecError> {
    Ok(match raw {
        b"Date" => header::DATE,
        b"Server" => header::SERVER,
        b"Content-Type" => header::CONTENT_TYPE,
        b"Content-Length" => header::CONTENT_LENGTH,
        b"Connection" => header::CONNECTION,
        b"Transfer-Encoding" => header::TRANSFER_ENCODING,
        b"Last-Modified" => header::LAST_MODIFIED,
        b"ETag" => header::ETAG,
        b"Accept-Ranges" => header::ACCEPT_RANGES,
        b"Cache-Control" => header::CACHE_CONTROL,
        b"Vary" => header::VARY,
        b"Expires" => header::EXPIRES,
        b"Location" => header::LOCATION,
        b"Set-Cookie" => header::SET_COOKIE,
        b"Content-Encoding" => header::CONTENT_ENCODING,
        _ => HeaderName::from_bytes(raw).map_err(|_| CodecError::Header)?,
    })
}

/// What a response head's framing and connection fields said, noted as its fields go into the map.
#[derive(Debug, Default)]
struct Seen {
    /// A `Transfer-Encoding` was there, and whether its final coding is chunked.
    chunked: Option<bool>,
    /// The `Content-Length`.
    length: Option<u64>,
    /// A `Content-Length` value that is not a number, or values that disagree (an error unless the
    /// response has no body anyway).
    bad_length: bool,
    /// `Connection: close`.
    close: bool,
    /// A hop-by-hop field left in the map for [`crate::message::headers::strip_hop_by_hop`].
    other_hop_by_hop: bool,
}

impl Seen {
    /// Notes a field; whether it goes into the response's map (hop-by-hop fields do not).
    fn keep(&mut self, name: &HeaderName, value: &HeaderValue) -> bool {
        if *name == header::CONTENT_LENGTH {
            for part in value.as_bytes().split(|&b| b == b',') {
                let part = part.trim_ascii();
                if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                    self.bad_length = true;
                    continue;
                }
                let parsed = part
                    .iter()
                    .fold(0u64, |n, digit| n * 10 + u64::from(digit - b'0'));
                self.bad_length |= self.length.is_some_and(|seen| seen != parsed);
                self.length = Some(parsed);
            }
            return true;
        }
        if *name == header::TRANSFER_ENCODING {
            let last = value.as_bytes().rsplit(|&b| b == b',').next();
            self.chunked =
                Some(last.is_some_and(|token| token.trim_ascii().eq_ignore_ascii_case(b"chunked")));
            return false;
        }
        if *name == header::CONNECTION {
            self.close |= has_token(value, "close");
            let usual = value.as_bytes().split(|&b| b == b',').all(|token| {
                crate::message::headers::is_usual_connection_token(token.trim_ascii())
            });
            // A Connection naming other fields stays, so the stripping that removes them finds it.
            self.other_hop_by_hop |= !usual;
            return !usual;
        }
        if *name == header::TE {
            self.other_hop_by_hop = true;
            return true;
        }
        !crate::message::headers::is_hop_by_hop(name)
    }

    /// How the body is delimited (RFC 9112 6.3), for a response to `method` with `status`.
    fn framing(&self, method: &Method, status: StatusCode) -> Result<ResponseFraming, CodecError> {
        if *method == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok(ResponseFraming::Empty);
        }
        if let Some(chunked) = self.chunked {
            if self.length.is_some() || self.bad_length {
                return Err(CodecError::LengthAndChunked);
            }
            // A final coding other than chunked leaves the body delimited by the close (6.3.4).
            return Ok(if chunked {
                ResponseFraming::Chunked
            } else {
                ResponseFraming::UntilClose
            });
        }
        if self.bad_length {
            return Err(CodecError::ContentLength);
        }
        Ok(match self.length {
            Some(0) => ResponseFraming::Empty,
            Some(length) => ResponseFraming::Length(length),
            None => ResponseFraming::UntilClose,
        })
    }
}

/// Whether a comma-separated header value has `token` (case-insensitive).
fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .any(|part| part.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::headers::{forwarding, Peer};

    fn head(bytes: &[u8], method: Method) -> Result<Option<Head>, CodecError> {
        parse_head(
            &mut BytesMut::from(bytes),
            &method,
            &mut HeaderMap::new(),
            false,
        )
    }

    #[test]
    fn a_field_name_is_the_same_whether_matched_as_spelled_or_parsed() {
        let spellings: &[&[u8]] = &[
            b"Date",
            b"Server",
            b"Content-Type",
            b"Content-Length",
            b"Connection",
            b"Transfer-Encoding",
            b"Last-Modified",
            b"ETag",
            b"Accept-Ranges",
            b"Cache-Control",
            b"Vary",
            b"Expires",
            b"Location",
            b"Set-Cookie",
            b"Content-Encoding",
            b"date",
            b"CONTENT-LENGTH",
            b"Keep-Alive",
            b"X-Custom",
            b"x-request-id",
        ];
        for raw in spellings {
            let parsed = HeaderName::from_bytes(raw).ok();
            assert_eq!(
                header_name(raw).ok(),
                parsed,
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        for bad in [&b""[..], b"Bad Name", b"Na:me", b"\x01"] {
            assert!(matches!(header_name(bad), Err(CodecError::Header)));
        }
    }

    #[test]
    fn a_request_head_has_its_headers_and_the_framing_it_needs() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("example.com"));
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        let mut out = Vec::new();
        encode_head(
            &mut out,
            &Method::POST,
            "/p?q=1",
            &headers,
            None,
            RequestFraming::Chunked,
        );
        assert_eq!(
            out,
            b"POST /p?q=1 HTTP/1.1\r\nhost: example.com\r\nx-a: 1\r\nx-a: 2\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        // The forwarding fields follow the map's.
        let peer = "10.1.2.3".parse().expect("ip");
        let host = HeaderValue::from_static("example.com");
        let forwarding = forwarding(
            &mut headers.clone(),
            &Peer::new(peer),
            peer,
            &HeaderValue::from_static("https"),
            Some(&host),
        );
        out.clear();
        encode_head(
            &mut out,
            &Method::GET,
            "/",
            &headers,
            Some(&forwarding),
            RequestFraming::Empty,
        );
        assert_eq!(
            out,
            b"GET / HTTP/1.1\r\nhost: example.com\r\nx-a: 1\r\nx-a: 2\r\nx-forwarded-for: 10.1.2.3\r\nx-real-ip: 10.1.2.3\r\nx-forwarded-proto: https\r\nx-forwarded-host: example.com\r\n\r\n"
        );
        assert_eq!(request_framing(false, &headers), RequestFraming::Empty);
        assert_eq!(request_framing(true, &headers), RequestFraming::Chunked);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        assert_eq!(request_framing(true, &headers), RequestFraming::Length(12));
    }

    #[test]
    fn a_response_head_is_parsed_with_its_framing_and_the_body_left_in_the_buffer() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello"[..],
        );
        let mut room = HeaderMap::new();
        room.insert(header::HOST, HeaderValue::from_static("a request's field"));
        let head = parse_head(&mut buf, &Method::GET, &mut room, false)
            .expect("valid")
            .expect("complete");
        assert!(!head.response.headers().contains_key(header::HOST));
        assert_eq!(head.response.status(), StatusCode::OK);
        assert_eq!(head.framing, ResponseFraming::Length(5));
        assert!(head.keep_alive);
        assert_eq!(head.response.headers()["x-a"], "b");
        assert_eq!(&buf[..], b"hello");
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let cases: [(&[u8], Method, Option<ResponseFraming>, bool); 9] = [
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                Method::HEAD,
                Some(ResponseFraming::Empty),
                true,
            ),
            (
                b"HTTP/1.1 204 No Content\r\n\r\n",
                Method::GET,
                Some(ResponseFraming::Empty),
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                Method::GET,
                Some(ResponseFraming::Chunked),
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                Method::GET,
                Some(ResponseFraming::UntilClose),
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\n\r\n",
                Method::GET,
                Some(ResponseFraming::UntilClose),
                false,
            ),
            (
                b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
                Method::GET,
                Some(ResponseFraming::Length(1)),
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n",
                Method::GET,
                Some(ResponseFraming::Length(2)),
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
                Method::GET,
                None,
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
                Method::GET,
                None,
                false,
            ),
        ];
        for (bytes, method, framing, keep_alive) in cases {
            let text = String::from_utf8_lossy(bytes);
            match (head(bytes, method), framing) {
                (Ok(Some(head)), Some(framing)) => {
                    assert_eq!(head.framing, framing, "{text}");
                    assert_eq!(head.keep_alive, keep_alive, "{text}");
                }
                (Err(_), None) => {}
                (other, _) => panic!("{text}: {other:?}"),
            }
        }
        assert!(head(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", Method::GET).is_err());
        assert!(head(b"HTTP/1.1 abc\r\n\r\n", Method::GET).is_err());
        assert!(head(b"HTTP/1.1 200 OK\r\nX-A: b\r\n", Method::GET)
            .expect("valid so far")
            .is_none());
        let big = [&b"HTTP/1.1 200 OK\r\nX-Big: "[..], &vec![b'a'; MAX_HEAD]].concat();
        assert!(matches!(
            head(&big, Method::GET),
            Err(CodecError::HeadTooLarge)
        ));
    }

    #[test]
    fn interim_answers_are_skipped_while_a_body_is_sent() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 20"[..]);
        assert!(!skip_interim(&mut buf).expect("valid"));
        assert_eq!(&buf[..], b"HTTP/1.1 20");
        buf.extend_from_slice(b"0 OK\r\nContent-Length: 0\r\n\r\n");
        assert!(skip_interim(&mut buf).expect("valid"));
        assert!(skip_interim(&mut BytesMut::from(&b"HTTP/1.1 abc\r\n\r\n"[..])).is_err());
    }

    #[test]
    fn hop_by_hop_fields_are_left_out_unless_connection_names_others() {
        let plain = head(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n",
            Method::GET,
        )
        .expect("valid")
        .expect("complete");
        assert!(plain.hop_by_hop_removed);
        assert_eq!(plain.framing, ResponseFraming::Chunked);
        let names: Vec<&str> = plain
            .response
            .headers()
            .keys()
            .map(|n| n.as_str())
            .collect();
        assert_eq!(names, ["x-a"]);
        let naming = head(
            b"HTTP/1.1 200 OK\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\nContent-Length: 0\r\n\r\n",
            Method::GET,
        )
        .expect("valid")
        .expect("complete");
        assert!(!naming.hop_by_hop_removed, "the stripping must still run");
        assert!(!naming.keep_alive);
        assert!(naming.response.headers().contains_key(header::CONNECTION));
    }

    #[test]
    fn a_custom_reason_phrase_is_kept() {
        let head = head(
            b"HTTP/1.1 200 Fine Thanks\r\nContent-Length: 0\r\n\r\n",
            Method::GET,
        )
        .expect("valid")
        .expect("complete");
        let reason = head.response.extensions().get::<hyper::ext::ReasonPhrase>();
        assert_eq!(reason.map(|r| r.as_bytes()), Some(&b"Fine Thanks"[..]));
    }
}
