//! Redis Cluster: which master serves each hash slot, and when to read the slot map again, as
//! plain data: no sockets, no clock (every call is told the time). The shell reads the map on a
//! helper thread (`link::read_slot_map`) when `due` says so, hands it to `take`, and connects or
//! lets go of servers as the answer says.
//!
//! The map is read at start, at once after MOVED/ASK or a sharded subscription ended by the
//! server, soon after a master is lost, every `RETRY` while a master of the map does not answer
//! (a failover names its promoted replica once it took over), and every `REFRESH` otherwise. It
//! is asked of masters that answer first, then the seeds, then the rest: never only a dead one.
//! Only masters that own slots are servers of the map; a replica (an old master that came back
//! after a failover) is never counted.

use std::time::{Duration, Instant};

use super::{BACKOFF_MAX, BACKOFF_MIN};
use crate::cluster::RedisEndpoint;

/// Hash slots of a Redis Cluster.
pub(crate) const SLOTS: usize = 16384;
/// A slot whose server is not known.
const NO_SERVER: u16 = u16::MAX;
/// The slot map is read again this often while every master answers...
const REFRESH: Duration = Duration::from_secs(10);
/// ...and this often while a master of the map does not (a failover promotes one of its
/// replicas within the cluster's node timeout; the map names it once it has).
const RETRY: Duration = Duration::from_millis(250);

/// A range of hash slots and its master: (first slot, last slot, host, port).
pub(crate) type SlotRange = (u16, u16, String, u16);

/// What taking a slot map changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct MapTaken {
    /// Masters the servers did not have: the shell adds them, in this order, after its own.
    pub added: Vec<RedisEndpoint>,
    /// Per server (old and added): whether the map names it.
    pub mapped: Vec<bool>,
    /// The number of masters, when it changed (logged).
    pub masters: Option<usize>,
}

#[derive(Debug)]
pub(crate) struct Topology {
    /// The server of each hash slot (`NO_SERVER` while unknown).
    slots: Box<[u16]>,
    /// When to read the map (again); `None` while nothing asks for it.
    read_at: Option<Instant>,
    /// A read is under way on a helper thread.
    reading: bool,
    backoff: Duration,
    /// When to read the map again while everything is up.
    next_check: Instant,
    /// Masters in the last map taken.
    masters: usize,
}

impl Topology {
    /// Nothing known yet: the map is read at once.
    pub fn new(now: Instant) -> Topology {
        Topology {
            slots: vec![NO_SERVER; SLOTS].into_boxed_slice(),
            read_at: Some(now),
            reading: false,
            backoff: BACKOFF_MIN,
            next_check: now + REFRESH,
            masters: 0,
        }
    }

    /// The server of a pub/sub channel (its hash slot), unknown while the map is not.
    pub fn server_of(&self, topic: &[u8]) -> Option<usize> {
        let server = self.slots[usize::from(crate::cluster::key_slot(topic))];
        (server != NO_SERVER).then_some(usize::from(server))
    }

    /// Whether every slot has a server, and each of them `is_ready`: publishes go through.
    pub fn ready(&self, is_ready: impl Fn(usize) -> bool) -> bool {
        self.slots.iter().all(|&s| s != NO_SERVER && is_ready(usize::from(s)))
    }

    /// Per server among `servers`: whether the map names it.
    pub fn mapped(&self, servers: usize) -> Vec<bool> {
        let mut mapped = vec![false; servers];
        for &slot in self.slots.iter() {
            if let Some(m) = mapped.get_mut(usize::from(slot)) {
                *m = true;
            }
        }
        mapped
    }

    /// When the shell must look at the topology again.
    pub fn next_timer(&self) -> Option<Instant> {
        match self.reading {
            true => None,
            false => Some(self.read_at.map_or(self.next_check, |at| at.min(self.next_check))),
        }
    }

    /// Whether to start reading the map now; `degraded` (a master of the map does not answer,
    /// asked only when the periodic read is due) makes the next one come sooner. Once true, the
    /// read is under way until `take` or `failed`.
    pub fn due(&mut self, now: Instant, degraded: impl FnOnce(&Topology) -> bool) -> bool {
        if now >= self.next_check && self.read_at.is_none() {
            self.next_check = now + if degraded(self) { RETRY } else { REFRESH };
            self.read_at = Some(now);
        }
        if self.reading || self.read_at.is_none_or(|at| at > now) {
            return false;
        }
        self.reading = true;
        self.read_at = None;
        true
    }

    /// A slot is not where the map said (MOVED, ASK, a sharded subscription ended): read again
    /// now.
    pub fn moved(&mut self, now: Instant) {
        self.read_at = Some(now);
    }

    /// A master went away: one of its replicas may take over. Read soon, and often until it has.
    pub fn lost_master(&mut self, now: Instant) {
        if self.read_at.is_none() {
            self.read_at = Some(now + BACKOFF_MIN);
            self.next_check = now + RETRY;
        }
    }

    /// No node could give the map; read again after `delay` (jittered by the caller from
    /// `backoff`), which doubles for next time.
    pub fn failed(&mut self, now: Instant, delay: impl FnOnce(Duration) -> Duration) -> Duration {
        self.reading = false;
        let delay = delay(self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        self.read_at = Some(now + delay);
        delay
    }

    /// The read could not even start (no thread): try again much later.
    pub fn not_started(&mut self, now: Instant) {
        self.reading = false;
        self.read_at = Some(now + BACKOFF_MAX);
    }

    /// The hosts to ask for the map, in order: masters that answer, the seeds, the rest.
    pub fn candidates<'a>(
        answering: impl Iterator<Item = &'a RedisEndpoint>,
        seeds: &'a [RedisEndpoint],
        all: impl Iterator<Item = &'a RedisEndpoint>,
    ) -> Vec<RedisEndpoint> {
        let mut candidates: Vec<RedisEndpoint> = Vec::new();
        for endpoint in answering.chain(seeds.iter()).chain(all) {
            if !candidates.iter().any(|c| c.host == endpoint.host && c.port == endpoint.port) {
                candidates.push(endpoint.clone());
            }
        }
        candidates
    }

    /// Takes a map `seed` gave: the server of each slot among `servers` (masters new to them
    /// are added), which servers it names, and whether it is complete. `degraded` says whether
    /// a server it names does not answer now (then it is read again soon).
    pub fn take(
        &mut self,
        seed: &RedisEndpoint,
        ranges: Vec<SlotRange>,
        servers: &[RedisEndpoint],
    ) -> MapTaken {
        self.reading = false;
        self.read_at = None;
        self.backoff = BACKOFF_MIN;
        let mut slots = vec![NO_SERVER; SLOTS].into_boxed_slice();
        let mut added: Vec<RedisEndpoint> = Vec::new();
        for (first, last, host, port) in ranges {
            let host = if host.is_empty() { seed.host.clone() } else { host };
            let known = servers.iter().chain(&added).position(|s| s.host == host && s.port == port);
            let i = known.unwrap_or_else(|| {
                added.push(RedisEndpoint { host, port, db: 0, ..seed.clone() });
                servers.len() + added.len() - 1
            });
            for slot in first..=last.min(SLOTS as u16 - 1) {
                slots[usize::from(slot)] = i as u16;
            }
        }
        self.slots = slots;
        let mapped = self.mapped(servers.len() + added.len());
        let masters = mapped.iter().filter(|&&m| m).count();
        let changed = std::mem::replace(&mut self.masters, masters) != masters;
        MapTaken { added, mapped, masters: changed.then_some(masters) }
    }

    /// After `take`: a server the map names does not answer yet, so the map is read again soon.
    pub fn degraded(&mut self, now: Instant) {
        self.next_check = self.next_check.min(now + RETRY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(port: u16) -> RedisEndpoint {
        RedisEndpoint {
            host: "127.0.0.1".into(),
            port,
            db: 0,
            user: None,
            password: None,
            tls: false,
        }
    }

    fn range(first: u16, last: u16, port: u16) -> SlotRange {
        (first, last, "127.0.0.1".into(), port)
    }

    #[test]
    fn a_failover_moves_slots_to_the_promoted_replica_and_lets_the_dead_master_go() {
        let now = Instant::now();
        let mut topology = Topology::new(now);
        assert!(topology.due(now, |_| false), "read at start");
        assert!(!topology.due(now, |_| false), "once at a time");
        let seed = endpoint(7000);
        let map = vec![range(0, 8191, 7000), range(8192, 16383, 7001)];
        let taken = topology.take(&seed, map, &[]);
        assert_eq!(taken.added, [endpoint(7000), endpoint(7001)]);
        assert_eq!(taken.mapped, [true, true]);
        assert_eq!(taken.masters, Some(2));
        assert!(topology.ready(|_| true));
        let servers = [endpoint(7000), endpoint(7001)];
        // 7001 dies: read soon, and every RETRY while it does not answer.
        topology.lost_master(now);
        let soon = now + BACKOFF_MIN;
        assert!(!topology.due(now, |_| true));
        assert!(topology.due(soon, |_| true));
        // The cluster has not failed over yet: the map still names the dead master.
        let map = vec![range(0, 8191, 7000), range(8192, 16383, 7001)];
        let taken = topology.take(&seed, map, &servers);
        assert_eq!((taken.added.len(), taken.masters), (0, None));
        topology.degraded(soon);
        assert!(!topology.ready(|i| i == 0), "publishes to the dead master's slots are refused");
        assert!(topology.due(soon + RETRY, |_| true), "read again after RETRY, not REFRESH");
        // Its replica 7004 took over; the old master comes back later as a replica, unnamed.
        let map = vec![range(0, 8191, 7000), range(8192, 16383, 7004)];
        let taken = topology.take(&seed, map, &servers);
        assert_eq!(taken.added, [endpoint(7004)]);
        assert_eq!(taken.mapped, [true, false, true], "the old master is no server of the map");
        assert_eq!(taken.masters, None, "still two masters");
        let expected = if crate::cluster::key_slot(b"{x}") >= 8192 { 2 } else { 0 };
        assert_eq!(topology.server_of(b"{x}"), Some(expected));
        assert!(topology.ready(|i| i != 1), "the dead one is not asked");
    }

    #[test]
    fn the_map_is_asked_of_answering_masters_then_seeds_then_the_rest() {
        let (a, b, c, seed) = (endpoint(1), endpoint(2), endpoint(3), endpoint(9));
        let asked = Topology::candidates(
            [&b].into_iter(),
            &[seed.clone(), b.clone()],
            [&a, &b, &c].into_iter(),
        );
        assert_eq!(asked, [b, seed, a, c]);
    }

    #[test]
    fn a_failed_read_backs_off_and_a_move_reads_at_once() {
        let now = Instant::now();
        let mut topology = Topology::new(now);
        assert!(topology.due(now, |_| false));
        let first = topology.failed(now, |d| d);
        assert_eq!(first, BACKOFF_MIN);
        assert!(!topology.due(now, |_| false));
        assert!(topology.due(now + first, |_| false));
        assert_eq!(topology.failed(now, |d| d), BACKOFF_MIN * 2);
        topology.moved(now);
        assert!(topology.due(now, |_| false), "MOVED reads again now");
        assert!(!topology.ready(|_| true), "nothing known: nothing ready");
        assert_eq!(topology.server_of(b"x"), None);
    }
}
