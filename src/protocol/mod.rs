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

mod errors;
mod format;
mod names;
mod sniff;
mod types;

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};

pub use self::errors::*;
pub use self::format::*;
pub use self::names::*;
pub use self::sniff::*;
pub use self::types::*;

/// `value` in decimal without going through `fmt` (offsets in every text frame, every count and
/// header of a command the cluster's broker writes).
pub(crate) fn format_u64(mut value: u64, buffer: &mut [u8; 20]) -> &[u8] {
    let mut start = buffer.len();
    loop {
        start -= 1;
        buffer[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            return &buffer[start..];
        }
    }
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
