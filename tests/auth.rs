//! Access control through a running server: tokens on every protocol (the exact error for each
//! bad one, and the connection's fate), the permission matrix, expiry and refresh, the
//! authentication deadline, protected mode, browser origins, and each abuse limit.
//!
//! `tests/keys/` holds throwaway keys for these tests only, made with
//! `openssl genpkey -algorithm ed25519|RSA|EC` and `openssl pkey -pubout`.

mod common;

use std::time::{Duration, Instant};

use common::{http, http_with, start, wait_until, Conn, EventStream, Frame, Read_, PATIENCE};
use fanout::auth::unix_now_secs;
use fanout::protocol::{self, Ack, Format, Request, Resume};
use fanout::{Config, Server, ServerHandle, StartError};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const SECRET: &[u8] = b"a test secret that is long enough";
const API_KEY: &str = "backend-api-key-for-tests";

fn key_file(name: &str) -> String {
    format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn sign_with(algorithm: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(algorithm), claims, key).expect("signs")
}

fn sign(claims: Value) -> String {
    sign_with(Algorithm::HS256, &EncodingKey::from_secret(SECRET).unwrap(), &claims)
}

/// A token for `sub` with these patterns, valid for `ttl` seconds (negative: expired).
fn token(sub: &str, subscribe: &[&str], publish: &[&str], ttl: i64) -> String {
    let exp = unix_now_secs() as i64 + ttl;
    sign(json!({ "sub": sub, "exp": exp, "subscribe": subscribe, "publish": publish }))
}

fn base64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A server with an HMAC secret and an API key; failed authentications are not limited (the
/// tests send many bad tokens on one connection) unless `adjust` says otherwise.
fn secured(adjust: impl FnOnce(&mut Config)) -> ServerHandle {
    start(|config: &mut Config| {
        config.auth.hmac_secret = Some(SECRET.to_vec());
        config.auth.api_key = Some(API_KEY.as_bytes().to_vec());
        config.limits.auth_failures = Some(0);
        adjust(config);
    })
}

/// The next frame that is not a channel message (broadcasts reach every connection).
fn next_answer(conn: &mut Conn) -> Frame {
    loop {
        match conn.next() {
            Frame::Msg { .. } => continue,
            other => return other,
        }
    }
}

fn auth(conn: &mut Conn, token: &str) -> Frame {
    conn.send(Request::Auth { token: token.as_bytes() });
    next_answer(conn)
}

fn expect_refused(frame: Frame, code: u16, words: &str) {
    match frame {
        Frame::Err { code: got, reason } => {
            assert_eq!(got, code, "{reason}");
            assert!(reason.contains(words), "expected {words:?} in {reason:?}");
        }
        other => panic!("expected ERR {code} ({words}), got {other:?}"),
    }
}

fn authed(sub: &str) -> Frame {
    Frame::Ok { ack: Ack::Auth, arg: sub.into() }
}

/// Publishes as the backend (API key over HTTP) and returns the offset.
fn backend_publish(addr: std::net::SocketAddr, channel: &str, payload: &str) -> u64 {
    let bearer = format!("Authorization: Bearer {API_KEY}\r\n");
    let response = http_with(
        addr,
        "POST",
        &format!("/publish?channel={channel}"),
        &bearer,
        payload.as_bytes(),
    );
    assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
    response.json()["offset"].as_u64().expect("offset")
}

/// Alice's claims for a server that wants the audience `fanout-tests`, changed by `extra`.
fn claims(extra: Value) -> Value {
    let mut claims = json!({ "sub": "alice", "exp": unix_now_secs() + 600, "aud": "fanout-tests",
                              "subscribe": ["room.*"], "publish": ["room.*"] });
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    claims
}

/// Every way a token can be bad, with words its refusal must contain.
fn bad_tokens() -> Vec<(String, &'static str)> {
    let now = unix_now_secs();
    let none_alg = format!(
        "{}.{}.",
        base64url(br#"{"alg":"none","typ":"JWT"}"#),
        base64url(claims(json!({})).to_string().as_bytes())
    );
    let other_secret = EncodingKey::from_secret(b"another secret").unwrap();
    vec![
        ("not a token at all".to_string(), "malformed"),
        (none_alg, "malformed"),
        (sign_with(Algorithm::HS256, &other_secret, &claims(json!({}))), "bad signature"),
        (sign(claims(json!({ "exp": now - 10 }))), "expired"),
        (sign(claims(json!({ "nbf": now + 600 }))), "not yet valid"),
        (sign(claims(json!({ "aud": "someone-else" }))), "audience"),
        (sign(json!({ "sub": "alice", "aud": "fanout-tests" })), "exp is required"),
        (sign(claims(json!({ "subscribe": "room.*" }))), "subscribe"),
        ("x".repeat(9000), "longer than"),
    ]
}

/// Every bad token gets its own 401, on text, binary and WebSocket alike, and the connection
/// stays; a good one is acknowledged with its subject and opens exactly its channels. A
/// subscriber authenticated before all this keeps receiving.
#[test]
fn every_command_protocol_refuses_each_bad_token_and_takes_a_good_one() {
    let server = secured(|config| config.auth.audience = Some("fanout-tests".into()));
    let addr = server.local_addr();
    let bad_tokens = bad_tokens();
    let good = sign(claims(json!({})));

    let mut bystander = Conn::binary(addr);
    assert_eq!(auth(&mut bystander, &good), authed("alice"));
    bystander.subscribe("room.1");

    for format in [Format::Text, Format::Binary, Format::WsJson] {
        let mut conn = Conn::open(addr, format);
        conn.send(Request::Subscribe { channel: b"room.1", resume: None });
        expect_refused(conn.next(), 401, "authenticate first");
        conn.send(Request::Publish { channel: b"room.1", payload: b"x"[..].into() });
        expect_refused(conn.next(), 401, "authenticate first");
        assert!(conn.barrier().is_empty(), "{format:?}: PING is allowed before AUTH");
        for (bad, words) in &bad_tokens {
            expect_refused(auth(&mut conn, bad), 401, words);
        }
        assert_eq!(auth(&mut conn, &good), authed("alice"), "{format:?}");
        conn.subscribe("room.1");
        conn.send(Request::Subscribe { channel: b"lobby", resume: None });
        expect_refused(conn.next(), 403, "not permitted to subscribe to lobby");
        let offset = backend_publish(addr, "room.1", &format!("after {format:?}"));
        assert_eq!(
            conn.next(),
            Frame::Msg {
                channel: "room.1".into(),
                offset,
                payload: format!("after {format:?}").into()
            }
        );
    }
    let seen: Vec<u64> = (0..3)
        .map(|_| match bystander.next() {
            Frame::Msg { offset, .. } => offset,
            other => panic!("the bystander got {other:?}"),
        })
        .collect();
    assert_eq!(seen, [1, 2, 3], "the bystander kept receiving");
    let stats = server.stats();
    assert_eq!(stats.auth_ok, 4 + 3, "four tokens, three publishes with the API key");
    assert_eq!(stats.auth_malformed, 3 * 5, "malformed, none, no exp, bad claim, too long");
    assert_eq!(stats.auth_bad_signature, 3);
    assert_eq!(stats.auth_expired, 3);
    assert_eq!(stats.auth_invalid_claims, 3 * 2);
}

/// A token signed with HMAC using the server's RSA public key as the secret (the classic
/// algorithm confusion) is refused; RS256, ES256 and EdDSA tokens verify with their keys, chosen
/// by `kid`.
#[test]
fn public_keys_verify_their_algorithms_and_nothing_else() {
    let server = start(|config: &mut Config| {
        for (kid, file) in [("r", "rsa.pub.pem"), ("e", "ec.pub.pem"), ("d", "ed25519.pub.pem")] {
            let pem = std::fs::read(key_file(file)).unwrap();
            config.auth.public_keys.push((Some(kid.into()), pem));
        }
        config.limits.auth_failures = Some(0);
    });
    let claims = json!({ "sub": "bob", "exp": unix_now_secs() + 600, "subscribe": [">"] });
    let with_kid = |algorithm, kid: &str, key: &EncodingKey| {
        let mut header = Header::new(algorithm);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, &claims, key).unwrap()
    };
    let read = |file| std::fs::read(key_file(file)).unwrap();
    let rsa = EncodingKey::from_rsa_pem(&read("rsa.pem")).unwrap();
    let ec = EncodingKey::from_ec_pem(&read("ec.pem")).unwrap();
    let ed = EncodingKey::from_ed_pem(&read("ed25519.pem")).unwrap();
    let mut conn = Conn::text(server.local_addr());
    assert_eq!(auth(&mut conn, &with_kid(Algorithm::RS256, "r", &rsa)), authed("bob"));
    assert_eq!(auth(&mut conn, &with_kid(Algorithm::ES256, "e", &ec)), authed("bob"));
    assert_eq!(auth(&mut conn, &with_kid(Algorithm::EdDSA, "d", &ed)), authed("bob"));
    // The right algorithm under another key's id, an unknown id, and HMAC with the public key.
    expect_refused(auth(&mut conn, &with_kid(Algorithm::RS256, "d", &rsa)), 401, "bad signature");
    expect_refused(auth(&mut conn, &with_kid(Algorithm::EdDSA, "x", &ed)), 401, "bad signature");
    let confused = EncodingKey::from_secret(&read("rsa.pub.pem")).unwrap();
    let confused = with_kid(Algorithm::HS256, "r", &confused);
    expect_refused(auth(&mut conn, &confused), 401, "bad signature");
    // The same over the browser endpoints.
    let bearer = format!("Authorization: Bearer {confused}\r\n");
    let addr = server.local_addr();
    for (method, path) in [
        ("GET", "/sse?channel=a"),
        ("GET", "/poll?channel=a&timeout=0"),
        ("POST", "/publish?channel=a"),
    ] {
        let response = http_with(addr, method, path, &bearer, b"x");
        assert_eq!(response.status, 401, "{path}");
        assert!(String::from_utf8_lossy(&response.body).contains("bad signature"), "{path}");
    }
    conn.subscribe("anything.at.all");
}

/// SSE, long-poll and HTTP publish carry the token in `?token=` or `Authorization: Bearer`:
/// none is 401, a bad one 401, a forbidden channel 403 (before any stream starts), a good one
/// works; the API key may publish anywhere.
#[test]
fn browser_endpoints_take_the_token_from_the_query_or_the_header() {
    let server = secured(|config| config.auth.audience = Some("fanout-tests".into()));
    let addr = server.local_addr();
    let good = sign(claims(json!({})));
    for (bad, words) in bad_tokens() {
        let bearer = format!("Authorization: Bearer {bad}\r\n");
        for (method, path) in [
            ("GET", "/sse?channel=room.1"),
            ("GET", "/poll?channel=room.1&timeout=0"),
            ("POST", "/publish?channel=room.1"),
        ] {
            let response = http_with(addr, method, path, &bearer, b"x");
            if bad.len() > protocol::http::MAX_HEAD_BYTES {
                // Over HTTP the head's own limit comes first.
                assert_eq!(response.status, 431, "{path}");
                continue;
            }
            assert_eq!(response.status, 401, "{path} with a token that is {words}");
            let body = String::from_utf8_lossy(&response.body);
            assert!(body.contains(words), "{path}: expected {words:?} in {body}");
        }
        if bad.len() < 1000 && !bad.contains(' ') {
            let refused = Conn::websocket_at(addr, &format!("/ws?token={bad}"), "").err();
            let head = refused.expect("no upgrade with a bad token");
            assert!(head.starts_with("HTTP/1.1 401"), "{head}");
        }
    }
    let garbage = "garbage.token.here";
    let bearer = |t: &str| format!("Authorization: Bearer {t}\r\n");
    for (path, method) in
        [("/sse?channel=room.1", "GET"), ("/poll?channel=room.1&timeout=0", "GET")]
    {
        assert_eq!(http(addr, method, path, b"").status, 401, "{path}: no token");
        let bad = format!("{path}&token={garbage}");
        assert_eq!(http(addr, method, &bad, b"").status, 401, "{path}: bad token");
        let forbidden = path.replace("room.1", "vault");
        let response = http(addr, method, &format!("{forbidden}&token={good}"), b"");
        assert_eq!(response.status, 403, "{forbidden}");
        assert!(String::from_utf8_lossy(&response.body).contains("not permitted to subscribe"));
    }
    let poll = http(addr, "GET", &format!("/poll?channel=room.1&timeout=0&token={good}"), b"");
    assert_eq!(poll.status, 200);
    let poll = http_with(addr, "GET", "/poll?channel=room.1&timeout=0", &bearer(&good), b"");
    assert_eq!(poll.status, 200);

    let mut by_query = EventStream::open(addr, &format!("/sse?channel=room.1&token={good}"), "");
    assert!(by_query.head.starts_with("HTTP/1.1 200"), "{}", by_query.head);
    let mut by_header = EventStream::open(addr, "/sse?channel=room.1", &bearer(&good));
    assert!(by_header.head.starts_with("HTTP/1.1 200"), "{}", by_header.head);

    let publish = |headers: &str, channel: &str| {
        http_with(addr, "POST", &format!("/publish?channel={channel}"), headers, b"hi").status
    };
    assert_eq!(publish("", "room.1"), 401);
    assert_eq!(publish(&bearer(garbage), "room.1"), 401);
    assert_eq!(publish(&bearer(&good), "vault"), 403);
    assert_eq!(publish(&bearer(&good), "room.1"), 200);
    assert_eq!(publish(&bearer(API_KEY), "vault"), 200);
    assert_eq!(publish(&bearer(API_KEY), "*"), 200);
    for stream in [&mut by_query, &mut by_header] {
        let event = loop {
            let event = stream.next(PATIENCE).expect("the published message");
            if event.event.as_deref() == Some("room.1") {
                break event;
            }
        };
        assert_eq!(event.data, "hi");
    }
}

/// The permission matrix: topic wildcards for subscribe and publish, the broadcast channel only
/// where named, inboxes (`@<sub>` is its owner's alone), and a resume on a forbidden channel
/// (403, nothing replayed).
#[test]
fn permissions_follow_the_patterns() {
    let server = secured(|_| {});
    let addr = server.local_addr();
    let pub_acked = |conn: &mut Conn, channel: &str| {
        conn.send(Request::PublishAcked { channel: channel.as_bytes(), payload: b"m"[..].into() });
        next_answer(conn)
    };
    let mut alice = Conn::binary(addr);
    let alice_token = token("alice", &["room.*", "user.42.>"], &["room.*", "@*"], 600);
    assert_eq!(auth(&mut alice, &alice_token), authed("alice"));
    for (channel, allowed) in [
        ("room.1", true),
        ("room.1.x", false),
        ("room", false),
        ("user.42.a.b", true),
        ("user.43.a", false),
        ("lobby", false),
    ] {
        alice.send(Request::Subscribe { channel: channel.as_bytes(), resume: None });
        match alice.next() {
            Frame::Ok { ack: Ack::Subscribe, arg } if allowed => assert_eq!(arg, channel),
            Frame::Err { code: 403, .. } if !allowed => {}
            other => panic!("SUB {channel}: {other:?}"),
        }
    }
    assert!(matches!(pub_acked(&mut alice, "room.2"), Frame::Ack { .. }));
    for forbidden in ["lobby", "*", "user.42.a"] {
        expect_refused(pub_acked(&mut alice, forbidden), 403, "not permitted to publish");
    }
    // Her name is hers: she may claim it, nobody else may.
    alice.send(Request::Name { name: b"alice" });
    assert_eq!(alice.next(), Frame::Ok { ack: Ack::Name, arg: "alice".into() });
    let mut mallory = Conn::binary(addr);
    assert_eq!(auth(&mut mallory, &token("mallory", &[], &["room.*"], 600)), authed("mallory"));
    mallory.send(Request::Name { name: b"alice" });
    expect_refused(mallory.next(), 403, "not permitted to claim the name alice");
    expect_refused(pub_acked(&mut mallory, "@alice"), 403, "not permitted to publish to @alice");
    // With `@*`, alice may write to any inbox, her own included.
    assert!(matches!(pub_acked(&mut alice, "@alice"), Frame::Ack { .. }));
    assert!(matches!(alice.next(), Frame::Msg { channel, .. } if channel == "@alice"));
    // Broadcasting needs the pattern `*` itself.
    let mut announcer = Conn::binary(addr);
    assert_eq!(auth(&mut announcer, &token("ops", &[], &["*"], 600)), authed("ops"));
    assert!(matches!(pub_acked(&mut announcer, "*"), Frame::Ack { .. }));
    expect_refused(pub_acked(&mut announcer, "room.1"), 403, "not permitted");
    // A resume is a subscribe: on a forbidden channel, refused before anything is replayed.
    backend_publish(addr, "vault", "secret");
    alice.send(Request::Subscribe {
        channel: b"vault",
        resume: Some(Resume { after: 0, epoch: None, strict: false }),
    });
    let before_pong = alice.barrier();
    let refusals: Vec<&Frame> = before_pong
        .iter()
        .filter(|f| !matches!(f, Frame::Msg { channel, .. } if channel == "*"))
        .collect();
    assert!(
        matches!(refusals[..], [Frame::Err { code: 403, .. }]),
        "only the refusal, no HIST and no message: {before_pong:?}"
    );
}

/// A token expires: its connection gets `ERR 401 token expired` and is closed after the grace;
/// a connection that sent a fresh token for the same subject before then keeps receiving. A
/// fresh token for another subject is refused.
#[test]
fn expired_tokens_end_connections_that_did_not_refresh() {
    let server = secured(|config| config.auth.expiry_grace = Duration::from_millis(500));
    let addr = server.local_addr();
    let short = token("dave", &["news"], &[], 2);
    let mut stale = Conn::binary(addr);
    let mut fresh = Conn::text(addr);
    for conn in [&mut stale, &mut fresh] {
        assert_eq!(auth(conn, &short), authed("dave"));
        conn.subscribe("news");
    }
    expect_refused(auth(&mut fresh, &token("eve", &["news"], &[], 600)), 403, "identity");
    assert_eq!(auth(&mut fresh, &token("dave", &["news"], &[], 600)), authed("dave"));
    let started = Instant::now();
    let reason = stale.expect_error_and_close(401);
    assert!(reason.contains("token expired"), "{reason}");
    assert!(started.elapsed() < PATIENCE);
    let offset = backend_publish(addr, "news", "after the first token's exp");
    assert_eq!(
        fresh.next(),
        Frame::Msg {
            channel: "news".into(),
            offset,
            payload: b"after the first token's exp".to_vec()
        }
    );
    assert_eq!(server.stats().auth_expiry_closes, 1);
}

/// Without permissions a connection must authenticate in time; with anonymous patterns it
/// need not, and gets exactly those channels.
#[test]
fn connections_without_permissions_must_authenticate_in_time() {
    let server = secured(|config| config.auth.timeout = Duration::from_millis(500));
    let mut silent = Conn::text(server.local_addr());
    let reason = silent.expect_error_and_close(401);
    assert!(reason.contains("authentication timeout"), "{reason}");
    assert_eq!(server.stats().auth_timeout_closes, 1);

    let open = secured(|config| {
        config.auth.timeout = Duration::from_millis(500);
        config.auth.anonymous_subscribe = vec!["comments".into()];
    });
    let mut reader = Conn::text(open.local_addr());
    // Past its deadline by two of the server's once-a-second access checks, whatever their
    // phase: at least one check saw it late, and let it be.
    const ACCESS_CHECK: Duration = Duration::from_secs(1);
    std::thread::sleep(Duration::from_millis(500) + 2 * ACCESS_CHECK + Duration::from_millis(100));
    reader.subscribe("comments");
    reader.send(Request::Subscribe { channel: b"admin", resume: None });
    expect_refused(reader.next(), 403, "not permitted");
    reader.send(Request::Publish { channel: b"comments", payload: b"hi"[..].into() });
    expect_refused(reader.next(), 403, "not permitted to publish");
    assert!(reader.barrier().is_empty(), "still connected");
}

/// Protected mode: a non-loopback address without access control is refused unless
/// `--allow-anonymous` says so; loopback needs nothing.
#[test]
fn a_public_address_without_access_control_is_refused() {
    let public = |adjust: fn(&mut Config)| {
        let mut config = Config::for_tests();
        config.listen = "0.0.0.0:0".parse().unwrap();
        adjust(&mut config);
        Server::start(config)
    };
    match public(|_| {}) {
        Err(e @ StartError::Unprotected(_)) => {
            let message = e.to_string();
            for flag in ["--auth-secret-file", "--allow-anonymous"] {
                assert!(message.contains(flag), "{message}");
            }
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    public(|config| config.allow_anonymous = true).expect("starts when told to");
    public(|config| config.auth.hmac_secret = Some(SECRET.to_vec())).expect("starts with auth");
    start(|_| {});
}

/// With `--allowed-origins`, a WebSocket upgrade or a request from another origin gets 403,
/// and answers to an allowed one name it instead of `*`.
#[test]
fn only_allowed_origins_may_use_the_browser_endpoints() {
    let server = start(|config: &mut Config| {
        config.allowed_origins = vec!["https://good.example".into()];
    });
    let addr = server.local_addr();
    let evil = "Origin: https://evil.example\r\n";
    let good = "Origin: https://good.example\r\n";
    let refused = Conn::websocket_at(addr, "/ws", evil).err().expect("refused");
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    assert_eq!(http_with(addr, "GET", "/sse?channel=a", evil, b"").status, 403);
    assert_eq!(http_with(addr, "POST", "/publish?channel=a", evil, b"x").status, 403);
    let mut allowed = Conn::websocket_at(addr, "/ws", good).expect("upgrades");
    allowed.subscribe("a");
    let answer = http_with(addr, "GET", "/healthz", good, b"");
    assert_eq!(answer.header("access-control-allow-origin"), Some("https://good.example"));
    assert_eq!(answer.header("vary"), Some("Origin"));
    let no_origin = http(addr, "GET", "/healthz", b"");
    assert_eq!(no_origin.status, 200, "clients that are not browsers send no Origin");
    assert_eq!(server.stats().limited_origin, 3);
}

/// Each abuse limit: its error, its counter, and the others unaffected.
#[test]
fn abuse_limits_refuse_the_abuser_only() {
    let server = start(|config: &mut Config| {
        config.auth.hmac_secret = Some(SECRET.to_vec());
        config.auth.anonymous_subscribe = vec![">".into()];
        config.auth.anonymous_publish = vec![">".into()];
        config.limits.publishes_per_sec = Some(5);
        config.limits.subscribes_per_sec = Some(5);
        config.limits.auth_failures = Some(3);
        config.limits.connections_per_ip = Some(0);
    });
    let addr = server.local_addr();
    let mut bystander = Conn::binary(addr);
    bystander.subscribe("flood");

    let mut flooder = Conn::binary(addr);
    for _ in 0..20 {
        flooder.send(Request::PublishAcked { channel: b"flood", payload: b"x"[..].into() });
    }
    let answers: Vec<Frame> = flooder.barrier();
    let acked = answers.iter().filter(|f| matches!(f, Frame::Ack { .. })).count();
    let limited = answers.iter().filter(|f| matches!(f, Frame::Err { code: 429, .. })).count();
    assert_eq!(acked + limited, 20, "{answers:?}");
    assert!((5..10).contains(&acked), "a burst of about one second's worth: {acked}");
    assert_eq!(server.stats().limited_publish_rate, limited as u64);
    for _ in 0..acked {
        assert!(matches!(bystander.next(), Frame::Msg { .. }));
    }
    assert!(bystander.barrier().is_empty(), "the bystander got exactly what was accepted");

    let mut churner = Conn::text(addr);
    for i in 0..20 {
        churner.send(Request::Subscribe { channel: format!("c{i}").as_bytes(), resume: None });
    }
    let answers = churner.barrier();
    let limited = answers.iter().filter(|f| matches!(f, Frame::Err { code: 429, .. })).count();
    assert!(limited >= 10, "{answers:?}");
    assert_eq!(server.stats().limited_subscribe_rate, limited as u64);

    let mut guesser = Conn::text(addr);
    for _ in 0..2 {
        expect_refused(auth(&mut guesser, "wrong"), 401, "malformed");
    }
    guesser.send(Request::Auth { token: b"wrong" });
    let reason = guesser.expect_error_and_close(401);
    assert!(reason.contains("3 failed authentications"), "{reason}");
    assert_eq!(server.stats().auth_failure_closes, 1);
    assert!(bystander.barrier().is_empty(), "the bystander is still there");
}

/// Connections per source address: one more gets `ERR 503` at accept; the others work on.
#[test]
fn connections_per_address_are_capped() {
    let server = start(|config: &mut Config| {
        config.auth.anonymous_subscribe = vec![">".into()];
        config.limits.connections_per_ip = Some(2);
    });
    let addr = server.local_addr();
    let mut first = Conn::text(addr);
    let mut second = Conn::text(addr);
    first.subscribe("a");
    second.subscribe("a");
    let mut third = Conn::text(addr);
    let reason = third.expect_error_and_close(503);
    assert!(reason.contains("too many connections from your address"), "{reason}");
    assert_eq!(server.stats().limited_connections_per_ip, 1);
    assert!(first.barrier().is_empty() && second.barrier().is_empty());
    drop(first);
    wait_until("the first connection is gone", || server.stats().connections_current == 1);
    let mut again = Conn::text(addr);
    again.subscribe("a");
}

/// The API key may do everything: publish anywhere (broadcast included), claim any name, and is
/// not rate-limited. With access control off, AUTH is acknowledged and changes nothing.
#[test]
fn the_api_key_may_do_everything() {
    let server = secured(|config| config.limits.publishes_per_sec = Some(1));
    let mut backend = Conn::text(server.local_addr());
    assert_eq!(auth(&mut backend, API_KEY), authed("-"));
    for _ in 0..5 {
        backend.send(Request::PublishAcked { channel: b"*", payload: b"all"[..].into() });
    }
    let answers = backend.barrier();
    let acks = answers.iter().filter(|f| matches!(f, Frame::Ack { .. })).count();
    assert_eq!(acks, 5, "{answers:?}");
    backend.send(Request::Name { name: b"anyone" });
    assert_eq!(next_answer(&mut backend), Frame::Ok { ack: Ack::Name, arg: "anyone".into() });

    let open = start(|_| {});
    let mut client = Conn::binary(open.local_addr());
    assert_eq!(auth(&mut client, "whatever"), authed("-"));
    client.subscribe("anything");
    assert_eq!(client.read(Duration::from_millis(100)), Read_::Nothing);
}

/// Reads what `conn` gets within a short while: broadcasts a stranger must not hear would be
/// among them.
fn heard(conn: &mut Conn) -> Vec<Frame> {
    let mut frames = Vec::new();
    while let Read_::Frame(frame) = conn.read(Duration::from_millis(300)) {
        frames.push(frame);
    }
    frames
}

/// A connection that never authenticated receives nothing, on any protocol, however often it
/// reconnects: not `*`, not an inbox. Once it authenticates it hears `*` (as the README says);
/// an anonymous grant hears `*` only when it names it.
#[test]
fn strangers_hear_no_broadcast_on_any_protocol() {
    let server = secured(|_| {});
    let addr = server.local_addr();
    let mut text = Conn::text(addr);
    text.send(Request::Ping);
    text.expect(Frame::Pong);
    let mut binary = Conn::binary(addr);
    binary.send(Request::Ping);
    binary.expect(Frame::Pong);
    let mut websocket = Conn::websocket(addr);
    websocket.send(Request::Ping);
    websocket.expect(Frame::Pong);
    let mut member = Conn::text(addr);
    assert_eq!(auth(&mut member, &token("bob", &[], &[], 600)), authed("bob"));
    // An event stream without a token is refused before it starts.
    let sse = http(addr, "GET", "/sse?channel=room.1", b"");
    assert_eq!(sse.status, 401, "{}", String::from_utf8_lossy(&sse.body));

    backend_publish(addr, "*", "to everyone");
    assert!(matches!(member.next(), Frame::Msg { channel, .. } if channel == "*"));
    for stranger in [&mut text, &mut binary, &mut websocket] {
        assert_eq!(heard(stranger), [], "a stranger heard a broadcast");
    }
    // Authenticated, they hear the next one.
    for stranger in [&mut text, &mut binary, &mut websocket] {
        assert_eq!(auth(stranger, &token("carol", &[], &[], 600)), authed("carol"));
    }
    backend_publish(addr, "*", "again");
    for conn in [&mut text, &mut binary, &mut websocket, &mut member] {
        assert!(matches!(conn.next(), Frame::Msg { payload, .. } if payload == b"again"));
    }

    // Anonymous permissions that do not name `*` do not hear it; `--anonymous-sub '*'` does.
    for (anonymous, hears) in [(vec!["comments".to_string()], false), (vec!["*".into()], true)] {
        let server = secured(|config| config.auth.anonymous_subscribe = anonymous.clone());
        let mut guest = Conn::websocket(server.local_addr());
        guest.send(Request::Ping);
        guest.expect(Frame::Pong);
        backend_publish(server.local_addr(), "*", "news");
        assert_eq!(!heard(&mut guest).is_empty(), hears, "anonymous {anonymous:?}");
    }
}

/// Before it has permissions a connection may send one request of a few KiB (AUTH with the
/// longest token, a PING): past that, each protocol refuses in its own way and closes that
/// connection, from the length it announced, before the bytes are held.
#[test]
fn a_stranger_may_send_only_a_few_kib_on_every_protocol() {
    let server = secured(|_| {});
    let addr = server.local_addr();
    let big = vec![b'x'; 20 * 1024];

    let mut text = Conn::text(addr);
    text.send_raw(b"PUB room.1 ");
    text.send_raw(&big);
    let reason = text.expect_error_and_close(401);
    assert!(reason.contains("before AUTH"), "{reason}");

    // A binary frame announcing 20 KiB is refused from its header.
    let mut binary = Conn::binary(addr);
    binary.send_raw(&(20 * 1024u32).to_be_bytes());
    let reason = binary.expect_error_and_close(401);
    assert!(reason.contains("the limit is"), "{reason}");

    // A WebSocket message: a policy close (1008), from the frame header too.
    let mut websocket = Conn::websocket(addr);
    websocket.send_ws(false, fanout::protocol::websocket::opcode::TEXT, &big[..4096]);
    websocket.send_ws(true, fanout::protocol::websocket::opcode::CONTINUATION, &big[..8192]);
    assert_eq!(websocket.read(PATIENCE), Read_::Closed);
    assert_eq!(websocket.close_code, Some(1008));

    // An HTTP body larger than the budget needs a token in its head; refused before it is read.
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    use std::io::Write as _;
    let head =
        "POST /publish?channel=room.1 HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n";
    stream.write_all(head.as_bytes()).unwrap();
    let response = common::read_response(&mut stream, &mut Vec::new());
    assert_eq!(response.status, 401, "{}", String::from_utf8_lossy(&response.body));
    // With a token the same body is read and published.
    let bearer = format!("Authorization: Bearer {}\r\n", token("bob", &[], &["room.*"], 600));
    let published = http_with(addr, "POST", "/publish?channel=room.1", &bearer, &big);
    assert_eq!(published.status, 200, "{}", String::from_utf8_lossy(&published.body));

    // The longest token, a PING and a big publish in one write: AUTH lifts the budget for what
    // follows it.
    let mut patterns: Vec<String> = vec!["room.*".into()];
    let long = loop {
        let exp = unix_now_secs() + 600;
        let long = sign(json!({ "sub": "bob", "exp": exp, "publish": patterns }));
        if long.len() > 8000 {
            break long;
        }
        patterns.push(format!("room.{}", patterns.len()));
    };
    assert!(long.len() <= fanout::auth::DEFAULT_MAX_TOKEN_BYTES);
    let mut pipelined = Conn::text(addr);
    let mut request = format!("AUTH {long}\nPING\nPUBA room.1 ").into_bytes();
    request.extend_from_slice(&big);
    request.push(b'\n');
    pipelined.send_raw(&request);
    assert!(matches!(pipelined.next(), Frame::Ok { ack: Ack::Auth, .. }));
    pipelined.expect(Frame::Pong);
    assert!(matches!(pipelined.next(), Frame::Ack { .. }));
    assert_eq!(server.stats().limited_stranger_input, 4);
    let metrics = String::from_utf8(http(addr, "GET", "/metrics", b"").body).unwrap();
    assert!(metrics.contains("fanout_limit_hits_total{kind=\"stranger_input\"} 4"), "{metrics}");
}

/// RFC 7519's NumericDate is a JSON number: PyJWT writes `time.time() + ttl`. A decimal `exp`
/// ends the connection like an integer one; an absurd one is refused, not overflowed.
#[test]
fn decimal_and_absurd_numeric_dates() {
    let server = secured(|config| config.auth.expiry_grace = Duration::from_millis(300));
    let addr = server.local_addr();
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let mut conn = Conn::text(addr);
    let short = sign(json!({ "sub": "alice", "exp": now + 1.5 }));
    assert_eq!(auth(&mut conn, &short), authed("alice"));
    // Closed at its exp, as with an integer one (the tester's decimal exp never expired).
    let reason = conn.expect_error_and_close(401);
    assert!(reason.contains("token expired"), "{reason}");

    let mut conn = Conn::text(addr);
    for (exp, words) in [
        (json!(u64::MAX), "NumericDate"),
        (json!(-5), "NumericDate"),
        (json!(1e300), "NumericDate"),
        (json!("soon"), "NumericDate"),
    ] {
        let refused = auth(&mut conn, &sign(json!({ "sub": "alice", "exp": exp })));
        expect_refused(refused, 401, words);
    }
    let future_nbf = sign(json!({ "sub": "alice", "exp": now + 600.0, "nbf": now + 300.5 }));
    expect_refused(auth(&mut conn, &future_nbf), 401, "not yet valid");
    assert!(conn.barrier().is_empty(), "still connected: a bad token changes nothing");
}

/// With `--auth-audience`/`--auth-issuer`, a token must carry them: a token minted for another
/// service that shares the key (no `aud`, no `iss`) is refused. `sub` is a client name: never
/// `*` nor a wildcard token. A wildcard never matches an empty token.
#[test]
fn audience_issuer_and_subject_are_required_to_be_right() {
    let server = secured(|config| {
        config.auth.audience = Some("fanout-tests".into());
        config.auth.issuer = Some("backend".into());
    });
    let mut conn = Conn::text(server.local_addr());
    let exp = unix_now_secs() + 600;
    let cases = [
        (json!({ "sub": "alice", "exp": exp }), "audience"),
        (json!({ "sub": "alice", "exp": exp, "iss": "backend" }), "audience"),
        (json!({ "sub": "alice", "exp": exp, "aud": "fanout-tests" }), "issuer"),
        (json!({ "sub": "alice", "exp": exp, "aud": ["x"], "iss": "backend" }), "audience"),
        (json!({ "sub": "*", "exp": exp, "aud": "fanout-tests", "iss": "backend" }), "sub"),
        (json!({ "sub": "a.>", "exp": exp, "aud": "fanout-tests", "iss": "backend" }), "sub"),
    ];
    for (claims, words) in cases {
        expect_refused(auth(&mut conn, &sign(claims)), 401, words);
    }
    let good = sign(json!({ "sub": "alice", "exp": exp, "aud": ["x", "fanout-tests"],
                            "iss": "backend", "subscribe": ["room.*"] }));
    assert_eq!(auth(&mut conn, &good), authed("alice"));
    conn.send(Request::Subscribe { channel: b"room.", resume: None });
    expect_refused(next_answer(&mut conn), 403, "not permitted");
    conn.subscribe("room.1");
}

/// `--private-metrics`: `/metrics` and `/healthz` only for the API key.
#[test]
fn private_metrics_need_the_api_key() {
    let server = secured(|config| config.private_metrics = true);
    let addr = server.local_addr();
    let bearer = format!("Authorization: Bearer {API_KEY}\r\n");
    for path in ["/metrics", "/healthz"] {
        assert_eq!(http(addr, "GET", path, b"").status, 401, "{path}");
        let member = format!("Authorization: Bearer {}\r\n", token("bob", &[">"], &[], 600));
        assert_eq!(http_with(addr, "GET", path, &member, b"").status, 401, "{path}");
        assert_eq!(http_with(addr, "GET", path, &bearer, b"").status, 200, "{path}");
    }
    assert_eq!(http(addr, "GET", "/", b"").status, 200, "the demo page stays public");
    let refused = Server::start(Config { private_metrics: true, ..Config::for_tests() });
    assert!(matches!(refused, Err(StartError::Config(why)) if why.contains("--api-key-file")));
}
