//! One channel's mirror of its log in Redis, as a plain state machine: no sockets, no clock, no
//! ring, no lock. The broker (the I/O shell) feeds it what Redis sends (a pushed message, a page
//! of the sync script, a quiet check's answer) with a view of the local log, and carries out the
//! steps it returns, in order: append to the log (and the ring), restart the log under another
//! epoch, tell subscribers of a hole, read the stream (again). The simulator in this file's tests
//! drives it against a model Redis with faults under thousands of seeded schedules.
//!
//! ```text
//!   Subscribing ── subscription confirmed ──► Syncing { buffer } ◄──────────────┐
//!                                              │ pages of the stream, then the   │ a jump, another epoch,
//!                                              │ buffer (of the epoch just read) │ a rollback, a loss
//!                                              ▼                                 │ found by the quiet check
//!                                             Live ──────────────────────────────┘
//! ```
//!
//! # Invariants (the simulator checks them after every step)
//! 1. No (epoch, offset) names two payloads in the local log, whatever Redis does.
//! 2. Within an epoch the local log only grows, one offset at a time; an offset it skips is
//!    announced (`Step::Hole`) before what follows it; another epoch is announced
//!    (`Step::Restart { notify: true }`) before anything of it.
//! 3. Redis giving out again an offset the log holds with another message, its counter going
//!    back, or the entry the log holds last rewritten, ends the epoch (`Step::Sync { ending }`):
//!    a rollback is never taken for a repair, nor a repair for a rollback.

use bytes::Bytes;

use super::Envelope;

/// Where a mirror stands.
#[derive(Debug)]
pub(crate) enum State {
    /// SUBSCRIBE sent, not yet confirmed: what arrives meanwhile is read from the stream after.
    Subscribing,
    /// Confirmed: every later message reaches this node, and is buffered while the stream is
    /// read.
    Syncing {
        /// Messages that arrived during the sync, applied after it.
        buffer: Vec<Envelope>,
    },
    /// Each message must carry the next offset.
    Live,
}

/// What the mirror needs to see of the local log.
pub(crate) trait LocalLog {
    /// The log's epoch.
    fn epoch(&self) -> u64;
    /// The offset the next message gets.
    fn next_offset(&self) -> u64;
    /// Whether the log retains `offset` with another payload than `payload` (false when it
    /// does not retain `offset`: then it cannot tell).
    fn differs_at(&self, offset: u64, payload: &[u8]) -> bool;
}

/// What the shell does for a mirror, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Append message `offset` to the log; into the ring too when `deliver` (live subscribers
    /// get it; otherwise it is history a fresh mirror reads).
    Append { offset: u64, payload: Bytes, published_ms: u64, deliver: bool },
    /// Start the log over under `epoch` at offset `next`; tell live subscribers when `notify`.
    Restart { epoch: u64, next: u64, notify: bool },
    /// The `lost` offsets before `from` are lost for good (the stream no longer has them):
    /// counted, and live subscribers told when `notify` (delivery goes on at `from`).
    Hole { from: u64, lost: u64, notify: bool },
    /// The log's next offset becomes `next` (the stream lacks its newest entries: history off,
    /// or trimmed) after a `Hole`.
    SkipTo { next: u64 },
    /// Read the stream after `after` (ending epoch `ending` first, for a new one).
    Sync { after: u64, ending: Option<u64> },
    /// The channel is mirrored: subscribers may be served.
    Served,
    /// A hole was filled from the stream (counted).
    Repaired,
}

/// A page of the sync script: the channel's epoch in Redis, its latest offset, and stream
/// entries (offset, publish time, payload) from the offset asked on.
#[derive(Debug, Clone)]
pub(crate) struct Page {
    pub after: u64,
    pub epoch: u64,
    pub last: u64,
    pub entries: Vec<(u64, u64, Bytes)>,
    /// True when the page was full (more may follow).
    pub full: bool,
}

/// Why a mirror ended its epoch (for the log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rollback {
    /// An offset the log holds, pushed with another message.
    OffsetReused,
    /// Redis's latest offset below the log's.
    CounterBehind,
    /// The entry the log holds last, rewritten in the stream.
    EntryRewritten,
    /// Redis answered a publish under another epoch, then came back with the log's own: the
    /// other one (and what it acknowledged) is gone.
    EpochWentBack,
    /// Redis restarted (or another server took the channel over) and gave out more offsets,
    /// but its stream no longer holds the last message the log has: whether it came back from
    /// an older snapshot cannot be checked, so the log is not trusted to go on.
    Unverifiable,
}

impl Rollback {
    /// Its words in the log line.
    pub fn why(self) -> &'static str {
        match self {
            Rollback::OffsetReused => "an offset given out twice",
            Rollback::CounterBehind => "its latest offset went back",
            Rollback::EntryRewritten => "an entry rewritten",
            Rollback::EpochWentBack => "an epoch it acknowledged publishes under is gone",
            Rollback::Unverifiable => {
                "Redis was replaced and its stream no longer holds the last message this node has"
            }
        }
    }
}

/// A publish Redis acknowledged through a node: its place (epoch, offset) and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Acked {
    pub epoch: u64,
    pub offset: u64,
    pub payload: Bytes,
}

/// Places a node remembers Redis acknowledged, until its log confirms them (the oldest are let
/// go of past this many: a node far behind its own publishes detects less, never wrongly).
const MAX_UNCONFIRMED: usize = 4096;

/// Ended epochs remembered per channel (16 bytes each, kept only once epochs end): enough to
/// recognise one that comes back from an old backup after many changes since (the outside chaos
/// run brought back one 8 changes old; 4 remembered was not enough).
const ENDED_EPOCHS: usize = 64;

/// One channel's mirror.
#[derive(Debug)]
pub(crate) struct ChannelMirror {
    pub state: State,
    /// The local log does not mirror the stream yet: the first sync replaces it.
    pub fresh: bool,
    /// Messages up to this offset that a sync reads are history, not for the ring (`u64::MAX`:
    /// everything a fresh sync reads; a channel found through a pattern delivers from its first
    /// message on).
    pub live_from: u64,
    /// Served only through a pattern subscription: not offered to plain subscribers.
    pub via_pattern: bool,
    /// Epochs of the channel that ended while mirrored (the latest few): a message of one
    /// arriving late is dropped, not taken for a change to repair.
    /// With each, the last offset the log held of it: a message of an ended epoch past that
    /// is not late but new (Redis went back to that epoch), and the log is read again.
    pub ended: Vec<(u64, u64)>,
    /// An epoch Redis answered a publish through this node under, that the log is not of: the
    /// next sync must find it (or a newer one), not the log's own again.
    pub expected: Option<u64>,
    /// The highest offset Redis acknowledged to a publisher through this node, and its epoch:
    /// Redis going back below it (restored from an older snapshot) is found even when this
    /// node's log never held those messages.
    pub acked: Option<(u64, u64)>,
    /// The places Redis acknowledged through this node that its log has not confirmed yet,
    /// with their messages: one found with another message is a place given out twice.
    pub unconfirmed: std::collections::BTreeMap<(u64, u64), Bytes>,
    /// Redis was replaced since the log was last compared with it (restarted, or another
    /// server took the channel over): the next sync must find the log's last message in the
    /// stream, or the log ends (`Rollback::Unverifiable`).
    pub unverified: bool,
    /// An epoch this mirror found rolled back and asked Redis to end: asked again until a page
    /// shows another epoch (the ending sync can be lost with its connection).
    pub ending: Option<u64>,
}

/// What a mirror did with an event, for the shell: its steps, and the rollback it found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub steps: Vec<Step>,
    pub rollback: Option<(u64, Rollback)>,
    /// The log restarted under another epoch (not a fresh mirror's first read).
    pub epoch_changed: Option<u64>,
    /// A pushed message of an ended epoch, dropped as late: not a sign of life (a channel that
    /// only hears those goes quiet, and its quiet check finds where Redis stands).
    pub dropped_late: bool,
}

impl ChannelMirror {
    /// A mirror of a channel about to be subscribed.
    pub fn new(live_from: u64, via_pattern: bool) -> Self {
        ChannelMirror {
            state: State::Subscribing,
            fresh: true,
            live_from,
            via_pattern,
            ended: Vec::new(),
            expected: None,
            acked: None,
            unconfirmed: Default::default(),
            unverified: false,
            ending: None,
        }
    }

    /// The subscription is confirmed: read the stream (from where the log stands, or all of it
    /// for a fresh mirror).
    pub fn subscribed(&mut self, log: &impl LocalLog) -> Outcome {
        if !matches!(self.state, State::Subscribing) {
            return Outcome::default();
        }
        self.state = State::Syncing { buffer: Vec::new() };
        if let Some(ending) = self.ending {
            let steps = vec![Step::Sync { after: 0, ending: Some(ending) }];
            return Outcome { steps, ..Default::default() };
        }
        let after = if self.fresh { 0 } else { log.next_offset() - 1 };
        Outcome { steps: vec![Step::Sync { after, ending: None }], ..Default::default() }
    }

    /// Redis answered a publish through this node under `epoch`. Another epoch than the log's
    /// (and not one that ended here) means the channel's log changed in Redis: it is read, and
    /// remembered, so that a Redis that then goes back to the log's own epoch (restored from a
    /// snapshot older than the other) is a rollback, told, not an unremarked return.
    pub fn published(&mut self, log: &impl LocalLog, places: Vec<Acked>) -> Outcome {
        let Some(epoch) = places.last().map(|a| a.epoch) else { return Outcome::default() };
        let mut reused = None;
        for Acked { epoch, offset, payload } in places {
            // The same place acknowledged before with another message: given out twice.
            if self.unconfirmed.get(&(epoch, offset)).is_some_and(|mine| *mine != payload) {
                reused = Some(epoch);
            }
            if self.acked.is_none_or(|(e, o)| e != epoch || o < offset) {
                self.acked = Some((epoch, offset));
            }
            let in_log = epoch == log.epoch() && offset < log.next_offset();
            if in_log && log.differs_at(offset, &payload) {
                reused = Some(epoch);
            }
            // Already in the log: compared there when it was appended.
            if !in_log {
                self.unconfirmed.insert((epoch, offset), payload);
            }
        }
        while self.unconfirmed.len() > MAX_UNCONFIRMED {
            self.unconfirmed.pop_first();
        }
        if let Some(epoch) = reused {
            let mut out = Outcome::default();
            if matches!(self.state, State::Subscribing) {
                // The sync after the subscription ends it.
                self.ending = Some(epoch);
                out.rollback = Some((epoch, Rollback::OffsetReused));
            } else {
                self.end_epoch(epoch, Rollback::OffsetReused, &mut out);
            }
            return out;
        }
        if self.fresh || epoch == log.epoch() {
            return Outcome::default();
        }
        if self.has_ended(epoch) {
            // Redis published under an epoch that ended here: it went back to it (restored
            // from a snapshot older than the change). The sync finds it, and ends it.
            if !matches!(self.state, State::Live) {
                return Outcome::default();
            }
            self.state = State::Syncing { buffer: Vec::new() };
            return Outcome {
                steps: vec![Step::Sync { after: 0, ending: None }],
                ..Default::default()
            };
        }
        self.expected = Some(epoch);
        if !matches!(self.state, State::Live) {
            // A sync is on its way, or will be (it finds the other epoch).
            return Outcome::default();
        }
        self.state = State::Syncing { buffer: Vec::new() };
        Outcome { steps: vec![Step::Sync { after: 0, ending: None }], ..Default::default() }
    }

    /// The connection to Redis went away: subscribe again.
    pub fn resubscribe(&mut self) {
        self.state = State::Subscribing;
    }

    /// The channel's server is not the one the log was compared with last (Redis restarted, or
    /// another server took over): it may have come back from an older snapshot. Unless the next
    /// sync finds the log's last message in the stream, it cannot be told from a rollback whose
    /// evidence was trimmed away.
    pub fn server_replaced(&mut self) {
        self.unverified = true;
    }

    /// A pushed message.
    pub fn pushed(&mut self, log: &impl LocalLog, envelope: Envelope, now_ms: u64) -> Outcome {
        match &mut self.state {
            State::Syncing { buffer } => {
                buffer.push(envelope);
                Outcome::default()
            }
            // From an earlier subscription: the sync after the confirmation reads it.
            State::Subscribing => Outcome::default(),
            State::Live => {
                let mut out = Outcome::default();
                self.deliver_live(&mut View::of(log), envelope, now_ms, &mut out);
                out
            }
        }
    }

    /// A live message: the next offset goes into the log; an older one was delivered already
    /// (unless the log holds it with another message: a rollback); a jump or another epoch is
    /// repaired from the stream first.
    fn deliver_live(
        &mut self,
        view: &mut View<'_>,
        envelope: Envelope,
        now_ms: u64,
        out: &mut Outcome,
    ) {
        if let Some(last) = self.ended.iter_mut().find(|(e, _)| *e == envelope.epoch) {
            if envelope.offset > last.1 {
                // Published under an epoch that ended here: Redis went back to it. The sync
                // finds it, and ends it.
                last.1 = envelope.offset;
                self.state = State::Syncing { buffer: Vec::new() };
                out.steps.push(Step::Sync { after: 0, ending: None });
            } else {
                out.dropped_late = true;
            }
            return;
        }
        if self.contradicts(envelope.epoch, envelope.offset, &envelope.payload) {
            // Redis gave out again the place of a publish it acknowledged through this node.
            self.end_epoch(envelope.epoch, Rollback::OffsetReused, out);
            return;
        }
        let same_epoch = envelope.epoch == view.epoch;
        if same_epoch && envelope.offset < view.next {
            if view.differs_at(envelope.offset, &envelope.payload) {
                self.end_epoch(view.epoch, Rollback::OffsetReused, out);
            }
            return;
        }
        if !same_epoch || envelope.offset > view.next {
            // Another epoch is another log: read all of it.
            let after = if same_epoch { view.next - 1 } else { 0 };
            self.state = State::Syncing { buffer: vec![envelope] };
            out.steps.push(Step::Sync { after, ending: None });
            return;
        }
        view.next = envelope.offset + 1;
        self.confirmed(envelope.epoch, envelope.offset);
        out.steps.push(Step::Append {
            offset: envelope.offset,
            payload: envelope.payload,
            published_ms: now_ms,
            deliver: true,
        });
    }

    /// The latest offset this node knows Redis gave out in the log's epoch: what the log holds,
    /// or what Redis acknowledged through this node, whichever is later. Redis below it went
    /// back in time (the publish script's fence, a sync, a quiet check).
    pub fn known_last(&self, log: &impl LocalLog) -> u64 {
        let held = log.next_offset() - 1;
        match self.acked {
            Some((epoch, acked)) if epoch == log.epoch() => held.max(acked),
            _ => held,
        }
    }

    /// What the publish script's fence compares Redis with (`None`: nothing known yet): what
    /// `fence` says, or for a mirror whose log is not read yet the latest place Redis
    /// acknowledged through this node.
    pub fn known(&self, log: &impl LocalLog) -> Option<(u64, u64)> {
        match self.fresh {
            true => self.acked,
            false => Some(self.fence(log)),
        }
    }

    /// What the publish script's fence and the quiet check compare Redis with: the latest
    /// (epoch, offset) this node knows Redis gave out. Redis acknowledging publishes through
    /// this node under another epoch than the log's is the newer knowledge.
    pub fn fence(&self, log: &impl LocalLog) -> (u64, u64) {
        match self.acked {
            Some((epoch, acked)) if epoch != log.epoch() => (epoch, acked),
            _ => (log.epoch(), self.known_last(log)),
        }
    }

    /// True when Redis acknowledged `(epoch, offset)` through this node with another message.
    fn contradicts(&self, epoch: u64, offset: u64, payload: &[u8]) -> bool {
        self.unconfirmed.get(&(epoch, offset)).is_some_and(|mine| mine[..] != *payload)
    }

    /// The log takes `(epoch, offset)` (checked with `contradicts` first): the place is
    /// confirmed, and forgotten. Only then: a page that is read but not taken (of another epoch
    /// than the one it leads to) confirms nothing.
    fn confirmed(&mut self, epoch: u64, offset: u64) {
        if !self.unconfirmed.is_empty() {
            self.unconfirmed.remove(&(epoch, offset));
        }
    }

    fn has_ended(&self, epoch: u64) -> bool {
        self.ended.iter().any(|(e, _)| *e == epoch)
    }

    /// Redis holds less of the log of `epoch` than this node mirrors, or other messages at its
    /// offsets: that log has ended. The sync that follows ends it in Redis too (once, whichever
    /// node sees it first) for a new epoch that keeps the stream, and reads that from its start.
    fn end_epoch(&mut self, epoch: u64, why: Rollback, out: &mut Outcome) {
        self.state = State::Syncing { buffer: Vec::new() };
        self.ending = Some(epoch);
        out.rollback = Some((epoch, why));
        out.steps.push(Step::Sync { after: 0, ending: Some(epoch) });
    }

    /// A quiet check's answer: Redis's epoch and latest offset, against the log's (`epoch`,
    /// `last`) when asked. Returns the steps, and whether Redis is ahead (a loss, if the log has
    /// not caught up by the next sweep: a message may be on its way).
    pub fn checked(
        &mut self,
        log: &impl LocalLog,
        asked: (u64, u64),
        redis: (Option<u64>, Option<u64>),
    ) -> (Outcome, Option<u64>) {
        let mut out = Outcome::default();
        let (asked_epoch, asked_last) = asked;
        let (redis_epoch, latest) = redis;
        // Redis's counter only grows within an epoch: below what this node held, it went back.
        if redis_epoch == Some(asked_epoch) && latest.is_some_and(|l| l < asked_last) {
            self.end_epoch(asked_epoch, Rollback::CounterBehind, &mut out);
            return (out, None);
        }
        if !matches!(self.state, State::Live) {
            return (out, None);
        }
        if redis_epoch.is_some_and(|e| e != log.epoch()) {
            // Another epoch under a quiet channel: read the new log.
            self.state = State::Syncing { buffer: Vec::new() };
            out.steps.push(Step::Sync { after: 0, ending: None });
            return (out, None);
        }
        (out, latest.filter(|&l| l >= log.next_offset()))
    }

    /// The next sweep after a quiet check found Redis ahead at `latest`: a loss if the log is
    /// still behind (repaired from the stream).
    pub fn still_behind(&mut self, log: &impl LocalLog, latest: u64) -> Option<Outcome> {
        if !matches!(self.state, State::Live) || log.next_offset() > latest {
            return None;
        }
        self.state = State::Syncing { buffer: Vec::new() };
        let after = log.next_offset() - 1;
        Some(Outcome { steps: vec![Step::Sync { after, ending: None }], ..Default::default() })
    }

    /// Applies a page of a sync: a fresh mirror (or another epoch) starts the log over from the
    /// stream; otherwise the stream fills in after what the log has. When the log has reached
    /// the latest offset, the buffered live messages follow and the channel is live.
    pub fn synced(&mut self, log: &impl LocalLog, page: Page, now_ms: u64) -> Outcome {
        let mut out = Outcome::default();
        if !matches!(self.state, State::Syncing { .. }) {
            return out;
        }
        let mut view = View::of(log);
        let Page { after, epoch, last, entries, full } = page;
        // Kept until a page is taken: one read from the old log's position under another epoch
        // only leads to a read of the new one from its start.
        let unverified = self.unverified;
        if let Some(ending) = self.ending {
            if epoch == ending {
                // Read before the epoch ended (a sync sent earlier), or the ending sync was
                // lost with its connection: end it again (once in Redis, whoever asks).
                out.steps.push(Step::Sync { after: 0, ending: Some(ending) });
                return out;
            }
            self.ending = None;
        }
        // Back in an epoch this node left, or in its own after Redis answered under another:
        // Redis went back in time, and what it acknowledged since is gone. Told, not resumed.
        // Or in an epoch older than one this node has seen (epochs are ordered: an old one came
        // back from a snapshot, even if no node remembers that it ended).
        let older = (!self.fresh && crate::cluster::older_epoch(epoch, view.epoch))
            || self.acked.is_some_and(|(e, _)| crate::cluster::older_epoch(epoch, e));
        let went_back = self.has_ended(epoch)
            || older
            || (!self.fresh && view.epoch == epoch && self.expected.is_some_and(|e| e != epoch));
        if went_back {
            self.end_epoch(epoch, Rollback::EpochWentBack, &mut out);
            return out;
        }
        let contradicted =
            entries.iter().any(|(offset, _, payload)| self.contradicts(epoch, *offset, payload));
        if contradicted {
            self.end_epoch(epoch, Rollback::EntryRewritten, &mut out);
            return out;
        }
        // After a replaced server, a place Redis acknowledged through this node that the stream
        // no longer holds (trimmed) cannot be confirmed: it may have been lost and given out
        // again.
        let trimmed_away = |offset: u64| {
            offset <= last && entries.first().is_none_or(|(first, ..)| offset < *first)
        };
        let unconfirmable =
            self.unconfirmed.keys().any(|&(e, offset)| e == epoch && trimmed_away(offset));
        if unverified && after == 0 && unconfirmable {
            self.end_epoch(epoch, Rollback::Unverifiable, &mut out);
            return out;
        }
        if !self.fresh && self.fence(log).0 == epoch && last < self.fence(log).1 {
            // An epoch this node knows Redis gave out more of than it has now.
            self.end_epoch(epoch, Rollback::CounterBehind, &mut out);
            return out;
        }
        if !self.fresh && view.epoch == epoch {
            // The same epoch with less than this node holds, or the entry it has last with
            // another message: a rollback, not a gap.
            if last < self.known_last(log).max(view.next - 1) {
                self.end_epoch(epoch, Rollback::CounterBehind, &mut out);
                return out;
            }
            let rewritten = after > 0
                && entries.first().is_some_and(|(offset, _, payload)| {
                    *offset == after && view.differs_at(after, payload)
                });
            if rewritten {
                self.end_epoch(epoch, Rollback::EntryRewritten, &mut out);
                return out;
            }
            // After a replaced server, the log's last message must still be in the stream (the
            // sync reads from it, inclusive) when Redis gave out more since: otherwise Redis may
            // have gone back below it and given its place to another message.
            let held = view.next - 1;
            let found = entries.first().is_some_and(|(offset, ..)| *offset == held);
            if unverified && after == held && held > 0 && last > held && !found {
                self.end_epoch(epoch, Rollback::Unverifiable, &mut out);
                return out;
            }
        }
        if after > 0 && view.epoch != epoch {
            // Another log: all of its stream is new here (the buffer waits on).
            out.steps.push(Step::Sync { after: 0, ending: None });
            return out;
        }
        self.unverified = false;
        let restart = self.fresh || view.epoch != epoch;
        if restart {
            let notify = !self.fresh;
            if notify {
                let ended = view.epoch;
                out.epoch_changed = Some(ended);
                if self.ended.len() == ENDED_EPOCHS {
                    self.ended.remove(0);
                }
                self.ended.push((ended, view.next - 1));
                // What was buffered of the ended epoch is superseded by the stream just read.
                if let State::Syncing { buffer } = &mut self.state {
                    buffer.retain(|envelope| envelope.epoch != ended);
                }
            }
            let next = entries.first().map_or(last + 1, |e| e.0);
            self.expected = None;
            view.epoch = epoch;
            view.next = next;
            view.restarted = true;
            out.steps.push(Step::Restart { epoch, next, notify });
        }
        let to_ring = !self.fresh;
        let mut reached = None;
        let mut filled = 0;
        for (offset, published_ms, payload) in entries {
            if offset < view.next {
                continue;
            }
            let deliver = to_ring || offset > self.live_from;
            if offset > view.next {
                let lost = offset - view.next;
                out.steps.push(Step::Hole { from: offset, lost, notify: deliver });
            }
            view.next = offset + 1;
            self.confirmed(epoch, offset);
            out.steps.push(Step::Append { offset, payload, published_ms, deliver });
            reached = Some(offset);
            filled += 1;
        }
        if full && reached.is_some_and(|r| r < last) {
            out.steps.push(Step::Sync { after: reached.unwrap_or(last), ending: None });
            return out;
        }
        if view.next <= last && !restart {
            // The stream no longer holds the newest messages (history off, or trimmed): what
            // comes next follows a hole, and subscribers are told so first.
            let lost = last + 1 - view.next;
            out.steps.push(Step::Hole { from: last + 1, lost, notify: true });
        }
        if view.next <= last {
            view.next = last + 1;
            out.steps.push(Step::SkipTo { next: last + 1 });
        }
        if !restart && !self.fresh && filled > 0 {
            out.steps.push(Step::Repaired);
        }
        if !self.via_pattern {
            out.steps.push(Step::Served);
        }
        self.fresh = false;
        self.live_from = u64::MAX;
        let State::Syncing { buffer } = std::mem::replace(&mut self.state, State::Live) else {
            return out;
        };
        // Only the epoch just read: a message of another was on its way when the epoch changed
        // (an older one), or belongs to one that began since (its stream will be read when the
        // next of its messages, or the quiet check, finds it).
        for envelope in buffer.into_iter().filter(|envelope| envelope.epoch == epoch) {
            match &mut self.state {
                // A jump in the buffer started another repair: the rest waits for it.
                State::Syncing { buffer } => buffer.push(envelope),
                _ => self.deliver_live(&mut view, envelope, now_ms, &mut out),
            }
        }
        out
    }
}

/// The local log as the steps computed so far leave it: the log itself until the mirror
/// restarts or appends.
struct View<'a> {
    log: &'a dyn LocalLog,
    epoch: u64,
    next: u64,
    /// The log was started over by a step: it retains nothing the mirror could compare with.
    restarted: bool,
}

impl<'a> View<'a> {
    fn of(log: &'a impl LocalLog) -> Self {
        View { log, epoch: log.epoch(), next: log.next_offset(), restarted: false }
    }

    fn differs_at(&self, offset: u64, payload: &[u8]) -> bool {
        !self.restarted && self.log.differs_at(offset, payload)
    }
}

/// The simulator: several nodes' mirrors of one channel against a model Redis (the publish and
/// sync scripts' semantics, the stream, pub/sub), under seeded random schedules with faults:
/// pushes lost (a connection down) or delivered twice, replies and pushes delivered in any causal order, Redis
/// restarted empty or from an older snapshot (a lagging replica promoted is the same), keys
/// expiring, the stream trimmed, connections dropped. After every step it checks the
/// invariants; after the schedule it quiesces (faults stop, everything is delivered, a last
/// publish and quiet check) and checks that every acknowledged message reached every node's
/// subscribers, or that they were told (an epoch change, a hole). A failing seed prints its
/// schedule. `cargo test mirror` runs a few thousand; `FANOUT_SIM_SCHEDULES=100000` more.
#[cfg(test)]
mod sim {
    use std::collections::{BTreeMap, HashMap, VecDeque};

    use bytes::Bytes;

    use super::{ChannelMirror, LocalLog, Outcome, Page, State, Step};
    use crate::cluster::sim_support::{seeds, Rng};
    use crate::cluster::Envelope;

    const PAGE: usize = 8;

    /// Redis's keys for the channel: meta (epoch, latest offset) and the stream.
    #[derive(Clone, Default, Debug)]
    struct Keys {
        meta: Option<(u64, u64)>,
        stream: BTreeMap<u64, Bytes>,
    }

    #[derive(Default)]
    struct Redis {
        keys: Keys,
        snapshots: Vec<Keys>,
        next_epoch: u64,
    }

    impl Redis {
        /// New epochs are ordered, as the broker makes them (`cluster::epoch_after`).
        fn candidate(&mut self) -> u64 {
            self.next_epoch += 1;
            crate::cluster::ORDERED_EPOCH | self.next_epoch
        }

        /// PUBLISH_LUA for one channel: (epoch, first offset).
        fn publish(&mut self, payloads: &[Bytes], known: Option<(u64, u64)>) -> (u64, u64) {
            let candidate = self.candidate();
            let (epoch, o) = self.keys.meta.unwrap_or((0, 0));
            let first = o + 1;
            let fenced = known.is_some_and(|(e, last)| e == epoch && first <= last);
            let epoch = if self.keys.meta.is_none() || fenced { candidate } else { epoch };
            for (k, payload) in payloads.iter().enumerate() {
                self.keys.stream.insert(first + k as u64, payload.clone());
            }
            self.keys.meta = Some((epoch, o + payloads.len() as u64));
            (epoch, first)
        }

        /// SYNC_LUA.
        fn sync(&mut self, after: u64, ending: Option<u64>) -> Page {
            let candidate = self.candidate();
            let (epoch, last) = match self.keys.meta {
                Some((e, o)) if Some(e) != ending => (e, o),
                Some((_, o)) => (candidate, o),
                None => (candidate, 0),
            };
            self.keys.meta = Some((epoch, last));
            let entries: Vec<(u64, u64, Bytes)> = self
                .keys
                .stream
                .range(after..)
                .take(PAGE)
                .map(|(&o, p)| (o, 0, p.clone()))
                .collect();
            let full = entries.len() == PAGE;
            Page { after, epoch, last, entries, full }
        }
    }

    /// What a node's subscribers saw.
    #[derive(Debug, Clone, PartialEq)]
    enum Seen {
        Message(u64, u64, Bytes),
        EpochNotice,
        Hole(u64),
    }

    /// A node's local log, as the broker keeps it.
    #[derive(Default)]
    struct Log {
        epoch: u64,
        next: u64,
        retained: BTreeMap<u64, Bytes>,
    }

    impl LocalLog for Log {
        fn epoch(&self) -> u64 {
            self.epoch
        }
        fn next_offset(&self) -> u64 {
            self.next
        }
        fn differs_at(&self, offset: u64, payload: &[u8]) -> bool {
            self.retained.get(&offset).is_some_and(|mine| mine[..] != *payload)
        }
    }

    /// A command on its way: sent, then run by Redis, then its reply delivered.
    enum Command {
        Sync {
            after: u64,
            ending: Option<u64>,
        },
        Check {
            asked: (u64, u64),
        },
        /// The publish script, with what the node knew when it sent it (the fence).
        Publish {
            payloads: Vec<Bytes>,
            known: Option<(u64, u64)>,
        },
    }

    enum Reply {
        Synced(Page),
        Checked((u64, u64), (Option<u64>, Option<u64>)),
        Published { run: u64, epoch: u64, first: u64, payloads: Vec<Bytes> },
    }

    struct Node {
        mirror: ChannelMirror,
        log: Log,
        connected: bool,
        /// Subscription asked, confirmation not yet delivered.
        confirming: bool,
        pushes: VecDeque<Envelope>,
        sent: VecDeque<Command>,
        replies: VecDeque<Reply>,
        seen: Vec<Seen>,
        /// Everything its log ever held: (epoch, offset) -> payload.
        held: HashMap<(u64, u64), Bytes>,
        behind: Option<u64>,
        /// What it decided (rollbacks), for a failing seed's report.
        events: Vec<String>,
        /// How many publishes Redis had run when its subscribers began to be served: the ones
        /// after must reach them.
        live_at: Option<u64>,
    }

    impl Node {
        fn new() -> Node {
            Node {
                mirror: ChannelMirror::new(u64::MAX, false),
                log: Log { epoch: 0, next: 1, retained: BTreeMap::new() },
                connected: true,
                confirming: true,
                pushes: VecDeque::new(),
                sent: VecDeque::new(),
                replies: VecDeque::new(),
                seen: Vec::new(),
                held: HashMap::new(),
                behind: None,
                live_at: None,
                events: Vec::new(),
            }
        }

        /// Carries out a mirror's steps as the broker does; `Err` breaks invariant 1.
        fn apply(&mut self, outcome: Outcome) -> Result<(), String> {
            if let Some((epoch, why)) = outcome.rollback {
                self.events.push(format!(
                    "rollback of {epoch}: {why:?} at log ({}, {})",
                    self.log.epoch, self.log.next
                ));
            }
            // A hole announced is where the log may jump to.
            let mut hole_to = None;
            for step in outcome.steps {
                match step {
                    Step::Append { offset, payload, deliver, .. } => {
                        if offset != self.log.next && Some(offset) != hole_to {
                            return Err(format!(
                                "append of {offset} where {} was next",
                                self.log.next
                            ));
                        }
                        let key = (self.log.epoch, offset);
                        if let Some(had) = self.held.insert(key, payload.clone()) {
                            if had != payload {
                                return Err(format!("{key:?} named {had:?} and then {payload:?}"));
                            }
                        }
                        self.log.retained.insert(offset, payload.clone());
                        self.log.next = offset + 1;
                        if deliver {
                            self.seen.push(Seen::Message(self.log.epoch, offset, payload));
                        }
                    }
                    Step::Restart { epoch, next, notify } => {
                        self.events.push(format!("restart ({epoch}, {next}) notify {notify}"));
                        self.log = Log { epoch, next, retained: BTreeMap::new() };
                        if notify {
                            self.seen.push(Seen::EpochNotice);
                        } else {
                            // A fresh mirror's first read: nothing it held was served yet.
                            self.held.clear();
                        }
                    }
                    Step::Hole { from, notify, .. } => {
                        self.events.push(format!(
                            "hole to {from} at log ({}, {})",
                            self.log.epoch, self.log.next
                        ));
                        hole_to = Some(from);
                        if notify {
                            self.seen.push(Seen::Hole(from));
                        }
                    }
                    Step::SkipTo { next } => self.log.next = self.log.next.max(next),
                    Step::Sync { after, ending } => {
                        if self.connected {
                            self.sent.push_back(Command::Sync { after, ending });
                        }
                    }
                    Step::Served | Step::Repaired => {}
                }
            }
            Ok(())
        }

        /// The connection to Redis dropped and came back: what was in flight is lost, the
        /// channel is subscribed again.
        /// Redis restarted (its run id changed): the node reconnects, and its mirror knows the
        /// server was replaced.
        fn reconnect_to_another_server(&mut self) {
            self.reconnect();
            self.mirror.server_replaced();
        }

        fn reconnect(&mut self) {
            self.pushes.clear();
            self.sent.clear();
            self.replies.clear();
            self.mirror.resubscribe();
            self.confirming = true;
            self.connected = true;
        }
    }

    struct World {
        rng: Rng,
        redis: Redis,
        nodes: Vec<Node>,
        /// Acknowledged publishes: (when Redis ran it, epoch, offset, payload).
        acked: Vec<(u64, u64, u64, Bytes)>,
        /// Publishes Redis ran so far (their order).
        executed: u64,
        next_payload: u64,
        trace: Vec<String>,
    }

    impl World {
        fn new(seed: u64, nodes: usize) -> World {
            World {
                rng: Rng::new(seed),
                redis: Redis::default(),
                nodes: (0..nodes).map(|_| Node::new()).collect(),
                acked: Vec::new(),
                executed: 0,
                next_payload: 0,
                trace: Vec::new(),
            }
        }

        /// A publisher on node `from` sends a publish (refused at once while it is cut off).
        fn publish(&mut self, from: usize) {
            let count = 1 + self.rng.below(3) as usize;
            let payloads: Vec<Bytes> = (0..count)
                .map(|_| {
                    self.next_payload += 1;
                    Bytes::from(format!("p{}", self.next_payload))
                })
                .collect();
            let node = &mut self.nodes[from];
            if !node.connected {
                return;
            }
            let known = node.mirror.known(&node.log);
            node.sent.push_back(Command::Publish { payloads, known });
        }

        /// Redis runs the oldest command node `i` sent; its reply goes back on the same
        /// connection, in order.
        fn run_command(&mut self, i: usize) -> bool {
            let Some(command) = self.nodes[i].sent.pop_front() else { return false };
            let reply = match command {
                Command::Sync { after, ending } => Reply::Synced(self.redis.sync(after, ending)),
                Command::Check { asked } => {
                    let meta = self.redis.keys.meta;
                    Reply::Checked(asked, (meta.map(|m| m.0), meta.map(|m| m.1)))
                }
                Command::Publish { payloads, known } => {
                    let (epoch, first) = self.redis.publish(&payloads, known);
                    self.trace.push(format!(
                        "publish {} from node {i} known {known:?}: ({epoch}, {first})",
                        payloads.len()
                    ));
                    for (k, payload) in payloads.iter().enumerate() {
                        let offset = first + k as u64;
                        for node in self.nodes.iter_mut().filter(|n| n.connected) {
                            let envelope = Envelope { epoch, offset, payload: payload.clone() };
                            node.pushes.push_back(envelope);
                        }
                    }
                    self.executed += 1;
                    Reply::Published { run: self.executed, epoch, first, payloads }
                }
            };
            self.nodes[i].replies.push_back(reply);
            true
        }

        /// Node `i` takes its oldest reply.
        fn take_reply(&mut self, i: usize) -> Result<bool, String> {
            let Some(reply) = self.nodes[i].replies.pop_front() else { return Ok(false) };
            if let Reply::Published { run, epoch, first, payloads } = &reply {
                // Acknowledged now, to the publisher.
                let names: Vec<String> =
                    payloads.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect();
                self.trace.push(format!("node {i} acked {names:?} at ({epoch}, {first})"));
                for (k, payload) in payloads.iter().enumerate() {
                    self.acked.push((*run, *epoch, first + k as u64, payload.clone()));
                }
            }
            let node = &mut self.nodes[i];
            let outcome = match reply {
                Reply::Synced(page) => {
                    node.events.push(format!(
                        "page after {} ({}, {}) first {:?} unverified {}",
                        page.after,
                        page.epoch,
                        page.last,
                        page.entries.first().map(|e| e.0),
                        node.mirror.unverified
                    ));
                    node.mirror.synced(&node.log, page, 0)
                }
                Reply::Checked(asked, redis) => {
                    let (outcome, behind) = node.mirror.checked(&node.log, asked, redis);
                    node.behind = behind;
                    outcome
                }
                Reply::Published { epoch, first, payloads, .. } => {
                    let places = payloads
                        .into_iter()
                        .enumerate()
                        .map(|(k, payload)| super::Acked {
                            epoch,
                            offset: first + k as u64,
                            payload,
                        })
                        .collect();
                    node.mirror.published(&node.log, places)
                }
            };
            node.apply(outcome)?;
            Ok(true)
        }

        /// One random event.
        fn step(&mut self, faults: bool) -> Result<(), String> {
            let n = self.nodes.len() as u64;
            let i = self.rng.below(n) as usize;
            match self.rng.below(100) {
                0..=19 => self.publish(i),
                20..=44 => {
                    let node = &mut self.nodes[i];
                    if let Some(envelope) = node.pushes.pop_front() {
                        let outcome = node.mirror.pushed(&node.log, envelope, 0);
                        node.apply(outcome)?;
                    } else if node.confirming && node.connected {
                        node.confirming = false;
                        let outcome = node.mirror.subscribed(&node.log);
                        node.apply(outcome)?;
                    }
                }
                45..=59 => {
                    self.run_command(i);
                }
                60..=79 => {
                    self.take_reply(i)?;
                }
                80..=84 => {
                    // The quiet check, and the sweep after it.
                    let node = &mut self.nodes[i];
                    if let Some(latest) = node.behind.take() {
                        if let Some(outcome) = node.mirror.still_behind(&node.log, latest) {
                            node.apply(outcome)?;
                        }
                    }
                    if matches!(node.mirror.state, State::Live) && node.connected {
                        let asked = node.mirror.fence(&node.log);
                        node.sent.push_back(Command::Check { asked });
                    }
                }
                85..=89 if faults => {
                    self.trace.push(format!("node {i} reconnects"));
                    self.nodes[i].reconnect();
                }
                90..=91 if faults => {
                    self.trace.push("snapshot".into());
                    self.redis.snapshots.push(self.redis.keys.clone());
                }
                92 if faults => {
                    // Restarted from an older snapshot (or a lagging replica promoted).
                    let k = self.rng.below(self.redis.snapshots.len() as u64 + 1) as usize;
                    self.redis.keys = self.redis.snapshots.get(k).cloned().unwrap_or_default();
                    // One rollback at a time: no later restore goes back past this one (a second
                    // restore to before the first can bring back an epoch that a node lagging
                    // behind still mirrors, which it cannot tell: a limit the README states).
                    self.redis.snapshots.clear();
                    self.trace
                        .push(format!("redis restored snapshot {k}: {:?}", self.redis.keys.meta));
                    self.nodes.iter_mut().for_each(Node::reconnect_to_another_server);
                }
                93 if faults && self.rng.chance(30) => {
                    self.trace.push("redis restarted empty".into());
                    self.redis.keys = Keys::default();
                    self.redis.snapshots.clear();
                    self.nodes.iter_mut().for_each(Node::reconnect_to_another_server);
                }
                94 if faults => {
                    // The stream trimmed (MAXLEN), keeping its newest entries.
                    let keep = 2 + self.rng.below(6) as usize;
                    while self.redis.keys.stream.len() > keep {
                        self.redis.keys.stream.pop_first();
                    }
                    self.trace.push(format!("stream trimmed to {keep}"));
                }
                95 if faults => {
                    // A push lost on the way (a connection that dropped and came back).
                    if let Some(lost) = self.nodes[i].pushes.pop_front() {
                        self.trace.push(format!("node {i} lost push {}", lost.offset));
                    }
                }
                97 if faults => {
                    // A push delivered twice (a client library's retry, a proxy replaying).
                    let node = &mut self.nodes[i];
                    let k = self.rng.below(node.pushes.len() as u64 + 1) as usize;
                    if let Some(copy) = node.pushes.get(k).cloned() {
                        self.trace.push(format!("node {i} gets push {} twice", copy.offset));
                        node.pushes.insert(k, copy);
                    }
                }
                96 if faults && self.rng.chance(20) => {
                    self.trace.push("keys expired".into());
                    self.redis.keys = Keys::default();
                    self.redis.snapshots.clear();
                }
                _ => {}
            }
            self.note_live();
            self.check_order()
        }

        fn note_live(&mut self) {
            let executed = self.executed;
            for node in &mut self.nodes {
                if node.live_at.is_none() && matches!(node.mirror.state, State::Live) {
                    node.live_at = Some(executed);
                }
            }
        }

        /// Invariant 2 on what subscribers saw: within an epoch, consecutive offsets, except
        /// right after a hole notice (to its offset) or an epoch notice (anywhere).
        fn check_order(&self) -> Result<(), String> {
            for (i, node) in self.nodes.iter().enumerate() {
                let mut last: Option<(u64, u64)> = None;
                let mut free = true;
                for seen in &node.seen {
                    match seen {
                        Seen::EpochNotice => {
                            free = true;
                            last = None;
                        }
                        Seen::Hole(from) => {
                            last = last.map(|(e, _)| (e, from - 1));
                        }
                        Seen::Message(epoch, offset, _) => {
                            if let Some((e, o)) = last {
                                if *epoch != e && !free {
                                    return Err(format!("node {i}: epoch {e} -> {epoch} untold"));
                                }
                                if *epoch == e && *offset != o + 1 {
                                    return Err(format!(
                                        "node {i}: epoch {epoch} offset {o} then {offset}"
                                    ));
                                }
                            }
                            free = false;
                            last = Some((*epoch, *offset));
                        }
                    }
                }
            }
            Ok(())
        }

        /// Faults stop; everything in flight is delivered; a last publish (someone always
        /// publishes again) and quiet checks let every node find what it missed.
        fn quiesce(&mut self) -> Result<(), String> {
            for n in self.nodes.iter_mut().filter(|n| !n.connected) {
                n.reconnect();
            }
            for round in 0..3 {
                if round == 1 {
                    self.publish(0);
                }
                for _ in 0..400 {
                    self.step(false)?;
                }
                // Drain: every command, reply and push, on every node, until none is left and
                // every node's quiet check finds nothing (a publish drained on one node pushes
                // to the others).
                let mut quiet = vec![false; self.nodes.len()];
                for _ in 0..100_000 {
                    if quiet.iter().all(|&q| q) {
                        break;
                    }
                    for (i, quiet) in quiet.iter_mut().enumerate() {
                        *quiet = !self.drain_one(i)?;
                    }
                }
                self.note_live();
                self.check_order()?;
            }
            Ok(())
        }

        /// One thing node `i` has to do, if any: a command run, a reply or push taken, a
        /// confirmation, or (when nothing else) a quiet check that finds something.
        fn drain_one(&mut self, i: usize) -> Result<bool, String> {
            if self.run_command(i) || self.take_reply(i)? {
                return Ok(true);
            }
            let node = &mut self.nodes[i];
            if node.confirming {
                node.confirming = false;
                let outcome = node.mirror.subscribed(&node.log);
                node.apply(outcome)?;
            } else if let Some(envelope) = node.pushes.pop_front() {
                let outcome = node.mirror.pushed(&node.log, envelope, 0);
                node.apply(outcome)?;
            } else if let Some(latest) = node.behind.take() {
                if let Some(outcome) = node.mirror.still_behind(&node.log, latest) {
                    node.apply(outcome)?;
                }
            } else if matches!(node.mirror.state, State::Live) {
                let asked = node.mirror.fence(&node.log);
                let meta = self.redis.keys.meta;
                let redis = (meta.map(|m| m.0), meta.map(|m| m.1));
                let (outcome, behind) = node.mirror.checked(&node.log, asked, redis);
                node.behind = behind;
                let idle = outcome.steps.is_empty() && behind.is_none();
                node.apply(outcome)?;
                return Ok(!idle);
            } else {
                return Ok(false);
            }
            Ok(true)
        }

        /// Every acknowledged message that Redis still holds (in the epoch it was acknowledged
        /// in, or the one that ended it) reached every node's subscribers once; any other missing
        /// one was announced (an epoch notice or a hole).
        fn check_delivery(&self) -> Result<(), String> {
            for (i, node) in self.nodes.iter().enumerate() {
                let told = node.seen.iter().any(|s| !matches!(s, Seen::Message(..)));
                let mut times: HashMap<&Bytes, usize> = HashMap::new();
                let mut per_epoch: HashMap<(u64, &Bytes), usize> = HashMap::new();
                for seen in &node.seen {
                    if let Seen::Message(epoch, _, payload) = seen {
                        *times.entry(payload).or_default() += 1;
                        *per_epoch.entry((*epoch, payload)).or_default() += 1;
                    }
                }
                if let Some(((epoch, payload), n)) = per_epoch.iter().find(|(_, &n)| n > 1) {
                    return Err(format!("node {i}: {payload:?} {n} times in epoch {epoch}"));
                }
                let since = node.live_at.ok_or_else(|| format!("node {i} never went live"))?;
                for (_, _, _, payload) in self.acked.iter().filter(|a| a.0 > since) {
                    if !times.contains_key(payload) && !told {
                        return Err(format!(
                            "node {i}: acknowledged {payload:?} never came, untold"
                        ));
                    }
                }
            }
            // Offsets are the same everywhere: no (epoch, offset) names two payloads across
            // nodes, in any epoch a node is still in. (Two nodes may disagree about an epoch
            // Redis rolled back while neither knew: one mirrored what was lost, the other what
            // was published after. Whichever notices ends that epoch, and both move on to a new
            // one, their subscribers told.)
            let mut named: HashMap<(u64, u64), &Bytes> = HashMap::new();
            let current: Vec<u64> = self.nodes.iter().map(|n| n.log.epoch).collect();
            for node in &self.nodes {
                for (key, payload) in node.held.iter().filter(|(k, _)| current.contains(&k.0)) {
                    if let Some(other) = named.insert(*key, payload) {
                        if other != payload {
                            return Err(format!(
                                "{key:?} is {other:?} on one node, {payload:?} on another"
                            ));
                        }
                    }
                }
            }
            Ok(())
        }
    }

    fn run(seed: u64, steps: usize) -> Result<(), String> {
        let mut world = World::new(seed, 3);
        let result = (|| {
            for _ in 0..steps {
                world.step(true)?;
            }
            world.quiesce()?;
            world.check_delivery()
        })();
        result.map_err(|e| {
            if std::env::var("FANOUT_SIM_TRACE").is_ok() {
                for line in &world.trace {
                    eprintln!("{line}");
                }
                for (i, node) in world.nodes.iter().enumerate() {
                    eprintln!(
                        "node {i} live_at {:?} log ({}, {}) state {:?} ended {:?} fresh {} sent {} replies {} pushes {} expected {:?} acked {:?} events {:?}\n  seen {:?}",
                        node.live_at,
                        node.log.epoch,
                        node.log.next,
                        node.mirror.state,
                        node.mirror.ended,
                        node.mirror.fresh,
                        node.sent.len(),
                        node.replies.len(),
                        node.pushes.len(),
                        node.mirror.expected,
                        node.mirror.acked,
                        node.events,
                        node.seen
                    );
                }
            }
            let tail: Vec<&String> = world.trace.iter().rev().take(30).collect();
            format!("seed {seed}: {e}\nlast events, newest first:\n{tail:#?}")
        })
    }

    #[test]
    fn thousands_of_schedules_keep_the_invariants() {
        for seed in seeds() {
            if let Err(e) = run(seed, 300) {
                panic!("{e}");
            }
        }
    }

    #[test]
    fn a_restore_from_an_older_snapshot_ends_the_epoch_on_every_node() {
        // A fixed schedule: publish, snapshot, publish more (delivered everywhere), restore the
        // snapshot, publish from a node that mirrors the channel (the fence) and from one that
        // does not (the receiving side).
        let mut world = World::new(7, 2);
        for node in &mut world.nodes {
            node.confirming = false;
            let outcome = node.mirror.subscribed(&node.log);
            node.apply(outcome).unwrap();
        }
        world.quiesce().unwrap();
        world.publish(0);
        world.redis.snapshots.push(world.redis.keys.clone());
        world.publish(1);
        world.quiesce().unwrap();
        let before = world.redis.keys.meta.expect("meta").0;
        world.redis.keys = world.redis.snapshots[0].clone();
        world.publish(0);
        world.quiesce().unwrap();
        if let Err(e) = world.check_delivery() {
            for (i, node) in world.nodes.iter().enumerate() {
                eprintln!("node {i}: {:?}", node.events);
            }
            for line in &world.trace {
                eprintln!("{line}");
            }
            panic!("{e}");
        }
        let after = world.redis.keys.meta.expect("meta").0;
        assert_ne!(before, after, "the rolled-back epoch ended");
        for node in &world.nodes {
            assert_eq!(node.log.epoch, after);
            assert!(node.seen.contains(&Seen::EpochNotice));
        }
    }
}
