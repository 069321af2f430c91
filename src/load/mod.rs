//! `fanout load`: opens many subscriber connections on a few mio event-loop threads, publishes
//! stamped messages, and reports deliveries per second, latency percentiles and any lost,
//! duplicated or reordered message.
//!
//! Every payload starts with the publish time (nanoseconds since the run's epoch, one clock for
//! the whole process) so that each delivery yields a latency sample. Subscribers check offsets:
//! each must be the previous one plus one.
//!
//! Flow control: with `--rate 0` publishers keep at most `--window` messages in flight on average
//! (published but not yet delivered to their subscribers), which measures the server's capacity
//! without turning the load into a slow-consumer test.

mod report;
mod subscribers;

use std::io::{BufWriter, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::protocol::{binary, Request};
pub use report::{ProcessSample, Report};

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Server address.
    pub server: SocketAddr,
    /// Subscriber connections.
    pub subscribers: usize,
    /// Channels; subscriber `i` takes channel `i % channels`, message `k` goes to `k % channels`.
    pub channels: usize,
    /// Publisher connections.
    pub publishers: usize,
    /// Messages in all.
    pub messages: u64,
    /// Payload bytes (at least 8: the timestamp).
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
    /// Server process to sample for CPU and resident memory.
    pub server_pid: Option<u32>,
    /// Print a live line every second.
    pub live: bool,
    /// Channel name prefix.
    pub channel_prefix: String,
    /// Keep the subscribers connected this long after setup, before publishing (memory sampling).
    pub hold: Duration,
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            server: SocketAddr::from(([127, 0, 0, 1], 7400)),
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
            server_pid: None,
            live: true,
            channel_prefix: "load".into(),
            hold: Duration::ZERO,
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
    pub stop: AtomicBool,
}

/// Runs the load and returns the report.
pub fn run(config: &LoadConfig) -> Result<Report, LoadError> {
    if config.payload_bytes < 8
        || config.channels == 0
        || config.threads == 0
        || config.publishers == 0
    {
        return Err(LoadError::Config(
            "payload >= 8 bytes, and at least one channel, thread and publisher".into(),
        ));
    }
    if let Err(e) = crate::sys::raise_nofile_limit() {
        log::warn!("cannot raise RLIMIT_NOFILE: {e}");
    }
    let epoch = Instant::now();
    let progress = Arc::new(Progress::default());
    let threads = config.threads.min(config.subscribers.max(1));
    let mut loops = Vec::new();
    for t in 0..threads {
        let ids: Vec<usize> = (t..config.subscribers).step_by(threads).collect();
        let channels: Vec<String> = ids
            .iter()
            .map(|i| format!("{}{}", config.channel_prefix, i % config.channels))
            .collect();
        let progress = progress.clone();
        let server = config.server;
        let handle = thread::Builder::new()
            .name(format!("load-sub-{t}"))
            .spawn(move || subscribers::run(server, channels, progress, epoch))
            .map_err(|source| LoadError::Io { what: "spawning a subscriber thread", source })?;
        loops.push(handle);
    }

    let setup_started = Instant::now();
    while progress.subscribed.load(Ordering::Relaxed) < config.subscribers as u64 {
        let failed = progress.failed.load(Ordering::Relaxed);
        if failed > 0 || setup_started.elapsed() > Duration::from_secs(120) {
            progress.stop.store(true, Ordering::Relaxed);
            return Err(LoadError::SetupTimeout {
                ready: progress.subscribed.load(Ordering::Relaxed),
                wanted: config.subscribers,
                failed,
                waited: setup_started.elapsed(),
            });
        }
        thread::sleep(Duration::from_millis(10));
    }
    let setup = setup_started.elapsed();
    if !config.hold.is_zero() {
        thread::sleep(config.hold);
    }

    let before = config.server_pid.and_then(ProcessSample::take);
    let self_before = ProcessSample::take(std::process::id());
    let started = Instant::now();
    let publishers: Vec<_> = (0..config.publishers)
        .map(|p| {
            let config = config.clone();
            let progress = progress.clone();
            thread::Builder::new()
                .name(format!("load-pub-{p}"))
                .spawn(move || publish(&config, p, &progress, epoch))
                .map_err(|source| LoadError::Io { what: "spawning a publisher thread", source })
        })
        .collect::<Result<_, _>>()?;

    let expected = expected_deliveries(config);
    let mut last_live = Instant::now();
    let mut last_delivered = 0;
    let mut published_done_at: Option<Instant> = None;
    loop {
        thread::sleep(Duration::from_millis(20));
        let delivered = progress.delivered.load(Ordering::Relaxed);
        let published = progress.published.load(Ordering::Relaxed);
        if published >= config.messages && published_done_at.is_none() {
            published_done_at = Some(Instant::now());
        }
        if config.live && last_live.elapsed() >= Duration::from_secs(1) {
            let rate = (delivered - last_delivered) as f64 / last_live.elapsed().as_secs_f64();
            eprintln!(
                "[{:>5.1}s] conns {} published {} delivered {} ({:.2}M/s)",
                started.elapsed().as_secs_f64(),
                progress.subscribed.load(Ordering::Relaxed),
                published,
                delivered,
                rate / 1e6
            );
            last_live = Instant::now();
            last_delivered = delivered;
        }
        let drained = delivered >= expected;
        let gave_up = published_done_at.is_some_and(|at| at.elapsed() > config.drain_timeout)
            || started.elapsed() > config.max_duration;
        if drained || gave_up {
            break;
        }
    }
    let elapsed = started.elapsed();
    let after = config.server_pid.and_then(ProcessSample::take);
    let self_after = ProcessSample::take(std::process::id());
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
    let mut totals = subscribers::Totals::default();
    for handle in loops {
        if let Ok(t) = handle.join() {
            totals.merge(t);
        }
    }
    Ok(Report::new(
        config,
        &progress,
        totals,
        expected,
        elapsed,
        setup,
        before.zip(after),
        self_before.zip(self_after),
        publish_errors,
    ))
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

fn publish(
    config: &LoadConfig,
    id: usize,
    progress: &Progress,
    epoch: Instant,
) -> Result<(), std::io::Error> {
    let stream = TcpStream::connect(config.server)?;
    stream.set_nodelay(true)?;
    let mut out = BufWriter::with_capacity(64 * 1024, stream);
    out.write_all(&binary::PREFACE)?;
    let channels: Vec<String> =
        (0..config.channels).map(|c| format!("{}{c}", config.channel_prefix)).collect();
    let share = config.messages / config.publishers as u64
        + u64::from((id as u64) < config.messages % config.publishers as u64);
    let per_message = (config.subscribers as f64 / config.channels as f64).max(1.0);
    let mut payload = vec![0u8; config.payload_bytes];
    let mut frame = Vec::with_capacity(config.payload_bytes + 64);
    let interval = (config.rate > 0)
        .then(|| Duration::from_secs_f64(config.publishers as f64 / config.rate as f64));
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
        } else if k % 64 == 0 {
            // Window: in-flight messages, averaged over subscribers.
            loop {
                let published = progress.published.load(Ordering::Relaxed) as f64;
                let delivered = progress.delivered.load(Ordering::Relaxed) as f64 / per_message;
                if published - delivered < config.window as f64
                    || progress.stop.load(Ordering::Relaxed)
                {
                    break;
                }
                out.flush()?;
                thread::yield_now();
            }
        }
        let global = k * config.publishers as u64 + id as u64;
        let channel = &channels[(global % config.channels as u64) as usize];
        let sent_ns = epoch.elapsed().as_nanos() as u64;
        payload[..8].copy_from_slice(&sent_ns.to_be_bytes());
        frame.clear();
        binary::encode_request(
            &Request::Publish { channel: channel.as_bytes(), payload: (&payload[..]).into() },
            &mut frame,
        );
        out.write_all(&frame)?;
        progress.published.fetch_add(1, Ordering::Relaxed);
    }
    out.flush()?;
    Ok(())
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
        // channel 0: 4 subs x 3 msgs, channel 1: 3 x 2, channel 2: 3 x 2
        assert_eq!(expected_deliveries(&config), 12 + 6 + 6);
    }
}
