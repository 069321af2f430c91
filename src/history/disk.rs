//! History on disk: every channel's messages in append-only segment files, written by one storage
//! thread fed over a crossbeam channel (never by a reactor thread), with `--fsync always |
//! interval | never`, rolled by size, deleted by retention, and read back at start.
//!
//! ```text
//! DATA_DIR/lock                                   flock'ed by the one server using the directory
//! DATA_DIR/channels/<dir>/epoch                   the log's epoch, 16 hex digits (written atomically)
//! DATA_DIR/channels/<dir>/name                    the channel's name, for hashed <dir>s
//! DATA_DIR/channels/<dir>/<first offset>.seg      20 digits, so names sort
//! <dir>: the name in hex when that fits in 200 bytes, else `h` + the SHA-1 of the name in hex
//! record: u32 length (of what follows the CRC) | u32 CRC-32 | u64 offset | u64 published ms | payload
//! ```
//!
//! The segment names are the index: inside a segment offsets are contiguous, and a segment starts
//! at or after the offset where the one before it ended (a jump falls on a segment boundary: after
//! an unclean restart, or after a write error abandoned a segment). Memory history is the serving
//! layer; the disk copy exists so that it comes back after a restart or a crash. Retention on disk
//! works a whole segment at a time: a segment goes when every record in it is past retention (the
//! newest segment always stays, so the next offset is never reused).
//!
//! Faults: a write or fsync that fails marks the channel's storage as failed (`StorageHealth`),
//! refuses the acknowledgements that waited on it, and abandons the segment (a torn tail is cut
//! back to the last whole record where the file allows it; Linux may drop dirty pages after a
//! failed fsync, so nothing written since the last good fsync is trusted). The next append, or a
//! probe once a second, opens a fresh segment; when that works the channel is healthy again.
//! A record that is short (torn) or fails its CRC is cut off at recovery with a warning, and never
//! served.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use log::{error, info, warn};

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
/// Names whose hex form is longer than this get a hashed directory name (file systems allow 255).
const MAX_HEX_DIR_NAME: usize = 200;
/// How often a channel whose storage failed is probed while nothing is written to it.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// A record buffer larger than this is freed after its batch (most batches are far smaller).
const KEEP_PENDING_BYTES: usize = 64 * 1024;

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
    /// When the publish was read (`Shared::clock_ns`), for the acknowledgement's latency.
    pub asked_ns: u64,
}

/// Where an acknowledgement goes: a connection of a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AckTarget {
    /// Worker index.
    pub worker: usize,
    /// Slab key of the connection.
    pub key: usize,
    /// The connection's serial number (slab keys are reused).
    pub serial: u32,
}

/// Sent back to a worker when acknowledged appends are durable, or could not be made so.
#[derive(Debug)]
pub struct Persisted {
    /// Who asked.
    pub target: AckTarget,
    /// Channel name.
    pub channel: Bytes,
    /// The offset.
    pub offset: u64,
    /// `Err((code, why))`: the record is not known to be on disk (or, in cluster mode, not known
    /// to be in Redis); the publish must not be acknowledged.
    pub result: Result<(), (crate::protocol::ErrorCode, Arc<str>)>,
    /// When the publish was read (`Shared::clock_ns`), for the acknowledgement's latency.
    pub asked_ns: u64,
}

/// What the storage thread is asked.
#[derive(Debug)]
pub enum StoreOp {
    /// Append a record.
    Append(Append),
    /// The channel was freed (nothing retained, nobody using it): delete its files, so that a
    /// channel of the same name starts afresh with its own epoch.
    Forget(Bytes),
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
    /// Writes, opens and fsyncs that failed (each marked its channel's storage as failed).
    pub errors: AtomicU64,
    /// Acknowledgements refused because their record could not be made durable.
    pub acks_refused: AtomicU64,
}

/// Which channels' storage has failed, and why; read by workers before an acknowledged publish.
#[derive(Debug, Default)]
pub struct StorageHealth {
    failed_count: AtomicUsize,
    failed: Mutex<HashMap<Bytes, Arc<str>>>,
}

impl StorageHealth {
    /// Why `channel`'s storage is failing, if it is (one relaxed load when all is well).
    pub fn failure(&self, channel: &[u8]) -> Option<Arc<str>> {
        if self.failed_count.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.lock().get(channel).cloned()
    }

    /// Channels whose storage is failing now.
    pub fn failed_channels(&self) -> usize {
        self.failed_count.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Bytes, Arc<str>>> {
        self.failed.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn set_failed(&self, channel: &Bytes, why: Arc<str>) {
        let mut failed = self.lock();
        failed.insert(channel.clone(), why);
        self.failed_count.store(failed.len(), Ordering::Relaxed);
    }

    fn set_healthy(&self, channel: &[u8]) {
        let mut failed = self.lock();
        failed.remove(channel);
        self.failed_count.store(failed.len(), Ordering::Relaxed);
    }
}

/// Storage faults to inject, for tests of what the server does when the disk fails: each is an
/// errno that the storage thread's next file operations of that kind return while it is set.
#[derive(Debug, Default)]
pub struct Faults {
    write_errno: AtomicI32,
    fsync_errno: AtomicI32,
    fsync_delay_ms: AtomicU64,
    open_errno: AtomicI32,
    short_writes: AtomicBool,
}

impl Faults {
    /// Writes fail with `errno` (e.g. `libc::ENOSPC`, `libc::EIO`); 0 stops it.
    pub fn fail_writes(&self, errno: i32) {
        self.write_errno.store(errno, Ordering::Relaxed);
    }

    /// fsyncs fail with `errno`; 0 stops it.
    pub fn fail_fsyncs(&self, errno: i32) {
        self.fsync_errno.store(errno, Ordering::Relaxed);
    }

    /// Each segment fsync first sleeps this long (a slow disk); 0 stops it.
    pub fn delay_fsyncs(&self, delay: std::time::Duration) {
        self.fsync_delay_ms.store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Creating or opening files fails with `errno`; 0 stops it.
    pub fn fail_opens(&self, errno: i32) {
        self.open_errno.store(errno, Ordering::Relaxed);
    }

    /// Writes put half their bytes in the file, then fail with ENOSPC (a torn record).
    pub fn short_writes(&self, on: bool) {
        self.short_writes.store(on, Ordering::Relaxed);
    }

    /// Every fault off.
    pub fn clear(&self) {
        self.fail_writes(0);
        self.fail_fsyncs(0);
        self.delay_fsyncs(std::time::Duration::ZERO);
        self.fail_opens(0);
        self.short_writes(false);
    }

    fn check(errno: &AtomicI32) -> io::Result<()> {
        match errno.load(Ordering::Relaxed) {
            0 => Ok(()),
            errno => Err(io::Error::from_raw_os_error(errno)),
        }
    }
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
    newest_ms: u64,
}

fn channels_dir(dir: &Path) -> PathBuf {
    dir.join("channels")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(name: &str) -> Option<Vec<u8>> {
    if !name.len().is_multiple_of(2) {
        return None;
    }
    (0..name.len()).step_by(2).map(|i| u8::from_str_radix(name.get(i..i + 2)?, 16).ok()).collect()
}

/// The directory name of a channel: readable hex for most names, a fixed-length hash for long
/// ones (whose real name is then kept in the directory's `name` file).
fn channel_dir_name(channel: &[u8]) -> String {
    if channel.len() * 2 <= MAX_HEX_DIR_NAME {
        hex(channel)
    } else {
        format!("h{}", sha1_smol::Sha1::from(channel).digest())
    }
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
            .and_then(|n| crate::protocol::fields::number(n.as_bytes()));
        if let Some(first) = first {
            segments.push((first, path));
        }
    }
    segments.sort();
    Ok(segments)
}

/// fsyncs a directory, so that the entries just created or renamed in it survive a power loss.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `contents` to `dir/name` so that the file is either absent or whole after any crash:
/// a temporary file, fsync'ed (with `sync_file`), renamed over the name. The rename is durable
/// once the directory is fsync'ed, which is the caller's business (it may batch several).
fn write_atomically(dir: &Path, name: &str, contents: &[u8], sync_file: bool) -> io::Result<()> {
    let temp = dir.join(format!("{name}.tmp"));
    let mut file = File::create(&temp)?;
    file.write_all(contents)?;
    if sync_file {
        file.sync_all()?;
    }
    drop(file);
    fs::rename(&temp, dir.join(name))
}

/// Records that the storage thread stopped cleanly (everything written and fsync'ed).
pub fn mark_clean(dir: &Path) {
    if let Err(e) = write_atomically(dir, "clean", b"", true).and_then(|()| sync_dir(dir)) {
        warn!("history: cannot mark {} as cleanly shut down: {e}", dir.display());
    }
}

/// An exclusive lock on a data directory, held while a server uses it.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Takes the data directory's lock (creating the directory if needed); fails when another
/// process holds it, so that two servers never write the same files.
pub fn lock_dir(dir: &Path) -> io::Result<DirLock> {
    use std::os::fd::AsRawFd;
    fs::create_dir_all(dir)?;
    let file =
        OpenOptions::new().create(true).truncate(false).write(true).open(dir.join("lock"))?;
    // SAFETY: flock takes a descriptor that `file` owns and keeps open for the call.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another fanout process is using this data directory",
            ));
        }
        return Err(e);
    }
    // The lock goes with the descriptor: closed at exit, however the process ends.
    Ok(DirLock { _file: file })
}

/// Reads the channel name and epoch of a channel directory. A missing or unreadable epoch file
/// (a crash while it was first written, by an older version that did not write it atomically) gets
/// a new epoch, written atomically: offsets still continue after the segments found, so no offset
/// is given twice, and clients that resume with the old epoch are told it changed.
fn read_channel_dir(path: &Path) -> Option<(Vec<u8>, u64)> {
    let dir_name = path.file_name()?.to_str()?;
    let name = match dir_name.strip_prefix('h') {
        Some(hash) if hash.len() == 40 => {
            let name = fs::read(path.join("name")).ok()?;
            (sha1_smol::Sha1::from(&name).digest().to_string() == hash).then_some(name)?
        }
        _ => unhex(dir_name)?,
    };
    let epoch = fs::read_to_string(path.join("epoch"))
        .ok()
        .and_then(|e| crate::protocol::fields::epoch_hex(e.trim().as_bytes()));
    let epoch = match epoch {
        Some(epoch) => epoch,
        None => {
            let epoch = super::new_epoch();
            warn!(
                "history: {} has no readable epoch file; the channel gets a new epoch {epoch:016x}",
                path.display()
            );
            let contents = format!("{epoch:016x}\n");
            if let Err(e) = write_atomically(path, "epoch", contents.as_bytes(), true)
                .and_then(|()| sync_dir(path))
            {
                warn!("history: cannot write {}/epoch: {e}", path.display());
            }
            epoch
        }
    };
    Some((name, epoch))
}

/// Reads every channel under `dir` back, cutting off torn or corrupt tails (with a warning),
/// and applying retention to what is kept in memory.
///
/// After an unclean stop (no `clean` marker: a crash or SIGKILL), messages may have been
/// delivered live that never reached the disk; their offsets must not be given again, so every
/// channel's next offset skips `unclean_gap` (the most appends the storage thread may be behind).
pub fn recover(
    dir: &Path,
    limits_of: impl Fn(&[u8]) -> HistoryLimits,
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
        if !path.is_dir() {
            continue;
        }
        let Some((name, epoch)) = read_channel_dir(&path) else {
            warn!("history: ignoring {} (not a channel directory)", path.display());
            continue;
        };
        let limits = &limits_of(&name);
        let mut log = ChannelLog { epoch, ..ChannelLog::default() };
        let mut metas = Vec::new();
        let mut expected: Option<u64> = None;
        for (first, segment) in list_segments(&path)? {
            let mut bytes = Vec::new();
            File::open(&segment)?.read_to_end(&mut bytes)?;
            let mut at = 0;
            let mut meta =
                SegmentMeta { path: segment.clone(), records: 0, bytes: 0, newest_ms: 0 };
            while at < bytes.len() {
                // A segment starts at the offset in its name, at or after where the previous one
                // ended (later after an unclean restart or an abandoned segment); inside,
                // offsets are contiguous.
                let in_place = |offset: u64| match (meta.records, expected) {
                    (0, None) => offset == first,
                    (0, Some(e)) => offset == first && offset >= e,
                    (_, Some(e)) => offset == e,
                    (_, None) => false,
                };
                match parse_record(&bytes[at..]) {
                    Some((record, used)) if in_place(record.offset) => {
                        expected = Some(record.offset + 1);
                        log.next_offset = record.offset + 1;
                        meta.records += 1;
                        meta.newest_ms = record.published_ms;
                        log.append(record, limits, total);
                        at += used;
                    }
                    _ => {
                        // Later segments stay: each starts on a boundary recovery accepts, and
                        // a replay across the hole announces it.
                        warn!(
                            "history: {}: torn or corrupt record at byte {at} of {}; cutting the segment there",
                            segment.display(),
                            bytes.len()
                        );
                        OpenOptions::new().write(true).open(&segment)?.set_len(at as u64)?;
                        break;
                    }
                }
            }
            meta.bytes = at as u64;
            if meta.records > 0 {
                metas.push(meta);
            } else {
                // Nothing valid in it: a segment created just before a crash, or cut to nothing.
                fs::remove_file(&segment)?;
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
pub fn parse_record(bytes: &[u8]) -> Option<(Retained, usize)> {
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

/// Appends one record to `out`; returns its size.
pub fn encode_record(out: &mut Vec<u8>, record: &Retained) -> usize {
    let start = out.len();
    let length = (16 + record.payload.len()) as u32;
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&record.offset.to_be_bytes());
    out.extend_from_slice(&record.published_ms.to_be_bytes());
    out.extend_from_slice(&record.payload);
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
    out.len() - start
}

/// The open file of a channel's newest segment, with the records of the current batch.
#[derive(Debug)]
struct SegmentWriter {
    file: File,
    /// Encoded records not yet written.
    pending: Vec<u8>,
    /// Bytes in the file that were written whole (where a torn write is cut back to).
    written: u64,
    /// Written since the last fsync.
    unsynced: bool,
}

/// A segment of a channel on disk.
#[derive(Debug)]
struct Segment {
    path: PathBuf,
    /// Records in it.
    records: u64,
    bytes: u64,
    newest_ms: u64,
}

/// The storage thread's view of one channel. Segments found on disk at start are never appended
/// to: the first append of a run opens a new segment, as does the first append after a failure,
/// so an offset jump always falls on a segment boundary, where recovery accepts it.
#[derive(Debug)]
struct ChannelFiles {
    dir: PathBuf,
    epoch: u64,
    segments: VecDeque<Segment>,
    writer: Option<SegmentWriter>,
    /// The writer's place in the least-recently-used order of open files.
    lru_tick: u64,
    /// Why the last write or fsync failed, until a fresh segment works.
    failed: Option<Arc<str>>,
}

/// The storage thread: owns every file under the data directory while the server runs.
#[derive(Debug)]
pub struct Storage {
    dir: PathBuf,
    fsync: FsyncPolicy,
    segment_bytes: u64,
    limits: HistoryLimits,
    namespaces: crate::namespace::Namespaces,
    channels: HashMap<Bytes, ChannelFiles>,
    /// Segments recovery found, by channel, until the channel's first append of this run.
    existing: HashMap<Bytes, Vec<SegmentMeta>>,
    /// Directories with entries not yet fsync'ed, and the channel each belongs to (`None`: the
    /// directory of all channels).
    dirs_to_sync: HashMap<PathBuf, Option<Bytes>>,
    /// Channels with an open segment file, least recently used first (tick -> channel).
    open: BTreeMap<u64, Bytes>,
    max_open: usize,
    tick: u64,
    counters: Arc<StorageCounters>,
    health: Arc<StorageHealth>,
    faults: Arc<Faults>,
}

/// An acknowledgement waiting for the end of its batch.
#[derive(Debug)]
struct PendingAck {
    target: AckTarget,
    channel: Bytes,
    offset: u64,
    /// Refused before the batch's flush (its append failed).
    refused: Option<Arc<str>>,
    asked_ns: u64,
}

/// How the storage thread is set up (besides its directory).
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// When to fsync.
    pub fsync: FsyncPolicy,
    /// Segment files roll at this size.
    pub segment_bytes: u64,
    /// Retention (whole segments are deleted past it), outside namespaces.
    pub limits: HistoryLimits,
    /// Namespaces, whose history limits their channels take.
    pub namespaces: crate::namespace::Namespaces,
    /// Segment files kept open at once (least recently written are closed first).
    pub max_open_segments: usize,
}

impl Storage {
    /// Prepares the storage of `dir` (after `recover`).
    pub fn new(
        dir: &Path,
        options: StorageOptions,
        existing: HashMap<Bytes, Vec<SegmentMeta>>,
        counters: Arc<StorageCounters>,
        health: Arc<StorageHealth>,
        faults: Arc<Faults>,
    ) -> Storage {
        Storage {
            dir: dir.to_path_buf(),
            fsync: options.fsync,
            segment_bytes: options.segment_bytes.max(4096),
            limits: options.limits,
            namespaces: options.namespaces,
            channels: HashMap::new(),
            existing,
            open: BTreeMap::new(),
            dirs_to_sync: HashMap::new(),
            max_open: options.max_open_segments.max(1),
            tick: 0,
            counters,
            health,
            faults,
        }
    }

    fn durable(&self) -> bool {
        self.fsync != FsyncPolicy::Never
    }

    /// Runs until `StoreOp::Shutdown` (or every sender is gone). `acks[w]` carries persisted
    /// acknowledgements to worker `w` (as whatever the worker reads them as), and `wake(w)`
    /// wakes it.
    pub fn run<A: From<Persisted>>(
        mut self,
        ops: Receiver<StoreOp>,
        acks: Vec<Sender<A>>,
        wake: impl Fn(usize),
        depth: &AtomicU64,
    ) {
        let mut last_sync = Instant::now();
        let mut last_probe = Instant::now();
        let mut batch = Vec::new();
        let mut pending_acks: Vec<PendingAck> = Vec::new();
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
            // Channels written to in this batch that were failing: healthy again if it all works.
            let mut retried: HashSet<Bytes> = HashSet::new();
            for op in batch.drain(..) {
                match op {
                    StoreOp::Shutdown => stop = true,
                    StoreOp::Forget(channel) => self.forget(&channel),
                    StoreOp::Append(append) => {
                        if self.channels.get(&append.channel).is_some_and(|f| f.failed.is_some()) {
                            retried.insert(append.channel.clone());
                        }
                        let refused = self.append(&append).err();
                        if let Some(target) = append.ack {
                            pending_acks.push(PendingAck {
                                target,
                                channel: append.channel,
                                offset: append.record.offset,
                                refused,
                                asked_ns: append.asked_ns,
                            });
                        }
                    }
                }
            }
            let sync_now = match self.fsync {
                FsyncPolicy::Always => true,
                FsyncPolicy::Interval(every) => last_sync.elapsed() >= every || stop,
                FsyncPolicy::Never => false,
            };
            self.flush_open(sync_now);
            if sync_now {
                last_sync = Instant::now();
            }
            for channel in retried {
                self.healed_if_written(&channel);
            }
            if last_probe.elapsed() >= PROBE_EVERY {
                last_probe = Instant::now();
                self.probe_failed();
            }
            let mut woken = vec![false; acks.len()];
            for ack in pending_acks.drain(..) {
                // A batch's records of one channel are durable together or not at all.
                let failed = self.channels.get(&ack.channel).and_then(|f| f.failed.clone());
                let result = match ack.refused.or(failed) {
                    Some(why) => {
                        self.counters.acks_refused.fetch_add(1, Ordering::Relaxed);
                        Err((crate::protocol::ErrorCode::StorageFailed, why))
                    }
                    None => Ok(()),
                };
                let worker = ack.target.worker;
                let persisted = Persisted {
                    target: ack.target,
                    channel: ack.channel,
                    offset: ack.offset,
                    result,
                    asked_ns: ack.asked_ns,
                };
                if acks.get(worker).is_some_and(|sender| sender.send(persisted.into()).is_ok()) {
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
                self.flush_open(true);
                return;
            }
        }
    }

    /// The channel's files, its directory created (with its epoch) if needed.
    fn files(&mut self, channel: &Bytes, epoch: u64) {
        if !self.channels.contains_key(channel) {
            let dir = channels_dir(&self.dir).join(channel_dir_name(channel));
            let segments = self
                .existing
                .remove(channel)
                .unwrap_or_default()
                .into_iter()
                .map(|m| Segment {
                    path: m.path,
                    records: m.records,
                    bytes: m.bytes,
                    newest_ms: m.newest_ms,
                })
                .collect();
            self.channels.insert(
                channel.clone(),
                ChannelFiles { dir, epoch, segments, writer: None, lru_tick: 0, failed: None },
            );
        }
    }

    /// Creates the channel directory with its `name` (if hashed) and `epoch` files, written
    /// atomically (write-temp, fsync under `--fsync always`, rename). Returns true when it
    /// created the directory: the new entries are durable once the directories are fsync'ed,
    /// which `flush_open` does for the whole batch (`dirs_to_sync`). Under `--fsync interval` the
    /// files themselves are not fsync'ed before the rename: after a power loss an epoch file may
    /// come back empty, and recovery then gives the channel a new epoch (offsets still go on).
    fn ensure_dir(&self, files: &ChannelFiles, channel: &[u8]) -> io::Result<bool> {
        if files.dir.join("epoch").exists() {
            return Ok(false);
        }
        let sync_files = self.fsync == FsyncPolicy::Always;
        Faults::check(&self.faults.open_errno)?;
        fs::create_dir_all(&files.dir)?;
        if channel.len() * 2 > MAX_HEX_DIR_NAME {
            write_atomically(&files.dir, "name", channel, sync_files)?;
        }
        let epoch = format!("{:016x}\n", files.epoch);
        write_atomically(&files.dir, "epoch", epoch.as_bytes(), sync_files)?;
        Ok(true)
    }

    fn append(&mut self, append: &Append) -> Result<(), Arc<str>> {
        self.try_append(append).map_err(|e| self.fail(&append.channel, "write", e))
    }

    fn try_append(&mut self, append: &Append) -> io::Result<()> {
        self.files(&append.channel, append.epoch);
        let files = &self.channels[&append.channel];
        let roll = files.writer.is_none()
            || files.segments.back().is_none_or(|s| s.bytes >= self.segment_bytes);
        if roll {
            self.open_segment(&append.channel, &append.record)?;
        }
        self.touch(&append.channel);
        let files = self.channels.get_mut(&append.channel).expect("opened above");
        let (Some(writer), Some(segment)) = (files.writer.as_mut(), files.segments.back_mut())
        else {
            return Err(io::Error::other("no open segment"));
        };
        let written = encode_record(&mut writer.pending, &append.record) as u64;
        segment.bytes += written;
        segment.records += 1;
        segment.newest_ms = append.record.published_ms;
        self.counters.records_written.fetch_add(1, Ordering::Relaxed);
        self.apply_retention(&append.channel);
        Ok(())
    }

    /// Closes the channel's current segment (flushed and, unless `--fsync never`, synced: its
    /// records may be waiting for acknowledgement) and opens a new one starting at `record`.
    fn open_segment(&mut self, channel: &Bytes, record: &Retained) -> io::Result<()> {
        self.close_writer(channel)?;
        while self.open.len() >= self.max_open {
            let Some((_, oldest)) = self.open.pop_first() else { break };
            if let Err(e) = self.close_writer(&oldest) {
                self.fail(&oldest, "write", e);
            }
        }
        let files = &self.channels[channel];
        let created = self.ensure_dir(files, channel)?;
        let dir = files.dir.clone();
        let path = dir.join(segment_name(record.offset));
        Faults::check(&self.faults.open_errno)?;
        // `create_new`: a run never appends to a file it did not create (see `ChannelFiles`).
        let file = OpenOptions::new().create_new(true).append(true).open(&path)?;
        if self.durable() {
            if created {
                self.dirs_to_sync.insert(channels_dir(&self.dir), None);
            }
            self.dirs_to_sync.insert(dir, Some(channel.clone()));
        }
        self.counters.segments_written.fetch_add(1, Ordering::Relaxed);
        self.tick += 1;
        let tick = self.tick;
        let files = self.channels.get_mut(channel).expect("looked up above");
        files.segments.push_back(Segment {
            path,
            records: 0,
            bytes: 0,
            newest_ms: record.published_ms,
        });
        files.writer =
            Some(SegmentWriter { file, pending: Vec::new(), written: 0, unsynced: false });
        files.lru_tick = tick;
        self.open.insert(tick, channel.clone());
        Ok(())
    }

    /// Marks the channel most recently used.
    fn touch(&mut self, channel: &Bytes) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(files) = self.channels.get_mut(channel) {
            if files.writer.is_some() && files.lru_tick != tick {
                self.open.remove(&files.lru_tick);
                files.lru_tick = tick;
                self.open.insert(tick, channel.clone());
            }
        }
    }

    /// Writes out and closes a channel's open segment.
    fn close_writer(&mut self, channel: &Bytes) -> io::Result<()> {
        let durable = self.durable();
        let faults = self.faults.clone();
        let Some(files) = self.channels.get_mut(channel) else { return Ok(()) };
        let Some(mut writer) = files.writer.take() else { return Ok(()) };
        self.open.remove(&files.lru_tick);
        let segment = files.segments.back_mut();
        write_pending(&mut writer, segment, &faults)?;
        if durable && writer.unsynced {
            sync_writer(&mut writer, &faults, &self.counters)?;
        }
        Ok(())
    }

    /// Writes every open segment's batch, and fsyncs them when `sync`; a failure fails only
    /// its own channel.
    fn flush_open(&mut self, sync: bool) {
        let open: Vec<Bytes> = self.open.values().cloned().collect();
        for channel in open {
            let faults = self.faults.clone();
            let Some(files) = self.channels.get_mut(&channel) else { continue };
            let Some(writer) = files.writer.as_mut() else { continue };
            let result = write_pending(writer, files.segments.back_mut(), &faults);
            let result = result.and_then(|()| {
                if sync && writer.unsynced {
                    sync_writer(writer, &faults, &self.counters)?;
                    // A segment deleted or replaced under us would take acknowledged records
                    // with it: check that the path still names the file we synced.
                    if let Some(segment) = files.segments.back() {
                        check_same_file(&writer.file, &segment.path)?;
                    }
                }
                Ok(())
            });
            if let Err(e) = result {
                let what = if sync { "write or fsync" } else { "write" };
                self.fail(&channel, what, e);
            }
        }
        if sync && !self.dirs_to_sync.is_empty() {
            self.sync_dirs();
        }
    }

    /// fsyncs the directories that gained entries since the last sync (new channel directories,
    /// new segments), once each however many entries they gained. A failure fails the channel
    /// whose directory it is (the root's fails every channel created since).
    fn sync_dirs(&mut self) {
        let dirs = std::mem::take(&mut self.dirs_to_sync);
        let root_failed = match dirs.iter().find(|(_, owner)| owner.is_none()) {
            Some((root, _)) => sync_dir(root).err(),
            None => None,
        };
        for (dir, owner) in dirs {
            let Some(channel) = owner else { continue };
            let result = match &root_failed {
                Some(e) => Err(io::Error::new(e.kind(), e.to_string())),
                None => Faults::check(&self.faults.fsync_errno).and_then(|()| sync_dir(&dir)),
            };
            if let Err(e) = result {
                self.fail(&channel, "directory fsync", e);
            }
        }
    }

    /// Marks a channel's storage as failed: its segment is abandoned (the next append opens a
    /// fresh one), and workers refuse acknowledged publishes to it until it works again.
    fn fail(&mut self, channel: &Bytes, what: &str, e: io::Error) -> Arc<str> {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        let why: Arc<str> = format!("storage failed: {what}: {e}").into();
        let Some(files) = self.channels.get_mut(channel) else { return why };
        if let Some(writer) = files.writer.take() {
            self.open.remove(&files.lru_tick);
            if let Some(segment) = files.segments.back_mut() {
                segment.bytes = writer.written;
            }
        }
        if files.failed.is_none() {
            error!(
                "history: channel {} ({}): {why}; acknowledged publishes are refused until its storage works again",
                String::from_utf8_lossy(channel),
                files.dir.display()
            );
        }
        files.failed = Some(why.clone());
        self.health.set_failed(channel, why.clone());
        why
    }

    /// After a batch: a failing channel whose writes and fsyncs all worked is healthy again.
    fn healed_if_written(&mut self, channel: &Bytes) {
        let always = self.fsync == FsyncPolicy::Always;
        let Some(files) = self.channels.get_mut(channel) else { return };
        // Under --fsync always the batch was synced too; otherwise a whole write is the evidence.
        let healed =
            files.writer.as_ref().is_some_and(|w| w.pending.is_empty() && !(always && w.unsynced));
        if healed && files.failed.take().is_some() {
            info!("history: channel {}: storage works again", String::from_utf8_lossy(channel));
            self.health.set_healthy(channel);
        }
    }

    /// Tries the storage of every failing channel (a small file written, fsync'ed and removed in
    /// its directory); those that work are healthy again, and their next append opens a fresh
    /// segment.
    fn probe_failed(&mut self) {
        let failing: Vec<Bytes> = self
            .channels
            .iter()
            .filter(|(_, f)| f.failed.is_some())
            .map(|(name, _)| name.clone())
            .collect();
        for channel in failing {
            let files = &self.channels[&channel];
            let result = self.ensure_dir(files, &channel).and_then(|created| {
                if created {
                    sync_dir(&channels_dir(&self.dir))?;
                }
                self.probe(&files.dir)
            });
            if result.is_ok() {
                if let Some(files) = self.channels.get_mut(&channel) {
                    files.failed = None;
                }
                info!(
                    "history: channel {}: storage works again",
                    String::from_utf8_lossy(&channel)
                );
                self.health.set_healthy(&channel);
            }
        }
    }

    fn probe(&self, dir: &Path) -> io::Result<()> {
        let path = dir.join("probe.tmp");
        Faults::check(&self.faults.open_errno)?;
        let mut file = File::create(&path)?;
        Faults::check(&self.faults.write_errno)?;
        if self.faults.short_writes.load(Ordering::Relaxed) {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        file.write_all(&[0; 4096])?;
        Faults::check(&self.faults.fsync_errno)?;
        file.sync_data()?;
        fs::remove_file(&path)
    }

    /// Deletes a freed channel's files.
    fn forget(&mut self, channel: &Bytes) {
        self.existing.remove(channel);
        let dir = match self.channels.remove(channel) {
            Some(files) => {
                if files.writer.is_some() {
                    self.open.remove(&files.lru_tick);
                }
                files.dir
            }
            None => channels_dir(&self.dir).join(channel_dir_name(channel)),
        };
        self.health.set_healthy(channel);
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => warn!("history: cannot delete {}: {e}", dir.display()),
        }
    }

    /// Deletes whole segments that retention no longer needs (never the newest).
    fn apply_retention(&mut self, channel: &Bytes) {
        let limits = self.namespaces.history_limits(&self.limits, channel);
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
}

/// Writes a writer's pending records. On failure the file is cut back to its last whole record
/// (where the file system lets us), so that nothing torn is left for a later write to follow.
fn write_pending(
    writer: &mut SegmentWriter,
    segment: Option<&mut Segment>,
    faults: &Faults,
) -> io::Result<()> {
    if writer.pending.is_empty() {
        return Ok(());
    }
    let result = Faults::check(&faults.write_errno).and_then(|()| {
        if faults.short_writes.load(Ordering::Relaxed) {
            let half = writer.pending.len() / 2;
            writer.file.write_all(&writer.pending[..half])?;
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        writer.file.write_all(&writer.pending)
    });
    match result {
        Ok(()) => {
            writer.written += writer.pending.len() as u64;
            writer.unsynced = true;
            writer.pending.clear();
            if writer.pending.capacity() > KEEP_PENDING_BYTES {
                writer.pending = Vec::new();
            }
            Ok(())
        }
        Err(e) => {
            writer.pending = Vec::new();
            if let Err(cut) = writer.file.set_len(writer.written) {
                warn!("history: cannot cut a torn write back: {cut} (recovery will)");
            }
            if let Some(segment) = segment {
                segment.bytes = writer.written;
            }
            Err(e)
        }
    }
}

fn sync_writer(
    writer: &mut SegmentWriter,
    faults: &Faults,
    counters: &StorageCounters,
) -> io::Result<()> {
    let started = Instant::now();
    Faults::check(&faults.fsync_errno)?;
    let delay_ms = faults.fsync_delay_ms.load(Ordering::Relaxed);
    if delay_ms > 0 {
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
    }
    writer.file.sync_data()?;
    writer.unsynced = false;
    let micros = started.elapsed().as_micros() as u64;
    counters.fsyncs.fetch_add(1, Ordering::Relaxed);
    counters.fsync_micros_total.fetch_add(micros, Ordering::Relaxed);
    counters.fsync_micros_max.fetch_max(micros, Ordering::Relaxed);
    Ok(())
}

/// Fails when `path` no longer names `file` (deleted or replaced).
fn check_same_file(file: &File, path: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let open = file.metadata()?;
    match fs::metadata(path) {
        Ok(named) if named.ino() == open.ino() && named.dev() == open.dev() => Ok(()),
        Ok(_) => Err(io::Error::other(format!("{} was replaced", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(io::Error::other(format!("{} disappeared", path.display())))
        }
        Err(e) => Err(e),
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

    fn storage(dir: &Path, segment_bytes: u64, limits: HistoryLimits, max_open: usize) -> Storage {
        let options = StorageOptions {
            fsync: FsyncPolicy::Always,
            segment_bytes,
            limits,
            namespaces: Default::default(),
            max_open_segments: max_open,
        };
        Storage::new(dir, options, HashMap::new(), Arc::default(), Arc::default(), Arc::default())
    }

    fn append(storage: &mut Storage, channel: &[u8], offset: u64) -> Result<(), Arc<str>> {
        let record =
            Retained { offset, published_ms: now_ms(), payload: Bytes::from(format!("m{offset}")) };
        let channel = Bytes::copy_from_slice(channel);
        storage.append(&Append { channel, epoch: 0xfeed, record, ack: None, asked_ns: 0 })
    }

    fn write(dir: &Path, count: u64, segment_bytes: u64, limits: HistoryLimits) -> u64 {
        let mut storage = storage(dir, segment_bytes, limits, 16);
        for offset in 1..=count {
            append(&mut storage, b"ch", offset).unwrap();
        }
        storage.flush_open(true);
        0xfeed
    }

    fn offsets(log: &ChannelLog) -> Vec<u64> {
        let mut out = Vec::new();
        log.read_after(0, usize::MAX, usize::MAX, &mut out);
        out.iter().map(|r| r.offset).collect()
    }

    fn recover_all(dir: &Path) -> Vec<Recovered> {
        let mut recovered =
            recover(dir, |_| limits(), &crate::history::Totals::default(), 1000).unwrap();
        recovered.sort_by(|a, b| a.name.cmp(&b.name));
        recovered
    }

    #[test]
    fn write_then_recover_across_segments() {
        let dir = temp_dir("roundtrip");
        let epoch = write(&dir, 100, 4096, limits());
        mark_clean(&dir);
        let recovered = recover_all(&dir);
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
        let recovered =
            recover(&dir, |_| small.clone(), &crate::history::Totals::default(), 1000).unwrap();
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
            let recovered = recover_all(&dir);
            assert_eq!(offsets(&recovered[0].log), (1..=49).collect::<Vec<_>>(), "{damage}");
            assert_eq!(recovered[0].log.next_offset, 50, "{damage}: clean marker, so no gap");
            assert!(
                fs::metadata(&segment).unwrap().len() < len as u64,
                "{damage}: the file was cut"
            );
            fs::remove_dir_all(&dir).ok();
        }
    }

    #[test]
    fn a_torn_segment_keeps_the_segments_after_it() {
        let dir = temp_dir("torn-middle");
        write(&dir, 300, 4096, limits());
        let segments = list_segments(&dir.join("channels").join(hex(b"ch"))).unwrap();
        assert!(segments.len() >= 3, "{segments:?}");
        let middle = &segments[1].1;
        let len = fs::metadata(middle).unwrap().len();
        OpenOptions::new().write(true).open(middle).unwrap().set_len(len - 5).unwrap();
        mark_clean(&dir);
        let recovered = recover_all(&dir);
        let got = offsets(&recovered[0].log);
        assert_eq!(recovered[0].log.next_offset, 301);
        assert_eq!(got.last(), Some(&300), "later segments kept");
        assert_eq!(got.len(), 299, "only the torn record is gone");
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn long_names_get_hashed_directories_and_come_back() {
        let dir = temp_dir("long");
        let long = vec![b'x'; 255];
        let mut storage = storage(&dir, 1 << 20, limits(), 16);
        for offset in 1..=3 {
            append(&mut storage, &long, offset).unwrap();
        }
        storage.flush_open(true);
        let dirs: Vec<String> = fs::read_dir(dir.join("channels"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(dirs.len(), 1);
        assert!(dirs[0].starts_with('h') && dirs[0].len() == 41, "{dirs:?}");
        mark_clean(&dir);
        let recovered = recover_all(&dir);
        assert_eq!(&recovered[0].name[..], &long[..]);
        assert_eq!(offsets(&recovered[0].log), vec![1, 2, 3]);
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_lost_epoch_file_gets_a_new_epoch_and_offsets_go_on() {
        let dir = temp_dir("epoch");
        write(&dir, 10, 1 << 20, limits());
        let channel_dir = dir.join("channels").join(hex(b"ch"));
        fs::write(channel_dir.join("epoch"), b"").unwrap();
        mark_clean(&dir);
        let recovered = recover_all(&dir);
        assert_ne!(recovered[0].log.epoch, 0xfeed);
        assert_eq!(recovered[0].log.next_offset, 11, "no offset is given twice");
        let written = fs::read_to_string(channel_dir.join("epoch")).unwrap();
        assert_eq!(u64::from_str_radix(written.trim(), 16).unwrap(), recovered[0].log.epoch);
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn open_segment_files_are_bounded() {
        let dir = temp_dir("lru");
        let mut storage = storage(&dir, 1 << 20, limits(), 3);
        for round in 1..=4 {
            for channel in 0..10u8 {
                append(&mut storage, &[b'c', b'0' + channel], round).unwrap();
                assert!(storage.open.len() <= 3);
            }
        }
        storage.flush_open(true);
        mark_clean(&dir);
        let recovered = recover_all(&dir);
        assert_eq!(recovered.len(), 10);
        for channel in &recovered {
            assert_eq!(offsets(&channel.log), vec![1, 2, 3, 4], "{:?}", channel.name);
        }
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn write_and_fsync_faults_fail_the_channel_until_storage_works_again() {
        for fault in ["enospc", "eio-fsync", "short", "open"] {
            let dir = temp_dir(fault);
            let mut storage = storage(&dir, 1 << 20, limits(), 16);
            let faults = storage.faults.clone();
            let health = storage.health.clone();
            for offset in 1..=5 {
                append(&mut storage, b"ch", offset).unwrap();
            }
            storage.flush_open(true);
            match fault {
                "enospc" => faults.fail_writes(libc::ENOSPC),
                "eio-fsync" => faults.fail_fsyncs(libc::EIO),
                "short" => faults.short_writes(true),
                _ => faults.fail_opens(libc::EACCES),
            }
            if fault == "open" {
                // Only a new segment needs an open: force one.
                storage.close_writer(&Bytes::from_static(b"ch")).unwrap();
                assert!(append(&mut storage, b"ch", 6).is_err(), "{fault}");
            } else {
                append(&mut storage, b"ch", 6).unwrap();
                storage.flush_open(true);
            }
            assert!(health.failure(b"ch").is_some(), "{fault}: the channel is failed");
            assert!(storage.counters.errors.load(Ordering::Relaxed) >= 1);
            storage.probe_failed();
            assert!(health.failure(b"ch").is_some(), "{fault}: still failing while faulty");
            faults.clear();
            storage.probe_failed();
            assert!(health.failure(b"ch").is_none(), "{fault}: healthy once the fault clears");
            append(&mut storage, b"ch", 7).unwrap();
            storage.flush_open(true);
            mark_clean(&dir);
            let recovered = recover_all(&dir);
            // After a failed fsync the record was written, only not known to be durable: it may
            // come back (its acknowledgement was refused, which promises nothing either way).
            let expected: Vec<u64> = if fault == "eio-fsync" {
                vec![1, 2, 3, 4, 5, 6, 7]
            } else {
                vec![1, 2, 3, 4, 5, 7]
            };
            assert_eq!(offsets(&recovered[0].log), expected, "{fault}: never a torn record");
            fs::remove_dir_all(&dir).ok();
        }
    }

    #[test]
    fn a_segment_that_disappears_fails_its_channel() {
        let dir = temp_dir("vanish");
        let mut storage = storage(&dir, 1 << 20, limits(), 16);
        append(&mut storage, b"ch", 1).unwrap();
        storage.flush_open(true);
        fs::remove_dir_all(dir.join("channels").join(hex(b"ch"))).unwrap();
        append(&mut storage, b"ch", 2).unwrap();
        storage.flush_open(true);
        assert!(storage.health.failure(b"ch").is_some());
        storage.probe_failed();
        assert!(storage.health.failure(b"ch").is_none(), "the directory is made again");
        append(&mut storage, b"ch", 3).unwrap();
        storage.flush_open(true);
        mark_clean(&dir);
        let recovered = recover_all(&dir);
        assert_eq!(recovered[0].log.epoch, 0xfeed, "the epoch file is written again");
        assert_eq!(offsets(&recovered[0].log), vec![3]);
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn forget_deletes_a_channel_and_a_data_dir_has_one_owner() {
        let dir = temp_dir("forget");
        let lock = lock_dir(&dir).unwrap();
        let second = lock_dir(&dir).unwrap_err();
        assert!(second.to_string().contains("another fanout process"), "{second}");
        let mut storage = storage(&dir, 1 << 20, limits(), 16);
        append(&mut storage, b"ch", 1).unwrap();
        storage.flush_open(true);
        storage.forget(&Bytes::from_static(b"ch"));
        assert!(!dir.join("channels").join(hex(b"ch")).exists());
        assert!(storage.open.is_empty());
        drop(lock);
        lock_dir(&dir).unwrap();
        fs::remove_dir_all(&dir).ok();
    }
}
