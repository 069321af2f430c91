//! Every connection's deadlines (keepalive pings, stale peers, SSE heartbeats, lingering closes,
//! long-poll, request-head and TLS-handshake deadlines, authentication and token expiry, and
//! when an idle queue gives its memory back) on a hashed timing wheel (Varghese and Lauck), so
//! that no turn walks every connection.
//!
//! A connection has at most one live entry: the earliest time any of its deadlines can come due
//! given its state (`next_deadline`). Activity only moves deadlines later, so an entry is not
//! moved when a connection reads or writes: it fires, finds nothing due, and is filed again at
//! the new time (Redis's `clientsCron` and Netty's idle handlers check the same lazy way). What
//! can make a deadline earlier (an accept, a read or a write that changes the connection's
//! state, a close, a held long-poll, a reload of the access policy) calls `rearm`, which files
//! a new entry only when it is earlier than the live one; the one left behind is recognised as
//! stale (`Conn::timer_ms` names the live one) and skipped.
//!
//! Each turn fires at most `FIRE_BUDGET` entries; the rest wait for the next turn.

use log::debug;

use super::lifecycle::Close;
use super::{reached, ConnRef, Worker, HOUSEKEEPING_MS};
use crate::protocol::{ErrorCode, Format};
use crate::server::conn::{Conn, Phase, Wait};
use crate::server::session::{Session, SessionDeadline};
use crate::server::stats::WorkerCounters;

/// Milliseconds per slot: deadlines fire up to this late (a turn's poll wakes for them).
const SLOT_MS: u32 = 8;
/// Slots on the wheel: entries up to `SLOTS * SLOT_MS` (8 s) ahead; a later deadline is filed
/// at the wheel's far end and filed again when it fires. A power of two that divides 2^32 /
/// `SLOT_MS`, so that slot numbers stay consistent when the millisecond clock wraps.
const SLOTS: usize = 1024;
/// Entries fired per turn at most: a firing may write (a PING, a heartbeat, an error frame),
/// a few microseconds each, so that a crowd of connections accepted together, whose deadlines
/// fall in one slot, is pinged over many turns of half a millisecond or so each.
const FIRE_BUDGET: usize = 128;
/// Longest silence on an event stream before a heartbeat comment (also bounded by the ping
/// interval): under the 30-60 s idle timeouts of common proxies.
const SSE_HEARTBEAT_MS: u32 = 15_000;

/// The configured spans deadlines count, in worker-clock milliseconds: derived once, since none
/// of them is reloadable (the authentication timeout, which is, comes from the policy).
#[derive(Debug, Clone, Copy)]
struct Spans {
    ping_after: u32,
    stale_after: u32,
    head_deadline: u32,
    heartbeat_after: u32,
}

/// A duration as worker-clock milliseconds (clamped so that wrapping comparisons stay valid).
fn clock_ms(span: std::time::Duration) -> u32 {
    span.as_millis().min(u32::MAX as u128 / 4) as u32
}

/// The wheel: entries (connection, the slot time it fires at) by slot.
#[derive(Debug)]
pub(super) struct TimerWheel {
    spans: Spans,
    slots: Box<[Vec<(ConnRef, u32)>]>,
    /// The slot time fired next; every entry fires at it or within `SLOTS` slots after.
    next_ms: u32,
    /// Entries on the wheel, stale ones included.
    len: usize,
}

/// `a` comes before `b` on the wrapping millisecond clock.
fn before(a: u32, b: u32) -> bool {
    a != b && reached(b, a)
}

fn slot_of(ms: u32) -> usize {
    (ms / SLOT_MS) as usize % SLOTS
}

impl TimerWheel {
    pub(super) fn new(now_ms: u32, config: &crate::config::Config) -> Self {
        let ping_after = clock_ms(config.ping_interval);
        let spans = Spans {
            ping_after,
            stale_after: ping_after.saturating_add(clock_ms(config.ping_timeout)),
            head_deadline: clock_ms(config.http_head_timeout),
            heartbeat_after: ping_after.min(SSE_HEARTBEAT_MS),
        };
        TimerWheel {
            spans,
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            next_ms: now_ms - now_ms % SLOT_MS,
            len: 0,
        }
    }

    /// Files `conn` to fire at `due_ms`, rounded up to its slot (past the wheel's span, at its
    /// far end; a due time already passed, at the next slot). Returns the time it fires at.
    pub(super) fn schedule(&mut self, conn: ConnRef, due_ms: u32) -> u32 {
        let last = self.next_ms.wrapping_add((SLOTS as u32 - 1) * SLOT_MS);
        let at = if before(due_ms, self.next_ms) {
            self.next_ms
        } else if before(last, due_ms) {
            last
        } else {
            due_ms.wrapping_add(SLOT_MS - 1) / SLOT_MS * SLOT_MS
        };
        self.slots[slot_of(at)].push((conn, at));
        self.len += 1;
        at
    }

    /// Moves up to `budget` entries whose slot time `now_ms` has reached into `out`.
    pub(super) fn expire(&mut self, now_ms: u32, budget: usize, out: &mut Vec<(ConnRef, u32)>) {
        // A worker that slept through more than a whole turn of the wheel looks at each slot once.
        for _ in 0..SLOTS {
            if !reached(now_ms, self.next_ms) || out.len() >= budget {
                return;
            }
            let slot = &mut self.slots[slot_of(self.next_ms)];
            let take = slot.len().min(budget - out.len());
            out.extend(slot.drain(slot.len() - take..));
            self.len -= take;
            if !slot.is_empty() {
                return;
            }
            if slot.capacity() > 64 {
                slot.shrink_to(8);
            }
            self.next_ms = self.next_ms.wrapping_add(SLOT_MS);
        }
    }

    /// Milliseconds from `now_ms` until the first entry within `horizon_ms` fires (`None`: none
    /// does; zero: one is due).
    pub(super) fn until_next(&self, now_ms: u32, horizon_ms: u32) -> Option<u32> {
        if self.len == 0 {
            return None;
        }
        let mut at = self.next_ms;
        for _ in 0..=(horizon_ms / SLOT_MS).min(SLOTS as u32) {
            if !self.slots[slot_of(at)].is_empty() {
                return Some(if reached(now_ms, at) { 0 } else { at.wrapping_sub(now_ms) });
            }
            at = at.wrapping_add(SLOT_MS);
        }
        None
    }
}

/// What comes due for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deadline {
    /// A closing connection's linger ends.
    Linger,
    /// A TLS handshake (or, on a TLS-only port, a first byte) takes too long.
    Handshake,
    /// An event stream has been silent too long.
    Heartbeat,
    /// A held long-poll is answered empty.
    PollDue,
    /// An HTTP request head takes too long.
    HttpHead,
    /// A keep-alive HTTP connection has been idle too long.
    HttpIdle,
    /// A quiet client is pinged.
    Ping,
    /// A pinged client did not answer.
    Stale,
    /// No AUTH in time.
    AuthLate,
    /// The token expired (past the grace).
    TokenExpired,
    /// An empty queue gives its memory back.
    ReleaseQueue,
}

impl Worker {
    /// The connection's earliest deadline and what comes due then, given its state now.
    fn next_deadline(&self, conn: &Conn) -> Option<(u32, Deadline)> {
        self.deadlines(conn)
            .into_iter()
            .flatten()
            .reduce(|a, b| if before(b.0, a.0) { b } else { a })
    }

    /// The connection's deadlines, given its state now: its idle queue's, its phase's or
    /// protocol's, and its access's (each may come due whatever the others do, so each is acted
    /// on when due: a stream whose heartbeat cannot go out still has its token expire).
    fn deadlines(&self, conn: &Conn) -> [Option<(u32, Deadline)>; 3] {
        let Spans { ping_after, stale_after, head_deadline, heartbeat_after } = self.timers.spans;
        let mut found = [None; 3];
        // Queue memory goes back once a connection has had nothing to write for a while
        // (invariant 5); kept meanwhile, so that a busy subscriber does not pay a malloc/free
        // pair per frame.
        if conn.queue.holds_idle_memory() {
            let due = conn.last_write_ms.wrapping_add(HOUSEKEEPING_MS);
            found[0] = Some((due, Deadline::ReleaseQueue));
        }
        let mut consider = |due: u32, what: Deadline| found[1] = Some((due, what));
        // A protocol may have a deadline of its own instead of the keepalive PING.
        let own = conn.session.as_deref().and_then(Session::deadline);
        match (&conn.phase, own) {
            (Phase::Closing { deadline_ms, .. }, _) => consider(*deadline_ms, Deadline::Linger),
            // A TLS handshake has as long as an HTTP head (a stalled one is a slowloris), and so,
            // on a TLS-only port, has a connection that has not said anything yet (it gets no
            // plaintext PING).
            _ if conn.tls.as_ref().is_some_and(|tls| tls.is_handshaking())
                || (self.shared.config.tls_only && conn.tls.is_none() && conn.format.is_none()) =>
            {
                consider(conn.accepted_ms.wrapping_add(head_deadline), Deadline::Handshake)
            }
            (Phase::Waiting(Wait::Poll(wait)), _) => consider(wait.deadline_ms, Deadline::PollDue),
            (_, Some(SessionDeadline::HeadSince(since))) => {
                consider(since.wrapping_add(head_deadline), Deadline::HttpHead)
            }
            (_, Some(SessionDeadline::IdleClose)) => {
                // Idle since its last request or its last response, whichever is later: a
                // long-poll answered after a long wait starts the idle time then.
                let last = conn.last_input_ms;
                let since =
                    if before(last, conn.last_write_ms) { conn.last_write_ms } else { last };
                consider(since.wrapping_add(ping_after), Deadline::HttpIdle)
            }
            // A stream's client cannot answer; a heartbeat comment keeps proxies from closing
            // it, and a dead client shows up as a failed write.
            (_, Some(SessionDeadline::Heartbeat)) => {
                consider(conn.last_write_ms.wrapping_add(heartbeat_after), Deadline::Heartbeat)
            }
            (_, Some(SessionDeadline::Never)) => {}
            _ if conn.ping_sent => {
                consider(conn.last_input_ms.wrapping_add(stale_after), Deadline::Stale)
            }
            _ => consider(conn.last_input_ms.wrapping_add(ping_after), Deadline::Ping),
        }
        let mut consider = |due: u32, what: Deadline| found[2] = Some((due, what));
        let auth = self.policy.auth.as_ref();
        if let Some(auth) = auth.filter(|_| conn.is_open() && conn.format != Some(Format::Http)) {
            match &conn.grant {
                None if auth.anonymous().is_none() => {
                    let due = conn.accepted_ms.wrapping_add(clock_ms(auth.timeout));
                    consider(due, Deadline::AuthLate);
                }
                Some(grant) => {
                    if let Some(expires) = grant.expires_unix_ms {
                        let ends = expires.saturating_add(auth.expiry_grace.as_millis() as u64);
                        let left = ends.saturating_sub(self.wall_ms()).min(u32::MAX as u64 / 4);
                        consider(self.now_ms.wrapping_add(left as u32), Deadline::TokenExpired);
                    }
                }
                None => {}
            }
        }
        found
    }

    /// Files connection `key`'s next deadline if it is earlier than the one on the wheel.
    pub(super) fn rearm(&mut self, key: usize) {
        self.rearm_after(key, self.now_ms);
    }

    /// `rearm`, with no deadline earlier than `not_before_ms`.
    fn rearm_after(&mut self, key: usize, not_before_ms: u32) {
        let Some(conn) = self.conns.get(key) else { return };
        let Some((mut due, _)) = self.next_deadline(conn) else { return };
        if before(due, not_before_ms) {
            due = not_before_ms;
        }
        if conn.timer_ms.is_some_and(|armed| !before(due, armed)) {
            return;
        }
        let at = self.timers.schedule(ConnRef::of(key, conn), due);
        self.conns[key].timer_ms = Some(at);
    }

    /// Every connection's deadline filed anew (the access policy changed: authentication
    /// deadlines with it).
    pub(super) fn rearm_all(&mut self) {
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.rearm(key);
        }
    }

    /// Acts on the deadlines that came due, a budget's worth per turn.
    pub(super) fn fire_timers(&mut self) {
        let mut due = std::mem::take(&mut self.timers_due);
        self.timers.expire(self.now_ms, FIRE_BUDGET, &mut due);
        if due.is_empty() {
            self.timers_due = due;
            return;
        }
        for (noted, at) in due.drain(..) {
            let Some(key) = self.resolve(noted) else { continue };
            if self.conns[key].timer_ms != Some(at) {
                continue; // A later rearm filed an earlier entry; that one is live.
            }
            self.conns[key].timer_ms = None;
            let due = self.deadlines(&self.conns[key]);
            let mut acted = false;
            for (deadline_ms, what) in due.into_iter().flatten() {
                if !reached(self.now_ms, deadline_ms) {
                    continue;
                }
                // An earlier action may have closed it: only a closing one's linger and queue
                // deadlines still apply then.
                let Some(conn) = self.conns.get(key) else { break };
                if !conn.is_open() && !matches!(what, Deadline::Linger | Deadline::ReleaseQueue) {
                    continue;
                }
                self.on_deadline(key, what);
                acted = true;
            }
            // What is still due after acting (a heartbeat that could not go out) is looked at
            // again a housekeeping period later, as when timers were checked on that tick.
            let not_before = if acted { HOUSEKEEPING_MS } else { 0 };
            self.rearm_after(key, self.now_ms.wrapping_add(not_before));
        }
        self.timers_due = due;
        self.flush_dirty();
    }

    fn on_deadline(&mut self, key: usize, what: Deadline) {
        let head_deadline = self.timers.spans.head_deadline;
        match what {
            Deadline::ReleaseQueue => self.conns[key].queue.release_if_empty(),
            Deadline::Linger => self.close(key, Close::now("linger deadline passed")),
            Deadline::Stale => {
                WorkerCounters::add(&self.counters().stale_closes, 1);
                debug!("worker {}: connection {key} is stale (no answer to PING)", self.id);
                let why = "stale connection: no answer to PING";
                self.close(key, Close::error(ErrorCode::StaleConnection, why));
            }
            Deadline::Ping => {
                self.conns[key].ping_sent = true;
                let frame = self.conns[key].reply_format().ping();
                let result = self.reply(key, frame);
                self.close_on_error(key, result);
            }
            Deadline::Heartbeat => {
                let result = self.reply(key, Format::Sse.ping());
                self.close_on_error(key, result);
            }
            Deadline::PollDue => {
                let result = self.answer_poll(key, &[]);
                self.close_on_error(key, result);
            }
            Deadline::HttpHead => {
                WorkerCounters::add(&self.counters().http_head_timeouts, 1);
                let why = format!("request head not complete within {head_deadline} ms");
                let close = self.http_fatal(key, ErrorCode::StaleConnection, why);
                self.close(key, close);
            }
            Deadline::Handshake => {
                WorkerCounters::add(self.counters().tls_failure("timeout"), 1);
                if let Some(tls) = self.conns[key].tls.as_deref_mut() {
                    tls.fail();
                }
                debug!(
                    "worker {}: TLS handshake on connection {key} not done in {head_deadline} ms",
                    self.id
                );
                self.close(key, Close::now("TLS handshake timed out"));
            }
            Deadline::HttpIdle => {
                debug!("worker {}: closing idle HTTP connection {key}", self.id);
                self.close(key, Close::quietly());
            }
            Deadline::AuthLate => {
                WorkerCounters::add(&self.counters().auth_timeout_closes, 1);
                let timeout = self.policy.auth.as_ref().map_or(0, |a| a.timeout.as_millis());
                let why = format!("authentication timeout: no AUTH within {timeout} ms");
                self.close(key, Close::error(ErrorCode::Unauthorized, why));
            }
            Deadline::TokenExpired => {
                WorkerCounters::add(&self.counters().auth_expiry_closes, 1);
                self.close(key, Close::error(ErrorCode::Unauthorized, "token expired"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wheel_at(now_ms: u32) -> TimerWheel {
        TimerWheel::new(now_ms, &crate::config::Config::default())
    }

    fn conn(key: usize) -> ConnRef {
        ConnRef { key, serial: 1 }
    }

    fn fire(wheel: &mut TimerWheel, now_ms: u32) -> Vec<usize> {
        let mut out = Vec::new();
        wheel.expire(now_ms, usize::MAX, &mut out);
        let mut keys: Vec<usize> = out.iter().map(|(c, _)| c.key).collect();
        keys.sort();
        keys
    }

    #[test]
    fn entries_fire_at_their_slot_never_early() {
        let mut wheel = wheel_at(1000);
        assert_eq!(wheel.schedule(conn(1), 1003), 1008, "rounded up to the slot");
        assert_eq!(wheel.schedule(conn(2), 1008), 1008);
        assert_eq!(wheel.schedule(conn(3), 1500), 1504);
        assert_eq!(wheel.schedule(conn(4), 500), 1000, "already due: the next slot");
        assert_eq!(fire(&mut wheel, 1007), vec![4]);
        assert_eq!(wheel.until_next(1007, 250), Some(1));
        assert_eq!(fire(&mut wheel, 1008), vec![1, 2]);
        assert_eq!(wheel.until_next(1008, 250), None, "1504 is past the horizon");
        assert_eq!(fire(&mut wheel, 1503), Vec::<usize>::new());
        assert_eq!(wheel.until_next(1503, 250), Some(1));
        assert_eq!(fire(&mut wheel, 1600), vec![3]);
        assert_eq!(wheel.len, 0);
    }

    #[test]
    fn far_deadlines_wait_at_the_far_end_and_the_clock_may_wrap() {
        let start = u32::MAX - 100 * SLOT_MS;
        let mut wheel = wheel_at(start);
        let far = wheel.schedule(conn(1), start.wrapping_add(60_000));
        assert_eq!(far, (start - start % SLOT_MS).wrapping_add((SLOTS as u32 - 1) * SLOT_MS));
        let near = wheel.schedule(conn(2), start.wrapping_add(200 * SLOT_MS));
        assert!(near < start, "past the wrap");
        assert_eq!(fire(&mut wheel, near.wrapping_sub(1)), Vec::<usize>::new());
        assert_eq!(fire(&mut wheel, near), vec![2]);
        assert_eq!(fire(&mut wheel, far), vec![1]);
    }

    #[test]
    fn a_turn_fires_at_most_its_budget() {
        let mut wheel = wheel_at(0);
        for key in 0..10 {
            wheel.schedule(conn(key), 16);
        }
        let mut out = Vec::new();
        wheel.expire(100, 4, &mut out);
        assert_eq!(out.len(), 4);
        wheel.expire(100, 8, &mut out);
        assert_eq!(out.len(), 8);
        wheel.expire(100, 100, &mut out);
        assert_eq!(out.len(), 10);
        assert_eq!(wheel.len, 0);
    }

    #[test]
    fn a_worker_that_slept_long_fires_everything_once() {
        let mut wheel = wheel_at(0);
        for key in 0..SLOTS {
            wheel.schedule(conn(key), key as u32 * SLOT_MS);
        }
        assert_eq!(fire(&mut wheel, 10 * SLOTS as u32 * SLOT_MS).len(), SLOTS);
    }
}
