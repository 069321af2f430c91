//! JSON commands of WebSocket clients.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = fanout::protocol::json::parse_value(data) {
        let _ = fanout::protocol::json::parse_request(&value);
    }
});
