//! Counters. Each worker owns one `WorkerCounters` (cache-padded, written only by that worker,
//! with Relaxed adds batched per event-loop turn); `Stats` is their sum, taken on demand.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// What a figure is, for summing over workers and for the metrics' TYPE lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only grows; summed over workers.
    Counter,
    /// A level now; summed over workers.
    Gauge,
    /// A high-water mark; the maximum over workers.
    Peak,
}

macro_rules! counters {
    ($( $(#[doc = $doc:literal])* $name:ident: $kind:ident, )*) => {
        /// One worker's counters.
        #[derive(Debug, Default)]
        pub struct WorkerCounters {
            $( $(#[doc = $doc])* pub $name: AtomicU64, )*
        }

        /// The server's counters, summed over workers (high-water marks take the maximum).
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct Stats {
            $( $(#[doc = $doc])* pub $name: u64, )*
        }

        impl Stats {
            /// Adds one worker's counters into this sum.
            pub fn absorb(&mut self, worker: &WorkerCounters) {
                $( counters!(@absorb $kind, self.$name, worker.$name.load(Ordering::Relaxed)); )*
            }

            /// (name, value) pairs, for logs and metrics.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$( (stringify!($name), self.$name), )*]
            }

            /// (name, kind, help) of every figure, in `fields` order: the help is the doc comment.
            pub fn describe() -> Vec<(&'static str, Kind, &'static str)> {
                vec![$( (stringify!($name), counters!(@kind $kind), concat!($($doc),*).trim_ascii()), )*]
            }
        }
    };
    (@absorb counter, $into:expr, $value:expr) => { $into += $value };
    (@absorb gauge, $into:expr, $value:expr) => { $into += $value };
    (@absorb peak, $into:expr, $value:expr) => { $into = $into.max($value) };
    (@kind counter) => { Kind::Counter };
    (@kind gauge) => { Kind::Gauge };
    (@kind peak) => { Kind::Peak };
}

counters! {
    /// Connections open now.
    connections_current: gauge,
    /// Open connections speaking the text protocol.
    connections_text: gauge,
    /// Open connections speaking the binary protocol.
    connections_binary: gauge,
    /// Open WebSocket connections, JSON subprotocol.
    connections_websocket_json: gauge,
    /// Open WebSocket connections, binary subprotocol.
    connections_websocket_binary: gauge,
    /// Open Server-Sent Events streams.
    connections_sse: gauge,
    /// Open plain HTTP connections (keep-alive, long-poll).
    connections_http: gauge,
    /// Open Redis-protocol connections speaking RESP2.
    connections_resp2: gauge,
    /// Open Redis-protocol connections speaking RESP3.
    connections_resp3: gauge,
    /// Connections accepted since start.
    connections_total: counter,
    /// Connections refused because `max_connections` were open.
    connections_refused: counter,
    /// Messages published by clients (accepted into the ring).
    messages_in: counter,
    /// Messages queued to subscribers (one per subscriber per message).
    messages_out: counter,
    /// Bytes read from clients (with TLS: as on the wire).
    bytes_in: counter,
    /// Bytes of frames sent to clients (with TLS: before encryption).
    bytes_out: counter,
    /// Clients disconnected because their write queue passed the cap.
    slow_consumer_closes: counter,
    /// Clients closed after staying silent past the ping timeout.
    stale_closes: counter,
    /// Fatal protocol violations (each closed its connection), all kinds.
    protocol_errors: counter,
    /// Protocol violations: a frame, line, message or body over the size limit.
    protocol_errors_too_large: counter,
    /// Protocol violations: malformed frame, line, JSON command or binary preface.
    protocol_errors_malformed: counter,
    /// Protocol violations: unknown opcode or command.
    protocol_errors_unknown_command: counter,
    /// Protocol violations: invalid UTF-8 where text is required.
    protocol_errors_invalid_utf8: counter,
    /// Protocol violations of WebSocket framing (RFC 6455): each closed with 1002, 1007 or 1009.
    protocol_errors_websocket: counter,
    /// Malformed or oversized HTTP requests.
    protocol_errors_http: counter,
    /// HTTP connections closed because a request head did not arrive in time (slowloris).
    http_head_timeouts: counter,
    /// Refused requests that left the connection open (bad name, limits, forbidden, not found).
    request_errors: counter,
    /// Publishes that found the ring full and paused their connection.
    ring_full_stalls: counter,
    /// Bytes waiting in write queues now.
    queued_bytes: gauge,
    /// WebSocket upgrades completed.
    websocket_upgrades: counter,
    /// HTTP requests handled (upgrades and streams included).
    http_requests: counter,
    /// Long-poll requests answered.
    long_polls: counter,
    /// Resuming subscribes served from history.
    replays_served: counter,
    /// Messages sent from history by those replays.
    replayed_messages: counter,
    /// Resumes whose offset was no longer retained, or belonged to another epoch.
    offsets_expired: counter,
    /// Channels freed because nothing used them (no subscriber, name holder or retained message).
    channels_freed: counter,
    /// Messages dropped from history by retention.
    history_dropped: counter,
    /// Payload bytes retained in history now (server-wide).
    retained_bytes: gauge,
    /// Messages retained in history now (server-wide).
    retained_messages: gauge,
    /// History records written to disk.
    records_written: counter,
    /// History segment files created.
    segments_written: counter,
    /// History segment files deleted by retention.
    segments_deleted: counter,
    /// fsync calls on history files.
    fsyncs: counter,
    /// Microseconds spent in those fsyncs.
    fsync_micros_total: counter,
    /// The slowest fsync, microseconds.
    fsync_micros_max: peak,
    /// History writes, opens and fsyncs that failed (each failed its channel's storage).
    storage_errors: counter,
    /// Acknowledged publishes refused because their record could not be made durable.
    storage_acks_refused: counter,
    /// Channels whose history storage is failing now (acknowledged publishes to them refused).
    storage_failed_channels: gauge,
    /// The most bytes any one connection has had queued.
    queue_high_water_bytes: peak,
    /// The most bytes of unparsed input any one connection has held (an incomplete frame, or
    /// input waiting behind a command in progress).
    input_high_water_bytes: peak,
    /// The longest turn of any worker's event loop, microseconds: from poll's return to the end
    /// of the turn's work. The ring waits for its slowest reader, so one long turn pauses every
    /// publisher (see `fanout_reactor_turn_seconds`).
    longest_turn_micros: peak,
    /// Cluster: Redis servers connected and answering now.
    cluster_redis_up: gauge,
    /// Cluster: connections to Redis re-established after a failure.
    cluster_reconnects: counter,
    /// Cluster: publishes handed to Redis and not yet answered.
    cluster_publishes_in_flight: gauge,
    /// Cluster: publishes Redis carried out.
    cluster_publishes_done: counter,
    /// Cluster: their round trips from the worker through Redis and back, microseconds, summed.
    cluster_round_trip_micros_total: counter,
    /// Cluster: the longest of those round trips, microseconds.
    cluster_round_trip_micros_max: peak,
    /// Cluster: publishes refused because Redis was unreachable (or failed the script).
    cluster_publishes_refused: counter,
    /// Cluster: messages received from Redis pub/sub.
    cluster_messages_received: counter,
    /// Cluster: offset jumps (pub/sub messages lost) filled in from the stream.
    cluster_gaps_repaired: counter,
    /// Cluster: offsets lost for good (gone from the stream before they could be repaired).
    cluster_offsets_lost: counter,
    /// Cluster: channels whose epoch changed under live subscribers (keys expired, Redis lost).
    cluster_epoch_changes: counter,
    /// Cluster: channels this node is subscribed to in Redis.
    cluster_channels_served: gauge,
    /// Cluster: Redis connections dropped because a command went unanswered too long.
    cluster_timeouts: counter,
    /// Cluster: pub/sub connections restarted because the liveness probe was not heard.
    cluster_probe_failures: counter,
    /// Cluster: name leases found taken by another node when refreshed (after a long outage).
    cluster_leases_lost: counter,
    /// Cluster: quiet channels found behind Redis's latest offset, then repaired.
    cluster_quiet_losses: counter,
    /// Cluster: channel syncs whose reply could not be read (the channel's keys in a state the
    /// script cannot read), tried again a second later.
    cluster_sync_failures: counter,
    /// Cluster: channels whose log Redis rolled back (restored from an older snapshot, a lagging
    /// replica promoted): a new epoch was begun, and live subscribers told.
    cluster_rollbacks: counter,
    /// Edge: messages delivered from the multicast group (`--multicast`).
    cluster_multicast_messages: counter,
    /// Edge: channels read again from the upstream because the multicast group missed something
    /// (a lost datagram, a lost tail a heartbeat showed, a message too large for a datagram).
    cluster_multicast_repairs: counter,
    /// Edge: datagrams on the multicast group that were not the upstream's (malformed, out of
    /// range, or from another address), dropped.
    cluster_multicast_malformed: counter,
    /// Tokens (or API keys) accepted.
    auth_ok: counter,
    /// Tokens refused: past `exp`.
    auth_expired: counter,
    /// Tokens refused: before `nbf`, or another audience or issuer.
    auth_invalid_claims: counter,
    /// Tokens refused: the signature did not verify, or no key here fits its algorithm or kid.
    auth_bad_signature: counter,
    /// Tokens refused: not a JWT, too long, or claims of the wrong shape.
    auth_malformed: counter,
    /// Commands refused because the connection's permissions do not cover them (403), or
    /// because it has not authenticated (401).
    auth_forbidden: counter,
    /// Connections closed because they did not authenticate in time.
    auth_timeout_closes: counter,
    /// Connections closed because their token expired and no fresh one came.
    auth_expiry_closes: counter,
    /// Connections closed after too many failed authentications.
    auth_failure_closes: counter,
    /// Publishes refused by the per-connection rate limit.
    limited_publish_rate: counter,
    /// Subscribes and unsubscribes refused by the per-connection rate limit.
    limited_subscribe_rate: counter,
    /// Connections refused at accept: too many from one source address.
    limited_connections_per_ip: counter,
    /// Browser requests refused: their Origin is not on the allowed list.
    limited_origin: counter,
    /// Pattern subscriptions refused: the connection holds `--max-patterns` already.
    limited_patterns: counter,
    /// Connections closed for sending, before they had any permissions, a frame, command,
    /// message or body larger than the strangers' budget (enough for AUTH and PING).
    limited_stranger_input: counter,
    /// Deliveries skipped because the subscription index named a connection no longer there (a
    /// missed detach; never expected).
    stale_index_entries: counter,
    /// Redis clients closed for a command larger than `--max-query-bytes`.
    limited_query_buffer: counter,
    /// Publishes their channel's namespace refused: a client's to a backend-only channel, or a
    /// message over the namespace's size.
    limited_namespace_publish: counter,
    /// Subscribes and publishes refused because `--max-channels` channels existed and none
    /// could be freed at once.
    limited_channels: counter,
    /// Wildcard subscriptions held now.
    pattern_subscriptions: gauge,
    /// Joins and leaves sent (into the ring, or to Redis in a cluster), after coalescing.
    presence_events: counter,
    /// Windows of joins and leaves sent (one ring notice, or one Redis call, each).
    presence_batches: counter,
    /// Joins and leaves never sent: a join and a leave of one connection within a window.
    presence_events_coalesced: counter,
    /// Connections closed by the server API's disconnect.
    api_disconnects: counter,
    /// Subscriptions ended by the server API's unsubscribe.
    api_unsubscribes: counter,
    /// Server API requests answered (any status).
    api_requests: counter,
    /// Open connections speaking TLS (any protocol inside).
    connections_tls: gauge,
    /// TLS handshakes completed.
    tls_handshakes: counter,
    /// TLS connections failed: malformed or unexpected records, or a bad MAC (debug log says).
    tls_failures_protocol: counter,
    /// TLS connections failed: no protocol version, cipher suite, group or ALPN in common.
    tls_failures_incompatible: counter,
    /// TLS connections failed: the client sent a fatal alert (often: it rejected the
    /// certificate).
    tls_failures_alert: counter,
    /// TLS connections failed: a certificate problem.
    tls_failures_certificate: counter,
    /// TLS handshakes not complete within the HTTP head deadline (slowloris), and on a
    /// `--tls-only` port connections silent that long.
    tls_failures_timeout: counter,
    /// TLS handshakes the client gave up on (it closed or reset the connection first).
    tls_failures_eof: counter,
    /// TLS connections failed for another reason (debug log says).
    tls_failures_other: counter,
    /// Plaintext connections refused by `--tls-only`.
    tls_plaintext_refused: counter,
}

impl WorkerCounters {
    /// The open-connections gauge of a format.
    pub fn by_format(&self, format: crate::protocol::Format) -> &AtomicU64 {
        use crate::protocol::Format;
        match format {
            Format::Text => &self.connections_text,
            Format::Binary => &self.connections_binary,
            Format::WsJson => &self.connections_websocket_json,
            Format::WsBinary => &self.connections_websocket_binary,
            Format::Sse => &self.connections_sse,
            Format::Http => &self.connections_http,
            Format::Resp2 | Format::Resp2Sharded => &self.connections_resp2,
            Format::Resp3 | Format::Resp3Sharded => &self.connections_resp3,
        }
    }

    /// The failure counter of a TLS failure reason (`tls::failure_reason`, or "timeout").
    pub fn tls_failure(&self, reason: &str) -> &AtomicU64 {
        match reason {
            "protocol" => &self.tls_failures_protocol,
            "incompatible" => &self.tls_failures_incompatible,
            "alert" => &self.tls_failures_alert,
            "certificate" => &self.tls_failures_certificate,
            "timeout" => &self.tls_failures_timeout,
            "eof" => &self.tls_failures_eof,
            _ => &self.tls_failures_other,
        }
    }

    /// Adds `n` (single writer, so this never contends).
    #[inline]
    pub fn add(counter: &AtomicU64, n: u64) {
        if n != 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }
}

impl Stats {
    /// The periodic log line: what an operator glances at (every figure is in `/metrics`).
    pub fn summary(&self) -> String {
        format!(
            "connections={} (tls {}) messages in={} out={} slow_consumer_closes={} protocol_errors={} queued_bytes={} retained_messages={} cluster_redis_up={}",
            self.connections_current,
            self.connections_tls,
            self.messages_in,
            self.messages_out,
            self.slow_consumer_closes,
            self.protocol_errors,
            self.queued_bytes,
            self.retained_messages,
            self.cluster_redis_up,
        )
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, value)) in self.fields().into_iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{name}={value}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_and_maxima() {
        let (a, b) = (WorkerCounters::default(), WorkerCounters::default());
        WorkerCounters::add(&a.messages_out, 3);
        WorkerCounters::add(&b.messages_out, 4);
        a.queue_high_water_bytes.store(10, Ordering::Relaxed);
        b.queue_high_water_bytes.store(7, Ordering::Relaxed);
        let mut total = Stats::default();
        total.absorb(&a);
        total.absorb(&b);
        assert_eq!(total.messages_out, 7);
        assert_eq!(total.queue_high_water_bytes, 10);
        assert!(total.to_string().contains("messages_out=7"));
    }
}
