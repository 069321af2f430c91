//! The broker's servers: connecting (non-blocking; names resolved on a helper thread),
//! readiness, losing and regaining a server, the liveness probe, a Redis Cluster's slot map
//! applied (`topology`), and backpressure from the ring onto the pub/sub connections.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use log::{debug, info, warn};
use mio::Token;

use super::*;

impl BrokerThread {
    /// Publishes to this node's probe channel through the command connection; the pub/sub
    /// connection must hear it within the command timeout, or it is restarted.
    pub(super) fn probe(&mut self, i: usize, now: Instant) {
        let probe_every = self.config().probe_interval;
        let publish = self.verbs().publish;
        let shard = &mut self.shards[i];
        let Some(commands) = shard.commands.as_mut() else { return };
        commands.command(&[publish, &shard.probe_topic, b"probe"]);
        shard.pending.push_back((now, Pending::Probe));
        shard.probe_sent = Some(now);
        shard.next_probe = now + probe_every;
    }

    /// The server of `channel`: by jump hash over independent servers, or (Redis Cluster) by
    /// the slot map, unknown until it has been read.
    pub(super) fn shard_of(&self, channel: &[u8]) -> Option<usize> {
        match &self.topology {
            None => Some(crate::cluster::shard_of(channel, self.shards.len())),
            Some(topology) => {
                topology.server_of(&Keys::new(&self.config().key_prefix, channel).topic)
            }
        }
    }

    /// The pub/sub commands: sharded ones in a Redis Cluster (each goes to one slot's master,
    /// never broadcast over the cluster bus).
    pub(super) fn verbs(&self) -> Verbs {
        if self.topology.is_some() {
            Verbs { subscribe: b"SSUBSCRIBE", unsubscribe: b"SUNSUBSCRIBE", publish: b"SPUBLISH" }
        } else {
            Verbs { subscribe: b"SUBSCRIBE", unsubscribe: b"UNSUBSCRIBE", publish: b"PUBLISH" }
        }
    }

    /// Redis Cluster: reads the slot map on a helper thread, asking the masters that answer
    /// first, then the seeds, then the rest (a dead master last: never only it), so the broker
    /// never waits on a connect; the map comes back as `BrokerOp::SlotMap`.
    pub(super) fn discover(&mut self) {
        let candidates = Topology::candidates(
            self.shards.iter().filter(|s| s.is_ready()).map(|s| &s.endpoint),
            &self.config().redis,
            self.shards.iter().map(|s| &s.endpoint),
        );
        let server = self.server.clone();
        let tls = self.config().tls.clone();
        let spawned = std::thread::Builder::new().name("fanout-slot-map".into()).spawn(move || {
            let mut why = String::from("no node to ask");
            let mut found = None;
            for seed in candidates {
                match read_slot_map(&seed, tls.as_ref()) {
                    Ok(ranges) if !ranges.is_empty() => {
                        found = Some((seed, ranges));
                        break;
                    }
                    Ok(_) => {
                        why = format!("{seed} has no slots assigned (is the cluster created?)")
                    }
                    Err(e) => why = format!("{seed}: {e}"),
                }
            }
            server.broker().send(BrokerOp::SlotMap(found.ok_or(why)));
        });
        if let Err(e) = spawned {
            if let Some(topology) = self.topology.as_mut() {
                topology.not_started(Instant::now());
            }
            warn!("cluster: cannot start a thread to read the slot map: {e}");
        }
    }

    /// Redis Cluster: server `i` is no master of the map any more (it died and a replica took
    /// over, or it came back as a replica): its connections close, what was in flight on them
    /// is refused, and it is neither counted, probed nor reconnected while the map leaves it out.
    pub(super) fn let_go_of_server(&mut self, i: usize) {
        let registry = self.poll.registry();
        let shard = &mut self.shards[i];
        let was_up = shard.is_ready();
        let was_known = shard.is_connected() || shard.retry_at.is_some();
        for link in [shard.commands.take(), shard.pubsub.take()].into_iter().flatten() {
            let mut link = link;
            link.deregister(registry);
        }
        shard.probe_sent = None;
        shard.retry_at = None;
        shard.to_subscribe.clear();
        shard.to_unsubscribe.clear();
        shard.to_psubscribe.clear();
        shard.to_punsubscribe.clear();
        let endpoint = shard.endpoint.clone();
        if was_up {
            self.broker().counters.shards_up.fetch_sub(1, Ordering::Relaxed);
        }
        if was_known {
            info!("cluster: {endpoint} is no master of the slot map any more; letting it go");
        }
        self.refuse_pending(i, "the server is no longer a master of the Redis Cluster");
    }

    /// The shards the slot map names (masters that own slots); none without one.
    pub(super) fn mapped_shards(&self) -> Vec<usize> {
        let Some(topology) = &self.topology else { return Vec::new() };
        let mapped = topology.mapped(self.shards.len());
        (0..self.shards.len()).filter(|&i| mapped[i]).collect()
    }

    /// Redis Cluster: takes a slot map read by `discover`. Masters new to it are connected;
    /// servers it no longer names (a dead master, or one that came back as a replica after a
    /// failover) are let go of, neither counted nor probed nor reconnected; channels whose slot
    /// moved are served from their new master (subscribed again, repaired from the stream).
    pub(super) fn apply_slot_map(&mut self, seed: RedisEndpoint, ranges: Vec<topology::SlotRange>) {
        let now = Instant::now();
        let servers: Vec<RedisEndpoint> = self.shards.iter().map(|s| s.endpoint.clone()).collect();
        let Some(topology) = self.topology.as_mut() else { return };
        let taken = topology.take(&seed, ranges, &servers);
        for endpoint in taken.added {
            self.shards.push(Shard::new(endpoint, Bytes::new(), now));
        }
        // Each server's probe channel is one of its own slots.
        let id = String::from_utf8_lossy(&self.node_id).into_owned();
        let prefix = self.config().key_prefix.clone();
        let Some(topology) = self.topology.as_mut() else { return };
        for (i, shard) in self.shards.iter_mut().enumerate() {
            shard.probe_topic = (0u32..100_000)
                .map(|n| Bytes::from(format!("{prefix}:probe:{{{id}.{n}}}")))
                .find(|topic| topology.server_of(topic) == Some(i))
                .unwrap_or_default();
        }
        for (i, &mapped) in taken.mapped.iter().enumerate() {
            if mapped {
                let shard = &mut self.shards[i];
                if !shard.is_connected() && shard.retry_at.is_none() {
                    // A master again (or for the first time since it was let go of).
                    shard.retry_at = Some(now);
                    shard.backoff = BACKOFF_MIN;
                }
            } else {
                self.let_go_of_server(i);
            }
        }
        // While a master of the map does not answer, the map is read again soon: its replica
        // is named once it took over.
        if self.mapped_shards().iter().any(|&i| !self.shards[i].is_ready()) {
            if let Some(topology) = self.topology.as_mut() {
                topology.degraded(now);
            }
        }
        if let Some(masters) = taken.masters {
            info!("cluster: the Redis Cluster has {masters} master(s)");
        }
        let moves: Vec<(Bytes, Option<usize>)> = self
            .tracked
            .iter()
            .map(|(topic, t)| (topic.clone(), t.channel.name.clone()))
            .map(|(topic, name)| (topic, self.shard_of(&name)))
            .collect();
        for (topic, shard) in moves {
            let Some(tracked) = self.tracked.get_mut(&topic) else { continue };
            let moved = tracked.shard != shard;
            // A channel still subscribing may have been refused (MOVED): ask again.
            if !moved && !matches!(tracked.mirror.state, MirrorState::Subscribing) {
                continue;
            }
            if moved {
                if let Some(old) = tracked.shard.and_then(|i| self.shards.get_mut(i)) {
                    if old.is_connected() {
                        old.to_unsubscribe.push(topic.clone());
                    }
                }
                if !tracked.mirror.fresh {
                    // Another server (a promoted replica may lag what its master acknowledged).
                    tracked.mirror.server_replaced();
                }
                tracked.shard = shard;
            }
            tracked.mirror.resubscribe();
            if let Some(new) = shard.and_then(|i| self.shards.get_mut(i)) {
                if new.is_connected() {
                    new.to_subscribe.push(topic);
                }
            }
        }
        self.publish_readiness();
    }

    /// Tells the workers whether publishes can go through: per server, or (Redis Cluster) for
    /// the whole cluster at once, once the slot map is known and every master answers.
    pub(super) fn publish_readiness(&self) {
        let broker = self.broker();
        if let Some(topology) = &self.topology {
            let ready = topology.ready(|i| self.shards.get(i).is_some_and(Shard::is_ready));
            broker.shards[0].store(ready, Ordering::Release);
        } else {
            for (i, shard) in self.shards.iter().enumerate() {
                broker.shards[i].store(shard.is_ready(), Ordering::Release);
            }
        }
    }

    /// The address to connect server `i` at: its host if that is an address, else the name
    /// resolved on a helper thread (then `None` now, and `connect` is called again once it is:
    /// `BrokerOp::Resolved`). Names are resolved again for every connect (a managed Redis may
    /// move).
    pub(super) fn address_of(&mut self, i: usize) -> Option<std::net::SocketAddr> {
        let shard = &mut self.shards[i];
        let endpoint = shard.endpoint.clone();
        if let Ok(ip) = endpoint.host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
            return Some(std::net::SocketAddr::new(ip, endpoint.port));
        }
        if !shard.resolved.is_empty() {
            shard.connects += 1;
            let addrs = std::mem::take(&mut shard.resolved);
            return Some(addrs[shard.connects % addrs.len()]);
        }
        if std::mem::replace(&mut shard.resolving, true) {
            return None;
        }
        shard.retry_at = None;
        let server = self.server.clone();
        let spawned = std::thread::Builder::new().name("fanout-resolve".into()).spawn(move || {
            use std::net::ToSocketAddrs;
            let result = (endpoint.host.as_str(), endpoint.port)
                .to_socket_addrs()
                .map(Iterator::collect::<Vec<_>>)
                .map_err(|e| e.to_string())
                .and_then(|addrs| match addrs.is_empty() {
                    true => Err("no address".to_string()),
                    false => Ok(addrs),
                });
            server.broker().send(BrokerOp::Resolved { shard: i, endpoint, result });
        });
        if let Err(e) = spawned {
            let shard = &mut self.shards[i];
            shard.resolving = false;
            shard.retry_at = Some(Instant::now() + BACKOFF_MAX);
            warn!("cluster: cannot start a thread to resolve {}: {e}", shard.endpoint);
        }
        None
    }

    /// A host name resolved (`address_of`): connect now, or retry later.
    pub(super) fn resolved(
        &mut self,
        i: usize,
        endpoint: RedisEndpoint,
        result: Result<Vec<std::net::SocketAddr>, String>,
    ) {
        let Some(shard) = self.shards.get_mut(i) else { return };
        if shard.endpoint.host != endpoint.host || shard.endpoint.port != endpoint.port {
            return;
        }
        shard.resolving = false;
        match result {
            Ok(addrs) => {
                shard.resolved = addrs;
                shard.retry_at = Some(Instant::now());
            }
            Err(e) => {
                let delay = next_backoff(&mut shard.backoff);
                shard.retry_at = Some(Instant::now() + delay);
                warn!("cluster: cannot resolve {endpoint}: {e}; retrying in {delay:.1?}");
            }
        }
    }

    pub(super) fn connect(&mut self, i: usize) {
        let endpoint = self.shards[i].endpoint.clone();
        let Some(addr) = self.address_of(i) else { return };
        let max_bulk = self.server.max_frame_bytes() + 64 * 1024;
        let registry = self.poll.registry();
        let tls = match (&self.config().tls, endpoint.tls) {
            (Some(config), true) => Some((config, endpoint.host.as_str())),
            _ => None,
        };
        let links =
            Link::connect(addr, tls, Token(2 * i), registry, max_bulk).and_then(|commands| {
                let pubsub = Link::connect(addr, tls, Token(2 * i + 1), registry, max_bulk)?;
                Ok((commands, pubsub))
            });
        let shard = &mut self.shards[i];
        let (mut commands, mut pubsub) = match links {
            Ok(links) => links,
            Err(e) => {
                let delay = next_backoff(&mut shard.backoff);
                shard.retry_at = Some(Instant::now() + delay);
                warn!("cluster: cannot connect to {endpoint}: {e}; retrying in {delay:.1?}");
                return;
            }
        };
        if let Some(password) = &endpoint.password {
            let mut auth: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(user) = &endpoint.user {
                auth.push(user.as_bytes());
            }
            auth.push(password.as_bytes());
            commands.command(&auth);
            pubsub.command(&auth);
            shard.pending.push_back((Instant::now(), Pending::Setup("AUTH")));
        }
        if endpoint.db != 0 {
            commands.command(&[b"SELECT", endpoint.db.to_string().as_bytes()]);
            shard.pending.push_back((Instant::now(), Pending::Setup("SELECT")));
        }
        let scripts = [
            &self.publish,
            &self.sync,
            &self.refresh,
            &self.release,
            &self.presence_update_script,
            &self.presence_query_script,
        ];
        for script in scripts {
            commands.command(&[b"SCRIPT", b"LOAD", script.body.as_bytes()]);
            shard.pending.push_back((Instant::now(), Pending::Setup("SCRIPT LOAD")));
        }
        // Which server answers: another run id than last time is a restart or a failover, after
        // which Redis may have come back from an older snapshot (`ChannelMirror::server_replaced`).
        commands.command(&[b"INFO", b"server"]);
        shard.pending.push_back((Instant::now(), Pending::Identify));
        shard.setup_left = shard.pending.len();
        shard.probe_sent = None;
        let probe_topic = shard.probe_topic.clone();
        shard.to_subscribe.push(probe_topic);
        shard.commands = Some(commands);
        shard.pubsub = Some(pubsub);
        shard.retry_at = None;
        // Every channel served here is subscribed again and repaired from its stream.
        let shard = &mut self.shards[i];
        for (topic, tracked) in self.tracked.iter_mut().filter(|(_, t)| t.shard == Some(i)) {
            tracked.mirror.resubscribe();
            shard.to_subscribe.push(topic.clone());
        }
        for (glob, track) in self.patterns.iter_mut() {
            track.confirmed.remove(&i);
            shard.to_psubscribe.push(glob.clone());
        }
    }

    /// Server `i` told its run id (`None`: it would not say). Another than the one connected to
    /// before means Redis restarted or failed over: every channel served from it must find the
    /// last message its log holds in the stream on its sync, or its log ends (a restart from an
    /// older snapshot cannot be told otherwise once the stream was trimmed past that message).
    pub(super) fn identified(&mut self, i: usize, run_id: Option<String>) {
        let shard = &mut self.shards[i];
        let before = std::mem::replace(&mut shard.run_id, run_id.clone());
        let replaced = match (&before, &run_id) {
            (None, _) => false,
            (Some(before), Some(now)) => before != now,
            (Some(_), None) => true,
        };
        if !replaced {
            return;
        }
        info!(
            "cluster: {} is not the server it was (its run id changed: restarted or failed over); the channels served from it are checked against their streams",
            shard.endpoint
        );
        for tracked in self.tracked.values_mut().filter(|t| t.shard == Some(i)) {
            tracked.mirror.server_replaced();
        }
    }

    /// Redis answered the setup: publishes may go through.
    pub(super) fn shard_ready(&mut self, i: usize) {
        let endpoint = self.shards[i].endpoint.clone();
        let server = self.server.clone();
        let broker = server.broker();
        let probe_every = broker.config.probe_interval;
        let shard = &mut self.shards[i];
        shard.backoff = BACKOFF_MIN;
        shard.next_probe = Instant::now() + probe_every;
        if std::mem::replace(&mut shard.ever_up, true) {
            broker.counters.reconnects.fetch_add(1, Ordering::Relaxed);
            info!("cluster: reconnected to {endpoint}");
        } else {
            info!("cluster: connected to {endpoint}");
        }
        broker.counters.shards_up.fetch_add(1, Ordering::Relaxed);
        self.publish_readiness();
        // A Redis that came back empty lost the leases: take them again at once, before another
        // node's client can claim a name a client here holds.
        self.refresh_leases();
        // And this node's presence there: written whole at once.
        self.presence_reconnected();
    }

    /// A connection to server `i` failed: refuse what was in flight, keep every subscriber, and
    /// reconnect later.
    pub(super) fn shard_down(&mut self, i: usize, why: &str) {
        let endpoint = self.shards[i].endpoint.clone();
        let registry = self.poll.registry();
        let shard = &mut self.shards[i];
        let was_up = shard.is_ready();
        let was_connected = shard.is_connected();
        shard.probe_sent = None;
        self.expiries.forget();
        for link in [shard.commands.take(), shard.pubsub.take()].into_iter().flatten() {
            let mut link = link;
            link.deregister(registry);
        }
        shard.to_subscribe.clear();
        shard.to_unsubscribe.clear();
        shard.to_psubscribe.clear();
        shard.to_punsubscribe.clear();
        let delay = next_backoff(&mut shard.backoff);
        shard.retry_at = Some(Instant::now() + delay);
        if was_up {
            self.broker().counters.shards_up.fetch_sub(1, Ordering::Relaxed);
            self.publish_readiness();
        }
        if let Some(topology) = self.topology.as_mut() {
            // A master that went away may have been replaced by one of its replicas.
            topology.lost_master(Instant::now());
        }
        if was_connected {
            warn!("cluster: lost {endpoint}: {why}; reconnecting in {delay:.1?}");
        }
        self.refuse_pending(i, why);
        for tracked in self.tracked.values_mut().filter(|t| t.shard == Some(i)) {
            tracked.mirror.resubscribe();
        }
    }

    pub(super) fn refuse_pending(&mut self, i: usize, why: &str) {
        let pending = std::mem::take(&mut self.shards[i].pending);
        let why: Arc<str> =
            format!("broker unavailable: {why}; the publish may or may not have been carried out")
                .into();
        for (_, pending) in pending {
            match pending {
                Pending::Publish(batch) => {
                    self.refuse_batch(&batch, why.clone());
                }
                Pending::Backfill { reply_to, .. } => {
                    let why = "broker unavailable: Redis went away; the stream cannot be read now";
                    let answer = Answer::Backfill { target: reply_to, entries: Err(why.into()) };
                    self.tell(reply_to.worker, answer);
                }
                Pending::Claim { name, reply_to } => {
                    let why = "broker unavailable: the name cannot be claimed now".into();
                    let result = Err((ErrorCode::Unavailable, why));
                    self.tell(
                        reply_to.worker,
                        Answer::NameClaim { target: reply_to, name, result },
                    );
                }
                pending @ (Pending::PresenceQuery { .. }
                | Pending::Control { .. }
                | Pending::Survey { .. }) => self.control_refused(pending),
                _ => {}
            }
        }
    }

    /// Redis Cluster: a slot is not where the map said (MOVED, ASK, or a sharded subscription
    /// ended by the server): read the map again now.
    pub(super) fn slot_moved(&mut self, why: &str) {
        debug!("cluster: {why}; reading the slot map again");
        if let Some(topology) = self.topology.as_mut() {
            topology.moved(Instant::now());
        }
    }

    /// Whether the ring has the headroom to take a pub/sub read's messages without waiting.
    pub(super) fn ring_has_room(&self) -> bool {
        self.ring.has_room()
    }

    /// Notes that server `i`'s pub/sub connection has input left to read (its liveness probe
    /// may be among it: not a silent connection).
    pub(super) fn leave_unread(&mut self, i: usize) {
        if !self.unread.contains(&i) {
            self.unread.push(i);
        }
        if let Some(shard) = self.shards.get_mut(i) {
            if shard.probe_sent.is_some() {
                shard.probe_sent = Some(Instant::now());
            }
        }
    }

    /// Reads the pub/sub connections left unread, while the ring has room.
    pub(super) fn read_unread(&mut self) {
        for i in std::mem::take(&mut self.unread) {
            if self.ring_has_room() {
                self.link_ready(i, true);
            } else {
                self.leave_unread(i);
            }
        }
    }
}
