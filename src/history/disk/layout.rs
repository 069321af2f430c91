//! The data directory's layout: a channel's directory name, its epoch and name files, segment
//! file names, atomic writes, the directory's lock and the clean-stop marker.

use super::*;

pub(super) fn channels_dir(dir: &Path) -> PathBuf {
    dir.join("channels")
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn unhex(name: &str) -> Option<Vec<u8>> {
    if !name.len().is_multiple_of(2) {
        return None;
    }
    (0..name.len()).step_by(2).map(|i| u8::from_str_radix(name.get(i..i + 2)?, 16).ok()).collect()
}

/// The directory name of a channel: readable hex for most names, a fixed-length hash for long
/// ones (whose real name is then kept in the directory's `name` file).
pub(super) fn channel_dir_name(channel: &[u8]) -> String {
    if channel.len() * 2 <= MAX_HEX_DIR_NAME {
        hex(channel)
    } else {
        format!("h{}", sha1_smol::Sha1::from(channel).digest())
    }
}

pub(super) fn segment_name(first_offset: u64) -> String {
    format!("{first_offset:020}.seg")
}

/// The segments of a channel directory, sorted by first offset.
pub(super) fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
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
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `contents` to `dir/name` so that the file is either absent or whole after any crash:
/// a temporary file, fsync'ed (with `sync_file`), renamed over the name. The rename is durable
/// once the directory is fsync'ed, which is the caller's business (it may batch several).
pub(super) fn write_atomically(
    dir: &Path,
    name: &str,
    contents: &[u8],
    sync_file: bool,
) -> io::Result<()> {
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
pub(super) fn read_channel_dir(path: &Path) -> Option<(Vec<u8>, u64)> {
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
            let epoch = crate::history::new_epoch();
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
