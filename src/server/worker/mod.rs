//! One reactor thread: a mio `Poll`, its own SO_REUSEPORT listener, a slab of connections, the
//! local subscription index, and a cursor into the broadcast ring.
//!
//! A message's path, top to bottom, one file per step:
//! - `input`: bytes arrive on a connection; its format turns them into commands (`web` does the
//!   same for HTTP, WebSocket and event streams);
//! - `commands`: each command is checked (names, limits, and the connection's permissions, in
//!   `access`) and acted on; a publish goes to
//! - `publish`: the publisher gives the message its channel offset, retains it, and puts it into
//!   the ring (it knows channels, never connections);
//! - `fanout`: every worker drains the ring, gathers each channel's messages into one frame per
//!   format, and queues it to the channel's local subscribers;
//! - `outbox`: queues are written out with writev, coalesced, and capped (slow consumers);
//! - `replay`: a resuming subscriber gets history first, then joins the live path;
//! - `lifecycle`: a connection's life: accepted, closed (in one place), watched by timers; and
//!   the worker's shutdown. Its module doc draws a connection's states and numbers the
//!   invariants each transition keeps.
//!
//! Each turn of `run`:
//! 1. poll (timeout 0 when work is left over, else until the next deadline or housekeeping tick);
//! 2. dispatch events flat by token: listener, waker, or a connection (writable, then readable);
//! 3. accept up to `ACCEPT_BATCH`, read each ready connection up to `READ_BUDGET_BYTES` (a busy
//!    client cannot starve the others; leftovers wait in `pending_reads`), retry publishes that
//!    found the ring full, resume input that waited;
//! 4. wake the other workers once if this turn published anything;
//! 5. drain the ring from our cursor, batching frames per channel, and queue them to local
//!    subscribers (one `Bytes` per subscriber per channel per turn);
//! 6. flush every connection that got new frames with writev; continue replays that drained;
//! 7. fire the connections' deadlines that came due (`timers`: keepalive pings, stale and
//!    lingering connections, long-poll, head, handshake and authentication deadlines), a budget
//!    per turn; every `HOUSEKEEPING_MS`, start the worker's chores (stats, channel sweeps);
//! 8. a budget's worth of any sweep under way (unused channels, a shard of the registry at a
//!    time) and of retention (`server::retention`: the server-wide cap, compaction).
//!
//! Every step that acts for one connection returns `Result<_, Close>`; the step's caller at the
//! top of the loop hands an `Err` to `close_on_error`, the only way a connection closes. A connection
//! therefore exists for the whole of any handler, and nothing looks it up again after a call.
//! Work noted for later (the side lists) names connections by `ConnRef`, key and serial, so that
//! a slab key reused by a new connection never receives an old one's work.

mod access;
mod cache;
mod commands;
mod fanout;
mod input;
mod lifecycle;
mod outbox;
mod presence;
pub(in crate::server) mod publish;
mod replay;
mod resp;
mod timers;
mod web;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use log::{debug, error, info};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use self::fanout::Batches;
use self::lifecycle::{Close, RunState};
use self::outbox::Outbox;
use self::publish::Publisher;
use super::conn::Conn;
use super::index::Index;
use super::patterns::PatternIndex;
use super::retention::Appender;
use super::ring::{Consumer, Producer};
use super::stats::WorkerCounters;
use super::{Item, Shared};
use crate::history::Retained;

/// This worker's listener.
pub(super) const LISTENER: Token = Token(usize::MAX - 1);
/// The cross-worker waker.
pub(super) const WAKER: Token = Token(usize::MAX);

/// The period of the worker's own chores (stats, sweeps); also how long an idle queue keeps its
/// memory, and the longest a turn's poll sleeps.
const HOUSEKEEPING_MS: u32 = 250;
/// How often a sweep for unused channels begins (and at the channel limit, at once).
const CHANNEL_SWEEP_MS: u32 = 10_000;
/// Cluster mode: how often a worker lets go of cached channels nobody on it reads.
const CACHE_SWEEP_MS: u32 = 1_000;
/// Poll timeout while a publish waits for ring room.
const STALL_RETRY: Duration = Duration::from_millis(1);

/// `now >= deadline` on a wrapping millisecond clock (valid for spans under ~24 days).
fn reached(now_ms: u32, deadline_ms: u32) -> bool {
    now_ms.wrapping_sub(deadline_ms) < u32::MAX / 2
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// A connection as a side list notes it: its slab key and its serial. Resolved with
/// `Worker::resolve`, which finds nothing once that connection is gone, even when a new one
/// took its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ConnRef {
    key: usize,
    serial: u32,
}

impl ConnRef {
    fn of(key: usize, conn: &Conn) -> Self {
        ConnRef { key, serial: conn.serial }
    }
}

/// One event loop; see the module doc.
pub(super) struct Worker {
    id: usize,
    poll: Poll,
    listener: Option<TcpListener>,
    /// Listener readiness not yet exhausted by a WouldBlock accept (edge-triggered).
    listener_ready: bool,
    /// Accepting is paused until then (after EMFILE/ENFILE) so that we do not spin.
    accept_paused_until_ms: Option<u32>,
    conns: Slab<Conn>,
    index: Index,
    /// Wildcard subscriptions and which channels they match.
    patterns: PatternIndex,
    /// Gives messages their offsets and puts them into the ring.
    publisher: Publisher,
    consumer: Consumer<Item>,
    shared: Arc<Shared>,
    /// Acknowledgements of durable appends, from the storage thread.
    acks: crossbeam_channel::Receiver<super::Answer>,
    /// Serial number of the last accepted connection.
    next_serial: u32,
    /// Every read lands here first; only an incomplete frame is copied into the connection.
    scratch: Vec<u8>,
    /// TLS: what a read decrypted to (then parsed like a plaintext read).
    decrypted: Vec<u8>,
    /// TLS: a batch of queued bytes on their way out, and the batch encrypted
    /// (`Conn::write_out`).
    tls_scratch: (Vec<u8>, Vec<u8>),
    /// The most unparsed input any connection of this worker has held (a gauge: the input
    /// budgets' proof in production, and what the connection fuzz target checks).
    input_high_water: usize,
    /// Frames queued this turn: who to flush, who to cut off, and the byte gauges.
    out: Outbox,
    /// Connections whose replay from history can continue (their queue drained).
    replaying: Vec<ConnRef>,
    /// Scratch for one page of a replay.
    replay_page: Vec<Retained>,
    /// Connections with queued frames held back by write coalescing (`Config::coalesce`).
    deferred: Vec<ConnRef>,
    /// Milliseconds until the first held-back connection is due.
    deferred_due_ms: Option<u32>,
    /// Connections that used their read budget with input left.
    pending_reads: VecDeque<ConnRef>,
    /// Connections whose publish waits for ring room.
    stalled: Vec<ConnRef>,
    /// Cluster mode: connections whose subscribe waits for its channel to be served here.
    joining: Vec<ConnRef>,
    /// The broker's `served_generation` when `joining` was last looked at.
    served_generation_seen: u64,
    /// Cluster mode: resumes waiting for this node to reach their offset (`Wait::CatchUp`).
    catching_up: Vec<ConnRef>,
    /// Connections whose wait (a long-poll, a durable acknowledgement) ended: their held input is
    /// processed next turn.
    unblocked: Vec<ConnRef>,
    /// Event streams whose cursor event is due at the end of this turn.
    sse_cursors_due: Vec<ConnRef>,
    /// Scratch for `fan_out`: the event streams a batch went to (within one call).
    delivered_streams: Vec<usize>,
    /// Channels this worker has used, so that publishing does not take the registry lock.
    channel_cache: cache::ChannelCache,
    /// Shards of the registry the sweep under way has still to look at (`start_sweep`).
    registry_shards_left: usize,
    /// The registry's `cache_pressure` when this worker last let go of its cache for it.
    cache_pressure_seen: u64,
    /// The drain's per-channel batches.
    batches: Batches,
    /// Joins and leaves of this worker's connections not sent yet (`server::presence`).
    presence_out: crate::server::presence::Outbox,
    /// (channel id, connection) -> the seq of the connection's own join, for members of
    /// channels with join/leave events: this node's events with a lower seq happened before it
    /// subscribed, and are not sent to it (a window's batch would otherwise bring them).
    presence_since: HashMap<(u64, usize), u64>,
    /// How many of `presence_since`'s entries each channel has: its batches keep their items,
    /// from which a member's own frame is encoded when the shared one cannot be cut for it.
    presence_since_channels: HashMap<u64, u32>,
    /// Milliseconds since the server started (wrapping).
    now_ms: u32,
    next_housekeeping_ms: u32,
    /// Every connection's next deadline (`timers`).
    timers: timers::TimerWheel,
    /// Scratch for the entries a turn fires.
    timers_due: Vec<(ConnRef, u32)>,
    next_stats_ms: u32,
    /// When unused channels are next let go of (`sweep_channels`).
    next_sweep_ms: u32,
    /// Cluster mode: when this worker next lets go of cached channels it does not read.
    next_cache_sweep_ms: u32,
    state: RunState,
    /// This turn's batches delivered, for the latency histogram once they are written: when the
    /// oldest message of each entered the node, and its deliveries per format.
    delivered_latency: Vec<(u64, [u64; crate::protocol::Format::COUNT])>,
    /// Access control and limits as of `policy_generation` (see `policy.rs`).
    policy: Arc<super::policy::Policy>,
    policy_generation: u64,
}

impl Worker {
    pub(super) fn new(
        id: usize,
        poll: Poll,
        listener: std::net::TcpListener,
        producer: Producer<Item>,
        consumer: Consumer<Item>,
        acks: crossbeam_channel::Receiver<super::Answer>,
        shared: Arc<Shared>,
    ) -> io::Result<Self> {
        let mut listener = TcpListener::from_std(listener);
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        // Reserve the whole slab up front: untouched capacity costs address space, not memory,
        // while growing by doubling would copy it and leave the old copy as a resident hole.
        let local_clients = format!("{}-", shared.node_key);
        let (policy, policy_generation) = shared.policy.get();
        let timers = timers::TimerWheel::new(0, &shared.config);
        let slab_capacity =
            shared.config.max_connections.div_ceil(shared.config.workers).min(1 << 22);
        Ok(Worker {
            id,
            poll,
            listener: Some(listener),
            listener_ready: true,
            acks,
            next_serial: 0,
            accept_paused_until_ms: None,
            conns: Slab::with_capacity(slab_capacity),
            index: Index::default(),
            patterns: PatternIndex::default(),
            publisher: Publisher::new(id, producer, shared.clone()),
            consumer,
            shared,
            scratch: vec![0; input::READ_CHUNK_BYTES],
            decrypted: Vec::new(),
            tls_scratch: (Vec::new(), Vec::new()),
            input_high_water: 0,
            out: Outbox::default(),
            deferred: Vec::new(),
            deferred_due_ms: None,
            replaying: Vec::new(),
            replay_page: Vec::new(),
            pending_reads: VecDeque::new(),
            stalled: Vec::new(),
            joining: Vec::new(),
            served_generation_seen: 0,
            catching_up: Vec::new(),
            unblocked: Vec::new(),
            sse_cursors_due: Vec::new(),
            delivered_streams: Vec::new(),
            channel_cache: Default::default(),
            registry_shards_left: 0,
            cache_pressure_seen: 0,
            batches: Batches::for_node(local_clients),
            presence_out: Default::default(),
            presence_since: HashMap::new(),
            presence_since_channels: HashMap::new(),
            now_ms: 0,
            next_housekeeping_ms: 0,
            timers,
            timers_due: Vec::new(),
            next_stats_ms: 0,
            next_sweep_ms: CHANNEL_SWEEP_MS,
            next_cache_sweep_ms: CACHE_SWEEP_MS,
            state: RunState::Running,
            delivered_latency: Vec::new(),
            policy,
            policy_generation,
        })
    }

    fn counters(&self) -> &WorkerCounters {
        &self.shared.counters[self.id]
    }

    /// Wall-clock milliseconds, from the turn's clock (no system call per message).
    fn wall_ms(&self) -> u64 {
        self.shared.started_wall_ms + u64::from(self.now_ms)
    }

    fn clock(&mut self) {
        let elapsed = self.shared.started.elapsed();
        self.now_ms = elapsed.as_millis() as u32;
        self.publisher.now_ns = elapsed.as_nanos() as u64;
        self.publisher.now_wall_ms = self.wall_ms();
        if self.shared.policy.generation() != self.policy_generation {
            let (policy, generation) = self.shared.policy.get();
            let before = std::mem::replace(&mut self.policy, policy);
            self.policy_generation = generation;
            self.api_key_rotated(&before);
            // Authentication deadlines follow the policy.
            self.rearm_all();
        }
    }

    /// Notes how long this turn took since poll returned (`clock`).
    fn observe_turn(&mut self) {
        let took_ns = self.shared.clock_ns().saturating_sub(self.publisher.now_ns);
        self.shared.histograms[self.id].turn.observe(took_ns, 1);
        let longest = &self.counters().longest_turn_micros;
        if took_ns / 1000 > longest.load(Ordering::Relaxed) {
            longest.store(took_ns / 1000, Ordering::Relaxed);
        }
    }

    /// The key of the connection `noted` names, if that connection is still there.
    fn resolve(&self, noted: ConnRef) -> Option<usize> {
        let still_there = self.conns.get(noted.key).is_some_and(|c| c.serial == noted.serial);
        still_there.then_some(noted.key)
    }

    /// Runs until shutdown completes.
    pub(super) fn run(mut self) {
        if self.shared.config.pin_cores {
            match crate::sys::pin_current_thread(self.id) {
                Ok(core) => debug!("worker {} pinned to core {core}", self.id),
                Err(e) => error!("worker {}: core pinning was requested and failed: {e}", self.id),
            }
        }
        self.clock();
        let stats_every =
            self.shared.config.stats_interval.as_millis().min(u32::MAX as u128 / 4) as u32;
        self.next_stats_ms = self.now_ms.wrapping_add(stats_every);
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    crate::sys::fatal(&format!("worker {}: poll failed: {e}", self.id));
                }
            }
            self.clock();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.listener_ready = true,
                    WAKER => {
                        // Reset before draining below; see `WakeSignal::pending`.
                        self.shared.signals[self.id].pending.swap(false, Ordering::AcqRel);
                    }
                    Token(key) => self.connection_event(key, event),
                }
            }
            if self.state == RunState::Running {
                self.accept();
                self.read_pending();
                self.retry_stalled();
                self.admit_joins();
                self.admit_catch_ups();
                self.resume_unblocked();
                self.flush_presence_due();
            }
            self.deliver_acks();
            if self.publisher.take_published() {
                self.shared.wake_others(self.id);
            }
            let evicted = self.shared.channels.maintain(Appender::Worker(self.id));
            WorkerCounters::add(&self.counters().history_dropped, evicted as u64);
            self.drain_ring();
            self.emit_sse_cursors();
            self.flush_dirty();
            self.observe_delivery_latency();
            if !self.replaying.is_empty() {
                self.pump_replays();
                self.emit_sse_cursors();
                self.flush_dirty();
            }
            self.deferred_due_ms = self.flush_deferred();
            self.fire_timers();
            if reached(self.now_ms, self.next_housekeeping_ms) {
                self.next_housekeeping_ms = self.now_ms.wrapping_add(HOUSEKEEPING_MS);
                if self.id == 0 {
                    // What recovery retained: nobody appends there, so a step per tick will do.
                    self.shared.channels.compact_recovered();
                }
                if self.shared.broker.is_some() && reached(self.now_ms, self.next_cache_sweep_ms) {
                    // Cluster mode: drop cached channels nobody here reads, so that the broker
                    // can unsubscribe from them in Redis within seconds.
                    self.next_cache_sweep_ms = self.now_ms.wrapping_add(CACHE_SWEEP_MS);
                    self.start_sweep(false);
                }
                if reached(self.now_ms, self.next_sweep_ms) {
                    self.next_sweep_ms = self.now_ms.wrapping_add(CHANNEL_SWEEP_MS);
                    // The registry is everyone's: worker 0 sweeps it, the others their caches.
                    self.start_sweep(self.id == 0);
                }
                if stats_every > 0 && self.id == 0 && reached(self.now_ms, self.next_stats_ms) {
                    self.next_stats_ms = self.now_ms.wrapping_add(stats_every);
                    let stats = self.shared.stats();
                    info!("stats: {}", stats.summary());
                    debug!("stats (all): {stats}");
                }
            }
            let pressure = self.shared.channels.cache_pressure();
            if pressure != self.cache_pressure_seen {
                self.cache_pressure_seen = pressure;
                self.start_sweep(false);
            }
            if self.sweeping() {
                self.sweep_step();
            }
            self.observe_turn();
            self.publish_gauges();
            if !self.advance_shutdown() {
                break;
            }
        }
        self.close_all();
        self.publish_gauges();
        debug!("worker {} stopped", self.id);
    }

    fn poll_timeout(&self) -> Duration {
        let accept_waiting =
            self.listener_ready && self.listener.is_some() && self.accept_paused_until_ms.is_none();
        if accept_waiting
            || !self.pending_reads.is_empty()
            || !self.replaying.is_empty()
            || !self.unblocked.is_empty()
            || !self.consumer.caught_up()
            || self.sweeping()
        {
            return Duration::ZERO;
        }
        if !self.stalled.is_empty() {
            return STALL_RETRY;
        }
        if self.state != RunState::Running {
            return Duration::from_millis(10);
        }
        let until_housekeeping =
            self.next_housekeeping_ms.wrapping_sub(self.now_ms).min(HOUSEKEEPING_MS);
        let until =
            self.deferred_due_ms.map_or(until_housekeeping, |due| due.min(until_housekeeping));
        let until = self.timers.until_next(self.now_ms, until).map_or(until, |due| due.min(until));
        let until = self
            .presence_out
            .due_ms
            .map_or(until, |due| due.wrapping_sub(self.now_ms).min(HOUSEKEEPING_MS).min(until));
        Duration::from_millis(until as u64)
    }

    /// Readiness of one connection: write what is queued, then read what arrived.
    fn connection_event(&mut self, key: usize, event: &mio::event::Event) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let writable = event.is_writable();
        // Errors surface from read(2) with their cause; read_ready closes on them.
        let readable = event.is_readable() || event.is_read_closed() || event.is_error();
        conn.writable |= writable;
        conn.readable |= readable;
        let result = self.write_then_read(key, writable, readable);
        self.close_on_error(key, result);
    }

    fn write_then_read(&mut self, key: usize, write: bool, read: bool) -> Result<(), Close> {
        if write {
            self.flush(key)?;
        }
        if read {
            self.read_ready(key)?;
        }
        Ok(())
    }
}
