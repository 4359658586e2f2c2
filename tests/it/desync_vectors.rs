//! The published HTTP desync vectors that ship in the `http_desync_guardian` crate (its `tests/*.yaml`,
//! Apache-2.0, used here as data through a dev-dependency), replayed on raw sockets through the proxy to
//! the strict raw upstream of the smuggling tests. Every case the vectors rate `Severe` or `Ambiguous` is
//! refused, or normalised into exactly one request the strict upstream reads the one way; no case of any
//! tier reaches the upstream in a form it cannot read strictly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use yaml_rust2::{Yaml, YamlLoader};

use crate::harness::proxy_with;
use crate::smuggling::{status_code, RawBackend};

/// One vector: the request as the YAML describes it, and the tier the vectors give it.
struct Vector {
    file: String,
    name: String,
    method: Vec<u8>,
    uri: Vec<u8>,
    version: Vec<u8>,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    tier: String,
}

/// The `tests/` folder of the `http_desync_guardian` package cargo fetched for this build (asked of
/// `cargo metadata` for this host only, so it needs nothing this build did not download).
fn vectors_dir() -> PathBuf {
    let rustc = std::process::Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("run rustc -vV");
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: ").map(str::to_string))
        .expect("rustc -vV names the host");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--filter-platform",
            &host,
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    let manifest = metadata["packages"]
        .as_array()
        .expect("a package list")
        .iter()
        .find(|p| p["name"] == "http_desync_guardian")
        .and_then(|p| p["manifest_path"].as_str())
        .expect("http_desync_guardian is a dev-dependency");
    PathBuf::from(manifest)
        .parent()
        .expect("the package folder")
        .join("tests")
}

/// The vectors' own unescaping (their runner applies it to every string after YAML's), with each char up
/// to U+00FF taken as that one byte: `\xa0` in a vector means the byte 0xA0.
fn bytes_of(value: &Yaml) -> Option<Vec<u8>> {
    let text = match value {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(n) => n.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        _ => return None,
    };
    let mut out = Vec::new();
    let mut push = |c: char| match u8::try_from(u32::from(c)) {
        Ok(byte) => out.push(byte),
        Err(_) => out.extend_from_slice(c.to_string().as_bytes()),
    };
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            push(c);
            continue;
        }
        match chars.next() {
            Some('x') => {
                let hex: String = chars.by_ref().take(2).collect();
                push(char::from(u8::from_str_radix(&hex, 16).ok()?));
            }
            Some('b') => push('\x08'),
            Some('f') => push('\x0c'),
            Some('n') => push('\n'),
            Some('r') => push('\r'),
            Some('t') => push('\t'),
            Some(other) => push(other),
            None => return None,
        }
    }
    Some(out)
}

fn load_vectors() -> Vec<Vector> {
    let dir = vectors_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    let mut vectors = Vec::new();
    for path in files {
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&path).expect("read a vector file");
        let docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        let Some(cases) = docs.first().and_then(Yaml::as_vec) else {
            continue;
        };
        for case in cases {
            let name = case["name"].as_str().unwrap_or("?").to_string();
            let field = |key: &str| {
                bytes_of(&case[key]).unwrap_or_else(|| panic!("{file}: {name}: no {key}"))
            };
            let headers = case["headers"]
                .as_vec()
                .map(|list| {
                    list.iter()
                        .map(|h| {
                            let part = |key: &str| {
                                bytes_of(&h[key])
                                    .unwrap_or_else(|| panic!("{file}: {name}: header {key}"))
                            };
                            (part("name"), part("value"))
                        })
                        .collect()
                })
                .unwrap_or_default();
            vectors.push(Vector {
                file: file.clone(),
                method: field("method"),
                uri: field("uri"),
                version: field("version"),
                headers,
                tier: case["expected"]["tier"].as_str().unwrap_or("?").to_string(),
                name,
            });
        }
    }
    vectors
}

impl Vector {
    fn has_header(&self, name: &[u8]) -> bool {
        self.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// The request on the wire: the vector's line and headers, a `Host` when it has none (or every
    /// HTTP/1.1 case would be refused for that alone), and a body that completes it under any reading:
    /// a last chunk when it names Transfer-Encoding in any form, else as many bytes as a plain
    /// Content-Length says.
    fn wire(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.method);
        out.push(b' ');
        out.extend_from_slice(&self.uri);
        out.push(b' ');
        out.extend_from_slice(&self.version);
        out.extend_from_slice(b"\r\n");
        if !self.has_header(b"host") {
            out.extend_from_slice(b"Host: x\r\n");
        }
        for (name, value) in &self.headers {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        let mentions_te = self.headers.iter().any(|(n, _)| {
            String::from_utf8_lossy(n)
                .to_ascii_lowercase()
                .contains("transfer-encoding")
        });
        let length = self
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(b"content-length"))
            .and_then(|(_, v)| std::str::from_utf8(v).ok()?.trim().parse::<usize>().ok());
        if mentions_te {
            out.extend_from_slice(b"0\r\n\r\n");
        } else if let Some(length) = length.filter(|&n| n <= 64 * 1024) {
            out.extend(std::iter::repeat_n(b'a', length));
        }
        out
    }
}

/// A header name in `head` that is not `Content-Length` or `Transfer-Encoding` but spells one once `-`
/// and `_` are skipped: a server mapping `_` to `-` would frame the body by it.
fn framing_lookalike(head: &str) -> Option<String> {
    head.lines().skip(1).find_map(|line| {
        let name = line.split(':').next()?.to_ascii_lowercase();
        let letters: String = name.chars().filter(|c| *c != '-' && *c != '_').collect();
        let lookalike = (letters == "contentlength" || letters == "transferencoding")
            && name != "content-length"
            && name != "transfer-encoding";
        lookalike.then_some(name)
    })
}

/// Sends `bytes` on a new connection and returns the status of the first answer once its head has
/// arrived (0 when the proxy closed without one).
async fn first_status(addr: SocketAddr, bytes: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    if stream.write_all(bytes).await.is_err() {
        return 0;
    }
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the proxy neither answered nor closed within 5s"
    );
    status_code(&answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_desync_vectors_are_refused_or_normalised() {
    let vectors = load_vectors();
    let dangerous = vectors
        .iter()
        .filter(|v| v.tier == "Severe" || v.tier == "Ambiguous")
        .count();
    // The crate's 0.1.3 files hold about 170 cases; a loader that found nothing must not pass.
    assert!(
        vectors.len() >= 150,
        "only {} vectors loaded",
        vectors.len()
    );
    assert!(
        dangerous >= 50,
        "only {dangerous} severe or ambiguous vectors"
    );

    let backend = RawBackend::start().await;
    // A body that never completes is answered 408 after a second instead of holding the run.
    let proxy = proxy_with("client_body_timeout = \"1s\"", backend.addr).await;
    let addr = proxy.addr();

    let mut failures = Vec::new();
    let (mut refused, mut normalised, mut forwarded) = (0, 0, 0);
    for vector in &vectors {
        backend.clear();
        let status = first_status(addr, &vector.wire()).await;
        let label = format!("{} / {} ({})", vector.file, vector.name, vector.tier);
        let malformed = backend.malformed();
        if !malformed.is_empty() {
            failures.push(format!(
                "{label}: the upstream got bytes it cannot read strictly: {malformed:?}"
            ));
            continue;
        }
        let reached = backend.requests();
        let dangerous = vector.tier == "Severe" || vector.tier == "Ambiguous";
        if let Some(name) = reached.iter().find_map(|r| framing_lookalike(&r.head)) {
            failures.push(format!(
                "{label}: forwarded a header that reads as a framing header: {name}"
            ));
            continue;
        }
        match (status, reached.len()) {
            (200, 1) if dangerous => normalised += 1,
            (200, 1) => forwarded += 1,
            (400..=599 | 0, 0) => refused += 1,
            _ => failures.push(format!(
                "{label}: answered {status} and the upstream got {} request(s): {reached:?}",
                reached.len()
            )),
        }
    }
    println!(
        "{} vectors ({dangerous} severe or ambiguous): {refused} refused, {normalised} dangerous ones \
         normalised, {forwarded} others forwarded",
        vectors.len()
    );
    assert!(
        failures.is_empty(),
        "{} vector(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
