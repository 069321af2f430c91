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

mod connection;
mod reconnecting;

pub use self::reconnecting::{Publisher, Subscriber};

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
