//! WebSocket framing (RFC 6455): the opening handshake's accept key, server frame encoding, and an
//! incremental decoder of client frames that assembles fragmented messages and validates text as
//! UTF-8 as each fragment arrives.
//!
//! Server frames are never masked, so one encoded frame can be shared by every subscriber; client
//! frames must be masked (section 5.1), and a violation closes the connection with the status code
//! the RFC names (1002 protocol error, 1007 invalid text, 1009 too big).

use bytes::{BufMut, Bytes, BytesMut};

/// Appended to the client's key before hashing (section 1.3).
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Opcodes (section 5.2).
pub mod opcode {
    /// Continuation of a fragmented message.
    pub const CONTINUATION: u8 = 0x0;
    /// Text message (UTF-8).
    pub const TEXT: u8 = 0x1;
    /// Binary message.
    pub const BINARY: u8 = 0x2;
    /// Close.
    pub const CLOSE: u8 = 0x8;
    /// Ping.
    pub const PING: u8 = 0x9;
    /// Pong.
    pub const PONG: u8 = 0xA;
}

/// Close status codes (section 7.4.1).
pub mod status {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The server is going away (shutdown).
    pub const GOING_AWAY: u16 = 1001;
    /// A protocol violation.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Text that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A message that breaks the endpoint's policy (here: a bad command).
    pub const POLICY: u16 = 1008;
    /// A message too big to process.
    pub const TOO_BIG: u16 = 1009;
    /// The server hit an unexpected condition (here: it could not keep up with this client).
    pub const INTERNAL: u16 = 1011;
    /// The server is overloaded; try again later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// The close status for an error that ends a connection.
pub fn close_status(code: super::ErrorCode) -> u16 {
    use super::ErrorCode;
    match code {
        ErrorCode::FrameTooLarge => status::TOO_BIG,
        ErrorCode::Unavailable => status::TRY_AGAIN_LATER,
        ErrorCode::StaleConnection => status::GOING_AWAY,
        ErrorCode::SlowConsumer => status::INTERNAL,
        _ => status::POLICY,
    }
}

/// Longest control frame payload (section 5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key`.
pub fn accept_key(client_key: &str) -> String {
    use base64::Engine as _;
    let mut sha = sha1_smol::Sha1::new();
    sha.update(client_key.trim().as_bytes());
    sha.update(ACCEPT_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

/// Why a client's frames were refused; each maps to a close status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    /// A framing rule was broken (RSV bits, unknown opcode, unmasked frame, bad control frame,
    /// bad continuation, bad close code).
    #[error("WebSocket protocol error: {0}")]
    Protocol(&'static str),
    /// A text message (or a close reason) is not UTF-8.
    #[error("WebSocket text is not valid UTF-8")]
    InvalidUtf8,
    /// A message is bigger than the server's maximum.
    #[error("WebSocket message too big: {len} bytes, the limit is {max}")]
    TooBig {
        /// Declared or assembled length.
        len: u64,
        /// The configured maximum.
        max: usize,
    },
}

impl WsError {
    /// The close status code this error is answered with.
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::Protocol(_) => status::PROTOCOL_ERROR,
            WsError::InvalidUtf8 => status::INVALID_PAYLOAD,
            WsError::TooBig { .. } => status::TOO_BIG,
        }
    }
}

/// What one decoded frame amounts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsEvent {
    /// A complete message (assembled from its fragments); text is valid UTF-8.
    Message {
        /// Text (true) or binary.
        text: bool,
        /// The unmasked payload.
        payload: Vec<u8>,
    },
    /// A ping with its payload (answer with a pong carrying the same bytes).
    Ping(Vec<u8>),
    /// A pong.
    Pong,
    /// The peer starts the close handshake; the code is validated, the reason is UTF-8.
    Close {
        /// The status code, if the frame had one.
        code: Option<u16>,
    },
}

/// Client frame decoder with the state of a fragmented message in progress. An idle WebSocket
/// holds 16 bytes of it: the assembly state is allocated only while a message is in pieces.
#[derive(Debug, Default)]
pub struct Decoder {
    /// Opcode of the message being assembled, if a first fragment without FIN arrived.
    partial_opcode: Option<u8>,
    assembly: Option<Box<Assembly>>,
}

/// A message, or a text frame, that has arrived in part.
#[derive(Debug, Default)]
struct Assembly {
    /// Fragments so far (unmasked).
    partial: Vec<u8>,
    /// Bytes of `partial` known to be valid UTF-8 (text messages).
    validated: usize,
    /// Payload bytes of the text frame still arriving that were already checked as UTF-8, so that
    /// an invalid byte fails the connection when it arrives, not when its frame is complete.
    frame_checked: usize,
    /// The incomplete UTF-8 sequence at the end of what was checked (at most 3 bytes).
    carry: Vec<u8>,
}

/// A close code a peer may send (section 7.4): the defined ones that are not reserved for local
/// use, and the registered/private ranges.
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

/// Advances `validated` over `bytes`; an invalid sequence fails at once, an incomplete one at the
/// end is fine until the message ends.
fn validate_utf8(bytes: &[u8], validated: &mut usize) -> Result<(), WsError> {
    match std::str::from_utf8(&bytes[*validated..]) {
        Ok(_) => {
            *validated = bytes.len();
            Ok(())
        }
        Err(e) if e.error_len().is_none() => {
            *validated += e.valid_up_to();
            Ok(())
        }
        Err(_) => Err(WsError::InvalidUtf8),
    }
}

impl Decoder {
    /// Decodes one frame from `input`. `Ok(None)`: incomplete, nothing consumed. Otherwise the
    /// bytes consumed and, unless the frame was a fragment of an unfinished message, an event.
    /// `max_message` bounds a whole (assembled) message; it is checked from the header, before
    /// the payload is buffered.
    pub fn decode(
        &mut self,
        input: &[u8],
        max_message: usize,
    ) -> Result<Option<(Option<WsEvent>, usize)>, WsError> {
        let [first, second, ..] = *input else { return Ok(None) };
        let fin = first & 0x80 != 0;
        if first & 0x70 != 0 {
            return Err(WsError::Protocol("reserved bits set without an extension"));
        }
        let op = first & 0x0f;
        let control = op & 0x08 != 0;
        use opcode::{BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT};
        if !matches!(op, CONTINUATION | TEXT | BINARY | CLOSE | PING | PONG) {
            return Err(WsError::Protocol("reserved opcode"));
        }
        if second & 0x80 == 0 {
            return Err(WsError::Protocol("client frames must be masked"));
        }
        let (len, mut at) = match second & 0x7f {
            126 => match input.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                None => return Ok(None),
            },
            127 => match input.get(2..10) {
                Some(b) => {
                    let len = u64::from_be_bytes(b.try_into().expect("8 bytes"));
                    if len >> 63 != 0 {
                        return Err(WsError::Protocol("64-bit length with the top bit set"));
                    }
                    (len, 10)
                }
                None => return Ok(None),
            },
            short => (u64::from(short), 2),
        };
        if control {
            if !fin {
                return Err(WsError::Protocol("fragmented control frame"));
            }
            if len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(WsError::Protocol("control frame payload over 125 bytes"));
            }
        } else {
            match (op, self.partial_opcode) {
                (opcode::CONTINUATION, None) => {
                    return Err(WsError::Protocol("continuation without a message to continue"))
                }
                (opcode::TEXT | opcode::BINARY, Some(_)) => {
                    return Err(WsError::Protocol("new message before the last one ended"))
                }
                _ => {}
            }
            let total = self.buffered() as u64 + len;
            if total > max_message as u64 {
                return Err(WsError::TooBig { len: total, max: max_message });
            }
        }
        let Some(mask) = input.get(at..at + 4) else { return Ok(None) };
        let mask: [u8; 4] = mask.try_into().expect("4 bytes");
        at += 4;
        let len = len as usize;
        let text_message = !control && self.partial_opcode.unwrap_or(op) == opcode::TEXT;
        let Some(masked) = input.get(at..at + len) else {
            if text_message {
                self.check_arriving_text(&input[at..], mask)?;
            }
            return Ok(None);
        };
        let consumed = at + len;
        if self.partial_opcode.is_none() {
            // Nothing in pieces any more (a text frame that arrived in parts is now whole).
            self.assembly = None;
        } else if let Some(assembly) = self.assembly.as_deref_mut() {
            assembly.frame_checked = 0;
            assembly.carry.clear();
        }

        if control {
            let payload = unmasked(masked, mask);
            let event = match op {
                opcode::PING => WsEvent::Ping(payload),
                opcode::PONG => WsEvent::Pong,
                _ => WsEvent::Close { code: parse_close(&payload)? },
            };
            return Ok(Some((Some(event), consumed)));
        }
        let message_op = self.partial_opcode.unwrap_or(op);
        if fin && self.partial_opcode.is_none() {
            // The common case: a whole message in one frame, no assembly buffer.
            let payload = unmasked(masked, mask);
            let text = message_op == opcode::TEXT;
            if text && std::str::from_utf8(&payload).is_err() {
                return Err(WsError::InvalidUtf8);
            }
            return Ok(Some((Some(WsEvent::Message { text, payload }), consumed)));
        }
        let assembly = self.assembly.get_or_insert_with(Default::default);
        assembly.partial.extend(masked.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        let text = message_op == opcode::TEXT;
        if text {
            validate_utf8(&assembly.partial, &mut assembly.validated)?;
        }
        if !fin {
            self.partial_opcode = Some(message_op);
            return Ok(Some((None, consumed)));
        }
        if text && assembly.validated != assembly.partial.len() {
            return Err(WsError::InvalidUtf8);
        }
        let payload = std::mem::take(&mut assembly.partial);
        self.partial_opcode = None;
        self.assembly = None;
        Ok(Some((Some(WsEvent::Message { text, payload }), consumed)))
    }

    /// Checks the newly arrived bytes of a text frame that is not complete yet, continuing the
    /// UTF-8 state of the fragments before it.
    fn check_arriving_text(&mut self, arrived: &[u8], mask: [u8; 4]) -> Result<(), WsError> {
        if arrived.is_empty() {
            return Ok(());
        }
        let assembly = self.assembly.get_or_insert_with(Default::default);
        if arrived.len() <= assembly.frame_checked {
            return Ok(());
        }
        if assembly.frame_checked == 0 {
            assembly.carry = assembly.partial[assembly.validated..].to_vec();
        }
        let start = assembly.frame_checked;
        let mut bytes = std::mem::take(&mut assembly.carry);
        bytes.extend(arrived[start..].iter().enumerate().map(|(i, b)| b ^ mask[(start + i) % 4]));
        assembly.frame_checked = arrived.len();
        match std::str::from_utf8(&bytes) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                assembly.carry = bytes[e.valid_up_to()..].to_vec();
                Ok(())
            }
            Err(_) => Err(WsError::InvalidUtf8),
        }
    }

    /// Bytes held by a message in progress.
    pub fn buffered(&self) -> usize {
        self.assembly.as_ref().map_or(0, |a| a.partial.len())
    }
}

fn unmasked(masked: &[u8], mask: [u8; 4]) -> Vec<u8> {
    masked.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect()
}

/// A close frame's payload: empty, or a valid code and a UTF-8 reason.
fn parse_close(payload: &[u8]) -> Result<Option<u16>, WsError> {
    match payload {
        [] => Ok(None),
        [_] => Err(WsError::Protocol("close payload of one byte")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !valid_close_code(code) {
                return Err(WsError::Protocol("invalid close code"));
            }
            std::str::from_utf8(reason).map_err(|_| WsError::InvalidUtf8)?;
            Ok(Some(code))
        }
    }
}

/// Appends a server frame header (FIN set, unmasked) for a payload of `len` bytes.
pub fn put_header(out: &mut BytesMut, op: u8, len: usize) {
    out.put_u8(0x80 | op);
    if len < 126 {
        out.put_u8(len as u8);
    } else if len <= u16::MAX as usize {
        out.put_u8(126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
}

/// Length of a server frame header for a payload of `len` bytes.
pub fn header_len(len: usize) -> usize {
    match len {
        0..126 => 2,
        126..=0xffff => 4,
        _ => 10,
    }
}

/// A whole server frame.
pub fn encode_frame(op: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(header_len(payload.len()) + payload.len());
    put_header(&mut out, op, payload.len());
    out.put_slice(payload);
    out.freeze()
}

/// A close frame with a status code and a reason (cut to fit a control frame, on a character
/// boundary).
pub fn encode_close(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode_frame(opcode::CLOSE, &payload)
}

/// Encodes a client frame (masked with `mask`), for tests and the load generator.
pub fn encode_client_frame(fin: bool, op: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(14 + payload.len());
    out.push(if fin { 0x80 } else { 0 } | op);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// A server frame as a client sees it: FIN, opcode, payload, bytes consumed. For tests and the
/// load generator; server frames are unmasked.
pub fn parse_server_frame(input: &[u8]) -> Option<(bool, u8, &[u8], usize)> {
    let [first, second, ..] = *input else { return None };
    let (len, at) = match second & 0x7f {
        126 => (u16::from_be_bytes(input.get(2..4)?.try_into().ok()?) as usize, 4usize),
        127 => (u64::from_be_bytes(input.get(2..10)?.try_into().ok()?) as usize, 10),
        short => (short as usize, 2),
    };
    let payload = input.get(at..at.checked_add(len)?)?;
    Some((first & 0x80 != 0, first & 0x0f, payload, at + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    const MAX: usize = 1 << 20;

    /// Decodes everything in `input`, feeding it in pieces of `step` bytes as a socket would.
    fn decode_all(input: &[u8], step: usize, max: usize) -> Result<Vec<WsEvent>, WsError> {
        let mut decoder = Decoder::default();
        let mut buffer = Vec::new();
        let mut events = Vec::new();
        for piece in input.chunks(step) {
            buffer.extend_from_slice(piece);
            while let Some((event, used)) = decoder.decode(&buffer, max)? {
                assert!(used > 0 && used <= buffer.len());
                buffer.drain(..used);
                events.extend(event);
            }
        }
        assert!(buffer.is_empty(), "left over: {buffer:?}");
        Ok(events)
    }

    #[test]
    fn accept_key_matches_the_rfc_example() {
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn every_frame_type_at_every_split() {
        let mut input = Vec::new();
        input.extend(encode_client_frame(true, opcode::TEXT, b"hello", MASK));
        input.extend(encode_client_frame(true, opcode::BINARY, &[0, 1, 2, 255], MASK));
        input.extend(encode_client_frame(false, opcode::TEXT, "caf".as_bytes(), MASK));
        input.extend(encode_client_frame(true, opcode::PING, b"p", MASK));
        // "é" split across fragments: valid once the message ends.
        input.extend(encode_client_frame(false, opcode::CONTINUATION, &[0xc3], MASK));
        input.extend(encode_client_frame(true, opcode::CONTINUATION, &[0xa9, b'!'], MASK));
        input.extend(encode_client_frame(true, opcode::PONG, b"", MASK));
        input.extend(encode_client_frame(true, opcode::BINARY, &[7; 300], MASK));
        input.extend(encode_client_frame(true, opcode::BINARY, &[9; 70_000], MASK));
        input.extend(encode_client_frame(true, opcode::TEXT, b"", MASK));
        input.extend(encode_client_frame(true, opcode::CLOSE, &[0x03, 0xe8, b'o', b'k'], MASK));
        let expected = vec![
            WsEvent::Message { text: true, payload: b"hello".to_vec() },
            WsEvent::Message { text: false, payload: vec![0, 1, 2, 255] },
            WsEvent::Ping(b"p".to_vec()),
            WsEvent::Message { text: true, payload: "café!".as_bytes().to_vec() },
            WsEvent::Pong,
            WsEvent::Message { text: false, payload: vec![7; 300] },
            WsEvent::Message { text: false, payload: vec![9; 70_000] },
            WsEvent::Message { text: true, payload: Vec::new() },
            WsEvent::Close { code: Some(1000) },
        ];
        for step in [1, 2, 3, 5, 7, 13, 126, 4096, input.len()] {
            assert_eq!(decode_all(&input, step, MAX).unwrap(), expected, "step {step}");
        }
    }

    fn first_error(frames: &[Vec<u8>], max: usize) -> WsError {
        let input: Vec<u8> = frames.concat();
        for step in [1, 3, input.len()] {
            let error = decode_all(&input, step, max).unwrap_err();
            assert_eq!(error, decode_all(&input, input.len(), max).unwrap_err());
            if step == input.len() {
                return error;
            }
        }
        unreachable!()
    }

    #[test]
    fn each_protocol_error_has_its_close_code() {
        let frame = |fin, op, payload: &[u8]| encode_client_frame(fin, op, payload, MASK);
        let protocol = |frames: &[Vec<u8>]| first_error(frames, MAX).close_code();
        // Unmasked client frame.
        let mut unmasked = frame(true, opcode::TEXT, b"hi");
        unmasked[1] &= 0x7f;
        unmasked.truncate(2);
        unmasked.extend_from_slice(b"hi");
        assert_eq!(protocol(&[unmasked]), 1002);
        // Reserved bits, reserved opcodes.
        let mut rsv = frame(true, opcode::TEXT, b"hi");
        rsv[0] |= 0x40;
        assert_eq!(protocol(&[rsv]), 1002);
        for op in [3, 7, 0xb, 0xf] {
            assert_eq!(protocol(&[frame(true, op, b"")]), 1002, "opcode {op}");
        }
        // Control frames: fragmented, too long.
        assert_eq!(protocol(&[frame(false, opcode::PING, b"")]), 1002);
        assert_eq!(protocol(&[frame(true, opcode::PING, &[0; 126])]), 1002);
        // Continuation without a start; a new message inside a fragmented one.
        assert_eq!(protocol(&[frame(true, opcode::CONTINUATION, b"x")]), 1002);
        assert_eq!(
            protocol(&[frame(false, opcode::TEXT, b"a"), frame(true, opcode::TEXT, b"b")]),
            1002
        );
        // Close payloads: one byte, invalid codes, invalid UTF-8 reason.
        assert_eq!(protocol(&[frame(true, opcode::CLOSE, &[3])]), 1002);
        for code in [0u16, 999, 1004, 1005, 1006, 1012, 1016, 2999, 5000, 65535] {
            let payload = code.to_be_bytes();
            assert_eq!(protocol(&[frame(true, opcode::CLOSE, &payload)]), 1002, "code {code}");
        }
        assert_eq!(protocol(&[frame(true, opcode::CLOSE, &[3, 0xe8, 0xff])]), 1007);
        // Invalid UTF-8: in one frame; in a fragment, failing before the message ends; a
        // message that ends in the middle of a character.
        assert_eq!(protocol(&[frame(true, opcode::TEXT, &[b'a', 0xff])]), 1007);
        assert_eq!(
            first_error(&[frame(false, opcode::TEXT, &[0xce, 0xba, 0xf4, 0x90])], MAX),
            WsError::InvalidUtf8
        );
        assert_eq!(protocol(&[frame(false, opcode::TEXT, b"ok"), frame(true, 0, &[0xce])]), 1007);
        // Too big: declared in one frame, or assembled from fragments.
        assert_eq!(first_error(&[frame(true, opcode::BINARY, &[0; 11])], 10).close_code(), 1009);
        let fragments = [frame(false, opcode::BINARY, &[0; 6]), frame(true, 0, &[0; 6])];
        assert_eq!(first_error(&fragments, 10), WsError::TooBig { len: 12, max: 10 });
        // A 64-bit length with the top bit set.
        let mut huge = vec![0x82, 0x80 | 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        huge.extend_from_slice(&MASK);
        assert_eq!(protocol(&[huge]), 1002);
    }

    #[test]
    fn invalid_utf8_fails_on_the_fragment_that_carries_it() {
        let mut decoder = Decoder::default();
        let first = encode_client_frame(false, opcode::TEXT, b"fine so far", MASK);
        assert!(matches!(decoder.decode(&first, MAX), Ok(Some((None, _)))));
        // A lead byte that can never start a valid sequence: fails now, not at FIN.
        let bad = encode_client_frame(false, opcode::CONTINUATION, &[0xc0], MASK);
        assert_eq!(decoder.decode(&bad, MAX), Err(WsError::InvalidUtf8));
    }

    #[test]
    fn invalid_utf8_fails_before_its_frame_is_complete() {
        // Valid text, then a byte that can never be UTF-8, in a frame still arriving.
        let mut payload = "ok é ".repeat(10).into_bytes();
        let bad_at = payload.len();
        payload.extend_from_slice(&[0xff; 40]);
        let frame = encode_client_frame(true, opcode::TEXT, &payload, MASK);
        let header = frame.len() - payload.len();
        let mut decoder = Decoder::default();
        for end in 0..header + bad_at {
            assert_eq!(decoder.decode(&frame[..end], MAX), Ok(None), "end {end}");
        }
        assert_eq!(decoder.decode(&frame[..header + bad_at + 1], MAX), Err(WsError::InvalidUtf8));
        // A character split across fragments and across reads is fine.
        let mut decoder = Decoder::default();
        let first = encode_client_frame(false, opcode::TEXT, &[b'a', 0xe2], MASK);
        assert!(matches!(decoder.decode(&first, MAX), Ok(Some((None, _)))));
        let rest = encode_client_frame(true, opcode::CONTINUATION, &[0x82, 0xac, b'!'], MASK);
        for end in 0..rest.len() {
            assert_eq!(decoder.decode(&rest[..end], MAX), Ok(None), "end {end}");
        }
        let (event, _) = decoder.decode(&rest, MAX).unwrap().unwrap();
        assert_eq!(
            event,
            Some(WsEvent::Message { text: true, payload: "a€!".as_bytes().to_vec() })
        );
    }

    #[test]
    fn server_frames_round_trip() {
        for len in [0, 1, 125, 126, 65535, 65536, 200_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let frame = encode_frame(opcode::BINARY, &payload);
            assert_eq!(frame.len(), header_len(len) + len);
            let (fin, op, body, used) = parse_server_frame(&frame).unwrap();
            assert!(fin);
            assert_eq!((op, body, used), (opcode::BINARY, payload.as_slice(), frame.len()));
            assert!(parse_server_frame(&frame[..frame.len() - 1]).is_none() || len == 0);
        }
        let close = encode_close(1001, &"é".repeat(100));
        let (_, op, body, _) = parse_server_frame(&close).unwrap();
        assert_eq!(op, opcode::CLOSE);
        assert!(body.len() <= MAX_CONTROL_PAYLOAD);
        assert_eq!(&body[..2], &1001u16.to_be_bytes());
        assert!(std::str::from_utf8(&body[2..]).is_ok());
    }
}
