//! RESP, the Redis serialization protocol (RESP2 and RESP3), as a pure codec: client commands in
//! (multibulk arrays of bulk strings, or inline lines as `redis-cli` and `nc` send them), replies
//! and pushes out. The error strings are Redis's own (`networking.c`), so that clients written
//! against Redis see what they expect.
//!
//! A command in pieces is parsed incrementally (`CommandParser`, Redis's `multibulklen` and
//! `bulklen`): each byte is looked at once however the command arrives, and its size is bounded
//! from its length lines, before its bytes are buffered (`CommandLimits`).

use bytes::{BufMut, BytesMut};

mod command;
mod encode;
mod value;

pub use self::command::*;
pub use self::encode::*;
pub use self::value::*;

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
