//! The broker thread: one mio poll over two connections per Redis server (one for commands,
//! pipelined; one for pub/sub), fed by the workers over a channel and delivering into the ring.
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

use super::link::Link;
use super::mirror::{Acked, ChannelMirror, LocalLog, Outcome, Page, State as MirrorState, Step};
use super::{Broker, BrokerOp, ClusterConfig, Envelope, Keys, PublishOp, RedisEndpoint};
use crate::history::disk::{AckTarget, Persisted};
use crate::history::{new_epoch, now_ms, ChannelLog, Mirror, Retained};
use crate::protocol::resp::Value;
use crate::protocol::ErrorCode;
use crate::server::channels::{Channel, Message, EPOCH_NOTICE, EXPIRED_NOTICE};
use crate::server::ring::Producer;
use crate::server::{Answer, Item, Shared};

const WAKER: Token = Token(usize::MAX);
/// Hash slots of a Redis Cluster.
const SLOTS: usize = 16384;
/// A slot whose server is not known.
const NO_SHARD: u16 = u16::MAX;
/// Channels per SUBSCRIBE or UNSUBSCRIBE command.
const SUBSCRIBE_BATCH: usize = 512;
/// Stream entries per sync script call.
const SYNC_PAGE: usize = 1000;
/// Stream entries one resume reads from Redis, at most.
const MAX_BACKFILL: u64 = 100_000;
/// Publishes sent as one script call, at most (and about this many payload bytes).
const BATCH_MESSAGES: usize = 1024;
const BATCH_BYTES: usize = 1 << 20;
/// How often channels without local subscribers are let go of.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// A channel that heard nothing this long has its latest offset checked in Redis, once.
const QUIET_AFTER: Duration = Duration::from_secs(2);
/// A channel served only for pattern subscribers is let go of after this long without messages.
const PATTERN_CHANNEL_QUIET: Duration = Duration::from_secs(30);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Redis Cluster: the slot map is read again this often while everything is up...
const TOPOLOGY_REFRESH: Duration = Duration::from_secs(10);
/// ...and this often while a master of the map does not answer (a failover promotes one of its
/// replicas within the cluster's node timeout; the map names it once it has).
const TOPOLOGY_RETRY: Duration = Duration::from_millis(250);
/// Bytes read from one pub/sub connection per turn: what they deliver fits the ring's headroom
/// (`RING_HEADROOM` of it free), so the broker never waits for room in the middle of them.
const PUSH_READ_BUDGET: usize = 64 * 1024;
/// A pub/sub connection is read only while this share of the ring is free; otherwise it is
/// left unread (Redis holds its output; TCP pushes back) and read again once workers drained.
const RING_HEADROOM: u64 = 4;
/// How often a connection left unread is looked at again.
const BACKPRESSURE_RETRY: Duration = Duration::from_millis(1);

/// Gives runs of messages their offsets, appends them to their channels' streams and publishes
/// one envelope per channel carrying its run: one script call for a whole turn's publishes to
/// one server (or one slot of a Redis Cluster), not one per message.
/// KEYS, per channel: meta, log, and for an inbox the name's lease. ARGV: channels in the call,
/// candidate epoch (8 bytes, for a channel that has none), messages to keep (0: no stream), key
/// lifetime (ms), time (ms), PUBLISH or (Redis Cluster) SPUBLISH; then per channel: its pub/sub
/// channel, '1' if it has a lease key, the epoch this node mirrors of it and the latest offset it
/// holds there (empty and 0 when it mirrors none), its message count, and the payloads. Returns
/// each channel's first offset (-1 for an inbox whose name nobody holds: nothing published), and
/// each channel's epoch (a node that mirrors the channel remembers what it was acknowledged:
/// `mirror::Acked`).
///
/// The fence: Redis handing out an offset this node already holds in the same epoch means Redis
/// lost what it had acknowledged (restored from an older snapshot, a lagging replica promoted,
/// `everysec` losing its last second). Offsets would name two messages; instead the channel's log
/// ends there and a new epoch begins, keeping the stream (what Redis still has is read again
/// from the new epoch's start), before anything is published under the old one.
const PUBLISH_LUA: &str = r"
local keep = tonumber(ARGV[3])
local firsts, epochs = {}, {}
local k, a = 1, 7
for c = 1, tonumber(ARGV[1]) do
  local meta, log = KEYS[k], KEYS[k + 1]
  local topic, leased, known_epoch, known_last, count =
    ARGV[a], ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  k, a = k + 2, a + 5
  local held = true
  if leased == '1' then
    held = redis.call('EXISTS', KEYS[k]) == 1
    k = k + 1
  end
  if held then
    local epoch = redis.call('HGET', meta, 'e')
    local first = redis.call('HINCRBY', meta, 'o', count) - count + 1
    if (not epoch) or (epoch == known_epoch and first <= known_last) then
      epoch = ARGV[2]
      redis.call('HSET', meta, 'e', epoch)
    end
    local run = {}
    for m = 1, count do
      local payload = ARGV[a + m - 1]
      if keep > 0 then
        redis.call('XADD', log, 'MAXLEN', '~', keep, '0-' .. (first + m - 1), 'p', payload, 't', ARGV[5])
      end
      run[m] = struct.pack('>I4', #payload) .. payload
    end
    if keep > 0 then
      redis.call('PEXPIRE', log, ARGV[4])
    end
    redis.call('PEXPIRE', meta, ARGV[4])
    redis.call(ARGV[6], topic, '\2' .. epoch .. struct.pack('>I8I4', first, count) .. table.concat(run))
    firsts[c], epochs[c] = first, epoch
  else
    firsts[c], epochs[c] = -1, ''
  end
  a = a + count
end
return {firsts, epochs}
";

/// Reads a channel's epoch (creating it when missing), latest offset, and stream entries from
/// an offset on (the node compares the one it has with the stream's: a rewritten entry is a
/// rollback). KEYS: meta, log. ARGV: candidate epoch, key lifetime (ms), after, count, and an
/// epoch to end (empty: none): a node that found Redis rolled back ends the epoch it mirrors,
/// once, whichever node sees it first (the candidate becomes the channel's epoch only while that
/// one still is).
const SYNC_LUA: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch or epoch == ARGV[5] then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'e', epoch)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local last = tonumber(redis.call('HGET', KEYS[1], 'o') or '0')
local entries = redis.call('XRANGE', KEYS[2], '0-' .. ARGV[3], '+', 'COUNT', ARGV[4])
return {epoch, last, entries}
";

/// Keeps a name's lease: extends it if this node holds it, takes it again if it expired (a long
/// outage), else 0 (someone else has it now). KEYS: the lease. ARGV: node id, lease (ms).
const REFRESH_LUA: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
elseif not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// Gives a name's lease back if this node holds it. KEYS: the lease. ARGV: node id.
const RELEASE_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Answers to each connection's publishes in the order it published them: with several Redis
/// servers (or a Redis Cluster) its channels live on different servers, which answer in their
/// own time, while a client matches each acknowledgement to its oldest publish not yet
/// answered. An answer that comes early waits for the ones before it.
#[derive(Default)]
struct AnswerOrder {
    next_seq: u64,
    /// Per connection with publishes not yet answered: each one's number and answer.
    waiting: HashMap<AckTarget, VecDeque<(u64, Answered)>>,
}

/// Where a publish's answer stands.
enum Answered {
    /// Not yet.
    Pending,
    /// This, to send once the publishes before it are answered.
    With(Persisted),
    /// It needs none (an unacknowledged publish that went through).
    Quietly,
}

impl AnswerOrder {
    /// Numbers a publish of `target`'s.
    fn enter(&mut self, target: AckTarget) -> u64 {
        self.next_seq += 1;
        self.waiting.entry(target).or_default().push_back((self.next_seq, Answered::Pending));
        self.next_seq
    }

    /// Publish `seq` of `target` is answered (`None`: it needs no answer); returns the answers
    /// now due, in order.
    fn settle(&mut self, target: AckTarget, seq: u64, answer: Option<Persisted>) -> Vec<Persisted> {
        let Some(queue) = self.waiting.get_mut(&target) else {
            return answer.into_iter().collect();
        };
        if let Some(slot) = queue.iter_mut().find(|(s, _)| *s == seq) {
            slot.1 = answer.map_or(Answered::Quietly, Answered::With);
        }
        let mut due = Vec::new();
        while queue.front().is_some_and(|(_, answered)| !matches!(answered, Answered::Pending)) {
            if let Some((_, Answered::With(answer))) = queue.pop_front() {
                due.push(answer);
            }
        }
        if queue.is_empty() {
            self.waiting.remove(&target);
        }
        due
    }
}

/// Publishes for one script call: the channels in the order first met, and the publishes in the
/// order they came, each with its channel's index.
#[derive(Default)]
struct PublishBatch {
    channels: Vec<Bytes>,
    /// Channel name -> its index in `channels`.
    index: HashMap<Bytes, usize>,
    /// Per channel, its publishes' indexes in `ops`, in order.
    members: Vec<Vec<usize>>,
    ops: Vec<(usize, PublishOp)>,
    bytes: usize,
}

impl PublishBatch {
    fn add(&mut self, op: PublishOp) {
        let c = *self.index.entry(op.channel.clone()).or_insert_with(|| {
            self.channels.push(op.channel.clone());
            self.members.push(Vec::new());
            self.channels.len() - 1
        });
        self.bytes += op.payload.len();
        self.members[c].push(self.ops.len());
        self.ops.push((c, op));
    }
}

/// A pattern PSUBSCRIBEd for this node's pattern subscribers.
struct PatternTrack {
    /// The pattern as clients wrote it.
    text: Box<[u8]>,
    /// Servers that confirmed the PSUBSCRIBE.
    confirmed: std::collections::HashSet<usize>,
    /// Sweeps in a row that found no worker with the pattern.
    unused_sweeps: u8,
}

/// The Redis glob of the pub/sub channels a fanout pattern matches: `*` and `>` tokens become
/// `*` (which also crosses dots: the workers match exactly), everything else literal.
fn redis_glob(prefix: &str, pattern: &[u8]) -> Vec<u8> {
    let mut glob = glob_prefix(prefix);
    for (k, token) in pattern.split(|&b| b == b'.').enumerate() {
        if k > 0 {
            glob.push(b'.');
        }
        if token == b"*" || token == b">" {
            glob.push(b'*');
            continue;
        }
        for &b in token {
            if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
                glob.push(b'\\');
            }
            glob.push(b);
        }
    }
    glob.push(b'}');
    glob
}

/// The start of every glob of our pub/sub channels: the prefix, escaped, and `:{`.
fn glob_prefix(prefix: &str) -> Vec<u8> {
    let mut glob = Vec::with_capacity(prefix.len() + 8);
    for &b in prefix.as_bytes() {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            glob.push(b'\\');
        }
        glob.push(b);
    }
    glob.extend_from_slice(b":{");
    glob
}

/// The pub/sub commands in use.
struct Verbs {
    subscribe: &'static [u8],
    unsubscribe: &'static [u8],
    publish: &'static [u8],
}

/// A range of hash slots and its master: (first slot, last slot, host, port).
pub(crate) type SlotRange = (u16, u16, String, u16);

/// Redis Cluster: the slot map (`CLUSTER SLOTS`). Blocking (a connect with a timeout, one round
/// trip): called on a helper thread, never the broker's (`BrokerThread::discover`).
fn read_slot_map(seed: &RedisEndpoint) -> std::io::Result<Vec<SlotRange>> {
    use std::io::{Read, Write};
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(seed.host.as_str(), seed.port))?
        .next()
        .ok_or_else(|| invalid("no address".into()))?;
    let timeout = Duration::from_millis(500);
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut request = Vec::new();
    let mut command = |args: &[&[u8]]| {
        request.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for arg in args {
            request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            request.extend_from_slice(arg);
            request.extend_from_slice(b"\r\n");
        }
    };
    let mut expected = 1;
    if let Some(password) = &seed.password {
        match &seed.user {
            Some(user) => command(&[b"AUTH", user.as_bytes(), password.as_bytes()]),
            None => command(&[b"AUTH", password.as_bytes()]),
        }
        expected += 1;
    }
    command(&[b"CLUSTER", b"SLOTS"]);
    stream.write_all(&request)?;
    let mut input = Vec::new();
    let mut replies = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    while replies.len() < expected {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(invalid("closed".into()));
        }
        input.extend_from_slice(&chunk[..n]);
        while let Some((value, used)) = crate::protocol::resp::parse_value(&input, 1 << 20)
            .map_err(|e| invalid(e.to_string()))?
        {
            input.drain(..used);
            replies.push(value);
        }
    }
    let Some(Value::Array(Some(ranges))) = replies.pop() else {
        return Err(invalid(format!("CLUSTER SLOTS answered {:?}", replies)));
    };
    let number = |v: &Value| match v {
        Value::Integer(n) if (0..=65535).contains(n) => Some(*n as u16),
        _ => None,
    };
    let mut map = Vec::new();
    for range in ranges {
        let Value::Array(Some(parts)) = range else { continue };
        let (Some(first), Some(last)) =
            (parts.first().and_then(number), parts.get(1).and_then(number))
        else {
            continue;
        };
        let Some(Value::Array(Some(master))) = parts.get(2) else { continue };
        let host = match master.first() {
            Some(Value::Bulk(Some(host))) => String::from_utf8_lossy(host).into_owned(),
            _ => String::new(),
        };
        let Some(port) = master.get(1).and_then(number) else { continue };
        map.push((first, last, host, port));
    }
    Ok(map)
}

struct Script {
    body: &'static str,
    sha: String,
}

impl Script {
    fn new(body: &'static str) -> Self {
        Script { body, sha: sha1_smol::Sha1::from(body).digest().to_string() }
    }
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
    /// A lease refreshed or given back.
    Lease { name: Bytes },
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
    shared: Arc<Shared>,
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
    /// Redis Cluster: the server of each hash slot (`NO_SHARD` while unknown).
    slots: Option<Box<[u16]>>,
    /// Redis Cluster: when to read the slot map (again).
    discover_at: Option<Instant>,
    discover_backoff: Duration,
    /// Redis Cluster: a slot map is being read on a helper thread.
    discovering: bool,
    /// Redis Cluster: masters in the last map taken (logged when it changes).
    known_masters: usize,
    /// Redis Cluster: when to read the slot map again while everything is up (it is read again
    /// sooner on MOVED/ASK, a lost master, or while a master of the map does not answer).
    next_topology_check: Instant,
    refresh: Script,
    release: Script,
    /// Patterns PSUBSCRIBEd for pattern subscribers, by Redis glob.
    patterns: HashMap<Bytes, PatternTrack>,
    /// Names this node holds a lease on.
    leases: HashMap<Bytes, AckTarget>,
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
    pub fn run(self, shared: Arc<Shared>, producer: Producer<Item>) {
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
            shared,
            producer,
            ops,
            shards,
            tracked: HashMap::new(),
            publish: Script::new(PUBLISH_LUA),
            sync: Script::new(SYNC_LUA),
            delivered: false,
            served: false,
            next_sweep: now + SWEEP_EVERY,
            stopping: false,
            node_id: Bytes::from(node_id),
            slots: config.redis_cluster.then(|| vec![NO_SHARD; SLOTS].into_boxed_slice()),
            discover_at: config.redis_cluster.then_some(now),
            discover_backoff: BACKOFF_MIN,
            discovering: false,
            known_masters: 0,
            next_topology_check: now + TOPOLOGY_REFRESH,
            refresh: Script::new(REFRESH_LUA),
            release: Script::new(RELEASE_LUA),
            leases: Default::default(),
            answers: Default::default(),
            unread: Vec::new(),
            patterns: HashMap::new(),
            next_refresh: now,
        }
        .run();
    }
}

/// Parses a sync reply: epoch, latest offset, and (offset, time, payload) per stream entry.
type Synced = (u64, u64, Vec<(u64, u64, Bytes)>);

fn parse_sync(reply: Value) -> Result<Synced, String> {
    let Value::Array(Some(parts)) = reply else { return Err(format!("{reply:?}")) };
    let mut parts = parts.into_iter();
    let epoch = match parts.next() {
        Some(Value::Bulk(Some(e))) if e.len() == 8 => {
            u64::from_be_bytes(e[..].try_into().map_err(|_| "epoch")?)
        }
        other => return Err(format!("epoch {other:?}")),
    };
    let last = match parts.next() {
        Some(Value::Integer(n)) if n >= 0 => n as u64,
        other => return Err(format!("last offset {other:?}")),
    };
    let Some(entries) = parts.next() else { return Err("entries".into()) };
    Ok((epoch, last, parse_entries(entries)?))
}

/// Stream entries (XRANGE's answer): (offset, publish time, payload) each.
fn parse_entries(reply: Value) -> Result<Vec<(u64, u64, Bytes)>, String> {
    let Value::Array(Some(raw)) = reply else { return Err(format!("entries {reply:?}")) };
    let mut entries = Vec::with_capacity(raw.len());
    for entry in raw {
        let Value::Array(Some(entry)) = entry else { return Err("entry".into()) };
        let mut entry = entry.into_iter();
        let Some(Value::Bulk(Some(id))) = entry.next() else { return Err("entry id".into()) };
        let offset = std::str::from_utf8(&id)
            .ok()
            .and_then(|id| id.strip_prefix("0-"))
            .and_then(|n| n.parse().ok())
            .ok_or("entry id")?;
        let Some(Value::Array(Some(fields))) = entry.next() else { return Err("fields".into()) };
        let (mut payload, mut time) = (Bytes::new(), 0);
        for pair in fields.chunks(2) {
            match pair {
                [Value::Bulk(Some(name)), Value::Bulk(Some(value))] if name == b"p" => {
                    payload = Bytes::from(value.clone());
                }
                [Value::Bulk(Some(name)), Value::Bulk(Some(value))] if name == b"t" => {
                    time =
                        std::str::from_utf8(value).ok().and_then(|t| t.parse().ok()).unwrap_or(0);
                }
                _ => {}
            }
        }
        entries.push((offset, time, payload));
    }
    Ok(entries)
}

fn bulk(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::Bulk(Some(bytes)) => Some(bytes),
        _ => None,
    }
}

impl BrokerThread {
    fn broker(&self) -> &Broker {
        self.shared.broker.as_ref().expect("the broker thread runs only in cluster mode")
    }

    fn config(&self) -> &ClusterConfig {
        &self.broker().config
    }

    fn run(mut self) {
        let broadcast = self.shared.channels.broadcast().clone();
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
            if self.stopping || self.shared.shutdown.load(Ordering::Acquire) {
                break;
            }
            self.timers();
            self.flush();
            if std::mem::take(&mut self.served) {
                self.broker().served_generation.fetch_add(1, Ordering::Release);
                self.shared.wake_all();
            } else if std::mem::take(&mut self.delivered) {
                self.shared.wake_others(usize::MAX);
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
            .chain(self.discover_at)
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
                    let slot = match self.slots {
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
                    self.discovering = false;
                    warn!("cluster: cannot read the slot map: {why}");
                    let delay = jittered(self.discover_backoff);
                    self.discover_backoff = (self.discover_backoff * 2).min(BACKOFF_MAX);
                    self.discover_at = Some(Instant::now() + delay);
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
        if self.slots.is_some() && now >= self.next_topology_check && self.discover_at.is_none() {
            let degraded = self.mapped_shards().any(|i| !self.shards[i].is_ready());
            self.next_topology_check =
                now + if degraded { TOPOLOGY_RETRY } else { TOPOLOGY_REFRESH };
            self.discover_at = Some(now);
        }
        if self.discover_at.is_some_and(|at| at <= now) && !self.discovering {
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
        match &self.slots {
            None => Some(super::shard_of(channel, self.shards.len())),
            Some(slots) => {
                let topic = Keys::new(&self.config().key_prefix, channel).topic;
                let shard = slots[usize::from(super::key_slot(&topic))];
                (shard != NO_SHARD).then_some(usize::from(shard))
            }
        }
    }

    /// The pub/sub commands: sharded ones in a Redis Cluster (each goes to one slot's master,
    /// never broadcast over the cluster bus).
    fn verbs(&self) -> Verbs {
        if self.slots.is_some() {
            Verbs { subscribe: b"SSUBSCRIBE", unsubscribe: b"SUNSUBSCRIBE", publish: b"SPUBLISH" }
        } else {
            Verbs { subscribe: b"SUBSCRIBE", unsubscribe: b"UNSUBSCRIBE", publish: b"PUBLISH" }
        }
    }

    /// Redis Cluster: reads the slot map from a seed (or a known master), adds a server for
    /// each new master, and moves every channel whose slot changed hands (it is subscribed
    /// again there and repaired from its stream). Called at start, after a MOVED, and after a
    /// master was lost (a replica may have taken over).
    /// Redis Cluster: reads the slot map on a helper thread, asking the masters that answer
    /// first, then the seeds, then the rest (a dead master last: never only it), so the broker
    /// never waits on a connect; the map comes back as `BrokerOp::SlotMap`.
    fn discover(&mut self) {
        self.discovering = true;
        self.discover_at = None;
        let mut candidates: Vec<RedisEndpoint> = Vec::new();
        let mut add = |endpoint: &RedisEndpoint| {
            if !candidates.iter().any(|c| c.host == endpoint.host && c.port == endpoint.port) {
                candidates.push(endpoint.clone());
            }
        };
        self.shards.iter().filter(|s| s.is_ready()).for_each(|s| add(&s.endpoint));
        self.config().redis.iter().for_each(&mut add);
        self.shards.iter().for_each(|s| add(&s.endpoint));
        let shared = self.shared.clone();
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
            if let Some(broker) = shared.broker.as_ref() {
                broker.send(BrokerOp::SlotMap(found.ok_or(why)));
            }
        });
        if let Err(e) = spawned {
            self.discovering = false;
            self.discover_at = Some(Instant::now() + BACKOFF_MAX);
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

    /// The shards the slot map names (masters that own slots).
    fn mapped_shards(&self) -> impl Iterator<Item = usize> + '_ {
        let mut mapped = vec![false; self.shards.len()];
        for &slot in self.slots.iter().flat_map(|s| s.iter()) {
            if let Some(m) = mapped.get_mut(usize::from(slot)) {
                *m = true;
            }
        }
        (0..self.shards.len()).filter(move |&i| mapped[i])
    }

    /// Redis Cluster: takes a slot map read by `discover`. Masters new to it are connected;
    /// servers it no longer names (a dead master, or one that came back as a replica after a
    /// failover) are let go of, neither counted nor probed nor reconnected; channels whose slot
    /// moved are served from their new master (subscribed again, repaired from the stream).
    fn apply_slot_map(&mut self, seed: RedisEndpoint, ranges: Vec<SlotRange>) {
        self.discovering = false;
        self.discover_at = None;
        self.discover_backoff = BACKOFF_MIN;
        let now = Instant::now();
        let mut slots = vec![NO_SHARD; SLOTS].into_boxed_slice();
        for (first, last, host, port) in ranges {
            let host = if host.is_empty() { seed.host.clone() } else { host };
            let i = match self
                .shards
                .iter()
                .position(|s| s.endpoint.host == host && s.endpoint.port == port)
            {
                Some(i) => i,
                None => {
                    let endpoint = RedisEndpoint { host, port, db: 0, ..seed.clone() };
                    self.shards.push(Shard::new(endpoint, Bytes::new(), now));
                    self.shards.len() - 1
                }
            };
            for slot in first..=last.min(SLOTS as u16 - 1) {
                slots[usize::from(slot)] = i as u16;
            }
        }
        // Each server's probe channel is one of its own slots.
        let id = String::from_utf8_lossy(&self.node_id).into_owned();
        let prefix = self.config().key_prefix.clone();
        for (i, shard) in self.shards.iter_mut().enumerate() {
            shard.probe_topic = (0u32..100_000)
                .map(|n| Bytes::from(format!("{prefix}:probe:{{{id}.{n}}}")))
                .find(|topic| slots[usize::from(super::key_slot(topic))] == i as u16)
                .unwrap_or_default();
        }
        self.slots = Some(slots);
        let mapped: Vec<usize> = self.mapped_shards().collect();
        for i in 0..self.shards.len() {
            if mapped.contains(&i) {
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
        if mapped.iter().any(|&i| !self.shards[i].is_ready()) {
            self.next_topology_check = now + TOPOLOGY_RETRY;
        }
        let masters = mapped.len();
        if masters != self.known_masters {
            info!("cluster: the Redis Cluster has {masters} master(s)");
            self.known_masters = masters;
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
        if let Some(slots) = &self.slots {
            let mapped = slots.iter().all(|&s| s != NO_SHARD);
            let ready = mapped
                && slots
                    .iter()
                    .all(|&s| self.shards.get(usize::from(s)).is_some_and(Shard::is_ready));
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
        let shared = self.shared.clone();
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
            if let Some(broker) = shared.broker.as_ref() {
                broker.send(BrokerOp::Resolved { shard: i, endpoint, result });
            }
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
        let max_bulk = self.shared.config.max_frame_bytes + 64 * 1024;
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
        let shared = self.shared.clone();
        let broker = shared.broker.as_ref().expect("cluster mode");
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
        if self.slots.is_some() && self.discover_at.is_none() {
            // A master that went away may have been replaced by one of its replicas.
            self.discover_at = Some(Instant::now() + BACKOFF_MIN);
            self.next_topology_check = Instant::now() + TOPOLOGY_RETRY;
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
        if self.leases.remove(&name).is_none() {
            return;
        }
        let Some(i) = self.shard_of_name(&name).filter(|&i| self.shards[i].is_ready()) else {
            return;
        };
        let key = self.lease_key(&name);
        let (sha, node_id) = (self.release.sha.clone(), self.node_id.clone());
        let Some(link) = self.shards[i].commands.as_mut() else { return };
        link.command(&[b"EVALSHA", sha.as_bytes(), b"1", &key, &node_id]);
        self.shards[i].pending.push_back((Instant::now(), Pending::Lease { name }));
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
        let names: Vec<Bytes> = self.leases.keys().cloned().collect();
        for name in names {
            let Some(i) = self.shard_of_name(&name).filter(|&i| self.shards[i].is_ready()) else {
                continue;
            };
            let key = self.lease_key(&name);
            let (sha, node_id) = (self.refresh.sha.clone(), self.node_id.clone());
            let Some(link) = self.shards[i].commands.as_mut() else { continue };
            link.command(&[b"EVALSHA", sha.as_bytes(), b"1", &key, &node_id, lease.as_bytes()]);
            self.shards[i].pending.push_back((Instant::now(), Pending::Lease { name }));
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
        if let Some(sender) = self.shared.ack_senders.get(worker) {
            if sender.send(answer).is_ok() {
                self.shared.wake(worker);
            }
        }
    }

    fn send_publish(&mut self, i: usize, batch: PublishBatch, eval: bool) {
        let prefix = self.config().key_prefix.clone();
        let ttl = self.config().key_ttl.as_millis().max(1).to_string();
        let keep = self.shared.config.history_messages.to_string();
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
        let registry = &self.shared.channels;
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
        let sharded = self.slots.is_some();
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
                let result = match reply {
                    Value::Simple(ok) if ok == "OK" => {
                        self.leases.insert(name.clone(), reply_to);
                        Ok(())
                    }
                    Value::Bulk(None) | Value::Null => {
                        let why = "name already in use (on another node)";
                        Err((ErrorCode::Conflict, why.into()))
                    }
                    other => {
                        let why = format!("broker refused the claim: {other:?}");
                        Err((ErrorCode::Unavailable, why.into()))
                    }
                };
                self.tell(reply_to.worker, Answer::NameClaim { target: reply_to, name, result });
            }
            Pending::Lease { name } => {
                if reply != Value::Integer(0) {
                    return;
                }
                if let Some(holder) = self.leases.remove(&name) {
                    self.broker().counters.leases_lost.fetch_add(1, Ordering::Relaxed);
                    warn!(
                        "cluster: the lease on name {} went to another node (Redis lost it, or it expired during an outage); its client here is told",
                        String::from_utf8_lossy(&name)
                    );
                    self.tell(holder.worker, Answer::NameLost { target: holder, name });
                }
            }
            Pending::Publish(batch) => {
                let counters = &self.broker().counters;
                match reply {
                    Value::Array(Some(mut answer))
                        if answer.len() == 2
                            && matches!(&answer[0], Value::Array(Some(f)) if f.len() == batch.channels.len()) =>
                    {
                        let epochs = match answer.pop() {
                            Some(Value::Array(Some(epochs))) => epochs,
                            _ => Vec::new(),
                        };
                        let Some(Value::Array(Some(firsts))) = answer.pop() else { return };
                        let count = batch.ops.len() as u64;
                        counters.publishes_in_flight.fetch_sub(count, Ordering::Relaxed);
                        let micros = sent.elapsed().as_micros() as u64;
                        counters.publishes_done.fetch_add(count, Ordering::Relaxed);
                        counters
                            .round_trip_micros_total
                            .fetch_add(micros * count, Ordering::Relaxed);
                        counters.round_trip_micros_max.fetch_max(micros, Ordering::Relaxed);
                        // Offsets in the order the publishes came, per channel: acknowledgements
                        // go out in that order too.
                        let mut next: Vec<Option<u64>> = firsts
                            .iter()
                            .map(|first| match first {
                                Value::Integer(first) if *first > 0 => Some(*first as u64),
                                _ => None,
                            })
                            .collect();
                        for (c, op) in &batch.ops {
                            match &mut next[*c] {
                                Some(offset) => {
                                    if op.acked {
                                        self.answer(op, *offset, Ok(()));
                                    } else {
                                        self.answered_quietly(op);
                                    }
                                    *offset += 1;
                                }
                                None => {
                                    let who =
                                        String::from_utf8_lossy(&op.channel[1..]).into_owned();
                                    let why = format!("no client named {who}");
                                    counters.publishes_done.fetch_sub(1, Ordering::Relaxed);
                                    self.answer(op, 0, Err((ErrorCode::NotFound, why.into())));
                                }
                            }
                        }
                        self.remember_acked(&batch, &next, &epochs);
                    }
                    // The script cache was flushed (SCRIPT FLUSH, a failover): send the body.
                    Value::Error(e) if e.starts_with("NOSCRIPT") => {
                        self.send_publish(i, batch, true)
                    }
                    Value::Error(e) if e.starts_with("MOVED") || e.starts_with("ASK") => {
                        self.slot_moved(&e);
                        let why: Arc<str> = "broker unavailable: the Redis Cluster moved this channel's slot; publish again".into();
                        self.refuse_batch(&batch, why);
                    }
                    other => {
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
        let shared = self.shared.clone();
        let Some(track) = self.patterns.get_mut(&glob) else { return };
        track.confirmed.insert(i);
        if track.confirmed.len() == shards {
            let broker = shared.broker.as_ref().expect("cluster mode");
            let mut served = broker.patterns.lock().unwrap_or_else(|p| p.into_inner());
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
        let channel = match self.shared.channels.get_or_create(name) {
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
            let broker = self.shared.broker.as_ref().expect("cluster mode");
            let mut served = broker.patterns.lock().unwrap_or_else(|p| p.into_inner());
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
        if self.slots.is_some() {
            self.discover_at = Some(Instant::now());
        }
    }

    /// Each channel of an answered publish batch that this node mirrors remembers the latest
    /// place Redis acknowledged (epoch, offset, message): Redis giving it out again later, or
    /// coming back without it, is then a rollback even if this node's log never held it.
    fn remember_acked(
        &mut self,
        batch: &PublishBatch,
        after_last: &[Option<u64>],
        epochs: &[Value],
    ) {
        let prefix = self.config().key_prefix.clone();
        for (c, channel) in batch.channels.iter().enumerate() {
            let (Some(next), Some(Value::Bulk(Some(epoch)))) = (after_last[c], epochs.get(c))
            else {
                continue;
            };
            let Ok(epoch) = <[u8; 8]>::try_from(epoch.as_slice()) else { continue };
            let members = &batch.members[c];
            // Only what a client was acknowledged: fire-and-forget publishes promise nothing
            // (and cost nothing here, not even the channel's lookup).
            if !members.iter().any(|&op| batch.ops[op].1.acked) {
                continue;
            }
            let topic = Keys::new(&prefix, channel).topic;
            let Some(tracked) = self.tracked.get_mut(&topic) else { continue };
            let epoch = u64::from_be_bytes(epoch);
            let first = next - members.len() as u64;
            let acked: Vec<Acked> = members
                .iter()
                .enumerate()
                .filter(|(_, &op)| batch.ops[op].1.acked)
                .map(|(k, &op)| Acked {
                    epoch,
                    offset: first + k as u64,
                    payload: batch.ops[op].1.payload.clone(),
                })
                .collect();
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
        let shared = self.shared.clone();
        let counters = &shared.broker.as_ref().expect("cluster mode").counters;
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
                        log.restart(epoch, &self.shared.channels.retained);
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

    /// Puts an item into the ring (a full ring is waited out, as in `accept`).
    fn put_in_ring(&mut self, channel: &Arc<Channel>, offset: u64, payload: Bytes) {
        loop {
            let message =
                Arc::new(Message { channel: channel.clone(), offset, payload: payload.clone() });
            if self.producer.try_publish(message).is_ok() {
                self.delivered = true;
                return;
            }
            if self.shared.shutdown.load(Ordering::Acquire) {
                return;
            }
            self.shared.wake_others(usize::MAX);
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// Appends message `offset` to the channel's log and, for live subscribers, puts it into the
    /// ring, under the log's lock as a publisher on one node does. A full ring is waited out
    /// with the lock released (workers take it while they replay).
    fn accept(
        &mut self,
        channel: &Arc<Channel>,
        offset: u64,
        payload: Bytes,
        published_ms: u64,
        to_ring: bool,
    ) {
        let registry = &self.shared.channels;
        loop {
            let mut log = channel.lock_log();
            if to_ring {
                let message = Arc::new(Message {
                    channel: channel.clone(),
                    offset,
                    payload: payload.clone(),
                });
                if self.producer.try_publish(message).is_err() {
                    drop(log);
                    if self.shared.shutdown.load(Ordering::Acquire) {
                        return;
                    }
                    self.shared.wake_others(usize::MAX);
                    std::thread::sleep(Duration::from_micros(50));
                    continue;
                }
                self.delivered = true;
            }
            log.next_offset = offset + 1;
            if registry.history.messages > 0 {
                let entry = Retained { offset, published_ms, payload };
                registry.retain(channel, &mut log, entry);
            }
            drop(log);
            registry.after_publish();
            return;
        }
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
    fn sync_replies_parse() {
        let entry = |offset: &str, payload: &[u8]| {
            Value::Array(Some(vec![
                Value::Bulk(Some(offset.as_bytes().to_vec())),
                Value::Array(Some(vec![
                    Value::Bulk(Some(b"p".to_vec())),
                    Value::Bulk(Some(payload.to_vec())),
                    Value::Bulk(Some(b"t".to_vec())),
                    Value::Bulk(Some(b"1700".to_vec())),
                ])),
            ]))
        };
        let reply = Value::Array(Some(vec![
            Value::Bulk(Some(7u64.to_be_bytes().to_vec())),
            Value::Integer(9),
            Value::Array(Some(vec![entry("0-8", b"eight"), entry("0-9", b"nine")])),
        ]));
        let (epoch, last, entries) = parse_sync(reply).unwrap();
        assert_eq!((epoch, last), (7, 9));
        assert_eq!(
            entries,
            vec![(8, 1700, Bytes::from_static(b"eight")), (9, 1700, Bytes::from_static(b"nine"))]
        );
        assert!(parse_sync(Value::Integer(1)).is_err());
        let bad_id = Value::Array(Some(vec![
            Value::Bulk(Some(7u64.to_be_bytes().to_vec())),
            Value::Integer(9),
            Value::Array(Some(vec![entry("1-8", b"x")])),
        ]));
        assert!(parse_sync(bad_id).is_err());
    }

    #[test]
    fn patterns_become_redis_globs_that_cover_them() {
        assert_eq!(redis_glob("fanout", b"room.*"), b"fanout:{room.*}");
        assert_eq!(redis_glob("fanout", b"orders.>"), b"fanout:{orders.*}");
        assert_eq!(redis_glob("fanout", b"*.eu.*"), b"fanout:{*.eu.*}");
        assert_eq!(redis_glob("f?x", b"a[1].*"), b"f\\?x:{a\\[1\\].*}");
    }

    #[test]
    fn scripts_are_named_by_their_sha1() {
        let script = Script::new("return 1");
        assert_eq!(script.sha, "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
    }

    #[test]
    fn answers_go_back_in_each_connections_publish_order() {
        let target = |key| AckTarget { worker: 0, key, serial: 1 };
        let answer = |key, offset| Persisted {
            target: target(key),
            channel: Bytes::from_static(b"c"),
            offset,
            result: Ok(()),
        };
        let mut order = AnswerOrder::default();
        let (a1, a2, a3) = (order.enter(target(1)), order.enter(target(1)), order.enter(target(1)));
        let b1 = order.enter(target(2));
        // Another connection is not held up by this one's.
        assert_eq!(order.settle(target(2), b1, Some(answer(2, 9))).len(), 1);
        assert!(order.settle(target(1), a3, Some(answer(1, 3))).is_empty(), "waits for a1, a2");
        assert!(order.settle(target(1), a2, None).is_empty(), "a quiet one still waits for a1");
        let due: Vec<u64> =
            order.settle(target(1), a1, Some(answer(1, 1))).iter().map(|p| p.offset).collect();
        assert_eq!(due, [1, 3]);
        assert!(order.waiting.is_empty(), "nothing left held");
    }

    #[test]
    fn jitter_stays_within_half_either_side() {
        for _ in 0..100 {
            let d = jittered(Duration::from_millis(1000));
            assert!(d >= Duration::from_millis(500) && d <= Duration::from_millis(1500));
        }
    }
}
