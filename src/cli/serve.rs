//! `fanout serve`'s flags, and the `Config` they make.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use fanout::history::disk::FsyncPolicy;
use fanout::Config;

use super::read_secret;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Read settings from this TOML file: the long flags' names as keys (`listen = "..."`,
    /// `workers = 2`, `anonymous-sub = ["news"]`), and `[[namespace]]` tables. A flag given on
    /// the command line wins over the file. Re-read on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Print the configuration in force (file, flags and defaults) as a config file, and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Log filter: a level (error, warn, info, debug, trace) or env_logger directives such as
    /// `info,fanout::cluster=debug` (default: $RUST_LOG, else info). Reloadable.
    #[arg(long, value_name = "FILTER", value_parser = super::logging::parse_filter)]
    pub log_level: Option<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: SocketAddr,
    /// Reactor threads (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Do not pin worker threads to cores.
    #[arg(long)]
    no_pin: bool,
    /// Open connections at most (default 1,000,000); further ones get `ERR 503` and are
    /// closed. Given, it is also checked against RLIMIT_NOFILE at start.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Longest frame or line a client may send, in bytes.
    #[arg(long, default_value_t = Config::default().max_frame_bytes)]
    max_frame_bytes: usize,
    /// Longest whole command a Redis client may send, in bytes (Redis's
    /// client-query-buffer-limit; past it: a protocol error, and the connection closes).
    /// 0 (the default): the frame limit plus 64 KiB.
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    max_query_bytes: usize,
    /// Bytes queued for one client before it is dropped as a slow consumer.
    #[arg(long, default_value_t = Config::default().write_queue_cap_bytes)]
    write_queue_cap_bytes: usize,
    /// Slots in the broadcast ring (a power of two).
    #[arg(long, default_value_t = Config::default().ring_slots)]
    ring_slots: usize,
    /// Channels that may exist at once.
    #[arg(long, default_value_t = Config::default().max_channels)]
    max_channels: usize,
    /// Subscriptions one connection may hold.
    #[arg(long, default_value_t = Config::default().max_subscriptions_per_connection)]
    max_subscriptions: usize,
    /// Wildcard subscriptions (PSUB) one connection may hold.
    #[arg(long, default_value_t = Config::default().max_patterns_per_connection)]
    max_patterns: usize,
    /// Tokens a wildcard pattern may have.
    #[arg(long, default_value_t = Config::default().max_pattern_tokens)]
    max_pattern_tokens: usize,
    /// Seconds of client silence before the server sends PING.
    #[arg(long, default_value_t = Config::default().ping_interval.as_secs())]
    ping_interval_secs: u64,
    /// Seconds after that PING before a still-silent client is closed.
    #[arg(long, default_value_t = Config::default().ping_timeout.as_secs())]
    ping_timeout_secs: u64,
    /// Seconds between stats log lines (0: none).
    #[arg(long, default_value_t = Config::default().stats_interval.as_secs())]
    stats_interval_secs: u64,
    /// Messages kept per channel so that reconnecting clients can resume (0: history off).
    #[arg(long, default_value_t = Config::default().history_messages)]
    history_messages: usize,
    /// Payload bytes kept per channel.
    #[arg(long, default_value_t = Config::default().history_bytes_per_channel)]
    history_bytes_per_channel: usize,
    /// Seconds a message stays in history (0: no age limit).
    #[arg(long, default_value_t = Config::default().history_age.as_secs())]
    history_age_secs: u64,
    /// Payload bytes kept in history over all channels.
    #[arg(long, default_value_t = Config::default().history_total_bytes)]
    history_total_bytes: usize,
    /// Also keep history on disk in this directory, and read it back at start (default: memory
    /// only).
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// Join a cluster through this Redis server (redis://[[user]:password@]host[:port][/db], or
    /// rediss:// for TLS);
    /// repeat it to spread channels over several independent servers. Offsets, history and
    /// resume are then the same on every node. Not with --data-dir: Redis keeps the history.
    #[arg(long = "redis", value_name = "URL")]
    redis: Vec<fanout::cluster::RedisEndpoint>,
    /// Join a cluster through a Redis Cluster (>= 7) instead, given one of its nodes (repeat for
    /// more seeds): channels go to their hash slot's master, delivery uses sharded pub/sub.
    #[arg(long = "redis-cluster", value_name = "URL", conflicts_with = "redis")]
    redis_cluster: Vec<fanout::cluster::RedisEndpoint>,
    /// CA certificates (PEM) that `rediss://` servers' certificates must chain to (default: the
    /// system's trust roots).
    #[arg(long, value_name = "FILE")]
    redis_tls_ca_file: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for `rediss://` servers that require mutual TLS.
    #[arg(long, value_name = "FILE", requires = "redis_tls_key")]
    redis_tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --redis-tls-cert.
    #[arg(long, value_name = "FILE", requires = "redis_tls_cert")]
    redis_tls_key: Option<std::path::PathBuf>,
    /// Prefix of the keys and pub/sub channels fanout uses in Redis.
    #[arg(long, default_value = "fanout")]
    redis_prefix: String,
    /// A channel's keys in Redis expire after this long without a publish, up to an eighth more
    /// (its epoch with them).
    #[arg(long, default_value_t = 86_400)]
    redis_key_ttl_secs: u64,
    /// A Redis connection that leaves a command (or the pub/sub liveness probe) unanswered this
    /// long is dropped and reconnected; publishes in flight on it are refused.
    #[arg(long, default_value_t = 5000)]
    redis_timeout_ms: u64,
    /// A client name's lease in Redis (names are unique across the cluster): its node refreshes
    /// it while the client holds the name; a dead node's names come free this long after.
    #[arg(long, default_value_t = 15_000)]
    redis_name_lease_ms: u64,
    /// Edge mode: mirror, from this upstream fanout server (HOST:PORT, its binary protocol),
    /// only the channels and patterns this node's clients use, with the upstream's offsets,
    /// epochs and names; publishes go up and are acknowledged after the upstream's ACK. Repeat
    /// for failover (tried in turn). The upstream may itself be an edge or Redis-joined.
    #[arg(long = "upstream", value_name = "HOST:PORT", conflicts_with_all = ["redis", "redis_cluster"])]
    upstream: Vec<String>,
    /// A file holding what this edge presents upstream (AUTH): the upstream's API key, or a
    /// token whose grant covers every channel this edge's clients may use.
    #[arg(long, value_name = "FILE", requires = "upstream")]
    upstream_token_file: Option<std::path::PathBuf>,
    /// An upstream connection that leaves a command unanswered (or stays silent to a PING) this
    /// long is dropped, and the next upstream tried; publishes in flight on it are refused.
    #[arg(long, default_value_t = 5000)]
    upstream_timeout_ms: u64,
    /// UDP multicast in one LAN: a node that is not an edge sends every topic channel's messages
    /// to GROUP:PORT once, however many edges listen; an edge (--upstream) delivers from it
    /// while it is contiguous and reads what it misses from its upstream by offset.
    #[arg(long, value_name = "GROUP:PORT")]
    multicast: Option<std::net::SocketAddrV4>,
    /// Bytes per multicast datagram at most: the path MTU less 28 (IPv4 and UDP headers).
    #[arg(long, default_value_t = 1400)]
    multicast_mtu: usize,
    /// When history files are fsync'ed: always (before acknowledging), interval, never.
    #[arg(long, default_value = "interval", value_parser = ["always", "interval", "never"])]
    fsync: String,
    /// With --fsync interval: milliseconds between fsyncs.
    #[arg(long, default_value_t = 100)]
    fsync_interval_ms: u64,
    /// History segment files roll at this size.
    #[arg(long, default_value_t = Config::default().segment_bytes)]
    segment_bytes: u64,
    /// History segment files kept open at once (least recently written closed first).
    #[arg(long, default_value_t = Config::default().max_open_segments)]
    max_open_segments: usize,
    /// Write coalescing window in milliseconds: a subscriber written to less than this long ago
    /// gets its next messages together once the window has passed (0: write every turn).
    #[arg(long, default_value_t = Config::default().coalesce.as_millis() as u64)]
    coalesce_ms: u64,
    /// Serve a WebSocket echo endpoint at /echo, for the Autobahn conformance suite (off in
    /// production: it is not pub/sub).
    #[arg(long)]
    ws_echo: bool,
    /// Seconds an HTTP request head may take to arrive whole, from its first byte (then 408).
    #[arg(long, default_value_t = Config::default().http_head_timeout.as_secs())]
    http_head_timeout_secs: u64,
    /// Testing only: a publish to this channel panics its worker (the process aborts).
    #[arg(long, hide = true)]
    debug_panic_on_publish_to: Option<String>,
    /// Kernel send buffer per client socket (SO_SNDBUF; 0: the kernel's autotuning, up to 4 MiB).
    #[arg(long, default_value_t = Config::default().socket_send_buffer_bytes)]
    socket_send_buffer_bytes: usize,
    /// Seconds queued messages may take to flush on shutdown.
    #[arg(long, default_value_t = Config::default().shutdown_grace.as_secs())]
    shutdown_grace_secs: u64,
    /// Verify HS256/384/512 tokens with the secret in this file (its contents, without a
    /// trailing newline).
    #[arg(long)]
    auth_secret_file: Option<std::path::PathBuf>,
    /// Verify RS*, PS*, ES256/384 or EdDSA tokens with the PEM public key in this file; repeat
    /// as KID=FILE for several keys chosen by the token's `kid`.
    #[arg(long)]
    auth_public_key_file: Vec<String>,
    /// Tokens must carry this `aud`.
    #[arg(long)]
    auth_audience: Option<String>,
    /// Tokens must carry this `iss`.
    #[arg(long)]
    auth_issuer: Option<String>,
    /// A key in this file may do everything (backends publishing over HTTP with
    /// `Authorization: Bearer KEY`, or AUTH KEY); compared in constant time.
    #[arg(long)]
    api_key_file: Option<std::path::PathBuf>,
    /// Clients without a token may subscribe to channels matching this pattern (repeat).
    #[arg(long)]
    anonymous_sub: Vec<String>,
    /// Clients without a token may publish to channels matching this pattern (repeat).
    #[arg(long)]
    anonymous_pub: Vec<String>,
    /// Serve a non-loopback --listen with no access control at all (refused otherwise).
    #[arg(long)]
    allow_anonymous: bool,
    /// TLS certificate chain (PEM, leaf first) for the listen port: connections that start a
    /// TLS handshake speak TLS, others plaintext. Repeat with --tls-key for several
    /// certificates, chosen by the client's SNI name (the first serves the rest). Re-read on
    /// SIGHUP.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Vec<std::path::PathBuf>,
    /// The private key (PEM) of each --tls-cert, in the same order.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Vec<std::path::PathBuf>,
    /// Refuse connections that do not start a TLS handshake.
    #[arg(long, requires = "tls_cert")]
    tls_only: bool,
    /// Seconds a connection without permissions has to authenticate (then ERR 401, closed).
    #[arg(long, default_value_t = Config::default().auth.timeout.as_secs())]
    auth_timeout_secs: u64,
    /// Seconds after its token's `exp` a connection that sent no fresh token is closed.
    #[arg(long, default_value_t = Config::default().auth.expiry_grace.as_secs())]
    auth_expiry_grace_secs: u64,
    /// Longest token accepted, in bytes.
    #[arg(long, default_value_t = Config::default().auth.max_token_bytes)]
    max_token_bytes: usize,
    /// /metrics and /healthz answer only requests carrying the API key
    /// (Authorization: Bearer <key>); others get 401. Needs --api-key-file.
    #[arg(long)]
    private_metrics: bool,
    /// Browser origins allowed, comma-separated (e.g. https://example.com); a request or
    /// WebSocket upgrade with another Origin gets 403. Default: any.
    #[arg(long, value_delimiter = ',')]
    allowed_origins: Vec<String>,
    /// Publishes per second per connection (0: unlimited). Default with access control: 100;
    /// without: unlimited. The API key is never limited.
    #[arg(long)]
    max_publishes_per_sec: Option<u32>,
    /// Subscribes and unsubscribes per second per connection (0: unlimited). Default with
    /// access control: 100; without: unlimited.
    #[arg(long)]
    max_subscribes_per_sec: Option<u32>,
    /// Failed authentications before a connection is closed (0: unlimited). Default with
    /// access control: 5.
    #[arg(long)]
    max_auth_failures: Option<u32>,
    /// Open connections per source IP address (0: unlimited). Default with access control:
    /// 1000; without: unlimited.
    #[arg(long)]
    max_connections_per_ip: Option<u32>,
    /// Track who is subscribed to channels matching this pattern (repeat): PRESENCE answers
    /// and /api/presence. Off for every other channel (a broadcast channel pays nothing).
    #[arg(long)]
    presence: Vec<String>,
    /// Subscribers of channels matching this pattern (repeat) hear joins and leaves (and the
    /// channels' presence is tracked).
    #[arg(long)]
    join_leave: Vec<String>,
    /// A presence answer with more members than this is refused with 429 (ask the stats).
    #[arg(long, default_value_t = fanout::server::presence::PresenceConfig::default().max_members)]
    presence_max_members: usize,
    /// Milliseconds a worker gathers joins and leaves before sending them (a join and a leave
    /// of one connection within it cancel out).
    #[arg(long, default_value_t = fanout::server::presence::PresenceConfig::default().window.as_millis() as u64)]
    join_leave_window_ms: u64,
    /// Cluster mode: milliseconds a node's members stay in Redis after it last refreshed them
    /// (every third of this): a dead node's members are gone within it.
    #[arg(long, default_value_t = fanout::server::presence::PresenceConfig::default().ttl.as_millis() as u64)]
    presence_ttl_ms: u64,
    /// Longest `info` claim a token may carry, as compact JSON (presence shows it).
    #[arg(long, default_value_t = fanout::auth::DEFAULT_MAX_INFO_BYTES)]
    max_info_bytes: usize,
    /// This node's name in client ids, presence and /api/info (default: random at start).
    #[arg(long)]
    node_name: Option<String>,
    /// Seconds a revocation (/api/disconnect?revoke=true) refuses the user's older tokens.
    #[arg(long, default_value_t = Config::default().revocation_ttl.as_secs())]
    revocation_ttl_secs: u64,
}

impl ServeArgs {
    fn auth(&self, defaults: &Config) -> Result<fanout::auth::AuthConfig, String> {
        let mut public_keys = Vec::new();
        for spec in &self.auth_public_key_file {
            let (kid, path) = match spec.split_once('=') {
                Some((kid, path)) => (Some(kid.to_string()), path),
                None => (None, spec.as_str()),
            };
            let pem =
                std::fs::read(path).map_err(|e| format!("--auth-public-key-file {path}: {e}"))?;
            public_keys.push((kid, pem));
        }
        Ok(fanout::auth::AuthConfig {
            hmac_secret: self
                .auth_secret_file
                .as_deref()
                .map(|path| read_secret(path, "--auth-secret-file"))
                .transpose()?,
            public_keys,
            audience: self.auth_audience.clone(),
            issuer: self.auth_issuer.clone(),
            api_key: self
                .api_key_file
                .as_deref()
                .map(|path| read_secret(path, "--api-key-file"))
                .transpose()?,
            anonymous_subscribe: self.anonymous_sub.clone(),
            anonymous_publish: self.anonymous_pub.clone(),
            timeout: Duration::from_secs(self.auth_timeout_secs),
            expiry_grace: Duration::from_secs(self.auth_expiry_grace_secs),
            max_token_bytes: if self.max_token_bytes == 0 {
                defaults.auth.max_token_bytes
            } else {
                self.max_token_bytes
            },
            max_info_bytes: self.max_info_bytes,
        })
    }

    /// The listen port's TLS, with its certificates read (a missing or bad file refuses to
    /// start, saying which).
    fn tls(&self) -> Result<Option<fanout::tls::ServerTls>, String> {
        if self.tls_cert.is_empty() {
            return Ok(None);
        }
        if self.tls_cert.len() != self.tls_key.len() {
            return Err(format!(
                "{} --tls-cert but {} --tls-key: give one key per certificate",
                self.tls_cert.len(),
                self.tls_key.len()
            ));
        }
        let files: Vec<_> = self
            .tls_cert
            .iter()
            .zip(&self.tls_key)
            .map(|(cert, key)| fanout::tls::CertFiles { cert: cert.clone(), key: key.clone() })
            .collect();
        fanout::tls::ServerTls::load(&files).map(Some).map_err(|e| format!("TLS: {e}"))
    }

    /// The TLS client configuration for `rediss://` servers (`None` when none is).
    fn redis_tls(&self) -> Result<Option<std::sync::Arc<rustls::ClientConfig>>, String> {
        let servers = self.redis.iter().chain(&self.redis_cluster);
        if !servers.clone().any(|server| server.tls) {
            if self.redis_tls_ca_file.is_some() || self.redis_tls_cert.is_some() {
                return Err(
                    "--redis-tls-* given but no --redis or --redis-cluster URL is rediss://".into(),
                );
            }
            return Ok(None);
        }
        let identity = self.redis_tls_cert.as_deref().zip(self.redis_tls_key.as_deref());
        fanout::tls::client_config(self.redis_tls_ca_file.as_deref(), identity)
            .map(Some)
            .map_err(|e| format!("rediss: {e}"))
    }

    pub fn config(&self) -> Result<Config, String> {
        let defaults = Config::default();
        let redis_tls = self.redis_tls()?;
        let upstream = match self.upstream.is_empty() {
            true => None,
            false => {
                let token = self
                    .upstream_token_file
                    .as_deref()
                    .map(|path| read_secret(path, "--upstream-token-file"))
                    .transpose()?
                    .map(String::from_utf8)
                    .transpose()
                    .map_err(|_| "--upstream-token-file: the token is not UTF-8".to_string())?;
                Some(fanout::cluster::ClusterConfig {
                    upstream_token: token,
                    upstream_token_file: self.upstream_token_file.clone(),
                    command_timeout: Duration::from_millis(self.upstream_timeout_ms.max(10)),
                    ..fanout::cluster::ClusterConfig::upstream(self.upstream.clone())
                })
            }
        };
        Ok(Config {
            listen: self.listen,
            workers: self.workers.unwrap_or(defaults.workers),
            pin_cores: !self.no_pin,
            max_connections: self.max_connections.unwrap_or(defaults.max_connections),
            max_frame_bytes: self.max_frame_bytes,
            max_query_bytes: self.max_query_bytes,
            write_queue_cap_bytes: self.write_queue_cap_bytes,
            ring_slots: self.ring_slots,
            socket_send_buffer_bytes: self.socket_send_buffer_bytes,
            max_channels: self.max_channels,
            max_subscriptions_per_connection: self.max_subscriptions,
            max_patterns_per_connection: self.max_patterns,
            max_pattern_tokens: self.max_pattern_tokens,
            ping_interval: Duration::from_secs(self.ping_interval_secs),
            ping_timeout: Duration::from_secs(self.ping_timeout_secs),
            stats_interval: Duration::from_secs(self.stats_interval_secs),
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            listen_backlog: defaults.listen_backlog,
            coalesce: Duration::from_millis(self.coalesce_ms),
            history_messages: self.history_messages,
            history_bytes_per_channel: self.history_bytes_per_channel,
            history_age: Duration::from_secs(self.history_age_secs),
            history_total_bytes: self.history_total_bytes,
            data_dir: self.data_dir.clone(),
            cluster: upstream.or_else(|| {
                (!self.redis.is_empty() || !self.redis_cluster.is_empty()).then(|| {
                    fanout::cluster::ClusterConfig {
                        redis: if self.redis_cluster.is_empty() {
                            self.redis.clone()
                        } else {
                            self.redis_cluster.clone()
                        },
                        redis_cluster: !self.redis_cluster.is_empty(),
                        key_prefix: self.redis_prefix.clone(),
                        key_ttl: Duration::from_secs(self.redis_key_ttl_secs.max(1)),
                        command_timeout: Duration::from_millis(self.redis_timeout_ms.max(10)),
                        probe_interval: Duration::from_secs(1),
                        name_lease: Duration::from_millis(self.redis_name_lease_ms.max(300)),
                        tls: redis_tls,
                        upstream: Vec::new(),
                        upstream_token: None,
                        upstream_token_file: None,
                    }
                })
            }),
            multicast: self
                .multicast
                .map(|group| fanout::cluster::MulticastConfig { group, mtu: self.multicast_mtu }),
            fsync: match self.fsync.as_str() {
                "always" => FsyncPolicy::Always,
                "never" => FsyncPolicy::Never,
                _ => FsyncPolicy::Interval(Duration::from_millis(self.fsync_interval_ms)),
            },
            segment_bytes: self.segment_bytes,
            max_open_segments: self.max_open_segments,
            ws_echo: self.ws_echo,
            http_head_timeout: Duration::from_secs(self.http_head_timeout_secs),
            debug_panic_on_publish_to: self.debug_panic_on_publish_to.clone(),
            presence: fanout::server::presence::PresenceConfig {
                presence: self.presence.clone(),
                join_leave: self.join_leave.clone(),
                max_members: self.presence_max_members,
                window: Duration::from_millis(self.join_leave_window_ms),
                ttl: Duration::from_millis(self.presence_ttl_ms.max(300)),
            },
            node_name: self.node_name.clone(),
            // From the file's [[namespace]] tables (`Resolved::config`).
            namespaces: Vec::new(),
            revocation_ttl: Duration::from_secs(self.revocation_ttl_secs),
            auth: self.auth(&defaults)?,
            allow_anonymous: self.allow_anonymous,
            tls: self.tls()?,
            tls_only: self.tls_only,
            allowed_origins: self.allowed_origins.clone(),
            private_metrics: self.private_metrics,
            limits: fanout::config::Limits {
                publishes_per_sec: self.max_publishes_per_sec,
                subscribes_per_sec: self.max_subscribes_per_sec,
                auth_failures: self.max_auth_failures,
                connections_per_ip: self.max_connections_per_ip,
            },
        })
    }
}
