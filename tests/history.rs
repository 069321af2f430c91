//! Channel history and resume: a subscriber that gives the last offset it saw gets every retained
//! message after it, then live messages, with no gap and no duplicate, even while publishers keep
//! publishing; retention by count, bytes and age; notices for expired offsets and other epochs.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use common::{start, Conn, Frame};
use fanout::client::Client;
use fanout::history::ResumeStatus;
use fanout::protocol::{Ack, Format, Request, Resume};

fn resume(conn: &mut Conn, channel: &str, after: u64, epoch: Option<u64>, strict: bool) {
    conn.send(Request::Subscribe {
        channel: channel.as_bytes(),
        resume: Some(Resume { after, epoch, strict }),
    });
}

/// Reads the HIST answer to a resume.
fn history(conn: &mut Conn) -> (u64, u64, u64, ResumeStatus) {
    match conn.next() {
        Frame::Hist { epoch, first, last, status, .. } => (epoch, first, last, status),
        other => panic!("expected HIST, got {other:?}"),
    }
}

/// Reads messages (and the OK that marks the switch to live) until `through`; returns offsets.
fn offsets_through(conn: &mut Conn, through: u64) -> Vec<u64> {
    let mut offsets = Vec::new();
    while offsets.last() != Some(&through) {
        match conn.next() {
            Frame::Msg { offset, .. } => offsets.push(offset),
            Frame::Ok { ack: Ack::Subscribe, .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    offsets
}

#[test]
fn replay_switches_to_live_without_gap_or_duplicate_while_publishing() {
    const MESSAGES: u64 = 50_000;
    const CLIENTS: u64 = 20;
    let server = start(|config| config.history_messages = 100_000);
    let addr = server.local_addr();
    let acknowledged = AtomicU64::new(0);
    thread::scope(|scope| {
        scope.spawn(|| {
            let mut publisher = Conn::binary(addr);
            for i in 1..=MESSAGES {
                publisher.publish("feed", &i.to_be_bytes());
                if i % 500 == 0 {
                    publisher.barrier();
                    acknowledged.store(i, Ordering::Release);
                }
            }
        });
        for client in 0..CLIENTS {
            let acknowledged = &acknowledged;
            scope.spawn(move || {
                // Deterministic "random" moments and offsets per client.
                let mut state =
                    0x9E37_79B9_7F4A_7C15u64 ^ (client + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                let mut next = move || {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state
                };
                thread::sleep(Duration::from_millis(next() % 300));
                let known = acknowledged.load(Ordering::Acquire);
                let after = next() % (known + 1);
                let format = if client % 2 == 0 { Format::Binary } else { Format::Text };
                let mut conn = Conn::open(addr, format);
                resume(&mut conn, "feed", after, None, false);
                let (_, first, last, status) = history(&mut conn);
                assert_eq!(
                    status,
                    ResumeStatus::Ok,
                    "client {client}: after {after}, log {first}..={last}"
                );
                let offsets = offsets_through(&mut conn, MESSAGES);
                let expected: Vec<u64> = (after + 1..=MESSAGES).collect();
                assert!(
                    offsets == expected,
                    "client {client} from {after}: gap, duplicate or disorder"
                );
            });
        }
    });
    let stats = server.stats();
    assert_eq!(stats.replays_served, CLIENTS);
    assert_eq!(stats.offsets_expired, 0);
}

#[test]
fn retention_by_count_and_notices_for_expired_offsets_and_other_epochs() {
    let server = start(|config| config.history_messages = 100);
    let addr = server.local_addr();
    let mut publisher = Conn::binary(addr);
    for i in 0..250u32 {
        publisher.publish("news", &i.to_be_bytes());
    }
    publisher.barrier();

    // Offset 0 is long gone: notice, then the earliest retained onwards.
    let mut late = Conn::text(addr);
    resume(&mut late, "news", 0, None, false);
    let (epoch, first, last, status) = history(&mut late);
    assert_eq!((first, last, status), (151, 250, ResumeStatus::Expired));
    assert_eq!(offsets_through(&mut late, 250), (151..=250).collect::<Vec<_>>());

    // Strict: the client would rather know than skip.
    let mut strict = Conn::binary(addr);
    resume(&mut strict, "news", 10, Some(epoch), true);
    assert_eq!(history(&mut strict).3, ResumeStatus::Expired);
    match strict.next() {
        Frame::Err { code: 410, reason } => {
            assert!(reason.contains("earliest retained 151"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert!(strict.barrier().is_empty(), "not subscribed after a refused strict resume");

    // An offset from another epoch, or beyond this log's end, restarts from the earliest.
    for (after, epoch) in [(200, Some(epoch ^ 1)), (9_999, None)] {
        let mut other = Conn::binary(addr);
        resume(&mut other, "news", after, epoch, false);
        let (_, first, _, status) = history(&mut other);
        assert_eq!((first, status), (151, ResumeStatus::EpochChanged));
        assert_eq!(offsets_through(&mut other, 250).first(), Some(&151));
    }

    // Within retention: exactly what follows, then live.
    let mut fresh = Conn::binary(addr);
    resume(&mut fresh, "news", 240, Some(epoch), true);
    assert_eq!(history(&mut fresh), (epoch, 151, 250, ResumeStatus::Ok));
    assert_eq!(offsets_through(&mut fresh, 250), (241..=250).collect::<Vec<_>>());
    fresh.barrier();
    publisher.publish("news", b"live");
    assert!(matches!(fresh.next(), Frame::Msg { offset: 251, .. }));
    // Resuming a channel one is subscribed to already is refused.
    resume(&mut fresh, "news", 0, None, false);
    assert!(matches!(fresh.next(), Frame::Err { code: 409, .. }));

    let stats = server.stats();
    assert_eq!(stats.offsets_expired, 4);
    assert!(stats.history_dropped >= 150);
}

#[test]
fn retention_by_bytes_and_by_age_and_history_off() {
    let server = start(|config| {
        // Ten 100-byte messages: each counts its payload plus the entry's overhead.
        config.history_bytes_per_channel = 10 * fanout::history::retained_cost(&[7u8; 100]);
        config.history_age = Duration::from_millis(300);
    });
    let addr = server.local_addr();
    let mut publisher = Conn::binary(addr);
    for _ in 0..25 {
        publisher.publish("big", &[7u8; 100]);
    }
    publisher.barrier();
    let mut conn = Conn::binary(addr);
    resume(&mut conn, "big", 0, None, false);
    let (_, first, last, _) = history(&mut conn);
    assert_eq!((first, last), (16, 25), "the byte limit holds ten 100-byte messages");
    offsets_through(&mut conn, 25);

    // Past the age limit nothing is retained, even with no publish since.
    thread::sleep(Duration::from_millis(600));
    let mut later = Conn::binary(addr);
    resume(&mut later, "big", 20, None, false);
    assert_eq!(history(&mut later).1, 26, "everything aged out");
    later.expect(Frame::Ok { ack: Ack::Subscribe, arg: "big".into() });

    let off = start(|config| config.history_messages = 0);
    let mut publisher = Conn::binary(off.local_addr());
    publisher.publish("c", b"x");
    publisher.barrier();
    let mut conn = Conn::text(off.local_addr());
    resume(&mut conn, "c", 0, None, false);
    assert_eq!(history(&mut conn), (history_epoch(&mut conn, &off), 2, 1, ResumeStatus::Expired));
}

/// The epoch of channel `c` as the server reports it to a fresh resume.
fn history_epoch(conn: &mut Conn, server: &fanout::ServerHandle) -> u64 {
    conn.expect(Frame::Ok { ack: Ack::Subscribe, arg: "c".into() });
    let mut probe = Conn::binary(server.local_addr());
    resume(&mut probe, "c", 1, None, false);
    history(&mut probe).0
}

#[test]
fn the_library_client_resumes_from_an_offset() {
    let server = start(|_| {});
    let mut publisher = Client::connect(server.local_addr()).unwrap();
    for i in 1..=10u8 {
        publisher.publish("log", &[i]).unwrap();
    }
    publisher.ping().unwrap();
    let mut client = Client::connect(server.local_addr()).unwrap();
    let info = client.subscribe_from("log", 4, None, true).unwrap();
    assert_eq!((info.first, info.last, info.status), (1, 10, ResumeStatus::Ok));
    for offset in 5..=10 {
        let message = client.next_message(Some(common::PATIENCE)).unwrap().unwrap();
        assert_eq!((message.offset, message.payload.clone()), (offset, vec![offset as u8]));
    }
    client.ping().unwrap();
    publisher.publish("log", b"live").unwrap();
    assert_eq!(client.next_message(Some(common::PATIENCE)).unwrap().unwrap().offset, 11);
    // A strict resume from another epoch fails with 410.
    let mut strict = Client::connect(server.local_addr()).unwrap();
    match strict.subscribe_from("log", 3, Some(info.epoch ^ 1), true) {
        Err(fanout::client::ClientError::Server { code: 410, .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn acknowledged_publishes_carry_their_offsets_in_both_formats() {
    let server = start(|_| {});
    let mut text = Conn::text(server.local_addr());
    text.send_raw(b"PUBA acks one\r\nPUBA acks two\r\n");
    assert_eq!(text.next(), Frame::Ack { channel: "acks".into(), offset: 1 });
    assert_eq!(text.next(), Frame::Ack { channel: "acks".into(), offset: 2 });
    let mut binary = Conn::binary(server.local_addr());
    binary.send(Request::PublishAcked { channel: b"acks", payload: b"three".as_slice().into() });
    assert_eq!(binary.next(), Frame::Ack { channel: "acks".into(), offset: 3 });
    // An invalid channel is refused, not acknowledged.
    text.send_raw(b"PUBA bad\x01name x\r\n");
    assert!(matches!(text.next(), Frame::Err { code: 422, .. }));
}
