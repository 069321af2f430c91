//! The `fanout` binary: `serve` on port 0, `sub` prints, `pub` publishes an argument or stdin
//! lines, and SIGTERM shuts the server down with exit status 0.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const FANOUT: &str = env!("CARGO_BIN_EXE_fanout");

/// Kills the child if the test fails half-way.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn lines_of(reader: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// `fanout serve` on port 0 with `args`; returns it, its log lines and its address.
fn serve(args: &[&str]) -> (Reaper, mpsc::Receiver<String>, String) {
    let mut server = Reaper(
        Command::new(FANOUT)
            .args(["serve", "--listen", "127.0.0.1:0", "--workers", "2", "--no-pin"])
            .args(args)
            .env("RUST_LOG", "info")
            .env("RUST_BACKTRACE", "0")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let log = lines_of(server.0.stderr.take().unwrap());
    let addr = loop {
        let line = log.recv_timeout(Duration::from_secs(20)).expect("server logs its address");
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    (server, log, addr)
}

fn fanout_pub(addr: &str, args: &[&str], stdin: Option<&str>) {
    let mut child = Command::new(FANOUT)
        .args(["pub", "--server", addr])
        .args(args)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    assert!(child.wait().unwrap().success(), "fanout pub {args:?}");
}

#[test]
fn serve_pub_sub_and_sigterm() {
    let (mut server, _log, addr) = serve(&[]);

    let mut subscriber = Reaper(
        Command::new(FANOUT)
            .args(["sub", "--server", &addr, "news", "sport"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let printed = lines_of(subscriber.0.stdout.take().unwrap());

    // The subscriber needs a moment to subscribe: publish until it prints.
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        assert!(Instant::now() < deadline, "fanout sub never printed");
        fanout_pub(&addr, &["news", "warm-up"], None);
        if let Ok(line) = printed.recv_timeout(Duration::from_millis(200)) {
            break line;
        }
    };
    let warmups: u64 = first.split(' ').nth(1).unwrap().parse().unwrap();
    assert_eq!(first, format!("news {warmups} warm-up"));
    while printed.recv_timeout(Duration::from_millis(300)).is_ok() {}

    fanout_pub(&addr, &["sport"], Some("goal\nsecond line\n"));
    assert_eq!(printed.recv_timeout(Duration::from_secs(20)).unwrap(), "sport 1 goal");
    assert_eq!(printed.recv_timeout(Duration::from_secs(20)).unwrap(), "sport 2 second line");

    // SIGTERM: graceful shutdown, exit status 0; the subscriber sees the connection end.
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(server.0.id() as i32, libc::SIGTERM) }, 0);
    let status = server.0.wait().unwrap();
    assert!(status.success(), "server exit status {status:?}");
    // `fanout sub` keeps trying to reconnect (and would resume); it is still running.
    assert!(subscriber.0.try_wait().unwrap().is_none(), "fanout sub keeps reconnecting");
}

#[test]
fn a_worker_that_panics_takes_the_process_down_loudly() {
    let (mut server, log, addr) = serve(&["--debug-panic-on-publish-to", "boom"]);
    fanout_pub(&addr, &["fine", "hello"], None);
    // (`fanout pub` would keep reconnecting to a server that is gone: not waited for.)
    let _publisher = Reaper(
        Command::new(FANOUT)
            .args(["pub", "--server", &addr, "boom", "x"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the server kept running with a dead worker");
        thread::sleep(Duration::from_millis(20));
    };
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");
    let said: Vec<String> = log.try_iter().collect();
    assert!(
        said.iter().any(|l| l.contains("panicked") && l.contains("aborting the process")),
        "a clear last line: {said:?}"
    );
}

#[test]
fn a_public_address_without_access_control_is_refused_with_what_to_pass() {
    let output = Command::new(FANOUT)
        .args(["serve", "--listen", "0.0.0.0:0", "--workers", "1", "--no-pin"])
        .output()
        .unwrap();
    assert!(!output.status.success(), "refused");
    let stderr = String::from_utf8_lossy(&output.stderr);
    for words in ["refusing to serve 0.0.0.0:0", "--auth-secret-file", "--allow-anonymous"] {
        assert!(stderr.contains(words), "{stderr}");
    }
}

/// `fanout token` mints what `serve --auth-secret-file` verifies; `sub` and `pub` take it with
/// `--token-file` / `--token`; a token without the permission gets the server's 403, and `pub`
/// exits with it instead of retrying forever.
#[test]
fn minted_tokens_let_pub_and_sub_in() {
    let dir = std::env::temp_dir().join(format!("fanout-cli-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("secret");
    std::fs::write(&secret, "cli-test-secret\n").unwrap();
    let secret = secret.to_str().unwrap();
    let mint = |args: &[&str]| {
        let output = Command::new(FANOUT)
            .args(["token", "--secret-file", secret])
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    };
    let reader = mint(&["--sub", "reader", "--allow-sub", "room.*", "--ttl", "10m"]);
    let writer = mint(&["--sub", "writer", "--allow-pub", "room.*"]);
    let token_file = dir.join("reader.jwt");
    std::fs::write(&token_file, &reader).unwrap();
    let (_server, _log, addr) = serve(&["--auth-secret-file", secret]);

    let mut subscriber = Reaper(
        Command::new(FANOUT)
            .args([
                "sub",
                "--server",
                &addr,
                "--token-file",
                token_file.to_str().unwrap(),
                "room.1",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let printed = lines_of(subscriber.0.stdout.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "fanout sub never printed");
        fanout_pub(&addr, &["--token", &writer, "room.1", "hello"], None);
        if let Ok(line) = printed.recv_timeout(Duration::from_millis(200)) {
            assert!(line.starts_with("room.1 ") && line.ends_with(" hello"), "{line}");
            break;
        }
    }
    let refused = Command::new(FANOUT)
        .args(["pub", "--server", &addr, "--token", &reader, "room.1", "not allowed"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("403") && stderr.contains("not permitted to publish"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sub_with_presence_prints_who_is_there_then_joins_and_leaves() {
    let (_server, _log, addr) = serve(&["--join-leave", "room.>", "--join-leave-window-ms", "10"]);
    // Someone is there before: a client that named itself alice.
    let mut alice = std::net::TcpStream::connect(&addr).unwrap();
    alice.write_all(b"NAME alice\r\nSUB room.1\r\n").unwrap();
    let mut seen = String::new();
    let mut reader = BufReader::new(alice.try_clone().unwrap());
    // Shown by presence once its join has gone out: alice hears it.
    while !seen.contains("JOIN room.1 ") {
        reader.read_line(&mut seen).unwrap();
    }
    let mut watcher = Reaper(
        Command::new(FANOUT)
            .args(["sub", "--server", &addr, "--presence", "room.1"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let printed = lines_of(watcher.0.stdout.take().unwrap());
    let history = std::cell::RefCell::new(Vec::new());
    let next = || match printed.recv_timeout(Duration::from_secs(20)) {
        Ok(line) => {
            history.borrow_mut().push(line.clone());
            line
        }
        Err(e) => panic!("fanout sub printed nothing more ({e}) after {:?}", history.borrow()),
    };
    // Alice, and the watcher itself if its own join went out before it asked.
    let presence = next();
    let shown: usize = match presence.as_str() {
        "room.1 presence 1 clients, 1 users" => 1,
        "room.1 presence 2 clients, 2 users" => 2,
        other => panic!("{other}"),
    };
    let members: Vec<String> = (0..shown).map(|_| next()).collect();
    assert!(members.iter().any(|m| m.starts_with("room.1 member alice ")), "{members:?}");
    let mut bob = std::net::TcpStream::connect(&addr).unwrap();
    bob.write_all(b"NAME bob\r\nSUB room.1\r\nPUB room.1 hello\r\n").unwrap();
    // Joins (its own among them) come before bob's message.
    let mut before = Vec::new();
    loop {
        let line = next();
        if line == "room.1 1 hello" {
            break;
        }
        before.push(line);
    }
    assert!(
        before.iter().any(|l| l.starts_with("room.1 join bob ")),
        "bob's join first: {before:?}"
    );
    drop((alice, reader));
    // (The watcher's own join may still be on its way, from another worker.)
    let left = loop {
        let line = next();
        if !line.starts_with("room.1 join - ") {
            break line;
        }
    };
    assert!(left.starts_with("room.1 leave alice "), "{left}");
}

/// The start is quiet unless something asks for attention: the descriptor limit is said at info,
/// and only a `--max-connections` the operator gave, and the limit cannot hold, is warned about.
#[test]
fn start_warns_about_the_descriptor_limit_only_when_asked_for_more() {
    let start_log = |extra: &[&str]| -> Vec<String> {
        let mut child = Command::new(FANOUT)
            .args(["serve", "--listen", "127.0.0.1:0", "--no-pin", "--stats-interval-secs", "0"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("fanout serve starts");
        let lines = lines_of(child.stderr.take().expect("piped"));
        let _reaper = Reaper(child);
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            let listening = line.contains("listening on");
            seen.push(line);
            if listening {
                break;
            }
        }
        assert!(seen.iter().any(|l| l.contains("listening on")), "{seen:?}");
        seen
    };
    let quiet = start_log(&[]);
    assert!(quiet.iter().all(|l| !l.contains("WARN")), "a default start warned: {quiet:?}");
    assert!(quiet.iter().any(|l| l.contains("RLIMIT_NOFILE")), "{quiet:?}");
    let asked = start_log(&["--max-connections", "100000000"]);
    assert!(
        asked.iter().any(|l| l.contains("WARN") && l.contains("--max-connections 100000000")),
        "{asked:?}"
    );
}
