//! Channels, the messages that travel the ring, and the server-wide registries of channel names and
//! client names. These are the only structures workers share besides the ring; none is touched per
//! subscriber, and the channel registry is consulted only when a worker meets a name for the first
//! time (each worker caches the `Arc<Channel>`s it has used).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::history::{ChannelLog, HistoryLimits, Totals};
use crate::protocol::{validate_channel, ChannelKind};

/// One channel: its identity, offset counter and history.
#[derive(Debug)]
pub struct Channel {
    /// Server-unique id; the worker-local index is keyed by it (cheaper to hash than the name).
    pub id: u64,
    /// The name as clients wrote it.
    pub name: Bytes,
    /// Topic, broadcast (`*`) or inbox (`@name`).
    pub kind: ChannelKind,
    /// Offset counter and retained messages. Held while a message is claimed in the ring and
    /// appended here, which is what makes ring order equal offset order within a channel and the
    /// log gap-free.
    log: Mutex<ChannelLog>,
}

impl Channel {
    fn new(id: u64, name: Bytes, kind: ChannelKind) -> Self {
        Channel { id, name, kind, log: Mutex::new(ChannelLog::default()) }
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

/// What travels through the ring: one published message.
#[derive(Debug)]
pub struct Message {
    /// Its channel.
    pub channel: Arc<Channel>,
    /// Its offset within the channel.
    pub offset: u64,
    /// Opaque payload, shared, never copied per subscriber.
    pub payload: Bytes,
}

/// Why a channel could not be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// `max_channels` channels exist already.
    #[error("too many channels (the limit is {0})")]
    TooMany(usize),
}

/// All channels by name.
#[derive(Debug)]
pub struct ChannelRegistry {
    by_name: Mutex<HashMap<Bytes, Arc<Channel>>>,
    next_id: AtomicU64,
    max_channels: usize,
    broadcast: Arc<Channel>,
    /// Retention for every channel's log.
    pub history: HistoryLimits,
    /// Bytes and messages retained over all channels.
    pub retained: Totals,
}

impl ChannelRegistry {
    /// An empty registry holding only the broadcast channel `*`.
    pub fn new(max_channels: usize, history: HistoryLimits) -> Self {
        let broadcast = Arc::new(Channel::new(0, Bytes::from_static(b"*"), ChannelKind::Broadcast));
        let by_name = HashMap::from([(broadcast.name.clone(), broadcast.clone())]);
        ChannelRegistry {
            by_name: Mutex::new(by_name),
            next_id: AtomicU64::new(1),
            max_channels,
            broadcast,
            history,
            retained: Totals::default(),
        }
    }

    /// The channel of that (already validated) name, created if needed.
    pub fn get_or_create(&self, name: &[u8]) -> Result<Arc<Channel>, ChannelError> {
        let mut by_name = self.by_name.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(channel) = by_name.get(name) {
            return Ok(channel.clone());
        }
        if by_name.len() >= self.max_channels {
            return Err(ChannelError::TooMany(self.max_channels));
        }
        let kind = validate_channel(name).unwrap_or(ChannelKind::Topic);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let channel = Arc::new(Channel::new(id, Bytes::copy_from_slice(name), kind));
        by_name.insert(channel.name.clone(), channel.clone());
        Ok(channel)
    }

    /// Puts a channel read back from disk in place (before any worker runs).
    pub fn restore(&self, name: Bytes, log: ChannelLog) {
        let mut by_name = self.by_name.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let kind = validate_channel(&name).unwrap_or(ChannelKind::Topic);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let channel = Channel { id, name: name.clone(), kind, log: Mutex::new(log) };
        by_name.insert(name, Arc::new(channel));
    }

    /// The broadcast channel `*`.
    pub fn broadcast(&self) -> &Arc<Channel> {
        &self.broadcast
    }

    /// Number of channels, `*` included.
    pub fn len(&self) -> usize {
        self.by_name.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).len()
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
        self.claimed.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
        let registry = ChannelRegistry::new(3, history);
        let a = registry.get_or_create(b"a").unwrap();
        assert!(Arc::ptr_eq(&a, &registry.get_or_create(b"a").unwrap()));
        assert_eq!(registry.get_or_create(b"@bob").unwrap().kind, ChannelKind::Inbox);
        assert_eq!(registry.get_or_create(b"c").unwrap_err(), ChannelError::TooMany(3));
        assert_eq!(registry.get_or_create(b"*").unwrap().kind, ChannelKind::Broadcast);
        assert_eq!(a.last_offset(), 0);
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
