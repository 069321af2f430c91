//! Reading and parsing: bytes from a socket become commands in the connection's format (sniffed
//! from its first bytes), handed to `commands` (or to `web` for HTTP and WebSocket). Input that
//! must wait (`Phase::Waiting`) stays in the connection, unparsed, until the wait is over.

use std::io::{self, Read};
use std::sync::atomic::Ordering;

use log::debug;

use super::lifecycle::{Close, RunState};
use super::{would_block, ConnRef, Worker};
use crate::protocol::{self, ErrorCode, Format, ProtocolError, Sniffed};
use crate::server::conn::Phase;
use crate::server::session::{Session, SessionKind};
use crate::server::stats::WorkerCounters;
use crate::tls::ServerSession;

/// One read(2) at most this much (the worker's scratch buffer).
pub(super) const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Bytes read from one connection per turn.
const READ_BUDGET_BYTES: usize = 256 * 1024;

impl Worker {
    /// Reads the connections that used their budget last turn.
    pub(super) fn read_pending(&mut self) {
        for _ in 0..self.pending_reads.len() {
            let Some(noted) = self.pending_reads.pop_front() else { break };
            if let Some(key) = self.resolve(noted) {
                let result = self.read_ready(key);
                self.close_on_error(key, result);
            }
        }
    }

    /// Lets connections whose wait ended (a long-poll answered, a durable acknowledgement sent)
    /// go on with the input that waited.
    pub(super) fn resume_unblocked(&mut self) {
        for noted in std::mem::take(&mut self.unblocked) {
            let Some(key) = self.resolve(noted) else { continue };
            let conn = &self.conns[key];
            if conn.is_open() && !conn.input_waits() {
                let result = self.resume_input(key);
                self.close_on_error(key, result);
            }
        }
    }

    /// Reads until WouldBlock, the per-turn budget, or input that must wait. A closing
    /// connection is read only to see the peer's EOF (its input is discarded). What was read may
    /// have brought a deadline closer (a request head begun, a token with an expiry): the
    /// connection's timer is filed again.
    pub(super) fn read_ready(&mut self, key: usize) -> Result<(), Close> {
        let result = self.read_input(key);
        if result.is_ok() {
            self.rearm(key);
        }
        result
    }

    fn read_input(&mut self, key: usize) -> Result<(), Close> {
        let mut budget = READ_BUDGET_BYTES;
        loop {
            let conn = &mut self.conns[key];
            if !conn.readable {
                return Ok(());
            }
            // A held long-poll keeps reading (a little), so that a client that goes away is
            // noticed now rather than at the poll's deadline; what it sends waits in `input`.
            if conn.input_waits()
                && !(conn.polling()
                    && conn.input.as_ref().map_or(0, |i| i.len()) < protocol::http::MAX_HEAD_BYTES)
            {
                return Ok(());
            }
            // During shutdown nothing is read from open connections (they get their queues
            // flushed, then close); closing connections are still read to see the peer's EOF.
            if self.state != RunState::Running && conn.is_open() {
                return Ok(());
            }
            if budget == 0 {
                self.pending_reads.push_back(ConnRef::of(key, conn));
                return Ok(());
            }
            match conn.stream.read(&mut self.scratch) {
                Ok(0) => return Err(Close::now("closed by peer")),
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    WorkerCounters::add(&self.shared.counters[self.id].bytes_in, n as u64);
                    if conn.is_open() {
                        conn.last_input_ms = self.now_ms;
                        conn.ping_sent = false;
                        let mut scratch = std::mem::take(&mut self.scratch);
                        let taken = self.take_read(key, &mut scratch[..n]);
                        self.scratch = scratch;
                        taken?;
                    }
                }
                Err(e) if would_block(&e) => {
                    conn.readable = false;
                    if let Phase::Closing { write_shut: true, wait_for_eof: false, .. } = conn.phase
                    {
                        return Err(Close::now("flushed and half-closed"));
                    }
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Close::now(format!("read failed: {e}"))),
            }
        }
    }

    /// Takes what a read returned: decrypted first if the connection speaks TLS (which its
    /// first byte tells), then parsed.
    fn take_read(&mut self, key: usize, bytes: &mut [u8]) -> Result<(), Close> {
        let conn = &mut self.conns[key];
        if conn.tls.is_none() && conn.format.is_none() && conn.input.is_none() {
            let config = &self.shared.config;
            match &config.tls {
                Some(tls) if bytes[0] == crate::tls::HANDSHAKE_RECORD => {
                    let session = ServerSession::new(tls.config())
                        .map_err(|e| Close::now(format!("cannot start a TLS session: {e}")))?;
                    conn.tls = Some(Box::new(session));
                    WorkerCounters::add(&self.shared.counters[self.id].connections_tls, 1);
                }
                _ if config.tls_only => {
                    WorkerCounters::add(&self.counters().tls_plaintext_refused, 1);
                    debug!(
                        "worker {}: refusing plaintext on connection {key} (--tls-only)",
                        self.id
                    );
                    return Err(Close::error(
                        ErrorCode::UpgradeRequired,
                        "this port speaks TLS only",
                    ));
                }
                _ => {}
            }
        }
        let Some(tls) = self.conns[key].tls.as_deref_mut() else {
            return self.take_input(key, bytes);
        };
        let was_handshaking = tls.is_handshaking();
        let mut plain = std::mem::take(&mut self.decrypted);
        plain.clear();
        let received = match tls.receive(bytes, &mut plain) {
            Ok(received) => received,
            Err(e) => {
                self.decrypted = plain;
                let reason = crate::tls::failure_reason(&e);
                WorkerCounters::add(self.counters().tls_failure(reason), 1);
                debug!("worker {}: TLS failed on connection {key} ({reason}): {e}", self.id);
                // rustls's alert goes out, nothing queued after it (it cannot be encrypted any
                // more), and the connection closes once it is written.
                self.out.mark_dirty(key, &mut self.conns[key]);
                return Err(Close::Linger { error: None, discard_queue: true, peer_done: true });
            }
        };
        if was_handshaking && !tls.is_handshaking() {
            WorkerCounters::add(&self.shared.counters[self.id].tls_handshakes, 1);
            debug!(
                "worker {}: connection {key}: TLS handshake done ({:?})",
                self.id,
                tls.version()
            );
        }
        if tls.unsent() > 0 || (!tls.is_handshaking() && !self.conns[key].queue.is_empty()) {
            // A handshake answer to send, or replies that waited for the handshake: at once,
            // never held back by write coalescing (the client waits on it).
            self.conns[key].urgent = true;
            self.out.mark_dirty(key, &mut self.conns[key]);
        }
        let taken = if plain.is_empty() { Ok(()) } else { self.take_input(key, &plain) };
        self.decrypted = plain;
        taken?;
        if received.peer_closed {
            return Err(Close::now("closed by peer (TLS close_notify)"));
        }
        Ok(())
    }

    /// Parses `fresh` after whatever incomplete frame the connection held.
    fn take_input(&mut self, key: usize, fresh: &[u8]) -> Result<(), Close> {
        if self.conns[key].input.is_none() {
            let used = self.parse_and_handle(key, fresh)?;
            if self.conns[key].is_open() && used < fresh.len() {
                self.hold_input(key, fresh[used..].to_vec());
            }
            Ok(())
        } else {
            let mut input = self.conns[key].take_input();
            let searched = input.len();
            input.extend_from_slice(fresh);
            if !self.may_complete(key, &input, searched) {
                // Nothing can be complete yet: keep the bytes without parsing them again, so
                // that a frame trickling in costs each byte one look, not one per read.
                self.hold_input(key, input);
                return Ok(());
            }
            self.handle_held_input(key, input)
        }
    }

    /// Whether `input`, of which the first `searched` bytes were held as an incomplete frame
    /// (no wait in between), may now hold a complete frame, or one past the connection's limit.
    /// False only where that is cheap to tell: a text line without its newline, or what the
    /// session says (`Session::may_complete`); binary lengths come first.
    fn may_complete(&self, key: usize, input: &[u8], searched: usize) -> bool {
        let conn = &self.conns[key];
        if conn.input_waits() {
            return true;
        }
        match (conn.format, conn.session.as_deref()) {
            (Some(Format::Text), _) => {
                input.len() > self.input_limit(key) || input[searched..].contains(&b'\n')
            }
            (_, Some(session)) => session.may_complete(input, searched),
            _ => true,
        }
    }

    /// After a wait ends (a stall, a replay, a long-poll): the input that waited, then the socket.
    pub(super) fn resume_input(&mut self, key: usize) -> Result<(), Close> {
        match self.conns[key].session.as_deref().map(Session::kind) {
            Some(SessionKind::Sse) => self.sse_subscribe_pending(key)?,
            Some(SessionKind::Resp) => self.resp_continue(key)?,
            _ => {}
        }
        let input = self.conns[key].take_input();
        if !input.is_empty() {
            self.handle_held_input(key, input)?;
        }
        self.read_ready(key)
    }

    /// Parses bytes the connection already held (after more arrived, or after a wait ended).
    fn handle_held_input(&mut self, key: usize, mut input: Vec<u8>) -> Result<(), Close> {
        let used = self.parse_and_handle(key, &input)?;
        input.drain(..used);
        if self.conns[key].is_open() && !input.is_empty() {
            // Memory goes back only when most of it is unused: shrinking to fit on every read
            // would copy a growing frame once per read (quadratic for a frame trickling in).
            if input.capacity() > 4 * input.len().max(1024) {
                input.shrink_to(2 * input.len().max(1024));
            }
            self.hold_input(key, input);
        }
        Ok(())
    }

    /// Keeps `input` (not empty) unparsed in the connection until more arrives or its wait ends.
    fn hold_input(&mut self, key: usize, input: Vec<u8>) {
        self.input_high_water = self.input_high_water.max(input.len());
        self.conns[key].keep_input(input);
    }

    /// Handles every complete command in `input`; returns the bytes consumed. Stops early when
    /// the input must wait (a publish stalled, a replay began, a long-poll is held).
    pub(super) fn parse_and_handle(&mut self, key: usize, input: &[u8]) -> Result<usize, Close> {
        let max_frame = self.shared.config.max_frame_bytes;
        let mut at = 0;
        let format = match self.conns[key].format {
            Some(format) => format,
            None => {
                let format = match protocol::sniff(input) {
                    Ok(Sniffed::NeedMore) => return Ok(0),
                    Ok(Sniffed::Binary(preface)) => {
                        at = preface;
                        Format::Binary
                    }
                    Ok(Sniffed::Text) => Format::Text,
                    Ok(Sniffed::Resp) => {
                        let resp = Session::Resp(Default::default());
                        self.conns[key].session = Some(Box::new(resp));
                        Format::Resp2
                    }
                    Ok(Sniffed::Http) => {
                        self.conns[key].session = Some(Box::new(Session::http()));
                        Format::Http
                    }
                    Err(e) => {
                        self.set_format(key, Format::Binary);
                        return Err(self.protocol_error(key, &e));
                    }
                };
                self.set_format(key, format);
                format
            }
        };
        // A protocol with a session reads through its own handler; fanout's text and binary
        // frames, which need none, are parsed here.
        match self.conns[key].session.as_deref().map(Session::kind) {
            None => {}
            Some(SessionKind::Http) => return Ok(at + self.http_input(key, &input[at..])?),
            Some(SessionKind::WebSocket) => {
                return Ok(at + self.websocket_input(key, &input[at..])?)
            }
            // An event stream is one-way; whatever the client sends after its request is ignored.
            Some(SessionKind::Sse) => return Ok(input.len()),
            Some(SessionKind::Resp) => return Ok(at + self.resp_input(key, &input[at..])?),
        }
        loop {
            let conn = &self.conns[key];
            if !conn.is_open() || conn.input_waits() {
                return Ok(at);
            }
            // Asked per frame: an AUTH earlier in the same read lifts a stranger's budget.
            let limit = self.input_limit(key);
            match format.parse_request(&input[at..], limit) {
                Ok(Some((request, used))) => {
                    at += used;
                    self.handle(key, request)?;
                }
                Ok(None) => return Ok(at),
                Err(ProtocolError::FrameTooLarge { len, .. }) if limit < max_frame => {
                    return Err(self.stranger_overflow(key, len))
                }
                Err(e) => return Err(self.protocol_error(key, &e)),
            }
        }
    }

    /// Records a connection's format (its metrics gauge moves with it).
    pub(super) fn set_format(&mut self, key: usize, format: Format) {
        let counters = &self.shared.counters[self.id];
        if let Some(old) = self.conns[key].format.replace(format) {
            counters.by_format(old).fetch_sub(1, Ordering::Relaxed);
        }
        counters.by_format(format).fetch_add(1, Ordering::Relaxed);
    }

    /// Counts and logs a fatal protocol violation; the connection closes after an error frame.
    pub(super) fn protocol_error(&mut self, key: usize, error: &ProtocolError) -> Close {
        use ProtocolError as E;
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
        Close::error(error.code(), error.to_string())
    }
}
