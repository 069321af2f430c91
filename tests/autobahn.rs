//! Autobahn|Testsuite, the WebSocket conformance suite, against the `/echo` endpoint: every case
//! of sections 1-7, 9 and 10 (301 cases: framing, pings, reserved bits and opcodes, fragmentation,
//! UTF-8 handling, the close handshake, big messages) must be OK, NON-STRICT or INFORMATIONAL.
//! Section 12 and 13 test permessage-deflate, which fanout does not offer.
//!
//! `wstest` is found at `$FANOUT_WSTEST`, else under `~/.cache/fanout-autobahn`, where this test
//! installs it with `scripts/autobahn-setup.sh` the first time (about 30 s; needs the Debian
//! mirror and PyPI).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{start, TempDir};

fn wstest() -> PathBuf {
    if let Ok(path) = std::env::var("FANOUT_WSTEST") {
        return PathBuf::from(path);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".to_owned());
    let dir = PathBuf::from(home).join(".cache/fanout-autobahn");
    let installed = dir.join("wstest");
    if !installed.exists() {
        let setup = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/autobahn-setup.sh");
        // Three tries: it downloads from the Debian mirror and PyPI.
        let installed = (0..3).any(|_| {
            Command::new(setup).arg(&dir).status().expect("run autobahn-setup.sh").success()
        });
        assert!(installed, "installing Autobahn|Testsuite failed ({setup})");
    }
    installed
}

#[test]
fn autobahn_fuzzingclient_sections_1_to_10_pass() {
    let wstest = wstest();
    // Section 9 sends messages of up to 16 MiB and expects them back.
    let server = start(|c| {
        c.ws_echo = true;
        c.max_frame_bytes = 20 << 20;
        c.write_queue_cap_bytes = 128 << 20;
        c.ping_interval = Duration::from_secs(600);
    });
    let dir = TempDir::new("autobahn");
    let spec = serde_json::json!({
        "servers": [{"agent": "fanout", "url": format!("ws://{}/echo", server.local_addr())}],
        "cases": ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*"],
        "exclude-cases": [],
        "outdir": "./reports",
    });
    std::fs::write(dir.0.join("spec.json"), spec.to_string()).unwrap();
    let output = Command::new(&wstest)
        .args(["-m", "fuzzingclient", "-s", "spec.json"])
        .current_dir(&dir.0)
        .output()
        .expect("wstest runs");
    assert!(output.status.success(), "wstest failed: {}", String::from_utf8_lossy(&output.stderr));
    let index = std::fs::read(dir.0.join("reports/index.json")).expect("wstest wrote its index");
    let index: serde_json::Value = serde_json::from_slice(&index).unwrap();
    let cases = index["fanout"].as_object().expect("results for agent fanout");
    let mut counts = std::collections::BTreeMap::new();
    let mut failed = Vec::new();
    for (case, result) in cases {
        let behavior = result["behavior"].as_str().unwrap_or("?");
        let close = result["behaviorClose"].as_str().unwrap_or("?");
        *counts.entry(behavior).or_insert(0) += 1;
        let good = |b: &str| matches!(b, "OK" | "NON-STRICT" | "INFORMATIONAL");
        if !good(behavior) || !good(close) {
            failed.push(format!("{case}: {behavior} / close {close}"));
        }
    }
    println!("autobahn: {} cases: {counts:?}", cases.len());
    assert!(failed.is_empty(), "cases not passed:\n{}", failed.join("\n"));
    assert_eq!(cases.len(), 301, "every case of sections 1-7, 9, 10 ran");
}
