//! The walk over an nginx config tree: `main`, `events`, `http`, `server` and `location`, with nginx's
//! inheritance (a list directive such as `proxy_set_header` defined in a block replaces the outer list).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::directives::{self, Scope};
use super::output::{string, Table};
use super::parse::{Directive, Origin};
use super::report::Report;
use super::upstream::{self, UpstreamOut};
use super::{location, server_block};

/// A `[[listener]]` being written.
#[derive(Debug)]
pub struct ListenerOut {
    /// `ip:port`.
    pub addr: String,
    /// Its keys.
    pub table: Table,
    /// `listen ... ssl`.
    pub tls: bool,
    /// `[[listener.tls.certificates]]` tables.
    pub certs: Vec<Table>,
    /// The servers (by index) listening here, the default first.
    pub servers: Vec<usize>,
    /// Where `listen` said `default_server`.
    pub default_server: Option<usize>,
}

/// A `[[route]]` being written.
#[derive(Debug)]
pub struct RouteOut {
    /// Its keys.
    pub table: Table,
    /// What it matches: host, path, exact.
    pub matches: (Option<String>, String, bool),
    /// The server block it came from.
    pub server: usize,
}

/// A `server` block as the walk found it.
#[derive(Debug, Default)]
pub struct ServerInfo {
    /// Host patterns for routes; empty: none (any host).
    pub names: Vec<String>,
    /// Listener indices.
    pub listeners: Vec<usize>,
    /// Whether one of its locations is `location /`.
    pub has_root: bool,
    /// Where it starts.
    pub origin: Option<Origin>,
}

/// Everything translated so far.
pub struct Translator {
    /// The report.
    pub report: Report,
    /// The directory of the main file (relative certificate paths are read from it, as nginx does).
    pub base: PathBuf,
    /// `[global]`.
    pub global: Table,
    /// Listeners, by address.
    pub listeners: Vec<ListenerOut>,
    /// Upstreams, by name.
    pub upstreams: BTreeMap<String, UpstreamOut>,
    /// Names of the `upstream` blocks (read first: `proxy_pass` may come before them).
    pub upstream_names: HashSet<String>,
    /// `limit_req_zone` definitions: name -> (table, origin).
    pub zone_defs: HashMap<String, (Table, Directive)>,
    /// Zones written: (nginx zone, variant) -> name, and their tables.
    pub zones: Vec<(String, String, Table)>,
    /// `limit_conn_zone` names keyed by the client address.
    pub conn_zones: HashMap<String, bool>,
    /// Routes.
    pub routes: Vec<RouteOut>,
    /// Server blocks.
    pub servers: Vec<ServerInfo>,
    /// `[access_log]`.
    pub access_log: Option<Table>,
    /// `[resolver]`.
    pub resolver: Option<Table>,
    /// `[compression]`, made by the first `gzip on` or `gzip_*` setting.
    pub compression: Option<Table>,
    /// `[cache.NAME]` zones, by name.
    pub caches: BTreeMap<String, Table>,
    /// The zone names `proxy_cache_path` defines.
    pub cache_paths: HashSet<String>,
    /// `log_format` names.
    pub log_formats: HashSet<String>,
    /// A directive `nginx -t` would refuse (the import then fails with exit status 1).
    pub invalid: Option<(Origin, String)>,
}

impl Translator {
    /// A translator for a config whose main file is in `base`.
    pub fn new(base: &Path) -> Self {
        Translator {
            report: Report::default(),
            base: base.to_path_buf(),
            global: Table::new("[global]", "nginx main context"),
            listeners: Vec::new(),
            upstreams: BTreeMap::new(),
            upstream_names: HashSet::new(),
            zone_defs: HashMap::new(),
            zones: Vec::new(),
            conn_zones: HashMap::new(),
            routes: Vec::new(),
            servers: Vec::new(),
            access_log: None,
            resolver: None,
            compression: None,
            caches: BTreeMap::new(),
            cache_paths: HashSet::new(),
            log_formats: HashSet::new(),
            invalid: None,
        }
    }

    /// Translates the whole tree. A file without an `http` block is read as the inside of one (a
    /// `conf.d/` file, or a snippet from a document).
    pub fn run(&mut self, tree: &[Directive]) {
        collect_upstream_names(tree, &mut self.upstream_names);
        super::cache::collect_zone_names(tree, &mut self.cache_paths);
        let mut scope = Scope::default();
        self.block(tree, &mut scope, true);
        self.finish();
    }

    /// The directives of `main` or `http` (both: a snippet's top level is read as `http`).
    fn block(&mut self, tree: &[Directive], scope: &mut Scope, main: bool) {
        // Settings first (their order inside a block does not matter to nginx), then the blocks.
        for d in tree {
            if d.block.is_none() && !self.main_directive(d, main) {
                directives::setting(self, d, scope, directives::Level::Http);
            }
        }
        scope.close_level();
        for d in tree {
            match (d.name.as_str(), d.block.as_deref()) {
                ("events", Some(inner)) => self.events(d, inner),
                ("http", Some(inner)) => {
                    self.report.exact(d);
                    let mut scope = scope.clone();
                    self.block(inner, &mut scope, false);
                }
                ("upstream", Some(_)) => {
                    let out = upstream::upstream_block(d, &mut self.report);
                    self.upstreams.insert(out.name.clone(), out);
                }
                ("server", Some(inner)) => self.server(d, inner, scope),
                (_, Some(_)) => self.unsupported_block(d),
                _ => {}
            }
        }
    }

    fn main_directive(&mut self, d: &Directive, main: bool) -> bool {
        let _ = main;
        match d.name.as_str() {
            "worker_processes" => {
                match d.args.first().map(String::as_str) {
                    Some("auto") => {
                        self.global.set("worker_threads", "0");
                        self.report.exact(d);
                    }
                    Some(n) if n.parse::<u64>().is_ok() => {
                        self.global.set("worker_threads", n);
                        self.report
                            .differ(d, "threads of one process, not processes");
                    }
                    _ => self.report.unsupported(d, "expects a number or auto"),
                }
                true
            }
            "pid" => {
                if let Some(path) = d.args.first() {
                    self.global.set("pid_file", string(path));
                    self.report.exact(d);
                }
                true
            }
            "user"
            | "worker_rlimit_nofile"
            | "worker_shutdown_timeout"
            | "daemon"
            | "master_process"
            | "load_module"
            | "env"
            | "thread_pool"
            | "pcre_jit" => {
                self.report.ignored(
                    d,
                    "a process setting of nginx's (run fulcrum under systemd or a container, docs/operations.md)",
                );
                true
            }
            "error_log" => {
                self.report
                    .ignored(d, "fulcrum logs to stderr (RUST_LOG chooses the level)");
                true
            }
            _ => false,
        }
    }

    fn events(&mut self, d: &Directive, inner: &[Directive]) {
        self.report.exact(d);
        for e in inner {
            match e.name.as_str() {
                "worker_connections" => match e.args.first().and_then(|n| n.parse::<u64>().ok()) {
                    Some(n) => {
                        self.global_listener_key("max_connections", n.to_string());
                        self.report.differ(
                            e,
                            "written as each listener's max_connections: nginx counts per worker process, upstream connections included",
                        );
                    }
                    None => self.report.unsupported(e, "expects a number"),
                },
                "use" | "multi_accept" | "accept_mutex" | "accept_mutex_delay" => {
                    self.report
                        .ignored(e, "fulcrum's event loop (epoll, one per thread) decides");
                }
                _ => self
                    .report
                    .unsupported(e, "not an events directive fulcrum knows"),
            }
        }
    }

    /// A key every listener gets (listeners made later too).
    fn global_listener_key(&mut self, key: &str, value: String) {
        self.pending_listener_keys_push(key, value);
    }

    fn pending_listener_keys_push(&mut self, key: &str, value: String) {
        // Stored on the global table under a private prefix; applied to each listener at the end.
        self.global.set(&format!("@listener.{key}"), value);
    }

    fn unsupported_block(&mut self, d: &Directive) {
        let why = match d.name.as_str() {
            "if" => "`if` has no equivalent (routes match host and path only)",
            "map" if d.args.first().is_some_and(|a| a == "$http_upgrade") => {
                self.report.ignored(
                    d,
                    "the WebSocket Connection map: fulcrum passes WebSocket upgrades by default (a route's `upgrades`)",
                );
                return;
            }
            "map" | "geo" | "split_clients" => {
                "variables made by `map`, `geo` or `split_clients` have no equivalent"
            }
            "types" => {
                self.report.ignored(
                    d,
                    "MIME types are for files nginx serves itself; fulcrum serves none",
                );
                return;
            }
            "limit_except" => "method restrictions have no equivalent",
            "stream" | "mail" => "TCP/UDP and mail proxying are not supported",
            "location" => "a location outside a `server` block has no equivalent",
            _ => "this block has no equivalent",
        };
        self.report.unsupported(d, why);
    }

    /// `server { ... }` inside `http`.
    fn server(&mut self, d: &Directive, inner: &[Directive], outer: &Scope) {
        self.report.exact(d);
        let index = self.servers.len();
        self.servers.push(ServerInfo {
            origin: Some(d.origin.clone()),
            ..ServerInfo::default()
        });
        let mut scope = outer.clone();
        let mut listens = Vec::new();
        let mut names: Vec<(String, Directive)> = Vec::new();
        let mut server_return = None;
        for s in inner {
            match s.name.as_str() {
                "listen" => listens.push(s.clone()),
                "server_name" => {
                    for name in &s.args {
                        names.push((name.clone(), s.clone()));
                    }
                    if s.args.is_empty() {
                        self.report.exact(s);
                    }
                }
                "return" => server_return = Some(s.clone()),
                _ if s.block.is_none() => {
                    directives::setting(self, s, &mut scope, directives::Level::Server)
                }
                _ => {}
            }
        }
        scope.close_level();
        // Listeners.
        if listens.is_empty() {
            let listener = self.listener("0.0.0.0:80", d);
            self.servers[index].listeners.push(listener);
        }
        for l in &listens {
            if let Some(listener) = self.listen(l, index) {
                if !self.servers[index].listeners.contains(&listener) {
                    self.servers[index].listeners.push(listener);
                }
            }
        }
        for &l in &self.servers[index].listeners.clone() {
            self.listeners[l].servers.push(index);
        }
        // Names.
        let mut hosts = Vec::new();
        for (name, s) in &names {
            match server_block::server_name(name) {
                Ok(found) => {
                    hosts.extend(found);
                    self.report.exact(s);
                }
                Err(why) => self.report.unsupported(s, why),
            }
        }
        hosts.dedup();
        self.servers[index].names = hosts;
        server_block::apply_server_scope(self, index, &scope);
        // A server-level `return` answers before any location is looked at.
        if let Some(r) = &server_return {
            server_block::server_return(self, r, index, &scope);
            for s in inner.iter().filter(|s| s.name == "location") {
                self.report.ignored(
                    s,
                    "the server's `return` answers every request before any location",
                );
            }
            return;
        }
        for s in inner {
            match (s.name.as_str(), s.block.as_deref()) {
                ("location", Some(body)) => self.location(s, body, index, &scope),
                (_, Some(_)) => self.unsupported_block(s),
                _ => {}
            }
        }
    }

    /// `location [=|^~] PATH { ... }`.
    fn location(&mut self, d: &Directive, body: &[Directive], server: usize, outer: &Scope) {
        let (exact, path) = match d.args.as_slice() {
            [path] if !path.starts_with('@') => (false, path.clone()),
            [m, path] if m == "=" => (true, path.clone()),
            [m, path] if m == "^~" => (false, path.clone()),
            [m, _] if m == "~" || m == "~*" => {
                self.report.unsupported(
                    d,
                    "regular-expression locations are not supported (routes match a prefix or an exact path)",
                );
                return;
            }
            _ => {
                self.report
                    .unsupported(d, "named locations (@name) are not supported");
                return;
            }
        };
        if !path.starts_with('/') {
            self.report
                .unsupported(d, "a location path must start with /");
            return;
        }
        let mut scope = outer.clone();
        let mut proxy_pass = None;
        let mut answer = None;
        for s in body {
            match (s.name.as_str(), s.block.is_some()) {
                ("proxy_pass", false) => proxy_pass = Some(s.clone()),
                ("return", false) => answer = Some(s.clone()),
                ("location", true) => self.report.unsupported(
                    s,
                    "nested locations are not supported; write it as a location of its own",
                ),
                (_, true) => self.unsupported_block(s),
                _ => directives::setting(self, s, &mut scope, directives::Level::Location),
            }
        }
        scope.close_level();
        if path == "/" && !exact {
            self.servers[server].has_root = true;
        }
        location::location_route(
            self,
            d,
            (exact, &path),
            server,
            &scope,
            proxy_pass.as_ref(),
            answer.as_ref(),
        );
    }

    /// Adds a route for every host of `server`; a route that another server already wrote with the
    /// same host and path is merged when identical and reported when not.
    pub fn add_route(
        &mut self,
        d: &Directive,
        server: usize,
        path: &str,
        exact: bool,
        keys: &Table,
    ) {
        let hosts: Vec<Option<String>> = if self.is_catch_all(server) {
            vec![None]
        } else {
            self.servers[server]
                .names
                .iter()
                .cloned()
                .map(Some)
                .collect()
        };
        for host in hosts {
            let mut table = Table::new("[[route]]", format!("nginx location at {}", d.origin));
            if let Some(host) = &host {
                table.set("host", string(host));
            }
            table.set("path", string(path));
            if exact {
                table.set("match", string("exact"));
            }
            for (k, v) in &keys.keys {
                table.set(k, v.clone());
            }
            let matches = (host.clone(), path.to_string(), exact);
            if let Some(other) = self.routes.iter().find(|r| r.matches == matches) {
                if other.table.keys != table.keys {
                    let target = |t: &Table| {
                        (
                            t.get("upstream").map(str::to_string),
                            t.get("return").map(str::to_string),
                        )
                    };
                    let differing: Vec<&str> = table
                        .keys
                        .iter()
                        .chain(&other.table.keys)
                        .map(|(k, _)| k.as_str())
                        .filter(|k| table.get(k) != other.table.get(k))
                        .collect::<std::collections::BTreeSet<_>>()
                        .into_iter()
                        .collect();
                    let why = format!(
                        "fulcrum's routes answer on every listener, and the {} of {} already has a route for host {} and path {path}; it serves this location's requests too, with its own {}",
                        if other.server == server { "same server" } else { "server" },
                        other.table.origin.trim_start_matches("nginx location at "),
                        host.as_deref().unwrap_or("(any)"),
                        differing.join(", ")
                    );
                    if target(&other.table) == target(&table) {
                        self.report.differ(d, why);
                    } else {
                        self.report.unsupported(d, why);
                    }
                }
                continue;
            }
            self.routes.push(RouteOut {
                table,
                matches,
                server,
            });
        }
    }

    /// Whether `server`'s routes match any host: it is the default server of one of its listeners, or
    /// has no name.
    pub fn is_catch_all(&self, server: usize) -> bool {
        let info = &self.servers[server];
        info.names.is_empty()
            || info.listeners.iter().any(|&l| {
                let listener = &self.listeners[l];
                listener
                    .default_server
                    .or_else(|| listener.servers.first().copied())
                    == Some(server)
            })
    }
}

fn collect_upstream_names(tree: &[Directive], names: &mut HashSet<String>) {
    for d in tree {
        if d.name == "upstream" {
            if let Some(name) = d.args.first() {
                names.insert(name.clone());
            }
        } else if let Some(inner) = &d.block {
            collect_upstream_names(inner, names);
        }
    }
}
