//! The broker thread: one mio poll over two connections per Redis server (one for commands,
//! pipelined; one for pub/sub), fed by the workers over a channel and delivering into the ring.
//! The broker is an I/O shell that moves bytes and time: this file (its loop and timers),
//! `dispatch` (each reply and push from Redis to what handles it), `servers` (connections,
//! readiness, the slot map applied),
//! `publishing` (what goes to Redis for the workers and what comes back to them) and
//! `mirroring` (the channels served). What to do is decided by plain data types with no
//! sockets and no clock, each in its own file and tested alone (the mirror, the names and the
//! answer order under seeded schedules with faults):
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
use mio::{Events, Poll, Token};

mod answers;
mod batch;
mod dispatch;
mod mirroring;
mod names;
mod patterns;
mod presence;
mod publishing;
mod scripts;
mod servers;
pub(crate) mod topology;

pub(crate) use self::presence::{survey_body, SurveyKind, MAX_TOP};

use self::answers::AnswerOrder;
use self::batch::{
    AckedUnserved, BatchAnswer, Expiries, PublishBatch, BATCH_BYTES, BATCH_MESSAGES, RUN_MESSAGES,
};
use self::mirroring::tracked_resubscribe;
use self::names::{ClaimReply, Leases};
use self::patterns::{glob_prefix, redis_glob, PatternTrack};
use self::scripts::{bulk, parse_entries, parse_sync, Script, Synced};
use self::topology::Topology;
use super::into_ring::IntoRing;
use super::link::{read_slot_map, Link};
use super::mirror::{ChannelMirror, LocalLog, Outcome, Page, State as MirrorState, Step};
use super::{
    jittered, next_backoff, BACKOFF_MAX, BACKOFF_MIN, BACKPRESSURE_RETRY, MAX_BACKFILL,
    PATTERN_CHANNEL_QUIET, SWEEP_EVERY, WAKER,
};
use super::{Broker, BrokerOp, ClusterConfig, Envelope, Keys, PublishOp, RedisEndpoint};
use crate::history::disk::{PublishOutcome, ReplyTo};
use crate::history::{new_epoch, now_ms, ChannelLog, Mirror, Retained};
use crate::protocol::resp::Value;
use crate::protocol::ErrorCode;
use crate::server::channels::Channel;
use crate::server::ring::Producer;
use crate::server::{Answer, Item, ServerForBroker};

/// Channels per SUBSCRIBE or UNSUBSCRIBE command.
const SUBSCRIBE_BATCH: usize = 512;
/// Stream entries per sync script call: up to 256 messages, or 16,384 (a ring's worth) when
/// every entry is a run of `batch::RUN_MESSAGES`.
const SYNC_PAGE: usize = 256;
/// A channel that heard nothing this long has its latest offset checked in Redis, once.
const QUIET_AFTER: Duration = Duration::from_secs(2);
/// Bytes read from one pub/sub connection per turn: what they deliver fits the ring's headroom
/// (`RING_HEADROOM` of it free), so the broker never waits for room in the middle of them.
/// A pub/sub connection is read only while that much of the ring is free; otherwise it is left
/// unread (Redis holds its output; TCP pushes back) and read again once workers drained.
const PUSH_READ_BUDGET: usize = 64 * 1024;

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
    /// INFO server, for the server's run id (part of the setup, but an error does not fail it:
    /// a managed Redis may not allow INFO).
    Identify,
    /// SET NX of a name's lease for a connection.
    Claim { name: Bytes, reply_to: ReplyTo },
    /// A lease refreshed (the refresh script: 0 when another node holds it now).
    Refresh { name: Bytes },
    /// A lease given back.
    Release,
    /// HMGET of a quiet channel's epoch and latest offset; the log's when it was asked.
    Check { topic: Bytes, epoch: u64, last: u64 },
    /// XRANGE of the stream for a resume.
    /// A resume's read of the stream: the messages after `after` up to `upto` are wanted.
    Backfill { reply_to: ReplyTo, after: u64, upto: u64 },
    /// This node's members of a channel written (the update script), with the call's arguments
    /// (sent whole with EVAL if Redis no longer has the script).
    PresenceUpdate { channel: Bytes, mode: presence::UpdateMode, args: Vec<Vec<u8>> },
    /// Every node's members of a channel read, for a connection (the query script).
    PresenceQuery {
        channel: Bytes,
        stats_only: bool,
        format: crate::protocol::Format,
        reply_to: ReplyTo,
        /// The call, sent whole with EVAL if Redis no longer has the script.
        args: Vec<Vec<u8>>,
    },
    /// A server API action published to every node (the reply: how many received it).
    Control { reply_to: ReplyTo },
    /// A survey published (the reply: how many nodes will answer).
    Survey { id: u64 },
    /// This node's answer to another's survey published.
    Answered,
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
    /// The run id of the server last connected to (`INFO server`), if it told.
    run_id: Option<String>,
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
            run_id: None,
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
    /// The channels' logs and the ring, as messages from Redis enter them.
    ring: IntoRing,
    ops: Receiver<BrokerOp>,
    shards: Vec<Shard>,
    tracked: HashMap<Bytes, Tracked>,
    publish: Script,
    sync: Script,
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
    /// Which channels' keys the next publish refreshes the expiry of.
    expiries: Expiries,
    /// Syncs whose reply could not be read (the channel's keys in a bad state), sent again at
    /// the next sweep.
    sync_retry: Vec<(Bytes, u64, Option<u64>)>,
    /// Where Redis last acknowledged publishes through this node to channels it does not serve.
    acked_unserved: AckedUnserved,
    next_refresh: Instant,
    presence_update_script: Script,
    presence_query_script: Script,
    /// Surveys in progress.
    presence_state: presence::PresenceState,
    /// When this node's members are next rewritten in Redis.
    next_presence_refresh: Instant,
}

/// The broker thread's poll and queue, made before `Shared` (which holds the `Broker`) exists.
pub(crate) struct Unstarted {
    pub poll: Poll,
    pub ops: Receiver<BrokerOp>,
    pub config: ClusterConfig,
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
            ring: IntoRing::new(server.clone(), producer),
            server,
            ops,
            shards,
            tracked: HashMap::new(),
            publish: Script::new(scripts::PUBLISH_LUA),
            sync: Script::new(scripts::SYNC_LUA),
            next_sweep: now + SWEEP_EVERY,
            stopping: false,
            node_id: Bytes::from(node_id),
            topology: config.redis_cluster.then(|| Topology::new(now)),
            refresh: Script::new(scripts::REFRESH_LUA),
            release: Script::new(scripts::RELEASE_LUA),
            leases: Default::default(),
            answers: Default::default(),
            expiries: Expiries::new(config.key_ttl),
            sync_retry: Vec::new(),
            acked_unserved: Default::default(),
            unread: Vec::new(),
            patterns: HashMap::new(),
            next_refresh: now,
            presence_update_script: Script::new(presence::PRESENCE_UPDATE_LUA),
            presence_query_script: Script::new(presence::PRESENCE_QUERY_LUA),
            presence_state: Default::default(),
            next_presence_refresh: now,
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
            self.ring.end_turn();
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
            .chain(self.next_survey_deadline())
            .chain(self.server.presence().map(|_| self.next_presence_refresh))
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
                BrokerOp::Presence { channel, joins, leaves, announce, batch } => {
                    // After the publishes taken before it (a leave after its last message).
                    if let Some(i) = self.shard_of(&channel) {
                        let slot = match self.topology {
                            Some(_) => super::key_slot(
                                &Keys::new(&self.config().key_prefix, &channel).topic,
                            ),
                            None => 0,
                        };
                        if let Some(batch) = batches.remove(&(i, slot)) {
                            if !batch.ops.is_empty() {
                                self.send_publish(i, batch, false);
                            }
                        }
                    }
                    if !self.presence_state.departed {
                        let mode = presence::UpdateMode::Update(batch);
                        self.presence_update(&channel, &joins, &leaves, announce, mode);
                    }
                }
                BrokerOp::PresenceQuery { channel, stats_only, format, reply_to } => {
                    self.presence_query(channel, stats_only, format, reply_to)
                }
                BrokerOp::Control { control, reply_to } => self.control(control, reply_to),
                BrokerOp::Survey { what, reply_to } => self.survey(what, reply_to),
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
                BrokerOp::Leave(done) => {
                    self.leave_presence();
                    self.flush();
                    let _ = done.send(());
                }
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
            for (topic, after, ending) in std::mem::take(&mut self.sync_retry) {
                let shard = self.tracked.get(&topic).and_then(|tracked| tracked.shard);
                if let Some(i) = shard.filter(|&i| self.shards[i].is_ready()) {
                    self.send_sync_ending(i, topic, after, ending, false);
                }
            }
            self.answers.get_mut().tidy();
            self.let_go_of_unused();
            self.let_go_of_unused_patterns();
            self.check_quiet_channels(now);
        }
        if let Some(presence) = self.server.presence() {
            if now >= self.next_presence_refresh {
                self.next_presence_refresh = now + presence.config.ttl / 3;
                self.refresh_presence();
            }
        }
        self.finish_surveys(true);
        if now >= self.next_refresh {
            self.next_refresh = now + self.config().name_lease / 3;
            self.refresh_leases();
        }
    }

    /// Hands `answer` to worker `worker` and wakes it.
    fn tell(&self, worker: usize, answer: Answer) {
        self.server.answer(worker, answer);
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
