//! What a `location` becomes: its route (path rewrite, request and response header rules, limits,
//! upstream settings written where it proxies), and the `proxy_set_header` list's translation.

use std::collections::HashSet;

use super::directives::Scope;
use super::output::{string, Table};
use super::parse::Directive;
use super::server_block::answer_table;
use super::translate::Translator;
use super::upstream::{self, UpstreamOut};

/// Classifies one `proxy_set_header` (what it becomes is decided per location, from the list).
pub(super) fn classify_set_header(t: &mut Translator, d: &Directive) {
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
pub(super) fn request_headers(
    list: &[Directive],
) -> (Vec<(String, String)>, Vec<String>, HashSet<String>) {
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

pub(super) fn header_rules(set: &[(String, String)], remove: &[String]) -> Option<String> {
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

/// A field the proxy sets per hop, which routes may not set or remove (the config's own list).
pub(super) fn is_hop_or_framing(name: &str) -> bool {
    crate::config::HOP_AND_FRAMING
        .iter()
        .any(|field| field.eq_ignore_ascii_case(name))
}

/// `add_header` and `proxy_hide_header` of the scope as `response_headers`.
pub(super) fn add_response_headers(t: &mut Translator, scope: &Scope, keys: &mut Table) {
    let mut set = Vec::new();
    let mut remove = Vec::new();
    for d in scope.list("add_header") {
        let (Some(name), Some(value)) = (d.args.first(), d.args.get(1)) else {
            t.report.unsupported(d, "expects a name and a value");
            continue;
        };
        if is_hop_or_framing(name) {
            t.report
                .unsupported(d, "a hop-by-hop or framing header cannot be set");
            continue;
        }
        if value == "$upstream_cache_status" {
            if keys.get("cache").is_some() && name.eq_ignore_ascii_case("x-cache-status") {
                t.report.exact(d);
            } else if keys.get("cache").is_some() {
                t.report.differ(
                    d,
                    format!("every answer of a cached route carries X-Cache-Status; `{name}` is not added"),
                );
            } else {
                // Without a cache the variable is empty, and nginx adds no header with an empty value.
                t.report.exact(d);
            }
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
            if is_hop_or_framing(name) {
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
pub(super) fn location_route(
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
    super::cache::route_keys(scope, &mut keys);
    add_response_headers(t, scope, &mut keys);
    if let Some((size, _)) = scope.value("route:max_body_size") {
        keys.set("max_body_size", size.clone());
    }
    if scope.value("route:access_log").is_some() {
        keys.set("access_log", "false");
    }
    super::gzip::route_keys(scope, &mut keys);
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

pub(super) fn apply_upstream_keys(
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
pub(super) fn limit_req(t: &mut Translator, d: &Directive, scope: &Scope) -> Option<String> {
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
