//! The binary format: a preface, then frames of
//!
//! ```text
//! +----------------+--------+----------------------------+
//! | length: u32 BE | opcode | fields (length - 1 bytes)  |
//! +----------------+--------+----------------------------+
//! ```
//!
//! `length` counts the opcode and the fields, so it is at least 1. Short fields (channel and client
//! names) are a `u8` length then the bytes; offsets are `u64` big-endian; a payload is whatever is
//! left of the frame. See the README's protocol reference for every frame.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};

use super::ResumeStatus;
use super::{Ack, ErrorCode, HistoryStatus, ProtocolError, Request, Resume, ServerFrame};

/// Sent once by the client before its first frame. Starts with NUL so it can never be a text line.
pub const PREFACE: [u8; 8] = *b"\0FANOUT\x01";

/// Bytes before the opcode.
pub const LENGTH_BYTES: usize = 4;

/// Opcodes. Client to server below 0x80, server to client from 0x81; PING and PONG go both ways.
pub mod op {
    /// Client: subscribe. Fields: channel, then optionally after u64 [epoch u64 (0: any)
    /// [flags u8, bit 0 strict]] to resume.
    pub const SUB: u8 = 0x01;
    /// Client: unsubscribe. Fields: channel.
    pub const UNSUB: u8 = 0x02;
    /// Client: publish. Fields: channel, payload.
    pub const PUB: u8 = 0x03;
    /// Either side: ping. No fields.
    pub const PING: u8 = 0x04;
    /// Either side: pong. No fields.
    pub const PONG: u8 = 0x05;
    /// Client: claim a name. Fields: name.
    pub const NAME: u8 = 0x06;
    /// Client: publish with acknowledgement. Fields: channel, payload.
    pub const PUBA: u8 = 0x07;
    /// Client: authenticate. Fields: the token (the rest of the frame).
    pub const AUTH: u8 = 0x08;
    /// Client: subscribe to every topic channel matching a pattern. Fields: pattern.
    pub const PSUB: u8 = 0x09;
    /// Client: end a pattern subscription. Fields: pattern.
    pub const PUNSUB: u8 = 0x0A;
    /// Client: who is subscribed to a channel (answered MEMBER frames, then PRESENCE). Fields:
    /// channel.
    pub const PRESENCE: u8 = 0x0B;
    /// Client: how many are subscribed (answered PRESENCE alone). Fields: channel.
    pub const PRESENCE_STATS: u8 = 0x0C;
    /// Server: one member of a channel. Fields: channel, client, user, node (short fields),
    /// info (JSON, rest of frame).
    pub const MEMBER: u8 = 0x86;
    /// Server: the end of a presence answer, or the stats. Fields: channel, clients u64, users
    /// u64. (Client PRESENCE is 0x0B; server PRESENCE is this.)
    pub const PRESENCE_END: u8 = 0x87;
    /// Server: a member joined. Fields: channel, client, user, info (JSON, rest).
    pub const JOIN: u8 = 0x88;
    /// Server: a member left. Fields: channel, client, user.
    pub const LEAVE: u8 = 0x89;
    /// Server: the server took this connection out of a channel. Fields: channel, reason (rest).
    pub const UNSUBSCRIBED: u8 = 0x8A;
    /// Server: publish acknowledgement. Fields: channel, offset u64.
    pub const ACK: u8 = 0x85;
    /// Server: message. Fields: channel, offset u64, payload.
    pub const MSG: u8 = 0x81;
    /// Server: acknowledgement. Fields: the acknowledged opcode u8, argument (short field).
    pub const OK: u8 = 0x82;
    /// Server: error. Fields: code u16, reason (UTF-8, rest of frame).
    pub const ERR: u8 = 0x83;
    /// Server: history status of a resuming subscribe. Fields: channel, epoch u64, first u64,
    /// last u64, status u8 (0 ok, 1 expired, 2 epoch).
    pub const HIST: u8 = 0x84;
}

/// One frame split off the input: opcode, fields, bytes consumed.
type RawFrame<'a> = (u8, &'a [u8], usize);

/// Splits one frame off `input`.
fn split_frame(
    input: &[u8],
    max_frame_bytes: usize,
) -> Result<Option<RawFrame<'_>>, ProtocolError> {
    let Some(header) = input.first_chunk::<LENGTH_BYTES>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*header) as usize;
    if len == 0 {
        return Err(ProtocolError::EmptyFrame);
    }
    // Reject before buffering: a hostile length must not make us wait for (or reserve) gigabytes.
    if len > max_frame_bytes {
        return Err(ProtocolError::FrameTooLarge { len, max: max_frame_bytes });
    }
    let total = LENGTH_BYTES + len;
    if input.len() < total {
        return Ok(None);
    }
    Ok(Some((input[LENGTH_BYTES], &input[LENGTH_BYTES + 1..total], total)))
}

/// Reads a `u8`-length-prefixed field; returns it and the rest.
fn short_field<'a>(
    fields: &'a [u8],
    what: &'static str,
) -> Result<(&'a [u8], &'a [u8]), ProtocolError> {
    let (&len, rest) = fields.split_first().ok_or(ProtocolError::Malformed { what })?;
    if rest.len() < len as usize {
        return Err(ProtocolError::Malformed { what });
    }
    Ok(rest.split_at(len as usize))
}

fn expect_end(rest: &[u8], what: &'static str) -> Result<(), ProtocolError> {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(ProtocolError::Malformed { what })
    }
}

/// Decodes one client frame.
pub fn parse_request(
    input: &[u8],
    max_frame_bytes: usize,
) -> Result<Option<(Request<'_>, usize)>, ProtocolError> {
    let Some((opcode, fields, used)) = split_frame(input, max_frame_bytes)? else {
        return Ok(None);
    };
    let request = match opcode {
        op::SUB => {
            let (channel, rest) = short_field(fields, "channel field")?;
            Request::Subscribe { channel, resume: parse_resume(rest)? }
        }
        op::UNSUB => {
            let (channel, rest) = short_field(fields, "channel field")?;
            expect_end(rest, "unsubscribe frame (trailing bytes)")?;
            Request::Unsubscribe { channel }
        }
        op::PUB | op::PUBA => {
            let (channel, payload) = short_field(fields, "channel field")?;
            let payload = Cow::Borrowed(payload);
            if opcode == op::PUB {
                Request::Publish { channel, payload }
            } else {
                Request::PublishAcked { channel, payload }
            }
        }
        op::PING | op::PONG => {
            expect_end(fields, "ping/pong frame (trailing bytes)")?;
            if opcode == op::PING {
                Request::Ping
            } else {
                Request::Pong
            }
        }
        op::NAME => {
            let (name, rest) = short_field(fields, "name field")?;
            expect_end(rest, "name frame (trailing bytes)")?;
            Request::Name { name }
        }
        op::AUTH => Request::Auth { token: fields },
        op::PRESENCE | op::PRESENCE_STATS => {
            let (channel, rest) = short_field(fields, "channel field")?;
            expect_end(rest, "presence frame (trailing bytes)")?;
            Request::Presence { channel, stats_only: opcode == op::PRESENCE_STATS }
        }
        op::PSUB | op::PUNSUB => {
            let (pattern, rest) = short_field(fields, "pattern field")?;
            expect_end(rest, "pattern frame (trailing bytes)")?;
            if opcode == op::PSUB {
                Request::PatternSubscribe { pattern }
            } else {
                Request::PatternUnsubscribe { pattern }
            }
        }
        unknown => return Err(ProtocolError::UnknownOpcode(unknown)),
    };
    Ok(Some((request, used)))
}

/// SUB's optional tail: after u64, then epoch u64 (0: any), then flags u8 (bit 0: strict).
fn parse_resume(rest: &[u8]) -> Result<Option<Resume>, ProtocolError> {
    let what = "subscribe resume fields (8, 16 or 17 bytes)";
    if rest.is_empty() {
        return Ok(None);
    }
    let (after, rest) = rest.split_first_chunk::<8>().ok_or(ProtocolError::Malformed { what })?;
    let (epoch, flags) = match rest.len() {
        0 => (None, 0),
        16.. => return Err(ProtocolError::Malformed { what }),
        _ => {
            let (epoch, rest) =
                rest.split_first_chunk::<8>().ok_or(ProtocolError::Malformed { what })?;
            let flags = match rest {
                [] => 0,
                [flags] => *flags,
                _ => return Err(ProtocolError::Malformed { what }),
            };
            (Some(u64::from_be_bytes(*epoch)).filter(|&e| e != 0), flags)
        }
    };
    Ok(Some(Resume { after: u64::from_be_bytes(*after), epoch, strict: flags & 1 != 0 }))
}

fn frame(opcode: u8, fields_len: usize) -> BytesMut {
    let mut out = BytesMut::with_capacity(LENGTH_BYTES + 1 + fields_len);
    out.put_u32(1 + fields_len as u32);
    out.put_u8(opcode);
    out
}

fn put_short(out: &mut impl BufMut, field: &[u8]) {
    debug_assert!(field.len() <= u8::MAX as usize, "short fields are validated names");
    out.put_u8(field.len() as u8);
    out.put_slice(field);
}

/// Encodes a client request (the library client and the load generator use it).
pub fn encode_request(request: &Request<'_>, out: &mut Vec<u8>) {
    let (opcode, short, payload): (u8, Option<&[u8]>, &[u8]) = match request {
        Request::Subscribe { channel, resume: Some(resume) } => {
            let mut tail = [0u8; 17];
            tail[..8].copy_from_slice(&resume.after.to_be_bytes());
            tail[8..16].copy_from_slice(&resume.epoch.unwrap_or(0).to_be_bytes());
            tail[16] = u8::from(resume.strict);
            out.put_u32(1 + 1 + channel.len() as u32 + 17);
            out.put_u8(op::SUB);
            put_short(out, channel);
            out.put_slice(&tail);
            return;
        }
        Request::Subscribe { channel, resume: None } => (op::SUB, Some(channel), &[]),
        Request::Unsubscribe { channel } => (op::UNSUB, Some(channel), &[]),
        Request::Publish { channel, payload } => (op::PUB, Some(channel), payload),
        Request::PublishAcked { channel, payload } => (op::PUBA, Some(channel), payload),
        Request::Ping => (op::PING, None, &[]),
        Request::Pong => (op::PONG, None, &[]),
        Request::Name { name } => (op::NAME, Some(name), &[]),
        Request::Auth { token } => (op::AUTH, None, token),
        Request::PatternSubscribe { pattern } => (op::PSUB, Some(pattern), &[]),
        Request::PatternUnsubscribe { pattern } => (op::PUNSUB, Some(pattern), &[]),
        Request::Presence { channel, stats_only: false } => (op::PRESENCE, Some(channel), &[]),
        Request::Presence { channel, stats_only: true } => (op::PRESENCE_STATS, Some(channel), &[]),
        Request::Noop => return,
    };
    let fields_len = short.map_or(0, |s| 1 + s.len()) + payload.len();
    out.put_u32(1 + fields_len as u32);
    out.put_u8(opcode);
    if let Some(short) = short {
        put_short(out, short);
    }
    out.put_slice(payload);
}

/// `MSG`: channel, offset, payload.
pub fn encode_message(channel: &[u8], offset: u64, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(message_len(channel, payload));
    put_message(&mut out, channel, offset, payload);
    out.freeze()
}

/// Encoded size of a `MSG` frame.
pub fn message_len(channel: &[u8], payload: &[u8]) -> usize {
    LENGTH_BYTES + 1 + 1 + channel.len() + 8 + payload.len()
}

/// Appends a `MSG` frame (fan-out batches several into one buffer).
pub fn put_message(out: &mut BytesMut, channel: &[u8], offset: u64, payload: &[u8]) {
    out.reserve(message_len(channel, payload));
    out.put_u32((1 + 1 + channel.len() + 8 + payload.len()) as u32);
    out.put_u8(op::MSG);
    put_short(out, channel);
    out.put_u64(offset);
    out.put_slice(payload);
}

/// `OK`: the acknowledged opcode and its argument.
pub fn encode_ok(ack: Ack, arg: &[u8]) -> Bytes {
    let opcode = match ack {
        Ack::Subscribe => op::SUB,
        Ack::Unsubscribe => op::UNSUB,
        Ack::Name => op::NAME,
        Ack::Auth => op::AUTH,
        Ack::PatternSubscribe => op::PSUB,
        Ack::PatternUnsubscribe => op::PUNSUB,
    };
    let mut out = frame(op::OK, 2 + arg.len());
    out.put_u8(opcode);
    put_short(&mut out, arg);
    out.freeze()
}

/// `HIST`: channel, epoch, first and last offsets, status.
pub fn encode_history(history: &HistoryStatus<'_>) -> Bytes {
    let mut out = frame(op::HIST, 1 + history.channel.len() + 25);
    put_short(&mut out, history.channel);
    out.put_u64(history.epoch);
    out.put_u64(history.first);
    out.put_u64(history.last);
    out.put_u8(history.status.code());
    out.freeze()
}

/// `ACK`: channel, offset.
pub fn encode_ack(channel: &[u8], offset: u64) -> Bytes {
    let mut out = frame(op::ACK, 1 + channel.len() + 8);
    put_short(&mut out, channel);
    out.put_u64(offset);
    out.freeze()
}

/// `ERR`: code and reason.
pub fn encode_error(code: ErrorCode, reason: &str) -> Bytes {
    let mut out = frame(op::ERR, 2 + reason.len());
    out.put_u16(code.code());
    out.put_slice(reason.as_bytes());
    out.freeze()
}

/// Decodes one server frame (the client side of the protocol).
pub fn parse_server_frame(
    input: &[u8],
    max_frame_bytes: usize,
) -> Result<Option<(ServerFrame<'_>, usize)>, ProtocolError> {
    let Some((opcode, fields, used)) = split_frame(input, max_frame_bytes)? else {
        return Ok(None);
    };
    let frame = match opcode {
        op::MSG => {
            let (channel, rest) = short_field(fields, "channel field")?;
            let (offset, payload) = rest
                .split_first_chunk::<8>()
                .ok_or(ProtocolError::Malformed { what: "offset field" })?;
            ServerFrame::Message {
                channel: Cow::Borrowed(channel),
                offset: u64::from_be_bytes(*offset),
                payload: Cow::Borrowed(payload),
            }
        }
        op::OK => {
            let (&acked, rest) =
                fields.split_first().ok_or(ProtocolError::Malformed { what: "ok frame" })?;
            let ack = match acked {
                op::SUB => Ack::Subscribe,
                op::UNSUB => Ack::Unsubscribe,
                op::NAME => Ack::Name,
                op::AUTH => Ack::Auth,
                op::PSUB => Ack::PatternSubscribe,
                op::PUNSUB => Ack::PatternUnsubscribe,
                other => return Err(ProtocolError::UnknownOpcode(other)),
            };
            let (arg, rest) = short_field(rest, "ok argument")?;
            expect_end(rest, "ok frame (trailing bytes)")?;
            ServerFrame::Ok { ack, arg: Cow::Borrowed(arg) }
        }
        op::ERR => {
            let (code, reason) = fields
                .split_first_chunk::<2>()
                .ok_or(ProtocolError::Malformed { what: "error code" })?;
            let reason = std::str::from_utf8(reason)
                .map_err(|_| ProtocolError::InvalidUtf8 { what: "error reason" })?;
            ServerFrame::Error { code: u16::from_be_bytes(*code), reason: Cow::Borrowed(reason) }
        }
        op::HIST => {
            let (channel, rest) = short_field(fields, "channel field")?;
            let malformed = ProtocolError::Malformed { what: "history frame" };
            let (epoch, rest) = rest.split_first_chunk::<8>().ok_or(malformed.clone())?;
            let (first, rest) = rest.split_first_chunk::<8>().ok_or(malformed.clone())?;
            let (last, rest) = rest.split_first_chunk::<8>().ok_or(malformed.clone())?;
            let status = match rest {
                [code] => ResumeStatus::from_code(*code).ok_or(malformed)?,
                _ => return Err(malformed),
            };
            ServerFrame::History {
                channel: Cow::Borrowed(channel),
                epoch: u64::from_be_bytes(*epoch),
                first: u64::from_be_bytes(*first),
                last: u64::from_be_bytes(*last),
                status,
            }
        }
        op::ACK => {
            let (channel, rest) = short_field(fields, "channel field")?;
            let offset = match rest.split_first_chunk::<8>() {
                Some((offset, [])) => u64::from_be_bytes(*offset),
                _ => return Err(ProtocolError::Malformed { what: "ack frame" }),
            };
            ServerFrame::Ack { channel: Cow::Borrowed(channel), offset }
        }
        op::PING => ServerFrame::Ping,
        op::PONG => ServerFrame::Pong,
        other => match super::presence::parse_binary_frame(other, fields) {
            Some(frame) => frame?,
            None => return Err(ProtocolError::UnknownOpcode(other)),
        },
    };
    Ok(Some((frame, used)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    fn encoded(request: &Request<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        encode_request(request, &mut out);
        out
    }

    fn all_requests() -> Vec<Request<'static>> {
        vec![
            Request::Subscribe { channel: b"news", resume: None },
            Request::Unsubscribe { channel: b"news" },
            Request::Publish { channel: b"news", payload: Cow::Borrowed(b"hello\nworld\0") },
            Request::Publish { channel: b"*", payload: Cow::Borrowed(b"") },
            Request::PublishAcked { channel: b"news", payload: Cow::Borrowed(b"sure?") },
            Request::Ping,
            Request::Pong,
            Request::Name { name: b"alice" },
            Request::Auth { token: b"eyJhbGciOiJIUzI1NiJ9.e30.sig" },
            Request::Auth { token: b"" },
            Request::PatternSubscribe { pattern: b"room.*" },
            Request::PatternUnsubscribe { pattern: b"room.>" },
        ]
    }

    #[test]
    fn requests_round_trip_and_need_every_byte() {
        for request in all_requests() {
            let bytes = encoded(&request);
            assert_eq!(parse_request(&bytes, MAX), Ok(Some((request.clone(), bytes.len()))));
            for cut in 0..bytes.len() {
                assert_eq!(parse_request(&bytes[..cut], MAX), Ok(None), "{request:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn back_to_back_frames_split_at_every_byte() {
        let mut stream = Vec::new();
        for request in all_requests() {
            encode_request(&request, &mut stream);
        }
        for split in 0..=stream.len() {
            // Feed the first `split` bytes, parse what is complete, then append the rest.
            let mut buffer = stream[..split].to_vec();
            let mut seen = Vec::new();
            let mut consumed = 0;
            while let Some((request, used)) = parse_request(&buffer[consumed..], MAX).unwrap() {
                seen.push(format!("{request:?}"));
                consumed += used;
            }
            buffer.extend_from_slice(&stream[split..]);
            while let Some((request, used)) = parse_request(&buffer[consumed..], MAX).unwrap() {
                seen.push(format!("{request:?}"));
                consumed += used;
            }
            assert_eq!(consumed, stream.len());
            let expected: Vec<_> = all_requests().iter().map(|r| format!("{r:?}")).collect();
            assert_eq!(seen, expected, "split at {split}");
        }
    }

    #[test]
    fn oversize_length_is_rejected_from_the_header_alone() {
        let header = (MAX as u32 + 1).to_be_bytes();
        assert_eq!(
            parse_request(&header, MAX),
            Err(ProtocolError::FrameTooLarge { len: MAX + 1, max: MAX })
        );
        assert_eq!(
            parse_request(&u32::MAX.to_be_bytes(), MAX).unwrap_err().code(),
            ErrorCode::FrameTooLarge
        );
    }

    #[test]
    fn malformed_frames() {
        assert_eq!(parse_request(&[0, 0, 0, 0], MAX), Err(ProtocolError::EmptyFrame));
        assert_eq!(
            parse_request(&[0, 0, 0, 1, 0x7e], MAX),
            Err(ProtocolError::UnknownOpcode(0x7e))
        );
        // SUB whose channel length (9) runs past the frame.
        assert!(matches!(
            parse_request(&[0, 0, 0, 3, op::SUB, 9, b'a'], MAX),
            Err(ProtocolError::Malformed { .. })
        ));
        // SUB with no channel length byte at all.
        assert!(matches!(
            parse_request(&[0, 0, 0, 1, op::SUB], MAX),
            Err(ProtocolError::Malformed { .. })
        ));
        // PING with a trailing byte.
        assert!(matches!(
            parse_request(&[0, 0, 0, 2, op::PING, 0], MAX),
            Err(ProtocolError::Malformed { .. })
        ));
        // PSUB whose pattern length runs past the frame, and one with a trailing byte.
        assert!(matches!(
            parse_request(&[0, 0, 0, 3, op::PSUB, 5, b'a'], MAX),
            Err(ProtocolError::Malformed { .. })
        ));
        assert!(matches!(
            parse_request(&[0, 0, 0, 4, op::PUNSUB, 1, b'a', 0], MAX),
            Err(ProtocolError::Malformed { .. })
        ));
        // A server opcode sent by a client.
        assert_eq!(
            parse_request(&[0, 0, 0, 1, op::MSG], MAX),
            Err(ProtocolError::UnknownOpcode(op::MSG))
        );
        for error in [ProtocolError::EmptyFrame, ProtocolError::UnknownOpcode(1)] {
            assert_eq!(error.code(), ErrorCode::BadRequest);
        }
    }

    /// The example session in the README, byte for byte.
    #[test]
    fn readme_example_session() {
        assert_eq!(PREFACE, [0x00, 0x46, 0x41, 0x4E, 0x4F, 0x55, 0x54, 0x01]);
        assert_eq!(
            encoded(&Request::Subscribe { channel: b"news", resume: None }),
            [0, 0, 0, 6, 0x01, 4, b'n', b'e', b'w', b's']
        );
        assert_eq!(
            &encode_ok(Ack::Subscribe, b"news")[..],
            [0, 0, 0, 7, 0x82, 0x01, 4, b'n', b'e', b'w', b's']
        );
        assert_eq!(
            encoded(&Request::Publish { channel: b"news", payload: Cow::Borrowed(b"hi") }),
            [0, 0, 0, 8, 0x03, 4, b'n', b'e', b'w', b's', b'h', b'i']
        );
        assert_eq!(
            &encode_message(b"news", 1, b"hi")[..],
            [0, 0, 0, 0x10, 0x81, 4, b'n', b'e', b'w', b's', 0, 0, 0, 0, 0, 0, 0, 1, b'h', b'i']
        );
    }

    #[test]
    fn server_frames_round_trip() {
        let cases = [
            (
                encode_message(b"news", 42, b"\x00\xffhi"),
                ServerFrame::Message {
                    channel: Cow::Borrowed(b"news"),
                    offset: 42,
                    payload: Cow::Borrowed(b"\x00\xffhi"),
                },
            ),
            (
                encode_ok(Ack::Subscribe, b"news"),
                ServerFrame::Ok { ack: Ack::Subscribe, arg: Cow::Borrowed(b"news") },
            ),
            (
                encode_ok(Ack::Name, b"bob"),
                ServerFrame::Ok { ack: Ack::Name, arg: Cow::Borrowed(b"bob") },
            ),
            (
                encode_ok(Ack::Auth, b"alice"),
                ServerFrame::Ok { ack: Ack::Auth, arg: Cow::Borrowed(b"alice") },
            ),
            (
                encode_ok(Ack::PatternSubscribe, b"room.*"),
                ServerFrame::Ok { ack: Ack::PatternSubscribe, arg: Cow::Borrowed(b"room.*") },
            ),
            (
                encode_error(ErrorCode::SlowConsumer, "slow consumer"),
                ServerFrame::Error { code: 507, reason: Cow::Borrowed("slow consumer") },
            ),
            (
                encode_ack(b"news", 77),
                ServerFrame::Ack { channel: Cow::Borrowed(b"news"), offset: 77 },
            ),
            (super::super::Format::Binary.ping(), ServerFrame::Ping),
            (super::super::Format::Binary.pong(), ServerFrame::Pong),
        ];
        for (bytes, frame) in cases {
            assert_eq!(parse_server_frame(&bytes, MAX), Ok(Some((frame, bytes.len()))));
            for cut in 0..bytes.len() {
                assert_eq!(parse_server_frame(&bytes[..cut], MAX), Ok(None));
            }
        }
        assert!(matches!(
            parse_server_frame(&[0, 0, 0, 4, op::ERR, 1, 144, 0xff], MAX),
            Err(ProtocolError::InvalidUtf8 { .. })
        ));
        assert!(matches!(
            parse_server_frame(&[0, 0, 0, 5, op::MSG, 0, 0, 0, 1], MAX),
            Err(ProtocolError::Malformed { what: "offset field" })
        ));
    }
}
