//! Resume from history: a resuming subscribe is answered with the log's bounds (HIST), then the
//! retained messages after the client's offset, page by page as its write queue drains, then
//! live delivery. Between the last page and live delivery the subscriber is catching up: the
//! ring may still carry messages it got from history, and fan-out skips those for it.

use std::collections::VecDeque;
use std::sync::{Arc, MutexGuard};

use super::fanout::encode_for;
use super::lifecycle::Close;
use super::{ConnRef, Worker};
use crate::cluster::BrokerOp;
use crate::history::disk::ReplyTo;
use crate::history::{ChannelLog, ResumeStatus, Retained};
use crate::protocol::{Ack, ErrorCode, Format, Resume};
use crate::server::channels::Channel;
use crate::server::conn::{Backfill, CatchUp, Membership, Phase, Replay, Subscription, Wait};
use crate::server::retention::Appender;
use crate::server::stats::WorkerCounters;

/// Pages queued per replay per turn, at most.
const REPLAY_PAGES_PER_TURN: usize = 16;
/// A resume ahead of this node waits at least this long before a refusal (503).
const MIN_CATCH_UP_MS: u32 = 100;
/// Messages per page, at most.
const REPLAY_PAGE_MESSAGES: usize = 1024;

impl Worker {
    /// The channel's log, locked, after age retention (which also applies to channels nobody
    /// publishes to any more).
    pub(super) fn trimmed_log<'a>(&self, channel: &'a Channel) -> MutexGuard<'a, ChannelLog> {
        let registry = &self.shared.channels;
        let mut log = channel.lock_log();
        let dropped = log.trim(
            self.wall_ms(),
            registry.limits_of(channel),
            registry.totals(Appender::Worker(self.id)),
        );
        WorkerCounters::add(&self.counters().history_dropped, dropped as u64);
        log
    }

    /// Makes `key` a catching-up subscriber of `channel` that already has every message up to
    /// offset `has` (after a replay, or while a long-poll is held).
    pub(super) fn join_catching_up(&mut self, key: usize, channel: Arc<Channel>, has: u64) {
        let subscriber = crate::server::index::Subscriber::new(key, self.conns[key].serial);
        self.index.add_catching_up(channel.id, subscriber, has);
        channel.subscribers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.presence_joined(key, &channel);
        let membership = Membership::CatchingUp;
        self.conns[key].push_subscription(Subscription { channel, membership });
    }

    /// Answers a resuming subscribe: a HIST frame with the log's epoch and bounds, then (unless a
    /// strict resume cannot be honoured) a replay paced by the write queue, then live delivery.
    pub(super) fn start_replay(
        &mut self,
        key: usize,
        channel: Arc<Channel>,
        resume: Resume,
    ) -> Result<(), Close> {
        self.answer_resume(key, channel, resume, true)
    }

    /// `start_replay`, and after a wait for this node to catch up (`may_wait` false: it waits
    /// no more).
    fn answer_resume(
        &mut self,
        key: usize,
        channel: Arc<Channel>,
        resume: Resume,
        may_wait: bool,
    ) -> Result<(), Close> {
        let (bounds, status) = {
            let log = self.trimmed_log(&channel);
            (log.bounds(), log.resume_status(resume.after, resume.epoch))
        };
        // `after = u64::MAX` means "from now": nothing to replay, but the client learns the
        // epoch and latest offset it will resume from after a reconnect.
        let (resume, status) = if resume.after == u64::MAX {
            (Resume { after: bounds.last, ..resume }, ResumeStatus::Ok)
        } else {
            (resume, status)
        };
        // Cluster mode: a client that saw more of this epoch than this node has comes from a node
        // that is ahead (or Redis lost what it saw): wait for this node to catch up.
        let ahead = resume.epoch == Some(bounds.epoch) && resume.after > bounds.last;
        // So does a client that names a newer epoch than this node's (the node has not read
        // the new one yet). Nothing else is done with a client's epoch: it proves nothing (a
        // client can name any), so it only makes the client wait, never ends an epoch.
        let newer = resume.epoch.is_some_and(|e| crate::cluster::older_epoch(bounds.epoch, e));
        if (ahead || newer) && may_wait && self.shared.broker.is_some() {
            let conn = &mut self.conns[key];
            let catch_up = CatchUp { channel, resume, since_ms: self.now_ms };
            conn.phase = Phase::Waiting(Wait::CatchUp(Box::new(catch_up)));
            self.catching_up.push(ConnRef::of(key, conn));
            return Ok(());
        }
        // Cluster mode: what memory no longer holds may still be in the channel's stream.
        let epoch_holds = resume.epoch.is_none_or(|e| e == bounds.epoch);
        if status == ResumeStatus::Expired && epoch_holds {
            if let Some(broker) = self.shared.broker.as_ref() {
                let conn = &mut self.conns[key];
                let reply_to = ReplyTo { worker: self.id, key, serial: conn.serial };
                broker.send(BrokerOp::Backfill {
                    channel: channel.name.clone(),
                    after: resume.after,
                    upto: bounds.first - 1,
                    reply_to,
                });
                let backfill = Backfill { channel, resume, bounds };
                conn.phase = Phase::Waiting(Wait::Backfill(Box::new(backfill)));
                return Ok(());
            }
        }
        self.begin_replay(key, channel, resume, bounds, status, VecDeque::new())
    }

    /// Cluster mode: lets the resumes that wait for this node to catch up go on: once the
    /// channel's log reaches their offset (or another epoch began), they are answered as any
    /// resume. While Redis is unreachable from here, they are refused (503: try another node);
    /// past the deadline with Redis reachable, the offset is taken for one Redis no longer has,
    /// and the client is told `epoch` as on one node.
    pub(super) fn admit_catch_ups(&mut self) {
        if self.catching_up.is_empty() {
            return;
        }
        let shared = self.shared.clone();
        let Some(broker) = shared.broker.as_ref() else { return };
        // Past the command timeout and a probe interval, a node still behind knows it.
        let patience = (broker.config.command_timeout + broker.config.probe_interval).as_millis();
        let patience = patience.min(60_000) as u32;
        for noted in std::mem::take(&mut self.catching_up) {
            let Some(key) = self.resolve(noted) else { continue };
            let Some(Wait::CatchUp(waiting)) = self.conns[key].wait() else { continue };
            let (epoch, last) = {
                let log = waiting.channel.lock_log();
                (log.epoch, log.last_offset())
            };
            let behind_in_time =
                waiting.resume.epoch.is_some_and(|e| crate::cluster::older_epoch(epoch, e));
            let caught_up = !behind_in_time
                && (Some(epoch) != waiting.resume.epoch || last >= waiting.resume.after);
            let waited = self.now_ms.wrapping_sub(waiting.since_ms);
            let due = waited >= patience;
            // The channel's own server, after a moment (a message may be on its way while a
            // probe decides).
            let redis_up = broker.up_for(&waiting.channel.name) || waited < MIN_CATCH_UP_MS;
            if !caught_up && redis_up && !due {
                self.catching_up.push(noted);
                continue;
            }
            let Some(Wait::CatchUp(waiting)) = self.conns[key].end_wait() else { continue };
            let CatchUp { channel, resume, .. } = *waiting;
            let result = if caught_up || redis_up {
                self.answer_resume(key, channel, resume, false)
            } else {
                let why = format!(
                    "broker unavailable: this node is behind on {} (it has up to offset {last}, the resume asks after {}) and cannot reach Redis; try again or another node",
                    String::from_utf8_lossy(&channel.name),
                    resume.after
                );
                self.refuse(key, ErrorCode::Unavailable, &why)
            };
            let result = result.and_then(|()| self.resume_unless_waiting(key));
            self.close_on_error(key, result);
        }
    }

    /// Cluster mode: the stream answered a resume's backfill. If it holds the messages right after
    /// the client's offset, the resume is whole after all; the stream's messages go out first,
    /// then memory's.
    pub(super) fn backfilled(
        &mut self,
        target: ReplyTo,
        entries: Result<Vec<Retained>, std::sync::Arc<str>>,
    ) {
        let noted = ConnRef { key: target.key, serial: target.serial };
        let Some(key) = self.resolve(noted) else { return };
        if !matches!(self.conns[key].wait(), Some(Wait::Backfill(_))) {
            return;
        }
        let Some(Wait::Backfill(backfill)) = self.conns[key].end_wait() else { return };
        let entries = match entries {
            Ok(entries) => entries,
            Err(why) => {
                // What Redis may still hold is not `expired`: the resume is tried again.
                let result = self.refuse(key, crate::protocol::ErrorCode::Unavailable, &why);
                let result = result.and_then(|()| self.resume_unless_waiting(key));
                return self.close_on_error(key, result);
            }
        };
        let Backfill { channel, resume, mut bounds } = *backfill;
        // The stream is the cluster's history (a node's memory, its `--history-messages`, is a
        // cache of it), trimmed to the longest any namespace keeps: a channel in a namespace
        // gets only its namespace's (its last `messages`, none older than `age`).
        let (kept_after, age_ms) = match channel.namespace_limits() {
            Some(limits) => {
                (bounds.last.saturating_sub(limits.messages as u64), limits.age.as_millis() as u64)
            }
            None => (0, 0),
        };
        let now_ms = self.wall_ms();
        let within = |m: &Retained| {
            m.offset > kept_after
                && (age_ms == 0 || now_ms.saturating_sub(m.published_ms) <= age_ms)
        };
        let from_stream: VecDeque<Retained> = entries
            .into_iter()
            .filter(|m| m.offset > resume.after && m.offset < bounds.first && within(m))
            .collect();
        let status = match from_stream.front() {
            Some(first) if first.offset == resume.after + 1 => ResumeStatus::Ok,
            _ => ResumeStatus::Expired,
        };
        if let Some(first) = from_stream.front() {
            bounds.first = first.offset;
        }
        let result = self.begin_replay(key, channel, resume, bounds, status, from_stream);
        let result = result.and_then(|()| self.resume_unless_waiting(key));
        self.close_on_error(key, result);
    }

    /// Sends the HIST frame and starts the replay (the stream's messages, if any, first).
    fn begin_replay(
        &mut self,
        key: usize,
        channel: Arc<Channel>,
        resume: Resume,
        bounds: crate::history::Bounds,
        status: ResumeStatus,
        from_stream: VecDeque<Retained>,
    ) -> Result<(), Close> {
        let format = self.conns[key].reply_format();
        self.reply(key, format.encode_history(&bounds.history(&channel.name, status)))?;
        if status != ResumeStatus::Ok {
            WorkerCounters::add(&self.counters().offsets_expired, 1);
            if resume.strict {
                let why = format!(
                    "cannot resume {} after offset {}: {} (earliest retained {}, latest {}, epoch {:016x})",
                    String::from_utf8_lossy(&channel.name),
                    resume.after,
                    if status == ResumeStatus::Expired { "messages expired" } else { "another epoch" },
                    bounds.first,
                    bounds.last,
                    bounds.epoch,
                );
                return self.refuse(key, ErrorCode::Gone, &why);
            }
        }
        WorkerCounters::add(&self.counters().replays_served, 1);
        let after = if status == ResumeStatus::Ok { resume.after } else { bounds.first - 1 };
        let began_ns = self.shared.clock_ns();
        let replay = Replay { channel, after, from_stream, began_ns };
        self.conns[key].phase = Phase::Waiting(Wait::Replay(Box::new(replay)));
        self.pump_replay(key)?;
        Ok(())
    }

    /// Queues more of a replay while the connection's queue is below a quarter of its cap.
    /// Returns true when the replay finished (the subscription is catching up, then live).
    fn pump_replay(&mut self, key: usize) -> Result<bool, Close> {
        let low_water = self.shared.config.write_queue_cap_bytes / 4;
        for _ in 0..REPLAY_PAGES_PER_TURN {
            let conn = &self.conns[key];
            let Some(Wait::Replay(replay)) = conn.wait() else { return Ok(false) };
            if conn.queue.queued_bytes() >= low_water {
                // `flush` notes the connection in `replaying` once the queue drains.
                return Ok(false);
            }
            let (channel, after, format) =
                (replay.channel.clone(), replay.after, conn.reply_format());
            let began_ns = replay.began_ns;
            let mut page = std::mem::take(&mut self.replay_page);
            page.clear();
            let mut bounds = channel.lock_log().bounds();
            if let Phase::Waiting(Wait::Replay(replay)) = &mut self.conns[key].phase {
                // The stream's messages first (cluster mode), a page at a time.
                let mut bytes = 0;
                while let Some(message) = replay.from_stream.front() {
                    if page.len() == REPLAY_PAGE_MESSAGES || (bytes > 0 && bytes >= low_water / 2) {
                        break;
                    }
                    bytes += message.payload.len();
                    page.extend(replay.from_stream.pop_front());
                }
            }
            if page.is_empty() {
                let log = channel.lock_log();
                log.read_page(after, REPLAY_PAGE_MESSAGES, (low_water / 2).max(1), &mut page);
                bounds = log.bounds();
            } else {
                // Memory's messages follow: not caught up yet.
                bounds.last = bounds.last.max(page.last().map_or(0, |m| m.offset) + 1);
            }
            let caught_up = page.last().is_none_or(|m| m.offset == bounds.last);
            if page.first().map_or(after < bounds.last, |m| m.offset != after + 1) {
                // Retention dropped messages while this client was catching up: say so, go on.
                WorkerCounters::add(&self.counters().offsets_expired, 1);
                let notice =
                    format.encode_history(&bounds.history(&channel.name, ResumeStatus::Expired));
                self.reply(key, notice)?;
            }
            if let Some(reached) = page.last().map(|m| m.offset) {
                let messages = page.iter().map(|m| (m.offset, &m.payload[..]));
                let (frame, count) = encode_for(format, &channel, messages);
                WorkerCounters::add(&self.counters().replayed_messages, count);
                let conn = &mut self.conns[key];
                // Below the low-water mark, so this never passes the cap.
                self.out.enqueue(key, conn, frame, usize::MAX);
                if let Phase::Waiting(Wait::Replay(replay)) = &mut conn.phase {
                    replay.after = reached;
                }
                if format == Format::Sse {
                    self.sse_sent(key, &channel, reached, false);
                }
            }
            self.replay_page = page;
            if caught_up {
                self.conns[key].end_wait();
                let took = self.shared.clock_ns().saturating_sub(began_ns);
                self.shared.histograms[self.id].replay.observe(took, 1);
                // Everything up to `last` went out from history; the ring may still carry some
                // of it to this worker, so the subscriber skips up to there.
                self.join_catching_up(key, channel.clone(), bounds.last);
                self.acknowledge(key, Ack::Subscribe, &channel.name)?;
                if format == Format::Sse {
                    // Live from `last` on: tell the browser, so that a reconnect before the
                    // next message still resumes from here.
                    self.sse_sent(key, &channel, bounds.last, true);
                }
                return Ok(true);
            }
        }
        self.replaying.push(ConnRef::of(key, &self.conns[key]));
        Ok(false)
    }

    /// Continues replays whose queues drained; a finished one lets the connection's waiting input
    /// be processed, as after a stall.
    pub(super) fn pump_replays(&mut self) {
        for noted in std::mem::take(&mut self.replaying) {
            let Some(key) = self.resolve(noted).filter(|&key| self.conns[key].replaying()) else {
                continue;
            };
            let result = match self.pump_replay(key) {
                Ok(true) => self.resume_input(key),
                Ok(false) => Ok(()),
                Err(close) => Err(close),
            };
            self.close_on_error(key, result);
        }
    }
}
