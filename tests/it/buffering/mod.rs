//! Request and response buffering through the binary (nginx `proxy_request_buffering` and
//! `proxy_buffering`): slow readers free their upstream connections once the answers are read, slow
//! uploads open no upstream connection until complete, bodies past `buffer_size` go to unlinked temp files
//! that are gone on every exit path, and streams (SSE, `X-Accel-Buffering: no`, `buffering = false`)
//! still stream.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::harness::*;

mod answers;
mod temp_files;
mod uploads;

/// What a raw upstream has seen: connections accepted, request bodies received whole, answers written
/// whole.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    requests: AtomicUsize,
    answered: AtomicUsize,
    last_body: parking_lot::Mutex<Vec<u8>>,
}

/// A keep-alive HTTP/1.1 upstream on raw sockets: reads each request (head and `Content-Length` body)
/// and answers 200 with `size` bytes of a repeating pattern (Content-Length), counting in `Seen`.
async fn raw_upstream(size: usize) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Seen::default());
    let counts = Arc::clone(&seen);
    let answer = Bytes::from(pattern(size));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counts.connections.fetch_add(1, Ordering::SeqCst);
            let counts = Arc::clone(&counts);
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut pending = Vec::new();
                loop {
                    let Some(body) = read_request(&mut stream, &mut pending).await else {
                        return;
                    };
                    *counts.last_body.lock() = body;
                    counts.requests.fetch_add(1, Ordering::SeqCst);
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n");
                    if stream.write_all(head.as_bytes()).await.is_err()
                        || stream.write_all(&answer).await.is_err()
                    {
                        return;
                    }
                    counts.answered.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    (addr, seen)
}

/// Reads one request with a `Content-Length` body (or none); `None` when the peer closes.
async fn read_request(stream: &mut TcpStream, pending: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = request.parse(pending) {
            let length: usize = request
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                .unwrap_or(0);
            if pending.len() >= head + length {
                let body = pending[head..head + length].to_vec();
                pending.drain(..head + length);
                return Some(body);
            }
        }
        let mut chunk = vec![0u8; 64 * 1024];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        pending.extend_from_slice(&chunk[..n]);
    }
}

/// `size` bytes of a pattern that shows any reordering or loss.
fn pattern(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i % 251) as u8).collect()
}

/// A client connection with a small receive buffer that sends a GET and reads only `head_bytes` of the
/// answer (a slow reader: the rest waits in the proxy). Returns the connection and what it read.
async fn slow_reader(proxy: SocketAddr, head_bytes: usize) -> (TcpStream, Vec<u8>) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stream = socket.connect(proxy).await.expect("connect");
    stream
        .write_all(b"GET /big HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .expect("write");
    let mut got = vec![0u8; head_bytes];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut got))
        .await
        .expect("the answer's start within 10 s")
        .expect("read");
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    (stream, got)
}

/// Reads the rest of one answer (head plus Content-Length body) after `received`; returns the body.
async fn read_whole(stream: &mut TcpStream, mut received: Vec<u8>) -> Vec<u8> {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        if let Some(head_end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&received[..head_end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .expect("content-length");
            if received.len() >= head_end + 4 + length {
                return received[head_end + 4..head_end + 4 + length].to_vec();
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("data within 10 s")
            .expect("read");
        assert!(n > 0, "closed after {} bytes", received.len());
        received.extend_from_slice(&chunk[..n]);
    }
}

/// Requests in flight on the servers of `app`, from `/status`.
async fn in_flight(binary: &AdminBinary) -> u64 {
    binary.status().await["pools"][0]["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .map(|s| s["in_flight"].as_u64().expect("in_flight"))
        .sum()
}

/// Descriptors of the process that point into `dir` (its temp files, unlinked or not).
fn fds_into(binary: &AdminBinary, dir: &Path) -> usize {
    let pid = binary.process.child.id();
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    entries
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir))
        .count()
}

/// Names in `dir` (must stay none: temp files are unlinked when made).
fn names_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).expect("read temp dir").count()
}

/// A binary with `[global] temp_path = dir`, `upstream_keys` on `app` and the one server `upstream`.
fn buffered_binary(dir: &Path, upstream_keys: &str, upstream: SocketAddr) -> AdminBinary {
    AdminBinary::from_toml(&format!(
        "[global]\ntemp_path = \"{}\"\n\n\
         [[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[route]]\npath = \"/\"\nupstream = \"app\"\n\n\
         [upstream.app]\n{upstream_keys}\nservers = [{{ addr = \"{upstream}\" }}]\n",
        dir.display()
    ))
}

/// An answer larger than the socket buffers between the proxy and a client that reads nothing can
/// hold (the send buffer grows to `tcp_wmem`'s 4 MB here), so streaming has to wait for the client.
const HUGE: usize = 16 << 20;
