//! The `fanout` command: `serve`, `pub`, `sub`, `load`, `token`. Thin: everything lives in the
//! library, but for `serve`'s command line and config file (`cli`).

mod cli;
// The load generator is the binary's, not the library's API (an embedder of the server has no
// use for it); it drives the server through the library's public codecs and client only.
mod load;

use std::ffi::OsString;
use std::io::{self, BufRead, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use log::{error, info, warn};

use cli::read_secret;
use cli::serve::ServeArgs;
use fanout::client::{Client, Publisher, ServerAddr, Subscriber};
use fanout::Server;

/// See Cargo.toml: glibc's malloc paused reactors when a million channels came and went.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc asks for transparent huge pages on its arenas and gives memory back to the system
/// 10 ms after it is freed: a thread that allocates what others free (the cluster's broker: every
/// message from Redis) then faults in and zeroes fresh 2 MiB pages over and over. Through Redis
/// over 1,000 channels that was 12% of the node's CPU in `clear_page_erms`; without huge pages
/// the node used 8% less CPU and 14% less memory (the README's cluster section). The same as
/// `MIMALLOC_ALLOW_THP=0`, for this process only.
fn no_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes one integer flag and touches no memory of ours.
    #[cfg(target_os = "linux")]
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

#[derive(Parser, Debug)]
#[command(
    name = "fanout",
    version,
    about = "Pub/sub broadcast server for very many long-lived connections"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Publish MESSAGE to CHANNEL, or each line of stdin when MESSAGE is left out.
    Pub {
        /// Channel (`*` broadcasts, `@name` sends to one named client).
        channel: String,
        /// The payload; without it, every line of stdin is published.
        message: Option<String>,
        /// Server address, `host:port` or `tls://host:port`; repeat it to give a cluster's nodes
        /// (the client moves to the next one when one fails, and resumes there).
        #[arg(long = "server", default_value = "127.0.0.1:7400")]
        servers: Vec<ServerAddr>,
        /// CA certificates (PEM) a `tls://` server's certificate must chain to (default: the
        /// system's trust roots).
        #[arg(long, value_name = "FILE")]
        ca_file: Option<std::path::PathBuf>,
        #[command(flatten)]
        token: TokenArgs,
    },
    /// Print every message of the channels as it arrives: `<channel> <offset> <payload>`; with
    /// --presence, who is there and who joins and leaves: `<channel> presence|join|leave ...`.
    Sub {
        /// Channels to subscribe to.
        #[arg(required_unless_present = "presence")]
        channels: Vec<String>,
        /// Also show this channel's presence (on connect) and its joins and leaves (repeat; the
        /// server needs --presence / --join-leave for it).
        #[arg(long)]
        presence: Vec<String>,
        /// Also claim this client name (messages to `@NAME` arrive too).
        #[arg(long)]
        name: Option<String>,
        /// First receive every retained message after this offset (the last one you saw).
        #[arg(long, conflicts_with = "from_start")]
        from: Option<u64>,
        /// First receive every retained message.
        #[arg(long)]
        from_start: bool,
        /// Server address, `host:port` or `tls://host:port`; repeat it to give a cluster's nodes
        /// (the client moves to the next one when one fails, and resumes there).
        #[arg(long = "server", default_value = "127.0.0.1:7400")]
        servers: Vec<ServerAddr>,
        /// CA certificates (PEM) a `tls://` server's certificate must chain to (default: the
        /// system's trust roots).
        #[arg(long, value_name = "FILE")]
        ca_file: Option<std::path::PathBuf>,
        #[command(flatten)]
        token: TokenArgs,
    },
    /// Mint an HS256 token for a server started with --auth-secret-file (operators and tests;
    /// production tokens come from your backend). Prints the token.
    Token {
        /// The server's --auth-secret-file.
        #[arg(long)]
        secret_file: std::path::PathBuf,
        /// The client's identity (`sub`): the only name it may claim, its inbox `@SUB`.
        #[arg(long)]
        sub: Option<String>,
        /// A channel pattern it may subscribe to (repeat for more): `room.*`, `user.42.>`,
        /// `comments`.
        #[arg(long = "allow-sub")]
        allow_sub: Vec<String>,
        /// A channel pattern it may publish to (repeat for more); `*` alone is the broadcast
        /// channel, `@*` every inbox.
        #[arg(long = "allow-pub")]
        allow_pub: Vec<String>,
        /// Lifetime: seconds, or with a unit: 90s, 15m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Load generator: N subscribers, publishers, a report of deliveries/s, latency and losses.
    Load(LoadArgs),
}

#[derive(Args, Debug)]
struct LoadArgs {
    /// Server address, `host:port` or `tls://host:port`.
    #[arg(long, default_value = "127.0.0.1:7400")]
    server: ServerAddr,
    /// Subscribers connect here instead (repeat it for a cluster's nodes: subscriber i goes to
    /// the i-th modulo their number; publishers stay on --server).
    #[arg(long = "subscribe-to", value_name = "ADDR")]
    subscribe_to: Vec<ServerAddr>,
    /// CA certificates (PEM) a `tls://` server's certificate must chain to (default: the
    /// system's trust roots).
    #[arg(long, value_name = "FILE")]
    ca_file: Option<std::path::PathBuf>,
    /// Wire protocol: binary or text (fanout TCP), ws-binary or ws-json (fanout WebSocket
    /// subscribers; publishers use binary TCP), resp (Redis), nats.
    #[arg(long, default_value = "binary")]
    protocol: load::Protocol,
    /// Subscribers speak these instead (repeat for a mixed crowd: subscriber i speaks the
    /// i-th modulo their number; e.g. binary, text, ws-json); publishers keep --protocol.
    #[arg(long = "subscriber-protocol", value_name = "PROTOCOL")]
    subscriber_protocols: Vec<load::Protocol>,
    /// Channel names are this prefix and a number.
    #[arg(long, default_value = "load")]
    channel_prefix: String,
    /// Subscribers per process (default: what RLIMIT_NOFILE allows); more are spread over child
    /// processes.
    #[arg(long, default_value_t = 0)]
    max_per_process: usize,
    /// Internal: run as a child process holding subscribers for a parent `fanout load`.
    #[arg(long, hide = true)]
    child: bool,
    /// Internal: global index of the first subscriber (child processes).
    #[arg(long, hide = true, default_value_t = 0)]
    first_subscriber: usize,
    /// Internal: source address for subscriber connections (child processes).
    #[arg(long, hide = true)]
    source_ip: Option<std::net::Ipv4Addr>,
    /// Subscriber connections.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Channels (subscriber i takes channel i % channels; messages are spread the same way).
    #[arg(long, default_value_t = 1)]
    channels: usize,
    /// Publisher connections.
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Messages in all (0: just connect, subscribe and report the server's memory).
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Payload bytes (at least 16: a timestamp, publisher and sequence).
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,
    /// Messages per second over all publishers; 0 for as fast as --window allows.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Messages in flight at most (averaged over subscribers) when --rate is 0.
    #[arg(long, default_value_t = 2000)]
    window: u64,
    /// Subscriber event-loop threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// PID of the server, to report its CPU time and resident memory; repeat it for several
    /// processes (a hub and its edges, a node per 20,000 connections): their sums are reported.
    #[arg(long)]
    server_pid: Vec<u32>,
    /// Write the latency distribution here in HdrHistogram's percentile format.
    #[arg(long)]
    hgrm: Option<std::path::PathBuf>,
    /// Seconds to wait for stragglers after the last publish.
    #[arg(long, default_value_t = 10)]
    drain_timeout_secs: u64,
    /// No live line every second.
    #[arg(long)]
    quiet: bool,
    /// Hold the subscribers this many seconds after they are all subscribed, before publishing.
    #[arg(long, default_value_t = 0)]
    hold_secs: u64,
    /// The server's --auth-secret-file: every connection first authenticates with a token of its
    /// own, minted from it (fanout protocols).
    #[arg(long)]
    token_secret_file: Option<std::path::PathBuf>,
    /// Subscribers use wildcard subscriptions: PSUB with their channel's name as the pattern
    /// (fanout protocols), to measure the pattern path against SUB.
    #[arg(long)]
    pattern_subscribe: bool,
}

/// How `fanout pub` and `fanout sub` authenticate.
#[derive(Args, Debug)]
struct TokenArgs {
    /// A token (or the API key) to authenticate with.
    #[arg(long, conflicts_with = "token_file")]
    token: Option<String>,
    /// Read the token from this file.
    #[arg(long)]
    token_file: Option<std::path::PathBuf>,
}

impl TokenArgs {
    fn token(&self) -> Result<Option<String>, String> {
        match (&self.token, &self.token_file) {
            (Some(token), _) => Ok(Some(token.clone())),
            (None, Some(path)) => read_secret(path, "--token-file")
                .and_then(|bytes| {
                    String::from_utf8(bytes).map_err(|_| "--token-file: not UTF-8".into())
                })
                .map(Some),
            (None, None) => Ok(None),
        }
    }
}

/// `90s`, `15m`, `1h`, `7d`, or plain seconds.
fn parse_ttl(text: &str) -> Result<u64, String> {
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => text.split_at(at),
        None => (text, "s"),
    };
    let value = fanout::protocol::fields::number(digits.as_bytes())
        .ok_or_else(|| format!("--ttl {text}: expected a number and s, m, h or d"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("--ttl {text}: the unit is s, m, h or d")),
    };
    Ok(value.saturating_mul(scale))
}

fn main() -> ExitCode {
    no_transparent_huge_pages();
    cli::logging::init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // clap quotes a value it refuses; a Redis URL's password must not reach a terminal log.
        Err(e) => {
            let rendered = match std::io::IsTerminal::is_terminal(&io::stderr()) {
                true => e.render().ansi().to_string(),
                false => e.render().to_string(),
            };
            let text = cli::config_file::mask_passwords(&rendered);
            match e.use_stderr() {
                true => eprint!("{text}"),
                false => print!("{text}"),
            }
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    let result = match cli.command {
        // Read again with the file its --config names (see `cli::config_file`).
        Command::Serve(_) => serve(&std::env::args_os().skip(2).collect::<Vec<_>>()),
        Command::Pub { channel, message, servers, ca_file, token } => {
            token.token().map_err(Into::into).and_then(|token| {
                let tls = client_tls(&servers, ca_file.as_deref())?;
                publish(&servers, tls, &channel, message, token)
            })
        }
        Command::Sub { channels, presence, name, servers, ca_file, from, from_start, token } => {
            token.token().map_err(Into::into).and_then(|token| {
                let from = from.or(from_start.then_some(0));
                let tls = client_tls(&servers, ca_file.as_deref())?;
                subscribe(&servers, tls, &channels, &presence, name, from, token)
            })
        }
        Command::Token { secret_file, sub, allow_sub, allow_pub, ttl } => {
            mint(&secret_file, sub.as_deref(), &allow_sub, &allow_pub, &ttl)
        }
        Command::Load(args) => load(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `fanout serve`, given its arguments (after `serve`): the flags and the `--config` file read
/// together, re-read on SIGHUP.
fn serve(argv: &[OsString]) -> Result<(), Box<dyn std::error::Error>> {
    let resolved = cli::config_file::resolve(argv)?;
    let config = resolved.config()?;
    if resolved.args.print_config {
        let worked_out = [
            ("workers", config.workers.to_string()),
            ("max-connections", config.max_connections.to_string()),
        ];
        print!(
            "{}",
            cli::config_file::render(&resolved, &worked_out, resolved.args.config.as_deref())
        );
        return Ok(());
    }
    cli::logging::set_filter(&resolved.log_filter());
    if let Some(file) = &resolved.args.config {
        info!("configuration from {} and the command line", file.display());
    }
    // Block SIGINT/SIGTERM/SIGHUP before the workers exist so that they inherit the mask and the
    // signal is taken here, synchronously, rather than in a handler.
    fanout::sys::block_signals()?;
    let nofile = fanout::sys::raise_nofile_limit();
    match &nofile {
        Ok(limit) if limit.after > limit.before => {
            info!("RLIMIT_NOFILE raised from {} to {} (the hard limit)", limit.before, limit.after)
        }
        Ok(limit) => info!("RLIMIT_NOFILE kept at {} (the hard limit)", limit.after),
        Err(e) => warn!("cannot raise RLIMIT_NOFILE: {e}"),
    }
    // Only a limit the operator asked for is worth a warning (the default million is not a
    // request on a machine that allows fewer descriptors).
    if let (Some(asked), Ok(limit)) = (resolved.args.max_connections, &nofile) {
        if (limit.after as usize) < asked {
            let limit = limit.after;
            warn!(
                "--max-connections {asked} is more than RLIMIT_NOFILE ({limit}) allows: accepts will fail with EMFILE first (raise the hard limit: LimitNOFILE= in a systemd unit, see scripts/fanout.service)"
            );
        }
    }
    if config.ws_echo {
        warn!(
            "--ws-echo: /echo echoes WebSocket messages (for conformance testing, not production)"
        );
    }
    let server = Server::start(config).map_err(|e| resolved.in_settings(e.to_string()))?;
    let mut running = resolved;
    let signal = loop {
        let signal = fanout::sys::wait_for_signal()?;
        if signal != libc::SIGHUP {
            break signal;
        }
        reload(&server, argv, &mut running);
    };
    info!("signal {signal} received, shutting down");
    server.shutdown();
    Ok(())
}

/// SIGHUP: reads the flags and the file again, with every key and certificate file they name,
/// and hands the server what may change while it runs. Anything wrong leaves all as it was.
fn reload(
    server: &fanout::ServerHandle,
    argv: &[OsString],
    running: &mut cli::config_file::Resolved,
) {
    use cli::config_file::{changed, resolve, RELOADABLE};
    let fresh = resolve(argv).and_then(|fresh| fresh.config().map(|config| (fresh, config)));
    let (mut fresh, config) = match fresh {
        Ok(fresh) => fresh,
        Err(e) => return warn!("SIGHUP: configuration not reloaded, the running one stays: {e}"),
    };
    if let Err(e) = server.reload(&config) {
        return warn!("SIGHUP: configuration not reloaded, the running one stays: {e}");
    }
    cli::logging::set_filter(&fresh.log_filter());
    let keys: Vec<String> = changed(running, &fresh).into_iter().map(str::to_string).collect();
    let (applied, waiting): (Vec<String>, Vec<String>) =
        keys.into_iter().partition(|key| RELOADABLE.contains(&key.as_str()));
    for key in &waiting {
        warn!("SIGHUP: `{key}` changed, which takes a restart; the running value stays");
        // Still the running value, so that the next reload says it again.
        if let Some(value) = running.values.get(key) {
            fresh.values.insert(key.clone(), value.clone());
        }
    }
    if fresh.namespaces != running.namespaces {
        warn!("SIGHUP: the namespaces changed, which takes a restart; the running ones stay");
        fresh.namespaces = running.namespaces.clone();
    }
    let what = match applied.is_empty() {
        true => String::new(),
        false => format!("; changed: {}", applied.join(", ")),
    };
    info!("SIGHUP: configuration reloaded (key and certificate files re-read{what})");
    *running = fresh;
}

fn mint(
    secret_file: &std::path::Path,
    subject: Option<&str>,
    subscribe: &[String],
    publish: &[String],
    ttl: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let secret = read_secret(secret_file, "--secret-file")?;
    if secret.is_empty() {
        return Err("--secret-file is empty".into());
    }
    for pattern in subscribe.iter().chain(publish) {
        fanout::auth::Pattern::parse(pattern)?;
    }
    if let Some(subject) = subject {
        fanout::protocol::validate_client_name(subject.as_bytes())
            .map_err(|e| format!("--sub {subject}: {e}"))?;
    }
    let expires = fanout::auth::unix_now_secs() + parse_ttl(ttl)?;
    println!("{}", fanout::auth::mint_hs256(&secret, subject, subscribe, publish, expires)?);
    Ok(())
}

/// The TLS configuration for `tls://` servers (`None` when none is): `ca_file`'s roots, or the
/// system's.
fn client_tls(
    servers: &[ServerAddr],
    ca_file: Option<&std::path::Path>,
) -> Result<Option<std::sync::Arc<rustls::ClientConfig>>, Box<dyn std::error::Error>> {
    if !servers.iter().any(|s| s.tls_name.is_some()) {
        return Ok(None);
    }
    Ok(Some(fanout::tls::client_config(ca_file, None)?))
}

fn publish(
    servers: &[ServerAddr],
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    channel: &str,
    message: Option<String>,
    token: Option<String>,
) -> Result<(), Box<dyn std::error::Error>> {
    // Acknowledged publishes; unacknowledged ones are kept (up to 10,000) and sent again after a
    // reconnect, so a server restart loses nothing from stdin.
    let mut publisher = Publisher::new(servers, 10_000).with_token(token).with_tls(tls);
    match message {
        Some(message) => publisher.publish(channel, message.as_bytes())?,
        None => {
            for line in io::stdin().lock().lines() {
                publisher.publish(channel, line?.as_bytes())?;
            }
        }
    }
    publisher.flush()?;
    Ok(())
}

fn subscribe(
    servers: &[ServerAddr],
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    channels: &[String],
    presence: &[String],
    name: Option<String>,
    from: Option<u64>,
    token: Option<String>,
) -> Result<(), Box<dyn std::error::Error>> {
    use fanout::client::{Delivery, Event};
    let stdout = io::stdout();
    let user = |user: &str| if user.is_empty() { "-".to_string() } else { user.to_string() };
    let print = |delivery: Delivery| -> io::Result<()> {
        let mut out = stdout.lock();
        match delivery {
            Delivery::Message(message) => {
                write!(out, "{} {} ", message.channel, message.offset)?;
                out.write_all(&message.payload)?;
                out.write_all(b"\n")?;
            }
            Delivery::Presence(channel, p) => {
                writeln!(out, "{channel} presence {} clients, {} users", p.clients, p.users)?;
                for m in p.members {
                    writeln!(
                        out,
                        "{channel} member {} {} {} {}",
                        user(&m.user),
                        m.client,
                        m.node,
                        m.info
                    )?;
                }
            }
            Delivery::Event(Event::Join { channel, member }) => {
                writeln!(
                    out,
                    "{channel} join {} {} {}",
                    user(&member.user),
                    member.client,
                    member.info
                )?;
            }
            Delivery::Event(Event::Leave { channel, member }) => {
                writeln!(out, "{channel} leave {} {}", user(&member.user), member.client)?;
            }
            Delivery::Event(Event::Unsubscribed { channel, reason }) => {
                writeln!(out, "{channel} unsubscribed by the server: {reason}")?;
            }
        }
        out.flush()
    };
    let channels: Vec<String> = channels.iter().chain(presence).cloned().collect();
    if let Some(name) = name {
        // A named client is one connection: no resume (a name is claimed per connection).
        let mut client = Client::open(&servers[0], tls.as_ref())?;
        if let Some(token) = &token {
            client.authenticate(token)?;
        }
        client.claim_name(&name)?;
        for channel in &channels {
            match from {
                None => client.subscribe(channel)?,
                Some(after) => {
                    client.subscribe_from(channel, after, None, false)?;
                }
            }
        }
        for channel in presence {
            print(Delivery::Presence(channel.clone(), client.presence(channel)?))?;
        }
        loop {
            if let Some(delivery) = client.next_delivery(None)? {
                print(delivery)?;
            }
        }
    }
    // Otherwise: reconnect with backoff and resume every channel from its last offset.
    let mut subscriber = Subscriber::new(servers, &channels, from)
        .with_token(token)
        .with_presence(presence)
        .with_tls(tls);
    loop {
        print(subscriber.next_delivery()?)?;
    }
}

fn load(args: LoadArgs) -> Result<(), Box<dyn std::error::Error>> {
    let unsubscribed = args.subscribers > 0 && args.channels > args.subscribers;
    if unsubscribed && !args.child && !args.pattern_subscribe {
        // Subscriber i takes channel i % channels: the window would wait forever for deliveries
        // of messages to channels nobody subscribes to.
        return Err(format!(
            "{} channels but {} subscribers: every channel needs a subscriber (subscriber i takes channel i % channels)",
            args.channels, args.subscribers
        )
        .into());
    }
    let servers: Vec<ServerAddr> =
        args.subscribe_to.iter().chain(std::iter::once(&args.server)).cloned().collect();
    let tls = client_tls(&servers, args.ca_file.as_deref())?.map(|tls| (tls, args.ca_file.clone()));
    let config = load::LoadConfig {
        server: args.server,
        subscribe_to: args.subscribe_to.clone(),
        tls,
        protocol: args.protocol,
        subscriber_protocols: args.subscriber_protocols,
        channel_prefix: args.channel_prefix,
        max_per_process: args.max_per_process,
        first_subscriber: args.first_subscriber,
        source: args.source_ip,
        subscribers: args.subscribers,
        channels: args.channels,
        publishers: args.publishers,
        messages: args.messages,
        payload_bytes: args.payload_bytes,
        rate: args.rate,
        window: args.window,
        threads: args.threads,
        drain_timeout: Duration::from_secs(args.drain_timeout_secs),
        server_pids: args.server_pid,
        live: !args.quiet,
        hold: Duration::from_secs(args.hold_secs),
        pattern: args.pattern_subscribe,
        token_secret: match (&args.token_secret_file, std::env::var("FANOUT_LOAD_TOKEN_SECRET")) {
            (Some(path), _) => Some(read_secret(path, "--token-secret-file")?),
            (None, Ok(secret)) if args.child => Some(secret.into_bytes()),
            _ => None,
        },
        ..Default::default()
    };
    if config.token_secret.as_ref().is_some_and(Vec::is_empty) {
        return Err("--token-secret-file is empty".into());
    }
    if args.child {
        return Ok(load::child_main(&config)?);
    }
    let report = load::run(&config)?;
    print!("{report}");
    println!("{}", report.json());
    if let Some(path) = args.hgrm {
        std::fs::write(path, report.hgrm())?;
    }
    if report.lost + report.duplicated + report.reordered > 0 {
        return Err(format!(
            "{} lost, {} duplicated, {} reordered",
            report.lost, report.duplicated, report.reordered
        )
        .into());
    }
    Ok(())
}
