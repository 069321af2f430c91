//! One connection to Redis: a non-blocking socket (plain, or TLS for `rediss://`) on the
//! broker's poll, an output buffer of pipelined commands, and an input buffer parsed into RESP
//! values with `protocol::resp`.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::broker::topology::SlotRange;
use super::RedisEndpoint;
use crate::protocol::resp::{self, Value};
use crate::tls::Socket;

#[derive(Debug)]
pub(super) struct Link {
    stream: Socket<TcpStream>,
    token: Token,
    out: BytesMut,
    input: Vec<u8>,
    /// WRITABLE is registered (connecting, or the kernel buffer was full).
    want_write: bool,
    /// The connect has not completed yet: commands queue until it has.
    connecting: bool,
    max_bulk: usize,
}

impl Link {
    /// Starts connecting to `addr` without waiting (the broker's thread never blocks on a
    /// connect: a server that does not answer is given up on by the command timeout, since the
    /// commands queued meanwhile go unanswered). Registered for READABLE and WRITABLE; the
    /// connect completes on the first event (`ready`).
    /// With `tls`, the link speaks TLS, its handshake under way with the first commands.
    pub fn connect(
        addr: SocketAddr,
        tls: Option<(&Arc<rustls::ClientConfig>, &str)>,
        token: Token,
        registry: &Registry,
        max_bulk: usize,
    ) -> io::Result<Link> {
        let mut tcp = TcpStream::connect(addr)?;
        registry.register(&mut tcp, token, Interest::READABLE | Interest::WRITABLE)?;
        let stream = Socket::new(tcp, tls)?;
        Ok(Link {
            stream,
            token,
            out: BytesMut::with_capacity(16 * 1024),
            input: Vec::new(),
            want_write: true,
            connecting: true,
            max_bulk,
        })
    }

    /// Completes a connect in progress: `Ok(true)` once connected, `Ok(false)` while it is still
    /// under way, `Err` when it failed (refused, unreachable).
    fn ready(&mut self) -> io::Result<bool> {
        if !self.connecting {
            return Ok(true);
        }
        let tcp = self.stream.socket_mut();
        if let Some(e) = tcp.take_error()? {
            return Err(e);
        }
        match tcp.peer_addr() {
            Ok(_) => {
                self.connecting = false;
                tcp.set_nodelay(true)?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Queues one command (an array of bulk strings).
    pub fn command(&mut self, args: &[&[u8]]) {
        resp::put_command(&mut self.out, args);
    }

    /// Queues one command that `write` encodes itself (`resp::put_array_header`, then each
    /// argument): a command too long to gather as a slice of arguments first.
    pub fn command_with(&mut self, write: impl FnOnce(&mut BytesMut)) {
        write(&mut self.out);
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty() || self.stream.wants_write()
    }

    /// Writes what is queued (once connected); registers for WRITABLE when the kernel buffer
    /// fills.
    pub fn flush(&mut self, registry: &Registry) -> io::Result<()> {
        if !self.ready()? {
            return Ok(());
        }
        loop {
            // With TLS, `write` takes bytes into rustls and `flush` pushes what it encrypted.
            let written = if self.out.is_empty() {
                if !self.stream.wants_write() {
                    break;
                }
                self.stream.flush().map(|()| 0)
            } else {
                self.stream.write(&self.out)
            };
            match written {
                Ok(0) if !self.out.is_empty() => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    let _ = self.out.split_to(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !self.want_write {
                        self.want_write = true;
                        registry.reregister(
                            self.stream.socket_mut(),
                            self.token,
                            Interest::READABLE | Interest::WRITABLE,
                        )?;
                    }
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.want_write {
            self.want_write = false;
            registry.reregister(self.stream.socket_mut(), self.token, Interest::READABLE)?;
        }
        if self.out.capacity() > 1 << 20 {
            self.out = BytesMut::with_capacity(16 * 1024);
        }
        Ok(())
    }

    /// Reads what has arrived, up to `budget` bytes, and hands each complete value to `each`.
    /// Returns whether more may be waiting (the budget ran out before the socket did: with
    /// edge-triggered readiness no new event comes for it, so the caller reads again). An error
    /// (the peer closed, a malformed reply) means the link is dead.
    pub fn read(&mut self, budget: usize, mut each: impl FnMut(Value)) -> io::Result<bool> {
        if !self.ready()? {
            return Ok(false);
        }
        let mut chunk = [0u8; 64 * 1024];
        let mut read = 0;
        let more = loop {
            if read >= budget {
                break true;
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed by Redis"))
                }
                Ok(n) => {
                    read += n;
                    self.input.extend_from_slice(&chunk[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        let mut at = 0;
        while at < self.input.len() {
            match resp::parse_value(&self.input[at..], self.max_bulk) {
                Ok(Some((value, used))) => {
                    at += used;
                    each(value);
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad reply: {e}"),
                    ))
                }
            }
        }
        self.input.drain(..at);
        if self.input.is_empty() && self.input.capacity() > 1 << 20 {
            self.input = Vec::new();
        }
        Ok(more)
    }

    pub fn deregister(&mut self, registry: &Registry) {
        let _ = registry.deregister(self.stream.socket_mut());
    }
}

/// Redis Cluster: the slot map (`CLUSTER SLOTS`). Blocking (a connect with a timeout, one round
/// trip): called on a helper thread, never the broker's (`BrokerThread::discover`).
pub(super) fn read_slot_map(
    seed: &RedisEndpoint,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> io::Result<Vec<SlotRange>> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(seed.host.as_str(), seed.port))?
        .next()
        .ok_or_else(|| invalid("no address".into()))?;
    let timeout = std::time::Duration::from_millis(500);
    let tcp = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    let tls = if seed.tls { tls.map(|config| (config, seed.host.as_str())) } else { None };
    let mut stream = Socket::new(tcp, tls)?;
    let mut request = BytesMut::new();
    let mut command = |args: &[&[u8]]| resp::put_command(&mut request, args);
    let mut expected = 1;
    if let Some(password) = &seed.password {
        match &seed.user {
            Some(user) => command(&[b"AUTH", user.as_bytes(), password.as_bytes()]),
            None => command(&[b"AUTH", password.as_bytes()]),
        }
        expected += 1;
    }
    command(&[b"CLUSTER", b"SLOTS"]);
    stream.write_all(&request)?;
    stream.flush()?;
    let mut input = Vec::new();
    let mut replies = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    while replies.len() < expected {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(invalid("closed".into()));
        }
        input.extend_from_slice(&chunk[..n]);
        while let Some((value, used)) = crate::protocol::resp::parse_value(&input, 1 << 20)
            .map_err(|e| invalid(e.to_string()))?
        {
            input.drain(..used);
            replies.push(value);
        }
    }
    let Some(Value::Array(Some(ranges))) = replies.pop() else {
        return Err(invalid(format!("CLUSTER SLOTS answered {:?}", replies)));
    };
    let number = |v: &Value| match v {
        Value::Integer(n) if (0..=65535).contains(n) => Some(*n as u16),
        _ => None,
    };
    let mut map = Vec::new();
    for range in ranges {
        let Value::Array(Some(parts)) = range else { continue };
        let (Some(first), Some(last)) =
            (parts.first().and_then(number), parts.get(1).and_then(number))
        else {
            continue;
        };
        let Some(Value::Array(Some(master))) = parts.get(2) else { continue };
        let host = match master.first() {
            Some(Value::Bulk(Some(host))) => String::from_utf8_lossy(host).into_owned(),
            _ => String::new(),
        };
        let Some(port) = master.get(1).and_then(number) else { continue };
        map.push((first, last, host, port));
    }
    Ok(map)
}
