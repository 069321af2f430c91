//! The JSON form of the protocol, spoken in WebSocket text frames (and used for the bodies of the
//! HTTP endpoints). One JSON object per message, same commands and offsets as the TCP formats:
//!
//! ```text
//! client: {"op":"sub","channel":"news"}            {"op":"sub","channel":"news","after":17,"epoch":"9f..","strict":false}
//!         ("after":"now": replay nothing, answer with the epoch and latest offset)
//!         {"op":"unsub","channel":"news"}          {"op":"pub","channel":"news","data":"hi"}  ("data64": base64; "ack": true)
//!         {"op":"name","name":"alice"}             {"op":"ping"}  {"op":"pong"}
//!         {"op":"auth","token":"eyJ…"}  {"op":"psub","pattern":"prices.*"}  {"op":"punsub","pattern":"prices.*"}
//! server: {"op":"msg","channel":"news","offset":18,"data":"hi"}   ("data64" when the payload is not UTF-8)
//!         {"op":"ok","cmd":"sub","arg":"news"}     {"op":"err","code":422,"reason":"..."}
//!         {"op":"hist","channel":"news","epoch":"9f..","first":3,"last":18,"status":"ok"}
//!         {"op":"ack","channel":"news","offset":18}  {"op":"ping"}  {"op":"pong"}
//! ```
//!
//! Epochs are 16 hex digits in a string: JavaScript numbers cannot hold 64 bits exactly.
//! Offsets are plain numbers (exact in JavaScript up to 2^53).

use std::borrow::Cow;

use base64::Engine as _;
use bytes::{BufMut, BytesMut};
use serde_json::Value;

use super::{Ack, HistoryStatus, ProtocolError, Request, Resume};

fn base64() -> &'static base64::engine::GeneralPurpose {
    &base64::engine::general_purpose::STANDARD
}

/// Appends `text` as a JSON string (quoted and escaped).
pub fn put_string(out: &mut BytesMut, text: &str) {
    // Writing into a BytesMut cannot fail.
    let _ = serde_json::to_writer(out.writer(), text);
}

/// Appends bytes as a JSON string, lossily (names are validated UTF-8 before they are echoed).
fn put_lossy(out: &mut BytesMut, bytes: &[u8]) {
    put_string(out, &String::from_utf8_lossy(bytes));
}

/// Appends `,"data":"…"` for a UTF-8 payload, else `,"data64":"…"` (standard base64).
pub fn put_payload_field(out: &mut BytesMut, payload: &[u8]) {
    match std::str::from_utf8(payload) {
        Ok(text) => {
            out.put_slice(b",\"data\":");
            put_string(out, text);
        }
        Err(_) => {
            out.put_slice(b",\"data64\":\"");
            let start = out.len();
            out.resize(start + base64::encoded_len(payload.len(), true).unwrap_or(0), 0);
            let written = base64().encode_slice(payload, &mut out[start..]).unwrap_or(0);
            out.truncate(start + written);
            out.put_u8(b'"');
        }
    }
}

/// Appends a message object.
pub fn put_message(out: &mut BytesMut, channel: &[u8], offset: u64, payload: &[u8]) {
    out.put_slice(b"{\"op\":\"msg\",\"channel\":");
    put_lossy(out, channel);
    out.put_slice(b",\"offset\":");
    out.put_slice(offset.to_string().as_bytes());
    put_payload_field(out, payload);
    out.put_u8(b'}');
}

/// A message object as bytes.
pub fn message(channel: &[u8], offset: u64, payload: &[u8]) -> BytesMut {
    let mut out = BytesMut::with_capacity(48 + channel.len() + payload.len());
    put_message(&mut out, channel, offset, payload);
    out
}

/// `{"op":"ok","cmd":"sub","arg":"news"}`.
pub fn ok(ack: Ack, arg: &[u8]) -> BytesMut {
    let mut out = BytesMut::with_capacity(40 + arg.len());
    out.put_slice(b"{\"op\":\"ok\",\"cmd\":\"");
    out.put_slice(ack.word().to_ascii_lowercase().as_bytes());
    out.put_slice(b"\",\"arg\":");
    put_lossy(&mut out, arg);
    out.put_u8(b'}');
    out
}

/// `{<prefix>"code":400,"reason":"…"}`.
fn error_with(prefix: &str, code: u16, reason: &str) -> BytesMut {
    let mut out = BytesMut::with_capacity(40 + reason.len());
    out.put_slice(format!("{{{prefix}\"code\":{code},\"reason\":").as_bytes());
    put_string(&mut out, reason);
    out.put_u8(b'}');
    out
}

/// `{"code":400,"reason":"…"}`: the body of an HTTP error.
pub fn error_object(code: u16, reason: &str) -> BytesMut {
    error_with("", code, reason)
}

/// `{"op":"err","code":400,"reason":"…"}`.
pub fn error(code: u16, reason: &str) -> BytesMut {
    error_with("\"op\":\"err\",", code, reason)
}

/// The fields of a history status, without braces: `"channel":…,"epoch":…,…,"status":"ok"`.
pub fn put_history_fields(out: &mut BytesMut, history: &HistoryStatus<'_>) {
    let HistoryStatus { channel, epoch, first, last, status } = *history;
    out.put_slice(b"\"channel\":");
    put_lossy(out, channel);
    out.put_slice(
        format!(
            ",\"epoch\":\"{epoch:016x}\",\"first\":{first},\"last\":{last},\"status\":\"{}\"",
            status.word()
        )
        .as_bytes(),
    );
}

/// `{<prefix>"channel":…,"epoch":…,…}`: a history status object.
pub fn history_object(prefix: &str, history: &HistoryStatus<'_>) -> BytesMut {
    let mut out = BytesMut::with_capacity(96 + history.channel.len());
    out.put_u8(b'{');
    out.put_slice(prefix.as_bytes());
    put_history_fields(&mut out, history);
    out.put_u8(b'}');
    out
}

/// `{"op":"hist",…}`.
pub fn history(history: &HistoryStatus<'_>) -> BytesMut {
    history_object("\"op\":\"hist\",", history)
}

/// `{<prefix>"channel":"news","offset":18}`.
fn ack_with(prefix: &str, channel: &[u8], offset: u64) -> BytesMut {
    let mut out = BytesMut::with_capacity(40 + channel.len());
    out.put_u8(b'{');
    out.put_slice(prefix.as_bytes());
    out.put_slice(b"\"channel\":");
    put_lossy(&mut out, channel);
    out.put_slice(format!(",\"offset\":{offset}}}").as_bytes());
    out
}

/// `{"channel":"news","offset":18}`: the body of an HTTP publish's answer.
pub fn ack_object(channel: &[u8], offset: u64) -> BytesMut {
    ack_with("", channel, offset)
}

/// `{"op":"ack","channel":"news","offset":18}`.
pub fn ack(channel: &[u8], offset: u64) -> BytesMut {
    ack_with("\"op\":\"ack\",", channel, offset)
}

/// Parses a JSON command. The returned request borrows from `value`.
pub fn parse_request(value: &Value) -> Result<Request<'_>, ProtocolError> {
    let Some(object) = value.as_object() else {
        return Err(ProtocolError::Malformed { what: "command: expected a JSON object" });
    };
    let text = |field: &'static str| -> Result<&[u8], ProtocolError> {
        object
            .get(field)
            .and_then(Value::as_str)
            .map(str::as_bytes)
            .ok_or(ProtocolError::Malformed { what: field_error(field) })
    };
    let op = object.get("op").and_then(Value::as_str).unwrap_or("");
    Ok(match op {
        "sub" => {
            let channel = text("channel")?;
            let resume = match object.get("after") {
                None | Some(Value::Null) => None,
                Some(after) => {
                    // "now": replay nothing, but learn the epoch and latest offset (HIST).
                    let after = match after {
                        Value::String(now) if now == "now" => u64::MAX,
                        _ => after.as_u64().ok_or(ProtocolError::Malformed {
                            what: "after: expected an offset or \"now\"",
                        })?,
                    };
                    let epoch = match object.get("epoch") {
                        None | Some(Value::Null) => None,
                        Some(Value::String(word)) => super::fields::epoch(word.as_bytes()).ok_or(
                            ProtocolError::Malformed {
                                what: "epoch: expected 1 to 16 hex digits or \"*\"",
                            },
                        )?,
                        Some(_) => {
                            return Err(ProtocolError::Malformed {
                                what: "epoch: expected a string of hex digits",
                            })
                        }
                    };
                    let strict = object.get("strict").and_then(Value::as_bool).unwrap_or(false);
                    Some(Resume { after, epoch, strict })
                }
            };
            Request::Subscribe { channel, resume }
        }
        "unsub" => Request::Unsubscribe { channel: text("channel")? },
        "pub" => {
            let channel = text("channel")?;
            let payload = match (object.get("data"), object.get("data64")) {
                (Some(Value::String(data)), None) => Cow::Borrowed(data.as_bytes()),
                (None, Some(Value::String(data64))) => {
                    Cow::Owned(base64().decode(data64).map_err(|_| ProtocolError::Malformed {
                        what: "data64: expected standard base64",
                    })?)
                }
                _ => {
                    return Err(ProtocolError::Malformed {
                        what: "pub: expected a string in exactly one of data and data64",
                    })
                }
            };
            if object.get("ack").and_then(Value::as_bool).unwrap_or(false) {
                Request::PublishAcked { channel, payload }
            } else {
                Request::Publish { channel, payload }
            }
        }
        "name" => Request::Name { name: text("name")? },
        "auth" => Request::Auth { token: text("token")? },
        "psub" => Request::PatternSubscribe { pattern: text("pattern")? },
        "punsub" => Request::PatternUnsubscribe { pattern: text("pattern")? },
        "presence" => Request::Presence { channel: text("channel")?, stats_only: false },
        "presence_stats" => Request::Presence { channel: text("channel")?, stats_only: true },
        "ping" => Request::Ping,
        "pong" => Request::Pong,
        other => return Err(ProtocolError::UnknownCommand(other.chars().take(32).collect())),
    })
}

fn field_error(field: &'static str) -> &'static str {
    match field {
        "channel" => "channel: expected a string",
        "name" => "name: expected a string",
        "token" => "token: expected a string",
        "pattern" => "pattern: expected a string",
        _ => "field: expected a string",
    }
}

/// Parses the bytes of a text message into a JSON value.
pub fn parse_value(text: &[u8]) -> Result<Value, ProtocolError> {
    serde_json::from_slice(text).map_err(|_| ProtocolError::Malformed { what: "JSON" })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Request<'static>, ProtocolError> {
        let value: &'static Value = Box::leak(Box::new(parse_value(text.as_bytes())?));
        parse_request(value)
    }

    #[test]
    fn commands() {
        assert_eq!(
            parse(r#"{"op":"sub","channel":"news"}"#),
            Ok(Request::Subscribe { channel: b"news", resume: None })
        );
        assert_eq!(
            parse(
                r#"{"op":"sub","channel":"news","after":17,"epoch":"00000000000000ff","strict":true}"#
            ),
            Ok(Request::Subscribe {
                channel: b"news",
                resume: Some(Resume { after: 17, epoch: Some(255), strict: true })
            })
        );
        assert_eq!(
            parse(r#"{"op":"sub","channel":"n","after":"now"}"#),
            Ok(Request::Subscribe {
                channel: b"n",
                resume: Some(Resume { after: u64::MAX, epoch: None, strict: false })
            })
        );
        assert_eq!(
            parse(r#"{"op":"pub","channel":"c","data":"h\u00e9\n"}"#),
            Ok(Request::Publish { channel: b"c", payload: Cow::Borrowed("hé\n".as_bytes()) })
        );
        assert_eq!(
            parse(r#"{"op":"pub","channel":"c","data64":"AP8=","ack":true}"#),
            Ok(Request::PublishAcked { channel: b"c", payload: Cow::Owned(vec![0, 255]) })
        );
        assert_eq!(
            parse(r#"{"op":"unsub","channel":"c"}"#),
            Ok(Request::Unsubscribe { channel: b"c" })
        );
        assert_eq!(parse(r#"{"op":"name","name":"al"}"#), Ok(Request::Name { name: b"al" }));
        assert_eq!(parse(r#"{"op":"ping"}"#), Ok(Request::Ping));
        assert_eq!(parse(r#"{"op":"pong"}"#), Ok(Request::Pong));
        assert_eq!(
            parse(r#"{"op":"auth","token":"a.b.c"}"#),
            Ok(Request::Auth { token: b"a.b.c" })
        );
        assert_eq!(
            parse(r#"{"op":"psub","pattern":"room.*"}"#),
            Ok(Request::PatternSubscribe { pattern: b"room.*" })
        );
        assert_eq!(
            parse(r#"{"op":"punsub","pattern":">"}"#),
            Ok(Request::PatternUnsubscribe { pattern: b">" })
        );
    }

    #[test]
    fn bad_commands() {
        for bad in [
            "[1]",
            "{",
            r#"{"op":"sub"}"#,
            r#"{"op":"sub","channel":5}"#,
            r#"{"op":"sub","channel":"a","after":-1}"#,
            r#"{"op":"sub","channel":"a","after":1,"epoch":"xyz"}"#,
            r#"{"op":"pub","channel":"a"}"#,
            r#"{"op":"pub","channel":"a","data":"x","data64":"eA=="}"#,
            r#"{"op":"pub","channel":"a","data64":"!!"}"#,
            r#"{"op":"auth"}"#,
            r#"{"op":"auth","token":17}"#,
            r#"{"op":"psub","pattern":["a"]}"#,
        ] {
            assert!(matches!(parse(bad), Err(ProtocolError::Malformed { .. })), "{bad}");
        }
        assert_eq!(parse(r#"{"op":"jump"}"#), Err(ProtocolError::UnknownCommand("jump".into())));
        assert_eq!(parse(r#"{}"#), Err(ProtocolError::UnknownCommand(String::new())));
    }

    #[test]
    fn server_objects_are_valid_json() {
        let check = |bytes: &[u8]| -> Value { serde_json::from_slice(bytes).unwrap() };
        let m = check(&message(b"n\"ews", 18, "hi \"there\"\n".as_bytes()));
        assert_eq!(m["op"], "msg");
        assert_eq!(m["channel"], "n\"ews");
        assert_eq!(m["offset"], 18);
        assert_eq!(m["data"], "hi \"there\"\n");
        let binary = check(&message(b"c", 1, &[0, 159, 146, 150]));
        assert_eq!(binary["data64"], "AJ+Slg==");
        assert!(binary.get("data").is_none());
        let status = crate::protocol::ResumeStatus::Expired;
        let h = check(&history(&HistoryStatus {
            channel: b"c",
            epoch: 0xabc,
            first: 3,
            last: 18,
            status,
        }));
        assert_eq!(
            (h["epoch"].as_str(), h["first"].as_u64(), h["status"].as_str()),
            (Some("0000000000000abc"), Some(3), Some("expired"))
        );
        assert_eq!(check(&ok(Ack::Subscribe, b"c"))["cmd"], "sub");
        assert_eq!(check(&error(422, "bad \u{1}"))["reason"], "bad \u{1}");
        assert_eq!(check(&ack(b"c", 9))["offset"], 9);
        assert_eq!(check(&ack_object(b"c", 9))["channel"], "c");
        assert_eq!(check(&error_object(404, "no"))["code"], 404);
    }
}
