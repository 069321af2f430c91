//! The server API (`/api/...`): what an application's backend does to the whole cluster from any
//! node, authorized by the API key (`Authorization: Bearer <key>`) or a token whose `admin`
//! claim is true; JSON in and out, errors as `{"code":..,"reason":..}` with the HTTP status.
//!
//! | call                                          | answer                                     |
//! |-----------------------------------------------|--------------------------------------------|
//! | `GET /api/presence?channel=C`                 | members on every node, counts              |
//! | `GET /api/presence_stats?channel=C`           | clients and distinct users                 |
//! | `GET /api/channels[?pattern=P]`               | channels with subscribers, summed by node  |
//! | `GET /api/history?channel=C[&since=N][&limit=L]` | retained messages after offset N        |
//! | `POST /api/publish` `{"channel"|"channels", "data"|"data64"}` | offsets, per channel       |
//! | `POST /api/disconnect?user=U[&reason=R][&revoke=true]` | nodes reached                     |
//! | `POST /api/unsubscribe?user=U&channel=C[&reason=R]` | nodes reached                        |
//! | `GET /api/info`                               | every node: version, uptime, connections   |
//!
//! On one node each is answered here; in a cluster the broker asks Redis (presence) or every
//! node through Redis (channels, info, disconnect, unsubscribe) and the answer comes back whole
//! (`Wait::Reply`).

use crate::server::worker::access::Via;
use bytes::Bytes;

use super::super::lifecycle::Close;
use super::super::Worker;
use crate::cluster::{BrokerOp, SurveyKind};
use crate::history::disk::ReplyTo;
use crate::protocol::http::{self, Head};
use crate::protocol::{fields, validate_channel, ChannelKind, ErrorCode, Format};
use crate::server::conn::{AfterJoin, Phase, Wait};
use crate::server::stats::WorkerCounters;
use crate::server::Control;

/// Messages one history call returns at most.
const MAX_HISTORY_LIMIT: u64 = 1000;

/// The reason an action gives its connections: one line (it is written into text frames) of
/// at most 200 characters.
fn reason_of(given: Option<String>) -> String {
    let reason = given.unwrap_or_else(|| "by the server API".into());
    reason.replace(|c: char| c.is_control(), " ").chars().take(200).collect()
}

/// The `user` parameter, checked as a token's `sub` or a claimed name is (what a user is).
fn valid_user(head: &Head) -> Result<(), String> {
    let user = head.param("user").unwrap_or_default();
    crate::protocol::validate_client_name(user).map_err(|e| format!("invalid user: {e}"))
}

fn json_response(value: &serde_json::Value) -> Bytes {
    http::response(200, "application/json", value.to_string().as_bytes())
}

impl Worker {
    /// Routes `/api/...`; false when the path is not the API's.
    pub(super) fn api(&mut self, key: usize, head: &Head, body: &[u8]) -> Result<bool, Close> {
        let Some(call) = head.path.strip_prefix("/api/") else { return Ok(false) };
        WorkerCounters::add(&self.counters().api_requests, 1);
        if !self.api_authorized(key, head)? {
            return Ok(true);
        }
        let method = head.method.as_str();
        let text = |name: &str| head.param(name).map(|v| String::from_utf8_lossy(v).into_owned());
        let result = match (method, call) {
            ("GET", "presence" | "presence_stats") => {
                let Some(channel) = head.param("channel").map(<[u8]>::to_vec) else {
                    return self.api_missing(key, "channel").map(|()| true);
                };
                self.api_presence(key, &channel, call == "presence_stats")
            }
            ("GET", "channels") => match head.param("pattern").map(std::str::from_utf8) {
                Some(Err(_)) => {
                    let why = "invalid pattern: not UTF-8";
                    self.refuse(key, ErrorCode::InvalidName, why)
                }
                Some(Ok(pattern)) => self.api_channels(key, Some(pattern.to_string())),
                None => self.api_channels(key, None),
            },
            ("GET", "info") => {
                let top = head.param("top").map_or(Some(0), fields::number);
                let Some(top) = top else {
                    let why = "info: top is a number";
                    return self.refuse(key, ErrorCode::BadRequest, why).map(|()| true);
                };
                self.api_info(key, top.min(crate::cluster::MAX_TOP) as usize)
            }
            ("GET", "history") => self.api_history(key, head),
            ("POST", "publish") => self.api_publish(key, body),
            ("POST", "disconnect") => {
                let Some(user) = text("user") else {
                    return self.api_missing(key, "user").map(|()| true);
                };
                if let Err(why) = valid_user(head) {
                    return self.refuse(key, ErrorCode::InvalidName, &why).map(|()| true);
                }
                let reason = reason_of(text("reason"));
                let revoke = matches!(text("revoke").as_deref(), Some("true" | "1" | "yes"));
                let revoke_before_ms = revoke.then(crate::auth::unix_now_ms);
                let control = Control::Disconnect {
                    user: user.into(),
                    reason: reason.into(),
                    revoke_before_ms,
                };
                self.api_control(key, control)
            }
            ("POST", "unsubscribe") => {
                let (Some(user), Some(channel)) = (text("user"), head.param("channel")) else {
                    return self.api_missing(key, "user and channel").map(|()| true);
                };
                if let Err(why) = valid_user(head) {
                    return self.refuse(key, ErrorCode::InvalidName, &why).map(|()| true);
                }
                match validate_channel(channel) {
                    Ok(ChannelKind::Topic) => {}
                    Ok(_) => {
                        let why = "unsubscribe: only topic channels (an inbox goes with its name)";
                        return self.refuse(key, ErrorCode::Forbidden, why).map(|()| true);
                    }
                    Err(e) => {
                        let why = format!("invalid channel: {e}");
                        return self.refuse(key, ErrorCode::InvalidName, &why).map(|()| true);
                    }
                }
                let reason = reason_of(text("reason"));
                let control = Control::Unsubscribe {
                    user: user.into(),
                    channel: Bytes::copy_from_slice(channel),
                    reason: reason.into(),
                };
                self.api_control(key, control)
            }
            (
                _,
                "presence" | "presence_stats" | "channels" | "info" | "history" | "publish"
                | "disconnect" | "unsubscribe",
            ) => {
                let why = format!("{} does not take {method}", head.path);
                self.refuse(key, ErrorCode::MethodNotAllowed, &why)
            }
            _ => {
                let why = format!("no such API call: {}", head.path);
                self.refuse(key, ErrorCode::NotFound, &why)
            }
        };
        result.map(|()| true)
    }

    /// The API key or an admin token: 401 without credentials, 403 with a token that is not
    /// an admin's. With access control off everything is open, the API included (the server
    /// then listens on loopback only, unless `--allow-anonymous`).
    fn api_authorized(&mut self, key: usize, head: &Head) -> Result<bool, Close> {
        if self.policy.auth.is_none() {
            // Without access control the API is the operator's, on a loopback listener only
            // (not a public one served with --allow-anonymous), and not for a browser page,
            // which could be any site's (its request carries an Origin).
            let why = if !self.shared.config.listen.ip().is_loopback() {
                "the server API needs --api-key-file on an address other than loopback"
            } else if head.header("origin").is_some() {
                "the server API without --api-key-file does not take requests from browser pages"
            } else {
                return Ok(true);
            };
            WorkerCounters::add(&self.counters().auth_forbidden, 1);
            self.refuse(key, ErrorCode::Forbidden, why)?;
            return Ok(false);
        }
        if !self.authenticate_request(key, head)? {
            return Ok(false);
        }
        let (code, why) = match self.conns[key].grant.as_deref() {
            Some(grant) if grant.may_administer() => return Ok(true),
            Some(_) => (
                ErrorCode::Forbidden,
                "the server API needs the API key or a token with \"admin\": true",
            ),
            None => (
                ErrorCode::Unauthorized,
                "the server API needs Authorization: Bearer <API key or admin token>",
            ),
        };
        WorkerCounters::add(&self.counters().auth_forbidden, 1);
        self.refuse(key, code, why)?;
        Ok(false)
    }

    fn api_missing(&mut self, key: usize, what: &str) -> Result<(), Close> {
        let why = format!("{what}= is required");
        self.refuse(key, ErrorCode::BadRequest, &why)
    }

    /// Waits for the broker's whole answer (`Answer::Reply`).
    fn api_wait(&mut self, key: usize) -> ReplyTo {
        let conn = &mut self.conns[key];
        conn.phase = Phase::Waiting(Wait::Reply);
        ReplyTo { worker: self.id, key, serial: conn.serial }
    }

    fn api_presence(&mut self, key: usize, channel: &[u8], stats_only: bool) -> Result<(), Close> {
        if let Err(e) = validate_channel(channel) {
            return self.refuse(key, ErrorCode::InvalidName, &format!("invalid channel: {e}"));
        }
        match self.presence_answer(channel, stats_only, Format::Http) {
            Ok(Some((response, _))) => self.reply_bounded(key, response),
            Ok(None) => {
                let reply_to = self.api_wait(key);
                let channel = Bytes::copy_from_slice(channel);
                let shared = self.shared.clone();
                if let Some(broker) = shared.redis_broker() {
                    let format = Format::Http;
                    broker.send(BrokerOp::PresenceQuery { channel, stats_only, format, reply_to });
                }
                Ok(())
            }
            Err((code, why)) => self.refuse(key, code, &why),
        }
    }

    fn api_channels(&mut self, key: usize, pattern: Option<String>) -> Result<(), Close> {
        let parsed = match pattern.as_deref().map(crate::auth::Pattern::parse) {
            None => None,
            Some(Ok(pattern)) => Some(pattern),
            Some(Err(e)) => {
                return self.refuse(key, ErrorCode::InvalidName, &format!("invalid pattern: {e}"))
            }
        };
        let shared = self.shared.clone();
        if let Some(broker) = shared.redis_broker() {
            let reply_to = self.api_wait(key);
            broker.send(BrokerOp::Survey { what: SurveyKind::Channels(pattern), reply_to });
            return Ok(());
        }
        let mut local = self.shared.channels_json(parsed.as_ref());
        local["node"] = (*self.shared.node).into();
        let body = crate::cluster::survey_body(&SurveyKind::Channels(pattern), vec![local], 0);
        self.reply_bounded(key, json_response(&body))
    }

    fn api_info(&mut self, key: usize, top: usize) -> Result<(), Close> {
        let shared = self.shared.clone();
        let what = SurveyKind::Info { top };
        if let Some(broker) = shared.redis_broker() {
            let reply_to = self.api_wait(key);
            broker.send(BrokerOp::Survey { what, reply_to });
            return Ok(());
        }
        let body = crate::cluster::survey_body(&what, vec![self.shared.info_json(top)], 0);
        self.reply(key, json_response(&body))
    }

    /// Acts on this node's workers at once and, in a cluster, on every other node's through
    /// Redis (the answer then says how many nodes received it).
    fn api_control(&mut self, key: usize, control: Control) -> Result<(), Close> {
        self.shared.control(control.clone());
        let shared = self.shared.clone();
        if let Some(broker) = shared.redis_broker() {
            let reply_to = self.api_wait(key);
            broker.send(BrokerOp::Control { control, reply_to });
            return Ok(());
        }
        self.reply(key, json_response(&serde_json::json!({ "nodes": 1 })))
    }

    fn api_history(&mut self, key: usize, head: &Head) -> Result<(), Close> {
        let Some(name) = head.param("channel").map(<[u8]>::to_vec) else {
            return self.api_missing(key, "channel");
        };
        match validate_channel(&name) {
            Ok(ChannelKind::Topic) => {}
            Ok(_) => return self.refuse(key, ErrorCode::Forbidden, "history: not a topic channel"),
            Err(e) => {
                return self.refuse(key, ErrorCode::InvalidName, &format!("invalid channel: {e}"))
            }
        }
        let since = head.param("since").map_or(Some(0), fields::number);
        let limit = head.param("limit").map_or(Some(100), fields::number);
        let (Some(since), Some(limit)) = (since, limit) else {
            return self.refuse(key, ErrorCode::BadRequest, "history: since or limit malformed");
        };
        let limit = limit.min(MAX_HISTORY_LIMIT) as u32;
        let channel = match self.channel(&name) {
            Ok(channel) => channel,
            Err(why) => return self.refuse(key, ErrorCode::LimitReached, &why),
        };
        if !self.served_here(&channel) {
            return self.wait_for_channel(key, channel, AfterJoin::History(since, limit));
        }
        self.history_answer(key, &channel, since, limit)
    }

    /// Answers `/api/history` from the channel's log (in a cluster, once this node mirrors it).
    pub(in crate::server::worker) fn history_answer(
        &mut self,
        key: usize,
        channel: &crate::server::channels::Channel,
        since: u64,
        limit: u32,
    ) -> Result<(), Close> {
        let mut page = Vec::new();
        let (bounds, status) = {
            let log = self.trimmed_log(channel);
            let bounds = log.bounds();
            let status = if since < bounds.first.saturating_sub(1) {
                crate::history::ResumeStatus::Expired
            } else {
                crate::history::ResumeStatus::Ok
            };
            let max_bytes = self.shared.config.write_queue_cap_bytes / 4;
            log.read_after(since, limit as usize, max_bytes, &mut page);
            (bounds, status)
        };
        let messages = page.iter().map(|m| (m.offset, &m.payload[..]));
        let body = super::long_poll::poll_body(&bounds.history(&channel.name, status), messages);
        self.reply(key, http::response(200, "application/json", &body))
    }

    /// `{"channel": C, "data": ..}` publishes (acknowledged, as `POST /publish`);
    /// `{"channels": [..], "data": ..}` publishes to each and answers every offset at once.
    fn api_publish(&mut self, key: usize, body: &[u8]) -> Result<(), Close> {
        let parsed: Result<serde_json::Value, _> = serde_json::from_slice(body);
        let Ok(serde_json::Value::Object(object)) = parsed else {
            let why = "publish: the body is a JSON object with channel (or channels) and data (or data64)";
            return self.refuse(key, ErrorCode::BadRequest, why);
        };
        let payload = match (object.get("data"), object.get("data64")) {
            (Some(serde_json::Value::String(data)), None) => {
                Bytes::copy_from_slice(data.as_bytes())
            }
            (None, Some(serde_json::Value::String(data64))) => {
                use base64::Engine as _;
                match base64::engine::general_purpose::STANDARD.decode(data64) {
                    Ok(bytes) => Bytes::from(bytes),
                    Err(_) => {
                        return self.refuse(
                            key,
                            ErrorCode::BadRequest,
                            "publish: data64 is not standard base64",
                        )
                    }
                }
            }
            _ => {
                let why = "publish: a string in exactly one of data and data64";
                return self.refuse(key, ErrorCode::BadRequest, why);
            }
        };
        match (object.get("channel"), object.get("channels")) {
            (Some(serde_json::Value::String(channel)), None) => {
                self.publish_request(key, channel.as_bytes(), payload, true, Via::Api)
            }
            (None, Some(serde_json::Value::Array(channels))) => {
                let names: Option<Vec<Bytes>> = channels
                    .iter()
                    .map(|c| c.as_str().map(|s| Bytes::copy_from_slice(s.as_bytes())))
                    .collect();
                match names {
                    Some(names) if !names.is_empty() => self.broadcast(key, names, payload),
                    _ => self.refuse(
                        key,
                        ErrorCode::BadRequest,
                        "publish: channels is a non-empty list of strings",
                    ),
                }
            }
            _ => self.refuse(
                key,
                ErrorCode::BadRequest,
                "publish: exactly one of channel and channels",
            ),
        }
    }

    /// Publishes `payload` to every channel in `names`, each acknowledged; answers once every
    /// acknowledgement is in (in a cluster, as Redis answers).
    fn broadcast(&mut self, key: usize, names: Vec<Bytes>, payload: Bytes) -> Result<(), Close> {
        let target = ReplyTo { worker: self.id, key, serial: self.conns[key].serial };
        let mut results = Vec::with_capacity(names.len());
        for name in names {
            let outcome = match validate_channel(&name) {
                Ok(ChannelKind::Topic | ChannelKind::Broadcast) => None,
                // On one node a name nobody holds is known now (in a cluster, Redis says).
                Ok(ChannelKind::Inbox)
                    if self.shared.broker.is_none()
                        && !self.shared.names.is_claimed(&name[1..]) =>
                {
                    let who = String::from_utf8_lossy(&name[1..]);
                    Some(Err((ErrorCode::NotFound.code(), format!("no client named {who}"))))
                }
                Ok(ChannelKind::Inbox) => None,
                Err(e) => {
                    Some(Err((ErrorCode::InvalidName.code(), format!("invalid channel: {e}"))))
                }
            };
            let outcome = outcome
                .or_else(|| {
                    self.unfit_for_cluster(&name)
                        .map(|why| Err((ErrorCode::InvalidName.code(), why.to_string())))
                })
                .or_else(|| {
                    self.namespace_refusal(key, &name, payload.len(), Via::Api)
                        .map(|(code, why)| Err((code.code(), why)))
                });
            if let Some(outcome) = outcome {
                results.push((name, Some(outcome)));
                continue;
            }
            let channel = match self.channel(&name) {
                Ok(channel) => channel,
                Err(why) => {
                    results.push((name, Some(Err((ErrorCode::LimitReached.code(), why)))));
                    continue;
                }
            };
            let outcome = match self.publisher.publish(&channel, payload.clone(), target, true) {
                Ok(published) if published.ack_later => None,
                Ok(published) => Some(Ok(published.offset)),
                Err(crate::server::worker::publish::Refused::Busy(_)) => Some(Err((
                    ErrorCode::Unavailable.code(),
                    "the server is busy (its ring is full); not published, try again".into(),
                ))),
                Err(crate::server::worker::publish::Refused::Failed(code, why)) => {
                    Some(Err((code.code(), why.to_string())))
                }
            };
            results.push((name, outcome));
        }
        if self.publisher.take_published() {
            self.shared.wake_others(self.id);
        }
        let broadcasting = crate::server::conn::Broadcasting { results };
        if broadcasting.results.iter().any(|(_, outcome)| outcome.is_none()) {
            self.conns[key].phase = Phase::Waiting(Wait::Broadcast(Box::new(broadcasting)));
            return Ok(());
        }
        self.reply(key, broadcast_response(&broadcasting))
    }
}

/// The answer to a publish to several channels.
pub(in crate::server::worker) fn broadcast_response(
    broadcasting: &crate::server::conn::Broadcasting,
) -> Bytes {
    let results: Vec<serde_json::Value> = broadcasting
        .results
        .iter()
        .map(|(channel, outcome)| {
            let channel = String::from_utf8_lossy(channel);
            match outcome {
                Some(Ok(offset)) => serde_json::json!({ "channel": channel, "offset": offset }),
                Some(Err((code, reason))) => serde_json::json!({
                    "channel": channel, "error": { "code": code, "reason": reason }
                }),
                None => serde_json::json!({ "channel": channel, "error": { "code": 503, "reason": "no answer" } }),
            }
        })
        .collect();
    json_response(&serde_json::json!({ "results": results }))
}
