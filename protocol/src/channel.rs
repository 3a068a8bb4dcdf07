//! Channel wire format: the header that opens a channel, the reply that
//! accepts or refuses it, and the name patterns actors register.
//!
//! A channel is a bidirectional QUIC stream. Its opener first writes a
//! **header** naming it; the acceptor answers with a **reply** before either
//! side sends application bytes:
//!
//! ```text
//! header: version u8 = 1 | name_len u16 (big-endian) | name (name_len bytes, ASCII)
//! reply:  version u8 = 1 | code u8 | reason_len u16 (big-endian) | reason (UTF-8)
//! ```
//!
//! Both are length-prefixed so a reader knows, after a fixed-size prefix,
//! exactly how much more to read, and can refuse an oversize length before
//! reading (or buffering) a single byte of it. Decoding is incremental-friendly:
//! [`decode_header`] and [`decode_reply`] return `Ok(None)` while the buffer is
//! still short, and an error as soon as the bytes seen so far are invalid.
//!
//! A name is one or more `/`-separated segments of `[a-z0-9._-]` — `sync`,
//! `swarm/<id>`, `git/<id>`, `file/<id>`, `call/<id>`, `contact/<id>`. The grammar is strict so
//! a name is safe to log and to use as a metric label's source; its first
//! segment is its *kind*.

use std::fmt;
use std::str::FromStr;

use crate::limits::{CHANNEL_NAME_BYTES_MAX, CHANNEL_REFUSAL_REASON_BYTES_MAX};

/// The channel wire version this code writes and reads.
pub const CHANNEL_WIRE_VERSION: u8 = 1;

/// Bytes before the name in a header: version and name length.
pub const HEADER_PREFIX_BYTES: usize = 3;

/// Bytes before the reason in a reply: version, code and reason length.
pub const REPLY_PREFIX_BYTES: usize = 4;

/// Largest header on the wire.
pub const CHANNEL_HEADER_BYTES_MAX: usize = HEADER_PREFIX_BYTES + CHANNEL_NAME_BYTES_MAX;

/// Largest reply on the wire.
pub const CHANNEL_REPLY_BYTES_MAX: usize = REPLY_PREFIX_BYTES + CHANNEL_REFUSAL_REASON_BYTES_MAX;

/// Kinds of channel the transport knows by name; anything else is `other` in metrics.
pub const KNOWN_CHANNEL_KINDS: [&str; 6] = ["sync", "swarm", "git", "file", "call", "contact"];

/// Why bytes are not a valid channel name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelNameError {
    #[error("a channel name is 1 to {max} bytes; got {found}")]
    Length { found: usize, max: usize },
    #[error("a channel name is `/`-separated segments of [a-z0-9._-]; {0:?} is not")]
    Grammar(String),
}

/// A valid channel name, such as `sync` or `swarm/<conversation id>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(String);

fn segment_ok(segment: &str) -> bool {
    !segment.is_empty()
        && segment
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

impl ChannelName {
    /// Checks `text` against the name grammar and length limit.
    pub fn new(text: &str) -> Result<Self, ChannelNameError> {
        if text.is_empty() || text.len() > CHANNEL_NAME_BYTES_MAX {
            return Err(ChannelNameError::Length {
                found: text.len(),
                max: CHANNEL_NAME_BYTES_MAX,
            });
        }
        if !text.split('/').all(segment_ok) {
            return Err(ChannelNameError::Grammar(text.to_owned()));
        }
        Ok(Self(text.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first segment (`swarm` for `swarm/<id>`): what kind of channel this is.
    pub fn kind(&self) -> &str {
        self.0.split('/').next().unwrap_or(&self.0)
    }

    /// The kind if it is one of [`KNOWN_CHANNEL_KINDS`], else `other`; bounded,
    /// so safe as a metric label whatever a peer sends.
    pub fn metric_kind(&self) -> &'static str {
        let kind = self.kind();
        KNOWN_CHANNEL_KINDS
            .iter()
            .find(|known| **known == kind)
            .copied()
            .unwrap_or("other")
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelName({})", self.0)
    }
}

impl FromStr for ChannelName {
    type Err = ChannelNameError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::new(text)
    }
}

/// Which names an actor accepts: one exact name (`sync`) or every name under a
/// prefix (`swarm/*` matches `swarm/<anything>` but not `swarm` itself).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ChannelPattern {
    /// Exactly this name.
    Exact(ChannelName),
    /// Every name that starts with this name followed by `/`.
    Under(ChannelName),
}

impl ChannelPattern {
    /// Parses `name` or `prefix/*`.
    pub fn new(text: &str) -> Result<Self, ChannelNameError> {
        match text.strip_suffix("/*") {
            Some(prefix) => Ok(Self::Under(ChannelName::new(prefix)?)),
            None => Ok(Self::Exact(ChannelName::new(text)?)),
        }
    }

    /// Whether `name` is one this pattern accepts.
    pub fn matches(&self, name: &ChannelName) -> bool {
        match self {
            Self::Exact(exact) => exact == name,
            Self::Under(prefix) => name
                .as_str()
                .strip_prefix(prefix.as_str())
                .is_some_and(|rest| rest.starts_with('/')),
        }
    }

    /// How specific the pattern is: an exact name beats any prefix, a longer
    /// prefix beats a shorter one. Routing picks the most specific match.
    pub fn specificity(&self) -> usize {
        match self {
            Self::Exact(_) => usize::MAX,
            Self::Under(prefix) => prefix.as_str().len(),
        }
    }
}

impl fmt::Display for ChannelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(name) => write!(f, "{name}"),
            Self::Under(prefix) => write!(f, "{prefix}/*"),
        }
    }
}

/// The header that opens a channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelHeader {
    /// Which channel the opener asks for.
    pub name: ChannelName,
}

/// Why bytes are not a channel header the acceptor can serve. Each maps to the
/// [`ReplyCode`] the acceptor answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error(
        "channel header is version {found}; this starling speaks version {CHANNEL_WIRE_VERSION}"
    )]
    UnsupportedVersion { found: u8 },
    #[error("channel header names a {found}-byte name; the limit is {max}")]
    TooLarge { found: usize, max: usize },
    #[error("channel header name is invalid: {0}")]
    Name(ChannelNameError),
}

impl HeaderError {
    /// The reply code that tells the opener about this error.
    pub fn reply_code(&self) -> ReplyCode {
        match self {
            Self::UnsupportedVersion { .. } => ReplyCode::UnsupportedVersion,
            Self::TooLarge { .. } => ReplyCode::HeaderTooLarge,
            Self::Name(_) => ReplyCode::MalformedHeader,
        }
    }
}

impl ChannelHeader {
    /// The header's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let name = self.name.as_str().as_bytes();
        // ChannelName::new bounds the length, so it always fits the u16 field.
        let len = u16::try_from(name.len()).expect("channel names are at most 200 bytes");
        let mut out = Vec::with_capacity(HEADER_PREFIX_BYTES + name.len());
        out.push(CHANNEL_WIRE_VERSION);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(name);
        out
    }
}

/// How many name bytes follow a header prefix, after checking the version and
/// the length limit. The reader calls this on the first
/// [`HEADER_PREFIX_BYTES`] bytes, before reading the name.
pub fn header_name_len(prefix: [u8; HEADER_PREFIX_BYTES]) -> Result<usize, HeaderError> {
    if prefix[0] != CHANNEL_WIRE_VERSION {
        return Err(HeaderError::UnsupportedVersion { found: prefix[0] });
    }
    let len = usize::from(u16::from_be_bytes([prefix[1], prefix[2]]));
    if len > CHANNEL_NAME_BYTES_MAX {
        return Err(HeaderError::TooLarge {
            found: len,
            max: CHANNEL_NAME_BYTES_MAX,
        });
    }
    Ok(len)
}

/// Decodes a header from the front of `buf`: `Ok(None)` if more bytes are
/// needed, else the header and how many bytes it took.
pub fn decode_header(buf: &[u8]) -> Result<Option<(ChannelHeader, usize)>, HeaderError> {
    let Some(prefix) = buf.first_chunk::<HEADER_PREFIX_BYTES>() else {
        // A wrong version is reported as soon as its byte arrives.
        if let Some(&version) = buf.first() {
            if version != CHANNEL_WIRE_VERSION {
                return Err(HeaderError::UnsupportedVersion { found: version });
            }
        }
        return Ok(None);
    };
    let len = header_name_len(*prefix)?;
    let Some(name) = buf.get(HEADER_PREFIX_BYTES..HEADER_PREFIX_BYTES + len) else {
        return Ok(None);
    };
    let text = std::str::from_utf8(name).map_err(|_| {
        HeaderError::Name(ChannelNameError::Grammar(
            String::from_utf8_lossy(name).into_owned(),
        ))
    })?;
    let name = ChannelName::new(text).map_err(HeaderError::Name)?;
    Ok(Some((ChannelHeader { name }, HEADER_PREFIX_BYTES + len)))
}

/// What the acceptor answers. Codes are stable wire values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplyCode {
    /// The channel is open; application bytes follow.
    Accepted,
    /// The handler for this name refused it; the reason says why.
    RefusedByHandler,
    /// No actor accepts this name.
    UnknownName,
    /// The peer already holds as many channels as we allow it.
    TooManyChannels,
    /// Too many channels await a decision, or the handler's mailbox is full; retry later.
    Busy,
    /// The header's length field exceeds the limit.
    HeaderTooLarge,
    /// The header's name is not a valid channel name.
    MalformedHeader,
    /// The header's version is one we do not speak.
    UnsupportedVersion,
    /// The handler for this name is gone (stopped) or dropped the channel undecided.
    Unavailable,
    /// A code this version does not know (from a newer peer).
    Unknown(u8),
}

impl ReplyCode {
    /// The byte on the wire.
    pub fn to_byte(self) -> u8 {
        match self {
            Self::Accepted => 0,
            Self::RefusedByHandler => 1,
            Self::UnknownName => 2,
            Self::TooManyChannels => 3,
            Self::Busy => 4,
            Self::HeaderTooLarge => 5,
            Self::MalformedHeader => 6,
            Self::UnsupportedVersion => 7,
            Self::Unavailable => 8,
            Self::Unknown(byte) => byte,
        }
    }

    /// The code a wire byte stands for.
    pub fn from_byte(byte: u8) -> Self {
        match byte {
            0 => Self::Accepted,
            1 => Self::RefusedByHandler,
            2 => Self::UnknownName,
            3 => Self::TooManyChannels,
            4 => Self::Busy,
            5 => Self::HeaderTooLarge,
            6 => Self::MalformedHeader,
            7 => Self::UnsupportedVersion,
            8 => Self::Unavailable,
            other => Self::Unknown(other),
        }
    }

    /// A bounded snake_case label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::RefusedByHandler => "refused_by_handler",
            Self::UnknownName => "unknown_name",
            Self::TooManyChannels => "too_many_channels",
            Self::Busy => "busy",
            Self::HeaderTooLarge => "header_too_large",
            Self::MalformedHeader => "malformed_header",
            Self::UnsupportedVersion => "unsupported_version",
            Self::Unavailable => "unavailable",
            Self::Unknown(_) => "unknown_code",
        }
    }
}

/// The acceptor's answer to a header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelReply {
    /// Accepted or why not.
    pub code: ReplyCode,
    /// Human-readable reason (empty when accepted).
    pub reason: String,
}

/// Why bytes are not a channel reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error(
        "channel reply is version {found}; this starling speaks version {CHANNEL_WIRE_VERSION}"
    )]
    UnsupportedVersion { found: u8 },
    #[error("channel reply reason is {found} bytes; the limit is {max}")]
    TooLarge { found: usize, max: usize },
    #[error("channel reply reason is not UTF-8")]
    NotUtf8,
}

/// Cuts `reason` to at most `max` bytes on a character boundary.
fn truncate_utf8(reason: &str, max: usize) -> &str {
    if reason.len() <= max {
        return reason;
    }
    let mut end = max;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

impl ChannelReply {
    /// The reply that opens the channel.
    pub fn accepted() -> Self {
        Self {
            code: ReplyCode::Accepted,
            reason: String::new(),
        }
    }

    /// A refusal; a reason longer than the limit is truncated (we never fail to refuse).
    pub fn refused(code: ReplyCode, reason: &str) -> Self {
        Self {
            code,
            reason: truncate_utf8(reason, CHANNEL_REFUSAL_REASON_BYTES_MAX).to_owned(),
        }
    }

    /// The reply's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let reason = truncate_utf8(&self.reason, CHANNEL_REFUSAL_REASON_BYTES_MAX).as_bytes();
        let len = u16::try_from(reason.len()).expect("reasons are truncated to 256 bytes");
        let mut out = Vec::with_capacity(REPLY_PREFIX_BYTES + reason.len());
        out.push(CHANNEL_WIRE_VERSION);
        out.push(self.code.to_byte());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(reason);
        out
    }
}

/// How many reason bytes follow a reply prefix, after checking version and limit.
pub fn reply_reason_len(prefix: [u8; REPLY_PREFIX_BYTES]) -> Result<usize, ReplyError> {
    if prefix[0] != CHANNEL_WIRE_VERSION {
        return Err(ReplyError::UnsupportedVersion { found: prefix[0] });
    }
    let len = usize::from(u16::from_be_bytes([prefix[2], prefix[3]]));
    if len > CHANNEL_REFUSAL_REASON_BYTES_MAX {
        return Err(ReplyError::TooLarge {
            found: len,
            max: CHANNEL_REFUSAL_REASON_BYTES_MAX,
        });
    }
    Ok(len)
}

/// Decodes a reply from the front of `buf`: `Ok(None)` if more bytes are
/// needed, else the reply and how many bytes it took.
pub fn decode_reply(buf: &[u8]) -> Result<Option<(ChannelReply, usize)>, ReplyError> {
    let Some(prefix) = buf.first_chunk::<REPLY_PREFIX_BYTES>() else {
        return Ok(None);
    };
    let len = reply_reason_len(*prefix)?;
    let Some(reason) = buf.get(REPLY_PREFIX_BYTES..REPLY_PREFIX_BYTES + len) else {
        return Ok(None);
    };
    let reason = std::str::from_utf8(reason).map_err(|_| ReplyError::NotUtf8)?;
    Ok(Some((
        ChannelReply {
            code: ReplyCode::from_byte(prefix[1]),
            reason: reason.to_owned(),
        },
        REPLY_PREFIX_BYTES + len,
    )))
}

/// Version byte of the connection preface: the server's first uni stream,
/// sent once it has verified the client, so the dialler knows it was accepted
/// (a TLS 1.3 client finishes its handshake before the server has checked the
/// client's certificate).
pub const PREFACE_VERSION: u8 = 1;

/// QUIC application close codes a Starling endpoint uses. Stable wire values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// The node is shutting down.
    Shutdown,
    /// This is the losing connection of a simultaneous dial; its twin survives.
    Duplicate,
    /// The peer device was revoked by its account.
    Revoked,
    /// The endpoint holds as many connections as it allows.
    TooManyConnections,
    /// Both ends are the same device.
    SelfConnection,
    /// A local actor asked to disconnect this peer.
    Disconnected,
    /// A code this version does not know.
    Unknown(u64),
}

impl CloseCode {
    /// The code on the wire.
    pub fn to_u64(self) -> u64 {
        match self {
            Self::Shutdown => 0,
            Self::Duplicate => 1,
            Self::Revoked => 2,
            Self::TooManyConnections => 3,
            Self::SelfConnection => 4,
            Self::Disconnected => 5,
            Self::Unknown(code) => code,
        }
    }

    /// The close code a wire value stands for.
    pub fn from_u64(code: u64) -> Self {
        match code {
            0 => Self::Shutdown,
            1 => Self::Duplicate,
            2 => Self::Revoked,
            3 => Self::TooManyConnections,
            4 => Self::SelfConnection,
            5 => Self::Disconnected,
            other => Self::Unknown(other),
        }
    }

    /// A bounded snake_case label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::Shutdown => "shutdown",
            Self::Duplicate => "duplicate",
            Self::Revoked => "revoked",
            Self::TooManyConnections => "too_many_connections",
            Self::SelfConnection => "self_connection",
            Self::Disconnected => "disconnected",
            Self::Unknown(_) => "unknown_code",
        }
    }
}

/// Stream reset code an acceptor uses when a pending channel is dropped
/// without a decision (the handler vanished); the opener reads it as
/// [`ReplyCode::Unavailable`].
pub const STREAM_RESET_UNDECIDED: u64 = 1;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec("[a-z0-9._-]{1,20}", 1..5).prop_map(|segments| segments.join("/"))
    }

    #[test]
    fn names_follow_the_grammar() {
        // One row per rule: input, accepted?
        let cases: &[(&str, bool)] = &[
            ("sync", true),
            ("swarm/0123abcd", true),
            ("file/a.b-c_d", true),
            ("", false),
            ("Sync", false),
            ("swarm/", false),
            ("/swarm", false),
            ("swarm//x", false),
            ("swarm x", false),
            ("caf\u{e9}", false),
        ];
        for (text, ok) in cases {
            assert_eq!(ChannelName::new(text).is_ok(), *ok, "case {text:?}");
        }
        assert!(ChannelName::new(&"a".repeat(CHANNEL_NAME_BYTES_MAX)).is_ok());
        assert_eq!(
            ChannelName::new(&"a".repeat(CHANNEL_NAME_BYTES_MAX + 1)),
            Err(ChannelNameError::Length {
                found: CHANNEL_NAME_BYTES_MAX + 1,
                max: CHANNEL_NAME_BYTES_MAX
            })
        );
    }

    #[test]
    fn patterns_match_exactly_or_under_a_prefix() {
        let name = |s| ChannelName::new(s).unwrap();
        let sync = ChannelPattern::new("sync").unwrap();
        let swarm = ChannelPattern::new("swarm/*").unwrap();
        assert!(sync.matches(&name("sync")));
        assert!(!sync.matches(&name("sync/x")));
        assert!(swarm.matches(&name("swarm/abc")));
        assert!(swarm.matches(&name("swarm/abc/def")));
        assert!(!swarm.matches(&name("swarm")));
        assert!(!swarm.matches(&name("swarmx/abc")));
        assert!(sync.specificity() > swarm.specificity());
        assert_eq!(swarm.to_string(), "swarm/*");
        assert!(ChannelPattern::new("*").is_err());
        assert_eq!(name("git/1").metric_kind(), "git");
        assert_eq!(name("weird/1").metric_kind(), "other");
    }

    #[test]
    fn malformed_headers_are_typed_errors() {
        assert_eq!(decode_header(&[]), Ok(None));
        assert_eq!(decode_header(&[1, 0]), Ok(None));
        assert_eq!(
            decode_header(&[2]),
            Err(HeaderError::UnsupportedVersion { found: 2 })
        );
        assert_eq!(
            decode_header(&[1, 0xff, 0xff]),
            Err(HeaderError::TooLarge {
                found: 0xffff,
                max: CHANNEL_NAME_BYTES_MAX
            })
        );
        assert_eq!(decode_header(&[1, 0, 4, b's', b'y']), Ok(None));
        assert!(matches!(
            decode_header(&[1, 0, 2, 0xff, 0xfe]),
            Err(HeaderError::Name(_))
        ));
        assert!(matches!(
            decode_header(&[1, 0, 0]),
            Err(HeaderError::Name(ChannelNameError::Length { .. }))
        ));
        assert_eq!(
            HeaderError::TooLarge { found: 1, max: 0 }.reply_code(),
            ReplyCode::HeaderTooLarge
        );
    }

    #[test]
    fn malformed_replies_are_typed_errors() {
        assert_eq!(decode_reply(&[1, 0, 0]), Ok(None));
        assert_eq!(
            decode_reply(&[9, 0, 0, 0]),
            Err(ReplyError::UnsupportedVersion { found: 9 })
        );
        assert!(matches!(
            decode_reply(&[1, 1, 0xff, 0xff]),
            Err(ReplyError::TooLarge { .. })
        ));
        assert_eq!(decode_reply(&[1, 1, 0, 1, 0xff]), Err(ReplyError::NotUtf8));
        let (reply, used) = decode_reply(&[1, 200, 0, 0, 9]).unwrap().unwrap();
        assert_eq!(reply.code, ReplyCode::Unknown(200));
        assert_eq!(used, 4);
    }

    #[test]
    fn long_reasons_are_truncated_on_a_char_boundary() {
        let reason = "\u{e9}".repeat(CHANNEL_REFUSAL_REASON_BYTES_MAX);
        let reply = ChannelReply::refused(ReplyCode::RefusedByHandler, &reason);
        assert!(reply.reason.len() <= CHANNEL_REFUSAL_REASON_BYTES_MAX);
        let (decoded, _) = decode_reply(&reply.encode()).unwrap().unwrap();
        assert_eq!(decoded, reply);
    }

    #[test]
    fn close_codes_round_trip() {
        for code in 0..8u64 {
            assert_eq!(CloseCode::from_u64(code).to_u64(), code);
        }
    }

    proptest! {
        #[test]
        fn header_round_trip(text in name_strategy(), tail in prop::collection::vec(any::<u8>(), 0..8)) {
            prop_assume!(text.len() <= CHANNEL_NAME_BYTES_MAX);
            let header = ChannelHeader { name: ChannelName::new(&text).unwrap() };
            let mut bytes = header.encode();
            let len = bytes.len();
            prop_assert!(len <= CHANNEL_HEADER_BYTES_MAX);
            // Every strict prefix asks for more; the whole decodes, ignoring what follows.
            for cut in 0..len {
                prop_assert_eq!(decode_header(&bytes[..cut]), Ok(None));
            }
            bytes.extend_from_slice(&tail);
            prop_assert_eq!(decode_header(&bytes), Ok(Some((header, len))));
        }

        #[test]
        fn reply_round_trip(code in any::<u8>(), reason in ".{0,100}") {
            let reply = ChannelReply::refused(ReplyCode::from_byte(code), &reason);
            prop_assert_eq!(ReplyCode::from_byte(code).to_byte(), code);
            let bytes = reply.encode();
            prop_assert!(bytes.len() <= CHANNEL_REPLY_BYTES_MAX);
            prop_assert_eq!(decode_reply(&bytes), Ok(Some((reply, bytes.len()))));
        }

        #[test]
        fn decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_header(&bytes);
            let _ = decode_reply(&bytes);
        }
    }
}
