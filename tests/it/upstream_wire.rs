//! Our own HTTP/1.1 upstream connections (src/upstream_client/h1conn.rs) against a raw upstream that writes its
//! answers byte for byte: every way a response body can be delimited, interim answers, a custom reason
//! phrase, an answer that comes before the request body was read, bytes past a body's end, and heads
//! that must be refused.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use hyper::{Method, Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::{
    binary_with_global, empty, one_pool, read_raw_response, TestClient, TestProxy,
};

/// What the raw upstream answers to a path, and whether it closes the connection after.
fn answer(path: &str) -> (&'static [u8], bool) {
    match path {
        "/length" => (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false),
        "/chunked" => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
            false,
        ),
        "/until-close" => (b"HTTP/1.1 200 OK\r\n\r\nuntil the close", true),
        "/reason" => (b"HTTP/1.1 299 Custom Thing\r\nContent-Length: 2\r\n\r\nok", false),
        "/interim" => (
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nafter",
            false,
        ),
        "/head" => (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false),
        "/hop" => (
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nX-Kept: yes\r\nContent-Length: 2\r\n\r\nok",
            false,
        ),
        "/both" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            true,
        ),
        "/switch" => (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", true),
        "/two-lengths" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            true,
        ),
        // Answered as soon as the head is in, before any of the body is read; the body is drained after.
        "/upload" => (b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nbig!", false),
        _ => (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", false),
    }
}

/// Set once the upstream has sent `100 Continue` to a request for `/continue` (which it answers with
/// the body it then reads).
static CONTINUE_SENT: AtomicBool = AtomicBool::new(false);

/// A raw upstream answering [`answer`], counting the connections it accepted.
async fn raw_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::AcqRel);
            tokio::spawn(serve(stream));
        }
    });
    (addr, accepted)
}

async fn serve(mut stream: TcpStream) {
    let mut seen = Vec::new();
    loop {
        let head_end = loop {
            if let Some(at) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 65536];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&seen[..head_end]).into_owned();
        let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
        let length: usize = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        if path == "/continue" {
            let _ = stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
            CONTINUE_SENT.store(true, Ordering::Release);
            while seen.len() < head_end + length {
                let mut chunk = [0u8; 65536];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen.extend_from_slice(&chunk[..n]),
                }
            }
            let body = seen[head_end..head_end + length].to_vec();
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\n");
            if stream
                .write_all(&[head.as_bytes(), &body].concat())
                .await
                .is_err()
            {
                return;
            }
            seen.drain(..head_end + length);
            continue;
        }
        if path == "/extra" {
            // The head, then a moment later (so the proxy reads it on its own) a body larger than its
            // first read buffer, with one byte too many; the connection stays open.
            let _ = stream.set_nodelay(true);
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {EXTRA_BODY}\r\n\r\n");
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let mut body = vec![b'a'; EXTRA_BODY];
            body.push(b'X');
            if stream.write_all(&body).await.is_err() {
                return;
            }
            seen.drain(..head_end);
            continue;
        }
        if let Some(framing) = path.strip_prefix("/mixed-") {
            if write_mixed(&mut stream, framing == "chunked")
                .await
                .is_err()
            {
                return;
            }
            seen.drain(..head_end);
            continue;
        }
        // `/bytewise/...` answers as `/...` does, one byte per write, so every head and chunk arrives
        // split at every place it can be.
        let (path, bytewise) = match path.strip_prefix("/bytewise") {
            Some(rest) => (rest.to_owned(), true),
            None => (path, false),
        };
        let (bytes, close) = answer(&path);
        let written = if bytewise {
            let _ = stream.set_nodelay(true);
            let mut result = Ok(());
            for byte in bytes.chunks(1) {
                result = stream.write_all(byte).await;
                if result.is_err() {
                    break;
                }
                tokio::task::yield_now().await;
            }
            result
        } else {
            stream.write_all(bytes).await
        };
        if written.is_err() || close {
            return;
        }
        // Drain the request's body (Content-Length only: the requests here send no chunked body).
        while seen.len() < head_end + length {
            let mut chunk = [0u8; 65536];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
            }
        }
        seen.drain(..head_end + length);
    }
}

/// The length of `/extra`'s body, which comes with one byte more: larger than the 8 KiB a response's
/// first read reserves, so reading the body takes a buffer of its own.
const EXTRA_BODY: usize = 10 * 1024;

/// The pieces of the `/mixed-chunked` and `/mixed-length` answers: small ones (which the proxy copies
/// behind the bytes it has not written yet, while nothing is queued) between large ones (which it
/// queues).
const MIXED_PIECES: [usize; 8] = [3, 20_000, 7, 1, 9_000, 2, 70_000, 5];

/// The body [`MIXED_PIECES`] make: piece `i` is its size in copies of the letter `a + i`.
fn mixed_body() -> String {
    MIXED_PIECES
        .iter()
        .zip(b'a'..)
        .map(|(&size, letter)| char::from(letter).to_string().repeat(size))
        .collect()
}

/// Writes the mixed answer. Chunked: in one write, so the proxy reads the chunks together and has them
/// all to send at once (a small one after a queued large one must wait its turn). With a length: a
/// piece per write, with a yield between, so pieces also come when the last is already sent.
async fn write_mixed(stream: &mut TcpStream, chunked: bool) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    if chunked {
        let mut answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for (&size, letter) in MIXED_PIECES.iter().zip(b'a'..) {
            answer.extend_from_slice(format!("{size:x}\r\n").as_bytes());
            answer.extend(std::iter::repeat_n(letter, size));
            answer.extend_from_slice(b"\r\n");
        }
        answer.extend_from_slice(b"0\r\n\r\n");
        return stream.write_all(&answer).await;
    }
    let length: usize = MIXED_PIECES.iter().sum();
    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\n");
    stream.write_all(head.as_bytes()).await?;
    for (&size, letter) in MIXED_PIECES.iter().zip(b'a'..) {
        stream.write_all(&vec![letter; size]).await?;
        tokio::task::yield_now().await;
    }
    Ok(())
}

fn config(upstream: SocketAddr) -> String {
    one_pool(&format!(
        "retries = 0\nservers = [{{ addr = \"{upstream}\" }}]"
    ))
}

#[tokio::test]
async fn every_response_framing_reaches_the_client_intact_and_reuses_the_connection_when_it_can() {
    let (upstream, accepted) = raw_upstream().await;
    let proxy = TestProxy::start(&config(upstream)).await;
    let client = TestClient::new();
    for round in 0..3 {
        let reply = client.get(&proxy.url("/length")).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (StatusCode::OK, "hello")
        );
        let reply = client.get(&proxy.url("/chunked")).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (StatusCode::OK, "hello world"),
            "a chunked body with an extension and a trailer"
        );
        let reply = client.get(&proxy.url("/interim")).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (StatusCode::OK, "after"),
            "a 103 before the answer is skipped"
        );
        let head = Request::head(proxy.url("/head"))
            .body(empty())
            .expect("a valid HEAD");
        let reply = client.send(head).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(
            reply.headers["content-length"], "5",
            "HEAD keeps the length"
        );
        assert_eq!(
            accepted.load(Ordering::Acquire),
            1,
            "round {round}: every framed answer left the connection reusable"
        );
    }
    for round in 0..2 {
        let reply = client.get(&proxy.url("/until-close")).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (StatusCode::OK, "until the close"),
            "a body delimited by the close"
        );
        assert_eq!(
            accepted.load(Ordering::Acquire),
            1 + round,
            "round {round}: the answer came on the pooled connection"
        );
    }
    let reply = client.get(&proxy.url("/length")).await;
    assert_eq!(reply.body, "hello");
    assert_eq!(
        accepted.load(Ordering::Acquire),
        3,
        "a connection the server closed is not reused"
    );
}

#[tokio::test]
async fn bodies_of_small_and_large_pieces_reach_the_client_whole_and_in_order() {
    let (upstream, accepted) = raw_upstream().await;
    let proxy = TestProxy::start(&config(upstream)).await;
    let client = TestClient::new();
    let want = mixed_body();
    for round in 0..3 {
        for path in ["/mixed-chunked", "/mixed-length"] {
            let reply = client.get(&proxy.url(path)).await;
            assert_eq!(reply.status, StatusCode::OK, "round {round}: {path}");
            assert_eq!(reply.body.len(), want.len(), "round {round}: {path}");
            assert!(
                reply.body == want,
                "round {round}: {path}: pieces out of order"
            );
        }
    }
    assert_eq!(
        accepted.load(Ordering::Acquire),
        1,
        "one kept-alive upstream connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_past_the_end_of_a_body_closes_the_upstream_connection_instead_of_reaching_the_next_answer(
) {
    // The binary with one serving thread (one pool of idle connections). A byte read with the body's
    // end closes the connection (`H1Body::finish`); one still in the socket makes the pooled connection
    // unusable at checkout (`Conn::is_usable`). Were it kept, the stray byte would be read as the start
    // of the next request's answer (a 502).
    let (upstream, accepted) = raw_upstream().await;
    let (_fulcrum, addr, _dir) =
        binary_with_global("worker_threads = 1", upstream, "", "retries = 0");
    let client = TestClient::new();
    for round in 0..3 {
        let reply = client.get(&format!("http://{addr}/extra")).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "round {round}: {}",
            reply.body
        );
        assert!(
            reply.body.len() == EXTRA_BODY && reply.body.bytes().all(|b| b == b'a'),
            "round {round}: the body as its length says, without the stray byte"
        );
        assert_eq!(
            accepted.load(Ordering::Acquire),
            round + 1,
            "round {round}: each answer came on a new upstream connection"
        );
    }
}

#[tokio::test]
async fn answers_arriving_a_byte_at_a_time_are_read_whole() {
    let (upstream, accepted) = raw_upstream().await;
    let proxy = TestProxy::start(&config(upstream)).await;
    let client = TestClient::new();
    for (path, body) in [
        ("/bytewise/length", "hello"),
        ("/bytewise/chunked", "hello world"),
        ("/bytewise/interim", "after"),
        ("/bytewise/until-close", "until the close"),
    ] {
        let reply = client.get(&proxy.url(path)).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (StatusCode::OK, body),
            "{path}"
        );
    }
    assert_eq!(
        accepted.load(Ordering::Acquire),
        1,
        "the framed answers left the connection reusable; the last closed it"
    );
}

#[tokio::test]
async fn a_custom_reason_phrase_is_passed_on() {
    let (upstream, _) = raw_upstream().await;
    let proxy = TestProxy::start(&config(upstream)).await;
    let mut stream = proxy.connect().await;
    stream
        .write_all(b"GET /reason HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let answer = read_raw_response(&mut stream, &mut Vec::new())
        .await
        .expect("an answer");
    assert!(
        answer.head.starts_with("HTTP/1.1 299 Custom Thing\r\n"),
        "{}",
        answer.head
    );
    assert_eq!(answer.body, "ok");
}

#[tokio::test]
async fn heads_that_cannot_be_forwarded_safely_answer_502() {
    let (upstream, _) = raw_upstream().await;
    let proxy = TestProxy::start(&config(upstream)).await;
    let client = TestClient::new();
    for path in ["/both", "/switch", "/two-lengths"] {
        let reply = client.get(&proxy.url(path)).await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{path}");
    }
    let reply = client.get(&proxy.url("/length")).await;
    assert_eq!(reply.body, "hello", "the proxy still serves");
}

#[tokio::test]
async fn an_answer_sent_before_the_request_body_was_read_is_passed_on() {
    let (upstream, accepted) = raw_upstream().await;
    let toml = config(upstream).replace(
        "upstream = \"pool\"",
        "upstream = \"pool\"\nmax_body_size = \"64m\"",
    );
    let proxy = TestProxy::start(&toml).await;
    let client = TestClient::new();
    // 16 MiB: more than the sockets on the way hold (loopback buffers grow to a few MiB), so the proxy
    // is still sending when the answer comes.
    let upload = Request::builder()
        .method(Method::POST)
        .uri(proxy.url("/upload"))
        .body(crate::harness::body(vec![b'x'; 16 << 20]))
        .expect("a valid POST");
    let reply = client.send(upload).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "big!")
    );
    let reply = client.get(&proxy.url("/length")).await;
    assert_eq!(reply.body, "hello");
    assert_eq!(
        accepted.load(Ordering::Acquire),
        2,
        "the connection whose request was cut short is not reused"
    );
}

#[tokio::test]
async fn the_upstreams_100_continue_does_not_stop_the_request_body() {
    let (upstream, _) = raw_upstream().await;
    // Streamed: with request buffering the upstream would get the request only with its body.
    let proxy = TestProxy::start(&one_pool(&format!(
        "retries = 0\nrequest_buffering = false\nservers = [{{ addr = \"{upstream}\" }}]"
    )))
    .await;
    let mut stream = proxy.connect().await;
    stream
        .write_all(b"POST /continue HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        .await
        .expect("write the head");
    let mut pending = Vec::new();
    let interim = read_raw_response(&mut stream, &mut pending)
        .await
        .expect("the proxy's 100 Continue");
    assert_eq!(interim.status, 100);
    // The body goes only once the upstream's own 100 Continue has reached the proxy's connection.
    crate::harness::wait_until(
        std::time::Duration::from_secs(5),
        "the upstream to send 100 Continue",
        || CONTINUE_SENT.load(Ordering::Acquire),
    )
    .await;
    stream.write_all(b"ping").await.expect("write the body");
    let answer = read_raw_response(&mut stream, &mut pending)
        .await
        .expect("the final answer");
    assert_eq!((answer.status, answer.body.as_str()), (200, "ping"));
}

#[tokio::test]
async fn hop_by_hop_fields_of_an_answer_do_not_reach_the_client() {
    let (upstream, _) = raw_upstream().await;
    let proxy = TestProxy::start(&config(upstream)).await;
    let reply = TestClient::new().get(&proxy.url("/hop")).await;
    assert_eq!(reply.body, "ok");
    assert_eq!(reply.headers["x-kept"], "yes");
    for name in ["x-secret", "keep-alive", "connection"] {
        assert!(
            !reply.headers.contains_key(name),
            "{name} reached the client: {:?}",
            reply.headers
        );
    }
}
