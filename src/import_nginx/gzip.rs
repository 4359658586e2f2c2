//! What nginx's gzip directives become: `[compression]` (gzip only, nginx's types, length and level)
//! and a route's `compress = false` where gzip is off.

use super::directives::{Level, Scope};
use super::output::{string, Table};
use super::parse::Directive;
use super::translate::Translator;

/// nginx always compresses `text/html` once gzip is on, whatever `gzip_types` adds.
const ALWAYS: &str = "text/html";

/// `gzip`, `gzip_types`, `gzip_min_length`, `gzip_comp_level`, `gzip_vary`, `gzip_proxied`; false for
/// any other directive.
pub fn setting(t: &mut Translator, d: &Directive, scope: &mut Scope, level: Level) -> bool {
    let first = d.args.first().map(String::as_str).unwrap_or("");
    match d.name.as_str() {
        "gzip" => match first {
            "on" | "off" => {
                scope.set("route:gzip", first.to_string(), d);
                if first == "on" {
                    section(t, d);
                }
                t.report.exact(d);
            }
            _ => t.report.unsupported(d, "expects on or off"),
        },
        "gzip_types" => {
            let mut types = vec![string(ALWAYS)];
            for mime in &d.args {
                let mime = if mime == "*" { "*".to_string() } else { mime.to_ascii_lowercase() };
                if !types.contains(&string(&mime)) {
                    types.push(string(&mime));
                }
            }
            section(t, d).set("types", format!("[{}]", types.join(", ")));
            whole_proxy_note(t, d, level);
        }
        "gzip_min_length" => match crate::config::values::parse_size(first) {
            Ok(bytes) => {
                section(t, d).set("min_size", bytes.to_string());
                whole_proxy_note(t, d, level);
            }
            Err(why) => t.report.unsupported(d, why),
        },
        "gzip_comp_level" => match first.parse::<i32>() {
            Ok(comp_level) if (1..=9).contains(&comp_level) => {
                section(t, d).set("gzip_level", comp_level.to_string());
                whole_proxy_note(t, d, level);
            }
            _ => t.report.unsupported(d, "expects a level from 1 to 9"),
        },
        "gzip_vary" => match first {
            "on" => t.report.exact(d),
            _ => t.report.differ(d, "Vary: Accept-Encoding is always sent with a compressible answer"),
        },
        "gzip_proxied" => match first {
            "any" => t.report.exact(d),
            _ => t.report.differ(
                d,
                "answers are compressed whatever the request's Via or the answer's caching headers (gzip_proxied any)",
            ),
        },
        _ => return false,
    }
    true
}

/// The `[compression]` table, made on first use with nginx's defaults (gzip only, `text/html`, 20 bytes).
fn section<'a>(t: &'a mut Translator, d: &Directive) -> &'a mut Table {
    t.compression.get_or_insert_with(|| {
        let mut table = Table::new("[compression]", format!("nginx gzip at {}", d.origin));
        table.set("algorithms", "[\"gzip\"]");
        table.set("types", format!("[{}]", string(ALWAYS)));
        table.set("min_size", "20");
        table
    })
}

/// `gzip_types`, `gzip_min_length` and `gzip_comp_level` are one setting for the whole proxy here.
fn whole_proxy_note(t: &mut Translator, d: &Directive, level: Level) {
    if level == Level::Http {
        t.report.exact(d);
    } else {
        t.report
            .differ(d, "applies to every route here ([compression] is global)");
    }
}

/// A proxied route's `compress = false` where gzip is not on (dropped at the end when no block turned
/// gzip on: without `[compression]` nothing is compressed anyway).
pub fn route_keys(scope: &Scope, keys: &mut Table) {
    if scope.value("route:gzip").is_none_or(|(on, _)| on != "on") {
        keys.set("compress", "false");
    }
}
