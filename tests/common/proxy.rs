//! A TCP relay on a loopback port that a test can pause: while paused it relays nothing either
//! way (a node behind it neither hears its server nor notices that the server went away), as a
//! stopped process or a partition would. Resumed, a connection whose far side closed meanwhile
//! is closed too.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct Relay {
    pub port: u16,
    paused: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    /// Relays every connection to 127.0.0.1:`port`.
    pub fn to(port: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        let local = listener.local_addr().expect("the relay's address");
        let paused = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (paused.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.load(Ordering::Acquire) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)))
                else {
                    continue;
                };
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else { continue };
                    let (p, s) = (p.clone(), s.clone());
                    std::thread::spawn(move || pump(from, to, &p, &s));
                }
            }
        });
        Relay { port: local.port(), paused, stop }
    }

    pub fn pause(&self) {
        self.paused.store(true, Ordering::Release);
    }

    pub fn resume(&self) {
        self.paused.store(false, Ordering::Release);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.paused.store(false, Ordering::Release);
        // Wake the accept loop so that it sees `stop`.
        let _ = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], self.port)));
    }
}

/// Copies `from` to `to` while not paused; a side that closes closes the other.
fn pump(mut from: TcpStream, mut to: TcpStream, paused: &AtomicBool, stop: &AtomicBool) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buf = [0u8; 16 * 1024];
    while !stop.load(Ordering::Acquire) {
        if paused.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
