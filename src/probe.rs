//! `fulcrum probe URL`: one plain-HTTP GET that succeeds on a 2xx answer, so an image with no shell and
//! no curl (a `FROM scratch` container) can still health-check the admin API.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The URL is not `http://host:port/path`.
    #[error("`{url}` is not a plain http:// URL with a host ({why})")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The host name did not resolve, or no address accepted a connection in time.
    #[error("cannot connect to {target}: {why}")]
    Connect {
        /// `host:port`.
        target: String,
        /// The last error seen.
        why: String,
    },
    /// The connection failed or timed out after it was made.
    #[error("{target}: {source}")]
    Io {
        /// `host:port`.
        target: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The answer does not start with an HTTP status line.
    #[error("{target}: not an HTTP answer: {head:?}")]
    NotHttp {
        /// `host:port`.
        target: String,
        /// The first bytes received.
        head: String,
    },
    /// The server answered with a status other than 2xx.
    #[error("{target}: answered {status}")]
    Status {
        /// `host:port`.
        target: String,
        /// The status code.
        status: u16,
    },
}

/// Where a probe goes: host, port and request target of a plain-HTTP URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    /// Host name or address, without brackets for IPv6.
    pub host: String,
    /// TCP port; 80 when the URL names none.
    pub port: u16,
    /// Path and query; `/` when the URL has none.
    pub path: String,
}

impl ProbeTarget {
    /// Parses `http://host[:port][/path]` (IPv6 hosts in brackets).
    pub fn parse(url: &str) -> Result<ProbeTarget, ProbeError> {
        let bad = |why| ProbeError::Url {
            url: url.to_string(),
            why,
        };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("only http:// is supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err(bad("user info is not supported"));
        }
        let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
            let (host, after) = inner.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            Some(port) => port.parse().map_err(|_| bad("the port is not a number"))?,
            None => 80,
        };
        if path
            .chars()
            .any(|c| c.is_ascii_whitespace() || c.is_ascii_control())
        {
            return Err(bad("the path holds spaces or control characters"));
        }
        Ok(ProbeTarget {
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Sends `GET url` and returns the status code when it is 2xx; the whole probe (resolve, connect, send,
/// read the status line) takes at most about `timeout`.
pub fn probe(url: &str, timeout: Duration) -> Result<u16, ProbeError> {
    let target = ProbeTarget::parse(url)?;
    let authority = target.authority();
    let deadline = Instant::now() + timeout;
    let mut stream = connect(&target, &authority, deadline)?;
    let io = |source| ProbeError::Io {
        target: authority.clone(),
        source,
    };
    let left = remaining(deadline).map_err(io)?;
    stream.set_read_timeout(Some(left)).map_err(io)?;
    stream.set_write_timeout(Some(left)).map_err(io)?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: fulcrum-probe\r\nConnection: close\r\n\r\n",
        target.path
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut head = Vec::with_capacity(64);
    let mut buffer = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 1024 {
        stream
            .set_read_timeout(Some(remaining(deadline).map_err(io)?))
            .map_err(io)?;
        let read = stream.read(&mut buffer).map_err(io)?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&buffer[..read]);
    }
    let status = status_code(&head).ok_or_else(|| ProbeError::NotHttp {
        target: authority.clone(),
        head: String::from_utf8_lossy(&head[..head.len().min(80)]).into_owned(),
    })?;
    if (200..300).contains(&status) {
        Ok(status)
    } else {
        Err(ProbeError::Status {
            target: authority,
            status,
        })
    }
}

fn connect(
    target: &ProbeTarget,
    authority: &str,
    deadline: Instant,
) -> Result<TcpStream, ProbeError> {
    let failed = |why: String| ProbeError::Connect {
        target: authority.to_string(),
        why,
    };
    let addrs = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| failed(e.to_string()))?;
    let mut last = String::from("the host name has no address");
    for addr in addrs {
        let left = remaining(deadline).map_err(|e| failed(e.to_string()))?;
        match TcpStream::connect_timeout(&addr, left) {
            Ok(stream) => return Ok(stream),
            Err(error) => last = error.to_string(),
        }
    }
    Err(failed(last))
}

fn remaining(deadline: Instant) -> std::io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the probe timed out",
        ))
    } else {
        Ok(left)
    }
}

/// The status code of an `HTTP/1.x NNN ...` status line at the start of `head`.
fn status_code(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok().filter(|c| (100..600).contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(host: &str, port: u16, path: &str) -> ProbeTarget {
        ProbeTarget {
            host: host.into(),
            port,
            path: path.into(),
        }
    }

    #[test]
    fn parses_host_port_and_path() {
        assert_eq!(
            ProbeTarget::parse("http://127.0.0.1:9901/status").ok(),
            Some(target("127.0.0.1", 9901, "/status"))
        );
        assert_eq!(
            ProbeTarget::parse("http://localhost").ok(),
            Some(target("localhost", 80, "/"))
        );
        assert_eq!(
            ProbeTarget::parse("http://[::1]:9901/status?x=1").ok(),
            Some(target("::1", 9901, "/status?x=1"))
        );
    }

    #[test]
    fn refuses_what_it_cannot_send() {
        for url in [
            "https://127.0.0.1/",
            "127.0.0.1:9901",
            "http://:9901/",
            "http://host:port/",
            "http://[::1/",
            "http://a@b/",
            "http://h/a b",
        ] {
            assert!(ProbeTarget::parse(url).is_err(), "{url} accepted");
        }
    }

    #[test]
    fn reads_the_status_code_of_a_status_line() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(status_code(b"HTTP/1.0 503 Busy\r\n"), Some(503));
        assert_eq!(status_code(b"HTTP/1.1 204\r\n"), Some(204));
        assert_eq!(status_code(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_code(b"HTTP/1.1 2000 OK\r\n"), None);
        assert_eq!(status_code(b""), None);
    }
}
