//! The load run's summary: a human table and one JSON line.

use std::fmt;

use super::subscribers::Totals;
use super::{LoadConfig, Measured, Progress};

/// CPU time and resident memory of a process at one moment (from /proc).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessSample {
    /// User plus system CPU seconds so far.
    pub cpu_seconds: f64,
    /// Resident set size in bytes.
    pub rss_bytes: u64,
}

impl ProcessSample {
    /// Reads /proc/PID/stat and /proc/PID/status; `None` if the process is gone.
    pub fn take(pid: u32) -> Option<ProcessSample> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let after_name = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        // SAFETY: sysconf has no preconditions.
        let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss_kib: u64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(ProcessSample {
            cpu_seconds: ticks as f64 / ticks_per_second,
            rss_bytes: rss_kib * 1024,
        })
    }

    /// The sum over several processes (a load generator and its children); `None` for none.
    pub fn sum(pids: &[u32]) -> Option<ProcessSample> {
        if pids.is_empty() {
            return None;
        }
        let mut total = ProcessSample { cpu_seconds: 0.0, rss_bytes: 0 };
        for &pid in pids {
            let sample = ProcessSample::take(pid)?;
            total.cpu_seconds += sample.cpu_seconds;
            total.rss_bytes += sample.rss_bytes;
        }
        Some(total)
    }
}

/// Everything a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Subscriber connections that were subscribed.
    pub connections: u64,
    /// Messages published.
    pub published: u64,
    /// Deliveries expected (messages times their channel's subscribers).
    pub expected: u64,
    /// Deliveries received.
    pub delivered: u64,
    /// Seconds from the first publish to the last delivery (or the give-up point).
    pub seconds: f64,
    /// Seconds to connect and subscribe everyone.
    pub setup_seconds: f64,
    /// Deliveries per second.
    pub deliveries_per_second: f64,
    /// Publishes per second.
    pub publishes_per_second: f64,
    /// Latency percentiles, microseconds.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Maximum.
    pub max_us: u64,
    /// Deliveries that never arrived (gaps seen, plus deliveries still missing at the end).
    pub lost: u64,
    /// Offsets seen twice.
    pub duplicated: u64,
    /// Offsets that arrived after a later one.
    pub reordered: u64,
    /// Connection, protocol and publisher errors.
    pub errors: u64,
    /// Server CPU seconds during the run, if its PID was given.
    pub server_cpu_seconds: Option<f64>,
    /// Server resident memory at the end of the run.
    pub server_rss_bytes: Option<u64>,
    /// This load generator's CPU seconds during the run.
    pub client_cpu_seconds: Option<f64>,
    /// The latency histogram, for `--hgrm`.
    pub latency_us: hdrhistogram::Histogram<u64>,
}

impl Report {
    pub(crate) fn new(
        config: &LoadConfig,
        progress: &Progress,
        totals: Totals,
        expected: u64,
        measured: &Measured,
        publish_errors: u64,
    ) -> Report {
        let seconds = measured.elapsed.as_secs_f64().max(1e-9);
        let published = progress.published.load(std::sync::atomic::Ordering::Relaxed);
        let mut totals = totals;
        totals.flush_latency();
        let histogram = &totals.latency_us;
        let missing = expected.saturating_sub(totals.delivered).saturating_sub(totals.lost);
        Report {
            connections: progress
                .subscribed
                .load(std::sync::atomic::Ordering::Relaxed)
                .min(config.subscribers as u64),
            published,
            expected,
            delivered: totals.delivered,
            seconds,
            setup_seconds: measured.setup.as_secs_f64(),
            deliveries_per_second: totals.delivered as f64 / seconds,
            publishes_per_second: published as f64 / seconds,
            p50_us: histogram.value_at_quantile(0.5),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
            lost: totals.lost + missing,
            duplicated: totals.duplicated,
            reordered: totals.reordered,
            errors: totals.errors + publish_errors,
            server_cpu_seconds: measured.server.map(|(a, b)| b.cpu_seconds - a.cpu_seconds),
            server_rss_bytes: measured.server.map(|(_, b)| b.rss_bytes),
            client_cpu_seconds: measured.client.map(|(a, b)| b.cpu_seconds - a.cpu_seconds),
            latency_us: totals.latency_us,
        }
    }

    /// One line of JSON with every figure.
    pub fn json(&self) -> String {
        let opt_f = |v: Option<f64>| v.map_or("null".to_string(), |v| format!("{v:.3}"));
        let opt_u = |v: Option<u64>| v.map_or("null".to_string(), |v| v.to_string());
        format!(
            concat!(
                "{{\"connections\":{},\"published\":{},\"expected\":{},\"delivered\":{},\"seconds\":{:.3},",
                "\"setup_seconds\":{:.3},\"deliveries_per_second\":{:.0},\"publishes_per_second\":{:.0},",
                "\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{},\"lost\":{},\"duplicated\":{},",
                "\"reordered\":{},\"errors\":{},\"server_cpu_seconds\":{},\"server_rss_bytes\":{},",
                "\"client_cpu_seconds\":{}}}"
            ),
            self.connections,
            self.published,
            self.expected,
            self.delivered,
            self.seconds,
            self.setup_seconds,
            self.deliveries_per_second,
            self.publishes_per_second,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            self.lost,
            self.duplicated,
            self.reordered,
            self.errors,
            opt_f(self.server_cpu_seconds),
            opt_u(self.server_rss_bytes),
            opt_f(self.client_cpu_seconds),
        )
    }

    /// The latency distribution in HdrHistogram's percentile (.hgrm) text format.
    pub fn hgrm(&self) -> String {
        let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
        for step in self.latency_us.iter_quantiles(1) {
            let q = step.quantile_iterated_to();
            let inverse = if q < 1.0 { format!("{:.2}", 1.0 / (1.0 - q)) } else { "inf".into() };
            out += &format!(
                "{:12.3} {:14.12} {:10} {:>14}\n",
                step.value_iterated_to() as f64,
                q,
                step.count_since_last_iteration(),
                inverse
            );
        }
        out += &format!(
            "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]\n#[Max     = {:12.3}, Total count    = {:12}]\n",
            self.latency_us.mean(),
            self.latency_us.stdev(),
            self.latency_us.max() as f64,
            self.latency_us.len()
        );
        out
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per_delivery_ns = |cpu: Option<f64>| {
            cpu.filter(|_| self.delivered > 0)
                .map_or("-".into(), |c| format!("{:.1} ns", c * 1e9 / self.delivered as f64))
        };
        writeln!(f, "connections held     {}", self.connections)?;
        writeln!(
            f,
            "published            {} ({:.0}/s)",
            self.published, self.publishes_per_second
        )?;
        writeln!(
            f,
            "delivered            {} of {} in {:.2} s",
            self.delivered, self.expected, self.seconds
        )?;
        writeln!(f, "deliveries/s         {:.0}", self.deliveries_per_second)?;
        writeln!(
            f,
            "latency p50/p99/p99.9/max  {} / {} / {} / {} us",
            self.p50_us, self.p99_us, self.p999_us, self.max_us
        )?;
        writeln!(
            f,
            "lost / dup / reorder {} / {} / {}",
            self.lost, self.duplicated, self.reordered
        )?;
        writeln!(f, "errors               {}", self.errors)?;
        if let Some(cpu) = self.server_cpu_seconds {
            writeln!(
                f,
                "server CPU           {cpu:.2} s ({} per delivery)",
                per_delivery_ns(Some(cpu))
            )?;
        }
        if let Some(rss) = self.server_rss_bytes {
            writeln!(f, "server RSS           {rss} bytes")?;
        }
        if let Some(cpu) = self.client_cpu_seconds {
            writeln!(
                f,
                "load generator CPU   {cpu:.2} s ({:.0}% of one core)",
                100.0 * cpu / self.seconds
            )?;
        }
        Ok(())
    }
}
