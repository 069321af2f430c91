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

/// `*n` or `$n` and its CRLF.
fn put_header(out: &mut impl BufMut, kind: u8, n: usize) {
    out.put_u8(kind);
    out.put_slice(n.to_string().as_bytes());
    out.put_slice(b"\r\n");
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
