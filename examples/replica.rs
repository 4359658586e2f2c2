//! A replica with controlled latency, for the benchmark of how proxies spread load over uneven replicas
//! (`benches/load/spread.py`): answers `200` with its name after a delay (fixed, or random in a range),
//! or one request at a time (a single busy worker: requests queue behind each other), or fails fast with a
//! status; and it can turn slow for a while on a schedule.
//!
//! ```text
//! cargo run --release --example replica -- --port 9001 --name a --delay 10ms
//! cargo run --release --example replica -- --port 9002 --name b --delay 1ms --delay-max 1s
//! cargo run --release --example replica -- --port 9003 --name c --delay 300ms --serial
//! cargo run --release --example replica -- --port 9004 --name d --status 503
//! cargo run --release --example replica -- --port 9005 --name e --delay 10ms --slow-after 4s --slow-for 6s --slow-delay 200ms
//! ```
//!
//! A serial replica waits its delay while holding the one worker rather than spinning a CPU: the queueing
//! is what a balancer sees of a CPU-bound replica, and the benchmark machine's cores stay with the proxies.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use fulcrum::config::values::parse_duration;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// A replica on 127.0.0.1 with the latency and failures the options give it.
#[derive(Debug, Parser)]
struct Args {
    /// Port to listen on (127.0.0.1).
    #[arg(long)]
    port: u16,
    /// Name answered in the body and the `x-backend` header.
    #[arg(long)]
    name: String,
    /// Delay before each answer (the lower end of the range with --delay-max).
    #[arg(long, value_parser = parse_duration, default_value = "0ms")]
    delay: Duration,
    /// Upper end of a uniformly random delay.
    #[arg(long, value_parser = parse_duration)]
    delay_max: Option<Duration>,
    /// Serve one request at a time (a single busy worker).
    #[arg(long)]
    serial: bool,
    /// Answer every request at once with this status (e.g. 503: a replica that fails fast).
    #[arg(long)]
    status: Option<u16>,
    /// Turn slow this long after starting...
    #[arg(long, value_parser = parse_duration)]
    slow_after: Option<Duration>,
    /// ...for this long...
    #[arg(long, value_parser = parse_duration, default_value = "0ms")]
    slow_for: Duration,
    /// ...with this delay.
    #[arg(long, value_parser = parse_duration, default_value = "0ms")]
    slow_delay: Duration,
}

struct Replica {
    args: Args,
    started: Instant,
    worker: Semaphore,
}

impl Replica {
    fn delay(&self) -> Duration {
        if let Some(after) = self.args.slow_after {
            let now = self.started.elapsed();
            if now >= after && now < after + self.args.slow_for {
                return self.args.slow_delay;
            }
        }
        match self.args.delay_max {
            Some(max) if max > self.args.delay => {
                let span = (max - self.args.delay).as_micros() as u64;
                self.args.delay + Duration::from_micros(fastrand::u64(..=span))
            }
            _ => self.args.delay,
        }
    }

    async fn answer(&self, _request: Request<Incoming>) -> Response<Full<Bytes>> {
        if let Some(status) = self.args.status {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return self.response(status);
        }
        let delay = self.delay();
        if self.args.serial {
            // Closed only when the process ends; an error cannot happen while it runs.
            let _worker = self.worker.acquire().await;
            tokio::time::sleep(delay).await;
        } else if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.response(StatusCode::OK)
    }

    fn response(&self, status: StatusCode) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from(self.args.name.clone())));
        *response.status_mut() = status;
        if let Ok(value) = http::HeaderValue::from_str(&self.args.name) {
            response.headers_mut().insert("x-backend", value);
        }
        response
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], args.port))).await?;
    println!(
        "replica {} listening on {}",
        args.name,
        listener.local_addr()?
    );
    let replica = Arc::new(Replica {
        args,
        started: Instant::now(),
        worker: Semaphore::new(1),
    });
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let replica = Arc::clone(&replica);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let replica = Arc::clone(&replica);
                async move { Ok::<_, Infallible>(replica.answer(request).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
