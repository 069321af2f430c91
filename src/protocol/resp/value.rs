//! Decoding any reply (what tests and the load generator read servers' answers with).

use super::*;

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
