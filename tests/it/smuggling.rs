//! Request smuggling and parsing: ambiguous or malformed HTTP/1.1 requests, sent on a raw socket, are
//! refused with the right 4xx/5xx, or normalised into exactly one well-formed request, and never reach the
//! upstream in a form it could read differently. The upstream here is a raw TCP server that records the
//! bytes it received and reads them with a strict parser of its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::*;

/// One request as the raw backend read it.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) head: String,
    pub(crate) body: Vec<u8>,
}

/// What the raw backend saw on its connections.
#[derive(Default)]
struct Seen {
    requests: Vec<Received>,
    /// Bytes it could not read as a strict HTTP/1.1 request, with the reason.
    malformed: Vec<String>,
}

/// A raw TCP upstream: parses each request strictly (one `Content-Length` or a lone `chunked`, never both;
/// CRLF line ends; token header names), records it, and answers `200 ok`.
pub(crate) struct RawBackend {
    pub(crate) addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
}

impl RawBackend {
    pub(crate) async fn start() -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_raw(stream, Arc::clone(&shared)));
            }
        });
        RawBackend { addr, seen }
    }

    pub(crate) fn requests(&self) -> Vec<Received> {
        self.seen.lock().requests.clone()
    }

    pub(crate) fn malformed(&self) -> Vec<String> {
        self.seen.lock().malformed.clone()
    }

    pub(crate) fn clear(&self) {
        let mut seen = self.seen.lock();
        seen.requests.clear();
        seen.malformed.clear();
    }
}

async fn serve_raw(mut stream: TcpStream, seen: Arc<Mutex<Seen>>) {
    let mut buffer = Vec::new();
    loop {
        match strict_parse(&buffer) {
            Parsed::Request(request, used) => {
                buffer.drain(..used);
                seen.lock().requests.push(request);
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                if stream.write_all(answer).await.is_err() {
                    return;
                }
                continue;
            }
            Parsed::Malformed(why) => {
                seen.lock()
                    .malformed
                    .push(format!("{why}: {:?}", String::from_utf8_lossy(&buffer)));
                return;
            }
            Parsed::Partial => {}
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

enum Parsed {
    Request(Received, usize),
    Malformed(String),
    Partial,
}

/// A strict reading of one request at the start of `bytes`.
fn strict_parse(bytes: &[u8]) -> Parsed {
    let Some(head_end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Parsed::Partial;
    };
    let head = &bytes[..head_end + 4];
    if head
        .iter()
        .enumerate()
        .any(|(i, &b)| (b == b'\n' && (i == 0 || head[i - 1] != b'\r')) || b == 0)
    {
        return Parsed::Malformed("bare LF or NUL in the head".into());
    }
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(e) => return Parsed::Malformed(format!("httparse: {e}")),
    }
    let values = |name: &str| -> Vec<&[u8]> {
        request
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
            .collect()
    };
    let (lengths, codings) = (values("content-length"), values("transfer-encoding"));
    if !lengths.is_empty() && !codings.is_empty() {
        return Parsed::Malformed("both Content-Length and Transfer-Encoding".into());
    }
    if lengths.len() > 1 || codings.len() > 1 {
        return Parsed::Malformed("a framing header twice".into());
    }
    let body_start = head_end + 4;
    let (body, used) = if let Some(value) = lengths.first() {
        let Some(len) = std::str::from_utf8(value)
            .ok()
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<usize>().ok())
        else {
            return Parsed::Malformed("Content-Length is not digits".into());
        };
        if bytes.len() < body_start + len {
            return Parsed::Partial;
        }
        (
            bytes[body_start..body_start + len].to_vec(),
            body_start + len,
        )
    } else if let Some(coding) = codings.first() {
        if !coding.eq_ignore_ascii_case(b"chunked") {
            return Parsed::Malformed("Transfer-Encoding other than a lone chunked".into());
        }
        match strict_chunks(&bytes[body_start..]) {
            Ok(Some((body, used))) => (body, body_start + used),
            Ok(None) => return Parsed::Partial,
            Err(why) => return Parsed::Malformed(why),
        }
    } else {
        (Vec::new(), body_start)
    };
    let head = String::from_utf8_lossy(&bytes[..head_end]).into_owned();
    Parsed::Request(Received { head, body }, used)
}

/// A strict chunked body (hex sizes, CRLF after each, no trailers): the data and the bytes used, or `None`
/// while incomplete.
fn strict_chunks(mut bytes: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let total = bytes.len();
    let mut body = Vec::new();
    loop {
        let Some(line_end) = bytes.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_text = std::str::from_utf8(&bytes[..line_end]).map_err(|e| e.to_string())?;
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("chunk size {size_text:?} is not plain hex"))?;
        bytes = &bytes[line_end + 2..];
        if size == 0 {
            if bytes.len() < 2 {
                return Ok(None);
            }
            if &bytes[..2] != b"\r\n" {
                return Err("trailers or junk after the last chunk".into());
            }
            return Ok(Some((body, total - bytes.len() + 2)));
        }
        if bytes.len() < size + 2 {
            return Ok(None);
        }
        if &bytes[size..size + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        body.extend_from_slice(&bytes[..size]);
        bytes = &bytes[size + 2..];
    }
}

/// What the proxy must do with a case.
enum Expect {
    /// Answer one of these statuses and send nothing upstream.
    Refused(&'static [u16]),
    /// Answer 200 from the upstream, which got exactly one well-formed request with this body.
    Forwarded(&'static [u8]),
}

/// Sends `bytes` on a new connection and returns the status code of the first answer (0 when the proxy
/// closed without answering).
async fn send_raw(addr: SocketAddr, bytes: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok() || !answer.is_empty(),
        "the proxy neither answered nor closed within 5s"
    );
    status_code(&answer)
}

/// The status code at the start of a raw answer; 0 when there is none.
pub(crate) fn status_code(answer: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(answer);
    text.strip_prefix("HTTP/1.1 ")
        .or_else(|| text.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// The cases: name, raw request, expectation. Every request ends its connection (`Connection: close`
/// or a smuggled tail the proxy must not read as a second request).
fn cases() -> Vec<(&'static str, Vec<u8>, Expect)> {
    use Expect::*;
    let post = |headers: &str, body: &str| -> Vec<u8> {
        format!("POST /p HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n{body}")
            .into_bytes()
    };
    vec![
        // Both framings: RFC 9112 6.1 lets a server drop Content-Length and use chunked, as long as the
        // connection is then closed; the smuggled request after the last chunk must not be read.
        (
            "CL then TE with a smuggled tail",
            b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            Forwarded(b"abc"),
        ),
        (
            "TE then CL with a smuggled tail",
            b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            Forwarded(b""),
        ),
        ("two different Content-Lengths", post("Content-Length: 3\r\nContent-Length: 5\r\n", "abcde"), Refused(&[400])),
        ("a Content-Length list", post("Content-Length: 3, 5\r\n", "abcde"), Refused(&[400])),
        ("the same Content-Length twice", post("Content-Length: 3\r\nContent-Length: 3\r\n", "abc"), Forwarded(b"abc")),
        ("Content-Length with a sign", post("Content-Length: +3\r\n", "abc"), Refused(&[400])),
        ("negative Content-Length", post("Content-Length: -1\r\n", "abc"), Refused(&[400])),
        ("hex Content-Length", post("Content-Length: 0x3\r\n", "abc"), Refused(&[400])),
        ("Content-Length with inner space", post("Content-Length: 1 2\r\n", "abc"), Refused(&[400])),
        ("Content-Length overflowing u64", post("Content-Length: 99999999999999999999999\r\n", "abc"), Refused(&[400])),
        ("leading zeros in Content-Length", post("Content-Length: 003\r\n", "abc"), Forwarded(b"abc")),
        ("Transfer-Encoding gzip, chunked", post("Transfer-Encoding: gzip, chunked\r\n", "3\r\nabc\r\n0\r\n\r\n"), Refused(&[400, 501])),
        ("Transfer-Encoding chunked, gzip", post("Transfer-Encoding: chunked, gzip\r\n", "3\r\nabc\r\n0\r\n\r\n"), Refused(&[400, 501])),
        ("Transfer-Encoding identity", post("Transfer-Encoding: identity\r\n", "abc"), Refused(&[400, 501])),
        ("Transfer-Encoding xchunked", post("Transfer-Encoding: xchunked\r\n", "3\r\nabc\r\n0\r\n\r\n"), Refused(&[400, 501])),
        ("chunked on two lines", post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "3\r\nabc\r\n0\r\n\r\n"), Refused(&[400, 501])),
        ("chunked with a tab before it", post("Transfer-Encoding:\tchunked\r\n", "3\r\nabc\r\n0\r\n\r\n"), Forwarded(b"abc")),
        ("chunk extensions", post("Transfer-Encoding: chunked\r\n", "3;name=value\r\nabc\r\n0\r\n\r\n"), Forwarded(b"abc")),
        ("a chunk size that is not hex", post("Transfer-Encoding: chunked\r\n", "zz\r\nabc\r\n0\r\n\r\n"), Refused(&[400, 0])),
        ("a negative chunk size", post("Transfer-Encoding: chunked\r\n", "-3\r\nabc\r\n0\r\n\r\n"), Refused(&[400, 0])),
        ("a chunk size overflowing u64", post("Transfer-Encoding: chunked\r\n", "fffffffffffffffff3\r\nabc\r\n0\r\n\r\n"), Refused(&[400, 0])),
        ("HTTP/1.0 with Transfer-Encoding", b"POST /p HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec(), Refused(&[400])),
        ("obs-fold header line", post("X-A: one\r\n two\r\nContent-Length: 3\r\n", "abc"), Refused(&[400])),
        ("obs-fold hiding Transfer-Encoding", post("X-A: one\r\n Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", "abc"), Refused(&[400])),
        ("Transfer_Encoding with an underscore", post("Transfer_Encoding: chunked\r\nContent-Length: 3\r\n", "abc"), Refused(&[400])),
        ("whitespace before the colon", post("Content-Length : 3\r\n", "abc"), Refused(&[400])),
        ("whitespace before the colon of TE", post("Transfer-Encoding : chunked\r\nContent-Length: 3\r\n", "abc"), Refused(&[400])),
        ("a space inside a header name", post("X A: b\r\nContent-Length: 3\r\n", "abc"), Refused(&[400])),
        ("a control byte in a header name", post("X\x01A: b\r\nContent-Length: 3\r\n", "abc"), Refused(&[400])),
        ("a separator in a header name", post("(X): b\r\nContent-Length: 3\r\n", "abc"), Refused(&[400])),
        ("a bare CR in a header value", post("X-A: a\rb\r\nContent-Length: 3\r\n", "abc"), Refused(&[400])),
        ("a NUL in a header value", post("X-A: a\0b\r\nContent-Length: 3\r\n", "abc"), Refused(&[400])),
        ("a bare CR ending the request line", b"GET /p HTTP/1.1\rHost: x\r\nConnection: close\r\n\r\n".to_vec(), Refused(&[400])),
        // RFC 9112 2.2: a recipient may read a bare LF as a line end; the upstream then gets CRLF.
        ("bare LF line ends", b"GET /p HTTP/1.1\nHost: x\nConnection: close\n\n".to_vec(), Forwarded(b"")),
        ("a space inside the request target", b"GET /a b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(), Refused(&[400])),
        ("an unknown HTTP version", b"GET /p HTTP/1.2\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(), Refused(&[400, 505])),
        ("HTTP/1.1 without Host", b"GET /p HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(), Refused(&[400])),
        ("two Host headers", b"GET /p HTTP/1.1\r\nHost: x\r\nHost: y\r\nConnection: close\r\n\r\n".to_vec(), Refused(&[400])),
        ("HTTP/1.0 keep-alive", b"GET /p HTTP/1.0\r\nHost: x\r\n\r\n".to_vec(), Forwarded(b"")),
        ("a request line over 64 KiB", format!("GET /{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "a".repeat(70_000)).into_bytes(), Refused(&[400, 414, 431])),
        ("more than 100 header lines", post(&"X-A: b\r\n".repeat(101), ""), Refused(&[431])),
        ("a header block over 64 KiB", post(&format!("X-A: {}\r\n", "b".repeat(70_000)), ""), Refused(&[431])),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_and_malformed_requests_are_refused_or_normalised_never_smuggled() {
    let backend = RawBackend::start().await;
    let proxy = TestProxy::start(&one_pool(&format!(
        "servers = [{{ addr = \"{}\" }}]",
        backend.addr
    )))
    .await;
    let addr = proxy.addr();
    let mut failures = Vec::new();
    for (name, bytes, expect) in cases() {
        backend.clear();
        let status = send_raw(addr, &bytes).await;
        match expect {
            Expect::Refused(statuses) => {
                // A refused request is answered by the proxy itself, so anything forwarded would have
                // arrived before the answer did.
                if !statuses.contains(&status) {
                    failures.push(format!(
                        "{name}: answered {status}, expected one of {statuses:?}"
                    ));
                }
                let reached = backend.requests();
                if !reached.is_empty() {
                    failures.push(format!("{name}: reached the upstream as {reached:?}"));
                }
            }
            Expect::Forwarded(body) => {
                if status != 200 {
                    failures.push(format!("{name}: answered {status}, expected 200"));
                }
                let reached = backend.requests();
                if reached.len() != 1 || reached[0].body != body {
                    failures.push(format!(
                        "{name}: expected one request with body {:?}, the upstream got {reached:?}",
                        String::from_utf8_lossy(body)
                    ));
                }
                if reached.iter().any(|r| r.head.contains("smuggled")) {
                    failures.push(format!("{name}: the smuggled request reached the upstream"));
                }
            }
        }
        let malformed = backend.malformed();
        if !malformed.is_empty() {
            failures.push(format!(
                "{name}: the upstream read bytes it could not parse strictly: {malformed:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_body_is_the_clients_fault_not_the_servers() {
    let (a, b) = (RawBackend::start().await, RawBackend::start().await);
    let proxy = TestProxy::start(&one_pool(&format!(
        "max_fails = 1\nfail_timeout = \"60s\"\nservers = [{{ addr = \"{}\" }}, {{ addr = \"{}\" }}]",
        a.addr, b.addr
    )))
    .await;
    let addr = proxy.addr();
    let bad = b"POST /p HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n";
    for _ in 0..2 {
        assert_eq!(send_raw(addr, bad).await, 400);
    }
    // Had either server been charged with a passive failure (max_fails = 1), it would be out for 60s and
    // every request below would go to the other.
    let client = TestClient::new();
    for _ in 0..6 {
        assert_eq!(client.get(&proxy.url("/ok")).await.status, 200);
    }
    let (to_a, to_b) = (a.requests().len(), b.requests().len());
    assert!(to_a >= 2 && to_b >= 2, "a got {to_a}, b got {to_b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_max_header_size_bounds_the_request_head() {
    let backend = RawBackend::start().await;
    let with_limit = |limit: &str| {
        one_pool(&format!("servers = [{{ addr = \"{}\" }}]", backend.addr)).replacen(
            "listen = \"127.0.0.1:0\"\n",
            &format!("listen = \"127.0.0.1:0\"\nhttp1_max_header_size = \"{limit}\"\n"),
            1,
        )
    };
    let refused = fulcrum::Config::parse(&with_limit("4k"), std::path::Path::new("limit.toml"))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        refused.contains("listener[0].http1_max_header_size") && refused.contains("8k"),
        "below hyper's 8k minimum is a config error naming the key: {refused:?}"
    );
    let proxy = TestProxy::start(&with_limit("8k")).await;
    let addr = proxy.addr();
    let head = |value_len: usize| {
        format!(
            "GET /p HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-A: {}\r\n\r\n",
            "b".repeat(value_len)
        )
    };
    assert_eq!(send_raw(addr, head(4_000).as_bytes()).await, 200);
    assert_eq!(backend.requests().len(), 1);
    backend.clear();
    assert_eq!(send_raw(addr, head(10_000).as_bytes()).await, 431);
    assert!(
        backend.requests().is_empty(),
        "a head over the limit never reaches the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_refuses_a_header_named_like_a_framing_header() {
    let backend = RawBackend::start().await;
    let (mut fulcrum, addr, _config) = binary_in_front(backend.addr, "", "");
    fulcrum.wait_for_line("fulcrum is serving");
    let request = b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer_Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc";
    assert_eq!(send_raw(addr, request).await, 400);
    fulcrum.wait_for_line("header name that reads as a framing header");
    assert!(backend.requests().is_empty(), "{:?}", backend.requests());
    // A plain request still goes through, so the refusal was about the header.
    let plain = b"GET /p HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    assert_eq!(send_raw(addr, plain).await, 200);
    assert_eq!(backend.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reads_a_first_head_longer_than_its_first_read_and_the_request_behind_it() {
    // A new connection's first read takes up to 8 KiB to tell HTTP/2 from HTTP/1 and replays it: a
    // 20 KB first head, with a second request in the same write, must reach the upstream byte for byte.
    let backend = RawBackend::start().await;
    let (mut fulcrum, addr, _config) = binary_in_front(backend.addr, "", "");
    fulcrum.wait_for_line("fulcrum is serving");
    let long = "b".repeat(20_000);
    let sent = format!(
        "GET /first HTTP/1.1\r\nHost: x\r\nX-Long: {long}\r\n\r\n\
         GET /second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(sent.as_bytes()).await.expect("write");
    let mut pending = Vec::new();
    for path in ["/first", "/second"] {
        let answer = read_raw_response(&mut stream, &mut pending)
            .await
            .unwrap_or_else(|| panic!("no answer for {path}"));
        assert_eq!(answer.status, 200, "{path}: {}", answer.head);
    }
    let requests = backend.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert!(requests[0].head.starts_with("GET /first HTTP/1.1\r\n"));
    assert!(
        requests[0]
            .head
            .contains(&format!("\r\nx-long: {long}\r\n")),
        "the long field arrived whole"
    );
    assert!(requests[1].head.starts_with("GET /second HTTP/1.1\r\n"));
    assert!(backend.malformed().is_empty(), "{:?}", backend.malformed());
}
