//! The worker's channel cache: the `Arc<Channel>`s it uses, so that publishing and subscribing
//! do not look names up in the registry each time.
//!
//! A cached channel is never freed (the registry frees only what nothing else holds), so the
//! cache lets go of channels it holds for nobody. A channel with local subscribers leaves it
//! when its last one does (`Worker::unsubscribed`); one only published to leaves it on the next
//! pass (`start_pass`, then `pass_step` a budget at a time each turn), which looks at every name
//! inserted before the pass began: no step walks the whole cache.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use crate::server::channels::Channel;

/// Channels cached at most (a map of this size is rehashed in about a millisecond).
const MAX_CACHED: usize = 65_536;

#[derive(Debug, Default)]
pub(super) struct ChannelCache {
    by_name: HashMap<Bytes, Arc<Channel>>,
    /// Every name inserted and not yet looked at by a pass, oldest first (a name may appear
    /// twice, or after it left: the pass finds out).
    inserted: VecDeque<Bytes>,
    /// Names of `inserted` the pass under way has still to look at.
    pass_left: usize,
}

impl ChannelCache {
    pub(super) fn get(&self, name: &[u8]) -> Option<&Arc<Channel>> {
        self.by_name.get(name)
    }

    /// Caches `channel`, unless the cache is full (`MAX_CACHED`): then it is looked up in the
    /// registry each time, which a sharded lock makes cheap, rather than grow a map whose
    /// doubling would copy every entry in one turn.
    pub(super) fn insert(&mut self, channel: Arc<Channel>) {
        if self.by_name.len() >= MAX_CACHED {
            return;
        }
        self.inserted.push_back(channel.name.clone());
        self.by_name.insert(channel.name.clone(), channel);
    }

    pub(super) fn remove(&mut self, name: &[u8]) {
        self.by_name.remove(name);
    }

    /// Begins a pass over every name cached so far (one under way goes on to the new end).
    pub(super) fn start_pass(&mut self) {
        self.pass_left = self.inserted.len();
    }

    /// True while a pass has names left to look at.
    pub(super) fn passing(&self) -> bool {
        self.pass_left > 0
    }

    /// Looks at up to `budget` names of the pass: each whose channel is not `in_use` leaves the
    /// cache; one in use stays, and is let go of by its last unsubscribe. Returns how many left.
    pub(super) fn pass_step(&mut self, budget: usize, in_use: impl Fn(&Channel) -> bool) -> usize {
        let mut released = 0;
        for _ in 0..budget.min(self.pass_left) {
            self.pass_left -= 1;
            let Some(name) = self.inserted.pop_front() else { break };
            if self.by_name.get(&name).is_some_and(|channel| !in_use(channel)) {
                self.by_name.remove(&name);
                released += 1;
            }
        }
        if !self.passing() && self.by_name.capacity() > 4 * self.by_name.len() + 64 {
            self.by_name.shrink_to_fit();
            self.inserted.shrink_to_fit();
        }
        released
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{HistoryLimits, Mirror};
    use crate::server::channels::ChannelRegistry;

    #[test]
    fn a_pass_lets_go_of_unused_channels_a_budget_at_a_time() {
        let history =
            HistoryLimits { messages: 0, bytes: 0, age: Default::default(), total_bytes: 0 };
        let registry = ChannelRegistry::new(100, history, Mirror::Standalone, 1);
        let mut cache = ChannelCache::default();
        for name in ["a", "b", "c", "d", "e"] {
            cache.insert(registry.get_or_create(name.as_bytes()).unwrap());
        }
        let in_use = |channel: &Channel| channel.name == "c";
        assert_eq!(cache.pass_step(10, in_use), 0, "no pass, nothing looked at");
        cache.start_pass();
        cache.insert(registry.get_or_create(b"f").unwrap());
        assert_eq!(cache.pass_step(2, in_use), 2);
        assert!(cache.passing());
        assert_eq!(cache.pass_step(10, in_use), 2, "c stays; f came after the pass began");
        assert!(!cache.passing());
        assert!(cache.get(b"c").is_some() && cache.get(b"f").is_some());
        assert!(cache.get(b"a").is_none() && cache.get(b"e").is_none());
        cache.start_pass();
        assert_eq!(cache.pass_step(10, in_use), 1, "f goes on the next pass");
    }
}
