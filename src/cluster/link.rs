//! One connection to Redis: a non-blocking socket on the broker's poll, an output buffer of
//! pipelined commands, and an input buffer parsed into RESP values with `protocol::resp`.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::protocol::resp::{self, Value};

/// How long connecting to Redis may take (the broker thread waits for it).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug)]
pub(super) struct Link {
    stream: TcpStream,
    token: Token,
    out: BytesMut,
    input: Vec<u8>,
    /// WRITABLE is registered (the kernel buffer was full).
    want_write: bool,
    max_bulk: usize,
}

impl Link {
    /// Connects (blocking, bounded by `CONNECT_TIMEOUT`) and registers for reading.
    pub fn connect(
        host: &str,
        port: u16,
        token: Token,
        registry: &Registry,
        max_bulk: usize,
    ) -> io::Result<Link> {
        let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs()?.collect();
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for addr in addrs {
            match std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    stream.set_nonblocking(true)?;
                    let mut stream = TcpStream::from_std(stream);
                    registry.register(&mut stream, token, Interest::READABLE)?;
                    return Ok(Link {
                        stream,
                        token,
                        out: BytesMut::with_capacity(16 * 1024),
                        input: Vec::new(),
                        want_write: false,
                        max_bulk,
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
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

    /// Writes what is queued; registers for WRITABLE when the kernel buffer fills.
    pub fn flush(&mut self, registry: &Registry) -> io::Result<()> {
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

    /// Reads what has arrived and hands each complete value to `each`. An error (the peer
    /// closed, a malformed reply) means the link is dead.
    pub fn read(&mut self, mut each: impl FnMut(Value)) -> io::Result<()> {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed by Redis"))
                }
                Ok(n) => self.input.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
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
        Ok(())
    }

    pub fn deregister(&mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.stream);
    }
}

fn put_decimal(out: &mut BytesMut, n: usize) {
    out.put_slice(n.to_string().as_bytes());
    out.put_slice(b"\r\n");
}
