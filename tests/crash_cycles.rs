//! Crash cycles: a server with `--data-dir --fsync always` is killed (SIGKILL) at a random moment
//! while an acknowledged publisher and two resuming subscribers run, again and again. After every
//! restart:
//! - every acknowledged message is retained, exactly once, in offset order;
//! - no offset was ever given to two different messages (across every cycle and every reader);
//! - each subscriber, resuming from the last offset it saw, gets a stream without duplicates and
//!   without gaps, except where the server announced one (a HIST frame whose status is not ok);
//! - the log's epoch survives (the data directory is the same log).
//!
//! `CRASH_CYCLES` sets the number of cycles (default 5; `scripts/crash-cycles.sh 100` runs 100),
//! `CRASH_SEED` the random seed (printed, so a failure can be replayed).

mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::{ChildServer, Conn, Frame, Read_, TempDir, PATIENCE};
use fanout::history::ResumeStatus;
use fanout::protocol::{Request, Resume};

const CHANNEL: &str = "orders";
/// Acknowledged publishes kept in flight.
const IN_FLIGHT: usize = 16;

/// xorshift64*: enough randomness for kill times, and replayable from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low)
    }
}

/// Every (offset, payload) any reader has seen, across cycles: an offset must always carry the
/// same message.
#[derive(Default)]
struct Ledger {
    payload_of: HashMap<u64, Vec<u8>>,
}

impl Ledger {
    fn observe(&mut self, offset: u64, payload: &[u8], who: &str) {
        match self.payload_of.get(&offset) {
            Some(seen) => assert_eq!(
                seen,
                payload,
                "{who}: offset {offset} was given to two messages ({:?} and {:?})",
                String::from_utf8_lossy(seen),
                String::from_utf8_lossy(payload)
            ),
            None => {
                self.payload_of.insert(offset, payload.to_vec());
            }
        }
    }
}

/// Where a resuming subscriber stands between cycles.
#[derive(Debug, Default, Clone, Copy)]
struct Position {
    epoch: Option<u64>,
    last: u64,
}

/// Subscribes from `position`, checks the stream until the connection dies, returns where it got.
fn follow(
    addr: SocketAddr,
    mut position: Position,
    ledger: &Mutex<Ledger>,
    ready: &AtomicUsize,
    name: &str,
) -> (Position, u64) {
    let mut conn = Conn::binary(addr);
    conn.send(Request::Subscribe {
        channel: CHANNEL.as_bytes(),
        resume: Some(Resume { after: position.last, epoch: position.epoch, strict: false }),
    });
    ready.fetch_add(1, Ordering::SeqCst);
    let mut announced = false;
    let mut received = 0;
    loop {
        match conn.read(PATIENCE) {
            Read_::Frame(Frame::Hist { epoch, status, .. }) => {
                if let Some(known) = position.epoch {
                    assert_eq!(known, epoch, "{name}: the log's epoch changed across a crash");
                }
                position.epoch = Some(epoch);
                announced |= status != ResumeStatus::Ok;
            }
            Read_::Frame(Frame::Msg { offset, payload, .. }) => {
                ledger.lock().unwrap().observe(offset, &payload, name);
                assert!(offset > position.last, "{name}: offset {offset} again, or out of order");
                assert!(
                    offset == position.last + 1 || announced,
                    "{name}: silent gap from {} to {offset}",
                    position.last
                );
                announced = false;
                position.last = offset;
                received += 1;
            }
            Read_::Frame(Frame::Ok { .. } | Frame::Ping) => {}
            Read_::Frame(other) => panic!("{name}: unexpected {other:?}"),
            Read_::Closed => return (position, received),
            Read_::Nothing => panic!("{name}: the server went quiet without closing"),
        }
    }
}

/// Publishes with acknowledgements, `IN_FLIGHT` at a time, until the connection dies; returns
/// the acknowledged (offset, payload) pairs.
fn publish(addr: SocketAddr, cycle: u64, ready: &AtomicUsize) -> Vec<(u64, Vec<u8>)> {
    let mut conn = Conn::binary(addr);
    ready.fetch_add(1, Ordering::SeqCst);
    let mut in_flight: VecDeque<Vec<u8>> = VecDeque::new();
    let mut acked = Vec::new();
    let mut sequence = 0u64;
    loop {
        while in_flight.len() < IN_FLIGHT {
            sequence += 1;
            let payload = format!("cycle {cycle} message {sequence}").into_bytes();
            let request = Request::PublishAcked {
                channel: CHANNEL.as_bytes(),
                payload: (&payload[..]).into(),
            };
            let mut frame = Vec::new();
            fanout::protocol::binary::encode_request(&request, &mut frame);
            // The server may die in the middle of this write: that ends the cycle.
            if conn.stream.write_all(&frame).is_err() {
                return acked;
            }
            in_flight.push_back(payload);
        }
        match conn.read(PATIENCE) {
            Read_::Frame(Frame::Ack { offset, .. }) => {
                let payload = in_flight.pop_front().expect("an ack answers a publish");
                acked.push((offset, payload));
            }
            Read_::Frame(Frame::Err { code: 500, .. }) => {
                in_flight.pop_front();
            }
            Read_::Frame(Frame::Ping) => {}
            Read_::Frame(other) => panic!("publisher: unexpected {other:?}"),
            Read_::Closed => return acked,
            Read_::Nothing => panic!("publisher: no acknowledgement within {PATIENCE:?}"),
        }
    }
}

/// Everything retained, from a fresh resume after offset 0 (the PONG after it means caught up).
fn everything(addr: SocketAddr) -> Vec<(u64, Vec<u8>)> {
    Conn::binary(addr).replay_all(CHANNEL, 0)
}

#[test]
fn killed_at_random_moments_the_log_keeps_every_promise() {
    let cycles: u64 = std::env::var("CRASH_CYCLES").ok().and_then(|n| n.parse().ok()).unwrap_or(5);
    let seed = std::env::var("CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
            as u64
            | 1
    });
    println!("crash cycles: {cycles}, CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let dir = TempDir::new("crash-cycles");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut acked: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut positions = [Position::default(); 2];
    let mut total_received = 0u64;

    for cycle in 1..=cycles {
        let server = ChildServer::start(&[
            "--data-dir",
            dir.path(),
            "--fsync",
            "always",
            "--workers",
            "2",
            // Retention must not drop what the check expects to find.
            "--history-messages",
            "100000000",
            "--history-bytes-per-channel",
            "8000000000",
            "--history-total-bytes",
            "8000000000",
        ]);
        let addr = server.addr;

        // Every acknowledged message so far is there, once, in order.
        let retained = everything(addr);
        let mut payloads = HashSet::new();
        for window in retained.windows(2) {
            assert!(window[0].0 < window[1].0, "cycle {cycle}: offsets out of order or twice");
        }
        for (offset, payload) in &retained {
            ledger.lock().unwrap().observe(*offset, payload, "replay");
            assert!(payloads.insert(payload.clone()), "cycle {cycle}: a message retained twice");
        }
        let retained: HashSet<(u64, Vec<u8>)> = retained.into_iter().collect();
        for message in &acked {
            assert!(
                retained.contains(message),
                "cycle {cycle}: acknowledged offset {} is missing",
                message.0
            );
        }

        let ready = Arc::new(AtomicUsize::new(0));
        let subscribers: Vec<_> = positions
            .iter()
            .enumerate()
            .map(|(i, &position)| {
                let (ledger, ready) = (ledger.clone(), ready.clone());
                thread::spawn(move || {
                    follow(addr, position, &ledger, &ready, &format!("subscriber {i}"))
                })
            })
            .collect();
        let publisher = {
            let ready = ready.clone();
            thread::spawn(move || publish(addr, cycle, &ready))
        };
        common::wait_until("the clients are connected", || ready.load(Ordering::SeqCst) == 3);
        thread::sleep(Duration::from_millis(rng.between(10, 400)));
        server.kill();
        let fresh = publisher.join().expect("publisher");
        for window in fresh.windows(2) {
            assert!(window[0].0 < window[1].0, "acknowledgements in offset order");
        }
        for (offset, payload) in &fresh {
            ledger.lock().unwrap().observe(*offset, payload, "publisher");
        }
        acked.extend(fresh);
        for (i, subscriber) in subscribers.into_iter().enumerate() {
            let (position, received) = subscriber.join().expect("subscriber");
            positions[i] = position;
            total_received += received;
        }
    }
    println!(
        "crash cycles: {cycles} kills, {} messages acknowledged, {total_received} delivered to resuming subscribers, 0 lost, 0 offsets given twice",
        acked.len()
    );
    assert!(!acked.is_empty(), "some publishes were acknowledged");
}
