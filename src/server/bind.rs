//! A listener's socket: bound with the backlog and the reuse options a hand-off to a new binary needs.

use std::io;
use std::net::SocketAddr;

use tokio::net::TcpSocket;

/// Pending connections the kernel queues per listener (nginx's default backlog on Linux is 511).
const BACKLOG: u32 = 1024;

/// Binds `addr`; with `reuseport`, another process may bind the same address (a new binary during an
/// upgrade) and the kernel spreads new connections over both. The socket is returned unregistered, for
/// each serving runtime to register a duplicate of; call within a tokio runtime (any).
pub fn bind(addr: SocketAddr, reuseport: bool) -> io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    if reuseport {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(BACKLOG)?.into_std()
}
