//! Starting a server: checking the configuration, binding one SO_REUSEPORT listener per worker,
//! recovering history from disk, and spawning the storage, broker and worker threads.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::Instant;

use log::{info, warn};
use mio::{Poll, Waker};

use super::channels::{ChannelRegistry, NameRegistry};
use super::retention::Appender;
use super::ring::{CachePadded, Ring};
use super::stats::WorkerCounters;
use super::*;
use crate::config::Config;
use crate::history::disk::{self, Faults, StorageCounters, StorageHealth};
use crate::history::Mirror;

impl Server {
    /// Binds one SO_REUSEPORT listener per worker, spawns the workers and returns once they are
    /// ready to accept.
    pub fn start(config: Config) -> Result<ServerHandle, StartError> {
        validate(&config)?;
        let workers = config.workers;
        let policy = policy::Policy::from_config(&config, &config.namespaces)?;
        if policy.auth.is_none() && !config.allow_anonymous && !config.listen.ip().is_loopback() {
            return Err(StartError::Unprotected(config.listen));
        }
        let run = crate::history::new_epoch() as u32;
        let (node, node_key): (Arc<str>, Arc<str>) = match &config.node_name {
            Some(name) => (name.as_str().into(), format!("{name}.{run:08x}").into()),
            // A random name is already this run's.
            None => {
                let name: Arc<str> = format!("{run:08x}").into();
                (name.clone(), name)
            }
        };
        let namespaces = crate::namespace::Namespaces::new(&config.namespaces)
            .map_err(|e| StartError::Config(e.to_string()))?;
        let presence =
            presence::Presence::new(&config.presence, &namespaces).map_err(StartError::Config)?;

        // Our listeners share the port with SO_REUSEPORT, and so would another server's: a plain
        // bind first proves that nobody listens there yet.
        if config.listen.port() != 0 {
            match std::net::TcpListener::bind(config.listen) {
                Ok(probe) => drop(probe),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    return Err(StartError::AddressInUse(config.listen))
                }
                Err(source) => return Err(StartError::Listen { addr: config.listen, source }),
            }
        }
        // Bind the first listener on the configured address (port 0 picks one), then the others
        // on the address the kernel actually gave.
        let first = bind(config.listen, config.listen_backlog)?;
        let local_addr = first
            .local_addr()
            .map_err(|source| StartError::Listen { addr: config.listen, source })?;
        let mut listeners = vec![first];
        for _ in 1..workers {
            listeners.push(bind(local_addr, config.listen_backlog)?);
        }

        let mut polls = Vec::with_capacity(workers);
        let mut signals = Vec::with_capacity(workers);
        for _ in 0..workers {
            let poll = Poll::new().map_err(StartError::Poll)?;
            let waker = Waker::new(poll.registry(), worker::WAKER).map_err(StartError::Poll)?;
            signals.push(WakeSignal { waker, pending: CachePadded(AtomicBool::new(false)) });
            polls.push(poll);
        }

        // A node that sends multicast (not an edge) reads the ring with one more consumer, on a
        // tick of its own (see `multicast::TICK`), not woken by every publish.
        let sends_multicast =
            config.multicast.is_some() && config.cluster.as_ref().is_none_or(|c| c.through_redis());
        let readers = workers + usize::from(sends_multicast);
        let (producer, mut consumers) = Ring::<Item>::with_consumers(config.ring_slots, readers);
        let multicast_consumer = sends_multicast.then(|| consumers.pop()).flatten();
        let mirror = if config.cluster.is_some() { Mirror::Idle } else { Mirror::Standalone };
        let channels =
            ChannelRegistry::new(config.max_channels, config.history_limits(), mirror, workers)
                .with_namespaces(namespaces.clone());
        let broker_parts = match &config.cluster {
            Some(cluster) => {
                Some(crate::cluster::prepare(cluster.clone()).map_err(StartError::Poll)?)
            }
            None => None,
        };
        let (broker, broker_start) = match broker_parts {
            Some((broker, start)) => (Some(broker), Some(start)),
            None => (None, None),
        };
        let mut storage_parts = None;
        if let Some(dir) = &config.data_dir {
            let lock = disk::lock_dir(dir).map_err(|e| {
                StartError::Config(format!("cannot use data directory {}: {e}", dir.display()))
            })?;
            let limits_of = |name: &[u8]| namespaces.history_limits(&channels.history, name);
            let recovered = disk::recover(
                dir,
                limits_of,
                channels.totals(Appender::Startup),
                MAX_STORAGE_BACKLOG,
            )
            .map_err(|e| {
                StartError::Config(format!("cannot read history from {}: {e}", dir.display()))
            })?;
            let mut existing = std::collections::HashMap::new();
            for channel in recovered {
                existing.insert(channel.name.clone(), channel.segments);
                channels.restore(channel.name, channel.log);
            }
            channels.rebuild_retention_order();
            let (sender, receiver) = crossbeam_channel::unbounded();
            let counters = Arc::new(StorageCounters::default());
            let health = Arc::new(StorageHealth::default());
            let faults = Arc::new(Faults::default());
            let options = disk::StorageOptions {
                fsync: config.fsync,
                segment_bytes: config.segment_bytes,
                limits: config.history_limits(),
                namespaces,
                max_open_segments: config.max_open_segments,
            };
            let storage = disk::Storage::new(
                dir,
                options,
                existing,
                counters.clone(),
                health.clone(),
                faults.clone(),
            );
            storage_parts = Some((
                StorageQueue {
                    sender,
                    depth: AtomicU64::new(0),
                    fsync_always: config.fsync == disk::FsyncPolicy::Always,
                    counters,
                    health,
                    faults,
                    _lock: lock,
                },
                storage,
                receiver,
            ));
        }
        let (ack_senders, mut ack_receivers): (Vec<_>, Vec<_>) =
            (0..workers).map(|_| crossbeam_channel::unbounded::<Answer>()).unzip();
        let (storage_queue, storage_thread) = match storage_parts {
            Some((queue, storage, receiver)) => (Some(queue), Some((storage, receiver))),
            None => (None, None),
        };
        let shared = Arc::new(Shared {
            storage: storage_queue,
            ack_senders,
            broker,
            channels,
            names: NameRegistry::default(),
            pattern_census: Default::default(),
            open_connections: AtomicUsize::new(0),
            counters: (0..workers).map(|_| CachePadded(WorkerCounters::default())).collect(),
            histograms: (0..workers).map(|_| CachePadded(Default::default())).collect(),
            signals: signals.into_boxed_slice(),
            shutdown: AtomicBool::new(false),
            quiesced: AtomicUsize::new(0),
            started: Instant::now(),
            started_wall_ms: crate::history::now_ms(),
            policy: policy::CurrentPolicy::new(policy),
            per_ip: Default::default(),
            node,
            node_key,
            presence,
            revoked: Default::default(),
            top_sampled_at: Default::default(),
            config,
        });

        let storage = match storage_thread {
            Some((storage, receiver)) => {
                let shared_for_storage = shared.clone();
                let thread = std::thread::Builder::new()
                    .name("fanout-storage".into())
                    .spawn(move || {
                        crate::sys::abort_on_panic("the storage thread", move || {
                            let shared = shared_for_storage;
                            let Some(queue) = shared.storage.as_ref() else { return };
                            let wake = |worker: usize| shared.wake(worker);
                            storage.run(receiver, shared.ack_senders.clone(), wake, &queue.depth);
                        })
                    })
                    .map_err(StartError::Spawn)?;
                Some(thread)
            }
            None => None,
        };

        let broker_thread = match broker_start {
            Some(unstarted) => {
                let server = ServerForBroker::new(shared.clone());
                let producer = producer.clone();
                let run = move || {
                    if let Some(server) = server {
                        unstarted.run(server, producer)
                    }
                };
                Some(
                    std::thread::Builder::new()
                        .name("fanout-broker".into())
                        .spawn(move || crate::sys::abort_on_panic("the broker thread", run))
                        .map_err(StartError::Spawn)?,
                )
            }
            None => None,
        };

        let mut threads = Vec::with_capacity(workers + 1);
        if let (Some(config), Some(consumer)) = (shared.config.multicast, multicast_consumer) {
            let sender = crate::cluster::multicast::MulticastSender {
                config,
                consumer,
                shared: shared.clone(),
            };
            let thread = std::thread::Builder::new()
                .name("fanout-multicast".into())
                .spawn(move || crate::sys::abort_on_panic("the multicast thread", || sender.run()))
                .map_err(StartError::Spawn)?;
            threads.push(thread);
        }
        let parts = polls
            .into_iter()
            .zip(listeners)
            .zip(consumers)
            .zip(ack_receivers.drain(..))
            .enumerate();
        for (id, (((poll, listener), consumer), acks)) in parts {
            let worker = worker::Worker::new(
                id,
                poll,
                listener,
                producer.clone(),
                consumer,
                acks,
                shared.clone(),
            )
            .map_err(StartError::Poll)?;
            let thread = std::thread::Builder::new()
                .name(format!("fanout-worker-{id}"))
                .spawn(move || {
                    crate::sys::abort_on_panic(&format!("worker {id}"), move || worker.run())
                })
                .map_err(StartError::Spawn)?;
            threads.push(thread);
        }
        info!(
            "listening on {local_addr} with {workers} worker(s), ring of {} slots, max {} connections",
            producer.ring().capacity(),
            shared.config.max_connections
        );
        let (policy, _) = shared.policy.get();
        match &policy.auth {
            Some(auth) => info!(
                "access control on: tokens{}, anonymous {}; limits {:?}",
                if shared.config.auth.api_key.is_some() { " and an API key" } else { "" },
                if auth.anonymous().is_some() {
                    "may use some channels"
                } else {
                    "must authenticate"
                },
                policy.limits
            ),
            None if !local_addr.ip().is_loopback() => {
                warn!("access control is off on {local_addr} (--allow-anonymous): anyone who reaches it may do anything")
            }
            None => {}
        }
        // Plaintext on a reachable address: tokens and the API key cross the network readable.
        // Right behind a TLS-terminating proxy on a private network; said once either way.
        if !local_addr.ip().is_loopback() {
            match (&shared.config.tls, shared.config.tls_only) {
                (None, _) => warn!(
                    "{local_addr} speaks plaintext only: tokens and the API key cross the network readable unless TLS is terminated in front (--tls-cert/--tls-key serve it here)"
                ),
                (Some(_), false) => info!(
                    "TLS and plaintext on {local_addr} (a connection's first byte tells which); --tls-only refuses plaintext"
                ),
                (Some(_), true) => info!("TLS only on {local_addr}"),
            }
        } else if shared.config.tls.is_some() {
            info!(
                "TLS{} on {local_addr}",
                if shared.config.tls_only { " only" } else { " and plaintext" }
            );
        }
        Ok(ServerHandle { local_addr, shared, threads, storage, broker: broker_thread })
    }
}

fn validate(config: &Config) -> Result<(), StartError> {
    let fail = |why: String| Err(StartError::Config(why));
    if config.workers == 0 {
        return fail("workers must be at least 1".into());
    }
    // Subscription indexes keep a connection's slab key in 32 bits (`index::Subscriber`).
    if config.max_connections > u32::MAX as usize {
        return fail(format!("max connections must be at most {}", u32::MAX));
    }
    if let Some(cluster) = &config.cluster {
        if cluster.tls.is_none() && cluster.redis.iter().any(|server| server.tls) {
            // Never a silent fallback to plaintext (with the password in it).
            return fail(
                "a rediss:// server needs a TLS configuration (ClusterConfig::tls)".into(),
            );
        }
    }
    if config.max_frame_bytes < 16 || config.max_frame_bytes > u32::MAX as usize {
        return fail(format!("max frame bytes must be between 16 and {}", u32::MAX));
    }
    // A message frame is the payload plus channel and headers (up to ~300 bytes); a queue cap
    // below one maximal frame would disconnect every subscriber of the first large message.
    if config.write_queue_cap_bytes < config.max_frame_bytes + 512 {
        return fail(format!(
            "write queue cap ({} bytes) must exceed max frame bytes ({}) by at least 512",
            config.write_queue_cap_bytes, config.max_frame_bytes
        ));
    }
    if config.max_query_bytes != 0 && config.max_query_bytes < config.max_frame_bytes {
        return fail(format!(
            "max query bytes ({}) must be at least max frame bytes ({}): a PUBLISH of the largest payload must fit",
            config.max_query_bytes, config.max_frame_bytes
        ));
    }
    // Closing a namespace to clients without a token means nothing when no client has one:
    // refused rather than left to look like protection.
    let closing = config
        .namespaces
        .iter()
        .find(|n| n.anonymous_subscribe == Some(false) || n.anonymous_publish == Some(false));
    if let (Some(namespace), false) = (closing, config.auth.enabled()) {
        return fail(format!(
            "namespace {:?} closes itself to clients without a token (anonymous-sub/anonymous-pub = false), but access control is off, so every client is without one: give --auth-secret-file, --auth-public-key-file or --api-key-file (or --anonymous-sub for what stays open)",
            namespace.pattern
        ));
    }
    if config.private_metrics && config.auth.api_key.is_none() {
        return fail("--private-metrics needs --api-key-file: the API key is what opens /metrics and /healthz".into());
    }
    if config.write_queue_cap_bytes > (u32::MAX / 2) as usize {
        return fail(format!("write queue cap must be at most {} bytes", u32::MAX / 2));
    }
    if let Some(why) = config.multicast.as_ref().and_then(|m| m.unfit()) {
        return fail(why);
    }
    if let Some(cluster) = &config.cluster {
        if config.data_dir.is_some() && cluster.through_redis() {
            return fail("--data-dir and --redis do not go together: in a cluster, Redis keeps the history (use its appendonly persistence), and each node's memory mirrors it".into());
        }
        if config.data_dir.is_some() {
            return fail("--data-dir and --upstream do not go together: the upstream keeps the history, and an edge's memory mirrors it".into());
        }
        if cluster.redis.is_empty() && cluster.through_redis() {
            return fail("cluster mode needs at least one Redis server".into());
        }
        if !cluster.redis.is_empty() && !cluster.through_redis() {
            return fail("--upstream and --redis do not go together: an edge joins through its upstream, which may itself be joined through Redis".into());
        }
    }
    if let Some(name) = &config.node_name {
        if name.is_empty() || name.len() > 64 || name.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return fail(format!(
                "node name {name:?}: 1 to 64 bytes without spaces or control characters"
            ));
        }
    }
    if config.max_connections == 0 || config.max_channels < 2 {
        return fail("max connections must be at least 1 and max channels at least 2".into());
    }
    Ok(())
}

fn bind(addr: SocketAddr, backlog: u32) -> Result<TcpListener, StartError> {
    crate::sys::reuseport_listener(addr, backlog)
        .map_err(|source| StartError::Listen { addr, source })
}
