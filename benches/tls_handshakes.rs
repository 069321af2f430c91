//! Not a measurement by itself: the client of scripts/bench-tls.sh's handshake part. Opens TLS
//! connections to ADDR one after another for SECONDS (each a request for /healthz, read to the
//! end, so that a TLS 1.3 session ticket is taken), resuming sessions or not (RESUME=0), and
//! prints `handshakes <count> seconds <s> resumed <count>`. `openssl s_time -reuse` does not
//! resume TLS 1.3 sessions, hence this.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let addr = std::env::var("ADDR").expect("ADDR=host:port");
    let ca = std::env::var("CA").expect("CA=ca.pem");
    let seconds: f64 = std::env::var("SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(10.0);
    let resume = std::env::var("RESUME").map_or(true, |r| r != "0");
    let config = fanout::tls::client_config(Some(std::path::Path::new(&ca)), None).expect("CA");
    let mut config = Arc::unwrap_or_clone(config);
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    let config = Arc::new(config);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let (mut count, mut resumed) = (0u64, 0u64);
    let mut response = Vec::new();
    while Instant::now() < deadline {
        let tcp = TcpStream::connect(&addr).expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let mut tls = fanout::tls::TlsStream::new(config.clone(), "localhost", tcp).expect("TLS");
        tls.complete_handshake().expect("handshake");
        tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .expect("request");
        tls.flush().expect("flush");
        response.clear();
        let _ = tls.read_to_end(&mut response);
        assert!(response.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&response));
        count += 1;
        resumed += u64::from(tls.was_resumed());
    }
    println!("handshakes {count} seconds {:.3} resumed {resumed}", started.elapsed().as_secs_f64());
}
