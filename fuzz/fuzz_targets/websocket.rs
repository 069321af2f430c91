//! WebSocket frames (RFC 6455) through one decoder, split where the input's first byte says, as
//! reads split them: the decoder must give the same events whatever the split.
#![no_main]
use fanout::protocol::websocket::Decoder;
use libfuzzer_sys::fuzz_target;

fn decode_all(chunks: &[&[u8]]) -> Vec<String> {
    let mut decoder = Decoder::default();
    let mut pending = Vec::new();
    let mut events = Vec::new();
    for chunk in chunks {
        pending.extend_from_slice(chunk);
        loop {
            match decoder.decode(&pending, 1 << 16) {
                Ok(Some((event, used))) => {
                    assert!(used > 0 && used <= pending.len());
                    pending.drain(..used);
                    if let Some(event) = event {
                        events.push(format!("{event:?}"));
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    events.push(format!("error {}", e.close_code()));
                    return events;
                }
            }
        }
    }
    events
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, frames)) = data.split_first() else { return };
    let split = (split as usize).min(frames.len());
    let whole = decode_all(&[frames]);
    let (a, b) = frames.split_at(split);
    let split_events = decode_all(&[a, b]);
    // An error may surface earlier in a split feed (UTF-8 is checked as bytes arrive), never a
    // different event.
    let common = whole.len().min(split_events.len());
    assert_eq!(whole[..common.saturating_sub(1)], split_events[..common.saturating_sub(1)]);
});
