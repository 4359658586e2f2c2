//! A demo backend to try the binary by hand: answers every request with its name.
//!
//! ```text
//! cargo run --release --example backend -- --port 9001 --name one
//! cargo run --release --example backend -- --port 9002 --name two --delay 200ms
//! ```

use std::time::Duration;

use clap::Parser;
use fulcrum::config::values::parse_duration;
use fulcrum::demo::Backend;

/// A demo HTTP backend on 127.0.0.1 that answers `200` with its name (and `ok` on /health).
#[derive(Debug, Parser)]
struct Args {
    /// Port to listen on (127.0.0.1).
    #[arg(long, default_value_t = 9001)]
    port: u16,
    /// Name to answer with (body and `x-backend` header).
    #[arg(long, default_value = "backend")]
    name: String,
    /// Delay before each answer, e.g. "200ms".
    #[arg(long, value_parser = parse_duration, default_value = "0ms")]
    delay: Duration,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let backend = Backend::named(&args.name, args.port, args.delay).await?;
    println!(
        "backend {} listening on http://{}",
        args.name,
        backend.addr()
    );
    tokio::signal::ctrl_c().await?;
    backend.stop().await;
    Ok(())
}
