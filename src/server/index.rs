//! The worker-local subscription index: channel id -> this worker's subscribers of it.
//!
//! Fan-out iterates a dense `Vec` of slab keys (the fastest thing to walk). Removal is O(1) by
//! `swap_remove`: every subscriber remembers its position, and the caller fixes the position of
//! the key that was moved into the hole (`remove` returns it).
//!
//! Entries are `Subscriber`s, a slab key with the serial of the connection that subscribed, and
//! fan-out reaches a connection only through `live`, which checks the serial. A connection is
//! taken out of every list before it stops being open (`worker::lifecycle`, invariants 2 and 6),
//! so the check never fails; if a detach were ever missed, the key's next holder would still
//! not receive a channel it never asked for (nor passed the permission check of).

use slab::Slab;

use crate::protocol::Format;

/// A subscriber as the indexes keep it: its slab key and the serial of its connection (keys are
/// reused; serials are not). Eight bytes, as a bare key was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscriber {
    key: u32,
    serial: u32,
}

impl Subscriber {
    /// Connection `key` of serial `serial` (a key fits 32 bits: `Config::max_connections` is
    /// checked to).
    pub fn new(key: usize, serial: u32) -> Self {
        debug_assert!(key <= u32::MAX as usize, "slab key {key} past 32 bits");
        Subscriber { key: key as u32, serial }
    }

    /// Its slab key.
    pub fn key(self) -> usize {
        self.key as usize
    }
}

/// What `live` needs of a connection.
pub trait Serial {
    /// The serial number it was given when accepted.
    fn serial(&self) -> u32;
}

/// The connection an index entry stands for: the slab's connection at its key if it is the one
/// that subscribed (`None`: the entry is stale). Every delivery goes through here.
pub fn live<C: Serial>(conns: &mut Slab<C>, subscriber: Subscriber) -> Option<&mut C> {
    conns.get_mut(subscriber.key()).filter(|conn| conn.serial() == subscriber.serial)
}

/// One channel's local subscribers.
#[derive(Debug, Default)]
pub struct LocalChannel {
    /// The subscribed connections, in no particular order.
    pub subscribers: Vec<Subscriber>,
    /// How many subscribers use each wire format, so fan-out encodes only the formats in use.
    pub per_format: [u32; Format::COUNT],
    /// Subscribers that have just finished a replay from history, with the last offset the
    /// replay delivered. Ring messages at or below that offset may still be on their way through
    /// the ring; fan-out skips them for these subscribers, then moves them to `subscribers`.
    pub catching_up: Vec<(Subscriber, u64)>,
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
    /// Adds `subscriber` to `channel`; returns its position (to be kept by the subscriber for
    /// `remove`).
    pub fn add(&mut self, channel: u64, subscriber: Subscriber, format: Format) -> u32 {
        let local = self.channels.entry(channel).or_default();
        local.subscribers.push(subscriber);
        local.per_format[format as usize] += 1;
        (local.subscribers.len() - 1) as u32
    }

    /// Removes the subscriber at `position`. Returns the one now at `position` (moved there from
    /// the end), whose stored position the caller must update.
    pub fn remove(&mut self, channel: u64, position: u32, format: Format) -> Option<Subscriber> {
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

    /// Adds a subscriber that has seen everything up to `replayed` (see `catching_up`).
    pub fn add_catching_up(&mut self, channel: u64, subscriber: Subscriber, replayed: u64) {
        self.channels.entry(channel).or_default().catching_up.push((subscriber, replayed));
    }

    /// Removes a catching-up subscriber.
    pub fn remove_catching_up(&mut self, channel: u64, subscriber: Subscriber) {
        if let Some(local) = self.channels.get_mut(&channel) {
            local.catching_up.retain(|&(s, _)| s != subscriber);
            if local.is_empty() {
                self.channels.remove(&channel);
            }
        }
    }

    /// Ends the catch-up of `subscriber` (it saw the ring pass its replayed offset).
    pub fn finish_catching_up(&mut self, channel: u64, subscriber: Subscriber) {
        if let Some(local) = self.channels.get_mut(&channel) {
            local.catching_up.retain(|&(s, _)| s != subscriber);
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

    fn sub(key: usize) -> Subscriber {
        Subscriber::new(key, 1)
    }

    #[test]
    fn swap_remove_reports_the_moved_key() {
        let mut index = Index::default();
        assert_eq!(index.add(7, sub(10), Format::Text), 0);
        assert_eq!(index.add(7, sub(11), Format::Binary), 1);
        assert_eq!(index.add(7, sub(12), Format::Text), 2);
        assert_eq!(index.get(7).unwrap().per_format, [2, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
        // Removing position 0 moves key 12 there.
        assert_eq!(index.remove(7, 0, Format::Text), Some(sub(12)));
        assert_eq!(index.get(7).unwrap().subscribers, vec![sub(12), sub(11)]);
        // Removing the last position moves nothing.
        assert_eq!(index.remove(7, 1, Format::Binary), None);
        assert_eq!(index.remove(7, 0, Format::Text), None);
        assert!(index.get(7).is_none(), "empty channels are dropped");
        assert!(index.is_empty());
    }

    struct Holder(u32);

    impl Serial for Holder {
        fn serial(&self) -> u32 {
            self.0
        }
    }

    /// A detach that was missed (simulated: the entry stays) must not hand the channel to the
    /// next connection given the same slab key.
    #[test]
    fn a_reused_key_never_receives_the_previous_holders_channel() {
        let mut conns: Slab<Holder> = Slab::new();
        let key = conns.insert(Holder(41));
        let mut index = Index::default();
        index.add(7, Subscriber::new(key, 41), Format::Text);
        index.add_catching_up(8, Subscriber::new(key, 41), 0);
        assert!(live(&mut conns, index.get(7).unwrap().subscribers[0]).is_some());
        // The connection goes, and another takes its key.
        conns.remove(key);
        assert_eq!(conns.insert(Holder(42)), key, "the slab reuses the key");
        let stale = index.get(7).unwrap().subscribers[0];
        assert!(live(&mut conns, stale).is_none(), "the new holder is not the subscriber");
        let (stale, _) = index.get(8).unwrap().catching_up[0];
        assert!(live(&mut conns, stale).is_none());
        // Nor an empty slot.
        conns.remove(key);
        assert!(live(&mut conns, Subscriber::new(key, 41)).is_none());
    }
}
