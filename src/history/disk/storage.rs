//! The storage thread: segment writers, batching, fsync, rolling, retention, fault handling.

use super::*;

/// The open file of a channel's newest segment, with the records of the current batch.
#[derive(Debug)]
pub(super) struct SegmentWriter {
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
pub(super) struct Segment {
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
pub(super) struct ChannelFiles {
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
    pub(super) open: BTreeMap<u64, Bytes>,
    max_open: usize,
    tick: u64,
    pub(super) counters: Arc<StorageCounters>,
    pub(super) health: Arc<StorageHealth>,
    pub(super) faults: Arc<Faults>,
}

/// An acknowledgement waiting for the end of its batch.
#[derive(Debug)]
pub(super) struct PendingAck {
    target: ReplyTo,
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

    /// Runs until `StoreOp::Shutdown` (or every sender is gone). `acks[w]` carries outcome
    /// acknowledgements to worker `w` (as whatever the worker reads them as), and `wake(w)`
    /// wakes it.
    pub fn run<A: From<PublishOutcome>>(
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
                let outcome = PublishOutcome {
                    target: ack.target,
                    channel: ack.channel,
                    offset: ack.offset,
                    result,
                    asked_ns: ack.asked_ns,
                };
                if acks.get(worker).is_some_and(|sender| sender.send(outcome.into()).is_ok()) {
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

    pub(super) fn append(&mut self, append: &Append) -> Result<(), Arc<str>> {
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
    pub(super) fn close_writer(&mut self, channel: &Bytes) -> io::Result<()> {
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
    pub(super) fn flush_open(&mut self, sync: bool) {
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
    pub(super) fn probe_failed(&mut self) {
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
    pub(super) fn forget(&mut self, channel: &Bytes) {
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
pub(super) fn write_pending(
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

pub(super) fn sync_writer(
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
pub(super) fn check_same_file(file: &File, path: &Path) -> io::Result<()> {
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
