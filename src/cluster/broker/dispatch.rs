//! What Redis sends, dispatched: each reply to the command it answers (in the order sent, per
//! connection), and each push of the pub/sub connection (messages, subscription confirmations,
//! slot moves). The broker's loop (`mod.rs`) reads them off the links and calls in here.

use super::*;

impl BrokerThread {
    pub(super) fn on_reply(&mut self, i: usize, reply: Value) {
        let Some((sent, pending)) = self.shards[i].pending.pop_front() else {
            self.shard_down(i, "a reply to no command");
            return;
        };
        match pending {
            Pending::Setup(what) => {
                if let Value::Error(e) = reply {
                    self.shard_down(i, &format!("{what} failed: {e}"));
                    return;
                }
                self.shards[i].setup_left -= 1;
                if self.shards[i].setup_left == 0 {
                    self.shard_ready(i);
                }
            }
            Pending::Probe => {}
            Pending::Identify => {
                self.identified(i, run_id_of(&reply));
                self.shards[i].setup_left -= 1;
                if self.shards[i].setup_left == 0 {
                    self.shard_ready(i);
                }
            }
            Pending::Backfill { reply_to, after, upto } => {
                let entries = parse_entries(reply, after + 1..=upto)
                    .map(|(entries, _)| {
                        let retained = |(offset, published_ms, payload)| Retained {
                            offset,
                            published_ms,
                            payload,
                        };
                        entries.into_iter().map(retained).collect()
                    })
                    .map_err(|e| {
                        warn!("cluster: a resume could not read the stream: {e}");
                        Arc::from(format!("broker unavailable: the stream could not be read ({e})"))
                    });
                self.tell(reply_to.worker, Answer::Backfill { target: reply_to, entries });
            }
            Pending::Check { topic, epoch, last } => {
                let (redis_epoch, latest) = match reply {
                    Value::Array(Some(fields)) if fields.len() == 2 => {
                        let mut fields = fields.into_iter();
                        let epoch = fields
                            .next()
                            .and_then(bulk)
                            .and_then(|e| Some(u64::from_be_bytes(e.as_slice().try_into().ok()?)));
                        let latest = fields
                            .next()
                            .and_then(bulk)
                            .and_then(|n| std::str::from_utf8(&n).ok()?.parse::<u64>().ok());
                        (epoch, latest)
                    }
                    _ => (None, None),
                };
                let Some(tracked) = self.tracked.get_mut(&topic) else { return };
                let (outcome, behind) = {
                    let log = tracked.channel.lock_log();
                    tracked.mirror.checked(&*log, (epoch, last), (redis_epoch, latest))
                };
                tracked.behind = behind;
                self.apply(&topic, outcome);
            }
            Pending::Claim { name, reply_to } => {
                let reply = match reply {
                    Value::Simple(ok) if ok == "OK" => ClaimReply::Granted,
                    Value::Bulk(None) | Value::Null => ClaimReply::Taken,
                    other => ClaimReply::Failed(format!("{other:?}")),
                };
                let result = self.leases.claimed(name.clone(), reply_to, reply);
                self.tell(reply_to.worker, Answer::NameClaim { target: reply_to, name, result });
            }
            Pending::Refresh { name } => {
                let still_ours = reply != Value::Integer(0);
                if let Some(holder) = self.leases.refreshed(&name, still_ours) {
                    self.broker().counters.leases_lost.fetch_add(1, Ordering::Relaxed);
                    warn!(
                        "cluster: the lease on name {} went to another node (Redis lost it, or it expired during an outage); its client here is told",
                        String::from_utf8_lossy(&name)
                    );
                    self.tell(holder.worker, Answer::NameLost { target: holder, name });
                }
            }
            Pending::PresenceUpdate { channel, mode, args } => {
                self.presence_updated(i, channel, mode, args, reply)
            }
            Pending::Release | Pending::Answered => {
                if let Value::Error(e) = reply {
                    warn!("cluster: Redis refused a presence or control command: {e}");
                }
            }
            Pending::PresenceQuery { channel, stats_only, format, reply_to, args } => {
                match self.presence_query_retry(i, &reply, args) {
                    Some(args) => {
                        let pending =
                            Pending::PresenceQuery { channel, stats_only, format, reply_to, args };
                        self.shards[i].pending.push_back((Instant::now(), pending));
                    }
                    None => self.presence_answered(channel, stats_only, format, reply_to, reply),
                }
            }
            pending @ (Pending::Control { .. } | Pending::Survey { .. }) => {
                self.control_sent(pending, reply)
            }
            Pending::Publish(batch) => {
                let counters = &self.broker().counters;
                match batch.answer(reply) {
                    Ok(answer) => {
                        let count = batch.ops.len() as u64;
                        counters.publishes_in_flight.fetch_sub(count, Ordering::Relaxed);
                        let round_trip = sent.elapsed();
                        counters.round_trip.observe(round_trip.as_nanos() as u64, 1);
                        let micros = round_trip.as_micros() as u64;
                        counters.publishes_done.fetch_add(count, Ordering::Relaxed);
                        counters
                            .round_trip_micros_total
                            .fetch_add(micros * count, Ordering::Relaxed);
                        counters.round_trip_micros_max.fetch_max(micros, Ordering::Relaxed);
                        // Acknowledgements go out in the order the publishes came.
                        for ((_, op), offset) in batch.ops.iter().zip(batch.offsets(&answer)) {
                            match offset {
                                Some(offset) if op.acked => self.answer(op, offset, Ok(())),
                                Some(_) => self.answered_quietly(op),
                                None => {
                                    let who =
                                        String::from_utf8_lossy(&op.channel[1..]).into_owned();
                                    let why = format!("no client named {who}");
                                    counters.publishes_done.fetch_sub(1, Ordering::Relaxed);
                                    self.answer(op, 0, Err((ErrorCode::NotFound, why.into())));
                                }
                            }
                        }
                        self.remember_acked(&batch, &answer);
                        for (c, channel) in batch.channels.iter().enumerate() {
                            if batch.refresh[c] && answer.firsts[c].is_some() {
                                self.expiries.refreshed(channel, batch.refresh_period);
                            }
                        }
                    }
                    // The script cache was flushed (SCRIPT FLUSH, a failover): send the body.
                    Err(Value::Error(e)) if e.starts_with("NOSCRIPT") => {
                        self.send_publish(i, batch, true)
                    }
                    Err(Value::Error(e)) if e.starts_with("MOVED") || e.starts_with("ASK") => {
                        self.slot_moved(&e);
                        let why: Arc<str> = "broker unavailable: the Redis Cluster moved this channel's slot; publish again".into();
                        self.refuse_batch(&batch, why);
                    }
                    Err(other) => {
                        warn!("cluster: the publish script failed: {other:?}");
                        let why: Arc<str> = format!("broker refused the publish: {other:?}").into();
                        self.refuse_batch(&batch, why);
                    }
                }
            }
            Pending::Sync { topic, after, ending } => match reply {
                Value::Error(e) if e.starts_with("NOSCRIPT") => {
                    self.send_sync_ending(i, topic, after, ending, true)
                }
                Value::Error(e) if e.starts_with("MOVED") || e.starts_with("ASK") => {
                    tracked_resubscribe(&mut self.tracked, &topic);
                    self.slot_moved(&e);
                }
                reply => match parse_sync(reply, after) {
                    Ok(synced) => self.synced(topic, after, synced),
                    // One channel's keys in a state the script cannot read (a meta key that
                    // is not a hash, a malformed epoch): that channel waits and its sync is
                    // tried again each sweep; the connection and every other channel go on.
                    Err(e) => {
                        warn!(
                            "cluster: cannot sync {}: {e}; trying again in a second",
                            String::from_utf8_lossy(&topic)
                        );
                        self.broker().counters.sync_failures.fetch_add(1, Ordering::Relaxed);
                        self.sync_retry.push((topic, after, ending));
                    }
                },
            },
        }
    }

    pub(super) fn on_push(&mut self, i: usize, push: Value) {
        let parts = match push {
            Value::Array(Some(parts)) | Value::Push(parts) => parts,
            // A sharded subscribe sent to a master that no longer owns the slot: read the slot
            // map again (channels still subscribing are asked again there).
            Value::Error(e) if e.starts_with("MOVED") || e.starts_with("ASK") => {
                return self.slot_moved(&e);
            }
            Value::Error(e) => return self.shard_down(i, &format!("pub/sub: {e}")),
            // AUTH's +OK.
            _ => return,
        };
        let mut parts = parts.into_iter();
        let (Some(kind), Some(topic)) = (parts.next().and_then(bulk), parts.next().and_then(bulk))
        else {
            return;
        };
        let topic = Bytes::from(topic);
        if topic == self.shards[i].probe_topic {
            if matches!(&kind[..], b"message" | b"smessage") {
                self.shards[i].probe_sent = None;
            }
            return;
        }
        match &kind[..] {
            b"message" | b"smessage" | b"pmessage" => {
                self.broker().counters.messages_received.fetch_add(1, Ordering::Relaxed);
                // pmessage: pattern, channel, envelope.
                let topic = match &kind[..] {
                    b"pmessage" => match parts.next().and_then(bulk) {
                        Some(channel) => Bytes::from(channel),
                        None => return,
                    },
                    _ => topic,
                };
                let Some(envelope) = parts.next().and_then(bulk).map(Bytes::from) else { return };
                // Joins, leaves and the API's envelopes count once: from this node's own
                // subscription to the channel (a pattern matching it would bring them twice).
                match envelope.first() {
                    Some(&presence::ENVELOPE_PRESENCE) if &kind[..] != b"pmessage" => {
                        return self.presence_pushed(&topic, envelope);
                    }
                    Some(&presence::ENVELOPE_CONTROL)
                        if &kind[..] != b"pmessage" && self.is_broadcast_topic(&topic) =>
                    {
                        return self.control_pushed(&envelope);
                    }
                    Some(&presence::ENVELOPE_PRESENCE | &presence::ENVELOPE_CONTROL) => return,
                    _ => {}
                }
                let Some(run) = Envelope::decode(envelope) else {
                    warn!("cluster: a message on {topic:?} that is not an envelope");
                    return;
                };
                if !self.tracked.contains_key(&topic) && &kind[..] == b"pmessage" {
                    self.found_through_pattern(i, &topic, run.first().map_or(1, |e| e.offset));
                }
                for envelope in run {
                    let Some(tracked) = self.tracked.get_mut(&topic) else { return };
                    let outcome = {
                        let log = tracked.channel.lock_log();
                        tracked.mirror.pushed(&*log, envelope, now_ms())
                    };
                    if !outcome.dropped_late {
                        tracked.last_heard = Instant::now();
                        tracked.checked = false;
                    }
                    self.apply(&topic, outcome);
                }
            }
            b"subscribe" | b"ssubscribe" => {
                let Some(tracked) = self.tracked.get_mut(&topic) else { return };
                if matches!(tracked.mirror.state, MirrorState::Subscribing) {
                    let outcome = {
                        let log = tracked.channel.lock_log();
                        tracked.mirror.subscribed(&*log)
                    };
                    self.apply(&topic, outcome);
                } else if matches!(tracked.mirror.state, MirrorState::Live)
                    && !tracked.mirror.via_pattern
                {
                    // A channel found through a pattern, now subscribed for a plain subscriber.
                    let mut log = tracked.channel.lock_log();
                    if log.mirror != Mirror::Live {
                        log.mirror = Mirror::Live;
                        self.ring.served = true;
                    }
                }
            }
            b"psubscribe" => self.pattern_confirmed(i, topic),
            // A Redis Cluster moved the slot of a channel still served here (a resharding or a
            // failover): serve it from its new master.
            b"sunsubscribe" if self.tracked.contains_key(&topic) => {
                if let Some(tracked) = self.tracked.get_mut(&topic) {
                    tracked.mirror.resubscribe();
                }
                self.slot_moved("a sharded subscription was ended by the server");
            }
            _ => {}
        }
    }
}

/// The `run_id` field of an `INFO server` reply.
fn run_id_of(reply: &Value) -> Option<String> {
    let Value::Bulk(Some(text)) = reply else { return None };
    let text = std::str::from_utf8(text).ok()?;
    let id = text.lines().find_map(|line| line.strip_prefix("run_id:"))?;
    Some(id.trim().to_string())
}
