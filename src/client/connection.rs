//! `Client`: one connection, its commands and what arrives on it.

use super::*;

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
