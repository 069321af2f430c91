//! Edge mode (`--upstream`): nodes that mirror, from an upstream fanout server, the channels
//! their clients use. What a client of an edge sees is what a client of the hub sees: the same
//! offsets, epochs, notices and names, through a tree of any depth, across the upstream's
//! crashes and restarts.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::resp_client::Redis;
use common::{
    claim, http, messages, position, publish_acked, start, wait_until, ChildServer, Conn,
    EventStream, Frame, Read_, TempDir, PATIENCE,
};
use fanout::cluster::ClusterConfig;
use fanout::protocol::resp::Value;
use fanout::protocol::{Ack, Request, Resume};
use fanout::{Config, ServerHandle};

/// An edge under `upstream` (tried in turn), adjusted by `adjust`.
fn edge_of(upstream: &[SocketAddr], adjust: impl FnOnce(&mut Config)) -> ServerHandle {
    start(|config: &mut Config| {
        let upstream = upstream.iter().map(|a| a.to_string()).collect();
        let mut cluster = ClusterConfig::upstream(upstream);
        cluster.command_timeout = Duration::from_secs(2);
        config.cluster = Some(cluster);
        adjust(config);
    })
}

fn edge(upstream: SocketAddr) -> ServerHandle {
    edge_of(&[upstream], |_| {})
}

/// A binary subscriber of `channel` on `addr`, resuming after `after` of `epoch`.
fn resume(addr: SocketAddr, channel: &str, after: u64, epoch: Option<u64>) -> Conn {
    let mut conn = Conn::binary(addr);
    conn.send(Request::Subscribe {
        channel: channel.as_bytes(),
        resume: Some(Resume { after, epoch, strict: false }),
    });
    conn
}

/// Messages as (offset, payload).
type Replay = Vec<(u64, Vec<u8>)>;

/// The HIST answering a resume, then the replay up to OK: ((epoch, status word), messages).
fn resumed(conn: &mut Conn, channel: &str) -> ((u64, String), Replay) {
    let hist = match conn.next() {
        Frame::Hist { epoch, status, .. } => (epoch, status.word().to_string()),
        other => panic!("expected HIST, got {other:?}"),
    };
    let mut replay = Vec::new();
    loop {
        match conn.next() {
            Frame::Msg { offset, payload, .. } => replay.push((offset, payload)),
            Frame::Ok { ack: Ack::Subscribe, arg } if arg == channel => return (hist, replay),
            other => panic!("expected the replay, got {other:?}"),
        }
    }
}

/// The next `count` messages, (offset, payload), past notices of holes in `epoch` (an epoch
/// notice fails).
fn messages_after_notices(conn: &mut Conn, count: usize, epoch: u64) -> Vec<(u64, Vec<u8>)> {
    let mut got = Vec::new();
    while got.len() < count {
        match conn.next() {
            Frame::Msg { offset, payload, .. } => got.push((offset, payload)),
            Frame::Hist { epoch: e, status, .. } if e == epoch && status.word() == "expired" => {}
            other => panic!("expected messages, got {other:?}"),
        }
    }
    got
}

fn payloads(range: std::ops::RangeInclusive<u64>) -> Vec<(u64, Vec<u8>)> {
    range.map(|i| (i, format!("m{i}").into_bytes())).collect()
}

#[test]
fn hub_edge_edge_every_protocol_at_the_bottom_sees_the_hubs_offsets() {
    let hub = start(|_| {});
    let middle = edge(hub.local_addr());
    let bottom = edge(middle.local_addr());
    let addr = bottom.local_addr();
    let mut on_hub = Conn::binary(hub.local_addr());
    on_hub.subscribe("scores");
    let mut binary = Conn::binary(addr);
    let mut text = Conn::text(addr);
    let mut websocket = Conn::websocket(addr);
    for conn in [&mut binary, &mut text, &mut websocket] {
        conn.subscribe("scores");
    }
    let mut events = EventStream::open(addr, "/sse?channel=scores", "");
    assert!(events.head.starts_with("HTTP/1.1 200"), "{}", events.head);
    let mut redis = Redis::connect(addr);
    assert_eq!(
        redis.call(&["SUBSCRIBE", "scores"]),
        Value::Array(Some(vec![
            Value::Bulk(Some(b"subscribe".to_vec())),
            Value::Bulk(Some(b"scores".to_vec())),
            Value::Integer(1)
        ]))
    );
    // Published on the hub and, acknowledged once, up through both edges.
    let mut on_hub_publisher = Conn::binary(hub.local_addr());
    let mut at_bottom = Conn::text(addr);
    for i in 1..=6u64 {
        let payload = format!("m{i}");
        let publisher = if i % 2 == 0 { &mut at_bottom } else { &mut on_hub_publisher };
        assert_eq!(publish_acked(publisher, "scores", payload.as_bytes()), Ok(i));
    }
    let expected: Vec<(String, u64, Vec<u8>)> =
        payloads(1..=6).into_iter().map(|(o, p)| ("scores".to_string(), o, p)).collect();
    assert_eq!(messages(&mut on_hub, 6), expected);
    for conn in [&mut binary, &mut text, &mut websocket] {
        assert_eq!(messages(conn, 6), expected);
    }
    // An event stream's ids are `offset@epoch`: the hub's.
    let (hub_epoch, _) = position(&mut Conn::binary(hub.local_addr()), "scores");
    for i in 1..=6u64 {
        let event = events.next_message();
        assert_eq!(event.data, format!("m{i}"));
        assert_eq!(event.id, Some(format!("{i}@{hub_epoch:016x}")));
    }
    for i in 1..=6u64 {
        let message = redis.next().expect("a message");
        assert_eq!(
            message,
            Value::Array(Some(vec![
                Value::Bulk(Some(b"message".to_vec())),
                Value::Bulk(Some(b"scores".to_vec())),
                Value::Bulk(Some(format!("m{i}").into_bytes())),
            ]))
        );
    }
    // Each published once: nothing more arrives anywhere.
    for conn in [&mut on_hub, &mut binary, &mut text, &mut websocket] {
        assert!(common::messages_of(conn.barrier()).is_empty());
    }
    // The epoch is the hub's at every level.
    let hub_position = position(&mut Conn::binary(hub.local_addr()), "scores");
    assert_eq!(position(&mut Conn::binary(middle.local_addr()), "scores"), hub_position);
    assert_eq!(position(&mut Conn::binary(addr), "scores"), hub_position);
}

#[test]
fn a_client_resumes_on_another_edge_with_nothing_lost_and_nothing_twice() {
    let hub = start(|_| {});
    // Edge B keeps two messages in memory: an older resume is read from the hub.
    let a = edge(hub.local_addr());
    let b = edge_of(&[hub.local_addr()], |config| config.history_messages = 2);
    let mut publisher = Conn::binary(hub.local_addr());
    let mut client = Conn::binary(a.local_addr());
    client.subscribe("feed");
    for i in 1..=4 {
        publish_acked(&mut publisher, "feed", format!("m{i}").as_bytes()).unwrap();
    }
    assert_eq!(messages(&mut client, 4).len(), 4);
    let (epoch, _) = position(&mut Conn::binary(a.local_addr()), "feed");
    drop(client);
    for i in 5..=12 {
        publish_acked(&mut publisher, "feed", format!("m{i}").as_bytes()).unwrap();
    }
    // On B (which never served the channel): 5..12, though B's memory holds two.
    let mut moved = resume(b.local_addr(), "feed", 4, Some(epoch));
    let ((got_epoch, status), replay) = resumed(&mut moved, "feed");
    assert_eq!((got_epoch, status.as_str()), (epoch, "ok"));
    assert_eq!(replay, payloads(5..=12));
    publish_acked(&mut publisher, "feed", b"m13").unwrap();
    assert_eq!(messages(&mut moved, 1), vec![("feed".into(), 13, b"m13".to_vec())]);
    // And again on A, from what it saw on B.
    let mut back = resume(a.local_addr(), "feed", 13, Some(epoch));
    let ((_, status), replay) = resumed(&mut back, "feed");
    assert_eq!((status.as_str(), replay.len()), ("ok", 0));
    // A resume from an epoch the hub never had is told so, as on the hub.
    let mut stranger = resume(b.local_addr(), "feed", 3, Some(12345));
    let ((got_epoch, status), replay) = resumed(&mut stranger, "feed");
    assert_eq!((got_epoch, status.as_str()), (epoch, "epoch"));
    assert_eq!(replay.first().map(|m| m.0), Some(12), "B's memory");
}

#[test]
fn names_are_the_hubs_and_unique_through_the_tree() {
    let hub = start(|_| {});
    let middle = edge(hub.local_addr());
    let bottom = edge(middle.local_addr());
    let mut alice = Conn::binary(bottom.local_addr());
    claim(&mut alice, "alice").unwrap();
    // Taken at the hub and on the other edge.
    assert_eq!(claim(&mut Conn::binary(hub.local_addr()), "alice").map_err(|e| e.0), Err(409));
    assert_eq!(claim(&mut Conn::binary(middle.local_addr()), "alice").map_err(|e| e.0), Err(409));
    // Messages to @alice from anywhere reach her, with the inbox's offsets.
    let mut from_hub = Conn::binary(hub.local_addr());
    publish_acked(&mut from_hub, "@alice", b"hi from the hub").unwrap();
    let mut from_middle = Conn::text(middle.local_addr());
    publish_acked(&mut from_middle, "@alice", b"hi from the middle").unwrap();
    let got = messages(&mut alice, 2);
    assert_eq!(got[0].2, b"hi from the hub");
    assert_eq!(got[1].2, b"hi from the middle");
    assert_eq!(got[1].1, got[0].1 + 1);
    // Nobody by that name: refused as on the hub.
    let refused = publish_acked(&mut from_middle, "@nobody", b"x").map_err(|e| e.0);
    assert_eq!(refused, Err(404));
    // Let go when she leaves: the hub frees it.
    drop(alice);
    let mut bob = Conn::binary(hub.local_addr());
    wait_until("the name comes free", || claim(&mut bob, "alice").is_ok());
}

#[test]
fn access_control_is_checked_at_the_edge_with_the_same_keys() {
    const SECRET: &[u8] = b"a test secret that is long enough";
    const API_KEY: &str = "the hub's api key";
    let secured = |config: &mut Config| {
        config.auth.hmac_secret = Some(SECRET.to_vec());
        config.auth.api_key = Some(API_KEY.as_bytes().to_vec());
        config.limits.auth_failures = Some(0);
    };
    let hub = start(secured);
    let edge = edge_of(&[hub.local_addr()], |config| {
        secured(config);
        if let Some(cluster) = config.cluster.as_mut() {
            cluster.upstream_token = Some(API_KEY.into());
        }
    });
    let token = |subscribe: &[&str], publish: &[&str]| {
        let strings = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        fanout::auth::mint_hs256(
            SECRET,
            Some("carol"),
            &strings(subscribe),
            &strings(publish),
            exp.as_secs() + 600,
        )
        .unwrap()
    };
    let mut stranger = Conn::binary(edge.local_addr());
    stranger.send(Request::Subscribe { channel: b"vault", resume: None });
    assert!(matches!(stranger.next(), Frame::Err { code: 401 | 403, .. }));
    let mut reader = Conn::binary(edge.local_addr());
    reader.send(Request::Auth { token: token(&["vault"], &[]).as_bytes() });
    assert!(matches!(reader.next(), Frame::Ok { ack: Ack::Auth, .. }));
    reader.subscribe("vault");
    // Subscribing is not publishing.
    let refused = publish_acked(&mut reader, "vault", b"forged").map_err(|e| e.0);
    assert_eq!(refused, Err(403));
    let mut writer = Conn::binary(edge.local_addr());
    writer.send(Request::Auth { token: token(&[], &["vault"]).as_bytes() });
    assert!(matches!(writer.next(), Frame::Ok { ack: Ack::Auth, .. }));
    assert_eq!(publish_acked(&mut writer, "vault", b"sealed"), Ok(1));
    assert_eq!(messages(&mut reader, 1), vec![("vault".into(), 1, b"sealed".to_vec())]);
}

#[test]
fn an_edge_with_a_refused_token_publishes_nothing_and_says_why() {
    let hub = start(|config: &mut Config| {
        config.auth.api_key = Some(b"the real key".to_vec());
        config.limits.auth_failures = Some(0);
    });
    let edge = edge_of(&[hub.local_addr()], |config| {
        if let Some(cluster) = config.cluster.as_mut() {
            cluster.upstream_token = Some("a wrong key".into());
        }
    });
    let mut client = Conn::binary(edge.local_addr());
    let refused = publish_acked(&mut client, "room", b"x").map_err(|e| e.0);
    assert_eq!(refused, Err(503));
}

#[test]
fn an_edge_lets_go_of_a_channel_upstream_after_its_last_client() {
    let hub = start(|_| {});
    let edge = edge(hub.local_addr());
    let subscribers_on_hub = || {
        let body = http(hub.local_addr(), "GET", "/api/channels?pattern=passing", b"").json();
        let listed = body["channels"].as_array().cloned().unwrap_or_default();
        listed.iter().map(|c| c["subscribers"].as_u64().unwrap_or(0)).sum::<u64>()
    };
    let mut client = Conn::binary(edge.local_addr());
    client.subscribe("passing");
    assert_eq!(subscribers_on_hub(), 1, "the edge subscribed upstream");
    let mut second = Conn::text(edge.local_addr());
    second.subscribe("passing");
    assert_eq!(subscribers_on_hub(), 1, "one subscription upstream per edge");
    drop(client);
    drop(second);
    wait_until("the edge unsubscribes upstream", || subscribers_on_hub() == 0);
}

#[test]
fn publishes_are_refused_while_no_upstream_is_reachable_and_the_next_one_is_tried() {
    // Nothing listens on the first: the edge goes on to the second.
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let hub = start(|_| {});
    let edge = edge_of(&[unused, hub.local_addr()], |_| {});
    let mut client = Conn::binary(edge.local_addr());
    wait_until("the edge reaches the second upstream", || {
        publish_acked(&mut client, "room", b"x").is_ok()
    });
    let hub_addr = hub.local_addr();
    hub.shutdown();
    wait_until("publishes are refused while down", || {
        publish_acked(&mut client, "room", b"y").map_err(|e| e.0) == Err(503)
    });
    // Subscribers stay connected meanwhile.
    let mut subscriber = Conn::binary(edge.local_addr());
    subscriber.send(Request::Ping);
    assert_eq!(subscriber.next(), Frame::Pong);
    // Back on the same address: publishes go through again.
    let _hub = start(|config: &mut Config| config.listen = hub_addr);
    wait_until("the edge reconnects", || publish_acked(&mut client, "room", b"z").is_ok());
}

/// The hub in its own process (so it can be SIGKILLed), with extra flags.
fn hub_process(args: &[&str]) -> ChildServer {
    ChildServer::start(args)
}

/// Acked publishes to `channel` on `addr` until `n` went through (503s while the edge
/// reconnects are retried); returns their offsets.
fn publish_when_up(addr: SocketAddr, channel: &str, payloads: &[String]) -> Vec<u64> {
    let mut conn = Conn::binary(addr);
    payloads
        .iter()
        .map(|payload| {
            let mut offset = None;
            wait_until("a publish goes through", || {
                match publish_acked(&mut conn, channel, payload.as_bytes()) {
                    Ok(o) => offset = Some(o),
                    Err((503, _)) => std::thread::sleep(Duration::from_millis(20)),
                    Err(e) => panic!("publish refused: {e:?}"),
                }
                offset.is_some()
            });
            offset.unwrap_or_default()
        })
        .collect()
}

#[test]
fn a_killed_upstream_with_a_data_dir_comes_back_and_nothing_is_lost_or_repeated() {
    let dir = TempDir::new("edge-upstream-data");
    let args = ["--data-dir", dir.path(), "--fsync", "always"];
    let hub = hub_process(&args);
    let hub_addr = hub.addr;
    let edge = edge(hub_addr);
    let mut subscriber = Conn::binary(edge.local_addr());
    subscriber.subscribe("orders");
    let first: Vec<String> = (1..=5).map(|i| format!("m{i}")).collect();
    assert_eq!(publish_when_up(edge.local_addr(), "orders", &first), vec![1, 2, 3, 4, 5]);
    assert_eq!(messages(&mut subscriber, 5).len(), 5);
    let (epoch, _) = position(&mut Conn::binary(edge.local_addr()), "orders");
    hub.kill();
    let port = hub_addr.port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let _hub = ChildServer::start_at(&listen, &args);
    let second: Vec<String> = (6..=9).map(|i| format!("m{i}")).collect();
    let offsets = publish_when_up(edge.local_addr(), "orders", &second);
    // After an unclean stop the hub skips ahead (offsets it may have given out unrecorded are
    // never given again); the edge's offsets are the hub's.
    assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1) && offsets[0] > 5, "{offsets:?}");
    // The same subscriber, still connected: the four after the first five, nothing twice,
    // in the same epoch. The skipped offsets may be announced as a hole first (the hub
    // announces them to a client that resumes on it after the four, as below).
    let expected: Vec<(u64, Vec<u8>)> =
        offsets.iter().zip(&second).map(|(&o, p)| (o, p.clone().into_bytes())).collect();
    assert_eq!(messages_after_notices(&mut subscriber, 4, epoch), expected);
    let mut on_hub = resume(hub_addr, "orders", 5, Some(epoch));
    assert!(matches!(on_hub.next(), Frame::Hist { epoch: e, .. } if e == epoch));
    assert_eq!(messages_after_notices(&mut on_hub, 4, epoch), expected);
    assert_eq!(position(&mut Conn::binary(edge.local_addr()), "orders"), (epoch, offsets[3]));
}

#[test]
fn a_killed_upstream_that_comes_back_empty_starts_a_new_epoch_subscribers_are_told() {
    let hub = hub_process(&[]);
    let hub_addr = hub.addr;
    let edge = edge(hub_addr);
    let mut subscriber = Conn::binary(edge.local_addr());
    subscriber.subscribe("orders");
    let first: Vec<String> = (1..=3).map(|i| format!("m{i}")).collect();
    publish_when_up(edge.local_addr(), "orders", &first);
    assert_eq!(messages(&mut subscriber, 3).len(), 3);
    let (old_epoch, _) = position(&mut Conn::binary(edge.local_addr()), "orders");
    hub.kill();
    let _hub = ChildServer::start_at(&format!("127.0.0.1:{}", hub_addr.port()), &[]);
    let again = publish_when_up(edge.local_addr(), "orders", &["fresh".to_string()]);
    // The subscriber is told the log started over, then gets the new log's message.
    let mut saw_notice = false;
    loop {
        match subscriber.read(PATIENCE) {
            Read_::Frame(Frame::Hist { epoch, status, .. }) => {
                assert_eq!(status.word(), "epoch");
                assert_ne!(epoch, old_epoch);
                saw_notice = true;
            }
            Read_::Frame(Frame::Msg { offset, payload, .. }) => {
                assert!(saw_notice, "a new epoch's message before its notice");
                assert_eq!((offset, payload), (again[0], b"fresh".to_vec()));
                break;
            }
            other => panic!("expected the notice and the message, got {other:?}"),
        }
    }
}

#[test]
fn hostile_bytes_from_an_upstream_drop_only_that_connection() {
    use std::io::{Read, Write};
    // A fake upstream that answers the preface with garbage, every time.
    let fake = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let fake_addr = fake.local_addr().unwrap();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = served.clone();
    std::thread::spawn(move || {
        for stream in fake.incoming().take(30) {
            let Ok(mut stream) = stream else { continue };
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut preface = [0u8; 8];
            let _ = stream.read_exact(&mut preface);
            // A length far past any frame limit, then bytes that are no frame at all.
            let _ = stream.write_all(&[0xff, 0xff, 0xff, 0xf0, 0x81, 1, 2, 3]);
        }
    });
    let edge = edge(fake_addr);
    wait_until("the edge tried the fake upstream and again", || {
        served.load(std::sync::atomic::Ordering::Relaxed) >= 4
    });
    // The edge itself is fine: its clients are answered, publishes refused with a reason.
    let mut client = Conn::binary(edge.local_addr());
    let refused = publish_acked(&mut client, "room", b"x");
    assert!(matches!(refused, Err((503, _))), "{refused:?}");
    client.send(Request::Ping);
    assert_eq!(client.next(), Frame::Pong);
}

#[test]
fn patterns_and_broadcasts_reach_the_bottom_of_the_tree() {
    let hub = start(|_| {});
    let middle = edge(hub.local_addr());
    let bottom = edge(middle.local_addr());
    let mut watcher = Conn::binary(bottom.local_addr());
    watcher.send(Request::PatternSubscribe { pattern: b"rooms.*" });
    watcher.expect(Frame::Ok { ack: Ack::PatternSubscribe, arg: "rooms.*".into() });
    let mut publisher = Conn::binary(hub.local_addr());
    assert_eq!(publish_acked(&mut publisher, "rooms.1", b"a"), Ok(1));
    assert_eq!(publish_acked(&mut publisher, "lobby", b"not matched"), Ok(1));
    assert_eq!(publish_acked(&mut publisher, "rooms.2", b"b"), Ok(1));
    assert_eq!(publish_acked(&mut publisher, "rooms.1", b"c"), Ok(2));
    // In order within each channel (a turn's messages are fanned out channel by channel).
    let mut got = messages(&mut watcher, 3);
    let offsets_of = |c: &str| got.iter().filter(|m| m.0 == c).map(|m| m.1).collect::<Vec<_>>();
    assert_eq!((offsets_of("rooms.1"), offsets_of("rooms.2")), (vec![1, 2], vec![1]));
    got.sort();
    let expected = [("rooms.1", 1, "a"), ("rooms.1", 2, "c"), ("rooms.2", 1, "b")]
        .map(|(c, o, p)| (c.to_string(), o, p.as_bytes().to_vec()));
    assert_eq!(got, expected);
    // A broadcast from the hub reaches every connection of every edge, once.
    let mut plain = Conn::text(bottom.local_addr());
    plain.send(Request::Ping);
    assert_eq!(plain.next(), Frame::Pong);
    // (The edges are connected: the pattern answered.)
    let offset = publish_acked(&mut publisher, "*", b"to all").expect("broadcast");
    for conn in [&mut watcher, &mut plain] {
        assert_eq!(messages(conn, 1), vec![("*".into(), offset, b"to all".to_vec())]);
    }
    // A broadcast from the bottom goes up, and reaches the hub's connections.
    let mut on_hub = Conn::binary(hub.local_addr());
    on_hub.send(Request::Ping);
    assert_eq!(on_hub.next(), Frame::Pong);
    let offset = publish_acked(&mut plain, "*", b"from below").expect("broadcast");
    assert_eq!(messages(&mut on_hub, 1), vec![("*".into(), offset, b"from below".to_vec())]);
}

#[test]
fn an_upstream_sending_offsets_out_of_range_is_dropped_and_nothing_of_it_delivered() {
    use fanout::protocol::{binary, Ack as A, HistoryStatus, ResumeStatus};
    use std::io::{Read, Write};
    // A fake upstream that serves channel `x` and then sends offsets no fanout server gives:
    // u64::MAX - 1 (a notice value inside the ring), then 0.
    let fake = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let fake_addr = fake.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in fake.incoming().take(60) {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut input = [0u8; 4096];
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                while let Ok(n) = stream.read(&mut input) {
                    if n == 0 {
                        return;
                    }
                    // Whatever was asked, the same answer: `x` served, then bad offsets.
                    let hist = HistoryStatus {
                        channel: b"x",
                        epoch: 7,
                        first: 1,
                        last: 0,
                        status: ResumeStatus::Ok,
                    };
                    let mut out = binary::encode_history(&hist).to_vec();
                    out.extend_from_slice(&binary::encode_ok(A::Subscribe, b"x"));
                    out.extend_from_slice(&binary::encode_message(b"x", u64::MAX - 1, b"bad"));
                    out.extend_from_slice(&binary::encode_message(b"x", 0, b"bad"));
                    if stream.write_all(&out).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let edge = edge(fake_addr);
    let mut client = Conn::binary(edge.local_addr());
    client.send(Request::Subscribe { channel: b"x", resume: None });
    // Whether or not the SUB is answered before the fake is dropped, no bad message arrives
    // and the edge goes on answering.
    let deadline = std::time::Instant::now() + Duration::from_millis(500);
    while std::time::Instant::now() < deadline {
        match client.read(Duration::from_millis(50)) {
            Read_::Frame(Frame::Msg { offset, .. }) => panic!("delivered offset {offset}"),
            Read_::Frame(_) | Read_::Nothing => {}
            other => panic!("the edge closed the client: {other:?}"),
        }
    }
    let mut other = Conn::binary(edge.local_addr());
    other.send(Request::Ping);
    assert_eq!(other.next(), Frame::Pong);
}
