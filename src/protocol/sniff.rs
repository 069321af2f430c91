//! Telling a connection's format from its first bytes.

use super::*;

/// What the first bytes of a connection say about its format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// Not enough bytes yet.
    NeedMore,
    /// The binary preface, which is this many bytes long and consumed.
    Binary(usize),
    /// An HTTP request line.
    Http,
    /// A RESP array (`*`): a Redis client.
    Resp,
    /// Anything else is text.
    Text,
}

/// Tells the format from the first bytes. The binary preface starts with NUL; text never does;
/// an HTTP method and a space is HTTP (no text command is spelled like one).
pub fn sniff(input: &[u8]) -> Result<Sniffed, ProtocolError> {
    match input.first() {
        None => Ok(Sniffed::NeedMore),
        Some(&first) if first == binary::PREFACE[0] => {
            let n = input.len().min(binary::PREFACE.len());
            if input[..n] != binary::PREFACE[..n] {
                Err(ProtocolError::BadPreface)
            } else if n < binary::PREFACE.len() {
                Ok(Sniffed::NeedMore)
            } else {
                Ok(Sniffed::Binary(binary::PREFACE.len()))
            }
        }
        Some(b'*') => Ok(Sniffed::Resp),
        Some(_) => Ok(match http::looks_like_http(input) {
            None => Sniffed::NeedMore,
            Some(true) => Sniffed::Http,
            Some(false) => Sniffed::Text,
        }),
    }
}
