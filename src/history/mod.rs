//! Channel history: the last messages of each channel, kept in memory, bounded by count, bytes
//! and age per channel and by a server-wide byte cap, so that a client that reconnects can resume
//! from the last offset it saw.
//!
//! Every retained message counts its payload plus `RETAINED_OVERHEAD_BYTES` against the byte
//! limits, so that millions of empty messages cannot hide from them. Per-channel limits trim the
//! channel's own oldest messages; the server-wide cap evicts the globally oldest (the registry
//! keeps the order of retention across channels: `server::channels::ChannelRegistry`).
//!
//! A `ChannelLog` lives inside its channel's mutex, next to the offset counter: a message is
//! appended under the same lock that assigned its offset and put it in the ring, so the log holds
//! offsets in order with no gap, and a reader that takes the lock sees exactly the messages up to
//! `next_offset - 1`. Each log has an epoch, a random id chosen when the log starts, so that an
//! offset from a log that no longer exists is recognised.

pub mod disk;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;

/// Retention limits; zero `messages` turns history off.
#[derive(Debug, Clone)]
pub struct HistoryLimits {
    /// Messages kept per channel.
    pub messages: usize,
    /// Bytes kept per channel (payload plus `RETAINED_OVERHEAD_BYTES` per message).
    pub bytes: usize,
    /// Messages older than this are dropped (zero: no age limit).
    pub age: Duration,
    /// Bytes kept over all channels, counted the same way; past it, the globally oldest
    /// messages go (see `server::retention`).
    pub total_bytes: usize,
}

/// What a retained message costs besides its payload: its entry in the channel's log, its entry
/// in the server-wide retention order, and the payload's allocation header.
pub const RETAINED_OVERHEAD_BYTES: usize = std::mem::size_of::<Retained>() + 32;

/// The bytes a message counts for against the history limits.
pub fn retained_cost(payload: &[u8]) -> usize {
    payload.len() + RETAINED_OVERHEAD_BYTES
}

/// One appender's share of the server-wide history totals (`server::retention`): raised by its
/// appends, lowered by its drops. A share may wrap below zero (a worker drops what another
/// appended); the wrapping sum of every share is the total.
#[derive(Debug, Default)]
pub struct Totals {
    /// Bytes retained (payloads plus overhead, see `retained_cost`).
    pub bytes: AtomicUsize,
    /// Messages retained.
    pub messages: AtomicUsize,
}

/// One retained message.
#[derive(Debug, Clone)]
pub struct Retained {
    /// Its offset.
    pub offset: u64,
    /// Wall-clock milliseconds when it was published (for age retention).
    pub published_ms: u64,
    /// The payload, shared with the message that went through the ring.
    pub payload: Bytes,
}

/// Where a resuming subscriber stands relative to the log (defined with the wire formats that
/// carry it, so that `protocol` needs nothing of `history`).
pub use crate::protocol::ResumeStatus;

/// In cluster mode, whether this node serves a channel: subscribed to it in Redis, with the
/// log a mirror of the channel's stream there (see `cluster`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mirror {
    /// A single node: the log is the record.
    Standalone,
    /// Not served here: a subscriber asks the broker, and waits.
    Idle,
    /// The broker was asked; subscribers wait until it is live.
    Requested,
    /// Subscribed in Redis and up to date: subscribers join as on one node.
    Live,
    /// An edge's upstream refused to serve it (a limit, a permission): the subscribers that
    /// waited are told why (`Broker::refusal`); the next one asks again.
    Refused,
}

/// A channel's offset counter and retained messages.
#[derive(Debug)]
pub struct ChannelLog {
    /// The offset the next message gets (offsets start at 1).
    pub next_offset: u64,
    /// This log's identity.
    pub epoch: u64,
    /// Cluster mode: whether the log mirrors the channel's stream in Redis.
    pub mirror: Mirror,
    /// Retained messages in offset order, ending at `next_offset - 1`; contiguous except for the
    /// jump an unclean restart leaves (see `disk::recover`).
    retained: VecDeque<Retained>,
    retained_bytes: usize,
}

/// A random 64-bit epoch without a dependency: std's hasher is keyed from the OS's randomness.
pub fn new_epoch() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish() | 1
}

/// Wall-clock milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Default for ChannelLog {
    fn default() -> Self {
        ChannelLog {
            next_offset: 1,
            epoch: new_epoch(),
            mirror: Mirror::Standalone,
            retained: VecDeque::new(),
            retained_bytes: 0,
        }
    }
}

/// A log's identity and extent at one moment, read under its lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// The log's epoch.
    pub epoch: u64,
    /// The earliest retained offset (`last + 1` when nothing is retained).
    pub first: u64,
    /// The latest offset (0 before the first message).
    pub last: u64,
}

impl Bounds {
    /// What a client is told about the log (HIST), with the status of its request.
    pub fn history<'a>(
        self,
        channel: &'a [u8],
        status: ResumeStatus,
    ) -> crate::protocol::HistoryStatus<'a> {
        let Bounds { epoch, first, last } = self;
        crate::protocol::HistoryStatus { channel, epoch, first, last, status }
    }
}

impl ChannelLog {
    /// Epoch, earliest retained and latest offsets.
    pub fn bounds(&self) -> Bounds {
        Bounds { epoch: self.epoch, first: self.first_retained(), last: self.last_offset() }
    }

    /// The payload retained at `offset`, if it still is.
    pub fn payload_at(&self, offset: u64) -> Option<&bytes::Bytes> {
        let at = self.retained.binary_search_by_key(&offset, |r| r.offset).ok()?;
        Some(&self.retained[at].payload)
    }

    /// The offset of the latest message (0 before the first).
    pub fn last_offset(&self) -> u64 {
        self.next_offset - 1
    }

    /// The earliest offset still retained (`next_offset` when nothing is).
    pub fn first_retained(&self) -> u64 {
        self.retained.front().map_or(self.next_offset, |r| r.offset)
    }

    /// Messages retained now, and the bytes they count for (see `retained_cost`).
    pub fn retained(&self) -> (usize, usize) {
        (self.retained.len(), self.retained_bytes)
    }

    /// Appends the message that just got offset `next_offset - 1`, then applies retention.
    /// `total` is the server-wide retained byte count. Returns the messages dropped.
    pub fn append(&mut self, message: Retained, limits: &HistoryLimits, total: &Totals) -> usize {
        if limits.messages == 0 {
            return 0;
        }
        debug_assert_eq!(
            message.offset,
            self.next_offset - 1,
            "append follows the offset it was given"
        );
        let now = message.published_ms;
        let cost = retained_cost(&message.payload);
        self.retained_bytes += cost;
        total.bytes.fetch_add(cost, Ordering::Relaxed);
        total.messages.fetch_add(1, Ordering::Relaxed);
        self.retained.push_back(message);
        self.trim(now, limits, total)
    }

    /// Drops what this channel's retention no longer allows (count, bytes, age); returns how
    /// many messages were dropped. The server-wide cap is applied across channels by the caller.
    pub fn trim(&mut self, now_ms: u64, limits: &HistoryLimits, total: &Totals) -> usize {
        let age_ms = limits.age.as_millis() as u64;
        let mut dropped = 0;
        while let Some(front) = self.retained.front() {
            let too_many = self.retained.len() > limits.messages;
            let too_big = self.retained_bytes > limits.bytes;
            let too_old = age_ms > 0 && now_ms.saturating_sub(front.published_ms) > age_ms;
            if !(too_many || too_big || too_old) {
                break;
            }
            self.pop_oldest(total);
            dropped += 1;
        }
        dropped
    }

    /// Drops every retained message up to `offset`; returns how many.
    pub fn drop_through(&mut self, offset: u64, total: &Totals) -> usize {
        let mut dropped = 0;
        while self.retained.front().is_some_and(|m| m.offset <= offset) {
            self.pop_oldest(total);
            dropped += 1;
        }
        dropped
    }

    /// Starts the log over as log `epoch` with nothing retained (cluster mode: the channel's
    /// stream in Redis is read into it next). The caller sets `next_offset`.
    pub fn restart(&mut self, epoch: u64, total: &Totals) {
        while !self.retained.is_empty() {
            self.pop_oldest(total);
        }
        self.epoch = epoch;
    }

    fn pop_oldest(&mut self, total: &Totals) {
        if let Some(message) = self.retained.pop_front() {
            let cost = retained_cost(&message.payload);
            self.retained_bytes -= cost;
            total.bytes.fetch_sub(cost, Ordering::Relaxed);
            total.messages.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The retained messages' (offset, publish time), oldest first (to rebuild the server-wide
    /// retention order after recovery).
    pub fn retained_times(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.retained.iter().map(|m| (m.offset, m.published_ms))
    }

    /// Where a subscriber that saw everything up to `after` in log `epoch` (`None`: any) stands.
    pub fn resume_status(&self, after: u64, epoch: Option<u64>) -> ResumeStatus {
        if epoch.is_some_and(|e| e != self.epoch) || after > self.last_offset() {
            ResumeStatus::EpochChanged
        } else if after + 1 < self.first_retained() {
            ResumeStatus::Expired
        } else {
            ResumeStatus::Ok
        }
    }

    /// A page for a reader that must announce holes (replay, long-poll): as `read_after`, but the
    /// page ends before an offset jump (an unclean restart, or in a cluster offsets lost for
    /// good), so that the reader's next page starts at the jump, where it says so.
    pub fn read_page(
        &self,
        after: u64,
        max_messages: usize,
        max_bytes: usize,
        out: &mut Vec<Retained>,
    ) {
        let start = out.len();
        self.read_after(after, max_messages, max_bytes, out);
        if let Some(jump) = out[start..].windows(2).position(|w| w[1].offset != w[0].offset + 1) {
            out.truncate(start + jump + 1);
        }
    }

    /// Up to `max_messages` (and about `max_bytes`) retained messages with offsets above `after`,
    /// in order.
    pub fn read_after(
        &self,
        after: u64,
        max_messages: usize,
        max_bytes: usize,
        out: &mut Vec<Retained>,
    ) {
        // Offsets are contiguous except across an unclean restart (see `disk::recover`), so find
        // the start by offset rather than by arithmetic.
        let skip = self.retained.partition_point(|r| r.offset <= after);
        let mut bytes = 0;
        for message in self.retained.iter().skip(skip).take(max_messages) {
            if bytes > 0 && bytes + message.payload.len() > max_bytes {
                break;
            }
            bytes += message.payload.len();
            out.push(message.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(messages: usize, bytes: usize, age_ms: u64) -> HistoryLimits {
        HistoryLimits {
            messages,
            bytes,
            age: Duration::from_millis(age_ms),
            total_bytes: usize::MAX,
        }
    }

    fn publish(
        log: &mut ChannelLog,
        payload: &'static [u8],
        at_ms: u64,
        limits: &HistoryLimits,
        total: &Totals,
    ) {
        let offset = log.next_offset;
        log.next_offset += 1;
        log.append(
            Retained { offset, published_ms: at_ms, payload: Bytes::from_static(payload) },
            limits,
            total,
        );
    }

    fn offsets(log: &ChannelLog, after: u64) -> Vec<u64> {
        let mut out = Vec::new();
        log.read_after(after, usize::MAX, usize::MAX, &mut out);
        out.iter().map(|r| r.offset).collect()
    }

    #[test]
    fn retention_by_count_bytes_and_age() {
        let total = Totals::default();
        let by_count = limits(3, usize::MAX, 0);
        let mut log = ChannelLog::default();
        for _ in 0..5 {
            publish(&mut log, b"x", 0, &by_count, &total);
        }
        assert_eq!(offsets(&log, 0), vec![3, 4, 5]);
        assert_eq!(log.resume_status(1, Some(log.epoch)), ResumeStatus::Expired);
        assert_eq!(log.resume_status(2, Some(log.epoch)), ResumeStatus::Ok);
        assert_eq!(log.resume_status(2, Some(log.epoch ^ 2)), ResumeStatus::EpochChanged);
        assert_eq!(log.resume_status(6, None), ResumeStatus::EpochChanged, "beyond the end");

        let by_bytes = limits(100, 10 + 2 * RETAINED_OVERHEAD_BYTES, 0);
        let mut log = ChannelLog::default();
        for payload in [&b"1234"[..], b"5678", b"90ab"] {
            let offset = log.next_offset;
            log.next_offset += 1;
            log.append(
                Retained { offset, published_ms: 0, payload: Bytes::from_static(payload) },
                &by_bytes,
                &total,
            );
        }
        assert_eq!(offsets(&log, 0), vec![2, 3], "12 payload bytes > 10: the oldest goes");

        let by_age = limits(100, usize::MAX, 1000);
        let mut log = ChannelLog::default();
        publish(&mut log, b"old", 0, &by_age, &total);
        publish(&mut log, b"new", 1500, &by_age, &total);
        assert_eq!(offsets(&log, 0), vec![2]);
        log.trim(5000, &by_age, &total);
        assert!(offsets(&log, 0).is_empty());
        assert_eq!(log.first_retained(), 3);
    }

    #[test]
    fn overhead_counts_and_the_off_switch() {
        let total = Totals::default();
        let mut log = ChannelLog::default();
        let keep = limits(100, usize::MAX, 0);
        publish(&mut log, b"", 0, &keep, &total);
        assert_eq!(log.retained(), (1, RETAINED_OVERHEAD_BYTES), "an empty message still costs");
        assert_eq!(total.bytes.load(Ordering::Relaxed), RETAINED_OVERHEAD_BYTES);
        let tight = limits(100, 2 * RETAINED_OVERHEAD_BYTES, 0);
        for _ in 0..5 {
            publish(&mut log, b"", 0, &tight, &total);
        }
        assert_eq!(log.retained().0, 2, "the per-channel byte limit holds for empty messages");
        assert_eq!(log.drop_through(5, &total), 1);
        assert_eq!(offsets(&log, 0), vec![6]);
        assert_eq!(total.messages.load(Ordering::Relaxed), 1);

        let off = limits(0, usize::MAX, 0);
        let mut log = ChannelLog::default();
        publish(&mut log, b"x", 0, &off, &total);
        assert!(offsets(&log, 0).is_empty());
        assert_eq!(log.last_offset(), 1, "offsets advance without history");
    }

    #[test]
    fn read_after_finds_its_place_across_an_offset_jump() {
        let total = Totals::default();
        let keep = limits(1000, usize::MAX, 0);
        let mut log = ChannelLog::default();
        for _ in 0..3 {
            publish(&mut log, b"before", 0, &keep, &total);
        }
        log.next_offset += 100; // what an unclean restart does
        for _ in 0..2 {
            publish(&mut log, b"after", 0, &keep, &total);
        }
        assert_eq!(offsets(&log, 2), vec![3, 104, 105]);
        assert_eq!(offsets(&log, 50), vec![104, 105], "an offset inside the jump resumes after it");
        assert_eq!(log.resume_status(50, Some(log.epoch)), ResumeStatus::Ok);
        // A page ends before the jump: the reader's next page begins at it and announces it.
        let page = |after| {
            let mut out = Vec::new();
            log.read_page(after, 10, usize::MAX, &mut out);
            out.iter().map(|r| r.offset).collect::<Vec<_>>()
        };
        assert_eq!((page(1), page(3), page(50)), (vec![2, 3], vec![104, 105], vec![104, 105]));
    }

    #[test]
    fn read_after_pages_in_order() {
        let total = Totals::default();
        let keep = limits(1000, usize::MAX, 0);
        let mut log = ChannelLog::default();
        for _ in 0..10 {
            publish(&mut log, b"p", 0, &keep, &total);
        }
        let mut page = Vec::new();
        log.read_after(4, 3, usize::MAX, &mut page);
        assert_eq!(page.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![5, 6, 7]);
        assert_ne!(new_epoch(), new_epoch());
    }
}
