//! What a thread that mirrors channels from elsewhere (the Redis broker, an edge's upstream)
//! does to this node: append a channel's messages at the offsets it was given, put notices
//! into the ring, start a log over under another epoch, mark a channel served, and wake the
//! workers once per turn. Both mirroring threads go through this, so that a message enters a
//! channel exactly as on a single node (`ChannelRegistry::append`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::history::{Mirror, Retained};
use crate::server::channels::{Channel, Message, EPOCH_NOTICE, EXPIRED_NOTICE};
use crate::server::retention::Appender;
use crate::server::ring::Producer;
use crate::server::{Item, ServerForBroker};

/// Share of the ring that must be free before more is read from a connection that delivers
/// into it (what one read delivers then fits, so the reader never waits in the middle of it).
pub(crate) const RING_HEADROOM: u64 = 4;

pub(crate) struct IntoRing {
    pub server: ServerForBroker,
    pub producer: Producer<Item>,
    /// Something went into the ring this turn: wake the workers.
    pub delivered: bool,
    /// Channels became live this turn: workers look at their waiting joins.
    pub served: bool,
}

impl IntoRing {
    pub fn new(server: ServerForBroker, producer: Producer<Item>) -> Self {
        IntoRing { server, producer, delivered: false, served: false }
    }

    /// Whether the ring has room for what one read of a connection delivers (`RING_HEADROOM`).
    pub fn has_room(&self) -> bool {
        let ring = self.producer.ring();
        ring.capacity().saturating_sub(ring.backlog()) >= ring.capacity() / RING_HEADROOM
    }

    /// Appends message `offset` to the channel's log and, for live subscribers (`deliver`),
    /// puts it into the ring, as a publisher on one node does. A full ring is waited out with
    /// the lock released (workers take it while they replay).
    pub fn accept(
        &mut self,
        channel: &Arc<Channel>,
        offset: u64,
        payload: Bytes,
        published_ms: u64,
        deliver: bool,
    ) {
        let registry = self.server.channels();
        let keep = registry.limits_of(channel).messages > 0;
        let mut entry = Retained { offset, published_ms, payload };
        let entered_ns = self.server.clock_ns();
        loop {
            let mut log = channel.lock_log();
            let appended = registry.append(
                Appender::Broker,
                channel,
                &mut log,
                &mut self.producer,
                entry,
                entered_ns,
                deliver,
                keep,
                |_, _| {},
            );
            match appended {
                Ok(_) => {
                    self.delivered |= deliver;
                    return;
                }
                Err(back) => {
                    drop(log);
                    entry = back;
                    if !self.wait_for_room() {
                        return;
                    }
                }
            }
        }
    }

    /// Puts a notice into the ring (a full ring is waited out, as in `accept`).
    pub fn put_in_ring(&mut self, channel: &Arc<Channel>, offset: u64, payload: Bytes) {
        let entered_ns = self.server.clock_ns();
        loop {
            let (channel, payload) = (channel.clone(), payload.clone());
            let message = Arc::new(Message { channel, offset, payload, entered_ns });
            if self.producer.try_publish(message).is_ok() {
                self.delivered = true;
                return;
            }
            if !self.wait_for_room() {
                return;
            }
        }
    }

    /// Starts the channel's log over under `epoch` at offset `next`; live subscribers are told
    /// (`notify`) before the new log's messages reach them.
    pub fn restart(&mut self, channel: &Arc<Channel>, epoch: u64, next: u64, notify: bool) {
        {
            let mut log = channel.lock_log();
            log.restart(epoch, self.server.channels().totals(Appender::Broker));
            channel.set_epoch(epoch);
            log.next_offset = next;
        }
        if notify {
            self.put_in_ring(channel, EPOCH_NOTICE, Bytes::new());
        }
    }

    /// Tells live subscribers that the offsets before `from` are lost: delivery goes on there.
    pub fn announce_hole(&mut self, channel: &Arc<Channel>, from: u64) {
        let at = Bytes::copy_from_slice(&from.to_be_bytes());
        self.put_in_ring(channel, EXPIRED_NOTICE, at);
    }

    /// The log's next offset becomes at least `next`.
    pub fn skip_to(&self, channel: &Channel, next: u64) {
        let mut log = channel.lock_log();
        log.next_offset = log.next_offset.max(next);
    }

    /// The channel is mirrored: its waiting subscribers may go on.
    pub fn mark_served(&mut self, channel: &Channel) {
        let mut log = channel.lock_log();
        if log.mirror != Mirror::Live {
            log.mirror = Mirror::Live;
            self.served = true;
        }
    }

    /// The ring is full: wakes the workers and waits a moment for them to drain it; false when
    /// the server is shutting down (nothing will drain it).
    pub fn wait_for_room(&self) -> bool {
        if self.server.shutting_down() {
            return false;
        }
        self.server.wake_workers(false);
        std::thread::sleep(Duration::from_micros(50));
        true
    }

    /// The end of a turn: workers look at their waiting joins if channels became live, or
    /// drain the ring if something went into it.
    pub fn end_turn(&mut self) {
        self.server.channels().maintain(Appender::Broker);
        if std::mem::take(&mut self.served) {
            self.server
                .broker()
                .served_generation
                .fetch_add(1, std::sync::atomic::Ordering::Release);
            self.server.wake_workers(true);
        } else if std::mem::take(&mut self.delivered) {
            self.server.wake_workers(false);
        }
    }
}
