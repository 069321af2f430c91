//! One connection to Redis: a non-blocking socket on the broker's poll, an output buffer of
//! pipelined commands, and an input buffer parsed into RESP values with `protocol::resp`.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use bytes::{BufMut, BytesMut};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::protocol::resp::{self, Value};

#[derive(Debug)]
pub(super) struct Link {
    stream: TcpStream,
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
    pub fn connect(
        addr: SocketAddr,
        token: Token,
        registry: &Registry,
        max_bulk: usize,
    ) -> io::Result<Link> {
        let mut stream = TcpStream::connect(addr)?;
        registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
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
        if let Some(e) = self.stream.take_error()? {
            return Err(e);
        }
        match self.stream.peer_addr() {
            Ok(_) => {
                self.connecting = false;
                self.stream.set_nodelay(true)?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Queues one command (an array of bulk strings).
    pub fn command(&mut self, args: &[&[u8]]) {
        let out = &mut self.out;
        out.put_u8(b'*');
        put_decimal(out, args.len());
        for arg in args {
            out.put_u8(b'$');
            put_decimal(out, arg.len());
            out.put_slice(arg);
            out.put_slice(b"\r\n");
        }
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Writes what is queued (once connected); registers for WRITABLE when the kernel buffer
    /// fills.
    pub fn flush(&mut self, registry: &Registry) -> io::Result<()> {
        if !self.ready()? {
            return Ok(());
        }
        while !self.out.is_empty() {
            match self.stream.write(&self.out) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    let _ = self.out.split_to(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !self.want_write {
                        self.want_write = true;
                        registry.reregister(
                            &mut self.stream,
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
            registry.reregister(&mut self.stream, self.token, Interest::READABLE)?;
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
        let _ = registry.deregister(&mut self.stream);
    }
}

fn put_decimal(out: &mut BytesMut, n: usize) {
    out.put_slice(n.to_string().as_bytes());
    out.put_slice(b"\r\n");
}
