//! Wildcard subscriptions (`PSUB`): NATS-style patterns over topic channels, on every command
//! format, across both workers, in each channel's offset order; their edge cases, limits,
//! permissions, and cleanup.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{start, wait_until, Conn, Frame, Read_};
use fanout::protocol::{Ack, Format, Request};
use fanout::Config;

fn psub(conn: &mut Conn, pattern: &str) -> Frame {
    conn.send(Request::PatternSubscribe { pattern: pattern.as_bytes() });
    conn.next()
}

fn psubscribed(pattern: &str) -> Frame {
    Frame::Ok { ack: Ack::PatternSubscribe, arg: pattern.into() }
}

/// Reads `count` messages; returns them by channel as (offset, payload).
fn collect(conn: &mut Conn, count: usize) -> BTreeMap<String, Vec<(u64, Vec<u8>)>> {
    let mut by_channel: BTreeMap<String, Vec<(u64, Vec<u8>)>> = BTreeMap::new();
    for _ in 0..count {
        match conn.next() {
            Frame::Msg { channel, offset, payload } => {
                by_channel.entry(channel).or_default().push((offset, payload))
            }
            other => panic!("expected a message, got {other:?}"),
        }
    }
    by_channel
}

/// Publishers on several connections (so on both workers) write to five matching channels and
/// one that does not match; pattern subscribers in three formats get every matching message
/// exactly once, with its own channel name, in each channel's offset order, and nothing else.
#[test]
fn a_pattern_subscriber_gets_every_matching_channel_in_offset_order() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut subscribers: Vec<Conn> = [Format::Text, Format::Binary, Format::WsJson]
        .into_iter()
        .map(|f| Conn::open(addr, f))
        .collect();
    for conn in &mut subscribers {
        assert_eq!(psub(conn, "room.*"), psubscribed("room.*"));
    }
    let per_channel = 200;
    let mut publishers: Vec<Conn> = (0..4).map(|_| Conn::binary(addr)).collect();
    for i in 0..per_channel {
        for room in 1..=5 {
            let publisher = &mut publishers[(i + room) % 4];
            publisher.publish(&format!("room.{room}"), format!("{room}:{i}").as_bytes());
            publisher.publish("lobby", b"not for pattern subscribers");
            publisher.publish(&format!("room.{room}.deeper"), b"one token too many");
        }
    }
    for publisher in &mut publishers {
        assert!(publisher.barrier().is_empty());
    }
    // Publishers on different connections race per message, but every channel's offsets are
    // given in the order its messages entered the ring: that order is what subscribers see.
    for conn in &mut subscribers {
        let received = collect(conn, 5 * per_channel);
        assert_eq!(
            received.keys().cloned().collect::<Vec<_>>(),
            ["room.1", "room.2", "room.3", "room.4", "room.5"]
        );
        for (channel, messages) in &received {
            let offsets: Vec<u64> = messages.iter().map(|(offset, _)| *offset).collect();
            assert_eq!(offsets, (1..=per_channel as u64).collect::<Vec<_>>(), "{channel}");
        }
        assert_eq!(conn.read(Duration::from_millis(100)), Read_::Nothing, "nothing else");
    }
}

/// Subscribed to a channel and to a pattern that matches it, a connection gets each message once
/// per subscription (as Redis does); PUNSUB ends the pattern's share; PSUB twice is one.
#[test]
fn once_per_subscription_and_punsub_stops_it() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut both = Conn::text(addr);
    both.subscribe("news.eu");
    assert_eq!(psub(&mut both, "news.*"), psubscribed("news.*"));
    assert_eq!(psub(&mut both, "news.*"), psubscribed("news.*"), "idempotent");
    assert_eq!(psub(&mut both, "news.>"), psubscribed("news.>"));
    let mut publisher = Conn::binary(addr);
    publisher.publish("news.eu", b"first");
    assert!(publisher.barrier().is_empty());
    let copies = collect(&mut both, 3);
    assert_eq!(copies["news.eu"], vec![(1, b"first".to_vec()); 3], "channel + two patterns");
    both.send(Request::PatternUnsubscribe { pattern: b"news.*" });
    assert_eq!(both.next(), Frame::Ok { ack: Ack::PatternUnsubscribe, arg: "news.*".into() });
    both.send(Request::PatternUnsubscribe { pattern: b"never.subscribed" });
    assert_eq!(
        both.next(),
        Frame::Ok { ack: Ack::PatternUnsubscribe, arg: "never.subscribed".into() }
    );
    publisher.publish("news.eu", b"second");
    assert!(publisher.barrier().is_empty());
    assert_eq!(collect(&mut both, 2)["news.eu"], vec![(2, b"second".to_vec()); 2]);
    assert_eq!(both.read(Duration::from_millis(100)), Read_::Nothing);
}

/// Bad patterns are refused with 422 and change nothing; past the limit, 429 and a counter; a
/// closed connection leaves no pattern behind.
#[test]
fn pattern_edge_cases_limits_and_cleanup() {
    let server = start(|config: &mut Config| {
        config.max_patterns_per_connection = 2;
        config.max_pattern_tokens = 4;
    });
    let addr = server.local_addr();
    let mut conn = Conn::binary(addr);
    for bad in ["", "a..b", ".a", "a.", "a.>.b", "ro*m", "a.b>", "@bob", "a.b.c.d.e"] {
        match psub(&mut conn, bad) {
            Frame::Err { code: 422, reason } => {
                assert!(reason.contains("invalid pattern"), "{reason}")
            }
            other => panic!("PSUB {bad:?}: {other:?}"),
        }
    }
    assert_eq!(psub(&mut conn, "*"), psubscribed("*"), "`*` alone: any one-token channel");
    assert_eq!(psub(&mut conn, "a.>"), psubscribed("a.>"));
    match psub(&mut conn, "b.*") {
        Frame::Err { code: 429, reason } => assert!(reason.contains("the limit is 2"), "{reason}"),
        other => panic!("over the limit: {other:?}"),
    }
    assert_eq!(server.stats().limited_patterns, 1);
    let mut publisher = Conn::text(addr);
    publisher.publish("single", b"1");
    publisher.publish("a.b.c", b"2");
    publisher.publish("*", b"3");
    // No errors; the publisher's own copy of the broadcast may come before the PONG or after.
    let answers = publisher.barrier();
    assert!(
        answers.iter().all(|f| matches!(f, Frame::Msg { channel, .. } if channel == "*")),
        "{answers:?}"
    );
    let mut got: Vec<(String, Vec<u8>)> = (0..3)
        .map(|_| match conn.next() {
            Frame::Msg { channel, payload, .. } => (channel, payload),
            other => panic!("{other:?}"),
        })
        .collect();
    got.sort();
    let expected: Vec<(String, Vec<u8>)> =
        [("*", "3"), ("a.b.c", "2"), ("single", "1")].map(|(c, p)| (c.into(), p.into())).to_vec();
    assert_eq!(got, expected, "the broadcast reaches everyone as a broadcast, once");
    wait_until("the gauge counts two", || server.stats().pattern_subscriptions == 2);
    drop(conn);
    wait_until("a closed connection's patterns are gone", || {
        server.stats().pattern_subscriptions == 0
    });
}

/// With access control, a wildcard subscription needs a permission that covers every channel it
/// can match.
#[test]
fn a_pattern_needs_a_permission_that_covers_it() {
    let secret = b"pattern test secret".to_vec();
    let token = fanout::auth::mint_hs256(
        &secret,
        Some("viewer"),
        &["room.*".to_string(), "user.7.>".to_string()],
        &[],
        fanout::auth::unix_now_secs() + 600,
    )
    .unwrap();
    let server = start(move |config: &mut Config| config.auth.hmac_secret = Some(secret));
    let mut conn = Conn::text(server.local_addr());
    conn.send(Request::Auth { token: token.as_bytes() });
    assert_eq!(conn.next(), Frame::Ok { ack: Ack::Auth, arg: "viewer".into() });
    for (pattern, allowed) in [
        ("room.*", true),
        ("user.7.>", true),
        ("user.7.*", true),
        ("room.>", false),
        (">", false),
        ("*", false),
    ] {
        match psub(&mut conn, pattern) {
            Frame::Ok { .. } if allowed => {}
            Frame::Err { code: 403, .. } if !allowed => {}
            other => panic!("PSUB {pattern}: {other:?}"),
        }
    }
}

/// `?pattern=` on an event stream: events of every matching channel, named by their channel;
/// the cursor that follows them is marked `~`, and only such a cursor is taken back from
/// `Last-Event-ID` (a pattern event's own id names another channel's position).
#[test]
fn event_streams_take_patterns_and_resume_their_channels_from_the_cursor() {
    use common::{http, http_publish, EventStream, PATIENCE};
    let server = start(|_| {});
    let addr = server.local_addr();
    assert_eq!(http(addr, "GET", "/sse?pattern=a..b", b"").status, 422);
    assert_eq!(http(addr, "GET", "/sse?pattern=@bob", b"").status, 422);
    http_publish(addr, "home", b"h1");
    let mut stream = EventStream::open(addr, "/sse?channel=home&after=0&pattern=room.*", "");
    assert!(stream.head.starts_with("HTTP/1.1 200"), "{}", stream.head);
    let mut names = Vec::new();
    while names.len() < 3 {
        let event = stream.next(PATIENCE).expect("an event");
        if let Some(name) = event.event.filter(|n| !n.starts_with("fanout")) {
            names.push((name, event.data));
        }
        if names.len() == 1 {
            http_publish(addr, "room.1", b"r1");
            http_publish(addr, "lobby", b"not matched");
            http_publish(addr, "room.2", b"r2");
        }
    }
    assert_eq!(
        names,
        [("home", "h1"), ("room.1", "r1"), ("room.2", "r2")].map(|(n, d)| (n.into(), d.into()))
    );
    // The cursor follows the turn's events: read what is left of it.
    assert_eq!(stream.next(Duration::from_millis(300)), None);
    let cursor = stream.last_id.clone().expect("a cursor");
    assert!(cursor.starts_with('~'), "the stream's cursor is marked: {cursor}");
    drop(stream);
    http_publish(addr, "home", b"h2");
    // The browser's reconnect with that cursor resumes `home` after h1 ...
    let mut again = EventStream::open(
        addr,
        "/sse?channel=home&after=0&pattern=room.*",
        &format!("Last-Event-ID: {cursor}\r\n"),
    );
    let next = loop {
        let event = again.next(PATIENCE).expect("an event");
        if event.event.as_deref() == Some("home") {
            break event;
        }
    };
    assert_eq!(next.data, "h2", "resumed after the cursor's position of home");
    // ... while a pattern event's own id (room.2's position) is not taken for home's.
    let mut plain =
        EventStream::open(addr, "/sse?channel=home&after=0&pattern=room.*", "Last-Event-ID: 2\r\n");
    let first = loop {
        let event = plain.next(PATIENCE).expect("an event");
        if event.event.as_deref() == Some("home") {
            break event;
        }
    };
    assert_eq!(first.data, "h1", "the URL's after=0 stands");
}
