//! A listening socket's accept loop side: new connections come out registered with the serving runtime
//! but not assumed readable.
//!
//! tokio's `TcpListener::accept` marks each accepted socket readable and writable before the driver has
//! said so, so hyper's first read of a new connection is a `recvfrom` made at once. Under load a client's
//! request is usually not there yet when its connection is accepted (wrk connects, then writes), and that
//! read returns `EAGAIN`: a system call per connection for nothing. nginx (without `deferred`) waits for
//! the socket's first readable event before it reads, and so does a stream registered through
//! `TcpStream::from_std`.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// One serving runtime's handle on a listening socket.
#[derive(Debug)]
pub struct Acceptor {
    listener: AsyncFd<mio::net::TcpListener>,
}

impl Acceptor {
    /// Registers a non-blocking listening socket with the current tokio runtime's I/O driver.
    pub fn from_std(listener: std::net::TcpListener) -> io::Result<Self> {
        let listener = mio::net::TcpListener::from_std(listener);
        // Deprecated because an arbitrary `AsRawFd` may close or swap its descriptor while registered
        // (tokio#8587); its replacement is `unsafe`, which this crate forbids. A mio listener owns its
        // descriptor and returns that one for its whole life, which is the condition the unsafe form asks.
        #[allow(deprecated)]
        let listener = AsyncFd::with_interest(listener, Interest::READABLE)?;
        Ok(Acceptor { listener })
    }

    /// The next connection, registered with the current runtime; its first read waits for the driver's
    /// readable event. Cancel safe: a connection is only taken from the kernel's queue when it is returned.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        loop {
            let mut ready = self.listener.readable().await?;
            // `try_io` clears the readiness when `accept4` says `EAGAIN`, so the loop then waits for the
            // driver's next event; after a connection the readiness stays, and the next call tries again.
            if let Ok(accepted) = ready.try_io(|listener| listener.get_ref().accept()) {
                let (stream, peer) = accepted?;
                // mio accepted it with `SOCK_NONBLOCK | SOCK_CLOEXEC` (one `accept4`, no `fcntl`).
                return Ok((TcpStream::from_std(stream.into())?, peer));
            }
        }
    }
}

impl AsFd for Acceptor {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.listener.get_ref().as_fd()
    }
}

#[cfg(test)]
mod tests {
    use std::future::{poll_fn, Future};
    use std::task::Poll;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn acceptor() -> (Acceptor, SocketAddr) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("non-blocking");
        let addr = listener.local_addr().expect("address");
        (Acceptor::from_std(listener).expect("register"), addr)
    }

    #[tokio::test]
    async fn a_new_connection_is_not_taken_for_readable_before_its_first_bytes_arrive() {
        let (acceptor, addr) = acceptor();
        let mut client = TcpStream::connect(addr).await.expect("connect");
        let (mut server, peer) = acceptor.accept().await.expect("accept");
        assert_eq!(peer, client.local_addr().expect("client address"));
        // tokio's own `accept` would answer Ready here (and the read that followed, EAGAIN).
        let first = poll_fn(|cx| Poll::Ready(server.poll_read_ready(cx).is_ready())).await;
        assert!(!first, "readable before anything was sent");
        client
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let mut got = [0; 18];
        server.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"GET / HTTP/1.1\r\n\r\n");
        server.write_all(b"ok").await.expect("write back");
        let mut answer = [0; 2];
        client.read_exact(&mut answer).await.expect("read back");
        assert_eq!(&answer, b"ok");
    }

    #[tokio::test]
    async fn an_accept_given_up_takes_no_connection_from_the_queue() {
        let (acceptor, addr) = acceptor();
        let client = TcpStream::connect(addr).await.expect("connect");
        let expected = client.local_addr().expect("client address");
        {
            // Polled once with the connection queued, then dropped, as `select!` drops it on shutdown.
            let waiting = acceptor.accept();
            tokio::pin!(waiting);
            if let Poll::Ready(accepted) =
                poll_fn(|cx| Poll::Ready(waiting.as_mut().poll(cx))).await
            {
                // Taken at once: then it was handed out, not lost.
                assert_eq!(accepted.expect("accept").1, expected);
                return;
            }
        }
        let accepted = tokio::time::timeout(Duration::from_secs(5), acceptor.accept())
            .await
            .expect("the queued connection is still there")
            .expect("accept");
        assert_eq!(accepted.1, expected);
    }

    #[tokio::test]
    async fn connections_queued_together_are_each_accepted() {
        let (acceptor, addr) = acceptor();
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(TcpStream::connect(addr).await.expect("connect"));
        }
        let mut peers = Vec::new();
        for _ in 0..3 {
            peers.push(acceptor.accept().await.expect("accept").1);
        }
        let mut expected: Vec<_> = clients
            .iter()
            .map(|c| c.local_addr().expect("address"))
            .collect();
        expected.sort();
        peers.sort();
        assert_eq!(peers, expected);
    }
}
