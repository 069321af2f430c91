//! Text lines: sniffing, then every request in the input, as the worker parses them.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = fanout::protocol::sniff(data);
    let mut at = 0;
    while let Ok(Some((_, used))) = fanout::protocol::text::parse_request(&data[at..], 4096) {
        assert!(used > 0 && at + used <= data.len(), "progress within the input");
        at += used;
    }
});
