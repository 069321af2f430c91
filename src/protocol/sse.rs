//! Server-Sent Events (the `text/event-stream` format of the HTML standard), for `GET /sse`.
//!
//! A message is one event: `id:` is its position, `<offset>@<epoch>` (the epoch in 16 hex digits,
//! so that a reconnect after the log changed is told so), `event:` its channel (so `addEventListener(channel)`
//! receives it), `data:` the payload itself when it is UTF-8 without carriage returns (a payload
//! with line feeds takes one `data:` line per line; the browser joins them with "\n" again).
//! Any other payload is sent base64-encoded as an event named `<channel> base64`; channel names
//! have no spaces, so no channel can be mistaken for it. Server notices are events whose names
//! have a space too: `fanout history` (a resume's status, JSON) and `fanout error` (JSON, then the
//! stream ends). Acknowledgements and keepalive heartbeats are comments, which browsers ignore.
//! On a stream of several channels, id-only events carry the stream's cursor (built per
//! connection by the worker, `sse_sent`).

use base64::Engine as _;
use bytes::{BufMut, BytesMut};

use super::HistoryStatus;

/// Appends the event for one message.
pub fn put_message(out: &mut BytesMut, channel: &[u8], epoch: u64, offset: u64, payload: &[u8]) {
    out.put_slice(b"id: ");
    put_position(out, offset, epoch);
    out.put_slice(b"\nevent: ");
    out.put_slice(channel);
    match std::str::from_utf8(payload) {
        Ok(text) if !text.contains('\r') => {
            out.put_u8(b'\n');
            for line in text.split('\n') {
                out.put_slice(b"data: ");
                out.put_slice(line.as_bytes());
                out.put_u8(b'\n');
            }
        }
        _ => {
            out.put_slice(b" base64\ndata: ");
            out.put_slice(base64::engine::general_purpose::STANDARD.encode(payload).as_bytes());
            out.put_u8(b'\n');
        }
    }
    out.put_u8(b'\n');
}

/// Appends a position, `<offset>@<epoch in 16 hex digits>`: what event ids and cursors carry.
pub fn put_position(out: &mut BytesMut, offset: u64, epoch: u64) {
    use std::io::Write as _;
    let _ = write!(out.writer(), "{offset}@{epoch:016x}");
}

/// A comment line (ignored by browsers; keeps proxies from timing the stream out).
pub fn comment(text: &str) -> BytesMut {
    let mut out = BytesMut::with_capacity(text.len() + 4);
    out.put_slice(b": ");
    out.put_slice(text.replace(['\r', '\n'], " ").as_bytes());
    out.put_slice(b"\n\n");
    out
}

/// A notice event with a JSON body.
fn notice(name: &str, json: &[u8]) -> BytesMut {
    let mut out = BytesMut::with_capacity(json.len() + 32);
    out.put_slice(b"event: ");
    out.put_slice(name.as_bytes());
    out.put_slice(b"\ndata: ");
    out.put_slice(json);
    out.put_slice(b"\n\n");
    out
}

/// Appends `event: fanout <name>` with a JSON body (presence: `join`, `leave`, `presence`,
/// `unsubscribed`).
pub fn put_notice(out: &mut BytesMut, name: &str, json: &[u8]) {
    out.put_slice(&notice(&format!("fanout {name}"), json));
}

/// `event: fanout error` with `{"code":…,"reason":…}`.
pub fn error(code: u16, reason: &str) -> BytesMut {
    notice("fanout error", &super::json::error_object(code, reason))
}

/// `event: fanout history` with the resume status.
pub fn history(history: &HistoryStatus<'_>) -> BytesMut {
    notice("fanout history", &super::json::history_object("", history))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(channel: &[u8], offset: u64, payload: &[u8]) -> String {
        let mut out = BytesMut::new();
        put_message(&mut out, channel, 0xab, offset, payload);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn text_binary_and_multiline_payloads() {
        let e = "@00000000000000ab";
        assert_eq!(event(b"news", 7, b"hello"), format!("id: 7{e}\nevent: news\ndata: hello\n\n"));
        assert_eq!(
            event(b"c", 8, b"a\n\nb"),
            format!("id: 8{e}\nevent: c\ndata: a\ndata: \ndata: b\n\n")
        );
        assert_eq!(event(b"c", 9, b""), format!("id: 9{e}\nevent: c\ndata: \n\n"));
        assert_eq!(
            event(b"c", 10, b"a\r\nb"),
            format!("id: 10{e}\nevent: c base64\ndata: YQ0KYg==\n\n")
        );
        assert_eq!(event(b"c", 11, &[0xff]), format!("id: 11{e}\nevent: c base64\ndata: /w==\n\n"));
        assert_eq!(&comment("ping\nx")[..], b": ping x\n\n");
        let e = error(507, "slow");
        assert!(e.starts_with(b"event: fanout error\ndata: {\"code\":507"));
        let status = crate::protocol::ResumeStatus::Ok;
        let h = history(&HistoryStatus { channel: b"c", epoch: 1, first: 2, last: 3, status });
        assert!(h.ends_with(b"\"status\":\"ok\"}\n\n"));
    }

    #[test]
    fn positions_round_trip_and_bad_ones_are_refused() {
        let mut out = BytesMut::new();
        put_position(&mut out, 17, 0xfeed);
        assert_eq!(&out[..], b"17@000000000000feed");
        // What the browser sends back reads as the same position.
        assert_eq!(super::super::fields::position(&out), Some((17, Some(0xfeed))));
    }
}
