//! The load generator of `benches/load/spread.py`: sends GETs to a URL for a while, closed loop (a fixed
//! number of clients, each sending its next request when the last is answered) or open loop (a fixed
//! arrival rate whatever the answers do, latency counted from each request's scheduled time, so queueing
//! shows), and prints one JSON object: latency percentiles, throughput, success rate, answers per
//! replica (`x-backend`), and one replica's share over time.
//!
//! ```text
//! cargo run --release --example loadgen -- --url http://127.0.0.1:8080/ --closed 32 --duration 10s
//! cargo run --release --example loadgen -- --url http://127.0.0.1:8080/ --rate 300 --duration 10s --track slow
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use fulcrum::config::values::parse_duration;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// Load from one process; see the module doc.
#[derive(Debug, Parser)]
struct Args {
    /// Where to send GETs.
    #[arg(long)]
    url: String,
    /// Closed loop with this many clients.
    #[arg(long, conflicts_with = "rate")]
    closed: Option<usize>,
    /// Open loop at this many requests a second.
    #[arg(long)]
    rate: Option<f64>,
    /// How long to send.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    duration: Duration,
    /// A request not answered within this counts as failed.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    timeout: Duration,
    /// The replica (its `x-backend` name) whose share of answers is reported per time bucket.
    #[arg(long)]
    track: Option<String>,
    /// Width of a time bucket.
    #[arg(long, value_parser = parse_duration, default_value = "250ms")]
    bucket: Duration,
}

/// One answered (or failed) request.
struct Sample {
    /// When it was due, from the start.
    at: Duration,
    latency: Duration,
    ok: bool,
    backend: Option<String>,
}

async fn one(client: &HttpClient, url: &str, timeout: Duration) -> (bool, Option<String>) {
    let Ok(request) = http::Request::get(url).body(Empty::new()) else {
        return (false, None);
    };
    let sent = async {
        let response = client.request(request).await.ok()?;
        let ok = response.status().is_success();
        let backend = response
            .headers()
            .get("x-backend")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        response.into_body().collect().await.ok()?;
        Some((ok, backend))
    };
    match tokio::time::timeout(timeout, sent).await {
        Ok(Some(answer)) => answer,
        _ => (false, None),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Arc::new(Args::parse());
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(4096)
        .build(connector);
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let start = Instant::now();
    let end = start + args.duration;
    let mut tasks = Vec::new();
    match (args.closed, args.rate) {
        (Some(clients), _) => {
            for _ in 0..clients {
                let (client, args, samples) =
                    (client.clone(), Arc::clone(&args), Arc::clone(&samples));
                tasks.push(tokio::spawn(async move {
                    while Instant::now() < end {
                        let due = Instant::now();
                        let (ok, backend) = one(&client, &args.url, args.timeout).await;
                        samples.lock().push(Sample {
                            at: due - start,
                            latency: due.elapsed(),
                            ok,
                            backend,
                        });
                    }
                }));
            }
        }
        (None, Some(rate)) if rate > 0.0 => {
            let gap = Duration::from_secs_f64(1.0 / rate);
            let mut due = start;
            while due < end {
                tokio::time::sleep_until(due.into()).await;
                let (client, args, samples) =
                    (client.clone(), Arc::clone(&args), Arc::clone(&samples));
                let scheduled = due;
                tasks.push(tokio::spawn(async move {
                    let (ok, backend) = one(&client, &args.url, args.timeout).await;
                    samples.lock().push(Sample {
                        at: scheduled - start,
                        latency: scheduled.elapsed(),
                        ok,
                        backend,
                    });
                }));
                due += gap;
            }
        }
        _ => return Err("give --closed N or --rate R (above 0)".into()),
    }
    for task in tasks {
        task.await?;
    }
    let elapsed = start.elapsed();
    let samples = std::mem::take(&mut *samples.lock());
    println!("{}", report(&args, &samples, elapsed));
    Ok(())
}

fn report(args: &Args, samples: &[Sample], elapsed: Duration) -> serde_json::Value {
    let mut latencies: Vec<f64> = samples
        .iter()
        .filter(|s| s.ok)
        .map(|s| s.latency.as_secs_f64() * 1000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| -> Option<f64> {
        let last = latencies.len().checked_sub(1)?;
        let i = ((p * latencies.len() as f64).ceil() as usize).saturating_sub(1);
        latencies.get(i.min(last)).copied()
    };
    let ok = samples.iter().filter(|s| s.ok).count();
    let mut by_backend: BTreeMap<String, usize> = BTreeMap::new();
    for sample in samples.iter().filter(|s| s.ok) {
        if let Some(name) = &sample.backend {
            *by_backend.entry(name.clone()).or_default() += 1;
        }
    }
    let series = args.track.as_ref().map(|tracked| {
        let width = args.bucket.as_millis().max(1) as u64;
        let mut buckets: BTreeMap<u64, (usize, usize)> = BTreeMap::new();
        for sample in samples.iter().filter(|s| s.ok) {
            let bucket = sample.at.as_millis() as u64 / width * width;
            let entry = buckets.entry(bucket).or_default();
            entry.0 += 1;
            if sample.backend.as_deref() == Some(tracked) {
                entry.1 += 1;
            }
        }
        buckets
            .into_iter()
            .map(|(t, (total, tracked))| serde_json::json!({ "t_ms": t, "total": total, "tracked": tracked }))
            .collect::<Vec<_>>()
    });
    serde_json::json!({
        "sent": samples.len(),
        "ok": ok,
        "success": if samples.is_empty() { 0.0 } else { ok as f64 / samples.len() as f64 },
        "throughput": ok as f64 / elapsed.as_secs_f64(),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "p999_ms": pct(0.999),
        "by_backend": by_backend,
        "series": series,
    })
}
