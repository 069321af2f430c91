//! The browser protocols on the worker: HTTP requests (publish, long-poll, metrics, health, the
//! demo page and its JavaScript client), the WebSocket upgrade and its messages, and
//! Server-Sent Events streams.
//!
//! Each of them ends up as a `Format`, so fan-out, replay from history, write queues, slow
//! consumers and shutdown treat a browser exactly like a TCP client. Only what differs is here:
//! framing of requests, and the long-poll, which answers one whole response per wait.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use log::debug;

use super::{Item, Worker};
use crate::history::{ResumeStatus, Retained};
use crate::protocol::http::{self, Head, HttpError};
use crate::protocol::websocket::{self, opcode, WsError, WsEvent};
use crate::protocol::{
    self, binary, fields, json, sse, validate_channel, ChannelKind, ErrorCode, Format,
    HistoryStatus, Resume,
};
use crate::server::channels::Channel;
use crate::server::conn::{PollWait, SseChannel, Subscription, Web, CATCHING_UP};
use crate::server::stats::{Kind, Stats, WorkerCounters};

/// The live-comments demo page, served at `/`.
const DEMO_PAGE: &str = include_str!("../../assets/index.html");
/// The JavaScript client, served at `/fanout.js`.
const JS_CLIENT: &str = include_str!("../../assets/fanout.js");

/// Longest a long-poll may be held, whatever the request asks.
const MAX_POLL_SECS: u64 = 120;
/// Held when the request does not say.
const DEFAULT_POLL_SECS: u64 = 30;
/// Most messages in one long-poll answer (the client asks again from the last one).
const MAX_POLL_MESSAGES: usize = 1000;

/// WebSocket subprotocols, in the server's order of preference when a client offers both.
const SUBPROTOCOLS: [(&str, Format); 2] =
    [("fanout.json", Format::WsJson), ("fanout.binary", Format::WsBinary)];

/// The WebSocket close status for an error that ends a connection.
pub(super) fn close_status(code: ErrorCode) -> u16 {
    match code {
        ErrorCode::FrameTooLarge => websocket::status::TOO_BIG,
        ErrorCode::Unavailable => websocket::status::TRY_AGAIN_LATER,
        ErrorCode::StaleConnection => websocket::status::GOING_AWAY,
        ErrorCode::SlowConsumer => websocket::status::INTERNAL,
        _ => websocket::status::POLICY,
    }
}

/// A metric family: name, kind, help, and its samples (label set, value).
type Family = (String, Kind, String, Vec<(String, u64)>);

/// The JSON body of a long-poll answer.
fn poll_body<'a>(
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
    // ---- HTTP requests ----

    /// Handles every complete request in `input`; returns the bytes consumed. A request that
    /// switches protocols (WebSocket, SSE) hands the rest of the input to the new format.
    pub(super) fn http_input(&mut self, key: usize, input: &[u8]) -> usize {
        let mut at = 0;
        loop {
            let conn = &self.conns[key];
            if !conn.is_open() || conn.input_waits() {
                return at;
            }
            if conn.format != Some(Format::Http) {
                return at + self.parse_and_handle(key, &input[at..]);
            }
            let head = match http::parse_head(&input[at..]) {
                Ok(Some(head)) => head,
                Ok(None) => {
                    // A head in pieces: it has `http_head_timeout` from its first byte.
                    let now = self.now_ms;
                    if let Some(Web::Http { head_since_ms, .. }) =
                        self.conns[key].web.as_deref_mut()
                    {
                        let started = at < input.len();
                        *head_since_ms = if started { head_since_ms.or(Some(now)) } else { None };
                    }
                    return at;
                }
                Err(e) => {
                    let code = match e {
                        HttpError::HeadTooLarge => ErrorCode::HeadersTooLarge,
                        HttpError::Malformed(_) => ErrorCode::BadRequest,
                    };
                    self.http_fatal(key, code, &e.to_string());
                    return input.len();
                }
            };
            if let Some(Web::Http { head_since_ms, .. }) = self.conns[key].web.as_deref_mut() {
                *head_since_ms = None;
            }
            if head.header("transfer-encoding").is_some() {
                self.http_fatal(
                    key,
                    ErrorCode::LengthRequired,
                    "chunked request bodies are not accepted; send a Content-Length",
                );
                return input.len();
            }
            let body_len = match head.header("content-length").map(|v| v.parse::<usize>()) {
                None => 0,
                Some(Ok(len)) => len,
                Some(Err(_)) => {
                    self.http_fatal(key, ErrorCode::BadRequest, "malformed Content-Length");
                    return input.len();
                }
            };
            let max = self.shared.config.max_frame_bytes;
            if body_len > max {
                let why = format!("request body of {body_len} bytes, the limit is {max}");
                self.http_fatal(key, ErrorCode::FrameTooLarge, &why);
                return input.len();
            }
            let end = at + head.len + body_len;
            if input.len() < end {
                // curl and others wait (a second, for curl) for this before sending a body.
                if head.header_has("expect", "100-continue") {
                    if let Some(Web::Http { continued: continued @ false, .. }) =
                        self.conns[key].web.as_deref_mut()
                    {
                        *continued = true;
                        self.reply(key, Bytes::from_static(b"HTTP/1.1 100 Continue\r\n\r\n"));
                    }
                }
                return at;
            }
            if let Some(Web::Http { continued, .. }) = self.conns[key].web.as_deref_mut() {
                *continued = false;
            }
            let body = &input[at + head.len..end];
            at = end;
            self.route(key, &head, body);
        }
    }

    /// A request that cannot be answered in kind: an error response, then the connection closes.
    pub(super) fn http_fatal(&mut self, key: usize, code: ErrorCode, reason: &str) {
        let counters = self.counters();
        WorkerCounters::add(&counters.protocol_errors, 1);
        WorkerCounters::add(&counters.protocol_errors_http, 1);
        debug!("worker {}: bad HTTP request on connection {key}: {reason}", self.id);
        self.begin_close(key, Some((code, reason)), false);
    }

    fn route(&mut self, key: usize, head: &Head, body: &[u8]) {
        WorkerCounters::add(&self.counters().http_requests, 1);
        debug!("worker {}: connection {key}: {} {}", self.id, head.method, head.path);
        if let Some(Web::Http { keep_alive, .. }) = self.conns[key].web.as_deref_mut() {
            *keep_alive = head.keep_alive();
        }
        let echo = self.shared.config.ws_echo;
        let method = head.method.as_str();
        if method == "GET" || method == "HEAD" {
            if let Some(mut response) = self.document(&head.path) {
                if method == "HEAD" {
                    // The same head (Content-Length included), no body.
                    let end = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0);
                    response.truncate(end + 4);
                }
                return self.reply(key, response);
            }
        }
        match (method, head.path.as_str()) {
            ("POST", "/publish") => match head.param("channel") {
                Some(channel) => {
                    let channel = channel.to_vec();
                    self.publish_request(key, &channel, Bytes::copy_from_slice(body), true)
                }
                None => self.refuse(key, ErrorCode::BadRequest, "publish: ?channel= is required"),
            },
            ("GET", "/sse") => self.start_sse(key, head),
            ("GET", "/poll") => self.long_poll(key, head),
            ("GET", "/ws") => self.upgrade(key, head, false),
            ("GET", "/echo") if echo => self.upgrade(key, head, true),
            ("OPTIONS", _) => self.reply(
                key,
                http::response_with(
                    204,
                    "text/plain",
                    "Access-Control-Allow-Methods: GET, POST, OPTIONS\r\nAccess-Control-Allow-Headers: Content-Type, Last-Event-ID\r\nAccess-Control-Max-Age: 86400\r\n",
                    b"",
                ),
            ),
            (_, "/" | "/index.html" | "/fanout.js" | "/favicon.ico" | "/healthz" | "/metrics")
            | (_, "/publish" | "/sse" | "/poll" | "/ws") => {
                let why = format!("{} does not take {}", head.path, head.method);
                self.refuse(key, ErrorCode::MethodNotAllowed, &why)
            }
            _ => {
                let why = format!("no such path: {}", head.path);
                self.refuse(key, ErrorCode::NotFound, &why)
            }
        }
    }

    /// The answer to a GET of a fixed document: the demo page, the client, health, metrics.
    fn document(&self, path: &str) -> Option<Bytes> {
        Some(match path {
            "/" | "/index.html" => {
                http::response(200, "text/html; charset=utf-8", DEMO_PAGE.as_bytes())
            }
            "/fanout.js" => {
                http::response(200, "text/javascript; charset=utf-8", JS_CLIENT.as_bytes())
            }
            // Browsers ask for it on every page; an empty answer keeps their consoles quiet.
            "/favicon.ico" => http::response(204, "image/x-icon", b""),
            "/healthz" => {
                let open = self.shared.open_connections.load(Ordering::Relaxed);
                let body = format!("{{\"status\":\"ok\",\"connections\":{open}}}");
                http::response(200, "application/json", body.as_bytes())
            }
            "/metrics" => {
                let body = self.metrics_text();
                http::response(200, "text/plain; version=0.0.4", body.as_bytes())
            }
            _ => return None,
        })
    }

    // ---- WebSocket ----

    /// Answers `GET /ws` (or `/echo`): checks the handshake (RFC 6455 4.2.1), picks a
    /// subprotocol, and switches the connection to WebSocket.
    fn upgrade(&mut self, key: usize, head: &Head, echo: bool) {
        let problem = if !head.header_has("upgrade", "websocket") {
            Some((ErrorCode::UpgradeRequired, "this endpoint needs a WebSocket upgrade"))
        } else if !head.header_has("connection", "upgrade") || !head.http11 {
            Some((ErrorCode::BadRequest, "an upgrade needs HTTP/1.1 and Connection: Upgrade"))
        } else if head.header("sec-websocket-version") != Some("13") {
            Some((
                ErrorCode::UpgradeRequired,
                "unsupported WebSocket version; this server speaks 13",
            ))
        } else if !head.header("sec-websocket-key").is_some_and(|k| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.decode(k).is_ok_and(|key| key.len() == 16)
        }) {
            Some((ErrorCode::BadRequest, "Sec-WebSocket-Key must be 16 bytes in base64"))
        } else {
            None
        };
        if let Some((code, reason)) = problem {
            WorkerCounters::add(&self.counters().request_errors, 1);
            let body = json::error_object(code.code(), reason);
            let response = http::response_with(
                code.code(),
                "application/json",
                "Sec-WebSocket-Version: 13\r\n",
                &body,
            );
            return self.reply(key, response);
        }
        let accept = websocket::accept_key(head.header("sec-websocket-key").unwrap_or_default());
        // The client's order of preference wins; no offer means JSON (what a bare
        // `new WebSocket(url)` expects).
        let offered = head.header("sec-websocket-protocol");
        let chosen = offered.and_then(|list| {
            list.split(',').map(str::trim).find_map(|name| {
                SUBPROTOCOLS.iter().find(|(known, _)| known.eq_ignore_ascii_case(name))
            })
        });
        let format = chosen.map_or(Format::WsJson, |&(_, format)| format);
        let mut response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
        );
        if let Some((name, _)) = chosen {
            response.push_str(&format!("Sec-WebSocket-Protocol: {name}\r\n"));
        }
        response.push_str("\r\n");
        self.conns[key].web =
            Some(Box::new(Web::WebSocket { decoder: Default::default(), echo, close_sent: false }));
        self.set_format(key, format);
        WorkerCounters::add(&self.counters().websocket_upgrades, 1);
        self.reply(key, Bytes::from(response));
    }

    /// Decodes frames from `input` and acts on each message; returns the bytes consumed.
    pub(super) fn websocket_input(&mut self, key: usize, input: &[u8]) -> usize {
        let max = self.shared.config.max_frame_bytes;
        let mut at = 0;
        loop {
            let conn = &mut self.conns[key];
            if !conn.is_open() || conn.input_waits() {
                return at;
            }
            let Some(Web::WebSocket { decoder, .. }) = conn.web.as_deref_mut() else { return at };
            match decoder.decode(&input[at..], max) {
                Ok(None) => return at,
                Ok(Some((event, used))) => {
                    at += used;
                    if let Some(event) = event {
                        self.websocket_event(key, event);
                    }
                }
                Err(e) => {
                    self.websocket_fail(key, &e);
                    return input.len();
                }
            }
        }
    }

    fn websocket_event(&mut self, key: usize, event: WsEvent) {
        match event {
            WsEvent::Message { text, payload } if self.conns[key].is_echo() => {
                let op = if text { opcode::TEXT } else { opcode::BINARY };
                self.reply(key, websocket::encode_frame(op, &payload));
            }
            WsEvent::Message { text: true, payload } => {
                let request = json::parse_value(&payload);
                match request.as_ref().map_err(Clone::clone).and_then(json::parse_request) {
                    Ok(request) => self.handle(key, request),
                    Err(e) => self.protocol_error(key, &e),
                }
            }
            WsEvent::Message { text: false, payload } => {
                // A binary message carries one frame of the binary format.
                let max = self.shared.config.max_frame_bytes;
                match binary::parse_request(&payload, max) {
                    Ok(Some((request, used))) if used == payload.len() => self.handle(key, request),
                    Ok(_) => self.protocol_error(
                        key,
                        &protocol::ProtocolError::Malformed {
                            what: "binary message: expected exactly one binary-format frame",
                        },
                    ),
                    Err(e) => self.protocol_error(key, &e),
                }
            }
            WsEvent::Ping(payload) => {
                self.reply(key, websocket::encode_frame(opcode::PONG, &payload));
            }
            // Reading it already counted as input (keepalive).
            WsEvent::Pong => {}
            WsEvent::Close { code } => {
                // Echo the status and close the TCP connection once it is out (RFC 6455 5.5.1).
                let frame = match code {
                    Some(code) => websocket::encode_close(code, ""),
                    None => websocket::encode_frame(opcode::CLOSE, b""),
                };
                if let Some(Web::WebSocket { close_sent, .. }) = self.conns[key].web.as_deref_mut()
                {
                    *close_sent = true;
                }
                self.reply(key, frame);
                self.begin_close(key, None, false);
                if let super::Phase::Closing { wait_for_eof, .. } = &mut self.conns[key].phase {
                    *wait_for_eof = false;
                }
            }
        }
    }

    /// A framing violation: a close frame with the RFC's status code, then the connection ends.
    fn websocket_fail(&mut self, key: usize, error: &WsError) {
        let counters = self.counters();
        WorkerCounters::add(&counters.protocol_errors, 1);
        WorkerCounters::add(&counters.protocol_errors_websocket, 1);
        debug!("worker {}: connection {key}: {error}", self.id);
        let conn = &mut self.conns[key];
        if let Some(Web::WebSocket { close_sent, .. }) = conn.web.as_deref_mut() {
            *close_sent = true;
        }
        let frame = websocket::encode_close(error.close_code(), &error.to_string());
        self.out.enqueue(key, conn, frame, usize::MAX);
        self.begin_close(key, None, false);
    }

    // ---- Server-Sent Events ----

    /// Answers `GET /sse?channel=a[&after=N[&epoch=E]]&channel=b…`: `after` (default "now")
    /// and `epoch` belong to the channel before them; `Last-Event-ID` resumes them all.
    fn start_sse(&mut self, key: usize, head: &Head) {
        let now = Resume { after: u64::MAX, epoch: None, strict: false };
        let mut channels: Vec<SseChannel> = Vec::new();
        for (name, value) in &head.query {
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
        if channels.is_empty() {
            return self.refuse(
                key,
                ErrorCode::BadRequest,
                "sse: at least one channel= is required",
            );
        }
        // The browser's own reconnect: the last id it saw is newer than the URL's `after`s. It
        // is a position (`offset@epoch`) on a stream of one channel, and a cursor (every
        // channel's position, in the URL's order; "-" for not known yet) on a stream of several;
        // see `sse_sent`. With the epoch, a log that changed meanwhile is noticed.
        if let Some(last_id) = head.header("last-event-id") {
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
        self.conns[key].web =
            Some(Box::new(Web::Sse { channels, subscribed: 0, cursor_due: false }));
        self.set_format(key, Format::Sse);
        let mut start = BytesMut::from(&http::stream_head("text/event-stream")[..]);
        // Browsers reconnect after this many milliseconds (the default is ~3 s).
        start.put_slice(b"retry: 1000\n\n");
        self.reply(key, start.freeze());
        self.sse_subscribe_pending(key);
    }

    /// Subscribes the stream's channels in order; stops while one replays from history
    /// (`continue_input` calls again when it has finished).
    pub(super) fn sse_subscribe_pending(&mut self, key: usize) {
        loop {
            let Some(conn) = self.conns.get_mut(key) else { return };
            if !conn.is_open() || conn.input_waits() {
                return;
            }
            let Some(Web::Sse { channels, subscribed, .. }) = conn.web.as_deref_mut() else {
                return;
            };
            let Some(next) = channels.get(*subscribed) else { return };
            let (name, resume) = (next.name.clone(), next.resume);
            *subscribed += 1;
            self.subscribe(key, &name, Some(resume));
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
    pub(super) fn sse_sent(&mut self, key: usize, channel: &Channel, offset: u64, position: bool) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let Some(Web::Sse { channels, cursor_due, .. }) = conn.web.as_deref_mut() else { return };
        // One channel: its message events carry the offset already, nothing to keep.
        if channels.len() == 1 && !position {
            return;
        }
        let Some(entry) = channels.iter_mut().find(|c| c.name[..] == channel.name[..]) else {
            return;
        };
        entry.last = Some((offset, channel.epoch));
        if !*cursor_due {
            *cursor_due = true;
            self.sse_cursors_due.push(key);
        }
    }

    /// Queues the cursor event of every stream whose positions moved this turn.
    pub(super) fn emit_sse_cursors(&mut self) {
        for key in std::mem::take(&mut self.sse_cursors_due) {
            self.emit_sse_cursor(key);
        }
    }

    fn emit_sse_cursor(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key).filter(|c| c.is_open()) else { return };
        let Some(Web::Sse { channels, cursor_due, .. }) = conn.web.as_deref_mut() else { return };
        if !std::mem::take(cursor_due) {
            return;
        }
        let mut cursor = BytesMut::with_capacity(8 + 38 * channels.len());
        cursor.put_slice(b"id:");
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
        if !self.out.enqueue(key, conn, cursor.freeze(), cap) {
            self.close_slow();
        }
    }

    // ---- long-poll ----

    /// Answers `GET /poll?channel=C[&from=N][&epoch=E][&timeout=S]` at once with the retained
    /// messages after `from`, or holds it until one is published or the timeout passes.
    fn long_poll(&mut self, key: usize, head: &Head) {
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
        // Each parameter is optional, and refused when present but malformed.
        let from = head.param("from").map_or(Some(None), |f| fields::number(f).map(Some));
        let epoch = head.param("epoch").map_or(Some(None), fields::epoch);
        let timeout = head.param("timeout").map_or(Some(DEFAULT_POLL_SECS), fields::number);
        let (Some(from), Some(epoch), Some(timeout)) = (from, epoch, timeout) else {
            return self.refuse(
                key,
                ErrorCode::BadRequest,
                "poll: from, epoch or timeout malformed",
            );
        };
        let channel = match self.channel(&name) {
            Ok(channel) => channel,
            Err(why) => return self.refuse(key, ErrorCode::LimitReached, &why),
        };
        let registry = &self.shared.channels;
        let mut page: Vec<Retained> = Vec::new();
        let (bounds, status, after) = {
            let mut log = channel.lock_log();
            let dropped = log.trim(self.wall_ms(), &registry.history, &registry.retained);
            WorkerCounters::add(&self.shared.counters[self.id].history_dropped, dropped as u64);
            let (first, last) = (log.first_retained(), log.last_offset());
            let status = from.map_or(ResumeStatus::Ok, |from| log.resume_status(from, epoch));
            let after = match from {
                None => last,
                Some(from) if status == ResumeStatus::Ok => from,
                Some(_) => first - 1,
            };
            let max_bytes = self.shared.config.write_queue_cap_bytes / 4;
            log.read_after(after, MAX_POLL_MESSAGES, max_bytes, &mut page);
            ((log.epoch, first, last), status, after)
        };
        if status != ResumeStatus::Ok {
            WorkerCounters::add(&self.counters().offsets_expired, 1);
        }
        if !page.is_empty() || status != ResumeStatus::Ok || timeout == 0 {
            let messages = page.iter().map(|m| (m.offset, &m.payload[..]));
            let (epoch, first, last) = bounds;
            let history = HistoryStatus { channel: &channel.name, epoch, first, last, status };
            let body = poll_body(&history, messages);
            WorkerCounters::add(&self.counters().long_polls, 1);
            WorkerCounters::add(&self.counters().messages_out, page.len() as u64);
            return self.reply(key, http::response(200, "application/json", &body));
        }
        // Wait as a catching-up subscriber: the ring brings every message after `after`.
        let deadline_ms = self.now_ms.wrapping_add((timeout.min(MAX_POLL_SECS) * 1000) as u32);
        self.index.add_catching_up(channel.id, key, after);
        let conn = &mut self.conns[key];
        conn.push_subscription(Subscription { channel: channel.clone(), position: CATCHING_UP });
        if let Some(Web::Http { poll, .. }) = conn.web.as_deref_mut() {
            *poll = Some(PollWait { channel, deadline_ms });
        }
    }

    /// Answers a held long-poll with `fresh` messages (none at its deadline), and lets the
    /// connection's next request in.
    pub(super) fn answer_poll(&mut self, key: usize, fresh: &[&Item]) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let Some(Web::Http { poll, .. }) = conn.web.as_deref_mut() else { return };
        let Some(wait) = poll.take() else { return };
        let channel = wait.channel;
        if let Some(i) = conn.subscriptions.iter().position(|s| Arc::ptr_eq(&s.channel, &channel)) {
            let subscription = conn.subscriptions.swap_remove(i);
            self.detach_one(key, subscription);
        }
        let bounds = {
            let log = channel.lock_log();
            (log.epoch, log.first_retained(), log.last_offset())
        };
        let messages = fresh.iter().take(MAX_POLL_MESSAGES).map(|m| (m.offset, &m.payload[..]));
        let (epoch, first, last) = bounds;
        let status = ResumeStatus::Ok;
        let history = HistoryStatus { channel: &channel.name, epoch, first, last, status };
        let body = poll_body(&history, messages);
        let counters = &self.shared.counters[self.id];
        WorkerCounters::add(&counters.long_polls, 1);
        WorkerCounters::add(&counters.messages_out, fresh.len().min(MAX_POLL_MESSAGES) as u64);
        self.reply(key, http::response(200, "application/json", &body));
        self.unblocked.push(key);
    }

    // ---- metrics ----

    /// Every counter in the Prometheus text format (version 0.0.4), names prefixed `fanout_`,
    /// counters suffixed `_total`; per-protocol connections and per-kind protocol errors are
    /// labels of one family each.
    fn metrics_text(&self) -> String {
        use std::fmt::Write as _;
        let stats = self.shared.stats();
        let mut out = String::with_capacity(8192);
        let mut families: Vec<Family> = Vec::new();
        for ((name, value), (_, kind, help)) in stats.fields().into_iter().zip(Stats::describe()) {
            let protocol = name
                .strip_prefix("connections_")
                .filter(|p| Format::ALL.iter().any(|f| f.label() == *p));
            let (family, label, help) = if let Some(protocol) = protocol {
                (
                    "connections_open",
                    format!("{{protocol=\"{protocol}\"}}"),
                    "Open connections by protocol.",
                )
            } else if let Some(kind) = name.strip_prefix("protocol_errors_") {
                (
                    "protocol_errors_by_kind",
                    format!("{{kind=\"{kind}\"}}"),
                    "Fatal protocol violations by kind.",
                )
            } else {
                (name, String::new(), help)
            };
            let metric = match kind {
                Kind::Counter => format!("fanout_{}_total", family.trim_end_matches("_total")),
                Kind::Gauge | Kind::Peak => format!("fanout_{family}"),
            };
            match families.iter_mut().find(|(m, ..)| *m == metric) {
                Some((.., samples)) => samples.push((label, value)),
                None => {
                    families.push((metric, kind, help.replace('\n', " "), vec![(label, value)]))
                }
            }
        }
        let uptime = self.shared.started.elapsed().as_secs_f64();
        let extra = [
            (
                "fanout_channels",
                "Channels that exist (the broadcast channel included).",
                self.shared.channels.len() as f64,
            ),
            ("fanout_workers", "Reactor threads.", self.shared.config.workers as f64),
            ("fanout_uptime_seconds", "Seconds since the server started.", uptime),
        ];
        for (metric, kind, help, samples) in families {
            let kind = if kind == Kind::Counter { "counter" } else { "gauge" };
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} {kind}");
            for (label, value) in samples {
                let _ = writeln!(out, "{metric}{label} {value}");
            }
        }
        for (metric, help, value) in extra {
            let _ =
                writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} gauge\n{metric} {value}");
        }
        out
    }
}
