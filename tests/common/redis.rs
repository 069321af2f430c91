//! A real `redis-server` on a free loopback port, owned by one test: started, stopped, frozen
//! (SIGSTOP), killed and restarted on the same port; and a tiny blocking RESP client to look at
//! or tamper with what fanout keeps there. `.ci/run` installs redis-server.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fanout::protocol::resp::{parse_value, Value};

use super::{TempDir, PATIENCE};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: TempDir,
    extra: Vec<String>,
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

/// A free port whose cluster bus port (10,000 above it) is free too.
pub fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

impl RedisServer {
    /// A server with no persistence.
    pub fn start() -> RedisServer {
        Self::start_with(&["--save", "", "--appendonly", "no"])
    }

    /// A server with `args` (e.g. `--appendonly yes --appendfsync always`, so that a SIGKILL and
    /// restart keeps every acknowledged write).
    pub fn start_with(args: &[&str]) -> RedisServer {
        Self::start_on(free_port(), args)
    }

    fn start_on(port: u16, args: &[&str]) -> RedisServer {
        let dir = TempDir::new("redis");
        let mut server = RedisServer {
            child: None,
            port,
            dir,
            extra: args.iter().map(|a| a.to_string()).collect(),
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--dir",
                self.dir.path(),
            ])
            .args(["--protected-mode", "no", "--daemonize", "no", "--logfile", ""])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (apt-get install redis-server; .ci/run installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(Value::Simple(pong)) = self.try_command(&["PING"]) {
                if pong == "PONG" {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not come up on {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn endpoint(&self) -> fanout::cluster::RedisEndpoint {
        self.url().parse().expect("a Redis URL")
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// SIGKILL: Redis keeps only what its persistence wrote.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = self.child.as_ref().expect("running").id() as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid, which stays reserved until we reap it.
        let sent = unsafe { libc::kill(pid, signal) };
        assert_eq!(sent, 0, "kill({pid}, {signal})");
    }

    /// SIGSTOP: connections stay open and nothing is answered.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Runs one command on a fresh connection.
    pub fn command(&self, args: &[&str]) -> Value {
        self.try_command(args).unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }

    pub fn try_command(&self, args: &[&str]) -> Result<Value, String> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.try_command_bytes(&args)
    }

    pub fn try_command_bytes(&self, args: &[&[u8]]) -> Result<Value, String> {
        let mut stream = TcpStream::connect_timeout(&self.addr(), Duration::from_secs(1))
            .map_err(|e| e.to_string())?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        stream.write_all(&out).map_err(|e| e.to_string())?;
        let mut input = Vec::new();
        let mut chunk = [0u8; 65536];
        loop {
            if let Some((value, _)) = parse_value(&input, usize::MAX).map_err(|e| e.to_string())? {
                return Ok(value);
            }
            let n = stream.read(&mut chunk).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed".into());
            }
            input.extend_from_slice(&chunk[..n]);
        }
    }

    /// An integer reply.
    pub fn integer(&self, args: &[&str]) -> i64 {
        match self.command(args) {
            Value::Integer(n) => n,
            other => panic!("redis {args:?}: {other:?}"),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // SIGKILL ends a frozen (stopped) server too.
        self.kill();
    }
}

/// A Redis Cluster of `masters` local redis-server processes (and with `start_with_replicas`
/// one replica each), created with `redis-cli --cluster create`, every slot assigned. `masters`
/// holds every server, masters first as created (after a failover a replica may be a master).
pub struct RedisCluster {
    pub masters: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start(masters: usize) -> RedisCluster {
        Self::start_with_replicas(masters, 0)
    }

    /// `masters` masters with `replicas` replicas each (a 2 s node timeout: a failover takes a
    /// few seconds).
    pub fn start_with_replicas(masters: usize, replicas: usize) -> RedisCluster {
        let masters: Vec<RedisServer> = (0..masters * (1 + replicas))
            .map(|_| {
                RedisServer::start_on(
                    free_cluster_port(),
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "2000",
                        // A replica takes over however long it was cut off (a lagging replica
                        // promoted is one of the faults the cluster tests reproduce).
                        "--cluster-replica-validity-factor",
                        "0",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                    ],
                )
            })
            .collect();
        let addresses: Vec<String> =
            masters.iter().map(|m| format!("127.0.0.1:{}", m.port)).collect();
        let status = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli runs (apt-get install redis-tools)");
        assert!(status.success(), "redis-cli --cluster create failed");
        let deadline = Instant::now() + PATIENCE;
        for master in &masters {
            loop {
                let info = match master.command(&["CLUSTER", "INFO"]) {
                    Value::Bulk(Some(info)) => String::from_utf8_lossy(&info).into_owned(),
                    other => format!("{other:?}"),
                };
                let replica_synced = match master.command(&["INFO", "replication"]) {
                    Value::Bulk(Some(info)) => {
                        let info = String::from_utf8_lossy(&info);
                        !info.contains("role:slave") || info.contains("master_link_status:up")
                    }
                    _ => false,
                };
                if info.contains("cluster_state:ok") && replica_synced {
                    break;
                }
                assert!(Instant::now() < deadline, "the cluster did not form: {info}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        RedisCluster { masters }
    }

    /// The master that holds `key`'s slot.
    pub fn master_of(&self, key: &str) -> &RedisServer {
        self.master_of_as_seen_by(key, &self.masters[0])
    }

    /// The master that holds `key`'s slot, as `asked` sees the cluster.
    pub fn master_of_as_seen_by(&self, key: &str, asked: &RedisServer) -> &RedisServer {
        let slot = fanout::cluster::key_slot(key.as_bytes());
        let Value::Array(Some(ranges)) = asked.command(&["CLUSTER", "SLOTS"]) else {
            panic!("CLUSTER SLOTS");
        };
        for range in ranges {
            let Value::Array(Some(parts)) = range else { continue };
            let (Value::Integer(first), Value::Integer(last)) = (&parts[0], &parts[1]) else {
                continue;
            };
            if (*first..=*last).contains(&i64::from(slot)) {
                let Value::Array(Some(master)) = &parts[2] else { continue };
                let Value::Integer(port) = master[1] else { continue };
                return self.masters.iter().find(|m| i64::from(m.port) == port).expect("a master");
            }
        }
        panic!("no master holds slot {slot}");
    }
}
