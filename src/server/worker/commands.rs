//! Commands, whatever format they came in: subscribe (or resume), unsubscribe, publish, claim a
//! name, ping. Each is checked (names, limits), acted on, and answered; a refusal is an error
//! frame the connection survives. Also the worker's view of channels: its cache, and letting go
//! of channels nothing uses.

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use log::debug;

use super::access::{Action, Rate, Via};
use super::lifecycle::Close;
use super::{ConnRef, Worker};
use crate::auth::pattern::TopicPattern;
use crate::cluster::BrokerOp;
use crate::history::disk::ReplyTo;
use crate::history::disk::StoreOp;
use crate::history::Mirror;
use crate::protocol::{self, validate_channel, Ack, ChannelKind, ErrorCode, Request, Resume};
use crate::server::channels::Channel;
use crate::server::conn::{
    AfterJoin, Joining, Membership, PatternSubscription, Phase, Subscription, Wait,
};
use crate::server::index::{self, Subscriber};
use crate::server::patterns::{Matcher, GLOB_KEY};
use crate::server::retention::Appender;
use crate::server::stats::WorkerCounters;

/// Channels (or cached names) a sweep looks at per turn: about a shard of a million-channel
/// registry, half a millisecond. A sweep pass is spread over many turns, each short, rather
/// than a few long ones (the probes of `scripts/turn-1m.sh` saw a p99 of 2.8 ms with four
/// times this).
const SWEEP_BUDGET: usize = 1024;

/// A freed channel's history files go too (the storage thread deletes them, in order with
/// anything a channel of that name does later).
fn forget_files(storage: Option<&crate::server::StorageQueue>, name: &Bytes) {
    if let Some(storage) = storage {
        storage.depth.fetch_add(1, Ordering::Relaxed);
        let _ = storage.sender.send(StoreOp::Forget(name.clone()));
    }
}

fn owned(payload: Cow<'_, [u8]>) -> Bytes {
    match payload {
        Cow::Borrowed(bytes) => Bytes::copy_from_slice(bytes),
        Cow::Owned(vec) => Bytes::from(vec),
    }
}

/// A pattern as its client wrote it, from its index key (a Redis glob is kept behind `GLOB_KEY`).
pub(super) fn written_pattern(text: &[u8]) -> &[u8] {
    text.strip_prefix(&[GLOB_KEY]).unwrap_or(text)
}

impl Worker {
    pub(super) fn handle(&mut self, key: usize, request: Request<'_>) -> Result<(), Close> {
        let before_auth =
            matches!(request, Request::Auth { .. } | Request::Ping | Request::Pong | Request::Noop);
        if !before_auth && self.must_authenticate(key) {
            WorkerCounters::add(&self.counters().auth_forbidden, 1);
            return self.refuse(key, ErrorCode::Unauthorized, "authenticate first: AUTH <token>");
        }
        match request {
            Request::Noop | Request::Pong => Ok(()),
            Request::Ping => {
                let pong = self.conns[key].reply_format().pong();
                self.reply(key, pong)
            }
            Request::Subscribe { channel, resume } => self.subscribe(key, channel, resume),
            Request::Unsubscribe { channel } => self.unsubscribe(key, channel),
            Request::Publish { channel, payload } => {
                self.publish_request(key, channel, owned(payload), false, Via::Client)
            }
            Request::PublishAcked { channel, payload } => {
                self.publish_request(key, channel, owned(payload), true, Via::Client)
            }
            Request::Name { name } => self.claim_name(key, name),
            Request::Auth { token } => self.authenticate(key, token).map(drop),
            Request::PatternSubscribe { pattern } => self.pattern_subscribe(key, pattern),
            Request::PatternUnsubscribe { pattern } => self.pattern_unsubscribe(key, pattern),
            Request::Presence { channel, stats_only } => {
                self.presence_request(key, channel, stats_only)
            }
        }
    }

    /// The channel for a validated name: from this worker's cache, else from the registry. At
    /// the channel limit, first let go of what nothing uses (a budget's worth: no step walks
    /// every channel); if that frees nothing, let the globally oldest history go (a hundredth of
    /// the limit at a time, so that a flood of names evicts rarely) and free what it emptied.
    pub(super) fn channel(&mut self, name: &[u8]) -> Result<Arc<Channel>, String> {
        if let Some(channel) = self.channel_cache.get(name) {
            return Ok(channel.clone());
        }
        let mut attempt = 0;
        let channel = loop {
            match self.shared.channels.get_or_create(name) {
                Ok(channel) => break channel,
                Err(e) if attempt == 2 => {
                    // Channels other workers' caches hold can be freed only once they let go:
                    // ask them now rather than at their next pass, so that a retry finds room.
                    WorkerCounters::add(&self.counters().limited_channels, 1);
                    self.shared.channels.ask_caches_to_let_go();
                    self.shared.wake_others(self.id);
                    return Err(e.to_string());
                }
                Err(_) => {
                    if attempt == 0 {
                        self.channel_cache.start_pass();
                        self.release_cached();
                        self.sweep_registry();
                    } else {
                        self.evict_for_room();
                    }
                    attempt += 1;
                }
            }
        };
        self.channel_cache.insert(channel.clone());
        Ok(channel)
    }

    /// Begins letting go of channels nothing uses: of this worker's cached ones with no local
    /// subscriber, and, when `registry_too`, of every channel in the registry nothing holds
    /// (see `ChannelRegistry::sweep_unused`). Done a budget at a time by `sweep_step`.
    pub(super) fn start_sweep(&mut self, registry_too: bool) {
        self.channel_cache.start_pass();
        if registry_too {
            self.registry_shards_left = crate::server::channels::NAME_SHARDS;
        }
    }

    /// True while a sweep has work left for the next turn.
    pub(super) fn sweeping(&self) -> bool {
        self.channel_cache.passing() || self.registry_shards_left > 0
    }

    /// One turn's share of the sweep: the cache first, so that what it lets go of can be freed
    /// by the registry's part of the same sweep.
    pub(super) fn sweep_step(&mut self) {
        if self.channel_cache.passing() {
            self.release_cached();
        } else if self.registry_shards_left > 0 {
            let shards = self.sweep_registry();
            self.registry_shards_left = self.registry_shards_left.saturating_sub(shards);
        }
    }

    fn release_cached(&mut self) {
        let index = &self.index;
        self.channel_cache.pass_step(SWEEP_BUDGET, |channel| index.get(channel.id).is_some());
    }

    /// At the channel limit with nothing unused: lets the globally oldest history go (a
    /// hundredth of the limit), and frees at once the channels that emptied and nothing holds.
    fn evict_for_room(&mut self) {
        let batch = (self.shared.config.max_channels / 100).max(1);
        let appender = Appender::Worker(self.id);
        let storage = self.shared.storage.as_ref();
        let (evicted, freed) =
            self.shared.channels.evict_oldest(appender, batch, |name| forget_files(storage, name));
        WorkerCounters::add(&self.counters().history_dropped, evicted as u64);
        WorkerCounters::add(&self.counters().channels_freed, freed as u64);
    }

    /// Frees a budget's worth of the registry's unused channels; a freed channel's files go too.
    /// Returns how many shards of the registry it looked at.
    fn sweep_registry(&mut self) -> usize {
        let storage = self.shared.storage.as_ref();
        let appender = Appender::Worker(self.id);
        let now = self.wall_ms();
        let channels = &self.shared.channels;
        let step =
            channels.sweep_unused(appender, now, SWEEP_BUDGET, |name| forget_files(storage, name));
        WorkerCounters::add(&self.counters().channels_freed, step.freed as u64);
        if step.freed > 0 {
            debug!("worker {}: freed {} unused channel(s)", self.id, step.freed);
        }
        step.shards
    }

    /// A topic channel a client may subscribe to, or the refusal to send.
    fn subscribable(name: &[u8]) -> Result<(), (ErrorCode, Cow<'static, str>)> {
        match validate_channel(name) {
            Ok(ChannelKind::Topic) => Ok(()),
            Ok(ChannelKind::Broadcast) => {
                Err((ErrorCode::Forbidden, "every connection receives * already".into()))
            }
            Ok(ChannelKind::Inbox) => {
                Err((ErrorCode::Forbidden, "inboxes are private; claim a name with NAME".into()))
            }
            Err(e) => Err((ErrorCode::InvalidName, format!("invalid channel: {e}").into())),
        }
    }

    pub(super) fn subscribe(
        &mut self,
        key: usize,
        name: &[u8],
        resume: Option<Resume>,
    ) -> Result<(), Close> {
        if let Err((code, why)) = Self::subscribable(name) {
            return self.refuse(key, code, &why);
        }
        if let Some(why) = self.unfit_for_cluster(name) {
            return self.refuse(key, ErrorCode::InvalidName, why);
        }
        // Resuming is subscribing: the same permission, checked before anything is replayed.
        if !self.permitted(key, Action::Subscribe, name)?
            || !self.within_rate(key, Rate::Subscribe)?
        {
            return Ok(());
        }
        let conn = &self.conns[key];
        if conn.subscriptions.iter().any(|s| s.channel.name == name) {
            if resume.is_some() {
                let why = "already subscribed; UNSUB before resuming";
                return self.refuse(key, ErrorCode::Conflict, why);
            }
            return self.acknowledge(key, Ack::Subscribe, name);
        }
        let limit = self.shared.config.max_subscriptions_per_connection;
        // A grant of everything (the API key: an edge mirroring for its clients) has no limit.
        let everything = self.grant(key).is_some_and(|g| g.everything);
        let conn = &self.conns[key];
        if conn.subscriptions.len() >= limit && !everything {
            let why = format!("too many subscriptions (the limit is {limit})");
            return self.refuse(key, ErrorCode::LimitReached, &why);
        }
        let channel = match self.channel(name) {
            Ok(channel) => channel,
            Err(why) => return self.refuse(key, ErrorCode::LimitReached, &why),
        };
        if !self.served_here(&channel) {
            return self.wait_for_channel(key, channel, AfterJoin::Subscribe(resume));
        }
        self.subscribe_served(key, channel, resume)
    }

    /// Subscribes (or resumes) on a channel this node serves.
    fn subscribe_served(
        &mut self,
        key: usize,
        channel: Arc<Channel>,
        resume: Option<Resume>,
    ) -> Result<(), Close> {
        match resume {
            None => {
                let name = channel.name.clone();
                self.attach(key, channel);
                self.acknowledge(key, Ack::Subscribe, &name)
            }
            Some(resume) => self.start_replay(key, channel, resume),
        }
    }

    /// Why a valid channel name cannot be used in this server's cluster, if it cannot.
    pub(super) fn unfit_for_cluster(&self, name: &[u8]) -> Option<&'static str> {
        self.shared.broker.as_ref().and_then(|broker| broker.unfit(name))
    }

    /// Whether this node serves `channel` now. Always, on a single node; in a cluster, once it is
    /// subscribed to it in Redis and has mirrored its history. If it is not, the broker is asked
    /// (once per channel) and the caller waits (`wait_for_channel`).
    pub(super) fn served_here(&self, channel: &Arc<Channel>) -> bool {
        let Some(broker) = self.shared.broker.as_ref() else { return true };
        let mut log = channel.lock_log();
        match log.mirror {
            Mirror::Standalone | Mirror::Live => true,
            Mirror::Requested => false,
            Mirror::Idle | Mirror::Refused => {
                log.mirror = Mirror::Requested;
                drop(log);
                broker.send(BrokerOp::Serve(channel.clone()));
                false
            }
        }
    }

    /// Holds the connection's input until its channel is served here (`admit_joins`).
    pub(super) fn wait_for_channel(
        &mut self,
        key: usize,
        channel: Arc<Channel>,
        then: AfterJoin,
    ) -> Result<(), Close> {
        let conn = &mut self.conns[key];
        conn.phase = Phase::Waiting(Wait::Join(Box::new(Joining { channel, then })));
        self.joining.push(ConnRef::of(key, conn));
        Ok(())
    }

    /// Lets the connections whose channel became served go on (the broker bumps its generation
    /// and wakes every worker when that happens).
    pub(super) fn admit_joins(&mut self) {
        let Some(broker) = self.shared.broker.as_ref() else { return };
        let generation = broker.served_generation.load(Ordering::Acquire);
        if generation == self.served_generation_seen || self.joining.is_empty() {
            return;
        }
        self.served_generation_seen = generation;
        for noted in std::mem::take(&mut self.joining) {
            let Some(key) = self.resolve(noted) else { continue };
            if let Some(Wait::PatternJoin(text)) = self.conns[key].wait() {
                let live = self.pattern_live(text);
                if !live {
                    self.joining.push(noted);
                    continue;
                }
                let Some(Wait::PatternJoin(text)) = self.conns[key].end_wait() else { continue };
                // Checked before the wait (`request_pattern`); its input waited meanwhile, so
                // nothing about the connection changed.
                let result = match self.matcher_of(&text) {
                    Ok(matcher) => self.attach_pattern(key, &text, matcher),
                    Err(e) => {
                        let why = format!("invalid pattern: {e}");
                        self.refuse(key, ErrorCode::InvalidName, &why)
                    }
                };
                let result = result.and_then(|()| self.resume_unless_waiting(key));
                self.close_on_error(key, result);
                continue;
            }
            let Some(Wait::Join(joining)) = self.conns[key].wait() else { continue };
            let mirror = joining.channel.lock_log().mirror;
            if mirror == Mirror::Refused {
                // An edge's upstream would not serve it: told why, as the upstream said.
                let refusal = self.shared.broker.as_ref().map(|b| b.refusal(&joining.channel.name));
                let Some((code, why)) = refusal else { continue };
                self.conns[key].end_wait();
                let result = self.refuse(key, code, &why);
                let result = result.and_then(|()| self.resume_unless_waiting(key));
                self.close_on_error(key, result);
                continue;
            }
            if mirror != Mirror::Live {
                self.joining.push(noted);
                continue;
            }
            let Some(Wait::Join(joining)) = self.conns[key].end_wait() else { continue };
            let Joining { channel, then } = *joining;
            let result = match then {
                AfterJoin::Subscribe(resume) => self.subscribe_served(key, channel, resume),
                AfterJoin::Inbox => {
                    let name = channel.name.slice(1..);
                    self.attach(key, channel);
                    self.acknowledge(key, Ack::Name, &name)
                }
                AfterJoin::Poll(from, epoch, timeout) => {
                    self.poll_channel(key, channel, from, epoch, timeout)
                }
                AfterJoin::History(since, limit) => {
                    self.history_answer(key, &channel, since, limit)
                }
            };
            let result = result.and_then(|()| self.resume_unless_waiting(key));
            self.close_on_error(key, result);
        }
    }

    /// After a wait ended and what waited was done: the input that waited behind it, unless
    /// the connection waits again (a replay began, a poll is held).
    pub(super) fn resume_unless_waiting(&mut self, key: usize) -> Result<(), Close> {
        if self.conns[key].input_waits() {
            Ok(())
        } else {
            self.resume_input(key)
        }
    }

    /// Adds `key` to the channel's shared fan-out.
    fn attach(&mut self, key: usize, channel: Arc<Channel>) {
        let conn = &mut self.conns[key];
        let subscriber = Subscriber::new(key, conn.serial);
        let position = self.index.add(channel.id, subscriber, conn.reply_format());
        channel.subscribers.fetch_add(1, Ordering::Relaxed);
        self.presence_joined(key, &channel);
        let conn = &mut self.conns[key];
        conn.push_subscription(Subscription { channel, membership: Membership::Live(position) });
    }

    pub(super) fn unsubscribe(&mut self, key: usize, name: &[u8]) -> Result<(), Close> {
        if let Err(e) = validate_channel(name) {
            return self.refuse(key, ErrorCode::InvalidName, &format!("invalid channel: {e}"));
        }
        if !self.within_rate(key, Rate::Subscribe)? {
            return Ok(());
        }
        let conn = &mut self.conns[key];
        if let Some(i) = conn.subscriptions.iter().position(|s| s.channel.name == name) {
            if conn.subscriptions[i].channel.kind == ChannelKind::Inbox {
                let why = "a connection keeps its inbox while it has its name";
                return self.refuse(key, ErrorCode::Forbidden, why);
            }
            let subscription = conn.subscriptions.swap_remove(i);
            self.detach_one(key, subscription);
        }
        self.acknowledge(key, Ack::Unsubscribe, name)
    }

    /// Removes `key` from one channel's local subscribers, fixing the position of the subscriber
    /// that `swap_remove` moved into its place.
    pub(super) fn detach_one(&mut self, key: usize, subscription: Subscription) {
        let format = self.conns[key].reply_format();
        let subscriber = Subscriber::new(key, self.conns[key].serial);
        let channel_id = subscription.channel.id;
        subscription.channel.subscribers.fetch_sub(1, Ordering::Relaxed);
        self.presence_left(key, &subscription.channel);
        match subscription.membership {
            Membership::CatchingUp => self.index.remove_catching_up(channel_id, subscriber),
            Membership::Live(position) => {
                if let Some(moved) = self.index.remove(channel_id, position, format) {
                    let moved = index::live(&mut self.conns, moved);
                    if let Some(entry) = moved.and_then(|c| c.subscription_mut(channel_id)) {
                        entry.membership = Membership::Live(position);
                    }
                }
            }
        }
        if self.index.get(channel_id).is_none() {
            // The last local subscriber left: this worker no longer keeps the channel alive, so
            // that it can be freed once nothing else uses it (`sweep_channels`).
            self.channel_cache.remove(&subscription.channel.name);
        }
    }

    /// `PSUB pattern` (fanout's syntax, `?pattern=` too): every topic channel matching it, from
    /// now on (no resume: offsets are per channel; a client resumes the channels it has seen
    /// one by one).
    pub(super) fn pattern_subscribe(&mut self, key: usize, text: &[u8]) -> Result<(), Close> {
        self.request_pattern(key, text.into())
    }

    /// A wildcard subscription keyed `text` (a Redis glob behind `GLOB_KEY`): every check first
    /// (cluster support, syntax, permission, rate, limit), so that nothing a client may not do
    /// reaches the broker or an index; then, in a cluster, a wait until this node receives what
    /// it matches; then the subscription.
    pub(super) fn request_pattern(&mut self, key: usize, text: Box<[u8]>) -> Result<(), Close> {
        if self.shared.broker.as_ref().is_some_and(|b| b.config.redis_cluster) {
            let why = "wildcard subscriptions are not available over a Redis Cluster (sharded pub/sub has no patterns); subscribe to the channels";
            return self.refuse(key, ErrorCode::NotImplemented, why);
        }
        let matcher = match self.matcher_of(&text) {
            Ok(matcher) => matcher,
            Err(e) => {
                return self.refuse(key, ErrorCode::InvalidName, &format!("invalid pattern: {e}"))
            }
        };
        let written = written_pattern(&text);
        let permitted = match &matcher {
            Matcher::Topic(pattern) => self.pattern_permitted(key, written, pattern)?,
            // A glob cannot be checked against the grant's patterns: only a connection that may
            // subscribe to every channel takes one.
            Matcher::Glob => {
                let everything = TopicPattern::parse(">", 1).expect("> is a pattern");
                self.pattern_permitted(key, written, &everything)?
            }
        };
        if !permitted || !self.within_rate(key, Rate::Subscribe)? {
            return Ok(());
        }
        let conn = &self.conns[key];
        let id = self.patterns.id_of(&text);
        if id.is_some_and(|id| conn.patterns.iter().any(|p| p.id == id)) {
            return self.acknowledge(key, Ack::PatternSubscribe, written);
        }
        let limit = self.shared.config.max_patterns_per_connection;
        // A grant of everything (the API key: an edge mirroring for its clients) has no limit.
        let everything = self.grant(key).is_some_and(|g| g.everything);
        let conn = &self.conns[key];
        if conn.patterns.len() >= limit && !everything {
            WorkerCounters::add(&self.counters().limited_patterns, 1);
            let why = format!("too many pattern subscriptions (the limit is {limit})");
            return self.refuse(key, ErrorCode::LimitReached, &why);
        }
        if !self.pattern_served_here(&text) {
            self.wait_for_pattern(key, &text);
            return Ok(());
        }
        self.attach_pattern(key, &text, matcher)
    }

    /// How pattern `text` (an index key) matches channels.
    fn matcher_of(&self, text: &[u8]) -> Result<Matcher, crate::auth::PatternError> {
        match text.strip_prefix(&[GLOB_KEY]) {
            Some(_) => Ok(Matcher::Glob),
            None => {
                let max_tokens = self.shared.config.max_pattern_tokens;
                TopicPattern::from_bytes(text, max_tokens).map(Matcher::Topic)
            }
        }
    }

    /// Subscribes connection `key` to pattern `text`, checked by `request_pattern` and served
    /// here.
    fn attach_pattern(&mut self, key: usize, text: &[u8], matcher: Matcher) -> Result<(), Close> {
        if self.patterns.id_of(text).is_none() {
            self.pattern_holders(text, 1);
        }
        let topic = match &matcher {
            Matcher::Topic(pattern) => Some(pattern),
            Matcher::Glob => None,
        };
        self.shared.pattern_census.add(text, topic);
        let conn = &mut self.conns[key];
        let subscriber = Subscriber::new(key, conn.serial);
        let (id, position) = self.patterns.add(text, matcher, subscriber, conn.reply_format());
        conn.patterns.reserve_exact(1);
        conn.patterns.push(PatternSubscription { id, position });
        self.acknowledge(key, Ack::PatternSubscribe, written_pattern(text))
    }

    /// Cluster mode: whether pattern `text`'s PSUBSCRIBE took effect.
    fn pattern_live(&self, text: &[u8]) -> bool {
        self.shared.broker.as_ref().is_none_or(|broker| broker.pattern_live(text))
    }

    /// Holds the connection's input until this node receives what `text` matches (cluster mode;
    /// `admit_joins` then subscribes it and goes on).
    pub(super) fn wait_for_pattern(&mut self, key: usize, text: &[u8]) {
        let conn = &mut self.conns[key];
        conn.phase = Phase::Waiting(Wait::PatternJoin(text.into()));
        self.joining.push(ConnRef::of(key, conn));
    }

    /// Cluster mode (standalone Redis): whether this node receives every channel `text` could
    /// match. If not, the broker is asked (once) to PSUBSCRIBE, and the caller waits
    /// (`wait_for_pattern`).
    pub(super) fn pattern_served_here(&self, text: &[u8]) -> bool {
        self.shared.broker.as_ref().is_none_or(|broker| broker.pattern_served_here(text))
    }

    /// Cluster mode: this worker took up (`+1`) or let go of (`-1`) pattern `text`.
    pub(super) fn pattern_holders(&self, text: &[u8], change: isize) {
        if let Some(broker) = self.shared.broker.as_ref() {
            broker.pattern_holders(text, change);
        }
    }

    fn pattern_unsubscribe(&mut self, key: usize, text: &[u8]) -> Result<(), Close> {
        if !self.within_rate(key, Rate::Subscribe)? {
            return Ok(());
        }
        if let Some(id) = self.patterns.id_of(text) {
            let conn = &mut self.conns[key];
            if let Some(i) = conn.patterns.iter().position(|p| p.id == id) {
                let subscription = conn.patterns.swap_remove(i);
                self.detach_pattern(key, subscription);
            }
        }
        self.acknowledge(key, Ack::PatternUnsubscribe, text)
    }

    /// Removes `key` from one pattern's subscribers, fixing the position of the one moved.
    pub(super) fn detach_pattern(&mut self, key: usize, subscription: PatternSubscription) {
        let format = self.conns[key].reply_format();
        let PatternSubscription { id, position } = subscription;
        let text = self.patterns.get(id).text.clone();
        self.shared.pattern_census.remove(&text);
        if let Some(moved) = self.patterns.remove(id, position, format) {
            let moved = index::live(&mut self.conns, moved);
            if let Some(entry) = moved.and_then(|c| c.patterns.iter_mut().find(|p| p.id == id)) {
                entry.position = position;
            }
        }
        if self.patterns.id_of(&text).is_none() {
            self.pattern_holders(&text, -1);
        }
    }

    fn claim_name(&mut self, key: usize, name: &[u8]) -> Result<(), Close> {
        if let Err(e) = protocol::validate_client_name(name) {
            return self.refuse(key, ErrorCode::InvalidName, &format!("invalid name: {e}"));
        }
        if self.conns[key].name().is_some() {
            return self.refuse(key, ErrorCode::Conflict, "this connection already has a name");
        }
        if !self.permitted(key, Action::Claim, name)? {
            return Ok(());
        }
        let mut inbox = Vec::with_capacity(name.len() + 1);
        inbox.push(b'@');
        inbox.extend_from_slice(name);
        let channel = match self.channel(&inbox) {
            Ok(channel) => channel,
            Err(why) => return self.refuse(key, ErrorCode::LimitReached, &why),
        };
        if !self.shared.names.claim(name) {
            return self.refuse(key, ErrorCode::Conflict, "name already in use");
        }
        if let Some(broker) = self.shared.broker.as_ref() {
            // Unique across the cluster: a lease in Redis, answered in `name_claimed`.
            let conn = &mut self.conns[key];
            let reply_to = ReplyTo { worker: self.id, key, serial: conn.serial };
            broker.send(BrokerOp::Claim { name: Bytes::copy_from_slice(name), reply_to });
            conn.phase = Phase::Waiting(Wait::NameClaim(channel));
            return Ok(());
        }
        self.attach(key, channel);
        self.acknowledge(key, Ack::Name, name)
    }

    /// Cluster mode: Redis answered a name claim. Granted, the connection takes its inbox (once
    /// the node serves it); refused, the name is let go here too and the client told why. A
    /// connection that is gone meanwhile gives a granted lease back.
    /// Cluster mode: the connection's name went to another node's client (Redis lost the lease,
    /// and the other claimed it first): the connection is told, keeps its connection and its
    /// subscriptions, and no longer receives the inbox, so a name has one holder.
    pub(super) fn name_lost(&mut self, target: ReplyTo, name: &[u8]) {
        let noted = ConnRef { key: target.key, serial: target.serial };
        let Some(key) = self.resolve(noted) else { return };
        let conn = &mut self.conns[key];
        if conn.name() != Some(name) {
            return;
        }
        let Some(i) = conn.subscriptions.iter().position(|s| s.channel.kind == ChannelKind::Inbox)
        else {
            return;
        };
        let inbox = conn.subscriptions.swap_remove(i);
        self.detach_one(key, inbox);
        self.shared.names.release(name);
        let why = format!(
            "name lost: Redis lost the lease on {} and another client claimed it; NAME again to claim another",
            String::from_utf8_lossy(name)
        );
        let result = self.refuse(key, ErrorCode::Conflict, &why);
        self.close_on_error(key, result);
    }

    pub(super) fn name_claimed(
        &mut self,
        target: ReplyTo,
        name: Bytes,
        result: Result<(), (ErrorCode, Arc<str>)>,
    ) {
        let noted = ConnRef { key: target.key, serial: target.serial };
        let waiting = self.resolve(noted).filter(|&key| {
            matches!(self.conns[key].wait(), Some(Wait::NameClaim(c)) if c.name[1..] == name[..])
        });
        let Some(key) = waiting else {
            if result.is_ok() {
                if let Some(broker) = self.shared.broker.as_ref() {
                    broker.send(BrokerOp::Release { name });
                }
            }
            return;
        };
        let Some(Wait::NameClaim(channel)) = self.conns[key].end_wait() else { return };
        let outcome = match result {
            Ok(()) if !self.served_here(&channel) => {
                self.wait_for_channel(key, channel, AfterJoin::Inbox)
            }
            Ok(()) => {
                self.attach(key, channel);
                self.acknowledge(key, Ack::Name, &name)
            }
            Err((code, why)) => {
                self.shared.names.release(&name);
                self.refuse(key, code, &why)
            }
        };
        let outcome = outcome.and_then(|()| self.resume_unless_waiting(key));
        self.close_on_error(key, outcome);
    }

    /// Lets go of a connection's name: here, and in a cluster its lease in Redis.
    pub(super) fn release_name(&self, name: &[u8]) {
        self.shared.names.release(name);
        if let Some(broker) = self.shared.broker.as_ref() {
            broker.send(BrokerOp::Release { name: Bytes::copy_from_slice(name) });
        }
    }

    pub(super) fn publish_request(
        &mut self,
        key: usize,
        name: &[u8],
        payload: Bytes,
        acked: bool,
        via: Via,
    ) -> Result<(), Close> {
        if self
            .shared
            .config
            .debug_panic_on_publish_to
            .as_deref()
            .is_some_and(|c| c.as_bytes() == name)
        {
            panic!("--debug-panic-on-publish-to {}", String::from_utf8_lossy(name));
        }
        let kind = match validate_channel(name) {
            Ok(kind) => kind,
            Err(e) => {
                return self.refuse(key, ErrorCode::InvalidName, &format!("invalid channel: {e}"))
            }
        };
        if let Some(why) = self.unfit_for_cluster(name) {
            return self.refuse(key, ErrorCode::InvalidName, why);
        }
        if !self.permitted(key, Action::Publish, name)? || !self.within_rate(key, Rate::Publish)? {
            return Ok(());
        }
        if let Some((code, why)) = self.namespace_refusal(key, name, payload.len(), via) {
            return self.refuse(key, code, &why);
        }
        // In a cluster the name may be held on another node.
        let cluster = self.shared.broker.is_some();
        if kind == ChannelKind::Inbox && !cluster && !self.shared.names.is_claimed(&name[1..]) {
            let who = String::from_utf8_lossy(&name[1..]).into_owned();
            return self.refuse(key, ErrorCode::NotFound, &format!("no client named {who}"));
        }
        let channel = match self.channel(name) {
            Ok(channel) => channel,
            Err(why) => return self.refuse(key, ErrorCode::LimitReached, &why),
        };
        if self.publish_for(key, channel, payload, acked)? {
            WorkerCounters::add(&self.counters().ring_full_stalls, 1);
        }
        Ok(())
    }
}
