//! What the package and the image are made of: completions and the man page generated from the CLI
//! definition, `fulcrum probe` (the image's health check) against a running fulcrum's admin API, and
//! every fulcrum config under deploy/ (files and Kubernetes ConfigMaps) passing `fulcrum check`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use yaml_rust2::{Yaml, YamlLoader};

use crate::harness::*;

fn fulcrum(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .args(args)
        .output()
        .expect("run fulcrum")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

const SUBCOMMANDS: [&str; 4] = ["run", "check", "reload", "probe"];

#[test]
fn completions_are_generated_for_bash_zsh_and_fish() {
    for (shell, marker) in [
        ("bash", "complete -F _fulcrum"),
        ("zsh", "#compdef fulcrum"),
        ("fish", "complete -c fulcrum"),
    ] {
        let output = fulcrum(&["completions", shell]);
        assert!(output.status.success(), "completions {shell}: {output:?}");
        let script = stdout(&output);
        assert!(script.contains(marker), "{shell} script lacks `{marker}`");
        for subcommand in SUBCOMMANDS {
            assert!(
                script.contains(subcommand),
                "{shell} script does not complete `{subcommand}`"
            );
        }
    }
}

#[test]
fn bash_completion_script_is_valid_bash() {
    let script = stdout(&fulcrum(&["completions", "bash"]));
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fulcrum.bash");
    std::fs::write(&path, script).expect("write the script");
    let status = Command::new("bash")
        .arg("-n")
        .arg(&path)
        .status()
        .expect("run bash -n");
    assert!(status.success(), "bash -n refuses the completion script");
}

#[test]
fn completions_refuse_an_unknown_shell() {
    let output = fulcrum(&["completions", "tcsh"]);
    assert!(!output.status.success());
}

#[test]
fn man_page_documents_every_subcommand() {
    let output = fulcrum(&["man"]);
    assert!(output.status.success(), "man: {output:?}");
    let page = stdout(&output);
    assert!(page.contains(".TH fulcrum 1"), "no .TH header: {page}");
    assert!(page.contains(".SH SYNOPSIS") && page.contains(".SH SUBCOMMANDS"));
    for subcommand in SUBCOMMANDS {
        assert!(
            page.contains(&format!("fulcrum\\-{subcommand}")),
            "the man page does not list `{subcommand}`"
        );
    }
    assert!(page.contains(env!("CARGO_PKG_VERSION")));
}

/// A running fulcrum with its admin API on a free loopback port, and that port's address.
fn fulcrum_with_admin(dir: &tempfile::TempDir) -> (FulcrumProcess, String) {
    let backend = refusing_addr();
    let path = dir.path().join("fulcrum.toml");
    std::fs::write(
        &path,
        format!(
            "[[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n[[route]]\npath = \"/\"\nupstream = \"app\"\n[upstream.app]\nservers = [{{ addr = \"{backend}\" }}]\n[admin]\nlisten = \"127.0.0.1:0\"\n"
        ),
    )
    .expect("write a config file");
    let mut process = FulcrumProcess::spawn(&path, &[]);
    let line = process.wait_for_line("admin API listening");
    let addr = line
        .split("addr=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in `{line}`"))
        .to_string();
    (process, addr)
}

#[test]
fn probe_exits_0_on_the_admin_status_of_a_running_fulcrum() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_process, admin) = fulcrum_with_admin(&dir);
    let url = format!("http://{admin}/status");
    let output = fulcrum(&["probe", &url]);
    assert!(output.status.success(), "probe {url}: {output:?}");
    assert_eq!(stdout(&output).trim(), format!("{url}: 200"));
}

#[test]
fn probe_exits_1_on_an_answer_other_than_2xx() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_process, admin) = fulcrum_with_admin(&dir);
    let output = fulcrum(&["probe", &format!("http://{admin}/no-such-endpoint")]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("answered 404"), "stderr: {stderr}");
}

#[test]
fn probe_exits_1_when_nothing_listens() {
    let output = fulcrum(&[
        "probe",
        "--timeout",
        "2",
        &format!("http://{}/status", refusing_addr()),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot connect"), "stderr: {stderr}");
}

#[test]
fn probe_refuses_a_url_it_cannot_send() {
    let output = fulcrum(&["probe", "https://127.0.0.1:9901/status"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("only http://"), "stderr: {stderr}");
}

fn files_under(dir: &Path, extension: &str, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read a deploy/ directory") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            files_under(&path, extension, found);
        } else if path.extension().is_some_and(|e| e == extension) {
            found.push(path);
        }
    }
}

fn assert_check_passes(path: &Path, what: &str) {
    let output = fulcrum(&["check", "-c", &path.to_string_lossy()]);
    assert!(
        output.status.success(),
        "{what} fails check: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn every_config_file_under_deploy_passes_check() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let mut files = Vec::new();
    files_under(&deploy, "toml", &mut files);
    // The package's default, the image's default, the compose example's.
    assert!(files.len() >= 3, "too few configs under deploy/: {files:?}");
    for file in files {
        assert_check_passes(&file, &file.display().to_string());
    }
}

#[test]
fn every_fulcrum_configmap_under_deploy_passes_check() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let mut manifests = Vec::new();
    files_under(&deploy, "yaml", &mut manifests);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut checked = 0;
    for manifest in manifests {
        let text = std::fs::read_to_string(&manifest).expect("read a manifest");
        let docs = YamlLoader::load_from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not YAML: {e}", manifest.display()));
        for doc in docs {
            if doc["kind"].as_str() != Some("ConfigMap") {
                continue;
            }
            if let Yaml::String(config) = &doc["data"]["fulcrum.toml"] {
                let path = dir.path().join(format!("{checked}.toml"));
                std::fs::write(&path, config).expect("write the ConfigMap's config");
                let name = doc["metadata"]["name"].as_str().unwrap_or("?");
                assert_check_passes(
                    &path,
                    &format!("ConfigMap {name} in {}", manifest.display()),
                );
                checked += 1;
            }
        }
    }
    // The sidecar's and the gateway's.
    assert!(
        checked >= 2,
        "only {checked} fulcrum ConfigMaps under deploy/"
    );
}
