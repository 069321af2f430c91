//! UDP multicast from a hub to its edges in one LAN (`--multicast GROUP:PORT` on both): the
//! hub sends each channel's messages once, as offset-stamped datagrams, however many edges
//! listen; an edge delivers from them while they are contiguous, and reads anything missing
//! from its upstream by offset (a resume: the NAK). Multicast is a fast path that may lose,
//! reorder or repeat anything, and so loses nothing: the TCP upstream stays the record.
//!
//! ```text
//!   hub workers ──► ring ──► multicast thread (a ring consumer) ──UDP──► GROUP:PORT
//!                                                                        │ every edge
//!   edge: datagram ─► mirror: next offset? deliver : SUB with resume over TCP (repair)
//!         heartbeat ─► mirror: the latest offset is ahead of the log? repair (a lost tail)
//! ```
//!
//! A datagram (big-endian):
//! - `FMC`, kind `R`, epoch (8), first offset (8), count (2), channel length (1), channel, then
//!   per message its length (4) and payload: consecutive offsets of one channel. A message too
//!   large for the datagram is sent as length `0xffff_ffff` and no payload: the edge reads it
//!   over TCP.
//! - `FMC`, kind `H`, epoch (8), latest offset (8), count 0, channel length, channel: sent every
//!   `HEARTBEAT_EVERY` for each channel that had messages in the last `HEARTBEAT_FOR`, so that
//!   a lost last datagram is noticed.
//!
//! Inboxes (private) and `*` (every upstream connection receives it) are not multicast.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use crate::server::channels::{is_notice, EPOCH_NOTICE};
use crate::server::ring::Consumer;
use crate::server::Item;

const MAGIC: &[u8; 3] = b"FMC";
const KIND_RUN: u8 = b'R';
const KIND_HEARTBEAT: u8 = b'H';
/// Magic, kind, epoch, first offset, count, channel length.
const HEADER: usize = 3 + 1 + 8 + 8 + 2 + 1;
/// The length that says "too large for a datagram: read it over TCP".
const NOT_CARRIED: u32 = u32::MAX;
/// How often each recently active channel's latest offset is sent.
pub(crate) const HEARTBEAT_EVERY: Duration = Duration::from_millis(100);
/// How long after its last message a channel's heartbeat goes on.
const HEARTBEAT_FOR: Duration = Duration::from_secs(10);
/// How often the hub's multicast thread reads the ring. It is not woken by each publish: an
/// eventfd write per publish and a thread switch per message cost the hub more than the
/// datagrams did; a tick gathers what came meanwhile into full datagrams, for at most this
/// much delay.
const TICK: Duration = Duration::from_millis(1);
/// Datagrams of the multicast group an edge reads per turn.
pub(crate) const READ_DATAGRAMS: usize = 256;

/// `--multicast GROUP:PORT` and the datagram size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MulticastConfig {
    /// An IPv4 multicast group (224.0.0.0/4) and port.
    pub group: SocketAddrV4,
    /// Bytes of a datagram at most (its UDP payload): the path MTU less IP and UDP headers.
    pub mtu: usize,
}

impl MulticastConfig {
    /// Why the configuration cannot be used, if it cannot.
    pub fn unfit(&self) -> Option<String> {
        if !self.group.ip().is_multicast() {
            return Some(format!(
                "--multicast {}: not a multicast group (224.0.0.0/4)",
                self.group
            ));
        }
        if !(HEADER + 256 + 4..=65_000).contains(&self.mtu) {
            return Some(format!("--multicast-mtu {}: between 536 and 65000", self.mtu));
        }
        None
    }
}

/// A datagram from the group, borrowed from the receive buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Datagram<'a> {
    /// Messages at consecutive offsets from `first` (`None`: too large, read it over TCP).
    Run { channel: &'a [u8], epoch: u64, first: u64, payloads: Vec<Option<&'a [u8]>> },
    /// The channel's latest offset.
    Heartbeat { channel: &'a [u8], epoch: u64, last: u64 },
}

impl<'a> Datagram<'a> {
    /// `None` for anything malformed (a LAN is not to be trusted with a node's memory).
    pub fn decode(bytes: &'a [u8]) -> Option<Datagram<'a>> {
        let header = bytes.get(..HEADER)?;
        if &header[..3] != MAGIC {
            return None;
        }
        let u64_at =
            |at: usize| u64::from_be_bytes(header[at..at + 8].try_into().unwrap_or([0; 8]));
        let (epoch, first) = (u64_at(4), u64_at(12));
        let count = u16::from_be_bytes([header[20], header[21]]) as usize;
        let end = HEADER + header[22] as usize;
        let channel = bytes.get(HEADER..end).filter(|c| !c.is_empty())?;
        let mut rest = &bytes[end..];
        match header[3] {
            KIND_HEARTBEAT => (count == 0 && rest.is_empty()).then_some(Datagram::Heartbeat {
                channel,
                epoch,
                last: first,
            }),
            KIND_RUN if count > 0 => {
                let mut payloads = Vec::with_capacity(count);
                for _ in 0..count {
                    let (len, tail) = rest.split_first_chunk::<4>()?;
                    let len = u32::from_be_bytes(*len);
                    if len == NOT_CARRIED {
                        payloads.push(None);
                        rest = tail;
                        continue;
                    }
                    let (payload, tail) = tail.split_at_checked(len as usize)?;
                    payloads.push(Some(payload));
                    rest = tail;
                }
                first.checked_add(count as u64)?;
                rest.is_empty().then_some(Datagram::Run { channel, epoch, first, payloads })
            }
            _ => None,
        }
    }
}

/// Builds run datagrams of one channel's consecutive messages, up to `mtu` bytes each.
pub(crate) struct RunBuilder {
    buffer: Vec<u8>,
    mtu: usize,
    count: u16,
    /// The channel, epoch and next offset of the run being built.
    open: Option<(Arc<[u8]>, u64, u64)>,
}

impl RunBuilder {
    pub fn new(mtu: usize) -> Self {
        RunBuilder { buffer: Vec::with_capacity(mtu), mtu, count: 0, open: None }
    }

    /// Adds a message; `emit` gets each datagram completed by it.
    pub fn add(
        &mut self,
        channel: &Arc<[u8]>,
        epoch: u64,
        offset: u64,
        payload: &[u8],
        mut emit: impl FnMut(&[u8]),
    ) {
        let continues = self
            .open
            .as_ref()
            .is_some_and(|(c, e, next)| Arc::ptr_eq(c, channel) && *e == epoch && *next == offset);
        let fits = 4 + payload.len() <= self.mtu - HEADER - channel.len();
        let room = self.buffer.len() + 4 + if fits { payload.len() } else { 0 } <= self.mtu;
        if !continues || !room || self.count == u16::MAX {
            self.flush(&mut emit);
            self.start(KIND_RUN, channel, epoch, offset);
            self.open = Some((channel.clone(), epoch, offset));
        }
        match fits {
            true => {
                self.buffer.extend_from_slice(&(payload.len() as u32).to_be_bytes());
                self.buffer.extend_from_slice(payload);
            }
            false => self.buffer.extend_from_slice(&NOT_CARRIED.to_be_bytes()),
        }
        self.count += 1;
        if let Some((_, _, next)) = self.open.as_mut() {
            *next = offset.wrapping_add(1);
        }
    }

    /// Emits the run being built, if any.
    pub fn flush(&mut self, emit: &mut impl FnMut(&[u8])) {
        if self.open.take().is_some() && self.count > 0 {
            self.buffer[20..22].copy_from_slice(&self.count.to_be_bytes());
            emit(&self.buffer);
        }
        self.buffer.clear();
        self.count = 0;
    }

    fn start(&mut self, kind: u8, channel: &[u8], epoch: u64, first: u64) {
        self.buffer.clear();
        self.buffer.extend_from_slice(MAGIC);
        self.buffer.push(kind);
        self.buffer.extend_from_slice(&epoch.to_be_bytes());
        self.buffer.extend_from_slice(&first.to_be_bytes());
        self.buffer.extend_from_slice(&0u16.to_be_bytes());
        self.buffer.push(channel.len() as u8);
        self.buffer.extend_from_slice(channel);
    }

    /// A heartbeat datagram: `channel`'s latest offset is `last`.
    pub fn heartbeat(channel: &[u8], epoch: u64, last: u64) -> Vec<u8> {
        let mut builder = RunBuilder::new(HEADER + channel.len());
        builder.start(KIND_HEARTBEAT, channel, epoch, last);
        builder.buffer
    }
}

/// An edge's socket on the group (several edges on one host may each have one).
pub(crate) fn join(config: &MulticastConfig) -> io::Result<UdpSocket> {
    // SAFETY: a plain socket(2); the descriptor is owned by the UdpSocket made from it below,
    // or closed here on failure.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket we just made and own; nothing else holds it.
    let socket = unsafe { <UdpSocket as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    crate::sys::share_address(fd)?;
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: config.group.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(Ipv4Addr::UNSPECIFIED).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: bind(2) with a sockaddr_in that outlives the call and its exact size.
    let bound = unsafe {
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if bound != 0 {
        return Err(io::Error::last_os_error());
    }
    socket.join_multicast_v4(config.group.ip(), &Ipv4Addr::UNSPECIFIED)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// The hub's multicast thread: reads the ring as a worker does and sends every topic channel's
/// messages to the group.
pub(crate) struct MulticastSender {
    pub config: MulticastConfig,
    pub consumer: Consumer<Item>,
    pub shared: Arc<crate::server::Shared>,
}

/// A channel multicast lately: its heartbeat goes on until `HEARTBEAT_FOR` after `at`.
struct Recent {
    name: Arc<[u8]>,
    /// The channel's epoch as of the last epoch notice read here (the channel's own may have
    /// moved on since a message entered the ring).
    epoch: u64,
    /// The latest offset sent (0: none yet).
    last: u64,
    at: Instant,
}

impl MulticastSender {
    pub fn run(mut self) {
        let socket = match UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).and_then(|s| {
            s.set_multicast_ttl_v4(1)?;
            s.set_multicast_loop_v4(true)?;
            s.set_nonblocking(true)?;
            Ok(s)
        }) {
            Ok(socket) => socket,
            Err(e) => {
                warn!("multicast: cannot open a socket ({e}); edges read everything over TCP");
                return self.drain_only();
            }
        };
        info!("multicast: sending every channel's messages to {}", self.config.group);
        let group = std::net::SocketAddr::V4(self.config.group);
        let mut runs = RunBuilder::new(self.config.mtu);
        // By channel id: one lookup per message.
        let mut recent: HashMap<u64, Recent> = HashMap::new();
        let mut next_heartbeat = Instant::now() + HEARTBEAT_EVERY;
        let (mut sent, mut dropped) = (0u64, 0u64);
        let mut send = |datagram: &[u8]| match socket.send_to(datagram, group) {
            Ok(_) => sent += 1,
            Err(e) => {
                // Lossy by design: an edge notices and reads it over TCP.
                dropped += 1;
                if dropped.is_power_of_two() {
                    debug!("multicast: {dropped} datagram(s) not sent: {e}");
                }
            }
        };
        // Until nothing more is published and all of it was read (publishers wait for every
        // reader of the ring, this one too).
        while !(self.shared.publishing_stopped() && self.consumer.caught_up()) {
            std::thread::sleep(TICK);
            let now = Instant::now();
            loop {
                let taken = self.consumer.poll(1024, |item: Item| {
                    let channel = &item.channel;
                    let name = &channel.name;
                    if name.first() == Some(&b'@') || &name[..] == b"*" {
                        return;
                    }
                    let entry = recent.entry(channel.id).or_insert_with(|| Recent {
                        name: Arc::from(&name[..]),
                        epoch: channel.epoch(),
                        last: 0,
                        at: now,
                    });
                    if item.offset == EPOCH_NOTICE {
                        entry.epoch = channel.epoch();
                    }
                    if is_notice(item.offset) {
                        return;
                    }
                    (entry.last, entry.at) = (item.offset, now);
                    runs.add(&entry.name, entry.epoch, item.offset, &item.payload, &mut send);
                });
                if taken == 0 {
                    break;
                }
            }
            runs.flush(&mut send);
            if now >= next_heartbeat {
                next_heartbeat = now + HEARTBEAT_EVERY;
                recent.retain(|_, r| now.duration_since(r.at) < HEARTBEAT_FOR);
                for r in recent.values().filter(|r| r.last > 0) {
                    send(&RunBuilder::heartbeat(&r.name, r.epoch, r.last));
                }
            }
        }
        debug!("multicast: stopped after {sent} datagram(s) ({dropped} not sent)");
    }

    /// Without a socket the thread still drains its ring cursor, so it never holds publishers.
    fn drain_only(mut self) {
        while !(self.shared.publishing_stopped() && self.consumer.caught_up()) {
            std::thread::sleep(TICK);
            while self.consumer.poll(1024, |_| {}) > 0 {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs_of(mtu: usize, messages: &[(&str, u64, u64, &[u8])]) -> Vec<Vec<u8>> {
        let mut builder = RunBuilder::new(mtu);
        let mut out = Vec::new();
        let mut names: HashMap<&str, Arc<[u8]>> = HashMap::new();
        for &(channel, epoch, offset, payload) in messages {
            let name =
                names.entry(channel).or_insert_with(|| Arc::from(channel.as_bytes())).clone();
            builder.add(&name, epoch, offset, payload, |d| out.push(d.to_vec()));
        }
        builder.flush(&mut |d: &[u8]| out.push(d.to_vec()));
        out
    }

    #[test]
    fn runs_split_at_channel_epoch_offset_and_mtu_and_decode_back() {
        let big = vec![7u8; 2000];
        let messages: Vec<(&str, u64, u64, &[u8])> = vec![
            ("a", 1, 1, b"x"),
            ("a", 1, 2, b"yy"),
            ("b", 1, 9, b"z"),
            ("b", 1, 11, b"gap"),
            ("b", 2, 12, b"epoch"),
            ("b", 2, 13, &big),
        ];
        let datagrams = runs_of(600, &messages);
        let decoded: Vec<Datagram<'_>> =
            datagrams.iter().map(|d| Datagram::decode(d).unwrap()).collect();
        assert_eq!(
            decoded,
            vec![
                Datagram::Run {
                    channel: b"a",
                    epoch: 1,
                    first: 1,
                    payloads: vec![Some(&b"x"[..]), Some(&b"yy"[..])]
                },
                Datagram::Run {
                    channel: b"b",
                    epoch: 1,
                    first: 9,
                    payloads: vec![Some(&b"z"[..])]
                },
                Datagram::Run {
                    channel: b"b",
                    epoch: 1,
                    first: 11,
                    payloads: vec![Some(&b"gap"[..])]
                },
                Datagram::Run {
                    channel: b"b",
                    epoch: 2,
                    first: 12,
                    payloads: vec![Some(&b"epoch"[..]), None]
                },
            ]
        );
        assert!(datagrams.iter().all(|d| d.len() <= 600));
        // Many small messages fill datagrams up to the MTU, no further.
        let many: Vec<(&str, u64, u64, &[u8])> =
            (1..=500).map(|i| ("c", 1, i, &b"0123456789"[..])).collect();
        let datagrams = runs_of(600, &many);
        let (last, full) = datagrams.split_last().expect("datagrams");
        assert!(full.iter().all(|d| d.len() <= 600 && d.len() > 600 - 14), "full datagrams");
        assert!(last.len() <= 600);
        let offsets: Vec<u64> = datagrams
            .iter()
            .flat_map(|d| match Datagram::decode(d) {
                Some(Datagram::Run { first, payloads, .. }) => {
                    (first..first + payloads.len() as u64).collect::<Vec<_>>()
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(offsets, (1..=500).collect::<Vec<_>>());
    }

    #[test]
    fn heartbeats_and_hostile_datagrams() {
        let beat = RunBuilder::heartbeat(b"room", 5, 42);
        assert_eq!(
            Datagram::decode(&beat),
            Some(Datagram::Heartbeat { channel: b"room", epoch: 5, last: 42 })
        );
        let run = &runs_of(1400, &[("room", 5, 1, b"hello"), ("room", 5, 2, b"")])[0];
        // Every truncation, a trailing byte, another magic or kind, a lying count: refused.
        for cut in 0..run.len() {
            assert_eq!(Datagram::decode(&run[..cut]), None, "cut at {cut}");
        }
        let mut long = run.clone();
        long.push(0);
        assert_eq!(Datagram::decode(&long), None);
        for (at, byte) in [(0, b'X'), (3, b'Q'), (21, 9), (22, 0)] {
            let mut bad = run.clone();
            bad[at] = byte;
            assert_eq!(Datagram::decode(&bad), None, "byte {at}");
        }
        // A run whose offsets would pass u64::MAX.
        let mut overflow = RunBuilder::new(1400);
        let name: Arc<[u8]> = Arc::from(&b"x"[..]);
        let mut out = Vec::new();
        overflow.add(&name, 1, u64::MAX, b"a", |d| out.push(d.to_vec()));
        overflow.flush(&mut |d: &[u8]| out.push(d.to_vec()));
        assert_eq!(Datagram::decode(&out[0]), None);
    }
}
