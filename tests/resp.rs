//! Redis clients speak to fanout: RESP2 and RESP3 on the same port (sniffed from `*`), with
//! Redis's reply shapes, errors and order, through a raw client here and through `redis-cli`
//! and Python's `redis` (real clients no one here wrote).

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::resp_client::Redis;
use common::{start, wait_until, Conn, Frame, PATIENCE};
use fanout::protocol::resp::Value;

fn bulk(text: &str) -> Value {
    Value::Bulk(Some(text.as_bytes().to_vec()))
}

fn int(n: i64) -> Value {
    Value::Integer(n)
}

fn array(items: Vec<Value>) -> Value {
    Value::Array(Some(items))
}

fn message(channel: &str, payload: &str) -> Value {
    array(vec![bulk("message"), bulk(channel), bulk(payload)])
}

fn confirmation(kind: &str, channel: &str, count: i64) -> Value {
    array(vec![bulk(kind), bulk(channel), int(count)])
}

#[test]
fn subscribe_publish_and_the_replies_redis_gives() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut sub = Redis::connect(addr);
    assert_eq!(sub.call(&["PING"]), Value::Simple("PONG".into()));
    assert_eq!(sub.call(&["ECHO", "hi"]), bulk("hi"));
    assert_eq!(sub.call(&["SELECT", "0"]), Value::Simple("OK".into()));
    assert_eq!(sub.call(&["SELECT", "1"]), Value::Error("ERR DB index is out of range".into()));
    assert_eq!(sub.call(&["CLIENT", "SETNAME", "watcher"]), Value::Simple("OK".into()));
    assert_eq!(sub.call(&["CLIENT", "GETNAME"]), bulk("watcher"));
    assert!(matches!(sub.call(&["CLIENT", "ID"]), Value::Integer(_)));
    assert_eq!(sub.call(&["COMMAND", "DOCS"]), array(vec![]));
    assert_eq!(
        sub.call(&["GET", "k"]),
        Value::Error("ERR unknown command 'GET', with args beginning with: 'k' ".into())
    );
    assert_eq!(
        sub.call(&["PUBLISH", "only-one-arg"]),
        Value::Error("ERR wrong number of arguments for 'publish' command".into())
    );
    // One SUBSCRIBE, two confirmations counting up.
    sub.send(&["SUBSCRIBE", "news", "sport"]);
    assert_eq!(sub.next(), Some(confirmation("subscribe", "news", 1)));
    assert_eq!(sub.next(), Some(confirmation("subscribe", "sport", 2)));
    // Subscribed: only the pub/sub commands, PING as an array.
    assert_eq!(sub.call(&["PING"]), array(vec![bulk("pong"), bulk("")]));
    assert_eq!(
        sub.call(&["ECHO", "x"]),
        Value::Error("ERR Can't execute 'echo': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context".into())
    );
    // PUBLISH answers with the receivers; every other protocol's messages arrive too.
    let mut publisher = Redis::connect(addr);
    assert_eq!(publisher.call(&["PUBLISH", "news", "first"]), int(1));
    assert_eq!(publisher.call(&["PUBLISH", "nobody", "x"]), int(0));
    let mut text = Conn::text(addr);
    text.publish("sport", b"from-text");
    assert_eq!(sub.next(), Some(message("news", "first")));
    assert_eq!(sub.next(), Some(message("sport", "from-text")));
    // And the other way: a Redis PUBLISH reaches a text subscriber with its offset.
    let mut listener = Conn::text(addr);
    listener.subscribe("news");
    assert_eq!(publisher.call(&["PUBLISH", "news", "second"]), int(2));
    assert_eq!(
        listener.next(),
        Frame::Msg { channel: "news".into(), offset: 2, payload: b"second".to_vec() }
    );
    assert_eq!(sub.next(), Some(message("news", "second")));
    // Broadcasts are not for Redis clients (they get what they subscribed to, as from Redis).
    text.publish("*", b"everyone");
    assert_eq!(
        listener.next(),
        Frame::Msg { channel: "*".into(), offset: 1, payload: b"everyone".to_vec() }
    );
    assert!(sub.nothing_within(Duration::from_millis(200)), "no broadcast on RESP");
    // UNSUBSCRIBE of one, then of all, then of nothing.
    sub.send(&["UNSUBSCRIBE", "news"]);
    assert_eq!(sub.next(), Some(confirmation("unsubscribe", "news", 1)));
    sub.send(&["UNSUBSCRIBE"]);
    assert_eq!(sub.next(), Some(confirmation("unsubscribe", "sport", 0)));
    sub.send(&["UNSUBSCRIBE"]);
    assert_eq!(sub.next(), Some(array(vec![bulk("unsubscribe"), Value::Bulk(None), int(0)])));
    assert_eq!(sub.call(&["PING", "back"]), bulk("back"));
    assert_eq!(sub.call(&["QUIT"]), Value::Simple("OK".into()));
    assert_eq!(sub.next(), None, "closed after QUIT");
    wait_until("the RESP connections are counted", || server.stats().connections_resp2 >= 1);
}

#[test]
fn resp3_pushes_hello_and_reset() {
    let server = start(|_| {});
    let mut client = Redis::connect(server.local_addr());
    let hello = client.call(&["HELLO", "3", "SETNAME", "r3"]);
    let Value::Map(fields) = hello else { panic!("HELLO 3 answers a map: {hello:?}") };
    assert!(fields.contains(&(bulk("proto"), int(3))));
    assert!(fields.contains(&(bulk("server"), bulk("redis"))));
    assert_eq!(client.call(&["CLIENT", "GETNAME"]), bulk("r3"));
    assert_eq!(
        client.call(&["HELLO", "4"]),
        Value::Error("NOPROTO unsupported protocol version".into())
    );
    client.send(&["SUBSCRIBE", "c"]);
    assert_eq!(client.next(), Some(Value::Push(vec![bulk("subscribe"), bulk("c"), int(1)])));
    // RESP3 connections may send any command while subscribed.
    assert_eq!(client.call(&["ECHO", "still"]), bulk("still"));
    assert_eq!(client.call(&["PING"]), Value::Simple("PONG".into()));
    let mut publisher = Redis::connect(server.local_addr());
    assert_eq!(publisher.call(&["PUBLISH", "c", "pushed"]), int(1));
    assert_eq!(client.next(), Some(Value::Push(vec![bulk("message"), bulk("c"), bulk("pushed")])));
    assert_eq!(client.call(&["RESET"]), Value::Simple("RESET".into()));
    assert_eq!(publisher.call(&["PUBLISH", "c", "gone"]), int(0));
    assert_eq!(client.call(&["CLIENT", "GETNAME"]), Value::Bulk(None), "RESP2 again, no name");
}

#[test]
fn protocol_errors_close_only_that_connection() {
    let server = start(|c| c.max_frame_bytes = 1024);
    let addr = server.local_addr();
    let mut bystander = Redis::connect(addr);
    bystander.send(&["SUBSCRIBE", "calm"]);
    assert_eq!(bystander.next(), Some(confirmation("subscribe", "calm", 1)));
    let long_inline = vec![b'P'; 70 * 1024];
    for (bad, why) in [
        (&b"*1\r\n$x\r\n"[..], "ERR Protocol error: invalid bulk length"),
        (b"*1\r\n:5\r\n", "ERR Protocol error: expected '$', got ':'"),
        (b"*1\r\n$4\r\nPING\r\n\"unclosed\r\n", "ERR Protocol error: unbalanced quotes in request"),
        (&long_inline, "ERR Protocol error: too big inline request"),
        (b"*99999999\r\n", "ERR Protocol error: invalid multibulk length"),
        (b"*1\r\n$5000\r\n", "ERR Protocol error: invalid bulk length"),
    ] {
        let mut client = Redis::connect(addr);
        // (after a first command that is fine, for the inline cases: the connection is RESP)
        if !bad.starts_with(b"*") {
            client.send(&["PING"]);
            assert_eq!(client.next(), Some(Value::Simple("PONG".into())));
        }
        client.stream.write_all(bad).expect("send");
        if bad.starts_with(b"*1\r\n$4\r\nPING") {
            assert_eq!(client.next(), Some(Value::Simple("PONG".into())));
        }
        assert_eq!(client.next(), Some(Value::Error(why.into())), "{why}");
        assert_eq!(client.next(), None, "closed after {why}");
    }
    let mut publisher = Redis::connect(addr);
    assert_eq!(publisher.call(&["PUBLISH", "calm", "still here"]), int(1));
    assert_eq!(bystander.next(), Some(message("calm", "still here")));
}

#[test]
fn with_access_control_a_token_is_the_password() {
    const SECRET: &[u8] = b"a resp test secret, long enough";
    let server = start(|c| {
        c.auth.hmac_secret = Some(SECRET.to_vec());
        c.limits.auth_failures = Some(0);
    });
    let expires = fanout::auth::unix_now_secs() + 60;
    let token = |channel: &str| {
        let allowed = vec![channel.to_string()];
        fanout::auth::mint_hs256(SECRET, Some("ann"), &allowed, &allowed, expires).expect("a token")
    };
    let mut client = Redis::connect(server.local_addr());
    assert_eq!(client.call(&["PING"]), Value::Simple("PONG".into()), "PING before AUTH");
    assert_eq!(
        client.call(&["SUBSCRIBE", "room"]),
        Value::Error("NOAUTH Authentication required.".into())
    );
    assert!(
        matches!(client.call(&["AUTH", "not-a-token"]), Value::Error(e) if e.starts_with("WRONGPASS"))
    );
    assert_eq!(client.call(&["AUTH", "default", &token("room")]), Value::Simple("OK".into()));
    client.send(&["SUBSCRIBE", "room"]);
    assert_eq!(client.next(), Some(confirmation("subscribe", "room", 1)));
    client.send(&["SUBSCRIBE", "elsewhere"]);
    assert!(matches!(client.next(), Some(Value::Error(e)) if e.starts_with("NOPERM")));
    // HELLO with AUTH answers with the server's map alone.
    let mut hello = Redis::connect(server.local_addr());
    let reply = hello.call(&["HELLO", "3", "AUTH", "default", &token("room")]);
    assert!(matches!(reply, Value::Map(_)), "{reply:?}");
    assert_eq!(hello.call(&["PUBLISH", "room", "hi"]), int(1));
    assert_eq!(client.next(), Some(message("room", "hi")));
}

fn redis_cli(addr: SocketAddr, args: &[&str]) -> std::process::Output {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs (apt-get install redis-tools; .ci/run installs it)")
}

#[test]
fn redis_cli_subscribes_and_publishes() {
    let server = start(|_| {});
    let addr = server.local_addr();
    for resp3 in [false, true] {
        let channel = if resp3 { "cli3" } else { "cli2" };
        let mut args =
            vec!["-h".to_string(), "127.0.0.1".into(), "-p".into(), addr.port().to_string()];
        if resp3 {
            args.push("-3".into());
        }
        args.extend(["SUBSCRIBE".into(), channel.into()]);
        let mut subscriber = Command::new("redis-cli")
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("redis-cli runs");
        wait_until("redis-cli is subscribed", || {
            let mut probe = Redis::connect(addr);
            probe.call(&["PUBLISH", channel, "probe"]) == int(1)
        });
        let published = redis_cli(addr, &["PUBLISH", channel, "hello from redis-cli"]);
        assert_eq!(String::from_utf8_lossy(&published.stdout).trim(), "1");
        std::thread::sleep(Duration::from_millis(200));
        subscriber.kill().expect("kill");
        let output = subscriber.wait_with_output().expect("output");
        let printed = String::from_utf8_lossy(&output.stdout);
        assert!(printed.contains("hello from redis-cli"), "resp3={resp3}: {printed}");
        assert!(printed.contains(channel), "{printed}");
    }
    // PSUBSCRIBE through redis-cli.
    let mut psubscriber = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &addr.port().to_string(), "PSUBSCRIBE", "cli.*"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("redis-cli runs");
    wait_until("redis-cli is pattern-subscribed", || {
        let mut probe = Redis::connect(addr);
        probe.call(&["PUBSUB", "NUMPAT"]) == int(1)
    });
    redis_cli(addr, &["PUBLISH", "cli.glob", "matched by a glob"]);
    std::thread::sleep(Duration::from_millis(200));
    psubscriber.kill().expect("kill");
    let output = psubscriber.wait_with_output().expect("output");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("pmessage") && printed.contains("matched by a glob"), "{printed}");
    let pong = redis_cli(addr, &["PING"]);
    assert_eq!(String::from_utf8_lossy(&pong.stdout).trim(), "PONG");
}

#[test]
fn python_redis_pubsub_works_unchanged() {
    let server = start(|_| {});
    let port = server.local_addr().port();
    let script = format!(
        r#"
import redis
# RESP3 came to redis-py in 5.0; Debian's may be older.
protocols = (2, 3) if int(redis.__version__.split(".")[0]) >= 5 else (2,)
for protocol in protocols:
    r = redis.Redis(host="127.0.0.1", port={port}, protocol=protocol) if protocol == 3 else redis.Redis(host="127.0.0.1", port={port})
    p = r.pubsub()
    p.subscribe("py")
    first = p.get_message(timeout=5)
    assert first["type"] == "subscribe" and first["channel"] == b"py", first
    assert r.publish("py", "one") == 1
    assert r.publish("py", "two") == 1
    got = []
    for message in p.listen():
        if message["type"] == "message":
            got.append(message["data"])
        if len(got) == 2:
            break
    assert got == [b"one", b"two"], got
    p.unsubscribe("py")
    q = r.pubsub()
    q.psubscribe("py.*")
    first = q.get_message(timeout=5)
    assert first["type"] == "psubscribe" and first["channel"] == b"py.*", first
    assert r.publish("py.x", "three") == 1  # the pattern subscriber counts, as in Redis
    for message in q.listen():
        if message["type"] == "pmessage":
            assert (message["pattern"], message["channel"], message["data"]) == (b"py.*", b"py.x", b"three"), message
            break
    q.close()
    p.close()
    print("protocol", protocol, "ok")
print("python redis passed")
"#
    );
    // Debian's python3 (python3-redis is a Debian package; .ci/run installs it).
    let output =
        Command::new("/usr/bin/python3").args(["-c", &script]).output().expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("python redis passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn redis_publishes_reach_websocket_and_event_streams_and_back() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut ws = Conn::websocket(addr);
    ws.subscribe("mixed");
    let mut stream = common::EventStream::open(addr, "/sse?channel=mixed", "");
    wait_until("the stream is subscribed", || server.stats().connections_sse == 1);
    let mut redis_sub = Redis::connect(addr);
    redis_sub.send(&["SUBSCRIBE", "mixed"]);
    assert_eq!(redis_sub.next(), Some(confirmation("subscribe", "mixed", 1)));
    let mut publisher = Redis::connect(addr);
    // The WebSocket, the event stream and the Redis client: three receivers.
    assert_eq!(publisher.call(&["PUBLISH", "mixed", "from redis"]), int(3));
    assert_eq!(
        ws.next(),
        Frame::Msg { channel: "mixed".into(), offset: 1, payload: b"from redis".to_vec() }
    );
    let event = stream.next_message();
    assert_eq!(event.data, "from redis");
    assert_eq!(redis_sub.next(), Some(message("mixed", "from redis")));
    // And a WebSocket's publish reaches the Redis client.
    ws.publish("mixed", b"from a browser");
    assert_eq!(redis_sub.next(), Some(message("mixed", "from a browser")));
    assert_eq!(stream.next_message().data, "from a browser");
}

#[test]
fn pubsub_introspection_answers_for_this_node() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut a = Redis::connect(addr);
    a.send(&["SUBSCRIBE", "news.art", "news.sport", "weather"]);
    for _ in 0..3 {
        a.next().expect("a confirmation");
    }
    let mut b = Conn::text(addr);
    b.subscribe("news.art");
    let mut named = Conn::text(addr);
    named.send(fanout::protocol::Request::Name { name: b"secret-person" });
    named.barrier();
    let mut ask = Redis::connect(addr);
    let sorted = |value: Value| match value {
        Value::Array(Some(mut items)) => {
            items.sort_by_key(|v| match v {
                Value::Bulk(Some(bytes)) => bytes.clone(),
                _ => Vec::new(),
            });
            items
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(
        sorted(ask.call(&["PUBSUB", "CHANNELS"])),
        vec![bulk("news.art"), bulk("news.sport"), bulk("weather")],
        "inboxes are not listed"
    );
    assert_eq!(
        sorted(ask.call(&["PUBSUB", "CHANNELS", "news.*"])),
        vec![bulk("news.art"), bulk("news.sport")]
    );
    assert_eq!(
        ask.call(&["PUBSUB", "NUMSUB", "news.art", "weather", "none"]),
        array(vec![bulk("news.art"), int(2), bulk("weather"), int(1), bulk("none"), int(0)])
    );
    assert_eq!(ask.call(&["PUBSUB", "NUMPAT"]), int(0));
    // Sharded channels are the same channels.
    assert_eq!(
        sorted(ask.call(&["PUBSUB", "SHARDCHANNELS", "news.*"])),
        vec![bulk("news.art"), bulk("news.sport")]
    );
    assert!(matches!(ask.call(&["PUBSUB", "NOPE"]), Value::Error(e) if e.contains("PUBSUB HELP")));
}

/// ioredis from npm (installed once under the target directory; `.ci/run` provides Node).
fn ioredis() -> std::path::PathBuf {
    let prefix = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("node-redis-deps");
    let module = prefix.join("node_modules/ioredis");
    if !module.join("package.json").exists() {
        let installed = (0..3).any(|_| {
            Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
                .arg(&prefix)
                .arg("ioredis@5.8.2")
                .status()
                .expect("npm runs (install Node.js and npm)")
                .success()
        });
        assert!(installed, "npm install ioredis failed");
    }
    module
}

#[test]
fn ioredis_from_npm_subscribes_and_publishes() {
    let server = start(|_| {});
    let module = ioredis();
    let script = format!(
        r#"
const Redis = require({module:?});
const port = {port};
(async () => {{
  const sub = new Redis({{ port, host: "127.0.0.1" }});
  const pub = new Redis({{ port, host: "127.0.0.1" }});
  const got = [];
  sub.on("message", (channel, message) => got.push(channel + ":" + message));
  const count = await sub.subscribe("node.a", "node.b");
  if (count !== 2) throw new Error("subscribe count " + count);
  if ((await pub.publish("node.a", "one")) !== 1) throw new Error("receivers");
  await pub.publish("node.b", "two");
  await pub.publish("node.a", "three");
  for (let i = 0; i < 100 && got.length < 3; i++) await new Promise((r) => setTimeout(r, 20));
  if (JSON.stringify(got) !== JSON.stringify(["node.a:one", "node.b:two", "node.a:three"])) {{
    throw new Error("got " + JSON.stringify(got));
  }}
  const patterned = [];
  const psub = new Redis({{ port, host: "127.0.0.1" }});
  psub.on("pmessage", (pattern, channel, message) => patterned.push([pattern, channel, message].join(":")));
  await psub.psubscribe("node.*");
  await pub.publish("node.z", "four");
  for (let i = 0; i < 100 && patterned.length < 1; i++) await new Promise((r) => setTimeout(r, 20));
  if (JSON.stringify(patterned) !== JSON.stringify(["node.*:node.z:four"])) {{
    throw new Error("patterned " + JSON.stringify(patterned));
  }}
  psub.disconnect();
  await sub.unsubscribe("node.a");
  if ((await pub.publish("node.a", "gone")) !== 0) throw new Error("still subscribed");
  sub.disconnect();
  pub.disconnect();
  console.log("ioredis passed");
}})().catch((e) => {{ console.error(e); process.exit(1); }});
"#,
        module = module.to_string_lossy(),
        port = server.local_addr().port()
    );
    let output = Command::new("node").args(["-e", &script]).output().expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("ioredis passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn pmessage(pattern: &str, channel: &str, payload: &str) -> Value {
    array(vec![bulk("pmessage"), bulk(pattern), bulk(channel), bulk(payload)])
}

#[test]
fn psubscribe_takes_redis_globs() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut client = Redis::connect(addr);
    client.send(&["PSUBSCRIBE", "news.*", "h?llo", "[ab]x"]);
    assert_eq!(client.next(), Some(confirmation("psubscribe", "news.*", 1)));
    assert_eq!(client.next(), Some(confirmation("psubscribe", "h?llo", 2)));
    assert_eq!(client.next(), Some(confirmation("psubscribe", "[ab]x", 3)));
    client.send(&["SUBSCRIBE", "news.art"]);
    assert_eq!(client.next(), Some(confirmation("subscribe", "news.art", 4)));
    let mut text = Conn::text(addr);
    for channel in ["news.art", "news.a.b", "hello", "hllo", "bx", "cx"] {
        text.publish(channel, channel.as_bytes());
    }
    text.barrier();
    // A channel subscribed both ways comes once per subscription (as Redis does); `*` crosses
    // dots in Redis's globs.
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(client.next().expect("a message"));
    }
    got.sort_by_key(|v| format!("{v:?}"));
    let mut expected = vec![
        message("news.art", "news.art"),
        pmessage("news.*", "news.art", "news.art"),
        pmessage("news.*", "news.a.b", "news.a.b"),
        pmessage("h?llo", "hello", "hello"),
        pmessage("[ab]x", "bx", "bx"),
    ];
    expected.sort_by_key(|v| format!("{v:?}"));
    assert_eq!(got, expected);
    assert!(client.nothing_within(Duration::from_millis(200)), "hllo and cx match nothing");
    let mut ask = Redis::connect(addr);
    assert_eq!(ask.call(&["PUBSUB", "NUMPAT"]), int(3));
    client.send(&["PUNSUBSCRIBE", "h?llo"]);
    assert_eq!(client.next(), Some(confirmation("punsubscribe", "h?llo", 3)));
    client.send(&["PUNSUBSCRIBE"]);
    let mut rest = [client.next().expect("one"), client.next().expect("two")];
    rest.sort_by_key(|v| format!("{v:?}"));
    assert!(matches!(&rest[0], Value::Array(Some(v)) if v[0] == bulk("punsubscribe")));
    assert_eq!(ask.call(&["PUBSUB", "NUMPAT"]), int(0));
    client.send(&["PUNSUBSCRIBE"]);
    assert_eq!(client.next(), Some(array(vec![bulk("punsubscribe"), Value::Bulk(None), int(1)])));
    // The fanout syntax is another pattern: `PSUB news.*` does not match news.a.b.
    let mut fanout_pattern = Conn::text(addr);
    fanout_pattern.send(fanout::protocol::Request::PatternSubscribe { pattern: b"news.*" });
    fanout_pattern.barrier();
    text.publish("news.a.b", b"deep");
    text.publish("news.x", b"shallow");
    match fanout_pattern.next() {
        Frame::Msg { channel, .. } => assert_eq!(channel, "news.x"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn sharded_pub_sub_uses_the_same_channels_with_smessage() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut sharded = Redis::connect(addr);
    sharded.send(&["SSUBSCRIBE", "orders"]);
    assert_eq!(sharded.next(), Some(confirmation("ssubscribe", "orders", 1)));
    // One kind per connection: SUBSCRIBE is refused while sharded subscriptions stand.
    assert!(matches!(sharded.call(&["SUBSCRIBE", "x"]), Value::Error(e) if e.contains("not both")));
    let mut plain = Redis::connect(addr);
    plain.send(&["SUBSCRIBE", "orders"]);
    assert_eq!(plain.next(), Some(confirmation("subscribe", "orders", 1)));
    let mut publisher = Redis::connect(addr);
    assert_eq!(publisher.call(&["SPUBLISH", "orders", "sharded"]), int(2));
    assert_eq!(publisher.call(&["PUBLISH", "orders", "plain"]), int(2));
    let smessage = |payload: &str| array(vec![bulk("smessage"), bulk("orders"), bulk(payload)]);
    assert_eq!(sharded.next(), Some(smessage("sharded")));
    assert_eq!(sharded.next(), Some(smessage("plain")));
    assert_eq!(plain.next(), Some(message("orders", "sharded")));
    assert_eq!(plain.next(), Some(message("orders", "plain")));
    assert_eq!(
        publisher.call(&["PUBSUB", "SHARDNUMSUB", "orders"]),
        array(vec![bulk("orders"), int(2)])
    );
    sharded.send(&["UNSUBSCRIBE"]);
    assert_eq!(sharded.next(), Some(array(vec![bulk("unsubscribe"), Value::Bulk(None), int(1)])));
    sharded.send(&["SUNSUBSCRIBE"]);
    assert_eq!(sharded.next(), Some(confirmation("sunsubscribe", "orders", 0)));
    // All gone: the connection may SUBSCRIBE now.
    sharded.send(&["SUBSCRIBE", "orders"]);
    assert_eq!(sharded.next(), Some(confirmation("subscribe", "orders", 1)));
}

#[test]
fn publish_counts_pattern_subscribers_on_every_worker_like_redis() {
    let server = start(|c| c.workers = 2);
    let addr = server.local_addr();
    // Several connections, so that both workers hold some.
    let mut clients: Vec<Redis> = (0..4).map(|_| Redis::connect(addr)).collect();
    clients[0].send(&["PSUBSCRIBE", "count.*"]);
    clients[1].send(&["PSUBSCRIBE", "count.*", "c?unt.x"]);
    clients[2].send(&["SUBSCRIBE", "count.x"]);
    let mut fanout_pattern = Conn::text(addr);
    fanout_pattern.send(fanout::protocol::Request::PatternSubscribe { pattern: b"count.>" });
    fanout_pattern.barrier();
    for (client, answers) in clients.iter_mut().zip([1, 2, 1]) {
        for _ in 0..answers {
            client.next().expect("a confirmation");
        }
    }
    // count.* twice, c?unt.x, the channel subscriber and fanout's count.>: 5, as Redis counts.
    assert_eq!(clients[3].call(&["PUBLISH", "count.x", "m"]), int(5));
    // Redis's `*` crosses dots (count.* twice), fanout's `>` takes the rest: 3.
    assert_eq!(clients[3].call(&["PUBLISH", "count.y.z", "m"]), int(3));
    clients[1].send(&["PUNSUBSCRIBE"]);
    // (the messages of the publishes above come first)
    let mut confirmed = 0;
    while confirmed < 2 {
        match clients[1].next() {
            Some(Value::Array(Some(v))) if v[0] == bulk("punsubscribe") => confirmed += 1,
            Some(Value::Array(Some(v))) if v[0] == bulk("pmessage") => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(clients[3].call(&["PUBLISH", "count.x", "m"]), int(3));
}

const STRANGER_SECRET: &[u8] = b"a resp test secret, long enough";

/// A server with access control on and no anonymous permissions, and a token for `channels`.
fn secured_server(
    adjust: impl FnOnce(&mut fanout::Config),
) -> (fanout::ServerHandle, impl Fn(&[&str]) -> String) {
    let server = start(|c| {
        c.auth.hmac_secret = Some(STRANGER_SECRET.to_vec());
        c.limits.auth_failures = Some(0);
        adjust(c);
    });
    let token = |channels: &[&str]| {
        let allowed: Vec<String> = channels.iter().map(|c| c.to_string()).collect();
        let expires = fanout::auth::unix_now_secs() + 600;
        fanout::auth::mint_hs256(STRANGER_SECRET, Some("ann"), &allowed, &allowed, expires)
            .expect("a token")
    };
    (server, token)
}

/// Whether the server closed `client` (EOF or reset) after the replies it holds.
fn closed(client: &mut Redis) -> bool {
    client.stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut chunk = [0u8; 4096];
    loop {
        match client.stream.read(&mut chunk) {
            Ok(0) | Err(_) => return true,
            Ok(_) => continue,
        }
    }
}

/// Redis's rules for a client that has not authenticated: a multibulk of more than 10
/// arguments, or a bulk over the strangers' budget, is a protocol error from its length line,
/// before any of its bytes are held; the connection closes. A bystander is not disturbed.
#[test]
fn a_redis_client_that_never_authenticates_is_refused_from_its_length_lines() {
    let (server, token) = secured_server(|_| {});
    let addr = server.local_addr();
    let mut bystander = Redis::connect(addr);
    assert_eq!(bystander.call(&["AUTH", &token(&["calm"])]), Value::Simple("OK".into()));
    bystander.send(&["SUBSCRIBE", "calm"]);
    assert_eq!(bystander.next(), Some(confirmation("subscribe", "calm", 1)));

    let cases: [(&[u8], &str); 4] = [
        (b"*1048576\r\n$1\r\na\r\n", "ERR Protocol error: unauthenticated multibulk length"),
        (b"*11\r\n", "ERR Protocol error: unauthenticated multibulk length"),
        (b"*2\r\n$4\r\nAUTH\r\n$1073741824\r\n", "ERR Protocol error: unauthenticated bulk length"),
        (
            b"*3\r\n$4\r\nAUTH\r\n$8000\r\n",
            "ERR Protocol error: command larger than the query buffer limit",
        ),
    ];
    for (attack, error) in cases {
        let mut stranger = Redis::connect(addr);
        stranger.stream.write_all(attack).expect("send");
        // The third case's 8000 bytes fit; a second argument of as many cannot.
        if attack.ends_with(b"$8000\r\n") {
            stranger.stream.write_all(&[b'x'; 8000]).expect("send");
            stranger.stream.write_all(b"\r\n$8000\r\n").expect("send");
        }
        match stranger.next() {
            Some(Value::Error(e)) => assert!(e.starts_with(error), "{e}"),
            other => panic!("expected {error}, got {other:?}"),
        }
        assert!(closed(&mut stranger), "closed after the error");
    }
    // An inline command is bounded the same way.
    let mut inline = Redis::connect(addr);
    inline.stream.write_all(b"*").expect("send");
    inline.stream.write_all(&[b'1'; 20_000]).expect("send");
    assert!(matches!(inline.next(), Some(Value::Error(e)) if e.contains("Protocol error")));
    assert!(server.stats().limited_stranger_input >= 4);
    let mut publisher = Redis::connect(addr);
    assert_eq!(publisher.call(&["AUTH", &token(&["calm"])]), Value::Simple("OK".into()));
    assert_eq!(publisher.call(&["PUBLISH", "calm", "still here"]), int(1));
    assert_eq!(bystander.next(), Some(message("calm", "still here")));
}

/// Authenticated, a command is bounded by `--max-query-bytes` (its length lines tell, before
/// the bytes are held), and a command arriving in pieces is parsed once: a million one-byte
/// arguments trickled in small writes are answered, while a bystander on the same worker keeps
/// receiving.
#[test]
fn an_authenticated_command_is_bounded_and_parsed_once() {
    // The default limit: the frame limit (1 MiB) and 64 KiB. A second argument of 1 MiB is
    // refused from its length line; so are a million arguments, from the count.
    let (server, token) = secured_server(|_| {});
    for attack in [&b"*1048576\r\n"[..], b"*3\r\n$1048576\r\n"] {
        let mut client = Redis::connect(server.local_addr());
        assert_eq!(client.call(&["AUTH", &token(&["room"])]), Value::Simple("OK".into()));
        client.stream.write_all(attack).expect("send");
        if attack.starts_with(b"*3") {
            client.stream.write_all(&vec![b'x'; 1 << 20]).expect("send");
            client.stream.write_all(b"\r\n$1048576\r\n").expect("send");
        }
        assert!(matches!(client.next(), Some(Value::Error(e)) if e.contains("query buffer limit")));
        assert!(closed(&mut client));
    }
    assert_eq!(server.stats().limited_query_buffer, 2);

    let (server, token) = secured_server(|c| {
        c.workers = 1;
        c.max_query_bytes = 16 << 20;
    });
    let addr = server.local_addr();

    let mut bystander = Redis::connect(addr);
    assert_eq!(bystander.call(&["AUTH", &token(&["calm"])]), Value::Simple("OK".into()));
    bystander.send(&["SUBSCRIBE", "calm"]);
    assert_eq!(bystander.next(), Some(confirmation("subscribe", "calm", 1)));
    let mut client = Redis::connect(addr);
    assert_eq!(client.call(&["AUTH", &token(&["room"])]), Value::Simple("OK".into()));
    let arguments = 1 << 20;
    client.stream.write_all(format!("*{arguments}\r\n$4\r\nPING\r\n").as_bytes()).expect("send");
    let piece = b"$1\r\na\r\n".repeat(100);
    for _ in 0..(arguments - 1) / 100 {
        client.stream.write_all(&piece).expect("send");
    }
    for _ in 0..(arguments - 1) % 100 {
        client.stream.write_all(b"$1\r\na\r\n").expect("send");
    }
    assert_eq!(
        client.next(),
        Some(Value::Error("ERR wrong number of arguments for 'ping' command".into()))
    );
    let mut publisher = Redis::connect(addr);
    assert_eq!(publisher.call(&["AUTH", &token(&["calm"])]), Value::Simple("OK".into()));
    assert_eq!(publisher.call(&["PUBLISH", "calm", "still here"]), int(1));
    assert_eq!(bystander.next(), Some(message("calm", "still here")));
}

/// PUBSUB tells a client only about channels it may subscribe to, and counts only patterns it
/// could take.
#[test]
fn pubsub_introspection_shows_only_what_the_caller_may_subscribe_to() {
    let (server, token) = secured_server(|c| c.auth.api_key = Some(b"the-api-key".to_vec()));
    let addr = server.local_addr();
    let mut backend = Redis::connect(addr);
    assert_eq!(backend.call(&["AUTH", "the-api-key"]), Value::Simple("OK".into()));
    backend.send(&["SUBSCRIBE", "room.1", "secret.plans"]);
    backend.next();
    backend.next();
    let mut patterns = Conn::text(addr);
    patterns.send(fanout::protocol::Request::Auth { token: b"the-api-key" });
    patterns.next();
    patterns.send(fanout::protocol::Request::PatternSubscribe { pattern: b"room.*" });
    patterns.next();
    patterns.send(fanout::protocol::Request::PatternSubscribe { pattern: b"secret.>" });
    patterns.next();

    let mut member = Redis::connect(addr);
    assert_eq!(member.call(&["AUTH", &token(&["room.*"])]), Value::Simple("OK".into()));
    assert_eq!(member.call(&["PUBSUB", "CHANNELS"]), array(vec![bulk("room.1")]));
    assert_eq!(member.call(&["PUBSUB", "SHARDCHANNELS", "*"]), array(vec![bulk("room.1")]));
    assert_eq!(
        member.call(&["PUBSUB", "NUMSUB", "room.1", "secret.plans"]),
        array(vec![bulk("room.1"), int(1), bulk("secret.plans"), int(0)])
    );
    assert_eq!(member.call(&["PUBSUB", "NUMPAT"]), int(1));
    // The API key sees everything.
    let mut operator = Redis::connect(addr);
    assert_eq!(operator.call(&["AUTH", "the-api-key"]), Value::Simple("OK".into()));
    assert_eq!(operator.call(&["PUBSUB", "NUMPAT"]), int(2));
    assert_eq!(
        operator.call(&["PUBSUB", "NUMSUB", "secret.plans"]),
        array(vec![bulk("secret.plans"), int(1)])
    );
    let mut stranger = Redis::connect(addr);
    assert_eq!(
        stranger.call(&["PUBSUB", "CHANNELS"]),
        Value::Error("NOAUTH Authentication required.".into())
    );
}

/// AUTH as Redis answers it: a refused token inside HELLO is HELLO's one reply; without access
/// control the one-argument AUTH is Redis's error for a server with no password.
#[test]
fn auth_replies_are_redis_s() {
    let (server, token) = secured_server(|_| {});
    let mut client = Redis::connect(server.local_addr());
    assert_eq!(client.call(&["AUTH", &token(&["room"])]), Value::Simple("OK".into()));
    client.send(&["HELLO", "3", "AUTH", "default", "not-a-token"]);
    client.send(&["PING"]);
    assert!(matches!(client.next(), Some(Value::Error(e)) if e.starts_with("WRONGPASS")));
    assert_eq!(client.next(), Some(Value::Simple("PONG".into())), "exactly one reply to HELLO");

    let open = start(|_| {});
    let mut client = Redis::connect(open.local_addr());
    assert_eq!(
        client.call(&["AUTH", "secret"]),
        Value::Error("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?".into())
    );
    assert_eq!(client.call(&["AUTH", "default", "anything"]), Value::Simple("OK".into()));
    assert!(matches!(client.call(&["HELLO", "3", "AUTH", "default", "x"]), Value::Map(_)));
}
