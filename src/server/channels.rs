//! Channels, the messages that travel the ring, and the server-wide registries of channel names and
//! client names. These are the only structures workers share besides the ring; none is touched per
//! subscriber. The registry's map is looked up when a worker meets a name it has not cached (each
//! worker caches the `Arc<Channel>`s it uses), by the sweep that frees unused channels (and at
//! the channel limit), and by the server API's listings. With history on, a publish notes its
//! message in its appender's own retention shard (`server::retention`): no lock or counter on
//! the publish path is shared by every worker besides the channel's own.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::history::{ChannelLog, HistoryLimits, Mirror, Retained, Totals};
use crate::protocol::{validate_channel, ChannelKind};
use crate::server::retention::{Appender, Retention};
use crate::server::ring::Producer;
use crate::server::Item;

/// One channel: its identity, offset counter and history.
#[derive(Debug)]
pub struct Channel {
    /// Server-unique id; the worker-local index is keyed by it (cheaper to hash than the name).
    pub id: u64,
    /// The name as clients wrote it.
    pub name: Bytes,
    /// Topic, broadcast (`*`) or inbox (`@name`).
    pub kind: ChannelKind,
    /// The log's epoch, for message frames (fixed for the channel's life on one node: a freed
    /// name comes back as a new channel; in a cluster, Redis's, set when the log mirrors it).
    epoch: AtomicU64,
    /// Connections on this node subscribed to it (every worker's), for a Redis client's PUBLISH
    /// reply.
    pub subscribers: std::sync::atomic::AtomicU32,
    /// Joins and leaves of its members on this node so far (each event's `seq`).
    presence_seq: AtomicU64,
    /// Its last offset when `/api/info?top=` last looked (its message rate is since then;
    /// `u64::MAX`: not yet, no rate).
    pub sampled_offset: AtomicU64,
    /// Its namespace's history limits (`None`: the registry's).
    retention: Option<Arc<HistoryLimits>>,
    /// Offset counter and retained messages. Held while a message is claimed in the ring and
    /// appended here, which is what makes ring order equal offset order within a channel and the
    /// log gap-free.
    log: Mutex<ChannelLog>,
}

impl Channel {
    fn new(
        id: u64,
        name: Bytes,
        kind: ChannelKind,
        mirror: Mirror,
        retention: Option<Arc<HistoryLimits>>,
    ) -> Self {
        let mut log = ChannelLog::default();
        log.mirror = mirror;
        let epoch = AtomicU64::new(log.epoch);
        Channel {
            id,
            name,
            kind,
            epoch,
            subscribers: Default::default(),
            presence_seq: AtomicU64::new(0),
            sampled_offset: AtomicU64::new(u64::MAX),
            retention,
            log: Mutex::new(log),
        }
    }

    /// The history limits its namespace sets, if it is in one.
    pub fn namespace_limits(&self) -> Option<&HistoryLimits> {
        self.retention.as_deref()
    }

    /// The next join's or leave's place among this channel's on this node (from 1).
    pub fn next_presence_seq(&self) -> u64 {
        self.presence_seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The last number `next_presence_seq` gave.
    pub fn presence_seq_now(&self) -> u64 {
        self.presence_seq.load(Ordering::Relaxed)
    }

    /// The log's epoch (as `lock_log().epoch`, without the lock).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    /// Cluster mode: the log became a mirror of epoch `epoch` (called under the log's lock).
    pub fn set_epoch(&self, epoch: u64) {
        self.epoch.store(epoch, Ordering::Relaxed);
    }

    /// Locks the channel's log (offset counter and history).
    pub fn lock_log(&self) -> MutexGuard<'_, ChannelLog> {
        // Every update of the log leaves it consistent before the next statement can panic
        // (offsets are bumped after a successful publish, retention pops whole entries), so a
        // poisoned lock is still sound to use.
        self.log.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The offset of the latest message (0 when there is none yet).
    pub fn last_offset(&self) -> u64 {
        self.lock_log().last_offset()
    }
}

/// The offset of a ring item that is not a message but a notice (cluster mode): the channel's log
/// started over under a new epoch (its keys in Redis expired, or Redis lost them), so its
/// subscribers are told, as a resume would tell them, before the new log's messages follow.
pub const EPOCH_NOTICE: u64 = u64::MAX;

/// The offset of a ring item that tells a channel's subscribers that messages were lost for
/// good before the offset its payload holds (8 bytes, big-endian): in cluster mode, messages
/// that never reached this node and that the stream no longer holds. They get a HIST frame with
/// status `expired`, as a resume across the hole would.
pub const EXPIRED_NOTICE: u64 = u64::MAX - 1;

/// The offset of a ring item that carries joins and leaves of the channel's members
/// (`protocol::presence::put_event`s): subscribers hear them in order with the messages.
pub const PRESENCE_NOTICE: u64 = u64::MAX - 2;

/// Whether a ring item is a notice rather than a message.
pub fn is_notice(offset: u64) -> bool {
    offset >= PRESENCE_NOTICE
}

/// What travels through the ring: one published message (or an `EPOCH_NOTICE`).
#[derive(Debug)]
pub struct Message {
    /// Its channel.
    pub channel: Arc<Channel>,
    /// Its offset within the channel.
    pub offset: u64,
    /// Opaque payload, shared, never copied per subscriber.
    pub payload: Bytes,
    /// When it entered the node (`Shared::clock_ns`: the turn that read its publish, or the
    /// broker's receipt from Redis), for the delivery latency histogram.
    pub entered_ns: u64,
}

/// Why a channel could not be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// `max_channels` channels exist already.
    #[error("too many channels (the limit is {0})")]
    TooMany(usize),
}

/// Shards of the name map: a sweep step or a lookup holds one shard's lock, so neither stalls the
/// others for longer than one shard takes (about 1,000 channels of a million, half a
/// millisecond to sweep).
pub const NAME_SHARDS: usize = 1024;

/// One shard of the registry's name map.
type NameShard = HashMap<Bytes, Arc<Channel>>;

/// What one step of `ChannelRegistry::sweep_unused` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepStep {
    /// Channels freed.
    pub freed: usize,
    /// Shards of the name map looked at (a whole pass is `NAME_SHARDS`).
    pub shards: usize,
}

/// All channels by name, and the server-wide history cap over them.
///
/// Channels are freed when nothing uses them (`sweep_unused`): no subscriber, no publish in flight,
/// no name holder, nothing retained; so churning names cannot use `max_channels` up.
///
/// The name map is sharded (`NAME_SHARDS`), and a sweep takes it a few shards at a time: no lock
/// is held over every channel at once. Nothing here is shared by every worker per publish:
/// retention's order and totals are per appender (`server::retention`).
#[derive(Debug)]
pub struct ChannelRegistry {
    by_name: Box<[Mutex<NameShard>]>,
    /// Picks a name's shard; seeded per process, so that names cannot be chosen to pile up in
    /// one shard.
    shard_hasher: std::hash::RandomState,
    /// Channels in `by_name` (`*` included), for the limit.
    count: AtomicUsize,
    /// The next shard a sweep looks at.
    sweep_cursor: AtomicUsize,
    next_id: AtomicU64,
    max_channels: usize,
    /// How new channels start: `Mirror::Idle` in cluster mode.
    mirror: Mirror,
    broadcast: Arc<Channel>,
    /// Retention for every channel's log outside namespaces, and the server-wide total.
    pub history: HistoryLimits,
    /// Options per channel pattern.
    pub namespaces: crate::namespace::Namespaces,
    /// Each namespace's history limits, in `namespaces`' order.
    namespace_history: Vec<Arc<HistoryLimits>>,
    /// Every appender's retained messages and totals, for the server-wide cap.
    pub retention: Retention,
    /// Raised by a worker at the channel limit: every worker lets go of the unused channels its
    /// cache holds (which only it can), instead of at its next periodic pass.
    cache_pressure: AtomicU64,
}

/// Whether nothing but the registry holds `channel` (and it is not `*`, which stays). Asked under
/// the channel's shard lock, where a count of one cannot grow: every other way to the channel
/// goes through the map, so the answer holds until the lock is released.
fn only_the_registry_holds(channel: &Arc<Channel>) -> bool {
    channel.kind != ChannelKind::Broadcast && Arc::strong_count(channel) == 1
}

/// Locks a mutex whose holders leave the data consistent at every step, poisoned or not.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ChannelRegistry {
    /// An empty registry holding only the broadcast channel `*`, for `workers` workers (each an
    /// `Appender` of its own); in cluster mode (`mirror` is `Mirror::Idle`) its channels are
    /// served once the broker mirrors them.
    pub fn new(
        max_channels: usize,
        history: HistoryLimits,
        mirror: Mirror,
        workers: usize,
    ) -> Self {
        let broadcast =
            Channel::new(0, Bytes::from_static(b"*"), ChannelKind::Broadcast, mirror, None);
        let broadcast = Arc::new(broadcast);
        let registry = ChannelRegistry {
            by_name: (0..NAME_SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            shard_hasher: std::hash::RandomState::new(),
            count: AtomicUsize::new(1),
            sweep_cursor: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            max_channels,
            mirror,
            broadcast: broadcast.clone(),
            history,
            namespaces: Default::default(),
            namespace_history: Vec::new(),
            retention: Retention::new(workers),
            cache_pressure: AtomicU64::new(0),
        };
        registry.shard_of(&broadcast.name).insert(broadcast.name.clone(), broadcast);
        registry
    }

    /// Gives channels created from now on the options of their namespace.
    pub fn with_namespaces(mut self, namespaces: crate::namespace::Namespaces) -> Self {
        self.namespace_history =
            namespaces.iter().map(|(_, n)| Arc::new(n.history_limits(&self.history))).collect();
        self.namespaces = namespaces;
        self
    }

    /// The locked shard of the name map that holds `name`.
    fn shard_of(&self, name: &[u8]) -> MutexGuard<'_, NameShard> {
        let at = self.shard_hasher.hash_one(name) as usize % NAME_SHARDS;
        lock(&self.by_name[at])
    }

    /// The history limits of `channel`: its namespace's, or the server-wide ones.
    pub fn limits_of<'a>(&'a self, channel: &'a Channel) -> &'a HistoryLimits {
        channel.retention.as_deref().unwrap_or(&self.history)
    }

    /// The namespace's history limits for a channel named `name` (`None`: the registry's).
    fn retention_for(&self, name: &[u8]) -> Option<Arc<HistoryLimits>> {
        if self.namespace_history.is_empty() {
            return None;
        }
        self.namespaces.position(name).map(|at| self.namespace_history[at].clone())
    }

    /// The one way a message enters a channel, on a worker (a node alone) and on the broker
    /// (cluster mode, at the offset Redis gave): with the channel's log locked by the caller,
    /// into the ring when `deliver` (under the lock, so that ring order is offset order), then
    /// the log's next offset, then, when `keep` (history, or a storage thread), `before_retain`
    /// (the storage thread's queue, which so sees each channel's records in offset order) and
    /// history. A full ring changes nothing and hands the entry back. Returns the messages
    /// retention dropped; `appender` calls `maintain` once per turn.
    #[allow(clippy::too_many_arguments)]
    pub fn append(
        &self,
        appender: Appender,
        channel: &Arc<Channel>,
        log: &mut ChannelLog,
        producer: &mut Producer<Item>,
        entry: Retained,
        entered_ns: u64,
        deliver: bool,
        keep: bool,
        before_retain: impl FnOnce(&ChannelLog, &Retained),
    ) -> Result<usize, Retained> {
        let Retained { offset, published_ms, payload } = entry;
        // The payload is shared with history only when history keeps it (a clone of a `Bytes`
        // is an atomic, or an allocation for one made from a `Vec`).
        let (to_ring, kept) = match keep {
            true => (payload.clone(), Some(payload)),
            false => (payload, None),
        };
        if deliver {
            let channel = channel.clone();
            let message = Arc::new(Message { channel, offset, payload: to_ring, entered_ns });
            if let Err(message) = producer.try_publish(message) {
                let payload = kept.unwrap_or_else(|| {
                    Arc::try_unwrap(message).map_or_else(|m| m.payload.clone(), |m| m.payload)
                });
                return Err(Retained { offset, published_ms, payload });
            }
        }
        log.next_offset = offset + 1;
        let Some(payload) = kept else { return Ok(0) };
        let entry = Retained { offset, published_ms, payload };
        before_retain(log, &entry);
        Ok(self.retain(appender, channel, log, entry))
    }

    /// Appends a just-published message to its channel's log (whose lock the caller holds, the
    /// one that assigned the offset) and notes it in `appender`'s retention order. Returns the
    /// messages per-channel retention dropped.
    pub fn retain(
        &self,
        appender: Appender,
        channel: &Arc<Channel>,
        log: &mut ChannelLog,
        entry: Retained,
    ) -> usize {
        let limits = self.limits_of(channel);
        if limits.messages == 0 {
            return 0;
        }
        let (offset, published_ms) = (entry.offset, entry.published_ms);
        let dropped = log.append(entry, limits, self.retention.totals(appender));
        self.retention.note(appender, channel, offset, published_ms);
        dropped
    }

    /// `appender`'s retention step, once per turn (no channel lock held): the server-wide cap,
    /// and a bounded step of compaction. Returns the messages evicted.
    pub fn maintain(&self, appender: Appender) -> usize {
        self.retention.maintain(appender, self.history.total_bytes)
    }

    /// A step of compaction of what recovery from disk retained (`Appender::Startup`'s order,
    /// which nobody appends to after startup; worker 0 keeps it compacted).
    pub fn compact_recovered(&self) {
        let budget = crate::server::retention::COMPACT_BUDGET;
        self.retention.compact(Appender::Startup, self.retention.sum().1, budget);
    }

    /// The totals `appender`'s drops count against (`ChannelLog::trim` and the like).
    pub fn totals(&self, appender: Appender) -> &Totals {
        self.retention.totals(appender)
    }

    /// Drops the `count` globally oldest retained messages (at the channel limit, so that channels
    /// that only hold old history can be freed: a flood of fresh names evicts history, as a
    /// flood of bytes does, instead of locking every new channel out). Returns how many went.
    ///
    /// The channels it emptied are freed at once if nothing else holds them (a sweep step would
    /// likely look elsewhere).
    pub fn evict_oldest(
        &self,
        appender: Appender,
        count: usize,
        mut forget: impl FnMut(&Bytes),
    ) -> (usize, usize) {
        let (dropped, emptied) = self.retention.evict_oldest(appender, count);
        let mut freed = 0;
        for name in emptied {
            let mut shard = self.shard_of(&name);
            let unused = shard.get(&name).is_some_and(|channel| {
                only_the_registry_holds(channel) && channel.lock_log().retained().0 == 0
            });
            if unused {
                shard.remove(&name);
                forget(&name);
                self.count.fetch_sub(1, Ordering::Relaxed);
                freed += 1;
            }
        }
        (dropped, freed)
    }

    /// Rebuilds the server-wide order from the channels' logs (after recovery from disk), by
    /// publish time, then applies the server-wide cap. Returns the messages dropped.
    pub fn rebuild_retention_order(&self) -> usize {
        let mut entries = Vec::new();
        self.each(|channel| {
            let log = channel.lock_log();
            let weak = Arc::downgrade(channel);
            entries.extend(log.retained_times().map(|(offset, ms)| (weak.clone(), offset, ms)));
        });
        self.retention.rebuild(entries);
        self.maintain(Appender::Startup)
    }

    /// Frees channels that nothing uses, looking at whole shards of the name map from where the
    /// last sweep stopped until `budget` channels were looked at (or every shard once). Unused:
    /// no reference outside the registry (no subscriber, worker cache, message in the ring,
    /// replay or stalled publish holds it; an inbox's holder is its subscriber) and nothing
    /// retained once age retention is applied at `now_ms`. `forget` is called for each, under
    /// its shard's lock, so that anything done for a channel of the same name later comes after
    /// it.
    pub fn sweep_unused(
        &self,
        appender: Appender,
        now_ms: u64,
        budget: usize,
        mut forget: impl FnMut(&Bytes),
    ) -> SweepStep {
        let totals = self.retention.totals(appender);
        let mut step = SweepStep::default();
        let mut looked_at = 0;
        while looked_at < budget && step.shards < NAME_SHARDS {
            let at = self.sweep_cursor.fetch_add(1, Ordering::Relaxed) % NAME_SHARDS;
            let mut shard = lock(&self.by_name[at]);
            looked_at += shard.len();
            let before = shard.len();
            shard.retain(|name, channel| {
                if !only_the_registry_holds(channel) {
                    return true;
                }
                let mut log = channel.lock_log();
                log.trim(now_ms, self.limits_of(channel), totals);
                if log.retained().0 > 0 {
                    return true;
                }
                forget(name);
                false
            });
            let freed = before - shard.len();
            if shard.capacity() > 4 * shard.len() + 64 {
                shard.shrink_to_fit();
            }
            drop(shard);
            self.count.fetch_sub(freed, Ordering::Relaxed);
            step.freed += freed;
            step.shards += 1;
        }
        step
    }

    /// Cluster mode: if nothing but the registry and the broker (which passes its reference)
    /// holds `channel`, marks it idle and lets its mirrored history go, so that the broker can
    /// unsubscribe from it. Under its shard's lock, so no worker can take it meanwhile (they
    /// take channels from the registry, and any cached elsewhere counts).
    pub fn release_if_unused(&self, channel: &Arc<Channel>) -> bool {
        let _shard = self.shard_of(&channel.name);
        if Arc::strong_count(channel) > 2 {
            return false;
        }
        let mut log = channel.lock_log();
        let epoch = log.epoch;
        log.restart(epoch, self.retention.totals(Appender::Broker));
        log.mirror = Mirror::Idle;
        true
    }

    /// Topic channels (and `*`) with subscribers on this node whose names `keep` accepts
    /// (Redis's PUBSUB CHANNELS; inboxes are private and not listed).
    pub fn subscribed(&self, mut keep: impl FnMut(&[u8]) -> bool) -> Vec<Bytes> {
        let mut names = Vec::new();
        self.each(|c| {
            let listed = c.kind != ChannelKind::Inbox;
            if listed && c.subscribers.load(Ordering::Relaxed) > 0 && keep(&c.name) {
                names.push(c.name.clone());
            }
        });
        names
    }

    /// Asks every worker to let go of the unused channels its cache holds (see `cache_pressure`).
    pub fn ask_caches_to_let_go(&self) {
        self.cache_pressure.fetch_add(1, Ordering::Relaxed);
    }

    /// How many times caches were asked to let go (a worker compares it once per turn).
    pub fn cache_pressure(&self) -> u64 {
        self.cache_pressure.load(Ordering::Relaxed)
    }

    /// The channel of that name, if it exists.
    pub fn find(&self, name: &[u8]) -> Option<Arc<Channel>> {
        self.shard_of(name).get(name).cloned()
    }

    /// The channel of that (already validated) name, created if needed.
    pub fn get_or_create(&self, name: &[u8]) -> Result<Arc<Channel>, ChannelError> {
        let mut shard = self.shard_of(name);
        if let Some(channel) = shard.get(name) {
            return Ok(channel.clone());
        }
        if self.count.fetch_add(1, Ordering::Relaxed) >= self.max_channels {
            self.count.fetch_sub(1, Ordering::Relaxed);
            return Err(ChannelError::TooMany(self.max_channels));
        }
        let kind = validate_channel(name).unwrap_or(ChannelKind::Topic);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let retention = self.retention_for(name);
        let channel =
            Arc::new(Channel::new(id, Bytes::copy_from_slice(name), kind, self.mirror, retention));
        shard.insert(channel.name.clone(), channel.clone());
        Ok(channel)
    }

    /// Puts a channel read back from disk in place (before any worker runs).
    pub fn restore(&self, name: Bytes, log: ChannelLog) {
        let kind = validate_channel(&name).unwrap_or(ChannelKind::Topic);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let epoch = AtomicU64::new(log.epoch);
        let channel = Channel {
            id,
            name: name.clone(),
            kind,
            epoch,
            subscribers: Default::default(),
            presence_seq: AtomicU64::new(0),
            sampled_offset: AtomicU64::new(u64::MAX),
            retention: self.retention_for(&name),
            log: Mutex::new(log),
        };
        if self.shard_of(&name).insert(name, Arc::new(channel)).is_none() {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The broadcast channel `*`.
    pub fn broadcast(&self) -> &Arc<Channel> {
        &self.broadcast
    }

    /// The topic channels with subscribers on this node and their counts, those `keep` takes
    /// (the server API's listing). Walks every channel, a shard at a time: for an operator's
    /// occasional call, not for a client.
    pub fn subscriber_counts(&self, mut keep: impl FnMut(&[u8]) -> bool) -> Vec<(Bytes, u32)> {
        let mut counts = Vec::new();
        self.each(|channel| {
            let count = channel.subscribers.load(Ordering::Relaxed);
            if channel.kind == ChannelKind::Topic && count > 0 && keep(&channel.name) {
                counts.push((channel.name.clone(), count));
            }
        });
        counts
    }

    /// Calls `f` with every channel, under its shard's lock.
    pub fn each(&self, mut f: impl FnMut(&Arc<Channel>)) {
        for shard in self.by_name.iter() {
            lock(shard).values().for_each(&mut f);
        }
    }

    /// Number of channels, `*` included.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Never true: `*` always exists.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Client names claimed with `NAME`; unique across the server.
#[derive(Debug, Default)]
pub struct NameRegistry {
    claimed: Mutex<HashSet<Box<[u8]>>>,
}

impl NameRegistry {
    fn claimed(&self) -> MutexGuard<'_, HashSet<Box<[u8]>>> {
        lock(&self.claimed)
    }

    /// Claims `name`; false when another connection holds it.
    pub fn claim(&self, name: &[u8]) -> bool {
        self.claimed().insert(name.into())
    }

    /// Releases a name held by a closing connection.
    pub fn release(&self, name: &[u8]) {
        self.claimed().remove(name);
    }

    /// Whether some connection holds `name`.
    pub fn is_claimed(&self, name: &[u8]) -> bool {
        self.claimed().contains(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::retention::COMPACT_BUDGET;

    #[test]
    fn registry_interns_names_and_enforces_the_limit() {
        let history =
            HistoryLimits { messages: 0, bytes: 0, age: std::time::Duration::ZERO, total_bytes: 0 };
        let registry = ChannelRegistry::new(3, history, Mirror::Standalone, 1);
        let a = registry.get_or_create(b"a").unwrap();
        assert!(Arc::ptr_eq(&a, &registry.get_or_create(b"a").unwrap()));
        assert_eq!(registry.get_or_create(b"@bob").unwrap().kind, ChannelKind::Inbox);
        assert_eq!(registry.get_or_create(b"c").unwrap_err(), ChannelError::TooMany(3));
        assert_eq!(registry.get_or_create(b"*").unwrap().kind, ChannelKind::Broadcast);
        assert_eq!(a.last_offset(), 0);
    }

    /// Publishes `payload` to `channel` as `appender` at `published_ms`, then runs the
    /// appender's turn-end step, as a worker does.
    fn publish_at(
        registry: &ChannelRegistry,
        appender: Appender,
        channel: &Arc<Channel>,
        payload: &'static [u8],
        published_ms: u64,
    ) {
        let mut log = channel.lock_log();
        let offset = log.next_offset;
        log.next_offset += 1;
        let entry = Retained { offset, published_ms, payload: Bytes::from_static(payload) };
        registry.retain(appender, channel, &mut log, entry);
        drop(log);
        registry.maintain(appender);
    }

    fn publish(registry: &ChannelRegistry, channel: &Arc<Channel>, payload: &'static [u8]) {
        publish_at(registry, Appender::Worker(0), channel, payload, 0);
    }

    fn retained_offsets(channel: &Channel) -> Vec<u64> {
        let mut out = Vec::new();
        channel.lock_log().read_after(0, usize::MAX, usize::MAX, &mut out);
        out.iter().map(|r| r.offset).collect()
    }

    #[test]
    fn the_server_wide_cap_evicts_the_globally_oldest() {
        let cost = crate::history::retained_cost(b"0123456789");
        let history = HistoryLimits {
            messages: 100,
            bytes: usize::MAX,
            age: std::time::Duration::ZERO,
            total_bytes: 10 * cost,
        };
        let registry = ChannelRegistry::new(10, history, Mirror::Standalone, 1);
        let (a, b) = (registry.get_or_create(b"a").unwrap(), registry.get_or_create(b"b").unwrap());
        for _ in 0..8 {
            publish(&registry, &a, b"0123456789");
        }
        for _ in 0..4 {
            publish(&registry, &b, b"0123456789");
        }
        assert_eq!(retained_offsets(&a), (3..=8).collect::<Vec<_>>(), "a's oldest went");
        assert_eq!(retained_offsets(&b), vec![1, 2, 3, 4], "b, the publisher, kept all");
        assert_eq!(registry.retention.sum(), (10 * cost, 10));
    }

    #[test]
    fn the_cap_evicts_by_publish_time_across_appenders() {
        let cost = crate::history::retained_cost(b"x");
        let history = HistoryLimits {
            messages: 100,
            bytes: usize::MAX,
            age: std::time::Duration::ZERO,
            total_bytes: 6 * cost,
        };
        let registry = ChannelRegistry::new(10, history, Mirror::Standalone, 2);
        let (a, b) = (registry.get_or_create(b"a").unwrap(), registry.get_or_create(b"b").unwrap());
        let (one, two) = (Appender::Worker(0), Appender::Worker(1));
        // Worker 0 publishes at even milliseconds to a, worker 1 at odd ones to b, and worker 1
        // also publishes to a: a channel's messages come from both shards.
        for ms in 0..4u64 {
            publish_at(&registry, one, &a, b"x", 2 * ms);
            publish_at(&registry, two, &b, b"x", 2 * ms + 1);
        }
        publish_at(&registry, two, &a, b"x", 100);
        // Nine published, six kept: the three oldest by time (a#1 at 0, b#1 at 1, a#2 at 2).
        assert_eq!(retained_offsets(&a), vec![3, 4, 5]);
        assert_eq!(retained_offsets(&b), vec![2, 3, 4]);
        assert_eq!(registry.retention.sum(), (6 * cost, 6), "the shards sum to what is kept");
        // Worker 1 evicts what worker 0 retained: its share wraps below zero, the sum holds.
        registry.evict_oldest(two, 4, |_| {});
        assert_eq!(retained_offsets(&a), vec![5]);
        assert_eq!(retained_offsets(&b), vec![4]);
        assert_eq!(registry.retention.sum(), (2 * cost, 2));
    }

    #[test]
    fn stale_order_entries_are_compacted_a_budget_at_a_time() {
        let history = HistoryLimits {
            messages: 2,
            bytes: usize::MAX,
            age: std::time::Duration::ZERO,
            total_bytes: usize::MAX,
        };
        let registry = ChannelRegistry::new(10, history, Mirror::Standalone, 1);
        let a = registry.get_or_create(b"a").unwrap();
        let mut most = 0;
        for _ in 0..50_000 {
            publish(&registry, &a, b"x");
            most = most.max(registry.retention.entries());
        }
        // A compaction begins past 2 x live + budget entries and looks at a budget per turn:
        // meanwhile one more budget's worth of entries arrives at most.
        assert!(most <= 2 * 2 + 3 * COMPACT_BUDGET, "the order stayed bounded: {most}");
        for _ in 0..4 {
            registry.maintain(Appender::Worker(0));
        }
        assert!(registry.retention.entries() < 2 * 2 + COMPACT_BUDGET + 2);
        assert_eq!(retained_offsets(&a), vec![49_999, 50_000]);
        assert_eq!(registry.retention.sum().1, 2);
    }

    #[test]
    fn eviction_during_a_compaction_keeps_the_order() {
        let cost = crate::history::retained_cost(b"x");
        let history = HistoryLimits {
            messages: 1,
            bytes: usize::MAX,
            age: std::time::Duration::ZERO,
            total_bytes: usize::MAX,
        };
        let registry = ChannelRegistry::new(20_000, history, Mirror::Standalone, 1);
        let hot = registry.get_or_create(b"hot").unwrap();
        // A hot channel leaves stale entries; quiet channels' single messages are live.
        let quiet: Vec<_> = (0..3000)
            .map(|i| registry.get_or_create(format!("q{i}").as_bytes()).unwrap())
            .collect();
        let mut ms = 0;
        for channel in &quiet {
            for _ in 0..4 {
                ms += 1;
                publish_at(&registry, Appender::Worker(0), &hot, b"x", ms);
            }
            ms += 1;
            publish_at(&registry, Appender::Worker(0), channel, b"x", ms);
        }
        // Evicting now takes the oldest live ones first, compaction under way or not.
        assert_eq!(registry.evict_oldest(Appender::Worker(0), 10, |_| {}).0, 10);
        for (i, channel) in quiet.iter().enumerate() {
            assert_eq!(retained_offsets(channel).is_empty(), i < 10, "quiet channel {i}");
        }
        assert_eq!(registry.retention.sum(), (2991 * cost, 2991));
    }

    #[test]
    fn compaction_outpaces_any_publish_rate() {
        let history = HistoryLimits {
            messages: 1,
            bytes: usize::MAX,
            age: std::time::Duration::ZERO,
            total_bytes: usize::MAX,
        };
        let registry = ChannelRegistry::new(10, history, Mirror::Standalone, 1);
        let a = registry.get_or_create(b"a").unwrap();
        // 20,000 publishes a turn (a pipelining client's read budget), then the turn's step.
        for _turn in 0..20 {
            for _ in 0..20_000 {
                let mut log = a.lock_log();
                let offset = log.next_offset;
                log.next_offset += 1;
                let entry = Retained { offset, published_ms: 0, payload: Bytes::from_static(b"x") };
                registry.retain(Appender::Worker(0), &a, &mut log, entry);
            }
            registry.maintain(Appender::Worker(0));
        }
        // Each step checks twice what was noted since the last: the order stays within a few
        // turns' worth, whatever the rate (a fixed budget would grow it without bound).
        let entries = registry.retention.entries();
        assert!(entries <= 3 * 20_000 + COMPACT_BUDGET, "{entries} entries for one live message");
    }

    #[test]
    fn late_mirrored_history_is_not_taken_for_the_oldest() {
        let cost = crate::history::retained_cost(b"x");
        let history = HistoryLimits {
            messages: 100,
            bytes: usize::MAX,
            age: std::time::Duration::ZERO,
            total_bytes: 3 * cost,
        };
        let registry = ChannelRegistry::new(10, history, Mirror::Standalone, 1);
        let (old, new) =
            (registry.get_or_create(b"old").unwrap(), registry.get_or_create(b"new").unwrap());
        // A worker publishes at 100 and 101; the broker then mirrors a channel whose history was
        // published long ago (at 5 and 6) and, in the same shard, a fresh message at 200.
        publish_at(&registry, Appender::Worker(0), &new, b"x", 100);
        publish_at(&registry, Appender::Worker(0), &new, b"x", 101);
        publish_at(&registry, Appender::Broker, &old, b"x", 200);
        publish_at(&registry, Appender::Broker, &old, b"x", 5);
        // Over the cap by one: the worker's message at 100 goes, the oldest noted here; the
        // mirrored ones count from when they arrived, behind the broker's front.
        assert_eq!(retained_offsets(&new), vec![2]);
        assert_eq!(retained_offsets(&old), vec![1, 2]);
    }

    #[test]
    fn eviction_at_the_channel_limit_frees_what_it_emptied() {
        let history = HistoryLimits {
            messages: 10,
            bytes: usize::MAX,
            age: std::time::Duration::ZERO,
            total_bytes: usize::MAX,
        };
        let registry = ChannelRegistry::new(100, history, Mirror::Standalone, 1);
        for i in 0..50 {
            let channel = registry.get_or_create(format!("c{i}").as_bytes()).unwrap();
            publish_at(&registry, Appender::Worker(0), &channel, b"x", i);
        }
        let held = registry.get_or_create(b"c1").unwrap();
        let mut forgotten = Vec::new();
        let (dropped, freed) =
            registry.evict_oldest(Appender::Worker(0), 3, |name| forgotten.push(name.clone()));
        assert_eq!((dropped, freed), (3, 2), "c0 and c2 freed; c1 is held");
        assert_eq!(forgotten, vec![Bytes::from_static(b"c0"), Bytes::from_static(b"c2")]);
        assert_eq!(registry.len(), 1 + 48);
        assert!(registry.find(b"c1").is_some_and(|c| Arc::ptr_eq(&c, &held)));
    }

    #[test]
    fn appenders_on_threads_keep_the_sum_exact() {
        let cost = crate::history::retained_cost(b"0123456789");
        let history = HistoryLimits {
            messages: 50,
            bytes: usize::MAX,
            age: std::time::Duration::ZERO,
            total_bytes: 300 * cost,
        };
        let registry = Arc::new(ChannelRegistry::new(100, history, Mirror::Standalone, 3));
        let channels: Vec<_> =
            (0..8).map(|i| registry.get_or_create(format!("c{i}").as_bytes()).unwrap()).collect();
        let threads: Vec<_> = (0..3)
            .map(|worker| {
                let (registry, channels) = (registry.clone(), channels.clone());
                std::thread::spawn(move || {
                    for i in 0..20_000u64 {
                        let channel = &channels[(i as usize * 7 + worker) % channels.len()];
                        let appender = Appender::Worker(worker);
                        publish_at(&registry, appender, channel, b"0123456789", i);
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let kept: usize = channels.iter().map(|c| c.lock_log().retained().0).sum();
        assert_eq!(registry.retention.sum(), (kept * cost, kept));
        assert!(kept <= 300 + 2 * 3, "over the cap by at most a turn per appender: {kept}");
    }

    #[test]
    fn unused_channels_are_freed_and_names_come_back_fresh() {
        let history = HistoryLimits {
            messages: 10,
            bytes: usize::MAX,
            age: std::time::Duration::from_millis(1000),
            total_bytes: usize::MAX,
        };
        let registry = ChannelRegistry::new(3, history, Mirror::Standalone, 1);
        let kept = registry.get_or_create(b"kept").unwrap();
        let retaining = registry.get_or_create(b"retaining").unwrap();
        publish(&registry, &retaining, b"m");
        let epoch = retaining.lock_log().epoch;
        drop(retaining);
        assert_eq!(registry.get_or_create(b"c").unwrap_err(), ChannelError::TooMany(3));
        let mut forgotten = Vec::new();
        let appender = Appender::Worker(0);
        let step = registry.sweep_unused(appender, 0, usize::MAX, |n| forgotten.push(n.clone()));
        assert_eq!(step, SweepStep { freed: 0, shards: NAME_SHARDS }, "a whole pass, none freed");
        // Past the age limit, the retained message goes, and so does its channel.
        let step =
            registry.sweep_unused(appender, 5_000, usize::MAX, |n| forgotten.push(n.clone()));
        assert_eq!(step.freed, 1);
        assert_eq!(forgotten, vec![Bytes::from_static(b"retaining")]);
        assert_eq!(registry.len(), 2, "* and the one still held");
        let again = registry.get_or_create(b"retaining").unwrap();
        assert_eq!(again.last_offset(), 0);
        assert_ne!(again.lock_log().epoch, epoch, "a new log: resumes see the epoch change");
        assert!(Arc::ptr_eq(&kept, &registry.get_or_create(b"kept").unwrap()));
    }

    #[test]
    fn a_sweep_step_stops_at_its_budget_and_the_next_goes_on() {
        let history =
            HistoryLimits { messages: 0, bytes: 0, age: Default::default(), total_bytes: 0 };
        let registry = ChannelRegistry::new(100_000, history, Mirror::Standalone, 1);
        for i in 0..20_000 {
            registry.get_or_create(format!("c{i}").as_bytes()).unwrap();
        }
        let mut freed = 0;
        let mut steps = 0;
        let mut shards = 0;
        while shards < NAME_SHARDS {
            let step = registry.sweep_unused(Appender::Worker(0), 0, 1000, |_| {});
            // Whole shards: the budget is passed by one shard's channels at most.
            assert!(step.freed <= 1000 + 2 * 20_000 / NAME_SHARDS, "{step:?}");
            freed += step.freed;
            shards += step.shards;
            steps += 1;
        }
        assert_eq!((freed, registry.len()), (20_000, 1), "one pass freed all but *");
        assert!(steps >= 15, "a budget at a time: {steps} steps");
    }

    #[test]
    fn names_are_unique_until_released() {
        let names = NameRegistry::default();
        assert!(names.claim(b"alice"));
        assert!(!names.claim(b"alice"));
        names.release(b"alice");
        assert!(names.claim(b"alice"));
    }
}
