//! `fanout load` against an in-process server: the JSON summary reports every delivery, none lost,
//! in each of fanout's formats and when the subscribers are spread over child processes.

mod common;

use std::process::Command;

/// Runs `fanout load` with `args` (whitespace-separated) against a fresh server; returns a reader
/// of its JSON summary.
fn run_load(args: &str) -> impl Fn(&str) -> u64 {
    let server = common::start(|_| {});
    let output = Command::new(env!("CARGO_BIN_EXE_fanout"))
        .args(["load", "--server", &server.local_addr().to_string(), "--quiet"])
        .args(args.split_whitespace())
        .output()
        .expect("fanout load runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "fanout load failed: {stdout}\n{stderr}");
    let json =
        stdout.lines().find(|l| l.starts_with('{')).expect("a JSON summary line").to_string();
    move |name: &str| -> u64 {
        let at = json.find(&format!("\"{name}\":")).unwrap_or_else(|| panic!("{name} in {json}"));
        let value = json[at + name.len() + 3..].split([',', '}']).next().unwrap();
        value.parse().unwrap_or_else(|_| panic!("{name} in {json}"))
    }
}

fn assert_complete(field: impl Fn(&str) -> u64, subscribers: u64, published: u64, expected: u64) {
    assert_eq!(field("connections"), subscribers);
    assert_eq!(field("published"), published);
    assert_eq!(field("expected"), expected);
    assert_eq!(field("delivered"), expected);
    for zero in ["lost", "duplicated", "reordered", "errors"] {
        assert_eq!(field(zero), 0, "{zero}");
    }
    assert!(field("p99_us") >= field("p50_us"));
}

#[test]
fn binary_load_reports_every_delivery_as_json() {
    let hgrm = std::env::temp_dir().join(format!("fanout-load-test-{}.hgrm", std::process::id()));
    let field = run_load(&format!(
        "--subscribers 200 --channels 4 --publishers 2 --messages 2000 --threads 2 --hgrm {}",
        hgrm.display()
    ));
    // 2,000 messages over 4 channels of 50 subscribers each.
    assert_complete(field, 200, 2000, 100_000);
    let distribution = std::fs::read_to_string(&hgrm).expect("--hgrm wrote its file");
    std::fs::remove_file(&hgrm).ok();
    assert!(distribution.contains("Percentile"), "{distribution}");
    assert!(distribution.contains("Total count    =       100000"), "{distribution}");
}

#[test]
fn text_load_with_escaped_binary_payloads() {
    let field = run_load("--protocol text --subscribers 50 --messages 1000 --rate 20000");
    assert_complete(field, 50, 1000, 50_000);
}

#[test]
fn subscribers_spread_over_child_processes_are_merged_into_one_report() {
    let field = run_load("--subscribers 200 --max-per-process 70 --channels 2 --messages 1000");
    assert_complete(field, 200, 1000, 100_000);
}
