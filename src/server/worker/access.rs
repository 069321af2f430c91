//! Access control on the worker: authenticating a connection (AUTH, a request's token, the API
//! key), checking its permissions when it subscribes, publishes or claims a name (never per
//! delivery), its rate limits, the deadlines (authenticate in time; a token ends at `exp`), the
//! connections per source address, and browser origins. With access control off
//! (`Shared::auth` is `None`) every check here passes without looking.

use std::net::IpAddr;
use std::sync::Arc;

use log::{debug, info};

use super::lifecycle::Close;
use super::Worker;
use crate::auth::pattern::TopicPattern;
use crate::auth::{AuthError, Grant, Outcome};
use crate::protocol::http::Head;
use crate::protocol::{Ack, ErrorCode};
use crate::server::stats::WorkerCounters;

/// What a command wants to do with a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    Subscribe,
    Publish,
    /// Claim a client name (and its inbox).
    Claim,
}

/// Which rate a command spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rate {
    Publish,
    Subscribe,
}

/// The token a request carries: `Authorization: Bearer …`, else `?token=` (EventSource and
/// WebSocket in browsers cannot set headers).
fn request_token(head: &Head) -> Option<&[u8]> {
    let bearer = head.header("authorization").and_then(|value| {
        let (scheme, token) = value.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then_some(token.trim().as_bytes())
    });
    bearer.or_else(|| head.param("token"))
}

/// Where a publish came from: a client protocol, or the server API (`POST /api/publish`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Via {
    Client,
    Api,
}

impl Worker {
    /// What `channel`'s namespace refuses of connection `key`'s publish of `len` bytes: a
    /// client's where only backends publish (the server API, the API key or an admin token),
    /// a message over the namespace's size. Counted and logged; the connection stays.
    pub(super) fn namespace_refusal(
        &self,
        key: usize,
        channel: &[u8],
        len: usize,
        via: Via,
    ) -> Option<(ErrorCode, String)> {
        let namespaces = &self.shared.channels.namespaces;
        if namespaces.is_empty() {
            return None;
        }
        let namespace = namespaces.resolve(channel)?;
        let what = || String::from_utf8_lossy(channel);
        let refusal = if namespace.client_publish == Some(false)
            && !match &self.policy.auth {
                Some(_) => self.conns[key].grant.as_deref().is_some_and(Grant::may_administer),
                None => via == Via::Api,
            } {
            let why = format!(
                "{} takes publishes from the backend only (the server API or the API key)",
                what()
            );
            (ErrorCode::Forbidden, why)
        } else {
            match namespace.max_message_bytes {
                Some(max) if len > max => {
                    let why = format!(
                        "a message to {} is at most {max} bytes; this one is {len}",
                        what()
                    );
                    (ErrorCode::FrameTooLarge, why)
                }
                _ => return None,
            }
        };
        WorkerCounters::add(&self.counters().limited_namespace_publish, 1);
        debug!("worker {}: connection {key}: publish refused: {}", self.id, refusal.1);
        Some(refusal)
    }

    /// What connection `key` may do now: its token's grant, else the anonymous one. `None`: it
    /// must authenticate first. Only meaningful with access control on.
    pub(super) fn grant(&self, key: usize) -> Option<&Arc<Grant>> {
        let anonymous = self.policy.auth.as_ref().and_then(|auth| auth.anonymous());
        self.conns[key].grant.as_ref().or(anonymous)
    }

    /// True when access control is on and connection `key` has no permissions yet: only AUTH
    /// and PING are taken from it.
    pub(super) fn must_authenticate(&self, key: usize) -> bool {
        self.policy.auth.is_some() && self.grant(key).is_none()
    }

    /// Longest frame, line, command, message or request body connection `key` may send now:
    /// the frame limit, or before it has permissions the strangers' budget (AUTH and a PING).
    pub(super) fn input_limit(&self, key: usize) -> usize {
        match &self.policy.auth {
            Some(auth) if self.grant(key).is_none() => auth.stranger_input_bytes(),
            _ => self.shared.config.max_frame_bytes,
        }
    }

    /// A connection without permissions sent more than its budget (`len` bytes in one frame,
    /// command, message or body): counted, logged, and closed with 401 saying why.
    pub(super) fn stranger_overflow(&mut self, key: usize, len: usize) -> Close {
        Close::error(ErrorCode::Unauthorized, self.stranger_overflow_reason(key, len))
    }

    /// Counts and logs a stranger's overflow (see `stranger_overflow`); returns the reason.
    pub(super) fn stranger_overflow_reason(&mut self, key: usize, len: usize) -> String {
        WorkerCounters::add(&self.counters().limited_stranger_input, 1);
        let limit = self.input_limit(key);
        debug!("worker {}: connection {key}: {len} bytes before authenticating, closing", self.id);
        format!("authenticate first: {len} bytes in one request before AUTH, the limit is {limit}")
    }

    /// Whether connection `key`'s permissions pass `allowed`; refuses when not (403 saying
    /// `why`, or 401 when it has not authenticated). With access control off, always.
    fn check_grant(
        &mut self,
        key: usize,
        allowed: impl FnOnce(&Grant) -> bool,
        why: impl FnOnce() -> String,
    ) -> Result<bool, Close> {
        if self.policy.auth.is_none() {
            return Ok(true);
        }
        let Some(grant) = self.grant(key) else {
            WorkerCounters::add(&self.counters().auth_forbidden, 1);
            self.refuse(key, ErrorCode::Unauthorized, "authenticate first: AUTH <token>")?;
            return Ok(false);
        };
        if allowed(grant) {
            return Ok(true);
        }
        WorkerCounters::add(&self.counters().auth_forbidden, 1);
        self.refuse(key, ErrorCode::Forbidden, &why())?;
        Ok(false)
    }

    /// Whether connection `key` may `action` on `channel` (see `check_grant`).
    pub(super) fn permitted(
        &mut self,
        key: usize,
        action: Action,
        channel: &[u8],
    ) -> Result<bool, Close> {
        match self.anonymous_by_namespace(key, action, channel) {
            Some(true) => return Ok(true),
            Some(false) => {
                WorkerCounters::add(&self.counters().auth_forbidden, 1);
                let what = String::from_utf8_lossy(channel);
                let why =
                    format!("authenticate first: {what} is not open to clients without a token");
                self.refuse(key, ErrorCode::Unauthorized, &why)?;
                return Ok(false);
            }
            None => {}
        }
        let allowed = |grant: &Grant| match action {
            Action::Subscribe => grant.may_subscribe(channel),
            Action::Publish => grant.may_publish(channel),
            Action::Claim => grant.may_claim(channel),
        };
        let why = || {
            let what = String::from_utf8_lossy(channel);
            match action {
                Action::Subscribe => format!("not permitted to subscribe to {what}"),
                Action::Publish => format!("not permitted to publish to {what}"),
                Action::Claim => {
                    format!("not permitted to claim the name {what} (a name is the token's sub)")
                }
            }
        };
        self.check_grant(key, allowed, why)
    }

    /// Whether connection `key` may subscribe to the wildcard `pattern` (written `text`): some
    /// subscribe permission must cover every channel it can match (see `check_grant`).
    pub(super) fn pattern_permitted(
        &mut self,
        key: usize,
        text: &[u8],
        pattern: &crate::auth::pattern::TopicPattern,
    ) -> Result<bool, Close> {
        let by_namespaces = self
            .namespace_rules_anonymous(key)
            .then(|| self.anonymous_may_subscribe_pattern(pattern));
        let allowed = |grant: &Grant| {
            by_namespaces.unwrap_or_else(|| grant.everything || grant.subscribe.cover(pattern))
        };
        let why = || {
            format!(
                "not permitted to subscribe to the pattern {} (no permission covers every channel it matches)",
                String::from_utf8_lossy(text)
            )
        };
        self.check_grant(key, allowed, why)
    }

    /// Spends one unit of connection `key`'s `rate`; refuses (429) when it has none left. The
    /// API key is not limited.
    pub(super) fn within_rate(&mut self, key: usize, rate: Rate) -> Result<bool, Close> {
        let limits = self.policy.limits;
        let per_sec = match rate {
            Rate::Publish => limits.publishes_per_sec,
            Rate::Subscribe => limits.subscribes_per_sec,
        };
        if per_sec == 0 || self.grant(key).is_some_and(|g| g.everything) {
            return Ok(true);
        }
        let now = self.now_ms;
        let budget = &mut self.conns[key].budget;
        let bucket = match rate {
            Rate::Publish => &mut budget.publishes,
            Rate::Subscribe => &mut budget.subscribes,
        };
        if bucket.take(per_sec, now) {
            return Ok(true);
        }
        let (counter, what) = match rate {
            Rate::Publish => (&self.counters().limited_publish_rate, "publishes"),
            Rate::Subscribe => {
                (&self.counters().limited_subscribe_rate, "subscribes and unsubscribes")
            }
        };
        WorkerCounters::add(counter, 1);
        self.refuse(
            key,
            ErrorCode::LimitReached,
            &format!("rate limit: {per_sec} {what} per second"),
        )?;
        Ok(false)
    }

    /// Verifies `token` and, when it is good, makes it the connection's grant. Counted by
    /// outcome. `Err` is the refusal to send (the connection's grant is unchanged).
    fn verify(&mut self, key: usize, token: &[u8]) -> Result<Arc<Grant>, AuthError> {
        let verified = match &self.policy.auth {
            Some(auth) => auth.verify(token).and_then(|grant| self.not_revoked(grant)),
            None => Err(AuthError::Malformed("access control is off".into())),
        };
        let counters = self.counters();
        let counter = match verified.as_ref().map_err(AuthError::outcome) {
            Ok(_) => &counters.auth_ok,
            Err(Outcome::Expired) => &counters.auth_expired,
            Err(Outcome::InvalidClaims) => &counters.auth_invalid_claims,
            Err(Outcome::BadSignature) => &counters.auth_bad_signature,
            Err(Outcome::Malformed | Outcome::Ok) => &counters.auth_malformed,
        };
        WorkerCounters::add(counter, 1);
        if let Err(e) = &verified {
            debug!("worker {}: connection {key}: token refused: {e}", self.id);
        }
        verified
    }

    /// `grant`, unless the server API revoked its user's tokens issued before a time that is
    /// after this token's `iat` (or the token has none).
    fn not_revoked(&self, grant: Arc<Grant>) -> Result<Arc<Grant>, AuthError> {
        let Some(user) = grant.subject.as_deref() else { return Ok(grant) };
        let revoked = self.shared.revoked.lock().unwrap_or_else(|p| p.into_inner());
        match revoked.get(user) {
            Some(&(before, until))
                if until > crate::auth::unix_now_ms()
                    && grant.issued_unix_ms.is_none_or(|issued| issued < before) =>
            {
                Err(AuthError::Revoked)
            }
            _ => Ok(grant),
        }
    }

    /// A failed authentication: refused with 401, or, past the limit of failures, the end.
    fn authentication_failed(&mut self, key: usize, error: &AuthError) -> Result<(), Close> {
        let conn = &mut self.conns[key];
        conn.budget.auth_failures += 1;
        let limit = self.policy.limits.auth_failures;
        if limit > 0 && conn.budget.auth_failures >= limit {
            WorkerCounters::add(&self.counters().auth_failure_closes, 1);
            let why = format!("token refused: {error}; {limit} failed authentications, closing");
            return Err(Close::error(ErrorCode::Unauthorized, why));
        }
        self.refuse(key, ErrorCode::Unauthorized, &format!("token refused: {error}"))
    }

    /// `AUTH <token>`: from now on the connection may do what the token grants. A fresh token
    /// for the same subject extends the connection past the old one's `exp`; one for another
    /// subject is refused (a connection keeps its identity). With access control off, AUTH is
    /// acknowledged and changes nothing. Returns whether the token was taken (else the refusal
    /// is queued).
    pub(super) fn authenticate(&mut self, key: usize, token: &[u8]) -> Result<bool, Close> {
        if self.policy.auth.is_none() {
            return self.acknowledge(key, Ack::Auth, b"-").map(|()| true);
        }
        let grant = match self.verify(key, token) {
            Ok(grant) => grant,
            Err(e) => return self.authentication_failed(key, &e).map(|()| false),
        };
        let conn = &self.conns[key];
        let changes_identity = conn.grant.as_ref().is_some_and(|old| {
            !old.everything && !grant.everything && old.subject != grant.subject
        });
        // A name claimed under one identity stays with it.
        let name_mismatch = conn.name().is_some_and(|name| !grant.may_claim(name));
        if changes_identity || name_mismatch {
            WorkerCounters::add(&self.counters().auth_forbidden, 1);
            let why = "a connection keeps its identity: the token is for another sub";
            return self.refuse(key, ErrorCode::Forbidden, why).map(|()| false);
        }
        let subject = grant.subject.as_deref().unwrap_or("-").as_bytes().to_vec();
        self.conns[key].grant = Some(grant);
        self.acknowledge(key, Ack::Auth, &subject).map(|()| true)
    }

    /// Whether connection `key` may learn that `channel` exists or how many subscribe to it
    /// (listings, counts): when it may subscribe to it. The API key sees everything.
    pub(super) fn may_see_channel(&self, key: usize, channel: &[u8]) -> bool {
        if let Some(allowed) = self.anonymous_by_namespace(key, Action::Subscribe, channel) {
            return allowed;
        }
        self.policy.auth.is_none() || self.grant(key).is_some_and(|g| g.may_subscribe(channel))
    }

    /// True when connection `key` goes by the anonymous permissions and namespaces exist that
    /// may decide them.
    fn namespace_rules_anonymous(&self, key: usize) -> bool {
        self.policy.auth.is_some()
            && self.conns[key].grant.is_none()
            && !self.shared.channels.namespaces.is_empty()
    }

    /// For a connection without a token: whether `channel`'s namespace lets it `action` (unset
    /// there: the flags' anonymous patterns). `None`: no namespace matches, the anonymous
    /// permissions decide.
    fn anonymous_by_namespace(&self, key: usize, action: Action, channel: &[u8]) -> Option<bool> {
        if !self.namespace_rules_anonymous(key) {
            return None;
        }
        let namespace = self.shared.channels.namespaces.resolve(channel)?;
        let (subscribe, publish) = &self.policy.anonymous_flags;
        match action {
            Action::Subscribe => {
                Some(namespace.anonymous_subscribe.unwrap_or_else(|| subscribe.allow(channel)))
            }
            Action::Publish => {
                Some(namespace.anonymous_publish.unwrap_or_else(|| publish.allow(channel)))
            }
            Action::Claim => None,
        }
    }

    /// For a connection without a token, with namespaces: whether every channel `pattern` can
    /// match is open to it. Covered by the flags' patterns or by a namespace open to it, and
    /// every namespace it meets open to it (or silent, where the flags cover it): then the
    /// most specific namespace of any channel it matches lets it in.
    fn anonymous_may_subscribe_pattern(&self, pattern: &TopicPattern) -> bool {
        let namespaces = &self.shared.channels.namespaces;
        let flags = &self.policy.anonymous_flags.0;
        let covered = flags.cover(pattern)
            || namespaces.iter().any(|(theirs, n)| {
                n.anonymous_subscribe == Some(true) && pattern.covered_by(theirs)
            });
        covered
            && namespaces.iter().all(|(theirs, n)| {
                !theirs.overlaps(pattern)
                    || n.anonymous_subscribe.unwrap_or_else(|| flags.cover(pattern))
            })
    }

    /// Whether connection `key` may learn of a wildcard subscription: when it could take it
    /// (`topic`: fanout's syntax; `None`: a Redis glob, which only a grant of every channel
    /// takes).
    pub(super) fn may_see_pattern(&self, key: usize, topic: Option<&TopicPattern>) -> bool {
        if self.policy.auth.is_none() {
            return true;
        }
        let Some(grant) = self.grant(key) else { return false };
        let everything = || TopicPattern::parse(">", 1).expect("> is a pattern");
        grant.everything || grant.subscribe.cover(topic.unwrap_or(&everything()))
    }

    /// An HTTP request's own token (`Authorization: Bearer`, or `?token=`), which is what the
    /// request may do (plain HTTP requests are authorized one by one; an upgraded WebSocket or an
    /// event stream keeps it). Without one, the anonymous permissions apply. Returns false when
    /// the token was refused (the 401 is queued).
    pub(super) fn authenticate_request(&mut self, key: usize, head: &Head) -> Result<bool, Close> {
        if self.policy.auth.is_none() {
            return Ok(true);
        }
        self.conns[key].grant = None;
        let Some(token) = request_token(head) else { return Ok(true) };
        match self.verify(key, token) {
            Ok(grant) => {
                self.conns[key].grant = Some(grant);
                Ok(true)
            }
            Err(e) => {
                self.authentication_failed(key, &e)?;
                Ok(false)
            }
        }
    }

    /// With `--allowed-origins`: true when the request's `Origin` (if it has one: other clients
    /// than browsers do not send it) is on the list.
    pub(super) fn origin_allowed(&self, head: &Head) -> bool {
        let allowed = &self.policy.allowed_origins;
        allowed.is_empty()
            || head.header("origin").is_none_or(|origin| allowed.iter().any(|a| a == origin))
    }

    /// Counts a new connection from `ip`; false when that address is at its limit.
    pub(super) fn admit_peer(&self, ip: IpAddr) -> bool {
        let limit = self.policy.limits.connections_per_ip;
        let mut per_ip = self.shared.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let open = per_ip.entry(ip).or_insert(0);
        if *open >= limit {
            return false;
        }
        *open += 1;
        true
    }

    /// Uncounts a connection from `ip`.
    pub(super) fn release_peer(&self, ip: IpAddr) {
        let mut per_ip = self.shared.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(open) = per_ip.get_mut(&ip) {
            *open -= 1;
            if *open == 0 {
                per_ip.remove(&ip);
            }
        }
    }

    /// After a reload: a changed API key closes the connections that authenticated with the old
    /// one (a key has no expiry that would end them; a token's connection lasts until its
    /// `exp`, as its issuer allowed). One walk over the connections per reload.
    pub(super) fn api_key_rotated(&mut self, before: &super::super::policy::Policy) {
        let (Some(old), Some(new)) = (&before.auth, &self.policy.auth) else { return };
        if old.same_api_key(new) {
            return;
        }
        let holders: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, conn)| {
                conn.is_open() && conn.grant.as_ref().is_some_and(|g| old.is_api_key_grant(g))
            })
            .map(|(key, _)| key)
            .collect();
        if !holders.is_empty() {
            let count = holders.len();
            info!("worker {}: the API key changed: closing {count} connection(s) that used the old one", self.id);
        }
        for key in holders {
            WorkerCounters::add(&self.counters().auth_expiry_closes, 1);
            self.close(key, Close::error(ErrorCode::Unauthorized, "the API key was rotated"));
        }
    }
}
