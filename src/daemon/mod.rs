//! The `fulcrum run` lifecycle: start, reload on SIGHUP or a change of the config file, drain on SIGTERM
//! or SIGINT (a second signal, or SIGQUIT, exits at once), and tell systemd about each step.

pub mod systemd;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::server::{self, BindError, RunningProxy};
use watch::ConfigWatcher;

/// How `run` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Drained and stopped.
    Graceful,
    /// A second signal or SIGQUIT: stopped without waiting.
    Immediate,
}

/// Why `run` could not serve.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// A signal handler could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Serves `config` (loaded from `path`) until told to stop, on `inherited` sockets where they match a
/// listener (see [`server::inherited_sockets`]). The listeners run on `serving`'s runtimes (the
/// [`server::ServingThread`]s, each accepting on every listener, or the caller's own); this future,
/// which loads and applies reloads, runs wherever the caller polls it.
pub async fn run(
    path: PathBuf,
    config: Config,
    inherited: Vec<std::net::TcpListener>,
    serving: Vec<tokio::runtime::Handle>,
) -> Result<Exit, RunError> {
    let watch_config = config.global.watch_config;
    let tls_files = config.tls_files();
    let pid_file = config.global.pid_file.clone();
    // Handlers first: a signal that arrives while listeners bind must not take the default action (for
    // SIGHUP and SIGUSR2, terminating the process).
    let mut upgrade = signal(SignalKind::user_defined2()).map_err(RunError::Signals)?;
    let mut hangup = signal(SignalKind::hangup()).map_err(RunError::Signals)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;
    let mut quit = signal(SignalKind::quit()).map_err(RunError::Signals)?;
    let mut reopen = signal(SignalKind::user_defined1()).map_err(RunError::Signals)?;
    // The watch starts before the listeners: its baseline is the files as loaded, so a change written
    // while the listeners start is still seen.
    let mut watcher = match watch_config.then(|| ConfigWatcher::new(&path, &tls_files)) {
        Some(Ok(watcher)) => Some(watcher),
        Some(Err(e)) => {
            warn!(config = %path.display(), error = %e, "cannot watch the config file; reload with SIGHUP");
            None
        }
        None => None,
    };
    let mut proxy = server::start_on(config, inherited, serving).await?;
    if let Some(pid_file) = &pid_file {
        if let Err(e) = std::fs::write(pid_file, format!("{}\n", std::process::id())) {
            warn!(pid_file = %pid_file.display(), error = %e, "cannot write the pid file");
        }
    }
    let mut admin_reloads = proxy.take_reload_requests();
    let mut background = JoinSet::new();
    if let Some(every) = systemd::watchdog_interval() {
        background.spawn(async move {
            let mut ticks = tokio::time::interval(every);
            loop {
                ticks.tick().await;
                systemd::notify("WATCHDOG=1");
            }
        });
    }
    systemd::notify("READY=1\nSTATUS=serving");
    info!(config = %path.display(), pid = std::process::id(), "fulcrum is serving");

    let immediate = loop {
        tokio::select! {
            _ = hangup.recv() => {
                let _ = reload(&mut proxy, &path, "SIGHUP");
                follow(&mut watcher, &proxy);
            }
            _ = upgrade.recv() => spawn_upgrade(&proxy, &path),
            _ = reopen.recv() => {
                info!("SIGUSR1: reopening the access log");
                proxy.live().reopen_access_log();
            }
            Some(answer) = next_admin_reload(&mut admin_reloads) => {
                let _ = answer.send(reload(&mut proxy, &path, "admin API"));
                follow(&mut watcher, &proxy);
            }
            () = changed(&mut watcher) => {
                let _ = reload(&mut proxy, &path, "config or certificate file changed");
                follow(&mut watcher, &proxy);
            }
            _ = terminate.recv() => break false,
            _ = interrupt.recv() => break false,
            _ = quit.recv() => break true,
        }
    };
    background.shutdown().await;
    systemd::notify("STOPPING=1");
    if let Some(pid_file) = &pid_file {
        let _ = std::fs::remove_file(pid_file);
    }
    if immediate {
        warn!("SIGQUIT: exiting without draining");
        return Ok(Exit::Immediate);
    }
    info!("shutting down: draining in-flight requests (a second signal exits at once)");
    tokio::select! {
        () = proxy.shutdown() => {
            info!("stopped");
            Ok(Exit::Graceful)
        }
        _ = terminate.recv() => second_signal(),
        _ = interrupt.recv() => second_signal(),
        _ = quit.recv() => second_signal(),
    }
}

fn second_signal() -> Result<Exit, RunError> {
    warn!("second signal: exiting without waiting for in-flight requests");
    Ok(Exit::Immediate)
}

/// SIGUSR2: start the binary at our path (a new version, once replaced on disk) on our listening sockets.
fn spawn_upgrade(proxy: &RunningProxy, path: &Path) {
    let program = match std::env::current_exe() {
        Ok(program) => program,
        Err(e) => {
            error!(error = %e, "upgrade: cannot find this binary's path");
            return;
        }
    };
    match proxy.spawn_upgrade(&program, path) {
        Ok(pid) => info!(
            new_pid = pid,
            program = %program.display(),
            "upgrade: started the new process on the same sockets; send SIGTERM to this one once it serves"
        ),
        Err(e) => error!(error = %e, "upgrade: cannot start the new process"),
    }
}

async fn next_admin_reload(
    requests: &mut Option<tokio::sync::mpsc::Receiver<crate::admin::ReloadRequest>>,
) -> Option<crate::admin::ReloadRequest> {
    match requests {
        Some(requests) => requests.recv().await,
        None => std::future::pending().await,
    }
}

/// Points the watcher at the files the config now in force names (certificates may have moved).
fn follow(watcher: &mut Option<ConfigWatcher>, proxy: &RunningProxy) {
    if let Some(watcher) = watcher {
        watcher.follow(&proxy.live().snapshot().config.tls_files());
    }
}

async fn changed(watcher: &mut Option<ConfigWatcher>) {
    match watcher {
        Some(watcher) => watcher.changed().await,
        None => std::future::pending().await,
    }
}

/// Loads, validates and applies the config file; a bad file changes nothing and is logged with its file,
/// line and key. Returns the error text for callers that report it (the admin API).
pub fn reload(proxy: &mut RunningProxy, path: &Path, trigger: &str) -> Result<(), String> {
    systemd::notify("RELOADING=1");
    let live = Arc::clone(proxy.live());
    let result = match Config::load(path) {
        Err(e) => Err(e.to_string()),
        Ok(config) => {
            for warning in &config.warnings {
                warn!("{warning}");
            }
            proxy.reload(config).map_err(|e| e.to_string())
        }
    };
    match &result {
        Ok(()) => {
            live.reload_succeeded();
            info!(trigger, config = %path.display(), "config reloaded");
        }
        Err(e) => {
            live.reload_failed();
            error!(trigger, "reload refused, old config keeps serving: {e}");
        }
    }
    systemd::notify("READY=1\nSTATUS=serving");
    result
}
