//! The worker's side of presence (`server::presence`): its connections join and leave the
//! tracked channels they subscribe to, their events are gathered per window and sent (into the
//! ring on one node, to the broker in a cluster), `PRESENCE` is answered, and the server API's
//! actions on connections (disconnect, unsubscribe) are carried out.

use std::sync::Arc;

use bytes::Bytes;
use log::{debug, info};

use super::lifecycle::Close;
use super::{ConnRef, Worker};
use crate::cluster::BrokerOp;
use crate::history::disk::ReplyTo;
use crate::protocol::presence::{put_event, Event, Member};
use crate::protocol::{validate_channel, ChannelKind, ErrorCode, Format};
use crate::server::channels::{Channel, PRESENCE_NOTICE};
use crate::server::conn::{Phase, Wait};
use crate::server::presence::PendingChanges;
use crate::server::stats::WorkerCounters;
use crate::server::Control;

impl Worker {
    /// The id presence gives connection `key`: unique across the cluster while serials do not
    /// wrap (2^32 accepts per worker).
    fn member_id(&self, key: usize) -> String {
        format!("{}-{}-{}", self.shared.node_key, self.id, self.conns[key].serial)
    }

    /// Whether connection `key` counts as a member of `channel` (tracked, a topic, and not a
    /// long-poll, which subscribes only while its request is held).
    fn counts_as_member(&self, key: usize, channel: &Channel) -> bool {
        let Some(presence) = &self.shared.presence else { return false };
        channel.kind == ChannelKind::Topic
            && self.conns[key].format != Some(Format::Http)
            && presence.tracks(&channel.name)
    }

    /// Connection `key` subscribed to `channel`: a member, if the channel is tracked.
    pub(super) fn presence_joined(&mut self, key: usize, channel: &Arc<Channel>) {
        if !self.counts_as_member(key, channel) {
            return;
        }
        let Some(presence) = &self.shared.presence else { return };
        let conn = &self.conns[key];
        let grant = conn.grant.as_ref();
        let user = grant
            .and_then(|g| g.subject.clone())
            .or_else(|| conn.name().map(|n| String::from_utf8_lossy(n).into()))
            .unwrap_or_default();
        let info = grant.and_then(|g| g.info.clone()).unwrap_or_default();
        let member = Arc::new(Member {
            client: self.member_id(key).into(),
            user,
            node: self.shared.node.clone(),
            info,
        });
        let announces = presence.announces(&channel.name);
        // Shown by presence answers once its join has gone out (a join and a leave within one
        // window cancel out, and nobody may have seen the member then).
        let seq = presence
            .join(&channel.name, member.clone(), !announces, || channel.next_presence_seq());
        if announces {
            // This subscriber is not sent this node's events from before its own join.
            if self.presence_since.insert((channel.id, key), seq).is_none() {
                *self.presence_since_channels.entry(channel.id).or_default() += 1;
            }
        }
        let client = member.client.clone();
        if self.note_change(channel, true, member, seq) {
            // It left and came back within the window: nobody was told it left, it is shown.
            if let Some(presence) = &self.shared.presence {
                presence.announced(&channel.name, [&*client], || 0);
            }
        }
    }

    /// Connection `key` left `channel` (unsubscribed or closed).
    pub(super) fn presence_left(&mut self, key: usize, channel: &Arc<Channel>) {
        let Some(presence) = &self.shared.presence else { return };
        if channel.kind != ChannelKind::Topic || !presence.tracks(&channel.name) {
            return;
        }
        if self.presence_since.remove(&(channel.id, key)).is_some() {
            if let Some(count) = self.presence_since_channels.get_mut(&channel.id) {
                *count -= 1;
                if *count == 0 {
                    self.presence_since_channels.remove(&channel.id);
                }
            }
        }
        let left =
            presence.leave(&channel.name, &self.member_id(key), || channel.next_presence_seq());
        if let Some((member, seq)) = left {
            self.note_change(channel, false, member, seq);
        }
    }

    /// Notes a change for the window; true when it cancelled the connection's opposite one.
    fn note_change(
        &mut self,
        channel: &Arc<Channel>,
        join: bool,
        member: Arc<Member>,
        seq: u64,
    ) -> bool {
        let Some(presence) = &self.shared.presence else { return false };
        let announce = presence.announces(&channel.name);
        // On one node only subscribers need the events; in a cluster Redis needs every change.
        if !announce && self.shared.redis_broker().is_none() {
            return false;
        }
        let window = presence.config.window.as_millis().min(60_000) as u32;
        self.presence_out.note(channel, announce, join, (member, seq), self.now_ms, window)
    }

    /// Sends the changes whose window closed (every worker turn).
    pub(super) fn flush_presence_due(&mut self) {
        let Some(due) = self.presence_out.due_ms else { return };
        if !super::reached(self.now_ms, due) {
            return;
        }
        self.presence_out.due_ms = None;
        let channels: Vec<u64> = self.presence_out.pending.keys().copied().collect();
        for id in channels {
            self.flush_presence_of(id);
        }
        let cancelled = std::mem::take(&mut self.presence_out.cancelled);
        WorkerCounters::add(&self.counters().presence_events_coalesced, cancelled);
    }

    /// Sends `channel`'s pending changes now: at the end of their window, or before a member
    /// publishes to it (so that its join goes first). A full ring keeps them for the next turn.
    pub(super) fn flush_presence_of(&mut self, channel: u64) {
        let Some(pending) = self.presence_out.pending.remove(&channel) else { return };
        if pending.changes.is_empty() {
            return;
        }
        if let Err(pending) = self.send_presence(pending) {
            let retry = self.now_ms.wrapping_add(1);
            self.presence_out.due_ms =
                Some(self.presence_out.due_ms.map_or(retry, |d| d.min(retry)));
            self.presence_out.pending.insert(channel, pending);
        }
    }

    /// Sends a window's changes. Its joins are shown by presence answers first, then the batch
    /// takes the channel's next seq (every event in it carries that seq): a member that joins
    /// later is not sent the batch, whose joins its presence answer shows and whose leaves it
    /// shows no more; a member that joined before is (`EventMarks::cut`).
    fn send_presence(&mut self, pending: PendingChanges) -> Result<(), PendingChanges> {
        let joins = pending.changes.values().filter(|(join, _, _)| *join);
        let clients = joins.map(|(_, m, _)| &*m.client);
        let draw = || pending.channel.next_presence_seq();
        let batch = match &self.shared.presence {
            Some(presence) => presence.announced(&pending.channel.name, clients, draw),
            None => draw(),
        };
        if let Some(broker) = self.shared.redis_broker() {
            let announce = pending.announce;
            let channel = pending.channel.name.clone();
            let (joins, leaves) = pending.split();
            let counters = self.counters();
            WorkerCounters::add(&counters.presence_events, (joins.len() + leaves.len()) as u64);
            WorkerCounters::add(&counters.presence_batches, 1);
            broker.send(BrokerOp::Presence { channel, joins, leaves, announce, batch });
            return Ok(());
        }
        let mut payload = Vec::new();
        let changes = pending.changes.len();
        {
            // In the order they happened (a join and a leave of one connection cancelled out).
            let mut events: Vec<(u64, Event<'_>)> = pending
                .changes
                .values()
                .map(|(join, member, seq)| {
                    (*seq, Event::of(member, *join, batch).happened_at(*seq))
                })
                .collect();
            events.sort_by_key(|(happened, _)| *happened);
            for (_, event) in &events {
                put_event(&mut payload, event);
            }
        }
        if !self.publisher.notice(&pending.channel, PRESENCE_NOTICE, Bytes::from(payload)) {
            return Err(pending);
        }
        WorkerCounters::add(&self.counters().presence_events, changes as u64);
        WorkerCounters::add(&self.counters().presence_batches, 1);
        Ok(())
    }

    /// `PRESENCE <channel>` (or its stats): who subscribes, for a client that may subscribe.
    pub(super) fn presence_request(
        &mut self,
        key: usize,
        name: &[u8],
        stats_only: bool,
    ) -> Result<(), Close> {
        if let Err(e) = validate_channel(name) {
            return self.refuse(key, ErrorCode::InvalidName, &format!("invalid channel: {e}"));
        }
        // Asking costs like subscribing (a walk of the members, in a cluster a script in Redis):
        // it spends the same budget.
        if !self.permitted(key, super::access::Action::Subscribe, name)?
            || !self.within_rate(key, super::access::Rate::Subscribe)?
        {
            return Ok(());
        }
        let format = self.conns[key].reply_format();
        match self.presence_answer(name, stats_only, format) {
            Ok(Some((frame, now))) => {
                self.presence_answered_at(key, name, now, frame.len());
                self.reply_bounded(key, frame)
            }
            Ok(None) => {
                // Cluster mode: Redis has every node's members; the answer comes back as a
                // whole frame, and the connection's input waits for it.
                let conn = &mut self.conns[key];
                let reply_to = ReplyTo { worker: self.id, key, serial: conn.serial };
                conn.phase = Phase::Waiting(Wait::Reply);
                let channel = Bytes::copy_from_slice(name);
                if let Some(broker) = self.shared.redis_broker() {
                    broker.send(BrokerOp::PresenceQuery { channel, stats_only, format, reply_to });
                }
                Ok(())
            }
            Err((code, why)) => self.refuse(key, code, &why),
        }
    }

    /// A member that asked is sent, from now on, only its node's joins and leaves after the
    /// answer (numbered after `now`): the answer shows the rest. Not when the answer is too big
    /// to be sent (`reply_bounded` refuses it).
    fn presence_answered_at(&mut self, key: usize, name: &[u8], now: u64, answer_bytes: usize) {
        if answer_bytes > self.shared.config.write_queue_cap_bytes / 2 {
            return;
        }
        if let Some(channel) = self.channel_cache.get(name) {
            if let Some(since) = self.presence_since.get_mut(&(channel.id, key)) {
                *since = (*since).max(now + 1);
            }
        }
    }

    /// The answer to a presence query in `format`, when this node has it (`None`: ask Redis).
    pub(super) fn presence_answer(
        &self,
        name: &[u8],
        stats_only: bool,
        format: Format,
    ) -> Result<Option<(Bytes, u64)>, (ErrorCode, String)> {
        let Some(presence) = self.shared.presence.as_ref().filter(|p| p.tracks(name)) else {
            let why = format!(
                "presence is off for {} (the server's --presence patterns do not match it)",
                String::from_utf8_lossy(name)
            );
            return Err((ErrorCode::NotImplemented, why));
        };
        if self.shared.redis_broker().is_some() {
            return Ok(None);
        }
        // The answer is as of the channel's counter, read under the members' lock.
        let channel = self.shared.channels.find(name);
        let now = || channel.as_ref().map_or(0, |c| c.presence_seq_now());
        if stats_only {
            let (clients, users, now) = presence.stats_at(name, now);
            return Ok(Some((format.encode_presence(name, None, clients, users), now)));
        }
        let limit = presence.config.max_members;
        match presence.members_at(name, limit, now) {
            Ok((members, users, now)) => {
                let frame = format.encode_presence(name, Some(&members), members.len(), users);
                Ok(Some((frame, now)))
            }
            Err(count) => Err((
                ErrorCode::LimitReached,
                crate::server::presence::too_many_members(name, count, limit),
            )),
        }
    }

    /// A frame computed elsewhere (the broker) for a connection whose input waited for it.
    pub(super) fn reply_arrived(
        &mut self,
        target: ReplyTo,
        frame: Bytes,
        as_of: Option<(Bytes, u64)>,
    ) {
        let noted = ConnRef { key: target.key, serial: target.serial };
        let Some(key) = self.resolve(noted).filter(|&key| self.conns[key].is_open()) else {
            return;
        };
        if !matches!(self.conns[key].wait(), Some(Wait::Reply)) {
            return;
        }
        self.conns[key].end_wait();
        if let Some((channel, now)) = as_of {
            self.presence_answered_at(key, &channel, now, frame.len());
        }
        let result = self.reply_bounded(key, frame).and_then(|()| self.resume_unless_waiting(key));
        self.close_on_error(key, result);
    }

    /// Queues a computed answer (presence, a survey) unless it is over half the write queue's
    /// cap: then 429, so that asking cannot make a client a slow consumer (nor the server build
    /// a queue past its bound).
    pub(super) fn reply_bounded(&mut self, key: usize, frame: Bytes) -> Result<(), Close> {
        let cap = self.shared.config.write_queue_cap_bytes;
        if frame.len() > cap / 2 {
            let why = format!(
                "the answer would be {} bytes, more than half of --write-queue-cap-bytes ({cap}); ask for less (the presence stats, a channel pattern)",
                frame.len()
            );
            return self.refuse(key, ErrorCode::LimitReached, &why);
        }
        self.reply(key, frame)
    }

    /// Carries out a server API action on this worker's connections.
    pub(super) fn apply_control(&mut self, control: &Control) {
        // The user presence shows: the token's subject, else the claimed name.
        let user_of = |conn: &crate::server::conn::Conn| -> Option<Box<str>> {
            conn.grant
                .as_ref()
                .and_then(|g| g.subject.clone())
                .or_else(|| conn.name().map(|n| String::from_utf8_lossy(n).into()))
        };
        match control {
            Control::Disconnect { user, reason, .. } => {
                let keys: Vec<usize> = self
                    .conns
                    .iter()
                    .filter(|(_, conn)| conn.is_open() && user_of(conn).as_deref() == Some(&**user))
                    .map(|(key, _)| key)
                    .collect();
                for &key in &keys {
                    let why = format!("disconnected by the server: {reason}");
                    self.close(key, Close::error(ErrorCode::Forbidden, why));
                }
                WorkerCounters::add(&self.counters().api_disconnects, keys.len() as u64);
                if !keys.is_empty() {
                    info!(
                        "worker {}: disconnected {} connection(s) of user {user}: {reason}",
                        self.id,
                        keys.len()
                    );
                }
            }
            Control::Unsubscribe { user, channel, reason } => {
                let keys: Vec<usize> = self
                    .conns
                    .iter()
                    .filter(|(_, conn)| {
                        conn.is_open()
                            && user_of(conn).as_deref() == Some(&**user)
                            && conn.subscriptions.iter().any(|s| {
                                s.channel.name == channel && s.channel.kind == ChannelKind::Topic
                            })
                    })
                    .map(|(key, _)| key)
                    .collect();
                for &key in &keys {
                    let conn = &mut self.conns[key];
                    let Some(i) = conn.subscriptions.iter().position(|s| s.channel.name == channel)
                    else {
                        continue;
                    };
                    let subscription = conn.subscriptions.swap_remove(i);
                    let remaining = conn.subscriptions.len();
                    let format = conn.reply_format();
                    self.detach_one(key, subscription);
                    let frame = format.encode_unsubscribed(channel, reason, remaining);
                    let result = if frame.is_empty() { Ok(()) } else { self.reply(key, frame) };
                    self.close_on_error(key, result);
                }
                WorkerCounters::add(&self.counters().api_unsubscribes, keys.len() as u64);
                if !keys.is_empty() {
                    debug!(
                        "worker {}: took {} connection(s) of {user} out of {}",
                        self.id,
                        keys.len(),
                        String::from_utf8_lossy(channel)
                    );
                }
            }
        }
    }
}
