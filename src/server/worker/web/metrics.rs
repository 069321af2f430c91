//! `/metrics`: every counter in the Prometheus text format.

use crate::protocol::Format;
use crate::server::histogram::{AckPath, Snapshot};
use crate::server::stats::{Kind, Stats};
use crate::server::worker::Worker;

/// A metric family: name, kind, help, and its samples (label set, value).
type Family = (String, Kind, String, Vec<(String, u64)>);

impl Worker {
    /// Every counter in the Prometheus text format (version 0.0.4), names prefixed `fanout_`,
    /// counters suffixed `_total`; per-protocol connections, per-kind protocol errors, TLS
    /// failures by reason (and the like) are labels of one family each.
    pub(super) fn metrics_text(&self) -> String {
        use std::fmt::Write as _;
        let stats = self.shared.stats();
        let mut out = String::with_capacity(8192);
        let mut families: Vec<Family> = Vec::new();
        for ((name, value), (_, kind, help)) in stats.fields().into_iter().zip(Stats::describe()) {
            let protocol = name
                .strip_prefix("connections_")
                .filter(|p| Format::ALL.iter().any(|f| f.label() == *p));
            let (family, label, help) = if let Some(protocol) = protocol {
                (
                    "connections_open",
                    format!("{{protocol=\"{protocol}\"}}"),
                    "Open connections by protocol.",
                )
            } else if let Some(kind) = name.strip_prefix("protocol_errors_") {
                (
                    "protocol_errors_by_kind",
                    format!("{{kind=\"{kind}\"}}"),
                    "Fatal protocol violations by kind.",
                )
            } else if let Some(result) = name
                .strip_prefix("auth_")
                .filter(|r| crate::auth::Outcome::ALL.iter().any(|o| o.label() == *r))
            {
                (
                    "authentications",
                    format!("{{result=\"{result}\"}}"),
                    "Authentications (AUTH, a token on a request or upgrade, the API key) by result.",
                )
            } else if let Some(reason) = name.strip_prefix("tls_failures_") {
                (
                    "tls_failures",
                    format!("{{reason=\"{reason}\"}}"),
                    "TLS connections failed, by reason: protocol, incompatible, alert, certificate, timeout (handshake past the head deadline, or silence on a TLS-only port), eof (the client closed or reset mid-handshake), other.",
                )
            } else if let Some(kind) = name.strip_prefix("limited_") {
                (
                    "limit_hits",
                    format!("{{kind=\"{kind}\"}}"),
                    "Requests and connections refused by an abuse limit, by kind.",
                )
            } else {
                (name, String::new(), help)
            };
            let metric = match kind {
                Kind::Counter => format!("fanout_{}_total", family.trim_end_matches("_total")),
                Kind::Gauge | Kind::Peak => format!("fanout_{family}"),
            };
            match families.iter_mut().find(|(m, ..)| *m == metric) {
                Some((.., samples)) => samples.push((label, value)),
                None => {
                    families.push((metric, kind, help.replace('\n', " "), vec![(label, value)]))
                }
            }
        }
        let uptime = self.shared.started.elapsed().as_secs_f64();
        let extra = [
            (
                "fanout_channels",
                "Channels that exist (the broadcast channel included).",
                self.shared.channels.len() as f64,
            ),
            ("fanout_workers", "Reactor threads.", self.shared.config.workers as f64),
            ("fanout_uptime_seconds", "Seconds since the server started.", uptime),
        ];
        for (metric, kind, help, samples) in families {
            let kind = if kind == Kind::Counter { "counter" } else { "gauge" };
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} {kind}");
            for (label, value) in samples {
                let _ = writeln!(out, "{metric}{label} {value}");
            }
        }
        for (metric, help, value) in extra {
            let _ =
                writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} gauge\n{metric} {value}");
        }
        self.histograms_text(&mut out);
        out
    }

    /// The latency histograms, summed over workers (see `server::histogram`).
    fn histograms_text(&self, out: &mut String) {
        use std::fmt::Write as _;
        let latency = self.shared.latency();
        let mut family = |metric: &str, help: &str, series: &[(String, Snapshot)]| {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} histogram");
            for (labels, snapshot) in series {
                snapshot.render(out, metric, labels);
            }
        };
        let by_format: Vec<_> = Format::ALL
            .iter()
            .map(|f| (format!("format=\"{}\"", f.label()), latency.delivery[*f as usize]))
            .collect();
        family(
            "fanout_delivery_latency_seconds",
            "A message entering the node (its publish read, or its arrival from Redis) to its frame written to a subscriber's socket, one event per delivery, by the subscriber's wire format. Observed per batch at its oldest message's latency.",
            &by_format,
        );
        let by_path: Vec<_> = AckPath::ALL
            .iter()
            .map(|p| (format!("path=\"{}\"", p.label()), latency.publish_ack[*p as usize]))
            .collect();
        family(
            "fanout_publish_ack_latency_seconds",
            "An acknowledged publish read to its acknowledgement queued: in the same turn (memory), after fsync (--fsync always), or after Redis ran it (cluster).",
            &by_path,
        );
        family(
            "fanout_replay_seconds",
            "A resume's replay: its HIST answer to the subscription live.",
            &[(String::new(), latency.replay)],
        );
        family(
            "fanout_reactor_turn_seconds",
            "A turn of a worker's event loop, poll's return to the end of its work, over every worker: a long one pauses every publisher (the ring waits for its slowest reader).",
            &[(String::new(), latency.turn)],
        );
        if let Some(round_trip) = latency.redis_round_trip {
            family(
                "fanout_redis_round_trip_seconds",
                "A publish script call's round trip to Redis (one event per call, which carries a batch of publishes).",
                &[(String::new(), round_trip)],
            );
        }
    }
}
