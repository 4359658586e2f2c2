//! The `fulcrum` command: parse the command line, set up logging, run or check a config.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fulcrum::Config;

/// Fulcrum: a reverse-proxy load balancer configured by one TOML file.
///
/// Start with `fulcrum check -c config/fulcrum.toml`, then `fulcrum run -c config/fulcrum.toml`.
/// Every config key is documented in docs/configuration.md. Logs go to stderr; set RUST_LOG=debug for more.
#[derive(Debug, Parser)]
#[command(name = "fulcrum", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve traffic with the given config until SIGTERM or Ctrl-C.
    Run {
        /// Path to the TOML config file.
        #[arg(short, long, value_name = "PATH")]
        config: PathBuf,
    },
    /// Validate a config file and exit: 0 if it is good, 1 with an error naming file, line and key (like `nginx -t`).
    Check {
        /// Path to the TOML config file.
        #[arg(short, long, value_name = "PATH")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(loaded) => {
                for warning in &loaded.warnings {
                    eprintln!("warning: {warning}");
                }
                println!("config file {} is valid", config.display());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("{error}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => match run(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("fulcrum: {error:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn run(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if config.global.worker_threads > 0 {
        builder.worker_threads(config.global.worker_threads);
    }
    let runtime = builder
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(async move {
        let proxy = fulcrum::start(config).await?;
        tracing::info!(config = %path.display(), "fulcrum is serving");
        wait_for_shutdown_signal().await;
        tracing::info!("shutting down: draining in-flight requests");
        proxy.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    })
}

async fn wait_for_shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
