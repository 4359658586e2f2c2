//! What nginx's cache directives become: `proxy_cache_path` a `[cache.NAME]` zone (in memory), and
//! `proxy_cache` with its companions a route's `cache*` keys.

use super::directives::Scope;
use super::output::{key, string, Table};
use super::parse::Directive;
use super::translate::Translator;

/// Which statuses `proxy_cache_valid TIME` (without codes) covers.
const DEFAULT_CODES: [&str; 3] = ["200", "301", "302"];

/// nginx's `proxy_cache_lock_timeout` when unset.
const DEFAULT_LOCK_TIMEOUT: &str = "5s";

/// `proxy_cache_path`, `proxy_cache`, `proxy_cache_valid`, `proxy_cache_key`, `proxy_cache_lock*`,
/// `proxy_cache_use_stale`, `proxy_cache_background_update` and the rest of `proxy_cache_*`; false for
/// any other directive.
pub fn setting(t: &mut Translator, d: &Directive, scope: &mut Scope) -> bool {
    let first = d.args.first().map(String::as_str).unwrap_or("");
    match d.name.as_str() {
        "proxy_cache_path" => zone(t, d),
        "proxy_cache" => {
            if first.contains('$') {
                t.report
                    .unsupported(d, "a zone chosen by a variable has no equivalent");
            } else {
                scope.set("cache:zone", first.to_string(), d);
                if first != "off" && !t.cache_paths.contains(first) && !t.caches.contains_key(first) {
                    let mut table = zone_table(first, d);
                    table.origin = format!(
                        "nginx proxy_cache at {} (no proxy_cache_path defines this zone)",
                        d.origin
                    );
                    t.caches.insert(first.to_string(), table);
                    t.report.differ(
                        d,
                        format!("no proxy_cache_path defines `{first}` (nginx -t refuses this): written as a [cache.{first}] zone in memory with max_size = \"256m\""),
                    );
                } else {
                    t.report.exact(d);
                }
            }
        }
        "proxy_cache_valid" => match valid_rows(d) {
            Ok(_) => {
                scope.push("proxy_cache_valid", d);
                t.report.exact(d);
            }
            Err(why) => t.report.unsupported(d, why),
        },
        "proxy_cache_key" => match key_parts(first) {
            Ok((parts, dropped)) => {
                scope.set("cache:key", format!("[{}]", parts.join(", ")), d);
                if dropped.is_empty() {
                    t.report.exact(d);
                } else {
                    t.report.differ(
                        d,
                        format!("{} (fulcrum keys by host, path, query, header:NAME and cookie:NAME)", dropped.join("; ")),
                    );
                }
            }
            Err(why) => t.report.unsupported(d, why),
        },
        "proxy_cache_lock" => match first {
            "on" | "off" => {
                scope.set("cache:lock", first.to_string(), d);
                t.report.exact(d);
            }
            _ => t.report.unsupported(d, "expects on or off"),
        },
        "proxy_cache_lock_timeout" => match nginx_time(first) {
            Some(time) => {
                scope.set("cache:lock_timeout", time, d);
                t.report.differ(
                    d,
                    "after it a waiting request goes to the server and may store its answer (nginx does not store it)",
                );
            }
            None => t.report.unsupported(d, "expects a time"),
        },
        "proxy_cache_lock_age" => t.report.ignored(
            d,
            "a fill holds its key's lock until its answer ends (bounded by the upstream's timeouts)",
        ),
        "proxy_cache_use_stale" => {
            let mut words = Vec::new();
            let mut dropped = Vec::new();
            for word in &d.args {
                if word == "off" {
                    continue;
                }
                if crate::config::UseStale::NAMES.iter().any(|(w, _)| w == word) {
                    words.push(string(word));
                } else {
                    dropped.push(word.clone());
                }
            }
            scope.set("cache:use_stale", format!("[{}]", words.join(", ")), d);
            if dropped.is_empty() {
                t.report.exact(d);
            } else {
                t.report.differ(
                    d,
                    format!("{} cannot serve a stale entry here; left out", dropped.join(", ")),
                );
            }
        }
        "proxy_cache_background_update" => match first {
            "on" | "off" => {
                scope.set("cache:background_update", first.to_string(), d);
                t.report.exact(d);
            }
            _ => t.report.unsupported(d, "expects on or off"),
        },
        "proxy_cache_methods" => {
            if d.args.iter().all(|m| m == "GET" || m == "HEAD") {
                t.report.exact(d);
            } else {
                t.report.differ(d, "only GET and HEAD answers are cached");
            }
        }
        "proxy_cache_revalidate" => {
            if first == "on" {
                t.report.exact(d);
            } else {
                t.report.differ(
                    d,
                    "an expired entry with a validator is always revalidated with a conditional request",
                );
            }
        }
        "proxy_cache_convert_head" => {
            if first == "on" {
                t.report.exact(d);
            } else {
                t.report.differ(
                    d,
                    "a HEAD miss is always sent upstream as a GET, whose answer is stored",
                );
            }
        }
        "proxy_cache_min_uses" => {
            if first == "1" {
                t.report.exact(d);
            } else {
                t.report
                    .differ(d, "an answer is stored the first time it is fetched");
            }
        }
        "proxy_cache_bypass" | "proxy_no_cache" => t.report.unsupported(
            d,
            "caching is decided by the answer's headers (Cache-Control, Set-Cookie) and the request's Authorization, not by variables",
        ),
        "proxy_cache_purge" => t.report.unsupported(
            d,
            "purge with the admin POST /cache/{zone}/purge ({\"key\": ...} or {\"prefix\": ...})",
        ),
        name if name.starts_with("proxy_cache") => {
            t.report.unsupported(d, "no equivalent in fulcrum's cache")
        }
        _ => return false,
    }
    true
}

/// `proxy_cache_path PATH [levels=] keys_zone=NAME:SIZE [max_size=SIZE] [inactive=] ...`.
fn zone(t: &mut Translator, d: &Directive) {
    let Some(zone) = d.args.iter().find_map(|a| a.strip_prefix("keys_zone=")) else {
        t.report.unsupported(d, "expects keys_zone=NAME:SIZE");
        return;
    };
    let name = zone.split(':').next().unwrap_or(zone);
    if name.is_empty() {
        t.report.unsupported(d, "expects keys_zone=NAME:SIZE");
        return;
    }
    let mut table = zone_table(name, d);
    let mut why = vec![format!(
        "entries are kept in memory, not on disk at {}",
        d.args.first().map(String::as_str).unwrap_or("")
    )];
    match d.args.iter().find_map(|a| a.strip_prefix("max_size=")) {
        Some(size) => match crate::config::values::parse_size(size) {
            Ok(_) => table.set("max_size", string(&size.to_ascii_lowercase())),
            Err(why) => {
                t.report.unsupported(d, why);
                return;
            }
        },
        None => why.push(
            "nginx bounds the disk only by max_size (none here); memory is bounded by max_size = \"256m\""
                .to_string(),
        ),
    }
    if d.args.iter().any(|a| a.starts_with("inactive=")) {
        why.push("entries leave by least recent use under max_size, not after inactive=".into());
    }
    t.caches.insert(name.to_string(), table);
    t.report.differ(d, why.join("; "));
}

/// The zone names `proxy_cache_path` defines anywhere in `tree` (a `proxy_cache` may come first).
pub fn collect_zone_names(tree: &[Directive], names: &mut std::collections::HashSet<String>) {
    for d in tree {
        if d.name == "proxy_cache_path" {
            if let Some(zone) = d.args.iter().find_map(|a| a.strip_prefix("keys_zone=")) {
                names.insert(zone.split(':').next().unwrap_or(zone).to_string());
            }
        } else if let Some(inner) = &d.block {
            collect_zone_names(inner, names);
        }
    }
}

/// A `[cache.NAME]` table with fulcrum's default size (written so the reader sees the bound).
fn zone_table(name: &str, d: &Directive) -> Table {
    let mut table = Table::new(
        format!("[cache.{}]", key(name)),
        format!("nginx proxy_cache_path at {}", d.origin),
    );
    table.set("max_size", string("256m"));
    table
}

/// A proxied route's `cache*` keys where `proxy_cache` names a zone.
pub fn route_keys(scope: &Scope, keys: &mut Table) {
    let Some((zone, _)) = scope.value("cache:zone") else {
        return;
    };
    if zone == "off" {
        return;
    }
    keys.set("cache", string(zone));
    let mut rows: Vec<(String, String)> = Vec::new();
    for d in scope.list("proxy_cache_valid") {
        for (code, time) in valid_rows(d).unwrap_or_default() {
            // A later line for the same status wins, as in nginx.
            rows.retain(|(c, _)| *c != code);
            rows.push((code, time));
        }
    }
    if !rows.is_empty() {
        let written: Vec<String> = rows
            .iter()
            .map(|(code, time)| format!("{} = {}", string(code), string(time)))
            .collect();
        keys.set("cache_valid", format!("{{ {} }}", written.join(", ")));
    }
    // Unset, fulcrum's default (host, path, query) stands for nginx's `$scheme$proxy_host$request_uri`.
    if let Some((parts, _)) = scope.value("cache:key") {
        keys.set("cache_key", parts.clone());
    }
    if scope.value("cache:lock").is_some_and(|(on, _)| on == "on") {
        let timeout = scope
            .value("cache:lock_timeout")
            .map_or(DEFAULT_LOCK_TIMEOUT, |(time, _)| time.as_str());
        keys.set("cache_lock", string(timeout));
    }
    if let Some((words, _)) = scope.value("cache:use_stale") {
        keys.set("cache_use_stale", words.clone());
    }
    if scope
        .value("cache:background_update")
        .is_some_and(|(on, _)| on == "on")
    {
        keys.set("cache_background_update", "true");
    }
}

/// The (status or `any`, time) rows of one `proxy_cache_valid [code ...] time`.
fn valid_rows(d: &Directive) -> Result<Vec<(String, String)>, String> {
    let Some((time, codes)) = d.args.split_last() else {
        return Err("expects [code ...] time".into());
    };
    let time = nginx_time(time).ok_or_else(|| format!("`{time}` is not a time"))?;
    let codes: Vec<&str> = if codes.is_empty() {
        DEFAULT_CODES.to_vec()
    } else {
        codes.iter().map(String::as_str).collect()
    };
    codes
        .into_iter()
        .map(|code| match code {
            "any" => Ok(("any".to_string(), time.clone())),
            _ => match code.parse::<u16>() {
                Ok(status) if (100..=599).contains(&status) => Ok((code.to_string(), time.clone())),
                _ => Err(format!("`{code}` is not a status code")),
            },
        })
        .collect()
}

/// A `proxy_cache_key` string as `cache_key` parts, and the variables left out.
fn key_parts(text: &str) -> Result<(Vec<String>, Vec<String>), String> {
    let mut parts: Vec<String> = Vec::new();
    let mut dropped = Vec::new();
    let mut add = |part: String| {
        let part = string(&part);
        if !parts.contains(&part) {
            parts.push(part);
        }
    };
    let mut rest = text;
    let mut literal = false;
    while let Some(at) = rest.find('$') {
        literal |= at > 0;
        let after = &rest[at + 1..];
        let (name, tail) = match after.strip_prefix('{') {
            Some(inner) => match inner.find('}') {
                Some(end) => (&inner[..end], &inner[end + 1..]),
                None => return Err(format!("`{text}` has an unclosed ${{")),
            },
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], &after[end..])
            }
        };
        match name {
            "host" | "http_host" | "server_name" => add("host".into()),
            "request_uri" => {
                add("path".into());
                add("query".into());
            }
            "uri" | "document_uri" => add("path".into()),
            "args" | "query_string" => add("query".into()),
            // Separators: they tell nothing apart on their own.
            "is_args" => {}
            // nginx's default key names the upstream; the client's Host tells the same sites apart.
            "proxy_host" => {
                add("host".into());
                dropped.push("$proxy_host is keyed as the request's host".into());
            }
            "scheme" => dropped.push("$scheme is left out (http and https share an entry)".into()),
            "request_method" => {
                dropped.push("$request_method is left out (GET and HEAD share an entry)".into())
            }
            _ => {
                if let Some(header) = name.strip_prefix("http_") {
                    add(format!("header:{}", header.replace('_', "-")));
                } else if let Some(cookie) = name.strip_prefix("cookie_") {
                    add(format!("cookie:{cookie}"));
                } else {
                    dropped.push(format!("${name} is left out"));
                }
            }
        }
        rest = tail;
    }
    if literal || !rest.is_empty() {
        dropped.push("the literal text is left out".into());
    }
    if parts.is_empty() {
        return Err(format!(
            "`{text}` names none of $host, $request_uri, $uri, $args, $http_NAME, $cookie_NAME"
        ));
    }
    Ok((parts, dropped))
}

/// An nginx time (`10m`, `1h30m`, `1d`, `30` seconds) as a fulcrum duration, or `None`.
pub fn nginx_time(text: &str) -> Option<String> {
    if text.is_empty() {
        return None;
    }
    let mut millis: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let value: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (1, 2)
        } else {
            match rest.chars().next() {
                None => (1_000, 0),
                Some('s') => (1_000, 1),
                Some('m') => (60_000, 1),
                Some('h') => (3_600_000, 1),
                Some('d') => (86_400_000, 1),
                Some('w') => (7 * 86_400_000, 1),
                Some('M') => (30 * 86_400_000, 1),
                Some('y') => (365 * 86_400_000, 1),
                Some(_) => return None,
            }
        };
        millis = millis.checked_add(value.checked_mul(unit)?)?;
        rest = &rest[len..];
    }
    if crate::config::values::parse_duration(text).is_ok() && !text.ends_with('M') {
        return Some(text.to_string());
    }
    Some(if millis.is_multiple_of(1000) {
        format!("{}s", millis / 1000)
    } else {
        format!("{millis}ms")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_times_become_durations() {
        assert_eq!(nginx_time("10m").as_deref(), Some("10m"));
        assert_eq!(nginx_time("1h30m").as_deref(), Some("5400s"));
        assert_eq!(nginx_time("30").as_deref(), Some("30"));
        assert_eq!(nginx_time("1w").as_deref(), Some("604800s"));
        assert_eq!(nginx_time("500ms").as_deref(), Some("500ms"));
        assert_eq!(nginx_time("1x"), None);
        assert_eq!(nginx_time(""), None);
    }

    #[test]
    fn cache_keys_keep_what_tells_requests_apart() {
        let (parts, dropped) = key_parts("$scheme$proxy_host$request_uri").expect("key");
        assert_eq!(parts, ["\"host\"", "\"path\"", "\"query\""]);
        assert_eq!(dropped.len(), 2, "{dropped:?}");
        let (parts, dropped) =
            key_parts("$host$uri$is_args$args|${cookie_lang}$http_x_tenant").expect("key");
        assert_eq!(
            parts,
            [
                "\"host\"",
                "\"path\"",
                "\"query\"",
                "\"cookie:lang\"",
                "\"header:x-tenant\""
            ]
        );
        assert_eq!(dropped, ["the literal text is left out"]);
        assert!(key_parts("static").is_err());
    }
}
