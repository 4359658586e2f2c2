//! Response compression through the binary (`[compression]`, nginx's gzip module): each algorithm
//! decoded by a reference decoder gives back the upstream's bytes, the client's q-values choose, and each
//! skip rule leaves the answer as the upstream sent it.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};

use crate::harness::*;

/// The `[compression]` section most tests run with.
const ON: &str = "[compression]\nenabled = true\n\
    algorithms = [\"zstd\", \"br\", \"gzip\"]\n\
    types = [\"text/*\", \"application/json\", \"image/svg+xml\"]\n\
    min_size = \"1k\"\n";

/// `len` bytes of text that compresses well but not to nothing.
fn sample_text(len: usize) -> Vec<u8> {
    let mut text = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while text.len() < len {
        text.extend_from_slice(
            format!("line {i}: the answer {} of the upstream\n", i * i % 977).as_bytes(),
        );
        i += 1;
    }
    text.truncate(len);
    text
}

/// `%XX` escapes of a query value.
fn unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(byte) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A backend whose answer the query describes: `len` body bytes of [`sample_text`] (default 4000),
/// `type` (default `text/plain; charset=utf-8`, `none` for no Content-Type), `status`, `chunked=1` for
/// no Content-Length, and `h.NAME=VALUE` for any other header.
async fn described_backend() -> fulcrum::demo::Backend {
    backend_with(|request: Request<Incoming>| async move {
        let mut len = 4000;
        let mut content_type = Some("text/plain; charset=utf-8".to_string());
        let mut status = StatusCode::OK;
        let mut chunked = false;
        let mut headers = Vec::new();
        for pair in request.uri().query().unwrap_or("").split('&') {
            let Some((key, value)) = pair.split_once('=') else {
                continue;
            };
            let value = unescape(value);
            match key {
                "len" => len = value.parse().expect("len is a number"),
                "type" if value == "none" => content_type = None,
                "type" => content_type = Some(value),
                "status" => {
                    status = value
                        .parse::<u16>()
                        .ok()
                        .and_then(|s| StatusCode::from_u16(s).ok())
                        .expect("a status")
                }
                "chunked" => chunked = value == "1",
                _ => {
                    if let Some(name) = key.strip_prefix("h.") {
                        headers.push((name.to_string(), value));
                    }
                }
            }
        }
        let body = Bytes::from(sample_text(len));
        let body = if chunked {
            let frames: Vec<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>> = body
                .chunks(64 * 1024)
                .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                .collect();
            StreamBody::new(futures_util::stream::iter(frames)).boxed()
        } else {
            demo_body(body)
        };
        let mut response = http::Response::new(body);
        *response.status_mut() = status;
        if let Some(content_type) = content_type {
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                content_type.parse().expect("a type"),
            );
        }
        for (name, value) in headers {
            let name: http::HeaderName = name.parse().expect("a header name");
            response
                .headers_mut()
                .append(name, value.parse().expect("a header value"));
        }
        Ok(response)
    })
    .await
}

/// The binary with `compression` (a `[compression]` section or nothing) in front of `backend`, with
/// `route_keys` on its catch-all route.
fn binary(
    compression: &str,
    route_keys: &str,
    backend: SocketAddr,
) -> (FulcrumProcess, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fulcrum.toml");
    let toml = format!(
        "{compression}\n\
         [[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[route]]\npath = \"/\"\nupstream = \"app\"\n{route_keys}\n\n\
         [upstream.app]\nservers = [{{ addr = \"{backend}\" }}]\n"
    );
    std::fs::write(&path, toml).expect("write the config");
    let mut process = FulcrumProcess::spawn(&path, &[]);
    let addr = process.listener_addr("public");
    (process, addr, dir)
}

/// An answer's head and its raw (still encoded) body.
struct Raw {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("a text header"))
    }

    fn vary(&self) -> Vec<String> {
        self.headers
            .get_all("vary")
            .iter()
            .flat_map(|v| v.to_str().expect("text").split(','))
            .map(|v| v.trim().to_ascii_lowercase())
            .collect()
    }
}

async fn fetch(method: Method, url: &str, accept: Option<&str>) -> Raw {
    fetch_with(&TestClient::new(), method, url, accept).await
}

async fn fetch_with(client: &TestClient, method: Method, url: &str, accept: Option<&str>) -> Raw {
    let mut request = Request::builder().method(method).uri(url);
    if let Some(accept) = accept {
        request = request.header("accept-encoding", accept);
    }
    let response = client
        .response(request.body(empty()).expect("a request"))
        .await;
    let status = response.status();
    let headers = response.headers().clone();
    let body = tokio::time::timeout(Duration::from_secs(20), response.into_body().collect())
        .await
        .expect("the body ends within 20 s")
        .expect("read the body")
        .to_bytes()
        .to_vec();
    Raw {
        status,
        headers,
        body,
    }
}

async fn get(url: &str, accept: &str) -> Raw {
    fetch(Method::GET, url, Some(accept)).await
}

fn decode(encoding: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        "gzip" => {
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .expect("valid gzip");
        }
        "br" => {
            brotli::Decompressor::new(body, 4096)
                .read_to_end(&mut out)
                .expect("valid brotli");
        }
        "zstd" => out = zstd::stream::decode_all(body).expect("valid zstd"),
        other => panic!("unexpected encoding {other}"),
    }
    out
}

/// Each algorithm, asked for alone, comes back decodable to the upstream's exact bytes.
async fn round_trip(algorithm: &str) {
    let backend = described_backend().await;
    let (_fulcrum, addr, _dir) = binary(ON, "", backend.addr());
    let reply = get(&format!("http://{addr}/?len=20000"), algorithm).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("content-encoding"), Some(algorithm));
    assert!(
        reply.body.len() < 20000,
        "{algorithm}: {} bytes",
        reply.body.len()
    );
    assert_eq!(
        decode(algorithm, &reply.body),
        sample_text(20000),
        "{algorithm}"
    );
}

#[tokio::test]
async fn gzip_answer_decodes_to_the_upstream_bytes() {
    round_trip("gzip").await;
}

#[tokio::test]
async fn brotli_answer_decodes_to_the_upstream_bytes() {
    round_trip("br").await;
}

#[tokio::test]
async fn zstd_answer_decodes_to_the_upstream_bytes() {
    round_trip("zstd").await;
}

#[tokio::test]
async fn negotiation_follows_q_values_then_our_order() {
    let backend = described_backend().await;
    let (_fulcrum, addr, _dir) = binary(ON, "", backend.addr());
    let url = format!("http://{addr}/");
    let cases = [
        ("gzip;q=0.5, br;q=1", Some("br")),
        ("gzip, br", Some("br")),
        ("gzip, br, zstd", Some("zstd")),
        ("br;q=0, gzip", Some("gzip")),
        ("zstd;q=0, br;q=0", None),
        ("*", Some("zstd")),
        ("zstd;q=0, *;q=0.3", Some("br")),
        ("gzip;q=0.5, identity", None),
        ("identity", None),
        ("deflate", None),
    ];
    for (accept, expected) in cases {
        let reply = get(&url, accept).await;
        assert_eq!(
            reply.header("content-encoding"),
            expected,
            "Accept-Encoding: {accept}"
        );
        let body = match expected {
            Some(encoding) => decode(encoding, &reply.body),
            None => reply.body.clone(),
        };
        assert_eq!(body, sample_text(4000), "Accept-Encoding: {accept}");
    }
}

#[tokio::test]
async fn http2_clients_get_compressed_answers_too() {
    let backend = described_backend().await;
    let (_fulcrum, addr, _dir) = binary(ON, "", backend.addr());
    let reply = fetch_with(
        &TestClient::h2c(),
        Method::GET,
        &format!("http://{addr}/?len=50000"),
        Some("br"),
    )
    .await;
    assert_eq!(reply.header("content-encoding"), Some("br"));
    assert_eq!(reply.header("content-length"), None);
    assert_eq!(decode("br", &reply.body), sample_text(50000));
}

#[tokio::test]
async fn a_route_without_response_buffering_compresses_too() {
    let backend = described_backend().await;
    let (_fulcrum, addr, _dir) = binary(ON, "buffering = false", backend.addr());
    let reply = get(&format!("http://{addr}/?len=300000&chunked=1"), "zstd").await;
    assert_eq!(reply.header("content-encoding"), Some("zstd"));
    assert_eq!(decode("zstd", &reply.body), sample_text(300000));
}

#[tokio::test]
async fn no_transform_set_by_the_route_rules_is_honoured() {
    let backend = described_backend().await;
    let (_fulcrum, addr, _dir) = binary(
        ON,
        "response_headers = { set = { \"Cache-Control\" = \"no-transform\" } }",
        backend.addr(),
    );
    let reply = get(&format!("http://{addr}/"), "gzip").await;
    assert_left_alone(&reply, "no-transform from the route").await;
    assert_eq!(reply.body, sample_text(4000));
}

#[tokio::test]
async fn accept_encoding_removed_for_the_upstream_still_chooses_for_the_client() {
    let seen = Arc::new(parking_lot::Mutex::new(None::<String>));
    let saw = Arc::clone(&seen);
    let backend = backend_with(move |request: Request<Incoming>| {
        *saw.lock() = Some(format!("{:?}", request.headers().get("accept-encoding")));
        async move {
            let mut response = http::Response::new(demo_body(sample_text(4000)));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                "text/html".parse().expect("type"),
            );
            Ok(response)
        }
    })
    .await;
    let (_fulcrum, addr, _dir) = binary(
        ON,
        "request_headers = { remove = [\"Accept-Encoding\"] }",
        backend.addr(),
    );
    let reply = get(&format!("http://{addr}/"), "gzip").await;
    assert_eq!(
        seen.lock().as_deref(),
        Some("None"),
        "the upstream was asked for a plain answer"
    );
    assert_eq!(reply.header("content-encoding"), Some("gzip"));
    assert_eq!(decode("gzip", &reply.body), sample_text(4000));
}

#[tokio::test]
async fn compressed_answer_has_vary_a_weak_etag_and_no_length() {
    let backend = described_backend().await;
    let (_fulcrum, addr, _dir) = binary(ON, "", backend.addr());
    let reply = get(
        &format!("http://{addr}/?h.etag=%22v1%22&h.vary=Origin&h.accept-ranges=bytes"),
        "gzip",
    )
    .await;
    assert_eq!(reply.header("content-encoding"), Some("gzip"));
    assert_eq!(reply.vary(), ["origin", "accept-encoding"]);
    assert_eq!(reply.header("etag"), Some("W/\"v1\""));
    assert_eq!(reply.header("content-length"), None);
    assert_eq!(reply.header("transfer-encoding"), Some("chunked"));
    assert_eq!(reply.header("accept-ranges"), None);
}

#[tokio::test]
async fn vary_already_naming_accept_encoding_is_not_repeated() {
    let backend = described_backend().await;
    let (_fulcrum, addr, _dir) = binary(ON, "", backend.addr());
    let reply = get(
        &format!("http://{addr}/?h.vary=Accept-Encoding&h.etag=W/%22v2%22"),
        "br",
    )
    .await;
    assert_eq!(reply.header("content-encoding"), Some("br"));
    assert_eq!(reply.vary(), ["accept-encoding"]);
    assert_eq!(reply.header("etag"), Some("W/\"v2\""));
}

#[tokio::test]
async fn plain_answer_to_a_client_without_our_codings_still_varies() {
    let backend = described_backend().await;
    let (_fulcrum, addr, _dir) = binary(ON, "", backend.addr());
    let reply = get(&format!("http://{addr}/"), "deflate").await;
    assert_eq!(reply.header("content-encoding"), None);
    assert_eq!(reply.vary(), ["accept-encoding"]);
    assert_eq!(reply.header("content-length"), Some("4000"));
    let none = fetch(Method::GET, &format!("http://{addr}/"), None).await;
    assert_eq!(none.header("content-encoding"), None);
    assert_eq!(none.body, sample_text(4000));
}

/// An answer that a skip rule leaves alone: as the upstream sent it, with no `Content-Encoding` added.
async fn assert_left_alone(reply: &Raw, why: &str) {
    assert!(
        reply
            .header("content-encoding")
            .is_none_or(|e| e == "upstream-coding"),
        "{why}: compressed ({:?})",
        reply.header("content-encoding")
    );
}

#[tokio::test]
async fn skip_rules_leave_the_answer_as_the_upstream_sent_it() {
    let backend = described_backend().await;
    let (_fulcrum, addr, _dir) = binary(ON, "", backend.addr());
    let cases = [
        (
            "already encoded",
            "?h.content-encoding=upstream-coding",
            4000,
        ),
        ("below min_size", "?len=1023", 1023),
        ("type not listed", "?type=application/octet-stream", 4000),
        ("no type", "?type=none", 4000),
        (
            "no-transform",
            "?h.cache-control=public,%20no-transform",
            4000,
        ),
        (
            "206",
            "?status=206&h.content-range=bytes%200-3999/8000",
            4000,
        ),
    ];
    for (why, query, len) in cases {
        let reply = get(&format!("http://{addr}/{query}"), "gzip, br, zstd").await;
        assert_left_alone(&reply, why).await;
        assert_eq!(reply.body, sample_text(len), "{why}");
        assert_eq!(
            reply.header("content-length"),
            Some(len.to_string().as_str()),
            "{why}"
        );
    }
    let at_min = get(&format!("http://{addr}/?len=1024"), "gzip").await;
    assert_eq!(
        at_min.header("content-encoding"),
        Some("gzip"),
        "min_size itself is compressed"
    );
    let json = get(
        &format!("http://{addr}/?type=Application/JSON;%20charset=utf-8"),
        "gzip",
    )
    .await;
    assert_eq!(
        json.header("content-encoding"),
        Some("gzip"),
        "parameters and case are ignored"
    );
}

#[tokio::test]
async fn not_modified_and_head_are_not_compressed() {
    let backend = described_backend().await;
    let (_fulcrum, addr, _dir) = binary(ON, "", backend.addr());
    let not_modified = get(
        &format!("http://{addr}/?status=304&len=0&h.etag=%22v1%22"),
        "gzip",
    )
    .await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    assert_left_alone(&not_modified, "304").await;
    assert_eq!(not_modified.header("etag"), Some("\"v1\""));
    let head = fetch(Method::HEAD, &format!("http://{addr}/"), Some("gzip")).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_left_alone(&head, "HEAD").await;
    assert_eq!(head.header("content-length"), Some("4000"));
    assert!(head.body.is_empty());
}

#[tokio::test]
async fn a_route_with_compress_false_is_not_compressed() {
    let backend = described_backend().await;
    let (_fulcrum, addr, _dir) = binary(ON, "compress = false", backend.addr());
    let reply = get(&format!("http://{addr}/"), "gzip").await;
    assert_left_alone(&reply, "compress = false").await;
    assert!(reply.headers.get("vary").is_none());
    assert_eq!(reply.body, sample_text(4000));
}

#[tokio::test]
async fn enabled_false_or_no_section_compresses_nothing() {
    let backend = described_backend().await;
    for section in ["[compression]\nenabled = false\n", ""] {
        let (_fulcrum, addr, _dir) = binary(section, "", backend.addr());
        let reply = get(&format!("http://{addr}/"), "gzip").await;
        assert_left_alone(&reply, section).await;
        assert!(reply.headers.get("vary").is_none(), "{section:?}");
        assert_eq!(reply.body, sample_text(4000));
    }
}

#[tokio::test]
async fn a_large_answer_without_length_arrives_whole() {
    let backend = described_backend().await;
    let (_fulcrum, addr, _dir) = binary(ON, "", backend.addr());
    let len = 5 * 1024 * 1024;
    for algorithm in ["gzip", "br", "zstd"] {
        let reply = get(&format!("http://{addr}/?len={len}&chunked=1"), algorithm).await;
        assert_eq!(reply.header("content-encoding"), Some(algorithm));
        assert_eq!(
            decode(algorithm, &reply.body),
            sample_text(len),
            "{algorithm}"
        );
    }
}

/// The compressed answer reaches the client while the upstream is still holding back the rest of the
/// body: nothing waits for the whole answer.
#[tokio::test]
async fn compression_streams_before_the_upstream_finishes() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let held = Arc::clone(&gate);
    let first = Bytes::from(sample_text(256 * 1024));
    let backend = backend_with(move |_request: Request<Incoming>| {
        let held = Arc::clone(&held);
        let first = first.clone();
        async move {
            let frames = futures_util::stream::unfold(0, move |step| {
                let held = Arc::clone(&held);
                let first = first.clone();
                async move {
                    match step {
                        0 => Some((
                            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(first)),
                            1,
                        )),
                        1 => {
                            let permit = held.acquire().await.expect("the gate stays open");
                            permit.forget();
                            Some((Ok(Frame::data(Bytes::from_static(b"the end\n"))), 2))
                        }
                        _ => None,
                    }
                }
            });
            let mut response = http::Response::new(StreamBody::new(frames).boxed());
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                "text/plain".parse().expect("type"),
            );
            Ok(response)
        }
    })
    .await;
    let (_fulcrum, addr, _dir) = binary(ON, "", backend.addr());
    let request = Request::get(format!("http://{addr}/"))
        .header("accept-encoding", "gzip")
        .body(empty())
        .expect("a request");
    let response = TestClient::new().response(request).await;
    assert_eq!(
        response
            .headers()
            .get("content-encoding")
            .map(|v| v.as_bytes()),
        Some(&b"gzip"[..])
    );
    let mut body = response.into_body();
    let mut received = Vec::new();
    let mut decoded = Vec::new();
    // Everything the first part compresses to arrives (the encoder flushes when its input waits)
    // before the rest is let go.
    while decoded.len() < 256 * 1024 {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("compressed data before the upstream's end")
            .expect("a frame")
            .expect("no error");
        if let Ok(data) = frame.into_data() {
            received.extend_from_slice(&data);
        }
        decoded.clear();
        let mut decoder = flate2::read::GzDecoder::new(&received[..]);
        let _ = decoder.read_to_end(&mut decoded);
    }
    gate.add_permits(1);
    let rest = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .expect("the rest within 10 s")
        .expect("the rest")
        .to_bytes();
    received.extend_from_slice(&rest);
    let mut expected = sample_text(256 * 1024);
    expected.extend_from_slice(b"the end\n");
    assert_eq!(decode("gzip", &received), expected);
}

#[test]
fn unknown_algorithm_is_refused_with_its_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fulcrum.toml");
    std::fs::write(
        &path,
        "[compression]\nalgorithms = [\"gzip\", \"deflate\"]\n\n\
         [[listener]]\nlisten = \"127.0.0.1:0\"\n",
    )
    .expect("write the config");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .expect("run fulcrum check");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(":2: compression.algorithms"), "{stderr}");
    assert!(stderr.contains("unknown algorithm `deflate`"), "{stderr}");
}

#[tokio::test]
async fn levels_are_the_configured_ones() {
    let backend = described_backend().await;
    let url = |addr: SocketAddr| format!("http://{addr}/?len=50000");
    let (_fast, fast, _dir) = binary(ON, "", backend.addr());
    let (_best, best, _dir2) = binary(
        &format!("{ON}gzip_level = 9\nzstd_level = 19\nbr_level = 11\n"),
        "",
        backend.addr(),
    );
    for algorithm in ["gzip", "zstd", "br"] {
        let at_default = get(&url(fast), algorithm).await;
        let at_best = get(&url(best), algorithm).await;
        assert_eq!(
            decode(algorithm, &at_best.body),
            sample_text(50000),
            "{algorithm}"
        );
        assert!(
            at_best.body.len() < at_default.body.len(),
            "{algorithm}: the highest level gives {} bytes, the default {}",
            at_best.body.len(),
            at_default.body.len()
        );
    }
}

/// `fulcrum check` on a config with `compression` as its `[compression]` section: its stderr, and
/// whether it passed.
fn check(compression: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fulcrum.toml");
    std::fs::write(
        &path,
        format!("{compression}\n[[listener]]\nlisten = \"127.0.0.1:0\"\n"),
    )
    .expect("write the config");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .expect("run fulcrum check");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_levels_and_types_are_refused_with_their_keys() {
    for (section, expected) in [
        (
            "[compression]\nbr_level = 12\n",
            ":2: compression.br_level: must be from 0 to 11",
        ),
        (
            "[compression]\ngzip_level = 0\n",
            ":2: compression.gzip_level: must be from 1 to 9",
        ),
        (
            "[compression]\nzstd_level = 20\n",
            ":2: compression.zstd_level: must be from 1 to 19",
        ),
        (
            "[compression]\nalgorithms = [\"br\", \"br\"]\n",
            ":2: compression.algorithms: `br` is listed twice",
        ),
        (
            "[compression]\nalgorithms = []\n",
            ":2: compression.algorithms: is empty",
        ),
        (
            "[compression]\ntypes = [\"text/html; charset=utf-8\"]\n",
            ":2: compression.types: `text/html; charset=utf-8` is not a media type",
        ),
        ("[compression]\nlevel = 3\n", "compression"),
    ] {
        let (ok, stderr) = check(section);
        assert!(
            !ok && stderr.contains(expected),
            "{section:?}: want {expected:?} in {stderr}"
        );
    }
}

#[test]
fn a_route_asking_to_compress_while_compression_is_off_is_a_warning() {
    let (ok, stderr) = check(
        "[upstream.app]\nservers = [{ addr = \"127.0.0.1:9\" }]\n\n\
         [[route]]\npath = \"/\"\nupstream = \"app\"\ncompress = true\n",
    );
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains(":7: route[0].compress: has no effect while [compression] is absent"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_reload_turns_compression_off_and_on() {
    let backend = described_backend().await;
    let mut admin = AdminBinary::from_toml(&format!(
        "{ON}\n[[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[route]]\npath = \"/\"\nupstream = \"app\"\n\n\
         [upstream.app]\nservers = [{{ addr = \"{}\" }}]\n",
        backend.addr()
    ));
    let url = format!("http://{}/", admin.addr);
    assert_eq!(
        get(&url, "gzip").await.header("content-encoding"),
        Some("gzip")
    );
    admin.reload_replacing("enabled = true", "enabled = false");
    let plain = get(&url, "gzip").await;
    assert_eq!(plain.header("content-encoding"), None);
    assert_eq!(plain.body, sample_text(4000));
    // A second "config reloaded" line may come from the file watch of the first change: poll for the
    // answer itself (bounded) rather than for the line.
    admin.reload_replacing("enabled = false", "enabled = true");
    wait_until_async(Duration::from_secs(10), "compression back on", || async {
        get(&url, "gzip").await.header("content-encoding") == Some("gzip")
    })
    .await;
}

#[test]
fn bad_min_size_is_refused_with_its_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fulcrum.toml");
    std::fs::write(
        &path,
        "[compression]\nmin_size = \"1 kilo\"\n\n[[listener]]\nlisten = \"127.0.0.1:0\"\n",
    )
    .expect("write the config");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .expect("run fulcrum check");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("compression.min_size"), "{stderr}");
}

#[tokio::test]
async fn compressed_answers_are_counted_by_algorithm() {
    let backend = described_backend().await;
    let admin = AdminBinary::from_toml(&format!(
        "{ON}\n[[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[route]]\npath = \"/\"\nupstream = \"app\"\n\n\
         [upstream.app]\nservers = [{{ addr = \"{}\" }}]\n",
        backend.addr()
    ));
    let url = format!("http://{}/", admin.addr);
    for accept in ["gzip", "gzip", "br", "identity"] {
        get(&url, accept).await;
    }
    let metrics = admin.metrics().await;
    let count = |algorithm: &str| {
        sample(
            &metrics,
            "fulcrum_compressed_responses_total",
            &[&format!("algorithm=\"{algorithm}\"")],
        )
    };
    assert_eq!(
        (count("gzip"), count("br"), count("zstd")),
        (2.0, 1.0, 0.0),
        "{metrics}"
    );
}

/// A cached route keeps the upstream's answer as it came and compresses each hit for its own client: a
/// gzip miss, then a plain hit with the exact bytes, then a brotli hit, with one request upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_hits_are_compressed_per_client_from_an_uncompressed_entry() {
    let backend = described_backend().await;
    let sections = format!("{ON}\n[cache.pages]\n");
    let (_fulcrum, addr, _dir) = binary(&sections, "cache = \"pages\"", backend.addr());
    let url = format!("http://{addr}/page?len=20000&h.cache-control=max-age%3D60");
    let miss = get(&url, "gzip").await;
    assert_eq!(miss.header("x-cache-status"), Some("MISS"));
    assert_eq!(miss.header("content-encoding"), Some("gzip"));
    assert_eq!(decode("gzip", &miss.body), sample_text(20000));

    let plain = fetch(Method::GET, &url, None).await;
    assert_eq!(plain.header("x-cache-status"), Some("HIT"));
    assert_eq!(plain.header("content-encoding"), None);
    assert_eq!(
        plain.body,
        sample_text(20000),
        "the entry holds the plain answer"
    );

    let brotli = get(&url, "br").await;
    assert_eq!(brotli.header("x-cache-status"), Some("HIT"));
    assert_eq!(brotli.header("content-encoding"), Some("br"));
    assert!(brotli.vary().contains(&"accept-encoding".to_string()));
    assert_eq!(decode("br", &brotli.body), sample_text(20000));
    assert_eq!(
        backend.requests(),
        1,
        "every answer after the first was a hit"
    );
}
