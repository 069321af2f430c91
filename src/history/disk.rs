//! History on disk: every channel's messages in append-only segment files, written by one storage
//! thread fed over a crossbeam channel (never by a reactor thread), with `--fsync always |
//! interval | never`, rolled by size, deleted by retention, and read back at start.
//!
//! ```text
//! DATA_DIR/channels/<channel name in hex>/epoch                 the log's epoch, 16 hex digits
//! DATA_DIR/channels/<channel name in hex>/<first offset>.seg    20 digits, so names sort
//! record: u32 length (of what follows the CRC) | u32 CRC-32 | u64 offset | u64 published ms | payload
//! ```
//!
//! The segment names are the index: a channel's offsets are contiguous, so the file holding an
//! offset is the last one whose name is not above it. Memory history is the serving layer; the
//! disk copy exists so that it comes back after a restart or a crash. Retention on disk works a
//! whole segment at a time: a segment goes when every record in it is past retention (the newest
//! segment always stays, so the next offset is never reused). A record that is short (torn by a
//! crash) or fails its CRC, and everything after it, is cut off with a warning and never served.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use log::{info, warn};

use super::{now_ms, ChannelLog, HistoryLimits, Retained};

/// When the storage thread calls fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// After every batch of appends, before acknowledging them.
    Always,
    /// At most this often.
    Interval(Duration),
    /// Never (the OS writes back when it likes).
    Never,
}

/// A record longer than this is corruption, not data (frames are far smaller).
const MAX_RECORD: usize = 1 << 30;

/// One append for the storage thread.
#[derive(Debug)]
pub struct Append {
    /// Channel name.
    pub channel: Bytes,
    /// The log's epoch (written once, when the channel's directory is created).
    pub epoch: u64,
    /// The message.
    pub record: Retained,
    /// Acknowledge to this connection once the record is on disk.
    pub ack: Option<AckTarget>,
}

/// Where an acknowledgement goes: a connection of a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckTarget {
    /// Worker index.
    pub worker: usize,
    /// Slab key of the connection.
    pub key: usize,
    /// The connection's serial number (slab keys are reused).
    pub serial: u32,
}

/// Sent back to a worker when acknowledged appends are durable.
#[derive(Debug)]
pub struct Persisted {
    /// Who asked.
    pub target: AckTarget,
    /// Channel name.
    pub channel: Bytes,
    /// The offset.
    pub offset: u64,
}

/// What the storage thread is asked.
#[derive(Debug)]
pub enum StoreOp {
    /// Append a record.
    Append(Append),
    /// Flush, fsync and stop.
    Shutdown,
}

/// The storage thread's counters, written by it alone.
#[derive(Debug, Default)]
pub struct StorageCounters {
    /// Segment files created.
    pub segments_written: AtomicU64,
    /// Segment files deleted by retention.
    pub segments_deleted: AtomicU64,
    /// fsync calls.
    pub fsyncs: AtomicU64,
    /// Total microseconds spent in fsync.
    pub fsync_micros_total: AtomicU64,
    /// Slowest fsync, microseconds.
    pub fsync_micros_max: AtomicU64,
    /// Records written.
    pub records_written: AtomicU64,
}

/// A channel read back from disk.
#[derive(Debug)]
pub struct Recovered {
    /// Channel name.
    pub name: Bytes,
    /// Its log: epoch, next offset and retained messages.
    pub log: ChannelLog,
    /// Its segment files as found (for the storage thread's retention).
    pub segments: Vec<SegmentMeta>,
}

/// What recovery learnt about one segment file.
#[derive(Debug, Clone)]
pub struct SegmentMeta {
    path: PathBuf,
    records: u64,
    bytes: u64,
    last: u64,
    newest_ms: u64,
}

fn channels_dir(dir: &Path) -> PathBuf {
    dir.join("channels")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(name: &str) -> Option<Vec<u8>> {
    if name.len() % 2 != 0 {
        return None;
    }
    (0..name.len()).step_by(2).map(|i| u8::from_str_radix(name.get(i..i + 2)?, 16).ok()).collect()
}

fn segment_name(first_offset: u64) -> String {
    format!("{first_offset:020}.seg")
}

/// The segments of a channel directory, sorted by first offset.
fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let first = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(first) = first {
            segments.push((first, path));
        }
    }
    segments.sort();
    Ok(segments)
}

/// Records that the storage thread stopped cleanly (everything written and fsync'ed).
pub fn mark_clean(dir: &Path) {
    if let Err(e) = fs::write(dir.join("clean"), b"") {
        warn!("history: cannot mark {} as cleanly shut down: {e}", dir.display());
    }
}

/// Reads every channel under `dir` back, cutting off torn or corrupt tails (with a warning),
/// and applying retention to what is kept in memory.
///
/// After an unclean stop (no `clean` marker: a crash or SIGKILL), messages may have been
/// delivered live that never reached the disk; their offsets must not be given again, so every
/// channel's next offset skips `unclean_gap` (the most appends the storage thread may be behind).
pub fn recover(
    dir: &Path,
    limits: &HistoryLimits,
    total: &super::Totals,
    unclean_gap: u64,
) -> io::Result<Vec<Recovered>> {
    let root = channels_dir(dir);
    fs::create_dir_all(&root)?;
    let clean = dir.join("clean");
    let was_clean = clean.exists();
    if was_clean {
        fs::remove_file(&clean)?;
    }
    let mut recovered = Vec::new();
    for entry in fs::read_dir(&root)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).and_then(unhex) else {
            warn!("history: ignoring {} (not a channel directory)", path.display());
            continue;
        };
        let epoch = fs::read_to_string(path.join("epoch"))
            .ok()
            .and_then(|e| u64::from_str_radix(e.trim(), 16).ok());
        let Some(epoch) = epoch else {
            warn!(
                "history: {} has no readable epoch file; ignoring the channel's log",
                path.display()
            );
            continue;
        };
        let mut log = ChannelLog { epoch, ..ChannelLog::default() };
        let mut metas = Vec::new();
        let mut expected: Option<u64> = None;
        let segments = list_segments(&path)?;
        let mut cut = false;
        for (first, segment) in &segments {
            if cut {
                warn!("history: deleting {} (after a cut)", segment.display());
                fs::remove_file(segment)?;
                continue;
            }
            let mut bytes = Vec::new();
            File::open(segment)?.read_to_end(&mut bytes)?;
            let mut at = 0;
            let mut first_record = true;
            let mut meta =
                SegmentMeta { path: segment.clone(), records: 0, bytes: 0, last: 0, newest_ms: 0 };
            while at < bytes.len() {
                // A segment starts at the offset in its name, at or after where the previous one
                // ended (later, after an unclean restart: see below); inside, offsets are contiguous.
                let in_place = |offset: u64| match (first_record, expected) {
                    (true, None) => offset == *first,
                    (true, Some(e)) => offset == *first && offset >= e,
                    (false, Some(e)) => offset == e,
                    (false, None) => false,
                };
                match parse_record(&bytes[at..]) {
                    Some((record, used)) if in_place(record.offset) => {
                        expected = Some(record.offset + 1);
                        log.next_offset = record.offset + 1;
                        meta.records += 1;
                        meta.last = record.offset;
                        meta.newest_ms = record.published_ms;
                        log.append(record, limits, total);
                        at += used;
                        first_record = false;
                    }
                    _ => {
                        warn!(
                            "history: {}: torn or corrupt record at byte {at} of {}; cutting the log there",
                            segment.display(),
                            bytes.len()
                        );
                        OpenOptions::new().write(true).open(segment)?.set_len(at as u64)?;
                        cut = true;
                        break;
                    }
                }
            }
            meta.bytes = at as u64;
            if meta.records > 0 {
                metas.push(meta);
            } else {
                // Nothing valid in it: a segment created just before a crash, or cut to nothing.
                fs::remove_file(segment)?;
            }
        }
        // Age retention of what was just loaded, relative to now.
        log.trim(now_ms(), limits, total);
        if !was_clean {
            log.next_offset += unclean_gap;
        }
        recovered.push(Recovered { name: Bytes::from(name), log, segments: metas });
    }
    if !recovered.is_empty() {
        info!("history: recovered {} channel(s) from {}", recovered.len(), dir.display());
        if !was_clean {
            warn!(
                "history: {} was not shut down cleanly; offsets continue {unclean_gap} further on",
                dir.display()
            );
        }
    }
    Ok(recovered)
}

/// One record at the start of `bytes`, if it is whole and its CRC matches.
fn parse_record(bytes: &[u8]) -> Option<(Retained, usize)> {
    let (length, rest) = bytes.split_first_chunk::<4>()?;
    let length = u32::from_be_bytes(*length) as usize;
    if !(16..=MAX_RECORD).contains(&length) {
        return None;
    }
    let (crc, rest) = rest.split_first_chunk::<4>()?;
    let body = rest.get(..length)?;
    if crc32fast::hash(body) != u32::from_be_bytes(*crc) {
        return None;
    }
    let (offset, body) = body.split_first_chunk::<8>()?;
    let (published_ms, payload) = body.split_first_chunk::<8>()?;
    let record = Retained {
        offset: u64::from_be_bytes(*offset),
        published_ms: u64::from_be_bytes(*published_ms),
        payload: Bytes::copy_from_slice(payload),
    };
    Some((record, 8 + length))
}

fn write_record(out: &mut impl Write, record: &Retained) -> io::Result<usize> {
    let mut body = Vec::with_capacity(16 + record.payload.len());
    body.extend_from_slice(&record.offset.to_be_bytes());
    body.extend_from_slice(&record.published_ms.to_be_bytes());
    body.extend_from_slice(&record.payload);
    out.write_all(&(body.len() as u32).to_be_bytes())?;
    out.write_all(&crc32fast::hash(&body).to_be_bytes())?;
    out.write_all(&body)?;
    Ok(8 + body.len())
}

/// A segment of a channel on disk.
#[derive(Debug)]
struct Segment {
    path: PathBuf,
    /// Created by this run (only those may be appended to).
    created_here: bool,
    /// Records in it.
    records: u64,
    /// Offset of its newest record.
    last: u64,
    bytes: u64,
    newest_ms: u64,
}

/// The storage thread's view of one channel. Segments found on disk at start are never appended
/// to: the first append of a run opens a new segment, so an offset jump after an unclean restart
/// always falls on a segment boundary, where recovery accepts it.
#[derive(Debug)]
struct ChannelFiles {
    dir: PathBuf,
    segments: VecDeque<Segment>,
    writer: Option<BufWriter<File>>,
    dirty: bool,
}

/// The storage thread: owns every file under the data directory while the server runs.
#[derive(Debug)]
pub struct Storage {
    dir: PathBuf,
    fsync: FsyncPolicy,
    segment_bytes: u64,
    limits: HistoryLimits,
    channels: HashMap<Bytes, ChannelFiles>,
    /// Segments recovery found, by channel, until the channel's first append of this run.
    existing: HashMap<Bytes, Vec<SegmentMeta>>,
    counters: Arc<StorageCounters>,
}

impl Storage {
    /// Prepares the storage of `dir` (after `recover`).
    pub fn new(
        dir: &Path,
        fsync: FsyncPolicy,
        segment_bytes: u64,
        limits: HistoryLimits,
        existing: HashMap<Bytes, Vec<SegmentMeta>>,
        counters: Arc<StorageCounters>,
    ) -> Storage {
        Storage {
            dir: dir.to_path_buf(),
            fsync,
            segment_bytes: segment_bytes.max(4096),
            limits,
            channels: HashMap::new(),
            existing,
            counters,
        }
    }

    /// Runs until `StoreOp::Shutdown` (or every sender is gone). `acks[w]` carries persisted
    /// acknowledgements to worker `w`, and `wake(w)` wakes it.
    pub fn run(
        mut self,
        ops: Receiver<StoreOp>,
        acks: Vec<Sender<Persisted>>,
        wake: impl Fn(usize),
        depth: &AtomicU64,
    ) {
        let mut last_sync = Instant::now();
        let mut batch = Vec::new();
        let mut pending_acks: Vec<Persisted> = Vec::new();
        loop {
            let wait = match self.fsync {
                FsyncPolicy::Interval(every) => {
                    every.saturating_sub(last_sync.elapsed()).max(Duration::from_millis(1))
                }
                _ => Duration::from_millis(500),
            };
            let mut stop = false;
            match ops.recv_timeout(wait) {
                Ok(op) => batch.push(op),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => stop = true,
            }
            while batch.len() < 8192 {
                match ops.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let taken = batch.len() as u64;
            for op in batch.drain(..) {
                match op {
                    StoreOp::Shutdown => stop = true,
                    StoreOp::Append(append) => {
                        if let Err(e) = self.append(&append) {
                            warn!(
                                "history: cannot write {}: {e}",
                                String::from_utf8_lossy(&append.channel)
                            );
                        }
                        if let Some(target) = append.ack {
                            pending_acks.push(Persisted {
                                target,
                                channel: append.channel,
                                offset: append.record.offset,
                            });
                        }
                    }
                }
            }
            if let Err(e) = self.flush() {
                warn!("history: flush failed: {e}");
            }
            let sync_now = match self.fsync {
                FsyncPolicy::Always => true,
                FsyncPolicy::Interval(every) => last_sync.elapsed() >= every || stop,
                FsyncPolicy::Never => false,
            };
            if sync_now {
                self.sync();
                last_sync = Instant::now();
            }
            let mut woken = vec![false; acks.len()];
            for ack in pending_acks.drain(..) {
                let worker = ack.target.worker;
                if acks.get(worker).is_some_and(|sender| sender.send(ack).is_ok()) {
                    woken[worker] = true;
                }
            }
            for (worker, woken) in woken.into_iter().enumerate() {
                if woken {
                    wake(worker);
                }
            }
            depth.fetch_sub(taken.min(depth.load(Ordering::Relaxed)), Ordering::Relaxed);
            if stop {
                self.sync();
                return;
            }
        }
    }

    fn files(&mut self, channel: &Bytes, epoch: u64) -> io::Result<&mut ChannelFiles> {
        if !self.channels.contains_key(channel) {
            let dir = channels_dir(&self.dir).join(hex(channel));
            fs::create_dir_all(&dir)?;
            let epoch_file = dir.join("epoch");
            if !epoch_file.exists() {
                fs::write(&epoch_file, format!("{epoch:016x}\n"))?;
            }
            let segments = self
                .existing
                .remove(channel)
                .unwrap_or_default()
                .into_iter()
                .map(|m| Segment {
                    path: m.path,
                    created_here: false,
                    records: m.records,
                    last: m.last,
                    bytes: m.bytes,
                    newest_ms: m.newest_ms,
                })
                .collect();
            self.channels.insert(
                channel.clone(),
                ChannelFiles { dir, segments, writer: None, dirty: false },
            );
        }
        Ok(self.channels.get_mut(channel).expect("inserted above"))
    }

    fn append(&mut self, append: &Append) -> io::Result<()> {
        let segment_bytes = self.segment_bytes;
        let counters = self.counters.clone();
        let files = self.files(&append.channel, append.epoch)?;
        let roll = files.writer.is_none()
            || files.segments.back().is_none_or(|s| s.bytes >= segment_bytes);
        if roll {
            if let Some(mut writer) = files.writer.take() {
                writer.flush()?;
            }
            let reuse_last =
                files.segments.back().is_some_and(|s| s.bytes < segment_bytes && s.created_here);
            if !reuse_last {
                let path = files.dir.join(segment_name(append.record.offset));
                files.segments.push_back(Segment {
                    path,
                    created_here: true,
                    records: 0,
                    last: append.record.offset.saturating_sub(1),
                    bytes: 0,
                    newest_ms: append.record.published_ms,
                });
                counters.segments_written.fetch_add(1, Ordering::Relaxed);
            }
            let path = files.segments.back().map(|s| s.path.clone()).unwrap_or_default();
            files.writer = Some(BufWriter::with_capacity(
                64 * 1024,
                OpenOptions::new().create(true).append(true).open(path)?,
            ));
        }
        let Some(writer) = files.writer.as_mut() else { return Ok(()) };
        let written = write_record(writer, &append.record)? as u64;
        if let Some(segment) = files.segments.back_mut() {
            segment.bytes += written;
            segment.records += 1;
            segment.last = append.record.offset;
            segment.newest_ms = append.record.published_ms;
        }
        files.dirty = true;
        counters.records_written.fetch_add(1, Ordering::Relaxed);
        self.apply_retention(&append.channel);
        Ok(())
    }

    /// Deletes whole segments that retention no longer needs (never the newest).
    fn apply_retention(&mut self, channel: &Bytes) {
        let limits = self.limits.clone();
        let counters = self.counters.clone();
        let Some(files) = self.channels.get_mut(channel) else { return };
        // Counted in records, not offsets: offsets jump after an unclean restart.
        let mut records: u64 = files.segments.iter().map(|s| s.records).sum();
        let mut bytes_after: u64 = files.segments.iter().map(|s| s.bytes).sum();
        let age_ms = limits.age.as_millis() as u64;
        let now = now_ms();
        while files.segments.len() > 1 {
            let Some(oldest) = files.segments.front() else { break };
            let past_count = records - oldest.records >= limits.messages as u64;
            let past_bytes = bytes_after - oldest.bytes >= limits.bytes as u64
                && bytes_after > limits.bytes as u64;
            let past_age = age_ms > 0 && now.saturating_sub(oldest.newest_ms) > age_ms;
            if !(past_count || past_bytes || past_age || limits.messages == 0) {
                break;
            }
            bytes_after -= oldest.bytes;
            records -= oldest.records;
            if let Err(e) = fs::remove_file(&oldest.path) {
                warn!("history: cannot delete {}: {e}", oldest.path.display());
                break;
            }
            counters.segments_deleted.fetch_add(1, Ordering::Relaxed);
            files.segments.pop_front();
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        for files in self.channels.values_mut().filter(|f| f.dirty) {
            if let Some(writer) = files.writer.as_mut() {
                writer.flush()?;
            }
        }
        Ok(())
    }

    fn sync(&mut self) {
        for files in self.channels.values_mut().filter(|f| f.dirty) {
            files.dirty = false;
            let Some(writer) = files.writer.as_mut() else { continue };
            let started = Instant::now();
            if let Err(e) = writer.flush().and_then(|()| writer.get_ref().sync_data()) {
                warn!("history: fsync of {} failed: {e}", files.dir.display());
                continue;
            }
            let micros = started.elapsed().as_micros() as u64;
            self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
            self.counters.fsync_micros_total.fetch_add(micros, Ordering::Relaxed);
            self.counters.fsync_micros_max.fetch_max(micros, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> HistoryLimits {
        HistoryLimits {
            messages: 1000,
            bytes: usize::MAX,
            age: Duration::ZERO,
            total_bytes: usize::MAX,
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fanout-disk-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn write(dir: &Path, count: u64, segment_bytes: u64, limits: HistoryLimits) -> u64 {
        let epoch = 0xfeed;
        let mut storage = Storage::new(
            dir,
            FsyncPolicy::Never,
            segment_bytes,
            limits,
            HashMap::new(),
            Arc::default(),
        );
        for offset in 1..=count {
            let record = Retained {
                offset,
                published_ms: now_ms(),
                payload: Bytes::from(format!("m{offset}")),
            };
            storage
                .append(&Append { channel: Bytes::from_static(b"ch"), epoch, record, ack: None })
                .unwrap();
        }
        storage.flush().unwrap();
        storage.sync();
        epoch
    }

    fn offsets(log: &ChannelLog) -> Vec<u64> {
        let mut out = Vec::new();
        log.read_after(0, usize::MAX, usize::MAX, &mut out);
        out.iter().map(|r| r.offset).collect()
    }

    #[test]
    fn write_then_recover_across_segments() {
        let dir = temp_dir("roundtrip");
        let epoch = write(&dir, 100, 4096, limits());
        mark_clean(&dir);
        let recovered = recover(&dir, &limits(), &crate::history::Totals::default(), 1000).unwrap();
        assert_eq!(recovered.len(), 1);
        assert_eq!(recovered[0].name, Bytes::from_static(b"ch"));
        assert_eq!(recovered[0].log.epoch, epoch);
        assert_eq!(recovered[0].log.next_offset, 101);
        assert_eq!(offsets(&recovered[0].log), (1..=100).collect::<Vec<_>>());
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn retention_deletes_whole_old_segments_but_keeps_the_newest() {
        let dir = temp_dir("retention");
        let small = HistoryLimits { messages: 10, ..limits() };
        write(&dir, 2000, 4096, small.clone());
        let segments = list_segments(&dir.join("channels").join(hex(b"ch"))).unwrap();
        assert!(segments.len() <= 2, "old segments deleted: {segments:?}");
        let recovered = recover(&dir, &small, &crate::history::Totals::default(), 1000).unwrap();
        assert_eq!(recovered[0].log.next_offset, 3001, "unclean: offsets continue past a gap");
        assert_eq!(offsets(&recovered[0].log), (1991..=2000).collect::<Vec<_>>());
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn torn_and_corrupt_tails_are_cut_off() {
        for damage in ["truncate", "flip"] {
            let dir = temp_dir(damage);
            write(&dir, 50, 1 << 20, limits());
            let segment =
                list_segments(&dir.join("channels").join(hex(b"ch"))).unwrap()[0].1.clone();
            let mut bytes = fs::read(&segment).unwrap();
            let len = bytes.len();
            match damage {
                "truncate" => bytes.truncate(len - 3),
                _ => bytes[len - 20] ^= 0x55,
            }
            fs::write(&segment, &bytes).unwrap();
            mark_clean(&dir);
            let recovered =
                recover(&dir, &limits(), &crate::history::Totals::default(), 1000).unwrap();
            assert_eq!(offsets(&recovered[0].log), (1..=49).collect::<Vec<_>>(), "{damage}");
            assert_eq!(recovered[0].log.next_offset, 50, "{damage}: clean marker, so no gap");
            assert!(
                fs::metadata(&segment).unwrap().len() < len as u64,
                "{damage}: the file was cut"
            );
            fs::remove_dir_all(&dir).ok();
        }
    }
}
