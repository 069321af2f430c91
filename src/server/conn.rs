//! One client connection: its socket, wire format, unparsed input, write queue, subscriptions,
//! and where it is in its life (`Phase`; the transitions and their invariants are drawn in
//! `worker::lifecycle`).
//!
//! A connection that only listens holds no buffers: `input` is empty (reads go through the
//! worker's scratch buffer and only an incomplete frame is kept here), and the write queue's
//! `VecDeque` gives its memory back once the connection has had nothing to write for a
//! housekeeping period (`WriteQueue::release_if_empty`).

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use mio::net::TcpStream;

use super::channels::Channel;
use super::session::{Session, WebSocketSession};
use crate::auth::Grant;
use crate::protocol::{ChannelKind, Format, Resume};
use crate::tls::ServerSession;

/// Most frames handed to one writev(2) (Linux's IOV_MAX is 1024).
const MAX_IOVECS: usize = 64;
/// Queued bytes encrypted at once for a TLS connection: four full records, so that a burst
/// fills records and writes, and the encrypted backlog stays small.
pub const SEAL_BATCH_BYTES: usize = 64 * 1024;

/// Where a connection is in its life; see `worker::lifecycle` for the transitions.
#[derive(Debug)]
pub enum Phase {
    /// Handling commands as they arrive and receiving messages.
    Open,
    /// Open, receiving messages, but its input waits (unparsed, in `Conn::input`) until `Wait`
    /// is over: commands take effect in the order they were sent.
    Waiting(Wait),
    /// Going away (error sent, slow consumer, stale, or server shutdown): input is discarded,
    /// the queue is flushed, then the write side is shut and the socket closed on the peer's EOF
    /// or at `deadline_ms` (worker clock), whichever comes first. Closing this way, instead of at
    /// once, keeps the kernel from answering unread input with a RST that would destroy the error
    /// frame before the client reads it.
    Closing {
        /// Worker-clock milliseconds after which the socket is closed regardless.
        deadline_ms: u32,
        /// The write side has been shut down (queue flushed).
        write_shut: bool,
        /// Keep the socket until the peer's EOF (or the deadline) even when nothing is unread.
        /// Set after a protocol error, where the client may still have commands in flight whose
        /// arrival at a closed socket would reset the connection; clear on server shutdown and
        /// after a WebSocket close handshake, where an empty receive buffer after the half-close
        /// is enough to close cleanly.
        wait_for_eof: bool,
    },
}

/// What an open connection's input waits for.
#[derive(Debug)]
pub enum Wait {
    /// A publish found the ring full (or the disk behind): retried every turn, then the input.
    RingRoom(Box<StalledPublish>),
    /// A resuming subscribe is being replayed from history, paced by the write queue.
    Replay(Box<Replay>),
    /// A long-poll is held until a message comes or its deadline passes.
    Poll(PollWait),
    /// An HTTP publish waits for its record to be durable: the next request's response must not
    /// overtake this one's.
    DurableAck,
    /// Cluster mode: a subscribe waits until this node serves the channel (subscribed to it in
    /// Redis, its history mirrored).
    Join(Box<Joining>),
    /// Cluster mode: a NAME waits for Redis to grant the name's lease (the inbox channel).
    NameClaim(Arc<Channel>),
    /// Cluster mode: a PSUB waits until this node receives every channel the pattern matches
    /// (its PSUBSCRIBE took effect in Redis).
    PatternJoin(Box<[u8]>),
    /// Cluster mode: a resume waits for the stream's older messages (`Answer::Backfill`).
    Backfill(Box<Backfill>),
    /// Cluster mode: a resume in the channel's epoch from an offset this node has not reached
    /// yet (the client comes from a node that is ahead) waits for this node to catch up.
    CatchUp(Box<CatchUp>),
    /// The server API's publish to several channels waits for their acknowledgements.
    Broadcast(Box<Broadcasting>),
    /// An answer computed elsewhere (the broker asks Redis: presence across the cluster) is on
    /// its way as a whole frame (`Answer::Reply`).
    Reply,
    /// The connection's own replies back up (its queue holds more than
    /// `REPLY_BACKLOG_BYTES`): its input is not read until they drain, so a client that sends
    /// commands and never reads the answers is pushed back by TCP instead of growing its queue.
    Drain,
}

/// A connection whose queue holds more than this after a reply to its own command stops being
/// read (`Wait::Drain`) until the queue is down to `REPLY_RESUME_BYTES`.
pub const REPLY_BACKLOG_BYTES: usize = 256 * 1024;
/// See `REPLY_BACKLOG_BYTES`.
pub const REPLY_RESUME_BYTES: usize = 64 * 1024;
/// What a queued frame costs beside its bytes, counted against the queue's cap: its slot in the
/// queue and the allocation behind a small frame. Without it, a cap in bytes would let a million
/// two-byte replies hold a hundred times the cap in memory.
pub const FRAME_OVERHEAD_BYTES: usize = 64;

/// A channel's acknowledged offset, or the refusal's code and reason.
pub type PublishOutcome = Result<u64, (u16, String)>;

/// A publish to several channels (`Wait::Broadcast`): each channel's offset or refusal, in the
/// request's order (`None` while its acknowledgement is on its way).
#[derive(Debug)]
pub struct Broadcasting {
    /// Per channel: its name and outcome.
    pub results: Vec<(Bytes, Option<PublishOutcome>)>,
}

/// A subscribe waiting for its channel (`Wait::Join`).
#[derive(Debug)]
pub struct Joining {
    /// The channel.
    pub channel: Arc<Channel>,
    /// What to do once it is served here.
    pub then: AfterJoin,
}

/// What a waiting join does once its channel is served.
#[derive(Debug, Clone, Copy)]
pub enum AfterJoin {
    /// Subscribe, or resume after an offset.
    Subscribe(Option<Resume>),
    /// Take the claimed name's inbox.
    Inbox,
    /// Answer a long-poll (from, epoch, timeout in seconds).
    Poll(Option<u64>, Option<u64>, u64),
    /// Answer the server API's history call (after an offset, at most this many).
    History(u64, u32),
}

/// How a subscription receives the channel's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// In the channel's shared fan-out (`LocalChannel::subscribers`) at this position.
    Live(u32),
    /// Just replayed from history, or a held long-poll: in `LocalChannel::catching_up` with the
    /// last offset it has, getting only later messages, encoded for it alone, until the ring
    /// passes that offset (then `Live`).
    CatchingUp,
}

/// A replay from history in progress: messages after `after` are still to be sent.
#[derive(Debug)]
pub struct Replay {
    /// The channel being replayed.
    pub channel: Arc<Channel>,
    /// The last offset queued to the client so far.
    pub after: u64,
    /// Cluster mode: messages read from the channel's stream in Redis that this node's memory
    /// no longer holds, queued before the memory's (empty otherwise).
    pub from_stream: std::collections::VecDeque<crate::history::Retained>,
    /// When it began (`Shared::clock_ns`), for the replay histogram.
    pub began_ns: u64,
}

/// Cluster mode: a resume waiting for the channel's stream to give what memory no longer holds.
#[derive(Debug)]
pub struct Backfill {
    /// The channel.
    pub channel: Arc<Channel>,
    /// What the client asked.
    pub resume: Resume,
    /// The memory's log when asked.
    pub bounds: crate::history::Bounds,
}

/// Cluster mode: a resume ahead of this node's log (`Wait::CatchUp`).
#[derive(Debug)]
pub struct CatchUp {
    /// The channel.
    pub channel: Arc<Channel>,
    /// What the client asked.
    pub resume: Resume,
    /// Worker clock (ms) when it began to wait (a node still behind, with Redis reachable, past
    /// the command timeout and a probe interval takes the client's offset for one Redis no
    /// longer has: told `epoch`, as on one node).
    pub since_ms: u32,
}

/// A held long-poll.
#[derive(Debug)]
pub struct PollWait {
    /// The channel it waits on (the connection is a catching-up subscriber of it meanwhile).
    pub channel: Arc<Channel>,
    /// Worker-clock milliseconds when it is answered empty.
    pub deadline_ms: u32,
}

/// A subscription held by a connection.
#[derive(Debug)]
pub struct Subscription {
    /// The channel.
    pub channel: Arc<Channel>,
    /// Where in the worker's index this connection is.
    pub membership: Membership,
}

/// A wildcard subscription held by a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatternSubscription {
    /// The pattern's id in the worker's `PatternIndex`.
    pub id: usize,
    /// This connection's position among the pattern's subscribers.
    pub position: u32,
}

/// A publish that found the ring full; retried before any later input of the connection is read.
#[derive(Debug)]
pub struct StalledPublish {
    /// Target channel.
    pub channel: Arc<Channel>,
    /// Payload.
    pub payload: Bytes,
    /// The client asked for an acknowledgement (PUBA).
    pub acked: bool,
}

/// One connection, stored in the worker's slab; its slab key is its mio `Token`.
#[derive(Debug)]
pub struct Conn {
    /// The socket (non-blocking, registered edge-triggered for READABLE | WRITABLE once).
    pub stream: TcpStream,
    /// Wire format, once sniffed from the first bytes.
    pub format: Option<Format>,
    /// Open, waiting, or closing.
    pub phase: Phase,
    /// Readable readiness seen and not yet exhausted by a WouldBlock read (edge-triggered).
    pub readable: bool,
    /// Writable readiness seen and not yet exhausted by a WouldBlock write.
    pub writable: bool,
    /// Already in the worker's list of connections to flush this turn.
    pub dirty: bool,
    /// A keepalive PING was sent and nothing has been read since.
    pub ping_sent: bool,
    /// When its live entry on the worker's timer wheel fires (`worker::timers`).
    pub timer_ms: Option<u32>,
    /// A reply to this connection's own command is queued: flush without coalescing delay.
    pub urgent: bool,
    /// Worker-clock milliseconds of the last write that moved bytes (write coalescing).
    pub last_write_ms: u32,
    /// Worker-clock milliseconds of the last read that returned bytes (or of the accept).
    pub last_input_ms: u32,
    /// Bytes of an incomplete frame or line; `None` (nothing allocated) between frames.
    pub input: Option<Box<Vec<u8>>>,
    /// Frames waiting to be written.
    pub queue: WriteQueue,
    /// Channels this connection receives, its inbox (`@name`, once it has claimed a name, which
    /// is where the name is kept) included.
    pub subscriptions: Vec<Subscription>,
    /// Wildcard subscriptions (`PSUB`).
    pub patterns: Vec<PatternSubscription>,
    /// Distinguishes connections that share a slab key over time (wraps after 2^32 accepts):
    /// work noted for a connection (the worker's side lists, a late acknowledgement from the
    /// storage thread) carries it, so that it never reaches a later connection at that key.
    pub serial: u32,
    /// Its protocol's own state (HTTP, WebSocket, SSE, RESP: `server::session`); `None` for
    /// fanout's text and binary clients, whose codec is all their state.
    pub session: Option<Box<Session>>,
    /// With access control on: what the connection's token grants (`None` before it
    /// authenticates: then the anonymous permissions apply, if there are any). Over plain HTTP,
    /// the current request's.
    pub grant: Option<Arc<Grant>>,
    /// Worker-clock milliseconds of the accept: the authentication deadline counts from it.
    pub accepted_ms: u32,
    /// Rate limits and failed authentications.
    pub budget: Budget,
    /// The peer's address, kept while connections per address are counted.
    pub peer_ip: Option<IpAddr>,
    /// TLS, when the connection's first byte was a handshake record: what is read is decrypted
    /// through it, and what `queue` holds is encrypted through it on the way out.
    pub tls: Option<Box<ServerSession>>,
}

/// A token bucket: up to `rate` tokens, refilled at `rate` per second.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f32,
    last_ms: u32,
}

impl Default for Bucket {
    fn default() -> Self {
        // Full on first use (`take` caps it at the rate).
        Bucket { tokens: f32::INFINITY, last_ms: 0 }
    }
}

impl crate::server::index::Serial for Conn {
    fn serial(&self) -> u32 {
        self.serial
    }
}

impl Bucket {
    /// Takes one token if there is one; `rate` 0 is unlimited.
    pub fn take(&mut self, rate: u32, now_ms: u32) -> bool {
        if rate == 0 {
            return true;
        }
        let elapsed = now_ms.wrapping_sub(self.last_ms).min(60_000) as f32;
        self.last_ms = now_ms;
        self.tokens = (self.tokens + elapsed * rate as f32 / 1000.0).min(rate as f32);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A connection's abuse budgets.
#[derive(Debug, Clone, Copy, Default)]
pub struct Budget {
    /// Publishes.
    pub publishes: Bucket,
    /// Subscribes and unsubscribes.
    pub subscribes: Bucket,
    /// Failed authentications so far.
    pub auth_failures: u32,
}

impl Conn {
    /// A freshly accepted connection.
    pub fn new(stream: TcpStream, now_ms: u32, serial: u32) -> Self {
        Conn {
            serial,
            stream,
            format: None,
            phase: Phase::Open,
            readable: false,
            writable: false,
            dirty: false,
            ping_sent: false,
            timer_ms: None,
            urgent: false,
            last_write_ms: now_ms.wrapping_sub(u32::MAX / 4),
            last_input_ms: now_ms,
            input: None,
            queue: WriteQueue::default(),
            subscriptions: Vec::new(),
            patterns: Vec::new(),
            session: None,
            grant: None,
            accepted_ms: now_ms,
            budget: Budget::default(),
            peer_ip: None,
            tls: None,
        }
    }

    /// What the connection's output holds in memory, counted against the queue cap: its
    /// queue, and with TLS the encrypted bytes the socket has not taken yet.
    pub fn footprint(&self) -> usize {
        self.queue.footprint() + self.tls.as_ref().map_or(0, |tls| tls.unsent())
    }

    /// Nothing is left to write (queue and encrypted output). After a TLS failure only the
    /// encrypted output (the alert) counts: what is queued can no longer be encrypted.
    pub fn flushed(&self) -> bool {
        match &self.tls {
            None => self.queue.is_empty(),
            Some(tls) => tls.unsent() == 0 && (self.queue.is_empty() || tls.failed()),
        }
    }

    /// Writes what the socket takes: plaintext straight from the queue, or with TLS the queue
    /// encrypted a batch at a time into `scratch.1` (the plaintext gathered in `scratch.0`) and
    /// written from there. What the socket does not take is kept, and the next batch is sealed
    /// only once it has gone, so the encrypted backlog stays one batch. Returns the queue's bytes
    /// that left it (even when the write then failed: they are no longer queued), and whether
    /// the socket is full (with TLS the queue also waits, without the socket being full, while
    /// the handshake is not done).
    pub fn write_out(&mut self, scratch: &mut (Vec<u8>, Vec<u8>)) -> (usize, io::Result<bool>) {
        let queued = self.queue.queued_bytes();
        let result = self.write_queue(scratch);
        (queued - self.queue.queued_bytes(), result)
    }

    fn write_queue(&mut self, scratch: &mut (Vec<u8>, Vec<u8>)) -> io::Result<bool> {
        let Some(tls) = self.tls.as_deref_mut() else {
            return match self.queue.write_to(&mut self.stream) {
                Ok(_) => Ok(!self.queue.is_empty()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
                Err(e) => Err(e),
            };
        };
        let (batch, sealed) = scratch;
        loop {
            if tls.unsent() > 0 {
                match tls.write_to(&mut self.stream) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                    Err(e) => return Err(e),
                }
                if tls.unsent() > 0 {
                    return Ok(true);
                }
            }
            if self.queue.is_empty() || tls.is_handshaking() || tls.failed() {
                return Ok(false);
            }
            batch.clear();
            sealed.clear();
            self.queue.copy_front(batch, SEAL_BATCH_BYTES);
            if !tls.seal(batch, sealed).map_err(io::Error::other)? {
                return Ok(false);
            }
            self.queue.consume(batch.len());
            if tls.unsent() > 0 {
                // rustls had something to send first: the batch goes after it.
                tls.keep_unsent(sealed);
                continue;
            }
            let written = match crate::tls::write_some(&mut self.stream, sealed) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => return Err(e),
            };
            if written < sealed.len() {
                tls.keep_unsent(&sealed[written..]);
                return Ok(true);
            }
        }
    }

    /// What the input waits for, if anything.
    pub fn wait(&self) -> Option<&Wait> {
        match &self.phase {
            Phase::Waiting(wait) => Some(wait),
            _ => None,
        }
    }

    /// True while a long-poll is held (later requests wait for it).
    pub fn polling(&self) -> bool {
        matches!(self.phase, Phase::Waiting(Wait::Poll(_)))
    }

    /// True while a replay from history is in progress.
    pub fn replaying(&self) -> bool {
        matches!(self.phase, Phase::Waiting(Wait::Replay(_)))
    }

    /// True for the WebSocket echo endpoint.
    pub fn is_echo(&self) -> bool {
        matches!(
            self.session.as_deref(),
            Some(Session::WebSocket(WebSocketSession { echo: true, .. }))
        )
    }

    /// True when input must wait (see `Phase::Waiting`).
    pub fn input_waits(&self) -> bool {
        matches!(self.phase, Phase::Waiting(_))
    }

    /// Ends a wait: the connection takes commands again. Returns what it waited for.
    pub fn end_wait(&mut self) -> Option<Wait> {
        match std::mem::replace(&mut self.phase, Phase::Open) {
            Phase::Waiting(wait) => Some(wait),
            other => {
                self.phase = other;
                None
            }
        }
    }

    /// The format to speak to this client in; a client that has not spoken yet gets text.
    pub fn reply_format(&self) -> Format {
        self.format.unwrap_or(Format::Text)
    }

    /// True while the connection takes commands (now or once its wait is over) and receives
    /// messages.
    pub fn is_open(&self) -> bool {
        !matches!(self.phase, Phase::Closing { .. })
    }

    /// The name claimed with NAME: its inbox channel's name without the `@`.
    pub fn name(&self) -> Option<&[u8]> {
        self.subscriptions
            .iter()
            .find(|s| s.channel.kind == ChannelKind::Inbox)
            .map(|s| &s.channel.name[1..])
    }

    /// Takes the held partial input (empty if none).
    pub fn take_input(&mut self) -> Vec<u8> {
        self.input.take().map_or_else(Vec::new, |boxed| *boxed)
    }

    /// Keeps `rest` as partial input; an empty one frees the buffer.
    pub fn keep_input(&mut self, rest: Vec<u8>) {
        self.input = (!rest.is_empty()).then(|| Box::new(rest));
    }

    /// Adds a subscription. Most connections hold one or two, so grow one at a time: the
    /// default growth (4 at first) would cost an idle subscriber 48 bytes for nothing.
    pub fn push_subscription(&mut self, subscription: Subscription) {
        self.subscriptions.reserve_exact(1);
        self.subscriptions.push(subscription);
    }

    /// The subscription to `channel`, if any.
    pub fn subscription_mut(&mut self, channel: u64) -> Option<&mut Subscription> {
        self.subscriptions.iter_mut().find(|s| s.channel.id == channel)
    }
}

/// Frames queued for one socket, written with writev from a cursor into the head frame.
#[derive(Debug, Default)]
pub struct WriteQueue {
    frames: VecDeque<Bytes>,
    /// Bytes of `frames[0]` already written (a frame is at most `max_frame_bytes` plus headers).
    head_written: u32,
    /// Bytes not yet written, over all frames; at most the queue cap plus a reply, and the cap is
    /// validated to fit (`server::validate`).
    queued_bytes: u32,
}

impl WriteQueue {
    /// Appends a frame.
    pub fn push(&mut self, frame: Bytes) {
        self.queued_bytes += frame.len() as u32;
        self.frames.push_back(frame);
    }

    /// Bytes not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes as usize
    }

    /// What the queue holds in memory, as counted against its cap: its bytes, and
    /// `FRAME_OVERHEAD_BYTES` per frame.
    pub fn footprint(&self) -> usize {
        self.queued_bytes as usize + self.frames.len() * FRAME_OVERHEAD_BYTES
    }

    /// True when everything was written.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Drops every frame that has not started going out (a partly written head frame stays, so
    /// that whatever is queued next starts on a frame boundary). Returns the bytes dropped.
    pub fn discard_unstarted(&mut self) -> usize {
        let keep = usize::from(self.head_written > 0);
        let dropped: usize = self.frames.iter().skip(keep).map(Bytes::len).sum();
        self.frames.truncate(keep);
        self.queued_bytes -= dropped as u32;
        dropped
    }

    /// Writes as much as the socket takes. Returns the bytes written; `WouldBlock` is reported
    /// only when nothing at all could be written.
    pub fn write_to(&mut self, socket: &mut impl Write) -> io::Result<usize> {
        let mut total = 0;
        while !self.frames.is_empty() {
            let written = if self.frames.len() == 1 {
                // One frame (a subscriber of a quiet channel, a reply): write(2), which skips
                // writev's copying in and checking of an iovec array.
                socket.write(&self.frames[0][self.head_written as usize..])
            } else {
                let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
                let mut count = 0;
                for (i, frame) in self.frames.iter().take(MAX_IOVECS).enumerate() {
                    let start = if i == 0 { self.head_written as usize } else { 0 };
                    slices[i] = IoSlice::new(&frame[start..]);
                    count += 1;
                }
                socket.write_vectored(&slices[..count])
            };
            match written {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    total += n;
                    self.advance(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && total > 0 => break,
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }

    /// Appends the queue's first `max` bytes (fewer if it holds fewer) to `out`, without taking
    /// them (`consume` does, once they are sealed).
    pub fn copy_front(&mut self, out: &mut Vec<u8>, max: usize) {
        for (i, frame) in self.frames.iter().enumerate() {
            let start = if i == 0 { self.head_written as usize } else { 0 };
            let take = (frame.len() - start).min(max - out.len());
            out.extend_from_slice(&frame[start..start + take]);
            if out.len() == max {
                return;
            }
        }
    }

    /// Takes `n` bytes from the front (they went out another way: sealed for TLS).
    pub fn consume(&mut self, n: usize) {
        self.advance(n);
    }

    /// Gives the queue's memory back when it is empty (an idle connection holds none, invariant
    /// 5). Not done on every drain: a subscriber that gets a frame a turn would pay a
    /// malloc/free pair per message for it (the chat-shaped load of scripts/bench-chat.sh).
    pub fn release_if_empty(&mut self) {
        if self.frames.is_empty() && self.frames.capacity() > 0 {
            self.frames = VecDeque::new();
        }
    }

    /// True when the queue is empty and still holds memory (`release_if_empty` would free it).
    pub fn holds_idle_memory(&self) -> bool {
        self.frames.is_empty() && self.frames.capacity() > 0
    }

    /// Frames the queue has room for without allocating (tests check when memory goes back).
    #[cfg(test)]
    pub fn held_capacity(&self) -> usize {
        self.frames.capacity()
    }

    fn advance(&mut self, mut written: usize) {
        self.queued_bytes -= written as u32;
        while written > 0 {
            let head_left = self.frames[0].len() - self.head_written as usize;
            if written < head_left {
                self.head_written += written as u32;
                return;
            }
            written -= head_left;
            self.head_written = 0;
            self.frames.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that takes at most `budget` bytes per call, then blocks when the budget is spent.
    struct Trickle {
        written: Vec<u8>,
        per_call: usize,
        budget: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            if self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for buf in bufs {
                let take = buf.len().min(self.per_call - n).min(self.budget);
                self.written.extend_from_slice(&buf[..take]);
                n += take;
                self.budget -= take;
                if n == self.per_call || self.budget == 0 {
                    break;
                }
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        let frames: Vec<Bytes> = (0..600u32).map(|i| Bytes::from(format!("frame {i};"))).collect();
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
        for per_call in [1, 3, 7, 64, 5000] {
            let mut queue = WriteQueue::default();
            frames.iter().cloned().for_each(|f| queue.push(f));
            let mut socket = Trickle { written: Vec::new(), per_call, budget: 100 };
            let first = queue.write_to(&mut socket).unwrap();
            assert_eq!(first, 100);
            assert_eq!(queue.queued_bytes(), expected.len() - 100);
            assert_eq!(queue.write_to(&mut socket).unwrap_err().kind(), io::ErrorKind::WouldBlock);
            socket.budget = usize::MAX;
            queue.write_to(&mut socket).unwrap();
            assert!(queue.is_empty());
            assert_eq!(queue.queued_bytes(), 0);
            assert!(queue.held_capacity() > 0, "kept for the next frame");
            queue.release_if_empty();
            assert_eq!(queue.held_capacity(), 0, "given back when idle");
            assert_eq!(socket.written, expected, "per_call {per_call}");
        }
    }

    #[test]
    fn a_bucket_holds_one_seconds_worth_and_refills() {
        let mut bucket = Bucket::default();
        let taken = (0..20).filter(|_| bucket.take(10, 1_000)).count();
        assert_eq!(taken, 10, "a burst of one second's worth");
        assert!(!bucket.take(10, 1_050), "half a token after 50 ms");
        assert!(bucket.take(10, 1_100), "one token after 100 ms");
        assert!(!bucket.take(10, 1_100));
        assert_eq!((0..20).filter(|_| bucket.take(10, 60_000)).count(), 10, "capped at the rate");
        assert!((0..1000).all(|_| bucket.take(0, 0)), "zero is unlimited");
    }

    #[test]
    fn discard_keeps_the_partly_written_head() {
        let mut queue = WriteQueue::default();
        for f in ["abcd", "efgh", "ijkl"] {
            queue.push(Bytes::from_static(f.as_bytes()));
        }
        let mut socket = Trickle { written: Vec::new(), per_call: 2, budget: 2 };
        queue.write_to(&mut socket).unwrap();
        assert_eq!(queue.discard_unstarted(), 8);
        queue.push(Bytes::from_static(b"ERR"));
        socket.budget = usize::MAX;
        queue.write_to(&mut socket).unwrap();
        assert_eq!(socket.written, b"abcdERR");

        let mut untouched = WriteQueue::default();
        untouched.push(Bytes::from_static(b"xyz"));
        assert_eq!(untouched.discard_unstarted(), 3);
        assert!(untouched.is_empty());
    }
}
