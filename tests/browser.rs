//! The demo page in a real browser (Debian's Chromium, headless, driven by playwright-core from
//! npm): see tests/browser/demo.cjs for the scenario. `.ci/run` installs chromium; this test
//! installs playwright-core under target/ the first time (npm registry).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::TempDir;

/// Pinned: the version this test was written against (it drives Debian's Chromium over CDP).
const PLAYWRIGHT_CORE: &str = "playwright-core@1.65.1";

fn playwright_core() -> PathBuf {
    // The scenarios run in parallel threads: one installs while the others wait (a module seen
    // half-installed by another would fail to load).
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _installing = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let prefix = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-deps");
    let module = prefix.join("node_modules/playwright-core");
    if !module.join("package.json").exists() {
        // Three tries: it downloads from the npm registry.
        let installed = (0..3).any(|_| {
            Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
                .arg(&prefix)
                .arg(PLAYWRIGHT_CORE)
                .status()
                .expect("npm runs (install Node.js and npm)")
                .success()
        });
        assert!(installed, "npm install playwright-core failed");
    }
    module
}

/// A port the restarted server can take again (pages keep their origin across the restart):
/// free now, and below the ephemeral range, so that no outgoing connection (the browser's own
/// reconnects included) can be holding it when the server binds it the second time.
fn restartable_port() -> u16 {
    let range =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let low: u16 = range.split_whitespace().next().and_then(|p| p.parse().ok()).unwrap_or(32768);
    let low = if low > 4096 { low } else { 40000 };
    // Tests of this file run in parallel in one process: each call starts elsewhere.
    static CALLS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let seed = (std::process::id() as u16).wrapping_add(call.wrapping_mul(1447));
    (0..200u16)
        .map(|i| low - 3000 + (seed.wrapping_add(i.wrapping_mul(131))) % 2900)
        .find(|&port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        .expect("a free port below the ephemeral range")
}

/// Runs the scenario `tests/browser/SCRIPT` in Node against Debian's Chromium, with a server
/// port of its own and `env`; fails the test unless it prints `passed`.
fn run_scenario(script: &str, env: &[(&str, &str)], passed: &str) {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: run `apt-get install -y chromium` (.ci/run does)"
    );
    let module = playwright_core();
    let port = restartable_port();
    let output = Command::new("node")
        .arg(format!("{}/tests/browser/{script}", env!("CARGO_MANIFEST_DIR")))
        .env("FANOUT_BIN", env!("CARGO_BIN_EXE_fanout"))
        .env("PORT", port.to_string())
        .env("PLAYWRIGHT_CORE", &module)
        .env("CHROMIUM", &chromium)
        .envs(env.iter().copied())
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success() && stdout.contains(passed),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn demo_page_in_chromium_survives_a_server_restart() {
    let data = TempDir::new("browser");
    run_scenario("demo.cjs", &[("DATA_DIR", data.path())], "browser test passed");
}

/// The JavaScript client given two cluster nodes (through a real redis-server): the node it is
/// on is killed mid-stream; it moves to the other and resumes, over WebSocket and over SSE, with
/// nothing lost and nothing twice (see tests/browser/cluster.cjs).
#[test]
fn javascript_client_moves_to_another_cluster_node_and_loses_nothing() {
    run_scenario("cluster.cjs", &[], "cluster test passed");
}

/// The JavaScript client with tokens that live three seconds: getToken() refreshes them before
/// each expiry, over WebSocket and over SSE, and not one message is lost or doubled (see
/// tests/browser/tokens.cjs).
#[test]
fn javascript_client_refreshes_short_lived_tokens_and_loses_nothing() {
    run_scenario("tokens.cjs", &[], "token test passed");
}

/// The demo page and the JavaScript client over https and wss:// in Chromium, with a
/// certificate from the test's own CA (see tests/browser/tls.cjs).
#[test]
fn demo_page_works_over_https_and_wss_in_chromium() {
    let pki = common::tls::TestPki::new("browser");
    let (cert, key) = pki.issue("server", &["localhost", "127.0.0.1"]);
    run_scenario(
        "tls.cjs",
        &[
            ("CERT", cert.to_str().unwrap()),
            ("KEY", key.to_str().unwrap()),
            ("NODE_EXTRA_CA_CERTS", pki.ca_path()),
        ],
        "tls browser test passed",
    );
}

/// The operators' page /admin in Chromium: asks for the API key, refuses a wrong one, then shows
/// the node with numbers that move while a backend publishes, the top channels, drawn charts, and
/// the channel inspector's messages with offsets (see tests/browser/admin.cjs). The screenshot
/// lands in target/admin-page.png.
#[test]
fn admin_page_in_chromium_shows_the_node_and_its_numbers_move() {
    let screenshot = concat!(env!("CARGO_MANIFEST_DIR"), "/target/admin-page.png");
    run_scenario("admin.cjs", &[("SCREENSHOT", screenshot)], "admin page test passed");
}
