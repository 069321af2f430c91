//! A client that never reads is disconnected as a slow consumer, with the reason, while 50 others
//! receive all 10,000 messages; no queue ever passes the cap.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;

use common::{start, wait_until, Conn, Frame};

#[test]
fn a_client_that_never_reads_is_cut_off_and_nobody_else_notices() {
    const READERS: usize = 50;
    const MESSAGES: u64 = 10_000;
    const WINDOW: u64 = 200;
    const CAP: usize = 1 << 20;
    let server = start(|config| {
        config.write_queue_cap_bytes = CAP;
        config.max_frame_bytes = 16 * 1024;
    });
    let addr = server.local_addr();
    let payload = vec![b'x'; 2000]; // 20 MB in all: more than kernel buffers can hide

    let mut never_reads = Conn::binary(addr);
    never_reads.subscribe("flood");
    let received: Vec<AtomicU64> = (0..READERS).map(|_| AtomicU64::new(0)).collect();

    thread::scope(|scope| {
        for (i, progress) in received.iter().enumerate() {
            let mut reader = if i % 2 == 0 { Conn::text(addr) } else { Conn::binary(addr) };
            reader.subscribe("flood");
            scope.spawn(move || {
                for offset in 1..=MESSAGES {
                    match reader.next() {
                        Frame::Msg { channel, offset: got, payload } => {
                            assert_eq!(
                                (channel.as_str(), got, payload.len()),
                                ("flood", offset, 2000)
                            );
                        }
                        other => panic!("reader {i}: {other:?}"),
                    }
                    progress.store(offset, Ordering::Relaxed);
                }
            });
        }
        // The slow consumer gets the reason, after whatever was already on its way.
        let server = &server;
        scope.spawn(move || {
            wait_until("the slow consumer is cut off", || server.stats().slow_consumer_closes == 1);
            let reason = never_reads.expect_error_and_close(507);
            assert!(reason.contains("slow consumer"), "{reason}");
        });

        // Publish as fast as the slowest *reading* subscriber allows.
        let mut publisher = Conn::binary(addr);
        for sent in 1..=MESSAGES {
            publisher.publish("flood", &payload);
            if sent % 50 == 0 {
                wait_until("readers keep up", || {
                    received.iter().map(|r| r.load(Ordering::Relaxed)).min().unwrap() + WINDOW
                        >= sent
                });
            }
        }
        publisher.barrier();
    });

    let stats = server.stats();
    assert_eq!(stats.slow_consumer_closes, 1);
    assert!(stats.queue_high_water_bytes <= CAP as u64, "queue passed its cap: {stats}");
    assert_eq!(stats.messages_in, MESSAGES);
}

#[test]
fn a_burst_larger_than_the_queue_cap_is_not_a_slow_consumer() {
    // 24 x 8 KiB arrive in one read, so they are in the ring together: three times the 64 KiB
    // cap, for a subscriber that reads all along. The server must hand them over in pieces the
    // queue can hold, not as one batch that looks like a slow consumer.
    const CAP: usize = 64 * 1024;
    const BURST: u64 = 24;
    let server = start(|config| {
        config.write_queue_cap_bytes = CAP;
        config.max_frame_bytes = 16 * 1024;
        config.workers = 1;
    });
    let addr = server.local_addr();
    let mut subscriber = Conn::binary(addr);
    subscriber.subscribe("burst");
    let mut publisher = Conn::binary(addr);
    let payload = vec![7u8; 8 * 1024];
    let mut frames = Vec::new();
    for _ in 0..BURST {
        fanout::protocol::binary::encode_request(
            &fanout::protocol::Request::Publish {
                channel: b"burst",
                payload: (&payload[..]).into(),
            },
            &mut frames,
        );
    }
    let reader = thread::spawn(move || {
        for offset in 1..=BURST {
            match subscriber.next() {
                Frame::Msg { offset: got, .. } => assert_eq!(got, offset),
                other => panic!("{other:?}"),
            }
        }
    });
    publisher.send_raw(&frames);
    reader.join().expect("the subscriber got the whole burst");
    assert_eq!(server.stats().slow_consumer_closes, 0);
    assert!(server.stats().queue_high_water_bytes <= CAP as u64 / 4 + 8 * 1024 + 64);
}

/// A client that sends commands and never reads their answers (a PING flood, on every command
/// protocol) is not read any more once its own replies back up: TCP pushes back on it, its
/// queue stays near `REPLY_BACKLOG_BYTES` instead of growing to the cap (where two-byte pongs
/// held a hundred times the cap in memory), and a subscriber on the same worker keeps receiving.
/// When it reads again, every answer comes, in order, and it goes on.
#[test]
fn a_client_that_does_not_read_its_own_replies_is_not_read_either() {
    use std::io::{ErrorKind, Write};
    use std::time::{Duration, Instant};
    let server = start(|config| config.workers = 1);
    let addr = server.local_addr();
    let mut bystander = Conn::text(addr);
    bystander.subscribe("calm");
    for format in [fanout::protocol::Format::Text, fanout::protocol::Format::WsJson] {
        let mut flooder = Conn::open(addr, format);
        let mut ping = Vec::new();
        match format {
            fanout::protocol::Format::Text => ping.extend_from_slice(b"PING\n"),
            // A masked (with zeros) text message holding a JSON ping.
            _ => {
                let json = br#"{"op":"ping"}"#;
                ping.extend_from_slice(&[0x81, 0x80 | json.len() as u8, 0, 0, 0, 0]);
                ping.extend_from_slice(json);
            }
        }
        let burst = ping.repeat(10_000);
        flooder.stream.set_write_timeout(Some(Duration::from_millis(200))).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut sent = 0usize;
        // Until the server stops reading and the socket buffers fill: a write times out.
        loop {
            match flooder.stream.write(&burst[sent % burst.len()..]) {
                Ok(n) => sent += n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
                Err(e) => panic!("the flooder was cut off: {e}"),
            }
            assert!(Instant::now() < deadline, "the server kept reading {sent} bytes of pings");
        }
        let footprint = server.stats().queue_high_water_bytes;
        assert!(footprint < 2 << 20, "{format:?}: a queue grew to {footprint} bytes");
        let mut publisher = Conn::text(addr);
        publisher.publish("calm", b"still here");
        assert!(matches!(bystander.next(), Frame::Msg { payload, .. } if payload == b"still here"));
        // Reading again: every answer arrives, and the connection goes on.
        let pings = sent / ping.len();
        let mut pongs = 0;
        while pongs < pings {
            match flooder.next() {
                Frame::Pong => pongs += 1,
                other => panic!("{format:?}: expected PONG, got {other:?}"),
            }
        }
        // The ping cut short by the full socket, finished now that the server reads again.
        let partial = sent % ping.len();
        if partial > 0 {
            flooder.stream.set_write_timeout(None).unwrap();
            flooder.stream.write_all(&ping[partial..]).unwrap();
            flooder.expect(Frame::Pong);
        }
        flooder.send(fanout::protocol::Request::Ping);
        flooder.expect(Frame::Pong);
        assert_eq!(server.stats().slow_consumer_closes, 0);
    }
}
