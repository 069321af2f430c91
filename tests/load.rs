//! `fanout load` against an in-process server: the JSON summary reports every delivery, none lost.

mod common;

use std::process::Command;

#[test]
fn load_generator_reports_every_delivery_as_json() {
    let server = common::start(|_| {});
    let output = Command::new(env!("CARGO_BIN_EXE_fanout"))
        .args(["load", "--server", &server.local_addr().to_string()])
        .args([
            "--subscribers",
            "200",
            "--channels",
            "4",
            "--publishers",
            "2",
            "--messages",
            "2000",
        ])
        .args(["--threads", "2", "--quiet"])
        .output()
        .expect("fanout load runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "fanout load failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json = stdout.lines().find(|l| l.starts_with('{')).expect("a JSON summary line");
    let field = |name: &str| -> u64 {
        let at = json.find(&format!("\"{name}\":")).unwrap_or_else(|| panic!("{name} in {json}"))
            + name.len()
            + 3;
        json[at..]
            .split([',', '}'])
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("{name} in {json}"))
    };
    assert_eq!(field("connections"), 200);
    assert_eq!(field("published"), 2000);
    // 2,000 messages over 4 channels of 50 subscribers each.
    assert_eq!(field("expected"), 100_000);
    assert_eq!(field("delivered"), 100_000);
    for zero in ["lost", "duplicated", "reordered", "errors"] {
        assert_eq!(field(zero), 0, "{zero}");
    }
    assert!(field("p99_us") >= field("p50_us"));
    assert_eq!(server.stats().messages_in, 2000);
}
