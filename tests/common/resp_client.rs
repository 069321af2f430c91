//! A raw Redis-protocol (RESP) connection to the server under test: commands as arrays of bulk
//! strings, replies parsed by the server's own decoder.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use fanout::protocol::resp::{parse_value, Value};

use super::PATIENCE;

/// A raw RESP connection.
pub struct Redis {
    pub stream: TcpStream,
    input: Vec<u8>,
}

impl Redis {
    pub fn connect(addr: SocketAddr) -> Redis {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Redis { stream, input: Vec::new() }
    }

    pub fn send(&mut self, args: &[&str]) {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            out.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
        }
        self.stream.write_all(&out).expect("send");
    }

    /// The next reply, or `None` on EOF (panics after PATIENCE).
    pub fn next(&mut self) -> Option<Value> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some((value, used)) = parse_value(&self.input, usize::MAX).expect("valid RESP") {
                self.input.drain(..used);
                return Some(value);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no reply within {PATIENCE:?}");
            self.stream.set_read_timeout(Some(left)).expect("timeout");
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.input.extend_from_slice(&chunk[..n]),
            }
        }
    }

    pub fn call(&mut self, args: &[&str]) -> Value {
        self.send(args);
        self.next().expect("a reply")
    }

    /// True when nothing arrives within `wait`.
    pub fn nothing_within(&mut self, wait: Duration) -> bool {
        self.stream.set_read_timeout(Some(wait)).expect("timeout");
        let mut chunk = [0u8; 1024];
        match self.stream.read(&mut chunk) {
            Ok(n) if n > 0 => {
                self.input.extend_from_slice(&chunk[..n]);
                false
            }
            _ => self.input.is_empty(),
        }
    }
}
