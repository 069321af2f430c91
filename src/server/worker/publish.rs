//! The publish path: `Publisher::publish` gives a message its channel offset, retains it (memory,
//! and the storage thread's queue with `--data-dir`), and puts it into the ring. It knows
//! channels, never connections: what it is told about the publisher is an opaque return address
//! for a durable acknowledgement. A cluster mode swaps what is behind this seam (an offset and a
//! stream from the broker) and leaves the worker as it is.
//!
//! The worker's side is here too: publishing for a connection (an acknowledgement now or once
//! durable; a full ring parks the publish as the connection's wait), retrying parked publishes,
//! and delivering the acknowledgements the storage thread confirms.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use log::warn;

use super::lifecycle::Close;
use super::{ConnRef, Worker};
use crate::cluster::{Broker, BrokerOp, PublishOp, MAX_IN_FLIGHT};
use crate::history::disk::{Append, ReplyTo, StoreOp};
use crate::history::Retained;
use crate::protocol::ErrorCode;
use crate::server::channels::Channel;
use crate::server::conn::{Phase, StalledPublish, Wait};
use crate::server::histogram::AckPath;
use crate::server::retention::Appender;
use crate::server::ring::Producer;
use crate::server::session::{HttpSession, Session};
use crate::server::stats::WorkerCounters;
use crate::server::{Answer, Item, Shared, MAX_STORAGE_BACKLOG};

/// A message that was published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::server::worker) struct Published {
    /// The offset it got in its channel.
    pub offset: u64,
    /// The acknowledgement asked for goes to its return address later: once the record is
    /// durable (`--fsync always`), or once Redis has run the publish (cluster mode; a refusal
    /// goes there too). Otherwise the caller acknowledges now, if asked.
    pub ack_later: bool,
}

/// Why a message was not published.
#[derive(Debug)]
pub(in crate::server::worker) enum Refused {
    /// The ring is full or the disk is behind: nothing happened; try again later.
    Busy(Bytes),
    /// Not published, for a reason the client is told: an acknowledged publish to a channel
    /// whose storage is failing (the acknowledgement would promise a durability that cannot be
    /// given), or, in cluster mode, Redis is unreachable.
    Failed(ErrorCode, Arc<str>),
}

/// Publishes into the ring for one worker.
#[derive(Debug)]
pub(super) struct Publisher {
    worker: usize,
    producer: Producer<Item>,
    shared: Arc<Shared>,
    /// Wall-clock milliseconds of the worker's turn (history timestamps).
    pub now_wall_ms: u64,
    /// The turn's `Shared::clock_ns`: when what is published this turn entered the node.
    pub now_ns: u64,
    /// Published since the other workers were last woken.
    published: bool,
}

impl Publisher {
    pub(super) fn new(worker: usize, producer: Producer<Item>, shared: Arc<Shared>) -> Self {
        Publisher { worker, producer, shared, now_wall_ms: 0, now_ns: 0, published: false }
    }

    /// True once after anything was published: the other workers need a wake-up.
    pub(super) fn take_published(&mut self) -> bool {
        std::mem::take(&mut self.published)
    }

    /// Assigns the next offset and puts the message into the ring, both under the channel's
    /// offset lock, so that ring order is offset order; then retains it. `reply_to` is where a
    /// later acknowledgement (if `acked`) or refusal goes. In cluster mode the broker does all
    /// that through Redis instead.
    pub(super) fn publish(
        &mut self,
        channel: &Arc<Channel>,
        payload: Bytes,
        reply_to: ReplyTo,
        acked: bool,
    ) -> Result<Published, Refused> {
        if let Some(broker) = self.shared.broker.as_ref() {
            return self.publish_through_broker(broker, channel, payload, reply_to, acked);
        }
        let ack = acked.then_some(reply_to);
        let shared = &self.shared;
        let storage = shared.storage.as_ref();
        if ack.is_some() {
            let fsync_always = storage.filter(|s| s.fsync_always);
            if let Some(why) = fsync_always.and_then(|s| s.health.failure(&channel.name)) {
                return Err(Refused::Failed(ErrorCode::StorageFailed, why));
            }
        }
        if storage.is_some_and(|s| s.depth.load(Ordering::Relaxed) >= MAX_STORAGE_BACKLOG) {
            // The disk is behind: hold this publisher as for a full ring.
            return Err(Refused::Busy(payload));
        }
        let registry = &shared.channels;
        let mut log = channel.lock_log();
        let entry = Retained { offset: log.next_offset, published_ms: self.now_wall_ms, payload };
        let (offset, worker) = (entry.offset, self.worker);
        let mut ack_later = false;
        let to_disk = |log: &crate::history::ChannelLog, entry: &Retained| {
            let Some(storage) = storage else { return };
            let ack = ack.filter(|_| storage.fsync_always);
            ack_later = ack.is_some();
            let append = Append {
                channel: channel.name.clone(),
                epoch: log.epoch,
                record: entry.clone(),
                ack,
                asked_ns: self.now_ns,
            };
            storage.depth.fetch_add(1, Ordering::Relaxed);
            if storage.sender.send(StoreOp::Append(append)).is_err() {
                warn!(
                    "worker {worker}: the storage thread is gone; offset {offset} is not on disk"
                );
            }
        };
        let keep = registry.limits_of(channel).messages > 0 || storage.is_some();
        let (producer, entered_ns) = (&mut self.producer, self.now_ns);
        let appender = Appender::Worker(worker);
        let appended = registry
            .append(appender, channel, &mut log, producer, entry, entered_ns, true, keep, to_disk);
        let dropped = match appended {
            Ok(dropped) => dropped,
            Err(entry) => return Err(Refused::Busy(entry.payload)),
        };
        drop(log);
        let counters = &shared.counters[self.worker];
        WorkerCounters::add(&counters.history_dropped, dropped as u64);
        WorkerCounters::add(&counters.messages_in, 1);
        self.published = true;
        Ok(Published { offset, ack_later })
    }

    /// Puts a notice (not a message: no offset, not retained) into the ring for `channel`'s
    /// subscribers, under the channel's lock so that it keeps its place among the channel's
    /// messages. False when the ring is full.
    pub(super) fn notice(&mut self, channel: &Arc<Channel>, kind: u64, payload: Bytes) -> bool {
        let _log = channel.lock_log();
        let notice = Arc::new(crate::server::channels::Message {
            channel: channel.clone(),
            offset: kind,
            payload,
            entered_ns: self.now_ns,
        });
        if self.producer.try_publish(notice).is_err() {
            return false;
        }
        self.published = true;
        true
    }

    /// Cluster mode: hands the publish to the broker thread, which runs the publish script in
    /// Redis and answers `reply_to`. Refused at once while Redis is unreachable; paused (as for a
    /// full ring) while too many publishes are in flight.
    fn publish_through_broker(
        &self,
        broker: &Broker,
        channel: &Arc<Channel>,
        payload: Bytes,
        reply_to: ReplyTo,
        acked: bool,
    ) -> Result<Published, Refused> {
        // Refused or not, a publish goes through the broker, which answers each connection's
        // publishes in order: a refusal given here would overtake the answers to its earlier
        // publishes still in flight (the broker refuses at once while Redis is unreachable).
        if broker.in_flight() >= MAX_IN_FLIGHT {
            return Err(Refused::Busy(payload));
        }
        broker.counters.publishes_in_flight.fetch_add(1, Ordering::Relaxed);
        let asked_ns = self.now_ns;
        let name = channel.name.clone();
        let op = PublishOp { channel: name, payload, reply_to, acked, asked_ns, seq: 0 };
        broker.send(BrokerOp::Publish(op));
        WorkerCounters::add(&self.shared.counters[self.worker].messages_in, 1);
        Ok(Published { offset: 0, ack_later: true })
    }
}

impl Worker {
    /// Publishes for connection `key`: the acknowledgement (if `acked`) now, or when the record
    /// is durable; a full ring parks the publish as the connection's wait (`Wait::RingRoom`)
    /// until `retry_stalled`. Returns true when it parked.
    pub(super) fn publish_for(
        &mut self,
        key: usize,
        channel: Arc<Channel>,
        payload: Bytes,
        acked: bool,
    ) -> Result<bool, Close> {
        // A member's join goes out before its first message (`server::presence`); if the ring
        // has no room for it, the publish waits as for a full ring.
        if self.presence_out.pending.contains_key(&channel.id) {
            self.flush_presence_of(channel.id);
            if self.presence_out.pending.contains_key(&channel.id) {
                let conn = &mut self.conns[key];
                let stalled = StalledPublish { channel, payload, acked };
                conn.phase = Phase::Waiting(Wait::RingRoom(Box::new(stalled)));
                self.stalled.push(ConnRef::of(key, conn));
                return Ok(true);
            }
        }
        let conn = &self.conns[key];
        let target = ReplyTo { worker: self.id, key, serial: conn.serial };
        match self.publisher.publish(&channel, payload, target, acked) {
            Ok(Published { offset, ack_later }) => {
                let conn = &mut self.conns[key];
                if ack_later && acked {
                    // Over HTTP, the response must not be overtaken by the next request's.
                    if matches!(conn.session.as_deref(), Some(Session::Http(HttpSession { .. }))) {
                        conn.phase = Phase::Waiting(Wait::DurableAck);
                    }
                } else if acked {
                    self.observe_ack(AckPath::Memory, self.publisher.now_ns);
                    let frame = self.ack_frame(key, &channel.name, offset);
                    self.reply(key, frame)?;
                }
                Ok(false)
            }
            Err(Refused::Busy(payload)) => {
                let conn = &mut self.conns[key];
                let stalled = StalledPublish { channel, payload, acked };
                conn.phase = Phase::Waiting(Wait::RingRoom(Box::new(stalled)));
                self.stalled.push(ConnRef::of(key, conn));
                Ok(true)
            }
            Err(Refused::Failed(code, why)) => {
                self.refuse(key, code, &why)?;
                Ok(false)
            }
        }
    }

    /// Notes a publish acknowledged now that was read at `asked_ns`.
    fn observe_ack(&self, path: AckPath, asked_ns: u64) {
        let latency = self.shared.clock_ns().saturating_sub(asked_ns);
        self.shared.histograms[self.id].publish_ack[path as usize].observe(latency, 1);
    }

    /// The acknowledgement of a publish: its offset, or for a Redis client (whose PUBLISH is
    /// acknowledged) how many of this node's connections subscribe to the channel.
    fn ack_frame(&self, key: usize, channel: &[u8], offset: u64) -> Bytes {
        let format = self.conns[key].reply_format();
        if format.is_resp() {
            return self.resp_receivers(channel);
        }
        format.encode_ack(channel, offset)
    }

    /// Retries parked publishes; one that goes through lets the input behind it continue.
    pub(super) fn retry_stalled(&mut self) {
        if self.stalled.is_empty() {
            return;
        }
        // Our own cursor may be what holds the ring full.
        self.drain_ring();
        for noted in std::mem::take(&mut self.stalled) {
            let Some(key) = self.resolve(noted) else { continue };
            if !matches!(self.conns[key].phase, Phase::Waiting(Wait::RingRoom(_))) {
                continue;
            }
            let Some(Wait::RingRoom(stalled)) = self.conns[key].end_wait() else { continue };
            let StalledPublish { channel, payload, acked } = *stalled;
            let result = match self.publish_for(key, channel, payload, acked) {
                Ok(true) => Ok(()),
                // Published (or refused): on with the input that waited behind it.
                Ok(false) => self.resume_input(key),
                Err(close) => Err(close),
            };
            self.close_on_error(key, result);
        }
    }

    /// Sends the acknowledgements the storage thread confirmed (`--fsync always`), or refuses
    /// them with `ERR 500` when their record could not be made durable.
    pub(super) fn deliver_acks(&mut self) {
        while let Ok(answer) = self.acks.try_recv() {
            let published = match answer {
                Answer::Published(published) => published,
                Answer::NameClaim { target, name, result } => {
                    self.name_claimed(target, name, result);
                    continue;
                }
                Answer::Backfill { target, entries } => {
                    self.backfilled(target, entries);
                    continue;
                }
                Answer::NameLost { target, name } => {
                    self.name_lost(target, &name);
                    continue;
                }
                Answer::Control(control) => {
                    self.apply_control(&control);
                    continue;
                }
                Answer::Reply { target, frame, as_of } => {
                    self.reply_arrived(target, frame, as_of);
                    continue;
                }
            };
            let target = published.target;
            let noted = ConnRef { key: target.key, serial: target.serial };
            let Some(key) = self.resolve(noted).filter(|&key| self.conns[key].is_open()) else {
                continue;
            };
            let conn = &mut self.conns[key];
            if let Phase::Waiting(Wait::Broadcast(broadcasting)) = &mut conn.phase {
                // One of the server API's publishes to several channels.
                let outcome = match published.result {
                    Ok(()) => Ok(published.offset),
                    Err((code, why)) => Err((code.code(), why.to_string())),
                };
                let slot = broadcasting
                    .results
                    .iter_mut()
                    .find(|(name, outcome)| outcome.is_none() && *name == published.channel);
                if let Some((_, slot)) = slot {
                    *slot = Some(outcome);
                }
                if broadcasting.results.iter().all(|(_, outcome)| outcome.is_some()) {
                    let response = super::web::broadcast_response(broadcasting);
                    conn.end_wait();
                    self.unblocked.push(noted);
                    let result = self.reply(key, response);
                    self.close_on_error(key, result);
                }
                continue;
            }
            if matches!(conn.phase, Phase::Waiting(Wait::DurableAck)) {
                conn.end_wait();
                self.unblocked.push(noted);
            }
            let result = match published.result {
                Ok(()) => {
                    let path = match self.shared.broker {
                        Some(_) => AckPath::Redis,
                        None => AckPath::Fsync,
                    };
                    self.observe_ack(path, published.asked_ns);
                    let frame = self.ack_frame(key, &published.channel, published.offset);
                    self.reply(key, frame)
                }
                Err((code, why)) => self.refuse(key, code, &why),
            };
            self.close_on_error(key, result);
        }
    }
}
