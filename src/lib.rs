//! fanout: a pub/sub broadcast server for very many long-lived connections.
//!
//! ```text
//!            SO_REUSEPORT listener per worker (the kernel spreads accepts)
//!                 |                    |
//!   core 0: Worker (mio Poll)   core 1: Worker ...
//!     Slab<Conn>                  Slab<Conn>
//!     Index: channel -> this worker's subscribers
//!        | PUB (offset assigned under the channel's lock)   ^ drain from own cursor
//!        v                                                  |
//!   ======== server::ring::Ring<Arc<Message>> (lock-free, seq-stamped slots) ========
//!        ^ then wake the other workers (coalescing mio::Waker)
//! ```
//!
//! Threads: one per worker, each owning its listener, connections and index outright; the only
//! shared state is the ring, the channel and name registries (looked up when a worker meets a name
//! it has not cached, and by sweeps; each channel's mutex guards its offset counter and history
//! log, taken once per publish and per replay page; with history on, a publish also takes the
//! server-wide retention order's lock), the policy a reload swaps, per-worker counters and
//! histograms, and the wakers. With `--data-dir`, one storage thread owns
//! every history file:
//!
//! ```text
//!   workers --(crossbeam-channel: appends, under the channel's lock)--> storage thread
//!   workers <--(crossbeam-channel per worker + its Waker: durable acks)-- storage thread
//! ```
//!
//! Protocols: every connection has a wire format (`protocol::Format`), sniffed from its first
//! bytes (a TLS handshake record, then inside it or in plaintext: the binary preface, a Redis
//! RESP array or inline command, a text line, or an HTTP request) or chosen by its HTTP request (WebSocket
//! JSON or binary, Server-Sent Events, plain HTTP for publish and long-poll). Fan-out encodes each
//! channel's batch once per format in use and shares it, so a browser costs what a TCP client
//! costs; `server::worker::web` holds what only the browser protocols need.
//!
//! Access control (`auth`): a connection's permissions come from a verified token (or the API
//! key, or the anonymous patterns) and are checked when it subscribes, publishes or claims a name,
//! never per delivery.
//!
//! The main thread only starts the server and waits for a signal. See the README's design
//! section for the data flow and the invariants.

#![deny(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![cfg_attr(test, deny(warnings))]

pub mod auth;
pub mod client;
pub mod cluster;
pub mod config;
pub mod history;
pub mod namespace;
pub mod protocol;
pub mod server;
pub mod sys;
pub mod tls;

pub use config::Config;
pub use server::stats::Stats;
pub use server::{ReloadError, Server, ServerHandle, StartError};
