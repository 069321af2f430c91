//! Replay speed: a new subscriber catching up 1,000,000 retained 64-byte messages from memory.
//!
//! `cargo bench --bench replay` starts an in-process server (one worker), publishes the messages,
//! then times one binary subscriber that resumes from offset 0 until it has parsed the last one.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use fanout::client::Client;
use fanout::protocol::{binary, Request, Resume, ServerFrame};
use fanout::{Config, Server};

const MESSAGES: u64 = 1_000_000;

fn main() {
    let server = Server::start(Config {
        workers: 1,
        pin_cores: false,
        stats_interval: Duration::ZERO,
        history_messages: MESSAGES as usize,
        history_bytes_per_channel: 1 << 30,
        history_total_bytes: 1 << 30,
        listen: "127.0.0.1:0".parse().expect("address"),
        ..Config::default()
    })
    .expect("server starts");

    let mut publisher = Client::connect(server.local_addr()).expect("connect");
    let payload = [b'x'; 64];
    for _ in 0..MESSAGES {
        publisher.publish("replay", &payload).expect("publish");
    }
    publisher.ping().expect("all published");
    assert_eq!(server.stats().retained_messages, MESSAGES, "history holds them all");

    for run in 1..=3 {
        let mut stream = TcpStream::connect(server.local_addr()).expect("connect");
        let mut request = binary::PREFACE.to_vec();
        let resume = Resume { after: 0, epoch: None, strict: true };
        binary::encode_request(
            &Request::Subscribe { channel: b"replay", resume: Some(resume) },
            &mut request,
        );
        let started = Instant::now();
        stream.write_all(&request).expect("subscribe");
        let mut buffer = vec![0u8; 1 << 20];
        let (mut filled, mut received, mut last) = (0, 0u64, 0u64);
        while received < MESSAGES {
            let n = stream.read(&mut buffer[filled..]).expect("read");
            assert!(n > 0, "server closed");
            filled += n;
            let mut at = 0;
            while let Some((frame, used)) =
                binary::parse_server_frame(&buffer[at..filled], 1 << 20).expect("valid frames")
            {
                if let ServerFrame::Message { offset, .. } = frame {
                    assert_eq!(offset, last + 1, "in order, no gap");
                    last = offset;
                    received += 1;
                }
                at += used;
            }
            buffer.copy_within(at..filled, 0);
            filled -= at;
        }
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "replay run {run}: {MESSAGES} retained 64-byte messages in {seconds:.3} s = {:.2}M messages/s",
            MESSAGES as f64 / seconds / 1e6
        );
    }
    server.shutdown();
}
