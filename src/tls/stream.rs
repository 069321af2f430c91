//! A client's TLS connection over a socket, blocking or not: `Read` gives application data and
//! `Write` takes it, as the plain socket did, so the broker's Redis links, the load generator
//! and the Rust client speak TLS by wrapping their socket.
//!
//! On a non-blocking socket `WouldBlock` means what it means there: nothing now, wait for
//! readiness. Bytes `write` took may still be encrypted in rustls (at most its 64 KiB buffer
//! limit): the owner calls `flush` when the socket is writable until `wants_write` is false.

use std::io::{self, Read, Write};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::ClientConnection;

/// TLS over `S`.
#[derive(Debug)]
pub struct TlsStream<S> {
    tls: ClientConnection,
    socket: S,
}

impl<S: Read + Write> TlsStream<S> {
    /// Starts a handshake with `server_name` (checked against the server's certificate) over
    /// a connected (or connecting) socket; it proceeds as the stream is read and written.
    pub fn new(
        config: Arc<rustls::ClientConfig>,
        server_name: &str,
        socket: S,
    ) -> Result<TlsStream<S>, rustls::Error> {
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|_| rustls::Error::General(format!("{server_name:?} is not a server name")))?;
        Ok(TlsStream { tls: ClientConnection::new(config, name)?, socket })
    }

    /// The socket underneath (to register it, set options, shut it down).
    pub fn socket(&self) -> &S {
        &self.socket
    }

    /// The socket underneath, mutably (mio registration).
    pub fn socket_mut(&mut self) -> &mut S {
        &mut self.socket
    }

    /// Encrypted bytes wait for the socket.
    pub fn wants_write(&self) -> bool {
        self.tls.wants_write()
    }

    /// The handshake resumed an earlier session (no certificate, no signature).
    pub fn was_resumed(&self) -> bool {
        matches!(self.tls.handshake_kind(), Some(rustls::HandshakeKind::Resumed))
    }

    /// True until the handshake is complete.
    pub fn is_handshaking(&self) -> bool {
        self.tls.is_handshaking()
    }

    /// Blocks until the handshake is done (on a blocking socket); a failure is `InvalidData`
    /// with rustls's reason.
    pub fn complete_handshake(&mut self) -> io::Result<()> {
        while self.tls.is_handshaking() {
            if let Err(e) = self.tls.complete_io(&mut self.socket) {
                // rustls's alert (why the certificate was refused) is worth one try.
                let _ = self.push();
                return Err(e);
            }
        }
        self.push()
    }

    /// Writes encrypted bytes until none wait or the socket blocks (`WouldBlock`).
    fn push(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.socket) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl<S: Read + Write> Read for TlsStream<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                // No plaintext yet, the connection open: more records are needed.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            // Handshake messages (and alerts) go out before waiting on the peer's answer.
            match self.push() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            match self.tls.read_tls(&mut self.socket) {
                // The socket's EOF: rustls's reader then says whether the peer ended the stream
                // (close_notify: `Ok(0)`) or it was cut (`UnexpectedEof`).
                Ok(0) => return self.tls.reader().read(buf),
                Ok(_) => {
                    if let Err(e) = self.tls.process_new_packets() {
                        // rustls queued an alert saying why; it is worth one try.
                        let _ = self.push();
                        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl<S: Read + Write> Write for TlsStream<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.push() {
            Ok(()) => {}
            // Still under rustls's buffer limit: take more (it goes out on `flush`).
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        let taken = self.tls.writer().write(buf)?;
        if taken == 0 && !buf.is_empty() {
            // rustls's buffer is full and the socket takes nothing.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        match self.push() {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.push()?;
        self.socket.flush()
    }
}

/// A socket that speaks TLS or not, read and written the same way either way.
#[derive(Debug)]
pub enum Socket<S> {
    /// Plaintext.
    Plain(S),
    /// TLS over the socket.
    Tls(Box<TlsStream<S>>),
}

impl<S: Read + Write> Socket<S> {
    /// `socket` as is, or with a TLS handshake to `server_name` under way when `tls` is given.
    pub fn new(
        socket: S,
        tls: Option<(&Arc<rustls::ClientConfig>, &str)>,
    ) -> io::Result<Socket<S>> {
        match tls {
            None => Ok(Socket::Plain(socket)),
            Some((config, server_name)) => TlsStream::new(config.clone(), server_name, socket)
                .map(|tls| Socket::Tls(Box::new(tls)))
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e)),
        }
    }

    /// The socket underneath.
    pub fn socket(&self) -> &S {
        match self {
            Socket::Plain(socket) => socket,
            Socket::Tls(tls) => tls.socket(),
        }
    }

    /// The socket underneath, mutably (to register it with a poll).
    pub fn socket_mut(&mut self) -> &mut S {
        match self {
            Socket::Plain(socket) => socket,
            Socket::Tls(tls) => tls.socket_mut(),
        }
    }

    /// Encrypted bytes wait for the socket (`flush` when it is writable).
    pub fn wants_write(&self) -> bool {
        matches!(self, Socket::Tls(tls) if tls.wants_write())
    }

    /// A read may leave application data behind in rustls after returning less than asked:
    /// with edge-triggered readiness, read until `WouldBlock`.
    pub fn is_tls(&self) -> bool {
        matches!(self, Socket::Tls(_))
    }
}

impl<S: Read + Write> Read for Socket<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Plain(socket) => socket.read(buf),
            Socket::Tls(tls) => tls.read(buf),
        }
    }
}

impl<S: Read + Write> Write for Socket<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Plain(socket) => socket.write(buf),
            Socket::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Socket::Plain(socket) => socket.flush(),
            Socket::Tls(tls) => tls.flush(),
        }
    }
}
