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
    pub ack: Option<ReplyTo>,
    /// When the publish was read (`Shared::clock_ns`), for the acknowledgement's latency.
    pub asked_ns: u64,
}

/// Where an answer goes: a connection of a worker (the storage thread's acknowledgements, and
/// the broker's answers: publishes, name claims, backfills, surveys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplyTo {
    /// Worker index.
    pub worker: usize,
    /// Slab key of the connection.
    pub key: usize,
    /// The connection's serial number (slab keys are reused).
    pub serial: u32,
}

/// A publish's outcome, sent back to its worker: durable (or not) from the storage thread,
/// published through Redis (or refused) from the broker.
#[derive(Debug)]
pub struct PublishOutcome {
    /// Who asked.
    pub target: ReplyTo,
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

mod layout;
mod record;
mod recover;
mod storage;

use self::layout::*;
pub use self::layout::{lock_dir, mark_clean, DirLock};
pub use self::record::{encode_record, parse_record};
pub use self::recover::recover;
pub use self::storage::{Storage, StorageOptions};

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
