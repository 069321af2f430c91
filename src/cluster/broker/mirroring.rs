//! The channels this node serves: subscribing, reading their streams, carrying out what each
//! channel's mirror decides (`mirror::ChannelMirror`: the log, the ring, notices, reads), the
//! quiet check, patterns, and letting go of what no subscriber uses.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use log::warn;

use super::*;

impl BrokerThread {
    pub(super) fn send_sync(&mut self, i: usize, topic: Bytes, after: u64, eval: bool) {
        self.send_sync_ending(i, topic, after, None, eval)
    }

    /// The sync script, first ending the channel's epoch `ending` (if it still is the channel's)
    /// for a new one: see `SYNC_LUA`.
    pub(super) fn send_sync_ending(
        &mut self,
        i: usize,
        topic: Bytes,
        after: u64,
        ending: Option<u64>,
        eval: bool,
    ) {
        let Some(channel) = Keys::channel_of(&self.config().key_prefix, &topic) else { return };
        let keys = Keys::new(&self.config().key_prefix, channel);
        let ttl = self.expiries.ttl_ms().to_string();
        // Greater than the one it ends and than the node's own: a new epoch is never older
        // than one a subscriber has seen (however the clocks disagree).
        // (A fresh mirror's log has a placeholder epoch of its own, not one of Redis's.)
        let mirrored = self
            .tracked
            .get(&topic)
            .filter(|t| !t.mirror.fresh)
            .map(|t| t.channel.lock_log().epoch);
        let epoch = crate::cluster::epoch_after(ending.into_iter().chain(mirrored)).to_be_bytes();
        let (meta, log) = (keys.meta(), keys.log());
        let script = if eval { self.sync.body.as_bytes() } else { self.sync.sha.as_bytes() };
        let verb: &[u8] = if eval { b"EVAL" } else { b"EVALSHA" };
        let Some(link) = self.shards[i].commands.as_mut() else { return };
        link.command(&[
            verb,
            script,
            b"2",
            &meta,
            &log,
            &epoch,
            ttl.as_bytes(),
            after.to_string().as_bytes(),
            SYNC_PAGE.to_string().as_bytes(),
            ending.map(u64::to_be_bytes).as_ref().map_or(&b""[..], |e| &e[..]),
        ]);
        let pending = Pending::Sync { topic, after, ending };
        self.shards[i].pending.push_back((Instant::now(), pending));
    }

    /// Starts serving `channel` on this node (a worker found it idle).
    pub(super) fn serve(&mut self, channel: Arc<Channel>) {
        let keys = Keys::new(&self.config().key_prefix, &channel.name);
        if let Some(tracked) = self.tracked.get_mut(&keys.topic) {
            // Found through a pattern: now it gets a subscription of its own, and once that is
            // confirmed its log is offered to plain subscribers.
            if std::mem::take(&mut tracked.mirror.via_pattern) {
                if let Some(shard) = tracked.shard.and_then(|i| self.shards.get_mut(i)) {
                    if shard.is_connected() {
                        shard.to_subscribe.push(keys.topic);
                    }
                }
            }
            return;
        }
        let shard = self.shard_of(&channel.name);
        self.tracked.insert(
            keys.topic.clone(),
            Tracked {
                channel,
                shard,
                mirror: ChannelMirror::new(u64::MAX, false),
                last_heard: Instant::now(),
                checked: false,
                behind: None,
            },
        );
        self.broker().counters.channels_served.fetch_add(1, Ordering::Relaxed);
        if let Some(shard) = shard.and_then(|i| self.shards.get_mut(i)) {
            if shard.is_connected() {
                shard.to_subscribe.push(keys.topic);
            }
        }
    }

    /// Unsubscribes from channels nobody on this node uses any more (no subscriber, no waiting
    /// join, no worker cache entry, no message in the ring).
    pub(super) fn let_go_of_unused(&mut self) {
        let registry = self.server.channels();
        let mut released = Vec::new();
        for (topic, tracked) in &self.tracked {
            // A channel found through a pattern is kept while it is busy (found again, it would
            // be read again).
            let quiet = !tracked.mirror.via_pattern
                || tracked.last_heard.elapsed() >= PATTERN_CHANNEL_QUIET;
            let idle = matches!(tracked.mirror.state, MirrorState::Live)
                && quiet
                && !Arc::ptr_eq(&tracked.channel, registry.broadcast())
                && registry.release_if_unused(&tracked.channel);
            if idle {
                released.push((topic.clone(), tracked.shard));
            }
        }
        for (topic, shard) in released {
            self.tracked.remove(&topic);
            self.broker().counters.channels_served.fetch_sub(1, Ordering::Relaxed);
            if let Some(shard) = shard.and_then(|i| self.shards.get_mut(i)) {
                if shard.is_connected() {
                    shard.to_unsubscribe.push(topic);
                }
            }
        }
    }

    /// Asks Redis for the latest offset of every channel that went quiet (nothing for
    /// `QUIET_AFTER`) since it was last asked: a message lost on the way with nothing after it
    /// (no jump to notice) is found this way and repaired from the stream.
    pub(super) fn check_quiet_channels(&mut self, now: Instant) {
        let prefix = self.config().key_prefix.clone();
        let mut lost = Vec::new();
        for (topic, tracked) in self.tracked.iter_mut() {
            if let Some(latest) = tracked.behind.take() {
                let log = tracked.channel.lock_log();
                if let Some(outcome) = tracked.mirror.still_behind(&*log, latest) {
                    lost.push((topic.clone(), outcome));
                }
            }
            let quiet = now.saturating_duration_since(tracked.last_heard) >= QUIET_AFTER;
            if tracked.checked || !quiet || !matches!(tracked.mirror.state, MirrorState::Live) {
                continue;
            }
            let Some(shard) = tracked.shard.and_then(|i| self.shards.get_mut(i)) else { continue };
            if !shard.is_ready() {
                continue;
            }
            let Some(channel) = Keys::channel_of(&prefix, topic) else { continue };
            let meta = Keys::new(&prefix, channel).meta();
            let Some(link) = shard.commands.as_mut() else { continue };
            link.command(&[b"HMGET", &meta, b"e", b"o"]);
            let (epoch, last) = tracked.mirror.fence(&*tracked.channel.lock_log());
            let check = Pending::Check { topic: topic.clone(), epoch, last };
            shard.pending.push_back((now, check));
            tracked.checked = true;
        }
        for (topic, outcome) in lost {
            self.broker().counters.quiet_losses.fetch_add(1, Ordering::Relaxed);
            self.apply(&topic, outcome);
        }
    }

    /// A pattern's PSUBSCRIBE took effect on server `i`; once on every server, the pattern is
    /// live (waiting pattern subscribers go on).
    pub(super) fn pattern_confirmed(&mut self, i: usize, glob: Bytes) {
        let shards = self.shards.len();
        let server = self.server.clone();
        let Some(track) = self.patterns.get_mut(&glob) else { return };
        track.confirmed.insert(i);
        if track.confirmed.len() == shards {
            let broker = server.broker();
            let mut served = broker.served_patterns();
            if let Some(entry) = served.get_mut(&track.text) {
                if !entry.live {
                    entry.live = true;
                    self.ring.served = true;
                }
            }
        }
    }

    /// A message on channel `topic`, which this node does not serve, came through a pattern:
    /// serve it from now on for the pattern subscribers (its log is read from the stream; the
    /// messages from `first` on go to the ring).
    pub(super) fn found_through_pattern(&mut self, i: usize, topic: &Bytes, first: u64) {
        let Some(name) = Keys::channel_of(&self.config().key_prefix, topic) else { return };
        let channel = match self.server.channels().get_or_create(name) {
            Ok(channel) => channel,
            Err(e) => {
                warn!(
                    "cluster: a pattern matched {}, not served: {e}",
                    String::from_utf8_lossy(name)
                );
                return;
            }
        };
        self.broker().counters.channels_served.fetch_add(1, Ordering::Relaxed);
        self.tracked.insert(
            topic.clone(),
            Tracked {
                channel,
                shard: Some(i),
                mirror: ChannelMirror {
                    state: MirrorState::Syncing { buffer: Vec::new() },
                    ..ChannelMirror::new(first.saturating_sub(1), true)
                },
                last_heard: Instant::now(),
                checked: false,
                behind: None,
            },
        );
        self.send_sync(i, topic.clone(), 0, false);
    }

    /// Starts receiving every channel a pattern subscription could match: a PSUBSCRIBE on
    /// every server (standalone Redis only), of a Redis glob that matches at least what the
    /// pattern matches (the workers match exactly).
    pub(super) fn serve_pattern(&mut self, text: Box<[u8]>) {
        let prefix = &self.config().key_prefix;
        // A Redis client's glob (behind `GLOB_KEY`) is a glob already: only the name around it.
        let glob = Bytes::from(match text.strip_prefix(&[crate::server::patterns::GLOB_KEY]) {
            Some(glob) => [&glob_prefix(prefix)[..], glob, b"}"].concat(),
            None => redis_glob(prefix, &text),
        });
        if self.patterns.contains_key(&glob) {
            return;
        }
        for shard in self.shards.iter_mut().filter(|s| s.is_connected()) {
            shard.to_psubscribe.push(glob.clone());
        }
        self.patterns
            .insert(glob, PatternTrack { text, confirmed: Default::default(), unused_sweeps: 0 });
    }

    /// PUNSUBSCRIBEs patterns no worker has had for two sweeps in a row.
    pub(super) fn let_go_of_unused_patterns(&mut self) {
        let mut gone = Vec::new();
        {
            let broker = self.server.broker();
            let mut served = broker.served_patterns();
            for (glob, track) in self.patterns.iter_mut() {
                let unused = served.get(&track.text).is_none_or(|e| e.holders == 0 && e.live);
                track.unused_sweeps = if unused { track.unused_sweeps + 1 } else { 0 };
                if track.unused_sweeps >= 2 {
                    served.remove(&track.text);
                    gone.push(glob.clone());
                }
            }
        }
        for glob in gone {
            self.patterns.remove(&glob);
            for shard in self.shards.iter_mut().filter(|s| s.is_connected()) {
                shard.to_punsubscribe.push(glob.clone());
            }
        }
    }

    /// Applies a page of the sync script to the channel's mirror.
    pub(super) fn synced(&mut self, topic: Bytes, after: u64, synced: Synced) {
        let (epoch, last, entries, read) = synced;
        let Some(tracked) = self.tracked.get_mut(&topic) else { return };
        let full = read == SYNC_PAGE;
        let page = Page { after, epoch, last, entries, full };
        let outcome = {
            let log = tracked.channel.lock_log();
            tracked.mirror.synced(&*log, page, now_ms())
        };
        self.apply(&topic, outcome);
    }

    /// Carries out what a channel's mirror decided, in order: the log and the ring, notices to
    /// subscribers, reads of the stream, counters and log lines.
    pub(super) fn apply(&mut self, topic: &Bytes, outcome: Outcome) {
        let Some(tracked) = self.tracked.get(topic) else { return };
        let (channel, shard) = (tracked.channel.clone(), tracked.shard);
        let server = self.server.clone();
        let counters = &server.broker().counters;
        let name = || String::from_utf8_lossy(&channel.name).into_owned();
        if let Some((epoch, why)) = outcome.rollback {
            counters.rollbacks.fetch_add(1, Ordering::Relaxed);
            warn!(
                "cluster: Redis rolled back {} ({}; restored from an older snapshot, or a lagging replica took over): ending epoch {epoch:016x} for a new one, subscribers are told",
                name(),
                why.why()
            );
        }
        if let Some(ended) = outcome.epoch_changed {
            counters.epoch_changes.fetch_add(1, Ordering::Relaxed);
            warn!(
                "cluster: {} has a new epoch in Redis (was {ended:016x}): its keys expired, Redis lost them, or a rollback ended the old one",
                name()
            );
        }
        for step in outcome.steps {
            match step {
                Step::Append { offset, payload, published_ms, deliver } => {
                    self.ring.accept(&channel, offset, payload, published_ms, deliver)
                }
                Step::Restart { epoch, next, notify } => {
                    self.ring.restart(&channel, epoch, next, notify)
                }
                Step::Hole { from, lost, notify } => {
                    counters.offsets_lost.fetch_add(lost, Ordering::Relaxed);
                    warn!(
                        "cluster: {} offsets {}..{} were lost and are no longer in the stream",
                        name(),
                        from - lost,
                        from - 1
                    );
                    if notify {
                        // Subscribers are told of the hole before what follows it.
                        self.ring.announce_hole(&channel, from);
                    }
                }
                Step::SkipTo { next } => self.ring.skip_to(&channel, next),
                Step::Sync { after, ending } => match shard {
                    Some(i) => self.send_sync_ending(i, topic.clone(), after, ending, false),
                    // The slot map is being read again; the channel is subscribed anew after it.
                    None => tracked_resubscribe(&mut self.tracked, topic),
                },
                Step::Served => self.ring.mark_served(&channel),
                Step::Repaired => {
                    counters.gaps_repaired.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

impl LocalLog for ChannelLog {
    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn next_offset(&self) -> u64 {
        self.next_offset
    }

    fn differs_at(&self, offset: u64, payload: &[u8]) -> bool {
        self.payload_at(offset).is_some_and(|mine| mine[..] != *payload)
    }
}

/// Marks a channel to be subscribed again once the slot map is known.
pub(super) fn tracked_resubscribe(tracked: &mut HashMap<Bytes, Tracked>, topic: &Bytes) {
    if let Some(t) = tracked.get_mut(topic) {
        t.mirror.resubscribe();
    }
}
