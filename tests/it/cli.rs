//! The `fulcrum` binary: `check` on good and bad configs, `--version`, and `run` serving real traffic.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use http::StatusCode;

use crate::harness::*;

fn fulcrum() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fulcrum"))
}

fn check(path: &Path) -> (bool, String) {
    let output = fulcrum()
        .args(["check", "-c"])
        .arg(path)
        .output()
        .expect("run fulcrum check");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn write_config(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("fulcrum.toml");
    std::fs::write(&path, text).expect("write a config file");
    path
}

#[test]
fn every_file_in_config_dir_passes_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("read config/") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let (ok, stderr) = check(&path);
            assert!(ok, "{} fails check: {stderr}", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 1, "config/ holds no .toml file");
}

#[test]
fn check_names_file_line_and_key_of_each_bad_config() {
    let cases: [(&str, &str, &str); 9] = [
        (
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n[upstream.api]\nstrategy = \"fastest\"\nservers = [{ addr = \"127.0.0.1:1\" }]\n",
            ":4: upstream.api.strategy:",
            "unknown variant `fastest`",
        ),
        (
            "[[listener]]\nlisten = \"127.0.0.1:0\"\ncolour = \"blue\"\n",
            ":3: listener[0].colour:",
            "unknown field",
        ),
        (
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n\n[[route]]\npath = \"/\"\nupstream = \"missing\"\n[upstream.api]\nservers = [{ addr = \"127.0.0.1:1\" }]\n",
            ":6: route[0].upstream:",
            "no upstream named `missing`",
        ),
        (
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n[upstream.api]\nservers = []\n",
            ":4: upstream.api.servers:",
            "no server",
        ),
        (
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n[upstream.api]\nservers = [{ addr = \"localhost\" }]\n",
            ":4: upstream.api.servers[0].addr:",
            "host:port",
        ),
        (
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n[upstream.api]\nfail_timeout = \"soon\"\nservers = [{ addr = \"127.0.0.1:1\" }]\n",
            ":4: upstream.api.fail_timeout:",
            "not a duration",
        ),
        (
            "[[listener]]\nlisten = \"nowhere\"\n",
            ":2: listener[0].listen:",
            "not an address",
        ),
        (
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n[upstream.api]\nretry_on = [\"error\", \"sometimes\"]\nservers = [{ addr = \"127.0.0.1:1\" }]\n",
            ":4: upstream.api.retry_on:",
            "unknown value `sometimes`",
        ),
        (
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n[upstream.api]\nservers = [{ addr = \"127.0.0.1:1\", weight = 0 }]\n",
            ":4: upstream.api.servers[0].weight:",
            "from 1 to",
        ),
    ];
    let dir = tempfile::tempdir().expect("temp dir");
    for (text, place, why) in cases {
        assert_check_fails(&dir, text, place, why);
    }
}

/// `check` refuses `text` with an error that starts `config file PATH{place}` and contains `why`.
fn assert_check_fails(dir: &tempfile::TempDir, text: &str, place: &str, why: &str) {
    let path = write_config(dir, text);
    let (ok, stderr) = check(&path);
    assert!(!ok, "check accepted:\n{text}");
    let expected_prefix = format!("config file {}{place}", path.display());
    assert!(
        stderr.starts_with(&expected_prefix),
        "expected `{expected_prefix}`, got: {stderr}"
    );
    assert!(stderr.contains(why), "expected `{why}` in: {stderr}");
}

#[test]
fn check_refuses_bad_health_check_values() {
    let base = "[[listener]]\nlisten = \"127.0.0.1:0\"\n[upstream.api]\nservers = [{ addr = \"127.0.0.1:1\" }]\n[upstream.api.health_check]\n";
    let cases = [
        (
            "interval = \"0s\"\n",
            ":6: upstream.api.health_check.interval:",
            "greater than zero",
        ),
        (
            "interval = \"1s\"\ntimeout = \"1s\"\n",
            ":7: upstream.api.health_check.timeout:",
            "less than interval",
        ),
        (
            "max_fails = 0\n",
            ":6: upstream.api.health_check.max_fails:",
            "at least 1",
        ),
        (
            "passes = 0\n",
            ":6: upstream.api.health_check.passes:",
            "at least 1",
        ),
        (
            "expected_status = \"200-99\"\n",
            ":6: upstream.api.health_check.expected_status:",
            "not a status range",
        ),
        (
            "expected_status = \"2xx\"\n",
            ":6: upstream.api.health_check.expected_status:",
            "not a status range",
        ),
        (
            "type = \"icmp\"\n",
            ":6: upstream.api.health_check.type:",
            "unknown variant",
        ),
    ];
    let dir = tempfile::tempdir().expect("temp dir");
    for (lines, place, why) in cases {
        assert_check_fails(&dir, &format!("{base}{lines}"), place, why);
    }
}

#[test]
fn check_accepts_a_key_the_strategy_ignores_with_a_warning() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_config(
        &dir,
        "[[listener]]\nlisten = \"127.0.0.1:0\"\n[upstream.api]\nstrategy = \"least_conn\"\nhash_key = \"header:x-user-id\"\nservers = [{ addr = \"127.0.0.1:1\" }]\n",
    );
    let (ok, stderr) = check(&path);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "warning: config file {}:5: upstream.api.hash_key:",
            path.display()
        )),
        "{stderr}"
    );
}

#[test]
fn check_reports_unreadable_file() {
    let (ok, stderr) = check(Path::new("/nonexistent/fulcrum.toml"));
    assert!(!ok);
    assert!(
        stderr.contains("/nonexistent/fulcrum.toml") && stderr.contains("cannot read"),
        "{stderr}"
    );
}

#[test]
fn version_prints_the_crate_version() {
    let output = fulcrum()
        .arg("--version")
        .output()
        .expect("run fulcrum --version");
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("fulcrum {}", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_traffic_and_exits_0_on_sigterm() {
    let a = named("a").await;
    let b = named("b").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_config(
        &dir,
        &format!(
            "[[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n[[route]]\npath = \"/\"\nupstream = \"app\"\n[upstream.app]\nstrategy = \"round_robin\"\nservers = [{{ addr = \"{}\" }}, {{ addr = \"{}\" }}]\n",
            a.addr(),
            b.addr()
        ),
    );
    let mut fulcrum = FulcrumProcess::spawn(&path, &[]);
    let addr = fulcrum.listener_addr("public");
    let client = TestClient::new();
    let mut names = Vec::new();
    for _ in 0..4 {
        let reply = client.get(&format!("http://{addr}/")).await;
        assert_eq!(reply.status, StatusCode::OK);
        names.push(reply.body);
    }
    assert_eq!(names, ["a", "b", "a", "b"]);
    fulcrum.signal("TERM");
    let status = fulcrum.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
}
