//! The server: N pinned workers around one broadcast ring.
//!
//! ```text
//!   SO_REUSEPORT listener per worker (the kernel spreads accepts)
//!        |                      |
//!   worker 0 (mio Poll)    worker 1 ...          each: Slab<Conn>, local Index
//!     | PUB: claim offset, try_publish           (channel -> its own subscribers)
//!     v                         ^ poll from own cursor, batch per channel,
//!   ===== Ring<Arc<Message>> ===== encode once per format, push to queues, writev
//!     ^ then wake the other workers (coalescing mio::Waker)
//! ```
//!
//! `Shared` is everything the workers share: configuration, channel and name registries,
//! counters, wakers and the shutdown protocol. Nothing in it is touched per subscriber.

pub mod channels;
pub mod conn;
pub mod histogram;
pub mod index;
mod info;
pub mod patterns;
mod policy;
pub mod presence;
pub mod retention;
pub mod ring;
pub mod session;
mod start;
pub mod stats;
mod worker;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use log::{debug, info, warn};
use mio::Waker;

use self::channels::{ChannelRegistry, Message, NameRegistry};
use self::ring::CachePadded;
use self::stats::{Stats, WorkerCounters};
use crate::config::Config;
use crate::history::disk::{self, Faults, PublishOutcome, StorageCounters, StorageHealth, StoreOp};

/// The ring carries shared messages.
pub type Item = Arc<Message>;

/// What the storage and broker threads tell a worker about one of its connections.
#[derive(Debug)]
pub(crate) enum Answer {
    /// An acknowledged publish is durable (storage) or was carried out by Redis (cluster), or
    /// it could not be (then the publisher is told why).
    Published(PublishOutcome),
    /// Cluster mode: the stream's messages a resume asked for (none when Redis could not say).
    /// `Err`: the stream could not be read now (Redis unreachable, or an error): the resume is
    /// refused with 503, to be tried again, never told `expired` for what Redis may still hold.
    Backfill { target: disk::ReplyTo, entries: Result<Vec<crate::history::Retained>, Arc<str>> },
    /// Cluster mode: Redis granted a name claim, or refused it.
    NameClaim {
        target: disk::ReplyTo,
        name: bytes::Bytes,
        result: Result<(), (crate::protocol::ErrorCode, Arc<str>)>,
    },
    /// The server API acts on connections (disconnect a user, take a user out of a channel):
    /// every worker of every node is told.
    Control(Arc<Control>),
    /// An answer computed elsewhere (the broker, from Redis): the whole frame to queue to the
    /// connection, whose input waits for it (`Wait::Reply`).
    Reply {
        target: disk::ReplyTo,
        frame: bytes::Bytes,
        /// A presence answer's channel and the number of its node's last join or leave it
        /// shows (`Presence::members_at`): the member that asked is sent what follows.
        as_of: Option<(bytes::Bytes, u64)>,
    },
    /// Cluster mode: the name's lease went to another node (Redis lost it, and another client
    /// claimed the name before this node could reclaim it): the connection no longer holds it.
    NameLost { target: disk::ReplyTo, name: bytes::Bytes },
}

/// What the server API does to connections, on every worker of every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Control {
    /// Close every connection of `user`, saying `reason`; with `revoke_before_ms`, refuse that
    /// user's tokens issued before then (Unix ms).
    Disconnect { user: Box<str>, reason: Box<str>, revoke_before_ms: Option<u64> },
    /// Take every connection of `user` out of `channel`, telling it `reason`.
    Unsubscribe { user: Box<str>, channel: bytes::Bytes, reason: Box<str> },
}

impl From<PublishOutcome> for Answer {
    fn from(outcome: PublishOutcome) -> Self {
        Answer::Published(outcome)
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A configuration value is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Binding or listening failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// Something already listens on the address (SO_REUSEPORT would otherwise let a second
    /// server bind it too and silently split the clients between two unrelated servers).
    #[error("{0} is already in use (is another fanout running there?)")]
    AddressInUse(SocketAddr),
    /// A non-loopback address with no access control: anyone who reaches it could subscribe,
    /// publish and broadcast. Refused unless `--allow-anonymous` says that is intended.
    #[error("refusing to serve {0} without access control: anyone who can reach it could read, publish and broadcast. Pass --auth-secret-file or --auth-public-key-file (signed tokens), --api-key-file, --anonymous-sub/--anonymous-pub (open some channels), or --allow-anonymous to accept the risk")]
    Unprotected(SocketAddr),
    /// The access-control configuration is unusable (a key that does not parse, a bad pattern).
    #[error("access control: {0}")]
    Auth(#[from] crate::auth::AuthConfigError),
    /// epoll or eventfd creation failed.
    #[error("cannot create the event loop: {0}")]
    Poll(#[source] io::Error),
    /// A worker thread could not be spawned.
    #[error("cannot spawn a worker thread: {0}")]
    Spawn(#[source] io::Error),
}

/// Why a reload was refused (the running configuration stays whole).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// A key does not parse, a pattern is bad.
    #[error("access control: {0}")]
    Auth(#[from] crate::auth::AuthConfigError),
    /// Access control was on and would be off, or the reverse: connections admitted under one
    /// have no permissions (or all of them) under the other.
    #[error("access control cannot be turned {0} without a restart")]
    AccessControlSwitch(&'static str),
    /// TLS was on and would be off, or the reverse.
    #[error("TLS cannot be turned {0} without a restart")]
    TlsSwitch(&'static str),
}

/// Wakes one worker; coalesces: only the first wake after the worker last looked costs a syscall.
#[derive(Debug)]
struct WakeSignal {
    waker: Waker,
    /// Set by a waker before waking, swapped back to false by the worker before it drains the
    /// ring. A producer that finds it already set skips the syscall: the worker has a wake-up
    /// pending, and its swap (AcqRel, after our Release publish) makes our message visible to the
    /// drain that follows. So no publish is ever left unseen.
    pending: CachePadded<AtomicBool>,
}

/// State shared by all workers.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) channels: ChannelRegistry,
    names: NameRegistry,
    /// Every pattern subscription on the node (Redis clients' PUBLISH counts them).
    pattern_census: patterns::PatternCensus,
    open_connections: AtomicUsize,
    counters: Box<[CachePadded<WorkerCounters>]>,
    /// Each worker's latency histograms (written by it alone).
    pub(crate) histograms: Box<[CachePadded<histogram::WorkerHistograms>]>,
    signals: Box<[WakeSignal]>,
    pub(crate) shutdown: AtomicBool,
    /// Workers that have stopped reading input during shutdown; when it equals the worker count,
    /// nothing more will be published and each worker can finish draining the ring.
    quiesced: AtomicUsize,
    started: Instant,
    /// Wall-clock milliseconds at `started` (history timestamps are this plus the worker clock).
    started_wall_ms: u64,
    /// The storage thread's queue, with `--data-dir`.
    storage: Option<StorageQueue>,
    /// Per worker: where the storage thread (and the broker) send acknowledgements once records
    /// are durable (or published through Redis).
    pub(crate) ack_senders: Vec<crossbeam_channel::Sender<Answer>>,
    /// Cluster mode: the way to the broker thread, which publishes through Redis.
    pub(crate) broker: Option<crate::cluster::Broker>,
    /// Access control, limits and origins: what a reload may change (`policy.rs`).
    policy: policy::CurrentPolicy,
    /// Open connections per source address, while that limit is on.
    per_ip: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, u32>>,
    /// This node's name (presence's `node`, `/api/info`).
    pub(crate) node: Arc<str>,
    /// This run of this node: its name and a random part when the name was given (a node
    /// restarted under its name, or two given one name, are different runs). Client ids and the
    /// node's entries in Redis are keyed by it, so they are never mistaken for another run's.
    pub(crate) node_key: Arc<str>,
    /// Members of the channels with presence (`None`: no `--presence` or `--join-leave`).
    pub(crate) presence: Option<presence::Presence>,
    /// When `top_channels` last sampled the channels' offsets (their rates are since then).
    top_sampled_at: std::sync::Mutex<Option<Instant>>,
    /// Revoked users: tokens of the user issued before the first time (Unix ms) are refused
    /// until the second.
    pub(crate) revoked: std::sync::Mutex<std::collections::HashMap<Box<str>, (u64, u64)>>,
}

/// The way into the storage thread.
#[derive(Debug)]
pub(crate) struct StorageQueue {
    sender: crossbeam_channel::Sender<StoreOp>,
    /// Appends sent and not yet written; publishing pauses past `MAX_STORAGE_BACKLOG`.
    depth: AtomicU64,
    /// Acknowledgements wait for fsync.
    fsync_always: bool,
    counters: Arc<StorageCounters>,
    /// Channels whose storage is failing (acknowledged publishes to them are refused).
    health: Arc<StorageHealth>,
    /// Injected storage faults (tests).
    faults: Arc<Faults>,
    /// The data directory's lock, held while the server runs.
    _lock: disk::DirLock,
}

/// Appends the storage thread may be behind before publishers are paused (as for a full ring).
/// It also bounds how many delivered messages a crash can lose from disk, which is the offset gap
/// left after an unclean restart (see `history::disk::recover`).
pub(crate) const MAX_STORAGE_BACKLOG: u64 = 65_536;

/// The broker thread's handle on the server: what it may do to it, and nothing more. It puts
/// messages into the ring through its own producer and `ChannelRegistry::append`, answers a
/// worker, wakes workers, and looks channels up; it never sees connections, workers' state or
/// the rest of `Shared`.
#[derive(Clone)]
pub(crate) struct ServerForBroker {
    shared: Arc<Shared>,
}

impl ServerForBroker {
    /// The handle, in cluster mode only (`None` without a broker).
    pub(crate) fn new(shared: Arc<Shared>) -> Option<ServerForBroker> {
        shared.broker.is_some().then_some(ServerForBroker { shared })
    }

    /// `Shared::clock_ns`: when a message from Redis entered the node.
    pub(crate) fn clock_ns(&self) -> u64 {
        self.shared.clock_ns()
    }

    /// The workers' side of the broker: its counters, configuration and queue.
    pub(crate) fn broker(&self) -> &crate::cluster::Broker {
        match self.shared.broker.as_ref() {
            Some(broker) => broker,
            // `new` makes a handle only when there is a broker, and `Shared` never loses it.
            None => unreachable!("a ServerForBroker exists only in cluster mode"),
        }
    }

    pub(crate) fn channels(&self) -> &ChannelRegistry {
        &self.shared.channels
    }

    /// Hands `answer` to worker `worker` and wakes it.
    pub(crate) fn answer(&self, worker: usize, answer: Answer) {
        if let Some(sender) = self.shared.ack_senders.get(worker) {
            if sender.send(answer).is_ok() {
                self.shared.wake(worker);
            }
        }
    }

    /// Wakes every worker: to read the ring, and (`served`) to look at their waiting joins.
    pub(crate) fn wake_workers(&self, served: bool) {
        match served {
            true => self.shared.wake_all(),
            false => self.shared.wake_others(usize::MAX),
        }
    }

    pub(crate) fn shutting_down(&self) -> bool {
        self.shared.shutdown.load(Ordering::Acquire)
    }

    /// `--multicast`: an edge listens to the group.
    pub(crate) fn multicast(&self) -> Option<crate::cluster::MulticastConfig> {
        self.shared.config.multicast
    }

    /// The largest frame a client may send (a Redis reply carrying one is read whole).
    pub(crate) fn max_frame_bytes(&self) -> usize {
        self.shared.config.max_frame_bytes
    }

    /// Messages a channel's stream keeps in Redis: the most any channel keeps (one length for
    /// every channel of a publish script; a namespace that keeps fewer trims what nodes hold).
    pub(crate) fn history_messages(&self) -> usize {
        self.shared.channels.namespaces.most_history_messages(self.shared.config.history_messages)
    }

    /// This node's name, as shown (surveys' answers).
    pub(crate) fn node_name(&self) -> &Arc<str> {
        &self.shared.node
    }

    /// This run of this node (`Shared::node_key`): its entries in Redis, its control messages.
    pub(crate) fn node_key(&self) -> &Arc<str> {
        &self.shared.node_key
    }

    /// The members this node tracks (`None`: no presence configured).
    pub(crate) fn presence(&self) -> Option<&presence::Presence> {
        self.shared.presence.as_ref()
    }

    /// A server API action from another node, for every worker here.
    pub(crate) fn control(&self, control: Control) {
        self.shared.control(control);
    }

    /// See `Shared::channels_json`.
    pub(crate) fn channels_json(
        &self,
        pattern: Option<&crate::auth::Pattern>,
    ) -> serde_json::Value {
        self.shared.channels_json(pattern)
    }

    /// See `Shared::info_json`.
    pub(crate) fn info_json(&self, top: usize) -> serde_json::Value {
        self.shared.info_json(top)
    }
}

impl Shared {
    /// Hands a server API action to every worker of this node. A revocation is in force before
    /// any worker acts (a client reconnecting at once, on any worker, is refused).
    pub(crate) fn control(&self, control: Control) {
        if let Control::Disconnect { user, revoke_before_ms: Some(before), .. } = &control {
            let now = crate::auth::unix_now_ms();
            let until = now + self.config.revocation_ttl.as_millis() as u64;
            let mut revoked = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
            revoked.retain(|_, (_, until)| *until > now);
            revoked.insert(user.clone(), (*before, until));
        }
        let control = Arc::new(control);
        for (worker, sender) in self.ack_senders.iter().enumerate() {
            if sender.send(Answer::Control(control.clone())).is_ok() {
                self.wake(worker);
            }
        }
    }

    /// The broker, when it carries presence and the server API to every node (through Redis);
    /// `None` on one node and on an edge, where they are this node's own.
    pub(crate) fn redis_broker(&self) -> Option<&crate::cluster::Broker> {
        self.broker.as_ref().filter(|broker| broker.through_redis())
    }

    /// Wakes one worker (a publish, an answer or an acknowledgement is waiting for it),
    /// coalesced: the broker answers every publish, and an eventfd write per answer cost the
    /// worker a turn and both threads a syscall each.
    pub(crate) fn wake(&self, worker: usize) {
        let signal = &self.signals[worker];
        if !signal.pending.swap(true, Ordering::AcqRel) {
            if let Err(e) = signal.waker.wake() {
                warn!("cannot wake worker {worker}: {e}");
            }
        }
    }

    /// Shutting down, and every worker has stopped reading input: nothing more is published.
    pub(crate) fn publishing_stopped(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
            && self.quiesced.load(Ordering::Acquire) == self.config.workers
    }

    /// Wakes every worker but `me` (`usize::MAX`: every worker) after a publish.
    pub(crate) fn wake_others(&self, me: usize) {
        for worker in (0..self.signals.len()).filter(|&i| i != me) {
            self.wake(worker);
        }
    }

    /// The latency histograms, summed over workers now.
    pub(crate) fn latency(&self) -> histogram::Latency {
        let mut latency = histogram::Latency::default();
        for worker in self.histograms.iter() {
            latency.absorb(worker);
        }
        latency.redis_round_trip = self.broker.as_ref().map(|b| b.counters.round_trip.snapshot());
        latency
    }

    /// Nanoseconds since the server started: the one clock of the latency histograms.
    pub(crate) fn clock_ns(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    pub(crate) fn wake_all(&self) {
        for signal in self.signals.iter() {
            signal.pending.store(true, Ordering::Release);
            if let Err(e) = signal.waker.wake() {
                warn!("cannot wake a worker: {e}");
            }
        }
    }

    fn stats(&self) -> Stats {
        let mut total = Stats::default();
        for counters in self.counters.iter() {
            total.absorb(counters);
        }
        let (retained_bytes, retained_messages) = self.channels.retention.sum();
        (total.retained_bytes, total.retained_messages) =
            (retained_bytes as u64, retained_messages as u64);
        if let Some(storage) = &self.storage {
            let c = &storage.counters;
            total.records_written = c.records_written.load(Ordering::Relaxed);
            total.segments_written = c.segments_written.load(Ordering::Relaxed);
            total.segments_deleted = c.segments_deleted.load(Ordering::Relaxed);
            total.fsyncs = c.fsyncs.load(Ordering::Relaxed);
            total.fsync_micros_total = c.fsync_micros_total.load(Ordering::Relaxed);
            total.fsync_micros_max = c.fsync_micros_max.load(Ordering::Relaxed);
            total.storage_errors = c.errors.load(Ordering::Relaxed);
            total.storage_acks_refused = c.acks_refused.load(Ordering::Relaxed);
            total.storage_failed_channels = storage.health.failed_channels() as u64;
        }
        if let Some(broker) = &self.broker {
            let c = &broker.counters;
            let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
            total.cluster_redis_up = get(&c.shards_up);
            total.cluster_reconnects = get(&c.reconnects);
            total.cluster_publishes_in_flight = get(&c.publishes_in_flight);
            total.cluster_publishes_done = get(&c.publishes_done);
            total.cluster_round_trip_micros_total = get(&c.round_trip_micros_total);
            total.cluster_round_trip_micros_max = get(&c.round_trip_micros_max);
            total.cluster_publishes_refused = get(&c.publishes_refused);
            total.cluster_messages_received = get(&c.messages_received);
            total.cluster_gaps_repaired = get(&c.gaps_repaired);
            total.cluster_offsets_lost = get(&c.offsets_lost);
            total.cluster_epoch_changes = get(&c.epoch_changes);
            total.cluster_channels_served = get(&c.channels_served);
            total.cluster_timeouts = get(&c.timeouts);
            total.cluster_probe_failures = get(&c.probe_failures);
            total.cluster_leases_lost = get(&c.leases_lost);
            total.cluster_quiet_losses = get(&c.quiet_losses);
            total.cluster_sync_failures = get(&c.sync_failures);
            total.cluster_rollbacks = get(&c.rollbacks);
            total.cluster_multicast_messages = get(&c.multicast_messages);
            total.cluster_multicast_repairs = get(&c.multicast_repairs);
            total.cluster_multicast_malformed = get(&c.multicast_malformed);
        }
        total
    }
}

/// A running server. Dropping it shuts the server down (see `shutdown`).
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    storage: Option<JoinHandle<()>>,
    broker: Option<JoinHandle<()>>,
}

/// Entry point.
#[derive(Debug)]
pub struct Server;

impl ServerHandle {
    /// The address the server listens on (with the real port when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Takes what may change while connections stay from `config` (the rest of it is ignored):
    /// token keys, the API key, anonymous patterns, token limits, abuse limits, allowed origins,
    /// TLS certificates (not namespaces, whose history limits channels took when created). New connections and new tokens meet the new policy at once; a
    /// connection keeps the permissions it was granted until its token expires. On error
    /// nothing changes.
    pub fn reload(&self, config: &Config) -> Result<(), ReloadError> {
        let policy = policy::Policy::from_config(config, &self.shared.config.namespaces)?;
        let (current, _) = self.shared.policy.get();
        match (current.auth.is_some(), policy.auth.is_some()) {
            (true, false) => return Err(ReloadError::AccessControlSwitch("off")),
            (false, true) => return Err(ReloadError::AccessControlSwitch("on")),
            _ => {}
        }
        match (&self.shared.config.tls, &config.tls) {
            (Some(running), Some(new)) => running.take_certificates(new),
            (None, None) => {}
            (Some(_), None) => return Err(ReloadError::TlsSwitch("off")),
            (None, Some(_)) => return Err(ReloadError::TlsSwitch("on")),
        }
        self.shared.policy.replace(policy);
        Ok(())
    }

    /// The latency histograms, summed over workers now.
    pub fn latency(&self) -> histogram::Latency {
        self.shared.latency()
    }

    /// The counters, summed over workers now.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Each worker's counters, in worker order (tests use it to see where connections landed).
    pub fn worker_stats(&self) -> Vec<Stats> {
        self.shared
            .counters
            .iter()
            .map(|counters| {
                let mut stats = Stats::default();
                stats.absorb(counters);
                stats
            })
            .collect()
    }

    /// The storage fault injector (with `--data-dir`), for tests of storage failures.
    pub fn storage_faults(&self) -> Option<Arc<Faults>> {
        self.shared.storage.as_ref().map(|s| s.faults.clone())
    }

    /// Number of channels that exist (`*` included).
    pub fn channel_count(&self) -> usize {
        self.shared.channels.len()
    }

    /// Stops accepting, stops reading, delivers every message already published, flushes write
    /// queues within `shutdown_grace`, closes every connection and joins the workers.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        if let (Some(broker), Some(_)) = (&self.shared.broker, &self.shared.presence) {
            // While every connection is still open: this node's members leave the cluster's
            // presence now, with their leaves announced, instead of expiring a TTL later.
            let (done, left) = crossbeam_channel::bounded(1);
            broker.send(crate::cluster::BrokerOp::Leave(done));
            if left.recv_timeout(std::time::Duration::from_secs(1)).is_err() {
                warn!("the broker did not take this node's members out of presence in time");
            }
        }
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.wake_all();
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                warn!("a worker panicked during shutdown");
            }
        }
        if let (Some(broker), Some(thread)) = (&self.shared.broker, self.broker.take()) {
            broker.send(crate::cluster::BrokerOp::Shutdown);
            if thread.join().is_err() {
                warn!("the broker thread panicked during shutdown");
            }
        }
        if let (Some(queue), Some(thread)) = (&self.shared.storage, self.storage.take()) {
            let _ = queue.sender.send(StoreOp::Shutdown);
            if thread.join().is_err() {
                warn!("the storage thread panicked during shutdown");
            }
            if let Some(dir) = &self.shared.config.data_dir {
                disk::mark_clean(dir);
            }
        }
        let stats = self.stats();
        info!("shut down after {:.1?}: {}", self.shared.started.elapsed(), stats.summary());
        debug!("at shutdown (all): {stats}");
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}
