//! What the broker sends for the workers and what it answers them: a turn's publishes as one
//! script call per server (`batch`), answers in each connection's publish order (`answers`),
//! refusals, name leases (`names`), and a resume's read of the stream.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::protocol::resp;

use super::*;

impl BrokerThread {
    /// Refuses every publish of a batch.
    pub(super) fn refuse_batch(&self, batch: &PublishBatch, why: Arc<str>) {
        for (_, op) in &batch.ops {
            self.refuse(op, why.clone());
        }
    }

    /// Refuses a publish (which is then no longer in flight).
    pub(super) fn refuse(&self, op: &PublishOp, why: Arc<str>) {
        let counters = &self.broker().counters;
        counters.publishes_refused.fetch_add(1, Ordering::Relaxed);
        self.refuse_with(op, ErrorCode::Unavailable, why);
    }

    pub(super) fn refuse_with(&self, op: &PublishOp, code: ErrorCode, why: Arc<str>) {
        self.broker().counters.publishes_in_flight.fetch_sub(1, Ordering::Relaxed);
        self.answer(op, 0, Err((code, why)));
    }

    /// Sends an acknowledgement or a refusal to the publishing connection's worker.
    /// Answers publish `op` (in its connection's publish order: `AnswerOrder`).
    pub(super) fn answer(
        &self,
        op: &PublishOp,
        offset: u64,
        result: Result<(), (ErrorCode, Arc<str>)>,
    ) {
        let target = op.reply_to;
        let asked_ns = op.asked_ns;
        let outcome =
            PublishOutcome { target, channel: op.channel.clone(), offset, result, asked_ns };
        self.send_answers(target, op.seq, Some(outcome));
    }

    /// Publish `op` went through and needs no answer (it was not acknowledged): answers that
    /// waited behind it go out.
    pub(super) fn answered_quietly(&self, op: &PublishOp) {
        self.send_answers(op.reply_to, op.seq, None);
    }

    pub(super) fn send_answers(&self, target: ReplyTo, seq: u64, answer: Option<PublishOutcome>) {
        let mut answers = self.answers.borrow_mut();
        answers.settle(target, seq, answer, |outcome| {
            self.tell(target.worker, Answer::Published(outcome))
        });
    }

    /// Sends `batch` as one call of the publish script (EVALSHA, or EVAL with the body after
    /// NOSCRIPT), written straight into the link's buffer: no key, count or argument list is
    /// gathered first, so what the node does per message is copy its payload once.
    pub(super) fn send_publish(&mut self, i: usize, mut batch: PublishBatch, eval: bool) {
        let now = Instant::now();
        if batch.refresh.is_empty() {
            // Decided once per batch: a NOSCRIPT retry asks for the same refreshes.
            let expiries = &mut self.expiries;
            batch.refresh = batch.channels.iter().map(|c| expiries.due(c, now)).collect();
            batch.refresh_period = expiries.period();
        }
        let config = &self.server.broker().config;
        let prefix = config.key_prefix.as_bytes();
        // What this node mirrors of each channel, for the script's fence against a rollback.
        let mut topic = Vec::new();
        let known: Vec<Option<(u64, u64)>> = batch
            .channels
            .iter()
            .map(|channel| {
                Keys::write_topic(&config.key_prefix, channel, &mut topic);
                let mirrored = self
                    .tracked
                    .get(&topic[..])
                    .and_then(|tracked| tracked.mirror.known(&*tracked.channel.lock_log()));
                mirrored.or_else(|| self.acked_unserved.get(channel))
            })
            .collect();
        // A channel's new epoch (none yet, or fenced) is greater than what this node mirrors.
        let epoch =
            crate::cluster::epoch_after(known.iter().flatten().map(|&(e, _)| e)).to_be_bytes();
        let inbox = |channel: &Bytes| channel.first() == Some(&b'@');
        let keys = 2 * batch.channels.len() + batch.channels.iter().filter(|c| inbox(c)).count();
        let args = 3 + keys + 6 + 5 * batch.channels.len() + batch.ops.len();
        let keep = self.server.history_messages() as u64;
        let ttl = self.expiries.ttl_ms();
        let publish = self.verbs().publish;
        let Some(link) = self.shards[i].commands.as_mut() else {
            // Every publish is answered (its connection's later answers wait for it).
            let why: Arc<str> =
                "broker unavailable: Redis is unreachable; nothing was published".into();
            return self.refuse_batch(&batch, why);
        };
        let (verb, script): (&[u8], &[u8]) = match eval {
            true => (b"EVAL", self.publish.body.as_bytes()),
            false => (b"EVALSHA", self.publish.sha.as_bytes()),
        };
        let key = |out: &mut BytesMut, channel: &[u8], suffix: &[u8]| {
            resp::put_bulk_of(out, &[prefix, b":{", channel, suffix]);
        };
        link.command_with(|out| {
            resp::put_array_header(out, args);
            resp::put_bulk_of(out, &[verb]);
            resp::put_bulk_of(out, &[script]);
            resp::put_bulk_decimal(out, keys as u64);
            // Per channel: its keys (an inbox takes messages only while someone holds its
            // name: the lease beside it).
            for channel in &batch.channels {
                key(out, channel, b"}:meta");
                key(out, channel, b"}:log");
                if inbox(channel) {
                    key(out, channel, b"}:name");
                }
            }
            resp::put_bulk_decimal(out, batch.channels.len() as u64);
            resp::put_bulk_of(out, &[&epoch]);
            resp::put_bulk_decimal(out, keep);
            resp::put_bulk_decimal(out, ttl);
            resp::put_bulk_decimal(out, now_ms());
            resp::put_bulk_of(out, &[publish]);
            for (c, channel) in batch.channels.iter().enumerate() {
                key(out, channel, b"}");
                let flags = u64::from(inbox(channel)) | u64::from(batch.refresh[c]) << 1;
                resp::put_bulk_decimal(out, flags);
                match known[c] {
                    Some((epoch, last)) => {
                        resp::put_bulk_of(out, &[&epoch.to_be_bytes()]);
                        resp::put_bulk_decimal(out, last);
                    }
                    None => {
                        resp::put_bulk_of(out, &[&[0; 8]]);
                        resp::put_bulk_decimal(out, 0);
                    }
                }
                resp::put_bulk_decimal(out, batch.members[c].len() as u64);
                for &k in &batch.members[c] {
                    resp::put_bulk_of(out, &[&batch.ops[k].1.payload]);
                }
            }
        });
        self.shards[i].pending.push_back((now, Pending::Publish(batch)));
    }

    /// Each channel of an answered publish batch that this node mirrors remembers the latest
    /// place Redis acknowledged (epoch, offset, message): Redis giving it out again later, or
    /// coming back without it, is then a rollback even if this node's log never held it.
    pub(super) fn remember_acked(&mut self, batch: &PublishBatch, answer: &BatchAnswer) {
        let server = self.server.clone();
        let prefix = &server.broker().config.key_prefix;
        let mut topic = Vec::new();
        for (c, channel) in batch.channels.iter().enumerate() {
            // Fire-and-forget publishes cost nothing here, not even the channel's lookup.
            let Some(acked) = batch.acked(c, answer) else { continue };
            Keys::write_topic(prefix, channel, &mut topic);
            let Some(tracked) = self.tracked.get_mut(&topic[..]) else {
                // Not mirrored here (no subscriber on this node): still the fence's evidence.
                if let Some(place) = acked.last() {
                    self.acked_unserved.note(channel, place.epoch, place.offset);
                }
                continue;
            };
            let outcome = {
                let log = tracked.channel.lock_log();
                tracked.mirror.published(&*log, acked)
            };
            self.apply(&Bytes::copy_from_slice(&topic), outcome);
        }
    }

    /// The key of a name's lease: beside its inbox's keys (the same hash tag and server).
    pub(super) fn lease_key(&self, name: &[u8]) -> Vec<u8> {
        let inbox = [&b"@"[..], name].concat();
        [&Keys::new(&self.config().key_prefix, &inbox).topic[..], b":name"].concat()
    }

    pub(super) fn shard_of_name(&self, name: &[u8]) -> Option<usize> {
        self.shard_of(&[&b"@"[..], name].concat())
    }

    /// Claims `name` for a connection: a lease in Redis (SET NX PX) that this node refreshes
    /// while the connection holds the name, so that the name is unique across nodes and comes
    /// free when a node dies.
    pub(super) fn claim(&mut self, name: Bytes, reply_to: ReplyTo) {
        let ready = self.shard_of_name(&name).filter(|&i| self.shards[i].is_ready());
        let Some(i) = ready else {
            let why = "broker unavailable: Redis is unreachable; the name cannot be claimed";
            self.tell(
                reply_to.worker,
                Answer::NameClaim {
                    target: reply_to,
                    name,
                    result: Err((ErrorCode::Unavailable, why.into())),
                },
            );
            return;
        };
        let key = self.lease_key(&name);
        let lease = self.config().name_lease.as_millis().max(1).to_string();
        let node_id = self.node_id.clone();
        let Some(link) = self.shards[i].commands.as_mut() else {
            let why = "broker unavailable: Redis is unreachable; the name cannot be claimed";
            let result = Err((ErrorCode::Unavailable, why.into()));
            return self
                .tell(reply_to.worker, Answer::NameClaim { target: reply_to, name, result });
        };
        link.command(&[b"SET", &key[..], &node_id, b"NX", b"PX", lease.as_bytes()]);
        self.shards[i].pending.push_back((Instant::now(), Pending::Claim { name, reply_to }));
    }

    /// A connection let go of `name`: give the lease back (if Redis is unreachable, it
    /// expires by itself).
    pub(super) fn release_name(&mut self, name: Bytes) {
        if !self.leases.release(&name) {
            return;
        }
        let Some(i) = self.shard_of_name(&name).filter(|&i| self.shards[i].is_ready()) else {
            return;
        };
        let key = self.lease_key(&name);
        let (sha, node_id) = (self.release.sha.clone(), self.node_id.clone());
        let Some(link) = self.shards[i].commands.as_mut() else { return };
        link.command(&[b"EVALSHA", sha.as_bytes(), b"1", &key, &node_id]);
        self.shards[i].pending.push_back((Instant::now(), Pending::Release));
    }

    /// Extends every lease this node holds (a third of the lease time apart).
    pub(super) fn refresh_leases(&mut self) {
        let lease = self.config().name_lease.as_millis().max(1).to_string();
        let names: Vec<Bytes> = self.leases.names().cloned().collect();
        for name in names {
            let Some(i) = self.shard_of_name(&name).filter(|&i| self.shards[i].is_ready()) else {
                continue;
            };
            let key = self.lease_key(&name);
            let (sha, node_id) = (self.refresh.sha.clone(), self.node_id.clone());
            let Some(link) = self.shards[i].commands.as_mut() else { continue };
            link.command(&[b"EVALSHA", sha.as_bytes(), b"1", &key, &node_id, lease.as_bytes()]);
            self.shards[i].pending.push_back((Instant::now(), Pending::Refresh { name }));
        }
    }

    /// Reads a channel's stream after `after` up to `upto` for a resume that memory no longer
    /// covers; refused (the resume is tried again) when Redis cannot be asked.
    pub(super) fn backfill(&mut self, channel: &[u8], after: u64, upto: u64, reply_to: ReplyTo) {
        if upto <= after {
            self.tell(
                reply_to.worker,
                Answer::Backfill { target: reply_to, entries: Ok(Vec::new()) },
            );
            return;
        }
        let unavailable =
            |why: &str| Answer::Backfill { target: reply_to, entries: Err(why.into()) };
        let ready = self.shard_of(channel).filter(|&i| self.shards[i].is_ready());
        let Some(i) = ready else {
            let why = "broker unavailable: Redis is unreachable; the stream cannot be read now";
            return self.tell(reply_to.worker, unavailable(why));
        };
        let log = Keys::new(&self.config().key_prefix, channel).log();
        // The stream's length is the publishers' setting, not ours: bounded here only so that
        // one answer stays a sane size. The newest messages are read (those right before the
        // node's memory), so that the replay has no hole in it: a longer gap is told `expired`
        // at its start, by the resume's HIST. By offsets, not entries (an entry may be a run):
        // up to the entry that holds `upto`, which ends at most a run's length after it (its
        // messages past `upto` are left out).
        let after = after.max(upto.saturating_sub(MAX_BACKFILL));
        let (from, to) = (format!("(0-{after}"), format!("0-{}", upto + RUN_MESSAGES as u64 - 1));
        let Some(link) = self.shards[i].commands.as_mut() else {
            return self
                .tell(reply_to.worker, unavailable("broker unavailable: Redis is unreachable"));
        };
        link.command(&[b"XRANGE", &log, from.as_bytes(), to.as_bytes()]);
        let pending = Pending::Backfill { reply_to, after, upto };
        self.shards[i].pending.push_back((Instant::now(), pending));
    }
}
