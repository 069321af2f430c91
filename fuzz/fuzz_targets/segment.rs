//! The disk recovery reader fed arbitrary segment bytes: records are taken only whole and with a
//! matching CRC, and a record read back encodes to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while let Some((record, used)) = fanout::history::disk::parse_record(&data[at..]) {
        assert!(used > 0 && at + used <= data.len());
        let mut again = Vec::new();
        fanout::history::disk::encode_record(&mut again, &record);
        assert_eq!(&again[..], &data[at..at + used]);
        at += used;
    }
});
