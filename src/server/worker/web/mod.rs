//! The browser protocols on the worker: HTTP requests (publish, long-poll, metrics, health, the
//! demo page and its JavaScript client), the WebSocket upgrade and its messages, and
//! Server-Sent Events streams.
//!
//! Each of them ends up as a `Format`, so fan-out, replay from history, write queues, slow
//! consumers and shutdown treat a browser exactly like a TCP client. Only what differs is here:
//! framing of requests (this file), WebSocket messages (`websocket`), event streams and their
//! cursors (`sse`), the long-poll, which answers one whole response per wait (`long_poll`), and
//! `/metrics` (`metrics`).

mod api;
mod long_poll;
mod metrics;

pub(super) use self::api::broadcast_response;
mod sse;
mod websocket;

use crate::server::worker::access::Via;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use log::debug;

use super::lifecycle::Close;
use super::Worker;
use crate::protocol::http::{self, Head, HttpError};
use crate::protocol::{ErrorCode, Format};
use crate::server::session::{HttpSession, Session};
use crate::server::stats::WorkerCounters;

/// The live-comments demo page, served at `/`.
const DEMO_PAGE: &str = include_str!("../../../assets/index.html");
/// The operators' page, served at `/admin`: it holds no secret (it asks for the API key and
/// reads the server API with it).
const ADMIN_PAGE: &str = include_str!("../../../assets/admin.html");
/// The JavaScript client, served at `/fanout.js`.
const JS_CLIENT: &str = include_str!("../../../assets/fanout.js");

impl Worker {
    /// Handles every complete request in `input`; returns the bytes consumed. A request that
    /// switches protocols (WebSocket, SSE) hands the rest of the input to the new format.
    pub(super) fn http_input(&mut self, key: usize, input: &[u8]) -> Result<usize, Close> {
        let mut at = 0;
        loop {
            let conn = &self.conns[key];
            if !conn.is_open() || conn.input_waits() {
                return Ok(at);
            }
            if conn.format != Some(Format::Http) {
                return Ok(at + self.parse_and_handle(key, &input[at..])?);
            }
            let head = match http::parse_head(&input[at..]) {
                Ok(Some(head)) => head,
                Ok(None) => {
                    // A head in pieces: it has `http_head_timeout` from its first byte.
                    let now = self.now_ms;
                    if let Some(Session::Http(HttpSession { head_since_ms, .. })) =
                        self.conns[key].session.as_deref_mut()
                    {
                        let started = at < input.len();
                        *head_since_ms = if started { head_since_ms.or(Some(now)) } else { None };
                    }
                    return Ok(at);
                }
                Err(e) => {
                    let code = match e {
                        HttpError::HeadTooLarge => ErrorCode::HeadersTooLarge,
                        HttpError::Malformed(_) => ErrorCode::BadRequest,
                    };
                    return Err(self.http_fatal(key, code, e.to_string()));
                }
            };
            if let Some(Session::Http(HttpSession { head_since_ms, .. })) =
                self.conns[key].session.as_deref_mut()
            {
                *head_since_ms = None;
            }
            if head.header("transfer-encoding").is_some() {
                let why = "chunked request bodies are not accepted; send a Content-Length";
                return Err(self.http_fatal(key, ErrorCode::LengthRequired, why));
            }
            let body_len = match head.header("content-length").map(|v| v.parse::<usize>()) {
                None => 0,
                Some(Ok(len)) => len,
                Some(Err(_)) => {
                    let why = "malformed Content-Length";
                    return Err(self.http_fatal(key, ErrorCode::BadRequest, why));
                }
            };
            let max = self.shared.config.max_frame_bytes;
            if body_len > max {
                let why = format!("request body of {body_len} bytes, the limit is {max}");
                return Err(self.http_fatal(key, ErrorCode::FrameTooLarge, why));
            }
            let end = at + head.len + body_len;
            if body_len > self.input_limit(key) && !self.authorized(key) {
                // A body larger than a stranger may send is taken only with a request whose head
                // grants something (its token, or anonymous permissions): authorized now, once,
                // whether or not the body is here yet.
                if !self.authenticate_request(key, &head)? {
                    return Err(Close::quietly());
                }
                if self.input_limit(key) < body_len {
                    return Err(self.stranger_overflow(key, body_len));
                }
                if let Some(Session::Http(HttpSession { authorized, .. })) =
                    self.conns[key].session.as_deref_mut()
                {
                    *authorized = true;
                }
            }
            if let Some(Session::Http(HttpSession { awaiting_body, .. })) =
                self.conns[key].session.as_deref_mut()
            {
                *awaiting_body = (input.len() < end).then_some((end - at) as u32);
            }
            if input.len() < end {
                // curl and others wait (a second, for curl) for this before sending a body.
                if head.header_has("expect", "100-continue") {
                    if let Some(Session::Http(HttpSession {
                        continued: continued @ false, ..
                    })) = self.conns[key].session.as_deref_mut()
                    {
                        *continued = true;
                        self.reply(key, Bytes::from_static(b"HTTP/1.1 100 Continue\r\n\r\n"))?;
                    }
                }
                return Ok(at);
            }
            if let Some(Session::Http(HttpSession { continued, .. })) =
                self.conns[key].session.as_deref_mut()
            {
                *continued = false;
            }
            let body = &input[at + head.len..end];
            at = end;
            self.route(key, &head, body)?;
        }
    }

    /// With `--private-metrics`: whether the request carries the API key; refused with 401
    /// when not.
    fn carries_api_key(&mut self, key: usize, head: &Head) -> Result<bool, Close> {
        if !self.authenticate_request(key, head)? {
            return Ok(false);
        }
        if self.conns[key].grant.as_ref().is_some_and(|grant| grant.everything) {
            return Ok(true);
        }
        WorkerCounters::add(&self.counters().auth_forbidden, 1);
        let why = format!("{} needs the API key (--private-metrics)", head.path);
        self.refuse(key, ErrorCode::Unauthorized, &why)?;
        Ok(false)
    }

    /// Whether the request held was authorized from its head already.
    fn authorized(&self, key: usize) -> bool {
        matches!(
            self.conns[key].session.as_deref(),
            Some(Session::Http(HttpSession { authorized: true, .. }))
        )
    }

    /// A request that cannot be answered in kind: counted; an error response, then the
    /// connection closes.
    pub(super) fn http_fatal(
        &mut self,
        key: usize,
        code: ErrorCode,
        reason: impl Into<std::borrow::Cow<'static, str>>,
    ) -> Close {
        let reason = reason.into();
        let counters = self.counters();
        WorkerCounters::add(&counters.protocol_errors, 1);
        WorkerCounters::add(&counters.protocol_errors_http, 1);
        debug!("worker {}: bad HTTP request on connection {key}: {reason}", self.id);
        Close::error(code, reason)
    }

    fn route(&mut self, key: usize, head: &Head, body: &[u8]) -> Result<(), Close> {
        WorkerCounters::add(&self.counters().http_requests, 1);
        debug!("worker {}: connection {key}: {} {}", self.id, head.method, head.path);
        let allowed_origin = self.origin_allowed(head);
        let cors = if self.policy.allowed_origins.is_empty() || !allowed_origin {
            None
        } else {
            head.header("origin").map(Box::from)
        };
        if let Some(Session::Http(HttpSession { keep_alive, origin, .. })) =
            self.conns[key].session.as_deref_mut()
        {
            *keep_alive = head.keep_alive();
            *origin = cors;
        }
        if !allowed_origin {
            // A page from another site must not use a visitor's browser against this server
            // (cross-site WebSocket hijacking; cross-site publishes).
            WorkerCounters::add(&self.counters().limited_origin, 1);
            let why =
                format!("origin {} is not allowed", head.header("origin").unwrap_or_default());
            return self.refuse(key, ErrorCode::Forbidden, &why);
        }
        let echo = self.shared.config.ws_echo;
        let method = head.method.as_str();
        // Authorized from its head (a body over a stranger's budget): for this request only.
        let authorized = match self.conns[key].session.as_deref_mut() {
            Some(Session::Http(HttpSession { authorized, .. })) => std::mem::take(authorized),
            _ => false,
        };
        let private = matches!(head.path.as_str(), "/metrics" | "/healthz");
        if private && self.shared.config.private_metrics && !self.carries_api_key(key, head)? {
            return Ok(());
        }
        if method == "GET" || method == "HEAD" {
            if let Some(mut response) = self.document(&head.path) {
                if method == "HEAD" {
                    // The same head (Content-Length included), no body.
                    let end = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0);
                    response.truncate(end + 4);
                }
                return self.reply(key, response);
            }
        }
        if head.path.starts_with("/api/") {
            self.api(key, head, body)?;
            return Ok(());
        }
        if !authorized && !self.authenticate_request(key, head)? {
            return Ok(());
        }
        match (method, head.path.as_str()) {
            ("GET", "/presence" | "/presence_stats") => match head.param("channel") {
                Some(channel) => {
                    let channel = channel.to_vec();
                    self.presence_request(key, &channel, head.path == "/presence_stats")
                }
                None => self.refuse(key, ErrorCode::BadRequest, "presence: ?channel= is required"),
            },
            ("POST", "/publish") => match head.param("channel") {
                Some(channel) => {
                    let channel = channel.to_vec();
                    self.publish_request(key, &channel, Bytes::copy_from_slice(body), true, Via::Client)
                }
                None => self.refuse(key, ErrorCode::BadRequest, "publish: ?channel= is required"),
            },
            ("GET", "/sse") => self.start_sse(key, head),
            ("GET", "/poll") => self.long_poll(key, head),
            ("GET", "/ws") => self.upgrade(key, head, false),
            ("GET", "/echo") if echo => self.upgrade(key, head, true),
            ("OPTIONS", _) => self.reply(
                key,
                http::response_with(
                    204,
                    "text/plain",
                    "Access-Control-Allow-Methods: GET, POST, OPTIONS\r\nAccess-Control-Allow-Headers: Content-Type, Last-Event-ID, Authorization\r\nAccess-Control-Max-Age: 86400\r\n",
                    b"",
                ),
            ),
            (_, "/" | "/index.html" | "/fanout.js" | "/admin" | "/favicon.ico" | "/healthz")
            | (_, "/metrics")
            | (_, "/publish" | "/sse" | "/poll" | "/ws" | "/presence" | "/presence_stats") => {
                let why = format!("{} does not take {}", head.path, head.method);
                self.refuse(key, ErrorCode::MethodNotAllowed, &why)
            }
            _ => {
                let why = format!("no such path: {}", head.path);
                self.refuse(key, ErrorCode::NotFound, &why)
            }
        }
    }

    /// The answer to a GET of a fixed document: the demo page, the client, health, metrics.
    fn document(&self, path: &str) -> Option<Bytes> {
        Some(match path {
            "/" | "/index.html" => {
                http::response(200, "text/html; charset=utf-8", DEMO_PAGE.as_bytes())
            }
            "/fanout.js" => {
                http::response(200, "text/javascript; charset=utf-8", JS_CLIENT.as_bytes())
            }
            "/admin" => http::response(200, "text/html; charset=utf-8", ADMIN_PAGE.as_bytes()),
            // Browsers ask for it on every page; an empty answer keeps their consoles quiet.
            "/favicon.ico" => http::response(204, "image/x-icon", b""),
            "/healthz" => {
                let open = self.shared.open_connections.load(Ordering::Relaxed);
                // A node cut off from its broker cannot publish, and one still starting does not
                // yet receive broadcasts: a load balancer should know.
                let broadcast_served = || {
                    self.shared.channels.broadcast().lock_log().mirror
                        == crate::history::Mirror::Live
                };
                if self.shared.broker.as_ref().is_some_and(|b| !b.all_up() || !broadcast_served()) {
                    let body =
                        format!("{{\"status\":\"broker unavailable\",\"connections\":{open}}}");
                    return Some(http::response(503, "application/json", body.as_bytes()));
                }
                let body = format!("{{\"status\":\"ok\",\"connections\":{open}}}");
                http::response(200, "application/json", body.as_bytes())
            }
            "/metrics" => {
                let body = self.metrics_text();
                http::response(200, "text/plain; version=0.0.4", body.as_bytes())
            }
            _ => return None,
        })
    }
}
