//! The floor for chat-shaped load: the least a pub/sub server can do per delivery. Std only,
//! blocking sockets, no history, no epoll: a PUB takes the channel's lock, counts its offset,
//! formats the MSG line once and write(2)s it to each subscriber, one write per subscriber per
//! message. The accepting thread reads each connection's first line: a subscriber (`SUB`) is
//! registered and needs no thread of its own (publishers write to it); any other connection
//! gets a thread (tens of thousands of threads would run into the kernel's map limit). It speaks just enough of fanout's text protocol for
//! `fanout load --protocol text`: `SUB <channel>` (answered `OK SUB <channel>`), `PUB <channel>
//! <payload>`, `PING` (answered `PONG`); anything else is ignored.
//!
//! Not a benchmark of fanout: `scripts/bench-chat.sh` builds it (`cargo bench --bench floor
//! --no-run`) and runs it as a server beside fanout and redis-server.
//!
//!   floor --listen 127.0.0.1:7500

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

#[derive(Default)]
struct Channel {
    offset: u64,
    subscribers: Vec<Arc<TcpStream>>,
}

type Channels = Arc<Mutex<HashMap<Vec<u8>, Channel>>>;

/// Handles one connection's lines until it closes; with `first_only`, returns after the first
/// one, true when it subscribed (the connection then needs nothing more from its reader).
fn serve(
    stream: &Arc<TcpStream>,
    reader: &mut BufReader<TcpStream>,
    channels: &Channels,
    first_only: bool,
) -> std::io::Result<bool> {
    let mut line = Vec::with_capacity(256);
    let mut out = Vec::with_capacity(256);
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(false);
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        let (word, rest) = match text.iter().position(|&b| b == b' ') {
            Some(space) => (&text[..space], &text[space + 1..]),
            None => (text, &[][..]),
        };
        match word {
            b"SUB" => {
                let mut channels = channels.lock().unwrap_or_else(|p| p.into_inner());
                channels.entry(rest.to_vec()).or_default().subscribers.push(stream.clone());
                drop(channels);
                out.clear();
                out.extend_from_slice(b"OK SUB ");
                out.extend_from_slice(rest);
                out.extend_from_slice(b"\r\n");
                (&**stream).write_all(&out)?;
                if first_only {
                    return Ok(true);
                }
            }
            b"PUB" => {
                let split = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
                let (name, payload) = (&rest[..split], rest.get(split + 1..).unwrap_or(&[]));
                let mut channels = channels.lock().unwrap_or_else(|p| p.into_inner());
                let channel = channels.entry(name.to_vec()).or_default();
                channel.offset += 1;
                out.clear();
                out.extend_from_slice(b"MSG ");
                out.extend_from_slice(name);
                out.extend_from_slice(format!(" {} ", channel.offset).as_bytes());
                out.extend_from_slice(payload);
                out.extend_from_slice(b"\r\n");
                // One write per subscriber per message; a subscriber that went away is dropped.
                channel.subscribers.retain(|subscriber| (&**subscriber).write_all(&out).is_ok());
            }
            b"PING" => (&**stream).write_all(b"PONG\r\n")?,
            _ => {}
        }
        if first_only {
            return Ok(false);
        }
    }
}

fn main() {
    let mut args = std::env::args().skip_while(|a| a != "--listen").skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:7500".into());
    let listener = TcpListener::bind(&listen).unwrap_or_else(|e| panic!("bind {listen}: {e}"));
    // std listens with a backlog of 128: a storm of thousands of connects would wait out SYN
    // retries. Listening again raises it (the kernel caps it at net.core.somaxconn).
    // SAFETY: listen(2) on the descriptor the listener owns and keeps open.
    unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 4096) };
    eprintln!("floor listening on {listen}");
    let channels: Channels = Arc::default();
    for stream in listener.incoming().flatten() {
        let Ok(reading) = stream.try_clone() else { continue };
        let _ = stream.set_nodelay(true);
        let stream = Arc::new(stream);
        let mut reader = BufReader::with_capacity(16 * 1024, reading);
        match serve(&stream, &mut reader, &channels, true) {
            Ok(true) | Err(_) => continue,
            Ok(false) => {}
        }
        let channels = channels.clone();
        let spawned = thread::Builder::new().stack_size(256 * 1024).spawn(move || {
            let _ = serve(&stream, &mut reader, &channels, false);
        });
        if let Err(e) = spawned {
            eprintln!("floor: cannot spawn a connection thread: {e}");
        }
    }
}
