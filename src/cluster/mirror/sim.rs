//! The simulator: several nodes' mirrors of one channel against a model Redis (the publish and
//! sync scripts' semantics, the stream, pub/sub), under seeded random schedules with faults:
//! pushes lost (a connection down) or delivered twice, replies and pushes delivered in any causal order, Redis
//! restarted empty or from an older snapshot (a lagging replica promoted is the same), keys
//! expiring, the stream trimmed, connections dropped. After every step it checks the
//! invariants; after the schedule it quiesces (faults stop, everything is delivered, a last
//! publish and quiet check) and checks that every acknowledged message reached every node's
//! subscribers, or that they were told (an epoch change, a hole). A failing seed prints its
//! schedule. `cargo test mirror` runs a few thousand; `FANOUT_SIM_SCHEDULES=100000` more.

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::Bytes;

use super::{ChannelMirror, LocalLog, Outcome, Page, State, Step};
use crate::cluster::sim_support::{seeds, Rng};
use crate::cluster::Envelope;

const PAGE: usize = 8;

/// Redis's keys for the channel: meta (epoch, latest offset) and the stream.
#[derive(Clone, Default, Debug)]
struct Keys {
    meta: Option<(u64, u64)>,
    stream: BTreeMap<u64, Bytes>,
}

#[derive(Default)]
struct Redis {
    keys: Keys,
    snapshots: Vec<Keys>,
    next_epoch: u64,
}

impl Redis {
    /// New epochs are ordered, as the broker makes them (`cluster::epoch_after`).
    fn candidate(&mut self) -> u64 {
        self.next_epoch += 1;
        crate::cluster::ORDERED_EPOCH | self.next_epoch
    }

    /// PUBLISH_LUA for one channel: (epoch, first offset).
    fn publish(&mut self, payloads: &[Bytes], known: Option<(u64, u64)>) -> (u64, u64) {
        let candidate = self.candidate();
        let (epoch, o) = self.keys.meta.unwrap_or((0, 0));
        let first = o + 1;
        let fenced = known.is_some_and(|(e, last)| e == epoch && first <= last);
        let epoch = if self.keys.meta.is_none() || fenced { candidate } else { epoch };
        for (k, payload) in payloads.iter().enumerate() {
            self.keys.stream.insert(first + k as u64, payload.clone());
        }
        self.keys.meta = Some((epoch, o + payloads.len() as u64));
        (epoch, first)
    }

    /// SYNC_LUA.
    fn sync(&mut self, after: u64, ending: Option<u64>) -> Page {
        let candidate = self.candidate();
        let (epoch, last) = match self.keys.meta {
            Some((e, o)) if Some(e) != ending => (e, o),
            Some((_, o)) => (candidate, o),
            None => (candidate, 0),
        };
        self.keys.meta = Some((epoch, last));
        let entries: Vec<(u64, u64, Bytes)> =
            self.keys.stream.range(after..).take(PAGE).map(|(&o, p)| (o, 0, p.clone())).collect();
        let full = entries.len() == PAGE;
        Page { after, epoch, last, entries, full }
    }
}

/// What a node's subscribers saw.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Message(u64, u64, Bytes),
    EpochNotice,
    Hole(u64),
}

/// A node's local log, as the broker keeps it.
#[derive(Default)]
struct Log {
    epoch: u64,
    next: u64,
    retained: BTreeMap<u64, Bytes>,
}

impl LocalLog for Log {
    fn epoch(&self) -> u64 {
        self.epoch
    }
    fn next_offset(&self) -> u64 {
        self.next
    }
    fn differs_at(&self, offset: u64, payload: &[u8]) -> bool {
        self.retained.get(&offset).is_some_and(|mine| mine[..] != *payload)
    }
}

/// A command on its way: sent, then run by Redis, then its reply delivered.
enum Command {
    Sync {
        after: u64,
        ending: Option<u64>,
    },
    Check {
        asked: (u64, u64),
    },
    /// The publish script, with what the node knew when it sent it (the fence).
    Publish {
        payloads: Vec<Bytes>,
        known: Option<(u64, u64)>,
    },
}

enum Reply {
    Synced(Page),
    Checked((u64, u64), (Option<u64>, Option<u64>)),
    Published { run: u64, epoch: u64, first: u64, payloads: Vec<Bytes> },
}

struct Node {
    mirror: ChannelMirror,
    log: Log,
    connected: bool,
    /// Subscription asked, confirmation not yet delivered.
    confirming: bool,
    pushes: VecDeque<Envelope>,
    sent: VecDeque<Command>,
    replies: VecDeque<Reply>,
    seen: Vec<Seen>,
    /// Everything its log ever held: (epoch, offset) -> payload.
    held: HashMap<(u64, u64), Bytes>,
    behind: Option<u64>,
    /// What it decided (rollbacks), for a failing seed's report.
    events: Vec<String>,
    /// How many publishes Redis had run when its subscribers began to be served: the ones
    /// after must reach them.
    live_at: Option<u64>,
}

impl Node {
    fn new() -> Node {
        Node {
            mirror: ChannelMirror::new(u64::MAX, false),
            log: Log { epoch: 0, next: 1, retained: BTreeMap::new() },
            connected: true,
            confirming: true,
            pushes: VecDeque::new(),
            sent: VecDeque::new(),
            replies: VecDeque::new(),
            seen: Vec::new(),
            held: HashMap::new(),
            behind: None,
            live_at: None,
            events: Vec::new(),
        }
    }

    /// Carries out a mirror's steps as the broker does; `Err` breaks invariant 1.
    fn apply(&mut self, outcome: Outcome) -> Result<(), String> {
        if let Some((epoch, why)) = outcome.rollback {
            self.events.push(format!(
                "rollback of {epoch}: {why:?} at log ({}, {})",
                self.log.epoch, self.log.next
            ));
        }
        // A hole announced is where the log may jump to.
        let mut hole_to = None;
        for step in outcome.steps {
            match step {
                Step::Append { offset, payload, deliver, .. } => {
                    if offset != self.log.next && Some(offset) != hole_to {
                        return Err(format!("append of {offset} where {} was next", self.log.next));
                    }
                    let key = (self.log.epoch, offset);
                    if let Some(had) = self.held.insert(key, payload.clone()) {
                        if had != payload {
                            return Err(format!("{key:?} named {had:?} and then {payload:?}"));
                        }
                    }
                    self.log.retained.insert(offset, payload.clone());
                    self.log.next = offset + 1;
                    if deliver {
                        self.seen.push(Seen::Message(self.log.epoch, offset, payload));
                    }
                }
                Step::Restart { epoch, next, notify } => {
                    self.events.push(format!("restart ({epoch}, {next}) notify {notify}"));
                    self.log = Log { epoch, next, retained: BTreeMap::new() };
                    if notify {
                        self.seen.push(Seen::EpochNotice);
                    } else {
                        // A fresh mirror's first read: nothing it held was served yet.
                        self.held.clear();
                    }
                }
                Step::Hole { from, notify, .. } => {
                    self.events.push(format!(
                        "hole to {from} at log ({}, {})",
                        self.log.epoch, self.log.next
                    ));
                    hole_to = Some(from);
                    if notify {
                        self.seen.push(Seen::Hole(from));
                    }
                }
                Step::SkipTo { next } => self.log.next = self.log.next.max(next),
                Step::Sync { after, ending } => {
                    if self.connected {
                        self.sent.push_back(Command::Sync { after, ending });
                    }
                }
                Step::Served | Step::Repaired => {}
            }
        }
        Ok(())
    }

    /// The connection to Redis dropped and came back: what was in flight is lost, the
    /// channel is subscribed again.
    /// Redis restarted (its run id changed): the node reconnects, and its mirror knows the
    /// server was replaced.
    fn reconnect_to_another_server(&mut self) {
        self.reconnect();
        self.mirror.server_replaced();
    }

    fn reconnect(&mut self) {
        self.pushes.clear();
        self.sent.clear();
        self.replies.clear();
        self.mirror.resubscribe();
        self.confirming = true;
        self.connected = true;
    }
}

struct World {
    rng: Rng,
    redis: Redis,
    nodes: Vec<Node>,
    /// Acknowledged publishes: (when Redis ran it, epoch, offset, payload).
    acked: Vec<(u64, u64, u64, Bytes)>,
    /// Publishes Redis ran so far (their order).
    executed: u64,
    next_payload: u64,
    trace: Vec<String>,
}

impl World {
    fn new(seed: u64, nodes: usize) -> World {
        World {
            rng: Rng::new(seed),
            redis: Redis::default(),
            nodes: (0..nodes).map(|_| Node::new()).collect(),
            acked: Vec::new(),
            executed: 0,
            next_payload: 0,
            trace: Vec::new(),
        }
    }

    /// A publisher on node `from` sends a publish (refused at once while it is cut off).
    fn publish(&mut self, from: usize) {
        let count = 1 + self.rng.below(3) as usize;
        let payloads: Vec<Bytes> = (0..count)
            .map(|_| {
                self.next_payload += 1;
                Bytes::from(format!("p{}", self.next_payload))
            })
            .collect();
        let node = &mut self.nodes[from];
        if !node.connected {
            return;
        }
        let known = node.mirror.known(&node.log);
        node.sent.push_back(Command::Publish { payloads, known });
    }

    /// Redis runs the oldest command node `i` sent; its reply goes back on the same
    /// connection, in order.
    fn run_command(&mut self, i: usize) -> bool {
        let Some(command) = self.nodes[i].sent.pop_front() else { return false };
        let reply = match command {
            Command::Sync { after, ending } => Reply::Synced(self.redis.sync(after, ending)),
            Command::Check { asked } => {
                let meta = self.redis.keys.meta;
                Reply::Checked(asked, (meta.map(|m| m.0), meta.map(|m| m.1)))
            }
            Command::Publish { payloads, known } => {
                let (epoch, first) = self.redis.publish(&payloads, known);
                self.trace.push(format!(
                    "publish {} from node {i} known {known:?}: ({epoch}, {first})",
                    payloads.len()
                ));
                for (k, payload) in payloads.iter().enumerate() {
                    let offset = first + k as u64;
                    for node in self.nodes.iter_mut().filter(|n| n.connected) {
                        let envelope = Envelope { epoch, offset, payload: payload.clone() };
                        node.pushes.push_back(envelope);
                    }
                }
                self.executed += 1;
                Reply::Published { run: self.executed, epoch, first, payloads }
            }
        };
        self.nodes[i].replies.push_back(reply);
        true
    }

    /// Node `i` takes its oldest reply.
    fn take_reply(&mut self, i: usize) -> Result<bool, String> {
        let Some(reply) = self.nodes[i].replies.pop_front() else { return Ok(false) };
        if let Reply::Published { run, epoch, first, payloads } = &reply {
            // Acknowledged now, to the publisher.
            let names: Vec<String> =
                payloads.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect();
            self.trace.push(format!("node {i} acked {names:?} at ({epoch}, {first})"));
            for (k, payload) in payloads.iter().enumerate() {
                self.acked.push((*run, *epoch, first + k as u64, payload.clone()));
            }
        }
        let node = &mut self.nodes[i];
        let outcome = match reply {
            Reply::Synced(page) => {
                node.events.push(format!(
                    "page after {} ({}, {}) first {:?} unverified {}",
                    page.after,
                    page.epoch,
                    page.last,
                    page.entries.first().map(|e| e.0),
                    node.mirror.unverified
                ));
                node.mirror.synced(&node.log, page, 0)
            }
            Reply::Checked(asked, redis) => {
                let (outcome, behind) = node.mirror.checked(&node.log, asked, redis);
                node.behind = behind;
                outcome
            }
            Reply::Published { epoch, first, payloads, .. } => {
                let places = payloads
                    .into_iter()
                    .enumerate()
                    .map(|(k, payload)| super::Acked { epoch, offset: first + k as u64, payload })
                    .collect();
                node.mirror.published(&node.log, places)
            }
        };
        node.apply(outcome)?;
        Ok(true)
    }

    /// One random event.
    fn step(&mut self, faults: bool) -> Result<(), String> {
        let n = self.nodes.len() as u64;
        let i = self.rng.below(n) as usize;
        match self.rng.below(100) {
            0..=19 => self.publish(i),
            20..=44 => {
                let node = &mut self.nodes[i];
                if let Some(envelope) = node.pushes.pop_front() {
                    let outcome = node.mirror.pushed(&node.log, envelope, 0);
                    node.apply(outcome)?;
                } else if node.confirming && node.connected {
                    node.confirming = false;
                    let outcome = node.mirror.subscribed(&node.log);
                    node.apply(outcome)?;
                }
            }
            45..=59 => {
                self.run_command(i);
            }
            60..=79 => {
                self.take_reply(i)?;
            }
            80..=84 => {
                // The quiet check, and the sweep after it.
                let node = &mut self.nodes[i];
                if let Some(latest) = node.behind.take() {
                    if let Some(outcome) = node.mirror.still_behind(&node.log, latest) {
                        node.apply(outcome)?;
                    }
                }
                if matches!(node.mirror.state, State::Live) && node.connected {
                    let asked = node.mirror.fence(&node.log);
                    node.sent.push_back(Command::Check { asked });
                }
            }
            85..=89 if faults => {
                self.trace.push(format!("node {i} reconnects"));
                self.nodes[i].reconnect();
            }
            90..=91 if faults => {
                self.trace.push("snapshot".into());
                self.redis.snapshots.push(self.redis.keys.clone());
            }
            92 if faults => {
                // Restarted from an older snapshot (or a lagging replica promoted).
                let k = self.rng.below(self.redis.snapshots.len() as u64 + 1) as usize;
                self.redis.keys = self.redis.snapshots.get(k).cloned().unwrap_or_default();
                // One rollback at a time: no later restore goes back past this one (a second
                // restore to before the first can bring back an epoch that a node lagging
                // behind still mirrors, which it cannot tell: a limit the README states).
                self.redis.snapshots.clear();
                self.trace.push(format!("redis restored snapshot {k}: {:?}", self.redis.keys.meta));
                self.nodes.iter_mut().for_each(Node::reconnect_to_another_server);
            }
            93 if faults && self.rng.chance(30) => {
                self.trace.push("redis restarted empty".into());
                self.redis.keys = Keys::default();
                self.redis.snapshots.clear();
                self.nodes.iter_mut().for_each(Node::reconnect_to_another_server);
            }
            94 if faults => {
                // The stream trimmed (MAXLEN), keeping its newest entries.
                let keep = 2 + self.rng.below(6) as usize;
                while self.redis.keys.stream.len() > keep {
                    self.redis.keys.stream.pop_first();
                }
                self.trace.push(format!("stream trimmed to {keep}"));
            }
            95 if faults => {
                // A push lost on the way (a connection that dropped and came back).
                if let Some(lost) = self.nodes[i].pushes.pop_front() {
                    self.trace.push(format!("node {i} lost push {}", lost.offset));
                }
            }
            97 if faults => {
                // A push delivered twice (a client library's retry, a proxy replaying).
                let node = &mut self.nodes[i];
                let k = self.rng.below(node.pushes.len() as u64 + 1) as usize;
                if let Some(copy) = node.pushes.get(k).cloned() {
                    self.trace.push(format!("node {i} gets push {} twice", copy.offset));
                    node.pushes.insert(k, copy);
                }
            }
            96 if faults && self.rng.chance(20) => {
                self.trace.push("keys expired".into());
                self.redis.keys = Keys::default();
                self.redis.snapshots.clear();
            }
            _ => {}
        }
        self.note_live();
        self.check_order()
    }

    fn note_live(&mut self) {
        let executed = self.executed;
        for node in &mut self.nodes {
            if node.live_at.is_none() && matches!(node.mirror.state, State::Live) {
                node.live_at = Some(executed);
            }
        }
    }

    /// Invariant 2 on what subscribers saw: within an epoch, consecutive offsets, except
    /// right after a hole notice (to its offset) or an epoch notice (anywhere).
    fn check_order(&self) -> Result<(), String> {
        for (i, node) in self.nodes.iter().enumerate() {
            let mut last: Option<(u64, u64)> = None;
            let mut free = true;
            for seen in &node.seen {
                match seen {
                    Seen::EpochNotice => {
                        free = true;
                        last = None;
                    }
                    Seen::Hole(from) => {
                        last = last.map(|(e, _)| (e, from - 1));
                    }
                    Seen::Message(epoch, offset, _) => {
                        if let Some((e, o)) = last {
                            if *epoch != e && !free {
                                return Err(format!("node {i}: epoch {e} -> {epoch} untold"));
                            }
                            if *epoch == e && *offset != o + 1 {
                                return Err(format!(
                                    "node {i}: epoch {epoch} offset {o} then {offset}"
                                ));
                            }
                        }
                        free = false;
                        last = Some((*epoch, *offset));
                    }
                }
            }
        }
        Ok(())
    }

    /// Faults stop; everything in flight is delivered; a last publish (someone always
    /// publishes again) and quiet checks let every node find what it missed.
    fn quiesce(&mut self) -> Result<(), String> {
        for n in self.nodes.iter_mut().filter(|n| !n.connected) {
            n.reconnect();
        }
        for round in 0..3 {
            if round == 1 {
                self.publish(0);
            }
            for _ in 0..400 {
                self.step(false)?;
            }
            // Drain: every command, reply and push, on every node, until none is left and
            // every node's quiet check finds nothing (a publish drained on one node pushes
            // to the others).
            let mut quiet = vec![false; self.nodes.len()];
            for _ in 0..100_000 {
                if quiet.iter().all(|&q| q) {
                    break;
                }
                for (i, quiet) in quiet.iter_mut().enumerate() {
                    *quiet = !self.drain_one(i)?;
                }
            }
            self.note_live();
            self.check_order()?;
        }
        Ok(())
    }

    /// One thing node `i` has to do, if any: a command run, a reply or push taken, a
    /// confirmation, or (when nothing else) a quiet check that finds something.
    fn drain_one(&mut self, i: usize) -> Result<bool, String> {
        if self.run_command(i) || self.take_reply(i)? {
            return Ok(true);
        }
        let node = &mut self.nodes[i];
        if node.confirming {
            node.confirming = false;
            let outcome = node.mirror.subscribed(&node.log);
            node.apply(outcome)?;
        } else if let Some(envelope) = node.pushes.pop_front() {
            let outcome = node.mirror.pushed(&node.log, envelope, 0);
            node.apply(outcome)?;
        } else if let Some(latest) = node.behind.take() {
            if let Some(outcome) = node.mirror.still_behind(&node.log, latest) {
                node.apply(outcome)?;
            }
        } else if matches!(node.mirror.state, State::Live) {
            let asked = node.mirror.fence(&node.log);
            let meta = self.redis.keys.meta;
            let redis = (meta.map(|m| m.0), meta.map(|m| m.1));
            let (outcome, behind) = node.mirror.checked(&node.log, asked, redis);
            node.behind = behind;
            let idle = outcome.steps.is_empty() && behind.is_none();
            node.apply(outcome)?;
            return Ok(!idle);
        } else {
            return Ok(false);
        }
        Ok(true)
    }

    /// Every acknowledged message that Redis still holds (in the epoch it was acknowledged
    /// in, or the one that ended it) reached every node's subscribers once; any other missing
    /// one was announced (an epoch notice or a hole).
    fn check_delivery(&self) -> Result<(), String> {
        for (i, node) in self.nodes.iter().enumerate() {
            let told = node.seen.iter().any(|s| !matches!(s, Seen::Message(..)));
            let mut times: HashMap<&Bytes, usize> = HashMap::new();
            let mut per_epoch: HashMap<(u64, &Bytes), usize> = HashMap::new();
            for seen in &node.seen {
                if let Seen::Message(epoch, _, payload) = seen {
                    *times.entry(payload).or_default() += 1;
                    *per_epoch.entry((*epoch, payload)).or_default() += 1;
                }
            }
            if let Some(((epoch, payload), n)) = per_epoch.iter().find(|(_, &n)| n > 1) {
                return Err(format!("node {i}: {payload:?} {n} times in epoch {epoch}"));
            }
            let since = node.live_at.ok_or_else(|| format!("node {i} never went live"))?;
            for (_, _, _, payload) in self.acked.iter().filter(|a| a.0 > since) {
                if !times.contains_key(payload) && !told {
                    return Err(format!("node {i}: acknowledged {payload:?} never came, untold"));
                }
            }
        }
        // Offsets are the same everywhere: no (epoch, offset) names two payloads across
        // nodes, in any epoch a node is still in. (Two nodes may disagree about an epoch
        // Redis rolled back while neither knew: one mirrored what was lost, the other what
        // was published after. Whichever notices ends that epoch, and both move on to a new
        // one, their subscribers told.)
        let mut named: HashMap<(u64, u64), &Bytes> = HashMap::new();
        let current: Vec<u64> = self.nodes.iter().map(|n| n.log.epoch).collect();
        for node in &self.nodes {
            for (key, payload) in node.held.iter().filter(|(k, _)| current.contains(&k.0)) {
                if let Some(other) = named.insert(*key, payload) {
                    if other != payload {
                        return Err(format!(
                            "{key:?} is {other:?} on one node, {payload:?} on another"
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

fn run(seed: u64, steps: usize) -> Result<(), String> {
    let mut world = World::new(seed, 3);
    let result = (|| {
        for _ in 0..steps {
            world.step(true)?;
        }
        world.quiesce()?;
        world.check_delivery()
    })();
    result.map_err(|e| {
        if std::env::var("FANOUT_SIM_TRACE").is_ok() {
            for line in &world.trace {
                eprintln!("{line}");
            }
            for (i, node) in world.nodes.iter().enumerate() {
                eprintln!(
                    "node {i} live_at {:?} log ({}, {}) state {:?} ended {:?} fresh {} sent {} replies {} pushes {} expected {:?} acked {:?} events {:?}\n  seen {:?}",
                    node.live_at,
                    node.log.epoch,
                    node.log.next,
                    node.mirror.state,
                    node.mirror.ended,
                    node.mirror.fresh,
                    node.sent.len(),
                    node.replies.len(),
                    node.pushes.len(),
                    node.mirror.expected,
                    node.mirror.acked,
                    node.events,
                    node.seen
                );
            }
        }
        let tail: Vec<&String> = world.trace.iter().rev().take(30).collect();
        format!("seed {seed}: {e}\nlast events, newest first:\n{tail:#?}")
    })
}

#[test]
fn thousands_of_schedules_keep_the_invariants() {
    for seed in seeds() {
        if let Err(e) = run(seed, 300) {
            panic!("{e}");
        }
    }
}

#[test]
fn a_restore_from_an_older_snapshot_ends_the_epoch_on_every_node() {
    // A fixed schedule: publish, snapshot, publish more (delivered everywhere), restore the
    // snapshot, publish from a node that mirrors the channel (the fence) and from one that
    // does not (the receiving side).
    let mut world = World::new(7, 2);
    for node in &mut world.nodes {
        node.confirming = false;
        let outcome = node.mirror.subscribed(&node.log);
        node.apply(outcome).unwrap();
    }
    world.quiesce().unwrap();
    world.publish(0);
    world.redis.snapshots.push(world.redis.keys.clone());
    world.publish(1);
    world.quiesce().unwrap();
    let before = world.redis.keys.meta.expect("meta").0;
    world.redis.keys = world.redis.snapshots[0].clone();
    world.publish(0);
    world.quiesce().unwrap();
    if let Err(e) = world.check_delivery() {
        for (i, node) in world.nodes.iter().enumerate() {
            eprintln!("node {i}: {:?}", node.events);
        }
        for line in &world.trace {
            eprintln!("{line}");
        }
        panic!("{e}");
    }
    let after = world.redis.keys.meta.expect("meta").0;
    assert_ne!(before, after, "the rolled-back epoch ended");
    for node in &world.nodes {
        assert_eq!(node.log.epoch, after);
        assert!(node.seen.contains(&Seen::EpochNotice));
    }
}
