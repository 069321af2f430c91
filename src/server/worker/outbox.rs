//! Write queues: replies and messages are queued per connection (bounded by the queue cap: a
//! client that cannot keep up is a slow consumer), and written with writev once per turn, or
//! once per coalescing window for busy subscribers (`Config::coalesce`).

use std::net::Shutdown;

use bytes::Bytes;
use log::warn;

use super::lifecycle::{Close, RunState};
use super::{ConnRef, Worker, HOUSEKEEPING_MS};
use crate::protocol::{Ack, ErrorCode};
use crate::server::conn::{
    Conn, Phase, Wait, FRAME_OVERHEAD_BYTES, REPLY_BACKLOG_BYTES, REPLY_RESUME_BYTES,
};
use crate::server::session::{HttpSession, Session};
use crate::server::stats::WorkerCounters;

/// What queueing frames this turn left to do, and the queue byte gauges.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    /// Connections with new frames this turn (each once; see `Conn::dirty`).
    pub dirty: Vec<ConnRef>,
    /// Connections that would have passed their queue cap during fan-out; closed as slow
    /// consumers once the fan-out is done (`close_slow`).
    pub slow: Vec<ConnRef>,
    /// Bytes waiting in every queue of this worker.
    pub queued_bytes: usize,
    /// The most any one queue has held.
    pub high_water: usize,
}

impl Outbox {
    /// Queues `frame` for connection `key` unless that would pass `cap` (then false), and marks
    /// the connection for this turn's flush.
    ///
    /// A frame bigger than half the cap is one large message grown by its encoding (JSON escapes
    /// up to 6x, SSE `data:` lines up to 7x, base64 4/3): it is taken while the client keeps up
    /// (its queue under a quarter of the cap), so that the encoding never makes a healthy client
    /// look slow. A queue is thus bounded by the cap, or by a quarter of it plus one message.
    pub fn enqueue(&mut self, key: usize, conn: &mut Conn, frame: Bytes, cap: usize) -> bool {
        if frame.is_empty() {
            // Nothing for this format (a join or leave to a Redis client, a history status to
            // one): an empty frame in the queue would read as a write of zero bytes, a dead peer.
            return true;
        }
        let before = conn.footprint();
        let queued = before + frame.len() + FRAME_OVERHEAD_BYTES;
        let one_big_message = frame.len() > cap / 2 && before <= cap / 4;
        if queued > cap && !one_big_message {
            return false;
        }
        self.high_water = self.high_water.max(queued);
        self.queued_bytes += frame.len();
        conn.queue.push(frame);
        self.mark_dirty(key, conn);
        true
    }

    /// `enqueue`, noting the connection as slow when the frame does not fit.
    pub fn deliver(&mut self, key: usize, conn: &mut Conn, frame: Bytes, cap: usize) -> bool {
        let queued = self.enqueue(key, conn, frame, cap);
        if !queued {
            self.slow.push(ConnRef::of(key, conn));
        }
        queued
    }

    /// Notes that `key` has something to flush this turn (once).
    pub fn mark_dirty(&mut self, key: usize, conn: &mut Conn) {
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(ConnRef::of(key, conn));
        }
    }
}

impl Worker {
    // ---- replies ----

    /// Queues a reply to the connection's own command (flushed without coalescing delay). Over
    /// plain HTTP every reply is a whole response: the last one, if the request asked to close.
    pub(super) fn reply(&mut self, key: usize, mut frame: Bytes) -> Result<(), Close> {
        let cap = self.shared.config.write_queue_cap_bytes;
        let conn = &mut self.conns[key];
        if let Some(Session::Http(HttpSession { origin: Some(origin), .. })) =
            conn.session.as_deref()
        {
            frame = crate::protocol::http::with_origin(&frame, origin);
        }
        if !self.out.enqueue(key, conn, frame, cap) {
            return Err(self.slow_consumer(key));
        }
        conn.urgent = true;
        if matches!(conn.phase, Phase::Open) && conn.footprint() > REPLY_BACKLOG_BYTES {
            // It is not reading its answers: read nothing more from it until it does.
            conn.phase = Phase::Waiting(Wait::Drain);
        }
        if let Some(Session::Http(HttpSession { keep_alive: false, .. })) = conn.session.as_deref()
        {
            return Err(Close::quietly());
        }
        Ok(())
    }

    /// Refuses a command with an error the connection survives.
    pub(super) fn refuse(
        &mut self,
        key: usize,
        code: ErrorCode,
        reason: &str,
    ) -> Result<(), Close> {
        WorkerCounters::add(&self.counters().request_errors, 1);
        let frame = self.conns[key].reply_format().encode_error(code, reason);
        self.reply(key, frame)
    }

    pub(super) fn acknowledge(&mut self, key: usize, ack: Ack, arg: &[u8]) -> Result<(), Close> {
        let format = self.conns[key].reply_format();
        let frame = match ack {
            // A Redis client's confirmations carry its subscription count; an AUTH inside
            // HELLO is answered by HELLO.
            Ack::Subscribe if format.is_resp() => {
                let kind: &[u8] = if format.is_sharded() { b"ssubscribe" } else { b"subscribe" };
                self.resp_confirmation(key, kind, arg)
            }
            Ack::Unsubscribe if format.is_resp() => {
                let kind: &[u8] =
                    if format.is_sharded() { b"sunsubscribe" } else { b"unsubscribe" };
                self.resp_confirmation(key, kind, arg)
            }
            Ack::PatternSubscribe if format.is_resp() => {
                self.resp_confirmation(key, b"psubscribe", arg)
            }
            Ack::PatternUnsubscribe if format.is_resp() => {
                self.resp_confirmation(key, b"punsubscribe", arg)
            }
            Ack::Auth if format.is_resp() && self.resp_quiet_auth(key) => return Ok(()),
            _ => format.encode_ok(ack, arg),
        };
        self.reply(key, frame)
    }

    /// Counts and logs a slow consumer; its close discards what it has not started reading.
    pub(super) fn slow_consumer(&self, key: usize) -> Close {
        let cap = self.shared.config.write_queue_cap_bytes;
        WorkerCounters::add(&self.counters().slow_consumer_closes, 1);
        warn!("worker {}: connection {key} is a slow consumer (write queue over {cap} bytes); closing", self.id);
        let reason = format!("slow consumer: write queue over {cap} bytes");
        Close::Linger {
            error: Some((ErrorCode::SlowConsumer, reason.into())),
            discard_queue: true,
            peer_done: false,
        }
    }

    /// Closes the connections noted slow during a fan-out.
    pub(super) fn close_slow(&mut self) {
        for noted in std::mem::take(&mut self.out.slow) {
            if let Some(key) = self.resolve(noted).filter(|&key| self.conns[key].is_open()) {
                let close = self.slow_consumer(key);
                self.close(key, close);
            }
        }
    }

    // ---- writing ----

    pub(super) fn flush_dirty(&mut self) {
        let window = self.coalesce_ms();
        for noted in std::mem::take(&mut self.out.dirty) {
            let Some(key) = self.resolve(noted) else { continue };
            if window > 0 && self.holds_back(key, window) {
                self.deferred.push(noted);
            } else {
                let result = self.flush(key);
                self.close_on_error(key, result);
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
        let conn = &self.conns[key];
        conn.is_open()
            && !conn.urgent
            && conn.writable
            && self.now_ms.wrapping_sub(conn.last_write_ms) < window
    }

    /// Flushes held-back connections whose window has passed; returns the milliseconds until
    /// the next one is due.
    pub(super) fn flush_deferred(&mut self) -> Option<u32> {
        if self.deferred.is_empty() {
            return None;
        }
        let window = self.coalesce_ms();
        let mut next_due: Option<u32> = None;
        for noted in std::mem::take(&mut self.deferred) {
            let Some(key) = self.resolve(noted) else { continue };
            if window > 0 && self.holds_back(key, window) {
                let due = window - self.now_ms.wrapping_sub(self.conns[key].last_write_ms);
                next_due = Some(next_due.map_or(due, |d| d.min(due)));
                self.deferred.push(noted);
            } else {
                let result = self.flush(key);
                self.close_on_error(key, result);
            }
        }
        next_due
    }

    /// Writes the connection's queue; a closing connection whose queue emptied half-closes
    /// (with TLS, after its close_notify).
    /// Writes out what the connection's queue holds; then its timer is filed again (a queue
    /// that emptied gives its memory back a while later).
    pub(super) fn flush(&mut self, key: usize) -> Result<(), Close> {
        let result = self.flush_out(key);
        if result.is_ok() {
            self.rearm(key);
        }
        result
    }

    fn flush_out(&mut self, key: usize) -> Result<(), Close> {
        self.conns[key].dirty = false;
        self.write_some(key)?;
        let conn = &mut self.conns[key];
        if let (Phase::Closing { write_shut: false, .. }, Some(tls)) =
            (&conn.phase, conn.tls.as_deref_mut())
        {
            // Once the queue is out: close_notify (once; none after a failure), so that the
            // client tells our end of the stream from a cut connection.
            if conn.queue.is_empty() && !tls.failed() {
                if tls.seal_close_notify().is_err() {
                    return Err(Close::now("TLS close_notify failed"));
                }
                if tls.unsent() > 0 {
                    self.write_some(key)?;
                }
            }
        }
        let conn = &mut self.conns[key];
        let flushed = conn.flushed();
        if let Phase::Closing { write_shut: write_shut @ false, wait_for_eof, .. } = &mut conn.phase
        {
            if flushed {
                *write_shut = true;
                // Half-close: the peer reads everything, then sees EOF.
                if conn.stream.shutdown(Shutdown::Write).is_err() {
                    return Err(Close::now("shutdown failed"));
                }
                if !*wait_for_eof {
                    // Close as soon as nothing unread is left (read_ready sees WouldBlock).
                    conn.readable = true;
                    return self.read_ready(key);
                }
            }
        }
        Ok(())
    }

    /// Writes what the socket takes of the connection's output (see `Conn::write_out`).
    fn write_some(&mut self, key: usize) -> Result<(), Close> {
        let conn = &mut self.conns[key];
        if conn.writable && !conn.flushed() {
            let (n, result) = conn.write_out(&mut self.tls_scratch);
            self.out.queued_bytes -= n;
            WorkerCounters::add(&self.shared.counters[self.id].bytes_out, n as u64);
            match result {
                Err(e) => return Err(Close::now(format!("write failed: {e}"))),
                // Nothing of the queue moved (the socket was full, or only handshake bytes went).
                Ok(full) if n == 0 => conn.writable &= !full,
                Ok(full) => {
                    // A connection written to rarely (a reply, a quiet channel) gives its queue
                    // memory back at once; a busy one keeps it for the next frame, and
                    // its timer takes it once it goes quiet (invariant 5).
                    if self.now_ms.wrapping_sub(conn.last_write_ms) >= HOUSEKEEPING_MS {
                        conn.queue.release_if_empty();
                    }
                    conn.last_write_ms = self.now_ms;
                    conn.urgent = false;
                    if conn.replaying()
                        && conn.queue.queued_bytes() < self.shared.config.write_queue_cap_bytes / 4
                    {
                        self.replaying.push(ConnRef::of(key, conn));
                    }
                    if matches!(conn.phase, Phase::Waiting(Wait::Drain))
                        && conn.footprint() <= REPLY_RESUME_BYTES
                    {
                        conn.end_wait();
                        self.unblocked.push(ConnRef::of(key, conn));
                    }
                    if full {
                        conn.writable = false;
                    }
                }
            }
        }
        Ok(())
    }
}
