//! `fulcrum import-nginx` on the fixtures in tests/fixtures/nginx/: the seed documents' blocks, configs of
//! the shapes users run, and broken ones; every output passes `fulcrum check`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nginx")
}

/// What one `import-nginx` run gave.
struct Run {
    status: i32,
    toml: String,
    stderr: String,
}

fn import(path: &Path) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .arg("import-nginx")
        .arg(path)
        .output()
        .expect("run fulcrum import-nginx");
    Run {
        status: output.status.code().expect("an exit status"),
        toml: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `fulcrum check` on `toml`; panics with its error when it refuses.
fn assert_checks(toml: &str, what: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fulcrum.toml");
    std::fs::write(&path, toml).expect("write the TOML");
    let output = Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .expect("run fulcrum check");
    assert!(
        output.status.success(),
        "{what}: fulcrum check refuses the import: {}\n{toml}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A copy of the fixture `name` in a temp dir, with a self-signed certificate `cert.pem`/`key.pem`
/// beside it and `/etc/nginx/ssl/` pointed there.
fn with_certificate(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = rcgen::generate_simple_self_signed(vec!["api.example.com".to_string()])
        .expect("a certificate");
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).expect("write cert");
    std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem())
        .expect("write key");
    let text = std::fs::read_to_string(fixtures().join(name)).expect("read the fixture");
    let text = text.replace("/etc/nginx/ssl/", &format!("{}/", dir.path().display()));
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, text).expect("write the fixture copy");
    (dir, path)
}

/// The `[[route]]` of the imported `config` (from `toml`) for `path`.
fn route_at<'a>(config: &'a toml::Value, path: &str, toml: &str) -> &'a toml::Value {
    config["route"]
        .as_array()
        .expect("routes")
        .iter()
        .find(|r| r["path"].as_str() == Some(path))
        .unwrap_or_else(|| panic!("a route for {path}: {toml}"))
}

#[test]
fn every_fixture_imports_with_its_exit_status_and_passes_check() {
    // (fixture, exit status): 3 where something that changes behaviour has no equivalent.
    let cases = [
        ("seeds/scaling-frontend-backend.conf", 0),
        ("seeds/docker-replicas.conf", 0),
        ("seeds/health-location.conf", 3),
        ("seeds/ip-hash.conf", 0),
        ("seeds/least-conn.conf", 0),
        ("configs/multi-host.conf", 0),
        ("configs/websocket.conf", 0),
        ("configs/rate-limits.conf", 0),
        ("configs/upstream-params.conf", 0),
        ("configs/timeouts.conf", 0),
        ("configs/includes/nginx.conf", 0),
        ("configs/real-ip-and-logs.conf", 0),
        ("configs/health-and-returns.conf", 0),
        ("configs/proxy-uri.conf", 0),
        ("configs/headers.conf", 0),
        ("configs/compression.conf", 0),
        ("configs/cache.conf", 0),
        ("configs/unsupported.conf", 3),
    ];
    for (name, status) in cases {
        let run = import(&fixtures().join(name));
        assert_eq!(run.status, status, "{name}: {}", run.stderr);
        let summary = run.stderr.lines().last().unwrap_or("");
        assert!(
            summary.contains(" directives read: ") && summary.contains(" translated exactly, "),
            "{name}: no summary line: {}",
            run.stderr
        );
        let file = name.rsplit('/').next().unwrap_or(name);
        assert!(
            run.toml.contains("\n# nginx ")
                && (run.toml.contains(&format!("{file}:")) || name.contains("includes")),
            "{name}: tables do not name their nginx file and line:\n{}",
            run.toml
        );
        assert_checks(&run.toml, name);
    }
}

#[test]
fn tls_fixtures_import_with_their_certificates() {
    for name in ["seeds/fastapi-nodes.conf", "configs/tls-termination.conf"] {
        let (dir, path) = with_certificate(name);
        let run = import(&path);
        assert_eq!(run.status, 0, "{name}: {}", run.stderr);
        assert!(
            run.toml.contains("[[listener.tls.certificates]]"),
            "{}",
            run.toml
        );
        assert!(
            run.toml
                .contains(&format!("cert = \"{}/cert.pem\"", dir.path().display())),
            "{}",
            run.toml
        );
        assert_checks(&run.toml, name);
    }
}

#[test]
fn the_seed_config_translates_each_directive_as_the_docs_say() {
    let run = import(&fixtures().join("seeds/scaling-frontend-backend.conf"));
    for expected in [
        "[upstream.frontend]\nstrategy = \"least_conn\"",
        "[upstream.backend]\nstrategy = \"ip_hash\"\nip_hash_prefix = 24",
        "max_fails = 3, fail_timeout = \"30s\"",
        "weight = 1, backup = true",
        "[rate_limit.general]\nkey = \"client_ip\"\nrate = \"5r/s\"\nmax_keys = 163840\nburst = 20\nnodelay = true\nstatus = 503",
        "[rate_limit.api]\nkey = \"client_ip\"\nrate = \"10r/s\"",
        "path = \"/api/\"\nupstream = \"backend\"\nrate_limit = [\"api\"]",
        "connect_timeout = \"60s\"",
    ] {
        assert!(run.toml.contains(expected), "want {expected:?} in:\n{}", run.toml);
    }
    let file = "seeds/scaling-frontend-backend.conf";
    for expected in [
        format!("{file}:34: proxy_cache: translated with a difference: no proxy_cache_path defines `frontend_cache`"),
        format!("{file}:29: proxy_set_header: translated with a difference: nginx sends $host"),
        format!(
            "{file}:4: server: translated with a difference: `frontend1` does not resolve here"
        ),
    ] {
        assert!(
            run.stderr
                .lines()
                .any(|l| l.ends_with(&expected) || l.contains(&expected)),
            "want {expected:?} in:\n{}",
            run.stderr
        );
    }
    assert!(run
        .stderr
        .contains("35 directives read: 22 translated exactly, 13 with differences, 0 not supported, 0 ignored"));
    assert!(
        run.toml.contains("[cache.frontend_cache]\nmax_size = \"256m\"")
            && run.toml.contains("cache = \"frontend_cache\"\ncache_valid = { \"200\" = \"10m\", \"302\" = \"10m\", \"404\" = \"1m\" }"),
        "{}",
        run.toml
    );
}

#[test]
fn the_reports_name_what_has_no_equivalent_and_what_differs() {
    let unsupported = import(&fixtures().join("configs/unsupported.conf"));
    for expected in [
        "unsupported.conf:4: brotli: not supported:",
        "unsupported.conf:14: location: not supported: regular-expression locations",
        "unsupported.conf:16: rewrite: not supported:",
        "unsupported.conf:20: if: not supported:",
        "unsupported.conf:9: root: not supported: fulcrum serves no files",
    ] {
        assert!(
            unsupported.stderr.contains(expected),
            "want {expected}:\n{}",
            unsupported.stderr
        );
    }
    let tls = with_certificate("configs/tls-termination.conf");
    let run = import(&tls.1);
    assert!(
        run.toml.contains("redirect_to_https = true"),
        "{}",
        run.toml
    );
    assert!(
        run.stderr.contains("nginx.conf:8: return: translated with a difference: fulcrum answers 308 (keeps the method), nginx 301"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("ssl_session_cache: ignored: "),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("(no effect here)"), "{}", run.stderr);
    let hosts = import(&fixtures().join("configs/multi-host.conf"));
    for expected in [
        "host = \"shop.example.com\"\npath = \"/\"\nupstream = \"shop\"",
        "host = \"www.shop.example.com\"\npath = \"/\"",
        "host = \"blog.example.org\"\npath = \"/posts/\"",
        "host = \"*.blog.example.org\"\npath = \"/posts/\"",
        "host = \"*.news.example.org\"\npath = \"/posts/\"",
        // The blog server has no `location /`: its other paths are 404 there, as in nginx.
        "host = \"blog.example.org\"\npath = \"/\"\nreturn = { status = 404 }",
    ] {
        assert!(
            hosts.toml.contains(expected),
            "want {expected:?} in:\n{}",
            hosts.toml
        );
    }
    let uri = import(&fixtures().join("configs/proxy-uri.conf"));
    for expected in [
        "path = \"/api/\"\nupstream = \"api\"\nstrip_prefix = true",
        "path = \"/v1/\"\nupstream = \"api\"\nrewrite_prefix = \"/v2/\"",
        "path = \"/version\"\nmatch = \"exact\"\nupstream = \"api\"\nrewrite_prefix = \"/meta/version\"",
        "[upstream.127_0_0_1_2202]",
    ] {
        assert!(uri.toml.contains(expected), "want {expected:?} in:\n{}", uri.toml);
    }
}

#[test]
fn includes_follow_globs_relative_to_the_including_file() {
    let run = import(&fixtures().join("configs/includes/nginx.conf"));
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert!(run.toml.contains("conf.d/a.conf:4"), "{}", run.toml);
    assert!(run.toml.contains("conf.d/b.conf:4"), "{}", run.toml);
    assert!(run.toml.contains("upstreams.conf:2"), "{}", run.toml);
    assert!(
        run.toml.contains("host = \"b.example.com\""),
        "{}",
        run.toml
    );
}

#[test]
fn broken_configs_exit_1_naming_file_and_line() {
    let cases = [
        (
            "unbalanced.conf",
            10,
            "unexpected end of file, expecting \"}\"",
        ),
        ("extra-brace.conf", 7, "unexpected \"}\""),
        (
            "unknown-block.conf",
            5,
            "unknown block directive \"locaton\"",
        ),
        (
            "missing-semicolon.conf",
            4,
            "invalid parameter \"server_name\"",
        ),
        (
            "missing-semicolon-before-brace.conf",
            7,
            "unexpected \"}\" (a \";\" is missing before it)",
        ),
    ];
    for (name, line, why) in cases {
        let path = fixtures().join("broken").join(name);
        let run = import(&path);
        assert_eq!(run.status, 1, "{name}: {}", run.stderr);
        let expected = format!("{}:{line}: {why}", path.display());
        assert!(
            run.stderr.contains(&expected),
            "{name}: want {expected} in {}",
            run.stderr
        );
        assert!(run.toml.is_empty(), "{name}: TOML written for broken input");
    }
    let missing = import(Path::new("/nonexistent/nginx.conf"));
    assert_eq!(missing.status, 1);
    assert!(missing
        .stderr
        .contains("open() \"/nonexistent/nginx.conf\" failed"));
}

#[test]
fn output_flag_writes_the_file_and_help_documents_the_command() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("fulcrum.toml");
    let status = Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .arg("import-nginx")
        .arg(fixtures().join("configs/headers.conf"))
        .arg("-o")
        .arg(&out)
        .output()
        .expect("run import-nginx");
    assert_eq!(status.status.code(), Some(0));
    assert!(status.stdout.is_empty());
    let toml = std::fs::read_to_string(&out).expect("read -o file");
    assert!(
        toml.contains("request_headers = { set = { \"X-Env\" = \"prod\" } }"),
        "{toml}"
    );
    assert!(
        toml.contains(
            "request_headers = { set = { \"X-Admin\" = \"1\" }, remove = [\"Accept-Encoding\"] }"
        ),
        "{toml}"
    );
    let help = Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .args(["import-nginx", "--help"])
        .output()
        .expect("run --help");
    let text = String::from_utf8_lossy(&help.stdout);
    for expected in [
        "translated with a difference",
        "not supported",
        "Exit status",
        "-o, --output",
    ] {
        assert!(
            text.contains(expected),
            "want {expected} in --help:\n{text}"
        );
    }
}

#[test]
fn buffering_directives_become_buffering_keys() {
    let run = import(&fixtures().join("configs/buffering.conf"));
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_checks(&run.toml, "buffering.conf");
    let config: toml::Value = toml::from_str(&run.toml).expect("TOML");
    let route = |path: &str| route_at(&config, path, &run.toml);
    assert_eq!(
        route("/stream/").get("buffering").and_then(|v| v.as_bool()),
        Some(false)
    );
    assert_eq!(
        route("/upload/")
            .get("request_buffering")
            .and_then(|v| v.as_bool()),
        Some(false)
    );
    assert!(
        route("/").get("buffering").is_none(),
        "on is the default: {}",
        run.toml
    );
    assert_eq!(
        config["upstream"]["app"]["max_temp_file_size"].as_str(),
        Some("512m")
    );
    assert_eq!(
        config["global"]["temp_path"].as_str(),
        Some("/tmp/fulcrum-import-test")
    );
    for (line, directive) in [
        (4, "proxy_temp_path"),
        (5, "client_body_buffer_size"),
        (6, "proxy_buffers"),
    ] {
        assert!(
            run.stderr.contains(&format!(
                "buffering.conf:{line}: {directive}: translated with a difference"
            )),
            "{directive}: {}",
            run.stderr
        );
    }
}

#[test]
fn gzip_directives_become_the_compression_section() {
    let run = import(&fixtures().join("configs/compression.conf"));
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_checks(&run.toml, "compression.conf");
    let config: toml::Value = toml::from_str(&run.toml).expect("TOML");
    let compression = &config["compression"];
    assert_eq!(
        compression["algorithms"].as_array().map(Vec::len),
        Some(1),
        "{}",
        run.toml
    );
    assert_eq!(compression["algorithms"][0].as_str(), Some("gzip"));
    let types: Vec<&str> = compression["types"]
        .as_array()
        .expect("types")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(types, ["text/html", "application/json", "text/css"]);
    assert_eq!(compression["min_size"].as_integer(), Some(1000));
    assert_eq!(compression["gzip_level"].as_integer(), Some(5));
    let compress = |path: &str| {
        route_at(&config, path, &run.toml)
            .get("compress")
            .and_then(|v| v.as_bool())
    };
    assert_eq!(
        compress("/"),
        None,
        "gzip on is the section's default: {}",
        run.toml
    );
    assert_eq!(compress("/downloads/"), Some(false));
    assert!(
        !run.stderr.contains(": gzip"),
        "every gzip directive here translates exactly: {}",
        run.stderr
    );
    let without = import(&fixtures().join("configs/buffering.conf"));
    assert!(
        !without.toml.contains("compress"),
        "no gzip, no compression keys: {}",
        without.toml
    );
}

#[test]
fn proxy_cache_directives_become_cache_zones_and_route_keys() {
    let run = import(&fixtures().join("configs/cache.conf"));
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_checks(&run.toml, "cache.conf");
    let config: toml::Value = toml::from_str(&run.toml).expect("TOML");
    assert_eq!(
        config["cache"]["pages"]["max_size"].as_str(),
        Some("64m"),
        "{}",
        run.toml
    );
    assert_eq!(config["cache"]["api"]["max_size"].as_str(), Some("256m"));
    let route = |path: &str| route_at(&config, path, &run.toml);
    let strings = |value: &toml::Value| -> Vec<String> {
        value
            .as_array()
            .expect("an array")
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    let root = route("/");
    assert_eq!(root["cache"].as_str(), Some("pages"));
    let valid = root["cache_valid"].as_table().expect("cache_valid");
    assert_eq!(valid.len(), 3, "{valid:?}");
    assert_eq!(valid["200"].as_str(), Some("10m"));
    assert_eq!(valid["302"].as_str(), Some("10m"));
    assert_eq!(valid["404"].as_str(), Some("1m"));
    assert_eq!(
        root["cache_lock"].as_str(),
        Some("5s"),
        "nginx's default lock timeout"
    );
    assert_eq!(
        strings(&root["cache_use_stale"]),
        ["error", "timeout", "updating", "http_500", "http_503"]
    );
    assert_eq!(root["cache_background_update"].as_bool(), Some(true));
    assert!(root.get("cache_key").is_none(), "fulcrum's default key");
    assert!(
        root.get("response_headers").is_none(),
        "X-Cache-Status is always sent"
    );
    let api = route("/api/");
    assert_eq!(api["cache"].as_str(), Some("api"));
    let valid = api["cache_valid"].as_table().expect("cache_valid");
    assert_eq!(
        valid.len(),
        1,
        "an inner proxy_cache_valid replaces the outer list: {valid:?}"
    );
    assert_eq!(valid["any"].as_str(), Some("5400s"));
    assert_eq!(
        strings(&api["cache_key"]),
        ["host", "path", "query", "cookie:session"]
    );
    assert_eq!(api["cache_lock"].as_str(), Some("2s"));
    let live = route("/live/");
    assert!(live.get("cache").is_none(), "{}", run.toml);
    for expected in [
        "cache.conf:4: proxy_cache_path: translated with a difference: entries are kept in memory, not on disk at /var/cache/nginx/pages; entries leave by least recent use",
        "cache.conf:5: proxy_cache_path: translated with a difference: entries are kept in memory, not on disk at /var/cache/nginx/api; nginx bounds the disk only by max_size",
        "cache.conf:13: proxy_cache_use_stale: translated with a difference: http_404 cannot serve a stale entry here",
        "cache.conf:21: proxy_cache_lock_timeout: translated with a difference: after it a waiting request goes to the server",
    ] {
        assert!(run.stderr.contains(expected), "want {expected}:\n{}", run.stderr);
    }
    for exact in [
        ": proxy_cache:",
        ": proxy_cache_valid:",
        ": proxy_cache_lock:",
        ": proxy_cache_background_update:",
        ": proxy_cache_key:",
        ": add_header:",
    ] {
        assert!(
            !run.stderr.contains(exact),
            "{exact} translates exactly: {}",
            run.stderr
        );
    }
}
