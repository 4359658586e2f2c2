//! HTTP/2 abuse at frame level, from a raw socket speaking h2c with prior knowledge: rapid reset,
//! CONTINUATION floods, SETTINGS floods and a window that never opens. Each costs the proxy bounded
//! memory and time, and the proxy goes on serving everyone else.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{
    binary_in_front, endless_backend, held_backend, named, proxy_with, wait_until, TestClient,
    TestProxy,
};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len())
        .expect("a small frame")
        .to_be_bytes();
    let mut bytes = vec![length[1], length[2], length[3], kind, flags];
    bytes.extend_from_slice(&stream.to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// HPACK for `GET http://x/`: indexed :method GET, :scheme http, :path /, then :authority "x" as a
/// literal without indexing (so repeating it never grows the dynamic table).
const GET_BLOCK: &[u8] = &[0x82, 0x86, 0x84, 0x01, 0x01, b'x'];

/// What the proxy did with a raw HTTP/2 connection, as its reader saw it.
#[derive(Debug, Default)]
struct Seen {
    goaway: Option<u32>,
    /// RST_STREAM frames: stream and error code.
    resets: Vec<(u32, u32)>,
    closed: bool,
}

/// Connects, sends the preface and an empty SETTINGS (plus `settings` entries), and reads the proxy's
/// frames in the background.
async fn raw_h2(
    addr: SocketAddr,
    settings: &[(u16, u32)],
) -> (
    tokio::net::tcp::OwnedWriteHalf,
    Arc<parking_lot::Mutex<Seen>>,
) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let mut payload = Vec::new();
    for (id, value) in settings {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&value.to_be_bytes());
    }
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &payload));
    writer.write_all(&hello).await.expect("preface");
    let seen = Arc::new(parking_lot::Mutex::new(Seen::default()));
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            while buf.len() >= 9 {
                let length =
                    usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
                if buf.len() < 9 + length {
                    break;
                }
                if buf[3] == GOAWAY && length >= 8 {
                    let code = u32::from_be_bytes([buf[13], buf[14], buf[15], buf[16]]);
                    record.lock().goaway = Some(code);
                }
                if buf[3] == RST_STREAM && length == 4 {
                    let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
                    let code = u32::from_be_bytes([buf[9], buf[10], buf[11], buf[12]]);
                    record.lock().resets.push((stream, code));
                }
                buf.drain(..9 + length);
            }
        }
        record.lock().closed = true;
    });
    (writer, seen)
}

/// The proxy still serves a well-behaved HTTP/2 client.
async fn still_serves(proxy: &TestProxy) {
    let reply = TestClient::h2c().get(&proxy.url("/")).await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn rapid_reset_gets_a_goaway_long_before_its_streams_are_served() {
    let backend = named("ok").await;
    let proxy = proxy_with("", backend.addr()).await;
    let (mut writer, seen) = raw_h2(proxy.addr(), &[]).await;
    let mut sent = 0;
    'flood: for batch in 0..100u32 {
        let mut bytes = Vec::new();
        for i in 0..100u32 {
            let stream = 2 * (batch * 100 + i) + 1;
            bytes.extend(frame(HEADERS, END_STREAM | END_HEADERS, stream, GET_BLOCK));
            bytes.extend(frame(RST_STREAM, 0, stream, &8u32.to_be_bytes()));
        }
        if writer.write_all(&bytes).await.is_err() {
            break 'flood;
        }
        sent += 100;
        if seen.lock().closed {
            break;
        }
    }
    wait_until(Duration::from_secs(5), "a GOAWAY or a close", || {
        let seen = seen.lock();
        seen.goaway.is_some() || seen.closed
    })
    .await;
    // ENHANCE_YOUR_CALM (0xb) when it says why.
    let goaway = seen.lock().goaway;
    assert!(matches!(goaway, None | Some(0xb)), "GOAWAY code {goaway:?}");
    assert!(
        backend.requests() < sent / 2,
        "{} of {sent} reset streams reached the backend",
        backend.requests()
    );
    still_serves(&proxy).await;
}

#[tokio::test]
async fn streams_beyond_http2_max_concurrent_streams_are_refused_not_forwarded() {
    let (backend, gate) = held_backend("held", None).await;
    let proxy = proxy_with("http2_max_concurrent_streams = 3", backend.addr()).await;
    let (mut writer, seen) = raw_h2(proxy.addr(), &[]).await;
    // A client that ignores the advertised limit: eight streams at once, all held by the backend.
    let mut bytes = Vec::new();
    for i in 0..8u32 {
        bytes.extend(frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            2 * i + 1,
            GET_BLOCK,
        ));
    }
    writer.write_all(&bytes).await.expect("headers");
    wait_until(Duration::from_secs(5), "five streams refused", || {
        seen.lock().resets.len() >= 5
    })
    .await;
    // REFUSED_STREAM (0x7): the client may safely retry them, they were never processed.
    let resets = seen.lock().resets.clone();
    assert!(resets.iter().all(|(_, code)| *code == 0x7), "{resets:?}");
    wait_until(
        Duration::from_secs(5),
        "three requests at the backend",
        || backend.requests() == 3,
    )
    .await;
    gate.add_permits(3);
    still_serves(&proxy).await;
    assert_eq!(
        backend.requests(),
        4,
        "only the three admitted streams (and the check) arrived"
    );
}

#[tokio::test]
async fn a_continuation_flood_is_cut_off_and_never_reaches_the_upstream() {
    let backend = named("ok").await;
    let proxy = proxy_with("", backend.addr()).await;
    let (mut writer, seen) = raw_h2(proxy.addr(), &[]).await;
    writer
        .write_all(&frame(HEADERS, END_STREAM, 1, GET_BLOCK))
        .await
        .expect("headers");
    // Endless CONTINUATION frames of new literal headers, never END_HEADERS: up to 64 MiB.
    let mut block = Vec::new();
    while block.len() < 16_000 {
        block.extend_from_slice(&[0x00, 0x03, b'x', b'-', b'a', 0x7f, 0x00]);
        block.extend(std::iter::repeat_n(b'v', 127));
    }
    let continuation = frame(CONTINUATION, 0, 1, &block);
    let mut written = 0usize;
    while written < 64 << 20 {
        let write =
            tokio::time::timeout(Duration::from_secs(5), writer.write_all(&continuation)).await;
        match write {
            Ok(Ok(())) => written += continuation.len(),
            // A reset, or a proxy that stopped reading: either way the flood is not being buffered.
            Ok(Err(_)) | Err(_) => break,
        }
        if seen.lock().closed {
            break;
        }
    }
    assert!(
        written < 64 << 20,
        "the proxy read 64 MiB of one header block"
    );
    wait_until(Duration::from_secs(5), "a GOAWAY or a close", || {
        let seen = seen.lock();
        seen.goaway.is_some() || seen.closed
    })
    .await;
    assert_eq!(backend.requests(), 0);
    still_serves(&proxy).await;
}

#[tokio::test]
async fn a_settings_flood_from_a_client_that_never_reads_is_closed_at_send_timeout() {
    let backend = named("ok").await;
    let proxy = proxy_with("send_timeout = \"1s\"", backend.addr()).await;
    let addr = proxy.addr();
    // A raw socket that writes SETTINGS frames and never reads the ACKs.
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(PREFACE).await.expect("preface");
    let settings = frame(SETTINGS, 0, 0, &[]).repeat(1000);
    let mut flooded = 0usize;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.write_all(&settings)).await {
            Ok(Ok(())) => flooded += 1000,
            Ok(Err(_)) => break,
            Err(_) => panic!("the proxy neither read on nor closed for 10s"),
        }
        assert!(
            flooded < 10_000_000,
            "the proxy took 10 million SETTINGS without closing"
        );
    }
    still_serves(&proxy).await;
}

/// Opens an HTTP/2 connection to `addr` that never lets the proxy send (SETTINGS_INITIAL_WINDOW_SIZE = 0,
/// no WINDOW_UPDATE ever), asks for `/index.html` (an endless body), and waits until the proxy gives the
/// stream up (`released`, the backend's body dropped) and closes the connection.
async fn stall_one_stream_until_dropped(addr: SocketAddr, released: &AtomicBool) {
    let (mut writer, seen) = raw_h2(addr, &[(0x4, 0)]).await;
    // GET http://x/index.html (HPACK static entry 5 for the path).
    let stuck = [0x82, 0x86, 0x85, 0x01, 0x01, b'x'];
    writer
        .write_all(&frame(HEADERS, END_STREAM | END_HEADERS, 1, &stuck))
        .await
        .expect("headers");
    wait_until(
        Duration::from_secs(10),
        "the proxy to give up the stuck stream",
        || released.load(Ordering::Acquire),
    )
    .await;
    wait_until(Duration::from_secs(5), "the connection to close", || {
        seen.lock().closed
    })
    .await;
}

#[tokio::test]
async fn a_stream_whose_window_never_opens_is_dropped_at_send_timeout() {
    // `/index.html` streams for ever; anything else (the check that the proxy still serves) is short.
    let (backend, released) = endless_backend(Some("/index.html")).await;
    let proxy = proxy_with("send_timeout = \"1s\"", backend.addr()).await;
    stall_one_stream_until_dropped(proxy.addr(), &released).await;
    still_serves(&proxy).await;
}

#[tokio::test]
async fn the_binary_drops_a_stream_whose_window_never_opens_at_send_timeout() {
    let (backend, released) = endless_backend(Some("/index.html")).await;
    let (mut fulcrum, addr, _config) = binary_in_front(backend.addr(), "send_timeout = \"1s\"", "");
    fulcrum.wait_for_line("fulcrum is serving");
    stall_one_stream_until_dropped(addr, &released).await;
    fulcrum.wait_for_line("send_timeout passed");
}
