//! What each nginx directive becomes: settings kept in a [`Scope`] (inherited into inner blocks), then
//! written onto the listeners, upstreams, zones and routes they govern.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::output::{string, Table};
use super::parse::Directive;
use super::translate::Translator;
use super::upstream::{self, UpstreamOut};

/// Which block a setting was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// `http` (or a snippet's top level).
    Http,
    /// `server`.
    Server,
    /// `location`.
    Location,
}

/// Settings in effect in a block: single values (an inner block's replaces the outer's) and lists
/// (`proxy_set_header`, `add_header`, ...: any of them in a block replaces the whole outer list, as
/// nginx inherits them).
#[derive(Debug, Clone, Default)]
pub struct Scope {
    values: BTreeMap<String, (String, Directive)>,
    lists: HashMap<&'static str, Vec<Directive>>,
    fresh: HashSet<&'static str>,
}

impl Scope {
    /// Ends the block's own settings: lists set inside the next (inner) block replace these.
    pub fn close_level(&mut self) {
        self.fresh.clear();
    }

    fn push(&mut self, list: &'static str, d: &Directive) {
        if self.fresh.insert(list) {
            self.lists.entry(list).or_default().clear();
        }
        self.lists.entry(list).or_default().push(d.clone());
    }

    fn list(&self, list: &str) -> &[Directive] {
        self.lists.get(list).map_or(&[], Vec::as_slice)
    }

    fn set(&mut self, key: impl Into<String>, value: String, d: &Directive) {
        self.values.insert(key.into(), (value, d.clone()));
    }

    fn value(&self, key: &str) -> Option<&(String, Directive)> {
        self.values.get(key)
    }

    fn with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a (String, Directive))> + 'a {
        self.values
            .iter()
            .filter_map(move |(k, v)| Some((k.strip_prefix(prefix)?, v)))
    }
}

/// One setting directive (not a block) in `http`, `server` or `location`.
pub fn setting(t: &mut Translator, d: &Directive, scope: &mut Scope, level: Level) {
    let name = d.name.as_str();
    let first = d.args.first().map(String::as_str).unwrap_or("");
    let report = &mut t.report;
    match name {
        // Listener-wide.
        "client_header_timeout"
        | "client_body_timeout"
        | "send_timeout"
        | "lingering_time"
        | "lingering_timeout" => {
            scope.set(format!("listener:{name}"), string(first), d);
            listener_level_note(t, d, level);
        }
        "keepalive_timeout" => {
            scope.set("listener:keepalive_timeout", string(first), d);
            if d.args.len() > 1 {
                report.differ(
                    d,
                    "the second value (a Keep-Alive: timeout= header) is not sent",
                );
            }
            listener_level_note(t, d, level);
        }
        "keepalive_requests" | "http2_max_concurrent_streams" => match first.parse::<u64>() {
            Ok(n) => {
                scope.set(format!("listener:{name}"), n.to_string(), d);
                listener_level_note(t, d, level);
            }
            Err(_) => report.unsupported(d, "expects a number"),
        },
        "large_client_header_buffers" => {
            let count = first.parse::<u64>().ok();
            let size = d
                .args
                .get(1)
                .and_then(|s| crate::config::values::parse_size(s).ok());
            match (count, size) {
                (Some(count), Some(size)) => {
                    let head = (count * size).max(8 * 1024);
                    scope.set("listener:http1_max_header_size", head.to_string(), d);
                    scope.set("listener:max_uri_size", size.max(256).to_string(), d);
                    report.differ(
                        d,
                        format!("nginx limits each header line and the request line to one buffer; fulcrum limits the whole head to {head} bytes and the request target to {} bytes", size.max(256)),
                    );
                    listener_level_note(t, d, level);
                }
                _ => report.unsupported(d, "expects a number and a size"),
            }
        }
        "limit_conn" => {
            let zone_is_address = t.conn_zones.get(first).copied().unwrap_or(false);
            match (zone_is_address, d.args.get(1).and_then(|n| n.parse::<u64>().ok())) {
                (true, Some(n)) => {
                    scope.set("listener:max_connections_per_client", n.to_string(), d);
                    report.differ(
                        d,
                        "written as the listener's max_connections_per_client: it counts open connections per client address on the whole listener, and closes the one over the limit at once (nginx counts requests in progress in this block and answers 503)",
                    );
                }
                (false, _) => report.unsupported(
                    d,
                    format!("zone `{first}` is not keyed by the client address ($binary_remote_addr), the only limit_conn key here"),
                ),
                _ => report.unsupported(d, "expects a zone and a number"),
            }
        }
        "limit_conn_zone" => {
            let zone = d
                .args
                .iter()
                .find_map(|a| a.strip_prefix("zone="))
                .unwrap_or("");
            let name = zone.split(':').next().unwrap_or("").to_string();
            let by_address = matches!(first, "$binary_remote_addr" | "$remote_addr");
            t.conn_zones.insert(name, by_address);
            if by_address {
                t.report.exact(d);
            } else {
                t.report.unsupported(
                    d,
                    format!("the key `{first}` has no equivalent (client address only)"),
                );
            }
        }
        "limit_conn_status" | "limit_conn_log_level" | "limit_conn_dry_run" => report.ignored(
            d,
            "fulcrum closes a connection over max_connections_per_client without an answer",
        ),
        // Upstream-wide, from wherever they are written.
        "proxy_connect_timeout" | "proxy_read_timeout" | "proxy_send_timeout" => {
            let key = match name {
                "proxy_connect_timeout" => "connect_timeout",
                "proxy_read_timeout" => "read_timeout",
                _ => "send_timeout",
            };
            scope.set(format!("upstream:{key}"), string(first), d);
            report.exact(d);
        }
        "proxy_next_upstream" => {
            let mut words = Vec::new();
            let mut dropped = Vec::new();
            for word in &d.args {
                if crate::config::RetryOn::WORDS.iter().any(|(w, _)| w == word) {
                    words.push(string(word));
                } else {
                    dropped.push(word.clone());
                }
            }
            scope.set("upstream:retry_on", format!("[{}]", words.join(", ")), d);
            if dropped.is_empty() {
                report.exact(d);
            } else {
                report.differ(
                    d,
                    format!("{} cannot be retried here; left out", dropped.join(", ")),
                );
            }
        }
        "proxy_next_upstream_tries" => match first.parse::<u64>() {
            Ok(0) => report.exact(d),
            Ok(n) => {
                scope.set("upstream:retries", (n - 1).to_string(), d);
                report.exact(d);
            }
            Err(_) => report.unsupported(d, "expects a number"),
        },
        "proxy_next_upstream_timeout" => {
            report.unsupported(d, "retries are bounded by count (retries), not by time")
        }
        "proxy_ssl_verify" => {
            scope.set("upstream:tls_verify", (first == "on").to_string(), d);
            report.exact(d);
        }
        "proxy_ssl_trusted_certificate" => {
            let path = t.base.join(first).display().to_string();
            scope.set("upstream:ca_file", string(&path), d);
            t.report.exact(d);
        }
        "proxy_ssl_name" if !first.contains('$') => {
            scope.set("upstream:tls_server_name", string(first), d);
            report.exact(d);
        }
        "proxy_ssl_server_name" => {
            report.ignored(d, "fulcrum always sends SNI to https:// servers")
        }
        // Route-wide.
        "client_max_body_size" => {
            let size = if first == "0" {
                report.differ(d, "0 (no limit) is written as 1024g");
                "1024g".to_string()
            } else {
                report.exact(d);
                first.to_string()
            };
            if level == Level::Http {
                t.global.set("max_body_size", string(&size));
            } else {
                scope.set("route:max_body_size", string(&size), d);
            }
        }
        // Buffering (on by default in both).
        "proxy_buffering" | "proxy_request_buffering" => match first {
            "on" | "off" => {
                let key = if name == "proxy_buffering" {
                    "route:buffering"
                } else {
                    "route:request_buffering"
                };
                scope.set(key, (first == "on").to_string(), d);
                report.exact(d);
            }
            _ => report.unsupported(d, "expects on or off"),
        },
        "proxy_max_temp_file_size" => {
            scope.set("upstream:max_temp_file_size", string(first), d);
            report.exact(d);
        }
        "proxy_temp_path" | "client_body_temp_path" => {
            let path = t.base.join(first).display().to_string();
            t.global.set("temp_path", string(&path));
            if d.args.len() > 1 {
                report.differ(d, "one temp_path for request and response bodies; `levels` has no use (temp files have no name)");
            } else {
                report.differ(d, "one temp_path for request and response bodies");
            }
        }
        "client_body_buffer_size"
        | "proxy_buffers"
        | "proxy_buffer_size"
        | "proxy_busy_buffers_size"
        | "proxy_temp_file_write_size" => report.differ(
            d,
            "one buffer_size per upstream (default 64k) holds each direction's body in memory before the temp file; not set from this",
        ),
        "access_log" => access_log(t, d, scope, level),
        "log_format" => {
            t.log_formats.insert(first.to_string());
            report.differ(d, "fulcrum writes `combined` (with rt= uaddr= urt= rid= rl= added) or json, not this format");
        }
        "proxy_set_header" | "add_header" | "proxy_hide_header" | "limit_req" => {
            let list = match name {
                "proxy_set_header" => "proxy_set_header",
                "add_header" => "add_header",
                "proxy_hide_header" => "proxy_hide_header",
                _ => "limit_req",
            };
            scope.push(list, d);
            if list == "proxy_set_header" {
                classify_set_header(t, d);
            }
        }
        "limit_req_status" => match first.parse::<u16>() {
            Ok(status) if (400..=599).contains(&status) => {
                scope.set("limit_req_status", status.to_string(), d);
                report.exact(d);
            }
            _ => report.unsupported(d, "expects a status from 400 to 599"),
        },
        "limit_req_dry_run" => {
            scope.set("limit_req_dry_run", (first == "on").to_string(), d);
            report.exact(d);
        }
        "limit_req_zone" => limit_req_zone(t, d),
        "limit_req_log_level" => report.ignored(d, "refusals are logged at warn"),
        "proxy_http_version" => {
            if first == "1.1" {
                report.exact(d);
            } else {
                report.differ(
                    d,
                    "fulcrum speaks HTTP/1.1 to upstreams (or h2 with `protocol`)",
                );
            }
        }
        "set_real_ip_from" => {
            let mut list: Vec<String> = t
                .global
                .get("trusted_proxies")
                .map(|v| {
                    v.trim_matches(['[', ']'])
                        .split(", ")
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            list.retain(|s| !s.is_empty());
            list.push(string(first));
            t.global
                .set("trusted_proxies", format!("[{}]", list.join(", ")));
            if level == Level::Http {
                t.report.exact(d);
            } else {
                t.report
                    .differ(d, "trusted_proxies is global here, not per server");
            }
        }
        "real_ip_header" => {
            if first.eq_ignore_ascii_case("X-Forwarded-For") {
                report.exact(d);
            } else {
                report.unsupported(d, "only X-Forwarded-For names the client here");
            }
        }
        "real_ip_recursive" => {
            if first == "on" {
                report.exact(d);
            } else {
                report.differ(d, "fulcrum always skips every trusted address from the right (real_ip_recursive on)");
            }
        }
        "resolver" => {
            let mut servers = Vec::new();
            let mut table = Table::new("[resolver]", format!("nginx resolver at {}", d.origin));
            for arg in &d.args {
                if let Some(valid) = arg.strip_prefix("valid=") {
                    table.set("valid", string(valid));
                } else if arg == "ipv6=off" {
                    table.set("ipv6", "false");
                } else if !arg.contains('=') {
                    servers.push(string(arg));
                }
            }
            table.set("servers", format!("[{}]", servers.join(", ")));
            if let Some(old) = &t.resolver {
                for (k, v) in &old.keys {
                    if table.get(k).is_none() {
                        table.set(k, v.clone());
                    }
                }
            }
            t.resolver = Some(table);
            t.report.exact(d);
        }
        "resolver_timeout" => {
            let table = t.resolver.get_or_insert_with(|| {
                Table::new(
                    "[resolver]",
                    format!("nginx resolver_timeout at {}", d.origin),
                )
            });
            table.set("timeout", string(first));
            t.report.exact(d);
        }
        // TLS.
        "ssl_certificate" => scope.push("ssl_certificate", d),
        "ssl_certificate_key" => scope.push("ssl_certificate_key", d),
        "ssl_protocols" => {
            let asked: HashSet<&str> = d.args.iter().map(String::as_str).collect();
            let ours: HashSet<&str> = ["TLSv1.2", "TLSv1.3"].into_iter().collect();
            if asked == ours {
                report.exact(d);
            } else {
                report.differ(
                    d,
                    "fulcrum always offers TLS 1.2 and 1.3, and never older versions",
                );
            }
        }
        "ssl_ciphers"
        | "ssl_prefer_server_ciphers"
        | "ssl_ecdh_curve"
        | "ssl_dhparam"
        | "ssl_conf_command" => report.ignored(
            d,
            "rustls offers only modern AEAD cipher suites and curves, server order first",
        ),
        "ssl_session_cache"
        | "ssl_session_timeout"
        | "ssl_session_tickets"
        | "ssl_buffer_size"
        | "ssl_early_data" => report.ignored(
            d,
            "sessions resume by tickets whose key rotates per session_ticket_lifetime (1h)",
        ),
        "ssl" => report.unsupported(d, "write `listen ... ssl` instead"),
        "error_log" => report.ignored(d, "fulcrum logs to stderr (RUST_LOG chooses the level)"),
        // No effect on a proxy that serves no files and streams bodies.
        "sendfile"
        | "tcp_nopush"
        | "tcp_nodelay"
        | "default_type"
        | "charset"
        | "server_tokens"
        | "types_hash_max_size"
        | "types_hash_bucket_size"
        | "server_names_hash_bucket_size"
        | "server_names_hash_max_size"
        | "variables_hash_max_size"
        | "variables_hash_bucket_size"
        | "client_header_buffer_size"
        | "open_file_cache"
        | "open_file_cache_valid"
        | "open_file_cache_min_uses"
        | "open_file_cache_errors"
        | "reset_timedout_connection"
        | "log_not_found"
        | "absolute_redirect"
        | "port_in_redirect"
        | "server_name_in_redirect"
        | "underscores_in_headers"
        | "ignore_invalid_headers"
        | "aio"
        | "directio"
        | "output_buffers"
        | "postpone_output"
        | "send_lowat" => report.ignored(
            d,
            "fulcrum serves no files",
        ),
        _ => unsupported_setting(t, d),
    }
}

/// A listener-wide setting written inside a `location`: it applies to the whole listener here.
fn listener_level_note(t: &mut Translator, d: &Directive, level: Level) {
    if level == Level::Location {
        t.report
            .differ(d, "applies to the whole listener here, not to one location");
    } else {
        t.report.exact(d);
    }
}

fn unsupported_setting(t: &mut Translator, d: &Directive) {
    let name = d.name.as_str();
    let why = if name.starts_with("proxy_cache") || name == "proxy_no_cache" {
        "response caching is not supported"
    } else if name.starts_with("gzip") || name.starts_with("brotli") {
        "compression is not supported (the upstream's encoding passes through)"
    } else if name.contains("lua") || name.starts_with("js_") || name.starts_with("perl") {
        "scripting is not supported"
    } else if matches!(name, "root" | "alias" | "index" | "try_files" | "autoindex") {
        "fulcrum serves no files"
    } else if name == "rewrite" || name == "set" {
        "rewrite rules and variables are not supported (strip_prefix / rewrite_prefix on a route change a prefix only)"
    } else if name.starts_with("auth_") || matches!(name, "allow" | "deny" | "satisfy") {
        "access control is not supported"
    } else if name.starts_with("ssl_stapling")
        || matches!(
            name,
            "ssl_client_certificate"
                | "ssl_verify_client"
                | "ssl_trusted_certificate"
                | "ssl_verify_depth"
                | "ssl_crl"
        )
    {
        "OCSP stapling and client certificates are not supported"
    } else if name == "error_page" || name == "proxy_intercept_errors" {
        "custom error pages are not supported"
    } else if name == "proxy_redirect" {
        "Location headers from the upstream pass unchanged"
    } else if name.starts_with("proxy_cookie_") {
        "cookie rewriting is not supported"
    } else if name.starts_with("sub_filter") || name == "expires" {
        "response rewriting is not supported"
    } else if name == "proxy_pass" || name == "return" {
        "not allowed in this block"
    } else {
        "no equivalent in fulcrum"
    };
    t.report.unsupported(d, why);
}

fn access_log(t: &mut Translator, d: &Directive, scope: &mut Scope, level: Level) {
    let first = d.args.first().map(String::as_str).unwrap_or("");
    if first == "off" {
        if level == Level::Http {
            t.report.exact(d);
        } else {
            scope.set("route:access_log", "false".into(), d);
            t.report.exact(d);
        }
        return;
    }
    if first.starts_with("syslog:") || first.contains('$') {
        t.report
            .unsupported(d, "syslog and paths with variables are not supported");
        return;
    }
    let path = if first.starts_with('/') {
        first.to_string()
    } else {
        t.base.join(first).display().to_string()
    };
    let mut why = Vec::new();
    match d.args.get(1).map(String::as_str) {
        None | Some("combined") => {
            why.push("fulcrum's combined line adds rt= uaddr= urt= rid= rl= at its end".to_string())
        }
        Some(format) => why.push(format!(
            "the format `{format}` is written as fulcrum's combined (with rt= uaddr= urt= rid= rl=)"
        )),
    }
    if d.args.len() > 2 {
        why.push("buffer=, flush= and if= are not translated".into());
    }
    match &t.access_log {
        Some(existing) if existing.get("path") != Some(&string(&path)) => {
            why.push(format!(
                "fulcrum has one access log for every route; {} is used",
                existing.get("path").unwrap_or("")
            ));
        }
        Some(_) => {}
        None => {
            let mut table = Table::new("[access_log]", format!("nginx access_log at {}", d.origin));
            table.set("path", string(&path));
            table.set("format", string("combined"));
            t.access_log = Some(table);
        }
    }
    if level == Level::Location && !why.iter().any(|w| w.contains("one access log")) {
        why.push("one access log for every route".into());
    }
    t.report.differ(d, why.join("; "));
}

/// `limit_req_zone KEY zone=NAME:SIZE rate=RATE`.
fn limit_req_zone(t: &mut Translator, d: &Directive) {
    let Some(first) = d.args.first() else {
        t.report.unsupported(d, "expects a key");
        return;
    };
    let zone = d.args.iter().find_map(|a| a.strip_prefix("zone="));
    let rate = d.args.iter().find_map(|a| a.strip_prefix("rate="));
    let (Some(zone), Some(rate)) = (zone, rate) else {
        t.report.unsupported(d, "expects zone=NAME:SIZE and rate=");
        return;
    };
    let Some(key) = upstream::hash_key(first).filter(|k| k != "path") else {
        t.report.unsupported(
            d,
            format!("the key `{first}` has no equivalent ($binary_remote_addr, $http_X, $arg_X, $cookie_X)"),
        );
        return;
    };
    let (name, size) = zone.split_once(':').unwrap_or((zone, ""));
    let mut table = Table::new(
        format!("[rate_limit.{}]", super::output::key(name)),
        format!("nginx limit_req_zone at {}", d.origin),
    );
    table.set("key", string(&key));
    table.set("rate", string(rate));
    if let Ok(bytes) = crate::config::values::parse_size(size) {
        // nginx's state for one key is about 64 bytes: "one megabyte zone can keep about 16 thousand".
        table.set("max_keys", (bytes / 64).max(1).to_string());
    }
    t.zone_defs.insert(name.to_string(), (table, d.clone()));
    if d.args.iter().any(|a| a == "sync") {
        t.report.differ(
            d,
            "`sync` (nginx Plus) is not translated; see backend = \"redis\" for a fleet",
        );
    } else {
        t.report.exact(d);
    }
}

/// Classifies one `proxy_set_header` (what it becomes is decided per location, from the list).
fn classify_set_header(t: &mut Translator, d: &Directive) {
    let (Some(name), Some(value)) = (d.args.first(), d.args.get(1)) else {
        t.report.unsupported(d, "expects a name and a value");
        return;
    };
    let lower = name.to_ascii_lowercase();
    let value = value.as_str();
    let report = &mut t.report;
    match (lower.as_str(), value) {
        ("host", "$http_host") => report.exact(d),
        ("host", "$host") => report.differ(
            d,
            "nginx sends $host (the request's host, without a port); fulcrum passes the Host header as the client sent it ($http_host)",
        ),
        ("host", _) => report.unsupported(d, "fulcrum passes the client's Host; it cannot be set"),
        ("x-real-ip", "$remote_addr") => report.exact(d),
        ("x-forwarded-for", "$proxy_add_x_forwarded_for") => report.exact(d),
        ("x-forwarded-for", "$remote_addr") => report.differ(
            d,
            "fulcrum appends the client to the X-Forwarded-For it received ($proxy_add_x_forwarded_for)",
        ),
        ("x-forwarded-proto", "$scheme") => report.exact(d),
        ("x-forwarded-proto", "http" | "https") => report.differ(
            d,
            "fulcrum sends the listener's scheme ($scheme)",
        ),
        ("x-forwarded-host", "$http_host") => report.exact(d),
        ("x-forwarded-host", "$host" | "$server_name") => report.differ(
            d,
            "fulcrum sends the Host header as the client sent it ($http_host)",
        ),
        ("x-real-ip" | "x-forwarded-for" | "x-forwarded-proto" | "x-forwarded-host", _) => report
            .unsupported(d, "a forwarding header the proxy writes itself; this value cannot be set"),
        ("upgrade", "$http_upgrade") => report.exact(d),
        ("connection", "" | "upgrade" | "Upgrade" | "$connection_upgrade" | "keep-alive") => {
            report.exact(d)
        }
        ("connection", _) => report.differ(d, "fulcrum manages Connection per hop (keep-alive, or upgrade for WebSocket)"),
        ("upgrade" | "te" | "keep-alive" | "transfer-encoding" | "content-length" | "trailer" | "proxy-connection", _) => {
            report.unsupported(d, "a hop-by-hop or framing header the proxy manages itself")
        }
        (_, v) if v.contains('$') => report.unsupported(d, "header values with variables are not supported (static values only)"),
        _ => report.exact(d),
    }
}

/// The `request_headers` of a location's `proxy_set_header` list, and the difference notes for what
/// nginx would not send.
fn request_headers(list: &[Directive]) -> (Vec<(String, String)>, Vec<String>, HashSet<String>) {
    let mut set = Vec::new();
    let mut remove = Vec::new();
    let mut named = HashSet::new();
    for d in list {
        let (Some(name), Some(value)) = (d.args.first(), d.args.get(1)) else {
            continue;
        };
        let lower = name.to_ascii_lowercase();
        named.insert(lower.clone());
        let managed = matches!(
            lower.as_str(),
            "host"
                | "x-real-ip"
                | "x-forwarded-for"
                | "x-forwarded-proto"
                | "x-forwarded-host"
                | "upgrade"
                | "connection"
                | "te"
                | "keep-alive"
                | "transfer-encoding"
                | "content-length"
                | "trailer"
                | "proxy-connection"
        );
        if managed || value.contains('$') {
            continue;
        }
        if value.is_empty() {
            remove.push(name.clone());
        } else {
            set.push((name.clone(), value.clone()));
        }
    }
    (set, remove, named)
}

fn header_rules(set: &[(String, String)], remove: &[String]) -> Option<String> {
    if set.is_empty() && remove.is_empty() {
        return None;
    }
    let mut parts = Vec::new();
    if !set.is_empty() {
        let pairs: Vec<String> = set
            .iter()
            .map(|(k, v)| format!("{} = {}", string(k), string(v)))
            .collect();
        parts.push(format!("set = {{ {} }}", pairs.join(", ")));
    }
    if !remove.is_empty() {
        let names: Vec<String> = remove.iter().map(|n| string(n)).collect();
        parts.push(format!("remove = [{}]", names.join(", ")));
    }
    Some(format!("{{ {} }}", parts.join(", ")))
}

/// A `server_name` entry as route host patterns.
pub fn server_name(name: &str) -> Result<Vec<String>, String> {
    if name.is_empty() || name == "_" || name == "localhost_" {
        return Ok(Vec::new());
    }
    if name.starts_with('~') {
        return Err(format!("regular-expression name `{name}` is not supported"));
    }
    if let Some(rest) = name.strip_prefix('.') {
        return Ok(vec![
            rest.to_ascii_lowercase(),
            format!("*.{}", rest.to_ascii_lowercase()),
        ]);
    }
    if name.ends_with(".*") || name.chars().skip(1).any(|c| c == '*') {
        return Err(format!(
            "the wildcard in `{name}` is not supported (only a leading *.)"
        ));
    }
    Ok(vec![name.to_ascii_lowercase()])
}

/// Writes what a server's scope says about its listeners (timeouts, certificates).
pub fn apply_server_scope(t: &mut Translator, server: usize, scope: &Scope) {
    let listeners = t.servers[server].listeners.clone();
    for (key, (value, d)) in scope.with_prefix("listener:") {
        for &l in &listeners {
            let listener = &mut t.listeners[l];
            match listener.table.get(key) {
                Some(existing) if existing != value => t.report.differ(
                    d,
                    format!(
                        "`{key}` is per listener here; another server on {} set {existing}, kept",
                        listener.addr
                    ),
                ),
                Some(_) => {}
                None => listener.table.set(key, value.clone()),
            }
        }
    }
    let certs = scope.list("ssl_certificate").to_vec();
    let keys = scope.list("ssl_certificate_key").to_vec();
    let tls_listeners: Vec<usize> = listeners
        .iter()
        .copied()
        .filter(|&l| t.listeners[l].tls)
        .collect();
    if tls_listeners.is_empty() {
        for d in certs.iter().chain(&keys) {
            t.report.ignored(d, "no `listen ... ssl` in this server");
        }
        return;
    }
    if certs.is_empty() {
        for &l in &tls_listeners {
            if let Some(origin) = &t.servers[server].origin {
                t.report.note_at(
                    origin,
                    "server",
                    super::report::Outcome::Unsupported,
                    format!(
                        "listens with ssl on {} but has no ssl_certificate",
                        t.listeners[l].addr
                    ),
                );
            }
        }
        return;
    }
    for (i, cert) in certs.iter().enumerate() {
        let Some(key) = keys.get(i) else {
            t.report
                .unsupported(cert, "no ssl_certificate_key for this certificate");
            continue;
        };
        let path = |p: &str| {
            let joined = t.base.join(p);
            joined.display().to_string()
        };
        let cert_path = path(cert.args.first().map_or("", String::as_str));
        let key_path = path(key.args.first().map_or("", String::as_str));
        let names = t.servers[server].names.clone();
        for &l in &tls_listeners {
            let mut table = Table::new(
                "[[listener.tls.certificates]]",
                format!("nginx ssl_certificate at {}", cert.origin),
            );
            table.set("cert", string(&cert_path));
            table.set("key", string(&key_path));
            if !names.is_empty() {
                let list: Vec<String> = names.iter().map(|n| string(n)).collect();
                table.set("server_names", format!("[{}]", list.join(", ")));
            }
            if !t.listeners[l].certs.contains(&table) {
                t.listeners[l].certs.push(table);
            }
        }
        if i > 0 {
            t.report.differ(cert, "a second certificate for the same names: fulcrum picks the first that matches the client's SNI");
        } else {
            t.report.exact(cert);
        }
        t.report.exact(key);
    }
}

/// A server-level `return`: `redirect_to_https` for the usual HTTPS redirect, else a catch-all route.
pub fn server_return(t: &mut Translator, d: &Directive, server: usize, scope: &Scope) {
    let code = d.args.first().map(String::as_str).unwrap_or("");
    let target = d.args.get(1).map(String::as_str).unwrap_or("");
    let redirect = matches!(code, "301" | "302" | "303" | "307" | "308");
    if redirect && target.starts_with("https://$host") && target.ends_with("$request_uri") {
        let middle = &target["https://$host".len()..target.len() - "$request_uri".len()];
        let port = match middle {
            "" => Some("true".to_string()),
            m => m
                .strip_prefix(':')
                .and_then(|p| p.parse::<u16>().ok())
                .map(|p| p.to_string()),
        };
        if let Some(port) = port {
            let listeners = t.servers[server].listeners.clone();
            let mut shared = Vec::new();
            for &l in &listeners {
                t.listeners[l].table.set("redirect_to_https", port.clone());
                if t.listeners[l].servers.len() > 1 {
                    shared.push(t.listeners[l].addr.clone());
                }
            }
            let mut why = Vec::new();
            if code != "308" {
                why.push(format!(
                    "fulcrum answers 308 (keeps the method), nginx {code}"
                ));
            }
            why.push(
                "ACME challenges (/.well-known/acme-challenge/) still go to the routes".to_string(),
            );
            if !shared.is_empty() {
                why.push(format!(
                    "redirect_to_https covers every server on {}",
                    shared.join(", ")
                ));
            }
            t.report.differ(d, why.join("; "));
            return;
        }
    }
    match answer_table(d) {
        Ok((value, why)) => {
            let mut keys = Table::new("", "");
            keys.set("return", value);
            add_response_headers(t, scope, &mut keys);
            t.add_route(d, server, "/", false, &keys);
            t.servers[server].has_root = true;
            match why {
                Some(why) => t.report.differ(d, why),
                None => t.report.exact(d),
            }
        }
        Err(why) => t.report.unsupported(d, why),
    }
}

/// `return CODE [TEXT|URL]` / `return URL` as a route's `return` value, and a difference note.
fn answer_table(d: &Directive) -> Result<(String, Option<String>), String> {
    let (code, text) = match d.args.as_slice() {
        [url] if url.starts_with("http://") || url.starts_with("https://") => ("302", Some(url)),
        [code] => (code.as_str(), None),
        [code, text] => (code.as_str(), Some(text)),
        _ => return Err("expects a status and an optional text or URL".into()),
    };
    let status: u16 = code
        .parse()
        .map_err(|_| format!("`{code}` is not a status"))?;
    if status == 444 {
        return Err("444 (close without an answer) is not supported".into());
    }
    if !(200..=599).contains(&status) {
        return Err(format!("status {status} is not supported (200 to 599)"));
    }
    if text.is_some_and(|t| t.contains('$')) {
        return Err("values with variables are not supported (only the https://$host$request_uri redirect, as redirect_to_https)".into());
    }
    let redirect = matches!(status, 301 | 302 | 303 | 307 | 308);
    match (redirect, text) {
        (true, Some(url)) => Ok((
            format!("{{ status = {status}, location = {} }}", string(url)),
            Some("the redirect has an empty body (nginx sends a short HTML page)".into()),
        )),
        (true, None) => Err("a redirect without a URL is not supported".into()),
        (false, Some(body)) => Ok((
            format!("{{ status = {status}, body = {} }}", string(body)),
            None,
        )),
        (false, None) => Ok((
            format!("{{ status = {status} }}"),
            (status >= 400)
                .then(|| "the answer has an empty body (nginx sends its error page)".to_string()),
        )),
    }
}

/// `add_header` and `proxy_hide_header` of the scope as `response_headers`.
fn add_response_headers(t: &mut Translator, scope: &Scope, keys: &mut Table) {
    let mut set = Vec::new();
    let mut remove = Vec::new();
    for d in scope.list("add_header") {
        let (Some(name), Some(value)) = (d.args.first(), d.args.get(1)) else {
            t.report.unsupported(d, "expects a name and a value");
            continue;
        };
        let lower = name.to_ascii_lowercase();
        if matches!(
            lower.as_str(),
            "connection"
                | "keep-alive"
                | "transfer-encoding"
                | "content-length"
                | "upgrade"
                | "te"
                | "trailer"
                | "proxy-authenticate"
                | "proxy-connection"
        ) {
            t.report
                .unsupported(d, "a hop-by-hop or framing header cannot be set");
            continue;
        }
        if value.contains('$') {
            t.report
                .unsupported(d, "header values with variables are not supported");
            continue;
        }
        let mut why = vec![
            "fulcrum replaces a header of this name from the upstream (nginx adds a second one)"
                .to_string(),
        ];
        if d.args.get(2).map(String::as_str) != Some("always") {
            why.push("it is set on answers of every status (nginx without `always`: 200, 201, 204, 206, 301, 302, 303, 304, 307 and 308 only)".into());
        }
        t.report.differ(d, why.join("; "));
        set.push((name.clone(), value.clone()));
    }
    for d in scope.list("proxy_hide_header") {
        if let Some(name) = d.args.first() {
            let lower = name.to_ascii_lowercase();
            if matches!(
                lower.as_str(),
                "connection"
                    | "keep-alive"
                    | "transfer-encoding"
                    | "content-length"
                    | "upgrade"
                    | "te"
                    | "trailer"
                    | "proxy-authenticate"
                    | "proxy-connection"
            ) {
                t.report
                    .ignored(d, "hop-by-hop headers are never passed on");
                continue;
            }
            if !set
                .iter()
                .any(|(n, _): &(String, String)| n.eq_ignore_ascii_case(name))
            {
                remove.push(name.clone());
            }
            t.report.exact(d);
        }
    }
    if let Some(rules) = header_rules(&set, &remove) {
        keys.set("response_headers", rules);
    }
}

/// A `location`: its route (to an upstream, or its own answer).
pub fn location_route(
    t: &mut Translator,
    d: &Directive,
    (exact, path): (bool, &str),
    server: usize,
    scope: &Scope,
    proxy_pass: Option<&Directive>,
    answer: Option<&Directive>,
) {
    let mut keys = Table::new("", "");
    if let Some(r) = answer {
        if let Some(p) = proxy_pass {
            t.report.ignored(p, "the location's `return` answers first");
        }
        match answer_table(r) {
            Ok((value, why)) => {
                keys.set("return", value);
                match why {
                    Some(why) => t.report.differ(r, why),
                    None => t.report.exact(r),
                }
            }
            Err(why) => {
                t.report.unsupported(r, why);
                t.report
                    .unsupported(d, "its `return` could not be translated; no route written");
                return;
            }
        }
        if let Some((_, off)) = scope.value("route:access_log") {
            let _ = off;
            keys.set("access_log", "false");
        }
        add_response_headers(t, scope, &mut keys);
        t.report.exact(d);
        t.add_route(d, server, path, exact, &keys);
        return;
    }
    let Some(p) = proxy_pass else {
        t.report.unsupported(
            d,
            "a location without proxy_pass or return serves files (root, index); fulcrum serves none, so no route is written",
        );
        return;
    };
    let Some(target) = p.args.first() else {
        t.report.unsupported(p, "expects a URL");
        return;
    };
    let (tls, rest) = if let Some(rest) = target.strip_prefix("http://") {
        (false, rest)
    } else if let Some(rest) = target.strip_prefix("https://") {
        (true, rest)
    } else {
        t.report
            .unsupported(p, "only http:// and https:// targets are supported");
        t.report.unsupported(
            d,
            "its proxy_pass could not be translated; no route written",
        );
        return;
    };
    if rest.contains('$') {
        t.report
            .unsupported(p, "targets with variables are not supported");
        t.report.unsupported(
            d,
            "its proxy_pass could not be translated; no route written",
        );
        return;
    }
    let (authority, uri) = match rest.find('/') {
        Some(at) => (&rest[..at], Some(&rest[at..])),
        None => (rest, None),
    };
    let mut why = Vec::new();
    let name = if t.upstream_names.contains(authority) {
        if tls {
            why.push("servers of an `upstream` block are spoken to in plain HTTP here unless written https://".to_string());
        }
        authority.to_string()
    } else {
        let name: String = authority
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if !t.upstreams.contains_key(&name) {
            let out = upstream::implicit(&name, authority, tls, p, &mut t.report);
            t.upstreams.insert(name.clone(), out);
        }
        name
    };
    keys.set("upstream", string(&name));
    match uri {
        Some("/") if path.ends_with('/') && !exact => keys.set("strip_prefix", "true"),
        Some(uri) => keys.set("rewrite_prefix", string(uri)),
        None => {}
    }
    if uri.is_some() {
        why.push("Location headers from the upstream are passed unchanged (nginx's default proxy_redirect rewrites them)".into());
    }
    // Upstream-wide settings.
    let upstream_keys: Vec<(String, (String, Directive))> = scope
        .with_prefix("upstream:")
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    if let Some(out) = t.upstreams.get_mut(&name) {
        apply_upstream_keys(out, &upstream_keys, &mut t.report);
    }
    // Request headers.
    let list = scope.list("proxy_set_header").to_vec();
    let (set, remove, named) = request_headers(&list);
    if !named.contains("host") {
        why.push(format!("nginx sends `Host: {authority}` ($proxy_host) unless told otherwise; fulcrum passes the client's Host"));
    }
    let missing: Vec<&str> = [
        "X-Real-IP",
        "X-Forwarded-For",
        "X-Forwarded-Proto",
        "X-Forwarded-Host",
    ]
    .into_iter()
    .filter(|h| !named.contains(&h.to_ascii_lowercase()))
    .collect();
    if !missing.is_empty() {
        why.push(format!(
            "fulcrum also sends {}, which nginx does not here",
            missing.join(", ")
        ));
    }
    if let Some(rules) = header_rules(&set, &remove) {
        keys.set("request_headers", rules);
    }
    add_response_headers(t, scope, &mut keys);
    if let Some((size, _)) = scope.value("route:max_body_size") {
        keys.set("max_body_size", size.clone());
    }
    if scope.value("route:access_log").is_some() {
        keys.set("access_log", "false");
    }
    for key in ["buffering", "request_buffering"] {
        if let Some((on, _)) = scope.value(&format!("route:{key}")) {
            if on == "false" {
                keys.set(key, "false");
            }
        }
    }
    // Rate limits.
    let mut zones = Vec::new();
    for l in scope.list("limit_req").to_vec() {
        if let Some(zone) = limit_req(t, &l, scope) {
            zones.push(string(&zone));
        }
    }
    if !zones.is_empty() {
        keys.set("rate_limit", format!("[{}]", zones.join(", ")));
    }
    if why.is_empty() {
        t.report.exact(p);
    } else {
        t.report.differ(p, why.join("; "));
    }
    t.report.exact(d);
    t.add_route(d, server, path, exact, &keys);
}

fn apply_upstream_keys(
    out: &mut UpstreamOut,
    keys: &[(String, (String, Directive))],
    report: &mut super::report::Report,
) {
    for (key, (value, d)) in keys {
        match out.from_locations.iter().find(|(k, _, _)| k == key) {
            Some((_, kept, at)) if kept != value => report.differ(
                d,
                format!(
                    "`{key}` applies to the whole upstream `{}` here; {kept} from {at} is kept",
                    out.name
                ),
            ),
            Some(_) => {}
            None => {
                out.table.set(key, value.clone());
                out.from_locations
                    .push((key.clone(), value.clone(), d.origin.to_string()));
            }
        }
    }
}

/// `limit_req zone=NAME [burst=N] [nodelay | delay=N]`: the fulcrum zone it uses (one per zone and
/// burst settings).
fn limit_req(t: &mut Translator, d: &Directive, scope: &Scope) -> Option<String> {
    let zone = d.args.iter().find_map(|a| a.strip_prefix("zone="))?;
    let Some((base, def)) = t.zone_defs.get(zone).cloned() else {
        t.report.unsupported(
            d,
            format!("no limit_req_zone `{zone}` is defined (or it could not be translated)"),
        );
        return None;
    };
    let _ = def;
    let mut table = base;
    let burst = d.args.iter().find_map(|a| a.strip_prefix("burst="));
    if let Some(burst) = burst {
        table.set("burst", burst.to_string());
    }
    if d.args.iter().any(|a| a == "nodelay") {
        table.set("nodelay", "true");
    } else if let Some(delay) = d.args.iter().find_map(|a| a.strip_prefix("delay=")) {
        table.set("delay", delay.to_string());
    }
    // nginx refuses with 503 unless limit_req_status says otherwise; fulcrum's default is 429.
    let status = scope
        .value("limit_req_status")
        .map_or("503", |(s, _)| s.as_str());
    table.set("status", status.to_string());
    if scope
        .value("limit_req_dry_run")
        .is_some_and(|(v, _)| v == "true")
    {
        table.set("dry_run", "true");
    }
    let existing = t
        .zones
        .iter()
        .find(|(z, _, tbl)| z == zone && tbl.keys == table.keys);
    if let Some((_, name, _)) = existing {
        let name = name.clone();
        t.report.exact(d);
        return Some(name);
    }
    let variants = t.zones.iter().filter(|(z, _, _)| z == zone).count();
    let name = if variants == 0 {
        zone.to_string()
    } else {
        format!("{zone}_{}", variants + 1)
    };
    table.header = format!("[rate_limit.{}]", super::output::key(&name));
    if variants > 0 {
        t.report.differ(
            d,
            format!("this zone is used with other burst settings elsewhere: written as zone `{name}`, whose buckets are its own (nginx shares the zone's)"),
        );
    } else {
        t.report.exact(d);
    }
    t.zones.push((zone.to_string(), name.clone(), table));
    Some(name)
}
