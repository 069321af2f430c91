//! Latency histograms in `/metrics`, read by Prometheus's own Python client library
//! (`prometheus_client.parser`): every family parses as a histogram, buckets are cumulative, and
//! the counts are the traffic sent: one delivery event per message per subscriber by format, one
//! acknowledgement per acknowledged publish by path (memory, fsync, Redis), one replay per resume,
//! one Redis round trip per publish script call.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};

use common::redis::RedisServer;
use common::{http, start, wait_until, Conn, Frame, TempDir};
use fanout::protocol::{Request, Resume};
use fanout::Config;

/// What the parser makes of `/metrics`: per histogram family and label set, its `_count`,
/// `_sum` and the `+Inf` bucket, after checking that buckets never decrease.
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    if family.type != "histogram":
        continue
    series = {}
    for sample in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "le")
        entry = series.setdefault(labels, {"buckets": []})
        if sample.name.endswith("_bucket"):
            entry["buckets"].append((float(sample.labels["le"]), sample.value))
        elif sample.name.endswith("_count"):
            entry["count"] = sample.value
        elif sample.name.endswith("_sum"):
            entry["sum"] = sample.value
    for labels, entry in series.items():
        counts = [v for _, v in sorted(entry["buckets"])]
        assert counts == sorted(counts), f"{family.name} {labels}: buckets decrease: {counts}"
        assert counts[-1] == entry["count"], f"{family.name} {labels}: +Inf != count"
        entry.pop("buckets")
    out[family.name] = series
print(json.dumps(out))
"#;

/// family -> labels -> (count, sum)
type Histograms = HashMap<String, HashMap<String, (f64, f64)>>;

fn histograms(addr: std::net::SocketAddr) -> Histograms {
    let text = http(addr, "GET", "/metrics", b"").body;
    let mut python = Command::new("/usr/bin/python3")
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    python.stdin.take().unwrap().write_all(&text).unwrap();
    let out = python.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client refused /metrics (apt-get install python3-prometheus-client): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut families = Histograms::new();
    for (family, series) in parsed.as_object().unwrap() {
        let entry = families.entry(family.clone()).or_default();
        for (labels, value) in series.as_object().unwrap() {
            let count = value["count"].as_f64().unwrap();
            entry.insert(labels.clone(), (count, value["sum"].as_f64().unwrap()));
        }
    }
    families
}

fn count(histograms: &Histograms, family: &str, labels: &str) -> f64 {
    histograms
        .get(family)
        .and_then(|series| series.get(labels))
        .unwrap_or_else(|| panic!("{family}{{{labels}}} in {histograms:?}"))
        .0
}

/// `n` acknowledged publishes to `channel` from a new text connection, every ACK read.
fn publish_acked(addr: std::net::SocketAddr, channel: &str, n: usize) {
    let mut publisher = Conn::text(addr);
    for i in 0..n {
        let payload = format!("message {i}");
        publisher.send(Request::PublishAcked {
            channel: channel.as_bytes(),
            payload: payload.as_bytes().into(),
        });
        assert!(matches!(publisher.next(), Frame::Ack { .. }));
    }
}

#[test]
fn delivery_and_acknowledgement_counts_are_the_traffic_sent() {
    let server = start(|_: &mut Config| {});
    let addr = server.local_addr();
    let mut subscribers = Vec::new();
    for (format, n) in [("binary", 3), ("text", 2), ("ws_json", 4)] {
        for _ in 0..n {
            let mut conn = match format {
                "binary" => Conn::binary(addr),
                "text" => Conn::text(addr),
                _ => Conn::websocket(addr),
            };
            conn.subscribe("scores");
            subscribers.push(conn);
        }
    }
    const MESSAGES: usize = 25;
    publish_acked(addr, "scores", MESSAGES);
    for conn in &mut subscribers {
        let mut got = 0;
        while got < MESSAGES {
            if let Frame::Msg { .. } = conn.next() {
                got += 1;
            }
        }
    }
    wait_until("every delivery is counted", || server.stats().messages_out == 9 * MESSAGES as u64);
    // A worker notes a turn's delivery latencies after writing them (the latency is to the
    // write), so a subscriber can read its last message a moment before the histogram has it.
    let delivery = "fanout_delivery_latency_seconds";
    let delivered = |found: &Histograms| -> f64 {
        found.get(delivery).map_or(0.0, |series| series.values().map(|(count, _)| count).sum())
    };
    let mut found = histograms(addr);
    wait_until("every delivery is in the histogram", || {
        found = histograms(addr);
        delivered(&found) >= 9.0 * MESSAGES as f64
    });
    let labels: Vec<_> = found[delivery].keys().cloned().collect();
    let of = |format: &str| {
        let label = labels.iter().find(|l| l.ends_with(&format!("={format}"))).unwrap();
        count(&found, delivery, label)
    };
    assert_eq!(of("binary"), 3.0 * MESSAGES as f64);
    assert_eq!(of("text"), 2.0 * MESSAGES as f64);
    assert_eq!(of("websocket_json"), 4.0 * MESSAGES as f64);
    assert_eq!(delivered(&found), server.stats().messages_out as f64, "one event per delivery");
    let (_, sum) = found[delivery][labels.iter().find(|l| l.ends_with("=binary")).unwrap()];
    assert!(sum > 0.0 && sum < 60.0 * MESSAGES as f64, "a sum in seconds: {sum}");

    let ack = "fanout_publish_ack_latency_seconds";
    assert_eq!(count(&found, ack, "path=memory"), MESSAGES as f64);
    assert_eq!(count(&found, ack, "path=fsync"), 0.0);
    assert_eq!(count(&found, ack, "path=redis"), 0.0);
    assert!(!found.contains_key("fanout_redis_round_trip_seconds"), "not in a cluster");

    // A resume: one replay.
    let mut late = Conn::text(addr);
    late.send(Request::Subscribe {
        channel: b"scores",
        resume: Some(Resume { after: 10, epoch: None, strict: false }),
    });
    assert_eq!(common::messages_of(late.barrier()).len(), MESSAGES - 10);
    assert_eq!(count(&histograms(addr), "fanout_replay_seconds", ""), 1.0);
}

#[test]
fn fsync_acknowledgements_are_counted_on_their_path() {
    let dir = TempDir::new("histogram-fsync");
    let server = start(|config: &mut Config| {
        config.data_dir = Some(dir.0.clone());
        config.fsync = fanout::history::disk::FsyncPolicy::Always;
    });
    publish_acked(server.local_addr(), "durable", 7);
    let found = histograms(server.local_addr());
    let ack = "fanout_publish_ack_latency_seconds";
    assert_eq!(count(&found, ack, "path=fsync"), 7.0);
    assert_eq!(count(&found, ack, "path=memory"), 0.0);
}

#[test]
fn redis_acknowledgements_and_round_trips_are_counted() {
    let redis = RedisServer::start();
    let server = start(|config: &mut Config| {
        config.cluster = Some(fanout::cluster::ClusterConfig::new(vec![redis.endpoint()]));
    });
    let addr = server.local_addr();
    wait_until("the node is up", || server.stats().cluster_redis_up == 1);
    publish_acked(addr, "through.redis", 12);
    let found = histograms(addr);
    assert_eq!(count(&found, "fanout_publish_ack_latency_seconds", "path=redis"), 12.0);
    let calls = count(&found, "fanout_redis_round_trip_seconds", "");
    assert!((1.0..=12.0).contains(&calls), "one per script call (a call carries a batch): {calls}");
}

/// Every metric the Grafana dashboard (`scripts/grafana-dashboard.json`) queries is one
/// `/metrics` serves (a cluster node's, so that the Redis families are there too).
#[test]
fn the_grafana_dashboard_queries_metrics_that_exist() {
    let redis = RedisServer::start();
    let server = start(|config: &mut Config| {
        config.cluster = Some(fanout::cluster::ClusterConfig::new(vec![redis.endpoint()]));
    });
    let metrics =
        String::from_utf8(http(server.local_addr(), "GET", "/metrics", b"").body).unwrap();
    let served: std::collections::HashSet<&str> = metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .collect();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for at in expr.match_indices("fanout_").map(|(at, _)| at) {
                let name: String = expr[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    served.contains(name.as_str()),
                    "{name} (panel {}) is not served",
                    panel["title"]
                );
                queried += 1;
            }
        }
    }
    assert!(queried >= 15, "{queried} metric uses found");
}
