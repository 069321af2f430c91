//! One connection to the upstream server over the binary protocol: a non-blocking socket, what
//! it has read and not yet parsed, what waits to be written, and the answers it waits for, in
//! the order its commands went out (the upstream answers each connection's commands in order).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::cluster::PublishOp;
use crate::history::disk::ReplyTo;
use crate::protocol::{binary, Request};

/// An answer a link waits for.
#[derive(Debug)]
pub(super) enum Expect {
    /// OK AUTH to the upstream token (an error fails the connection).
    Auth,
    /// OK SUB (after HIST and a replay) to a mirrored channel's resume.
    Subscribe(Bytes),
    Unsubscribe,
    PatternSubscribe(Box<[u8]>),
    PatternUnsubscribe,
    /// ACK (or an error) to a client's publish.
    Publish(PublishOp),
    /// OK NAME to a claim for a connection of this node.
    Name {
        reply_to: Option<ReplyTo>,
    },
    /// OK SUB to a resume's read of history (`Fetching`).
    Fetch,
    Pong,
}

impl Expect {
    /// Whether the upstream may take long to answer it: a SUB waits there until the upstream
    /// serves the channel (a Redis-joined upstream catching up), so only silence counts.
    pub fn may_wait(&self) -> bool {
        matches!(self, Expect::Subscribe(_) | Expect::Fetch)
    }
}

pub(super) struct Link {
    stream: TcpStream,
    /// The connect completed (writable once).
    connected: bool,
    pub input: Vec<u8>,
    output: Vec<u8>,
    pub expects: VecDeque<(Instant, Expect)>,
    /// When something last came from the upstream (or the link was made).
    pub last_heard: Instant,
    /// The read stopped before the socket was drained (ring full, or the turn's budget).
    pub unread: bool,
    /// When the oldest command became the oldest (its answer is timed from then: the ones
    /// before it may take their time, a queue of SUBs after a reconnect).
    pub head_since: Instant,
    /// The upstream accepted the token (or none was presented).
    pub authed: bool,
    /// When the connect began (one that never completes is given up on).
    pub opened: Instant,
}

/// Bytes read from one link per turn.
pub(super) const READ_BUDGET: usize = 64 * 1024;

impl Link {
    /// Starts a connect to `addr`, with the preface (and `token`'s AUTH) queued.
    pub fn open(
        addr: SocketAddr,
        token: Token,
        registry: &Registry,
        auth: Option<&[u8]>,
    ) -> io::Result<Link> {
        let mut stream = TcpStream::connect(addr)?;
        // Acknowledgements and pings are small and waited for: no Nagle delay.
        stream.set_nodelay(true)?;
        registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
        let now = Instant::now();
        let mut link = Link {
            stream,
            connected: false,
            input: Vec::new(),
            output: binary::PREFACE.to_vec(),
            expects: VecDeque::new(),
            last_heard: now,
            unread: false,
            head_since: now,
            authed: auth.is_none(),
            opened: now,
        };
        if let Some(token) = auth {
            link.send(&Request::Auth { token }, Expect::Auth);
        }
        Ok(link)
    }

    /// Queues `request`, whose answer is `expect`.
    pub fn send(&mut self, request: &Request<'_>, expect: Expect) {
        self.write(request);
        self.expect(expect);
    }

    /// Queues a request that has no answer (PONG), or whose answer `expect` names next.
    pub fn write(&mut self, request: &Request<'_>) {
        binary::encode_request(request, &mut self.output);
    }

    /// The answer to the request just written.
    pub fn expect(&mut self, expect: Expect) {
        self.expects.push_back((Instant::now(), expect));
    }

    /// The answer to the oldest command.
    pub fn answered(&mut self) -> Option<Expect> {
        self.head_since = Instant::now();
        self.expects.pop_front().map(|(_, expect)| expect)
    }

    /// How long the oldest command has waited for its answer: since it was sent, or since the
    /// one before it was answered, whichever is later.
    pub fn head_waited(&self, now: Instant) -> Option<std::time::Duration> {
        let (sent, _) = self.expects.front()?;
        Some(now.saturating_duration_since((*sent).max(self.head_since)))
    }

    /// Whether the connect completed and nothing failed.
    pub fn is_ready(&self) -> bool {
        self.connected
    }

    /// Writes what is queued; `Err` when the connection failed.
    pub fn flush(&mut self) -> io::Result<()> {
        if !self.connected {
            match self.stream.peer_addr() {
                Ok(_) => self.connected = true,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                    // Still connecting, or refused: the socket's error says which.
                    return match self.stream.take_error()? {
                        Some(e) => Err(e),
                        None => Ok(()),
                    };
                }
                Err(e) => return Err(e),
            }
        }
        let mut written = 0;
        while written < self.output.len() {
            match self.stream.write(&self.output[written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        self.output.drain(..written);
        Ok(())
    }

    /// Reads up to `budget` bytes into `input`; `Err` when the connection closed or failed.
    pub fn read(&mut self, budget: usize) -> io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let mut taken = 0;
        self.unread = false;
        loop {
            if taken >= budget {
                self.unread = true;
                return Ok(());
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed")),
                Ok(n) => {
                    self.input.extend_from_slice(&chunk[..n]);
                    self.last_heard = Instant::now();
                    taken += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    pub fn close(mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.stream);
    }
}
