//! The HTTP/1.1 wire format of our upstream connections, without I/O: a request head written from the
//! rewritten parts, a response head parsed from the read buffer (with how its body is delimited), and
//! the chunked-body decoder. [`super::h1pool`] drives it on the request's own task.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Response, StatusCode, Version};

/// Most header fields a response head may have (hyper's limit too).
const MAX_HEADERS: usize = 100;

/// Header fields whose places are kept on the stack while a head is parsed (more take a Vec).
const FEW_HEADERS: usize = 24;

/// Largest response head accepted: a larger one is a 502, as in nginx ("upstream sent too big header").
pub const MAX_HEAD: usize = 64 * 1024;

/// Longest chunk-size line, and largest trailer section, of a chunked response body.
const MAX_CHUNK_LINE: usize = 4 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;

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
    framing: RequestFraming,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
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
    /// other fields, or it has a `TE`; then [`super::headers::strip_hop_by_hop`] must run.
    pub hop_by_hop_removed: bool,
}

/// Parses a response head from the start of `buf`, skipping interim (1xx) responses. `Ok(None)` when
/// more bytes are needed; on success the head's bytes are consumed from `buf` (the body's first bytes
/// stay), and the head's fields are in `room`'s map (cleared first: it lends its allocation).
pub fn parse_head(
    buf: &mut BytesMut,
    method: &Method,
    room: &mut HeaderMap,
) -> Result<Option<Head>, CodecError> {
    loop {
        // Uninitialised: zeroing 100 fields (3.2 KiB) per response cost more than the parse.
        let mut raw = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let parsing = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            buf,
            &mut raw,
        );
        let length = match parsing {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) => {
                return if buf.len() > MAX_HEAD {
                    Err(CodecError::HeadTooLarge)
                } else {
                    Ok(None)
                };
            }
            Err(error) => return Err(CodecError::Head(error)),
        };
        if length > MAX_HEAD {
            return Err(CodecError::HeadTooLarge);
        }
        let code = parsed.code.unwrap_or(0);
        if code == 101 {
            return Err(CodecError::UnexpectedSwitch);
        }
        if (100..200).contains(&code) {
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
            let name = HeaderName::from_bytes(&bytes[name..name + name_len])
                .map_err(|_| CodecError::Header)?;
            let value = HeaderValue::from_maybe_shared(bytes.slice(value..value + value_len))
                .map_err(|_| CodecError::Header)?;
            if !seen.keep(&name, &value)? {
                continue;
            }
            headers.append(name, value);
        }
        let framing = seen.framing(method, status)?;
        let keep_alive =
            version == Version::HTTP_11 && framing != ResponseFraming::UntilClose && !seen.close;
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
        let parsing = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            buf,
            &mut raw,
        );
        match parsing {
            Ok(httparse::Status::Complete(length)) => {
                let code = parsed.code.unwrap_or(0);
                if code == 101 || !(100..200).contains(&code) {
                    return Ok(true);
                }
                buf.advance(length);
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                return Err(CodecError::HeadTooLarge)
            }
            Ok(httparse::Status::Partial) => return Ok(false),
            Err(error) => return Err(CodecError::Head(error)),
        }
    }
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
    /// A hop-by-hop field left in the map for [`super::headers::strip_hop_by_hop`].
    other_hop_by_hop: bool,
}

impl Seen {
    /// Notes a field; whether it goes into the response's map (hop-by-hop fields do not).
    fn keep(&mut self, name: &HeaderName, value: &HeaderValue) -> Result<bool, CodecError> {
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
            return Ok(true);
        }
        if *name == header::TRANSFER_ENCODING {
            let last = value.as_bytes().rsplit(|&b| b == b',').next();
            self.chunked =
                Some(last.is_some_and(|token| token.trim_ascii().eq_ignore_ascii_case(b"chunked")));
            return Ok(false);
        }
        if *name == header::CONNECTION {
            self.close |= has_token(value, "close");
            let usual = value
                .as_bytes()
                .split(|&b| b == b',')
                .all(|token| super::headers::is_usual_connection_token(token.trim_ascii()));
            // A Connection naming other fields stays, so the stripping that removes them finds it.
            self.other_hop_by_hop |= !usual;
            return Ok(!usual);
        }
        if *name == header::TE {
            self.other_hop_by_hop = true;
            return Ok(true);
        }
        Ok(!super::headers::is_hop_by_hop(name))
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

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkState {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// After the last chunk, before the trailer section's end.
    Trailers,
    /// The body has ended.
    Done,
}

/// What one step of the chunked decoder found.
#[derive(Debug)]
pub enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// The end of the body, with its trailers if it had any.
    End(Option<HeaderMap>),
}

/// Decodes from `buf` as far as it can: `Ok(None)` when more bytes are needed.
pub fn decode_chunked(
    state: &mut ChunkState,
    buf: &mut BytesMut,
) -> Result<Option<Decoded>, CodecError> {
    loop {
        match *state {
            ChunkState::Size => {
                let Some(end) = buf.iter().position(|&b| b == b'\n') else {
                    return if buf.len() > MAX_CHUNK_LINE {
                        Err(CodecError::Chunk)
                    } else {
                        Ok(None)
                    };
                };
                let size = chunk_size(&buf[..end])?;
                buf.advance(end + 1);
                *state = if size == 0 {
                    ChunkState::Trailers
                } else {
                    ChunkState::Data(size)
                };
            }
            ChunkState::Data(left) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                let data = buf.split_to(take).freeze();
                let left = left - take as u64;
                *state = if left == 0 {
                    ChunkState::DataEnd
                } else {
                    ChunkState::Data(left)
                };
                return Ok(Some(Decoded::Data(data)));
            }
            ChunkState::DataEnd => {
                if buf.starts_with(b"\r\n") {
                    buf.advance(2);
                } else if buf.starts_with(b"\n") {
                    buf.advance(1);
                } else if buf.is_empty() || buf[..] == b"\r"[..] {
                    return Ok(None);
                } else {
                    return Err(CodecError::Chunk);
                }
                *state = ChunkState::Size;
            }
            ChunkState::Trailers => {
                if buf.starts_with(b"\r\n") || buf.starts_with(b"\n") {
                    buf.advance(if buf[0] == b'\r' { 2 } else { 1 });
                    *state = ChunkState::Done;
                    return Ok(Some(Decoded::End(None)));
                }
                let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let (length, fields) = match httparse::parse_headers(buf, &mut raw) {
                    Ok(httparse::Status::Complete(done)) => done,
                    Ok(httparse::Status::Partial) => {
                        return if buf.len() > MAX_TRAILERS {
                            Err(CodecError::Chunk)
                        } else {
                            Ok(None)
                        };
                    }
                    Err(_) => return Err(CodecError::Chunk),
                };
                let mut trailers = HeaderMap::with_capacity(fields.len());
                for field in fields.iter() {
                    let name = HeaderName::from_bytes(field.name.as_bytes())
                        .map_err(|_| CodecError::Chunk)?;
                    let value =
                        HeaderValue::from_bytes(field.value).map_err(|_| CodecError::Chunk)?;
                    trailers.append(name, value);
                }
                buf.advance(length);
                *state = ChunkState::Done;
                return Ok(Some(Decoded::End(Some(trailers))));
            }
            ChunkState::Done => return Ok(Some(Decoded::End(None))),
        }
    }
}

/// The size of a chunk-size line (without its `\n`): hex digits, then optional extensions.
fn chunk_size(line: &[u8]) -> Result<u64, CodecError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits_end = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    if digits_end == 0 || digits_end > 16 {
        return Err(CodecError::Chunk);
    }
    let rest = line[digits_end..].trim_ascii_start();
    if !rest.is_empty() && rest[0] != b';' {
        return Err(CodecError::Chunk);
    }
    let digits = std::str::from_utf8(&line[..digits_end]).map_err(|_| CodecError::Chunk)?;
    u64::from_str_radix(digits, 16).map_err(|_| CodecError::Chunk)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &[u8], method: Method) -> Result<Option<Head>, CodecError> {
        parse_head(&mut BytesMut::from(bytes), &method, &mut HeaderMap::new())
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
            RequestFraming::Chunked,
        );
        assert_eq!(
            out,
            b"POST /p?q=1 HTTP/1.1\r\nhost: example.com\r\nx-a: 1\r\nx-a: 2\r\ntransfer-encoding: chunked\r\n\r\n"
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
        let head = parse_head(&mut buf, &Method::GET, &mut room)
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

    #[test]
    fn a_chunked_body_decodes_across_any_split_with_its_trailers() {
        let wire = b"5;ext=1\r\nhello\r\n1\r\n \r\n6\r\nworld!\r\n0\r\nX-T: 1\r\n\r\n";
        for split in 0..wire.len() {
            let mut state = ChunkState::Size;
            let mut buf = BytesMut::from(&wire[..split]);
            let mut body = Vec::new();
            let trailers;
            let mut fed = false;
            loop {
                match decode_chunked(&mut state, &mut buf).expect("valid") {
                    Some(Decoded::Data(data)) => body.extend_from_slice(&data),
                    Some(Decoded::End(found)) => {
                        trailers = found;
                        break;
                    }
                    None => {
                        assert!(!fed, "split {split}: stalled with every byte fed");
                        buf.extend_from_slice(&wire[split..]);
                        fed = true;
                    }
                }
            }
            assert_eq!(body, b"hello world!", "split {split}");
            assert_eq!(
                trailers.map(|t| t["x-t"].clone()),
                Some(HeaderValue::from_static("1"))
            );
            assert!(buf.is_empty(), "split {split}");
        }
    }

    #[test]
    fn malformed_chunks_are_errors() {
        for wire in [
            &b"zz\r\n"[..],
            b"5\r\nhelloXX",
            b"12345678901234567\r\n",
            b"5 x\r\n",
        ] {
            let mut state = ChunkState::Size;
            let mut buf = BytesMut::from(wire);
            let mut result = Ok(None);
            for _ in 0..4 {
                result = decode_chunked(&mut state, &mut buf);
                if !matches!(result, Ok(Some(Decoded::Data(_)))) {
                    break;
                }
            }
            assert!(result.is_err(), "{}", String::from_utf8_lossy(wire));
        }
    }
}
