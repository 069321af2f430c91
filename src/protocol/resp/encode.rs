//! Replies and pushes out.

use super::*;

/// One command, as clients send it: an array of bulk strings (the cluster's broker and the load
/// generator write theirs with it).
pub fn put_command(out: &mut impl BufMut, args: &[&[u8]]) {
    put_header(out, b'*', args.len());
    for arg in args {
        put_header(out, b'$', arg.len());
        out.put_slice(arg);
        out.put_slice(b"\r\n");
    }
}

/// A command's array header (`*n`): its `n` arguments follow, each written with `put_bulk_of`
/// (for commands too long to gather as a slice of arguments first, like the broker's batch of
/// publishes).
pub fn put_array_header(out: &mut impl BufMut, n: usize) {
    put_header(out, b'*', n);
}

/// One bulk string made of `parts` back to back (a Redis key from its prefix, name and suffix,
/// without joining them first).
pub fn put_bulk_of(out: &mut impl BufMut, parts: &[&[u8]]) {
    put_header(out, b'$', parts.iter().map(|part| part.len()).sum());
    for part in parts {
        out.put_slice(part);
    }
    out.put_slice(b"\r\n");
}

/// `*n` or `$n` and its CRLF.
fn put_header(out: &mut impl BufMut, kind: u8, n: usize) {
    out.put_u8(kind);
    put_decimal(out, n as u64);
    out.put_slice(b"\r\n");
}

/// `n` in decimal (every header and count of a command: no allocation per argument).
pub fn put_decimal(out: &mut impl BufMut, n: u64) {
    let mut digits = [0u8; 20];
    out.put_slice(crate::protocol::format_u64(n, &mut digits));
}

/// `n` in decimal as a bulk string (a command's counts and offsets).
pub fn put_bulk_decimal(out: &mut impl BufMut, n: u64) {
    let mut digits = [0u8; 20];
    put_bulk_of(out, &[crate::protocol::format_u64(n, &mut digits)]);
}

/// `+OK`-style simple string.
pub fn put_simple(out: &mut BytesMut, text: &str) {
    out.put_u8(b'+');
    out.put_slice(text.as_bytes());
    out.put_slice(b"\r\n");
}

/// `-ERR …` error (line endings in `text` become spaces).
pub fn put_error(out: &mut BytesMut, text: &str) {
    out.put_u8(b'-');
    out.put_slice(text.replace(['\r', '\n'], " ").as_bytes());
    out.put_slice(b"\r\n");
}

/// `:n` integer.
pub fn put_integer(out: &mut BytesMut, value: i64) {
    out.put_slice(format!(":{value}\r\n").as_bytes());
}

/// `$len` bulk string.
pub fn put_bulk(out: &mut BytesMut, bytes: &[u8]) {
    out.put_slice(format!("${}\r\n", bytes.len()).as_bytes());
    out.put_slice(bytes);
    out.put_slice(b"\r\n");
}

/// The null bulk string (RESP2) or null (RESP3).
pub fn put_null(out: &mut BytesMut, resp3: bool) {
    out.put_slice(if resp3 { b"_\r\n" } else { b"$-1\r\n" });
}

/// The header of an array of `len` (RESP2 `*`), or of a push (RESP3 `>`), whose elements follow.
pub fn put_aggregate(out: &mut BytesMut, len: usize, push: bool) {
    out.put_slice(format!("{}{len}\r\n", if push { '>' } else { '*' }).as_bytes());
}

/// A channel message as Redis delivers it: `message`, the channel, the payload, as an array
/// (RESP2) or a push (RESP3).
pub fn put_message(out: &mut BytesMut, channel: &[u8], payload: &[u8], resp3: bool) {
    put_aggregate(out, 3, resp3);
    put_bulk(out, b"message");
    put_bulk(out, channel);
    put_bulk(out, payload);
}

/// A message to a sharded subscription (SSUBSCRIBE): `smessage`, the channel, the payload.
pub fn put_smessage(out: &mut BytesMut, channel: &[u8], payload: &[u8], resp3: bool) {
    put_aggregate(out, 3, resp3);
    put_bulk(out, b"smessage");
    put_bulk(out, channel);
    put_bulk(out, payload);
}

/// A message to a pattern subscription: `pmessage`, the pattern, the channel, the payload.
pub fn put_pmessage(
    out: &mut BytesMut,
    pattern: &[u8],
    channel: &[u8],
    payload: &[u8],
    resp3: bool,
) {
    put_aggregate(out, 4, resp3);
    put_bulk(out, b"pmessage");
    put_bulk(out, pattern);
    put_bulk(out, channel);
    put_bulk(out, payload);
}

/// A (un)subscription's confirmation: `kind` (`subscribe`, `unsubscribe`), the channel (none:
/// an UNSUBSCRIBE of nothing), and how many subscriptions the connection has now.
pub fn put_subscription(
    out: &mut BytesMut,
    kind: &[u8],
    channel: Option<&[u8]>,
    count: usize,
    resp3: bool,
) {
    put_aggregate(out, 3, resp3);
    put_bulk(out, kind);
    match channel {
        Some(channel) => put_bulk(out, channel),
        None => put_null(out, resp3),
    }
    put_integer(out, count as i64);
}

/// The text of an error reply for one of fanout's refusals, with the error code Redis clients
/// look for where there is one.
pub fn error_text(code: crate::protocol::ErrorCode, detail: &str) -> String {
    use crate::protocol::ErrorCode as E;
    match code {
        E::Unauthorized if detail.starts_with("authenticate first") => {
            format!("NOAUTH {detail}")
        }
        E::Unauthorized => format!("WRONGPASS {detail}"),
        E::Forbidden => format!("NOPERM {detail}"),
        _ => format!("ERR {detail}"),
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;

    #[test]
    fn numbers_and_bulk_strings_are_written_without_gathering_them_first() {
        let mut out = BytesMut::new();
        for n in [0, 7, 10, 1234567890, u64::MAX] {
            put_decimal(&mut out, n);
            out.put_u8(b' ');
        }
        assert_eq!(&out[..], b"0 7 10 1234567890 18446744073709551615 ");
        let mut out = BytesMut::new();
        put_array_header(&mut out, 3);
        put_bulk_of(&mut out, &[b"fanout", b":{", b"room", b"}:log"]);
        put_bulk_decimal(&mut out, 42);
        put_bulk_of(&mut out, &[]);
        let mut expected = BytesMut::new();
        put_command(&mut expected, &[b"fanout:{room}:log", b"42", b""]);
        assert_eq!(out, expected);
    }
}
