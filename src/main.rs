//! The `fulcrum` command: parse the command line, set up logging, run or check a config.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use fulcrum::Config;

/// jemalloc serves the binary's allocations (docs/benchmarks-history.md): glibc's malloc takes a slow
/// path for the 128-byte-aligned blocks tokio allocates twice per connection (a task, an I/O registration)
/// and for blocks over 1 KiB; jemalloc's size classes serve both from its thread cache. The library (tests,
/// benches) keeps the system allocator.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Fulcrum: a reverse-proxy load balancer configured by one TOML file.
///
/// Start with `fulcrum check -c config/fulcrum.toml`, then `fulcrum run -c config/fulcrum.toml`.
/// Every config key is documented in docs/configuration.md. Logs go to stderr; set RUST_LOG=debug for more.
#[derive(Debug, Parser)]
#[command(name = "fulcrum", version, about, long_about)]
struct Cli {
    /// Log lines as human-readable text (default) or one JSON object per line. Filter with RUST_LOG.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
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
    /// Validate a config file, then tell the running fulcrum to reload it (SIGHUP, like `nginx -s reload`).
    Reload {
        /// Path to the TOML config file.
        #[arg(short, long, value_name = "PATH")]
        config: PathBuf,
        /// Process id to signal; default: the one in the config's `[global] pid_file`.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// GET a plain-HTTP URL and exit 0 on a 2xx answer, 1 otherwise: a health check for images with
    /// no shell or curl (`fulcrum probe http://127.0.0.1:9901/status`).
    Probe {
        /// The URL to GET, `http://host:port/path`.
        #[arg(default_value = "http://127.0.0.1:9901/status")]
        url: String,
        /// Give up after this many seconds (resolve, connect, send and read the status line).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
        timeout: u64,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell) to stdout.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout: `fulcrum man | man -l -`.
    Man,
    /// Translate an nginx config into fulcrum's TOML, with a report of every directive not translated
    /// exactly.
    ///
    /// Reads PATH and the files its `include` directives name (globs, relative to the including file's
    /// directory), its `events`, `http`, `server`, `location` and `upstream` blocks, and writes TOML that
    /// `fulcrum check -c` accepts (to stdout unless -o), each table headed by a comment naming the nginx
    /// file and line it came from. On stderr, one line per directive that was not translated exactly:
    ///
    ///   FILE:LINE: DIRECTIVE: translated with a difference: WHY
    ///   FILE:LINE: DIRECTIVE: not supported: WHY
    ///   FILE:LINE: DIRECTIVE: ignored: WHY (no effect here)
    ///
    /// then a one-line summary (directives read, translated exactly, with differences, not supported,
    /// ignored). docs/migrating-from-nginx.md has the full table.
    ///
    /// Exit status: 0 when everything that changes behaviour was translated (exactly or with a stated
    /// difference); 1 when the input is not valid nginx syntax (FILE:LINE: why, like `nginx -t`) or
    /// cannot be read; 3 when something that changes behaviour was not translated (the TOML is still
    /// written, to be finished by hand).
    #[command(name = "import-nginx")]
    ImportNginx {
        /// The nginx config file, e.g. /etc/nginx/nginx.conf.
        #[arg(value_name = "PATH")]
        path: PathBuf,
        /// Write the TOML here instead of stdout.
        #[arg(short, long, value_name = "OUT")]
        output: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
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
        Command::Reload { config, pid } => match reload(&config, pid) {
            Ok(pid) => {
                println!(
                    "config file {} is valid; reload signal sent to process {pid}",
                    config.display()
                );
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("fulcrum: {error:#}");
                ExitCode::FAILURE
            }
        },
        Command::Probe { url, timeout } => {
            match fulcrum::probe::probe(&url, std::time::Duration::from_secs(timeout)) {
                Ok(status) => {
                    println!("{url}: {status}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("fulcrum probe: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "fulcrum",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::ImportNginx { path, output } => import_nginx(&path, output.as_deref()),
        Command::Man => {
            match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("fulcrum: cannot write the man page: {error}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `fulcrum import-nginx`: the TOML to stdout or `output`, the report to stderr; exit 0, 1 or 3.
fn import_nginx(path: &std::path::Path, output: Option<&std::path::Path>) -> ExitCode {
    let imported = match fulcrum::import_nginx::import(path) {
        Ok(imported) => imported,
        Err(error) => {
            eprintln!("fulcrum import-nginx: {error}");
            return ExitCode::FAILURE;
        }
    };
    let written = match output {
        Some(out) => std::fs::write(out, &imported.toml)
            .with_context(|| format!("cannot write {}", out.display())),
        None => {
            use std::io::Write;
            std::io::stdout()
                .write_all(imported.toml.as_bytes())
                .context("cannot write to stdout")
        }
    };
    for line in &imported.report {
        eprintln!("{line}");
    }
    if let Err(error) = written {
        eprintln!("fulcrum import-nginx: {error:#}");
        return ExitCode::FAILURE;
    }
    if imported.incomplete {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    }
}

fn reload(path: &std::path::Path, pid: Option<u32>) -> anyhow::Result<u32> {
    let config = Config::load(path)?;
    let pid = match (pid, &config.global.pid_file) {
        (Some(pid), _) => pid,
        (None, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("cannot read pid_file {}", file.display()))?
            .trim()
            .parse()
            .with_context(|| format!("pid_file {} holds no process id", file.display()))?,
        (None, None) => anyhow::bail!(
            "no --pid given and no [global] pid_file in {}",
            path.display()
        ),
    };
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .context("cannot run kill")?;
    anyhow::ensure!(status.success(), "cannot signal process {pid}");
    Ok(pid)
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    // A panic in a connection task ends that task only (tokio catches it; the release profile unwinds);
    // it is logged as one error line in the log's own format, not as raw stderr text.
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let thread = std::thread::current().name().unwrap_or("-").to_string();
        tracing::error!(%thread, %location, %message, "panicked; only the task it happened in is affected");
    }));
}

fn run(path: PathBuf) -> anyhow::Result<()> {
    // Before any thread exists: taking the sockets clears LISTEN_FDS from the environment.
    let inherited = fulcrum::server::inherited_sockets();
    let config = Config::load(&path)?;
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    // Serving threads, each with a current-thread runtime of its own (tasks run in the order they were
    // woken, as nginx's loop runs them) and its own accept loop per listener; the daemon (signals,
    // reloads, admin API, health checks) keeps the main thread, so loading a config never stalls a
    // request.
    let threads = fulcrum::server::serving_threads(config.global.worker_threads);
    let serving = (0..threads)
        .map(fulcrum::server::ServingThread::spawn)
        .collect::<Result<Vec<_>, _>>()
        .context("cannot start the serving threads")?;
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let handles = serving
        .iter()
        .map(|thread| thread.handle().clone())
        .collect();
    control.block_on(fulcrum::daemon::run(path, config, inherited, handles))?;
    // The serving threads stop when `serving` is dropped, after the drain.
    drop(serving);
    Ok(())
}
