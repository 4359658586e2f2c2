//! `listen` directives: the fulcrum listener each address becomes.

use super::output::{string, Table};
use super::parse::Directive;
use super::translate::{ListenerOut, Translator};

impl Translator {
    /// The listener at `addr` (made when new).
    pub fn listener(&mut self, addr: &str, d: &Directive) -> usize {
        if let Some(i) = self.listeners.iter().position(|l| l.addr == addr) {
            return i;
        }
        let mut table = Table::new("[[listener]]", format!("nginx listen at {}", d.origin));
        let port = addr.rsplit_once(':').map_or("", |(_, p)| p);
        let host = addr.rsplit_once(':').map_or("", |(h, _)| h);
        let name = if host == "0.0.0.0" {
            format!("port{port}")
        } else {
            format!(
                "{}_{port}",
                host.trim_matches(['[', ']']).replace([':', '.'], "_")
            )
        };
        let name = if self
            .listeners
            .iter()
            .any(|l| l.table.get("name") == Some(&string(&name)))
        {
            format!("{name}_{}", self.listeners.len())
        } else {
            name
        };
        table.set("name", string(&name));
        table.set("listen", string(addr));
        self.listeners.push(ListenerOut {
            addr: addr.to_string(),
            table,
            tls: false,
            certs: Vec::new(),
            servers: Vec::new(),
            default_server: None,
        });
        self.listeners.len() - 1
    }

    /// `listen ADDRESS [ssl] [http2] [default_server] [reuseport] ...`.
    pub(super) fn listen(&mut self, d: &Directive, server: usize) -> Option<usize> {
        let Some(address) = d.args.first() else {
            self.report.unsupported(d, "expects an address");
            return None;
        };
        if address.starts_with("unix:") {
            self.report
                .unsupported(d, "UNIX-domain listeners are not supported");
            return None;
        }
        let addr = if address.parse::<u16>().is_ok() {
            format!("0.0.0.0:{address}")
        } else if let Some(port) = address.strip_prefix("*:") {
            format!("0.0.0.0:{port}")
        } else if (address.starts_with('[') && !address.contains("]:"))
            || (!address.starts_with('[') && !address.contains(':'))
        {
            // An address without a port: nginx listens on 80.
            format!("{address}:80")
        } else {
            address.clone()
        };
        let index = self.listener(&addr, d);
        let mut why = Vec::new();
        let mut unsupported = Vec::new();
        let mut http2 = false;
        for param in &d.args[1..] {
            let name = param.split('=').next().unwrap_or("");
            match name {
                "ssl" => self.listeners[index].tls = true,
                "http2" => http2 = true,
                "default_server" | "default" => {
                    if self.listeners[index].default_server.is_none() {
                        self.listeners[index].default_server = Some(server);
                    }
                }
                "reuseport" => self.listeners[index].table.set("reuseport", "true"),
                "backlog" | "rcvbuf" | "sndbuf" | "deferred" | "fastopen" | "so_keepalive"
                | "bind" | "ipv6only" | "setfib" | "accept_filter" => {
                    why.push(format!("`{param}` is a socket option fulcrum does not set"));
                }
                "proxy_protocol" => {
                    unsupported.push("the PROXY protocol is not supported on listeners".to_string())
                }
                "http3" | "quic" => unsupported.push("HTTP/3 is not supported".to_string()),
                _ => {
                    // `nginx -t` refuses it too; most often a `;` is missing after the address.
                    if self.invalid.is_none() {
                        self.invalid = Some((
                            d.origin.clone(),
                            format!(
                                "invalid parameter \"{param}\" in \"listen\" (a missing \";\"?)"
                            ),
                        ));
                    }
                }
            }
        }
        if !http2 && self.listeners[index].tls {
            why.push("fulcrum also offers HTTP/2 (ALPN h2) on every TLS listener".into());
        }
        if http2 && !self.listeners[index].tls {
            why.push("fulcrum accepts HTTP/1.1 beside h2c on a plain listener".into());
        }
        if !unsupported.is_empty() {
            self.report.unsupported(d, unsupported.join("; "));
        } else if why.is_empty() {
            self.report.exact(d);
        } else {
            self.report.differ(d, why.join("; "));
        }
        Some(index)
    }
}
