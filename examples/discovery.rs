//! Service discovery, the documents' scenario: replicas behind one DNS name, scaled from 1 to 3 and back
//! while clients keep sending, and the traffic follows the name with no failed request.
//!
//! Runs a small DNS server on loopback (as Docker's 127.0.0.11 would be), three replicas on 127.0.0.2, .3
//! and .4 sharing one port, and the real proxy with `resolve = true`:
//!
//! ```text
//! cargo run --release --example discovery
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fulcrum::demo::dns::{Answer, DnsServer};
use fulcrum::demo::Backend;
use fulcrum::Config;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;

type Error = Box<dyn std::error::Error + Send + Sync>;

const NAME: &str = "api.demo";
const CLIENTS: usize = 4;
/// How long each phase sends traffic (the answers' TTL is 1 s, so a change is followed within about 1 s).
const PHASE: Duration = Duration::from_secs(3);

fn addresses(last: &[u8]) -> Answer {
    Answer::Addresses(last.iter().map(|&b| IpAddr::from([127, 0, 0, b])).collect())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let dns = DnsServer::start().await;
    let first = Backend::named_on("api-1", SocketAddr::from(([127, 0, 0, 2], 0))).await?;
    let port = first.addr().port();
    let replicas = [
        first,
        Backend::named_on("api-2", SocketAddr::from(([127, 0, 0, 3], port))).await?,
        Backend::named_on("api-3", SocketAddr::from(([127, 0, 0, 4], port))).await?,
    ];
    dns.set(NAME, addresses(&[2]));
    let text = format!(
        "[resolver]\nservers = [\"{}\"]\n\n\
         [[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[route]]\npath = \"/\"\nupstream = \"api\"\n\n\
         [upstream.api]\nservers = [{{ addr = \"{NAME}:{port}\", resolve = true }}]\n",
        dns.addr
    );
    println!(
        "fulcrum service discovery demo: a DNS server on {} answers for {NAME}",
        dns.addr
    );
    println!("config:\n{}", indent(&text));
    let proxy = fulcrum::start(Config::parse(&text, Path::new("discovery.toml"))?).await?;
    let url = format!("http://{}/", proxy.listeners()[0].addr);

    let counts: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let failed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (url, counts, failed, stop) = (
            url.clone(),
            Arc::clone(&counts),
            Arc::clone(&failed),
            Arc::clone(&stop),
        );
        clients.push(tokio::spawn(async move {
            let client: Client<HttpConnector, Empty<Bytes>> =
                Client::builder(TokioExecutor::new()).build(HttpConnector::new());
            while !stop.load(Ordering::Relaxed) {
                match get(&client, &url).await {
                    Ok((200, name)) => *counts.lock().entry(name).or_default() += 1,
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    println!("{CLIENTS} clients send requests to {url} all along; each phase lasts {PHASE:?}:");
    let phases: [(&str, &[u8]); 3] = [
        ("1 replica  (127.0.0.2)", &[2]),
        ("scaled to 3 (127.0.0.2, .3, .4)", &[2, 3, 4]),
        ("scaled back to 1 (127.0.0.3)", &[3]),
    ];
    for (label, last) in phases {
        dns.set(NAME, addresses(last));
        counts.lock().clear();
        tokio::time::sleep(PHASE).await;
        let served = counts.lock().clone();
        let cells: Vec<String> = served
            .iter()
            .map(|(name, n)| format!("{name}={n:<5}"))
            .collect();
        println!(
            "  {label:<34} {}  failed={}",
            cells.join(" "),
            failed.load(Ordering::Relaxed)
        );
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await?;
    }
    let failed = failed.load(Ordering::Relaxed);
    println!(
        "\nevery phase's first second still shows the set before the change (the answers' TTL); \
         failed requests in all: {failed}"
    );
    proxy.shutdown().await;
    for replica in replicas {
        replica.stop().await;
    }
    if failed > 0 {
        return Err(format!("{failed} requests failed").into());
    }
    Ok(())
}

/// GET through the proxy; the status and the name of the replica that answered.
async fn get(
    client: &Client<HttpConnector, Empty<Bytes>>,
    url: &str,
) -> Result<(u16, String), Error> {
    let response = client
        .request(http::Request::get(url).body(Empty::new())?)
        .await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn indent(text: &str) -> String {
    text.lines().map(|line| format!("    {line}\n")).collect()
}
