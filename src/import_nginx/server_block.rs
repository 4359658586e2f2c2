//! What a `server` block's own settings become: host patterns, its listeners' settings, a server-level
//! `return`.

use super::directives::Scope;
use super::location::add_response_headers;
use super::output::{string, Table};
use super::parse::Directive;
use super::translate::Translator;

/// A `server_name` entry as route host patterns.
pub(super) fn server_name(name: &str) -> Result<Vec<String>, String> {
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
pub(super) fn apply_server_scope(t: &mut Translator, server: usize, scope: &Scope) {
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
pub(super) fn server_return(t: &mut Translator, d: &Directive, server: usize, scope: &Scope) {
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
pub(super) fn answer_table(d: &Directive) -> Result<(String, Option<String>), String> {
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
