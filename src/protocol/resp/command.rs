//! Client commands in: multibulk arrays or inline lines, parsed incrementally and bounded.

use super::*;

/// What one client command may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandLimits {
    /// Longest argument.
    pub max_bulk: usize,
    /// Most bytes of the whole command, its framing included.
    pub max_command: usize,
    /// The connection has no permissions yet: Redis's errors for strangers.
    pub stranger: bool,
}

impl CommandLimits {
    /// Arguments up to `max_bulk`, a command up to `max_command`, for an authenticated client.
    pub fn new(max_bulk: usize, max_command: usize) -> Self {
        CommandLimits { max_bulk, max_command, stranger: false }
    }
}

/// Where the parse of a command in pieces stands, so that the next read goes on from there: a
/// byte is parsed once, not once per read (a command trickling in one byte at a time costs
/// linear time). Fed the command's bytes from its first one, growing at the end.
#[derive(Debug, Default)]
pub struct CommandParser {
    /// Where the next element (count line, length line, argument) starts.
    at: usize,
    /// How far the line being read has been searched for its end.
    scanned: usize,
    /// Arguments still to come, once the count line was read.
    remaining: Option<usize>,
    /// The length of the argument at `at`, once its length line was read.
    bulk: Option<usize>,
    /// Where each argument read so far lies in the command.
    arguments: Vec<(usize, usize)>,
    /// Bytes looked at over every call (tests check that the work is linear).
    #[cfg(test)]
    pub(super) examined: usize,
}

impl CommandParser {
    /// True when no part of a command has been parsed.
    pub fn is_idle(&self) -> bool {
        self.at == 0 && self.scanned == 0
    }

    /// Goes on parsing the command that `input` starts with; `Ok(None)` while it is incomplete
    /// (what was parsed is remembered: call again with the same bytes and more). On a complete
    /// command or an error the parser is ready for the next command.
    pub fn parse<'a>(
        &mut self,
        input: &'a [u8],
        limits: CommandLimits,
    ) -> Result<Command<'a>, RespError> {
        let parsed = self.advance(input, limits);
        if !matches!(parsed, Ok(None)) {
            self.at = 0;
            self.scanned = 0;
            self.remaining = None;
            self.bulk = None;
            self.arguments.clear();
        }
        parsed
    }

    fn advance<'a>(
        &mut self,
        input: &'a [u8],
        limits: CommandLimits,
    ) -> Result<Command<'a>, RespError> {
        let Some(&first) = input.first() else { return Ok(None) };
        if first != b'*' {
            let max = MAX_INLINE_BYTES.min(limits.max_command);
            let Some((text, used)) = self.line(input, 0, max, RespError::InlineTooBig)? else {
                return Ok(None);
            };
            return Ok(Some((split_inline(text)?, used)));
        }
        loop {
            let Some(remaining) = self.remaining else {
                let max = MAX_INLINE_BYTES.min(limits.max_command);
                let Some((count, next)) =
                    self.line(input, 1, max, RespError::MultibulkCountTooBig)?
                else {
                    return Ok(None);
                };
                let count = number(count).ok_or(RespError::InvalidMultibulkLength)?;
                if count > MAX_ARGUMENTS as i64 {
                    return Err(RespError::InvalidMultibulkLength);
                }
                if limits.stranger && count > MAX_STRANGER_ARGUMENTS as i64 {
                    return Err(RespError::UnauthenticatedMultibulkLength);
                }
                let count = count.max(0) as usize;
                // A count whose smallest encoding cannot fit is refused before anything else.
                if next + count * MIN_ARGUMENT_BYTES > limits.max_command {
                    return Err(RespError::QueryBufferLimit(limits.max_command));
                }
                self.at = next;
                self.remaining = Some(count);
                self.arguments.reserve(count.min(64));
                continue;
            };
            if remaining == 0 {
                let arguments = self.arguments.iter().map(|&(start, end)| &input[start..end]);
                return Ok(Some((arguments.collect(), self.at)));
            }
            match self.bulk {
                None => {
                    let Some(&kind) = input.get(self.at) else { return Ok(None) };
                    if kind != b'$' {
                        return Err(RespError::ExpectedBulk(kind as char));
                    }
                    let Some((length, next)) =
                        self.line(input, self.at + 1, 32, RespError::BulkCountTooBig)?
                    else {
                        return Ok(None);
                    };
                    let length = number(length)
                        .and_then(|n| usize::try_from(n).ok())
                        .ok_or(RespError::InvalidBulkLength)?;
                    if length > limits.max_bulk {
                        return Err(match limits.stranger {
                            true => RespError::UnauthenticatedBulkLength,
                            false => RespError::InvalidBulkLength,
                        });
                    }
                    let rest = (remaining - 1) * MIN_ARGUMENT_BYTES;
                    if next + length + 2 + rest > limits.max_command {
                        return Err(RespError::QueryBufferLimit(limits.max_command));
                    }
                    self.at = next;
                    self.bulk = Some(length);
                }
                Some(length) => {
                    let end = self.at + length;
                    if input.len() < end + 2 {
                        return Ok(None);
                    }
                    if &input[end..end + 2] != b"\r\n" {
                        return Err(RespError::Malformed("bulk string without its CRLF"));
                    }
                    #[cfg(test)]
                    {
                        self.examined += 2;
                    }
                    self.arguments.push((self.at, end));
                    self.at = end + 2;
                    self.bulk = None;
                    self.remaining = Some(remaining - 1);
                }
            }
        }
    }

    /// The line starting at `start`, without its line ending, and where the next element
    /// starts; searched from where the last call stopped. `Err(too_big)` past `max` bytes.
    fn line<'a>(
        &mut self,
        input: &'a [u8],
        start: usize,
        max: usize,
        too_big: RespError,
    ) -> Result<Option<(&'a [u8], usize)>, RespError> {
        let from = self.scanned.max(start).min(input.len());
        let found = input[from..].iter().position(|&b| b == b'\n');
        #[cfg(test)]
        {
            self.examined += found.map_or(input.len() - from, |i| i + 1);
        }
        match found {
            Some(i) => {
                self.scanned = 0;
                let end = from + i;
                let text = &input[start..end];
                let text = text.strip_suffix(b"\r").unwrap_or(text);
                if text.len() > max {
                    return Err(too_big);
                }
                Ok(Some((text, end + 1)))
            }
            None if input.len() - start > max => Err(too_big),
            None => {
                self.scanned = input.len();
                Ok(None)
            }
        }
    }
}

/// The line at the start of `input` without its `\r\n`, and the bytes it takes; `None` when
/// the line ending has not arrived. `Err(too_big)` when `max` bytes came without one.
pub(super) fn line(
    input: &[u8],
    max: usize,
    too_big: RespError,
) -> Result<Option<(&[u8], usize)>, RespError> {
    match input.iter().position(|&b| b == b'\n') {
        Some(end) => {
            let text = &input[..end];
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            Ok(Some((text, end + 1)))
        }
        None if input.len() > max => Err(too_big),
        None => Ok(None),
    }
}

pub(super) fn number(digits: &[u8]) -> Option<i64> {
    let (negative, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    let value = crate::protocol::fields::number(digits)?;
    let value = i64::try_from(value).ok()?;
    Some(if negative { -value } else { value })
}

/// A decoded command's arguments (borrowed from the input) and the bytes it took; `None` while
/// incomplete.
pub type Command<'a> = Option<(Vec<&'a [u8]>, usize)>;

/// Decodes one client command: its arguments (borrowed from `input`) and the bytes it took;
/// `Ok(None)` when incomplete. An empty command (an empty line, `*0`) decodes to no arguments.
/// Bulk strings longer than `max_bulk_bytes` are refused from their length line. For a whole
/// input at hand; a connection's commands arriving in pieces go through a `CommandParser`.
pub fn parse_command(input: &[u8], max_bulk_bytes: usize) -> Result<Command<'_>, RespError> {
    CommandParser::default().parse(input, CommandLimits::new(max_bulk_bytes, usize::MAX))
}

/// Splits an inline command as Redis's `sdssplitargs` does: whitespace separates, `"…"` and
/// `'…'` quote (a quote must close and be followed by whitespace or the end). Quoted text is
/// taken as it is, without Redis's C escapes inside double quotes: clients send multibulk, and
/// people typing inline rarely need `\x00`; what is borrowed needs no copy.
fn split_inline(text: &[u8]) -> Result<Vec<&[u8]>, RespError> {
    let mut arguments = Vec::new();
    let mut at = 0;
    while at < text.len() {
        while at < text.len() && text[at].is_ascii_whitespace() {
            at += 1;
        }
        if at == text.len() {
            break;
        }
        let (quote, start) = match text[at] {
            q @ (b'"' | b'\'') => (Some(q), at + 1),
            _ => (None, at),
        };
        let mut end = start;
        match quote {
            Some(q) => {
                while end < text.len() && text[end] != q {
                    end += 1;
                }
                if end == text.len() {
                    return Err(RespError::UnbalancedQuotes);
                }
                // The closing quote must end the argument.
                if end + 1 < text.len() && !text[end + 1].is_ascii_whitespace() {
                    return Err(RespError::UnbalancedQuotes);
                }
                arguments.push(&text[start..end]);
                at = end + 1;
            }
            None => {
                while end < text.len() && !text[end].is_ascii_whitespace() {
                    end += 1;
                }
                arguments.push(&text[start..end]);
                at = end;
            }
        }
    }
    Ok(arguments)
}
