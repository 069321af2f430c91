//! One subscriber event loop: many non-blocking connections on one mio `Poll`.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use super::{new_histogram, Progress};
use crate::protocol::{binary, Request, ServerFrame};

/// What one loop saw.
#[derive(Debug)]
pub(crate) struct Totals {
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub errors: u64,
    pub latency_us: Histogram<u64>,
}

impl Default for Totals {
    fn default() -> Self {
        Totals {
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
    pub fn merge(&mut self, other: Totals) {
        self.delivered += other.delivered;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.reordered += other.reordered;
        self.errors += other.errors;
        // Both histograms share bounds, so adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
    }
}

struct Subscriber {
    stream: TcpStream,
    input: Vec<u8>,
    output: Vec<u8>,
    channel: String,
    subscribed: bool,
    last_offset: u64,
    closed: bool,
}

const READ_CHUNK: usize = 256 * 1024;

pub(crate) fn run(
    server: SocketAddr,
    channels: Vec<String>,
    progress: Arc<Progress>,
    epoch: Instant,
) -> Totals {
    let mut totals = Totals::default();
    let mut poll = match Poll::new() {
        Ok(poll) => poll,
        Err(e) => {
            log::error!("load: cannot create a poll: {e}");
            progress.failed.fetch_add(channels.len() as u64, Ordering::Relaxed);
            return totals;
        }
    };
    let mut subs: Vec<Subscriber> = Vec::with_capacity(channels.len());
    for (i, channel) in channels.into_iter().enumerate() {
        match connect(&poll, server, i) {
            Ok(stream) => {
                let mut output = binary::PREFACE.to_vec();
                binary::encode_request(
                    &Request::Subscribe { channel: channel.as_bytes() },
                    &mut output,
                );
                subs.push(Subscriber {
                    stream,
                    input: Vec::new(),
                    output,
                    channel,
                    subscribed: false,
                    last_offset: 0,
                    closed: false,
                });
            }
            Err(e) => {
                log::error!("load: connect {i} failed: {e}");
                progress.failed.fetch_add(1, Ordering::Relaxed);
                totals.errors += 1;
            }
        }
    }
    let mut events = Events::with_capacity(4096);
    let mut scratch = vec![0u8; READ_CHUNK];
    let mut delivered_unreported = 0u64;
    while !progress.stop.load(Ordering::Relaxed) {
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(50))) {
            if e.kind() != io::ErrorKind::Interrupted {
                log::error!("load: poll failed: {e}");
                break;
            }
        }
        let now_us = epoch.elapsed().as_micros() as u64;
        for event in events.iter() {
            let Some(sub) = subs.get_mut(event.token().0) else { continue };
            if sub.closed {
                continue;
            }
            if event.is_writable() && !sub.output.is_empty() {
                match sub.stream.write(&sub.output) {
                    Ok(n) => {
                        sub.output.drain(..n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                    Err(e) => fail(sub, &mut totals, &progress, &format!("write: {e}")),
                }
            }
            if event.is_readable() || event.is_read_closed() {
                loop {
                    match sub.stream.read(&mut scratch) {
                        Ok(0) => {
                            fail(sub, &mut totals, &progress, "server closed the connection");
                            break;
                        }
                        Ok(n) => {
                            let delivered =
                                consume(sub, &scratch[..n], now_us, &mut totals, &progress);
                            delivered_unreported += delivered;
                            if n < scratch.len() {
                                break;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            fail(sub, &mut totals, &progress, &format!("read: {e}"));
                            break;
                        }
                    }
                }
            }
        }
        if delivered_unreported > 0 {
            progress.delivered.fetch_add(delivered_unreported, Ordering::Relaxed);
            delivered_unreported = 0;
        }
    }
    // Whatever never arrived is lost.
    totals
}

fn connect(poll: &Poll, server: SocketAddr, token: usize) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect(server)?;
    stream.set_nodelay(true)?;
    poll.registry().register(&mut stream, Token(token), Interest::READABLE | Interest::WRITABLE)?;
    Ok(stream)
}

fn fail(sub: &mut Subscriber, totals: &mut Totals, progress: &Progress, why: &str) {
    if !progress.stop.load(Ordering::Relaxed) {
        log::warn!("load: subscriber of {} failed: {why}", sub.channel);
        totals.errors += 1;
        if !sub.subscribed {
            progress.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
    sub.closed = true;
}

/// Parses every complete frame; returns the messages delivered.
fn consume(
    sub: &mut Subscriber,
    fresh: &[u8],
    now_us: u64,
    totals: &mut Totals,
    progress: &Progress,
) -> u64 {
    let buffered;
    let input: &[u8] = if sub.input.is_empty() {
        fresh
    } else {
        sub.input.extend_from_slice(fresh);
        buffered = std::mem::take(&mut sub.input);
        &buffered
    };
    let mut at = 0;
    let mut delivered = 0;
    loop {
        match binary::parse_server_frame(&input[at..], usize::MAX) {
            Ok(Some((frame, used))) => {
                at += used;
                match frame {
                    ServerFrame::Message { offset, payload, .. } => {
                        delivered += 1;
                        if offset == sub.last_offset + 1 {
                            sub.last_offset = offset;
                        } else if offset > sub.last_offset {
                            totals.lost += offset - sub.last_offset - 1;
                            sub.last_offset = offset;
                        } else if offset == sub.last_offset {
                            totals.duplicated += 1;
                        } else {
                            // Below the last offset seen: it arrived after a later message.
                            totals.reordered += 1;
                        }
                        if let Some(stamp) = payload.first_chunk::<8>() {
                            let sent_us = u64::from_be_bytes(*stamp) / 1000;
                            totals
                                .latency_us
                                .saturating_record(now_us.saturating_sub(sent_us).max(1));
                        }
                    }
                    ServerFrame::Ok { .. } => {
                        if !sub.subscribed {
                            sub.subscribed = true;
                            progress.subscribed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    ServerFrame::Ping => binary::encode_request(&Request::Pong, &mut sub.output),
                    ServerFrame::Pong => {}
                    ServerFrame::Error { code, reason } => {
                        log::warn!("load: server error {code} on {}: {reason}", sub.channel);
                        totals.errors += 1;
                    }
                }
            }
            Ok(None) => break,
            Err(e) => {
                log::warn!("load: bad frame from server: {e}");
                totals.errors += 1;
                sub.closed = true;
                return delivered;
            }
        }
    }
    sub.input = input[at..].to_vec();
    totals.delivered += delivered;
    delivered
}
