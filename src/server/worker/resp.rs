//! The Redis protocol front end: a connection whose first byte is `*` is a Redis client (RESP2,
//! or RESP3 after `HELLO 3`). Its pub/sub commands go through the same subscribe and publish
//! paths as every other format (permissions, limits, the cluster), and its messages are the
//! same per-channel batches, encoded once as `message` arrays (RESP2) or pushes (RESP3). The
//! replies' shapes, error texts and order are Redis's.
//!
//! Supported: SUBSCRIBE, UNSUBSCRIBE, PSUBSCRIBE, PUNSUBSCRIBE (Redis globs), SSUBSCRIBE,
//! SUNSUBSCRIBE, SPUBLISH (the same channels; a connection takes one kind or the other), PUBLISH
//! (the reply counts this node's subscribers of the channel), PING (both modes), ECHO, QUIT, RESET, HELLO (2 and 3, with AUTH and SETNAME), AUTH
//! (a token, or the API key, as the password), CLIENT SETNAME/GETNAME/ID/SETINFO, SELECT 0,
//! PUBSUB CHANNELS/NUMSUB/NUMPAT (this node's), INFO (a few fields clients check), and COMMAND
//! (an empty answer, enough for redis-cli). Anything else is `-ERR unknown command`.

use crate::server::worker::access::Via;
use bytes::{Bytes, BytesMut};

use super::lifecycle::Close;
use super::Worker;
use crate::protocol::resp::{self, RespError};
use crate::protocol::Format;
use crate::server::patterns::{glob_key, GLOB_KEY};
use crate::server::session::{RespSession, Session};
use crate::server::stats::WorkerCounters;

/// Commands a RESP2 connection with subscriptions may send (Redis's rule).
const SUBSCRIBED_MODE: [&str; 9] = [
    "subscribe",
    "unsubscribe",
    "psubscribe",
    "punsubscribe",
    "ssubscribe",
    "sunsubscribe",
    "ping",
    "quit",
    "reset",
];

fn frame(build: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut out = BytesMut::new();
    build(&mut out);
    out.freeze()
}

fn error(text: &str) -> Bytes {
    frame(|out| resp::put_error(out, text))
}

impl Worker {
    /// Handles every complete command in `input`; returns the bytes consumed. Stops when the
    /// connection must wait (a channel being served, a publish parked).
    pub(super) fn resp_input(&mut self, key: usize, input: &[u8]) -> Result<usize, Close> {
        let mut at = 0;
        loop {
            self.resp_continue(key)?;
            let conn = &self.conns[key];
            if !conn.is_open() || conn.input_waits() {
                return Ok(at);
            }
            // Asked per command: an AUTH earlier in the same read lifts a stranger's limits.
            let limits = self.resp_limits(key);
            match self.resp_state(key).parser.parse(&input[at..], limits) {
                Ok(Some((args, used))) => {
                    at += used;
                    if !args.is_empty() {
                        self.resp_command(key, &args)?;
                    }
                }
                Ok(None) => return Ok(at),
                Err(e) => return Err(self.resp_protocol_error(key, &e)),
            }
        }
    }

    /// What connection `key`'s next command may be: a stranger's budget and Redis's rules for
    /// unauthenticated clients, else the frame limit per argument and `--max-query-bytes`.
    fn resp_limits(&self, key: usize) -> resp::CommandLimits {
        let config = &self.shared.config;
        match self.input_limit(key) {
            budget if budget < config.max_frame_bytes => {
                resp::CommandLimits { max_bulk: budget, max_command: budget, stranger: true }
            }
            _ => resp::CommandLimits::new(config.max_frame_bytes, config.query_limit()),
        }
    }

    /// Goes on with a SUBSCRIBE (or PSUBSCRIBE) of several that waited for one of them (cluster
    /// mode). Patterns are queued behind `GLOB_KEY`.
    pub(super) fn resp_continue(&mut self, key: usize) -> Result<(), Close> {
        loop {
            let conn = &mut self.conns[key];
            if !conn.is_open() || conn.input_waits() {
                return Ok(());
            }
            let Some(Session::Resp(state)) = conn.session.as_deref_mut() else { return Ok(()) };
            let Some(next) = state.pending.pop_front() else { return Ok(()) };
            match next.first() {
                Some(&GLOB_KEY) => self.request_pattern(key, next.as_ref().into())?,
                _ => self.subscribe(key, &next, None)?,
            }
        }
    }

    /// PUNSUBSCRIBE of Redis globs (none named: all of the connection's).
    fn glob_unsubscribe(&mut self, key: usize, globs: &[&[u8]]) -> Result<(), Close> {
        let mine: Vec<Box<[u8]>> = match globs {
            [] => self.conns[key]
                .patterns
                .iter()
                .map(|p| self.patterns.get(p.id).text.clone())
                .filter(|text| text.first() == Some(&GLOB_KEY))
                .collect(),
            globs => globs.iter().map(|g| glob_key(g)).collect(),
        };
        if mine.is_empty() {
            let count = self.resp_subscription_count(key);
            let resp3 = self.resp3(key);
            let reply =
                frame(|out| resp::put_subscription(out, b"punsubscribe", None, count, resp3));
            return self.reply(key, reply);
        }
        for text in mine {
            if let Some(id) = self.patterns.id_of(&text) {
                let conn = &mut self.conns[key];
                if let Some(i) = conn.patterns.iter().position(|p| p.id == id) {
                    let subscription = conn.patterns.swap_remove(i);
                    self.detach_pattern(key, subscription);
                }
            }
            self.acknowledge(key, crate::protocol::Ack::PatternUnsubscribe, &text[1..])?;
        }
        Ok(())
    }

    fn resp_protocol_error(&mut self, key: usize, e: &RespError) -> Close {
        let counters = self.counters();
        WorkerCounters::add(&counters.protocol_errors, 1);
        let stranger = self.resp_limits(key).stranger;
        let kind = match e {
            RespError::UnauthenticatedMultibulkLength | RespError::UnauthenticatedBulkLength => {
                &counters.limited_stranger_input
            }
            // A stranger's command over its budget, or anyone's over the query limit.
            RespError::QueryBufferLimit(_) | RespError::InlineTooBig if stranger => {
                &counters.limited_stranger_input
            }
            RespError::QueryBufferLimit(_) => &counters.limited_query_buffer,
            _ => &counters.protocol_errors_malformed,
        };
        WorkerCounters::add(kind, 1);
        log::debug!("worker {}: RESP protocol error on connection {key}: {e}", self.id);
        // As Redis: the error, then the connection closes.
        let frame = error(&format!("ERR {e}"));
        let conn = &mut self.conns[key];
        self.out.enqueue(key, conn, frame, usize::MAX);
        Close::Linger { error: None, discard_queue: false, peer_done: false }
    }

    fn resp3(&self, key: usize) -> bool {
        self.conns[key].format.is_some_and(Format::is_resp3)
    }

    fn resp_state(&mut self, key: usize) -> &mut RespSession {
        let conn = &mut self.conns[key];
        if !matches!(conn.session.as_deref(), Some(Session::Resp(_))) {
            conn.session = Some(Box::new(Session::Resp(RespSession::default())));
        }
        match conn.session.as_deref_mut() {
            Some(Session::Resp(state)) => state,
            _ => unreachable!("just set"),
        }
    }

    /// Subscriptions the connection holds (what Redis's confirmations count).
    pub(super) fn resp_subscription_count(&self, key: usize) -> usize {
        let conn = &self.conns[key];
        conn.subscriptions.len() + conn.patterns.len()
    }

    fn resp_command(&mut self, key: usize, args: &[&[u8]]) -> Result<(), Close> {
        let name = String::from_utf8_lossy(args[0]).to_ascii_lowercase();
        let arity = |ok: bool| -> Option<Bytes> {
            (!ok).then(|| error(&format!("ERR wrong number of arguments for '{name}' command")))
        };
        let subscribed = self.resp_subscription_count(key) > 0;
        if subscribed && !self.resp3(key) && !SUBSCRIBED_MODE.contains(&name.as_str()) {
            let why = format!(
                "ERR Can't execute '{name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
            );
            return self.reply(key, error(&why));
        }
        let before_auth = matches!(name.as_str(), "auth" | "hello" | "ping" | "quit" | "reset");
        if !before_auth && self.must_authenticate(key) {
            WorkerCounters::add(&self.counters().auth_forbidden, 1);
            return self.reply(key, error("NOAUTH Authentication required."));
        }
        match name.as_str() {
            "ping" => {
                if let Some(e) = arity(args.len() <= 2) {
                    return self.reply(key, e);
                }
                let message = args.get(1).copied();
                let reply = if subscribed && !self.resp3(key) {
                    frame(|out| {
                        resp::put_aggregate(out, 2, false);
                        resp::put_bulk(out, b"pong");
                        resp::put_bulk(out, message.unwrap_or(b""));
                    })
                } else {
                    match message {
                        Some(message) => frame(|out| resp::put_bulk(out, message)),
                        None => Bytes::from_static(b"+PONG\r\n"),
                    }
                };
                self.reply(key, reply)
            }
            "echo" => match arity(args.len() == 2) {
                Some(e) => self.reply(key, e),
                None => self.reply(key, frame(|out| resp::put_bulk(out, args[1]))),
            },
            "quit" => {
                self.reply(key, Bytes::from_static(b"+OK\r\n"))?;
                Err(Close::Linger { error: None, discard_queue: false, peer_done: false })
            }
            "select" => match (arity(args.len() == 2), args.get(1)) {
                (Some(e), _) => self.reply(key, e),
                (None, Some(&b"0")) => self.reply(key, Bytes::from_static(b"+OK\r\n")),
                (None, _) => self.reply(key, error("ERR DB index is out of range")),
            },
            "command" => self.reply(key, Bytes::from_static(b"*0\r\n")),
            "pubsub" => self.resp_pubsub(key, args),
            // Enough for clients that check a server before using it (ioredis's ready check
            // waits for `loading:0`).
            "info" => {
                let info = "# Server\r\nredis_version:7.2.0\r\nredis_mode:standalone\r\nfanout_version:"
                    .to_string()
                    + env!("CARGO_PKG_VERSION")
                    + "\r\n\r\n# Persistence\r\nloading:0\r\n\r\n# Replication\r\nrole:master\r\n";
                self.reply(key, frame(|out| resp::put_bulk(out, info.as_bytes())))
            }
            "client" => self.resp_client(key, args),
            "hello" => self.resp_hello(key, args),
            "auth" => match args.len() {
                // Redis without a password refuses the one-argument form (its default user has
                // none); the username form passes, as for Redis's `nopass` default user.
                2 if self.policy.auth.is_none() => self.reply(
                    key,
                    error("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?"),
                ),
                // AUTH password, or AUTH username password: the password is the token.
                2 | 3 => {
                    let token = args[args.len() - 1].to_vec();
                    self.authenticate(key, &token).map(drop)
                }
                _ => self.reply(key, arity(false).unwrap_or_default()),
            },
            "reset" => {
                self.resp_unsubscribe_all(key, false)?;
                let conn = &mut self.conns[key];
                for subscription in std::mem::take(&mut conn.patterns) {
                    self.detach_pattern(key, subscription);
                }
                let state = self.resp_state(key);
                state.name = None;
                state.pending.clear();
                if self.conns[key].format != Some(Format::Resp2) {
                    self.set_format(key, Format::Resp2);
                }
                self.reply(key, Bytes::from_static(b"+RESET\r\n"))
            }
            "subscribe" | "ssubscribe" => {
                if let Some(e) = arity(args.len() >= 2) {
                    return self.reply(key, e);
                }
                if let Some(e) = self.resp_sharding(key, name == "ssubscribe") {
                    return self.reply(key, e);
                }
                let state = self.resp_state(key);
                state.pending.extend(args[1..].iter().map(|c| Bytes::copy_from_slice(c)));
                self.resp_continue(key)
            }
            "psubscribe" => {
                if let Some(e) = arity(args.len() >= 2) {
                    return self.reply(key, e);
                }
                if let Some(e) = self.resp_sharding(key, false) {
                    return self.reply(key, e);
                }
                let state = self.resp_state(key);
                state.pending.extend(args[1..].iter().map(|g| Bytes::from(glob_key(g).into_vec())));
                self.resp_continue(key)
            }
            "punsubscribe" => self.glob_unsubscribe(key, &args[1..]),
            "unsubscribe" | "sunsubscribe" => {
                // Each kind answers for its own subscriptions only.
                let sharded = self.conns[key].format.is_some_and(Format::is_sharded);
                if sharded != (name == "sunsubscribe") {
                    // Nothing of this kind to let go of: each named one (or none) is confirmed
                    // with the count unchanged, as Redis does.
                    let count = self.resp_subscription_count(key);
                    let resp3 = self.resp3(key);
                    let named: Vec<Option<&[u8]>> = match args.len() {
                        1 => vec![None],
                        _ => args[1..].iter().map(|c| Some(*c)).collect(),
                    };
                    let reply = frame(|out| {
                        for channel in &named {
                            resp::put_subscription(out, name.as_bytes(), *channel, count, resp3);
                        }
                    });
                    return self.reply(key, reply);
                }
                if args.len() == 1 {
                    self.resp_unsubscribe_all(key, true)?;
                } else {
                    for channel in &args[1..] {
                        self.unsubscribe(key, channel)?;
                        if !self.conns[key].is_open() {
                            break;
                        }
                    }
                }
                // A connection whose sharded subscriptions are all gone may SUBSCRIBE again.
                if sharded && self.resp_subscription_count(key) == 0 {
                    let resp3 = self.resp3(key);
                    self.set_format(key, Format::resp(resp3, false));
                }
                Ok(())
            }
            "publish" | "spublish" => {
                if let Some(e) = arity(args.len() == 3) {
                    return self.reply(key, e);
                }
                // An acknowledged publish whose acknowledgement is the receiver count (once
                // Redis ran it, in a cluster).
                let payload = Bytes::copy_from_slice(args[2]);
                self.publish_request(key, args[1], payload, true, Via::Client)
            }
            _ => {
                let mut why = format!(
                    "ERR unknown command '{}', with args beginning with: ",
                    String::from_utf8_lossy(args[0])
                );
                for arg in args[1..].iter().take(8) {
                    why.push_str(&format!("'{}' ", String::from_utf8_lossy(arg)));
                }
                self.reply(key, error(&why))
            }
        }
    }

    /// A connection takes SUBSCRIBE/PSUBSCRIBE or SSUBSCRIBE, not both (their messages differ:
    /// `message` and `smessage`, and one connection has one frame per channel). A connection
    /// without subscriptions switches to what it asks for; the refusal otherwise.
    fn resp_sharding(&mut self, key: usize, sharded: bool) -> Option<Bytes> {
        let format = self.conns[key].format?;
        if format.is_sharded() == sharded {
            return None;
        }
        if self.resp_subscription_count(key) > 0 {
            return Some(error(
                "ERR fanout: a connection takes SUBSCRIBE and PSUBSCRIBE, or SSUBSCRIBE, not both",
            ));
        }
        self.set_format(key, Format::resp(format.is_resp3(), sharded));
        None
    }

    /// UNSUBSCRIBE of everything (not a connection's inbox, which goes with its name).
    fn resp_unsubscribe_all(&mut self, key: usize, confirm_nothing: bool) -> Result<(), Close> {
        let channels: Vec<Bytes> = self.conns[key]
            .subscriptions
            .iter()
            .filter(|s| s.channel.kind == crate::protocol::ChannelKind::Topic)
            .map(|s| s.channel.name.clone())
            .collect();
        if channels.is_empty() {
            if confirm_nothing {
                let count = self.resp_subscription_count(key);
                let resp3 = self.resp3(key);
                let reply =
                    frame(|out| resp::put_subscription(out, b"unsubscribe", None, count, resp3));
                return self.reply(key, reply);
            }
            return Ok(());
        }
        for channel in channels {
            if confirm_nothing {
                self.unsubscribe(key, &channel)?;
            } else {
                // RESET: quietly.
                let conn = &mut self.conns[key];
                if let Some(i) = conn.subscriptions.iter().position(|s| s.channel.name == channel) {
                    let subscription = conn.subscriptions.swap_remove(i);
                    self.detach_one(key, subscription);
                }
            }
        }
        Ok(())
    }

    /// PUBSUB: what this node's connections subscribe to (sharded channels are fanout's
    /// channels too), as far as the caller may subscribe to it: a channel it may not subscribe
    /// to is neither listed nor counted (0), a pattern it could not take is not counted.
    fn resp_pubsub(&mut self, key: usize, args: &[&[u8]]) -> Result<(), Close> {
        let sub = args.get(1).map(|s| String::from_utf8_lossy(s).to_ascii_lowercase());
        let registry = &self.shared.channels;
        let visible = |name: &[u8]| self.may_see_channel(key, name);
        let list = |channels: Vec<Bytes>| {
            frame(|out| {
                resp::put_aggregate(out, channels.len(), false);
                for channel in &channels {
                    resp::put_bulk(out, channel);
                }
            })
        };
        let counts = |names: &[&[u8]], sharded: bool| {
            frame(|out| {
                resp::put_aggregate(out, 2 * names.len(), false);
                for name in names {
                    let count = match sharded || !visible(name) {
                        true => 0,
                        false => registry.find(name).map_or(0, |c| {
                            c.subscribers.load(std::sync::atomic::Ordering::Relaxed)
                        }),
                    };
                    resp::put_bulk(out, name);
                    resp::put_integer(out, i64::from(count));
                }
            })
        };
        let reply = match (sub.as_deref(), args.len()) {
            (Some("channels" | "shardchannels"), 2 | 3) => {
                let pattern = args.get(2).copied();
                list(registry.subscribed(|name| {
                    pattern.is_none_or(|p| crate::protocol::glob::glob_match(p, name))
                        && visible(name)
                }))
            }
            (Some("numsub" | "shardnumsub"), _) => counts(&args[2..], false),
            (Some("numpat"), 2) => {
                let census = &self.shared.pattern_census;
                let patterns = census.count(|topic| self.may_see_pattern(key, topic));
                frame(|out| resp::put_integer(out, patterns as i64))
            }
            (Some(sub), _) => error(&format!(
                "ERR unknown subcommand or wrong number of arguments for '{sub}'. Try PUBSUB HELP."
            )),
            (None, _) => error("ERR wrong number of arguments for 'pubsub' command"),
        };
        self.reply(key, reply)
    }

    fn resp_client(&mut self, key: usize, args: &[&[u8]]) -> Result<(), Close> {
        let sub = args.get(1).map(|s| String::from_utf8_lossy(s).to_ascii_lowercase());
        let reply = match (sub.as_deref(), args.len()) {
            (Some("setname"), 3) => {
                if args[2].iter().any(|&b| b <= b' ' || b > b'~') {
                    error("ERR Client names cannot contain spaces, newlines or special characters.")
                } else {
                    self.resp_state(key).name = (!args[2].is_empty()).then(|| args[2].into());
                    Bytes::from_static(b"+OK\r\n")
                }
            }
            (Some("getname"), 2) => {
                let resp3 = self.resp3(key);
                match self.resp_state(key).name.clone() {
                    Some(name) => frame(|out| resp::put_bulk(out, &name)),
                    None => frame(|out| resp::put_null(out, resp3)),
                }
            }
            (Some("id"), 2) => {
                let id = self.client_id(key);
                frame(|out| resp::put_integer(out, id))
            }
            (Some("setinfo"), 4) => Bytes::from_static(b"+OK\r\n"),
            (Some(sub), _) => error(&format!(
                "ERR unknown subcommand or wrong number of arguments for '{sub}'. Try CLIENT HELP."
            )),
            (None, _) => error("ERR wrong number of arguments for 'client' command"),
        };
        self.reply(key, reply)
    }

    /// A connection's id for CLIENT ID and HELLO: unique on this node while it lives.
    fn client_id(&self, key: usize) -> i64 {
        ((self.id as i64) << 48) | (i64::from(self.conns[key].serial) << 16) | (key as i64 & 0xffff)
    }

    fn resp_hello(&mut self, key: usize, args: &[&[u8]]) -> Result<(), Close> {
        let mut version = if self.resp3(key) { 3 } else { 2 };
        let mut at = 1;
        if let Some(&v) = args.get(1) {
            match v {
                b"2" => version = 2,
                b"3" => version = 3,
                _ => {
                    let why = "NOPROTO unsupported protocol version";
                    return self.reply(key, error(why));
                }
            }
            at = 2;
        }
        let mut token = None;
        let mut name = None;
        while at < args.len() {
            match String::from_utf8_lossy(args[at]).to_ascii_lowercase().as_str() {
                "auth" if at + 2 < args.len() => {
                    token = Some(args[at + 2].to_vec());
                    at += 3;
                }
                "setname" if at + 1 < args.len() => {
                    name = Some(args[at + 1]);
                    at += 2;
                }
                other => {
                    let why = format!("ERR Syntax error in HELLO option '{other}'");
                    return self.reply(key, error(&why));
                }
            }
        }
        let sharded = self.conns[key].format.is_some_and(Format::is_sharded);
        let wanted = Format::resp(version == 3, sharded);
        if self.conns[key].format != Some(wanted) && self.resp_subscription_count(key) > 0 {
            let why =
                "ERR fanout: HELLO cannot change the protocol of a connection with subscriptions";
            return self.reply(key, error(why));
        }
        if let Some(token) = token {
            self.resp_state(key).quiet_auth = true;
            let result = self.authenticate(key, &token);
            self.resp_state(key).quiet_auth = false;
            if !result? {
                // Refused: the error is HELLO's one reply (its `+OK` would have been quiet).
                return Ok(());
            }
        }
        if let Some(name) = name {
            self.resp_state(key).name = Some(name.into());
        }
        if self.conns[key].format != Some(wanted) {
            self.set_format(key, wanted);
        }
        let id = self.client_id(key);
        let resp3 = version == 3;
        let reply = frame(|out| {
            if resp3 {
                out.extend_from_slice(b"%7\r\n");
            } else {
                resp::put_aggregate(out, 14, false);
            }
            resp::put_bulk(out, b"server");
            resp::put_bulk(out, b"redis");
            resp::put_bulk(out, b"version");
            resp::put_bulk(out, b"7.2.0");
            resp::put_bulk(out, b"proto");
            resp::put_integer(out, version);
            resp::put_bulk(out, b"id");
            resp::put_integer(out, id);
            resp::put_bulk(out, b"mode");
            resp::put_bulk(out, b"standalone");
            resp::put_bulk(out, b"role");
            resp::put_bulk(out, b"master");
            resp::put_bulk(out, b"modules");
            resp::put_aggregate(out, 0, false);
        });
        self.reply(key, reply)
    }

    /// A subscription's confirmation in Redis's shape, with the connection's count.
    pub(super) fn resp_confirmation(&self, key: usize, kind: &[u8], channel: &[u8]) -> Bytes {
        let count = self.resp_subscription_count(key);
        let resp3 = self.resp3(key);
        frame(|out| resp::put_subscription(out, kind, Some(channel), count, resp3))
    }

    /// The answer to a RESP PUBLISH: how many subscriptions on this node receive it, pattern
    /// subscriptions included (as Redis counts).
    pub(super) fn resp_receivers(&self, channel: &[u8]) -> Bytes {
        let subscribers = self
            .shared
            .channels
            .find(channel)
            .map_or(0, |c| c.subscribers.load(std::sync::atomic::Ordering::Relaxed) as usize);
        let through_patterns = match crate::protocol::validate_channel(channel) {
            Ok(crate::protocol::ChannelKind::Topic) => {
                self.shared.pattern_census.receivers(channel)
            }
            _ => 0,
        };
        let receivers = (subscribers + through_patterns) as i64;
        frame(|out| resp::put_integer(out, receivers))
    }

    /// Whether the connection is a Redis client in the middle of a quiet AUTH (inside HELLO).
    pub(super) fn resp_quiet_auth(&self, key: usize) -> bool {
        matches!(self.conns[key].session.as_deref(), Some(Session::Resp(state)) if state.quiet_auth)
    }
}
