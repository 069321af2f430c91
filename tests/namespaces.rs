//! Namespaces (`[[namespace]]`): options per channel pattern, the most specific pattern deciding,
//! on the text protocol and WebSocket: history size, backend-only channels, what clients without a
//! token may read, the largest message, presence; and the same from a config file.

mod common;

use common::{http, start, Conn, Frame};
use fanout::auth::unix_now_secs;
use fanout::namespace::Namespace;
use fanout::protocol::{Ack, Request};
use fanout::Config;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

const SECRET: &[u8] = b"a namespace test secret, long enough";
const API_KEY: &str = "namespace-test-api-key";

fn namespace(pattern: &str, adjust: impl FnOnce(&mut Namespace)) -> Namespace {
    let mut namespace = Namespace { pattern: pattern.into(), ..Default::default() };
    adjust(&mut namespace);
    namespace
}

/// A text and a WebSocket connection.
fn both(addr: std::net::SocketAddr) -> [(&'static str, Conn); 2] {
    [("text", Conn::text(addr)), ("websocket", Conn::websocket(addr))]
}

fn refusal(frames: Vec<Frame>) -> Option<(u16, String)> {
    frames.into_iter().find_map(|frame| match frame {
        Frame::Err { code, reason } => Some((code, reason)),
        _ => None,
    })
}

fn token(publish: &[&str]) -> String {
    let claims = json!({ "sub": "client", "exp": unix_now_secs() + 600, "subscribe": [">"], "publish": publish });
    let key = EncodingKey::from_secret(SECRET).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
}

fn authenticated(conn: &mut Conn, token: &str) {
    conn.send(Request::Auth { token: token.as_bytes() });
    let answer = conn.next();
    assert!(matches!(answer, Frame::Ok { ack: Ack::Auth, .. }), "{answer:?}");
}

#[test]
fn each_namespace_keeps_its_own_history_and_the_most_specific_decides() {
    let server = start(|config: &mut Config| {
        config.history_messages = 100;
        config.namespaces = vec![
            namespace("chat.>", |n| n.history_messages = Some(3)),
            // More specific than chat.>, whatever the order: keeps 5.
            namespace("chat.*.archive", |n| n.history_messages = Some(5)),
            namespace("live.>", |n| n.history_messages = Some(0)),
        ];
    });
    let mut publisher = Conn::text(server.local_addr());
    for channel in ["chat.room", "chat.room.archive", "live.score", "news"] {
        for i in 0..10 {
            publisher.publish(channel, format!("{channel} {i}").as_bytes());
        }
    }
    publisher.barrier();
    for (protocol, mut conn) in both(server.local_addr()) {
        let offsets = |conn: &mut Conn, channel: &str| -> Vec<u64> {
            conn.replay_all(channel, 0).into_iter().map(|(offset, _)| offset).collect()
        };
        assert_eq!(offsets(&mut conn, "chat.room"), vec![8, 9, 10], "{protocol}");
        assert_eq!(offsets(&mut conn, "chat.room.archive"), (6..=10).collect::<Vec<_>>());
        assert_eq!(offsets(&mut conn, "live.score"), Vec::<u64>::new(), "{protocol}: none kept");
        assert_eq!(offsets(&mut conn, "news"), (1..=10).collect::<Vec<_>>(), "{protocol}");
    }
}

#[test]
fn backend_only_channels_refuse_clients_and_take_the_server_api() {
    let server = start(|config: &mut Config| {
        config.namespaces = vec![namespace("feed.>", |n| n.client_publish = Some(false))];
    });
    let addr = server.local_addr();
    let mut subscriber = Conn::text(addr);
    subscriber.subscribe("feed.prices");
    for (protocol, mut conn) in both(addr) {
        conn.publish("feed.prices", b"from a client");
        let (code, reason) = refusal(conn.barrier()).expect("refused");
        assert_eq!(code, 403, "{protocol}: {reason}");
        assert!(reason.contains("backend only"), "{reason}");
        // Only that publish: the connection stays and may publish elsewhere.
        conn.publish("other", b"fine");
        assert_eq!(refusal(conn.barrier()), None, "{protocol}");
    }
    let response = http(addr, "POST", "/publish?channel=feed.prices", b"over HTTP");
    assert_eq!(response.status, 403, "a client's HTTP publish too");
    let body = br#"{"channel": "feed.prices", "data": "from the backend"}"#;
    let response = http(addr, "POST", "/api/publish", body);
    assert_eq!(response.status, 200, "the server API publishes: {:?}", response.json());
    // (Delivered through the ring, maybe by the other worker: waited for, not raced by a PING.)
    let heard = loop {
        if let Frame::Msg { offset, payload, .. } = subscriber.next() {
            break (offset, payload);
        }
    };
    assert_eq!(heard, (1, b"from the backend".to_vec()), "only the backend's");
    assert_eq!(server.stats().limited_namespace_publish, 3);

    // With access control: the API key publishes, a token that may publish anywhere does not.
    let server = start(|config: &mut Config| {
        config.auth.hmac_secret = Some(SECRET.to_vec());
        config.auth.api_key = Some(API_KEY.as_bytes().to_vec());
        config.namespaces = vec![namespace("feed.>", |n| n.client_publish = Some(false))];
    });
    for (protocol, mut conn) in both(server.local_addr()) {
        authenticated(&mut conn, &token(&[">"]));
        conn.publish("feed.prices", b"from a client");
        assert_eq!(refusal(conn.barrier()).map(|(code, _)| code), Some(403), "{protocol}");
    }
    let mut backend = Conn::text(server.local_addr());
    authenticated(&mut backend, API_KEY);
    backend.publish("feed.prices", b"from the backend");
    assert_eq!(refusal(backend.barrier()), None);
}

#[test]
fn clients_without_a_token_read_what_their_namespace_opens() {
    let server = start(|config: &mut Config| {
        config.auth.hmac_secret = Some(SECRET.to_vec());
        config.namespaces = vec![
            namespace("public.>", |n| n.anonymous_subscribe = Some(true)),
            namespace("public.secret.*", |n| n.anonymous_subscribe = Some(false)),
        ];
    });
    let addr = server.local_addr();
    let mut publisher = Conn::text(addr);
    authenticated(&mut publisher, &token(&[">"]));
    for (protocol, mut conn) in both(addr) {
        conn.subscribe("public.news");
        conn.send(Request::Subscribe { channel: b"public.secret.plans", resume: None });
        let (code, reason) = refusal(conn.barrier()).expect("refused");
        assert_eq!(code, 401, "{protocol}: the more specific namespace closes it: {reason}");
        conn.send(Request::Subscribe { channel: b"elsewhere", resume: None });
        assert!(refusal(conn.barrier()).is_some(), "{protocol}: no namespace opens it");
        conn.publish("public.news", b"anonymous publish");
        assert!(refusal(conn.barrier()).is_some(), "{protocol}: reading is not publishing");
        // A wildcard that would reach the closed namespace is refused; one that stays out is not.
        conn.send(Request::PatternSubscribe { pattern: b"public.>" });
        assert!(refusal(conn.barrier()).is_some(), "{protocol}: public.> reaches public.secret.*");
        conn.send(Request::PatternSubscribe { pattern: b"public.news.*" });
        assert_eq!(refusal(conn.barrier()), None, "{protocol}");

        publisher.publish("public.secret.plans", b"not for strangers");
        publisher.publish("public.news", protocol.as_bytes());
        let heard = loop {
            if let Frame::Msg { channel, payload, .. } = conn.next() {
                break (channel, payload);
            }
        };
        assert_eq!(heard, ("public.news".into(), protocol.as_bytes().to_vec()), "{protocol}");
    }
}

#[test]
fn a_namespace_caps_its_messages_and_the_connection_stays() {
    let server = start(|config: &mut Config| {
        config.namespaces = vec![namespace("small.>", |n| n.max_message_bytes = Some(10))];
    });
    for (protocol, mut conn) in both(server.local_addr()) {
        conn.publish("small.x", b"eleven byte");
        let (code, reason) = refusal(conn.barrier()).expect("refused");
        assert_eq!(code, 413, "{protocol}: {reason}");
        assert!(reason.contains("at most 10 bytes"), "{reason}");
        conn.publish("small.x", b"ten bytes!");
        conn.publish("large", &[b'x'; 1000]);
        assert_eq!(refusal(conn.barrier()), None, "{protocol}");
    }
    assert_eq!(server.stats().limited_namespace_publish, 2);
}

#[test]
fn presence_and_joins_by_namespace() {
    let server = start(|config: &mut Config| {
        config.namespaces = vec![
            namespace("room.*", |n| n.join_leave = Some(true)),
            namespace("room.quiet", |n| n.join_leave = Some(false)),
        ];
    });
    let addr = server.local_addr();
    let presence = |channel: &str| {
        let response = http(addr, "GET", &format!("/api/presence_stats?channel={channel}"), b"");
        (response.status, response.json())
    };
    let mut first = Conn::text(addr);
    first.subscribe("room.1");
    first.subscribe("room.quiet");
    let mut second = Conn::text(addr);
    second.subscribe("room.1");
    second.subscribe("room.quiet");
    // The first hears itself and the second join room.1 (room.quiet is not tracked at all).
    let mut joined = Vec::new();
    while joined.len() < 2 {
        match first.next() {
            Frame::Join { channel, client, .. } => joined.push((channel, client)),
            Frame::Msg { .. } => continue,
            other => panic!("expected a join, got {other:?}"),
        }
    }
    assert!(joined.iter().all(|(channel, _)| channel == "room.1"), "{joined:?}");
    let (status, stats) = presence("room.1");
    assert_eq!((status, stats["clients"].as_u64()), (200, Some(2)), "{stats}");
    let (status, _) = presence("room.quiet");
    assert_ne!(status, 200, "room.quiet is not tracked");
}

#[test]
fn a_namespaces_history_limits_hold_on_disk_and_after_a_restart() {
    let dir = common::TempDir::new("namespace-disk");
    let configure = |config: &mut Config| {
        config.data_dir = Some(dir.0.clone());
        config.segment_bytes = 4096;
        config.namespaces = vec![namespace("chat.>", |n| n.history_messages = Some(3))];
    };
    let server = start(configure);
    let mut publisher = Conn::text(server.local_addr());
    for i in 0..200 {
        publisher.publish("chat.room", format!("message {i} {}", "x".repeat(100)).as_bytes());
        publisher.publish("news", format!("message {i}").as_bytes());
    }
    publisher.barrier();
    drop(publisher);
    server.shutdown();

    let server = start(configure);
    let mut conn = Conn::text(server.local_addr());
    let offsets = |conn: &mut Conn, channel: &str| -> Vec<u64> {
        conn.replay_all(channel, 0).into_iter().map(|(offset, _)| offset).collect()
    };
    assert_eq!(offsets(&mut conn, "chat.room"), vec![198, 199, 200]);
    assert_eq!(offsets(&mut conn, "news").len(), 200);
    // On disk, whole segments past the namespace's limit went (the newest always stays).
    // (A channel's directory is its name in hex.)
    let segments = |name: &str| {
        let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
        let files = std::fs::read_dir(dir.0.join("channels").join(hex)).expect("its directory");
        files.filter(|f| f.as_ref().unwrap().path().extension() == Some("seg".as_ref())).count()
    };
    assert!(segments("chat.room") <= 2, "chat.room: {} segments", segments("chat.room"));
    assert!(segments("news") > 1, "news keeps its history: {} segments", segments("news"));
}

#[test]
fn closing_a_namespace_to_strangers_needs_access_control() {
    let mut config = Config::for_tests();
    config.namespaces = vec![namespace("secret.>", |n| n.anonymous_subscribe = Some(false))];
    let refused = fanout::Server::start(config.clone()).expect_err("nothing would be closed");
    assert!(refused.to_string().contains("access control is off"), "{refused}");
    // With access control, it starts.
    config.auth.api_key = Some(API_KEY.as_bytes().to_vec());
    fanout::Server::start(config).expect("starts").shutdown();
}
