//! Redis's glob patterns (`PSUBSCRIBE`, `PUBSUB CHANNELS`): `*` any run of bytes, `?` any one
//! byte, `[abc]`, `[^abc]`, `[a-z]` a set, and `\` makes the next byte literal. The matcher is
//! Redis's `stringmatchlen`, with its guards against patterns that would take exponential time
//! (`*` runs collapse, a failed tail stops longer attempts, nesting is bounded).

/// Nesting of `*` past which a match gives up (Redis's limit).
const MAX_NESTING: usize = 1000;

/// Whether `text` matches the glob `pattern`.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let mut skip_longer = false;
    matches(pattern, text, &mut skip_longer, 0)
}

fn matches(mut pattern: &[u8], mut text: &[u8], skip_longer: &mut bool, nesting: usize) -> bool {
    if nesting > MAX_NESTING {
        return false;
    }
    while let (Some(&p), Some(&t)) = (pattern.first(), text.first()) {
        match p {
            b'*' => {
                while pattern.get(1) == Some(&b'*') {
                    pattern = &pattern[1..];
                }
                if pattern.len() == 1 {
                    return true;
                }
                while !text.is_empty() {
                    if matches(&pattern[1..], text, skip_longer, nesting + 1) {
                        return true;
                    }
                    if *skip_longer {
                        // The rest failed for want of text: starting later cannot help.
                        return false;
                    }
                    text = &text[1..];
                }
                *skip_longer = true;
                return false;
            }
            b'?' => text = &text[1..],
            b'[' => {
                pattern = &pattern[1..];
                let negate = pattern.first() == Some(&b'^');
                if negate {
                    pattern = &pattern[1..];
                }
                let mut found = false;
                loop {
                    match pattern {
                        [b'\\', escaped, ..] => {
                            pattern = &pattern[1..];
                            if *escaped == t {
                                found = true;
                            }
                        }
                        [b']', ..] => break,
                        // An unclosed set: what was read of it counts.
                        [] => break,
                        [start, b'-', end, ..] => {
                            let (low, high) =
                                if start <= end { (*start, *end) } else { (*end, *start) };
                            if (low..=high).contains(&t) {
                                found = true;
                            }
                            pattern = &pattern[2..];
                        }
                        [c, ..] => {
                            if *c == t {
                                found = true;
                            }
                        }
                    }
                    pattern = &pattern[1..];
                }
                if found == negate {
                    return false;
                }
                text = &text[1..];
                if pattern.is_empty() {
                    // The set ran to the end of the pattern (unclosed).
                    return text.is_empty();
                }
            }
            b'\\' if pattern.len() >= 2 => {
                if pattern[1] != t {
                    return false;
                }
                pattern = &pattern[1..];
                text = &text[1..];
            }
            _ => {
                if p != t {
                    return false;
                }
                text = &text[1..];
            }
        }
        pattern = &pattern[1..];
        if text.is_empty() {
            while pattern.first() == Some(&b'*') {
                pattern = &pattern[1..];
            }
            break;
        }
    }
    pattern.is_empty() && text.is_empty()
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs_as_redis_documents_them() {
        // From the documentation of KEYS and PSUBSCRIBE.
        for (pattern, yes, no) in [
            ("h?llo", &["hello", "hallo", "hxllo"][..], &["hllo", "heello"][..]),
            ("h*llo", &["hllo", "heeeello"], &["hell"]),
            ("h[ae]llo", &["hello", "hallo"], &["hillo"]),
            ("h[^e]llo", &["hallo", "hbllo"], &["hello"]),
            ("h[a-b]llo", &["hallo", "hbllo"], &["hcllo"]),
            ("news.*", &["news.art", "news.", "news.a.b"], &["news", "new.art"]),
            // As in Redis, `*` needs something to match (channels are never empty here).
            ("*", &["anything", "a"], &[""]),
            ("h\\*llo", &["h*llo"], &["hello"]),
            ("[b-a]x", &["ax", "bx"], &["cx"]),
            ("a[\\]]b", &["a]b"], &["a\\b"]),
        ] {
            for text in yes {
                assert!(glob_match(pattern.as_bytes(), text.as_bytes()), "{pattern} ~ {text}");
            }
            for text in no {
                assert!(!glob_match(pattern.as_bytes(), text.as_bytes()), "{pattern} !~ {text}");
            }
        }
    }

    #[test]
    fn pathological_patterns_finish() {
        let pattern = "*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b".as_bytes();
        let text = vec![b'a'; 5000];
        let started = std::time::Instant::now();
        assert!(!glob_match(pattern, &text));
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
        assert!(!glob_match(&[b'*'; 5000].iter().chain(b"x").copied().collect::<Vec<_>>(), b"y"));
    }
}
