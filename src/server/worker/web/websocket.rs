//! WebSocket on the worker: the upgrade (RFC 6455 4.2), then each message is a command (JSON
//! text messages, or one binary-format frame per binary message); pings, pongs and the close
//! handshake; the `/echo` endpoint for conformance tests.

use bytes::Bytes;
use log::debug;

use crate::protocol::websocket::{self, opcode, WsError, WsEvent};
use crate::protocol::{binary, http::Head, json, ErrorCode, Format, ProtocolError};
use crate::server::session::{Session, WebSocketSession};
use crate::server::stats::WorkerCounters;
use crate::server::worker::lifecycle::Close;
use crate::server::worker::Worker;

/// WebSocket subprotocols, in the server's order of preference when a client offers both.
const SUBPROTOCOLS: [(&str, Format); 2] =
    [("fanout.json", Format::WsJson), ("fanout.binary", Format::WsBinary)];

impl Worker {
    /// Answers `GET /ws` (or `/echo`): checks the handshake (RFC 6455 4.2.1), picks a
    /// subprotocol, and switches the connection to WebSocket.
    pub(super) fn upgrade(&mut self, key: usize, head: &Head, echo: bool) -> Result<(), Close> {
        let problem = if !head.header_has("upgrade", "websocket") {
            Some((ErrorCode::UpgradeRequired, "this endpoint needs a WebSocket upgrade"))
        } else if !head.header_has("connection", "upgrade") || !head.http11 {
            Some((ErrorCode::BadRequest, "an upgrade needs HTTP/1.1 and Connection: Upgrade"))
        } else if head.header("sec-websocket-version") != Some("13") {
            Some((
                ErrorCode::UpgradeRequired,
                "unsupported WebSocket version; this server speaks 13",
            ))
        } else if !head.header("sec-websocket-key").is_some_and(|k| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.decode(k).is_ok_and(|key| key.len() == 16)
        }) {
            Some((ErrorCode::BadRequest, "Sec-WebSocket-Key must be 16 bytes in base64"))
        } else {
            None
        };
        if let Some((code, reason)) = problem {
            WorkerCounters::add(&self.counters().request_errors, 1);
            let body = json::error_object(code.code(), reason);
            let response = crate::protocol::http::response_with(
                code.code(),
                "application/json",
                "Sec-WebSocket-Version: 13\r\n",
                &body,
            );
            return self.reply(key, response);
        }
        let accept = websocket::accept_key(head.header("sec-websocket-key").unwrap_or_default());
        // The client's order of preference wins; no offer means JSON (what a bare
        // `new WebSocket(url)` expects).
        let offered = head.header("sec-websocket-protocol");
        let chosen = offered.and_then(|list| {
            list.split(',').map(str::trim).find_map(|name| {
                SUBPROTOCOLS.iter().find(|(known, _)| known.eq_ignore_ascii_case(name))
            })
        });
        let format = chosen.map_or(Format::WsJson, |&(_, format)| format);
        let mut response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
        );
        if let Some((name, _)) = chosen {
            response.push_str(&format!("Sec-WebSocket-Protocol: {name}\r\n"));
        }
        response.push_str("\r\n");
        self.conns[key].session = Some(Box::new(Session::WebSocket(WebSocketSession {
            decoder: Default::default(),
            echo,
            close_sent: false,
        })));
        self.set_format(key, format);
        WorkerCounters::add(&self.counters().websocket_upgrades, 1);
        self.reply(key, Bytes::from(response))
    }

    /// Decodes frames from `input` and acts on each message; returns the bytes consumed.
    pub(in crate::server::worker) fn websocket_input(
        &mut self,
        key: usize,
        input: &[u8],
    ) -> Result<usize, Close> {
        let max = self.shared.config.max_frame_bytes;
        let mut at = 0;
        loop {
            // Asked per frame: an auth message earlier in the same read lifts a stranger's
            // budget.
            let limit = self.input_limit(key);
            let conn = &mut self.conns[key];
            if !conn.is_open() || conn.input_waits() {
                return Ok(at);
            }
            let Some(Session::WebSocket(WebSocketSession { decoder, .. })) =
                conn.session.as_deref_mut()
            else {
                return Ok(at);
            };
            match decoder.decode(&input[at..], limit) {
                Ok(None) => return Ok(at),
                Ok(Some((event, used))) => {
                    at += used;
                    if let Some(event) = event {
                        self.websocket_event(key, event)?;
                    }
                }
                Err(WsError::TooBig { len, .. }) if limit < max => {
                    // A stranger's message over its budget: a policy close that says so.
                    let why = self.stranger_overflow_reason(key, len as usize);
                    return Err(self.websocket_close(key, websocket::status::POLICY, &why));
                }
                Err(e) => return Err(self.websocket_fail(key, &e)),
            }
        }
    }

    fn websocket_event(&mut self, key: usize, event: WsEvent) -> Result<(), Close> {
        match event {
            WsEvent::Message { text, payload } if self.conns[key].is_echo() => {
                let op = if text { opcode::TEXT } else { opcode::BINARY };
                self.reply(key, websocket::encode_frame(op, &payload))
            }
            WsEvent::Message { text: true, payload } => {
                let request = json::parse_value(&payload);
                match request.as_ref().map_err(Clone::clone).and_then(json::parse_request) {
                    Ok(request) => self.handle(key, request),
                    Err(e) => Err(self.protocol_error(key, &e)),
                }
            }
            WsEvent::Message { text: false, payload } => {
                // A binary message carries one frame of the binary format.
                let max = self.shared.config.max_frame_bytes;
                match binary::parse_request(&payload, max) {
                    Ok(Some((request, used))) if used == payload.len() => self.handle(key, request),
                    Ok(_) => {
                        let what = "binary message: expected exactly one binary-format frame";
                        Err(self.protocol_error(key, &ProtocolError::Malformed { what }))
                    }
                    Err(e) => Err(self.protocol_error(key, &e)),
                }
            }
            WsEvent::Ping(payload) => {
                self.reply(key, websocket::encode_frame(opcode::PONG, &payload))
            }
            // Reading it already counted as input (keepalive).
            WsEvent::Pong => Ok(()),
            WsEvent::Close { code } => {
                // Echo the status and close the TCP connection once it is out (RFC 6455 5.5.1).
                let frame = match code {
                    Some(code) => websocket::encode_close(code, ""),
                    None => websocket::encode_frame(opcode::CLOSE, b""),
                };
                if let Some(session) = self.conns[key].session.as_deref_mut() {
                    session.close_sent();
                }
                self.reply(key, frame)?;
                Err(Close::after_goodbye())
            }
        }
    }

    /// A framing violation: a close frame with the RFC's status code, then the connection ends.
    fn websocket_fail(&mut self, key: usize, error: &WsError) -> Close {
        let counters = self.counters();
        WorkerCounters::add(&counters.protocol_errors, 1);
        WorkerCounters::add(&counters.protocol_errors_websocket, 1);
        debug!("worker {}: connection {key}: {error}", self.id);
        self.websocket_close(key, error.close_code(), &error.to_string())
    }

    /// Queues a close frame with `status` and `reason`; nothing goes out after it.
    fn websocket_close(&mut self, key: usize, status: u16, reason: &str) -> Close {
        let conn = &mut self.conns[key];
        if let Some(session) = conn.session.as_deref_mut() {
            session.close_sent();
        }
        let frame = websocket::encode_close(status, reason);
        self.out.enqueue(key, conn, frame, usize::MAX);
        Close::quietly()
    }
}
