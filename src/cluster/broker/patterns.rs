//! Pattern subscriptions across the cluster: a fanout pattern becomes a Redis glob that matches
//! at least what it matches (PSUBSCRIBE on every standalone server; the workers match exactly),
//! PSUBSCRIBEd while some worker has a subscriber of it.

/// A pattern PSUBSCRIBEd for this node's pattern subscribers.
pub(super) struct PatternTrack {
    /// The pattern as clients wrote it.
    pub text: Box<[u8]>,
    /// Servers that confirmed the PSUBSCRIBE.
    pub confirmed: std::collections::HashSet<usize>,
    /// Sweeps in a row that found no worker with the pattern.
    pub unused_sweeps: u8,
}

/// The Redis glob of the pub/sub channels a fanout pattern matches: `*` and `>` tokens become
/// `*` (which also crosses dots: the workers match exactly), everything else literal.
pub(super) fn redis_glob(prefix: &str, pattern: &[u8]) -> Vec<u8> {
    let mut glob = glob_prefix(prefix);
    for (k, token) in pattern.split(|&b| b == b'.').enumerate() {
        if k > 0 {
            glob.push(b'.');
        }
        if token == b"*" || token == b">" {
            glob.push(b'*');
            continue;
        }
        for &b in token {
            if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
                glob.push(b'\\');
            }
            glob.push(b);
        }
    }
    glob.push(b'}');
    glob
}

/// The start of every glob of our pub/sub channels: the prefix, escaped, and `:{`.
pub(super) fn glob_prefix(prefix: &str) -> Vec<u8> {
    let mut glob = Vec::with_capacity(prefix.len() + 8);
    for &b in prefix.as_bytes() {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            glob.push(b'\\');
        }
        glob.push(b);
    }
    glob.extend_from_slice(b":{");
    glob
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_become_redis_globs_that_cover_them() {
        assert_eq!(redis_glob("fanout", b"room.*"), b"fanout:{room.*}");
        assert_eq!(redis_glob("fanout", b"orders.>"), b"fanout:{orders.*}");
        assert_eq!(redis_glob("fanout", b"*.eu.*"), b"fanout:{*.eu.*}");
        assert_eq!(redis_glob("f?x", b"a[1].*"), b"f\\?x:{a\\[1\\].*}");
    }
}
