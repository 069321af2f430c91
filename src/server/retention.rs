//! The server-wide history cap, kept without a line every worker writes per publish.
//!
//! Every thread that appends to channels' logs (each worker, the cluster's broker thread, and
//! startup's recovery) is an `Appender` and owns a shard: the messages it retained, oldest
//! first, as (channel, offset, time noted: the publish time, kept from going back within a
//! shard), and `Totals` that its appends raise and its drops lower. A drop may be of a message
//! another appender retained, so one shard's totals can wrap below zero; the wrapping sum over
//! every shard is exact. Per publish an appender touches only its own shard (an uncontended lock
//! and its own cache line) and the channel's lock.
//!
//! Once per turn, each appender's `maintain` sums the shards (a few loads) and, past the cap,
//! evicts the oldest messages over all shards by time noted. Per-channel retention (count,
//! bytes, age) leaves stale entries behind in the orders, which `maintain` compacts out of its
//! own shard once they outnumber live ones. Each looks at max(`COMPACT_BUDGET`, twice what the
//! appender noted since its last step) entries per turn: bounded, and faster than any publish
//! rate, so the cap is overshot by about a turn's publishes. Startup's shard, which nobody
//! appends to later, is compacted by worker 0, a step per housekeeping tick.
//!
//! Locks: a shard's order is pushed to by its owner under a channel's lock, and compacted by its
//! owner while it takes channels' locks; the evictor never holds an order's lock while it takes a
//! channel's (it takes runs of entries out, and puts back what it did not need). A cycle would
//! need a second thread that holds a channel lock and waits for an order its owner holds: only
//! the owner pushes, and the evictor waits for orders with no channel lock held, so there is
//! none.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::channels::Channel;
use super::ring::CachePadded;
use crate::history::Totals;

/// Entries an appender's `maintain` looks at per call, at least, to evict and to compact (a
/// millisecond or less; more when it noted more since its last call).
pub const COMPACT_BUDGET: usize = 1024;

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
    /// When it was retained here: its publish time, or the latest time noted in the shard if
    /// that is later (history a cluster node mirrors late, a wall clock stepped back), so that a
    /// shard is in time order and its front is its oldest.
    noted_ms: u64,
}

/// A shard's retained messages, oldest first, and the compaction under way, if any: entries
/// `..write` are kept, `write..read` are stale, `read..end` are still to check, and entries
/// past `end` came after the compaction began.
#[derive(Debug, Default)]
struct Order {
    entries: VecDeque<Entry>,
    compaction: Option<Compaction>,
    /// The latest `noted_ms`.
    last_ms: u64,
    /// Entries noted since the last compaction step: a step checks at least twice as many, so
    /// that compaction outpaces any rate of publishing.
    noted_since_step: usize,
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
    /// Puts back an entry taken from the front (it counts as kept by a compaction under way).
    fn push_front(&mut self, entry: Entry) {
        self.entries.push_front(entry);
        if let Some(c) = &mut self.compaction {
            c.write += 1;
            c.read += 1;
            c.end += 1;
        }
    }

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
    /// Not a snapshot: a message appended to a shard already read and dropped by one read later
    /// is missed, or the other way round counted twice, so while appenders run the sum is off by
    /// what they move meanwhile; a sum that would be negative reads as zero.
    pub fn sum(&self) -> (usize, usize) {
        let (bytes, messages) = self.shards.iter().fold((0usize, 0usize), |(b, m), shard| {
            let totals = &shard.totals;
            (
                b.wrapping_add(totals.bytes.load(Ordering::Relaxed)),
                m.wrapping_add(totals.messages.load(Ordering::Relaxed)),
            )
        });
        let non_negative = |n: usize| if n > isize::MAX as usize { 0 } else { n };
        (non_negative(bytes), non_negative(messages))
    }

    /// Notes message `offset` of `channel`, just retained by `appender` (with the channel's lock
    /// held, so that each channel's entries in a shard are in offset order).
    pub fn note(&self, appender: Appender, channel: &Arc<Channel>, offset: u64, published_ms: u64) {
        let mut order = lock(&self.shard(appender).order);
        order.last_ms = order.last_ms.max(published_ms);
        let entry = Entry { channel: Arc::downgrade(channel), offset, noted_ms: order.last_ms };
        order.entries.push_back(entry);
        order.noted_since_step += 1;
    }

    /// `appender`'s step once per turn: evicts the oldest messages while the total is over
    /// `cap` bytes, and compacts its own order a step; each looks at a bounded number of
    /// entries (at least twice what this appender noted since its last step, so that both
    /// outpace it), and what is left waits for the next turn. Returns the messages evicted.
    pub fn maintain(&self, appender: Appender, cap: usize) -> usize {
        let (bytes, live) = self.sum();
        let noted = std::mem::take(&mut lock(&self.shard(appender).order).noted_since_step);
        let budget = COMPACT_BUDGET.max(2 * noted);
        let evicted = match bytes > cap {
            true => self.evict_while(appender, budget, |_| self.sum().0 > cap, |_| {}),
            false => 0,
        };
        self.compact(appender, live, budget);
        evicted
    }

    /// A step of compaction of `appender`'s own order (up to `budget` entries looked at), begun
    /// once its entries outnumber twice the `live` messages (over all shards) by a budget.
    pub fn compact(&self, appender: Appender, live: usize, budget: usize) {
        let mut order = lock(&self.shard(appender).order);
        let threshold = live.saturating_mul(2).saturating_add(COMPACT_BUDGET);
        if order.compaction.is_none() && order.entries.len() > threshold {
            let end = order.entries.len();
            order.compaction = Some(Compaction { write: 0, read: 0, end });
        }
        order.compact_step(budget);
    }

    /// Drops the `count` globally oldest retained messages (looking at no more than `count`
    /// plus `COMPACT_BUDGET` entries: stale ones are skipped); returns how many went, and the
    /// names of the channels it left with nothing retained (which may now be freed).
    pub fn evict_oldest(&self, appender: Appender, count: usize) -> (usize, Vec<bytes::Bytes>) {
        let mut emptied = Vec::new();
        let budget = count.saturating_add(COMPACT_BUDGET);
        let dropped = self.evict_while(
            appender,
            budget,
            |dropped| dropped < count,
            |channel| emptied.push(channel.name.clone()),
        );
        (dropped, emptied)
    }

    /// Drops the oldest retained messages over all shards, by the time they were noted, while
    /// `more(dropped so far)` holds, any is left, and fewer than `budget` entries were looked at
    /// (stale ones cost a look each); `emptied` is told of each channel left with nothing
    /// retained. Returns how many went.
    ///
    /// Entries are taken from a shard's front in runs (those not newer than any other shard's
    /// front), under its lock, and acted on with it released: the evictor never holds an
    /// order's lock while it takes a channel's. What a run took and did not need goes back.
    fn evict_while(
        &self,
        appender: Appender,
        budget: usize,
        more: impl Fn(usize) -> bool,
        mut emptied: impl FnMut(&Channel),
    ) -> usize {
        const RUN: usize = 256;
        let _evicting = lock(&self.evicting);
        let totals = self.totals(appender);
        let (mut dropped, mut looked) = (0, 0);
        let mut run: VecDeque<Entry> = VecDeque::with_capacity(RUN);
        while more(dropped) && looked < budget {
            let mut fronts =
                self.shards.iter().enumerate().filter_map(|(at, shard)| {
                    Some((lock(&shard.order).entries.front()?.noted_ms, at))
                });
            let Some(mut oldest) = fronts.next() else { break };
            let mut next_ms = u64::MAX;
            for front in fronts {
                if front < oldest {
                    next_ms = next_ms.min(oldest.0);
                    oldest = front;
                } else {
                    next_ms = next_ms.min(front.0);
                }
            }
            let shard = &self.shards[oldest.1];
            {
                let mut order = lock(&shard.order);
                let take = RUN.min(budget - looked);
                while run.len() < take
                    && order.entries.front().is_some_and(|f| f.noted_ms <= next_ms)
                {
                    run.extend(order.pop_front());
                }
            }
            if run.is_empty() {
                continue; // Its compaction took the front meanwhile: look again.
            }
            while more(dropped) {
                let Some(entry) = run.pop_front() else { break };
                looked += 1;
                let Some(channel) = entry.channel.upgrade() else { continue };
                let mut log = channel.lock_log();
                let went = log.drop_through(entry.offset, totals);
                dropped += went;
                if went > 0 && log.retained().0 == 0 {
                    emptied(&channel);
                }
            }
            if !run.is_empty() {
                // Not needed after all: back to the front, in order, as if never taken.
                let mut order = lock(&shard.order);
                while let Some(entry) = run.pop_back() {
                    order.push_front(entry);
                }
                break;
            }
        }
        dropped
    }

    /// Replaces every order with the given messages as (channel, offset, publish time), sorted
    /// by publish time (after recovery, before any worker runs).
    pub fn rebuild(&self, mut entries: Vec<(Weak<Channel>, u64, u64)>) {
        entries.sort_by_key(|(_, _, noted_ms)| *noted_ms);
        for shard in self.shards.iter() {
            *lock(&shard.order) = Order::default();
        }
        let mut order = lock(&self.shard(Appender::Startup).order);
        order.last_ms = entries.last().map_or(0, |(_, _, noted_ms)| *noted_ms);
        order.entries = entries
            .into_iter()
            .map(|(channel, offset, noted_ms)| Entry { channel, offset, noted_ms })
            .collect();
    }

    /// Entries in every order, stale ones included (a test's view of compaction).
    #[cfg(test)]
    pub fn entries(&self) -> usize {
        self.shards.iter().map(|shard| lock(&shard.order).entries.len()).sum()
    }
}
