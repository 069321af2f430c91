//! Helpers for tests that run a real server on 127.0.0.1:0: a raw connection that speaks either
//! wire format (so tests can send bad bytes), and polling helpers instead of sleeps.

#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use fanout::protocol::{binary, text, Ack, Format, Request, ServerFrame};
use fanout::{Config, Server, ServerHandle};

/// How long any single wait in a test may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Starts a server with the test defaults changed by `adjust`.
pub fn start(adjust: impl FnOnce(&mut Config)) -> ServerHandle {
    let mut config = Config::for_tests();
    adjust(&mut config);
    Server::start(config).expect("server starts")
}

/// Polls `condition` every 5 ms until it holds, or panics after `PATIENCE`.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A server frame with owned fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Msg {
        channel: String,
        offset: u64,
        payload: Vec<u8>,
    },
    Ok {
        ack: Ack,
        arg: String,
    },
    Err {
        code: u16,
        reason: String,
    },
    Hist {
        channel: String,
        epoch: u64,
        first: u64,
        last: u64,
        status: fanout::history::ResumeStatus,
    },
    Ack {
        channel: String,
        offset: u64,
    },
    Ping,
    Pong,
}

impl From<ServerFrame<'_>> for Frame {
    fn from(frame: ServerFrame<'_>) -> Self {
        match frame {
            ServerFrame::Message { channel, offset, payload } => Frame::Msg {
                channel: String::from_utf8_lossy(&channel).into_owned(),
                offset,
                payload: payload.into_owned(),
            },
            ServerFrame::Ok { ack, arg } => {
                Frame::Ok { ack, arg: String::from_utf8_lossy(&arg).into_owned() }
            }
            ServerFrame::Error { code, reason } => Frame::Err { code, reason: reason.into_owned() },
            ServerFrame::History { channel, epoch, first, last, status } => Frame::Hist {
                channel: String::from_utf8_lossy(&channel).into_owned(),
                epoch,
                first,
                last,
                status,
            },
            ServerFrame::Ack { channel, offset } => {
                Frame::Ack { channel: String::from_utf8_lossy(&channel).into_owned(), offset }
            }
            ServerFrame::Ping => Frame::Ping,
            ServerFrame::Pong => Frame::Pong,
        }
    }
}

/// What reading a frame found.
#[derive(Debug, PartialEq, Eq)]
pub enum Read_ {
    Frame(Frame),
    /// The server closed the connection (EOF or reset).
    Closed,
    /// Nothing within the timeout.
    Nothing,
}

/// A raw test connection.
pub struct Conn {
    pub stream: TcpStream,
    pub format: Format,
    input: Vec<u8>,
}

impl Conn {
    /// Connects; a binary connection sends the preface first.
    pub fn open(addr: SocketAddr, format: Format) -> Conn {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).unwrap();
        if format == Format::Binary {
            stream.write_all(&binary::PREFACE).unwrap();
        }
        Conn { stream, format, input: Vec::new() }
    }

    pub fn text(addr: SocketAddr) -> Conn {
        Conn::open(addr, Format::Text)
    }

    pub fn binary(addr: SocketAddr) -> Conn {
        Conn::open(addr, Format::Binary)
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// Sends a request in this connection's format.
    pub fn send(&mut self, request: Request<'_>) {
        let mut out = Vec::new();
        match self.format {
            Format::Binary => binary::encode_request(&request, &mut out),
            Format::Text => match request {
                Request::Subscribe { channel, resume: None } => {
                    out = [b"SUB ", channel, b"\n"].concat()
                }
                Request::Subscribe { channel, resume: Some(r) } => {
                    let epoch = r.epoch.map_or("*".to_string(), |e| format!("{e:x}"));
                    let strict = if r.strict { " strict" } else { "" };
                    out = [b"SUB ", channel, format!(" {} {epoch}{strict}\n", r.after).as_bytes()]
                        .concat()
                }
                Request::Unsubscribe { channel } => out = [b"UNSUB ", channel, b"\n"].concat(),
                Request::Publish { channel, payload } => {
                    assert!(
                        !payload.contains(&b'\n') && !payload.contains(&b'\\'),
                        "raw text payload"
                    );
                    out = [b"PUB ", channel, b" ", &payload, b"\n"].concat()
                }
                Request::Name { name } => out = [b"NAME ", name, b"\n"].concat(),
                Request::PublishAcked { channel, payload } => {
                    out = [b"PUBA ", channel, b" ", &payload, b"\n"].concat()
                }
                Request::Ping => out = b"PING\n".to_vec(),
                Request::Pong => out = b"PONG\n".to_vec(),
                Request::Noop => out = b"\n".to_vec(),
            },
        }
        self.send_raw(&out);
    }

    pub fn subscribe(&mut self, channel: &str) {
        self.send(Request::Subscribe { channel: channel.as_bytes(), resume: None });
        self.expect(Frame::Ok { ack: Ack::Subscribe, arg: channel.into() });
    }

    pub fn publish(&mut self, channel: &str, payload: &[u8]) {
        self.send(Request::Publish { channel: channel.as_bytes(), payload: payload.into() });
    }

    /// PING and wait for PONG (every earlier command has taken effect), returning what came first.
    pub fn barrier(&mut self) -> Vec<Frame> {
        self.send(Request::Ping);
        let mut before = Vec::new();
        loop {
            match self.read(PATIENCE) {
                Read_::Frame(Frame::Pong) => return before,
                Read_::Frame(frame) => before.push(frame),
                other => panic!("waiting for PONG: {other:?}"),
            }
        }
    }

    /// The next frame, EOF, or nothing within `timeout`.
    pub fn read(&mut self, timeout: Duration) -> Read_ {
        let deadline = Instant::now() + timeout;
        loop {
            let parsed = match self.format {
                Format::Text => text::parse_server_line(&self.input, usize::MAX),
                Format::Binary if self.input.starts_with(b"ERR ") => {
                    text::parse_server_line(&self.input, usize::MAX)
                }
                Format::Binary => binary::parse_server_frame(&self.input, usize::MAX),
            };
            if let Some((frame, used)) = parsed.expect("server sent a valid frame") {
                let frame = Frame::from(frame);
                self.input.drain(..used);
                return Read_::Frame(frame);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Read_::Nothing;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Read_::Closed,
                Ok(n) => self.input.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Read_::Nothing
                }
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Read_::Closed,
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    /// The next frame, failing the test on EOF or timeout.
    pub fn next(&mut self) -> Frame {
        match self.read(PATIENCE) {
            Read_::Frame(frame) => frame,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    pub fn expect(&mut self, expected: Frame) {
        assert_eq!(self.next(), expected);
    }

    /// Expects an error frame with `code`, then the server closing the connection.
    pub fn expect_error_and_close(&mut self, code: u16) -> String {
        let reason = loop {
            match self.next() {
                Frame::Err { code: got, reason } => {
                    assert_eq!(got, code, "error code (reason: {reason})");
                    break reason;
                }
                Frame::Msg { .. } => continue,
                other => panic!("expected ERR {code}, got {other:?}"),
            }
        };
        self.expect_closed();
        reason
    }

    pub fn expect_closed(&mut self) {
        assert_eq!(self.read(PATIENCE), Read_::Closed, "the server should close this connection");
    }

    pub fn shutdown_write(&mut self) {
        self.stream.shutdown(Shutdown::Write).unwrap();
    }
}

/// A `fanout serve` child process, killed when dropped.
pub struct ChildServer {
    pub child: std::process::Child,
    pub addr: SocketAddr,
}

impl ChildServer {
    /// Starts `fanout serve --listen 127.0.0.1:0 --no-pin ARGS` and waits for its address.
    pub fn start(args: &[&str]) -> ChildServer {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fanout"))
            .args(["serve", "--listen", "127.0.0.1:0", "--no-pin", "--stats-interval-secs", "0"])
            .args(args)
            .env("RUST_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("fanout serve starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().to_string());
                }
            }
        });
        let addr = rx
            .recv_timeout(PATIENCE)
            .expect("the server logs its address")
            .parse()
            .expect("an address");
        ChildServer { child, addr }
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("reaped");
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh directory under the system temp dir, removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("fanout-test-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &str {
        self.0.to_str().expect("UTF-8 temp path")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
