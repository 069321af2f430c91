//! The server-wide history cap, kept without a line every worker writes per publish.
//!
//! Every thread that appends to channels' logs (each worker, the cluster's broker thread, and
//! startup's recovery) is an `Appender` and owns a shard: the messages it retained, oldest
//! first, as (channel, offset, publish time), and `Totals` that its appends raise and its drops
//! lower. A drop may be of a message another appender retained, so one shard's totals can wrap
//! below zero; the wrapping sum over every shard is exact. Per publish an appender touches only
//! its own shard (an uncontended lock and its own cache line) and the channel's lock.
//!
//! Once per turn, each appender's `maintain` sums the shards (a few loads) and, past the cap,
//! evicts the oldest messages over all shards by publish time; so the cap can be overshot by
//! what the appenders publish in one turn, and no more. Per-channel retention (count, bytes,
//! age) leaves stale entries behind in the orders; `maintain` also compacts its own shard's
//! order, at most `COMPACT_BUDGET` entries per call, once stale entries outnumber live ones.
//!
//! Locks: a shard's order is pushed to by its owner under a channel's lock, and compacted by its
//! owner while it takes channels' locks; the evictor holds no channel lock while it takes an
//! order's. A cycle would need a second thread that holds a channel lock and waits for an order
//! its owner holds: only the owner pushes, and the evictor takes orders with no channel lock
//! held, so there is none.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::channels::Channel;
use super::ring::CachePadded;
use crate::history::Totals;

/// Entries of its own order an appender's `maintain` checks at most per call while compacting.
pub const COMPACT_BUDGET: usize = 4096;

/// Who appends: names the shard an append, drop or maintenance step counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appender {
    /// Worker `n`'s publishes, replays' age trims and channel sweeps.
    Worker(usize),
    /// The cluster's broker thread (mirrored messages, restarted logs, released channels).
    Broker,
    /// Recovery from disk at startup, and tests.
    Startup,
}

/// Every appender's shard, and the lock that keeps evictions one at a time.
#[derive(Debug)]
pub struct Retention {
    shards: Box<[CachePadded<Shard>]>,
    evicting: Mutex<()>,
}

#[derive(Debug, Default)]
struct Shard {
    order: Mutex<Order>,
    totals: Totals,
}

/// One retained message as the order notes it.
#[derive(Debug)]
struct Entry {
    channel: Weak<Channel>,
    offset: u64,
    published_ms: u64,
}

/// A shard's retained messages, oldest first, and the compaction under way, if any: entries
/// `..write` are kept, `write..read` are stale, `read..end` are still to check, and entries
/// past `end` came after the compaction began.
#[derive(Debug, Default)]
struct Order {
    entries: VecDeque<Entry>,
    compaction: Option<Compaction>,
}

#[derive(Debug, Clone, Copy)]
struct Compaction {
    write: usize,
    read: usize,
    end: usize,
}

/// Locks a mutex whose holders leave the data consistent at every step, poisoned or not.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Order {
    fn pop_front(&mut self) -> Option<Entry> {
        let entry = self.entries.pop_front()?;
        if let Some(c) = &mut self.compaction {
            // Whichever region the front was in, every index past it moves down by one.
            c.write = c.write.saturating_sub(1);
            c.read = c.read.saturating_sub(1);
            c.end = c.end.saturating_sub(1);
        }
        Some(entry)
    }

    /// Checks up to `budget` entries; true when a compaction is still under way.
    fn compact_step(&mut self, budget: usize) -> bool {
        let Some(mut c) = self.compaction else { return false };
        let stop = c.end.min(c.read + budget);
        while c.read < stop {
            if is_live(&self.entries[c.read]) {
                self.entries.swap(c.write, c.read);
                c.write += 1;
            }
            c.read += 1;
        }
        if c.read < c.end {
            self.compaction = Some(c);
            return true;
        }
        self.entries.drain(c.write..c.end);
        self.compaction = None;
        false
    }
}

/// Whether the message an entry notes is still retained.
fn is_live(entry: &Entry) -> bool {
    entry.channel.upgrade().is_some_and(|channel| {
        let log = channel.lock_log();
        entry.offset >= log.first_retained() && entry.offset <= log.last_offset()
    })
}

impl Retention {
    /// Shards for `workers` workers, the broker and startup.
    pub fn new(workers: usize) -> Self {
        let shards = (0..workers + 2).map(|_| CachePadded(Shard::default())).collect();
        Retention { shards, evicting: Mutex::new(()) }
    }

    fn shard(&self, appender: Appender) -> &Shard {
        let workers = self.shards.len() - 2;
        let at = match appender {
            Appender::Worker(n) => {
                assert!(n < workers, "worker {n} of {workers}");
                n
            }
            Appender::Broker => workers,
            Appender::Startup => workers + 1,
        };
        &self.shards[at]
    }

    /// The totals `appender`'s appends and drops count against.
    pub fn totals(&self, appender: Appender) -> &Totals {
        &self.shard(appender).totals
    }

    /// Bytes and messages retained over all channels (summed now: not for a per-message path).
    pub fn sum(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(bytes, messages), shard| {
            let totals = &shard.totals;
            (
                bytes.wrapping_add(totals.bytes.load(Ordering::Relaxed)),
                messages.wrapping_add(totals.messages.load(Ordering::Relaxed)),
            )
        })
    }

    /// Notes message `offset` of `channel`, just retained by `appender` (with the channel's lock
    /// held, so that each channel's entries in a shard are in offset order).
    pub fn note(&self, appender: Appender, channel: &Arc<Channel>, offset: u64, published_ms: u64) {
        let entry = Entry { channel: Arc::downgrade(channel), offset, published_ms };
        lock(&self.shard(appender).order).entries.push_back(entry);
    }

    /// `appender`'s step once per turn: evicts the oldest messages while the total is over
    /// `cap` bytes, and compacts its own order a step. Returns the messages evicted.
    pub fn maintain(&self, appender: Appender, cap: usize) -> usize {
        let (bytes, live) = self.sum();
        let evicted = match bytes > cap {
            true => self.evict_while(appender, |_| self.sum().0 > cap),
            false => 0,
        };
        let mut order = lock(&self.shard(appender).order);
        if order.compaction.is_none() && order.entries.len() > 2 * live + COMPACT_BUDGET {
            let end = order.entries.len();
            order.compaction = Some(Compaction { write: 0, read: 0, end });
        }
        order.compact_step(COMPACT_BUDGET);
        evicted
    }

    /// Drops the `count` globally oldest retained messages; returns how many went.
    pub fn evict_oldest(&self, appender: Appender, count: usize) -> usize {
        self.evict_while(appender, |dropped| dropped < count)
    }

    /// Drops the oldest retained message over all shards, by publish time, while `more(dropped
    /// so far)` holds and any is left; returns how many went.
    fn evict_while(&self, appender: Appender, more: impl Fn(usize) -> bool) -> usize {
        let _evicting = lock(&self.evicting);
        let totals = self.totals(appender);
        let mut dropped = 0;
        while more(dropped) {
            let oldest = self
                .shards
                .iter()
                .filter_map(|shard| {
                    let published_ms = lock(&shard.order).entries.front()?.published_ms;
                    Some((published_ms, shard))
                })
                .min_by_key(|(published_ms, _)| *published_ms);
            let Some((oldest_ms, shard)) = oldest else { break };
            // Only the evictor pops, but the owner's compaction may have taken the front since
            // it was looked at: take it only if it is still that old, else look again.
            let entry = {
                let mut order = lock(&shard.order);
                match order.entries.front() {
                    Some(front) if front.published_ms <= oldest_ms => order.pop_front(),
                    _ => None,
                }
            };
            let Some(entry) = entry else { continue };
            if let Some(channel) = entry.channel.upgrade() {
                dropped += channel.lock_log().drop_through(entry.offset, totals);
            }
        }
        dropped
    }

    /// Replaces every order with the given messages as (channel, offset, publish time), sorted
    /// by publish time (after recovery, before any worker runs).
    pub fn rebuild(&self, mut entries: Vec<(Weak<Channel>, u64, u64)>) {
        entries.sort_by_key(|(_, _, published_ms)| *published_ms);
        for shard in self.shards.iter() {
            *lock(&shard.order) = Order::default();
        }
        let mut order = lock(&self.shard(Appender::Startup).order);
        order.entries = entries
            .into_iter()
            .map(|(channel, offset, published_ms)| Entry { channel, offset, published_ms })
            .collect();
    }

    /// Entries in every order, stale ones included (a test's view of compaction).
    #[cfg(test)]
    pub fn entries(&self) -> usize {
        self.shards.iter().map(|shard| lock(&shard.order).entries.len()).sum()
    }
}
