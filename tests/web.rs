//! The browser protocols against a real server: WebSocket (both subprotocols), Server-Sent Events,
//! long-poll, HTTP publish, health and metrics, with resume, and every bad input closing only its
//! own connection.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    http, http_publish, read_head, read_response, start, wait_until, Conn, EventStream, Frame,
    Read_, PATIENCE,
};
use fanout::history::ResumeStatus;
use fanout::protocol::websocket::opcode;
use fanout::protocol::{Ack, Format, Request, Resume};

fn msg(channel: &str, offset: u64, payload: &[u8]) -> Frame {
    Frame::Msg { channel: channel.into(), offset, payload: payload.to_vec() }
}

#[test]
fn websocket_subscribers_of_both_subprotocols_receive_what_every_format_publishes() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut json = Conn::open(addr, Format::WsJson);
    let mut binary = Conn::open(addr, Format::WsBinary);
    let mut tcp = Conn::text(addr);
    for conn in [&mut json, &mut binary, &mut tcp] {
        conn.subscribe("news");
    }
    // Publishes from a WebSocket (JSON, with a non-UTF-8 payload), a WebSocket (binary, with
    // an acknowledgement), a TCP client and HTTP, one after another; each connection keeps the
    // frames that arrive while it waits for its own answer.
    json.send(Request::Publish { channel: b"news", payload: b"from json".into() });
    json.send(Request::Publish { channel: b"news", payload: (&[0u8, 159, 255][..]).into() });
    let mut json_seen = json.barrier();
    binary.send(Request::PublishAcked { channel: b"news", payload: b"from binary".into() });
    let mut binary_seen = Vec::new();
    loop {
        match binary.next() {
            Frame::Ack { channel, offset } => {
                break assert_eq!((channel.as_str(), offset), ("news", 3))
            }
            frame => binary_seen.push(frame),
        }
    }
    tcp.publish("news", b"from tcp");
    let mut tcp_seen = tcp.barrier();
    assert_eq!(http_publish(addr, "news", b"from http"), 5);
    let expected = vec![
        msg("news", 1, b"from json"),
        msg("news", 2, &[0, 159, 255]),
        msg("news", 3, b"from binary"),
        msg("news", 4, b"from tcp"),
        msg("news", 5, b"from http"),
    ];
    for (conn, seen) in
        [(&mut json, &mut json_seen), (&mut binary, &mut binary_seen), (&mut tcp, &mut tcp_seen)]
    {
        while seen.len() < expected.len() {
            seen.push(conn.next());
        }
        assert_eq!(seen, &expected, "{:?}", conn.format);
    }
    // Names and inboxes work the same way.
    json.send(Request::Name { name: b"alice" });
    json.expect(Frame::Ok { ack: Ack::Name, arg: "alice".into() });
    assert_eq!(http_publish(addr, "@alice", b"psst"), 1);
    json.expect(msg("@alice", 1, b"psst"));
    // A broadcast reaches every streaming connection.
    assert_eq!(http_publish(addr, "*", b"all"), 1);
    for conn in [&mut json, &mut binary, &mut tcp] {
        assert_eq!(conn.next(), msg("*", 1, b"all"));
    }
    let stats = server.stats();
    assert_eq!(stats.websocket_upgrades, 2);
    assert_eq!(stats.connections_websocket_json, 1);
    assert_eq!(stats.connections_websocket_binary, 1);
}

#[test]
fn websocket_resume_replays_what_was_missed_exactly_once() {
    let server = start(|_| {});
    let addr = server.local_addr();
    for i in 1..=20u32 {
        http_publish(addr, "feed", format!("m{i}").as_bytes());
    }
    let mut ws = Conn::websocket(addr);
    ws.send(Request::Subscribe {
        channel: b"feed",
        resume: Some(Resume { after: 15, epoch: None, strict: false }),
    });
    let Frame::Hist { first: 1, last: 20, status: ResumeStatus::Ok, epoch, .. } = ws.next() else {
        panic!("expected HIST")
    };
    for offset in 16..=20 {
        assert_eq!(ws.next(), msg("feed", offset, format!("m{offset}").as_bytes()));
    }
    ws.expect(Frame::Ok { ack: Ack::Subscribe, arg: "feed".into() });
    http_publish(addr, "feed", b"m21");
    ws.expect(msg("feed", 21, b"m21"));
    // Another epoch is reported, and the replay starts from the earliest retained.
    let mut other = Conn::websocket(addr);
    other.send(Request::Subscribe {
        channel: b"feed",
        resume: Some(Resume { after: 3, epoch: Some(epoch ^ 1), strict: false }),
    });
    assert!(matches!(other.next(), Frame::Hist { status: ResumeStatus::EpochChanged, .. }));
    assert_eq!(other.next(), msg("feed", 1, b"m1"));
}

/// Opens a WebSocket and returns it with a bystander subscriber on "c".
fn ws_and_bystander(addr: std::net::SocketAddr) -> (Conn, Conn) {
    let mut bystander = Conn::websocket(addr);
    bystander.subscribe("c");
    (Conn::websocket(addr), bystander)
}

fn bystander_still_served(addr: std::net::SocketAddr, bystander: &mut Conn) {
    let offset = http_publish(addr, "c", b"still here");
    assert_eq!(bystander.next(), msg("c", offset, b"still here"));
}

#[test]
fn websocket_framing_violations_close_with_the_rfc_status_and_only_that_connection() {
    let server = start(|c| c.max_frame_bytes = 1000);
    let addr = server.local_addr();
    type Violation = (&'static str, Box<dyn Fn(&mut Conn)>, u16);
    let cases: Vec<Violation> = vec![
        ("unmasked frame", Box::new(|c: &mut Conn| c.send_raw(&[0x81, 0x02, b'h', b'i'])), 1002),
        ("reserved opcode", Box::new(|c: &mut Conn| c.send_ws(true, 0x3, b"")), 1002),
        ("RSV bit", Box::new(|c: &mut Conn| c.send_raw(&[0xc1, 0x80, 0, 0, 0, 0])), 1002),
        ("fragmented ping", Box::new(|c: &mut Conn| c.send_ws(false, opcode::PING, b"")), 1002),
        (
            "orphan continuation",
            Box::new(|c: &mut Conn| c.send_ws(true, opcode::CONTINUATION, b"x")),
            1002,
        ),
        (
            "invalid UTF-8 text",
            Box::new(|c: &mut Conn| c.send_ws(true, opcode::TEXT, b"{\"op\":\"\xff\"}")),
            1007,
        ),
        (
            "invalid UTF-8 across fragments",
            Box::new(|c: &mut Conn| {
                c.send_ws(false, opcode::TEXT, b"ok \xe2");
                c.send_ws(true, opcode::CONTINUATION, b"\x28");
            }),
            1007,
        ),
        (
            "message over the limit",
            Box::new(|c: &mut Conn| c.send_ws(true, opcode::TEXT, &[b' '; 1001])),
            1009,
        ),
        (
            "fragments over the limit",
            Box::new(|c: &mut Conn| {
                c.send_ws(false, opcode::BINARY, &[0; 600]);
                c.send_ws(true, opcode::CONTINUATION, &[0; 600]);
            }),
            1009,
        ),
    ];
    for (what, violate, status) in cases {
        let (mut ws, mut bystander) = ws_and_bystander(addr);
        violate(&mut ws);
        assert_eq!(ws.read(PATIENCE), Read_::Closed, "{what}: closed");
        assert_eq!(ws.close_code, Some(status), "{what}: close status");
        bystander_still_served(addr, &mut bystander);
    }
    assert_eq!(server.stats().protocol_errors_websocket, 9);
}

#[test]
fn bad_commands_over_websocket_get_an_error_then_a_close() {
    let server = start(|_| {});
    let addr = server.local_addr();
    for (bad, code) in [
        (&b"not json"[..], 400),
        (b"{\"op\":\"jump\"}", 400),
        (b"{\"op\":\"pub\",\"channel\":\"c\"}", 400),
    ] {
        let (mut ws, mut bystander) = ws_and_bystander(addr);
        ws.send_ws(true, opcode::TEXT, bad);
        ws.expect_error_and_close(code);
        assert_eq!(ws.close_code, Some(1008));
        bystander_still_served(addr, &mut bystander);
    }
    // A binary message must hold exactly one binary-format frame.
    let (mut ws, mut bystander) = ws_and_bystander(addr);
    ws.send_ws(true, opcode::BINARY, &[0, 0, 0, 1, 0x04, 0xff]);
    ws.expect_error_and_close(400);
    bystander_still_served(addr, &mut bystander);
    // Refusals that are not protocol errors leave the connection open.
    let mut ws = Conn::websocket(addr);
    ws.send(Request::Subscribe { channel: b"bad name", resume: None });
    assert!(matches!(ws.next(), Frame::Err { code: 422, .. }));
    assert_eq!(ws.barrier(), vec![]);
}

#[test]
fn websocket_close_handshake_and_ping() {
    let server = start(|_| {});
    let mut ws = Conn::websocket(server.local_addr());
    ws.send_ws(true, opcode::PING, b"are you there");
    // The pong carries the ping's payload.
    ws.stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buffer = [0u8; 64];
    let n = std::io::Read::read(&mut ws.stream, &mut buffer).unwrap();
    assert_eq!(&buffer[..n], b"\x8a\x0dare you there");
    ws.send_ws(true, opcode::CLOSE, &1000u16.to_be_bytes());
    assert_eq!(ws.read(PATIENCE), Read_::Closed);
    assert_eq!(ws.close_code, Some(1000));
}

#[test]
fn server_keepalive_pings_websockets_and_cuts_silent_ones() {
    let server = start(|c| {
        c.ping_interval = Duration::from_millis(300);
        c.ping_timeout = Duration::from_millis(300);
    });
    let mut ws = Conn::websocket(server.local_addr());
    assert_eq!(ws.next(), Frame::Ping);
    // Never answering: closed as stale, with "going away".
    ws.expect_error_and_close(408);
    assert_eq!(ws.close_code, Some(1001));
}

#[test]
fn handshake_errors() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let upgrade = |headers: &str| {
        let mut stream = TcpStream::connect(addr).unwrap();
        let request = format!("GET /ws HTTP/1.1\r\nHost: t\r\n{headers}\r\n");
        stream.write_all(request.as_bytes()).unwrap();
        read_response(&mut stream, &mut Vec::new())
    };
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let base = "Upgrade: websocket\r\nConnection: Upgrade\r\n";
    let old = upgrade(&format!("{base}{key}Sec-WebSocket-Version: 8\r\n"));
    assert_eq!(old.status, 426);
    assert_eq!(old.header("Sec-WebSocket-Version"), Some("13"));
    assert_eq!(upgrade(&format!("{base}Sec-WebSocket-Version: 13\r\n")).status, 400);
    assert_eq!(
        upgrade(&format!("{base}Sec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n"))
            .status,
        400
    );
    assert_eq!(upgrade("").status, 426);
    // No subprotocol offered: JSON, and no protocol header in the answer.
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(
            format!("GET /ws HTTP/1.1\r\nHost: t\r\n{base}{key}Sec-WebSocket-Version: 13\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
    let (head, _) = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(!head.contains("Sec-WebSocket-Protocol"), "{head}");
    // /echo exists only when configured.
    assert_eq!(http(addr, "GET", "/echo", b"").status, 404);
}

#[test]
fn http_publish_health_metrics_and_errors() {
    let server = start(|c| c.max_frame_bytes = 100);
    let addr = server.local_addr();
    let first = http(addr, "POST", "/publish?channel=news", b"hello");
    assert_eq!(first.status, 200);
    assert_eq!(first.json(), serde_json::json!({"channel": "news", "offset": 1}));
    assert_eq!(first.header("Access-Control-Allow-Origin"), Some("*"));
    assert_eq!(http(addr, "POST", "/publish", b"x").status, 400);
    assert_eq!(http(addr, "POST", "/publish?channel=bad%20name", b"x").status, 422);
    assert_eq!(http(addr, "POST", "/publish?channel=@nobody", b"x").status, 404);
    assert_eq!(http(addr, "GET", "/publish?channel=a", b"").status, 405);
    assert_eq!(http(addr, "GET", "/nowhere", b"").status, 404);
    assert_eq!(http(addr, "OPTIONS", "/publish", b"").status, 204);
    // HEAD: the same head, no body (the next response on the connection starts right after).
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(b"HEAD /healthz HTTP/1.1\r\n\r\nGET /favicon.ico HTTP/1.1\r\n\r\n").unwrap();
    let (head, rest) = read_head(&mut stream);
    assert!(
        head.starts_with("HTTP/1.1 200 OK\r\n") && !head.contains("Content-Length: 0\r\n"),
        "{head}"
    );
    let mut pending = rest;
    assert_eq!(read_response(&mut stream, &mut pending).status, 204);
    let health = http(addr, "GET", "/healthz", b"");
    assert_eq!((health.status, health.json()["status"].as_str()), (200, Some("ok")));
    let page = http(addr, "GET", "/", b"");
    assert!(String::from_utf8_lossy(&page.body).contains("/fanout.js"));
    let js = http(addr, "GET", "/fanout.js", b"");
    assert_eq!(js.header("Content-Type"), Some("text/javascript; charset=utf-8"));

    // Fatal request errors: an answer, then the connection closes; a bystander is unaffected.
    let mut bystander = Conn::text(addr);
    bystander.subscribe("c");
    let fatal = |raw: &[u8], status: u16| {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(raw).unwrap();
        let mut pending = Vec::new();
        assert_eq!(read_response(&mut stream, &mut pending).status, status, "{raw:?}");
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stream, &mut rest);
        assert!(rest.is_empty() && pending.is_empty(), "closed after the answer");
    };
    fatal(b"POST /publish?channel=c HTTP/1.1\r\nContent-Length: 101\r\n\r\n", 413);
    fatal(b"POST /publish?channel=c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411);
    fatal(b"POST /publish?channel=c HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400);
    fatal(b"GET /\x01 HTTP/1.1\r\n\r\n", 400);
    let mut huge = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 9000));
    fatal(&huge, 431);
    let mut many = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..40 {
        many.extend(format!("H{i}: v\r\n").as_bytes());
    }
    many.extend(b"\r\n");
    fatal(&many, 431);
    bystander.publish("c", b"ok");
    assert_eq!(bystander.next(), msg("c", 1, b"ok"));

    let metrics = String::from_utf8(http(addr, "GET", "/metrics", b"").body).unwrap();
    for needle in [
        "# TYPE fanout_messages_in_total counter",
        "fanout_messages_in_total 2",
        "fanout_connections_open{protocol=\"text\"} 1",
        "fanout_protocol_errors_by_kind_total{kind=\"http\"} 6",
        "# TYPE fanout_retained_messages gauge",
        "fanout_ring_full_stalls_total 0",
        "fanout_slow_consumer_closes_total 0",
        "fanout_channels ",
    ] {
        assert!(metrics.contains(needle), "metrics lack {needle:?}:\n{metrics}");
    }
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("fanout_"), "{line}");
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }
}

#[test]
fn expect_100_continue_gets_its_interim_answer() {
    let server = start(|_| {});
    let mut stream = TcpStream::connect(server.local_addr()).unwrap();
    let body = vec![b'x'; 2000];
    let head = format!(
        "POST /publish?channel=big HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    let (interim, rest) = read_head(&mut stream);
    assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(&body).unwrap();
    let mut pending = rest;
    let response = read_response(&mut stream, &mut pending);
    assert_eq!((response.status, response.json()["offset"].as_u64()), (200, Some(1)));
}

#[test]
fn keep_alive_pipelined_requests_are_answered_in_order() {
    let server = start(|_| {});
    let mut stream = TcpStream::connect(server.local_addr()).unwrap();
    let mut raw = Vec::new();
    for i in 0..5 {
        raw.extend(
            format!("POST /publish?channel=k HTTP/1.1\r\nContent-Length: 2\r\n\r\nm{i}").as_bytes(),
        );
    }
    raw.extend(b"GET /poll?channel=k&from=3 HTTP/1.1\r\n\r\n");
    // Split anywhere: requests wait for their whole head and body.
    for piece in raw.chunks(7) {
        stream.write_all(piece).unwrap();
        stream.flush().unwrap();
    }
    let mut pending = Vec::new();
    for i in 1..=5 {
        assert_eq!(read_response(&mut stream, &mut pending).json()["offset"], i);
    }
    let poll = read_response(&mut stream, &mut pending).json();
    let offsets: Vec<u64> = poll["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [4, 5]);
}

#[test]
fn a_keep_alive_connection_is_idle_from_its_last_response_not_its_request() {
    // The outside tester's finding: a long-poll answered after most of the idle period was
    // closed right after its answer, racing the client's next poll on the same connection.
    let server = start(|c| c.ping_interval = Duration::from_secs(2));
    let mut stream = TcpStream::connect(server.local_addr()).unwrap();
    let mut pending = Vec::new();
    stream.write_all(b"GET /poll?channel=idle&timeout=3 HTTP/1.1\r\n\r\n").unwrap();
    let started = Instant::now();
    let answer = read_response(&mut stream, &mut pending);
    assert_eq!(answer.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(2900), "answered at its timeout");
    // A second before the idle period ends, counted from the answer: still open.
    std::thread::sleep(Duration::from_millis(1000));
    stream.write_all(b"GET /poll?channel=idle&timeout=0 HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut stream, &mut pending).status, 200);
    // Silent past the period after that answer: closed.
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut byte = [0u8; 1];
    let started = Instant::now();
    assert_eq!(std::io::Read::read(&mut stream, &mut byte).unwrap_or(0), 0, "closed");
    assert!(started.elapsed() >= Duration::from_millis(1500), "idle from the answer");
}

/// The offsets of an SSE id (`offset@epoch`, or a cursor of several, `-` for not known yet),
/// checking that each position carries its epoch in 16 hex digits.
fn offsets_of(id: &str) -> String {
    id.split(' ')
        .map(|position| match position.split_once('@') {
            Some((offset, epoch)) => {
                assert!(
                    epoch.len() == 16 && epoch.chars().all(|c| c.is_ascii_hexdigit()),
                    "{id:?}"
                );
                offset.to_string()
            }
            None => {
                assert_eq!(position, "-", "a position carries its epoch: {id:?}");
                position.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn an_event_stream_that_reconnects_to_a_new_log_is_told_and_misses_nothing() {
    // The first server's log of `a` reaches offset 3; the browser saw all three.
    let first = start(|_| {});
    for i in 1..=3 {
        http_publish(first.local_addr(), "a", format!("old{i}").as_bytes());
    }
    let mut sse = EventStream::open(first.local_addr(), "/sse?channel=a&after=0", "");
    for _ in 0..3 {
        sse.next_message();
    }
    let last_id = sse.last_id.clone().unwrap();
    assert_eq!(offsets_of(&last_id), "3");
    drop(sse);
    first.shutdown();
    // A restart without a data directory: a new log, already past offset 3.
    let second = start(|_| {});
    for i in 1..=5 {
        http_publish(second.local_addr(), "a", format!("new{i}").as_bytes());
    }
    let mut again = EventStream::open(
        second.local_addr(),
        "/sse?channel=a&after=0",
        &format!("Last-Event-ID: {last_id}\r\n"),
    );
    let notice = again.next(PATIENCE).unwrap();
    assert_eq!(notice.event.as_deref(), Some("fanout history"));
    let notice: serde_json::Value = serde_json::from_str(&notice.data).unwrap();
    assert_eq!(notice["status"], "epoch", "the changed log is announced");
    let got: Vec<String> = (0..5).map(|_| again.next_message().data).collect();
    assert_eq!(got, ["new1", "new2", "new3", "new4", "new5"], "offsets 1-3 of the new log too");
}

#[test]
fn server_sent_events_stream_and_resume() {
    let server = start(|c| c.ping_interval = Duration::from_millis(200));
    let addr = server.local_addr();
    for i in 1..=5 {
        http_publish(addr, "a", format!("a{i}").as_bytes());
    }
    // Several channels, the first resuming after offset 3, the second from now.
    let mut sse = EventStream::open(addr, "/sse?channel=a&after=3&channel=b", "");
    assert!(sse.head.starts_with("HTTP/1.1 200 "));
    assert!(sse.head.contains("Content-Type: text/event-stream"));
    let hist = sse.next(PATIENCE).unwrap();
    assert_eq!(hist.event.as_deref(), Some("fanout history"));
    let hist: serde_json::Value = serde_json::from_str(&hist.data).unwrap();
    assert_eq!(
        (hist["first"].as_u64(), hist["last"].as_u64(), hist["status"].as_str()),
        (Some(1), Some(5), Some("ok"))
    );
    for i in 4..=5 {
        let event = sse.next_message();
        assert_eq!(
            (event.id.as_deref().map(offsets_of), event.event.as_deref()),
            (Some(i.to_string()), Some("a"))
        );
        assert_eq!(event.data, format!("a{i}"));
    }
    let deadline = Instant::now() + PATIENCE;
    while !sse.comments.iter().any(|c| c == "ok sub b") {
        assert!(Instant::now() < deadline, "no acknowledgement of b");
        sse.next(Duration::from_millis(20));
    }
    http_publish(addr, "b", b"line one\nline two");
    http_publish(addr, "b", &[0xff, 0x00]);
    http_publish(addr, "b", b"cr\r\nlf");
    let multi = sse.next_message();
    assert_eq!((multi.event.as_deref(), multi.data.as_str()), (Some("b"), "line one\nline two"));
    let binary = sse.next_message();
    assert_eq!((binary.event.as_deref(), binary.data.as_str()), (Some("b base64"), "/wA="));
    assert_eq!(sse.next_message().event.as_deref(), Some("b base64"));
    // Heartbeats are comments.
    let deadline = Instant::now() + PATIENCE;
    while !sse.comments.iter().any(|c| c == "ping") {
        assert!(Instant::now() < deadline, "no heartbeat");
        sse.next(Duration::from_millis(100));
    }
    assert_eq!(server.stats().connections_sse, 1);

    // The browser's reconnect: Last-Event-ID resumes a one-channel stream (a bare offset, as
    // before ids carried the epoch, is still understood).
    let mut again = EventStream::open(addr, "/sse?channel=a&after=1", "Last-Event-ID: 4\r\n");
    let event = again.next_message();
    assert_eq!(
        (event.id.as_deref().map(offsets_of), event.data.as_str()),
        (Some("5".into()), "a5")
    );
    // Bad requests are plain HTTP errors.
    assert_eq!(http(addr, "GET", "/sse", b"").status, 400);
    assert_eq!(http(addr, "GET", "/sse?after=1&channel=a", b"").status, 400);
    assert_eq!(http(addr, "GET", "/sse?channel=a&after=x", b"").status, 400);
}

#[test]
fn a_plain_event_source_on_several_channels_resumes_every_channel() {
    let server = start(|_| {});
    let addr = server.local_addr();
    http_publish(addr, "x", b"x-old");
    // No `after`: from now. The cursor says where each channel starts before any message.
    let mut sse = EventStream::open(addr, "/sse?channel=x&channel=y", "");
    let deadline = Instant::now() + PATIENCE;
    while sse.last_id.as_deref().map(offsets_of).as_deref() != Some("1 0") {
        assert!(Instant::now() < deadline, "no cursor; last id {:?}", sse.last_id);
        sse.next(Duration::from_millis(20));
    }
    http_publish(addr, "x", b"x2");
    http_publish(addr, "y", b"y1");
    let seen: Vec<String> = (0..2).map(|_| sse.next_message().data).collect();
    assert_eq!(seen, ["x2", "y1"]);
    // The browser keeps the cursor that followed the last batch, not the last message's offset.
    while sse.last_id.as_deref().map(offsets_of).as_deref() != Some("2 1") {
        assert!(Instant::now() < deadline, "cursor not updated; last id {:?}", sse.last_id);
        sse.next(Duration::from_millis(20));
    }
    let last_id = sse.last_id.clone().unwrap();
    drop(sse);
    // Missed while away, on both channels.
    http_publish(addr, "x", b"x3");
    http_publish(addr, "y", b"y2");
    http_publish(addr, "x", b"x4");
    // The browser's own reconnect: same URL, Last-Event-ID.
    let mut again = EventStream::open(
        addr,
        "/sse?channel=x&channel=y",
        &format!("Last-Event-ID: {last_id}\r\n"),
    );
    let got: Vec<(String, String, String)> = (0..3)
        .map(|_| {
            let e = again.next_message();
            (e.event.unwrap(), offsets_of(&e.id.unwrap()), e.data)
        })
        .collect();
    let expected = [("x", "3", "x3"), ("x", "4", "x4"), ("y", "2", "y2")];
    let expected: Vec<(String, String, String)> =
        expected.iter().map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())).collect();
    assert_eq!(got, expected);
    assert_eq!(again.next(Duration::from_millis(200)), None, "nothing twice");
}

#[test]
fn readers_that_never_read_sse_or_websocket_are_cut_off_and_others_keep_going() {
    let server = start(|c| {
        c.write_queue_cap_bytes = 64 * 1024;
        c.max_frame_bytes = 16 * 1024;
    });
    let addr = server.local_addr();
    // Open a stream and a WebSocket and never read them.
    let _stuck = EventStream::open(addr, "/sse?channel=s", "");
    let mut stuck_ws = Conn::websocket(addr);
    stuck_ws.subscribe("s");
    let mut reader = Conn::websocket(addr);
    reader.subscribe("s");
    wait_until("the stream is subscribed", || server.stats().connections_sse == 1);
    std::thread::sleep(Duration::from_millis(100));
    // The reader is paced against the publisher, so its queue stays far below the cap however
    // slowly this machine schedules the reading thread: only the stuck ones can be cut off.
    let read_so_far = Arc::new(AtomicUsize::new(0));
    let reading = std::thread::spawn({
        let read_so_far = Arc::clone(&read_so_far);
        move || {
            for seen in 0..6000 {
                match reader.read(PATIENCE) {
                    Read_::Frame(Frame::Msg { offset, .. }) => assert_eq!(offset, seen + 1),
                    other => panic!("{other:?} after {seen}"),
                }
                read_so_far.store(seen as usize + 1, Ordering::Release);
            }
        }
    });
    // 12 MB in all: more than the kernel buffers of the stuck stream can hide.
    let payload = vec![b'x'; 2000];
    let mut publisher = Conn::binary(addr);
    for i in 0..6000 {
        publisher.publish("s", &payload);
        if i % 10 == 9 {
            publisher.barrier();
            // At most 20 messages (40 KB) ahead of the reader.
            let published = i + 1;
            wait_until("the reader keeps up", || {
                reading.is_finished() || read_so_far.load(Ordering::Acquire) + 10 >= published
            });
        }
    }
    reading.join().expect("the WebSocket reader got every message in order");
    wait_until("both are cut off", || server.stats().slow_consumer_closes == 2);
    // The stuck WebSocket, read at last: what was on its way, the reason, a close frame.
    let reason = stuck_ws.expect_error_and_close(507);
    assert!(reason.contains("slow consumer"), "{reason}");
    assert_eq!(stuck_ws.close_code, Some(1011));
}

#[test]
fn long_poll_answers_at_once_or_when_a_message_arrives_or_at_the_timeout() {
    let server = start(|c| c.history_messages = 5);
    let addr = server.local_addr();
    for i in 1..=8 {
        http_publish(addr, "p", format!("p{i}").as_bytes());
    }
    let offsets = |r: &serde_json::Value| -> Vec<u64> {
        r["messages"].as_array().unwrap().iter().map(|m| m["offset"].as_u64().unwrap()).collect()
    };
    let now = http(addr, "GET", "/poll?channel=p&from=5", b"").json();
    assert_eq!(
        (offsets(&now), now["status"].as_str(), now["last"].as_u64()),
        (vec![6, 7, 8], Some("ok"), Some(8))
    );
    // Retention kept 4..8: asking from 1 says expired and starts at the earliest.
    let expired = http(addr, "GET", "/poll?channel=p&from=1", b"").json();
    assert_eq!(
        (offsets(&expired), expired["status"].as_str()),
        (vec![4, 5, 6, 7, 8], Some("expired"))
    );
    let epoch = now["epoch"].as_str().unwrap().to_owned();
    let other_epoch = format!("{:016x}", u64::from_str_radix(&epoch, 16).unwrap() ^ 1);
    let changed =
        http(addr, "GET", &format!("/poll?channel=p&from=8&epoch={other_epoch}"), b"").json();
    assert_eq!(changed["status"], "epoch");

    // Held until the next message: a held poll is a subscriber of its channel (what the server
    // API counts), which is the sign it waits, not merely that its request arrived.
    let held_polls = || {
        let channels = http(addr, "GET", "/api/channels?pattern=p", b"").json();
        channels["channels"][0]["subscribers"].as_u64().unwrap_or(0)
    };
    assert_eq!(held_polls(), 0);
    let waiter = std::thread::spawn(move || {
        let started = Instant::now();
        (http(addr, "GET", "/poll?channel=p&from=8&timeout=20", b"").json(), started.elapsed())
    });
    wait_until("the poll is held", || held_polls() == 1);
    let pause = Duration::from_millis(300);
    std::thread::sleep(pause);
    http_publish(addr, "p", b"p9");
    let (held, waited) = waiter.join().unwrap();
    assert_eq!(offsets(&held), vec![9]);
    assert_eq!(held["messages"][0]["data"], "p9");
    assert!(waited >= pause, "answered after {waited:?}: before the message existed");
    assert!(waited < Duration::from_secs(15), "answered by the message, not the timeout");
    assert_eq!(held_polls(), 0, "an answered poll is no longer a subscriber");
    // Nothing arrives: an empty answer at the timeout.
    let started = Instant::now();
    let empty = http(addr, "GET", "/poll?channel=p&from=9&timeout=1", b"").json();
    assert_eq!(offsets(&empty), Vec::<u64>::new());
    assert!(started.elapsed() >= Duration::from_millis(900));
    // A held poll goes away with its client at once, not at its deadline.
    let mut gone = TcpStream::connect(addr).unwrap();
    gone.write_all(b"GET /poll?channel=p&from=9&timeout=100 HTTP/1.1\r\n\r\n").unwrap();
    wait_until("the poll is held", || held_polls() == 1);
    drop(gone);
    assert_eq!(http(addr, "GET", "/poll?channel=p&timeout=0", b"").status, 200);
    wait_until("the abandoned poll is closed", || server.stats().connections_http == 0);
    assert_eq!(http(addr, "GET", "/poll", b"").status, 400);
    assert_eq!(http(addr, "GET", "/poll?channel=*", b"").status, 403);
    assert_eq!(http(addr, "GET", "/poll?channel=p&from=x", b"").status, 400);
}

#[test]
fn echo_endpoint_echoes_and_gets_no_broadcasts() {
    let server = start(|c| c.ws_echo = true);
    let addr = server.local_addr();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(format!("GET /echo HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\r\n", common::WS_KEY).as_bytes())
        .unwrap();
    let (head, _) = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101 "));
    http_publish(addr, "*", b"broadcast");
    let frame = fanout::protocol::websocket::encode_client_frame(
        true,
        opcode::BINARY,
        b"\x00echo",
        [1, 2, 3, 4],
    );
    stream.write_all(&frame).unwrap();
    let mut buffer = [0u8; 64];
    let n = std::io::Read::read(&mut stream, &mut buffer).unwrap();
    assert_eq!(&buffer[..n], b"\x82\x05\x00echo");
}
