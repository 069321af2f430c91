//! The broker thread: one mio poll over two connections per Redis server (one for commands,
//! pipelined; one for pub/sub), fed by the workers over a channel and delivering into the ring.
//! This file is the I/O shell: it moves bytes and time. What to do with them is decided by plain
//! data types with no sockets and no clock, each in its own file and tested alone (the mirror
//! and the names against a model Redis under seeded faults):
//! - `mirror` (one level up): one channel's mirror of its log in Redis;
//! - `batch`: a turn's publishes as one script call, and what its answer means per publish;
//! - `answers`: answers to each connection in its publish order;
//! - `names`: the name leases;
//! - `topology`: a Redis Cluster's slot map and when to read it again;
//! - `patterns`: pattern subscriptions as Redis globs;
//! - `scripts`: the Lua scripts and their replies.
//!
//! It talks to the server through `ServerForBroker` (deliver into the ring, answer a worker, wake
//! workers), and a message enters a channel as on a single node (`ChannelRegistry::append`).
//!
//! Per channel it serves, the broker walks `Subscribing -> Syncing -> Live`:
//! - `Subscribing`: SUBSCRIBE sent (in batches of `SUBSCRIBE_BATCH`), not yet confirmed;
//! - `Syncing`: confirmed, so every later publish will reach us: messages are buffered while the
//!   sync script reads the epoch, the latest offset and the stream after what the local log has
//!   (pages of `SYNC_PAGE`); then the log is brought up to date and the buffer applied;
//! - `Live`: each message must carry the next offset; a jump (or another epoch) goes back to
//!   `Syncing` from where the log stands, which repairs the hole from the stream.
//!
//! When Redis goes away, publishes in flight are refused (their outcome is unknown; nothing is
//! acknowledged that Redis did not confirm) and new ones are refused at once, while every
//! subscriber stays connected; the broker reconnects with backoff and jitter, resubscribes every
//! channel it serves and repairs each from the stream as above.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Receiver;
use log::{debug, info, warn};
use mio::{Events, Poll, Token, Waker};

mod answers;
mod batch;
mod names;
mod patterns;
mod scripts;
pub(crate) mod topology;

use self::answers::AnswerOrder;
use self::batch::{BatchAnswer, PublishBatch, BATCH_BYTES, BATCH_MESSAGES};
use self::names::{ClaimReply, Leases};
use self::patterns::{glob_prefix, redis_glob, PatternTrack};
use self::scripts::{bulk, parse_entries, parse_sync, Script, Synced};
use self::topology::Topology;
use super::link::{read_slot_map, Link};
use super::mirror::{ChannelMirror, LocalLog, Outcome, Page, State as MirrorState, Step};
use super::{Broker, BrokerOp, ClusterConfig, Envelope, Keys, PublishOp, RedisEndpoint};
use crate::history::disk::{AckTarget, Persisted};
use crate::history::{new_epoch, now_ms, ChannelLog, Mirror, Retained};
use crate::protocol::resp::Value;
use crate::protocol::ErrorCode;
use crate::server::channels::{Channel, Message, EPOCH_NOTICE, EXPIRED_NOTICE};
use crate::server::ring::Producer;
use crate::server::{Answer, Item, ServerForBroker};

const WAKER: Token = Token(usize::MAX);
/// Channels per SUBSCRIBE or UNSUBSCRIBE command.
const SUBSCRIBE_BATCH: usize = 512;
/// Stream entries per sync script call.
const SYNC_PAGE: usize = 1000;
/// Stream entries one resume reads from Redis, at most.
const MAX_BACKFILL: u64 = 100_000;
/// How often channels without local subscribers are let go of.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// A channel that heard nothing this long has its latest offset checked in Redis, once.
const QUIET_AFTER: Duration = Duration::from_secs(2);
/// A channel served only for pattern subscribers is let go of after this long without messages.
const PATTERN_CHANNEL_QUIET: Duration = Duration::from_secs(30);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Bytes read from one pub/sub connection per turn: what they deliver fits the ring's headroom
/// (`RING_HEADROOM` of it free), so the broker never waits for room in the middle of them.
const PUSH_READ_BUDGET: usize = 64 * 1024;
/// A pub/sub connection is read only while this share of the ring is free; otherwise it is
/// left unread (Redis holds its output; TCP pushes back) and read again once workers drained.
const RING_HEADROOM: u64 = 4;
/// How often a connection left unread is looked at again.
const BACKPRESSURE_RETRY: Duration = Duration::from_millis(1);

/// The pub/sub commands in use.
struct Verbs {
    subscribe: &'static [u8],
    unsubscribe: &'static [u8],
    publish: &'static [u8],
}

/// A command whose reply is awaited, in the order sent.
enum Pending {
    /// AUTH, SELECT, SCRIPT LOAD: an error reply fails the connection.
    Setup(&'static str),
    /// A turn's publishes to one server (one slot of a Redis Cluster).
    Publish(PublishBatch),
    /// The sync script, reading the stream after `after` (ending epoch `ending` first).
    Sync { topic: Bytes, after: u64, ending: Option<u64> },
    /// The liveness probe's PUBLISH.
    Probe,
    /// SET NX of a name's lease for a connection.
    Claim { name: Bytes, reply_to: AckTarget },
    /// A lease refreshed (the refresh script: 0 when another node holds it now).
    Refresh { name: Bytes },
    /// A lease given back.
    Release,
    /// HMGET of a quiet channel's epoch and latest offset; the log's when it was asked.
    Check { topic: Bytes, epoch: u64, last: u64 },
    /// XRANGE of the stream for a resume.
    Backfill { reply_to: AckTarget },
}

struct Shard {
    /// The server (with a Redis Cluster, one master, found in the slot map).
    endpoint: RedisEndpoint,
    /// This node's liveness-probe channel on it (in a Redis Cluster, one of its slots).
    probe_topic: Bytes,
    commands: Option<Link>,
    pubsub: Option<Link>,
    /// Commands sent and not yet answered, with when they were sent.
    pending: VecDeque<(Instant, Pending)>,
    /// Setup commands not yet answered: publishes are refused until Redis has answered them
    /// all (a server that accepts connections but never answers is not up).
    setup_left: usize,
    /// When the liveness probe now on its way was sent.
    probe_sent: Option<Instant>,
    next_probe: Instant,
    to_subscribe: Vec<Bytes>,
    to_unsubscribe: Vec<Bytes>,
    to_psubscribe: Vec<Bytes>,
    to_punsubscribe: Vec<Bytes>,
    /// When to try connecting again (while down).
    retry_at: Option<Instant>,
    backoff: Duration,
    ever_up: bool,
    /// Its host name is being resolved on a helper thread.
    resolving: bool,
    /// Its host name's addresses, resolved for the next connect.
    resolved: Vec<std::net::SocketAddr>,
    /// Connects tried: a name with several addresses is tried at each in turn.
    connects: usize,
}

impl Shard {
    fn new(endpoint: RedisEndpoint, probe_topic: Bytes, now: Instant) -> Shard {
        Shard {
            endpoint,
            probe_topic,
            commands: None,
            pubsub: None,
            pending: VecDeque::new(),
            setup_left: 0,
            probe_sent: None,
            next_probe: now,
            to_subscribe: Vec::new(),
            to_unsubscribe: Vec::new(),
            to_psubscribe: Vec::new(),
            to_punsubscribe: Vec::new(),
            retry_at: Some(now),
            backoff: BACKOFF_MIN,
            ever_up: false,
            resolving: false,
            resolved: Vec::new(),
            connects: 0,
        }
    }

    /// Connected (commands may be queued).
    fn is_connected(&self) -> bool {
        self.commands.is_some()
    }

    /// Connected and answering: publishes go through.
    fn is_ready(&self) -> bool {
        self.is_connected() && self.setup_left == 0
    }
}

/// A channel this node serves.
struct Tracked {
    channel: Arc<Channel>,
    /// Its server (unknown while a Redis Cluster's slot map is being read).
    shard: Option<usize>,
    /// Its mirror of the channel's log in Redis (the state machine the simulator drives).
    mirror: ChannelMirror,
    /// When its last message arrived (or it became live).
    last_heard: Instant,
    /// Its latest offset in Redis was compared with the log's since then.
    checked: bool,
    /// A quiet check found Redis's latest offset ahead of the log: a loss, if the log has not
    /// caught up by the next sweep (a message still on its way is not one).
    behind: Option<u64>,
}

struct BrokerThread {
    poll: Poll,
    server: ServerForBroker,
    producer: Producer<Item>,
    ops: Receiver<BrokerOp>,
    shards: Vec<Shard>,
    tracked: HashMap<Bytes, Tracked>,
    publish: Script,
    sync: Script,
    /// Something went into the ring this turn: wake the workers.
    delivered: bool,
    /// Channels became live this turn: workers look at their waiting joins.
    served: bool,
    next_sweep: Instant,
    stopping: bool,
    /// This node's identity in name leases and probe channels.
    node_id: Bytes,
    /// Redis Cluster: its slot map (`None`: independent servers, by jump hash).
    topology: Option<Topology>,
    refresh: Script,
    release: Script,
    /// Patterns PSUBSCRIBEd for pattern subscribers, by Redis glob.
    patterns: HashMap<Bytes, PatternTrack>,
    /// Names this node holds a lease on.
    leases: Leases,
    /// Servers whose pub/sub connection has input left unread (its read budget ran out, or the
    /// ring had too little room): read again before anything new, once there is room.
    unread: Vec<usize>,
    /// Publish answers held until their connection's earlier publishes are answered.
    answers: std::cell::RefCell<AnswerOrder>,
    next_refresh: Instant,
}

/// The broker thread's poll and queue, made before `Shared` (which holds the `Broker`) exists.
pub(crate) struct Unstarted {
    poll: Poll,
    ops: Receiver<BrokerOp>,
    config: ClusterConfig,
}

/// Creates the workers' handle and what the thread needs to `run`.
pub(crate) fn prepare(config: ClusterConfig) -> std::io::Result<(Broker, Unstarted)> {
    let poll = Poll::new()?;
    let waker = Waker::new(poll.registry(), WAKER)?;
    let (sender, ops) = crossbeam_channel::unbounded();
    let shards = config.redis.len().max(1);
    let broker = Broker {
        ops: sender,
        waker,
        wake_pending: Default::default(),
        shards: (0..shards).map(|_| Default::default()).collect(),
        counters: Default::default(),
        served_generation: Default::default(),
        patterns: Default::default(),
        config,
    };
    let config = broker.config.clone();
    Ok((broker, Unstarted { poll, ops, config }))
}

impl Unstarted {
    /// Runs the broker until the server shuts down.
    pub fn run(self, server: ServerForBroker, producer: Producer<Item>) {
        let Unstarted { poll, ops, config } = self;
        let now = Instant::now();
        let node_id = format!("{:016x}", new_epoch());
        let probe_topic = Bytes::from(format!("{}:probe:{node_id}", config.key_prefix));
        // A Redis Cluster's servers are found in its slot map; independent ones are configured.
        let shards = match config.redis_cluster {
            true => Vec::new(),
            false => config
                .redis
                .iter()
                .map(|e| Shard::new(e.clone(), probe_topic.clone(), now))
                .collect(),
        };
        BrokerThread {
            poll,
            server,
            producer,
            ops,
            shards,
            tracked: HashMap::new(),
            publish: Script::new(scripts::PUBLISH_LUA),
            sync: Script::new(scripts::SYNC_LUA),
            delivered: false,
            served: false,
            next_sweep: now + SWEEP_EVERY,
            stopping: false,
            node_id: Bytes::from(node_id),
            topology: config.redis_cluster.then(|| Topology::new(now)),
            refresh: Script::new(scripts::REFRESH_LUA),
            release: Script::new(scripts::RELEASE_LUA),
            leases: Default::default(),
            answers: Default::default(),
            unread: Vec::new(),
            patterns: HashMap::new(),
            next_refresh: now,
        }
        .run();
    }
}

impl BrokerThread {
    fn broker(&self) -> &Broker {
        self.server.broker()
    }

    fn config(&self) -> &ClusterConfig {
        &self.broker().config
    }

    fn run(mut self) {
        let broadcast = self.server.channels().broadcast().clone();
        self.serve(broadcast);
        let mut events = Events::with_capacity(256);
        info!(
            "cluster: joining through {}",
            self.config().redis.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", ")
        );
        loop {
            let timeout = self.next_timer().saturating_duration_since(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, Some(timeout.min(SWEEP_EVERY))) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    crate::sys::fatal(&format!("broker: poll failed: {e}"));
                }
            }
            let mut ready = Vec::new();
            for event in events.iter() {
                match event.token() {
                    WAKER => self.broker().wake_pending.store(false, Ordering::Release),
                    Token(t) => ready.push(t),
                }
            }
            for t in ready {
                let (i, pubsub) = (t / 2, t % 2 == 1);
                if pubsub && !self.ring_has_room() {
                    self.leave_unread(i);
                } else {
                    self.link_ready(i, pubsub);
                }
            }
            self.read_unread();
            self.take_ops();
            if self.stopping || self.server.shutting_down() {
                break;
            }
            self.timers();
            self.flush();
            if std::mem::take(&mut self.served) {
                self.broker().served_generation.fetch_add(1, Ordering::Release);
                self.server.wake_workers(true);
            } else if std::mem::take(&mut self.delivered) {
                self.server.wake_workers(false);
            }
        }
        for i in 0..self.shards.len() {
            let _ = self.flush_shard(i);
            self.refuse_pending(i, "the server is shutting down");
        }
        debug!("broker stopped");
    }

    fn next_timer(&self) -> Instant {
        let timeout = self.config().command_timeout;
        self.shards
            .iter()
            .flat_map(|s| {
                let answer_due = s.pending.front().map(|(sent, _)| *sent + timeout);
                let probe_due = s.probe_sent.map(|sent| sent + timeout);
                let probe_next = s.is_ready().then_some(s.next_probe);
                [s.retry_at, answer_due, probe_due, probe_next]
            })
            .flatten()
            .chain(self.topology.as_ref().and_then(Topology::next_timer))
            .chain((!self.unread.is_empty()).then(|| Instant::now() + BACKPRESSURE_RETRY))
            .fold(self.next_sweep, Instant::min)
    }

    fn take_ops(&mut self) {
        // A turn's publishes go to Redis as one script call per server (per slot on a Redis
        // Cluster, whose scripts touch one slot), up to `BATCH_MESSAGES` or `BATCH_BYTES`.
        let mut batches: HashMap<(usize, u16), PublishBatch> = HashMap::new();
        while let Ok(op) = self.ops.try_recv() {
            match op {
                BrokerOp::Publish(mut op) => {
                    op.seq = self.answers.get_mut().enter(op.reply_to);
                    let Some(i) = self.shard_of(&op.channel).filter(|&i| self.shards[i].is_ready())
                    else {
                        let why = "broker unavailable: Redis is unreachable; nothing was published";
                        self.refuse(&op, why.into());
                        continue;
                    };
                    let slot = match self.topology {
                        Some(_) => super::key_slot(
                            &Keys::new(&self.config().key_prefix, &op.channel).topic,
                        ),
                        None => 0,
                    };
                    let batch = batches.entry((i, slot)).or_default();
                    batch.add(op);
                    if batch.ops.len() >= BATCH_MESSAGES || batch.bytes >= BATCH_BYTES {
                        let full = std::mem::take(batch);
                        self.send_publish(i, full, false);
                    }
                }
                BrokerOp::Serve(channel) => self.serve(channel),
                BrokerOp::ServePattern(text) => self.serve_pattern(text),
                BrokerOp::Claim { name, reply_to } => self.claim(name, reply_to),
                BrokerOp::Release { name } => self.release_name(name),
                BrokerOp::Backfill { channel, after, upto, reply_to } => {
                    self.backfill(&channel, after, upto, reply_to)
                }
                BrokerOp::SlotMap(Ok((seed, ranges))) => self.apply_slot_map(seed, ranges),
                BrokerOp::Resolved { shard, endpoint, result } => {
                    self.resolved(shard, endpoint, result)
                }
                BrokerOp::SlotMap(Err(why)) => {
                    if let Some(topology) = self.topology.as_mut() {
                        let delay = topology.failed(Instant::now(), jittered);
                        warn!("cluster: cannot read the slot map: {why}; again in {delay:.1?}");
                    }
                }
                BrokerOp::Shutdown => self.stopping = true,
            }
        }
        for ((i, _), batch) in batches {
            if !batch.ops.is_empty() {
                self.send_publish(i, batch, false);
            }
        }
    }

    fn timers(&mut self) {
        let now = Instant::now();
        let shards = &self.shards;
        let degraded = |topology: &Topology| {
            let mapped = topology.mapped(shards.len());
            shards.iter().zip(mapped).any(|(shard, mapped)| mapped && !shard.is_ready())
        };
        if self.topology.as_mut().is_some_and(|t| t.due(now, degraded)) {
            self.discover();
        }
        let timeout = self.config().command_timeout;
        for i in 0..self.shards.len() {
            let shard = &self.shards[i];
            if shard.retry_at.is_some_and(|at| at <= now) {
                self.connect(i);
            } else if shard.pending.front().is_some_and(|(sent, _)| *sent + timeout <= now) {
                self.broker().counters.timeouts.fetch_add(1, Ordering::Relaxed);
                self.shard_down(i, &format!("Redis did not answer within {timeout:?}"));
            } else if shard.probe_sent.is_some_and(|sent| sent + timeout <= now) {
                self.broker().counters.probe_failures.fetch_add(1, Ordering::Relaxed);
                let why = format!(
                    "the pub/sub connection delivered nothing for {timeout:?} (liveness probe)"
                );
                self.shard_down(i, &why);
            } else if shard.is_ready() && shard.probe_sent.is_none() && shard.next_probe <= now {
                self.probe(i, now);
            }
        }
        if now >= self.next_sweep {
            self.next_sweep = now + SWEEP_EVERY;
            self.let_go_of_unused();
            self.let_go_of_unused_patterns();
            self.check_quiet_channels(now);
        }
        if now >= self.next_refresh {
            self.next_refresh = now + self.config().name_lease / 3;
            self.refresh_leases();
        }
    }

    /// Publishes to this node's probe channel through the command connection; the pub/sub
    /// connection must hear it within the command timeout, or it is restarted.
    fn probe(&mut self, i: usize, now: Instant) {
        let probe_every = self.config().probe_interval;
        let publish = self.verbs().publish;
        let shard = &mut self.shards[i];
        let Some(commands) = shard.commands.as_mut() else { return };
        commands.command(&[publish, &shard.probe_topic, b"probe"]);
        shard.pending.push_back((now, Pending::Probe));
        shard.probe_sent = Some(now);
        shard.next_probe = now + probe_every;
    }

    /// The server of `channel`: by jump hash over independent servers, or (Redis Cluster) by
    /// the slot map, unknown until it has been read.
    fn shard_of(&self, channel: &[u8]) -> Option<usize> {
        match &self.topology {
            None => Some(super::shard_of(channel, self.shards.len())),
            Some(topology) => {
                topology.server_of(&Keys::new(&self.config().key_prefix, channel).topic)
            }
        }
    }

    /// The pub/sub commands: sharded ones in a Redis Cluster (each goes to one slot's master,
    /// never broadcast over the cluster bus).
    fn verbs(&self) -> Verbs {
        if self.topology.is_some() {
            Verbs { subscribe: b"SSUBSCRIBE", unsubscribe: b"SUNSUBSCRIBE", publish: b"SPUBLISH" }
        } else {
            Verbs { subscribe: b"SUBSCRIBE", unsubscribe: b"UNSUBSCRIBE", publish: b"PUBLISH" }
        }
    }

    /// Redis Cluster: reads the slot map on a helper thread, asking the masters that answer
    /// first, then the seeds, then the rest (a dead master last: never only it), so the broker
    /// never waits on a connect; the map comes back as `BrokerOp::SlotMap`.
    fn discover(&mut self) {
        let candidates = Topology::candidates(
            self.shards.iter().filter(|s| s.is_ready()).map(|s| &s.endpoint),
            &self.config().redis,
            self.shards.iter().map(|s| &s.endpoint),
        );
        let server = self.server.clone();
        let spawned = std::thread::Builder::new().name("fanout-slot-map".into()).spawn(move || {
            let mut why = String::from("no node to ask");
            let mut found = None;
            for seed in candidates {
                match read_slot_map(&seed) {
                    Ok(ranges) if !ranges.is_empty() => {
                        found = Some((seed, ranges));
                        break;
                    }
                    Ok(_) => {
                        why = format!("{seed} has no slots assigned (is the cluster created?)")
                    }
                    Err(e) => why = format!("{seed}: {e}"),
                }
            }
            server.broker().send(BrokerOp::SlotMap(found.ok_or(why)));
        });
        if let Err(e) = spawned {
            if let Some(topology) = self.topology.as_mut() {
                topology.not_started(Instant::now());
            }
            warn!("cluster: cannot start a thread to read the slot map: {e}");
        }
    }

    /// Redis Cluster: server `i` is no master of the map any more (it died and a replica took
    /// over, or it came back as a replica): its connections close, what was in flight on them
    /// is refused, and it is neither counted, probed nor reconnected while the map leaves it out.
    fn let_go_of_server(&mut self, i: usize) {
        let registry = self.poll.registry();
        let shard = &mut self.shards[i];
        let was_up = shard.is_ready();
        let was_known = shard.is_connected() || shard.retry_at.is_some();
        for link in [shard.commands.take(), shard.pubsub.take()].into_iter().flatten() {
            let mut link = link;
            link.deregister(registry);
        }
        shard.probe_sent = None;
        shard.retry_at = None;
        shard.to_subscribe.clear();
        shard.to_unsubscribe.clear();
        shard.to_psubscribe.clear();
        shard.to_punsubscribe.clear();
        let endpoint = shard.endpoint.clone();
        if was_up {
            self.broker().counters.shards_up.fetch_sub(1, Ordering::Relaxed);
        }
        if was_known {
            info!("cluster: {endpoint} is no master of the slot map any more; letting it go");
        }
        self.refuse_pending(i, "the server is no longer a master of the Redis Cluster");
    }

    /// The shards the slot map names (masters that own slots); none without one.
    fn mapped_shards(&self) -> Vec<usize> {
        let Some(topology) = &self.topology else { return Vec::new() };
        let mapped = topology.mapped(self.shards.len());
        (0..self.shards.len()).filter(|&i| mapped[i]).collect()
    }

    /// Redis Cluster: takes a slot map read by `discover`. Masters new to it are connected;
    /// servers it no longer names (a dead master, or one that came back as a replica after a
    /// failover) are let go of, neither counted nor probed nor reconnected; channels whose slot
    /// moved are served from their new master (subscribed again, repaired from the stream).
    fn apply_slot_map(&mut self, seed: RedisEndpoint, ranges: Vec<topology::SlotRange>) {
        let now = Instant::now();
        let servers: Vec<RedisEndpoint> = self.shards.iter().map(|s| s.endpoint.clone()).collect();
        let Some(topology) = self.topology.as_mut() else { return };
        let taken = topology.take(&seed, ranges, &servers);
        for endpoint in taken.added {
            self.shards.push(Shard::new(endpoint, Bytes::new(), now));
        }
        // Each server's probe channel is one of its own slots.
        let id = String::from_utf8_lossy(&self.node_id).into_owned();
        let prefix = self.config().key_prefix.clone();
        let Some(topology) = self.topology.as_mut() else { return };
        for (i, shard) in self.shards.iter_mut().enumerate() {
            shard.probe_topic = (0u32..100_000)
                .map(|n| Bytes::from(format!("{prefix}:probe:{{{id}.{n}}}")))
                .find(|topic| topology.server_of(topic) == Some(i))
                .unwrap_or_default();
        }
        for (i, &mapped) in taken.mapped.iter().enumerate() {
            if mapped {
                let shard = &mut self.shards[i];
                if !shard.is_connected() && shard.retry_at.is_none() {
                    // A master again (or for the first time since it was let go of).
                    shard.retry_at = Some(now);
                    shard.backoff = BACKOFF_MIN;
                }
            } else {
                self.let_go_of_server(i);
            }
        }
        // While a master of the map does not answer, the map is read again soon: its replica
        // is named once it took over.
        if self.mapped_shards().iter().any(|&i| !self.shards[i].is_ready()) {
            if let Some(topology) = self.topology.as_mut() {
                topology.degraded(now);
            }
        }
        if let Some(masters) = taken.masters {
            info!("cluster: the Redis Cluster has {masters} master(s)");
        }
        let moves: Vec<(Bytes, Option<usize>)> = self
            .tracked
            .iter()
            .map(|(topic, t)| (topic.clone(), t.channel.name.clone()))
            .map(|(topic, name)| (topic, self.shard_of(&name)))
            .collect();
        for (topic, shard) in moves {
            let Some(tracked) = self.tracked.get_mut(&topic) else { continue };
            let moved = tracked.shard != shard;
            // A channel still subscribing may have been refused (MOVED): ask again.
            if !moved && !matches!(tracked.mirror.state, MirrorState::Subscribing) {
                continue;
            }
            if moved {
                if let Some(old) = tracked.shard.and_then(|i| self.shards.get_mut(i)) {
                    if old.is_connected() {
                        old.to_unsubscribe.push(topic.clone());
                    }
                }
                tracked.shard = shard;
            }
            tracked.mirror.resubscribe();
            if let Some(new) = shard.and_then(|i| self.shards.get_mut(i)) {
                if new.is_connected() {
                    new.to_subscribe.push(topic);
                }
            }
        }
        self.publish_readiness();
    }

    /// Tells the workers whether publishes can go through: per server, or (Redis Cluster) for
    /// the whole cluster at once, once the slot map is known and every master answers.
    fn publish_readiness(&self) {
        let broker = self.broker();
        if let Some(topology) = &self.topology {
            let ready = topology.ready(|i| self.shards.get(i).is_some_and(Shard::is_ready));
            broker.shards[0].store(ready, Ordering::Release);
        } else {
            for (i, shard) in self.shards.iter().enumerate() {
                broker.shards[i].store(shard.is_ready(), Ordering::Release);
            }
        }
    }

    /// The address to connect server `i` at: its host if that is an address, else the name
    /// resolved on a helper thread (then `None` now, and `connect` is called again once it is:
    /// `BrokerOp::Resolved`). Names are resolved again for every connect (a managed Redis may
    /// move).
    fn address_of(&mut self, i: usize) -> Option<std::net::SocketAddr> {
        let shard = &mut self.shards[i];
        let endpoint = shard.endpoint.clone();
        if let Ok(ip) = endpoint.host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
            return Some(std::net::SocketAddr::new(ip, endpoint.port));
        }
        if !shard.resolved.is_empty() {
            shard.connects += 1;
            let addrs = std::mem::take(&mut shard.resolved);
            return Some(addrs[shard.connects % addrs.len()]);
        }
        if std::mem::replace(&mut shard.resolving, true) {
            return None;
        }
        shard.retry_at = None;
        let server = self.server.clone();
        let spawned = std::thread::Builder::new().name("fanout-resolve".into()).spawn(move || {
            use std::net::ToSocketAddrs;
            let result = (endpoint.host.as_str(), endpoint.port)
                .to_socket_addrs()
                .map(Iterator::collect::<Vec<_>>)
                .map_err(|e| e.to_string())
                .and_then(|addrs| match addrs.is_empty() {
                    true => Err("no address".to_string()),
                    false => Ok(addrs),
                });
            server.broker().send(BrokerOp::Resolved { shard: i, endpoint, result });
        });
        if let Err(e) = spawned {
            let shard = &mut self.shards[i];
            shard.resolving = false;
            shard.retry_at = Some(Instant::now() + BACKOFF_MAX);
            warn!("cluster: cannot start a thread to resolve {}: {e}", shard.endpoint);
        }
        None
    }

    /// A host name resolved (`address_of`): connect now, or retry later.
    fn resolved(
        &mut self,
        i: usize,
        endpoint: RedisEndpoint,
        result: Result<Vec<std::net::SocketAddr>, String>,
    ) {
        let Some(shard) = self.shards.get_mut(i) else { return };
        if shard.endpoint.host != endpoint.host || shard.endpoint.port != endpoint.port {
            return;
        }
        shard.resolving = false;
        match result {
            Ok(addrs) => {
                shard.resolved = addrs;
                shard.retry_at = Some(Instant::now());
            }
            Err(e) => {
                let delay = jittered(shard.backoff);
                shard.backoff = (shard.backoff * 2).min(BACKOFF_MAX);
                shard.retry_at = Some(Instant::now() + delay);
                warn!("cluster: cannot resolve {endpoint}: {e}; retrying in {delay:.1?}");
            }
        }
    }

    fn connect(&mut self, i: usize) {
        let endpoint = self.shards[i].endpoint.clone();
        let Some(addr) = self.address_of(i) else { return };
        let max_bulk = self.server.max_frame_bytes() + 64 * 1024;
        let registry = self.poll.registry();
        let links = Link::connect(addr, Token(2 * i), registry, max_bulk).and_then(|commands| {
            let pubsub = Link::connect(addr, Token(2 * i + 1), registry, max_bulk)?;
            Ok((commands, pubsub))
        });
        let shard = &mut self.shards[i];
        let (mut commands, mut pubsub) = match links {
            Ok(links) => links,
            Err(e) => {
                let delay = jittered(shard.backoff);
                shard.backoff = (shard.backoff * 2).min(BACKOFF_MAX);
                shard.retry_at = Some(Instant::now() + delay);
                warn!("cluster: cannot connect to {endpoint}: {e}; retrying in {delay:.1?}");
                return;
            }
        };
        if let Some(password) = &endpoint.password {
            let mut auth: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(user) = &endpoint.user {
                auth.push(user.as_bytes());
            }
            auth.push(password.as_bytes());
            commands.command(&auth);
            pubsub.command(&auth);
            shard.pending.push_back((Instant::now(), Pending::Setup("AUTH")));
        }
        if endpoint.db != 0 {
            commands.command(&[b"SELECT", endpoint.db.to_string().as_bytes()]);
            shard.pending.push_back((Instant::now(), Pending::Setup("SELECT")));
        }
        for script in [&self.publish, &self.sync, &self.refresh, &self.release] {
            commands.command(&[b"SCRIPT", b"LOAD", script.body.as_bytes()]);
            shard.pending.push_back((Instant::now(), Pending::Setup("SCRIPT LOAD")));
        }
        shard.setup_left = shard.pending.len();
        shard.probe_sent = None;
        let probe_topic = shard.probe_topic.clone();
        shard.to_subscribe.push(probe_topic);
        shard.commands = Some(commands);
        shard.pubsub = Some(pubsub);
        shard.retry_at = None;
        // Every channel served here is subscribed again and repaired from its stream.
        let shard = &mut self.shards[i];
        for (topic, tracked) in self.tracked.iter_mut().filter(|(_, t)| t.shard == Some(i)) {
            tracked.mirror.resubscribe();
            shard.to_subscribe.push(topic.clone());
        }
        for (glob, track) in self.patterns.iter_mut() {
            track.confirmed.remove(&i);
            shard.to_psubscribe.push(glob.clone());
        }
    }

    /// Redis answered the setup: publishes may go through.
    fn shard_ready(&mut self, i: usize) {
        let endpoint = self.shards[i].endpoint.clone();
        let server = self.server.clone();
        let broker = server.broker();
        let probe_every = broker.config.probe_interval;
        let shard = &mut self.shards[i];
        shard.backoff = BACKOFF_MIN;
        shard.next_probe = Instant::now() + probe_every;
        if std::mem::replace(&mut shard.ever_up, true) {
            broker.counters.reconnects.fetch_add(1, Ordering::Relaxed);
            info!("cluster: reconnected to {endpoint}");
        } else {
            info!("cluster: connected to {endpoint}");
        }
        broker.counters.shards_up.fetch_add(1, Ordering::Relaxed);
        self.publish_readiness();
        // A Redis that came back empty lost the leases: take them again at once, before another
        // node's client can claim a name a client here holds.
        self.refresh_leases();
    }

    /// A connection to server `i` failed: refuse what was in flight, keep every subscriber, and
    /// reconnect later.
    fn shard_down(&mut self, i: usize, why: &str) {
        let endpoint = self.shards[i].endpoint.clone();
        let registry = self.poll.registry();
        let shard = &mut self.shards[i];
        let was_up = shard.is_ready();
        let was_connected = shard.is_connected();
        shard.probe_sent = None;
        for link in [shard.commands.take(), shard.pubsub.take()].into_iter().flatten() {
            let mut link = link;
            link.deregister(registry);
        }
        shard.to_subscribe.clear();
        shard.to_unsubscribe.clear();
        shard.to_psubscribe.clear();
        shard.to_punsubscribe.clear();
        let delay = jittered(shard.backoff);
        shard.backoff = (shard.backoff * 2).min(BACKOFF_MAX);
        shard.retry_at = Some(Instant::now() + delay);
        if was_up {
            self.broker().counters.shards_up.fetch_sub(1, Ordering::Relaxed);
            self.publish_readiness();
        }
        if let Some(topology) = self.topology.as_mut() {
            // A master that went away may have been replaced by one of its replicas.
            topology.lost_master(Instant::now());
        }
        if was_connected {
            warn!("cluster: lost {endpoint}: {why}; reconnecting in {delay:.1?}");
        }
        self.refuse_pending(i, why);
        for tracked in self.tracked.values_mut().filter(|t| t.shard == Some(i)) {
            tracked.mirror.resubscribe();
        }
    }

    fn refuse_pending(&mut self, i: usize, why: &str) {
        let pending = std::mem::take(&mut self.shards[i].pending);
        let why: Arc<str> =
            format!("broker unavailable: {why}; the publish may or may not have been carried out")
                .into();
        for (_, pending) in pending {
            match pending {
                Pending::Publish(batch) => {
                    self.refuse_batch(&batch, why.clone());
                }
                Pending::Backfill { reply_to } => {
                    let why = "broker unavailable: Redis went away; the stream cannot be read now";
                    let answer = Answer::Backfill { target: reply_to, entries: Err(why.into()) };
                    self.tell(reply_to.worker, answer);
                }
                Pending::Claim { name, reply_to } => {
                    let why = "broker unavailable: the name cannot be claimed now".into();
                    let result = Err((ErrorCode::Unavailable, why));
                    self.tell(
                        reply_to.worker,
                        Answer::NameClaim { target: reply_to, name, result },
                    );
                }
                _ => {}
            }
        }
    }

    /// Refuses every publish of a batch.
    fn refuse_batch(&self, batch: &PublishBatch, why: Arc<str>) {
        for (_, op) in &batch.ops {
            self.refuse(op, why.clone());
        }
    }

    /// Refuses a publish (which is then no longer in flight).
    fn refuse(&self, op: &PublishOp, why: Arc<str>) {
        let counters = &self.broker().counters;
        counters.publishes_refused.fetch_add(1, Ordering::Relaxed);
        self.refuse_with(op, ErrorCode::Unavailable, why);
    }

    fn refuse_with(&self, op: &PublishOp, code: ErrorCode, why: Arc<str>) {
        self.broker().counters.publishes_in_flight.fetch_sub(1, Ordering::Relaxed);
        self.answer(op, 0, Err((code, why)));
    }

    /// The key of a name's lease: beside its inbox's keys (the same hash tag and server).
    fn lease_key(&self, name: &[u8]) -> Vec<u8> {
        let inbox = [&b"@"[..], name].concat();
        [&Keys::new(&self.config().key_prefix, &inbox).topic[..], b":name"].concat()
    }

    fn shard_of_name(&self, name: &[u8]) -> Option<usize> {
        self.shard_of(&[&b"@"[..], name].concat())
    }

    /// Claims `name` for a connection: a lease in Redis (SET NX PX) that this node refreshes
    /// while the connection holds the name, so that the name is unique across nodes and comes
    /// free when a node dies.
    fn claim(&mut self, name: Bytes, reply_to: AckTarget) {
        let ready = self.shard_of_name(&name).filter(|&i| self.shards[i].is_ready());
        let Some(i) = ready else {
            let why = "broker unavailable: Redis is unreachable; the name cannot be claimed";
            self.tell(
                reply_to.worker,
                Answer::NameClaim {
                    target: reply_to,
                    name,
                    result: Err((ErrorCode::Unavailable, why.into())),
                },
            );
            return;
        };
        let key = self.lease_key(&name);
        let lease = self.config().name_lease.as_millis().max(1).to_string();
        let node_id = self.node_id.clone();
        let Some(link) = self.shards[i].commands.as_mut() else {
            let why = "broker unavailable: Redis is unreachable; the name cannot be claimed";
            let result = Err((ErrorCode::Unavailable, why.into()));
            return self
                .tell(reply_to.worker, Answer::NameClaim { target: reply_to, name, result });
        };
        link.command(&[b"SET", &key[..], &node_id, b"NX", b"PX", lease.as_bytes()]);
        self.shards[i].pending.push_back((Instant::now(), Pending::Claim { name, reply_to }));
    }

    /// A connection let go of `name`: give the lease back (if Redis is unreachable, it
    /// expires by itself).
    fn release_name(&mut self, name: Bytes) {
        if !self.leases.release(&name) {
            return;
        }
        let Some(i) = self.shard_of_name(&name).filter(|&i| self.shards[i].is_ready()) else {
            return;
        };
        let key = self.lease_key(&name);
        let (sha, node_id) = (self.release.sha.clone(), self.node_id.clone());
        let Some(link) = self.shards[i].commands.as_mut() else { return };
        link.command(&[b"EVALSHA", sha.as_bytes(), b"1", &key, &node_id]);
        self.shards[i].pending.push_back((Instant::now(), Pending::Release));
    }

    /// Reads a channel's stream after `after` up to `upto` for a resume that memory no longer
    /// covers; refused (the resume is tried again) when Redis cannot be asked.
    fn backfill(&mut self, channel: &[u8], after: u64, upto: u64, reply_to: AckTarget) {
        if upto <= after {
            self.tell(
                reply_to.worker,
                Answer::Backfill { target: reply_to, entries: Ok(Vec::new()) },
            );
            return;
        }
        let unavailable =
            |why: &str| Answer::Backfill { target: reply_to, entries: Err(why.into()) };
        let ready = self.shard_of(channel).filter(|&i| self.shards[i].is_ready());
        let Some(i) = ready else {
            let why = "broker unavailable: Redis is unreachable; the stream cannot be read now";
            return self.tell(reply_to.worker, unavailable(why));
        };
        let log = Keys::new(&self.config().key_prefix, channel).log();
        // The stream's length is the publishers' setting, not ours: bounded here only so that
        // one answer stays a sane size (a longer gap is told `expired` after this much).
        let count = (upto - after).min(MAX_BACKFILL);
        let (from, to) = (format!("(0-{after}"), format!("0-{upto}"));
        let Some(link) = self.shards[i].commands.as_mut() else {
            return self
                .tell(reply_to.worker, unavailable("broker unavailable: Redis is unreachable"));
        };
        link.command(&[
            b"XRANGE",
            &log,
            from.as_bytes(),
            to.as_bytes(),
            b"COUNT",
            count.to_string().as_bytes(),
        ]);
        self.shards[i].pending.push_back((Instant::now(), Pending::Backfill { reply_to }));
    }

    /// Extends every lease this node holds (a third of the lease time apart).
    fn refresh_leases(&mut self) {
        let lease = self.config().name_lease.as_millis().max(1).to_string();
        let names: Vec<Bytes> = self.leases.names().cloned().collect();
        for name in names {
            let Some(i) = self.shard_of_name(&name).filter(|&i| self.shards[i].is_ready()) else {
                continue;
            };
            let key = self.lease_key(&name);
            let (sha, node_id) = (self.refresh.sha.clone(), self.node_id.clone());
            let Some(link) = self.shards[i].commands.as_mut() else { continue };
            link.command(&[b"EVALSHA", sha.as_bytes(), b"1", &key, &node_id, lease.as_bytes()]);
            self.shards[i].pending.push_back((Instant::now(), Pending::Refresh { name }));
        }
    }

    /// Sends an acknowledgement or a refusal to the publishing connection's worker.
    /// Answers publish `op` (in its connection's publish order: `AnswerOrder`).
    fn answer(&self, op: &PublishOp, offset: u64, result: Result<(), (ErrorCode, Arc<str>)>) {
        let target = op.reply_to;
        let persisted = Persisted { target, channel: op.channel.clone(), offset, result };
        self.send_answers(target, op.seq, Some(persisted));
    }

    /// Publish `op` went through and needs no answer (it was not acknowledged): answers that
    /// waited behind it go out.
    fn answered_quietly(&self, op: &PublishOp) {
        self.send_answers(op.reply_to, op.seq, None);
    }

    fn send_answers(&self, target: AckTarget, seq: u64, answer: Option<Persisted>) {
        let due = self.answers.borrow_mut().settle(target, seq, answer);
        for persisted in due {
            self.tell(target.worker, Answer::Published(persisted));
        }
    }

    /// Hands `answer` to worker `worker` and wakes it.
    fn tell(&self, worker: usize, answer: Answer) {
        self.server.answer(worker, answer);
    }

    fn send_publish(&mut self, i: usize, batch: PublishBatch, eval: bool) {
        let prefix = self.config().key_prefix.clone();
        let ttl = self.config().key_ttl.as_millis().max(1).to_string();
        let keep = self.server.history_messages().to_string();
        let epoch = new_epoch().to_be_bytes();
        let now = now_ms().to_string();
        let script = if eval { self.publish.body.as_bytes() } else { self.publish.sha.as_bytes() };
        let verb: &[u8] = if eval { b"EVAL" } else { b"EVALSHA" };
        let publish = self.verbs().publish;
        // Per channel: its keys (an inbox takes messages only while someone holds its name),
        // and its count.
        let mut keys: Vec<Vec<u8>> = Vec::with_capacity(3 * batch.channels.len());
        let mut topics = Vec::with_capacity(batch.channels.len());
        let mut counts = vec![0usize; batch.channels.len()];
        // What this node mirrors of each channel, for the script's fence against a rollback.
        let mut known: Vec<([u8; 8], String)> = Vec::with_capacity(batch.channels.len());
        for (c, channel) in batch.channels.iter().enumerate() {
            let names = Keys::new(&prefix, channel);
            keys.push(names.meta());
            keys.push(names.log());
            if channel.first() == Some(&b'@') {
                keys.push(self.lease_key(&channel[1..]));
            }
            known.push(match self.tracked.get(&names.topic) {
                Some(tracked) if !tracked.mirror.fresh => {
                    let (epoch, last) = tracked.mirror.fence(&*tracked.channel.lock_log());
                    (epoch.to_be_bytes(), last.to_string())
                }
                _ => ([0; 8], "0".to_string()),
            });
            topics.push(names.topic);
            counts[c] = batch.members[c].len();
        }
        let counts: Vec<String> = counts.iter().map(usize::to_string).collect();
        let (key_count, channel_count) = (keys.len().to_string(), batch.channels.len().to_string());
        let mut args: Vec<&[u8]> = vec![verb, script, key_count.as_bytes()];
        args.extend(keys.iter().map(Vec::as_slice));
        args.extend([
            channel_count.as_bytes(),
            &epoch,
            keep.as_bytes(),
            ttl.as_bytes(),
            now.as_bytes(),
            publish,
        ]);
        for (c, channel) in batch.channels.iter().enumerate() {
            let leased: &[u8] = if channel.first() == Some(&b'@') { b"1" } else { b"0" };
            let (epoch, last) = &known[c];
            args.extend([
                &topics[c][..],
                leased,
                &epoch[..],
                last.as_bytes(),
                counts[c].as_bytes(),
            ]);
            args.extend(batch.members[c].iter().map(|&k| &batch.ops[k].1.payload[..]));
        }
        let Some(link) = self.shards[i].commands.as_mut() else {
            // Every publish is answered (its connection's later answers wait for it).
            drop(args);
            let why: Arc<str> =
                "broker unavailable: Redis is unreachable; nothing was published".into();
            return self.refuse_batch(&batch, why);
        };
        link.command(&args);
        self.shards[i].pending.push_back((Instant::now(), Pending::Publish(batch)));
    }

    fn send_sync(&mut self, i: usize, topic: Bytes, after: u64, eval: bool) {
        self.send_sync_ending(i, topic, after, None, eval)
    }

    /// The sync script, first ending the channel's epoch `ending` (if it still is the channel's)
    /// for a new one: see `SYNC_LUA`.
    fn send_sync_ending(
        &mut self,
        i: usize,
        topic: Bytes,
        after: u64,
        ending: Option<u64>,
        eval: bool,
    ) {
        let Some(channel) = Keys::channel_of(&self.config().key_prefix, &topic) else { return };
        let keys = Keys::new(&self.config().key_prefix, channel);
        let ttl = self.config().key_ttl.as_millis().max(1).to_string();
        let epoch = new_epoch().to_be_bytes();
        let (meta, log) = (keys.meta(), keys.log());
        let script = if eval { self.sync.body.as_bytes() } else { self.sync.sha.as_bytes() };
        let verb: &[u8] = if eval { b"EVAL" } else { b"EVALSHA" };
        let Some(link) = self.shards[i].commands.as_mut() else { return };
        link.command(&[
            verb,
            script,
            b"2",
            &meta,
            &log,
            &epoch,
            ttl.as_bytes(),
            after.to_string().as_bytes(),
            SYNC_PAGE.to_string().as_bytes(),
            ending.map(u64::to_be_bytes).as_ref().map_or(&b""[..], |e| &e[..]),
        ]);
        let pending = Pending::Sync { topic, after, ending };
        self.shards[i].pending.push_back((Instant::now(), pending));
    }

    /// Starts serving `channel` on this node (a worker found it idle).
    fn serve(&mut self, channel: Arc<Channel>) {
        let keys = Keys::new(&self.config().key_prefix, &channel.name);
        if let Some(tracked) = self.tracked.get_mut(&keys.topic) {
            // Found through a pattern: now it gets a subscription of its own, and once that is
            // confirmed its log is offered to plain subscribers.
            if std::mem::take(&mut tracked.mirror.via_pattern) {
                if let Some(shard) = tracked.shard.and_then(|i| self.shards.get_mut(i)) {
                    if shard.is_connected() {
                        shard.to_subscribe.push(keys.topic);
                    }
                }
            }
            return;
        }
        let shard = self.shard_of(&channel.name);
        self.tracked.insert(
            keys.topic.clone(),
            Tracked {
                channel,
                shard,
                mirror: ChannelMirror::new(u64::MAX, false),
                last_heard: Instant::now(),
                checked: false,
                behind: None,
            },
        );
        self.broker().counters.channels_served.fetch_add(1, Ordering::Relaxed);
        if let Some(shard) = shard.and_then(|i| self.shards.get_mut(i)) {
            if shard.is_connected() {
                shard.to_subscribe.push(keys.topic);
            }
        }
    }

    /// Unsubscribes from channels nobody on this node uses any more (no subscriber, no waiting
    /// join, no worker cache entry, no message in the ring).
    fn let_go_of_unused(&mut self) {
        let registry = self.server.channels();
        let mut released = Vec::new();
        for (topic, tracked) in &self.tracked {
            // A channel found through a pattern is kept while it is busy (found again, it would
            // be read again).
            let quiet = !tracked.mirror.via_pattern
                || tracked.last_heard.elapsed() >= PATTERN_CHANNEL_QUIET;
            let idle = matches!(tracked.mirror.state, MirrorState::Live)
                && quiet
                && !Arc::ptr_eq(&tracked.channel, registry.broadcast())
                && registry.release_if_unused(&tracked.channel);
            if idle {
                released.push((topic.clone(), tracked.shard));
            }
        }
        for (topic, shard) in released {
            self.tracked.remove(&topic);
            self.broker().counters.channels_served.fetch_sub(1, Ordering::Relaxed);
            if let Some(shard) = shard.and_then(|i| self.shards.get_mut(i)) {
                if shard.is_connected() {
                    shard.to_unsubscribe.push(topic);
                }
            }
        }
    }

    /// Asks Redis for the latest offset of every channel that went quiet (nothing for
    /// `QUIET_AFTER`) since it was last asked: a message lost on the way with nothing after it
    /// (no jump to notice) is found this way and repaired from the stream.
    fn check_quiet_channels(&mut self, now: Instant) {
        let prefix = self.config().key_prefix.clone();
        let mut lost = Vec::new();
        for (topic, tracked) in self.tracked.iter_mut() {
            if let Some(latest) = tracked.behind.take() {
                let log = tracked.channel.lock_log();
                if let Some(outcome) = tracked.mirror.still_behind(&*log, latest) {
                    lost.push((topic.clone(), outcome));
                }
            }
            let quiet = now.saturating_duration_since(tracked.last_heard) >= QUIET_AFTER;
            if tracked.checked || !quiet || !matches!(tracked.mirror.state, MirrorState::Live) {
                continue;
            }
            let Some(shard) = tracked.shard.and_then(|i| self.shards.get_mut(i)) else { continue };
            if !shard.is_ready() {
                continue;
            }
            let Some(channel) = Keys::channel_of(&prefix, topic) else { continue };
            let meta = Keys::new(&prefix, channel).meta();
            let Some(link) = shard.commands.as_mut() else { continue };
            link.command(&[b"HMGET", &meta, b"e", b"o"]);
            let (epoch, last) = tracked.mirror.fence(&*tracked.channel.lock_log());
            let check = Pending::Check { topic: topic.clone(), epoch, last };
            shard.pending.push_back((now, check));
            tracked.checked = true;
        }
        for (topic, outcome) in lost {
            self.broker().counters.quiet_losses.fetch_add(1, Ordering::Relaxed);
            self.apply(&topic, outcome);
        }
    }

    /// Whether the ring has the headroom to take a pub/sub read's messages without waiting.
    fn ring_has_room(&self) -> bool {
        let ring = self.producer.ring();
        ring.capacity().saturating_sub(ring.backlog()) >= ring.capacity() / RING_HEADROOM
    }

    /// Notes that server `i`'s pub/sub connection has input left to read (its liveness probe
    /// may be among it: not a silent connection).
    fn leave_unread(&mut self, i: usize) {
        if !self.unread.contains(&i) {
            self.unread.push(i);
        }
        if let Some(shard) = self.shards.get_mut(i) {
            if shard.probe_sent.is_some() {
                shard.probe_sent = Some(Instant::now());
            }
        }
    }

    /// Reads the pub/sub connections left unread, while the ring has room.
    fn read_unread(&mut self) {
        for i in std::mem::take(&mut self.unread) {
            if self.ring_has_room() {
                self.link_ready(i, true);
            } else {
                self.leave_unread(i);
            }
        }
    }

    fn link_ready(&mut self, i: usize, pubsub: bool) {
        let Some(shard) = self.shards.get_mut(i) else { return };
        let link = if pubsub { shard.pubsub.as_mut() } else { shard.commands.as_mut() };
        let Some(link) = link else { return };
        let mut values = Vec::new();
        let budget = if pubsub { PUSH_READ_BUDGET } else { usize::MAX };
        let read = link.read(budget, |value| values.push(value));
        if pubsub && matches!(read, Ok(true)) {
            self.unread.retain(|&u| u != i);
            self.unread.push(i);
        }
        let Some(shard) = self.shards.get_mut(i) else { return };
        let link = if pubsub { shard.pubsub.as_mut() } else { shard.commands.as_mut() };
        let Some(link) = link else { return };
        let flushed = link.flush(self.poll.registry());
        for value in values {
            if !self.shards[i].is_connected() {
                return;
            }
            if pubsub {
                self.on_push(i, value);
            } else {
                self.on_reply(i, value);
            }
        }
        if let Err(e) = read.map(drop).and(flushed) {
            self.unread.retain(|&u| u != i);
            self.shard_down(i, &e.to_string());
        }
    }

    fn flush(&mut self) {
        for i in 0..self.shards.len() {
            if let Err(e) = self.flush_shard(i) {
                self.shard_down(i, &e.to_string());
            }
        }
    }

    fn flush_shard(&mut self, i: usize) -> std::io::Result<()> {
        let verbs = self.verbs();
        let sharded = self.topology.is_some();
        let shard = &mut self.shards[i];
        let Some(pubsub) = shard.pubsub.as_mut() else { return Ok(()) };
        for (verb, globs) in [
            (&b"PUNSUBSCRIBE"[..], &mut shard.to_punsubscribe),
            (&b"PSUBSCRIBE"[..], &mut shard.to_psubscribe),
        ] {
            for batch in globs.chunks(SUBSCRIBE_BATCH) {
                let mut args: Vec<&[u8]> = vec![verb];
                args.extend(batch.iter().map(|g| &g[..]));
                pubsub.command(&args);
            }
            globs.clear();
        }
        for (verb, topics) in [
            (verbs.unsubscribe, &mut shard.to_unsubscribe),
            (verbs.subscribe, &mut shard.to_subscribe),
        ] {
            // Sharded (un)subscriptions name channels of one slot per command.
            if sharded {
                topics.sort_by_key(|t| super::key_slot(t));
            }
            let mut rest = &topics[..];
            while !rest.is_empty() {
                let slot = super::key_slot(&rest[0]);
                let same = if sharded {
                    rest.iter().take_while(|t| super::key_slot(t) == slot).count()
                } else {
                    rest.len()
                };
                let (batch, after) = rest.split_at(same.min(SUBSCRIBE_BATCH));
                let mut args: Vec<&[u8]> = Vec::with_capacity(batch.len() + 1);
                args.push(verb);
                args.extend(batch.iter().map(|t| &t[..]));
                pubsub.command(&args);
                rest = after;
            }
            topics.clear();
        }
        let registry = self.poll.registry();
        pubsub.flush(registry)?;
        if let Some(commands) = shard.commands.as_mut() {
            if commands.has_output() {
                commands.flush(registry)?;
            }
        }
        Ok(())
    }

    fn on_reply(&mut self, i: usize, reply: Value) {
        let Some((sent, pending)) = self.shards[i].pending.pop_front() else {
            self.shard_down(i, "a reply to no command");
            return;
        };
        match pending {
            Pending::Setup(what) => {
                if let Value::Error(e) = reply {
                    self.shard_down(i, &format!("{what} failed: {e}"));
                    return;
                }
                self.shards[i].setup_left -= 1;
                if self.shards[i].setup_left == 0 {
                    self.shard_ready(i);
                }
            }
            Pending::Probe => {}
            Pending::Backfill { reply_to } => {
                let entries = parse_entries(reply)
                    .map(|entries| {
                        let retained = |(offset, published_ms, payload)| Retained {
                            offset,
                            published_ms,
                            payload,
                        };
                        entries.into_iter().map(retained).collect()
                    })
                    .map_err(|e| {
                        warn!("cluster: a resume could not read the stream: {e}");
                        Arc::from(format!("broker unavailable: the stream could not be read ({e})"))
                    });
                self.tell(reply_to.worker, Answer::Backfill { target: reply_to, entries });
            }
            Pending::Check { topic, epoch, last } => {
                let (redis_epoch, latest) = match reply {
                    Value::Array(Some(fields)) if fields.len() == 2 => {
                        let mut fields = fields.into_iter();
                        let epoch = fields
                            .next()
                            .and_then(bulk)
                            .and_then(|e| Some(u64::from_be_bytes(e.as_slice().try_into().ok()?)));
                        let latest = fields
                            .next()
                            .and_then(bulk)
                            .and_then(|n| std::str::from_utf8(&n).ok()?.parse::<u64>().ok());
                        (epoch, latest)
                    }
                    _ => (None, None),
                };
                let Some(tracked) = self.tracked.get_mut(&topic) else { return };
                let (outcome, behind) = {
                    let log = tracked.channel.lock_log();
                    tracked.mirror.checked(&*log, (epoch, last), (redis_epoch, latest))
                };
                tracked.behind = behind;
                self.apply(&topic, outcome);
            }
            Pending::Claim { name, reply_to } => {
                let reply = match reply {
                    Value::Simple(ok) if ok == "OK" => ClaimReply::Granted,
                    Value::Bulk(None) | Value::Null => ClaimReply::Taken,
                    other => ClaimReply::Failed(format!("{other:?}")),
                };
                let result = self.leases.claimed(name.clone(), reply_to, reply);
                self.tell(reply_to.worker, Answer::NameClaim { target: reply_to, name, result });
            }
            Pending::Refresh { name } => {
                let still_ours = reply != Value::Integer(0);
                if let Some(holder) = self.leases.refreshed(&name, still_ours) {
                    self.broker().counters.leases_lost.fetch_add(1, Ordering::Relaxed);
                    warn!(
                        "cluster: the lease on name {} went to another node (Redis lost it, or it expired during an outage); its client here is told",
                        String::from_utf8_lossy(&name)
                    );
                    self.tell(holder.worker, Answer::NameLost { target: holder, name });
                }
            }
            Pending::Release => {}
            Pending::Publish(batch) => {
                let counters = &self.broker().counters;
                match batch.answer(reply) {
                    Ok(answer) => {
                        let count = batch.ops.len() as u64;
                        counters.publishes_in_flight.fetch_sub(count, Ordering::Relaxed);
                        let micros = sent.elapsed().as_micros() as u64;
                        counters.publishes_done.fetch_add(count, Ordering::Relaxed);
                        counters
                            .round_trip_micros_total
                            .fetch_add(micros * count, Ordering::Relaxed);
                        counters.round_trip_micros_max.fetch_max(micros, Ordering::Relaxed);
                        // Acknowledgements go out in the order the publishes came.
                        for ((_, op), offset) in batch.ops.iter().zip(batch.offsets(&answer)) {
                            match offset {
                                Some(offset) if op.acked => self.answer(op, offset, Ok(())),
                                Some(_) => self.answered_quietly(op),
                                None => {
                                    let who =
                                        String::from_utf8_lossy(&op.channel[1..]).into_owned();
                                    let why = format!("no client named {who}");
                                    counters.publishes_done.fetch_sub(1, Ordering::Relaxed);
                                    self.answer(op, 0, Err((ErrorCode::NotFound, why.into())));
                                }
                            }
                        }
                        self.remember_acked(&batch, &answer);
                    }
                    // The script cache was flushed (SCRIPT FLUSH, a failover): send the body.
                    Err(Value::Error(e)) if e.starts_with("NOSCRIPT") => {
                        self.send_publish(i, batch, true)
                    }
                    Err(Value::Error(e)) if e.starts_with("MOVED") || e.starts_with("ASK") => {
                        self.slot_moved(&e);
                        let why: Arc<str> = "broker unavailable: the Redis Cluster moved this channel's slot; publish again".into();
                        self.refuse_batch(&batch, why);
                    }
                    Err(other) => {
                        warn!("cluster: the publish script failed: {other:?}");
                        let why: Arc<str> = format!("broker refused the publish: {other:?}").into();
                        self.refuse_batch(&batch, why);
                    }
                }
            }
            Pending::Sync { topic, after, ending } => match reply {
                Value::Error(e) if e.starts_with("NOSCRIPT") => {
                    self.send_sync_ending(i, topic, after, ending, true)
                }
                Value::Error(e) if e.starts_with("MOVED") || e.starts_with("ASK") => {
                    tracked_resubscribe(&mut self.tracked, &topic);
                    self.slot_moved(&e);
                }
                reply => match parse_sync(reply) {
                    Ok(synced) => self.synced(topic, after, synced),
                    Err(e) => self.shard_down(i, &format!("unexpected sync reply: {e}")),
                },
            },
        }
    }

    fn on_push(&mut self, i: usize, push: Value) {
        let parts = match push {
            Value::Array(Some(parts)) | Value::Push(parts) => parts,
            // A sharded subscribe sent to a master that no longer owns the slot: read the slot
            // map again (channels still subscribing are asked again there).
            Value::Error(e) if e.starts_with("MOVED") || e.starts_with("ASK") => {
                return self.slot_moved(&e);
            }
            Value::Error(e) => return self.shard_down(i, &format!("pub/sub: {e}")),
            // AUTH's +OK.
            _ => return,
        };
        let mut parts = parts.into_iter();
        let (Some(kind), Some(topic)) = (parts.next().and_then(bulk), parts.next().and_then(bulk))
        else {
            return;
        };
        let topic = Bytes::from(topic);
        if topic == self.shards[i].probe_topic {
            if matches!(&kind[..], b"message" | b"smessage") {
                self.shards[i].probe_sent = None;
            }
            return;
        }
        match &kind[..] {
            b"message" | b"smessage" | b"pmessage" => {
                self.broker().counters.messages_received.fetch_add(1, Ordering::Relaxed);
                // pmessage: pattern, channel, envelope.
                let topic = match &kind[..] {
                    b"pmessage" => match parts.next().and_then(bulk) {
                        Some(channel) => Bytes::from(channel),
                        None => return,
                    },
                    _ => topic,
                };
                let Some(envelope) = parts.next().and_then(bulk).map(Bytes::from) else { return };
                let Some(run) = Envelope::decode(envelope) else {
                    warn!("cluster: a message on {topic:?} that is not an envelope");
                    return;
                };
                if !self.tracked.contains_key(&topic) && &kind[..] == b"pmessage" {
                    self.found_through_pattern(i, &topic, run.first().map_or(1, |e| e.offset));
                }
                for envelope in run {
                    let Some(tracked) = self.tracked.get_mut(&topic) else { return };
                    let outcome = {
                        let log = tracked.channel.lock_log();
                        tracked.mirror.pushed(&*log, envelope, now_ms())
                    };
                    if !outcome.dropped_late {
                        tracked.last_heard = Instant::now();
                        tracked.checked = false;
                    }
                    self.apply(&topic, outcome);
                }
            }
            b"subscribe" | b"ssubscribe" => {
                let Some(tracked) = self.tracked.get_mut(&topic) else { return };
                if matches!(tracked.mirror.state, MirrorState::Subscribing) {
                    let outcome = {
                        let log = tracked.channel.lock_log();
                        tracked.mirror.subscribed(&*log)
                    };
                    self.apply(&topic, outcome);
                } else if matches!(tracked.mirror.state, MirrorState::Live)
                    && !tracked.mirror.via_pattern
                {
                    // A channel found through a pattern, now subscribed for a plain subscriber.
                    let mut log = tracked.channel.lock_log();
                    if log.mirror != Mirror::Live {
                        log.mirror = Mirror::Live;
                        self.served = true;
                    }
                }
            }
            b"psubscribe" => self.pattern_confirmed(i, topic),
            // A Redis Cluster moved the slot of a channel still served here (a resharding or a
            // failover): serve it from its new master.
            b"sunsubscribe" if self.tracked.contains_key(&topic) => {
                if let Some(tracked) = self.tracked.get_mut(&topic) {
                    tracked.mirror.resubscribe();
                }
                self.slot_moved("a sharded subscription was ended by the server");
            }
            _ => {}
        }
    }

    /// A pattern's PSUBSCRIBE took effect on server `i`; once on every server, the pattern is
    /// live (waiting pattern subscribers go on).
    fn pattern_confirmed(&mut self, i: usize, glob: Bytes) {
        let shards = self.shards.len();
        let server = self.server.clone();
        let Some(track) = self.patterns.get_mut(&glob) else { return };
        track.confirmed.insert(i);
        if track.confirmed.len() == shards {
            let broker = server.broker();
            let mut served = broker.served_patterns();
            if let Some(entry) = served.get_mut(&track.text) {
                if !entry.live {
                    entry.live = true;
                    self.served = true;
                }
            }
        }
    }

    /// A message on channel `topic`, which this node does not serve, came through a pattern:
    /// serve it from now on for the pattern subscribers (its log is read from the stream; the
    /// messages from `first` on go to the ring).
    fn found_through_pattern(&mut self, i: usize, topic: &Bytes, first: u64) {
        let Some(name) = Keys::channel_of(&self.config().key_prefix, topic) else { return };
        let channel = match self.server.channels().get_or_create(name) {
            Ok(channel) => channel,
            Err(e) => {
                warn!(
                    "cluster: a pattern matched {}, not served: {e}",
                    String::from_utf8_lossy(name)
                );
                return;
            }
        };
        self.broker().counters.channels_served.fetch_add(1, Ordering::Relaxed);
        self.tracked.insert(
            topic.clone(),
            Tracked {
                channel,
                shard: Some(i),
                mirror: ChannelMirror {
                    state: MirrorState::Syncing { buffer: Vec::new() },
                    ..ChannelMirror::new(first.saturating_sub(1), true)
                },
                last_heard: Instant::now(),
                checked: false,
                behind: None,
            },
        );
        self.send_sync(i, topic.clone(), 0, false);
    }

    /// Starts receiving every channel a pattern subscription could match: a PSUBSCRIBE on
    /// every server (standalone Redis only), of a Redis glob that matches at least what the
    /// pattern matches (the workers match exactly).
    fn serve_pattern(&mut self, text: Box<[u8]>) {
        let prefix = &self.config().key_prefix;
        // A Redis client's glob (behind `GLOB_KEY`) is a glob already: only the name around it.
        let glob = Bytes::from(match text.strip_prefix(&[crate::server::patterns::GLOB_KEY]) {
            Some(glob) => [&glob_prefix(prefix)[..], glob, b"}"].concat(),
            None => redis_glob(prefix, &text),
        });
        if self.patterns.contains_key(&glob) {
            return;
        }
        for shard in self.shards.iter_mut().filter(|s| s.is_connected()) {
            shard.to_psubscribe.push(glob.clone());
        }
        self.patterns
            .insert(glob, PatternTrack { text, confirmed: Default::default(), unused_sweeps: 0 });
    }

    /// PUNSUBSCRIBEs patterns no worker has had for two sweeps in a row.
    fn let_go_of_unused_patterns(&mut self) {
        let mut gone = Vec::new();
        {
            let broker = self.server.broker();
            let mut served = broker.served_patterns();
            for (glob, track) in self.patterns.iter_mut() {
                let unused = served.get(&track.text).is_none_or(|e| e.holders == 0 && e.live);
                track.unused_sweeps = if unused { track.unused_sweeps + 1 } else { 0 };
                if track.unused_sweeps >= 2 {
                    served.remove(&track.text);
                    gone.push(glob.clone());
                }
            }
        }
        for glob in gone {
            self.patterns.remove(&glob);
            for shard in self.shards.iter_mut().filter(|s| s.is_connected()) {
                shard.to_punsubscribe.push(glob.clone());
            }
        }
    }

    /// Redis Cluster: a slot is not where the map said (MOVED, ASK, or a sharded subscription
    /// ended by the server): read the map again now.
    fn slot_moved(&mut self, why: &str) {
        debug!("cluster: {why}; reading the slot map again");
        if let Some(topology) = self.topology.as_mut() {
            topology.moved(Instant::now());
        }
    }

    /// Each channel of an answered publish batch that this node mirrors remembers the latest
    /// place Redis acknowledged (epoch, offset, message): Redis giving it out again later, or
    /// coming back without it, is then a rollback even if this node's log never held it.
    fn remember_acked(&mut self, batch: &PublishBatch, answer: &BatchAnswer) {
        let prefix = self.config().key_prefix.clone();
        for (c, channel) in batch.channels.iter().enumerate() {
            // Fire-and-forget publishes cost nothing here, not even the channel's lookup.
            let Some(acked) = batch.acked(c, answer) else { continue };
            let topic = Keys::new(&prefix, channel).topic;
            let Some(tracked) = self.tracked.get_mut(&topic) else { continue };
            let outcome = {
                let log = tracked.channel.lock_log();
                tracked.mirror.published(&*log, acked)
            };
            self.apply(&topic, outcome);
        }
    }

    /// Applies a page of the sync script to the channel's mirror.
    fn synced(&mut self, topic: Bytes, after: u64, (epoch, last, entries): Synced) {
        let Some(tracked) = self.tracked.get_mut(&topic) else { return };
        let full = entries.len() == SYNC_PAGE;
        let page = Page { after, epoch, last, entries, full };
        let outcome = {
            let log = tracked.channel.lock_log();
            tracked.mirror.synced(&*log, page, now_ms())
        };
        self.apply(&topic, outcome);
    }

    /// Carries out what a channel's mirror decided, in order: the log and the ring, notices to
    /// subscribers, reads of the stream, counters and log lines.
    fn apply(&mut self, topic: &Bytes, outcome: Outcome) {
        let Some(tracked) = self.tracked.get(topic) else { return };
        let (channel, shard) = (tracked.channel.clone(), tracked.shard);
        let server = self.server.clone();
        let counters = &server.broker().counters;
        let name = || String::from_utf8_lossy(&channel.name).into_owned();
        if let Some((epoch, why)) = outcome.rollback {
            counters.rollbacks.fetch_add(1, Ordering::Relaxed);
            warn!(
                "cluster: Redis rolled back {} ({}; restored from an older snapshot, or a lagging replica took over): ending epoch {epoch:016x} for a new one, subscribers are told",
                name(),
                why.why()
            );
        }
        if let Some(ended) = outcome.epoch_changed {
            counters.epoch_changes.fetch_add(1, Ordering::Relaxed);
            warn!(
                "cluster: {} has a new epoch in Redis (was {ended:016x}): its keys expired, Redis lost them, or a rollback ended the old one",
                name()
            );
        }
        for step in outcome.steps {
            match step {
                Step::Append { offset, payload, published_ms, deliver } => {
                    self.accept(&channel, offset, payload, published_ms, deliver)
                }
                Step::Restart { epoch, next, notify } => {
                    {
                        let mut log = channel.lock_log();
                        log.restart(epoch, &server.channels().retained);
                        channel.set_epoch(epoch);
                        log.next_offset = next;
                    }
                    if notify {
                        // Live subscribers are told before the new log's messages reach them.
                        self.put_in_ring(&channel, EPOCH_NOTICE, Bytes::new());
                    }
                }
                Step::Hole { from, lost, notify } => {
                    counters.offsets_lost.fetch_add(lost, Ordering::Relaxed);
                    warn!(
                        "cluster: {} offsets {}..{} were lost and are no longer in the stream",
                        name(),
                        from - lost,
                        from - 1
                    );
                    if notify {
                        // Subscribers are told of the hole before what follows it.
                        let at = Bytes::copy_from_slice(&from.to_be_bytes());
                        self.put_in_ring(&channel, EXPIRED_NOTICE, at);
                    }
                }
                Step::SkipTo { next } => {
                    let mut log = channel.lock_log();
                    log.next_offset = log.next_offset.max(next);
                }
                Step::Sync { after, ending } => match shard {
                    Some(i) => self.send_sync_ending(i, topic.clone(), after, ending, false),
                    // The slot map is being read again; the channel is subscribed anew after it.
                    None => tracked_resubscribe(&mut self.tracked, topic),
                },
                Step::Served => {
                    let mut log = channel.lock_log();
                    if log.mirror != Mirror::Live {
                        log.mirror = Mirror::Live;
                        self.served = true;
                    }
                }
                Step::Repaired => {
                    counters.gaps_repaired.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Puts a notice into the ring (a full ring is waited out, as in `accept`).
    fn put_in_ring(&mut self, channel: &Arc<Channel>, offset: u64, payload: Bytes) {
        loop {
            let message =
                Arc::new(Message { channel: channel.clone(), offset, payload: payload.clone() });
            if self.producer.try_publish(message).is_ok() {
                self.delivered = true;
                return;
            }
            if !self.wait_for_room() {
                return;
            }
        }
    }

    /// Appends message `offset` to the channel's log and, for live subscribers, puts it into the
    /// ring, as a publisher on one node does (`ChannelRegistry::append`). A full ring is waited
    /// out with the lock released (workers take it while they replay). Pub/sub connections are
    /// read only while the ring has room for what one read delivers (`RING_HEADROOM`), so this
    /// waits only for what a sync's pages bring at once.
    fn accept(
        &mut self,
        channel: &Arc<Channel>,
        offset: u64,
        payload: Bytes,
        published_ms: u64,
        deliver: bool,
    ) {
        let server = self.server.clone();
        let registry = server.channels();
        let mut entry = Retained { offset, published_ms, payload };
        loop {
            let mut log = channel.lock_log();
            match registry.append(channel, &mut log, &mut self.producer, entry, deliver, |_, _| {})
            {
                Ok(_) => {
                    self.delivered |= deliver;
                    drop(log);
                    registry.after_publish();
                    return;
                }
                Err(back) => {
                    drop(log);
                    entry = back;
                    if !self.wait_for_room() {
                        return;
                    }
                }
            }
        }
    }

    /// The ring is full: wakes the workers and waits a moment for them to drain it; false when
    /// the server is shutting down (nothing will drain it).
    fn wait_for_room(&self) -> bool {
        if self.server.shutting_down() {
            return false;
        }
        self.server.wake_workers(false);
        std::thread::sleep(Duration::from_micros(50));
        true
    }
}

impl LocalLog for ChannelLog {
    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn next_offset(&self) -> u64 {
        self.next_offset
    }

    fn differs_at(&self, offset: u64, payload: &[u8]) -> bool {
        self.payload_at(offset).is_some_and(|mine| mine[..] != *payload)
    }
}

/// Marks a channel to be subscribed again once the slot map is known.
fn tracked_resubscribe(tracked: &mut HashMap<Bytes, Tracked>, topic: &Bytes) {
    if let Some(t) = tracked.get_mut(topic) {
        t.mirror.resubscribe();
    }
}

/// `base` times a random factor between 0.5 and 1.5, so that nodes that lost Redis together do
/// not reconnect together.
fn jittered(base: Duration) -> Duration {
    base.mul_f64(0.5 + (new_epoch() % 1000) as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_either_side() {
        for _ in 0..100 {
            let d = jittered(Duration::from_millis(1000));
            assert!(d >= Duration::from_millis(500) && d <= Duration::from_millis(1500));
        }
    }
}
