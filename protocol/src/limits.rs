//! Every bound on input this crate accepts, in one place, with its unit in the
//! name. Exceeding one is a typed error at the call site, never a panic.

/// Largest DER certificate we parse. Ours are about 400 bytes; the margin is
/// for future extensions, not for peers to spend our memory.
pub const CERT_DER_BYTES_MAX: usize = 8 * 1024;

/// Largest PEM document (certificate or CRL) we read from a file or a peer.
pub const PEM_BYTES_MAX: usize = 1024 * 1024;

/// Largest DER CRL we parse (about 40 bytes per revoked serial).
pub const CRL_DER_BYTES_MAX: usize = 512 * 1024;

/// Most serials one account CRL may list. An account has few devices; this
/// bounds the work a hostile CRL can cause.
pub const CRL_REVOKED_SERIALS_MAX: usize = 10_000;

/// Most devices an account archive may carry.
pub const ARCHIVE_DEVICES_MAX: usize = 1_000;

/// Largest encrypted account archive we open.
pub const ARCHIVE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Longest display name, in bytes of UTF-8.
pub const DISPLAY_NAME_BYTES_MAX: usize = 256;

/// Argon2id cost ceilings accepted when *opening* an archive. They stop a
/// crafted header from making us allocate or spin without end; the defaults we
/// write are far below them.
pub const ARGON2_MEMORY_KIB_MAX: u32 = 1024 * 1024;
/// See [`ARGON2_MEMORY_KIB_MAX`].
pub const ARGON2_ITERATIONS_MAX: u32 = 64;
/// See [`ARGON2_MEMORY_KIB_MAX`].
pub const ARGON2_LANES_MAX: u32 = 16;

/// How far off the local clock may be when checking a peer's certificate
/// validity windows, in seconds (two days). A node whose clock is wrong by
/// up to this still accepts a freshly issued certificate (a day slow, it
/// would see it as not yet valid) and one near its end. Certificates last
/// 10 and 20 years and revocation is by CRL, not by time, so two days more
/// or less of a window is no security boundary. Commit times absorb the
/// same error (`swarm::limits::COMMIT_TIME_LEAD_SECS_MAX`).
pub const CERT_CLOCK_SKEW_SECS_MAX: u64 = 2 * 24 * 3600;

// ---- Transport (issue 4): QUIC connections and channels. -----------------
// The channel-header limits are wire facts (a second implementation must
// honour them); the rest bound what one peer may cost a node. The transport
// actor's `TransportLimits::default()` is built from these; tests shrink them.

/// Longest channel name, in bytes (`swarm/<64 hex>` is 70).
pub const CHANNEL_NAME_BYTES_MAX: usize = 200;

/// Longest refusal reason a channel reply may carry, in bytes of UTF-8.
pub const CHANNEL_REFUSAL_REASON_BYTES_MAX: usize = 256;

/// Channels (open plus awaiting a decision) one connection may hold.
pub const CHANNELS_PER_CONNECTION_MAX: usize = 256;

/// Channels one peer device may hold across all its connections to us (during
/// simultaneous-dial de-duplication a peer briefly has two).
pub const CHANNELS_PER_PEER_MAX: usize = 384;

/// Incoming channels per connection whose header is being read or whose
/// handler has not yet accepted or refused them.
pub const CHANNEL_PENDING_ACCEPTS_MAX: usize = 32;

/// How long an incoming channel may take to send its header, in milliseconds.
pub const CHANNEL_HEADER_TIMEOUT_MS: u64 = 5_000;

/// How long an opener waits for the accept/refuse reply, in milliseconds.
pub const CHANNEL_REPLY_TIMEOUT_MS: u64 = 10_000;

/// How long a QUIC + TLS handshake (and the connection preface) may take, in milliseconds.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// A connection with no traffic for this long is closed, in milliseconds.
pub const CONNECTION_IDLE_TIMEOUT_MS: u64 = 30_000;

/// Keep-alive ping interval on idle connections, in milliseconds (a third of
/// the idle timeout, so two lost pings do not kill a healthy connection).
pub const CONNECTION_KEEP_ALIVE_MS: u64 = 10_000;

/// Connections one endpoint holds at once; beyond it new handshakes are refused.
pub const CONNECTIONS_MAX: usize = 1_024;

/// How long the losing connection of a simultaneous dial may keep draining its
/// channels before it is closed anyway, in milliseconds.
pub const DUPLICATE_DRAIN_TIMEOUT_MS: u64 = 10_000;

/// First and largest delay between reconnection attempts to a wanted peer, in milliseconds.
pub const RECONNECT_BACKOFF_MIN_MS: u64 = 100;
/// See [`RECONNECT_BACKOFF_MIN_MS`].
pub const RECONNECT_BACKOFF_MAX_MS: u64 = 30_000;

/// Subscribers to connection events one transport keeps.
pub const EVENT_SUBSCRIBERS_MAX: usize = 64;

/// How long the losing connection of a simultaneous dial stays open at least,
/// in milliseconds, so the peer registers the surviving twin before the loser
/// closes (else it would briefly see the peer as gone).
pub const DUPLICATE_DRAIN_GRACE_MS: u64 = 1_000;

/// Times an opener retries a channel whose connection was closed as a
/// duplicate (or closed locally) before the peer answered it.
pub const CHANNEL_OPEN_RETRIES_MAX: u32 = 5;

/// Messages the transport actor's mailbox holds; senders beyond it wait
/// (`send`) or are told it is full (`try_send`).
pub const TRANSPORT_MAILBOX_MESSAGES_MAX: usize = 1_024;
