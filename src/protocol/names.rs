//! Channel and client names: what is valid, and what a channel name addresses.

/// Longest channel name, in bytes; it fits the binary format's one-byte length field.
pub const MAX_CHANNEL_BYTES: usize = 255;

/// What a valid channel name addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// An ordinary channel: subscribe and publish.
    Topic,
    /// `*`: every connection receives it; publish only.
    Broadcast,
    /// `@name`: the inbox of the client that claimed `name`; publish only.
    Inbox,
}

/// Why a channel or client name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Zero bytes.
    #[error("empty name")]
    Empty,
    /// Over `MAX_CHANNEL_BYTES`.
    #[error("name longer than {MAX_CHANNEL_BYTES} bytes")]
    TooLong,
    /// A space, tab, other control byte, or DEL.
    #[error("name contains a space or control character")]
    SpaceOrControl,
    /// Not UTF-8.
    #[error("name is not valid UTF-8")]
    InvalidUtf8,
    /// A client name with a wildcard token (`*`, `>`): permissions would read its inbox
    /// (`@*`) as every inbox.
    #[error("a client name may not have a wildcard token (* or >)")]
    Wildcard,
}

/// Checks a channel name: 1 to 255 bytes of UTF-8 with no spaces or control characters. Returns
/// what it addresses.
pub fn validate_channel(name: &[u8]) -> Result<ChannelKind, NameError> {
    validate_name(name, MAX_CHANNEL_BYTES)?;
    Ok(match name {
        b"*" => ChannelKind::Broadcast,
        [b'@', _, ..] => ChannelKind::Inbox,
        _ => ChannelKind::Topic,
    })
}

/// Checks a client name: like a channel name, one byte shorter (its inbox is `@name`), it may
/// not itself start with `@`, and none of its dot-separated tokens is a wildcard.
pub fn validate_client_name(name: &[u8]) -> Result<(), NameError> {
    validate_name(name, MAX_CHANNEL_BYTES - 1)?;
    if name[0] == b'@' {
        return Err(NameError::SpaceOrControl);
    }
    if name.split(|&b| b == b'.').any(|token| token == b"*" || token == b">") {
        return Err(NameError::Wildcard);
    }
    Ok(())
}

fn validate_name(name: &[u8], max: usize) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > max {
        return Err(NameError::TooLong);
    }
    if name.iter().any(|&b| b <= b' ' || b == 0x7f) {
        return Err(NameError::SpaceOrControl);
    }
    if std::str::from_utf8(name).is_err() {
        return Err(NameError::InvalidUtf8);
    }
    Ok(())
}
