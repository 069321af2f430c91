//! Helpers for tests that run a real server on 127.0.0.1:0: a raw connection that speaks either
//! wire format (so tests can send bad bytes), and polling helpers instead of sleeps.

#![allow(dead_code)]

pub mod proxy;
pub mod redis;
pub mod resp_client;
pub mod tls;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use fanout::protocol::{binary, text, websocket, Ack, Format, Request, Resume, ServerFrame};
use fanout::{Config, Server, ServerHandle};

/// How long any single wait in a test may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Starts a server with the test defaults changed by `adjust`.
pub fn start(adjust: impl FnOnce(&mut Config)) -> ServerHandle {
    let mut config = Config::for_tests();
    adjust(&mut config);
    // A server restarted on its old port (a test of restarts) can find it taken for a moment:
    // a client reconnecting to that port meanwhile may have been given it as its own ephemeral
    // port (TCP's self-connect on loopback). That is the test's race, not the server's: retry.
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        match Server::start(config.clone()) {
            Err(fanout::StartError::Listen { source, .. })
                if config.listen.port() != 0
                    && source.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20))
            }
            started => return started.expect("server starts"),
        }
    }
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
    Member {
        channel: String,
        client: String,
        user: String,
        node: String,
        info: String,
    },
    Presence {
        channel: String,
        clients: u64,
        users: u64,
    },
    Join {
        channel: String,
        client: String,
        user: String,
        info: String,
    },
    Leave {
        channel: String,
        client: String,
        user: String,
    },
    Unsubscribed {
        channel: String,
        reason: String,
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
            ServerFrame::Member { channel, client, user, node, info } => Frame::Member {
                channel: String::from_utf8_lossy(&channel).into_owned(),
                client: client.into_owned(),
                user: user.into_owned(),
                node: node.into_owned(),
                info: info.into_owned(),
            },
            ServerFrame::Presence { channel, clients, users } => Frame::Presence {
                channel: String::from_utf8_lossy(&channel).into_owned(),
                clients,
                users,
            },
            ServerFrame::Join { channel, client, user, info } => Frame::Join {
                channel: String::from_utf8_lossy(&channel).into_owned(),
                client: client.into_owned(),
                user: user.into_owned(),
                info: info.into_owned(),
            },
            ServerFrame::Leave { channel, client, user } => Frame::Leave {
                channel: String::from_utf8_lossy(&channel).into_owned(),
                client: client.into_owned(),
                user: user.into_owned(),
            },
            ServerFrame::Unsubscribed { channel, reason } => Frame::Unsubscribed {
                channel: String::from_utf8_lossy(&channel).into_owned(),
                reason: reason.into_owned(),
            },
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
    /// The status code of the WebSocket close frame the server sent, if any.
    pub close_code: Option<u16>,
}

/// The RFC 6455 example key, and the accept value the server must answer it with.
pub const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
const MASK: [u8; 4] = [0xa1, 0x07, 0x3c, 0x5e];

/// Reads a response head (through the blank line); returns it and any bytes after it.
pub fn read_head(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut pending = Vec::new();
    let head = take_head(stream, &mut pending);
    (head, pending)
}

/// Reads until `pending` holds a whole head (through the blank line) and takes it off.
fn take_head(stream: &mut TcpStream, pending: &mut Vec<u8>) -> String {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut chunk = [0u8; 65536];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(pending[..end + 4].to_vec()).expect("UTF-8 head");
            pending.drain(..end + 4);
            return head;
        }
        let n = stream.read(&mut chunk).expect("read a head");
        assert!(n > 0, "closed before a head; got {:?}", String::from_utf8_lossy(pending));
        pending.extend_from_slice(&chunk[..n]);
    }
}

/// A server JSON object (WebSocket text frame) as a frame.
pub fn frame_from_json(bytes: &[u8]) -> Frame {
    use base64::Engine as _;
    let v: serde_json::Value = serde_json::from_slice(bytes).expect("the server sent valid JSON");
    let s = |field: &str| v[field].as_str().unwrap_or_else(|| panic!("{field} in {v}")).to_owned();
    let n = |field: &str| v[field].as_u64().unwrap_or_else(|| panic!("{field} in {v}"));
    match v["op"].as_str().expect("op") {
        "msg" => Frame::Msg {
            channel: s("channel"),
            offset: n("offset"),
            payload: match v.get("data") {
                Some(data) => data.as_str().expect("data").as_bytes().to_vec(),
                None => base64::engine::general_purpose::STANDARD.decode(s("data64")).unwrap(),
            },
        },
        "ok" => Frame::Ok {
            ack: match s("cmd").as_str() {
                "sub" => Ack::Subscribe,
                "unsub" => Ack::Unsubscribe,
                "name" => Ack::Name,
                "auth" => Ack::Auth,
                "psub" => Ack::PatternSubscribe,
                "punsub" => Ack::PatternUnsubscribe,
                other => panic!("unknown ok cmd {other}"),
            },
            arg: s("arg"),
        },
        "err" => Frame::Err { code: n("code") as u16, reason: s("reason") },
        "hist" => Frame::Hist {
            channel: s("channel"),
            epoch: u64::from_str_radix(&s("epoch"), 16).expect("hex epoch"),
            first: n("first"),
            last: n("last"),
            status: match s("status").as_str() {
                "ok" => fanout::history::ResumeStatus::Ok,
                "expired" => fanout::history::ResumeStatus::Expired,
                _ => fanout::history::ResumeStatus::EpochChanged,
            },
        },
        "ack" => Frame::Ack { channel: s("channel"), offset: n("offset") },
        "presence" => {
            Frame::Presence { channel: s("channel"), clients: n("clients"), users: n("users") }
        }
        "join" => Frame::Join {
            channel: s("channel"),
            client: s("client"),
            user: s("user"),
            info: v["info"].to_string(),
        },
        "leave" => Frame::Leave { channel: s("channel"), client: s("client"), user: s("user") },
        "unsubscribed" => Frame::Unsubscribed { channel: s("channel"), reason: s("reason") },
        "ping" => Frame::Ping,
        "pong" => Frame::Pong,
        other => panic!("unknown op {other}"),
    }
}

/// A request in the JSON form.
pub fn request_json(request: &Request<'_>) -> String {
    use base64::Engine as _;
    use serde_json::json;
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).expect("UTF-8 name");
    let payload = |p: &[u8]| match std::str::from_utf8(p) {
        Ok(t) => ("data", t.to_owned()),
        Err(_) => ("data64", base64::engine::general_purpose::STANDARD.encode(p)),
    };
    let value = match request {
        Request::Subscribe { channel, resume: None } => json!({"op":"sub","channel":text(channel)}),
        Request::Subscribe { channel, resume: Some(r) } => json!({
            "op":"sub","channel":text(channel),"after":r.after,
            "epoch": r.epoch.map_or("*".to_owned(), |e| format!("{e:016x}")),"strict":r.strict
        }),
        Request::Unsubscribe { channel } => json!({"op":"unsub","channel":text(channel)}),
        Request::Publish { channel, payload: p }
        | Request::PublishAcked { channel, payload: p } => {
            let (field, data) = payload(p);
            let mut v = json!({"op":"pub","channel":text(channel)});
            v[field] = data.into();
            if matches!(request, Request::PublishAcked { .. }) {
                v["ack"] = true.into();
            }
            v
        }
        Request::Name { name } => json!({"op":"name","name":text(name)}),
        Request::Auth { token } => json!({"op":"auth","token":text(token)}),
        Request::PatternSubscribe { pattern } => json!({"op":"psub","pattern":text(pattern)}),
        Request::PatternUnsubscribe { pattern } => json!({"op":"punsub","pattern":text(pattern)}),
        Request::Presence { channel, stats_only: false } => {
            json!({"op":"presence","channel":text(channel)})
        }
        Request::Presence { channel, stats_only: true } => {
            json!({"op":"presence_stats","channel":text(channel)})
        }
        Request::Ping => json!({"op":"ping"}),
        Request::Pong | Request::Noop => json!({"op":"pong"}),
    };
    value.to_string()
}

impl Conn {
    /// Connects; a binary connection sends the preface first, a WebSocket one upgrades.
    pub fn open(addr: SocketAddr, format: Format) -> Conn {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).unwrap();
        let mut input = Vec::new();
        match format {
            Format::Binary => stream.write_all(&binary::PREFACE).unwrap(),
            Format::WsJson | Format::WsBinary => {
                let protocol =
                    if format == Format::WsJson { "fanout.json" } else { "fanout.binary" };
                let request = format!(
                    "GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n"
                );
                stream.write_all(request.as_bytes()).unwrap();
                let (head, rest) = read_head(&mut stream);
                assert!(head.starts_with("HTTP/1.1 101 "), "upgrade refused: {head}");
                assert!(head.contains(&format!("Sec-WebSocket-Accept: {WS_ACCEPT}\r\n")), "{head}");
                assert!(
                    head.contains(&format!("Sec-WebSocket-Protocol: {protocol}\r\n")),
                    "{head}"
                );
                input = rest;
            }
            Format::Text => {}
            other => panic!("the test client does not speak {other:?}"),
        }
        Conn { stream, format, input, close_code: None }
    }

    pub fn websocket(addr: SocketAddr) -> Conn {
        Conn::open(addr, Format::WsJson)
    }

    /// A JSON WebSocket upgraded at `target` with extra header lines (each ending in CRLF); the
    /// response head when the server refuses the upgrade.
    pub fn websocket_at(addr: SocketAddr, target: &str, headers: &str) -> Result<Conn, String> {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).unwrap();
        let request = format!(
            "GET {target} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: fanout.json\r\n{headers}\r\n"
        );
        stream.write_all(request.as_bytes()).unwrap();
        let (head, input) = read_head(&mut stream);
        if !head.starts_with("HTTP/1.1 101 ") {
            return Err(head);
        }
        Ok(Conn { stream, format: Format::WsJson, input, close_code: None })
    }

    /// Sends one masked WebSocket frame.
    pub fn send_ws(&mut self, fin: bool, op: u8, payload: &[u8]) {
        self.send_raw(&websocket::encode_client_frame(fin, op, payload, MASK));
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
            Format::WsJson => {
                return self.send_ws(
                    true,
                    websocket::opcode::TEXT,
                    request_json(&request).as_bytes(),
                )
            }
            Format::WsBinary => {
                binary::encode_request(&request, &mut out);
                return self.send_ws(true, websocket::opcode::BINARY, &out);
            }
            Format::Sse
            | Format::Http
            | Format::Resp2
            | Format::Resp3
            | Format::Resp2Sharded
            | Format::Resp3Sharded => {
                panic!("not a command format of this client")
            }
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
                Request::Auth { token } => out = [b"AUTH ", token, b"\n"].concat(),
                Request::PatternSubscribe { pattern } => out = [b"PSUB ", pattern, b"\n"].concat(),
                Request::PatternUnsubscribe { pattern } => {
                    out = [b"PUNSUB ", pattern, b"\n"].concat()
                }
                Request::PublishAcked { channel, payload } => {
                    out = [b"PUBA ", channel, b" ", &payload, b"\n"].concat()
                }
                Request::Presence { channel, stats_only } => {
                    let word: &[u8] = if stats_only { b"PRESENCE_STATS " } else { b"PRESENCE " };
                    out = [word, channel, b"\n"].concat()
                }
                Request::Ping => out = b"PING\n".to_vec(),
                Request::Pong => out = b"PONG\n".to_vec(),
                Request::Noop => out = b"\n".to_vec(),
            },
        }
        self.send_raw(&out);
    }

    /// Resumes `channel` after offset `after` (any epoch) and returns the messages replayed,
    /// (offset, payload), up to the PONG that follows (a resume's replay ends before it).
    pub fn replay_all(&mut self, channel: &str, after: u64) -> Vec<(u64, Vec<u8>)> {
        self.send(Request::Subscribe {
            channel: channel.as_bytes(),
            resume: Some(fanout::protocol::Resume { after, epoch: None, strict: false }),
        });
        messages_of(self.barrier())
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
            if matches!(self.format, Format::WsJson | Format::WsBinary) {
                if let Some((_, op, payload, used)) = websocket::parse_server_frame(&self.input) {
                    let frame = match op {
                        websocket::opcode::TEXT => Some(frame_from_json(payload)),
                        websocket::opcode::BINARY => {
                            let (frame, n) = binary::parse_server_frame(payload, usize::MAX)
                                .expect("valid binary frame")
                                .expect("a whole binary frame per message");
                            assert_eq!(n, payload.len(), "one binary frame per message");
                            Some(Frame::from(frame))
                        }
                        websocket::opcode::PING => Some(Frame::Ping),
                        websocket::opcode::CLOSE => {
                            self.close_code =
                                payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                            None
                        }
                        other => panic!("unexpected WebSocket opcode {other}"),
                    };
                    self.input.drain(..used);
                    match frame {
                        Some(frame) => return Read_::Frame(frame),
                        None => continue,
                    }
                }
            } else {
                let parsed = match self.format {
                    Format::Text => text::parse_server_line(&self.input, usize::MAX),
                    Format::Binary if self.input.starts_with(b"ERR ") => {
                        text::parse_server_line(&self.input, usize::MAX)
                    }
                    Format::Binary => binary::parse_server_frame(&self.input, usize::MAX),
                    other => panic!("the test client does not read {other:?}"),
                };
                if let Some((frame, used)) = parsed.expect("server sent a valid frame") {
                    let frame = Frame::from(frame);
                    self.input.drain(..used);
                    return Read_::Frame(frame);
                }
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

/// The (offset, payload) of every message among `frames`.
pub fn messages_of(frames: Vec<Frame>) -> Vec<(u64, Vec<u8>)> {
    frames
        .into_iter()
        .filter_map(|frame| match frame {
            Frame::Msg { offset, payload, .. } => Some((offset, payload)),
            _ => None,
        })
        .collect()
}

/// A `fanout serve` child process, killed when dropped.
pub struct ChildServer {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    /// Its log lines after the one with its address.
    pub log: std::sync::mpsc::Receiver<String>,
}

impl ChildServer {
    /// Starts `fanout serve --listen 127.0.0.1:0 --no-pin ARGS` and waits for its address.
    pub fn start(args: &[&str]) -> ChildServer {
        ChildServer::start_at("127.0.0.1:0", args)
    }

    /// The same on `listen` (a restart on the address a killed server had).
    pub fn start_at(listen: &str, args: &[&str]) -> ChildServer {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fanout"))
            .args(["serve", "--listen", listen, "--no-pin", "--stats-interval-secs", "0"])
            .args(args)
            .env("RUST_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("fanout serve starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, log) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + PATIENCE;
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = log.recv_timeout(left).expect("the server logs its address");
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .parse()
                    .expect("an address");
            }
        };
        ChildServer { child, addr, log }
    }

    /// The next log line that contains `needle` (lines before it are passed over).
    pub fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!("no log line with {needle:?}: {e}"),
            }
        }
    }

    /// Sends the server a signal (SIGHUP: reload).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid; it is not reaped until `Drop`.
        let done = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(done, 0, "kill({signal})");
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

/// An HTTP response as a test reads it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Reads one response with a Content-Length body from `stream`, after `pending` bytes.
pub fn read_response(stream: &mut TcpStream, pending: &mut Vec<u8>) -> Response {
    let head = take_head(stream, pending);
    let status = head[9..12].parse().expect("status code");
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("Content-Length");
    let mut chunk = [0u8; 65536];
    while pending.len() < length {
        let n = stream.read(&mut chunk).expect("read body");
        assert!(n > 0, "closed in the middle of a body");
        pending.extend_from_slice(&chunk[..n]);
    }
    let body = pending.drain(..length).collect();
    Response { status, head, body }
}

/// One request on a fresh connection (`Connection: close`).
pub fn http(addr: SocketAddr, method: &str, target: &str, body: &[u8]) -> Response {
    http_with(addr, method, target, "", body)
}

/// One request with extra header lines (each ending in CRLF) on a fresh connection.
pub fn http_with(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &str,
    body: &[u8],
) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect");
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    read_response(&mut stream, &mut Vec::new())
}

/// Publishes over HTTP; returns the assigned offset.
pub fn http_publish(addr: SocketAddr, channel: &str, payload: &[u8]) -> u64 {
    let response = http(addr, "POST", &format!("/publish?channel={channel}"), payload);
    assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
    response.json()["offset"].as_u64().expect("offset")
}

/// A Server-Sent Events event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// An open event stream.
pub struct EventStream {
    pub stream: TcpStream,
    pub head: String,
    buffer: Vec<u8>,
    /// Comment lines seen so far (heartbeats, acknowledgements).
    pub comments: Vec<String>,
    /// The last `id:` seen, as a browser keeps it for `Last-Event-ID` (id-only events included).
    pub last_id: Option<String>,
}

impl EventStream {
    /// Opens `GET target` with extra header lines (each ending in CRLF).
    pub fn open(addr: SocketAddr, target: &str, headers: &str) -> EventStream {
        let mut stream = TcpStream::connect(addr).expect("connect");
        let request = format!(
            "GET {target} HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n{headers}\r\n"
        );
        stream.write_all(request.as_bytes()).unwrap();
        let (head, buffer) = read_head(&mut stream);
        EventStream { stream, head, buffer, comments: Vec::new(), last_id: None }
    }

    /// The next event (not comments or `retry:`), or None on EOF or timeout.
    pub fn next(&mut self, timeout: Duration) -> Option<Event> {
        let deadline = Instant::now() + timeout;
        loop {
            while let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block = String::from_utf8(self.buffer[..end].to_vec()).expect("UTF-8 events");
                self.buffer.drain(..end + 2);
                let mut event = Event::default();
                let mut data: Vec<&str> = Vec::new();
                for line in block.lines() {
                    if let Some(comment) = line.strip_prefix(':') {
                        self.comments.push(comment.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("id:") {
                        let v = v.strip_prefix(' ').unwrap_or(v);
                        event.id = Some(v.to_owned());
                        self.last_id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event.event = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push(v);
                    }
                }
                if event.event.is_some() || !data.is_empty() {
                    event.data = data.join("\n");
                    return Some(event);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next message event, skipping notices (`fanout …` events).
    pub fn next_message(&mut self) -> Event {
        loop {
            let event = self.next(PATIENCE).expect("an event");
            if !event.event.as_deref().unwrap_or("").starts_with("fanout ") {
                return event;
            }
        }
    }
}

/// Publishes with an acknowledgement and returns the offset it got.
pub fn publish_acked(conn: &mut Conn, channel: &str, payload: &[u8]) -> Result<u64, (u16, String)> {
    conn.send(Request::PublishAcked { channel: channel.as_bytes(), payload: payload.into() });
    loop {
        match conn.next() {
            Frame::Ack { channel: c, offset } if c == channel => return Ok(offset),
            Frame::Err { code, reason } => return Err((code, reason)),
            // Messages, and notices (the broadcast channel starting over with a Redis that
            // lost it reaches every connection), are not the answer.
            Frame::Msg { .. } | Frame::Hist { .. } | Frame::Join { .. } | Frame::Leave { .. } => {
                continue
            }
            other => panic!("expected an acknowledgement, got {other:?}"),
        }
    }
}

/// The next `count` messages on `conn`, as (channel, offset, payload).
pub fn messages(conn: &mut Conn, count: usize) -> Vec<(String, u64, Vec<u8>)> {
    (0..count)
        .map(|i| match conn.next() {
            Frame::Msg { channel, offset, payload } => (channel, offset, payload),
            other => panic!("message {i} of {count}: got {other:?}"),
        })
        .collect()
}

/// The epoch and latest offset of `channel`, as a client learns them (resume "from now").
pub fn position(conn: &mut Conn, channel: &str) -> (u64, u64) {
    conn.send(Request::Subscribe {
        channel: channel.as_bytes(),
        resume: Some(Resume { after: u64::MAX, epoch: None, strict: false }),
    });
    let hist = match conn.next() {
        Frame::Hist { epoch, last, .. } => (epoch, last),
        other => panic!("expected HIST, got {other:?}"),
    };
    conn.expect(Frame::Ok { ack: Ack::Subscribe, arg: channel.into() });
    hist
}

pub fn claim(conn: &mut Conn, name: &str) -> Result<(), (u16, String)> {
    conn.send(Request::Name { name: name.as_bytes() });
    match conn.next() {
        Frame::Ok { ack: Ack::Name, arg } => {
            assert_eq!(arg, name);
            Ok(())
        }
        Frame::Err { code, reason } => Err((code, reason)),
        other => panic!("expected the answer to NAME, got {other:?}"),
    }
}
