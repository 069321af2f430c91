//! A connection's life on the worker: accepting it, the one place it closes, the timers that
//! watch it (keepalive, stale peers, lingering closes, long-poll and request-head deadlines),
//! and the worker's own shutdown.
//!
//! # States of a connection (`conn::Phase`)
//!
//! ```text
//!   accept ──► Open ◄─────────────────────────────┐
//!               │ a command must wait:            │ the wait is over (`end_wait`): the input
//!               │  publish finds the ring full    │ that waited is parsed, then the socket
//!               │    (RingRoom), a resume replays │ is read again (`resume_input`)
//!               │    history (Replay), a long-    │
//!               │    poll is held (Poll), an HTTP │
//!               │    publish awaits fsync or      │
//!               │    Redis (DurableAck); in a     │
//!               │    cluster, a subscribe awaits  │
//!               │    its channel (Join) or its    │
//!               │    pattern (PatternJoin), a     │
//!               │    NAME its lease (NameClaim);  │
//!               │    its own replies back up      │
//!               │    unread (Drain)               │
//!               ▼                                 │
//!           Waiting(Wait) ────────────────────────┘
//!               │
//!   Open or Waiting ── Close::Linger: protocol error, refused reply (slow consumer), stale,
//!               │      idle HTTP, Connection: close, WebSocket close, server shutdown
//!               ▼
//!           Closing { deadline, write_shut, wait_for_eof }
//!               │ queue flushed ─► shutdown(Write), write_shut
//!               │ peer's EOF, a read or write error, the deadline, or (unless wait_for_eof)
//!               │ flushed with nothing unread
//!               ▼
//!           removed  ◄── Close::Now from any state (the peer's EOF, a failed read or write)
//! ```
//!
//! A subscription's own state (`conn::Membership`): `Live(position)` in the channel's shared
//! fan-out, or `CatchingUp` after a replay or while a long-poll is held, until the ring passes
//! the offset it already has.
//!
//! # Invariants
//!
//! 1. A connection leaves the slab only in `Worker::close`, called by `close_on_error` at the top of the
//!    loop or by a loop over many connections (slow consumers, timers, shutdown); never inside a
//!    handler. A handler may therefore index `conns[key]` for its whole run, and nothing looks a
//!    connection up again after calling a handler.
//! 2. Before a connection's phase becomes `Closing` or it is removed, it is detached: out of
//!    every index list (shared and catching-up), its name released, its wait (and a stalled
//!    publish) dropped. Fan-out never queues to a closing or removed connection.
//! 3. Only an `Open` connection's input is parsed. A `Waiting` one's input stays in
//!    `Conn::input`, in order, and the end of the wait parses it before the socket is read again:
//!    commands take effect in the order they were sent.
//! 4. A connection waits for one thing at a time: input is not parsed while it waits, so no
//!    second wait can begin.
//! 5. Work noted for later (pending reads, stalled publishes, unblocked input, replays to
//!    continue, deferred and dirty flushes, SSE cursors, durable acknowledgements) names a
//!    connection by key and serial; a note whose connection is gone resolves to nothing, even
//!    when a new connection took its key.
//! 6. A subscription is `Live(p)` exactly when the channel's index lists the connection at
//!    position `p`, and `CatchingUp` exactly when the index's catching-up list holds it; the two
//!    change together (`attach`, `detach_one`, `join_catching_up`, the end of a catch-up).
//! 7. After `Open` ends, at most two more frames are queued: the error that says why and, on a
//!    WebSocket, a close frame. A closing connection is removed by its deadline at the latest.
//! 8. `open_connections` counts a connection from its admission to its removal, once, and so
//!    does the count of its source address (with `--max-connections-per-ip`); the per-format
//!    gauges follow `set_format` and removal.
//! 9. The worker: `Running` → `Draining` (no accepts, no reads from open connections, stalled
//!    publishes dropped, the ring drained until every worker stopped publishing) → `Flushing`
//!    (every connection begins closing without an error; queues go out) → exit, when no
//!    connection is left or the grace deadline passes.
//! 10. With access control on, a connection without permissions (no token, no anonymous grant)
//!     holds at most one request of the strangers' budget (`Worker::input_limit`, refused from
//!     the length a frame announces) and receives nothing: no broadcast, no inbox. Whatever its
//!     permissions, the unparsed input a connection holds is one incomplete frame within its
//!     limit, plus at most one read while it waits (`input_high_water_bytes`; the `connection`
//!     fuzz target checks it), and each held byte is parsed once (`Worker::may_complete`, RESP's
//!     `CommandParser`).

use std::borrow::Cow;
use std::io::{self, Write};
use std::net::{IpAddr, Shutdown};
use std::sync::atomic::Ordering;

use log::{debug, warn};
use mio::net::TcpStream;
use mio::{Interest, Token};

use super::{reached, would_block, Worker};
use crate::protocol::{ErrorCode, Format};
use crate::server::conn::{AfterJoin, Conn, Phase, Wait};
use crate::server::stats::WorkerCounters;

/// Connections accepted per turn before other work gets a go.
const ACCEPT_BATCH: usize = 256;
/// How long a connection closed for an error may take to read its error frame.
const CLOSE_LINGER_MS: u32 = 5_000;

/// Where the worker is in the server's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RunState {
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

/// How a connection ends. Handlers return it; `Worker::close` alone acts on it.
#[derive(Debug)]
pub(super) enum Close {
    /// The socket is finished (the peer's EOF, a failed read or write, the linger deadline):
    /// removed at once.
    Now(Cow<'static, str>),
    /// Stop taking commands and receiving messages, queue `error` if any, flush, half-close,
    /// then remove on the peer's EOF or the linger deadline (`Phase::Closing`).
    Linger {
        /// The error frame that says why (and, on a WebSocket, the close status).
        error: Option<(ErrorCode, Cow<'static, str>)>,
        /// Drop the frames that have not started going out (a slow consumer's backlog).
        discard_queue: bool,
        /// The peer already said goodbye (WebSocket close): do not wait for its EOF.
        peer_done: bool,
    },
}

impl Close {
    /// The socket is finished.
    pub(super) fn now(why: impl Into<Cow<'static, str>>) -> Self {
        Close::Now(why.into())
    }

    /// An error frame, then a lingering close; replies already queued still go out.
    pub(super) fn error(code: ErrorCode, reason: impl Into<Cow<'static, str>>) -> Self {
        Close::Linger { error: Some((code, reason.into())), discard_queue: false, peer_done: false }
    }

    /// A lingering close without an error frame (a last response, an idle connection, shutdown).
    pub(super) fn quietly() -> Self {
        Close::Linger { error: None, discard_queue: false, peer_done: false }
    }

    /// After the peer's WebSocket close: ours is queued; close once it is out.
    pub(super) fn after_goodbye() -> Self {
        Close::Linger { error: None, discard_queue: false, peer_done: true }
    }
}

impl Worker {
    // ---- accepting ----

    pub(super) fn accept(&mut self) {
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
                Ok((stream, peer)) => self.admit(stream, peer.ip()),
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

    fn admit(&mut self, mut stream: TcpStream, peer: IpAddr) {
        let count_peer = self.policy.limits.connections_per_ip > 0;
        if count_peer && !self.admit_peer(peer) {
            WorkerCounters::add(&self.counters().limited_connections_per_ip, 1);
            debug!("worker {}: refusing a connection from {peer}: too many from there", self.id);
            let refusal = Format::Text
                .encode_error(ErrorCode::Unavailable, "too many connections from your address");
            let _ = stream.write(&refusal);
            let _ = stream.shutdown(Shutdown::Write);
            return;
        }
        let peer_ip = count_peer.then_some(peer);
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
            if let Some(ip) = peer_ip {
                self.release_peer(ip);
            }
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
            if let Some(ip) = peer_ip {
                self.release_peer(ip);
            }
            return;
        }
        self.next_serial = self.next_serial.wrapping_add(1);
        let mut conn = Conn::new(stream, self.now_ms, self.next_serial);
        conn.peer_ip = peer_ip;
        // A fresh socket has an empty send buffer: replies need not wait for the first event.
        conn.writable = true;
        let key = entry.key();
        entry.insert(conn);
        self.rearm(key);
        WorkerCounters::add(&self.counters().connections_total, 1);
    }

    // ---- closing ----

    /// Closes connection `key` if a step for it says so (see invariant 1).
    pub(super) fn close_on_error<T>(&mut self, key: usize, result: Result<T, Close>) {
        if let Err(close) = result {
            self.close(key, close);
        }
    }

    /// The one place a connection closes. A lingering close also reads what the peer already
    /// sent (discarding it), so that an EOF behind it is seen now.
    pub(super) fn close(&mut self, key: usize, close: Close) {
        if !self.conns.contains(key) {
            return;
        }
        match close {
            Close::Now(why) => self.remove(key, &why),
            Close::Linger { error, discard_queue, peer_done } => {
                self.begin_close(key, error, discard_queue, peer_done);
                if self.conns[key].readable {
                    // A closing connection's input is discarded: this can only end in `Now`.
                    let result = self.read_ready(key);
                    self.close_on_error(key, result);
                }
            }
        }
    }

    /// Stops taking commands and delivering messages to `key`, optionally sends an error frame,
    /// and lets the queue drain before the socket closes (see `Phase::Closing`).
    fn begin_close(
        &mut self,
        key: usize,
        error: Option<(ErrorCode, Cow<'static, str>)>,
        discard_queue: bool,
        peer_done: bool,
    ) {
        if !self.conns[key].is_open() {
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
        let wait_for_eof = self.state == RunState::Running && !peer_done;
        conn.phase = Phase::Closing { deadline_ms: linger, write_shut: false, wait_for_eof };
        conn.input = None;
        self.rearm(key);
        let conn = &mut self.conns[key];
        self.out.mark_dirty(key, conn);
        if let Some((code, reason)) = &error {
            // The last frame this client gets: past the cap if need be (the queue was just
            // emptied of what had not started, when this is a slow consumer).
            let frame = conn.reply_format().encode_error(*code, reason);
            self.out.enqueue(key, conn, frame, usize::MAX);
        }
        // A WebSocket ends with a close frame; its code says why.
        let why = error.as_ref().map(|(code, reason)| (*code, &reason[..]));
        if let Some(goodbye) = conn.session.as_deref_mut().and_then(|s| s.goodbye(why)) {
            self.out.enqueue(key, conn, goodbye, usize::MAX);
        }
    }

    /// Unsubscribes from everything, releases the name, ends any wait (a stalled publish is
    /// dropped, a replay or long-poll ends).
    fn detach_all(&mut self, key: usize) {
        // A name claimed while its inbox waited to be served (cluster mode) has no
        // subscription yet; one whose lease Redis has not granted yet is released here, and its
        // lease given back when the grant comes (`name_claimed`).
        match self.conns[key].end_wait() {
            Some(Wait::Join(joining)) if matches!(joining.then, AfterJoin::Inbox) => {
                self.release_name(&joining.channel.name[1..]);
            }
            Some(Wait::NameClaim(inbox)) => self.shared.names.release(&inbox.name[1..]),
            _ => {}
        }
        if let Some(name) = self.conns[key].name().map(<[u8]>::to_vec) {
            self.release_name(&name);
        }
        let conn = &mut self.conns[key];
        let patterns = std::mem::take(&mut conn.patterns);
        for subscription in std::mem::take(&mut conn.subscriptions) {
            self.detach_one(key, subscription);
        }
        for pattern in patterns {
            self.detach_pattern(key, pattern);
        }
    }

    /// Removes the connection; dropping its socket closes it (and takes it out of epoll).
    fn remove(&mut self, key: usize, why: &str) {
        if self.conns[key].is_open() {
            self.detach_all(key);
        }
        let conn = self.conns.remove(key);
        if let Some(format) = conn.format {
            self.counters().by_format(format).fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(tls) = &conn.tls {
            self.counters().connections_tls.fetch_sub(1, Ordering::Relaxed);
            // A handshake that neither finished nor failed: the client went away (EOF, reset).
            if tls.is_handshaking() && !tls.failed() && self.state == RunState::Running {
                WorkerCounters::add(self.counters().tls_failure("eof"), 1);
            }
        }
        self.out.queued_bytes -= conn.queue.queued_bytes();
        self.shared.open_connections.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = conn.peer_ip {
            self.release_peer(ip);
        }
        debug!("worker {}: connection {key} closed: {why}", self.id);
    }

    /// Every connection, at the end of the worker's life.
    pub(super) fn close_all(&mut self) {
        for key in self.conns.iter().map(|(key, _)| key).collect::<Vec<_>>() {
            self.remove(key, "server shut down");
        }
    }

    pub(super) fn publish_gauges(&self) {
        let counters = self.counters();
        counters.connections_current.store(self.conns.len() as u64, Ordering::Relaxed);
        counters.queued_bytes.store(self.out.queued_bytes as u64, Ordering::Relaxed);
        counters.queue_high_water_bytes.store(self.out.high_water as u64, Ordering::Relaxed);
        counters.input_high_water_bytes.store(self.input_high_water as u64, Ordering::Relaxed);
        let patterns = self.patterns.subscriptions() as u64;
        counters.pattern_subscriptions.store(patterns, Ordering::Relaxed);
    }

    // ---- shutdown ----

    /// Steps the shutdown protocol (invariant 9); returns false when the worker should exit.
    pub(super) fn advance_shutdown(&mut self) -> bool {
        match self.state {
            RunState::Running => {
                if self.shared.shutdown.load(Ordering::Acquire) {
                    if let Some(mut listener) = self.listener.take() {
                        let _ = self.poll.registry().deregister(&mut listener);
                    }
                    for noted in std::mem::take(&mut self.stalled) {
                        let Some(key) = self.resolve(noted) else { continue };
                        if matches!(self.conns[key].phase, Phase::Waiting(Wait::RingRoom(_))) {
                            self.conns[key].end_wait();
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
                        self.close(key, Close::quietly());
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
