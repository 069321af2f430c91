//! A whole connection's input path, socket to parser: sniffing, every protocol (text, binary,
//! RESP, HTTP, WebSocket after an upgrade, SSE), access control's strangers' budget, the RESP
//! query limit, the worker's buffering of incomplete frames. The input is sent, in pieces of a
//! size its first byte picks, to two servers that live for the whole run:
//! - one with access control on and no way in (an HMAC secret no input can sign with): every
//!   connection stays a stranger, whose held input must stay within the strangers' budget (and
//!   an HTTP head);
//! - one open (trusted loopback default), whose held input must stay within the query limit, an
//!   HTTP head, and one read of input waiting behind a command in progress.
//!
//! The servers' `input_high_water_bytes` gauge (the most unparsed input any connection held) is
//! the property: it never passes the bound, whatever the bytes. A worker panic aborts the process,
//! which libFuzzer reports as a crash too.
#![no_main]
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use fanout::protocol::http::MAX_HEAD_BYTES;
use fanout::{Config, Server, ServerHandle};
use libfuzzer_sys::fuzz_target;

/// Small limits, so that the fuzzer reaches them.
const MAX_FRAME: usize = 4096;
const MAX_QUERY: usize = 8192;
const MAX_TOKEN: usize = 1024;
/// One read(2) of a worker (`READ_CHUNK_BYTES`).
const READ_CHUNK: usize = 64 * 1024;

struct Servers {
    strangers: ServerHandle,
    open: ServerHandle,
}

fn servers() -> &'static Servers {
    static SERVERS: OnceLock<Servers> = OnceLock::new();
    SERVERS.get_or_init(|| {
        let config = |secured: bool| {
            let mut config = Config::for_tests();
            config.workers = 1;
            config.max_frame_bytes = MAX_FRAME;
            config.max_query_bytes = MAX_QUERY;
            config.write_queue_cap_bytes = 1 << 20;
            config.auth.max_token_bytes = MAX_TOKEN;
            config.limits.connections_per_ip = Some(0);
            config.limits.auth_failures = Some(0);
            if secured {
                config.auth.hmac_secret = Some(b"no input signs with this secret".to_vec());
            }
            config
        };
        let start = |secured| Server::start(config(secured)).expect("the server starts");
        Servers { strangers: start(true), open: start(false) }
    })
}

fuzz_target!(|data: &[u8]| {
    let servers = servers();
    // A stranger's budget: the longest token and 1 KiB; an HTTP head may precede a body.
    let stranger_bound = MAX_HEAD_BYTES + MAX_TOKEN + 1024;
    let open_bound = MAX_HEAD_BYTES + MAX_QUERY + READ_CHUNK;
    let step = usize::from(data.first().copied().unwrap_or(0)) % 512 + 1;
    for (server, bound) in [(&servers.strangers, stranger_bound), (&servers.open, open_bound)] {
        let Ok(mut stream) = TcpStream::connect(server.local_addr()) else { return };
        let _ = stream.set_nodelay(true);
        for piece in data.chunks(step) {
            if stream.write_all(piece).is_err() {
                break;
            }
        }
        // The server sees EOF after the input, answers what it took, and closes.
        let _ = stream.shutdown(Shutdown::Write);
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut sink = [0u8; 64 * 1024];
        while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
        let held = server.stats().input_high_water_bytes as usize;
        assert!(held <= bound, "a connection held {held} bytes of input; the bound is {bound}");
    }
});
