//! The wire protocols the load generator speaks, so that one code path measures fanout and its
//! peers: fanout's binary and text formats, its WebSocket subprotocols (JSON and binary), Redis
//! RESP2 pub/sub, and the NATS client protocol.
//!
//! In the WebSocket modes only the subscribers speak WebSocket; publishers use the binary TCP
//! format, so that a WebSocket run and a binary run differ in delivery alone.
//!
//! Each protocol provides the bytes to subscribe and to publish, and a parser that turns what a
//! subscriber receives into `Event`s.

use std::fmt;
use std::str::FromStr;

use bytes::BytesMut;

use super::Stamp;
use fanout::protocol::resp::{self, Value};
use fanout::protocol::websocket::{self, opcode};
use fanout::protocol::{binary, text, Request, ServerFrame};

/// A wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// fanout's length-prefixed binary frames.
    FanoutBinary,
    /// fanout's text lines.
    FanoutText,
    /// Redis RESP2: SUBSCRIBE / PUBLISH.
    Resp,
    /// NATS: CONNECT / SUB / PUB / MSG / PING.
    Nats,
    /// fanout over WebSocket, subprotocol fanout.binary (binary frames in binary messages).
    WsBinary,
    /// fanout over WebSocket, subprotocol fanout.json (JSON in text messages): what browsers use.
    WsJson,
}

/// The mask of the load generator's client frames (masking is required, its value is not).
const MASK: [u8; 4] = [0x5a, 0x17, 0xc3, 0x81];

/// Upgrade request for a WebSocket subscriber.
fn upgrade_request(out: &mut Vec<u8>, subprotocol: &str) {
    out.extend_from_slice(
        format!(
            "GET /ws HTTP/1.1\r\nHost: fanout\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: bG9hZC1nZW5lcmF0b3IhIQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {subprotocol}\r\n\r\n"
        )
        .as_bytes(),
    );
}

/// A JSON `msg` object as this server writes it, read without a JSON parser (the load generator
/// must outrun the server): the offset and the stamp, from a text payload (`data`, the stamp in
/// hex, which is what `ws-json` publishers send) or a binary one (`data64`). `None` for anything
/// else (another object, an escaped channel name), which then goes through serde_json.
pub fn json_message(text: &[u8]) -> Option<(u64, Option<Stamp>)> {
    let rest = text.strip_prefix(b"{\"op\":\"msg\",\"channel\":\"")?;
    let quote = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
    let rest = rest[quote..].strip_prefix(b"\",\"offset\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let mut offset = 0u64;
    for &digit in &rest[..digits] {
        offset = offset.checked_mul(10)?.checked_add(u64::from(digit - b'0'))?;
    }
    let rest = &rest[digits..];
    if let Some(data) = rest.strip_prefix(b",\"data\":\"") {
        return Some((offset, Stamp::read_hex(data)));
    }
    let data64 = rest.strip_prefix(b",\"data64\":\"")?;
    Some((offset, Stamp::read(&decode_base64_24(data64.get(..24)?)?)))
}

/// Decodes exactly 24 base64 characters (no padding) into 18 bytes. The base64 crate's general
/// decoder costs as much as everything else the generator does per JSON message (perf: 17%);
/// this fixed-size one is a few table lookups.
fn decode_base64_24(chars: &[u8]) -> Option<[u8; 18]> {
    const fn table() -> [u8; 256] {
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut table = [0xff; 256];
        let mut i = 0;
        while i < 64 {
            table[alphabet[i] as usize] = i as u8;
            i += 1;
        }
        table
    }
    static TABLE: [u8; 256] = table();
    let mut out = [0u8; 18];
    for (group, bytes) in chars.chunks_exact(4).zip(out.chunks_exact_mut(3)) {
        let mut bits = 0u32;
        for &c in group {
            let value = TABLE[c as usize];
            if value == 0xff {
                return None;
            }
            bits = bits << 6 | u32::from(value);
        }
        bytes.copy_from_slice(&bits.to_be_bytes()[1..]);
    }
    Some(out)
}

/// Any JSON server object as an event.
fn json_event(text: &[u8]) -> Result<Event<'static>, WireError> {
    use base64::Engine as _;
    if let Some((offset, stamp)) = json_message(text) {
        let mut payload = vec![0u8; Stamp::BYTES];
        if let Some(stamp) = stamp {
            stamp.write(&mut payload);
        }
        return Ok(Event::Message { offset: Some(offset), payload: payload.into() });
    }
    let value: serde_json::Value = serde_json::from_slice(text)
        .map_err(|e| WireError(format!("bad JSON from the server: {e}")))?;
    Ok(match value["op"].as_str().unwrap_or("") {
        "msg" => {
            let payload = match (value["data"].as_str(), value["data64"].as_str()) {
                (Some(data), _) => data.as_bytes().to_vec(),
                (None, Some(data64)) => base64::engine::general_purpose::STANDARD
                    .decode(data64)
                    .map_err(|_| WireError("bad base64 from the server".into()))?,
                _ => return Err(WireError("msg without data".into())),
            };
            Event::Message { offset: value["offset"].as_u64(), payload: payload.into() }
        }
        "ok" if value["cmd"] == "auth" => Event::Ignored,
        "ok" => Event::Subscribed,
        "ping" => Event::Ping,
        "err" => Event::Error(format!("{} {}", value["code"], value["reason"])),
        _ => Event::Ignored,
    })
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "binary" | "fanout" | "fanout-binary" => Ok(Protocol::FanoutBinary),
            "text" | "fanout-text" => Ok(Protocol::FanoutText),
            "resp" | "redis" => Ok(Protocol::Resp),
            "nats" => Ok(Protocol::Nats),
            "ws" | "ws-binary" | "websocket" => Ok(Protocol::WsBinary),
            "ws-json" => Ok(Protocol::WsJson),
            other => Err(format!(
                "unknown protocol {other:?} (binary, text, ws-binary, ws-json, resp, nats)"
            )),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::FanoutBinary => "binary",
            Protocol::FanoutText => "text",
            Protocol::Resp => "resp",
            Protocol::Nats => "nats",
            Protocol::WsBinary => "ws-binary",
            Protocol::WsJson => "ws-json",
        })
    }
}

/// What a subscriber connection received.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// The subscription is in effect.
    Subscribed,
    /// A message; `offset` only where the protocol carries one (fanout).
    Message {
        /// The channel offset.
        offset: Option<u64>,
        /// The payload as published.
        payload: std::borrow::Cow<'a, [u8]>,
    },
    /// The server pinged; `pong` must be sent.
    Ping,
    /// Anything else worth nothing to the load (INFO, +OK, PONG, acks).
    Ignored,
    /// The server reported an error.
    Error(String),
}

/// A stream that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WireError(pub String);

/// Largest frame accepted from a server.
const MAX_FRAME: usize = 64 << 20;

impl Protocol {
    /// Bytes that open a connection, authenticate it with `token` (fanout's protocols only), and
    /// subscribe it to `channel`. The subscription is confirmed by an `Event::Subscribed` (for
    /// NATS, the PONG to a PING sent right after SUB).
    /// With `pattern`, fanout's protocols subscribe with PSUB, the channel name as the pattern
    /// (the wildcard path's cost, one channel per subscriber as with SUB).
    pub fn subscribe(self, channel: &str, token: Option<&str>, pattern: bool, out: &mut Vec<u8>) {
        let auth = token.map(|token| Request::Auth { token: token.as_bytes() });
        let subscribe = if pattern {
            Request::PatternSubscribe { pattern: channel.as_bytes() }
        } else {
            Request::Subscribe { channel: channel.as_bytes(), resume: None }
        };
        match self {
            Protocol::FanoutBinary => {
                out.extend_from_slice(&binary::PREFACE);
                if let Some(auth) = &auth {
                    binary::encode_request(auth, out);
                }
                binary::encode_request(&subscribe, out);
            }
            Protocol::FanoutText => {
                if let Some(token) = token {
                    out.extend_from_slice(format!("AUTH {token}\r\n").as_bytes());
                }
                let word = if pattern { "PSUB" } else { "SUB" };
                out.extend_from_slice(format!("{word} {channel}\r\n").as_bytes())
            }
            Protocol::Resp => resp::put_command(out, &[b"SUBSCRIBE", channel.as_bytes()]),
            Protocol::Nats => {
                out.extend_from_slice(
                    b"CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"fanout-load\"}\r\n",
                );
                out.extend_from_slice(format!("SUB {channel} 1\r\nPING\r\n").as_bytes());
            }
            // The first frame follows the upgrade request at once: the server reads what comes
            // after the request as WebSocket.
            Protocol::WsBinary => {
                upgrade_request(out, "fanout.binary");
                if let Some(auth) = &auth {
                    let mut frame = Vec::new();
                    binary::encode_request(auth, &mut frame);
                    out.extend(websocket::encode_client_frame(true, opcode::BINARY, &frame, MASK));
                }
                let mut frame = Vec::new();
                binary::encode_request(&subscribe, &mut frame);
                out.extend(websocket::encode_client_frame(true, opcode::BINARY, &frame, MASK));
            }
            Protocol::WsJson => {
                upgrade_request(out, "fanout.json");
                if let Some(token) = token {
                    let mut quoted = bytes::BytesMut::new();
                    fanout::protocol::json::put_string(&mut quoted, token);
                    let auth = [&b"{\"op\":\"auth\",\"token\":"[..], &quoted, b"}"].concat();
                    out.extend(websocket::encode_client_frame(true, opcode::TEXT, &auth, MASK));
                }
                let mut sub = bytes::BytesMut::new();
                fanout::protocol::json::put_string(&mut sub, channel);
                let sub = if pattern {
                    [&b"{\"op\":\"psub\",\"pattern\":"[..], &sub, b"}"].concat()
                } else {
                    [&b"{\"op\":\"sub\",\"channel\":"[..], &sub, b"}"].concat()
                };
                out.extend(websocket::encode_client_frame(true, opcode::TEXT, &sub, MASK));
            }
        }
    }

    /// Bytes that open a publishing connection (authenticated with `token`, for fanout).
    pub fn publisher_preface(self, token: Option<&str>, out: &mut Vec<u8>) {
        match self {
            Protocol::FanoutBinary | Protocol::WsBinary | Protocol::WsJson => {
                out.extend_from_slice(&binary::PREFACE);
                if let Some(token) = token {
                    binary::encode_request(&Request::Auth { token: token.as_bytes() }, out);
                }
            }
            Protocol::FanoutText if token.is_some() => {
                out.extend_from_slice(format!("AUTH {}\r\n", token.unwrap_or_default()).as_bytes())
            }
            Protocol::Nats => {
                out.extend_from_slice(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n")
            }
            Protocol::FanoutText | Protocol::Resp => {}
        }
    }

    /// Appends one publish of `payload` to `channel`.
    pub fn publish(self, channel: &str, payload: &[u8], out: &mut Vec<u8>) {
        match self {
            Protocol::FanoutBinary | Protocol::WsBinary | Protocol::WsJson => {
                binary::encode_request(
                    &Request::Publish { channel: channel.as_bytes(), payload: payload.into() },
                    out,
                )
            }
            Protocol::FanoutText => {
                let mut escaped = BytesMut::with_capacity(payload.len() + 16);
                text::put_payload(&mut escaped, payload);
                out.extend_from_slice(b"PUB ");
                out.extend_from_slice(channel.as_bytes());
                out.push(b' ');
                out.extend_from_slice(&escaped);
                out.extend_from_slice(b"\r\n");
            }
            Protocol::Resp => resp::put_command(out, &[b"PUBLISH", channel.as_bytes(), payload]),
            Protocol::Nats => {
                out.extend_from_slice(format!("PUB {channel} {}\r\n", payload.len()).as_bytes());
                out.extend_from_slice(payload);
                out.extend_from_slice(b"\r\n");
            }
        }
    }

    /// The answer to a server ping.
    pub fn pong(self, out: &mut Vec<u8>) {
        match self {
            Protocol::FanoutBinary => binary::encode_request(&Request::Pong, out),
            Protocol::FanoutText | Protocol::Nats => out.extend_from_slice(b"PONG\r\n"),
            Protocol::Resp => {}
            Protocol::WsBinary | Protocol::WsJson => {
                out.extend(websocket::encode_client_frame(true, opcode::PONG, b"", MASK))
            }
        }
    }

    /// Parses one event from `input`: `Ok(None)` when incomplete.
    pub fn parse(self, input: &[u8]) -> Result<Option<(Event<'_>, usize)>, WireError> {
        match self {
            Protocol::FanoutBinary | Protocol::FanoutText => {
                let parsed = if self == Protocol::FanoutBinary && !input.starts_with(b"ERR ") {
                    binary::parse_server_frame(input, MAX_FRAME)
                } else {
                    text::parse_server_line(input, MAX_FRAME)
                };
                let Some((frame, used)) = parsed.map_err(|e| WireError(e.to_string()))? else {
                    return Ok(None);
                };
                let event = match frame {
                    ServerFrame::Message { offset, payload, .. } => {
                        Event::Message { offset: Some(offset), payload }
                    }
                    ServerFrame::Ok { ack: fanout::protocol::Ack::Auth, .. } => Event::Ignored,
                    ServerFrame::Ok { .. } => Event::Subscribed,
                    ServerFrame::Ping => Event::Ping,
                    ServerFrame::Pong
                    | ServerFrame::History { .. }
                    | ServerFrame::Ack { .. }
                    | ServerFrame::Member { .. }
                    | ServerFrame::Presence { .. }
                    | ServerFrame::Join { .. }
                    | ServerFrame::Leave { .. }
                    | ServerFrame::Unsubscribed { .. } => Event::Ignored,
                    ServerFrame::Error { code, reason } => Event::Error(format!("{code} {reason}")),
                };
                Ok(Some((event, used)))
            }
            Protocol::Resp => parse_resp_event(input),
            Protocol::Nats => parse_nats_event(input),
            Protocol::WsBinary | Protocol::WsJson => parse_websocket_event(input),
        }
    }
}

fn parse_websocket_event(input: &[u8]) -> Result<Option<(Event<'_>, usize)>, WireError> {
    if input.starts_with(b"HTTP/") {
        let Some(end) = input.windows(4).position(|w| w == b"\r\n\r\n") else { return Ok(None) };
        if !input.starts_with(b"HTTP/1.1 101 ") {
            let status =
                String::from_utf8_lossy(&input[..end]).lines().next().unwrap_or("").to_owned();
            return Ok(Some((Event::Error(format!("upgrade refused: {status}")), end + 4)));
        }
        return Ok(Some((Event::Ignored, end + 4)));
    }
    let Some((_, op, payload, used)) = websocket::parse_server_frame(input) else {
        return Ok(None);
    };
    let event = match op {
        opcode::BINARY => {
            let Some((event, _)) = Protocol::FanoutBinary.parse(payload)? else {
                return Err(WireError("a binary message without a whole frame".into()));
            };
            event
        }
        opcode::TEXT => json_event(payload)?,
        opcode::PING => Event::Ping,
        opcode::CLOSE => {
            let code = payload.get(..2).map_or(0, |c| u16::from_be_bytes([c[0], c[1]]));
            Event::Error(format!("closed by the server ({code})"))
        }
        _ => Event::Ignored,
    };
    Ok(Some((event, used)))
}

/// A complete WebSocket message of type `op` at the start of `input`: its payload and the
/// bytes of the whole WebSocket frame.
pub fn websocket_payload(input: &[u8], op: u8) -> Option<(&[u8], usize)> {
    let (_, got, payload, used) = websocket::parse_server_frame(input)?;
    (got == op).then_some((payload, used))
}

fn line(input: &[u8]) -> Option<(&[u8], usize)> {
    let end = input.windows(2).position(|w| w == b"\r\n")?;
    Some((&input[..end], end + 2))
}

fn number(digits: &[u8], what: &str) -> Result<i64, WireError> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| WireError(format!("bad {what}: {:?}", String::from_utf8_lossy(digits))))
}

/// Digits up to CRLF starting at `at`: (value, index after the CRLF). `None` when incomplete or
/// not digits (the general parser then reports what is wrong).
fn digits_crlf(input: &[u8], mut at: usize) -> Option<(usize, usize)> {
    let mut value = 0usize;
    let start = at;
    while let Some(&b) = input.get(at) {
        match b {
            b'0'..=b'9' if at - start < 12 => value = value * 10 + (b - b'0') as usize,
            b'\r' if at > start => {
                return (input.get(at + 1) == Some(&b'\n')).then_some((value, at + 2))
            }
            _ => return None,
        }
        at += 1;
    }
    None
}

/// The hot frame, `*3 $7 message $n channel $n payload`, read in place without allocating.
fn resp_message(input: &[u8]) -> Option<(&[u8], usize)> {
    const HEAD: &[u8] = b"*3\r\n$7\r\nmessage\r\n$";
    let rest = input.strip_prefix(HEAD)?;
    let (channel_len, at) = digits_crlf(rest, 0)?;
    let at = at + channel_len + 2;
    if rest.get(at) != Some(&b'$') {
        return None;
    }
    let (payload_len, at) = digits_crlf(rest, at + 1)?;
    let payload = rest.get(at..at + payload_len)?;
    (rest.get(at + payload_len..at + payload_len + 2)? == b"\r\n")
        .then_some((payload, HEAD.len() + at + payload_len + 2))
}

fn parse_resp_event(input: &[u8]) -> Result<Option<(Event<'_>, usize)>, WireError> {
    if let Some((payload, used)) = resp_message(input) {
        return Ok(Some((
            Event::Message { offset: None, payload: std::borrow::Cow::Borrowed(payload) },
            used,
        )));
    }
    // Anything else (subscribe confirmations, errors, PONG) through the server's own codec.
    let parsed = resp::parse_value(input, MAX_FRAME).map_err(|e| WireError(e.to_string()))?;
    let Some((value, used)) = parsed else { return Ok(None) };
    let event = match value {
        Value::Array(Some(items)) | Value::Push(items) => match items.as_slice() {
            [Value::Bulk(Some(kind)), _, Value::Bulk(Some(payload))] if kind == b"message" => {
                Event::Message { offset: None, payload: std::borrow::Cow::Owned(payload.clone()) }
            }
            [Value::Bulk(Some(kind)), ..] if kind == b"subscribe" => Event::Subscribed,
            _ => Event::Ignored,
        },
        Value::Error(e) => Event::Error(e),
        _ => Event::Ignored,
    };
    Ok(Some((event, used)))
}

/// The hot frame, `MSG <subject> <sid> [reply] <n>\r\n<payload>\r\n`, read in place.
fn nats_message(input: &[u8]) -> Option<(&[u8], usize)> {
    let rest = input.strip_prefix(b"MSG ")?;
    let newline = rest.iter().position(|&b| b == b'\n')?;
    let head = rest[..newline].strip_suffix(b"\r")?;
    let size_at = head.iter().rposition(|&b| b == b' ')? + 1;
    let (len, _) = digits_crlf(&rest[..newline + 1], size_at)?;
    let start = 4 + newline + 1;
    let payload = input.get(start..start + len)?;
    (input.get(start + len..start + len + 2)? == b"\r\n").then_some((payload, start + len + 2))
}

fn parse_nats_event(input: &[u8]) -> Result<Option<(Event<'_>, usize)>, WireError> {
    if let Some((payload, used)) = nats_message(input) {
        return Ok(Some((
            Event::Message { offset: None, payload: std::borrow::Cow::Borrowed(payload) },
            used,
        )));
    }
    let Some((head, used)) = line(input) else {
        if input.len() > MAX_FRAME {
            return Err(WireError("NATS line too long".into()));
        }
        return Ok(None);
    };
    let mut words = head.split(|&b| b == b' ' || b == b'\t').filter(|w| !w.is_empty());
    let verb = words.next().unwrap_or_default();
    let event = if verb.eq_ignore_ascii_case(b"MSG") {
        // MSG <subject> <sid> [reply-to] <#bytes>
        let args: Vec<&[u8]> = words.collect();
        if !(3..=4).contains(&args.len()) {
            return Err(WireError(format!(
                "bad NATS MSG line: {:?}",
                String::from_utf8_lossy(head)
            )));
        }
        let len = number(args[args.len() - 1], "NATS payload size")? as usize;
        if len > MAX_FRAME {
            return Err(WireError(format!("NATS payload of {len} bytes")));
        }
        if input.len() < used + len + 2 {
            return Ok(None);
        }
        let payload = &input[used..used + len];
        return Ok(Some((
            Event::Message { offset: None, payload: std::borrow::Cow::Borrowed(payload) },
            used + len + 2,
        )));
    } else if verb.eq_ignore_ascii_case(b"PING") {
        Event::Ping
    } else if verb.eq_ignore_ascii_case(b"PONG") {
        // The answer to the PING sent right after SUB: the subscription is registered.
        Event::Subscribed
    } else if verb.eq_ignore_ascii_case(b"-ERR") {
        Event::Error(String::from_utf8_lossy(head).into_owned())
    } else {
        Event::Ignored // INFO, +OK
    };
    Ok(Some((event, used)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    /// Feeds `stream` split at every point and collects the events.
    #[test]
    fn json_messages_read_fast_and_slow_agree() {
        use base64::Engine as _;
        let stamp = Stamp { sent_ns: 0x0123_4567_89ab_cdef, publisher: 3, sequence: 0xfeed };
        // Binary payload (data64).
        let mut binary = vec![0xffu8; 40];
        stamp.write(&mut binary);
        let frame = fanout::protocol::json::message(b"ch-1", 12345, &binary);
        assert_eq!(json_message(&frame), Some((12345, Some(stamp))));
        let encoded = base64::engine::general_purpose::STANDARD.encode(&binary[..18]);
        assert_eq!(decode_base64_24(encoded.as_bytes()).unwrap()[..], binary[..18]);
        assert_eq!(decode_base64_24(b"!!!!AAAAAAAAAAAAAAAAAAAA"), None);
        // Text payload (data): the hex stamp.
        let mut text = vec![b'x'; 64];
        stamp.write_hex(&mut text);
        let frame = fanout::protocol::json::message(b"ch-1", 9, &text);
        assert_eq!(json_message(&frame), Some((9, Some(stamp))));
        // Anything else goes through the slow path.
        let other = fanout::protocol::json::ok(fanout::protocol::Ack::Subscribe, b"c");
        assert_eq!(json_message(&other), None);
        assert_eq!(json_event(&other).unwrap(), Event::Subscribed);
    }

    fn events_at_every_split(protocol: Protocol, stream: &[u8]) -> Vec<String> {
        let mut reference = None;
        for split in 0..=stream.len() {
            let mut seen = Vec::new();
            let mut buffer = stream[..split].to_vec();
            let mut at = 0;
            for pass in 0..2 {
                while let Some((event, used)) = protocol.parse(&buffer[at..]).unwrap() {
                    seen.push(format!("{event:?}"));
                    at += used;
                }
                if pass == 0 {
                    buffer.extend_from_slice(&stream[split..]);
                }
            }
            assert_eq!(at, stream.len(), "{protocol} split at {split}");
            match &reference {
                None => reference = Some(seen),
                Some(r) => assert_eq!(r, &seen, "{protocol} split at {split}"),
            }
        }
        reference.unwrap_or_default()
    }

    #[test]
    fn parsers_survive_random_and_truncated_input() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let seeds: [&[u8]; 3] = [
            b"*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$2\r\nhi\r\n",
            b"MSG news 1 5\r\nhello\r\nPING\r\n",
            b"*2\r\n*1\r\n:5\r\n$-1\r\n",
        ];
        for round in 0..20_000 {
            let mut input: Vec<u8> = if round % 2 == 0 {
                (0..next() % 40)
                    .map(|_| b"*$:+-\r\n0123456789MSG "[(next() % 21) as usize])
                    .collect()
            } else {
                seeds[(next() % 3) as usize].to_vec()
            };
            if !input.is_empty() {
                let at = (next() % input.len() as u64) as usize;
                input[at] = next() as u8;
                input.truncate((next() % (input.len() as u64 + 1)) as usize);
            }
            for protocol in
                [Protocol::Resp, Protocol::Nats, Protocol::FanoutBinary, Protocol::FanoutText]
            {
                if let Ok(Some((_, used))) = protocol.parse(&input) {
                    assert!(used > 0 && used <= input.len(), "{protocol}: {used} of {input:?}");
                }
            }
        }
    }

    #[test]
    fn resp_subscribe_messages_and_errors() {
        let stream = b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n\
                       *3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$7\r\nhi\r\nyou\r\n\
                       *3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$0\r\n\r\n\
                       -ERR wrong\r\n+PONG\r\n";
        let events = events_at_every_split(Protocol::Resp, stream);
        assert_eq!(
            events,
            vec![
                format!("{:?}", Event::Subscribed),
                format!(
                    "{:?}",
                    Event::Message { offset: None, payload: Cow::Borrowed(b"hi\r\nyou") }
                ),
                format!("{:?}", Event::Message { offset: None, payload: Cow::Borrowed(b"") }),
                format!("{:?}", Event::Error("ERR wrong".into())),
                format!("{:?}", Event::Ignored),
            ]
        );
        let mut out = Vec::new();
        Protocol::Resp.publish("news", b"x", &mut out);
        assert_eq!(out, b"*3\r\n$7\r\nPUBLISH\r\n$4\r\nnews\r\n$1\r\nx\r\n");
        for bad in [&b"?x\r\n"[..], b"$3\r\nabcd\r\n", &b"*1\r\n".repeat(100)] {
            assert!(Protocol::Resp.parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn nats_info_ping_messages() {
        let stream = b"INFO {\"server_id\":\"x\"}\r\nPONG\r\nMSG news 1 5\r\nhello\r\n\
                       PING\r\nMSG news 1 reply.to 4\r\na\r\nb\r\n-ERR 'Slow Consumer'\r\n";
        let events = events_at_every_split(Protocol::Nats, stream);
        assert_eq!(
            events,
            vec![
                format!("{:?}", Event::Ignored),
                format!("{:?}", Event::Subscribed),
                format!("{:?}", Event::Message { offset: None, payload: Cow::Borrowed(b"hello") }),
                format!("{:?}", Event::Ping),
                format!("{:?}", Event::Message { offset: None, payload: Cow::Borrowed(b"a\r\nb") }),
                format!("{:?}", Event::Error("-ERR 'Slow Consumer'".into())),
            ]
        );
        assert!(Protocol::Nats.parse(b"MSG a\r\n").is_err());
        let mut out = Vec::new();
        Protocol::Nats.pong(&mut out);
        assert_eq!(out, b"PONG\r\n");
    }

    #[test]
    fn fanout_text_publish_is_escaped_and_parsed_back() {
        let payload = b"\x00\n\r\\\xff";
        let mut out = Vec::new();
        Protocol::FanoutText.publish("ch", payload, &mut out);
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        let (request, _) = text::parse_request(&out, 1024).unwrap().unwrap();
        assert_eq!(
            request,
            Request::Publish { channel: b"ch", payload: Cow::Owned(payload.to_vec()) }
        );
        let line = text::encode_message(b"ch", 3, payload);
        let (event, _) = Protocol::FanoutText.parse(&line).unwrap().unwrap();
        assert_eq!(
            event,
            Event::Message { offset: Some(3), payload: Cow::Owned(payload.to_vec()) }
        );
    }
}
