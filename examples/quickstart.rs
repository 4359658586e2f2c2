//! Quickstart: three demo backends, the real proxy on loopback, traffic through every strategy, then one
//! backend stopped mid-traffic to show failover with no failed request.
//!
//! ```text
//! cargo run --release --example quickstart
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use fulcrum::demo::Backend;
use fulcrum::Config;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

type DemoClient = Client<HttpConnector, Empty<Bytes>>;
type Error = Box<dyn std::error::Error + Send + Sync>;

const REQUESTS: usize = 600;

fn client_from(source: Option<IpAddr>) -> DemoClient {
    let mut connector = HttpConnector::new();
    connector.set_local_address(source);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// GET through the proxy; returns the status and the name of the backend that answered.
async fn get(client: &DemoClient, url: &str, user: Option<&str>) -> Result<(u16, String), Error> {
    let mut request = http::Request::get(url);
    if let Some(user) = user {
        request = request.header("x-user-id", user);
    }
    let response = client.request(request.body(Empty::new())?).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn config(strategy: &str, extra: &str, backends: &[Backend]) -> Result<Config, Error> {
    let weights = [3, 2, 1];
    let servers: Vec<String> = backends
        .iter()
        .zip(weights)
        .map(|(b, w)| format!("{{ addr = \"{}\", weight = {w} }}", b.addr()))
        .collect();
    let text = format!(
        "[[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\n[[route]]\npath = \"/\"\nupstream = \"app\"\n\n\
         [upstream.app]\nstrategy = \"{strategy}\"\n{extra}\nservers = [{}]\n",
        servers.join(", ")
    );
    Ok(Config::parse(&text, Path::new("quickstart.toml"))?)
}

fn print_counts(label: &str, counts: &BTreeMap<String, usize>, failures: usize) {
    let cells: Vec<String> = counts
        .iter()
        .map(|(name, n)| format!("{name}={n:<4}"))
        .collect();
    println!("  {label:<34} {}  failed={failures}", cells.join(" "));
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut backends = Vec::new();
    for name in ["alpha", "bravo", "charlie"] {
        backends.push(Backend::named(name, 0, Duration::ZERO).await?);
    }
    println!("fulcrum quickstart: backends alpha, bravo, charlie with weights 3:2:1 on 127.0.0.1");
    for (name, backend) in ["alpha", "bravo", "charlie"].iter().zip(&backends) {
        println!("  {name:<8} http://{}", backend.addr());
    }
    println!("\n{REQUESTS} requests through each strategy; which backend served how many:");
    let mut total_failures = 0;
    let strategies = [
        ("round_robin", "", "round_robin (smooth weighted)"),
        ("weighted", "", "weighted (random)"),
        ("least_conn", "", "least_conn (20 concurrent clients)"),
        ("ip_hash", "", "ip_hash (20 client addresses)"),
        (
            "consistent_hash",
            "hash_key = \"header:x-user-id\"",
            "consistent_hash (200 user ids)",
        ),
    ];
    for (strategy, extra, label) in strategies {
        let proxy = fulcrum::start(config(strategy, extra, &backends)?).await?;
        let url = format!("http://{}/", proxy.listeners()[0].addr);
        let mut counts = BTreeMap::new();
        let mut failures = 0;
        let mut tasks = tokio::task::JoinSet::new();
        let workers = 20;
        for worker in 0..workers {
            let url = url.clone();
            tasks.spawn(async move {
                let source: IpAddr = [127, 0, 0, 2 + worker as u8].into();
                let client = client_from((strategy == "ip_hash").then_some(source));
                let mut seen = Vec::new();
                for i in 0..REQUESTS / workers {
                    let user = format!("user-{}", (worker * 31 + i) % 200);
                    let user = (strategy == "consistent_hash").then_some(user.as_str());
                    seen.push(get(&client, &url, user).await);
                }
                seen
            });
        }
        while let Some(results) = tasks.join_next().await {
            for result in results? {
                match result {
                    Ok((200, name)) => *counts.entry(name).or_insert(0) += 1,
                    _ => failures += 1,
                }
            }
        }
        print_counts(label, &counts, failures);
        total_failures += failures;
        proxy.shutdown().await;
    }

    println!("\nFailover: round_robin, 300 requests, charlie stopped after the first 100:");
    let proxy = fulcrum::start(config("round_robin", "", &backends)?).await?;
    let url = format!("http://{}/", proxy.listeners()[0].addr);
    let client = client_from(None);
    let mut before = BTreeMap::new();
    let mut after = BTreeMap::new();
    let mut failures = 0;
    let charlie = backends.pop().ok_or("three backends")?;
    let mut charlie = Some(charlie);
    for i in 0..300 {
        if i == 100 {
            if let Some(backend) = charlie.take() {
                backend.stop().await;
                println!("  charlie stopped");
            }
        }
        match get(&client, &url, None).await {
            Ok((200, name)) => {
                let counts = if i < 100 { &mut before } else { &mut after };
                *counts.entry(name).or_insert(0) += 1;
            }
            _ => failures += 1,
        }
    }
    print_counts("before the stop (100 requests)", &before, 0);
    print_counts("after the stop (200 requests)", &after, failures);
    total_failures += failures;
    proxy.shutdown().await;

    if total_failures == 0 {
        println!("\nevery client request succeeded.");
        Ok(())
    } else {
        Err(format!("{total_failures} client requests failed").into())
    }
}
