//! The TOML written at the end: every table in order, each headed by the nginx file:line it came from.

use std::collections::HashSet;
use std::path::Path;

use super::output::{string, Table};
use super::translate::{RouteOut, Translator};

impl Translator {
    /// After the walk: listener-wide keys, 404 routes for named servers without `location /` where a
    /// catch-all exists, and the note on servers whose routes also answer on other listeners.
    pub(super) fn finish(&mut self) {
        let pending: Vec<(String, String)> = self
            .global
            .keys
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("@listener.")?.to_string(), v.clone())))
            .collect();
        self.global.keys.retain(|(k, _)| !k.starts_with('@'));
        if self.compression.is_none() {
            for route in &mut self.routes {
                route.table.keys.retain(|(k, _)| k != "compress");
            }
        }
        for listener in &mut self.listeners {
            for (k, v) in &pending {
                if listener.table.get(k).is_none() {
                    listener.table.set(k, v.clone());
                }
            }
        }
        let catch_all_exists = self.routes.iter().any(|r| r.matches.0.is_none());
        for server in 0..self.servers.len() {
            if self.is_catch_all(server) || self.servers[server].has_root || !catch_all_exists {
                continue;
            }
            let origin = self.servers[server].origin.clone();
            for host in self.servers[server].names.clone() {
                let matches = (Some(host.clone()), "/".to_string(), false);
                if self.routes.iter().any(|r| r.matches == matches) {
                    continue;
                }
                let mut table = Table::new(
                    "[[route]]",
                    format!(
                        "nginx server at {} has no `location /`: its other paths are 404 there, not another server's",
                        origin.as_ref().map_or(String::new(), ToString::to_string)
                    ),
                );
                table.set("host", string(&host));
                table.set("path", string("/"));
                table.set("return", "{ status = 404 }");
                self.routes.push(RouteOut {
                    table,
                    matches,
                    server,
                });
            }
        }
        let sets: HashSet<Vec<usize>> = self
            .servers
            .iter()
            .enumerate()
            .filter(|(i, _)| self.routes.iter().any(|r| r.server == *i))
            .map(|(_, s)| s.listeners.clone())
            .collect();
        if sets.len() > 1 {
            for i in 0..self.servers.len() {
                if !self.routes.iter().any(|r| r.server == i) {
                    continue;
                }
                let others: Vec<String> = self
                    .listeners
                    .iter()
                    .enumerate()
                    .filter(|(l, _)| !self.servers[i].listeners.contains(l))
                    .map(|(_, l)| l.addr.clone())
                    .collect();
                if let (false, Some(origin)) = (others.is_empty(), &self.servers[i].origin) {
                    self.report.note_at(
                        origin,
                        "server",
                        super::report::Outcome::Difference,
                        format!(
                            "fulcrum's routes are not tied to a listener: this server's locations also answer on {}",
                            others.join(", ")
                        ),
                    );
                }
            }
        }
    }

    /// The TOML text.
    pub fn toml(&self, source: &Path) -> String {
        let mut out = format!(
            "# Written by `fulcrum import-nginx {}`; check it with `fulcrum check -c FILE`.\n# Each table names the nginx file and line it came from; the report on stderr lists every\n# directive that was not translated exactly.\n\n",
            source.display()
        );
        if !self.global.keys.is_empty() {
            self.global.write(&mut out);
        }
        if let Some(resolver) = &self.resolver {
            resolver.write(&mut out);
        }
        if let Some(log) = &self.access_log {
            log.write(&mut out);
        }
        if let Some(compression) = &self.compression {
            compression.write(&mut out);
        }
        for zone in self.caches.values() {
            zone.write(&mut out);
        }
        if self.listeners.is_empty() {
            out.push_str("# No nginx `server` block was read: a listener on nginx's default port, so that the file
# loads; every request is answered 404 until routes are added.
[[listener]]
name = \"port80\"\nlisten = \"0.0.0.0:80\"\n\n");
        }
        for listener in &self.listeners {
            listener.table.write(&mut out);
            if listener.tls && !listener.certs.is_empty() {
                out.push_str("[listener.tls]\n\n");
                for cert in &listener.certs {
                    cert.write(&mut out);
                }
            }
        }
        for (_, _, zone) in &self.zones {
            zone.write(&mut out);
        }
        for upstream in self.upstreams.values() {
            upstream.write(&mut out);
        }
        for route in &self.routes {
            route.table.write(&mut out);
        }
        out
    }
}
