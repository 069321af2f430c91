//! Presence in every format: who is subscribed to a channel (`PRESENCE`), how many
//! (`PRESENCE_STATS`), the join and leave events of its members, and the notice that the server
//! took a connection out of a channel.
//!
//! ```text
//! text:   MEMBER <channel> <client> <user|-> <node> <info>     (one per member, then:)
//!         PRESENCE <channel> <clients> <users>                   (alone: the stats)
//!         JOIN <channel> <client> <user|-> <info> | LEAVE <channel> <client> <user|->
//!         UNSUBSCRIBED <channel> <reason>
//! binary: MEMBER 0x86, PRESENCE 0x87, JOIN 0x88, LEAVE 0x89, UNSUBSCRIBED 0x8A
//! JSON:   {"op":"presence","channel":..,"clients":..,"users":..[,"members":[..]]}
//!         {"op":"join"|"leave","channel":..,"client":..,"user":..[,"info":{..}]}
//!         {"op":"unsubscribed","channel":..,"reason":..}
//! ```
//!
//! `info` is a JSON object (from the token's `info` claim, `{}` without one), written as it is:
//! the server serialised it compactly, so it never holds a line break. A join or leave travels
//! between threads and nodes as an `Event` in a compact binary form (`put_event`, `events`).

use std::borrow::Cow;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::{binary, json, sse, websocket, Format, ProtocolError, ServerFrame};

/// One member of a channel: a subscribed connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The connection's id, unique across the cluster (`<node>-<worker>-<serial>`).
    pub client: Box<str>,
    /// The token's `sub`, else the claimed name, else empty.
    pub user: Box<str>,
    /// The node the connection is on.
    pub node: Arc<str>,
    /// The token's `info` claim, compact JSON (empty: none).
    pub info: Box<str>,
}

impl Member {
    /// `info`, or `{}` without one.
    pub fn info_json(&self) -> &str {
        if self.info.is_empty() {
            "{}"
        } else {
            &self.info
        }
    }
}

/// A join or a leave, as it travels through the ring and Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    /// A join (else a leave).
    pub join: bool,
    /// The member's client id.
    pub client: &'a str,
    /// Its user.
    pub user: &'a str,
    /// Its node.
    pub node: &'a str,
    /// Its info (empty: none).
    pub info: &'a str,
    /// The seq of the batch that sent it from the member's node (a counter per channel and
    /// node, which its members' joins and leaves also draw from): a member is not sent its
    /// node's batches that went out before it joined.
    pub seq: u64,
    /// When it happened, on the same counter: a member is not sent its node's leaves that
    /// happened before it joined (no presence answer it could get showed them).
    pub happened: u64,
}

impl<'a> Event<'a> {
    /// The event of `member` joining (`join`) or leaving, the `seq`th of its channel here.
    pub fn of(member: &'a Member, join: bool, seq: u64) -> Self {
        Event {
            join,
            client: &member.client,
            user: &member.user,
            node: &member.node,
            info: &member.info,
            seq,
            happened: seq,
        }
    }

    /// The same event, happened at `happened`.
    pub fn happened_at(self, happened: u64) -> Self {
        Event { happened, ..self }
    }

    /// Whether a member of this node whose own join drew `since` is not to be sent this event
    /// (`local`: the event is of this node; other nodes' counters are not comparable): what
    /// went out before it joined (its presence answers show it), and a leave from before.
    pub fn precedes(&self, since: u64, local: bool) -> bool {
        local && (self.seq < since || (!self.join && self.happened < since))
    }

    fn info_json(&self) -> &str {
        if self.info.is_empty() {
            "{}"
        } else {
            self.info
        }
    }
}

/// Appends one event: `J` or `L`, then client, user and node (each a `u8` length and bytes),
/// info (a `u16` length and bytes), then `seq` and `happened` (`u64`s, last, so that Redis's
/// scripts read the fields before them by position). Fields too long for their length are cut (ids and names are
/// validated shorter; info is bounded by `--max-info-bytes`, at most 64 KiB).
pub fn put_event(out: &mut Vec<u8>, event: &Event<'_>) {
    out.push(if event.join { b'J' } else { b'L' });
    for field in [event.client, event.user, event.node] {
        let field = &field.as_bytes()[..field.len().min(u8::MAX as usize)];
        out.push(field.len() as u8);
        out.extend_from_slice(field);
    }
    let info = &event.info.as_bytes()[..event.info.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(info.len() as u16).to_be_bytes());
    out.extend_from_slice(info);
    out.extend_from_slice(&event.seq.to_be_bytes());
    out.extend_from_slice(&event.happened.to_be_bytes());
}

/// The events `put_event` wrote, in order; `None` when the bytes are not such a list (or hold
/// invalid UTF-8).
pub fn events(bytes: &[u8]) -> Option<Vec<Event<'_>>> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while let Some((&kind, after)) = rest.split_first() {
        let join = match kind {
            b'J' => true,
            b'L' => false,
            _ => return None,
        };
        rest = after;
        let mut short = || -> Option<&str> {
            let (&len, after) = rest.split_first()?;
            let field = after.get(..len as usize)?;
            rest = &after[len as usize..];
            std::str::from_utf8(field).ok()
        };
        let (client, user, node) = (short()?, short()?, short()?);
        let (len, after) = rest.split_first_chunk::<2>()?;
        let len = u16::from_be_bytes(*len) as usize;
        let info = std::str::from_utf8(after.get(..len)?).ok()?;
        let (seq, after) = after.get(len..)?.split_first_chunk::<8>()?;
        let (happened, after) = after.split_first_chunk::<8>()?;
        rest = after;
        let (seq, happened) = (u64::from_be_bytes(*seq), u64::from_be_bytes(*happened));
        out.push(Event { join, client, user, node, info, seq, happened });
    }
    Some(out)
}

fn user_word(user: &str) -> &str {
    if user.is_empty() {
        "-"
    } else {
        user
    }
}

fn put_json_member(out: &mut BytesMut, member: &Member, with_node: bool) {
    out.put_slice(b"{\"client\":");
    json::put_string(out, &member.client);
    out.put_slice(b",\"user\":");
    json::put_string(out, &member.user);
    if with_node {
        out.put_slice(b",\"node\":");
        json::put_string(out, &member.node);
    }
    out.put_slice(b",\"info\":");
    out.put_slice(member.info_json().as_bytes());
    out.put_u8(b'}');
}

/// The JSON object of a presence answer: counts, and the members unless `members` is `None`.
pub fn json_presence(
    channel: &[u8],
    members: Option<&[Arc<Member>]>,
    clients: usize,
    users: usize,
) -> BytesMut {
    let mut out = BytesMut::new();
    out.put_slice(b"{\"op\":\"presence\",\"channel\":");
    json::put_string(&mut out, &String::from_utf8_lossy(channel));
    out.put_slice(format!(",\"clients\":{clients},\"users\":{users}").as_bytes());
    if let Some(members) = members {
        out.put_slice(b",\"members\":[");
        for (i, member) in members.iter().enumerate() {
            if i > 0 {
                out.put_u8(b',');
            }
            put_json_member(&mut out, member, true);
        }
        out.put_u8(b']');
    }
    out.put_u8(b'}');
    out
}

fn json_event(channel: &[u8], event: &Event<'_>) -> BytesMut {
    let mut out = BytesMut::new();
    out.put_slice(if event.join {
        b"{\"op\":\"join\",\"channel\":"
    } else {
        b"{\"op\":\"leave\",\"channel\":"
    });
    json::put_string(&mut out, &String::from_utf8_lossy(channel));
    out.put_slice(b",\"client\":");
    json::put_string(&mut out, event.client);
    out.put_slice(b",\"user\":");
    json::put_string(&mut out, event.user);
    if event.join {
        out.put_slice(b",\"info\":");
        out.put_slice(event.info_json().as_bytes());
    }
    out.put_u8(b'}');
    out
}

fn json_unsubscribed(channel: &[u8], reason: &str) -> BytesMut {
    let mut out = BytesMut::new();
    out.put_slice(b"{\"op\":\"unsubscribed\",\"channel\":");
    json::put_string(&mut out, &String::from_utf8_lossy(channel));
    out.put_slice(b",\"reason\":");
    json::put_string(&mut out, reason);
    out.put_u8(b'}');
    out
}

/// A binary frame of `opcode` with `channel` then the given short fields and a rest.
fn binary_frame(opcode: u8, channel: &[u8], shorts: &[&[u8]], rest: &[u8]) -> BytesMut {
    let shorts: Vec<&[u8]> = shorts.iter().map(|s| &s[..s.len().min(u8::MAX as usize)]).collect();
    let len =
        1 + 1 + channel.len() + shorts.iter().map(|s| 1 + s.len()).sum::<usize>() + rest.len();
    let mut out = BytesMut::with_capacity(binary::LENGTH_BYTES + len);
    out.put_u32(len as u32);
    out.put_u8(opcode);
    for field in std::iter::once(channel).chain(shorts) {
        out.put_u8(field.len() as u8);
        out.put_slice(field);
    }
    out.put_slice(rest);
    out
}

fn binary_presence_end(channel: &[u8], clients: usize, users: usize) -> BytesMut {
    let mut counts = [0u8; 16];
    counts[..8].copy_from_slice(&(clients as u64).to_be_bytes());
    counts[8..].copy_from_slice(&(users as u64).to_be_bytes());
    binary_frame(binary::op::PRESENCE_END, channel, &[], &counts)
}

fn binary_event(channel: &[u8], event: &Event<'_>) -> BytesMut {
    match event.join {
        true => binary_frame(
            binary::op::JOIN,
            channel,
            &[event.client.as_bytes(), event.user.as_bytes()],
            event.info_json().as_bytes(),
        ),
        false => binary_frame(
            binary::op::LEAVE,
            channel,
            &[event.client.as_bytes(), event.user.as_bytes()],
            &[],
        ),
    }
}

fn ws_text(out: &mut BytesMut, json: &[u8]) {
    websocket::put_header(out, websocket::opcode::TEXT, json.len());
    out.put_slice(json);
}

fn ws_binary(out: &mut BytesMut, frame: &[u8]) {
    websocket::put_header(out, websocket::opcode::BINARY, frame.len());
    out.put_slice(frame);
}

impl Format {
    /// Appends a join or leave event for a subscriber of `channel`. Redis clients and plain
    /// HTTP get none: they receive exactly the messages they asked for.
    pub fn put_event(self, out: &mut BytesMut, channel: &[u8], event: &Event<'_>) {
        let name = String::from_utf8_lossy(channel);
        match self {
            Format::Text => {
                let word = if event.join { "JOIN" } else { "LEAVE" };
                out.put_slice(
                    format!("{word} {name} {} {}", event.client, user_word(event.user)).as_bytes(),
                );
                if event.join {
                    out.put_u8(b' ');
                    out.put_slice(event.info_json().as_bytes());
                }
                out.put_slice(b"\r\n");
            }
            Format::Binary => out.put_slice(&binary_event(channel, event)),
            Format::WsJson => ws_text(out, &json_event(channel, event)),
            Format::WsBinary => ws_binary(out, &binary_event(channel, event)),
            Format::Sse => {
                let kind = if event.join { "join" } else { "leave" };
                sse::put_notice(out, kind, &json_event(channel, event));
            }
            Format::Http
            | Format::Resp2
            | Format::Resp3
            | Format::Resp2Sharded
            | Format::Resp3Sharded => {}
        }
    }

    /// The answer to `PRESENCE` (`members` given) or `PRESENCE_STATS` (`None`).
    pub fn encode_presence(
        self,
        channel: &[u8],
        members: Option<&[Arc<Member>]>,
        clients: usize,
        users: usize,
    ) -> Bytes {
        let name = String::from_utf8_lossy(channel);
        let mut out = BytesMut::new();
        match self {
            Format::Text => {
                for m in members.unwrap_or_default() {
                    let line = format!(
                        "MEMBER {name} {} {} {} {}\r\n",
                        m.client,
                        user_word(&m.user),
                        m.node,
                        m.info_json()
                    );
                    out.put_slice(line.as_bytes());
                }
                out.put_slice(format!("PRESENCE {name} {clients} {users}\r\n").as_bytes());
            }
            Format::Binary | Format::WsBinary => {
                let mut frames = Vec::new();
                for m in members.unwrap_or_default() {
                    let shorts = [m.client.as_bytes(), m.user.as_bytes(), m.node.as_bytes()];
                    frames.push(binary_frame(
                        binary::op::MEMBER,
                        channel,
                        &shorts,
                        m.info_json().as_bytes(),
                    ));
                }
                frames.push(binary_presence_end(channel, clients, users));
                for frame in frames {
                    match self {
                        Format::Binary => out.put_slice(&frame),
                        _ => ws_binary(&mut out, &frame),
                    }
                }
            }
            Format::WsJson => ws_text(&mut out, &json_presence(channel, members, clients, users)),
            Format::Sse => sse::put_notice(
                &mut out,
                "presence",
                &json_presence(channel, members, clients, users),
            ),
            Format::Http => {
                return super::http::response(
                    200,
                    "application/json",
                    &json_presence(channel, members, clients, users),
                );
            }
            Format::Resp2 | Format::Resp3 | Format::Resp2Sharded | Format::Resp3Sharded => {
                let mut frame = BytesMut::new();
                super::resp::put_error(
                    &mut frame,
                    "ERR presence is not a Redis command; use the text, binary or JSON protocol",
                );
                return frame.freeze();
            }
        }
        out.freeze()
    }

    /// Tells a subscriber that the server took it out of `channel` (`remaining`: its
    /// subscriptions left, which a Redis client's `unsubscribe` reply counts).
    pub fn encode_unsubscribed(self, channel: &[u8], reason: &str, remaining: usize) -> Bytes {
        // One line whatever the caller passed: it ends a text frame.
        let reason = &reason.replace(['\r', '\n'], " ");
        let mut out = BytesMut::new();
        match self {
            Format::Text => out.put_slice(
                format!("UNSUBSCRIBED {} {reason}\r\n", String::from_utf8_lossy(channel))
                    .as_bytes(),
            ),
            Format::Binary => out.put_slice(&binary_frame(
                binary::op::UNSUBSCRIBED,
                channel,
                &[],
                reason.as_bytes(),
            )),
            Format::WsBinary => ws_binary(
                &mut out,
                &binary_frame(binary::op::UNSUBSCRIBED, channel, &[], reason.as_bytes()),
            ),
            Format::WsJson => ws_text(&mut out, &json_unsubscribed(channel, reason)),
            Format::Sse => {
                sse::put_notice(&mut out, "unsubscribed", &json_unsubscribed(channel, reason))
            }
            Format::Http => {}
            // What Redis itself sends when a server-side change ends a subscription.
            Format::Resp2 | Format::Resp3 | Format::Resp2Sharded | Format::Resp3Sharded => {
                let word: &[u8] = if self.is_sharded() { b"sunsubscribe" } else { b"unsubscribe" };
                super::resp::put_subscription(
                    &mut out,
                    word,
                    Some(channel),
                    remaining,
                    self.is_resp3(),
                );
            }
        }
        out.freeze()
    }
}

/// Decodes the text protocol's presence lines (the client side); `None` for other words.
pub(super) fn parse_text_line<'a>(
    word: &[u8],
    rest: &'a [u8],
) -> Option<Result<ServerFrame<'a>, ProtocolError>> {
    let malformed = |what| Err(ProtocolError::Malformed { what });
    let text = match std::str::from_utf8(rest) {
        Ok(text) => text,
        Err(_) => return Some(Err(ProtocolError::InvalidUtf8 { what: "presence line" })),
    };
    let user =
        |word: &'a str| -> Cow<'a, str> { Cow::Borrowed(if word == "-" { "" } else { word }) };
    let frame = if word.eq_ignore_ascii_case(b"MEMBER") {
        let mut parts = text.splitn(5, ' ');
        match (parts.next(), parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(channel), Some(client), Some(u), Some(node), Some(info)) => {
                Ok(ServerFrame::Member {
                    channel: Cow::Borrowed(channel.as_bytes()),
                    client: Cow::Borrowed(client),
                    user: user(u),
                    node: Cow::Borrowed(node),
                    info: Cow::Borrowed(info),
                })
            }
            _ => malformed("MEMBER line"),
        }
    } else if word.eq_ignore_ascii_case(b"PRESENCE") {
        let mut parts = text.split(' ');
        match (
            parts.next(),
            parts.next().and_then(|n| n.parse().ok()),
            parts.next().and_then(|n| n.parse().ok()),
            parts.next(),
        ) {
            (Some(channel), Some(clients), Some(users), None) => Ok(ServerFrame::Presence {
                channel: Cow::Borrowed(channel.as_bytes()),
                clients,
                users,
            }),
            _ => malformed("PRESENCE line"),
        }
    } else if word.eq_ignore_ascii_case(b"JOIN") {
        let mut parts = text.splitn(4, ' ');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(channel), Some(client), Some(u), Some(info)) => Ok(ServerFrame::Join {
                channel: Cow::Borrowed(channel.as_bytes()),
                client: Cow::Borrowed(client),
                user: user(u),
                info: Cow::Borrowed(info),
            }),
            _ => malformed("JOIN line"),
        }
    } else if word.eq_ignore_ascii_case(b"LEAVE") {
        let mut parts = text.split(' ');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(channel), Some(client), Some(u), None) => Ok(ServerFrame::Leave {
                channel: Cow::Borrowed(channel.as_bytes()),
                client: Cow::Borrowed(client),
                user: user(u),
            }),
            _ => malformed("LEAVE line"),
        }
    } else if word.eq_ignore_ascii_case(b"UNSUBSCRIBED") {
        match text.split_once(' ') {
            Some((channel, reason)) => Ok(ServerFrame::Unsubscribed {
                channel: Cow::Borrowed(channel.as_bytes()),
                reason: Cow::Borrowed(reason),
            }),
            None => malformed("UNSUBSCRIBED line"),
        }
    } else {
        return None;
    };
    Some(frame)
}

/// Splits a `u8`-length-prefixed field off `rest`.
fn short_field<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], ProtocolError> {
    let malformed = ProtocolError::Malformed { what: "presence frame" };
    let (&len, after) = rest.split_first().ok_or(malformed.clone())?;
    let field = after.get(..len as usize).ok_or(malformed)?;
    *rest = &after[len as usize..];
    Ok(field)
}

fn utf8(bytes: &[u8]) -> Result<&str, ProtocolError> {
    std::str::from_utf8(bytes).map_err(|_| ProtocolError::InvalidUtf8 { what: "presence frame" })
}

/// Decodes the binary protocol's presence frames (the client side); `None` for other opcodes.
pub(super) fn parse_binary_frame(
    opcode: u8,
    fields: &[u8],
) -> Option<Result<ServerFrame<'_>, ProtocolError>> {
    use binary::op;
    if !matches!(opcode, op::MEMBER | op::PRESENCE_END | op::JOIN | op::LEAVE | op::UNSUBSCRIBED) {
        return None;
    }
    Some(parse_binary_fields(opcode, fields))
}

fn parse_binary_fields(opcode: u8, fields: &[u8]) -> Result<ServerFrame<'_>, ProtocolError> {
    use binary::op;
    let malformed = ProtocolError::Malformed { what: "presence frame" };
    let mut rest = fields;
    let channel = Cow::Borrowed(short_field(&mut rest)?);
    Ok(match opcode {
        op::MEMBER => {
            let client = utf8(short_field(&mut rest)?)?;
            let user = utf8(short_field(&mut rest)?)?;
            let node = utf8(short_field(&mut rest)?)?;
            ServerFrame::Member {
                channel,
                client: client.into(),
                user: user.into(),
                node: node.into(),
                info: utf8(rest)?.into(),
            }
        }
        op::PRESENCE_END => {
            let (clients, users) = match rest.split_first_chunk::<8>() {
                Some((clients, users)) => (*clients, users),
                None => return Err(malformed),
            };
            let users: [u8; 8] = users.try_into().map_err(|_| malformed)?;
            ServerFrame::Presence {
                channel,
                clients: u64::from_be_bytes(clients),
                users: u64::from_be_bytes(users),
            }
        }
        op::JOIN => {
            let client = utf8(short_field(&mut rest)?)?;
            let user = utf8(short_field(&mut rest)?)?;
            ServerFrame::Join {
                channel,
                client: client.into(),
                user: user.into(),
                info: utf8(rest)?.into(),
            }
        }
        op::LEAVE => {
            let client = utf8(short_field(&mut rest)?)?;
            let user = utf8(short_field(&mut rest)?)?;
            if !rest.is_empty() {
                return Err(malformed);
            }
            ServerFrame::Leave { channel, client: client.into(), user: user.into() }
        }
        _ => ServerFrame::Unsubscribed { channel, reason: utf8(rest)?.into() },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(client: &str, user: &str, info: &str) -> Member {
        Member { client: client.into(), user: user.into(), node: "n1".into(), info: info.into() }
    }

    #[test]
    fn events_round_trip_and_refuse_garbage() {
        let (a, b) = (member("n1-0-1", "alice", r#"{"name":"Alice"}"#), member("n1-0-2", "", ""));
        let mut bytes = Vec::new();
        put_event(&mut bytes, &Event::of(&a, true, 1));
        put_event(&mut bytes, &Event::of(&b, false, 2));
        let decoded = events(&bytes).expect("valid");
        assert_eq!(decoded, vec![Event::of(&a, true, 1), Event::of(&b, false, 2)]);
        for cut in 1..bytes.len() {
            if let Some(partial) = events(&bytes[..cut]) {
                assert_eq!(partial.len(), 1, "only a whole first event parses at {cut}");
            }
        }
        assert_eq!(events(b"X"), None);
        assert_eq!(
            events(&[b"J\x01\xff\x00\x00\x00\x00".as_slice(), &[0; 16]].concat()),
            None,
            "invalid UTF-8"
        );
        assert_eq!(events(b""), Some(vec![]));
    }

    #[test]
    fn text_and_binary_frames_decode_to_what_was_encoded() {
        let alice = Arc::new(member("n1-0-1", "alice", r#"{"name":"Alice Liddell"}"#));
        let anon = Arc::new(member("n1-1-9", "", ""));
        let members = [alice.clone(), anon.clone()];
        for format in [Format::Text, Format::Binary] {
            let mut bytes = BytesMut::new();
            bytes.put_slice(&format.encode_presence(b"room", Some(&members), 2, 1));
            format.put_event(&mut bytes, b"room", &Event::of(&alice, true, 1));
            format.put_event(&mut bytes, b"room", &Event::of(&anon, false, 2));
            bytes.put_slice(&format.encode_unsubscribed(b"room", "by the server", 0));
            let mut frames = Vec::new();
            let mut at = 0;
            while at < bytes.len() {
                let parsed = match format {
                    Format::Text => super::super::text::parse_server_line(&bytes[at..], 1 << 20),
                    _ => binary::parse_server_frame(&bytes[at..], 1 << 20),
                };
                let (frame, used) = parsed.expect("valid").expect("whole");
                frames.push(format!("{frame:?}"));
                at += used;
            }
            assert_eq!(frames.len(), 6, "{format:?}: {frames:#?}");
            assert!(
                frames[0].contains("Alice Liddell") && frames[0].contains("n1-0-1"),
                "{frames:?}"
            );
            assert!(frames[1].contains("user: \"\""), "an empty user comes back empty: {frames:?}");
            assert!(frames[2].contains("clients: 2, users: 1"), "{frames:?}");
            assert!(frames[3].starts_with("Join") && frames[4].starts_with("Leave"), "{frames:?}");
            assert!(frames[5].contains("by the server"), "{frames:?}");
        }
    }

    #[test]
    fn json_answers_are_valid_json() {
        let members = [Arc::new(member("n1-0-1", "a\"b", r#"{"x":[1,2]}"#))];
        let presence = json_presence(b"room", Some(&members), 1, 1);
        let value: serde_json::Value = serde_json::from_slice(&presence).expect("JSON");
        assert_eq!(value["members"][0]["user"], "a\"b");
        assert_eq!(value["members"][0]["info"]["x"][1], 2);
        let event = json_event(b"room", &Event::of(&members[0], true, 1));
        let value: serde_json::Value = serde_json::from_slice(&event).expect("JSON");
        assert_eq!(value["op"], "join");
        let value: serde_json::Value =
            serde_json::from_slice(&json_unsubscribed(b"room", "kicked \"now\"")).expect("JSON");
        assert_eq!(value["reason"], "kicked \"now\"");
    }
}
