//! nginx `upstream` blocks and `proxy_pass` targets as `[upstream.NAME]` tables.

use super::output::{key, string, Table};
use super::parse::Directive;
use super::report::Report;

/// An upstream being written.
#[derive(Debug)]
pub struct UpstreamOut {
    /// Its name.
    pub name: String,
    /// Its keys (`servers` is written from `servers`).
    pub table: Table,
    /// The server entries, as TOML inline tables.
    pub servers: Vec<String>,
    /// Keys set from locations (`proxy_*_timeout`, ...): the value and where it was set, so a second
    /// location asking another value is reported.
    pub from_locations: Vec<(String, String, String)>,
}

impl UpstreamOut {
    /// An upstream called `name`, from `origin`.
    pub fn new(name: &str, origin: &str) -> Self {
        UpstreamOut {
            name: name.to_string(),
            table: Table::new(format!("[upstream.{}]", key(name)), origin),
            servers: Vec::new(),
            from_locations: Vec::new(),
        }
    }

    /// The table's text, servers included.
    pub fn write(&self, out: &mut String) {
        let mut table = self.table.clone();
        let list = if self.servers.is_empty() {
            "[]".to_string()
        } else {
            format!("[\n  {},\n]", self.servers.join(",\n  "))
        };
        table.set("servers", list);
        table.write(out);
    }
}

/// `upstream NAME { ... }`.
pub fn upstream_block(d: &Directive, report: &mut Report) -> UpstreamOut {
    let name = d.args.first().cloned().unwrap_or_default();
    let mut out = UpstreamOut::new(&name, &format!("nginx upstream at {}", d.origin));
    report.exact(d);
    for inner in d.block.as_deref().unwrap_or(&[]) {
        match inner.name.as_str() {
            "server" => {
                if let Some(entry) = server_entry(inner, report) {
                    out.servers.push(entry);
                }
            }
            "least_conn" => {
                out.table.set("strategy", string("least_conn"));
                report.exact(inner);
            }
            "ip_hash" => {
                out.table.set("strategy", string("ip_hash"));
                out.table.set("ip_hash_prefix", "24");
                report.exact(inner);
            }
            "random" => {
                out.table.set("strategy", string("weighted"));
                if inner.args.is_empty() {
                    report.exact(inner);
                } else {
                    report.differ(
                        inner,
                        "`random two` is written as weighted random over all servers (no second pick by load)",
                    );
                }
            }
            "least_time" => {
                out.table.set("strategy", string("least_time"));
                match inner.args.first().map(String::as_str) {
                    Some("last_byte") => {
                        out.table.set("least_time", string("last_byte"));
                        report.exact(inner);
                    }
                    Some("header") | None => report.exact(inner),
                    Some(other) => report.differ(
                        inner,
                        format!("`{other}` is not a least_time mode here; timed to the header"),
                    ),
                }
            }
            "hash" => hash(inner, &mut out, report),
            "keepalive" => match inner.args.first().and_then(|n| n.parse::<u64>().ok()) {
                Some(n) => {
                    out.table.set("keepalive", n.to_string());
                    report.differ(
                        inner,
                        "nginx keeps this many idle connections per worker for the whole upstream; fulcrum per server and serving thread",
                    );
                }
                None => report.unsupported(inner, "expects a number"),
            },
            "keepalive_timeout" => match inner.args.first() {
                Some(t) => {
                    out.table.set("keepalive_timeout", string(t));
                    report.exact(inner);
                }
                None => report.unsupported(inner, "expects a duration"),
            },
            "zone" => report.ignored(
                inner,
                "fulcrum's serving threads share server state without a shared-memory zone",
            ),
            "queue" => match inner.args.first().and_then(|n| n.parse::<u64>().ok()) {
                Some(n) => {
                    out.table.set("queue", n.to_string());
                    for arg in &inner.args[1..] {
                        if let Some(t) = arg.strip_prefix("timeout=") {
                            out.table.set("queue_timeout", string(t));
                        }
                    }
                    report.differ(inner, "a queue timeout answers 503 here (nginx Plus: 502)");
                }
                None => report.unsupported(inner, "expects a number"),
            },
            _ => report.unsupported(inner, "not an upstream directive fulcrum knows"),
        }
    }
    out
}

/// `hash KEY [consistent]`.
fn hash(d: &Directive, out: &mut UpstreamOut, report: &mut Report) {
    let Some(text) = d.args.first() else {
        report.unsupported(d, "expects a key");
        return;
    };
    let key = hash_key(text);
    let Some(key) = key else {
        report.unsupported(
            d,
            format!("the key `{text}` has no equivalent (client_ip, $http_X, $cookie_X, $arg_X, $request_uri)"),
        );
        return;
    };
    out.table.set("strategy", string("consistent_hash"));
    out.table.set("hash_key", string(&key));
    let mut why = Vec::new();
    if d.args.get(1).map(String::as_str) != Some("consistent") {
        why.push(
            "without `consistent` nginx maps keys by modulo; fulcrum always uses a consistent ring (ketama), so which server a key goes to differs",
        );
    }
    if text == "$request_uri" {
        why.push("hashed on the path (`path`); nginx's $request_uri includes the query");
    }
    if why.is_empty() {
        report.exact(d);
    } else {
        report.differ(d, why.join("; "));
    }
}

/// An nginx variable as a fulcrum key (`hash_key`, rate-limit `key`).
pub fn hash_key(text: &str) -> Option<String> {
    if text == "$remote_addr" || text == "$binary_remote_addr" {
        return Some("client_ip".into());
    }
    if text == "$request_uri" || text == "$uri" {
        return Some("path".into());
    }
    if let Some(name) = text.strip_prefix("$http_") {
        return Some(format!("header:{}", name.replace('_', "-")));
    }
    if let Some(name) = text.strip_prefix("$cookie_") {
        return Some(format!("cookie:{name}"));
    }
    if let Some(name) = text.strip_prefix("$arg_") {
        return Some(format!("query:{name}"));
    }
    None
}

/// `server ADDRESS [params];` as an inline table.
fn server_entry(d: &Directive, report: &mut Report) -> Option<String> {
    let Some(address) = d.args.first() else {
        report.unsupported(d, "expects an address");
        return None;
    };
    if address.starts_with("unix:") {
        report.unsupported(
            d,
            "UNIX-domain sockets are not supported as upstream servers",
        );
        return None;
    }
    let addr = if address.starts_with('[') {
        if address.contains("]:") {
            address.clone()
        } else {
            format!("{address}:80")
        }
    } else if address.contains(':') {
        address.clone()
    } else {
        format!("{address}:80")
    };
    let mut fields = vec![format!("addr = {}", string(&addr))];
    let mut why = Vec::new();
    let mut resolve = false;
    for param in &d.args[1..] {
        let (name, value) = param.split_once('=').unwrap_or((param.as_str(), ""));
        match name {
            "weight" | "max_fails" | "max_conns" if value.parse::<u64>().is_ok() => {
                fields.push(format!("{name} = {value}"))
            }
            "fail_timeout" => fields.push(format!("fail_timeout = {}", string(value))),
            "backup" => fields.push("backup = true".into()),
            "down" => {
                fields.push("drain = true".into());
            }
            "resolve" => resolve = true,
            "service" => fields.push(format!("service = {}", string(value))),
            "slow_start" => {
                why.push(format!("slow_start={value} is per pool here (`slow_start` on the upstream); not written"));
            }
            "route" | "drain" => why.push(format!("`{param}` (nginx Plus) is not translated")),
            _ => {
                report.unsupported(d, format!("unknown server parameter `{param}`"));
                return None;
            }
        }
    }
    // fulcrum resolves names when the config loads, and refuses one that does not resolve; a name that
    // does not resolve where the import runs (a container's service name) is re-resolved instead.
    let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
    let is_ip = host
        .trim_matches(['[', ']'])
        .parse::<std::net::IpAddr>()
        .is_ok();
    if !resolve && !is_ip && std::net::ToSocketAddrs::to_socket_addrs(addr.as_str()).is_err() {
        resolve = true;
        why.push(format!(
            "`{host}` does not resolve here: written with resolve = true (re-resolved while running; nginx would refuse to start)"
        ));
    }
    if resolve {
        fields.push("resolve = true".into());
    }
    if why.is_empty() {
        report.exact(d);
    } else {
        report.differ(d, why.join("; "));
    }
    Some(format!("{{ {} }}", fields.join(", ")))
}

/// An upstream for `proxy_pass http://HOST:PORT` naming no `upstream` block: one server.
pub fn implicit(
    name: &str,
    authority: &str,
    tls: bool,
    d: &Directive,
    report: &mut Report,
) -> UpstreamOut {
    let mut out = UpstreamOut::new(name, &format!("nginx proxy_pass at {}", d.origin));
    let addr = if tls {
        format!("https://{authority}")
    } else if authority.contains(':') && !authority.ends_with(']') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(h, _)| h)
        .trim_matches(['[', ']']);
    let resolves = host.parse::<std::net::IpAddr>().is_ok()
        || std::net::ToSocketAddrs::to_socket_addrs(&(host, 80)).is_ok();
    if resolves {
        out.servers.push(format!("{{ addr = {} }}", string(&addr)));
    } else {
        out.servers
            .push(format!("{{ addr = {}, resolve = true }}", string(&addr)));
        report.differ(
            d,
            format!("`{host}` does not resolve here: written with resolve = true (nginx would refuse to start)"),
        );
    }
    out
}
