//! The text format: one command per line, LF or CRLF, usable from `nc`.
//!
//! ```text
//! client: SUB <channel> [<after-offset> [<epoch>|* [strict]]] | UNSUB <channel>
//!         | PUBA <channel> <payload> (publish, acknowledged) | PUB <channel> <payload> | NAME <name> | PING | PONG
//! server: MSG <channel> <offset> <payload> | OK <SUB|UNSUB|NAME> <arg> | ERR <code> <reason>
//!         | HIST <channel> <epoch> <first> <last> <ok|expired|epoch> | ACK <channel> <offset>
//!         | PING | PONG
//! ```
//!
//! Command words are case-insensitive; the server writes CRLF. A payload runs to the end of the
//! line, so bytes that would end the line are escaped as in C: `\\`, `\n`, `\r`. The server undoes
//! them in `PUB` and applies them in `MSG`, so text-to-text round trips are exact and a payload
//! published in binary with newlines still arrives on one line. Any other `\x` is kept as it is.
//! Empty lines are ignored.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};

use super::ResumeStatus;
use super::{fields, Ack, ErrorCode, HistoryStatus, ProtocolError, Request, Resume, ServerFrame};

/// Finds the next line; returns (line without CR/LF, bytes consumed including the LF).
fn split_line(
    input: &[u8],
    max_frame_bytes: usize,
) -> Result<Option<(&[u8], usize)>, ProtocolError> {
    // A line longer than the limit is refused whatever follows: no need to look further.
    let window = &input[..input.len().min(max_frame_bytes.saturating_add(2))];
    let Some(newline) = window.iter().position(|&b| b == b'\n') else {
        if input.len() > max_frame_bytes {
            return Err(ProtocolError::FrameTooLarge { len: input.len(), max: max_frame_bytes });
        }
        return Ok(None);
    };
    let line = &input[..newline];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > max_frame_bytes {
        return Err(ProtocolError::FrameTooLarge { len: line.len(), max: max_frame_bytes });
    }
    Ok(Some((line, newline + 1)))
}

/// Splits at the first space: (word, rest); rest is empty when there is no space.
fn split_word(line: &[u8]) -> (&[u8], &[u8]) {
    match line.iter().position(|&b| b == b' ') {
        Some(space) => (&line[..space], &line[space + 1..]),
        None => (line, &[]),
    }
}

/// Decodes one client line. An empty line decodes to `Request::Noop`.
pub fn parse_request(
    input: &[u8],
    max_frame_bytes: usize,
) -> Result<Option<(Request<'_>, usize)>, ProtocolError> {
    let Some((line, used)) = split_line(input, max_frame_bytes)? else {
        return Ok(None);
    };
    let (word, rest) = split_word(line);
    let request = if word.is_empty() && rest.is_empty() {
        Request::Noop
    } else if word.eq_ignore_ascii_case(b"PUB") {
        let (channel, payload) = split_word(rest);
        Request::Publish { channel, payload: unescape(payload) }
    } else if word.eq_ignore_ascii_case(b"PUBA") {
        let (channel, payload) = split_word(rest);
        Request::PublishAcked { channel, payload: unescape(payload) }
    } else if word.eq_ignore_ascii_case(b"SUB") {
        let (channel, resume) = split_word(rest);
        Request::Subscribe { channel, resume: parse_resume(resume)? }
    } else if word.eq_ignore_ascii_case(b"UNSUB") {
        Request::Unsubscribe { channel: rest }
    } else if word.eq_ignore_ascii_case(b"PING") || word.eq_ignore_ascii_case(b"PONG") {
        if !rest.is_empty() {
            return Err(ProtocolError::Malformed { what: "PING/PONG line (arguments)" });
        }
        if word.eq_ignore_ascii_case(b"PING") {
            Request::Ping
        } else {
            Request::Pong
        }
    } else if word.eq_ignore_ascii_case(b"NAME") {
        Request::Name { name: rest }
    } else if word.eq_ignore_ascii_case(b"AUTH") {
        Request::Auth { token: rest }
    } else if word.eq_ignore_ascii_case(b"PSUB") {
        Request::PatternSubscribe { pattern: rest }
    } else if word.eq_ignore_ascii_case(b"PUNSUB") {
        Request::PatternUnsubscribe { pattern: rest }
    } else if word.eq_ignore_ascii_case(b"PRESENCE") {
        Request::Presence { channel: rest, stats_only: false }
    } else if word.eq_ignore_ascii_case(b"PRESENCE_STATS") {
        Request::Presence { channel: rest, stats_only: true }
    } else {
        return Err(ProtocolError::UnknownCommand(
            String::from_utf8_lossy(word).chars().take(32).collect(),
        ));
    };
    Ok(Some((request, used)))
}

/// `SUB <channel> [<after> [<epoch>|* [strict]]]`: the words after the channel.
fn parse_resume(words: &[u8]) -> Result<Option<Resume>, ProtocolError> {
    if words.is_empty() {
        return Ok(None);
    }
    let bad = ProtocolError::Malformed {
        what: "SUB resume (SUB <channel> <after-offset> [<epoch-hex>|*] [strict])",
    };
    let mut words = words.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let after = words.next().and_then(fields::number).ok_or(bad.clone())?;
    let epoch = match words.next() {
        None => None,
        Some(word) => fields::epoch(word).ok_or(bad.clone())?,
    };
    let strict = match words.next() {
        None => false,
        Some(word) if word.eq_ignore_ascii_case(b"strict") => true,
        Some(_) => return Err(bad),
    };
    if words.next().is_some() {
        return Err(bad);
    }
    Ok(Some(Resume { after, epoch, strict }))
}

/// Undoes the payload escapes `\\`, `\n`, `\r`; borrows when there is nothing to undo.
pub fn unescape(payload: &[u8]) -> Cow<'_, [u8]> {
    if !payload.contains(&b'\\') {
        return Cow::Borrowed(payload);
    }
    let mut out = Vec::with_capacity(payload.len());
    let mut bytes = payload.iter().copied();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'\\') => out.push(b'\\'),
            Some(b'n') => out.push(b'\n'),
            Some(b'r') => out.push(b'\r'),
            Some(other) => out.extend_from_slice(&[b'\\', other]),
            None => out.push(b'\\'),
        }
    }
    Cow::Owned(out)
}

/// Bytes that need an escape. A counting loop without early exit, so that it vectorises: most
/// payloads have none and are then copied as they are.
fn escapes_needed(payload: &[u8]) -> usize {
    payload.iter().map(|&b| usize::from(b == b'\\' || b == b'\n' || b == b'\r')).sum()
}

/// Appends `payload` escaped for a text line (what `PUB` expects and `MSG` carries).
pub fn put_payload(out: &mut BytesMut, payload: &[u8]) {
    put_escaped(out, payload, escapes_needed(payload));
}

fn put_escaped(out: &mut BytesMut, payload: &[u8], escapes: usize) {
    if escapes == 0 {
        out.put_slice(payload);
        return;
    }
    let mut start = 0;
    for (i, &b) in payload.iter().enumerate() {
        let escape: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            _ => continue,
        };
        out.put_slice(&payload[start..i]);
        out.put_slice(escape);
        start = i + 1;
    }
    out.put_slice(&payload[start..]);
}

/// `MSG <channel> <offset> <payload>\r\n`, payload escaped.
pub fn encode_message(channel: &[u8], offset: u64, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    put_message(&mut out, channel, offset, payload);
    out.freeze()
}

/// Appends a `MSG` line (fan-out batches several into one buffer).
pub fn put_message(out: &mut BytesMut, channel: &[u8], offset: u64, payload: &[u8]) {
    let mut digits = [0u8; 20];
    let digits = super::format_u64(offset, &mut digits);
    let escapes = escapes_needed(payload);
    out.reserve(4 + channel.len() + 1 + digits.len() + 1 + payload.len() + escapes + 2);
    out.put_slice(b"MSG ");
    out.put_slice(channel);
    out.put_u8(b' ');
    out.put_slice(digits);
    out.put_u8(b' ');
    put_escaped(out, payload, escapes);
    out.put_slice(b"\r\n");
}

/// `OK <SUB|UNSUB|NAME> <arg>\r\n`.
pub fn encode_ok(ack: Ack, arg: &[u8]) -> Bytes {
    let word = ack.word().as_bytes();
    let mut out = BytesMut::with_capacity(3 + word.len() + 1 + arg.len() + 2);
    out.put_slice(b"OK ");
    out.put_slice(word);
    out.put_u8(b' ');
    out.put_slice(arg);
    out.put_slice(b"\r\n");
    out.freeze()
}

/// `HIST <channel> <epoch, 16 hex digits> <first> <last> <ok|expired|epoch>\r\n`.
pub fn encode_history(history: &HistoryStatus<'_>) -> Bytes {
    let HistoryStatus { channel, epoch, first, last, status } = *history;
    let mut out = BytesMut::with_capacity(channel.len() + 64);
    out.put_slice(b"HIST ");
    out.put_slice(channel);
    out.put_slice(format!(" {epoch:016x} {first} {last} {}\r\n", status.word()).as_bytes());
    out.freeze()
}

/// `ACK <channel> <offset>\r\n`.
pub fn encode_ack(channel: &[u8], offset: u64) -> Bytes {
    let mut out = BytesMut::with_capacity(channel.len() + 28);
    out.put_slice(b"ACK ");
    out.put_slice(channel);
    out.put_slice(format!(" {offset}\r\n").as_bytes());
    out.freeze()
}

/// `ERR <code> <reason>\r\n`; line breaks in the reason become spaces.
pub fn encode_error(code: ErrorCode, reason: &str) -> Bytes {
    let line = format!("ERR {} {}\r\n", code.code(), reason.replace(['\r', '\n'], " "));
    Bytes::from(line)
}

/// Decodes one server line (the client side of the protocol). Payloads come back unescaped.
pub fn parse_server_line(
    input: &[u8],
    max_frame_bytes: usize,
) -> Result<Option<(ServerFrame<'_>, usize)>, ProtocolError> {
    let Some((line, used)) = split_line(input, max_frame_bytes)? else {
        return Ok(None);
    };
    let (word, rest) = split_word(line);
    let frame = match word {
        b"MSG" => {
            let (channel, rest) = split_word(rest);
            let (offset, payload) = split_word(rest);
            let offset =
                fields::number(offset).ok_or(ProtocolError::Malformed { what: "MSG offset" })?;
            ServerFrame::Message {
                channel: Cow::Borrowed(channel),
                offset,
                payload: unescape(payload),
            }
        }
        b"OK" => {
            let (acked, arg) = split_word(rest);
            let ack = match acked {
                b"SUB" => Ack::Subscribe,
                b"UNSUB" => Ack::Unsubscribe,
                b"NAME" => Ack::Name,
                b"AUTH" => Ack::Auth,
                b"PSUB" => Ack::PatternSubscribe,
                b"PUNSUB" => Ack::PatternUnsubscribe,
                _ => return Err(ProtocolError::Malformed { what: "OK line" }),
            };
            ServerFrame::Ok { ack, arg: Cow::Borrowed(arg) }
        }
        b"ERR" => {
            let (code, reason) = split_word(rest);
            let code = fields::number(code)
                .and_then(|c| u16::try_from(c).ok())
                .ok_or(ProtocolError::Malformed { what: "ERR code" })?;
            let reason = std::str::from_utf8(reason)
                .map_err(|_| ProtocolError::InvalidUtf8 { what: "error reason" })?;
            ServerFrame::Error { code, reason: Cow::Borrowed(reason) }
        }
        b"HIST" => {
            let bad = ProtocolError::Malformed { what: "HIST line" };
            let (channel, rest) = split_word(rest);
            let mut words = rest.split(|&b| b == b' ');
            let epoch = words.next().and_then(fields::epoch_hex).ok_or(bad.clone())?;
            let first = words.next().and_then(fields::number).ok_or(bad.clone())?;
            let last = words.next().and_then(fields::number).ok_or(bad.clone())?;
            let status = match words.next() {
                Some(b"ok") => ResumeStatus::Ok,
                Some(b"expired") => ResumeStatus::Expired,
                Some(b"epoch") => ResumeStatus::EpochChanged,
                _ => return Err(bad),
            };
            ServerFrame::History { channel: Cow::Borrowed(channel), epoch, first, last, status }
        }
        b"ACK" => {
            let (channel, offset) = split_word(rest);
            let offset =
                fields::number(offset).ok_or(ProtocolError::Malformed { what: "ACK offset" })?;
            ServerFrame::Ack { channel: Cow::Borrowed(channel), offset }
        }
        b"PING" => ServerFrame::Ping,
        b"PONG" => ServerFrame::Pong,
        other => match super::presence::parse_text_line(other, rest) {
            Some(frame) => frame?,
            None => {
                return Err(ProtocolError::UnknownCommand(
                    String::from_utf8_lossy(other).into_owned(),
                ))
            }
        },
    };
    Ok(Some((frame, used)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 64;

    fn parse_all(input: &[u8]) -> Vec<Request<'_>> {
        let mut out = Vec::new();
        let mut at = 0;
        while let Some((request, used)) = parse_request(&input[at..], MAX).unwrap() {
            out.push(request);
            at += used;
        }
        assert_eq!(at, input.len(), "every complete line consumed");
        out
    }

    #[test]
    fn commands_with_lf_and_crlf_in_any_case() {
        let input = b"SUB news\nsub sport\r\nUNSUB news\nPUB news hello world\r\npub a\nPING\npong\nNAME alice\n\r\n\nAUTH eyJ.e30.s\npsub room.*\nPUNSUB room.>\r\n";
        assert_eq!(
            parse_all(input),
            vec![
                Request::Subscribe { channel: b"news", resume: None },
                Request::Subscribe { channel: b"sport", resume: None },
                Request::Unsubscribe { channel: b"news" },
                Request::Publish { channel: b"news", payload: Cow::Borrowed(b"hello world") },
                Request::Publish { channel: b"a", payload: Cow::Borrowed(b"") },
                Request::Ping,
                Request::Pong,
                Request::Name { name: b"alice" },
                Request::Noop,
                Request::Noop,
                Request::Auth { token: b"eyJ.e30.s" },
                Request::PatternSubscribe { pattern: b"room.*" },
                Request::PatternUnsubscribe { pattern: b"room.>" },
            ]
        );
    }

    #[test]
    fn a_line_split_at_every_byte_is_incomplete_until_its_newline() {
        let line = b"PUB news a\\nb\r\n";
        for cut in 0..line.len() {
            assert_eq!(parse_request(&line[..cut], MAX), Ok(None), "cut at {cut}");
        }
        assert_eq!(
            parse_request(line, MAX),
            Ok(Some((
                Request::Publish { channel: b"news", payload: Cow::Owned(b"a\nb".to_vec()) },
                line.len()
            )))
        );
    }

    #[test]
    fn errors() {
        assert_eq!(
            parse_request(b"FOO bar\n", MAX),
            Err(ProtocolError::UnknownCommand("FOO".into()))
        );
        assert_eq!(parse_request(b"PING now\n", MAX).unwrap_err().code(), ErrorCode::BadRequest);
        // Too long with and without its newline: rejected without waiting for the end.
        let long = [b'x'; MAX + 1];
        assert_eq!(
            parse_request(&long, MAX),
            Err(ProtocolError::FrameTooLarge { len: MAX + 1, max: MAX })
        );
        let mut long_line = long.to_vec();
        long_line.push(b'\n');
        assert_eq!(parse_request(&long_line, MAX).unwrap_err().code(), ErrorCode::FrameTooLarge);
        // Exactly at the limit is fine.
        let mut at_limit = b"PUB a ".to_vec();
        at_limit.resize(MAX, b'y');
        at_limit.extend_from_slice(b"\r\n");
        assert!(parse_request(&at_limit, MAX).unwrap().is_some());
        // Invalid UTF-8 in a command word is an unknown command, reported readably.
        assert!(matches!(
            parse_request(b"\xff\xfe x\n", MAX),
            Err(ProtocolError::UnknownCommand(_))
        ));
    }

    #[test]
    fn resuming_subscribe_and_history_lines() {
        let parse =
            |line: &'static [u8]| parse_request(line, 1024).map(|r| r.map(|(request, _)| request));
        let sub = |after, epoch, strict| Request::Subscribe {
            channel: b"news",
            resume: Some(Resume { after, epoch, strict }),
        };
        assert_eq!(parse(b"SUB news 120\n"), Ok(Some(sub(120, None, false))));
        assert_eq!(parse(b"SUB news 0 * strict\n"), Ok(Some(sub(0, None, true))));
        assert_eq!(parse(b"sub news 7 00ff\r\n"), Ok(Some(sub(7, Some(255), false))));
        for bad in [
            &b"SUB news x\n"[..],
            b"SUB news 1 zz\n",
            b"SUB news 1 * lax\n",
            b"SUB news 1 * strict more\n",
        ] {
            assert!(
                matches!(parse_request(bad, 1024), Err(ProtocolError::Malformed { .. })),
                "{bad:?}"
            );
        }
        let status = ResumeStatus::Expired;
        let line = encode_history(&HistoryStatus {
            channel: b"news",
            epoch: 0xabc,
            first: 5,
            last: 9,
            status,
        });
        assert_eq!(&line[..], b"HIST news 0000000000000abc 5 9 expired\r\n");
        assert_eq!(
            parse_server_line(&line, 1024).unwrap().unwrap().0,
            ServerFrame::History {
                channel: Cow::Borrowed(b"news"),
                epoch: 0xabc,
                first: 5,
                last: 9,
                status: ResumeStatus::Expired
            }
        );
    }

    #[test]
    fn escapes_round_trip() {
        let payloads: [&[u8]; 5] =
            [b"plain", b"two\nlines\r\n", b"back\\slash", b"C:\\path", b"\\"];
        for payload in payloads {
            let frame = encode_message(b"ch", 7, payload);
            assert_eq!(frame.iter().filter(|&&b| b == b'\n').count(), 1, "one line: {frame:?}");
            let (parsed, used) = parse_server_line(&frame, 1024).unwrap().unwrap();
            assert_eq!(used, frame.len());
            assert_eq!(
                parsed,
                ServerFrame::Message {
                    channel: Cow::Borrowed(b"ch"),
                    offset: 7,
                    payload: Cow::Borrowed(payload)
                }
            );
        }
        assert_eq!(
            &*unescape(b"a\\x\\"),
            b"a\\x\\",
            "unknown escapes and a trailing backslash stay"
        );
    }

    #[test]
    fn server_lines() {
        assert_eq!(
            &encode_message(b"news", 18446744073709551615, b"hi")[..],
            b"MSG news 18446744073709551615 hi\r\n"
        );
        assert_eq!(&encode_message(b"news", 0, b"")[..], b"MSG news 0 \r\n");
        assert_eq!(&encode_ok(Ack::Unsubscribe, b"news")[..], b"OK UNSUB news\r\n");
        assert_eq!(
            &encode_error(ErrorCode::SlowConsumer, "slow\nconsumer")[..],
            b"ERR 507 slow consumer\r\n"
        );
        assert_eq!(
            parse_server_line(b"ERR 413 frame too large\r\n", MAX).unwrap().unwrap().0,
            ServerFrame::Error { code: 413, reason: Cow::Borrowed("frame too large") }
        );
        assert_eq!(
            parse_server_line(b"OK NAME bob\n", MAX).unwrap().unwrap().0,
            ServerFrame::Ok { ack: Ack::Name, arg: Cow::Borrowed(b"bob") }
        );
        assert!(parse_server_line(b"MSG a x y\n", MAX).is_err());
        assert!(parse_server_line(b"ERR 99999 x\n", MAX).is_err());
    }
}
