//! Raw HTTP/1.1 over a plain TCP connection: responses read as they arrive on the wire.

use std::net::SocketAddr;
use std::time::Duration;

/// One HTTP/1.1 response read from a raw connection.
pub struct RawResponse {
    /// The status code.
    pub status: u16,
    /// The head, as text.
    pub head: String,
    /// The `Content-Length` body, as text.
    pub body: String,
}

/// Reads one response (head and `Content-Length` body) from `stream`, starting with the bytes already in
/// `pending`; what follows it stays in `pending` for the next one. `None` when the peer closed first;
/// panics when nothing arrives for 10 s.
pub async fn read_raw_response(
    stream: &mut tokio::net::TcpStream,
    pending: &mut Vec<u8>,
) -> Option<RawResponse> {
    use tokio::io::AsyncReadExt;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = response.parse(pending) {
            let length: usize = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                .unwrap_or(0);
            if pending.len() >= head + length {
                let answer = RawResponse {
                    status: response.code.unwrap_or(0),
                    head: String::from_utf8_lossy(&pending[..head]).into_owned(),
                    body: String::from_utf8_lossy(&pending[head..head + length]).into_owned(),
                };
                pending.drain(..head + length);
                return Some(answer);
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("no answer within 10s")
            .ok()?;
        if n == 0 {
            return None;
        }
        pending.extend_from_slice(&chunk[..n]);
    }
}

/// Sends one GET (`Connection: close`) on a new connection and reads until the close; the status (0 if
/// none) and whether the whole body arrived.
pub async fn closing_get(addr: SocketAddr) -> (u16, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the proxy neither finished nor closed within 10s"
    );
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(head)) = response.parse(&answer) else {
        return (0, false);
    };
    let length: Option<usize> = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok());
    let complete = length.is_some_and(|length| answer.len() - head == length);
    (response.code.unwrap_or(0), complete)
}
