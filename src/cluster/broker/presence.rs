//! Presence and the server API across nodes, on the broker thread.
//!
//! Redis keys, for channel `C` (hash-tagged with the channel, so one slot in a Redis Cluster):
//!
//! | key                           | type | contents                                           |
//! |-------------------------------|------|----------------------------------------------------|
//! | `fanout:{C}:presence`         | zset | node -> when its entries expire (Redis time, ms)    |
//! | `fanout:{C}:presence:<node>`  | hash | client id -> the member (`presence::put_event`)     |
//!
//! A node writes its members' changes once per window (`PRESENCE_UPDATE_LUA`) and rewrites all
//! of its members of each channel every third of `--presence-ttl` (the refresh), which moves
//! its expiry in the zset forward. A node that dies stops refreshing: once its expiry passes,
//! the next script that touches the channel (any node's update or refresh, or a query) removes
//! its entries and, for `--join-leave` channels, announces their leaves. So a dead node's
//! members are gone within the TTL plus a refresh period (the TTL alone for queries).
//!
//! Events travel on the channel's own pub/sub channel as envelope `0x03` (the events), in order
//! with its messages: the update script publishes after the publishes sent before it on the
//! same connection. The server API's actions and surveys travel as envelope `0x04` (JSON) on the
//! broadcast channel's, which every node receives.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use log::{debug, warn};

use super::{BrokerThread, Pending};
use crate::cluster::Keys;
use crate::history::disk::ReplyTo;
use crate::protocol::presence::{events, put_event, Event, Member};
use crate::protocol::resp::Value;
use crate::protocol::{http, ErrorCode, Format};
use crate::server::channels::PRESENCE_NOTICE;
use crate::server::presence::Change;
use crate::server::{Answer, Control};

/// Envelope of joins and leaves on a channel's pub/sub channel.
pub(crate) const ENVELOPE_PRESENCE: u8 = 3;
/// Envelope of a server API action or survey on the broadcast channel's.
pub(crate) const ENVELOPE_CONTROL: u8 = 4;
/// How long a survey waits for the nodes that received it.
const SURVEY_TIMEOUT: Duration = Duration::from_millis(1000);

/// This node's members of a channel changed (`announce`: and its subscribers hear of it).
/// KEYS: the zset, this node's hash. ARGV: node, TTL (ms), the publish command, the pub/sub
/// channel (empty: nothing is announced), the events envelope (empty: none), the mode, the count
/// of members to set, then (client, member) pairs, then clients to remove. Modes: `update` (a
/// window's changes), `rewrite` (the whole set: after a reconnect, or when Redis lost it),
/// `heartbeat` (only the expiries move; returns -1 when Redis no longer has the set: rewrite it),
/// `depart` (the node stops: every entry it has is announced as a leave and removed). Before
/// anything, entries of nodes past their expiry are removed and (with a pub/sub channel given)
/// their leaves announced. Returns the nodes removed.
///
/// Keys built here (`prefix .. node`) are not declared: they share the declared keys' hash tag,
/// so they are on the same slot of a Redis Cluster, which is what Redis requires.
pub(super) const PRESENCE_UPDATE_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local zset, mine = KEYS[1], KEYS[2]
local node, ttl, verb, topic, envelope, mode = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local prefix = string.sub(mine, 1, #mine - #node)
local function leave_all(key)
  if topic ~= '' then
    local leaves = {}
    for i, m in ipairs(redis.call('HVALS', key)) do leaves[i] = 'L' .. string.sub(m, 2) end
    if #leaves > 0 then redis.call(verb, topic, '\3' .. table.concat(leaves)) end
  end
  redis.call('DEL', key)
end
local dead = redis.call('ZRANGEBYSCORE', zset, '-inf', now)
for _, gone in ipairs(dead) do
  if gone ~= node then
    leave_all(prefix .. gone)
    redis.call('ZREM', zset, gone)
  end
end
if mode == 'depart' then
  leave_all(mine)
  redis.call('ZREM', zset, node)
  return #dead
end
if mode == 'heartbeat' then
  if redis.call('EXISTS', mine) == 0 then return -1 end
elseif mode == 'rewrite' then
  redis.call('DEL', mine)
end
local a = 8
for i = 1, tonumber(ARGV[7]) do
  redis.call('HSET', mine, ARGV[a], ARGV[a + 1])
  a = a + 2
end
while a <= #ARGV do
  redis.call('HDEL', mine, ARGV[a])
  a = a + 1
end
if redis.call('EXISTS', mine) == 1 then
  redis.call('PEXPIRE', mine, ttl * 2)
  redis.call('ZADD', zset, now + ttl, node)
  redis.call('PEXPIRE', zset, ttl * 2)
else
  redis.call('ZREM', zset, node)
end
if envelope ~= '' then redis.call(verb, topic, envelope) end
return #dead
";

/// The other nodes' members of a channel (the asking node adds its own from memory, which is
/// ahead of what it has written). Its undeclared keys share the declared key's hash tag. KEYS: the zset. ARGV: the hash keys' prefix, '1' for the counts
/// only, the member limit, the asking node. Returns {clients, {distinct users}, members...}: the
/// members only when asked and within the limit. Entries past their expiry are not counted.
pub(super) const PRESENCE_QUERY_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local nodes = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
local all, users, seen = {}, {}, {}
for _, node in ipairs(nodes) do
  if node ~= ARGV[4] then
    for _, m in ipairs(redis.call('HVALS', ARGV[1] .. node)) do
      all[#all + 1] = m
      local clen = string.byte(m, 2)
      local ulen = string.byte(m, 3 + clen)
      local user = string.sub(m, 4 + clen, 3 + clen + ulen)
      if not seen[user] then
        seen[user] = true
        users[#users + 1] = user
      end
    end
  end
end
local out = {#all, users}
if ARGV[2] ~= '1' and #all <= tonumber(ARGV[3]) then
  for i, m in ipairs(all) do out[2 + i] = m end
end
return out
";

/// A survey this node sent (`/api/channels`, `/api/info`), gathering the nodes' answers.
#[derive(Debug)]
pub(super) struct Survey {
    what: SurveyKind,
    reply_to: ReplyTo,
    /// How many nodes received it (PUBLISH's answer), once Redis said.
    expected: Option<usize>,
    answers: Vec<serde_json::Value>,
    deadline: Instant,
}

/// The most top channels `/api/info?top=` lists per node.
pub(crate) const MAX_TOP: u64 = 100;

/// What a survey asks every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SurveyKind {
    /// Channels with subscribers (matching a pattern), and their counts.
    Channels(Option<String>),
    /// Each node's `Shared::info_json`, with its `top` channels by subscribers and by message
    /// rate.
    Info { top: usize },
}

/// The broker's own presence state.
#[derive(Debug, Default)]
pub(super) struct PresenceState {
    pub surveys: HashMap<u64, Survey>,
    pub next_survey: u64,
    /// Channels this node wrote members of, and when last (forgotten once Redis let them go).
    pub written: HashMap<Bytes, Instant>,
    /// The next refresh rewrites every set (after a reconnect, or a refused update).
    pub rewrite_due: bool,
    /// The node is stopping: its members left; nothing more is written.
    pub departed: bool,
}

/// How `PRESENCE_UPDATE_LUA` treats a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpdateMode {
    /// A window's changes, sent as this batch (its seq).
    Update(u64),
    /// The node's whole set of the channel.
    Rewrite,
    /// Only the expiry moves forward.
    Heartbeat,
    /// The node leaves: all its entries are announced as leaves and removed.
    Depart,
}

impl UpdateMode {
    fn word(self) -> &'static str {
        match self {
            UpdateMode::Update(_) => "update",
            UpdateMode::Rewrite => "rewrite",
            UpdateMode::Heartbeat => "heartbeat",
            UpdateMode::Depart => "depart",
        }
    }
}

impl BrokerThread {
    fn presence_keys(&self, channel: &[u8]) -> (Vec<u8>, Vec<u8>, Bytes) {
        let keys = Keys::new(&self.config().key_prefix, channel);
        let zset = [&keys.topic[..], b":presence"].concat();
        let mine = [&zset[..], b":", self.server.node_key().as_bytes()].concat();
        (zset, mine, keys.topic)
    }

    /// Sends a worker's window of changes to `channel` (`Update`), or, for the refresh, the
    /// departure and after a reconnect, the other modes of `PRESENCE_UPDATE_LUA`.
    pub(super) fn presence_update(
        &mut self,
        channel: &[u8],
        joins: &[Change],
        leaves: &[Change],
        announce: bool,
        mode: UpdateMode,
    ) {
        let Some(i) = self.shard_of(channel).filter(|&i| self.shards[i].is_ready()) else {
            // Redis is unreachable: the refresh after it is back rewrites this node's members.
            return;
        };
        let (zset, mine, topic) = self.presence_keys(channel);
        let ttl = self.server.presence().map_or(15_000, |p| p.config.ttl.as_millis().max(1));
        let mut envelope = Vec::new();
        if let (true, UpdateMode::Update(batch)) = (announce, mode) {
            // In the order they happened in on this node.
            let mut events: Vec<Event<'_>> = leaves
                .iter()
                .map(|(m, happened)| Event::of(m, false, batch).happened_at(*happened))
                .chain(joins.iter().map(|(m, at)| Event::of(m, true, batch).happened_at(*at)))
                .collect();
            events.sort_by_key(|e| e.happened);
            envelope.push(ENVELOPE_PRESENCE);
            for event in &events {
                put_event(&mut envelope, event);
            }
        }
        let mut args: Vec<Vec<u8>> = vec![
            b"EVALSHA".to_vec(),
            self.presence_update_script.sha.as_bytes().to_vec(),
            b"2".to_vec(),
            zset,
            mine,
            self.server.node_key().as_bytes().to_vec(),
            ttl.to_string().into_bytes(),
            self.verbs().publish.to_vec(),
            if announce { topic.to_vec() } else { Vec::new() },
            envelope,
            mode.word().as_bytes().to_vec(),
            joins.len().to_string().into_bytes(),
        ];
        for (member, seq) in joins {
            let mut entry = Vec::new();
            put_event(&mut entry, &Event::of(member, true, *seq));
            args.push(member.client.as_bytes().to_vec());
            args.push(entry);
        }
        for (member, _) in leaves {
            args.push(member.client.as_bytes().to_vec());
        }
        if mode != UpdateMode::Depart {
            self.presence_state.written.insert(Bytes::copy_from_slice(channel), Instant::now());
        }
        let Some(link) = self.shards[i].commands.as_mut() else { return };
        link.command(&args.iter().map(Vec::as_slice).collect::<Vec<_>>());
        let channel = Bytes::copy_from_slice(channel);
        let pending = Pending::PresenceUpdate { channel, mode, args };
        self.shards[i].pending.push_back((Instant::now(), pending));
    }

    /// Redis answered an update: a script Redis no longer has is sent whole (once); a slot
    /// that moved, or a set Redis lost (a heartbeat's -1), is rewritten from memory.
    pub(super) fn presence_updated(
        &mut self,
        i: usize,
        channel: Bytes,
        mode: UpdateMode,
        mut args: Vec<Vec<u8>>,
        reply: Value,
    ) {
        match reply {
            Value::Error(e) if e.starts_with("NOSCRIPT") && args[0] == b"EVALSHA" => {
                args[0] = b"EVAL".to_vec();
                args[1] = PRESENCE_UPDATE_LUA.as_bytes().to_vec();
                let Some(link) = self.shards[i].commands.as_mut() else { return };
                link.command(&args.iter().map(Vec::as_slice).collect::<Vec<_>>());
                let pending = Pending::PresenceUpdate { channel, mode, args };
                self.shards[i].pending.push_back((Instant::now(), pending));
            }
            Value::Error(e) if e.starts_with("MOVED") || e.starts_with("ASK") => {
                self.slot_moved(&e);
                self.presence_state.rewrite_due = true;
            }
            Value::Error(e) => {
                warn!("cluster: Redis refused a presence update of {channel:?}: {e}");
                self.presence_state.rewrite_due = true;
            }
            Value::Integer(-1) => self.rewrite_presence_of(&channel),
            _ => {}
        }
    }

    /// Writes this node's members of `channel` whole.
    fn rewrite_presence_of(&mut self, channel: &[u8]) {
        let Some(presence) = self.server.presence() else { return };
        let members = match presence.members(channel, usize::MAX) {
            Ok((members, _)) => members,
            Err(_) => return,
        };
        let announce = presence.announces(channel);
        let members: Vec<Change> = members.into_iter().map(|m| (m, 0)).collect();
        self.presence_update(channel, &members, &[], announce, UpdateMode::Rewrite);
    }

    /// Every third of the TTL: moves this node's expiries forward (a heartbeat per channel, not
    /// a write per member), or, after a reconnect or a refused update, rewrites every set. Forgets
    /// channels it wrote long enough ago that Redis has let them expire.
    pub(super) fn refresh_presence(&mut self) {
        let Some(presence) = self.server.presence() else { return };
        if self.presence_state.departed {
            return;
        }
        let ttl = presence.config.ttl;
        let snapshot = presence.snapshot();
        let rewrite = std::mem::take(&mut self.presence_state.rewrite_due);
        for (channel, members) in snapshot {
            let announce = self.server.presence().is_some_and(|p| p.announces(&channel));
            // The entries' seqs matter only for events; a refresh announces nothing.
            let members: Vec<Change> = members.into_iter().map(|m| (m, 0)).collect();
            match rewrite {
                true => {
                    self.presence_update(&channel, &members, &[], announce, UpdateMode::Rewrite)
                }
                false => self.presence_update(&channel, &[], &[], announce, UpdateMode::Heartbeat),
            }
        }
        self.presence_state.written.retain(|_, at| at.elapsed() < ttl * 2);
    }

    /// A server came (back): rewrite what this node has there at the next refresh, now.
    pub(super) fn presence_reconnected(&mut self) {
        if self.server.presence().is_some() {
            self.presence_state.rewrite_due = true;
            self.next_presence_refresh = Instant::now();
        }
    }

    /// The node is stopping: every entry it has in Redis is announced as a leave and removed,
    /// and its workers' later changes are ignored (their connections are closing).
    pub(super) fn leave_presence(&mut self) {
        let Some(presence) = self.server.presence() else { return };
        let mut channels: Vec<Bytes> = self.presence_state.written.keys().cloned().collect();
        channels.extend(presence.snapshot().into_iter().map(|(channel, _)| channel));
        channels.sort();
        channels.dedup();
        for channel in channels {
            let announce = self.server.presence().is_some_and(|p| p.announces(&channel));
            self.presence_update(&channel, &[], &[], announce, UpdateMode::Depart);
        }
        self.presence_state.departed = true;
    }

    /// Every node's members of `channel`, answered to `reply_to` in `format`.
    pub(super) fn presence_query(
        &mut self,
        channel: Bytes,
        stats_only: bool,
        format: Format,
        reply_to: ReplyTo,
    ) {
        let Some(i) = self.shard_of(&channel).filter(|&i| self.shards[i].is_ready()) else {
            let why = "broker unavailable: Redis is unreachable; presence cannot be read now";
            return self.reply(reply_to, format.encode_error(ErrorCode::Unavailable, why));
        };
        let (zset, mine, _) = self.presence_keys(&channel);
        let prefix = mine[..mine.len() - self.server.node_key().len()].to_vec();
        let limit = self.server.presence().map_or(0, |p| p.config.max_members).to_string();
        let args: Vec<Vec<u8>> = vec![
            b"EVALSHA".to_vec(),
            self.presence_query_script.sha.as_bytes().to_vec(),
            b"1".to_vec(),
            zset,
            prefix,
            if stats_only { b"1".to_vec() } else { b"0".to_vec() },
            limit.into_bytes(),
            self.server.node_key().as_bytes().to_vec(),
        ];
        let Some(link) = self.shards[i].commands.as_mut() else { return };
        link.command(&args.iter().map(Vec::as_slice).collect::<Vec<_>>());
        let pending = Pending::PresenceQuery { channel, stats_only, format, reply_to, args };
        self.shards[i].pending.push_back((Instant::now(), pending));
    }

    /// A query's error reply: a script Redis no longer has is sent whole, once (the call's
    /// arguments come back: the query waits on); a moved slot is read again (`None`: answer it).
    pub(super) fn presence_query_retry(
        &mut self,
        i: usize,
        reply: &Value,
        mut args: Vec<Vec<u8>>,
    ) -> Option<Vec<Vec<u8>>> {
        match reply {
            Value::Error(e) if e.starts_with("NOSCRIPT") && args[0] == b"EVALSHA" => {
                args[0] = b"EVAL".to_vec();
                args[1] = PRESENCE_QUERY_LUA.as_bytes().to_vec();
                let link = self.shards[i].commands.as_mut()?;
                link.command(&args.iter().map(Vec::as_slice).collect::<Vec<_>>());
                Some(args)
            }
            Value::Error(e) if e.starts_with("MOVED") || e.starts_with("ASK") => {
                self.slot_moved(e);
                None
            }
            _ => None,
        }
    }

    /// Redis answered a presence query.
    pub(super) fn presence_answered(
        &mut self,
        channel: Bytes,
        stats_only: bool,
        format: Format,
        reply_to: ReplyTo,
        reply: Value,
    ) {
        let limit = self.server.presence().map_or(0, |p| p.config.max_members);
        // This node's own members from memory: ahead of its last write to Redis, so that a
        // client that asks right after joining sees what its events (which skip this node's
        // from before its join) take for granted.
        let counter = self.server.channels().find(&channel);
        let now = || counter.as_ref().map_or(0, |c| c.presence_seq_now());
        let local = self.server.presence().map(|p| p.members_at(&channel, usize::MAX, now));
        let (local, as_of) = match local {
            Some(Ok((members, _, now))) => (members, Some((channel.clone(), now))),
            _ => (Vec::new(), None),
        };
        let merged = parse_query(reply).map(|remote| {
            let Remote { clients: remote, mut users, mut members } = remote;
            users.extend(local.iter().map(|m| m.user.to_string()));
            users.sort_unstable();
            users.dedup();
            let clients = remote + local.len();
            if !stats_only && clients <= limit {
                members.extend(local.iter().cloned());
            }
            (clients, users.len(), members)
        });
        // Only an answer moves where the member's events start.
        let (frame, as_of) = match merged {
            Ok((clients, users, _)) if stats_only => {
                (format.encode_presence(&channel, None, clients, users), as_of)
            }
            Ok((clients, _, _)) if clients > limit => {
                let why = crate::server::presence::too_many_members(&channel, clients, limit);
                (format.encode_error(ErrorCode::LimitReached, &why), None)
            }
            Ok((clients, users, members)) => {
                (format.encode_presence(&channel, Some(&members), clients, users), as_of)
            }
            Err(e) => {
                warn!("cluster: a presence query failed: {e}");
                let why = format!("broker unavailable: presence could not be read ({e})");
                (format.encode_error(ErrorCode::Unavailable, &why), None)
            }
        };
        self.tell(reply_to.worker, Answer::Reply { target: reply_to, frame, as_of });
    }

    fn reply(&self, reply_to: ReplyTo, frame: Bytes) {
        self.tell(reply_to.worker, Answer::Reply { target: reply_to, frame, as_of: None });
    }

    /// Events another node (or this one) published on a channel this node serves: into the
    /// ring, in order with its messages.
    pub(super) fn presence_pushed(&mut self, topic: &Bytes, envelope: Bytes) {
        let Some(tracked) = self.tracked.get(topic) else { return };
        let channel = tracked.channel.clone();
        let body = envelope.slice(1..);
        if events(&body).is_none() {
            warn!("cluster: malformed presence events on {topic:?}");
            return;
        }
        self.ring.put_in_ring(&channel, PRESENCE_NOTICE, body);
    }

    /// Sends a server API action to every node (this one included: its workers were told
    /// already and it ignores its own); the answer says how many nodes received it.
    pub(super) fn control(&mut self, control: Control, reply_to: ReplyTo) {
        let json = match &control {
            Control::Disconnect { user, reason, revoke_before_ms } => serde_json::json!({
                "kind": "disconnect", "user": &**user, "reason": &**reason,
                "revoke_before_ms": revoke_before_ms,
            }),
            Control::Unsubscribe { user, channel, reason } => serde_json::json!({
                "kind": "unsubscribe", "user": &**user, "reason": &**reason,
                "channel": String::from_utf8_lossy(channel),
            }),
        };
        self.send_control(json, Pending::Control { reply_to });
    }

    /// Asks every node (through Redis, this one included) and answers `reply_to` with what they
    /// said, once all have or after `SURVEY_TIMEOUT`.
    pub(super) fn survey(&mut self, what: SurveyKind, reply_to: ReplyTo) {
        let id = self.presence_state.next_survey;
        self.presence_state.next_survey += 1;
        let mut json = serde_json::json!({ "kind": "survey", "id": id });
        match &what {
            SurveyKind::Channels(pattern) => {
                json["what"] = "channels".into();
                json["pattern"] = pattern.clone().into();
            }
            SurveyKind::Info { top } => {
                json["what"] = "info".into();
                json["top"] = (*top).into();
            }
        }
        let deadline = Instant::now() + SURVEY_TIMEOUT;
        let survey = Survey { what, reply_to, expected: None, answers: Vec::new(), deadline };
        self.presence_state.surveys.insert(id, survey);
        self.send_control(json, Pending::Survey { id });
    }

    fn send_control(&mut self, mut json: serde_json::Value, pending: Pending) {
        json["origin"] = self.server.node_key().to_string().into();
        let broadcast = self.server.channels().broadcast().name.clone();
        let topic = Keys::new(&self.config().key_prefix, &broadcast).topic;
        let ready = self.shard_of(&broadcast).filter(|&i| self.shards[i].is_ready());
        let Some(i) = ready else {
            return self.control_refused(pending);
        };
        let mut envelope = vec![ENVELOPE_CONTROL];
        envelope.extend_from_slice(json.to_string().as_bytes());
        let verb = self.verbs().publish;
        let Some(link) = self.shards[i].commands.as_mut() else {
            return self.control_refused(pending);
        };
        link.command(&[verb, &topic, &envelope]);
        self.shards[i].pending.push_back((Instant::now(), pending));
    }

    /// A control or survey that could not be sent (Redis unreachable): 503 to the caller.
    pub(super) fn control_refused(&mut self, pending: Pending) {
        let why = "broker unavailable: Redis is unreachable; the other nodes cannot be reached now";
        match pending {
            Pending::Control { reply_to } => self.reply(reply_to, http::error_response(503, why)),
            Pending::Survey { id } => {
                if let Some(survey) = self.presence_state.surveys.remove(&id) {
                    self.reply(survey.reply_to, http::error_response(503, why));
                }
            }
            Pending::PresenceQuery { format, reply_to, .. } => {
                self.reply(reply_to, format.encode_error(ErrorCode::Unavailable, why))
            }
            _ => {}
        }
    }

    /// Redis published a control or survey: `receivers` nodes got it.
    pub(super) fn control_sent(&mut self, pending: Pending, reply: Value) {
        let receivers = match reply {
            Value::Integer(n) => n.max(0) as usize,
            other => {
                warn!("cluster: publishing a server API action failed: {other:?}");
                return self.control_refused(pending);
            }
        };
        match pending {
            Pending::Control { reply_to } => {
                let body = serde_json::json!({ "nodes": receivers }).to_string();
                self.reply(reply_to, http::response(200, "application/json", body.as_bytes()));
            }
            Pending::Survey { id } => {
                if let Some(survey) = self.presence_state.surveys.get_mut(&id) {
                    survey.expected = Some(receivers);
                }
                self.finish_surveys(false);
            }
            _ => {}
        }
    }

    /// Whether `topic` is the broadcast channel's pub/sub channel (where the API's envelopes go).
    pub(super) fn is_broadcast_topic(&self, topic: &[u8]) -> bool {
        let broadcast = &self.server.channels().broadcast().name;
        Keys::new(&self.config().key_prefix, broadcast).topic[..] == *topic
    }

    /// A control envelope from the broadcast channel's pub/sub channel.
    pub(super) fn control_pushed(&mut self, envelope: &[u8]) {
        let Ok(json) = serde_json::from_slice::<serde_json::Value>(&envelope[1..]) else {
            warn!("cluster: a malformed control message");
            return;
        };
        let text = |field: &str| json.get(field).and_then(serde_json::Value::as_str).unwrap_or("");
        let mine = text("origin") == &**self.server.node_key();
        match text("kind") {
            "disconnect" if !mine => self.server.control(Control::Disconnect {
                user: text("user").into(),
                reason: text("reason").into(),
                revoke_before_ms: json.get("revoke_before_ms").and_then(serde_json::Value::as_u64),
            }),
            "unsubscribe" if !mine => self.server.control(Control::Unsubscribe {
                user: text("user").into(),
                channel: Bytes::copy_from_slice(text("channel").as_bytes()),
                reason: text("reason").into(),
            }),
            "survey" => {
                let body = match text("what") {
                    "channels" => {
                        let pattern = json
                            .get("pattern")
                            .and_then(serde_json::Value::as_str)
                            .and_then(|p| crate::auth::Pattern::parse(p).ok());
                        self.server.channels_json(pattern.as_ref())
                    }
                    "info" => {
                        let top = json.get("top").and_then(serde_json::Value::as_u64);
                        self.server.info_json(top.unwrap_or(0).min(MAX_TOP) as usize)
                    }
                    _ => return,
                };
                let answer = serde_json::json!({
                    "kind": "answer", "to": text("origin"), "id": json.get("id"),
                    "node": &**self.server.node_name(), "body": body,
                });
                self.send_control(answer, Pending::Answered);
            }
            "answer" if text("to") == &**self.server.node_key() => {
                let Some(id) = json.get("id").and_then(serde_json::Value::as_u64) else { return };
                if let Some(survey) = self.presence_state.surveys.get_mut(&id) {
                    let mut body = json.get("body").cloned().unwrap_or_default();
                    body["node"] = json.get("node").cloned().unwrap_or_default();
                    survey.answers.push(body);
                }
                self.finish_surveys(false);
            }
            _ => {}
        }
    }

    /// Answers the surveys that every node answered, or (`timers`) whose time is up.
    pub(super) fn finish_surveys(&mut self, timers: bool) {
        let now = Instant::now();
        let done: Vec<u64> = self
            .presence_state
            .surveys
            .iter()
            .filter(|(_, s)| {
                s.expected.is_some_and(|n| s.answers.len() >= n) || (timers && s.deadline <= now)
            })
            .map(|(&id, _)| id)
            .collect();
        for id in done {
            let Some(survey) = self.presence_state.surveys.remove(&id) else { continue };
            let missing = survey.expected.map(|n| n.saturating_sub(survey.answers.len()));
            if missing.is_some_and(|m| m > 0) || survey.expected.is_none() {
                debug!("cluster: a survey timed out with {} answer(s)", survey.answers.len());
            }
            let body = survey_body(&survey.what, survey.answers, missing.unwrap_or(0));
            let response = http::response(200, "application/json", body.to_string().as_bytes());
            self.reply(survey.reply_to, response);
        }
    }

    /// When the next survey times out.
    pub(super) fn next_survey_deadline(&self) -> Option<Instant> {
        self.presence_state.surveys.values().map(|s| s.deadline).min()
    }
}

/// The combined answer of a survey.
pub(crate) fn survey_body(
    what: &SurveyKind,
    answers: Vec<serde_json::Value>,
    missing: usize,
) -> serde_json::Value {
    match what {
        SurveyKind::Channels(_) => {
            let mut total: HashMap<String, u64> = HashMap::new();
            for answer in &answers {
                if let Some(object) = answer.as_object() {
                    for (channel, count) in object.iter().filter(|(k, _)| *k != "node") {
                        *total.entry(channel.clone()).or_default() += count.as_u64().unwrap_or(0);
                    }
                }
            }
            let mut channels: Vec<(String, u64)> = total.into_iter().collect();
            channels.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            let channels: Vec<serde_json::Value> = channels
                .into_iter()
                .map(|(channel, subscribers)| {
                    serde_json::json!({ "channel": channel, "subscribers": subscribers })
                })
                .collect();
            serde_json::json!({ "channels": channels, "nodes": answers.len(), "nodes_missing": missing })
        }
        SurveyKind::Info { .. } => {
            serde_json::json!({ "nodes": answers, "nodes_missing": missing })
        }
    }
}

/// What a presence query found on the other nodes.
struct Remote {
    clients: usize,
    /// Their distinct users.
    users: Vec<String>,
    /// Their members (none when only the counts were asked, or past the limit).
    members: Vec<Arc<Member>>,
}

/// A presence query's reply.
fn parse_query(reply: Value) -> Result<Remote, String> {
    let Value::Array(Some(items)) = reply else {
        return Err(format!("unexpected reply {reply:?}"));
    };
    let mut items = items.into_iter();
    let clients = match items.next() {
        Some(Value::Integer(n)) => n.max(0) as usize,
        other => return Err(format!("expected a count, got {other:?}")),
    };
    let users = match items.next() {
        Some(Value::Array(Some(users))) => users
            .into_iter()
            .map(|u| match u {
                Value::Bulk(Some(bytes)) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
                other => Err(format!("a user that is not a string: {other:?}")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        // Lua's empty table comes back as an empty array (or nil in some versions).
        Some(Value::Array(None)) | Some(Value::Null) => Vec::new(),
        other => return Err(format!("expected the users, got {other:?}")),
    };
    let mut members = Vec::new();
    for item in items {
        let Value::Bulk(Some(bytes)) = item else {
            return Err("a member that is not a string".into());
        };
        let event =
            events(&bytes).and_then(|e| e.into_iter().next()).ok_or("a malformed member entry")?;
        members.push(Arc::new(Member {
            client: event.client.into(),
            user: event.user.into(),
            node: event.node.into(),
            info: event.info.into(),
        }));
    }
    Ok(Remote { clients, users, members })
}
