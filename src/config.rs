//! Every limit and default in one place, with units in the names. `fanout serve` maps one flag to
//! each field (see `main.rs`); tests build a `Config` directly.

use std::net::SocketAddr;
use std::time::Duration;

/// Server configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port (see `ServerHandle::local_addr`).
    pub listen: SocketAddr,
    /// Reactor threads, each with its own listener (SO_REUSEPORT), poll and connections.
    pub workers: usize,
    /// Pin worker `i` to core `i % cores`.
    pub pin_cores: bool,
    /// Open client connections across all workers; one more is refused with `ERR 503`.
    pub max_connections: usize,
    /// Longest binary frame (opcode + fields) or text line (without its line ending).
    pub max_frame_bytes: usize,
    /// Longest whole command of a Redis client, its framing included (Redis's
    /// `client-query-buffer-limit`); 0 takes the frame limit plus `QUERY_HEADROOM_BYTES`.
    pub max_query_bytes: usize,
    /// Bytes queued for one client before it is disconnected as a slow consumer.
    pub write_queue_cap_bytes: usize,
    /// Kernel send buffer of each client socket (SO_SNDBUF; 0 leaves the kernel's autotuning,
    /// which grows it to `net.ipv4.tcp_wmem`'s maximum, 4 MiB by default). Bytes a client has
    /// not read sit here before the write queue (and its cap) sees them: capped, a client that
    /// stops reading costs the server a little copying and memory before it blocks, instead of up
    /// to 4 MiB of each; measured in `scripts/bench-slow-clients.sh`.
    pub socket_send_buffer_bytes: usize,
    /// Slots in the broadcast ring (rounded up to a power of two).
    pub ring_slots: usize,
    /// Channels that may exist at once (each holds a name and an offset counter).
    pub max_channels: usize,
    /// Subscriptions one connection may hold.
    pub max_subscriptions_per_connection: usize,
    /// Wildcard subscriptions (`PSUB`) one connection may hold.
    pub max_patterns_per_connection: usize,
    /// Tokens a wildcard pattern may have (matching cost grows with them).
    pub max_pattern_tokens: usize,
    /// A connection silent this long is sent a PING.
    pub ping_interval: Duration,
    /// After that PING, a connection still silent this long is closed as stale.
    pub ping_timeout: Duration,
    /// How often each worker's counters are summed and logged (zero: never).
    pub stats_interval: Duration,
    /// On shutdown, how long queued messages may take to flush before connections are cut.
    pub shutdown_grace: Duration,
    /// Accept backlog passed to listen(2) (the kernel caps it at net.core.somaxconn).
    pub listen_backlog: u32,
    /// Messages kept per channel for resume (0 turns history off).
    pub history_messages: usize,
    /// Payload bytes kept per channel.
    pub history_bytes_per_channel: usize,
    /// Messages older than this are dropped from history (zero: no age limit).
    pub history_age: Duration,
    /// Payload bytes kept in history over all channels.
    pub history_total_bytes: usize,
    /// Keep every channel's history on disk here too, and read it back at start (None: memory
    /// only).
    pub data_dir: Option<std::path::PathBuf>,
    /// Cluster mode: join other nodes through these Redis servers, or (an edge) mirror from an
    /// upstream fanout server (None: a single node).
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// UDP multicast in a LAN (`--multicast`): a node that is not an edge sends every topic
    /// channel's messages to the group; an edge delivers from it and reads what it misses
    /// from its upstream.
    pub multicast: Option<crate::cluster::MulticastConfig>,
    /// When history files are fsync'ed.
    pub fsync: crate::history::disk::FsyncPolicy,
    /// History segment files roll at this size.
    pub segment_bytes: u64,
    /// History segment files kept open at once (the least recently written are closed first),
    /// so that the number of channels never touches the descriptor limit.
    pub max_open_segments: usize,
    /// Write coalescing: a connection that was written to less than this long ago waits until
    /// this long has passed before its next write (replies to its own commands never wait).
    /// Zero writes every turn. See the README's design section.
    pub coalesce: Duration,
    /// An HTTP request head must arrive whole within this long of its first byte, or the
    /// connection is closed with 408 (a client trickling a head byte by byte holds a
    /// connection and its buffer for nothing: slowloris).
    pub http_head_timeout: Duration,
    /// Serve the WebSocket echo endpoint `/echo` (for the Autobahn conformance suite only).
    pub ws_echo: bool,
    /// Who may connect, subscribe and publish (empty: everyone may do everything).
    pub auth: crate::auth::AuthConfig,
    /// Serve a non-loopback address with no access control at all (otherwise refused at start).
    pub allow_anonymous: bool,
    /// TLS on the listen port: a connection whose first byte is a TLS handshake record speaks
    /// TLS, any other plaintext (`None`: plaintext only).
    pub tls: Option<crate::tls::ServerTls>,
    /// Refuse connections that do not start a TLS handshake.
    pub tls_only: bool,
    /// Browser origins allowed to use the HTTP endpoints and WebSocket (empty: any). A request or
    /// an upgrade from another `Origin` gets 403: cross-site WebSocket hijacking.
    pub allowed_origins: Vec<String>,
    /// Abuse limits; see `Limits`.
    pub limits: Limits,
    /// `/metrics` and `/healthz` answer only requests carrying the API key.
    pub private_metrics: bool,
    /// Presence and join/leave events (`--presence`, `--join-leave`).
    pub presence: crate::server::presence::PresenceConfig,
    /// This node's name in client ids, presence and `/api/info` (None: a random one at start).
    pub node_name: Option<String>,
    /// How long a revocation (`/api/disconnect?revoke=true`) refuses the user's older tokens.
    pub revocation_ttl: Duration,
    /// Options per channel pattern (`[[namespace]]` in the config file); see `namespace`.
    pub namespaces: Vec<crate::namespace::Namespace>,
    /// Testing only: a publish to this channel panics its worker (to test that the process then
    /// aborts, loudly, instead of limping on).
    pub debug_panic_on_publish_to: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            pin_cores: true,
            max_connections: 1_000_000,
            max_frame_bytes: 1 << 20,
            max_query_bytes: 0,
            write_queue_cap_bytes: 8 << 20,
            // The kernel doubles it: 512 KiB in flight per client, a 10 GbE link's worth of
            // data at a quarter-millisecond round trip.
            socket_send_buffer_bytes: 256 << 10,
            ring_slots: 1 << 14,
            max_channels: 1_000_000,
            max_subscriptions_per_connection: 1024,
            max_patterns_per_connection: 64,
            max_pattern_tokens: 16,
            // NATS uses 2 minutes and two missed pings; a person typing into `nc` never notices.
            ping_interval: Duration::from_secs(120),
            ping_timeout: Duration::from_secs(60),
            stats_interval: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(5),
            listen_backlog: 4096,
            coalesce: Duration::ZERO,
            history_messages: 10_000,
            history_bytes_per_channel: 64 << 20,
            history_age: Duration::ZERO,
            history_total_bytes: 1 << 30,
            data_dir: None,
            cluster: None,
            multicast: None,
            fsync: crate::history::disk::FsyncPolicy::Interval(Duration::from_millis(100)),
            segment_bytes: 64 << 20,
            max_open_segments: 256,
            http_head_timeout: Duration::from_secs(10),
            ws_echo: false,
            auth: crate::auth::AuthConfig {
                timeout: Duration::from_secs(10),
                expiry_grace: Duration::from_secs(5),
                max_token_bytes: crate::auth::DEFAULT_MAX_TOKEN_BYTES,
                ..Default::default()
            },
            allow_anonymous: false,
            tls: None,
            tls_only: false,
            allowed_origins: Vec::new(),
            limits: Limits::default(),
            private_metrics: false,
            presence: Default::default(),
            node_name: None,
            revocation_ttl: Duration::from_secs(86_400),
            namespaces: Vec::new(),
            debug_panic_on_publish_to: None,
        }
    }
}

/// What a Redis client's command may hold beside its largest argument (a PUBLISH's command
/// word, channel and framing) under the default `--max-query-bytes`.
pub const QUERY_HEADROOM_BYTES: usize = 64 * 1024;

impl Config {
    /// The longest Redis command taken, with the default applied.
    pub fn query_limit(&self) -> usize {
        match self.max_query_bytes {
            0 => self.max_frame_bytes + QUERY_HEADROOM_BYTES,
            limit => limit,
        }
    }
}

/// Abuse limits per connection and per source address. `None` takes the default, which applies
/// only when access control is on (the server is exposed): with it off, the operator's own
/// clients are trusted and nothing is limited unless a flag says so. Zero means unlimited. The
/// API key is never rate-limited.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// Publishes per second per connection (a token bucket holding one second's worth; past it,
    /// `ERR 429` and the connection stays). Default with auth: 100.
    pub publishes_per_sec: Option<u32>,
    /// Subscribes and unsubscribes per second per connection. Default with auth: 100.
    pub subscribes_per_sec: Option<u32>,
    /// Failed authentications before the connection is closed. Default with auth: 5.
    pub auth_failures: Option<u32>,
    /// Open connections per source IP address (one more gets `ERR 503` at accept). Default
    /// with auth: 1,000.
    pub connections_per_ip: Option<u32>,
}

/// `Limits` with their defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EffectiveLimits {
    /// Publishes per second per connection (0: unlimited).
    pub publishes_per_sec: u32,
    /// Subscribes and unsubscribes per second per connection (0: unlimited).
    pub subscribes_per_sec: u32,
    /// Failed authentications before the connection closes (0: unlimited).
    pub auth_failures: u32,
    /// Connections per source IP (0: unlimited).
    pub connections_per_ip: u32,
}

impl Limits {
    /// The limits in force, given whether access control is on.
    pub fn effective(&self, auth_enabled: bool) -> EffectiveLimits {
        let or = |value: Option<u32>, default: u32| {
            value.unwrap_or(if auth_enabled { default } else { 0 })
        };
        EffectiveLimits {
            publishes_per_sec: or(self.publishes_per_sec, 100),
            subscribes_per_sec: or(self.subscribes_per_sec, 100),
            auth_failures: or(self.auth_failures, 5),
            connections_per_ip: or(self.connections_per_ip, 1_000),
        }
    }
}

impl Config {
    /// The retention limits, as the history module takes them.
    pub fn history_limits(&self) -> crate::history::HistoryLimits {
        crate::history::HistoryLimits {
            messages: self.history_messages,
            bytes: self.history_bytes_per_channel,
            age: self.history_age,
            total_bytes: self.history_total_bytes,
        }
    }

    /// A configuration for tests: loopback port 0, two workers, no pinning (tests run in parallel).
    pub fn for_tests() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            workers: 2,
            pin_cores: false,
            stats_interval: Duration::ZERO,
            ..Config::default()
        }
    }
}
