//! Channel patterns in permissions: which channels a token (or an anonymous client) may subscribe
//! or publish to.
//!
//! Three kinds, and a wildcard never crosses from one kind to another:
//! - a topic pattern: dot-separated tokens, where `*` matches exactly one token and `>` (last)
//!   matches one or more trailing tokens, as NATS subjects do: `room.*` matches `room.1`, not
//!   `room` nor `room.1.x`; `user.42.>` matches `user.42.a` and `user.42.a.b`; `>` matches every
//!   topic;
//! - `*` alone: the broadcast channel, and only it (broadcasting reaches every connection, so it
//!   is granted only by naming it);
//! - `@name` an inbox, or `@*` every inbox (sending to one named client).

use std::fmt;

/// One parsed permission pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// The broadcast channel `*`.
    Broadcast,
    /// One inbox `@name`, or every inbox (`None`).
    Inbox(Option<Box<str>>),
    /// A topic pattern.
    Topic(TopicPattern),
}

/// A pattern over topic channels: dot-separated tokens, `*` one token, `>` one or more trailing
/// tokens (NATS subjects). Permissions use it, and so do wildcard subscriptions (`PSUB`), where
/// `*` alone is simply "any one-token channel".
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicPattern(Box<[TopicToken]>);

/// A token of a topic pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TopicToken {
    /// Matches this token exactly.
    Literal(Box<str>),
    /// `*`: any one token.
    One,
    /// `>`: one or more tokens, to the end.
    Rest,
}

/// Why a pattern is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// Empty pattern or empty token (`a..b`, `.a`, `a.`).
    #[error("empty pattern or empty token in {0:?}")]
    Empty(String),
    /// `>` that is not the last token.
    #[error("'>' must be the last token in {0:?}")]
    RestNotLast(String),
    /// `*` or `>` inside a token (`ro*m`).
    #[error("wildcards are whole tokens in {0:?}")]
    PartialWildcard(String),
    /// Spaces, control bytes, or longer than a channel name can be.
    #[error("not a channel pattern: {0:?}")]
    Invalid(String),
    /// More tokens than allowed.
    #[error("{0:?} has more than {1} tokens")]
    TooManyTokens(String, usize),
    /// A pattern for inboxes or the broadcast channel where only topics can match.
    #[error("{0:?} is not a topic pattern (inboxes and the broadcast channel cannot be matched)")]
    NotTopic(String),
}

/// Refuses what no channel name can hold: spaces, control bytes, more than 255 bytes.
fn check_bytes(text: &str) -> Result<(), PatternError> {
    let invalid = text.len() > crate::protocol::MAX_CHANNEL_BYTES
        || text.bytes().any(|b| b <= b' ' || b == 0x7f);
    if invalid {
        return Err(PatternError::Invalid(text.to_owned()));
    }
    Ok(())
}

impl TopicPattern {
    /// Parses a pattern as a client sent it (bytes that must be UTF-8), of at most `max_tokens`
    /// tokens.
    pub fn from_bytes(bytes: &[u8], max_tokens: usize) -> Result<TopicPattern, PatternError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| PatternError::Invalid(String::from_utf8_lossy(bytes).into_owned()))?;
        TopicPattern::parse(text, max_tokens)
    }

    /// Parses a topic pattern of at most `max_tokens` tokens.
    pub fn parse(text: &str, max_tokens: usize) -> Result<TopicPattern, PatternError> {
        check_bytes(text)?;
        if text.starts_with('@') {
            return Err(PatternError::NotTopic(text.to_owned()));
        }
        let parts: Vec<&str> = text.split('.').collect();
        if parts.len() > max_tokens {
            return Err(PatternError::TooManyTokens(text.to_owned(), max_tokens));
        }
        let mut tokens = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            tokens.push(match *part {
                "" => return Err(PatternError::Empty(text.to_owned())),
                "*" => TopicToken::One,
                ">" if i + 1 == parts.len() => TopicToken::Rest,
                ">" => return Err(PatternError::RestNotLast(text.to_owned())),
                part if part.contains(['*', '>']) => {
                    return Err(PatternError::PartialWildcard(text.to_owned()))
                }
                part => TopicToken::Literal(part.into()),
            });
        }
        Ok(TopicPattern(tokens.into()))
    }

    /// The tokens, in order.
    pub fn tokens(&self) -> &[TopicToken] {
        &self.0
    }

    /// True when the topic channel `channel` matches (never the broadcast channel or an inbox).
    /// A wildcard never matches an empty token: `room.*` does not match `room.` (as NATS, where
    /// such a subject is not valid at all).
    pub fn matches(&self, channel: &[u8]) -> bool {
        if channel == b"*" || channel.first() == Some(&b'@') {
            return false;
        }
        let mut parts = channel.split(|&b| b == b'.');
        for token in self.0.iter() {
            match token {
                TopicToken::Rest => {
                    let mut rest = parts.peekable();
                    return rest.peek().is_some() && rest.all(|part| !part.is_empty());
                }
                TopicToken::One => {
                    if parts.next().is_none_or(<[u8]>::is_empty) {
                        return false;
                    }
                }
                TopicToken::Literal(literal) => {
                    if parts.next() != Some(literal.as_bytes()) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }

    /// True when some channel matches both patterns.
    pub fn overlaps(&self, other: &TopicPattern) -> bool {
        fn overlap(a: &[TopicToken], b: &[TopicToken]) -> bool {
            match (a.first(), b.first()) {
                (None, None) => true,
                // `>` takes whatever the other side still needs, one token or more.
                (Some(TopicToken::Rest), Some(_)) | (Some(_), Some(TopicToken::Rest)) => true,
                (None, Some(_)) | (Some(_), None) => false,
                (Some(TopicToken::Literal(x)), Some(TopicToken::Literal(y))) if x != y => false,
                _ => overlap(&a[1..], &b[1..]),
            }
        }
        overlap(&self.0, &other.0)
    }

    /// True when every channel `self` matches is matched by `wider` too (a wildcard
    /// subscription is permitted when a permission pattern covers it).
    pub fn covered_by(&self, wider: &TopicPattern) -> bool {
        let mut mine = self.0.iter();
        for theirs in wider.0.iter() {
            let Some(token) = mine.next() else { return false };
            match (theirs, token) {
                (TopicToken::Rest, _) => return true,
                (_, TopicToken::Rest) => return false,
                (TopicToken::One, _) => {}
                (TopicToken::Literal(a), TopicToken::Literal(b)) if a == b => {}
                (TopicToken::Literal(_), _) => return false,
            }
        }
        mine.next().is_none()
    }
}

impl Pattern {
    /// Parses one pattern.
    pub fn parse(text: &str) -> Result<Pattern, PatternError> {
        check_bytes(text)?;
        if text == "*" {
            return Ok(Pattern::Broadcast);
        }
        if let Some(name) = text.strip_prefix('@') {
            return match name {
                "" => Err(PatternError::Empty(text.to_owned())),
                "*" => Ok(Pattern::Inbox(None)),
                name if name.contains(['*', '>']) => {
                    Err(PatternError::PartialWildcard(text.to_owned()))
                }
                name => Ok(Pattern::Inbox(Some(name.into()))),
            };
        }
        TopicPattern::parse(text, usize::MAX).map(Pattern::Topic)
    }

    /// True when `channel` (a valid channel name) is one this pattern names.
    pub fn matches(&self, channel: &[u8]) -> bool {
        match (self, channel) {
            (Pattern::Broadcast, b"*") => true,
            (Pattern::Broadcast, _) | (_, b"*") => false,
            (Pattern::Inbox(name), [b'@', rest @ ..]) => {
                name.as_deref().is_none_or(|name| name.as_bytes() == rest)
            }
            (Pattern::Inbox(_), _) | (Pattern::Topic(_), [b'@', ..]) => false,
            (Pattern::Topic(topic), channel) => topic.matches(channel),
        }
    }

    /// True when a wildcard subscription to `pattern` stays within this permission.
    pub fn covers(&self, pattern: &TopicPattern) -> bool {
        matches!(self, Pattern::Topic(wider) if pattern.covered_by(wider))
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Broadcast => f.write_str("*"),
            Pattern::Inbox(None) => f.write_str("@*"),
            Pattern::Inbox(Some(name)) => write!(f, "@{name}"),
            Pattern::Topic(TopicPattern(tokens)) => {
                for (i, token) in tokens.iter().enumerate() {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    match token {
                        TopicToken::Literal(literal) => f.write_str(literal)?,
                        TopicToken::One => f.write_str("*")?,
                        TopicToken::Rest => f.write_str(">")?,
                    }
                }
                Ok(())
            }
        }
    }
}

/// A list of patterns: a channel is allowed when any of them matches it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Patterns(Vec<Pattern>);

impl Patterns {
    /// Parses every pattern; the first bad one is the error.
    pub fn parse<'a>(texts: impl IntoIterator<Item = &'a str>) -> Result<Patterns, PatternError> {
        texts.into_iter().map(Pattern::parse).collect::<Result<_, _>>().map(Patterns)
    }

    /// True when some pattern matches `channel`.
    pub fn allow(&self, channel: &[u8]) -> bool {
        self.0.iter().any(|pattern| pattern.matches(channel))
    }

    /// True when some pattern covers every channel the wildcard subscription `pattern` can match.
    pub fn cover(&self, pattern: &TopicPattern) -> bool {
        self.0.iter().any(|permission| permission.covers(pattern))
    }

    /// True when there is no pattern at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_patterns_share_a_channel() {
        let p = |text: &str| TopicPattern::parse(text, 16).unwrap();
        for (a, b, shared) in [
            ("chat.>", "chat.*.private", true),
            ("chat.*", "chat.*.private", false),
            ("*.b", "a.*", true),
            ("a.b", "a.c", false),
            (">", "x", true),
            ("a.>", "a", false),
            ("a.*.c", "a.b.>", true),
        ] {
            assert_eq!(p(a).overlaps(&p(b)), shared, "{a} and {b}");
            assert_eq!(p(b).overlaps(&p(a)), shared, "{b} and {a}");
        }
    }

    fn allows(pattern: &str, channel: &str) -> bool {
        Pattern::parse(pattern).unwrap().matches(channel.as_bytes())
    }

    #[test]
    fn topic_wildcards_match_as_nats_subjects_do() {
        let cases = [
            ("room.*", "room.1", true),
            ("room.*", "room", false),
            ("room.*", "room.1.x", false),
            ("room.*", "rooms.1", false),
            ("user.42.>", "user.42.a", true),
            ("user.42.>", "user.42.a.b", true),
            ("user.42.>", "user.42", false),
            ("user.42.>", "user.43.a", false),
            ("*.chat", "eu.chat", true),
            ("*.chat", "eu.x.chat", false),
            ("*.*", "a.b", true),
            ("*.*", "a", false),
            (">", "a", true),
            (">", "a.b.c", true),
            ("comments", "comments", true),
            ("comments", "comments.x", false),
            ("comments", "comment", false),
            // A wildcard never matches an empty token.
            ("room.*", "room.", false),
            ("*.chat", ".chat", false),
            ("user.>", "user.", false),
            ("user.>", "user.a.", false),
            ("user.>", "user..a", false),
            (">", "a..b", false),
            ("room.*.x", "room..x", false),
        ];
        for (pattern, channel, expected) in cases {
            assert_eq!(allows(pattern, channel), expected, "{pattern} vs {channel}");
        }
    }

    #[test]
    fn broadcast_and_inboxes_are_granted_only_by_naming_them() {
        // No topic wildcard reaches the broadcast channel or an inbox.
        for pattern in [">", "*.>", "*"] {
            assert!(!allows(pattern, "@alice"), "{pattern}");
        }
        for pattern in [">", "*.>", "@*", "@alice"] {
            assert!(!allows(pattern, "*"), "{pattern}");
        }
        assert!(allows("*", "*"));
        assert!(!allows("*", "comments"), "`*` alone is the broadcast channel, not a wildcard");
        assert!(allows("@*", "@alice"));
        assert!(allows("@alice", "@alice"));
        assert!(!allows("@alice", "@alicia"));
        assert!(!allows("@alice", "alice"));
    }

    #[test]
    fn wildcard_subscriptions_match_topics_only_and_say_what_covers_them() {
        let topic = |text: &str| TopicPattern::parse(text, 16).unwrap();
        assert!(topic("*").matches(b"comments"), "`*` alone is any one-token topic here");
        assert!(!topic("*").matches(b"*") && !topic(">").matches(b"@bob"));
        assert!(!topic("a.*").matches(b"a"), "fewer tokens than the pattern");
        assert!(topic("a.>").matches(b"a.b.c") && !topic("a.>").matches(b"a"));
        for bad in ["", "a..b", ".a", "a.", "a.>.b", "a*", "@bob", "a b"] {
            assert!(TopicPattern::parse(bad, 16).is_err(), "{bad:?}");
        }
        assert!(matches!(TopicPattern::parse("a.b.c", 2), Err(PatternError::TooManyTokens(_, 2))));
        let permission = |text: &str| Pattern::parse(text).unwrap();
        for (wider, narrower, covered) in [
            ("room.*", "room.*", true),
            ("room.>", "room.*", true),
            ("room.>", "room.a.>", true),
            (">", "*.x", true),
            ("room.*", "room.>", false),
            ("room.*", "*", false),
            ("room.a", "room.*", false),
            ("*", "room", false),
            ("@*", "room.*", false),
        ] {
            assert_eq!(
                permission(wider).covers(&topic(narrower)),
                covered,
                "{wider} covers {narrower}"
            );
        }
    }

    #[test]
    fn malformed_patterns() {
        for bad in ["", "a..b", ".a", "a.", "a.>.b", "ro*m", "a.b>", "@", "@al*", "a b", "a\tb"] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Pattern::parse(&"a".repeat(256)).is_err());
        for good in ["*", ">", "@*", "@bob", "a.*.c.>", "room.42"] {
            assert_eq!(Pattern::parse(good).unwrap().to_string(), good);
        }
    }
}
