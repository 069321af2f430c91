//! History on disk: crash safety with `--fsync always`, clean restarts, a wiped data directory,
//! damaged segment files, and clients that ride out a server restart.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::{start, ChildServer, Conn, Frame, TempDir, PATIENCE};
use fanout::client::{Client, Publisher, Subscriber};
use fanout::history::disk::FsyncPolicy;
use fanout::history::ResumeStatus;
use fanout::protocol::{Request, Resume};

/// (epoch, first, last, status) of a HIST frame, and the replayed (offset, payload) pairs.
type Replayed = ((u64, u64, u64, ResumeStatus), Vec<(u64, Vec<u8>)>);

/// Resumes `channel` after `after` on a fresh connection; returns (HIST, every message until the
/// PONG that follows the replay).
fn replay(addr: std::net::SocketAddr, channel: &str, after: u64, epoch: Option<u64>) -> Replayed {
    let mut conn = Conn::binary(addr);
    conn.send(Request::Subscribe {
        channel: channel.as_bytes(),
        resume: Some(Resume { after, epoch, strict: false }),
    });
    let hist = match conn.next() {
        Frame::Hist { epoch, first, last, status, .. } => (epoch, first, last, status),
        other => panic!("expected HIST, got {other:?}"),
    };
    let messages = common::messages_of(conn.barrier());
    (hist, messages)
}

#[test]
fn a_crash_with_fsync_always_loses_no_acknowledged_message_and_reuses_no_offset() {
    let dir = TempDir::new("crash");
    let server =
        ChildServer::start(&["--data-dir", dir.path(), "--fsync", "always", "--workers", "2"]);
    let addr = server.addr;

    // A live subscriber notes the highest offset handed out before the crash.
    let live_max = Arc::new(AtomicU64::new(0));
    let mut live = Client::connect(addr).unwrap();
    live.subscribe("orders").unwrap();
    let watcher = {
        let live_max = live_max.clone();
        thread::spawn(move || {
            while let Ok(Some(message)) = live.next_message(Some(PATIENCE)) {
                live_max.fetch_max(message.offset, Ordering::Relaxed);
            }
        })
    };
    // A publisher keeps 32 acknowledged publishes in flight and records every acknowledgement.
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (acked, stop) = (acked.clone(), stop.clone());
        thread::spawn(move || {
            let mut client = Client::connect(addr).unwrap();
            let mut sent = 0u64;
            loop {
                while sent < acked.lock().unwrap().len() as u64 + 32
                    && !stop.load(Ordering::Relaxed)
                {
                    sent += 1;
                    if client
                        .publish_acked_nowait("orders", format!("order {sent}").as_bytes())
                        .is_err()
                    {
                        return;
                    }
                }
                match client.next_ack(Some(PATIENCE)) {
                    Ok(Some((_, offset))) => acked.lock().unwrap().push(offset),
                    _ => return,
                }
            }
        })
    };
    common::wait_until("3,000 acknowledged publishes", || acked.lock().unwrap().len() >= 3000);
    server.kill();
    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
    watcher.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert_eq!(
        acked,
        (1..=acked.len() as u64).collect::<Vec<_>>(),
        "acknowledgements come in offset order"
    );
    let handed_out = live_max.load(Ordering::Relaxed);

    let restarted = ChildServer::start(&["--data-dir", dir.path(), "--fsync", "always"]);
    let ((_, first, _, status), messages) = replay(restarted.addr, "orders", 0, None);
    assert_eq!((first, status), (1, ResumeStatus::Ok));
    let offsets: Vec<u64> = messages.iter().map(|(o, _)| *o).collect();
    assert!(offsets.len() >= acked.len(), "every acknowledged message survived");
    assert_eq!(offsets, (1..=offsets.len() as u64).collect::<Vec<_>>(), "exactly once, in order");
    for (offset, payload) in &messages {
        assert_eq!(payload, format!("order {offset}").as_bytes(), "no torn record served");
    }
    let mut client = Client::connect(restarted.addr).unwrap();
    let next = client.publish_acked("orders", b"after the crash").unwrap();
    assert!(
        next > handed_out,
        "offset {next} was already handed out before the crash ({handed_out})"
    );
}

#[test]
fn a_clean_restart_continues_offsets_and_keeps_history_and_a_wiped_directory_changes_epoch() {
    let dir = TempDir::new("restart");
    let config = |c: &mut fanout::Config| {
        c.data_dir = Some(dir.0.clone());
        c.fsync = FsyncPolicy::Interval(Duration::from_millis(20));
    };
    let server = start(config);
    let mut client = Client::connect(server.local_addr()).unwrap();
    for i in 1..=100u64 {
        assert_eq!(client.publish_acked("news", &i.to_be_bytes()).unwrap(), i);
    }
    let ((epoch, ..), _) = replay(server.local_addr(), "news", 100, None);
    server.shutdown();

    let server = start(config);
    let ((again, first, last, status), messages) =
        replay(server.local_addr(), "news", 50, Some(epoch));
    assert_eq!((again, first, last, status), (epoch, 1, 100, ResumeStatus::Ok));
    assert_eq!(messages, (51..=100u64).map(|i| (i, i.to_be_bytes().to_vec())).collect::<Vec<_>>());
    let mut client = Client::connect(server.local_addr()).unwrap();
    assert_eq!(client.publish_acked("news", b"next").unwrap(), 101, "no gap after a clean stop");
    common::wait_until("the record is written", || server.stats().records_written >= 1);
    server.shutdown();

    std::fs::remove_dir_all(&dir.0).unwrap();
    let server = start(config);
    let ((fresh, _, last, status), messages) = replay(server.local_addr(), "news", 50, Some(epoch));
    assert_ne!(fresh, epoch);
    assert_eq!((last, status), (0, ResumeStatus::EpochChanged));
    assert!(messages.is_empty());
}

#[test]
fn damaged_segment_tails_are_cut_off_not_served() {
    let dir = TempDir::new("damage");
    let config =
        |path: std::path::PathBuf| move |c: &mut fanout::Config| c.data_dir = Some(path.clone());
    let server = start(config(dir.0.clone()));
    let mut client = Client::connect(server.local_addr()).unwrap();
    for i in 1..=20u64 {
        client.publish_acked("ledger", format!("entry {i}").as_bytes()).unwrap();
    }
    server.shutdown();
    let channel_dir = dir.0.join("channels").join("6c6564676572"); // "ledger" in hex
    let segment = std::fs::read_dir(&channel_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .expect("a segment file");
    let original = std::fs::read(&segment).unwrap();
    for damage in ["truncate", "flip"] {
        let mut bytes = original.clone();
        match damage {
            "truncate" => bytes.truncate(bytes.len() - 4),
            _ => {
                let at = bytes.len() - 3;
                bytes[at] ^= 0xff;
            }
        }
        std::fs::write(&segment, &bytes).unwrap();
        std::fs::write(dir.0.join("clean"), b"").unwrap();
        let server = start(config(dir.0.clone()));
        let ((_, _, last, _), messages) = replay(server.local_addr(), "ledger", 0, None);
        assert_eq!(last, 19, "{damage}: the damaged last record is gone");
        assert_eq!(messages.len(), 19, "{damage}");
        assert!(messages.iter().all(|(o, p)| p == format!("entry {o}").as_bytes()), "{damage}");
        server.shutdown();
    }
}

#[test]
fn resuming_clients_ride_out_a_server_restart() {
    let dir = TempDir::new("ride");
    let first = start(|c| c.data_dir = Some(dir.0.clone()));
    let addr = first.local_addr();
    let path = dir.0.clone();
    let config = move |c: &mut fanout::Config| {
        c.data_dir = Some(path);
        c.listen = addr;
    };
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut subscriber = Subscriber::new(&[addr], &["ticks".to_string()], Some(0));
        while let Ok(message) = subscriber.next_message() {
            if tx.send((message.offset, message.payload)).is_err() {
                break;
            }
        }
    });
    let mut publisher = Publisher::new(&[addr], 1000);
    for i in 1..=30u64 {
        publisher.publish("ticks", &i.to_be_bytes()).unwrap();
    }
    publisher.flush().unwrap();
    for expected in 1..=30u64 {
        assert_eq!(rx.recv_timeout(PATIENCE).unwrap(), (expected, expected.to_be_bytes().to_vec()));
    }
    first.shutdown();
    // Published while the server is down: kept by the publisher, sent after the restart.
    for i in 31..=45u64 {
        publisher.publish("ticks", &i.to_be_bytes()).unwrap();
    }
    assert!(publisher.unacknowledged() > 0);
    let second = start(config);
    for i in 46..=60u64 {
        publisher.publish("ticks", &i.to_be_bytes()).unwrap();
    }
    publisher.flush().unwrap();
    for expected in 31..=60u64 {
        assert_eq!(
            rx.recv_timeout(PATIENCE).unwrap(),
            (expected, expected.to_be_bytes().to_vec()),
            "no loss, no duplicate"
        );
    }
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err(), "nothing twice");
    second.shutdown();
}

#[test]
fn offsets_only_grow_across_repeated_crashes() {
    let dir = TempDir::new("crashes");
    let args = ["--data-dir", dir.path(), "--fsync", "always"];
    let mut acknowledged = Vec::new();
    for round in 0..2 {
        let server = ChildServer::start(&args);
        let mut client = Client::connect(server.addr).unwrap();
        for i in 0..100 {
            let offset = client
                .publish_acked("audit", format!("round {round} entry {i}").as_bytes())
                .unwrap();
            assert!(
                acknowledged.last().is_none_or(|&last| offset > last),
                "offset {offset} after {acknowledged:?}"
            );
            acknowledged.push(offset);
        }
        server.kill();
    }
    let server = ChildServer::start(&args);
    let (_, messages) = replay(server.addr, "audit", 0, None);
    let offsets: Vec<u64> = messages.iter().map(|(o, _)| *o).collect();
    assert_eq!(
        offsets, acknowledged,
        "every acknowledged message, once, in order, across the jump"
    );
    // Resuming from just before the jump continues after it.
    let (_, after_jump) = replay(server.addr, "audit", acknowledged[99], None);
    assert_eq!(after_jump.first().map(|(o, _)| *o), Some(acknowledged[100]));
}
