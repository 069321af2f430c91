//! TLS on the listen port, beside plaintext: every protocol inside it with clients no one here
//! wrote (curl, redis-cli, Python's websockets), certificates chosen by SNI and swapped on
//! SIGHUP, and the hostile cases (a stalled handshake, garbage records, a client that never
//! reads, plaintext on a TLS-only port, bad certificate files). Certificates come from a CA each
//! test makes with `openssl`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::tls::{connect, server_tls, TestPki};
use common::{start, wait_until, ChildServer, Conn, Frame, TempDir, PATIENCE};
use fanout::client::{Client, ServerAddr};

fn tls_addr(addr: SocketAddr, name: &str) -> ServerAddr {
    ServerAddr { addr, tls_name: Some(name.to_owned()) }
}

/// `curl` over TLS to `localhost` (pinned to `addr`), trusting `ca` only.
fn curl(addr: SocketAddr, ca: &str, args: &[&str], path: &str) -> Command {
    let mut command = Command::new("curl");
    command
        .args(["-sS", "--max-time", "20", "--cacert", ca, "--resolve"])
        .arg(format!("localhost:{}:127.0.0.1", addr.port()))
        .args(args)
        .arg(format!("https://localhost:{}{path}", addr.port()));
    command
}

/// Reads lines from `lines` until one satisfies `wanted` (or panics after `PATIENCE`).
fn line_until(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    what: &str,
    wanted: impl Fn(&str) -> bool,
) {
    for line in lines {
        let line = line.unwrap_or_else(|e| panic!("waiting for {what}: {e}"));
        if wanted(&line) {
            return;
        }
    }
    panic!("the stream ended before {what}");
}

fn python() -> String {
    std::env::var("FANOUT_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".to_owned())
}

#[test]
fn every_protocol_speaks_tls_on_the_same_port_as_plaintext() {
    let pki = TestPki::new("protocols");
    let cert = pki.issue("server", &["localhost", "127.0.0.1"]);
    let server = start(|config| config.tls = Some(server_tls(&[cert])));
    let addr = server.local_addr();
    let ca = pki.ca_path();
    let trust = pki.client_config();

    // Plaintext and TLS, binary and text, side by side.
    let mut plain = Conn::binary(addr);
    plain.subscribe("news");
    let mut binary = Client::open(&tls_addr(addr, "localhost"), Some(&trust)).expect("TLS connect");
    binary.subscribe("news").expect("subscribed over TLS");
    let mut text = BufReader::new(connect(addr, &trust, "localhost").expect("TLS connect"));
    text.get_mut().write_all(b"SUB news\n").unwrap();
    text.get_mut().flush().unwrap();
    let mut text_lines = text.lines();
    line_until(&mut text_lines, "the text subscribe's OK", |l| l == "OK SUB news");

    // Redis's own client over TLS (it checks the chain; the certificate also names 127.0.0.1).
    let mut redis_cli = Command::new("redis-cli")
        .args(["--tls", "--cacert", ca, "-h", "127.0.0.1", "-p", &addr.port().to_string()])
        .args(["SUBSCRIBE", "news"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("redis-cli runs (apt-get install redis-tools; .ci/run installs it)");
    let mut redis_lines = BufReader::new(redis_cli.stdout.take().unwrap()).lines();
    line_until(&mut redis_lines, "redis-cli's subscribe confirmation", |l| l == "1");

    // An event stream through curl.
    let mut sse = curl(addr, ca, &["-N"], "/sse?channel=news")
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl runs");
    let mut sse_lines = BufReader::new(sse.stdout.take().unwrap()).lines();
    line_until(&mut sse_lines, "the event stream's subscription", |l| l == ": ok sub news");

    // Python's websockets over wss://, checking our certificate with the test CA.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/ws_subscriber.py");
    let url = format!("wss://localhost:{}/ws", addr.port());
    let mut python = Command::new(python())
        .args([script, &url, "news", "2", ca])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python starts");
    let mut python_lines = BufReader::new(python.stdout.take().unwrap()).lines();
    assert_eq!(python_lines.next().and_then(Result::ok).as_deref(), Some("ready"));

    // Published over HTTPS with curl, then over plaintext.
    let published =
        curl(addr, ca, &["-X", "POST", "--data-binary", "message 1"], "/publish?channel=news")
            .output()
            .expect("curl runs");
    let body = String::from_utf8_lossy(&published.stdout);
    assert!(body.contains("\"offset\":1"), "HTTPS publish: {body} {published:?}");
    plain.publish("news", b"message 2");

    for (offset, payload) in [(1, "message 1"), (2, "message 2")] {
        let expected =
            Frame::Msg { channel: "news".into(), offset, payload: payload.as_bytes().to_vec() };
        assert_eq!(plain.next(), expected, "plaintext subscriber");
        let message = binary.next_message(Some(PATIENCE)).expect("TLS binary").expect("message");
        assert_eq!((message.offset, message.payload), (offset, payload.as_bytes().to_vec()));
        let wanted = format!("MSG news {offset} {payload}");
        line_until(&mut text_lines, "a message over TLS text", |l| l == wanted);
        line_until(&mut redis_lines, "a message to redis-cli", |l| l == payload);
        let data = format!("data: {payload}");
        line_until(&mut sse_lines, "a message on the event stream", |l| l == data);
    }
    // A long-poll from the start gets both.
    let polled = curl(addr, ca, &[], "/poll?channel=news&from=0").output().expect("curl runs");
    let polled = String::from_utf8_lossy(&polled.stdout);
    assert!(
        polled.contains("message 1") && polled.contains("message 2"),
        "long-poll over TLS: {polled}"
    );
    // The Python client got both, published one with an acknowledgement and resumed.
    assert_eq!(python_lines.next().and_then(Result::ok).as_deref(), Some("ok 2"));
    assert!(python.wait().unwrap().success(), "the Python client failed (see its output)");

    let metrics = curl(addr, ca, &[], "/metrics").output().expect("curl runs");
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    let handshakes = metrics
        .lines()
        .find_map(|l| l.strip_prefix("fanout_tls_handshakes_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .expect("the handshake counter in /metrics over HTTPS");
    assert!(handshakes >= 8, "{handshakes} handshakes counted");
    assert!(
        metrics.contains("fanout_tls_failures_total{reason=\"timeout\"} 0"),
        "failures by reason in /metrics"
    );
    for child in [&mut redis_cli, &mut sse] {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stats = server.stats();
    assert_eq!(
        stats.tls_failures_protocol + stats.tls_failures_other + stats.tls_failures_alert,
        0,
        "{stats}"
    );
}

/// A close the server decides (the last HTTP response, an error) ends the TLS stream with
/// close_notify before the TCP close: a client can tell it from a cut connection.
#[test]
fn a_graceful_close_sends_close_notify() {
    let pki = TestPki::new("close-notify");
    let cert = pki.issue("server", &["localhost"]);
    let server = start(|config| config.tls = Some(server_tls(&[cert])));
    let trust = pki.client_config();
    let requests: [&[u8]; 2] = [
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        b"NOT A COMMAND\n",
    ];
    for request in requests {
        let mut tls = connect(server.local_addr(), &trust, "localhost").unwrap();
        tls.write_all(request).unwrap();
        tls.flush().unwrap();
        let mut reply = Vec::new();
        let ended = tls.read_to_end(&mut reply);
        assert!(ended.is_ok(), "{ended:?} after {:?}", String::from_utf8_lossy(&reply));
        assert!(!reply.is_empty());
    }
}

#[test]
fn sni_picks_the_certificate_for_the_name_asked() {
    let pki = TestPki::new("sni");
    let first = pki.issue("first", &["localhost"]);
    let second = pki.issue("second", &["chat.example.test"]);
    let server = start(|config| config.tls = Some(server_tls(&[first, second])));
    let trust = pki.client_config();
    for name in ["localhost", "chat.example.test"] {
        let mut client =
            Client::open(&tls_addr(server.local_addr(), name), Some(&trust)).expect(name);
        client.ping().expect("a ping answered");
    }
    // A name neither certificate carries gets the first, which the client then refuses.
    let refused = Client::open(&tls_addr(server.local_addr(), "other.example.test"), Some(&trust));
    assert!(
        matches!(&refused, Err(fanout::client::ClientError::Tls { reason, .. }) if reason.contains("not valid for name")),
        "{refused:?}"
    );
}

/// Sets SO_LINGER to zero: closing the socket then sends a reset, not a FIN.
fn reset_on_close(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid socket descriptor and a linger struct of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER");
}

/// A client that leaves mid-handshake, by FIN or by reset, is counted (`eof`): a scanner that
/// resets its connections is not invisible.
#[test]
fn a_handshake_abandoned_by_eof_or_reset_is_counted() {
    let pki = TestPki::new("abandon");
    let cert = pki.issue("server", &["localhost"]);
    let server = start(|config| config.tls = Some(server_tls(&[cert])));
    let hello_start = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03];
    for reset in [false, true, true] {
        let mut raw = TcpStream::connect(server.local_addr()).unwrap();
        raw.write_all(&hello_start).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        if reset {
            reset_on_close(&raw);
        }
        drop(raw);
    }
    wait_until("three abandoned handshakes counted", || server.stats().tls_failures_eof == 3);
    wait_until("no TLS connection left", || server.stats().connections_tls == 0);
}

#[test]
fn tls_only_refuses_plaintext_with_a_reason() {
    let pki = TestPki::new("only");
    let cert = pki.issue("server", &["localhost"]);
    let server = start(|config| {
        config.tls = Some(server_tls(&[cert]));
        config.tls_only = true;
        config.http_head_timeout = Duration::from_millis(400);
        config.ping_interval = Duration::from_millis(200);
    });
    // Silent: no plaintext PING on a TLS-only port, and cut at the handshake deadline.
    let mut silent = TcpStream::connect(server.local_addr()).unwrap();
    silent.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut got = Vec::new();
    let _ = silent.read_to_end(&mut got);
    assert!(got.is_empty(), "a silent connection got {:?}", String::from_utf8_lossy(&got));
    wait_until("the silent one counted", || server.stats().tls_failures_timeout == 1);
    let mut plain = Conn::text(server.local_addr());
    plain.send_raw(b"PING\n");
    let reason = plain.expect_error_and_close(426);
    assert!(reason.contains("TLS only"), "{reason}");
    let mut client =
        Client::open(&tls_addr(server.local_addr(), "localhost"), Some(&pki.client_config()))
            .expect("TLS is served");
    client.ping().expect("a ping answered over TLS");
    assert_eq!(server.stats().tls_plaintext_refused, 1);
}

/// A handshake that stops halfway holds a connection and its buffer for nothing (slowloris): it
/// is cut at the HTTP head deadline, counted, while a TLS client beside it is served.
#[test]
fn a_stalled_handshake_is_cut_at_the_head_deadline() {
    let pki = TestPki::new("stall");
    let cert = pki.issue("server", &["localhost"]);
    let server = start(|config| {
        config.tls = Some(server_tls(&[cert]));
        config.http_head_timeout = Duration::from_millis(500);
    });
    let addr = server.local_addr();
    let mut stalled = TcpStream::connect(addr).unwrap();
    // A handshake record header announcing 512 bytes, then only 10 of them.
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0, 0, 0, 0])
        .unwrap();
    let started = Instant::now();
    let mut client =
        Client::open(&tls_addr(addr, "localhost"), Some(&pki.client_config())).unwrap();
    client.ping().expect("served beside the stalled one");
    stalled.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 64];
    let closed = matches!(stalled.read(&mut buf), Ok(0) | Err(_));
    assert!(closed, "the stalled handshake's connection is closed");
    assert!(started.elapsed() >= Duration::from_millis(400), "not before the deadline");
    wait_until("the timeout is counted", || server.stats().tls_failures_timeout == 1);
}

/// Bytes that are not TLS after a handshake byte, a record longer than TLS allows, and garbage
/// after a good handshake: each closes only its own connection, counted as a protocol failure.
#[test]
fn hostile_records_close_only_their_own_connection() {
    let pki = TestPki::new("hostile");
    let cert = pki.issue("server", &["localhost"]);
    let server = start(|config| config.tls = Some(server_tls(&[cert])));
    let addr = server.local_addr();
    let trust = pki.client_config();
    let mut bystander = Client::open(&tls_addr(addr, "localhost"), Some(&trust)).unwrap();
    bystander.subscribe("calm").unwrap();

    // Each with what comes back first: a fatal alert record (content type 21) saying why
    // (RFC 8446, 6.2) where rustls makes one, or nothing; then the close.
    let attacks: [(&[u8], Option<u8>); 3] = [
        // A handshake byte, then an HTTP request.
        (b"\x16GET / HTTP/1.1\r\n\r\n", Some(21)),
        // A record of 65,535 bytes (TLS allows 16 KiB and a little).
        (&[0x16, 0x03, 0x03, 0xff, 0xff, 1, 2, 3], Some(21)),
        // A ClientHello announcing 16 MiB (rustls refuses it without an alert).
        (&[0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0xff, 0xff, 0xff], None),
    ];
    for (i, (attack, first)) in attacks.iter().enumerate() {
        let mut raw = TcpStream::connect(addr).unwrap();
        raw.set_read_timeout(Some(PATIENCE)).unwrap();
        raw.write_all(attack).unwrap();
        let mut reply = Vec::new();
        let _ = raw.read_to_end(&mut reply);
        assert_eq!(reply.first(), first.as_ref(), "attack {i}: {reply:?}");
    }
    // After a good handshake: a record of garbage.
    let mut good = connect(addr, &trust, "localhost").unwrap();
    good.socket_mut().write_all(&[0x17, 0x03, 0x03, 0x00, 0x20]).unwrap();
    good.socket_mut().write_all(&[0xab; 0x20]).unwrap();
    let mut buf = [0u8; 64];
    let outcome = good.read(&mut buf);
    assert!(matches!(outcome, Ok(0) | Err(_)), "{outcome:?}");
    wait_until("four protocol failures counted", || {
        let stats = server.stats();
        stats.tls_failures_protocol + stats.tls_failures_other == 4
    });
    // A WebSocket over TLS (whose close queues a close frame) that sends a bad record: closed
    // once the alert is out, not held until the linger deadline (5 s) by a frame that can no
    // longer be encrypted.
    let mut ws = connect(addr, &trust, "localhost").unwrap();
    ws.write_all(
        b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    ws.flush().unwrap();
    let mut head = [0u8; 12];
    ws.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    let started = Instant::now();
    ws.socket_mut().write_all(&[0x17, 0x03, 0x03, 0x00, 0x20]).unwrap();
    ws.socket_mut().write_all(&[0xcd; 0x20]).unwrap();
    let mut rest = Vec::new();
    let _ = ws.read_to_end(&mut rest);
    assert!(started.elapsed() < Duration::from_secs(3), "closed after {:?}", started.elapsed());
    wait_until("five failures counted", || {
        let stats = server.stats();
        stats.tls_failures_protocol + stats.tls_failures_other == 5
    });

    let mut publisher = Conn::binary(addr);
    publisher.publish("calm", b"still here");
    let message = bystander.next_message(Some(PATIENCE)).unwrap().expect("a message");
    assert_eq!(message.payload, b"still here");
}

/// A TLS subscriber that never reads is a slow consumer like any other: its queue and its
/// encrypted backlog are bounded by the cap, and it is cut while a TLS reader gets everything.
#[test]
fn a_tls_subscriber_that_never_reads_is_cut_as_a_slow_consumer() {
    const CAP: usize = 256 * 1024;
    const MESSAGES: u64 = 2_000;
    let pki = TestPki::new("slow");
    let cert = pki.issue("server", &["localhost"]);
    let server = start(|config| {
        config.tls = Some(server_tls(&[cert]));
        config.write_queue_cap_bytes = CAP;
        config.max_frame_bytes = 16 * 1024;
    });
    let addr = server.local_addr();
    let trust = pki.client_config();
    let mut never_reads = Client::open(&tls_addr(addr, "localhost"), Some(&trust)).unwrap();
    never_reads.subscribe("flood").unwrap();
    let mut reader = Client::open(&tls_addr(addr, "localhost"), Some(&trust)).unwrap();
    reader.subscribe("flood").unwrap();
    let payload = vec![b'x'; 2_000]; // 4 MB in all
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let progress = received.clone();
    let reading = std::thread::spawn(move || {
        for offset in 1..=MESSAGES {
            let message = reader.next_message(Some(PATIENCE)).unwrap().expect("a message");
            assert_eq!((message.offset, message.payload.len()), (offset, 2_000));
            progress.store(offset, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let mut publisher = Conn::binary(addr);
    for offset in 1..=MESSAGES {
        // The reader keeps up (at most 50 messages, 100 KB, behind); the silent one cannot.
        while offset > received.load(std::sync::atomic::Ordering::Relaxed) + 50 {
            std::thread::sleep(Duration::from_millis(1));
        }
        publisher.publish("flood", &payload);
    }
    publisher.barrier();
    reading.join().expect("the reader got every message");
    wait_until("the silent one is cut", || server.stats().slow_consumer_closes == 1);
    let stats = server.stats();
    assert!(
        stats.queue_high_water_bytes <= CAP as u64 + 2_100,
        "a queue held {} bytes (cap {CAP})",
        stats.queue_high_water_bytes
    );
}

/// TLS subscribers that come and go (closing or resetting) while a publisher streams leave no
/// queued bytes behind in the accounting: every byte that left a queue is counted once,
/// whether its write then succeeded or failed.
#[test]
fn tls_subscribers_leaving_mid_stream_leave_no_queued_bytes_behind() {
    let pki = TestPki::new("churn");
    let cert = pki.issue("server", &["localhost"]);
    let server = start(|config| config.tls = Some(server_tls(&[cert])));
    let addr = server.local_addr();
    let trust = pki.client_config();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publishing = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut publisher = Conn::binary(addr);
            let payload = vec![b'p'; 16 * 1024];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for _ in 0..20 {
                    publisher.publish("churn", &payload);
                }
                publisher.barrier();
            }
        })
    };
    for round in 0..60 {
        let mut client = connect(addr, &trust, "localhost").unwrap();
        client.write_all(b"SUB churn\n").unwrap();
        client.flush().unwrap();
        let mut buf = [0u8; 4096];
        let _ = client.read(&mut buf);
        if round % 2 == 0 {
            reset_on_close(client.socket());
        }
        drop(client);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    publishing.join().unwrap();
    wait_until("every subscriber gone", || server.stats().connections_current == 0);
    assert_eq!(server.stats().queued_bytes, 0, "{}", server.stats());
}

#[test]
fn bad_certificate_files_refuse_to_start_with_the_reason() {
    let pki = TestPki::new("bad");
    let (cert, key) = pki.issue("server", &["localhost"]);
    let (_, other_key) = pki.issue("other", &["localhost"]);
    let dir = TempDir::new("bad-pem");
    let not_pem = dir.0.join("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let missing = dir.0.join("missing.pem");
    let cases = [
        (missing.clone(), key.clone(), "missing.pem"),
        (not_pem.clone(), key.clone(), "no CERTIFICATE"),
        (cert.clone(), not_pem.clone(), "no usable PEM private key"),
        (cert.clone(), other_key.clone(), "key"),
    ];
    for (cert, key, expected) in cases {
        let output = Command::new(env!("CARGO_BIN_EXE_fanout"))
            .args(["serve", "--listen", "127.0.0.1:0", "--no-pin", "--tls-cert"])
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .output()
            .expect("fanout runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "started with {cert:?} and {key:?}");
        assert!(stderr.contains("TLS") && stderr.contains(expected), "{expected}: {stderr}");
    }
}

/// SIGHUP re-reads the certificate files: new handshakes get the new certificate, a TLS
/// subscriber connected before stays and keeps receiving, and a broken file keeps the old set.
#[test]
fn sighup_swaps_the_certificate_while_a_tls_subscriber_stays() {
    let old_ca = TestPki::new("rotate-old");
    let new_ca = TestPki::new("rotate-new");
    let (old_cert, old_key) = old_ca.issue("server", &["localhost"]);
    let (new_cert, new_key) = new_ca.issue("server", &["localhost"]);
    let dir = TempDir::new("rotate");
    let (cert, key) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    std::fs::copy(&old_cert, &cert).unwrap();
    std::fs::copy(&old_key, &key).unwrap();
    let server = ChildServer::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let target = tls_addr(server.addr, "localhost");
    let mut subscriber = Client::open(&target, Some(&old_ca.client_config())).unwrap();
    subscriber.subscribe("rotation").unwrap();

    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    let hup = |pid: u32| {
        // SAFETY: kill(2) on our own child, which stays unreaped while `server` lives.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) }, 0);
    };
    hup(server.child.id());
    wait_until("new handshakes get the new certificate", || {
        Client::open(&target, Some(&new_ca.client_config())).is_ok()
    });
    assert!(Client::open(&target, Some(&old_ca.client_config())).is_err(), "the old one is gone");

    // A broken file: the reload fails, the current certificate stays.
    std::fs::write(&cert, "not a certificate\n").unwrap();
    hup(server.child.id());
    std::thread::sleep(Duration::from_millis(200));
    Client::open(&target, Some(&new_ca.client_config())).expect("still served");

    let mut publisher = Conn::binary(server.addr);
    publisher.publish("rotation", b"after the swap");
    let message = subscriber.next_message(Some(PATIENCE)).unwrap().expect("a message");
    assert_eq!(message.payload, b"after the swap", "the old connection stayed");
}

/// A TLS-only Redis (as managed services run it: `--port 0`, a password, client certificates
/// required): two nodes join it with `rediss://`, a publish on one is acknowledged and delivered
/// on the other; a node without the client certificate cannot join.
#[test]
fn nodes_join_a_tls_only_redis_with_a_password_and_a_client_certificate() {
    let pki = TestPki::new("rediss");
    let (server_cert, server_key) = pki.issue("redis", &["localhost", "127.0.0.1"]);
    let (client_cert, client_key) = pki.issue("node", &["fanout-node"]);
    let redis = TlsRedis::start(
        &pki,
        (&server_cert, &server_key),
        &["--tls-auth-clients", "yes", "--requirepass", "s3cret"],
        common::redis::free_cluster_port(),
    );
    let port = redis.port;
    let with_identity =
        fanout::tls::client_config(Some(&pki.ca), Some((&client_cert, &client_key)))
            .expect("the client certificate loads");
    let redis_addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_until("the TLS-only Redis answers", || {
        let Ok(mut tls) = connect(redis_addr, &with_identity, "localhost") else { return false };
        let mut reply = [0u8; 12];
        tls.write_all(b"AUTH s3cret\r\nPING\r\n").is_ok()
            && tls.flush().is_ok()
            && tls.read_exact(&mut reply).is_ok()
            && &reply == b"+OK\r\n+PONG\r\n"
    });
    let endpoint: fanout::cluster::RedisEndpoint =
        format!("rediss://:s3cret@localhost:{port}").parse().unwrap();
    let node = |tls: std::sync::Arc<rustls::ClientConfig>| {
        start(|config| {
            let mut cluster = fanout::cluster::ClusterConfig::new(vec![endpoint.clone()]);
            cluster.command_timeout = Duration::from_millis(1000);
            cluster.tls = Some(tls);
            config.cluster = Some(cluster);
        })
    };
    let (a, b) = (node(with_identity.clone()), node(with_identity.clone()));
    for server in [&a, &b] {
        wait_until("the node is joined", || server.stats().cluster_redis_up == 1);
    }
    let mut subscriber = Conn::binary(b.local_addr());
    subscriber.subscribe("secure");
    let mut publisher = Conn::binary(a.local_addr());
    publisher.send(fanout::protocol::Request::PublishAcked {
        channel: b"secure",
        payload: b"across rediss".as_slice().into(),
    });
    assert_eq!(publisher.next(), Frame::Ack { channel: "secure".into(), offset: 1 });
    assert_eq!(
        subscriber.next(),
        Frame::Msg { channel: "secure".into(), offset: 1, payload: b"across rediss".to_vec() }
    );

    // Without the client certificate Redis refuses the handshake: the node never joins.
    let stranger = node(pki.client_config());
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(stranger.stats().cluster_redis_up, 0, "joined without a client certificate");
    drop((a, b, stranger, redis));
}

/// A redis-server that speaks TLS only (`--port 0`), killed when dropped.
struct TlsRedis {
    child: std::process::Child,
    port: u16,
    _dir: TempDir,
}

impl TlsRedis {
    fn start(
        pki: &TestPki,
        (cert, key): (&std::path::Path, &std::path::Path),
        args: &[&str],
        port: u16,
    ) -> TlsRedis {
        let dir = TempDir::new("rediss");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--tls-cert-file")
            .arg(cert)
            .arg("--tls-key-file")
            .arg(key)
            .args(["--tls-ca-cert-file", pki.ca_path(), "--save", "", "--appendonly", "no"])
            .args(["--dir", dir.path(), "--logfile", ""])
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server runs (.ci/run installs it)");
        TlsRedis { child, port, _dir: dir }
    }

    /// `redis-cli --tls` with the test CA, against this server.
    fn cli(&self, pki: &TestPki, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["--tls", "--cacert", pki.ca_path(), "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Redis Cluster of three TLS-only masters (`tls-cluster yes`), joined with
/// `--redis-cluster rediss://`: the slot map is read over TLS, every master is reached over TLS
/// by the address the cluster gives (checked against the certificate's IP), and channels spread
/// over all three are delivered across two nodes.
#[test]
fn nodes_join_a_tls_redis_cluster() {
    let pki = TestPki::new("rediss-cluster");
    let (cert, key) = pki.issue("redis", &["localhost", "127.0.0.1"]);
    let cluster_args =
        ["--tls-cluster", "yes", "--tls-auth-clients", "no", "--cluster-enabled", "yes"];
    let masters: Vec<TlsRedis> = (0..3)
        .map(|_| {
            let port = common::redis::free_cluster_port();
            TlsRedis::start(&pki, (&cert, &key), &cluster_args, port)
        })
        .collect();
    wait_until("the masters answer", || {
        masters.iter().all(|m| m.cli(&pki, &["PING"]).trim() == "PONG")
    });
    let addresses: Vec<String> = masters.iter().map(|m| format!("127.0.0.1:{}", m.port)).collect();
    let created = Command::new("redis-cli")
        .args(["--tls", "--cacert", pki.ca_path(), "--cluster", "create"])
        .args(&addresses)
        .arg("--cluster-yes")
        .output()
        .expect("redis-cli runs");
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stdout));
    wait_until("the cluster is formed", || {
        masters.iter().all(|m| m.cli(&pki, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
    });
    let seed: fanout::cluster::RedisEndpoint =
        format!("rediss://127.0.0.1:{}", masters[0].port).parse().unwrap();
    let node = || {
        start(|config| {
            let mut cluster = fanout::cluster::ClusterConfig::new(vec![seed.clone()]);
            cluster.redis_cluster = true;
            cluster.command_timeout = Duration::from_millis(1000);
            cluster.tls = Some(pki.client_config());
            config.cluster = Some(cluster);
        })
    };
    let (a, b) = (node(), node());
    for server in [&a, &b] {
        wait_until("the node reaches every master", || server.stats().cluster_redis_up == 3);
    }
    let channels: Vec<String> = (0..12).map(|i| format!("spread.{i}")).collect();
    let mut subscriber = Conn::binary(b.local_addr());
    for channel in &channels {
        subscriber.subscribe(channel);
    }
    let mut publisher = Conn::binary(a.local_addr());
    for channel in &channels {
        publisher.send(fanout::protocol::Request::PublishAcked {
            channel: channel.as_bytes(),
            payload: b"over tls".as_slice().into(),
        });
        assert_eq!(publisher.next(), Frame::Ack { channel: channel.clone(), offset: 1 });
    }
    let mut heard: Vec<String> = channels
        .iter()
        .map(|_| match subscriber.next() {
            Frame::Msg { channel, offset: 1, payload } if payload == b"over tls" => channel,
            other => panic!("expected a message, got {other:?}"),
        })
        .collect();
    heard.sort();
    let mut expected = channels.clone();
    expected.sort();
    assert_eq!(heard, expected);
}
