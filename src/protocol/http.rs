//! HTTP/1.1 for the browser endpoints: sniffing, request heads (parsed by httparse, with limits on
//! size and header count), query strings, and responses.

use bytes::{BufMut, Bytes, BytesMut};

/// Most bytes a request head (request line and headers) may take.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Most headers a request may carry.
pub const MAX_HEADERS: usize = 32;

/// Methods that mark a connection as HTTP; none of them is a text-protocol command.
const METHODS: [&[u8]; 7] =
    [b"GET ", b"POST ", b"PUT ", b"HEAD ", b"OPTIONS ", b"DELETE ", b"PATCH "];

/// Whether the first bytes of a connection are an HTTP request: `None` while they could still
/// be either (a "P" may become "PUT " or "PUB ").
pub fn looks_like_http(input: &[u8]) -> Option<bool> {
    let mut undecided = false;
    for method in METHODS {
        if input.len() >= method.len() {
            if input.starts_with(method) {
                return Some(true);
            }
        } else if method.starts_with(input) {
            undecided = true;
        }
    }
    if undecided {
        None
    } else {
        Some(false)
    }
}

/// Why a request was refused before routing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The head is not HTTP/1.x.
    #[error("malformed HTTP request: {0}")]
    Malformed(String),
    /// The head is longer than `MAX_HEAD_BYTES`, or has more than `MAX_HEADERS` headers.
    #[error(
        "request head too large (the limits are {MAX_HEAD_BYTES} bytes and {MAX_HEADERS} headers)"
    )]
    HeadTooLarge,
}

/// A parsed request head, owned (requests are rare next to messages; owning keeps the worker
/// free of borrows into its input buffer).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Head {
    /// The method, e.g. "GET".
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// Decoded query parameters, in order.
    pub query: Vec<(String, Vec<u8>)>,
    /// HTTP/1.1 (true) or 1.0.
    pub http11: bool,
    /// Bytes of the head, including the blank line.
    pub len: usize,
    /// Headers by lower-case name, values trimmed (repeated headers joined with ", ").
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// A header's value by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// True when the header's comma-separated values include `token` (case-insensitive).
    pub fn header_has(&self, name: &str, token: &str) -> bool {
        self.header(name)
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }

    /// Whether the connection stays open after the response.
    pub fn keep_alive(&self) -> bool {
        if self.http11 {
            !self.header_has("connection", "close")
        } else {
            self.header_has("connection", "keep-alive")
        }
    }

    /// Every value of a query parameter.
    pub fn params<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.query.iter().filter(move |(k, _)| k == name).map(|(_, v)| v.as_slice())
    }

    /// The first value of a query parameter.
    pub fn param<'a>(&'a self, name: &'a str) -> Option<&'a [u8]> {
        self.params(name).next()
    }
}

/// Parses a request head. `Ok(None)`: incomplete (and under the size limit).
pub fn parse_head(input: &[u8]) -> Result<Option<Head>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(input) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if input.len() > MAX_HEAD_BYTES => {
            return Err(HttpError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadTooLarge),
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    if len > MAX_HEAD_BYTES {
        return Err(HttpError::HeadTooLarge);
    }
    let target = request.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut head = Head {
        method: request.method.unwrap_or("GET").to_owned(),
        path: path.to_owned(),
        query: parse_query(query),
        http11: request.version == Some(1),
        len,
        headers: Vec::with_capacity(request.headers.len()),
    };
    for header in request.headers.iter() {
        let name = header.name.to_ascii_lowercase();
        let value = String::from_utf8_lossy(header.value).trim().to_owned();
        match head.headers.iter_mut().find(|(n, _)| *n == name) {
            Some((_, existing)) => {
                existing.push_str(", ");
                existing.push_str(&value);
            }
            None => head.headers.push((name, value)),
        }
    }
    Ok(Some(head))
}

/// Splits and percent-decodes a query string (`+` is a space, as browsers send forms).
pub fn parse_query(query: &str) -> Vec<(String, Vec<u8>)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (String::from_utf8_lossy(&percent_decode(key)).into_owned(), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push((hi * 16 + lo) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// The reason phrase of a status code this server sends.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        507 => "Insufficient Storage",
        _ => "Error",
    }
}

/// Headers every response carries: any origin may read (the endpoints hold no cookies or
/// credentials; a deployment that needs origin checks puts a proxy in front).
const COMMON_HEADERS: &str = "Access-Control-Allow-Origin: *\r\nCache-Control: no-store\r\n";

/// A complete response with a body.
pub fn response(status: u16, content_type: &str, body: &[u8]) -> Bytes {
    response_with(status, content_type, "", body)
}

/// A complete response with extra header lines (each ending in CRLF).
pub fn response_with(status: u16, content_type: &str, extra_headers: &str, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(160 + extra_headers.len() + body.len());
    out.put_slice(
        format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{COMMON_HEADERS}{extra_headers}\r\n",
            reason_phrase(status),
            body.len()
        )
        .as_bytes(),
    );
    out.put_slice(body);
    out.freeze()
}

/// `response` with its CORS header naming `origin` instead of `*` (with `--allowed-origins`),
/// and `Vary: Origin` so that caches keep one answer per origin.
pub fn with_origin(response: &[u8], origin: &str) -> Bytes {
    const ANY: &[u8] = b"Access-Control-Allow-Origin: *\r\n";
    let head_end = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(response.len());
    let Some(at) = response[..head_end].windows(ANY.len()).position(|w| w == ANY) else {
        return Bytes::copy_from_slice(response);
    };
    let mut out = BytesMut::with_capacity(response.len() + origin.len() + 16);
    out.put_slice(&response[..at]);
    out.put_slice(format!("Access-Control-Allow-Origin: {origin}\r\nVary: Origin\r\n").as_bytes());
    out.put_slice(&response[at + ANY.len()..]);
    out.freeze()
}

/// A JSON error response: `{"code":..,"reason":".."}`.
pub fn error_response(status: u16, reason: &str) -> Bytes {
    let body = super::json::error_object(status, reason);
    response(status, "application/json", &body)
}

/// The head of a response whose body is a stream that ends when the connection closes.
pub fn stream_head(content_type: &str) -> Bytes {
    Bytes::from(format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n{COMMON_HEADERS}Connection: close\r\nX-Accel-Buffering: no\r\n\r\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing_tells_http_from_text_commands() {
        assert_eq!(looks_like_http(b"GET / HTTP/1.1\r\n"), Some(true));
        assert_eq!(looks_like_http(b"POST /publish"), Some(true));
        assert_eq!(looks_like_http(b"PUT "), Some(true));
        for undecided in [&b"P"[..], b"PU", b"PO", b"G", b"GET", b"OPTIONS"] {
            assert_eq!(looks_like_http(undecided), None, "{undecided:?}");
        }
        for text in [&b"PUB a b\r\n"[..], b"PUBA", b"PING\r\n", b"PONG", b"SUB x", b"\r\n", b"GETX"]
        {
            assert_eq!(looks_like_http(text), Some(false), "{text:?}");
        }
    }

    #[test]
    fn heads_parse_at_every_split() {
        let raw = b"GET /sse?channel=news&channel=a%20b+c&after=7 HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 42\r\nConnection: keep-alive, Upgrade\r\nX-A: 1\r\nx-a: 2\r\n\r\nrest";
        let end = raw.len() - 4;
        for cut in 0..end {
            assert_eq!(parse_head(&raw[..cut]), Ok(None), "cut {cut}");
        }
        let head = parse_head(raw).unwrap().unwrap();
        assert_eq!(head.len, end);
        assert_eq!(head.method, "GET");
        assert_eq!(head.path, "/sse");
        let channels: Vec<&[u8]> = head.params("channel").collect();
        assert_eq!(channels, [&b"news"[..], b"a b c"]);
        assert_eq!(head.param("after"), Some(&b"7"[..]));
        assert_eq!(head.header("last-event-id"), Some("42"));
        assert_eq!(head.header("x-a"), Some("1, 2"));
        assert!(head.header_has("connection", "upgrade"));
        assert!(head.keep_alive());
    }

    #[test]
    fn limits_and_malformed_heads() {
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_HEAD_BYTES));
        assert_eq!(parse_head(&long), Err(HttpError::HeadTooLarge));
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend(format!("H{i}: v\r\n").as_bytes());
        }
        many.extend(b"\r\n");
        assert_eq!(parse_head(&many), Err(HttpError::HeadTooLarge));
        assert!(matches!(parse_head(b"GET / HTTP/9.9\r\n\r\n"), Err(HttpError::Malformed(_))));
        assert!(matches!(parse_head(b"GET /\x01 HTTP/1.1\r\n\r\n"), Err(HttpError::Malformed(_))));
        let old = parse_head(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!old.keep_alive());
        let closing = parse_head(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap().unwrap();
        assert!(!closing.keep_alive());
    }

    #[test]
    fn query_decoding() {
        let pairs = parse_query("a=1&b=%41%zz%4&c&=x&d=%e2%82%ac");
        assert_eq!(
            pairs,
            vec![
                ("a".to_owned(), b"1".to_vec()),
                ("b".to_owned(), b"A%zz%4".to_vec()),
                ("c".to_owned(), Vec::new()),
                (String::new(), b"x".to_vec()),
                ("d".to_owned(), "€".as_bytes().to_vec()),
            ]
        );
    }

    #[test]
    fn an_allowed_origin_is_named_instead_of_any() {
        let named = with_origin(&response(200, "text/plain", b"*"), "https://a.example");
        let text = std::str::from_utf8(&named).unwrap();
        assert!(
            text.contains("\r\nAccess-Control-Allow-Origin: https://a.example\r\nVary: Origin\r\n")
        );
        assert!(!text.contains("Allow-Origin: *"));
        assert!(text.ends_with("\r\n\r\n*"), "the body is untouched");
        let stream = with_origin(&stream_head("text/event-stream"), "https://a.example");
        assert!(std::str::from_utf8(&stream).unwrap().contains("Allow-Origin: https://a.example"));
    }

    #[test]
    fn responses_carry_their_length() {
        let r = response(200, "text/plain", b"hi");
        let text = std::str::from_utf8(&r).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Length: 2\r\n"));
        assert!(text.ends_with("\r\n\r\nhi"));
    }
}
