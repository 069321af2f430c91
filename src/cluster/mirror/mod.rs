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

#[cfg(test)]
mod sim;
