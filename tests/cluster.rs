//! Several nodes joined through a real redis-server (each test starts its own on a free loopback
//! port): delivery across nodes with the same offsets everywhere, resume on another node, repair
//! of messages lost on the way, Redis outages, and channels spread over two Redis servers.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::thread;
use std::time::Duration;

use common::redis::RedisServer;
use common::{
    claim, http, messages, position, publish_acked, start, wait_until, Conn, EventStream, Frame,
    Read_, PATIENCE,
};
use fanout::cluster::ClusterConfig;
use fanout::protocol::resp::Value;
use fanout::protocol::{Ack, Request, Resume};
use fanout::ServerHandle;

/// A node joined through `redis`, once it is connected to all of them.
fn node(redis: &[&RedisServer], adjust: impl FnOnce(&mut fanout::Config)) -> ServerHandle {
    let server = node_at(redis.iter().map(|r| r.endpoint()).collect(), adjust);
    assert_eq!(server.stats().cluster_redis_up, redis.len() as u64);
    server
}

/// A node whose Redis is reached through `relay` (which a test pauses), once it is up.
fn node_through(
    relay: &common::proxy::Relay,
    adjust: impl FnOnce(&mut fanout::Config),
) -> ServerHandle {
    let endpoint = format!("redis://127.0.0.1:{}", relay.port).parse().expect("a URL");
    node_at(vec![endpoint], adjust)
}

/// A node joined through `endpoints` (quick timeouts), once it serves broadcasts.
fn node_at(
    endpoints: Vec<fanout::cluster::RedisEndpoint>,
    adjust: impl FnOnce(&mut fanout::Config),
) -> ServerHandle {
    let server = start(|c| {
        let mut cluster = ClusterConfig::new(endpoints);
        cluster.command_timeout = Duration::from_millis(1000);
        cluster.probe_interval = Duration::from_millis(200);
        c.cluster = Some(cluster);
        adjust(c);
    });
    wait_until("the node is connected to Redis and serves broadcasts", || {
        http(server.local_addr(), "GET", "/healthz", b"").status == 200
    });
    server
}

/// A node joined through the Redis Cluster that `seed` is in, once it serves broadcasts.
fn node_in_redis_cluster(
    seed: &RedisServer,
    adjust: impl FnOnce(&mut fanout::Config),
) -> ServerHandle {
    node_at(vec![seed.endpoint()], |c| {
        if let Some(cluster) = c.cluster.as_mut() {
            cluster.redis_cluster = true;
        }
        adjust(c);
    })
}

fn epoch_in_redis(redis: &RedisServer, channel: &str) -> u64 {
    match redis.command(&["HGET", &format!("fanout:{{{channel}}}:meta"), "e"]) {
        Value::Bulk(Some(e)) => u64::from_be_bytes(e.try_into().expect("8 bytes")),
        other => panic!("no epoch: {other:?}"),
    }
}

#[test]
fn three_nodes_deliver_every_message_once_in_order_with_the_same_offsets() {
    const PER_PUBLISHER: usize = 40;
    let redis = RedisServer::start();
    let nodes: Vec<ServerHandle> = (0..3).map(|_| node(&[&redis], |_| {})).collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.local_addr()).collect();
    let channels = ["room.a", "room.b"];

    let mut subscribers = Vec::new();
    for &addr in &addrs {
        for mut conn in [Conn::text(addr), Conn::binary(addr), Conn::websocket(addr)] {
            for channel in channels {
                conn.subscribe(channel);
            }
            subscribers.push(conn);
        }
    }
    // The channels are served on every node now, so an event stream subscribes at once.
    let mut streams: Vec<EventStream> = addrs
        .iter()
        .map(|&addr| EventStream::open(addr, "/sse?channel=room.a&channel=room.b", ""))
        .collect();
    for node in &nodes {
        wait_until("the event stream is open", || node.stats().connections_sse == 1);
    }

    // One publisher per node, all at once, both channels: offsets come from Redis.
    let acks: Vec<Vec<(String, u64, Vec<u8>)>> = thread::scope(|scope| {
        let publishers: Vec<_> = addrs
            .iter()
            .enumerate()
            .map(|(n, &addr)| {
                scope.spawn(move || {
                    let mut conn = Conn::binary(addr);
                    let mut acked = Vec::new();
                    for k in 0..PER_PUBLISHER {
                        for channel in channels {
                            let payload = format!("{channel}/node{n}/{k}").into_bytes();
                            let offset = publish_acked(&mut conn, channel, &payload)
                                .unwrap_or_else(|e| panic!("publish refused: {e:?}"));
                            acked.push((channel.to_string(), offset, payload));
                        }
                    }
                    acked
                })
            })
            .collect();
        publishers.into_iter().map(|p| p.join().expect("publisher")).collect()
    });
    // What Redis acknowledged: per channel, offsets 1..=120, each with one payload.
    let total = 3 * PER_PUBLISHER;
    let mut expected: BTreeMap<(String, u64), Vec<u8>> = BTreeMap::new();
    for (channel, offset, payload) in acks.into_iter().flatten() {
        assert!(expected.insert((channel, offset), payload).is_none(), "an offset given twice");
    }
    for channel in channels {
        let offsets: Vec<u64> =
            expected.keys().filter(|(c, _)| c == channel).map(|(_, o)| *o).collect();
        assert_eq!(offsets, (1..=total as u64).collect::<Vec<_>>(), "{channel}: offsets");
    }

    // Every subscriber on every node: each message once, in offset order, with the offset and
    // payload Redis acknowledged.
    for (i, subscriber) in subscribers.iter_mut().enumerate() {
        let got = messages(subscriber, 2 * total);
        for channel in channels {
            let mine: Vec<(u64, Vec<u8>)> = got
                .iter()
                .filter(|(c, ..)| c == channel)
                .map(|(_, o, p)| (*o, p.clone()))
                .collect();
            let want: Vec<(u64, Vec<u8>)> = expected
                .iter()
                .filter(|((c, _), _)| c == channel)
                .map(|((_, o), p)| (*o, p.clone()))
                .collect();
            assert_eq!(mine, want, "subscriber {i}, {channel}");
        }
        assert_eq!(subscriber.read(Duration::from_millis(100)), Read_::Nothing, "nothing twice");
    }
    for (n, stream) in streams.iter_mut().enumerate() {
        let mut next_offset = [1u64, 1u64];
        for _ in 0..2 * total {
            let event = stream.next_message();
            let channel = event.event.clone().expect("the channel names the event");
            let c = channels.iter().position(|&x| x == channel).expect("one of ours");
            let id = event.id.expect("an id");
            let offset: u64 = id.split('@').next().and_then(|o| o.parse().ok()).expect("offset");
            assert_eq!(offset, next_offset[c], "stream on node {n}, {channel}");
            next_offset[c] += 1;
            assert_eq!(event.data.as_bytes(), &expected[&(channel, offset)][..]);
        }
    }
    let epoch = epoch_in_redis(&redis, "room.a");
    for &addr in &addrs {
        let (seen, last) = position(&mut Conn::text(addr), "room.a");
        assert_eq!((seen, last), (epoch, total as u64), "every node has Redis's epoch and offset");
    }
}

#[test]
fn a_client_resumes_on_another_node_with_nothing_lost_and_nothing_twice() {
    let redis = RedisServer::start();
    let nodes: Vec<ServerHandle> = (0..3).map(|_| node(&[&redis], |_| {})).collect();
    let (a, b, c) = (nodes[0].local_addr(), nodes[1].local_addr(), nodes[2].local_addr());
    let mut publisher = Conn::binary(c);

    // Read to offset 5 on node A, then leave.
    let mut reader = Conn::text(a);
    reader.subscribe("feed");
    for k in 1..=8 {
        publish_acked(&mut publisher, "feed", format!("m{k}").as_bytes()).expect("published");
    }
    let seen = messages(&mut reader, 5);
    assert_eq!(seen.last().map(|m| m.1), Some(5));
    let (epoch, _) = position(&mut Conn::text(a), "feed");
    drop(reader);
    for k in 9..=12 {
        publish_acked(&mut publisher, "feed", format!("m{k}").as_bytes()).expect("published");
    }

    // Node B has never served `feed`: it subscribes in Redis, reads the stream, then resumes.
    let mut again = Conn::binary(b);
    again.send(Request::Subscribe {
        channel: b"feed",
        resume: Some(Resume { after: 5, epoch: Some(epoch), strict: true }),
    });
    match again.next() {
        Frame::Hist { epoch: e, first, last, status, .. } => {
            assert_eq!((e, first, last, status), (epoch, 1, 12, fanout::history::ResumeStatus::Ok))
        }
        other => panic!("expected HIST, got {other:?}"),
    }
    let replayed = messages(&mut again, 7);
    let expected: Vec<(String, u64, Vec<u8>)> =
        (6..=12).map(|k| ("feed".to_string(), k, format!("m{k}").into_bytes())).collect();
    assert_eq!(replayed, expected);
    again.expect(Frame::Ok { ack: Ack::Subscribe, arg: "feed".into() });
    publish_acked(&mut publisher, "feed", b"m13").expect("published");
    assert_eq!(messages(&mut again, 1), vec![("feed".into(), 13, b"m13".to_vec())]);
    assert_eq!(again.read(Duration::from_millis(100)), Read_::Nothing, "nothing twice");

    // An event stream that read to 10 on node A reconnects to node C with Last-Event-ID.
    let mut stream =
        EventStream::open(c, "/sse?channel=feed", &format!("Last-Event-ID: 10@{epoch:016x}\r\n"));
    for k in 11..=13 {
        let event = stream.next_message();
        assert_eq!(event.data, format!("m{k}"));
        assert_eq!(event.id, Some(format!("{k}@{epoch:016x}")));
    }
    // A long-poll on node B from 11.
    let polled =
        http(b, "GET", &format!("/poll?channel=feed&from=11&epoch={epoch:016x}"), b"").json();
    let offsets: Vec<u64> = polled["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["offset"].as_u64().expect("offset"))
        .collect();
    assert_eq!((offsets, polled["status"].as_str()), (vec![12, 13], Some("ok")));
}

#[test]
fn a_message_lost_on_the_way_is_repaired_from_the_stream() {
    let redis = RedisServer::start();
    let (a, b) = (node(&[&redis], |_| {}), node(&[&redis], |_| {}));
    let mut subscriber = Conn::text(b.local_addr());
    subscriber.subscribe("orders");
    let mut publisher = Conn::binary(a.local_addr());
    publish_acked(&mut publisher, "orders", b"one").expect("published");
    assert_eq!(messages(&mut subscriber, 1)[0].1, 1);
    // Offset 2 goes into the stream but its pub/sub copy never comes (as when a pub/sub
    // connection drops for a moment).
    assert_eq!(redis.integer(&["HINCRBY", "fanout:{orders}:meta", "o", "1"]), 2);
    redis.command(&["XADD", "fanout:{orders}:log", "0-2", "p", "two", "t", "0"]);
    // Offset 3 arrives: node B sees the jump, reads 2 from the stream, then delivers 3.
    publish_acked(&mut publisher, "orders", b"three").expect("published");
    let got: Vec<(u64, Vec<u8>)> =
        messages(&mut subscriber, 2).into_iter().map(|(_, o, p)| (o, p)).collect();
    assert_eq!(got, vec![(2, b"two".to_vec()), (3, b"three".to_vec())]);
    assert_eq!(b.stats().cluster_gaps_repaired, 1);
    assert_eq!(b.stats().cluster_offsets_lost, 0);

    // A jump the stream cannot fill (trimmed away) is counted, the subscriber is told (as a
    // resume across it would tell it), and delivery goes on.
    assert_eq!(redis.integer(&["HINCRBY", "fanout:{orders}:meta", "o", "1"]), 4);
    publish_acked(&mut publisher, "orders", b"five").expect("published");
    match subscriber.next() {
        Frame::Hist { first, status, .. } => {
            assert_eq!((first, status), (5, fanout::history::ResumeStatus::Expired))
        }
        other => panic!("expected the notice of the hole, got {other:?}"),
    }
    assert_eq!(messages(&mut subscriber, 1), vec![("orders".into(), 5, b"five".to_vec())]);
    assert_eq!(b.stats().cluster_offsets_lost, 1);
}

#[test]
fn while_redis_is_down_publishes_are_refused_and_nothing_acknowledged_is_lost() {
    // With every write fsync'ed, a killed Redis comes back with all it acknowledged.
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let (a, b) = (node(&[&redis], |_| {}), node(&[&redis], |_| {}));
    let mut subscriber = Conn::websocket(b.local_addr());
    subscriber.subscribe("ticks");
    let mut publisher = Conn::text(a.local_addr());
    let mut acknowledged = Vec::new();
    for k in 1..=5 {
        let payload = format!("before{k}");
        acknowledged.push((
            publish_acked(&mut publisher, "ticks", payload.as_bytes()).expect("up"),
            payload,
        ));
    }

    redis.kill();
    wait_until("node A sees Redis gone", || a.stats().cluster_redis_up == 0);
    let refused = publish_acked(&mut publisher, "ticks", b"during");
    let (code, reason) = refused.expect_err("no Redis, no publish");
    assert_eq!(code, 503);
    assert!(reason.contains("broker unavailable"), "{reason}");
    let health = http(a.local_addr(), "GET", "/healthz", b"");
    assert_eq!(health.status, 503, "{}", String::from_utf8_lossy(&health.body));
    let refusals = a.stats().cluster_publishes_refused;
    assert!(refusals >= 1);

    redis.restart();
    wait_until("node A reconnects", || a.stats().cluster_redis_up == 1);
    wait_until("node B reconnects", || b.stats().cluster_redis_up == 1);
    assert_eq!(http(a.local_addr(), "GET", "/healthz", b"").status, 200);
    for k in 1..=5 {
        let payload = format!("after{k}");
        acknowledged.push((
            publish_acked(&mut publisher, "ticks", payload.as_bytes()).expect("up again"),
            payload,
        ));
    }
    // The subscriber stayed connected and has every acknowledged message once, in order.
    let got: Vec<(u64, String)> = messages(&mut subscriber, acknowledged.len())
        .into_iter()
        .map(|(_, o, p)| (o, String::from_utf8(p).expect("text")))
        .collect();
    assert_eq!(got, acknowledged);
    let offsets: Vec<u64> = got.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (1..=10).collect::<Vec<_>>(), "no hole, and the epoch survived");
    assert!(b.stats().cluster_reconnects >= 1);
}

#[test]
fn a_frozen_redis_is_noticed_publishes_in_flight_are_refused_and_it_recovers() {
    let redis = RedisServer::start();
    let (a, b) = (node(&[&redis], |_| {}), node(&[&redis], |_| {}));
    let mut subscriber = Conn::binary(b.local_addr());
    subscriber.subscribe("t");
    let mut publisher = Conn::binary(a.local_addr());
    assert_eq!(publish_acked(&mut publisher, "t", b"1"), Ok(1));
    assert_eq!(messages(&mut subscriber, 1)[0].1, 1);

    redis.freeze();
    // Sent while Redis answers nothing: refused once the command times out, never acknowledged.
    let (code, reason) = publish_acked(&mut publisher, "t", b"lost?").expect_err("no answer");
    assert_eq!(code, 503, "{reason}");
    assert!(a.stats().cluster_timeouts + a.stats().cluster_probe_failures >= 1);
    wait_until("node B's probe notices too", || {
        b.stats().cluster_probe_failures + b.stats().cluster_timeouts >= 1
    });
    redis.thaw();
    wait_until("both reconnect", || {
        a.stats().cluster_redis_up == 1 && b.stats().cluster_redis_up == 1
    });
    let offset = loop {
        // The refused publish may have been carried out after all (Redis ran it late): then
        // it is delivered, with its own offset, before this one.
        match publish_acked(&mut publisher, "t", b"after") {
            Ok(offset) => break offset,
            Err((503, _)) => thread::sleep(Duration::from_millis(50)),
            Err(other) => panic!("{other:?}"),
        }
    };
    let got = messages(&mut subscriber, (offset - 1) as usize);
    let offsets: Vec<u64> = got.iter().map(|m| m.1).collect();
    assert_eq!(offsets, (2..=offset).collect::<Vec<_>>(), "in order, no hole");
    assert_eq!(got.last().map(|m| m.2.clone()), Some(b"after".to_vec()));
}

#[test]
fn broadcast_and_direct_messages_reach_every_node() {
    let redis = RedisServer::start();
    let nodes: Vec<ServerHandle> = (0..3).map(|_| node(&[&redis], |_| {})).collect();
    let mut everyone: Vec<Conn> = nodes.iter().map(|n| Conn::text(n.local_addr())).collect();
    let mut bob = Conn::binary(nodes[2].local_addr());
    bob.send(Request::Name { name: b"bob" });
    bob.expect(Frame::Ok { ack: Ack::Name, arg: "bob".into() });
    for conn in &mut everyone {
        conn.barrier();
    }
    let mut sender = Conn::text(nodes[0].local_addr());
    assert_eq!(publish_acked(&mut sender, "@bob", b"psst"), Ok(1));
    assert_eq!(messages(&mut bob, 1), vec![("@bob".into(), 1, b"psst".to_vec())]);
    assert_eq!(publish_acked(&mut sender, "*", b"all"), Ok(1));
    for conn in everyone.iter_mut().chain([&mut bob, &mut sender]) {
        assert_eq!(messages(conn, 1), vec![("*".into(), 1, b"all".to_vec())]);
    }
}

#[test]
fn channels_spread_over_two_redis_servers_and_everything_still_holds() {
    let (r1, r2) = (RedisServer::start(), RedisServer::start());
    let nodes: Vec<ServerHandle> = (0..2).map(|_| node(&[&r1, &r2], |_| {})).collect();
    let names: Vec<String> = (0..16).map(|i| format!("spread.{i}")).collect();
    let mut subscriber = Conn::text(nodes[1].local_addr());
    for name in &names {
        subscriber.subscribe(name);
    }
    let mut publisher = Conn::binary(nodes[0].local_addr());
    for round in 1..=3u64 {
        for name in &names {
            assert_eq!(publish_acked(&mut publisher, name, name.as_bytes()), Ok(round));
        }
    }
    let mut next: BTreeMap<String, u64> = names.iter().map(|n| (n.clone(), 1)).collect();
    for (channel, offset, payload) in messages(&mut subscriber, 3 * names.len()) {
        let expected = next.get_mut(&channel).expect("one of ours");
        assert_eq!(offset, *expected, "{channel}");
        *expected += 1;
        assert_eq!(payload, channel.as_bytes());
    }
    // Each channel's keys are on exactly one server, and both servers have some.
    let on = |redis: &RedisServer| {
        names
            .iter()
            .filter(|n| redis.integer(&["EXISTS", &format!("fanout:{{{n}}}:meta")]) == 1)
            .count()
    };
    let (one, two) = (on(&r1), on(&r2));
    assert_eq!(one + two, names.len());
    assert!(one > 0 && two > 0, "{one} and {two}");
}

#[test]
fn a_node_unsubscribes_in_redis_when_its_last_subscriber_leaves() {
    let redis = RedisServer::start();
    let a = node(&[&redis], |_| {});
    let numsub = || match redis.command(&["PUBSUB", "NUMSUB", "fanout:{quiet}"]) {
        Value::Array(Some(v)) => match v.get(1) {
            Some(Value::Integer(n)) => *n,
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    let mut subscriber = Conn::text(a.local_addr());
    subscriber.subscribe("quiet");
    assert_eq!(numsub(), 1);
    assert_eq!(a.stats().cluster_channels_served, 2, "`quiet` and `*`");
    drop(subscriber);
    wait_until("the node lets the channel go", || numsub() == 0);
    assert_eq!(a.stats().cluster_channels_served, 1);
    // And takes it up again, with its history, for the next subscriber.
    let mut publisher = Conn::binary(a.local_addr());
    assert_eq!(publish_acked(&mut publisher, "quiet", b"x"), Ok(1));
    let mut back = Conn::text(a.local_addr());
    assert_eq!(back.replay_all("quiet", 0), vec![(1, b"x".to_vec())]);
}

#[test]
fn cluster_mode_refuses_a_data_directory() {
    let redis = RedisServer::start();
    let dir = common::TempDir::new("cluster-data");
    let mut config = fanout::Config::for_tests();
    config.cluster = Some(ClusterConfig::new(vec![redis.endpoint()]));
    config.data_dir = Some(dir.0.clone());
    let error = fanout::Server::start(config).expect_err("refused");
    assert!(error.to_string().contains("--data-dir and --redis"), "{error}");
}

#[test]
fn a_subscribe_waits_while_redis_is_unreachable_then_completes() {
    let mut redis = RedisServer::start();
    let a = node(&[&redis], |_| {});
    redis.kill();
    wait_until("the node sees Redis gone", || a.stats().cluster_redis_up == 0);
    let mut subscriber = Conn::text(a.local_addr());
    subscriber.send(Request::Subscribe { channel: b"later", resume: None });
    assert_eq!(subscriber.read(Duration::from_millis(300)), Read_::Nothing, "not served yet");
    redis.restart();
    // Redis came back empty: the broadcast channel `*` has a new log, and every connection is
    // told so, once (before or after the subscribe's answer: they come from different places).
    let epoch_notice = |frame: &Frame| matches!(frame, Frame::Hist { channel, status: fanout::history::ResumeStatus::EpochChanged, .. } if channel == "*");
    let mut noticed = false;
    loop {
        match subscriber.next() {
            Frame::Ok { ack: Ack::Subscribe, arg } if arg == "later" => break,
            frame if epoch_notice(&frame) && !noticed => noticed = true,
            other => panic!("expected the subscribe's answer, got {other:?}"),
        }
    }
    let mut publisher = Conn::text(a.local_addr());
    assert_eq!(publish_acked(&mut publisher, "later", b"hi"), Ok(1));
    if !noticed {
        let frame = subscriber.next();
        assert!(epoch_notice(&frame), "expected the epoch notice of *, got {frame:?}");
    }
    assert_eq!(messages(&mut subscriber, 1), vec![("later".into(), 1, b"hi".to_vec())]);
}

/// Sends NAME and returns the refusal, if any.
#[test]
fn names_are_unique_across_nodes_and_a_dead_nodes_names_come_free() {
    let redis = RedisServer::start();
    let lease = |c: &mut fanout::Config| {
        if let Some(cluster) = c.cluster.as_mut() {
            cluster.name_lease = Duration::from_millis(600);
        }
    };
    let (a, b) = (node(&[&redis], lease), node(&[&redis], lease));
    let mut bob = Conn::text(a.local_addr());
    assert_eq!(claim(&mut bob, "bob"), Ok(()));
    let mut other = Conn::binary(b.local_addr());
    let (code, reason) = claim(&mut other, "bob").expect_err("bob is taken on node A");
    assert_eq!(code, 409, "{reason}");
    // The refused connection stays, without a name, and reaches bob across nodes.
    assert_eq!(publish_acked(&mut other, "@bob", b"hi"), Ok(1));
    assert_eq!(messages(&mut bob, 1), vec![("@bob".into(), 1, b"hi".to_vec())]);
    let (code, reason) = publish_acked(&mut other, "@carol", b"x").expect_err("no carol");
    assert_eq!((code, reason.as_str()), (404, "no client named carol"));
    // Leases are kept while held (several refreshes go by), given back when bob leaves.
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(claim(&mut Conn::text(b.local_addr()), "bob").map_err(|e| e.0), Err(409));
    drop(bob);
    wait_until("bob's name is free", || claim(&mut Conn::text(b.local_addr()), "bob").is_ok());
    // (that connection is gone again, and with it the name)
    wait_until("and free again", || claim(&mut other, "bob").is_ok());

    // A node killed outright cannot give its names back: they come free when the lease runs out.
    let child =
        common::ChildServer::start(&["--redis", &redis.url(), "--redis-name-lease-ms", "800"]);
    wait_until("the child node is ready", || {
        http(child.addr, "GET", "/healthz", b"").status == 200
    });
    let mut carol = Conn::text(child.addr);
    assert_eq!(claim(&mut carol, "carol"), Ok(()));
    let mut rival = Conn::text(a.local_addr());
    assert_eq!(claim(&mut rival, "carol").map_err(|e| e.0), Err(409));
    child.kill();
    wait_until("carol's lease runs out", || claim(&mut rival, "carol").is_ok());
    assert_eq!(publish_acked(&mut other, "@carol", b"yours now"), Ok(1));
    assert_eq!(messages(&mut rival, 1)[0].2, b"yours now".to_vec());
}

#[test]
fn clients_given_several_nodes_move_on_when_one_is_killed_and_lose_nothing() {
    const MESSAGES: usize = 300;
    let redis = RedisServer::start();
    let doomed = common::ChildServer::start(&["--redis", &redis.url()]);
    wait_until("the child node is ready", || {
        http(doomed.addr, "GET", "/healthz", b"").status == 200
    });
    let survivor = node(&[&redis], |_| {});
    // Both clients start on the doomed node and know the other one.
    let servers = [doomed.addr, survivor.local_addr()];
    let mut subscriber = fanout::client::Subscriber::new(&servers, &["live".to_string()], Some(0));
    let published = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let publisher = thread::spawn({
        let published = published.clone();
        move || {
            let mut publisher = fanout::client::Publisher::new(&servers, 64);
            for k in 0..MESSAGES {
                publisher.publish("live", format!("m{k}").as_bytes()).expect("published");
                published.store(k + 1, std::sync::atomic::Ordering::Relaxed);
                thread::sleep(Duration::from_millis(2));
            }
            publisher.flush().expect("every message acknowledged");
        }
    });
    let killer = thread::spawn(move || {
        wait_until("a third is published", || {
            published.load(std::sync::atomic::Ordering::Relaxed) >= MESSAGES / 3
        });
        doomed.kill();
    });
    // Offsets strictly one after another across the move; every payload arrives (a publish
    // whose acknowledgement died with the node is sent again, so a payload may come twice,
    // under two offsets).
    let mut seen = std::collections::HashSet::new();
    let mut last = 0;
    let deadline = std::time::Instant::now() + PATIENCE;
    while seen.len() < MESSAGES {
        assert!(std::time::Instant::now() < deadline, "only {} of {MESSAGES} arrived", seen.len());
        let message = subscriber.next_message().expect("the subscriber keeps going");
        assert_eq!(message.offset, last + 1, "no gap and nothing twice across the move");
        last = message.offset;
        seen.insert(message.payload);
    }
    killer.join().expect("killer");
    publisher.join().expect("publisher");
    assert!(last as usize >= MESSAGES && last as usize <= MESSAGES + 64, "{last}");
    assert!(survivor.stats().connections_total >= 2, "both clients moved to the survivor");
}

#[test]
fn a_loss_with_nothing_after_it_is_found_by_the_quiet_check() {
    let redis = RedisServer::start();
    let (a, b) = (node(&[&redis], |_| {}), node(&[&redis], |_| {}));
    let mut subscriber = Conn::text(b.local_addr());
    subscriber.subscribe("quiet.loss");
    let mut publisher = Conn::binary(a.local_addr());
    assert_eq!(publish_acked(&mut publisher, "quiet.loss", b"one"), Ok(1));
    assert_eq!(messages(&mut subscriber, 1)[0].1, 1);
    // Offset 2 reaches the stream, its pub/sub copy is lost, and nothing follows it.
    assert_eq!(redis.integer(&["HINCRBY", "fanout:{quiet.loss}:meta", "o", "1"]), 2);
    redis.command(&["XADD", "fanout:{quiet.loss}:log", "0-2", "p", "two", "t", "0"]);
    // Node B notices within seconds of quiet and delivers it.
    assert_eq!(messages(&mut subscriber, 1), vec![("quiet.loss".into(), 2, b"two".to_vec())]);
    assert_eq!(b.stats().cluster_quiet_losses, 1);
}

#[test]
fn a_redis_cluster_of_three_masters_carries_every_channel_with_sharded_pub_sub() {
    let redis = common::redis::RedisCluster::start(3);
    let seed = &redis.masters[0];
    let (a, b) = (node_in_redis_cluster(seed, |_| {}), node_in_redis_cluster(seed, |_| {}));
    assert_eq!(a.stats().cluster_redis_up, 3, "one connection pair per master");
    let names: Vec<String> = (0..12).map(|i| format!("shard.{i}")).collect();
    let mut subscriber = Conn::text(b.local_addr());
    for name in &names {
        subscriber.subscribe(name);
    }
    let mut publisher = Conn::binary(a.local_addr());
    for round in 1..=3u64 {
        for name in &names {
            assert_eq!(publish_acked(&mut publisher, name, name.as_bytes()), Ok(round), "{name}");
        }
    }
    let mut next: BTreeMap<String, u64> = names.iter().map(|n| (n.clone(), 1)).collect();
    for (channel, offset, payload) in messages(&mut subscriber, 3 * names.len()) {
        let expected = next.get_mut(&channel).expect("one of ours");
        assert_eq!(offset, *expected, "{channel}");
        *expected += 1;
        assert_eq!(payload, channel.as_bytes());
    }
    // Every master holds some of the channels, each channel's keys are on its slot's master,
    // and delivery went by sharded pub/sub only.
    for master in &redis.masters {
        let holds = names
            .iter()
            .filter(|n| std::ptr::eq(redis.master_of(&format!("fanout:{{{n}}}")), master))
            .count();
        assert!(holds > 0, "master {} holds none of the channels", master.port);
        assert!(master.integer(&["DBSIZE"]) > 0);
        let stats = match master.command(&["INFO", "commandstats"]) {
            Value::Bulk(Some(text)) => String::from_utf8_lossy(&text).into_owned(),
            other => panic!("{other:?}"),
        };
        assert!(!stats.contains("cmdstat_publish:"), "a cluster-wide PUBLISH: {stats}");
    }
    for name in &names {
        let owner = redis.master_of(&format!("fanout:{{{name}}}"));
        assert_eq!(owner.integer(&["EXISTS", &format!("fanout:{{{name}}}:log")]), 1, "{name}");
    }

    // Resume on node A (which never served these channels) from offset 1 of one of them.
    let (epoch, _) = position(&mut Conn::text(b.local_addr()), "shard.5");
    let mut again = Conn::text(a.local_addr());
    again.send(Request::Subscribe {
        channel: b"shard.5",
        resume: Some(Resume { after: 1, epoch: Some(epoch), strict: true }),
    });
    assert!(matches!(again.next(), Frame::Hist { .. }));
    let replayed: Vec<u64> = messages(&mut again, 2).iter().map(|m| m.1).collect();
    assert_eq!(replayed, vec![2, 3]);
    again.expect(Frame::Ok { ack: Ack::Subscribe, arg: "shard.5".into() });

    // Names, broadcasts and inboxes go through the cluster too.
    let mut bob = Conn::text(b.local_addr());
    assert_eq!(claim(&mut bob, "bob"), Ok(()));
    assert_eq!(claim(&mut Conn::text(a.local_addr()), "bob").map_err(|e| e.0), Err(409));
    assert_eq!(publish_acked(&mut publisher, "@bob", b"hi"), Ok(1));
    assert_eq!(messages(&mut bob, 1), vec![("@bob".into(), 1, b"hi".to_vec())]);
    // Sharded pub/sub has no patterns: a wildcard subscription is refused, and says why.
    let mut watcher = Conn::text(a.local_addr());
    watcher.send(Request::PatternSubscribe { pattern: b"shard.*" });
    match watcher.next() {
        Frame::Err { code, reason } => assert_eq!(code, 501, "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    watcher.barrier();
    // A name that starts with `}` cannot be hash-tagged: refused, with the reason.
    let (code, reason) = publish_acked(&mut publisher, "}odd", b"x").expect_err("refused");
    assert_eq!(code, 422, "{reason}");
}

#[test]
fn subscribers_are_told_when_a_channel_starts_over_under_a_new_epoch() {
    let redis = RedisServer::start();
    let (a, b) = (node(&[&redis], |_| {}), node(&[&redis], |_| {}));
    let mut subscriber = Conn::text(a.local_addr());
    subscriber.subscribe("reborn");
    let mut publisher = Conn::binary(b.local_addr());
    for k in 1..=3u64 {
        assert_eq!(publish_acked(&mut publisher, "reborn", b"old"), Ok(k));
    }
    assert_eq!(messages(&mut subscriber, 3).last().map(|m| m.1), Some(3));
    let old_epoch = epoch_in_redis(&redis, "reborn");
    // The channel's keys vanish (they expired, or Redis lost them): the next publish starts a
    // new log.
    redis.command(&["DEL", "fanout:{reborn}:meta", "fanout:{reborn}:log"]);
    assert_eq!(publish_acked(&mut publisher, "reborn", b"new"), Ok(1));
    let new_epoch = epoch_in_redis(&redis, "reborn");
    assert_ne!(new_epoch, old_epoch);
    match subscriber.next() {
        Frame::Hist { epoch, status, .. } => {
            assert_eq!((epoch, status), (new_epoch, fanout::history::ResumeStatus::EpochChanged))
        }
        other => panic!("expected the epoch notice, got {other:?}"),
    }
    assert_eq!(messages(&mut subscriber, 1), vec![("reborn".into(), 1, b"new".to_vec())]);
    assert_eq!(a.stats().cluster_epoch_changes, 1);
}

#[test]
fn a_burst_of_publishes_goes_to_redis_in_runs_and_arrives_whole_and_in_order() {
    const BURST: usize = 2000;
    let redis = RedisServer::start();
    let (a, b) = (node(&[&redis], |_| {}), node(&[&redis], |_| {}));
    let mut subscriber = Conn::binary(b.local_addr());
    subscriber.subscribe("burst");
    // One write holding the whole burst, acknowledged publishes of growing payloads.
    let mut frames = Vec::new();
    for k in 0..BURST {
        let payload = vec![b'x'; k % 300];
        fanout::protocol::binary::encode_request(
            &Request::PublishAcked { channel: b"burst", payload: payload.into() },
            &mut frames,
        );
    }
    let mut publisher = Conn::binary(a.local_addr());
    publisher.send_raw(&frames);
    let acks: Vec<u64> = (0..BURST)
        .map(|_| match publisher.next() {
            Frame::Ack { offset, .. } => offset,
            other => panic!("expected an acknowledgement, got {other:?}"),
        })
        .collect();
    assert_eq!(acks, (1..=BURST as u64).collect::<Vec<_>>(), "acknowledged in order");
    let got = messages(&mut subscriber, BURST);
    for (k, (_, offset, payload)) in got.iter().enumerate() {
        assert_eq!((*offset, payload.len()), (k as u64 + 1, k % 300));
    }
    let calls = match redis.command(&["INFO", "commandstats"]) {
        Value::Bulk(Some(text)) => String::from_utf8_lossy(&text)
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse::<usize>().ok())
            .expect("evalsha calls"),
        other => panic!("{other:?}"),
    };
    assert!(calls < BURST / 4, "{calls} script calls for {BURST} publishes: not batched");
}

/// A channel's keys expire the configured lifetime after its last publish (within an eighth
/// more): a node refreshes them once per period, not on every call; and keys the script makes
/// again (lost, flushed) get their expiry at once, whatever the node thinks it refreshed.
#[test]
fn a_channels_keys_expire_after_its_last_publish_even_when_refreshed_once_per_period() {
    let redis = RedisServer::start();
    let a = node(&[&redis], |c| {
        if let Some(cluster) = c.cluster.as_mut() {
            cluster.key_ttl = Duration::from_secs(800);
        }
    });
    let mut publisher = Conn::binary(a.local_addr());
    let pttl = |key: &str| redis.integer(&["PTTL", key]);
    let lifetime = 800_000;
    for k in 0..20 {
        publish_acked(&mut publisher, "ttl", format!("m{k}").as_bytes()).expect("published");
    }
    for key in ["fanout:{ttl}:meta", "fanout:{ttl}:log"] {
        let left = pttl(key);
        assert!(left > lifetime - 60_000 && left <= lifetime + lifetime / 8, "{key}: {left} ms");
    }
    // Keys lost behind the node's back: the next publish makes them again, with an expiry,
    // although this node refreshed them moments ago.
    redis.command(&["DEL", "fanout:{ttl}:meta", "fanout:{ttl}:log"]);
    publish_acked(&mut publisher, "ttl", b"again").expect("published");
    for key in ["fanout:{ttl}:meta", "fanout:{ttl}:log"] {
        let left = pttl(key);
        assert!(left > lifetime - 60_000, "{key} made again without an expiry: {left}");
    }
    // The meta key alone lost (expired first, evicted, deleted): the channel goes on after what
    // its stream holds, under a new epoch, instead of failing to append below it.
    let epoch = epoch_in_redis(&redis, "ttl");
    redis.command(&["DEL", "fanout:{ttl}:meta"]);
    // (The stream holds "again", offset 1: the count starting over would give 1 again.)
    assert_eq!(publish_acked(&mut publisher, "ttl", b"after a lost count"), Ok(2));
    assert_ne!(epoch_in_redis(&redis, "ttl"), epoch, "a new epoch: the old one went with the key");
    assert!(pttl("fanout:{ttl}:meta") > lifetime - 60_000);
    // Without a refresh asked for, a call leaves expiries alone: set a short one by hand and
    // see it stay (the node refreshed this channel in this period already).
    redis.command(&["PEXPIRE", "fanout:{ttl}:meta", "600000"]);
    publish_acked(&mut publisher, "ttl", b"once more").expect("published");
    let left = pttl("fanout:{ttl}:meta");
    assert!(left <= 600_000, "refreshed on every call: {left}");
}

#[test]
fn a_burst_over_many_channels_is_one_script_call_per_turn_with_every_answer_in_order() {
    const BURST: usize = 1000;
    let redis = RedisServer::start();
    let (a, b) = (node(&[&redis], |_| {}), node(&[&redis], |_| {}));
    let mut subscriber = Conn::text(b.local_addr());
    for c in 0..50 {
        subscriber.subscribe(&format!("multi.{c}"));
    }
    // Interleaved channels, and now and then an inbox nobody holds (refused where it stands).
    let target =
        |k: usize| if k % 100 == 99 { "@nobody".to_string() } else { format!("multi.{}", k % 50) };
    let mut frames = Vec::new();
    for k in 0..BURST {
        let channel = target(k);
        let payload = format!("m{k}");
        fanout::protocol::binary::encode_request(
            &Request::PublishAcked {
                channel: channel.as_bytes(),
                payload: payload.as_bytes().into(),
            },
            &mut frames,
        );
    }
    let mut publisher = Conn::binary(a.local_addr());
    publisher.send_raw(&frames);
    let mut next: BTreeMap<String, u64> = BTreeMap::new();
    let mut expected_messages: BTreeMap<String, Vec<(u64, Vec<u8>)>> = BTreeMap::new();
    for k in 0..BURST {
        let channel = target(k);
        match publisher.next() {
            Frame::Ack { channel: c, offset } => {
                assert_eq!(c, channel, "answer {k} in publish order");
                let want = next.entry(channel.clone()).or_insert(0);
                *want += 1;
                assert_eq!(offset, *want, "{channel}");
                expected_messages
                    .entry(channel)
                    .or_default()
                    .push((offset, format!("m{k}").into_bytes()));
            }
            Frame::Err { code, reason } => {
                assert_eq!((channel.as_str(), code), ("@nobody", 404), "answer {k}: {reason}");
            }
            other => panic!("answer {k}: {other:?}"),
        }
    }
    let mut got: BTreeMap<String, Vec<(u64, Vec<u8>)>> = BTreeMap::new();
    for (channel, offset, payload) in messages(&mut subscriber, BURST - BURST / 100) {
        got.entry(channel).or_default().push((offset, payload));
    }
    assert_eq!(got, expected_messages);
}

#[test]
fn pattern_subscribers_receive_matching_channels_published_on_other_nodes() {
    let redis = RedisServer::start();
    let (a, b) = (node(&[&redis], |_| {}), node(&[&redis], |_| {}));
    let mut watcher = Conn::text(b.local_addr());
    watcher.send(Request::PatternSubscribe { pattern: b"metrics.*" });
    watcher.expect(Frame::Ok { ack: Ack::PatternSubscribe, arg: "metrics.*".into() });
    let numpat = || redis.integer(&["PUBSUB", "NUMPAT"]);
    assert_eq!(numpat(), 1, "the node PSUBSCRIBEd before answering");
    let mut publisher = Conn::binary(a.local_addr());
    for (channel, payload) in [
        ("metrics.eu", "1"),
        ("metrics.eu.deep", "not matched: two tokens"),
        ("other.eu", "not matched"),
        ("metrics.us", "2"),
        ("metrics.eu", "3"),
    ] {
        publish_acked(&mut publisher, channel, payload.as_bytes()).expect("published");
    }
    // In order within each channel (a channel first met through the pattern is read from its
    // stream first, so across channels the order may differ).
    let mut got = messages(&mut watcher, 3);
    got.sort();
    let expected: Vec<(String, u64, Vec<u8>)> = vec![
        ("metrics.eu".into(), 1, b"1".to_vec()),
        ("metrics.eu".into(), 2, b"3".to_vec()),
        ("metrics.us".into(), 1, b"2".to_vec()),
    ];
    assert_eq!(got, expected);
    assert_eq!(watcher.read(Duration::from_millis(200)), Read_::Nothing, "only what matches");
    // A plain subscriber of a channel found through the pattern gets its whole history.
    let mut plain = Conn::text(b.local_addr());
    assert_eq!(plain.replay_all("metrics.eu", 0), vec![(1, b"1".to_vec()), (2, b"3".to_vec())]);
    publish_acked(&mut publisher, "metrics.eu", b"4").expect("published");
    assert_eq!(messages(&mut plain, 1), vec![("metrics.eu".into(), 3, b"4".to_vec())]);
    assert_eq!(messages(&mut watcher, 1), vec![("metrics.eu".into(), 3, b"4".to_vec())]);
    // The last pattern subscriber leaves: the node PUNSUBSCRIBEs.
    watcher.send(Request::PatternUnsubscribe { pattern: b"metrics.*" });
    watcher.expect(Frame::Ok { ack: Ack::PatternUnsubscribe, arg: "metrics.*".into() });
    wait_until("the node lets the pattern go", || numpat() == 0);
}

#[test]
fn an_event_stream_with_a_pattern_waits_for_the_cluster_then_gets_every_matching_channel() {
    let redis = RedisServer::start();
    let (a, b) = (node(&[&redis], |_| {}), node(&[&redis], |_| {}));
    let mut stream = EventStream::open(b.local_addr(), "/sse?pattern=alerts.*", "");
    // The stream's pattern subscription is acknowledged (a comment) once the node receives
    // every channel it matches.
    wait_until("the pattern is subscribed", || {
        let _ = stream.next(Duration::from_millis(20));
        stream.comments.iter().any(|c| c.contains("alerts.*"))
    });
    assert_eq!(redis.integer(&["PUBSUB", "NUMPAT"]), 1);
    let mut publisher = Conn::binary(a.local_addr());
    publish_acked(&mut publisher, "alerts.disk", b"full").expect("published");
    publish_acked(&mut publisher, "alerts.cpu", b"hot").expect("published");
    for (channel, data) in [("alerts.disk", "full"), ("alerts.cpu", "hot")] {
        let event = stream.next_message();
        assert_eq!((event.event.as_deref(), event.data.as_str()), (Some(channel), data));
    }
}

#[test]
fn redis_clients_publish_and_subscribe_across_nodes() {
    use std::io::{Read, Write};
    let redis = RedisServer::start();
    let (a, b) = (node(&[&redis], |_| {}), node(&[&redis], |_| {}));
    let call = |stream: &mut std::net::TcpStream, _input: &mut Vec<u8>, args: &[&str]| {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            out.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
        }
        stream.write_all(&out).expect("send");
    };
    let next = |stream: &mut std::net::TcpStream, input: &mut Vec<u8>| loop {
        if let Some((value, used)) =
            fanout::protocol::resp::parse_value(input, usize::MAX).expect("valid RESP")
        {
            input.drain(..used);
            return value;
        }
        stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).expect("a reply");
        assert!(n > 0, "closed");
        input.extend_from_slice(&chunk[..n]);
    };
    let b_ = |s: &str| Value::Bulk(Some(s.as_bytes().to_vec()));
    let (mut sub, mut sub_in) = (std::net::TcpStream::connect(b.local_addr()).unwrap(), Vec::new());
    call(&mut sub, &mut sub_in, &["SUBSCRIBE", "rooms.1"]);
    // Answered once node B serves the channel (subscribed in Redis, history read).
    assert_eq!(
        next(&mut sub, &mut sub_in),
        Value::Array(Some(vec![b_("subscribe"), b_("rooms.1"), Value::Integer(1)]))
    );
    let (mut publisher, mut pub_in) =
        (std::net::TcpStream::connect(a.local_addr()).unwrap(), Vec::new());
    call(&mut publisher, &mut pub_in, &["PUBLISH", "rooms.1", "across"]);
    // Answered once Redis ran the publish; the count is node A's own subscribers.
    assert_eq!(next(&mut publisher, &mut pub_in), Value::Integer(0));
    assert_eq!(
        next(&mut sub, &mut sub_in),
        Value::Array(Some(vec![b_("message"), b_("rooms.1"), b_("across")]))
    );
    // A Redis glob subscription on node B: answered once B PSUBSCRIBEd in Redis.
    let (mut psub, mut psub_in) =
        (std::net::TcpStream::connect(b.local_addr()).unwrap(), Vec::new());
    call(&mut psub, &mut psub_in, &["PSUBSCRIBE", "rooms.?"]);
    assert_eq!(
        next(&mut psub, &mut psub_in),
        Value::Array(Some(vec![b_("psubscribe"), b_("rooms.?"), Value::Integer(1)]))
    );
    call(&mut publisher, &mut pub_in, &["PUBLISH", "rooms.7", "by glob"]);
    assert_eq!(next(&mut publisher, &mut pub_in), Value::Integer(0));
    assert_eq!(
        next(&mut psub, &mut psub_in),
        Value::Array(Some(vec![b_("pmessage"), b_("rooms.?"), b_("rooms.7"), b_("by glob")]))
    );
}

/// Two nodes; B keeps 3 messages per channel in memory, the stream (node A's setting) keeps
/// more; `d1`..`d10` published to `channel` through A and mirrored on B. Returns the nodes, a
/// subscriber on B (it keeps the channel served there), the publisher (on A) and the epoch.
fn deeper_than_memory(
    redis: &RedisServer,
    channel: &str,
) -> (ServerHandle, ServerHandle, Conn, Conn, u64) {
    let a = node(&[redis], |_| {});
    let b = node(&[redis], |c| c.history_messages = 3);
    let mut keeper = Conn::text(b.local_addr());
    keeper.subscribe(channel);
    let mut publisher = Conn::binary(a.local_addr());
    for k in 1..=10 {
        publish_acked(&mut publisher, channel, format!("d{k}").as_bytes()).expect("published");
    }
    assert_eq!(messages(&mut keeper, 10).last().map(|m| m.1), Some(10));
    let (epoch, _) = position(&mut Conn::text(b.local_addr()), channel);
    (a, b, keeper, publisher, epoch)
}

#[test]
fn a_resume_older_than_a_nodes_memory_is_read_from_the_stream() {
    let redis = RedisServer::start();
    let (_a, b, _keeper, mut publisher, epoch) = deeper_than_memory(&redis, "deep");
    let mut resumer = Conn::binary(b.local_addr());
    resumer.send(Request::Subscribe {
        channel: b"deep",
        resume: Some(Resume { after: 2, epoch: Some(epoch), strict: true }),
    });
    match resumer.next() {
        Frame::Hist { first, last, status, .. } => {
            assert_eq!((first, last, status), (3, 10, fanout::history::ResumeStatus::Ok))
        }
        other => panic!("expected HIST, got {other:?}"),
    }
    let expected: Vec<(String, u64, Vec<u8>)> =
        (3..=10).map(|k| ("deep".to_string(), k, format!("d{k}").into_bytes())).collect();
    assert_eq!(messages(&mut resumer, 8), expected, "the stream's 3..7, then memory's 8..10");
    resumer.expect(Frame::Ok { ack: Ack::Subscribe, arg: "deep".into() });
    publish_acked(&mut publisher, "deep", b"d11").expect("published");
    assert_eq!(messages(&mut resumer, 1), vec![("deep".into(), 11, b"d11".to_vec())]);
    // Older than the stream too (trimmed away): told, from the earliest the stream has.
    redis.command(&["XTRIM", "fanout:{deep}:log", "MAXLEN", "5"]);
    let mut late = Conn::text(b.local_addr());
    late.send(Request::Subscribe {
        channel: b"deep",
        resume: Some(Resume { after: 1, epoch: Some(epoch), strict: false }),
    });
    match late.next() {
        Frame::Hist { first, status, .. } => {
            assert_eq!((first, status), (7, fanout::history::ResumeStatus::Expired))
        }
        other => panic!("expected HIST, got {other:?}"),
    }
    let offsets: Vec<u64> = messages(&mut late, 5).iter().map(|m| m.1).collect();
    assert_eq!(offsets, vec![7, 8, 9, 10, 11]);
}

/// A burst is stored as runs (one stream entry per run of a channel in a script call); a resume
/// that starts inside a run, on a node whose memory holds only the last few, reads them back
/// from the stream: every message once, in order, with its payload; and a node that starts
/// serving the channel after the burst syncs its log from those runs.
#[test]
fn a_resume_into_a_burst_reads_its_runs_from_the_stream() {
    const BURST: u64 = 500;
    let redis = RedisServer::start();
    let a = node(&[&redis], |_| {});
    let b = node(&[&redis], |c| c.history_messages = 3);
    let mut frames = Vec::new();
    for k in 1..=BURST {
        fanout::protocol::binary::encode_request(
            &Request::PublishAcked {
                channel: b"runs",
                payload: format!("r{k}").into_bytes().into(),
            },
            &mut frames,
        );
    }
    let mut publisher = Conn::binary(a.local_addr());
    publisher.send_raw(&frames);
    for k in 1..=BURST {
        match publisher.next() {
            Frame::Ack { offset, .. } => assert_eq!(offset, k),
            other => panic!("expected an acknowledgement, got {other:?}"),
        }
    }
    let entries = redis.integer(&["XLEN", "fanout:{runs}:log"]) as u64;
    assert!(entries < BURST / 4, "{entries} stream entries for {BURST} messages: not in runs");
    // B serves the channel only now: it syncs from the stream (runs), keeping the last 3.
    let (epoch, last) = position(&mut Conn::text(b.local_addr()), "runs");
    assert_eq!(last, BURST);
    for after in [0, 1, 63, 100, 250, BURST - 5] {
        let mut resumer = Conn::binary(b.local_addr());
        resumer.send(Request::Subscribe {
            channel: b"runs",
            resume: Some(Resume { after, epoch: Some(epoch), strict: true }),
        });
        match resumer.next() {
            Frame::Hist { first, last, status, .. } => assert_eq!(
                (first, last, status),
                (after + 1, BURST, fanout::history::ResumeStatus::Ok),
                "resume after {after}"
            ),
            other => panic!("expected HIST, got {other:?}"),
        }
        let got = messages(&mut resumer, (BURST - after) as usize);
        let expected: Vec<(String, u64, Vec<u8>)> = (after + 1..=BURST)
            .map(|k| ("runs".to_string(), k, format!("r{k}").into_bytes()))
            .collect();
        assert_eq!(got, expected, "resume after {after}");
        resumer.expect(Frame::Ok { ack: Ack::Subscribe, arg: "runs".into() });
    }
}

/// Every check before any effect: a wildcard subscription a client may not take (no token, a
/// token that does not cover it, a bad pattern) is refused before the node asks Redis for
/// anything; one it may take is PSUBSCRIBEd as before.
#[test]
fn a_refused_pattern_subscription_makes_the_node_psubscribe_nothing() {
    const SECRET: &[u8] = b"a cluster test secret, long enough";
    let redis = RedisServer::start();
    let secured = |c: &mut fanout::Config| {
        c.auth.hmac_secret = Some(SECRET.to_vec());
        c.limits.auth_failures = Some(0);
    };
    let (_a, b) = (node(&[&redis], secured), node(&[&redis], secured));
    let token = |subscribe: &str| {
        let expires = fanout::auth::unix_now_secs() + 600;
        let patterns = vec![subscribe.to_string()];
        fanout::auth::mint_hs256(SECRET, Some("ann"), &patterns, &[], expires).expect("a token")
    };
    let numpat = || redis.integer(&["PUBSUB", "NUMPAT"]);
    let refused = |conn: &mut Conn, pattern: &[u8], code: u16| {
        conn.send(Request::PatternSubscribe { pattern });
        match conn.next() {
            Frame::Err { code: got, reason } => assert_eq!(got, code, "{reason}"),
            other => panic!("expected ERR {code}, got {other:?}"),
        }
    };
    let mut stranger = Conn::text(b.local_addr());
    refused(&mut stranger, b">", 401);
    refused(&mut stranger, b"metrics.*", 401);
    let mut member = Conn::text(b.local_addr());
    member.send(Request::Auth { token: token("room.*").as_bytes() });
    assert!(matches!(member.next(), Frame::Ok { ack: Ack::Auth, .. }));
    refused(&mut member, b"metrics.*", 403);
    refused(&mut member, b">", 403);
    refused(&mut member, b"room.*x", 422);
    // A Redis client's PSUBSCRIBE: a glob needs a grant of every channel.
    let mut redis_client = std::net::TcpStream::connect(b.local_addr()).expect("connect");
    use std::io::{Read as _, Write as _};
    let token = token("room.*");
    let auth = format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{token}\r\n", token.len());
    redis_client.write_all(auth.as_bytes()).expect("send");
    redis_client.write_all(b"*2\r\n$10\r\nPSUBSCRIBE\r\n$1\r\n*\r\n").expect("send");
    let mut answer = Vec::new();
    redis_client.set_read_timeout(Some(PATIENCE)).expect("timeout");
    while !answer.windows(6).any(|w| w == b"NOPERM") {
        let mut chunk = [0u8; 1024];
        let n = redis_client.read(&mut chunk).expect("an answer");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&chunk[..n]);
    }
    // The refusals are answered after the broker would have been asked: had any reached it,
    // Redis would count a pattern by now. One allowed subscription is the control.
    let mut allowed = Conn::text(b.local_addr());
    allowed.send(Request::Auth { token: token.as_bytes() });
    assert!(matches!(allowed.next(), Frame::Ok { ack: Ack::Auth, .. }));
    allowed.send(Request::PatternSubscribe { pattern: b"room.*" });
    allowed.expect(Frame::Ok { ack: Ack::PatternSubscribe, arg: "room.*".into() });
    assert_eq!(numpat(), 1, "only the allowed pattern reached Redis");
}

/// Publishes with an acknowledgement, again while the node is reconnecting to Redis (503).
fn publish_acked_when_up(conn: &mut Conn, channel: &str, payload: &[u8]) -> u64 {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        match publish_acked(conn, channel, payload) {
            Ok(offset) => return offset,
            Err((503, _)) if std::time::Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("publish refused: {e:?}"),
        }
    }
}

/// Redis restored from an older snapshot (RDB, its default persistence; a lagging replica
/// promoted is the same) gives out again offsets the nodes already delivered. Nothing
/// acknowledged may be lost silently and no (epoch, offset) may name two messages: the
/// channel's log ends, a new epoch begins in Redis (keeping its stream), live subscribers are
/// told before anything of it, and a resume on any node names it. Both ways of finding out are
/// exercised: the subscriber's node receives an offset it has with another message (the
/// publisher's node serves nobody, so its script has nothing to fence with), and a node that
/// serves the channel publishes (its script fences before giving an offset out twice).
/// The same restore with nobody subscribed on the publishing node (an outside tester's case):
/// the node remembers where Redis acknowledged its publishers even for channels it does not
/// serve, so its next publish ends the rolled-back epoch instead of being given an offset that
/// already named another acknowledged message.
#[test]
fn a_restore_is_caught_by_a_publisher_whose_node_serves_no_subscriber_of_the_channel() {
    let mut redis = RedisServer::start_with(&["--save", "", "--appendonly", "no"]);
    let a = node(&[&redis], |_| {});
    let mut publisher = Conn::binary(a.local_addr());
    for k in 1..=5u64 {
        assert_eq!(publish_acked_when_up(&mut publisher, "unserved", b"kept"), k);
    }
    redis.command(&["SAVE"]);
    let old_epoch = epoch_in_redis(&redis, "unserved");
    for k in 6..=10u64 {
        assert_eq!(publish_acked_when_up(&mut publisher, "unserved", b"lost"), k);
    }
    redis.kill();
    redis.restart();
    wait_until("the node is back", || http(a.local_addr(), "GET", "/healthz", b"").status == 200);
    // Redis's counter is back at 5: offset 6 was acknowledged for "lost" in the old epoch, so
    // the next one comes under a new epoch.
    publish_acked_when_up(&mut publisher, "unserved", b"after");
    assert_ne!(epoch_in_redis(&redis, "unserved"), old_epoch, "the rolled-back epoch was ended");
    // A client that saw offset 10 in the old epoch is told, never handed "after" as if new.
    let mut resumer = Conn::text(a.local_addr());
    resumer.send(Request::Subscribe {
        channel: b"unserved",
        resume: Some(Resume { after: 10, epoch: Some(old_epoch), strict: false }),
    });
    match resumer.next() {
        Frame::Hist { epoch, status, .. } => {
            assert_ne!(epoch, old_epoch);
            assert_eq!(status, fanout::history::ResumeStatus::EpochChanged);
        }
        other => panic!("expected HIST, got {other:?}"),
    }
}

#[test]
fn redis_restored_from_an_older_snapshot_ends_the_epoch_instead_of_losing_messages() {
    let mut redis = RedisServer::start_with(&["--save", "", "--appendonly", "no"]);
    let (a, b) = (node(&[&redis], |_| {}), node(&[&redis], |_| {}));
    let healthy =
        |node: &ServerHandle| http(node.local_addr(), "GET", "/healthz", b"").status == 200;
    for (channel, publish_from) in [("ledger", &a), ("journal", &b)] {
        let mut subscriber = Conn::text(b.local_addr());
        subscriber.subscribe(channel);
        let mut publisher = Conn::binary(publish_from.local_addr());
        for k in 1..=5u64 {
            let payload = format!("kept-{k}");
            assert_eq!(publish_acked_when_up(&mut publisher, channel, payload.as_bytes()), k);
        }
        redis.command(&["SAVE"]);
        let old_epoch = epoch_in_redis(&redis, channel);
        for k in 6..=10u64 {
            let payload = format!("lost-{k}");
            assert_eq!(publish_acked_when_up(&mut publisher, channel, payload.as_bytes()), k);
        }
        assert_eq!(messages(&mut subscriber, 10).last().map(|m| m.1), Some(10));
        // Restarted from the snapshot: the channel's counter is back at 5.
        redis.kill();
        redis.restart();
        wait_until("both nodes are back", || healthy(&a) && healthy(&b));
        let mut acked = Vec::new();
        for k in 1..=3 {
            let payload = format!("after-{k}");
            acked.push((
                publish_acked_when_up(&mut publisher, channel, payload.as_bytes()),
                payload,
            ));
        }
        let new_epoch = epoch_in_redis(&redis, channel);
        assert_ne!(new_epoch, old_epoch, "{channel}: the rolled-back epoch was ended");
        // The subscriber is told first, then gets the new log: what Redis kept, and every
        // acknowledged message after the restart, each offset with one message.
        match subscriber.next() {
            Frame::Hist { epoch, status, .. } => {
                assert_eq!(
                    (epoch, status),
                    (new_epoch, fanout::history::ResumeStatus::EpochChanged)
                )
            }
            other => panic!("{channel}: expected the epoch notice, got {other:?}"),
        }
        let got = messages(&mut subscriber, 8);
        let mut expected: Vec<(String, u64, Vec<u8>)> =
            (1..=5).map(|k| (channel.to_string(), k, format!("kept-{k}").into_bytes())).collect();
        for (offset, payload) in &acked {
            expected.push((channel.to_string(), *offset, payload.clone().into_bytes()));
        }
        assert_eq!(got, expected, "{channel}");
        // A resume on either node names the new epoch and reads the same log.
        for node in [&a, &b] {
            assert_eq!(position(&mut Conn::text(node.local_addr()), channel), (new_epoch, 8));
            let mut late = Conn::text(node.local_addr());
            assert_eq!(
                late.replay_all(channel, 5),
                vec![(6, b"after-1".to_vec()), (7, b"after-2".to_vec()), (8, b"after-3".to_vec()),]
            );
        }
    }
    assert!(b.stats().cluster_rollbacks + a.stats().cluster_rollbacks >= 2);
}

/// The rollback whose evidence Redis trimmed away: node `a` holds offsets 1..=50 of a channel
/// and is cut off (a stopped process, a partition) while Redis restarts from a snapshot taken at
/// offset 20 and a third node, which mirrors nothing of the channel and never published to it
/// (the node that did remembers where Redis acknowledged it, and would end the epoch itself),
/// publishes 400 messages that reuse offsets 21..=50 with other messages; the stream keeps only
/// the newest (`MAXLEN ~ 10`).
/// Back, `a` finds its last message gone from the stream, cannot compare, and knows the server
/// was replaced (its run id changed): its subscriber is told the epoch ended, never served the
/// old 21..=50 as if they were the new ones (before, it was told of a hole and went on).
#[test]
fn a_rollback_whose_evidence_was_trimmed_still_ends_the_epoch() {
    let mut redis = RedisServer::start_with(&["--save", "", "--appendonly", "no"]);
    let relay = common::proxy::Relay::to(redis.port);
    let a = node_through(&relay, |c| c.history_messages = 10);
    let b = node(&[&redis], |c| c.history_messages = 10);
    let c = node(&[&redis], |c| c.history_messages = 10);
    let healthy =
        |node: &ServerHandle| http(node.local_addr(), "GET", "/healthz", b"").status == 200;
    let channel = "tape";
    let mut subscriber = Conn::text(a.local_addr());
    subscriber.subscribe(channel);
    let mut publisher = Conn::binary(b.local_addr());
    for k in 1..=50u64 {
        if k == 21 {
            redis.command(&["SAVE"]);
        }
        let payload = format!("old-{k}");
        assert_eq!(publish_acked_when_up(&mut publisher, channel, payload.as_bytes()), k);
    }
    assert_eq!(messages(&mut subscriber, 50).last().map(|m| m.1), Some(50));
    let old_epoch = epoch_in_redis(&redis, channel);
    relay.pause();
    redis.kill();
    redis.restart();
    wait_until("c is back", || healthy(&c));
    let mut stranger = Conn::binary(c.local_addr());
    for k in 21..=420u64 {
        let payload = format!("new-{k}");
        assert_eq!(publish_acked_when_up(&mut stranger, channel, payload.as_bytes()), k);
    }
    assert_eq!(epoch_in_redis(&redis, channel), old_epoch, "nobody could tell yet");
    relay.resume();
    match subscriber.next() {
        Frame::Hist { epoch, status, .. } => {
            assert_eq!(status, fanout::history::ResumeStatus::EpochChanged);
            assert_ne!(epoch, old_epoch);
            assert_eq!(epoch, epoch_in_redis(&redis, channel), "the epoch Redis now has");
        }
        other => panic!("expected the epoch notice, got {other:?}"),
    }
    assert!(a.stats().cluster_rollbacks >= 1);
}

/// A subscriber moves to a node that is behind (its Redis connection stalled: a partition, a
/// pause) and resumes from an offset that node has not reached: the resume waits for the node
/// to catch up and goes on from there, nothing twice (before, the node said the epoch changed,
/// naming the same one, and replayed the channel from 1). While the node cannot reach Redis the
/// resume is refused (503: try another node), not told `epoch`.
#[test]
fn a_resume_ahead_of_a_lagging_node_waits_for_it_instead_of_starting_over() {
    let redis = RedisServer::start();
    let relay = common::proxy::Relay::to(redis.port);
    let lagging = node_through(&relay, |_| {});
    let b = node(&[&redis], |_| {});
    let healthy =
        |node: &ServerHandle| http(node.local_addr(), "GET", "/healthz", b"").status == 200;
    let channel = "moving";
    let mut publisher = Conn::binary(b.local_addr());
    let mut watcher = Conn::text(lagging.local_addr());
    watcher.subscribe(channel);
    for k in 1..=10u64 {
        assert_eq!(publish_acked_when_up(&mut publisher, channel, format!("m{k}").as_bytes()), k);
    }
    assert_eq!(messages(&mut watcher, 10).last().map(|m| m.1), Some(10));
    let epoch = epoch_in_redis(&redis, channel);
    let resume_from = |after| Request::Subscribe {
        channel: channel.as_bytes(),
        resume: Some(fanout::protocol::Resume { after, epoch: Some(epoch), strict: false }),
    };
    // Stalled: the node still holds 10 while Redis goes on to 20.
    relay.pause();
    std::thread::sleep(Duration::from_millis(100));
    for k in 11..=20u64 {
        assert_eq!(publish_acked_when_up(&mut publisher, channel, format!("m{k}").as_bytes()), k);
    }
    let mut mover = Conn::text(lagging.local_addr());
    mover.send(resume_from(20));
    std::thread::sleep(Duration::from_millis(300));
    relay.resume();
    match mover.next() {
        Frame::Hist { epoch: e, status, .. } => {
            assert_eq!((e, status), (epoch, fanout::history::ResumeStatus::Ok))
        }
        other => panic!("expected HIST ok, got {other:?}"),
    }
    mover.expect(Frame::Ok { ack: fanout::protocol::Ack::Subscribe, arg: channel.into() });
    for k in 21..=22u64 {
        assert_eq!(publish_acked_when_up(&mut publisher, channel, format!("m{k}").as_bytes()), k);
    }
    let got: Vec<u64> = messages(&mut mover, 2).iter().map(|m| m.1).collect();
    assert_eq!(got, [21, 22], "from where the client was, nothing twice");
    // The node's own subscriber got everything in order meanwhile.
    let seen: Vec<u64> = messages(&mut watcher, 12).iter().map(|m| m.1).collect();
    assert_eq!(seen, (11..=22).collect::<Vec<_>>());
    // Cut off long enough for the node to know: a resume ahead of it is refused, 503.
    relay.pause();
    // A read under way when the relay paused still goes through: let it.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(publish_acked_when_up(&mut publisher, channel, b"m23"), 23);
    wait_until("the node knows it lost Redis", || !healthy(&lagging));
    let mut refused = Conn::text(lagging.local_addr());
    refused.send(resume_from(23));
    match refused.next() {
        Frame::Err { code, .. } => assert_eq!(code, 503),
        other => panic!("expected 503, got {other:?}"),
    }
    relay.resume();
    wait_until("the node is back", || healthy(&lagging));
    // A client naming an epoch newer than any (it can name anything) only waits for the node
    // (the command timeout and a probe interval), then is told the epoch there is: nothing
    // ends for anyone else.
    let mut claimer = Conn::text(lagging.local_addr());
    claimer.send(Request::Subscribe {
        channel: channel.as_bytes(),
        resume: Some(fanout::protocol::Resume { after: 5, epoch: Some(epoch + 1), strict: false }),
    });
    match claimer.next() {
        Frame::Hist { epoch: e, status, .. } => {
            assert_eq!((e, status), (epoch, fanout::history::ResumeStatus::EpochChanged))
        }
        other => panic!("expected HIST epoch, got {other:?}"),
    }
    assert_eq!(epoch_in_redis(&redis, channel), epoch, "a client's claim ends no epoch");
}

/// A master of a Redis Cluster dies and its replica takes over (within the cluster's node
/// timeout, 2 s here): the node follows. It reads the slot map from the masters that answer
/// (here the dead one is the very seed it was given), publishes to the promoted replica soon
/// after the cluster is whole again, and when the dead master comes back as a replica it is
/// neither counted nor probed as a master.
#[test]
fn a_redis_cluster_failover_is_followed() {
    use std::time::Instant;
    let mut redis = common::redis::RedisCluster::start_with_replicas(3, 1);
    let seed_port = redis.masters[0].port;
    let channel = (0..)
        .map(|i| format!("failover.{i}"))
        .find(|name| redis.master_of(&format!("fanout:{{{name}}}")).port == seed_port)
        .expect("a channel on the seed's slots");
    let node_in_cluster = |seeds: Vec<fanout::cluster::RedisEndpoint>| {
        let server = start(|c| {
            let mut cluster = ClusterConfig::new(seeds);
            cluster.redis_cluster = true;
            cluster.command_timeout = Duration::from_millis(1000);
            cluster.probe_interval = Duration::from_millis(200);
            c.cluster = Some(cluster);
        });
        wait_until("the node knows the cluster and serves broadcasts", || {
            http(server.local_addr(), "GET", "/healthz", b"").status == 200
        });
        server
    };
    // Node b is given every server as a seed (README: repeat for more seeds).
    let every: Vec<_> = redis.masters.iter().map(|m| m.endpoint()).collect();
    let (a, b) = (node_in_cluster(vec![redis.masters[0].endpoint()]), node_in_cluster(every));
    assert_eq!(a.stats().cluster_redis_up, 3);
    let mut subscriber = Conn::text(b.local_addr());
    subscriber.subscribe(&channel);
    let mut publisher = Conn::binary(a.local_addr());
    for k in 1..=3u64 {
        assert_eq!(publish_acked(&mut publisher, &channel, format!("m{k}").as_bytes()), Ok(k));
    }
    assert_eq!(messages(&mut subscriber, 3).last().map(|m| m.1), Some(3));

    redis.masters[0].kill();
    let survivor = &redis.masters[1];
    let whole = || match survivor.try_command(&["CLUSTER", "INFO"]) {
        Ok(Value::Bulk(Some(info))) => String::from_utf8_lossy(&info).contains("cluster_state:ok"),
        _ => false,
    };
    wait_until("a replica took over the dead master's slots", || {
        whole()
            && redis.master_of_as_seen_by(&format!("fanout:{{{channel}}}"), survivor).port
                != seed_port
    });
    let whole_at = Instant::now();
    let deadline = whole_at + PATIENCE;
    let offset = loop {
        match publish_acked(&mut publisher, &channel, b"after the failover") {
            Ok(offset) => break offset,
            Err((503, _)) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("the node did not follow the failover: {e:?}"),
        }
    };
    eprintln!("publishing again {:?} after cluster_state:ok", whole_at.elapsed());
    // The replica had what was acknowledged (or the channel's epoch ended, and the subscriber
    // is told): either way the new message comes, once, after what came before.
    loop {
        match subscriber.next() {
            Frame::Msg { payload, offset: got, .. } if payload == b"after the failover" => {
                assert_eq!(got, offset);
                break;
            }
            Frame::Msg { offset: got, .. } => assert!(got <= offset),
            Frame::Hist { status, .. } => {
                assert_eq!(status, fanout::history::ResumeStatus::EpochChanged)
            }
            other => panic!("{other:?}"),
        }
    }
    wait_until("both nodes are whole", || {
        [&a, &b].iter().all(|n| http(n.local_addr(), "GET", "/healthz", b"").status == 200)
    });
    assert_eq!(a.stats().cluster_redis_up, 3, "the promoted replica counts, the dead master not");

    // The dead master comes back, as a replica of the one that took over.
    redis.masters[0].restart();
    wait_until("the old master rejoined as a replica", || {
        match redis.masters[0].try_command(&["ROLE"]) {
            Ok(Value::Array(Some(role))) => {
                role.first() == Some(&Value::Bulk(Some(b"slave".to_vec())))
            }
            _ => false,
        }
    });
    thread::sleep(Duration::from_millis(1500));
    for node in [&a, &b] {
        assert_eq!(node.stats().cluster_redis_up, 3, "a replica is not counted as a master");
        assert_eq!(http(node.local_addr(), "GET", "/healthz", b"").status, 200);
    }
    assert!(publish_acked(&mut publisher, &channel, b"still going").is_ok());
}

/// With several Redis servers a connection's channels live on different servers, which answer
/// in their own time; a client matches each acknowledgement to its oldest publish not yet
/// answered (the Rust `Publisher` does), so acknowledgements come back in publish order: one
/// that comes early waits.
#[test]
fn acknowledgements_come_back_in_publish_order_across_servers() {
    let (r1, r2) = (RedisServer::start(), RedisServer::start());
    let server = node(&[&r1, &r2], |_| {});
    let mut publisher = Conn::binary(server.local_addr());
    let names: Vec<String> = (0..16).map(|i| format!("order.{i}")).collect();
    for name in &names {
        assert_eq!(publish_acked(&mut publisher, name, b"where"), Ok(1));
    }
    let on = |redis: &RedisServer, name: &str| {
        redis.integer(&["EXISTS", &format!("fanout:{{{name}}}:meta")]) == 1
    };
    let slow = names.iter().find(|n| on(&r1, n)).expect("a channel on the first server");
    let fast = names.iter().find(|n| on(&r2, n)).expect("a channel on the second server");
    // The first server stalls: the second answers first.
    r1.freeze();
    let sent = [slow, fast, fast, slow, fast];
    for name in sent {
        publisher
            .send(Request::PublishAcked { channel: name.as_bytes(), payload: b"x"[..].into() });
    }
    thread::sleep(Duration::from_millis(300));
    r1.thaw();
    let answered: Vec<String> = sent
        .iter()
        .map(|_| match publisher.next() {
            Frame::Ack { channel, .. } => channel,
            other => panic!("expected an acknowledgement, got {other:?}"),
        })
        .collect();
    let expected: Vec<String> = sent.iter().map(|n| n.to_string()).collect();
    assert_eq!(answered, expected);
}

/// A name has one holder even when Redis loses its leases. A Redis restarted empty: the node
/// takes its clients' leases again as soon as it is back, so a claim elsewhere is refused. A
/// lease that vanished and was claimed by another node's client first: the client here is told
/// (`ERR 409 name lost`), keeps its connection, and no longer receives the inbox.
#[test]
fn a_name_has_one_holder_after_redis_loses_its_leases() {
    let mut redis = RedisServer::start();
    let short_leases = |c: &mut fanout::Config| {
        if let Some(cluster) = c.cluster.as_mut() {
            cluster.name_lease = Duration::from_millis(1500);
        }
    };
    let (a, b) = (node(&[&redis], short_leases), node(&[&redis], short_leases));
    let mut bob = Conn::text(a.local_addr());
    assert_eq!(claim(&mut bob, "bob"), Ok(()));
    // Restarted empty: the lease is gone, and taken again by a when it reconnects.
    redis.restart();
    wait_until("both nodes are back, a with its lease", || {
        [&a, &b].iter().all(|n| http(n.local_addr(), "GET", "/healthz", b"").status == 200)
            && redis.try_command(&["EXISTS", "fanout:{@bob}:name"]) == Ok(Value::Integer(1))
    });
    let mut impostor = Conn::text(b.local_addr());
    let refused = claim(&mut impostor, "bob");
    assert!(matches!(refused, Err((409, _))), "{refused:?}");

    // The lease vanishes and another node's client claims the name first.
    redis.command(&["DEL", "fanout:{@bob}:name"]);
    let mut usurper = Conn::text(b.local_addr());
    assert_eq!(claim(&mut usurper, "bob"), Ok(()));
    loop {
        match bob.next() {
            Frame::Err { code, reason } => {
                assert_eq!(code, 409);
                assert!(reason.contains("name lost"), "{reason}");
                break;
            }
            // The broadcast channel and the inbox started over with Redis (told).
            Frame::Hist { status: fanout::history::ResumeStatus::EpochChanged, .. } => continue,
            other => panic!("expected the name lost, got {other:?}"),
        }
    }
    let mut sender = Conn::binary(a.local_addr());
    assert!(publish_acked(&mut sender, "@bob", b"for bob").is_ok());
    assert_eq!(messages(&mut usurper, 1), vec![("@bob".to_string(), 1, b"for bob".to_vec())]);
    assert_eq!(
        bob.read(Duration::from_millis(300)),
        Read_::Nothing,
        "the old holder hears nothing"
    );
    bob.send(Request::Ping);
    bob.expect(Frame::Pong);
    assert_eq!(a.stats().cluster_leases_lost, 1);
}

/// A resume older than a node's memory reads the stream; when Redis cannot be asked (frozen,
/// then given up on), the resume is refused with 503, to be tried again, never told `expired`
/// for what Redis still holds. Once Redis is back the same resume gets everything.
#[test]
fn a_resume_that_cannot_read_the_stream_is_refused_not_told_expired() {
    let redis = RedisServer::start();
    let (_a, b, _keeper, _publisher, epoch) = deeper_than_memory(&redis, "deeper");
    let resume = || Request::Subscribe {
        channel: b"deeper",
        resume: Some(Resume { after: 2, epoch: Some(epoch), strict: true }),
    };
    redis.freeze();
    let mut resumer = Conn::binary(b.local_addr());
    resumer.send(resume());
    match resumer.next() {
        Frame::Err { code, reason } => {
            assert_eq!(code, 503, "{reason}");
            assert!(reason.contains("broker unavailable"), "{reason}");
        }
        other => panic!("expected ERR 503, got {other:?}"),
    }
    redis.thaw();
    wait_until("b is back", || http(b.local_addr(), "GET", "/healthz", b"").status == 200);
    resumer.send(resume());
    match resumer.next() {
        Frame::Hist { first, status, .. } => {
            assert_eq!((first, status), (3, fanout::history::ResumeStatus::Ok))
        }
        other => panic!("expected HIST, got {other:?}"),
    }
    assert_eq!(messages(&mut resumer, 8).first().map(|m| m.1), Some(3));
}

/// A Redis given by host name is resolved off the broker's thread (getaddrinfo blocks), and
/// connected without waiting; a server that refuses connections is retried, the node serving
/// nothing meanwhile and then everything once it is up.
#[test]
fn a_redis_by_host_name_and_one_that_comes_up_late() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    redis.kill();
    let server = start(|c| {
        let url = format!("redis://localhost:{port}");
        let mut cluster = ClusterConfig::new(vec![url.parse().expect("a Redis URL")]);
        cluster.command_timeout = Duration::from_millis(1000);
        c.cluster = Some(cluster);
    });
    thread::sleep(Duration::from_millis(300));
    assert_eq!(http(server.local_addr(), "GET", "/healthz", b"").status, 503);
    redis.restart();
    wait_until("the node connected through the host name", || {
        http(server.local_addr(), "GET", "/healthz", b"").status == 200
    });
    let mut publisher = Conn::binary(server.local_addr());
    assert_eq!(publish_acked(&mut publisher, "named", b"hello"), Ok(1));
}

/// The broker never waits for room in the ring: with a tiny ring, a burst from another node is
/// read from Redis only as fast as the workers drain it (the rest waits in Redis and TCP), and
/// arrives whole and in order; the node's own publishes are answered meanwhile.
#[test]
fn a_burst_into_a_tiny_ring_arrives_whole_and_in_order() {
    const MESSAGES: u64 = 20_000;
    let redis = RedisServer::start();
    let a = node(&[&redis], |_| {});
    let b = node(&[&redis], |c| c.ring_slots = 64);
    let mut subscriber = Conn::binary(b.local_addr());
    subscriber.subscribe("burst");
    let mut publisher = Conn::binary(a.local_addr());
    let payload = [b'p'; 100];
    for _ in 0..MESSAGES {
        publisher.publish("burst", &payload);
    }
    let mut local = Conn::binary(b.local_addr());
    assert!(publish_acked(&mut local, "elsewhere", b"answered").is_ok());
    for expected in 1..=MESSAGES {
        match subscriber.next() {
            Frame::Msg { offset, .. } => assert_eq!(offset, expected),
            other => panic!("expected message {expected}, got {other:?}"),
        }
    }
    assert_eq!(b.stats().cluster_offsets_lost, 0);
}

/// Presence and join/leave on `room.>`, with a short TTL so that a dead node's members go soon.
fn with_presence(config: &mut fanout::Config) {
    config.presence.presence = vec!["room.>".into()];
    config.presence.join_leave = vec!["room.>".into()];
    config.presence.window = Duration::from_millis(20);
    config.presence.ttl = Duration::from_millis(1500);
}

/// The client ids of `channel`'s members, asked through `conn`.
fn heard_ids(conn: &mut Conn, channel: &str) -> Vec<String> {
    conn.send(Request::Presence { channel: channel.as_bytes(), stats_only: false });
    let mut ids = Vec::new();
    loop {
        match conn.next() {
            Frame::Member { client, .. } => ids.push(client),
            Frame::Presence { .. } => return ids,
            _ => continue,
        }
    }
}

/// `PRESENCE_STATS` through `conn`: (clients, users).
fn presence_stats(conn: &mut Conn, channel: &str) -> (u64, u64) {
    conn.send(Request::Presence { channel: channel.as_bytes(), stats_only: true });
    loop {
        match conn.next() {
            Frame::Presence { clients, users, .. } => return (clients, users),
            Frame::Err { code, reason } => panic!("presence refused: {code} {reason}"),
            _ => continue,
        }
    }
}

#[test]
fn presence_is_every_nodes_members_and_a_killed_nodes_members_leave_within_the_ttl() {
    let redis = RedisServer::start();
    let (a, b) = (node(&[&redis], with_presence), node(&[&redis], with_presence));
    let child = common::ChildServer::start(&[
        "--redis",
        &redis.url(),
        "--presence",
        "room.>",
        "--join-leave",
        "room.>",
        "--join-leave-window-ms",
        "20",
        "--presence-ttl-ms",
        "1500",
        "--node-name",
        "doomed",
    ]);
    wait_until("the child node is ready", || {
        http(child.addr, "GET", "/healthz", b"").status == 200
    });
    let mut watcher = Conn::text(a.local_addr());
    watcher.subscribe("room.1");
    let mut members = Vec::new();
    for (addr, name) in [(b.local_addr(), "bea"), (child.addr, "carl")] {
        let mut conn = Conn::text(addr);
        assert_eq!(claim(&mut conn, name), Ok(()));
        conn.subscribe("room.1");
        members.push(conn);
    }
    // Joins from other nodes arrive, before the members' messages.
    assert_eq!(publish_acked(&mut members[1], "room.1", b"carl speaks"), Ok(1));
    let mut heard = Vec::new();
    while heard.len() < 3 {
        match watcher.next() {
            Frame::Join { user, .. } if !user.is_empty() => heard.push(format!("join {user}")),
            Frame::Msg { payload, .. } => heard.push(String::from_utf8(payload).unwrap()),
            _ => {}
        }
    }
    assert!(heard.contains(&"join bea".into()), "{heard:?}");
    let carl_joined = heard.iter().position(|h| h == "join carl");
    let carl_spoke = heard.iter().position(|h| h == "carl speaks");
    assert!(carl_joined < carl_spoke && carl_joined.is_some(), "join before message: {heard:?}");
    // Presence on any node shows every node's members.
    for addr in [a.local_addr(), b.local_addr(), child.addr] {
        let mut asker = Conn::binary(addr);
        wait_until("every member is in Redis", || presence_stats(&mut asker, "room.1") == (3, 3));
        asker.send(Request::Presence { channel: b"room.1", stats_only: false });
        let mut nodes = Vec::new();
        loop {
            match asker.next() {
                Frame::Member { node, .. } => nodes.push(node),
                Frame::Presence { clients, .. } => break assert_eq!(clients, 3),
                other => panic!("{other:?}"),
            }
        }
        nodes.sort();
        nodes.dedup();
        assert_eq!(nodes.len(), 3, "members of three nodes: {nodes:?}");
    }
    // A node killed outright: its members vanish, and their leaves are announced, within the TTL
    // and a refresh period of the survivors.
    let carl_ids: Vec<String> = heard_ids(&mut Conn::text(child.addr), "room.1");
    let killed = std::time::Instant::now();
    child.kill();
    let mut asker = Conn::text(a.local_addr());
    wait_until("the dead node's members are gone", || {
        presence_stats(&mut asker, "room.1") == (2, 2)
    });
    let gone_after = killed.elapsed();
    loop {
        match watcher.next() {
            Frame::Leave { user, .. } if user == "carl" => break,
            _ => continue,
        }
    }
    let announced_after = killed.elapsed();
    println!("dead node's members: gone from presence after {gone_after:?}, leave after {announced_after:?}");
    assert!(gone_after <= Duration::from_millis(1500 + 1000), "{gone_after:?}");
    assert!(announced_after <= Duration::from_millis(1500 + 500 + 1500), "{announced_after:?}");
    // Restarted under the same name, it is another run: its clients get new ids.
    let child = common::ChildServer::start(&[
        "--redis",
        &redis.url(),
        "--presence",
        "room.>",
        "--node-name",
        "doomed",
    ]);
    wait_until("the restarted node is ready", || {
        http(child.addr, "GET", "/healthz", b"").status == 200
    });
    let mut dora = Conn::text(child.addr);
    assert_eq!(claim(&mut dora, "dora"), Ok(()));
    dora.subscribe("room.1");
    let mut ids = Vec::new();
    let mut asker = Conn::binary(a.local_addr());
    wait_until("dora is in Redis", || presence_stats(&mut asker, "room.1") == (3, 3));
    asker.send(Request::Presence { channel: b"room.1", stats_only: false });
    loop {
        match asker.next() {
            Frame::Member { client, .. } => ids.push(client),
            Frame::Presence { .. } => break,
            other => panic!("{other:?}"),
        }
    }
    let doomed: Vec<&String> = ids.iter().filter(|id| id.starts_with("doomed.")).collect();
    assert_eq!(doomed.len(), 1, "dora alone on the restarted node: {ids:?}");
    assert!(!carl_ids.contains(doomed[0]), "a new run's ids are new: {ids:?} vs {carl_ids:?}");
}

#[test]
fn the_server_api_acts_on_every_node() {
    let redis = RedisServer::start();
    let secured = |c: &mut fanout::Config| {
        with_presence(c);
        // Long: members leave here only because their node says so (below), not by expiry.
        c.presence.ttl = Duration::from_secs(60);
        c.auth.api_key = Some(b"the-api-key".to_vec());
        c.auth.anonymous_subscribe = vec![">".into()];
        c.auth.anonymous_publish = vec![">".into()];
    };
    let (a, b) = (node(&[&redis], secured), node(&[&redis], secured));
    let api = |method: &str, target: &str, body: &[u8]| {
        let headers = "Authorization: Bearer the-api-key\r\n";
        let response = common::http_with(a.local_addr(), method, target, headers, body);
        assert_eq!(response.status, 200, "{target}: {}", String::from_utf8_lossy(&response.body));
        response.json()
    };
    // Alice on node B, by name (a token without `sub`: her user is her name).
    let mut alice_text = Conn::text(b.local_addr());
    alice_text.send(Request::Auth { token: b"the-api-key" });
    alice_text.next();
    assert_eq!(claim(&mut alice_text, "alice"), Ok(()));
    alice_text.subscribe("room.1");
    alice_text.subscribe("room.2");
    let mut bob = Conn::text(a.local_addr());
    bob.subscribe("room.1");
    wait_until("both members are in Redis", || {
        api("GET", "/api/presence_stats?channel=room.1", b"")["clients"] == 2
    });
    let presence = api("GET", "/api/presence?channel=room.1", b"");
    let mut users: Vec<String> = presence["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["user"].as_str().unwrap_or_default().to_string())
        .collect();
    users.sort();
    assert_eq!(users, ["", "alice"]);
    let channels = api("GET", "/api/channels?pattern=room.*", b"");
    assert_eq!(channels["nodes"], 2, "{channels}");
    assert_eq!(
        channels["channels"][0],
        serde_json::json!({ "channel": "room.1", "subscribers": 2 })
    );
    let info = api("GET", "/api/info", b"");
    assert_eq!(info["nodes"].as_array().map(Vec::len), Some(2), "{info}");
    // With each node's top channels (what /admin reads): room.1 has a subscriber on each.
    let info = api("GET", "/api/info?top=5", b"");
    let nodes = info["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 2, "{info}");
    for node in nodes {
        let top = &node["top"]["by_subscribers"][0];
        assert_eq!(
            (top["channel"].as_str(), top["subscribers"].as_u64()),
            (Some("room.1"), Some(1)),
            "{node}"
        );
        assert_eq!(node["redis"]["links_up"], 1, "{node}");
    }
    // Published on node A, read back through the history of node A (which serves it now).
    assert_eq!(api("POST", "/api/publish", br#"{"channel":"room.2","data":"x"}"#)["offset"], 1);
    let history = api("GET", "/api/history?channel=room.2", b"");
    assert_eq!(history["messages"][0]["data"], "x", "{history}");
    // Unsubscribe and disconnect, asked of node A, carried out on node B.
    let reached = api("POST", "/api/unsubscribe?user=alice&channel=room.1&reason=moved", b"");
    assert_eq!(reached["nodes"], 2, "{reached}");
    loop {
        match alice_text.next() {
            Frame::Unsubscribed { channel, reason } => {
                assert_eq!((channel.as_str(), reason.as_str()), ("room.1", "moved"));
                break;
            }
            _ => continue,
        }
    }
    api("POST", "/api/disconnect?user=alice&reason=banned", b"");
    loop {
        match alice_text.read(PATIENCE) {
            Read_::Frame(Frame::Err { code, reason }) => {
                assert_eq!(code, 403);
                assert!(reason.contains("banned"), "{reason}");
            }
            Read_::Frame(_) => continue,
            Read_::Closed => break,
            Read_::Nothing => panic!("alice was not disconnected"),
        }
    }
    bob.barrier();
    // A node that stops cleanly takes its members with it at once (not after the TTL).
    let mut carol = Conn::text(b.local_addr());
    carol.subscribe("room.1");
    wait_until("carol is in Redis", || {
        api("GET", "/api/presence_stats?channel=room.1", b"")["clients"] == 2
    });
    let carol_id = loop {
        if let Frame::Join { client, .. } = bob.next() {
            break client;
        }
    };
    b.shutdown();
    loop {
        match bob.next() {
            Frame::Leave { client, .. } if client == carol_id => break,
            _ => continue,
        }
    }
    wait_until("carol's node said she left", || {
        api("GET", "/api/presence_stats?channel=room.1", b"")["clients"] == 1
    });
}

#[test]
fn a_nodes_own_members_are_in_its_presence_answers_before_its_window_reaches_redis() {
    let redis = RedisServer::start();
    let slow_window = |c: &mut fanout::Config| {
        with_presence(c);
        // Presence without join/leave: a member is shown at once (with events, once its join
        // has gone out).
        c.presence.join_leave = Vec::new();
        c.presence.window = Duration::from_secs(3);
        // No refresh (every third of the TTL) in the test's time: only the window writes.
        c.presence.ttl = Duration::from_secs(60);
    };
    let (a, b) = (node(&[&redis], slow_window), node(&[&redis], slow_window));
    let mut xavier = Conn::text(a.local_addr());
    assert_eq!(claim(&mut xavier, "xavier"), Ok(()));
    xavier.subscribe("room.1");
    // Node A answers from its memory for its own members at once; node B sees them once A's
    // window has gone to Redis.
    assert_eq!(presence_stats(&mut Conn::text(a.local_addr()), "room.1"), (1, 1));
    assert_eq!(presence_stats(&mut Conn::text(b.local_addr()), "room.1"), (0, 0));
    wait_until("the window reached Redis", || {
        presence_stats(&mut Conn::text(b.local_addr()), "room.1") == (1, 1)
    });
}

#[test]
fn joins_come_once_with_a_pattern_too_and_survive_a_script_flush() {
    let redis = RedisServer::start();
    let (a, b) = (node(&[&redis], with_presence), node(&[&redis], with_presence));
    let mut watcher = Conn::text(a.local_addr());
    watcher.subscribe("room.1");
    // A pattern matching the channel on the same node: Redis then sends its envelopes twice.
    let mut pattern = Conn::text(a.local_addr());
    pattern.send(Request::PatternSubscribe { pattern: b"room.*" });
    pattern.next();
    let mut members = Vec::new();
    for name in ["m1", "m2"] {
        let mut conn = Conn::text(b.local_addr());
        assert_eq!(claim(&mut conn, name), Ok(()));
        conn.subscribe("room.1");
        members.push(conn);
    }
    // Redis forgets the scripts: the next window is sent whole, and the next query too.
    redis.command(&["SCRIPT", "FLUSH"]);
    let mut m3 = Conn::text(b.local_addr());
    assert_eq!(claim(&mut m3, "m3"), Ok(()));
    m3.subscribe("room.1");
    let mut joins = Vec::new();
    while joins.len() < 3 {
        if let Frame::Join { user, .. } = watcher.next() {
            if !user.is_empty() {
                joins.push(user);
            }
        }
    }
    // m3's message comes after its join; by then every join has come, each once.
    assert_eq!(publish_acked(&mut m3, "room.1", b"after"), Ok(1));
    loop {
        match watcher.next() {
            Frame::Msg { payload, .. } if payload == b"after" => break,
            Frame::Join { user, .. } if !user.is_empty() => joins.push(user),
            _ => {}
        }
    }
    for frame in watcher.barrier() {
        if let Frame::Join { user, .. } = frame {
            joins.push(user);
        }
    }
    joins.retain(|user| !user.is_empty());
    joins.sort();
    assert_eq!(joins, ["m1", "m2", "m3"], "each join once");
    assert_eq!(presence_stats(&mut Conn::text(a.local_addr()), "room.1"), (4, 4));
}

#[test]
fn presence_and_the_api_work_over_a_redis_cluster() {
    let redis = common::redis::RedisCluster::start(3);
    let seed = &redis.masters[0];
    let (a, b) =
        (node_in_redis_cluster(seed, with_presence), node_in_redis_cluster(seed, with_presence));
    // Channels on several masters: each channel's presence keys are on its own slot.
    let rooms: Vec<String> = (0..6).map(|i| format!("room.{i}")).collect();
    let mut watcher = Conn::text(a.local_addr());
    let mut member = Conn::text(b.local_addr());
    assert_eq!(claim(&mut member, "mia"), Ok(()));
    for room in &rooms {
        watcher.subscribe(room);
    }
    for room in &rooms {
        member.subscribe(room);
    }
    let mut joined = std::collections::BTreeSet::new();
    while joined.len() < rooms.len() {
        if let Frame::Join { channel, user, .. } = watcher.next() {
            if user == "mia" {
                joined.insert(channel);
            }
        }
    }
    for room in &rooms {
        wait_until("mia is in every room's presence", || {
            presence_stats(&mut Conn::text(a.local_addr()), room) == (2, 2)
        });
    }
    let holds = |master: &RedisServer, room: &str| {
        let key = format!("fanout:{{{room}}}:presence");
        master.try_command(&["EXISTS", &key]) == Ok(Value::Integer(1))
    };
    let holders = redis.masters.iter().filter(|m| rooms.iter().any(|r| holds(m, r))).count();
    assert!(holders >= 2, "the rooms' presence is spread over the masters");
    // The API's surveys and orders reach every node through the cluster.
    let channels = http(a.local_addr(), "GET", "/api/channels?pattern=room.*", b"").json();
    assert_eq!(channels["nodes"], 2, "{channels}");
    assert_eq!(channels["channels"].as_array().map(Vec::len), Some(rooms.len()), "{channels}");
    let done = http(a.local_addr(), "POST", "/api/unsubscribe?user=mia&channel=room.3", b"").json();
    assert_eq!(done["nodes"], 2, "{done}");
    loop {
        if let Frame::Unsubscribed { channel, .. } = member.next() {
            assert_eq!(channel, "room.3");
            break;
        }
    }
    loop {
        if let Frame::Leave { channel, user, .. } = watcher.next() {
            assert_eq!((channel.as_str(), user.as_str()), ("room.3", "mia"));
            break;
        }
    }
}

#[test]
fn presence_comes_back_whole_after_redis_restarts_empty() {
    let mut redis = RedisServer::start();
    let long_ttl = |c: &mut fanout::Config| {
        with_presence(c);
        // No refresh in the test's time: only the reconnect rewrites the sets.
        c.presence.ttl = Duration::from_secs(60);
    };
    let (a, b) = (node(&[&redis], long_ttl), node(&[&redis], long_ttl));
    let mut members = Vec::new();
    for (addr, name) in [(a.local_addr(), "ann"), (b.local_addr(), "ben")] {
        let mut conn = Conn::text(addr);
        assert_eq!(claim(&mut conn, name), Ok(()));
        conn.subscribe("room.1");
        members.push(conn);
    }
    wait_until("both are in Redis", || {
        presence_stats(&mut Conn::text(a.local_addr()), "room.1") == (2, 2)
    });
    // Redis comes back with nothing (no persistence): each node writes its members again.
    redis.restart();
    wait_until("each node's members are back in Redis", || {
        http(a.local_addr(), "GET", "/healthz", b"").status == 200
            && presence_stats(&mut Conn::text(a.local_addr()), "room.1") == (2, 2)
            && presence_stats(&mut Conn::text(b.local_addr()), "room.1") == (2, 2)
    });
    assert_eq!(redis.integer(&["EXISTS", "fanout:{room.1}:presence"]), 1);
}

/// A namespace's history holds in a cluster too: the stream (the cluster's history, kept to the
/// longest any namespace asks) gives a resume only the namespace's last messages.
#[test]
fn a_namespaces_history_limit_holds_for_resumes_read_from_the_stream() {
    let redis = RedisServer::start();
    let short = |c: &mut fanout::Config| {
        c.namespaces = vec![fanout::namespace::Namespace {
            pattern: "short.>".into(),
            history_messages: Some(3),
            ..Default::default()
        }];
    };
    let a = node(&[&redis], short);
    let mut publisher = Conn::binary(a.local_addr());
    for k in 1..=10 {
        publish_acked(&mut publisher, "short.x", format!("s{k}").as_bytes()).expect("published");
        publish_acked(&mut publisher, "long", format!("l{k}").as_bytes()).expect("published");
    }
    // A node that joins now holds nothing in memory: resumes are read from the stream.
    let b = node(&[&redis], short);
    let mut resumer = Conn::text(b.local_addr());
    let offsets = |conn: &mut Conn, channel: &str| -> Vec<u64> {
        conn.send(Request::Subscribe {
            channel: channel.as_bytes(),
            resume: Some(Resume { after: 0, epoch: None, strict: false }),
        });
        let mut got = Vec::new();
        loop {
            match conn.next() {
                Frame::Msg { offset, .. } => got.push(offset),
                Frame::Ok { ack: Ack::Subscribe, .. } => return got,
                _ => {}
            }
        }
    };
    assert_eq!(offsets(&mut resumer, "short.x"), vec![8, 9, 10], "the namespace keeps 3");
    assert_eq!(offsets(&mut resumer, "long"), (1..=10).collect::<Vec<_>>(), "the rest, all");
}

/// A slot moved behind the node's back (a resharding the node has not heard of: no subscriber
/// there, so no sharded subscription ends): the moved channel's publish is refused before any of
/// it ran (Redis answers MOVED to a call whose declared keys are elsewhere), the other channel in
/// the same write goes through, the node reads the slot map again, and the channel's offsets go
/// on from its new master, nothing burned.
#[test]
fn a_slot_moved_behind_the_nodes_back_refuses_only_its_channel_and_is_followed() {
    let redis = common::redis::RedisCluster::start(3);
    let a = node_in_redis_cluster(&redis.masters[0], |_| {});
    let topic = |name: &str| format!("fanout:{{{name}}}");
    let slot = |name: &str| fanout::cluster::key_slot(topic(name).as_bytes());
    let moved = "mv.0".to_string();
    let owner = redis.master_of(&topic(&moved));
    let stays = (1..2000)
        .map(|i| format!("mv.{i}"))
        .find(|n| std::ptr::eq(redis.master_of(&topic(n)), owner) && slot(n) != slot(&moved))
        .expect("another slot of the same master");
    let mut publisher = Conn::binary(a.local_addr());
    for name in [&moved, &stays] {
        assert_eq!(publish_acked(&mut publisher, name, b"one"), Ok(1), "{name}");
    }
    // Move the slot to another master, keys and all.
    let target = redis.masters.iter().find(|m| !std::ptr::eq(*m, owner)).expect("a master");
    let id = |m: &RedisServer| match m.command(&["CLUSTER", "MYID"]) {
        Value::Bulk(Some(id)) => String::from_utf8(id).expect("an id"),
        other => panic!("{other:?}"),
    };
    let (owner_id, target_id) = (id(owner), id(target));
    let s = slot(&moved).to_string();
    target.command(&["CLUSTER", "SETSLOT", &s, "IMPORTING", &owner_id]);
    owner.command(&["CLUSTER", "SETSLOT", &s, "MIGRATING", &target_id]);
    let keys: Vec<String> = match owner.command(&["CLUSTER", "GETKEYSINSLOT", &s, "100"]) {
        Value::Array(Some(keys)) => keys
            .into_iter()
            .map(|k| match k {
                Value::Bulk(Some(k)) => String::from_utf8(k).expect("a key"),
                other => panic!("{other:?}"),
            })
            .collect(),
        other => panic!("{other:?}"),
    };
    assert!(keys.len() >= 2, "the channel's keys: {keys:?}");
    let port = target.port.to_string();
    let mut migrate = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
    migrate.extend(keys.iter().map(String::as_str));
    owner.command(&migrate);
    for master in &redis.masters {
        master.command(&["CLUSTER", "SETSLOT", &s, "NODE", &target_id]);
    }
    // Both publishes in one write: one call to the old owner, as the node's map still says.
    let mut frames = Vec::new();
    for name in [&moved, &stays] {
        fanout::protocol::binary::encode_request(
            &Request::PublishAcked { channel: name.as_bytes(), payload: b"two".to_vec().into() },
            &mut frames,
        );
    }
    publisher.send_raw(&frames);
    let mut answers = Vec::new();
    for _ in 0..2 {
        answers.push(match publisher.next() {
            Frame::Ack { channel, offset } => Ok((channel, offset)),
            Frame::Err { code, reason } => Err((code, reason)),
            other => panic!("expected an answer, got {other:?}"),
        });
    }
    match &answers[0] {
        Err((503, reason)) => assert!(reason.contains("publish again"), "{reason}"),
        other => panic!("the moved channel's publish: {other:?}"),
    }
    assert_eq!(answers[1], Ok((stays.clone(), 2)), "the other channel of the call went through");
    // Publishing again reaches the slot's new master; nothing of the refused one ran.
    let offset = (0..50)
        .find_map(|_| match publish_acked(&mut publisher, &moved, b"two") {
            Ok(offset) => Some(offset),
            Err((503, _)) => {
                thread::sleep(Duration::from_millis(100));
                None
            }
            Err(other) => panic!("{other:?}"),
        })
        .expect("the moved channel is published to again");
    assert_eq!(offset, 2);
    assert!(target.integer(&["EXISTS", &format!("{}:log", topic(&moved))]) == 1);
}

/// One channel's keys in a state the sync script cannot read (a meta key that is not a hash, as
/// an outside tester wrote by hand): that channel's subscriber waits, while the node's Redis
/// connection and every other channel go on (before, the node dropped the connection over it,
/// again and again, and refused every publish); once the key is repaired, the waiting
/// subscriber is served.
#[test]
fn a_channel_whose_keys_cannot_be_read_waits_alone() {
    let redis = RedisServer::start();
    let a = node(&[&redis], |_| {});
    redis.command(&["SET", "fanout:{broken}:meta", "not a hash"]);
    let mut waiting = Conn::text(a.local_addr());
    waiting.send(Request::Subscribe { channel: b"broken", resume: None });
    wait_until("the failed sync is counted", || a.stats().cluster_sync_failures >= 1);
    let mut other = Conn::text(a.local_addr());
    other.subscribe("fine");
    let mut publisher = Conn::binary(a.local_addr());
    for k in 1..=3u64 {
        assert_eq!(publish_acked(&mut publisher, "fine", b"still here"), Ok(k));
    }
    assert_eq!(messages(&mut other, 3).len(), 3);
    assert_eq!(a.stats().cluster_redis_up, 1, "the connection stayed up");
    assert_eq!(waiting.read(Duration::from_millis(200)), Read_::Nothing, "not served yet");
    redis.command(&["DEL", "fanout:{broken}:meta"]);
    waiting.expect(Frame::Ok { ack: Ack::Subscribe, arg: "broken".into() });
    assert_eq!(publish_acked(&mut publisher, "broken", b"repaired"), Ok(1));
    assert_eq!(messages(&mut waiting, 1), vec![("broken".into(), 1, b"repaired".to_vec())]);
}
