//! The status page in a real headless Chromium: it loads, lists the servers, and shows one going down.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::*;

/// Debian's Chromium, installed by `scripts/test`. Missing, the test fails and says how to install it.
fn chromium() -> PathBuf {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "Chromium is not installed: run the tests with scripts/test, which installs it, \
                 or apt-get install -y chromium"
            )
        })
}

/// The page's DOM after its scripts ran (Chromium's virtual time lets the first fetches finish).
fn dump_dom(browser: &Path, url: &str) -> String {
    let profile = tempfile::tempdir().expect("a profile dir");
    let output = std::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=3000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .output()
        .expect("run chromium");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_lists_servers_and_shows_one_going_down() {
    let browser = chromium();
    let a = named("a").await;
    let b = named("b").await;
    let proxy = TestProxy::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}[upstream.pool.health_check]\ntype = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"50ms\"\nmax_fails = 1\n",
        one_pool(&format!("servers = [{{ addr = \"{}\" }}, {{ addr = \"{}\" }}]", a.addr(), b.addr()))
    ))
    .await;
    let page = format!("http://{}/", proxy.proxy.admin_addr().expect("admin"));
    let b_addr = b.addr().to_string();
    let dom = {
        let (browser, page) = (browser.clone(), page.clone());
        tokio::task::spawn_blocking(move || dump_dom(&browser, &page))
            .await
            .expect("chromium task")
    };
    assert!(dom.contains("2 of 2 servers up"), "{dom}");
    assert!(
        dom.contains(&a.addr().to_string()) && dom.contains(&b_addr),
        "{dom}"
    );

    b.stop().await;
    let state = proxy.proxy.live().snapshot().pools[0].primary.servers[1]
        .state
        .clone();
    wait_until(Duration::from_secs(5), "the probes to see b down", || {
        state.is_active_down()
    })
    .await;
    let dom = tokio::task::spawn_blocking(move || dump_dom(&browser, &page))
        .await
        .expect("chromium task");
    assert!(dom.contains("1 of 2 servers up"), "{dom}");
    let b_row = dom
        .split("<tr")
        .find(|row| row.contains(&b_addr))
        .unwrap_or_else(|| panic!("no row for {b_addr}: {dom}"));
    assert!(b_row.contains(">down<"), "{b_row}");
}
