//! Channels, the messages that travel the ring, and the server-wide registries of channel names and
//! client names. These are the only structures workers share besides the ring; none is touched per
//! subscriber. The registry's map is looked up when a worker meets a name it has not cached (each
//! worker caches the `Arc<Channel>`s it uses), by the sweep that frees unused channels (and at
//! the channel limit), and by the server API's listings. With history on, every publish also
//! takes the server-wide retention order's lock (`retain`) and updates the global totals: the
//! one lock all workers share on the publish path.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use bytes::Bytes;

use crate::history::{ChannelLog, HistoryLimits, Mirror, Retained, Totals};
use crate::protocol::{validate_channel, ChannelKind};
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

/// All channels by name, and the order in which messages were retained over all of them.
///
/// Channels are freed when nothing uses them (`sweep_unused`): no subscriber, no publish in flight,
/// no name holder, nothing retained; so churning names cannot use `max_channels` up.
///
/// Locks: a channel's log, then `retention_order` (publishers push under their channel's lock, so
/// each channel's entries are in offset order); `evicting`, then either of the others alone.
#[derive(Debug)]
pub struct ChannelRegistry {
    by_name: Mutex<HashMap<Bytes, Arc<Channel>>>,
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
    /// Bytes and messages retained over all channels.
    pub retained: Totals,
    /// Every retained message as (its channel, its offset), oldest first: the server-wide cap
    /// evicts from the front. Messages that per-channel retention dropped leave stale entries,
    /// skipped when met and swept out once they outnumber the live ones (`compact_due`).
    retention_order: Mutex<VecDeque<(Weak<Channel>, u64)>>,
    compact_due: AtomicBool,
    /// Held by whoever evicts or compacts, so that the two never interleave.
    evicting: Mutex<()>,
}

/// Locks a mutex whose holders leave the data consistent at every step, poisoned or not.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ChannelRegistry {
    /// An empty registry holding only the broadcast channel `*`; in cluster mode (`mirror` is
    /// `Mirror::Idle`) its channels are served once the broker mirrors them.
    pub fn new(max_channels: usize, history: HistoryLimits, mirror: Mirror) -> Self {
        let broadcast =
            Channel::new(0, Bytes::from_static(b"*"), ChannelKind::Broadcast, mirror, None);
        let broadcast = Arc::new(broadcast);
        let by_name = HashMap::from([(broadcast.name.clone(), broadcast.clone())]);
        ChannelRegistry {
            by_name: Mutex::new(by_name),
            next_id: AtomicU64::new(1),
            max_channels,
            mirror,
            broadcast,
            history,
            namespaces: Default::default(),
            namespace_history: Vec::new(),
            retained: Totals::default(),
            retention_order: Mutex::new(VecDeque::new()),
            compact_due: AtomicBool::new(false),
            evicting: Mutex::new(()),
        }
    }

    /// Gives channels created from now on the options of their namespace.
    pub fn with_namespaces(mut self, namespaces: crate::namespace::Namespaces) -> Self {
        self.namespace_history =
            namespaces.iter().map(|(_, n)| Arc::new(n.history_limits(&self.history))).collect();
        self.namespaces = namespaces;
        self
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
    /// retention dropped; call `after_publish` once the lock is released.
    #[allow(clippy::too_many_arguments)]
    pub fn append(
        &self,
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
        Ok(self.retain(channel, log, entry))
    }

    /// Appends a just-published message to its channel's log (whose lock the caller holds, the
    /// one that assigned the offset) and notes it in the server-wide order. Returns the
    /// messages per-channel retention dropped; call `after_publish` once the lock is released.
    pub fn retain(&self, channel: &Arc<Channel>, log: &mut ChannelLog, entry: Retained) -> usize {
        let limits = self.limits_of(channel);
        if limits.messages == 0 {
            return 0;
        }
        let offset = entry.offset;
        let dropped = log.append(entry, limits, &self.retained);
        let mut order = lock(&self.retention_order);
        order.push_back((Arc::downgrade(channel), offset));
        let live = self.retained.messages.load(Ordering::Relaxed);
        if order.len() > 2 * live + 4096 {
            self.compact_due.store(true, Ordering::Relaxed);
        }
        dropped
    }

    /// Applies the server-wide cap after a publish (no channel lock held): evicts the globally
    /// oldest messages while the total is over it. Returns the messages dropped.
    pub fn after_publish(&self) -> usize {
        // Load first: a swap on every publish would bounce the flag's line between cores.
        if self.compact_due.load(Ordering::Relaxed)
            && self.compact_due.swap(false, Ordering::Relaxed)
        {
            self.compact_retention_order();
        }
        if self.retained.bytes.load(Ordering::Relaxed) <= self.history.total_bytes {
            return 0;
        }
        self.evict_while(|_| self.retained.bytes.load(Ordering::Relaxed) > self.history.total_bytes)
    }

    /// Drops the `count` globally oldest retained messages (at the channel limit, so that channels
    /// that only hold old history can be freed: a flood of fresh names evicts history, as a
    /// flood of bytes does, instead of locking every new channel out). Returns how many went.
    pub fn evict_oldest(&self, count: usize) -> usize {
        self.evict_while(|dropped| dropped < count)
    }

    /// Drops the globally oldest retained messages while `more(dropped so far)` holds (or the
    /// order runs out); returns how many went.
    fn evict_while(&self, more: impl Fn(usize) -> bool) -> usize {
        let _evicting = lock(&self.evicting);
        let mut dropped = 0;
        while more(dropped) {
            let Some((channel, offset)) = lock(&self.retention_order).pop_front() else { break };
            if let Some(channel) = channel.upgrade() {
                dropped += channel.lock_log().drop_through(offset, &self.retained);
            }
        }
        dropped
    }

    /// Drops the entries of messages that are no longer retained.
    fn compact_retention_order(&self) {
        let _evicting = lock(&self.evicting);
        let taken = std::mem::take(&mut *lock(&self.retention_order));
        let mut live: VecDeque<_> = taken
            .into_iter()
            .filter(|(channel, offset)| {
                channel.upgrade().is_some_and(|c| {
                    let log = c.lock_log();
                    *offset >= log.first_retained() && *offset <= log.last_offset()
                })
            })
            .collect();
        let mut order = lock(&self.retention_order);
        // Whatever was pushed meanwhile is newer than everything taken.
        live.append(&mut order);
        *order = live;
    }

    /// Rebuilds the server-wide order from the channels' logs (after recovery from disk), by
    /// publish time, then applies the server-wide cap. Returns the messages dropped.
    pub fn rebuild_retention_order(&self) -> usize {
        let mut entries: Vec<(u64, Weak<Channel>, u64)> = Vec::new();
        for channel in lock(&self.by_name).values() {
            let log = channel.lock_log();
            entries.extend(
                log.retained_times().map(|(offset, ms)| (ms, Arc::downgrade(channel), offset)),
            );
        }
        entries.sort_by_key(|(ms, ..)| *ms);
        *lock(&self.retention_order) =
            entries.into_iter().map(|(_, channel, offset)| (channel, offset)).collect();
        self.after_publish()
    }

    /// Frees every channel that nothing uses: no reference outside the registry (no subscriber,
    /// worker cache, message in the ring, replay or stalled publish holds it; an inbox's holder
    /// is its subscriber) and nothing retained once age retention is applied at `now_ms`.
    /// `forget` is called for each, under the registry's lock, so that anything done for a
    /// channel of the same name later comes after it. Returns how many were freed.
    pub fn sweep_unused(&self, now_ms: u64, mut forget: impl FnMut(&Bytes)) -> usize {
        let mut by_name = lock(&self.by_name);
        let before = by_name.len();
        by_name.retain(|name, channel| {
            // Under the registry's lock, a count of one cannot grow: every other way to the
            // channel goes through this map.
            if channel.kind == ChannelKind::Broadcast || Arc::strong_count(channel) > 1 {
                return true;
            }
            let mut log = channel.lock_log();
            log.trim(now_ms, self.limits_of(channel), &self.retained);
            if log.retained().0 > 0 {
                return true;
            }
            forget(name);
            false
        });
        before - by_name.len()
    }

    /// Cluster mode: if nothing but the registry and the broker (which passes its reference)
    /// holds `channel`, marks it idle and lets its mirrored history go, so that the broker can
    /// unsubscribe from it. Under the registry's lock, so no worker can take it meanwhile (they
    /// take channels from the registry, and any cached elsewhere counts).
    pub fn release_if_unused(&self, channel: &Arc<Channel>) -> bool {
        let _by_name = lock(&self.by_name);
        if Arc::strong_count(channel) > 2 {
            return false;
        }
        let mut log = channel.lock_log();
        let epoch = log.epoch;
        log.restart(epoch, &self.retained);
        log.mirror = Mirror::Idle;
        true
    }

    /// Topic channels (and `*`) with subscribers on this node whose names `keep` accepts
    /// (Redis's PUBSUB CHANNELS; inboxes are private and not listed).
    pub fn subscribed(&self, mut keep: impl FnMut(&[u8]) -> bool) -> Vec<Bytes> {
        lock(&self.by_name)
            .values()
            .filter(|c| c.kind != ChannelKind::Inbox)
            .filter(|c| c.subscribers.load(Ordering::Relaxed) > 0 && keep(&c.name))
            .map(|c| c.name.clone())
            .collect()
    }

    /// The channel of that name, if it exists.
    pub fn find(&self, name: &[u8]) -> Option<Arc<Channel>> {
        lock(&self.by_name).get(name).cloned()
    }

    /// The channel of that (already validated) name, created if needed.
    pub fn get_or_create(&self, name: &[u8]) -> Result<Arc<Channel>, ChannelError> {
        let mut by_name = lock(&self.by_name);
        if let Some(channel) = by_name.get(name) {
            return Ok(channel.clone());
        }
        if by_name.len() >= self.max_channels {
            return Err(ChannelError::TooMany(self.max_channels));
        }
        let kind = validate_channel(name).unwrap_or(ChannelKind::Topic);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let retention = self.retention_for(name);
        let channel =
            Arc::new(Channel::new(id, Bytes::copy_from_slice(name), kind, self.mirror, retention));
        by_name.insert(channel.name.clone(), channel.clone());
        Ok(channel)
    }

    /// Puts a channel read back from disk in place (before any worker runs).
    pub fn restore(&self, name: Bytes, log: ChannelLog) {
        let mut by_name = lock(&self.by_name);
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
        by_name.insert(name, Arc::new(channel));
    }

    /// The broadcast channel `*`.
    pub fn broadcast(&self) -> &Arc<Channel> {
        &self.broadcast
    }

    /// The topic channels with subscribers on this node and their counts, those `keep` takes
    /// (the server API's listing). Walks every channel under the registry's lock: for an
    /// operator's occasional call, not for a client.
    pub fn subscriber_counts(&self, mut keep: impl FnMut(&[u8]) -> bool) -> Vec<(Bytes, u32)> {
        let by_name = lock(&self.by_name);
        by_name
            .values()
            .filter(|channel| channel.kind == ChannelKind::Topic)
            .map(|channel| (channel, channel.subscribers.load(Ordering::Relaxed)))
            .filter(|(channel, count)| *count > 0 && keep(&channel.name))
            .map(|(channel, count)| (channel.name.clone(), count))
            .collect()
    }

    /// Calls `f` with every channel, under the registry's lock.
    pub fn each(&self, mut f: impl FnMut(&Arc<Channel>)) {
        lock(&self.by_name).values().for_each(&mut f);
    }

    /// Number of channels, `*` included.
    pub fn len(&self) -> usize {
        lock(&self.by_name).len()
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

    #[test]
    fn registry_interns_names_and_enforces_the_limit() {
        let history =
            HistoryLimits { messages: 0, bytes: 0, age: std::time::Duration::ZERO, total_bytes: 0 };
        let registry = ChannelRegistry::new(3, history, Mirror::Standalone);
        let a = registry.get_or_create(b"a").unwrap();
        assert!(Arc::ptr_eq(&a, &registry.get_or_create(b"a").unwrap()));
        assert_eq!(registry.get_or_create(b"@bob").unwrap().kind, ChannelKind::Inbox);
        assert_eq!(registry.get_or_create(b"c").unwrap_err(), ChannelError::TooMany(3));
        assert_eq!(registry.get_or_create(b"*").unwrap().kind, ChannelKind::Broadcast);
        assert_eq!(a.last_offset(), 0);
    }

    fn publish(registry: &ChannelRegistry, channel: &Arc<Channel>, payload: &'static [u8]) {
        let mut log = channel.lock_log();
        let offset = log.next_offset;
        log.next_offset += 1;
        let entry = Retained { offset, published_ms: 0, payload: Bytes::from_static(payload) };
        registry.retain(channel, &mut log, entry);
        drop(log);
        registry.after_publish();
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
        let registry = ChannelRegistry::new(10, history, Mirror::Standalone);
        let (a, b) = (registry.get_or_create(b"a").unwrap(), registry.get_or_create(b"b").unwrap());
        for _ in 0..8 {
            publish(&registry, &a, b"0123456789");
        }
        for _ in 0..4 {
            publish(&registry, &b, b"0123456789");
        }
        assert_eq!(retained_offsets(&a), (3..=8).collect::<Vec<_>>(), "a's oldest went");
        assert_eq!(retained_offsets(&b), vec![1, 2, 3, 4], "b, the publisher, kept all");
        assert_eq!(registry.retained.bytes.load(Ordering::Relaxed), 10 * cost);
    }

    #[test]
    fn stale_order_entries_are_swept_out() {
        let history = HistoryLimits {
            messages: 2,
            bytes: usize::MAX,
            age: std::time::Duration::ZERO,
            total_bytes: usize::MAX,
        };
        let registry = ChannelRegistry::new(10, history, Mirror::Standalone);
        let a = registry.get_or_create(b"a").unwrap();
        for _ in 0..20_000 {
            publish(&registry, &a, b"x");
        }
        assert!(lock(&registry.retention_order).len() <= 4096 + 4 + 1, "compacted");
        assert_eq!(retained_offsets(&a), vec![19_999, 20_000]);
    }

    #[test]
    fn unused_channels_are_freed_and_names_come_back_fresh() {
        let history = HistoryLimits {
            messages: 10,
            bytes: usize::MAX,
            age: std::time::Duration::from_millis(1000),
            total_bytes: usize::MAX,
        };
        let registry = ChannelRegistry::new(3, history, Mirror::Standalone);
        let kept = registry.get_or_create(b"kept").unwrap();
        let retaining = registry.get_or_create(b"retaining").unwrap();
        publish(&registry, &retaining, b"m");
        let epoch = retaining.lock_log().epoch;
        drop(retaining);
        assert_eq!(registry.get_or_create(b"c").unwrap_err(), ChannelError::TooMany(3));
        let mut forgotten = Vec::new();
        assert_eq!(registry.sweep_unused(0, |name| forgotten.push(name.clone())), 0);
        // Past the age limit, the retained message goes, and so does its channel.
        assert_eq!(registry.sweep_unused(5_000, |name| forgotten.push(name.clone())), 1);
        assert_eq!(forgotten, vec![Bytes::from_static(b"retaining")]);
        assert_eq!(registry.len(), 2, "* and the one still held");
        let again = registry.get_or_create(b"retaining").unwrap();
        assert_eq!(again.last_offset(), 0);
        assert_ne!(again.lock_log().epoch, epoch, "a new log: resumes see the epoch change");
        assert!(Arc::ptr_eq(&kept, &registry.get_or_create(b"kept").unwrap()));
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
