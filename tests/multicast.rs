//! UDP multicast between a hub and its edges, in network namespaces this test makes: a bridge
//! with a hub and three edges on it, 5% of the packets towards one edge lost (`tc netem`).
//! Every subscriber on every edge gets every message once, in order, without a notice: the
//! group is a fast path, and what it loses is read from the hub by offset.
//!
//! Needs root (`ip netns`); where namespaces cannot be made the test says so and passes.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{publish_acked, Conn, Frame, Read_, PATIENCE};

/// The namespaces, links and servers of one run, removed when dropped.
struct Lan {
    id: String,
    namespaces: Vec<String>,
    servers: Vec<Child>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr))),
    }
}

impl Lan {
    /// A bridge (in its own namespace) with a port for each of `hosts` (namespace suffix,
    /// last byte of its 10.231.x.0/24 address) and one for this test's namespace (.254).
    fn new(hosts: &[(&str, u8)]) -> Result<Lan, String> {
        let id = format!("{}", std::process::id() % 100_000);
        let subnet = 100 + std::process::id() % 100;
        let mut lan = Lan { id: id.clone(), namespaces: Vec::new(), servers: Vec::new() };
        let bridge_ns = format!("fo-lan-{id}");
        ip(&["netns", "add", &bridge_ns])?;
        lan.namespaces.push(bridge_ns.clone());
        ip(&["-n", &bridge_ns, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"])?;
        ip(&["-n", &bridge_ns, "link", "set", "br0", "up"])?;
        for &(host, byte) in hosts {
            let ns = format!("fo-{host}-{id}");
            ip(&["netns", "add", &ns])?;
            lan.namespaces.push(ns.clone());
            let (inside, port) = (format!("v{host}{id}"), format!("p{host}{id}"));
            ip(&["link", "add", &inside, "type", "veth", "peer", "name", &port])?;
            ip(&["link", "set", &inside, "netns", &ns])?;
            ip(&["link", "set", &port, "netns", &bridge_ns])?;
            ip(&["-n", &bridge_ns, "link", "set", &port, "master", "br0", "up"])?;
            let addr = format!("10.231.{subnet}.{byte}/24");
            ip(&["-n", &ns, "addr", "add", &addr, "dev", &inside])?;
            ip(&["-n", &ns, "link", "set", &inside, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", &inside])?;
        }
        // This test's own way in (the root namespace).
        let (inside, port) = (format!("vt{id}"), format!("pt{id}"));
        ip(&["link", "add", &inside, "type", "veth", "peer", "name", &port])?;
        ip(&["link", "set", &port, "netns", &bridge_ns])?;
        ip(&["-n", &bridge_ns, "link", "set", &port, "master", "br0", "up"])?;
        ip(&["addr", "add", &format!("10.231.{subnet}.254/24"), "dev", &inside])?;
        ip(&["link", "set", &inside, "up"])?;
        Ok(lan)
    }

    fn addr(&self, byte: u8) -> SocketAddr {
        format!("10.231.{}.{byte}:7400", 100 + std::process::id() % 100)
            .parse()
            .expect("an address")
    }

    /// `fanout serve` in host `host`'s namespace, listening on its address.
    fn serve(&mut self, host: &str, byte: u8, args: &[&str]) -> SocketAddr {
        let addr = self.addr(byte);
        let ns = format!("fo-{host}-{}", self.id);
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, env!("CARGO_BIN_EXE_fanout"), "serve", "--no-pin"])
            .args(["--listen", &addr.to_string(), "--workers", "1", "--stats-interval-secs", "0"])
            // Reachable beyond loopback (in these namespaces only): open, as a LAN of tests is.
            .arg("--allow-anonymous")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ip netns exec fanout serve");
        self.servers.push(child);
        let deadline = Instant::now() + PATIENCE;
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "{host} never listened on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        addr
    }

    /// `percent`% of the packets towards `host` lost: `tc netem loss` on the bridge's port
    /// towards it or, where this kernel has no netem, an nftables rule in its namespace that
    /// drops as many of what it receives (TCP and UDP alike, as a lossy link would).
    fn lossy(&self, host: &str, percent: u32) -> Result<(), String> {
        let run = |program: &str, args: &[&str]| -> Result<(), String> {
            let out =
                Command::new(program).args(args).output().map_err(|e| format!("{program}: {e}"))?;
            match out.status.success() {
                true => Ok(()),
                false => Err(format!("{program}: {}", String::from_utf8_lossy(&out.stderr).trim())),
            }
        };
        let (bridge, port) = (format!("fo-lan-{}", self.id), format!("p{host}{}", self.id));
        let loss = format!("{percent}%");
        let netem = run(
            "tc",
            &["-n", &bridge, "qdisc", "add", "dev", &port, "root", "netem", "loss", &loss],
        );
        let Err(no_netem) = netem else { return Ok(()) };
        let ns = format!("fo-{host}-{}", self.id);
        let nft = |rule: &str| run("ip", &["netns", "exec", &ns, "nft", rule]);
        nft("add table inet lossy")
            .and_then(|()| nft("add chain inet lossy in { type filter hook input priority 0; }"))
            .and_then(|()| {
                nft(&format!("add rule inet lossy in numgen random mod 100 < {percent} drop"))
            })
            .map_err(|no_nft| format!("{no_netem}; and {no_nft} (apt-get install nftables)"))
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for child in &mut self.servers {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = ip(&["link", "del", &format!("vt{}", self.id)]);
        for ns in &self.namespaces {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// A counter of `/metrics` on `addr`.
fn metric(addr: SocketAddr, name: &str) -> u64 {
    let body = common::http(addr, "GET", "/metrics", b"").body;
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} in /metrics of {addr}"))
}

#[test]
fn multicast_to_three_edges_with_one_lossy_link_delivers_everything_once_in_order() {
    let hosts = [("hub", 1), ("e1", 11), ("e2", 12), ("e3", 13)];
    let mut lan = match Lan::new(&hosts) {
        Ok(lan) => lan,
        Err(why) => {
            eprintln!("skipped: cannot make network namespaces here ({why}); run as root");
            return;
        }
    };
    lan.lossy("e1", 5).expect("a lossy link");
    let group = "239.77.0.1:7500";
    let hub = lan.serve("hub", 1, &["--multicast", group]);
    let upstream = hub.to_string();
    let edges: Vec<SocketAddr> = hosts[1..]
        .iter()
        .map(|&(host, byte)| {
            lan.serve(host, byte, &["--upstream", &upstream, "--multicast", group])
        })
        .collect();
    let mut subscribers: Vec<Conn> = edges
        .iter()
        .flat_map(|&edge| (0..2).map(move |_| edge))
        .map(|edge| {
            let mut conn = Conn::binary(edge);
            conn.subscribe("hot");
            conn
        })
        .collect();
    // Paced, so that the group carries most of it (a burst all at once would be read over
    // TCP by the first resume).
    const MESSAGES: u64 = 3000;
    let mut publisher = Conn::binary(hub);
    for i in 1..=MESSAGES {
        let payload = format!("message {i}");
        assert_eq!(publish_acked(&mut publisher, "hot", payload.as_bytes()), Ok(i));
        if i % 10 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    for (n, conn) in subscribers.iter_mut().enumerate() {
        let mut next = 1;
        while next <= MESSAGES {
            match conn.read(PATIENCE) {
                Read_::Frame(Frame::Msg { offset, payload, .. }) => {
                    assert_eq!(offset, next, "subscriber {n}: in order, once, no gap");
                    assert_eq!(payload, format!("message {offset}").into_bytes());
                    next += 1;
                }
                other => panic!("subscriber {n} at {next}: {other:?}"),
            }
        }
        assert!(common::messages_of(conn.barrier()).is_empty(), "subscriber {n}: nothing more");
    }
    let from_group: Vec<u64> =
        edges.iter().map(|&e| metric(e, "fanout_cluster_multicast_messages_total")).collect();
    let repairs: Vec<u64> =
        edges.iter().map(|&e| metric(e, "fanout_cluster_multicast_repairs_total")).collect();
    eprintln!("messages from the group per edge: {from_group:?}; repairs: {repairs:?}");
    // The group carried nearly everything to the edges that lose nothing; the lossy one read
    // over TCP what it missed (and what came while it did).
    assert!(from_group[1..].iter().all(|&n| n > MESSAGES * 9 / 10), "{from_group:?}");
    assert!(from_group[0] > 0, "the group carried some to the lossy edge too: {from_group:?}");
    assert!(repairs[0] > 0, "the lossy edge read what it lost from the hub: {repairs:?}");
}
