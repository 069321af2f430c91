//! Counters. Each worker owns one `WorkerCounters` (cache-padded, written only by that worker,
//! with Relaxed adds batched per event-loop turn); `Stats` is their sum, taken on demand.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident: $kind:ident, )*) => {
        /// One worker's counters.
        #[derive(Debug, Default)]
        pub struct WorkerCounters {
            $( $(#[$doc])* pub $name: AtomicU64, )*
        }

        /// The server's counters, summed over workers (high-water marks take the maximum).
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct Stats {
            $( $(#[$doc])* pub $name: u64, )*
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
        }
    };
    (@absorb sum, $into:expr, $value:expr) => { $into += $value };
    (@absorb max, $into:expr, $value:expr) => { $into = $into.max($value) };
}

counters! {
    /// Connections open now.
    connections_current: sum,
    /// Connections accepted since start.
    connections_total: sum,
    /// Connections refused because `max_connections` were open.
    connections_refused: sum,
    /// Messages published by clients (accepted into the ring).
    messages_in: sum,
    /// Messages queued to subscribers (one per subscriber per message).
    messages_out: sum,
    /// Bytes read from clients.
    bytes_in: sum,
    /// Bytes written to clients.
    bytes_out: sum,
    /// Clients disconnected because their write queue passed the cap.
    slow_consumer_closes: sum,
    /// Clients closed after staying silent past the ping timeout.
    stale_closes: sum,
    /// Fatal protocol violations (each closed its connection).
    protocol_errors: sum,
    /// Refused requests that left the connection open (bad name, limits, forbidden, not found).
    request_errors: sum,
    /// Publishes that found the ring full and paused their connection.
    ring_full_stalls: sum,
    /// Bytes waiting in write queues now.
    queued_bytes: sum,
    /// Resuming subscribes served from history.
    replays_served: sum,
    /// Messages sent from history by those replays.
    replayed_messages: sum,
    /// Resumes whose offset was no longer retained, or belonged to another epoch.
    offsets_expired: sum,
    /// Messages dropped from history by retention.
    history_dropped: sum,
    /// Payload bytes retained in history now (server-wide).
    retained_bytes: max,
    /// Messages retained in history now (server-wide).
    retained_messages: max,
    /// History records written to disk.
    records_written: sum,
    /// History segment files created.
    segments_written: sum,
    /// History segment files deleted by retention.
    segments_deleted: sum,
    /// fsync calls on history files.
    fsyncs: sum,
    /// Microseconds spent in those fsyncs.
    fsync_micros_total: sum,
    /// The slowest fsync, microseconds.
    fsync_micros_max: max,
    /// The most bytes any one connection has had queued.
    queue_high_water_bytes: max,
}

impl WorkerCounters {
    /// Adds `n` (single writer, so this never contends).
    #[inline]
    pub fn add(counter: &AtomicU64, n: u64) {
        if n != 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
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
