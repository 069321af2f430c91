//! One reactor thread: a mio `Poll`, its own SO_REUSEPORT listener, a slab of connections, the
//! local subscription index, and a cursor into the broadcast ring.
//!
//! Each turn of `run`:
//! 1. poll (timeout 0 when work is left over, else until the next housekeeping tick);
//! 2. dispatch events flat by token: listener, waker, or a connection (error, then writable, then
//!    readable);
//! 3. accept up to `ACCEPT_BATCH`, read each ready connection up to `READ_BUDGET_BYTES` (a busy
//!    client cannot starve the others; leftovers wait in `pending_reads`), retry publishes that
//!    found the ring full;
//! 4. wake the other workers once if this turn published anything;
//! 5. drain the ring from our cursor, batching frames per channel, and queue them to local
//!    subscribers (one `Bytes` per subscriber per channel per turn);
//! 6. flush every connection that got new frames with writev;
//! 7. housekeeping every `HOUSEKEEPING_MS`: keepalive pings, stale and lingering connections,
//!    long-poll deadlines, counters.
//!
//! The browser protocols (HTTP, WebSocket, Server-Sent Events, long-poll) are in `web`; they are
//! formats like the TCP ones once a request has chosen them, and share everything else.

mod web;

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use log::{debug, error, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::channels::{Channel, Message};
use super::conn::{Conn, Phase, Replay, StalledPublish, Subscription, Web, CATCHING_UP};
use super::index::Index;
use super::ring::{Consumer, Producer};
use super::stats::WorkerCounters;
use super::{Item, Shared, MAX_STORAGE_BACKLOG};
use crate::history::disk::{AckTarget, Append, Persisted, StoreOp};
use crate::history::{ResumeStatus, Retained};
use crate::protocol::{
    self, validate_channel, websocket, Ack, ChannelKind, ErrorCode, Format, Request, Sniffed,
};

/// This worker's listener.
pub(super) const LISTENER: Token = Token(usize::MAX - 1);
/// The cross-worker waker.
pub(super) const WAKER: Token = Token(usize::MAX);

/// Connections accepted per turn before other work gets a go.
const ACCEPT_BATCH: usize = 256;
/// One read(2) at most this much (the worker's scratch buffer).
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Bytes read from one connection per turn.
const READ_BUDGET_BYTES: usize = 256 * 1024;
/// Ring items taken per turn, and per `Consumer::poll` call within it.
const DRAIN_MAX_MESSAGES: usize = 8192;
const DRAIN_CHUNK_MESSAGES: usize = 64;
/// Encoded bytes batched per turn before the batch is handed to subscribers.
const DRAIN_MAX_BYTES: usize = 4 << 20;
/// How often keepalive and lingering deadlines are checked.
const HOUSEKEEPING_MS: u32 = 250;
/// How long a connection closed for an error may take to read its error frame.
const CLOSE_LINGER_MS: u32 = 5_000;
/// Longest silence on an event stream before a heartbeat comment (also bounded by the ping
/// interval): under the 30-60 s idle timeouts of common proxies.
const SSE_HEARTBEAT_MS: u32 = 15_000;
/// How often unused channels are freed (and at the channel limit, at once).
const CHANNEL_SWEEP_MS: u32 = 10_000;
/// Poll timeout while a publish waits for ring room.
const STALL_RETRY: Duration = Duration::from_millis(1);

/// Where the worker is in the server's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunState {
    /// Accepting, reading, delivering.
    Running,
    /// Shutdown began: no accepts, no reads; delivering what is already in the ring.
    Draining,
    /// Every worker is drained: flushing queues until they are empty or the deadline.
    Flushing {
        /// Worker-clock milliseconds when remaining connections are cut.
        deadline_ms: u32,
    },
}

/// Frames of one channel gathered during one drain.
#[derive(Debug)]
struct ChannelBatch {
    channel: Arc<Channel>,
    /// One buffer per format; empty for formats no local subscriber uses.
    frames: [BytesMut; Format::COUNT],
    messages: u64,
    /// The offset of the batch's last message.
    last_offset: u64,
    /// The messages themselves, kept only when the channel has catching-up subscribers.
    items: Vec<Item>,
}

/// `now >= deadline` on a wrapping millisecond clock (valid for spans under ~24 days).
fn reached(now_ms: u32, deadline_ms: u32) -> bool {
    now_ms.wrapping_sub(deadline_ms) < u32::MAX / 2
}

fn owned(payload: std::borrow::Cow<'_, [u8]>) -> Bytes {
    match payload {
        std::borrow::Cow::Borrowed(bytes) => Bytes::copy_from_slice(bytes),
        std::borrow::Cow::Owned(vec) => Bytes::from(vec),
    }
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// What queueing frames this turn left to do, and the queue byte gauges.
#[derive(Debug, Default)]
struct Outbox {
    /// Connections with new frames this turn (each once; see `Conn::dirty`).
    dirty: Vec<usize>,
    /// Connections that would have passed their queue cap; closed as slow consumers.
    slow: Vec<usize>,
    /// Bytes waiting in every queue of this worker.
    queued_bytes: usize,
    /// The most any one queue has held.
    high_water: usize,
}

impl Outbox {
    /// Queues `frame` for connection `key` unless that would pass `cap` (then `key` is noted as
    /// slow and false returned), and marks the connection for this turn's flush.
    ///
    /// A frame bigger than half the cap is one large message grown by its encoding (JSON escapes
    /// up to 6x, SSE `data:` lines up to 7x, base64 4/3): it is taken while the client keeps up
    /// (its queue under a quarter of the cap), so that the encoding never makes a healthy client
    /// look slow. A queue is thus bounded by the cap, or by a quarter of it plus one message.
    fn enqueue(&mut self, key: usize, conn: &mut Conn, frame: Bytes, cap: usize) -> bool {
        let before = conn.queue.queued_bytes();
        let queued = before + frame.len();
        let one_big_message = frame.len() > cap / 2 && before <= cap / 4;
        if queued > cap && !one_big_message {
            self.slow.push(key);
            return false;
        }
        self.high_water = self.high_water.max(queued);
        self.queued_bytes += frame.len();
        conn.queue.push(frame);
        self.mark_dirty(key, conn);
        true
    }

    /// Notes that `key` has something to flush this turn (once).
    fn mark_dirty(&mut self, key: usize, conn: &mut Conn) {
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(key);
        }
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
    producer: Producer<Item>,
    consumer: Consumer<Item>,
    shared: Arc<Shared>,
    /// Acknowledgements of durable appends, from the storage thread.
    acks: crossbeam_channel::Receiver<Persisted>,
    /// Serial number of the last accepted connection.
    next_serial: u32,
    /// Every read lands here first; only an incomplete frame is copied into the connection.
    scratch: Vec<u8>,
    /// Frames queued this turn: who to flush, who to cut off, and the byte gauges.
    out: Outbox,
    /// Connections whose replay from history can continue (their queue drained).
    replaying: Vec<usize>,
    /// Scratch for one page of a replay.
    replay_page: Vec<Retained>,
    /// Connections with queued frames held back by write coalescing (`Config::coalesce`).
    deferred: Vec<usize>,
    /// Milliseconds until the first held-back connection is due.
    deferred_due_ms: Option<u32>,
    /// Connections that used their read budget with input left.
    pending_reads: VecDeque<usize>,
    /// Connections whose publish waits for ring room.
    stalled: Vec<usize>,
    /// Connections whose wait (a long-poll) ended: their held input is processed next turn.
    unblocked: Vec<usize>,
    /// Event streams that got the batch being fanned out (their cursors follow it).
    sse_delivered: Vec<usize>,
    /// Event streams whose cursor event is due at the end of this turn.
    sse_cursors_due: Vec<usize>,
    /// Channels this worker has used, so that publishing does not take the registry lock.
    channel_cache: HashMap<Bytes, Arc<Channel>>,
    batches: Vec<ChannelBatch>,
    batch_of_channel: HashMap<u64, usize>,
    /// Published since the other workers were last woken.
    published: bool,
    /// Milliseconds since the server started (wrapping).
    now_ms: u32,
    next_housekeeping_ms: u32,
    next_stats_ms: u32,
    /// When unused channels are next let go of (`sweep_channels`).
    next_sweep_ms: u32,
    state: RunState,
}

impl Worker {
    pub(super) fn new(
        id: usize,
        poll: Poll,
        listener: std::net::TcpListener,
        producer: Producer<Item>,
        consumer: Consumer<Item>,
        acks: crossbeam_channel::Receiver<Persisted>,
        shared: Arc<Shared>,
    ) -> io::Result<Self> {
        let mut listener = TcpListener::from_std(listener);
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        // Reserve the whole slab up front: untouched capacity costs address space, not memory,
        // while growing by doubling would copy it and leave the old copy as a resident hole.
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
            producer,
            consumer,
            shared,
            scratch: vec![0; READ_CHUNK_BYTES],
            out: Outbox::default(),
            deferred: Vec::new(),
            deferred_due_ms: None,
            replaying: Vec::new(),
            replay_page: Vec::new(),
            pending_reads: VecDeque::new(),
            stalled: Vec::new(),
            unblocked: Vec::new(),
            sse_delivered: Vec::new(),
            sse_cursors_due: Vec::new(),
            channel_cache: HashMap::new(),
            batches: Vec::new(),
            batch_of_channel: HashMap::new(),
            published: false,
            now_ms: 0,
            next_housekeeping_ms: 0,
            next_stats_ms: 0,
            next_sweep_ms: CHANNEL_SWEEP_MS,
            state: RunState::Running,
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
        self.now_ms = self.shared.started.elapsed().as_millis() as u32;
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
                for key in std::mem::take(&mut self.unblocked) {
                    if self.conns.get(key).is_some_and(|c| c.is_open() && !c.input_waits()) {
                        self.continue_input(key);
                    }
                }
            }
            self.deliver_acks();
            if self.published {
                self.published = false;
                self.shared.wake_others(self.id);
            }
            self.drain_ring();
            self.emit_sse_cursors();
            self.flush_dirty();
            if !self.replaying.is_empty() {
                self.pump_replays();
                self.emit_sse_cursors();
                self.flush_dirty();
            }
            self.deferred_due_ms = self.flush_deferred();
            if reached(self.now_ms, self.next_housekeeping_ms) {
                self.next_housekeeping_ms = self.now_ms.wrapping_add(HOUSEKEEPING_MS);
                self.housekeeping();
                if reached(self.now_ms, self.next_sweep_ms) {
                    self.next_sweep_ms = self.now_ms.wrapping_add(CHANNEL_SWEEP_MS);
                    self.sweep_channels(self.id == 0);
                }
                if stats_every > 0 && self.id == 0 && reached(self.now_ms, self.next_stats_ms) {
                    self.next_stats_ms = self.now_ms.wrapping_add(stats_every);
                    info!("stats: {}", self.shared.stats());
                }
            }
            self.publish_gauges();
            if !self.advance_shutdown() {
                break;
            }
        }
        for key in self.conns.iter().map(|(key, _)| key).collect::<Vec<_>>() {
            self.close_now(key, "server shut down");
        }
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
        Duration::from_millis(until as u64)
    }

    // ---- accepting ----

    fn accept(&mut self) {
        if let Some(until) = self.accept_paused_until_ms {
            if !reached(self.now_ms, until) {
                return;
            }
            self.accept_paused_until_ms = None;
        }
        for _ in 0..ACCEPT_BATCH {
            if !self.listener_ready {
                return;
            }
            let Some(listener) = &self.listener else { return };
            match listener.accept() {
                Ok((stream, _peer)) => self.admit(stream),
                Err(e) if would_block(&e) => self.listener_ready = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    ) =>
                {
                    warn!("worker {}: cannot accept, out of descriptors or memory ({e}); pausing accepts for 100 ms", self.id);
                    self.accept_paused_until_ms = Some(self.now_ms.wrapping_add(100));
                    return;
                }
                // ECONNABORTED and friends: that one connection is gone; keep accepting.
                Err(e) => debug!("worker {}: accept failed: {e}", self.id),
            }
        }
    }

    fn admit(&mut self, mut stream: TcpStream) {
        let open = self.shared.open_connections.fetch_add(1, Ordering::AcqRel);
        if open >= self.shared.config.max_connections {
            self.shared.open_connections.fetch_sub(1, Ordering::AcqRel);
            WorkerCounters::add(&self.counters().connections_refused, 1);
            debug!("worker {}: refusing a connection, {open} are open (the limit)", self.id);
            // The client has not spoken yet, so it gets the text form, which a binary client
            // recognises too (no binary frame starts with "ERR ").
            let refusal =
                Format::Text.encode_error(ErrorCode::Unavailable, "max connections reached");
            let _ = stream.write(&refusal);
            let _ = stream.shutdown(Shutdown::Write);
            return;
        }
        if let Err(e) = stream.set_nodelay(true) {
            debug!("worker {}: TCP_NODELAY failed: {e}", self.id);
        }
        let send_buffer = self.shared.config.socket_send_buffer_bytes;
        if send_buffer > 0 {
            if let Err(e) = crate::sys::set_send_buffer(&stream, send_buffer) {
                debug!("worker {}: SO_SNDBUF failed: {e}", self.id);
            }
        }
        let entry = self.conns.vacant_entry();
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(entry.key()),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("worker {}: cannot register a connection: {e}", self.id);
            self.shared.open_connections.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        self.next_serial = self.next_serial.wrapping_add(1);
        let mut conn = Conn::new(stream, self.now_ms, self.next_serial);
        // A fresh socket has an empty send buffer: replies need not wait for the first event.
        conn.writable = true;
        entry.insert(conn);
        WorkerCounters::add(&self.counters().connections_total, 1);
    }

    // ---- events, reading, parsing ----

    fn connection_event(&mut self, key: usize, event: &mio::event::Event) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if event.is_writable() {
            conn.writable = true;
            self.flush(key);
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            // Errors surface from read(2) with their cause; read_ready closes on them.
            if let Some(conn) = self.conns.get_mut(key) {
                conn.readable = true;
                self.read_ready(key);
            }
        }
    }

    fn read_pending(&mut self) {
        for _ in 0..self.pending_reads.len() {
            if let Some(key) = self.pending_reads.pop_front() {
                self.read_ready(key);
            }
        }
    }

    /// Reads until WouldBlock, the per-turn budget, or a stalled publish.
    fn read_ready(&mut self, key: usize) {
        let mut budget = READ_BUDGET_BYTES;
        loop {
            let Some(conn) = self.conns.get_mut(key) else { return };
            if !conn.readable {
                return;
            }
            // A held long-poll keeps reading (a little), so that a client that goes away is
            // noticed now rather than at the poll's deadline; what it sends waits in `input`.
            if conn.input_waits()
                && !(conn.polling()
                    && conn.input.as_ref().map_or(0, |i| i.len()) < protocol::http::MAX_HEAD_BYTES)
            {
                return;
            }
            // During shutdown nothing is read from open connections (they get their queues
            // flushed, then close); closing connections are still read to see the peer's EOF.
            if self.state != RunState::Running && conn.is_open() {
                return;
            }
            if budget == 0 {
                self.pending_reads.push_back(key);
                return;
            }
            match conn.stream.read(&mut self.scratch) {
                Ok(0) => {
                    self.close_now(key, "closed by peer");
                    return;
                }
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    WorkerCounters::add(&self.shared.counters[self.id].bytes_in, n as u64);
                    if conn.is_open() {
                        conn.last_input_ms = self.now_ms;
                        conn.ping_sent = false;
                        let scratch = std::mem::take(&mut self.scratch);
                        self.take_input(key, &scratch[..n]);
                        self.scratch = scratch;
                    }
                }
                Err(e) if would_block(&e) => {
                    conn.readable = false;
                    if let Phase::Closing { write_shut: true, wait_for_eof: false, .. } = conn.phase
                    {
                        self.close_now(key, "flushed and half-closed");
                    }
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.close_now(key, &format!("read failed: {e}"));
                    return;
                }
            }
        }
    }

    /// Parses `fresh` after whatever incomplete frame the connection held.
    fn take_input(&mut self, key: usize, fresh: &[u8]) {
        if self.conns[key].input.is_none() {
            let used = self.parse_and_handle(key, fresh);
            if let Some(conn) = self.conns.get_mut(key) {
                if conn.is_open() && used < fresh.len() {
                    conn.keep_input(fresh[used..].to_vec());
                }
            }
        } else {
            let mut input = self.conns[key].take_input();
            input.extend_from_slice(fresh);
            self.resume_input(key, input);
        }
    }

    /// After a stall, a replay or a long-poll ends: the input that waited, then the socket.
    fn continue_input(&mut self, key: usize) {
        if self.conns[key].format == Some(Format::Sse) {
            self.sse_subscribe_pending(key);
        }
        let input = self.conns[key].take_input();
        if !input.is_empty() {
            self.resume_input(key, input);
        }
        self.read_ready(key);
    }

    /// Parses bytes the connection already held (after more arrived, or after a stall cleared).
    fn resume_input(&mut self, key: usize, mut input: Vec<u8>) {
        let used = self.parse_and_handle(key, &input);
        input.drain(..used);
        if let Some(conn) = self.conns.get_mut(key) {
            if conn.is_open() && !input.is_empty() {
                input.shrink_to(input.len().max(1024));
                conn.keep_input(input);
            }
        }
    }

    /// Handles every complete command in `input`; returns the bytes consumed. Stops early when a
    /// publish stalls (the rest waits for ring room) or on a fatal error.
    fn parse_and_handle(&mut self, key: usize, input: &[u8]) -> usize {
        let max_frame = self.shared.config.max_frame_bytes;
        let mut at = 0;
        let format = match self.conns[key].format {
            Some(format) => format,
            None => match protocol::sniff(input) {
                Ok(Sniffed::NeedMore) => return 0,
                Ok(Sniffed::Binary(preface)) => {
                    at = preface;
                    Format::Binary
                }
                Ok(Sniffed::Text) => Format::Text,
                Ok(Sniffed::Http) => {
                    self.conns[key].web = Some(Box::new(Web::Http {
                        keep_alive: true,
                        poll: None,
                        continued: false,
                        awaiting_ack: false,
                        head_since_ms: None,
                    }));
                    Format::Http
                }
                Err(e) => {
                    self.set_format(key, Format::Binary);
                    self.protocol_error(key, &e);
                    return input.len();
                }
            },
        };
        if self.conns[key].format.is_none() {
            self.set_format(key, format);
        }
        match format {
            Format::Text | Format::Binary => {}
            Format::Http => return at + self.http_input(key, &input[at..]),
            Format::WsJson | Format::WsBinary => {
                return at + self.websocket_input(key, &input[at..])
            }
            // An event stream is one-way; whatever the client sends after its request is ignored.
            Format::Sse => return input.len(),
        }
        loop {
            let conn = &self.conns[key];
            if !conn.is_open() || conn.input_waits() {
                return at;
            }
            match format.parse_request(&input[at..], max_frame) {
                Ok(Some((request, used))) => {
                    at += used;
                    self.handle(key, request);
                }
                Ok(None) => return at,
                Err(e) => {
                    self.protocol_error(key, &e);
                    return input.len();
                }
            }
        }
    }

    /// Records a connection's format (its metrics gauge moves with it).
    fn set_format(&mut self, key: usize, format: Format) {
        let counters = &self.shared.counters[self.id];
        if let Some(old) = self.conns[key].format.replace(format) {
            counters.by_format(old).fetch_sub(1, Ordering::Relaxed);
        }
        counters.by_format(format).fetch_add(1, Ordering::Relaxed);
    }

    fn protocol_error(&mut self, key: usize, error: &protocol::ProtocolError) {
        use protocol::ProtocolError as E;
        let counters = self.counters();
        WorkerCounters::add(&counters.protocol_errors, 1);
        let kind = match error {
            E::FrameTooLarge { .. } => &counters.protocol_errors_too_large,
            E::EmptyFrame | E::Malformed { .. } | E::BadPreface => {
                &counters.protocol_errors_malformed
            }
            E::UnknownOpcode(_) | E::UnknownCommand(_) => &counters.protocol_errors_unknown_command,
            E::InvalidUtf8 { .. } => &counters.protocol_errors_invalid_utf8,
        };
        WorkerCounters::add(kind, 1);
        debug!("worker {}: protocol error on connection {key}: {error}", self.id);
        // Replies to the commands before the bad one are still owed: keep the queue.
        self.begin_close(key, Some((error.code(), &error.to_string())), false);
    }

    // ---- commands ----

    fn handle(&mut self, key: usize, request: Request<'_>) {
        match request {
            Request::Noop | Request::Pong => {}
            Request::Ping => {
                let pong = self.conns[key].reply_format().pong();
                self.reply(key, pong);
            }
            Request::Subscribe { channel, resume } => self.subscribe(key, channel, resume),
            Request::Unsubscribe { channel } => self.unsubscribe(key, channel),
            Request::Publish { channel, payload } => {
                self.publish_request(key, channel, owned(payload), false)
            }
            Request::PublishAcked { channel, payload } => {
                self.publish_request(key, channel, owned(payload), true)
            }
            Request::Name { name } => self.claim_name(key, name),
        }
    }

    fn reply(&mut self, key: usize, frame: Bytes) {
        let cap = self.shared.config.write_queue_cap_bytes;
        let conn = &mut self.conns[key];
        if self.out.enqueue(key, conn, frame, cap) {
            conn.urgent = true;
            // Over plain HTTP every reply is a whole response: the last one, if the request
            // asked to close.
            if let Some(Web::Http { keep_alive: false, .. }) = conn.web.as_deref() {
                self.begin_close(key, None, false);
            }
        } else {
            self.close_slow();
        }
    }

    fn refuse(&mut self, key: usize, code: ErrorCode, reason: &str) {
        WorkerCounters::add(&self.counters().request_errors, 1);
        let frame = self.conns[key].reply_format().encode_error(code, reason);
        self.reply(key, frame);
    }

    fn acknowledge(&mut self, key: usize, ack: Ack, arg: &[u8]) {
        let frame = self.conns[key].reply_format().encode_ok(ack, arg);
        self.reply(key, frame);
    }

    /// The channel for a validated name: from this worker's cache, else from the registry. At
    /// the channel limit, first free what nothing uses; if every channel is in use or holds
    /// history, let the globally oldest history go (a hundredth of the limit at a time, so that a
    /// flood of names sweeps rarely) and free what that emptied.
    fn channel(&mut self, name: &[u8]) -> Result<Arc<Channel>, String> {
        if let Some(channel) = self.channel_cache.get(name) {
            return Ok(channel.clone());
        }
        let mut attempt = 0;
        let channel = loop {
            match self.shared.channels.get_or_create(name) {
                Ok(channel) => break channel,
                Err(e) if attempt == 2 => return Err(e.to_string()),
                Err(_) => {
                    if attempt == 1 {
                        let batch = (self.shared.config.max_channels / 100).max(1);
                        let evicted = self.shared.channels.evict_oldest(batch);
                        WorkerCounters::add(&self.counters().history_dropped, evicted as u64);
                    }
                    self.sweep_channels(true);
                    attempt += 1;
                }
            }
        };
        self.channel_cache.insert(channel.name.clone(), channel.clone());
        Ok(channel)
    }

    /// Lets go of cached channels with no local subscribers, then frees every channel nothing
    /// uses any more (see `ChannelRegistry::sweep_unused`); a freed channel's files go too.
    ///
    /// The registry's sweep walks every channel under its lock, so the periodic one is worker
    /// 0's alone (the others only let go of their caches); at the channel limit, whoever hits it.
    fn sweep_channels(&mut self, registry_too: bool) {
        let index = &self.index;
        self.channel_cache.retain(|_, channel| index.get(channel.id).is_some());
        self.channel_cache.shrink_to_fit();
        if !registry_too {
            return;
        }
        let storage = self.shared.storage.as_ref();
        let freed = self.shared.channels.sweep_unused(self.wall_ms(), |name| {
            if let Some(storage) = storage {
                storage.depth.fetch_add(1, Ordering::Relaxed);
                let _ = storage.sender.send(StoreOp::Forget(name.clone()));
            }
        });
        WorkerCounters::add(&self.counters().channels_freed, freed as u64);
        if freed > 0 {
            debug!("worker {}: freed {freed} unused channel(s)", self.id);
        }
    }

    fn subscribe(&mut self, key: usize, name: &[u8], resume: Option<protocol::Resume>) {
        let kind = match validate_channel(name) {
            Ok(kind) => kind,
            Err(e) => {
                return self.refuse(key, ErrorCode::InvalidName, &format!("invalid channel: {e}"))
            }
        };
        match kind {
            ChannelKind::Topic => {}
            ChannelKind::Broadcast => {
                return self.refuse(
                    key,
                    ErrorCode::Forbidden,
                    "every connection receives * already",
                )
            }
            ChannelKind::Inbox => {
                return self.refuse(
                    key,
                    ErrorCode::Forbidden,
                    "inboxes are private; claim a name with NAME",
                )
            }
        }
        let conn = &self.conns[key];
        if conn.subscriptions.iter().any(|s| s.channel.name == name) {
            if resume.is_some() {
                return self.refuse(
                    key,
                    ErrorCode::Conflict,
                    "already subscribed; UNSUB before resuming",
                );
            }
            return self.acknowledge(key, Ack::Subscribe, name);
        }
        let limit = self.shared.config.max_subscriptions_per_connection;
        if conn.subscriptions.len() >= limit {
            return self.refuse(
                key,
                ErrorCode::LimitReached,
                &format!("too many subscriptions (the limit is {limit})"),
            );
        }
        match self.channel(name) {
            Ok(channel) => match resume {
                None => {
                    self.attach(key, channel);
                    self.acknowledge(key, Ack::Subscribe, name);
                }
                Some(resume) => self.start_replay(key, channel, resume),
            },
            Err(why) => self.refuse(key, ErrorCode::LimitReached, &why),
        }
    }

    fn attach(&mut self, key: usize, channel: Arc<Channel>) {
        let conn = &mut self.conns[key];
        let position = self.index.add(channel.id, key, conn.reply_format());
        conn.push_subscription(Subscription { channel, position });
    }

    fn unsubscribe(&mut self, key: usize, name: &[u8]) {
        if let Err(e) = validate_channel(name) {
            return self.refuse(key, ErrorCode::InvalidName, &format!("invalid channel: {e}"));
        }
        let conn = &mut self.conns[key];
        if let Some(i) = conn.subscriptions.iter().position(|s| s.channel.name == name) {
            if conn.subscriptions[i].channel.kind == ChannelKind::Inbox {
                return self.refuse(
                    key,
                    ErrorCode::Forbidden,
                    "a connection keeps its inbox while it has its name",
                );
            }
            let subscription = conn.subscriptions.swap_remove(i);
            self.detach_one(key, subscription);
        }
        self.acknowledge(key, Ack::Unsubscribe, name);
    }

    /// Removes `key` from one channel's local subscribers, fixing the position of the subscriber
    /// that `swap_remove` moved into its place.
    fn detach_one(&mut self, key: usize, subscription: Subscription) {
        let format = self.conns[key].reply_format();
        let channel_id = subscription.channel.id;
        if subscription.position == CATCHING_UP {
            self.index.remove_catching_up(channel_id, key);
        } else if let Some(moved) = self.index.remove(channel_id, subscription.position, format) {
            if let Some(entry) =
                self.conns[moved].subscriptions.iter_mut().find(|s| s.channel.id == channel_id)
            {
                entry.position = subscription.position;
            }
        }
        if self.index.get(channel_id).is_none() {
            // The last local subscriber left: this worker no longer keeps the channel alive, so
            // that it can be freed once nothing else uses it (`sweep_channels`).
            self.channel_cache.remove(&subscription.channel.name);
        }
    }

    fn claim_name(&mut self, key: usize, name: &[u8]) {
        if let Err(e) = protocol::validate_client_name(name) {
            return self.refuse(key, ErrorCode::InvalidName, &format!("invalid name: {e}"));
        }
        if self.conns[key].name().is_some() {
            return self.refuse(key, ErrorCode::Conflict, "this connection already has a name");
        }
        let mut inbox = Vec::with_capacity(name.len() + 1);
        inbox.push(b'@');
        inbox.extend_from_slice(name);
        let channel = match self.channel(&inbox) {
            Ok(channel) => channel,
            Err(why) => return self.refuse(key, ErrorCode::LimitReached, &why),
        };
        if !self.shared.names.claim(name) {
            return self.refuse(key, ErrorCode::Conflict, "name already in use");
        }
        self.attach(key, channel);
        self.acknowledge(key, Ack::Name, name);
    }

    fn publish_request(&mut self, key: usize, name: &[u8], payload: Bytes, acked: bool) {
        if self
            .shared
            .config
            .debug_panic_on_publish_to
            .as_deref()
            .is_some_and(|c| c.as_bytes() == name)
        {
            panic!("--debug-panic-on-publish-to {}", String::from_utf8_lossy(name));
        }
        let kind = match validate_channel(name) {
            Ok(kind) => kind,
            Err(e) => {
                return self.refuse(key, ErrorCode::InvalidName, &format!("invalid channel: {e}"))
            }
        };
        if kind == ChannelKind::Inbox && !self.shared.names.is_claimed(&name[1..]) {
            let who = String::from_utf8_lossy(&name[1..]).into_owned();
            return self.refuse(key, ErrorCode::NotFound, &format!("no client named {who}"));
        }
        let channel = match self.channel(name) {
            Ok(channel) => channel,
            Err(why) => return self.refuse(key, ErrorCode::LimitReached, &why),
        };
        if acked {
            // An acknowledgement promises durability (--fsync always); while the channel's
            // storage fails it cannot be given, so the message is not published at all.
            let storage = self.shared.storage.as_ref().filter(|s| s.fsync_always);
            if let Some(why) = storage.and_then(|s| s.health.failure(&channel.name)) {
                return self.refuse(key, ErrorCode::StorageFailed, &why);
            }
        }
        if let Err(payload) = self.publish(key, &channel, payload, acked) {
            WorkerCounters::add(&self.counters().ring_full_stalls, 1);
            self.conns[key].stalled = Some(Box::new(StalledPublish { channel, payload, acked }));
            self.stalled.push(key);
        }
    }

    /// Assigns the next offset and puts the message into the ring, both under the channel's offset
    /// lock, so that ring order is offset order. Hands the payload back when the ring is full.
    fn publish(
        &mut self,
        key: usize,
        channel: &Arc<Channel>,
        payload: Bytes,
        acked: bool,
    ) -> Result<(), Bytes> {
        let shared = &self.shared;
        if shared
            .storage
            .as_ref()
            .is_some_and(|s| s.depth.load(Ordering::Relaxed) >= MAX_STORAGE_BACKLOG)
        {
            // The disk is behind: hold this publisher as for a full ring.
            return Err(payload);
        }
        let registry = &shared.channels;
        let keep = registry.history.messages > 0 || shared.storage.is_some();
        let retained = keep.then(|| payload.clone());
        let mut log = channel.lock_log();
        let offset = log.next_offset;
        let message = Arc::new(Message { channel: channel.clone(), offset, payload });
        if let Err(message) = self.producer.try_publish(message) {
            drop(log);
            return Err(Arc::try_unwrap(message)
                .map_or_else(|shared| shared.payload.clone(), |m| m.payload));
        }
        log.next_offset += 1;
        let mut ack_now = acked;
        if let Some(payload) = retained {
            let entry = Retained { offset, published_ms: self.wall_ms(), payload };
            if let Some(storage) = &shared.storage {
                // Sent under the channel's lock, so the storage thread sees each channel's
                // records in offset order.
                let ack = (acked && storage.fsync_always).then(|| {
                    ack_now = false;
                    AckTarget { worker: self.id, key, serial: self.conns[key].serial }
                });
                let append = Append {
                    channel: channel.name.clone(),
                    epoch: log.epoch,
                    record: entry.clone(),
                    ack,
                };
                storage.depth.fetch_add(1, Ordering::Relaxed);
                if storage.sender.send(StoreOp::Append(append)).is_err() {
                    warn!(
                        "worker {}: the storage thread is gone; offset {offset} is not on disk",
                        self.id
                    );
                }
            }
            let dropped = registry.retain(channel, &mut log, entry);
            WorkerCounters::add(&shared.counters[self.id].history_dropped, dropped as u64);
        }
        drop(log);
        let evicted = registry.after_publish();
        WorkerCounters::add(&shared.counters[self.id].history_dropped, evicted as u64);
        self.published = true;
        WorkerCounters::add(&self.counters().messages_in, 1);
        if ack_now {
            let frame = self.conns[key].reply_format().encode_ack(&channel.name, offset);
            self.reply(key, frame);
        } else if let Some(Web::Http { awaiting_ack, .. }) = self.conns[key].web.as_deref_mut() {
            *awaiting_ack = acked;
        }
        Ok(())
    }

    /// Sends the acknowledgements the storage thread confirmed (`--fsync always`), or refuses
    /// them with `ERR 500` when their record could not be made durable.
    fn deliver_acks(&mut self) {
        while let Ok(persisted) = self.acks.try_recv() {
            let target = persisted.target;
            let Some(conn) = self.conns.get_mut(target.key) else { continue };
            if conn.serial != target.serial || !conn.is_open() {
                continue;
            }
            if let Some(Web::Http { awaiting_ack: awaiting @ true, .. }) = conn.web.as_deref_mut() {
                *awaiting = false;
                self.unblocked.push(target.key);
            }
            match persisted.result {
                Ok(()) => {
                    let frame =
                        conn.reply_format().encode_ack(&persisted.channel, persisted.offset);
                    self.reply(target.key, frame);
                }
                Err(why) => self.refuse(target.key, ErrorCode::StorageFailed, &why),
            }
        }
    }

    fn retry_stalled(&mut self) {
        if self.stalled.is_empty() {
            return;
        }
        // Our own cursor may be what holds the ring full.
        self.drain_ring();
        for key in std::mem::take(&mut self.stalled) {
            let Some(conn) = self.conns.get_mut(key) else { continue };
            let Some(stalled) = conn.stalled.take() else { continue };
            let StalledPublish { channel, payload, acked } = *stalled;
            if let Err(payload) = self.publish(key, &channel, payload, acked) {
                self.conns[key].stalled =
                    Some(Box::new(StalledPublish { channel, payload, acked }));
                self.stalled.push(key);
                continue;
            }
            // Published: carry on with the input that waited behind it, then with the socket.
            self.continue_input(key);
        }
    }

    // ---- fan-out ----

    /// Takes up to `DRAIN_MAX_MESSAGES` from the ring, gathers them per channel and format, and
    /// queues each channel's batch to its local subscribers as one shared `Bytes` per format.
    fn drain_ring(&mut self) {
        let mut taken = 0;
        let mut batched_bytes = 0;
        // A turn's batch goes to each subscriber as one frame, so it must stay well under the
        // queue cap, or a burst would look like a slow consumer.
        let max_bytes = DRAIN_MAX_BYTES.min(self.shared.config.write_queue_cap_bytes / 4);
        let mut largest_payload = 0;
        // A broadcast (`*`) goes to every connection that streams: encode it in the formats
        // this worker's connections use (the per-format gauges count them), not in all of them.
        let counters = &self.shared.counters[self.id];
        let broadcast_formats = Format::ALL.map(|format| {
            u32::from(format.streams() && counters.by_format(format).load(Ordering::Relaxed) > 0)
        });
        while taken < DRAIN_MAX_MESSAGES && batched_bytes < max_bytes {
            // Big messages are taken one at a time so that the byte budget holds.
            let room = max_bytes - batched_bytes;
            let chunk = if largest_payload > 0 && largest_payload * DRAIN_CHUNK_MESSAGES < room {
                DRAIN_CHUNK_MESSAGES
            } else {
                1
            };
            let Worker { consumer, index, batches, batch_of_channel, .. } = self;
            let n = consumer.poll(chunk, |message: Item| {
                largest_payload =
                    largest_payload.max(message.payload.len() + message.channel.name.len());
                let (per_format, catching_up) = match message.channel.kind {
                    ChannelKind::Broadcast => (broadcast_formats, false),
                    _ => match index.get(message.channel.id) {
                        Some(local) => (local.per_format, !local.catching_up.is_empty()),
                        None => return,
                    },
                };
                let slot = *batch_of_channel.entry(message.channel.id).or_insert_with(|| {
                    batches.push(ChannelBatch {
                        channel: message.channel.clone(),
                        frames: Default::default(),
                        messages: 0,
                        last_offset: 0,
                        items: Vec::new(),
                    });
                    batches.len() - 1
                });
                let batch = &mut batches[slot];
                for format in Format::ALL {
                    if per_format[format as usize] > 0 {
                        let out = &mut batch.frames[format as usize];
                        let before = out.len();
                        format.put_message(
                            out,
                            &message.channel.name,
                            message.channel.epoch,
                            message.offset,
                            &message.payload,
                        );
                        batched_bytes += out.len() - before;
                    }
                }
                batch.messages += 1;
                batch.last_offset = message.offset;
                if catching_up {
                    batch.items.push(message);
                }
            });
            if n == 0 {
                break;
            }
            taken += n;
        }
        if self.batches.is_empty() {
            return;
        }
        self.batch_of_channel.clear();
        let mut batches = std::mem::take(&mut self.batches);
        for batch in batches.drain(..) {
            self.fan_out(batch);
        }
        self.batches = batches;
        self.close_slow();
    }

    fn fan_out(&mut self, batch: ChannelBatch) {
        let frames = batch.frames.map(BytesMut::freeze);
        let cap = self.shared.config.write_queue_cap_bytes;
        let Worker { conns, index, out, sse_delivered, .. } = self;
        let mut deliveries = 0u64;
        let mut enqueue = |key: usize, conn: &mut Conn| {
            let Some(format) = conn.format else { return };
            if out.enqueue(key, conn, frames[format as usize].clone(), cap) {
                deliveries += 1;
                if format == Format::Sse {
                    sse_delivered.push(key);
                }
            }
        };
        if batch.channel.kind == ChannelKind::Broadcast {
            let receives = |conn: &Conn| {
                conn.is_open() && conn.format.is_some_and(Format::streams) && !conn.is_echo()
            };
            for (key, conn) in conns.iter_mut().filter(|(_, conn)| receives(conn)) {
                enqueue(key, conn);
            }
        } else if let Some(local) = index.get(batch.channel.id) {
            for &key in &local.subscribers {
                enqueue(key, &mut conns[key]);
            }
        }
        WorkerCounters::add(
            &self.shared.counters[self.id].messages_out,
            deliveries * batch.messages,
        );
        for key in std::mem::take(&mut self.sse_delivered) {
            self.sse_sent(key, &batch.channel, batch.last_offset, false);
        }
        if !batch.items.is_empty() {
            self.fan_out_catching_up(&batch.channel, &batch.items);
        }
    }

    /// Delivers a batch to subscribers that just finished a replay: only the messages after the
    /// offset their replay reached (earlier ones went out from history), each encoded for them
    /// alone. Once the ring has moved past that offset they join the shared fan-out.
    fn fan_out_catching_up(&mut self, channel: &Arc<Channel>, items: &[Item]) {
        let channel_id = channel.id;
        let Some(local) = self.index.get(channel_id) else { return };
        let catching_up = local.catching_up.clone();
        let last_in_batch = items.last().map_or(0, |m| m.offset);
        let cap = self.shared.config.write_queue_cap_bytes;
        for (key, replayed) in catching_up {
            let Some(conn) = self.conns.get_mut(key) else { continue };
            let Some(format) = conn.format else { continue };
            if conn.polling() {
                let fresh: Vec<&Item> = items.iter().filter(|m| m.offset > replayed).collect();
                if !fresh.is_empty() {
                    self.answer_poll(key, &fresh);
                }
                continue;
            }
            let mut out = BytesMut::new();
            let mut count = 0;
            for message in items.iter().filter(|m| m.offset > replayed) {
                format.put_message(
                    &mut out,
                    &message.channel.name,
                    message.channel.epoch,
                    message.offset,
                    &message.payload,
                );
                count += 1;
            }
            if count > 0 {
                if !self.out.enqueue(key, conn, out.freeze(), cap) {
                    continue;
                }
                WorkerCounters::add(&self.shared.counters[self.id].messages_out, count);
                if format == Format::Sse {
                    self.sse_sent(key, channel, last_in_batch, false);
                }
            }
            if last_in_batch > replayed {
                self.index.finish_catching_up(channel_id, key);
                let position = self.index.add(channel_id, key, format);
                let subscriptions = &mut self.conns[key].subscriptions;
                if let Some(entry) = subscriptions.iter_mut().find(|s| s.channel.id == channel_id) {
                    entry.position = position;
                }
            }
        }
    }

    // ---- replay from history ----

    /// Answers a resuming subscribe: a HIST frame with the log's epoch and bounds, then (unless a
    /// strict resume cannot be honoured) a replay paced by the write queue, then live delivery.
    fn start_replay(&mut self, key: usize, channel: Arc<Channel>, resume: protocol::Resume) {
        let registry = &self.shared.channels;
        let (epoch, first, last, status) = {
            let mut log = channel.lock_log();
            // Age retention also applies to channels nobody publishes to any more.
            let dropped = log.trim(self.wall_ms(), &registry.history, &registry.retained);
            WorkerCounters::add(&self.shared.counters[self.id].history_dropped, dropped as u64);
            let status = log.resume_status(resume.after, resume.epoch);
            (log.epoch, log.first_retained(), log.last_offset(), status)
        };
        // `after = u64::MAX` means "from now": nothing to replay, but the client learns the
        // epoch and latest offset it will resume from after a reconnect.
        let (resume, status) = if resume.after == u64::MAX {
            (protocol::Resume { after: last, ..resume }, ResumeStatus::Ok)
        } else {
            (resume, status)
        };
        let format = self.conns[key].reply_format();
        let history =
            protocol::HistoryStatus { channel: &channel.name, epoch, first, last, status };
        self.reply(key, format.encode_history(&history));
        if status != ResumeStatus::Ok {
            WorkerCounters::add(&self.counters().offsets_expired, 1);
            if resume.strict {
                let why = format!(
                    "cannot resume {} after offset {}: {} (earliest retained {first}, latest {last}, epoch {epoch:016x})",
                    String::from_utf8_lossy(&channel.name),
                    resume.after,
                    if status == ResumeStatus::Expired { "messages expired" } else { "another epoch" }
                );
                return self.refuse(key, ErrorCode::Gone, &why);
            }
        }
        if !self.conns.get(key).is_some_and(Conn::is_open) {
            return;
        }
        WorkerCounters::add(&self.counters().replays_served, 1);
        let after = if status == ResumeStatus::Ok { resume.after } else { first - 1 };
        self.conns[key].replay = Some(Box::new(Replay { channel, after }));
        self.pump_replay(key);
    }

    /// Queues more of a replay while the connection's queue is below a quarter of its cap.
    /// Returns true when the replay finished (the subscription is live).
    fn pump_replay(&mut self, key: usize) -> bool {
        let low_water = self.shared.config.write_queue_cap_bytes / 4;
        for _ in 0..16 {
            let Some(conn) = self.conns.get(key) else { return false };
            let Some(replay) = conn.replay.as_ref().filter(|_| conn.is_open()) else {
                return false;
            };
            if conn.queue.queued_bytes() >= low_water {
                return false;
            }
            let (channel, after, format) =
                (replay.channel.clone(), replay.after, conn.reply_format());
            let mut page = std::mem::take(&mut self.replay_page);
            page.clear();
            let (epoch, first, last) = {
                let log = channel.lock_log();
                log.read_after(after, 1024, (low_water / 2).max(1), &mut page);
                (log.epoch, log.first_retained(), log.last_offset())
            };
            let caught_up = page.last().is_none_or(|m| m.offset == last);
            if page.first().map_or(after < last, |m| m.offset != after + 1) {
                // Retention dropped messages while this client was catching up: say so, go on.
                WorkerCounters::add(&self.counters().offsets_expired, 1);
                let status = ResumeStatus::Expired;
                let history =
                    protocol::HistoryStatus { channel: &channel.name, epoch, first, last, status };
                let notice = format.encode_history(&history);
                self.reply(key, notice);
            }
            if !page.is_empty() {
                let mut out = BytesMut::new();
                for message in &page {
                    format.put_message(
                        &mut out,
                        &channel.name,
                        channel.epoch,
                        message.offset,
                        &message.payload,
                    );
                }
                WorkerCounters::add(&self.counters().replayed_messages, page.len() as u64);
                let reached = page.last().map_or(after, |m| m.offset);
                let Some(conn) = self.conns.get_mut(key) else { return false };
                // Below the low-water mark, so this never passes the cap.
                self.out.enqueue(key, conn, out.freeze(), usize::MAX);
                if let Some(replay) = conn.replay.as_mut() {
                    replay.after = reached;
                }
                if format == Format::Sse {
                    self.sse_sent(key, &channel, reached, false);
                }
            }
            self.replay_page = page;
            if caught_up {
                if !self.conns.get(key).is_some_and(Conn::is_open) {
                    return false;
                }
                let conn = &mut self.conns[key];
                conn.replay = None;
                // Everything up to `last` went out from history; the ring may still carry some
                // of it to this worker, so the subscriber skips up to there (`catching_up`).
                self.index.add_catching_up(channel.id, key, last);
                conn.push_subscription(Subscription {
                    channel: channel.clone(),
                    position: CATCHING_UP,
                });
                self.acknowledge(key, Ack::Subscribe, &channel.name);
                if format == Format::Sse {
                    // Live from `last` on: tell the browser, so that a reconnect before the
                    // next message still resumes from here.
                    self.sse_sent(key, &channel, last, true);
                }
                return true;
            }
        }
        self.replaying.push(key);
        false
    }

    /// Continues replays whose queues drained; a finished one lets the connection's waiting input
    /// be processed, as after a stall.
    fn pump_replays(&mut self) {
        for key in std::mem::take(&mut self.replaying) {
            if self.conns.get(key).is_some_and(|c| c.replay.is_some()) && self.pump_replay(key) {
                self.continue_input(key);
            }
        }
    }

    fn close_slow(&mut self) {
        let cap = self.shared.config.write_queue_cap_bytes;
        for key in std::mem::take(&mut self.out.slow) {
            if self.conns.get(key).is_some_and(Conn::is_open) {
                WorkerCounters::add(&self.counters().slow_consumer_closes, 1);
                warn!("worker {}: connection {key} is a slow consumer (write queue over {cap} bytes); closing", self.id);
                let reason = format!("slow consumer: write queue over {cap} bytes");
                self.begin_close(key, Some((ErrorCode::SlowConsumer, &reason)), true);
            }
        }
    }

    // ---- writing ----

    fn flush_dirty(&mut self) {
        let window = self.coalesce_ms();
        for key in std::mem::take(&mut self.out.dirty) {
            if window > 0 && self.holds_back(key, window) {
                self.deferred.push(key);
            } else {
                self.flush(key);
            }
        }
    }

    fn coalesce_ms(&self) -> u32 {
        if self.state != RunState::Running {
            return 0;
        }
        self.shared.config.coalesce.as_millis().min(10_000) as u32
    }

    /// True when `key` was written to less than `window` ago and has nothing urgent: its new
    /// frames wait, so that a busy subscriber gets one write per window instead of one per turn.
    fn holds_back(&self, key: usize, window: u32) -> bool {
        self.conns.get(key).is_some_and(|conn| {
            conn.is_open()
                && !conn.urgent
                && conn.writable
                && self.now_ms.wrapping_sub(conn.last_write_ms) < window
        })
    }

    /// Flushes held-back connections whose window has passed; returns the milliseconds until
    /// the next one is due.
    fn flush_deferred(&mut self) -> Option<u32> {
        if self.deferred.is_empty() {
            return None;
        }
        let window = self.coalesce_ms();
        let mut next_due: Option<u32> = None;
        for key in std::mem::take(&mut self.deferred) {
            if window > 0 && self.holds_back(key, window) {
                let due = window - self.now_ms.wrapping_sub(self.conns[key].last_write_ms);
                next_due = Some(next_due.map_or(due, |d| d.min(due)));
                self.deferred.push(key);
            } else {
                self.flush(key);
            }
        }
        next_due
    }

    fn flush(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        conn.dirty = false;
        if conn.writable && !conn.queue.is_empty() {
            match conn.queue.write_to(&mut conn.stream) {
                Ok(n) => {
                    conn.last_write_ms = self.now_ms;
                    conn.urgent = false;
                    if conn.replay.is_some()
                        && conn.queue.queued_bytes() < self.shared.config.write_queue_cap_bytes / 4
                    {
                        self.replaying.push(key);
                    }
                    self.out.queued_bytes -= n;
                    WorkerCounters::add(&self.shared.counters[self.id].bytes_out, n as u64);
                    if !conn.queue.is_empty() {
                        conn.writable = false;
                    }
                }
                Err(e) if would_block(&e) => conn.writable = false,
                Err(e) => {
                    self.close_now(key, &format!("write failed: {e}"));
                    return;
                }
            }
        }
        if let Phase::Closing { write_shut: write_shut @ false, wait_for_eof, .. } = &mut conn.phase
        {
            if conn.queue.is_empty() {
                *write_shut = true;
                // Half-close: the peer reads everything, then sees EOF.
                if conn.stream.shutdown(Shutdown::Write).is_err() {
                    self.close_now(key, "shutdown failed");
                } else if !*wait_for_eof {
                    // Close as soon as nothing unread is left (read_ready sees WouldBlock).
                    conn.readable = true;
                    self.read_ready(key);
                }
            }
        }
    }

    // ---- closing ----

    /// Stops taking commands and delivering messages to `key`, optionally sends an error frame,
    /// and lets the queue drain before the socket closes (see `Phase::Closing`).
    fn begin_close(&mut self, key: usize, error: Option<(ErrorCode, &str)>, discard_queue: bool) {
        if !self.conns.get(key).is_some_and(Conn::is_open) {
            return;
        }
        self.detach_all(key);
        let linger = match self.state {
            RunState::Flushing { deadline_ms } => deadline_ms,
            _ => self.now_ms.wrapping_add(CLOSE_LINGER_MS),
        };
        let conn = &mut self.conns[key];
        if discard_queue {
            self.out.queued_bytes -= conn.queue.discard_unstarted();
        }
        let wait_for_eof = self.state == RunState::Running;
        conn.phase = Phase::Closing { deadline_ms: linger, write_shut: false, wait_for_eof };
        conn.input = None;
        self.out.mark_dirty(key, conn);
        if let Some((code, reason)) = error {
            // The last frame this client gets: past the cap if need be (the queue was just
            // emptied of what had not started, when this is a slow consumer).
            let frame = conn.reply_format().encode_error(code, reason);
            self.out.enqueue(key, conn, frame, usize::MAX);
        }
        if let Some(Web::WebSocket { close_sent: close_sent @ false, .. }) = conn.web.as_deref_mut()
        {
            // A WebSocket ends with a close frame; its code says why.
            *close_sent = true;
            let (status, reason) = match error {
                Some((code, reason)) => (web::close_status(code), reason),
                None => (websocket::status::GOING_AWAY, "server shutting down"),
            };
            let frame = websocket::encode_close(status, reason);
            self.out.enqueue(key, conn, frame, usize::MAX);
        }
    }

    /// Unsubscribes from everything, releases the name, drops a stalled publish.
    fn detach_all(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        conn.stalled = None;
        conn.replay = None;
        if let Some(name) = conn.name() {
            self.shared.names.release(name);
        }
        for subscription in std::mem::take(&mut conn.subscriptions) {
            self.detach_one(key, subscription);
        }
    }

    fn close_now(&mut self, key: usize, why: &str) {
        if !self.conns.contains(key) {
            return;
        }
        if self.conns[key].is_open() {
            self.detach_all(key);
        }
        let conn = self.conns.remove(key);
        if let Some(format) = conn.format {
            self.counters().by_format(format).fetch_sub(1, Ordering::Relaxed);
        }
        self.out.queued_bytes -= conn.queue.queued_bytes();
        self.shared.open_connections.fetch_sub(1, Ordering::AcqRel);
        debug!("worker {}: connection {key} closed: {why}", self.id);
        // Dropping the stream closes the socket, which also removes it from epoll.
    }

    // ---- timers and shutdown ----

    fn housekeeping(&mut self) {
        let config = &self.shared.config;
        let ping_after = config.ping_interval.as_millis().min(u32::MAX as u128 / 4) as u32;
        let stale_after = ping_after
            .saturating_add(config.ping_timeout.as_millis().min(u32::MAX as u128 / 4) as u32);
        let heartbeat_after = ping_after.min(SSE_HEARTBEAT_MS);
        let mut expired = Vec::new();
        let mut stale = Vec::new();
        let mut ping = Vec::new();
        let mut heartbeat = Vec::new();
        let mut polls_due = Vec::new();
        let mut idle_http = Vec::new();
        let head_deadline = config.http_head_timeout.as_millis().min(u32::MAX as u128 / 4) as u32;
        let mut slow_heads = Vec::new();
        for (key, conn) in self.conns.iter() {
            match conn.phase {
                Phase::Closing { deadline_ms, .. } => {
                    if reached(self.now_ms, deadline_ms) {
                        expired.push(key);
                    }
                }
                Phase::Open if conn.format == Some(Format::Sse) => {
                    // A stream's client cannot answer; a heartbeat comment keeps proxies from
                    // closing it, and a dead client shows up as a failed write.
                    if self.now_ms.wrapping_sub(conn.last_write_ms) >= heartbeat_after {
                        heartbeat.push(key);
                    }
                }
                Phase::Open if conn.format == Some(Format::Http) => match conn.web.as_deref() {
                    Some(Web::Http { poll: Some(wait), .. }) => {
                        if reached(self.now_ms, wait.deadline_ms) {
                            polls_due.push(key);
                        }
                    }
                    Some(Web::Http { head_since_ms: Some(since), .. })
                        if self.now_ms.wrapping_sub(*since) >= head_deadline =>
                    {
                        slow_heads.push(key);
                    }
                    _ => {
                        if self.now_ms.wrapping_sub(conn.last_input_ms) >= ping_after {
                            idle_http.push(key);
                        }
                    }
                },
                Phase::Open => {
                    let idle = self.now_ms.wrapping_sub(conn.last_input_ms);
                    if conn.ping_sent && idle >= stale_after {
                        stale.push(key);
                    } else if !conn.ping_sent && idle >= ping_after {
                        ping.push(key);
                    }
                }
            }
        }
        for key in expired {
            self.close_now(key, "linger deadline passed");
        }
        for key in stale {
            WorkerCounters::add(&self.counters().stale_closes, 1);
            debug!("worker {}: connection {key} is stale (no answer to PING)", self.id);
            self.begin_close(
                key,
                Some((ErrorCode::StaleConnection, "stale connection: no answer to PING")),
                false,
            );
        }
        for key in ping {
            self.conns[key].ping_sent = true;
            let frame = self.conns[key].reply_format().ping();
            self.reply(key, frame);
        }
        for key in heartbeat {
            self.reply(key, Format::Sse.ping());
        }
        for key in polls_due {
            self.answer_poll(key, &[]);
        }
        for key in slow_heads {
            WorkerCounters::add(&self.counters().http_head_timeouts, 1);
            let why = format!("request head not complete within {head_deadline} ms");
            self.http_fatal(key, ErrorCode::StaleConnection, &why);
        }
        for key in idle_http {
            debug!("worker {}: closing idle HTTP connection {key}", self.id);
            self.begin_close(key, None, false);
        }
        self.flush_dirty();
    }

    fn publish_gauges(&self) {
        let counters = self.counters();
        counters.connections_current.store(self.conns.len() as u64, Ordering::Relaxed);
        counters.queued_bytes.store(self.out.queued_bytes as u64, Ordering::Relaxed);
        counters.queue_high_water_bytes.store(self.out.high_water as u64, Ordering::Relaxed);
    }

    /// Steps the shutdown protocol; returns false when the worker should exit.
    fn advance_shutdown(&mut self) -> bool {
        match self.state {
            RunState::Running => {
                if self.shared.shutdown.load(Ordering::Acquire) {
                    if let Some(mut listener) = self.listener.take() {
                        let _ = self.poll.registry().deregister(&mut listener);
                    }
                    for key in std::mem::take(&mut self.stalled) {
                        if let Some(conn) = self.conns.get_mut(key) {
                            conn.stalled = None;
                        }
                    }
                    self.pending_reads.clear();
                    self.state = RunState::Draining;
                    // Release: everything we published happens-before a peer sees the count.
                    self.shared.quiesced.fetch_add(1, Ordering::AcqRel);
                    self.shared.wake_others(self.id);
                }
                true
            }
            RunState::Draining => {
                let everyone_stopped =
                    self.shared.quiesced.load(Ordering::Acquire) == self.shared.config.workers;
                if everyone_stopped && self.consumer.caught_up() {
                    let deadline_ms = self
                        .now_ms
                        .wrapping_add(self.shared.config.shutdown_grace.as_millis() as u32);
                    self.state = RunState::Flushing { deadline_ms };
                    let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
                    for key in keys {
                        self.begin_close(key, None, false);
                    }
                    self.flush_dirty();
                }
                true
            }
            RunState::Flushing { deadline_ms } => {
                !self.conns.is_empty() && !reached(self.now_ms, deadline_ms)
            }
        }
    }
}
