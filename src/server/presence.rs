//! Presence: who is subscribed to the channels that ask for it (`--presence`, `--join-leave`).
//!
//! A channel's members are its subscribed connections (not long-polls, which come and go per
//! request). This node's members are kept here, by channel, under one of a few sharded locks
//! taken per subscribe and unsubscribe of a tracked channel (never per message, never for an
//! untracked channel: a broadcast channel with a million subscribers pays one pattern check
//! per subscribe). On one node this is the whole answer to `PRESENCE`; in a cluster it is what
//! the node writes to Redis, where every node's members meet (`cluster::presence`).
//!
//! Join and leave events are not sent one by one: each worker gathers its connections' events
//! per channel for `--join-leave-window-ms` (`Outbox`), where a join and a leave of the same
//! connection cancel out, and then sends them as one ring item (one node) or one Redis call
//! (cluster), so a reconnect storm costs a frame per window per subscriber, not one per event.
//! A member's join goes out before that member's first publish to the channel (the worker
//! flushes the channel's pending events first), so subscribers see who speaks before they hear
//! them.
//!
//! What a member is told agrees with what presence answers it: on a join/leave channel a member
//! is shown once its join has gone out (so one that came and went within a window, never
//! announced, was never shown), and a member is not sent the batches its node sent before it
//! joined (their joins are shown, their leaves no longer), while it is sent those still in a
//! window when it joined (see `worker::presence::send_presence`, `worker::fanout::EventMarks`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;

use crate::auth::pattern::Patterns;
use crate::protocol::presence::Member;

/// Presence settings (`--presence`, `--join-leave`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceConfig {
    /// Channel patterns whose members are tracked (answer `PRESENCE`).
    pub presence: Vec<String>,
    /// Channel patterns whose subscribers receive join and leave events (tracked too).
    pub join_leave: Vec<String>,
    /// A presence answer with more members than this is refused (use the stats instead).
    pub max_members: usize,
    /// How long a worker gathers join and leave events before sending them.
    pub window: Duration,
    /// Cluster mode: a node's members of a channel expire from Redis this long after the node
    /// last refreshed them (it does every third of it): how long a dead node's members stay.
    pub ttl: Duration,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            presence: Vec::new(),
            join_leave: Vec::new(),
            max_members: 10_000,
            window: Duration::from_millis(100),
            ttl: Duration::from_secs(15),
        }
    }
}

/// The members of one channel on this node.
#[derive(Debug, Default)]
pub(crate) struct ChannelMembers {
    /// By client id.
    pub members: HashMap<Box<str>, Arc<Member>>,
    /// Members of a join/leave channel whose join has not gone out yet: not shown by presence
    /// answers (a client that saw one would wait forever for a leave that a join and leave in
    /// one window cancel).
    unannounced: std::collections::HashSet<Box<str>>,
    /// Connections per user among the shown members, for the distinct-user count.
    users: HashMap<Box<str>, u32>,
}

impl ChannelMembers {
    /// Distinct users (the anonymous, with an empty user, count as one).
    pub fn users(&self) -> usize {
        self.users.len()
    }

    /// Members a presence answer shows.
    fn shown(&self) -> usize {
        self.members.len() - self.unannounced.len()
    }

    fn shown_members(&self) -> impl Iterator<Item = Arc<Member>> + '_ {
        self.members.values().filter(|m| !self.unannounced.contains(&m.client)).cloned()
    }
}

/// Shards of the member map: enough that two workers rarely meet on one lock.
const SHARDS: usize = 16;

/// This node's members of every tracked channel.
#[derive(Debug)]
pub(crate) struct Presence {
    tracked: Patterns,
    /// `--presence`'s patterns alone.
    listed: Patterns,
    announced: Patterns,
    /// A channel's namespace decides, where it says (see `namespace`).
    namespaces: crate::namespace::Namespaces,
    pub config: PresenceConfig,
    shards: Box<[Mutex<HashMap<Bytes, ChannelMembers>>]>,
}

impl Presence {
    /// The registry; `None` when no pattern or namespace asks for presence.
    pub fn new(
        config: &PresenceConfig,
        namespaces: &crate::namespace::Namespaces,
    ) -> Result<Option<Presence>, String> {
        let asked_by_namespace =
            namespaces.iter().any(|(_, n)| n.presence == Some(true) || n.join_leave == Some(true));
        if config.presence.is_empty() && config.join_leave.is_empty() && !asked_by_namespace {
            return Ok(None);
        }
        let parse = |texts: &[String]| {
            Patterns::parse(texts.iter().map(String::as_str)).map_err(|e| e.to_string())
        };
        let tracked = parse(&[config.presence.clone(), config.join_leave.clone()].concat())?;
        let announced = parse(&config.join_leave)?;
        Ok(Some(Presence {
            tracked,
            listed: parse(&config.presence)?,
            announced,
            namespaces: namespaces.clone(),
            config: config.clone(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }))
    }

    /// Whether `channel`'s members are tracked.
    pub fn tracks(&self, channel: &[u8]) -> bool {
        match self.namespaces.resolve(channel) {
            None => self.tracked.allow(channel),
            Some(namespace) => {
                namespace.presence.unwrap_or_else(|| self.listed.allow(channel))
                    || namespace.join_leave.unwrap_or_else(|| self.announced.allow(channel))
            }
        }
    }

    /// Whether `channel`'s subscribers hear joins and leaves.
    pub fn announces(&self, channel: &[u8]) -> bool {
        match self.namespaces.resolve(channel) {
            None => self.announced.allow(channel),
            Some(namespace) => {
                namespace.join_leave.unwrap_or_else(|| self.announced.allow(channel))
            }
        }
    }

    fn shard(&self, channel: &[u8]) -> MutexGuard<'_, HashMap<Bytes, ChannelMembers>> {
        let hash = channel.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        // Every update leaves the map consistent: a poisoned lock is still sound.
        self.shards[hash as usize % SHARDS].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `member` subscribed to `channel`; `shown` at once, or once its join has gone out
    /// (`announced`).
    /// `draw` gives the join its number (`Channel::next_presence_seq`) under the same lock as
    /// presence answers and announcements, so that none falls between them.
    pub fn join(
        &self,
        channel: &Bytes,
        member: Arc<Member>,
        shown: bool,
        draw: impl FnOnce() -> u64,
    ) -> u64 {
        let mut shard = self.shard(channel);
        let entry = shard.entry(channel.clone()).or_default();
        match shown {
            true => *entry.users.entry(member.user.clone()).or_default() += 1,
            false => drop(entry.unannounced.insert(member.client.clone())),
        }
        entry.members.insert(member.client.clone(), member);
        draw()
    }

    /// The joins of these clients go out: presence answers show them from now on, and `draw`
    /// gives their batch its number, both under the lock answers are read under.
    pub fn announced<'a>(
        &self,
        channel: &[u8],
        clients: impl IntoIterator<Item = &'a str>,
        draw: impl FnOnce() -> u64,
    ) -> u64 {
        let mut shard = self.shard(channel);
        let batch = draw();
        let Some(entry) = shard.get_mut(channel) else { return batch };
        for client in clients {
            if entry.unannounced.remove(client) {
                if let Some(member) = entry.members.get(client) {
                    *entry.users.entry(member.user.clone()).or_default() += 1;
                }
            }
        }
        batch
    }

    /// Connection `client` left `channel`: its entry, if it was a member, and the number
    /// `draw` gives the leave (under the lock).
    pub fn leave(
        &self,
        channel: &[u8],
        client: &str,
        draw: impl FnOnce() -> u64,
    ) -> Option<(Arc<Member>, u64)> {
        let mut shard = self.shard(channel);
        let entry = shard.get_mut(channel)?;
        let member = entry.members.remove(client)?;
        let seq = draw();
        if !entry.unannounced.remove(client) {
            forget_user(&mut entry.users, &member.user);
        }
        if entry.members.is_empty() {
            shard.remove(channel);
        }
        Some((member, seq))
    }

    /// The channel's members here (up to `limit`: `Err` with the count past it), and the
    /// number of distinct users.
    pub fn members(
        &self,
        channel: &[u8],
        limit: usize,
    ) -> Result<(Vec<Arc<Member>>, usize), usize> {
        self.members_at(channel, limit, || 0).map(|(members, users, _)| (members, users))
    }

    /// `members`, and what `now` says (the channel's counter) under the same lock: the answer
    /// is the channel's membership as of that number.
    pub fn members_at(
        &self,
        channel: &[u8],
        limit: usize,
        now: impl FnOnce() -> u64,
    ) -> Result<(Vec<Arc<Member>>, usize, u64), usize> {
        let shard = self.shard(channel);
        let now = now();
        let Some(entry) = shard.get(channel) else { return Ok((Vec::new(), 0, now)) };
        if entry.shown() > limit {
            return Err(entry.shown());
        }
        Ok((entry.shown_members().collect(), entry.users(), now))
    }

    /// (clients, distinct users) of the channel here.
    #[cfg(test)]
    pub fn stats(&self, channel: &[u8]) -> (usize, usize) {
        let (clients, users, _) = self.stats_at(channel, || 0);
        (clients, users)
    }

    /// `stats`, and what `now` says under the same lock (see `members_at`).
    pub fn stats_at(&self, channel: &[u8], now: impl FnOnce() -> u64) -> (usize, usize, u64) {
        let shard = self.shard(channel);
        let now = now();
        shard.get(channel).map_or((0, 0, now), |entry| (entry.shown(), entry.users(), now))
    }

    /// Every tracked channel with members shown here, and those members (cluster mode: what
    /// this node writes to Redis when it rewrites its sets).
    pub fn snapshot(&self) -> Vec<(Bytes, Vec<Arc<Member>>)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for (channel, entry) in shard.iter() {
                out.push((channel.clone(), entry.shown_members().collect()));
            }
        }
        out
    }
}

fn forget_user(users: &mut HashMap<Box<str>, u32>, user: &str) {
    if let Some(count) = users.get_mut(user) {
        *count -= 1;
        if *count == 0 {
            users.remove(user);
        }
    }
}

/// The refusal of a presence answer past the member limit.
pub(crate) fn too_many_members(name: &[u8], count: usize, limit: usize) -> String {
    format!(
        "{} has {count} members, more than --presence-max-members {limit}; ask for the stats instead",
        String::from_utf8_lossy(name)
    )
}

/// One channel's membership changes gathered by a worker during a window.
#[derive(Debug)]
pub(crate) struct PendingChanges {
    pub channel: Arc<crate::server::channels::Channel>,
    /// Subscribers hear these (`--join-leave`); otherwise they only go to Redis (cluster).
    pub announce: bool,
    /// By client: a join (true) or a leave, the member, and the event's seq. A join and a leave
    /// of one connection within the window cancel out.
    pub changes: HashMap<Box<str>, (bool, Arc<Member>, u64)>,
}

/// A member and when its join or leave happened (`protocol::presence::Event::happened`).
pub(crate) type Change = (Arc<Member>, u64);

impl PendingChanges {
    /// The joins and the leaves, each in seq order.
    pub fn split(self) -> (Vec<Change>, Vec<Change>) {
        let (mut joins, mut leaves) = (Vec::new(), Vec::new());
        for (join, member, seq) in self.changes.into_values() {
            match join {
                true => joins.push((member, seq)),
                false => leaves.push((member, seq)),
            }
        }
        joins.sort_by_key(|(_, seq)| *seq);
        leaves.sort_by_key(|(_, seq)| *seq);
        (joins, leaves)
    }
}

/// A worker's membership changes not sent yet, per channel (`PendingChanges`).
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    pub pending: HashMap<u64, PendingChanges>,
    /// Worker clock (ms) when the window of the oldest pending change closes.
    pub due_ms: Option<u32>,
    /// Events cancelled by their opposite within a window (a counter for the metrics).
    pub cancelled: u64,
}

impl Outbox {
    /// Notes a join (`join`) or leave of `member` in `channel`; the window starts with the
    /// first change pending. True when it cancelled the connection's opposite change.
    pub fn note(
        &mut self,
        channel: &Arc<crate::server::channels::Channel>,
        announce: bool,
        join: bool,
        (member, seq): Change,
        now_ms: u32,
        window_ms: u32,
    ) -> bool {
        let pending = self.pending.entry(channel.id).or_insert_with(|| PendingChanges {
            channel: channel.clone(),
            announce,
            changes: HashMap::new(),
        });
        let cancelled = match pending.changes.get(&member.client) {
            Some(&(was_join, _, _)) if was_join != join => {
                pending.changes.remove(&member.client);
                self.cancelled += 2;
                true
            }
            _ => {
                pending.changes.insert(member.client.clone(), (join, member, seq));
                false
            }
        };
        self.due_ms.get_or_insert(now_ms.wrapping_add(window_ms));
        cancelled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Mirror;
    use crate::server::channels::ChannelRegistry;

    fn member(client: &str, user: &str) -> Arc<Member> {
        Arc::new(Member {
            client: client.into(),
            user: user.into(),
            node: "n".into(),
            info: "".into(),
        })
    }

    #[test]
    fn members_and_distinct_users() {
        let config = PresenceConfig { presence: vec!["room.>".into()], ..Default::default() };
        let presence = Presence::new(&config, &Default::default()).unwrap().unwrap();
        assert!(presence.tracks(b"room.1") && !presence.tracks(b"news"));
        assert!(!presence.announces(b"room.1"));
        let room = Bytes::from_static(b"room.1");
        presence.join(&room, member("c1", "alice"), true, || 1);
        presence.join(&room, member("c2", "alice"), true, || 2);
        presence.join(&room, member("c3", ""), true, || 3);
        assert_eq!(presence.stats(b"room.1"), (3, 2));
        assert_eq!(presence.members(b"room.1", 2), Err(3), "past the limit");
        assert_eq!(
            presence.leave(b"room.1", "c1", || 4).map(|(m, _)| m.user.clone()),
            Some("alice".into())
        );
        assert_eq!(presence.leave(b"room.1", "c1", || 5), None, "left once");
        assert_eq!(presence.stats(b"room.1"), (2, 2));
        presence.leave(b"room.1", "c2", || 6);
        presence.leave(b"room.1", "c3", || 7);
        assert_eq!(presence.stats(b"room.1"), (0, 0));
        assert!(presence.snapshot().is_empty(), "an empty channel is forgotten");
        // A member whose join has not gone out is not shown until it has.
        presence.join(&room, member("c4", "dora"), false, || 8);
        assert_eq!(presence.stats(b"room.1"), (0, 0));
        assert_eq!(presence.announced(b"room.1", ["c4"], || 9), 9);
        assert_eq!(presence.stats(b"room.1"), (1, 1));
        presence.join(&room, member("c5", "eve"), false, || 10);
        assert_eq!(
            presence.leave(b"room.1", "c5", || 11).map(|(m, _)| m.user.clone()),
            Some("eve".into())
        );
        assert_eq!(presence.stats(b"room.1"), (1, 1), "never shown, never counted");
    }

    #[test]
    fn a_join_and_a_leave_within_a_window_cancel_out() {
        let history = crate::history::HistoryLimits {
            messages: 0,
            bytes: 0,
            age: Duration::ZERO,
            total_bytes: 0,
        };
        let registry = ChannelRegistry::new(10, history, Mirror::Standalone, 1);
        let channel = registry.get_or_create(b"room").unwrap();
        let mut outbox = Outbox::default();
        outbox.note(&channel, true, true, (member("c1", "a"), 1), 0, 100);
        outbox.note(&channel, true, false, (member("c1", "a"), 2), 10, 100);
        outbox.note(&channel, true, false, (member("c2", "b"), 3), 20, 100);
        outbox.note(&channel, true, true, (member("c3", "c"), 4), 30, 100);
        assert_eq!(outbox.due_ms, Some(100), "the window runs from the first change");
        assert_eq!(outbox.cancelled, 2);
        let pending = outbox.pending.remove(&channel.id).unwrap();
        let (joins, leaves) = pending.split();
        assert_eq!(
            joins.iter().map(|(m, seq)| (&*m.client, *seq)).collect::<Vec<_>>(),
            [("c3", 4)]
        );
        assert_eq!(
            leaves.iter().map(|(m, seq)| (&*m.client, *seq)).collect::<Vec<_>>(),
            [("c2", 3)]
        );
    }
}
