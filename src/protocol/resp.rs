//! RESP, the Redis serialization protocol (RESP2 and RESP3), as a pure codec: client commands in
//! (multibulk arrays of bulk strings, or inline lines as `redis-cli` and `nc` send them), replies
//! and pushes out. The error strings are Redis's own (`networking.c`), so that clients written
//! against Redis see what they expect.
//!
//! A command in pieces is parsed incrementally (`CommandParser`, Redis's `multibulklen` and
//! `bulklen`): each byte is looked at once however the command arrives, and its size is bounded
//! from its length lines, before its bytes are buffered (`CommandLimits`).

use bytes::{BufMut, BytesMut};

/// Longest inline command, and longest count line, without its line ending (Redis's
/// `PROTO_INLINE_MAX_SIZE`).
pub const MAX_INLINE_BYTES: usize = 64 * 1024;
/// Most arguments in one command (Redis: 1024 * 1024).
pub const MAX_ARGUMENTS: usize = 1024 * 1024;
/// Deepest nesting of aggregates accepted when decoding a value (RESP3 replies).
pub const MAX_DEPTH: usize = 32;

/// A violation of RESP. Redis answers each with `-ERR Protocol error: …` and closes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    /// An inline command longer than `MAX_INLINE_BYTES` without its line ending.
    #[error("Protocol error: too big inline request")]
    InlineTooBig,
    /// Quotes in an inline command that do not close.
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    /// A multibulk count line too long to be a number.
    #[error("Protocol error: too big mbulk count string")]
    MultibulkCountTooBig,
    /// A multibulk count that is not a number, or is over `MAX_ARGUMENTS`.
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    /// An argument that is not a bulk string.
    #[error("Protocol error: expected '$', got '{0}'")]
    ExpectedBulk(char),
    /// A bulk length line too long to be a number.
    #[error("Protocol error: too big bulk count string")]
    BulkCountTooBig,
    /// A bulk length that is not a number, or over the limit.
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    /// A value's type byte is none of RESP's (decoding replies).
    #[error("Protocol error: invalid type byte '{0}'")]
    InvalidType(char),
    /// Aggregates nested deeper than `MAX_DEPTH` (decoding replies).
    #[error("Protocol error: nesting deeper than {MAX_DEPTH}")]
    TooDeep,
    /// Anything else malformed (a missing line ending, a bad number in a reply).
    #[error("Protocol error: {0}")]
    Malformed(&'static str),
    /// A connection that has not authenticated announced more than
    /// `MAX_STRANGER_ARGUMENTS` arguments (Redis's text and rule).
    #[error("Protocol error: unauthenticated multibulk length")]
    UnauthenticatedMultibulkLength,
    /// A connection that has not authenticated announced a bulk string over its budget.
    #[error("Protocol error: unauthenticated bulk length")]
    UnauthenticatedBulkLength,
    /// A command larger than the query buffer limit (`--max-query-bytes`; Redis's
    /// `client-query-buffer-limit`), refused from its length lines.
    #[error("Protocol error: command larger than the query buffer limit of {0} bytes")]
    QueryBufferLimit(usize),
}

/// Most arguments a command may have before the connection authenticated (Redis's rule: AUTH and
/// HELLO need no more).
pub const MAX_STRANGER_ARGUMENTS: usize = 10;

/// The smallest encoding of one argument: `$0\r\n\r\n`.
const MIN_ARGUMENT_BYTES: usize = 6;

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
    examined: usize,
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
fn line(input: &[u8], max: usize, too_big: RespError) -> Result<Option<(&[u8], usize)>, RespError> {
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

fn number(digits: &[u8]) -> Option<i64> {
    let (negative, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    let value = super::fields::number(digits)?;
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

/// `+OK`-style simple string.
pub fn put_simple(out: &mut BytesMut, text: &str) {
    out.put_u8(b'+');
    out.put_slice(text.as_bytes());
    out.put_slice(b"\r\n");
}

/// `-ERR …` error (line endings in `text` become spaces).
pub fn put_error(out: &mut BytesMut, text: &str) {
    out.put_u8(b'-');
    out.put_slice(text.replace(['\r', '\n'], " ").as_bytes());
    out.put_slice(b"\r\n");
}

/// `:n` integer.
pub fn put_integer(out: &mut BytesMut, value: i64) {
    out.put_slice(format!(":{value}\r\n").as_bytes());
}

/// `$len` bulk string.
pub fn put_bulk(out: &mut BytesMut, bytes: &[u8]) {
    out.put_slice(format!("${}\r\n", bytes.len()).as_bytes());
    out.put_slice(bytes);
    out.put_slice(b"\r\n");
}

/// The null bulk string (RESP2) or null (RESP3).
pub fn put_null(out: &mut BytesMut, resp3: bool) {
    out.put_slice(if resp3 { b"_\r\n" } else { b"$-1\r\n" });
}

/// The header of an array of `len` (RESP2 `*`), or of a push (RESP3 `>`), whose elements follow.
pub fn put_aggregate(out: &mut BytesMut, len: usize, push: bool) {
    out.put_slice(format!("{}{len}\r\n", if push { '>' } else { '*' }).as_bytes());
}

/// A channel message as Redis delivers it: `message`, the channel, the payload, as an array
/// (RESP2) or a push (RESP3).
pub fn put_message(out: &mut BytesMut, channel: &[u8], payload: &[u8], resp3: bool) {
    put_aggregate(out, 3, resp3);
    put_bulk(out, b"message");
    put_bulk(out, channel);
    put_bulk(out, payload);
}

/// A message to a sharded subscription (SSUBSCRIBE): `smessage`, the channel, the payload.
pub fn put_smessage(out: &mut BytesMut, channel: &[u8], payload: &[u8], resp3: bool) {
    put_aggregate(out, 3, resp3);
    put_bulk(out, b"smessage");
    put_bulk(out, channel);
    put_bulk(out, payload);
}

/// A message to a pattern subscription: `pmessage`, the pattern, the channel, the payload.
pub fn put_pmessage(
    out: &mut BytesMut,
    pattern: &[u8],
    channel: &[u8],
    payload: &[u8],
    resp3: bool,
) {
    put_aggregate(out, 4, resp3);
    put_bulk(out, b"pmessage");
    put_bulk(out, pattern);
    put_bulk(out, channel);
    put_bulk(out, payload);
}

/// A (un)subscription's confirmation: `kind` (`subscribe`, `unsubscribe`), the channel (none:
/// an UNSUBSCRIBE of nothing), and how many subscriptions the connection has now.
pub fn put_subscription(
    out: &mut BytesMut,
    kind: &[u8],
    channel: Option<&[u8]>,
    count: usize,
    resp3: bool,
) {
    put_aggregate(out, 3, resp3);
    put_bulk(out, kind);
    match channel {
        Some(channel) => put_bulk(out, channel),
        None => put_null(out, resp3),
    }
    put_integer(out, count as i64);
}

/// The text of an error reply for one of fanout's refusals, with the error code Redis clients
/// look for where there is one.
pub fn error_text(code: crate::protocol::ErrorCode, detail: &str) -> String {
    use crate::protocol::ErrorCode as E;
    match code {
        E::Unauthorized if detail.starts_with("authenticate first") => {
            format!("NOAUTH {detail}")
        }
        E::Unauthorized => format!("WRONGPASS {detail}"),
        E::Forbidden => format!("NOPERM {detail}"),
        _ => format!("ERR {detail}"),
    }
}

/// A decoded reply (tests and the load generator read servers' answers with it).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `+` simple string.
    Simple(String),
    /// `-` error.
    Error(String),
    /// `:` integer.
    Integer(i64),
    /// `$` bulk string (`None`: null bulk).
    Bulk(Option<Vec<u8>>),
    /// `*` array (`None`: null array).
    Array(Option<Vec<Value>>),
    /// `_` null (RESP3).
    Null,
    /// `#` boolean (RESP3).
    Boolean(bool),
    /// `,` double (RESP3).
    Double(f64),
    /// `(` big number (RESP3), as text.
    BigNumber(String),
    /// `=` verbatim string (RESP3): format and text.
    Verbatim(String, Vec<u8>),
    /// `%` map (RESP3).
    Map(Vec<(Value, Value)>),
    /// `~` set (RESP3).
    Set(Vec<Value>),
    /// `|` attribute (RESP3), and the value it annotates.
    Attribute(Vec<(Value, Value)>, Box<Value>),
    /// `>` push (RESP3).
    Push(Vec<Value>),
}

/// Decodes one value: `Ok(None)` when incomplete; bulk strings are bounded by `max_bulk_bytes`
/// and nesting by `MAX_DEPTH`.
pub fn parse_value(
    input: &[u8],
    max_bulk_bytes: usize,
) -> Result<Option<(Value, usize)>, RespError> {
    parse_at(input, max_bulk_bytes, 0)
}

fn parse_at(
    input: &[u8],
    max_bulk: usize,
    depth: usize,
) -> Result<Option<(Value, usize)>, RespError> {
    if depth > MAX_DEPTH {
        return Err(RespError::TooDeep);
    }
    let Some(&kind) = input.first() else { return Ok(None) };
    let Some((text, used)) = line(&input[1..], MAX_INLINE_BYTES, RespError::InlineTooBig)? else {
        return Ok(None);
    };
    let header = used + 1;
    let text_string = || String::from_utf8_lossy(text).into_owned();
    let count = || -> Result<i64, RespError> {
        number(text).ok_or(RespError::Malformed("a length that is not a number"))
    };
    let sized = |len: i64| -> Result<Option<(Vec<u8>, usize)>, RespError> {
        if len < 0 || len as usize > max_bulk {
            return Err(RespError::InvalidBulkLength);
        }
        let end = header + len as usize;
        if input.len() < end + 2 {
            return Ok(None);
        }
        if &input[end..end + 2] != b"\r\n" {
            return Err(RespError::Malformed("bulk string without its CRLF"));
        }
        Ok(Some((input[header..end].to_vec(), end + 2)))
    };
    let elements = |n: usize| -> Result<Option<(Vec<Value>, usize)>, RespError> {
        let mut at = header;
        let mut values = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            let Some((value, used)) = parse_at(&input[at..], max_bulk, depth + 1)? else {
                return Ok(None);
            };
            values.push(value);
            at += used;
        }
        Ok(Some((values, at)))
    };
    let aggregate_len = |n: i64| -> Result<usize, RespError> {
        if n < 0 || n > MAX_ARGUMENTS as i64 {
            return Err(RespError::InvalidMultibulkLength);
        }
        Ok(n as usize)
    };
    Ok(Some(match kind {
        b'+' => (Value::Simple(text_string()), header),
        b'-' => (Value::Error(text_string()), header),
        b':' => (Value::Integer(count()?), header),
        b'(' => (Value::BigNumber(text_string()), header),
        b'#' => match text {
            b"t" => (Value::Boolean(true), header),
            b"f" => (Value::Boolean(false), header),
            _ => return Err(RespError::Malformed("a boolean that is neither t nor f")),
        },
        b',' => {
            let double = std::str::from_utf8(text)
                .ok()
                .and_then(|t| match t {
                    "inf" => Some(f64::INFINITY),
                    "-inf" => Some(f64::NEG_INFINITY),
                    t => t.parse().ok(),
                })
                .ok_or(RespError::Malformed("a double that is not a number"))?;
            (Value::Double(double), header)
        }
        b'_' => (Value::Null, header),
        b'$' if text == b"-1" => (Value::Bulk(None), header),
        b'$' => match sized(count()?)? {
            Some((bytes, used)) => (Value::Bulk(Some(bytes)), used),
            None => return Ok(None),
        },
        b'=' => match sized(count()?)? {
            Some((bytes, used)) => {
                if bytes.len() < 4 || bytes[3] != b':' {
                    return Err(RespError::Malformed("a verbatim string without its format"));
                }
                let format = String::from_utf8_lossy(&bytes[..3]).into_owned();
                (Value::Verbatim(format, bytes[4..].to_vec()), used)
            }
            None => return Ok(None),
        },
        b'*' if text == b"-1" => (Value::Array(None), header),
        b'*' | b'~' | b'>' => {
            let Some((values, used)) = elements(aggregate_len(count()?)?)? else { return Ok(None) };
            let value = match kind {
                b'*' => Value::Array(Some(values)),
                b'~' => Value::Set(values),
                _ => Value::Push(values),
            };
            (value, used)
        }
        b'%' | b'|' => {
            let Some((values, used)) = elements(2 * aggregate_len(count()?)?)? else {
                return Ok(None);
            };
            let mut values = values.into_iter();
            let mut pairs = Vec::new();
            while let (Some(k), Some(v)) = (values.next(), values.next()) {
                pairs.push((k, v));
            }
            if kind == b'%' {
                (Value::Map(pairs), used)
            } else {
                // An attribute annotates the value that follows it.
                let Some((value, more)) = parse_at(&input[used..], max_bulk, depth + 1)? else {
                    return Ok(None);
                };
                (Value::Attribute(pairs, Box::new(value)), used + more)
            }
        }
        other => return Err(RespError::InvalidType(other as char)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    /// Every prefix of a complete encoding is incomplete; the whole decodes to `expected`.
    fn at_every_split<T: std::fmt::Debug + PartialEq>(
        bytes: &[u8],
        parse: impl Fn(&[u8]) -> Result<Option<(T, usize)>, RespError>,
        expected: T,
    ) {
        for cut in 0..bytes.len() {
            assert_eq!(
                parse(&bytes[..cut]),
                Ok(None),
                "cut at {cut} of {:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        assert_eq!(parse(bytes), Ok(Some((expected, bytes.len()))));
    }

    /// `parse_command` with owned arguments (a closure cannot hand out borrows of its input).
    type Owned = Option<(Vec<Vec<u8>>, usize)>;

    fn command(input: &[u8]) -> Result<Owned, RespError> {
        let parsed = parse_command(input, MAX)?;
        Ok(parsed.map(|(arguments, used)| (arguments.iter().map(|a| a.to_vec()).collect(), used)))
    }

    fn args(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    #[test]
    fn commands_multibulk_and_inline_at_every_split() {
        let multibulk = b"*3\r\n$7\r\nPUBLISH\r\n$4\r\nnews\r\n$5\r\nhi\r\n!\r\n";
        at_every_split(multibulk, command, args(&["PUBLISH", "news", "hi\r\n!"]));
        at_every_split(b"subscribe a  b\r\n", command, args(&["subscribe", "a", "b"]));
        at_every_split(b"PING\n", command, args(&["PING"]));
        at_every_split(b"*0\r\n", command, Vec::new());
        at_every_split(b"echo \"a b\" 'c'\r\n", command, args(&["echo", "a b", "c"]));
        at_every_split(b"*1\r\n$0\r\n\r\n", command, args(&[""]));
    }

    #[test]
    fn command_errors_are_redis_s() {
        let cases: [(&[u8], RespError); 8] = [
            (b"*x\r\n", RespError::InvalidMultibulkLength),
            (b"*2000000\r\n", RespError::InvalidMultibulkLength),
            (b"*1\r\n:1\r\n", RespError::ExpectedBulk(':')),
            (b"*1\r\n$-5\r\n", RespError::InvalidBulkLength),
            (b"*1\r\n$x\r\n", RespError::InvalidBulkLength),
            (b"*1\r\n$2000000\r\n", RespError::InvalidBulkLength),
            (b"*1\r\n$2\r\nabcd\r\n", RespError::Malformed("bulk string without its CRLF")),
            (b"echo \"unclosed\r\n", RespError::UnbalancedQuotes),
        ];
        for (input, expected) in cases {
            assert_eq!(
                parse_command(input, MAX),
                Err(expected),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        assert_eq!(parse_command(&[b'a'; MAX_INLINE_BYTES + 1], MAX), Err(RespError::InlineTooBig));
        let mut long_count = b"*".to_vec();
        long_count.extend([b'1'; MAX_INLINE_BYTES + 1]);
        assert_eq!(parse_command(&long_count, MAX), Err(RespError::MultibulkCountTooBig));
        assert_eq!(
            parse_command(b"*1\r\n$111111111111111111111111111111111", MAX),
            Err(RespError::BulkCountTooBig)
        );
        assert_eq!(
            RespError::ExpectedBulk(':').to_string(),
            "Protocol error: expected '$', got ':'"
        );
    }

    /// Feeds `input` to one parser `step` bytes at a time, as reads would bring it.
    fn trickled(input: &[u8], step: usize, limits: CommandLimits) -> Result<Owned, RespError> {
        let mut parser = CommandParser::default();
        let mut end = 0;
        loop {
            end = (end + step).min(input.len());
            match parser.parse(&input[..end], limits)? {
                Some((arguments, used)) => {
                    let arguments = arguments.iter().map(|a| a.to_vec()).collect();
                    return Ok(Some((arguments, used)));
                }
                None if end == input.len() => return Ok(None),
                None => {}
            }
        }
    }

    #[test]
    fn a_command_in_pieces_parses_as_a_whole() {
        let limits = CommandLimits::new(MAX, usize::MAX);
        let inputs: [&[u8]; 4] = [
            b"*3\r\n$7\r\nPUBLISH\r\n$4\r\nnews\r\n$5\r\nhi\r\n!\r\n",
            b"subscribe a  b\r\n",
            b"*0\r\n",
            b"*2\r\n$0\r\n\r\n$3\r\nabc\r\n",
        ];
        for input in inputs {
            for step in [1, 2, 3, 7, input.len()] {
                assert_eq!(trickled(input, step, limits), command(input), "step {step}");
            }
        }
        // The parser is ready for the next command after one completes.
        let mut parser = CommandParser::default();
        assert!(parser.parse(b"*1\r\n$4\r\nPI", limits).unwrap().is_none());
        assert!(!parser.is_idle());
        assert_eq!(parser.parse(b"*1\r\n$4\r\nPING\r\n", limits).unwrap().unwrap().1, 14);
        assert!(parser.is_idle());
        assert_eq!(parser.parse(b"PING\r\n", limits).unwrap().unwrap().0, [b"PING"]);
    }

    #[test]
    fn strangers_get_redis_s_errors_before_any_bytes_are_held() {
        let stranger = CommandLimits { max_bulk: 9 * 1024, max_command: 9 * 1024, stranger: true };
        let parse = |input: &[u8]| CommandParser::default().parse(input, stranger).map(|_| ());
        assert_eq!(parse(b"*11\r\n"), Err(RespError::UnauthenticatedMultibulkLength));
        assert_eq!(parse(b"*1\r\n$9217\r\n"), Err(RespError::UnauthenticatedBulkLength));
        assert_eq!(parse(b"*2\r\n$5000\r\n").and(parse(b"*3\r\n$4\r\nAUTH\r\n$5000\r\n")), Ok(()));
        let two_halves =
            [b"*3\r\n$4\r\nAUTH\r\n$5000\r\n".as_slice(), &[b'a'; 5000], b"\r\n$5000\r\n"].concat();
        assert_eq!(parse(&two_halves), Err(RespError::QueryBufferLimit(9 * 1024)));
        assert_eq!(parse(&[b'a'; 9 * 1024 + 1]), Err(RespError::InlineTooBig));
        let auth = b"*2\r\n$4\r\nAUTH\r\n$8192\r\n".iter().chain(&[b'x'; 8192]).chain(b"\r\n");
        let auth: Vec<u8> = auth.copied().collect();
        assert!(CommandParser::default().parse(&auth, stranger).unwrap().is_some());
    }

    #[test]
    fn the_query_limit_holds_from_the_length_lines() {
        let limits = CommandLimits::new(1024, 2000);
        let parse = |input: &[u8]| CommandParser::default().parse(input, limits).map(|_| ());
        assert_eq!(
            parse(b"*400\r\n"),
            Err(RespError::QueryBufferLimit(2000)),
            "6 bytes each at least"
        );
        assert_eq!(parse(b"*3\r\n$1000\r\n"), Ok(()));
        let over = [b"*3\r\n$1000\r\n".as_slice(), &[b'a'; 1000], b"\r\n$1000\r\n"].concat();
        assert_eq!(parse(&over), Err(RespError::QueryBufferLimit(2000)));
        assert_eq!(parse(b"*1\r\n$1025\r\n"), Err(RespError::InvalidBulkLength));
    }

    #[test]
    fn a_million_arguments_one_byte_at_a_time_take_linear_work() {
        // Parsed in pieces, each call goes on where the last stopped: the bytes looked at over
        // all calls stay a small multiple of the command, where a parse from the start on each
        // read is quadratic (the attack: 512k arguments took 3.6 s of a worker).
        let arguments = 1 << 20;
        let mut input = format!("*{arguments}\r\n").into_bytes();
        for _ in 0..arguments {
            input.extend_from_slice(b"$1\r\na\r\n");
        }
        let limits = CommandLimits::new(16, usize::MAX);
        let mut parser = CommandParser::default();
        let mut end = 0;
        let parsed = loop {
            // Reads of 1,000 bytes: 7,300 calls, each one cheap.
            end = (end + 1000).min(input.len());
            if let Some((parsed, used)) = parser.parse(&input[..end], limits).unwrap() {
                break (parsed.len(), used);
            }
        };
        assert_eq!(parsed, (arguments, input.len()));
        assert!(
            parser.examined <= 2 * input.len(),
            "{} bytes looked at for a command of {}",
            parser.examined,
            input.len()
        );
        let refused = CommandParser::default().parse(&input, CommandLimits::new(16, 1 << 20));
        assert_eq!(refused.map(|_| ()), Err(RespError::QueryBufferLimit(1 << 20)));
    }

    #[test]
    fn every_reply_type_at_every_split() {
        let p = |i: &[u8]| parse_value(i, MAX);
        at_every_split(b"+OK\r\n", p, Value::Simple("OK".into()));
        at_every_split(b"-ERR no\r\n", p, Value::Error("ERR no".into()));
        at_every_split(b":-42\r\n", p, Value::Integer(-42));
        at_every_split(b"$3\r\nabc\r\n", p, Value::Bulk(Some(b"abc".to_vec())));
        at_every_split(b"$-1\r\n", p, Value::Bulk(None));
        at_every_split(b"*-1\r\n", p, Value::Array(None));
        at_every_split(b"_\r\n", p, Value::Null);
        at_every_split(b"#t\r\n", p, Value::Boolean(true));
        at_every_split(b",1.5\r\n", p, Value::Double(1.5));
        at_every_split(
            b"(12345678901234567890\r\n",
            p,
            Value::BigNumber("12345678901234567890".into()),
        );
        at_every_split(b"=8\r\ntxt:hey!\r\n", p, Value::Verbatim("txt".into(), b"hey!".to_vec()));
        at_every_split(
            b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$2\r\nhi\r\n",
            p,
            Value::Push(vec![
                Value::Bulk(Some(b"message".to_vec())),
                Value::Bulk(Some(b"c".to_vec())),
                Value::Bulk(Some(b"hi".to_vec())),
            ]),
        );
        at_every_split(
            b"%1\r\n+server\r\n*2\r\n:1\r\n~1\r\n#f\r\n",
            p,
            Value::Map(vec![(
                Value::Simple("server".into()),
                Value::Array(Some(vec![
                    Value::Integer(1),
                    Value::Set(vec![Value::Boolean(false)]),
                ])),
            )]),
        );
        at_every_split(
            b"|1\r\n+ttl\r\n:3\r\n+v\r\n",
            p,
            Value::Attribute(
                vec![(Value::Simple("ttl".into()), Value::Integer(3))],
                Box::new(Value::Simple("v".into())),
            ),
        );
    }

    #[test]
    fn reply_errors() {
        let p = |i: &[u8]| parse_value(i, 16);
        assert_eq!(p(b"?x\r\n"), Err(RespError::InvalidType('?')));
        assert_eq!(p(b"$100\r\n"), Err(RespError::InvalidBulkLength), "over the bulk limit");
        assert_eq!(p(b"#x\r\n"), Err(RespError::Malformed("a boolean that is neither t nor f")));
        assert_eq!(p(b"*-2\r\n"), Err(RespError::InvalidMultibulkLength));
        let deep = "*1\r\n".repeat(MAX_DEPTH + 2) + ":1\r\n";
        assert_eq!(p(deep.as_bytes()), Err(RespError::TooDeep));
    }

    #[test]
    fn encoders_write_what_the_decoder_reads() {
        let mut out = BytesMut::new();
        put_aggregate(&mut out, 3, false);
        put_bulk(&mut out, b"message");
        put_bulk(&mut out, b"news");
        put_bulk(&mut out, b"a\r\nb");
        put_simple(&mut out, "OK");
        put_error(&mut out, "ERR unknown command 'x'\r\n");
        put_integer(&mut out, 7);
        put_null(&mut out, false);
        put_null(&mut out, true);
        let mut at = 0;
        let mut values = Vec::new();
        while let Some((value, used)) = parse_value(&out[at..], MAX).unwrap() {
            values.push(value);
            at += used;
        }
        assert_eq!(at, out.len());
        let bulk = |b: &[u8]| Value::Bulk(Some(b.to_vec()));
        assert_eq!(
            values,
            [
                Value::Array(Some(vec![bulk(b"message"), bulk(b"news"), bulk(b"a\r\nb")])),
                Value::Simple("OK".into()),
                Value::Error("ERR unknown command 'x'  ".into()),
                Value::Integer(7),
                Value::Bulk(None),
                Value::Null,
            ]
        );
    }
}
