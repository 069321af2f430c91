//! `fanout serve --config FILE`: every kind of key, the command line over the file, unknown keys
//! and bad values refused with their line, `--print-config` read back; SIGHUP re-reading the file
//! and the key files (an HMAC secret and a public key rotated while connections stay, a broken
//! file keeping the running configuration, a key that takes a restart said so, the log level).

mod common;

use std::process::Command;

use common::{ChildServer, Conn, Frame, TempDir};
use fanout::auth::unix_now_secs;
use fanout::protocol::Request;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

const FANOUT: &str = env!("CARGO_BIN_EXE_fanout");

fn write(dir: &TempDir, name: &str, text: &str) -> String {
    let path = format!("{}/{name}", dir.path());
    std::fs::write(&path, text).expect("writes");
    path
}

/// `fanout serve ARGS` that should exit at once: its status and stdout + stderr.
fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(FANOUT).arg("serve").args(args).output().expect("runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// The value of `key = ...` in `--print-config`'s output.
fn printed(config: &str, key: &str) -> String {
    let prefix = format!("{key} = ");
    config
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("{key} not in\n{config}"))
        .to_string()
}

fn hs256(secret: &[u8], sub: &str, ttl_secs: u64) -> String {
    let claims = json!({ "sub": sub, "exp": unix_now_secs() + ttl_secs, "subscribe": [">"], "publish": [">"] });
    let key = EncodingKey::from_secret(secret).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
}

fn es256(pem: &[u8], sub: &str) -> String {
    let claims = json!({ "sub": sub, "exp": unix_now_secs() + 3600, "subscribe": [">"] });
    let key = EncodingKey::from_ec_pem(pem).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &key).unwrap()
}

fn key_file(name: &str) -> String {
    format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// AUTH on a new text connection: the answer.
fn authenticate(server: &ChildServer, token: &str) -> (Conn, Frame) {
    let mut conn = Conn::text(server.addr);
    conn.send(Request::Auth { token: token.as_bytes() });
    let answer = conn.next();
    (conn, answer)
}

/// The payload of the next message `conn` receives.
fn next_message(conn: &mut Conn) -> Vec<u8> {
    loop {
        if let Frame::Msg { payload, .. } = conn.next() {
            return payload;
        }
    }
}

fn is_refused(frame: &Frame, code: u16) -> bool {
    matches!(frame, Frame::Err { code: got, .. } if *got == code)
}

#[test]
fn every_kind_of_key_is_read_and_the_command_line_wins() {
    let dir = TempDir::new("config-kinds");
    let file = write(
        &dir,
        "fanout.toml",
        r#"
# Strings, numbers, switches, lists, an optional number, and a filter.
listen = "127.0.0.1:0"
workers = 1
no-pin = true
max-frame-bytes = 300
ping-interval-secs = 7
anonymous-sub = ["news", "chat.>"]
allowed-origins = ["https://a.example", "https://b.example"]
history-messages = 50
fsync = "never"
log-level = "warn,fanout=info"

[[namespace]]
pattern = "feed.>"
client-publish = false
history-messages = 2
"#,
    );
    let (ok, config) = run(&["--config", &file, "--print-config", "--history-messages", "9"]);
    assert!(ok, "{config}");
    assert_eq!(printed(&config, "listen"), "\"127.0.0.1:0\"");
    assert_eq!(printed(&config, "workers"), "1");
    assert_eq!(printed(&config, "no-pin"), "true");
    assert_eq!(printed(&config, "max-frame-bytes"), "300");
    assert_eq!(printed(&config, "ping-interval-secs"), "7");
    assert_eq!(printed(&config, "anonymous-sub"), r#"["news", "chat.>"]"#);
    assert_eq!(
        printed(&config, "allowed-origins"),
        r#"["https://a.example", "https://b.example"]"#
    );
    assert_eq!(printed(&config, "fsync"), "\"never\"");
    assert_eq!(printed(&config, "log-level"), "\"warn,fanout=info\"");
    assert_eq!(printed(&config, "history-messages"), "9", "the command line wins");
    let table =
        "[[namespace]]\npattern = \"feed.>\"\nhistory-messages = 2\nclient-publish = false\n";
    assert!(config.contains(table), "{config}");
    // Defaults are printed too; a repeatable flag on the command line replaces the file's list.
    assert_eq!(printed(&config, "max-channels"), "1000000");
    let (ok, config) = run(&["--config", &file, "--print-config", "--anonymous-sub", "other"]);
    assert!(ok, "{config}");
    assert_eq!(printed(&config, "anonymous-sub"), r#"["other"]"#);

    // What --print-config prints is a config file that reads back to itself.
    let again = write(&dir, "printed.toml", &config);
    let (ok, reread) = run(&["--config", &again, "--print-config"]);
    assert!(ok, "{reread}");
    let body = |text: &str| text.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(body(&reread), body(&config));

    // And the server runs on it: the file's frame limit holds, the command line's replaces it.
    let server = ChildServer::start(&["--config", &file]);
    let mut conn = Conn::text(server.addr);
    conn.send_raw(format!("PUB news {}\n", "x".repeat(400)).as_bytes());
    let reason = conn.expect_error_and_close(413);
    assert!(reason.contains("300"), "the file's limit: {reason}");
    drop(server);
    let server = ChildServer::start(&["--config", &file, "--max-frame-bytes", "1000"]);
    let mut conn = Conn::text(server.addr);
    conn.send_raw(format!("PUB news {}\n", "x".repeat(400)).as_bytes());
    conn.barrier();
    // The file's namespace is in force (it decides for clients without a token, which
    // `anonymous-sub` lets in: the flags' patterns do not let them publish there).
    conn.publish("feed.prices", b"from a client");
    let refused = conn.barrier().into_iter().any(|f| {
        matches!(f, Frame::Err { code: 401, reason } if reason.contains("feed.prices is not open"))
    });
    assert!(refused, "feed.prices is in a namespace");
}

#[test]
fn unknown_keys_and_bad_values_are_refused_with_where_they_are() {
    let dir = TempDir::new("config-bad");
    for (text, expected) in [
        ("workers = 2\nlisen = \"127.0.0.1:1\"\n", "line 2: unknown key `lisen`"),
        ("workers = \"two\"\n", "invalid value 'two' for '--workers"),
        ("no-pin = 3\n", "line 1: `no-pin` is true or false"),
        ("listen = [\"a\", \"b\"]\n", "`listen` takes one value, not a list"),
        ("config = \"other.toml\"\n", "unknown key `config`"),
        ("workers = \n", "TOML parse error at line 1"),
        ("[[namespace]]\nhistory-messages = 3\n", "namespace 1: `pattern` is required"),
        ("[[namespace]]\npattern = \"a.>.b\"\n", "must be the last token"),
        ("[[namespace]]\npattern = \"a\"\nhistory = 3\n", "namespace 1: `history`: unknown key"),
        ("log-level = \"loud\"\n", "`loud` is not a level"),
        ("workers = 1\n[other]\nx = 1\n", "line 2: unknown key `other`"),
        (
            "[[namespace]]\npattern = \"a\"\n[[namespace]]\npattern = \"b\"\nbogus = 1\n",
            "line 5: namespace 2: `bogus`: unknown key",
        ),
        ("[[namespace]]\npattern = \"a\"\n[[namespace]]\npattern = \"a\"\n", "given twice"),
        ("anonymous-sub = [\"a b\"]\n", "not a channel pattern"),
        ("[[namespace]]\npattern = \"*\"\n", "ambiguous"),
        ("[[namespace]]\npattern = \"a.>\"\nanonymous-sub = false\n", "access control is off"),
    ] {
        let file = write(&dir, "bad.toml", text);
        let (ok, output) = run(&["--config", &file]);
        assert!(!ok, "{text:?} was taken");
        assert!(output.contains(expected), "{text:?}: expected {expected:?} in {output}");
        assert!(output.contains("bad.toml"), "the file is named: {output}");
    }
    // A Redis URL's password is never echoed, from the file or the command line.
    let file = write(&dir, "redis.toml", "redis = [\"redis://u:topsecret@127.0.0.1:1/x\"]\n");
    for args in
        [&["--config", file.as_str()][..], &["--redis", "redis://u:topsecret@127.0.0.1:1/x"]]
    {
        let (ok, output) = run(args);
        assert!(!ok && output.contains("u:***@127.0.0.1"), "{output}");
        assert!(!output.contains("topsecret"), "{output}");
    }
    let (ok, output) = run(&["--config", "/nonexistent/fanout.toml"]);
    assert!(!ok && output.contains("/nonexistent/fanout.toml"), "{output}");
}

#[test]
fn sighup_rotates_the_hmac_secret_and_keeps_connections_until_their_token_expires() {
    let dir = TempDir::new("config-rotate-hmac");
    let secret = write(&dir, "secret", "the first secret, long enough\n");
    let file = write(
        &dir,
        "fanout.toml",
        &format!("auth-secret-file = {secret:?}\nauth-expiry-grace-secs = 0\nworkers = 2\n"),
    );
    let server = ChildServer::start(&["--config", &file]);
    let old = b"the first secret, long enough";
    let new = b"the second secret, longer still";
    // A subscriber whose token (old secret) lasts 3 s more, another whose lasts an hour.
    let (mut short, answer) = authenticate(&server, &hs256(old, "short", 3));
    assert!(matches!(answer, Frame::Ok { .. }), "{answer:?}");
    short.subscribe("news");
    let (mut long, answer) = authenticate(&server, &hs256(old, "long", 3600));
    assert!(matches!(answer, Frame::Ok { .. }), "{answer:?}");
    long.subscribe("news");

    std::fs::write(&secret, "the second secret, longer still\n").unwrap();
    server.signal(libc::SIGHUP);
    let line = server.wait_for_log("SIGHUP: configuration reloaded");
    assert!(line.contains("auth-secret-file"), "the rotated file is named: {line}");

    let (_, answer) = authenticate(&server, &hs256(old, "late", 3600));
    assert!(is_refused(&answer, 401), "a token of the old secret is refused now: {answer:?}");
    let (mut publisher, answer) = authenticate(&server, &hs256(new, "publisher", 3600));
    assert!(matches!(answer, Frame::Ok { .. }), "the new secret's token is taken: {answer:?}");
    publisher.publish("news", b"after the rotation");
    for conn in [&mut short, &mut long] {
        assert_eq!(next_message(conn), b"after the rotation");
    }
    // The short token expires (no grace): that connection goes, the other stays.
    let reason = short.expect_error_and_close(401);
    assert!(reason.contains("expired"), "{reason}");
    long.barrier();
}

#[test]
fn sighup_rotates_a_public_key() {
    let dir = TempDir::new("config-rotate-key");
    let public = format!("{}/key.pub.pem", dir.path());
    std::fs::copy(key_file("ec.pub.pem"), &public).unwrap();
    let server = ChildServer::start(&["--auth-public-key-file", &public]);
    let old_private = std::fs::read(key_file("ec.pem")).unwrap();
    let (mut kept, answer) = authenticate(&server, &es256(&old_private, "kept"));
    assert!(matches!(answer, Frame::Ok { .. }), "{answer:?}");
    kept.subscribe("news");

    // A fresh P-256 key pair, made the way an operator would.
    let new_private = format!("{}/new.pem", dir.path());
    let openssl = |args: &[&str]| {
        assert!(Command::new("openssl").args(args).status().unwrap().success(), "openssl {args:?}")
    };
    let curve = "ec_paramgen_curve:P-256";
    openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", curve, "-out", &new_private]);
    openssl(&["pkey", "-in", &new_private, "-pubout", "-out", &public]);
    server.signal(libc::SIGHUP);
    server.wait_for_log("SIGHUP: configuration reloaded");

    let (_, answer) = authenticate(&server, &es256(&old_private, "late"));
    assert!(is_refused(&answer, 401), "the old key's token is refused: {answer:?}");
    let new_private = std::fs::read(&new_private).unwrap();
    let (_, answer) = authenticate(&server, &es256(&new_private, "fresh"));
    assert!(matches!(answer, Frame::Ok { .. }), "the new key's token is taken: {answer:?}");
    kept.barrier();
}

#[test]
fn a_broken_reload_keeps_the_running_configuration_and_says_why() {
    let dir = TempDir::new("config-broken");
    let secret = write(&dir, "secret", "a secret that stays in force\n");
    let body = format!("auth-secret-file = {secret:?}\nworkers = 2\n");
    let file = write(&dir, "fanout.toml", &body);
    let server = ChildServer::start(&["--config", &file]);
    let token = hs256(b"a secret that stays in force", "someone", 3600);

    // Not TOML; then a key file that is gone; then a value out of place.
    for (broken, why) in [
        ("workers = [\n", "not reloaded"),
        ("auth-secret-file = \"/nonexistent/secret\"\n", "/nonexistent/secret"),
        ("workers = \"many\"\n", "'many'"),
    ] {
        std::fs::write(&file, broken).unwrap();
        server.signal(libc::SIGHUP);
        let line = server.wait_for_log("SIGHUP: configuration not reloaded");
        assert!(line.contains(why), "{line}");
        let (_, answer) = authenticate(&server, &token);
        assert!(matches!(answer, Frame::Ok { .. }), "the running secret still holds: {answer:?}");
    }

    // Repaired, with a key that takes a restart and a log level that does not.
    std::fs::write(
        &file,
        format!("{body}\nworkers = 1\nlog-level = \"debug\"\n").replace("workers = 2\n", ""),
    )
    .unwrap();
    server.signal(libc::SIGHUP);
    let line = server.wait_for_log("changed, which takes a restart");
    assert!(line.contains("`workers`"), "{line}");
    let line = server.wait_for_log("SIGHUP: configuration reloaded");
    assert!(line.contains("log-level"), "{line}");
    // Debug lines now appear: a refused token is logged at debug.
    let (_, answer) = authenticate(&server, "not a token");
    assert!(is_refused(&answer, 401), "{answer:?}");
    server.wait_for_log("DEBUG");
}

#[test]
fn sighup_applies_new_origins_and_limits() {
    let dir = TempDir::new("config-origins");
    let key = write(&dir, "api-key", "the-api-key\n");
    let before = format!(
        "api-key-file = {key:?}\nanonymous-pub = [\"news\"]\nallowed-origins = [\"https://a.example\"]\nmax-publishes-per-sec = 1000\n"
    );
    let file = write(&dir, "fanout.toml", &before);
    let server = ChildServer::start(&["--config", &file]);
    let publish_from = |origin: &str| {
        let headers = format!("Origin: {origin}\r\n");
        common::http_with(server.addr, "POST", "/publish?channel=news", &headers, b"x").status
    };
    assert_eq!(publish_from("https://a.example"), 200);
    assert_eq!(publish_from("https://b.example"), 403);
    // A connection that publishes quickly: within the limit before, past it after.
    let mut fast = Conn::text(server.addr);
    let burst = |conn: &mut Conn| {
        for _ in 0..20 {
            conn.publish("news", b"quick");
        }
        conn.barrier().into_iter().filter(|f| matches!(f, Frame::Err { code: 429, .. })).count()
    };
    assert_eq!(burst(&mut fast), 0);

    std::fs::write(&file, before.replace("a.example", "b.example").replace("1000", "5")).unwrap();
    server.signal(libc::SIGHUP);
    let line = server.wait_for_log("SIGHUP: configuration reloaded");
    assert!(line.contains("allowed-origins") && line.contains("max-publishes-per-sec"), "{line}");
    assert_eq!(publish_from("https://b.example"), 200);
    assert_eq!(publish_from("https://a.example"), 403);
    assert!(burst(&mut fast) > 0, "the new rate limit holds for a connection already open");
}

#[test]
fn sighup_with_a_new_api_key_closes_the_connections_of_the_old_one() {
    let dir = TempDir::new("config-api-key");
    let key = write(&dir, "api-key", "the-old-api-key\n");
    let server = ChildServer::start(&["--api-key-file", &key]);
    let (mut backend, answer) = authenticate(&server, "the-old-api-key");
    assert!(matches!(answer, Frame::Ok { .. }), "{answer:?}");
    // A token's connection stays until its exp; a key has none: a rotated key's holders go.
    std::fs::write(&key, "the-new-api-key\n").unwrap();
    server.signal(libc::SIGHUP);
    server.wait_for_log("SIGHUP: configuration reloaded");
    let reason = backend.expect_error_and_close(401);
    assert!(reason.contains("API key was rotated"), "{reason}");
    let (_, answer) = authenticate(&server, "the-old-api-key");
    assert!(is_refused(&answer, 401), "{answer:?}");
    let (_, answer) = authenticate(&server, "the-new-api-key");
    assert!(matches!(answer, Frame::Ok { .. }), "{answer:?}");
}
