//! One accepted TLS connection, driven by the worker (rustls's unbuffered API).
//!
//! rustls's buffered connection keeps a 4 KiB receive buffer and its own send and plaintext
//! queues for life: ~7.5 KiB per idle connection, measured. Here rustls only holds its state
//! (~3.2 KiB after the handshake, its keys included), and the buffers are the worker's:
//! - records are decrypted from the bytes a read returned (the worker's scratch buffer); only an
//!   incomplete record is kept, in `received`, as the plaintext codecs keep an incomplete frame;
//! - frames are encrypted from the connection's plaintext write queue into the worker's buffer
//!   and written from there; only what the socket does not take is kept, in `sealed`, and the
//!   next batch is encrypted once the socket has taken it: the encrypted backlog is one batch at
//!   most (counted against the queue's cap), and an idle connection holds no buffer.
//!
//! Encode-once holds: a channel's frame is built once and shared by every queue; each TLS
//! connection encrypts its own copy of the bytes on its way out, as it must (its own keys).

use std::io::{self, Write};
use std::sync::Arc;

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError};

/// Most bytes of incomplete records kept for a connection: the largest record with its header,
/// plus a handshake message rustls is still joining (it refuses those past 64 KiB itself).
const MAX_RECEIVED_BYTES: usize = 96 * 1024;

/// What a read's bytes gave, beside the application data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// The peer sent close_notify: it sends nothing more.
    pub peer_closed: bool,
}

/// What to encrypt when rustls lets us.
enum Outgoing<'a> {
    Nothing,
    /// Application data, encrypted onto the given buffer.
    Data(&'a [u8], &'a mut Vec<u8>),
    /// close_notify, onto the unsent output.
    CloseNotify,
}

/// Where a pass over the received bytes stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The handshake needs more from the peer.
    Blocked,
    /// Application data may be sent (and the outgoing item, if any, was encrypted).
    Ready,
    /// Both sides sent close_notify.
    Closed,
}

/// One TLS connection's state and its incomplete input and unsent output.
pub struct ServerSession {
    tls: UnbufferedServerConnection,
    /// Bytes of records not complete yet (empty, unallocated, between records).
    received: Vec<u8>,
    /// Encrypted bytes (handshake, alerts, application data) not written yet, from `sealed_at`.
    sealed: Vec<u8>,
    sealed_at: usize,
    close_notify_sealed: bool,
    /// The connection failed (a TLS error, or its handshake timed out): nothing more is
    /// decrypted or encrypted, only what is unsent (an alert) goes out.
    failed: bool,
}

impl std::fmt::Debug for ServerSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSession")
            .field("handshaking", &self.tls.is_handshaking())
            .field("received", &self.received.len())
            .field("unsent", &self.unsent())
            .finish()
    }
}

impl ServerSession {
    /// A session for a connection whose first byte was a TLS handshake record.
    pub fn new(config: &Arc<rustls::ServerConfig>) -> Result<ServerSession, rustls::Error> {
        Ok(ServerSession {
            tls: UnbufferedServerConnection::new(config.clone())?,
            received: Vec::new(),
            sealed: Vec::new(),
            sealed_at: 0,
            close_notify_sealed: false,
            failed: false,
        })
    }

    /// True until the handshake is complete (application data cannot be sent yet).
    pub fn is_handshaking(&self) -> bool {
        self.tls.is_handshaking()
    }

    /// True once the connection failed (`receive` returned an error, or `fail`).
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Marks the connection failed for a reason of the worker's (a handshake past its deadline).
    pub fn fail(&mut self) {
        self.failed = true;
    }

    /// The negotiated protocol version, for logs ("TLSv1_3").
    pub fn version(&self) -> Option<rustls::ProtocolVersion> {
        self.tls.protocol_version()
    }

    /// Decrypts what a read returned (`incoming`, which may be decrypted in place), appending
    /// application data to `plain`; handshake answers go to the unsent output.
    pub fn receive(
        &mut self,
        incoming: &mut [u8],
        plain: &mut Vec<u8>,
    ) -> Result<Received, rustls::Error> {
        let received = self.receive_records(incoming, plain);
        if received.is_err() {
            self.failed = true;
        }
        received
    }

    fn receive_records(
        &mut self,
        incoming: &mut [u8],
        plain: &mut Vec<u8>,
    ) -> Result<Received, rustls::Error> {
        let mut peer_closed = false;
        if self.received.is_empty() {
            let (used, _) =
                self.drive(Input::Fresh(incoming), plain, Outgoing::Nothing, &mut peer_closed)?;
            self.received.extend_from_slice(&incoming[used..]);
        } else {
            self.received.extend_from_slice(incoming);
            let (used, _) = self.drive(Input::Held, plain, Outgoing::Nothing, &mut peer_closed)?;
            self.received.drain(..used);
            if self.received.is_empty() {
                self.received = Vec::new();
            }
        }
        if self.received.len() > MAX_RECEIVED_BYTES {
            return Err(rustls::Error::General(format!(
                "{} bytes of an incomplete TLS record",
                self.received.len()
            )));
        }
        Ok(Received { peer_closed })
    }

    /// Encrypts `plain` onto `out` (the worker's buffer: a connection whose socket takes it all
    /// never holds an output buffer of its own). Returns false (nothing taken) while the
    /// handshake is not complete. Anything rustls had to send first (a key update, a ticket) is
    /// then in the unsent output: `out` goes after it (`keep_unsent`).
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<bool, rustls::Error> {
        if self.failed {
            return Err(rustls::Error::General("the TLS connection failed".into()));
        }
        self.send(Outgoing::Data(plain, out))
    }

    /// Keeps encrypted bytes the socket did not take, after any unsent output.
    pub fn keep_unsent(&mut self, rest: &[u8]) {
        self.sealed.extend_from_slice(rest);
    }

    /// Queues close_notify (once), after the unsent output.
    pub fn seal_close_notify(&mut self) -> Result<(), rustls::Error> {
        if !self.close_notify_sealed && !self.is_handshaking() && !self.failed {
            self.close_notify_sealed = self.send(Outgoing::CloseNotify)?;
        }
        Ok(())
    }

    /// Encrypted bytes not yet written to the socket.
    pub fn unsent(&self) -> usize {
        self.sealed.len() - self.sealed_at
    }

    /// Writes unsent output until done or the socket blocks; returns the bytes written
    /// (`WouldBlock` only when none could be).
    pub fn write_to(&mut self, socket: &mut impl Write) -> io::Result<usize> {
        let total = write_some(socket, &self.sealed[self.sealed_at..])?;
        self.sealed_at += total;
        if self.sealed_at == self.sealed.len() {
            // Given back at once: only handshakes, alerts and what a full socket left go
            // through here, and a buffer kept past them is memory an idle connection holds.
            self.sealed = Vec::new();
            self.sealed_at = 0;
        }
        Ok(total)
    }

    fn send(&mut self, outgoing: Outgoing<'_>) -> Result<bool, rustls::Error> {
        let mut peer_closed = false;
        let mut plain = Vec::new();
        let was_empty = self.received.is_empty();
        let (used, stop) = self.drive(Input::Held, &mut plain, outgoing, &mut peer_closed)?;
        self.received.drain(..used);
        if was_empty {
            self.received = Vec::new();
        }
        // Nothing unread can come out of a pass over held bytes: `receive` consumed every whole
        // record already.
        debug_assert!(plain.is_empty());
        Ok(stop == Stop::Ready)
    }

    /// Processes records until rustls waits for the peer or may send; encrypts `outgoing` when
    /// it may. Returns the bytes of the input consumed.
    fn drive(
        &mut self,
        input: Input<'_>,
        plain: &mut Vec<u8>,
        mut outgoing: Outgoing<'_>,
        peer_closed: &mut bool,
    ) -> Result<(usize, Stop), rustls::Error> {
        let buffer: &mut [u8] = match input {
            Input::Fresh(bytes) => bytes,
            Input::Held => &mut self.received,
        };
        let mut at = 0;
        loop {
            let status = self.tls.process_tls_records(&mut buffer[at..]);
            let discard = status.discard;
            let state = match status.state {
                Ok(state) => state,
                Err(e) => {
                    // rustls has queued a fatal alert saying why (RFC 8446, 6.2). Asked once
                    // more, it hands a queued record over before it reads any input; asked
                    // twice, it would read the same bad bytes again.
                    at += discard;
                    let again = self.tls.process_tls_records(&mut buffer[at..]);
                    if let Ok(ConnectionState::EncodeTlsData(mut alert)) = again.state {
                        let _ = encode(&mut self.sealed, |out| alert.encode(out));
                    }
                    return Err(e);
                }
            };
            let stop = match state {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        plain.extend_from_slice(record?.payload);
                    }
                    None
                }
                ConnectionState::ReadEarlyData(mut early) => {
                    // Not offered (no early data size is configured); taken as data if sent.
                    while let Some(record) = early.next_record() {
                        plain.extend_from_slice(record?.payload);
                    }
                    None
                }
                ConnectionState::EncodeTlsData(mut data) => {
                    encode(&mut self.sealed, |out| data.encode(out))?;
                    None
                }
                // What was encoded is in `sealed`, written in order before anything after it.
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    None
                }
                ConnectionState::PeerClosed => {
                    *peer_closed = true;
                    None
                }
                ConnectionState::BlockedHandshake => Some(Stop::Blocked),
                ConnectionState::Closed => Some(Stop::Closed),
                ConnectionState::WriteTraffic(mut traffic) => {
                    match std::mem::replace(&mut outgoing, Outgoing::Nothing) {
                        Outgoing::Nothing => {}
                        Outgoing::Data(data, target) => {
                            encrypt(target, data.len(), |out| traffic.encrypt(data, out))?
                        }
                        Outgoing::CloseNotify => {
                            encrypt(&mut self.sealed, 0, |out| traffic.queue_close_notify(out))?
                        }
                    }
                    Some(Stop::Ready)
                }
                _ => Some(Stop::Blocked),
            };
            at += discard;
            if let Some(stop) = stop {
                return Ok((at, stop));
            }
        }
    }
}

/// Which bytes a pass reads records from.
enum Input<'a> {
    /// A read's bytes (nothing was held).
    Fresh(&'a mut [u8]),
    /// `received`.
    Held,
}

/// Writes `bytes` until all are written or the socket blocks; returns how many were written
/// (`WouldBlock` only when none could be).
pub fn write_some(socket: &mut impl Write, bytes: &[u8]) -> io::Result<usize> {
    let mut total = 0;
    while total < bytes.len() {
        match socket.write(&bytes[total..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && total > 0 => break,
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

/// Appends a handshake or alert record to `sealed`.
fn encode(
    sealed: &mut Vec<u8>,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<(), rustls::Error> {
    let required = match write(&mut []) {
        Ok(_) => return Ok(()),
        Err(EncodeError::InsufficientSize(size)) => size.required_size,
        Err(e) => return Err(rustls::Error::General(format!("encoding a TLS record: {e}"))),
    };
    let start = sealed.len();
    sealed.resize(start + required, 0);
    let written = write(&mut sealed[start..])
        .map_err(|e| rustls::Error::General(format!("encoding a TLS record: {e}")))?;
    sealed.truncate(start + written);
    Ok(())
}

/// Appends `len` bytes of application data, encrypted, to `sealed`.
fn encrypt(
    sealed: &mut Vec<u8>,
    len: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) -> Result<(), rustls::Error> {
    // Each record of up to 16 KiB grows by its header, content type, padding and tag: 64 bytes
    // covers TLS 1.2 and 1.3 with every suite rustls offers.
    let mut room = len + (len / 16_384 + 1) * 64;
    for _ in 0..2 {
        let start = sealed.len();
        sealed.resize(start + room, 0);
        match write(&mut sealed[start..]) {
            Ok(written) => {
                sealed.truncate(start + written);
                return Ok(());
            }
            Err(EncryptError::InsufficientSize(size)) => {
                sealed.truncate(start);
                room = size.required_size;
            }
            Err(e) => {
                sealed.truncate(start);
                return Err(rustls::Error::General(format!("encrypting: {e}")));
            }
        }
    }
    Err(rustls::Error::General("encrypting: the output did not fit twice".into()))
}

/// A short name for why a TLS connection failed, for `/metrics` (`tls_failures{reason=...}`).
pub fn failure_reason(error: &rustls::Error) -> &'static str {
    use rustls::Error as E;
    match error {
        E::InvalidMessage(_)
        | E::InappropriateMessage { .. }
        | E::InappropriateHandshakeMessage { .. } => "protocol",
        E::PeerMisbehaved(_) | E::DecryptError => "protocol",
        E::PeerIncompatible(_) | E::NoApplicationProtocol => "incompatible",
        E::AlertReceived(_) => "alert",
        E::NoCertificatesPresented | E::InvalidCertificate(_) => "certificate",
        _ => "other",
    }
}
