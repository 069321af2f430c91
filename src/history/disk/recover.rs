//! Reading every channel back at start, cutting torn or corrupt tails.

use super::*;

/// Reads every channel under `dir` back, cutting off torn or corrupt tails (with a warning),
/// and applying retention to what is kept in memory.
///
/// After an unclean stop (no `clean` marker: a crash or SIGKILL), messages may have been
/// delivered live that never reached the disk; their offsets must not be given again, so every
/// channel's next offset skips `unclean_gap` (the most appends the storage thread may be behind).
pub fn recover(
    dir: &Path,
    limits_of: impl Fn(&[u8]) -> HistoryLimits,
    total: &crate::history::Totals,
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
