//! Long-poll on the worker: `GET /poll` is answered at once with the retained messages after the
//! client's offset, or held (the connection waits as a catching-up subscriber of the channel)
//! until a message comes or the timeout passes. One whole JSON response per wait.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};

use crate::history::ResumeStatus;
use crate::protocol::HistoryStatus;
use crate::protocol::{fields, http, http::Head, json, validate_channel, ChannelKind, ErrorCode};
use crate::server::channels::Channel;
use crate::server::conn::{AfterJoin, Phase, PollWait, Wait};
use crate::server::stats::WorkerCounters;
use crate::server::worker::access::Action;
use crate::server::worker::lifecycle::Close;
use crate::server::worker::{ConnRef, Worker};
use crate::server::Item;

/// Longest a long-poll may be held, whatever the request asks.
const MAX_POLL_SECS: u64 = 120;
/// Held when the request does not say.
const DEFAULT_POLL_SECS: u64 = 30;
/// Most messages in one long-poll answer (the client asks again from the last one).
const MAX_POLL_MESSAGES: usize = 1000;

/// The JSON body of a long-poll answer.
pub(super) fn poll_body<'a>(
    history: &HistoryStatus<'_>,
    messages: impl Iterator<Item = (u64, &'a [u8])>,
) -> BytesMut {
    let channel = history.channel;
    let mut out = BytesMut::with_capacity(256);
    out.put_u8(b'{');
    json::put_history_fields(&mut out, history);
    out.put_slice(b",\"messages\":[");
    for (i, (offset, payload)) in messages.enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        json::put_message(&mut out, channel, offset, payload);
    }
    out.put_slice(b"]}");
    out
}

impl Worker {
    /// Answers `GET /poll?channel=C[&from=N][&epoch=E][&timeout=S]` at once with the retained
    /// messages after `from`, or holds it until one is published or the timeout passes.
    pub(super) fn long_poll(&mut self, key: usize, head: &Head) -> Result<(), Close> {
        let Some(name) = head.param("channel").map(<[u8]>::to_vec) else {
            return self.refuse(key, ErrorCode::BadRequest, "poll: channel= is required");
        };
        match validate_channel(&name) {
            Ok(ChannelKind::Topic) => {}
            Ok(_) => return self.refuse(key, ErrorCode::Forbidden, "poll: not a topic channel"),
            Err(e) => {
                return self.refuse(key, ErrorCode::InvalidName, &format!("invalid channel: {e}"))
            }
        }
        if let Some(why) = self.unfit_for_cluster(&name) {
            return self.refuse(key, ErrorCode::InvalidName, why);
        }
        if !self.permitted(key, Action::Subscribe, &name)? {
            return Ok(());
        }
        // Each parameter is optional, and refused when present but malformed.
        let from = head.param("from").map_or(Some(None), |f| fields::number(f).map(Some));
        let epoch = head.param("epoch").map_or(Some(None), fields::epoch);
        let timeout = head.param("timeout").map_or(Some(DEFAULT_POLL_SECS), fields::number);
        let (Some(from), Some(epoch), Some(timeout)) = (from, epoch, timeout) else {
            let why = "poll: from, epoch or timeout malformed";
            return self.refuse(key, ErrorCode::BadRequest, why);
        };
        let channel = match self.channel(&name) {
            Ok(channel) => channel,
            Err(why) => return self.refuse(key, ErrorCode::LimitReached, &why),
        };
        if !self.served_here(&channel) {
            return self.wait_for_channel(key, channel, AfterJoin::Poll(from, epoch, timeout));
        }
        self.poll_channel(key, channel, from, epoch, timeout)
    }

    /// Answers a long-poll on a channel this node serves: at once with what is retained after
    /// `from`, or, with nothing to say, holds it for up to `timeout` seconds.
    pub(in crate::server::worker) fn poll_channel(
        &mut self,
        key: usize,
        channel: Arc<Channel>,
        from: Option<u64>,
        epoch: Option<u64>,
        timeout: u64,
    ) -> Result<(), Close> {
        let mut page = Vec::new();
        let (bounds, status, after) = {
            let log = self.trimmed_log(&channel);
            let bounds = log.bounds();
            let status = from.map_or(ResumeStatus::Ok, |from| log.resume_status(from, epoch));
            // Cluster mode: a cursor of this epoch ahead of this node's log comes from a node
            // that is ahead; the poll is held as any other until messages after it arrive.
            let ahead = self.shared.broker.is_some()
                && epoch == Some(bounds.epoch)
                && from.is_some_and(|from| from > bounds.last);
            let status = if ahead { ResumeStatus::Ok } else { status };
            let after = match from {
                None => bounds.last,
                Some(from) if status == ResumeStatus::Ok => from,
                Some(_) => bounds.first - 1,
            };
            let max_bytes = self.shared.config.write_queue_cap_bytes / 4;
            log.read_page(after, MAX_POLL_MESSAGES, max_bytes, &mut page);
            // Offsets after `from` that never made it (an unclean restart's jump) are gone too.
            let skipped = page.first().is_some_and(|m| m.offset != after + 1);
            let status = if skipped { ResumeStatus::Expired } else { status };
            (bounds, status, after)
        };
        if status != ResumeStatus::Ok {
            WorkerCounters::add(&self.counters().offsets_expired, 1);
        }
        if !page.is_empty() || status != ResumeStatus::Ok || timeout == 0 {
            let messages = page.iter().map(|m| (m.offset, &m.payload[..]));
            let body = poll_body(&bounds.history(&channel.name, status), messages);
            WorkerCounters::add(&self.counters().long_polls, 1);
            WorkerCounters::add(&self.counters().messages_out, page.len() as u64);
            return self.reply(key, http::response(200, "application/json", &body));
        }
        // Wait as a catching-up subscriber: the ring brings every message after `after`.
        let deadline_ms = self.now_ms.wrapping_add((timeout.min(MAX_POLL_SECS) * 1000) as u32);
        self.join_catching_up(key, channel.clone(), after);
        self.conns[key].phase = Phase::Waiting(Wait::Poll(PollWait { channel, deadline_ms }));
        self.rearm(key);
        Ok(())
    }

    /// Answers a held long-poll with `fresh` messages (none at its deadline), and lets the
    /// connection's next request in.
    pub(in crate::server::worker) fn answer_poll(
        &mut self,
        key: usize,
        fresh: &[&Item],
    ) -> Result<(), Close> {
        let conn = &mut self.conns[key];
        if !conn.polling() {
            return Ok(());
        }
        let Some(Wait::Poll(wait)) = conn.end_wait() else { return Ok(()) };
        let channel = wait.channel;
        if let Some(i) = conn.subscriptions.iter().position(|s| s.channel.id == channel.id) {
            let subscription = conn.subscriptions.swap_remove(i);
            self.detach_one(key, subscription);
        }
        let bounds = channel.lock_log().bounds();
        let messages = fresh.iter().take(MAX_POLL_MESSAGES).map(|m| (m.offset, &m.payload[..]));
        let body = poll_body(&bounds.history(&channel.name, ResumeStatus::Ok), messages);
        let counters = &self.shared.counters[self.id];
        WorkerCounters::add(&counters.long_polls, 1);
        WorkerCounters::add(&counters.messages_out, fresh.len().min(MAX_POLL_MESSAGES) as u64);
        self.unblocked.push(ConnRef::of(key, &self.conns[key]));
        self.reply(key, http::response(200, "application/json", &body))
    }
}
