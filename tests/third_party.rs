//! Third-party clients against a real server: Python's `websockets` library speaking the
//! documented JSON protocol over WebSocket. `.ci/run` installs it (Debian's python3-websockets).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{start, Conn};

/// Debian's Python, where python3-websockets is installed (`FANOUT_PYTHON` overrides).
fn python() -> String {
    std::env::var("FANOUT_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".to_owned())
}

#[test]
fn python_websockets_client_subscribes_receives_publishes_and_resumes() {
    let check = Command::new(python()).args(["-c", "import websockets"]).status();
    assert!(
        check.is_ok_and(|s| s.success()),
        "{} cannot import websockets: run `apt-get install -y python3-websockets` (.ci/run does)",
        python()
    );
    let server = start(|_| {});
    let addr = server.local_addr();
    const COUNT: u64 = 500;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/ws_subscriber.py");
    let mut child = Command::new(python())
        .args([script, &format!("ws://{addr}/ws"), "py", &COUNT.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("ready"));
    let mut publisher = Conn::binary(addr);
    for i in 1..=COUNT {
        publisher.publish("py", format!("message {i}").as_bytes());
    }
    publisher.barrier();
    assert_eq!(lines.next().and_then(Result::ok), Some(format!("ok {COUNT}")));
    assert!(child.wait().unwrap().success(), "the Python client failed (see its output)");
}
