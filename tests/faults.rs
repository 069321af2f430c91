//! Storage faults through a running server (`--fsync always`): an acknowledged publish is answered
//! `ERR 500` when its record cannot be made durable, the channel refuses acknowledged publishes
//! until its storage works again, plain publishes keep flowing, HTTP answers stay in request
//! order, and one data directory has one owner.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::{read_response, start, wait_until, Conn, Frame, TempDir, PATIENCE};
use fanout::history::disk::FsyncPolicy;
use fanout::protocol::Request;
use fanout::{Config, Server};

fn durable(dir: &TempDir) -> impl FnOnce(&mut Config) + '_ {
    move |config: &mut Config| {
        config.data_dir = Some(dir.0.clone());
        config.fsync = FsyncPolicy::Always;
    }
}

fn publish_acked(conn: &mut Conn, channel: &str, payload: &[u8]) -> Frame {
    conn.send(Request::PublishAcked { channel: channel.as_bytes(), payload: payload.into() });
    loop {
        match conn.next() {
            frame @ (Frame::Ack { .. } | Frame::Err { .. }) => return frame,
            Frame::Msg { .. } => continue,
            other => panic!("expected an ack or an error, got {other:?}"),
        }
    }
}

#[test]
fn a_failing_disk_refuses_acknowledgements_until_it_works_again() {
    for (fault, errno) in [("write", libc::ENOSPC), ("fsync", libc::EIO), ("short", 0)] {
        let dir = TempDir::new("faults");
        let server = start(durable(&dir));
        let faults = server.storage_faults().expect("a data directory");
        let mut subscriber = Conn::binary(server.local_addr());
        subscriber.subscribe("orders");
        let mut publisher = Conn::binary(server.local_addr());
        assert_eq!(
            publish_acked(&mut publisher, "orders", b"before"),
            Frame::Ack { channel: "orders".into(), offset: 1 }
        );

        match fault {
            "write" => faults.fail_writes(errno),
            "fsync" => faults.fail_fsyncs(errno),
            _ => faults.short_writes(true),
        }
        let Frame::Err { code: 500, reason } = publish_acked(&mut publisher, "orders", b"lost")
        else {
            panic!("{fault}: the acknowledgement is refused");
        };
        assert!(reason.contains("storage failed"), "{fault}: {reason}");
        // Now refused up front: not published at all.
        let Frame::Err { code: 500, .. } = publish_acked(&mut publisher, "orders", b"refused")
        else {
            panic!("{fault}: refused while the storage fails");
        };
        // Plain publishes still go out (and keep trying the disk).
        publisher.publish("orders", b"plain");
        let offsets: Vec<(u64, Vec<u8>)> = std::iter::from_fn(|| match subscriber.next() {
            Frame::Msg { offset, payload, .. } => Some((offset, payload)),
            other => panic!("{fault}: unexpected {other:?}"),
        })
        .take(3)
        .collect();
        assert_eq!(
            offsets,
            vec![(1, b"before".to_vec()), (2, b"lost".to_vec()), (3, b"plain".to_vec())],
            "{fault}: the refused publish was never delivered"
        );
        let stats = server.stats();
        assert!(stats.storage_errors >= 1 && stats.storage_acks_refused >= 1, "{fault}");
        assert_eq!(stats.storage_failed_channels, 1, "{fault}");

        faults.clear();
        let mut attempts = 0;
        let offset = loop {
            attempts += 1;
            assert!(attempts < 100, "{fault}: storage never recovered");
            match publish_acked(&mut publisher, "orders", b"after") {
                Frame::Ack { offset, .. } => break offset,
                Frame::Err { code: 500, .. } => std::thread::sleep(Duration::from_millis(100)),
                other => panic!("{fault}: {other:?}"),
            }
        };
        assert_eq!(server.stats().storage_failed_channels, 0, "{fault}");
        server.shutdown();

        // After a restart every acknowledged message is there, and nothing torn is served.
        let server = start(durable(&dir));
        let replayed = Conn::binary(server.local_addr()).replay_all("orders", 0);
        assert_eq!(replayed.first(), Some(&(1, b"before".to_vec())), "{fault}");
        assert_eq!(replayed.last(), Some(&(offset, b"after".to_vec())), "{fault}");
        assert!(
            replayed.windows(2).all(|w| w[0].0 < w[1].0),
            "{fault}: in order, each once: {replayed:?}"
        );
        server.shutdown();
    }
}

#[test]
fn pipelined_http_requests_are_answered_in_order_while_a_publish_waits_for_fsync() {
    let dir = TempDir::new("pipeline");
    let server = start(durable(&dir));
    let mut stream = TcpStream::connect(server.local_addr()).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut requests = Vec::new();
    for i in 0..20 {
        write!(
            requests,
            "POST /publish?channel=news HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nm{}",
            i % 10
        )
        .unwrap();
        requests.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    }
    stream.write_all(&requests).unwrap();
    let mut pending = Vec::new();
    for i in 0..20u64 {
        let published = read_response(&mut stream, &mut pending);
        assert_eq!(published.status, 200);
        assert_eq!(published.json()["offset"], i + 1, "publish answers come in request order");
        let health = read_response(&mut stream, &mut pending);
        assert_eq!(health.json()["status"], "ok", "then the health answer");
    }
}

#[test]
fn http_publish_gets_500_while_the_disk_fails() {
    let dir = TempDir::new("http500");
    let server = start(durable(&dir));
    let faults = server.storage_faults().unwrap();
    faults.fail_writes(libc::EIO);
    let response = common::http(server.local_addr(), "POST", "/publish?channel=c", b"x");
    assert_eq!(response.status, 500);
    assert!(response.json()["reason"].as_str().unwrap().contains("storage failed"));
    faults.clear();
    wait_until("the storage works again", || server.stats().storage_failed_channels == 0);
    assert_eq!(common::http_publish(server.local_addr(), "c", b"y"), 2);
}

#[test]
fn long_channel_names_are_stored_and_come_back() {
    let dir = TempDir::new("longname");
    let name = "n".repeat(255);
    let server = start(durable(&dir));
    let mut publisher = Conn::binary(server.local_addr());
    for i in 1..=3 {
        let frame = publish_acked(&mut publisher, &name, format!("m{i}").as_bytes());
        assert_eq!(frame, Frame::Ack { channel: name.clone(), offset: i });
    }
    server.shutdown();
    let server = start(durable(&dir));
    let replayed = Conn::binary(server.local_addr()).replay_all(&name, 0);
    let offsets: Vec<u64> = replayed.iter().map(|(offset, _)| *offset).collect();
    assert_eq!(offsets, vec![1, 2, 3]);
}

#[test]
fn one_server_per_data_directory() {
    let dir = TempDir::new("owner");
    let first = start(durable(&dir));
    let mut config = Config::for_tests();
    durable(&dir)(&mut config);
    let refused = Server::start(config).expect_err("a second server on the same directory");
    assert!(refused.to_string().contains("another fanout process"), "{refused}");
    first.shutdown();
    start(durable(&dir)).shutdown();
}

#[test]
fn one_server_per_address() {
    let first = start(|_| {});
    let mut config = Config::for_tests();
    config.listen = first.local_addr();
    let refused = Server::start(config.clone()).expect_err("a second server on the same address");
    assert!(refused.to_string().contains("already in use"), "{refused}");
    // The first one still serves everyone.
    let mut conn = Conn::text(first.local_addr());
    conn.send(Request::Ping);
    assert_eq!(conn.next(), Frame::Pong);
    first.shutdown();
    Server::start(config).expect("the address is free again").shutdown();
}

#[test]
fn encodings_that_grow_a_message_do_not_make_a_reader_slow() {
    // 2,000 line feeds: about 14 KB as SSE `data:` lines, about 12 KB as JSON escapes, over a
    // queue cap of 4 KB.
    let server = start(|config| {
        config.max_frame_bytes = 2048;
        config.write_queue_cap_bytes = 4096;
    });
    let addr = server.local_addr();
    let mut sse = common::EventStream::open(addr, "/sse?channel=big", "");
    let mut json = Conn::websocket(addr);
    json.subscribe("big");
    // The stream's start announces its position: it is subscribed once that arrives.
    wait_until("both are subscribed", || {
        server.stats().connections_sse == 1 && server.stats().connections_websocket_json == 1
    });
    let _ = sse.next(Duration::from_millis(200));
    let payload = vec![b'\n'; 2000];
    let mut publisher = Conn::binary(addr);
    for _ in 0..3 {
        publisher.publish("big", &payload);
    }
    for i in 1..=3u64 {
        let event = sse.next_message();
        let offset = event.id.as_deref().and_then(|id| id.split('@').next());
        assert_eq!(offset, Some(i.to_string().as_str()));
        assert_eq!(event.data, "\n".repeat(2000), "2,001 empty data lines, joined again");
        match json.next() {
            Frame::Msg { offset, payload: got, .. } => {
                assert_eq!((offset, got), (i, payload.clone()));
            }
            other => panic!("expected a message, got {other:?}"),
        }
    }
    assert_eq!(server.stats().slow_consumer_closes, 0);
}

/// The descriptors this process has open on files under `dir`.
fn open_files_under(dir: &std::path::Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|fds| {
            fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
                .filter(|target| target.starts_with(dir))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn churning_channel_names_and_client_names_cannot_use_the_channel_limit_up() {
    let payload = b"m";
    let server = start(|config| {
        config.max_channels = 64;
        config.history_total_bytes = 10 * fanout::history::retained_cost(payload);
    });
    let addr = server.local_addr();
    let mut publisher = Conn::binary(addr);
    for i in 0..1000 {
        let channel = format!("fresh.{i}");
        // At the limit a sweep frees what nothing uses; a channel whose last message is still
        // in the ring (another worker has not drained it yet) is in use for that moment, so a
        // publish may be refused with 429 then and succeed when tried again.
        let mut tries = 0;
        let frame = loop {
            tries += 1;
            match publish_acked(&mut publisher, &channel, payload) {
                Frame::Err { code: 429, .. } if tries < 200 => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                frame => break frame,
            }
        };
        assert_eq!(frame, Frame::Ack { channel, offset: 1 }, "publish {i}");
    }
    assert!(server.channel_count() <= 64);
    assert!(server.stats().channels_freed >= 1000 - 64);
    assert!(server.stats().retained_messages <= 10, "the server-wide cap evicted the oldest");

    let baseline = server.stats().connections_current;
    for i in 0..300 {
        let mut client = Conn::text(addr);
        client.send(Request::Name { name: format!("user{i}").as_bytes() });
        assert_eq!(
            client.next(),
            Frame::Ok { ack: fanout::protocol::Ack::Name, arg: format!("user{i}") }
        );
        drop(client);
        wait_until("the connection is closed", || server.stats().connections_current == baseline);
    }
    assert!(server.channel_count() <= 64);
}

#[test]
fn many_channels_on_disk_keep_a_bounded_number_of_files_open() {
    let dir = TempDir::new("many");
    let server = start(|config| {
        config.data_dir = Some(dir.0.clone());
        config.fsync = FsyncPolicy::Always;
        config.max_open_segments = 32;
    });
    let mut publisher = Conn::binary(server.local_addr());
    for i in 0..2000 {
        let channel = format!("c{i}");
        assert_eq!(
            publish_acked(&mut publisher, &channel, b"x"),
            Frame::Ack { channel, offset: 1 }
        );
    }
    let open = open_files_under(&dir.0);
    // The segments, plus the lock file.
    assert!(open <= 33, "{open} files open after 2,000 channels");
    assert!(open >= 2, "the count sees the storage thread's files ({open})");
    server.shutdown();
    // Every channel came through, all the same.
    let server = start(|config| config.data_dir = Some(dir.0.clone()));
    assert_eq!(server.channel_count(), 2001);
}

#[test]
fn a_request_head_trickling_in_byte_by_byte_is_cut_off() {
    let server = start(|config| config.http_head_timeout = Duration::from_millis(400));
    let addr = server.local_addr();
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let head = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut answer = Vec::new();
    for byte in head.iter() {
        // One byte every 50 ms: each resets any idle timer, none completes the head.
        if slow.write_all(&[*byte]).is_err() {
            break;
        }
        let mut chunk = [0u8; 4096];
        match std::io::Read::read(&mut slow, &mut chunk) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(_) => {}
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.contains("request head not complete"), "{answer}");
    assert_eq!(server.stats().http_head_timeouts, 1);
    // Everyone else is served as usual.
    assert_eq!(common::http(addr, "GET", "/healthz", b"").status, 200);
}

#[test]
fn at_the_channel_limit_the_oldest_history_makes_room_for_new_names() {
    // History keeps every message (no age limit, caps far away): without eviction at the limit,
    // 64 one-message channels would lock every new name out.
    let server = start(|config| config.max_channels = 64);
    let mut publisher = Conn::binary(server.local_addr());
    for i in 0..500 {
        let channel = format!("name.{i}");
        let mut tries = 0;
        let frame = loop {
            tries += 1;
            match publish_acked(&mut publisher, &channel, b"m") {
                Frame::Err { code: 429, .. } if tries < 200 => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                frame => break frame,
            }
        };
        assert_eq!(frame, Frame::Ack { channel, offset: 1 }, "publish {i}");
    }
    assert!(server.channel_count() <= 64);
    // The newest names kept their history; the oldest made room.
    let replayed = Conn::binary(server.local_addr()).replay_all("name.499", 0);
    assert_eq!(replayed, vec![(1, b"m".to_vec())]);
}

#[test]
fn a_wide_event_stream_gets_one_cursor_per_turn_not_one_per_channel() {
    let server = start(|_| {});
    let query: Vec<String> = (0..300).map(|i| format!("channel=wide.{i}")).collect();
    let mut stream = TcpStream::connect(server.local_addr()).unwrap();
    write!(stream, "GET /sse?{} HTTP/1.1\r\nHost: t\r\n\r\n", query.join("&")).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut received = Vec::new();
    let deadline = std::time::Instant::now() + PATIENCE;
    // Until every subscription is acknowledged and the stream has been quiet for 300 ms.
    loop {
        let mut chunk = [0u8; 65536];
        match std::io::Read::read(&mut stream, &mut chunk) {
            Ok(0) => panic!("the stream ended"),
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(_) if String::from_utf8_lossy(&received).contains(": ok sub wide.299") => break,
            Err(_) => assert!(std::time::Instant::now() < deadline, "subscriptions never finished"),
        }
    }
    let text = String::from_utf8_lossy(&received);
    let cursors = text.matches("\nid:").count();
    assert!((1..=5).contains(&cursors), "{cursors} cursor events for 300 subscriptions");
    let last = text.rsplit("\nid:").next().unwrap().lines().next().unwrap();
    assert_eq!(last.split_whitespace().count(), 300, "the cursor names every channel");
    assert!(!last.contains(" -"), "every position is known: {last}");
}

/// A durable acknowledgement still on its way when its connection closes must not reach the
/// connection that takes the same slab key next (the worker's notes name a connection by key and
/// serial, not by key alone).
#[test]
fn an_acknowledgement_for_a_closed_connection_never_reaches_the_next_one_at_its_key() {
    let dir = TempDir::new("faults");
    let server = start(|config: &mut Config| {
        durable(&dir)(config);
        config.workers = 1;
    });
    let faults = server.storage_faults().expect("a data directory");
    let fsyncs = || server.stats().fsyncs;
    let before = fsyncs();
    faults.delay_fsyncs(Duration::from_millis(400));
    {
        let mut gone = Conn::binary(server.local_addr());
        gone.send(Request::PublishAcked { channel: b"orders", payload: b"late"[..].into() });
        // Wait until the server has the publish (its record is being made durable), then leave.
        wait_until("the record is written", || server.stats().messages_in == 1);
    }
    wait_until("the first connection is gone", || server.stats().connections_current == 0);
    // One worker, no other connection: the next one takes the same slab key.
    let mut next = Conn::binary(server.local_addr());
    next.subscribe("elsewhere");
    wait_until("the delayed fsync is done", || fsyncs() > before);
    faults.clear();
    // Whatever the worker did with the acknowledgement, it did it before answering this PING.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(next.barrier(), Vec::<Frame>::new(), "nothing but the PONG");
    let second = publish_acked(&mut next, "orders", b"mine");
    assert_eq!(second, Frame::Ack { channel: "orders".into(), offset: 2 });
}
