//! SSE and long-poll parameters: query strings, `Last-Event-ID` positions, and the values
//! `protocol::fields` parses (offsets, `now`, epochs), which must round-trip.
#![no_main]
use fanout::protocol::fields;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Names and values are percent-decoded, so they may hold any byte; only the count of pairs
    // is fixed by the separators.
    let pairs = fanout::protocol::http::parse_query(text);
    assert!(pairs.len() <= text.matches('&').count() + 1);
    for token in text.split_whitespace() {
        let token = token.as_bytes();
        if let Some((offset, epoch)) = fields::position(token) {
            let mut out = bytes::BytesMut::new();
            fanout::protocol::sse::put_position(&mut out, offset, epoch.unwrap_or(0));
            assert_eq!(fields::position(&out), Some((offset, Some(epoch.unwrap_or(0)))));
        }
        if let Some(number) = fields::number(token) {
            assert_eq!(fields::number(number.to_string().as_bytes()), Some(number));
        }
        if let Some(Some(epoch)) = fields::epoch(token) {
            assert_eq!(fields::epoch_hex(format!("{epoch:016x}").as_bytes()), Some(epoch));
        }
    }
});
