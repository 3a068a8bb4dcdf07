//! The transport: QUIC connections between devices, mutually authenticated
//! with device certificates, carrying named channels and datagrams.
//!
//! - [`tls`]: our identity, the revocation book, the rustls verifiers.
//! - [`blocklist`]: accounts whose devices are refused (contact blocks).
//! - [`socket`]: the UDP seam (real socket, in-memory network).
//! - [`channel`]: channel handles and the open/serve halves of the channel protocol.
//! - [`actor`]: the `Transport` actor that owns the endpoint and all connections.
//! - `connection`: the accepting handshake, the preface, and each connection's serving task.
//! - [`messages`]: what other actors send it and what they get back.
//! - [`metrics`]: the per-node Prometheus metrics.
//!
//! Invariants: quinn and rustls are used nowhere else in the crate; every
//! peer identity handed out comes from a chain the verifiers accepted; every
//! queue (actor mailboxes, socket queues, pending channels) is bounded, and
//! data paths use `send`/`try_send`, never `do_send`. The wire format is in
//! `starling_protocol::channel` and `docs/PROTOCOL.md` §8.

pub mod actor;
pub mod blocklist;
pub mod channel;
mod connection;
pub mod messages;
pub mod metrics;
pub mod socket;
pub mod tls;

pub use actor::{Transport, TransportConfig, TransportError, TransportLimits};
pub use blocklist::{BlockList, BlockListError};
pub use channel::{Channel, ChannelError, ChannelRecv, ChannelSend, PendingChannel};
pub use messages::*;
pub use metrics::TransportMetrics;
pub use socket::{udp_socket, MemoryNetwork, MemorySocket};
pub use tls::{ExpectedPeer, FailureSide, LocalIdentity, PeerRejection, RevocationBook, ALPN};
