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
    let seed = std::process::id() as u16;
    (0..200u16)
        .map(|i| low - 3000 + (seed.wrapping_add(i.wrapping_mul(131))) % 2900)
        .find(|&port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        .expect("a free port below the ephemeral range")
}

#[test]
fn demo_page_in_chromium_survives_a_server_restart() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: run `apt-get install -y chromium` (.ci/run does)"
    );
    let module = playwright_core();
    let port = restartable_port();
    let data = TempDir::new("browser");
    let output = Command::new("node")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/demo.cjs"))
        .env("FANOUT_BIN", env!("CARGO_BIN_EXE_fanout"))
        .env("PORT", port.to_string())
        .env("DATA_DIR", data.path())
        .env("PLAYWRIGHT_CORE", &module)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success() && stdout.contains("browser test passed"),
        "browser test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
