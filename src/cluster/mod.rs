//! Cluster mode: several fanout nodes joined through Redis (`fanout serve --redis URL`).
//!
//! ```text
//!   node A workers --PUB--> broker thread A --EVALSHA publish.lua--> Redis (shard of the channel)
//!                                                  | offset = HINCRBY meta o; XADD log 0-<offset>
//!                                                  | PUBLISH fanout:{C} <envelope>
//!   node B broker thread <--message fanout:{C}-----+  (only nodes with local subscribers of C)
//!        | offset check (gap -> XRANGE repair), append to the local log, ring publish
//!        v
//!   node B workers: drain the ring, per-channel batches, write queues (as on one node)
//! ```
//!
//! Redis is the record: it gives every message its offset (one atomic script per publish), keeps
//! the channel's history as a stream whose entry ids are the offsets, and carries each message
//! once to each node that has subscribers of its channel. A node mirrors, in its in-memory log,
//! the stream of every channel it serves, so resume works on any node exactly as on one: the
//! client's (epoch, offset) means the same everywhere.
//!
//! A channel is served on a node once the node is subscribed to it in Redis and has read its
//! stream (`history::Mirror::Live`); until then a client's subscribe waits (its connection's
//! input is held, as for a full ring). The broker subscribes first and reads the stream second,
//! buffering what arrives meanwhile, so nothing published in between is missed; offsets it has
//! already read are dropped from the buffer. Each live message's offset is checked: a jump
//! (messages lost while the pub/sub connection was down) is repaired from the stream before
//! anything later is delivered.
//!
//! The broker runs on its own thread with its own mio poll and talks RESP over plain sockets
//! (`link`); workers hand it publishes and subscriptions over a channel and never wait on Redis.
//! Redis keys, for channel `C` (the braces are a Redis Cluster hash tag: one slot per channel):
//!
//! | key / channel        | type    | contents                                                |
//! |----------------------|---------|---------------------------------------------------------|
//! | `fanout:{C}:meta`    | hash    | `e`: the epoch (8 bytes), `o`: the latest offset        |
//! | `fanout:{C}:log`     | stream  | entry `0-<offset>`: `p` payload, `t` publish time (ms)  |
//! | `fanout:{C}`         | pub/sub | envelopes: `0x01`, epoch (8 bytes), offset (8 bytes BE), payload |

mod broker;
mod into_ring;
mod link;
mod mirror;
pub(crate) mod multicast;
#[cfg(test)]
mod sim_support;
mod upstream;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::Sender;
use log::warn;

use crate::history::disk::ReplyTo;
use crate::server::channels::Channel;
use crate::server::ring::Producer;
use crate::server::Item;

pub(crate) use broker::{survey_body, SurveyKind, MAX_TOP};
pub use multicast::MulticastConfig;

/// Cluster settings (`--redis`, `--redis-cluster`).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Independent Redis servers; each channel lives on one of them (jump consistent hash of its
    /// name), so adding servers spreads channels without moving most of them. With
    /// `redis_cluster`, the seed nodes of one Redis Cluster instead.
    pub redis: Vec<RedisEndpoint>,
    /// The servers are one Redis Cluster (>= 7): channels go where their hash slot is (the keys
    /// and pub/sub channel of one fanout channel share a slot: hash tags), delivery uses sharded
    /// pub/sub (SSUBSCRIBE, SPUBLISH), and the slot map is read from the cluster (and again
    /// when it moves a slot).
    pub redis_cluster: bool,
    /// Prefix of every key and pub/sub channel fanout uses in Redis.
    pub key_prefix: String,
    /// A channel's keys expire after this long without a publish (its epoch goes with them: a
    /// channel that comes back after that is a new log, as a freed channel is on one node).
    pub key_ttl: Duration,
    /// A Redis connection that leaves a command unanswered this long, or a pub/sub connection
    /// that does not deliver the liveness probe within it, is dropped and reconnected.
    pub command_timeout: Duration,
    /// How often the liveness probe goes round (publish to our own channel, hear it back).
    pub probe_interval: Duration,
    /// A client name's lease in Redis: refreshed by its node every third of this; a dead node's
    /// names come free this long after it died.
    pub name_lease: Duration,
    /// TLS for `rediss://` servers: trust roots (the system's by default) and the client
    /// certificate for mutual TLS, if any. Required when a server is `rediss://`.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// Edge mode: upstream fanout servers (`host:port`, tried in turn) this node mirrors the
    /// channels its clients use from, instead of joining through Redis (`redis` is empty).
    pub upstream: Vec<String>,
    /// What this node presents upstream (AUTH): the upstream's API key, or a token whose grant
    /// covers every channel this node's clients may use.
    pub upstream_token: Option<String>,
    /// Where `upstream_token` came from: read again at every connect, so that a token
    /// replaced in it before it expires is the one presented next.
    pub upstream_token_file: Option<std::path::PathBuf>,
}

impl ClusterConfig {
    /// One Redis server, the default prefix and a day's key lifetime.
    pub fn new(redis: Vec<RedisEndpoint>) -> Self {
        ClusterConfig {
            redis,
            redis_cluster: false,
            key_prefix: "fanout".into(),
            key_ttl: Duration::from_secs(86_400),
            command_timeout: Duration::from_secs(5),
            probe_interval: Duration::from_secs(1),
            name_lease: Duration::from_secs(15),
            tls: None,
            upstream: Vec::new(),
            upstream_token: None,
            upstream_token_file: None,
        }
    }

    /// Edge mode through `upstream` servers (`host:port`), with a day's defaults elsewhere.
    pub fn upstream(upstream: Vec<String>) -> Self {
        ClusterConfig { upstream, ..ClusterConfig::new(Vec::new()) }
    }

    /// Whether this node joins through Redis (false: an edge under an upstream fanout server).
    pub fn through_redis(&self) -> bool {
        self.upstream.is_empty()
    }
}

/// A Redis server: `redis://[[user]:password@]host[:port][/db]`, or `rediss://...` for TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisEndpoint {
    /// Host name or address.
    pub host: String,
    /// Port (6379 when the URL has none).
    pub port: u16,
    /// ACL user name, with `password`.
    pub user: Option<String>,
    /// `AUTH` password.
    pub password: Option<String>,
    /// Database for the keys (pub/sub is the same in every database).
    pub db: u32,
    /// `rediss://`: TLS, the server's certificate checked against `host`.
    pub tls: bool,
}

impl std::str::FromStr for RedisEndpoint {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, String> {
        let (tls, rest) = match (url.strip_prefix("redis://"), url.strip_prefix("rediss://")) {
            (Some(rest), _) => (false, rest),
            (_, Some(rest)) => (true, rest),
            _ => return Err(format!("{url}: a Redis URL starts with redis:// or rediss://")),
        };
        let (credentials, rest) = match rest.rsplit_once('@') {
            Some((credentials, rest)) => (Some(credentials), rest),
            None => (None, rest),
        };
        let (authority, db) = match rest.split_once('/') {
            Some((authority, "")) => (authority, 0),
            Some((authority, db)) => {
                (authority, db.parse().map_err(|_| format!("{url}: the database is a number"))?)
            }
            None => (rest, 0),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(':') => {
                (host, port.parse().map_err(|_| format!("{url}: the port is a number"))?)
            }
            _ => (authority, 6379),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{url}: no host"));
        }
        let (user, password) = match credentials {
            None => (None, None),
            Some(c) => match c.split_once(':') {
                Some(("", password)) => (None, Some(password.to_owned())),
                Some((user, password)) => (Some(user.to_owned()), Some(password.to_owned())),
                None => (None, Some(c.to_owned())),
            },
        };
        Ok(RedisEndpoint { host: host.to_owned(), port, user, password, db, tls })
    }
}

impl std::fmt::Display for RedisEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "rediss" } else { "redis" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)?;
        if self.db != 0 {
            write!(f, "/{}", self.db)?;
        }
        Ok(())
    }
}

/// Which of `shards` servers holds `channel`: jump consistent hash (Lamping and Veach, 2014)
/// of the name's FNV-1a hash. Adding a server moves only the channels that go to it.
pub fn shard_of(channel: &[u8], shards: usize) -> usize {
    let mut key = channel.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let (mut b, mut j) = (-1i64, 0i64);
    while j < shards as i64 {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b.max(0) as usize
}

/// Redis Cluster's hash slot of `key`: CRC16 (XMODEM) of its hash tag (what is between the first
/// `{` and the next `}`, when that is not empty) or of the whole key, modulo 16384.
pub fn key_slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        rest.iter().position(|&b| b == b'}').filter(|&close| close > 0).map(|close| &rest[..close])
    });
    crc16(tagged.unwrap_or(key)) % 16384
}

/// CRC16-CCITT (XMODEM), the one Redis Cluster hashes keys with.
fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |crc, &b| {
        (0..8).fold(crc ^ (u16::from(b) << 8), |crc, _| {
            if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            }
        })
    })
}

/// Names in Redis for one fanout channel.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    /// The pub/sub channel, `<prefix>:{C}`; the keys add `:meta` and `:log`.
    pub topic: Bytes,
}

impl Keys {
    pub fn new(prefix: &str, channel: &[u8]) -> Self {
        let mut topic = Vec::with_capacity(prefix.len() + channel.len() + 3);
        Self::write_topic(prefix, channel, &mut topic);
        Keys { topic: topic.into() }
    }

    /// `channel`'s pub/sub channel into `out` (emptied first): a lookup by topic without an
    /// allocation, on the broker's per-batch paths.
    pub fn write_topic(prefix: &str, channel: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(b":{");
        out.extend_from_slice(channel);
        out.push(b'}');
    }

    pub fn meta(&self) -> Vec<u8> {
        [&self.topic[..], b":meta"].concat()
    }

    pub fn log(&self) -> Vec<u8> {
        [&self.topic[..], b":log"].concat()
    }

    /// The fanout channel of a pub/sub channel name, if it is one of ours.
    pub fn channel_of<'a>(prefix: &str, topic: &'a [u8]) -> Option<&'a [u8]> {
        topic.strip_prefix(prefix.as_bytes())?.strip_prefix(b":{")?.strip_suffix(b"}")
    }
}

/// Envelope versions: one message, or a run of consecutive messages of one channel.
pub(crate) const ENVELOPE_ONE: u8 = 1;
pub(crate) const ENVELOPE_RUN: u8 = 2;

/// Epochs a cluster creates are ordered: the top bit set, then seconds since 2024 (31 bits),
/// microseconds (20 bits) and 12 random bits, so that a later epoch compares greater, and the
/// scripts make each new epoch of a channel greater than the one it replaces (and than the
/// newest the ending node mirrors) whatever the clocks say. An epoch Redis brings back from an
/// older snapshot is then older than one a node has seen since, even when no node still
/// remembers that it ended (`mirror::ChannelMirror::synced`).
pub(crate) const ORDERED_EPOCH: u64 = 1 << 63;

/// A candidate for a new epoch (see `ORDERED_EPOCH`).
pub(crate) fn ordered_epoch() -> u64 {
    const SINCE_2024: u64 = 1_704_067_200;
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let seconds = now.as_secs().saturating_sub(SINCE_2024) & 0x7fff_ffff;
    let micros = u64::from(now.subsec_micros()) & 0xf_ffff;
    ORDERED_EPOCH | seconds << 32 | micros << 12 | (crate::history::new_epoch() & 0xfff)
}

/// A candidate for a new epoch greater than every ordered epoch in `floor` (the one it replaces,
/// the newest the node mirrors), whatever this node's clock says.
pub(crate) fn epoch_after(floor: impl IntoIterator<Item = u64>) -> u64 {
    let newest = floor.into_iter().filter(|e| e & ORDERED_EPOCH != 0).max();
    let candidate = ordered_epoch();
    match newest {
        // An epoch of `u64::MAX` (only a legacy random one could be) has no successor.
        Some(newest) if newest >= candidate => newest.checked_add(1).unwrap_or(candidate),
        _ => candidate,
    }
}

/// Whether epoch `a` is older than `b`: both ordered (`ORDERED_EPOCH`), `a` less. Epochs from
/// before ordering were random: those with the top bit clear compare as neither; those with it
/// set (half of them) compare as ordered, so on upgrade a channel with such an epoch may end its
/// next epoch once as a rollback, after which `epoch_after` continues above it.
pub(crate) fn older_epoch(a: u64, b: u64) -> bool {
    a & b & ORDERED_EPOCH != 0 && a < b
}

/// The mirroring threads' (the Redis broker's, an edge's) waker token on their poll.
pub(crate) const WAKER: mio::Token = mio::Token(usize::MAX);
/// Reconnects back off from this to `BACKOFF_MAX`, doubling, jittered (`next_backoff`).
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often channels without local subscribers are let go of.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// A channel served only for pattern subscribers is let go of after this long without messages.
pub(crate) const PATTERN_CHANNEL_QUIET: Duration = Duration::from_secs(30);
/// Messages one resume reads from Redis or an upstream, at most.
pub(crate) const MAX_BACKFILL: u64 = 100_000;
/// How often a connection left unread (the ring had too little room) is looked at again.
pub(crate) const BACKPRESSURE_RETRY: Duration = Duration::from_millis(1);

/// `base` give or take half, so that nodes that lost the same server do not all come back at
/// once.
pub(crate) fn jittered(base: Duration) -> Duration {
    base.mul_f64(0.5 + (crate::history::new_epoch() % 1000) as f64 / 1000.0)
}

/// The delay before the next try (jittered), doubling `backoff` for the one after.
pub(crate) fn next_backoff(backoff: &mut Duration) -> Duration {
    let delay = jittered(*backoff);
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
    delay
}

/// The thread that joins this node to others, made before `Shared` exists, run after.
pub(crate) enum Unstarted {
    Redis(broker::Unstarted),
    Upstream(upstream::Unstarted),
}

impl Unstarted {
    /// Runs the thread until the server shuts down.
    pub fn run(self, server: crate::server::ServerForBroker, producer: Producer<Item>) {
        match self {
            Unstarted::Redis(thread) => thread.run(server, producer),
            Unstarted::Upstream(thread) => thread.run(server, producer),
        }
    }
}

/// Creates the workers' handle and the thread that serves it: the Redis broker, or an edge's
/// upstream thread.
pub(crate) fn prepare(config: ClusterConfig) -> std::io::Result<(Broker, Unstarted)> {
    let poll = mio::Poll::new()?;
    let waker = mio::Waker::new(poll.registry(), WAKER)?;
    let (sender, ops) = crossbeam_channel::unbounded();
    // An edge has one flag: whether its upstream is reachable.
    let shards = config.redis.len().max(1);
    let broker = Broker {
        ops: sender,
        waker,
        wake_pending: Default::default(),
        shards: (0..shards).map(|_| Default::default()).collect(),
        counters: Default::default(),
        served_generation: Default::default(),
        refusals: Default::default(),
        patterns: Default::default(),
        config: config.clone(),
    };
    let thread = match config.through_redis() {
        true => Unstarted::Redis(broker::Unstarted { poll, ops, config }),
        false => Unstarted::Upstream(upstream::Unstarted { poll, ops, config }),
    };
    Ok((broker, thread))
}

/// A message as it travels through Redis pub/sub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Envelope {
    pub epoch: u64,
    pub offset: u64,
    pub payload: Bytes,
}

impl Envelope {
    /// The messages of one pub/sub message: `0x01`, epoch (8 bytes), offset (8 bytes,
    /// big-endian), payload; or `0x02`, epoch, the first offset, a count (4 bytes), then each
    /// payload as a 4-byte big-endian length and its bytes, at consecutive offsets. Payloads
    /// are slices of `bytes` (no copy). `None` when malformed.
    pub fn decode(bytes: Bytes) -> Option<Vec<Envelope>> {
        let header = |at: usize| -> Option<u64> {
            Some(u64::from_be_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
        };
        let (epoch, offset) = (header(1)?, header(9)?);
        match *bytes.first()? {
            ENVELOPE_ONE => Some(vec![Envelope { epoch, offset, payload: bytes.slice(17..) }]),
            ENVELOPE_RUN => {
                let count = u32::from_be_bytes(bytes.get(17..21)?.try_into().ok()?) as usize;
                let mut at = 21;
                let mut run = Vec::with_capacity(count.min(1024));
                for k in 0..count as u64 {
                    let len = u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize;
                    let end = (at + 4).checked_add(len).filter(|&end| end <= bytes.len())?;
                    run.push(Envelope {
                        epoch,
                        offset: offset + k,
                        payload: bytes.slice(at + 4..end),
                    });
                    at = end;
                }
                (at == bytes.len()).then_some(run)
            }
            _ => None,
        }
    }

    /// A run's envelope, as the publish script builds it (tests).
    #[cfg(test)]
    pub fn encode_run(epoch: u64, first: u64, payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = vec![ENVELOPE_RUN];
        out.extend_from_slice(&epoch.to_be_bytes());
        out.extend_from_slice(&first.to_be_bytes());
        out.extend_from_slice(&(payloads.len() as u32).to_be_bytes());
        for payload in payloads {
            out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            out.extend_from_slice(payload);
        }
        out
    }
}

/// A publish handed to the broker.
#[derive(Debug)]
pub(crate) struct PublishOp {
    pub channel: Bytes,
    pub payload: Bytes,
    /// Where the acknowledgement (if `acked`) or the refusal goes.
    pub reply_to: ReplyTo,
    pub acked: bool,
    /// When it was read (`Shared::clock_ns`), for the acknowledgement's latency.
    pub asked_ns: u64,
    /// Its place among its connection's publishes (the broker numbers them as they come, so
    /// that answers go back in that order: `broker::AnswerOrder`).
    pub seq: u64,
}

/// What workers ask of the broker.
#[derive(Debug)]
pub(crate) enum BrokerOp {
    Publish(PublishOp),
    /// Serve this channel here: subscribe in Redis, mirror its stream, then mark it live.
    Serve(Arc<Channel>),
    /// Receive every channel this pattern matches (PSUBSCRIBE), then mark it live.
    ServePattern(Box<[u8]>),
    /// A worker's joins and leaves of one channel (one window's): this node's members in Redis,
    /// and (`announce`) the events to every node's subscribers.
    Presence {
        channel: Bytes,
        joins: Vec<crate::server::presence::Change>,
        leaves: Vec<crate::server::presence::Change>,
        announce: bool,
        /// The batch's seq (`protocol::presence::Event::seq`).
        batch: u64,
    },
    /// Who is subscribed to `channel` on every node (`Answer::Reply`, encoded in `format`).
    PresenceQuery {
        channel: Bytes,
        stats_only: bool,
        format: crate::protocol::Format,
        reply_to: ReplyTo,
    },
    /// Tell every node's workers (through Redis) to act on connections: the server API.
    Control {
        control: crate::server::Control,
        reply_to: ReplyTo,
    },
    /// Ask every node (through Redis) and answer with what they said: the server API.
    Survey {
        what: SurveyKind,
        reply_to: ReplyTo,
    },
    /// Claim a client name across the cluster for this connection (answered `NameClaim`).
    Claim {
        name: Bytes,
        reply_to: ReplyTo,
    },
    /// A connection let go of its name.
    Release {
        name: Bytes,
    },
    /// A resume needs the stream's messages after `after` up to `upto` (`Answer::Backfill`).
    Backfill {
        channel: Bytes,
        after: u64,
        upto: u64,
        reply_to: ReplyTo,
    },
    /// Redis Cluster: a slot map read on a helper thread (`CLUSTER SLOTS`, from the first node
    /// that answered), or why none could be.
    SlotMap(Result<(RedisEndpoint, Vec<broker::topology::SlotRange>), String>),
    /// A server's host name resolved on a helper thread (`getaddrinfo` blocks), or why not.
    Resolved {
        shard: usize,
        endpoint: RedisEndpoint,
        result: Result<Vec<std::net::SocketAddr>, String>,
    },
    /// The node is about to stop: its members leave (in Redis, and announced), then `done`.
    Leave(crossbeam_channel::Sender<()>),
    Shutdown,
}

/// The broker's counters (shown in `/metrics` and the stats line).
#[derive(Debug, Default)]
pub struct BrokerCounters {
    /// Each publish script call's round trip to Redis (one event per call).
    pub round_trip: crate::server::histogram::Histogram,
    /// Redis servers with both connections up.
    pub shards_up: AtomicU64,
    /// Connections to Redis re-established after a failure.
    pub reconnects: AtomicU64,
    /// Publishes sent to Redis and not yet answered.
    pub publishes_in_flight: AtomicU64,
    /// Publishes Redis answered.
    pub publishes_done: AtomicU64,
    /// Their round trips (worker to Redis and back to the broker), summed.
    pub round_trip_micros_total: AtomicU64,
    /// The longest of them.
    pub round_trip_micros_max: AtomicU64,
    /// Publishes refused because Redis was unreachable or failed the script.
    pub publishes_refused: AtomicU64,
    /// Messages received from Redis pub/sub.
    pub messages_received: AtomicU64,
    /// Offset jumps filled in from the stream.
    pub gaps_repaired: AtomicU64,
    /// Offsets the stream no longer held when a jump was repaired (subscribers miss them).
    pub offsets_lost: AtomicU64,
    /// A channel's epoch changed under live subscribers (its keys expired or Redis lost them).
    pub epoch_changes: AtomicU64,
    /// Channels this node is subscribed to in Redis.
    pub channels_served: AtomicU64,
    /// Connections dropped because Redis left a command unanswered past the timeout.
    pub timeouts: AtomicU64,
    /// Pub/sub connections restarted because the liveness probe was not heard.
    pub probe_failures: AtomicU64,
    /// Name leases found taken by another node when refreshed (after a long outage).
    pub leases_lost: AtomicU64,
    /// Quiet channels found behind Redis's latest offset (a loss with nothing after it).
    pub quiet_losses: AtomicU64,
    /// Channel syncs whose reply could not be read, tried again a second later.
    pub sync_failures: AtomicU64,
    /// Channels whose log Redis rolled back, ended by a new epoch.
    pub rollbacks: AtomicU64,
    /// Edge: messages delivered from the multicast group.
    pub multicast_messages: AtomicU64,
    /// Edge: channels read again from upstream after the multicast group missed something.
    pub multicast_repairs: AtomicU64,
    /// Edge: malformed datagrams on the multicast group.
    pub multicast_malformed: AtomicU64,
}

/// The workers' handle on the broker thread.
#[derive(Debug)]
pub(crate) struct Broker {
    ops: Sender<BrokerOp>,
    waker: mio::Waker,
    /// Set before waking the broker; the broker clears it before draining `ops`.
    wake_pending: AtomicBool,
    shards: Box<[AtomicBool]>,
    pub counters: BrokerCounters,
    /// Bumped each time channels become live, so that workers look at their waiting joins only
    /// then.
    pub served_generation: AtomicU64,
    /// Edge: why the upstream refused to serve a channel (`Mirror::Refused`), for the
    /// subscribers that waited for it.
    refusals:
        std::sync::Mutex<std::collections::HashMap<Bytes, (crate::protocol::ErrorCode, Arc<str>)>>,
    /// Pattern subscriptions of this node (standalone Redis), by pattern: how many workers have
    /// it, and whether its PSUBSCRIBE took effect everywhere. Workers go through the methods
    /// below; the broker thread marks patterns live and forgets unused ones.
    patterns: std::sync::Mutex<std::collections::HashMap<Box<[u8]>, PatternServed>>,
    pub config: ClusterConfig,
}

/// A pattern this node receives for its pattern subscribers (see `Broker::patterns`).
#[derive(Debug, Default)]
pub(crate) struct PatternServed {
    /// Workers with at least one subscriber of it.
    pub holders: usize,
    /// Its PSUBSCRIBE took effect on every server.
    pub live: bool,
}

/// Publishes sent to the broker and not yet answered, past which publishers are paused as for a
/// full ring.
pub(crate) const MAX_IN_FLIGHT: u64 = 65_536;

impl Broker {
    /// Why `channel` cannot be used in this cluster, if it cannot: in a Redis Cluster a name
    /// that starts with `}` would leave its keys without a hash tag, on different slots.
    pub fn unfit(&self, channel: &[u8]) -> Option<&'static str> {
        // (An edge takes what its upstream takes; the upstream refuses what it cannot use.)
        (self.config.redis_cluster && channel.first() == Some(&b'}'))
            .then_some("in a Redis Cluster a channel name cannot start with '}'")
    }

    /// Whether every Redis server is reachable (`/healthz`).
    /// Whether publishes can go through to every server (a Redis Cluster has one flag for all
    /// its masters, whatever the number of seeds given).
    pub fn all_up(&self) -> bool {
        if self.config.redis_cluster {
            return self.shards[0].load(Ordering::Acquire);
        }
        self.shards.iter().all(|s| s.load(Ordering::Acquire))
    }

    /// Whether publishes to `channel` can go through: its server's flag (a Redis Cluster has
    /// one for all its masters).
    pub fn up_for(&self, channel: &[u8]) -> bool {
        let i = match self.config.redis_cluster {
            true => 0,
            false => shard_of(channel, self.shards.len()),
        };
        self.shards.get(i).is_some_and(|s| s.load(Ordering::Acquire))
    }

    pub fn send(&self, op: BrokerOp) {
        if self.ops.send(op).is_err() {
            warn!("the broker thread is gone");
            return;
        }
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            if let Err(e) = self.waker.wake() {
                warn!("cannot wake the broker thread: {e}");
            }
        }
    }

    /// Whether presence and the server API go through Redis to every node (false on an edge:
    /// they are this node's own).
    pub fn through_redis(&self) -> bool {
        self.config.through_redis()
    }

    /// Why the upstream refused to serve `channel` (an edge).
    pub fn refusal(&self, channel: &[u8]) -> (crate::protocol::ErrorCode, Arc<str>) {
        let refusals = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        refusals.get(channel).cloned().unwrap_or_else(|| {
            (crate::protocol::ErrorCode::Unavailable, "the upstream refused the channel".into())
        })
    }

    /// An edge's upstream refused `channel` (`None`: served again, forget why).
    fn note_refusal(
        &self,
        channel: &Bytes,
        refusal: Option<(crate::protocol::ErrorCode, Arc<str>)>,
    ) {
        let mut refusals = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        match refusal {
            Some(refusal) => refusals.insert(channel.clone(), refusal),
            None => refusals.remove(channel),
        };
    }

    pub fn in_flight(&self) -> u64 {
        self.counters.publishes_in_flight.load(Ordering::Relaxed)
    }

    fn served_patterns(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<Box<[u8]>, PatternServed>> {
        self.patterns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether pattern `text`'s PSUBSCRIBE took effect.
    pub fn pattern_live(&self, text: &[u8]) -> bool {
        self.served_patterns().get(text).is_some_and(|entry| entry.live)
    }

    /// Whether this node receives every channel `text` could match (always, in a Redis
    /// Cluster: its channels are subscribed one by one). If not, the broker thread is asked
    /// (once) to PSUBSCRIBE, and `served_generation` moves once it has.
    pub fn pattern_served_here(&self, text: &[u8]) -> bool {
        if self.config.redis_cluster {
            return true;
        }
        let mut served = self.served_patterns();
        match served.get(text) {
            Some(entry) => entry.live,
            None => {
                served.insert(text.into(), Default::default());
                drop(served);
                self.send(BrokerOp::ServePattern(text.into()));
                false
            }
        }
    }

    /// A worker took up (`+1`) or let go of (`-1`) pattern `text`; the broker thread
    /// PUNSUBSCRIBEs a pattern no worker holds.
    pub fn pattern_holders(&self, text: &[u8], change: isize) {
        let mut served = self.served_patterns();
        if change > 0 {
            served.entry(text.into()).or_default().holders += 1;
            let asked = served.get(text).is_some_and(|e| e.live || e.holders > 1);
            drop(served);
            // An SSE stream subscribes without waiting: make sure the pattern is asked for.
            if !asked {
                self.send(BrokerOp::ServePattern(text.into()));
            }
        } else if let Some(entry) = served.get_mut(text) {
            entry.holders = entry.holders.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_are_ordered_and_a_new_one_is_after_what_it_replaces() {
        let a = ordered_epoch();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = ordered_epoch();
        assert!(older_epoch(a, b) && !older_epoch(b, a), "later is greater");
        // A node whose clock is behind still makes an epoch after the one it replaces.
        let far_future = ORDERED_EPOCH | (0x7fff_0000u64 << 32);
        assert_eq!(epoch_after([far_future, a]), far_future + 1);
        assert!(older_epoch(b, epoch_after([b])));
        // Epochs from before ordering (random, top bit clear) are neither older nor newer.
        let random = 0x1234_5678_9abc_def1;
        assert!(!older_epoch(random, a) && !older_epoch(a, random));
        assert!(epoch_after([random]) & ORDERED_EPOCH != 0);
    }

    #[test]
    fn redis_urls() {
        let e: RedisEndpoint = "redis://127.0.0.1:6380".parse().unwrap();
        assert_eq!((e.host.as_str(), e.port, e.password, e.db), ("127.0.0.1", 6380, None, 0));
        let e: RedisEndpoint = "redis://:secret@localhost/2".parse().unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.password.as_deref(), e.db),
            ("localhost", 6379, Some("secret"), 2)
        );
        let e: RedisEndpoint = "redis://bob:pw@[::1]:7000".parse().unwrap();
        assert_eq!((e.host.as_str(), e.port, e.user.as_deref()), ("::1", 7000, Some("bob")));
        assert!("http://x".parse::<RedisEndpoint>().is_err());
        assert!("redis://:1".parse::<RedisEndpoint>().is_err());
        let e: RedisEndpoint = "rediss://app:pw@cache.example.com:6380".parse().unwrap();
        assert!(e.tls && e.port == 6380 && e.host == "cache.example.com");
        assert_eq!(e.to_string(), "rediss://cache.example.com:6380");
        assert!("http://h".parse::<RedisEndpoint>().is_err());
        assert!("redis://h:port".parse::<RedisEndpoint>().is_err());
    }

    #[test]
    fn jump_hash_spreads_and_moves_little() {
        let names: Vec<String> = (0..10_000).map(|i| format!("room.{i}")).collect();
        let mut counts = [0usize; 3];
        for name in &names {
            counts[shard_of(name.as_bytes(), 3)] += 1;
        }
        assert!(counts.iter().all(|&c| (3000..3700).contains(&c)), "{counts:?}");
        let moved =
            names.iter().filter(|n| shard_of(n.as_bytes(), 3) != shard_of(n.as_bytes(), 4)).count();
        assert!((2000..3000).contains(&moved), "about a quarter moves to the new server: {moved}");
        assert!(names.iter().all(|n| shard_of(n.as_bytes(), 1) == 0));
    }

    #[test]
    fn key_slots_are_redis_clusters() {
        // From Redis's documentation and its CRC16 test vector.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(key_slot(b"somekey"), 11058);
        assert_eq!(key_slot(b"foo{hash_tag}"), 2515);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"{user1000}.followers"));
        assert_eq!(key_slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % 16384, "an empty tag is no tag");
        let keys = Keys::new("fanout", b"room.7");
        assert_eq!(key_slot(&keys.topic), key_slot(&keys.meta()));
        assert_eq!(key_slot(&keys.topic), key_slot(&keys.log()));
    }

    #[test]
    fn envelopes_and_names() {
        let mut one = vec![ENVELOPE_ONE];
        one.extend_from_slice(&0xfeedu64.to_be_bytes());
        one.extend_from_slice(&42u64.to_be_bytes());
        one.extend_from_slice(b"hi");
        let hi = Envelope { epoch: 0xfeed, offset: 42, payload: Bytes::from_static(b"hi") };
        assert_eq!(Envelope::decode(one.into()), Some(vec![hi]));
        let run = Envelope::encode_run(7, 10, &[b"a", b"", b"ccc"]);
        let decoded = Envelope::decode(run.clone().into()).expect("a run");
        let offsets: Vec<(u64, &[u8])> =
            decoded.iter().map(|e| (e.offset, &e.payload[..])).collect();
        assert_eq!(offsets, vec![(10, &b"a"[..]), (11, &b""[..]), (12, &b"ccc"[..])]);
        // Every truncation, a length past the end, trailing bytes, an unknown version: refused.
        for cut in 0..run.len() {
            assert_eq!(Envelope::decode(Bytes::copy_from_slice(&run[..cut])), None, "cut at {cut}");
        }
        let mut long = run.clone();
        long.push(0);
        assert_eq!(Envelope::decode(long.into()), None);
        let mut lying = Envelope::encode_run(7, 10, &[b"a"]);
        lying[24] = 9;
        assert_eq!(Envelope::decode(lying.into()), None);
        assert_eq!(Envelope::decode(Bytes::from_static(b"\x03short")), None);
        let keys = Keys::new("fanout", b"room.1");
        assert_eq!(&keys.topic[..], b"fanout:{room.1}");
        assert_eq!(keys.meta(), b"fanout:{room.1}:meta");
        assert_eq!(Keys::channel_of("fanout", b"fanout:{a}b}"), Some(&b"a}b"[..]));
        assert_eq!(Keys::channel_of("fanout", b"other:{a}"), None);
    }
}
