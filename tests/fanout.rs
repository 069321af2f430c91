//! Fan-out end to end: many subscribers on both workers, publishers on different workers, both
//! wire formats; every subscriber gets every message of its channels once, in offset order.

mod common;

use std::collections::HashMap;
use std::thread;

use common::{start, wait_until, Conn, Frame, Read_};
use fanout::protocol::{Ack, Format, Request};

/// Opens connections until one lands on each worker; returns them in worker order.
fn one_per_worker(server: &fanout::ServerHandle, format: Format) -> Vec<Conn> {
    let workers = server.worker_stats().len();
    let mut placed: Vec<Option<Conn>> = (0..workers).map(|_| None).collect();
    for _ in 0..200 {
        let before: Vec<u64> = server.worker_stats().iter().map(|s| s.connections_total).collect();
        let mut conn = Conn::open(server.local_addr(), format);
        conn.barrier();
        let after: Vec<u64> = server.worker_stats().iter().map(|s| s.connections_total).collect();
        let worker =
            (0..workers).find(|&w| after[w] > before[w]).expect("the connection landed somewhere");
        if placed[worker].is_none() {
            placed[worker] = Some(conn);
        }
        if placed.iter().all(Option::is_some) {
            return placed.into_iter().flatten().collect();
        }
    }
    panic!("the kernel never spread 200 connections over {workers} workers");
}

#[test]
fn every_subscriber_gets_every_message_once_in_offset_order() {
    const SUBSCRIBERS: usize = 200;
    const PER_PUBLISHER: usize = 1000;
    const CHANNELS: [&str; 3] = ["alpha", "beta", "gamma"];
    let server = start(|_| {});
    let addr = server.local_addr();

    // Half text, half binary; each subscribes to two of the three channels.
    let mut subscribers: Vec<(Conn, [&str; 2])> = (0..SUBSCRIBERS)
        .map(|i| {
            let format = if i % 2 == 0 { Format::Text } else { Format::Binary };
            let mut conn = Conn::open(addr, format);
            let channels = [CHANNELS[i % 3], CHANNELS[(i + 1) % 3]];
            for channel in channels {
                conn.subscribe(channel);
            }
            (conn, channels)
        })
        .collect();
    let per_worker: Vec<u64> =
        server.worker_stats().iter().map(|s| s.connections_current).collect();
    assert!(
        per_worker.iter().all(|&n| n > 20),
        "subscribers spread over both workers: {per_worker:?}"
    );

    // Three publishers, on different workers (two on one, one on the other), publishing
    // concurrently to shared channels.
    let mut publishers = one_per_worker(&server, Format::Binary);
    publishers.push(Conn::text(addr));
    let handles: Vec<_> = publishers
        .into_iter()
        .enumerate()
        .map(|(p, mut conn)| {
            thread::spawn(move || {
                for i in 0..PER_PUBLISHER {
                    let payload = format!("p{p}-{i}");
                    conn.publish(CHANNELS[i % 3], payload.as_bytes());
                }
                conn.barrier();
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }

    // What each channel received, per publisher, in publish order.
    let mut expected_per_channel: HashMap<&str, usize> = HashMap::new();
    for i in 0..PER_PUBLISHER {
        *expected_per_channel.entry(CHANNELS[i % 3]).or_default() += 3;
    }
    let mut reference: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
    for (conn, channels) in &mut subscribers {
        let want: usize = channels.iter().map(|c| expected_per_channel[c]).sum();
        let mut got: HashMap<String, Vec<(u64, Vec<u8>)>> = HashMap::new();
        for _ in 0..want {
            match conn.next() {
                Frame::Msg { channel, offset, payload } => {
                    got.entry(channel).or_default().push((offset, payload))
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(conn.barrier().is_empty(), "no message beyond the expected ones");
        for channel in channels.iter() {
            let messages = &got[*channel];
            let offsets: Vec<u64> = messages.iter().map(|(o, _)| *o).collect();
            let contiguous: Vec<u64> = (1..=expected_per_channel[channel] as u64).collect();
            assert_eq!(
                offsets, contiguous,
                "{channel}: offsets contiguous from 1, in order, no duplicates"
            );
            // Per publisher, payloads arrive in publish order.
            let mut next_index = [0usize; 3];
            for (_, payload) in messages {
                let text = String::from_utf8(payload.clone()).unwrap();
                let (p, i) = text[1..].split_once('-').unwrap();
                let (p, i): (usize, usize) = (p.parse().unwrap(), i.parse().unwrap());
                assert!(i >= next_index[p], "publisher {p} reordered on {channel}");
                assert_eq!(CHANNELS[i % 3], *channel);
                next_index[p] = i + 1;
            }
            // Every subscriber of a channel sees the same sequence (offset -> payload).
            let sequence: Vec<Vec<u8>> = messages.iter().map(|(_, p)| p.clone()).collect();
            let first = reference.entry(channel.to_string()).or_insert_with(|| sequence.clone());
            assert_eq!(*first, sequence, "{channel}: all subscribers agree on offset order");
        }
    }
    let stats = server.stats();
    assert_eq!(stats.messages_in, 3 * PER_PUBLISHER as u64);
    assert_eq!(stats.protocol_errors + stats.slow_consumer_closes, 0);
    server.shutdown();
}

#[test]
fn a_publisher_subscribed_to_its_channel_receives_its_own_message() {
    let server = start(|_| {});
    for format in [Format::Text, Format::Binary] {
        let mut conn = Conn::open(server.local_addr(), format);
        conn.subscribe("echo");
        conn.publish("echo", b"to myself");
        let frame = conn.next();
        assert!(
            matches!(frame, Frame::Msg { ref channel, ref payload, .. } if channel == "echo" && payload == b"to myself")
        );
    }
}

#[test]
fn pong_is_a_barrier_after_subscribe() {
    let server = start(|_| {});
    let mut text = Conn::text(server.local_addr());
    text.send_raw(b"SUB news\r\nPING\r\n");
    assert_eq!(text.next(), Frame::Ok { ack: Ack::Subscribe, arg: "news".into() });
    assert_eq!(text.next(), Frame::Pong);
    // Any publish after the PONG reaches the subscriber, from either worker.
    for _ in 0..4 {
        let mut publisher = Conn::binary(server.local_addr());
        publisher.publish("news", b"after the barrier");
        publisher.barrier();
        assert!(
            matches!(text.next(), Frame::Msg { ref payload, .. } if payload == b"after the barrier")
        );
    }
}

#[test]
fn unsubscribe_stops_delivery_and_other_subscribers_keep_theirs() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut subscribers: Vec<Conn> = (0..6).map(|_| Conn::text(addr)).collect();
    for conn in &mut subscribers {
        conn.subscribe("room");
    }
    // Unsubscribe a middle one and the first (exercises the index's swap_remove fix-ups).
    for i in [2, 0] {
        subscribers[i].send(Request::Unsubscribe { channel: b"room" });
        subscribers[i].expect(Frame::Ok { ack: Ack::Unsubscribe, arg: "room".into() });
    }
    drop(subscribers.remove(4)); // and one disconnects
    let mut publisher = Conn::binary(addr);
    publisher.publish("room", b"hello");
    publisher.barrier();
    for (i, conn) in subscribers.iter_mut().enumerate() {
        let frames = conn.barrier();
        if i == 0 || i == 2 {
            assert!(frames.is_empty(), "unsubscribed connection {i} got {frames:?}");
        } else {
            assert_eq!(
                frames,
                vec![Frame::Msg { channel: "room".into(), offset: 1, payload: b"hello".to_vec() }]
            );
        }
    }
}

#[test]
fn broadcast_reaches_everyone_and_direct_messages_reach_one_named_client() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut alice = Conn::text(addr);
    alice.send_raw(b"NAME alice\n");
    alice.expect(Frame::Ok { ack: Ack::Name, arg: "alice".into() });
    let mut bob = Conn::binary(addr);
    bob.send(Request::Name { name: b"bob" });
    bob.expect(Frame::Ok { ack: Ack::Name, arg: "bob".into() });
    let mut quiet = Conn::text(addr);
    quiet.barrier();

    // A second claim of a taken name is refused; the connection stays usable.
    let mut impostor = Conn::text(addr);
    impostor.send_raw(b"NAME alice\n");
    assert!(matches!(impostor.next(), Frame::Err { code: 409, .. }));
    impostor.send_raw(b"PUB @alice psst\nPUB @nobody hello?\n");
    assert!(matches!(impostor.next(), Frame::Err { code: 404, .. }));
    impostor.send_raw(b"PUB * everyone\n");

    alice.expect(Frame::Msg { channel: "@alice".into(), offset: 1, payload: b"psst".to_vec() });
    for conn in [&mut alice, &mut bob, &mut quiet, &mut impostor] {
        let frame = conn.next();
        assert_eq!(
            frame,
            Frame::Msg { channel: "*".into(), offset: 1, payload: b"everyone".to_vec() }
        );
    }
    assert!(bob.barrier().is_empty(), "bob gets no direct message meant for alice");

    // The name is released when its holder disconnects.
    drop(alice);
    wait_until("alice's name is released", || {
        let mut claimer = Conn::text(addr);
        claimer.send_raw(b"NAME alice\n");
        claimer.next() == Frame::Ok { ack: Ack::Name, arg: "alice".into() }
    });
}

#[test]
fn a_full_ring_stalls_the_publisher_instead_of_dropping() {
    const MESSAGES: u64 = 20_000;
    // Four slots: the ring is full almost all the time.
    let server = start(|config| config.ring_slots = 4);
    let mut subscribers = one_per_worker(&server, Format::Binary);
    for conn in &mut subscribers {
        conn.subscribe("narrow");
    }
    let mut publishers = one_per_worker(&server, Format::Binary);
    let handles: Vec<_> = publishers
        .drain(..)
        .map(|mut publisher| {
            thread::spawn(move || {
                for i in 0..MESSAGES / 2 {
                    publisher.publish("narrow", &i.to_be_bytes());
                }
                publisher.barrier();
            })
        })
        .collect();
    for conn in &mut subscribers {
        for offset in 1..=MESSAGES {
            match conn.next() {
                Frame::Msg { offset: got, .. } => assert_eq!(got, offset),
                other => panic!("{other:?}"),
            }
        }
    }
    for handle in handles {
        handle.join().unwrap();
    }
    let stats = server.stats();
    assert_eq!(stats.messages_in, MESSAGES);
    assert!(stats.ring_full_stalls > 0, "a 4-slot ring must have been full: {stats}");
}

#[test]
fn write_coalescing_delivers_everything_in_order() {
    const MESSAGES: u64 = 500;
    let server = start(|config| config.coalesce = std::time::Duration::from_millis(50));
    let addr = server.local_addr();
    let mut subscribers: Vec<Conn> = (0..4).map(|_| Conn::text(addr)).collect();
    for conn in &mut subscribers {
        conn.subscribe("coalesced");
    }
    let mut publisher = Conn::binary(addr);
    let mut early = Vec::new();
    for i in 0..MESSAGES {
        publisher.publish("coalesced", format!("m{i}").as_bytes());
        if i % 100 == 0 {
            // Replies to a connection's own commands are never held back (and any messages
            // that were, arrive before the PONG).
            early.extend(subscribers[0].barrier());
        }
    }
    publisher.barrier();
    for (i, conn) in subscribers.iter_mut().enumerate() {
        let mut next = 1;
        if i == 0 {
            for frame in &early {
                assert!(matches!(frame, Frame::Msg { offset, .. } if *offset == next), "{frame:?}");
                next += 1;
            }
        }
        while next <= MESSAGES {
            match conn.next() {
                Frame::Msg { offset, payload, .. } => {
                    assert_eq!(offset, next);
                    assert_eq!(payload, format!("m{}", next - 1).into_bytes());
                    next += 1;
                }
                other => panic!("{other:?}"),
            }
        }
    }
}

/// What coalescing promises, each part able to fail: a subscriber written to within the window
/// gets its next messages only when the window has passed (held), and a connection's own reply
/// is never held (the PONG comes at once, with what was held before it). The window is long
/// (3 s) and the bounds a third of it, so that a slow machine cannot make it pass or fail by
/// accident.
#[test]
fn write_coalescing_holds_messages_for_the_window_but_never_a_reply() {
    use std::time::{Duration, Instant};
    let window = Duration::from_secs(3);
    let server = start(|config| config.coalesce = window);
    let addr = server.local_addr();
    let (mut quiet, mut asking) = (Conn::text(addr), Conn::text(addr));
    quiet.subscribe("held");
    asking.subscribe("held");
    let mut publisher = Conn::binary(addr);
    publisher.publish("held", b"first");
    for conn in [&mut quiet, &mut asking] {
        assert!(matches!(conn.next(), Frame::Msg { offset: 1, .. }));
    }
    // Both were just written to: the next message waits for the window.
    publisher.publish("held", b"second");
    publisher.barrier();
    match quiet.read(window / 3) {
        Read_::Nothing => {}
        other => panic!("a message within the window was not held: {other:?}"),
    }
    let asked = Instant::now();
    let before_pong = asking.barrier();
    assert!(asked.elapsed() < window / 3, "the reply waited {:?}", asked.elapsed());
    let held: Vec<u64> = common::messages_of(before_pong).iter().map(|(o, _)| *o).collect();
    assert_eq!(held, vec![2], "what was held goes out before the reply");
    // The quiet one gets it once the window has passed.
    assert!(matches!(quiet.next(), Frame::Msg { offset: 2, .. }));
}
