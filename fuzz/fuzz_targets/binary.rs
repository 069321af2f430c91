//! Binary frames: every request in the input; a decoded request re-encodes to what was read.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while let Ok(Some((request, used))) = fanout::protocol::binary::parse_request(&data[at..], 4096)
    {
        assert!(used > 0 && at + used <= data.len(), "progress within the input");
        let mut again = Vec::new();
        fanout::protocol::binary::encode_request(&request, &mut again);
        let reparsed = fanout::protocol::binary::parse_request(&again, 4096);
        assert!(matches!(reparsed, Ok(Some((ref r, n))) if *r == request && n == again.len()));
        at += used;
    }
});
