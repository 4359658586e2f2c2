//! systemd's notify protocol (`Type=notify`): datagrams to `$NOTIFY_SOCKET`, and watchdog pings when
//! `WatchdogSec` is set. Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op.

use std::env;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use tracing::debug;

/// Sends `state` (e.g. `READY=1`) to the service manager; returns whether it was sent.
pub fn notify(state: &str) -> bool {
    let Some(path) = env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    let Ok(socket) = UnixDatagram::unbound() else {
        return false;
    };
    let bytes = path.as_encoded_bytes();
    let sent = match bytes.strip_prefix(b"@") {
        Some(name) => send_abstract(&socket, name, state),
        None => socket.send_to(state.as_bytes(), &path).is_ok(),
    };
    if !sent {
        debug!(state, "could not notify the service manager");
    }
    sent
}

#[cfg(target_os = "linux")]
fn send_abstract(socket: &UnixDatagram, name: &[u8], state: &str) -> bool {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name)
        .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
        .is_ok()
}

#[cfg(not(target_os = "linux"))]
fn send_abstract(_socket: &UnixDatagram, _name: &[u8], _state: &str) -> bool {
    false
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, when the watchdog is meant for this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
