//! The chunked transfer coding of upstream response bodies (RFC 9112 7.1), without I/O: decoded from
//! the connection's read buffer as far as it goes, trailers included.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

use crate::upstream_client::h1codec::{CodecError, MAX_HEADERS};

/// Longest chunk-size line, and largest trailer section, of a chunked response body.
const MAX_CHUNK_LINE: usize = 4 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;

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
