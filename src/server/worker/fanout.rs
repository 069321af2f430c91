//! Fan-out: every worker drains the ring from its own cursor, gathers each channel's messages of
//! the turn into one frame per wire format (`Batches`), and queues that frame to each local
//! subscriber of the channel: one shared `Bytes` per subscriber per channel per turn, whatever
//! the number of messages. Subscribers that are catching up after a replay get only the messages
//! they lack, encoded for them alone (`fan_out_catching_up`).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::Worker;
use crate::protocol::{ChannelKind, Format};
use crate::server::channels::Channel;
use crate::server::conn::{Conn, Membership};
use crate::server::stats::WorkerCounters;
use crate::server::Item;

/// Ring items taken per turn, and per `Consumer::poll` call within it.
const DRAIN_MAX_MESSAGES: usize = 8192;
const DRAIN_CHUNK_MESSAGES: usize = 64;
/// Encoded bytes batched per turn before the batch is handed to subscribers.
const DRAIN_MAX_BYTES: usize = 4 << 20;

/// Frames of one channel gathered during one drain.
#[derive(Debug)]
pub(super) struct ChannelBatch {
    pub channel: Arc<Channel>,
    /// One buffer per format; empty for formats no local subscriber uses.
    pub frames: [BytesMut; Format::COUNT],
    pub messages: u64,
    /// The offset of the batch's last message.
    pub last_offset: u64,
    /// The messages themselves, kept only when the channel has catching-up subscribers.
    pub items: Vec<Item>,
}

/// The batches of one drain, one per channel met, in the order channels were first met.
#[derive(Debug, Default)]
pub(super) struct Batches {
    batches: Vec<ChannelBatch>,
    by_channel: HashMap<u64, usize>,
}

impl Batches {
    /// Adds `message` to its channel's batch, encoded in each format `per_format` counts
    /// subscribers of; the message itself is kept too when `keep_item`. Returns the bytes
    /// encoded.
    pub fn add(
        &mut self,
        message: Item,
        per_format: &[u32; Format::COUNT],
        keep_item: bool,
    ) -> usize {
        let Batches { batches, by_channel } = self;
        let slot = *by_channel.entry(message.channel.id).or_insert_with(|| {
            batches.push(ChannelBatch {
                channel: message.channel.clone(),
                frames: Default::default(),
                messages: 0,
                last_offset: 0,
                items: Vec::new(),
            });
            batches.len() - 1
        });
        let batch = &mut batches[slot];
        let mut encoded = 0;
        for format in Format::ALL {
            if per_format[format as usize] > 0 {
                let out = &mut batch.frames[format as usize];
                let before = out.len();
                let channel = &message.channel;
                format.put_message(
                    out,
                    &channel.name,
                    channel.epoch,
                    message.offset,
                    &message.payload,
                );
                encoded += out.len() - before;
            }
        }
        batch.messages += 1;
        batch.last_offset = message.offset;
        if keep_item {
            batch.items.push(message);
        }
        encoded
    }

    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Takes the batches out (hand the vector back with `reuse`, so that it keeps its capacity).
    pub fn take(&mut self) -> Vec<ChannelBatch> {
        self.by_channel.clear();
        std::mem::take(&mut self.batches)
    }

    /// Gives back the (drained) vector `take` returned.
    pub fn reuse(&mut self, mut emptied: Vec<ChannelBatch>) {
        emptied.clear();
        self.batches = emptied;
    }
}

/// `messages` of `channel` as one frame for one subscriber (a replay page, a catch-up): the bytes
/// the shared fan-out would have sent it. Returns the frame and the number of messages.
pub(super) fn encode_for<'a>(
    format: Format,
    channel: &Channel,
    messages: impl Iterator<Item = (u64, &'a [u8])>,
) -> (Bytes, u64) {
    let mut out = BytesMut::new();
    let mut count = 0;
    for (offset, payload) in messages {
        format.put_message(&mut out, &channel.name, channel.epoch, offset, payload);
        count += 1;
    }
    (out.freeze(), count)
}

impl Worker {
    /// Takes up to `DRAIN_MAX_MESSAGES` from the ring, gathers them per channel and format, and
    /// queues each channel's batch to its local subscribers as one shared `Bytes` per format.
    pub(super) fn drain_ring(&mut self) {
        let mut taken = 0;
        let mut batched_bytes = 0;
        // A turn's batch goes to each subscriber as one frame, so it must stay well under the
        // queue cap, or a burst would look like a slow consumer.
        let max_bytes = DRAIN_MAX_BYTES.min(self.shared.config.write_queue_cap_bytes / 4);
        let mut largest_payload = 0;
        // A broadcast (`*`) goes to every connection that streams: encode it in the formats
        // this worker's connections use (the per-format gauges count them), not in all of them.
        let counters = &self.shared.counters[self.id];
        let broadcast_formats = Format::ALL.map(|format| {
            u32::from(format.streams() && counters.by_format(format).load(Ordering::Relaxed) > 0)
        });
        while taken < DRAIN_MAX_MESSAGES && batched_bytes < max_bytes {
            // Big messages are taken one at a time so that the byte budget holds.
            let room = max_bytes - batched_bytes;
            let chunk = if largest_payload > 0 && largest_payload * DRAIN_CHUNK_MESSAGES < room {
                DRAIN_CHUNK_MESSAGES
            } else {
                1
            };
            let Worker { consumer, index, batches, .. } = self;
            let n = consumer.poll(chunk, |message: Item| {
                largest_payload =
                    largest_payload.max(message.payload.len() + message.channel.name.len());
                let (per_format, catching_up) = match message.channel.kind {
                    ChannelKind::Broadcast => (&broadcast_formats, false),
                    _ => match index.get(message.channel.id) {
                        Some(local) => (&local.per_format, !local.catching_up.is_empty()),
                        None => return,
                    },
                };
                batched_bytes += batches.add(message, per_format, catching_up);
            });
            if n == 0 {
                break;
            }
            taken += n;
        }
        if self.batches.is_empty() {
            return;
        }
        let mut batches = self.batches.take();
        for batch in batches.drain(..) {
            self.fan_out(batch);
        }
        self.batches.reuse(batches);
        self.close_slow();
    }

    fn fan_out(&mut self, batch: ChannelBatch) {
        let frames = batch.frames.map(BytesMut::freeze);
        let cap = self.shared.config.write_queue_cap_bytes;
        let Worker { conns, index, out, .. } = self;
        let mut deliveries = 0u64;
        let mut streams = Vec::new();
        let mut enqueue = |key: usize, conn: &mut Conn| {
            let Some(format) = conn.format else { return };
            if out.deliver(key, conn, frames[format as usize].clone(), cap) {
                deliveries += 1;
                if format == Format::Sse {
                    streams.push(key);
                }
            }
        };
        if batch.channel.kind == ChannelKind::Broadcast {
            let receives = |conn: &Conn| {
                conn.is_open() && conn.format.is_some_and(Format::streams) && !conn.is_echo()
            };
            for (key, conn) in conns.iter_mut().filter(|(_, conn)| receives(conn)) {
                enqueue(key, conn);
            }
        } else if let Some(local) = index.get(batch.channel.id) {
            for &key in &local.subscribers {
                enqueue(key, &mut conns[key]);
            }
        }
        WorkerCounters::add(
            &self.shared.counters[self.id].messages_out,
            deliveries * batch.messages,
        );
        // Event streams that got the batch: their cursors follow it.
        for key in streams {
            self.sse_sent(key, &batch.channel, batch.last_offset, false);
        }
        if !batch.items.is_empty() {
            self.fan_out_catching_up(&batch.channel, &batch.items);
        }
    }

    /// Delivers a batch to subscribers that are catching up: only the messages after the offset
    /// each already has (earlier ones went out from history), encoded for it alone. Once the ring
    /// has moved past that offset they join the shared fan-out. A held long-poll is answered.
    fn fan_out_catching_up(&mut self, channel: &Arc<Channel>, items: &[Item]) {
        let channel_id = channel.id;
        let Some(local) = self.index.get(channel_id) else { return };
        let catching_up = local.catching_up.clone();
        let last_in_batch = items.last().map_or(0, |m| m.offset);
        let cap = self.shared.config.write_queue_cap_bytes;
        // The index holds only open connections (lifecycle invariant 2).
        for (key, has) in catching_up {
            let conn = &mut self.conns[key];
            let Some(format) = conn.format else { continue };
            let fresh = items.iter().filter(|m| m.offset > has);
            if conn.polling() {
                let fresh: Vec<&Item> = fresh.collect();
                if !fresh.is_empty() {
                    let result = self.answer_poll(key, &fresh);
                    self.settle(key, result);
                }
                continue;
            }
            let (frame, count) =
                encode_for(format, channel, fresh.map(|m| (m.offset, &m.payload[..])));
            if count > 0 {
                if !self.out.deliver(key, conn, frame, cap) {
                    continue;
                }
                WorkerCounters::add(&self.shared.counters[self.id].messages_out, count);
                if format == Format::Sse {
                    self.sse_sent(key, channel, last_in_batch, false);
                }
            }
            if last_in_batch > has {
                self.index.finish_catching_up(channel_id, key);
                let position = self.index.add(channel_id, key, format);
                if let Some(entry) = self.conns[key].subscription_mut(channel_id) {
                    entry.membership = Membership::Live(position);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::HistoryLimits;
    use crate::server::channels::{ChannelRegistry, Message};

    fn registry() -> ChannelRegistry {
        let history =
            HistoryLimits { messages: 0, bytes: 0, age: std::time::Duration::ZERO, total_bytes: 0 };
        ChannelRegistry::new(16, history)
    }

    fn message(channel: &Arc<Channel>, offset: u64, payload: &'static [u8]) -> Item {
        Arc::new(Message { channel: channel.clone(), offset, payload: Bytes::from_static(payload) })
    }

    #[test]
    fn a_turn_is_one_frame_per_channel_and_format_in_use() {
        let registry = registry();
        let a = registry.get_or_create(b"a").unwrap();
        let b = registry.get_or_create(b"b").unwrap();
        let mut text_only = [0; Format::COUNT];
        text_only[Format::Text as usize] = 3;
        let mut text_and_binary = text_only;
        text_and_binary[Format::Binary as usize] = 1;
        let mut batches = Batches::default();
        let mut encoded = 0;
        encoded += batches.add(message(&a, 1, b"x"), &text_only, false);
        encoded += batches.add(message(&b, 1, b"y"), &text_and_binary, true);
        encoded += batches.add(message(&a, 2, b"z"), &text_only, false);
        let taken = batches.take();
        assert_eq!(taken.len(), 2, "one batch per channel");
        let (first, second) = (&taken[0], &taken[1]);
        assert_eq!(
            (first.channel.name.as_ref(), first.messages, first.last_offset),
            (&b"a"[..], 2, 2)
        );
        assert_eq!(&first.frames[Format::Text as usize][..], b"MSG a 1 x\r\nMSG a 2 z\r\n");
        assert!(first.frames[Format::Binary as usize].is_empty(), "no binary subscriber of a");
        assert!(first.items.is_empty(), "items are kept only for catching-up subscribers");
        assert_eq!(&second.frames[Format::Text as usize][..], b"MSG b 1 y\r\n");
        assert_eq!(
            &second.frames[Format::Binary as usize][..],
            &Format::Binary.encode_message(b"b", b.epoch, 1, b"y")[..]
        );
        assert_eq!(second.items.iter().map(|m| m.offset).collect::<Vec<_>>(), [1]);
        let total: usize = taken.iter().flat_map(|b| b.frames.iter()).map(BytesMut::len).sum();
        assert_eq!(encoded, total, "the byte budget counts what was encoded");
        batches.reuse(taken);
        assert!(batches.is_empty());
        // A new turn starts new batches, even for a channel met before.
        batches.add(message(&a, 3, b"w"), &text_only, false);
        assert_eq!(batches.take()[0].last_offset, 3);
    }

    #[test]
    fn one_subscribers_frame_is_what_the_shared_fan_out_sends() {
        let registry = registry();
        let c = registry.get_or_create(b"c").unwrap();
        for format in Format::ALL {
            let mut every = [0; Format::COUNT];
            every[format as usize] = 1;
            let mut batches = Batches::default();
            for (offset, payload) in [(5, &b"p"[..]), (6, b"q")] {
                let item = Arc::new(Message {
                    channel: c.clone(),
                    offset,
                    payload: Bytes::copy_from_slice(payload),
                });
                batches.add(item, &every, false);
            }
            let shared = batches.take().remove(0).frames[format as usize].clone().freeze();
            let (alone, count) = encode_for(format, &c, [(5, &b"p"[..]), (6, b"q")].into_iter());
            assert_eq!((alone, count), (shared, 2), "{format:?}");
        }
    }
}
