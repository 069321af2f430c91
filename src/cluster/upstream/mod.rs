//! Edge mode (`fanout serve --upstream HOST:PORT`): this node holds connections and mirrors,
//! from an upstream fanout server (a hub, another edge, a Redis-joined node), only the channels
//! its own clients use, with the upstream's offsets and epochs. A client of an edge sees what
//! a client of the hub sees: same offsets, same notices, resume on any node of the tree.
//!
//! ```text
//!   hub ──binary protocol── edge thread ──► ring ──► edge workers ──► clients
//!    ▲   subs:  SUB with a resume per channel (HIST, replay, OK, live)        │
//!    │   pubs:  PUBA per client publish, acknowledged after the hub's ACK  ◄──┘
//!    │   fetch: a resume's read of history the edge's memory no longer holds
//!    └── names: one connection per client name (NAME: unique across the tree)
//! ```
//!
//! The thread stands where the Redis broker stands (the workers' `Broker` handle and its
//! `BrokerOp`s, `IntoRing` into the ring), so workers do not know which one runs. What each
//! channel's mirror does with what arrives is decided by `mirror::EdgeMirror`, a plain state
//! machine tested under a seeded simulator.
//!
//! Losing the upstream: subscribers stay; publishes in flight and new ones are refused (503)
//! until a connection is back; the thread connects again (the next upstream given, backoff with
//! jitter), resumes every channel from its log's last offset, and the upstream's answer says
//! what subscribers are told (nothing, a hole, another epoch). Presence and the server API are
//! this node's own on an edge (they are not carried through the tree).

mod link;
mod mirror;

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Receiver;
use log::{debug, info, warn};
use mio::{Events, Poll, Token};
use slab::Slab;

use self::link::{Expect, Link, READ_BUDGET};
use self::mirror::{EdgeMirror, Hist, State};
use super::into_ring::IntoRing;
use super::mirror::Step;
use super::multicast::{self, Datagram, READ_DATAGRAMS};
use super::{
    next_backoff, Broker, BrokerOp, ClusterConfig, PublishOp, BACKOFF_MIN, BACKPRESSURE_RETRY,
    MAX_BACKFILL, PATTERN_CHANNEL_QUIET, SWEEP_EVERY, WAKER,
};
use crate::history::disk::{PublishOutcome, ReplyTo};
use crate::history::{new_epoch, now_ms, Retained};
use crate::protocol::{binary, Ack, ErrorCode, Request, Resume, ServerFrame};
use crate::server::channels::{is_notice, Channel};
use crate::server::ring::Producer;
use crate::server::{Answer, Item, ServerForBroker};

const GROUP: Token = Token(usize::MAX - 1);
const SUBS: Token = Token(0);
const PUBS: Token = Token(1);
const FETCH: Token = Token(2);
/// Name connections' tokens start here (the slab key after it).
const NAMES: usize = 3;
/// A channel the multicast group brought nothing for (not even a heartbeat) this long is
/// subscribed over TCP again (the hub stopped sending, or the group stopped reaching us).
const MULTICAST_SILENCE: Duration = Duration::from_secs(1);
/// A claim no upstream answered is refused after this many command timeouts.
const CLAIM_PATIENCE: u32 = 2;
/// A SUB waiting upstream is given this many command timeouts.
const WAITING_SUB_PATIENCE: u32 = 6;
/// The finest a link's timers are looked at.
const TIMER_GRAIN: Duration = Duration::from_millis(100);

/// The upstream thread's poll and queue, made before `Shared` exists.
pub(crate) struct Unstarted {
    pub poll: Poll,
    pub ops: Receiver<BrokerOp>,
    pub config: ClusterConfig,
}

/// A channel this node mirrors.
struct Tracked {
    channel: Arc<Channel>,
    mirror: EdgeMirror,
    /// A refused SUB is tried again then.
    retry_at: Option<Instant>,
    /// Found through a pattern, not asked for by a subscriber.
    via_pattern: bool,
    last_heard: Instant,
    /// Subscribed on the subscription connection (a SUB sent, no UNSUB since).
    tcp_subscribed: bool,
    /// Its messages come from the multicast group (its subscription is let go of after each
    /// resume); since when the group last brought something for it.
    multicast: Option<Instant>,
}

/// A pattern subscribed upstream for this node's pattern subscribers.
struct PatternTrack {
    /// What went upstream (`>` for a Redis client's glob, which only this node can match).
    wire: Box<[u8]>,
    live: bool,
    unused_sweeps: u32,
}

/// A client name held upstream for a connection of this node.
struct NameLink {
    name: Bytes,
    link: Option<Link>,
    /// Granted once (a re-claim after a reconnect that fails takes the name away).
    granted: bool,
    reply_to: ReplyTo,
    /// When the claim came: one no upstream answered in `CLAIM_PATIENCE` timeouts is refused.
    asked_at: Instant,
}

/// A resume's read of history the node's memory no longer holds.
struct Fetching {
    channel: Bytes,
    after: u64,
    upto: u64,
    epoch: u64,
    reply_to: ReplyTo,
    /// Its HIST came and named `epoch`: the replay is what was asked.
    matching: Option<bool>,
    entries: Vec<Retained>,
}

struct EdgeThread {
    poll: Poll,
    ops: Receiver<BrokerOp>,
    config: ClusterConfig,
    ring: IntoRing,
    /// The upstream tried now (index into `config.upstream`).
    at: usize,
    subs: Option<Link>,
    pubs: Option<Link>,
    fetch: Option<Link>,
    names: Slab<NameLink>,
    /// The upstream's address in use, for name connections.
    addr: Option<SocketAddr>,
    tracked: HashMap<Bytes, Tracked>,
    patterns: HashMap<Box<[u8]>, PatternTrack>,
    fetches: VecDeque<Fetching>,
    retry_at: Option<Instant>,
    backoff: Duration,
    next_sweep: Instant,
    stopping: bool,
    ever_up: bool,
    /// `--multicast`: the group's socket, and datagrams left to read (the ring was full).
    group: Option<mio::net::UdpSocket>,
    group_unread: bool,
    datagram: Vec<u8>,
    next_silence_check: Instant,
}

impl Unstarted {
    /// Runs the upstream thread until the server shuts down.
    pub fn run(self, server: ServerForBroker, producer: Producer<Item>) {
        let Unstarted { poll, ops, config } = self;
        let now = Instant::now();
        let mut thread = EdgeThread {
            poll,
            ops,
            config,
            ring: IntoRing::new(server, producer),
            at: 0,
            subs: None,
            pubs: None,
            fetch: None,
            names: Slab::new(),
            addr: None,
            tracked: HashMap::new(),
            patterns: HashMap::new(),
            fetches: VecDeque::new(),
            retry_at: Some(now),
            backoff: BACKOFF_MIN,
            next_sweep: now + SWEEP_EVERY,
            stopping: false,
            ever_up: false,
            group: None,
            group_unread: false,
            datagram: vec![0; 65_536],
            next_silence_check: now,
        };
        if let Some(config) = thread.ring.server.multicast() {
            let joined = multicast::join(&config).and_then(|socket| {
                let mut socket = mio::net::UdpSocket::from_std(socket);
                thread.poll.registry().register(&mut socket, GROUP, mio::Interest::READABLE)?;
                Ok(socket)
            });
            match joined {
                Ok(socket) => {
                    info!("edge: listening to multicast group {}", config.group);
                    thread.group = Some(socket);
                }
                Err(e) => warn!(
                    "edge: cannot join multicast group {} ({e}); everything comes over TCP",
                    config.group
                ),
            }
        }
        let broadcast = thread.ring.server.channels().broadcast().clone();
        thread.track(broadcast.name.clone(), broadcast, EdgeMirror::unaligned(), false);
        thread.run();
    }
}

impl EdgeThread {
    fn broker(&self) -> &Broker {
        self.ring.server.broker()
    }

    fn run(mut self) {
        info!("edge: mirroring from upstream {}", self.config.upstream.join(", "));
        let mut events = Events::with_capacity(256);
        loop {
            let timeout = self.next_timer().saturating_duration_since(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, Some(timeout.min(SWEEP_EVERY))) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    crate::sys::fatal(&format!("edge: poll failed: {e}"));
                }
            }
            let ready: Vec<Token> = events.iter().map(|e| e.token()).collect();
            for token in ready {
                match token {
                    WAKER => self.broker().wake_pending.store(false, Ordering::Release),
                    GROUP => self.read_group(),
                    token => self.link_ready(token),
                }
            }
            for token in [SUBS, PUBS, FETCH] {
                if self.link(token).is_some_and(|l| l.unread) {
                    self.link_ready(token);
                }
            }
            if self.group_unread {
                self.read_group();
            }
            self.take_ops();
            if self.stopping || self.ring.server.shutting_down() {
                break;
            }
            self.timers();
            self.flush();
            self.ring.end_turn();
        }
        let _ = self.flush_all();
        self.refuse_in_flight("the server is shutting down");
        debug!("edge: stopped");
    }

    fn next_timer(&self) -> Instant {
        let unread = [SUBS, PUBS, FETCH].iter().any(|&t| self.link(t).is_some_and(|l| l.unread));
        let probe = self.config.probe_interval;
        // A link whose probe is out (or whose answer is late) is looked at again in a while,
        // not in a loop.
        let soonest = Instant::now() + TIMER_GRAIN;
        let links = [&self.subs, &self.pubs, &self.fetch].into_iter().flatten();
        links
            .map(|l| (l.last_heard + probe).max(soonest))
            .chain(self.retry_at)
            .chain((unread || self.group_unread).then(|| Instant::now() + BACKPRESSURE_RETRY))
            .fold(self.next_sweep, Instant::min)
    }

    fn link(&self, token: Token) -> Option<&Link> {
        match token {
            SUBS => self.subs.as_ref(),
            PUBS => self.pubs.as_ref(),
            FETCH => self.fetch.as_ref(),
            Token(t) => self.names.get(t.wrapping_sub(NAMES)).and_then(|n| n.link.as_ref()),
        }
    }

    fn link_mut(&mut self, token: Token) -> Option<&mut Link> {
        match token {
            SUBS => self.subs.as_mut(),
            PUBS => self.pubs.as_mut(),
            FETCH => self.fetch.as_mut(),
            Token(t) => self.names.get_mut(t.wrapping_sub(NAMES)).and_then(|n| n.link.as_mut()),
        }
    }

    fn upstream_up(&self) -> bool {
        let up = |l: &Option<Link>| l.as_ref().is_some_and(|l| l.is_ready() && l.authed);
        up(&self.subs) && up(&self.pubs)
    }

    /// Publishes go through while both the subscription and the publish connection are up.
    fn note_up(&mut self) {
        let up = self.upstream_up();
        let was = self.broker().shards[0].swap(up, Ordering::AcqRel);
        if up && !was {
            self.backoff = BACKOFF_MIN;
            let counters = &self.broker().counters;
            counters.shards_up.store(1, Ordering::Relaxed);
            if self.ever_up {
                counters.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            info!("edge: upstream {} is up", self.config.upstream[self.at]);
            self.ever_up = true;
            // `*` needs no subscription: every connection receives it.
            let broadcast = self.ring.server.channels().broadcast().name.clone();
            self.serve_now(&broadcast);
        }
    }

    /// Reads and writes a link that is ready.
    fn link_ready(&mut self, token: Token) {
        let has_room = self.ring.has_room();
        let max = self.ring.server.max_frame_bytes() + 1024;
        let Some(link) = self.link_mut(token) else { return };
        let mut result = link.flush();
        if result.is_ok() {
            // Delivering links are read only while the ring has room for what a read brings.
            let delivers = token == SUBS || token.0 >= NAMES;
            let budget = if delivers && !has_room { 0 } else { READ_BUDGET };
            result = link.read(budget);
        }
        let mut input = std::mem::take(&mut link.input);
        let mut used = 0;
        while result.is_ok() {
            match binary::parse_server_frame(&input[used..], max) {
                Ok(Some((frame, n))) => {
                    used += n;
                    self.frame(token, frame);
                }
                Ok(None) => break,
                Err(e) => {
                    result =
                        Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
                }
            }
            if self.link(token).is_none() {
                // The frame closed it (a refused name).
                return;
            }
        }
        input.drain(..used);
        if let Some(link) = self.link_mut(token) {
            link.input = input;
        }
        if let Err(e) = result {
            self.link_failed(token, &e.to_string());
        } else {
            self.note_up();
        }
    }

    fn link_failed(&mut self, token: Token, why: &str) {
        match token {
            SUBS | PUBS | FETCH => self.down(&format!("connection lost: {why}")),
            Token(t) => {
                let Some(entry) = self.names.get_mut(t - NAMES) else { return };
                debug!("edge: the name connection of {} failed: {why}", lossy(&entry.name));
                if let Some(link) = entry.link.take() {
                    link.close(self.poll.registry());
                }
                // Claimed again with the next connection upstream (`reclaim_names`).
                if !entry.granted {
                    let why = format!(
                        "broker unavailable: the upstream dropped the name's connection ({why}; \
                         each name held through an edge is a connection to the upstream, within \
                         its --max-connections-per-ip)"
                    );
                    self.drop_name(t - NAMES, ErrorCode::Unavailable, why.into());
                }
            }
        }
    }

    /// The upstream is gone: everything in flight is refused, every mirror waits for the next
    /// connection, and the next upstream is tried after a backoff.
    fn down(&mut self, why: &str) {
        if self.subs.is_none() && self.pubs.is_none() && self.fetch.is_none() {
            return;
        }
        let upstream = &self.config.upstream[self.at];
        if self.broker().shards[0].swap(false, Ordering::AcqRel) {
            warn!("edge: upstream {upstream} lost ({why}); subscribers stay, publishes are refused until it is back");
        } else {
            debug!("edge: cannot use upstream {upstream}: {why}");
        }
        self.broker().counters.shards_up.store(0, Ordering::Relaxed);
        self.refuse_in_flight("broker unavailable: the upstream connection was lost; the publish may or may not have been carried out");
        for link in [self.subs.take(), self.pubs.take(), self.fetch.take()].into_iter().flatten() {
            link.close(self.poll.registry());
        }
        for (_, entry) in self.names.iter_mut() {
            if let Some(link) = entry.link.take() {
                link.close(self.poll.registry());
            }
        }
        for tracked in self.tracked.values_mut() {
            tracked.mirror.lost();
            tracked.tcp_subscribed = false;
            if tracked.via_pattern {
                // What the pattern brought while the connection was down is read by a resume
                // on the next one (then the subscription is let go of again).
                tracked.mirror.state = State::Idle;
                tracked.mirror.resumes = true;
            }
        }
        for pattern in self.patterns.values_mut() {
            pattern.unused_sweeps = 0;
        }
        self.try_next_upstream_later();
    }

    /// Answers everything the lost connections were waiting for.
    fn refuse_in_flight(&mut self, why: &str) {
        let why: Arc<str> = why.into();
        let expects = [&mut self.pubs, &mut self.fetch, &mut self.subs]
            .into_iter()
            .flatten()
            .flat_map(|l| std::mem::take(&mut l.expects))
            .map(|(_, e)| e)
            .collect::<Vec<_>>();
        for expect in expects {
            if let Expect::Publish(op) = expect {
                self.answer(&op, 0, Err((ErrorCode::Unavailable, why.clone())));
            }
        }
        for fetching in std::mem::take(&mut self.fetches) {
            let target = fetching.reply_to;
            let answer = Answer::Backfill { target, entries: Err(why.clone()) };
            self.ring.server.answer(target.worker, answer);
        }
    }

    fn connect(&mut self) {
        self.retry_at = None;
        let upstream = self.config.upstream[self.at].clone();
        // A name lookup blocks this thread only, which has nothing else to do while down.
        let addr = match upstream.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(addr)) => addr,
            Ok(None) => return self.connect_failed(&upstream, "the name has no address"),
            Err(e) => return self.connect_failed(&upstream, &e.to_string()),
        };
        let token = self.token_bytes();
        let auth = token.as_deref();
        let registry = self.poll.registry();
        let opened = (|| {
            Ok::<_, std::io::Error>((
                Link::open(addr, SUBS, registry, auth)?,
                Link::open(addr, PUBS, registry, auth)?,
                Link::open(addr, FETCH, registry, auth)?,
            ))
        })();
        match opened {
            Ok((subs, pubs, fetch)) => {
                self.subs = Some(subs);
                self.pubs = Some(pubs);
                self.fetch = Some(fetch);
                self.addr = Some(addr);
            }
            Err(e) => return self.connect_failed(&upstream, &e.to_string()),
        }
        // Every mirror resumes from its log; every pattern and name is asked again.
        let topics: Vec<Bytes> = self
            .tracked
            .iter()
            .filter(|(_, t)| t.mirror.resumes && t.mirror.state == State::Idle)
            .map(|(name, _)| name.clone())
            .collect();
        for name in topics {
            self.subscribe(&name);
        }
        let patterns: Vec<Box<[u8]>> = self.patterns.keys().cloned().collect();
        for text in patterns {
            self.subscribe_pattern(&text);
        }
        self.reclaim_names();
    }

    /// The next upstream given is tried after a backoff.
    fn try_next_upstream_later(&mut self) {
        self.at = (self.at + 1) % self.config.upstream.len();
        self.retry_at = Some(Instant::now() + next_backoff(&mut self.backoff));
    }

    fn connect_failed(&mut self, upstream: &str, why: &str) {
        warn!("edge: cannot connect to upstream {upstream}: {why}");
        self.try_next_upstream_later();
    }

    /// What is presented upstream: the token file as it is now (a token replaced there before
    /// it expires is the next connection's), or the token given at start.
    fn token_bytes(&self) -> Option<Vec<u8>> {
        let given = || self.config.upstream_token.as_ref().map(|t| t.as_bytes().to_vec());
        let Some(path) = &self.config.upstream_token_file else { return given() };
        match crate::sys::read_secret(path) {
            Ok(token) => Some(token),
            Err(e) => {
                warn!(
                    "edge: cannot read {} ({e}); presenting the token read at start",
                    path.display()
                );
                given()
            }
        }
    }

    /// Name connections for every name held or asked for, after a reconnect.
    fn reclaim_names(&mut self) {
        let keys: Vec<usize> =
            self.names.iter().filter(|(_, n)| n.link.is_none()).map(|(k, _)| k).collect();
        for key in keys {
            self.open_name_link(key);
        }
    }

    fn take_ops(&mut self) {
        while let Ok(op) = self.ops.try_recv() {
            match op {
                BrokerOp::Publish(op) => self.publish(op),
                BrokerOp::Serve(channel) => self.serve(channel),
                BrokerOp::ServePattern(text) => self.serve_pattern(text),
                BrokerOp::Claim { name, reply_to } => self.claim(name, reply_to),
                BrokerOp::Release { name } => self.release(&name),
                BrokerOp::Backfill { channel, after, upto, reply_to } => {
                    self.backfill(channel, after, upto, reply_to)
                }
                BrokerOp::PresenceQuery { format, reply_to, .. } => {
                    // Workers of an edge answer presence themselves; never sent here.
                    let why = "presence is not carried through an edge";
                    let frame = format.encode_error(ErrorCode::NotImplemented, why);
                    let answer = Answer::Reply { target: reply_to, frame, as_of: None };
                    self.ring.server.answer(reply_to.worker, answer);
                }
                BrokerOp::Presence { .. }
                | BrokerOp::Control { .. }
                | BrokerOp::Survey { .. }
                | BrokerOp::SlotMap(_)
                | BrokerOp::Resolved { .. } => {
                    debug!("edge: an operation of the Redis broker came to the edge; ignored")
                }
                BrokerOp::Leave(done) => {
                    let _ = done.send(());
                }
                BrokerOp::Shutdown => self.stopping = true,
            }
        }
    }

    fn publish(&mut self, op: PublishOp) {
        if !self.upstream_up() {
            let why = "broker unavailable: no upstream is reachable; nothing was published";
            return self.answer(&op, 0, Err((ErrorCode::Unavailable, why.into())));
        }
        let Some(pubs) = self.pubs.as_mut() else { return };
        let request =
            Request::PublishAcked { channel: &op.channel, payload: Cow::Borrowed(&op.payload[..]) };
        pubs.write(&request);
        pubs.expect(Expect::Publish(op));
    }

    /// Answers publish `op` (to its worker when acknowledged or refused).
    fn answer(&self, op: &PublishOp, offset: u64, result: Result<(), (ErrorCode, Arc<str>)>) {
        let counters = &self.broker().counters;
        counters.publishes_in_flight.fetch_sub(1, Ordering::Relaxed);
        match &result {
            Ok(()) => {
                counters.publishes_done.fetch_add(1, Ordering::Relaxed);
                let took = self.ring.server.clock_ns().saturating_sub(op.asked_ns);
                counters.round_trip.observe(took, 1);
                if !op.acked {
                    return;
                }
            }
            Err(_) => {
                counters.publishes_refused.fetch_add(1, Ordering::Relaxed);
            }
        }
        let outcome = PublishOutcome {
            target: op.reply_to,
            channel: op.channel.clone(),
            offset,
            result,
            asked_ns: op.asked_ns,
        };
        self.ring.server.answer(op.reply_to.worker, Answer::Published(outcome));
    }

    fn track(&mut self, name: Bytes, channel: Arc<Channel>, mirror: EdgeMirror, via_pattern: bool) {
        self.broker().counters.channels_served.fetch_add(1, Ordering::Relaxed);
        let tracked = Tracked {
            channel,
            mirror,
            retry_at: None,
            via_pattern,
            last_heard: Instant::now(),
            tcp_subscribed: false,
            multicast: None,
        };
        self.tracked.insert(name, tracked);
    }

    /// A worker found `channel` idle: mirror it (an inbox is mirrored from its name connection).
    fn serve(&mut self, channel: Arc<Channel>) {
        let name = channel.name.clone();
        self.broker().note_refusal(&name, None);
        if let Some(tracked) = self.tracked.get_mut(&name) {
            if tracked.channel.name.first() == Some(&b'@') {
                return self.serve_now(&name);
            }
            // Heard through a pattern so far: now it is subscribed (with a resume) like any
            // channel, unless the multicast group brings it.
            tracked.via_pattern = false;
            let subscribing = tracked.tcp_subscribed || tracked.mirror.state == State::Asked;
            if !subscribing && tracked.multicast.is_none() {
                tracked.mirror.state = State::Idle;
                self.subscribe(&name);
            }
            return;
        }
        if name.first() == Some(&b'@') {
            // The name connection delivers it; served once the name is granted.
            self.track(name.clone(), channel, EdgeMirror::unaligned(), false);
            return self.serve_now(&name);
        }
        self.track(name.clone(), channel, EdgeMirror::new(), false);
        self.subscribe(&name);
    }

    /// SUB with the mirror's resume, if the upstream connection is there.
    fn subscribe(&mut self, name: &Bytes) {
        let Some(subs) = self.subs.as_mut() else { return };
        let Some(tracked) = self.tracked.get_mut(name) else { return };
        let resume = tracked.mirror.resume(&*tracked.channel.lock_log());
        tracked.mirror.asked();
        tracked.retry_at = None;
        tracked.tcp_subscribed = true;
        let request = Request::Subscribe { channel: name, resume: Some(resume) };
        subs.send(&request, Expect::Subscribe(name.clone()));
    }

    /// Lets go of a channel's subscription upstream (the multicast group brings its messages).
    fn unsubscribe(&mut self, name: &Bytes) {
        let Some(tracked) = self.tracked.get_mut(name) else { return };
        let Some(subs) = self.subs.as_mut().filter(|_| tracked.tcp_subscribed) else { return };
        tracked.tcp_subscribed = false;
        subs.send(&Request::Unsubscribe { channel: name }, Expect::Unsubscribe);
    }

    /// Marks a channel without a resume served now.
    fn serve_now(&mut self, name: &Bytes) {
        let Some(tracked) = self.tracked.get_mut(name) else { return };
        let steps = tracked.mirror.serve(&*tracked.channel.lock_log());
        let channel = tracked.channel.clone();
        self.apply(&channel, steps);
    }

    fn serve_pattern(&mut self, text: Box<[u8]>) {
        if self.patterns.contains_key(&text) {
            return;
        }
        // A Redis client's glob (`GLOB_KEY`) has no fanout pattern: everything is received,
        // and this node's workers match it.
        let wire: Box<[u8]> = match text.first() == Some(&crate::server::patterns::GLOB_KEY) {
            true => Box::from(&b">"[..]),
            false => text.clone(),
        };
        self.patterns.insert(text.clone(), PatternTrack { wire, live: false, unused_sweeps: 0 });
        self.subscribe_pattern(&text);
    }

    fn subscribe_pattern(&mut self, text: &[u8]) {
        let Some(subs) = self.subs.as_mut() else { return };
        let Some(track) = self.patterns.get(text) else { return };
        let request = Request::PatternSubscribe { pattern: &track.wire };
        subs.send(&request, Expect::PatternSubscribe(text.into()));
    }

    /// A name claimed for a connection here: held upstream by a connection of its own (a
    /// claim that comes while the upstream is being reached waits for it, a while).
    fn claim(&mut self, name: Bytes, reply_to: ReplyTo) {
        let entry =
            NameLink { name, link: None, granted: false, reply_to, asked_at: Instant::now() };
        let key = self.names.insert(entry);
        if self.subs.is_some() {
            self.open_name_link(key);
        }
    }

    /// Connects name `key`'s connection and claims the name on it.
    fn open_name_link(&mut self, key: usize) {
        let Some(addr) = self.addr else { return };
        let token = self.token_bytes();
        let registry = self.poll.registry();
        match Link::open(addr, Token(NAMES + key), registry, token.as_deref()) {
            Ok(mut link) => {
                let Some(entry) = self.names.get_mut(key) else { return };
                let reply_to = (!entry.granted).then_some(entry.reply_to);
                link.send(&Request::Name { name: &entry.name }, Expect::Name { reply_to });
                entry.link = Some(link);
            }
            // Tried again with the next connection upstream.
            Err(e) => debug!("edge: cannot open a name's connection: {e}"),
        }
    }

    /// Claims no upstream answered in time are refused.
    fn refuse_late_claims(&mut self, now: Instant) {
        let patience = self.config.command_timeout * CLAIM_PATIENCE;
        let late: Vec<usize> = self
            .names
            .iter()
            .filter(|(_, n)| !n.granted && now.saturating_duration_since(n.asked_at) >= patience)
            .map(|(key, _)| key)
            .collect();
        for key in late {
            let why =
                format!("broker unavailable: no upstream answered the claim within {patience:?}");
            self.drop_name(key, ErrorCode::Unavailable, why.into());
        }
    }

    /// Lets go of name `key` and its connection: a claim not granted yet is refused with `why`,
    /// a granted name is told lost.
    fn drop_name(&mut self, key: usize, code: ErrorCode, why: Arc<str>) {
        if !self.names.contains(key) {
            return;
        }
        let entry = self.names.remove(key);
        if let Some(link) = entry.link {
            link.close(self.poll.registry());
        }
        let (target, name) = (entry.reply_to, entry.name);
        let answer = match entry.granted {
            false => Answer::NameClaim { target, name, result: Err((code, why)) },
            true => Answer::NameLost { target, name },
        };
        self.ring.server.answer(target.worker, answer);
    }

    fn release(&mut self, name: &[u8]) {
        // The granted holder's (a claim of the same name still waiting here is another
        // connection's, which a late grant to a gone one must not take away).
        let named = || self.names.iter().filter(|(_, n)| n.name[..] == *name);
        let key = named().find(|(_, n)| n.granted).or_else(|| named().next()).map(|(k, _)| k);
        if let Some(key) = key {
            if let Some(link) = self.names.remove(key).link {
                link.close(self.poll.registry());
            }
        }
    }

    fn backfill(&mut self, channel: Bytes, after: u64, upto: u64, reply_to: ReplyTo) {
        let epoch = self.tracked.get(&channel).map(|t| t.channel.lock_log().epoch);
        let (Some(_), Some(epoch)) = (self.fetch.as_ref(), epoch) else {
            let why: Arc<str> =
                "broker unavailable: no upstream is reachable to read history".into();
            let answer = Answer::Backfill { target: reply_to, entries: Err(why) };
            return self.ring.server.answer(reply_to.worker, answer);
        };
        // One answer stays a sane size: the newest messages are read (those right before the
        // node's memory), so the replay has no hole; a longer gap is told `expired` at its start.
        let after = after.max(upto.saturating_sub(MAX_BACKFILL));
        let entries = Vec::new();
        let fetching = Fetching { channel, after, upto, epoch, reply_to, matching: None, entries };
        self.fetches.push_back(fetching);
        if self.fetches.len() == 1 {
            self.send_fetch();
        }
    }

    /// The oldest read of history goes up: one at a time, as the upstream refuses a second
    /// subscription of one channel on a connection.
    fn send_fetch(&mut self) {
        let (Some(fetch), Some(next)) = (self.fetch.as_mut(), self.fetches.front()) else {
            return;
        };
        let resume = Resume { after: next.after, epoch: Some(next.epoch), strict: false };
        let request = Request::Subscribe { channel: &next.channel, resume: Some(resume) };
        fetch.send(&request, Expect::Fetch);
    }

    /// One frame from the upstream on link `token`.
    fn frame(&mut self, token: Token, frame: ServerFrame<'_>) {
        match frame {
            ServerFrame::Ping => {
                if let Some(link) = self.link_mut(token) {
                    link.write(&Request::Pong);
                }
            }
            ServerFrame::Pong => self.ponged(token),
            // Offsets start at 1 and stay below the ring's notice values: a peer that says
            // otherwise is not a fanout server to mirror.
            ServerFrame::Message { offset, .. } | ServerFrame::Ack { offset, .. }
                if offset == 0 || is_notice(offset) =>
            {
                self.link_failed(token, &format!("the upstream sent offset {offset}"))
            }
            ServerFrame::History { first, last, .. } if is_notice(first) || is_notice(last) => {
                self.link_failed(token, &format!("the upstream sent offsets {first}..{last}"))
            }
            ServerFrame::Message { channel, offset, payload } => match token {
                SUBS => self.message(&channel, offset, &payload),
                FETCH => self.fetched(&channel, offset, &payload),
                Token(t) if t >= NAMES => self.message(&channel, offset, &payload),
                _ => {}
            },
            ServerFrame::History { channel, epoch, first, last, status } => {
                let hist = Hist { epoch, first, last, status };
                match token {
                    SUBS => self.history(&channel, hist),
                    FETCH => {
                        if let Some(f) = self.fetches.front_mut() {
                            if f.channel[..] == *channel && f.matching.is_none() {
                                f.matching = Some(epoch == f.epoch);
                            }
                        }
                    }
                    _ => {}
                }
            }
            ServerFrame::Ok { ack, arg } => self.ok(token, ack, &arg),
            ServerFrame::Ack { offset, .. } => {
                let Some(link) = self.link_mut(token) else { return };
                match link.answered() {
                    Some(Expect::Publish(op)) => self.answer(&op, offset, Ok(())),
                    other => self.out_of_order(token, "ACK", other),
                }
            }
            ServerFrame::Error { code, reason } => self.error(token, code, &reason),
            ServerFrame::Unsubscribed { channel, reason } => {
                // The upstream's server API took this node out of a channel: subscribe again.
                warn!(
                    "edge: upstream unsubscribed this node from {} ({reason}); subscribing again",
                    lossy(&channel)
                );
                let name = Bytes::copy_from_slice(&channel);
                if let Some(tracked) = self.tracked.get_mut(&name) {
                    // (Unless a SUB of it is on its way already.)
                    if tracked.mirror.state != State::Asked {
                        tracked.mirror.lost();
                        tracked.tcp_subscribed = false;
                        if tracked.mirror.resumes {
                            self.subscribe(&name);
                        }
                    }
                }
            }
            ServerFrame::Member { .. }
            | ServerFrame::Presence { .. }
            | ServerFrame::Join { .. }
            | ServerFrame::Leave { .. } => {}
        }
    }

    /// An answer that was not the one expected: the connection is out of step; dropped.
    fn out_of_order(&mut self, token: Token, got: &str, expected: Option<Expect>) {
        let why = format!("the upstream answered {got} where {expected:?} was due");
        warn!("edge: {why}");
        if let Some(Expect::Publish(op)) = expected {
            // Its outcome is unknown: refused, as every publish in flight on a lost link is.
            let why = "broker unavailable: the upstream connection went out of step; the publish may or may not have been carried out";
            self.answer(&op, 0, Err((ErrorCode::Unavailable, why.into())));
        }
        self.link_failed(token, &why);
    }

    /// A PONG: the answer to the oldest command must be the PING's.
    fn ponged(&mut self, token: Token) {
        let Some(link) = self.link_mut(token) else { return };
        match link.answered() {
            Some(Expect::Pong) => {}
            other => self.out_of_order(token, "PONG", other),
        }
    }

    fn ok(&mut self, token: Token, ack: Ack, arg: &[u8]) {
        let Some(link) = self.link_mut(token) else { return };
        let expect = link.answered();
        match (ack, expect) {
            (Ack::Auth, Some(Expect::Auth)) => {
                if let Some(link) = self.link_mut(token) {
                    link.authed = true;
                }
                self.note_up()
            }
            (Ack::Subscribe, Some(Expect::Subscribe(name))) if name[..] == *arg => {
                let Some(tracked) = self.tracked.get_mut(&name) else { return };
                let steps = tracked.mirror.subscribed(&*tracked.channel.lock_log());
                // Lined up again: the group (or the pattern) brings what follows.
                let let_go = tracked.multicast.is_some() || tracked.via_pattern;
                let channel = tracked.channel.clone();
                self.apply(&channel, steps);
                if let_go {
                    self.unsubscribe(&name);
                }
            }
            (Ack::Subscribe, Some(Expect::Fetch)) => {
                let Some(fetching) = self.fetches.pop_front() else { return };
                if let Some(fetch) = self.fetch.as_mut() {
                    let request = Request::Unsubscribe { channel: &fetching.channel };
                    fetch.send(&request, Expect::Unsubscribe);
                }
                let target = fetching.reply_to;
                let entries = match fetching.matching {
                    Some(true) => fetching.entries,
                    _ => Vec::new(),
                };
                let answer = Answer::Backfill { target, entries: Ok(entries) };
                self.ring.server.answer(target.worker, answer);
                self.send_fetch();
            }
            (Ack::Unsubscribe, Some(Expect::Unsubscribe)) => {}
            (Ack::PatternSubscribe, Some(Expect::PatternSubscribe(text))) => {
                if let Some(track) = self.patterns.get_mut(&text) {
                    track.live = true;
                }
                let broker = self.ring.server.broker();
                if let Some(entry) = broker.served_patterns().get_mut(&text) {
                    if !entry.live {
                        entry.live = true;
                        self.ring.served = true;
                    }
                }
            }
            (Ack::PatternUnsubscribe, Some(Expect::PatternUnsubscribe)) => {}
            (Ack::Name, Some(Expect::Name { reply_to })) => {
                let Token(t) = token;
                let Some(entry) = self.names.get_mut(t - NAMES) else { return };
                entry.granted = true;
                let name = entry.name.clone();
                let mut inbox = Vec::with_capacity(name.len() + 1);
                inbox.push(b'@');
                inbox.extend_from_slice(&name);
                let inbox = Bytes::from(inbox);
                if let Some(tracked) = self.tracked.get_mut(&inbox) {
                    // A new connection for the same holder: offsets start where they come.
                    tracked.mirror.lost();
                }
                if let Some(reply_to) = reply_to {
                    let answer = Answer::NameClaim { target: reply_to, name, result: Ok(()) };
                    self.ring.server.answer(reply_to.worker, answer);
                }
            }
            (ack, other) => self.out_of_order(token, ack.word(), other),
        }
    }

    fn error(&mut self, token: Token, code: u16, reason: &str) {
        let Some(link) = self.link_mut(token) else { return };
        // The errors a server sends on its own before it closes the connection (stale, a slow
        // consumer, bad bytes) answer no command: the link is failing. (A token that expires
        // is told 401 and closed as well; 401 also answers a command, so it is taken as the
        // answer, and the close follows.)
        const CLOSING: [ErrorCode; 4] = [
            ErrorCode::StaleConnection,
            ErrorCode::SlowConsumer,
            ErrorCode::BadRequest,
            ErrorCode::FrameTooLarge,
        ];
        if CLOSING.iter().any(|c| c.code() == code) {
            return self
                .link_failed(token, &format!("the upstream is closing it: {code} {reason}"));
        }
        let expect = link.answered();
        let code_of = || ErrorCode::from_code(code).unwrap_or(ErrorCode::Unavailable);
        match expect {
            Some(Expect::Publish(op)) => self.answer(&op, 0, Err((code_of(), reason.into()))),
            Some(Expect::Auth) => {
                warn!("edge: the upstream refused --upstream-token: {code} {reason}");
                self.link_failed(token, "the upstream refused the token");
            }
            Some(Expect::Subscribe(name)) => {
                self.broker().counters.sync_failures.fetch_add(1, Ordering::Relaxed);
                // The upstream cannot serve it now (itself behind or cut off), or its
                // subscribers hold offsets of it (a limit may come free): asked again soon,
                // never dropped under them.
                let served = self.tracked.get(&name).is_some_and(|t| t.mirror.served);
                if code == ErrorCode::Unavailable.code() || served {
                    warn!("edge: the upstream will not serve {} now: {code} {reason}; trying again in a second", lossy(&name));
                    if let Some(tracked) = self.tracked.get_mut(&name) {
                        tracked.mirror.state = State::Idle;
                        tracked.tcp_subscribed = false;
                        tracked.retry_at = Some(Instant::now() + SWEEP_EVERY);
                    }
                    return;
                }
                // A limit or a permission: the waiting subscribers are told, with the
                // upstream's words; the next subscriber asks again.
                warn!("edge: the upstream refused to serve {}: {code} {reason}", lossy(&name));
                let Some(tracked) = self.tracked.remove(&name) else { return };
                self.broker().counters.channels_served.fetch_sub(1, Ordering::Relaxed);
                let why: Arc<str> = format!("the upstream refused the channel: {reason}").into();
                self.broker().note_refusal(&name, Some((code_of(), why)));
                tracked.channel.lock_log().mirror = crate::history::Mirror::Refused;
                self.ring.served = true;
            }
            Some(Expect::Fetch) => {
                if let Some(fetching) = self.fetches.pop_front() {
                    let target = fetching.reply_to;
                    let why: Arc<str> =
                        format!("the upstream could not read history: {reason}").into();
                    let answer = Answer::Backfill { target, entries: Err(why) };
                    self.ring.server.answer(target.worker, answer);
                }
                self.send_fetch();
            }
            Some(Expect::PatternSubscribe(text)) => {
                warn!("edge: the upstream refused pattern {}: {code} {reason}", lossy(&text));
                self.patterns.remove(&text);
            }
            // Refused a first claim, or a re-claim after a reconnect (the name went to another).
            Some(Expect::Name { .. }) => self.drop_name(token.0 - NAMES, code_of(), reason.into()),
            Some(Expect::Unsubscribe | Expect::PatternUnsubscribe | Expect::Pong) | None => {
                debug!("edge: upstream error {code} {reason}");
            }
        }
    }

    fn history(&mut self, channel: &[u8], hist: Hist) {
        let Some(tracked) = self.tracked.get_mut(channel) else { return };
        let steps = tracked.mirror.history(&*tracked.channel.lock_log(), hist);
        let channel = tracked.channel.clone();
        self.apply(&channel, steps);
    }

    fn message(&mut self, channel: &[u8], offset: u64, payload: &[u8]) {
        self.broker().counters.messages_received.fetch_add(1, Ordering::Relaxed);
        if !self.tracked.contains_key(channel) && !self.found_through_pattern(channel) {
            return;
        }
        let Some(tracked) = self.tracked.get_mut(channel) else { return };
        tracked.last_heard = Instant::now();
        let payload = Bytes::copy_from_slice(payload);
        let steps = {
            let log = tracked.channel.lock_log();
            tracked.mirror.message(&*log, offset, payload, now_ms(), new_epoch)
        };
        let channel = tracked.channel.clone();
        self.apply(&channel, steps);
    }

    /// A message of a channel this node does not mirror came through a pattern: mirror it
    /// from now on for the pattern subscribers (from that message on).
    fn found_through_pattern(&mut self, name: &[u8]) -> bool {
        if name.first() == Some(&b'@') || self.patterns.is_empty() {
            return false;
        }
        let channel = match self.ring.server.channels().get_or_create(name) {
            Ok(channel) => channel,
            Err(e) => {
                warn!("edge: a pattern matched {}, not served: {e}", lossy(name));
                return false;
            }
        };
        let name = channel.name.clone();
        self.track(name.clone(), channel, EdgeMirror::unaligned(), true);
        self.serve_now(&name);
        true
    }

    fn fetched(&mut self, channel: &[u8], offset: u64, payload: &[u8]) {
        let Some(f) = self.fetches.front_mut() else { return };
        if f.channel[..] == *channel
            && f.matching == Some(true)
            && offset > f.after
            && offset <= f.upto
        {
            let payload = Bytes::copy_from_slice(payload);
            f.entries.push(Retained { offset, published_ms: now_ms(), payload });
        }
    }

    /// Reads datagrams of the multicast group while the ring has room for what they bring.
    fn read_group(&mut self) {
        let mut buffer = std::mem::take(&mut self.datagram);
        self.group_unread = true;
        for _ in 0..READ_DATAGRAMS {
            if !self.ring.has_room() {
                break;
            }
            let Some(socket) = self.group.as_ref() else { break };
            match socket.recv_from(&mut buffer) {
                // Only the upstream's datagrams (the group is a LAN's: anyone on it may send).
                Ok((_, from)) if self.addr.is_some_and(|a| a.ip() != from.ip()) => {
                    let counters = &self.ring.server.broker().counters;
                    counters.multicast_malformed.fetch_add(1, Ordering::Relaxed);
                }
                Ok((n, _)) => self.datagram(&buffer[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.group_unread = false;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("edge: multicast receive failed: {e}");
                    self.group_unread = false;
                    break;
                }
            }
        }
        self.datagram = buffer;
    }

    /// One datagram of the multicast group: messages of a channel this node mirrors go to its
    /// mirror (which delivers the next offset, and asks upstream for anything else).
    fn datagram(&mut self, bytes: &[u8]) {
        let counters = &self.ring.server.broker().counters;
        let in_range = |datagram: &Datagram<'_>| match datagram {
            Datagram::Run { first, payloads, .. } => {
                *first > 0 && !is_notice(first.saturating_add(payloads.len() as u64))
            }
            Datagram::Heartbeat { last, .. } => !is_notice(*last),
        };
        let Some(datagram) = Datagram::decode(bytes).filter(in_range) else {
            counters.multicast_malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let channel = match &datagram {
            Datagram::Run { channel, .. } | Datagram::Heartbeat { channel, .. } => *channel,
        };
        let Some(tracked) = self.tracked.get_mut(channel) else { return };
        if !tracked.mirror.resumes || !tracked.mirror.synced {
            return;
        }
        let now = Instant::now();
        let mirrored = tracked.channel.clone();
        let name = mirrored.name.clone();
        let switching = tracked.multicast.is_none();
        if switching && matches!(datagram, Datagram::Heartbeat { .. }) {
            return;
        }
        tracked.multicast = Some(now);
        if switching && tracked.mirror.state == State::Live {
            debug!("edge: {} comes by multicast from now on", lossy(&name));
            self.unsubscribe(&name);
        }
        let Some(tracked) = self.tracked.get_mut(channel) else { return };
        match datagram {
            Datagram::Run { epoch, first, payloads, .. } => {
                tracked.last_heard = now;
                for (offset, payload) in (first..).zip(payloads) {
                    let Some(tracked) = self.tracked.get_mut(&name) else { return };
                    let payload = payload.map(Bytes::copy_from_slice);
                    let steps = {
                        let log = tracked.channel.lock_log();
                        tracked.mirror.multicast_message(&*log, epoch, offset, payload, now_ms())
                    };
                    if steps.iter().any(|s| matches!(s, Step::Append { .. })) {
                        let counters = &self.ring.server.broker().counters;
                        counters.multicast_messages.fetch_add(1, Ordering::Relaxed);
                    }
                    self.apply(&mirrored, steps);
                }
            }
            Datagram::Heartbeat { epoch, last, .. } => {
                let steps = {
                    let log = tracked.channel.lock_log();
                    tracked.mirror.multicast_heartbeat(&*log, epoch, last)
                };
                self.apply(&mirrored, steps);
            }
        }
    }

    /// Channels the multicast group went silent on are subscribed over TCP again.
    fn multicast_silence(&mut self, now: Instant) {
        let silent: Vec<Bytes> = self
            .tracked
            .iter_mut()
            .filter(|(_, t)| {
                t.multicast.is_some_and(|at| now.duration_since(at) >= MULTICAST_SILENCE)
            })
            .map(|(name, t)| {
                t.multicast = None;
                name.clone()
            })
            .collect();
        for name in silent {
            let Some(tracked) = self.tracked.get_mut(&name) else { continue };
            if tracked.mirror.state == State::Live && !tracked.tcp_subscribed {
                debug!("edge: nothing by multicast for {} lately; over TCP again", lossy(&name));
                tracked.mirror.state = State::Idle;
                self.subscribe(&name);
            }
        }
    }

    /// Carries out what a channel's mirror decided, in order.
    fn apply(&mut self, channel: &Arc<Channel>, steps: Vec<Step>) {
        let name = || lossy(&channel.name);
        for step in steps {
            let counters = &self.ring.server.broker().counters;
            match step {
                Step::Append { offset, payload, published_ms, deliver } => {
                    self.ring.accept(channel, offset, payload, published_ms, deliver)
                }
                Step::Restart { epoch, next, notify } => {
                    if notify {
                        counters.epoch_changes.fetch_add(1, Ordering::Relaxed);
                        warn!("edge: {} started over upstream (epoch {epoch:016x}); subscribers are told", name());
                    }
                    self.ring.restart(channel, epoch, next, notify)
                }
                Step::Hole { from, lost, notify } => {
                    counters.offsets_lost.fetch_add(lost, Ordering::Relaxed);
                    warn!(
                        "edge: {} offsets {}..{} are no longer upstream; subscribers are told",
                        name(),
                        from - lost,
                        from - 1
                    );
                    if notify {
                        self.ring.announce_hole(channel, from);
                    }
                }
                Step::SkipTo { next } => self.ring.skip_to(channel, next),
                Step::Served => self.ring.mark_served(channel),
                Step::Sync { .. } => {
                    // The multicast group missed something: a resume over TCP reads it.
                    counters.multicast_repairs.fetch_add(1, Ordering::Relaxed);
                    self.subscribe(&channel.name);
                }
                Step::Repaired => {}
            }
        }
    }

    fn timers(&mut self) {
        let now = Instant::now();
        if self.retry_at.is_some_and(|at| at <= now) {
            self.connect();
        }
        let timeout = self.config.command_timeout;
        let probe = self.config.probe_interval;
        for token in [SUBS, PUBS, FETCH] {
            let Some(link) = self.link_mut(token) else { continue };
            let silent = now.saturating_duration_since(link.last_heard);
            if !link.is_ready() && now.saturating_duration_since(link.opened) >= timeout {
                // A host that drops packets would leave the connect to the kernel's minutes.
                return self.down(&format!("no connection within {timeout:?}"));
            }
            let waiting =
                link.head_waited(now).zip(link.expects.front().map(|(_, e)| e.may_wait()));
            let pinged = link.expects.iter().any(|(_, e)| matches!(e, Expect::Pong));
            match waiting {
                // Answers are due. A SUB may wait upstream (a Redis-joined upstream serves a
                // channel once Redis answers it, and holds the connection's later commands,
                // PINGs too, meanwhile): it gets `WAITING_SUB_PATIENCE` timeouts.
                Some((waited, may_wait))
                    if waited >= timeout * if may_wait { WAITING_SUB_PATIENCE } else { 1 } =>
                {
                    self.broker().counters.timeouts.fetch_add(1, Ordering::Relaxed);
                    let why = format!("the upstream did not answer within {waited:?}");
                    return self.down(&why);
                }
                _ if silent >= probe && link.is_ready() && !pinged => {
                    link.send(&Request::Ping, Expect::Pong)
                }
                _ => {}
            }
        }
        if self.group.is_some() && now >= self.next_silence_check {
            self.next_silence_check = now + MULTICAST_SILENCE / 4;
            self.multicast_silence(now);
        }
        if now >= self.next_sweep {
            self.next_sweep = now + SWEEP_EVERY;
            self.sweep(now);
            self.refuse_late_claims(now);
            if self.upstream_up() {
                // A name whose own connection failed is claimed again on a new one.
                self.reclaim_names();
            }
        }
    }

    /// Lets go of channels and patterns nobody here uses, and asks again for refused ones.
    fn sweep(&mut self, now: Instant) {
        let registry = self.ring.server.channels();
        let mut released = Vec::new();
        let mut retry = Vec::new();
        for (name, tracked) in &self.tracked {
            if tracked.retry_at.is_some_and(|at| at <= now) {
                retry.push(name.clone());
                continue;
            }
            let quiet = !tracked.via_pattern
                || now.saturating_duration_since(tracked.last_heard) >= PATTERN_CHANNEL_QUIET;
            let idle = quiet
                && tracked.mirror.state != State::Asked
                && !Arc::ptr_eq(&tracked.channel, registry.broadcast())
                && registry.release_if_unused(&tracked.channel);
            if idle {
                released.push((name.clone(), tracked.tcp_subscribed));
            }
        }
        for name in retry {
            self.subscribe(&name);
        }
        for (name, subscribed) in released {
            self.tracked.remove(&name);
            self.broker().counters.channels_served.fetch_sub(1, Ordering::Relaxed);
            if let Some(subs) = self.subs.as_mut().filter(|_| subscribed) {
                subs.send(&Request::Unsubscribe { channel: &name }, Expect::Unsubscribe);
            }
        }
        let mut gone = Vec::new();
        {
            let broker = self.ring.server.broker();
            let mut served = broker.served_patterns();
            for (text, track) in self.patterns.iter_mut() {
                let unused = served.get(text).is_none_or(|e| e.holders == 0 && e.live);
                track.unused_sweeps = if unused { track.unused_sweeps + 1 } else { 0 };
                if track.unused_sweeps >= 2 {
                    served.remove(text);
                    gone.push(text.clone());
                }
            }
        }
        for text in gone {
            if let Some(track) = self.patterns.remove(&text) {
                // Redis globs all go up as `>`: the last of them lets it go.
                let shared = self.patterns.values().any(|other| other.wire == track.wire);
                if let Some(subs) = self.subs.as_mut().filter(|_| track.live && !shared) {
                    let request = Request::PatternUnsubscribe { pattern: &track.wire };
                    subs.send(&request, Expect::PatternUnsubscribe);
                }
            }
        }
    }

    fn flush(&mut self) {
        if let Err((token, e)) = self.flush_all() {
            self.link_failed(token, &e.to_string());
        }
    }

    fn flush_all(&mut self) -> Result<(), (Token, std::io::Error)> {
        for token in [SUBS, PUBS, FETCH] {
            if let Some(link) = self.link_mut(token) {
                link.flush().map_err(|e| (token, e))?;
            }
        }
        let keys: Vec<usize> = self.names.iter().map(|(k, _)| k).collect();
        for key in keys {
            if let Some(link) = self.names[key].link.as_mut() {
                link.flush().map_err(|e| (Token(NAMES + key), e))?;
            }
        }
        Ok(())
    }
}

fn lossy(bytes: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}
