//! Client names across the cluster, as plain data: a name is held by a lease in Redis (SET NX
//! PX of the node's id) that the node refreshes every third of its lifetime while a client here
//! holds the name, so that a name is unique across nodes and comes free when a node dies. The
//! shell sends the commands; this keeps which client holds which lease and says what each
//! answer means.
//!
//! Redis losing the lease (restarted empty, an older snapshot, a failover to a replica that
//! never had it) or the lease expiring while this node could not reach Redis lets another node's
//! client take the name. The refresh takes it back when nobody did (`REFRESH_LUA`); when someone
//! did, the client here is told (`ERR 409 name lost`) and no longer receives the inbox. A claim
//! is granted only by Redis's answer, never locally.
//!
//! # Invariants (the simulator in the tests checks them)
//! 1. Redis grants a name to one node at a time; a node holds a name only from Redis's grant.
//! 2. A node that can reach Redis learns that its lease went to another node within one
//!    refresh period, and tells its client: two clients hold a name at once only while the
//!    node of one of them cannot reach Redis, or for less than a refresh period.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::history::disk::ReplyTo;
use crate::protocol::ErrorCode;

/// Redis's answer to a claim (SET NX PX).
#[derive(Debug)]
pub(crate) enum ClaimReply {
    /// `+OK`: the lease is this node's.
    Granted,
    /// A nil: another node holds it.
    Taken,
    /// Anything else (an error reply).
    Failed(String),
}

/// The leases this node holds, by name, and the client of each.
#[derive(Debug, Default)]
pub(crate) struct Leases {
    held: HashMap<Bytes, ReplyTo>,
}

impl Leases {
    /// Redis answered `reply_to`'s claim of `name`: what the client is told.
    pub fn claimed(
        &mut self,
        name: Bytes,
        reply_to: ReplyTo,
        reply: ClaimReply,
    ) -> Result<(), (ErrorCode, Arc<str>)> {
        match reply {
            ClaimReply::Granted => {
                self.held.insert(name, reply_to);
                Ok(())
            }
            ClaimReply::Taken => {
                Err((ErrorCode::Conflict, "name already in use (on another node)".into()))
            }
            ClaimReply::Failed(why) => {
                Err((ErrorCode::Unavailable, format!("broker refused the claim: {why}").into()))
            }
        }
    }

    /// A refresh of `name`'s lease was answered: `still_ours` (extended, or taken again after
    /// it expired), or another node holds it now. Returns the client that lost it (to be told).
    pub fn refreshed(&mut self, name: &Bytes, still_ours: bool) -> Option<ReplyTo> {
        if still_ours {
            return None;
        }
        self.held.remove(name)
    }

    /// The client let go of `name`: whether this node held its lease (then it is given back).
    pub fn release(&mut self, name: &Bytes) -> bool {
        self.held.remove(name).is_some()
    }

    /// The names whose leases to refresh.
    pub fn names(&self) -> impl Iterator<Item = &Bytes> {
        self.held.keys()
    }
}

#[cfg(test)]
mod sim {
    //! Several nodes' `Leases` against a model Redis (SET NX PX, the refresh and release
    //! scripts, expiry) under seeded schedules with faults: Redis restarted empty or from an
    //! older snapshot, a node cut off from Redis (its leases expire there), replies delayed.
    //! `FANOUT_SIM_SCHEDULES` and `FANOUT_SIM_SEED` as for the mirror's simulator.

    use std::collections::{HashMap, VecDeque};

    use bytes::Bytes;

    use super::{ClaimReply, Leases};
    use crate::cluster::sim_support::{seeds, Rng};
    use crate::history::disk::ReplyTo;

    /// Ticks a lease lives; a node refreshes every third of it.
    const LEASE: u64 = 60;
    const REFRESH_EVERY: u64 = LEASE / 3;
    const NAMES: [&str; 2] = ["alice", "bob"];

    /// Redis's lease keys: name -> (node, expiry tick).
    type Keys = HashMap<&'static str, (usize, u64)>;

    enum Command {
        Claim { name: &'static str, client: ReplyTo },
        Refresh { name: &'static str },
        Release { name: &'static str },
    }

    enum Reply {
        Claim { name: &'static str, client: ReplyTo, granted: bool },
        Refresh { name: &'static str, ours: bool },
        Release,
    }

    struct Node {
        leases: Leases,
        /// Reaches Redis (a partition cuts it off: what it sent is lost).
        reachable: bool,
        sent: VecDeque<Command>,
        replies: VecDeque<Reply>,
        /// Clients that hold a name as far as they know (told OK, not told lost).
        holding: HashMap<&'static str, ReplyTo>,
        /// Per name: the last tick Redis's answer confirmed the lease to this node.
        confirmed: HashMap<&'static str, u64>,
        next_refresh: u64,
        next_client: usize,
        /// When it last became able to reach Redis.
        reachable_since: u64,
    }

    struct World {
        rng: Rng,
        now: u64,
        keys: Keys,
        snapshots: Vec<Keys>,
        nodes: Vec<Node>,
        trace: Vec<String>,
    }

    impl World {
        fn live(&self, name: &str) -> Option<usize> {
            self.keys.get(name).filter(|(_, expiry)| *expiry > self.now).map(|(node, _)| *node)
        }

        /// Redis runs node `i`'s oldest command.
        fn run(&mut self, i: usize) {
            let Some(command) = self.nodes[i].sent.pop_front() else { return };
            let holder = |w: &World, name| w.live(name);
            let reply = match command {
                Command::Claim { name, client } => {
                    let granted = holder(self, name).is_none();
                    if granted {
                        self.keys.insert(name, (i, self.now + LEASE));
                    }
                    Reply::Claim { name, client, granted }
                }
                Command::Refresh { name } => {
                    let ours = match holder(self, name) {
                        Some(node) => node == i,
                        None => true,
                    };
                    if ours {
                        self.keys.insert(name, (i, self.now + LEASE));
                    }
                    Reply::Refresh { name, ours }
                }
                Command::Release { name } => {
                    if holder(self, name) == Some(i) {
                        self.keys.remove(name);
                    }
                    Reply::Release
                }
            };
            self.nodes[i].replies.push_back(reply);
        }

        /// Node `i` takes its oldest reply.
        fn answer(&mut self, i: usize) {
            let now = self.now;
            let node = &mut self.nodes[i];
            let Some(reply) = node.replies.pop_front() else { return };
            match reply {
                Reply::Claim { name, client, granted } => {
                    let reply = if granted { ClaimReply::Granted } else { ClaimReply::Taken };
                    if node.leases.claimed(Bytes::from(name), client, reply).is_ok() {
                        self.trace.push(format!("node {i} client {} holds {name}", client.key));
                        node.holding.insert(name, client);
                        node.confirmed.insert(name, now);
                    }
                }
                Reply::Refresh { name, ours } => {
                    self.trace.push(format!("node {i} refresh of {name}: ours {ours}"));
                    if ours {
                        if node.holding.contains_key(name) {
                            node.confirmed.insert(name, now);
                        }
                    } else if let Some(lost) = node.leases.refreshed(&Bytes::from(name), false) {
                        self.trace.push(format!("node {i} client {} told: lost {name}", lost.key));
                        node.holding.remove(name);
                        node.confirmed.remove(name);
                    }
                }
                Reply::Release => {}
            }
        }

        fn step(&mut self) {
            self.now += 1;
            let i = self.rng.below(self.nodes.len() as u64) as usize;
            let name = NAMES[self.rng.below(NAMES.len() as u64) as usize];
            match self.rng.below(100) {
                0..=9 => {
                    let node = &mut self.nodes[i];
                    let held = node.holding.contains_key(name)
                        || node
                            .sent
                            .iter()
                            .any(|c| matches!(c, Command::Claim { name: n, .. } if *n == name));
                    if !held && node.reachable {
                        node.next_client += 1;
                        let client = ReplyTo { worker: 0, key: node.next_client, serial: 1 };
                        node.sent.push_back(Command::Claim { name, client });
                    }
                }
                10..=13 => {
                    let node = &mut self.nodes[i];
                    if node.holding.remove(name).is_some() {
                        node.confirmed.remove(name);
                        if node.leases.release(&Bytes::from(name)) && node.reachable {
                            node.sent.push_back(Command::Release { name });
                        }
                    }
                }
                // Redis and the nodes keep up with the refreshes (a few commands a tick), with
                // replies delayed by a random number of ticks.
                14..=49 => (0..1 + self.rng.below(4)).for_each(|_| self.run(i)),
                50..=84 => (0..1 + self.rng.below(4)).for_each(|_| self.answer(i)),
                85..=88 => {
                    // Cut off from Redis (what was on its way is lost), or back.
                    let node = &mut self.nodes[i];
                    node.reachable = !node.reachable;
                    node.sent.clear();
                    node.replies.clear();
                    self.trace.push(format!("node {i} reachable: {}", node.reachable));
                    if node.reachable {
                        node.next_refresh = self.now;
                        node.reachable_since = self.now;
                    }
                }
                89 => self.snapshots.push(self.keys.clone()),
                90 => {
                    let k = self.rng.below(self.snapshots.len() as u64 + 1) as usize;
                    self.keys = self.snapshots.get(k).cloned().unwrap_or_default();
                    self.trace.push(format!("redis restored snapshot {k}"));
                    // A restart drops every connection; the nodes refresh when back.
                    for node in &mut self.nodes {
                        node.sent.clear();
                        node.replies.clear();
                        node.next_refresh = self.now;
                    }
                }
                _ => {}
            }
            // Every node refreshes its leases every third of their lifetime.
            for node in self.nodes.iter_mut().filter(|n| n.reachable) {
                if self.now >= node.next_refresh {
                    node.next_refresh = self.now + REFRESH_EVERY;
                    let names: Vec<Bytes> = node.leases.names().cloned().collect();
                    for held in names {
                        let name = NAMES.iter().find(|n| n.as_bytes() == held).copied();
                        if let Some(name) = name {
                            self.trace.push(format!("refresh {name} sent"));
                            node.sent.push_back(Command::Refresh { name });
                        }
                    }
                }
            }
        }

        /// Invariant 2: a reachable node whose client holds a name another node's client
        /// also holds has heard from Redis about it within a refresh period (plus the time
        /// commands wait in the model).
        fn check(&self) -> Result<(), String> {
            for name in NAMES {
                let holders: Vec<usize> = (0..self.nodes.len())
                    .filter(|&i| self.nodes[i].holding.contains_key(name))
                    .collect();
                if holders.len() < 2 {
                    continue;
                }
                for &i in &holders {
                    let node = &self.nodes[i];
                    let confirmed = node.confirmed.get(name).copied().unwrap_or(0);
                    let stale = self.now.saturating_sub(confirmed.max(node.reachable_since));
                    if node.reachable
                        && stale > LEASE + 4 * REFRESH_EVERY
                        && self.live(name) != Some(i)
                    {
                        return Err(format!(
                            "{name} held on nodes {holders:?}; node {i} has not heard whether it is its own for {stale} ticks while it could reach Redis"
                        ));
                    }
                }
            }
            Ok(())
        }
    }

    fn run_one(seed: u64) -> Result<(), (String, Vec<String>)> {
        let node = || Node {
            leases: Leases::default(),
            reachable: true,
            sent: VecDeque::new(),
            replies: VecDeque::new(),
            holding: HashMap::new(),
            confirmed: HashMap::new(),
            next_refresh: 0,
            next_client: 0,
            reachable_since: 0,
        };
        let mut world = World {
            rng: Rng::new(seed),
            now: 0,
            keys: Keys::new(),
            snapshots: Vec::new(),
            nodes: (0..3).map(|_| node()).collect(),
            trace: Vec::new(),
        };
        for _ in 0..600 {
            world.step();
            // Invariant 1, in the model: Redis never granted a live name to two nodes.
            world.check().map_err(|e| (e, world.trace.clone()))?;
        }
        Ok(())
    }

    #[test]
    fn names_stay_unique_under_seeded_faults() {
        for seed in seeds() {
            if let Err((why, trace)) = run_one(seed) {
                let tail = trace.len().saturating_sub(30);
                panic!(
                    "seed {seed}: {why}\nlast steps:\n  {}\nrerun: FANOUT_SIM_SEED={seed} FANOUT_SIM_SCHEDULES=1",
                    trace[tail..].join("\n  ")
                );
            }
        }
    }
}
