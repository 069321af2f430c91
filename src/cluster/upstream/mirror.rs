//! One channel's mirror of its log on the upstream server, as a plain state machine: no
//! sockets, no clock, no ring. The upstream thread (the I/O shell) feeds it what the upstream
//! sends on its subscription (the HIST that answers a resuming SUB, the replay, OK, live
//! messages, live notices) with a view of the local log, and carries out the steps it returns
//! (`mirror::Step`, the same steps as a Redis mirror's), in order.
//!
//! ```text
//!   Idle ── SUB sent (resume from the log) ──► Asked ── HIST ──► Replaying ── OK SUB ──► Live
//!    ▲                                                                                   │
//!    └─────────────────────────── the upstream connection is lost ───────────────────────┘
//! ```
//!
//! The upstream keeps each channel's order on its connection and says what a resume could not
//! give (HIST `expired`, `epoch`), so a mirror never reads anything twice: a reconnect resumes
//! from the log's last offset, and the answer decides what subscribers are told.
//!
//! # Invariants (the simulator below checks them after every step)
//! 1. No (epoch, offset) names two payloads in the local log: the log's epoch is always the
//!    upstream's for what it holds.
//! 2. Within an epoch, what subscribers are given only grows, one offset at a time; an offset
//!    skipped is announced (`Step::Hole`) before what follows it; another epoch is announced
//!    (`Step::Restart { notify: true }`) before anything of it. Nothing is given twice.
//! 3. Once connected, and quiet after a message, the log ends where the upstream's does, in
//!    its epoch.

use bytes::Bytes;

use crate::cluster::mirror::{LocalLog, Step};
use crate::protocol::{Resume, ResumeStatus};

/// Where a mirror stands on the upstream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Not subscribed upstream (no connection, or a refused SUB waiting to be tried again).
    Idle,
    /// SUB sent; its HIST has not come.
    Asked,
    /// HIST came; the replay runs until OK.
    Replaying,
    /// Each message carries the next offset (or a notice says why not).
    Live,
}

/// A HIST frame from upstream: the answer to a resume, or a notice to a live subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hist {
    pub epoch: u64,
    pub first: u64,
    /// The upstream's latest offset: nothing up to it is missing once the replay is over
    /// (the offsets a replay skips are ones the upstream never gave out).
    pub last: u64,
    pub status: ResumeStatus,
}

#[derive(Debug)]
pub(crate) struct EdgeMirror {
    pub state: State,
    /// The log is the upstream's: its epoch and offsets came from a resume's answer.
    pub synced: bool,
    /// Subscribers may be attached (the channel was marked served).
    pub served: bool,
    /// Subscribed upstream with a resume (false: `*`, an inbox, a channel heard only through a
    /// pattern, which take the messages that come).
    pub resumes: bool,
    /// The next message starts the log where it is: after a live epoch notice (the new log's
    /// first offset is not said), and for channels with no resume to line up with (`*`, an
    /// inbox, a channel heard only through a pattern).
    pub accept_any: bool,
    /// Subscribers were given every offset of this epoch below this one.
    delivered_next: u64,
    /// The latest offset the resume's HIST named (`Replaying`).
    replay_last: u64,
}

impl EdgeMirror {
    /// A channel to subscribe to upstream, with a resume.
    pub fn new() -> Self {
        EdgeMirror {
            state: State::Idle,
            synced: false,
            served: false,
            resumes: true,
            accept_any: false,
            delivered_next: 0,
            replay_last: 0,
        }
    }

    /// A channel mirrored without a resume (`*`, an inbox, a channel heard through a pattern):
    /// live at once, from whatever offset comes first.
    pub fn unaligned() -> Self {
        EdgeMirror { state: State::Live, accept_any: true, resumes: false, ..EdgeMirror::new() }
    }

    /// The SUB to send: after what the log has, in its epoch; a log that never heard from the
    /// upstream asks for everything the upstream retains.
    pub fn resume(&self, log: &impl LocalLog) -> Resume {
        match self.synced {
            true => Resume {
                after: log.next_offset().saturating_sub(1),
                epoch: Some(log.epoch()),
                strict: false,
            },
            false => Resume { after: 0, epoch: None, strict: false },
        }
    }

    /// The SUB went out (a channel heard through a pattern resumes from now on).
    pub fn asked(&mut self) {
        self.state = State::Asked;
        self.resumes = true;
    }

    /// The connection is gone: the mirror is subscribed again on the next one. A channel
    /// without a resume takes whatever offset comes first then (announcing the jump as a hole).
    pub fn lost(&mut self) {
        match self.resumes {
            true => self.state = State::Idle,
            false => self.accept_any = true,
        }
    }

    /// Subscribers may now be served (the shell marks the channel live).
    pub fn serve(&mut self, log: &impl LocalLog) -> Vec<Step> {
        if self.served {
            return Vec::new();
        }
        self.served = true;
        self.delivered_next = log.next_offset();
        vec![Step::Served]
    }

    /// A HIST for this channel.
    pub fn history(&mut self, log: &impl LocalLog, hist: Hist) -> Vec<Step> {
        match self.state {
            State::Idle => Vec::new(),
            State::Asked => {
                self.state = State::Replaying;
                self.replay_last = hist.last;
                self.resumed(log, hist)
            }
            State::Replaying | State::Live => self.notice(log, hist),
        }
    }

    /// The answer to a resume, before its replay.
    fn resumed(&mut self, log: &impl LocalLog, hist: Hist) -> Vec<Step> {
        let next = log.next_offset();
        let another_log =
            !self.synced || hist.epoch != log.epoch() || hist.status == ResumeStatus::EpochChanged;
        if another_log {
            // Subscribers that had another epoch's messages are told. A log that was never the
            // upstream's (heard through a pattern only) is lined up without a notice: what its
            // subscribers were given is skipped in the replay.
            let notify = self.served && self.synced;
            if self.synced {
                self.delivered_next = 0;
            }
            self.synced = true;
            self.accept_any = false;
            return vec![Step::Restart { epoch: hist.epoch, next: hist.first, notify }];
        }
        self.hole_before(next, hist.first)
    }

    /// A HIST to a live subscriber: the upstream's log started over, or it lost messages.
    fn notice(&mut self, log: &impl LocalLog, hist: Hist) -> Vec<Step> {
        match hist.status {
            ResumeStatus::EpochChanged => {
                self.synced = true;
                self.accept_any = true;
                self.delivered_next = 0;
                vec![Step::Restart { epoch: hist.epoch, next: 1, notify: self.served }]
            }
            ResumeStatus::Expired => self.hole_before(log.next_offset(), hist.first),
            ResumeStatus::Ok => Vec::new(),
        }
    }

    fn hole_before(&mut self, next: u64, from: u64) -> Vec<Step> {
        if from <= next {
            return Vec::new();
        }
        vec![
            Step::Hole { from, lost: from - next, notify: self.served },
            Step::SkipTo { next: from },
        ]
    }

    /// A message of this channel. `fresh_epoch` names a new local log for a channel without a
    /// resume whose offsets went back (the upstream started its log over, unannounced).
    pub fn message(
        &mut self,
        log: &impl LocalLog,
        offset: u64,
        payload: Bytes,
        now_ms: u64,
        fresh_epoch: impl FnOnce() -> u64,
    ) -> Vec<Step> {
        if matches!(self.state, State::Idle | State::Asked) {
            // Not this subscription's (a pattern's copy): the replay brings it.
            return Vec::new();
        }
        let next = log.next_offset();
        let mut steps = Vec::new();
        if std::mem::take(&mut self.accept_any) {
            if offset < next {
                self.delivered_next = 0;
                let restart =
                    Step::Restart { epoch: fresh_epoch(), next: offset, notify: self.served };
                steps.push(restart);
            } else if offset > next && next > 1 && self.served {
                steps = self.hole_before(next, offset);
            } else if offset > next {
                steps.push(Step::SkipTo { next: offset });
            }
        } else if offset < next {
            return Vec::new();
        } else if offset > next {
            steps = self.hole_before(next, offset);
        }
        let deliver = self.served && offset >= self.delivered_next;
        if deliver {
            self.delivered_next = offset + 1;
        }
        steps.push(Step::Append { offset, payload, published_ms: now_ms, deliver });
        steps
    }

    /// A message from the multicast group in `epoch` (`payload` `None`: too large for a
    /// datagram). Delivered when it is the next offset of the log's epoch; anything else that
    /// is ahead (a jump, another epoch, a message not carried) is read from upstream: the
    /// mirror goes back to `Idle` and asks for a resume (`Step::Sync`).
    pub fn multicast_message(
        &mut self,
        log: &impl LocalLog,
        epoch: u64,
        offset: u64,
        payload: Option<Bytes>,
        now_ms: u64,
    ) -> Vec<Step> {
        if self.state != State::Live || !self.synced || !self.resumes {
            // Lined up by a resume first (its replay and live messages come over TCP).
            return Vec::new();
        }
        let next = log.next_offset();
        if epoch == log.epoch() && offset < next {
            return Vec::new();
        }
        match payload {
            Some(payload) if epoch == log.epoch() && offset == next => {
                self.message(log, offset, payload, now_ms, || unreachable!("synced"))
            }
            _ => self.repair(log),
        }
    }

    /// The multicast group's word on the channel's latest offset: a log behind it, or in
    /// another epoch, lost the tail (or more) of what was sent, and reads it from upstream.
    pub fn multicast_heartbeat(&mut self, log: &impl LocalLog, epoch: u64, last: u64) -> Vec<Step> {
        if self.state != State::Live || !self.synced || !self.resumes {
            return Vec::new();
        }
        match epoch != log.epoch() || last >= log.next_offset() {
            true => self.repair(log),
            false => Vec::new(),
        }
    }

    fn repair(&mut self, log: &impl LocalLog) -> Vec<Step> {
        self.state = State::Idle;
        vec![Step::Sync { after: log.next_offset().saturating_sub(1), ending: None }]
    }

    /// OK to the SUB: the replay is over.
    pub fn subscribed(&mut self, log: &impl LocalLog) -> Vec<Step> {
        if self.state != State::Replaying {
            return Vec::new();
        }
        self.state = State::Live;
        let mut steps = Vec::new();
        if self.replay_last >= log.next_offset() {
            steps.push(Step::SkipTo { next: self.replay_last.saturating_add(1) });
        }
        steps.extend(self.serve(log));
        steps
    }
}

#[cfg(test)]
mod tests {
    //! A seeded simulator: a model upstream (one channel's log: epochs, retention, restarts
    //! empty or from older state), a connection that drops, an edge mirror fed what the
    //! upstream sends on a subscription, and a subscriber that attaches once the channel is
    //! served. Invariants checked after every step; a failing seed prints its events.

    use super::*;
    use crate::cluster::sim_support::{seeds, Rng};

    #[derive(Debug, Default, Clone)]
    struct ModelLog {
        epoch: u64,
        next: u64,
        retained: Vec<(u64, Bytes)>,
    }

    impl LocalLog for ModelLog {
        fn epoch(&self) -> u64 {
            self.epoch
        }
        fn next_offset(&self) -> u64 {
            self.next
        }
        fn differs_at(&self, _: u64, _: &[u8]) -> bool {
            false
        }
    }

    /// The upstream's log of the channel.
    #[derive(Debug, Clone)]
    struct Upstream {
        epoch: u64,
        next: u64,
        retained: Vec<(u64, Bytes)>,
        keep: usize,
    }

    impl Upstream {
        fn first(&self) -> u64 {
            self.retained.first().map_or(self.next, |(o, _)| *o)
        }
        fn publish(&mut self, payload: Bytes) -> (u64, Bytes) {
            let offset = self.next;
            self.next += 1;
            self.retained.push((offset, payload.clone()));
            if self.retained.len() > self.keep {
                self.retained.remove(0);
            }
            (offset, payload)
        }
        /// What a resuming SUB gets: HIST, then the replay.
        fn answer(&self, resume: Resume) -> (Hist, Vec<(u64, Bytes)>) {
            let first = self.first();
            let last = self.next - 1;
            let status = if resume.epoch.is_some_and(|e| e != self.epoch) || resume.after > last {
                ResumeStatus::EpochChanged
            } else if resume.after + 1 < first {
                ResumeStatus::Expired
            } else {
                ResumeStatus::Ok
            };
            let from = match status {
                ResumeStatus::Ok => resume.after + 1,
                _ => first,
            };
            let replay = self.retained.iter().filter(|(o, _)| *o >= from).cloned().collect();
            let first = from.min(self.next);
            (Hist { epoch: self.epoch, first, last, status }, replay)
        }
    }

    /// What a subscriber attached to the edge has seen.
    #[derive(Debug, Default)]
    struct Subscriber {
        attached: bool,
        epoch: u64,
        /// The last offset given in `epoch` (`None`: told of the epoch, given nothing yet: a
        /// new log starts where it starts).
        last: Option<u64>,
    }

    /// Frames on the wire from the upstream, not yet taken by the edge.
    #[derive(Debug, Clone)]
    enum Wire {
        Hist(Hist),
        Msg(u64, Bytes),
        Ok,
    }

    struct World {
        rng: Rng,
        upstream: Upstream,
        /// Every (epoch, offset) the upstream ever gave out, with its payload.
        truth: std::collections::HashMap<(u64, u64), Bytes>,
        wire: std::collections::VecDeque<Wire>,
        connected: bool,
        mirror: EdgeMirror,
        log: ModelLog,
        subscriber: Subscriber,
        events: Vec<String>,
        epochs: u64,
        published: u64,
        /// Live messages also go to a multicast group, and the TCP subscription is let go of
        /// once a resume is over (a repair is a resume).
        multicast: bool,
        /// The TCP subscription delivers live messages (from a SUB until its OK is taken).
        tcp_live: bool,
        /// Datagrams sent and not yet taken: lost, repeated and reordered at will.
        udp: Vec<(u64, u64, Bytes)>,
        /// Messages the edge appended from datagrams, and repairs it asked for (the schedules
        /// must exercise both).
        from_datagrams: u64,
        repairs: u64,
    }

    impl World {
        fn new(seed: u64) -> World {
            let mut rng = Rng::new(seed);
            let keep = 1 + rng.below(20) as usize;
            World {
                rng,
                upstream: Upstream { epoch: 1, next: 1, retained: Vec::new(), keep },
                truth: Default::default(),
                wire: Default::default(),
                connected: false,
                mirror: EdgeMirror::new(),
                log: ModelLog { epoch: 999, next: 1, retained: Vec::new() },
                subscriber: Default::default(),
                events: Vec::new(),
                epochs: 1,
                published: 0,
                multicast: seed.is_multiple_of(2),
                tcp_live: false,
                udp: Vec::new(),
                from_datagrams: 0,
                repairs: 0,
            }
        }

        fn apply(&mut self, steps: Vec<Step>) -> Result<(), String> {
            for step in steps {
                self.events.push(format!("  step {step:?}"));
                match step {
                    Step::Append { offset, payload, deliver, .. } => {
                        if offset != self.log.next {
                            return Err(format!("append {offset} at next {}", self.log.next));
                        }
                        match self.truth.get(&(self.log.epoch, offset)) {
                            Some(p) if *p == payload => {}
                            other => {
                                return Err(format!(
                                    "({}, {offset}) is {other:?} upstream, {payload:?} here",
                                    self.log.epoch
                                ))
                            }
                        }
                        self.log.retained.push((offset, payload));
                        self.log.next = offset + 1;
                        if deliver && self.subscriber.attached {
                            let s = &mut self.subscriber;
                            if s.epoch != self.log.epoch {
                                return Err(format!(
                                    "delivered epoch {} unannounced",
                                    self.log.epoch
                                ));
                            }
                            if s.last.is_some_and(|last| offset != last + 1) {
                                return Err(format!(
                                    "gave {offset} after {:?} unannounced",
                                    s.last
                                ));
                            }
                            s.last = Some(offset);
                        }
                    }
                    Step::Restart { epoch, next, notify } => {
                        self.log = ModelLog { epoch, next, retained: Vec::new() };
                        if notify && self.subscriber.attached {
                            self.subscriber.epoch = epoch;
                            self.subscriber.last = None;
                        }
                    }
                    Step::Hole { from, notify, .. } => {
                        if notify && self.subscriber.attached {
                            let last = self.subscriber.last.unwrap_or(0).max(from - 1);
                            self.subscriber.last = Some(last);
                        }
                    }
                    Step::SkipTo { next } => self.log.next = self.log.next.max(next),
                    Step::Served => {
                        // Attaches from now on, as a plain subscriber does.
                        self.subscriber = Subscriber {
                            attached: true,
                            epoch: self.log.epoch,
                            last: Some(self.log.next - 1),
                        };
                    }
                    Step::Sync { after, ending: None } if self.multicast => {
                        if after + 1 != self.log.next {
                            return Err(format!("repair after {after} at next {}", self.log.next));
                        }
                        self.repairs += 1;
                        if self.connected {
                            self.resume_over_tcp();
                        }
                    }
                    other => return Err(format!("unexpected step {other:?}")),
                }
            }
            Ok(())
        }

        fn connect(&mut self) {
            self.connected = true;
            self.resume_over_tcp();
        }

        /// SUB with the mirror's resume: HIST, the replay, OK, then live messages until the OK
        /// is taken (in multicast mode the edge lets the subscription go then).
        fn resume_over_tcp(&mut self) {
            self.tcp_live = true;
            let resume = self.mirror.resume(&self.log);
            self.mirror.asked();
            let (hist, replay) = self.upstream.answer(resume);
            self.events.push(format!("connect, resume {resume:?} -> {hist:?}"));
            self.wire.push_back(Wire::Hist(hist));
            self.wire.extend(replay.into_iter().map(|(o, p)| Wire::Msg(o, p)));
            self.wire.push_back(Wire::Ok);
        }

        fn step(&mut self) -> Result<(), String> {
            match self.rng.below(100) {
                0..=29 => {
                    self.published += 1;
                    let payload = Bytes::from(format!("m{}", self.published));
                    let (offset, payload) = self.upstream.publish(payload);
                    self.truth.insert((self.upstream.epoch, offset), payload.clone());
                    if self.connected && self.tcp_live {
                        self.wire.push_back(Wire::Msg(offset, payload.clone()));
                    }
                    if self.multicast {
                        self.udp.push((self.upstream.epoch, offset, payload));
                        // A datagram is mostly taken at once (it overtakes TCP).
                        if self.rng.chance(70) {
                            let at = self.udp.len() - 1;
                            self.take_datagram(at)?;
                        }
                    }
                }
                30..=69 => {
                    let Some(frame) = self.wire.pop_front() else { return Ok(()) };
                    self.events.push(format!("edge takes {frame:?}"));
                    self.take(frame)?;
                }
                84..=93 if self.multicast && !self.udp.is_empty() => {
                    // Mostly in order; sometimes one overtakes others.
                    let at = match self.rng.chance(80) {
                        true => 0,
                        false => self.rng.below(self.udp.len() as u64) as usize,
                    };
                    self.take_datagram(at)?;
                }
                94..=96 if self.multicast => self.heartbeat()?,
                70..=79 if self.connected => {
                    self.events.push("connection lost".into());
                    self.connected = false;
                    self.tcp_live = false;
                    self.wire.clear();
                    self.mirror.lost();
                }
                70..=79 => self.connect(),
                80..=83 => {
                    // The upstream starts the channel over (freed, restarted empty, or from
                    // older state under a new epoch); live subscribers get the notice.
                    self.epochs += 1;
                    let keep = self.upstream.keep;
                    let next = if self.rng.chance(50) { 1 } else { 1 + self.rng.below(5) };
                    self.upstream =
                        Upstream { epoch: self.epochs, next, retained: Vec::new(), keep };
                    self.events.push(format!("upstream starts epoch {} at {next}", self.epochs));
                    if self.connected && self.tcp_live {
                        let hist = Hist {
                            epoch: self.epochs,
                            first: 1,
                            last: 0,
                            status: ResumeStatus::EpochChanged,
                        };
                        self.wire.push_back(Wire::Hist(hist));
                    }
                }
                _ => {}
            }
            Ok(())
        }

        /// The edge takes a frame from its upstream connection (an OK ends a multicast
        /// channel's subscription: the edge lets it go).
        fn take(&mut self, frame: Wire) -> Result<(), String> {
            let steps = match frame {
                Wire::Hist(hist) => self.mirror.history(&self.log, hist),
                Wire::Msg(offset, payload) => {
                    self.mirror.message(&self.log, offset, payload, 0, || unreachable!())
                }
                Wire::Ok => {
                    self.tcp_live = !self.multicast;
                    self.mirror.subscribed(&self.log)
                }
            };
            self.apply(steps)
        }

        /// The edge takes datagram `at` (lost now and then, repeated now and then).
        fn take_datagram(&mut self, at: usize) -> Result<(), String> {
            let (epoch, offset, payload) = match self.rng.below(10) {
                0 => self.udp[at].clone(),
                _ => self.udp.remove(at),
            };
            if self.rng.chance(15) {
                self.events.push(format!("datagram ({epoch}, {offset}) lost"));
                return Ok(());
            }
            self.events.push(format!("edge takes datagram ({epoch}, {offset})"));
            let steps = self.mirror.multicast_message(&self.log, epoch, offset, Some(payload), 0);
            if steps.iter().any(|s| matches!(s, Step::Append { .. })) {
                self.from_datagrams += 1;
            }
            self.apply(steps)
        }

        /// The upstream's heartbeat for the channel, taken by the edge.
        fn heartbeat(&mut self) -> Result<(), String> {
            let (epoch, last) = (self.upstream.epoch, self.upstream.next - 1);
            self.events.push(format!("edge takes heartbeat ({epoch}, {last})"));
            let steps = self.mirror.multicast_heartbeat(&self.log, epoch, last);
            self.apply(steps)
        }

        /// Reconnected, one more message published, and quiet: the log ends where the
        /// upstream's does. (After a live epoch notice the new log's start is learnt from its
        /// first message, as a subscriber of the upstream learns it.)
        fn settle(&mut self) -> Result<(), String> {
            if !self.connected {
                self.connect();
            }
            let (offset, payload) = self.upstream.publish(Bytes::from_static(b"last"));
            self.truth.insert((self.upstream.epoch, offset), payload.clone());
            if self.tcp_live {
                self.wire.push_back(Wire::Msg(offset, payload.clone()));
            }
            if self.multicast {
                self.udp.push((self.upstream.epoch, offset, payload));
            }
            // Everything on the wire, every datagram in order, a heartbeat; again while that
            // made the edge ask for more.
            for _ in 0..10 {
                while let Some(frame) = self.wire.pop_front() {
                    self.take(frame)?;
                }
                for (epoch, offset, payload) in std::mem::take(&mut self.udp) {
                    let steps =
                        self.mirror.multicast_message(&self.log, epoch, offset, Some(payload), 0);
                    self.apply(steps)?;
                }
                if self.multicast {
                    self.heartbeat()?;
                }
                if self.wire.is_empty() {
                    break;
                }
            }
            let (log, up) = (&self.log, &self.upstream);
            if log.epoch != up.epoch || log.next != up.next {
                return Err(format!(
                    "settled at ({}, {}), upstream at ({}, {})",
                    log.epoch, log.next, up.epoch, up.next
                ));
            }
            if self.mirror.state != State::Live || !self.mirror.served {
                return Err(format!("settled {:?}", self.mirror));
            }
            Ok(())
        }
    }

    /// A schedule; (messages appended from datagrams, repairs) when it holds.
    fn run(seed: u64) -> Result<(u64, u64), String> {
        let mut world = World::new(seed);
        let result = (0..300).try_for_each(|_| world.step()).and_then(|()| world.settle());
        result.map(|()| (world.from_datagrams, world.repairs)).map_err(|e| {
            let tail: Vec<_> = world.events.iter().rev().take(30).collect();
            format!("seed {seed}: {e}\nlast events, newest first:\n{tail:#?}")
        })
    }

    #[test]
    fn an_edge_mirror_holds_its_invariants_under_seeded_schedules() {
        let (mut from_datagrams, mut repairs) = (0, 0);
        for seed in seeds() {
            match run(seed) {
                Ok((delivered, repaired)) => {
                    from_datagrams += delivered;
                    repairs += repaired;
                }
                Err(e) => {
                    panic!("{e}\nrun it alone: FANOUT_SIM_SEED={seed} FANOUT_SIM_SCHEDULES=1")
                }
            }
        }
        if seeds().count() >= 100 {
            assert!(from_datagrams > 1000 && repairs > 100, "{from_datagrams} {repairs}");
        }
    }

    #[test]
    fn a_channel_without_a_resume_announces_jumps_and_restarts() {
        let mut mirror = EdgeMirror::unaligned();
        let mut log = ModelLog { epoch: 5, next: 1, retained: Vec::new() };
        assert_eq!(mirror.serve(&log), vec![Step::Served]);
        // The first message sets the offset without a notice.
        let steps = mirror.message(&log, 40, Bytes::from_static(b"a"), 0, || 6);
        assert_eq!(steps[0], Step::SkipTo { next: 40 });
        log.next = 41;
        // After a lost connection, a jump is a hole subscribers hear of.
        mirror.lost();
        let steps = mirror.message(&log, 45, Bytes::from_static(b"b"), 0, || 6);
        assert_eq!(steps[0], Step::Hole { from: 45, lost: 4, notify: true });
        log.next = 46;
        // Offsets that went back: the upstream's log started over; a new local epoch.
        mirror.lost();
        let steps = mirror.message(&log, 2, Bytes::from_static(b"c"), 0, || 6);
        assert_eq!(steps[0], Step::Restart { epoch: 6, next: 2, notify: true });
    }
}
