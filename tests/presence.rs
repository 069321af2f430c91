//! Presence, join/leave events and the server API on one node, through a running server: every
//! protocol sees joins before a member's messages and leaves after them, presence answers in
//! every format (and refuses past its limit, or without permission), the API is the API key's
//! or an admin token's, and its disconnect and unsubscribe reach a user on every protocol with a
//! reason in that protocol. (The same across nodes: `tests/cluster.rs`.)

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::resp_client::Redis;
use common::{http, http_with, start, wait_until, Conn, EventStream, Frame, Read_, PATIENCE};
use fanout::auth::unix_now_secs;
use fanout::protocol::resp::Value;
use fanout::protocol::{Format, Request};
use fanout::{Config, ServerHandle};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

const SECRET: &[u8] = b"a test secret that is long enough";
const API_KEY: &str = "backend-api-key-for-tests";

fn sign(claims: serde_json::Value) -> String {
    let key = EncodingKey::from_secret(SECRET).expect("a key");
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).expect("signs")
}

/// A token for `sub` that may subscribe to and publish on `room.>`, with `extra` claims.
fn token(sub: &str, extra: serde_json::Value) -> String {
    let mut claims = json!({
        "sub": sub, "exp": unix_now_secs() + 600, "iat": unix_now_secs(),
        "subscribe": ["room.>"], "publish": ["room.>"],
    });
    for (k, v) in extra.as_object().expect("an object") {
        claims[k] = v.clone();
    }
    sign(claims)
}

/// Presence and join/leave on `room.>` (a short window: events go out quickly).
fn with_presence(config: &mut Config) {
    config.presence.presence = vec!["room.>".into()];
    config.presence.join_leave = vec!["room.>".into()];
    config.presence.window = Duration::from_millis(20);
}

fn secured(adjust: impl FnOnce(&mut Config)) -> ServerHandle {
    start(|config| {
        with_presence(config);
        config.auth.hmac_secret = Some(SECRET.to_vec());
        config.auth.api_key = Some(API_KEY.as_bytes().to_vec());
        config.limits.auth_failures = Some(0);
        adjust(config);
    })
}

fn bearer(key: &str) -> String {
    format!("Authorization: Bearer {key}\r\n")
}

/// A text connection that claimed `name` (so presence shows it as its user) and subscribed.
fn member(addr: SocketAddr, name: &str, channel: &str) -> Conn {
    let mut conn = Conn::text(addr);
    conn.send(Request::Name { name: name.as_bytes() });
    assert_eq!(conn.next(), Frame::Ok { ack: fanout::protocol::Ack::Name, arg: name.into() });
    conn.subscribe(channel);
    conn
}

/// Waits until `conn` hears its own join (as `user`) on a join/leave channel: from then on
/// presence answers show it (a member is shown once its join has gone out).
fn heard_own_join(conn: &mut Conn, user: &str) {
    until(conn, |f| matches!(f, Frame::Join { user: u, .. } if u == user).then_some(()));
}

/// Frames until one matches `pick`, skipping others; panics after `PATIENCE`.
fn until<T>(conn: &mut Conn, mut pick: impl FnMut(&Frame) -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        assert!(Instant::now() < deadline, "nothing matched in time");
        if let Read_::Frame(frame) = conn.read(Duration::from_millis(200)) {
            if let Some(found) = pick(&frame) {
                return found;
            }
        }
    }
}

#[test]
fn every_format_hears_a_join_before_the_members_message_and_a_leave_after_its_last() {
    let server = start(with_presence);
    let addr = server.local_addr();
    for format in [Format::Text, Format::Binary, Format::WsJson, Format::WsBinary] {
        let mut watcher = Conn::open(addr, format);
        watcher.subscribe("room.1");
        let mut sse = EventStream::open(addr, "/sse?channel=room.1", "");
        let mut speaker = member(addr, "speaker", "room.1");
        speaker.publish("room.1", b"first words");
        speaker.publish("room.1", b"last words");
        speaker.barrier();
        drop(speaker);
        let mut seen = Vec::new();
        while seen.len() < 4 {
            match watcher.next() {
                Frame::Join { user, .. } if user == "speaker" => seen.push("join".to_string()),
                Frame::Leave { user, .. } if user == "speaker" => seen.push("leave".to_string()),
                Frame::Msg { payload, .. } => seen.push(String::from_utf8(payload).unwrap()),
                // Other members: this watcher itself, the event stream, earlier watchers.
                Frame::Join { .. } | Frame::Leave { .. } => {}
                other => panic!("{format:?}: unexpected {other:?}"),
            }
        }
        assert_eq!(seen, ["join", "first words", "last words", "leave"], "{format:?}");
        // The event stream: `fanout join` before the message, `fanout leave` after.
        let mut events = Vec::new();
        while events.len() < 4 {
            let event = sse.next(PATIENCE).expect("an event");
            match event.event.as_deref() {
                Some("fanout join") | Some("fanout leave") => {
                    let json: serde_json::Value = serde_json::from_str(&event.data).unwrap();
                    if json["user"] == "speaker" {
                        events.push(json["op"].as_str().unwrap().to_string());
                    }
                }
                Some("room.1") => events.push(event.data),
                _ => {}
            }
        }
        assert_eq!(events, ["join", "first words", "last words", "leave"], "SSE");
    }
}

#[test]
fn presence_answers_in_every_format_with_counts_and_refuses_past_its_limit() {
    let server = start(|c| {
        with_presence(c);
        c.presence.max_members = 3;
    });
    let addr = server.local_addr();
    let mut alice = member(addr, "alice", "room.1");
    heard_own_join(&mut alice, "alice");
    let mut anonymous = Conn::text(addr);
    anonymous.subscribe("room.1");
    heard_own_join(&mut anonymous, "");
    let mut asker = Conn::open(addr, Format::Binary);
    asker.send(Request::Presence { channel: b"room.1", stats_only: false });
    let mut members = Vec::new();
    let (clients, users) = loop {
        match asker.next() {
            Frame::Member { user, node, info, client, .. } => {
                assert!(client.starts_with(&node), "client {client} names its node {node}");
                assert_eq!(info, "{}");
                members.push(user);
            }
            Frame::Presence { clients, users, .. } => break (clients, users),
            other => panic!("{other:?}"),
        }
    };
    members.sort();
    assert_eq!(members, ["", "alice"], "the anonymous member has an empty user");
    assert_eq!((clients, users), (2, 2));
    for format in [Format::Text, Format::WsJson, Format::WsBinary] {
        let mut conn = Conn::open(addr, format);
        conn.send(Request::Presence { channel: b"room.1", stats_only: true });
        let stats = until(&mut conn, |f| match f {
            Frame::Presence { clients, users, .. } => Some((*clients, *users)),
            _ => None,
        });
        assert_eq!(stats, (2, 2), "{format:?}");
    }
    let response = http(addr, "GET", "/presence?channel=room.1", b"");
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["members"].as_array().map(Vec::len), Some(2));
    // Past the limit: a clear error, the stats still answer.
    let more: Vec<Conn> = (0..2)
        .map(|i| {
            let name = format!("m{i}");
            let mut conn = member(addr, &name, "room.1");
            heard_own_join(&mut conn, &name);
            conn
        })
        .collect();
    asker.send(Request::Presence { channel: b"room.1", stats_only: false });
    match asker.next() {
        Frame::Err { code: 429, reason } => assert!(reason.contains("4 members"), "{reason}"),
        other => panic!("expected 429, got {other:?}"),
    }
    asker.send(Request::Presence { channel: b"room.1", stats_only: true });
    assert!(matches!(asker.next(), Frame::Presence { clients: 4, .. }));
    // A channel without presence says so; the connection stays.
    asker.send(Request::Presence { channel: b"news", stats_only: false });
    assert!(matches!(asker.next(), Frame::Err { code: 501, .. }));
    asker.barrier();
    drop(more);
}

#[test]
fn presence_needs_subscribe_permission_and_the_api_needs_the_key_or_an_admin_token() {
    let server = secured(|_| {});
    let addr = server.local_addr();
    let mut alice = Conn::text(addr);
    alice.send(Request::Auth { token: token("alice", json!({})).as_bytes() });
    alice.next();
    alice.send(Request::Presence { channel: b"room.1", stats_only: false });
    assert!(matches!(alice.next(), Frame::Presence { clients: 0, .. }));
    alice.send(Request::Presence { channel: b"secret.room", stats_only: false });
    assert!(matches!(alice.next(), Frame::Err { code: 403, .. }));
    let mut stranger = Conn::text(addr);
    stranger.send(Request::Presence { channel: b"room.1", stats_only: false });
    assert!(matches!(stranger.next(), Frame::Err { code: 401, .. }));
    let calls = [
        ("GET", "/api/presence?channel=room.1"),
        ("GET", "/api/presence_stats?channel=room.1"),
        ("GET", "/api/channels"),
        ("GET", "/api/info"),
        ("GET", "/api/history?channel=room.1"),
        ("POST", "/api/disconnect?user=nobody"),
        ("POST", "/api/unsubscribe?user=nobody&channel=room.1"),
    ];
    let user_token = token("alice", json!({}));
    let admin_token = token("ops", json!({ "admin": true }));
    for (method, target) in calls {
        let code = |headers: &str| http_with(addr, method, target, headers, b"").status;
        assert_eq!(code(""), 401, "{method} {target} without credentials");
        assert_eq!(code(&bearer(&user_token)), 403, "{method} {target} with a user's token");
        assert_eq!(code(&bearer("not-a-token")), 401, "{method} {target} with garbage");
        assert_eq!(code(&bearer(API_KEY)), 200, "{method} {target} with the API key");
        assert_eq!(code(&bearer(&admin_token)), 200, "{method} {target} with an admin token");
    }
    let publish =
        http_with(addr, "POST", "/api/publish", "", br#"{"channel":"room.1","data":"x"}"#);
    assert_eq!(publish.status, 401);
    let error = publish.json();
    assert_eq!(error["code"], 401, "errors are JSON with a code: {error}");
    let unknown = http_with(addr, "GET", "/api/nothing", &bearer(API_KEY), b"");
    assert_eq!((unknown.status, unknown.json()["code"].as_u64()), (404, Some(404)));
}

#[test]
fn a_tokens_info_claim_is_shown_and_bounded() {
    let server = secured(|c| c.auth.max_info_bytes = 64);
    let addr = server.local_addr();
    let mut alice = Conn::text(addr);
    let info = json!({ "name": "Alice", "avatar": "a.png" });
    alice.send(Request::Auth { token: token("alice", json!({ "info": info })).as_bytes() });
    alice.next();
    alice.subscribe("room.1");
    heard_own_join(&mut alice, "alice");
    let presence = http_with(addr, "GET", "/api/presence?channel=room.1", &bearer(API_KEY), b"");
    let members = presence.json()["members"].clone();
    assert_eq!(members[0]["user"], "alice");
    assert_eq!(members[0]["info"], info, "{members}");
    for (claim, why) in [
        (json!({ "name": "x".repeat(100) }), "info: "),
        (json!("a string"), "info: expected a JSON object"),
    ] {
        let mut conn = Conn::text(addr);
        conn.send(Request::Auth { token: token("bob", json!({ "info": claim })).as_bytes() });
        match conn.next() {
            Frame::Err { code: 401, reason } => assert!(reason.contains(why), "{reason}"),
            other => panic!("expected 401, got {other:?}"),
        }
    }
}

/// A text connection authenticated as `user`, subscribed to `room.1`.
fn authed_in_room(addr: SocketAddr, user: &str) -> Conn {
    let mut conn = Conn::text(addr);
    conn.send(Request::Auth { token: token(user, json!({})).as_bytes() });
    conn.next();
    conn.subscribe("room.1");
    conn
}

/// Alice on every protocol, each authenticated and subscribed to `room.1`: (text, binary,
/// WebSocket JSON, WebSocket binary, event stream, Redis client).
fn alice_everywhere(addr: SocketAddr, alice: &str) -> (Vec<Conn>, EventStream, Redis) {
    let mut conns = Vec::new();
    for format in [Format::Text, Format::Binary, Format::WsJson, Format::WsBinary] {
        let mut conn = Conn::open(addr, format);
        conn.send(Request::Auth { token: alice.as_bytes() });
        conn.next();
        conn.subscribe("room.1");
        conns.push(conn);
    }
    let mut sse = EventStream::open(addr, &format!("/sse?channel=room.1&token={alice}"), "");
    assert!(sse.head.starts_with("HTTP/1.1 200"), "{}", sse.head);
    let mut redis = Redis::connect(addr);
    redis.send(&["AUTH", alice]);
    assert_eq!(redis.next(), Some(Value::Simple("OK".into())));
    redis.send(&["SUBSCRIBE", "room.1"]);
    redis.next();
    // Everyone is subscribed once a message published after these reaches the event stream.
    common::http_with(
        addr,
        "POST",
        "/api/publish",
        &bearer(API_KEY),
        br#"{"channel":"room.1","data":"ready"}"#,
    );
    while sse.next(PATIENCE).expect("an event").data != "ready" {}
    (conns, sse, redis)
}

#[test]
fn disconnect_closes_every_connection_of_the_user_in_its_own_protocol_and_can_revoke() {
    let server = secured(|_| {});
    let addr = server.local_addr();
    let alice = token("alice", json!({}));
    let (mut conns, mut sse, mut redis) = alice_everywhere(addr, &alice);
    let mut bob = authed_in_room(addr, "bob");
    let target = "/api/disconnect?user=alice&reason=banned&revoke=true";
    let response = http_with(addr, "POST", target, &bearer(API_KEY), b"");
    assert_eq!((response.status, response.json()["nodes"].as_u64()), (200, Some(1)));
    for conn in &mut conns {
        let format = conn.format;
        // Joins and messages may come first.
        let reason = until(conn, |f| match f {
            Frame::Err { code: 403, reason } => Some(reason.clone()),
            Frame::Err { code, reason } => panic!("{format:?}: ERR {code} {reason}"),
            _ => None,
        });
        conn.expect_closed();
        assert!(reason.contains("disconnected by the server: banned"), "{format:?}: {reason}");
        if matches!(format, Format::WsJson | Format::WsBinary) {
            assert_eq!(conn.close_code, Some(1008), "{format:?} closes with policy violation");
        }
    }
    let closing = loop {
        match sse.next(PATIENCE) {
            Some(event) if event.event.as_deref() == Some("fanout error") => break event.data,
            Some(_) => continue,
            None => panic!("the event stream ended without saying why"),
        }
    };
    assert!(closing.contains("banned"), "{closing}");
    assert_eq!(sse.next(PATIENCE), None, "then the stream ends");
    loop {
        match redis.next() {
            Some(Value::Error(e)) => break assert!(e.contains("banned"), "{e}"),
            Some(Value::Array(_)) => continue,
            other => panic!("the Redis client expected an error, got {other:?}"),
        }
    }
    assert_eq!(redis.next(), None, "then the Redis client is closed");
    bob.barrier();
    // Revoked: the same token is refused; one issued after the call is not.
    let mut again = Conn::text(addr);
    again.send(Request::Auth { token: alice.as_bytes() });
    match again.next() {
        Frame::Err { code: 401, reason } => assert!(reason.contains("revoked"), "{reason}"),
        other => panic!("expected the revoked token refused, got {other:?}"),
    }
    let fresh = token("alice", json!({ "iat": unix_now_secs() + 2 }));
    again.send(Request::Auth { token: fresh.as_bytes() });
    assert!(matches!(again.next(), Frame::Ok { .. }));
    assert!(server.stats().api_disconnects >= 6, "{:?}", server.stats().api_disconnects);
}

#[test]
fn unsubscribe_takes_the_user_out_of_a_channel_and_tells_each_protocol() {
    let server = secured(|_| {});
    let addr = server.local_addr();
    let alice = token("alice", json!({}));
    let (mut conns, mut sse, mut redis) = alice_everywhere(addr, &alice);
    let mut bob = authed_in_room(addr, "bob");
    let target = "/api/unsubscribe?user=alice&channel=room.1&reason=moved";
    let response = http_with(addr, "POST", target, &bearer(API_KEY), b"");
    assert_eq!(response.status, 200);
    for conn in &mut conns {
        let format = conn.format;
        let reason = until(conn, |f| match f {
            Frame::Unsubscribed { channel, reason } if channel == "room.1" => Some(reason.clone()),
            _ => None,
        });
        assert_eq!(reason, "moved", "{format:?}");
    }
    let told = loop {
        let event = sse.next(PATIENCE).expect("an event");
        if event.event.as_deref() == Some("fanout unsubscribed") {
            break event.data;
        }
    };
    assert!(told.contains("moved"), "{told}");
    loop {
        match redis.next() {
            Some(Value::Array(Some(items)))
                if items.first() == Some(&Value::Bulk(Some(b"unsubscribe".to_vec()))) =>
            {
                assert_eq!(items[1], Value::Bulk(Some(b"room.1".to_vec())));
                break;
            }
            Some(_) => continue,
            None => panic!("the Redis client was closed"),
        }
    }
    // Alice hears nothing more of the channel; Bob does.
    let body = br#"{"channel":"room.1","data":"after"}"#;
    assert_eq!(http_with(addr, "POST", "/api/publish", &bearer(API_KEY), body).status, 200);
    until(&mut bob, |f| {
        matches!(f, Frame::Msg { payload, .. } if payload == b"after").then_some(())
    });
    for conn in &mut conns {
        let frames = conn.barrier();
        assert!(
            !frames.iter().any(|f| matches!(f, Frame::Msg { payload, .. } if payload == b"after")),
            "{frames:?}"
        );
    }
    assert!(server.stats().api_unsubscribes >= 6);
}

#[test]
fn the_api_publishes_broadcasts_reads_history_and_lists_channels() {
    let server = secured(|_| {});
    let addr = server.local_addr();
    let api = |method: &str, target: &str, body: &[u8]| {
        let response = http_with(addr, method, target, &bearer(API_KEY), body);
        assert_eq!(response.status, 200, "{target}: {}", String::from_utf8_lossy(&response.body));
        response.json()
    };
    let mut watcher = Conn::text(addr);
    watcher.send(Request::Auth { token: API_KEY.as_bytes() });
    watcher.next();
    watcher.subscribe("room.1");
    watcher.subscribe("room.2");
    let one = api("POST", "/api/publish", br#"{"channel":"room.1","data":"hello"}"#);
    assert_eq!(one["offset"], 1, "{one}");
    let many = api(
        "POST",
        "/api/publish",
        br#"{"channels":["room.1","room.2","bad name"],"data64":"/w=="}"#,
    );
    let results = many["results"].as_array().expect("results").clone();
    assert_eq!(results[0], json!({ "channel": "room.1", "offset": 2 }));
    assert_eq!(results[1], json!({ "channel": "room.2", "offset": 1 }));
    assert_eq!(results[2]["error"]["code"], 422, "{results:?}");
    let history = api("GET", "/api/history?channel=room.1&since=1&limit=10", b"");
    let messages = history["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 1, "{history}");
    assert_eq!(messages[0]["offset"], 2);
    assert_eq!(messages[0]["data64"], "/w==", "a payload that is not UTF-8 comes as base64");
    assert_eq!(history["last"], 2);
    let channels = api("GET", "/api/channels?pattern=room.*", b"");
    assert_eq!(channels["channels"].as_array().map(Vec::len), Some(2), "{channels}");
    assert_eq!(channels["channels"][0]["subscribers"], 1);
    let info = api("GET", "/api/info", b"");
    let node = &info["nodes"][0];
    assert_eq!(node["version"], env!("CARGO_PKG_VERSION"));
    assert!(node["connections"].as_u64() >= Some(1), "{info}");
    let bad = http_with(addr, "POST", "/api/publish", &bearer(API_KEY), b"{not json");
    assert_eq!((bad.status, bad.json()["code"].as_u64()), (400, Some(400)));
}

#[test]
fn a_reconnect_storm_is_coalesced_and_every_event_is_accounted_for() {
    let server = start(|c| {
        with_presence(c);
        // Long enough that connections closed right after subscribing fall in one window.
        c.presence.window = Duration::from_millis(1500);
    });
    let addr = server.local_addr();
    let mut watcher = Conn::text(addr);
    watcher.subscribe("room.storm");
    wait_until("the watcher's own join went out", || server.stats().presence_events >= 1);
    let mut stayers = Vec::new();
    for i in 0..100 {
        // A reconnect storm: each client's old connection goes, a new one comes.
        let flapper = member(addr, &format!("flap{i}"), "room.storm");
        drop(flapper);
        stayers.push(member(addr, &format!("stay{i}"), "room.storm"));
    }
    let mut joins = 0;
    let mut leaves = 0;
    let mut flapper_events = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while joins < 100 && Instant::now() < deadline {
        match watcher.read(Duration::from_millis(200)) {
            Read_::Frame(Frame::Join { user, .. }) if user.starts_with("stay") => joins += 1,
            Read_::Frame(Frame::Join { user, .. }) if user.starts_with("flap") => {
                flapper_events += 1
            }
            Read_::Frame(Frame::Leave { user, .. }) if user.starts_with("flap") => leaves += 1,
            _ => {}
        }
    }
    watcher.barrier();
    assert_eq!(joins, 100, "every connection that stayed is announced");
    assert_eq!(flapper_events, leaves, "a flapper announced at all is announced gone too");
    let stats = server.stats();
    // Each flapper's join and leave was either sent or cancelled within its window.
    assert_eq!(stats.presence_events + stats.presence_events_coalesced, 1 + 100 + 200, "{stats:?}");
    assert!(stats.presence_events_coalesced > 0, "some joins and leaves cancelled out");
}

#[test]
fn a_redis_client_on_a_join_leave_channel_gets_its_messages_and_no_events() {
    let server = start(with_presence);
    let addr = server.local_addr();
    let mut redis = Redis::connect(addr);
    redis.send(&["SUBSCRIBE", "room.1"]);
    redis.next();
    let mut talker = member(addr, "talker", "room.1");
    talker.publish("room.1", b"hello");
    talker.barrier();
    drop(talker);
    let message = redis.next().expect("the Redis client stays connected");
    let hello = Value::Array(Some(vec![
        Value::Bulk(Some(b"message".to_vec())),
        Value::Bulk(Some(b"room.1".to_vec())),
        Value::Bulk(Some(b"hello".to_vec())),
    ]));
    assert_eq!(message, hello, "no join before it");
    redis.send(&["PING"]);
    let pong = redis.next().expect("still connected after the leave went out");
    assert!(matches!(pong, Value::Array(_) | Value::Simple(_)), "{pong:?}");
}

#[test]
fn the_api_refuses_bad_users_patterns_and_answers_too_big_to_queue() {
    let server = secured(|c| {
        c.write_queue_cap_bytes = c.max_frame_bytes + 4096;
        c.limits.connections_per_ip = Some(0);
        // Presence without join/leave: 1,200 members hearing each other's 1 KB joins would be
        // slow consumers under this small cap, which is another test's business.
        c.presence.join_leave = Vec::new();
    });
    let addr = server.local_addr();
    let api = |method: &str, target: &str| http_with(addr, method, target, &bearer(API_KEY), b"");
    for target in [
        "/api/disconnect?user=",
        "/api/disconnect?user=%FF",
        "/api/unsubscribe?user=a%20b&channel=room.1",
    ] {
        let response = api("POST", target);
        assert_eq!(response.status, 422, "{target}");
    }
    assert_eq!(api("GET", "/api/channels?pattern=%FF").status, 422);
    common::http_with(
        addr,
        "POST",
        "/api/publish",
        &bearer(API_KEY),
        br#"{"channel":"room.1","data":"x"}"#,
    );
    let none = api("GET", "/api/history?channel=room.1&limit=0").json();
    assert_eq!(none["messages"].as_array().map(Vec::len), Some(0), "{none}");
    // Members with big info claims: an answer over half the write queue's cap is refused, as
    // asking must not make the asker a slow consumer; the stats still answer.
    let info = json!({ "bio": "x".repeat(900) });
    let members: Vec<Conn> = (0..1200)
        .map(|i| {
            let mut conn = Conn::text(addr);
            let token = token(&format!("u{i}"), json!({ "info": info }));
            conn.send(Request::Auth { token: token.as_bytes() });
            conn.next();
            conn.subscribe("room.big");
            conn
        })
        .collect();
    let big = api("GET", "/api/presence?channel=room.big");
    assert_eq!(big.status, 429, "{}", String::from_utf8_lossy(&big.body));
    assert!(big.json()["reason"].as_str().unwrap_or_default().contains("write-queue-cap"));
    assert_eq!(api("GET", "/api/presence_stats?channel=room.big").json()["clients"], 1200);
    drop(members);
}

#[test]
fn a_member_hears_what_its_presence_answer_could_not_show_and_nothing_it_showed() {
    let server = start(|c| {
        with_presence(c);
        c.presence.window = Duration::from_millis(400);
        c.workers = 1;
    });
    let addr = server.local_addr();
    // Settled: its join went out before the late member came.
    let mut settled = member(addr, "settled", "room.1");
    heard_own_join(&mut settled, "settled");
    // Pending: its join is still in the window when the late member comes.
    let _pending = member(addr, "pending", "room.1");
    let mut late = member(addr, "late", "room.1");
    late.send(Request::Presence { channel: b"room.1", stats_only: false });
    let mut shown = Vec::new();
    loop {
        match late.next() {
            Frame::Member { user, .. } => shown.push(user),
            Frame::Presence { .. } => break,
            _ => {}
        }
    }
    assert_eq!(shown, ["settled"], "only what has been announced");
    let mut heard = Vec::new();
    while heard.len() < 2 {
        if let Frame::Join { user, .. } = late.next() {
            heard.push(user);
        }
    }
    assert_eq!(heard, ["pending", "late"], "the join it could not be shown, then its own");
    let frames = late.barrier();
    let settled_again =
        frames.iter().any(|f| matches!(f, Frame::Join { user, .. } if user == "settled"));
    assert!(!settled_again, "nothing its answer showed: {frames:?}");
}

/// Applies what a member heard to the presence it was answered: joins add, leaves remove.
fn view_after(answer: Vec<String>, heard: &[Frame]) -> std::collections::BTreeSet<String> {
    let mut view: std::collections::BTreeSet<String> = answer.into_iter().collect();
    for frame in heard {
        match frame {
            Frame::Join { client, .. } => drop(view.insert(client.clone())),
            Frame::Leave { client, .. } => drop(view.remove(client)),
            _ => {}
        }
    }
    view
}

#[test]
fn in_a_storm_every_members_view_is_the_truth_with_nothing_it_knew_told_again() {
    let server = start(|c| {
        with_presence(c);
        c.presence.window = Duration::from_millis(300);
        c.workers = 2;
    });
    let addr = server.local_addr();
    let mut old: Vec<Conn> = (0..12).map(|i| member(addr, &format!("old{i}"), "room.s")).collect();
    let mut newcomers = Vec::new();
    for i in 0..12 {
        // One goes, one comes (asking presence as it subscribes), 10 ms apart.
        drop(old.remove(0));
        let mut conn = Conn::text(addr);
        conn.send_raw(format!("NAME new{i}\nSUB room.s\nPRESENCE room.s\n").as_bytes());
        newcomers.push(conn);
        std::thread::sleep(Duration::from_millis(10));
    }
    // Settle: past every window, then read what each heard.
    std::thread::sleep(Duration::from_millis(700));
    let truth: std::collections::BTreeSet<String> = {
        let json = http(addr, "GET", "/api/presence?channel=room.s", b"").json();
        json["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["client"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(truth.len(), 12, "the twelve newcomers");
    for (i, conn) in newcomers.iter_mut().enumerate() {
        let mut answer = Vec::new();
        let mut heard = Vec::new();
        let mut answered = false;
        for frame in conn.barrier() {
            match frame {
                Frame::Member { client, .. } if !answered => answer.push(client),
                Frame::Presence { .. } if !answered => answered = true,
                Frame::Join { .. } | Frame::Leave { .. } if answered => heard.push(frame),
                _ => {}
            }
        }
        assert!(answered, "new{i} was answered");
        let mut known: Vec<&String> = answer.iter().collect();
        for frame in &heard {
            match frame {
                Frame::Join { client, user, .. } => {
                    let again = answer.contains(client);
                    assert!(!again, "new{i} told again that {user} joined: {heard:?}");
                    known.push(client);
                }
                Frame::Leave { client, user, .. } => {
                    let knew = known.contains(&client);
                    assert!(knew, "new{i} told {user} left, never knowing it: {heard:?}");
                }
                _ => {}
            }
        }
        assert_eq!(view_after(answer, &heard), truth, "new{i}'s view");
    }
}

#[test]
fn a_member_that_came_and_went_within_a_window_was_never_shown() {
    let server = start(|c| {
        with_presence(c);
        c.presence.window = Duration::from_millis(500);
    });
    let addr = server.local_addr();
    let mut watcher = member(addr, "watcher", "room.g");
    heard_own_join(&mut watcher, "watcher");
    let ghost = member(addr, "ghost", "room.g");
    watcher.send(Request::Presence { channel: b"room.g", stats_only: true });
    let shown = until(&mut watcher, |f| match f {
        Frame::Presence { clients, .. } => Some(*clients),
        _ => None,
    });
    assert_eq!(shown, 1, "not shown before its join went out");
    drop(ghost);
    std::thread::sleep(Duration::from_millis(700));
    let frames = watcher.barrier();
    assert!(
        !frames.iter().any(|f| matches!(f, Frame::Join { .. } | Frame::Leave { .. })),
        "never announced, so never taken back: {frames:?}"
    );
}

#[test]
fn the_api_without_a_key_is_loopbacks_only_and_not_a_browser_pages() {
    let open = start(with_presence);
    let addr = open.local_addr();
    assert_eq!(http(addr, "GET", "/api/info", b"").status, 200, "the operator's own machine");
    let from_page = http_with(addr, "GET", "/api/info", "Origin: https://evil.example\r\n", b"");
    assert_eq!(from_page.status, 403, "a page of any site could send it");
    let public = start(|c| {
        with_presence(c);
        c.listen = "0.0.0.0:0".parse().unwrap();
        c.allow_anonymous = true;
    });
    let loopback = SocketAddr::from(([127, 0, 0, 1], public.local_addr().port()));
    let refused = http(loopback, "POST", "/api/disconnect?user=alice", b"");
    assert_eq!(refused.status, 403, "{}", String::from_utf8_lossy(&refused.body));
}

#[test]
fn an_api_reason_is_one_line_and_an_inbox_is_not_taken_away() {
    let server = secured(|_| {});
    let addr = server.local_addr();
    let mut bob = Conn::text(addr);
    bob.send(Request::Auth { token: token("bob", json!({})).as_bytes() });
    bob.next();
    bob.send(Request::Name { name: b"bob" });
    bob.next();
    bob.subscribe("room.1");
    let forged =
        "/api/unsubscribe?user=bob&channel=room.1&reason=x%0D%0AMSG%20room.1%2099%20forged";
    assert_eq!(http_with(addr, "POST", forged, &bearer(API_KEY), b"").status, 200);
    let reason = until(&mut bob, |f| match f {
        Frame::Unsubscribed { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    assert_eq!(reason, "x  MSG room.1 99 forged", "one line");
    let frames = bob.barrier();
    assert!(!frames.iter().any(|f| matches!(f, Frame::Msg { .. })), "nothing forged: {frames:?}");
    let inbox =
        http_with(addr, "POST", "/api/unsubscribe?user=bob&channel=@bob", &bearer(API_KEY), b"");
    assert_eq!(inbox.status, 403);
}
