//! `fanout load`: opens many subscriber connections on a few mio event-loop threads, publishes
//! stamped messages, and reports deliveries per second, latency percentiles and any lost,
//! duplicated or reordered message.
//!
//! Every payload starts with a `Stamp`: the publish time on CLOCK_MONOTONIC (one clock for the
//! parent and its child processes), the publisher and its sequence on the channel. Each delivery
//! yields a latency sample; subscribers check order by channel offset where the protocol has one
//! (fanout) and by per-publisher sequence otherwise (Redis, NATS).
//!
//! Beyond what one process may hold (RLIMIT_NOFILE), subscribers are spread over child
//! processes of this same binary, each on its own source address, and their results are merged
//! into one report (`children.rs`).
//!
//! Flow control: with `--rate 0` publishers keep at most `--window` messages in flight on average
//! (published but not yet delivered to their subscribers), which measures the server's capacity
//! without turning the load into a slow-consumer test.

mod children;
mod report;
mod subscribers;
pub mod wire;

use std::io::{BufWriter, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

pub use children::child_main;
use fanout::client::ServerAddr;
pub use report::{ProcessSample, Report};
use subscribers::LoopPlan;
pub use subscribers::Totals;
pub use wire::Protocol;

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Server address (publishers, and subscribers unless `subscribe_to` is given);
    /// `tls://host:port` for TLS.
    pub server: ServerAddr,
    /// Subscribers connect to these instead, subscriber `i` to `subscribe_to[i % len]` (a
    /// cluster's nodes: publish on one, receive on all).
    pub subscribe_to: Vec<ServerAddr>,
    /// Trust roots for `tls://` servers (`None`: the system's), and the file they came from
    /// (handed to child processes).
    pub tls: Option<(Arc<rustls::ClientConfig>, Option<std::path::PathBuf>)>,
    /// Wire protocol (fanout binary or text, Redis RESP, NATS).
    pub protocol: Protocol,
    /// Subscribers' protocols, when they differ from `protocol`: subscriber `i` speaks
    /// `subscriber_protocols[i % len]` (a mixed crowd; publishers keep `protocol`).
    pub subscriber_protocols: Vec<Protocol>,
    /// Subscriber connections.
    pub subscribers: usize,
    /// Channels; subscriber `i` takes channel `i % channels`, message `k` goes to `k % channels`.
    pub channels: usize,
    /// Publisher connections.
    pub publishers: usize,
    /// Messages in all.
    pub messages: u64,
    /// Payload bytes (at least `Stamp::BYTES`; `Stamp::HEX_BYTES` with `Protocol::WsJson`).
    pub payload_bytes: usize,
    /// Messages per second over all publishers; 0 for "as fast as the window allows".
    pub rate: u64,
    /// Messages in flight at most (average over subscribers) when `rate` is 0.
    pub window: u64,
    /// Subscriber event-loop threads.
    pub threads: usize,
    /// Give up waiting for deliveries this long after the last publish.
    pub drain_timeout: Duration,
    /// Whole-run limit.
    pub max_duration: Duration,
    /// Server processes to sample for CPU and resident memory (summed).
    pub server_pids: Vec<u32>,
    /// Print a live line every second.
    pub live: bool,
    /// Channel name prefix.
    pub channel_prefix: String,
    /// Keep the subscribers connected this long after setup, before publishing (memory sampling).
    pub hold: Duration,
    /// Subscribers one process may hold; beyond it the run is split over child processes.
    /// 0: from RLIMIT_NOFILE (hard limit, less some headroom).
    pub max_per_process: usize,
    /// Global index of this process's first subscriber (child processes; decides channels).
    pub first_subscriber: usize,
    /// Source address for subscriber connections (child processes spread over 127.0.0.x).
    pub source: Option<Ipv4Addr>,
    /// With the server's HMAC secret: every connection authenticates first with a token of its
    /// own (subscriber i is `load-i`), minted here (the reconnect-storm benchmark).
    pub token_secret: Option<Vec<u8>>,
    /// Subscribers use wildcard subscriptions (PSUB with the channel name as the pattern).
    pub pattern: bool,
}

impl LoadConfig {
    /// The protocol of subscriber `i` (counted over every process).
    pub fn subscriber_protocol(&self, i: usize) -> Protocol {
        match self.subscriber_protocols.len() {
            0 => self.protocol,
            n => self.subscriber_protocols[i % n],
        }
    }

    /// Payload stamps are hex text when a WebSocket JSON subscriber must read them.
    pub fn hex_stamps(&self) -> bool {
        self.protocol == Protocol::WsJson || self.subscriber_protocols.contains(&Protocol::WsJson)
    }
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            server: SocketAddr::from(([127, 0, 0, 1], 7400)).into(),
            subscribe_to: Vec::new(),
            tls: None,
            protocol: Protocol::FanoutBinary,
            subscriber_protocols: Vec::new(),
            subscribers: 1000,
            channels: 1,
            publishers: 1,
            messages: 1_000_000,
            payload_bytes: 64,
            rate: 0,
            window: 2000,
            threads: 1,
            drain_timeout: Duration::from_secs(10),
            max_duration: Duration::from_secs(300),
            server_pids: Vec::new(),
            live: true,
            channel_prefix: "load".into(),
            hold: Duration::ZERO,
            max_per_process: 0,
            first_subscriber: 0,
            source: None,
            token_secret: None,
            pattern: false,
        }
    }
}

/// Why a load run could not be done.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A socket or thread operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// Subscribers did not all get subscribed in time.
    #[error(
        "only {ready} of {wanted} subscribers were subscribed after {waited:?} ({failed} failed)"
    )]
    SetupTimeout {
        /// Subscribed.
        ready: u64,
        /// Wanted.
        wanted: usize,
        /// Failed connections.
        failed: u64,
        /// Time waited.
        waited: Duration,
    },
    /// A configuration value is unusable.
    #[error("invalid load configuration: {0}")]
    Config(String),
}

/// Counters the subscriber threads publish for the publishers and the live line.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    pub subscribed: AtomicU64,
    pub failed: AtomicU64,
    pub delivered: AtomicU64,
    pub published: AtomicU64,
    pub publishers_done: AtomicU64,
    pub stop: AtomicBool,
}

/// The payload header every protocol carries: send time (CLOCK_MONOTONIC nanoseconds), publisher
/// id, and that publisher's sequence number on the message's channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// When it was published.
    pub sent_ns: u64,
    /// Which publisher.
    pub publisher: u32,
    /// Its sequence on this channel, from 0.
    pub sequence: u32,
}

impl Stamp {
    /// Bytes at the start of each payload.
    pub const BYTES: usize = 16;

    fn write(self, payload: &mut [u8]) {
        payload[..8].copy_from_slice(&self.sent_ns.to_be_bytes());
        payload[8..12].copy_from_slice(&self.publisher.to_be_bytes());
        payload[12..16].copy_from_slice(&self.sequence.to_be_bytes());
    }

    /// Hex digits of the text form.
    pub const HEX_BYTES: usize = 32;

    /// The text form, for formats where browsers expect text (WebSocket JSON): the same 16 bytes
    /// as 32 lower-case hex digits, so that the payload stays UTF-8 and travels as JSON `data`.
    fn write_hex(self, payload: &mut [u8]) {
        let mut bytes = [0u8; Self::BYTES];
        self.write(&mut bytes);
        for (i, byte) in bytes.iter().enumerate() {
            payload[2 * i] = b"0123456789abcdef"[usize::from(byte >> 4)];
            payload[2 * i + 1] = b"0123456789abcdef"[usize::from(byte & 0xf)];
        }
    }

    /// Reads the text form from a payload's first 32 bytes.
    pub fn read_hex(payload: &[u8]) -> Option<Stamp> {
        // A table, not `to_digit`: random hex digits make its branches mispredict, which cost
        // the generator more than the rest of a WebSocket JSON message together (perf).
        const fn table() -> [u8; 256] {
            let mut table = [0xff; 256];
            let mut i = 0;
            while i < 16 {
                table[b"0123456789abcdef"[i] as usize] = i as u8;
                table[b"0123456789ABCDEF"[i] as usize] = i as u8;
                i += 1;
            }
            table
        }
        static HEX: [u8; 256] = table();
        let digits = payload.get(..Self::HEX_BYTES)?;
        let mut bytes = [0u8; Self::BYTES];
        let mut invalid = 0;
        for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
            let (hi, lo) = (HEX[usize::from(pair[0])], HEX[usize::from(pair[1])]);
            invalid |= hi | lo;
            *byte = hi << 4 | lo;
        }
        (invalid & 0xf0 == 0).then(|| Stamp::read(&bytes)).flatten()
    }

    /// Reads the stamp from a payload's first 16 bytes.
    pub fn read(payload: &[u8]) -> Option<Stamp> {
        let (time, rest) = payload.split_first_chunk::<8>()?;
        let (publisher, rest) = rest.split_first_chunk::<4>()?;
        let (sequence, _) = rest.split_first_chunk::<4>()?;
        Some(Stamp {
            sent_ns: u64::from_be_bytes(*time),
            publisher: u32::from_be_bytes(*publisher),
            sequence: u32::from_be_bytes(*sequence),
        })
    }
}

/// Nanoseconds on CLOCK_MONOTONIC: one clock for the parent and its child processes, so that a
/// child computes latency from a stamp its parent wrote.
pub(crate) fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec for clock_gettime to fill; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Subscribers one process can hold: the descriptor hard limit less headroom for the rest.
fn per_process_cap(config: &LoadConfig) -> usize {
    if config.max_per_process > 0 {
        return config.max_per_process;
    }
    match fanout::sys::raise_nofile_limit() {
        Ok(limit) => (limit.after as usize).saturating_sub(config.publishers + 64).max(1),
        Err(_) => 1000,
    }
}

/// Runs the load and returns the report.
pub fn run(config: &LoadConfig) -> Result<Report, LoadError> {
    // ws-json stamps are hex text (see `Stamp::write_hex`).
    let stamp_bytes = if config.hex_stamps() { Stamp::HEX_BYTES } else { Stamp::BYTES };
    if config.payload_bytes < stamp_bytes
        || config.channels == 0
        || config.threads == 0
        || config.publishers == 0
    {
        return Err(LoadError::Config(format!(
            "payload of at least {stamp_bytes} bytes, and at least one channel, thread and publisher"
        )));
    }
    let cap = per_process_cap(config);
    let progress = Arc::new(Progress::default());
    let holders = if config.subscribers > cap {
        Holders::Children(children::spawn(config, cap, progress.clone())?)
    } else {
        Holders::Threads(spawn_loops(config, progress.clone())?)
    };
    let outcome = drive(config, &progress, &holders);
    progress.stop.store(true, Ordering::Relaxed);
    let totals = holders.finish();
    let (measured, publish_errors) = outcome?;
    Ok(Report::new(
        config,
        &progress,
        totals,
        expected_deliveries(config),
        &measured,
        publish_errors,
    ))
}

/// Who holds the subscriber connections.
enum Holders {
    Threads(Vec<thread::JoinHandle<Totals>>),
    Children(children::Children),
}

impl Holders {
    fn finish(self) -> Totals {
        let mut totals = Totals::default();
        match self {
            Holders::Threads(loops) => {
                for handle in loops {
                    match handle.join() {
                        Ok(t) => totals.merge(t),
                        Err(_) => totals.errors += 1,
                    }
                }
            }
            Holders::Children(children) => totals.merge(children.finish()),
        }
        totals
    }

    /// Processes whose CPU is the load generator's.
    fn pids(&self) -> Vec<u32> {
        let mut pids = vec![std::process::id()];
        if let Holders::Children(children) = self {
            pids.extend(children.pids());
        }
        pids
    }
}

/// Starts this process's subscriber loops.
pub(crate) fn spawn_loops(
    config: &LoadConfig,
    progress: Arc<Progress>,
) -> Result<Vec<thread::JoinHandle<Totals>>, LoadError> {
    let threads = config.threads.min(config.subscribers.max(1));
    let mut loops = Vec::new();
    for t in 0..threads {
        let channels: Vec<String> = (t..config.subscribers)
            .step_by(threads)
            .map(|i| channel_name(config, (config.first_subscriber + i) % config.channels))
            .collect();
        let tokens = config.token_secret.as_ref().map(|secret| {
            (0..channels.len())
                .map(|k| {
                    load_token(
                        secret,
                        &format!("load-{}", config.first_subscriber + t + k * threads),
                    )
                })
                .collect()
        });
        let servers = (t..config.subscribers)
            .step_by(threads)
            .map(|i| match config.subscribe_to.len() {
                0 => config.server.clone(),
                n => config.subscribe_to[(config.first_subscriber + i) % n].clone(),
            })
            .collect();
        let plan = LoopPlan {
            servers,
            tls: config.tls.as_ref().map(|(tls, _)| tls.clone()),
            hex_stamps: config.hex_stamps(),
            protocols: (t..config.subscribers)
                .step_by(threads)
                .map(|i| config.subscriber_protocol(config.first_subscriber + i))
                .collect(),
            channels,
            source: config.source,
            tokens,
            pattern: config.pattern,
        };
        let progress = progress.clone();
        let handle = thread::Builder::new()
            .name(format!("load-sub-{t}"))
            .spawn(move || subscribers::run(plan, progress))
            .map_err(|source| LoadError::Io { what: "spawning a subscriber thread", source })?;
        loops.push(handle);
    }
    Ok(loops)
}

fn channel_name(config: &LoadConfig, channel: usize) -> String {
    format!("{}{channel}", config.channel_prefix)
}

/// What `drive` measured.
#[derive(Debug)]
pub(crate) struct Measured {
    pub elapsed: Duration,
    pub setup: Duration,
    pub server: Option<(ProcessSample, ProcessSample)>,
    pub client: Option<(ProcessSample, ProcessSample)>,
}

/// Waits for every subscriber, publishes, waits for the deliveries. Returns what it measured and
/// the number of failed publishers.
fn drive(
    config: &LoadConfig,
    progress: &Arc<Progress>,
    holders: &Holders,
) -> Result<(Measured, u64), LoadError> {
    let setup_started = Instant::now();
    while progress.subscribed.load(Ordering::Relaxed) < config.subscribers as u64 {
        let failed = progress.failed.load(Ordering::Relaxed);
        // A minute or two; a million connections on a small host take longer.
        let patience = Duration::from_secs(120.max(config.subscribers as u64 / 3000));
        if failed > 0 || setup_started.elapsed() > patience {
            return Err(LoadError::SetupTimeout {
                ready: progress.subscribed.load(Ordering::Relaxed),
                wanted: config.subscribers,
                failed,
                waited: setup_started.elapsed(),
            });
        }
        thread::sleep(Duration::from_millis(5));
    }
    let setup = setup_started.elapsed();
    if !config.hold.is_zero() {
        thread::sleep(config.hold);
    }

    let pids = holders.pids();
    let server_before = ProcessSample::sum(&config.server_pids);
    let client_before = ProcessSample::sum(&pids);
    let started = Instant::now();
    let publishers: Vec<_> = (0..config.publishers)
        .map(|p| {
            let config = config.clone();
            let progress = progress.clone();
            thread::Builder::new()
                .name(format!("load-pub-{p}"))
                .spawn(move || publish(&config, p, &progress))
                .map_err(|source| LoadError::Io { what: "spawning a publisher thread", source })
        })
        .collect::<Result<_, _>>()?;

    let expected = expected_deliveries(config);
    let mut last_live = Instant::now();
    let mut live_delivered = 0;
    let mut seen_delivered = 0;
    let mut last_delivery_at = started;
    let mut publishers_done_at: Option<Instant> = None;
    loop {
        thread::sleep(Duration::from_millis(2));
        let delivered = progress.delivered.load(Ordering::Relaxed);
        if delivered != seen_delivered {
            seen_delivered = delivered;
            last_delivery_at = Instant::now();
        }
        let publishers_done =
            progress.publishers_done.load(Ordering::Relaxed) == config.publishers as u64;
        if publishers_done && publishers_done_at.is_none() {
            publishers_done_at = Some(Instant::now());
        }
        if config.live && last_live.elapsed() >= Duration::from_secs(1) {
            let rate = (delivered - live_delivered) as f64 / last_live.elapsed().as_secs_f64();
            eprintln!(
                "[{:>5.1}s] subscribers {} published {} delivered {} ({:.2}M/s)",
                started.elapsed().as_secs_f64(),
                progress.subscribed.load(Ordering::Relaxed),
                progress.published.load(Ordering::Relaxed),
                delivered,
                rate / 1e6
            );
            last_live = Instant::now();
            live_delivered = delivered;
        }
        let drained = publishers_done && delivered >= expected;
        let gave_up = publishers_done_at.is_some_and(|at| at.elapsed() > config.drain_timeout)
            || started.elapsed() > config.max_duration;
        if drained || gave_up {
            break;
        }
    }
    let measured = Measured {
        // The run lasts until the last delivery, not until we noticed it.
        elapsed: if expected == 0 { started.elapsed() } else { last_delivery_at - started },
        setup,
        server: server_before.zip(ProcessSample::sum(&config.server_pids)),
        client: client_before.zip(ProcessSample::sum(&pids)),
    };
    progress.stop.store(true, Ordering::Relaxed);
    let mut publish_errors = 0;
    for publisher in publishers {
        match publisher.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                log::error!("publisher failed: {e}");
                publish_errors += 1;
            }
            Err(_) => publish_errors += 1,
        }
    }
    Ok((measured, publish_errors))
}

/// Deliveries the run should produce: each message reaches its channel's subscribers.
fn expected_deliveries(config: &LoadConfig) -> u64 {
    let subscribers_of = |channel: usize| {
        (config.subscribers / config.channels
            + usize::from(channel < config.subscribers % config.channels)) as u64
    };
    let channels = config.channels as u64;
    (0..config.channels)
        .map(|c| {
            let messages =
                config.messages / channels + u64::from((c as u64) < config.messages % channels);
            messages * subscribers_of(c)
        })
        .sum()
}

fn publish(config: &LoadConfig, id: usize, progress: &Progress) -> Result<(), std::io::Error> {
    let result = publish_all(config, id, progress);
    progress.publishers_done.fetch_add(1, Ordering::Relaxed);
    result
}

/// A token for load connection `subject` that may subscribe and publish anywhere, for an hour.
fn load_token(secret: &[u8], subject: &str) -> String {
    let all = [">".to_string()];
    let expires = fanout::auth::unix_now_secs() + 3600;
    // The secret is checked to be non-empty where it is read (`fanout load`).
    fanout::auth::mint_hs256(secret, Some(subject), &all, &all, expires).unwrap_or_default()
}

fn publish_all(config: &LoadConfig, id: usize, progress: &Progress) -> Result<(), std::io::Error> {
    let stream = TcpStream::connect(config.server.addr)?;
    stream.set_nodelay(true)?;
    let tls = config.tls.as_ref().map(|(tls, _)| tls);
    let sink: Box<dyn Write> = match config.server.secure(stream, tls)? {
        fanout::tls::Socket::Plain(stream) => {
            // Replies (RESP's receiver counts, NATS's INFO, errors) are read and dropped on a
            // side thread so that the server never blocks writing to us. It ends when the
            // connection closes.
            let mut replies = stream.try_clone()?;
            thread::spawn(move || {
                let mut sink = [0u8; 16 * 1024];
                while matches!(replies.read(&mut sink), Ok(n) if n > 0) {}
            });
            Box::new(stream)
        }
        fanout::tls::Socket::Tls(tls) => {
            let mut tls = *tls;
            tls.complete_handshake()?;
            tls.socket().set_nonblocking(true)?;
            Box::new(DrainingSink(tls))
        }
    };
    let mut out = BufWriter::with_capacity(64 * 1024, sink);
    let mut frame = Vec::with_capacity(config.payload_bytes + 64);
    let token =
        config.token_secret.as_ref().map(|secret| load_token(secret, &format!("publisher-{id}")));
    config.protocol.publisher_preface(token.as_deref(), &mut frame);
    out.write_all(&frame)?;
    let channels: Vec<String> = (0..config.channels).map(|c| channel_name(config, c)).collect();
    let mut sequences = vec![0u32; config.channels];
    let publishers = config.publishers as u64;
    let share =
        config.messages / publishers + u64::from((id as u64) < config.messages % publishers);
    let per_message = (config.subscribers as f64 / config.channels as f64).max(1.0);
    let mut payload = vec![b'x'; config.payload_bytes];
    let interval =
        (config.rate > 0).then(|| Duration::from_secs_f64(publishers as f64 / config.rate as f64));
    let started = Instant::now();
    for k in 0..share {
        if progress.stop.load(Ordering::Relaxed) {
            break;
        }
        if let Some(interval) = interval {
            let due = started + interval.mul_f64(k as f64);
            let now = Instant::now();
            if due > now {
                out.flush()?;
                thread::sleep(due - now);
            }
        } else if k % 32 == 0 {
            // Window: messages in flight, averaged over subscribers.
            loop {
                let published = progress.published.load(Ordering::Relaxed) as f64;
                let delivered = progress.delivered.load(Ordering::Relaxed) as f64 / per_message;
                if published - delivered < config.window as f64
                    || progress.stop.load(Ordering::Relaxed)
                {
                    break;
                }
                out.flush()?;
                // Sleep, not spin: the generator's CPU must stay honest (and free for the
                // subscriber loops); a full window is many microseconds of work for the server.
                thread::sleep(Duration::from_micros(50));
            }
        }
        let channel = ((k * publishers + id as u64) % config.channels as u64) as usize;
        let stamp =
            Stamp { sent_ns: monotonic_ns(), publisher: id as u32, sequence: sequences[channel] };
        sequences[channel] += 1;
        if config.hex_stamps() {
            stamp.write_hex(&mut payload);
        } else {
            stamp.write(&mut payload);
        }
        frame.clear();
        config.protocol.publish(&channels[channel], &payload, &mut frame);
        out.write_all(&frame)?;
        progress.published.fetch_add(1, Ordering::Relaxed);
    }
    out.flush()?;
    Ok(())
}

/// A publisher's TLS connection (which cannot be split for a reading thread): a non-blocking
/// socket whose replies are read and dropped whenever the server does not take more.
struct DrainingSink(fanout::tls::TlsStream<TcpStream>);

impl DrainingSink {
    fn wait(&mut self) -> std::io::Result<()> {
        let mut sink = [0u8; 16 * 1024];
        loop {
            match self.0.read(&mut sink) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        thread::sleep(Duration::from_micros(20));
        Ok(())
    }
}

impl Write for DrainingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        loop {
            match self.0.write(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => self.wait()?,
                other => return other,
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        loop {
            match self.0.flush() {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => self.wait()?,
                other => return other,
            }
        }
    }
}

/// A latency histogram in microseconds, 1 µs to 60 s, 3 significant digits.
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_deliveries_spread_over_channels() {
        let config =
            LoadConfig { subscribers: 10, channels: 3, messages: 7, ..LoadConfig::default() };
        // channel 0: 4 subscribers x 3 messages, channels 1 and 2: 3 x 2 each.
        assert_eq!(expected_deliveries(&config), 12 + 6 + 6);
    }

    #[test]
    fn stamps_round_trip() {
        let stamp = Stamp { sent_ns: u64::MAX - 5, publisher: 3, sequence: 77 };
        let mut payload = [0u8; 20];
        stamp.write(&mut payload);
        assert_eq!(Stamp::read(&payload), Some(stamp));
        assert_eq!(Stamp::read(&payload[..15]), None);
    }
}
