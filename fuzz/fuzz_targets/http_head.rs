//! HTTP request heads (and their query strings) as the worker reads them.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = fanout::protocol::http::looks_like_http(data);
    if let Ok(Some(head)) = fanout::protocol::http::parse_head(data) {
        assert!(head.len <= data.len());
        let _ = head.keep_alive();
        let _ = head.header("content-length");
        let _ = head.param("channel");
    }
});
