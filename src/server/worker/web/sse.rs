//! Server-Sent Events on the worker: the stream's request names its channels (each with where
//! to start), they are subscribed in order (each replay from history before the next), and the
//! stream keeps a cursor of every channel's position for the browser's own reconnects.

use bytes::{BufMut, BytesMut};

use crate::auth::pattern::TopicPattern;
use crate::protocol::{fields, http, http::Head, sse, ErrorCode, Format, Resume};
use crate::server::channels::Channel;
use crate::server::session::{HttpSession, Session, SseChannel, SseSession};
use crate::server::worker::access::Action;
use crate::server::worker::lifecycle::Close;
use crate::server::worker::{ConnRef, Worker};

impl Worker {
    /// Answers `GET /sse?channel=a[&after=N[&epoch=E]]&channel=b…&pattern=p…`: `after`
    /// (default "now") and `epoch` belong to the channel before them; `Last-Event-ID` resumes
    /// them all; `pattern=` adds wildcard subscriptions (live only: resume is per channel).
    pub(super) fn start_sse(&mut self, key: usize, head: &Head) -> Result<(), Close> {
        let now = Resume { after: u64::MAX, epoch: None, strict: false };
        let mut channels: Vec<SseChannel> = Vec::new();
        let mut patterns: Vec<&[u8]> = Vec::new();
        for (name, value) in &head.query {
            if name == "pattern" {
                patterns.push(value);
                continue;
            }
            let last = channels.last_mut().map(|c| &mut c.resume);
            let ok = match (name.as_str(), last) {
                ("channel", _) => {
                    channels.push(SseChannel { name: value.clone(), resume: now, last: None });
                    true
                }
                ("after", Some(resume)) => fields::after(value).map(|a| resume.after = a).is_some(),
                ("epoch", Some(resume)) => fields::epoch(value).map(|e| resume.epoch = e).is_some(),
                ("after" | "epoch", None) => false,
                _ => true,
            };
            if !ok {
                let why = format!("sse: bad {name}= (after and epoch follow their channel=)");
                return self.refuse(key, ErrorCode::BadRequest, &why);
            }
        }
        if channels.is_empty() && patterns.is_empty() {
            let why = "sse: at least one channel= or pattern= is required";
            return self.refuse(key, ErrorCode::BadRequest, why);
        }
        let max_tokens = self.shared.config.max_pattern_tokens;
        for &text in &patterns {
            match TopicPattern::from_bytes(text, max_tokens) {
                Ok(pattern) => {
                    if !self.pattern_permitted(key, text, &pattern)? {
                        return Ok(());
                    }
                }
                Err(e) => {
                    let why = format!("invalid pattern: {e}");
                    return self.refuse(key, ErrorCode::InvalidName, &why);
                }
            }
        }
        // Refused as an HTTP answer, before the stream starts: EventSource stops retrying on
        // an error status, while an error event on an open stream would have it reconnect.
        for channel in &channels {
            if !self.permitted(key, Action::Subscribe, &channel.name)? {
                return Ok(());
            }
        }
        // The browser's own reconnect: the last id it saw is newer than the URL's `after`s. It
        // is a position (`offset@epoch`) on a stream of one channel, and a cursor (every
        // channel's position, in the URL's order; "-" for not known yet) on a stream of several;
        // see `sse_sent`. With the epoch, a log that changed meanwhile is noticed.
        // A stream with patterns also gets message events of channels not in its URL, whose ids
        // are their own channels' positions: only its cursors, marked `~`, are taken back.
        let last_id = match head.header("last-event-id") {
            Some(id) if !patterns.is_empty() => id.strip_prefix('~'),
            other => other,
        };
        if let Some(last_id) = last_id {
            let positions: Vec<&str> = last_id.split_whitespace().collect();
            if positions.len() == channels.len() {
                for (channel, position) in channels.iter_mut().zip(positions) {
                    if let Some((after, epoch)) = fields::position(position.as_bytes()) {
                        channel.resume.after = after;
                        channel.resume.epoch = epoch.or(channel.resume.epoch);
                    }
                }
            }
        }
        let origin = match self.conns[key].session.as_deref_mut() {
            Some(Session::Http(HttpSession { origin, .. })) => origin.take(),
            _ => None,
        };
        let patterns = patterns.into_iter().map(Into::into).collect();
        self.conns[key].session = Some(Box::new(Session::Sse(SseSession {
            patterns,
            channels,
            subscribed: 0,
            cursor_due: false,
        })));
        self.set_format(key, Format::Sse);
        let head = http::stream_head("text/event-stream");
        let head = match origin {
            Some(origin) => http::with_origin(&head, &origin),
            None => head,
        };
        let mut start = BytesMut::from(&head[..]);
        // Browsers reconnect after this many milliseconds (the default is ~3 s).
        start.put_slice(b"retry: 1000\n\n");
        self.reply(key, start.freeze())?;
        self.sse_subscribe_pending(key)
    }

    /// Subscribes the stream's channels in order; stops while one replays from history
    /// (`resume_input` calls again when it has finished).
    pub(in crate::server::worker) fn sse_subscribe_pending(
        &mut self,
        key: usize,
    ) -> Result<(), Close> {
        loop {
            let conn = &mut self.conns[key];
            if !conn.is_open() || conn.input_waits() {
                return Ok(());
            }
            let Some(Session::Sse(SseSession { patterns, channels, subscribed, .. })) =
                conn.session.as_deref_mut()
            else {
                return Ok(());
            };
            // Patterns first (live only), each once this node receives what it matches.
            if !patterns.is_empty() {
                let text = patterns.remove(0);
                self.request_pattern(key, text)?;
                continue;
            }
            let Some(next) = channels.get(*subscribed) else { return Ok(()) };
            let (name, resume) = (next.name.clone(), next.resume);
            *subscribed += 1;
            self.subscribe(key, &name, Some(resume))?;
        }
    }

    /// Notes that an event stream got `channel`'s messages up to `offset` (or, with `position`,
    /// that it is live from there). At the end of the turn (`emit_sse_cursors`) a stream of
    /// several channels then gets an id-only event, the cursor: every channel's position in the
    /// URL's order, which is what the browser sends back as `Last-Event-ID` when it reconnects by
    /// itself. (Message events carry their own position as id, which is all a stream of one
    /// channel needs, except before its first message: hence `position`.) One cursor per turn,
    /// not per channel batch: a stream of hundreds of channels would otherwise write hundreds of
    /// cursors of hundreds of positions each time it subscribes or many channels publish.
    pub(in crate::server::worker) fn sse_sent(
        &mut self,
        key: usize,
        channel: &Channel,
        offset: u64,
        position: bool,
    ) {
        let conn = &mut self.conns[key];
        let serial = conn.serial;
        let with_patterns = !conn.patterns.is_empty();
        let Some(Session::Sse(SseSession { channels, cursor_due, .. })) =
            conn.session.as_deref_mut()
        else {
            return;
        };
        // One channel: its message events carry the offset already, nothing to keep (unless
        // pattern deliveries interleave other channels' ids: then the cursor follows them).
        if channels.len() == 1 && !position && !with_patterns {
            return;
        }
        match channels.iter_mut().find(|c| c.name[..] == channel.name[..]) {
            Some(entry) => entry.last = Some((offset, channel.epoch())),
            None if !with_patterns => return,
            None => {}
        }
        if !*cursor_due {
            *cursor_due = true;
            self.sse_cursors_due.push(ConnRef { key, serial });
        }
    }

    /// Queues the cursor event of every stream whose positions moved this turn.
    pub(in crate::server::worker) fn emit_sse_cursors(&mut self) {
        for noted in std::mem::take(&mut self.sse_cursors_due) {
            if let Some(key) = self.resolve(noted) {
                self.emit_sse_cursor(key);
            }
        }
        self.close_slow();
    }

    fn emit_sse_cursor(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if !conn.is_open() {
            return;
        }
        let with_patterns = !conn.patterns.is_empty();
        let Some(Session::Sse(SseSession { channels, cursor_due, .. })) =
            conn.session.as_deref_mut()
        else {
            return;
        };
        if !std::mem::take(cursor_due) {
            return;
        }
        let mut cursor = BytesMut::with_capacity(8 + 38 * channels.len());
        cursor.put_slice(if with_patterns { b"id:~" } else { b"id:" });
        for c in channels.iter() {
            cursor.put_u8(b' ');
            match c.last {
                Some((last, epoch)) => sse::put_position(&mut cursor, last, epoch),
                None => cursor.put_u8(b'-'),
            }
        }
        cursor.put_slice(b"\n\n");
        // Counted like any frame: a stream of many channels is a few hundred bytes a batch.
        let cap = self.shared.config.write_queue_cap_bytes;
        self.out.deliver(key, conn, cursor.freeze(), cap);
    }
}
