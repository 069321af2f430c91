//! Error codes sent to clients, and the protocol violations that close a connection.

/// Numeric error codes sent in `ERR` frames. Modelled on HTTP's so that they read familiar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// Malformed frame or line, unknown command or opcode, bad preface. Fatal.
    BadRequest = 400,
    /// No valid token: authenticate first (AUTH), or the token was refused or expired. Fatal
    /// when authentication timed out, failed too often, or the token expired.
    Unauthorized = 401,
    /// The command is not allowed on this channel (subscribing to `*` or to another's `@inbox`),
    /// or the connection's permissions do not cover it. Nothing changed; the connection stays.
    Forbidden = 403,
    /// No connected client has that name (or, over HTTP, no such path).
    NotFound = 404,
    /// HTTP: the path does not take this method.
    MethodNotAllowed = 405,
    /// The client stayed silent past the ping timeout. Fatal.
    StaleConnection = 408,
    /// The name is taken, or this connection already has one, or it is already subscribed.
    Conflict = 409,
    /// A strict resume asked for messages that are no longer retained (or another epoch's).
    Gone = 410,
    /// HTTP: a request body without a Content-Length (chunked bodies are not taken).
    LengthRequired = 411,
    /// Frame or line longer than the server's maximum. Fatal.
    FrameTooLarge = 413,
    /// Channel or client name is empty, too long, or has spaces, control bytes or invalid UTF-8.
    InvalidName = 422,
    /// HTTP: `/ws` without a valid WebSocket upgrade (version 13).
    UpgradeRequired = 426,
    /// A per-connection or server-wide count limit was reached (subscriptions, channels), or a
    /// rate limit (publishes or subscribes per second): the command was not carried out.
    LimitReached = 429,
    /// HTTP: the request head is over its size or header-count limit. Fatal.
    HeadersTooLarge = 431,
    /// An acknowledged publish could not be made durable (`--fsync always`): its record's write
    /// or fsync failed, or the channel's storage is failing. Nothing was acknowledged; the
    /// publish may be retried once storage works again.
    StorageFailed = 500,
    /// Not available in this server's configuration (wildcard subscriptions over a Redis
    /// Cluster). Nothing changed; the connection stays.
    NotImplemented = 501,
    /// The server is full (max connections) or shutting down (fatal), or, in a cluster, Redis
    /// is unreachable (a publish is refused, the connection stays).
    Unavailable = 503,
    /// The client did not read fast enough and its write queue passed the cap. Fatal.
    SlowConsumer = 507,
}

impl ErrorCode {
    /// The numeric code on the wire.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The code a server sent (an edge passes its upstream's refusals on).
    pub fn from_code(code: u16) -> Option<ErrorCode> {
        use ErrorCode::*;
        [
            BadRequest,
            Unauthorized,
            Forbidden,
            NotFound,
            MethodNotAllowed,
            StaleConnection,
            Conflict,
            Gone,
            LengthRequired,
            FrameTooLarge,
            InvalidName,
            UpgradeRequired,
            LimitReached,
            HeadersTooLarge,
            StorageFailed,
            NotImplemented,
            Unavailable,
            SlowConsumer,
        ]
        .into_iter()
        .find(|c| c.code() == code)
    }
}

/// A violation of the wire format. All of them are fatal: the connection gets an error frame
/// saying why, and is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A frame's declared length, or a line without its end, is over the limit.
    #[error("frame too large: {len} bytes, the limit is {max}")]
    FrameTooLarge {
        /// Declared or buffered length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A binary frame declared a length of zero (no room for the opcode).
    #[error("malformed length: a frame must hold at least its opcode")]
    EmptyFrame,
    /// A binary frame with an opcode this server does not know.
    #[error("unknown opcode 0x{0:02x}")]
    UnknownOpcode(u8),
    /// A text line with a command word this server does not know.
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    /// A field does not fit the frame, or a required argument is missing.
    #[error("malformed {what}")]
    Malformed {
        /// Which part of the frame.
        what: &'static str,
    },
    /// Text was required (a reason, a command word) and the bytes are not UTF-8.
    #[error("invalid UTF-8 in {what}")]
    InvalidUtf8 {
        /// Where.
        what: &'static str,
    },
    /// The first byte announced the binary format but the preface did not match.
    #[error("bad binary preface")]
    BadPreface,
}

impl ProtocolError {
    /// The error code sent to the client for this violation.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            _ => ErrorCode::BadRequest,
        }
    }
}
