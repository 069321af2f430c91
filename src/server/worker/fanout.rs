//! Fan-out: every worker drains the ring from its own cursor, gathers each channel's messages of
//! the turn into one frame per wire format (`Batches`), and queues that frame to each local
//! subscriber of the channel: one shared `Bytes` per subscriber per channel per turn, whatever
//! the number of messages. Subscribers that are catching up after a replay get only the messages
//! they lack, encoded for them alone (`fan_out_catching_up`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use log::error;

use super::Worker;
use crate::history::ResumeStatus;
use crate::protocol::{ChannelKind, Format, HistoryStatus};
use crate::server::channels::{is_notice, Channel, EPOCH_NOTICE, EXPIRED_NOTICE, PRESENCE_NOTICE};
use crate::server::conn::{Conn, Membership};
use crate::server::index::live;
use crate::server::stats::WorkerCounters;
use crate::server::Item;

/// Ring items taken per turn, and per `Consumer::poll` call within it.
const DRAIN_MAX_MESSAGES: usize = 8192;
const DRAIN_CHUNK_MESSAGES: usize = 64;
/// Encoded bytes batched per turn before the batch is handed to subscribers.
const DRAIN_MAX_BYTES: usize = 4 << 20;

/// A slot's buffers above this capacity are not kept for the next turn (a burst's buffer would
/// otherwise stay allocated, and pinned by any subscriber still writing a frame of it).
const MAX_KEPT_FRAME_CAPACITY: usize = 16 << 10;

/// What subscribers of `channel` are told when its log starts over (`EPOCH_NOTICE`): a HIST
/// with the new epoch, nothing yet, status `epoch`.
fn epoch_notice(channel: &Channel) -> HistoryStatus<'_> {
    HistoryStatus {
        channel: &channel.name,
        epoch: channel.epoch(),
        first: 1,
        last: 0,
        status: ResumeStatus::EpochChanged,
    }
}

/// The HIST frame a notice item stands for: an epoch change, or (`EXPIRED_NOTICE`) messages
/// lost before the offset it carries: status `expired`, delivery going on from that offset.
fn notice_of(item: &Item) -> HistoryStatus<'_> {
    let channel = &item.channel;
    if item.offset == EPOCH_NOTICE {
        return epoch_notice(channel);
    }
    let resumes_at =
        item.payload.get(..8).and_then(|b| b.try_into().ok()).map_or(1, u64::from_be_bytes);
    HistoryStatus {
        channel: &channel.name,
        epoch: channel.epoch(),
        first: resumes_at,
        last: resumes_at.saturating_sub(1).max(channel.last_offset()),
        status: ResumeStatus::Expired,
    }
}

/// Frames of one channel gathered during one drain. Slots are reused from turn to turn: a frame
/// is split off the slot's buffer (`take_frames`), so every subscriber shares it without an
/// allocation, and once the frames of a turn are written the next turn writes into the same
/// memory again. In the steady state a turn allocates nothing for its frames.
#[derive(Debug, Default)]
pub(super) struct ChannelBatch {
    /// This turn's channel (`None` between turns, so that an idle slot keeps no channel alive).
    pub channel: Option<Arc<Channel>>,
    /// One buffer per format; empty for formats no local subscriber uses.
    frames: [BytesMut; Format::COUNT],
    pub messages: u64,
    /// When its first (oldest) message entered the node (`Message::entered_ns`).
    pub entered_ns: u64,
    /// The offset of the batch's last message.
    pub last_offset: u64,
    /// The messages themselves, kept only when the channel has catching-up subscribers.
    pub items: Vec<Item>,
    /// Who gets this turn's batch, decided once when the channel is first met in the turn.
    audience: Audience,
    /// Something besides joins and leaves: event streams' cursors move.
    pub moved: bool,
    /// Where each join or leave of this node starts in each format's frame, with its seq, while
    /// the batch holds nothing else (`moved` false): a subscriber that joined after some of them
    /// is sent the frame from the first it should hear (`EventMarks::cut`).
    pub marks: EventMarks,
    /// The lowest seq of this node's joins and leaves in the batch (`u64::MAX`: none): a member
    /// that joined after it is not sent all of the shared frame.
    pub min_local_seq: u64,
}

/// Joins and leaves in a batch's frames: what decides who is sent each, and where it starts in
/// each format's frame.
#[derive(Debug, Default)]
pub(super) struct EventMarks(Vec<(Mark, [u32; Format::COUNT])>);

/// What `EventMarks` keeps of an event (`protocol::presence::Event::precedes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Mark {
    local: bool,
    seq: u64,
    happened: u64,
    join: bool,
}

impl Mark {
    fn precedes(&self, since: u64) -> bool {
        self.local && (self.seq < since || (!self.join && self.happened < since))
    }
}

impl EventMarks {
    /// Where, in `format`'s frame, a subscriber whose own join has seq `since` starts, when what
    /// it must not hear (this node's events from before `since`) is the frame's leading run:
    /// `Some(Some(at))`, or `Some(None)` when nothing of the frame is for it. `None` when such an
    /// event comes after one it must hear: the frame is not a suffix, the caller encodes one.
    pub fn cut(&self, since: u64, format: Format) -> Option<Option<usize>> {
        let skipped = self.0.iter().take_while(|(mark, _)| mark.precedes(since)).count();
        if self.0[skipped..].iter().any(|(mark, _)| mark.precedes(since)) {
            return None;
        }
        Some(self.0.get(skipped).map(|(_, at)| at[format as usize] as usize))
    }
}

/// Who a channel's batch is for in one turn: how many subscribers use each format, and whether
/// the messages themselves are kept (for subscribers catching up).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Audience {
    pub per_format: [u32; Format::COUNT],
    pub keep_items: bool,
}

impl ChannelBatch {
    /// This turn's frame in each format (empty where no subscriber uses it), split off the
    /// slot's buffers, which keep their memory for the next turn unless it grew large.
    pub fn take_frames(&mut self) -> [Bytes; Format::COUNT] {
        self.frames.each_mut().map(|buffer| {
            let frame = buffer.split().freeze();
            if buffer.capacity() > MAX_KEPT_FRAME_CAPACITY {
                *buffer = BytesMut::new();
            }
            frame
        })
    }
}

/// The batches of one drain, one per channel met, in the order channels were first met.
#[derive(Debug, Default)]
pub(super) struct Batches {
    /// Slots, the first `in_use` of which hold this turn's batches.
    slots: Vec<ChannelBatch>,
    in_use: usize,
    /// Channel id -> slot, for this turn. Ids are the server's, not a client's: a fast hash.
    by_channel: rustc_hash::FxHashMap<u64, usize>,
    /// How this node's client ids begin (`<run>-`): its events' seqs can be compared with its
    /// subscribers' joins.
    pub local_clients: String,
}

impl Batches {
    /// Empty batches for a node whose client ids begin with `local_clients`.
    pub fn for_node(local_clients: String) -> Self {
        Batches { local_clients, ..Batches::default() }
    }

    /// Adds `message` to its channel's batch, encoded in each format its audience uses. The
    /// audience is asked of `describe` once per channel per turn (the index and the patterns
    /// do not change during a drain); `None` means nobody here receives the channel, and the
    /// message is dropped. Returns the bytes encoded.
    pub fn add(
        &mut self,
        message: Item,
        describe: impl FnOnce(&Channel) -> Option<Audience>,
    ) -> usize {
        let Batches { slots, in_use, by_channel, local_clients } = self;
        let slot = match by_channel.get(&message.channel.id) {
            Some(&slot) => slot,
            None => {
                let Some(audience) = describe(&message.channel) else { return 0 };
                if *in_use == slots.len() {
                    slots.push(ChannelBatch::default());
                }
                let batch = &mut slots[*in_use];
                batch.channel = Some(message.channel.clone());
                batch.messages = 0;
                batch.moved = false;
                batch.marks.0.clear();
                batch.min_local_seq = u64::MAX;
                batch.audience = audience;
                by_channel.insert(message.channel.id, *in_use);
                *in_use += 1;
                *in_use - 1
            }
        };
        let batch = &mut slots[slot];
        let mut encoded = 0;
        if message.offset == PRESENCE_NOTICE {
            let events = crate::protocol::presence::events(&message.payload).unwrap_or_default();
            for event in &events {
                let local = event.client.starts_with(local_clients.as_str());
                let mut at = [0u32; Format::COUNT];
                for format in Format::ALL {
                    if batch.audience.per_format[format as usize] > 0 {
                        let out = &mut batch.frames[format as usize];
                        at[format as usize] = out.len() as u32;
                        let before = out.len();
                        format.put_event(out, &message.channel.name, event);
                        encoded += out.len() - before;
                    }
                }
                let mark =
                    Mark { local, seq: event.seq, happened: event.happened, join: event.join };
                batch.marks.0.push((mark, at));
                if local {
                    // From there on a member that joined later may not be sent all: a join from
                    // its batch's seq, a leave from when it happened.
                    let from = if event.join { event.seq } else { event.happened };
                    batch.min_local_seq = batch.min_local_seq.min(from);
                }
            }
            if batch.audience.keep_items {
                batch.items.push(message);
            }
            return encoded;
        }
        batch.moved = true;
        if is_notice(message.offset) {
            let notice = notice_of(&message);
            for format in Format::ALL {
                if batch.audience.per_format[format as usize] > 0 {
                    let frame = format.encode_history(&notice);
                    batch.frames[format as usize].extend_from_slice(&frame);
                    encoded += frame.len();
                }
            }
            if batch.audience.keep_items {
                batch.items.push(message);
            }
            return encoded;
        }
        for format in Format::ALL {
            if batch.audience.per_format[format as usize] > 0 {
                let out = &mut batch.frames[format as usize];
                let before = out.len();
                let channel = &message.channel;
                format.put_message(
                    out,
                    &channel.name,
                    channel.epoch(),
                    message.offset,
                    &message.payload,
                );
                encoded += out.len() - before;
            }
        }
        if batch.messages == 0 {
            batch.entered_ns = message.entered_ns;
        }
        batch.messages += 1;
        batch.last_offset = message.offset;
        if batch.audience.keep_items {
            batch.items.push(message);
        }
        encoded
    }

    pub fn is_empty(&self) -> bool {
        self.in_use == 0
    }

    /// Takes this turn's batches out: the slots and how many are in use (hand the slots back
    /// with `reuse`, which keeps their buffers).
    pub fn take(&mut self) -> (Vec<ChannelBatch>, usize) {
        self.by_channel.clear();
        (std::mem::take(&mut self.slots), std::mem::take(&mut self.in_use))
    }

    /// Gives back the slots `take` returned, their batches delivered. Slots far beyond what
    /// recent turns used are let go.
    pub fn reuse(&mut self, mut slots: Vec<ChannelBatch>, used: usize) {
        let keep = used.max(64);
        if slots.len() > 4 * keep {
            slots.truncate(2 * keep);
        }
        self.slots = slots;
    }
}

/// A batch's `items` as one frame for one member whose own join has seq `since`: what the shared
/// frame holds but this node's joins and leaves from before `since` (events of other nodes,
/// whose seqs are theirs, stay). `local_clients` is how this node's client ids begin.
fn encode_for_member(
    format: Format,
    channel: &Channel,
    items: &[Item],
    since: u64,
    local_clients: &str,
) -> Bytes {
    let mut out = BytesMut::new();
    for item in items {
        if item.offset == PRESENCE_NOTICE {
            for event in crate::protocol::presence::events(&item.payload).unwrap_or_default() {
                if !event.precedes(since, event.client.starts_with(local_clients)) {
                    format.put_event(&mut out, &channel.name, &event);
                }
            }
        } else if is_notice(item.offset) {
            out.extend_from_slice(&format.encode_history(&notice_of(item)));
        } else {
            let epoch = channel.epoch();
            format.put_message(&mut out, &channel.name, epoch, item.offset, &item.payload);
        }
    }
    out.freeze()
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
        format.put_message(&mut out, &channel.name, channel.epoch(), offset, payload);
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
            u32::from(
                format.receives_broadcasts()
                    && counters.by_format(format).load(Ordering::Relaxed) > 0,
            )
        });
        while taken < DRAIN_MAX_MESSAGES && batched_bytes < max_bytes {
            // Big messages are taken one at a time so that the byte budget holds.
            let room = max_bytes - batched_bytes;
            let chunk = if largest_payload > 0 && largest_payload * DRAIN_CHUNK_MESSAGES < room {
                DRAIN_CHUNK_MESSAGES
            } else {
                1
            };
            let Worker { consumer, index, batches, patterns, presence_since_channels, .. } = self;
            // Who receives a channel, asked once per channel per turn (see `Batches::add`).
            let mut describe = |channel: &Channel| {
                let local = index.get(channel.id);
                let mut per_format = match channel.kind {
                    ChannelKind::Broadcast => {
                        return Some(Audience { per_format: broadcast_formats, keep_items: false })
                    }
                    _ => local.map_or([0; Format::COUNT], |l| l.per_format),
                };
                // Pattern subscribers receive the same frame: their formats count too. Redis
                // clients' `pmessage` frames name the pattern: built from the messages kept.
                let mut redis_clients = false;
                if channel.kind == ChannelKind::Topic && !patterns.is_empty() {
                    if let Some((matched, resp)) =
                        patterns.formats_matching(channel.id, &channel.name)
                    {
                        per_format.iter_mut().zip(&matched).for_each(|(n, m)| *n += m);
                        redis_clients = resp;
                    }
                }
                let keep_items = redis_clients
                    || local.is_some_and(|l| !l.catching_up.is_empty())
                    || presence_since_channels.contains_key(&channel.id);
                (keep_items || per_format.iter().any(|&n| n > 0))
                    .then_some(Audience { per_format, keep_items })
            };
            let n = consumer.poll(chunk, |message: Item| {
                largest_payload =
                    largest_payload.max(message.payload.len() + message.channel.name.len());
                batched_bytes += batches.add(message, &mut describe);
            });
            if n == 0 {
                break;
            }
            taken += n;
        }
        if self.batches.is_empty() {
            return;
        }
        let (mut slots, used) = self.batches.take();
        for batch in &mut slots[..used] {
            self.fan_out(batch);
        }
        self.batches.reuse(slots, used);
        self.close_slow();
    }

    /// Notes the latency of this turn's deliveries, now that they are written (see
    /// `server::histogram`): each batch as one observation per format, weighted by its
    /// deliveries, at its oldest message's latency (an upper bound for the others).
    pub(super) fn observe_delivery_latency(&mut self) {
        if self.delivered_latency.is_empty() {
            return;
        }
        let now = self.shared.clock_ns();
        let histograms = &self.shared.histograms[self.id].delivery;
        for (entered_ns, weights) in self.delivered_latency.drain(..) {
            let latency = now.saturating_sub(entered_ns);
            for (histogram, weight) in histograms.iter().zip(weights) {
                histogram.observe(latency, weight);
            }
        }
    }

    fn fan_out(&mut self, batch: &mut ChannelBatch) {
        let Some(channel) = batch.channel.take() else { return };
        let frames = batch.take_frames();
        let cap = self.shared.config.write_queue_cap_bytes;
        // Event streams that get the batch (their cursors follow it); the list is reused.
        let mut streams = std::mem::take(&mut self.delivered_streams);
        // With access control on, a connection without a token hears `*` only when the anonymous
        // grant names it: a stranger that reconnects in a loop must not be an eavesdropper.
        let everyone_hears =
            self.policy.auth.as_ref().is_none_or(|auth| auth.anonymous_hears_broadcast());
        let Worker { conns, index, out, patterns, presence_since, batches, .. } = self;
        let local_clients = batches.local_clients.as_str();
        let mut deliveries = 0u64;
        let mut by_format = [0u64; Format::COUNT];
        // Index entries whose connection is gone (never expected: see `index::live`).
        let mut stale = 0u64;
        // Joins and leaves alone: a member that joined during them gets only what followed.
        let marks = (!batch.moved && !batch.marks.0.is_empty()).then_some(&batch.marks);
        let min_local_seq = batch.min_local_seq;
        // A Redis client's pattern subscription gets `pmessage` frames naming its pattern: one
        // per pattern and RESP version, built once for the batch.
        let mut pattern_frames: Vec<(usize, Format, Bytes)> = Vec::new();
        let items = &batch.items;
        let moved = batch.moved;
        let mut enqueue = |key: usize, conn: &mut Conn, pattern: Option<(usize, &[u8])>| {
            let Some(format) = conn.format else { return };
            let frame = match pattern {
                Some((id, written)) if format.is_resp() => {
                    match pattern_frames.iter().find(|(i, f, _)| *i == id && *f == format) {
                        Some((_, _, frame)) => frame.clone(),
                        None => {
                            let mut out = BytesMut::new();
                            for item in items.iter().filter(|m| !is_notice(m.offset)) {
                                crate::protocol::resp::put_pmessage(
                                    &mut out,
                                    written,
                                    &channel.name,
                                    &item.payload,
                                    format == Format::Resp3,
                                );
                            }
                            let frame = out.freeze();
                            pattern_frames.push((id, format, frame.clone()));
                            frame
                        }
                    }
                }
                _ => {
                    let frame = &frames[format as usize];
                    // A member that joined after some of this node's events in the batch is not
                    // sent those: the frame's tail when they lead it, else a frame of its own.
                    let since = presence_since.get(&(channel.id, key)).copied();
                    match since.filter(|&since| min_local_seq < since) {
                        None => frame.clone(),
                        Some(since) => match marks.and_then(|m| m.cut(since, format)) {
                            Some(Some(0)) => frame.clone(),
                            Some(Some(at)) if at < frame.len() => frame.slice(at..),
                            Some(_) => return,
                            None => {
                                let own = encode_for_member(
                                    format,
                                    &channel,
                                    items,
                                    since,
                                    local_clients,
                                );
                                if own.is_empty() {
                                    return;
                                }
                                own
                            }
                        },
                    }
                }
            };
            if out.deliver(key, conn, frame, cap) {
                deliveries += 1;
                by_format[format as usize] += 1;
                if format == Format::Sse && moved {
                    streams.push(key);
                }
            }
        };
        if channel.kind == ChannelKind::Broadcast {
            let receives = |conn: &Conn| {
                conn.is_open()
                    && conn.format.is_some_and(Format::receives_broadcasts)
                    && (everyone_hears || conn.grant.is_some())
                    && !conn.is_echo()
            };
            for (key, conn) in conns.iter_mut().filter(|(_, conn)| receives(conn)) {
                enqueue(key, conn, None);
            }
        } else {
            if let Some(local) = index.get(channel.id) {
                for &subscriber in &local.subscribers {
                    match live(conns, subscriber) {
                        Some(conn) => enqueue(subscriber.key(), conn, None),
                        None => stale += 1,
                    }
                }
            }
            // Pattern subscribers get it once per matching subscription (as Redis does), with
            // the channel's own name and offset.
            if channel.kind == ChannelKind::Topic && !patterns.is_empty() {
                patterns.for_each_subscriber(channel.id, &channel.name, |subscriber, id, entry| {
                    match live(conns, subscriber) {
                        Some(conn) => enqueue(subscriber.key(), conn, Some((id, entry.written()))),
                        None => stale += 1,
                    }
                });
            }
        }
        WorkerCounters::add(
            &self.shared.counters[self.id].messages_out,
            deliveries * batch.messages,
        );
        if stale > 0 {
            self.stale_index_entries(&channel, stale);
        }
        if deliveries > 0 && batch.messages > 0 {
            let weights = by_format.map(|n| n * batch.messages);
            self.delivered_latency.push((batch.entered_ns, weights));
        }
        for key in streams.drain(..) {
            self.sse_sent(key, &channel, batch.last_offset, false);
        }
        self.delivered_streams = streams;
        if !batch.items.is_empty() {
            self.fan_out_catching_up(&channel, &batch.items);
            batch.items.clear();
        }
    }

    /// Delivers a batch to subscribers that are catching up: only the messages after the offset
    /// each already has (earlier ones went out from history), encoded for it alone. Once the ring
    /// has moved past that offset they join the shared fan-out. A held long-poll is answered.
    /// Counts and reports index entries that named a connection no longer there: a detach was
    /// missed somewhere (a bug); nothing was delivered to the key's new holder.
    fn stale_index_entries(&mut self, channel: &Channel, count: u64) {
        WorkerCounters::add(&self.counters().stale_index_entries, count);
        error!(
            "worker {}: {count} subscription index entr(y/ies) of {} named a connection that is gone; skipped (a missed detach: please report)",
            self.id,
            String::from_utf8_lossy(&channel.name)
        );
    }

    fn fan_out_catching_up(&mut self, channel: &Arc<Channel>, items: &[Item]) {
        let channel_id = channel.id;
        let Some(local) = self.index.get(channel_id) else { return };
        let catching_up = local.catching_up.clone();
        // After an epoch notice the log started over: what a subscriber had counts no more.
        let restart = items.iter().rposition(|m| m.offset == EPOCH_NOTICE);
        let items = restart.map_or(items, |notice| &items[notice + 1..]);
        // A hole in what is left is announced to each of them before the messages.
        let hole = items.iter().find(|m| m.offset == EXPIRED_NOTICE);
        let last_in_batch =
            items.iter().rev().find(|m| !is_notice(m.offset)).map_or(0, |m| m.offset);
        let cap = self.shared.config.write_queue_cap_bytes;
        // The index holds only open connections (lifecycle invariant 2), checked all the same.
        for (subscriber, has) in catching_up {
            let key = subscriber.key();
            let Some(conn) = live(&mut self.conns, subscriber) else {
                self.stale_index_entries(channel, 1);
                self.index.remove_catching_up(channel_id, subscriber);
                continue;
            };
            let Some(format) = conn.format else { continue };
            let has = if restart.is_some() {
                let notice = format.encode_history(&epoch_notice(channel));
                if conn.polling() || !self.out.deliver(key, conn, notice, cap) {
                    continue;
                }
                0
            } else {
                has
            };
            let conn = &mut self.conns[key];
            if let Some(hole) = hole {
                let notice = format.encode_history(&notice_of(hole));
                if !conn.polling() && !self.out.deliver(key, conn, notice, cap) {
                    continue;
                }
            }
            let conn = &mut self.conns[key];
            if conn.polling() {
                let fresh = items.iter().filter(|m| m.offset > has && !is_notice(m.offset));
                let fresh: Vec<&Item> = fresh.collect();
                if !fresh.is_empty() {
                    let result = self.answer_poll(key, &fresh);
                    self.close_on_error(key, result);
                }
                continue;
            }
            // Its messages, and joins and leaves in their place among them (not this node's from
            // before its own join).
            let mut out = BytesMut::new();
            let mut count = 0;
            let since = self.presence_since.get(&(channel_id, key)).copied().unwrap_or(0);
            let local_clients = self.batches.local_clients.as_str();
            for item in items {
                if item.offset == PRESENCE_NOTICE {
                    let events = crate::protocol::presence::events(&item.payload);
                    for event in events.unwrap_or_default() {
                        if event.precedes(since, event.client.starts_with(local_clients)) {
                            continue;
                        }
                        format.put_event(&mut out, &channel.name, &event);
                    }
                } else if !is_notice(item.offset) && item.offset > has {
                    let epoch = channel.epoch();
                    format.put_message(&mut out, &channel.name, epoch, item.offset, &item.payload);
                    count += 1;
                }
            }
            let frame = out.freeze();
            if !frame.is_empty() {
                if !self.out.deliver(key, conn, frame, cap) {
                    continue;
                }
                WorkerCounters::add(&self.shared.counters[self.id].messages_out, count);
                if format == Format::Sse && count > 0 {
                    self.sse_sent(key, channel, last_in_batch, false);
                }
            }
            if last_in_batch > has || restart.is_some() {
                self.index.finish_catching_up(channel_id, subscriber);
                let position = self.index.add(channel_id, subscriber, format);
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
        ChannelRegistry::new(16, history, crate::history::Mirror::Standalone, 1)
    }

    /// A `describe` for `Batches::add` that always answers this audience.
    fn audience(
        per_format: [u32; Format::COUNT],
        keep_items: bool,
    ) -> impl FnOnce(&Channel) -> Option<Audience> {
        move |_| Some(Audience { per_format, keep_items })
    }

    fn message(channel: &Arc<Channel>, offset: u64, payload: &'static [u8]) -> Item {
        let payload = Bytes::from_static(payload);
        Arc::new(Message { channel: channel.clone(), offset, payload, entered_ns: 0 })
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
        encoded += batches.add(message(&a, 1, b"x"), audience(text_only, false));
        encoded += batches.add(message(&b, 1, b"y"), audience(text_and_binary, true));
        encoded += batches.add(message(&a, 2, b"z"), audience(text_only, false));
        let (mut slots, used) = batches.take();
        assert_eq!(used, 2, "one batch per channel");
        let (first, second) = slots.split_at_mut(1);
        let (first, second) = (&mut first[0], &mut second[0]);
        let first_channel = first.channel.take().unwrap();
        assert_eq!(
            (first_channel.name.as_ref(), first.messages, first.last_offset),
            (&b"a"[..], 2, 2)
        );
        assert!(first.items.is_empty(), "items are kept only for catching-up subscribers");
        assert_eq!(second.items.iter().map(|m| m.offset).collect::<Vec<_>>(), [1]);
        let first_frames = first.take_frames();
        let second_frames = second.take_frames();
        assert_eq!(&first_frames[Format::Text as usize][..], b"MSG a 1 x\r\nMSG a 2 z\r\n");
        assert!(first_frames[Format::Binary as usize].is_empty(), "no binary subscriber of a");
        assert_eq!(&second_frames[Format::Text as usize][..], b"MSG b 1 y\r\n");
        assert_eq!(
            &second_frames[Format::Binary as usize][..],
            &Format::Binary.encode_message(b"b", b.epoch(), 1, b"y")[..]
        );
        let total: usize = first_frames.iter().chain(&second_frames).map(Bytes::len).sum();
        assert_eq!(encoded, total, "the byte budget counts what was encoded");
        second.channel = None;
        second.items.clear();
        batches.reuse(slots, used);
        assert!(batches.is_empty());

        // The next turn writes into the same memory once the last turn's frames are gone.
        let buffer_of = |frame: &Bytes| frame.as_ptr() as usize;
        let before = buffer_of(&first_frames[Format::Text as usize]);
        drop((first_frames, second_frames));
        batches.add(message(&a, 3, b"w"), audience(text_only, false));
        let (mut slots, used) = batches.take();
        assert_eq!((used, slots[0].last_offset), (1, 3), "a new turn starts new batches");
        let again = slots[0].take_frames();
        assert_eq!(&again[Format::Text as usize][..], b"MSG a 3 w\r\n");
        let reused = buffer_of(&again[Format::Text as usize]);
        assert!(reused >= before && reused < before + 64, "the slot's buffer was reused");
    }

    #[test]
    fn a_member_starts_after_this_nodes_events_from_before_its_join() {
        let at = |n: u32| [n; Format::COUNT];
        let join = |seq| Mark { local: true, seq, happened: seq, join: true };
        let leave = |seq, happened| Mark { local: true, seq, happened, join: false };
        let remote = Mark { local: false, seq: 1, happened: 1, join: true };
        // This node's batches 3 and 4, another node's event, then this node's 2 and 6.
        let marks = EventMarks(vec![
            (join(3), at(0)),
            (join(4), at(10)),
            (remote, at(20)),
            (join(2), at(30)),
            (join(6), at(40)),
        ]);
        assert_eq!(marks.cut(1, Format::Text), Some(Some(0)), "joined before them all");
        assert_eq!(marks.cut(3, Format::Text), None, "3 and 4 are for it, 2 behind them is not");
        assert_eq!(marks.cut(7, Format::Text), None, "another node's event in between");
        let leading = EventMarks(vec![
            (join(3), at(0)),
            (join(4), at(10)),
            (remote, at(20)),
            (join(6), at(40)),
        ]);
        assert_eq!(leading.cut(5, Format::Text), Some(Some(20)), "from the other node's event on");
        let only_old = EventMarks(vec![(join(3), at(0)), (join(4), at(10))]);
        assert_eq!(only_old.cut(9, Format::Text), Some(None), "nothing for it");
        // In a batch sent after it joined: a leave that happened before is not for it, a join is.
        let storm =
            EventMarks(vec![(leave(9, 2), at(0)), (join(9), at(10)), (leave(9, 8), at(20))]);
        assert_eq!(storm.cut(5, Format::Text), Some(Some(10)), "the leave from before, skipped");
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
                    entered_ns: 0,
                });
                batches.add(item, audience(every, false));
            }
            let shared = batches.take().0[0].take_frames()[format as usize].clone();
            let (alone, count) = encode_for(format, &c, [(5, &b"p"[..]), (6, b"q")].into_iter());
            assert_eq!((alone, count), (shared, 2), "{format:?}");
        }
    }
}
