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
