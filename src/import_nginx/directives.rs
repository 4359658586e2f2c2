//! What each nginx directive becomes: settings kept in a [`Scope`] (inherited into inner blocks), then
//! written onto the listeners, upstreams, zones and routes they govern.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::location::classify_set_header;
use super::output::{string, Table};
use super::parse::Directive;
use super::translate::Translator;
use super::upstream;

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

    pub(super) fn push(&mut self, list: &'static str, d: &Directive) {
        if self.fresh.insert(list) {
            self.lists.entry(list).or_default().clear();
        }
        self.lists.entry(list).or_default().push(d.clone());
    }

    pub(super) fn list(&self, list: &str) -> &[Directive] {
        self.lists.get(list).map_or(&[], Vec::as_slice)
    }

    pub(super) fn set(&mut self, key: impl Into<String>, value: String, d: &Directive) {
        self.values.insert(key.into(), (value, d.clone()));
    }

    pub(super) fn value(&self, key: &str) -> Option<&(String, Directive)> {
        self.values.get(key)
    }

    pub(super) fn with_prefix<'a>(
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
    if super::gzip::setting(t, d, scope, level) || super::cache::setting(t, d, scope) {
        return;
    }
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
    let why = if name.starts_with("gzip") || name.starts_with("brotli") || name.starts_with("zstd")
    {
        "not translated ([compression] takes gzip, gzip_types, gzip_min_length, gzip_comp_level; the brotli and zstd modules' settings have no equivalent)"
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
