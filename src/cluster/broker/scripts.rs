//! The Lua scripts the broker runs in Redis, and the parsing of their answers. A script runs
//! atomically on one server (one slot of a Redis Cluster: every key of a call shares the
//! channel's hash tag), which is what makes an offset, its stream entry and its pub/sub envelope
//! one event.

use bytes::Bytes;

use crate::protocol::resp::Value;

/// Gives runs of messages their offsets, appends them to their channels' streams and publishes
/// one envelope per channel carrying its run: one script call for a whole turn's publishes to
/// one server (or one slot of a Redis Cluster), not one per message.
/// KEYS, per channel: meta, log, and for an inbox the name's lease. ARGV: channels in the call,
/// candidate epoch (8 bytes, for a channel that has none), messages to keep (0: no stream), key
/// lifetime (ms), time (ms), PUBLISH or (Redis Cluster) SPUBLISH; then per channel: its pub/sub
/// channel, its flags (1: it has a lease key; 2: refresh its keys' expiry), the epoch this node
/// mirrors of it and the latest offset it holds there (empty and 0 when it mirrors none), its
/// message count, and the payloads. Returns each channel's first offset (-1 for an inbox whose
/// name nobody holds: nothing published), and each channel's epoch (a node that mirrors the
/// channel remembers what it was acknowledged: `mirror::Acked`).
///
/// The fence: Redis handing out an offset this node already holds in the same epoch means Redis
/// lost what it had acknowledged (restored from an older snapshot, a lagging replica promoted,
/// `everysec` losing its last second). Offsets would name two messages; instead the channel's log
/// ends there and a new epoch begins, keeping the stream (what Redis still has is read again
/// from the new epoch's start), before anything is published under the old one.
///
/// What it costs Redis is mostly its calls (each `redis.call` costs about as much again as the
/// command it runs), so a channel's run makes four: HGET, HINCRBY, XADD, PUBLISH.
/// - A run is one stream entry (`n` messages, `r` each length-prefixed as in the envelope, `t`
///   the time), so a hot channel's XADD is paid per run, not per message (`parse_entries`). A
///   run of one keeps the entry it always had (`p`, `t`).
/// - A stream keeps at least the last `keep` messages: runs trim by offset (MINID), single
///   entries by count (MAXLEN, cheaper), so where both mix it may hold more, at most
///   `RUN_MESSAGES` per entry.
/// - Expiries are set only when the node asks (`Expiries`: once per channel per period) or when
///   the keys are new (a count starting over, an epoch missing).
pub(super) const PUBLISH_LUA: &str = r"
local call, pack, concat = redis.call, struct.pack, table.concat
local keep, now, lifetime, publish = tonumber(ARGV[3]), ARGV[5], ARGV[4], ARGV[6]
local firsts, epochs = {}, {}
local k, a = 1, 7
for c = 1, tonumber(ARGV[1]) do
  local meta, log = KEYS[k], KEYS[k + 1]
  local topic, flags, known_epoch, known_last, count =
    ARGV[a], tonumber(ARGV[a + 1]), ARGV[a + 2], tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  k, a = k + 2, a + 5
  local held = true
  if flags % 2 == 1 then
    held = call('EXISTS', KEYS[k]) == 1
    k = k + 1
  end
  if held then
    local epoch = call('HGET', meta, 'e')
    local first = call('HINCRBY', meta, 'o', count) - count + 1
    if first == 1 and keep > 0 then
      -- A new count beside a stream that may not be new (the meta key alone expired, was
      -- evicted or deleted): go on after the stream's last entry, under a new epoch (the
      -- epoch went with the key), instead of failing to append below it.
      local top = call('XREVRANGE', log, '+', '-', 'COUNT', 1)[1]
      local after = top and tonumber(string.match(top[1], '^0%-(%d+)$'))
      if after then
        first = after + 1
        call('HSET', meta, 'o', after + count)
      end
    end
    local refresh = flags >= 2 or first == 1
    if (not epoch) or (epoch == known_epoch and first <= known_last) then
      epoch = ARGV[2]
      call('HSET', meta, 'e', epoch)
      refresh = true
    end
    -- A run is one stream entry named by its last offset, trimmed by offset (MINID) so that
    -- the last `keep` messages stay; a run of one is the entry it always was, trimmed by count
    -- (cheaper, and each such entry is one message).
    local run, last = nil, first + count - 1
    if count == 1 then
      local payload = ARGV[a]
      run = pack('>I4', #payload) .. payload
      if keep > 0 then
        call('XADD', log, 'MAXLEN', '~', keep, '0-' .. last, 'p', payload, 't', now)
      end
    else
      run = {}
      for m = 1, count do
        local payload = ARGV[a + m - 1]
        run[m] = pack('>I4', #payload) .. payload
      end
      run = concat(run)
      if keep > 0 then
        call('XADD', log, 'MINID', '~', '0-' .. math.max(last - keep + 1, 1), '0-' .. last,
          'n', count, 'r', run, 't', now)
      end
    end
    if refresh then
      if keep > 0 then
        call('PEXPIRE', log, lifetime)
      end
      call('PEXPIRE', meta, lifetime)
    end
    call(publish, topic, '\2' .. epoch .. pack('>I8I4', first, count) .. run)
    firsts[c], epochs[c] = first, epoch
  else
    firsts[c], epochs[c] = -1, ''
  end
  a = a + count
end
return {firsts, epochs}
";

/// Reads a channel's epoch (creating it when missing), latest offset, and stream entries from
/// an offset on (the node compares the one it has with the stream's: a rewritten entry is a
/// rollback). KEYS: meta, log. ARGV: candidate epoch, key lifetime (ms: both keys get it when the
/// epoch is made, as a publish's refresh would), after, count, and an
/// epoch to end (empty: none): a node that found Redis rolled back ends the epoch it mirrors,
/// once, whichever node sees it first (the candidate becomes the channel's epoch only while that
/// one still is).
pub(super) const SYNC_LUA: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch or epoch == ARGV[5] then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'e', epoch)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
local last = tonumber(redis.call('HGET', KEYS[1], 'o') or '0')
local entries = redis.call('XRANGE', KEYS[2], '0-' .. ARGV[3], '+', 'COUNT', ARGV[4])
return {epoch, last, entries}
";

/// Keeps a name's lease: extends it if this node holds it, takes it again if it expired (a long
/// outage), else 0 (someone else has it now). KEYS: the lease. ARGV: node id, lease (ms).
pub(super) const REFRESH_LUA: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
elseif not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// Gives a name's lease back if this node holds it. KEYS: the lease. ARGV: node id.
pub(super) const RELEASE_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// A script and its SHA1: run by EVALSHA, by EVAL with its body after NOSCRIPT (a flushed
/// script cache, a failover to a server that never loaded it).
pub(super) struct Script {
    pub body: &'static str,
    pub sha: String,
}

impl Script {
    pub fn new(body: &'static str) -> Self {
        Script { body, sha: sha1_smol::Sha1::from(body).digest().to_string() }
    }
}

/// Parses a sync reply: epoch, latest offset, (offset, time, payload) per message from `after`
/// on, and how many stream entries were read (a full page means more may follow).
pub(super) type Synced = (u64, u64, StreamMessages, usize);

/// Messages read from a stream: (offset, publish time, payload) each.
pub(super) type StreamMessages = Vec<(u64, u64, Bytes)>;

pub(super) fn parse_sync(reply: Value, after: u64) -> Result<Synced, String> {
    let Value::Array(Some(parts)) = reply else { return Err(format!("{reply:?}")) };
    let mut parts = parts.into_iter();
    let epoch = match parts.next() {
        Some(Value::Bulk(Some(e))) if e.len() == 8 => {
            u64::from_be_bytes(e[..].try_into().map_err(|_| "epoch")?)
        }
        other => return Err(format!("epoch {other:?}")),
    };
    let last = match parts.next() {
        Some(Value::Integer(n)) if n >= 0 => n as u64,
        other => return Err(format!("last offset {other:?}")),
    };
    let Some(entries) = parts.next() else { return Err("entries".into()) };
    let (messages, read) = parse_entries(entries, after..=u64::MAX)?;
    Ok((epoch, last, messages, read))
}

/// Stream entries (XRANGE's answer) as messages, (offset, publish time, payload) each, keeping
/// those in `wanted`; and how many entries there were. An entry is one message (`p`) or a run
/// (`n` messages, `r` each with its 4-byte length) named by its last offset: a read from an
/// offset may start inside a run, and one up to an offset may end inside one.
///
/// An entry that is neither (written by hand, or by something else) is skipped with a warning:
/// its offsets are then a hole the mirror tells subscribers about, never a made-up message, and
/// one bad entry never takes the connection (and every other channel on it) down. Only a reply
/// that is not a list of entries at all is an error.
pub(super) fn parse_entries(
    reply: Value,
    wanted: std::ops::RangeInclusive<u64>,
) -> Result<(StreamMessages, usize), String> {
    let Value::Array(Some(raw)) = reply else { return Err(format!("entries {reply:?}")) };
    let read = raw.len();
    let mut messages = Vec::with_capacity(raw.len());
    for entry in raw {
        let mut run = Vec::new();
        match parse_entry(entry, &mut run) {
            Ok(()) => messages.extend(run.into_iter().filter(|(o, ..)| wanted.contains(o))),
            Err(why) => log::warn!("cluster: a stream entry skipped: {why}"),
        }
    }
    Ok((messages, read))
}

/// One stream entry's messages, in offset order.
fn parse_entry(entry: Value, out: &mut StreamMessages) -> Result<(), String> {
    let Value::Array(Some(entry)) = entry else { return Err("not an entry".into()) };
    let mut entry = entry.into_iter();
    let Some(Value::Bulk(Some(id))) = entry.next() else { return Err("no entry id".into()) };
    let id = String::from_utf8_lossy(&id).into_owned();
    let last: u64 = id
        .strip_prefix("0-")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("entry {id}: not one of fanout's ids"))?;
    let Some(Value::Array(Some(fields))) = entry.next() else {
        return Err(format!("entry {id}: no fields"));
    };
    let (mut single, mut run, mut count, mut time) = (None, None, None, 0);
    for pair in fields.chunks(2) {
        let [Value::Bulk(Some(name)), Value::Bulk(Some(value))] = pair else { continue };
        let number = || std::str::from_utf8(value).ok().and_then(|t| t.parse::<u64>().ok());
        match &name[..] {
            b"p" => single = Some(value),
            b"r" => run = Some(value),
            b"n" => count = number(),
            b"t" => time = number().unwrap_or(0),
            _ => {}
        }
    }
    match (single, run, count) {
        (Some(payload), None, _) => out.push((last, time, Bytes::from(payload.clone()))),
        (None, Some(run), Some(count)) if count >= 1 && count <= last => {
            let run = Bytes::from(run.clone());
            let mut at = 0;
            for offset in last + 1 - count..=last {
                let length = run
                    .get(at..at + 4)
                    .and_then(|l| <[u8; 4]>::try_from(l).ok())
                    .map(u32::from_be_bytes)
                    .ok_or_else(|| format!("entry {id}: a run shorter than its count"))?;
                let end = (at + 4).checked_add(length as usize).filter(|&end| end <= run.len());
                let end = end.ok_or_else(|| format!("entry {id}: a run cut short"))?;
                out.push((offset, time, run.slice(at + 4..end)));
                at = end;
            }
            if at != run.len() {
                return Err(format!("entry {id}: a run longer than its count"));
            }
        }
        _ => return Err(format!("entry {id}: neither a message nor a run")),
    }
    Ok(())
}

pub(super) fn bulk(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::Bulk(Some(bytes)) => Some(bytes),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_replies_parse() {
        let entry = |offset: &str, payload: &[u8]| {
            Value::Array(Some(vec![
                Value::Bulk(Some(offset.as_bytes().to_vec())),
                Value::Array(Some(vec![
                    Value::Bulk(Some(b"p".to_vec())),
                    Value::Bulk(Some(payload.to_vec())),
                    Value::Bulk(Some(b"t".to_vec())),
                    Value::Bulk(Some(b"1700".to_vec())),
                ])),
            ]))
        };
        let reply = Value::Array(Some(vec![
            Value::Bulk(Some(7u64.to_be_bytes().to_vec())),
            Value::Integer(9),
            Value::Array(Some(vec![entry("0-8", b"eight"), entry("0-9", b"nine")])),
        ]));
        let (epoch, last, entries, read) = parse_sync(reply, 8).unwrap();
        assert_eq!((epoch, last, read), (7, 9, 2));
        assert_eq!(
            entries,
            vec![(8, 1700, Bytes::from_static(b"eight")), (9, 1700, Bytes::from_static(b"nine"))]
        );
        assert!(parse_sync(Value::Integer(1), 0).is_err());
        // An entry with an id that is not fanout's is skipped (a hole), not the connection's end.
        let bad_id = Value::Array(Some(vec![
            Value::Bulk(Some(7u64.to_be_bytes().to_vec())),
            Value::Integer(9),
            Value::Array(Some(vec![entry("1-8", b"x"), entry("0-9", b"nine")])),
        ]));
        let (_, _, entries, read) = parse_sync(bad_id, 0).unwrap();
        assert_eq!((entries, read), (vec![(9, 1700, Bytes::from_static(b"nine"))], 2));
    }

    /// A run is one entry named by its last offset; reads cut it to what they asked for.
    #[test]
    fn a_run_entry_gives_each_of_its_messages_its_offset() {
        let bulk = |b: &[u8]| Value::Bulk(Some(b.to_vec()));
        let run_of = |payloads: &[&[u8]]| {
            let mut run = Vec::new();
            for p in payloads {
                run.extend_from_slice(&(p.len() as u32).to_be_bytes());
                run.extend_from_slice(p);
            }
            run
        };
        let entry = |id: &str, fields: Vec<Value>| {
            Value::Array(Some(vec![bulk(id.as_bytes()), Value::Array(Some(fields))]))
        };
        let stream = |entries: Vec<Value>| Value::Array(Some(entries));
        let run = run_of(&[b"four", b"", b"six"]);
        let entries = || {
            stream(vec![
                entry("0-3", vec![bulk(b"t"), bulk(b"5"), bulk(b"p"), bulk(b"three")]),
                entry(
                    "0-6",
                    vec![bulk(b"t"), bulk(b"6"), bulk(b"n"), bulk(b"3"), bulk(b"r"), bulk(&run)],
                ),
                entry("0-7", vec![bulk(b"p"), bulk(b"seven"), bulk(b"t"), bulk(b"7")]),
            ])
        };
        let offsets = |wanted| {
            let (messages, read) = parse_entries(entries(), wanted).unwrap();
            assert_eq!(read, 3);
            messages.iter().map(|(o, t, p)| (*o, *t, p.clone())).collect::<Vec<_>>()
        };
        let b = |p: &'static [u8]| Bytes::from_static(p);
        assert_eq!(
            offsets(0..=u64::MAX),
            [
                (3, 5, b(b"three")),
                (4, 6, b(b"four")),
                (5, 6, b(b"")),
                (6, 6, b(b"six")),
                (7, 7, b(b"seven"))
            ]
        );
        assert_eq!(offsets(5..=5), [(5, 6, b(b""))], "inside a run, both ends");
        // An entry that does not add up is skipped, never a message made up, and the good
        // entries around it are still read.
        let good = || entry("0-7", vec![bulk(b"p"), bulk(b"seven"), bulk(b"t"), bulk(b"7")]);
        let bad_runs = [
            ("4", run.clone()),
            ("2", run.clone()),
            ("3", run[..run.len() - 1].to_vec()),
            ("0", run.clone()),
            ("9", run.clone()),
        ];
        for (count, run) in bad_runs {
            let fields = vec![bulk(b"n"), bulk(count.as_bytes()), bulk(b"r"), bulk(&run)];
            let bad = stream(vec![entry("0-6", fields), good()]);
            let (messages, read) = parse_entries(bad, 0..=u64::MAX).unwrap();
            assert_eq!(read, 2);
            assert_eq!(messages, [(7, 7, b(b"seven"))], "count {count}");
        }
        let neither = stream(vec![entry("0-6", vec![bulk(b"t"), bulk(b"1")]), good()]);
        assert_eq!(parse_entries(neither, 0..=u64::MAX).unwrap().0, [(7, 7, b(b"seven"))]);
        let foreign = stream(vec![entry("1700000000000-0", vec![bulk(b"p"), bulk(b"x")]), good()]);
        assert_eq!(parse_entries(foreign, 0..=u64::MAX).unwrap().0, [(7, 7, b(b"seven"))]);
        assert!(parse_entries(Value::Integer(3), 0..=u64::MAX).is_err(), "not entries at all");
    }

    #[test]
    fn scripts_are_named_by_their_sha1() {
        let script = Script::new("return 1");
        assert_eq!(script.sha, "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
    }
}
