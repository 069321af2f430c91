//! The command set every format carries: what a client asks (`Request`) and what the server
//! sends (`ServerFrame`), with their parts.

use super::*;

/// A client's command, borrowed from the input buffer where possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// Start receiving the channel's messages; with `resume`, first every retained message after
    /// `resume.after`.
    Subscribe {
        /// Channel name (validated by the server, not the codec).
        channel: &'a [u8],
        /// Where to resume from, if anywhere.
        resume: Option<Resume>,
    },
    /// Stop receiving the channel's messages.
    Unsubscribe {
        /// Channel name.
        channel: &'a [u8],
    },
    /// Publish `payload` to `channel` (`*` broadcasts, `@name` sends to one named client).
    Publish {
        /// Channel name.
        channel: &'a [u8],
        /// Opaque bytes (owned only when the text format had escapes to undo).
        payload: Cow<'a, [u8]>,
    },
    /// Publish and be told the assigned offset (`ServerFrame::Ack`) once the message is
    /// retained, and on disk when the server runs with `--fsync always`.
    PublishAcked {
        /// Channel name.
        channel: &'a [u8],
        /// Opaque bytes.
        payload: Cow<'a, [u8]>,
    },
    /// Barrier: answered with `Pong` once every earlier command of this connection took effect.
    Ping,
    /// The answer to a server `Ping` (keepalive).
    Pong,
    /// Receive the messages of every topic channel matching `pattern` (`*` one token, `>` the
    /// rest), each with its own channel name and offset.
    PatternSubscribe {
        /// The pattern (validated by the server).
        pattern: &'a [u8],
    },
    /// Stop a pattern subscription.
    PatternUnsubscribe {
        /// The pattern, as subscribed.
        pattern: &'a [u8],
    },
    /// Present a token (or the API key): what the connection may do from now on.
    Auth {
        /// The token, as sent.
        token: &'a [u8],
    },
    /// Claim a unique client name; messages published to `@name` reach this connection.
    Name {
        /// The name, without the `@`.
        name: &'a [u8],
    },
    /// Who is subscribed to a channel (`stats_only`: only how many clients and users).
    Presence {
        /// Channel name.
        channel: &'a [u8],
        /// Answer the counts without the members (`PRESENCE_STATS`).
        stats_only: bool,
    },
    /// An empty text line: ignored (people press Enter in `nc`).
    Noop,
}

/// A subscription that resumes from an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// The last offset the client saw (0: from the earliest retained; `u64::MAX`: from now,
    /// replaying nothing, to learn the epoch and latest offset).
    pub after: u64,
    /// The epoch of the log that offset belongs to (`None`: whatever the log is now).
    pub epoch: Option<u64>,
    /// Refuse (ERR 410) instead of starting from the earliest retained when messages are gone.
    pub strict: bool,
}

/// Which command an `Ok` acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// `Subscribe` took effect.
    Subscribe,
    /// `Unsubscribe` took effect.
    Unsubscribe,
    /// `Name` was granted.
    Name,
    /// `Auth` was accepted (the argument is the token's subject, or `-`).
    Auth,
    /// `PatternSubscribe` took effect.
    PatternSubscribe,
    /// `PatternUnsubscribe` took effect.
    PatternUnsubscribe,
}

impl Ack {
    /// The text format's word for it (also the command's word).
    pub fn word(self) -> &'static str {
        match self {
            Ack::Subscribe => "SUB",
            Ack::Unsubscribe => "UNSUB",
            Ack::Name => "NAME",
            Ack::Auth => "AUTH",
            Ack::PatternSubscribe => "PSUB",
            Ack::PatternUnsubscribe => "PUNSUB",
        }
    }
}

/// What a resuming subscriber is told about a channel's log (HIST): its epoch, the earliest
/// retained and latest offsets, and whether the requested offset could be honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryStatus<'a> {
    /// Channel name.
    pub channel: &'a [u8],
    /// The log's epoch.
    pub epoch: u64,
    /// Earliest retained offset (last + 1 when nothing is retained).
    pub first: u64,
    /// Latest offset of the channel.
    pub last: u64,
    /// Ok, expired or epoch.
    pub status: ResumeStatus,
}

/// A server frame as a client decodes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFrame<'a> {
    /// A message of a channel, with its offset in that channel.
    Message {
        /// Channel name.
        channel: Cow<'a, [u8]>,
        /// Offset within the channel: starts at 1, grows by one per message.
        offset: u64,
        /// Opaque bytes.
        payload: Cow<'a, [u8]>,
    },
    /// A command was acknowledged.
    Ok {
        /// Which command.
        ack: Ack,
        /// Its argument (channel or name).
        arg: Cow<'a, [u8]>,
    },
    /// An error; fatal ones are followed by the server closing the connection.
    Error {
        /// Numeric code, see `ErrorCode`.
        code: u16,
        /// Human-readable reason.
        reason: Cow<'a, str>,
    },
    /// Answer to a resuming subscribe, before the replay: the channel log's epoch, first and
    /// last retained offsets, and whether the requested offset could be honoured.
    History {
        /// Channel name.
        channel: Cow<'a, [u8]>,
        /// The log's epoch.
        epoch: u64,
        /// Earliest retained offset (last + 1 when nothing is retained).
        first: u64,
        /// Latest offset of the channel.
        last: u64,
        /// Ok, expired or epoch.
        status: ResumeStatus,
    },
    /// An acknowledged publish was retained (and persisted, with `--fsync always`).
    Ack {
        /// Channel name.
        channel: Cow<'a, [u8]>,
        /// The offset the message got.
        offset: u64,
    },
    /// One member of a channel, in the answer to `Presence` (before its `Presence` frame).
    Member {
        /// Channel name.
        channel: Cow<'a, [u8]>,
        /// The member's client id.
        client: Cow<'a, str>,
        /// Its user (empty: none).
        user: Cow<'a, str>,
        /// Its node.
        node: Cow<'a, str>,
        /// Its info, a JSON object.
        info: Cow<'a, str>,
    },
    /// The end of a presence answer (after its members), or the answer to `PRESENCE_STATS`.
    Presence {
        /// Channel name.
        channel: Cow<'a, [u8]>,
        /// Subscribed connections.
        clients: u64,
        /// Distinct users among them (the anonymous count as one).
        users: u64,
    },
    /// A member joined a channel this connection is subscribed to (`--join-leave`).
    Join {
        /// Channel name.
        channel: Cow<'a, [u8]>,
        /// The member's client id.
        client: Cow<'a, str>,
        /// Its user.
        user: Cow<'a, str>,
        /// Its info, a JSON object.
        info: Cow<'a, str>,
    },
    /// A member left.
    Leave {
        /// Channel name.
        channel: Cow<'a, [u8]>,
        /// The member's client id.
        client: Cow<'a, str>,
        /// Its user.
        user: Cow<'a, str>,
    },
    /// The server took this connection out of a channel (the server API's unsubscribe).
    Unsubscribed {
        /// Channel name.
        channel: Cow<'a, [u8]>,
        /// Why.
        reason: Cow<'a, str>,
    },
    /// Keepalive; answer with `Pong`.
    Ping,
    /// Answer to a client `Ping`.
    Pong,
}

/// Where a resuming subscriber stands relative to the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeStatus {
    /// Every message after the requested offset is retained.
    Ok,
    /// Some messages after the requested offset are gone; replay starts at the earliest retained.
    Expired,
    /// The offset belongs to another log (different epoch, or beyond this log's end); replay
    /// starts at the earliest retained.
    EpochChanged,
}

impl ResumeStatus {
    /// The word used on the wire.
    pub fn word(self) -> &'static str {
        match self {
            ResumeStatus::Ok => "ok",
            ResumeStatus::Expired => "expired",
            ResumeStatus::EpochChanged => "epoch",
        }
    }

    /// The byte used in the binary format.
    pub fn code(self) -> u8 {
        match self {
            ResumeStatus::Ok => 0,
            ResumeStatus::Expired => 1,
            ResumeStatus::EpochChanged => 2,
        }
    }

    /// From the binary byte.
    pub fn from_code(code: u8) -> Option<ResumeStatus> {
        match code {
            0 => Some(ResumeStatus::Ok),
            1 => Some(ResumeStatus::Expired),
            2 => Some(ResumeStatus::EpochChanged),
            _ => None,
        }
    }
}
