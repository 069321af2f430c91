//! Latency histograms for `/metrics` (Prometheus: `_bucket{le=...}`, `_sum`, `_count`, seconds).
//!
//! Fixed buckets, one set per writer (each worker, the broker thread): an observation is a bucket
//! search over 16 bounds and three relaxed adds on a line no other thread writes, and one
//! observation may stand for many events of one latency (`weight`: a batch of messages to its
//! subscribers), which is what keeps delivery latency per batch and not per delivery.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the buckets, in microseconds (50 µs to 10 s; past it, `+Inf`).
pub const BOUNDS_MICROS: [u64; 16] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 10_000_000,
];

const BUCKETS: usize = BOUNDS_MICROS.len() + 1;

/// One histogram, written by one thread, read by `/metrics`.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    /// In microseconds: at 10M deliveries a second of 2 ms each it wraps in 29 years (in
    /// nanoseconds it would in 11 days, which Prometheus would read as a counter reset).
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// Notes `weight` events that each took `nanos`.
    pub fn observe(&self, nanos: u64, weight: u64) {
        if weight == 0 {
            return;
        }
        let micros = nanos / 1000;
        let bucket = BOUNDS_MICROS.iter().position(|&bound| micros <= bound).unwrap_or(BUCKETS - 1);
        self.buckets[bucket].fetch_add(weight, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros.wrapping_mul(weight), Ordering::Relaxed);
        self.count.fetch_add(weight, Ordering::Relaxed);
    }

    /// What it holds now.
    pub fn snapshot(&self) -> Snapshot {
        let mut snapshot = Snapshot::default();
        snapshot.absorb(self);
        snapshot
    }
}

/// Counts read out of one or more histograms (summed over workers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Events per bucket (not cumulative), the last past every bound.
    pub buckets: [u64; BUCKETS],
    /// Total time of all events, in microseconds (wrapping, as a counter does).
    pub sum_micros: u64,
    /// Events.
    pub count: u64,
}

impl Snapshot {
    /// Several snapshots added together (every format's, every path's).
    pub fn sum<'a>(snapshots: impl IntoIterator<Item = &'a Snapshot>) -> Snapshot {
        let mut total = Snapshot::default();
        snapshots.into_iter().for_each(|s| total.merge(s));
        total
    }

    /// Adds another snapshot.
    pub fn merge(&mut self, other: &Snapshot) {
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine = mine.wrapping_add(*theirs);
        }
        self.sum_micros = self.sum_micros.wrapping_add(other.sum_micros);
        self.count = self.count.wrapping_add(other.count);
    }

    /// Adds another writer's histogram.
    pub fn absorb(&mut self, histogram: &Histogram) {
        for (mine, theirs) in self.buckets.iter_mut().zip(&histogram.buckets) {
            *mine = mine.wrapping_add(theirs.load(Ordering::Relaxed));
        }
        self.sum_micros =
            self.sum_micros.wrapping_add(histogram.sum_micros.load(Ordering::Relaxed));
        self.count = self.count.wrapping_add(histogram.count.load(Ordering::Relaxed));
    }

    /// The samples of one labelled series of family `name` in the Prometheus text format
    /// (`labels` like `format="binary"`, or empty).
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bucket, bound) in self.buckets.iter().zip(BOUNDS_MICROS.iter().map(Some).chain([None]))
        {
            cumulative += bucket;
            let le = match bound {
                Some(&micros) => format!("{}", micros as f64 / 1e6),
                None => "+Inf".into(),
            };
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}");
        }
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum_micros as f64 / 1e6);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }

    /// The smallest bucket bound under which `quantile` of the events fall, in seconds (`None`:
    /// no events, or past the last bound): for `/api/stats` and the admin page.
    pub fn quantile_bound(&self, quantile: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let wanted = (quantile * self.count as f64).ceil() as u64;
        let mut cumulative = 0;
        for (bucket, bound) in self.buckets.iter().zip(BOUNDS_MICROS) {
            cumulative += bucket;
            if cumulative >= wanted {
                return Some(bound as f64 / 1e6);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_the_sum_is_in_seconds() {
        let histogram = Histogram::default();
        histogram.observe(40_000, 3); // 40 µs: the first bucket, three times
        histogram.observe(700_000, 1); // 700 µs: le=0.001
        histogram.observe(20_000_000_000, 1); // 20 s: +Inf only
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, 5);
        let mut text = String::new();
        snapshot.render(&mut text, "x_seconds", "format=\"text\"");
        assert!(text.contains("x_seconds_bucket{format=\"text\",le=\"0.00005\"} 3\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{format=\"text\",le=\"0.0005\"} 3\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{format=\"text\",le=\"0.001\"} 4\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{format=\"text\",le=\"10\"} 4\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{format=\"text\",le=\"+Inf\"} 5\n"), "{text}");
        assert!(text.contains("x_seconds_sum{format=\"text\"} 20.00082\n"), "{text}");
        assert!(text.contains("x_seconds_count{format=\"text\"} 5\n"), "{text}");
        assert_eq!(snapshot.quantile_bound(0.5), Some(0.00005));
        assert_eq!(snapshot.quantile_bound(0.8), Some(0.001));
        assert_eq!(snapshot.quantile_bound(1.0), None);
    }

    #[test]
    fn an_observation_on_a_bound_falls_in_its_bucket() {
        let histogram = Histogram::default();
        histogram.observe(1_000_000, 1); // exactly 1 ms
        assert_eq!(histogram.snapshot().buckets[4], 1);
    }
}

/// Which way a publish's acknowledgement went: answered in the turn (memory, `--fsync`
/// `interval` or `never`), after the storage thread's fsync (`--fsync always`), or after Redis
/// ran the publish (cluster).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckPath {
    /// In the turn that read it.
    Memory,
    /// After fsync.
    Fsync,
    /// After Redis.
    Redis,
}

impl AckPath {
    /// Every path, in `WorkerHistograms::publish_ack`'s order.
    pub const ALL: [AckPath; 3] = [AckPath::Memory, AckPath::Fsync, AckPath::Redis];

    /// Its label in `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            AckPath::Memory => "memory",
            AckPath::Fsync => "fsync",
            AckPath::Redis => "redis",
        }
    }
}

/// Every histogram of the node, summed over workers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    /// `WorkerHistograms::delivery`.
    pub delivery: [Snapshot; crate::protocol::Format::COUNT],
    /// `WorkerHistograms::publish_ack`.
    pub publish_ack: [Snapshot; 3],
    /// `WorkerHistograms::replay`.
    pub replay: Snapshot,
    /// `WorkerHistograms::turn`.
    pub turn: Snapshot,
    /// The broker's round trips to Redis (cluster mode).
    pub redis_round_trip: Option<Snapshot>,
}

impl Latency {
    /// Adds one worker's histograms.
    pub fn absorb(&mut self, worker: &WorkerHistograms) {
        for (total, histogram) in self.delivery.iter_mut().zip(&worker.delivery) {
            total.absorb(histogram);
        }
        for (total, histogram) in self.publish_ack.iter_mut().zip(&worker.publish_ack) {
            total.absorb(histogram);
        }
        self.replay.absorb(&worker.replay);
        self.turn.absorb(&worker.turn);
    }
}

/// One worker's latency histograms.
#[derive(Debug, Default)]
pub struct WorkerHistograms {
    /// A message entering the node to the end of the turn that wrote its frame (to the socket,
    /// or to the queue of a subscriber whose socket is full), per wire format, one event per
    /// delivery.
    pub delivery: [Histogram; crate::protocol::Format::COUNT],
    /// A publish read to its acknowledgement queued, per `AckPath`.
    pub publish_ack: [Histogram; 3],
    /// A resume's replay: its HIST answer to the subscription live.
    pub replay: Histogram,
    /// A turn of the event loop: poll's return to the end of the turn's work.
    pub turn: Histogram,
}
