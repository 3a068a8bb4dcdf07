//! The transport's public messages and their typed results and errors.

use std::net::SocketAddr;

use actix::prelude::*;
use bytes::Bytes;
use starling_protocol::channel::{ChannelName, ChannelPattern};
use starling_protocol::{
    AccountCert, AccountId, CrlError, DeviceId, RevocationList, VerifiedDevice,
};

use super::blocklist::BlockListError;
use super::channel::{Channel, ChannelError, PendingChannel};
use super::tls::{ExpectedPeer, FailureSide, TlsError};

/// Which way a connection was set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// We dialled.
    Outgoing,
    /// The peer dialled.
    Incoming,
}

/// Why a connection could not be established.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("refusing to dial our own device")]
    SelfDial,
    #[error("our TLS configuration is unusable: {0}")]
    Tls(#[from] TlsError),
    #[error("quinn could not start the connection: {0}")]
    Start(#[from] quinn::ConnectError),
    #[error("handshake failed ({} side, {reason}): {detail}", side.label())]
    Handshake {
        side: FailureSide,
        reason: &'static str,
        detail: String,
    },
    #[error("the peer's certificates could not be read after the handshake: {0}")]
    PeerIdentity(String),
    #[error("the peer closed the connection: {0}")]
    Closed(String),
    #[error("this endpoint already holds its maximum of {0} connections")]
    TooManyConnections(usize),
    #[error("the transport actor is gone")]
    TransportGone,
    #[error("account {0} is blocked")]
    Blocked(AccountId),
}

/// Dial `addr` and require the peer to prove `peer`.
#[derive(Message, Debug)]
#[rtype(result = "Result<VerifiedDevice, ConnectError>")]
pub struct Connect {
    /// Where to dial.
    pub addr: SocketAddr,
    /// Whom we mean to reach.
    pub peer: ExpectedPeer,
}

/// Keep a connection to `peer` at `addr`: dial now and, whenever it drops,
/// again with exponential backoff.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct WantPeer {
    /// Where the peer listens.
    pub addr: SocketAddr,
    /// Whom we mean to reach.
    pub peer: ExpectedPeer,
}

/// Stop reconnecting to `addr` (an open connection stays until it drops).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct UnwantPeer {
    /// The address given to [`WantPeer`].
    pub addr: SocketAddr,
}

/// Close every connection to `peer`.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Disconnect {
    /// The peer device.
    pub peer: DeviceId,
}

/// Why a handler could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("pattern {0} already has a handler")]
    Taken(ChannelPattern),
}

/// Route incoming channels whose name matches `pattern` to `handler`.
/// The most specific matching pattern wins (exact before prefix, longer
/// prefix before shorter).
#[derive(Message)]
#[rtype(result = "Result<(), RegisterError>")]
pub struct RegisterChannel {
    /// Names to accept.
    pub pattern: ChannelPattern,
    /// Who decides on them.
    pub handler: Recipient<IncomingChannel>,
}

/// An incoming channel for a handler to accept or refuse.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct IncomingChannel {
    /// Who opened it, as proven by its certificate chain.
    pub peer: VerifiedDevice,
    /// The name asked for.
    pub name: ChannelName,
    /// Accept or refuse this; dropping it refuses.
    pub channel: PendingChannel,
}

/// Open channel `name` to `peer` (which must be connected).
#[derive(Message, Debug)]
#[rtype(result = "Result<Channel, ChannelError>")]
pub struct OpenChannel {
    /// The peer device.
    pub peer: DeviceId,
    /// The channel to open.
    pub name: ChannelName,
}

/// Why a datagram was not sent.
#[derive(Debug, thiserror::Error)]
pub enum DatagramError {
    #[error("no connection to device {0}")]
    NotConnected(DeviceId),
    #[error("datagram of {found} bytes exceeds the path's limit of {max}")]
    TooLarge { found: usize, max: usize },
    #[error("the peer does not accept datagrams")]
    Unsupported,
    #[error("connection lost: {0}")]
    Connection(quinn::ConnectionError),
}

/// Send one unreliable datagram to `peer` (for call media).
#[derive(Message, Debug)]
#[rtype(result = "Result<(), DatagramError>")]
pub struct SendDatagram {
    /// The peer device.
    pub peer: DeviceId,
    /// The payload; must fit the path's datagram size.
    pub payload: Bytes,
}

/// A datagram received from a peer.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct DatagramReceived {
    /// Who sent it.
    pub peer: VerifiedDevice,
    /// The payload.
    pub payload: Bytes,
}

/// Deliver every received datagram to `subscriber` (one at a time; a new
/// subscription replaces the old). Delivery uses `try_send`: when the
/// subscriber's mailbox is full the datagram is dropped and counted.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SubscribeDatagrams(pub Recipient<DatagramReceived>);

/// A peer's connection state changed.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct ConnectionEvent {
    /// The peer device.
    pub peer: VerifiedDevice,
    /// Its new state.
    pub state: PeerState,
}

/// Connection state of a peer device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerState {
    /// At least one authenticated connection is up.
    Up {
        /// The peer's address.
        addr: SocketAddr,
    },
    /// The last connection closed.
    Down {
        /// Why (a bounded label: `timeout`, `peer_closed`, `revoked`, …).
        reason: &'static str,
    },
}

/// Why a subscription was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error("the transport already has its maximum of {0} event subscribers")]
    Full(usize),
}

/// Send every [`ConnectionEvent`] to `subscriber` (with `try_send`; a full
/// mailbox drops the event and counts it).
#[derive(Message)]
#[rtype(result = "Result<(), SubscribeError>")]
pub struct SubscribeEvents(pub Recipient<ConnectionEvent>);

/// Newer revocation news for an account: verified against `account` and kept
/// if it supersedes what the transport holds. Connections to devices it
/// revokes are closed. Returns whether it was kept.
#[derive(Message, Debug)]
#[rtype(result = "Result<bool, CrlError>")]
pub struct UpdateRevocations {
    /// The account whose CRL this is.
    pub account: AccountCert,
    /// The CRL.
    pub crl: RevocationList,
}

/// The accounts to refuse, replacing the previous list: their devices'
/// connections are closed now and refused from then on (before the preface),
/// they are not dialled, and their channels are not routed.
#[derive(Message, Debug)]
#[rtype(result = "Result<(), BlockListError>")]
pub struct SetBlockedAccounts {
    /// Every blocked account.
    pub accounts: std::collections::BTreeSet<AccountId>,
}

/// One connection, as [`Status`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The peer.
    pub peer: VerifiedDevice,
    /// Its address.
    pub addr: SocketAddr,
    /// Who dialled.
    pub direction: Direction,
    /// Whether this is the losing twin of a simultaneous dial, closing when empty.
    pub draining: bool,
    /// Channel slots held (open plus undecided).
    pub channels: usize,
}

/// A snapshot of the transport.
#[derive(Debug, Clone)]
pub struct TransportStatus {
    /// Our address.
    pub local_addr: SocketAddr,
    /// Our identity.
    pub local: VerifiedDevice,
    /// Every connection.
    pub connections: Vec<ConnectionInfo>,
}

/// Ask for a [`TransportStatus`].
#[derive(Message, Debug)]
#[rtype(result = "TransportStatus")]
pub struct Status;

/// Close every connection and the endpoint, then stop the actor.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Shutdown;
