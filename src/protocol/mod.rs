//! Wire formats. Pure codecs over byte slices: no sockets, no allocation beyond the frames they
//! return, unit-tested at every split point.
//!
//! Every format carries the same command set (see `Request` and `ServerFrame`). A connection's
//! format is sniffed from its first bytes (`sniff`): the binary preface starts with a NUL byte,
//! which no text command does.
//!
//! Decoders have the shape `parse(&[u8]) -> Result<Option<(T, consumed)>, ProtocolError>`:
//! `Ok(None)` means "incomplete, nothing consumed"; an oversize length is rejected as soon as the
//! header is read, before anything is buffered.

pub mod binary;
pub mod fields;
pub mod glob;
pub mod http;
pub mod json;
pub mod presence;
pub mod resp;
pub mod sse;
pub mod text;
pub mod websocket;

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};

/// Longest channel name, in bytes; it fits the binary format's one-byte length field.
pub const MAX_CHANNEL_BYTES: usize = 255;

/// A client's command, borrowed from the input buffer where possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// Start receiving the channel's messages; with `resume`, first every retained message after
    /// `resume.after`.
    Subscribe {
        /// Channel name (validated by the server, not the codec).
        channel: &'a [u8],
        /// Where to resume from, if anywhere.
        resume: Option<Resume>,
    },
    /// Stop receiving the channel's messages.
    Unsubscribe {
        /// Channel name.
        channel: &'a [u8],
    },
    /// Publish `payload` to `channel` (`*` broadcasts, `@name` sends to one named client).
    Publish {
        /// Channel name.
        channel: &'a [u8],
        /// Opaque bytes (owned only when the text format had escapes to undo).
        payload: Cow<'a, [u8]>,
    },
    /// Publish and be told the assigned offset (`ServerFrame::Ack`) once the message is
    /// retained, and on disk when the server runs with `--fsync always`.
    PublishAcked {
        /// Channel name.
        channel: &'a [u8],
        /// Opaque bytes.
        payload: Cow<'a, [u8]>,
    },
    /// Barrier: answered with `Pong` once every earlier command of this connection took effect.
    Ping,
    /// The answer to a server `Ping` (keepalive).
    Pong,
    /// Receive the messages of every topic channel matching `pattern` (`*` one token, `>` the
    /// rest), each with its own channel name and offset.
    PatternSubscribe {
        /// The pattern (validated by the server).
        pattern: &'a [u8],
    },
    /// Stop a pattern subscription.
    PatternUnsubscribe {
        /// The pattern, as subscribed.
        pattern: &'a [u8],
    },
    /// Present a token (or the API key): what the connection may do from now on.
    Auth {
        /// The token, as sent.
        token: &'a [u8],
    },
    /// Claim a unique client name; messages published to `@name` reach this connection.
    Name {
        /// The name, without the `@`.
        name: &'a [u8],
    },
    /// Who is subscribed to a channel (`stats_only`: only how many clients and users).
    Presence {
        /// Channel name.
        channel: &'a [u8],
        /// Answer the counts without the members (`PRESENCE_STATS`).
        stats_only: bool,
    },
    /// An empty text line: ignored (people press Enter in `nc`).
    Noop,
}

/// A subscription that resumes from an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// The last offset the client saw (0: from the earliest retained; `u64::MAX`: from now,
    /// replaying nothing, to learn the epoch and latest offset).
    pub after: u64,
    /// The epoch of the log that offset belongs to (`None`: whatever the log is now).
    pub epoch: Option<u64>,
    /// Refuse (ERR 410) instead of starting from the earliest retained when messages are gone.
    pub strict: bool,
}

/// Which command an `Ok` acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// `Subscribe` took effect.
    Subscribe,
    /// `Unsubscribe` took effect.
    Unsubscribe,
    /// `Name` was granted.
    Name,
    /// `Auth` was accepted (the argument is the token's subject, or `-`).
    Auth,
    /// `PatternSubscribe` took effect.
    PatternSubscribe,
    /// `PatternUnsubscribe` took effect.
    PatternUnsubscribe,
}

impl Ack {
    /// The text format's word for it (also the command's word).
    pub fn word(self) -> &'static str {
        match self {
            Ack::Subscribe => "SUB",
            Ack::Unsubscribe => "UNSUB",
            Ack::Name => "NAME",
            Ack::Auth => "AUTH",
            Ack::PatternSubscribe => "PSUB",
            Ack::PatternUnsubscribe => "PUNSUB",
        }
    }
}

/// What a resuming subscriber is told about a channel's log (HIST): its epoch, the earliest
/// retained and latest offsets, and whether the requested offset could be honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryStatus<'a> {
    /// Channel name.
    pub channel: &'a [u8],
    /// The log's epoch.
    pub epoch: u64,
    /// Earliest retained offset (last + 1 when nothing is retained).
    pub first: u64,
    /// Latest offset of the channel.
    pub last: u64,
    /// Ok, expired or epoch.
    pub status: crate::history::ResumeStatus,
}

/// A server frame as a client decodes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFrame<'a> {
    /// A message of a channel, with its offset in that channel.
    Message {
        /// Channel name.
        channel: Cow<'a, [u8]>,
        /// Offset within the channel: starts at 1, grows by one per message.
        offset: u64,
        /// Opaque bytes.
        payload: Cow<'a, [u8]>,
    },
    /// A command was acknowledged.
    Ok {
        /// Which command.
        ack: Ack,
        /// Its argument (channel or name).
        arg: Cow<'a, [u8]>,
    },
    /// An error; fatal ones are followed by the server closing the connection.
    Error {
        /// Numeric code, see `ErrorCode`.
        code: u16,
        /// Human-readable reason.
        reason: Cow<'a, str>,
    },
    /// Answer to a resuming subscribe, before the replay: the channel log's epoch, first and
    /// last retained offsets, and whether the requested offset could be honoured.
    History {
        /// Channel name.
        channel: Cow<'a, [u8]>,
        /// The log's epoch.
        epoch: u64,
        /// Earliest retained offset (last + 1 when nothing is retained).
        first: u64,
        /// Latest offset of the channel.
        last: u64,
        /// Ok, expired or epoch.
        status: crate::history::ResumeStatus,
    },
    /// An acknowledged publish was retained (and persisted, with `--fsync always`).
    Ack {
        /// Channel name.
        channel: Cow<'a, [u8]>,
        /// The offset the message got.
        offset: u64,
    },
    /// One member of a channel, in the answer to `Presence` (before its `Presence` frame).
    Member {
        /// Channel name.
        channel: Cow<'a, [u8]>,
        /// The member's client id.
        client: Cow<'a, str>,
        /// Its user (empty: none).
        user: Cow<'a, str>,
        /// Its node.
        node: Cow<'a, str>,
        /// Its info, a JSON object.
        info: Cow<'a, str>,
    },
    /// The end of a presence answer (after its members), or the answer to `PRESENCE_STATS`.
    Presence {
        /// Channel name.
        channel: Cow<'a, [u8]>,
        /// Subscribed connections.
        clients: u64,
        /// Distinct users among them (the anonymous count as one).
        users: u64,
    },
    /// A member joined a channel this connection is subscribed to (`--join-leave`).
    Join {
        /// Channel name.
        channel: Cow<'a, [u8]>,
        /// The member's client id.
        client: Cow<'a, str>,
        /// Its user.
        user: Cow<'a, str>,
        /// Its info, a JSON object.
        info: Cow<'a, str>,
    },
    /// A member left.
    Leave {
        /// Channel name.
        channel: Cow<'a, [u8]>,
        /// The member's client id.
        client: Cow<'a, str>,
        /// Its user.
        user: Cow<'a, str>,
    },
    /// The server took this connection out of a channel (the server API's unsubscribe).
    Unsubscribed {
        /// Channel name.
        channel: Cow<'a, [u8]>,
        /// Why.
        reason: Cow<'a, str>,
    },
    /// Keepalive; answer with `Pong`.
    Ping,
    /// Answer to a client `Ping`.
    Pong,
}

/// The wire format of one connection, known after sniffing (and, for the browser formats, after
/// the HTTP request that chose them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Text lines (`nc`-friendly).
    Text = 0,
    /// Length-prefixed binary frames after a preface.
    Binary = 1,
    /// WebSocket, subprotocol `fanout.json`: JSON objects in text frames (`json`).
    WsJson = 2,
    /// WebSocket, subprotocol `fanout.binary`: one binary-format frame per binary message.
    WsBinary = 3,
    /// Server-Sent Events (`sse`): a one-way stream of events.
    Sse = 4,
    /// Plain HTTP requests (publish, long-poll, metrics, pages); each reply is a whole response.
    Http = 5,
    /// Redis's RESP2 (`resp`): any Redis client library, messages as `message` arrays.
    Resp2 = 6,
    /// RESP3 (after `HELLO 3`): messages as push frames.
    Resp3 = 7,
    /// RESP2 for a connection that took SSUBSCRIBE: messages as `smessage` arrays.
    Resp2Sharded = 8,
    /// RESP3 with SSUBSCRIBE: `smessage` pushes.
    Resp3Sharded = 9,
}

/// Wraps JSON in a WebSocket text frame.
fn ws_text(json: &[u8]) -> Bytes {
    websocket::encode_frame(websocket::opcode::TEXT, json)
}

/// Wraps a binary-format frame in a WebSocket binary frame.
fn ws_binary(frame: &[u8]) -> Bytes {
    websocket::encode_frame(websocket::opcode::BINARY, frame)
}

impl Format {
    /// Number of formats, for per-format frame caches.
    pub const COUNT: usize = 10;

    /// Every format, for per-format loops.
    pub const ALL: [Format; Format::COUNT] = [
        Format::Text,
        Format::Binary,
        Format::WsJson,
        Format::WsBinary,
        Format::Sse,
        Format::Http,
        Format::Resp2,
        Format::Resp3,
        Format::Resp2Sharded,
        Format::Resp3Sharded,
    ];

    /// Whether messages stream to connections of this format (all but plain HTTP requests, which
    /// get whole responses; see the long-poll in the worker).
    pub const fn streams(self) -> bool {
        !matches!(self, Format::Http)
    }

    /// Whether every connection of this format receives the broadcast channel `*`: not Redis
    /// clients, which receive exactly what they subscribed to, as from Redis.
    pub const fn receives_broadcasts(self) -> bool {
        self.streams() && !self.is_resp()
    }

    /// RESP2 or RESP3.
    pub const fn is_resp(self) -> bool {
        matches!(self, Format::Resp2 | Format::Resp3 | Format::Resp2Sharded | Format::Resp3Sharded)
    }

    /// A Redis client that took SSUBSCRIBE.
    pub const fn is_sharded(self) -> bool {
        matches!(self, Format::Resp2Sharded | Format::Resp3Sharded)
    }

    /// RESP3, sharded or not.
    pub const fn is_resp3(self) -> bool {
        matches!(self, Format::Resp3 | Format::Resp3Sharded)
    }

    /// The RESP format of a connection with (`sharded`) or without SSUBSCRIBE subscriptions.
    pub const fn resp(resp3: bool, sharded: bool) -> Format {
        match (resp3, sharded) {
            (false, false) => Format::Resp2,
            (true, false) => Format::Resp3,
            (false, true) => Format::Resp2Sharded,
            (true, true) => Format::Resp3Sharded,
        }
    }

    /// The name used in metrics labels.
    pub fn label(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Binary => "binary",
            Format::WsJson => "websocket_json",
            Format::WsBinary => "websocket_binary",
            Format::Sse => "sse",
            Format::Http => "http",
            Format::Resp2 => "resp2",
            Format::Resp3 => "resp3",
            Format::Resp2Sharded => "resp2_sharded",
            Format::Resp3Sharded => "resp3_sharded",
        }
    }

    /// Encodes a channel message in this format (`epoch`: its channel's; only event streams
    /// carry it, in every event id).
    pub fn encode_message(self, channel: &[u8], epoch: u64, offset: u64, payload: &[u8]) -> Bytes {
        match self {
            Format::Text => text::encode_message(channel, offset, payload),
            Format::Binary => binary::encode_message(channel, offset, payload),
            _ => {
                let mut out = BytesMut::new();
                self.put_message(&mut out, channel, epoch, offset, payload);
                out.freeze()
            }
        }
    }

    /// Appends a channel message in this format to `out`.
    pub fn put_message(
        self,
        out: &mut BytesMut,
        channel: &[u8],
        epoch: u64,
        offset: u64,
        payload: &[u8],
    ) {
        match self {
            Format::Text => text::put_message(out, channel, offset, payload),
            Format::Binary => binary::put_message(out, channel, offset, payload),
            Format::WsJson => {
                // The JSON's length is known only once written: leave room for the most common
                // header (4 bytes), then move the body if the header turns out shorter or longer.
                let start = out.len();
                out.put_slice(&[0; 4]);
                json::put_message(out, channel, offset, payload);
                let len = out.len() - start - 4;
                let header = websocket::header_len(len);
                if header < 4 {
                    out.copy_within(start + 4.., start + header);
                    out.truncate(out.len() - (4 - header));
                } else if header > 4 {
                    out.resize(out.len() + header - 4, 0);
                    out.copy_within(start + 4..start + 4 + len, start + header);
                }
                let mut head = BytesMut::with_capacity(header);
                websocket::put_header(&mut head, websocket::opcode::TEXT, len);
                out[start..start + header].copy_from_slice(&head);
            }
            Format::WsBinary => {
                let len = binary::message_len(channel, payload);
                websocket::put_header(out, websocket::opcode::BINARY, len);
                binary::put_message(out, channel, offset, payload);
            }
            Format::Sse => sse::put_message(out, channel, epoch, offset, payload),
            Format::Http => {
                json::put_message(out, channel, offset, payload);
                out.put_u8(b'\n');
            }
            Format::Resp2 => resp::put_message(out, channel, payload, false),
            Format::Resp3 => resp::put_message(out, channel, payload, true),
            Format::Resp2Sharded => resp::put_smessage(out, channel, payload, false),
            Format::Resp3Sharded => resp::put_smessage(out, channel, payload, true),
        }
    }

    /// Encodes an acknowledgement.
    pub fn encode_ok(self, ack: Ack, arg: &[u8]) -> Bytes {
        match self {
            Format::Text => text::encode_ok(ack, arg),
            Format::Binary => binary::encode_ok(ack, arg),
            Format::WsJson => ws_text(&json::ok(ack, arg)),
            Format::WsBinary => ws_binary(&binary::encode_ok(ack, arg)),
            Format::Sse => sse::comment(&format!(
                "ok {} {}",
                ack.word().to_ascii_lowercase(),
                String::from_utf8_lossy(arg)
            ))
            .freeze(),
            Format::Http => http::response(200, "application/json", &json::ok(ack, arg)),
            // Redis clients get `+OK`; subscriptions are answered with their counts by the
            // worker's RESP front end.
            Format::Resp2 | Format::Resp3 | Format::Resp2Sharded | Format::Resp3Sharded => {
                Bytes::from_static(b"+OK\r\n")
            }
        }
    }

    /// Encodes a history status (the answer to a resuming subscribe).
    pub fn encode_history(self, history: &HistoryStatus<'_>) -> Bytes {
        match self {
            Format::Text => text::encode_history(history),
            Format::Binary => binary::encode_history(history),
            Format::WsJson => ws_text(&json::history(history)),
            Format::WsBinary => ws_binary(&binary::encode_history(history)),
            Format::Sse => sse::history(history).freeze(),
            Format::Http => http::response(200, "application/json", &json::history(history)),
            // Redis clients know nothing of offsets or epochs.
            Format::Resp2 | Format::Resp3 | Format::Resp2Sharded | Format::Resp3Sharded => {
                Bytes::new()
            }
        }
    }

    /// Encodes a publish acknowledgement.
    pub fn encode_ack(self, channel: &[u8], offset: u64) -> Bytes {
        match self {
            Format::Text => text::encode_ack(channel, offset),
            Format::Binary => binary::encode_ack(channel, offset),
            Format::WsJson => ws_text(&json::ack(channel, offset)),
            Format::WsBinary => ws_binary(&binary::encode_ack(channel, offset)),
            Format::Sse => sse::comment(&format!("ack {offset}")).freeze(),
            // The answer to `POST /publish`.
            Format::Http => {
                http::response(200, "application/json", &json::ack_object(channel, offset))
            }
            Format::Resp2 | Format::Resp3 | Format::Resp2Sharded | Format::Resp3Sharded => {
                let mut out = BytesMut::new();
                resp::put_integer(&mut out, offset as i64);
                out.freeze()
            }
        }
    }

    /// Encodes an error frame.
    pub fn encode_error(self, code: ErrorCode, detail: &str) -> Bytes {
        match self {
            Format::Text => text::encode_error(code, detail),
            Format::Binary => binary::encode_error(code, detail),
            Format::WsJson => ws_text(&json::error(code.code(), detail)),
            Format::WsBinary => ws_binary(&binary::encode_error(code, detail)),
            Format::Sse => sse::error(code.code(), detail).freeze(),
            Format::Http => http::error_response(code.code(), detail),
            Format::Resp2 | Format::Resp3 | Format::Resp2Sharded | Format::Resp3Sharded => {
                let mut out = BytesMut::new();
                resp::put_error(&mut out, &resp::error_text(code, detail));
                out.freeze()
            }
        }
    }

    /// The server's keepalive ping (a WebSocket ping frame on WebSocket, which browsers answer
    /// by themselves; a comment on SSE, which cannot be answered).
    pub fn ping(self) -> Bytes {
        match self {
            Format::Text => Bytes::from_static(b"PING\r\n"),
            Format::Binary => Bytes::from_static(&[0, 0, 0, 1, binary::op::PING]),
            Format::WsJson | Format::WsBinary => {
                Bytes::from_static(&[0x80 | websocket::opcode::PING, 0])
            }
            Format::Sse => Bytes::from_static(b": ping\n\n"),
            // Redis never pings its clients (they ping, if they care).
            Format::Http
            | Format::Resp2
            | Format::Resp3
            | Format::Resp2Sharded
            | Format::Resp3Sharded => Bytes::new(),
        }
    }

    /// The answer to a client's ping.
    pub fn pong(self) -> Bytes {
        match self {
            Format::Text => Bytes::from_static(b"PONG\r\n"),
            Format::Binary => Bytes::from_static(&[0, 0, 0, 1, binary::op::PONG]),
            Format::WsJson => ws_text(b"{\"op\":\"pong\"}"),
            Format::WsBinary => ws_binary(&[0, 0, 0, 1, binary::op::PONG]),
            Format::Sse => Bytes::from_static(b": pong\n\n"),
            Format::Http => http::response(200, "application/json", b"{\"op\":\"pong\"}"),
            Format::Resp2 | Format::Resp3 | Format::Resp2Sharded | Format::Resp3Sharded => {
                Bytes::from_static(b"+PONG\r\n")
            }
        }
    }

    /// Decodes one client request of the TCP formats. Other formats frame their requests
    /// themselves (WebSocket messages, HTTP requests) and are decoded by the worker.
    pub fn parse_request(
        self,
        input: &[u8],
        max_frame_bytes: usize,
    ) -> Result<Option<(Request<'_>, usize)>, ProtocolError> {
        match self {
            Format::Text => text::parse_request(input, max_frame_bytes),
            Format::Binary => binary::parse_request(input, max_frame_bytes),
            _ => Err(ProtocolError::Malformed { what: "request in a non-stream format" }),
        }
    }
}

/// What the first bytes of a connection say about its format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// Not enough bytes yet.
    NeedMore,
    /// The binary preface, which is this many bytes long and consumed.
    Binary(usize),
    /// An HTTP request line.
    Http,
    /// A RESP array (`*`): a Redis client.
    Resp,
    /// Anything else is text.
    Text,
}

/// Tells the format from the first bytes. The binary preface starts with NUL; text never does;
/// an HTTP method and a space is HTTP (no text command is spelled like one).
pub fn sniff(input: &[u8]) -> Result<Sniffed, ProtocolError> {
    match input.first() {
        None => Ok(Sniffed::NeedMore),
        Some(&first) if first == binary::PREFACE[0] => {
            let n = input.len().min(binary::PREFACE.len());
            if input[..n] != binary::PREFACE[..n] {
                Err(ProtocolError::BadPreface)
            } else if n < binary::PREFACE.len() {
                Ok(Sniffed::NeedMore)
            } else {
                Ok(Sniffed::Binary(binary::PREFACE.len()))
            }
        }
        Some(b'*') => Ok(Sniffed::Resp),
        Some(_) => Ok(match http::looks_like_http(input) {
            None => Sniffed::NeedMore,
            Some(true) => Sniffed::Http,
            Some(false) => Sniffed::Text,
        }),
    }
}

/// Numeric error codes sent in `ERR` frames. Modelled on HTTP's so that they read familiar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// Malformed frame or line, unknown command or opcode, bad preface. Fatal.
    BadRequest = 400,
    /// No valid token: authenticate first (AUTH), or the token was refused or expired. Fatal
    /// when authentication timed out, failed too often, or the token expired.
    Unauthorized = 401,
    /// The command is not allowed on this channel (subscribing to `*` or to another's `@inbox`),
    /// or the connection's permissions do not cover it. Nothing changed; the connection stays.
    Forbidden = 403,
    /// No connected client has that name (or, over HTTP, no such path).
    NotFound = 404,
    /// HTTP: the path does not take this method.
    MethodNotAllowed = 405,
    /// The client stayed silent past the ping timeout. Fatal.
    StaleConnection = 408,
    /// The name is taken, or this connection already has one, or it is already subscribed.
    Conflict = 409,
    /// A strict resume asked for messages that are no longer retained (or another epoch's).
    Gone = 410,
    /// HTTP: a request body without a Content-Length (chunked bodies are not taken).
    LengthRequired = 411,
    /// Frame or line longer than the server's maximum. Fatal.
    FrameTooLarge = 413,
    /// Channel or client name is empty, too long, or has spaces, control bytes or invalid UTF-8.
    InvalidName = 422,
    /// HTTP: `/ws` without a valid WebSocket upgrade (version 13).
    UpgradeRequired = 426,
    /// A per-connection or server-wide count limit was reached (subscriptions, channels), or a
    /// rate limit (publishes or subscribes per second): the command was not carried out.
    LimitReached = 429,
    /// HTTP: the request head is over its size or header-count limit. Fatal.
    HeadersTooLarge = 431,
    /// An acknowledged publish could not be made durable (`--fsync always`): its record's write
    /// or fsync failed, or the channel's storage is failing. Nothing was acknowledged; the
    /// publish may be retried once storage works again.
    StorageFailed = 500,
    /// Not available in this server's configuration (wildcard subscriptions over a Redis
    /// Cluster). Nothing changed; the connection stays.
    NotImplemented = 501,
    /// The server is full (max connections) or shutting down (fatal), or, in a cluster, Redis
    /// is unreachable (a publish is refused, the connection stays).
    Unavailable = 503,
    /// The client did not read fast enough and its write queue passed the cap. Fatal.
    SlowConsumer = 507,
}

impl ErrorCode {
    /// The numeric code on the wire.
    pub fn code(self) -> u16 {
        self as u16
    }
}

/// A violation of the wire format. All of them are fatal: the connection gets an error frame
/// saying why, and is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A frame's declared length, or a line without its end, is over the limit.
    #[error("frame too large: {len} bytes, the limit is {max}")]
    FrameTooLarge {
        /// Declared or buffered length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A binary frame declared a length of zero (no room for the opcode).
    #[error("malformed length: a frame must hold at least its opcode")]
    EmptyFrame,
    /// A binary frame with an opcode this server does not know.
    #[error("unknown opcode 0x{0:02x}")]
    UnknownOpcode(u8),
    /// A text line with a command word this server does not know.
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    /// A field does not fit the frame, or a required argument is missing.
    #[error("malformed {what}")]
    Malformed {
        /// Which part of the frame.
        what: &'static str,
    },
    /// Text was required (a reason, a command word) and the bytes are not UTF-8.
    #[error("invalid UTF-8 in {what}")]
    InvalidUtf8 {
        /// Where.
        what: &'static str,
    },
    /// The first byte announced the binary format but the preface did not match.
    #[error("bad binary preface")]
    BadPreface,
}

impl ProtocolError {
    /// The error code sent to the client for this violation.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            _ => ErrorCode::BadRequest,
        }
    }
}

/// What a valid channel name addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// An ordinary channel: subscribe and publish.
    Topic,
    /// `*`: every connection receives it; publish only.
    Broadcast,
    /// `@name`: the inbox of the client that claimed `name`; publish only.
    Inbox,
}

/// Why a channel or client name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Zero bytes.
    #[error("empty name")]
    Empty,
    /// Over `MAX_CHANNEL_BYTES`.
    #[error("name longer than {MAX_CHANNEL_BYTES} bytes")]
    TooLong,
    /// A space, tab, other control byte, or DEL.
    #[error("name contains a space or control character")]
    SpaceOrControl,
    /// Not UTF-8.
    #[error("name is not valid UTF-8")]
    InvalidUtf8,
    /// A client name with a wildcard token (`*`, `>`): permissions would read its inbox
    /// (`@*`) as every inbox.
    #[error("a client name may not have a wildcard token (* or >)")]
    Wildcard,
}

/// Checks a channel name: 1 to 255 bytes of UTF-8 with no spaces or control characters. Returns
/// what it addresses.
pub fn validate_channel(name: &[u8]) -> Result<ChannelKind, NameError> {
    validate_name(name, MAX_CHANNEL_BYTES)?;
    Ok(match name {
        b"*" => ChannelKind::Broadcast,
        [b'@', _, ..] => ChannelKind::Inbox,
        _ => ChannelKind::Topic,
    })
}

/// Checks a client name: like a channel name, one byte shorter (its inbox is `@name`), it may
/// not itself start with `@`, and none of its dot-separated tokens is a wildcard.
pub fn validate_client_name(name: &[u8]) -> Result<(), NameError> {
    validate_name(name, MAX_CHANNEL_BYTES - 1)?;
    if name[0] == b'@' {
        return Err(NameError::SpaceOrControl);
    }
    if name.split(|&b| b == b'.').any(|token| token == b"*" || token == b">") {
        return Err(NameError::Wildcard);
    }
    Ok(())
}

fn validate_name(name: &[u8], max: usize) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > max {
        return Err(NameError::TooLong);
    }
    if name.iter().any(|&b| b <= b' ' || b == 0x7f) {
        return Err(NameError::SpaceOrControl);
    }
    if std::str::from_utf8(name).is_err() {
        return Err(NameError::InvalidUtf8);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names() {
        assert_eq!(validate_channel(b"news"), Ok(ChannelKind::Topic));
        assert_eq!(validate_channel(b"*"), Ok(ChannelKind::Broadcast));
        assert_eq!(validate_channel(b"@alice"), Ok(ChannelKind::Inbox));
        assert_eq!(validate_channel(b"@"), Ok(ChannelKind::Topic));
        assert_eq!(validate_channel("café.1".as_bytes()), Ok(ChannelKind::Topic));
        assert_eq!(validate_channel(b""), Err(NameError::Empty));
        assert_eq!(validate_channel(&[b'a'; 255]), Ok(ChannelKind::Topic));
        assert_eq!(validate_channel(&[b'a'; 256]), Err(NameError::TooLong));
        assert_eq!(validate_channel(b"a b"), Err(NameError::SpaceOrControl));
        assert_eq!(validate_channel(b"a\tb"), Err(NameError::SpaceOrControl));
        assert_eq!(validate_channel(b"a\x7f"), Err(NameError::SpaceOrControl));
        assert_eq!(validate_channel(b"a\xffb"), Err(NameError::InvalidUtf8));
        assert_eq!(validate_client_name(b"@x"), Err(NameError::SpaceOrControl));
        assert_eq!(validate_client_name(b"*"), Err(NameError::Wildcard));
        assert_eq!(validate_client_name(b"a.>"), Err(NameError::Wildcard));
        assert_eq!(validate_client_name(b"a.*.b"), Err(NameError::Wildcard));
        assert_eq!(validate_client_name(b"a*b"), Ok(()), "a star inside a token is a letter");
        assert_eq!(validate_client_name(&[b'a'; 255]), Err(NameError::TooLong));
    }

    /// A fuzz-style sweep that runs in every `cargo test`: random bytes and mutated valid frames
    /// must never panic a decoder, and a decoded frame never claims more bytes than it was given.
    #[test]
    fn decoders_survive_random_and_mutated_input() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut valid = Vec::new();
        binary::encode_request(
            &Request::Publish { channel: b"news", payload: b"hello".as_slice().into() },
            &mut valid,
        );
        binary::encode_request(&Request::Subscribe { channel: b"a", resume: None }, &mut valid);
        let masked_text =
            websocket::encode_client_frame(false, 1, "héllo".as_bytes(), [1, 2, 3, 4]);
        let seeds: [&[u8]; 7] = [
            &valid,
            &binary::encode_message(b"ch", 9, b"xyz"),
            b"PUB a b\\nc\r\nSUB x\n",
            b"MSG a 1 p\r\nERR 400 no\r\n",
            &masked_text,
            b"GET /sse?channel=a&after=1 HTTP/1.1\r\nLast-Event-ID: 5\r\n\r\n",
            br#"{"op":"sub","channel":"a","after":3,"epoch":"ff"}"#,
        ];
        for round in 0..20_000 {
            let mut input: Vec<u8> = if round % 2 == 0 {
                (0..next() % 48).map(|_| next() as u8).collect()
            } else {
                seeds[(next() % seeds.len() as u64) as usize].to_vec()
            };
            for _ in 0..next() % 4 {
                if !input.is_empty() {
                    let at = (next() % input.len() as u64) as usize;
                    input[at] = next() as u8;
                }
            }
            input.truncate((next() % (input.len() as u64 + 1)) as usize);
            for max in [8, 1 << 20] {
                let consumed = [
                    binary::parse_request(&input, max).ok().flatten().map(|(_, n)| n),
                    text::parse_request(&input, max).ok().flatten().map(|(_, n)| n),
                    binary::parse_server_frame(&input, max).ok().flatten().map(|(_, n)| n),
                    text::parse_server_line(&input, max).ok().flatten().map(|(_, n)| n),
                ];
                for n in consumed.into_iter().flatten() {
                    assert!(
                        n > 0 && n <= input.len(),
                        "consumed {n} of {} bytes: {input:?}",
                        input.len()
                    );
                }
            }
            let _ = sniff(&input);
            let _ = validate_channel(&input);
            // The browser-side decoders: a WebSocket decoder fed the bytes in two pieces, HTTP
            // heads, JSON commands.
            let mut decoder = websocket::Decoder::default();
            let split = (next() % (input.len() as u64 + 1)) as usize;
            let mut fed = input[..split].to_vec();
            for piece in [&input[split..], &[][..]] {
                while let Ok(Some((_, used))) = decoder.decode(&fed, 1 << 16) {
                    assert!(used > 0 && used <= fed.len(), "WebSocket decoder consumed {used}");
                    fed.drain(..used);
                }
                fed.extend_from_slice(piece);
            }
            if let Ok(Some(head)) = http::parse_head(&input) {
                assert!(head.len <= input.len());
            }
            if let Ok(value) = json::parse_value(&input) {
                let _ = json::parse_request(&value);
            }
        }
    }

    #[test]
    fn sniffing() {
        assert_eq!(sniff(b""), Ok(Sniffed::NeedMore));
        assert_eq!(sniff(b"S"), Ok(Sniffed::Text));
        assert_eq!(sniff(&binary::PREFACE[..3]), Ok(Sniffed::NeedMore));
        assert_eq!(sniff(&binary::PREFACE), Ok(Sniffed::Binary(binary::PREFACE.len())));
        assert_eq!(sniff(b"\0FANOXXX"), Err(ProtocolError::BadPreface));
        assert_eq!(sniff(b"P"), Ok(Sniffed::NeedMore));
        assert_eq!(sniff(b"PU"), Ok(Sniffed::NeedMore));
        assert_eq!(sniff(b"PUB "), Ok(Sniffed::Text));
        assert_eq!(sniff(b"GET /"), Ok(Sniffed::Http));
    }
}
