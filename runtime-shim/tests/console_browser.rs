//! The console end to end, in a real headless Chromium driven over WebDriver
//! (chromedriver, `fantoccini`), against a real `kalki-shim run` on a real Open vSwitch
//! and Docker engine: sign in with the token, watch a device move to `attack` when an
//! alert is posted to the API (the table updates without a reload), open its page (its
//! state machine drawn, the history), try the reset without the confirmation (nothing
//! happens), reset it with the confirmation, see it back in `normal`, in the browser and
//! in `status`. Screenshots are kept under `target/tmp/console-e2e/` (the test prints
//! the path).
//!
//! The policy is `tests/fixtures/console/site.kalki`: its own bridge, links and site
//! label, so it runs beside the other live tests. Needs chromium and chromedriver
//! (`scripts/chromium/start.sh`), OVS and Docker; a missing one skips the test locally and
//! fails it under `CI=true`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::live::{ensure_test_image, ok, sh, Api};
use common::TempDir;
use fantoccini::{Client, ClientBuilder, Locator};
use kalki_test_support::chromedriver::{self, Driver, CHROME_ARGS, CHROMIUM};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const BRIDGE: &str = "kt-console";
const LINKS: [&str; 3] = ["ktc-up", "ktc-d0", "ktc-d1"];
const TOKEN: &str = "kalki-test-token-0123456789abcdef";

/// The test's bridge, links and containers, removed at the start and the end.
struct Cleanup;

impl Cleanup {
    fn now() {
        sh(&format!(
            "ovs-vsctl --timeout=10 --if-exists del-br {BRIDGE}"
        ));
        sh("docker rm -f $(docker ps -aq --filter label=kalki.site=console) 2>/dev/null");
        for l in LINKS {
            sh(&format!("ip link del dev {l} 2>/dev/null"));
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        Cleanup::now();
    }
}

/// Where the screenshots go.
fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-e2e");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn text(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Waits until the element's text is `want`, looking every 100 ms (no reload).
async fn wait_text(c: &Client, css: &str, want: &str, limit: Duration) {
    let start = Instant::now();
    loop {
        let got = match c.find(Locator::Css(css)).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "`{css}` still reads `{got}`, not `{want}`, after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the page's path is `want` (a click's navigation may still be under way).
async fn wait_path(c: &Client, want: &str) {
    let start = Instant::now();
    loop {
        let got = c.current_url().await.unwrap().path().to_string();
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the page is `{got}`, not `{want}`"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    let path = artifacts().join(name);
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
}

#[test]
fn sign_in_watch_an_attack_and_reset_it_in_a_browser() {
    if !kalki_test_support::require(&[
        chromedriver::chromium(),
        kalki_test_support::ovs(),
        kalki_test_support::docker(),
    ]) {
        return;
    }
    ensure_test_image();
    Cleanup::now();
    let _cleanup = Cleanup;
    for l in LINKS {
        ok(&format!(
            "ip link add {l} type veth peer name {l}p && ip link set dev {l} up"
        ));
    }
    let tmp = TempDir::new("console-e2e");
    let bundle = tmp.path().join("bundle");
    common::compile_dir("runtime-shim/tests/fixtures/console")
        .write_to(&bundle)
        .unwrap();
    let env = Api::new(tmp.path());
    let _shim = env.start(
        &bundle,
        &tmp.path().join("journal.db"),
        &["--ready-timeout", "20"],
    );
    assert_eq!(env.state("cam"), "normal");
    let base = format!("http://{}", env.api);
    let driver = Driver::start();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut caps = serde_json::Map::new();
        let mut args: Vec<String> = CHROME_ARGS.iter().map(|s| s.to_string()).collect();
        args.push("--window-size=1400,900".into());
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({ "binary": CHROMIUM, "args": args }),
        );
        let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&driver.url)
            .await
            .unwrap();

        // Not signed in: sent to the sign-in page. A wrong token is refused.
        c.goto(&format!("{base}/console")).await.unwrap();
        assert_eq!(c.current_url().await.unwrap().path(), "/console/login");
        let token = c.find(Locator::Css("#token")).await.unwrap();
        token.send_keys("not-the-token-at-all-0123").await.unwrap();
        c.find(Locator::Css("#sign-in")).await.unwrap().click().await.unwrap();
        // The refusal is a new page: wait for it (the click's navigation may still run).
        wait_text(&c, "#error", "wrong token", Duration::from_secs(10)).await;
        let token = c.find(Locator::Css("#token")).await.unwrap();
        token.send_keys(TOKEN).await.unwrap();
        c.find(Locator::Css("#sign-in")).await.unwrap().click().await.unwrap();
        wait_path(&c, "/console").await;
        // The session cookie is out of the page's reach (HttpOnly).
        let seen = c.execute("return document.cookie", vec![]).await.unwrap();
        assert_eq!(seen, serde_json::json!(""));

        // The table is live; a mark on the page tells a reload apart.
        wait_text(&c, "#live", "live", Duration::from_secs(20)).await;
        wait_text(&c, "tr[data-device=cam] td.state", "normal", Duration::from_secs(5)).await;
        c.execute("window.kalkiMark = 42; return null", vec![])
            .await
            .unwrap();

        // An alert through the API: the row turns to `attack` without a reload.
        env.must(&["alert", "cam", "intrusion"]);
        wait_text(&c, "tr[data-device=cam] td.state", "attack", Duration::from_secs(20)).await;
        let mark = c.execute("return window.kalkiMark", vec![]).await.unwrap();
        assert_eq!(mark, serde_json::json!(42), "the page was not reloaded");
        wait_text(
            &c,
            "tr[data-device=cam] td.verdict",
            "enforced",
            Duration::from_secs(20),
        )
        .await;
        wait_text(&c, "tr[data-device=door] td.state", "normal", Duration::from_secs(5)).await;
        screenshot(&c, "console.png").await;

        // Its page: the state machine (drawn by the shim) and the history.
        c.find(Locator::Css("tr[data-device=cam] a"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_path(&c, "/console/devices/cam").await;
        let drawn = c
            .execute(
                "const i = document.getElementById('machine'); return i.complete ? i.naturalWidth : -1",
                vec![],
            )
            .await
            .unwrap();
        assert!(drawn.as_i64().unwrap_or(0) > 0, "the SVG is drawn: {drawn}");
        let history = text(&c, "#history").await;
        assert!(history.contains("intrusion"), "{history}");
        assert!(history.contains("normal -> attack"), "{history}");

        // The reset without its confirmation: the browser does not send it.
        c.find(Locator::Css("#reset-button")).await.unwrap().click().await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(env.state("cam"), "attack");
        // With it: back to `normal`, in the page and in `status`.
        c.find(Locator::Css("#confirm")).await.unwrap().click().await.unwrap();
        c.find(Locator::Css("#reset-button")).await.unwrap().click().await.unwrap();
        wait_text(&c, "#device td.state", "normal", Duration::from_secs(20)).await;
        assert_eq!(env.state("cam"), "normal");
        let history = text(&c, "#history").await;
        assert!(history.contains("reset by console:"), "{history}");
        assert!(history.contains("attack -> normal"), "{history}");
        screenshot(&c, "device.png").await;

        // Signing out ends the session: the console sends the browser to sign in.
        c.find(Locator::Css("#sign-out")).await.unwrap().click().await.unwrap();
        wait_path(&c, "/console/login").await;
        c.goto(&format!("{base}/console/devices/cam")).await.unwrap();
        assert_eq!(c.current_url().await.unwrap().path(), "/console/login");
        c.close().await.unwrap();
    });
    // The journal says who reset it.
    assert!(
        env.log_text().contains("console: console:"),
        "{}",
        env.log_text()
    );
}
