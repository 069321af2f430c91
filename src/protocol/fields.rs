//! The values that appear in several formats, each parsed by one function with one strictness:
//! a SUB's offset and epoch in text, JSON, the SSE id and the HTTP query all go through here, so
//! that `+5`, ` 5` or a 17-digit epoch is refused the same way everywhere.
//!
//! - a number (offset, seconds): 1 to 20 ASCII digits that fit a `u64`; no sign, no spaces;
//! - an "after": a number, or `now` (`u64::MAX`: replay nothing, report the latest offset);
//! - an epoch: 1 to 16 hex digits (either case), or `*` for "whatever the log's epoch is now";
//! - an SSE position: `offset` or `offset@epoch` (the id of an event; no `*` there).
//!
//! Channel and client names are checked by `validate_channel` and `validate_client_name`;
//! query strings are split and percent-decoded by `http::parse_query`.

/// A decimal `u64`: 1 to 20 ASCII digits.
pub fn number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// A resume point: an offset, or `now` (`u64::MAX`).
pub fn after(word: &[u8]) -> Option<u64> {
    if word == b"now" {
        return Some(u64::MAX);
    }
    number(word)
}

/// An epoch in hex: 1 to 16 hex digits.
pub fn epoch_hex(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 16 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

/// An epoch a client resumes in: hex digits, or `*` (`Some(None)`: any epoch). `None` when
/// malformed.
pub fn epoch(word: &[u8]) -> Option<Option<u64>> {
    match word {
        b"*" => Some(None),
        hex => epoch_hex(hex).map(Some),
    }
}

/// An event stream position, `offset` or `offset@epoch`: (offset, epoch if given).
pub fn position(token: &[u8]) -> Option<(u64, Option<u64>)> {
    match token.iter().position(|&b| b == b'@') {
        Some(at) => Some((number(&token[..at])?, Some(epoch_hex(&token[at + 1..])?))),
        None => Some((number(token)?, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Malformed in every field: signs, spaces, empty, too long, other radixes.
    const NOT_NUMBERS: [&str; 9] = ["", "+5", "-5", " 5", "5 ", "0x5", "5.0", "ff", "1e3"];

    #[test]
    fn numbers() {
        assert_eq!(number(b"0"), Some(0));
        assert_eq!(number(b"007"), Some(7));
        assert_eq!(number(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(number(b"18446744073709551616"), None, "overflow");
        assert_eq!(number(b"000000000000000000001"), None, "21 digits");
        for bad in NOT_NUMBERS {
            assert_eq!(number(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn afters() {
        assert_eq!(after(b"now"), Some(u64::MAX));
        assert_eq!(after(b"12"), Some(12));
        for bad in ["NOW", "now ", "*"].into_iter().chain(NOT_NUMBERS) {
            assert_eq!(after(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn epochs() {
        assert_eq!(epoch(b"*"), Some(None));
        assert_eq!(epoch(b"feed"), Some(Some(0xfeed)));
        assert_eq!(epoch(b"00000000DEADBEEF"), Some(Some(0xdead_beef)));
        assert_eq!(epoch(b"ffffffffffffffff"), Some(Some(u64::MAX)));
        for bad in ["", "+ff", "-1", " ff", "ff ", "0xff", "xyz", "**", "00000000000000001"] {
            assert_eq!(epoch(bad.as_bytes()), None, "{bad:?}");
            assert_eq!(epoch_hex(bad.as_bytes()), None, "{bad:?}");
        }
        assert_eq!(epoch_hex(b"*"), None, "`*` is for a resume, not a position");
    }

    #[test]
    fn positions() {
        assert_eq!(position(b"17@000000000000feed"), Some((17, Some(0xfeed))));
        assert_eq!(position(b"17"), Some((17, None)));
        for bad in
            ["-", "", "@", "17@", "@ff", "+17", "17@+ff", "17@xyz", "1@00000000000000001", "17@*"]
        {
            assert_eq!(position(bad.as_bytes()), None, "{bad:?}");
        }
    }
}
