//! Spreading subscribers over child processes when one process may not hold them all (its
//! RLIMIT_NOFILE hard limit). Each child is this same binary, `fanout load --child ...`, holding a
//! slice of the subscribers on its own source address (127.0.0.2, 127.0.0.3, ... when the server
//! is on IPv4 loopback, so each gets a full ephemeral port range). The parent publishes.
//!
//! A child reports on stdout, one line each:
//!
//! ```text
//! progress <subscribed> <delivered> <failed>     every 20 ms, cumulative
//! totals <delivered> <lost> <duplicated> <reordered> <errors>
//! hist <microseconds> <count>                    one line per recorded latency value
//! end
//! ```
//!
//! and stops when its stdin says `stop` or closes (so a dead parent never leaves children behind).

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use super::{spawn_loops, LoadConfig, LoadError, Progress, Totals};

/// The running children.
#[derive(Debug)]
pub(crate) struct Children {
    processes: Vec<(Child, Option<ChildStdin>)>,
    readers: Vec<thread::JoinHandle<Totals>>,
}

/// Source address of child `k`, when the server is on IPv4 loopback.
fn source_for(config: &LoadConfig, k: usize) -> Option<Ipv4Addr> {
    match config.server.addr.ip() {
        IpAddr::V4(ip) if ip.is_loopback() && k < 250 => {
            Some(Ipv4Addr::new(127, 0, 0, 2 + k as u8))
        }
        _ => None,
    }
}

/// Starts enough children for `config.subscribers`, at most `per_process` each.
pub(crate) fn spawn(
    config: &LoadConfig,
    per_process: usize,
    progress: Arc<Progress>,
) -> Result<Children, LoadError> {
    let exe = std::env::current_exe()
        .map_err(|source| LoadError::Io { what: "finding our own binary", source })?;
    let count = config.subscribers.div_ceil(per_process);
    log::info!(
        "load: {} subscribers over {count} child processes of at most {per_process}",
        config.subscribers
    );
    let mut children = Children { processes: Vec::new(), readers: Vec::new() };
    for k in 0..count {
        let first = k * per_process;
        let share = per_process.min(config.subscribers - first);
        let mut command = Command::new(&exe);
        command
            .arg("load")
            .arg("--child")
            .args(["--server", &config.server.to_string()])
            .args(
                config
                    .subscribe_to
                    .iter()
                    .flat_map(|a| ["--subscribe-to".to_string(), a.to_string()]),
            )
            .args(
                config
                    .tls
                    .iter()
                    .filter_map(|(_, file)| file.as_ref())
                    .flat_map(|file| [std::ffi::OsStr::new("--ca-file"), file.as_os_str()]),
            )
            .args(["--protocol", &config.protocol.to_string()])
            .args(
                config
                    .subscriber_protocols
                    .iter()
                    .flat_map(|p| ["--subscriber-protocol".to_string(), p.to_string()]),
            )
            .args(["--subscribers", &share.to_string()])
            .args(["--first-subscriber", &first.to_string()])
            .args(["--channels", &config.channels.to_string()])
            .args(["--channel-prefix", &config.channel_prefix])
            .args(["--threads", &config.threads.to_string()])
            .args(config.pattern.then_some("--pattern-subscribe"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if let Some(source) = source_for(config, k) {
            command.args(["--source-ip", &source.to_string()]);
        }
        if let Some(secret) = &config.token_secret {
            // The child mints its own tokens from the same secret, passed in its environment
            // rather than on its command line (where `ps` would show it).
            command.env("FANOUT_LOAD_TOKEN_SECRET", String::from_utf8_lossy(secret).as_ref());
        }
        let mut child = command
            .spawn()
            .map_err(|source| LoadError::Io { what: "starting a child load process", source })?;
        let stdout =
            child.stdout.take().ok_or_else(|| LoadError::Config("child without stdout".into()))?;
        let stdin = child.stdin.take();
        let progress = progress.clone();
        children
            .readers
            .push(thread::spawn(move || read_reports(BufReader::new(stdout), &progress)));
        children.processes.push((child, stdin));
    }
    Ok(children)
}

/// Follows one child's report lines into `progress`; returns its final totals.
fn read_reports(reader: impl BufRead, progress: &Progress) -> Totals {
    let mut totals = Totals::default();
    let (mut subscribed, mut delivered, mut failed) = (0u64, 0u64, 0u64);
    let mut ended = false;
    for line in reader.lines().map_while(Result::ok) {
        let fields: Vec<u64> =
            line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
        match (line.split_whitespace().next(), fields.as_slice()) {
            (Some("progress"), &[s, d, f]) => {
                progress.subscribed.fetch_add(s.saturating_sub(subscribed), Ordering::Relaxed);
                progress.delivered.fetch_add(d.saturating_sub(delivered), Ordering::Relaxed);
                progress.failed.fetch_add(f.saturating_sub(failed), Ordering::Relaxed);
                (subscribed, delivered, failed) =
                    (s.max(subscribed), d.max(delivered), f.max(failed));
            }
            (Some("totals"), &[d, l, dup, r, e]) => {
                (
                    totals.delivered,
                    totals.lost,
                    totals.duplicated,
                    totals.reordered,
                    totals.errors,
                ) = (d, l, dup, r, e);
            }
            (Some("hist"), &[value, count]) => {
                let _ = totals.latency_us.record_n(value, count);
            }
            (Some("end"), _) => {
                ended = true;
                break;
            }
            _ => log::debug!("load: unexpected child line {line:?}"),
        }
    }
    if !ended {
        log::error!("load: a child process ended without its totals");
        progress.failed.fetch_add(1, Ordering::Relaxed);
        totals.errors += 1;
    }
    totals
}

impl Children {
    /// Child process ids (for CPU accounting).
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.processes.iter().map(|(child, _)| child.id()).collect()
    }

    /// Tells every child to stop, and merges their totals.
    pub(crate) fn finish(mut self) -> Totals {
        for (_, stdin) in &mut self.processes {
            if let Some(mut stdin) = stdin.take() {
                let _ = stdin.write_all(b"stop\n");
            }
        }
        let mut totals = Totals::default();
        for reader in self.readers {
            match reader.join() {
                Ok(t) => totals.merge(t),
                Err(_) => totals.errors += 1,
            }
        }
        for (child, _) in &mut self.processes {
            let _ = child.wait();
        }
        totals
    }
}

/// The child side: hold `config.subscribers` subscribers, report, stop on `stop` or EOF.
pub fn child_main(config: &LoadConfig) -> Result<(), LoadError> {
    let progress = Arc::new(Progress::default());
    let loops = spawn_loops(config, progress.clone())?;
    let watcher = progress.clone();
    thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            match line {
                Ok(line) if line.trim() != "stop" => continue,
                _ => break,
            }
        }
        watcher.stop.store(true, Ordering::Relaxed);
    });
    let stdout = std::io::stdout();
    let report = |line: String| {
        let mut out = stdout.lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    while !progress.stop.load(Ordering::Relaxed) {
        report(format!(
            "progress {} {} {}",
            progress.subscribed.load(Ordering::Relaxed),
            progress.delivered.load(Ordering::Relaxed),
            progress.failed.load(Ordering::Relaxed)
        ));
        thread::sleep(Duration::from_millis(20));
    }
    let mut totals = Totals::default();
    for handle in loops {
        match handle.join() {
            Ok(t) => totals.merge(t),
            Err(_) => totals.errors += 1,
        }
    }
    report(format!(
        "totals {} {} {} {} {}",
        totals.delivered, totals.lost, totals.duplicated, totals.reordered, totals.errors
    ));
    totals.flush_latency();
    for value in totals.latency_us.iter_recorded() {
        report(format!("hist {} {}", value.value_iterated_to(), value.count_at_value()));
    }
    report("end".into());
    Ok(())
}
