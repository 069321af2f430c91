//! SSE and long-poll parameters: query strings and `Last-Event-ID` positions.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Names and values are percent-decoded, so they may hold any byte; only the count of pairs
    // is fixed by the separators.
    let pairs = fanout::protocol::http::parse_query(text);
    assert!(pairs.len() <= text.matches('&').count() + 1);
    for token in text.split_whitespace() {
        if let Some((offset, epoch)) = fanout::protocol::sse::parse_position(token) {
            let mut out = bytes::BytesMut::new();
            fanout::protocol::sse::put_position(&mut out, offset, epoch.unwrap_or(0));
            let again = std::str::from_utf8(&out).unwrap();
            assert_eq!(fanout::protocol::sse::parse_position(again), Some((offset, Some(epoch.unwrap_or(0)))));
        }
    }
});
