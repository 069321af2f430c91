//! Every bad input gets a clear error, a counter, and closes only its own connection: a bystander
//! subscriber keeps receiving throughout.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{start, wait_until, Conn, Frame, Read_};
use fanout::protocol::binary::{self, op};
use fanout::protocol::{Format, Request};
use fanout::ServerHandle;

const MAX_FRAME: usize = 1024;

fn server() -> ServerHandle {
    start(|config| config.max_frame_bytes = MAX_FRAME)
}

/// A subscriber and a publisher that must be unaffected by whatever a bad client does.
struct Bystander {
    channel: String,
    subscriber: Conn,
    publisher: Conn,
    sent: u64,
}

impl Bystander {
    fn new(server: &ServerHandle) -> Bystander {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let channel = format!("calm{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let mut subscriber = Conn::binary(server.local_addr());
        subscriber.subscribe(&channel);
        let mut publisher = Conn::text(server.local_addr());
        publisher.barrier();
        Bystander { channel, subscriber, publisher, sent: 0 }
    }

    fn still_served(&mut self) {
        self.sent += 1;
        self.publisher.publish(&self.channel, b"still here");
        let frame = self.subscriber.next();
        assert_eq!(
            frame,
            Frame::Msg {
                channel: self.channel.clone(),
                offset: self.sent,
                payload: b"still here".to_vec()
            }
        );
    }
}

fn fatal(server: &ServerHandle, format: Format, bytes: &[u8], code: u16) -> String {
    let mut bystander = Bystander::new(server);
    let errors_before = server.stats().protocol_errors;
    let mut bad = Conn::open(server.local_addr(), format);
    bad.send_raw(bytes);
    let reason = bad.expect_error_and_close(code);
    wait_until("the protocol error is counted", || {
        server.stats().protocol_errors == errors_before + 1
    });
    bystander.still_served();
    reason
}

#[test]
fn text_line_over_the_limit_closes_with_413() {
    let server = server();
    let mut line = b"PUB calm ".to_vec();
    line.resize(MAX_FRAME + 1, b'x');
    line.push(b'\n');
    let reason = fatal(&server, Format::Text, &line, 413);
    assert!(reason.contains("frame too large"), "{reason}");
    // Without a newline at all: rejected as soon as the buffer passes the limit.
    let endless = vec![b'y'; MAX_FRAME * 3];
    fatal(&server, Format::Text, &endless, 413);
}

#[test]
fn binary_oversize_length_closes_with_413_before_the_body_arrives() {
    let server = server();
    let header = ((MAX_FRAME + 1) as u32).to_be_bytes();
    fatal(&server, Format::Binary, &header, 413);
    fatal(&server, Format::Binary, &u32::MAX.to_be_bytes(), 413);
}

#[test]
fn malformed_length_unknown_opcode_and_bad_fields_close_with_400() {
    let server = server();
    fatal(&server, Format::Binary, &[0, 0, 0, 0], 400);
    let reason = fatal(&server, Format::Binary, &[0, 0, 0, 1, 0x7e], 400);
    assert!(reason.contains("unknown opcode 0x7e"), "{reason}");
    // A channel length that runs past the end of its frame.
    fatal(&server, Format::Binary, &[0, 0, 0, 3, op::SUB, 200, b'a'], 400);
    // A server-only opcode from a client.
    fatal(&server, Format::Binary, &[0, 0, 0, 1, op::MSG], 400);
}

#[test]
fn unknown_text_command_closes_with_400() {
    let server = server();
    let reason = fatal(&server, Format::Text, b"SUBSCRIBE news\n", 400);
    assert!(reason.contains("unknown command"), "{reason}");
    // Invalid UTF-8 where a command word is required.
    fatal(&server, Format::Text, b"\xc3\x28 x\n", 400);
    // Replies to the commands before the bad one still arrive, in order, before the error.
    let mut conn = Conn::text(server.local_addr());
    conn.send_raw(b"SUB first\nPUB first hi\nNAME x\nNOPE\nSUB never\n");
    assert_eq!(
        conn.next(),
        Frame::Ok { ack: fanout::protocol::Ack::Subscribe, arg: "first".into() }
    );
    assert_eq!(conn.next(), Frame::Ok { ack: fanout::protocol::Ack::Name, arg: "x".into() });
    // (Its own PUB was published, but a closing connection receives no more messages.)
    assert_eq!(conn.next(), Frame::Err { code: 400, reason: "unknown command \"NOPE\"".into() });
    conn.expect_closed();
}

#[test]
fn bad_binary_preface_closes_with_400() {
    let server = server();
    let mut bystander = Bystander::new(&server);
    let mut bad = Conn::text(server.local_addr());
    bad.format = Format::Binary; // it will get binary frames: it started with NUL
    bad.send_raw(b"\0FANOUT\x09");
    bad.expect_error_and_close(400);
    bystander.still_served();
}

#[test]
fn a_truncated_frame_then_hang_up_closes_quietly() {
    let server = server();
    let mut bystander = Bystander::new(&server);
    let open_before = server.stats().connections_current;
    let mut bad = Conn::binary(server.local_addr());
    let mut frame = Vec::new();
    binary::encode_request(
        &Request::Publish { channel: b"calm", payload: b"never finished".into() },
        &mut frame,
    );
    bad.send_raw(&frame[..frame.len() - 3]);
    bad.shutdown_write();
    bad.expect_closed();
    wait_until("the connection is gone", || server.stats().connections_current == open_before);
    // The partial publish was never delivered: the bystander's next message has offset 1.
    bystander.still_served();
    assert_eq!(server.stats().messages_in, 1);
}

#[test]
fn invalid_names_are_refused_with_422_and_the_connection_stays() {
    let server = server();
    let long = "c".repeat(256);
    for format in [Format::Text, Format::Binary] {
        let mut conn = Conn::open(server.local_addr(), format);
        let mut bad_names: Vec<&[u8]> = vec![b"bad\x01name", b"caf\xe9"];
        match format {
            // Spaces and empty names only exist as such in binary; in text they read as other words.
            Format::Binary => bad_names.extend([&b""[..], b"two words", b"\x7f"]),
            // A name over 255 bytes cannot even be framed in binary (one length byte).
            Format::Text => bad_names.push(long.as_bytes()),
            _ => unreachable!(),
        }
        for name in bad_names {
            conn.send(Request::Subscribe { channel: name, resume: None });
            assert!(matches!(conn.next(), Frame::Err { code: 422, .. }), "SUB {name:?}");
            conn.send(Request::Publish { channel: name, payload: b"x".into() });
            assert!(matches!(conn.next(), Frame::Err { code: 422, .. }), "PUB {name:?}");
        }
        // Reserved channels.
        conn.send(Request::Subscribe { channel: b"*", resume: None });
        assert!(matches!(conn.next(), Frame::Err { code: 403, .. }));
        conn.send(Request::Subscribe { channel: b"@someone", resume: None });
        assert!(matches!(conn.next(), Frame::Err { code: 403, .. }));
        // Still open and working.
        conn.subscribe("fine");
    }
    assert!(server.stats().request_errors >= 16);
    assert_eq!(server.stats().protocol_errors, 0);
}

#[test]
fn text_subscribe_without_a_channel_is_an_empty_name() {
    let server = server();
    let mut conn = Conn::text(server.local_addr());
    conn.send_raw(b"SUB\n");
    match conn.next() {
        Frame::Err { code: 422, reason } => assert!(reason.contains("empty"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn max_connections_refuses_with_503_and_recovers() {
    let server = start(|config| config.max_connections = 3);
    let addr = server.local_addr();
    let mut held: Vec<Conn> = (0..3).map(|_| Conn::text(addr)).collect();
    for conn in &mut held {
        conn.barrier();
    }
    let mut refused = Conn::binary(addr);
    refused.expect_error_and_close(503);
    assert_eq!(server.stats().connections_refused, 1);
    held.pop();
    wait_until("a slot frees up", || server.stats().connections_current == 2);
    let mut admitted = Conn::text(addr);
    admitted.barrier();
}

#[test]
fn silent_clients_are_pinged_then_closed_as_stale() {
    let server = start(|config| {
        config.ping_interval = Duration::from_millis(300);
        config.ping_timeout = Duration::from_millis(300);
    });
    let addr = server.local_addr();
    let mut silent = Conn::text(addr);
    silent.barrier();
    let mut polite = Conn::binary(addr);
    polite.barrier();
    assert_eq!(silent.next(), Frame::Ping);
    assert_eq!(polite.next(), Frame::Ping);
    polite.send(Request::Pong);
    silent.expect_error_and_close(408);
    assert_eq!(server.stats().stale_closes, 1);
    // The polite one answered, so it was only pinged again (never closed).
    for _ in 0..2 {
        assert_eq!(polite.next(), Frame::Ping);
        polite.send(Request::Pong);
    }
    assert_eq!(server.stats().stale_closes, 1);
}

#[test]
fn a_client_that_never_speaks_is_pinged_in_text() {
    let server = start(|config| {
        config.ping_interval = Duration::from_millis(200);
        config.ping_timeout = Duration::from_secs(30);
    });
    let mut mute = Conn::text(server.local_addr());
    assert_eq!(mute.read(Duration::from_secs(10)), Read_::Frame(Frame::Ping));
}

#[test]
fn subscription_and_channel_limits_refuse_with_429() {
    let server = start(|config| {
        config.max_subscriptions_per_connection = 2;
        config.max_channels = 4; // `*` plus three
    });
    let mut conn = Conn::text(server.local_addr());
    conn.subscribe("one");
    conn.subscribe("two");
    conn.subscribe("two"); // already held: acknowledged again, not counted twice
    conn.send_raw(b"SUB three\n");
    assert!(
        matches!(conn.next(), Frame::Err { code: 429, ref reason } if reason.contains("subscriptions"))
    );
    let mut other = Conn::text(server.local_addr());
    other.subscribe("three");
    other.send_raw(b"PUB four x\n");
    assert!(
        matches!(other.next(), Frame::Err { code: 429, ref reason } if reason.contains("channels"))
    );
    assert_eq!(server.channel_count(), 4);
    assert_eq!(server.stats().limited_channels, 1, "fanout_limit_hits_total{{kind=\"channels\"}}");
    // Both connections are still usable.
    conn.barrier();
    other.barrier();
}

#[test]
fn bad_presence_requests_are_refused_or_closed_like_any_command() {
    let server = start(|config| {
        config.max_frame_bytes = MAX_FRAME;
        config.presence.presence = vec!["room.>".into()];
    });
    // Fatal: a presence frame with bytes after its channel, or a channel past the frame's end.
    let reason = fatal(&server, Format::Binary, &[0, 0, 0, 4, op::PRESENCE, 1, b'a', b'z'], 400);
    assert!(reason.contains("presence frame"), "{reason}");
    fatal(&server, Format::Binary, &[0, 0, 0, 3, op::PRESENCE_STATS, 9, b'a'], 400);
    // A server's presence frame sent by a client.
    fatal(&server, Format::Binary, &[0, 0, 0, 2, op::MEMBER, 0], 400);
    // Refused, the connection stays: empty, invalid UTF-8, control bytes, and no presence.
    for format in [Format::Text, Format::Binary] {
        let mut conn = Conn::open(server.local_addr(), format);
        for name in [&b""[..], b"room.\xff", b"room\x01"] {
            conn.send(Request::Presence { channel: name, stats_only: false });
            assert!(matches!(conn.next(), Frame::Err { code: 422, .. }), "PRESENCE {name:?}");
        }
        conn.send(Request::Presence { channel: b"news", stats_only: true });
        assert!(matches!(conn.next(), Frame::Err { code: 501, .. }), "no presence on news");
        conn.send(Request::Presence { channel: b"room.1", stats_only: true });
        assert!(matches!(conn.next(), Frame::Presence { clients: 0, users: 0, .. }));
    }
    // Over HTTP: a missing channel is a 400 whose body says so; the connection's next request
    // is answered.
    let response = common::http(server.local_addr(), "GET", "/presence", b"");
    assert_eq!(response.status, 400);
    assert!(response.json()["reason"].as_str().unwrap_or_default().contains("channel"));
}
