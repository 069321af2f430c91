//! `Format`: one connection's wire format, and the dispatch from it to each codec.

use super::*;

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
