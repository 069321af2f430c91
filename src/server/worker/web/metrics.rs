//! `/metrics`: every counter in the Prometheus text format.

use crate::protocol::Format;
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
        out
    }
}
