//! One record on disk: length, CRC-32, offset, publish time, payload.

use super::*;

/// One record at the start of `bytes`, if it is whole and its CRC matches.
pub fn parse_record(bytes: &[u8]) -> Option<(Retained, usize)> {
    let (length, rest) = bytes.split_first_chunk::<4>()?;
    let length = u32::from_be_bytes(*length) as usize;
    if !(16..=MAX_RECORD).contains(&length) {
        return None;
    }
    let (crc, rest) = rest.split_first_chunk::<4>()?;
    let body = rest.get(..length)?;
    if crc32fast::hash(body) != u32::from_be_bytes(*crc) {
        return None;
    }
    let (offset, body) = body.split_first_chunk::<8>()?;
    let (published_ms, payload) = body.split_first_chunk::<8>()?;
    let record = Retained {
        offset: u64::from_be_bytes(*offset),
        published_ms: u64::from_be_bytes(*published_ms),
        payload: Bytes::copy_from_slice(payload),
    };
    Some((record, 8 + length))
}

/// Appends one record to `out`; returns its size.
pub fn encode_record(out: &mut Vec<u8>, record: &Retained) -> usize {
    let start = out.len();
    let length = (16 + record.payload.len()) as u32;
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&record.offset.to_be_bytes());
    out.extend_from_slice(&record.published_ms.to_be_bytes());
    out.extend_from_slice(&record.payload);
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
    out.len() - start
}
