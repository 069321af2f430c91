//! The worker-local index of wildcard subscriptions (`PSUB room.*`): each pattern with this
//! worker's subscribers of it, and, per channel, which patterns match it.
//!
//! Matching costs nothing per delivery: a channel is matched against the patterns once, the
//! first time the drain meets it, and the answer (pattern ids) is cached. When a pattern comes or
//! goes, each cached answer is brought up to date the next time it is used, by the patterns
//! that changed since (`changes`), not recomputed and not all at once: a PSUB costs no pause
//! however many channels are cached. Subscribers are kept as the channel index keeps them (`server::index`): a dense `Vec` of
//! slab keys with O(1) `swap_remove`, the moved subscriber's position fixed by the caller.

use crate::server::index::Subscriber;
use std::collections::HashMap;

use slab::Slab;

use crate::auth::pattern::TopicPattern;
use crate::protocol::Format;

/// Channels whose match lists are cached at most; past it the cache starts over (a flood of
/// fresh channel names must not grow it without bound).
const MAX_CACHED_CHANNELS: usize = 100_000;

/// Pattern changes remembered for cached answers not yet brought up to date; past it the cache
/// starts over (answers would otherwise wait on a log without end).
const MAX_CHANGES: usize = 1024;

/// A pattern came (its id may be one a pattern that went had) or went.
#[derive(Debug, Clone, Copy)]
enum Change {
    Added(usize),
    Removed(usize),
}

/// One channel's cached answer, as of `generation`.
#[derive(Debug)]
struct Cached {
    generation: u64,
    ids: Vec<usize>,
}

/// What a pattern is: fanout's (`*` one token, `>` the rest) or, from a Redis client's
/// PSUBSCRIBE, Redis's glob (`*`, `?`, `[...]`), whose key in the index starts with
/// `GLOB_KEY` so that the same text in the two syntaxes are two patterns.
#[derive(Debug)]
pub enum Matcher {
    /// `PSUB`, `?pattern=`: dot-separated tokens.
    Topic(TopicPattern),
    /// Redis's PSUBSCRIBE.
    Glob,
}

/// The first byte of a Redis glob's key in the index (a fanout pattern cannot start with it).
pub const GLOB_KEY: u8 = 0x01;

/// The index key of Redis glob `glob`.
pub fn glob_key(glob: &[u8]) -> Box<[u8]> {
    [&[GLOB_KEY][..], glob].concat().into()
}

/// Every pattern subscription on this node, all workers together: how many receivers a
/// Redis client's PUBLISH reaches through patterns (Redis counts them). Touched when patterns
/// come and go and by Redis clients' publishes only, never per delivery.
#[derive(Debug, Default)]
pub struct PatternCensus {
    entries: std::sync::Mutex<CensusEntries>,
}

/// Index key -> the pattern (none for a Redis glob, which is its key) and its subscriptions.
type CensusEntries = HashMap<Box<[u8]>, (Option<TopicPattern>, usize)>;

impl PatternCensus {
    fn lock(&self) -> std::sync::MutexGuard<'_, CensusEntries> {
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// One more subscription of the pattern keyed `key` (`topic`: fanout's syntax).
    pub fn add(&self, key: &[u8], topic: Option<&TopicPattern>) {
        self.lock().entry(key.into()).or_insert_with(|| (topic.cloned(), 0)).1 += 1;
    }

    /// One subscription fewer.
    pub fn remove(&self, key: &[u8]) {
        let mut entries = self.lock();
        if let Some(entry) = entries.get_mut(key) {
            entry.1 -= 1;
            if entry.1 == 0 {
                entries.remove(key);
            }
        }
    }

    /// Distinct patterns subscribed to on this node (Redis's PUBSUB NUMPAT) that `visible`
    /// takes (given the pattern in fanout's syntax, `None` for a Redis glob).
    pub fn count(&self, visible: impl Fn(Option<&TopicPattern>) -> bool) -> usize {
        self.lock().values().filter(|(topic, _)| visible(topic.as_ref())).count()
    }

    /// Pattern subscriptions that receive topic channel `channel`.
    pub fn receivers(&self, channel: &[u8]) -> usize {
        self.lock()
            .iter()
            .filter(|(key, (topic, _))| match topic {
                Some(pattern) => pattern.matches(channel),
                None => crate::protocol::glob::glob_match(&key[1..], channel),
            })
            .map(|(_, (_, count))| count)
            .sum()
    }
}

/// One pattern and this worker's subscribers of it.
#[derive(Debug)]
pub struct PatternEntry {
    /// The pattern's key: as clients wrote it (a Redis glob behind `GLOB_KEY`).
    pub text: Box<[u8]>,
    pattern: Matcher,
    /// The subscribed connections, in no particular order (see `index::live`).
    pub subscribers: Vec<Subscriber>,
    /// How many subscribers use each wire format.
    pub per_format: [u32; Format::COUNT],
}

impl PatternEntry {
    /// The pattern as its clients wrote it.
    pub fn written(&self) -> &[u8] {
        match self.pattern {
            Matcher::Glob => &self.text[1..],
            Matcher::Topic(_) => &self.text,
        }
    }

    fn matches(&self, channel: &[u8]) -> bool {
        match &self.pattern {
            Matcher::Topic(pattern) => pattern.matches(channel),
            Matcher::Glob => crate::protocol::glob::glob_match(&self.text[1..], channel),
        }
    }
}

/// Each channel's cached answer, and the pattern changes answers have yet to be brought up to.
#[derive(Debug, Default)]
struct MatchCache {
    /// By channel id (the server's: a fast hash).
    by_channel: rustc_hash::FxHashMap<u64, Cached>,
    /// The pattern changes since `changes_from`, oldest first: the one at `i` made generation
    /// `changes_from + i + 1`.
    changes: Vec<Change>,
    changes_from: u64,
}

impl MatchCache {
    fn changed(&mut self, change: Change) {
        if self.changes.len() == MAX_CHANGES {
            self.by_channel.clear();
            self.changes_from += self.changes.len() as u64;
            self.changes.clear();
        }
        self.changes.push(change);
    }

    /// The cached list of patterns matching a channel, computed on a miss, brought up to date
    /// when patterns changed since it was.
    fn get(&mut self, patterns: &Slab<PatternEntry>, channel: u64, name: &[u8]) -> &[usize] {
        if self.by_channel.len() >= MAX_CACHED_CHANNELS && !self.by_channel.contains_key(&channel) {
            self.by_channel.clear();
        }
        let now = self.changes_from + self.changes.len() as u64;
        let cached = self.by_channel.entry(channel).or_insert_with(|| Cached {
            generation: now,
            ids: patterns.iter().filter(|(_, p)| p.matches(name)).map(|(id, _)| id).collect(),
        });
        if cached.generation < now {
            // In order: an id that went and came back is tested against the pattern that has
            // it now, whatever the earlier changes made of it.
            let since = (cached.generation - self.changes_from) as usize;
            for change in &self.changes[since..] {
                match *change {
                    Change::Added(id) => {
                        if patterns.get(id).is_some_and(|p| p.matches(name)) {
                            cached.ids.push(id);
                        }
                    }
                    Change::Removed(id) => cached.ids.retain(|&i| i != id),
                }
            }
            cached.generation = now;
        }
        &cached.ids
    }
}

/// Pattern -> subscribers, and channel -> matching patterns.
#[derive(Debug, Default)]
pub struct PatternIndex {
    patterns: Slab<PatternEntry>,
    by_text: HashMap<Box<[u8]>, usize>,
    /// Channel id -> ids of the patterns that match it.
    matches: MatchCache,
    /// Pattern subscriptions on this worker (a gauge).
    subscriptions: usize,
}

impl PatternIndex {
    /// True when nobody on this worker subscribes to a pattern.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Pattern subscriptions on this worker.
    pub fn subscriptions(&self) -> usize {
        self.subscriptions
    }

    /// The id of the pattern written `text`, if anyone here subscribes to it.
    pub fn id_of(&self, text: &[u8]) -> Option<usize> {
        self.by_text.get(text).copied()
    }

    /// The pattern with this id.
    pub fn get(&self, id: usize) -> &PatternEntry {
        &self.patterns[id]
    }

    /// Adds `subscriber` to `pattern` (written `text`); returns the pattern's id and the
    /// subscriber's position (kept by the subscriber for `remove`).
    pub fn add(
        &mut self,
        text: &[u8],
        pattern: Matcher,
        subscriber: Subscriber,
        format: Format,
    ) -> (usize, u32) {
        let id = match self.by_text.get(text) {
            Some(&id) => id,
            None => {
                let id = self.patterns.insert(PatternEntry {
                    text: text.into(),
                    pattern,
                    subscribers: Vec::new(),
                    per_format: [0; Format::COUNT],
                });
                self.by_text.insert(text.into(), id);
                // A new pattern may match channels already cached.
                self.matches.changed(Change::Added(id));
                id
            }
        };
        let entry = &mut self.patterns[id];
        entry.subscribers.push(subscriber);
        entry.per_format[format as usize] += 1;
        self.subscriptions += 1;
        (id, (entry.subscribers.len() - 1) as u32)
    }

    /// Removes the subscriber at `position` of pattern `id`. Returns the one now at `position`
    /// (moved there from the end), whose stored position the caller must update.
    pub fn remove(&mut self, id: usize, position: u32, format: Format) -> Option<Subscriber> {
        let entry = self.patterns.get_mut(id)?;
        let position = position as usize;
        debug_assert!(position < entry.subscribers.len(), "stale pattern position");
        entry.subscribers.swap_remove(position);
        entry.per_format[format as usize] -= 1;
        self.subscriptions -= 1;
        let moved = entry.subscribers.get(position).copied();
        if entry.subscribers.is_empty() {
            let entry = self.patterns.remove(id);
            self.by_text.remove(&entry.text);
            // Its id may be reused by another pattern: no cached list may name it.
            self.matches.changed(Change::Removed(id));
        }
        moved
    }

    /// The ids of the patterns that match topic channel `name` (id `channel`): computed the
    /// first time, then cached and brought up to date as patterns change.
    #[cfg(test)]
    pub fn matching(&mut self, channel: u64, name: &[u8]) -> &[usize] {
        self.matches.get(&self.patterns, channel, name)
    }

    /// How many subscribers of the patterns matching the channel use each format, Redis
    /// clients left out, and whether there are Redis clients among them (their `pmessage`
    /// frames name the pattern: one frame per pattern, not the channel's shared one); `None`
    /// when no pattern matches it.
    pub fn formats_matching(
        &mut self,
        channel: u64,
        name: &[u8],
    ) -> Option<([u32; Format::COUNT], bool)> {
        let ids = self.matches.get(&self.patterns, channel, name);
        if ids.is_empty() {
            return None;
        }
        let mut sum = [0; Format::COUNT];
        let mut redis_clients = false;
        for &id in ids {
            for format in Format::ALL {
                let n = self.patterns[id].per_format[format as usize];
                if format.is_resp() {
                    redis_clients |= n > 0;
                } else {
                    sum[format as usize] += n;
                }
            }
        }
        Some((sum, redis_clients))
    }

    /// Calls `each` with every subscriber of every pattern matching the channel, and the
    /// pattern (a connection subscribed to two matching patterns comes twice).
    pub fn for_each_subscriber(
        &mut self,
        channel: u64,
        name: &[u8],
        mut each: impl FnMut(Subscriber, usize, &PatternEntry),
    ) {
        for &id in self.matches.get(&self.patterns, channel, name) {
            let entry = &self.patterns[id];
            entry.subscribers.iter().for_each(|&subscriber| each(subscriber, id, entry));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(key: usize) -> Subscriber {
        Subscriber::new(key, 1)
    }

    fn pattern(text: &str) -> Matcher {
        Matcher::Topic(TopicPattern::parse(text, 16).unwrap())
    }

    #[test]
    fn channels_are_matched_once_and_the_answer_follows_the_patterns() {
        let mut index = PatternIndex::default();
        let (rooms, at) = index.add(b"room.*", pattern("room.*"), sub(10), Format::Text);
        assert_eq!(at, 0);
        let (all, _) = index.add(b">", pattern(">"), sub(11), Format::Binary);
        assert_eq!(index.matching(1, b"room.1"), &[rooms, all]);
        assert_eq!(index.matching(2, b"lobby"), &[all]);
        assert_eq!(index.add(b"room.*", pattern("room.*"), sub(12), Format::Text), (rooms, 1));
        assert_eq!(index.get(rooms).per_format[Format::Text as usize], 2);
        assert_eq!(index.subscriptions(), 3);
        // The last subscriber of `>` leaves: the pattern goes, and the cached lists with it.
        assert_eq!(index.remove(all, 0, Format::Binary), None);
        assert_eq!(index.id_of(b">"), None);
        assert_eq!(index.matching(2, b"lobby"), &[] as &[usize]);
        assert_eq!(index.matching(1, b"room.1"), &[rooms]);
        // swap_remove reports the subscriber it moved.
        assert_eq!(index.remove(rooms, 0, Format::Text), Some(sub(12)));
        assert_eq!(index.get(rooms).subscribers, vec![sub(12)]);
        let (deep, _) = index.add(b"room.>", pattern("room.>"), sub(13), Format::Text);
        assert_eq!(index.matching(3, b"room.1.x"), &[deep], "a new pattern is matched too");
        // A Redis glob of the same text is another pattern, matched the glob's way.
        let (glob, _) = index.add(&glob_key(b"room.*"), Matcher::Glob, sub(14), Format::Resp2);
        assert_ne!(glob, rooms);
        assert_eq!(index.get(glob).written(), b"room.*");
        assert_eq!(index.matching(4, b"room.1.x"), &[deep, glob]);
        let (sum, redis_clients) = index.formats_matching(4, b"room.1.x").expect("matched");
        assert_eq!(
            (sum[Format::Text as usize], sum[Format::Resp2 as usize], redis_clients),
            (1, 0, true)
        );
    }

    #[test]
    fn cached_answers_follow_changes_without_being_recomputed() {
        let mut index = PatternIndex::default();
        let (rooms, _) = index.add(b"room.*", pattern("room.*"), sub(1), Format::Text);
        assert_eq!(index.matching(1, b"room.1"), &[rooms]);
        // The pattern goes and a new one takes its id: the cached answer must not keep it.
        index.remove(rooms, 0, Format::Text);
        let (lobby, _) = index.add(b"lobby", pattern("lobby"), sub(2), Format::Text);
        assert_eq!(lobby, rooms, "the slab reused the id");
        assert_eq!(index.matching(1, b"room.1"), &[] as &[usize]);
        assert_eq!(index.matching(2, b"lobby"), &[lobby]);
        // Back and forth past the change log's length: the cache starts over, still right.
        for _ in 0..MAX_CHANGES {
            let (id, _) = index.add(b"room.>", pattern("room.>"), sub(3), Format::Text);
            index.remove(id, 0, Format::Text);
        }
        let (deep, _) = index.add(b"room.>", pattern("room.>"), sub(3), Format::Text);
        assert_eq!(index.matching(1, b"room.1"), &[deep]);
        assert_eq!(index.matching(2, b"lobby"), &[lobby]);
    }

    #[test]
    fn a_new_pattern_updates_only_the_answers_used_next() {
        let mut index = PatternIndex::default();
        for channel in 0..1000u64 {
            assert!(index.matching(channel, format!("c.{channel}").as_bytes()).is_empty());
        }
        let (all, _) = index.add(b"c.*", pattern("c.*"), sub(1), Format::Text);
        assert_eq!(index.matches.by_channel.len(), 1000, "kept, not cleared");
        assert!(index.matches.by_channel.values().all(|c| c.generation == 0), "not yet updated");
        assert_eq!(index.matching(7, b"c.7"), &[all]);
        assert_eq!(index.matches.by_channel[&7].generation, 1);
    }
}
