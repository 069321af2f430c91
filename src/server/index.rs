//! The worker-local subscription index: channel id -> this worker's subscribers of it.
//!
//! Fan-out iterates a dense `Vec` of slab keys (the fastest thing to walk). Removal is O(1) by
//! `swap_remove`: every subscriber remembers its position, and the caller fixes the position of
//! the key that was moved into the hole (`remove` returns it).
//!
//! Entries are raw slab keys, not `(key, serial)`: a connection is taken out of every list before
//! it stops being open (`worker::lifecycle`, invariants 2 and 6), so a key here is always the
//! live connection that subscribed.

use crate::protocol::Format;

/// One channel's local subscribers.
#[derive(Debug, Default)]
pub struct LocalChannel {
    /// Slab keys of the subscribed connections, in no particular order.
    pub subscribers: Vec<usize>,
    /// How many subscribers use each wire format, so fan-out encodes only the formats in use.
    pub per_format: [u32; Format::COUNT],
    /// Subscribers that have just finished a replay from history: (slab key, last offset the
    /// replay delivered). Ring messages at or below that offset may still be on their way through
    /// the ring; fan-out skips them for these subscribers, then moves them to `subscribers`.
    pub catching_up: Vec<(usize, u64)>,
}

impl LocalChannel {
    fn is_empty(&self) -> bool {
        self.subscribers.is_empty() && self.catching_up.is_empty()
    }
}

/// channel id -> local subscribers.
#[derive(Debug, Default)]
pub struct Index {
    /// Keyed by the server's channel ids: a fast hash (see Cargo.toml).
    channels: rustc_hash::FxHashMap<u64, LocalChannel>,
}

impl Index {
    /// Adds `key` to `channel`; returns its position (to be kept by the subscriber for `remove`).
    pub fn add(&mut self, channel: u64, key: usize, format: Format) -> u32 {
        let local = self.channels.entry(channel).or_default();
        local.subscribers.push(key);
        local.per_format[format as usize] += 1;
        (local.subscribers.len() - 1) as u32
    }

    /// Removes the subscriber at `position`. Returns the key now at `position` (moved there from
    /// the end), whose stored position the caller must update.
    pub fn remove(&mut self, channel: u64, position: u32, format: Format) -> Option<usize> {
        let local = self.channels.get_mut(&channel)?;
        let position = position as usize;
        debug_assert!(position < local.subscribers.len(), "stale subscription position");
        local.subscribers.swap_remove(position);
        local.per_format[format as usize] -= 1;
        let moved = local.subscribers.get(position).copied();
        if local.is_empty() {
            self.channels.remove(&channel);
        }
        moved
    }

    /// Adds `key` as a subscriber that has seen everything up to `replayed` (see `catching_up`).
    pub fn add_catching_up(&mut self, channel: u64, key: usize, replayed: u64) {
        self.channels.entry(channel).or_default().catching_up.push((key, replayed));
    }

    /// Removes a catching-up subscriber.
    pub fn remove_catching_up(&mut self, channel: u64, key: usize) {
        if let Some(local) = self.channels.get_mut(&channel) {
            local.catching_up.retain(|&(k, _)| k != key);
            if local.is_empty() {
                self.channels.remove(&channel);
            }
        }
    }

    /// Ends the catch-up of `key` (it saw the ring pass its replayed offset).
    pub fn finish_catching_up(&mut self, channel: u64, key: usize) {
        if let Some(local) = self.channels.get_mut(&channel) {
            local.catching_up.retain(|&(k, _)| k != key);
        }
    }

    /// The local subscribers of `channel`, if any.
    pub fn get(&self, channel: u64) -> Option<&LocalChannel> {
        self.channels.get(&channel)
    }

    /// Channels with at least one local subscriber.
    pub fn len(&self) -> usize {
        self.channels.len()
    }

    /// True when nobody on this worker subscribes to anything.
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_remove_reports_the_moved_key() {
        let mut index = Index::default();
        assert_eq!(index.add(7, 10, Format::Text), 0);
        assert_eq!(index.add(7, 11, Format::Binary), 1);
        assert_eq!(index.add(7, 12, Format::Text), 2);
        assert_eq!(index.get(7).unwrap().per_format, [2, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
        // Removing position 0 moves key 12 there.
        assert_eq!(index.remove(7, 0, Format::Text), Some(12));
        assert_eq!(index.get(7).unwrap().subscribers, vec![12, 11]);
        // Removing the last position moves nothing.
        assert_eq!(index.remove(7, 1, Format::Binary), None);
        assert_eq!(index.remove(7, 0, Format::Text), None);
        assert!(index.get(7).is_none(), "empty channels are dropped");
        assert!(index.is_empty());
    }
}
