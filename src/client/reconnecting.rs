//! `Subscriber` and `Publisher`: clients that survive disconnects, reconnecting with backoff
//! and jitter (to the next of a cluster's nodes) and resuming where they were.

use super::*;

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
