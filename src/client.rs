//! A small blocking client over the binary format, used by `fanout pub` / `fanout sub` and the
//! tests. Messages that arrive while a command waits for its acknowledgement are kept, in order,
//! for `next_message`; server PINGs are answered automatically.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::history::ResumeStatus;
use crate::protocol::{binary, text, Ack, ProtocolError, Request, Resume, ServerFrame};
use crate::tls::Socket;

/// Joins and leaves kept for `next_event` while only `next_message` is called.
const MAX_KEPT_EVENTS: usize = 10_000;

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest frame the client accepts from a server.
const MAX_FRAME_BYTES: usize = 64 << 20;

/// A delivered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Channel name.
    pub channel: String,
    /// Offset within the channel.
    pub offset: u64,
    /// Payload bytes.
    pub payload: Vec<u8>,
}

/// What went wrong on the client side.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket failed.
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
    /// The server sent bytes that are not a valid frame.
    #[error("protocol error from server: {0}")]
    Protocol(#[from] ProtocolError),
    /// The server answered with an error frame.
    #[error("server error {code}: {reason}")]
    Server {
        /// Numeric code (see `protocol::ErrorCode`).
        code: u16,
        /// The server's reason.
        reason: String,
    },
    /// The server closed the connection.
    #[error("server closed the connection")]
    Closed,
    /// Nothing arrived before the deadline.
    #[error("timed out waiting for the server")]
    Timeout,
    /// The TLS handshake failed (the certificate is not trusted or not the server's name, no
    /// protocol in common): retrying does not help.
    #[error("TLS handshake with {server} failed: {reason}")]
    Tls {
        /// The server.
        server: String,
        /// rustls's reason.
        reason: String,
    },
}

/// Where a server is: `host:port`, or `tls://host:port` for TLS (the certificate must carry
/// `host`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddr {
    /// Its address (the host resolved when parsed).
    pub addr: SocketAddr,
    /// With TLS: the name its certificate is checked against.
    pub tls_name: Option<String>,
}

impl From<SocketAddr> for ServerAddr {
    fn from(addr: SocketAddr) -> Self {
        ServerAddr { addr, tls_name: None }
    }
}

impl std::str::FromStr for ServerAddr {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, String> {
        let (tls, authority) = match (url.strip_prefix("tls://"), url.strip_prefix("tcp://")) {
            (Some(rest), _) => (true, rest),
            (_, Some(rest)) => (false, rest),
            _ => (false, url),
        };
        let addr = authority
            .to_socket_addrs()
            .map_err(|e| format!("{url}: {e}"))?
            .next()
            .ok_or_else(|| format!("{url}: no address"))?;
        let host = authority.rsplit_once(':').map_or(authority, |(host, _)| host);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Ok(ServerAddr { addr, tls_name: tls.then(|| host.to_owned()) })
    }
}

impl ServerAddr {
    /// `socket` (connected to this server) as is, or with a TLS handshake under way for a
    /// `tls://` server, trusting `tls`'s roots (the system's when `None`).
    pub fn secure<S: Read + Write>(
        &self,
        socket: S,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> io::Result<Socket<S>> {
        let Some(name) = &self.tls_name else { return Ok(Socket::Plain(socket)) };
        let config = match tls {
            Some(config) => config.clone(),
            None => crate::tls::system_client_config()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
        };
        Socket::new(socket, Some((&config, name)))
    }
}

impl std::fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.tls_name {
            Some(name) if name.contains(':') => write!(f, "tls://[{name}]:{}", self.addr.port()),
            Some(name) => write!(f, "tls://{name}:{}", self.addr.port()),
            None => write!(f, "{}", self.addr),
        }
    }
}

/// A connection to a fanout server speaking the binary format.
#[derive(Debug)]
pub struct Client {
    stream: Socket<TcpStream>,
    input: Vec<u8>,
    /// Start of unparsed bytes in `input`.
    parsed: usize,
    /// Messages and events received while waiting for something else, in arrival order.
    backlog: VecDeque<Delivery>,
    /// Events `next_message` went past (for `next_event`).
    events: VecDeque<Event>,
    out: Vec<u8>,
}

/// A member of a channel, from a presence answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its client id.
    pub client: String,
    /// Its user (empty: none).
    pub user: String,
    /// The node it is on.
    pub node: String,
    /// Its info, a JSON object.
    pub info: String,
}

/// A channel's presence: its members (empty for `presence_stats`), clients and distinct users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    /// The members (none when only the counts were asked).
    pub members: Vec<Member>,
    /// Subscribed connections.
    pub clients: u64,
    /// Distinct users among them.
    pub users: u64,
}

/// What a subscriber receives: a message, or an event about a channel, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A channel's message.
    Message(Message),
    /// A join, a leave, or the server's unsubscribe.
    Event(Event),
    /// A channel's presence, asked when (re)connected (`Subscriber::with_presence`).
    Presence(String, Presence),
}

/// Something the server tells a subscriber beside messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A member joined `channel` (`--join-leave` channels).
    Join {
        /// The channel.
        channel: String,
        /// Its client id, user and info.
        member: Member,
    },
    /// A member left.
    Leave {
        /// The channel.
        channel: String,
        /// Its client id and user (node and info empty).
        member: Member,
    },
    /// The server took this connection out of `channel` (the server API's unsubscribe).
    Unsubscribed {
        /// The channel.
        channel: String,
        /// Why.
        reason: String,
    },
}

enum Owned {
    Message(Message),
    /// An event went into the backlog (so that a caller waiting for deliveries sees it now).
    Queued,
    Member(Member),
    Presence(Vec<u8>, u64, u64),
    Ok(Ack, Vec<u8>),
    History(Vec<u8>, ResumeInfo),
    Ack(Vec<u8>, u64),
    Pong,
}

/// What the server said about a resuming subscribe, before replaying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeInfo {
    /// The channel log's epoch: keep it with the last offset to resume again later.
    pub epoch: u64,
    /// Earliest retained offset.
    pub first: u64,
    /// Latest offset.
    pub last: u64,
    /// Whether the requested offset could be honoured.
    pub status: ResumeStatus,
}

impl Client {
    /// Connects and sends the binary preface.
    pub fn connect(addr: impl ToSocketAddrs) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(addr)?;
        Client::over(Socket::Plain(stream))
    }

    /// Connects to `server`, over TLS for a `tls://` one (trusting `tls`'s roots, the
    /// system's when `None`).
    pub fn open(
        server: &ServerAddr,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> Result<Client, ClientError> {
        let mut socket = server.secure(TcpStream::connect(server.addr)?, tls)?;
        if let Socket::Tls(tls) = &mut socket {
            // Done here, so that a certificate the client does not trust is told as such.
            tls.socket().set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
            tls.complete_handshake().map_err(|e| match e.kind() {
                io::ErrorKind::InvalidData => {
                    ClientError::Tls { server: server.to_string(), reason: e.to_string() }
                }
                _ => ClientError::Io(e),
            })?;
            tls.socket().set_read_timeout(None)?;
        }
        Client::over(socket)
    }

    fn over(stream: Socket<TcpStream>) -> Result<Client, ClientError> {
        stream.socket().set_nodelay(true)?;
        let mut client = Client {
            stream,
            input: Vec::with_capacity(64 * 1024),
            parsed: 0,
            backlog: VecDeque::new(),
            events: VecDeque::new(),
            out: Vec::new(),
        };
        client.stream.write_all(&binary::PREFACE)?;
        client.stream.flush()?;
        Ok(client)
    }

    /// The server's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.stream.socket().peer_addr()
    }

    fn send(&mut self, request: &Request<'_>) -> Result<(), ClientError> {
        self.out.clear();
        binary::encode_request(request, &mut self.out);
        self.stream.write_all(&self.out)?;
        self.stream.flush()?;
        Ok(())
    }

    /// Subscribes and waits for the server's acknowledgement.
    pub fn subscribe(&mut self, channel: &str) -> Result<(), ClientError> {
        self.send(&Request::Subscribe { channel: channel.as_bytes(), resume: None })?;
        self.wait_ack(Ack::Subscribe, channel.as_bytes())
    }

    /// Subscribes and first receives every retained message after offset `after` (0: all that is
    /// retained) of log `epoch` (`None`: whichever). Returns once the server has said how the
    /// resume stands; the replayed messages then come from `next_message`, followed by live ones.
    /// With `strict`, a resume that cannot be honoured fails with server error 410 instead of
    /// starting from the earliest retained message.
    pub fn subscribe_from(
        &mut self,
        channel: &str,
        after: u64,
        epoch: Option<u64>,
        strict: bool,
    ) -> Result<ResumeInfo, ClientError> {
        let resume = Resume { after, epoch, strict };
        self.send(&Request::Subscribe { channel: channel.as_bytes(), resume: Some(resume) })?;
        loop {
            match self.next_owned(None)? {
                Owned::History(name, info) if name == channel.as_bytes() => {
                    if strict && info.status != ResumeStatus::Ok {
                        // The server's ERR 410 follows; surface it.
                        loop {
                            self.next_owned(None)?;
                        }
                    }
                    return Ok(info);
                }
                Owned::Message(message) => self.backlog.push_back(Delivery::Message(message)),
                _ => {}
            }
        }
    }

    /// Publishes and waits until the server says the message is retained (and on disk, with
    /// `--fsync always`); returns its offset.
    pub fn publish_acked(&mut self, channel: &str, payload: &[u8]) -> Result<u64, ClientError> {
        self.publish_acked_nowait(channel, payload)?;
        loop {
            if let Some((_, offset)) = self.next_ack(None)? {
                return Ok(offset);
            }
        }
    }

    /// Publishes asking for an acknowledgement, without waiting for it (see `next_ack`;
    /// acknowledgements arrive in publish order).
    pub fn publish_acked_nowait(
        &mut self,
        channel: &str,
        payload: &[u8],
    ) -> Result<(), ClientError> {
        self.send(&Request::PublishAcked { channel: channel.as_bytes(), payload: payload.into() })
    }

    /// The next acknowledgement (channel, offset), waiting at most `timeout` (`Ok(None)` then).
    pub fn next_ack(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<Option<(Vec<u8>, u64)>, ClientError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            match self.next_owned(deadline) {
                Ok(Owned::Ack(channel, offset)) => return Ok(Some((channel, offset))),
                Ok(Owned::Message(message)) => self.backlog.push_back(Delivery::Message(message)),
                Ok(_) => {}
                Err(ClientError::Timeout) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// Unsubscribes and waits for the acknowledgement.
    pub fn unsubscribe(&mut self, channel: &str) -> Result<(), ClientError> {
        self.send(&Request::Unsubscribe { channel: channel.as_bytes() })?;
        self.wait_ack(Ack::Unsubscribe, channel.as_bytes())
    }

    /// Authenticates with a token (or the API key); returns the token's subject (`-` when it
    /// has none). A refused token is `ClientError::Server` with code 401.
    pub fn authenticate(&mut self, token: &str) -> Result<String, ClientError> {
        self.send(&Request::Auth { token: token.as_bytes() })?;
        loop {
            match self.next_owned(None)? {
                Owned::Ok(Ack::Auth, subject) => {
                    return Ok(String::from_utf8_lossy(&subject).into_owned())
                }
                Owned::Message(message) => self.backlog.push_back(Delivery::Message(message)),
                _ => {}
            }
        }
    }

    /// Claims a unique name; messages published to `@name` then reach this client.
    pub fn claim_name(&mut self, name: &str) -> Result<(), ClientError> {
        self.send(&Request::Name { name: name.as_bytes() })?;
        self.wait_ack(Ack::Name, name.as_bytes())
    }

    /// Publishes without waiting (errors, such as an invalid channel, arrive with a later call).
    pub fn publish(&mut self, channel: &str, payload: &[u8]) -> Result<(), ClientError> {
        self.send(&Request::Publish { channel: channel.as_bytes(), payload: payload.into() })
    }

    /// Round trip: returns once every earlier command of this connection has taken effect.
    pub fn ping(&mut self) -> Result<(), ClientError> {
        self.send(&Request::Ping)?;
        loop {
            match self.next_owned(None)? {
                Owned::Pong => return Ok(()),
                Owned::Message(message) => self.backlog.push_back(Delivery::Message(message)),
                _ => {}
            }
        }
    }

    fn wait_ack(&mut self, ack: Ack, arg: &[u8]) -> Result<(), ClientError> {
        loop {
            match self.next_owned(None)? {
                Owned::Ok(got, got_arg) if got == ack && got_arg == arg => return Ok(()),
                Owned::Message(message) => self.backlog.push_back(Delivery::Message(message)),
                _ => {}
            }
        }
    }

    /// Who is subscribed to `channel` (the channel must have presence on, `--presence`, and
    /// this client permission to subscribe to it).
    pub fn presence(&mut self, channel: &str) -> Result<Presence, ClientError> {
        self.ask_presence(channel, false)
    }

    /// How many clients and distinct users are subscribed to `channel` (no member list).
    pub fn presence_stats(&mut self, channel: &str) -> Result<Presence, ClientError> {
        self.ask_presence(channel, true)
    }

    fn ask_presence(&mut self, channel: &str, stats_only: bool) -> Result<Presence, ClientError> {
        self.send(&Request::Presence { channel: channel.as_bytes(), stats_only })?;
        let mut members = Vec::new();
        loop {
            match self.next_owned(None)? {
                Owned::Member(member) => members.push(member),
                Owned::Presence(name, clients, users) if name == channel.as_bytes() => {
                    return Ok(Presence { members, clients, users })
                }
                Owned::Message(message) => self.backlog.push_back(Delivery::Message(message)),
                _ => {}
            }
        }
    }

    /// The next join, leave or server unsubscribe, waiting at most `timeout` (`Ok(None)` then);
    /// messages that arrive meanwhile wait for `next_message`.
    pub fn next_event(&mut self, timeout: Option<Duration>) -> Result<Option<Event>, ClientError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(event) = self.events.pop_front() {
                return Ok(Some(event));
            }
            if let Some(at) = self.backlog.iter().position(|d| matches!(d, Delivery::Event(_))) {
                if let Some(Delivery::Event(event)) = self.backlog.remove(at) {
                    return Ok(Some(event));
                }
            }
            match self.next_owned(deadline) {
                Ok(Owned::Message(message)) => self.backlog.push_back(Delivery::Message(message)),
                Ok(_) => {}
                Err(ClientError::Timeout) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// The next message or event, in arrival order, waiting at most `timeout`.
    pub fn next_delivery(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<Option<Delivery>, ClientError> {
        if let Some(event) = self.events.pop_front() {
            return Ok(Some(Delivery::Event(event)));
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(delivery) = self.backlog.pop_front() {
                return Ok(Some(delivery));
            }
            match self.next_owned(deadline) {
                // Behind the events that arrived before it.
                Ok(Owned::Message(message)) => self.backlog.push_back(Delivery::Message(message)),
                Ok(_) => {}
                Err(ClientError::Timeout) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// The next message, waiting at most `timeout` (forever when `None`); `Ok(None)` on timeout.
    pub fn next_message(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<Option<Message>, ClientError> {
        while let Some(delivery) = self.backlog.pop_front() {
            match delivery {
                Delivery::Message(message) => return Ok(Some(message)),
                Delivery::Event(event) => {
                    // Kept for `next_event`; a caller that never asks keeps only the latest.
                    if self.events.len() >= MAX_KEPT_EVENTS {
                        self.events.pop_front();
                    }
                    self.events.push_back(event);
                }
                Delivery::Presence(..) => {}
            }
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            match self.next_owned(deadline) {
                Ok(Owned::Message(message)) => return Ok(Some(message)),
                Ok(_) => {}
                Err(ClientError::Timeout) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// The next frame that is not a server PING (those are answered here).
    fn next_owned(&mut self, deadline: Option<Instant>) -> Result<Owned, ClientError> {
        loop {
            if let Some(frame) = self.parse_one()? {
                return Ok(frame);
            }
            self.fill(deadline)?;
        }
    }

    fn parse_one(&mut self) -> Result<Option<Owned>, ClientError> {
        loop {
            let input = &self.input[self.parsed..];
            // A refusal sent before the server knew our format comes as a text line.
            let parsed = if input.starts_with(b"ERR ") {
                text::parse_server_line(input, MAX_FRAME_BYTES)?
            } else {
                binary::parse_server_frame(input, MAX_FRAME_BYTES)?
            };
            let Some((frame, used)) = parsed else { return Ok(None) };
            let owned = match frame {
                ServerFrame::Message { channel, offset, payload } => {
                    Some(Owned::Message(Message {
                        channel: String::from_utf8_lossy(&channel).into_owned(),
                        offset,
                        payload: payload.into_owned(),
                    }))
                }
                ServerFrame::Ok { ack, arg } => Some(Owned::Ok(ack, arg.into_owned())),
                ServerFrame::Error { code, reason } => {
                    let reason = reason.into_owned();
                    self.parsed += used;
                    return Err(ClientError::Server { code, reason });
                }
                ServerFrame::Pong => Some(Owned::Pong),
                ServerFrame::Ack { channel, offset } => {
                    Some(Owned::Ack(channel.into_owned(), offset))
                }
                ServerFrame::History { channel, epoch, first, last, status } => Some(
                    Owned::History(channel.into_owned(), ResumeInfo { epoch, first, last, status }),
                ),
                ServerFrame::Ping => None,
                ServerFrame::Member { client, user, node, info, .. } => {
                    Some(Owned::Member(Member {
                        client: client.into_owned(),
                        user: user.into_owned(),
                        node: node.into_owned(),
                        info: info.into_owned(),
                    }))
                }
                ServerFrame::Presence { channel, clients, users } => {
                    Some(Owned::Presence(channel.into_owned(), clients, users))
                }
                ServerFrame::Join { channel, client, user, info } => {
                    let member = Member {
                        client: client.into_owned(),
                        user: user.into_owned(),
                        node: String::new(),
                        info: info.into_owned(),
                    };
                    let channel = String::from_utf8_lossy(&channel).into_owned();
                    self.backlog.push_back(Delivery::Event(Event::Join { channel, member }));
                    self.parsed += used;
                    return Ok(Some(Owned::Queued));
                }
                ServerFrame::Leave { channel, client, user } => {
                    let member = Member {
                        client: client.into_owned(),
                        user: user.into_owned(),
                        node: String::new(),
                        info: String::new(),
                    };
                    let channel = String::from_utf8_lossy(&channel).into_owned();
                    self.backlog.push_back(Delivery::Event(Event::Leave { channel, member }));
                    self.parsed += used;
                    return Ok(Some(Owned::Queued));
                }
                ServerFrame::Unsubscribed { channel, reason } => {
                    let channel = String::from_utf8_lossy(&channel).into_owned();
                    let reason = reason.into_owned();
                    self.backlog
                        .push_back(Delivery::Event(Event::Unsubscribed { channel, reason }));
                    self.parsed += used;
                    return Ok(Some(Owned::Queued));
                }
            };
            self.parsed += used;
            match owned {
                Some(owned) => return Ok(Some(owned)),
                None => self.send(&Request::Pong)?,
            }
        }
    }

    fn fill(&mut self, deadline: Option<Instant>) -> Result<(), ClientError> {
        if self.parsed > 0 {
            self.input.drain(..self.parsed);
            self.parsed = 0;
        }
        let timeout = match deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(ClientError::Timeout);
                }
                Some(left)
            }
            None => None,
        };
        self.stream.socket().set_read_timeout(timeout)?;
        let start = self.input.len();
        self.input.resize(start + 64 * 1024, 0);
        let read = self.stream.read(&mut self.input[start..]);
        match read {
            Ok(0) => {
                self.input.truncate(start);
                Err(ClientError::Closed)
            }
            Ok(n) => {
                self.input.truncate(start + n);
                Ok(())
            }
            Err(e) => {
                self.input.truncate(start);
                match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                        Err(ClientError::Timeout)
                    }
                    io::ErrorKind::Interrupted => Ok(()),
                    _ => Err(e.into()),
                }
            }
        }
    }
}

/// Exponential backoff with jitter between reconnect attempts: 100 ms doubling up to 5 s, each
/// wait drawn from its upper half so that a crowd of clients does not reconnect in step.
#[derive(Debug)]
struct Backoff {
    next: Duration,
    retry_at: Option<Instant>,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    fn new() -> Backoff {
        Backoff { next: Self::FIRST, retry_at: None }
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
        self.retry_at = None;
    }

    /// Notes a failure: the next attempt waits.
    fn failed(&mut self) {
        use std::hash::{BuildHasher, Hasher};
        // std's hasher is keyed randomly per instance: a cheap source of jitter.
        let jitter = 0.5
            + (std::collections::hash_map::RandomState::new().build_hasher().finish() % 1000)
                as f64
                / 2000.0;
        self.retry_at = Some(Instant::now() + self.next.mul_f64(jitter));
        self.next = (self.next * 2).min(Self::MAX);
    }

    /// True when an attempt may be made now.
    fn ready(&self) -> bool {
        self.retry_at.is_none_or(|at| Instant::now() >= at)
    }

    /// Sleeps until an attempt may be made, at most `limit`.
    fn sleep(&self, limit: Duration) {
        if let Some(at) = self.retry_at {
            std::thread::sleep(at.saturating_duration_since(Instant::now()).min(limit));
        }
    }
}

/// The servers a resilient client may use, and the one it uses now. A cluster's nodes are
/// interchangeable (resume does the rest), so after a failure the client moves on to the next.
#[derive(Debug, Clone)]
struct Servers {
    all: Vec<ServerAddr>,
    current: usize,
    /// Trust roots for `tls://` servers (the system's when `None`).
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Servers {
    fn new<A: Into<ServerAddr> + Clone>(all: &[A]) -> Servers {
        assert!(!all.is_empty(), "a client needs at least one server address");
        Servers { all: all.iter().cloned().map(Into::into).collect(), current: 0, tls: None }
    }

    fn now(&self) -> &ServerAddr {
        &self.all[self.current]
    }

    /// Connects to the current server.
    fn connect(&self) -> Result<Client, ClientError> {
        Client::open(&self.all[self.current], self.tls.as_ref())
    }

    /// Moves to the next server (the same one when there is only one).
    fn failed(&mut self) {
        self.current = (self.current + 1) % self.all.len();
    }
}

/// Where a resuming subscriber stands on one channel.
#[derive(Debug, Clone)]
struct Position {
    channel: String,
    /// The last offset received (or the latest when first subscribed).
    last: Option<u64>,
    epoch: Option<u64>,
}

/// A subscriber that survives disconnects: it reconnects with backoff and jitter (to the next of
/// its servers, given several: a cluster's nodes) and resumes every channel from the last offset
/// it delivered, so that while history retains them nothing is lost and nothing arrives twice.
#[derive(Debug)]
pub struct Subscriber {
    servers: Servers,
    token: Option<String>,
    positions: Vec<Position>,
    client: Option<Client>,
    backoff: Backoff,
    /// Ask these channels' presence on every (re)connect (`with_presence`).
    presence: Vec<String>,
}

impl Subscriber {
    /// Subscribes to `channels` from now (`from: None`) or after offset `from` (0: everything
    /// retained), on the first of `servers` that answers. Connects lazily, on the first
    /// `next_message`.
    pub fn new<A: Into<ServerAddr> + Clone>(
        servers: &[A],
        channels: &[String],
        from: Option<u64>,
    ) -> Subscriber {
        let positions = channels
            .iter()
            .map(|c| Position { channel: c.clone(), last: from, epoch: None })
            .collect();
        let servers = Servers::new(servers);
        Subscriber {
            servers,
            token: None,
            positions,
            client: None,
            backoff: Backoff::new(),
            presence: Vec::new(),
        }
    }

    /// On every (re)connect, delivers these channels' presence (`Delivery::Presence`) before
    /// anything else; their joins and leaves come with `next_delivery` (they are subscribed
    /// to as well).
    pub fn with_presence(mut self, channels: &[String]) -> Subscriber {
        for channel in channels {
            if !self.positions.iter().any(|p| &p.channel == channel) {
                self.positions.push(Position { channel: channel.clone(), last: None, epoch: None });
            }
        }
        self.presence = channels.to_vec();
        self
    }

    /// Authenticates with `token` on every (re)connect.
    pub fn with_token(mut self, token: Option<String>) -> Subscriber {
        self.token = token;
        self
    }

    /// Trusts these roots for `tls://` servers (instead of the system's).
    pub fn with_tls(mut self, config: Option<Arc<rustls::ClientConfig>>) -> Subscriber {
        self.servers.tls = config;
        self
    }

    /// The next message of any channel, reconnecting as long as it takes.
    pub fn next_message(&mut self) -> Result<Message, ClientError> {
        loop {
            if let Delivery::Message(message) = self.next_delivery()? {
                return Ok(message);
            }
        }
    }

    /// The next message, join, leave or presence answer, reconnecting as long as it takes.
    pub fn next_delivery(&mut self) -> Result<Delivery, ClientError> {
        loop {
            if self.client.is_none() {
                match self.connect() {
                    Ok(client) => {
                        self.client = Some(client);
                        self.backoff.reset();
                    }
                    // A refused token or a forbidden channel does not get better by retrying
                    // (a full node, 503, might: the next one is tried).
                    Err(e @ ClientError::Server { code, .. }) if code != 503 => return Err(e),
                    Err(e @ ClientError::Tls { .. }) => return Err(e),
                    Err(e) => {
                        let server = self.servers.now().clone();
                        self.servers.failed();
                        log::warn!(
                            "subscriber: cannot connect to {server}: {e}; trying {}",
                            self.servers.now()
                        );
                        self.backoff.failed();
                        self.backoff.sleep(Backoff::MAX);
                        continue;
                    }
                }
            }
            let Some(client) = self.client.as_mut() else { continue };
            match client.next_delivery(None) {
                Ok(Some(Delivery::Message(message))) => {
                    if let Some(position) =
                        self.positions.iter_mut().find(|p| p.channel == message.channel)
                    {
                        position.last = Some(message.offset);
                    }
                    return Ok(Delivery::Message(message));
                }
                Ok(Some(Delivery::Event(Event::Unsubscribed { channel, reason }))) => {
                    // The server decided: not resubscribed on the next connect.
                    self.positions.retain(|p| p.channel != channel);
                    return Ok(Delivery::Event(Event::Unsubscribed { channel, reason }));
                }
                Ok(Some(delivery)) => return Ok(delivery),
                Ok(None) => {}
                Err(ClientError::Server { code, reason }) if code != 503 => {
                    return Err(ClientError::Server { code, reason })
                }
                Err(e) => {
                    let server = self.servers.now().clone();
                    self.servers.failed();
                    log::warn!(
                        "subscriber: connection to {server} lost ({e}); resuming on {}",
                        self.servers.now()
                    );
                    self.client = None;
                    self.backoff.failed();
                    self.backoff.sleep(Backoff::MAX);
                }
            }
        }
    }

    fn connect(&mut self) -> Result<Client, ClientError> {
        let mut client = self.servers.connect()?;
        if let Some(token) = &self.token {
            client.authenticate(token)?;
        }
        for position in &mut self.positions {
            let after = position.last.unwrap_or(u64::MAX);
            let info = client.subscribe_from(&position.channel, after, position.epoch, false)?;
            if info.status != ResumeStatus::Ok {
                log::warn!(
                    "subscriber: {} after offset {after} is not retained ({}); resuming from the earliest, {}",
                    position.channel,
                    info.status.word(),
                    info.first
                );
            }
            position.epoch = Some(info.epoch);
            if position.last.is_none() {
                position.last = Some(info.last);
            }
        }
        for channel in &self.presence {
            let presence = client.presence(channel)?;
            client.backlog.push_front(Delivery::Presence(channel.clone(), presence));
        }
        Ok(client)
    }
}

/// A publisher that survives disconnects: every message is published with an acknowledgement,
/// and up to `max_unacked` unacknowledged ones are kept and sent again after a reconnect. A
/// message whose acknowledgement was lost with the connection is sent twice (at least once).
#[derive(Debug)]
pub struct Publisher {
    servers: Servers,
    token: Option<String>,
    client: Option<Client>,
    unacked: VecDeque<(String, Vec<u8>)>,
    max_unacked: usize,
    backoff: Backoff,
}

impl Publisher {
    /// Connects lazily (to the first of `servers` that answers, moving on to the next after a
    /// failure); keeps at most `max_unacked` messages waiting for acknowledgement.
    pub fn new<A: Into<ServerAddr> + Clone>(servers: &[A], max_unacked: usize) -> Publisher {
        Publisher {
            servers: Servers::new(servers),
            token: None,
            client: None,
            unacked: VecDeque::new(),
            max_unacked: max_unacked.max(1),
            backoff: Backoff::new(),
        }
    }

    /// Authenticates with `token` on every (re)connect.
    pub fn with_token(mut self, token: Option<String>) -> Publisher {
        self.token = token;
        self
    }

    /// Trusts these roots for `tls://` servers (instead of the system's).
    pub fn with_tls(mut self, config: Option<Arc<rustls::ClientConfig>>) -> Publisher {
        self.servers.tls = config;
        self
    }

    /// Queues and sends one message; blocks while `max_unacked` are waiting (reconnecting as
    /// needed). Fails only on a server error (such as an invalid channel).
    pub fn publish(&mut self, channel: &str, payload: &[u8]) -> Result<(), ClientError> {
        while self.unacked.len() >= self.max_unacked {
            self.settle(Some(Duration::from_millis(100)))?;
        }
        self.unacked.push_back((channel.to_string(), payload.to_vec()));
        if let Some(client) = self.client.as_mut() {
            if let Err(e) = client.publish_acked_nowait(channel, payload) {
                self.lost(e)?;
            }
        }
        self.settle(Some(Duration::ZERO))
    }

    /// Waits until every message is acknowledged.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        while !self.unacked.is_empty() {
            self.settle(Some(Duration::from_millis(100)))?;
        }
        Ok(())
    }

    /// Messages still waiting for acknowledgement.
    pub fn unacknowledged(&self) -> usize {
        self.unacked.len()
    }

    /// Connects if needed (resending what is unacknowledged) and takes the acknowledgements
    /// that arrive within `wait`.
    fn settle(&mut self, wait: Option<Duration>) -> Result<(), ClientError> {
        if self.client.is_none() {
            if !self.backoff.ready() {
                self.backoff.sleep(wait.unwrap_or(Backoff::MAX));
                if !self.backoff.ready() {
                    return Ok(());
                }
            }
            let token = self.token.as_deref();
            let connected = self.servers.connect().and_then(|mut client| {
                if let Some(token) = token {
                    client.authenticate(token)?;
                }
                Ok(client)
            });
            match connected {
                Ok(mut client) => {
                    for (channel, payload) in &self.unacked {
                        client.publish_acked_nowait(channel, payload)?;
                    }
                    self.client = Some(client);
                    self.backoff.reset();
                }
                // A refused token or certificate does not get better by retrying.
                Err(e @ (ClientError::Server { .. } | ClientError::Tls { .. })) => return Err(e),
                Err(e) => {
                    let server = self.servers.now().clone();
                    self.servers.failed();
                    log::warn!(
                        "publisher: cannot connect to {server}: {e}; trying {}",
                        self.servers.now()
                    );
                    self.backoff.failed();
                    return Ok(());
                }
            }
        }
        let Some(client) = self.client.as_mut() else { return Ok(()) };
        let mut timeout = wait;
        loop {
            match client.next_ack(timeout) {
                Ok(Some(_)) => {
                    self.unacked.pop_front();
                    timeout = Some(Duration::ZERO);
                }
                Ok(None) => return Ok(()),
                Err(e) => return self.lost(e),
            }
        }
    }

    fn lost(&mut self, error: ClientError) -> Result<(), ClientError> {
        // A node that cannot publish now (503: full, shutting down, or cut off from its
        // cluster's broker) is left for the next server; other refusals do not get better.
        if matches!(error, ClientError::Server { code, .. } if code != 503) {
            return Err(error);
        }
        let server = self.servers.now().clone();
        self.servers.failed();
        log::warn!(
            "publisher: connection to {server} lost ({error}); {} unacknowledged will be resent to {}",
            self.unacked.len(),
            self.servers.now()
        );
        self.client = None;
        self.backoff.failed();
        Ok(())
    }
}
