//! Graceful shutdown: stop accepting, deliver what was published, flush queues, close, join.

mod common;

use std::net::TcpStream;
use std::thread;

use common::{start, Conn, Frame, Read_, PATIENCE};

#[test]
fn shutdown_flushes_queued_messages_then_closes() {
    const MESSAGES: u64 = 5_000;
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut subscribers: Vec<Conn> = (0..4).map(|_| Conn::text(addr)).collect();
    for conn in &mut subscribers {
        conn.subscribe("last-words");
    }
    let mut publisher = Conn::binary(addr);
    for i in 0..MESSAGES {
        publisher.publish(
            "last-words",
            format!("message {i} of a burst nobody has read yet").as_bytes(),
        );
    }
    publisher.barrier();

    // Nobody has read anything; shutdown must still deliver all of it before closing.
    let stopping = thread::spawn(move || server.shutdown());
    for conn in &mut subscribers {
        for offset in 1..=MESSAGES {
            match conn.next() {
                Frame::Msg { offset: got, .. } => assert_eq!(got, offset),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(conn.read(PATIENCE), Read_::Closed);
    }
    stopping.join().expect("shutdown completes");
    assert!(TcpStream::connect(addr).is_err(), "nothing listens after shutdown");
}

#[test]
fn dropping_the_handle_shuts_down_too() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut idle = Conn::text(addr);
    idle.barrier();
    drop(server);
    assert_eq!(idle.read(PATIENCE), Read_::Closed);
}
