//! RESP: every command in the input (multibulk or inline), then the whole input as replies.
//! Commands make progress within the input; a multibulk command re-encoded from its arguments
//! decodes to the same arguments; replies never nest past the limit without an error.
#![no_main]
use bytes::BytesMut;
use fanout::protocol::resp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while let Ok(Some((arguments, used))) = resp::parse_command(&data[at..], 4096) {
        assert!(used > 0 && at + used <= data.len(), "progress within the input");
        let mut again = BytesMut::new();
        resp::put_aggregate(&mut again, arguments.len(), false);
        for argument in &arguments {
            resp::put_bulk(&mut again, argument);
        }
        match resp::parse_command(&again, 4096) {
            Ok(Some((reparsed, n))) => assert!(reparsed == arguments && n == again.len()),
            other => panic!("re-encoded command did not decode: {other:?}"),
        }
        at += used;
    }
    let mut at = 0;
    while let Ok(Some((_, used))) = resp::parse_value(&data[at..], 4096) {
        assert!(used > 0 && at + used <= data.len(), "progress within the input");
        at += used;
    }
});
