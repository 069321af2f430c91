//! One subscriber event loop: many non-blocking connections on one mio `Poll`, any protocol.

use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use super::wire::{Event, Protocol};
use super::{monotonic_ns, new_histogram, Progress, Stamp};
use fanout::client::ServerAddr;
use fanout::protocol::websocket::opcode;
use fanout::tls::Socket;

/// What one loop (or one child process) saw.
#[derive(Debug)]
pub struct Totals {
    /// Latency samples not yet in the histogram: (value, repeats). Messages read together mostly
    /// share their microsecond, and one `record_n` per run costs a fraction of one per message.
    pending_latency: (u64, u64),
    /// Messages received.
    pub delivered: u64,
    /// Gaps seen (by offset, or by per-publisher sequence where there is no offset).
    pub lost: u64,
    /// Offsets or sequences seen again.
    pub duplicated: u64,
    /// Offsets or sequences that arrived after a later one.
    pub reordered: u64,
    /// Failed connections, server errors, unparsable streams.
    pub errors: u64,
    /// Delivery latency, microseconds.
    pub latency_us: Histogram<u64>,
}

impl Default for Totals {
    fn default() -> Self {
        Totals {
            pending_latency: (0, 0),
            delivered: 0,
            lost: 0,
            duplicated: 0,
            reordered: 0,
            errors: 0,
            latency_us: new_histogram(),
        }
    }
}

impl Totals {
    /// Records one delivery's latency (microseconds; 0 counts as 1).
    #[inline]
    pub fn record_latency(&mut self, micros: u64) {
        let micros = micros.max(1);
        if self.pending_latency.0 == micros {
            self.pending_latency.1 += 1;
        } else {
            self.flush_latency();
            self.pending_latency = (micros, 1);
        }
    }

    /// Moves the pending run of equal samples into the histogram.
    pub fn flush_latency(&mut self) {
        let (value, count) = std::mem::take(&mut self.pending_latency);
        if count > 0 {
            // Out-of-range values are clamped to the histogram's bounds rather than lost.
            let _ = self
                .latency_us
                .record_n(value.clamp(self.latency_us.low(), self.latency_us.high()), count);
        }
    }

    /// Adds another loop's totals.
    pub fn merge(&mut self, mut other: Totals) {
        self.flush_latency();
        other.flush_latency();
        self.delivered += other.delivered;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.reordered += other.reordered;
        self.errors += other.errors;
        // Both histograms share bounds, so adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
    }
}

/// What one loop needs to know.
#[derive(Debug, Clone)]
pub(crate) struct LoopPlan {
    /// The server of each subscriber, in `channels` order.
    pub servers: Vec<ServerAddr>,
    /// Trust roots for `tls://` servers (`None`: the system's).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Each subscriber's protocol, in `channels` order.
    pub protocols: Vec<Protocol>,
    /// Payload stamps are hex text (a WebSocket JSON subscriber is among them).
    pub hex_stamps: bool,
    pub channels: Vec<String>,
    pub source: Option<Ipv4Addr>,
    /// One token per connection, when the server wants them.
    pub tokens: Option<Vec<String>>,
    /// Subscribe with PSUB.
    pub pattern: bool,
}

struct Subscriber {
    stream: Socket<TcpStream>,
    protocol: Protocol,
    /// Read payload stamps as hex text (`LoopPlan::hex_stamps`).
    hex_stamps: bool,
    input: Vec<u8>,
    output: Vec<u8>,
    subscribed: bool,
    closed: bool,
    /// Last channel offset seen (protocols with offsets).
    last_offset: Option<u64>,
    /// Next sequence expected from each publisher (protocols without offsets).
    next_sequence: Vec<u32>,
}

const READ_CHUNK: usize = 256 * 1024;

impl Subscriber {
    /// A payload's stamp, in the form this run's publishers write.
    fn stamp(&self, payload: &[u8]) -> Option<Stamp> {
        match self.hex_stamps {
            true => Stamp::read_hex(payload),
            false => Stamp::read(payload),
        }
    }
}

pub(crate) fn run(plan: LoopPlan, progress: Arc<Progress>) -> Totals {
    let mut totals = Totals::default();
    let mut poll = match Poll::new() {
        Ok(poll) => poll,
        Err(e) => {
            log::error!("load: cannot create a poll: {e}");
            progress.failed.fetch_add(plan.channels.len() as u64, Ordering::Relaxed);
            return totals;
        }
    };
    let mut subs: Vec<Subscriber> = Vec::with_capacity(plan.channels.len());
    for (i, channel) in plan.channels.iter().enumerate() {
        match connect(&poll, &plan.servers[i], plan.tls.as_ref(), plan.source, i) {
            Ok(stream) => {
                let mut output = Vec::new();
                let token = plan.tokens.as_ref().and_then(|tokens| tokens.get(i));
                let token = token.map(String::as_str);
                let protocol = plan.protocols[i];
                protocol.subscribe(channel, token, plan.pattern, &mut output);
                subs.push(Subscriber {
                    stream,
                    protocol,
                    hex_stamps: plan.hex_stamps,
                    input: Vec::new(),
                    output,
                    subscribed: false,
                    closed: false,
                    last_offset: None,
                    next_sequence: Vec::new(),
                });
            }
            Err(e) => {
                log::error!("load: connection {i} to {} failed: {e}", plan.servers[i]);
                progress.failed.fetch_add(1, Ordering::Relaxed);
                totals.errors += 1;
            }
        }
    }
    let mut events = Events::with_capacity(4096);
    let mut scratch = vec![0u8; READ_CHUNK];
    while !progress.stop.load(Ordering::Relaxed) {
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(50))) {
            if e.kind() != io::ErrorKind::Interrupted {
                log::error!("load: poll failed: {e}");
                break;
            }
        }
        let now_us = monotonic_ns() / 1000;
        let mut delivered = 0;
        for event in events.iter() {
            let Some(sub) = subs.get_mut(event.token().0) else { continue };
            if sub.closed {
                continue;
            }
            if event.is_writable() || !sub.output.is_empty() || sub.stream.wants_write() {
                flush(sub, &mut totals, &progress);
            }
            if event.is_readable() || event.is_read_closed() {
                let protocol = sub.protocol;
                delivered += read(sub, protocol, &mut scratch, now_us, &mut totals, &progress);
                if !sub.output.is_empty() || sub.stream.wants_write() {
                    flush(sub, &mut totals, &progress);
                }
            }
        }
        if delivered > 0 {
            progress.delivered.fetch_add(delivered, Ordering::Relaxed);
        }
    }
    totals.flush_latency();
    totals
}

fn connect(
    poll: &Poll,
    server: &ServerAddr,
    tls: Option<&Arc<rustls::ClientConfig>>,
    source: Option<Ipv4Addr>,
    token: usize,
) -> io::Result<Socket<TcpStream>> {
    let stream = match source {
        Some(source) => TcpStream::from_std(fanout::sys::connect_from(source.into(), server.addr)?),
        None => TcpStream::connect(server.addr)?,
    };
    server.secure(register(poll, stream, token)?, tls)
}

fn register(poll: &Poll, mut stream: TcpStream, token: usize) -> io::Result<TcpStream> {
    stream.set_nodelay(true)?;
    poll.registry().register(&mut stream, Token(token), Interest::READABLE | Interest::WRITABLE)?;
    Ok(stream)
}

fn flush(sub: &mut Subscriber, totals: &mut Totals, progress: &Progress) {
    while !sub.output.is_empty() || sub.stream.wants_write() {
        let written = if sub.output.is_empty() {
            sub.stream.flush().map(|()| 0)
        } else {
            sub.stream.write(&sub.output)
        };
        match written {
            Ok(n) => {
                sub.output.drain(..n);
            }
            Err(e)
                if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected) =>
            {
                return
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return fail(sub, totals, progress, &format!("write: {e}")),
        }
    }
}

fn read(
    sub: &mut Subscriber,
    protocol: Protocol,
    scratch: &mut [u8],
    now_us: u64,
    totals: &mut Totals,
    progress: &Progress,
) -> u64 {
    let mut delivered = 0;
    loop {
        match sub.stream.read(scratch) {
            Ok(0) => {
                fail(sub, totals, progress, "server closed the connection");
                return delivered;
            }
            Ok(n) => {
                delivered += consume(sub, protocol, &scratch[..n], now_us, totals, progress);
                // A short read drained the socket, except with TLS (rustls may hold more).
                if (n < scratch.len() && !sub.stream.is_tls()) || sub.closed {
                    return delivered;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return delivered,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                fail(sub, totals, progress, &format!("read: {e}"));
                return delivered;
            }
        }
    }
}

fn fail(sub: &mut Subscriber, totals: &mut Totals, progress: &Progress, why: &str) {
    if !progress.stop.load(Ordering::Relaxed) {
        log::warn!("load: subscriber failed: {why}");
        totals.errors += 1;
        if !sub.subscribed {
            progress.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
    sub.closed = true;
}

/// Parses every complete event; returns the messages delivered. A partial event waits in
/// `sub.input`, which keeps its allocation between reads.
fn consume(
    sub: &mut Subscriber,
    protocol: Protocol,
    fresh: &[u8],
    now_us: u64,
    totals: &mut Totals,
    progress: &Progress,
) -> u64 {
    if sub.input.is_empty() {
        let (used, delivered) = parse_events(sub, protocol, fresh, now_us, totals, progress);
        if used < fresh.len() && !sub.closed {
            sub.input.extend_from_slice(&fresh[used..]);
        }
        return delivered;
    }
    let mut input = std::mem::take(&mut sub.input);
    input.extend_from_slice(fresh);
    let (used, delivered) = parse_events(sub, protocol, &input, now_us, totals, progress);
    input.drain(..used);
    sub.input = input;
    delivered
}

fn parse_events(
    sub: &mut Subscriber,
    protocol: Protocol,
    input: &[u8],
    now_us: u64,
    totals: &mut Totals,
    progress: &Progress,
) -> (usize, u64) {
    let mut at = 0;
    let mut delivered = 0;
    loop {
        if matches!(protocol, Protocol::FanoutBinary | Protocol::WsBinary) {
            // Fast path for the common frame: MSG, read in place without building an event.
            let frame = if protocol == Protocol::WsBinary {
                super::wire::websocket_payload(&input[at..], opcode::BINARY)
                    .and_then(|(inner, used)| binary_message(inner).map(|(o, p, _)| (o, p, used)))
            } else {
                binary_message(&input[at..])
            };
            if let Some((offset, payload, used)) = frame {
                at += used;
                delivered += 1;
                check_order(sub, Some(offset), payload, totals);
                if let Some(stamp) = sub.stamp(payload) {
                    totals.record_latency(now_us.saturating_sub(stamp.sent_ns / 1000));
                }
                continue;
            }
        }
        if protocol == Protocol::WsJson {
            let message = super::wire::websocket_payload(&input[at..], opcode::TEXT).and_then(
                |(text, used)| super::wire::json_message(text).map(|(o, stamp)| (o, stamp, used)),
            );
            if let Some((offset, stamp, used)) = message {
                at += used;
                delivered += 1;
                check_order(sub, Some(offset), &[], totals);
                match stamp {
                    Some(stamp) => {
                        totals.record_latency(now_us.saturating_sub(stamp.sent_ns / 1000))
                    }
                    None => totals.errors += 1,
                }
                continue;
            }
        }
        match protocol.parse(&input[at..]) {
            Ok(Some((event, used))) => {
                at += used;
                match event {
                    Event::Message { offset, payload } => {
                        delivered += 1;
                        check_order(sub, offset, &payload, totals);
                        if let Some(stamp) = sub.stamp(&payload) {
                            totals.record_latency(now_us.saturating_sub(stamp.sent_ns / 1000));
                        }
                    }
                    Event::Subscribed => {
                        if !sub.subscribed {
                            sub.subscribed = true;
                            progress.subscribed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Event::Ping => protocol.pong(&mut sub.output),
                    Event::Ignored => {}
                    Event::Error(reason) => {
                        // The first few say what went wrong; the count is in the report (a
                        // refusal at a limit would otherwise print one line per subscriber).
                        if totals.errors < 5 {
                            log::warn!("load: server error: {reason}");
                        } else if totals.errors == 5 {
                            log::warn!("load: more server errors; counted in the report");
                        }
                        totals.errors += 1;
                    }
                }
            }
            Ok(None) => break,
            Err(e) => {
                log::warn!("load: unparsable stream from the server: {e}");
                totals.errors += 1;
                sub.closed = true;
                break;
            }
        }
    }
    totals.delivered += delivered;
    (at, delivered)
}

/// A complete binary `MSG` frame at the start of `input`: (offset, payload, frame length).
fn binary_message(input: &[u8]) -> Option<(u64, &[u8], usize)> {
    let (length, rest) = input.split_first_chunk::<4>()?;
    let total = 4 + u32::from_be_bytes(*length) as usize;
    let (&opcode, rest) = rest.split_first()?;
    if opcode != fanout::protocol::binary::op::MSG || input.len() < total {
        return None;
    }
    let (&channel_len, rest) = rest.split_first()?;
    let rest = rest.get(channel_len as usize..total - 6)?;
    let (offset, payload) = rest.split_first_chunk::<8>()?;
    Some((u64::from_be_bytes(*offset), payload, total))
}

fn check_order(sub: &mut Subscriber, offset: Option<u64>, payload: &[u8], totals: &mut Totals) {
    if let Some(offset) = offset {
        // A subscription starts wherever the channel is: the first offset sets the baseline.
        let last = *sub.last_offset.get_or_insert(offset - 1);
        match offset.cmp(&(last + 1)) {
            std::cmp::Ordering::Equal => sub.last_offset = Some(offset),
            std::cmp::Ordering::Greater => {
                totals.lost += offset - last - 1;
                sub.last_offset = Some(offset);
            }
            std::cmp::Ordering::Less if offset == last => totals.duplicated += 1,
            std::cmp::Ordering::Less => totals.reordered += 1,
        }
        return;
    }
    let Some(stamp) = sub.stamp(payload) else {
        totals.errors += 1;
        return;
    };
    let publisher = stamp.publisher as usize;
    if sub.next_sequence.len() <= publisher {
        sub.next_sequence.resize(publisher + 1, 0);
    }
    let expected = &mut sub.next_sequence[publisher];
    match stamp.sequence.cmp(expected) {
        std::cmp::Ordering::Equal => *expected += 1,
        std::cmp::Ordering::Greater => {
            totals.lost += u64::from(stamp.sequence - *expected);
            *expected = stamp.sequence + 1;
        }
        std::cmp::Ordering::Less if stamp.sequence + 1 == *expected => totals.duplicated += 1,
        std::cmp::Ordering::Less => totals.reordered += 1,
    }
}
