//! What the server API tells of this node: its channels with subscribers (`/api/channels`),
//! and its figures and top channels (`/api/info`, which the admin page reads). In a cluster
//! every node answers these through the broker's survey.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::{channels, histogram, Shared};

impl Shared {
    /// This node's channels with subscribers, those matching `pattern` (fanout's wildcard
    /// syntax; `None`: all), as `{"channel": subscribers}`.
    pub(crate) fn channels_json(
        &self,
        pattern: Option<&crate::auth::Pattern>,
    ) -> serde_json::Value {
        let listed =
            self.channels.subscriber_counts(|name| pattern.is_none_or(|p| p.matches(name)));
        let object: serde_json::Map<String, serde_json::Value> = listed
            .into_iter()
            .map(|(name, count)| (String::from_utf8_lossy(&name).into_owned(), count.into()))
            .collect();
        serde_json::Value::Object(object)
    }

    /// What `/api/info` says of this node: counts, counters (a reader works out rates from two
    /// readings), histogram buckets (`server::histogram::BOUNDS_MICROS`; recent quantiles
    /// likewise), the Redis links, and with `top` > 0 its `top` channels by subscribers and by
    /// message rate (a walk over every channel: see `top_channels`).
    pub(crate) fn info_json(&self, top: usize) -> serde_json::Value {
        let stats = self.stats();
        let latency = self.latency();
        let buckets = |s: &histogram::Snapshot| serde_json::json!(s.buckets.to_vec());
        let all_formats = histogram::Snapshot::sum(&latency.delivery);
        let all_paths = histogram::Snapshot::sum(&latency.publish_ack);
        let redis = self.config.cluster.as_ref().map(|cluster| {
            serde_json::json!({
                "servers": cluster.redis.len(),
                "links_up": stats.cluster_redis_up,
                "reconnects": stats.cluster_reconnects,
                "timeouts": stats.cluster_timeouts,
                "round_trip": latency.redis_round_trip.as_ref().map(buckets),
            })
        });
        let by_format: serde_json::Map<String, serde_json::Value> = crate::protocol::Format::ALL
            .iter()
            .filter(|f| !f.is_sharded() && *f != &crate::protocol::Format::Resp3)
            .map(|f| {
                let total: u64 =
                    self.counters.iter().map(|c| c.by_format(*f).load(Ordering::Relaxed)).sum();
                let label = match f {
                    crate::protocol::Format::Resp2 => "resp",
                    other => other.label(),
                };
                let total = match f {
                    crate::protocol::Format::Resp2 => total + stats.connections_resp3,
                    _ => total,
                };
                (label.to_string(), total.into())
            })
            .collect();
        serde_json::json!({
            "node": &*self.node,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_secs": self.started.elapsed().as_secs(),
            "connections": self.open_connections.load(Ordering::Relaxed),
            "connections_by_protocol": by_format,
            "channels": self.channels.len().saturating_sub(1),
            "messages_in": stats.messages_in,
            "messages_out": stats.messages_out,
            "workers": self.config.workers,
            "cluster": self.broker.is_some(),
            "bytes_out": stats.bytes_out,
            "queued_bytes": stats.queued_bytes,
            "slow_consumer_closes": stats.slow_consumer_closes,
            "stale_closes": stats.stale_closes,
            "protocol_errors": stats.protocol_errors,
            "auth_failures": stats.auth_expired + stats.auth_invalid_claims
                + stats.auth_bad_signature + stats.auth_malformed,
            "auth_forbidden": stats.auth_forbidden,
            "histograms": {
                "bounds_micros": histogram::BOUNDS_MICROS.to_vec(),
                "delivery": buckets(&all_formats),
                "publish_ack": buckets(&all_paths),
            },
            "redis": redis,
            "top": (top > 0).then(|| self.top_channels(top)),
        })
    }

    /// This node's `limit` topic channels with the most subscribers, and the `limit` with the
    /// most messages per second since the previous call (the broadcast channel included,
    /// inboxes never: they are private). A walk over every channel under the registry's lock,
    /// each log's lock taken once: for an operator's page polling every few seconds, not for
    /// a hot path (~20 ns a channel).
    fn top_channels(&self, limit: usize) -> serde_json::Value {
        let elapsed = {
            let mut sampled = self.top_sampled_at.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let elapsed = sampled.map_or(0.0, |at| now.duration_since(at).as_secs_f64());
            *sampled = Some(now);
            elapsed
        };
        // The channels are taken out under the registry's lock (a pointer each), and looked at
        // after it is released: creating channels on other workers is not held up.
        let mut channels = Vec::with_capacity(self.channels.len());
        self.channels.each(|channel| {
            if channel.kind != crate::protocol::ChannelKind::Inbox {
                channels.push(channel.clone());
            }
        });
        let mut rows: Vec<_> = channels
            .iter()
            .map(|channel| {
                let last = channel.last_offset();
                let before = channel.sampled_offset.swap(last, Ordering::Relaxed);
                let rate = match before != u64::MAX && elapsed > 0.0 {
                    true => last.saturating_sub(before) as f64 / elapsed,
                    false => 0.0,
                };
                (channel, channel.subscribers.load(Ordering::Relaxed), last, rate)
            })
            .collect();
        let row =
            |(channel, subscribers, last, rate): &(&Arc<channels::Channel>, u32, u64, f64)| {
                serde_json::json!({
                    "channel": String::from_utf8_lossy(&channel.name),
                    "subscribers": subscribers,
                    "last_offset": last,
                    "messages_per_sec": (rate * 10.0).round() / 10.0,
                })
            };
        // The first `limit` of each order, without sorting every channel.
        let mut top = |order: &dyn Fn(&_, &_) -> std::cmp::Ordering| {
            let cut = limit.min(rows.len());
            if cut > 0 && cut < rows.len() {
                rows.select_nth_unstable_by(cut - 1, |a, b| order(a, b));
            }
            rows[..cut].sort_by(|a, b| order(a, b));
            rows[..cut].iter().map(row).collect::<Vec<_>>()
        };
        type Row<'a> = (&'a Arc<channels::Channel>, u32, u64, f64);
        let by_subscribers =
            top(&|a: &Row<'_>, b: &Row<'_>| b.1.cmp(&a.1).then_with(|| a.0.name.cmp(&b.0.name)));
        let mut by_rate = top(&|a: &Row<'_>, b: &Row<'_>| {
            b.3.total_cmp(&a.3).then_with(|| a.0.name.cmp(&b.0.name))
        });
        by_rate.retain(|r| r["messages_per_sec"].as_f64().is_some_and(|rate| rate > 0.0));
        serde_json::json!({ "by_subscribers": by_subscribers, "by_rate": by_rate })
    }
}
