//! Namespaces: options for the channels a topic pattern matches (`[[namespace]]` in the config
//! file), as Centrifugo's namespaces and NATS's per-subject limits give them: how much history,
//! whether presence is tracked and joins and leaves are heard, what clients without a token may
//! do, whether clients may publish at all (channels fed by a backend only), the largest message.
//!
//! A channel takes the options of the most specific namespace that matches it, and for what that
//! namespace leaves unset, the server-wide flags (namespaces do not stack). Most specific: more
//! literal tokens, then more tokens, then `*` before `>`; a tie goes to the first in the file.
//! `chat.>` and `chat.*.private` both match `chat.7.private`; the second decides it.
//!
//! Resolution happens where a channel is first met (its history limits are fixed when it is
//! created), and on subscribe and publish checks only when namespaces exist: a server without
//! them pays one branch.

use std::time::Duration;

use crate::auth::pattern::{PatternError, TopicPattern, TopicToken};
use crate::history::HistoryLimits;

/// One `[[namespace]]`: unset options take the server-wide flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Namespace {
    /// The topic pattern (`chat.>`, `room.*`, `news`).
    pub pattern: String,
    /// Messages kept per channel (0: no history).
    pub history_messages: Option<usize>,
    /// Payload bytes kept per channel.
    pub history_bytes_per_channel: Option<usize>,
    /// Age past which messages leave history (zero: no limit).
    pub history_age: Option<Duration>,
    /// Track who is subscribed (PRESENCE answers).
    pub presence: Option<bool>,
    /// Subscribers hear joins and leaves (and presence is tracked).
    pub join_leave: Option<bool>,
    /// Clients without a token may subscribe.
    pub anonymous_subscribe: Option<bool>,
    /// Clients without a token may publish.
    pub anonymous_publish: Option<bool>,
    /// Clients may publish (`false`: only the API key, i.e. a backend, may).
    pub client_publish: Option<bool>,
    /// Longest message payload, in bytes.
    pub max_message_bytes: Option<usize>,
}

impl Namespace {
    /// The history limits of its channels, `base` where it sets none.
    pub fn history_limits(&self, base: &HistoryLimits) -> HistoryLimits {
        HistoryLimits {
            messages: self.history_messages.unwrap_or(base.messages),
            bytes: self.history_bytes_per_channel.unwrap_or(base.bytes),
            age: self.history_age.unwrap_or(base.age),
            total_bytes: base.total_bytes,
        }
    }
}

/// The namespaces, most specific first.
#[derive(Debug, Clone, Default)]
pub struct Namespaces(Vec<(TopicPattern, Namespace)>);

impl Namespaces {
    /// Parses every pattern and orders them by specificity; refuses a bad pattern or one given
    /// twice.
    pub fn new(namespaces: &[Namespace]) -> Result<Namespaces, NamespaceError> {
        let mut parsed = Vec::with_capacity(namespaces.len());
        for namespace in namespaces {
            if namespace.pattern == "*" {
                return Err(NamespaceError::Broadcast);
            }
            let pattern = TopicPattern::parse(&namespace.pattern, usize::MAX)
                .map_err(NamespaceError::Pattern)?;
            if parsed.iter().any(|(p, _): &(TopicPattern, Namespace)| *p == pattern) {
                return Err(NamespaceError::Twice(namespace.pattern.clone()));
            }
            parsed.push((pattern, namespace.clone()));
        }
        // Stable: equally specific namespaces keep the file's order.
        parsed.sort_by_key(|(pattern, _)| std::cmp::Reverse(specificity(pattern)));
        Ok(Namespaces(parsed))
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The namespace `channel` belongs to, if any.
    pub fn resolve(&self, channel: &[u8]) -> Option<&Namespace> {
        self.position(channel).map(|at| &self.0[at].1)
    }

    /// Where in `iter`'s order the namespace `channel` belongs to is.
    pub fn position(&self, channel: &[u8]) -> Option<usize> {
        self.0.iter().position(|(pattern, _)| pattern.matches(channel))
    }

    /// The namespaces with their parsed patterns, most specific first.
    pub fn iter(&self) -> impl Iterator<Item = (&TopicPattern, &Namespace)> {
        self.0.iter().map(|(pattern, namespace)| (pattern, namespace))
    }

    /// `channel`'s history limits: its namespace's where set, `base` elsewhere (the server-wide
    /// total is always `base`'s).
    pub fn history_limits(&self, base: &HistoryLimits, channel: &[u8]) -> HistoryLimits {
        let namespace = if self.0.is_empty() { None } else { self.resolve(channel) };
        namespace.map_or_else(|| base.clone(), |namespace| namespace.history_limits(base))
    }

    /// The most messages any channel keeps (whether history exists at all).
    pub fn most_history_messages(&self, base: usize) -> usize {
        self.0.iter().filter_map(|(_, n)| n.history_messages).fold(base, usize::max)
    }
}

/// Literal tokens, then tokens, then no `>`: larger is more specific.
fn specificity(pattern: &TopicPattern) -> (usize, usize, bool) {
    let tokens = pattern.tokens();
    let literals = tokens.iter().filter(|t| matches!(t, TopicToken::Literal(_))).count();
    let open_ended = tokens.last() == Some(&TopicToken::Rest);
    (literals, tokens.len(), !open_ended)
}

/// Why the namespaces are not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NamespaceError {
    /// A pattern that is not a topic pattern.
    #[error("namespace: {0}")]
    Pattern(PatternError),
    /// Two namespaces with one pattern.
    #[error("namespace {0:?} is given twice")]
    Twice(String),
    /// `*`, which is the broadcast channel in permissions (and a one-token wildcard in topic
    /// patterns): refused rather than read one way here and the other in access control.
    #[error("namespace \"*\" is ambiguous (in permissions it is the broadcast channel, which no namespace holds): write `>` for every topic, or the channels' names")]
    Broadcast,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(pattern: &str, messages: usize) -> Namespace {
        Namespace {
            pattern: pattern.into(),
            history_messages: Some(messages),
            ..Default::default()
        }
    }

    fn messages_of(namespaces: &Namespaces, channel: &str) -> Option<usize> {
        namespaces.resolve(channel.as_bytes()).and_then(|n| n.history_messages)
    }

    #[test]
    fn the_most_specific_match_wins_whatever_the_order() {
        let list = [
            named(">", 1),
            named("chat.>", 2),
            named("chat.*", 3),
            named("chat.*.private", 4),
            named("chat.lobby", 5),
        ];
        for order in [list.to_vec(), list.iter().rev().cloned().collect()] {
            let namespaces = Namespaces::new(&order).unwrap();
            assert_eq!(messages_of(&namespaces, "news"), Some(1));
            assert_eq!(messages_of(&namespaces, "chat.a.b"), Some(2));
            assert_eq!(messages_of(&namespaces, "chat.room"), Some(3));
            assert_eq!(messages_of(&namespaces, "chat.7.private"), Some(4));
            assert_eq!(messages_of(&namespaces, "chat.lobby"), Some(5));
            assert_eq!(messages_of(&namespaces, "*"), None, "the broadcast channel is not a topic");
            assert_eq!(messages_of(&namespaces, "@alice"), None, "nor is an inbox");
        }
    }

    #[test]
    fn equally_specific_namespaces_keep_the_files_order() {
        let namespaces = Namespaces::new(&[named("a.*", 1), named("*.b", 2)]).unwrap();
        assert_eq!(messages_of(&namespaces, "a.b"), Some(1));
    }

    #[test]
    fn unset_options_take_the_server_wide_limits() {
        let base = HistoryLimits {
            messages: 100,
            bytes: 1000,
            age: Duration::from_secs(60),
            total_bytes: 10_000,
        };
        let namespaces = Namespaces::new(&[named("chat.>", 5)]).unwrap();
        let chat = namespaces.history_limits(&base, b"chat.x");
        assert_eq!((chat.messages, chat.bytes, chat.age), (5, 1000, Duration::from_secs(60)));
        assert_eq!(namespaces.history_limits(&base, b"news").messages, 100);
        assert_eq!(namespaces.most_history_messages(0), 5);
    }

    #[test]
    fn bad_and_repeated_patterns_are_refused() {
        assert!(matches!(
            Namespaces::new(&[named("chat.>.x", 1)]),
            Err(NamespaceError::Pattern(PatternError::RestNotLast(_)))
        ));
        assert!(matches!(
            Namespaces::new(&[named("@inbox", 1)]),
            Err(NamespaceError::Pattern(PatternError::NotTopic(_)))
        ));
        assert_eq!(
            Namespaces::new(&[named("a.*", 1), named("a.*", 2)]).unwrap_err(),
            NamespaceError::Twice("a.*".into())
        );
        assert_eq!(Namespaces::new(&[named("*", 1)]).unwrap_err(), NamespaceError::Broadcast);
    }
}
