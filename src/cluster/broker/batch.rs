//! A turn's publishes to one server (one slot of a Redis Cluster) as one call of the publish
//! script, and what its answer means for each publish, as plain data.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::cluster::mirror::Acked;
use crate::cluster::PublishOp;
use crate::protocol::resp::Value;

/// Publishes sent as one script call, at most (and about this many payload bytes).
pub(super) const BATCH_MESSAGES: usize = 1024;
pub(super) const BATCH_BYTES: usize = 1 << 20;

/// A channel's run in one script call is at most this many messages (and about this many bytes):
/// the run is one stream entry, and a resume reads entries by count, so an entry stays small.
/// A longer run is cut into several, one after the other in the same call.
pub(super) const RUN_MESSAGES: usize = 64;
pub(super) const RUN_BYTES: usize = 64 << 10;

/// Publishes for one script call: the channels' runs in the order first met (a channel appears
/// again for each `RUN_MESSAGES`), and the publishes in the order they came, each with its
/// run's index.
#[derive(Default)]
pub(super) struct PublishBatch {
    pub channels: Vec<Bytes>,
    /// Channel name -> its index in `channels`.
    index: HashMap<Bytes, usize>,
    /// Per channel, its publishes' indexes in `ops`, in order.
    pub members: Vec<Vec<usize>>,
    pub ops: Vec<(usize, PublishOp)>,
    pub bytes: usize,
    /// Per run, its payload bytes.
    run_bytes: Vec<usize>,
    /// Per channel, whether the script refreshes its keys' expiry (decided when first sent:
    /// `Expiries`).
    pub refresh: Vec<bool>,
    /// The `Expiries` period those were decided in.
    pub refresh_period: u64,
}

impl PublishBatch {
    pub fn add(&mut self, op: PublishOp) {
        let current = self.index.get(&op.channel).copied();
        let c = match current {
            Some(c) if self.members[c].len() < RUN_MESSAGES && self.run_bytes[c] < RUN_BYTES => c,
            _ => {
                self.channels.push(op.channel.clone());
                self.members.push(Vec::new());
                self.run_bytes.push(0);
                let c = self.channels.len() - 1;
                self.index.insert(op.channel.clone(), c);
                c
            }
        };
        self.run_bytes[c] += op.payload.len();
        self.bytes += op.payload.len();
        self.members[c].push(self.ops.len());
        self.ops.push((c, op));
    }
}

/// Which channels' keys the publish script refreshes the expiry of. An EXPIRE per key per call
/// was a third of the script's Redis calls over many channels; instead a channel's keys are
/// refreshed by its first publish in each period (an eighth of the lifetime), to the lifetime
/// plus a period: keys still live at least the lifetime after the last publish (at most a
/// period more). The script also sets an expiry whenever it creates a channel's keys (Redis
/// restarted empty, or keys expired), whatever this says.
pub(super) struct Expiries {
    ttl: Duration,
    period: Duration,
    period_began: Option<Instant>,
    /// Periods begun so far: a refresh confirmed in a later period than it was asked in says
    /// nothing about this one.
    periods: u64,
    refreshed: HashSet<Bytes>,
}

/// Channels remembered per period at most; past it the period starts over (more refreshes,
/// bounded memory).
const MAX_REMEMBERED: usize = 1 << 20;

impl Expiries {
    pub fn new(ttl: Duration) -> Self {
        let period = (ttl / 8).max(Duration::from_millis(1));
        Expiries { ttl, period, period_began: None, periods: 0, refreshed: HashSet::new() }
    }

    /// Whether a publish to `channel` now asks the script to refresh its keys' expiry: until
    /// a refresh in this period was confirmed (`refreshed`), every call asks (a refused or
    /// failed call, or an inbox nobody held, refreshed nothing).
    pub fn due(&mut self, channel: &Bytes, now: Instant) -> bool {
        let over = self.period_began.is_none_or(|began| now.duration_since(began) >= self.period);
        if over || self.refreshed.len() >= MAX_REMEMBERED {
            self.refreshed.clear();
            self.period_began = Some(now);
            self.periods += 1;
        }
        !self.refreshed.contains(channel)
    }

    /// The period the last `due` was answered in.
    pub fn period(&self) -> u64 {
        self.periods
    }

    /// The script ran `channel`'s run with a refresh asked for in `period`: none is due again
    /// this period (if it still is that one).
    pub fn refreshed(&mut self, channel: &Bytes, period: u64) {
        if period == self.periods {
            self.refreshed.insert(channel.clone());
        }
    }

    /// The expiry a refresh sets, in milliseconds.
    pub fn ttl_ms(&self) -> u64 {
        (self.ttl + self.period).as_millis().try_into().unwrap_or(u64::MAX)
    }

    /// Refreshes every channel again (a server went away: a refresh in a refused call was lost).
    pub fn forget(&mut self) {
        self.refreshed.clear();
    }
}

/// The latest place Redis acknowledged through this node, per channel this node does not
/// mirror (no subscriber here): the publish script's fence compares Redis with it as with a
/// mirror's, so a Redis restored from an older snapshot is caught by the next publish through
/// this node even when nobody here subscribes (it would otherwise give the same offsets out
/// again in the same epoch). At most `MAX_REMEMBERED` channels; past that it starts over.
#[derive(Default)]
pub(super) struct AckedUnserved {
    places: HashMap<Bytes, (u64, u64)>,
}

impl AckedUnserved {
    /// Redis acknowledged `offset` of `channel` in `epoch` (a newer epoch replaces an older one).
    pub fn note(&mut self, channel: &Bytes, epoch: u64, offset: u64) {
        if self.places.len() >= MAX_REMEMBERED && !self.places.contains_key(channel) {
            self.places.clear();
        }
        let place = self.places.entry(channel.clone()).or_insert((epoch, offset));
        if place.0 != epoch {
            *place = (epoch, offset);
        } else {
            place.1 = place.1.max(offset);
        }
    }

    pub fn get(&self, channel: &[u8]) -> Option<(u64, u64)> {
        self.places.get(channel).copied()
    }
}

/// The publish script's answer to a batch: per channel, the offset it gave the channel's first
/// message (`None`: an inbox whose name nobody holds, so nothing was published) and its epoch.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct BatchAnswer {
    pub firsts: Vec<Option<u64>>,
    pub epochs: Vec<Option<u64>>,
}

impl PublishBatch {
    /// Reads the script's reply (`{firsts, epochs}`); anything else is handed back.
    pub fn answer(&self, reply: Value) -> Result<BatchAnswer, Value> {
        let channels = self.channels.len();
        let shaped = matches!(&reply, Value::Array(Some(parts)) if parts.len() == 2
            && matches!(&parts[0], Value::Array(Some(f)) if f.len() == channels));
        if !shaped {
            return Err(reply);
        }
        let Value::Array(Some(mut parts)) = reply else { return Err(reply) };
        let epochs = match parts.pop() {
            Some(Value::Array(Some(epochs))) => epochs,
            _ => Vec::new(),
        };
        let Some(Value::Array(Some(firsts))) = parts.pop() else {
            return Err(Value::Array(Some(parts)));
        };
        let firsts = firsts
            .iter()
            .map(|first| match first {
                Value::Integer(first) if *first > 0 => Some(*first as u64),
                _ => None,
            })
            .collect();
        let epochs = (0..channels)
            .map(|c| match epochs.get(c) {
                Some(Value::Bulk(Some(e))) => {
                    <[u8; 8]>::try_from(e.as_slice()).ok().map(u64::from_be_bytes)
                }
                _ => None,
            })
            .collect();
        Ok(BatchAnswer { firsts, epochs })
    }

    /// Each publish's offset, in the order they came (`None`: nobody holds the inbox's name).
    pub fn offsets(&self, answer: &BatchAnswer) -> Vec<Option<u64>> {
        let mut next = answer.firsts.clone();
        self.ops
            .iter()
            .map(|(c, _)| {
                let offset = next[*c]?;
                next[*c] = Some(offset + 1);
                Some(offset)
            })
            .collect()
    }

    /// Channel `c`'s acknowledged places (epoch, offset, message): only what a client was
    /// acknowledged (fire-and-forget publishes promise nothing); `None` when there is none.
    pub fn acked(&self, c: usize, answer: &BatchAnswer) -> Option<Vec<Acked>> {
        let (first, epoch) = (answer.firsts[c]?, answer.epochs.get(c).copied().flatten()?);
        let members = &self.members[c];
        if !members.iter().any(|&op| self.ops[op].1.acked) {
            return None;
        }
        let places = members
            .iter()
            .enumerate()
            .filter(|(_, &op)| self.ops[op].1.acked)
            .map(|(k, &op)| Acked {
                epoch,
                offset: first + k as u64,
                payload: self.ops[op].1.payload.clone(),
            })
            .collect();
        Some(places)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::disk::ReplyTo;

    fn op(channel: &'static [u8], payload: &'static [u8], acked: bool) -> PublishOp {
        PublishOp {
            channel: Bytes::from_static(channel),
            payload: Bytes::from_static(payload),
            reply_to: ReplyTo { worker: 0, key: 1, serial: 1 },
            acked,
            asked_ns: 0,
            seq: 0,
        }
    }

    #[test]
    fn a_channels_expiry_is_refreshed_once_per_period_and_again_after_a_loss() {
        let mut expiries = Expiries::new(Duration::from_secs(80));
        assert_eq!(expiries.ttl_ms(), 90_000, "the lifetime plus a period");
        let start = Instant::now();
        let (a, b) = (Bytes::from_static(b"a"), Bytes::from_static(b"b"));
        let refresh = |expiries: &mut Expiries, channel: &Bytes, secs| {
            let due = expiries.due(channel, start + Duration::from_secs(secs));
            if due {
                expiries.refreshed(channel, expiries.period());
            }
            due
        };
        assert!(refresh(&mut expiries, &a, 0));
        assert!(!refresh(&mut expiries, &a, 9));
        assert!(refresh(&mut expiries, &b, 9));
        assert!(refresh(&mut expiries, &a, 10), "a new period");
        assert!(!refresh(&mut expiries, &a, 11), "a was refreshed in it");
        assert!(refresh(&mut expiries, &b, 11), "b in the one before");
        expiries.forget();
        assert!(refresh(&mut expiries, &a, 12), "after a loss");
        // Asked for but not confirmed (the call was refused, or failed): asked again.
        assert!(expiries.due(&b, start + Duration::from_secs(20)));
        assert!(expiries.due(&b, start + Duration::from_secs(21)), "nothing confirmed it");
        // Confirmed only after the period it was asked in ended: asked again in this one.
        let asked_in = expiries.period();
        assert!(expiries.due(&b, start + Duration::from_secs(30)));
        expiries.refreshed(&b, asked_in);
        assert!(expiries.due(&b, start + Duration::from_secs(31)));
        // Every refresh lasts past a period: a publish just before a period ends keeps its
        // keys at least the lifetime after it.
        assert!(
            expiries.ttl_ms() as u128 >= (Duration::from_secs(80) + expiries.period).as_millis()
        );
    }

    #[test]
    fn a_long_run_is_cut_into_runs_that_take_consecutive_offsets() {
        let mut batch = PublishBatch::default();
        for _ in 0..RUN_MESSAGES + 1 {
            batch.add(op(b"hot", b"m", true));
        }
        batch.add(op(b"cold", b"c", true));
        batch.add(op(b"hot", b"m", true));
        assert_eq!(batch.channels, [&b"hot"[..], b"hot", b"cold"]);
        assert_eq!(batch.members.iter().map(Vec::len).collect::<Vec<_>>(), [RUN_MESSAGES, 2, 1]);
        // The script gives each run its first offset in call order: 1, 65, and cold's 1.
        let epoch = Value::Bulk(Some(9u64.to_be_bytes().to_vec()));
        let reply = Value::Array(Some(vec![
            Value::Array(Some(vec![Value::Integer(1), Value::Integer(65), Value::Integer(1)])),
            Value::Array(Some(vec![epoch.clone(), epoch.clone(), epoch])),
        ]));
        let offsets: Vec<u64> =
            batch.offsets(&batch.answer(reply).unwrap()).into_iter().flatten().collect();
        let hot: Vec<u64> =
            (1..=RUN_MESSAGES as u64 + 1).chain([1, RUN_MESSAGES as u64 + 2]).collect();
        assert_eq!(offsets, hot);
        // And by bytes: a big payload closes its run.
        let mut batch = PublishBatch::default();
        let big: &'static [u8] = Box::leak(vec![0u8; RUN_BYTES].into_boxed_slice());
        batch.add(op(b"hot", big, true));
        batch.add(op(b"hot", b"after", true));
        assert_eq!(batch.channels.len(), 2);
    }

    #[test]
    fn an_answer_gives_each_publish_its_offset_in_the_order_they_came() {
        let mut batch = PublishBatch::default();
        for op in [
            op(b"a", b"1", true),
            op(b"b", b"2", false),
            op(b"a", b"3", false),
            op(b"@x", b"4", true),
            op(b"a", b"5", true),
        ] {
            batch.add(op);
        }
        assert_eq!(batch.channels, [&b"a"[..], b"b", b"@x"]);
        let epoch = |e: u64| Value::Bulk(Some(e.to_be_bytes().to_vec()));
        let reply = Value::Array(Some(vec![
            Value::Array(Some(vec![Value::Integer(10), Value::Integer(4), Value::Integer(-1)])),
            Value::Array(Some(vec![epoch(7), epoch(8), Value::Bulk(Some(Vec::new()))])),
        ]));
        let answer = batch.answer(reply).unwrap();
        assert_eq!(batch.offsets(&answer), [Some(10), Some(4), Some(11), None, Some(12)]);
        let places: Vec<(u64, u64)> =
            batch.acked(0, &answer).unwrap().iter().map(|a| (a.epoch, a.offset)).collect();
        assert_eq!(places, [(7, 10), (7, 12)], "only what was acknowledged");
        assert!(batch.acked(1, &answer).is_none(), "fire-and-forget: nothing remembered");
        assert!(batch.acked(2, &answer).is_none(), "nothing published");
        assert!(batch.answer(Value::Error("NOSCRIPT".into())).is_err());
        let short = Value::Array(Some(vec![
            Value::Array(Some(vec![Value::Integer(1)])),
            Value::Array(Some(vec![])),
        ]));
        assert!(batch.answer(short).is_err(), "one first offset per channel or it is no answer");
    }
}
