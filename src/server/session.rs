//! A connection's protocol session, once its first bytes (or its HTTP request) told which: each
//! protocol's own state, and the answers to what the worker asks of every connection whatever it
//! speaks (sozu's model): may held input now be complete (`may_complete`), what frame ends it
//! (`goodbye`), which of its deadlines comes next (`deadline`).
//!
//! fanout's own text and binary clients have no session (`Conn::session` is `None`): their codec
//! (`protocol::Format`) is all their state, and an idle TCP client costs no allocation for it.
//!
//! `Format` stays beside the session as the *delivery* codec: fan-out builds one frame per
//! channel per turn per format in use, so whatever changes the bytes a subscriber receives is a
//! format (a Redis client that took SSUBSCRIBE receives `smessage` frames: `Resp2Sharded`), and
//! whatever only changes how a connection reads or closes is session state.
//!
//! Where a new protocol goes: a variant here (its state and its three answers), its input
//! handler in `server/worker/` (the worker dispatches input on `Session::kind`: one arm in
//! `Worker::parse_and_handle`, and one in `resume_input` if a wait can leave it work to go on
//! with), and, if it has a delivery codec, a `Format` with its encoders.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::protocol::websocket::{self, Decoder};
use crate::protocol::{http, ErrorCode, Resume};

/// A connection's protocol state; see the module doc.
#[derive(Debug)]
pub enum Session {
    /// Plain HTTP requests, one after another (keep-alive).
    Http(HttpSession),
    /// After the upgrade.
    WebSocket(WebSocketSession),
    /// A Redis client (RESP).
    Resp(RespSession),
    /// An event stream.
    Sse(SseSession),
}

/// Which protocol a session speaks (what the worker dispatches input on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    /// `Session::Http`.
    Http,
    /// `Session::WebSocket`.
    WebSocket,
    /// `Session::Resp`.
    Resp,
    /// `Session::Sse`.
    Sse,
}

/// Plain HTTP: the request being read and the response's options.
#[derive(Debug, Default)]
pub struct HttpSession {
    /// Keep the connection after the current response.
    pub keep_alive: bool,
    /// `100 Continue` was sent for the request whose body is still arriving.
    pub continued: bool,
    /// Worker-clock milliseconds when the first byte of a head still incomplete arrived.
    pub head_since_ms: Option<u32>,
    /// The request held is complete at this many bytes (its head was read, its body is
    /// arriving): the head is not parsed again until then.
    pub awaiting_body: Option<u32>,
    /// The request held was authorized from its head (its body was too large for a stranger);
    /// `route` does not verify its token again.
    pub authorized: bool,
    /// With `--allowed-origins`: the current request's (allowed) origin, which its response
    /// names in `Access-Control-Allow-Origin` instead of `*`.
    pub origin: Option<Box<str>>,
}

/// WebSocket, after the upgrade.
#[derive(Debug, Default)]
pub struct WebSocketSession {
    /// Frame decoder with any message in progress.
    pub decoder: Decoder,
    /// The `/echo` endpoint (conformance testing): messages come back, no pub/sub.
    pub echo: bool,
    /// A close frame was queued; nothing else goes out after it.
    pub close_sent: bool,
}

/// A Redis client's own state.
#[derive(Debug, Default)]
pub struct RespSession {
    /// CLIENT SETNAME / HELLO SETNAME.
    pub name: Option<Box<[u8]>>,
    /// The channels of a SUBSCRIBE still to be taken once the one being waited for is served
    /// (cluster mode).
    pub pending: VecDeque<Bytes>,
    /// An AUTH inside HELLO: its `+OK` is not sent (HELLO answers for it).
    pub quiet_auth: bool,
    /// The parse of a command arriving in pieces (the one at the start of `Conn::input`).
    pub parser: crate::protocol::resp::CommandParser,
}

/// An event stream, after its request.
#[derive(Debug, Default)]
pub struct SseSession {
    /// The request's wildcard patterns not subscribed yet (each may wait for the cluster).
    pub patterns: Vec<Box<[u8]>>,
    /// The request's channels, in its order.
    pub channels: Vec<SseChannel>,
    /// How many of them are subscribed (in order: each replay from history must finish before
    /// the next begins).
    pub subscribed: usize,
    /// Positions moved this turn: the stream gets one cursor event at the end of the turn.
    pub cursor_due: bool,
}

/// A channel of an event stream.
#[derive(Debug)]
pub struct SseChannel {
    /// Its name.
    pub name: Vec<u8>,
    /// Where the request asked to start.
    pub resume: Resume,
    /// The last position sent on the stream, (offset, epoch), or the one it started from, once
    /// known.
    pub last: Option<(u64, u64)>,
}

/// A session's own deadline (besides those every connection has: lingering closes, handshakes,
/// authentication, idle queues).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionDeadline {
    /// An HTTP request head is taking too long (since the worker-clock time given).
    HeadSince(u32),
    /// A keep-alive HTTP connection idle since its last input is closed.
    IdleClose,
    /// An event stream silent since its last write gets a heartbeat.
    Heartbeat,
    /// None: Redis clients are neither pinged nor timed out (Redis's `timeout 0`).
    Never,
}

impl Session {
    /// Its protocol.
    pub fn kind(&self) -> SessionKind {
        match self {
            Session::Http(_) => SessionKind::Http,
            Session::WebSocket(_) => SessionKind::WebSocket,
            Session::Resp(_) => SessionKind::Resp,
            Session::Sse(_) => SessionKind::Sse,
        }
    }

    /// A fresh HTTP session (the first request is being read).
    pub fn http() -> Self {
        Session::Http(HttpSession { keep_alive: true, ..Default::default() })
    }

    /// Whether `input`, of which the first `searched` bytes were held as an incomplete frame,
    /// may now hold a complete one (or one past the limit). False only where that is cheap to
    /// tell: an HTTP head without its blank line, or a body still short. The other protocols go
    /// on from where they stopped by themselves (WebSocket lengths come first; RESP keeps its
    /// parse state).
    pub fn may_complete(&self, input: &[u8], searched: usize) -> bool {
        let Session::Http(http) = self else { return true };
        match http.awaiting_body {
            Some(end) => input.len() >= end as usize,
            None => {
                // httparse takes `\n\n` as well as `\r\n\r\n`; either may straddle the bytes
                // held and the bytes that came.
                let from = searched.saturating_sub(3);
                input.len() > http::MAX_HEAD_BYTES
                    || input[from..].windows(2).any(|w| w == b"\n\n")
                    || input[from..].windows(3).any(|w| w == b"\n\r\n")
            }
        }
    }

    /// Notes that a close frame was queued (a WebSocket's own: an echo, a framing violation's
    /// status): `goodbye` sends none after it.
    pub fn close_sent(&mut self) {
        if let Session::WebSocket(ws) = self {
            ws.close_sent = true;
        }
    }

    /// The frame that ends the session when the server closes it, if its protocol has one:
    /// WebSocket's close frame, once, with a status that says why (`error`; none: shutdown).
    pub fn goodbye(&mut self, error: Option<(ErrorCode, &str)>) -> Option<Bytes> {
        let Session::WebSocket(ws) = self else { return None };
        if std::mem::replace(&mut ws.close_sent, true) {
            return None;
        }
        let (status, reason) = match error {
            Some((code, reason)) => (websocket::close_status(code), reason),
            None => (websocket::status::GOING_AWAY, "server shutting down"),
        };
        Some(websocket::encode_close(status, reason))
    }

    /// The session's own next deadline, if its protocol replaces the keepalive PING (which a
    /// WebSocket client answers like a TCP one: `None`).
    pub fn deadline(&self) -> Option<SessionDeadline> {
        match self {
            Session::Http(HttpSession { head_since_ms: Some(since), .. }) => {
                Some(SessionDeadline::HeadSince(*since))
            }
            Session::Http(_) => Some(SessionDeadline::IdleClose),
            Session::Sse(_) => Some(SessionDeadline::Heartbeat),
            Session::Resp(_) => Some(SessionDeadline::Never),
            Session::WebSocket(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http_head_is_complete_only_past_its_blank_line() {
        let session = Session::http();
        assert!(!session.may_complete(b"GET / HTTP/1.1\r\nHost: x\r\n", 0));
        // The blank line straddles what was held (searched) and what came.
        assert!(session.may_complete(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 25));
        let body = HttpSession { awaiting_body: Some(10), ..Default::default() };
        assert!(!Session::Http(body).may_complete(b"123", 0));
        assert!(Session::Resp(RespSession::default()).may_complete(b"*1", 0), "RESP goes on");
    }

    #[test]
    fn a_websocket_says_goodbye_once() {
        let mut session = Session::WebSocket(WebSocketSession::default());
        let frame = session.goodbye(Some((ErrorCode::SlowConsumer, "too slow"))).expect("a close");
        assert_eq!(frame[0], 0x88, "FIN + close opcode");
        assert!(session.goodbye(None).is_none(), "once");
        assert!(Session::http().goodbye(None).is_none(), "HTTP has no closing frame");
    }
}
